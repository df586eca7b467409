/*
 * kernels/cpu/rows16-vnni.c - the AVX512-VNNI kernels over Q4_0, Q8_0 and K-quant matrices packed in 16-row groups
 * (kernels/cpu/rows16.h), compiled with -mavx512vnni into libpinfer_avx512vnni.a and reached only
 * through the avx512vnni table (kernels/cpu/dispatch.c) after the CPUID check.
 *
 * Per block and group: four 64-byte loads give the 16 rows' 16 nibble bytes; masking and a shift
 * split each into the low nibbles (inputs 4j..4j+3) and high nibbles (16+4j..16+4j+3) of every row.
 * Per token, eight vpdpbusd against the matching 4 activation bytes broadcast accumulate the 16 rows'
 * exact int32 sums, two chains of four started from the offset term -8 * sum(x) and 0, then one add
 * (exact), one conversion and one fma per block: acc = fma(d_w * d_x, (float)isum, acc), the scalar
 * reference's steps, so the results are its bits. Tokens go four at a time: the unpacked block stays
 * in registers for the four, and the four tokens' accumulators are independent. No horizontal sum:
 * lane r is row r. That is the Q4_0 kernel; Q8_0's and the K-quants' (r16_q45k_n, r16_q6k_n: the
 * same scheme per sub-block, the scales applied to exact int32 sums) say how they differ where they
 * are defined.
 */
#include "config.h"

#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/quant-impl.h"
#include "kernels/cpu/rows16.h"
#include "kernels/cpu/simd-x86.h"

#define R16_NT 4 /* tokens per pass over a group's blocks */

/* The body of every pi_r16_dot_fn below: the call's nt tokens through kern(grp, x, t0', n, y', ystride),
 * R16_NT at a time, then the 1 to 3 left, each count a constant so that the kernel unrolls for it. */
#define R16_BY_FOURS(kern)                                                                                             \
    do {                                                                                                               \
        int64_t t_ = 0;                                                                                                \
        for (; t_ + R16_NT <= nt; t_ += R16_NT) kern(grp, x, t0 + t_, R16_NT, y + (size_t)t_ * ystride, ystride);      \
        switch (nt - t_) {                                                                                             \
        case 1: kern(grp, x, t0 + t_, 1, y + (size_t)t_ * ystride, ystride); break;                                    \
        case 2: kern(grp, x, t0 + t_, 2, y + (size_t)t_ * ystride, ystride); break;                                    \
        case 3: kern(grp, x, t0 + t_, 3, y + (size_t)t_ * ystride, ystride); break;                                    \
        default: break;                                                                                                \
        }                                                                                                              \
    } while (0)
#ifndef R16_PF
#define R16_PF 1024
#endif

static inline __m512i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* Q4_0: nt (1..R16_NT) tokens t0.. against one group; see the file comment. */
PI_X86_INLINE void r16_n(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int nt, float *y, size_t ys)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const int64_t nb = x->nb;
    __m512 acc[R16_NT];
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *q = grp + pi_r16_qs_at(4, b);
        __m512i lo[4], hi[4];
        if (R16_PF) { /* the lines R16_PF ahead: this block's 4, and the pair's scale line */
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) pi_x86_pf_line(q + R16_PF + 64 * j);
            if (b & 1) pi_x86_pf_line(q + R16_PF + 256);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m512i v = _mm512_load_si512((const void *)(q + 64 * j));
            lo[j] = _mm512_and_si512(v, m4);
            hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        }
        __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(grp + pi_r16_d_at(4, b))));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const int64_t tt = t0 + t;
            const struct pi_block_q8_0 *xb = (const struct pi_block_q8_0 *)(x->xq + (size_t)tt * x->xstride) + b;
            __m512i s0 = _mm512_set1_epi32(x->off[tt * nb + b]), s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                s0 = _mm512_dpbusd_epi32(s0, lo[j], bcast4(xb->qs + 4 * j));
                s1 = _mm512_dpbusd_epi32(s1, hi[j], bcast4(xb->qs + 16 + 4 * j));
            }
            __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(x->dx[tt * nb + b]));
            acc[t] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) _mm512_storeu_ps(y + (size_t)t * ys, acc[t]);
}

/* Q8_0: nt (1..R16_NT) tokens t0.. against one group. Weights are signed, so the unsigned operand of
 * vpdpbusd is the activations plus 128 (x->xu), and each row's block sum starts from -128 * sum(w),
 * itself eight vpdpbusd of the weights against ones, once per block for all the tokens. */
PI_X86_INLINE void r16_q8_n(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int nt, float *y, size_t ys)
{
    const __m512i ones = _mm512_set1_epi8(1);
    const int64_t nb = x->nb;
    __m512 acc[R16_NT];
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *q = grp + pi_r16_qs_at(8, b);
        __m512i w[8], c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512();
        if (R16_PF) { /* twice as far ahead in bytes as Q4_0: the same number of blocks */
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) pi_x86_pf_line(q + 2 * R16_PF + 64 * j);
            if (b & 1) pi_x86_pf_line(q + 2 * R16_PF + 512);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            w[j] = _mm512_load_si512((const void *)(q + 64 * j));
            w[4 + j] = _mm512_load_si512((const void *)(q + 256 + 64 * j));
            c0 = _mm512_dpbusd_epi32(c0, ones, w[j]);
            c1 = _mm512_dpbusd_epi32(c1, ones, w[4 + j]);
        }
        const __m512i base = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_add_epi32(c0, c1), 7));
        __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(grp + pi_r16_d_at(8, b))));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const int64_t tt = t0 + t;
            const int8_t *xb = (const int8_t *)(x->xu + (size_t)(tt * nb + b) * 32);
            __m512i s0 = base, s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                s0 = _mm512_dpbusd_epi32(s0, bcast4(xb + 4 * j), w[j]);
                s1 = _mm512_dpbusd_epi32(s1, bcast4(xb + 16 + 4 * j), w[4 + j]);
            }
            __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(x->dx[tt * nb + b]));
            acc[t] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) _mm512_storeu_ps(y + (size_t)t * ys, acc[t]);
}

void pi_r16_dot_avx512vnni_q8_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    R16_BY_FOURS(r16_q8_n);
}

void pi_r16_dot_avx512vnni_q4_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    R16_BY_FOURS(r16_n);
}

/* v shifted left by s bits (right by -s) in 16-bit lanes; s a constant after inlining. */
PI_X86_INLINE __m512i shl16(__m512i v, int s)
{
    return s > 0 ? _mm512_slli_epi16(v, (unsigned)s) : s < 0 ? _mm512_srli_epi16(v, (unsigned)-s) : v;
}

/* Q4_K and Q5_K: nt (1..R16_NT) tokens t0.. against one group (rows16.h). Per super-block and pair c
 * of sub-blocks, eight 64-byte loads give the 16 rows' 32 quant bytes of the pair; a mask and a shift
 * split them into sub-block 2c (low nibbles) and 2c + 1 (high), unsigned (Q5_K: each with its fifth
 * bit shifted out of the pair's two bit lines into bit 4 and merged by one vpternlogd), which vpdpbusd
 * takes as they are against the token's signed bytes: per sub-block an exact int32 sum per row, times
 * the rows' scales (vpmulld) into isum. The mins' term is four vpdpwssd of the rows' mins in int16
 * pairs against the token's sub-block sums (x->xs2). Then the two float steps of the reference. */
PI_X86_INLINE void r16_q45k_n(bool q5, const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int nt, float *y,
                              size_t ys)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), b4 = _mm512_set1_epi8(0x10);
    const struct pi_r16_k45 G = pi_r16_k45(q5);
    const int64_t nsb = x->nb;
    __m512 acc[R16_NT];
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *base = grp + (size_t)sb * G.sb;
        __m512i isum[R16_NT];
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) isum[t] = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            const uint8_t *q = base + G.pair * (size_t)c;
            __m512i lo[8], hi[8];
            if (R16_PF) {
                for (int j = 0; j < (q5 ? 10 : 8); j++) pi_x86_pf_line(q + R16_PF + 64 * j);
            }
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                __m512i v = _mm512_load_si512((const void *)(q + 64 * j));
                if (q5) { /* fifth bits of line j: bits 2i and 2i + 1 of bit line j / 4 (i = j % 4) */
                    const __m512i h = _mm512_load_si512((const void *)(q + 512 + 64 * (j / 4)));
                    const int i = j % 4;
                    lo[j] = _mm512_ternarylogic_epi32(v, m4, _mm512_and_si512(shl16(h, 4 - 2 * i), b4), 0xEA);
                    hi[j] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), m4,
                                                      _mm512_and_si512(shl16(h, 3 - 2 * i), b4), 0xEA);
                    continue;
                }
                lo[j] = _mm512_and_si512(v, m4);
                hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
            const __m512i sc0 =
                _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(const void *)(base + G.sc + 32 * c)));
            const __m512i sc1 =
                _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(const void *)(base + G.sc + 32 * c + 16)));
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const int8_t *xb = (const int8_t *)(x->xq + (size_t)(t0 + t) * x->xstride +
                                                    (size_t)sb * sizeof(struct pi_block_q8_K) + 4) +
                                   64 * c;
                __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) {
                    s0 = _mm512_dpbusd_epi32(s0, lo[j], bcast4(xb + 4 * j));
                    s1 = _mm512_dpbusd_epi32(s1, hi[j], bcast4(xb + 32 + 4 * j));
                }
                isum[t] = _mm512_add_epi32(isum[t],
                                           _mm512_add_epi32(_mm512_mullo_epi32(s0, sc0), _mm512_mullo_epi32(s1, sc1)));
            }
        }
        if (R16_PF) {
#pragma GCC unroll 5
            for (int j = 0; j < 5; j++) pi_x86_pf_line(base + G.sc + R16_PF + 64 * j);
        }
        __m512i mp[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            mp[i] = _mm512_cvtepu8_epi16(_mm256_load_si256((const __m256i *)(const void *)(base + G.m + 32 * i)));
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(base + G.d)));
        const __m512 dm = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(base + G.dmin)));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const int64_t tt = t0 + t;
            const int32_t *s2 = x->xs2 + (tt * nsb + sb) * 4;
            __m512i ms = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) ms = _mm512_dpwssd_epi32(ms, mp[i], _mm512_set1_epi32(s2[i]));
            const __m512 dx = _mm512_set1_ps(x->dx[tt * nsb + sb]);
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum[t]), acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(dm, dx), _mm512_cvtepi32_ps(ms), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) _mm512_storeu_ps(y + (size_t)t * ys, acc[t]);
}

PI_X86_INLINE void r16_q4k_n(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int nt, float *y, size_t ys)
{
    r16_q45k_n(false, grp, x, t0, nt, y, ys);
}

PI_X86_INLINE void r16_q5k_n(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int nt, float *y, size_t ys)
{
    r16_q45k_n(true, grp, x, t0, nt, y, ys);
}

void pi_r16_dot_avx512vnni_q4_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    R16_BY_FOURS(r16_q4k_n);
}

void pi_r16_dot_avx512vnni_q5_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    R16_BY_FOURS(r16_q5k_n);
}

/* Q6_K: nt (1..R16_NT) tokens t0.. against one group (rows16.h). Per super-block and pair c of 32-element
 * halves, eight lines of low nibbles and four of high bit pairs (each serving two of the low lines)
 * give the 16 rows' 6-bit values (0..63, unsigned for vpdpbusd) of halves 2c and 2c + 1, each value
 * two or three instructions (the high bits masked into place, one vpternlogd to merge); per token, four
 * vpdpbusd chains (each half's two sub-blocks of 16) times the rows' scales (vpmulld) into isum.
 * The -32 offset's term is eight vpdpwssd of the scales in int16 pairs against the token's Q8_K sums
 * of 16 (pairs of bsums are one 32-bit word as they lie). Then the reference's float step. */
PI_X86_INLINE void r16_q6k_n(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int nt, float *y, size_t ys)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const int64_t nsb = x->nb;
    __m512 acc[R16_NT];
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *base = grp + (size_t)sb * PI_R16_Q6K_SB;
        const uint8_t *xrow[R16_NT];
        __m512i isum[R16_NT];
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            isum[t] = _mm512_setzero_si512();
            xrow[t] = x->xq + (size_t)(t0 + t) * x->xstride + (size_t)sb * sizeof(struct pi_block_q8_K);
        }
        for (int c = 0; c < 4; c++) {
            const uint8_t *q = base + PI_R16_Q6K_PAIR * c;
            __m512i w0[8], w1[8];
            if (R16_PF) {
#pragma GCC unroll 12
                for (int j = 0; j < 12; j++) pi_x86_pf_line(q + R16_PF + 64 * j);
            }
            /* (A & B) | C: the low bits of A under mask B, then the high bits C already in place */
#define R16_MERGE(a, hb) _mm512_ternarylogic_epi32((a), m4, (hb), 0xEA)
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const __m512i v0 = _mm512_load_si512((const void *)(q + 64 * j));
                const __m512i v1 = _mm512_load_si512((const void *)(q + 64 * (j + 4)));
                const __m512i h = _mm512_load_si512((const void *)(q + 64 * (8 + j)));
                w0[j] = R16_MERGE(v0, _mm512_and_si512(_mm512_slli_epi16(h, 4), m30));
                w1[j] = R16_MERGE(_mm512_srli_epi16(v0, 4), _mm512_and_si512(_mm512_slli_epi16(h, 2), m30));
                w0[j + 4] = R16_MERGE(v1, _mm512_and_si512(h, m30));
                w1[j + 4] = R16_MERGE(_mm512_srli_epi16(v1, 4), _mm512_and_si512(_mm512_srli_epi16(h, 2), m30));
            }
#undef R16_MERGE
            /* the scales of sub-blocks 4c..4c+3 (halves 2c and 2c + 1, two each) as int32 lanes */
            const __m512i p0 =
                _mm512_cvtepi8_epi16(_mm256_load_si256((const __m256i *)(const void *)(base + PI_R16_Q6K_SC + 64 * c)));
            const __m512i p1 = _mm512_cvtepi8_epi16(
                _mm256_load_si256((const __m256i *)(const void *)(base + PI_R16_Q6K_SC + 64 * c + 32)));
            const __m512i sc0 = _mm512_srai_epi32(_mm512_slli_epi32(p0, 16), 16), sc1 = _mm512_srai_epi32(p0, 16);
            const __m512i sc2 = _mm512_srai_epi32(_mm512_slli_epi32(p1, 16), 16), sc3 = _mm512_srai_epi32(p1, 16);
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const int8_t *xb = (const int8_t *)(xrow[t] + 4) + 64 * c;
                __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
                __m512i b0 = _mm512_setzero_si512(), b1 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    a0 = _mm512_dpbusd_epi32(a0, w0[j], bcast4(xb + 4 * j));
                    a1 = _mm512_dpbusd_epi32(a1, w0[4 + j], bcast4(xb + 16 + 4 * j));
                    b0 = _mm512_dpbusd_epi32(b0, w1[j], bcast4(xb + 32 + 4 * j));
                    b1 = _mm512_dpbusd_epi32(b1, w1[4 + j], bcast4(xb + 48 + 4 * j));
                }
                __m512i s = _mm512_add_epi32(_mm512_mullo_epi32(a0, sc0), _mm512_mullo_epi32(a1, sc1));
                s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_mullo_epi32(b0, sc2), _mm512_mullo_epi32(b1, sc3)));
                isum[t] = _mm512_add_epi32(isum[t], s);
            }
        }
        if (R16_PF) {
#pragma GCC unroll 5
            for (int j = 0; j < 5; j++) pi_x86_pf_line(base + PI_R16_Q6K_SC + R16_PF + 64 * j);
        }
        __m512i sp[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            sp[i] =
                _mm512_cvtepi8_epi16(_mm256_load_si256((const __m256i *)(const void *)(base + PI_R16_Q6K_SC + 32 * i)));
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(base + PI_R16_Q6K_D)));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const uint8_t *bs = xrow[t] + 4 + 256; /* the Q8_K block's bsums */
            __m512i corr = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                int32_t w;
                memcpy(&w, bs + 4 * i, 4);
                corr = _mm512_dpwssd_epi32(corr, sp[i], _mm512_set1_epi32(w));
            }
            const __m512i tot = _mm512_sub_epi32(isum[t], _mm512_slli_epi32(corr, 5));
            const __m512 dx = _mm512_set1_ps(x->dx[(t0 + t) * nsb + sb]);
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(tot), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) _mm512_storeu_ps(y + (size_t)t * ys, acc[t]);
}

void pi_r16_dot_avx512vnni_q6_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    R16_BY_FOURS(r16_q6k_n);
}
