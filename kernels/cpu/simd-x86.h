/*
 * kernels/cpu/simd-x86.h - private to the x86 variants: small intrinsic helpers shared by
 * quant-avx2.c and quant-avx512.c. Include only from files compiled with at least -mavx2 -mfma -mf16c
 * (they are static inline, so each variant gets its own copy compiled with its own flags).
 *
 * The int8 dot products use the usual maddubs trick (u8 x s8 -> pairwise-summed s16): a signed x
 * signed product is |x| * (y with x's sign). This needs y != -128 where x < 0, which holds because
 * the activation quantisers (Q8_0, Q8_K) produce values in [-127, 127]; weights may be any int8.
 * All loads are unaligned (_loadu): rows are packed blocks with 2-byte alignment.
 */
#ifndef PI_KERNELS_CPU_SIMD_X86_H
#define PI_KERNELS_CPU_SIMD_X86_H

#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/quant-impl.h"

static inline float pi_x86_h2f(uint16_t h) { return _cvtsh_ss(h); }

static inline float pi_x86_hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int pi_x86_hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* 8 x int32 sums of 4 adjacent products of signed x and signed y (see the note above on -128). */
static inline __m256i pi_x86_dot_i8(__m256i x, __m256i y)
{
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* 8 x int32 sums of 4 adjacent products of unsigned x (< 128) and signed y. */
static inline __m256i pi_x86_dot_u8(__m256i x, __m256i y)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

/* 16 packed nibble bytes -> 32 bytes: low nibbles (elements 0..15) then high nibbles (16..31). */
static inline __m256i pi_x86_nibbles32(const uint8_t *qs)
{
    __m128i t = _mm_loadu_si128((const __m128i *)qs);
    __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* 32 bits (little-endian bytes) -> 32 bytes, 0xFF where bit j is set. */
static inline __m256i pi_x86_bits32(const uint8_t *b4)
{
    uint32_t bits;
    memcpy(&bits, b4, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                           0x0101010101010101LL, 0x0000000000000000LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL)); /* all but bit (j % 8) */
    return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

/* The fp16 values at p, p + stride, p + 2 * stride, p + 3 * stride as 4 floats. The halves are
 * packed with scalar loads and shifts (the integer ports are idle in these loops) and converted with
 * one vcvtph2ps. */
static inline __m128 pi_x86_halves4(const uint8_t *p, size_t stride)
{
    uint64_t v = 0;
    for (int k = 0; k < 4; k++) {
        uint16_t h;
        memcpy(&h, p + k * stride, 2);
        v |= (uint64_t)h << (16 * k);
    }
    return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)v));
}

/* fp16 scale products of 4 consecutive blocks: s[k] = d_w[k] * d_x[k], where d_w[k] is the fp16 at
 * w + k * ws and d_x[k] the fp16 at x + k * xs. The multi-token kernels convert d_w once and multiply
 * it by each token's d_x: the same products. */
static inline __m128 pi_x86_scales4(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs)
{
    return _mm_mul_ps(pi_x86_halves4(w, ws), pi_x86_halves4(x, xs));
}

/* Prefetch (into L1) every cache line of the bytes [p, p + len): the weights the caller reads next,
 * asked for a few at a time inside the loop instead of in a burst (a burst of a whole row group's
 * lines stalls on the line-fill buffers). Never faults, changes no result. An asm statement, not
 * __builtin_prefetch: GCC 12's dead-code elimination deleted every one of those in the kernels
 * (-fno-tree-dce brought them back), and the measured gain with them. */
static inline void pi_x86_pf_line(const uint8_t *p) { __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p)); }

/* The same into L2 only (prefetcht1): for rows asked for further ahead than L1 holds (the down rows of
 * the next four active neurons, 40 KiB at d = 5120 in f16). */
static inline void pi_x86_pf_line_l2(const uint8_t *p) { __asm__ volatile("prefetcht1 %0" : : "m"(*(const char *)p)); }

static inline void pi_x86_pf_lines(const uint8_t *p, size_t len)
{
    for (size_t o = 0; o < len; o += 64) pi_x86_pf_line(p + o);
    pi_x86_pf_line(p + len - 1);
}

/* Force-inlined so that the multi-token kernels, instantiated with a constant token count, unroll
 * their per-token loops and keep the accumulators in registers. */
#define PI_X86_INLINE static inline __attribute__((always_inline))

/* Defines the pi_vec_mad4_fn `static void name(row, a, m, pf, y, n)` over the force-inlined
 * body(row, a, M, pf, y, n), which adds M rows (1..4) into y: one case per M, so that each copy of the
 * body unrolls its row loop for a constant count (m outside 1..3 takes the four-row copy). */
#define PI_X86_VEC_MAD4_BY_M(name, body)                                                                     \
    static void name(const void *const row[4], const float a[4], int m, const void *const pf[4], float *y,    \
                     int64_t n)                                                                             \
    {                                                                                                       \
        switch (m) {                                                                                        \
        case 1: body(row, a, 1, pf, y, n); break;                                                           \
        case 2: body(row, a, 2, pf, y, n); break;                                                           \
        case 3: body(row, a, 3, pf, y, n); break;                                                           \
        default: body(row, a, 4, pf, y, n); break;                                                          \
        }                                                                                                   \
    }

/* The same for a pi_vec_madg4_fn `static void name(row, s, a, m, pf, y, n)` (grouped rows with their
 * scale rows s, kernels/cpu/quant.h) over body(row, s, a, M, pf, y, n). */
#define PI_X86_VEC_MADG4_BY_M(name, body)                                                                    \
    static void name(const void *const row[4], const uint16_t *const s[4], const float a[4], int m,          \
                     const void *const pf[4], float *y, int64_t n)                                          \
    {                                                                                                       \
        switch (m) {                                                                                        \
        case 1: body(row, s, a, 1, pf, y, n); break;                                                        \
        case 2: body(row, s, a, 2, pf, y, n); break;                                                        \
        case 3: body(row, s, a, 3, pf, y, n); break;                                                        \
        default: body(row, s, a, 4, pf, y, n); break;                                                       \
        }                                                                                                   \
    }

/* Whether m (> 1) grouped rows share one scale row (rows of one group: their kernels convert the scales
 * once a step for all of them). */
static inline bool pi_x86_same_scales(const uint16_t *const *s, int m)
{
    bool same = m > 1;
    for (int r = 1; r < m; r++) same &= s[r] == s[0];
    return same;
}

/* acc += s[k] * p for 8 int32 partial sums p of block k. */
static inline __m256 pi_x86_fma_lane(__m128 s, int k, __m256i p, __m256 acc)
{
    __m256 sk = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(s), _mm256_set1_epi32(k));
    return _mm256_fmadd_ps(sk, _mm256_cvtepi32_ps(p), acc);
}

/* Q4_K / Q5_K: the 12 packed scale bytes -> bytes 0..7 = the 8 sub-block scales, bytes 8..15 = the
 * 8 mins (the same values as pi_k4_scale_min, unpacked four at a time in 32-bit words: scales 0..3 and
 * mins 0..3 are the low 6 bits of bytes 0..3 / 4..7; scales and mins 4..7 take their low nibble from
 * bytes 8..11 and their top 2 bits from the top of bytes 0..3 / 4..7). */
static inline __m128i pi_x86_k4_scales(const uint8_t *q)
{
    uint32_t u0, u1, u2;
    memcpy(&u0, q, 4), memcpy(&u1, q + 4, 4), memcpy(&u2, q + 8, 4);
    uint32_t sc_lo = u0 & 0x3f3f3f3fu, m_lo = u1 & 0x3f3f3f3fu;
    uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    uint32_t m_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    return _mm_set_epi32((int)m_hi, (int)m_lo, (int)sc_hi, (int)sc_lo);
}

/* sum_j mins[j] * (bsums[2j] + bsums[2j+1]) as 4 int32 partial sums (mins: 8 bytes at 8..15 of k4). */
static inline __m128i pi_x86_k4_minsum(__m128i k4, const int16_t *bsums)
{
    __m128i mins = _mm_cvtepu8_epi16(_mm_srli_si128(k4, 8));
    __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bsums), _mm_loadu_si128((const __m128i *)(bsums + 8)));
    return _mm_madd_epi16(mins, pairs);
}

/* Shuffle control that broadcasts 16-bit element k of each 128-bit lane to the whole lane. */
static inline __m256i pi_x86_bcast16_ctl(int k)
{
    return _mm256_set1_epi16((short)((2 * k) | (2 * k + 1) << 8));
}

#endif
