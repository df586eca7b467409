/*
 * kernels/cpu/attn-impl.h - the two halves of pi_attn_group (kernels/cpu/ops.h) over an f16 cache, per
 * kernel variant: the scores of a group of queries that share one kv head against n_kv cached keys,
 * and the weighted sums of the cached values. kernels/cpu/ops.c keeps the portable versions and the
 * softmax between the two, and picks a variant from the active kernel table's ISA
 * (kernels/cpu/dispatch.h), as gemm.c does for its micro-kernel. The AVX2 versions (attn-avx2.c,
 * -mavx2 -mfma -mf16c) take head_dim a multiple of 8, the AVX-512 ones (attn-avx512.c) a multiple of
 * 16, both at most 256; ops.c uses the portable ones otherwise.
 *
 * Each key and value row is hd halves at (const char *)base + t * stride, read once for the whole
 * group. A query's result does not depend on the group it is computed in: each query keeps the float
 * operations and order it has alone (group 1), so grouped and single-head calls agree bit for bit.
 * The order differs between variants (fixed within each).
 */
#ifndef PI_KERNELS_CPU_ATTN_IMPL_H
#define PI_KERNELS_CPU_ATTN_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/ops.h" /* PI_ATTN_GROUP_MAX: queries per call; ops.c splits larger groups */

/* scores (g, n_kv): scores[j * n_kv + t] = scale * (q_j . k_t), q (g, hd) float, g in 1..PI_ATTN_GROUP_MAX. */
typedef void (*pi_attn_scores_fn)(float *scores, const float *q, int g, const void *k, size_t stride, int n_kv, int hd,
                                  float scale);
/* out (g, hd): out_j = sum over t < n_kv of p[j * n_kv + t] * v_t (out is only written). */
typedef void (*pi_attn_mix_fn)(float *out, const float *p, int g, const void *v, size_t stride, int n_kv, int hd);

#ifdef PI_HAVE_X86_SIMD
void pi_attn_scores_f16_avx2(float *scores, const float *q, int g, const void *k, size_t stride, int n_kv, int hd,
                             float scale);
void pi_attn_mix_f16_avx2(float *out, const float *p, int g, const void *v, size_t stride, int n_kv, int hd);
void pi_attn_scores_f16_avx512(float *scores, const float *q, int g, const void *k, size_t stride, int n_kv, int hd,
                               float scale);
void pi_attn_mix_f16_avx512(float *out, const float *p, int g, const void *v, size_t stride, int n_kv, int hd);
#endif

#endif
