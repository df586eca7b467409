/*
 * kernels/cuda/matmul.cu - weights on the device and the products with them: upload (repacking ggml's
 * blocks into the 16-byte aligned device layout of cuda-impl.h), the quantised matrix-vector kernels
 * of decode, the dequantise-to-f16 tiles and cuBLAS tensor-core GEMM of prompt processing, and the row
 * gather of the token embeddings.
 *
 * Matvec threading: one warp computes R consecutive rows; lane l takes segments l, l + 32, ... of the
 * row, so a warp's loads of one row are contiguous (coalesced 16-byte vectors), the 32 x values of a
 * segment are loaded once per R rows (R = 4 keeps the L1 traffic of x under the weight traffic), and
 * the R sums are reduced with shuffles at the end. Decode is bound by the weight bytes, so the aim is
 * the device's copy bandwidth; see doc/cuda.md for the measured numbers. A second, "staged" variant
 * (x in shared memory, several segments' loads in flight per lane) is what decode uses for F16/BF16
 * and for quantised matrices below 12 Mi elements: it keeps more loads in flight, which is what the
 * low-bit types lacked (doc/bench-log.md: 7B-class decode 162 -> 233 tok/s with the other changes
 * of that run). Larger quantised matrices take the 8-bit-x kernel of matvec-q8.cu (matvec_auto).
 * The staged kernel is launched with programmatic dependent launch (cuda-impl.h, DESIGN note there).
 */
#include "kernels/cuda/cuda-impl.h"

#include <climits>
#include <cstdlib>
#include <cstring>

/* ------------------------------------------------------------------ upload */

/* The device layout of each type and the planes' sizes are kernels/cuda/plan.c's (pi_cuda_geom_of,
 * pi_cuda_weight_planes), which the VRAM plan counts with. */

extern "C" size_t pi_cuda_weight_bytes(const pi_cuda_weight_t *w) { return w ? w->bytes : 0; }

/* Copy the ggml data to the device planes, rows_per rows at a time through a host staging buffer of at
 * most `cap` bytes, each chunk converted by pi_cuda_pack_blocks (kernels/cuda/plan.c). */
static int upload_split(pi_cuda_ctx_t *c, pi_cuda_weight_t *w, const pi_cuda_geom &g, const uint8_t *src,
                        uint8_t *stage, size_t cap)
{
    size_t row_blocks = (size_t)w->nblk;
    size_t rows_per = cap / (row_blocks * (g.qbytes + g.sbytes));
    if (rows_per == 0) rows_per = 1;
    for (int64_t r0 = 0; r0 < w->rows; r0 += (int64_t)rows_per) {
        size_t nr = (size_t)PI_MIN((int64_t)rows_per, w->rows - r0);
        size_t nb = nr * row_blocks, b0 = (size_t)r0 * row_blocks;
        uint8_t *sq = stage, *sd = stage + nb * g.qbytes;
        pi_cuda_pack_blocks(&g, src + b0 * g.bbytes, nb, sq, sd);
        /* on the compute stream, waited for: a plain cudaMemcpy from pageable memory may return before
         * its DMA lands, on the legacy stream, which the non-blocking compute stream does not wait for
         * (and the PDL kernels read weights before their wait, cuda-impl.h) */
        PI_TRY(pi_cuda_upload(c, w->q + b0 * g.qbytes, sq, nb * g.qbytes));
        if (g.sbytes) PI_TRY(pi_cuda_upload(c, (uint8_t *)w->d + b0 * g.sbytes, sd, nb * g.sbytes));
    }
    return 0;
}

/* A (rows, cols) weight of type g over the device planes at mem (quant plane, then the side plane at
 * qplane bytes), or NULL when out of host memory; bytes and ownership are the caller's to set. */
static pi_cuda_weight_t *weight_over(int type, int64_t rows, int64_t cols, const pi_cuda_geom &g, size_t qplane, void *mem)
{
    pi_cuda_weight_t *w = (pi_cuda_weight_t *)calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->type = (enum pi_type)type;
    w->rows = rows;
    w->cols = cols;
    w->nblk = cols / g.belems;
    w->qbytes = g.qbytes;
    w->sbytes = g.sbytes;
    w->q = (uint8_t *)mem;
    w->d = g.sbytes ? (__half *)(w->q + qplane) : NULL;
    return w;
}

extern "C" int pi_cuda_weight_upload(pi_cuda_ctx_t *c, int type, int64_t rows, int64_t cols, const void *src,
                                     pi_cuda_weight_t **out)
{
    pi_cuda_geom g;
    size_t qplane, dplane;
    *out = NULL;
    PI_TRY(pi_cuda_weight_planes(type, rows, cols, &g, &qplane, &dplane));
    void *mem = NULL;
    int rc = pi_cuda_alloc(c, qplane + dplane, &mem);
    if (rc < 0) return rc;
    pi_cuda_weight_t *w = weight_over(type, rows, cols, g, qplane, mem);
    if (!w) {
        pi_cuda_free(c, mem);
        return -PI_ERR_NOMEM;
    }
    pi_cuda_weight_bytes_for(type, rows, cols, &w->bytes);
    if (pi_cuda_geom_as_file(&g)) { /* ggml's layout itself (not Q3_K: padded) */
        rc = pi_cuda_upload(c, w->q, src, (size_t)rows * (size_t)w->nblk * g.qbytes);
    } else {
        size_t cap = 16u << 20;
        uint8_t *stage = (uint8_t *)malloc(cap + (size_t)w->nblk * (g.qbytes + g.sbytes));
        rc = stage ? upload_split(c, w, g, (const uint8_t *)src, stage, cap) : -PI_ERR_NOMEM;
        free(stage);
    }
    if (rc < 0) {
        pi_cuda_weight_destroy(c, &w);
        return rc;
    }
    *out = w;
    return 0;
}

extern "C" int pi_cuda_weight_wrap(int type, int64_t rows, int64_t cols, void *d_mem, pi_cuda_weight_t **out)
{
    pi_cuda_geom g;
    size_t qplane, dplane;
    *out = NULL;
    PI_TRY(pi_cuda_weight_planes(type, rows, cols, &g, &qplane, &dplane));
    PI_ASSERT(((uintptr_t)d_mem & (PI_CUDA_ALLOC_ALIGN - 1)) == 0);
    pi_cuda_weight_t *w = weight_over(type, rows, cols, g, qplane, d_mem);
    if (!w) return -PI_ERR_NOMEM;
    w->bytes = 0;
    w->view = true; /* owns no device memory: pi_cuda_weight_destroy frees only the struct */
    *out = w;
    return 0;
}

extern "C" int pi_cuda_weight_view(const pi_cuda_weight_t *w, int64_t r0, int64_t nr, pi_cuda_weight_t **out)
{
    *out = NULL;
    if (r0 < 0 || nr < 1 || r0 + nr > w->rows) {
        pi_error("cuda: view of rows [%lld, %lld) of a weight of %lld rows", (long long)r0, (long long)(r0 + nr),
                 (long long)w->rows);
        return -PI_ERR_RANGE;
    }
    pi_cuda_weight_t *v = (pi_cuda_weight_t *)malloc(sizeof *v);
    if (!v) return -PI_ERR_NOMEM;
    *v = *w;
    v->rows = nr;
    v->q = w->q + (size_t)r0 * (size_t)w->nblk * w->qbytes; /* qbytes * nblk is a multiple of 16 */
    v->d = w->d ? (__half *)((uint8_t *)w->d + (size_t)r0 * (size_t)w->nblk * w->sbytes) : NULL;
    v->bytes = 0;
    v->view = true;
    *out = v;
    return 0;
}

extern "C" void pi_cuda_weight_destroy(pi_cuda_ctx_t *c, pi_cuda_weight_t **pw)
{
    if (!pw || !*pw) return;
    if (!(*pw)->view) (void)pi_cuda_free(c, (*pw)->q);
    free(*pw);
    *pw = NULL;
}

/* ------------------------------------------------------------------ matvec */

/* xv = the 32 floats of one segment of x at p (through the read-only cache with LDG, else plain loads:
 * shared memory), and for the quantised types xs0, xs1 = the sums of its halves (each half's offset
 * term in pi_seg_dot_raw). */
template <int T, bool LDG>
__device__ __forceinline__ void pi_x_seg(const float4 *p, float (&xv)[32], float &xs0, float &xs1)
{
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const float4 f = LDG ? __ldg(p + k) : p[k];
        xv[4 * k] = f.x, xv[4 * k + 1] = f.y, xv[4 * k + 2] = f.z, xv[4 * k + 3] = f.w;
    }
    xs0 = 0.0f, xs1 = 0.0f;
    if constexpr (T != PI_TYPE_F16 && T != PI_TYPE_BF16) {
#pragma unroll
        for (int j = 0; j < 16; j++) xs0 += xv[j], xs1 += xv[16 + j];
    }
}

template <int T, int R, bool GLU>
__global__ void __launch_bounds__(128) k_matvec(pi_wdev w, const float *__restrict__ x, pi_mv_epi e)
{
    const int lane = threadIdx.x & 31;
    const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int64_t r0 = warp * R;
    if (r0 >= w.rows) return;
    if (GLU && pi_mv_masked_off(e, warp, lane)) return;
    float acc[R];
#pragma unroll
    for (int i = 0; i < R; i++) acc[i] = 0.0f;
    const int64_t nseg = w.cols >> 5;
    for (int64_t s = lane; s < nseg; s += 32) {
        float xv[32], xs0, xs1;
        pi_x_seg<T, true>((const float4 *)(x + s * 32), xv, xs0, xs1);
#pragma unroll
        for (int i = 0; i < R; i++) {
            int64_t r = r0 + i < w.rows ? r0 + i : w.rows - 1;
            acc[i] += pi_seg_dot<T>(w, r, s, xv, xs0, xs1);
        }
    }
#pragma unroll
    for (int i = 0; i < R; i++) acc[i] = pi_warp_sum(acc[i]);
    if (lane == 0) pi_mv_finish<R, GLU>(e, warp, r0, w.rows, acc);
}

/* The staged variant: the block copies x into shared memory (segment rows padded to 36 floats so
 * that a quarter-warp's 16-byte reads of 8 different segments hit distinct banks), then each warp
 * computes R rows with every lane issuing the loads of U segments of all R rows before any arithmetic,
 * so U * R weight loads per lane are in flight instead of R (the register-x kernel above waits on one
 * segment's latency per iteration, which bounds the low-bit types). The first U segments' weights are
 * requested before x is staged (PRE), so their latency overlaps the staging's (a 4096-column decode
 * matrix is only 4 segments per lane: without it the staging was a fixed delay of every launch). PRE
 * holds those registers through the staging, so it is used where they are few: Q4_0 without the GLU
 * epilogue (with it, 63 -> 77 registers cost the gate/up kernel a block per SM: 26.6 -> 30.0 us on
 * the 7B-class matrix under ncu, H100). */
#define PI_XS_PAD 36
#define PI_XS_THREADS 256

/* Where float4 i of x (its segment i / 8, quarter i % 8) is staged in the padded shared layout. */
__device__ __forceinline__ int64_t pi_xs_at(int64_t i) { return (i >> 3) * (PI_XS_PAD / 4) + (i & 7); }

/* raw[u][i] = segment sb + 32 u of row r0 + i, both clamped (to segment end - 1, to the last row):
 * the clamped loads are never used, they only keep the addresses valid. */
template <int T, int R, int U>
__device__ __forceinline__ void pi_xs_load(const pi_wdev &w, int64_t r0, int64_t sb, int64_t end, pi_seg_raw (&raw)[U][R])
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int64_t s = sb + 32 * u < end ? sb + 32 * u : end - 1;
#pragma unroll
        for (int i = 0; i < R; i++) pi_seg_load<T>(w, r0 + i < w.rows ? r0 + i : w.rows - 1, s, raw[u][i]);
    }
}

/* acc[i] += the loaded segments sb + 32 u (those below end) of row r0 + i times x, staged in shared
 * memory from segment base on (segment s at xs + (s - base) * PI_XS_PAD). */
template <int T, int R, int U>
__device__ __forceinline__ void pi_xs_accum(const pi_seg_raw (&raw)[U][R], const float *xs, int64_t base, int64_t sb,
                                            int64_t end, float (&acc)[R])
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int64_t s = sb + 32 * u;
        if (s >= end) break;
        float xv[32], xs0, xs1;
        pi_x_seg<T, false>((const float4 *)(xs + (s - base) * PI_XS_PAD), xv, xs0, xs1);
#pragma unroll
        for (int i = 0; i < R; i++) acc[i] += pi_seg_dot_raw<T>(raw[u][i], xv, xs0, xs1);
    }
}

/* NORM (the backend's one-token steps since session 4): x is the residual
 * stream h, and the block applies the layer's RMSNorm while staging it (sum of squares of the float4s
 * each thread stages, a block reduction, then each thread scales the values it staged by inv * g, the
 * formula of pi_cuda_rmsnorm), which saves the separate RMSNorm launch before the q/k/v and gate/up
 * products. */
template <int T, int R, int U, bool GLU, bool PRE, bool NORM>
__global__ void __launch_bounds__(PI_XS_THREADS) k_matvec_xs(pi_wdev w, const float *__restrict__ x, pi_mv_epi e)
{
    static_assert(!GLU || R == 2, "the GLU epilogue takes a gate/up pair per warp");
    pi_pdl_launch();
    extern __shared__ float4 xs4[];
    const float *xs = (const float *)xs4;
    const int64_t nseg = w.cols >> 5;
    const int lane = threadIdx.x & 31;
    const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int64_t r0 = warp * R;
    bool live = r0 < w.rows;
    /* before the wait (cuda-impl.h): weights only, the first round's into registers (PRE) or into L2
     * (not for masked gate/up pairs, half of which the mask skips) */
    pi_seg_raw raw[U][R];
    if (PRE && live) pi_xs_load<T, R, U>(w, r0, lane, nseg, raw);
    else if (live && !(GLU && e.mask)) pi_rows_prefetch<T>(w, r0, R, 32 * U, lane);
    pi_pdl_wait();
    if (GLU && live && e.mask) { /* as pi_mv_masked_off, written out: it keeps this kernel's code as measured */
        int64_t id = e.ids ? e.ids[warp] : warp;
        if (!e.mask[id]) {
            if (lane == 0) e.y[warp] = 0.0f;
            live = false;
        }
    }
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < (w.cols >> 2); i += blockDim.x) {
        const float4 v = __ldg((const float4 *)x + i);
        xs4[pi_xs_at(i)] = v;
        if (NORM) ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    if constexpr (NORM) {
        __shared__ float red[PI_XS_THREADS / 32];
        const float inv = rsqrtf(pi_block_sum<PI_XS_THREADS>(ss, red) / (float)w.cols + e.eps);
        for (int64_t i = threadIdx.x; i < (w.cols >> 2); i += blockDim.x) { /* the values this thread staged */
            float4 *p = &xs4[pi_xs_at(i)];
            const float4 v = *p, gv = __ldg((const float4 *)e.ng + i);
            *p = make_float4(v.x * inv * gv.x, v.y * inv * gv.y, v.z * inv * gv.z, v.w * inv * gv.w);
        }
    }
    __syncthreads();
    if (!live) return;
    float acc[R];
#pragma unroll
    for (int i = 0; i < R; i++) acc[i] = 0.0f;
    for (int64_t sb = lane; sb < nseg; sb += 32 * U) {
        if (!PRE || sb != lane) pi_xs_load<T, R, U>(w, r0, sb, nseg, raw);
        pi_xs_accum<T, R, U>(raw, xs, 0, sb, nseg, acc);
    }
#pragma unroll
    for (int i = 0; i < R; i++) acc[i] = pi_warp_sum(acc[i]);
    if (lane == 0) pi_mv_finish<R, GLU>(e, warp, r0, w.rows, acc);
}

template <int T, int R, int U, bool GLU, bool NORM>
static int launch_xs(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *x, const pi_mv_epi &e)
{
    constexpr bool PRE = !GLU && T == PI_TYPE_Q4_0;
    static size_t smem_set = 48 * 1024; /* the limit raised so far for this instantiation */
    const size_t smem = (size_t)(w->cols / 32) * PI_XS_PAD * sizeof(float);
    if (smem > smem_set) {
        PI_CU(cudaFuncSetAttribute(k_matvec_xs<T, R, U, GLU, PRE, NORM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem));
        smem_set = smem;
    }
    const int64_t rows_per_block = (PI_XS_THREADS / 32) * R;
    const unsigned blocks = (unsigned)((w->rows + rows_per_block - 1) / rows_per_block);
    PI_CU(pi_launch_pdl(c, k_matvec_xs<T, R, U, GLU, PRE, NORM>, dim3(blocks), dim3(PI_XS_THREADS), smem, pi_wdev_of(w), x, e));
    PI_CU_LAUNCH("k_matvec_xs");
    return 0;
}

template <int T, int R, int U, bool GLU>
static int launch_matvec_xs(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *x, const pi_mv_epi &e)
{
    return e.ng ? launch_xs<T, R, U, GLU, true>(c, w, x, e) : launch_xs<T, R, U, GLU, false>(c, w, x, e);
}

/* R rows per warp and U segments per lane in flight, U R = 8 for the 32-element block types (4 for the
 * bigger segments of the others): narrow (R = 1), wide (R = 2) or tall (R = 4). With a GLU epilogue (e.act != 0)
 * always wide: a warp takes one gate/up pair. */
static int matvec_xs(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *x, const pi_mv_epi &e, int R)
{
    if (w->cols > c->xs_max_cols) {
        pi_error("cuda: staged matvec: %lld columns exceed the shared memory (at most %lld)", (long long)w->cols,
                 (long long)c->xs_max_cols);
        return -PI_ERR_UNSUPPORTED;
    }
    return pi_dispatch_type(w->type, [&](auto tag) -> int {
        constexpr int T = decltype(tag)::value;
        constexpr int U = pi_small_seg<T>() ? 8 : 4;
        if (e.act) return launch_matvec_xs<T, 2, U / 2, true>(c, w, x, e);
        if (R == 1) return launch_matvec_xs<T, 1, U, false>(c, w, x, e);
        return R == 4 ? launch_matvec_xs<T, 4, U / 4, false>(c, w, x, e) : launch_matvec_xs<T, 2, U / 2, false>(c, w, x, e);
    });
}

template <int R, bool GLU>
static int launch_matvec(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *x, const pi_mv_epi &e)
{
    int64_t warps = (w->rows + R - 1) / R;
    int64_t blocks = (warps + 3) / 4;
    pi_wdev wd = pi_wdev_of(w);
    return pi_dispatch_type(w->type, [&](auto tag) -> int {
        k_matvec<decltype(tag)::value, R, GLU><<<(unsigned)blocks, 128, 0, c->stream>>>(wd, x, e);
        PI_CU_LAUNCH("k_matvec");
        return 0;
    });
}

/* Variant R of the product with epilogue e (a norm, e.ng, only with the staged variants). */
static int matvec_r(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *d_x, const pi_mv_epi &e, int R)
{
    if (R >= PI_CUDA_MV_Q8 && R <= PI_CUDA_MV_Q8_4) {
        if (pi_cuda_q8_type(w->type)) return pi_cuda_matvec_q8(c, w, d_x, e, R == PI_CUDA_MV_Q8 ? 0 : 1 << (R - PI_CUDA_MV_Q8_1));
        R = PI_CUDA_MV_STAGED; /* the float kernels for F16 and BF16 */
    }
    if (e.ng && (R < PI_CUDA_MV_STAGED || w->cols > c->xs_max_cols)) {
        pi_error("cuda: matvec variant %d cannot apply the norm", R);
        return -PI_ERR_UNSUPPORTED;
    }
    switch (R) {
    case 1: return launch_matvec<1, false>(c, w, d_x, e);
    case 2: return launch_matvec<2, false>(c, w, d_x, e);
    case 4: return launch_matvec<4, false>(c, w, d_x, e);
    case PI_CUDA_MV_STAGED: return matvec_xs(c, w, d_x, e, 2);
    case PI_CUDA_MV_STAGED_TALL: return matvec_xs(c, w, d_x, e, 4);
    case PI_CUDA_MV_STAGED_NARROW: return matvec_xs(c, w, d_x, e, 1);
    default: pi_error("cuda: matvec variant %d unknown", R); return -PI_ERR_INVAL;
    }
}

extern "C" int pi_cuda_matvec_r(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *d_x, float *d_y, int R)
{
    pi_mv_epi e = {d_y, 0, NULL, NULL, (R & PI_CUDA_MV_ADD) != 0, NULL, 0.0f};
    return matvec_r(c, w, d_x, e, R & ~PI_CUDA_MV_ADD);
}

/* The staged kernel where x fits its shared memory, with the most rows per warp that still gives every
 * SM two blocks of 8 warps: 4 from 64 n_sm rows (8448 on the H100: the 7B-class q/k/v stack, the
 * output head), 2 from 32 n_sm, else 1 (the 4096-row attention output and down matrices: 512 blocks
 * instead of the 128 of R = 4, which left the SMs with one block's loads in flight;
 * doc/bench-log.md). Otherwise the register-x kernel with the automatic R (the table in doc/cuda.md,
 * H100): 4 rows per warp from 16 rows per SM up, fewer for small matrices so that every SM still gets
 * warps. */
static int matvec_auto(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *d_x, const pi_mv_epi &e)
{
    if (pi_cuda_q8_for(c, w->type, w->rows, w->cols)) return pi_cuda_matvec_q8(c, w, d_x, e, 0);
    if (w->cols <= c->xs_max_cols) {
        const int64_t blocks2 = 2 * (int64_t)c->n_sm * (PI_XS_THREADS / 32); /* warps for 2 blocks per SM */
        const int v = w->rows >= 4 * blocks2 ? PI_CUDA_MV_STAGED_TALL
                      : (w->rows >= 2 * blocks2 ? PI_CUDA_MV_STAGED : PI_CUDA_MV_STAGED_NARROW);
        return matvec_r(c, w, d_x, e, v);
    }
    int R = w->rows >= (int64_t)c->n_sm * 16 ? 4 : (w->rows >= (int64_t)c->n_sm * 4 ? 2 : 1);
    return matvec_r(c, w, d_x, e, R);
}

extern "C" int pi_cuda_matvec(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *d_x, float *d_y)
{
    pi_mv_epi e = {d_y, 0, NULL, NULL, 0, NULL, 0.0f};
    return matvec_auto(c, w, d_x, e);
}

extern "C" int pi_cuda_matvec_add(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *d_x, float *d_y)
{
    pi_mv_epi e = {d_y, 0, NULL, NULL, 1, NULL, 0.0f};
    return matvec_auto(c, w, d_x, e);
}

/* One segment below the staging's limit: the NORM instances also hold 32 bytes of static shared memory. */
extern "C" bool pi_cuda_norm_fusable(const pi_cuda_ctx_t *c, const pi_cuda_weight_t *w)
{
    if (pi_cuda_q8_for(c, w->type, w->rows, w->cols)) return true;
    return w->cols <= c->xs_max_cols - 32 && w->cols % 4 == 0;
}

extern "C" int pi_cuda_matvec_norm(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *d_h, const float *d_g,
                                   float eps, float *d_y)
{
    if (!pi_cuda_norm_fusable(c, w)) {
        pi_error("cuda: matvec_norm: a (%lld, %lld) weight cannot take the norm in its staging", (long long)w->rows,
                 (long long)w->cols);
        return -PI_ERR_UNSUPPORTED;
    }
    pi_mv_epi e = {d_y, 0, NULL, NULL, 0, d_g, eps};
    return matvec_auto(c, w, d_h, e);
}

/* Gate/up pairs of the hot FFN: a (n_hot,) = act(gate . x, up . x), 0 for inactive neurons; the staged
 * kernel (one pair per warp) where x fits its shared memory. */
int pi_cuda_ffn_gu(pi_cuda_ctx_t *c, const pi_cuda_weight_t *gu, int act, const float *d_x, const uint8_t *d_mask,
                   const int32_t *d_ids, const float *d_norm_g, float eps, float *d_a)
{
    pi_mv_epi e = {d_a, act, d_mask, d_ids, 0, d_norm_g, eps};
    if (d_norm_g && !pi_cuda_norm_fusable(c, gu)) {
        pi_error("cuda: gate/up pairs (%lld columns) cannot take the norm in their staging", (long long)gu->cols);
        return -PI_ERR_UNSUPPORTED;
    }
    if (pi_cuda_q8_for(c, gu->type, gu->rows, gu->cols)) return pi_cuda_matvec_q8(c, gu, d_x, e, 2);
    if (gu->cols <= c->xs_max_cols) return matvec_xs(c, gu, d_x, e, 2);
    return launch_matvec<2, true>(c, gu, d_x, e);
}

/* ------------------------------------------------------------------ dequantise, gather, GEMM */

/* out (nr, cols) f16 = rows [r0, r0 + nr) of W. Thread i decodes segment i of the nr * nseg (row after
 * row), so a warp's reads are contiguous. Its 64 bytes of f16 are not stored directly: four 16-byte
 * stores 64 bytes apart per lane fill a quarter of each line per instruction (dequantisation ran at
 * 1.37 TB/s read + written for Q4_0, pi-bench-cuda, H100). A warp's 32 segments are 2 KiB contiguous
 * in out (segment i starts at out + 32 i), so they go through shared memory (a lane's 64 bytes at a
 * stride of 80, which keeps 8 lanes' 16-byte stores on distinct banks; the reads back conflict two
 * ways, and a swizzle that removes that measured no faster) and each store instruction writes 512
 * contiguous bytes. */
#define PI_DQ_THREADS 256
template <int T>
__global__ void __launch_bounds__(PI_DQ_THREADS) k_dequant_f16(pi_wdev w, int64_t r0, int64_t nr, __half *__restrict__ out)
{
    __shared__ uint4 sh[PI_DQ_THREADS / 32][32 * 5];
    const int lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
    const int64_t nseg = w.cols >> 5, n = nr * nseg;
    const int64_t i0 = (int64_t)blockIdx.x * blockDim.x + wi * 32, i = i0 + lane;
    if (i0 >= n) return; /* the whole warp */
    if (i < n) {
        const int64_t r = i / nseg, s = i - r * nseg;
        float v[32];
        pi_seg_decode<T>(w, r0 + r, s, v);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint4 u;
            __half2 *h = (__half2 *)&u;
#pragma unroll
            for (int j = 0; j < 4; j++) h[j] = __floats2half2_rn(v[8 * k + 2 * j], v[8 * k + 2 * j + 1]);
            sh[wi][lane * 5 + k] = u;
        }
    }
    __syncwarp();
    uint4 *o = (uint4 *)(out + i0 * 32);
    const int nch = (int)PI_MIN((int64_t)32, n - i0) * 4; /* 16-byte chunks of the warp's output */
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int c = k * 32 + lane; /* chunk c: segment c / 4, quarter c % 4 */
        if (c < nch) o[c] = sh[wi][(c >> 2) * 5 + (c & 3)];
    }
}

static int dequant_rows(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t r0, int64_t nr, __half *out)
{
    int64_t n = nr * (w->cols >> 5);
    pi_wdev wd = pi_wdev_of(w);
    return pi_dispatch_type(w->type, [&](auto tag) -> int {
        k_dequant_f16<decltype(tag)::value><<<(unsigned)((n + PI_DQ_THREADS - 1) / PI_DQ_THREADS), PI_DQ_THREADS, 0,
                                              c->stream>>>(wd, r0, nr, out);
        PI_CU_LAUNCH("k_dequant_f16");
        return 0;
    });
}

extern "C" int pi_cuda_dequant_f16(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, void *d_out)
{
    return dequant_rows(c, w, 0, w->rows, (__half *)d_out);
}

template <int T>
__global__ void k_get_rows(pi_wdev w, int64_t n_ids, const int32_t *__restrict__ ids, float *__restrict__ out)
{
    const int64_t nseg = w.cols >> 5;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_ids * nseg) return;
    const int64_t t = i / nseg, s = i - t * nseg;
    const int32_t id = ids[t];
    float v[32];
    if (id >= 0 && id < w.rows) {
        pi_seg_decode<T>(w, id, s, v);
    } else {
#pragma unroll
        for (int j = 0; j < 32; j++) v[j] = __int_as_float(0x7fc00000);
    }
    float4 *o = (float4 *)(out + t * w.cols + s * 32);
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
}

extern "C" int pi_cuda_get_rows(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t n_ids, const int32_t *d_ids,
                                float *d_out)
{
    if (n_ids <= 0) return n_ids == 0 ? 0 : -PI_ERR_INVAL;
    int64_t n = n_ids * (w->cols >> 5);
    pi_wdev wd = pi_wdev_of(w);
    return pi_dispatch_type(w->type, [&](auto tag) -> int {
        k_get_rows<decltype(tag)::value><<<(unsigned)((n + 255) / 256), 256, 0, c->stream>>>(wd, n_ids, d_ids, d_out);
        PI_CU_LAUNCH("k_get_rows");
        return 0;
    });
}

__global__ void k_f32_to_f16(int64_t n, const float *__restrict__ x, __half *__restrict__ y)
{
    int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 2;
    if (i + 1 < n) {
        float2 f = *(const float2 *)(x + i);
        *(__half2 *)(y + i) = __floats2half2_rn(f.x, f.y);
    } else if (i < n) {
        y[i] = __float2half_rn(x[i]);
    }
}

/* Y[:, r0 : r0 + nr] = X16 @ A^T with A (nr, k) f16 row-major; Y (T, ldc) f32 row-major. In cuBLAS'
 * column-major terms: C (nr, T) = op(A) (nr, k) * B (k, T), op = transpose of the column-major (k, nr). */
static int gemm_f16(pi_cuda_ctx_t *c, const __half *A, int64_t nr, int64_t k, const __half *X16, int64_t T, float *Y,
                    int64_t ldc, float beta)
{
    const float alpha = 1.0f;
    PI_CUBLAS(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, (int)T, (int)k, &alpha, A, CUDA_R_16F, (int)k,
                           X16, CUDA_R_16F, (int)k, &beta, Y, CUDA_R_32F, (int)ldc, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT));
    return 0;
}

static int gemm(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y, float beta)
{
    if (T <= 0 || T > INT_MAX / 2) {
        pi_error("cuda: gemm with %lld tokens", (long long)T);
        return -PI_ERR_INVAL;
    }
    if (T <= PI_CUDA_MMQ_MAX_T && pi_cuda_mmq_for(c, w->type)) return pi_cuda_mmq(c, w, T, d_X, d_Y, beta != 0.0f);
    void *x16 = NULL, *tile = NULL;
    int64_t n = T * w->cols;
    PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_X16, pi_cuda_gemm_x16_bytes(T, w->cols), &x16));
    k_f32_to_f16<<<(unsigned)((n / 2 + 256) / 256), 256, 0, c->stream>>>(n, d_X, (__half *)x16);
    PI_CU_LAUNCH("k_f32_to_f16");
    if (w->type == PI_TYPE_F16)
        return gemm_f16(c, (const __half *)w->q, w->rows, w->cols, (__half *)x16, T, d_Y, w->rows, beta);
    const int64_t tile_rows = pi_cuda_gemm_tile_rows(w->rows, w->cols); /* the plan counts the same tile */
    PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_TILE, (size_t)tile_rows * (size_t)w->cols * 2, &tile));
    for (int64_t r0 = 0; r0 < w->rows; r0 += tile_rows) {
        int64_t nr = PI_MIN(tile_rows, w->rows - r0);
        PI_TRY(dequant_rows(c, w, r0, nr, (__half *)tile));
        PI_TRY(gemm_f16(c, (const __half *)tile, nr, w->cols, (__half *)x16, T, d_Y + r0, w->rows, beta));
    }
    return 0;
}

extern "C" int pi_cuda_gemm_reserve(pi_cuda_ctx_t *c, size_t x16_bytes, size_t tile_bytes)
{
    void *p = NULL;
    if (x16_bytes) PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_X16, x16_bytes, &p));
    if (tile_bytes) PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_TILE, tile_bytes, &p));
    return 0;
}

extern "C" int pi_cuda_gemm(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y)
{
    return gemm(c, w, T, d_X, d_Y, 0.0f);
}

static int matmul(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y, int add)
{
    if (T > PI_CUDA_MATVEC_MAX_ROWS) return gemm(c, w, T, d_X, d_Y, add ? 1.0f : 0.0f);
    for (int64_t t = 0; t < T; t++) {
        const pi_mv_epi e = {d_Y + t * w->rows, 0, NULL, NULL, add, NULL, 0.0f};
        PI_TRY(matvec_auto(c, w, d_X + t * w->cols, e));
    }
    return 0;
}

extern "C" int pi_cuda_matmul(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y)
{
    return matmul(c, w, T, d_X, d_Y, 0);
}

extern "C" int pi_cuda_matmul_add(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y)
{
    return matmul(c, w, T, d_X, d_Y, 1);
}
