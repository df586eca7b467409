/*
 * kernels/cuda/sparse.cu - the sparse FFN of a layer with an activation predictor (compute/predictor.h):
 * the predictor's logits become the layer's mask on the device (bits for the CPU workers, a compacted
 * list of the GPU's predicted-active hot neurons), then the hot neurons' gate/up pairs are computed
 * over that list only, and the down accumulation only over the listed neurons whose activation is not
 * zero (a ReLU neuron whose exact gate is not positive reads no down row).
 *
 * Why a list and not the mask bytes of pi_cuda_ffn_hot: a masked matvec still launches a warp per hot
 * neuron and every block stages all of x before its masked warps leave, so at 10% active most of the
 * work is staging for nothing. Here block b takes list entries [8 b, 8 b + 8) and the blocks past the
 * list's length (read on the device) leave before staging; the grid is sized for every hot neuron
 * because the length is not known on the host (no round trip).
 *
 * The activation thresholds of a SwiGLU model (issue 18, doc/thresholds.md) reuse the same list kernels
 * in CATS's gate-first order: the gate rows of every hot neuron (pi_cuda_ffn_gu_part, GATE), the rule per
 * (token, neuron) against the hot neurons' thresholds (pi_cuda_gate_list: the skipped activations zeroed,
 * the kept neurons listed in ascending order, the skipped pairs counted), then the up rows (UP) and the
 * down rows over that list only. For a batch the gate/up GEMM stays dense and pi_cuda_gate_list zeroes
 * the skipped activations before the down product, as pi_cuda_mask_act does for predictors.
 *
 * Shapes: n_embd = d (a multiple of 32, x staged in shared memory: at most the context's xs_max_cols);
 * gu (2 n_hot, d) gate/up rows interleaved, down (n_hot, d) the ffn_down_t rows (cuda.h, "hot neurons").
 * Lists and counts are int32 on the device; the activations a (n_hot) are indexed by hot neuron, the
 * entries of unlisted neurons zero (pi_cuda_pred_mask writes those zeros).
 */
#include "kernels/cuda/cuda-impl.h"

#include <limits.h>

#define PI_SP_MASK_THREADS 1024 /* one block per row of the batch */
#define PI_SP_GU_THREADS 256    /* 8 warps, one listed neuron each */
#define PI_SP_GU_WARPS (PI_SP_GU_THREADS / 32)
#define PI_SP_PAD 36            /* staged x: segment rows padded to 36 floats (matmul.cu's layout) */
#define PI_SP_DOWN_MIN 16       /* listed neurons per block of the down kernel at the least */

/* ------------------------------------------------------------------ mask and lists */

/* Block t (row t of the batch): words (n, mw) bit j set iff logits[t][j] >= thr (every j < n_ff when
 * logits is NULL), n_on[t] = its popcount; then list[t] = the hot indices i < n_hot whose neuron
 * (ids[i], or i) is set, in no particular order, n_list[t] their count, and a0[t][i] = 0 for every
 * other i (rows t < a0_rows). Shared memory: mw words. */
__global__ void __launch_bounds__(PI_SP_MASK_THREADS)
    k_pred_mask(int64_t n_ff, int64_t mw, const float *__restrict__ logits, float thr, uint64_t *__restrict__ words,
                int32_t *__restrict__ n_on, int64_t n_hot, const int32_t *__restrict__ ids, int32_t *__restrict__ list,
                int32_t *__restrict__ n_list, float *__restrict__ a0, int64_t a0_rows)
{
    extern __shared__ uint64_t sw[];
    __shared__ int s_on, s_cnt;
    const int lane = threadIdx.x & 31, wi = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int64_t t = blockIdx.x;
    if (threadIdx.x == 0) s_on = 0, s_cnt = 0;
    __syncthreads();
    const float *lt = logits ? logits + t * n_ff : NULL;
    int on_cnt = 0;
    for (int64_t w = wi; w < mw; w += nw) {
        const int64_t j0 = 64 * w + lane, j1 = j0 + 32;
        const bool b0 = j0 < n_ff && (!lt || lt[j0] >= thr), b1 = j1 < n_ff && (!lt || lt[j1] >= thr);
        const unsigned lo = __ballot_sync(0xffffffffu, b0), hi = __ballot_sync(0xffffffffu, b1);
        if (lane == 0) {
            const uint64_t word = (uint64_t)lo | ((uint64_t)hi << 32);
            sw[w] = word;
            words[t * mw + w] = word;
            on_cnt += __popcll(word);
        }
    }
    if (lane == 0 && on_cnt) atomicAdd(&s_on, on_cnt);
    __syncthreads();
    int32_t *lrow = list ? list + t * n_hot : NULL;
    float *arow = a0 && t < a0_rows ? a0 + t * n_hot : NULL;
    for (int64_t base = 32 * (int64_t)wi; base < n_hot; base += 32 * (int64_t)nw) {
        const int64_t i = base + lane;
        bool on = false;
        if (i < n_hot) {
            const int64_t id = ids ? ids[i] : i;
            on = id >= 0 && id < n_ff && ((sw[id >> 6] >> (id & 63)) & 1);
            if (!on && arow) arow[i] = 0.0f;
        }
        const unsigned bal = __ballot_sync(0xffffffffu, on);
        if (bal) { /* uniform in the warp */
            int pos = 0;
            if (lane == 0) pos = atomicAdd(&s_cnt, __popc(bal));
            pos = __shfl_sync(0xffffffffu, pos, 0);
            if (on) lrow[pos + __popc(bal & ((1u << lane) - 1))] = (int32_t)i;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        n_on[t] = s_on;
        if (n_list) n_list[t] = s_cnt;
    }
}

extern "C" int pi_cuda_pred_mask(pi_cuda_ctx_t *c, int64_t n, int64_t n_ff, const float *d_logits, float thr,
                                 uint64_t *d_words, int32_t *d_on, int64_t n_hot, const int32_t *d_ids, int32_t *d_list,
                                 int32_t *d_n_list, float *d_a0, int64_t a0_rows)
{
    const int64_t mw = (n_ff + 63) / 64;
    if (n < 1 || n > INT_MAX || n_ff < 1 || n_ff > INT_MAX || n_hot < 0 || n_hot > n_ff || (n_hot > 0 && !d_list) ||
        (size_t)mw * 8 > 48 * 1024) {
        pi_error("cuda: pred_mask: %lld rows, %lld neurons, %lld hot", (long long)n, (long long)n_ff, (long long)n_hot);
        return -PI_ERR_INVAL;
    }
    k_pred_mask<<<(unsigned)n, PI_SP_MASK_THREADS, (size_t)mw * 8, c->stream>>>(
        n_ff, mw, d_logits, thr, d_words, d_on, n_hot, d_ids, d_list, d_n_list, d_a0, a0_rows);
    PI_CU_LAUNCH("k_pred_mask");
    return 0;
}

/* a (n, n_hot) = 0 where hot neuron i's neuron (ids[i], or i) has its bit clear in words row t. */
__global__ void k_mask_act(int64_t n, int64_t n_hot, const int32_t *__restrict__ ids, const uint64_t *__restrict__ words,
                           int64_t mw, float *__restrict__ a)
{
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n * n_hot) return;
    const int64_t t = e / n_hot, i = e - t * n_hot, id = ids ? ids[i] : i;
    if (!((words[t * mw + (id >> 6)] >> (id & 63)) & 1)) a[e] = 0.0f;
}

extern "C" int pi_cuda_mask_act(pi_cuda_ctx_t *c, int64_t n, int64_t n_hot, const int32_t *d_ids, const uint64_t *d_words,
                                int64_t mw, float *d_a)
{
    if (n < 1 || n_hot < 1 || mw < 1 || n * n_hot > (int64_t)INT_MAX * 256) {
        pi_error("cuda: mask_act: %lld rows of %lld", (long long)n, (long long)n_hot);
        return -PI_ERR_INVAL;
    }
    k_mask_act<<<(unsigned)((n * n_hot + 255) / 256), 256, 0, c->stream>>>(n, n_hot, d_ids, d_words, mw, d_a);
    PI_CU_LAUNCH("k_mask_act");
    return 0;
}

/* ------------------------------------------------------------------ activation thresholds */

/* kernels/cpu/ops.h's pi_ffn_gate_skip, the one rule, on the device (expf: the accurate one, as the
 * build uses no fast math). */
__device__ __forceinline__ bool pi_gate_skip(int act, float gmin, float g)
{
    if (act != PI_CUDA_ACT_SILU && g <= 0.0f) return true;
    if (!(gmin > 0.0f)) return false;
    const float s = act == PI_CUDA_ACT_SILU ? g / (1.0f + expf(-g)) : g;
    return fabsf(s) <= gmin;
}

/* Block t (row t of the batch): for each hot index i, in chunks of blockDim.x, skip = the rule on the gate
 * g[t gr + i ge] against gmin[i]; a skipped pair's a[t ar + i] = 0; with list, the kept indices of the
 * chunk go to list[t n_hot + ...] in ascending order (each warp's ballot, the warps' counts scanned by warp
 * 0, a running base), then n_list[t] = all kept. One integer atomic per block adds the row's skipped pairs
 * to *skipped. g and a may be the same array (each element is read, then written, by one thread). */
__global__ void __launch_bounds__(PI_SP_MASK_THREADS)
    k_gate_list(int64_t n_hot, int act, const float *__restrict__ gmin, const float *g, int64_t gr, int64_t ge,
                float *a, int64_t ar, int32_t *__restrict__ list, int32_t *__restrict__ n_list,
                unsigned long long *__restrict__ skipped)
{
    __shared__ int s_wc[32];
    __shared__ int64_t s_base;
    const int lane = threadIdx.x & 31, wi = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int64_t t = blockIdx.x;
    if (threadIdx.x == 0) s_base = 0;
    for (int64_t c0 = 0; c0 < n_hot; c0 += blockDim.x) {
        const int64_t i = c0 + threadIdx.x;
        bool keep = false;
        if (i < n_hot) {
            const bool skip = pi_gate_skip(act, gmin[i], g[t * gr + i * ge]);
            if (skip) a[t * ar + i] = 0.0f;
            keep = !skip;
        }
        const unsigned bal = __ballot_sync(0xffffffffu, keep);
        if (lane == 0) s_wc[wi] = __popc(bal);
        __syncthreads(); /* the counts; s_base from the chunk before */
        if (wi == 0) { /* exclusive scan of the warps' counts */
            const int v = lane < nw ? s_wc[lane] : 0;
            int incl = v;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int y = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += y;
            }
            if (lane < nw) s_wc[lane] = incl - v;
        }
        __syncthreads();
        const int64_t base = s_base, off = s_wc[wi];
        if (keep && list) list[t * n_hot + base + off + __popc(bal & ((1u << lane) - 1u))] = (int32_t)i;
        __syncthreads(); /* every thread has read s_base and s_wc before either changes */
        if (threadIdx.x == blockDim.x - 1) s_base = base + off + __popc(bal); /* the last warp's end: the chunk's */
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        if (n_list) n_list[t] = (int32_t)s_base;
        if (skipped && n_hot - s_base > 0) atomicAdd(skipped, (unsigned long long)(n_hot - s_base));
    }
}

extern "C" int pi_cuda_gate_list(pi_cuda_ctx_t *c, int64_t n, int64_t n_hot, int act, const float *d_gmin,
                                 const float *d_g, int64_t g_row, int64_t g_el, float *d_a, int64_t a_row,
                                 int32_t *d_list, int32_t *d_n_list, uint64_t *d_skipped)
{
    static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "the counter's width");
    const bool act_ok = act == PI_CUDA_ACT_SILU || act == PI_CUDA_ACT_RELU || act == PI_CUDA_ACT_DRELU;
    if (n < 1 || n > INT_MAX || n_hot < 1 || n_hot > INT_MAX || g_row < 0 || g_el < 1 || a_row < n_hot || !act_ok ||
        (d_list == NULL) != (d_n_list == NULL)) {
        pi_error("cuda: gate_list: %lld rows of %lld hot neurons, strides %lld/%lld/%lld, activation %d", (long long)n,
                 (long long)n_hot, (long long)g_row, (long long)g_el, (long long)a_row, act);
        return -PI_ERR_INVAL;
    }
    k_gate_list<<<(unsigned)n, PI_SP_MASK_THREADS, 0, c->stream>>>(n_hot, act, d_gmin, d_g, g_row, g_el, d_a, a_row,
                                                                    d_list, d_n_list, (unsigned long long *)d_skipped);
    PI_CU_LAUNCH("k_gate_list");
    return 0;
}

/* ------------------------------------------------------------------ gate/up over the list */

/* Block b: list entries k in [8 b, 8 b + 8) below *cnt (list NULL: entries k < n_all, neuron k), warp w
 * entry 8 b + w: neuron i = list[k], its gate and up rows 2i and 2i + 1 of gu dotted with x (staged in
 * shared memory, padded rows), U segments of each row in flight per lane. PART (enum pi_cuda_gu_part)
 * says which rows are read and what a[i] becomes: BOTH act(gate, up); GATE the gate product alone (the up
 * row unread); UP act(a[i], up), a[i] holding the gate product (the gate row unread). Blocks past the
 * list leave before staging. */
template <int T, int U, int PART>
__global__ void __launch_bounds__(PI_SP_GU_THREADS)
    k_gu_list(pi_wdev w, int act, const float *__restrict__ x, const int32_t *__restrict__ list,
              const int32_t *__restrict__ cnt, int64_t n_all, float *__restrict__ a)
{
    extern __shared__ float4 xs4[];
    const int64_t count = cnt ? (int64_t)*cnt : n_all;
    const int64_t k0 = (int64_t)blockIdx.x * PI_SP_GU_WARPS;
    if (k0 >= count) return; /* the whole block */
    const int64_t nseg = w.cols >> 5;
    for (int64_t i = threadIdx.x; i < (w.cols >> 2); i += blockDim.x)
        xs4[(i >> 3) * (PI_SP_PAD / 4) + (i & 7)] = __ldg((const float4 *)x + i);
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int64_t k = k0 + (threadIdx.x >> 5);
    if (k >= count) return;
    const int64_t nrn = list ? list[k] : k, r0 = 2 * nrn;
    constexpr bool GATE = PART != PI_CUDA_GU_UP, UP = PART != PI_CUDA_GU_GATE;
    const float *xs = (const float *)xs4;
    float ag = 0.0f, au = 0.0f;
    for (int64_t sb = lane; sb < nseg; sb += 32 * U) {
        pi_seg_raw rg[U], ru[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t s = sb + 32 * u < nseg ? sb + 32 * u : nseg - 1; /* clamped loads are not used */
            if constexpr (GATE) pi_seg_load<T>(w, r0, s, rg[u]);
            if constexpr (UP) pi_seg_load<T>(w, r0 + 1, s, ru[u]);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t s = sb + 32 * u;
            if (s >= nseg) break;
            const float4 *p = (const float4 *)(xs + s * PI_SP_PAD);
            float xv[32], xs0 = 0.0f, xs1 = 0.0f;
#pragma unroll
            for (int q = 0; q < 8; q++) {
                const float4 f = p[q];
                xv[4 * q] = f.x, xv[4 * q + 1] = f.y, xv[4 * q + 2] = f.z, xv[4 * q + 3] = f.w;
            }
            if constexpr (T != PI_TYPE_F16 && T != PI_TYPE_BF16) {
#pragma unroll
                for (int j = 0; j < 16; j++) xs0 += xv[j], xs1 += xv[16 + j];
            }
            if constexpr (GATE) ag += pi_seg_dot_raw<T>(rg[u], xv, xs0, xs1);
            if constexpr (UP) au += pi_seg_dot_raw<T>(ru[u], xv, xs0, xs1);
        }
    }
    if constexpr (GATE) ag = pi_warp_sum(ag);
    if constexpr (UP) au = pi_warp_sum(au);
    if (lane != 0) return;
    if constexpr (PART == PI_CUDA_GU_BOTH) a[nrn] = pi_glu_f(act, ag, au);
    else if constexpr (PART == PI_CUDA_GU_GATE) a[nrn] = ag;
    else a[nrn] = pi_glu_f(act, a[nrn], au);
}

extern "C" int pi_cuda_ffn_gu_part(pi_cuda_ctx_t *c, const pi_cuda_weight_t *gu, int part, int act, const float *d_x,
                                   const int32_t *d_list, const int32_t *d_cnt, float *d_a)
{
    if (act != PI_CUDA_ACT_SILU && act != PI_CUDA_ACT_RELU && act != PI_CUDA_ACT_DRELU) {
        pi_error("cuda: ffn_gu_list: unknown activation %d", act);
        return -PI_ERR_INVAL;
    }
    if (part != PI_CUDA_GU_BOTH && part != PI_CUDA_GU_GATE && part != PI_CUDA_GU_UP) {
        pi_error("cuda: ffn_gu_list: unknown part %d", part);
        return -PI_ERR_INVAL;
    }
    if (gu->rows % 2 || gu->rows < 2 || gu->cols % 32 || gu->cols > c->xs_max_cols - 32) {
        pi_error("cuda: ffn_gu_list: gate/up (%lld, %lld) not pairs of rows of whole segments that fit the staging",
                 (long long)gu->rows, (long long)gu->cols);
        return -PI_ERR_INVAL;
    }
    if ((d_list == NULL) != (d_cnt == NULL)) {
        pi_error("cuda: ffn_gu_list: a list without its count, or a count without its list");
        return -PI_ERR_INVAL;
    }
    const int64_t n_hot = gu->rows / 2;
    const size_t smem = (size_t)(gu->cols / 32) * PI_SP_PAD * sizeof(float);
    const unsigned grid = (unsigned)((n_hot + PI_SP_GU_WARPS - 1) / PI_SP_GU_WARPS);
    pi_wdev wd = pi_wdev_of(gu);
    return pi_dispatch_type(gu->type, [&](auto tag) -> int {
        constexpr int T = decltype(tag)::value;
        constexpr int U = pi_small_seg<T>() ? 4 : 2;
        auto kern = part == PI_CUDA_GU_GATE ? k_gu_list<T, U, PI_CUDA_GU_GATE>
                    : part == PI_CUDA_GU_UP ? k_gu_list<T, U, PI_CUDA_GU_UP>
                                            : k_gu_list<T, U, PI_CUDA_GU_BOTH>;
        if (smem > 48 * 1024) PI_CU(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        kern<<<grid, PI_SP_GU_THREADS, smem, c->stream>>>(wd, act, d_x, d_list, d_cnt, n_hot, d_a);
        PI_CU_LAUNCH("k_gu_list");
        return 0;
    });
}

extern "C" int pi_cuda_ffn_gu_list(pi_cuda_ctx_t *c, const pi_cuda_weight_t *gu, int act, const float *d_x,
                                   const int32_t *d_list, const int32_t *d_cnt, float *d_a)
{
    if (!d_list || !d_cnt) {
        pi_error("cuda: ffn_gu_list: no list");
        return -PI_ERR_INVAL;
    }
    return pi_cuda_ffn_gu_part(c, gu, PI_CUDA_GU_BOTH, act, d_x, d_list, d_cnt, d_a);
}

/* ------------------------------------------------------------------ down over the list */

/* y (d,) += sum over list entries k < *cnt with a[list[k]] != 0 of a[list[k]] * down row list[k]. The
 * entries are split evenly over the grid, at least PI_SP_DOWN_MIN per block (fewer blocks adding into y
 * when the list is short); in a block, warp 0 lists its entries' non-zero neurons, then G groups of
 * nsegp threads (one 32-column segment each) walk that list two neurons at a time, the groups' sums
 * meet in shared memory (segment rows padded to 36 floats) and go to y by 16-byte atomics. Dynamic
 * shared memory: G nsegp 36 floats, then chunk_max ints. */
template <int T>
__global__ void k_down_list(pi_wdev w, int nsegp, int chunk_max, const int32_t *__restrict__ list,
                            const int32_t *__restrict__ cnt, const float *__restrict__ a, float *__restrict__ y)
{
    extern __shared__ float4 sh4[];
    __shared__ int s_n;
    const int count = *cnt;
    const int chunk = min(chunk_max, max(PI_SP_DOWN_MIN, (count + (int)gridDim.x - 1) / (int)gridDim.x));
    const int k0 = (int)blockIdx.x * chunk, k1 = min(k0 + chunk, count);
    if (k0 >= k1) return; /* the whole block */
    const int64_t d = w.cols, nseg = d >> 5;
    const int G = blockDim.x / nsegp, grp = threadIdx.x / nsegp;
    float *part = (float *)sh4;
    int *nl = (int *)(part + (size_t)G * nsegp * PI_SP_PAD);
    if (threadIdx.x < 32) {
        int m = 0;
        for (int base = k0; base < k1; base += 32) {
            const int k = base + (int)threadIdx.x;
            const int i = k < k1 ? list[k] : 0;
            const bool on = k < k1 && a[i] != 0.0f;
            const unsigned bal = __ballot_sync(0xffffffffu, on);
            if (on) nl[m + __popc(bal & ((1u << threadIdx.x) - 1))] = i;
            m += __popc(bal);
        }
        if (threadIdx.x == 0) s_n = m;
    }
    __syncthreads();
    const int m = s_n;
    if (m == 0) return; /* uniform */
    const int64_t s = threadIdx.x % nsegp;
    float acc[32];
#pragma unroll
    for (int j = 0; j < 32; j++) acc[j] = 0.0f;
    if (s < nseg) {
        int k = grp;
        for (; k + G < m; k += 2 * G) {
            const int i0 = nl[k], i1 = nl[k + G];
            float v0[32], v1[32];
            pi_seg_decode<T>(w, i0, s, v0);
            pi_seg_decode<T>(w, i1, s, v1);
            const float a0 = a[i0], a1 = a[i1];
#pragma unroll
            for (int j = 0; j < 32; j++) acc[j] += a0 * v0[j] + a1 * v1[j];
        }
        if (k < m) {
            const int i0 = nl[k];
            float v0[32];
            pi_seg_decode<T>(w, i0, s, v0);
            const float a0 = a[i0];
#pragma unroll
            for (int j = 0; j < 32; j++) acc[j] += a0 * v0[j];
        }
    }
    float4 *pp = (float4 *)(part + ((size_t)grp * nsegp + s) * PI_SP_PAD);
#pragma unroll
    for (int q = 0; q < 8; q++) pp[q] = make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]);
    __syncthreads();
    for (int64_t i4 = threadIdx.x; i4 < d / 4; i4 += blockDim.x) {
        const int64_t seg = i4 >> 3, q = i4 & 7;
        float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int g = 0; g < G; g++) {
            const float4 v = ((const float4 *)(part + ((size_t)g * nsegp + seg) * PI_SP_PAD))[q];
            sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
        }
#if CUDART_VERSION >= 12000 && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900)
        atomicAdd((float4 *)(y + 4 * i4), sum);
#else
        atomicAdd(y + 4 * i4, sum.x), atomicAdd(y + 4 * i4 + 1, sum.y);
        atomicAdd(y + 4 * i4 + 2, sum.z), atomicAdd(y + 4 * i4 + 3, sum.w);
#endif
    }
}

extern "C" int pi_cuda_ffn_down_list(pi_cuda_ctx_t *c, const pi_cuda_weight_t *down, const int32_t *d_list,
                                     const int32_t *d_cnt, const float *d_a, float *d_y)
{
    const int64_t n_hot = down->rows, d = down->cols;
    const int64_t nsegp = (d / 32 + 31) / 32 * 32;
    if (d % 32 || nsegp > 1024 || n_hot < 1 || n_hot > INT_MAX) {
        pi_error("cuda: ffn_down_list: down rows (%lld, %lld) unsupported", (long long)n_hot, (long long)d);
        return -PI_ERR_UNSUPPORTED;
    }
    const int G = (int)PI_MAX((int64_t)1, 512 / nsegp);
    const int64_t grid = PI_MAX((int64_t)1, PI_MIN((int64_t)c->n_sm * 2, (n_hot + 7) / 8));
    const int chunk_max = (int)PI_MAX((int64_t)PI_SP_DOWN_MIN, (n_hot + grid - 1) / grid);
    const size_t smem = (size_t)G * (size_t)nsegp * PI_SP_PAD * sizeof(float) + (size_t)chunk_max * sizeof(int);
    pi_wdev wd = pi_wdev_of(down);
    PI_CU(cudaMemsetAsync(d_y, 0, (size_t)d * sizeof(float), c->stream));
    return pi_dispatch_type(down->type, [&](auto tag) -> int {
        auto kern = k_down_list<decltype(tag)::value>;
        if (smem > 48 * 1024) PI_CU(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        kern<<<(unsigned)grid, (unsigned)(G * nsegp), smem, c->stream>>>(wd, (int)nsegp, chunk_max, d_list, d_cnt, d_a, d_y);
        PI_CU_LAUNCH("k_down_list");
        return 0;
    });
}

extern "C" int pi_cuda_ffn_hot_list(pi_cuda_ctx_t *c, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down, int act,
                                    const float *d_x, const int32_t *d_list, const int32_t *d_cnt, float *d_a, float *d_y)
{
    if (gu->rows != 2 * down->rows || gu->cols != down->cols) {
        pi_error("cuda: ffn_hot_list: gate/up (%lld, %lld) and down (%lld, %lld) disagree", (long long)gu->rows,
                 (long long)gu->cols, (long long)down->rows, (long long)down->cols);
        return -PI_ERR_INVAL;
    }
    PI_TRY(pi_cuda_ffn_gu_list(c, gu, act, d_x, d_list, d_cnt, d_a));
    return pi_cuda_ffn_down_list(c, down, d_list, d_cnt, d_a, d_y);
}
