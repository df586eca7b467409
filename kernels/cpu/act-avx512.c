/*
 * kernels/cpu/act-avx512.c - the SiLU-gated activation on AVX-512F (contract in kernels/cpu/act-impl.h),
 * 16 lanes a step, the last step masked; e^-g by pi_x86_exp16 (kernels/cpu/vexp-x86.h, 1 ulp). Compiled
 * into libpinfer_avx512.a; kernels/cpu/ops.c calls it only when the active variant is AVX-512 or above.
 */
#include "config.h"

#include <math.h>

#include "kernels/cpu/act-impl.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vexp-x86.h"

#define NEAR 9.5367431640625e-07f /* 2^-20: |silu| this close to a threshold is decided by the scalar rule */

/* silu(g) = g / (1 + e^-g), 16 lanes. */
static inline __m512 silu16(__m512 g)
{
    const __m512 e = pi_x86_exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    return _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

static inline __mmask16 lanes(int64_t left) { return left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1); }

void pi_ffn_silu_avx512(float *g, const float *u, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = lanes(n - i);
        const __m512 s = silu16(_mm512_maskz_loadu_ps(k, g + i));
        _mm512_mask_storeu_ps(g + i, k, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, u + i)));
    }
}

int64_t pi_ffn_silu_min_avx512(const float *gate_min, float *g, const float *u, int64_t n, int64_t ff)
{
    int64_t kept = 0;
    for (int64_t r = 0; r < n; r++) {
        float *gr = g + r * ff;
        const float *ur = u + r * ff;
        for (int64_t i = 0; i < ff; i += 16) {
            const __mmask16 k = lanes(ff - i);
            const __m512 gv = _mm512_maskz_loadu_ps(k, gr + i), s = silu16(gv);
            const __m512 gm = _mm512_maskz_loadu_ps(k, gate_min + i), a = _mm512_abs_ps(s);
            const __mmask16 on = _mm512_cmp_ps_mask(gm, _mm512_setzero_ps(), _CMP_GT_OQ);
            const __mmask16 above = _mm512_cmp_ps_mask(a, _mm512_mul_ps(gm, _mm512_set1_ps(1.0f + NEAR)), _CMP_GT_OQ);
            const __mmask16 below = _mm512_cmp_ps_mask(a, _mm512_mul_ps(gm, _mm512_set1_ps(1.0f - NEAR)), _CMP_LT_OQ);
            /* g under -PI_VEXP_HI: e^-g is clamped, so |silu| is not libm's (whose e^-g stays finite
             * to 88.72): the scalar rule decides */
            const __mmask16 far = _mm512_cmp_ps_mask(gv, _mm512_set1_ps(-PI_VEXP_HI), _CMP_LT_OQ);
            __mmask16 keep = (__mmask16)(k & (~on | (above & ~far)));
            __mmask16 near = (__mmask16)(k & on & ((~above & ~below) | far));
            for (int j = 0; near; j++, near >>= 1)
                if ((near & 1) && !pi_ffn_gate_skip(PI_FFN_ACT_SILU, gate_min[i + j], gr[i + j]))
                    keep |= (__mmask16)(1u << j);
            _mm512_mask_storeu_ps(gr + i, k, _mm512_maskz_mul_ps(keep, s, _mm512_maskz_loadu_ps(k, ur + i)));
            kept += __builtin_popcount(keep);
        }
    }
    return kept;
}
