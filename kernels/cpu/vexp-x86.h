/*
 * kernels/cpu/vexp-x86.h - private to the x86 variants: expf over 8 (AVX2 + FMA) or 16 (AVX-512F)
 * lanes, for the attention softmax and the SiLU activation (kernels/cpu/attn-avx2.c, attn-avx512.c).
 * Include only from files compiled with at least -mavx2 -mfma; the 16-lane version needs -mavx512f.
 * Static inline: each variant gets its own copy compiled with its own flags.
 *
 * Method: x is clamped to [PI_VEXP_LO, PI_VEXP_HI], n = round(x / ln 2), r = x - n ln 2 (ln 2 in two
 * parts, the first short enough that n times it is exact), e^r by a degree-6 polynomial on |r| <=
 * ln 2 / 2 (the minimax coefficients Cephes' expf uses), scaled by 2^n through the exponent bits.
 * Every step is an FMA, multiply or add in a fixed order, so the result is a function of x alone: the
 * same bits in any lane, any call and any batch, and pi_x86_exp8 and pi_x86_exp16 agree lane for lane.
 * Error against exp in double, measured over every float in the clamped range (December 2026): at most
 * 1.01 ulp (relative 8.5e-8); tests/unit/test-ops checks the SiLU and the attention built on it against
 * double references. x below PI_VEXP_LO gives e^PI_VEXP_LO (about 1.2e-38, the smallest normal) rather
 * than a denormal or 0, x above PI_VEXP_HI gives e^PI_VEXP_HI; NaN is not propagated (the callers'
 * inputs are finite, and a NaN score or gate is an upstream fault either way).
 */
#ifndef PI_KERNELS_CPU_VEXP_X86_H
#define PI_KERNELS_CPU_VEXP_X86_H

#include <immintrin.h>

#define PI_VEXP_LO -87.33654f /* ln(2^-126): the result stays a normal float */
#define PI_VEXP_HI 88.0f      /* under ln(2^127): n <= 127, so 2^n and the result stay finite */

#define PI_VEXP_LOG2E 1.44269504088896341f
#define PI_VEXP_LN2_HI 0.693359375f /* ln 2 = HI + LO, HI with few mantissa bits so n * HI is exact */
#define PI_VEXP_LN2_LO -2.12194440e-4f
#define PI_VEXP_P0 1.9875691500e-4f
#define PI_VEXP_P1 1.3981999507e-3f
#define PI_VEXP_P2 8.3334519073e-3f
#define PI_VEXP_P3 4.1665795894e-2f
#define PI_VEXP_P4 1.6666665459e-1f
#define PI_VEXP_P5 5.0000001201e-1f

/* e^x in each of 8 lanes (see above). */
static inline __m256 pi_x86_exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(PI_VEXP_LO)), _mm256_set1_ps(PI_VEXP_HI));
    const __m256 n =
        _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(PI_VEXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(PI_VEXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(PI_VEXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(PI_VEXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PI_VEXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PI_VEXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PI_VEXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PI_VEXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PI_VEXP_P5));
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    /* 2^n for n in [-126, 127]: the biased exponent n + 127 in bits 23..30 */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

#ifdef __AVX512F__
/* e^x in each of 16 lanes: the same operations as pi_x86_exp8, lane for lane (the same bits). */
static inline __m512 pi_x86_exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(PI_VEXP_LO)), _mm512_set1_ps(PI_VEXP_HI));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(PI_VEXP_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(PI_VEXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(PI_VEXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(PI_VEXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PI_VEXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PI_VEXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PI_VEXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PI_VEXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PI_VEXP_P5));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}
#endif

#endif
