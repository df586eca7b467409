/*
 * kernels/cpu/attn-avx512.c - pi_attn_group's f16 halves on AVX-512 (contract in kernels/cpu/attn-impl.h):
 * head_dim a multiple of 16, at most 256. Compiled with the AVX-512 flags into libpinfer_avx512.a;
 * kernels/cpu/ops.c calls it only when the active variant is AVX-512 or above.
 *
 * Scores: a key row is widened 16 halves at a time (vcvtph2ps) once for the group; each query
 * multiplies it into its own accumulator (the first chunk a multiply, the rest FMAs in chunk order),
 * reduced across lanes at the row's end. A single query takes four keys together so that their chains
 * overlap; per key the operations are the same. Values: each query's output is held in registers, a
 * block of chunks at a time (the group's accumulators fill at most 24 registers), while the rows stream;
 * p broadcast, one FMA per chunk, query and row, in row order.
 */
#include "config.h"

#include <immintrin.h>

#include "kernels/cpu/attn-impl.h"
#include "lib/common.h"

#define MAX_CHUNKS 16 /* head_dim 256 */
#define ACC_REGS 24   /* accumulators of one block of the values' pass */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

static inline __m512 ld16h(const void *base, size_t stride, int t, int c)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const char *)base + (size_t)t * stride) + c));
}

/* Four keys against one query (as four single-key steps, overlapped). */
static void scores_one(float *scores, const float *q, const void *k, size_t stride, int n_kv, int nc, float scale)
{
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

/* G queries (a compile-time count) against every key, each key widened once. */
ALWAYS_INLINE void scores_g(float *scores, const float *q, const int G, const void *k, size_t stride, int n_kv, int nc,
                            int hd, float scale)
{
    for (int t = 0; t < n_kv; t++) {
        __m512 a[PI_ATTN_GROUP_MAX];
        const __m512 k0 = ld16h(k, stride, t, 0);
#pragma GCC unroll 8
        for (int j = 0; j < G; j++) a[j] = _mm512_mul_ps(_mm512_loadu_ps(q + (size_t)j * hd), k0);
        for (int c = 1; c < nc; c++) {
            const __m512 kc = ld16h(k, stride, t, c);
#pragma GCC unroll 8
            for (int j = 0; j < G; j++) a[j] = _mm512_fmadd_ps(_mm512_loadu_ps(q + (size_t)j * hd + 16 * c), kc, a[j]);
        }
#pragma GCC unroll 8
        for (int j = 0; j < G; j++) scores[(size_t)j * n_kv + t] = scale * _mm512_reduce_add_ps(a[j]);
    }
}

void pi_attn_scores_f16_avx512(float *scores, const float *q, int g, const void *k, size_t stride, int n_kv, int hd,
                               float scale)
{
    const int nc = hd / 16;
    PI_ASSERT(hd % 16 == 0 && nc >= 1 && nc <= MAX_CHUNKS && g >= 1 && g <= PI_ATTN_GROUP_MAX);
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
    __m512 acc[ACC_REGS];
#pragma GCC unroll 24
    for (int i = 0; i < G * CB; i++) acc[i] = _mm512_setzero_ps();
    for (int t = 0; t < n_kv; t++) {
        __m512 w[PI_ATTN_GROUP_MAX];
#pragma GCC unroll 8
        for (int j = 0; j < G; j++) w[j] = _mm512_set1_ps(p[(size_t)j * n_kv + t]);
#pragma GCC unroll 16
        for (int c = 0; c < CB; c++) {
            const __m512 vc = ld16h(v, stride, t, c0 + c);
#pragma GCC unroll 8
            for (int j = 0; j < G; j++) acc[j * CB + c] = _mm512_fmadd_ps(w[j], vc, acc[j * CB + c]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < G; j++)
#pragma GCC unroll 16
        for (int c = 0; c < CB; c++) _mm512_storeu_ps(out + (size_t)j * hd + 16 * (c0 + c), acc[j * CB + c]);
}

/* G queries: blocks of 16, 8, 4, 2 and 1 chunks, the largest first that keeps G * CB <= ACC_REGS (each
 * block streams the rows once; hd 128 with up to 2 queries is one block). */
ALWAYS_INLINE void mix_g(float *out, const float *p, const int G, const void *v, size_t stride, int n_kv, int hd,
                         int nc)
{
    int c0 = 0;
    if (G * 16 <= ACC_REGS)
        for (; c0 + 16 <= nc; c0 += 16) mix_block(out, p, G, 16, v, stride, n_kv, hd, c0);
    if (G * 8 <= ACC_REGS)
        for (; c0 + 8 <= nc; c0 += 8) mix_block(out, p, G, 8, v, stride, n_kv, hd, c0);
    if (G * 4 <= ACC_REGS)
        for (; c0 + 4 <= nc; c0 += 4) mix_block(out, p, G, 4, v, stride, n_kv, hd, c0);
    if (G * 2 <= ACC_REGS)
        for (; c0 + 2 <= nc; c0 += 2) mix_block(out, p, G, 2, v, stride, n_kv, hd, c0);
    for (; c0 < nc; c0++) mix_block(out, p, G, 1, v, stride, n_kv, hd, c0);
}

void pi_attn_mix_f16_avx512(float *out, const float *p, int g, const void *v, size_t stride, int n_kv, int hd)
{
    const int nc = hd / 16;
    PI_ASSERT(hd % 16 == 0 && nc >= 1 && nc <= MAX_CHUNKS && g >= 1 && g <= PI_ATTN_GROUP_MAX);
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
