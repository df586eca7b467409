/*
 * kernels/cuda/matvec-q8.cu - the decode matrix-vector product with x quantised to 8 bits: the x
 * quantiser (optionally applying the layer's RMSNorm first) and the integer-dot matvec over the
 * quantised weight types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants; F16/BF16 keep the float kernels
 * of matmul.cu).
 *
 * Why: the float kernels spend two instructions per weight converting and multiplying bytes, and each
 * block stages all of x (4 bytes per column) in shared memory before its first multiply, which left the
 * 4096-row attention output and down matrices of a 7B-class decode at a third of the copy bandwidth
 * (doc/bench-log.md, "Session 4"). Here x becomes, per 32-element segment, 32 int8 values q and a
 * scale d (x ~ d q; d = max |x| / 127, 0 below FLT_MIN, q = round-to-nearest-even(x / d)), with the integer sums of q
 * over each 16-element half. The product of a weight segment with it is two sums of 16 byte products,
 * four dp4a instructions each (4 multiply-adds per instruction), in exact integer arithmetic; the
 * weight's per-half scale and offset (cuda-impl.h, pi_seg_unpack_raw) and d are applied once per
 * segment. The quantised x (48 bytes per segment) is read through the L1 cache, not staged, so a block
 * starts its weight loads at once and occupancy is bounded by registers only.
 *
 * Precision: the quantisation of x is the only approximation (relative error of x about 0.4% for
 * uniform values; the same scheme as the CPU kernels' Q8_0 activations, kernels/cpu/quant.h, except
 * that the scale stays a float here). test-cuda checks the kernel against a host reference that
 * quantises x the same way (agreement to float rounding) and against the exact product.
 *
 * Layout of the quantised x in the context's XQ scratch (nseg = cols / 32 segments): nseg * 32 int8
 * values, then nseg int4 {float bits of d, sum of q[0..15], sum of q[16..31], 0}.
 *
 * Every kernel here is launched with programmatic dependent launch (cuda-impl.h, DESIGN note there).
 */
#include "kernels/cuda/cuda-impl.h"

#define PI_Q8_QUANT_THREADS 256
#define PI_Q8_THREADS 128

/* pi_cuda_xq_bytes (kernels/cuda/plan.c) counts this layout: PI_CUDA_XQ_SEG_BYTES per segment. */
static_assert(PI_CUDA_XQ_SEG_BYTES == 32 + sizeof(int4), "the XQ layout and the plan agree");

extern "C" int pi_cuda_xq_reserve(pi_cuda_ctx_t *c, size_t bytes)
{
    void *buf = NULL;
    return pi_cuda_scratch(c, PI_CUDA_SCR_XQ, bytes, &buf);
}

/* Segment s = blockIdx.x * 8 + warp of x (n,) -> qs[32 s ..], meta[s]; lane j quantises element j.
 * NORM: x is the residual h and each block also computes RMSNorm's scale over all of h (every block
 * the same sum, in the same order), then quantises x = h * inv * g. Every load a thread needs is
 * issued before the first use (its element and weight, then 4 float4 of h at a time for the sum), so
 * the kernel waits about one memory latency: the first form, one float4 per loop step, took 4.4 us per
 * 4096-float row (ncu, H200), as long as the matvec's gain from quantising. */
template <bool NORM>
__global__ void __launch_bounds__(PI_Q8_QUANT_THREADS) k_quant_x8(int64_t n, const float *__restrict__ x,
                                                                  const float *__restrict__ g, float eps,
                                                                  int8_t *__restrict__ qs, int4 *__restrict__ meta)
{
    pi_pdl_launch();
    const int lane = threadIdx.x & 31;
    const int64_t s = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const bool live = s < (n >> 5);
    const float gv = NORM && live ? __ldg(g + s * 32 + lane) : 0.0f; /* a weight: before the wait */
    pi_pdl_wait();
    float v = live ? __ldg(x + s * 32 + lane) : 0.0f;
    if constexpr (NORM) {
        __shared__ float red[PI_Q8_QUANT_THREADS / 32];
        const float4 *x4 = (const float4 *)x;
        const int64_t n4 = n >> 2, step = (int64_t)blockDim.x;
        float ss = 0.0f;
        for (int64_t i = threadIdx.x; i < n4; i += 4 * step) {
            float4 f[4];
#pragma unroll
            for (int k = 0; k < 4; k++) f[k] = i + k * step < n4 ? __ldg(x4 + i + k * step) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int k = 0; k < 4; k++) ss += f[k].x * f[k].x + f[k].y * f[k].y + f[k].z * f[k].z + f[k].w * f[k].w;
        }
        const float tot = pi_block_sum<PI_Q8_QUANT_THREADS>(ss, red);
        v = v * rsqrtf(tot / (float)n + eps) * gv;
    }
    if (live) pi_q8_quant_warp(v, s, lane, qs, meta);
}

/* dp4a with unsigned bytes a and signed bytes b: c + sum of the four products. */
__device__ __forceinline__ int pi_dp4a_us(uint32_t a, uint32_t b, int c)
{
    int r;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

/* The dot product of a loaded weight segment with the quantised x segment (xa: q[0..15], xb: q[16..31],
 * m its meta). Integer where the weight's offset is an integer multiple of its scale (Q4_0: 8, Q5_0:
 * 16, Q3_K: 4, Q6_K: 32, Q8_0: signed bytes), so only the final scaling rounds; the types with a float
 * min (Q4_1, Q5_1: + m; Q2_K, Q4_K, Q5_K: - dmin m) take their integer sums times the scale, minus the
 * offset times the integer sum of x's half. */
template <int T>
__device__ __forceinline__ float pi_seg_dot_q8(const pi_seg_raw &r, const uint4 &xa, const uint4 &xb, const int4 &m)
{
    const float dx = __int_as_float(m.x);
    const uint32_t xl[4] = {xa.x, xa.y, xa.z, xa.w}, xh[4] = {xb.x, xb.y, xb.z, xb.w};
    if constexpr (T == PI_TYPE_Q8_0) {
        const uint32_t w0[4] = {r.a.x, r.a.y, r.a.z, r.a.w}, w1[4] = {r.b.x, r.b.y, r.b.z, r.b.w};
        int i = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) i = __dp4a((int)w0[j], (int)xl[j], i), i = __dp4a((int)w1[j], (int)xh[j], i);
        return dx * pi_h2f_bits(r.m) * (float)i;
    } else {
        pi_seg_u8 u;
        pi_seg_unpack_raw<T>(r, u);
        int i0 = 0, i1 = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) i0 = pi_dp4a_us(u.lo[j], xl[j], i0), i1 = pi_dp4a_us(u.hi[j], xh[j], i1);
        if constexpr (T == PI_TYPE_Q4_0) return dx * u.s0 * (float)(i0 + i1 - 8 * (m.y + m.z));
        else if constexpr (T == PI_TYPE_Q5_0) return dx * u.s0 * (float)(i0 + i1 - 16 * (m.y + m.z));
        else if constexpr (T == PI_TYPE_Q6_K) return dx * (u.s0 * (float)(i0 - 32 * m.y) + u.s1 * (float)(i1 - 32 * m.z));
        else if constexpr (T == PI_TYPE_Q3_K) return dx * (u.s0 * (float)(i0 - 4 * m.y) + u.s1 * (float)(i1 - 4 * m.z));
        else return dx * (u.s0 * (float)i0 + u.s1 * (float)i1 - (u.o0 * (float)m.y + u.o1 * (float)m.z));
    }
}

/* acc[i] = row r0 + i of W (clamped to the last row) times the quantised x (qs, meta), summed over
 * the warp (every lane holds the sums): lane l takes segments l, l + 32, ...; each lane issues the
 * loads of U segments of all R rows and of x before any arithmetic. WAIT: the first round's weight
 * bytes are prefetched into L2 before pi_pdl_wait() (cuda-impl.h), everything is read after it. */
template <int T, int R, int U, bool WAIT>
__device__ __forceinline__ void pi_q8_rows(const pi_wdev &w, const uint8_t *__restrict__ qs, const int4 *__restrict__ meta,
                                           int64_t r0, int lane, float (&acc)[R])
{
    const int64_t nseg = w.cols >> 5;
    if constexpr (WAIT) {
        pi_rows_prefetch<T>(w, r0, R, 32 * U, lane);
        pi_pdl_wait();
    }
#pragma unroll
    for (int i = 0; i < R; i++) acc[i] = 0.0f;
    for (int64_t sb = lane; sb < nseg; sb += 32 * U) {
        pi_seg_raw raw[U][R];
        uint4 xa[U], xb[U];
        int4 xm[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t s = sb + 32 * u < nseg ? sb + 32 * u : nseg - 1; /* clamped: loaded, not used */
#pragma unroll
            for (int i = 0; i < R; i++) pi_seg_load<T>(w, r0 + i < w.rows ? r0 + i : w.rows - 1, s, raw[u][i]);
            xa[u] = pi_ld16(qs + s * 32), xb[u] = pi_ld16(qs + s * 32 + 16);
            xm[u] = __ldg(meta + s);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (sb + 32 * u >= nseg) break;
#pragma unroll
            for (int i = 0; i < R; i++) acc[i] += pi_seg_dot_q8<T>(raw[u][i], xa[u], xb[u], xm[u]);
        }
    }
#pragma unroll
    for (int i = 0; i < R; i++) acc[i] = pi_warp_sum(acc[i]);
}

/* y = W x with x quantised (qs, meta): warp w takes rows [R w, R w + R). GLU: R = 2, rows 2n and
 * 2n + 1 are neuron n's gate and up (e.mask/e.ids as in k_matvec of matmul.cu). */
template <int T, int R, int U, bool GLU>
__global__ void __launch_bounds__(PI_Q8_THREADS) k_matvec_q8(pi_wdev w, const uint8_t *__restrict__ qs,
                                                             const int4 *__restrict__ meta, pi_mv_epi e)
{
    static_assert(!GLU || R == 2, "the GLU epilogue takes a gate/up pair per warp");
    pi_pdl_launch();
    const int lane = threadIdx.x & 31;
    const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int64_t r0 = warp * R;
    if (r0 >= w.rows) return;
    if (GLU) pi_pdl_wait(); /* the mask may come from an earlier kernel */
    if (GLU && pi_mv_masked_off(e, warp, lane)) return;
    float acc[R];
    pi_q8_rows<T, R, U, !GLU>(w, qs, meta, r0, lane, acc);
    if (lane == 0) pi_mv_finish<R, GLU>(e, warp, r0, w.rows, acc);
}

/* The dense FFN's gate/up pairs with the activations quantised on the way out, for the down product:
 * block b computes neurons [32 b, 32 b + 32) (warp j: neuron 32 b + j, rows 2n and 2n + 1 of gu),
 * then warp 0 quantises the 32 activations into segment b of (aq, am). This saves the down product's
 * quantisation launch (3.2 us per 7B-class layer, ncu H100). 1024 threads a block: Q4_0 and Q8_0 only
 * (the K types need more than the 64 registers a thread may then hold). */
template <int T>
__global__ void __launch_bounds__(1024) k_glu_q8(pi_wdev w, const uint8_t *__restrict__ qs, const int4 *__restrict__ meta,
                                                 int act, int8_t *__restrict__ aq, int4 *__restrict__ am)
{
    pi_pdl_launch();
    __shared__ float a[32];
    const int lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
    const int64_t r0 = 2 * ((int64_t)blockIdx.x * 32 + wi);
    float acc[2] = {0.0f, 0.0f};
    if (r0 < w.rows) pi_q8_rows<T, 2, 2, true>(w, qs, meta, r0, lane, acc);
    else pi_pdl_wait(); /* before the writes below */
    if (lane == 0) a[wi] = r0 < w.rows ? pi_glu_f(act, acc[0], acc[1]) : 0.0f;
    __syncthreads();
    if (wi == 0) pi_q8_quant_warp(a[lane], blockIdx.x, lane, aq, am);
}

extern "C" bool pi_cuda_q8_type(int type)
{
    return type == PI_TYPE_Q4_0 || type == PI_TYPE_Q4_1 || type == PI_TYPE_Q5_0 || type == PI_TYPE_Q5_1 ||
           type == PI_TYPE_Q8_0 || type == PI_TYPE_Q2_K || type == PI_TYPE_Q3_K || type == PI_TYPE_Q4_K ||
           type == PI_TYPE_Q5_K || type == PI_TYPE_Q6_K;
}

/* The automatic choice takes the q8 kernel for quantised weights of at least this many elements. From
 * the 7B-class per-kernel times (ncu, H200, doc/bench-log.md "Session 4"): the q8 kernel takes 0.55
 * to 0.75 of the float kernel's time and the quantisation launch costs 2-4 us, so it pays from float
 * kernels of about 7 us, some 7 MB of Q4_0 on these cards. */
#define PI_Q8_MIN_ELEMS ((int64_t)12 << 20)

extern "C" bool pi_cuda_q8_for(const pi_cuda_ctx_t *c, int type, int64_t rows, int64_t cols)
{
    if (!pi_cuda_q8_type(type) || cols % 32) return false;
    return c->x_mode == PI_CUDA_X_Q8 || (c->x_mode == PI_CUDA_X_AUTO && rows * cols >= PI_Q8_MIN_ELEMS);
}

template <int T, int R, int U, bool GLU>
static int launch_q8(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const uint8_t *qs, const int4 *meta, const pi_mv_epi &e)
{
    const int64_t warps = (w->rows + R - 1) / R, per_block = PI_Q8_THREADS / 32;
    PI_CU(pi_launch_pdl(c, k_matvec_q8<T, R, U, GLU>, dim3((unsigned)((warps + per_block - 1) / per_block)),
                        dim3(PI_Q8_THREADS), 0, pi_wdev_of(w), qs, meta, e));
    PI_CU_LAUNCH("k_matvec_q8");
    return 0;
}

/* The rows per warp of the q8 product's automatic choice: 4 from 128 rows per SM (the output head), 2
 * from 64 (a 7B-class q/k/v stack), else 1 (the 4096-row matrices: 31 warps per SM on the H100). */
static int q8_rows(const pi_cuda_ctx_t *c, int64_t rows)
{
    return rows >= 128 * (int64_t)c->n_sm ? 4 : (rows >= 64 * (int64_t)c->n_sm ? 2 : 1);
}

/* x (cols,) (RMSNorm with weight ng first when not NULL) -> qs, meta. */
static int quant_x(pi_cuda_ctx_t *c, int64_t cols, const float *d_x, const float *ng, float eps, int8_t *qs, int4 *meta)
{
    const int64_t nseg = cols / 32;
    const unsigned qblocks = (unsigned)((nseg + PI_Q8_QUANT_THREADS / 32 - 1) / (PI_Q8_QUANT_THREADS / 32));
    if (ng) PI_CU(pi_launch_pdl(c, k_quant_x8<true>, dim3(qblocks), dim3(PI_Q8_QUANT_THREADS), 0, cols, d_x, ng, eps, qs, meta));
    else PI_CU(pi_launch_pdl(c, k_quant_x8<false>, dim3(qblocks), dim3(PI_Q8_QUANT_THREADS), 0, cols, d_x, (const float *)NULL, 0.0f, qs, meta));
    PI_CU_LAUNCH("k_quant_x8");
    return 0;
}

int pi_cuda_matvec_q8_from(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const pi_xq &x, const pi_mv_epi &e, int R)
{
    if (R == 0) R = e.act ? 2 : q8_rows(c, w->rows);
    const uint8_t *q = (const uint8_t *)x.qs;
    const int4 *meta = x.meta;
    return pi_dispatch_type(w->type, [&](auto tag) -> int {
        constexpr int T = decltype(tag)::value;
        if constexpr (T == PI_TYPE_F16 || T == PI_TYPE_BF16) {
            return -PI_ERR_UNSUPPORTED; /* refused by the callers */
        } else {
            if (e.act) return launch_q8<T, 2, 2, true>(c, w, q, meta, e);
            if (R == 1) return launch_q8<T, 1, 4, false>(c, w, q, meta, e);
            if (R == 2) return launch_q8<T, 2, 2, false>(c, w, q, meta, e);
            return launch_q8<T, 4, 2, false>(c, w, q, meta, e);
        }
    });
}

int pi_cuda_matvec_q8(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, const float *d_x, const pi_mv_epi &e, int R)
{
    if (!pi_cuda_q8_type(w->type) || w->cols % 32) {
        pi_error("cuda: the 8-bit x matvec takes quantised weights of whole segments, not %s with %lld columns",
                 pi_type_name((uint32_t)w->type), (long long)w->cols);
        return -PI_ERR_UNSUPPORTED;
    }
    void *buf = NULL;
    PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_XQ, pi_cuda_xq_bytes(w->cols), &buf));
    const pi_xq x = pi_xq_at(buf, w->cols);
    PI_TRY(quant_x(c, w->cols, d_x, e.ng, e.eps, x.qs, x.meta));
    return pi_cuda_matvec_q8_from(c, w, x, e, R);
}

bool pi_cuda_ffn_dense_q8_ok(const pi_cuda_ctx_t *c, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down)
{
    return (gu->type == PI_TYPE_Q4_0 || gu->type == PI_TYPE_Q8_0) && pi_cuda_q8_for(c, gu->type, gu->rows, gu->cols) &&
           pi_cuda_q8_for(c, down->type, down->rows, down->cols) && down->cols % 32 == 0 && gu->rows == 2 * down->cols;
}

int pi_cuda_ffn_dense_q8(pi_cuda_ctx_t *c, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down, int act,
                         const float *d_x, const float *d_norm_g, float eps, float *d_y, int accumulate)
{
    const int64_t d = gu->cols, n_ff = down->cols;
    const size_t xb = pi_cuda_xq_bytes(d);
    void *buf = NULL;
    PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_XQ, xb + pi_cuda_xq_bytes(n_ff), &buf));
    const pi_xq x = pi_xq_at(buf, d), a = pi_xq_at((char *)buf + xb, n_ff);
    PI_TRY(quant_x(c, d, d_x, d_norm_g, eps, x.qs, x.meta));
    const pi_wdev wd = pi_wdev_of(gu);
    const dim3 grid((unsigned)(n_ff / 32)), block(1024);
    if (gu->type == PI_TYPE_Q4_0)
        PI_CU(pi_launch_pdl(c, k_glu_q8<PI_TYPE_Q4_0>, grid, block, 0, wd, (const uint8_t *)x.qs, (const int4 *)x.meta, act, a.qs, a.meta));
    else
        PI_CU(pi_launch_pdl(c, k_glu_q8<PI_TYPE_Q8_0>, grid, block, 0, wd, (const uint8_t *)x.qs, (const int4 *)x.meta, act, a.qs, a.meta));
    PI_CU_LAUNCH("k_glu_q8");
    pi_mv_epi e = {d_y, 0, NULL, NULL, accumulate, NULL, 0.0f};
    return pi_cuda_matvec_q8_from(c, down, a, e, 0);
}
