/*
 * kernels/cpu/attn-impl.h - the two halves of pi_attn_head (kernels/cpu/ops.h) over an f16 cache, per
 * kernel variant: the scores of one query against n_kv cached keys, and the weighted sum of the cached
 * values. kernels/cpu/ops.c keeps the portable versions and the softmax between the two, and picks a
 * variant from the active kernel table's ISA (kernels/cpu/dispatch.h), as gemm.c does for its
 * micro-kernel. The AVX2 versions (attn-avx2.c, -mavx2 -mfma -mf16c) take head_dim a multiple of 8,
 * the AVX-512 ones (attn-avx512.c) a multiple of 16; ops.c uses the portable ones otherwise.
 *
 * Each key and value row is hd halves at (const char *)base + t * stride. The sums' order differs
 * between variants (each is fixed within its variant, for every token of any batch).
 */
#ifndef PI_KERNELS_CPU_ATTN_IMPL_H
#define PI_KERNELS_CPU_ATTN_IMPL_H

#include <stddef.h>
#include <stdint.h>

/* scores (n_kv) [t] = scale * (q . k_t), q (hd) float. */
typedef void (*pi_attn_scores_fn)(float *scores, const float *q, const void *k, size_t stride, int n_kv, int hd,
                                  float scale);
/* out (hd) = sum over t < n_kv of p[t] * v_t (out is only written). */
typedef void (*pi_attn_mix_fn)(float *out, const float *p, const void *v, size_t stride, int n_kv, int hd);

#ifdef PI_HAVE_X86_SIMD
void pi_attn_scores_f16_avx2(float *scores, const float *q, const void *k, size_t stride, int n_kv, int hd,
                             float scale);
void pi_attn_mix_f16_avx2(float *out, const float *p, const void *v, size_t stride, int n_kv, int hd);
void pi_attn_scores_f16_avx512(float *scores, const float *q, const void *k, size_t stride, int n_kv, int hd,
                               float scale);
void pi_attn_mix_f16_avx512(float *out, const float *p, const void *v, size_t stride, int n_kv, int hd);
#endif

#endif
