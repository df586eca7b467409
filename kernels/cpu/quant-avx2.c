/*
 * kernels/cpu/quant-avx2.c - AVX2 + FMA + F16C dot products (weights x prepared activations) and a few
 * dequantisers. Compiled with -mavx2 -mfma -mf16c into libpinfer_avx2.a; called only through the
 * table in dispatch.c after CPUID says the CPU has those extensions.
 *
 * Each kernel computes the same sum as the scalar reference in quant.c (exact integer block sums,
 * float scaling), only in another summation order; tests/unit/test-quant-simd.c holds them to that.
 * Shapes: wrow holds n elements of the weight type (n a multiple of its block), xq n activations
 * (float for F32/F16/BF16, Q8_0 blocks for the legacy types, Q8_K for the K-quants). Thread-safe.
 */
#include "config.h"

#include "kernels/cpu/simd-x86.h"

/* ---------------------------------------------------------------- float weights */

static float dot_f32(const void *w, const void *xq, int64_t n)
{
    const float *a = w, *b = xq;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = pi_x86_hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline __m256 load_f16x8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static inline __m256 load_bf16x8(const uint8_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static float dot_f16(const void *w, const void *xq, int64_t n)
{
    const uint8_t *a = w;
    const float *b = xq;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(load_f16x8(a + 2 * i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(load_f16x8(a + 2 * i + 16), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(load_f16x8(a + 2 * i + 32), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(load_f16x8(a + 2 * i + 48), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(load_f16x8(a + 2 * i), _mm256_loadu_ps(b + i), s0);
    float s = pi_x86_hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        s += pi_x86_h2f(h) * b[i];
    }
    return s;
}

static float dot_bf16(const void *w, const void *xq, int64_t n)
{
    const uint8_t *a = w;
    const float *b = xq;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(load_bf16x8(a + 2 * i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(load_bf16x8(a + 2 * i + 16), _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = pi_x86_hsum_ps(_mm256_add_ps(s0, s1));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        s += pi_bf16_to_fp32(h) * b[i];
    }
    return s;
}

static void dequant_f16(const void *src, float *dst, int64_t n)
{
    const uint8_t *a = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16x8(a + 2 * i));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        dst[i] = pi_x86_h2f(h);
    }
}

/* ---------------------------------------------------------------- legacy types x Q8_0 */

/* Block k of token t's activations (row t at xq + t * xs). */
static inline const struct pi_block_q8_0 *act_q8_0(const void *xq, size_t xs, int t, int64_t k)
{
    return (const struct pi_block_q8_0 *)((const uint8_t *)xq + (size_t)t * xs) + k;
}

/* pi_x86_dot_i8(x, y) split: |x| once per weight block (q8_0_abs), y under x's sign per token. */
static inline __m256i q8_0_abs(const struct pi_block_q8_0 *a)
{
    __m256i x = _mm256_loadu_si256((const __m256i *)a->qs);
    return _mm256_sign_epi8(x, x);
}

static inline __m256i q8_0_block(const struct pi_block_q8_0 *a, __m256i ax, const struct pi_block_q8_0 *b)
{
    __m256i x = _mm256_loadu_si256((const __m256i *)a->qs);
    __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)b->qs), x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* Four blocks per iteration so that their eight fp16 scales convert together. nt (1..4) tokens share
 * the weights' |x| and fp16 scales; each keeps its own two accumulators in dot_q8_0's order. pf: NULL,
 * or a row of the same length whose bytes matching each step's reads are prefetched (pi_matvec's and
 * pi_ffn_neurons' next rows); same results. */
PI_X86_INLINE void q8_0_n(const void *w, const void *pf, const void *xq, size_t xs, float *out, int64_t n, int nt)
{
    const struct pi_block_q8_0 *a = w;
    __m256 acc0[4], acc1[4];
    #pragma GCC unroll 4
    for (int t = 0; t < nt; t++) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t nb = n / 32, i = 0;
    for (; i + 4 <= nb; i += 4) {
        if (pf) pi_x86_pf_lines((const uint8_t *)((const struct pi_block_q8_0 *)pf + i), 4 * sizeof(*a));
        __m128 dw = pi_x86_halves4((const uint8_t *)&a[i].d, sizeof(*a));
        __m256i ax[4];
        for (int k = 0; k < 4; k++) ax[k] = q8_0_abs(&a[i + k]);
        #pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct pi_block_q8_0 *b = act_q8_0(xq, xs, t, i);
            __m128 s = _mm_mul_ps(dw, pi_x86_halves4((const uint8_t *)&b->d, sizeof(*b)));
            acc0[t] = pi_x86_fma_lane(s, 0, q8_0_block(&a[i], ax[0], b), acc0[t]);
            acc1[t] = pi_x86_fma_lane(s, 1, q8_0_block(&a[i + 1], ax[1], b + 1), acc1[t]);
            acc0[t] = pi_x86_fma_lane(s, 2, q8_0_block(&a[i + 2], ax[2], b + 2), acc0[t]);
            acc1[t] = pi_x86_fma_lane(s, 3, q8_0_block(&a[i + 3], ax[3], b + 3), acc1[t]);
        }
    }
    #pragma GCC unroll 4
    for (int t = 0; t < nt; t++) {
        for (int64_t j = i; j < nb; j++) {
            const struct pi_block_q8_0 *b = act_q8_0(xq, xs, t, j);
            acc0[t] = _mm256_fmadd_ps(_mm256_set1_ps(pi_x86_h2f(a[j].d) * pi_x86_h2f(b->d)),
                                      _mm256_cvtepi32_ps(q8_0_block(&a[j], q8_0_abs(&a[j]), b)), acc0[t]);
        }
        out[t] = pi_x86_hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
    }
}

static float dot_q8_0(const void *w, const void *xq, int64_t n)
{
    float s;
    q8_0_n(w, NULL, xq, 0, &s, n, 1);
    return s;
}

static void dot4_q8_0(const void *w, const void *xq, size_t xs, float out[4], int64_t n)
{
    q8_0_n(w, NULL, xq, xs, out, n, 4);
}

/* Two Q4_0 blocks (i, i+1) per register: [qs_i | qs_i+1] is loaded once and split into low and high
 * nibbles (once for all tokens), and each token's activations are loaded to match
 * ([y_i[0..15] | y_i+1[0..15]] and the same for elements 16..31), so the nibble unpacking costs half as
 * much as block by block. q4_0_pair returns 8 int32 partial sums of (q - 8) * y: block i in the low
 * 128 bits, block i+1 in the high 128 bits. */
struct q4_0_nib {
    __m256i lo, hi;
};

static inline struct q4_0_nib q4_0_unpack(const struct pi_block_q4_0 *a)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_loadu2_m128i((const __m128i *)a[1].qs, (const __m128i *)a[0].qs);
    return (struct q4_0_nib){_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)};
}

static inline __m256i q4_0_pair(struct q4_0_nib q, const struct pi_block_q8_0 *b)
{
    const __m256i k8 = _mm256_set1_epi8(8);
    __m256i ylo = _mm256_loadu2_m128i((const __m128i *)b[1].qs, (const __m128i *)b[0].qs);
    __m256i yhi = _mm256_loadu2_m128i((const __m128i *)(b[1].qs + 16), (const __m128i *)(b[0].qs + 16));
    /* int16 sums: |q * y| pairs <= 15 * 127 * 2, two of them <= 7620; the offset 8 * y likewise */
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(q.lo, ylo), _mm256_maddubs_epi16(q.hi, yhi));
    __m256i o = _mm256_add_epi16(_mm256_maddubs_epi16(k8, ylo), _mm256_maddubs_epi16(k8, yhi));
    return _mm256_madd_epi16(_mm256_sub_epi16(p, o), _mm256_set1_epi16(1));
}

/* As q8_0_n (pf too), two blocks per register (q4_0_pair). */
PI_X86_INLINE void q4_0_n(const void *w, const void *pf, const void *xq, size_t xs, float *out, int64_t n, int nt)
{
    const struct pi_block_q4_0 *a = w;
    const __m256i lo2 = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0), hi2 = _mm256_set_epi32(3, 3, 3, 3, 2, 2, 2, 2);
    __m256 acc0[4], acc1[4];
    #pragma GCC unroll 4
    for (int t = 0; t < nt; t++) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t nb = n / 32, i = 0;
    for (; i + 4 <= nb; i += 4) {
        if (pf) pi_x86_pf_lines((const uint8_t *)((const struct pi_block_q4_0 *)pf + i), 4 * sizeof(*a));
        __m128 dw = pi_x86_halves4((const uint8_t *)&a[i].d, sizeof(*a));
        struct q4_0_nib q0 = q4_0_unpack(&a[i]), q1 = q4_0_unpack(&a[i + 2]);
        #pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct pi_block_q8_0 *b = act_q8_0(xq, xs, t, i);
            __m128 s = _mm_mul_ps(dw, pi_x86_halves4((const uint8_t *)&b->d, sizeof(*b)));
            __m256 s8 = _mm256_castps128_ps256(s);
            acc0[t] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s8, lo2), _mm256_cvtepi32_ps(q4_0_pair(q0, b)), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s8, hi2), _mm256_cvtepi32_ps(q4_0_pair(q1, b + 2)), acc1[t]);
        }
    }
    #pragma GCC unroll 4
    for (int t = 0; t < nt; t++) {
        for (int64_t j = i; j < nb; j++) {
            const struct pi_block_q8_0 *b = act_q8_0(xq, xs, t, j);
            __m256i y = _mm256_loadu_si256((const __m256i *)b->qs);
            __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(pi_x86_nibbles32(a[j].qs), y),
                                         _mm256_maddubs_epi16(_mm256_set1_epi8(8), y));
            acc0[t] = _mm256_fmadd_ps(_mm256_set1_ps(pi_x86_h2f(a[j].d) * pi_x86_h2f(b->d)),
                                      _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1))), acc0[t]);
        }
        out[t] = pi_x86_hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
    }
}

static float dot_q4_0(const void *w, const void *xq, int64_t n)
{
    float s;
    q4_0_n(w, NULL, xq, 0, &s, n, 1);
    return s;
}

static void dot4_q4_0(const void *w, const void *xq, size_t xs, float out[4], int64_t n)
{
    q4_0_n(w, NULL, xq, xs, out, n, 4);
}

/* Four rows one after the other through the 1-row kernels (no activation sharing: AVX2 has 16
 * registers), each prefetching its share of the next rows: vec_dot's floats, with the overlap of
 * compute and memory that pi_matvec's prefetch buys. */
static void dot4r_q8_0(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)
{
    for (int r = 0; r < 4; r++) q8_0_n(w[r], pf ? pf[r] : NULL, xq, 0, &out[r], n, 1);
}

static void dot4r_q4_0(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)
{
    for (int r = 0; r < 4; r++) q4_0_n(w[r], pf ? pf[r] : NULL, xq, 0, &out[r], n, 1);
}

static float dot_q5_0(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q5_0 *a = w;
    const struct pi_block_q8_0 *b = xq;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 32; i++) {
        /* q - 16 = nibble | 0xF0 where the fifth bit is clear (as int8: nibble - 16) */
        __m256i hi = _mm256_andnot_si256(pi_x86_bits32(a[i].qh), _mm256_set1_epi8((char)0xF0));
        __m256i q = _mm256_or_si256(pi_x86_nibbles32(a[i].qs), hi);
        __m256i p = pi_x86_dot_i8(q, _mm256_loadu_si256((const __m256i *)b[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(pi_x86_h2f(a[i].d) * pi_x86_h2f(b[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    return pi_x86_hsum_ps(acc);
}

/* Q4_1 / Q5_1: d * dx * sum(q * q8) + m * dx * sum(q8), q unsigned. */
static inline void acc_min_block(__m256i q, const struct pi_block_q8_0 *b, float d, float m, __m256 *acc, __m256 *accm)
{
    __m256i y = _mm256_loadu_si256((const __m256i *)b->qs);
    __m256i p = pi_x86_dot_u8(q, y), s = pi_x86_dot_u8(_mm256_set1_epi8(1), y);
    float dx = pi_x86_h2f(b->d);
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(p), *acc);
    *accm = _mm256_fmadd_ps(_mm256_set1_ps(m * dx), _mm256_cvtepi32_ps(s), *accm);
}

static float dot_q4_1(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q4_1 *a = w;
    const struct pi_block_q8_0 *b = xq;
    __m256 acc = _mm256_setzero_ps(), accm = acc;
    for (int64_t i = 0; i < n / 32; i++)
        acc_min_block(pi_x86_nibbles32(a[i].qs), &b[i], pi_x86_h2f(a[i].d), pi_x86_h2f(a[i].m), &acc, &accm);
    return pi_x86_hsum_ps(_mm256_add_ps(acc, accm));
}

static float dot_q5_1(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q5_1 *a = w;
    const struct pi_block_q8_0 *b = xq;
    __m256 acc = _mm256_setzero_ps(), accm = acc;
    for (int64_t i = 0; i < n / 32; i++) {
        __m256i hi = _mm256_and_si256(pi_x86_bits32(a[i].qh), _mm256_set1_epi8(0x10));
        __m256i q = _mm256_or_si256(pi_x86_nibbles32(a[i].qs), hi);
        acc_min_block(q, &b[i], pi_x86_h2f(a[i].d), pi_x86_h2f(a[i].m), &acc, &accm);
    }
    return pi_x86_hsum_ps(_mm256_add_ps(acc, accm));
}

static void dequant_q8_0(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q8_0 *a = src;
    for (int64_t i = 0; i < n / 32; i++) {
        __m256 d = _mm256_set1_ps(pi_x86_h2f(a[i].d));
        for (int k = 0; k < 4; k++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(a[i].qs + 8 * k));
            _mm256_storeu_ps(dst + 32 * i + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
        }
    }
}

static void dequant_q4_0(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q4_0 *a = src;
    for (int64_t i = 0; i < n / 32; i++) {
        __m256 d = _mm256_set1_ps(pi_x86_h2f(a[i].d));
        __m256i q = _mm256_sub_epi8(pi_x86_nibbles32(a[i].qs), _mm256_set1_epi8(8));
        int8_t b[32];
        _mm256_storeu_si256((__m256i *)b, q);
        for (int k = 0; k < 4; k++) {
            __m128i v = _mm_loadl_epi64((const __m128i *)(b + 8 * k));
            _mm256_storeu_ps(dst + 32 * i + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d));
        }
    }
}

/* ---------------------------------------------------------------- K-quants x Q8_K */

PI_X86_INLINE float q4_K_1(const void *w, const void *pf, const void *xq, int64_t n)
{
    const struct pi_block_q4_K *a = w;
    const struct pi_block_q8_K *b = xq;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        if (pf) pi_x86_pf_lines((const uint8_t *)((const struct pi_block_q4_K *)pf + i), sizeof(*a));
        __m128i k4 = pi_x86_k4_scales(a[i].scales);
        __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(k4)); /* 8 x i16 scales, both lanes */
        float dy = b[i].d;
        accm = _mm_fmadd_ps(_mm_set1_ps(dy * pi_x86_h2f(a[i].dmin)), _mm_cvtepi32_ps(pi_x86_k4_minsum(k4, b[i].bsums)), accm);
        __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * j));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * j)));
            __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * j + 32)));
            p0 = _mm256_madd_epi16(p0, _mm256_shuffle_epi8(sc, pi_x86_bcast16_ctl(2 * j)));
            p1 = _mm256_madd_epi16(p1, _mm256_shuffle_epi8(sc, pi_x86_bcast16_ctl(2 * j + 1)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dy * pi_x86_h2f(a[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    accm = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    accm = _mm_add_ss(accm, _mm_movehdup_ps(accm));
    return pi_x86_hsum_ps(acc) - _mm_cvtss_f32(accm);
}

static float dot_q4_K(const void *w, const void *xq, int64_t n) { return q4_K_1(w, NULL, xq, n); }

static void dot4r_q4_K(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)
{
    for (int r = 0; r < 4; r++) out[r] = q4_K_1(w[r], pf ? pf[r] : NULL, xq, n);
}

PI_X86_INLINE float q5_K_1(const void *w, const void *pf, const void *xq, int64_t n)
{
    const struct pi_block_q5_K *a = w;
    const struct pi_block_q8_K *b = xq;
    const __m256i m4 = _mm256_set1_epi8(0x0F), b16 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        if (pf) pi_x86_pf_lines((const uint8_t *)((const struct pi_block_q5_K *)pf + i), sizeof(*a));
        __m128i k4 = pi_x86_k4_scales(a[i].scales);
        __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(k4));
        float dy = b[i].d;
        accm = _mm_fmadd_ps(_mm_set1_ps(dy * pi_x86_h2f(a[i].dmin)), _mm_cvtepi32_ps(pi_x86_k4_minsum(k4, b[i].bsums)), accm);
        __m256i qh = _mm256_loadu_si256((const __m256i *)a[i].qh), sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * j));
            /* fifth bits: bit 2j of qh[l] for the low nibbles, bit 2j+1 for the high ones */
            __m256i h0 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * j), 4), b16);
            __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * j + 1), 4), b16);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), h0);
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h1);
            __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * j)));
            __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * j + 32)));
            p0 = _mm256_madd_epi16(p0, _mm256_shuffle_epi8(sc, pi_x86_bcast16_ctl(2 * j)));
            p1 = _mm256_madd_epi16(p1, _mm256_shuffle_epi8(sc, pi_x86_bcast16_ctl(2 * j + 1)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dy * pi_x86_h2f(a[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    accm = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    accm = _mm_add_ss(accm, _mm_movehdup_ps(accm));
    return pi_x86_hsum_ps(acc) - _mm_cvtss_f32(accm);
}

static float dot_q5_K(const void *w, const void *xq, int64_t n) { return q5_K_1(w, NULL, xq, n); }

static void dot4r_q5_K(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)
{
    for (int r = 0; r < 4; r++) out[r] = q5_K_1(w[r], pf ? pf[r] : NULL, xq, n);
}

/* Per-lane scales: low 128 bits (elements 0..15 of a 32-run) get s0, high 128 bits s1. */
static inline __m256i lane_scales(int s0, int s1)
{
    return _mm256_set_m128i(_mm_set1_epi16((short)s1), _mm_set1_epi16((short)s0));
}

/* Q6_K: the -32 of every quant taken out through bsums (sumi starts at -32 * sum_s sc[s] * bsums[s]),
 * and each register's two sub-block scales broadcast from the block's sixteen int16 scales by one
 * in-lane shuffle. */
PI_X86_INLINE float q6_K_1(const void *w, const void *pf, const void *xq, int64_t n)
{
    const struct pi_block_q6_K *a = w;
    const struct pi_block_q8_K *b = xq;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        if (pf) pi_x86_pf_lines((const uint8_t *)((const struct pi_block_q6_K *)pf + i), sizeof(*a));
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a[i].scales));
        __m256i off = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)b[i].bsums));
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 5));
#pragma GCC unroll 2
        for (int c = 0; c < 2; c++) {
            const uint8_t *ql = a[i].ql + 64 * c;
            const int8_t *y = b[i].qs + 128 * c;
            __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * c));
            /* scales 8c..8c+7, both lanes (two immediates: the loop is unrolled only from -O2 on) */
            __m256i sch = c ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0x00);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                /* sub-blocks 8c + 2k (low 128 bits) and 8c + 2k + 1 (high); q < 64: no saturation */
                __m256i ctl = _mm256_set_m128i(_mm256_castsi256_si128(pi_x86_bcast16_ctl(2 * k + 1)),
                                               _mm256_castsi256_si128(pi_x86_bcast16_ctl(2 * k)));
                __m256i p = _mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)(y + 32 * k)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sch, ctl)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(b[i].d * pi_x86_h2f(a[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return pi_x86_hsum_ps(acc);
}

static float dot_q6_K(const void *w, const void *xq, int64_t n) { return q6_K_1(w, NULL, xq, n); }

static void dot4r_q6_K(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)
{
    for (int r = 0; r < 4; r++) out[r] = q6_K_1(w[r], pf ? pf[r] : NULL, xq, n);
}

/* Q2_K: d * sum_s sc[s] * sum(q * q8) - dmin * sum_s mn[s] * bsums[s], 16 sub-blocks of 16. */
static float dot_q2_K(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q2_K *a = w;
    const struct pi_block_q8_K *b = xq;
    const __m256i m2 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    float accm = 0;
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        const uint8_t *sc = a[i].scales;
        __m256i sumi = _mm256_setzero_si256();
        int summ = 0;
        for (int s = 0; s < 16; s++) summ += (sc[s] >> 4) * b[i].bsums[s];
        for (int c = 0; c < 2; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
            for (int k = 0; k < 4; k++) {
                __m256i qk = _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), m2);
                __m256i p = _mm256_maddubs_epi16(qk, _mm256_loadu_si256((const __m256i *)(b[i].qs + 128 * c + 32 * k)));
                int s = 8 * c + 2 * k;
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, lane_scales(sc[s] & 0xF, sc[s + 1] & 0xF)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(b[i].d * pi_x86_h2f(a[i].d)), _mm256_cvtepi32_ps(sumi), acc);
        accm += b[i].d * pi_x86_h2f(a[i].dmin) * (float)summ;
    }
    return pi_x86_hsum_ps(acc) - accm;
}

/* Q3_K: d * sum_s (sc[s]) * sum((q2 - 4 * !hbit) * q8) = d * sum_s sc[s] * (sum(q2 * q8) - 4 * sum(!h * q8)). */
static float dot_q3_K(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q3_K *a = w;
    const struct pi_block_q8_K *b = xq;
    const __m256i m2 = _mm256_set1_epi8(3), k4 = _mm256_set1_epi8(4);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        int8_t sc[16];
        pi_k3_scales(a[i].scales, sc);
        __m256i hm = _mm256_loadu_si256((const __m256i *)a[i].hmask), sumi = _mm256_setzero_si256();
        for (int c = 0; c < 2; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
            for (int k = 0; k < 4; k++) {
                __m256i qk = _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), m2);
                /* 4 where the hmask bit (4c + k) is clear */
                __m256i bit = _mm256_set1_epi8((char)(1 << (4 * c + k)));
                __m256i clr = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), _mm256_setzero_si256());
                __m256i sub = _mm256_and_si256(clr, k4);
                __m256i y = _mm256_loadu_si256((const __m256i *)(b[i].qs + 128 * c + 32 * k));
                __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(qk, y), _mm256_maddubs_epi16(sub, y));
                int s = 8 * c + 2 * k;
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, lane_scales(sc[s], sc[s + 1])));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(b[i].d * pi_x86_h2f(a[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return pi_x86_hsum_ps(acc);
}

/* ---------------------------------------------------------------- dequantisers
 * Bit-identical with the scalar ones: the same float operations in the same order, no FMA. */

/* dst[0..15] = dl * q - ml (or + ml with add) for 16 int8 quants q. */
static inline void deq16(float *dst, __m128i q, __m256 dl, __m256 ml, int add)
{
    __m256 f0 = _mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
    __m256 f1 = _mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))));
    _mm256_storeu_ps(dst, add ? _mm256_add_ps(f0, ml) : _mm256_sub_ps(f0, ml));
    _mm256_storeu_ps(dst + 8, add ? _mm256_add_ps(f1, ml) : _mm256_sub_ps(f1, ml));
}

/* 32 int8 quants sharing one scale (and min). */
static inline void deq32(float *dst, __m256i q, float dl, float ml, int add)
{
    __m256 d = _mm256_set1_ps(dl), m = _mm256_set1_ps(ml);
    deq16(dst, _mm256_castsi256_si128(q), d, m, add);
    deq16(dst + 16, _mm256_extracti128_si256(q, 1), d, m, add);
}

/* 32 int8 quants, elements 0..15 with scale/min pair 0 and 16..31 with pair 1 (16-element sub-blocks). */
static inline void deq32x2(float *dst, __m256i q, float dl0, float ml0, float dl1, float ml1)
{
    deq16(dst, _mm256_castsi256_si128(q), _mm256_set1_ps(dl0), _mm256_set1_ps(ml0), 0);
    deq16(dst + 16, _mm256_extracti128_si256(q, 1), _mm256_set1_ps(dl1), _mm256_set1_ps(ml1), 0);
}

static void dequant_bf16(const void *src, float *dst, int64_t n)
{
    const uint8_t *a = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_bf16x8(a + 2 * i));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        dst[i] = pi_bf16_to_fp32(h);
    }
}

static void dequant_q4_1(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q4_1 *a = src;
    for (int64_t i = 0; i < n / 32; i++)
        deq32(dst + 32 * i, pi_x86_nibbles32(a[i].qs), pi_x86_h2f(a[i].d), pi_x86_h2f(a[i].m), 1);
}

static void dequant_q5_0(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q5_0 *a = src;
    for (int64_t i = 0; i < n / 32; i++) {
        __m256i hi = _mm256_andnot_si256(pi_x86_bits32(a[i].qh), _mm256_set1_epi8((char)0xF0));
        deq32(dst + 32 * i, _mm256_or_si256(pi_x86_nibbles32(a[i].qs), hi), pi_x86_h2f(a[i].d), 0.0f, 0);
    }
}

static void dequant_q5_1(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q5_1 *a = src;
    for (int64_t i = 0; i < n / 32; i++) {
        __m256i hi = _mm256_and_si256(pi_x86_bits32(a[i].qh), _mm256_set1_epi8(0x10));
        deq32(dst + 32 * i, _mm256_or_si256(pi_x86_nibbles32(a[i].qs), hi), pi_x86_h2f(a[i].d), pi_x86_h2f(a[i].m), 1);
    }
}

static void dequant_q2_K(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q2_K *a = src;
    for (int64_t i = 0; i < n / PI_QK_K; i++, dst += PI_QK_K) {
        float d = pi_x86_h2f(a[i].d), dmin = pi_x86_h2f(a[i].dmin);
        const uint8_t *sc = a[i].scales;
        for (int c = 0; c < 2; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
            for (int k = 0; k < 4; k++) {
                int s = 8 * c + 2 * k;
                __m256i qk = _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), _mm256_set1_epi8(3));
                deq32x2(dst + 128 * c + 32 * k, qk, d * (float)(sc[s] & 0xF), dmin * (float)(sc[s] >> 4),
                        d * (float)(sc[s + 1] & 0xF), dmin * (float)(sc[s + 1] >> 4));
            }
        }
    }
}

static void dequant_q3_K(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q3_K *a = src;
    for (int64_t i = 0; i < n / PI_QK_K; i++, dst += PI_QK_K) {
        float d = pi_x86_h2f(a[i].d);
        int8_t sc[16];
        pi_k3_scales(a[i].scales, sc);
        __m256i hm = _mm256_loadu_si256((const __m256i *)a[i].hmask);
        for (int c = 0; c < 2; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
            for (int k = 0; k < 4; k++) {
                int s = 8 * c + 2 * k;
                __m256i qk = _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), _mm256_set1_epi8(3));
                __m256i bit = _mm256_set1_epi8((char)(1 << (4 * c + k)));
                __m256i clr = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), _mm256_setzero_si256());
                qk = _mm256_sub_epi8(qk, _mm256_and_si256(clr, _mm256_set1_epi8(4)));
                deq32x2(dst + 128 * c + 32 * k, qk, d * (float)sc[s], 0.0f, d * (float)sc[s + 1], 0.0f);
            }
        }
    }
}

static void dequant_q4_K(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q4_K *a = src;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t i = 0; i < n / PI_QK_K; i++, dst += PI_QK_K) {
        float d = pi_x86_h2f(a[i].d), dmin = pi_x86_h2f(a[i].dmin);
        uint8_t k4[16];
        _mm_storeu_si128((__m128i *)k4, pi_x86_k4_scales(a[i].scales)); /* scales 0..7, mins 8..15 */
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
            deq32(dst + 64 * c, _mm256_and_si256(q, m4), d * (float)k4[2 * c], dmin * (float)k4[8 + 2 * c], 0);
            deq32(dst + 64 * c + 32, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), d * (float)k4[2 * c + 1],
                  dmin * (float)k4[9 + 2 * c], 0);
        }
    }
}

static void dequant_q5_K(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q5_K *a = src;
    const __m256i m4 = _mm256_set1_epi8(0x0F), b16 = _mm256_set1_epi8(0x10);
    for (int64_t i = 0; i < n / PI_QK_K; i++, dst += PI_QK_K) {
        float d = pi_x86_h2f(a[i].d), dmin = pi_x86_h2f(a[i].dmin);
        uint8_t k4[16];
        _mm_storeu_si128((__m128i *)k4, pi_x86_k4_scales(a[i].scales));
        __m256i qh = _mm256_loadu_si256((const __m256i *)a[i].qh);
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
            __m256i h0 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * c), 4), b16);
            __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * c + 1), 4), b16);
            deq32(dst + 64 * c, _mm256_or_si256(_mm256_and_si256(q, m4), h0), d * (float)k4[2 * c],
                  dmin * (float)k4[8 + 2 * c], 0);
            deq32(dst + 64 * c + 32, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h1),
                  d * (float)k4[2 * c + 1], dmin * (float)k4[9 + 2 * c], 0);
        }
    }
}

static void dequant_q6_K(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q6_K *a = src;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
    for (int64_t i = 0; i < n / PI_QK_K; i++, dst += PI_QK_K) {
        float d = pi_x86_h2f(a[i].d);
        const int8_t *sc = a[i].scales;
        for (int c = 0; c < 2; c++) {
            const uint8_t *ql = a[i].ql + 64 * c;
            __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * c));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
            for (int k = 0; k < 4; k++) {
                int s = 8 * c + 2 * k;
                deq32x2(dst + 128 * c + 32 * k, _mm256_sub_epi8(q[k], k32), d * (float)sc[s], 0.0f,
                        d * (float)sc[s + 1], 0.0f);
            }
        }
    }
}

/* ---------------------------------------------------------------- y += a * row (pi_vec_mad)
 * Multiply, then add, each rounded as in the scalar loop over the dequantised row; the barrier keeps
 * the compiler from contracting them into an FMA (which would round once and differ). */
static inline __m256 mad8(__m256 y, __m256 a, __m256 x)
{
    __m256 p = _mm256_mul_ps(a, x);
    __asm__("" : "+x"(p));
    return _mm256_add_ps(y, p);
}

static void vec_mad_f16(const void *row, float a, float *y, int64_t n)
{
    const uint8_t *r = row;
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, mad8(_mm256_loadu_ps(y + i), va, load_f16x8(r + 2 * i)));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, r + 2 * i, 2);
        float p = a * pi_x86_h2f(h);
        __asm__("" : "+x"(p));
        y[i] += p;
    }
}

static void vec_mad_q8_0(const void *row, float a, float *y, int64_t n)
{
    const struct pi_block_q8_0 *b = row;
    __m256 va = _mm256_set1_ps(a);
    for (int64_t i = 0; i < n / 32; i++) {
        __m256 d = _mm256_set1_ps(pi_x86_h2f(b[i].d));
        for (int k = 0; k < 4; k++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(b[i].qs + 8 * k));
            __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d); /* dequant_q8_0 */
            float *yk = y + 32 * i + 8 * k;
            _mm256_storeu_ps(yk, mad8(_mm256_loadu_ps(yk), va, x));
        }
    }
}

/* m (1..4, a constant where inlined) rows added into y in one pass: y is loaded and stored once per
 * step, each row's product added in row order (mad8), so the floats of m vec_mad calls. 32 elements
 * (one 64-byte line of f16 per row) per step, prefetching the matching line of each pf row into L2
 * (four rows ahead is more than L1 keeps). */
PI_X86_INLINE void mad_f16_n(const void *const *row, const float *a, int m, const void *const *pf, float *y, int64_t n)
{
    __m256 va[4];
    #pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm256_set1_ps(a[r]);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 y0 = _mm256_loadu_ps(y + i), y1 = _mm256_loadu_ps(y + i + 8);
        __m256 y2 = _mm256_loadu_ps(y + i + 16), y3 = _mm256_loadu_ps(y + i + 24);
        #pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            const uint8_t *w = (const uint8_t *)row[r] + 2 * i;
            if (pf) pi_x86_pf_line_l2((const uint8_t *)pf[r] + 2 * i);
            y0 = mad8(y0, va[r], load_f16x8(w)), y1 = mad8(y1, va[r], load_f16x8(w + 16));
            y2 = mad8(y2, va[r], load_f16x8(w + 32)), y3 = mad8(y3, va[r], load_f16x8(w + 48));
        }
        _mm256_storeu_ps(y + i, y0), _mm256_storeu_ps(y + i + 8, y1);
        _mm256_storeu_ps(y + i + 16, y2), _mm256_storeu_ps(y + i + 24, y3);
    }
    for (; i < n; i++)
        for (int r = 0; r < m; r++) {
            uint16_t h;
            memcpy(&h, (const uint8_t *)row[r] + 2 * i, 2);
            float p = a[r] * pi_x86_h2f(h);
            __asm__("" : "+x"(p));
            y[i] += p;
        }
}

PI_X86_VEC_MAD4_BY_M(vec_mad4_f16, mad_f16_n)

/* Eight Q8_0 weights q[0..8) as dequant_q8_0 makes them, x = q * d. */
static inline __m256 q8_0_x8(const int8_t *q, __m256 d)
{
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q))), d);
}

/* As mad_f16_n for Q8_0 rows, a block per step (x = q * d as dequant_q8_0), a prefetch every other block. y's
 * four registers are named variables: held in an array indexed by loops that -O2 leaves rolled, they lived on
 * the stack, a store and a reload per row and register (8.6 against 15.6 G elements/s for four rows, 2.8
 * against 13.5 for one, rows in cache). Halves of blocks (mad_q4_0_n did) reach 13.4 for four rows: d and y twice. */
PI_X86_INLINE void mad_q8_0_n(const void *const *row, const float *a, int m, const void *const *pf, float *y, int64_t n)
{
    __m256 va[4];
    #pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm256_set1_ps(a[r]);
    for (int64_t i = 0; i < n / 32; i++) {
        if (pf && (i & 1) == 0)
            for (int r = 0; r < m; r++) pi_x86_pf_line_l2((const uint8_t *)((const struct pi_block_q8_0 *)pf[r] + i));
        float *yb = y + 32 * i;
        __m256 y0 = _mm256_loadu_ps(yb), y1 = _mm256_loadu_ps(yb + 8);
        __m256 y2 = _mm256_loadu_ps(yb + 16), y3 = _mm256_loadu_ps(yb + 24);
        #pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            const struct pi_block_q8_0 *b = (const struct pi_block_q8_0 *)row[r] + i;
            __m256 d = _mm256_set1_ps(pi_x86_h2f(b->d));
            y0 = mad8(y0, va[r], q8_0_x8(b->qs, d)), y1 = mad8(y1, va[r], q8_0_x8(b->qs + 8, d));
            y2 = mad8(y2, va[r], q8_0_x8(b->qs + 16, d)), y3 = mad8(y3, va[r], q8_0_x8(b->qs + 24, d));
        }
        _mm256_storeu_ps(yb, y0), _mm256_storeu_ps(yb + 8, y1);
        _mm256_storeu_ps(yb + 16, y2), _mm256_storeu_ps(yb + 24, y3);
    }
}

PI_X86_VEC_MAD4_BY_M(vec_mad4_q8_0, mad_q8_0_n)

/* Eight int8 quants (the low 8 bytes of q) times eight f16 scales at s, exact: x = q * s. */
static inline __m256 qs_x8(__m128i q, const uint16_t *s)
{
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s)));
}

/* Eight int8 quants (the low 8 bytes of q) as floats. */
static inline __m256 q_x8(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)); }

/* m grouped Q4_0 rows (kernels/cpu/quant.h), 32 elements per step: the 16 bytes of quants, x = (q - 8)
 * * s with the step's 32 scales (exact), the multiply and the add; the pf rows' quants a line (four
 * steps) at a time. SAME: every row has the same scales (rows of one group), converted once a step. */
PI_X86_INLINE void madg_q4_0_body(const void *const *row, const uint16_t *const *s, const float *a, int m,
                                  const void *const *pf, float *y, int64_t n, bool same)
{
    const __m128i m4 = _mm_set1_epi8(0x0F), k8 = _mm_set1_epi8(8);
    __m256 va[4];
    #pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm256_set1_ps(a[r]);
    for (int64_t i = 0; i < n / 32; i++) {
        if (pf && (i & 3) == 0)
            for (int r = 0; r < m; r++) pi_x86_pf_line_l2((const uint8_t *)pf[r] + 16 * i);
        float *yb = y + 32 * i;
        __m256 y0 = _mm256_loadu_ps(yb), y1 = _mm256_loadu_ps(yb + 8);
        __m256 y2 = _mm256_loadu_ps(yb + 16), y3 = _mm256_loadu_ps(yb + 24);
        __m256 c[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        if (same)
            for (int k = 0; k < 4; k++) c[k] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s[0] + 32 * i + 8 * k)));
        #pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            __m256 sc[4] = {c[0], c[1], c[2], c[3]};
            if (!same)
                for (int k = 0; k < 4; k++)
                    sc[k] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s[r] + 32 * i + 8 * k)));
            __m128i v = _mm_loadu_si128((const __m128i *)((const uint8_t *)row[r] + 16 * i));
            __m128i lo = _mm_sub_epi8(_mm_and_si128(v, m4), k8);
            __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m4), k8);
            y0 = mad8(y0, va[r], _mm256_mul_ps(q_x8(lo), sc[0]));
            y1 = mad8(y1, va[r], _mm256_mul_ps(q_x8(_mm_srli_si128(lo, 8)), sc[1]));
            y2 = mad8(y2, va[r], _mm256_mul_ps(q_x8(hi), sc[2]));
            y3 = mad8(y3, va[r], _mm256_mul_ps(q_x8(_mm_srli_si128(hi, 8)), sc[3]));
        }
        _mm256_storeu_ps(yb, y0), _mm256_storeu_ps(yb + 8, y1);
        _mm256_storeu_ps(yb + 16, y2), _mm256_storeu_ps(yb + 24, y3);
    }
}

PI_X86_INLINE void madg_q4_0_n(const void *const *row, const uint16_t *const *s, const float *a, int m,
                               const void *const *pf, float *y, int64_t n)
{
    if (pi_x86_same_scales(s, m)) madg_q4_0_body(row, s, a, m, pf, y, n, true);
    else madg_q4_0_body(row, s, a, m, pf, y, n, false);
}

PI_X86_VEC_MADG4_BY_M(vec_madg4_q4_0, madg_q4_0_n)

/* m grouped Q8_0 rows, 32 elements per step: x = q * s (exact), the multiply and the add; the pf rows'
 * quants a line (two steps) at a time. */
PI_X86_INLINE void madg_q8_0_n(const void *const *row, const uint16_t *const *s, const float *a, int m,
                               const void *const *pf, float *y, int64_t n)
{
    __m256 va[4];
    #pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm256_set1_ps(a[r]);
    for (int64_t i = 0; i < n / 32; i++) {
        if (pf && (i & 1) == 0)
            for (int r = 0; r < m; r++) pi_x86_pf_line_l2((const uint8_t *)pf[r] + 32 * i);
        float *yb = y + 32 * i;
        __m256 y0 = _mm256_loadu_ps(yb), y1 = _mm256_loadu_ps(yb + 8);
        __m256 y2 = _mm256_loadu_ps(yb + 16), y3 = _mm256_loadu_ps(yb + 24);
        #pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            const uint16_t *sc = s[r] + 32 * i;
            const int8_t *q = (const int8_t *)row[r] + 32 * i;
            y0 = mad8(y0, va[r], qs_x8(_mm_loadl_epi64((const __m128i *)q), sc));
            y1 = mad8(y1, va[r], qs_x8(_mm_loadl_epi64((const __m128i *)(q + 8)), sc + 8));
            y2 = mad8(y2, va[r], qs_x8(_mm_loadl_epi64((const __m128i *)(q + 16)), sc + 16));
            y3 = mad8(y3, va[r], qs_x8(_mm_loadl_epi64((const __m128i *)(q + 24)), sc + 24));
        }
        _mm256_storeu_ps(yb, y0), _mm256_storeu_ps(yb + 8, y1);
        _mm256_storeu_ps(yb + 16, y2), _mm256_storeu_ps(yb + 24, y3);
    }
}

PI_X86_VEC_MADG4_BY_M(vec_madg4_q8_0, madg_q8_0_n)

/* A Q4_0 block's 32 weights q - 8 as bytes, in element order: the low nibbles of qs are elements 0..15 (lo),
 * the high ones 16..31 (hi). */
struct q4_0_bytes {
    __m128i lo, hi;
};

static inline struct q4_0_bytes q4_0_unpack_bytes(const struct pi_block_q4_0 *b)
{
    const __m128i m4 = _mm_set1_epi8(0x0F), k8 = _mm_set1_epi8(8);
    __m128i v = _mm_loadu_si128((const __m128i *)b->qs);
    return (struct q4_0_bytes){_mm_sub_epi8(_mm_and_si128(v, m4), k8),
                               _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m4), k8)};
}

/* Eight Q4_0 weights as dequant_q4_0 makes them, x = (q - 8) * d (exact in float), from the low 8 bytes of q. */
static inline __m256 q4_0_x8(__m128i q, __m256 d)
{
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
}

/* As mad_q8_0_n for Q4_0 rows, a block per step (x = (q - 8) * d as dequant_q4_0), a prefetch every third
 * block, so that each 64-byte line of the pf rows gets one. y's four registers and the unpacked weights are
 * named variables: in arrays indexed by loops that -O2 leaves rolled they live on the stack, a store and a
 * reload per row and register (2.7 and 8.8 G elements/s for one and four rows, rows in cache). That, not
 * register pressure, is what made a whole block per step look slow; halves of blocks, used until then, reach
 * 8.4/9.5/10.0/10.1 for 1/2/3/4 rows against 10.3/11.6/11.5/11.8 (d and the nibbles unpacked twice). */
PI_X86_INLINE void mad_q4_0_n(const void *const *row, const float *a, int m, const void *const *pf, float *y, int64_t n)
{
    __m256 va[4];
    #pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm256_set1_ps(a[r]);
    for (int64_t i = 0; i < n / 32; i++) {
        if (pf && i % 3 == 0)
            for (int r = 0; r < m; r++) pi_x86_pf_line_l2((const uint8_t *)((const struct pi_block_q4_0 *)pf[r] + i));
        float *yb = y + 32 * i;
        __m256 y0 = _mm256_loadu_ps(yb), y1 = _mm256_loadu_ps(yb + 8);
        __m256 y2 = _mm256_loadu_ps(yb + 16), y3 = _mm256_loadu_ps(yb + 24);
        #pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            const struct pi_block_q4_0 *b = (const struct pi_block_q4_0 *)row[r] + i;
            __m256 d = _mm256_set1_ps(pi_x86_h2f(b->d));
            struct q4_0_bytes q = q4_0_unpack_bytes(b);
            y0 = mad8(y0, va[r], q4_0_x8(q.lo, d)), y1 = mad8(y1, va[r], q4_0_x8(_mm_unpackhi_epi64(q.lo, q.lo), d));
            y2 = mad8(y2, va[r], q4_0_x8(q.hi, d)), y3 = mad8(y3, va[r], q4_0_x8(_mm_unpackhi_epi64(q.hi, q.hi), d));
        }
        _mm256_storeu_ps(yb, y0), _mm256_storeu_ps(yb + 8, y1);
        _mm256_storeu_ps(yb + 16, y2), _mm256_storeu_ps(yb + 24, y3);
    }
}

/* One row: mad_q4_0_n's one-row copy, the floats of vec_mad4 with m = 1 (10.7 G elements/s; 8.9 for a loop
 * over an array of the block's four registers, which lived on the stack). */
static void vec_mad_q4_0(const void *row, float a, float *y, int64_t n)
{
    mad_q4_0_n(&row, &a, 1, NULL, y, n);
}

PI_X86_VEC_MAD4_BY_M(vec_mad4_q4_0, mad_q4_0_n)

/* ---------------------------------------------------------------- activations to Q8_0
 * quant.c's quant_q8_0 eight lanes at a time, byte for byte: the block's largest |x| (a NaN is
 * skipped, as the scalar comparison skips it: max_ps returns its second operand when either is
 * NaN), d = amax / 127 and 1 / d as scalars, then q8_round(x * id): NaN -> 0, outside [-127, 127]
 * -> +-127, otherwise roundf, i.e. half away from zero, done exactly as trunc(v) plus the sign
 * where |v - trunc(v)| >= 0.5 (v - trunc(v) is exact). */
static inline __m256i q8_round8(__m256 v)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    __m256 c = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    __m256 t = _mm256_round_ps(c, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 half = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(c, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 one = _mm256_or_ps(_mm256_and_ps(c, sign), _mm256_set1_ps(1.0f));
    __m256 r = _mm256_add_ps(t, _mm256_and_ps(half, one));
    return _mm256_cvttps_epi32(_mm256_andnot_ps(nan, r));
}

static void quantize_q8_0(const float *x, void *dst, int64_t n)
{
    struct pi_block_q8_0 *b = dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        __m256 v[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), m);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float d = _mm_cvtss_f32(h) / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = pi_fp32_to_fp16(d);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q0 = q8_round8(_mm256_mul_ps(v[0], vid)), q1 = q8_round8(_mm256_mul_ps(v[1], vid));
        __m256i q2 = q8_round8(_mm256_mul_ps(v[2], vid)), q3 = q8_round8(_mm256_mul_ps(v[3], vid));
        /* int32 -> int8 (values already in [-127, 127]); packs work per 128-bit lane, so undo the
         * interleave with a dword permutation */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)b[i].qs, p);
    }
}

const struct pi_kernel_table pi_kernels_avx2_raw = {
    .name = "avx2",
    .vec_dot = {
        [PI_TYPE_F32] = dot_f32, [PI_TYPE_F16] = dot_f16, [PI_TYPE_BF16] = dot_bf16,
        [PI_TYPE_Q4_0] = dot_q4_0, [PI_TYPE_Q4_1] = dot_q4_1, [PI_TYPE_Q5_0] = dot_q5_0,
        [PI_TYPE_Q5_1] = dot_q5_1, [PI_TYPE_Q8_0] = dot_q8_0,
        [PI_TYPE_Q2_K] = dot_q2_K, [PI_TYPE_Q3_K] = dot_q3_K, [PI_TYPE_Q4_K] = dot_q4_K,
        [PI_TYPE_Q5_K] = dot_q5_K, [PI_TYPE_Q6_K] = dot_q6_K,
    },
    .vec_dot4 = {
        [PI_TYPE_Q4_0] = dot4_q4_0, [PI_TYPE_Q8_0] = dot4_q8_0,
    },
    .vec_dot4r = {
        [PI_TYPE_Q4_0] = dot4r_q4_0, [PI_TYPE_Q8_0] = dot4r_q8_0, [PI_TYPE_Q4_K] = dot4r_q4_K,
        [PI_TYPE_Q5_K] = dot4r_q5_K, [PI_TYPE_Q6_K] = dot4r_q6_K,
    },
    .vec_mad = {
        [PI_TYPE_F16] = vec_mad_f16, [PI_TYPE_Q4_0] = vec_mad_q4_0, [PI_TYPE_Q8_0] = vec_mad_q8_0,
    },
    .vec_mad4 = {
        [PI_TYPE_F16] = vec_mad4_f16, [PI_TYPE_Q4_0] = vec_mad4_q4_0, [PI_TYPE_Q8_0] = vec_mad4_q8_0,
    },
    .vec_madg4 = {[PI_TYPE_Q4_0] = vec_madg4_q4_0, [PI_TYPE_Q8_0] = vec_madg4_q8_0},
    .quantize = {
        [PI_TYPE_Q8_0] = quantize_q8_0,
    },
    .dequant = {
        [PI_TYPE_F16] = dequant_f16, [PI_TYPE_BF16] = dequant_bf16, [PI_TYPE_Q8_0] = dequant_q8_0,
        [PI_TYPE_Q4_0] = dequant_q4_0, [PI_TYPE_Q4_1] = dequant_q4_1, [PI_TYPE_Q5_0] = dequant_q5_0,
        [PI_TYPE_Q5_1] = dequant_q5_1, [PI_TYPE_Q2_K] = dequant_q2_K, [PI_TYPE_Q3_K] = dequant_q3_K,
        [PI_TYPE_Q4_K] = dequant_q4_K, [PI_TYPE_Q5_K] = dequant_q5_K, [PI_TYPE_Q6_K] = dequant_q6_K,
    },
};
