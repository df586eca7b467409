/*
 * kernels/cuda/ops.cu - the per-layer kernels besides the matrix products: RMSNorm, RoPE, the f16 KV
 * cache store, causal grouped-query attention (split over positions with an online softmax, then a
 * merge of the splits; for one decode query, RoPE, the store, the splits and the merge in one launch:
 * k_attn_dec, whose DESIGN note covers its cross-block merge), softmax, the activations, the merge of
 * the CPU workers' partial sums, and the hot-neuron FFN over the GPU's packed neurons.
 *
 * All kernels run on the context's compute stream; shapes are checked on the host before launching.
 * k_attn_dec is launched with programmatic dependent launch (cuda-impl.h, DESIGN note there).
 */
#include "kernels/cuda/cuda-impl.h"

#include <climits>
#include <cmath>

static inline unsigned blocks_for(int64_t n, int per) { return (unsigned)((n + per - 1) / per); }

static int check_count(const char *what, int64_t n)
{
    if (n <= 0 || n > (int64_t)INT_MAX * 64) {
        pi_error("cuda: %s: count %lld out of range", what, (long long)n);
        return -PI_ERR_INVAL;
    }
    return 0;
}

/* Block-wide sum of v over blockDim.x (a multiple of 32, at most 1024); every thread gets it. Its
 * leading barrier lets a kernel call it (or pi_block_max) again on the same sh; cuda-impl.h's
 * pi_block_sum<NT> is the one-barrier form for a block size known at compile time and one call. */
__device__ float pi_block_sum(float v, float *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = pi_warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return pi_warp_sum(v);
}

__device__ float pi_block_max(float v, float *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = pi_warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return pi_warp_max(v);
}

/* ------------------------------------------------------------------ RMSNorm, softmax */

__global__ void k_rmsnorm(int64_t n, const float *__restrict__ x, const float *__restrict__ g, float eps,
                          float *__restrict__ y)
{
    __shared__ float sh[32];
    const float *xr = x + blockIdx.x * n;
    float *yr = y + blockIdx.x * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = pi_block_sum(ss, sh);
    const float inv = rsqrtf(ss / (float)n + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * g[i];
}

/* The decode-sized variant: a row of n = 4 m floats held in registers, K float4 per thread, so every
 * load of the row is issued at once and the row is read once (the loop above waits on a chain of loads
 * and reads x twice: ~15 us per 4096-float row on the H100 under ncu, doc/bench-log.md). */
template <int K>
__global__ void k_rmsnorm_v(int64_t n, const float *__restrict__ x, const float *__restrict__ g, float eps,
                            float *__restrict__ y)
{
    __shared__ float sh[32];
    const int64_t m = n >> 2;
    const float4 *xr = (const float4 *)(x + blockIdx.x * n);
    float4 *yr = (float4 *)(y + blockIdx.x * n);
    float4 v[K];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int64_t i = threadIdx.x + (int64_t)k * blockDim.x;
        v[k] = i < m ? xr[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
    }
    ss = pi_block_sum(ss, sh);
    const float inv = rsqrtf(ss / (float)n + eps);
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int64_t i = threadIdx.x + (int64_t)k * blockDim.x;
        if (i >= m) break;
        const float4 gv = ((const float4 *)g)[i];
        yr[i] = make_float4(v[k].x * inv * gv.x, v[k].y * inv * gv.y, v[k].z * inv * gv.z, v[k].w * inv * gv.w);
    }
}

static bool al16(const void *p) { return ((uintptr_t)p & 15) == 0; }

extern "C" int pi_cuda_rmsnorm(pi_cuda_ctx_t *c, int64_t T, int64_t n, const float *d_x, const float *d_g, float eps,
                               float *d_y)
{
    PI_TRY(check_count("rmsnorm rows", T));
    PI_TRY(check_count("rmsnorm width", n));
    const int64_t m = n / 4;
    if (n % 4 == 0 && m <= 4 * 1024 && al16(d_x) && al16(d_g) && al16(d_y)) {
        const int K = m <= 1024 ? 1 : (m <= 2048 ? 2 : 4);
        const unsigned threads = (unsigned)(((m + K - 1) / K + 31) / 32 * 32);
        if (K == 1) k_rmsnorm_v<1><<<(unsigned)T, threads, 0, c->stream>>>(n, d_x, d_g, eps, d_y);
        else if (K == 2) k_rmsnorm_v<2><<<(unsigned)T, threads, 0, c->stream>>>(n, d_x, d_g, eps, d_y);
        else k_rmsnorm_v<4><<<(unsigned)T, threads, 0, c->stream>>>(n, d_x, d_g, eps, d_y);
        PI_CU_LAUNCH("k_rmsnorm_v");
        return 0;
    }
    k_rmsnorm<<<(unsigned)T, 256, 0, c->stream>>>(n, d_x, d_g, eps, d_y);
    PI_CU_LAUNCH("k_rmsnorm");
    return 0;
}

__global__ void k_softmax(int64_t n, float *__restrict__ x)
{
    __shared__ float sh[32];
    float *xr = x + blockIdx.x * n;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = pi_block_max(m, sh);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += expf(xr[i] - m);
    s = pi_block_sum(s, sh);
    const float inv = 1.0f / s;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) xr[i] = expf(xr[i] - m) * inv;
}

extern "C" int pi_cuda_softmax(pi_cuda_ctx_t *c, int64_t rows, int64_t n, float *d_x)
{
    PI_TRY(check_count("softmax rows", rows));
    PI_TRY(check_count("softmax width", n));
    k_softmax<<<(unsigned)rows, 256, 0, c->stream>>>(n, d_x);
    PI_CU_LAUNCH("k_softmax");
    return 0;
}

/* ------------------------------------------------------------------ RoPE, KV store */

/* Rotate the pair (a, b) of dimensions 2p, 2p + 1 at position pos: the one formula of k_rope and
 * k_rope_kv (so that the fused kernel gives the same bits). */
__device__ __forceinline__ void pi_rope_pair(int32_t pos, int p, int n_rot, float base, float freq_scale, float &a,
                                             float &b)
{
    const float theta = (float)pos * freq_scale * powf(base, -2.0f * (float)p / (float)n_rot);
    float s, co;
    sincosf(theta, &s, &co);
    const float a2 = a * co - b * s, b2 = a * s + b * co;
    a = a2, b = b2;
}

__global__ void k_rope(int64_t T, int n_head, int hd, int n_rot, const int32_t *__restrict__ pos, float base,
                       float freq_scale, float *__restrict__ x)
{
    const int half = n_rot / 2;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * n_head * half) return;
    const int p = (int)(i % half);
    const int64_t th = i / half; /* t * n_head + h */
    const int64_t t = th / n_head;
    float *v = x + th * hd + 2 * p;
    float a = v[0], b = v[1];
    pi_rope_pair(pos[t], p, n_rot, base, freq_scale, a, b);
    v[0] = a, v[1] = b;
}

extern "C" int pi_cuda_rope(pi_cuda_ctx_t *c, int64_t T, int n_head, int head_dim, int n_rot, const int32_t *d_pos,
                            float base, float freq_scale, float *d_x)
{
    PI_TRY(check_count("rope tokens", T));
    if (n_head <= 0 || head_dim <= 0 || n_rot <= 0 || n_rot % 2 || n_rot > head_dim) {
        pi_error("cuda: rope with n_head %d, head_dim %d, n_rot %d", n_head, head_dim, n_rot);
        return -PI_ERR_INVAL;
    }
    int64_t n = T * n_head * (n_rot / 2);
    k_rope<<<blocks_for(n, 256), 256, 0, c->stream>>>(T, n_head, head_dim, n_rot, d_pos, base, freq_scale, d_x);
    PI_CU_LAUNCH("k_rope");
    return 0;
}

__global__ void k_kv_store(int64_t n, int64_t off, const float *__restrict__ k, const float *__restrict__ v,
                           __half *__restrict__ kc, __half *__restrict__ vc)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    kc[off + i] = __float2half_rn(k[i]);
    vc[off + i] = __float2half_rn(v[i]);
}

extern "C" int pi_cuda_kv_store(pi_cuda_ctx_t *c, int n_head_kv, int head_dim, int64_t pos0, int64_t T,
                                const float *d_k, const float *d_v, void *d_k_cache, void *d_v_cache)
{
    PI_TRY(check_count("kv_store tokens", T));
    if (n_head_kv <= 0 || head_dim <= 0 || pos0 < 0) {
        pi_error("cuda: kv_store with n_head_kv %d, head_dim %d, pos0 %lld", n_head_kv, head_dim, (long long)pos0);
        return -PI_ERR_INVAL;
    }
    int64_t kvd = (int64_t)n_head_kv * head_dim, n = T * kvd;
    k_kv_store<<<blocks_for(n, 256), 256, 0, c->stream>>>(n, pos0 * kvd, d_k, d_v, (__half *)d_k_cache,
                                                           (__half *)d_v_cache);
    PI_CU_LAUNCH("k_kv_store");
    return 0;
}

/* The two steps above and the RoPE of q in one launch (one sequence's T consecutive positions): one
 * thread per (token, head, pair of dimensions) over the q heads, the k heads and the v heads of
 * qkv; q and k pairs below n_rot rotate as k_rope rotates them (pi_rope_pair, so the same bits), k
 * and v pairs are then stored as f16 at position pos0 + t. k is rotated in place as well. */
__global__ void k_rope_kv(int64_t T, int n_head, int n_head_kv, int hd, int n_rot, const int32_t *__restrict__ pos,
                          int64_t pos0, float base, float freq_scale, float *__restrict__ q, float *__restrict__ k,
                          const float *__restrict__ v, int64_t off, __half *__restrict__ kc, __half *__restrict__ vc)
{
    const int hp = hd / 2, nh = n_head + 2 * n_head_kv;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * nh * hp) return;
    const int p = (int)(i % hp);
    const int64_t th = i / hp;
    const int64_t t = th / nh;
    const int h = (int)(th % nh);
    const int64_t kvd = (int64_t)n_head_kv * hd;
    if (h >= n_head + n_head_kv) { /* a v pair: store only */
        const int64_t e = t * kvd + (int64_t)(h - n_head - n_head_kv) * hd + 2 * p;
        *(__half2 *)(vc + off + e) = __floats2half2_rn(v[e], v[e + 1]);
        return;
    }
    float *row = h < n_head ? q + (t * n_head + h) * hd : k + t * kvd + (int64_t)(h - n_head) * hd;
    float a = row[2 * p], b = row[2 * p + 1];
    if (2 * p < n_rot) {
        pi_rope_pair(pos ? pos[t] : (int32_t)(pos0 + t), p, n_rot, base, freq_scale, a, b);
        row[2 * p] = a, row[2 * p + 1] = b;
    }
    if (h >= n_head) {
        const int64_t e = t * kvd + (int64_t)(h - n_head) * hd + 2 * p;
        kc[off + e] = __float2half_rn(a);
        kc[off + e + 1] = __float2half_rn(b);
    }
}

extern "C" int pi_cuda_rope_kv(pi_cuda_ctx_t *c, int64_t T, int n_head, int n_head_kv, int head_dim, int n_rot,
                               const int32_t *d_pos, float base, float freq_scale, float *d_q, float *d_k,
                               const float *d_v, int64_t pos0, void *d_k_cache, void *d_v_cache)
{
    PI_TRY(check_count("rope_kv tokens", T));
    if (n_head <= 0 || n_head_kv <= 0 || head_dim <= 0 || head_dim % 2 || n_rot <= 0 || n_rot % 2 ||
        n_rot > head_dim || pos0 < 0) {
        pi_error("cuda: rope_kv with n_head %d, n_head_kv %d, head_dim %d, n_rot %d, pos0 %lld", n_head, n_head_kv,
                 head_dim, n_rot, (long long)pos0);
        return -PI_ERR_INVAL;
    }
    const int64_t n = T * (n_head + 2 * n_head_kv) * (head_dim / 2);
    k_rope_kv<<<blocks_for(n, 256), 256, 0, c->stream>>>(T, n_head, n_head_kv, head_dim, n_rot, d_pos, pos0, base, freq_scale,
                                                          d_q, d_k, d_v, pos0 * n_head_kv * head_dim,
                                                          (__half *)d_k_cache, (__half *)d_v_cache);
    PI_CU_LAUNCH("k_rope_kv");
    return 0;
}

/* ------------------------------------------------------------------ attention */

#define PI_ATT_WARPS 4

/* Load NPL consecutive halves (NPL * 2 bytes, aligned to that) as floats. */
template <int NPL> __device__ __forceinline__ void pi_ld_halves(const __half *p, float *f)
{
    if constexpr (NPL == 1) {
        f[0] = __half2float(*p);
    } else if constexpr (NPL == 2) {
        float2 v = __half22float2(*(const __half2 *)p);
        f[0] = v.x, f[1] = v.y;
    } else if constexpr (NPL == 4) {
        uint2 u = *(const uint2 *)p;
        float2 a = __half22float2(*(const __half2 *)&u.x), b = __half22float2(*(const __half2 *)&u.y);
        f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
    } else {
        uint4 u = *(const uint4 *)p;
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 a = __half22float2(*(const __half2 *)&w[i]);
            f[2 * i] = a.x, f[2 * i + 1] = a.y;
        }
    }
}

/* The online softmax of one warp over positions [p0, p1) of a split, the warps of a block taking
 * batches of P positions in turn (warp w: the batches from p0 + w P, every PI_ATT_WARPS P): a batch's P
 * key and value rows are loaded together (P independent loads in flight, which is what bounds the
 * attention: one position at a time is a chain of memory latencies), then the P scores (log2 units;
 * qv is pre-scaled) update (m, l, acc). Lane l holds dimensions [l NPL, (l + 1) NPL) of qv and acc; off
 * is the kv head's and the lane's offset within a cache row of kvd halves. */
template <int NPL>
__device__ __forceinline__ void pi_att_positions(const float (&qv)[NPL], const __half *__restrict__ kc,
                                                 const __half *__restrict__ vc, int64_t kvd, int64_t off, int64_t p0,
                                                 int64_t p1, int warp, float &m, float &l, float (&acc)[NPL])
{
    constexpr int P = NPL >= 8 ? 4 : 8;
    for (int64_t pb = p0 + (int64_t)warp * P; pb < p1; pb += PI_ATT_WARPS * P) {
        float kf[P][NPL], vf[P][NPL], sc[P];
#pragma unroll
        for (int j = 0; j < P; j++) {
            const int64_t p = pb + j < p1 ? pb + j : p1 - 1;
            pi_ld_halves<NPL>(kc + p * kvd + off, kf[j]);
            pi_ld_halves<NPL>(vc + p * kvd + off, vf[j]);
        }
        float mb = -INFINITY;
#pragma unroll
        for (int j = 0; j < P; j++) {
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < NPL; i++) dot = fmaf(qv[i], kf[j][i], dot);
            sc[j] = pb + j < p1 ? pi_warp_sum(dot) : -INFINITY;
            mb = fmaxf(mb, sc[j]);
        }
        const float mn = fmaxf(m, mb), corr = exp2f(m - mn);
        l *= corr;
#pragma unroll
        for (int i = 0; i < NPL; i++) acc[i] *= corr;
#pragma unroll
        for (int j = 0; j < P; j++) {
            const float e = exp2f(sc[j] - mn);
            l += e;
#pragma unroll
            for (int i = 0; i < NPL; i++) acc[i] = fmaf(e, vf[j][i], acc[i]);
        }
        m = mn;
    }
}

/* The block's PI_ATT_WARPS warp states, in shared memory after a barrier (s_m[w], s_l[w],
 * s_acc[w][HD]), joined: the largest m, then with it the joined l and dimension d's joined acc. */
__device__ __forceinline__ float pi_att_warps_m(const float *s_m)
{
    float M = -INFINITY;
    for (int w = 0; w < PI_ATT_WARPS; w++) M = fmaxf(M, s_m[w]);
    return M;
}

__device__ __forceinline__ float pi_att_warps_l(const float *s_m, const float *s_l, float M)
{
    float L = 0.0f;
    for (int w = 0; w < PI_ATT_WARPS; w++)
        if (s_m[w] != -INFINITY) L += s_l[w] * exp2f(s_m[w] - M);
    return L;
}

template <int HD>
__device__ __forceinline__ float pi_att_warps_acc(const float *s_m, const float (*s_acc)[HD], float M, int d)
{
    float a = 0.0f;
    for (int w = 0; w < PI_ATT_WARPS; w++)
        if (s_m[w] != -INFINITY) a += s_acc[w][d] * exp2f(s_m[w] - M);
    return a;
}

/* The nsplit split partials (m, l, acc[hd]) at pp + s (hd + 2) joined: the largest m, then with it
 * dimension d's output (joined acc over joined l). CG: loads past L1, for partials that other blocks
 * of the same launch wrote (k_attn_dec). */
template <bool CG> __device__ __forceinline__ float pi_att_ld(const float *p)
{
    if constexpr (CG) return __ldcg(p);
    else return *p;
}

template <bool CG> __device__ __forceinline__ float pi_att_splits_m(const float *pp, int nsplit, int hd)
{
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, pi_att_ld<CG>(pp + s * (hd + 2)));
    return M;
}

template <bool CG> __device__ __forceinline__ float pi_att_splits_out(const float *pp, int nsplit, int hd, float M, int d)
{
    float a = 0.0f, L = 0.0f;
    for (int s = 0; s < nsplit; s++) {
        const float *ps = pp + s * (hd + 2), ms = pi_att_ld<CG>(ps);
        if (ms == -INFINITY) continue;
        const float w = exp2f(ms - M);
        a += pi_att_ld<CG>(ps + 2 + d) * w;
        L += pi_att_ld<CG>(ps + 1) * w;
    }
    return a / L;
}

/* out[i] = x, one attention output element; Q: also quantised for the q8 output projection (every
 * lane of the warp holds an element of segment i / 32, lane i % 32). */
template <bool Q>
__device__ __forceinline__ void pi_att_emit(float x, float *out, int64_t i, int lane, int8_t *qs, int4 *meta)
{
    out[i] = x;
    if constexpr (Q) pi_q8_quant_warp(x, i >> 5, lane, qs, meta);
}

/* One block's split of one query head (the body of k_attn_split and k_attn_seqs): its warps take
 * batches of positions [p0, p1) in turn (pi_att_positions: online softmax, a batch's rows loaded
 * together), then merge in shared memory into one partial (m, l, acc[head_dim]) at out. qr: the query
 * head's row (head_dim floats); g: its kv head. Lane l holds the NPL = head_dim / 32 dimensions
 * [l NPL, (l + 1) NPL), so a row is one coalesced vector load. */
template <int NPL>
__device__ __forceinline__ void pi_att_split_block(int n_head_kv, int g, float qscale, const float *__restrict__ qr,
                                                   const __half *__restrict__ kc, const __half *__restrict__ vc,
                                                   int64_t p0, int64_t p1, float *__restrict__ out)
{
    constexpr int HD = 32 * NPL;
    __shared__ float s_m[PI_ATT_WARPS], s_l[PI_ATT_WARPS];
    __shared__ float s_acc[PI_ATT_WARPS][HD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t kvd = (int64_t)n_head_kv * HD, off = (int64_t)g * HD + lane * NPL;
    float qv[NPL], acc[NPL];
    qr += lane * NPL;
#pragma unroll
    for (int i = 0; i < NPL; i++) {
        qv[i] = qr[i] * qscale;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    pi_att_positions<NPL>(qv, kc, vc, kvd, off, p0, p1, warp, m, l, acc);
    if (lane == 0) s_m[warp] = m, s_l[warp] = l;
#pragma unroll
    for (int i = 0; i < NPL; i++) s_acc[warp][lane * NPL + i] = acc[i];
    __syncthreads();
    const float M = pi_att_warps_m(s_m);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) out[2 + d] = pi_att_warps_acc<HD>(s_m, s_acc, M, d);
    if (threadIdx.x == 0) {
        out[0] = M;
        out[1] = pi_att_warps_l(s_m, s_l, M);
    }
}

/* One block per (query head h, split sp, query t) of T consecutive queries of one sequence: the
 * partial at part[((t * n_head + h) * nsplit + sp) * (head_dim + 2)]. */
template <int NPL>
__global__ void __launch_bounds__(PI_ATT_WARPS * 32)
k_attn_split(int n_head, int n_head_kv, int64_t pos0, int nsplit, int chunk, float qscale, const float *__restrict__ q,
             const __half *__restrict__ kc, const __half *__restrict__ vc, float *__restrict__ part)
{
    constexpr int HD = 32 * NPL;
    const int h = blockIdx.x, sp = blockIdx.y;
    const int64_t t = blockIdx.z;
    const int64_t kv_len = pos0 + t + 1;
    const int64_t p0 = (int64_t)sp * chunk, p1 = PI_MIN(p0 + chunk, kv_len);
    pi_att_split_block<NPL>(n_head_kv, h / (n_head / n_head_kv), qscale, q + (t * n_head + h) * HD, kc, vc, p0, p1,
                            part + ((t * n_head + h) * nsplit + sp) * (int64_t)(HD + 2));
}

/* DESIGN (k_attn_seqs, k_attn_merge_seqs, k_kv_store_seqs). A decode step of several sequences was one
 * RoPE launch, then per sequence a KV store and the two attention launches: at 32 sequences about a
 * hundred launches per layer, each a few microseconds of mostly launch and latency. Here each token t
 * of the step (one query of its own sequence, at its own position) carries a row of the table tab
 * (pi_cuda_att_seqs_plan): {pos, chunk, nsplit, part0} and the offset of its sequence's caches from
 * the layer's; the three launches take every token. Each token's chunk is the one
 * pi_cuda_attention would choose for it alone (one query over pos + 1 positions), and its splits and
 * merge run the same device code in the same order, so a token's output is the same bits as the
 * per-sequence path's (a one-token decode of a single sequence takes k_attn_dec, whose softmax order
 * differs in the last bits). Token t's
 * partials lie at part + (part0 * n_head + h * nsplit + sp) * (head_dim + 2); blocks past a token's
 * nsplit return at once. */
template <int NPL>
__global__ void __launch_bounds__(PI_ATT_WARPS * 32)
k_attn_seqs(int n_head, int n_head_kv, float qscale, const int4 *__restrict__ tab, const int64_t *__restrict__ off,
            const float *__restrict__ q, const __half *__restrict__ kc, const __half *__restrict__ vc,
            float *__restrict__ part)
{
    constexpr int HD = 32 * NPL;
    const int h = blockIdx.x, sp = blockIdx.y;
    const int64_t t = blockIdx.z;
    const int4 e = tab[t]; /* pos, chunk, nsplit, part0 */
    if (sp >= e.z) return;
    const int64_t kv_len = (int64_t)e.x + 1, p0 = (int64_t)sp * e.y, p1 = PI_MIN(p0 + e.y, kv_len);
    pi_att_split_block<NPL>(n_head_kv, h / (n_head / n_head_kv), qscale, q + (t * n_head + h) * HD, kc + off[t],
                            vc + off[t], p0, p1, part + ((int64_t)e.w * n_head + (int64_t)h * e.z + sp) * (HD + 2));
}

/* One block per (head, query): combine the splits' partials into out (T, n_head, hd). Q: also
 * quantise out into the q8 matvec's x (qs, meta): the block has hd threads (hd a multiple of 32), so
 * warp w holds elements [32 w, 32 w + 32) of the head, one segment. */
template <bool Q>
__global__ void k_attn_merge(int n_head, int hd, int nsplit, const float *__restrict__ part, float *__restrict__ out,
                             int8_t *__restrict__ qs, int4 *__restrict__ meta)
{
    const int h = blockIdx.x;
    const int64_t t = blockIdx.y;
    const float *pp = part + (t * n_head + h) * nsplit * (int64_t)(hd + 2);
    const float M = pi_att_splits_m<false>(pp, nsplit, hd);
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
        pi_att_emit<Q>(pi_att_splits_out<false>(pp, nsplit, hd, M, d), out, (t * n_head + h) * hd + d,
                       (int)(threadIdx.x & 31), qs, meta);
}

/* One block per (head, token) of k_attn_seqs' partials: as k_attn_merge over the token's nsplit. */
__global__ void k_attn_merge_seqs(int n_head, int hd, const int4 *__restrict__ tab, const float *__restrict__ part,
                                  float *__restrict__ out)
{
    const int h = blockIdx.x;
    const int64_t t = blockIdx.y;
    const int4 e = tab[t];
    const float *pp = part + ((int64_t)e.w * n_head + (int64_t)h * e.z) * (int64_t)(hd + 2);
    const float M = pi_att_splits_m<false>(pp, e.z, hd);
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
        pi_att_emit<false>(pi_att_splits_out<false>(pp, e.z, hd, M, d), out, (t * n_head + h) * hd + d,
                           (int)(threadIdx.x & 31), NULL, NULL);
}

/* Token t's k and v rows (kvd floats each) as f16 at position tab[t].x of its sequence's caches. */
__global__ void k_kv_store_seqs(int64_t n, int64_t kvd, const int4 *__restrict__ tab, const int64_t *__restrict__ off,
                                const float *__restrict__ k, const float *__restrict__ v, __half *__restrict__ kc,
                                __half *__restrict__ vc)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t t = i / kvd, j = off[t] + (int64_t)tab[t].x * kvd + i % kvd;
    kc[j] = __float2half_rn(k[i]);
    vc[j] = __float2half_rn(v[i]);
}

/* Positions per split for T queries over L positions: PI_CUDA_ATT_CHUNK; when that gives fewer than two
 * blocks per SM (decode at a short context: one block per head), shorter splits (down to 32 positions,
 * one round of the 4 warps), as long as their partials fit the scratch already held, so that serving
 * does not allocate (the backend grows it to its largest need at start). */
static int64_t att_chunk(const pi_cuda_ctx_t *c, int64_t T, int n_head, int head_dim, int64_t L)
{
    const int64_t want = 2 * (int64_t)c->n_sm;
    int64_t chunk = PI_CUDA_ATT_CHUNK;
    if (T * n_head * ((L + PI_CUDA_ATT_CHUNK - 1) / PI_CUDA_ATT_CHUNK) < want) {
        const int64_t ns = (want + T * n_head - 1) / (T * n_head);
        const int64_t ch = PI_MAX((int64_t)32, ((L + ns - 1) / ns + 31) / 32 * 32);
        const size_t b = pi_cuda_att_part_bytes(T, n_head, (L + ch - 1) / ch, head_dim);
        if (ch < chunk && b <= c->scr_bytes[PI_CUDA_SCR_ATT]) chunk = ch;
    }
    return chunk;
}

/* The heads the attention kernels take: grouped-query, a head size the templates exist for, one
 * block per head within the grid's 65535. */
static bool att_heads_ok(int n_head, int n_head_kv, int head_dim)
{
    return n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 && n_head <= 65535 &&
           pi_cuda_att_head_dim_ok(head_dim); /* kernels/cuda/plan.h: the switches below instantiate each */
}

/* att_chunk's split length for T queries over L positions, and the split count: 0, or -PI_ERR_INVAL
 * (logged) past the grid's 65535 splits. */
static int att_splits(const pi_cuda_ctx_t *c, int64_t T, int n_head, int head_dim, int64_t L, int64_t *chunk,
                      int64_t *nsplit)
{
    *chunk = att_chunk(c, T, n_head, head_dim, L);
    *nsplit = (L + *chunk - 1) / *chunk;
    if (*nsplit > 65535) {
        pi_error("cuda: attention over %lld positions unsupported", (long long)L);
        return -PI_ERR_INVAL;
    }
    return 0;
}

static float att_qscale(int head_dim) { return 1.4426950408889634f / sqrtf((float)head_dim); } /* log2(e) / sqrt(hd) */

/* pi_cuda_attention; with qs, the merge also quantises out (q8 matvec layout). */
static int attention(pi_cuda_ctx_t *c, int64_t T, int n_head, int n_head_kv, int head_dim, int64_t pos0, const float *d_q,
                     const void *d_k_cache, const void *d_v_cache, float *d_out, int8_t *qs, int4 *meta)
{
    PI_TRY(check_count("attention queries", T));
    if (!att_heads_ok(n_head, n_head_kv, head_dim) || pos0 < 0 || T > 65535) {
        pi_error("cuda: attention with %lld queries, %d heads, %d kv heads, head_dim %d, pos0 %lld unsupported",
                 (long long)T, n_head, n_head_kv, head_dim, (long long)pos0);
        return -PI_ERR_INVAL;
    }
    int64_t chunk, nsplit;
    PI_TRY(att_splits(c, T, n_head, head_dim, pos0 + T, &chunk, &nsplit));
    void *part = NULL;
    size_t bytes = pi_cuda_att_part_bytes(T, n_head, nsplit, head_dim);
    PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_ATT, bytes, &part));
    const float qscale = att_qscale(head_dim);
    dim3 grid((unsigned)n_head, (unsigned)nsplit, (unsigned)T);
    const __half *kh = (const __half *)d_k_cache, *vh = (const __half *)d_v_cache;
    const int ns = (int)nsplit;
    switch (head_dim) {
    case 32: k_attn_split<1><<<grid, PI_ATT_WARPS * 32, 0, c->stream>>>(n_head, n_head_kv, pos0, ns, (int)chunk, qscale, d_q, kh, vh, (float *)part); break;
    case 64: k_attn_split<2><<<grid, PI_ATT_WARPS * 32, 0, c->stream>>>(n_head, n_head_kv, pos0, ns, (int)chunk, qscale, d_q, kh, vh, (float *)part); break;
    case 128: k_attn_split<4><<<grid, PI_ATT_WARPS * 32, 0, c->stream>>>(n_head, n_head_kv, pos0, ns, (int)chunk, qscale, d_q, kh, vh, (float *)part); break;
    default: k_attn_split<8><<<grid, PI_ATT_WARPS * 32, 0, c->stream>>>(n_head, n_head_kv, pos0, ns, (int)chunk, qscale, d_q, kh, vh, (float *)part); break;
    }
    PI_CU_LAUNCH("k_attn_split");
    dim3 g2((unsigned)n_head, (unsigned)T);
    if (qs) k_attn_merge<true><<<g2, head_dim, 0, c->stream>>>(n_head, head_dim, (int)nsplit, (const float *)part, d_out, qs, meta);
    else k_attn_merge<false><<<g2, head_dim, 0, c->stream>>>(n_head, head_dim, (int)nsplit, (const float *)part, d_out, NULL, NULL);
    PI_CU_LAUNCH("k_attn_merge");
    return 0;
}

extern "C" int pi_cuda_attention(pi_cuda_ctx_t *c, int64_t T, int n_head, int n_head_kv, int head_dim, int64_t pos0,
                                 const float *d_q, const void *d_k_cache, const void *d_v_cache, float *d_out)
{
    return attention(c, T, n_head, n_head_kv, head_dim, pos0, d_q, d_k_cache, d_v_cache, d_out, NULL, NULL);
}

extern "C" int pi_cuda_att_seqs_plan(pi_cuda_ctx_t *c, int n, int n_head, int head_dim, const int32_t *pos, int32_t *tab,
                                     int *max_nsplit, size_t *part_bytes)
{
    int64_t parts = 0;
    *max_nsplit = 0;
    for (int t = 0; t < n; t++) {
        int64_t chunk, nsplit;
        if (pos[t] < 0) return -PI_ERR_INVAL;
        PI_TRY(att_splits(c, 1, n_head, head_dim, (int64_t)pos[t] + 1, &chunk, &nsplit));
        if (parts > INT32_MAX - nsplit) return -PI_ERR_RANGE;
        tab[4 * t] = pos[t], tab[4 * t + 1] = (int32_t)chunk, tab[4 * t + 2] = (int32_t)nsplit, tab[4 * t + 3] = (int32_t)parts;
        parts += nsplit;
        *max_nsplit = (int)PI_MAX((int64_t)*max_nsplit, nsplit);
    }
    *part_bytes = pi_cuda_att_part_bytes(parts, n_head, 1, head_dim);
    return 0;
}

extern "C" size_t pi_cuda_att_scratch_held(const pi_cuda_ctx_t *c) { return c->scr_bytes[PI_CUDA_SCR_ATT]; }

extern "C" int pi_cuda_attention_seqs(pi_cuda_ctx_t *c, int n, int max_nsplit, size_t part_bytes, int n_head, int n_head_kv,
                                      int head_dim, const int32_t *d_tab, const int64_t *d_off, const float *d_q,
                                      const float *d_k, const float *d_v, void *d_k_cache, void *d_v_cache, float *d_out)
{
    PI_TRY(check_count("attention sequences", n));
    if (!att_heads_ok(n_head, n_head_kv, head_dim) || n > 65535 || max_nsplit < 1 || max_nsplit > 65535) {
        pi_error("cuda: attention of %d sequences, %d heads, %d kv heads, head_dim %d, %d splits unsupported", n, n_head,
                 n_head_kv, head_dim, max_nsplit);
        return -PI_ERR_INVAL;
    }
    const int4 *tab = (const int4 *)d_tab;
    __half *kh = (__half *)d_k_cache, *vh = (__half *)d_v_cache;
    const int64_t kvd = (int64_t)n_head_kv * head_dim, nkv = (int64_t)n * kvd;
    k_kv_store_seqs<<<blocks_for(nkv, 256), 256, 0, c->stream>>>(nkv, kvd, tab, d_off, d_k, d_v, kh, vh);
    PI_CU_LAUNCH("k_kv_store_seqs");
    void *part = NULL;
    PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_ATT, part_bytes, &part));
    const float qscale = att_qscale(head_dim);
    dim3 grid((unsigned)n_head, (unsigned)max_nsplit, (unsigned)n);
    switch (head_dim) {
    case 32: k_attn_seqs<1><<<grid, PI_ATT_WARPS * 32, 0, c->stream>>>(n_head, n_head_kv, qscale, tab, d_off, d_q, kh, vh, (float *)part); break;
    case 64: k_attn_seqs<2><<<grid, PI_ATT_WARPS * 32, 0, c->stream>>>(n_head, n_head_kv, qscale, tab, d_off, d_q, kh, vh, (float *)part); break;
    case 128: k_attn_seqs<4><<<grid, PI_ATT_WARPS * 32, 0, c->stream>>>(n_head, n_head_kv, qscale, tab, d_off, d_q, kh, vh, (float *)part); break;
    default: k_attn_seqs<8><<<grid, PI_ATT_WARPS * 32, 0, c->stream>>>(n_head, n_head_kv, qscale, tab, d_off, d_q, kh, vh, (float *)part); break;
    }
    PI_CU_LAUNCH("k_attn_seqs");
    k_attn_merge_seqs<<<dim3((unsigned)n_head, (unsigned)n), head_dim, 0, c->stream>>>(n_head, head_dim, tab,
                                                                                       (const float *)part, d_out);
    PI_CU_LAUNCH("k_attn_merge_seqs");
    return 0;
}

/* ------------------------------------------------------------------ decode attention, one launch */

/* DESIGN (k_attn_dec). A decode step's attention was three launches (k_rope_kv, k_attn_split,
 * k_attn_merge), each a few microseconds of mostly launch and latency for little work. Here one launch
 * does all of it for one query at position pos:
 * - RoPE. Every block rotates its q head in registers. The blocks of the last split, which holds
 *   position pos, rotate their kv head's new k the same way (pi_rope_pair) and round k and v to f16 as
 *   the cache would hold them. No block reads position pos from the cache: the one with h % group == 0
 *   of the last split writes it, for the steps after this one.
 * - Splits. As k_attn_split over the cached positions [0, pos), then the last split's last warp adds
 *   position pos from registers.
 * - Merge. With one split the block normalises its own warps' partial. Otherwise each block writes its
 *   partial, fences, and counts itself done on the head's counter (c->att_cnt, zero between launches);
 *   the block that counts last fences again, reads all of the head's partials past L1 (__ldcg: they
 *   were written by other SMs), normalises, and zeroes the counter for the next launch. The stream
 *   orders launches, so a counter is never shared by two of them. Q: the merging block also quantises
 *   the head's output for the q8 output projection (pi_q8_quant_warp; head_dim is whole segments).
 * If a launch dies mid-way the counters may be left non-zero; such an error is sticky and ends the
 * worker (backend-cuda.c), so no later launch reads them. */
struct pi_att_dec {
    int n_head, n_head_kv, pos, n_rot, nsplit, chunk;
    float base, freq_scale, qscale;
    const float *q, *k, *v; /* (n_head, hd), (n_head_kv, hd), (n_head_kv, hd), not rotated */
    __half *kc, *vc;        /* caches (n_ctx, n_head_kv, hd) */
    float *part;            /* (n_head, nsplit, hd + 2) split partials */
    unsigned *cnt;          /* (n_head) */
    float *out;             /* (n_head, hd) */
    int8_t *qs;             /* Q: out quantised (pi_xq) */
    int4 *meta;
};

/* RoPE of the NPL dimensions [lane NPL, (lane + 1) NPL) a lane holds (pairs 2p, 2p + 1 below n_rot). */
template <int NPL>
__device__ __forceinline__ void pi_rope_lane(float (&v)[NPL], int lane, int pos, int n_rot, float base, float fs)
{
    if constexpr (NPL == 1) { /* a pair spans two lanes */
        const float o = __shfl_xor_sync(0xffffffffu, v[0], 1);
        const int p = lane >> 1;
        if (2 * p < n_rot) {
            float a = lane & 1 ? o : v[0], b = lane & 1 ? v[0] : o;
            pi_rope_pair(pos, p, n_rot, base, fs, a, b);
            v[0] = lane & 1 ? b : a;
        }
    } else {
#pragma unroll
        for (int i = 0; i < NPL / 2; i++) {
            const int p = lane * (NPL / 2) + i;
            if (2 * p < n_rot) pi_rope_pair(pos, p, n_rot, base, fs, v[2 * i], v[2 * i + 1]);
        }
    }
}

/* One block per (head h, split sp). Lane l holds dimensions [l NPL, (l + 1) NPL) as in k_attn_split. */
template <int NPL, bool Q>
__global__ void __launch_bounds__(PI_ATT_WARPS * 32) k_attn_dec(pi_att_dec a)
{
    constexpr int HD = 32 * NPL;
    __shared__ float s_m[PI_ATT_WARPS], s_l[PI_ATT_WARPS];
    __shared__ float s_acc[PI_ATT_WARPS][HD];
    __shared__ bool s_last;
    pi_pdl_launch();
    pi_pdl_wait(); /* everything below reads what earlier kernels wrote (q, k, v, the caches) */
    const int h = blockIdx.x, sp = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = a.n_head / a.n_head_kv, g = h / grp;
    const int64_t kvd = (int64_t)a.n_head_kv * HD, off = (int64_t)g * HD + lane * NPL;
    const int64_t p0 = (int64_t)sp * a.chunk, p1 = PI_MIN(p0 + a.chunk, (int64_t)a.pos); /* cached positions */
    float qv[NPL], acc[NPL];
#pragma unroll
    for (int i = 0; i < NPL; i++) qv[i] = a.q[(int64_t)h * HD + lane * NPL + i], acc[i] = 0.0f;
    pi_rope_lane<NPL>(qv, lane, a.pos, a.n_rot, a.base, a.freq_scale);
#pragma unroll
    for (int i = 0; i < NPL; i++) qv[i] *= a.qscale;
    float m = -INFINITY, l = 0.0f;
    pi_att_positions<NPL>(qv, a.kc, a.vc, kvd, off, p0, p1, warp, m, l, acc);
    if (sp == a.nsplit - 1) { /* position pos, from the step's own k and v */
        float kf[NPL], vf[NPL];
#pragma unroll
        for (int i = 0; i < NPL; i++) kf[i] = a.k[off + i], vf[i] = a.v[off + i];
        pi_rope_lane<NPL>(kf, lane, a.pos, a.n_rot, a.base, a.freq_scale);
        const bool store = h % grp == 0 && warp == 0;
#pragma unroll
        for (int i = 0; i < NPL; i++) {
            const __half hk = __float2half_rn(kf[i]), hv = __float2half_rn(vf[i]);
            kf[i] = __half2float(hk), vf[i] = __half2float(hv);
            if (store) a.kc[(int64_t)a.pos * kvd + off + i] = hk, a.vc[(int64_t)a.pos * kvd + off + i] = hv;
        }
        if (warp == PI_ATT_WARPS - 1) {
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < NPL; i++) dot = fmaf(qv[i], kf[i], dot);
            const float sc = pi_warp_sum(dot), mn = fmaxf(m, sc), corr = exp2f(m - mn), e = exp2f(sc - mn);
            l = l * corr + e;
#pragma unroll
            for (int i = 0; i < NPL; i++) acc[i] = fmaf(e, vf[i], acc[i] * corr);
            m = mn;
        }
    }
    if (lane == 0) s_m[warp] = m, s_l[warp] = l;
#pragma unroll
    for (int i = 0; i < NPL; i++) s_acc[warp][lane * NPL + i] = acc[i];
    __syncthreads();
    const float M = pi_att_warps_m(s_m), L = pi_att_warps_l(s_m, s_l, M);
    if (a.nsplit == 1) {
        for (int d = threadIdx.x; d < HD; d += blockDim.x)
            pi_att_emit<Q>(pi_att_warps_acc<HD>(s_m, s_acc, M, d) / L, a.out, (int64_t)h * HD + d, lane, a.qs, a.meta);
        return;
    }
    float *pp = a.part + (int64_t)h * a.nsplit * (HD + 2);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) pp[(int64_t)sp * (HD + 2) + 2 + d] = pi_att_warps_acc<HD>(s_m, s_acc, M, d);
    if (threadIdx.x == 0) pp[(int64_t)sp * (HD + 2)] = M, pp[(int64_t)sp * (HD + 2) + 1] = L;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(a.cnt + h, 1u) == (unsigned)a.nsplit - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const float MS = pi_att_splits_m<true>(pp, a.nsplit, HD);
    for (int d = threadIdx.x; d < HD; d += blockDim.x)
        pi_att_emit<Q>(pi_att_splits_out<true>(pp, a.nsplit, HD, MS, d), a.out, (int64_t)h * HD + d, lane, a.qs, a.meta);
    if (threadIdx.x == 0) a.cnt[h] = 0;
}

template <int NPL> static cudaError_t launch_att_dec(pi_cuda_ctx_t *c, const pi_att_dec &a, bool q)
{
    const dim3 grid((unsigned)a.n_head, (unsigned)a.nsplit), block(PI_ATT_WARPS * 32);
    return q ? pi_launch_pdl(c, k_attn_dec<NPL, true>, grid, block, 0, a) : pi_launch_pdl(c, k_attn_dec<NPL, false>, grid, block, 0, a);
}

extern "C" int pi_cuda_attention_dec(pi_cuda_ctx_t *c, int n_head, int n_head_kv, int head_dim, int n_rot, int64_t pos,
                                     float base, float freq_scale, float *d_q, float *d_k, const float *d_v,
                                     void *d_k_cache, void *d_v_cache, float *d_out, const pi_cuda_weight_t *o,
                                     float *d_h)
{
    const int64_t qd = (int64_t)n_head * head_dim;
    if (!att_heads_ok(n_head, n_head_kv, head_dim) || n_rot <= 0 || n_rot % 2 || n_rot > head_dim || pos < 0 ||
        pos >= INT_MAX) {
        pi_error("cuda: decode attention with %d heads, %d kv heads, head_dim %d, n_rot %d at position %lld unsupported",
                 n_head, n_head_kv, head_dim, n_rot, (long long)pos);
        return -PI_ERR_INVAL;
    }
    if (o && o->cols != qd) {
        pi_error("cuda: decode attention: the output projection takes %lld columns, the heads give %lld",
                 (long long)o->cols, (long long)qd);
        return -PI_ERR_INVAL;
    }
    const bool q8 = o && pi_cuda_q8_for(c, o->type, o->rows, o->cols);
    pi_xq x = {NULL, NULL};
    if (q8) {
        void *buf = NULL;
        PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_XQ, pi_cuda_xq_bytes(qd), &buf));
        x = pi_xq_at(buf, qd);
    }
    if (!c->att_dec || n_head > PI_CUDA_ATT_CNT) { /* the three launches */
        PI_TRY(pi_cuda_rope_kv(c, 1, n_head, n_head_kv, head_dim, n_rot, NULL, base, freq_scale, d_q, d_k, d_v, pos,
                               d_k_cache, d_v_cache));
        PI_TRY(attention(c, 1, n_head, n_head_kv, head_dim, pos, d_q, d_k_cache, d_v_cache, d_out, x.qs, x.meta));
    } else {
        pi_att_dec a;
        a.n_head = n_head, a.n_head_kv = n_head_kv, a.pos = (int)pos, a.n_rot = n_rot;
        int64_t chunk, nsplit;
        PI_TRY(att_splits(c, 1, n_head, head_dim, pos + 1, &chunk, &nsplit));
        a.chunk = (int)chunk, a.nsplit = (int)nsplit;
        a.base = base, a.freq_scale = freq_scale, a.qscale = att_qscale(head_dim);
        a.q = d_q, a.k = d_k, a.v = d_v, a.kc = (__half *)d_k_cache, a.vc = (__half *)d_v_cache;
        a.part = NULL;
        if (a.nsplit > 1) {
            void *part = NULL;
            PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_ATT, pi_cuda_att_part_bytes(1, n_head, a.nsplit, head_dim), &part));
            a.part = (float *)part;
        }
        a.cnt = c->att_cnt, a.out = d_out, a.qs = x.qs, a.meta = x.meta;
        switch (head_dim) {
        case 32: PI_CU(launch_att_dec<1>(c, a, q8)); break;
        case 64: PI_CU(launch_att_dec<2>(c, a, q8)); break;
        case 128: PI_CU(launch_att_dec<4>(c, a, q8)); break;
        default: PI_CU(launch_att_dec<8>(c, a, q8)); break;
        }
        PI_CU_LAUNCH("k_attn_dec");
    }
    if (!o) return 0;
    if (!q8) return pi_cuda_matmul_add(c, o, 1, d_out, d_h);
    pi_mv_epi e = {d_h, 0, NULL, NULL, 1, NULL, 0.0f};
    return pi_cuda_matvec_q8_from(c, o, x, e, 0);
}

/* ------------------------------------------------------------------ activations, merge */

__global__ void k_act(int act, int64_t n, const float *__restrict__ x, float *__restrict__ y)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    y[i] = act == PI_CUDA_ACT_SILU ? v / (1.0f + expf(-v)) : fmaxf(v, 0.0f);
}

static int check_act(int act)
{
    if (act != PI_CUDA_ACT_SILU && act != PI_CUDA_ACT_RELU && act != PI_CUDA_ACT_DRELU) {
        pi_error("cuda: unknown activation %d", act);
        return -PI_ERR_INVAL;
    }
    return 0;
}

extern "C" int pi_cuda_act(pi_cuda_ctx_t *c, int act, int64_t n, const float *d_x, float *d_y)
{
    PI_TRY(check_act(act));
    PI_TRY(check_count("act", n));
    k_act<<<blocks_for(n, 256), 256, 0, c->stream>>>(act, n, d_x, d_y);
    PI_CU_LAUNCH("k_act");
    return 0;
}

__global__ void k_glu(int act, int64_t n, const float *g, const float *u, float *out)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float a = g[i], b = u[i];
    float r;
    if (act == PI_CUDA_ACT_SILU) r = a / (1.0f + expf(-a)) * b;
    else if (act == PI_CUDA_ACT_RELU) r = fmaxf(a, 0.0f) * b;
    else r = fmaxf(a, 0.0f) * fmaxf(b, 0.0f);
    out[i] = r;
}

extern "C" int pi_cuda_glu(pi_cuda_ctx_t *c, int act, int64_t n, const float *d_g, const float *d_u, float *d_out)
{
    PI_TRY(check_act(act));
    PI_TRY(check_count("glu", n));
    k_glu<<<blocks_for(n, 256), 256, 0, c->stream>>>(act, n, d_g, d_u, d_out);
    PI_CU_LAUNCH("k_glu");
    return 0;
}

__global__ void k_merge(int64_t n, int n_parts, const float *__restrict__ parts, float *__restrict__ y)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = y[i];
    for (int p = 0; p < n_parts; p++) s += parts[p * n + i];
    y[i] = s;
}

extern "C" int pi_cuda_merge(pi_cuda_ctx_t *c, int64_t n, int n_parts, const float *d_parts, float *d_y)
{
    PI_TRY(check_count("merge", n));
    if (n_parts < 0) return -PI_ERR_INVAL;
    if (n_parts == 0) return 0;
    k_merge<<<blocks_for(n, 256), 256, 0, c->stream>>>(n, n_parts, d_parts, d_y);
    PI_CU_LAUNCH("k_merge");
    return 0;
}

/* ------------------------------------------------------------------ hot-neuron FFN */

/* y (d,) += sum over neurons i of a[i] * down_i, down (n_hot, d). Block b takes neurons
 * [b * chunk, (b + 1) * chunk): warp 0 lists the active ones (a != 0) in order, then G groups of nsegp
 * threads (thread = one 32-column segment) walk the list two neurons at a time (two loads in flight).
 * Each thread leaves its 32 sums in shared memory (segment rows padded to 36 floats so that the
 * 16-byte stores of a warp hit distinct banks), the block sums the G groups and adds the result to y
 * with 16-byte atomics. Dynamic shared memory: G * nsegp * 36 floats, then chunk ints. */
#define PI_FFN_PAD 36

template <int T>
__global__ void k_ffn_down(pi_wdev w, int chunk, int nsegp, const float *__restrict__ a, float *__restrict__ y)
{
    extern __shared__ float4 sh4[];
    __shared__ int s_cnt;
    const int64_t d = w.cols, nseg = d >> 5;
    const int G = blockDim.x / nsegp, grp = threadIdx.x / nsegp;
    float *part = (float *)sh4;
    int *list = (int *)(part + (size_t)G * nsegp * PI_FFN_PAD);
    const int64_t n0 = (int64_t)blockIdx.x * chunk, n1 = PI_MIN(n0 + chunk, w.rows);
    if (threadIdx.x < 32) {
        int cnt = 0;
        for (int64_t base = n0; base < n1; base += 32) {
            const int64_t i = base + threadIdx.x;
            const bool on = i < n1 && a[i] != 0.0f;
            const unsigned bal = __ballot_sync(0xffffffffu, on);
            if (on) list[cnt + __popc(bal & ((1u << threadIdx.x) - 1))] = (int)(i - n0);
            cnt += __popc(bal);
        }
        if (threadIdx.x == 0) s_cnt = cnt;
    }
    __syncthreads();
    const int cnt = s_cnt;
    if (cnt == 0) return; /* uniform: the whole block leaves */
    const int64_t s = threadIdx.x % nsegp;
    float acc[32];
#pragma unroll
    for (int j = 0; j < 32; j++) acc[j] = 0.0f;
    if (s < nseg) {
        int k = grp;
        for (; k + G < cnt; k += 2 * G) {
            const int64_t i0 = n0 + list[k], i1 = n0 + list[k + G];
            float v0[32], v1[32];
            pi_seg_decode<T>(w, i0, s, v0);
            pi_seg_decode<T>(w, i1, s, v1);
            const float a0 = a[i0], a1 = a[i1];
#pragma unroll
            for (int j = 0; j < 32; j++) acc[j] += a0 * v0[j] + a1 * v1[j];
        }
        if (k < cnt) {
            const int64_t i0 = n0 + list[k];
            float v0[32];
            pi_seg_decode<T>(w, i0, s, v0);
            const float a0 = a[i0];
#pragma unroll
            for (int j = 0; j < 32; j++) acc[j] += a0 * v0[j];
        }
    }
    float4 *pp = (float4 *)(part + ((size_t)grp * nsegp + s) * PI_FFN_PAD);
#pragma unroll
    for (int k = 0; k < 8; k++) pp[k] = make_float4(acc[4 * k], acc[4 * k + 1], acc[4 * k + 2], acc[4 * k + 3]);
    __syncthreads();
    for (int64_t i4 = threadIdx.x; i4 < d / 4; i4 += blockDim.x) {
        const int64_t seg = i4 >> 3, k = i4 & 7;
        float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int g = 0; g < G; g++) {
            const float4 v = ((const float4 *)(part + ((size_t)g * nsegp + seg) * PI_FFN_PAD))[k];
            sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
        }
#if CUDART_VERSION >= 12000 && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900)
        /* one 16-byte atomic: CUDA 12 and sm_90 on (CUDA 11, Debian's toolkit of CI's compile check, and
         * CUDA_ARCHS below 90 take the four scalar ones) */
        atomicAdd((float4 *)(y + 4 * i4), sum);
#else
        atomicAdd(y + 4 * i4, sum.x), atomicAdd(y + 4 * i4 + 1, sum.y);
        atomicAdd(y + 4 * i4 + 2, sum.z), atomicAdd(y + 4 * i4 + 3, sum.w);
#endif
    }
}

extern "C" int pi_cuda_ffn_hot(pi_cuda_ctx_t *c, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down, int act,
                               const float *d_x, const uint8_t *d_mask, const int32_t *d_ids, float *d_y)
{
    PI_TRY(check_act(act));
    const int64_t n_hot = down->rows, d = down->cols;
    if (gu->rows != 2 * n_hot || gu->cols != d || d % 32) {
        pi_error("cuda: ffn_hot: gate/up (%lld, %lld) and down (%lld, %lld) disagree", (long long)gu->rows,
                 (long long)gu->cols, (long long)down->rows, (long long)down->cols);
        return -PI_ERR_INVAL;
    }
    const int64_t nsegp = (d / 32 + 31) / 32 * 32;
    if (nsegp > 1024) {
        pi_error("cuda: ffn_hot: n_embd %lld too wide", (long long)d);
        return -PI_ERR_UNSUPPORTED;
    }
    void *a = NULL;
    PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_FFN, pi_cuda_ffn_act_bytes(n_hot), &a));
    PI_CU(cudaMemsetAsync(d_y, 0, (size_t)d * sizeof(float), c->stream));
    PI_TRY(pi_cuda_ffn_gu(c, gu, act, d_x, d_mask, d_ids, NULL, 0.0f, (float *)a));
    const int G = (int)PI_MAX((int64_t)1, 512 / nsegp);
    const int64_t nblk = PI_MIN((int64_t)c->n_sm * 2, (n_hot + 7) / 8);
    const int chunk = (int)((n_hot + nblk - 1) / nblk);
    const size_t smem = (size_t)G * (size_t)nsegp * PI_FFN_PAD * sizeof(float) + (size_t)chunk * sizeof(int);
    const int threads = (int)(G * nsegp);
    pi_wdev wd = pi_wdev_of(down);
    const unsigned grid = (unsigned)((n_hot + chunk - 1) / chunk);
    return pi_dispatch_type(down->type, [&](auto tag) -> int {
        auto kern = k_ffn_down<decltype(tag)::value>;
        if (smem > 48 * 1024) PI_CU(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        kern<<<grid, threads, smem, c->stream>>>(wd, chunk, (int)nsegp, (const float *)a, d_y);
        PI_CU_LAUNCH("k_ffn_down");
        return 0;
    });
}

extern "C" int pi_cuda_ffn_dense(pi_cuda_ctx_t *c, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down, int act,
                                 const float *d_x, const float *d_norm_g, float eps, float *d_y, int accumulate)
{
    PI_TRY(check_act(act));
    const int64_t n_ff = down->cols, d = down->rows;
    if (gu->rows != 2 * n_ff || gu->cols != d) {
        pi_error("cuda: ffn_dense: gate/up (%lld, %lld) and down (%lld, %lld) disagree", (long long)gu->rows,
                 (long long)gu->cols, (long long)down->rows, (long long)down->cols);
        return -PI_ERR_INVAL;
    }
    void *a = NULL;
    PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_FFN, pi_cuda_ffn_act_bytes(n_ff), &a)); /* held either way: the plan counts it */
    if (pi_cuda_ffn_dense_q8_ok(c, gu, down)) return pi_cuda_ffn_dense_q8(c, gu, down, act, d_x, d_norm_g, eps, d_y, accumulate);
    PI_TRY(pi_cuda_ffn_gu(c, gu, act, d_x, NULL, NULL, d_norm_g, eps, (float *)a));
    return accumulate ? pi_cuda_matvec_add(c, down, (const float *)a, d_y) : pi_cuda_matvec(c, down, (const float *)a, d_y);
}
