/*
 * kernels/cpu/attn-avx512.c - pi_attn_tile's kernels on AVX-512 (contract in kernels/cpu/attn-impl.h):
 * f16 and f32 caches, head_dim a multiple of 16, at most 256, and the softmax between them. Compiled
 * with the AVX-512 flags into libpinfer_avx512.a; kernels/cpu/ops.c calls it only when the active
 * variant is AVX-512 or above.
 *
 * Scores: the keys go in blocks of 16 rows (an f16 block widened once into floats), each block against
 * every query while it is in L1: per query and row one accumulator (the first chunk a multiply, the
 * rest FMAs in chunk order), the 16 accumulators reduced across lanes together (sum16x16, the order of
 * _mm512_reduce_add_ps for each), so the reductions cost about 3 instructions a score instead of 8. Values: each query's output is held
 * in registers, a block of chunks at a time (the queries' accumulators fill at most 24 registers),
 * while the rows stream; p broadcast, one FMA per chunk, query and row, in row order. A query with fewer
 * rows than the others stops at its own count (the rows past it are skipped for it, not weighted 0).
 */
#include "config.h"

#include <immintrin.h>

#include "kernels/cpu/attn-impl.h"
#include "kernels/cpu/vexp-x86.h"
#include "lib/common.h"

#define MAX_CHUNKS 16 /* head_dim 256 */
#define ACC_REGS 24   /* accumulators of one block of the values' pass */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Elements 16c..16c+15 of row t as floats: halves widened (F16 = 1) or floats loaded (F16 = 0). */
ALWAYS_INLINE __m512 ld16(const void *base, size_t stride, int t, int c, const int F16)
{
    const char *row = (const char *)base + (size_t)t * stride;
    if (F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)row + c));
    return _mm512_loadu_ps((const float *)row + 16 * c);
}

/* Lane i = the sum of a[i]'s 16 lanes, for 16 accumulators at once, each by the same tree whatever its
 * neighbours: x_l = (a_l + a_l+8) + (a_l+4 + a_l+12) for l < 4, then (x_0 + x_2) + (x_1 + x_3) (the
 * order of _mm512_reduce_add_ps, in 45 instructions for 16 sums instead of 16 x 8). */
ALWAYS_INLINE __m512 sum16x16(const __m512 *a)
{
    __m512 b[8], c[4], d[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xee));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_unpacklo_ps(c[2 * i], c[2 * i + 1]), _mm512_unpackhi_ps(c[2 * i], c[2 * i + 1]));
    const __m512d d0 = _mm512_castps_pd(d[0]), d1 = _mm512_castps_pd(d[1]);
    const __m512 e =
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(d0, d1)), _mm512_castpd_ps(_mm512_unpackhi_pd(d0, d1)));
    /* e's lane 4m + p holds the sum of a[m + 4p] */
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), e);
}

/* s (nt) = scale * (q . k_t) for the nt <= 16 float rows at k (stride bytes apart): each row's chunks
 * into its own accumulator (the first a multiply, the rest FMAs in chunk order), then sum16x16. Rows
 * past nt repeat row nt - 1 and are not stored. NC: the chunks when known at compile time (the query
 * is then held in registers), else 0 and nc. Row by row, one pointer stepping by stride. */
ALWAYS_INLINE void scores_block(float *s, const float *q, const char *k, size_t stride, const int nt, const int NC,
                                int nc, float scale)
{
    __m512 a[16], qv[8];
    if (NC)
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) qv[c] = _mm512_loadu_ps(q + 16 * c);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
        const float *row = (const float *)(k + (size_t)(i < nt ? i : nt - 1) * stride);
        if (NC) {
            a[i] = _mm512_mul_ps(qv[0], _mm512_loadu_ps(row));
#pragma GCC unroll 8
            for (int c = 1; c < NC; c++) a[i] = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(row + 16 * c), a[i]);
        } else {
            a[i] = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(row));
            for (int c = 1; c < nc; c++)
                a[i] = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c), _mm512_loadu_ps(row + 16 * c), a[i]);
        }
    }
    const __m512 r = _mm512_mul_ps(_mm512_set1_ps(scale), sum16x16(a));
    if (nt == 16) _mm512_storeu_ps(s, r);
    else _mm512_mask_storeu_ps(s, (__mmask16)((1u << nt) - 1), r);
}

/* Every query against one block of nt rows, full blocks specialised. */
ALWAYS_INLINE void scores_queries(float *scores, size_t ld, const float *const *q, int g, const char *kb, size_t ks,
                                  int nt, const int NC, int nc, float scale)
{
    if (nt == 16)
        for (int j = 0; j < g; j++) scores_block(scores + (size_t)j * ld, q[j], kb, ks, 16, NC, nc, scale);
    else
        for (int j = 0; j < g; j++) scores_block(scores + (size_t)j * ld, q[j], kb, ks, nt, NC, nc, scale);
}

/* Blocks of 16 keys, each block against every query while it is in L1 (an f16 block widened once into
 * buf first). A score's operations are its own query's and key's alone, so every query gets the bits
 * it gets alone. */
ALWAYS_INLINE void scores_any(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                              int n_kv, int hd, float scale, const int F16)
{
    const int nc = hd / 16;
    PI_ASSERT(hd % 16 == 0 && nc >= 1 && nc <= MAX_CHUNKS && g >= 1 && g <= PI_ATTN_GROUP_MAX);
    float buf[16 * 16 * MAX_CHUNKS]; /* a block of 16 f16 rows as floats (unused for f32) */
    for (int t0 = 0; t0 < n_kv; t0 += 16) {
        const int nt = PI_MIN(16, n_kv - t0);
        const char *kb = (const char *)k + (size_t)t0 * stride;
        size_t ks = stride;
        if (F16) {
            for (int i = 0; i < nt; i++)
                for (int c = 0; c < nc; c++) _mm512_storeu_ps(buf + (size_t)i * hd + 16 * c, ld16(kb, stride, i, c, 1));
            kb = (const char *)buf, ks = (size_t)hd * sizeof(float);
        }
        float *st = scores + t0;
        switch (nc) {
        case 4: scores_queries(st, ld, q, g, kb, ks, nt, 4, 4, scale); break;
        case 8: scores_queries(st, ld, q, g, kb, ks, nt, 8, 8, scale); break;
        default: scores_queries(st, ld, q, g, kb, ks, nt, 0, nc, scale); break;
        }
    }
}

void pi_attn_scores_f16_avx512(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                               int n_kv, int hd, float scale)
{
    scores_any(scores, ld, q, g, k, stride, n_kv, hd, scale, 1);
}

void pi_attn_scores_f32_avx512(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                               int n_kv, int hd, float scale)
{
    scores_any(scores, ld, q, g, k, stride, n_kv, hd, scale, 0);
}

/* Chunks [c0, c0 + CB) of G queries' outputs (compile-time G and CB, G * CB <= ACC_REGS): rows below
 * every query's count for all of them, then the rows up to the largest count for those that have them. */
ALWAYS_INLINE void mix_block(float *const *out, const float *p, size_t ld, const int *n_kv, int lo, int hi, const int G,
                             const int CB, const void *v, size_t stride, int c0, const int F16)
{
    __m512 acc[ACC_REGS];
#pragma GCC unroll 24
    for (int i = 0; i < G * CB; i++) acc[i] = _mm512_setzero_ps();
    for (int t = 0; t < lo; t++) {
        __m512 w[PI_ATTN_GROUP_MAX];
#pragma GCC unroll 8
        for (int j = 0; j < G; j++) w[j] = _mm512_set1_ps(p[(size_t)j * ld + t]);
#pragma GCC unroll 16
        for (int c = 0; c < CB; c++) {
            const __m512 vc = ld16(v, stride, t, c0 + c, F16);
#pragma GCC unroll 8
            for (int j = 0; j < G; j++) acc[j * CB + c] = _mm512_fmadd_ps(w[j], vc, acc[j * CB + c]);
        }
    }
    for (int t = lo; t < hi; t++)
#pragma GCC unroll 16
        for (int c = 0; c < CB; c++) {
            const __m512 vc = ld16(v, stride, t, c0 + c, F16);
#pragma GCC unroll 8
            for (int j = 0; j < G; j++)
                if (t < n_kv[j])
                    acc[j * CB + c] = _mm512_fmadd_ps(_mm512_set1_ps(p[(size_t)j * ld + t]), vc, acc[j * CB + c]);
        }
#pragma GCC unroll 8
    for (int j = 0; j < G; j++)
#pragma GCC unroll 16
        for (int c = 0; c < CB; c++) _mm512_storeu_ps(out[j] + 16 * (c0 + c), acc[j * CB + c]);
}

/* G queries: blocks of 16, 8, 4, 2 and 1 chunks, the largest first that keeps G * CB <= ACC_REGS (each
 * block streams the rows once; hd 128 with up to 2 queries is one block). */
ALWAYS_INLINE void mix_g(float *const *out, const float *p, size_t ld, const int *n_kv, const int G, const void *v,
                         size_t stride, int nc, const int F16)
{
    int lo = n_kv[0], hi = n_kv[0];
    for (int j = 1; j < G; j++) lo = PI_MIN(lo, n_kv[j]), hi = PI_MAX(hi, n_kv[j]);
    int c0 = 0;
    if (G * 16 <= ACC_REGS)
        for (; c0 + 16 <= nc; c0 += 16) mix_block(out, p, ld, n_kv, lo, hi, G, 16, v, stride, c0, F16);
    if (G * 8 <= ACC_REGS)
        for (; c0 + 8 <= nc; c0 += 8) mix_block(out, p, ld, n_kv, lo, hi, G, 8, v, stride, c0, F16);
    if (G * 4 <= ACC_REGS)
        for (; c0 + 4 <= nc; c0 += 4) mix_block(out, p, ld, n_kv, lo, hi, G, 4, v, stride, c0, F16);
    if (G * 2 <= ACC_REGS)
        for (; c0 + 2 <= nc; c0 += 2) mix_block(out, p, ld, n_kv, lo, hi, G, 2, v, stride, c0, F16);
    for (; c0 < nc; c0++) mix_block(out, p, ld, n_kv, lo, hi, G, 1, v, stride, c0, F16);
}

ALWAYS_INLINE void mix_any(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                           size_t stride, int hd, const int F16)
{
    const int nc = hd / 16;
    PI_ASSERT(hd % 16 == 0 && nc >= 1 && nc <= MAX_CHUNKS && g >= 1 && g <= PI_ATTN_GROUP_MAX);
    switch (g) {
    case 1: mix_g(out, p, ld, n_kv, 1, v, stride, nc, F16); break;
    case 2: mix_g(out, p, ld, n_kv, 2, v, stride, nc, F16); break;
    case 3: mix_g(out, p, ld, n_kv, 3, v, stride, nc, F16); break;
    case 4: mix_g(out, p, ld, n_kv, 4, v, stride, nc, F16); break;
    case 5: mix_g(out, p, ld, n_kv, 5, v, stride, nc, F16); break;
    case 6: mix_g(out, p, ld, n_kv, 6, v, stride, nc, F16); break;
    case 7: mix_g(out, p, ld, n_kv, 7, v, stride, nc, F16); break;
    default: mix_g(out, p, ld, n_kv, 8, v, stride, nc, F16); break;
    }
}

void pi_attn_mix_f16_avx512(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                            size_t stride, int hd)
{
    mix_any(out, p, ld, n_kv, g, v, stride, hd, 1);
}

void pi_attn_mix_f32_avx512(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                            size_t stride, int hd)
{
    mix_any(out, p, ld, n_kv, g, v, stride, hd, 0);
}

/* Softmax in three passes over 16-lane blocks (the last one masked): the max (exact in any order), e^(x -
 * max) (pi_x86_exp16) stored, its sum in two 8-lane double accumulators (block order, then a fixed
 * reduction), then the scaling. The masked lanes contribute -inf to the max and 0 to the sum. */
void pi_attn_softmax_avx512(float *x, int n)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 m = ninf;
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        m = _mm512_max_ps(m, _mm512_mask_loadu_ps(ninf, k, x + i));
    }
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(k, pi_x86_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mx)));
        _mm512_mask_storeu_ps(x + i, k, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    const __m512 inv = _mm512_set1_ps((float)(1.0 / _mm512_reduce_add_pd(_mm512_add_pd(s0, s1))));
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
    }
}
