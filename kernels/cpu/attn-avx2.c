/*
 * kernels/cpu/attn-avx2.c - pi_attn_head's f16 halves on AVX2 + FMA + F16C (contract in
 * kernels/cpu/attn-impl.h): head_dim a multiple of 8, at most 256. Compiled with -mavx2 -mfma -mf16c
 * into libpinfer_avx2.a; kernels/cpu/ops.c calls it only when the active variant is AVX2. The method
 * is attn-avx512.c's with 8-lane chunks.
 */
#include "config.h"

#include <immintrin.h>

#include "kernels/cpu/attn-impl.h"
#include "lib/common.h"

#define MAX_CHUNKS 32 /* head_dim 256 */

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

void pi_attn_scores_f16_avx2(float *scores, const float *q, const void *k, size_t stride, int n_kv, int hd, float scale)
{
    const int nc = hd / 8;
    PI_ASSERT(hd % 8 == 0 && nc >= 1 && nc <= MAX_CHUNKS);
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

void pi_attn_mix_f16_avx2(float *out, const float *p, const void *v, size_t stride, int n_kv, int hd)
{
    const int nc = hd / 8;
    PI_ASSERT(hd % 8 == 0 && nc >= 1 && nc <= MAX_CHUNKS);
    /* out in blocks of up to 8 chunks (64 floats) held in registers while the rows stream through */
    for (int c0 = 0; c0 < nc; c0 += 8) {
        const int n = nc - c0 < 8 ? nc - c0 : 8;
        __m256 acc[8];
        for (int c = 0; c < n; c++) acc[c] = _mm256_setzero_ps();
        for (int t = 0; t < n_kv; t++) {
            const __m256 w = _mm256_set1_ps(p[t]);
            for (int c = 0; c < n; c++) acc[c] = _mm256_fmadd_ps(w, ld8h(v, stride, t, c0 + c), acc[c]);
        }
        for (int c = 0; c < n; c++) _mm256_storeu_ps(out + 8 * (c0 + c), acc[c]);
    }
}
