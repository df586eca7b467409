/*
 * kernels/cpu/attn-avx2.c - pi_attn_group's f16 halves on AVX2 + FMA + F16C (contract in
 * kernels/cpu/attn-impl.h): head_dim a multiple of 8, at most 256. Compiled with -mavx2 -mfma -mf16c
 * into libpinfer_avx2.a; kernels/cpu/ops.c calls it only when the active variant is AVX2. The method
 * is attn-avx512.c's with 8-lane chunks and 12 accumulator registers per block of the values' pass.
 */
#include "config.h"

#include <immintrin.h>

#include "kernels/cpu/attn-impl.h"
#include "lib/common.h"

#define MAX_CHUNKS 32 /* head_dim 256 */
#define ACC_REGS 12
#define ALWAYS_INLINE static inline __attribute__((always_inline))

static inline __m256 ld8h(const void *base, size_t stride, int t, int c)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const char *)base + (size_t)t * stride) + c));
}

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Four keys against one query (as four single-key steps, overlapped). */
static void scores_one(float *scores, const float *q, const void *k, size_t stride, int n_kv, int nc, float scale)
{
    int t = 0;
    for (; t + 4 <= n_kv; t += 4) {
        __m256 q0 = _mm256_loadu_ps(q);
        __m256 a0 = _mm256_mul_ps(q0, ld8h(k, stride, t, 0)), a1 = _mm256_mul_ps(q0, ld8h(k, stride, t + 1, 0));
        __m256 a2 = _mm256_mul_ps(q0, ld8h(k, stride, t + 2, 0)), a3 = _mm256_mul_ps(q0, ld8h(k, stride, t + 3, 0));
        for (int c = 1; c < nc; c++) {
            __m256 qc = _mm256_loadu_ps(q + 8 * c);
            a0 = _mm256_fmadd_ps(qc, ld8h(k, stride, t, c), a0);
            a1 = _mm256_fmadd_ps(qc, ld8h(k, stride, t + 1, c), a1);
            a2 = _mm256_fmadd_ps(qc, ld8h(k, stride, t + 2, c), a2);
            a3 = _mm256_fmadd_ps(qc, ld8h(k, stride, t + 3, c), a3);
        }
        scores[t] = scale * hsum8(a0);
        scores[t + 1] = scale * hsum8(a1);
        scores[t + 2] = scale * hsum8(a2);
        scores[t + 3] = scale * hsum8(a3);
    }
    for (; t < n_kv; t++) {
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(q), ld8h(k, stride, t, 0));
        for (int c = 1; c < nc; c++) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), ld8h(k, stride, t, c), a);
        scores[t] = scale * hsum8(a);
    }
}

/* G queries (a compile-time count) against every key, each key widened once. */
ALWAYS_INLINE void scores_g(float *scores, const float *q, const int G, const void *k, size_t stride, int n_kv, int nc,
                            int hd, float scale)
{
    for (int t = 0; t < n_kv; t++) {
        __m256 a[PI_ATTN_GROUP_MAX];
        const __m256 k0 = ld8h(k, stride, t, 0);
#pragma GCC unroll 8
        for (int j = 0; j < G; j++) a[j] = _mm256_mul_ps(_mm256_loadu_ps(q + (size_t)j * hd), k0);
        for (int c = 1; c < nc; c++) {
            const __m256 kc = ld8h(k, stride, t, c);
#pragma GCC unroll 8
            for (int j = 0; j < G; j++) a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)j * hd + 8 * c), kc, a[j]);
        }
#pragma GCC unroll 8
        for (int j = 0; j < G; j++) scores[(size_t)j * n_kv + t] = scale * hsum8(a[j]);
    }
}

void pi_attn_scores_f16_avx2(float *scores, const float *q, int g, const void *k, size_t stride, int n_kv, int hd,
                             float scale)
{
    const int nc = hd / 8;
    PI_ASSERT(hd % 8 == 0 && nc >= 1 && nc <= MAX_CHUNKS && g >= 1 && g <= PI_ATTN_GROUP_MAX);
    switch (g) {
    case 1: scores_one(scores, q, k, stride, n_kv, nc, scale); break;
    case 2: scores_g(scores, q, 2, k, stride, n_kv, nc, hd, scale); break;
    case 3: scores_g(scores, q, 3, k, stride, n_kv, nc, hd, scale); break;
    case 4: scores_g(scores, q, 4, k, stride, n_kv, nc, hd, scale); break;
    case 5: scores_g(scores, q, 5, k, stride, n_kv, nc, hd, scale); break;
    case 6: scores_g(scores, q, 6, k, stride, n_kv, nc, hd, scale); break;
    case 7: scores_g(scores, q, 7, k, stride, n_kv, nc, hd, scale); break;
    default: scores_g(scores, q, 8, k, stride, n_kv, nc, hd, scale); break;
    }
}

/* Chunks [c0, c0 + CB) of G queries' outputs (compile-time G and CB, G * CB <= ACC_REGS). */
ALWAYS_INLINE void mix_block(float *out, const float *p, const int G, const int CB, const void *v, size_t stride,
                             int n_kv, int hd, int c0)
{
    __m256 acc[ACC_REGS];
#pragma GCC unroll 12
    for (int i = 0; i < G * CB; i++) acc[i] = _mm256_setzero_ps();
    for (int t = 0; t < n_kv; t++) {
#pragma GCC unroll 12
        for (int c = 0; c < CB; c++) {
            const __m256 vc = ld8h(v, stride, t, c0 + c);
#pragma GCC unroll 8
            for (int j = 0; j < G; j++)
                acc[j * CB + c] = _mm256_fmadd_ps(_mm256_set1_ps(p[(size_t)j * n_kv + t]), vc, acc[j * CB + c]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < G; j++)
#pragma GCC unroll 12
        for (int c = 0; c < CB; c++) _mm256_storeu_ps(out + (size_t)j * hd + 8 * (c0 + c), acc[j * CB + c]);
}

/* G queries: blocks of 8, 4, 2 and 1 chunks, the largest first that keeps G * CB <= ACC_REGS. */
ALWAYS_INLINE void mix_g(float *out, const float *p, const int G, const void *v, size_t stride, int n_kv, int hd,
                         int nc)
{
    int c0 = 0;
    if (G * 8 <= ACC_REGS)
        for (; c0 + 8 <= nc; c0 += 8) mix_block(out, p, G, 8, v, stride, n_kv, hd, c0);
    if (G * 4 <= ACC_REGS)
        for (; c0 + 4 <= nc; c0 += 4) mix_block(out, p, G, 4, v, stride, n_kv, hd, c0);
    if (G * 2 <= ACC_REGS)
        for (; c0 + 2 <= nc; c0 += 2) mix_block(out, p, G, 2, v, stride, n_kv, hd, c0);
    for (; c0 < nc; c0++) mix_block(out, p, G, 1, v, stride, n_kv, hd, c0);
}

void pi_attn_mix_f16_avx2(float *out, const float *p, int g, const void *v, size_t stride, int n_kv, int hd)
{
    const int nc = hd / 8;
    PI_ASSERT(hd % 8 == 0 && nc >= 1 && nc <= MAX_CHUNKS && g >= 1 && g <= PI_ATTN_GROUP_MAX);
    switch (g) {
    case 1: mix_g(out, p, 1, v, stride, n_kv, hd, nc); break;
    case 2: mix_g(out, p, 2, v, stride, n_kv, hd, nc); break;
    case 3: mix_g(out, p, 3, v, stride, n_kv, hd, nc); break;
    case 4: mix_g(out, p, 4, v, stride, n_kv, hd, nc); break;
    case 5: mix_g(out, p, 5, v, stride, n_kv, hd, nc); break;
    case 6: mix_g(out, p, 6, v, stride, n_kv, hd, nc); break;
    case 7: mix_g(out, p, 7, v, stride, n_kv, hd, nc); break;
    default: mix_g(out, p, 8, v, stride, n_kv, hd, nc); break;
    }
}
