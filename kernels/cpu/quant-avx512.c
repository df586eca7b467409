/*
 * kernels/cpu/quant-avx512.c - AVX-512 (F, BW, VL, DQ) dot products. Compiled with -mavx512f
 * -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c into libpinfer_avx512.a and called only through
 * dispatch.c after CPUID/XGETBV checks; types not here fall back to the AVX2 table.
 *
 * The legacy types take two 32-element blocks per 512-bit register (block i in the low half, i+1 in
 * the high half, each half scaled by its own d); the K-quants take 64 elements (two sub-blocks of 32
 * or four of 16) per register. Same sums as the scalar reference, other summation order. Shapes and
 * threading as quant-avx2.c. AVX-512 has no vpsignb, so signed x signed int8 products use abs(x)
 * and y negated under x's sign mask.
 */
#include "config.h"

#include "kernels/cpu/simd-x86.h"

static inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

static inline __m512i join256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

static inline __m512i load2x32(const int8_t *a, const int8_t *b)
{
    return join256(_mm256_loadu_si256((const __m256i *)a), _mm256_loadu_si256((const __m256i *)b));
}

/* 16 x int32 sums of 4 adjacent signed x signed products (y in [-127, 127]). */
static inline __m512i dot_i8_512(__m512i x, __m512i y)
{
    __mmask64 neg = _mm512_movepi8_mask(x);
    __m512i ys = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
    return _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(x), ys), _mm512_set1_epi16(1));
}

static inline __m512i dot_u8_512(__m512i x, __m512i y)
{
    return _mm512_madd_epi16(_mm512_maddubs_epi16(x, y), _mm512_set1_epi16(1));
}

/* Scale vector: s0 in the low 8 floats, s1 in the high 8. */
static inline __m512 two_scales(float s0, float s1)
{
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(s0)), _mm256_set1_ps(s1), 1);
}

/* ---------------------------------------------------------------- float weights */

static float dot_f32(const void *w, const void *xq, int64_t n)
{
    const float *a = w, *b = xq;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    float s = hsum512(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline __m512 load_f16x16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

static float dot_f16(const void *w, const void *xq, int64_t n)
{
    const uint8_t *a = w;
    const float *b = xq;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(load_f16x16(a + 2 * i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(load_f16x16(a + 2 * i + 32), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(load_f16x16(a + 2 * i + 64), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(load_f16x16(a + 2 * i + 96), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(load_f16x16(a + 2 * i), _mm512_loadu_ps(b + i), s0);
    float s = hsum512(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        s += pi_x86_h2f(h) * b[i];
    }
    return s;
}

static void dequant_f16(const void *src, float *dst, int64_t n)
{
    const uint8_t *a = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_f16x16(a + 2 * i));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        dst[i] = pi_x86_h2f(h);
    }
}

/* ---------------------------------------------------------------- legacy types x Q8_0 */

/* Scales of blocks (2h, 2h+1) of a group of four: s[2h] in the low 8 floats, s[2h+1] in the high 8. */
static inline __m512 pair_scales(__m128 s, int h)
{
    const __m512i idx = h ? _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2)
                          : _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s));
}

static inline __m512i q8_0_pair(const struct pi_block_q8_0 *a, const struct pi_block_q8_0 *b)
{
    return dot_i8_512(load2x32(a[0].qs, a[1].qs), load2x32(b[0].qs, b[1].qs));
}

/* Four blocks per iteration: two per register, their eight fp16 scales converted together. */
static float dot_q8_0(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q8_0 *a = w, *b = xq;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    int64_t nb = n / 32, i = 0;
    for (; i + 4 <= nb; i += 4) {
        __m128 s = pi_x86_scales4((const uint8_t *)&a[i].d, sizeof(*a), (const uint8_t *)&b[i].d, sizeof(*b));
        acc0 = _mm512_fmadd_ps(pair_scales(s, 0), _mm512_cvtepi32_ps(q8_0_pair(&a[i], &b[i])), acc0);
        acc1 = _mm512_fmadd_ps(pair_scales(s, 1), _mm512_cvtepi32_ps(q8_0_pair(&a[i + 2], &b[i + 2])), acc1);
    }
    float sum = hsum512(_mm512_add_ps(acc0, acc1));
    for (; i < nb; i++) {
        __m256i p = pi_x86_dot_i8(_mm256_loadu_si256((const __m256i *)a[i].qs), _mm256_loadu_si256((const __m256i *)b[i].qs));
        sum += pi_x86_h2f(a[i].d) * pi_x86_h2f(b[i].d) * (float)pi_x86_hsum_epi32(p);
    }
    return sum;
}

/* 16 bytes from each of four places, one per 128-bit lane (lane k from p[k]). */
static inline __m512i load4x16(const void *p0, const void *p1, const void *p2, const void *p3)
{
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p0));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p1), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p2), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p3), 3);
}

/* Four Q4_0 blocks per register, one per 128-bit lane: the packed nibbles of block k are split into
 * low (elements 0..15) and high (16..31) halves in place, and the activations are loaded to match.
 * Returns 16 int32 partial sums of (q - 8) * y, lane k holding block k's four. */
static inline __m512i q4_0_quad(const struct pi_block_q4_0 *a, const struct pi_block_q8_0 *b)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), k8 = _mm512_set1_epi8(8);
    __m512i v = load4x16(a[0].qs, a[1].qs, a[2].qs, a[3].qs);
    __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    __m512i ylo = load4x16(b[0].qs, b[1].qs, b[2].qs, b[3].qs);
    __m512i yhi = load4x16(b[0].qs + 16, b[1].qs + 16, b[2].qs + 16, b[3].qs + 16);
    __m512i p = _mm512_add_epi16(_mm512_maddubs_epi16(lo, ylo), _mm512_maddubs_epi16(hi, yhi));
    __m512i o = _mm512_add_epi16(_mm512_maddubs_epi16(k8, ylo), _mm512_maddubs_epi16(k8, yhi));
    return _mm512_madd_epi16(_mm512_sub_epi16(p, o), _mm512_set1_epi16(1));
}

static float dot_q4_0(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q4_0 *a = w;
    const struct pi_block_q8_0 *b = xq;
    const __m512i lanes = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 acc = _mm512_setzero_ps();
    int64_t nb = n / 32, i = 0;
    for (; i + 4 <= nb; i += 4) {
        __m128 s = pi_x86_scales4((const uint8_t *)&a[i].d, sizeof(*a), (const uint8_t *)&b[i].d, sizeof(*b));
        __m512 s16 = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(s));
        acc = _mm512_fmadd_ps(s16, _mm512_cvtepi32_ps(q4_0_quad(&a[i], &b[i])), acc);
    }
    float sum = hsum512(acc);
    for (; i < nb; i++) {
        __m256i q = _mm256_sub_epi8(pi_x86_nibbles32(a[i].qs), _mm256_set1_epi8(8));
        __m256i p = pi_x86_dot_i8(q, _mm256_loadu_si256((const __m256i *)b[i].qs));
        sum += pi_x86_h2f(a[i].d) * pi_x86_h2f(b[i].d) * (float)pi_x86_hsum_epi32(p);
    }
    return sum;
}

/* Fifth bits of two Q5 blocks as a 64-bit byte mask (block i in bits 0..31, i+1 in 32..63). */
static inline __mmask64 q5_mask2(const uint8_t *qh0, const uint8_t *qh1)
{
    uint32_t h0, h1;
    memcpy(&h0, qh0, 4), memcpy(&h1, qh1, 4);
    return (__mmask64)h0 | (__mmask64)h1 << 32;
}

static float dot_q5_0(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q5_0 *a = w;
    const struct pi_block_q8_0 *b = xq;
    __m512 acc = _mm512_setzero_ps();
    int64_t nb = n / 32, i = 0;
    for (; i + 2 <= nb; i += 2) {
        __m512i q = join256(pi_x86_nibbles32(a[i].qs), pi_x86_nibbles32(a[i + 1].qs));
        /* q - 16 = nibble | 0xF0 where the fifth bit is clear */
        q = _mm512_mask_blend_epi8(q5_mask2(a[i].qh, a[i + 1].qh), _mm512_or_si512(q, _mm512_set1_epi8((char)0xF0)), q);
        __m512i p = dot_i8_512(q, load2x32(b[i].qs, b[i + 1].qs));
        __m512 d = two_scales(pi_x86_h2f(a[i].d) * pi_x86_h2f(b[i].d), pi_x86_h2f(a[i + 1].d) * pi_x86_h2f(b[i + 1].d));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
    }
    float s = hsum512(acc);
    if (i < nb) {
        __m256i hi = _mm256_andnot_si256(pi_x86_bits32(a[i].qh), _mm256_set1_epi8((char)0xF0));
        __m256i q = _mm256_or_si256(pi_x86_nibbles32(a[i].qs), hi);
        __m256i p = pi_x86_dot_i8(q, _mm256_loadu_si256((const __m256i *)b[i].qs));
        s += pi_x86_h2f(a[i].d) * pi_x86_h2f(b[i].d) * (float)pi_x86_hsum_epi32(p);
    }
    return s;
}

/* Q4_1 / Q5_1 over two blocks: d * dx * sum(q * q8) + m * dx * sum(q8), q unsigned. */
static inline void acc_min2(__m512i q, const struct pi_block_q8_0 *b, float d0, float m0, float d1, float m1,
                            __m512 *acc)
{
    __m512i y = load2x32(b[0].qs, b[1].qs);
    __m512i p = dot_u8_512(q, y), s = dot_u8_512(_mm512_set1_epi8(1), y);
    float x0 = pi_x86_h2f(b[0].d), x1 = pi_x86_h2f(b[1].d);
    *acc = _mm512_fmadd_ps(two_scales(d0 * x0, d1 * x1), _mm512_cvtepi32_ps(p), *acc);
    *acc = _mm512_fmadd_ps(two_scales(m0 * x0, m1 * x1), _mm512_cvtepi32_ps(s), *acc);
}

static float dot_q4_1(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q4_1 *a = w;
    const struct pi_block_q8_0 *b = xq;
    __m512 acc = _mm512_setzero_ps();
    int64_t nb = n / 32, i = 0;
    for (; i + 2 <= nb; i += 2)
        acc_min2(join256(pi_x86_nibbles32(a[i].qs), pi_x86_nibbles32(a[i + 1].qs)), &b[i], pi_x86_h2f(a[i].d),
                 pi_x86_h2f(a[i].m), pi_x86_h2f(a[i + 1].d), pi_x86_h2f(a[i + 1].m), &acc);
    float s = hsum512(acc);
    if (i < nb) {
        __m256i y = _mm256_loadu_si256((const __m256i *)b[i].qs);
        int p = pi_x86_hsum_epi32(pi_x86_dot_u8(pi_x86_nibbles32(a[i].qs), y));
        int sy = pi_x86_hsum_epi32(pi_x86_dot_u8(_mm256_set1_epi8(1), y));
        float dx = pi_x86_h2f(b[i].d);
        s += pi_x86_h2f(a[i].d) * dx * (float)p + pi_x86_h2f(a[i].m) * dx * (float)sy;
    }
    return s;
}

static float dot_q5_1(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q5_1 *a = w;
    const struct pi_block_q8_0 *b = xq;
    __m512 acc = _mm512_setzero_ps();
    int64_t nb = n / 32, i = 0;
    for (; i + 2 <= nb; i += 2) {
        __m512i q = join256(pi_x86_nibbles32(a[i].qs), pi_x86_nibbles32(a[i + 1].qs));
        q = _mm512_mask_blend_epi8(q5_mask2(a[i].qh, a[i + 1].qh), q, _mm512_or_si512(q, _mm512_set1_epi8(0x10)));
        acc_min2(q, &b[i], pi_x86_h2f(a[i].d), pi_x86_h2f(a[i].m), pi_x86_h2f(a[i + 1].d), pi_x86_h2f(a[i + 1].m), &acc);
    }
    float s = hsum512(acc);
    if (i < nb) {
        __m256i hi = _mm256_and_si256(pi_x86_bits32(a[i].qh), _mm256_set1_epi8(0x10));
        __m256i q = _mm256_or_si256(pi_x86_nibbles32(a[i].qs), hi);
        __m256i y = _mm256_loadu_si256((const __m256i *)b[i].qs);
        int p = pi_x86_hsum_epi32(pi_x86_dot_u8(q, y));
        int sy = pi_x86_hsum_epi32(pi_x86_dot_u8(_mm256_set1_epi8(1), y));
        float dx = pi_x86_h2f(b[i].d);
        s += pi_x86_h2f(a[i].d) * dx * (float)p + pi_x86_h2f(a[i].m) * dx * (float)sy;
    }
    return s;
}

/* ---------------------------------------------------------------- K-quants x Q8_K */

static float dot_q4_K(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q4_K *a = w;
    const struct pi_block_q8_K *b = xq;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m512 acc = _mm512_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        __m128i k4 = pi_x86_k4_scales(a[i].scales);
        __m512i sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(k4)); /* 8 x i16 scales in every lane */
        float dy = b[i].d;
        accm = _mm_fmadd_ps(_mm_set1_ps(dy * pi_x86_h2f(a[i].dmin)), _mm_cvtepi32_ps(pi_x86_k4_minsum(k4, b[i].bsums)), accm);
        __m512i sumi = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * j));
            __m512i qq = join256(_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
            __m512i p = _mm512_maddubs_epi16(qq, _mm512_loadu_si512((const void *)(b[i].qs + 64 * j)));
            /* scale 2j for the low 256 bits, 2j+1 for the high */
            __m512i ctl = join256(pi_x86_bcast16_ctl(2 * j), pi_x86_bcast16_ctl(2 * j + 1));
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, _mm512_shuffle_epi8(sc, ctl)));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(dy * pi_x86_h2f(a[i].d)), _mm512_cvtepi32_ps(sumi), acc);
    }
    accm = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    accm = _mm_add_ss(accm, _mm_movehdup_ps(accm));
    return hsum512(acc) - _mm_cvtss_f32(accm);
}

/* 32 x int16 scales, one per 128-bit lane: s[0], s[1], s[2], s[3]. */
static inline __m512i lane4_scales(const int8_t *s)
{
    __m256i lo = _mm256_set_m128i(_mm_set1_epi16(s[1]), _mm_set1_epi16(s[0]));
    __m256i hi = _mm256_set_m128i(_mm_set1_epi16(s[3]), _mm_set1_epi16(s[2]));
    return join256(lo, hi);
}

static float dot_q6_K(const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q6_K *a = w;
    const struct pi_block_q8_K *b = xq;
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(3), k32 = _mm512_set1_epi8(32);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        __m512i sumi = _mm512_setzero_si512();
        for (int c = 0; c < 2; c++) {
            /* elements 128c + 0..63 take the low nibbles of ql[0..63] and qh bits 0-1 / 2-3;
             * 128c + 64..127 the high nibbles and qh bits 4-5 / 6-7 */
            __m512i l = _mm512_loadu_si512((const void *)(a[i].ql + 64 * c));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * c));
            __m512i hA = join256(qh, _mm256_srli_epi16(qh, 2)), hB = join256(_mm256_srli_epi16(qh, 4), _mm256_srli_epi16(qh, 6));
            __m512i qA = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(hA, m2), 4));
            __m512i qB = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), _mm512_slli_epi16(_mm512_and_si512(hB, m2), 4));
            const int8_t *y = b[i].qs + 128 * c;
            __m512i yA = _mm512_loadu_si512((const void *)y), yB = _mm512_loadu_si512((const void *)(y + 64));
            __m512i pA = _mm512_sub_epi16(_mm512_maddubs_epi16(qA, yA), _mm512_maddubs_epi16(k32, yA));
            __m512i pB = _mm512_sub_epi16(_mm512_maddubs_epi16(qB, yB), _mm512_maddubs_epi16(k32, yB));
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(pA, lane4_scales(a[i].scales + 8 * c)));
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(pB, lane4_scales(a[i].scales + 8 * c + 4)));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(b[i].d * pi_x86_h2f(a[i].d)), _mm512_cvtepi32_ps(sumi), acc);
    }
    return hsum512(acc);
}

const struct pi_kernel_table pi_kernels_avx512_raw = {
    .name = "avx512",
    .vec_dot = {
        [PI_TYPE_F32] = dot_f32, [PI_TYPE_F16] = dot_f16,
        [PI_TYPE_Q4_0] = dot_q4_0, [PI_TYPE_Q4_1] = dot_q4_1, [PI_TYPE_Q5_0] = dot_q5_0,
        [PI_TYPE_Q5_1] = dot_q5_1, [PI_TYPE_Q8_0] = dot_q8_0,
        [PI_TYPE_Q4_K] = dot_q4_K, [PI_TYPE_Q6_K] = dot_q6_K,
    },
    .dequant = {
        [PI_TYPE_F16] = dequant_f16,
    },
};
