/*
 * kernels/cpu/gemm.h - a cache-blocked single-precision GEMM for the work that is float32 from end to
 * end: training the activation predictors (compute/predictor-train.c). The quantised products of the
 * forward pass are kernels/cpu/matvec.h's.
 *
 * Method (GotoBLAS's): C is cut into tiles of PI_GEMM_MC rows x PI_GEMM_NC columns; each tile is one
 * job of the pool. A tile walks K in blocks of PI_GEMM_KC; for each block its thread packs op(B)'s
 * (KC, NC) panel into slivers of NR columns and op(A)'s (MC, KC) panel into slivers of MR rows (the
 * transposes are resolved by the packing, so every case runs the same micro-kernel), then an MR x NR
 * micro-kernel keeps its block of C in registers across the KC products. The micro-kernel follows
 * the active kernel variant (kernels/cpu/dispatch.h): AVX-512 (6 x 16, k unrolled by two into twelve
 * zmm accumulators), AVX2 + FMA (6 x 16, twelve ymm accumulators) or the portable scalar one.
 *
 * Determinism: every element of C is computed by one thread, summing over k in increasing order in
 * blocks of KC, whatever the number of threads and whichever thread takes the tile; so the result is
 * the same bits for any pool size (for one kernel variant: the SIMD kernels fuse multiply and add and
 * the AVX-512 one sums even and odd k apart, the scalar one does neither).
 */
#ifndef PI_KERNELS_CPU_GEMM_H
#define PI_KERNELS_CPU_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/cpu/pool.h"

#define PI_GEMM_MR 6
#define PI_GEMM_NR 16
#define PI_GEMM_MC 48  /* a multiple of MR */
#define PI_GEMM_NC 128 /* a multiple of NR */
#define PI_GEMM_KC 256

/* C (M, N) = alpha * op(A) @ op(B) + beta * C, all row-major float32.
 *   op(A) (M, K): A (M, K) with row stride lda when !ta, else A (K, M) read transposed;
 *   op(B) (K, N): B (K, N) with row stride ldb when !tb, else B (N, K) read transposed;
 *   C with row stride ldc. beta == 0: C is only written (it may hold anything, NaN included).
 * M, N >= 0; K >= 0 (K == 0: C = beta * C). Tiles are split over pool (NULL: the calling thread).
 * Allocates per-thread packing buffers per call: PI_ASSERT on no memory. */
void pi_sgemm(pi_pool_t *pool, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
              int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* The name of the micro-kernel pi_sgemm uses now ("avx512", "avx2" or "scalar"). */
const char *pi_sgemm_kernel_name(void);

#endif
