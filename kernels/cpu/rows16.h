/*
 * kernels/cpu/rows16.h - Q4_0, Q8_0, Q4_K, Q5_K and Q6_K matrices repacked into groups of 16 rows for the dense CPU
 * products (decode and prompts of the in-process forward pass), and the products over them.
 *
 * The file's layout keeps each row's 18-byte blocks together, so a SIMD kernel over one row spends
 * most of its instructions moving nibbles between lanes and summing lanes. Here 16 rows share every
 * load: for one block of 32 inputs, one 64-byte line holds 4 bytes (8 nibbles: inputs 4j..4j+3 in the
 * low halves, 16+4j..16+4j+3 in the high halves) of each of the 16 rows, so one vpdpbusd against the
 * token's 4 matching activation bytes broadcast gives 16 rows' partial sums with no shuffle, and the
 * 16 rows' fp16 scales of the block are converted in one instruction.
 *
 * Layout of one group (rows 16g..16g+15, nb = cols / 32 blocks), pi_r16_group_bytes(type, cols)
 * bytes, 64-byte aligned, J = 4 (Q4_0) or 8 (Q8_0) lines of quants per block. Blocks go in pairs,
 * each pair 2J + 1 whole lines, so that a group is one stream of lines for the prefetchers:
 *   the pair's J lines of block 2p, then J lines of block 2p + 1: line j of a block holds
 *     [r][k] = row r's qs[4j + k] (Q4_0: the file's nibble byte, inputs 4j + k and 16 + 4j + k;
 *     Q8_0: the weight of input 4j + k), r = 0..15, k = 0..3
 *   one line of scales: 16 fp16 of block 2p (row order), then 16 of block 2p + 1
 * An odd last block leaves its partner's bytes zero. pi_r16_qs_at / pi_r16_d_at give the offsets.
 * Q4_0 288 bytes per block per group (the file's 16 x 18), Q8_0 544 (16 x 34): each copy is as large
 * as its matrix.
 *
 * Arithmetic, the same in every kernel over this layout (and in the scalar reference): for each
 * (row, token) the block's integer sum isum = sum_k w_k * x_k (w = q - 8 for Q4_0, q for Q8_0) is
 * exact (int32), then one float step per block in block order, acc = fma(d_w * d_x, (float)isum, acc)
 * from acc = 0 (d_w * d_x is exact in float: two fp16 significands; |isum| <= 32 * 127 * 127 < 2^24
 * is exact too). So a token's outputs
 * are the same bits alone or in any batch, tiling and thread count, and the SIMD kernels equal the
 * scalar reference bit for bit. They differ from pi_vec_dot over the file's rows (another summation
 * order) by a rounding-order difference only.
 *
 * Q4_K (256-element super-blocks of 8 sub-blocks of 32; x = d * sc_s * q - dmin * m_s, q 0..15, sc_s
 * and m_s 6 bits; activations in Q8_K: a float d_x, int8 values, sums per 16). A group holds nb =
 * cols / 256 super-blocks of PI_R16_Q4K_SB bytes (37 lines: the file's 16 x 144 = 2304 bytes with the
 * scales and mins unpacked to bytes), super-block sb at sb * PI_R16_Q4K_SB:
 *   line 8c + j (c = 0..3, j = 0..7): [r][k] = row r's qs[32c + 4j + k], whose low nibble is input
 *     4j + k of sub-block 2c and whose high nibble is input 4j + k of sub-block 2c + 1;
 *   at PI_R16_Q4K_SC: sc[s][r] (s = 0..7, r = 0..15), bytes;  at PI_R16_Q4K_M: m[i][r][h] = m_{2i+h}
 *     of row r (i = 0..3, h = 0..1), bytes;  at PI_R16_Q4K_D the 16 rows' d, at PI_R16_Q4K_DMIN their
 *     dmin (fp16).
 * Arithmetic per (row, token, super-block), in super-block order from acc = 0: the exact integers
 * isum = sum_s sc_s * sum_{k in s} q_k x_k (|isum| < 8 * 63 * 32 * 15 * 128 < 2^31) and msum =
 * sum_s m_s * (sub-block s's sum of x), then acc = fma(d * d_x, (float)isum, acc) and
 * acc = fma(-(dmin * d_x), (float)msum, acc), every product and conversion rounded to float as written.
 *
 * Q5_K is Q4_K with a fifth bit per value (q 0..31): the same arithmetic (|isum| < 2^27), and the same
 * layout but for PI_R16_Q5K_PAIR bytes per pair c of sub-blocks (at 640c, 10 lines: the 8 lines of
 * quant bytes, then 2 lines m = 0..1 whose byte [r][k] holds at bit 2i + h the fifth bit of row r's
 * input 4(4m + i) + k of sub-block 2c + h, i = 0..3), the scales, mins, d and dmin after the four
 * pairs (45 lines, the file's 16 x 176 = 2816 bytes and the unpacked scales and mins).
 *
 * Q6_K (256-element super-blocks of 16 sub-blocks of 16; x = d * sc_s * (q - 32), q 0..63 of 4 low and 2
 * high bits, sc_s int8; activations in Q8_K). A group holds nb = cols / 256 super-blocks of
 * PI_R16_Q6K_SB bytes (53 lines; the file's 16 x 210 = 3360 bytes and half a line of padding), in the
 * super-block's element order e = 0..255 (the file's ql/qh interleaving undone at packing), pair c =
 * 0..3 of 32-element halves (2c and 2c + 1: elements 64c.. and 64c + 32..) at 768c, in the order a
 * kernel reads them:
 *   line j (j = 0..7): [r][k] = the low 4 bits of row r's element 4j + k of half 2c in the low nibble,
 *     of half 2c + 1 in the high nibble;
 *   line 8 + j (j = 0..3): [r][k] = the high 2 bits of row r's elements 4j + k of half 2c at bits 0-1,
 *     of half 2c + 1 at bits 2-3, and of elements 16 + 4j + k of the two halves at bits 4-5 and 6-7;
 *   then at PI_R16_Q6K_SC: sc[i][r][h] = sc_{2i+h} of row r (i = 0..7, h = 0..1), int8;
 *   at PI_R16_Q6K_D the 16 rows' d (fp16), then zeros to the line's end.
 * Arithmetic per (row, token, super-block), in super-block order from acc = 0: the exact integer
 * isum = sum_s sc_s * sum_{k in s} q_k x_k - 32 * sum_s sc_s * (sub-block s's sum of x)
 * (|isum| < 2^29), then acc = fma(d * d_x, (float)isum, acc).
 */
#ifndef PI_KERNELS_CPU_ROWS16_H
#define PI_KERNELS_CPU_ROWS16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/pool.h"
#include "lib/weights.h"

#define PI_R16_ROWS 16       /* rows per group */
#define PI_R16_Q4K_SB 2368   /* bytes of one Q4_K super-block of a group, and offsets in it: */
#define PI_R16_Q4K_SC 2048   /*   the sub-blocks' scales */
#define PI_R16_Q4K_M 2176    /*   their mins */
#define PI_R16_Q4K_D 2304    /*   the rows' d */
#define PI_R16_Q4K_DMIN 2336 /*   the rows' dmin */
#define PI_R16_Q5K_SB 2880   /* bytes of one Q5_K super-block of a group, and offsets in it: */
#define PI_R16_Q5K_PAIR 640  /*   a pair of sub-blocks (8 lines of quant bytes, 2 of fifth bits) */
#define PI_R16_Q5K_SC 2560   /*   then as Q4_K: the scales, the mins, d and dmin */
#define PI_R16_Q5K_M 2688
#define PI_R16_Q5K_D 2816
#define PI_R16_Q5K_DMIN 2848
#define PI_R16_Q6K_SB 3392  /* bytes of one Q6_K super-block of a group, and offsets in it: */
#define PI_R16_Q6K_PAIR 768 /*   a pair of halves (8 lines of low bits, 4 of high) */
#define PI_R16_Q6K_SC 3072  /*   the sub-blocks' scales */
#define PI_R16_Q6K_D 3328   /*   the rows' d */

/* The Q4_K and Q5_K layouts' offsets (above). */
struct pi_r16_k45 {
    size_t sb, pair, sc, m, d, dmin;
};
static inline struct pi_r16_k45 pi_r16_k45(bool q5)
{
    if (q5)
        return (struct pi_r16_k45){PI_R16_Q5K_SB, PI_R16_Q5K_PAIR, PI_R16_Q5K_SC,
                                   PI_R16_Q5K_M,  PI_R16_Q5K_D,    PI_R16_Q5K_DMIN};
    return (struct pi_r16_k45){PI_R16_Q4K_SB, 512, PI_R16_Q4K_SC, PI_R16_Q4K_M, PI_R16_Q4K_D, PI_R16_Q4K_DMIN};
}

/* A call's activations prepared for the packed kernels: n tokens quantised to the type's activation
 * format (Q8_0; Q8_K for the K-quants) and, per block, the scale as float; for Q4_0 weights the offset term
 * -8 * sum(x), for Q8_0 weights the activation bytes plus 128 (unsigned: the operand vpdpbusd wants),
 * for Q4_K and Q5_K the sub-blocks' sums of x in int16 pairs (the operand of vpdpwssd against the mins). */
struct pi_r16_act {
    const uint8_t *xq;  /* (n, xstride) Q8_0 (Q8_K) rows of cols elements */
    size_t xstride;     /* bytes between tokens' rows (pi_act_row_bytes(type, cols)) */
    const float *dx;    /* (n, nb) block scales */
    const int32_t *off; /* Q4_0: (n, nb) -8 * sum of the block's 32 int8; otherwise NULL */
    const uint8_t *xu;  /* Q8_0: (n, nb * 32) x + 128 as unsigned bytes; otherwise NULL */
    const int32_t *xs2; /* Q4_K, Q5_K: (n, nb, 4), word i = the sums of x over sub-blocks 2i (low int16) and
                         * 2i + 1 (high int16); otherwise NULL */
    int64_t nb;         /* blocks per row: cols / 32 (K-quants: super-blocks, cols / 256) */
};

/* Offsets in a group of block b's first line of quants and of its 16 scales (J lines per block). */
static inline size_t pi_r16_qs_at(int J, int64_t b)
{
    return (size_t)(b >> 1) * (size_t)(128 * J + 64) + (size_t)(b & 1) * (size_t)(64 * J);
}
static inline size_t pi_r16_d_at(int J, int64_t b)
{
    return (size_t)(b >> 1) * (size_t)(128 * J + 64) + (size_t)(128 * J) + (size_t)(b & 1) * 32;
}

/* One group grp (nb blocks) times tokens t0..t0+nt-1 of x -> y[(t - t0) * ystride + r], r = 0..15.
 * grp 64-byte aligned; nt >= 1. Every kernel computes the floats described above. */
typedef void (*pi_r16_dot_fn)(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                              size_t ystride);

/* Bytes of one packed group of rows of cols elements of type t (Q4_0 or Q8_0, cols a positive
 * multiple of 32; Q4_K, Q5_K or Q6_K, of 256). */
size_t pi_r16_group_bytes(enum pi_type t, int64_t cols);

/* True when W can be packed: Q4_0 or Q8_0 (cols a positive multiple of 32), Q4_K, Q5_K or Q6_K (of
 * 256), rows a positive multiple of 16, each row the file's whole blocks. */
bool pi_r16_packable(const struct pi_weight *W);

/* W (rows, cols) -> dst, (rows / 16) groups of pi_r16_group_bytes(W->type, cols) bytes.
 * pi_r16_packable(W); dst 64-byte aligned. Groups are split over pool (NULL = this thread). */
void pi_r16_pack(pi_pool_t *pool, const struct pi_weight *W, uint8_t *dst);

/* Whether a packed copy of bytes more fits this machine's memory: MemAvailable (/proc/meminfo) keeps
 * PI_R16_RESERVE to spare, or MemAvailable cannot be read. *avail (optional) = MemAvailable (0 when
 * unknown). The one rule for every packer (the model's, a CPU worker's): the copies are anonymous
 * memory, and a model running from the page cache in less RAM would be killed by the OOM killer while
 * packing (the mapping itself succeeds under overcommit). */
#define PI_R16_RESERVE ((uint64_t)1 << 30)
bool pi_r16_room(uint64_t bytes, uint64_t *avail);

/* The scalar references (portable C, the definition of the results), pi_r16_dot_fn's contract. */
void pi_r16_dot_ref_q4_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride);
void pi_r16_dot_ref_q8_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride);
void pi_r16_dot_ref_q4_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride);
void pi_r16_dot_ref_q5_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride);
void pi_r16_dot_ref_q6_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride);

/* The scalar reference for type t, or NULL for a type without a packed layout. */
pi_r16_dot_fn pi_r16_ref(enum pi_type t);

/* The active variant's packed kernel for type t, or NULL where it has none (then the file's rows are
 * used). */
pi_r16_dot_fn pi_r16_kernel(enum pi_type t);

/* Y (n, rows) = X (n, cols) @ W^T through W->rows16 with kernel k (pi_r16_kernel(W->type) or
 * pi_r16_ref(W->type)). W->rows16 set (pi_r16_pack's layout). Groups are split over pool; each output
 * is written by one thread. Allocates its scratch (aborts on allocation failure). */
void pi_r16_matmul(pi_pool_t *pool, pi_r16_dot_fn k, const struct pi_weight *W, const float *X, int64_t n, float *Y);

/* nw (1..4) products of the same X: Y[i] = X @ W[i]^T, the W[i] packed, of one type and width; the
 * activations are prepared once and the weights' groups split over pool in one job (fewer joins for
 * the q, k, v and gate, up products of a layer). Each Y[i] is pi_r16_matmul's bits. */
void pi_r16_matmul_n(pi_pool_t *pool, pi_r16_dot_fn k, const struct pi_weight *const *W, int nw, const float *X,
                     int64_t n, float *const *Y);

#endif
