/*
 * kernels/cuda/ptrain.cu - the activation predictors' training step on the device (contracts in
 * kernels/cuda/ptrain.h): a row-major FP32 GEMM over cublasSgemm, the gather of a minibatch's rows, the
 * ReLU and its gradient, the weighted cross-entropy's gradient and per-row loss, Adam, and the ring that
 * carries each step's row indices to the device.
 *
 * Rounding: the element-wise formulas are the host's (compute/predictor-train.c) and are written with
 * __fmul_rn / __fadd_rn where the host's C has a multiply followed by an add, so that nvcc does not fuse
 * them into one FMA the host does not use; what still differs from the host is the order of the GEMMs'
 * sums and CUDA's expf / log1pf (within 2 ulp). Every reduction is a fixed tree: no float atomics.
 */
#include "kernels/cuda/cuda-impl.h"
#include "kernels/cuda/ptrain.h"

#include <limits.h>

#define PT_THREADS 256 /* element-wise kernels; the loss: one block of this many threads a row */
#define PT_RING 8      /* slots of the index ring */

/* ------------------------------------------------------------------ GEMM */

extern "C" int pi_cuda_sgemm(pi_cuda_ctx_t *c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *d_A,
                             int64_t lda, const float *d_B, int64_t ldb, float *d_C, int64_t ldc)
{
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX) {
        pi_error("cuda: sgemm of %lld x %lld x %lld (lda %lld, ldb %lld, ldc %lld) exceeds cuBLAS' int", (long long)M,
                 (long long)N, (long long)K, (long long)lda, (long long)ldb, (long long)ldc);
        return -PI_ERR_RANGE;
    }
    if (M == 0 || N == 0) return 0;
    const float one = 1.0f, zero = 0.0f;
    /* FP32 throughout: the default math mode allows no TF32 (set here so that no other use of the handle
     * can leave it otherwise) */
    PI_CUBLAS(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS sees each row-major matrix as
     * its transpose, so the operands swap, the transpose flags stay, and M and N swap. */
    PI_CUBLAS(cublasSgemm(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M,
                          (int)K, &one, d_B, (int)ldb, d_A, (int)lda, &zero, d_C, (int)ldc));
    return 0;
}

/* ------------------------------------------------------------------ element-wise */

/* Block (x, y): columns [256 x, 256 x + 256) of output row y. */
__global__ void k_pt_gather(const float *__restrict__ X, int64_t d, const int64_t *__restrict__ idx,
                            float *__restrict__ out)
{
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (k < d) out[i * d + k] = X[idx[i] * d + k];
}

__global__ void k_pt_relu(int64_t n, const float *__restrict__ H, float *__restrict__ A)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        A[i] = H[i] > 0.0f ? H[i] : 0.0f;
}

__global__ void k_pt_relu_grad(int64_t n, const float *__restrict__ dA, float *__restrict__ H)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        H[i] = H[i] > 0.0f ? dA[i] : 0.0f;
}

/* Block (x, y): logits [256 x, 256 x + 256) of row y, mask row idx[y]. bce_rows' gradient: with
 * e = exp(-|z|), sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e) below. */
__global__ void k_pt_bce_grad(float *__restrict__ Z, int64_t ff, const uint64_t *__restrict__ M, int64_t mw,
                              const int64_t *__restrict__ idx, float pos_weight, float scale)
{
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (j >= ff) return;
    const uint64_t *m = M + idx[i] * mw;
    bool y = (m[j >> 6] >> (j & 63)) & 1;
    float z = Z[i * ff + j], e = expf(-fabsf(z));
    float sig = z >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    Z[i * ff + j] = scale * (y ? pos_weight * (sig - 1.0f) : sig);
}

/* Block i: rowloss[i] = sum over j of row i's weighted BCE (mask row row0 + i); thread t sums j = t,
 * t + 256, ... in double, then a tree over the block's threads: a fixed order. */
__global__ void __launch_bounds__(PT_THREADS)
    k_pt_bce_loss(const float *__restrict__ Z, int64_t ff, const uint64_t *__restrict__ M, int64_t mw, int64_t row0,
                  float pos_weight, double *__restrict__ rowloss)
{
    __shared__ double part[PT_THREADS];
    const int64_t i = blockIdx.x;
    const float *z = Z + i * ff;
    const uint64_t *m = M + (row0 + i) * mw;
    double sum = 0;
    for (int64_t j = threadIdx.x; j < ff; j += PT_THREADS) {
        bool y = (m[j >> 6] >> (j & 63)) & 1;
        float zj = z[j], e = expf(-fabsf(zj));
        float sp_pos = __fadd_rn(zj > 0.0f ? zj : 0.0f, log1pf(e)); /* softplus(z) */
        sum += y ? (double)(pos_weight * (sp_pos - zj)) : (double)sp_pos;
    }
    part[threadIdx.x] = sum;
    __syncthreads();
    for (int w = PT_THREADS / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) rowloss[i] = part[0];
}

__global__ void k_pt_adam(int64_t np, float *__restrict__ p, const float *__restrict__ g, float *__restrict__ m,
                          float *__restrict__ v, float lr_t, float b1, float b2, float eps)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < np; i += (int64_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(1.0f - b1, gi));
        float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(1.0f - b2, gi), gi));
        m[i] = mi, v[i] = vi;
        p[i] = __fsub_rn(p[i], __fmul_rn(lr_t, mi) / __fadd_rn(sqrtf(vi), eps));
    }
}

/* Blocks for n elements of a grid-stride kernel: enough to fill the device, no more than the work. */
static unsigned pt_blocks(const pi_cuda_ctx_t *c, int64_t n)
{
    int64_t b = (n + PT_THREADS - 1) / PT_THREADS, cap = (int64_t)c->n_sm * 8;
    return (unsigned)(b < cap ? (b > 0 ? b : 1) : cap);
}

extern "C" int pi_cuda_ptrain_gather(pi_cuda_ctx_t *c, const float *d_X, int64_t d, const int64_t *d_idx, int64_t n,
                                     float *d_out)
{
    if (n <= 0 || d <= 0) return 0;
    if (n > 65535) return pi_error("cuda: gather of %lld rows (at most 65535)", (long long)n), -PI_ERR_RANGE;
    dim3 grid((unsigned)((d + PT_THREADS - 1) / PT_THREADS), (unsigned)n);
    k_pt_gather<<<grid, PT_THREADS, 0, c->stream>>>(d_X, d, d_idx, d_out);
    PI_CU_LAUNCH("k_pt_gather");
    return 0;
}

extern "C" int pi_cuda_ptrain_relu(pi_cuda_ctx_t *c, int64_t n, const float *d_H, float *d_A)
{
    if (n <= 0) return 0;
    k_pt_relu<<<pt_blocks(c, n), PT_THREADS, 0, c->stream>>>(n, d_H, d_A);
    PI_CU_LAUNCH("k_pt_relu");
    return 0;
}

extern "C" int pi_cuda_ptrain_relu_grad(pi_cuda_ctx_t *c, int64_t n, const float *d_dA, float *d_H)
{
    if (n <= 0) return 0;
    k_pt_relu_grad<<<pt_blocks(c, n), PT_THREADS, 0, c->stream>>>(n, d_dA, d_H);
    PI_CU_LAUNCH("k_pt_relu_grad");
    return 0;
}

extern "C" int pi_cuda_ptrain_bce_grad(pi_cuda_ctx_t *c, float *d_Z, int64_t n, int64_t ff, const uint64_t *d_M,
                                       int64_t mw, const int64_t *d_idx, float pos_weight, float scale)
{
    if (n <= 0 || ff <= 0) return 0;
    if (n > 65535) return pi_error("cuda: loss gradient of %lld rows (at most 65535)", (long long)n), -PI_ERR_RANGE;
    dim3 grid((unsigned)((ff + PT_THREADS - 1) / PT_THREADS), (unsigned)n);
    k_pt_bce_grad<<<grid, PT_THREADS, 0, c->stream>>>(d_Z, ff, d_M, mw, d_idx, pos_weight, scale);
    PI_CU_LAUNCH("k_pt_bce_grad");
    return 0;
}

extern "C" int pi_cuda_ptrain_bce_loss(pi_cuda_ctx_t *c, const float *d_Z, int64_t n, int64_t ff, const uint64_t *d_M,
                                       int64_t mw, int64_t row0, float pos_weight, double *d_rowloss)
{
    if (n <= 0) return 0;
    if (n > INT_MAX) return pi_error("cuda: loss of %lld rows", (long long)n), -PI_ERR_RANGE;
    k_pt_bce_loss<<<(unsigned)n, PT_THREADS, 0, c->stream>>>(d_Z, ff, d_M, mw, row0, pos_weight, d_rowloss);
    PI_CU_LAUNCH("k_pt_bce_loss");
    return 0;
}

extern "C" int pi_cuda_ptrain_adam(pi_cuda_ctx_t *c, int64_t np, float *d_p, const float *d_g, float *d_m, float *d_v,
                                   float lr_t, float b1, float b2, float eps)
{
    if (np <= 0) return 0;
    k_pt_adam<<<pt_blocks(c, np), PT_THREADS, 0, c->stream>>>(np, d_p, d_g, d_m, d_v, lr_t, b1, b2, eps);
    PI_CU_LAUNCH("k_pt_adam");
    return 0;
}

extern "C" int pi_cuda_ptrain_copy(pi_cuda_ctx_t *c, void *d_dst, const void *d_src, size_t bytes)
{
    if (!bytes) return 0;
    PI_CU(cudaMemcpyAsync(d_dst, d_src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    return 0;
}

/* ------------------------------------------------------------------ the index ring */

struct pi_cuda_idx_ring {
    int64_t max_rows;
    int64_t *host;           /* (PT_RING, max_rows) page-locked */
    int64_t *dev;            /* (max_rows) device, from the context's budget */
    cudaEvent_t ev[PT_RING]; /* recorded after each slot's copy */
    bool used[PT_RING];      /* ev[k] has been recorded */
    int next;                /* the slot of the next put */
};

extern "C" void pi_cuda_idx_ring_destroy(pi_cuda_ctx_t *c, pi_cuda_idx_ring_t **pr)
{
    if (!pr || !*pr) return;
    pi_cuda_idx_ring_t *r = *pr;
    if (c->stream) (void)cudaStreamSynchronize(c->stream); /* no copy may still read the slots */
    for (int k = 0; k < PT_RING; k++)
        if (r->ev[k]) (void)cudaEventDestroy(r->ev[k]);
    if (r->host) (void)cudaFreeHost(r->host);
    if (r->dev) (void)pi_cuda_free(c, r->dev);
    free(r);
    *pr = NULL;
}

static int ring_init(pi_cuda_ctx_t *c, pi_cuda_idx_ring_t *r)
{
    PI_CU(cudaMallocHost((void **)&r->host, (size_t)PT_RING * (size_t)r->max_rows * sizeof(int64_t)));
    PI_TRY(pi_cuda_alloc(c, (size_t)r->max_rows * sizeof(int64_t), (void **)&r->dev));
    for (int k = 0; k < PT_RING; k++) PI_CU(cudaEventCreateWithFlags(&r->ev[k], cudaEventDisableTiming));
    return 0;
}

extern "C" int pi_cuda_idx_ring_new(pi_cuda_ctx_t *c, int64_t max_rows, pi_cuda_idx_ring_t **out)
{
    *out = NULL;
    pi_cuda_idx_ring_t *r = (pi_cuda_idx_ring_t *)calloc(1, sizeof *r);
    if (!r) return pi_error("cuda: out of host memory for an index ring"), -PI_ERR_NOMEM;
    r->max_rows = max_rows > 0 ? max_rows : 1;
    int rc = ring_init(c, r);
    if (rc < 0) {
        pi_cuda_idx_ring_destroy(c, &r);
        return rc;
    }
    *out = r;
    return 0;
}

extern "C" int pi_cuda_idx_ring_put(pi_cuda_ctx_t *c, pi_cuda_idx_ring_t *r, const int64_t *idx, int64_t n,
                                    const int64_t **d_idx)
{
    PI_ASSERT(n >= 0 && n <= r->max_rows);
    const int k = r->next;
    int64_t *slot = r->host + (size_t)k * (size_t)r->max_rows;
    if (r->used[k]) PI_CU(cudaEventSynchronize(r->ev[k])); /* its last copy has left the slot */
    memcpy(slot, idx, (size_t)n * sizeof *idx);
    PI_CU(cudaMemcpyAsync(r->dev, slot, (size_t)n * sizeof *idx, cudaMemcpyHostToDevice, c->stream));
    PI_CU(cudaEventRecord(r->ev[k], c->stream));
    r->used[k] = true;
    r->next = (k + 1) % PT_RING;
    *d_idx = r->dev;
    return 0;
}
