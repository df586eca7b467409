/*
 * tests/unit/test-sparse.c - compute/sparse.h through its public header, on the demo ReLU model's
 * weights (tests/data) with fresh random inputs and masks every run:
 *   - both ways of computing a masked slice equal a float64 reference that computes, for each token,
 *     exactly the neurons its mask selects (relu(gate . x) * (up . x) * down column): neuron by neuron
 *     (pi_sparse_ffn: 1, 5 and 40 tokens) and densely with the others zeroed (pi_sparse_ffn_dense_layer,
 *     pi_partition_ffn_dense_masked), for the whole layer (the model's rows) and for a packed scattered
 *     slice (compute/partition.h), whose mask bits outside the slice must not matter; a batch equals its
 *     tokens one at a time bit for bit; pi_sparse_dense's choice;
 *   - the telemetry: counts, summaries (sparsity, bytes skipped from pi_place_neuron_bytes), the wire
 *     form and its checks, the recall against the true gates (every gate predicted: 1; none: 0);
 *   - pi_sparse_open's choices: auto, off, safe and aggressive on a model without predictors, with
 *     them, and on a SwiGLU model;
 *   - [sparsity] through pi_sparsity_conf_set.
 * Tolerance: the kernels quantise x to 8 bits for the Q4_0 rows (pi_vec_dot); measured below 1e-2 of
 * the output's norm, bound 2e-2.
 */
#include "config.h"
#include "compute/partition.h"
#include "compute/placement-solve.h"
#include "compute/sparse.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "model/model-gen.h"
#include "model/sidecar.h"
#include "tests/tap.h"

#include <math.h>
#include <stdlib.h>
#include <unistd.h>
#include <fcntl.h>
#include <string.h>

#define TOL 2e-2
#define N_MAX 40

static struct pi_rng rng;

/* Relative error ||a - b|| / ||b|| over n values. */
static double rel(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Y (n, d) = the reference over the neurons ids (count; NULL: all n_ff) of the model's layer L that
 * each token's mask selects. */
static void reference(const struct pi_layer *L, int64_t d, int64_t ff, const int32_t *ids, int64_t count, const float *X,
                      int64_t n, const uint64_t *mask, int64_t mw, float *Y)
{
    float *g = malloc((size_t)d * sizeof *g), *u = malloc((size_t)d * sizeof *u), *dn = malloc((size_t)d * ff * sizeof *dn);
    for (int64_t r = 0; r < d; r++) pi_dequant_row(L->ffn_down.type, pi_weight_row(&L->ffn_down, r), dn + r * ff, ff);
    for (int64_t t = 0; t < n; t++) {
        double acc[1024] = {0};
        for (int64_t i = 0; i < count; i++) {
            const int64_t j = ids ? ids[i] : i;
            if (!pi_sparse_bit(mask + t * mw, j)) continue;
            pi_dequant_row(L->ffn_gate.type, pi_weight_row(&L->ffn_gate, j), g, d);
            pi_dequant_row(L->ffn_up.type, pi_weight_row(&L->ffn_up, j), u, d);
            double gs = 0, us = 0;
            for (int64_t c = 0; c < d; c++) gs += (double)g[c] * X[t * d + c], us += (double)u[c] * X[t * d + c];
            if (gs <= 0) continue;
            for (int64_t c = 0; c < d; c++) acc[c] += gs * us * dn[c * ff + j];
        }
        for (int64_t c = 0; c < d; c++) Y[t * d + c] = (float)acc[c];
    }
    free(g), free(u), free(dn);
}

/* Random x rows (n, d) of unit RMS and masks (n, mw) selecting each neuron with probability p. */
static void inputs(float *X, int64_t n, int64_t d, uint64_t *mask, int64_t mw, int64_t ff, double p)
{
    for (int64_t i = 0; i < n * d; i++) X[i] = (float)((pi_rng_uniform(&rng) - 0.5) * 3.46);
    memset(mask, 0, (size_t)(n * mw) * sizeof *mask);
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < ff; j++)
            if (pi_rng_uniform(&rng) < p) mask[t * mw + j / 64] |= UINT64_C(1) << (j % 64);
}

static void test_ffn(const pi_model_t *m)
{
    const int64_t d = m->hp.n_embd, ff = m->hp.n_ff, mw = pi_sparse_mask_words(ff);
    float *X = malloc((size_t)(N_MAX * d) * sizeof *X), *Y = malloc((size_t)(N_MAX * d) * sizeof *Y);
    float *R = malloc((size_t)(N_MAX * d) * sizeof *R), *P = malloc((size_t)(N_MAX * d) * sizeof *P);
    uint64_t *mask = malloc((size_t)(N_MAX * mw) * sizeof *mask);
    int32_t *list = malloc((size_t)ff * sizeof *list);
    pi_pool_t *pool = pi_pool_new(2);
    pi_ffn_work_t *w = pi_ffn_work_new(d, 2);
    if (!X || !Y || !R || !P || !mask || !list || !pool || !w || pi_ffn_work_reserve(w, N_MAX) != 0) tap_bail("memory");
    const int il = (int)pi_rng_below(&rng, (uint64_t)m->hp.n_layer);
    const struct pi_layer *L = &m->layers[il];
    static const int64_t ns[] = {1, 5, N_MAX};
    for (size_t k = 0; k < PI_ARRAY_LEN(ns); k++) {
        const int64_t n = ns[k];
        inputs(X, n, d, mask, mw, ff, 0.3);
        int64_t sel = -1, want = 0;
        for (int64_t i = 0; i < n * mw; i++) want += __builtin_popcountll(mask[i]);
        pi_sparse_ffn(n == N_MAX ? pool : NULL, w, L, NULL, false, m->hp.act, X, n, mask, mw, list, Y, &sel);
        reference(L, d, ff, NULL, ff, X, n, mask, mw, R);
        double e = rel(Y, R, (size_t)(n * d));
        tap_ok(e <= TOL && sel == want, "layer %d, %lld token(s), whole layer: vs the masked reference %.3g (<= %.0e), %lld pairs selected",
               il, (long long)n, e, TOL, (long long)sel);
        if (n != N_MAX) continue;
        for (int64_t t = 0; t < n; t++) /* the same tokens one at a time: the same lists */
            pi_sparse_ffn(pool, w, L, NULL, false, m->hp.act, X + t * d, 1, mask + t * mw, mw, list, P + t * d, NULL);
        tap_ok(memcmp(Y, P, (size_t)(n * d) * sizeof *Y) == 0, "a batch of %lld equals its tokens one at a time, bit for bit",
               (long long)n);
        float *gs = malloc((size_t)(n * ff) * sizeof *gs), *us = malloc((size_t)(n * ff) * sizeof *us);
        if (!gs || !us) tap_bail("memory");
        pi_sparse_ffn_dense_layer(pool, L, m->hp.act, X, n, mask, mw, gs, us, P);
        double ed = rel(P, R, (size_t)(n * d));
        tap_ok(ed <= TOL && pi_sparse_dense(mask, n, mw, NULL, ff), "%lld tokens, 30%% selected: dense (masked) vs the reference %.3g",
               (long long)n, ed);
        inputs(X, n, d, mask, mw, ff, 0.05);
        tap_ok(!pi_sparse_dense(mask, n, mw, NULL, ff) && !pi_sparse_dense(mask, 1, mw, NULL, ff),
               "5%% selected: neuron by neuron");
        inputs(X, 1, d, mask, mw, ff, 0.6);
        tap_ok(pi_sparse_dense(mask, 1, mw, NULL, ff), "one token with 60%% selected: dense");
        free(gs), free(us);
    }
    free(X), free(Y), free(R), free(P), free(mask), free(list);
    pi_ffn_work_destroy(&w);
    pi_pool_destroy(&pool);
}

/* The slices' bitmaps and ranks against the ids they come from: for random slices (of layers whose
 * width is and is not a multiple of 64) and random masks, each selected neuron's rank is its position
 * in ids, pi_sparse_dense decides as the brute count says, the bits past the layer and outside the
 * slice change nothing; ids not ascending or out of range are refused. */
static void test_slices(void)
{
    static const int64_t widths[] = {64, 200, 13824};
    for (size_t wi = 0; wi < PI_ARRAY_LEN(widths); wi++) {
        const int64_t ff = widths[wi], mw = pi_sparse_mask_words(ff);
        const int nl = 3;
        int32_t *ids[3];
        int64_t count[3];
        for (int il = 0; il < nl; il++) {
            ids[il] = malloc((size_t)ff * sizeof **ids);
            const double p = il == 0 ? 1.0 : il == 1 ? 0.0 : pi_rng_uniform(&rng);
            count[il] = 0;
            for (int64_t j = 0; ids[il] && j < ff; j++)
                if (pi_rng_uniform(&rng) < p) ids[il][count[il]++] = (int32_t)j;
        }
        struct pi_sparse_slice *sl = NULL;
        if (!ids[0] || !ids[1] || !ids[2] || pi_sparse_slices_new(nl, ff, (const int32_t *const *)ids, count, &sl) != 0)
            tap_bail("slices");
        uint64_t *mask = malloc((size_t)mw * sizeof *mask);
        int64_t bad_rank = 0, bad_dense = 0, trials = 0;
        for (int rep = 0; mask && rep < 200; rep++) {
            const int il = rep % nl;
            const double p = pi_rng_uniform(&rng);
            for (int64_t q = 0; q < mw; q++) mask[q] = 0;
            for (int64_t j = 0; j < ff; j++)
                if (pi_rng_uniform(&rng) < p) mask[j / 64] |= UINT64_C(1) << (j % 64);
            int64_t sel = 0;
            for (int64_t i = 0; i < count[il]; i++) {
                const int32_t j = ids[il][i];
                if (!pi_sparse_bit(mask, j)) continue;
                sel++;
                /* the rank the slice gives j: its word's rank plus the slice's bits below it */
                const uint64_t below = sl[il].bits[j / 64] & ((UINT64_C(1) << (j % 64)) - 1);
                bad_rank += sl[il].rank[j / 64] + __builtin_popcountll(below) != i;
            }
            if (ff % 64) mask[mw - 1] |= ~UINT64_C(0) << (ff % 64); /* past the layer: ignored */
            const bool want = count[il] > 0 && (double)sel >= PI_SPARSE_DECODE_DENSE_SHARE * (double)count[il];
            bad_dense += pi_sparse_dense(mask, 1, mw, &sl[il], ff) != want;
            trials++;
        }
        tap_ok(mask && bad_rank == 0 && bad_dense == 0 && sl[0].count == ff && sl[1].count == 0,
               "slices of a %lld-neuron layer: %lld masks, ranks and the dense choice as counted (%lld, %lld wrong)",
               (long long)ff, (long long)trials, (long long)bad_rank, (long long)bad_dense);
        free(mask);
        pi_sparse_slices_free(&sl);
        tap_ok(sl == NULL, "freed slices are NULL");
        /* refused: a repeat, a descent, an id past the layer, a negative id */
        const int32_t bad_sets[4][3] = {{1, 1, 2}, {0, 3, 2}, {0, 1, (int32_t)ff}, {-1, 0, 1}};
        int refused = 0;
        for (int k = 0; k < 4; k++) {
            const int32_t *one[1] = {bad_sets[k]};
            const int64_t c3[1] = {3};
            refused += pi_sparse_slices_new(1, ff, one, c3, &sl) == -PI_ERR_INVAL && sl == NULL;
        }
        tap_ok(refused == 4, "a %lld-neuron layer: ids repeated, descending or out of range refused (%d of 4)", (long long)ff,
               refused);
        for (int il = 0; il < nl; il++) free(ids[il]);
    }
    /* the whole layer (no slice): 20 of 100 neurons selected, under the dense share (45), and the 28
     * bits past n_ff set, which would take the count over it if they counted */
    const int64_t ff = 100, mw = pi_sparse_mask_words(ff);
    uint64_t mask[2] = {(UINT64_C(1) << 20) - 1, ~UINT64_C(0) << (ff % 64)};
    tap_ok(!pi_sparse_dense(mask, 1, mw, NULL, ff), "the whole layer: bits past n_ff do not count");
}

/* A layer of 96 neurons (a mask word and a half): the 32 bits past n_ff, which a mask from another
 * process may set, select nothing in the whole-layer form (they would be rows past the layer). */
static void test_tail_bits(void)
{
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "%s/pi-test-sparse-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) tap_bail("mkdtemp failed");
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    struct pi_model_gen g = {.n_vocab = 96, .n_embd = 64, .n_layer = 1, .n_ff = 96, .n_head = 4, .n_head_kv = 2,
                             .type = PI_TYPE_F32, .seed = pi_rng_next(&rng), .act = PI_FFN_ACT_RELU};
    pi_model_t *m = NULL;
    if (pi_model_gen_write(&g, path) != 0 || pi_model_open(path, NULL, &m, NULL, 0) != 0) tap_bail("tail-bits model");
    const int64_t d = 64, ff = 96, mw = pi_sparse_mask_words(ff), n = 3;
    float X[3 * 64], Y[3 * 64], Z[3 * 64];
    uint64_t mask[3 * 2];
    int32_t list[96];
    pi_ffn_work_t *w = pi_ffn_work_new(d, 1);
    if (!w) tap_bail("memory");
    inputs(X, n, d, mask, mw, ff, 0.3);
    int64_t s1 = -1, s2 = -1;
    pi_sparse_ffn(NULL, w, &m->layers[0], NULL, false, m->hp.act, X, n, mask, mw, list, Y, &s1);
    for (int64_t t = 0; t < n; t++) mask[t * mw + 1] |= ~UINT64_C(0) << 32;
    pi_sparse_ffn(NULL, w, &m->layers[0], NULL, false, m->hp.act, X, n, mask, mw, list, Z, &s2);
    tap_ok(s1 == s2 && memcmp(Y, Z, sizeof Y) == 0, "a 96-neuron layer: the bits past n_ff select nothing (%lld, %lld pairs)",
           (long long)s1, (long long)s2);
    pi_ffn_work_destroy(&w);
    pi_model_destroy(&m);
    unlink(path);
    rmdir(dir);
}

/* A packed scattered slice: a random third of every layer's neurons. */
static void test_slice(const pi_model_t *m)
{
    const int64_t d = m->hp.n_embd, ff = m->hp.n_ff, mw = pi_sparse_mask_words(ff);
    const int nl = m->hp.n_layer;
    int32_t **ids = calloc((size_t)nl, sizeof *ids);
    int64_t *count = calloc((size_t)nl, sizeof *count);
    for (int il = 0; il < nl; il++) {
        ids[il] = malloc((size_t)ff * sizeof **ids);
        for (int64_t j = 0; j < ff; j++)
            if (pi_rng_uniform(&rng) < 1.0 / 3) ids[il][count[il]++] = (int32_t)j;
    }
    struct pi_partition part;
    struct pi_sparse_slice *sl = NULL;
    if (pi_partition_pack_ids(m, (const int32_t *const *)ids, count, -1, false, false, &part) != 0) tap_bail("pack");
    if (pi_sparse_slices_new(nl, ff, part.ids, part.count, &sl) != 0) tap_bail("slices");
    float *X = malloc((size_t)(N_MAX * d) * sizeof *X), *Y = malloc((size_t)(N_MAX * d) * sizeof *Y);
    float *R = malloc((size_t)(N_MAX * d) * sizeof *R);
    uint64_t *mask = malloc((size_t)(N_MAX * mw) * sizeof *mask);
    int32_t *list = malloc((size_t)ff * sizeof *list);
    pi_pool_t *pool = pi_pool_new(2);
    pi_ffn_work_t *w = pi_ffn_work_new(d, 2);
    if (!X || !Y || !R || !mask || !list || !pool || !w || pi_ffn_work_reserve(w, N_MAX) != 0) tap_bail("memory");
    const int li = (int)pi_rng_below(&rng, (uint64_t)nl);
    for (int64_t n = 1; n <= N_MAX; n += N_MAX - 1) {
        inputs(X, n, d, mask, mw, ff, 0.5);
        pi_sparse_ffn(pool, w, &part.layers[li], &sl[li], true, m->hp.act, X, n, mask, mw, list, Y, NULL);
        reference(&m->layers[li], d, ff, part.ids[li], part.count[li], X, n, mask, mw, R);
        double e = rel(Y, R, (size_t)(n * d));
        tap_ok(e <= TOL, "packed slice of %lld neurons, %lld token(s): vs the masked reference %.3g (<= %.0e)",
               (long long)part.count[li], (long long)n, e, TOL);
        float *scr = malloc(pi_partition_dense_scratch(&part, n) * sizeof *scr), *Z = malloc((size_t)(n * d) * sizeof *Z);
        if (!scr || !Z) tap_bail("memory");
        pi_partition_ffn_dense_masked(pool, &part, li, m->hp.act, X, n, mask, mw, scr, Z);
        double ed = rel(Z, R, (size_t)(n * d));
        tap_ok(ed <= TOL, "packed slice, %lld token(s), dense (masked): vs the masked reference %.3g", (long long)n, ed);
        free(scr), free(Z);
        /* the bits of the neurons outside the slice are someone else's: setting them changes nothing */
        uint64_t *in = calloc((size_t)mw, sizeof *in);
        for (int64_t i = 0; in && i < part.count[li]; i++) in[part.ids[li][i] / 64] |= UINT64_C(1) << (part.ids[li][i] % 64);
        for (int64_t t = 0; in && t < n; t++)
            for (int64_t k = 0; k < mw; k++) mask[t * mw + k] |= ~in[k];
        pi_sparse_ffn(pool, w, &part.layers[li], &sl[li], true, m->hp.act, X, n, mask, mw, list, R, NULL);
        tap_ok(in && memcmp(Y, R, (size_t)(n * d) * sizeof *Y) == 0, "%lld token(s): the bits outside the slice change nothing",
               (long long)n);
        free(in);
    }
    pi_partition_free(&part);
    pi_sparse_slices_free(&sl);
    for (int il = 0; il < nl; il++) free(ids[il]);
    free(ids), free(count), free(X), free(Y), free(R), free(mask), free(list);
    pi_ffn_work_destroy(&w);
    pi_pool_destroy(&pool);
}

static void test_stats(const pi_model_t *m)
{
    struct pi_sparse_stats s, t;
    if (pi_sparse_stats_init(&s, m) != 0 || pi_sparse_stats_init(&t, m) != 0) tap_bail("memory");
    const int64_t ff = m->hp.n_ff;
    uint64_t g, u, dn;
    pi_place_neuron_bytes(m, 1, &g, &u, &dn);
    pi_sparse_note(&s, 1, 3, ff);     /* 3 tokens, a third of the pairs */
    pi_sparse_note(&s, 2, 1, ff / 4); /* 1 token, a quarter */
    struct pi_sparse_summary l1, all;
    pi_sparse_summary(&s, 1, &l1);
    pi_sparse_summary(&s, -1, &all);
    tap_ok(l1.pairs == (uint64_t)(3 * ff) && fabs(l1.sparsity - 2.0 / 3) < 1e-12 && l1.bytes_skipped == (uint64_t)(2 * ff) * (g + u + dn) &&
               l1.bytes_total == (uint64_t)(3 * ff) * (g + u + dn) && l1.recall_true == 0,
           "layer summary: pairs, sparsity 2/3, bytes skipped from the neuron's gate, up and down bytes, no recall");
    tap_ok(all.pairs == (uint64_t)(4 * ff) && fabs(all.sparsity - (1.0 - (double)(ff + ff / 4) / (double)(4 * ff))) < 1e-12,
           "all layers: %.4f", all.sparsity);
    uint64_t *wire = calloc((size_t)m->hp.n_layer * PI_SPARSE_FIELDS, sizeof *wire);
    pi_sparse_stats_to_wire(&s, wire);
    tap_ok(pi_sparse_stats_add_wire(&t, wire, 3) == 0 && memcmp(t.layers, s.layers, (size_t)m->hp.n_layer * sizeof *t.layers) == 0,
           "the wire form round-trips");
    wire[1 * PI_SPARSE_FIELDS + 0] = wire[1 * PI_SPARSE_FIELDS + 1] + 1; /* more predicted than pairs */
    wire[2 * PI_SPARSE_FIELDS + 3] = 5;                                  /* recall hits without true ones */
    pi_sparse_stats_clear(&t);
    tap_ok(pi_sparse_stats_add_wire(&t, wire, 3) == 2 && t.layers[1].pairs == 0 && t.layers[2].pairs == 0,
           "inconsistent layers are refused");
    pi_sparse_stats_to_wire(&s, wire);
    tap_ok(pi_sparse_stats_add_wire(&t, wire, 2) == 1, "more pairs than the step's tokens allow: refused");
    pi_sparse_stats_clear(&t);
    pi_sparse_stats_add(&t, &s);
    pi_sparse_stats_add(&t, &s);
    pi_sparse_stats_sub(&t, &s);
    tap_ok(memcmp(t.layers, s.layers, (size_t)m->hp.n_layer * sizeof *t.layers) == 0, "add and sub");
    /* the hot neurons' pairs skipped, reported at the end of a step (ffn_hot_skipped): taken from those
     * noted as computed, never below 0 */
    pi_sparse_stats_clear(&t);
    pi_sparse_note(&t, 1, 2, ff);
    pi_sparse_note_skipped(&t, 1, ff / 4);
    const bool taken = t.layers[1].predicted == (uint64_t)(ff - ff / 4) && t.layers[1].pairs == (uint64_t)(2 * ff);
    pi_sparse_note_skipped(&t, 1, 3 * ff);
    pi_sparse_note_skipped(&t, 1, -5);
    tap_ok(taken && t.layers[1].predicted == 0 && t.layers[1].pairs == (uint64_t)(2 * ff),
           "skipped hot pairs come off the computed ones, clamped at 0; the pairs stay");
    /* recall against the true gates: all predicted gives 1, none gives 0 */
    const int64_t d = m->hp.n_embd, mw = pi_sparse_mask_words(ff), n = 4;
    float *X = malloc((size_t)(n * d) * sizeof *X), *gate = malloc((size_t)(n * ff) * sizeof *gate);
    uint64_t *mask = malloc((size_t)(n * mw) * sizeof *mask);
    inputs(X, n, d, mask, mw, ff, 1.0);
    pi_sparse_stats_clear(&t);
    pi_sparse_recall(&t, NULL, m, 0, X, n, mask, mw, gate, NULL);
    struct pi_sparse_summary r;
    pi_sparse_summary(&t, 0, &r);
    tap_ok(r.recall_true > 0 && r.recall == 1.0, "recall 1 with every neuron predicted (%llu truly active)",
           (unsigned long long)r.recall_true);
    memset(mask, 0, (size_t)(n * mw) * sizeof *mask);
    pi_sparse_stats_clear(&t);
    pi_sparse_recall(&t, NULL, m, 0, X, n, mask, mw, gate, NULL);
    pi_sparse_summary(&t, 0, &r);
    tap_ok(r.recall_true > 0 && r.recall == 0.0, "recall 0 with none predicted");
    free(X), free(gate), free(mask), free(wire);
    pi_sparse_stats_free(&s);
    pi_sparse_stats_free(&t);
}

/* dReLU's recall counts a neuron truly active when its gate and its up are both positive (what the
 * trainer counts): a mask of exactly those pairs has recall 1 (counting gate > 0 alone gave about 0.5). */
static void test_recall_drelu(const char *path)
{
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.act = PI_FFN_ACT_DRELU;
    pi_model_t *m = NULL;
    if (pi_model_open(path, &mo, &m, NULL, 0) != 0) tap_bail("cannot open %s as dReLU", path);
    const int64_t d = m->hp.n_embd, ff = m->hp.n_ff, mw = pi_sparse_mask_words(ff), n = 3;
    const struct pi_layer *L = &m->layers[1];
    float *X = malloc((size_t)(n * d) * sizeof *X), *g = malloc((size_t)(2 * n * ff) * sizeof *g), *u = g + n * ff;
    float *sg = malloc((size_t)(2 * n * ff) * sizeof *sg);
    uint64_t *mask = calloc((size_t)(n * mw), sizeof *mask);
    inputs(X, n, d, mask, mw, ff, 0.0);
    memset(mask, 0, (size_t)(n * mw) * sizeof *mask);
    pi_matmul(NULL, L->ffn_gate.type, L->ffn_gate.data, ff, d, X, n, g);
    pi_matmul(NULL, L->ffn_up.type, L->ffn_up.data, ff, d, X, n, u);
    uint64_t active = 0, gate_pos = 0;
    for (int64_t i = 0; i < n * ff; i++) {
        gate_pos += g[i] > 0.0f;
        if (g[i] > 0.0f && u[i] > 0.0f) {
            mask[(i / ff) * mw + (i % ff) / 64] |= UINT64_C(1) << ((i % ff) % 64);
            active++;
        }
    }
    struct pi_sparse_stats t;
    if (pi_sparse_stats_init(&t, m) != 0) tap_bail("stats");
    pi_sparse_recall(&t, NULL, m, 1, X, n, mask, mw, sg, sg + n * ff);
    struct pi_sparse_summary r;
    pi_sparse_summary(&t, 1, &r);
    tap_ok(r.recall_true == active && r.recall == 1.0 && active > 0 && active < gate_pos,
           "dReLU: recall 1 for a mask of exactly the gate > 0 and up > 0 pairs (%llu of %llu with gate > 0)",
           (unsigned long long)active, (unsigned long long)gate_pos);
    pi_sparse_stats_free(&t);
    free(X), free(g), free(sg), free(mask);
    pi_model_destroy(&m);
}

/* A sidecar for m (SwiGLU) with thresholds: safe neuron j of layer il at 0.001 (il + 1), aggressive
 * twice that; the calibrated safe sparsity `safe_sparsity`. */
static void write_gate_sidecar(const pi_model_t *m, const char *path, float safe_sparsity)
{
    struct pi_sidecar *s = pi_sidecar_new(m, false, false);
    const size_t ff = (size_t)m->hp.n_ff;
    PI_ASSERT(s);
    s->gate_min = malloc((size_t)m->hp.n_layer * 2 * ff * sizeof *s->gate_min);
    s->gate_sparsity = calloc((size_t)m->hp.n_layer * 2, sizeof *s->gate_sparsity);
    PI_ASSERT(s->gate_min && s->gate_sparsity);
    for (int il = 0; il < m->hp.n_layer; il++)
        for (size_t j = 0; j < ff; j++) {
            s->gate_min[(size_t)il * 2 * ff + j] = 0.001f * (float)(il + 1);
            s->gate_min[(size_t)il * 2 * ff + ff + j] = 0.002f * (float)(il + 1);
        }
    s->thr_kld_target[0] = 0.01f, s->thr_kld_target[1] = 0.03f;
    s->thr_kld[0] = 0.005f, s->thr_kld[1] = 0.02f;
    s->thr_sparsity[0] = safe_sparsity, s->thr_sparsity[1] = 0.6f;
    PI_ASSERT(pi_sidecar_save(path, m, s) == 0);
    pi_sidecar_destroy(&s);
}

static void test_open_gate(const pi_model_t *silu)
{
    struct pi_predictors p;
    enum pi_sparsity mode;
    float *gm = NULL;
    char line[320], path[] = "/tmp/pi-test-sparse-XXXXXX";
    int fd = mkstemp(path);
    PI_ASSERT(fd >= 0);
    close(fd);
    write_gate_sidecar(silu, path, 0.5f);
    int rc = pi_sparse_open(silu, path, PI_SPARSITY_CFG_AUTO, &p, &gm, &mode, line, sizeof line);
    tap_ok(rc == 0 && mode == PI_SPARSITY_SAFE && gm && gm[0] == 0.001f && !p.layers && strstr(line, "activation thresholds"),
           "SwiGLU auto with thresholds skipping 50%%: safe (%s)", line);
    free(gm);
    rc = pi_sparse_open(silu, path, PI_SPARSITY_CFG_AGGRESSIVE, &p, &gm, &mode, line, sizeof line);
    const size_t last = (size_t)silu->hp.n_layer * (size_t)silu->hp.n_ff - 1;
    tap_ok(rc == 0 && mode == PI_SPARSITY_AGGRESSIVE && gm && gm[0] == 0.002f && gm[last] == 0.002f * (float)silu->hp.n_layer,
           "SwiGLU aggressive: the aggressive column of every layer (%s)", line);
    free(gm);
    write_gate_sidecar(silu, path, 0.1f);
    rc = pi_sparse_open(silu, path, PI_SPARSITY_CFG_AUTO, &p, &gm, &mode, line, sizeof line);
    tap_ok(rc == 0 && mode == PI_SPARSITY_OFF && !gm && strstr(line, "10.0%"), "SwiGLU auto, thresholds skipping 10%%: off (%s)",
           line);
    rc = pi_sparse_open(silu, path, PI_SPARSITY_CFG_SAFE, &p, &gm, &mode, line, sizeof line);
    tap_ok(rc == 0 && mode == PI_SPARSITY_SAFE && gm, "SwiGLU safe asked: used even at 10%% (%s)", line);
    free(gm);
    fd = open(path, O_WRONLY | O_TRUNC);
    if (fd >= 0) close(fd);
    rc = pi_sparse_open(silu, path, PI_SPARSITY_CFG_SAFE, &p, &gm, &mode, line, sizeof line);
    tap_ok(rc == -PI_ERR_UNSUPPORTED && !gm && mode == PI_SPARSITY_OFF, "SwiGLU safe, an empty sidecar file: refused (%s)", line);
    unlink(path);
}

static void test_open(const pi_model_t *relu, const pi_model_t *silu)
{
    struct pi_predictors p;
    enum pi_sparsity mode;
    float *gm = NULL;
    char line[320];
    int rc = pi_sparse_open(relu, NULL, PI_SPARSITY_CFG_AUTO, &p, &gm, &mode, line, sizeof line);
    tap_ok(rc == 0 && mode == PI_SPARSITY_OFF && strstr(line, "has no predictors"), "auto without predictors: off (%s)", line);
    rc = pi_sparse_open(relu, NULL, PI_SPARSITY_CFG_SAFE, &p, &gm, &mode, line, sizeof line);
    tap_ok(rc == -PI_ERR_NOTFOUND && strstr(line, "has no predictors"), "safe without predictors: refused (%s)", line);
    rc = pi_sparse_open(silu, NULL, PI_SPARSITY_CFG_AGGRESSIVE, &p, &gm, &mode, line, sizeof line);
    tap_ok(rc == -PI_ERR_NOTFOUND && !gm && strstr(line, "pi-profile"), "aggressive on a SwiGLU model without thresholds: refused (%s)",
           line);
    rc = pi_sparse_open(silu, NULL, PI_SPARSITY_CFG_AUTO, &p, &gm, &mode, line, sizeof line);
    tap_ok(rc == 0 && mode == PI_SPARSITY_OFF && !gm && strstr(line, "SwiGLU"), "auto on a SwiGLU model without thresholds: off (%s)",
           line);
    rc = pi_sparse_open(relu, NULL, PI_SPARSITY_CFG_OFF, &p, &gm, &mode, line, sizeof line);
    tap_ok(rc == 0 && mode == PI_SPARSITY_OFF && p.layers == NULL, "off opens nothing (%s)", line);
    /* with predictors: the model's own layers lent fc1/fc2 of a generated rank */
    pi_model_t fake = *relu;
    struct pi_layer *L = calloc((size_t)relu->hp.n_layer, sizeof *L);
    float *w1 = calloc((size_t)(8 * relu->hp.n_embd), sizeof *w1), *w2 = calloc((size_t)(8 * relu->hp.n_ff), sizeof *w2);
    for (int il = 0; L && w1 && w2 && il < relu->hp.n_layer; il++) {
        L[il] = relu->layers[il];
        L[il].fc1 = (struct pi_weight){.type = PI_TYPE_F32, .data = w1, .rows = 8, .cols = relu->hp.n_embd,
                                       .row_bytes = (size_t)relu->hp.n_embd * 4};
        L[il].fc2 = (struct pi_weight){.type = PI_TYPE_F32, .data = w2, .rows = relu->hp.n_ff, .cols = 8, .row_bytes = 32};
    }
    fake.layers = L;
    rc = L && w1 && w2 ? pi_sparse_open(&fake, NULL, PI_SPARSITY_CFG_AUTO, &p, &gm, &mode, line, sizeof line) : -1;
    tap_ok(rc == 0 && mode == PI_SPARSITY_SAFE && p.n_layer == relu->hp.n_layer && strstr(line, "from the model, rank 8"),
           "auto with predictors: safe (%s)", line);
    pi_predictors_free(&p);
    rc = L && w1 && w2 ? pi_sparse_open(&fake, NULL, PI_SPARSITY_CFG_AGGRESSIVE, &p, &gm, &mode, line, sizeof line) : -1;
    tap_ok(rc == 0 && mode == PI_SPARSITY_AGGRESSIVE, "aggressive with predictors (%s)", line);
    pi_predictors_free(&p);
    free(L), free(w1), free(w2);
}

static void test_conf(void)
{
    struct pi_sparsity_conf c = {0};
    char err[256];
    tap_ok(pi_sparsity_conf_set(&c, "sparsity.mode=aggressive", "--set", err, sizeof err) == 0 && c.mode == PI_SPARSITY_CFG_AGGRESSIVE &&
               pi_sparsity_conf_set(&c, "sparsity.recall_every=7", "--set", err, sizeof err) == 0 && c.recall_every == 7,
           "sparsity.mode and sparsity.recall_every set");
    tap_ok(pi_sparsity_conf_set(&c, "tune.cuda_matvec=f32", "--set", err, sizeof err) == -PI_ERR_INVAL &&
               pi_sparsity_conf_set(&c, "sparsity.mode=sometimes", "--set", err, sizeof err) == -PI_ERR_INVAL &&
               pi_sparsity_conf_set(&c, "sparsity.recall_every=-2", "--set", err, sizeof err) == -PI_ERR_RANGE &&
               c.mode == PI_SPARSITY_CFG_AGGRESSIVE && c.recall_every == 7,
           "other sections and bad values refused, the old values kept (%s)", err);
}

int main(void)
{
    uint64_t seed = pi_rng_entropy_seed();
    pi_rng_seed(&rng, seed);
    tap_diag("seed %llu", (unsigned long long)seed);
    char relu_path[512], silu_path[512];
    tap_data(relu_path, sizeof relu_path, "demo-relu-q4_0.gguf");
    tap_data(silu_path, sizeof silu_path, "tiny-llama-q4_0.gguf");
    pi_model_t *relu = NULL, *silu = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    if (pi_model_open(relu_path, &mo, &relu, NULL, 0) != 0 || pi_model_open(silu_path, &mo, &silu, NULL, 0) != 0)
        tap_bail("cannot open the models");
    test_slices();
    test_tail_bits();
    test_ffn(relu);
    test_slice(relu);
    test_stats(relu);
    test_open(relu, silu);
    test_open_gate(silu);
    test_recall_drelu(relu_path);
    test_conf();
    pi_model_destroy(&relu);
    pi_model_destroy(&silu);
    return tap_done();
}
