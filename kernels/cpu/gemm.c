/*
 * kernels/cpu/gemm.c - the blocked float32 GEMM (contract and method in kernels/cpu/gemm.h): tiling,
 * packing, the thread split and the portable micro-kernel.
 *
 * Threading: pi_sgemm hands whole (MC, NC) tiles of C to the pool; a tile's thread packs its own
 * panels into its slice of one buffer allocated per call, so threads share nothing but read-only A
 * and B. The packing costs (MC + NC) * KC copies per MC * NC * KC multiply-adds.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gemm-impl.h"
#include "lib/common.h"

#define PACK_A_FLOATS ((size_t)PI_GEMM_MC * PI_GEMM_KC)
#define PACK_B_FLOATS ((size_t)PI_GEMM_NC * PI_GEMM_KC)
_Static_assert(PI_GEMM_MC % PI_GEMM_MR == 0 && PI_GEMM_NC % PI_GEMM_NR == 0, "tiles are whole slivers");

void pi_gemm_ukernel_scalar(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr,
                            float alpha, float beta)
{
    float acc[PI_GEMM_MR][PI_GEMM_NR] = {{0}};
    for (int64_t k = 0; k < kc; k++) {
        const float *ak = a + k * PI_GEMM_MR, *bk = b + k * PI_GEMM_NR;
        for (int i = 0; i < PI_GEMM_MR; i++)
            for (int j = 0; j < PI_GEMM_NR; j++) acc[i][j] += ak[i] * bk[j];
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float *cij = c + i * ldc + j;
            *cij = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *cij;
        }
}

/* dst (kc, MR) slivers of op(A) rows [i0, i0 + mc), k in [k0, k0 + kc); rows past mc are zeros. The loop
 * order follows the source's contiguous direction (k for A, rows for A^T). */
static void pack_a(bool ta, const float *A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float *dst)
{
    for (int64_t s = 0; s < mc; s += PI_GEMM_MR, dst += kc * PI_GEMM_MR) {
        int64_t rows = PI_MIN(PI_GEMM_MR, mc - s);
        if (rows < PI_GEMM_MR) memset(dst, 0, (size_t)(kc * PI_GEMM_MR) * sizeof *dst);
        if (ta)
            for (int64_t k = 0; k < kc; k++)
                memcpy(dst + k * PI_GEMM_MR, A + (k0 + k) * lda + i0 + s, (size_t)rows * sizeof *dst);
        else
            for (int64_t i = 0; i < rows; i++) {
                const float *src = A + (i0 + s + i) * lda + k0;
                for (int64_t k = 0; k < kc; k++) dst[k * PI_GEMM_MR + i] = src[k];
            }
    }
}

/* dst (kc, NR) slivers of op(B) columns [j0, j0 + nc), k in [k0, k0 + kc); columns past nc are zeros. */
static void pack_b(bool tb, const float *B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0, int64_t kc, float *dst)
{
    for (int64_t s = 0; s < nc; s += PI_GEMM_NR, dst += kc * PI_GEMM_NR) {
        int64_t cols = PI_MIN(PI_GEMM_NR, nc - s);
        if (cols < PI_GEMM_NR) memset(dst, 0, (size_t)(kc * PI_GEMM_NR) * sizeof *dst);
        if (!tb)
            for (int64_t k = 0; k < kc; k++)
                memcpy(dst + k * PI_GEMM_NR, B + (k0 + k) * ldb + j0 + s, (size_t)cols * sizeof *dst);
        else
            for (int64_t j = 0; j < cols; j++) {
                const float *src = B + (j0 + s + j) * ldb + k0;
                for (int64_t k = 0; k < kc; k++) dst[k * PI_GEMM_NR + j] = src[k];
            }
    }
}

struct gemm_job {
    bool ta, tb;
    int64_t M, N, K, lda, ldb, ldc, tiles_n;
    float alpha, beta;
    const float *A, *B;
    float *C;
    float *buf; /* (threads, PACK_A_FLOATS + PACK_B_FLOATS) */
    pi_gemm_ukernel_fn uk;
};

/* One (MC, NC) tile of C: every K block packed and multiplied in increasing k. */
static void gemm_tile(const struct gemm_job *g, int64_t tile, int thread)
{
    float *pa = g->buf + (size_t)thread * (PACK_A_FLOATS + PACK_B_FLOATS), *pb = pa + PACK_A_FLOATS;
    int64_t i0 = tile / g->tiles_n * PI_GEMM_MC, j0 = tile % g->tiles_n * PI_GEMM_NC;
    int64_t mc = PI_MIN(PI_GEMM_MC, g->M - i0), nc = PI_MIN(PI_GEMM_NC, g->N - j0);
    for (int64_t k0 = 0; k0 < g->K; k0 += PI_GEMM_KC) {
        int64_t kc = PI_MIN(PI_GEMM_KC, g->K - k0);
        float beta = k0 == 0 ? g->beta : 1.0f;
        pack_b(g->tb, g->B, g->ldb, j0, nc, k0, kc, pb);
        pack_a(g->ta, g->A, g->lda, i0, mc, k0, kc, pa);
        for (int64_t j = 0; j < nc; j += PI_GEMM_NR)
            for (int64_t i = 0; i < mc; i += PI_GEMM_MR)
                g->uk(kc, pa + i * kc, pb + j * kc, g->C + (i0 + i) * g->ldc + j0 + j, g->ldc,
                      (int)PI_MIN(PI_GEMM_MR, mc - i), (int)PI_MIN(PI_GEMM_NR, nc - j), g->alpha, beta);
    }
}

static void gemm_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    for (int64_t t = begin; t < end; t++) gemm_tile(ctx, t, thread);
}

static pi_gemm_ukernel_fn choose_ukernel(void)
{
    pi_kernels_init();
#ifdef PI_HAVE_X86_SIMD
    if (pi_kernels_isa() >= PI_KERNEL_AVX512) return pi_gemm_ukernel_avx512;
    if (pi_kernels_isa() >= PI_KERNEL_AVX2) return pi_gemm_ukernel_avx2;
#endif
    return pi_gemm_ukernel_scalar;
}

const char *pi_sgemm_kernel_name(void)
{
    pi_gemm_ukernel_fn uk = choose_ukernel();
    return uk == pi_gemm_ukernel_scalar ? "scalar" : uk == pi_gemm_ukernel_avx2 ? "avx2" : "avx512";
}

/* C = beta * C without reading C when beta == 0 (the K == 0 case). */
static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t ldc)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

void pi_sgemm(pi_pool_t *pool, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
              int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    PI_ASSERT(M >= 0 && N >= 0 && K >= 0 && ldc >= N);
    PI_ASSERT(lda >= (ta ? M : K) && ldb >= (tb ? K : N));
    if (M == 0 || N == 0) return;
    if (K == 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    int64_t tiles_m = (M + PI_GEMM_MC - 1) / PI_GEMM_MC, tiles_n = (N + PI_GEMM_NC - 1) / PI_GEMM_NC;
    int threads = pi_pool_size(pool);
    struct gemm_job g = {ta, tb, M, N, K, lda, ldb, ldc, tiles_n, alpha, beta, A, B, C, NULL, choose_ukernel()};
    void *p = NULL;
    size_t bytes = (size_t)threads * (PACK_A_FLOATS + PACK_B_FLOATS) * sizeof(float);
    PI_ASSERT(posix_memalign(&p, 64, bytes) == 0);
    g.buf = p;
    pi_pool_for(pool, tiles_m * tiles_n, 1, gemm_range, &g);
    free(p);
}
