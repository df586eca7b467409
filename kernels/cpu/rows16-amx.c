/*
 * kernels/cpu/rows16-amx.c - the AMX-INT8 kernels over Q4_0, Q8_0 and K-quant matrices packed in 16-row groups
 * (kernels/cpu/rows16.h) for prompts: compiled with -mamx-tile -mamx-int8 into libpinfer_amx.a, the
 * "amx" variant's r16_dot, reached only after dispatch.c found AMX in CPUID and XCR0 and Linux granted
 * this process the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM).
 *
 * Sixteen tokens at a time, per block of 32 inputs, one TDPBSSD computes the exact int32 block sums of
 * 16 tokens x 16 rows: tile A is the tokens' 32 activation bytes (signed; loaded straight from the
 * Q8_0 rows with the rows' stride), tile B the 16 rows' nibbles less 8 (Q4_0's offset, so no
 * activation sum is needed) as signed bytes, 8 rows of 64 bytes:
 * row c < 4 holds each weight row's 4 low nibbles of inputs 4c..4c+3, row c >= 4 the high nibbles of
 * inputs 16+4(c-4).., which is exactly input 4c..4c+3, so A's bytes stay in their natural order. K is
 * one block, so each tile product is one block's sums and nothing is added across blocks in integers.
 * Then the float step of every kernel over this layout, per token: acc = fma(d_w * d_x, (float)C, acc),
 * in block order (C is the same integer as the other kernels' sum plus offset): the results are the
 * VNNI kernel's and the scalar reference's bits. Two tile sets (tiles 0-2 and 3-5) alternate between
 * blocks, the float steps run two blocks behind the tile products, and B is unpacked ahead in chunks
 * of blocks shared by all the call's tokens (r16_amx16, pi_r16_dot_amx). Fewer than 16 remaining
 * tokens go through the VNNI kernel (same bits). That is Q4_0 (Q8_0 loads tile B as it lies). Q4_K and
 * Q5_K fold the sub-blocks' scales into two tiles of B per pair of sub-blocks (sc = 8 sh + sl: q sh and
 * q sl, K = 64, one accumulation over the whole super-block); Q6_K takes one TDPBSSD per sub-block of 16
 * (K = 16) and scales its exact sums in int32; then the reference's float steps per super-block.
 *
 * Threading: the tile configuration and registers are per thread; each call loads the configuration
 * and releases the tiles before returning, so nothing is kept between calls or across pool threads.
 */
#include "config.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/quant-impl.h"
#include "kernels/cpu/rows16.h"
#include "lib/common.h"

/* The LDTILECFG operand (palette 1). */
struct tilecfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16]; /* bytes per row of tile i */
    uint8_t rows[16];   /* rows of tile i */
};
_Static_assert(sizeof(struct tilecfg) == 64, "LDTILECFG operand is 64 bytes");

/* Tiles: 0, 3 = C (16 tokens x 16 rows int32); 1, 4 = A (16 tokens x 32 bytes); 2, 5 = B (8 x 64).
 * A constant in memory: GCC 12's _tile_loadconfig tells the compiler it reads only the first 8 bytes
 * of its operand, so a configuration built on the stack just before may not have been stored yet
 * (the next tile instruction then faults with #UD, seen here). */
static const _Alignas(64) struct tilecfg tile_cfg = {
    .palette = 1,
    .colsb = {64, 32, 64, 64, 32, 64},
    .rows = {16, 16, 8, 16, 16, 8},
};

static void tile_config(void) { _tile_loadconfig(&tile_cfg); }

/* The group's block b unpacked into tile B's bytes (8 rows of 64): the nibbles less 8, signed. */
static inline __attribute__((always_inline)) void unpack_b(const uint8_t *grp, int64_t b, uint8_t *dst)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), k8 = _mm512_set1_epi8(8);
    const uint8_t *q = grp + pi_r16_qs_at(4, b);
    for (int j = 0; j < 4; j++) {
        __m512i v = _mm512_load_si512((const void *)(q + 64 * j));
        _mm512_store_si512((void *)(dst + 64 * j), _mm512_sub_epi8(_mm512_and_si512(v, m4), k8));
        _mm512_store_si512((void *)(dst + 256 + 64 * j),
                           _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), m4), k8));
    }
}

/* acc[t] = fma(d_w * d_x[t], (float)c[t], acc[t]) for the 16 tokens of block b (c: the exact sums;
 * dsc: the block's 16 scales). */
static inline __attribute__((always_inline)) void
float_step(const int32_t *c, const uint8_t *dsc, const struct pi_r16_act *x, int64_t t0, int64_t b, __m512 acc[16])
{
    const int64_t nb = x->nb;
    __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)dsc));
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) {
        __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(x->dx[(t0 + t) * nb + b]));
        acc[t] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(c + 16 * t))), acc[t]);
    }
}

#define CHUNK_BLOCKS 32 /* blocks of a group unpacked at a time (16 KiB on the stack) */

/* Block b's tile product on tiles tc (sums), ta (activations), tb (weights; block b's unpacked bytes at
 * bp), into the int32 sums cbuf. The tile numbers are literals: the intrinsics paste them into the
 * instruction. */
#define TILE_BLOCK(tc, ta, tb, b, bp, cbuf)                                                                            \
    do {                                                                                                               \
        _tile_zero(tc);                                                                                                \
        _tile_loadd(ta, a + (size_t)(b) * sizeof(struct pi_block_q8_0), x->xstride);                                   \
        _tile_loadd(tb, (bp), 64);                                                                                     \
        _tile_dpbssd(tc, ta, tb);                                                                                      \
        _tile_stored(tc, (cbuf), 64);                                                                                  \
    } while (0)

/* Sixteen tokens t0.. against blocks [b0, b1) of group grp (J lines per block), tile B of block b at
 * bt + (b - b0) * 512, or where bt is NULL (Q8_0) the block's own lines: acc[t] (row-wise, y[t * ys + r]) read from y unless b0 is 0, the blocks' float
 * steps added in order, written back. Software-pipelined: the float step of block b - 2 runs after
 * the tile product of block b, so that a product's store has landed before its sums are read (tile
 * stores do not forward to vector loads). */
static void r16_amx16(const uint8_t *grp, int J, const struct pi_r16_act *x, int64_t t0, int64_t b0, int64_t b1,
                      const uint8_t *bt, float *y, size_t ys)
{
    _Alignas(64) int32_t ct[4][256];
    const uint8_t *a = x->xq + (size_t)t0 * x->xstride + 2; /* block 0's qs of token t0 */
    __m512 acc[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) acc[t] = b0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(y + (size_t)t * ys);
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *bp = bt ? bt + (size_t)(b - b0) * 512 : grp + pi_r16_qs_at(J, b);
        if (b & 1) TILE_BLOCK(3, 4, 5, b, bp, ct[b & 3]);
        else TILE_BLOCK(0, 1, 2, b, bp, ct[b & 3]);
        if (b >= b0 + 2) float_step(ct[(b - 2) & 3], grp + pi_r16_d_at(J, b - 2), x, t0, b - 2, acc);
    }
    for (int64_t b = PI_MAX(b0, b1 - 2); b < b1; b++) float_step(ct[b & 3], grp + pi_r16_d_at(J, b), x, t0, b, acc);
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) _mm512_storeu_ps(y + (size_t)t * ys, acc[t]);
}

/* Q4_0: the group's blocks are unpacked CHUNK_BLOCKS at a time, each chunk once for all the call's
 * tokens (vector stores do not forward to tile loads either: unpacking a block just before its tile
 * load stalls the load until the stores commit); the tokens' accumulators live in y between chunks,
 * which changes no rounding. */
static void pi_r16_dot_amx_q4_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    _Alignas(64) uint8_t bt[CHUNK_BLOCKS * 512];
    const int64_t n16 = nt / 16 * 16;
    if (n16 > 0) {
        tile_config();
        for (int64_t b0 = 0; b0 < x->nb; b0 += CHUNK_BLOCKS) {
            int64_t b1 = PI_MIN(x->nb, b0 + CHUNK_BLOCKS);
            for (int64_t b = b0; b < b1; b++) unpack_b(grp, b, bt + (size_t)(b - b0) * 512);
            /* the tile loads of bt below are asm statements without a memory operand (GCC 12's
             * _tile_loadd): nothing else orders them after these stores */
            __asm__ volatile("" ::: "memory");
            for (int64_t t = 0; t < n16; t += 16)
                r16_amx16(grp, 4, x, t0 + t, b0, b1, bt, y + (size_t)t * ystride, ystride);
        }
        _tile_release();
    }
    if (n16 < nt) pi_r16_dot_avx512vnni_q4_0(grp, x, t0 + n16, nt - n16, y + (size_t)n16 * ystride, ystride);
}

/* Q8_0: a block's 8 lines of 16 rows' 4 bytes are tile B as they lie (signed weights, inputs 4c..4c+3
 * in row c), so the tiles load straight from the packed copy; the tokens go through the whole group
 * one tile of 16 at a time. */
static void pi_r16_dot_amx_q8_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    const int64_t n16 = nt / 16 * 16;
    if (n16 > 0) {
        tile_config();
        for (int64_t t = 0; t < n16; t += 16)
            r16_amx16(grp, 8, x, t0 + t, 0, x->nb, NULL, y + (size_t)t * ystride, ystride);
        _tile_release();
    }
    if (n16 < nt) pi_r16_dot_avx512vnni_q8_0(grp, x, t0 + n16, nt - n16, y + (size_t)n16 * ystride, ystride);
}

/* ---- Q4_K and Q5_K ---- */

#define CHUNK_SB 2 /* super-blocks of a group unpacked at a time (16 tiles of 1 KiB on the stack) */

/* v shifted left by s bits (right by -s) in 16-bit lanes; s a constant after unrolling. */
static inline __attribute__((always_inline)) __m512i shl16(__m512i v, int s)
{
    return s > 0 ? _mm512_slli_epi16(v, (unsigned)s) : s < 0 ? _mm512_srli_epi16(v, (unsigned)-s) : v;
}

/* Tiles for Q4_K/Q5_K: 0, 1 and 2, 3 = two sets of (C_hi, C_lo) (16 tokens x 16 rows int32); 4 = A (16
 * tokens x 64 activation bytes, one pair of sub-blocks); 5, 6 = B_hi, B_lo (16 rows of 64: per output row
 * the 4 weights of inputs 4k..4k+3 of the pair, k = 0..15). */
static const _Alignas(64) struct tilecfg tile_cfg_k45 = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16},
};

/* Super-block sb's 4 pairs of sub-blocks as tiles B_hi and B_lo (pair c at dst + 2048 c and + 1024):
 * each value q (Q4_K 0..15, Q5_K 0..31 with its fifth bit) times its sub-block's scale split as
 * sc = 8 sh + sl (sh, sl 0..7): B_hi holds q sh, B_lo q sl, both below 256 (unsigned bytes). So one
 * product over a whole super-block of 256 inputs gives C_hi = sum_s sh_s sum q x and C_lo likewise, and
 * 8 C_hi + C_lo is the reference's exact isum: the scales are applied inside the tile products (K = 64)
 * and no per-sub-block integer step is left. A byte times a factor is one vpmullw: a 16-bit lane holds
 * two bytes of one row, whose products (at most 217) do not carry into each other. */
static inline __attribute__((always_inline)) void unpack_q45k(bool q5, const uint8_t *grp, int64_t sb, uint8_t *dst)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), b4 = _mm512_set1_epi8(0x10), k7 = _mm512_set1_epi32(7);
    const struct pi_r16_k45 G = pi_r16_k45(q5);
    const uint8_t *base = grp + (size_t)sb * G.sb;
    for (int c = 0; c < 4; c++) {
        const uint8_t *p = base + G.pair * (size_t)c;
        __m512i f[4]; /* sh of sub-block 2c, sh of 2c + 1, sl of 2c, sl of 2c + 1: per row, in both 16-bit halves */
        for (int h = 0; h < 2; h++) {
            const __m512i sc =
                _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(const void *)(base + G.sc + 16 * (2 * c + h))));
            const __m512i sh = _mm512_srli_epi32(sc, 3), sl = _mm512_and_si512(sc, k7);
            f[h] = _mm512_or_si512(sh, _mm512_slli_epi32(sh, 16));
            f[2 + h] = _mm512_or_si512(sl, _mm512_slli_epi32(sl, 16));
        }
        uint8_t *o = dst + 2048 * c;
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            __m512i v = _mm512_load_si512((const void *)(p + 64 * j));
            __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            if (q5) { /* as the VNNI kernel: bits 2i and 2i + 1 of bit line j / 4, i = j % 4 */
                const __m512i h = _mm512_load_si512((const void *)(p + 512 + 64 * (j / 4)));
                lo = _mm512_or_si512(lo, _mm512_and_si512(shl16(h, 4 - 2 * (j % 4)), b4));
                hi = _mm512_or_si512(hi, _mm512_and_si512(shl16(h, 3 - 2 * (j % 4)), b4));
            }
            /* tile row j: inputs 4j.. of sub-block 2c (low nibbles); row 8 + j: of 2c + 1 (high) */
            _mm512_store_si512((void *)(o + 64 * j), _mm512_mullo_epi16(lo, f[0]));
            _mm512_store_si512((void *)(o + 64 * (8 + j)), _mm512_mullo_epi16(hi, f[1]));
            _mm512_store_si512((void *)(o + 1024 + 64 * j), _mm512_mullo_epi16(lo, f[2]));
            _mm512_store_si512((void *)(o + 1024 + 64 * (8 + j)), _mm512_mullo_epi16(hi, f[3]));
        }
    }
}

/* Super-block sb's float steps for the 16 tokens t0..: isum = 8 C_hi + C_lo (exact, the reference's), the
 * mins' term by vpdpwssd, the reference's two fmas into accm. */
static inline __attribute__((always_inline)) void k45_steps(bool q5, const uint8_t *grp, const struct pi_r16_act *x,
                                                            int64_t t0, int64_t sb, const int32_t *chi,
                                                            const int32_t *clo, float (*accm)[16])
{
    const struct pi_r16_k45 G = pi_r16_k45(q5);
    const uint8_t *base = grp + (size_t)sb * G.sb;
    const int64_t nsb = x->nb;
    __m512i mp[4];
    for (int i = 0; i < 4; i++)
        mp[i] = _mm512_cvtepu8_epi16(_mm256_load_si256((const __m256i *)(const void *)(base + G.m + 32 * i)));
    const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(base + G.d)));
    const __m512 dm = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(base + G.dmin)));
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) {
        const __m512i isum = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512((const void *)(chi + 16 * t)), 3),
                                              _mm512_load_si512((const void *)(clo + 16 * t)));
        const int32_t *s2 = x->xs2 + ((t0 + t) * nsb + sb) * 4;
        __m512i ms = _mm512_setzero_si512();
        for (int i = 0; i < 4; i++) ms = _mm512_dpwssd_epi32(ms, mp[i], _mm512_set1_epi32(s2[i]));
        const __m512 dx = _mm512_set1_ps(x->dx[(t0 + t) * nsb + sb]);
        __m512 acc = _mm512_load_ps(accm[t]);
        acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum), acc);
        acc = _mm512_fnmadd_ps(_mm512_mul_ps(dm, dx), _mm512_cvtepi32_ps(ms), acc);
        _mm512_store_ps(accm[t], acc);
    }
}

/* One super-block's 8 tile products into tile set (chi, clo), the sums stored to ct. The tile numbers
 * are literals: the intrinsics paste them into the instruction. */
#define K45_PRODUCTS(chi, clo, ap, bp, ct)                                                                             \
    do {                                                                                                               \
        _tile_zero(chi);                                                                                               \
        _tile_zero(clo);                                                                                               \
        for (int c_ = 0; c_ < 4; c_++) {                                                                               \
            _tile_loadd(4, (ap) + 64 * c_, x->xstride);                                                                \
            _tile_loadd(5, (bp) + 2048 * c_, 64);                                                                      \
            _tile_loadd(6, (bp) + 2048 * c_ + 1024, 64);                                                               \
            _tile_dpbsud(chi, 4, 5);                                                                                   \
            _tile_dpbsud(clo, 4, 6);                                                                                   \
        }                                                                                                              \
        _tile_stored(chi, (ct)[0], 64);                                                                                \
        _tile_stored(clo, (ct)[1], 64);                                                                                \
    } while (0)

/* Sixteen tokens t0.. against super-blocks [s0, s1) of group grp, their unpacked tiles at bt
 * (unpack_q45k, 8 KiB per super-block, s0 first): super-block sb's products on tile set sb % 2, its
 * float steps after the next super-block's products (a tile store does not forward to vector loads);
 * accm holds the accumulators between calls in y's place (no rounding). */
static inline __attribute__((always_inline)) void r16_q45k_amx16(bool q5, const uint8_t *grp,
                                                                 const struct pi_r16_act *x, int64_t t0, int64_t s0,
                                                                 int64_t s1, const uint8_t *bt, float *y, size_t ys)
{
    _Alignas(64) int32_t ct[2][2][256];
    _Alignas(64) float accm[16][16];
    const uint8_t *a = x->xq + (size_t)t0 * x->xstride + 4; /* token t0's super-block 0 values */
    for (int t = 0; t < 16; t++)
        _mm512_store_ps(accm[t], s0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(y + (size_t)t * ys));
    for (int64_t sb = s0; sb < s1; sb++) {
        const uint8_t *ap = a + (size_t)sb * sizeof(struct pi_block_q8_K), *bp = bt + (size_t)(sb - s0) * 8192;
        if (sb & 1) K45_PRODUCTS(2, 3, ap, bp, ct[1]);
        else K45_PRODUCTS(0, 1, ap, bp, ct[0]);
        if (sb > s0) k45_steps(q5, grp, x, t0, sb - 1, ct[(sb - 1) & 1][0], ct[(sb - 1) & 1][1], accm);
    }
    k45_steps(q5, grp, x, t0, s1 - 1, ct[(s1 - 1) & 1][0], ct[(s1 - 1) & 1][1], accm);
    for (int t = 0; t < 16; t++) _mm512_storeu_ps(y + (size_t)t * ys, _mm512_load_ps(accm[t]));
}

/* Q4_K and Q5_K: each chunk of super-blocks unpacked once for all the call's tokens (as Q4_0 above),
 * then the tokens sixteen at a time; fewer than 16 remaining through the VNNI kernel (the same bits). */
static inline __attribute__((always_inline)) void r16_q45k_amx(bool q5, const uint8_t *grp, const struct pi_r16_act *x,
                                                               int64_t t0, int64_t nt, float *y, size_t ystride)
{
    _Alignas(64) uint8_t bt[CHUNK_SB * 8192];
    const int64_t n16 = nt / 16 * 16;
    if (n16 > 0) {
        _tile_loadconfig(&tile_cfg_k45);
        for (int64_t s0 = 0; s0 < x->nb; s0 += CHUNK_SB) {
            int64_t s1 = PI_MIN(x->nb, s0 + CHUNK_SB);
            for (int64_t sb = s0; sb < s1; sb++) unpack_q45k(q5, grp, sb, bt + (size_t)(sb - s0) * 8192);
            __asm__ volatile("" ::: "memory"); /* the tile loads below must follow these stores */
            for (int64_t t = 0; t < n16; t += 16)
                r16_q45k_amx16(q5, grp, x, t0 + t, s0, s1, bt, y + (size_t)t * ystride, ystride);
        }
        _tile_release();
    }
    if (n16 >= nt) return;
    if (q5) pi_r16_dot_avx512vnni_q5_K(grp, x, t0 + n16, nt - n16, y + (size_t)n16 * ystride, ystride);
    else pi_r16_dot_avx512vnni_q4_K(grp, x, t0 + n16, nt - n16, y + (size_t)n16 * ystride, ystride);
}

static void pi_r16_dot_amx_q4_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    r16_q45k_amx(false, grp, x, t0, nt, y, ystride);
}

static void pi_r16_dot_amx_q5_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    r16_q45k_amx(true, grp, x, t0, nt, y, ystride);
}

/* ---- Q6_K ---- */

/* Tiles for Q6_K's sub-blocks of 16: 0, 3 = C (16 tokens x 16 rows int32); 1, 4 = A (16 tokens x 16
 * bytes); 2, 5 = B (4 rows x 64: per output row the 4 weights of inputs 4c..4c+3, c = 0..3). */
static const _Alignas(64) struct tilecfg tile_cfg_q6 = {
    .palette = 1,
    .colsb = {64, 16, 64, 64, 16, 64},
    .rows = {16, 16, 4, 16, 16, 4},
};

/* Super-block sb's 16 sub-blocks as tile B's bytes (4 rows of 64, sub-block s at dst + 256 s): the
 * values less 32 (signed), so that C is the reference's sum of (q - 32) x and no offset term is needed.
 * Pair c's lines give sub-blocks 4c (half 2c, lines 0-3), 4c + 1 (half 2c, lines 4-7), 4c + 2 and
 * 4c + 3 (half 2c + 1), with the high bits merged as the VNNI kernel does. */
static inline __attribute__((always_inline)) void unpack_q6k(const uint8_t *grp, int64_t sb, uint8_t *dst)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30), k32 = _mm512_set1_epi8(32);
    const uint8_t *base = grp + (size_t)sb * PI_R16_Q6K_SB;
    for (int c = 0; c < 4; c++) {
        const uint8_t *q = base + PI_R16_Q6K_PAIR * c;
        uint8_t *o = dst + 1024 * c;
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m512i v0 = _mm512_load_si512((const void *)(q + 64 * j));
            const __m512i v1 = _mm512_load_si512((const void *)(q + 64 * (j + 4)));
            const __m512i h = _mm512_load_si512((const void *)(q + 64 * (8 + j)));
            const __m512i a = _mm512_ternarylogic_epi32(v0, m4, _mm512_and_si512(_mm512_slli_epi16(h, 4), m30), 0xEA);
            const __m512i b = _mm512_ternarylogic_epi32(v1, m4, _mm512_and_si512(h, m30), 0xEA);
            const __m512i e = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v0, 4), m4,
                                                        _mm512_and_si512(_mm512_slli_epi16(h, 2), m30), 0xEA);
            const __m512i f = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v1, 4), m4,
                                                        _mm512_and_si512(_mm512_srli_epi16(h, 2), m30), 0xEA);
            _mm512_store_si512((void *)(o + 64 * j), _mm512_sub_epi8(a, k32));       /* sub-block 4c */
            _mm512_store_si512((void *)(o + 256 + 64 * j), _mm512_sub_epi8(b, k32)); /* 4c + 1 */
            _mm512_store_si512((void *)(o + 512 + 64 * j), _mm512_sub_epi8(e, k32)); /* 4c + 2 */
            _mm512_store_si512((void *)(o + 768 + 64 * j), _mm512_sub_epi8(f, k32)); /* 4c + 3 */
        }
    }
}

/* Sixteen tokens t0.. against super-blocks [s0, s1) of group grp, their unpacked tiles at bt
 * (unpack_q6k). As r16_q45k_amx16 with sixteen sub-blocks of 16 per super-block: sub-block g's tile
 * product to ct[g % 16], its integer step (isum[t] += C[t] * sc_s, the scales sign-extended from the
 * int16-pair layout) eight sub-blocks later, and after a super-block's sixteenth the float step. */
static void r16_q6k_amx16(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t s0, int64_t s1,
                          const uint8_t *bt, float *y, size_t ys)
{
    _Alignas(64) int32_t ct[16][256];
    _Alignas(64) float accm[16][16];
    const int64_t nsb = x->nb;
    const uint8_t *a = x->xq + (size_t)t0 * x->xstride + 4;
    __m512i isum[16];
    for (int t = 0; t < 16; t++) {
        _mm512_store_ps(accm[t], s0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(y + (size_t)t * ys));
        isum[t] = _mm512_setzero_si512();
    }
    const int64_t ng = (s1 - s0) * 16;
    for (int64_t g = 0; g < ng + 8; g++) {
        if (g < ng) {
            const int64_t sb = s0 + g / 16, s = g % 16;
            const uint8_t *ap = a + (size_t)sb * sizeof(struct pi_block_q8_K) + 16 * (size_t)s;
            const uint8_t *bp = bt + (size_t)g * 256;
            if (g & 1) {
                _tile_zero(3);
                _tile_loadd(4, ap, x->xstride);
                _tile_loadd(5, bp, 64);
                _tile_dpbssd(3, 4, 5);
                _tile_stored(3, ct[g & 15], 64);
            } else {
                _tile_zero(0);
                _tile_loadd(1, ap, x->xstride);
                _tile_loadd(2, bp, 64);
                _tile_dpbssd(0, 1, 2);
                _tile_stored(0, ct[g & 15], 64);
            }
        }
        if (g < 8) continue;
        const int64_t h = g - 8, sb = s0 + h / 16, s = h % 16;
        const uint8_t *base = grp + (size_t)sb * PI_R16_Q6K_SB;
        const __m512i p = _mm512_cvtepi8_epi16(
            _mm256_load_si256((const __m256i *)(const void *)(base + PI_R16_Q6K_SC + 32 * (s / 2))));
        const __m512i sc = (s & 1) ? _mm512_srai_epi32(p, 16) : _mm512_srai_epi32(_mm512_slli_epi32(p, 16), 16);
#pragma GCC unroll 16
        for (int t = 0; t < 16; t++)
            isum[t] = _mm512_add_epi32(isum[t],
                                       _mm512_mullo_epi32(_mm512_load_si512((const void *)(ct[h & 15] + 16 * t)), sc));
        if (s != 15) continue;
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(base + PI_R16_Q6K_D)));
#pragma GCC unroll 16
        for (int t = 0; t < 16; t++) {
            const __m512 dx = _mm512_set1_ps(x->dx[(t0 + t) * nsb + sb]);
            const __m512 acc = _mm512_load_ps(accm[t]);
            _mm512_store_ps(accm[t], _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum[t]), acc));
            isum[t] = _mm512_setzero_si512();
        }
    }
    for (int t = 0; t < 16; t++) _mm512_storeu_ps(y + (size_t)t * ys, _mm512_load_ps(accm[t]));
}

static void pi_r16_dot_amx_q6_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                                size_t ystride)
{
    _Alignas(64) uint8_t bt[CHUNK_SB * 16 * 256];
    const int64_t n16 = nt / 16 * 16;
    if (n16 > 0) {
        _tile_loadconfig(&tile_cfg_q6);
        for (int64_t s0 = 0; s0 < x->nb; s0 += CHUNK_SB) {
            int64_t s1 = PI_MIN(x->nb, s0 + CHUNK_SB);
            for (int64_t sb = s0; sb < s1; sb++) unpack_q6k(grp, sb, bt + (size_t)(sb - s0) * 4096);
            __asm__ volatile("" ::: "memory"); /* the tile loads below must follow these stores */
            for (int64_t t = 0; t < n16; t += 16)
                r16_q6k_amx16(grp, x, t0 + t, s0, s1, bt, y + (size_t)t * ystride, ystride);
        }
        _tile_release();
    }
    if (n16 < nt) pi_r16_dot_avx512vnni_q6_K(grp, x, t0 + n16, nt - n16, y + (size_t)n16 * ystride, ystride);
}

const struct pi_kernel_table pi_kernels_amx_raw = {
    .name = "amx",
    .r16_dot = {[PI_TYPE_Q4_0] = pi_r16_dot_amx_q4_0,
                [PI_TYPE_Q8_0] = pi_r16_dot_amx_q8_0,
                [PI_TYPE_Q4_K] = pi_r16_dot_amx_q4_K,
                [PI_TYPE_Q5_K] = pi_r16_dot_amx_q5_K,
                [PI_TYPE_Q6_K] = pi_r16_dot_amx_q6_K},
};
