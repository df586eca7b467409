/*
 * kernels/cpu/quant.h - pinfer's quantised element formats on the CPU: the on-disk block layouts
 * (byte-compatible with ggml, so GGUF tensors are used in place), fp16/bf16 conversion, row
 * (de)quantisation, and the dot product of one weight row with activations prepared in the format that
 * weight type's kernel takes.
 *
 * Block layouts, field order and the value formulas are facts from ggml (ggml-common.h and
 * ggml-quants.c, MIT); each struct's size is pinned to ggml's with _Static_assert. All multi-byte
 * fields are little-endian (x86/ARM hosts). Scales marked "fp16" are IEEE half floats stored as bits.
 *
 * Entry points dispatch once-chosen variants (scalar, AVX2, AVX-512; see kernels/cpu/dispatch.h).
 * Every function here is thread-safe and allocation-free. Row lengths n are element counts and must
 * be multiples of the type's block size (lib/types.h); pointers need no particular alignment beyond
 * that of the block struct (2 bytes for most, 4 for Q8_K).
 */
#ifndef PI_KERNELS_CPU_QUANT_H
#define PI_KERNELS_CPU_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lib/types.h"
#include "lib/weights.h"

/* Elements per block (ggml: QK4_0 ... QK_K). */
#define PI_QK4_0 32
#define PI_QK4_1 32
#define PI_QK5_0 32
#define PI_QK5_1 32
#define PI_QK8_0 32
#define PI_QK8_1 32
#define PI_QK_K 256
#define PI_K_SCALE_SIZE 12

/* Q4_0: x[j] = (q[j] - 8) * d; q[j] for j < 16 is the low nibble of qs[j], q[j+16] the high one. */
struct pi_block_q4_0 {
    uint16_t d;                 /* fp16 scale */
    uint8_t qs[PI_QK4_0 / 2];   /* nibbles */
};
_Static_assert(sizeof(struct pi_block_q4_0) == 2 + PI_QK4_0 / 2, "q4_0 block size");

/* Q4_1: x[j] = q[j] * d + m (nibble order as Q4_0). */
struct pi_block_q4_1 {
    uint16_t d, m;              /* fp16 scale and minimum */
    uint8_t qs[PI_QK4_1 / 2];
};
_Static_assert(sizeof(struct pi_block_q4_1) == 4 + PI_QK4_1 / 2, "q4_1 block size");

/* Q5_0: q[j] = nibble | (bit j of qh) << 4 (bits 0..15 for j < 16, 16..31 for the high nibbles);
 * x[j] = (q[j] - 16) * d. qh is a little-endian uint32 stored as bytes. */
struct pi_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[PI_QK5_0 / 2];
};
_Static_assert(sizeof(struct pi_block_q5_0) == 2 + 4 + PI_QK5_0 / 2, "q5_0 block size");

/* Q5_1: as Q5_0 without the -16, x[j] = q[j] * d + m. */
struct pi_block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[PI_QK5_1 / 2];
};
_Static_assert(sizeof(struct pi_block_q5_1) == 4 + 4 + PI_QK5_1 / 2, "q5_1 block size");

/* Q8_0: x[j] = qs[j] * d. Also the activation format of the legacy (32-element) weight types. */
struct pi_block_q8_0 {
    uint16_t d;
    int8_t qs[PI_QK8_0];
};
_Static_assert(sizeof(struct pi_block_q8_0) == 2 + PI_QK8_0, "q8_0 block size");

/* Q8_1: as Q8_0 plus s = d * sum(qs) (fp16). Known for completeness (dequantised, quantised). */
struct pi_block_q8_1 {
    uint16_t d, s;
    int8_t qs[PI_QK8_1];
};
_Static_assert(sizeof(struct pi_block_q8_1) == 4 + PI_QK8_1, "q8_1 block size");

/* Q2_K: 16 sub-blocks of 16; scales[i] low nibble = scale, high nibble = min (4 bits each);
 * x = d * sc * q - dmin * m with q 2-bit. 2-bit q for element 128*k + 32*j + l (l < 32) sits in
 * qs[32*k + l] at bit shift 2*j. */
struct pi_block_q2_K {
    uint8_t scales[PI_QK_K / 16];
    uint8_t qs[PI_QK_K / 4];
    uint16_t d, dmin;
};
_Static_assert(sizeof(struct pi_block_q2_K) == 2 * 2 + PI_QK_K / 16 + PI_QK_K / 4, "q2_K block size");

/* Q3_K: 16 sub-blocks of 16 with 6-bit signed scales (bias 32) packed into 12 bytes; q is 2 low bits
 * (layout as Q2_K) minus 4 unless the element's hmask bit is set; x = d * (sc - 32) * q. */
struct pi_block_q3_K {
    uint8_t hmask[PI_QK_K / 8];
    uint8_t qs[PI_QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
};
_Static_assert(sizeof(struct pi_block_q3_K) == 2 + PI_QK_K / 4 + PI_QK_K / 8 + 12, "q3_K block size");

/* Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins packed into 12 bytes; x = d*sc*q - dmin*m.
 * Sub-blocks 2i and 2i+1 are the low and high nibbles of qs[32i .. 32i+31]. */
struct pi_block_q4_K {
    uint16_t d, dmin;
    uint8_t scales[PI_K_SCALE_SIZE];
    uint8_t qs[PI_QK_K / 2];
};
_Static_assert(sizeof(struct pi_block_q4_K) == 2 * 2 + PI_K_SCALE_SIZE + PI_QK_K / 2, "q4_K block size");

/* Q5_K: Q4_K plus a fifth bit per element in qh (bit 2i for sub-block 2i, 2i+1 for 2i+1). */
struct pi_block_q5_K {
    uint16_t d, dmin;
    uint8_t scales[PI_K_SCALE_SIZE];
    uint8_t qh[PI_QK_K / 8];
    uint8_t qs[PI_QK_K / 2];
};
_Static_assert(sizeof(struct pi_block_q5_K) == 2 * 2 + PI_K_SCALE_SIZE + PI_QK_K / 2 + PI_QK_K / 8,
               "q5_K block size");

/* Q6_K: 16 sub-blocks of 16 with int8 scales; q = (4 low bits | 2 high bits << 4) - 32; x = d*sc*q. */
struct pi_block_q6_K {
    uint8_t ql[PI_QK_K / 2];
    uint8_t qh[PI_QK_K / 4];
    int8_t scales[PI_QK_K / 16];
    uint16_t d;
};
_Static_assert(sizeof(struct pi_block_q6_K) == 2 + PI_QK_K / 16 + 3 * PI_QK_K / 4, "q6_K block size");

/* Q8_K: activation format of the K-quants; float scale, bsums[i] = sum of qs[16i .. 16i+15]. */
struct pi_block_q8_K {
    float d;
    int8_t qs[PI_QK_K];
    int16_t bsums[PI_QK_K / 16];
};
_Static_assert(sizeof(struct pi_block_q8_K) == 4 + PI_QK_K + PI_QK_K / 16 * 2, "q8_K block size");

/* ---- fp16 / bf16 (bit patterns in uint16_t) ---- */

/* Exact widening of an IEEE half (subnormals, infinities and NaN payloads kept). */
static inline float pi_fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    float f;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        f = (float)mant * 5.9604644775390625e-8f; /* mant * 2^-24, exact */
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

/* Narrowing with round-to-nearest-even; overflow gives +-Inf, NaN stays a (quiet) NaN. */
static inline uint16_t pi_fp32_to_fp16(float f)
{
    uint32_t x, ax, sign;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* Inf or NaN (quiet bit forced so a NaN never becomes Inf) */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to Inf */
    if (ax < 0x38800000u) {                                  /* below 2^-14: subnormal or zero */
        float a;
        uint32_t r;
        memcpy(&a, &ax, 4);
        a += 0.5f; /* the FPU rounds to a multiple of 2^-24 = one half-subnormal ulp, to nearest even */
        memcpy(&r, &a, 4);
        return (uint16_t)(sign | (r - 0x3f000000u));
    }
    ax += 0xc8000fffu + ((ax >> 13) & 1u); /* rebias exponent (-112 << 23) and round to nearest even */
    return (uint16_t)(sign | (ax >> 13));
}

static inline float pi_bf16_to_fp32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round-to-nearest-even truncation of the low 16 bits; NaN stays a quiet NaN. */
static inline uint16_t pi_fp32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* ---- rows ---- */

/* True when t has a dequantiser and a dot-product kernel (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
 * Q5_1, Q2_K..Q6_K). */
bool pi_kernel_supported(enum pi_type t);

/* src: n elements of type t (n / block_elems blocks) -> dst (n,) float. Also accepts Q8_1 and Q8_K.
 * Aborts (PI_ASSERT) on an unsupported type or a partial block: callers validated the tensor. */
void pi_dequant_row(enum pi_type t, const void *src, float *dst, int64_t n);

/* src (n,) float -> dst: n elements of type t. Round-to-nearest reference quantisers (as ggml's
 * *_ref functions) for F32, F16, BF16, Q8_0, Q8_1, Q4_0, Q4_1, Q5_0, Q5_1, Q8_K; the active kernel
 * variant's SIMD quantiser where it has one (Q8_0, the activations of the 32-element types, on AVX2
 * and up), which writes the same bytes. */
void pi_quantize_row(enum pi_type t, const float *src, void *dst, int64_t n);
/* The same with the portable scalar quantiser whatever the active variant (the reference the SIMD
 * quantisers are tested against byte for byte). */
void pi_quantize_row_ref(enum pi_type t, const float *src, void *dst, int64_t n);

/* True when pi_quantize_row handles t. */
bool pi_quantize_supported(enum pi_type t);

/* The activation format the dot product of weight type wtype takes: F32 for F32/F16/BF16 (activations
 * stay float32), Q8_0 for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, Q8_K for Q2_K..Q6_K. Aborts for a type without a
 * dot product (check pi_kernel_supported first). */
enum pi_type pi_vec_dot_type(enum pi_type wtype);

/* Bytes of one activation row of n elements prepared for weight type wtype. */
size_t pi_act_row_bytes(enum pi_type wtype, int64_t n);

/* x (n,) float -> xq (pi_act_row_bytes(wtype, n) bytes) in pi_vec_dot_type(wtype). */
void pi_quantize_act(enum pi_type wtype, const float *x, void *xq, int64_t n);

/* Dot product of one weight row wrow (n elements of wtype) with prepared activations xq (n elements
 * from pi_quantize_act). Uses the variant chosen at start-up. */
float pi_vec_dot(enum pi_type wtype, const void *wrow, const void *xq, int64_t n);

/* y (n,) += a * dequant(row), row holding n elements of type t (any type pi_dequant_row takes).
 * For the sparse FFN's down projection (one active neuron's column at a time). F16, Q4_0 and Q8_0 go
 * through a fused SIMD kernel where the variant has one (vec_mad), other types are dequantised in
 * chunks of 256 through the active variant, so no scratch is needed; both give the same floats as
 * dequantising the row and then y[i] += a * x[i] (no FMA). */
void pi_vec_mad(enum pi_type t, const void *row, float a, float *y, int64_t n);

/* y (n,) += a[0] * dequant(row[0]), then a[1] * dequant(row[1]), ... for m (1..4) rows of type t:
 * bit for bit m calls of pi_vec_mad in that order, but in one pass over y where the variant has a
 * kernel for t (vec_mad4: F16, Q4_0 and Q8_0 on AVX2 and AVX-512). pf: NULL, or m rows of the same
 * type and length that the kernel prefetches alongside (the next rows the caller will add; never
 * read, no effect on y). */
void pi_vec_mad4(enum pi_type t, const void *const row[4], const float a[4], int m, const void *const pf[4], float *y,
                 int64_t n);

/* Grouped rows: the columns of a Q4_0 or Q8_0 matrix (d, n) transposed without requantising. The
 * source's block b of row r holds elements r of columns 32 b .. 32 b + 31 with one f16 scale s[r][b];
 * transposed, column j becomes a row of d quants (Q4_0: d / 2 bytes, two nibbles a byte, elements 32 k
 * + i and 32 k + 16 + i in the low and high nibble of byte 16 k + i, as in a Q4_0 block; Q8_0: d
 * int8), and the 32 rows of a block b share one row of d scales s[0..d)[b]. Element i of such a row is
 * then (q_i - 8) * s_i (Q4_0) or q_i * s_i (Q8_0): exact in float, the very value the source's
 * dequantiser gives, where an f16 transposition rounds it. The bytes per row are the source's block
 * bytes less the scales, which a neuron-wise reader shares across the rows of a block it also reads. */

/* Groups [g0, g1) of the grouped transposition of src (R, C), a Q4_0 or Q8_0 matrix (R a multiple of 32,
 * C of 32): group g's columns 32 g .. 32 g + 31 of src as the grouped rows 32 (g - g0) .. of q (rows of
 * pi_grouped_row_bytes(type, R) bytes) and its scales as row g - g0 of s (rows of R f16 values). Groups
 * write disjoint bytes: callers may split them across threads. */
void pi_grouped_from_cols(const struct pi_weight *src, int64_t g0, int64_t g1, void *q, uint16_t *s);

/* y (w->cols) += a * row r of w: pi_vec_madg4 with the row's scales where w is grouped (gscale), else
 * pi_vec_mad; the floats of either. */
void pi_vec_mad_row(const struct pi_weight *w, int64_t r, float a, float *y);

/* Bytes of one grouped row of n elements of t (Q4_0 or Q8_0, n a multiple of 32), or 0 for another
 * type or width. */
size_t pi_grouped_row_bytes(enum pi_type t, int64_t n);

/* y (n,) += a[k] * row[k] for k = 0..m-1 (m = 1..4) in that order, row[k] a grouped row of t (Q4_0 or
 * Q8_0; n a multiple of 32) with its scales s[k] (n f16 values): per element x = q * s exactly, then
 * the product a * x and the sum each rounded (no FMA), so the floats of pi_vec_mad4 over the source's
 * dequantised values. One pass over y through the variant's kernel (vec_madg4) where it has one for
 * t, else the scalar reference. pf: NULL, or m grouped rows of t prefetched alongside (never read). */
void pi_vec_madg4(enum pi_type t, const void *const row[4], const uint16_t *const s[4], const float a[4], int m,
                  const void *const pf[4], float *y, int64_t n);

#endif
