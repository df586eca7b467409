/*
 * compute/backend-cuda-kernels.cu - the cuda backend's own device code (see
 * compute/backend-cuda-kernels.h): what kernels/cuda/ does not offer and only this backend needs.
 * Kept small and simple; the weight-streaming kernels of decode are kernels/cuda/'s.
 */
#include "compute/backend-cuda-kernels.h"

#include "kernels/cuda/cuda-impl.h" /* PI_CU, PI_CU_LAUNCH: the checks every .cu file of the project uses */

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

/* The activation values of enum pi_cuda_act (kernels/cuda/cuda.h): 1 silu, 2 relu, 3 drelu. */
__device__ __forceinline__ float cbk_glu(int act, float g, float u)
{
    if (act == 1) return g / (1.0f + expf(-g)) * u;
    if (act == 2) return fmaxf(g, 0.0f) * u;
    return fmaxf(g, 0.0f) * fmaxf(u, 0.0f);
}

__global__ void k_glu_pairs(int act, int64_t n, const float2 *__restrict__ g, float *__restrict__ a)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float2 v = g[i];
    a[i] = cbk_glu(act, v.x, v.y);
}

extern "C" int pi_cbk_glu_pairs(void *stream, int act, int64_t T, int64_t n_hot, const float *d_g, float *d_a)
{
    const int64_t n = T * n_hot;
    if (n <= 0) return 0;
    k_glu_pairs<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(act, n, (const float2 *)d_g, d_a);
    PI_CU_LAUNCH("k_glu_pairs");
    return 0;
}

/* ------------------------------------------------------------------ batched down product */

#define DB_T 64 /* tokens per block */
#define DB_N 64 /* output columns per block */
#define DB_K 16 /* reduction step */

/* 256 threads as 16 x 16; thread (ty, tx) owns tokens ty + 16 i and columns 4 tx + j (i, j < 4), so a
 * warp's stores of one token are 128 contiguous bytes. */
__global__ void __launch_bounds__(256)
k_down_batch(int64_t T, int64_t K, int64_t d, const float *__restrict__ a, const __half *__restrict__ w,
             float *__restrict__ y)
{
    __shared__ float as[DB_K][DB_T + 1];
    __shared__ float ws[DB_K][DB_N];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int64_t t0 = (int64_t)blockIdx.y * DB_T, n0 = (int64_t)blockIdx.x * DB_N;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += DB_K) {
        for (int e = threadIdx.x; e < DB_T * DB_K; e += 256) {
            const int t = e / DB_K, k = e % DB_K;
            const int64_t gt = t0 + t, gk = k0 + k;
            as[k][t] = (gt < T && gk < K) ? a[gt * K + gk] : 0.0f;
        }
        for (int e = threadIdx.x; e < DB_K * DB_N; e += 256) {
            const int k = e / DB_N, c = e % DB_N;
            const int64_t gk = k0 + k, gc = n0 + c;
            ws[k][c] = (gk < K && gc < d) ? __half2float(w[gk * d + gc]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < DB_K; k++) {
            float av[4], wv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) av[i] = as[k][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) wv[j] = ws[k][4 * tx + j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], wv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int64_t t = t0 + ty + 16 * i;
        if (t >= T) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t c = n0 + 4 * tx + j;
            if (c < d) y[t * d + c] = acc[i][j];
        }
    }
}

extern "C" int pi_cbk_down_batch(void *stream, int64_t T, int64_t k, int64_t d, const float *d_a, const void *d_w16,
                                 float *d_y)
{
    if (T <= 0 || k <= 0 || d <= 0 || (T + DB_T - 1) / DB_T > 65535) {
        pi_error("cuda backend: down product of (%lld, %lld) x (%lld, %lld) unsupported", (long long)T, (long long)k,
                 (long long)k, (long long)d);
        return -PI_ERR_INVAL;
    }
    dim3 grid((unsigned)((d + DB_N - 1) / DB_N), (unsigned)((T + DB_T - 1) / DB_T));
    k_down_batch<<<grid, 256, 0, (cudaStream_t)stream>>>(T, k, d, d_a, (const __half *)d_w16, d_y);
    PI_CU_LAUNCH("k_down_batch");
    return 0;
}

/* ------------------------------------------------------------------ attention for any head size */

#define AT_THREADS 128
#define AT_SMEM_MAX (48 * 1024)

__device__ float cbk_block_reduce(float v, float *red, bool is_max)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < nw; i++) r = is_max ? fmaxf(r, red[i]) : r + red[i];
    return r;
}

/* Block (h, t): scores of query t of head h against positions 0 .. pos0 + t, softmax, weighted sum of
 * the values. Shared memory: q (hd), 32 floats for reductions, the scores. Caches (n_ctx, n_kv, hd) f16. */
__global__ void __launch_bounds__(AT_THREADS)
k_attn_any(int n_head, int n_head_kv, int hd, int64_t pos0, float scale, const float *__restrict__ q,
           const __half *__restrict__ kc, const __half *__restrict__ vc, float *__restrict__ out)
{
    extern __shared__ float sh[];
    float *qs = sh, *red = sh + hd, *sc = sh + hd + 32;
    const int h = blockIdx.x;
    const int64_t t = blockIdx.y;
    const int g = h / (n_head / n_head_kv);
    const int64_t kv_len = pos0 + t + 1, kvd = (int64_t)n_head_kv * hd;
    const float *qr = q + (t * n_head + h) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) qs[i] = qr[i] * scale;
    __syncthreads();
    float m = -INFINITY;
    for (int64_t p = threadIdx.x; p < kv_len; p += blockDim.x) {
        const __half *kr = kc + p * kvd + (int64_t)g * hd;
        float s = 0.0f;
        for (int i = 0; i < hd; i++) s = fmaf(qs[i], __half2float(kr[i]), s);
        sc[p] = s;
        m = fmaxf(m, s);
    }
    m = cbk_block_reduce(m, red, true);
    float l = 0.0f;
    for (int64_t p = threadIdx.x; p < kv_len; p += blockDim.x) {
        const float e = expf(sc[p] - m);
        sc[p] = e;
        l += e;
    }
    l = cbk_block_reduce(l, red, false);
    __syncthreads();
    const float inv = 1.0f / l;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        const __half *vr = vc + (int64_t)g * hd + i;
        float acc = 0.0f;
        for (int64_t p = 0; p < kv_len; p++) acc = fmaf(sc[p], __half2float(vr[p * kvd]), acc);
        out[(t * n_head + h) * hd + i] = acc * inv;
    }
}

extern "C" int64_t pi_cbk_attention_max_pos(int head_dim)
{
    return (int64_t)(AT_SMEM_MAX / sizeof(float)) - head_dim - 32;
}

extern "C" int pi_cbk_attention(void *stream, int64_t T, int n_head, int n_head_kv, int head_dim, int64_t pos0,
                                const float *d_q, const void *d_k_cache, const void *d_v_cache, float *d_out)
{
    if (T <= 0 || T > 65535 || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv || head_dim <= 0 ||
        head_dim > 256 || pos0 < 0 || pos0 + T > pi_cbk_attention_max_pos(head_dim)) {
        pi_error("cuda backend: attention with %lld queries at %lld, %d heads, %d kv heads, head_dim %d unsupported",
                 (long long)T, (long long)pos0, n_head, n_head_kv, head_dim);
        return -PI_ERR_INVAL;
    }
    const size_t smem = (size_t)(head_dim + 32 + pos0 + T) * sizeof(float);
    dim3 grid((unsigned)n_head, (unsigned)T);
    k_attn_any<<<grid, AT_THREADS, smem, (cudaStream_t)stream>>>(n_head, n_head_kv, head_dim, pos0,
                                                                 1.0f / sqrtf((float)head_dim), d_q,
                                                                 (const __half *)d_k_cache,
                                                                 (const __half *)d_v_cache, d_out);
    PI_CU_LAUNCH("k_attn_any");
    return 0;
}

/* ------------------------------------------------------------------ host memory and ordering */

extern "C" int pi_cbk_host_alloc(size_t bytes, void **p)
{
    *p = NULL;
    PI_CU(cudaHostAlloc(p, bytes ? bytes : 1, cudaHostAllocDefault));
    return 0;
}

extern "C" void pi_cbk_host_free(void *p)
{
    if (!p) return;
    cudaError_t e = cudaFreeHost(p);
    if (e != cudaSuccess) pi_warn("cudaFreeHost failed: %s", cudaGetErrorString(e));
}

extern "C" int pi_cbk_host_register(void *p, size_t bytes)
{
    cudaError_t e = cudaHostRegister(p, bytes, cudaHostRegisterDefault);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* not sticky: clear it */
        pi_debug("cudaHostRegister(%p, %zu) failed: %s; copies stay unpinned", p, bytes, cudaGetErrorString(e));
        return -PI_ERR_DEVICE;
    }
    return 0;
}

extern "C" void pi_cbk_host_unregister(void *p)
{
    if (!p) return;
    cudaError_t e = cudaHostUnregister(p);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        pi_warn("cudaHostUnregister(%p) failed: %s", p, cudaGetErrorString(e));
    }
}

extern "C" int pi_cbk_event_new(void **ev)
{
    cudaEvent_t e = NULL;
    *ev = NULL;
    PI_CU(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    *ev = (void *)e;
    return 0;
}

extern "C" void pi_cbk_event_destroy(void *ev)
{
    if (ev) (void)cudaEventDestroy((cudaEvent_t)ev);
}

extern "C" int pi_cbk_copy_in(void *copy_stream, void *compute_stream, void *ev, void *d_dst, const void *src,
                              size_t bytes)
{
    if (!bytes) return 0;
    PI_CU(cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, (cudaStream_t)copy_stream));
    PI_CU(cudaEventRecord((cudaEvent_t)ev, (cudaStream_t)copy_stream));
    PI_CU(cudaStreamWaitEvent((cudaStream_t)compute_stream, (cudaEvent_t)ev, 0));
    return 0;
}

extern "C" int pi_cbk_event_sync(void *ev)
{
    PI_CU(cudaEventSynchronize((cudaEvent_t)ev));
    return 0;
}

extern "C" int pi_cbk_event_record(void *stream, void *ev)
{
    PI_CU(cudaEventRecord((cudaEvent_t)ev, (cudaStream_t)stream));
    return 0;
}

extern "C" int pi_cbk_stream_wait(void *stream, void *ev)
{
    PI_CU(cudaStreamWaitEvent((cudaStream_t)stream, (cudaEvent_t)ev, 0));
    return 0;
}

extern "C" int pi_cbk_copy_after(void *copy_stream, void *after, void *d_dst, const void *src, size_t bytes, void *done)
{
    if (after) PI_CU(cudaStreamWaitEvent((cudaStream_t)copy_stream, (cudaEvent_t)after, 0));
    if (bytes) PI_CU(cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, (cudaStream_t)copy_stream));
    PI_CU(cudaEventRecord((cudaEvent_t)done, (cudaStream_t)copy_stream));
    return 0;
}

extern "C" int pi_cbk_h2d_measure(void *copy_stream, void *d_dst, const void *src, size_t bytes, double *bps)
{
    cudaEvent_t e0 = NULL, e1 = NULL;
    *bps = 0;
    PI_CU(cudaEventCreate(&e0));
    cudaError_t err = cudaEventCreate(&e1);
    float best = 0.0f;
    for (int k = 0; err == cudaSuccess && k < 2; k++) {
        float ms = 0.0f;
        err = cudaEventRecord(e0, (cudaStream_t)copy_stream);
        if (err == cudaSuccess) err = cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, (cudaStream_t)copy_stream);
        if (err == cudaSuccess) err = cudaEventRecord(e1, (cudaStream_t)copy_stream);
        if (err == cudaSuccess) err = cudaEventSynchronize(e1);
        if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, e0, e1);
        if (err == cudaSuccess && ms > 0.0f && (best == 0.0f || ms < best)) best = ms;
    }
    (void)cudaEventDestroy(e0);
    if (e1) (void)cudaEventDestroy(e1);
    PI_CU(err);
    if (best > 0.0f) *bps = (double)bytes / ((double)best * 1e-3);
    return 0;
}
