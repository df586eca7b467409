/*
 * kernels/cpu/matvec.c - pi_matvec and pi_matmul (kernels/cpu/matvec.h).
 *
 * Threading: the pool hands out ranges of weight rows; every output element is written by exactly
 * one thread, so no reduction is needed. The quantised activations are shared read-only.
 * pi_matmul tiles tokens so that a tile's activations (at most TILE_BYTES) stay in L2 while a range of
 * weight rows streams through once: each weight row is loaded from memory once per tile and then dotted
 * with every token of the tile from L1. Where the active variant has a 4-token kernel (vec_dot4: F16,
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K on AVX-512), a weight row is unpacked once
 * per four tokens instead of once per token, and with a 2-row kernel (vec_dot8) a group of four tokens'
 * activations is loaded once per two rows; both return the same floats as vec_dot, so pi_matmul's Y is
 * bit for bit the same as n calls of pi_matvec, whatever the token count, tiling or thread count.
 * pi_matvec takes rows four at a time through vec_dot4r where there is one (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K
 * on AVX2 and AVX-512; Q4_1, Q5_0, Q5_1, Q2_K, Q3_K on AVX-512), the rest two at a time through vec_dot2
 * (AVX-512): one token's activations prepared once per four (two) rows on AVX-512, again the floats of
 * vec_dot. vec_dot4r also prefetches the next four rows as it reads these: without that one core read
 * Q4_0 weights at about half the streaming read's rate (doc/kernels.md).
 */
#include "config.h"

#include <stdlib.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/rows16.h"
#include "lib/common.h"

#define MIN_CHUNK_BYTES (32 * 1024) /* smallest share of weights worth handing to a thread */
#define TILE_BYTES (256 * 1024)     /* activation bytes per token tile in pi_matmul */

struct mm_ctx {
    pi_vec_dot_fn dot;
    pi_vec_dot4_fn dot4;   /* NULL: dot per token */
    pi_vec_dot8_fn dot8;   /* NULL: dot4 per row */
    pi_vec_dot2_fn dot2;   /* NULL: dot per row (pi_matvec) */
    pi_vec_dot4r_fn dot4r; /* NULL: dot2 per pair of rows (pi_matvec) */
    const uint8_t *W;
    size_t w_row_bytes, x_row_bytes;
    int64_t rows, cols, n, tile;
    const uint8_t *xq;
    float *Y;
};

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    PI_ASSERT(p != NULL);
    return p;
}

static size_t row_bytes(enum pi_type t, int64_t cols)
{
    uint64_t b = 0;
    PI_ASSERT(cols >= 0 && pi_type_row_bytes(t, (uint64_t)cols, &b));
    return (size_t)b;
}

static int64_t row_grain(size_t w_row_bytes)
{
    return PI_MAX(1, (int64_t)(MIN_CHUNK_BYTES / (w_row_bytes ? w_row_bytes : 1)));
}

static void mv_rows(void *vctx, int64_t begin, int64_t end, int thread)
{
    const struct mm_ctx *c = vctx;
    (void)thread;
    int64_t r = begin;
    for (; c->dot4r && r + 4 <= end; r += 4) {
        const uint8_t *w = c->W + (size_t)r * c->w_row_bytes;
        const void *w4[4] = {w, w + c->w_row_bytes, w + 2 * c->w_row_bytes, w + 3 * c->w_row_bytes};
        const void *next[4] = {w + 4 * c->w_row_bytes, w + 5 * c->w_row_bytes, w + 6 * c->w_row_bytes,
                               w + 7 * c->w_row_bytes};
        /* prefetch the next group of four while it is this thread's */
        c->dot4r(w4, r + 8 <= end ? next : NULL, c->xq, c->Y + r, c->cols);
    }
    for (; c->dot2 && r + 2 <= end; r += 2) {
        const uint8_t *w = c->W + (size_t)r * c->w_row_bytes;
        c->dot2(w, w + c->w_row_bytes, c->xq, c->Y + r, c->cols);
    }
    for (; r < end; r++) c->Y[r] = c->dot(c->W + (size_t)r * c->w_row_bytes, c->xq, c->cols);
}

void pi_matvec(pi_pool_t *pool, enum pi_type t, const void *W, int64_t rows, int64_t cols, const float *x, float *y)
{
    PI_ASSERT(pi_kernel_supported(t) && rows >= 0);
    struct mm_ctx c = {
        .dot = pi_kernels_active()->vec_dot[t],
        .dot2 = pi_kernels_active()->vec_dot2[t],
        .dot4r = pi_kernels_active()->vec_dot4r[t],
        .W = W,
        .w_row_bytes = row_bytes(t, cols),
        .x_row_bytes = pi_act_row_bytes(t, cols),
        .rows = rows,
        .cols = cols,
        .n = 1,
        .Y = y,
    };
    void *xq = NULL;
    if (pi_vec_dot_type(t) == PI_TYPE_F32) {
        c.xq = (const uint8_t *)x; /* float activations are used as they are */
    } else {
        xq = xmalloc(c.x_row_bytes);
        pi_quantize_act(t, x, xq, cols);
        c.xq = xq;
    }
    pi_pool_for(pool, rows, row_grain(c.w_row_bytes), mv_rows, &c);
    free(xq);
}

/* Row r for tokens [t0, t1): four at a time through dot4 where there is one. */
static void mm_row(const struct mm_ctx *c, int64_t r, int64_t t0, int64_t t1)
{
    const uint8_t *w = c->W + (size_t)r * c->w_row_bytes;
    int64_t t = t0;
    for (; c->dot4 && t + 4 <= t1; t += 4) {
        float o[4];
        c->dot4(w, c->xq + (size_t)t * c->x_row_bytes, c->x_row_bytes, o, c->cols);
        for (int k = 0; k < 4; k++) c->Y[(t + k) * c->rows + r] = o[k];
    }
    for (; t < t1; t++) c->Y[t * c->rows + r] = c->dot(w, c->xq + (size_t)t * c->x_row_bytes, c->cols);
}

/* Rows r, r + 1 for tokens [t0, t1): 2 x 4 at a time through dot8, the remaining tokens row by row. */
static void mm_row_pair(const struct mm_ctx *c, int64_t r, int64_t t0, int64_t t1)
{
    const uint8_t *w = c->W + (size_t)r * c->w_row_bytes;
    int64_t t = t0;
    for (; t + 4 <= t1; t += 4) {
        float o[8];
        c->dot8(w, c->w_row_bytes, c->xq + (size_t)t * c->x_row_bytes, c->x_row_bytes, o, c->cols);
        for (int k = 0; k < 4; k++) c->Y[(t + k) * c->rows + r] = o[k], c->Y[(t + k) * c->rows + r + 1] = o[4 + k];
    }
    if (t < t1) mm_row(c, r, t, t1), mm_row(c, r + 1, t, t1);
}

/* Rows [begin, end) for every token: tile over tokens outside, rows inside, tokens innermost. */
static void mm_rows(void *vctx, int64_t begin, int64_t end, int thread)
{
    const struct mm_ctx *c = vctx;
    (void)thread;
    for (int64_t t0 = 0; t0 < c->n; t0 += c->tile) {
        int64_t t1 = PI_MIN(c->n, t0 + c->tile), r = begin;
        for (; c->dot8 && r + 2 <= end; r += 2) mm_row_pair(c, r, t0, t1);
        for (; r < end; r++) mm_row(c, r, t0, t1);
    }
}

void pi_matmul(pi_pool_t *pool, enum pi_type t, const void *W, int64_t rows, int64_t cols, const float *X, int64_t n,
               float *Y)
{
    PI_ASSERT(pi_kernel_supported(t) && rows >= 0 && n >= 0);
    if (n == 0 || rows == 0) return;
    struct mm_ctx c = {
        .dot = pi_kernels_active()->vec_dot[t],
        .dot4 = pi_kernels_active()->vec_dot4[t],
        .dot8 = pi_kernels_active()->vec_dot8[t],
        .W = W,
        .w_row_bytes = row_bytes(t, cols),
        .x_row_bytes = pi_act_row_bytes(t, cols),
        .rows = rows,
        .cols = cols,
        .n = n,
        .Y = Y,
    };
    void *xq = NULL;
    if (pi_vec_dot_type(t) == PI_TYPE_F32) {
        c.xq = (const uint8_t *)X;
    } else {
        size_t bytes;
        PI_ASSERT(pi_size_mul(c.x_row_bytes, (size_t)n, &bytes));
        xq = xmalloc(bytes);
        for (int64_t i = 0; i < n; i++)
            pi_quantize_act(t, X + (size_t)i * (size_t)cols, (uint8_t *)xq + (size_t)i * c.x_row_bytes, cols);
        c.xq = xq;
    }
    c.tile = PI_MAX(1, (int64_t)(TILE_BYTES / (c.x_row_bytes ? c.x_row_bytes : 1)));
    if (c.tile > 4) c.tile &= ~(int64_t)3; /* whole groups of four for the multi-token kernels */
    /* each thread's share should be large enough that weight reuse dominates: at least grain rows */
    pi_pool_for(pool, rows, PI_MAX(4, row_grain(c.w_row_bytes) / PI_MAX(1, PI_MIN(n, c.tile))), mm_rows, &c);
    free(xq);
}

void pi_matvec_w(pi_pool_t *pool, const struct pi_weight *W, const float *x, float *y)
{
    pi_r16_dot_fn k = W->rows16 ? pi_r16_kernel(W->type) : NULL;
    if (k) pi_r16_matmul(pool, k, W, x, 1, y);
    else pi_matvec(pool, W->type, W->data, W->rows, W->cols, x, y);
}

void pi_matmul_w(pi_pool_t *pool, const struct pi_weight *W, const float *X, int64_t n, float *Y)
{
    pi_r16_dot_fn k = W->rows16 ? pi_r16_kernel(W->type) : NULL;
    if (k) pi_r16_matmul(pool, k, W, X, n, Y);
    else pi_matmul(pool, W->type, W->data, W->rows, W->cols, X, n, Y);
}

void pi_matmul_wn(pi_pool_t *pool, const struct pi_weight *const *W, int nw, const float *X, int64_t n, float *const *Y)
{
    pi_r16_dot_fn k = W[0]->rows16 ? pi_r16_kernel(W[0]->type) : NULL;
    bool one = k != NULL && nw <= 4;
    for (int i = 1; one && i < nw; i++) one = W[i]->rows16 && W[i]->type == W[0]->type && W[i]->cols == W[0]->cols;
    if (one) {
        pi_r16_matmul_n(pool, k, W, nw, X, n, Y);
        return;
    }
    for (int i = 0; i < nw; i++) {
        if (n == 1) pi_matvec_w(pool, W[i], X, Y[i]);
        else pi_matmul_w(pool, W[i], X, n, Y[i]);
    }
}
