/*
 * kernels/cpu/attn-avx512.c - pi_attn_head's f16 halves on AVX-512 (contract in kernels/cpu/attn-impl.h):
 * head_dim a multiple of 16, at most 256. Compiled with the AVX-512 flags into
 * libpinfer_avx512.a; kernels/cpu/ops.c calls it only when the active variant is AVX-512 or above.
 *
 * Scores: each key row is widened 16 halves at a time (vcvtph2ps) and multiplied into one accumulator
 * per 16-lane chunk of the head, the chunks then added in order and reduced across lanes; four keys are
 * taken together so that their chains overlap. Values: out stays in registers (one per chunk) while the
 * rows stream through, p[t] broadcast, one FMA per chunk and row.
 */
#include "config.h"

#include <immintrin.h>

#include "kernels/cpu/attn-impl.h"
#include "lib/common.h"

#define MAX_CHUNKS 16 /* head_dim 256 */

static inline __m512 ld16h(const void *base, size_t stride, int t, int c)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const char *)base + (size_t)t * stride) + c));
}

void pi_attn_scores_f16_avx512(float *scores, const float *q, const void *k, size_t stride, int n_kv, int hd,
                               float scale)
{
    const int nc = hd / 16;
    PI_ASSERT(hd % 16 == 0 && nc >= 1 && nc <= MAX_CHUNKS);
    __m512 qv[MAX_CHUNKS];
    for (int c = 0; c < nc; c++) qv[c] = _mm512_loadu_ps(q + 16 * c);
    int t = 0;
    for (; t + 4 <= n_kv; t += 4) {
        __m512 a0 = _mm512_mul_ps(qv[0], ld16h(k, stride, t, 0)), a1 = _mm512_mul_ps(qv[0], ld16h(k, stride, t + 1, 0));
        __m512 a2 = _mm512_mul_ps(qv[0], ld16h(k, stride, t + 2, 0)),
               a3 = _mm512_mul_ps(qv[0], ld16h(k, stride, t + 3, 0));
        for (int c = 1; c < nc; c++) {
            a0 = _mm512_fmadd_ps(qv[c], ld16h(k, stride, t, c), a0);
            a1 = _mm512_fmadd_ps(qv[c], ld16h(k, stride, t + 1, c), a1);
            a2 = _mm512_fmadd_ps(qv[c], ld16h(k, stride, t + 2, c), a2);
            a3 = _mm512_fmadd_ps(qv[c], ld16h(k, stride, t + 3, c), a3);
        }
        scores[t] = scale * _mm512_reduce_add_ps(a0);
        scores[t + 1] = scale * _mm512_reduce_add_ps(a1);
        scores[t + 2] = scale * _mm512_reduce_add_ps(a2);
        scores[t + 3] = scale * _mm512_reduce_add_ps(a3);
    }
    for (; t < n_kv; t++) {
        __m512 a = _mm512_mul_ps(qv[0], ld16h(k, stride, t, 0));
        for (int c = 1; c < nc; c++) a = _mm512_fmadd_ps(qv[c], ld16h(k, stride, t, c), a);
        scores[t] = scale * _mm512_reduce_add_ps(a);
    }
}

void pi_attn_mix_f16_avx512(float *out, const float *p, const void *v, size_t stride, int n_kv, int hd)
{
    const int nc = hd / 16;
    PI_ASSERT(hd % 16 == 0 && nc >= 1 && nc <= MAX_CHUNKS);
    __m512 acc[MAX_CHUNKS];
    for (int c = 0; c < nc; c++) acc[c] = _mm512_setzero_ps();
    for (int t = 0; t < n_kv; t++) {
        const __m512 w = _mm512_set1_ps(p[t]);
        for (int c = 0; c < nc; c++) acc[c] = _mm512_fmadd_ps(w, ld16h(v, stride, t, c), acc[c]);
    }
    for (int c = 0; c < nc; c++) _mm512_storeu_ps(out + 16 * c, acc[c]);
}
