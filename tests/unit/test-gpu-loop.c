/*
 * tests/unit/test-gpu-loop.c - pi-gpu-worker's layer loop (gpu-worker/loop.c) with predictors, in one
 * process: the loop drives the host backend over the demo ReLU model, and a thread stands in for the
 * CPU worker on a real exchange segment (its cold neurons, the mask it is published). Two runs that
 * must compute the same neurons:
 *   A: the host backend's own ffn_predict with predictors that always select the hot neurons (ids below
 *      n_ff / 2) and a fixed random 30% of the cold ones;
 *   B: the same backend with its ffn_predict taken away (a backend without a device predictor, as the
 *      cuda backend is until it has one) and predictors that select the same cold neurons but not the
 *      hot ones: the loop's host fallback evaluates them, sets every hot neuron's bit, and the backend
 *      computes all its hot neurons.
 * Both publish MASK | GATE_SKIP with the hot bits set in every mask row, count the same (token, neuron)
 * pairs exactly (the exchange's stats section), measure the recall on the step, and give logits within
 * the two-path bound (the backend's masked path against its plain one). The fixed predictors make the
 * masks independent of x's rounding (compute/predictor.h: h = relu(fc1 x) >= 0, fc2 rows of one sign).
 *
 * Then a SwiGLU model's activation thresholds (check_gated, doc/thresholds.md): the tiny llama with every
 * neuron hot (no publish: the host backend's all-hot layers are the forward pass's FFN step), a first
 * step that fails at its last layer's merge after every layer's hot neurons skipped pairs, then the same
 * prompt again: the exchange's stats of the second step are the single process's counts with the same
 * thresholds, pair for pair in every layer (the backend's ffn_hot_skipped taken off the pairs the loop
 * noted as computed, and nothing of the failed step left over).
 */
#include "config.h"
#include "compute/backend.h"
#include "compute/forward.h"
#include "compute/sparse.h"
#include "gpu-worker/loop.h"
#include "ipc/exchange.h"
#include "kernels/cpu/ops.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "tests/test-pipeline-util.h"

#include <pthread.h>
#include <stdatomic.h>

#define RANK 32
#define MAX_TOK 64

static pi_model_t *model;
static int64_t half;

/* The stand-in CPU worker: the cold neurons [half, n_ff) of the model's own rows. */
struct cw {
    pi_exchange_t *ex;
    atomic_bool stop, joined;
    atomic_int masked_steps, hot_bits_missing, bad_flags;
    pi_ffn_work_t *w;
    int32_t *ids, *list; /* (n_ff - half) cold ids; list scratch */
    struct pi_sparse_slice *slice; /* (n_layer) the cold ids' slices, the same for every layer */
};

static void *cpu_worker(void *arg)
{
    struct cw *c = arg;
    uint32_t seen;
    const int64_t ff = model->hp.n_ff, d = model->hp.n_embd, mw = pi_sparse_mask_words(ff);
    if (pi_exchange_join(c->ex, 0, &seen) != 0) return NULL;
    atomic_store(&c->joined, true);
    float *out = pi_exchange_partial(c->ex, 0);
    while (!atomic_load(&c->stop)) {
        struct pi_exchange_step st;
        int rc = pi_exchange_wait_publish(c->ex, seen, 2000, INT64_C(50000000), &st);
        if (rc == -PI_ERR_TIMEOUT) continue;
        if (rc != 0) return NULL;
        seen = st.seq;
        const struct pi_layer *L = &model->layers[st.layer];
        if (st.flags != (PI_EXCHANGE_MASK | PI_EXCHANGE_GATE_SKIP) && st.flags != (PI_EXCHANGE_MASK | PI_EXCHANGE_GATE_SKIP | PI_EXCHANGE_FRESH))
            atomic_fetch_add(&c->bad_flags, 1);
        if (st.mask) {
            atomic_fetch_add(&c->masked_steps, 1);
            for (uint32_t t = 0; t < st.n_tokens; t++)
                for (int64_t j = 0; j < half; j++)
                    if (!pi_sparse_bit(st.mask + t * mw, j)) atomic_fetch_add(&c->hot_bits_missing, 1);
            pi_sparse_ffn(NULL, c->w, L, &c->slice[st.layer], false, model->hp.act, st.x, st.n_tokens, st.mask, mw, c->list, out, NULL);
        } else {
            memset(out, 0, (size_t)st.n_tokens * (size_t)d * sizeof *out);
        }
        pi_exchange_post_partial(c->ex, 0, st.seq);
    }
    return NULL;
}

/* In-memory predictors: fc2 row j positive (selected for every x) for the hot neurons when with_hot, and
 * for a fixed random 30% of the cold ones (the same for both seeds' users), negative otherwise. */
static void make_predictors(struct pi_predictors *p, struct pi_predictor_layer *L, float *fc1, float *fc2, bool with_hot)
{
    const int64_t d = model->hp.n_embd, ff = model->hp.n_ff;
    struct pi_rng r;
    pi_rng_seed(&r, 12345);
    for (int64_t i = 0; i < RANK * d; i++) fc1[i] = (float)((pi_rng_uniform(&r) - 0.5) * 0.2);
    for (int64_t j = 0; j < ff; j++) {
        const bool on = j < half ? with_hot : pi_rng_uniform(&r) < 0.3;
        for (int k = 0; k < RANK; k++) fc2[j * RANK + k] = (on ? 1.0f : -1.0f) * (0.5f + (float)pi_rng_uniform(&r));
    }
    memset(p, 0, sizeof *p);
    for (int il = 0; il < model->hp.n_layer; il++) {
        L[il] = (struct pi_predictor_layer){.rank = RANK,
                                            .fc1 = {.type = PI_TYPE_F32, .data = fc1, .rows = RANK, .cols = d, .row_bytes = (size_t)d * 4},
                                            .fc2 = {.type = PI_TYPE_F32, .data = fc2, .rows = ff, .cols = RANK, .row_bytes = RANK * 4}};
    }
    p->n_layer = model->hp.n_layer, p->n_embd = d, p->n_ff = ff, p->rank_max = RANK, p->layers = L;
}

/* One run: logits (n, n_vocab) and the exchange's last stats (n_layer x 4) of the prompt. */
static int run(const struct pi_predictors *pred, bool fallback, const int32_t *tok, int n, float *logits, uint64_t *stats,
               struct cw *c)
{
    const int nl = model->hp.n_layer;
    const int64_t ff = model->hp.n_ff;
    const int32_t **hot = calloc((size_t)nl, sizeof *hot);
    int64_t *n_hot = calloc((size_t)nl, sizeof *n_hot);
    int32_t *ids = malloc((size_t)ff * sizeof *ids);
    for (int64_t j = 0; j < ff; j++) ids[j] = (int32_t)j;
    for (int il = 0; il < nl; il++) hot[il] = ids, n_hot[il] = half;
    struct pi_backend_opts bo = {.n_threads = 1, .n_ctx = MAX_TOK, .n_seq = 1, .max_tokens = MAX_TOK, .hot = hot, .n_hot = n_hot,
                                 .pred = pred, .sparsity = PI_SPARSITY_SAFE};
    struct pi_exchange_params xp = {.n_embd = (uint32_t)model->hp.n_embd, .max_tokens = MAX_TOK, .n_ff = (uint32_t)ff,
                                    .n_layers = (uint32_t)nl, .n_workers = 1};
    pi_backend_t *be = NULL;
    c->ex = pi_exchange_new(&xp);
    int rc = c->ex ? pi_backend_new("host", model, &bo, &be) : -1;
    struct pi_backend_ops ops;
    if (rc == 0 && fallback) { /* the backend as one without a device predictor */
        ops = *be->ops;
        ops.ffn_predict = NULL;
        be->ops = &ops;
    }
    pthread_t th;
    atomic_store(&c->stop, false);
    atomic_store(&c->joined, false);
    if (rc == 0 && pthread_create(&th, NULL, cpu_worker, c) != 0) rc = -1;
    /* the worker joins before the first publish, as READY orders it in the pipeline (a fixed sleep
     * here lost a layer under load) */
    while (rc == 0 && !atomic_load(&c->joined)) usleep(1000);
    struct pi_gpu_loop g = {.be = be, .ex = c->ex, .n_seq = 1, .ex_flags = PI_EXCHANGE_ALL | PI_EXCHANGE_GATE_SKIP,
                            .hot = hot, .n_hot = n_hot};
    if (rc == 0) rc = pi_gpu_loop_sparse_init(&g, pred, PI_SPARSITY_SAFE, 1, 1);
    int32_t seq[MAX_TOK], pos[MAX_TOK], rows[MAX_TOK]; /* one sequence from position 0, every row's logits */
    for (int i = 0; i < n && i < MAX_TOK; i++) seq[i] = 0, pos[i] = rows[i] = i;
    if (rc == 0) rc = pi_gpu_loop_eval(&g, tok, seq, pos, n, rows, n, logits);
    if (rc == 0) memcpy(stats, pi_exchange_stats(c->ex), (size_t)nl * PI_EXCHANGE_STATS_FIELDS * sizeof *stats);
    atomic_store(&c->stop, true);
    pthread_join(th, NULL);
    pi_gpu_loop_free(&g);
    pi_gpu_loop_sparse_free(&g);
    pi_backend_destroy(&be);
    pi_exchange_destroy(&c->ex);
    free(hot), free(n_hot), free(ids);
    return rc;
}

/* ---- activation thresholds */

/* The host backend's ops with ffn_merge failing once at layer fail_il (a step that fails after its hot
 * neurons ran), for check_gated. */
static const struct pi_backend_ops *real_ops;
static int fail_il = -1;

static int failing_merge(pi_backend_t *b, int il, const float *cold)
{
    if (il == fail_il) {
        fail_il = -1;
        return -PI_ERR_IO;
    }
    return real_ops->ffn_merge(b, il, cold);
}

static void check_gated(void)
{
    char path[512];
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    pi_model_t *m = NULL;
    if (pi_model_open(tap_data(path, sizeof path, "tiny-llama-q4_0.gguf"), &mo, &m, NULL, 0) != 0)
        tap_bail("tiny llama");
    const int nl = m->hp.n_layer, n = 16;
    const int64_t ff = m->hp.n_ff;
    int32_t tok[16], seq[16], pos[16];
    for (int i = 0; i < n; i++) tok[i] = 1 + (i * 977) % 31000, seq[i] = 0, pos[i] = i;
    /* thresholds spread over [0, 0.5): about 40% of this model's pairs skipped, every 17th neuron at 0 */
    float *gm = malloc((size_t)nl * (size_t)ff * sizeof *gm);
    float **gh = calloc((size_t)nl, sizeof *gh);
    const int32_t **hot = calloc((size_t)nl, sizeof *hot);
    int64_t *n_hot = calloc((size_t)nl, sizeof *n_hot);
    int32_t *ids = malloc((size_t)ff * sizeof *ids);
    if (!gm || !gh || !hot || !n_hot || !ids) tap_bail("memory");
    struct pi_rng r;
    pi_rng_seed(&r, 777);
    for (int64_t j = 0; j < (int64_t)nl * ff; j++) gm[j] = j % 17 == 0 ? 0.0f : (float)(0.5 * pi_rng_uniform(&r));
    for (int64_t j = 0; j < ff; j++) ids[j] = (int32_t)j;
    for (int il = 0; il < nl; il++) hot[il] = ids, n_hot[il] = ff, gh[il] = gm + (size_t)il * (size_t)ff;
    /* the single process with the same thresholds */
    struct pi_forward_opts fo;
    pi_forward_opts_default(&fo);
    fo.n_threads = 1, fo.n_ctx = MAX_TOK, fo.n_seq = 1, fo.n_batch = MAX_TOK;
    pi_forward_t *f = pi_forward_new(m, &fo);
    struct pi_sparse_stats ref;
    if (!f || pi_sparse_stats_init(&ref, m) != 0 || pi_forward_set_gate_min(f, gm, &ref) != 0 ||
        pi_forward_batch(f, tok, seq, pos, n, NULL, false) != 0)
        tap_bail("the single process with thresholds");
    pi_forward_destroy(&f);
    /* the loop over the host backend, every neuron hot */
    struct pi_backend_opts bo = {.n_threads = 1, .n_ctx = MAX_TOK, .n_seq = 1, .max_tokens = MAX_TOK, .hot = hot,
                                 .n_hot = n_hot, .thresholds = true, .gate_min = (const float *const *)gh};
    struct pi_exchange_params xp = {.n_embd = (uint32_t)m->hp.n_embd, .max_tokens = MAX_TOK, .n_ff = (uint32_t)ff,
                                    .n_layers = (uint32_t)nl, .n_workers = 1};
    pi_exchange_t *ex = pi_exchange_new(&xp);
    pi_backend_t *be = NULL;
    int rc = ex ? pi_backend_new("host", m, &bo, &be) : -1;
    struct pi_backend_ops ops;
    if (rc == 0) {
        real_ops = be->ops;
        ops = *be->ops;
        ops.ffn_merge = failing_merge;
        be->ops = &ops;
    }
    struct pi_gpu_loop g = {.be = be, .ex = ex, .n_seq = 1, .ex_flags = PI_EXCHANGE_ALL, .hot = hot, .n_hot = n_hot};
    if (rc == 0) rc = pi_gpu_loop_gated_init(&g);
    int rc_fail = -1, rows[1] = {n - 1};
    float *logits = malloc((size_t)m->hp.n_vocab * sizeof *logits);
    if (rc == 0 && logits) {
        fail_il = nl - 1;
        rc_fail = pi_gpu_loop_eval(&g, tok, seq, pos, n, rows, 1, logits);
        rc = pi_gpu_loop_eval(&g, tok, seq, pos, n, rows, 1, logits);
    }
    bool same = rc == 0;
    uint64_t skipped = 0, pairs = 0;
    const uint64_t *w = ex ? pi_exchange_stats(ex) : NULL;
    for (int il = 0; same && il < nl; il++) {
        const uint64_t *wl = w + (size_t)il * PI_SPARSE_FIELDS;
        same &= wl[0] == ref.layers[il].predicted && wl[1] == ref.layers[il].pairs;
        skipped += ref.layers[il].pairs - ref.layers[il].predicted, pairs += ref.layers[il].pairs;
    }
    tap_ok(rc_fail == -PI_ERR_IO && same && skipped > 0 && skipped < pairs,
           "thresholds, every neuron hot: after a step that failed at its last layer (%d), the next step's counts are "
           "the single process's in every layer (%.1f%% of the pairs skipped; rc %d)",
           rc_fail, pairs ? 100.0 * (double)skipped / (double)pairs : 0.0, rc);
    pi_gpu_loop_free(&g);
    pi_gpu_loop_sparse_free(&g);
    pi_backend_destroy(&be);
    pi_exchange_destroy(&ex);
    pi_sparse_stats_free(&ref);
    free(gm), free(gh), free(hot), free(n_hot), free(ids), free(logits);
    pi_model_destroy(&m);
}

int main(void)
{
    char path[512], gpath[512];
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    if (pi_model_open(tap_data(path, sizeof path, "demo-relu-q4_0.gguf"), &mo, &model, NULL, 0) != 0) tap_bail("model");
    struct tp_golden gd;
    if (tp_golden_open(tap_data(gpath, sizeof gpath, "demo-relu-q4_0.golden.gguf"), &gd) != 0) tap_bail("golden");
    const int nl = model->hp.n_layer, n = gd.n;
    const int64_t d = model->hp.n_embd, ff = model->hp.n_ff;
    half = ff / 2;
    struct pi_predictors pa, pb;
    struct pi_predictor_layer *la = calloc((size_t)nl, sizeof *la), *lb = calloc((size_t)nl, sizeof *lb);
    float *fa1 = malloc((size_t)(RANK * d) * 4), *fa2 = malloc((size_t)(ff * RANK) * 4), *fb1 = malloc((size_t)(RANK * d) * 4),
          *fb2 = malloc((size_t)(ff * RANK) * 4);
    float *lga = malloc((size_t)n * gd.n_vocab * 4), *lgb = malloc((size_t)n * gd.n_vocab * 4);
    uint64_t *sa = calloc((size_t)nl * 4, 8), *sb = calloc((size_t)nl * 4, 8);
    struct cw c = {.w = pi_ffn_work_new(d, 1), .ids = malloc((size_t)(ff - half) * 4), .list = malloc((size_t)ff * 4)};
    if (!la || !lb || !fa1 || !fa2 || !fb1 || !fb2 || !lga || !lgb || !sa || !sb || !c.w || !c.ids || !c.list) tap_bail("memory");
    for (int64_t j = half; j < ff; j++) c.ids[j - half] = (int32_t)j;
    {
        const int32_t **lid = malloc((size_t)nl * sizeof *lid);
        int64_t *lc = malloc((size_t)nl * sizeof *lc);
        for (int il = 0; lid && lc && il < nl; il++) lid[il] = c.ids, lc[il] = ff - half;
        if (!lid || !lc || pi_sparse_slices_new(nl, ff, lid, lc, &c.slice) != 0) tap_bail("slices");
        free(lid), free(lc);
    }
    make_predictors(&pa, la, fa1, fa2, true);
    make_predictors(&pb, lb, fb1, fb2, false);
    int ra = run(&pa, false, gd.tokens, n, lga, sa, &c);
    tap_ok(ra == 0 && atomic_load(&c.masked_steps) == nl && atomic_load(&c.hot_bits_missing) == 0 && atomic_load(&c.bad_flags) == 0,
           "A (the backend's ffn_predict): %d layers published with MASK | GATE_SKIP, hot bits set (rc %d)",
           atomic_load(&c.masked_steps), ra);
    atomic_store(&c.masked_steps, 0);
    pb.on_residual = true; /* a model file's predictors: the fallback has no residual stream to give them */
    tap_is_int(run(&pb, true, gd.tokens, n, lgb, sb, &c), -PI_ERR_UNSUPPORTED,
               "B with predictors that read the residual stream: the host fallback refuses them");
    pb.on_residual = false;
    atomic_store(&c.masked_steps, 0);
    int rb = run(&pb, true, gd.tokens, n, lgb, sb, &c);
    tap_ok(rb == 0 && atomic_load(&c.masked_steps) == nl && atomic_load(&c.hot_bits_missing) == 0 && atomic_load(&c.bad_flags) == 0,
           "B (no ffn_predict: the loop's host fallback): %d layers published with MASK | GATE_SKIP, every hot bit set (rc %d)",
           atomic_load(&c.masked_steps), rb);
    bool same = true, recall = true;
    for (int il = 0; il < nl; il++) {
        const uint64_t *a = sa + il * 4, *b = sb + il * 4;
        same &= a[0] == b[0] && a[1] == b[1] && a[1] == (uint64_t)n * (uint64_t)ff && a[0] > (uint64_t)n * (uint64_t)half;
        recall &= a[2] > 0 && b[2] > 0 && a[3] <= a[2] && b[3] <= b[2];
    }
    tap_ok(ra == 0 && rb == 0 && same, "the same (token, neuron) pairs counted computed (layer 0: %llu of %llu)",
           (unsigned long long)sa[0], (unsigned long long)sa[1]);
    tap_ok(ra == 0 && rb == 0 && recall, "the recall measured on the step in both (layer 0: %llu of %llu, %llu of %llu truly active)",
           (unsigned long long)sa[3], (unsigned long long)sa[2], (unsigned long long)sb[3], (unsigned long long)sb[2]);
    double e = tp_rel_err(lgb, lga, n, gd.n_vocab);
    tap_ok(ra == 0 && rb == 0 && e <= 8e-2, "A and B's logits within the two-path bound: %.3g (<= 8e-02)", e);
    free(la), free(lb), free(fa1), free(fa2), free(fb1), free(fb2), free(lga), free(lgb), free(sa), free(sb), free(c.ids), free(c.list);
    pi_sparse_slices_free(&c.slice);
    pi_ffn_work_destroy(&c.w);
    pi_gguf_destroy(&gd.g);
    pi_model_destroy(&model);
    check_gated();
    return tap_done();
}
