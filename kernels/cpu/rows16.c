/*
 * kernels/cpu/rows16.c - packing Q4_0, Q8_0, Q4_K, Q5_K and Q6_K matrices into 16-row groups, the scalar
 * reference kernels over them and the product driver (kernels/cpu/rows16.h).
 *
 * Threading: pi_r16_pack and pi_r16_matmul hand out ranges of groups over the pool; each group's
 * bytes and each group's 16 outputs of a token are written by exactly one thread. The prepared
 * activations are shared read-only. pi_r16_matmul tiles tokens as pi_matmul does (a tile's
 * activations, at most TILE_BYTES, stay in L2 while a range of groups streams through once) and hands
 * the kernel a whole tile per group, so that a group (18 KiB at 2048 columns) is read from memory
 * once per tile and from L1 for every further token. Tiling changes no result: each (row, token)
 * output has the same float steps in the same order whatever the tile, thread or kernel call.
 */
#include "config.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/quant-impl.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/rows16.h"
#include "lib/common.h"

#define MIN_CHUNK_BYTES (32 * 1024) /* smallest share of weights worth handing to a thread */
#define TILE_BYTES (256 * 1024)     /* activation bytes per token tile */

/* The K-quant layouts of rows16.h, pinned: the parts follow one another without gaps, every super-block
 * is whole 64-byte lines, and the kernels' aligned loads of scales, mins and d (16 and 32 bytes) land on
 * their alignment. The kernels read the Q8_K activations' qs at 4 and bsums at 260. */
_Static_assert(PI_R16_Q4K_SC == 4 * 512 && PI_R16_Q4K_M == PI_R16_Q4K_SC + 128 && PI_R16_Q4K_D == PI_R16_Q4K_M + 128 &&
                   PI_R16_Q4K_DMIN == PI_R16_Q4K_D + 32 && PI_R16_Q4K_SB == PI_R16_Q4K_DMIN + 32 &&
                   PI_R16_Q4K_SB % 64 == 0,
               "Q4_K group layout");
_Static_assert(PI_R16_Q5K_PAIR == 10 * 64 && PI_R16_Q5K_SC == 4 * PI_R16_Q5K_PAIR &&
                   PI_R16_Q5K_M == PI_R16_Q5K_SC + 128 && PI_R16_Q5K_D == PI_R16_Q5K_M + 128 &&
                   PI_R16_Q5K_DMIN == PI_R16_Q5K_D + 32 && PI_R16_Q5K_SB == PI_R16_Q5K_DMIN + 32 &&
                   PI_R16_Q5K_SB % 64 == 0,
               "Q5_K group layout");
_Static_assert(PI_R16_Q6K_PAIR == 12 * 64 && PI_R16_Q6K_SC == 4 * PI_R16_Q6K_PAIR &&
                   PI_R16_Q6K_D == PI_R16_Q6K_SC + 256 && PI_R16_Q6K_SB == PI_R16_Q6K_D + 64 && PI_R16_Q6K_SB % 64 == 0,
               "Q6_K group layout");
_Static_assert(offsetof(struct pi_block_q8_K, qs) == 4 && offsetof(struct pi_block_q8_K, bsums) == 4 + 256,
               "Q8_K fields where the K-quant kernels read them");

/* 64-byte lines of weights per block: Q4_0 16 nibble bytes per row, Q8_0 32 bytes. */
static int block_lines(enum pi_type t) { return t == PI_TYPE_Q4_0 ? 4 : 8; }

size_t pi_r16_group_bytes(enum pi_type t, int64_t cols)
{
    if (t == PI_TYPE_Q4_K || t == PI_TYPE_Q5_K || t == PI_TYPE_Q6_K) {
        PI_ASSERT(cols > 0 && cols % 256 == 0);
        return (size_t)(cols / 256) * (t == PI_TYPE_Q4_K   ? PI_R16_Q4K_SB
                                       : t == PI_TYPE_Q5_K ? PI_R16_Q5K_SB
                                                           : PI_R16_Q6K_SB);
    }
    PI_ASSERT((t == PI_TYPE_Q4_0 || t == PI_TYPE_Q8_0) && cols > 0 && cols % 32 == 0);
    return (size_t)((cols / 32 + 1) / 2) * (size_t)(128 * block_lines(t) + 64);
}

bool pi_r16_packable(const struct pi_weight *W)
{
    int64_t be; /* elements per block */
    size_t bb;  /* bytes per block */
    switch (W->type) {
    case PI_TYPE_Q4_0: be = 32, bb = sizeof(struct pi_block_q4_0); break;
    case PI_TYPE_Q8_0: be = 32, bb = sizeof(struct pi_block_q8_0); break;
    case PI_TYPE_Q4_K: be = 256, bb = sizeof(struct pi_block_q4_K); break;
    case PI_TYPE_Q5_K: be = 256, bb = sizeof(struct pi_block_q5_K); break;
    case PI_TYPE_Q6_K: be = 256, bb = sizeof(struct pi_block_q6_K); break;
    default: return false;
    }
    return W->data && W->rows > 0 && W->rows % PI_R16_ROWS == 0 && W->cols > 0 && W->cols % be == 0 &&
           W->row_bytes == (size_t)(W->cols / be) * bb;
}

struct pack_ctx {
    const struct pi_weight *W;
    uint8_t *dst;
    size_t gb; /* pi_r16_group_bytes(type, cols) */
};

/* Groups [begin, end): each row's block b scatters its quant bytes as 4-byte words, one per line, and
 * its scale beside the other rows'. Q4_0 and Q8_0 blocks are both an fp16 d followed by the quants. */
static void pack_groups(void *vctx, int64_t begin, int64_t end, int thread)
{
    const struct pack_ctx *c = vctx;
    const int64_t nb = c->W->cols / 32;
    const int J = block_lines(c->W->type);
    const size_t bb = c->W->row_bytes / (size_t)nb;
    (void)thread;
    for (int64_t g = begin; g < end; g++) {
        uint8_t *grp = c->dst + (size_t)g * c->gb;
        memset(grp, 0, c->gb); /* an odd last block's partner */
        for (int r = 0; r < PI_R16_ROWS; r++) {
            const uint8_t *row = pi_weight_row(c->W, g * PI_R16_ROWS + r);
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * bb;
                uint8_t *q = grp + pi_r16_qs_at(J, b) + r * 4;
                for (int j = 0; j < J; j++) memcpy(q + j * 64, blk + 2 + 4 * j, 4);
                memcpy(grp + pi_r16_d_at(J, b) + r * 2, blk, 2);
            }
        }
    }
}

/* Q4_K and Q5_K groups [begin, end): each row's super-block scatters its 128 quant bytes as 4-byte
 * words, one per line (Q5_K: and its fifth bits, two lines per pair of sub-blocks), its 8 scales and 8
 * mins unpacked (pi_k4_scale_min) beside the other rows', d and dmin likewise (rows16.h). The two
 * types' blocks differ only by Q5_K's qh, between the scales and the quants. */
static void pack_groups_q45_K(void *vctx, int64_t begin, int64_t end, int thread)
{
    const struct pack_ctx *c = vctx;
    const bool q5 = c->W->type == PI_TYPE_Q5_K;
    const struct pi_r16_k45 G = pi_r16_k45(q5);
    const int64_t nsb = c->W->cols / 256;
    const size_t bb = q5 ? sizeof(struct pi_block_q5_K) : sizeof(struct pi_block_q4_K);
    (void)thread;
    for (int64_t g = begin; g < end; g++) {
        uint8_t *grp = c->dst + (size_t)g * c->gb;
        for (int64_t sb = 0; sb < nsb; sb++) { /* the super-block's lines stay in L1 while the rows fill them */
            for (int r = 0; r < PI_R16_ROWS; r++) {
                const uint8_t *row = pi_weight_row(c->W, g * PI_R16_ROWS + r);
                const struct pi_block_q4_K *blk = (const void *)(row + (size_t)sb * bb); /* d, dmin, scales */
                const uint8_t *qh = q5 ? ((const struct pi_block_q5_K *)(const void *)blk)->qh : NULL;
                const uint8_t *qs = q5 ? ((const struct pi_block_q5_K *)(const void *)blk)->qs : blk->qs;
                uint8_t *base = grp + (size_t)sb * G.sb;
                for (int l = 0; l < 32; l++)
                    memcpy(base + G.pair * (size_t)(l / 8) + 64 * (l % 8) + 4 * r, qs + 4 * l, 4);
                for (int cc = 0; q5 && cc < 4; cc++) /* fifth bit of input o of sub-block 2cc + h: qh[o] bit 2cc + h */
                    for (int m = 0; m < 2; m++)
                        for (int k = 0; k < 4; k++) {
                            unsigned v = 0;
                            for (int i = 0; i < 4; i++) /* both bits of the pair at once: bits 2i and 2i + 1 */
                                v |= ((unsigned)(qh[4 * (4 * m + i) + k] >> (2 * cc)) & 3u) << (2 * i);
                            base[G.pair * (size_t)cc + 512 + 64 * m + 4 * r + k] = (uint8_t)v;
                        }
                for (int j = 0; j < 8; j++) {
                    uint8_t sc, m;
                    pi_k4_scale_min(j, blk->scales, &sc, &m);
                    base[G.sc + 16 * j + r] = sc;
                    base[G.m + 32 * (j / 2) + 2 * r + (j & 1)] = m;
                }
                memcpy(base + G.d + 2 * r, &blk->d, 2);
                memcpy(base + G.dmin + 2 * r, &blk->dmin, 2);
            }
        }
    }
}

/* Q6_K: a super-block's 256 6-bit values (0..63) in element order, from the file's interleaving: per
 * 128-element half h, ql[64h + l] holds elements l (low nibble) and l + 64 (high), ql[64h + l + 32]
 * elements l + 32 and l + 96, and qh[32h + l] the high 2 bits of l, l + 32, l + 64 and l + 96 at bits
 * 0, 2, 4 and 6 (l < 32). */
static void q6_values(const struct pi_block_q6_K *b, uint8_t *q)
{
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        uint8_t *o = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            o[l] = (uint8_t)((ql[l] & 15) | (qh[l] & 3) << 4);
            o[l + 32] = (uint8_t)((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4);
            o[l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
            o[l + 96] = (uint8_t)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
        }
    }
}

/* Q6_K groups [begin, end): per super-block and row (so that the super-block's 3.4 KB stay in L1 while
 * the 16 rows fill it) the elements' low nibbles and high bit pairs as rows16.h lays them out, the 16
 * scales beside the other rows' in pairs, d likewise. */
static void pack_groups_q6_K(void *vctx, int64_t begin, int64_t end, int thread)
{
    const struct pack_ctx *c = vctx;
    const int64_t nsb = c->W->cols / 256;
    (void)thread;
    for (int64_t g = begin; g < end; g++) {
        uint8_t *grp = c->dst + (size_t)g * c->gb;
        for (int64_t sb = 0; sb < nsb; sb++) {
            uint8_t *base = grp + (size_t)sb * PI_R16_Q6K_SB;
            memset(base + PI_R16_Q6K_D, 0, PI_R16_Q6K_SB - PI_R16_Q6K_D); /* d and the padding after it */
            for (int r = 0; r < PI_R16_ROWS; r++) {
                const struct pi_block_q6_K *blk =
                    (const struct pi_block_q6_K *)pi_weight_row(c->W, g * PI_R16_ROWS + r) + sb;
                uint8_t q[256];
                q6_values(blk, q);
                for (int cc = 0; cc < 4; cc++) {
                    uint8_t *pair = base + PI_R16_Q6K_PAIR * cc + 4 * r;
                    const uint8_t *e0 = q + 64 * cc; /* half 2cc; half 2cc + 1 at e0 + 32 */
                    for (int j = 0; j < 8; j++)
                        for (int k = 0; k < 4; k++) {
                            const int e = 4 * j + k;
                            pair[64 * j + k] = (uint8_t)((e0[e] & 15) | (e0[e + 32] & 15) << 4);
                        }
                    for (int j = 0; j < 4; j++)
                        for (int k = 0; k < 4; k++) {
                            const int e = 4 * j + k;
                            pair[64 * (8 + j) + k] = (uint8_t)((e0[e] >> 4) | (e0[e + 32] >> 4) << 2 |
                                                               (e0[e + 16] >> 4) << 4 | (e0[e + 48] >> 4) << 6);
                        }
                }
                for (int s = 0; s < 16; s++)
                    base[PI_R16_Q6K_SC + 32 * (s / 2) + 2 * r + (s & 1)] = (uint8_t)blk->scales[s];
                memcpy(base + PI_R16_Q6K_D + 2 * r, &blk->d, 2);
            }
        }
    }
}

void pi_r16_pack(pi_pool_t *pool, const struct pi_weight *W, uint8_t *dst)
{
    PI_ASSERT(pi_r16_packable(W) && ((uintptr_t)dst & 63) == 0);
    struct pack_ctx c = {W, dst, pi_r16_group_bytes(W->type, W->cols)};
    pi_pool_for(pool, W->rows / PI_R16_ROWS, PI_MAX(1, (int64_t)(MIN_CHUNK_BYTES / c.gb)),
                W->type == PI_TYPE_Q4_K || W->type == PI_TYPE_Q5_K ? pack_groups_q45_K
                : W->type == PI_TYPE_Q6_K                          ? pack_groups_q6_K
                                                                   : pack_groups,
                &c);
}

bool pi_r16_room(uint64_t bytes, uint64_t *avail)
{
    uint64_t a = 0;
    FILE *f = fopen("/proc/meminfo", "re");
    if (f) {
        char line[256];
        unsigned long long kb = 0;
        bool found = false;
        while (!found && fgets(line, sizeof line, f)) found = sscanf(line, "MemAvailable: %llu kB", &kb) == 1;
        fclose(f);
        if (found) a = (uint64_t)kb * 1024;
    }
    if (avail) *avail = a;
    return a == 0 || (bytes <= a && a - bytes >= PI_R16_RESERVE);
}

/* Both references: the exact block sum of row r, token t, block b from the J lines of the group. */
static int32_t ref_isum(const uint8_t *grp, int J, const struct pi_r16_act *x, int64_t t, int r, int64_t b)
{
    const struct pi_block_q8_0 *xb = (const struct pi_block_q8_0 *)(x->xq + (size_t)t * x->xstride) + b;
    const uint8_t *q = grp + pi_r16_qs_at(J, b) + r * 4;
    int32_t isum = 0;
    for (int j = 0; j < J; j++) {
        for (int k = 0; k < 4; k++) {
            if (J == 4)
                isum += ((q[j * 64 + k] & 15) - 8) * xb->qs[4 * j + k] +
                        ((q[j * 64 + k] >> 4) - 8) * xb->qs[16 + 4 * j + k];
            else isum += (int8_t)q[j * 64 + k] * xb->qs[4 * j + k];
        }
    }
    return isum;
}

static void dot_ref(int J, const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                    size_t ystride)
{
    const int64_t nb = x->nb;
    for (int64_t t = t0; t < t0 + nt; t++) {
        for (int r = 0; r < PI_R16_ROWS; r++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                uint16_t dw;
                memcpy(&dw, grp + pi_r16_d_at(J, b) + r * 2, 2);
                acc = fmaf(pi_fp16_to_fp32(dw) * x->dx[t * nb + b], (float)ref_isum(grp, J, x, t, r, b), acc);
            }
            y[(size_t)(t - t0) * ystride + (size_t)r] = acc;
        }
    }
}

void pi_r16_dot_ref_q4_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride)
{
    dot_ref(4, grp, x, t0, nt, y, ystride);
}

void pi_r16_dot_ref_q8_0(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride)
{
    dot_ref(8, grp, x, t0, nt, y, ystride);
}

static void dot_ref_q45(bool q5, const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                        size_t ystride)
{
    const struct pi_r16_k45 G = pi_r16_k45(q5);
    const int64_t nsb = x->nb;
    for (int64_t t = t0; t < t0 + nt; t++) {
        for (int r = 0; r < PI_R16_ROWS; r++) {
            float acc = 0.0f;
            for (int64_t sb = 0; sb < nsb; sb++) {
                const uint8_t *base = grp + (size_t)sb * G.sb;
                const struct pi_block_q8_K *xb = (const struct pi_block_q8_K *)(x->xq + (size_t)t * x->xstride) + sb;
                const int32_t *s2 = x->xs2 + (t * nsb + sb) * 4;
                int32_t isum = 0, msum = 0;
                for (int s = 0; s < 8; s++) {
                    const uint8_t *pair = base + G.pair * (size_t)(s / 2);
                    int32_t qx = 0;
                    for (int k = 0; k < 32; k++) {
                        const uint8_t q = pair[64 * (k / 4) + 4 * r + k % 4];
                        int v = (s & 1) ? q >> 4 : q & 15;
                        if (q5)
                            v |= ((pair[512 + 64 * (k / 16) + 4 * r + k % 4] >> (2 * (k / 4 % 4) + (s & 1))) & 1) << 4;
                        qx += v * xb->qs[32 * s + k];
                    }
                    const int32_t xsum = (int16_t)(uint16_t)((uint32_t)s2[s / 2] >> (16 * (s & 1)));
                    isum += base[G.sc + 16 * s + r] * qx;
                    msum += base[G.m + 32 * (s / 2) + 2 * r + (s & 1)] * xsum;
                }
                uint16_t dw, dm;
                memcpy(&dw, base + G.d + 2 * r, 2);
                memcpy(&dm, base + G.dmin + 2 * r, 2);
                const float a = pi_fp16_to_fp32(dw) * x->dx[t * nsb + sb],
                            b = pi_fp16_to_fp32(dm) * x->dx[t * nsb + sb];
                acc = fmaf(a, (float)isum, acc);
                acc = fmaf(-b, (float)msum, acc);
            }
            y[(size_t)(t - t0) * ystride + (size_t)r] = acc;
        }
    }
}

void pi_r16_dot_ref_q6_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride)
{
    const int64_t nsb = x->nb;
    for (int64_t t = t0; t < t0 + nt; t++) {
        for (int r = 0; r < PI_R16_ROWS; r++) {
            float acc = 0.0f;
            for (int64_t sb = 0; sb < nsb; sb++) {
                const uint8_t *base = grp + (size_t)sb * PI_R16_Q6K_SB;
                const struct pi_block_q8_K *xb = (const struct pi_block_q8_K *)(x->xq + (size_t)t * x->xstride) + sb;
                int32_t isum = 0, corr = 0;
                for (int s = 0; s < 16; s++) {
                    const int h = s / 2, c = h / 2, hp = h & 1; /* 32-element half, pair, which of the pair */
                    int32_t qx = 0;
                    for (int jj = 0; jj < 4; jj++) {
                        const int j = 4 * (s & 1) + jj;
                        for (int k = 0; k < 4; k++) {
                            const uint8_t *pair = base + PI_R16_Q6K_PAIR * c;
                            const uint8_t lo = pair[64 * j + 4 * r + k], hi = pair[64 * (8 + j % 4) + 4 * r + k];
                            const int q = (hp ? lo >> 4 : lo & 15) | ((hi >> (4 * (j / 4) + 2 * hp)) & 3) << 4;
                            qx += q * xb->qs[32 * h + 4 * j + k];
                        }
                    }
                    const int32_t sc = (int8_t)base[PI_R16_Q6K_SC + 32 * (s / 2) + 2 * r + (s & 1)];
                    isum += sc * qx;
                    corr += sc * xb->bsums[s];
                }
                isum -= 32 * corr;
                uint16_t dw;
                memcpy(&dw, base + PI_R16_Q6K_D + 2 * r, 2);
                acc = fmaf(pi_fp16_to_fp32(dw) * x->dx[t * nsb + sb], (float)isum, acc);
            }
            y[(size_t)(t - t0) * ystride + (size_t)r] = acc;
        }
    }
}

void pi_r16_dot_ref_q4_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride)
{
    dot_ref_q45(false, grp, x, t0, nt, y, ystride);
}

void pi_r16_dot_ref_q5_K(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y,
                         size_t ystride)
{
    dot_ref_q45(true, grp, x, t0, nt, y, ystride);
}

pi_r16_dot_fn pi_r16_ref(enum pi_type t)
{
    switch (t) {
    case PI_TYPE_Q4_0: return pi_r16_dot_ref_q4_0;
    case PI_TYPE_Q8_0: return pi_r16_dot_ref_q8_0;
    case PI_TYPE_Q4_K: return pi_r16_dot_ref_q4_K;
    case PI_TYPE_Q5_K: return pi_r16_dot_ref_q5_K;
    case PI_TYPE_Q6_K: return pi_r16_dot_ref_q6_K;
    default: return NULL;
    }
}

pi_r16_dot_fn pi_r16_kernel(enum pi_type t)
{
    return (unsigned)t < PI_TYPE_COUNT ? pi_kernels_active()->r16_dot[t] : NULL;
}

#define MAX_W 4 /* weights per pi_r16_matmul_n call */

struct mm_ctx {
    pi_r16_dot_fn k;
    int nw;
    const uint8_t *W16[MAX_W]; /* (rows[i] / 16) groups each */
    int64_t g_end[MAX_W];      /* groups of W16[0..i], the pool's index space */
    int64_t rows[MAX_W];
    float *Y[MAX_W]; /* (n, rows[i]) */
    size_t gb;
    int64_t n, tile;
    const struct pi_r16_act *x;
};

/* Groups [begin, end) of the weights' concatenated groups for every token: token tiles outside,
 * groups inside, the tile's tokens in the kernel. */
static void mm_groups(void *vctx, int64_t begin, int64_t end, int thread)
{
    const struct mm_ctx *c = vctx;
    (void)thread;
    for (int64_t t0 = 0; t0 < c->n; t0 += c->tile) {
        int64_t nt = PI_MIN(c->n - t0, c->tile);
        int i = 0;
        for (int64_t g = begin; g < end; g++) {
            while (g >= c->g_end[i]) i++;
            int64_t lg = g - (i ? c->g_end[i - 1] : 0);
            c->k(c->W16[i] + (size_t)lg * c->gb, c->x, t0, nt,
                 c->Y[i] + (size_t)t0 * (size_t)c->rows[i] + (size_t)lg * PI_R16_ROWS, (size_t)c->rows[i]);
        }
    }
}

void pi_r16_matmul_n(pi_pool_t *pool, pi_r16_dot_fn k, const struct pi_weight *const *W, int nw, const float *X,
                     int64_t n, float *const *Y)
{
    PI_ASSERT(k && nw >= 1 && nw <= MAX_W && n >= 0);
    for (int i = 0; i < nw; i++)
        PI_ASSERT(W[i]->rows16 && pi_r16_packable(W[i]) && W[i]->type == W[0]->type && W[i]->cols == W[0]->cols);
    if (n == 0) return;
    const enum pi_type type = W[0]->type;
    const bool q8 = type == PI_TYPE_Q8_0, qk = type == PI_TYPE_Q4_K || type == PI_TYPE_Q5_K || type == PI_TYPE_Q6_K;
    const int64_t cols = W[0]->cols, nb = cols / (qk ? 256 : 32);
    /* per token: dx (nb floats), off (Q4_0: nb int32), xu (Q8_0: 32 nb bytes) or xs2 (K: 4 nb int32),
     * then the activation row (Q8_0 or Q8_K) */
    size_t xs = pi_act_row_bytes(type, cols), per = xs + (size_t)nb * (q8 ? 36 : qk ? 20 : 8), bytes;
    PI_ASSERT(pi_size_mul(per, (size_t)n, &bytes));
    uint8_t *scr = malloc(bytes);
    PI_ASSERT(scr != NULL);
    float *dx = (float *)(void *)scr;
    uint8_t *side = scr + (size_t)n * (size_t)nb * 4; /* off, xu or xs2 */
    int32_t *off = q8 || qk ? NULL : (int32_t *)(void *)side;
    uint8_t *xu = q8 ? side : NULL;
    /* Q6_K's kernels read the Q8_K rows' own sums of 16 (its -32 offset's term); only the min's term of
     * Q4_K and Q5_K needs the sums of 32 */
    int32_t *xs2 = qk && type != PI_TYPE_Q6_K ? (int32_t *)(void *)side : NULL;
    uint8_t *xq = side + (size_t)n * (size_t)nb * (q8 ? 32 : qk ? 16 : 4);
    for (int64_t t = 0; t < n; t++) {
        pi_quantize_act(type, X + (size_t)t * (size_t)cols, xq + (size_t)t * xs, cols);
        if (qk) { /* Q8_K: a float scale; sub-block s's sum of x is bsums[2s] + bsums[2s + 1] */
            const struct pi_block_q8_K *xb = (const struct pi_block_q8_K *)(const void *)(xq + (size_t)t * xs);
            for (int64_t b = 0; b < nb; b++) {
                dx[t * nb + b] = xb[b].d;
                for (int i = 0; xs2 && i < 4; i++) {
                    const int32_t lo = xb[b].bsums[4 * i] + xb[b].bsums[4 * i + 1];
                    const int32_t hi = xb[b].bsums[4 * i + 2] + xb[b].bsums[4 * i + 3];
                    xs2[(t * nb + b) * 4 + i] = (int32_t)(((uint32_t)(uint16_t)hi << 16) | (uint16_t)lo);
                }
            }
            continue;
        }
        const struct pi_block_q8_0 *xb = (const struct pi_block_q8_0 *)(const void *)(xq + (size_t)t * xs);
        for (int64_t b = 0; b < nb; b++) {
            int32_t s = 0;
            dx[t * nb + b] = pi_fp16_to_fp32(xb[b].d);
            for (int i = 0; i < 32; i++) {
                s += xb[b].qs[i];
                if (q8) xu[(t * nb + b) * 32 + i] = (uint8_t)(xb[b].qs[i] + 128);
            }
            if (!q8) off[t * nb + b] = -8 * s;
        }
    }
    struct pi_r16_act x = {xq, xs, dx, off, xu, xs2, nb};
    struct mm_ctx c = {.k = k, .nw = nw, .gb = pi_r16_group_bytes(type, cols), .n = n, .x = &x};
    for (int i = 0; i < nw; i++) {
        c.W16[i] = W[i]->rows16, c.rows[i] = W[i]->rows, c.Y[i] = Y[i];
        c.g_end[i] = (i ? c.g_end[i - 1] : 0) + W[i]->rows / PI_R16_ROWS;
    }
    /* whole groups of sixteen tokens for the AMX kernels, and at least one however wide the rows (a 70B
     * model's ffn_down: 16 tokens of 28672 columns' activations, 487 KB, still sit in L2) */
    c.tile = PI_MAX(16, (int64_t)(TILE_BYTES / xs)) & ~(int64_t)15;
    int64_t grain = PI_MAX(1, (int64_t)(MIN_CHUNK_BYTES / c.gb) / PI_MAX(1, PI_MIN(n, c.tile)));
    pi_pool_for(pool, c.g_end[nw - 1], grain, mm_groups, &c);
    free(scr);
}

void pi_r16_matmul(pi_pool_t *pool, pi_r16_dot_fn k, const struct pi_weight *W, const float *X, int64_t n, float *Y)
{
    pi_r16_matmul_n(pool, k, &W, 1, X, n, &Y);
}
