/*
 * kernels/cuda/ctx.cu - the device context: streams, the cuBLAS handle, and the budgeted allocator
 * through which every device byte of the backend passes, so that the VRAM budget is exact and a model
 * that cannot fit fails at load with a message instead of an out-of-memory error later.
 *
 * Accounting: each allocation is counted as its size rounded up to 256 bytes and recorded in a small
 * host-side table (pointer, counted bytes) so that pi_cuda_free can give the bytes back. The CUDA
 * context and the cuBLAS handle are created before the budget applies; their footprint is measured with
 * cudaMemGetInfo and reported as `overhead`. The decode attention's per-head counters (PI_CUDA_ATT_CNT
 * of them, zeroed here, ops.cu) are the last bytes of the cuBLAS workspace's allocation, which cuBLAS
 * is not given: the budgeted total stays PI_CUDA_BLAS_WS.
 */
#include "kernels/cuda/cuda-impl.h"

#include <cstdlib>
#include <cstring>

/* The allocator's rounding (PI_CUDA_ALLOC_ALIGN), the workspace (PI_CUDA_BLAS_WS) and the scratch
 * slots' headroom are kernels/cuda/plan.h's, which the VRAM plan counts with. */

__global__ void k_copy16(size_t n, const uint4 *__restrict__ src, uint4 *__restrict__ dst);

static int ctx_init(pi_cuda_ctx_t *c, int dev, size_t budget, const struct pi_cuda_opts *o)
{
    size_t free0 = 0, free1 = 0, total = 0;
    cudaDeviceProp p;
    PI_CU(cudaSetDevice(dev));
    PI_CU(cudaFree(0)); /* create the primary context now, so that its size is not in `overhead` twice */
    PI_CU(cudaMemGetInfo(&free0, &total));
    PI_CU(cudaGetDeviceProperties(&p, dev));
    c->n_sm = p.multiProcessorCount;
    c->xs_max_cols = (int64_t)(p.sharedMemPerBlockOptin / (36 * sizeof(float))) * 32; /* see matmul.cu */
    c->x_mode = o ? o->x : PI_CUDA_X_AUTO; /* checked by pi_cuda_ctx_new */
    c->att_dec = !(o && o->att_unfused);
    /* PDL needs the device code built for sm_90 or later (pi_pdl_wait is empty below that); every .cu
     * file is built for the same architectures, so one kernel's binary version tells */
    cudaFuncAttributes fa;
    PI_CU(cudaFuncGetAttributes(&fa, k_copy16));
    c->pdl = p.major >= 9 && fa.binaryVersion >= 90 && !(o && o->no_pdl);
    /* pi_cuda_mmq_built: every built architecture has mma.sync on int8 (sm_80), so a device that runs
     * this code has it too; the VRAM plan then counts no dequantised tiles for those types */
    c->mmq = pi_cuda_mmq_built(PI_TYPE_Q4_0) && p.major >= 8 && !(o && o->no_mmq);
    PI_CU(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    PI_CU(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking));
    PI_CUBLAS(cublasCreate(&c->blas));
    /* cublasSetStream resets the workspace to cuBLAS' own pool, so the stream comes first. */
    PI_CUBLAS(cublasSetStream(c->blas, c->stream));
    PI_CU(cudaDeviceSynchronize());
    PI_CU(cudaMemGetInfo(&free1, &total));
    c->overhead = free0 > free1 ? free0 - free1 : 0;
    c->budget = budget ? budget : (free1 > (256u << 20) ? free1 - (256u << 20) : 0);
    PI_TRY(pi_cuda_alloc(c, PI_CUDA_BLAS_WS, &c->blas_ws));
    const size_t cnt_bytes = PI_CUDA_ATT_CNT * sizeof(unsigned);
    PI_CUBLAS(cublasSetWorkspace(c->blas, c->blas_ws, PI_CUDA_BLAS_WS - cnt_bytes));
    c->att_cnt = (unsigned *)((uint8_t *)c->blas_ws + PI_CUDA_BLAS_WS - cnt_bytes);
    PI_CU(cudaMemsetAsync(c->att_cnt, 0, cnt_bytes, c->stream));
    PI_CU(cudaStreamSynchronize(c->stream));
    pi_info("cuda: device %d (%s, %d SMs): budget %.1f MiB, free %.1f of %.1f MiB, context+cuBLAS %.1f MiB",
            dev, p.name, c->n_sm, c->budget / 1048576.0, free1 / 1048576.0, total / 1048576.0,
            c->overhead / 1048576.0);
    return 0;
}

extern "C" pi_cuda_ctx_t *pi_cuda_ctx_new(int dev, size_t budget, const struct pi_cuda_opts *o)
{
    if (o && (o->x < PI_CUDA_X_AUTO || o->x > PI_CUDA_X_Q8)) {
        pi_error("cuda: context option x = %d is not one of auto (0), f32 (1), q8 (2)", o->x);
        return NULL;
    }
    int n = pi_cuda_device_count();
    if (n < 0) return NULL;
    if (dev < 0 || dev >= n) {
        pi_error("cuda: device %d does not exist (%d visible)", dev, n);
        return NULL;
    }
    pi_cuda_ctx_t *c = (pi_cuda_ctx_t *)calloc(1, sizeof(*c));
    if (!c) {
        pi_error("cuda: out of host memory for a context");
        return NULL;
    }
    c->dev = dev;
    if (ctx_init(c, dev, budget, o) < 0) {
        pi_cuda_ctx_destroy(&c);
        return NULL;
    }
    return c;
}

extern "C" void pi_cuda_ctx_destroy(pi_cuda_ctx_t **pc)
{
    if (!pc || !*pc) return;
    pi_cuda_ctx_t *c = *pc;
    if (c->stream) {
        cudaError_t e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess) pi_warn("cudaStreamSynchronize at context destroy: %s", cudaGetErrorString(e));
    }
    if (c->blas) {
        cublasStatus_t s = cublasDestroy(c->blas);
        if (s != CUBLAS_STATUS_SUCCESS) pi_warn("cublasDestroy failed: %s", cublasGetStatusString(s));
    }
    for (size_t i = 0; i < c->n_recs; i++) {
        cudaError_t e = cudaFree(c->recs[i].ptr);
        if (e != cudaSuccess) pi_warn("cudaFree at context destroy: %s", cudaGetErrorString(e));
    }
    if (c->stream) (void)cudaStreamDestroy(c->stream);
    if (c->copy) (void)cudaStreamDestroy(c->copy);
    free(c->recs);
    free(c);
    *pc = NULL;
}

extern "C" void pi_cuda_ctx_usage(const pi_cuda_ctx_t *c, size_t *budget, size_t *used, size_t *peak,
                                  size_t *overhead)
{
    if (budget) *budget = c->budget;
    if (used) *used = c->used;
    if (peak) *peak = c->peak;
    if (overhead) *overhead = c->overhead;
}

extern "C" void *pi_cuda_ctx_stream(pi_cuda_ctx_t *c) { return (void *)c->stream; }
extern "C" void *pi_cuda_ctx_copy_stream(pi_cuda_ctx_t *c) { return (void *)c->copy; }

extern "C" int pi_cuda_alloc(pi_cuda_ctx_t *c, size_t bytes, void **ptr)
{
    *ptr = NULL;
    if (bytes == 0 || bytes > SIZE_MAX - PI_CUDA_ALLOC_ALIGN) {
        pi_error("cuda: allocation of %zu bytes refused (size out of range)", bytes);
        return -PI_ERR_INVAL;
    }
    size_t counted = (size_t)pi_cuda_counted(bytes);
    if (counted > c->budget - c->used) {
        pi_error("cuda: allocation of %zu bytes would exceed the VRAM budget (%zu of %zu bytes in use)",
                 bytes, c->used, c->budget);
        return -PI_ERR_NOMEM;
    }
    if (c->n_recs == c->cap_recs) {
        size_t cap = c->cap_recs ? 2 * c->cap_recs : 64;
        void *r = realloc(c->recs, cap * sizeof(*c->recs));
        if (!r) {
            pi_error("cuda: out of host memory for the allocation table");
            return -PI_ERR_NOMEM;
        }
        c->recs = (struct pi_cuda_alloc_rec *)r;
        c->cap_recs = cap;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is not sticky */
        pi_error("cudaMalloc(%zu) failed: %s (%zu of %zu budgeted bytes in use)", bytes, cudaGetErrorString(e),
                 c->used, c->budget);
        return e == cudaErrorMemoryAllocation ? -PI_ERR_NOMEM : -PI_ERR_DEVICE;
    }
    c->recs[c->n_recs].ptr = p;
    c->recs[c->n_recs].bytes = counted;
    c->n_recs++;
    c->used += counted;
    if (c->used > c->peak) c->peak = c->used;
    *ptr = p;
    return 0;
}

extern "C" int pi_cuda_free(pi_cuda_ctx_t *c, void *ptr)
{
    if (!ptr) return 0;
    for (size_t i = 0; i < c->n_recs; i++) {
        if (c->recs[i].ptr != ptr) continue;
        c->used -= c->recs[i].bytes;
        c->recs[i] = c->recs[--c->n_recs];
        PI_CU(cudaFree(ptr));
        return 0;
    }
    pi_error("cuda: free of %p, which this context did not allocate", ptr);
    return -PI_ERR_INVAL;
}

int pi_cuda_scratch(pi_cuda_ctx_t *c, enum pi_cuda_scratch slot, size_t bytes, void **out)
{
    if (c->scr_bytes[slot] < bytes) {
        size_t want = pi_cuda_scratch_want(bytes); /* grow with headroom: fewer reallocations */
        PI_TRY(pi_cuda_free(c, c->scr[slot]));
        c->scr[slot] = NULL;
        c->scr_bytes[slot] = 0;
        int rc = pi_cuda_alloc(c, want, &c->scr[slot]);
        if (rc < 0 && want != bytes) rc = pi_cuda_alloc(c, bytes, &c->scr[slot]), want = bytes;
        if (rc < 0) return rc;
        c->scr_bytes[slot] = want;
        pi_debug("cuda: scratch slot %d grown to %zu bytes", (int)slot, want);
    }
    *out = c->scr[slot];
    return 0;
}

extern "C" int pi_cuda_upload(pi_cuda_ctx_t *c, void *d_dst, const void *src, size_t bytes)
{
    if (!bytes) return 0;
    PI_CU(cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    PI_CU(cudaStreamSynchronize(c->stream));
    return 0;
}

extern "C" int pi_cuda_download_async(pi_cuda_ctx_t *c, void *dst, const void *d_src, size_t bytes)
{
    if (!bytes) return 0;
    PI_CU(cudaMemcpyAsync(dst, d_src, bytes, cudaMemcpyDeviceToHost, c->stream));
    return 0;
}

extern "C" int pi_cuda_download(pi_cuda_ctx_t *c, void *dst, const void *d_src, size_t bytes)
{
    if (!bytes) return 0;
    int rc = pi_cuda_download_async(c, dst, d_src, bytes);
    if (rc != 0) return rc;
    PI_CU(cudaStreamSynchronize(c->stream));
    return 0;
}

extern "C" int pi_cuda_memset(pi_cuda_ctx_t *c, void *d_dst, int value, size_t bytes)
{
    PI_CU(cudaMemsetAsync(d_dst, value, bytes, c->stream));
    return 0;
}

extern "C" int pi_cuda_sync(pi_cuda_ctx_t *c)
{
    PI_CU(cudaStreamSynchronize(c->stream));
    PI_CU(cudaGetLastError());
    return 0;
}

extern "C" int pi_cuda_mem_info(pi_cuda_ctx_t *c, size_t *free_bytes, size_t *total_bytes)
{
    PI_CU(cudaSetDevice(c->dev));
    PI_CU(cudaMemGetInfo(free_bytes, total_bytes));
    return 0;
}

__global__ void k_copy16(size_t n, const uint4 *__restrict__ src, uint4 *__restrict__ dst)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

extern "C" int pi_cuda_copy(pi_cuda_ctx_t *c, void *d_dst, const void *d_src, size_t bytes)
{
    if (bytes % 16 || ((uintptr_t)d_dst | (uintptr_t)d_src) % 16) {
        pi_error("cuda: copy of %zu bytes needs 16-byte multiples and alignment", bytes);
        return -PI_ERR_INVAL;
    }
    size_t n = bytes / 16;
    unsigned grid = (unsigned)PI_MIN((n + 255) / 256, (size_t)c->n_sm * 16);
    if (grid == 0) return 0;
    k_copy16<<<grid, 256, 0, c->stream>>>(n, (const uint4 *)d_src, (uint4 *)d_dst);
    PI_CU_LAUNCH("k_copy16");
    return 0;
}
