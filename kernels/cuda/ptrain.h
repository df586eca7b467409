/*
 * kernels/cuda/ptrain.h - the device side of the activation predictors' training (kernels/cuda/ptrain.cu):
 * a row-major FP32 GEMM through cuBLAS and the element-wise passes of one step, for the cuda engine of
 * compute/predictor-train-cuda.c (compute/predictor-train.h has the method, doc/predictors.md the why).
 *
 * Conventions are kernels/cuda/cuda.h's: d_* pointers are device memory of the context (pi_cuda_alloc),
 * every call only enqueues work on the context's compute stream, returns 0 or a negative enum pi_err and
 * logs a failed call once. Matrices are f32 row-major; the masks are bit rows, bit j of word j / 64 =
 * neuron j, mw = ceil(n_ff / 64) words a row. Formulas are those of the host's (compute/predictor-train.c,
 * bce_rows and adam_range) with no fused multiply-adds the host lacks, so the two agree to rounding:
 * the GEMMs' sums are ordered otherwise, expf and log1pf are CUDA's (within 2 ulp). No reduction uses
 * atomics: for one input on one GPU model every result is the same bits run to run.
 */
#ifndef PI_KERNELS_CUDA_PTRAIN_H
#define PI_KERNELS_CUDA_PTRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/cuda/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* C (M, N) = op(A) op(B), row-major (pi_sgemm's arguments with alpha 1 and beta 0: op(A) is (M, K),
 * op(B) (K, N)) through cublasSgemm in CUBLAS_DEFAULT_MATH: FP32 inputs, products and sums (no TF32).
 * Dimensions and leading dimensions at most INT_MAX (-PI_ERR_RANGE otherwise). */
int pi_cuda_sgemm(pi_cuda_ctx_t *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *d_A, int64_t lda,
                  const float *d_B, int64_t ldb, float *d_C, int64_t ldc);

/* out (n, d) = rows idx[0..n) of X (., d); d_idx int64 on the device, each a valid row of X. */
int pi_cuda_ptrain_gather(pi_cuda_ctx_t *ctx, const float *d_X, int64_t d, const int64_t *d_idx, int64_t n,
                          float *d_out);

/* A (n) = relu(H) (n elements). */
int pi_cuda_ptrain_relu(pi_cuda_ctx_t *ctx, int64_t n, const float *d_H, float *d_A);

/* H (n) = H > 0 ? dA : 0, in place: the gradient through the ReLU. */
int pi_cuda_ptrain_relu_grad(pi_cuda_ctx_t *ctx, int64_t n, const float *d_dA, float *d_H);

/* Logits Z (n, ff) replaced by d loss / d logit: scale (y ? pos_weight (sigmoid z - 1) : sigmoid z), y the
 * bit of mask row idx[i] (d_idx, int64 on the device) of M (., mw) for row i of Z. One expf per pair. */
int pi_cuda_ptrain_bce_grad(pi_cuda_ctx_t *ctx, float *d_Z, int64_t n, int64_t ff, const uint64_t *d_M, int64_t mw,
                            const int64_t *d_idx, float pos_weight, float scale);

/* rowloss[i] (double) = sum over j of the weighted BCE of logit Z[i][j] with the bit of mask row row0 + i:
 * y ? pos_weight softplus(-z) : softplus(z), each term in float, summed in double in a fixed order (one
 * block a row, a tree in shared memory). */
int pi_cuda_ptrain_bce_loss(pi_cuda_ctx_t *ctx, const float *d_Z, int64_t n, int64_t ff, const uint64_t *d_M,
                            int64_t mw, int64_t row0, float pos_weight, double *d_rowloss);

/* Adam over np parameters: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= lr_t m / (sqrt(v) + eps),
 * lr_t bias-corrected by the caller. */
int pi_cuda_ptrain_adam(pi_cuda_ctx_t *ctx, int64_t np, float *d_p, const float *d_g, float *d_m, float *d_v,
                        float lr_t, float b1, float b2, float eps);

/* Device-to-device copy of bytes, queued. */
int pi_cuda_ptrain_copy(pi_cuda_ctx_t *ctx, void *d_dst, const void *d_src, size_t bytes);

/* Row indices on their way to the device: a ring of slots of page-locked host memory and one device
 * buffer of max_rows int64. Queueing the copy from a slot lets the host run ahead of the device (no
 * wait per step); a slot is reused only after its copy completed (an event per slot). */
typedef struct pi_cuda_idx_ring pi_cuda_idx_ring_t;

/* A ring for up to max_rows (>= 1) indices a put. 0 and *out, or -PI_ERR_NOMEM / -PI_ERR_DEVICE. */
int pi_cuda_idx_ring_new(pi_cuda_ctx_t *ctx, int64_t max_rows, pi_cuda_idx_ring_t **out);

/* Free the ring (NULL ok) after its copies completed; NULLs *r. */
void pi_cuda_idx_ring_destroy(pi_cuda_ctx_t *ctx, pi_cuda_idx_ring_t **r);

/* idx[0..n) (n <= max_rows) to the device buffer, queued on the compute stream: kernels queued after
 * this call and before the next put read them at *d_idx. */
int pi_cuda_idx_ring_put(pi_cuda_ctx_t *ctx, pi_cuda_idx_ring_t *r, const int64_t *idx, int64_t n,
                         const int64_t **d_idx);

#ifdef __cplusplus
}
#endif

#endif
