/*
 * kernels/cpu/rows16.c - packing Q4_0 matrices into 16-row groups, the scalar reference kernel over
 * them and the product driver (kernels/cpu/rows16.h).
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
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/rows16.h"
#include "lib/common.h"

#define MIN_CHUNK_BYTES (32 * 1024) /* smallest share of weights worth handing to a thread */
#define TILE_BYTES (256 * 1024)     /* activation bytes per token tile */

size_t pi_r16_group_bytes(int64_t cols)
{
    PI_ASSERT(cols > 0 && cols % PI_QK4_0 == 0);
    return (size_t)pi_align_up((uint64_t)(cols / PI_QK4_0) * PI_R16_BLOCK_BYTES, 64);
}

bool pi_r16_packable(const struct pi_weight *W)
{
    return W->data && W->type == PI_TYPE_Q4_0 && W->rows > 0 && W->rows % PI_R16_ROWS == 0 && W->cols > 0 &&
           W->cols % PI_QK4_0 == 0 && W->row_bytes == (size_t)(W->cols / PI_QK4_0) * sizeof(struct pi_block_q4_0);
}

struct pack_ctx {
    const struct pi_weight *W;
    uint8_t *dst;
    size_t gb; /* pi_r16_group_bytes(cols) */
};

/* Groups [begin, end): each row's block b scatters its 16 nibble bytes as four 4-byte words. */
static void pack_groups(void *vctx, int64_t begin, int64_t end, int thread)
{
    const struct pack_ctx *c = vctx;
    int64_t nb = c->W->cols / PI_QK4_0;
    (void)thread;
    for (int64_t g = begin; g < end; g++) {
        uint8_t *grp = c->dst + (size_t)g * c->gb, *d = grp + (size_t)nb * 256;
        for (int r = 0; r < PI_R16_ROWS; r++) {
            const struct pi_block_q4_0 *a = pi_weight_row(c->W, g * PI_R16_ROWS + r);
            for (int64_t b = 0; b < nb; b++) {
                for (int j = 0; j < 4; j++) memcpy(grp + (size_t)b * 256 + j * 64 + r * 4, a[b].qs + 4 * j, 4);
                memcpy(d + (size_t)b * 32 + r * 2, &a[b].d, 2);
            }
        }
        memset(d + (size_t)nb * 32, 0, c->gb - (size_t)nb * PI_R16_BLOCK_BYTES);
    }
}

void pi_r16_pack(pi_pool_t *pool, const struct pi_weight *W, uint8_t *dst)
{
    PI_ASSERT(pi_r16_packable(W) && ((uintptr_t)dst & 63) == 0);
    struct pack_ctx c = {W, dst, pi_r16_group_bytes(W->cols)};
    pi_pool_for(pool, W->rows / PI_R16_ROWS, PI_MAX(1, (int64_t)(MIN_CHUNK_BYTES / c.gb)), pack_groups, &c);
}

void pi_r16_dot_ref(const uint8_t *grp, const struct pi_r16_act *x, int64_t t0, int64_t nt, float *y, size_t ystride)
{
    int64_t nb = x->nb;
    const uint8_t *d = grp + (size_t)nb * 256;
    for (int64_t t = t0; t < t0 + nt; t++) {
        const struct pi_block_q8_0 *xb = (const struct pi_block_q8_0 *)(x->xq + (size_t)t * x->xstride);
        for (int r = 0; r < PI_R16_ROWS; r++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t isum = x->off[t * nb + b];
                for (int j = 0; j < 4; j++) {
                    for (int k = 0; k < 4; k++) {
                        uint8_t q = grp[(size_t)b * 256 + j * 64 + r * 4 + k];
                        isum += (q & 15) * xb[b].qs[4 * j + k] + (q >> 4) * xb[b].qs[16 + 4 * j + k];
                    }
                }
                uint16_t dw;
                memcpy(&dw, d + (size_t)b * 32 + r * 2, 2);
                acc = fmaf(pi_fp16_to_fp32(dw) * x->dx[t * nb + b], (float)isum, acc);
            }
            y[(size_t)(t - t0) * ystride + (size_t)r] = acc;
        }
    }
}

pi_r16_dot_fn pi_r16_kernel(void) { return pi_kernels_active()->r16_dot; }

struct mm_ctx {
    pi_r16_dot_fn k;
    const uint8_t *W16; /* (rows / 16) groups */
    size_t gb;
    int64_t rows, n, tile;
    const struct pi_r16_act *x;
    float *Y; /* (n, rows) */
};

/* Groups [begin, end) for every token: token tiles outside, groups inside, the tile's tokens in the
 * kernel. */
static void mm_groups(void *vctx, int64_t begin, int64_t end, int thread)
{
    const struct mm_ctx *c = vctx;
    (void)thread;
    for (int64_t t0 = 0; t0 < c->n; t0 += c->tile) {
        int64_t nt = PI_MIN(c->n - t0, c->tile);
        for (int64_t g = begin; g < end; g++)
            c->k(c->W16 + (size_t)g * c->gb, c->x, t0, nt,
                 c->Y + (size_t)t0 * (size_t)c->rows + (size_t)g * PI_R16_ROWS, (size_t)c->rows);
    }
}

void pi_r16_matmul(pi_pool_t *pool, pi_r16_dot_fn k, const struct pi_weight *W, const float *X, int64_t n, float *Y)
{
    PI_ASSERT(k && W->rows16 && pi_r16_packable(W) && n >= 0);
    if (n == 0) return;
    int64_t nb = W->cols / PI_QK4_0;
    size_t xs = pi_act_row_bytes(PI_TYPE_Q4_0, W->cols), bytes, per = xs + (size_t)nb * 8;
    PI_ASSERT(pi_size_mul(per, (size_t)n, &bytes));
    uint8_t *scr = malloc(bytes);
    PI_ASSERT(scr != NULL);
    float *dx = (float *)(void *)scr; /* (n, nb), then off (n, nb), then the Q8_0 rows */
    int32_t *off = (int32_t *)(void *)(scr + (size_t)n * (size_t)nb * 4);
    uint8_t *xq = scr + (size_t)n * (size_t)nb * 8;
    for (int64_t t = 0; t < n; t++) {
        struct pi_block_q8_0 *xb = (struct pi_block_q8_0 *)(void *)(xq + (size_t)t * xs);
        pi_quantize_act(PI_TYPE_Q4_0, X + (size_t)t * (size_t)W->cols, xb, W->cols);
        for (int64_t b = 0; b < nb; b++) {
            int32_t s = 0;
            for (int i = 0; i < PI_QK8_0; i++) s += xb[b].qs[i];
            dx[t * nb + b] = pi_fp16_to_fp32(xb[b].d);
            off[t * nb + b] = -8 * s;
        }
    }
    struct pi_r16_act x = {xq, xs, dx, off, nb};
    struct mm_ctx c = {k, W->rows16, pi_r16_group_bytes(W->cols), W->rows, n, 0, &x, Y};
    c.tile = PI_MAX(1, (int64_t)(TILE_BYTES / xs));
    if (c.tile > 4) c.tile &= ~(int64_t)3; /* whole groups of four tokens for the kernels */
    int64_t grain = PI_MAX(1, (int64_t)(MIN_CHUNK_BYTES / c.gb) / PI_MAX(1, PI_MIN(n, c.tile)));
    pi_pool_for(pool, W->rows / PI_R16_ROWS, grain, mm_groups, &c);
    free(scr);
}
