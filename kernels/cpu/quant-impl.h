/*
 * kernels/cpu/quant-impl.h - private to kernels/cpu: the raw variant tables and the small helpers
 * every variant shares (scale unpacking of the K-quants). Facts from ggml-quants.c (MIT).
 */
#ifndef PI_KERNELS_CPU_QUANT_IMPL_H
#define PI_KERNELS_CPU_QUANT_IMPL_H

#include <stdint.h>
#include <string.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/quant.h"

/* Raw tables: the scalar one complete, the SIMD ones sparse (defined in quant-avx2.c and
 * quant-avx512.c, which are compiled with their own -m flags and only called after CPUID checks). */
extern const struct pi_kernel_table pi_kernels_scalar_raw;
#ifdef PI_HAVE_X86_SIMD
extern const struct pi_kernel_table pi_kernels_avx2_raw;
extern const struct pi_kernel_table pi_kernels_avx512_raw;
extern const struct pi_kernel_table pi_kernels_avx512vnni_raw;
/* kernels/cpu/rows16-vnni.c: the avx512vnni table's r16_dot entries (pi_r16_dot_fn) */
void pi_r16_dot_avx512vnni_q4_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride);
void pi_r16_dot_avx512vnni_q8_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride);
void pi_r16_dot_avx512vnni_q4_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride);
void pi_r16_dot_avx512vnni_q5_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride);
void pi_r16_dot_avx512vnni_q6_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride);
#endif
#ifdef PI_HAVE_AMX
/* kernels/cpu/rows16-amx.c: the amx variant's raw table (its r16_dot only; the rest is avx512vnni's) */
extern const struct pi_kernel_table pi_kernels_amx_raw;
#endif

/* Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes q
 * (ggml's get_scale_min_k4: j < 4 in the low 6 bits of bytes j and j+4, else split nibbles and the
 * top 2 bits of bytes j-4 and j). */
static inline void pi_k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Q3_K: the 16 signed scales (value - 32) from the 12 packed bytes: low 4 bits of scale j are the low
 * (j < 8) or high (j >= 8) nibble of byte j % 8; the top 2 bits come from byte 8 + j % 4 at shift
 * 2 * (j / 4). Done four scales at a time in 32-bit words. */
static inline void pi_k3_scales(const uint8_t *s, int8_t out[16])
{
    uint32_t a0, a1, hi, w[4];
    memcpy(&a0, s, 4), memcpy(&a1, s + 4, 4), memcpy(&hi, s + 8, 4);
    w[0] = (a0 & 0x0f0f0f0fu) | ((hi & 0x03030303u) << 4);
    w[1] = (a1 & 0x0f0f0f0fu) | (((hi >> 2) & 0x03030303u) << 4);
    w[2] = ((a0 >> 4) & 0x0f0f0f0fu) | (((hi >> 4) & 0x03030303u) << 4);
    w[3] = ((a1 >> 4) & 0x0f0f0f0fu) | (((hi >> 6) & 0x03030303u) << 4);
    memcpy(out, w, 16);
    for (int j = 0; j < 16; j++) out[j] = (int8_t)(out[j] - 32);
}

#endif
