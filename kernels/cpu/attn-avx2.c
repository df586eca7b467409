/*
 * kernels/cpu/attn-avx2.c - pi_attn_tile's kernels on AVX2 + FMA + F16C (contract in
 * kernels/cpu/attn-impl.h): f16 and f32 caches, head_dim a multiple of 8, at most 256, and the softmax.
 * Compiled with -mavx2 -mfma -mf16c into libpinfer_avx2.a; kernels/cpu/ops.c calls it only when the
 * active variant is AVX2. The method is attn-avx512.c's with 8-lane chunks, blocks of 8 keys and 12
 * accumulator registers per block of the values' pass.
 */
#include "config.h"

#include <immintrin.h>
#include <math.h>

#include "kernels/cpu/attn-impl.h"
#include "kernels/cpu/vexp-x86.h"
#include "lib/common.h"

#define MAX_CHUNKS 32 /* head_dim 256 */
#define ACC_REGS 12
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Elements 8c..8c+7 of row t as floats: halves widened (F16 = 1) or floats loaded (F16 = 0). */
ALWAYS_INLINE __m256 ld8(const void *base, size_t stride, int t, int c, const int F16)
{
    const char *row = (const char *)base + (size_t)t * stride;
    if (F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)row + c));
    return _mm256_loadu_ps((const float *)row + 8 * c);
}

/* Lane i = the sum of a[i]'s 8 lanes, for 8 accumulators at once, each by the same tree whatever its
 * neighbours: x_l = a_l + a_l+4 for l < 4, then (x_0 + x_2) + (x_1 + x_3) (a horizontal sum's usual
 * order). */
ALWAYS_INLINE __m256 sum8x8(const __m256 *a)
{
    __m256 b[4], c[2];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        b[i] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x20),
                             _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x31));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++)
        c[i] = _mm256_add_ps(_mm256_unpacklo_ps(b[2 * i], b[2 * i + 1]), _mm256_unpackhi_ps(b[2 * i], b[2 * i + 1]));
    const __m256d c0 = _mm256_castps_pd(c[0]), c1 = _mm256_castps_pd(c[1]);
    const __m256 d =
        _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(c0, c1)), _mm256_castpd_ps(_mm256_unpackhi_pd(c0, c1)));
    /* d's lane 4m + p holds the sum of a[m + 2p] */
    return _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* s (nt) = scale * (q . k_t) for the nt <= 8 float rows at k (stride bytes apart), as attn-avx512.c's
 * scores_block with 8 lanes (NC: 8 or 16 chunks known at compile time, else 0 and nc). Rows past nt
 * repeat row nt - 1 and are not stored. */
ALWAYS_INLINE void scores_block(float *s, const float *q, const char *k, size_t stride, const int nt, const int NC,
                                int nc, float scale)
{
    __m256 a[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        const float *row = (const float *)(k + (size_t)(i < nt ? i : nt - 1) * stride);
        a[i] = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(row));
        if (NC) {
#pragma GCC unroll 16
            for (int c = 1; c < NC; c++)
                a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), _mm256_loadu_ps(row + 8 * c), a[i]);
        } else {
            for (int c = 1; c < nc; c++)
                a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), _mm256_loadu_ps(row + 8 * c), a[i]);
        }
    }
    const __m256 r = _mm256_mul_ps(_mm256_set1_ps(scale), sum8x8(a));
    if (nt == 8) _mm256_storeu_ps(s, r);
    else {
        float tmp[8];
        _mm256_storeu_ps(tmp, r);
        for (int i = 0; i < nt; i++) s[i] = tmp[i];
    }
}

/* Every query against one block of nt rows, full blocks specialised. */
ALWAYS_INLINE void scores_queries(float *scores, size_t ld, const float *const *q, int g, const char *kb, size_t ks,
                                  int nt, const int NC, int nc, float scale)
{
    if (nt == 8)
        for (int j = 0; j < g; j++) scores_block(scores + (size_t)j * ld, q[j], kb, ks, 8, NC, nc, scale);
    else
        for (int j = 0; j < g; j++) scores_block(scores + (size_t)j * ld, q[j], kb, ks, nt, NC, nc, scale);
}

/* Blocks of 8 keys, each against every query while it is in L1 (an f16 block widened once into buf). */
ALWAYS_INLINE void scores_any(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                              int n_kv, int hd, float scale, const int F16)
{
    const int nc = hd / 8;
    PI_ASSERT(hd % 8 == 0 && nc >= 1 && nc <= MAX_CHUNKS && g >= 1 && g <= PI_ATTN_GROUP_MAX);
    float buf[8 * 8 * MAX_CHUNKS]; /* a block of 8 f16 rows as floats (unused for f32) */
    for (int t0 = 0; t0 < n_kv; t0 += 8) {
        const int nt = PI_MIN(8, n_kv - t0);
        const char *kb = (const char *)k + (size_t)t0 * stride;
        size_t ks = stride;
        if (F16) {
            for (int i = 0; i < nt; i++)
                for (int c = 0; c < nc; c++) _mm256_storeu_ps(buf + (size_t)i * hd + 8 * c, ld8(kb, stride, i, c, 1));
            kb = (const char *)buf, ks = (size_t)hd * sizeof(float);
        }
        float *st = scores + t0;
        switch (nc) {
        case 8: scores_queries(st, ld, q, g, kb, ks, nt, 8, 8, scale); break;
        case 16: scores_queries(st, ld, q, g, kb, ks, nt, 16, 16, scale); break;
        default: scores_queries(st, ld, q, g, kb, ks, nt, 0, nc, scale); break;
        }
    }
}

void pi_attn_scores_f16_avx2(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                             int n_kv, int hd, float scale)
{
    scores_any(scores, ld, q, g, k, stride, n_kv, hd, scale, 1);
}

void pi_attn_scores_f32_avx2(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                             int n_kv, int hd, float scale)
{
    scores_any(scores, ld, q, g, k, stride, n_kv, hd, scale, 0);
}

/* Chunks [c0, c0 + CB) of G queries' outputs (compile-time G and CB, G * CB <= ACC_REGS): rows below
 * every query's count for all of them, then the rows up to the largest count for those that have them. */
ALWAYS_INLINE void mix_block(float *const *out, const float *p, size_t ld, const int *n_kv, int lo, int hi, const int G,
                             const int CB, const void *v, size_t stride, int c0, const int F16)
{
    __m256 acc[ACC_REGS];
#pragma GCC unroll 12
    for (int i = 0; i < G * CB; i++) acc[i] = _mm256_setzero_ps();
    for (int t = 0; t < lo; t++) {
#pragma GCC unroll 12
        for (int c = 0; c < CB; c++) {
            const __m256 vc = ld8(v, stride, t, c0 + c, F16);
#pragma GCC unroll 8
            for (int j = 0; j < G; j++)
                acc[j * CB + c] = _mm256_fmadd_ps(_mm256_set1_ps(p[(size_t)j * ld + t]), vc, acc[j * CB + c]);
        }
    }
    for (int t = lo; t < hi; t++)
#pragma GCC unroll 12
        for (int c = 0; c < CB; c++) {
            const __m256 vc = ld8(v, stride, t, c0 + c, F16);
#pragma GCC unroll 8
            for (int j = 0; j < G; j++)
                if (t < n_kv[j])
                    acc[j * CB + c] = _mm256_fmadd_ps(_mm256_set1_ps(p[(size_t)j * ld + t]), vc, acc[j * CB + c]);
        }
#pragma GCC unroll 8
    for (int j = 0; j < G; j++)
#pragma GCC unroll 12
        for (int c = 0; c < CB; c++) _mm256_storeu_ps(out[j] + 8 * (c0 + c), acc[j * CB + c]);
}

/* G queries: blocks of 8, 4, 2 and 1 chunks, the largest first that keeps G * CB <= ACC_REGS. */
ALWAYS_INLINE void mix_g(float *const *out, const float *p, size_t ld, const int *n_kv, const int G, const void *v,
                         size_t stride, int nc, const int F16)
{
    int lo = n_kv[0], hi = n_kv[0];
    for (int j = 1; j < G; j++) lo = PI_MIN(lo, n_kv[j]), hi = PI_MAX(hi, n_kv[j]);
    int c0 = 0;
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
    const int nc = hd / 8;
    PI_ASSERT(hd % 8 == 0 && nc >= 1 && nc <= MAX_CHUNKS && g >= 1 && g <= PI_ATTN_GROUP_MAX);
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

void pi_attn_mix_f16_avx2(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                          size_t stride, int hd)
{
    mix_any(out, p, ld, n_kv, g, v, stride, hd, 1);
}

void pi_attn_mix_f32_avx2(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                          size_t stride, int hd)
{
    mix_any(out, p, ld, n_kv, g, v, stride, hd, 0);
}

/* e^(x - mx) of the 8 lanes at at (0 where valid is clear), stored back and added into the sums. */
static inline void exp_sum8(float *at, __m256 mx, __m256 valid, __m256d *s0, __m256d *s1)
{
    const __m256 e = _mm256_and_ps(pi_x86_exp8(_mm256_sub_ps(_mm256_loadu_ps(at), mx)), valid);
    _mm256_storeu_ps(at, e);
    *s0 = _mm256_add_pd(*s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    *s1 = _mm256_add_pd(*s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
}

/* Softmax in three passes over 8-lane blocks, the last one through a copy padded with -inf: the max,
 * e^(x - max) (pi_x86_exp8; padding lanes zeroed) stored with its sum in two 4-lane double
 * accumulators (block order, then a fixed reduction), then the scaling. */
void pi_attn_softmax_avx2(float *x, int n)
{
    const int nb = n / 8 * 8;
    float tail[8];
    for (int i = 0; i < 8; i++) tail[i] = nb + i < n ? x[nb + i] : -INFINITY;
    __m256 m = _mm256_loadu_ps(tail);
    for (int i = 0; i < nb; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const __m256 mx = _mm256_set1_ps(_mm_cvtss_f32(m4));
    const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (int i = 0; i < nb; i += 8) exp_sum8(x + i, mx, all, &s0, &s1);
    if (nb < n) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n - nb), lane));
        exp_sum8(tail, mx, valid, &s0, &s1);
    }
    s0 = _mm256_add_pd(s0, s1);
    __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s0), _mm256_extractf128_pd(s0, 1));
    s2 = _mm_add_sd(s2, _mm_unpackhi_pd(s2, s2));
    const float inv = (float)(1.0 / _mm_cvtsd_f64(s2));
    const __m256 vinv = _mm256_set1_ps(inv);
    for (int i = 0; i < nb; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
    for (int i = nb; i < n; i++) x[i] = tail[i - nb] * inv;
}
