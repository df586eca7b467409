/*
 * kernels/cpu/act-avx2.c - the SiLU-gated activation on AVX2 + FMA (contract in kernels/cpu/act-impl.h),
 * 8 lanes a step, the last step through a padded copy; e^-g by pi_x86_exp8 (kernels/cpu/vexp-x86.h,
 * the same bits as the AVX-512 version's). Compiled into libpinfer_avx2.a; kernels/cpu/ops.c calls it
 * only when the active variant is AVX2.
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "kernels/cpu/act-impl.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vexp-x86.h"
#include "lib/common.h"

#define NEAR 9.5367431640625e-07f /* 2^-20: |silu| this close to a threshold is decided by the scalar rule */

/* silu(g) = g / (1 + e^-g), 8 lanes. */
static inline __m256 silu8(__m256 g)
{
    const __m256 e = pi_x86_exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

void pi_ffn_silu_avx2(float *g, const float *u, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(g + i, _mm256_mul_ps(silu8(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
    if (i < n) {
        float gt[8] = {0}, ut[8] = {0};
        memcpy(gt, g + i, (size_t)(n - i) * sizeof *g);
        memcpy(ut, u + i, (size_t)(n - i) * sizeof *u);
        _mm256_storeu_ps(gt, _mm256_mul_ps(silu8(_mm256_loadu_ps(gt)), _mm256_loadu_ps(ut)));
        memcpy(g + i, gt, (size_t)(n - i) * sizeof *g);
    }
}

/* Eight elements of one row (at most len of them real): the activation or 0 into g, the kept count. */
static int silu_min8(const float *gm, float *g, const float *u, int len)
{
    float gt[8] = {0}, ut[8] = {0}, mt[8] = {0};
    memcpy(gt, g, (size_t)len * sizeof *g);
    memcpy(ut, u, (size_t)len * sizeof *u);
    memcpy(mt, gm, (size_t)len * sizeof *gm);
    const __m256 s = silu8(_mm256_loadu_ps(gt)), m = _mm256_loadu_ps(mt);
    const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), s);
    const int on = _mm256_movemask_ps(_mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_GT_OQ));
    const int above = _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_mul_ps(m, _mm256_set1_ps(1.0f + NEAR)), _CMP_GT_OQ));
    const int below = _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_mul_ps(m, _mm256_set1_ps(1.0f - NEAR)), _CMP_LT_OQ));
    /* g under -PI_VEXP_HI: e^-g is clamped, so |silu| is not libm's (whose e^-g stays finite to 88.72):
     * the scalar rule decides */
    const int far = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(gt), _mm256_set1_ps(-PI_VEXP_HI), _CMP_LT_OQ));
    const int real = (1 << len) - 1;
    int keep = real & (~on | (above & ~far)), near = real & on & ((~above & ~below) | far);
    for (int j = 0; near; j++, near >>= 1)
        if ((near & 1) && !pi_ffn_gate_skip(PI_FFN_ACT_SILU, gm[j], g[j])) keep |= 1 << j;
    float out[8];
    _mm256_storeu_ps(out, _mm256_mul_ps(s, _mm256_loadu_ps(ut)));
    for (int j = 0; j < len; j++) g[j] = keep >> j & 1 ? out[j] : 0.0f;
    return __builtin_popcount((unsigned)keep);
}

int64_t pi_ffn_silu_min_avx2(const float *gate_min, float *g, const float *u, int64_t n, int64_t ff)
{
    int64_t kept = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = 0; i < ff; i += 8)
            kept += silu_min8(gate_min + i, g + r * ff + i, u + r * ff + i, (int)PI_MIN(8, ff - i));
    return kept;
}
