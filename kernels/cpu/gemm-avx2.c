/*
 * kernels/cpu/gemm-avx2.c - the GEMM's AVX2 + FMA micro-kernel (contract in kernels/cpu/gemm-impl.h).
 * Compiled with -mavx2 -mfma into libpinfer_avx2.a; kernels/cpu/gemm.c calls it only when the active
 * kernel variant is AVX2 or above. A 6 x 16 block of C lives in twelve ymm accumulators; each k loads
 * two vectors of b and broadcasts six values of a (12 FMAs per 8 loads).
 */
#include "config.h"

#include <immintrin.h>

#include "kernels/cpu/gemm-impl.h"

_Static_assert(PI_GEMM_MR == 6 && PI_GEMM_NR == 16, "the kernel's register block is 6 x 16");

void pi_gemm_ukernel_avx2(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr,
                          float alpha, float beta)
{
    /* twelve named accumulators: an array indexed in a loop is not kept in registers at -O2 */
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t k = 0; k < kc; k++, a += 6, b += 16) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), ai;
#define ROW(i)                                                                                                         \
    ai = _mm256_broadcast_ss(a + i);                                                                                   \
    c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0);                                                                        \
    c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1)
        ROW(0);
        ROW(1);
        ROW(2);
        ROW(3);
        ROW(4);
        ROW(5);
#undef ROW
    }
    __m256 acc[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    if (mr == 6 && nr == 16) {
        for (int i = 0; i < 6; i++)
            for (int h = 0; h < 2; h++) {
                float *ci = c + i * ldc + 8 * h;
                __m256 v = _mm256_mul_ps(va, acc[i][h]);
                if (beta != 0.0f) v = _mm256_add_ps(v, _mm256_mul_ps(vb, _mm256_loadu_ps(ci)));
                _mm256_storeu_ps(ci, v);
            }
        return;
    }
    float tmp[6][16];
    for (int i = 0; i < 6; i++) {
        _mm256_storeu_ps(tmp[i], acc[i][0]);
        _mm256_storeu_ps(tmp[i] + 8, acc[i][1]);
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float *cij = c + i * ldc + j;
            *cij = beta == 0.0f ? alpha * tmp[i][j] : alpha * tmp[i][j] + beta * *cij;
        }
}
