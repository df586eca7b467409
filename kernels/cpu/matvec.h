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

#endif
