/*
 * compute/partition.c - packing a CPU worker's cold neurons (compute/partition.h).
 *
 * Per layer the copy is three blocks, gate rows then up rows then down_t rows of the worker's
 * neurons, each block 64-byte aligned; rows keep the model's types and row sizes, so the arithmetic
 * is exactly the single-process pass's. The worker opens the model without model/model.c's packing of
 * every layer's transposed down weights (which would cost each worker a copy of all of them): when
 * the file has no ffn_down_t, only this worker's columns of ffn_down are transposed, from the mapping.
 */
#include "config.h"
#include "compute/partition.h"
#include "lib/numa.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"

#include <stdlib.h>
#include <string.h>

void pi_partition_range(int64_t n_ff, int64_t n_hot, int n_workers, int w, int64_t *first, int64_t *count)
{
    int64_t cold = n_ff - n_hot;
    int64_t a = cold * w / n_workers, b = cold * (w + 1) / n_workers;
    *first = n_hot + a;
    *count = b - a;
}

/* Type of the transposed down rows when the file has none: model/model.c's own rule (automatic), so a
 * worker's rows are bit-identical to the single-process pass's. */
static enum pi_type down_t_type(enum pi_type down, int64_t d) { return pi_model_down_t_type(PI_TYPE_COUNT, down, d); }

/* dst (count, d) of type dt = the columns first..first+count-1 of L->ffn_down (d, n_ff), through f32:
 * every row of the down weights is dequantised once (row, n_ff floats) and scattered into tmp. */
static int pack_down_columns(const struct pi_layer *L, int64_t first, int64_t count, enum pi_type dt, size_t rb, char *dst)
{
    int64_t d = L->ffn_down.rows, ff = L->ffn_down.cols;
    float *row = malloc((size_t)ff * sizeof *row), *tmp = malloc((size_t)(count ? count : 1) * (size_t)d * sizeof *tmp);
    if (!row || !tmp) { free(row); free(tmp); return -PI_ERR_NOMEM; }
    for (int64_t r = 0; r < d; r++) {
        pi_dequant_row(L->ffn_down.type, pi_weight_row(&L->ffn_down, r), row, ff);
        for (int64_t j = 0; j < count; j++) tmp[(size_t)j * (size_t)d + (size_t)r] = row[first + j];
    }
    for (int64_t j = 0; j < count; j++) pi_quantize_row(dt, tmp + (size_t)j * (size_t)d, dst + (size_t)j * rb, d);
    free(row);
    free(tmp);
    return 0;
}

/* Copy rows first..first+count-1 of src into dst (at *off in mem) and bind dst; mem NULL: bind dst to
 * those rows of src itself (a view of the model's mapping). */
static void copy_rows(struct pi_weight *dst, const struct pi_weight *src, int64_t first, int64_t count, char *mem, size_t *off)
{
    *dst = *src;
    dst->rows = count;
    if (!mem) {
        dst->data = count > 0 ? pi_weight_row(src, first) : src->data;
        return;
    }
    dst->data = mem + *off;
    if (count > 0) memcpy(mem + *off, pi_weight_row(src, first), (size_t)count * src->row_bytes);
    *off += pi_align_up((uint64_t)count * src->row_bytes, 64);
}

int pi_partition_pack(const pi_model_t *m, int64_t n_hot, int n_workers, int w, int node_os, bool dense_only,
                      struct pi_partition *p)
{
    memset(p, 0, sizeof *p);
    const struct pi_hparams *hp = &m->hp;
    if (n_hot < 0 || n_hot > hp->n_ff || n_workers < 1 || w < 0 || w >= n_workers) return -PI_ERR_INVAL;
    int64_t first, count;
    pi_partition_range(hp->n_ff, n_hot, n_workers, w, &first, &count);
    return pi_partition_pack_range(m, first, count, node_os, false, dense_only, p);
}

/* dst = rows [a, a + na) then [b, b + nb) of the transposed down weights of L: the file's own
 * (ffn_down_t) copied, or built from ffn_down in type dt (row bytes rb). */
static int down_rows(const struct pi_layer *L, int64_t a, int64_t na, int64_t b, int64_t nb, enum pi_type dt, size_t rb, char *dst)
{
    if (L->ffn_down_t.data) {
        if (na > 0) memcpy(dst, pi_weight_row(&L->ffn_down_t, a), (size_t)na * rb);
        if (nb > 0) memcpy(dst + (size_t)na * rb, pi_weight_row(&L->ffn_down_t, b), (size_t)nb * rb);
        return 0;
    }
    int rc = na > 0 ? pack_down_columns(L, a, na, dt, rb, dst) : 0;
    if (rc == 0 && nb > 0) rc = pack_down_columns(L, b, nb, dt, rb, dst + (size_t)na * rb);
    return rc;
}

int pi_partition_pack_range(const pi_model_t *m, int64_t first, int64_t count, int node_os, bool views,
                            bool dense_only, struct pi_partition *p)
{
    memset(p, 0, sizeof *p);
    const struct pi_hparams *hp = &m->hp;
    if (first < 0 || count < 0 || first > hp->n_ff - count) return -PI_ERR_INVAL;
    p->first = first;
    p->count = count;
    p->edges_only = dense_only && !views;
    size_t bytes = 0;
    int64_t *blk_lo = calloc((size_t)hp->n_layer, sizeof *blk_lo), *blk_n = calloc((size_t)hp->n_layer, sizeof *blk_n);
    if (!blk_lo || !blk_n) { free(blk_lo); free(blk_n); return -PI_ERR_NOMEM; }
    for (int il = 0; il < hp->n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        /* the whole blocks of ffn_down's rows inside [first, first + count): the dense down block */
        const struct pi_type_info *ti = pi_type_get(L->ffn_down.type);
        if (ti && pi_kernel_supported(L->ffn_down.type) && L->ffn_down.data) {
            int64_t be = ti->block_elems, a = (first + be - 1) / be * be, b = (first + count) / be * be;
            if (b > a) {
                blk_lo[il] = a, blk_n[il] = b - a;
                bytes += pi_align_up((uint64_t)L->ffn_down.rows * (uint64_t)((b - a) / be) * ti->block_bytes, 64);
            }
        }
        uint64_t rb = L->ffn_down_t.row_bytes;
        if (!L->ffn_down_t.data && !pi_type_row_bytes(down_t_type(L->ffn_down.type, hp->n_embd), (uint64_t)hp->n_embd, &rb)) {
            free(blk_lo);
            free(blk_n);
            return -PI_ERR_UNSUPPORTED;
        }
        if (views) { /* only down rows built from ffn_down take memory */
            if (!L->ffn_down_t.data) bytes += pi_align_up((uint64_t)p->count * rb, 64);
            continue;
        }
        const int64_t n_dt = p->edges_only ? p->count - blk_n[il] : p->count; /* down rows kept */
        bytes += pi_align_up((uint64_t)p->count * L->ffn_gate.row_bytes, 64) +
                 pi_align_up((uint64_t)p->count * L->ffn_up.row_bytes, 64) + pi_align_up((uint64_t)n_dt * rb, 64);
    }
    p->layers = calloc((size_t)hp->n_layer, sizeof *p->layers);
    p->blk_off = calloc((size_t)hp->n_layer, sizeof *p->blk_off);
    p->mem = pi_numa_alloc(bytes, node_os);
    p->bytes = bytes;
    p->node_os = node_os;
    if (!p->layers || !p->mem || !p->blk_off) {
        free(blk_lo);
        free(blk_n);
        pi_error("cannot allocate %zu bytes for the packed neurons on node %d", bytes, node_os);
        pi_partition_free(p);
        return -PI_ERR_NOMEM;
    }
    size_t off = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        struct pi_layer *D = &p->layers[il];
        char *cmem = views ? NULL : p->mem;
        copy_rows(&D->ffn_gate, &L->ffn_gate, p->first, p->count, cmem, &off);
        copy_rows(&D->ffn_up, &L->ffn_up, p->first, p->count, cmem, &off);
        if (blk_n[il] > 0) { /* each row's bytes for the block's columns, rows packed one after another */
            const struct pi_type_info *ti = pi_type_get(L->ffn_down.type);
            size_t rb = (size_t)(blk_n[il] / ti->block_elems) * ti->block_bytes, skip = (size_t)(blk_lo[il] / ti->block_elems) * ti->block_bytes;
            char *dst = (char *)p->mem + off;
            for (int64_t r = 0; r < L->ffn_down.rows; r++)
                memcpy(dst + (size_t)r * rb, (const char *)pi_weight_row(&L->ffn_down, r) + skip, rb);
            D->ffn_down = (struct pi_weight){L->ffn_down.type, L->ffn_down.rows, blk_n[il], rb, dst};
            p->blk_off[il] = blk_lo[il] - p->first;
            off += pi_align_up((uint64_t)L->ffn_down.rows * rb, 64);
        }
        if (views && L->ffn_down_t.data) { /* the file's own rows, viewed */
            copy_rows(&D->ffn_down_t, &L->ffn_down_t, p->first, p->count, NULL, &off);
            continue;
        }
        /* The transposed down rows: the file's copied, or built from the mapped ffn_down; all of the
         * range's, or with edges_only those left and right of the dense block (rows [0, lo) and
         * [lo + blk, count) of the slice, stored one after the other). */
        enum pi_type dt = L->ffn_down_t.data ? L->ffn_down_t.type : down_t_type(L->ffn_down.type, hp->n_embd);
        uint64_t rb = L->ffn_down_t.row_bytes;
        if (!L->ffn_down_t.data) pi_type_row_bytes(dt, (uint64_t)hp->n_embd, &rb);
        const int64_t lo = blk_n[il] > 0 ? blk_lo[il] - p->first : p->count;
        const int64_t na = p->edges_only ? lo : p->count, nb = p->edges_only ? p->count - lo - blk_n[il] : 0;
        D->ffn_down_t = (struct pi_weight){dt, na + nb, hp->n_embd, (size_t)rb, (char *)p->mem + off};
        int rc = down_rows(L, p->first, na, p->first + p->count - nb, nb, dt, (size_t)rb, (char *)p->mem + off);
        if (rc != 0) { free(blk_lo); free(blk_n); pi_partition_free(p); return rc; }
        off += pi_align_up((uint64_t)(na + nb) * rb, 64);
    }
    free(blk_lo);
    free(blk_n);
    PI_ASSERT(off == bytes);
    return 0;
}

size_t pi_partition_dense_scratch(const struct pi_partition *p, int64_t n)
{
    return (size_t)n * (3 * (size_t)p->count + 1);
}

int64_t pi_partition_ffn_dense(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act,
                               const float *X, int64_t n, float *scratch, float *Y)
{
    PI_ASSERT(p->blk_off && n >= 1);
    const struct pi_layer *L = &p->layers[il];
    const int64_t c = p->count, d = L->ffn_gate.cols, off = p->blk_off[il], blk = L->ffn_down.data ? L->ffn_down.cols : 0;
    PI_ASSERT(off >= 0 && off + blk <= c);
    float *g = scratch, *u = g + (size_t)n * (size_t)c, *ab = u + (size_t)n * (size_t)c;
    pi_matmul(pool, L->ffn_gate.type, L->ffn_gate.data, c, d, X, n, g);
    pi_matmul(pool, L->ffn_up.type, L->ffn_up.data, c, d, X, n, u);
    pi_ffn_act(act, g, u, n * c);
    int64_t active = 0;
    for (size_t i = 0; i < (size_t)n * (size_t)c; i++) active += g[i] != 0.0f;
    if (blk > 0) {
        for (int64_t t = 0; t < n; t++) memcpy(ab + (size_t)t * (size_t)blk, g + (size_t)t * (size_t)c + off, (size_t)blk * sizeof(float));
        pi_matmul(pool, L->ffn_down.type, L->ffn_down.data, d, blk, ab, n, Y);
    } else {
        memset(Y, 0, (size_t)n * (size_t)d * sizeof(float));
    }
    /* the neurons outside whole blocks, at the range's two edges (edges_only: their rows are stored
     * one after the other, the block's skipped) */
    for (int64_t t = 0; t < n; t++) {
        const float *a = g + (size_t)t * (size_t)c;
        for (int64_t j = 0; j < c; j++) {
            if (j == off && blk > 0) j += blk;
            if (j >= c) break;
            const int64_t row = p->edges_only && j >= off + blk ? j - blk : j;
            if (a[j] != 0.0f) pi_vec_mad(L->ffn_down_t.type, pi_weight_row(&L->ffn_down_t, row), a[j], Y + (size_t)t * (size_t)d, d);
        }
    }
    return active;
}

void pi_partition_free(struct pi_partition *p)
{
    free(p->layers);
    free(p->blk_off);
    pi_numa_free(p->mem, p->bytes);
    memset(p, 0, sizeof *p);
}
