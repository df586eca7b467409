/*
 * gpu-worker/loop.c - the layer loop of pi-gpu-worker (gpu-worker/loop.h).
 *
 * DESIGN: per layer, one round trip through the exchange (ipc/exchange.h):
 *   attn(il) -> x = ffn_norm(h) written straight into the exchange's x -> publish ->
 *   hot neurons (here, while the CPU workers compute theirs) -> wait for every partial ->
 *   merge the partials in worker order -> h += hot + cold.
 * The exchange is single-buffered, which is safe because the next publish comes only after the wait
 * for every partial of this one. A layer whose neurons are all hot (hot fraction 1) has nothing for
 * the CPU workers: it is not published at all, and the backend merges no partial. A failed wait (a
 * worker died: the coordinator aborted the exchange, or the timeout ran out) fails the batch without
 * committing it to the cache; the coordinator then restarts the pipeline.
 *
 * With predictors (doc/predictors.md, "Runtime") a layer's mask is made between x and the publish and
 * goes out with x (flags MASK | GATE_SKIP instead of ALL): still one round trip per layer. Each step's
 * counts (compute/sparse.h) go into the exchange's stats section before the step is answered.
 *
 * A step is a batch of several sequences (ipc/step.h, version 2): the exchange carries its n rows
 * whatever sequence each belongs to, the backend keeps each row at its own sequence and position, and
 * no FFN path depends on the batch (compute/ffn-policy.h), so a row's logits are those it gets alone.
 *
 * Prompt streaming (compute/stream-policy.h, doc/pipeline.md "Prompt streaming"): a step the policy
 * streams publishes nothing. Each layer with cold neurons goes through the backend's ffn_stream (its
 * whole FFN from the model's weights, copied to the device), the next such layer named so that its copy
 * overlaps this one's products; the CPU workers, which serve whatever is published (cpu-worker/main.c),
 * wait for the next step's first publish. Layers whose neurons are all hot stay local as always. The
 * round trips of the steps that are not streamed feed the policy's measurement of the CPU workers, and
 * each streamed step's time its correction of the stream side. Whether streaming is set up at all is
 * pi_stream_policy_mode's rule: never with predictors or activation thresholds.
 */
#include "config.h"
#include "gpu-worker/loop.h"
#include "kernels/cpu/pool.h"
#include "lib/common.h"
#include "lib/log.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define LOOP_SPIN 20000u
#define LOOP_IDLE_NS (INT64_C(100) * 1000 * 1000)

/* Whether no CPU worker owns a neuron of layer il: every neuron is hot (the backend says so; a
 * backend that cannot say is assumed to leave some cold). */
static bool layer_all_hot(const struct pi_gpu_loop *g, int il)
{
    const pi_backend_t *be = g->be;
    return be->ops->ffn_hot_count && be->ops->ffn_hot_count(be, il) >= (int64_t)be->model->hp.n_ff;
}

static bool sparse_on(const struct pi_gpu_loop *g) { return g->pred && g->sparsity != PI_SPARSITY_OFF; }
static bool counting(const struct pi_gpu_loop *g) { return sparse_on(g) || g->gated; }

/* With activation thresholds: layer il's counts, the CPU workers' (read from the exchange after their
 * partials, untrusted: a sum that breaks kept <= pairs <= n * n_ff counts as dense) plus the hot
 * neurons, counted as computed here; the pairs the backend skipped among them are taken off at the end
 * of the step (count_hot_skipped). */
static void count_gated(struct pi_gpu_loop *g, int il, int n, bool from_workers)
{
    const int64_t ff = g->be->model->hp.n_ff, total = (int64_t)n * ff;
    uint64_t kept = 0, pairs = 0;
    if (from_workers) pi_exchange_counts(g->ex, &kept, &pairs);
    if (kept > pairs || pairs > (uint64_t)total) kept = pairs = 0;
    pi_sparse_note(&g->stats, il, n, total - (int64_t)(pairs - kept));
}

/* With activation thresholds: the hot pairs the backend skipped over the step (ffn_hot_skipped, one call
 * per step: the cuda backend's counters come down in one wait), taken off each layer's computed pairs.
 * Called on a failed step too, so that its counts do not leak into the next one's. */
static int count_hot_skipped(struct pi_gpu_loop *g, bool apply)
{
    pi_backend_t *be = g->be;
    if (!g->gated || !be->ops->ffn_hot_skipped) return 0;
    int rc = be->ops->ffn_hot_skipped(be, g->hot_skipped);
    for (int il = 0; rc == 0 && apply && il < be->model->hp.n_layer; il++)
        pi_sparse_note_skipped(&g->stats, il, g->hot_skipped[il]);
    return rc;
}

/* The host fallback for a backend without ffn_predict: mask (n rows) = the prediction over x (predictors
 * that read x: pi_gpu_loop_sparse_init refuses the others), then every hot neuron's bit set, since the
 * backend computes them all. Returns the pairs computed. */
static int64_t fallback_predict(struct pi_gpu_loop *g, int il, int n, const float *x, uint64_t *mask)
{
    pi_predictor_eval(g->pool, g->pred, il, g->sparsity, x, n, g->pred_scr, mask, g->mask_words);
    const int32_t *hot = g->hot[il];
    int64_t computed = 0;
    for (int t = 0; t < n; t++) {
        uint64_t *row = mask + (size_t)t * (size_t)g->mask_words;
        for (int64_t i = 0; i < g->n_hot[il]; i++) row[hot[i] / 64] |= UINT64_C(1) << (hot[i] % 64);
        for (int64_t w = 0; w < g->mask_words; w++) computed += __builtin_popcountll(row[w]);
    }
    return computed;
}

/* Layer il's prediction, between ffn_input and ffn_hot. x (n, d): the layer's FFN input where the loop
 * has it, else NULL; mask: where the prediction goes (the exchange's, or mask_own on a recall step),
 * or NULL. Counts the layer into g->stats; on a recall step with x and mask, the recall too. */
static int predict_layer(struct pi_gpu_loop *g, int il, int n, const float *x, uint64_t *mask)
{
    pi_backend_t *be = g->be;
    int64_t computed;
    if (be->ops->ffn_predict) {
        int rc = be->ops->ffn_predict(be, il, mask, g->mask_words, &computed);
        if (rc != 0) return rc;
    } else if (x && mask) {
        computed = fallback_predict(g, il, n, x, mask);
    } else {
        computed = (int64_t)n * be->model->hp.n_ff; /* the backend computes the layer densely */
    }
    pi_sparse_note(&g->stats, il, n, computed);
    if (g->recall_now && x && mask) pi_sparse_recall(&g->stats, g->pool, be->model, il, x, n, mask, g->mask_words, g->gate,
                         g->gate + (size_t)g->cap * (size_t)be->model->hp.n_ff);
    return 0;
}

/* A layer whose neurons are all hot: no CPU worker has anything to add, so no x, no publish, no wait.
 * The workers wait for the next publish, whichever layer it names (doc/pipeline.md, "Layers without
 * cold neurons"). On a recall step a backend with ffn_predict writes x and the mask where the loop can
 * read them (compute/backend.h; the cuda backend downloads x for it only then), and the loop measures
 * the layer's recall on them. */
static int ffn_layer_local(struct pi_gpu_loop *g, int il, int n)
{
    pi_backend_t *be = g->be;
    const bool rec = sparse_on(g) && g->recall_now && be->ops->ffn_predict;
    int rc = be->ops->ffn_input(be, il, rec ? g->x_own : NULL);
    if (rc == 0 && sparse_on(g)) rc = predict_layer(g, il, n, rec ? g->x_own : NULL, rec ? g->mask_own : NULL);
    if (rc == 0) rc = be->ops->ffn_hot(be, il);
    if (rc == 0) rc = be->ops->ffn_merge(be, il, NULL);
    if (g->gated) count_gated(g, il, n, false);
    g->n_skip++;
    return rc;
}

/* One layer's FFN through the exchange. cold (n, d) is scratch. */
static int ffn_layer(struct pi_gpu_loop *g, int il, int n, float *cold)
{
    pi_backend_t *be = g->be;
    if (layer_all_hot(g, il)) return ffn_layer_local(g, il, n);
    float *x = pi_exchange_x(g->ex);
    int rc = be->ops->ffn_input(be, il, x);
    if (rc != 0) return rc;
    uint32_t flags = g->ex_flags | (g->fresh ? PI_EXCHANGE_FRESH : 0u);
    if (sparse_on(g)) {
        if ((rc = predict_layer(g, il, n, x, pi_exchange_mask(g->ex))) != 0) return rc;
        flags = (flags & ~(uint32_t)PI_EXCHANGE_ALL) | PI_EXCHANGE_MASK;
    }
    uint32_t seq;
    int64_t t0 = pi_clock_ns();
    rc = pi_exchange_publish(g->ex, (uint32_t)il, (uint32_t)n, flags, &seq);
    if (rc != 0) return rc;
    int64_t t1 = pi_clock_ns();
    rc = be->ops->ffn_hot(be, il);
    if (rc != 0) return rc;
    int64_t t2 = pi_clock_ns();
    rc = pi_exchange_wait_partials(g->ex, seq, LOOP_SPIN, PI_GPU_PARTIAL_TIMEOUT_NS);
    if (rc != 0) {
        pi_error("layer %d: CPU partials did not arrive: %s", il, pi_err_str(rc));
        return rc;
    }
    memset(cold, 0, (size_t)n * (size_t)be->model->hp.n_embd * sizeof(float));
    pi_exchange_merge(g->ex, (uint32_t)n, cold);
    if (g->gated) count_gated(g, il, n, true);
    const int64_t t3 = pi_clock_ns();
    g->rt_ns += t3 - t0 - (t2 - t1);
    g->n_rt++;
    if (g->stream.cold && g->prompt_now) pi_stream_policy_note(&g->stream, n, t3 - t0);
    return be->ops->ffn_merge(be, il, cold);
}

/* The next layer after il with cold neurons (the next one a streamed step streams), or -1. */
static int next_cold(const struct pi_gpu_loop *g, int il)
{
    for (int k = il + 1; k < g->be->model->hp.n_layer; k++)
        if (!layer_all_hot(g, k)) return k;
    return -1;
}

/* Layers and the FFN of a streamed step: nothing is published (the DESIGN note above). Layer 0's
 * attention is enqueued before the first streamed layer's packing and copy start (ffn_stream(-1,
 * first)), so that the host's packing runs while the device computes it. */
static int eval_streamed(struct pi_gpu_loop *g)
{
    pi_backend_t *be = g->be;
    const int n_layer = be->model->hp.n_layer;
    int rc = 0;
    for (int il = 0; rc == 0 && il < n_layer; il++) {
        if (g->link) pi_link_progress(g->link);
        rc = be->ops->attn(be, il);
        if (rc == 0 && il == 0) rc = be->ops->ffn_stream(be, -1, next_cold(g, -1));
        if (rc != 0) break;
        if (layer_all_hot(g, il)) {
            rc = ffn_layer_local(g, il, g->n_cur);
        } else {
            rc = be->ops->ffn_stream(be, il, next_cold(g, il));
            g->stream.n_layers++;
        }
    }
    g->stream.n_steps++;
    return rc;
}

int pi_gpu_loop_stream_init(struct pi_gpu_loop *g, enum pi_tune_prompt_stream mode)
{
    pi_backend_t *be = g->be;
    /* the one rule (compute/stream-policy.h): predictors' and thresholds' masks and counts are the workers' */
    mode = pi_stream_policy_mode(mode, sparse_on(g), g->gated);
    if (!be->ops->ffn_stream || mode == PI_TUNE_PROMPT_STREAM_OFF) return 0;
    double copy_bps = 0, pack_bps = 0;
    if (be->ops->stream_rates && be->ops->stream_rates(be, &copy_bps, &pack_bps) < 0) {
        pi_info("prompt streaming: the %s backend holds no streaming buffers for this model (doc/pipeline.md)", be->ops->name);
        return 0;
    }
    const int n_layer = be->model->hp.n_layer;
    int64_t *nh = malloc((size_t)n_layer * sizeof *nh);
    if (!nh) return -PI_ERR_NOMEM;
    for (int il = 0; il < n_layer; il++) nh[il] = be->ops->ffn_hot_count ? be->ops->ffn_hot_count(be, il) : 0;
    int rc = pi_stream_policy_init(&g->stream, be->model, nh, mode, copy_bps, pack_bps);
    free(nh);
    if (rc == 0)
        pi_info("prompt streaming %s: host-to-device %.1f GB/s, packing %.1f GB/s, the CPU workers modelled at %.1f us per "
                "token and layer until measured", mode == PI_TUNE_PROMPT_STREAM_ON ? "on" : "auto", copy_bps / 1e9,
                pack_bps / 1e9, g->stream.cpu_ns_tok / 1e3);
    return rc;
}

int pi_gpu_loop_sparse_init(struct pi_gpu_loop *g, const struct pi_predictors *pred, enum pi_sparsity mode,
                            int64_t recall_every, int threads)
{
    const pi_model_t *m = g->be->model;
    if (!pred || mode == PI_SPARSITY_OFF || m->hp.act == PI_FFN_ACT_SILU || pred->n_layer != m->hp.n_layer ||
        pred->n_ff != m->hp.n_ff || pred->n_embd != m->hp.n_embd || recall_every < 0 || (!g->be->ops->ffn_predict && !g->hot)) {
        pi_error("sparse execution: predictors missing, of another shape, or a SwiGLU model");
        return -PI_ERR_INVAL;
    }
    if (pred->on_residual && !g->be->ops->ffn_predict) {
        /* the host fallback has only the exchange's x, and a model file's predictors read the residual
         * stream h (compute/predictor.h), which only the backend holds */
        pi_error("sparse execution: the model file's predictors read the residual stream, which a backend without "
                 "ffn_predict does not give the loop");
        return -PI_ERR_UNSUPPORTED;
    }
    g->pred = pred;
    g->sparsity = mode;
    g->recall_every = recall_every;
    g->mask_words = pi_sparse_mask_words(m->hp.n_ff);
    if (pi_sparse_stats_init(&g->stats, m) != 0) return -PI_ERR_NOMEM;
    /* host-side products only where they run: the fallback predictor, the recall */
    if (threads > 1 && (!g->be->ops->ffn_predict || recall_every > 0) && !(g->pool = pi_pool_new(threads)))
        return -PI_ERR_NOMEM;
    return 0;
}

/* Grow the batch's scratch to n rows. */
static int loop_reserve(struct pi_gpu_loop *g, int n)
{
    if (n <= g->cap) return 0;
    const struct pi_hparams *hp = &g->be->model->hp;
    pi_gpu_loop_free(g);
    g->cold = malloc((size_t)n * (size_t)hp->n_embd * sizeof *g->cold);
    bool ok = g->cold;
    if (ok && sparse_on(g)) {
        g->x_own = malloc((size_t)n * (size_t)hp->n_embd * sizeof *g->x_own);
        g->mask_own = malloc((size_t)n * (size_t)g->mask_words * sizeof *g->mask_own);
        g->pred_scr = malloc(pi_predictor_scratch(g->pred, n) * sizeof *g->pred_scr);
        g->gate = malloc((size_t)n * 2 * (size_t)hp->n_ff * sizeof *g->gate); /* the gates, then dReLU's ups */
        ok = g->x_own && g->mask_own && g->pred_scr && g->gate;
    }
    if (!ok) {
        pi_gpu_loop_free(g);
        return -PI_ERR_NOMEM;
    }
    g->cap = n;
    return 0;
}

int pi_gpu_loop_eval(struct pi_gpu_loop *g, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n,
                     const int32_t *rows, int n_rows, float *logits)
{
    pi_backend_t *be = g->be;
    const struct pi_hparams *hp = &be->model->hp;
    if (n < 1 || n_rows < 0 || n_rows > n || (n_rows > 0) != (rows != NULL)) {
        pi_error("step: batch of %d tokens with %d logits rows", n, n_rows);
        return -PI_ERR_RANGE;
    }
    for (int k = 0; k < n_rows; k++)
        if (rows[k] < 0 || rows[k] >= n || (k > 0 && rows[k] <= rows[k - 1])) {
            pi_error("step: logits row %d is not an increasing row index below %d", rows[k], n);
            return -PI_ERR_RANGE;
        }
    /* the sequence ids index the backend's cache: checked here, the positions by the backend's begin */
    bool fresh = false;
    for (int i = 0; i < n; i++) {
        if (seq[i] < 0 || seq[i] >= g->n_seq) {
            pi_error("step: sequence %d at row %d out of [0, %d)", seq[i], i, g->n_seq);
            return -PI_ERR_RANGE;
        }
        fresh |= pos[i] == 0;
    }
    if (loop_reserve(g, n) != 0) return -PI_ERR_NOMEM;
    float *cold = g->cold;
    /* FRESH: some row starts a sequence. The workers keep no running state that a new sequence would
     * have to restart (compute/ffn-policy.h), so a batch that mixes a starting sequence with running
     * ones is computed exactly as the two would be apart; the flag is informational (ipc/exchange.h). */
    g->fresh = fresh;
    if (g->gated) pi_sparse_stats_clear(&g->stats);
    if (sparse_on(g)) {
        pi_sparse_stats_clear(&g->stats);
        g->recall_now = g->recall_every > 0 && g->n_steps % (uint64_t)g->recall_every == 0;
        g->n_steps++;
    }
    /* prompt streaming: set up only where pi_stream_policy_mode allows (pi_gpu_loop_stream_init) */
    g->prompt_now = pi_stream_policy_is_prompt(seq, pos, n);
    g->n_cur = n;
    const bool streamed = g->stream.cold && pi_stream_policy_decide(&g->stream, seq, pos, n);
    int rc = be->ops->begin(be, tokens, seq, pos, n);
    const int64_t t_st = pi_clock_ns();
    if (rc == 0 && streamed) rc = eval_streamed(g);
    for (int il = 0; rc == 0 && !streamed && il < hp->n_layer; il++) {
        if (g->link) pi_link_progress(g->link);
        rc = be->ops->attn(be, il);
        if (rc == 0) rc = ffn_layer(g, il, n, cold);
    }
    if (rc == 0 && n_rows > 0) {
        /* the backend gives the last rows of h: those from the first one asked for, then the rows
         * asked for are moved up in place (row k comes from at or after row k, so nothing is
         * overwritten before it is read) */
        const int first = rows[0];
        const size_t V = (size_t)hp->n_vocab;
        rc = be->ops->output(be, n - first, logits);
        for (int k = 0; rc == 0 && k < n_rows; k++)
            if (rows[k] - first != k) memmove(logits + (size_t)k * V, logits + (size_t)(rows[k] - first) * V, V * sizeof *logits);
    }
    /* a streamed step's time, its layers to its logits (the device's work awaited by output; without rows
     * asked for, the host's share only), corrects the model's stream side (pi_stream_policy_note_stream) */
    if (rc == 0 && streamed) pi_stream_policy_note_stream(&g->stream, n, pi_clock_ns() - t_st);
    if (rc == 0) be->ops->commit(be);
    const int rs = count_hot_skipped(g, rc == 0);
    if (rc == 0) rc = rs;
    if (counting(g)) pi_sparse_stats_to_wire(&g->stats, pi_exchange_stats(g->ex)); /* before the answer */
    return rc;
}

void pi_gpu_loop_free(struct pi_gpu_loop *g)
{
    free(g->cold);
    free(g->x_own);
    free(g->mask_own);
    free(g->pred_scr);
    free(g->gate);
    g->cold = g->x_own = g->pred_scr = g->gate = NULL;
    g->mask_own = NULL;
    g->cap = 0;
}

int pi_gpu_loop_gated_init(struct pi_gpu_loop *g)
{
    if (pi_sparse_stats_init(&g->stats, g->be->model) != 0) return -PI_ERR_NOMEM;
    if (!(g->hot_skipped = calloc((size_t)g->be->model->hp.n_layer, sizeof *g->hot_skipped))) return -PI_ERR_NOMEM;
    pi_sparse_stats_gated(&g->stats, g->be->model);
    g->gated = true;
    return 0;
}

void pi_gpu_loop_sparse_free(struct pi_gpu_loop *g)
{
    pi_sparse_stats_free(&g->stats);
    free(g->hot_skipped);
    g->hot_skipped = NULL;
    pi_stream_policy_free(&g->stream);
    pi_pool_destroy(&g->pool);
    g->pred = NULL;
    g->gated = false;
}

int pi_gpu_loop_run(struct pi_gpu_loop *g)
{
    for (;;) {
        if (g->link) pi_link_progress(g->link);
        if (g->link && pi_link_stopping(g->link)) return 0;
        struct pi_step_req r;
        int rc = pi_step_wait(g->step, LOOP_IDLE_NS, &r);
        if (rc == -PI_ERR_TIMEOUT) continue;
        if (rc == -PI_ERR_FORMAT) { pi_step_respond(g->step, r.id, rc); continue; }
        if (rc != 0) return rc;
        int status = 0;
        switch (r.cmd) {
        case PI_STEP_EVAL: /* every field validated by pi_step_wait; the positions' start by the backend */
            status = pi_gpu_loop_eval(g, r.tokens, r.seqs, r.pos, (int)r.n_tokens, r.rows, (int)r.n_rows, pi_step_logits(g->step));
            break;
        case PI_STEP_TRUNCATE: /* seq < n_seq and keep <= INT32_MAX (pi_step_wait); the length is the backend's */
            status = g->be->ops->seq_truncate(g->be, (int)r.seq, (int)r.keep);
            break;
        case PI_STEP_RESET:
            for (int q = 0; status == 0 && q < g->n_seq; q++) status = g->be->ops->seq_truncate(g->be, q, 0);
            break;
        case PI_STEP_STOP:
            pi_step_respond(g->step, r.id, 0);
            if (g->n_rt)
                pi_info("exchange: %llu layer round trips, mean %.1f us (publish to partials merged, hot neurons excluded)",
                        (unsigned long long)g->n_rt, (double)g->rt_ns / (double)g->n_rt / 1e3);
            if (g->n_skip)
                pi_info("exchange: %llu layers without cold neurons skipped it", (unsigned long long)g->n_skip);
            if (g->stream.cold)
                pi_info("prompt streaming: %llu layers of %llu steps streamed (CPU workers at %.1f us per token and layer, %s; "
                        "streamed steps %.2f x the model%s)",
                        (unsigned long long)g->stream.n_layers, (unsigned long long)g->stream.n_steps,
                        g->stream.cpu_ns_tok / 1e3, g->stream.measured ? "measured" : "the default",
                        g->stream.st_measured ? g->stream.st_ratio : 1.0, g->stream.st_measured ? "" : ", not measured");
            return 0;
        }
        pi_step_respond(g->step, r.id, status);
        if (status == -PI_ERR_PEER || status == -PI_ERR_TIMEOUT) {
            /* The exchange is aborted or a CPU worker is gone: this pipeline is over. */
            pi_error("a CPU worker failed (%s): exiting for the coordinator to restart the pipeline", pi_err_str(status));
            return status;
        }
    }
}
