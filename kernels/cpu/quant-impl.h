/*
 * kernels/cpu/quant-impl.h - private to kernels/cpu: the raw variant tables and the small helpers
 * every variant shares (scale unpacking of the K-quants). Facts from ggml-quants.c (MIT).
 */
#ifndef PI_KERNELS_CPU_QUANT_IMPL_H
#define PI_KERNELS_CPU_QUANT_IMPL_H

#include <stdint.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/quant.h"

/* Raw tables: the scalar one complete, the SIMD ones sparse (defined in quant-avx2.c and
 * quant-avx512.c, which are compiled with their own -m flags and only called after CPUID checks). */
extern const struct pi_kernel_table pi_kernels_scalar_raw;
#ifdef PI_HAVE_X86_SIMD
extern const struct pi_kernel_table pi_kernels_avx2_raw;
extern const struct pi_kernel_table pi_kernels_avx512_raw;
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
 * 2 * (j / 4). */
static inline void pi_k3_scales(const uint8_t *s, int8_t out[16])
{
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
        int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

#endif
