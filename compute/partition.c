/*
 * compute/partition.c - packing a worker's neurons (compute/partition.h).
 *
 * Per layer the copy is four blocks, gate rows, up rows, the dense down block and down_t rows of the
 * worker's neurons, each 64-byte aligned; rows keep the model's types and row sizes, so the arithmetic
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
#include "kernels/cpu/rows16.h"

#include <stdlib.h>
#include <string.h>

/* Type of the transposed down rows when the file has none: model/model.c's own rule (automatic), so a
 * worker's rows are bit-identical to the single-process pass's. */
static enum pi_type down_t_type(enum pi_type down, int64_t d) { return pi_model_down_t_type(PI_TYPE_COUNT, down, d); }

/* dst (count, d) of type dt = the columns ids[0..count) of L->ffn_down (d, n_ff), through f32: every
 * row of the down weights is dequantised once (row, n_ff floats) and scattered into tmp. */
static int pack_down_columns(const struct pi_layer *L, const int32_t *ids, int64_t count, enum pi_type dt, size_t rb, char *dst)
{
    int64_t d = L->ffn_down.rows, ff = L->ffn_down.cols;
    float *row = malloc((size_t)ff * sizeof *row), *tmp = malloc((size_t)(count ? count : 1) * (size_t)d * sizeof *tmp);
    if (!row || !tmp) { free(row); free(tmp); return -PI_ERR_NOMEM; }
    for (int64_t r = 0; r < d; r++) {
        pi_dequant_row(L->ffn_down.type, pi_weight_row(&L->ffn_down, r), row, ff);
        for (int64_t j = 0; j < count; j++) tmp[(size_t)j * (size_t)d + (size_t)r] = row[ids[j]];
    }
    for (int64_t j = 0; j < count; j++) pi_quantize_row(dt, tmp + (size_t)j * (size_t)d, dst + (size_t)j * rb, d);
    free(row);
    free(tmp);
    return 0;
}

/* Whether this partition's transposed down rows of layer L are grouped (kernels/cpu/quant.h): the
 * model asks for it (pi_model.down_t_grouped) and would group its own (model/model.c's rule: the file's
 * ffn_down is Q4_0 or Q8_0 in whole blocks, the file has no ffn_down_t). They are then built from the
 * file's ffn_down whether or not the model packed its own (grouped) rows. */
static bool grouped_down(const pi_model_t *m, const struct pi_layer *L)
{
    return m->down_t_grouped && !L->down_t_from_file && !L->down_built && L->ffn_down.data &&
           pi_grouped_row_bytes(L->ffn_down.type, L->ffn_down.rows) > 0 && L->ffn_down.cols % PI_GROUP_ROWS == 0;
}

/* Groups of PI_GROUP_ROWS neurons that the kept ones of ids[0..n) (ascending) touch: those whose
 * down_row is not negative, every one where down_row is NULL. */
static int64_t touched_groups(const int32_t *ids, const int32_t *down_row, int64_t n)
{
    int64_t t = 0, last = -1;
    for (int64_t j = 0; j < n; j++)
        if ((!down_row || down_row[j] >= 0) && ids[j] / PI_GROUP_ROWS != last) last = ids[j] / PI_GROUP_ROWS, t++;
    return t;
}

/* Bytes of a grouped down_t of n rows of L touching tg groups: the rows, the scale rows, the group index. */
static uint64_t grouped_bytes(const struct pi_layer *L, int64_t n, int64_t tg)
{
    const uint64_t d = (uint64_t)L->ffn_down.rows;
    return pi_align_up((uint64_t)n * pi_grouped_row_bytes(L->ffn_down.type, L->ffn_down.rows), 64) +
           pi_align_up((uint64_t)tg * d * sizeof(uint16_t), 64) + pi_align_up((uint64_t)n * sizeof(int32_t), 64);
}

/* dst = the grouped down rows of neurons kid[0..n) of L (ascending), their scale rows (the groups they
 * touch, in order) and the group index of each row, at dst in that order (grouped_bytes); D describes
 * them. tmp: PI_GROUP_ROWS grouped rows of scratch. Returns the bytes used. */
static uint64_t pack_grouped(const struct pi_layer *L, const int32_t *kid, int64_t n, char *dst, void *tmp,
                             struct pi_weight *D)
{
    const int64_t d = L->ffn_down.rows;
    const size_t rb = pi_grouped_row_bytes(L->ffn_down.type, d);
    const int64_t tg = touched_groups(kid, NULL, n);
    uint16_t *s = (uint16_t *)(dst + pi_align_up((uint64_t)n * rb, 64));
    int32_t *grow = (int32_t *)((char *)s + pi_align_up((uint64_t)tg * (uint64_t)d * sizeof(uint16_t), 64));
    int64_t t = -1;
    for (int64_t j = 0; j < n; j++) {
        const int64_t g = kid[j] / PI_GROUP_ROWS;
        if (j == 0 || g != kid[j - 1] / PI_GROUP_ROWS)
            pi_grouped_from_cols(&L->ffn_down, g, g + 1, tmp, s + (size_t)++t * (size_t)d);
        memcpy(dst + (size_t)j * rb, (const char *)tmp + (size_t)(kid[j] - g * PI_GROUP_ROWS) * rb, rb);
        grow[j] = (int32_t)t;
    }
    *D = (struct pi_weight){L->ffn_down.type, n, d, rb, dst, NULL, s, grow};
    return grouped_bytes(L, n, tg);
}

/* Whether ids[0..n) is the range ids[0], ids[0] + 1, ... */
static bool is_range(const int32_t *ids, int64_t n) { return n == 0 || ids[n - 1] - ids[0] == n - 1; }

/* Copy the rows ids[0..n) of src into dst (at *off in mem) and bind dst; view: bind dst to the rows
 * of src itself (a view of the model's mapping; ids must be a range). */
static void copy_rows(struct pi_weight *dst, const struct pi_weight *src, const int32_t *ids, int64_t n, bool view, char *mem,
                      size_t *off)
{
    *dst = *src;
    dst->rows = n;
    dst->rows16 = NULL; /* the packed copy is the whole matrix's (kernels/cpu/rows16.h), not these rows' */
    if (view) {
        dst->data = n > 0 ? pi_weight_row(src, ids[0]) : src->data;
        return;
    }
    dst->data = mem + *off;
    for (int64_t j = 0; j < n; j++) memcpy(mem + *off + (size_t)j * src->row_bytes, pi_weight_row(src, ids[j]), src->row_bytes);
    *off += pi_align_up((uint64_t)n * src->row_bytes, 64);
}

/* The runs of whole down blocks among ids[0..n) (ascending) for blocks of be neurons: a block is be
 * consecutive packed neurons whose ids are one aligned block of the file's ffn_down; neighbouring
 * blocks whose ids also follow on merge into one run. Fills runs (NULL: only count) and returns how
 * many; *blk = the neurons they hold. */
static int64_t find_runs(const int32_t *ids, int64_t n, int64_t be, struct pi_partition_run *runs, int64_t *blk)
{
    int64_t nr = 0, col = 0, last_end = -1;
    for (int64_t j = 0; j < n;) {
        if (ids[j] % be == 0 && j + be <= n && ids[j + be - 1] - ids[j] == be - 1) {
            if (nr > 0 && last_end == j && ids[j] == ids[j - 1] + 1) {
                if (runs) runs[nr - 1].len += be;
            } else {
                if (runs) runs[nr] = (struct pi_partition_run){.pos = j, .len = be, .col = col};
                nr++;
            }
            col += be;
            j += be;
            last_end = j;
        } else {
            j++;
        }
    }
    *blk = col;
    return nr;
}

int pi_partition_pack(const pi_model_t *m, const struct pi_placement *pl, int g, int node_os, bool views, bool dense_only,
                      struct pi_partition *p)
{
    memset(p, 0, sizeof *p);
    const int L = m->hp.n_layer;
    if (!pl || pl->n_layer != L || pl->n_ff != m->hp.n_ff || g < 0 || g > pl->n_workers) {
        pi_error("partition: the placement does not match the model or has no group %d", g);
        return -PI_ERR_INVAL;
    }
    const int32_t **ids = calloc((size_t)L, sizeof *ids);
    int64_t *cnt = calloc((size_t)L, sizeof *cnt);
    int rc = -PI_ERR_NOMEM;
    if (ids && cnt) {
        for (int il = 0; il < L; il++) ids[il] = pi_placement_group(pl, il, g, &cnt[il]);
        rc = pi_partition_pack_ids(m, (const int32_t *const *)ids, cnt, node_os, views, dense_only, p);
    }
    free(ids);
    free(cnt);
    return rc;
}

int pi_partition_pack_range(const pi_model_t *m, int64_t first, int64_t count, int node_os, bool views, bool dense_only,
                            struct pi_partition *p)
{
    memset(p, 0, sizeof *p);
    const int L = m->hp.n_layer;
    if (first < 0 || count < 0 || first > m->hp.n_ff - count) {
        pi_error("partition: neurons [%lld, +%lld) are not inside the layer's %d", (long long)first, (long long)count, m->hp.n_ff);
        return -PI_ERR_INVAL;
    }
    int32_t *r = malloc((size_t)(count ? count : 1) * sizeof *r);
    const int32_t **ids = calloc((size_t)L, sizeof *ids);
    int64_t *cnt = calloc((size_t)L, sizeof *cnt);
    int rc = -PI_ERR_NOMEM;
    if (r && ids && cnt) {
        for (int64_t j = 0; j < count; j++) r[j] = (int32_t)(first + j);
        for (int il = 0; il < L; il++) ids[il] = r, cnt[il] = count;
        rc = pi_partition_pack_ids(m, (const int32_t *const *)ids, cnt, node_os, views, dense_only, p);
    }
    free(r);
    free(ids);
    free(cnt);
    return rc;
}

/* Whether layer L's ffn_down can give a dense down block, and its block size. */
static int64_t down_block_elems(const struct pi_layer *L)
{
    const struct pi_type_info *ti = pi_type_get(L->ffn_down.type);
    return ti && pi_kernel_supported(L->ffn_down.type) && L->ffn_down.data ? (int64_t)ti->block_elems : 0;
}

int pi_partition_pack_ids(const pi_model_t *m, const int32_t *const *ids, const int64_t *count, int node_os, bool views,
                          bool dense_only, struct pi_partition *p)
{
    memset(p, 0, sizeof *p);
    const struct pi_hparams *hp = &m->hp;
    const int NL = hp->n_layer;
    int rc = -PI_ERR_NOMEM;
    void *tmp = NULL; /* pack_grouped's scratch */
    if (NL <= 0 || !ids || !count) return -PI_ERR_INVAL;
    p->n_layer = NL;
    p->node_os = node_os;
    p->edges_only = dense_only && !views;
    /* metadata: ids, runs and down rows of every layer, in one allocation after the per-layer tables */
    int64_t n_all = 0, runs_all = 0;
    for (int il = 0; il < NL; il++) {
        if (count[il] < 0 || count[il] > hp->n_ff) {
            pi_error("partition: layer %d: %lld neurons of %d", il, (long long)count[il], hp->n_ff);
            return -PI_ERR_INVAL;
        }
        for (int64_t j = 0; j < count[il]; j++)
            if (ids[il][j] < 0 || ids[il][j] >= hp->n_ff || (j > 0 && ids[il][j] <= ids[il][j - 1])) {
                pi_error("partition: layer %d: neuron ids not ascending in [0, %d)", il, hp->n_ff);
                return -PI_ERR_INVAL;
            }
        n_all += count[il];
        int64_t be = down_block_elems(&m->layers[il]), blk;
        if (be > 0) runs_all += find_runs(ids[il], count[il], be, NULL, &blk);
    }
    p->count = calloc((size_t)NL, sizeof *p->count);
    p->ids = calloc((size_t)NL, sizeof *p->ids);
    p->layers = calloc((size_t)NL, sizeof *p->layers);
    p->runs = calloc((size_t)NL, sizeof *p->runs);
    p->n_runs = calloc((size_t)NL, sizeof *p->n_runs);
    p->down_row = calloc((size_t)NL, sizeof *p->down_row);
    /* runs_all counts every whole block as its own run at most; the layout below merges neighbours */
    p->meta = malloc((size_t)(n_all ? n_all : 1) * (sizeof(int32_t) * 2) + (size_t)(runs_all ? runs_all : 1) * sizeof(struct pi_partition_run));
    if (!p->count || !p->ids || !p->layers || !p->runs || !p->n_runs || !p->down_row || !p->meta) goto fail;
    struct pi_partition_run *run_mem = p->meta;
    int32_t *id_mem = (int32_t *)(run_mem + (runs_all ? runs_all : 1)), *row_mem = id_mem + n_all;
    size_t bytes = 0, grouped_tmp = 0;
    for (int il = 0; il < NL; il++) {
        const struct pi_layer *L = &m->layers[il];
        const int64_t c = count[il];
        p->count[il] = c;
        p->count_max = PI_MAX(p->count_max, c);
        memcpy(id_mem, ids[il], (size_t)c * sizeof *id_mem);
        p->ids[il] = id_mem;
        p->down_row[il] = row_mem;
        p->runs[il] = run_mem;
        const int64_t be = down_block_elems(L);
        int64_t blk = 0;
        p->n_runs[il] = be > 0 ? find_runs(id_mem, c, be, run_mem, &blk) : 0;
        run_mem += p->n_runs[il];
        id_mem += c;
        row_mem += c;
        /* which packed neurons keep a down_t row, and which row */
        int64_t kept = 0, r = 0;
        for (int64_t j = 0; j < c; j++) {
            bool in_run = false;
            while (r < p->n_runs[il] && p->runs[il][r].pos + p->runs[il][r].len <= j) r++;
            if (r < p->n_runs[il] && j >= p->runs[il][r].pos) in_run = true;
            p->down_row[il][j] = p->edges_only && in_run ? -1 : (int32_t)kept++;
        }
        /* the memory this layer takes */
        const bool view = views && is_range(ids[il], c);
        const struct pi_type_info *ti = pi_type_get(L->ffn_down.type);
        if (blk > 0) bytes += pi_align_up((uint64_t)L->ffn_down.rows * (uint64_t)(blk / be) * ti->block_bytes, 64);
        uint64_t rb = L->ffn_down_t.row_bytes;
        if (!L->ffn_down_t.data && !pi_type_row_bytes(down_t_type(L->ffn_down.type, hp->n_embd), (uint64_t)hp->n_embd, &rb)) {
            pi_error("partition: layer %d: no transposed down row type for ffn_down's type", il);
            rc = -PI_ERR_UNSUPPORTED;
            goto fail;
        }
        if (!view) bytes += pi_align_up((uint64_t)c * L->ffn_gate.row_bytes, 64) + pi_align_up((uint64_t)c * L->ffn_up.row_bytes, 64);
        if (grouped_down(m, L)) { /* the kept neurons' groups, as pack_grouped counts them */
            bytes += grouped_bytes(L, kept, touched_groups(ids[il], p->down_row[il], c));
            grouped_tmp = PI_MAX(grouped_tmp, (size_t)PI_GROUP_ROWS * pi_grouped_row_bytes(L->ffn_down.type, L->ffn_down.rows));
        } else if (!(view && L->ffn_down_t.data)) {
            bytes += pi_align_up((uint64_t)kept * rb, 64);
        }
    }
    p->mem = pi_numa_alloc(bytes, node_os);
    p->bytes = bytes;
    if (!p->mem) {
        pi_error("cannot allocate %zu bytes for the packed neurons on node %d", bytes, node_os);
        goto fail;
    }
    if (grouped_tmp && !(tmp = malloc(grouped_tmp))) goto fail;
    size_t off = 0;
    for (int il = 0; il < NL; il++) {
        const struct pi_layer *L = &m->layers[il];
        struct pi_layer *D = &p->layers[il];
        const int64_t c = p->count[il];
        const int32_t *id = p->ids[il];
        const bool view = views && is_range(id, c);
        copy_rows(&D->ffn_gate, &L->ffn_gate, id, c, view, p->mem, &off);
        copy_rows(&D->ffn_up, &L->ffn_up, id, c, view, p->mem, &off);
        if (p->n_runs[il] > 0) { /* each row's bytes for the runs' blocks, rows packed one after another */
            const struct pi_type_info *ti = pi_type_get(L->ffn_down.type);
            const struct pi_partition_run *last = &p->runs[il][p->n_runs[il] - 1];
            const int64_t blk = last->col + last->len;
            const size_t rb = (size_t)(blk / ti->block_elems) * ti->block_bytes;
            char *dst = (char *)p->mem + off;
            for (int64_t r = 0; r < L->ffn_down.rows; r++)
                for (int64_t k = 0; k < p->n_runs[il]; k++) {
                    const struct pi_partition_run *ru = &p->runs[il][k];
                    memcpy(dst + (size_t)r * rb + (size_t)(ru->col / ti->block_elems) * ti->block_bytes,
                           (const char *)pi_weight_row(&L->ffn_down, r) + (size_t)(id[ru->pos] / ti->block_elems) * ti->block_bytes,
                           (size_t)(ru->len / ti->block_elems) * ti->block_bytes);
                }
            D->ffn_down = (struct pi_weight){L->ffn_down.type, L->ffn_down.rows, blk, rb, dst, NULL, NULL, NULL};
            off += pi_align_up((uint64_t)L->ffn_down.rows * rb, 64);
        }
        if (grouped_down(m, L)) { /* the kept neurons' grouped rows, from the file's ffn_down */
            int32_t *gid = malloc((size_t)(c ? c : 1) * sizeof *gid);
            if (!gid) goto fail;
            int64_t kept = 0;
            for (int64_t j = 0; j < c; j++)
                if (p->down_row[il][j] >= 0) gid[kept++] = id[j];
            off += pack_grouped(L, gid, kept, (char *)p->mem + off, tmp, &D->ffn_down_t);
            free(gid);
            continue;
        }
        if (view && L->ffn_down_t.data) { /* the file's own rows, viewed */
            copy_rows(&D->ffn_down_t, &L->ffn_down_t, id, c, true, NULL, &off);
            continue;
        }
        /* The transposed down rows of the kept neurons (every one, or with edges_only those outside
         * the dense block), one after the other: the file's copied, or built from the mapped ffn_down. */
        enum pi_type dt = L->ffn_down_t.data ? L->ffn_down_t.type : down_t_type(L->ffn_down.type, hp->n_embd);
        uint64_t rb = L->ffn_down_t.row_bytes;
        if (!L->ffn_down_t.data) pi_type_row_bytes(dt, (uint64_t)hp->n_embd, &rb);
        int32_t *kid = malloc((size_t)(c ? c : 1) * sizeof *kid);
        if (!kid) goto fail;
        int64_t kept = 0;
        for (int64_t j = 0; j < c; j++)
            if (p->down_row[il][j] >= 0) kid[kept++] = id[j];
        char *dst = (char *)p->mem + off;
        D->ffn_down_t = (struct pi_weight){dt, kept, hp->n_embd, (size_t)rb, dst, NULL, NULL, NULL};
        if (L->ffn_down_t.data) {
            for (int64_t j = 0; j < kept; j++) memcpy(dst + (size_t)j * rb, pi_weight_row(&L->ffn_down_t, kid[j]), (size_t)rb);
            rc = 0;
        } else {
            rc = kept > 0 ? pack_down_columns(L, kid, kept, dt, (size_t)rb, dst) : 0;
        }
        free(kid);
        if (rc != 0) goto fail;
        off += pi_align_up((uint64_t)kept * rb, 64);
    }
    PI_ASSERT(off == p->bytes);
    free(tmp);
    return 0;
fail:
    if (rc == 0) rc = -PI_ERR_NOMEM;
    free(tmp);
    pi_partition_free(p);
    return rc;
}

size_t pi_partition_dense_scratch(const struct pi_partition *p, int64_t n)
{
    /* g, u, the dense block's activations; with packed heads their products and the tails' */
    return (size_t)n * (5 * (size_t)p->count_max + 1);
}

/* g, u (n, c) = X @ gate^T, X @ up^T of layer il: through the packed heads (p->gu16) and the rows of
 * the last c % 16 neurons, or the rows alone. Each row of g and u is the same bits in any batch: a
 * neuron's row always takes the same path. tmp: 2 n c floats. */
static void gate_up(pi_pool_t *pool, const struct pi_partition *p, int il, const float *X, int64_t n, float *g,
                    float *u, float *tmp)
{
    const struct pi_layer *L = &p->layers[il];
    const int64_t c = p->count[il];
    const struct pi_weight *hg = p->gu16 ? &p->gu16[2 * il] : NULL, *hu = hg ? hg + 1 : NULL;
    if (c == 0) return;
    if (!hg || !hg->rows16 || !hu->rows16) { /* the rows */
        const struct pi_weight *gu[2] = {&L->ffn_gate, &L->ffn_up};
        float *const out[2] = {g, u};
        pi_matmul_wn(pool, gu, 2, X, n, out);
        return;
    }
    const int64_t c16 = hg->rows, tail = c - c16;
    const struct pi_weight *heads[2] = {hg, hu};
    if (tail == 0) {
        float *const out[2] = {g, u};
        pi_matmul_wn(pool, heads, 2, X, n, out);
        return;
    }
    float *tg = tmp, *tu = tmp + (size_t)n * (size_t)c16;
    float *rg = tu + (size_t)n * (size_t)c16, *ru = rg + (size_t)n * (size_t)tail;
    float *const hout[2] = {tg, tu}, *const tout[2] = {rg, ru};
    pi_matmul_wn(pool, heads, 2, X, n, hout);
    struct pi_weight wg = L->ffn_gate, wu = L->ffn_up; /* the last rows, viewed */
    wg.rows = wu.rows = tail;
    wg.data = pi_weight_row(&L->ffn_gate, c16);
    wu.data = pi_weight_row(&L->ffn_up, c16);
    wg.rows16 = wu.rows16 = NULL;
    const struct pi_weight *tails[2] = {&wg, &wu};
    pi_matmul_wn(pool, tails, 2, X, n, tout);
    for (int64_t t = 0; t < n; t++) {
        memcpy(g + (size_t)t * (size_t)c, tg + (size_t)t * (size_t)c16, (size_t)c16 * sizeof(float));
        memcpy(g + (size_t)t * (size_t)c + (size_t)c16, rg + (size_t)t * (size_t)tail, (size_t)tail * sizeof(float));
        memcpy(u + (size_t)t * (size_t)c, tu + (size_t)t * (size_t)c16, (size_t)c16 * sizeof(float));
        memcpy(u + (size_t)t * (size_t)c + (size_t)c16, ru + (size_t)t * (size_t)tail, (size_t)tail * sizeof(float));
    }
}

/* g (n, c) = 0 where token t's mask row does not select packed neuron j (id ids[j]). */
static void apply_mask(float *g, int64_t n, int64_t c, const int32_t *ids, const uint64_t *mask, int64_t mask_words)
{
    for (int64_t t = 0; t < n; t++) {
        const uint64_t *row = mask + t * mask_words;
        float *gt = g + t * c;
        for (int64_t j = 0; j < c; j++)
            if (!((row[ids[j] / 64] >> (ids[j] % 64)) & 1u)) gt[j] = 0.0f;
    }
}

static int64_t ffn_dense(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act, const float *gate_min,
                         const float *X, int64_t n, const uint64_t *mask, int64_t mask_words, float *scratch, float *Y);

int64_t pi_partition_ffn_dense(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act,
                               const float *X, int64_t n, float *scratch, float *Y)
{
    return ffn_dense(pool, p, il, act, NULL, X, n, NULL, 0, scratch, Y);
}

int64_t pi_partition_ffn_dense_masked(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act,
                                      const float *X, int64_t n, const uint64_t *mask, int64_t mask_words, float *scratch,
                                      float *Y)
{
    return ffn_dense(pool, p, il, act, NULL, X, n, mask, mask_words, scratch, Y);
}

int64_t pi_partition_ffn_dense_gated(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act,
                                     const float *gate_min, const float *X, int64_t n, float *scratch, float *Y)
{
    return ffn_dense(pool, p, il, act, gate_min, X, n, NULL, 0, scratch, Y);
}

static int64_t ffn_dense(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act, const float *gate_min,
                         const float *X, int64_t n, const uint64_t *mask, int64_t mask_words, float *scratch, float *Y)
{
    PI_ASSERT(p->down_row && n >= 1 && il >= 0 && il < p->n_layer);
    const struct pi_layer *L = &p->layers[il];
    const int64_t c = p->count[il], d = L->ffn_gate.cols, blk = L->ffn_down.data ? L->ffn_down.cols : 0;
    const struct pi_partition_run *runs = p->runs[il];
    const int32_t *row = p->down_row[il];
    float *g = scratch, *u = g + (size_t)n * (size_t)c, *ab = u + (size_t)n * (size_t)c;
    gate_up(pool, p, il, X, n, g, u, ab + (size_t)n * (size_t)c); /* ab takes n blk <= n c floats */
    if (gate_min) pi_ffn_act_min(act, gate_min, g, u, n, c);
    else pi_ffn_act(act, g, u, n * c);
    if (mask) apply_mask(g, n, c, p->ids[il], mask, mask_words);
    int64_t active = 0;
    for (size_t i = 0; i < (size_t)n * (size_t)c; i++) active += g[i] != 0.0f;
    if (blk > 0) { /* the runs' activations side by side, as the dense block's columns */
        for (int64_t t = 0; t < n; t++)
            for (int64_t k = 0; k < p->n_runs[il]; k++) {
                PI_ASSERT(runs[k].pos + runs[k].len <= c && runs[k].col + runs[k].len <= blk);
                memcpy(ab + (size_t)t * (size_t)blk + (size_t)runs[k].col, g + (size_t)t * (size_t)c + (size_t)runs[k].pos,
                       (size_t)runs[k].len * sizeof(float));
            }
        if (n == 1) pi_matvec_w(pool, &L->ffn_down, ab, Y);
        else pi_matmul_w(pool, &L->ffn_down, ab, n, Y);
    } else {
        memset(Y, 0, (size_t)n * (size_t)d * sizeof(float));
    }
    /* the neurons outside the dense block, through their transposed down rows */
    for (int64_t t = 0; t < n; t++) {
        const float *a = g + (size_t)t * (size_t)c;
        int64_t k = 0;
        for (int64_t j = 0; j < c; j++) {
            if (k < p->n_runs[il] && j == runs[k].pos) { /* skip the run */
                j += runs[k++].len - 1;
                continue;
            }
            PI_ASSERT(row[j] >= 0 && row[j] < L->ffn_down_t.rows);
            if (a[j] != 0.0f) pi_vec_mad_row(&L->ffn_down_t, row[j], a[j], Y + (size_t)t * (size_t)d);
        }
    }
    return active;
}

/* The weights pi_partition_pack_rows16 packs, of layer il: the heads of gate and up (p->gu16, their
 * first count & ~15 rows) and the dense down block. */
static int packed_weights(struct pi_partition *p, int il, struct pi_weight **w)
{
    struct pi_layer *L = &p->layers[il];
    int n = 0;
    struct pi_weight *all[3] = {&p->gu16[2 * il], &p->gu16[2 * il + 1], &L->ffn_down};
    for (int k = 0; k < 3; k++)
        if (all[k]->rows > 0 && pi_r16_packable(all[k]) && pi_r16_kernel(all[k]->type)) w[n++] = all[k];
    return n;
}

void pi_partition_pack_rows16(struct pi_partition *p, pi_pool_t *pool, int sharing, size_t *bytes)
{
    struct pi_weight *w[3];
    size_t total = 0;
    if (bytes) *bytes = 0;
    PI_ASSERT(!p->mem16 && !p->gu16);
    if (!(p->gu16 = calloc((size_t)p->n_layer * 2, sizeof *p->gu16))) {
        pi_warn("partition: no memory for the 16-row packing's table; using the rows");
        return;
    }
    for (int il = 0; il < p->n_layer; il++) {
        for (int k = 0; k < 2; k++) { /* the heads: views of the rows, cut to whole groups */
            struct pi_weight *h = &p->gu16[2 * il + k];
            *h = k ? p->layers[il].ffn_up : p->layers[il].ffn_gate;
            h->rows = p->count[il] & ~(int64_t)(PI_R16_ROWS - 1);
            h->rows16 = NULL;
        }
    }
    for (int il = 0; il < p->n_layer; il++) {
        int n = packed_weights(p, il, w);
        for (int k = 0; k < n; k++)
            total += pi_r16_group_bytes(w[k]->type, w[k]->cols) * (size_t)(w[k]->rows / PI_R16_ROWS);
    }
    uint64_t avail = 0;
    const uint64_t all = (uint64_t)total * (uint64_t)PI_MAX(1, sharing); /* every worker's copy at once */
    const bool room = total > 0 && pi_r16_room(all, &avail);
    if (total > 0 && !room)
        pi_warn("partition: the 16-row packed copies of the neurons need %.1f MiB (%d worker(s)) and %.1f MiB are "
                "available; using the rows (slower dense products)", all / 1048576.0, PI_MAX(1, sharing),
                avail / 1048576.0);
    if (!room) {
        free(p->gu16);
        p->gu16 = NULL;
        return;
    }
    /* 64 bytes over: the heap's fallback (no libnuma) aligns to 16 only, the packed groups want 64 */
    uint8_t *raw = pi_numa_alloc(total + 64, p->node_os);
    if (!raw) { /* as model.c's failed mapping: the rows still work, slower */
        pi_warn("partition: cannot allocate %zu bytes on node %d for the 16-row packed copy; using the rows", total + 64,
                p->node_os);
        free(p->gu16);
        p->gu16 = NULL;
        return;
    }
    p->mem16 = raw;
    p->bytes16 = total + 64;
    uint8_t *mem = raw + (64 - (uintptr_t)raw % 64) % 64;
    for (int il = 0; il < p->n_layer; il++) {
        int n = packed_weights(p, il, w);
        for (int k = 0; k < n; k++) { /* group sizes are multiples of 64 bytes: every copy stays aligned */
            pi_r16_pack(pool, w[k], mem);
            w[k]->rows16 = mem;
            mem += pi_r16_group_bytes(w[k]->type, w[k]->cols) * (size_t)(w[k]->rows / PI_R16_ROWS);
        }
    }
    if (bytes) *bytes = total;
}

void pi_partition_free(struct pi_partition *p)
{
    pi_numa_free(p->mem16, p->bytes16);
    free(p->gu16);
    free(p->count);
    free(p->ids);
    free(p->layers);
    free(p->runs);
    free(p->n_runs);
    free(p->down_row);
    free(p->meta);
    pi_numa_free(p->mem, p->bytes);
    memset(p, 0, sizeof *p);
}
