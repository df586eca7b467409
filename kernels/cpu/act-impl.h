/*
 * kernels/cpu/act-impl.h - the SiLU-gated activation of pi_ffn_act and pi_ffn_act_min
 * (kernels/cpu/ops.h) per kernel variant: act-avx2.c (-mavx2 -mfma) and act-avx512.c (AVX-512F), each
 * with the exp of kernels/cpu/vexp-x86.h. kernels/cpu/ops.c picks one from the active kernel variant
 * (kernels/cpu/dispatch.h) and keeps the portable loop (libm's expf) for the others.
 *
 * Elementwise: the bits of each output are a function of its own g and u (and the variant), never of
 * n, the element's place in the array or the lanes around it.
 */
#ifndef PI_KERNELS_CPU_ACT_IMPL_H
#define PI_KERNELS_CPU_ACT_IMPL_H

#include <stdint.h>

/* g (n) = silu(g) * u = g / (1 + e^-g) * u. */
typedef void (*pi_ffn_silu_fn)(float *g, const float *u, int64_t n);

/* g (n) = silu(g) * u where |silu(g)| > gate_min[i % ff] (gate_min (ff), thresholds > 0 or not), else
 * 0: pi_ffn_act_min's SiLU case over n whole rows of width ff. The skip decision is
 * pi_ffn_gate_skip's (libm's expf) wherever the vector SiLU is within a relative 2^-20 of the
 * threshold or the vector exp clamps e^-g (g < -PI_VEXP_HI), so the neurons kept are exactly the
 * portable rule's. Returns the count not skipped. */
typedef int64_t (*pi_ffn_silu_min_fn)(const float *gate_min, float *g, const float *u, int64_t n, int64_t ff);

#ifdef PI_HAVE_X86_SIMD
void pi_ffn_silu_avx2(float *g, const float *u, int64_t n);
int64_t pi_ffn_silu_min_avx2(const float *gate_min, float *g, const float *u, int64_t n, int64_t ff);
void pi_ffn_silu_avx512(float *g, const float *u, int64_t n);
int64_t pi_ffn_silu_min_avx512(const float *gate_min, float *g, const float *u, int64_t n, int64_t ff);
#endif

#endif
