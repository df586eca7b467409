/*
 * kernels/cpu/quant-avx512.c - AVX-512 (F, BW, VL, DQ) dot products. Compiled with -mavx512f
 * -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c into libpinfer_avx512.a and called only through
 * dispatch.c after CPUID/XGETBV checks; types not here fall back to the AVX2 table.
 *
 * Q8_0 takes two 32-element blocks per 512-bit register (block i in the low half, i+1 in the high
 * half, each half scaled by its own d); Q4_0, Q4_1, Q5_0 and Q5_1 four, one per 128-bit lane (the
 * low and high nibbles in two registers); the K-quants take 64 elements (two sub-blocks of 32 or
 * four of 16) per register. Same sums as the scalar reference, other summation order. Shapes and
 * threading as quant-avx2.c. AVX-512 has no vpsignb, so signed x signed int8 products use abs(x)
 * and y negated under x's sign mask.
 *
 * With PI_AVX512_VNNI defined (kernels/cpu/quant-avx512-vnni.c includes this file so, compiled with
 * -mavx512vnni as well) the byte products of the Q4_0, Q4_1, Q5_x and Q8_0 kernels are
 * vpdpbusd, which multiplies unsigned by signed bytes and adds each four into an int32 lane in one
 * instruction, instead of vpmaddubsw + vpmaddwd (+ the int16 adds around them): the same int32 sums
 * (the int16 intermediates never saturate here: nibbles times int8, or |int8| times int8, two or four
 * at a time), so the same floats, and the table is "avx512vnni". The K-quants' sums of four are
 * vpdpbusd too and their scaling by the sub-block scales vpdpwssd (k_sum4, k_scale2), again the same
 * int32.
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

/* nt (1..4) tokens at xq + k * xs: the weights are converted once per 16 and fed to every token's own
 * four accumulators, so each token sees exactly dot_f16's operations. */
PI_X86_INLINE void f16_n(const void *w, const void *xq, size_t xs, float *out, int64_t n, int nt)
{
    const uint8_t *a = w;
    __m512 s0[4], s1[4], s2[4], s3[4];
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) s0[t] = s1[t] = s2[t] = s3[t] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 w0 = load_f16x16(a + 2 * i), w1 = load_f16x16(a + 2 * i + 32);
        __m512 w2 = load_f16x16(a + 2 * i + 64), w3 = load_f16x16(a + 2 * i + 96);
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const float *b = (const float *)((const uint8_t *)xq + (size_t)t * xs);
            s0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(b + i), s0[t]);
            s1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(b + i + 16), s1[t]);
            s2[t] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(b + i + 32), s2[t]);
            s3[t] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(b + i + 48), s3[t]);
        }
    }
    for (; i + 16 <= n; i += 16) {
        __m512 w0 = load_f16x16(a + 2 * i);
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++)
            s0[t] =
                _mm512_fmadd_ps(w0, _mm512_loadu_ps((const float *)((const uint8_t *)xq + (size_t)t * xs) + i), s0[t]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) {
        const float *b = (const float *)((const uint8_t *)xq + (size_t)t * xs);
        float s = hsum512(_mm512_add_ps(_mm512_add_ps(s0[t], s1[t]), _mm512_add_ps(s2[t], s3[t])));
        for (int64_t j = i; j < n; j++) {
            uint16_t h;
            memcpy(&h, a + 2 * j, 2);
            s += pi_x86_h2f(h) * b[j];
        }
        out[t] = s;
    }
}

static float dot_f16(const void *w, const void *xq, int64_t n)
{
    float s;
    f16_n(w, xq, 0, &s, n, 1);
    return s;
}

static void dot4_f16(const void *w, const void *xq, size_t xs, float out[4], int64_t n) { f16_n(w, xq, xs, out, n, 4); }

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

/* Block k of token t's activations (row t at xq + t * xs). */
static inline const struct pi_block_q8_0 *act_q8_0(const void *xq, size_t xs, int t, int64_t k)
{
    return (const struct pi_block_q8_0 *)((const uint8_t *)xq + (size_t)t * xs) + k;
}

/* Weights of blocks (i, i+1) prepared once for dot_i8_512 against several tokens: |x| and x's sign. */
struct i8_pair {
    __m512i ax;
    __mmask64 neg;
};

static inline struct i8_pair i8_pair_load(const struct pi_block_q8_0 *a)
{
    __m512i x = load2x32(a[0].qs, a[1].qs);
    return (struct i8_pair){_mm512_abs_epi8(x), _mm512_movepi8_mask(x)};
}

/* dot_i8_512(x, y) with x prepared by i8_pair_load and y = load2x32 of the activations: the same sums. */
static inline __m512i i8_pair_dot(struct i8_pair x, __m512i y)
{
    __m512i ys = _mm512_mask_sub_epi8(y, x.neg, _mm512_setzero_si512(), y);
#ifdef PI_AVX512_VNNI
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), x.ax, ys);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(x.ax, ys), _mm512_set1_epi16(1));
#endif
}

/* Four blocks per iteration: two per register, their eight fp16 scales converted together. nr (1..4)
 * rows wr[r] (any rows of one matrix, in any order) times nt (1..4) tokens -> out[r * 4 + t]; nr * nt
 * is at most 8. The weights are unpacked once per row, the activations loaded once per token; each
 * pair keeps dot_q8_0's two accumulators and order. pf: NULL, or nr rows of the same length whose
 * bytes matching each step's reads of wr[r] are prefetched (pf[r]: pi_matvec's next group of rows,
 * pi_ffn_neurons' next listed neurons); no effect on the results. */
PI_X86_INLINE void q8_0_n(const uint8_t *const *wr, int nr, const void *const *pf, const void *xq, size_t xs, int nt,
                          float *out, int64_t n)
{
    __m512 acc0[4][4], acc1[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) acc0[r][t] = acc1[r][t] = _mm512_setzero_ps();
    int64_t nb = n / 32, i = 0;
    for (; i + 4 <= nb; i += 4) {
        __m128 dw[4];
        struct i8_pair x0[4], x1[4];
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const struct pi_block_q8_0 *a = (const struct pi_block_q8_0 *)wr[r] + i;
            if (pf) pi_x86_pf_lines((const uint8_t *)((const struct pi_block_q8_0 *)pf[r] + i), sizeof(*a) * 4);
            dw[r] = pi_x86_halves4((const uint8_t *)&a->d, sizeof(*a));
            x0[r] = i8_pair_load(a), x1[r] = i8_pair_load(a + 2);
        }
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct pi_block_q8_0 *b = act_q8_0(xq, xs, t, i);
            __m128 dx = pi_x86_halves4((const uint8_t *)&b->d, sizeof(*b));
            __m512i y0 = load2x32(b[0].qs, b[1].qs), y1 = load2x32(b[2].qs, b[3].qs);
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                __m128 sc = _mm_mul_ps(dw[r], dx);
                acc0[r][t] =
                    _mm512_fmadd_ps(pair_scales(sc, 0), _mm512_cvtepi32_ps(i8_pair_dot(x0[r], y0)), acc0[r][t]);
                acc1[r][t] =
                    _mm512_fmadd_ps(pair_scales(sc, 1), _mm512_cvtepi32_ps(i8_pair_dot(x1[r], y1)), acc1[r][t]);
            }
        }
    }
    for (int r = 0; r < nr; r++) {
        const struct pi_block_q8_0 *a = (const struct pi_block_q8_0 *)wr[r];
        for (int t = 0; t < nt; t++) {
            float sum = hsum512(_mm512_add_ps(acc0[r][t], acc1[r][t]));
            for (int64_t j = i; j < nb; j++) {
                const struct pi_block_q8_0 *b = act_q8_0(xq, xs, t, j);
                __m256i p = pi_x86_dot_i8(_mm256_loadu_si256((const __m256i *)a[j].qs),
                                          _mm256_loadu_si256((const __m256i *)b->qs));
                sum += pi_x86_h2f(a[j].d) * pi_x86_h2f(b->d) * (float)pi_x86_hsum_epi32(p);
            }
            out[r * 4 + t] = sum;
        }
    }
}

/* A type's five table entries, each an instantiation of its rows x tokens routine ty##_n(wr, nr, pf, xq, xs, nt,
 * out, n) (out[r * 4 + t]): 1 x 1, 1 row x 4 tokens, 2 x 4, 2 rows x 1 and 4 x 1. */
#define PI_DOTS(ty)                                                                                                    \
    static float dot_##ty(const void *w, const void *xq, int64_t n)                                                    \
    {                                                                                                                  \
        const uint8_t *wr[1] = {w};                                                                                    \
        float s;                                                                                                       \
        ty##_n(wr, 1, NULL, xq, 0, 1, &s, n);                                                                          \
        return s;                                                                                                      \
    }                                                                                                                  \
    static void dot4_##ty(const void *w, const void *xq, size_t xs, float out[4], int64_t n)                           \
    {                                                                                                                  \
        const uint8_t *wr[1] = {w};                                                                                    \
        ty##_n(wr, 1, NULL, xq, xs, 4, out, n);                                                                        \
    }                                                                                                                  \
    static void dot8_##ty(const void *w, size_t ws, const void *xq, size_t xs, float out[8], int64_t n)                \
    {                                                                                                                  \
        const uint8_t *wr[2] = {w, (const uint8_t *)w + ws};                                                           \
        ty##_n(wr, 2, NULL, xq, xs, 4, out, n);                                                                        \
    }                                                                                                                  \
    static void dot2_##ty(const void *w0, const void *w1, const void *xq, float out[2], int64_t n)                     \
    {                                                                                                                  \
        const uint8_t *wr[2] = {w0, w1};                                                                               \
        float o[8];                                                                                                    \
        ty##_n(wr, 2, NULL, xq, 0, 1, o, n);                                                                           \
        out[0] = o[0], out[1] = o[4];                                                                                  \
    }                                                                                                                  \
    static void dot4r_##ty(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)   \
    {                                                                                                                  \
        const uint8_t *wr[4] = {w[0], w[1], w[2], w[3]};                                                               \
        float o[16];                                                                                                   \
        ty##_n(wr, 4, pf, xq, 0, 1, o, n);                                                                             \
        out[0] = o[0], out[1] = o[4], out[2] = o[8], out[3] = o[12];                                                   \
    }

PI_DOTS(q8_0)

/* 16 bytes from each of four places, one per 128-bit lane (lane k from p[k]). */
static inline __m512i load4x16(const void *p0, const void *p1, const void *p2, const void *p3)
{
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p0));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p1), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p2), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p3), 3);
}

/* Four Q4_0 blocks per register, one per 128-bit lane: the packed nibbles of block k are split into
 * low (elements 0..15) and high (16..31) halves in place (once per row, for every token), and each
 * token's activations are loaded to match (once per token, for every row), with their offset term
 * 8 * sum(y). The int32 partial sums of (q - 8) * y are those of the 1-row kernel: lane k holds
 * block k's four. */
struct q4_0_act {
    __m512i ylo, yhi, o; /* o: 8 * sum(y) per int16 pair; with VNNI -8 * sum(y) per int32 lane */
};

static inline struct q4_0_act q4_0_act_load(const struct pi_block_q8_0 *b)
{
    const __m512i k8 = _mm512_set1_epi8(8);
    struct q4_0_act y;
    y.ylo = load4x16(b[0].qs, b[1].qs, b[2].qs, b[3].qs);
    y.yhi = load4x16(b[0].qs + 16, b[1].qs + 16, b[2].qs + 16, b[3].qs + 16);
#ifdef PI_AVX512_VNNI
    const __m512i o = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), k8, y.ylo), k8, y.yhi);
    y.o = _mm512_sub_epi32(_mm512_setzero_si512(), o);
#else
    y.o = _mm512_add_epi16(_mm512_maddubs_epi16(k8, y.ylo), _mm512_maddubs_epi16(k8, y.yhi));
#endif
    return y;
}

static inline __m512i q4_0_quad(__m512i lo, __m512i hi, struct q4_0_act y)
{
#ifdef PI_AVX512_VNNI
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(y.o, lo, y.ylo), hi, y.yhi);
#else
    __m512i p = _mm512_add_epi16(_mm512_maddubs_epi16(lo, y.ylo), _mm512_maddubs_epi16(hi, y.yhi));
    return _mm512_madd_epi16(_mm512_sub_epi16(p, y.o), _mm512_set1_epi16(1));
#endif
}

/* nr (1..4) weight rows wr[r] times nt (1..4) tokens at xq + t * xs -> out[r * 4 + t] (out[t] when
 * nr is 1); nr * nt is at most 8. Each (row, token) pair keeps the 1-row kernel's accumulator and
 * order. pf as for q8_0_n. */
PI_X86_INLINE void q4_0_n(const uint8_t *const *wr, int nr, const void *const *pf, const void *xq, size_t xs, int nt,
                          float *out, int64_t n)
{
    const __m512i lanes = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps();
    int64_t nb = n / 32, i = 0;
    for (; i + 4 <= nb; i += 4) {
        __m128 dw[4];
        __m512i lo[4], hi[4];
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const struct pi_block_q4_0 *a = (const struct pi_block_q4_0 *)wr[r] + i;
            if (pf) pi_x86_pf_lines((const uint8_t *)((const struct pi_block_q4_0 *)pf[r] + i), sizeof(*a) * 4);
            dw[r] = pi_x86_halves4((const uint8_t *)&a->d, sizeof(*a));
            __m512i v = load4x16(a[0].qs, a[1].qs, a[2].qs, a[3].qs);
            lo[r] = _mm512_and_si512(v, m4), hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        }
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct pi_block_q8_0 *b = act_q8_0(xq, xs, t, i);
            __m128 dx = pi_x86_halves4((const uint8_t *)&b->d, sizeof(*b));
            struct q4_0_act y = q4_0_act_load(b);
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                __m512 s16 = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_mul_ps(dw[r], dx)));
                acc[r][t] = _mm512_fmadd_ps(s16, _mm512_cvtepi32_ps(q4_0_quad(lo[r], hi[r], y)), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < nr; r++) {
        const struct pi_block_q4_0 *a = (const struct pi_block_q4_0 *)wr[r];
        for (int t = 0; t < nt; t++) {
            float sum = hsum512(acc[r][t]);
            for (int64_t j = i; j < nb; j++) {
                const struct pi_block_q8_0 *b = act_q8_0(xq, xs, t, j);
                __m256i q = _mm256_sub_epi8(pi_x86_nibbles32(a[j].qs), _mm256_set1_epi8(8));
                __m256i p = pi_x86_dot_i8(q, _mm256_loadu_si256((const __m256i *)b->qs));
                sum += pi_x86_h2f(a[j].d) * pi_x86_h2f(b->d) * (float)pi_x86_hsum_epi32(p);
            }
            out[r * 4 + t] = sum;
        }
    }
}

PI_DOTS(q4_0)

/* ---------------------------------------------------------------- Q4_1, Q5_0, Q5_1 x Q8_0
 * As q4_0_n: four blocks per register, one per 128-bit lane, the quants of block k split into low
 * (elements 0..15) and high (16..31) halves of lane k, unsigned (the nibble, with the fifth bit as
 * 0x10 for Q5_x), so that one unsigned x signed byte product per element gives the int32 sums of
 * q * y, four per lane. Q5_0's -16 is an offset term 16 * sum(y) (as Q4_0's 8 * sum(y)); Q4_1 and
 * Q5_1 add m * d_x * sum(y) per block, where d_x * sum(y) is computed once per token and four
 * blocks and shared by every row (a 128-bit FMA per row and step, into its own accumulator). The
 * scales of four blocks are converted together (pi_x86_halves4), the fifth bits of four blocks are
 * turned into two 64-bit byte masks with scalar shifts (the integer ports are idle here). */
enum lq_kind { LQ_4_1, LQ_5_0, LQ_5_1 };

/* Block bytes, and the offsets of the quants, the fifth bits (Q5) and the minimum (Q4_1, Q5_1). */
#define LQ_SIZE(k)                                                                                                     \
    ((k) == LQ_4_1   ? sizeof(struct pi_block_q4_1)                                                                    \
     : (k) == LQ_5_0 ? sizeof(struct pi_block_q5_0)                                                                    \
                     : sizeof(struct pi_block_q5_1))
#define LQ_QS(k)                                                                                                       \
    ((k) == LQ_4_1   ? offsetof(struct pi_block_q4_1, qs)                                                              \
     : (k) == LQ_5_0 ? offsetof(struct pi_block_q5_0, qs)                                                              \
                     : offsetof(struct pi_block_q5_1, qs))
#define LQ_QH(k) ((k) == LQ_5_0 ? offsetof(struct pi_block_q5_0, qh) : offsetof(struct pi_block_q5_1, qh))
#define LQ_MIN(k) ((k) != LQ_5_0)

/* Fifth bits of the four blocks at p, p + st, p + 2 st, p + 3 st (qh at each): bits 0..15 of block k
 * (its elements 0..15) at bits 16k.. of *lo, bits 16..31 (elements 16..31) at bits 16k.. of *hi. The
 * four words are gathered and sorted in a vector register (scalar shifts and ors, about 30 of them,
 * took the ports the vector work needs: 14 against 22 GB/s from L2). */
static inline void lq_qh4(const uint8_t *p, size_t st, __mmask64 *lo, __mmask64 *hi)
{
    uint32_t h[4];
    for (int k = 0; k < 4; k++) memcpy(&h[k], p + (size_t)k * st, 4);
    __m128i v = _mm_insert_epi32(_mm_cvtsi32_si128((int)h[0]), (int)h[1], 1);
    v = _mm_insert_epi32(_mm_insert_epi32(v, (int)h[2], 2), (int)h[3], 3);
    /* 16-bit halves: the low ones of blocks 0..3, then the high ones */
    v = _mm_shuffle_epi8(v, _mm_set_epi8(15, 14, 11, 10, 7, 6, 3, 2, 13, 12, 9, 8, 5, 4, 1, 0));
    *lo = _cvtu64_mask64((uint64_t)_mm_cvtsi128_si64(v)), *hi = _cvtu64_mask64((uint64_t)_mm_extract_epi64(v, 1));
}

/* One token's four activation blocks: the bytes matching the weights' lanes, their scales, and the
 * per-block terms: Q5_0's offset 16 * sum(y) (per int16 pair; with VNNI -16 * sum(y) per int32
 * lane), or for Q4_1 / Q5_1 fy[k] = d_x[k] * sum(y of block k). */
struct lq_act {
    __m512i ylo, yhi, o;
    __m128 dx, fy;
};

/* 16 x int32: lane k's four sums of y over bytes 4i..4i+3 of ylo and of yhi (block k's sum(y) split
 * four ways); the same int32 with and without VNNI. */
static inline __m512i lq_ysum(__m512i ylo, __m512i yhi)
{
    const __m512i one = _mm512_set1_epi8(1);
#ifdef PI_AVX512_VNNI
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), one, ylo), one, yhi);
#else
    __m512i p = _mm512_add_epi16(_mm512_maddubs_epi16(one, ylo), _mm512_maddubs_epi16(one, yhi));
    return _mm512_madd_epi16(p, _mm512_set1_epi16(1));
#endif
}

PI_X86_INLINE struct lq_act lq_act_load(enum lq_kind kind, const struct pi_block_q8_0 *b)
{
    struct lq_act y;
    y.ylo = load4x16(b[0].qs, b[1].qs, b[2].qs, b[3].qs);
    y.yhi = load4x16(b[0].qs + 16, b[1].qs + 16, b[2].qs + 16, b[3].qs + 16);
    y.dx = pi_x86_halves4((const uint8_t *)&b->d, sizeof(*b));
    y.o = _mm512_setzero_si512(), y.fy = _mm_setzero_ps();
    if (kind == LQ_5_0) {
        const __m512i k16 = _mm512_set1_epi8(16);
#ifdef PI_AVX512_VNNI
        __m512i o = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), k16, y.ylo), k16, y.yhi);
        y.o = _mm512_sub_epi32(_mm512_setzero_si512(), o);
#else
        y.o = _mm512_add_epi16(_mm512_maddubs_epi16(k16, y.ylo), _mm512_maddubs_epi16(k16, y.yhi));
#endif
    } else {
        /* sum the four int32 of each lane into every one of them, then take one per lane */
        __m512i s = lq_ysum(y.ylo, y.yhi);
        s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_BADC));
        s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_CDAB));
        __m128i s4 = _mm512_castsi512_si128(
            _mm512_permutexvar_epi32(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), s));
        y.fy = _mm_mul_ps(y.dx, _mm_cvtepi32_ps(s4));
    }
    return y;
}

/* 16 x int32: lane k's four partial sums of q * y (Q5_0: (q - 16) * y) of block k. The int16
 * intermediates never saturate: q <= 31, |y| <= 127, two pairs at a time (15748), minus 8128. */
PI_X86_INLINE __m512i lq_quad(enum lq_kind kind, __m512i lo, __m512i hi, struct lq_act y)
{
#ifdef PI_AVX512_VNNI
    __m512i a = kind == LQ_5_0 ? y.o : _mm512_setzero_si512();
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a, lo, y.ylo), hi, y.yhi);
#else
    __m512i p = _mm512_add_epi16(_mm512_maddubs_epi16(lo, y.ylo), _mm512_maddubs_epi16(hi, y.yhi));
    if (kind == LQ_5_0) p = _mm512_sub_epi16(p, y.o);
    return _mm512_madd_epi16(p, _mm512_set1_epi16(1));
#endif
}

/* One block j of a row at a (the loop's tail), against activation block b: the same terms. */
PI_X86_INLINE float lq_block(enum lq_kind kind, const uint8_t *a, const struct pi_block_q8_0 *b)
{
    __m256i q = pi_x86_nibbles32(a + LQ_QS(kind));
    if (kind != LQ_4_1)
        q = _mm256_or_si256(q, _mm256_and_si256(pi_x86_bits32(a + LQ_QH(kind)), _mm256_set1_epi8(0x10)));
    __m256i y = _mm256_loadu_si256((const __m256i *)b->qs);
    int p = pi_x86_hsum_epi32(pi_x86_dot_u8(q, y));
    int sy = pi_x86_hsum_epi32(pi_x86_dot_u8(_mm256_set1_epi8(1), y));
    uint16_t d, m;
    memcpy(&d, a, 2);
    float dx = pi_x86_h2f(b->d);
    if (kind == LQ_5_0) return pi_x86_h2f(d) * dx * (float)(p - 16 * sy);
    memcpy(&m, a + 2, 2);
    return pi_x86_h2f(d) * dx * (float)p + pi_x86_h2f(m) * (dx * (float)sy);
}

static inline float hsum128(__m128 v)
{
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

/* nr (1..4) rows wr[r] (any rows of one matrix, in any order) times nt (1..4) tokens at xq + t * xs
 * -> out[r * 4 + t]; nr * nt is at most 8. Each (row, token) pair keeps the 1-row kernel's
 * accumulators and order; pf as for q8_0_n. */
PI_X86_INLINE void lq_n(enum lq_kind kind, const uint8_t *const *wr, int nr, const void *const *pf, const void *xq,
                        size_t xs, int nt, float *out, int64_t n)
{
    const size_t bs = LQ_SIZE(kind);
    const __m512i lanes = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i m4 = _mm512_set1_epi8(0x0F), b5 = _mm512_set1_epi8(0x10);
    __m512 acc[4][4];
    __m128 accm[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps(), accm[r][t] = _mm_setzero_ps();
    int64_t nb = n / 32, i = 0;
    for (; i + 4 <= nb; i += 4) {
        __m128 dw[4], mw[4];
        __m512i lo[4], hi[4];
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const uint8_t *a = wr[r] + (size_t)i * bs;
            if (pf) pi_x86_pf_lines((const uint8_t *)pf[r] + (size_t)i * bs, bs * 4);
            dw[r] = pi_x86_halves4(a, bs);
            mw[r] = LQ_MIN(kind) ? pi_x86_halves4(a + 2, bs) : _mm_setzero_ps();
            const uint8_t *q = a + LQ_QS(kind);
            __m512i v = load4x16(q, q + bs, q + 2 * bs, q + 3 * bs);
            lo[r] = _mm512_and_si512(v, m4), hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            if (kind != LQ_4_1) {
                __mmask64 hl, hh;
                lq_qh4(a + LQ_QH(kind), bs, &hl, &hh);
                lo[r] = _mm512_mask_add_epi8(lo[r], hl, lo[r], b5); /* bit 4 is clear: add = or */
                hi[r] = _mm512_mask_add_epi8(hi[r], hh, hi[r], b5);
            }
        }
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            struct lq_act y = lq_act_load(kind, act_q8_0(xq, xs, t, i));
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                __m512 s16 = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_mul_ps(dw[r], y.dx)));
                acc[r][t] = _mm512_fmadd_ps(s16, _mm512_cvtepi32_ps(lq_quad(kind, lo[r], hi[r], y)), acc[r][t]);
                if (LQ_MIN(kind)) accm[r][t] = _mm_fmadd_ps(mw[r], y.fy, accm[r][t]);
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) {
            float sum = hsum512(acc[r][t]);
            if (LQ_MIN(kind)) sum += hsum128(accm[r][t]);
            for (int64_t j = i; j < nb; j++) sum += lq_block(kind, wr[r] + (size_t)j * bs, act_q8_0(xq, xs, t, j));
            out[r * 4 + t] = sum;
        }
}

/* Each type's rows x tokens routine (lq_n of its kind), then its table entries. */
#define LQ_DOTS(ty, K)                                                                                                 \
    PI_X86_INLINE void ty##_n(const uint8_t *const *wr, int nr, const void *const *pf, const void *xq, size_t xs,      \
                              int nt, float *out, int64_t n)                                                           \
    {                                                                                                                  \
        lq_n(K, wr, nr, pf, xq, xs, nt, out, n);                                                                       \
    }                                                                                                                  \
    PI_DOTS(ty)

LQ_DOTS(q4_1, LQ_4_1)
LQ_DOTS(q5_0, LQ_5_0)
LQ_DOTS(q5_1, LQ_5_1)

/* ---------------------------------------------------------------- K-quants x Q8_K */

/* Block k of token t's Q8_K activations. */
static inline const struct pi_block_q8_K *act_q8_K(const void *xq, size_t xs, int t, int64_t k)
{
    return (const struct pi_block_q8_K *)((const uint8_t *)xq + (size_t)t * xs) + k;
}

/* 32 x int16 scales, one per 128-bit lane: s[0], s[1], s[2], s[3]. */
static inline __m512i lane4_scales(const int8_t *s)
{
    __m256i lo = _mm256_set_m128i(_mm_set1_epi16(s[1]), _mm_set1_epi16(s[0]));
    __m256i hi = _mm256_set_m128i(_mm_set1_epi16(s[3]), _mm_set1_epi16(s[2]));
    return join256(lo, hi);
}

/* The K-quant kernels below are one template per type, as q4_0_n: nr (1..4) weight rows wr[r] times
 * nt (1..4) tokens at xq + t * xs -> out[r * 4 + t], nr * nt at most 8. Per block, what belongs to a
 * row (its unpacked quants, its scale vectors) is made once for every token, and what belongs to a
 * token (its activation scale, its bsums, its rearranged activations) once for every row; the scale
 * bytes and fp16 scales of the nr rows are unpacked together, one row per 128-bit lane. Each (row,
 * token) pair keeps the 1-row kernel's accumulators and float operations in its order (per lane the
 * same vector operations, the scale products of several rows in one vector multiply), so every
 * sibling returns vec_dot's floats. pf (NULL, or nr rows of the same type) is prefetched at the
 * offsets being read, each row's share just before its arithmetic (not in a burst per block). The
 * products: 64 quants (unsigned, < 64) by 64 int8 activations into 16 int32 sums of four (k_sum4:
 * vpdpbusd with VNNI, else vpmaddubsw + vpmaddwd by ones), two such registers narrowed to int16 in
 * one vpackssdw (exact: |sum| <= 4 * 63 * 127) and multiplied by their sub-block scales and added
 * into the block's int32 sums (k_scale2: vpdpwssd with VNNI, else vpmaddwd + vpaddd). Every step is
 * exact integer arithmetic, so the VNNI build returns the AVX-512 build's floats bit for bit; per row
 * and block that is 4 + 2 port-0 multiplies and 2 scale permutes, against 4 + 4 and 4 for vpmaddubsw
 * and vpdpwssd (or vpmaddwd) on each register. */

/* 16 x int32: the sums of four adjacent products q * y (q unsigned < 64, y int8; |sum| <= 32004). */
static inline __m512i k_sum4(__m512i q, __m512i y)
{
#ifdef PI_AVX512_VNNI
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(q, y), _mm512_set1_epi16(1));
#endif
}

/* The 256 activations of a Q8_K block in the order of the Q4_K / Q5_K registers (k45_n): y[2h] holds
 * sub-blocks 4h and 4h+2, y[2h+1] sub-blocks 4h+1 and 4h+3, one per 256-bit half. */
static inline void k4_act(const int8_t *qs, __m512i y[4])
{
    for (int h = 0; h < 2; h++) {
        __m512i a = _mm512_loadu_si512((const void *)(qs + 128 * h)),
                b = _mm512_loadu_si512((const void *)(qs + 128 * h + 64));
        y[2 * h] = _mm512_shuffle_i64x2(a, b, 0x44), y[2 * h + 1] = _mm512_shuffle_i64x2(a, b, 0xEE);
    }
}

/* sumi + the sums of four of two registers of k_sum4 times their int16 sub-block scales: the sums
 * narrowed to int16 (exactly: they fit) and paired, per 128-bit lane words 0..3 from s0 and 4..7
 * from s1 (vpackssdw's order), sc matching word for word. */
static inline __m512i k_scale2(__m512i sumi, __m512i s0, __m512i s1, __m512i sc)
{
    __m512i p = _mm512_packs_epi32(s0, s1);
#ifdef PI_AVX512_VNNI
    return _mm512_dpwssd_epi32(sumi, p, sc);
#else
    return _mm512_add_epi32(sumi, _mm512_madd_epi16(p, sc));
#endif
}

/* vpermw control for k_scale2: word w of 128-bit lane L picks base + src * (w >= 4) + lane * L +
 * half * (L >= 2), i.e. the scale of the sub-block whose sums sit there. */
static inline __m512i k_pack_idx(int base, int src, int lane, int half)
{
    const __m512i w4 = _mm512_set_epi64(0x0001000100010001LL, 0, 0x0001000100010001LL, 0, 0x0001000100010001LL, 0,
                                        0x0001000100010001LL, 0);
    const __m512i ln = _mm512_set_epi64(0x0003000300030003LL, 0x0003000300030003LL, 0x0002000200020002LL,
                                        0x0002000200020002LL, 0x0001000100010001LL, 0x0001000100010001LL, 0, 0);
    const __m512i hf = _mm512_set_epi64(0x0001000100010001LL, 0x0001000100010001LL, 0x0001000100010001LL,
                                        0x0001000100010001LL, 0, 0, 0, 0);
    __m512i v = _mm512_add_epi16(_mm512_set1_epi16((short)base), _mm512_mullo_epi16(w4, _mm512_set1_epi16((short)src)));
    v = _mm512_add_epi16(v, _mm512_mullo_epi16(ln, _mm512_set1_epi16((short)lane)));
    return _mm512_add_epi16(v, _mm512_mullo_epi16(hf, _mm512_set1_epi16((short)half)));
}

/* 16 bytes at each of up to four places (row r's at p[r], r < nr), row r in 128-bit lane r (the
 * unused lanes repeat row 0). */
static inline __m512i k_load_heads(const uint8_t *const *p, int nr)
{
    return load4x16(p[0], p[nr > 1 ? 1 : 0], p[nr > 2 ? 2 : 0], p[nr > 3 ? 3 : 0]);
}

/* Q4_K / Q5_K: the first 16 bytes of a block (d, dmin, the 12 scale bytes), one row per 128-bit lane
 * -> per lane, bytes 0..7 the eight 6-bit sub-block scales and 8..15 the eight mins, the values of
 * pi_k4_scale_min (pi_x86_k4_scales' layout, for four rows at once). Dwords of a lane: scales 0..3
 * and mins 0..3 are the low 6 bits of scale bytes 0..3 and 4..7; scales and mins 4..7 take the low
 * and high nibbles of scale bytes 8..11 and the top two bits of bytes 0..3 and 4..7. */
static inline __m512i k4_unpack_scales(__m512i h)
{
    const __m512i ia = _mm512_broadcast_i32x4(_mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m512i ib = _mm512_broadcast_i32x4(_mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11));
    __m512i a = _mm512_srlv_epi32(_mm512_shuffle_epi8(h, ia), _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0, 0, 4)));
    a = _mm512_and_si512(a, _mm512_broadcast_i32x4(_mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f)));
    /* a | (top two bits of each byte, moved to bits 4..5) */
    __m512i b = _mm512_srli_epi32(_mm512_shuffle_epi8(h, ib), 2);
    return _mm512_ternarylogic_epi32(a, b, _mm512_set1_epi32(0x30303030), 0xF8);
}

/* Per-(row, token) state of the Q4_K / Q5_K templates shared by both: per block, the rows' scale
 * vectors, mins and fp16 scales (k4_rows) and each token's products with them (k4_token). */
struct k4_rows {
    __m512i sc16; /* lane r: row r's eight scales as int16 */
    __m512i mn16; /* lane r: row r's eight mins as int16 */
    __m256 dd;    /* d0, dmin0, d1, dmin1, ... (rows in order) */
};

static inline struct k4_rows k4_rows_load(const uint8_t *const *blk, int nr)
{
    const __m512i isc = _mm512_broadcast_i32x4(_mm_setr_epi8(0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7, -1));
    const __m512i imn =
        _mm512_broadcast_i32x4(_mm_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1));
    __m512i h = k_load_heads(blk, nr), k = k4_unpack_scales(h);
    /* dword 0 of each lane: the row's d and dmin */
    __m512i dw = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), h);
    return (struct k4_rows){_mm512_shuffle_epi8(k, isc), _mm512_shuffle_epi8(k, imn),
                            _mm256_cvtph_ps(_mm512_castsi512_si128(dw))};
}

/* Token b's part of a block: sd[2r] = dy * d_r (the rows' sub-block sums' scale), and the mins term
 * accm += dy * dmin_r * (mins_r . pair sums of bsums), row r in lanes 4r..4r+3. */
static inline __m512 k4_token(const struct k4_rows *k, const struct pi_block_q8_K *b, float sd[8], __m512 accm)
{
    __m256 s = _mm256_mul_ps(k->dd, _mm256_set1_ps(b->d));
    _mm256_storeu_ps(sd, s);
    __m128i pairs =
        _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)b->bsums), _mm_loadu_si128((const __m128i *)(b->bsums + 8)));
    __m512i m = _mm512_madd_epi16(k->mn16, _mm512_broadcast_i32x4(pairs));
    __m512 sm = _mm512_permutexvar_ps(_mm512_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7),
                                      _mm512_castps256_ps512(s));
    return _mm512_fmadd_ps(sm, _mm512_cvtepi32_ps(m), accm);
}

/* The float at p in all 16 lanes, by a broadcast from memory (a load-port operation; GCC otherwise
 * keeps a just-stored scale in a register and spends shuffle-port uops to extract and broadcast it).
 * The same value as _mm512_set1_ps(*p): the several-row kernels use it (in L2, vec_dot4r Q4_K 26.4
 * -> 27.2 GB/s, Q5_K 26.4 -> 27.6), the 1-row and multi-token ones, which it slowed, do not. */
static inline __m512 k_bcast_mem(const float *p)
{
    __m512 v;
    __asm__("vbroadcastss %1, %0" : "=v"(v) : "m"(*p));
    return v;
}

/* out = sum(acc) - row r's four lanes of accm, in a fixed order. */
static inline float k4_finish(__m512 acc, __m512 accm, int r)
{
    float m[16];
    _mm512_storeu_ps(m, accm);
    return hsum512(acc) - ((m[4 * r] + m[4 * r + 1]) + (m[4 * r + 2] + m[4 * r + 3]));
}

/* Q4_K (q5 = 0) and Q5_K (q5 = 1). Each 64-element register of a row holds two of its eight 32-element
 * sub-blocks, one per 256-bit half, in one of two layouts with the same int32 sums in other lanes:
 *  - paired (pair = 1; several rows, one token): the 64 bytes qs[64h .. 64h+63] carry sub-blocks 4h
 *    and 4h+2 in their low nibbles and 4h+1, 4h+3 in their high ones, so register 2h is their low
 *    nibbles and 2h+1 their high nibbles (one shift per 128 elements), and the token's activations
 *    are rearranged to match once per block for all rows (k4_act);
 *  - broadcast (pair = 0; one row, or four tokens): register c is qs[32c .. 32c+31] broadcast to both
 *    halves, sub-blocks 2c (low nibbles) and 2c+1 (high nibbles, the high half's words shifted), which
 *    matches the activations as they lie (no rearranging per token: the multi-token kernels).
 * After k_scale2 the int32 lane (L, k) (128-bit lane L, dword k) of the paired layout holds exactly
 * the integer lane k4_perm[4L + k] of the broadcast one holds, in every block, so the float
 * accumulators differ by that permutation of lanes alone (fma lane by lane, the same scale in every
 * lane): the broadcast kernels put their accumulator in paired order before the horizontal sum, and
 * every sibling returns the same floats. Q5_K's fifth bit of sub-block s is bit s of qh[l]: qh
 * broadcast to both halves, the high half's words shifted right so that both halves' bits line up,
 * then each register's bit moved to bit 4. */
static const int32_t k4_perm[16] = {0, 1, 8, 9, 4, 5, 12, 13, 2, 3, 10, 11, 6, 7, 14, 15};

/* Row r's block blk (Q4_K, or Q5_K when q5) unpacked into k45_n's four registers q (quants < 32) in
 * the paired or broadcast layout, and the int16 scale vectors sc of the register pairs (0, 1) and
 * (2, 3) for k_scale2, from the rows' scales k. */
PI_X86_INLINE void k45_row(const uint8_t *blk, int r, const struct k4_rows *k, int q5, int pair, __m512i q[4],
                           __m512i sc[2])
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), b4 = _mm512_set1_epi8(0x10);
    const uint8_t *qs = blk + (q5 ? offsetof(struct pi_block_q5_K, qs) : offsetof(struct pi_block_q4_K, qs));
    __m512i hb[4];
    if (pair) {
        /* sub-blocks 4h + 2 (L >= 2) + (w >= 4) */
        sc[0] = _mm512_permutexvar_epi16(k_pack_idx(8 * r, 1, 0, 2), k->sc16);
        sc[1] = _mm512_permutexvar_epi16(k_pack_idx(8 * r + 4, 1, 0, 2), k->sc16);
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m512i v = _mm512_loadu_si512((const void *)(qs + 64 * h));
            q[2 * h] = v, q[2 * h + 1] = _mm512_srli_epi16(v, 4);
        }
    } else {
        /* sub-blocks 2c + 4 p + (L >= 2), c = 2p + (w >= 4) */
        sc[0] = _mm512_permutexvar_epi16(k_pack_idx(8 * r, 2, 0, 1), k->sc16);
        sc[1] = _mm512_permutexvar_epi16(k_pack_idx(8 * r + 4, 2, 0, 1), k->sc16);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
            q[c] = _mm512_mask_srli_epi16(v, 0xFFFF0000u, v, 4);
        }
    }
    if (!q5) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) q[j] = _mm512_and_si512(q[j], m4);
        return;
    }
    __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + offsetof(struct pi_block_q5_K, qh))));
    if (pair) { /* bits 4h + (j & 1) in both halves after the shift by two */
        h = _mm512_mask_srli_epi16(h, 0xFFFF0000u, h, 2);
        hb[0] = _mm512_slli_epi16(h, 4), hb[1] = _mm512_slli_epi16(h, 3), hb[2] = h, hb[3] = _mm512_srli_epi16(h, 1);
    } else { /* bit 2c in both halves after the shift by one */
        h = _mm512_mask_srli_epi16(h, 0xFFFF0000u, h, 1);
        hb[0] = _mm512_slli_epi16(h, 4), hb[1] = _mm512_slli_epi16(h, 2), hb[2] = h, hb[3] = _mm512_srli_epi16(h, 2);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) /* (nibble & 0x0F) | (fifth bit & 0x10) */
        q[j] = _mm512_ternarylogic_epi32(q[j], m4, _mm512_and_si512(hb[j], b4), 0xEA);
}

PI_X86_INLINE void k45_n(const uint8_t *const *wr, int nr, const void *const *pf, const void *xq, size_t xs, int nt,
                         float *out, int64_t n, int q5, int pair)
{
    const size_t bs = q5 ? sizeof(struct pi_block_q5_K) : sizeof(struct pi_block_q4_K);
    __m512 acc[4][4], accm[4];
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) {
        accm[t] = _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) acc[r][t] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        const uint8_t *blk[4];
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) blk[r] = wr[r] + (size_t)i * bs;
        struct k4_rows k = k4_rows_load(blk, nr);
        _Alignas(32) float sd[4][8];
        __m512i y[4][4];
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct pi_block_q8_K *b = act_q8_K(xq, xs, t, i);
            accm[t] = k4_token(&k, b, sd[t], accm[t]);
            if (pair) k4_act(b->qs, y[t]);
            else
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) y[t][j] = _mm512_loadu_si512((const void *)(b->qs + 64 * j));
        }
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            if (pf) pi_x86_pf_lines((const uint8_t *)pf[r] + (size_t)i * bs, bs);
            __m512i q[4], sc[2];
            k45_row(blk[r], r, &k, q5, pair, q, sc);
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                __m512i sumi = k_scale2(_mm512_setzero_si512(), k_sum4(q[0], y[t][0]), k_sum4(q[1], y[t][1]), sc[0]);
                sumi = k_scale2(sumi, k_sum4(q[2], y[t][2]), k_sum4(q[3], y[t][3]), sc[1]);
                acc[r][t] = _mm512_fmadd_ps(pair ? k_bcast_mem(&sd[t][2 * r]) : _mm512_set1_ps(sd[t][2 * r]),
                                            _mm512_cvtepi32_ps(sumi), acc[r][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            __m512 a = pair ? acc[r][t] : _mm512_permutexvar_ps(_mm512_loadu_si512((const void *)k4_perm), acc[r][t]);
            out[r * 4 + t] = k4_finish(a, accm[t], r);
        }
}

/* The paired layout for several rows and one token (vec_dot2, vec_dot4r), the broadcast one otherwise. */
PI_X86_INLINE void q4_K_n(const uint8_t *const *wr, int nr, const void *const *pf, const void *xq, size_t xs, int nt,
                          float *out, int64_t n)
{
    k45_n(wr, nr, pf, xq, xs, nt, out, n, 0, nr > 1 && nt == 1);
}

PI_X86_INLINE void q5_K_n(const uint8_t *const *wr, int nr, const void *const *pf, const void *xq, size_t xs, int nt,
                          float *out, int64_t n)
{
    k45_n(wr, nr, pf, xq, xs, nt, out, n, 1, nr > 1 && nt == 1);
}

/* Q6_K: register 2c + h (c, h = 0, 1) holds elements 128c + 64h .. +63, sub-blocks 8c + 4h .. +3
 * (one per 128-bit lane): the low (h = 0) or high (h = 1) nibbles of ql[64c .. 64c+63], with bits
 * 0-1 (4-5) of qh[32c + l] on top for its low 256 bits and bits 2-3 (6-7) for its high 256 bits (qh
 * broadcast to both halves, the high half's words shifted right by two). The -32 of every quant is
 * taken out through bsums: sumi starts at -32 * sum_s sc[s] * bsums[s]. */
PI_X86_INLINE void q6_K_n(const uint8_t *const *wr, int nr, const void *const *pf, const void *xq, size_t xs, int nt,
                          float *out, int64_t n)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        const uint8_t *blk[4];
        uint64_t dh = 0;
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            blk[r] = wr[r] + (size_t)i * sizeof(struct pi_block_q6_K);
            uint16_t d;
            memcpy(&d, blk[r] + offsetof(struct pi_block_q6_K, d), 2);
            dh |= (uint64_t)d << (16 * r);
        }
        __m128 dd = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)dh));
        _Alignas(16) float sd[4][4];
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) _mm_store_ps(sd[t], _mm_mul_ps(dd, _mm_set1_ps(act_q8_K(xq, xs, t, i)->d)));
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            if (pf)
                pi_x86_pf_lines((const uint8_t *)pf[r] + (size_t)i * sizeof(struct pi_block_q6_K),
                                sizeof(struct pi_block_q6_K));
            const uint8_t *ql = blk[r] + offsetof(struct pi_block_q6_K, ql),
                          *qhp = blk[r] + offsetof(struct pi_block_q6_K, qh);
            __m256i sc16 = _mm256_cvtepi8_epi16(
                _mm_loadu_si128((const __m128i *)(blk[r] + offsetof(struct pi_block_q6_K, scales))));
            __m256i sc32 = _mm256_slli_epi16(sc16, 5); /* |32 * sc| <= 4096 */
            /* registers (0, 1) and (2, 3) paired by k_scale2: sub-blocks 4m + L */
            __m512i q[4], sc[2] = {_mm512_permutexvar_epi16(k_pack_idx(0, 4, 1, 0), _mm512_castsi256_si512(sc16)),
                                   _mm512_permutexvar_epi16(k_pack_idx(8, 4, 1, 0), _mm512_castsi256_si512(sc16))};
#pragma GCC unroll 2
            for (int c = 0; c < 2; c++) {
                __m512i l = _mm512_loadu_si512((const void *)(ql + 64 * c));
                __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qhp + 32 * c)));
                h = _mm512_mask_srli_epi16(h, 0xFFFF0000u, h, 2);
                /* (nibble & 0x0F) | (two high bits at bits 4..5) */
                q[2 * c] = _mm512_ternarylogic_epi32(l, m4, _mm512_and_si512(_mm512_slli_epi16(h, 4), m30), 0xEA);
                q[2 * c + 1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l, 4), m4, _mm512_and_si512(h, m30), 0xEA);
            }
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const struct pi_block_q8_K *b = act_q8_K(xq, xs, t, i);
                __m256i off = _mm256_madd_epi16(sc32, _mm256_loadu_si256((const __m256i *)b->bsums));
                __m512i sumi = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(off));
                sumi = k_scale2(sumi, k_sum4(q[0], _mm512_loadu_si512((const void *)(b->qs))),
                                k_sum4(q[1], _mm512_loadu_si512((const void *)(b->qs + 64))), sc[0]);
                sumi = k_scale2(sumi, k_sum4(q[2], _mm512_loadu_si512((const void *)(b->qs + 128))),
                                k_sum4(q[3], _mm512_loadu_si512((const void *)(b->qs + 192))), sc[1]);
                acc[r][t] = _mm512_fmadd_ps(nr > 1 && nt == 1 ? k_bcast_mem(&sd[t][r]) : _mm512_set1_ps(sd[t][r]),
                                            _mm512_cvtepi32_ps(sumi), acc[r][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) out[r * 4 + t] = hsum512(acc[r][t]);
}

PI_DOTS(q4_K)
PI_DOTS(q5_K)
PI_DOTS(q6_K)

/* ---------------------------------------------------------------- Q2_K, Q3_K x Q8_K
 * A super-block's 2-bit quants are taken 64 consecutive elements per register: for c = 0, 1 the 32
 * bytes qs[32c ..] hold elements 128c + 32j + l at bit shift 2j, so join(Q, Q >> 2) masked with 3 is
 * elements 128c + 0..63 and the same shifted by 4 elements 128c + 64..127. Register g (0..3) then
 * holds elements 64g .. 64g + 63, i.e. sub-blocks 4g .. 4g + 3 one per 128-bit lane (Q6_K's layout,
 * q6_K_n), and each token's activations are plain 64-byte loads (no inserts, so they are reloaded per
 * row instead of kept). The products go as the other K-quants' (k_sum4, k_scale2): 64 quants by 64
 * int8 into 16 int32 sums of four, two registers narrowed to int16 and multiplied by their sub-block
 * scales (spread with one vpermw per register pair) into the block's int32 sums, all exact, so the
 * VNNI build returns the AVX-512 build's floats. The fp16 scales of the nr rows are converted
 * together and multiplied by each token's scale once per block (the several-row kernels broadcast
 * them from memory, k_bcast_mem). Q2_K's minimum term dmin * sum_s m[s] * bsums[s] goes through its
 * own accumulator; Q3_K's quants are taken as q2 | 4 * hbit (0..7, i.e. q + 4) and the
 * 4 * sum_s sc[s] * bsums[s] this adds is subtracted from the int32 sums; its packed 6-bit scales and
 * its d are unpacked for the nr rows together, one row per 128-bit lane (lk_k3_scales4). */
enum lk_kind { LK_2, LK_3 };

/* Q3_K's 16 scales (value - 32) of up to four rows' blocks at once: h holds bytes 94..109 of each
 * row's block one row per 128-bit lane (the last two quant bytes, the 12 scale bytes, d;
 * k_load_heads) -> per lane the row's scales as int8, pi_k3_scales' values: low nibbles from scale
 * bytes 0..7 (scales 0..7 the low, 8..15 the high ones), the top two bits of scale j from byte
 * 8 + j % 4 at shift 2 * (j / 4). */
static inline __m512i lk_k3_scales4(__m512i h)
{
    const __m512i ia = _mm512_broadcast_i32x4(_mm_setr_epi8(2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5, 6, 7, 8, 9));
    const __m512i ib =
        _mm512_broadcast_i32x4(_mm_setr_epi8(10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13));
    /* bytes 0..7 the scale bytes 0..7, bytes 8..15 the same shifted down by a nibble */
    __m512i lo = _mm512_srlv_epi64(_mm512_shuffle_epi8(h, ia), _mm512_broadcast_i32x4(_mm_set_epi64x(4, 0)));
    /* dword g: scale bytes 8..11 shifted down by 2g */
    __m512i hi = _mm512_srlv_epi32(_mm512_shuffle_epi8(h, ib), _mm512_broadcast_i32x4(_mm_setr_epi32(0, 2, 4, 6)));
    lo = _mm512_and_si512(lo, _mm512_set1_epi8(0x0F));
    hi = _mm512_slli_epi16(_mm512_and_si512(hi, _mm512_set1_epi8(3)), 4);
    return _mm512_sub_epi8(_mm512_or_si512(lo, hi), _mm512_set1_epi8(32));
}

static inline float hsum256(__m256 v) { return pi_x86_hsum_ps(v); }

/* nr (1..4) rows wr[r] (any rows of one matrix, in any order) times nt (1..4) tokens at xq + t * xs
 * -> out[r * 4 + t]; nr * nt is at most 8. Each (row, token) pair keeps the 1-row kernel's
 * accumulators and order; pf: NULL, or nr rows whose bytes matching each block of wr[r] are
 * prefetched. */
PI_X86_INLINE void lk_n(enum lk_kind kind, const uint8_t *const *wr, int nr, const void *const *pf, const void *xq,
                        size_t xs, int nt, float *out, int64_t n)
{
    const size_t bs = kind == LK_2 ? sizeof(struct pi_block_q2_K) : sizeof(struct pi_block_q3_K);
    const __m512i m2 = _mm512_set1_epi8(3), k4 = _mm512_set1_epi8(4);
    __m512 acc[4][4];
    __m512 accm[2][4]; /* Q2_K's mins term: rows 2p and 2p + 1 in the low and high 8 lanes of accm[p] */
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) accm[0][t] = accm[1][t] = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        /* sd[t]: token t's scale times the rows' fp16 scales, converted for all rows at once: Q2_K
         * d_r at 2r and dmin_r at 2r + 1, Q3_K d_r at r */
        const uint8_t *blk[4];
        _Alignas(32) float sd[4][8];
        __m512i s3[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}; /* int16 scales, rows 2p, 2p + 1 */
        if (kind == LK_2) {
            uint64_t h[2] = {0, 0};
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                blk[r] = wr[r] + (size_t)i * bs;
                uint32_t dd;
                memcpy(&dd, blk[r] + offsetof(struct pi_block_q2_K, d), 4);
                h[r / 2] |= (uint64_t)dd << (32 * (r % 2));
            }
            __m256 dd = _mm256_cvtph_ps(_mm_set_epi64x((long long)h[1], (long long)h[0]));
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++)
                _mm256_store_ps(sd[t], _mm256_mul_ps(dd, _mm256_set1_ps(act_q8_K(xq, xs, t, i)->d)));
            /* the rows' 16 scale bytes one row per 128-bit lane: scales and mins as int16, two rows per
             * register; the mins term of rows 2p, 2p + 1 for each token in one vpmaddwd */
            __m512i hs = k_load_heads(blk, nr), m4 = _mm512_set1_epi8(0x0F);
            __m512i s8 = _mm512_and_si512(hs, m4), m8 = _mm512_and_si512(_mm512_srli_epi16(hs, 4), m4);
            s3[0] = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(s8));
            s3[1] = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(s8, 1));
            __m512i mn[2] = {_mm512_cvtepu8_epi16(_mm512_castsi512_si256(m8)),
                             _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(m8, 1))};
#pragma GCC unroll 2
            for (int p = 0; p < (nr + 1) / 2; p++)
#pragma GCC unroll 4
                for (int t = 0; t < nt; t++) {
                    const struct pi_block_q8_K *b = act_q8_K(xq, xs, t, i);
                    __m512i mb =
                        _mm512_madd_epi16(mn[p], _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->bsums)));
                    /* dy * dmin of row 2p in the low 8 lanes, of row 2p + 1 in the high ones */
                    const int lo = 4 * p + 1, hi = 4 * p + 3;
                    __m512 sm = _mm512_permutexvar_ps(
                        _mm512_set_epi32(hi, hi, hi, hi, hi, hi, hi, hi, lo, lo, lo, lo, lo, lo, lo, lo),
                        _mm512_castps256_ps512(_mm256_load_ps(sd[t])));
                    accm[p][t] = _mm512_fmadd_ps(sm, _mm512_cvtepi32_ps(mb), accm[p][t]);
                }
        } else {
            /* bytes 94..109 of each row's block, one row per lane: the rows' scales as int16 (rows 0, 1
             * in s3[0], rows 2, 3 in s3[1]) and their d (word 7 of each lane) */
            const uint8_t *hp[4];
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) blk[r] = wr[r] + (size_t)i * bs, hp[r] = blk[r] + 94;
            __m512i h = k_load_heads(hp, nr), s8 = lk_k3_scales4(h);
            s3[0] = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(s8));
            s3[1] = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(s8, 1));
            __m128 dd = _mm_cvtph_ps(_mm512_castsi512_si128(
                _mm512_permutexvar_epi16(_mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                          0, 0, 0, 0, 0, 0, 0, 31, 23, 15, 7),
                                         h)));
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) _mm_store_ps(sd[t], _mm_mul_ps(dd, _mm_set1_ps(act_q8_K(xq, xs, t, i)->d)));
        }
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const uint8_t *a = blk[r];
            if (pf) pi_x86_pf_lines((const uint8_t *)pf[r] + (size_t)i * bs, bs);
            const uint8_t *qs =
                kind == LK_2 ? ((const struct pi_block_q2_K *)a)->qs : ((const struct pi_block_q3_K *)a)->qs;
            __m512i q[4];
#pragma GCC unroll 2
            for (int c = 0; c < 2; c++) {
                /* join(Q, Q >> 2): Q broadcast from memory to both halves, the high half shifted */
                __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
                z = _mm512_mask_srli_epi16(z, 0xFFFF0000u, z, 2);
                q[2 * c] = _mm512_and_si512(z, m2), q[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(z, 4), m2);
            }
            __m256i s16 = _mm256_setzero_si256();
            if (kind == LK_3) {
                const struct pi_block_q3_K *b3 = (const struct pi_block_q3_K *)a;
                s16 = r & 1 ? _mm512_extracti64x4_epi64(s3[r / 2], 1) : _mm512_castsi512_si256(s3[r / 2]);
                /* the high bits: join(H, H >> 1) has at bit 2g of byte l the hmask bit of register
                 * g's element l (first half) and 32 + l (second half); where it is set, q += 4 */
                __m512i hz = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b3->hmask));
                hz = _mm512_mask_srli_epi16(hz, 0xFFFF0000u, hz, 1);
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++)
                    q[g] = _mm512_mask_add_epi8(q[g], _mm512_test_epi8_mask(hz, _mm512_set1_epi8((char)(1 << (2 * g)))),
                                                q[g], k4);
            }
            /* registers (0, 1) and (2, 3) paired by k_scale2: sub-blocks 4m + L */
            __m512i sp = s3[r / 2];
            int sb = 16 * (r & 1);
            __m512i sc[2] = {_mm512_permutexvar_epi16(k_pack_idx(sb, 4, 1, 0), sp),
                             _mm512_permutexvar_epi16(k_pack_idx(sb + 8, 4, 1, 0), sp)};
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const struct pi_block_q8_K *b = act_q8_K(xq, xs, t, i);
                __m256i bsums = _mm256_loadu_si256((const __m256i *)b->bsums);
                __m512i sumi = _mm512_setzero_si512();
                if (kind == LK_3)
                    sumi = _mm512_sub_epi32(
                        sumi, _mm512_zextsi256_si512(_mm256_slli_epi32(_mm256_madd_epi16(s16, bsums), 2)));
                sumi = k_scale2(sumi, k_sum4(q[0], _mm512_loadu_si512((const void *)(b->qs))),
                                k_sum4(q[1], _mm512_loadu_si512((const void *)(b->qs + 64))), sc[0]);
                sumi = k_scale2(sumi, k_sum4(q[2], _mm512_loadu_si512((const void *)(b->qs + 128))),
                                k_sum4(q[3], _mm512_loadu_si512((const void *)(b->qs + 192))), sc[1]);
                const float *sdp = kind == LK_2 ? &sd[t][2 * r] : &sd[t][r];
                acc[r][t] = _mm512_fmadd_ps(nr > 1 && nt == 1 ? k_bcast_mem(sdp) : _mm512_set1_ps(*sdp),
                                            _mm512_cvtepi32_ps(sumi), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) {
            float s = hsum512(acc[r][t]);
            if (kind == LK_2)
                s -=
                    hsum256(r & 1 ? _mm512_extractf32x8_ps(accm[r / 2][t], 1) : _mm512_castps512_ps256(accm[r / 2][t]));
            out[r * 4 + t] = s;
        }
}

/* Each type's rows x tokens routine (lk_n of its kind), then its table entries. */
#define LK_DOTS(ty, K)                                                                                                 \
    PI_X86_INLINE void ty##_n(const uint8_t *const *wr, int nr, const void *const *pf, const void *xq, size_t xs,      \
                              int nt, float *out, int64_t n)                                                           \
    {                                                                                                                  \
        lk_n(K, wr, nr, pf, xq, xs, nt, out, n);                                                                       \
    }                                                                                                                  \
    PI_DOTS(ty)

LK_DOTS(q2_K, LK_2)
LK_DOTS(q3_K, LK_3)

/* ---------------------------------------------------------------- y += a * rows (pi_vec_mad4)
 * Each row's multiply, then its add into y, each rounded as in the scalar loop over the dequantised
 * rows (the barrier keeps the compiler from contracting them into an FMA); y is loaded once per step
 * and gets rows 0..m-1 added in that order: the floats of m vec_mad calls. */
static inline __m512 mad16(__m512 y, __m512 a, __m512 x)
{
    __m512 p = _mm512_mul_ps(a, x);
    __asm__("" : "+v"(p));
    return _mm512_add_ps(y, p);
}

/* The element-wise tail (n not a multiple of the step), in the same order per element. */
static inline void mad_tail(float *y, int64_t i, float p)
{
    __asm__("" : "+x"(p));
    y[i] += p;
}

/* m (1..4, a constant where inlined) f16 rows; 32 elements (one 64-byte line of each row) per step,
 * with the matching line of each pf row (prefetcht1: four rows ahead is 40 KiB at d = 5120, more than
 * L1 keeps while y and these rows stream through it). */
PI_X86_INLINE void mad_f16_n(const void *const *row, const float *a, int m, const void *const *pf, float *y, int64_t n)
{
    __m512 va[4];
#pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm512_set1_ps(a[r]);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 y0 = _mm512_loadu_ps(y + i), y1 = _mm512_loadu_ps(y + i + 16);
#pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            const uint8_t *w = (const uint8_t *)row[r] + 2 * i;
            if (pf) pi_x86_pf_line_l2((const uint8_t *)pf[r] + 2 * i);
            y0 = mad16(y0, va[r], load_f16x16(w));
            y1 = mad16(y1, va[r], load_f16x16(w + 32));
        }
        _mm512_storeu_ps(y + i, y0), _mm512_storeu_ps(y + i + 16, y1);
    }
    for (; i < n; i++)
        for (int r = 0; r < m; r++) {
            uint16_t h;
            memcpy(&h, (const uint8_t *)row[r] + 2 * i, 2);
            mad_tail(y, i, a[r] * pi_x86_h2f(h));
        }
}

PI_X86_VEC_MAD4_BY_M(vec_mad4_f16, mad_f16_n)

/* m Q8_0 rows, one block (32 elements) per step: x = q * d as dequant_q8_0, then the row's multiply
 * and add; the prefetch of the pf rows every other block (a line per 68 bytes). */
PI_X86_INLINE void mad_q8_0_n(const void *const *row, const float *a, int m, const void *const *pf, float *y, int64_t n)
{
    __m512 va[4];
#pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm512_set1_ps(a[r]);
    for (int64_t i = 0; i < n / 32; i++) {
        __m512 y0 = _mm512_loadu_ps(y + 32 * i), y1 = _mm512_loadu_ps(y + 32 * i + 16);
#pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            const struct pi_block_q8_0 *b = (const struct pi_block_q8_0 *)row[r] + i;
            if (pf && (i & 1) == 0) pi_x86_pf_line_l2((const uint8_t *)((const struct pi_block_q8_0 *)pf[r] + i));
            __m512 d = _mm512_set1_ps(pi_x86_h2f(b->d));
            __m512 x0 =
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->qs))), d);
            __m512 x1 = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16)))), d);
            y0 = mad16(y0, va[r], x0);
            y1 = mad16(y1, va[r], x1);
        }
        _mm512_storeu_ps(y + 32 * i, y0), _mm512_storeu_ps(y + 32 * i + 16, y1);
    }
}

PI_X86_VEC_MAD4_BY_M(vec_mad4_q8_0, mad_q8_0_n)

/* m Q4_0 rows, one block (32 elements) per step: x = (q - 8) * d as dequant_q4_0 (exact in float), the
 * low nibbles of the 16 bytes elements 0..15, the high ones 16..31, then the row's multiply and add; the
 * prefetch of the pf rows every third block (18-byte blocks: each 64-byte line gets one). */
PI_X86_INLINE void mad_q4_0_n(const void *const *row, const float *a, int m, const void *const *pf, float *y, int64_t n)
{
    const __m128i m4 = _mm_set1_epi8(0x0F), k8 = _mm_set1_epi8(8);
    __m512 va[4];
#pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm512_set1_ps(a[r]);
    for (int64_t i = 0; i < n / 32; i++) {
        __m512 y0 = _mm512_loadu_ps(y + 32 * i), y1 = _mm512_loadu_ps(y + 32 * i + 16);
        int pfi = pf && i % 3 == 0;
#pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            const struct pi_block_q4_0 *b = (const struct pi_block_q4_0 *)row[r] + i;
            if (pfi) pi_x86_pf_line_l2((const uint8_t *)((const struct pi_block_q4_0 *)pf[r] + i));
            __m512 d = _mm512_set1_ps(pi_x86_h2f(b->d));
            __m128i v = _mm_loadu_si128((const __m128i *)b->qs);
            __m128i lo = _mm_sub_epi8(_mm_and_si128(v, m4), k8);
            __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m4), k8);
            y0 = mad16(y0, va[r], _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), d));
            y1 = mad16(y1, va[r], _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), d));
        }
        _mm512_storeu_ps(y + 32 * i, y0), _mm512_storeu_ps(y + 32 * i + 16, y1);
    }
}

PI_X86_VEC_MAD4_BY_M(vec_mad4_q4_0, mad_q4_0_n)

/* m grouped Q4_0 rows (kernels/cpu/quant.h), 32 elements per step: the 16 bytes of quants, x = (q - 8)
 * * s with the step's 32 scales of the row's group (exact; a nibble widened to 32 bits picks q - 8 from
 * a table, vpermps), then the multiply and the add; the pf rows' quants prefetched a line (four steps)
 * at a time. SAME: every row has the same scales (rows of one group, the common case of a sorted
 * neuron list), converted once per step for all of them. */
PI_X86_INLINE void madg_q4_0_body(const void *const *row, const uint16_t *const *s, const float *a, int m,
                                  const void *const *pf, float *y, int64_t n, bool same)
{
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m512 tab = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    __m512 va[4];
#pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm512_set1_ps(a[r]);
    for (int64_t i = 0; i < n / 32; i++) {
        __m512 y0 = _mm512_loadu_ps(y + 32 * i), y1 = _mm512_loadu_ps(y + 32 * i + 16);
        const int pfi = pf && (i & 3) == 0;
        __m512 c0 = _mm512_setzero_ps(), c1 = c0;
        if (same) {
            c0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s[0] + 32 * i)));
            c1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s[0] + 32 * i + 16)));
        }
#pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            const uint8_t *q = (const uint8_t *)row[r] + 16 * i;
            if (pfi) pi_x86_pf_line_l2((const uint8_t *)pf[r] + 16 * i);
            __m512 s0 = c0, s1 = c1;
            if (!same) {
                s0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s[r] + 32 * i)));
                s1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s[r] + 32 * i + 16)));
            }
            __m128i v = _mm_loadu_si128((const __m128i *)q);
            __m512i lo = _mm512_cvtepu8_epi32(_mm_and_si128(v, m4));
            __m512i hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), m4));
            y0 = mad16(y0, va[r], _mm512_mul_ps(_mm512_permutexvar_ps(lo, tab), s0));
            y1 = mad16(y1, va[r], _mm512_mul_ps(_mm512_permutexvar_ps(hi, tab), s1));
        }
        _mm512_storeu_ps(y + 32 * i, y0), _mm512_storeu_ps(y + 32 * i + 16, y1);
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
 * quants prefetched a line (two steps) at a time. */
PI_X86_INLINE void madg_q8_0_n(const void *const *row, const uint16_t *const *s, const float *a, int m,
                               const void *const *pf, float *y, int64_t n)
{
    __m512 va[4];
#pragma GCC unroll 4
    for (int r = 0; r < m; r++) va[r] = _mm512_set1_ps(a[r]);
    for (int64_t i = 0; i < n / 32; i++) {
        __m512 y0 = _mm512_loadu_ps(y + 32 * i), y1 = _mm512_loadu_ps(y + 32 * i + 16);
        const int pfi = pf && (i & 1) == 0;
#pragma GCC unroll 4
        for (int r = 0; r < m; r++) {
            const int8_t *q = (const int8_t *)row[r] + 32 * i;
            if (pfi) pi_x86_pf_line_l2((const uint8_t *)pf[r] + 32 * i);
            __m512 s0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s[r] + 32 * i)));
            __m512 s1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s[r] + 32 * i + 16)));
            __m512 x0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
            __m512 x1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
            y0 = mad16(y0, va[r], _mm512_mul_ps(x0, s0));
            y1 = mad16(y1, va[r], _mm512_mul_ps(x1, s1));
        }
        _mm512_storeu_ps(y + 32 * i, y0), _mm512_storeu_ps(y + 32 * i + 16, y1);
    }
}

PI_X86_VEC_MADG4_BY_M(vec_madg4_q8_0, madg_q8_0_n)

#ifdef PI_AVX512_VNNI
const struct pi_kernel_table pi_kernels_avx512vnni_raw = {
    .name = "avx512vnni",
    .r16_dot = {[PI_TYPE_Q4_0] = pi_r16_dot_avx512vnni_q4_0,
                [PI_TYPE_Q8_0] = pi_r16_dot_avx512vnni_q8_0,
                [PI_TYPE_Q4_K] = pi_r16_dot_avx512vnni_q4_K,
                [PI_TYPE_Q5_K] = pi_r16_dot_avx512vnni_q5_K,
                [PI_TYPE_Q6_K] = pi_r16_dot_avx512vnni_q6_K},
#else
const struct pi_kernel_table pi_kernels_avx512_raw = {
    .name = "avx512",
#endif
    .vec_dot =
        {
            [PI_TYPE_F32] = dot_f32,
            [PI_TYPE_F16] = dot_f16,
            [PI_TYPE_Q4_0] = dot_q4_0,
            [PI_TYPE_Q4_1] = dot_q4_1,
            [PI_TYPE_Q5_0] = dot_q5_0,
            [PI_TYPE_Q5_1] = dot_q5_1,
            [PI_TYPE_Q8_0] = dot_q8_0,
            [PI_TYPE_Q2_K] = dot_q2_K,
            [PI_TYPE_Q3_K] = dot_q3_K,
            [PI_TYPE_Q4_K] = dot_q4_K,
            [PI_TYPE_Q5_K] = dot_q5_K,
            [PI_TYPE_Q6_K] = dot_q6_K,
        },
    .vec_dot4 =
        {
            [PI_TYPE_F16] = dot4_f16,
            [PI_TYPE_Q4_0] = dot4_q4_0,
            [PI_TYPE_Q4_1] = dot4_q4_1,
            [PI_TYPE_Q5_0] = dot4_q5_0,
            [PI_TYPE_Q5_1] = dot4_q5_1,
            [PI_TYPE_Q8_0] = dot4_q8_0,
            [PI_TYPE_Q2_K] = dot4_q2_K,
            [PI_TYPE_Q3_K] = dot4_q3_K,
            [PI_TYPE_Q4_K] = dot4_q4_K,
            [PI_TYPE_Q5_K] = dot4_q5_K,
            [PI_TYPE_Q6_K] = dot4_q6_K,
        },
    .vec_dot8 =
        {
            [PI_TYPE_Q4_0] = dot8_q4_0,
            [PI_TYPE_Q4_1] = dot8_q4_1,
            [PI_TYPE_Q5_0] = dot8_q5_0,
            [PI_TYPE_Q5_1] = dot8_q5_1,
            [PI_TYPE_Q8_0] = dot8_q8_0,
            [PI_TYPE_Q2_K] = dot8_q2_K,
            [PI_TYPE_Q3_K] = dot8_q3_K,
            [PI_TYPE_Q4_K] = dot8_q4_K,
            [PI_TYPE_Q5_K] = dot8_q5_K,
            [PI_TYPE_Q6_K] = dot8_q6_K,
        },
    .vec_dot2 =
        {
            [PI_TYPE_Q4_0] = dot2_q4_0,
            [PI_TYPE_Q4_1] = dot2_q4_1,
            [PI_TYPE_Q5_0] = dot2_q5_0,
            [PI_TYPE_Q5_1] = dot2_q5_1,
            [PI_TYPE_Q8_0] = dot2_q8_0,
            [PI_TYPE_Q2_K] = dot2_q2_K,
            [PI_TYPE_Q3_K] = dot2_q3_K,
            [PI_TYPE_Q4_K] = dot2_q4_K,
            [PI_TYPE_Q5_K] = dot2_q5_K,
            [PI_TYPE_Q6_K] = dot2_q6_K,
        },
    .vec_dot4r =
        {
            [PI_TYPE_Q4_0] = dot4r_q4_0,
            [PI_TYPE_Q4_1] = dot4r_q4_1,
            [PI_TYPE_Q5_0] = dot4r_q5_0,
            [PI_TYPE_Q5_1] = dot4r_q5_1,
            [PI_TYPE_Q8_0] = dot4r_q8_0,
            [PI_TYPE_Q2_K] = dot4r_q2_K,
            [PI_TYPE_Q3_K] = dot4r_q3_K,
            [PI_TYPE_Q4_K] = dot4r_q4_K,
            [PI_TYPE_Q5_K] = dot4r_q5_K,
            [PI_TYPE_Q6_K] = dot4r_q6_K,
        },
    .vec_mad4 =
        {
            [PI_TYPE_F16] = vec_mad4_f16,
            [PI_TYPE_Q4_0] = vec_mad4_q4_0,
            [PI_TYPE_Q8_0] = vec_mad4_q8_0,
        },
    .vec_madg4 =
        {
            [PI_TYPE_Q4_0] = vec_madg4_q4_0,
            [PI_TYPE_Q8_0] = vec_madg4_q8_0,
        },
    .dequant =
        {
            [PI_TYPE_F16] = dequant_f16,
        },
};
