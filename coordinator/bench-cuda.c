/*
 * coordinator/bench-cuda.c - pi-bench --cuda-kernels: throughput of the CUDA kernels on device 0
 * (coordinator/bench.h; was tools/pi-bench-cuda, doc/cuda.md has the results). Built only with CUDA.
 *   - the device's copy bandwidth, measured with pi_cuda_copy from one 512 MiB buffer to another
 *     (bytes read + written);
 *   - matvec GB/s per weight type for a (--rows, --cols) matrix in both orientations (default 11008 x
 *     4096, the 7B FFN's up and down shapes); several copies of the matrix rotate so that the 50 MB L2
 *     cache never holds the one being read (variants: x from the cache with 1, 2, 4 rows per warp; x
 *     staged in shared memory, wide and tall; auto);
 *   - batched products (pi_cuda_gemm) for 4..64 tokens and for T and 4 T (T: each -p above 64,
 *     default 512): TFLOP/s and weight GB/s, and for the quantised types but Q2_K, whose batches take the integer
 *     tensor-core GEMM, the time of the f16-tile path beside it;
 *   - the hot-neuron FFN (Q4_0 gate/up, Q8_0 down, every neuron active) and decode attention.
 * Inputs are random (never zeros). Times are host clocks around --iters launches ending in a sync,
 * the median of 5 trials after a warm-up.
 */
#include "config.h"
#include "coordinator/bench.h"
#include "kernels/cpu/quant.h"
#include "kernels/cuda/cuda.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng = 0x1234567;

static uint64_t rnext(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static float frand(void) { return (float)((double)(rnext() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A random weight in ggml's layout with modest f16 scales (see tests/test-cuda.c). */
static void *rand_weight(enum pi_type t, int64_t rows, int64_t cols)
{
    uint64_t rb = 0;
    if (!pi_type_row_bytes(t, (uint64_t)cols, &rb)) return NULL;
    size_t bytes = (size_t)rb * (size_t)rows;
    uint8_t *w = malloc(bytes);
    if (!w) return NULL;
    if (t == PI_TYPE_F16 || t == PI_TYPE_BF16) {
        uint16_t *h = (uint16_t *)w;
        for (size_t i = 0; i < bytes / 2; i++) h[i] = t == PI_TYPE_F16 ? pi_fp32_to_fp16(frand()) : pi_fp32_to_bf16(frand());
        return w;
    }
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t r = rnext();
        memcpy(w + i, &r, PI_MIN((size_t)8, bytes - i));
    }
    const struct pi_type_info *ti = pi_type_get(t);
    size_t doff = t == PI_TYPE_Q6_K ? 208 : t == PI_TYPE_Q3_K ? 108 : t == PI_TYPE_Q2_K ? 80 : 0;
    for (size_t b = 0; b < bytes / ti->block_bytes; b++) {
        uint16_t d = pi_fp32_to_fp16(0.01f + 0.04f * frand());
        memcpy(w + b * ti->block_bytes + doff, &d, 2);
    }
    return w;
}

/* Run fn(arg, i) reps times per trial; median seconds per call over 5 trials after a warm-up. */
typedef int (*bench_fn)(void *arg, int i);

static double bench(pi_cuda_ctx_t *ctx, bench_fn fn, void *arg, int reps)
{
    double tr[5];
    for (int i = 0; i < 3; i++)
        if (fn(arg, i) < 0) return -1;
    if (pi_cuda_sync(ctx) < 0) return -1;
    for (int k = 0; k < 5; k++) {
        double t0 = now();
        for (int i = 0; i < reps; i++)
            if (fn(arg, i) < 0) return -1;
        if (pi_cuda_sync(ctx) < 0) return -1;
        tr[k] = (now() - t0) / reps;
    }
    qsort(tr, 5, sizeof(double), cmp_d);
    return tr[2];
}

struct mv_arg {
    pi_cuda_ctx_t *ctx;
    pi_cuda_weight_t *w[16];
    int nw, R;
    float *x, *y;
    int64_t T;
};

static int run_copy(void *a, int i)
{
    struct mv_arg *m = a;
    (void)i;
    return pi_cuda_copy(m->ctx, m->y, m->x, (size_t)1 << 29);
}

static int run_mv(void *a, int i)
{
    struct mv_arg *m = a;
    const pi_cuda_weight_t *w = m->w[i % m->nw];
    return m->R ? pi_cuda_matvec_r(m->ctx, w, m->x, m->y, m->R) : pi_cuda_matvec(m->ctx, w, m->x, m->y);
}

static int run_gemm(void *a, int i)
{
    struct mv_arg *m = a;
    return pi_cuda_gemm(m->ctx, m->w[i % m->nw], m->T, m->x, m->y);
}

static int run_mmq(void *a, int i)
{
    struct mv_arg *m = a;
    return pi_cuda_mmq(m->ctx, m->w[i % m->nw], m->T, m->x, m->y, 0);
}

static int run_matmul(void *a, int i)
{
    struct mv_arg *m = a;
    return pi_cuda_matmul(m->ctx, m->w[i % m->nw], m->T, m->x, m->y);
}

static int run_ffn(void *a, int i)
{
    struct mv_arg *m = a;
    int k = (i % (m->nw / 2)) * 2;
    return pi_cuda_ffn_hot(m->ctx, m->w[k], m->w[k + 1], PI_CUDA_ACT_SILU, m->x, NULL, NULL, m->y);
}

struct att_arg {
    pi_cuda_ctx_t *ctx;
    float *q, *out;
    void *kc, *vc;
    int64_t n_kv;
};

static int run_att(void *a, int i)
{
    struct att_arg *t = a;
    (void)i;
    return pi_cuda_attention(t->ctx, 1, 32, 8, 128, t->n_kv - 1, t->q, t->kc, t->vc, t->out);
}

/* Upload `n` copies of a random (rows, cols) weight of type t, enough to exceed the L2 cache. */
static int upload_copies(pi_cuda_ctx_t *ctx, enum pi_type t, int64_t rows, int64_t cols, struct mv_arg *m)
{
    size_t one = 0;
    if (pi_cuda_weight_bytes_for(t, rows, cols, &one) < 0) return -1;
    m->nw = (int)PI_MAX((size_t)2, PI_MIN((size_t)16, ((size_t)256 << 20) / one + 1));
    void *h = rand_weight(t, rows, cols);
    if (!h) return -1;
    for (int k = 0; k < m->nw; k++)
        if (pi_cuda_weight_upload(ctx, t, rows, cols, h, &m->w[k]) < 0) return free(h), -1;
    free(h);
    return 0;
}

static void free_copies(pi_cuda_ctx_t *ctx, struct mv_arg *m)
{
    for (int k = 0; k < m->nw; k++) pi_cuda_weight_destroy(ctx, &m->w[k]);
    m->nw = 0;
}

static float *dev_rand(pi_cuda_ctx_t *ctx, size_t n)
{
    float *h = malloc(n * sizeof(float));
    void *d = NULL;
    if (!h) return NULL;
    for (size_t i = 0; i < n; i++) h[i] = frand();
    if (pi_cuda_alloc(ctx, n * sizeof(float), &d) < 0 || pi_cuda_upload(ctx, d, h, n * sizeof(float)) < 0) d = NULL;
    free(h);
    return d;
}

static const enum pi_type types[] = {PI_TYPE_F16,  PI_TYPE_BF16, PI_TYPE_Q8_0, PI_TYPE_Q6_K,
                                     PI_TYPE_Q5_K, PI_TYPE_Q4_K, PI_TYPE_Q3_K, PI_TYPE_Q2_K,
                                     PI_TYPE_Q5_1, PI_TYPE_Q5_0, PI_TYPE_Q4_1, PI_TYPE_Q4_0};

int pi_bench_cuda(const struct pi_bench_opts *b)
{
    const int64_t rows = b->rows, cols = b->cols;
    const int reps = (int)b->iters;
    int64_t T = 16; /* the largest prompt (at least 16): sizes x and y for the 4 T-token GEMM */
    for (int i = 0; i < b->n_prompt.n; i++) T = PI_MAX(T, b->n_prompt.v[i]);
    if (pi_cuda_device_count() <= 0) {
        fprintf(stderr, "pi-bench: --cuda-kernels: no CUDA device\n");
        return 1;
    }
    char desc[256];
    pi_cuda_device_describe(0, desc, sizeof(desc));
    pi_cuda_ctx_t *ctx = pi_cuda_ctx_new(0, 0, NULL);
    if (!ctx) return 1;
    printf("device: %s\n", desc);

    struct mv_arg m = {.ctx = ctx};
    size_t big = (size_t)1 << 29;
    if (pi_cuda_alloc(ctx, big, (void **)&m.x) < 0 || pi_cuda_alloc(ctx, big, (void **)&m.y) < 0) return 1;
    pi_cuda_memset(ctx, m.x, 0x5a, big);
    double tc = bench(ctx, run_copy, &m, 20);
    double copy_gbs = 2.0 * (double)big / tc / 1e9;
    printf("copy kernel, 512 MiB -> 512 MiB: %.1f GB/s (read + write)\n\n", copy_gbs);
    pi_cuda_free(ctx, m.x), pi_cuda_free(ctx, m.y);

    m.x = dev_rand(ctx, (size_t)PI_MAX(rows, cols) * (size_t)T * 4);
    m.y = dev_rand(ctx, (size_t)PI_MAX(rows, cols) * (size_t)T * 4);
    if (!m.x || !m.y) return 1;
    printf("matvec y = W x (weight bytes / time; %% of the copy bandwidth)\n");
    printf("| type | rows x cols | MiB | R=1 GB/s | R=2 GB/s | R=4 GB/s | staged GB/s | staged-tall GB/s | auto us | auto GB/s | %% copy |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t ti = 0; ti < PI_ARRAY_LEN(types); ti++) {
        for (int o = 0; o < 2; o++) {
            int64_t r = o ? cols : rows, c = o ? rows : cols;
            if (upload_copies(ctx, types[ti], r, c, &m) < 0) {
                printf("| %s | %lld x %lld | (unsupported shape) |\n", pi_type_name(types[ti]), (long long)r, (long long)c);
                free_copies(ctx, &m);
                continue;
            }
            static const int variants[6] = {1, 2, 4, PI_CUDA_MV_STAGED, PI_CUDA_MV_STAGED_TALL, 0};
            double bytes = (double)pi_cuda_weight_bytes(m.w[0]) + 4.0 * (double)(r + c), gbs[6], t = 0;
            for (int k = 0; k < 6; k++) {
                m.R = variants[k];
                t = bench(ctx, run_mv, &m, reps);
                gbs[k] = bytes / t / 1e9;
            }
            printf("| %s | %lld x %lld | %.1f | %.0f | %.0f | %.0f | %.0f | %.0f | %.1f | %.0f | %.0f%% |\n",
                   pi_type_name(types[ti]), (long long)r, (long long)c, bytes / 1048576.0, gbs[0], gbs[1], gbs[2],
                   gbs[3], gbs[4], t * 1e6, gbs[5], 100.0 * gbs[5] / copy_gbs);
            free_copies(ctx, &m);
        }
    }

    /* Batched products: the integer GEMM (pi_cuda_mmq) at every T for the quantised types but Q2_K (pi_cuda_gemm gives
     * it up to PI_CUDA_MMQ_MAX_T tokens), pi_cuda_gemm for F16/BF16 (f16 tiles and cuBLAS); for the
     * integer GEMM's types also the other path, in a second context
     * without it (same weights, same buffers). Batches of 4..64 are serving's decode steps and the
     * engines' prompt chunks; -p and 4 -p are whole prompts. */
    const struct pi_cuda_opts nomq = {.no_mmq = true};
    pi_cuda_ctx_t *ctx16 = pi_cuda_ctx_new(0, (size_t)4 << 30, &nomq);
    if (!ctx16) return 1;
    printf("\nbatched products Y (T, rows) = X (T, cols) W^T (quantised types but Q2_K: pi_cuda_mmq on the integer "
           "tensor cores, kernels/cuda/mmq.cu; F16/BF16 f16 tiles + cublasGemmEx). For those types the other path "
           "beside it: T <= 2 one matvec per token (what pi_cuda_matmul does there), else the f16 tiles\n");
    printf("| type | rows x cols | T | ms | TFLOP/s | weight GB/s | other path | other ms | speedup |\n"
           "|---|---|---|---|---|---|---|---|---|\n");
    int64_t tlist[16];
    int nt = 0;
    tlist[nt++] = 1, tlist[nt++] = 2;
    for (int64_t tt = 4; tt <= 64; tt *= 2) tlist[nt++] = tt;
    for (int pi = 0; pi < b->n_prompt.n && nt < 14; pi++)
        if (b->n_prompt.v[pi] > 64) tlist[nt++] = b->n_prompt.v[pi], tlist[nt++] = 4 * b->n_prompt.v[pi];
    for (size_t ti = 0; ti < PI_ARRAY_LEN(types); ti++) {
        if (upload_copies(ctx, types[ti], rows, cols, &m) < 0) continue;
        const bool mq = pi_cuda_mmq_for(ctx, (int)types[ti]);
        const double wbytes = (double)pi_cuda_weight_bytes(m.w[0]);
        for (int k = 0; k < nt; k++) {
            if (tlist[k] > T * 4 && tlist[k] > 64) continue; /* x and y hold 4 T rows */
            if (!mq && tlist[k] <= 2) continue;
            m.T = tlist[k];
            m.ctx = ctx;
            double t = bench(ctx, mq ? run_mmq : run_gemm, &m, 10), t2 = 0;
            if (mq && m.T <= 2) {
                t2 = bench(ctx, run_matmul, &m, 10);
            } else if (mq) {
                m.ctx = ctx16;
                t2 = bench(ctx16, run_gemm, &m, 10);
                m.ctx = ctx;
            }
            printf("| %s | %lld x %lld | %lld | %.3f | %.1f | %.0f |", pi_type_name(types[ti]), (long long)rows,
                   (long long)cols, (long long)m.T, t * 1e3, 2.0 * (double)m.T * (double)rows * (double)cols / t / 1e12,
                   wbytes / t / 1e9);
            if (mq) printf(" %s | %.3f | %.2fx |\n", m.T <= 2 ? "matvec" : "f16 tiles", t2 * 1e3, t2 / t);
            else printf(" | | |\n");
        }
        free_copies(ctx, &m);
    }
    pi_cuda_ctx_destroy(&ctx16);

    /* Hot FFN: every neuron of a 7B layer on the GPU, all active. */
    {
        void *hgu = rand_weight(PI_TYPE_Q4_0, 2 * rows, cols), *hdn = rand_weight(PI_TYPE_Q8_0, rows, cols);
        m.nw = 4;
        int ok = hgu && hdn;
        for (int k = 0; ok && k < m.nw; k += 2)
            ok = pi_cuda_weight_upload(ctx, PI_TYPE_Q4_0, 2 * rows, cols, hgu, &m.w[k]) == 0 &&
                 pi_cuda_weight_upload(ctx, PI_TYPE_Q8_0, rows, cols, hdn, &m.w[k + 1]) == 0;
        if (ok) {
            double t = bench(ctx, run_ffn, &m, reps);
            double bytes = (double)pi_cuda_weight_bytes(m.w[0]) + (double)pi_cuda_weight_bytes(m.w[1]);
            printf("\nhot FFN, %lld neurons x %lld (Q4_0 gate/up, Q8_0 down), all active: %.1f us, %.0f GB/s (%.0f%% copy)\n",
                   (long long)rows, (long long)cols, t * 1e6, bytes / t / 1e9, 100.0 * bytes / t / 1e9 / copy_gbs);
        }
        free(hgu), free(hdn);
        free_copies(ctx, &m);
    }

    /* Decode attention: 32 heads over 8 kv heads of 128, 4096 cached positions. */
    {
        struct att_arg a = {.ctx = ctx, .n_kv = 4096};
        size_t kvb = (size_t)a.n_kv * 8 * 128 * 2;
        a.q = dev_rand(ctx, 32 * 128);
        a.out = dev_rand(ctx, 32 * 128);
        a.kc = dev_rand(ctx, kvb / 4);
        a.vc = dev_rand(ctx, kvb / 4);
        if (a.q && a.out && a.kc && a.vc) {
            double t = bench(ctx, run_att, &a, reps);
            printf("decode attention, 32/8 heads x 128, 4096 positions (f16 KV %.0f MiB): %.1f us, %.0f GB/s\n",
                   2.0 * kvb / 1048576.0, t * 1e6, 2.0 * kvb / t / 1e9);
        }
    }
    size_t used, peak;
    pi_cuda_ctx_usage(ctx, NULL, &used, &peak, NULL);
    printf("peak budgeted device memory: %.1f MiB\n", peak / 1048576.0);
    pi_cuda_ctx_destroy(&ctx);
    return 0;
}
