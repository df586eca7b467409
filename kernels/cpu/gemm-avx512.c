/*
 * kernels/cpu/gemm-avx512.c - the GEMM's AVX-512 micro-kernel (contract in kernels/cpu/gemm-impl.h).
 * Compiled with the AVX-512 flags into libpinfer_avx512.a; kernels/cpu/gemm.c calls it only when the
 * active kernel variant is AVX-512 or above. The 6 x 16 block of C is one zmm per row; the k loop is
 * unrolled by two into two sets of six accumulators (twelve independent FMA chains, enough to cover
 * the FMA latency), added at the end. So its sums differ in order from the AVX2 kernel's; within the
 * variant they are fixed (the same bits on any thread count).
 */
#include "config.h"

#include <immintrin.h>

#include "kernels/cpu/gemm-impl.h"

_Static_assert(PI_GEMM_MR == 6 && PI_GEMM_NR == 16, "the kernel's register block is 6 x 16");

void pi_gemm_ukernel_avx512(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr,
                            float alpha, float beta)
{
    __m512 e0 = _mm512_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, e4 = e0, e5 = e0; /* even k */
    __m512 o0 = e0, o1 = e0, o2 = e0, o3 = e0, o4 = e0, o5 = e0;                  /* odd k */
    int64_t k = 0;
    for (; k + 2 <= kc; k += 2, a += 12, b += 32) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        e0 = _mm512_fmadd_ps(_mm512_set1_ps(a[0]), b0, e0);
        e1 = _mm512_fmadd_ps(_mm512_set1_ps(a[1]), b0, e1);
        e2 = _mm512_fmadd_ps(_mm512_set1_ps(a[2]), b0, e2);
        e3 = _mm512_fmadd_ps(_mm512_set1_ps(a[3]), b0, e3);
        e4 = _mm512_fmadd_ps(_mm512_set1_ps(a[4]), b0, e4);
        e5 = _mm512_fmadd_ps(_mm512_set1_ps(a[5]), b0, e5);
        o0 = _mm512_fmadd_ps(_mm512_set1_ps(a[6]), b1, o0);
        o1 = _mm512_fmadd_ps(_mm512_set1_ps(a[7]), b1, o1);
        o2 = _mm512_fmadd_ps(_mm512_set1_ps(a[8]), b1, o2);
        o3 = _mm512_fmadd_ps(_mm512_set1_ps(a[9]), b1, o3);
        o4 = _mm512_fmadd_ps(_mm512_set1_ps(a[10]), b1, o4);
        o5 = _mm512_fmadd_ps(_mm512_set1_ps(a[11]), b1, o5);
    }
    if (k < kc) {
        __m512 b0 = _mm512_loadu_ps(b);
        e0 = _mm512_fmadd_ps(_mm512_set1_ps(a[0]), b0, e0);
        e1 = _mm512_fmadd_ps(_mm512_set1_ps(a[1]), b0, e1);
        e2 = _mm512_fmadd_ps(_mm512_set1_ps(a[2]), b0, e2);
        e3 = _mm512_fmadd_ps(_mm512_set1_ps(a[3]), b0, e3);
        e4 = _mm512_fmadd_ps(_mm512_set1_ps(a[4]), b0, e4);
        e5 = _mm512_fmadd_ps(_mm512_set1_ps(a[5]), b0, e5);
    }
    __m512 acc[6] = {_mm512_add_ps(e0, o0), _mm512_add_ps(e1, o1), _mm512_add_ps(e2, o2),
                     _mm512_add_ps(e3, o3), _mm512_add_ps(e4, o4), _mm512_add_ps(e5, o5)};
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __mmask16 cols = (__mmask16)((1u << nr) - 1u);
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        __m512 v = _mm512_mul_ps(va, acc[i]);
        if (beta != 0.0f) v = _mm512_add_ps(v, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(cols, ci)));
        _mm512_mask_storeu_ps(ci, cols, v);
    }
}
