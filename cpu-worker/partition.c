/*
 * cpu-worker/partition.c - packing a CPU worker's cold neurons (cpu-worker/partition.h).
 *
 * Per layer the copy is three blocks, gate rows then up rows then down_t rows of the worker's
 * neurons, each block 64-byte aligned; rows keep the model's types and row sizes, so the arithmetic
 * is exactly the single-process pass's. The worker opens the model without lib/model.c's packing of
 * every layer's transposed down weights (which would cost each worker a copy of all of them): when
 * the file has no ffn_down_t, only this worker's columns of ffn_down are transposed, from the mapping.
 */
#include "config.h"
#include "cpu-worker/partition.h"
#include "cpu-worker/numa.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"
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

/* Type of the transposed down rows when the file has none: lib/model.c's own rule (automatic), so a
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

int pi_partition_pack(const pi_model_t *m, int64_t n_hot, int n_workers, int w, int node_os, struct pi_partition *p)
{
    memset(p, 0, sizeof *p);
    const struct pi_hparams *hp = &m->hp;
    if (n_hot < 0 || n_hot > hp->n_ff || n_workers < 1 || w < 0 || w >= n_workers) return -PI_ERR_INVAL;
    int64_t first, count;
    pi_partition_range(hp->n_ff, n_hot, n_workers, w, &first, &count);
    return pi_partition_pack_range(m, first, count, node_os, false, p);
}

int pi_partition_pack_range(const pi_model_t *m, int64_t first, int64_t count, int node_os, bool views,
                            struct pi_partition *p)
{
    memset(p, 0, sizeof *p);
    const struct pi_hparams *hp = &m->hp;
    if (first < 0 || count < 0 || first > hp->n_ff - count) return -PI_ERR_INVAL;
    p->first = first;
    p->count = count;
    size_t bytes = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        uint64_t rb = L->ffn_down_t.row_bytes;
        if (!L->ffn_down_t.data && !pi_type_row_bytes(down_t_type(L->ffn_down.type, hp->n_embd), (uint64_t)hp->n_embd, &rb))
            return -PI_ERR_UNSUPPORTED;
        if (views) { /* only down rows built from ffn_down take memory */
            if (!L->ffn_down_t.data) bytes += pi_align_up((uint64_t)p->count * rb, 64);
            continue;
        }
        bytes += pi_align_up((uint64_t)p->count * L->ffn_gate.row_bytes, 64) +
                 pi_align_up((uint64_t)p->count * L->ffn_up.row_bytes, 64) + pi_align_up((uint64_t)p->count * rb, 64);
    }
    p->layers = calloc((size_t)hp->n_layer, sizeof *p->layers);
    p->mem = pi_numa_alloc(bytes, node_os);
    p->bytes = bytes;
    p->node_os = node_os;
    if (!p->layers || !p->mem) {
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
        if (L->ffn_down_t.data) {
            copy_rows(&D->ffn_down_t, &L->ffn_down_t, p->first, p->count, cmem, &off);
            continue;
        }
        /* No transposed rows in the file: build just this worker's from the mapped ffn_down. */
        enum pi_type dt = down_t_type(L->ffn_down.type, hp->n_embd);
        uint64_t rb;
        pi_type_row_bytes(dt, (uint64_t)hp->n_embd, &rb);
        D->ffn_down_t = (struct pi_weight){dt, p->count, hp->n_embd, (size_t)rb, (char *)p->mem + off};
        int rc = pack_down_columns(L, p->first, p->count, dt, (size_t)rb, (char *)p->mem + off);
        if (rc != 0) { pi_partition_free(p); return rc; }
        off += pi_align_up((uint64_t)p->count * rb, 64);
    }
    PI_ASSERT(off == bytes);
    return 0;
}

void pi_partition_free(struct pi_partition *p)
{
    free(p->layers);
    pi_numa_free(p->mem, p->bytes);
    memset(p, 0, sizeof *p);
}
