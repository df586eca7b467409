/*
 * kernels/cpu/gemm-impl.h - the GEMM's micro-kernel contract, shared by kernels/cpu/gemm.c and its SIMD
 * variants (kernels/cpu/gemm-avx2.c, compiled with -mavx2 -mfma into libpinfer_avx2.a;
 * kernels/cpu/gemm-avx512.c, with the AVX-512 flags into libpinfer_avx512.a).
 */
#ifndef PI_KERNELS_CPU_GEMM_IMPL_H
#define PI_KERNELS_CPU_GEMM_IMPL_H

#include <stdint.h>

#include "kernels/cpu/gemm.h"

/* C block (mr, nr) (mr <= MR, nr <= NR; row stride ldc) = alpha * a @ b + beta * C block, where a is a
 * packed sliver (kc, MR) (for each k, MR row values) and b a packed sliver (kc, NR). beta == 0 never
 * reads C. The sum over k runs in increasing k. */
typedef void (*pi_gemm_ukernel_fn)(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr,
                                   float alpha, float beta);

void pi_gemm_ukernel_scalar(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr,
                            float alpha, float beta);
#ifdef PI_HAVE_X86_SIMD
void pi_gemm_ukernel_avx2(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr,
                          float alpha, float beta);
void pi_gemm_ukernel_avx512(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr,
                            float alpha, float beta);
#endif

#endif
