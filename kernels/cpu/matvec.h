/*
 * kernels/cpu/matvec.h - dense matrix-vector and matrix-matrix products over quantised weights,
 * split by weight rows over a thread pool. The activations are converted once per call to the format
 * the weight type's dot product takes (pi_vec_dot_type), then each output is one pi_vec_dot.
 */
#ifndef PI_KERNELS_CPU_MATVEC_H
#define PI_KERNELS_CPU_MATVEC_H

#include <stdint.h>

#include "kernels/cpu/pool.h"
#include "lib/types.h"
#include "lib/weights.h"

/* W (rows, cols) row-major in type t (each row pi_type_row_bytes(t, cols) bytes) @ x (cols,)
 * -> y (rows,). cols is a multiple of t's block size. Rows are split over pool (NULL = this thread).
 * Allocates a scratch row for the quantised x (aborts on allocation failure). */
void pi_matvec(pi_pool_t *pool, enum pi_type t, const void *W, int64_t rows, int64_t cols,
               const float *x, float *y);

/* Y (n, rows) = X (n, cols) @ W^T, W (rows, cols) in type t as for pi_matvec. X is quantised once;
 * the work is tiled so that each weight row is read from memory once per tile of tokens and reused
 * from cache across the tile (prompt processing). Row ranges are split over pool. */
void pi_matmul(pi_pool_t *pool, enum pi_type t, const void *W, int64_t rows, int64_t cols,
               const float *X, int64_t n, float *Y);

/* W @ x -> y (W->rows,) as pi_matvec, through W's 16-row packed copy (W->rows16, kernels/cpu/rows16.h)
 * where it has one and the active variant has a kernel for it, else over W->data. Either way a row's
 * result depends only on W, x and the active variant, never on the batch it came in (pi_matmul_w). */
void pi_matvec_w(pi_pool_t *pool, const struct pi_weight *W, const float *x, float *y);

/* Y (n, W->rows) = X (n, W->cols) @ W^T as pi_matmul, choosing the path as pi_matvec_w does: each
 * token's row of Y is bit for bit pi_matvec_w of that token's row of X. */
void pi_matmul_w(pi_pool_t *pool, const struct pi_weight *W, const float *X, int64_t n, float *Y);

/* Y[i] (n, W[i]->rows) = X (n, cols) @ W[i]^T for i < nw (1..4, one X): bit for bit nw calls of
 * pi_matmul_w (pi_matvec_w where n is 1), in one pool job where every W[i] has a packed copy of one
 * type and width and the active variant a kernel for it. */
void pi_matmul_wn(pi_pool_t *pool, const struct pi_weight *const *W, int nw, const float *X, int64_t n,
                  float *const *Y);

#endif
