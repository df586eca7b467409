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
 * at a time), so the same floats, and the table is "avx512vnni". Q2_K's and Q3_K's scaling of their
 * int16 byte-pair sums (vpmaddwd + vpaddd) becomes vpdpwssd, again the same int32.
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

static float dot_q8_0(const void *w, const void *xq, int64_t n)
{
    const uint8_t *wr[1] = {w};
    float s;
    q8_0_n(wr, 1, NULL, xq, 0, 1, &s, n);
    return s;
}

static void dot4_q8_0(const void *w, const void *xq, size_t xs, float out[4], int64_t n)
{
    const uint8_t *wr[1] = {w};
    q8_0_n(wr, 1, NULL, xq, xs, 4, out, n);
}

static void dot8_q8_0(const void *w, size_t ws, const void *xq, size_t xs, float out[8], int64_t n)
{
    const uint8_t *wr[2] = {w, (const uint8_t *)w + ws};
    q8_0_n(wr, 2, NULL, xq, xs, 4, out, n);
}

static void dot2_q8_0(const void *w0, const void *w1, const void *xq, float out[2], int64_t n)
{
    const uint8_t *wr[2] = {w0, w1};
    float o[8];
    q8_0_n(wr, 2, NULL, xq, 0, 1, o, n);
    out[0] = o[0], out[1] = o[4];
}

static void dot4r_q8_0(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)
{
    const uint8_t *wr[4] = {w[0], w[1], w[2], w[3]};
    float o[16];
    q8_0_n(wr, 4, pf, xq, 0, 1, o, n);
    out[0] = o[0], out[1] = o[4], out[2] = o[8], out[3] = o[12];
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

static float dot_q4_0(const void *w, const void *xq, int64_t n)
{
    const uint8_t *wr[1] = {w};
    float s;
    q4_0_n(wr, 1, NULL, xq, 0, 1, &s, n);
    return s;
}

static void dot4_q4_0(const void *w, const void *xq, size_t xs, float out[4], int64_t n)
{
    const uint8_t *wr[1] = {w};
    q4_0_n(wr, 1, NULL, xq, xs, 4, out, n);
}

static void dot8_q4_0(const void *w, size_t ws, const void *xq, size_t xs, float out[8], int64_t n)
{
    const uint8_t *wr[2] = {w, (const uint8_t *)w + ws};
    q4_0_n(wr, 2, NULL, xq, xs, 4, out, n);
}

static void dot2_q4_0(const void *w0, const void *w1, const void *xq, float out[2], int64_t n)
{
    const uint8_t *wr[2] = {w0, w1};
    float o[8];
    q4_0_n(wr, 2, NULL, xq, 0, 1, o, n);
    out[0] = o[0], out[1] = o[4];
}

static void dot4r_q4_0(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)
{
    const uint8_t *wr[4] = {w[0], w[1], w[2], w[3]};
    float o[16];
    q4_0_n(wr, 4, pf, xq, 0, 1, o, n);
    out[0] = o[0], out[1] = o[4], out[2] = o[8], out[3] = o[12];
}

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

/* The five entry points of one type, each an instantiation of lq_n. */
#define LQ_ENTRIES(T, K)                                                                                               \
    static float dot_##T(const void *w, const void *xq, int64_t n)                                                     \
    {                                                                                                                  \
        const uint8_t *wr[1] = {w};                                                                                    \
        float s;                                                                                                       \
        lq_n(K, wr, 1, NULL, xq, 0, 1, &s, n);                                                                         \
        return s;                                                                                                      \
    }                                                                                                                  \
    static void dot4_##T(const void *w, const void *xq, size_t xs, float out[4], int64_t n)                            \
    {                                                                                                                  \
        const uint8_t *wr[1] = {w};                                                                                    \
        lq_n(K, wr, 1, NULL, xq, xs, 4, out, n);                                                                       \
    }                                                                                                                  \
    static void dot8_##T(const void *w, size_t ws, const void *xq, size_t xs, float out[8], int64_t n)                 \
    {                                                                                                                  \
        const uint8_t *wr[2] = {w, (const uint8_t *)w + ws};                                                           \
        lq_n(K, wr, 2, NULL, xq, xs, 4, out, n);                                                                       \
    }                                                                                                                  \
    static void dot2_##T(const void *w0, const void *w1, const void *xq, float out[2], int64_t n)                      \
    {                                                                                                                  \
        const uint8_t *wr[2] = {w0, w1};                                                                               \
        float o[8];                                                                                                    \
        lq_n(K, wr, 2, NULL, xq, 0, 1, o, n);                                                                          \
        out[0] = o[0], out[1] = o[4];                                                                                  \
    }                                                                                                                  \
    static void dot4r_##T(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)    \
    {                                                                                                                  \
        const uint8_t *wr[4] = {w[0], w[1], w[2], w[3]};                                                               \
        float o[16];                                                                                                   \
        lq_n(K, wr, 4, pf, xq, 0, 1, o, n);                                                                            \
        out[0] = o[0], out[1] = o[4], out[2] = o[8], out[3] = o[12];                                                   \
    }

LQ_ENTRIES(q4_1, LQ_4_1)
LQ_ENTRIES(q5_0, LQ_5_0)
LQ_ENTRIES(q5_1, LQ_5_1)

/* ---------------------------------------------------------------- Q2_K, Q3_K x Q8_K
 * A super-block's 2-bit quants are taken 64 consecutive elements per register: for c = 0, 1 the 32
 * bytes qs[32c ..] hold elements 128c + 32j + l at bit shift 2j, so join(Q, Q >> 2) masked with 3 is
 * elements 128c + 0..63 and the same shifted by 4 elements 128c + 64..127. Register g (0..3) then
 * holds elements 64g .. 64g + 63, i.e. sub-blocks 4g .. 4g + 3 one per 128-bit lane, and each
 * token's activations are plain 64-byte loads (no inserts, so they are reloaded per row instead of
 * kept). The sub-block scales are widened to int16 and spread one per lane with vpermw; the byte
 * products (vpmaddubsw: unsigned quants times int8) are scaled and summed to int32 with vpmaddwd
 * (with VNNI vpdpwssd, the same int32). Q2_K's minimum term dmin * sum_s m[s] * bsums[s] goes
 * through its own accumulator; Q3_K's quants are taken as q2 | 4 * hbit (0..7, i.e. q + 4) and the
 * 4 * sum_s sc[s] * bsums[s] this adds is subtracted from the int32 sums. */
enum lk_kind { LK_2, LK_3 };

/* Block k of token t's Q8_K activations (row t at xq + t * xs). */
static inline const struct pi_block_q8_K *lk_act(const void *xq, size_t xs, int t, int64_t k)
{
    return (const struct pi_block_q8_K *)((const uint8_t *)xq + (size_t)t * xs) + k;
}

/* Lane k of register g (sub-block 4g + k) as int16 in every word of the lane, from 16 int16 s. */
static inline __m512i lk_lane_scales(__m512i s, int g)
{
    const __m512i idx = _mm512_set_epi16(
        4 * g + 3, 4 * g + 3, 4 * g + 3, 4 * g + 3, 4 * g + 3, 4 * g + 3, 4 * g + 3, 4 * g + 3, 4 * g + 2, 4 * g + 2,
        4 * g + 2, 4 * g + 2, 4 * g + 2, 4 * g + 2, 4 * g + 2, 4 * g + 2, 4 * g + 1, 4 * g + 1, 4 * g + 1, 4 * g + 1,
        4 * g + 1, 4 * g + 1, 4 * g + 1, 4 * g + 1, 4 * g, 4 * g, 4 * g, 4 * g, 4 * g, 4 * g, 4 * g, 4 * g);
    return _mm512_permutexvar_epi16(idx, s);
}

/* Q3_K's 16 scales (value - 32) as int16, from the 12 packed bytes (pi_k3_scales' values): low
 * nibbles from bytes 0..7 (scales 0..7 the low, 8..15 the high ones), the top two bits of scale j from
 * byte 8 + j % 4 at shift 2 * (j / 4). */
static inline __m256i lk_k3_scales(const uint8_t *s)
{
    const __m128i m4 = _mm_set1_epi8(0x0F), m2 = _mm_set1_epi8(3);
    __m128i a = _mm_loadl_epi64((const __m128i *)s);
    __m128i lo = _mm_unpacklo_epi64(_mm_and_si128(a, m4), _mm_and_si128(_mm_srli_epi16(a, 4), m4));
    uint32_t h;
    memcpy(&h, s + 8, 4);
    __m128i hi = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32((int)h), _mm_set_epi32(6, 4, 2, 0)), m2);
    __m128i sc = _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32));
    return _mm256_cvtepi8_epi16(sc);
}

/* sum += the int16 pairs of p times the int16 scales s, as int32 (vpmaddwd + vpaddd, or vpdpwssd). */
static inline __m512i lk_madd(__m512i sum, __m512i p, __m512i s)
{
#ifdef PI_AVX512_VNNI
    return _mm512_dpwssd_epi32(sum, p, s);
#else
    return _mm512_add_epi32(sum, _mm512_madd_epi16(p, s));
#endif
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
    __m256 accm[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps(), accm[r][t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const uint8_t *a = wr[r] + (size_t)i * bs;
            if (pf) pi_x86_pf_lines((const uint8_t *)pf[r] + (size_t)i * bs, bs);
            const uint8_t *qs =
                kind == LK_2 ? ((const struct pi_block_q2_K *)a)->qs : ((const struct pi_block_q3_K *)a)->qs;
            __m512i q[4], sc[4], mins = _mm512_setzero_si512();
#pragma GCC unroll 2
            for (int c = 0; c < 2; c++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
                __m512i z = join256(v, _mm256_srli_epi16(v, 2));
                q[2 * c] = _mm512_and_si512(z, m2), q[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(z, 4), m2);
            }
            __m256i s16;
            float dw, dmin = 0;
            if (kind == LK_2) {
                const struct pi_block_q2_K *b2 = (const struct pi_block_q2_K *)a;
                __m128i s = _mm_loadu_si128((const __m128i *)b2->scales);
                s16 = _mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(0x0F)));
                mins = _mm512_castsi256_si512(
                    _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(0x0F))));
                uint32_t dd; /* d and dmin, converted together */
                memcpy(&dd, &b2->d, 4);
                __m128 df = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dd));
                dw = _mm_cvtss_f32(df), dmin = _mm_cvtss_f32(_mm_movehdup_ps(df));
            } else {
                const struct pi_block_q3_K *b3 = (const struct pi_block_q3_K *)a;
                s16 = lk_k3_scales(b3->scales);
                /* the high bits: join(H, H >> 1) has at bit 2g of byte l the hmask bit of register
                 * g's element l (first half) and 32 + l (second half); where it is set, q += 4 */
                __m256i h = _mm256_loadu_si256((const __m256i *)b3->hmask);
                __m512i hz = join256(h, _mm256_srli_epi16(h, 1));
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++)
                    q[g] = _mm512_mask_add_epi8(q[g], _mm512_test_epi8_mask(hz, _mm512_set1_epi8((char)(1 << (2 * g)))),
                                                q[g], k4);
                dw = pi_x86_h2f(b3->d);
            }
            __m512i s512 = _mm512_castsi256_si512(s16);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) sc[g] = lk_lane_scales(s512, g);
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const struct pi_block_q8_K *b = lk_act(xq, xs, t, i);
                __m512i sumi = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++) {
                    __m512i y = _mm512_loadu_si512((const void *)(b->qs + 64 * g));
                    sumi = lk_madd(sumi, _mm512_maddubs_epi16(q[g], y), sc[g]);
                }
                __m256i bsums = _mm256_loadu_si256((const __m256i *)b->bsums);
                if (kind == LK_2) {
                    __m256i mb = _mm256_madd_epi16(_mm512_castsi512_si256(mins), bsums);
                    accm[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(b->d * dmin), _mm256_cvtepi32_ps(mb), accm[r][t]);
                } else {
                    __m256i sb = _mm256_slli_epi32(_mm256_madd_epi16(s16, bsums), 2);
                    sumi = _mm512_sub_epi32(sumi, _mm512_zextsi256_si512(sb));
                }
                acc[r][t] = _mm512_fmadd_ps(_mm512_set1_ps(b->d * dw), _mm512_cvtepi32_ps(sumi), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) {
            float s = hsum512(acc[r][t]);
            if (kind == LK_2) s -= hsum256(accm[r][t]);
            out[r * 4 + t] = s;
        }
}

/* The entry points of one type, each an instantiation of lk_n. */
#define LK_ENTRIES(T, K)                                                                                               \
    static float dot_##T(const void *w, const void *xq, int64_t n)                                                     \
    {                                                                                                                  \
        const uint8_t *wr[1] = {w};                                                                                    \
        float s;                                                                                                       \
        lk_n(K, wr, 1, NULL, xq, 0, 1, &s, n);                                                                         \
        return s;                                                                                                      \
    }                                                                                                                  \
    static void dot4_##T(const void *w, const void *xq, size_t xs, float out[4], int64_t n)                            \
    {                                                                                                                  \
        const uint8_t *wr[1] = {w};                                                                                    \
        lk_n(K, wr, 1, NULL, xq, xs, 4, out, n);                                                                       \
    }                                                                                                                  \
    static void dot8_##T(const void *w, size_t ws, const void *xq, size_t xs, float out[8], int64_t n)                 \
    {                                                                                                                  \
        const uint8_t *wr[2] = {w, (const uint8_t *)w + ws};                                                           \
        lk_n(K, wr, 2, NULL, xq, xs, 4, out, n);                                                                       \
    }                                                                                                                  \
    static void dot2_##T(const void *w0, const void *w1, const void *xq, float out[2], int64_t n)                      \
    {                                                                                                                  \
        const uint8_t *wr[2] = {w0, w1};                                                                               \
        float o[8];                                                                                                    \
        lk_n(K, wr, 2, NULL, xq, 0, 1, o, n);                                                                          \
        out[0] = o[0], out[1] = o[4];                                                                                  \
    }                                                                                                                  \
    static void dot4r_##T(const void *const w[4], const void *const pf[4], const void *xq, float out[4], int64_t n)    \
    {                                                                                                                  \
        const uint8_t *wr[4] = {w[0], w[1], w[2], w[3]};                                                               \
        float o[16];                                                                                                   \
        lk_n(K, wr, 4, pf, xq, 0, 1, o, n);                                                                            \
        out[0] = o[0], out[1] = o[4], out[2] = o[8], out[3] = o[12];                                                   \
    }

LK_ENTRIES(q2_K, LK_2)
LK_ENTRIES(q3_K, LK_3)

/* ---------------------------------------------------------------- K-quants x Q8_K */

/* Block k of token t's Q8_K activations. */
static inline const struct pi_block_q8_K *act_q8_K(const void *xq, size_t xs, int t, int64_t k)
{
    return (const struct pi_block_q8_K *)((const uint8_t *)xq + (size_t)t * xs) + k;
}

/* nt (1..4) tokens: the nibbles and the broadcast sub-block scales of a block are unpacked once; each
 * token keeps dot_q4_K's two accumulators and operation order. */
PI_X86_INLINE void q4_K_n(const void *w, const void *xq, size_t xs, float *out, int64_t n, int nt)
{
    const struct pi_block_q4_K *a = w;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m512 acc[4];
    __m128 accm[4];
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps(), accm[t] = _mm_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        __m128i k4 = pi_x86_k4_scales(a[i].scales);
        __m512i sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(k4)); /* 8 x i16 scales in every lane */
        float dw = pi_x86_h2f(a[i].d), dmin = pi_x86_h2f(a[i].dmin);
        __m512i qq[4], scj[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * j));
            qq[j] = join256(_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
            /* scale 2j for the low 256 bits, 2j+1 for the high */
            scj[j] = _mm512_shuffle_epi8(sc, join256(pi_x86_bcast16_ctl(2 * j), pi_x86_bcast16_ctl(2 * j + 1)));
        }
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct pi_block_q8_K *b = act_q8_K(xq, xs, t, i);
            float dy = b->d;
            accm[t] = _mm_fmadd_ps(_mm_set1_ps(dy * dmin), _mm_cvtepi32_ps(pi_x86_k4_minsum(k4, b->bsums)), accm[t]);
            __m512i sumi = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                __m512i p = _mm512_maddubs_epi16(qq[j], _mm512_loadu_si512((const void *)(b->qs + 64 * j)));
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, scj[j]));
            }
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(dy * dw), _mm512_cvtepi32_ps(sumi), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) {
        __m128 m = _mm_add_ps(accm[t], _mm_movehl_ps(accm[t], accm[t]));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        out[t] = hsum512(acc[t]) - _mm_cvtss_f32(m);
    }
}

static float dot_q4_K(const void *w, const void *xq, int64_t n)
{
    float s;
    q4_K_n(w, xq, 0, &s, n, 1);
    return s;
}

static void dot4_q4_K(const void *w, const void *xq, size_t xs, float out[4], int64_t n)
{
    q4_K_n(w, xq, xs, out, n, 4);
}

/* 32 x int16 scales, one per 128-bit lane: s[0], s[1], s[2], s[3]. */
static inline __m512i lane4_scales(const int8_t *s)
{
    __m256i lo = _mm256_set_m128i(_mm_set1_epi16(s[1]), _mm_set1_epi16(s[0]));
    __m256i hi = _mm256_set_m128i(_mm_set1_epi16(s[3]), _mm_set1_epi16(s[2]));
    return join256(lo, hi);
}

/* nt (1..4) tokens: a block's 6-bit quants and scale vectors are unpacked once; each token keeps
 * dot_q6_K's accumulator and operation order. Elements 128c + 0..63 take the low nibbles of
 * ql[64c .. 64c+63] and qh bits 0-1 / 2-3; 128c + 64..127 the high nibbles and qh bits 4-5 / 6-7. */
PI_X86_INLINE void q6_K_n(const void *w, const void *xq, size_t xs, float *out, int64_t n, int nt)
{
    const struct pi_block_q6_K *a = w;
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(3), k32 = _mm512_set1_epi8(32);
    __m512 acc[4];
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        __m512i qA[2], qB[2], sA[2], sB[2];
        for (int c = 0; c < 2; c++) {
            __m512i l = _mm512_loadu_si512((const void *)(a[i].ql + 64 * c));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * c));
            __m512i hA = join256(qh, _mm256_srli_epi16(qh, 2)),
                    hB = join256(_mm256_srli_epi16(qh, 4), _mm256_srli_epi16(qh, 6));
            qA[c] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(hA, m2), 4));
            qB[c] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                    _mm512_slli_epi16(_mm512_and_si512(hB, m2), 4));
            sA[c] = lane4_scales(a[i].scales + 8 * c);
            sB[c] = lane4_scales(a[i].scales + 8 * c + 4);
        }
        float dw = pi_x86_h2f(a[i].d);
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct pi_block_q8_K *b = act_q8_K(xq, xs, t, i);
            __m512i sumi = _mm512_setzero_si512();
            for (int c = 0; c < 2; c++) {
                const int8_t *y = b->qs + 128 * c;
                __m512i yA = _mm512_loadu_si512((const void *)y), yB = _mm512_loadu_si512((const void *)(y + 64));
                __m512i pA = _mm512_sub_epi16(_mm512_maddubs_epi16(qA[c], yA), _mm512_maddubs_epi16(k32, yA));
                __m512i pB = _mm512_sub_epi16(_mm512_maddubs_epi16(qB[c], yB), _mm512_maddubs_epi16(k32, yB));
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(pA, sA[c]));
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(pB, sB[c]));
            }
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(b->d * dw), _mm512_cvtepi32_ps(sumi), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) out[t] = hsum512(acc[t]);
}

static float dot_q6_K(const void *w, const void *xq, int64_t n)
{
    float s;
    q6_K_n(w, xq, 0, &s, n, 1);
    return s;
}

static void dot4_q6_K(const void *w, const void *xq, size_t xs, float out[4], int64_t n)
{
    q6_K_n(w, xq, xs, out, n, 4);
}

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

static void vec_mad4_f16(const void *const row[4], const float a[4], int m, const void *const pf[4], float *y,
                         int64_t n)
{
    switch (m) {
    case 1: mad_f16_n(row, a, 1, pf, y, n); break;
    case 2: mad_f16_n(row, a, 2, pf, y, n); break;
    case 3: mad_f16_n(row, a, 3, pf, y, n); break;
    default: mad_f16_n(row, a, 4, pf, y, n); break;
    }
}

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

static void vec_mad4_q8_0(const void *const row[4], const float a[4], int m, const void *const pf[4], float *y,
                          int64_t n)
{
    switch (m) {
    case 1: mad_q8_0_n(row, a, 1, pf, y, n); break;
    case 2: mad_q8_0_n(row, a, 2, pf, y, n); break;
    case 3: mad_q8_0_n(row, a, 3, pf, y, n); break;
    default: mad_q8_0_n(row, a, 4, pf, y, n); break;
    }
}

#ifdef PI_AVX512_VNNI
const struct pi_kernel_table pi_kernels_avx512vnni_raw = {
    .name = "avx512vnni",
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
        },
    .vec_mad4 =
        {
            [PI_TYPE_F16] = vec_mad4_f16,
            [PI_TYPE_Q8_0] = vec_mad4_q8_0,
        },
    .dequant =
        {
            [PI_TYPE_F16] = dequant_f16,
        },
};
