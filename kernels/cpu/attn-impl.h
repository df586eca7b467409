/*
 * kernels/cpu/attn-impl.h - the parts of pi_attn_tile (kernels/cpu/ops.h) per kernel variant and cache
 * type (f16, f32): the scores of up to PI_ATTN_GROUP_MAX queries against the cached keys of one kv
 * head, the softmax of each query's row, and the weighted sums of the cached values.
 * kernels/cpu/ops.c keeps the portable versions and picks a variant from the active kernel table's
 * ISA (kernels/cpu/dispatch.h), as gemm.c does for its micro-kernel. The AVX2 versions (attn-avx2.c,
 * -mavx2 -mfma -mf16c) take head_dim a multiple of 8, the AVX-512 ones (attn-avx512.c) a multiple of
 * 16, both at most 256; ops.c uses the portable ones otherwise.
 *
 * Each key and value row is hd elements at (const char *)base + t * stride, read once for all the
 * queries of a call. A query's result does not depend on the other queries of its call: each keeps
 * the float operations and order it has alone (one query), so a tile and single-query calls agree bit
 * for bit. The order differs between variants (fixed within each).
 */
#ifndef PI_KERNELS_CPU_ATTN_IMPL_H
#define PI_KERNELS_CPU_ATTN_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/ops.h" /* PI_ATTN_GROUP_MAX: queries per call; ops.c splits larger tiles */

/* scores (g, ld): scores[j * ld + t] = scale * (q[j] . k_t) for t < n_kv; q[j] (hd) float, g in
 * 1..PI_ATTN_GROUP_MAX, n_kv <= ld (when g is 1 ld is not used). */
typedef void (*pi_attn_scores_fn)(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                                  int n_kv, int hd, float scale);
/* out[j] (hd) = sum over t < n_kv[j], in t order, of p[j * ld + t] * v_t (out[j] is only written). */
typedef void (*pi_attn_mix_fn)(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                               size_t stride, int hd);
/* x (n) = softmax(x), n >= 1: a function of x alone (its bits do not depend on where x lies). */
typedef void (*pi_attn_softmax_fn)(float *x, int n);

#ifdef PI_HAVE_X86_SIMD
void pi_attn_scores_f16_avx2(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                             int n_kv, int hd, float scale);
void pi_attn_scores_f32_avx2(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                             int n_kv, int hd, float scale);
void pi_attn_mix_f16_avx2(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                          size_t stride, int hd);
void pi_attn_mix_f32_avx2(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                          size_t stride, int hd);
void pi_attn_softmax_avx2(float *x, int n);
void pi_attn_scores_f16_avx512(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                               int n_kv, int hd, float scale);
void pi_attn_scores_f32_avx512(float *scores, size_t ld, const float *const *q, int g, const void *k, size_t stride,
                               int n_kv, int hd, float scale);
void pi_attn_mix_f16_avx512(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                            size_t stride, int hd);
void pi_attn_mix_f32_avx512(float *const *out, const float *p, size_t ld, const int *n_kv, int g, const void *v,
                            size_t stride, int hd);
void pi_attn_softmax_avx512(float *x, int n);
#endif

#endif
