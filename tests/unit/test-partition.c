/*
 * tests/unit/test-partition.c - a worker's slice of the FFN (compute/partition.h) on the demo model:
 *   - the placement's cold groups cover the cold neurons exactly once, in order;
 *   - pi_partition_pack copies the worker's gate/up rows and builds its down rows, and keeps the
 *     whole quantisation blocks of its ffn_down columns as the dense down block (offset and width
 *     inside the range, on block boundaries);
 *   - pi_partition_ffn_dense equals the neuron kernel over the same slice (pi_ffn_neurons on the
 *     packed rows) within the 8-bit activation rounding both paths have, for one token and a batch,
 *     for ranges that start and end inside a block, on block boundaries, and inside a single block
 *     (no dense block: edges only);
 *   - with views, gate and up are the mapping's own rows and only the down rows and the dense block
 *     take memory;
 *   - dense_only keeps the transposed down rows of the edge neurons only, with the same results;
 *   - scattered sets (a hot set by frequency, not a range) pack their whole blocks as runs of the
 *     dense block and the rest as edges, with the same agreement, and their packed rows give the
 *     bits of the model's own rows by id;
 *   - pi_partition_pack_rows16 (where the CPU variant has a 16-row kernel): the whole layer's dense
 *     path then gives the bits of the in-process engine's packed products (a model opened with
 *     rows16), a slice agrees with its unpacked self within the 8-bit rounding, and a token's rows
 *     are the same bits alone or in a batch; a scattered set of a count not a multiple of 16 packs only
 *     its dense down block and agrees with its rows too.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/partition.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/rows16.h"
#include "lib/common.h"
#include "model/model.h"
#include "lib/rng.h"
#include "tests/tap.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float frand(void) { return (float)((double)(pi_rng_splitmix64(&rng_state) >> 11) / 9007199254740992.0) * 2.0f - 1.0f; }

static double rel_err(const float *y, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)y[i] - ref[i]) * ((double)y[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Dense vs neuron kernel over the neurons ids[0..count) (ascending) of layer il, every layer packed
 * with the same ids. */
static void check_ids(const pi_model_t *m, pi_pool_t *pool, const int32_t *ids, int64_t count, int il, const char *name)
{
    const int64_t d = m->hp.n_embd;
    struct pi_partition p;
    const int32_t **lids = calloc((size_t)m->hp.n_layer, sizeof *lids);
    int64_t *cnt = calloc((size_t)m->hp.n_layer, sizeof *cnt);
    PI_ASSERT(lids && cnt);
    for (int l = 0; l < m->hp.n_layer; l++) lids[l] = ids, cnt[l] = count;
    int rc = pi_partition_pack_ids(m, (const int32_t *const *)lids, cnt, -1, false, false, &p);
    if (!tap_ok(rc == 0, "%s packs", name)) { free(lids), free(cnt); return; }
    const struct pi_layer *L = &p.layers[il];
    const int64_t be = (int64_t)pi_type_get(m->layers[il].ffn_down.type)->block_elems, blk = L->ffn_down.data ? L->ffn_down.cols : 0;
    /* the runs: each a stretch of whole aligned blocks with consecutive ids, together every whole
     * block of the set, at consecutive columns of the dense block */
    int64_t whole = 0, in_runs = 0, col = 0;
    int runs_ok = 1;
    for (int64_t j = 0; j < count; j++)
        if (ids[j] % be == 0 && j + be <= count && ids[j + be - 1] - ids[j] == be - 1) whole += be, j += be - 1;
    for (int64_t k = 0; k < p.n_runs[il]; k++) {
        const struct pi_partition_run *r = &p.runs[il][k];
        runs_ok &= r->len > 0 && r->len % be == 0 && ids[r->pos] % be == 0 && ids[r->pos + r->len - 1] - ids[r->pos] == r->len - 1 &&
                   r->col == col;
        col += r->len, in_runs += r->len;
    }
    tap_ok(runs_ok && in_runs == whole && blk == whole, "%s: %lld runs hold the %lld neurons of whole %lld-blocks (dense block %lld)",
           name, (long long)p.n_runs[il], (long long)whole, (long long)be, (long long)blk);
    enum { N = 5 };
    float *X = malloc(sizeof(float) * N * (size_t)d), *Yd = malloc(sizeof(float) * N * (size_t)d);
    float *Yn = calloc((size_t)N * (size_t)d, sizeof(float)), *Ym = calloc((size_t)N * (size_t)d, sizeof(float));
    float *scr = malloc(pi_partition_dense_scratch(&p, N) * sizeof(float));
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)(count ? count : 1));
    pi_ffn_work_t *w = pi_ffn_work_new(d, pi_pool_size(pool));
    PI_ASSERT(X && Yd && Yn && Ym && scr && idx && w);
    for (int64_t i = 0; i < N * d; i++) X[i] = frand();
    for (int64_t j = 0; j < count; j++) idx[j] = (int32_t)j;
    for (int t = 0; t < N; t++) pi_ffn_neurons(pool, w, L, m->hp.act, NULL, X + (size_t)t * (size_t)d, idx, count, Yn + (size_t)t * (size_t)d);
    /* the packed rows are the model's: the neuron kernel on the packed copy equals it on the model's
     * own rows by id (the model opened with its transposed down rows) */
    char path[1024], err[256];
    tap_data(path, sizeof path, "demo-relu-q4_0.gguf");
    pi_model_t *full = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.down_t_grouped = m->down_t_grouped; /* grouped rows against the model's own grouped rows */
    PI_ASSERT(pi_model_open(path, &mo, &full, err, sizeof err) == 0);
    if (m->down_t_grouped)
        tap_ok(L->ffn_down_t.gscale && L->ffn_down_t.grow && full->layers[il].ffn_down_t.gscale &&
                   L->ffn_down_t.row_bytes == full->layers[il].ffn_down_t.row_bytes,
               "%s: the packed down rows are grouped, as the model's own", name);
    for (int t = 0; t < N; t++)
        pi_ffn_neurons(pool, w, &full->layers[il], m->hp.act, NULL, X + (size_t)t * (size_t)d, ids, count, Ym + (size_t)t * (size_t)d);
    tap_ok(memcmp(Ym, Yn, sizeof(float) * N * (size_t)d) == 0, "%s: packed rows give the bits of the model's rows by id", name);
    pi_model_destroy(&full);
    for (int64_t i = 0; i < N * d; i++) Yd[i] = NAN; /* overwritten, not accumulated */
    pi_partition_ffn_dense(pool, &p, il, m->hp.act, X, N, scr, Yd);
    double e5 = rel_err(Yd, Yn, (size_t)N * (size_t)d);
    for (int64_t i = 0; i < d; i++) Yd[i] = NAN;
    pi_partition_ffn_dense(pool, &p, il, m->hp.act, X, 1, scr, Yd);
    double e1 = rel_err(Yd, Yn, (size_t)d);
    /* both round the activations to 8 bits, at different places (the dense down product quantises a,
     * the neuron kernel multiplies f16 rows by the float a): about 5e-3 measured on this model; a
     * missing edge neuron costs far more */
    tap_ok(e1 < 2e-2 && e5 < 2e-2, "%s layer %d: dense vs neuron kernel, 1 token %.3g, %d tokens %.3g", name, il, e1, N, e5);
    /* dense_only (SwiGLU workers): only the edge neurons' down rows are kept; the same bits */
    struct pi_partition q;
    rc = pi_partition_pack_ids(m, (const int32_t *const *)lids, cnt, -1, false, true, &q);
    float *Yq = malloc(sizeof(float) * N * (size_t)d);
    PI_ASSERT(rc == 0 && Yq);
    pi_partition_ffn_dense(pool, &p, il, m->hp.act, X, N, scr, Yd);
    pi_partition_ffn_dense(pool, &q, il, m->hp.act, X, N, scr, Yq);
    tap_ok(q.edges_only && q.layers[il].ffn_down_t.rows == count - blk && (blk == 0 ? q.bytes == p.bytes : q.bytes < p.bytes) &&
               memcmp(Yq, Yd, sizeof(float) * N * (size_t)d) == 0,
           "%s dense_only: %lld down rows kept (%zu of %zu bytes), the same bits", name,
           (long long)q.layers[il].ffn_down_t.rows, q.bytes, p.bytes);
    free(Yq);
    pi_partition_free(&q);
    pi_ffn_work_destroy(&w);
    free(X), free(Yd), free(Yn), free(Ym), free(scr), free(idx), free(lids), free(cnt);
    pi_partition_free(&p);
}

static void check_range(const pi_model_t *m, pi_pool_t *pool, int64_t first, int64_t count, int il)
{
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(count ? count : 1));
    PI_ASSERT(ids);
    for (int64_t j = 0; j < count; j++) ids[j] = (int32_t)(first + j);
    char name[64];
    snprintf(name, sizeof name, "range [%lld, %lld)", (long long)first, (long long)(first + count));
    check_ids(m, pool, ids, count, il, name);
    free(ids);
}

/* A random subset of the layer's neurons, each kept with probability keep, plus some whole blocks. */
static void check_scattered(const pi_model_t *m, pi_pool_t *pool, double keep, int il)
{
    const int64_t ff = m->hp.n_ff;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)ff);
    PI_ASSERT(ids);
    int64_t n = 0;
    for (int64_t i = 0; i < ff; i++) {
        const bool whole_block = (i / 32) % 7 == 3; /* blocks 3, 10, 17, ...: whole, so runs appear */
        if (whole_block || (frand() + 1.0f) / 2.0f < keep) ids[n++] = (int32_t)i;
    }
    char name[64];
    snprintf(name, sizeof name, "scattered %lld of %lld", (long long)n, (long long)ff);
    check_ids(m, pool, ids, n, il, name);
    free(ids);
}

/* The dense path through 16-row packed copies (see the header). */
static void check_rows16(const char *path, pi_pool_t *pool)
{
    char err[256];
    pi_model_t *m16 = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.rows16 = true; /* the in-process engine's packed products, the reference */
    if (pi_model_open(path, &mo, &m16, err, sizeof err) != 0) tap_bail("cannot open the demo model: %s", err);
    const int64_t d = m16->hp.n_embd, ff = m16->hp.n_ff, nmax = 20;
    const int il = 2;
    struct pi_partition whole, part, plain;
    size_t b_whole = 0, b_part = 0;
    int rc = pi_partition_pack_range(m16, 0, ff, -1, false, false, &whole);
    if (rc == 0) pi_partition_pack_rows16(&whole, pool, 1, &b_whole);
    if (rc != 0 || b_whole == 0) {
        tap_skip(4, "rows16: no 16-row packed kernel in this CPU variant (or no memory): nothing packed");
        if (rc == 0) pi_partition_free(&whole);
        pi_model_destroy(&m16);
        return;
    }
    float *X = malloc(sizeof(float) * (size_t)(nmax * d)), *Y = malloc(sizeof(float) * (size_t)(nmax * d));
    float *R = malloc(sizeof(float) * (size_t)(nmax * d)), *one = malloc(sizeof(float) * (size_t)d);
    float *g = malloc(sizeof(float) * (size_t)(nmax * ff)), *u = malloc(sizeof(float) * (size_t)(nmax * ff));
    float *scr = malloc(sizeof(float) * pi_partition_dense_scratch(&whole, nmax));
    for (int64_t i = 0; i < nmax * d; i++) X[i] = frand();
    /* 1: the whole layer, against the model's packed products: gate/up, the activation, down */
    const struct pi_layer *L = &m16->layers[il];
    int bad = 0;
    static const int64_t ns[] = {1, 5, 20};
    for (int k = 0; k < 3; k++) {
        const int64_t n = ns[k];
        const struct pi_weight *gu[2] = {&L->ffn_gate, &L->ffn_up};
        float *const out[2] = {g, u};
        pi_matmul_wn(pool, gu, 2, X, n, out);
        pi_ffn_act(m16->hp.act, g, u, n * ff);
        if (n == 1) pi_matvec_w(pool, &L->ffn_down, g, R);
        else pi_matmul_w(pool, &L->ffn_down, g, n, R);
        pi_partition_ffn_dense(pool, &whole, il, m16->hp.act, X, n, scr, Y);
        bad += memcmp(Y, R, sizeof(float) * (size_t)(n * d)) != 0;
    }
    tap_ok(bad == 0, "rows16: the whole layer packed (%zu bytes) gives the in-process packed products' bits, "
           "n = 1, 5, 20", b_whole);
    /* 2 and 3: a slice, packed and not */
    rc = pi_partition_pack_range(m16, 256, 512, -1, true, false, &part);
    if (rc == 0) pi_partition_pack_rows16(&part, pool, 1, &b_part);
    rc |= pi_partition_pack_range(m16, 256, 512, -1, true, false, &plain);
    PI_ASSERT(rc == 0);
    pi_partition_ffn_dense(pool, &part, il, m16->hp.act, X, nmax, scr, Y);
    pi_partition_ffn_dense(pool, &plain, il, m16->hp.act, X, nmax, scr, R);
    double e = rel_err(Y, R, (size_t)(nmax * d));
    tap_ok(b_part > 0 && part.gu16 && part.gu16[2 * il].rows == 512 && part.gu16[2 * il].rows16 &&
               part.gu16[2 * il + 1].rows16 && part.layers[il].ffn_down.rows16 && e < 1e-5,
           "rows16: a slice of 512 neurons packed (%zu bytes) agrees with its rows: relative error %.2g "
           "(bound 1e-5)", b_part, e);
    bad = 0;
    for (int64_t t = 0; t < nmax; t++) {
        pi_partition_ffn_dense(pool, &part, il, m16->hp.act, X + t * d, 1, scr, one);
        bad += memcmp(one, Y + t * d, sizeof(float) * (size_t)d) != 0;
    }
    tap_ok(bad == 0, "rows16: each of %lld tokens alone gives its bits in the batch (%d differ)", (long long)nmax, bad);
    /* 4: a scattered set whose count is not a multiple of 16 (a placement's usual cold set): gate and
     * up packed for their first count & ~15 rows (the last ones from the rows), the dense down block of
     * the runs packed; with and without edges_only; tokens alone give their rows of the batch */
    pi_partition_free(&part); /* the slice's, reused below */
    pi_partition_free(&plain);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)ff);
    const int32_t **lids = calloc((size_t)m16->hp.n_layer, sizeof *lids);
    int64_t *cnt = calloc((size_t)m16->hp.n_layer, sizeof *cnt), ns4 = 0;
    PI_ASSERT(ids && lids && cnt);
    for (int64_t i = 0; i < ff; i++)
        if ((i / 32) % 5 == 1 || (frand() + 1.0f) / 2.0f < 0.3f) ids[ns4++] = (int32_t)i;
    if (ns4 % 16 == 0) ns4--; /* drop the last: never a whole number of groups */
    for (int l = 0; l < m16->hp.n_layer; l++) lids[l] = ids, cnt[l] = ns4;
    double e4 = 0;
    bool shape = true;
    for (int eo = 0; eo < 2; eo++) {
        size_t b4 = 0;
        rc = pi_partition_pack_ids(m16, lids, cnt, -1, false, eo, &part);
        if (rc == 0) pi_partition_pack_rows16(&part, pool, 1, &b4);
        rc |= pi_partition_pack_ids(m16, lids, cnt, -1, false, eo, &plain);
        PI_ASSERT(rc == 0);
        shape = shape && b4 > 0 && part.gu16 && part.gu16[2 * il].rows == (ns4 & ~15) && part.gu16[2 * il].rows16 &&
                part.gu16[2 * il + 1].rows16 && !part.layers[il].ffn_gate.rows16 && part.layers[il].ffn_down.rows16 &&
                part.layers[il].ffn_down.cols % 32 == 0;
        pi_partition_ffn_dense(pool, &part, il, m16->hp.act, X, nmax, scr, Y);
        pi_partition_ffn_dense(pool, &plain, il, m16->hp.act, X, nmax, scr, R);
        e4 = fmax(e4, rel_err(Y, R, (size_t)(nmax * d)));
        for (int64_t t = 0; t < nmax; t += nmax - 1) {
            pi_partition_ffn_dense(pool, &part, il, m16->hp.act, X + t * d, 1, scr, one);
            shape = shape && memcmp(one, Y + t * d, sizeof(float) * (size_t)d) == 0;
        }
        pi_partition_free(&part);
        pi_partition_free(&plain);
    }
    tap_ok(shape && e4 < 1e-5,
           "rows16: %lld scattered neurons (gate and up packed but the last %lld, the down block packed; edges_only "
           "too) agree with their rows: relative error %.2g (bound 1e-5); tokens alone give their batch rows",
           (long long)ns4, (long long)(ns4 % 16), e4);
    free(ids), free(lids), free(cnt);
    pi_partition_free(&whole);
    pi_partition_free(&part);
    pi_partition_free(&plain);
    free(X), free(Y), free(R), free(one), free(g), free(u), free(scr);
    pi_model_destroy(&m16);
}

int main(void)
{
    char path[1024], err[256];
    tap_data(path, sizeof path, "demo-relu-q4_0.gguf");
    pi_model_t *m = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true; /* as the workers open it */
    if (pi_model_open(path, &mo, &m, err, sizeof err) != 0) tap_bail("cannot open the demo model: %s", err);
    const int64_t ff = m->hp.n_ff;
    /* the placement's cold groups: every cold neuron in exactly one, in order */
    int ok = 1;
    for (int workers = 1; workers <= 5; workers++) {
        struct pi_placement *pl = NULL;
        ok &= pi_placement_prefix(m->hp.n_layer, (int)ff, workers, 100, &pl) == 0;
        int64_t next = 100, n;
        for (int wk = 0; pl && wk < workers; wk++) {
            const int32_t *g = pi_placement_cold(pl, 0, wk, &n);
            for (int64_t j = 0; j < n; j++) ok &= g[j] == next + j;
            next += n;
        }
        ok &= next == ff;
        pi_placement_destroy(&pl);
    }
    tap_ok(ok, "placement: 1..5 workers hold the cold neurons [100, %lld) once, in order", (long long)ff);
    pi_pool_t *pool = pi_pool_new(2);
    PI_ASSERT(pool);
    check_range(m, pool, 100, 300, 1);    /* starts and ends inside a block */
    check_range(m, pool, 256, 512, 3);    /* block boundaries */
    check_range(m, pool, 0, ff, 0);       /* the whole layer */
    check_range(m, pool, 70, 20, 2);      /* inside one block: no dense block, edges only */
    check_range(m, pool, 1000, ff - 1000, 7);
    check_scattered(m, pool, 0.5, 4);     /* a hot set by frequency: no prefix, runs and edges */
    check_scattered(m, pool, 0.05, 5);
    check_scattered(m, pool, 0.97, 6);
    /* views: gate/up are the mapping's rows, only the down rows take memory */
    struct pi_partition v;
    int rc = pi_partition_pack_range(m, 64, 128, -1, true, false, &v);
    tap_ok(rc == 0 && v.layers[0].ffn_gate.data == pi_weight_row(&m->layers[0].ffn_gate, 64) &&
               v.layers[0].ffn_up.data == pi_weight_row(&m->layers[0].ffn_up, 64) && v.n_runs[0] == 1 && v.runs[0][0].pos == 0 &&
               v.layers[0].ffn_down.cols == 128 &&
               v.bytes >= (size_t)128 * (size_t)m->layers[0].ffn_gate.cols * 2 * (size_t)m->hp.n_layer / 2,
           "views: gate and up rows are the model's own, %zu bytes of down rows and the dense block", v.bytes);
    pi_partition_free(&v);
    tap_ok(pi_partition_pack_range(m, ff - 10, 20, -1, false, false, &v) == -PI_ERR_INVAL, "a range past n_ff is refused");
    check_rows16(path, pool);
    /* grouped down rows (kernels/cpu/quant.h; [tune] down_t = grouped in the CPU workers): the same
     * checks, the packed rows giving the bits of the model's own grouped rows */
    pi_model_destroy(&m);
    mo.down_t_grouped = true;
    if (pi_model_open(path, &mo, &m, err, sizeof err) != 0) tap_bail("cannot open the demo model: %s", err);
    check_range(m, pool, 100, 300, 1);
    check_range(m, pool, 70, 20, 2);
    check_scattered(m, pool, 0.5, 4);
    check_scattered(m, pool, 0.05, 5);
    /* a model with its own grouped rows (opened without no_down_t): a partition's rows, views or copies,
     * from an id that is not a group's first, are the model's rows */
    pi_model_destroy(&m);
    mo.no_down_t = false;
    if (pi_model_open(path, &mo, &m, err, sizeof err) != 0) tap_bail("cannot open the demo model: %s", err);
    for (int views = 0; views < 2; views++) {
        struct pi_partition g;
        const int64_t first = 40, cnt = 100, d = m->hp.n_embd;
        int same = pi_partition_pack_range(m, first, cnt, -1, views, false, &g) == 0;
        float *y0 = malloc(sizeof(float) * (size_t)d), *y1 = malloc(sizeof(float) * (size_t)d);
        PI_ASSERT(y0 && y1);
        for (int64_t j = 0; same && j < cnt; j++) {
            const struct pi_weight *pw = &g.layers[3].ffn_down_t;
            same &= pw->gscale != NULL && g.down_row[3][j] >= 0;
            if (!same) break;
            memset(y0, 0, sizeof(float) * (size_t)d), memset(y1, 0, sizeof(float) * (size_t)d);
            pi_vec_mad_row(pw, g.down_row[3][j], 0.75f, y0);
            pi_vec_mad_row(&m->layers[3].ffn_down_t, first + j, 0.75f, y1);
            same &= memcmp(y0, y1, sizeof(float) * (size_t)d) == 0;
        }
        tap_ok(same, "a model with grouped rows: a partition of [40, 140) (views %s) holds its rows, grouped",
               views ? "on" : "off");
        free(y0), free(y1);
        pi_partition_free(&g);
    }
    pi_pool_destroy(&pool);
    pi_model_destroy(&m);
    return tap_done();
}
