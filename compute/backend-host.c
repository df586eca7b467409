/*
 * compute/backend-host.c - the `host` backend of pi-gpu-worker (compute/backend.h): plain C
 * on the CPU over the single-process forward pass's per-layer steps (compute/forward.h) and its
 * neuron-subset FFN kernel (kernels/cpu/ops.h).
 *
 * It stands in for the device on machines without one (CI, this project's tests) and is the
 * reference the cuda backend is compared with. Attention, the KV cache, the norms and the output
 * head are the forward pass's own code, so a pipeline run differs from the single-process pass only
 * in how the FFN neurons are split and summed.
 *
 * FFN: a layer whose hot set is all of its neurons (hot fraction 1) is computed exactly as the
 * single process computes it (pi_forward_ffn: the dense matvec/matmul FFN, or its own sparse-decode
 * choice), so at hot fraction 1 the pipeline's logits are the single process's bit for bit; a
 * partial hot set goes through the neuron-subset kernel (pi_ffn_neurons_batch) over its ids, reading
 * the packed hot rows of opts.hot_layers where the worker gave them (then the model itself holds no
 * transposed down rows, gpu-worker/main.c), or, where the worker packed them as a partition
 * (opts.hot_part), is computed densely as a CPU worker computes its slice (compute/ffn-policy.h: dense
 * wherever it can be, whatever the batch). Either way each row's partial is a function of that row
 * alone, so a token's logits do not depend on the batch it ran in (batch invariance, compute/forward.h).
 *
 * Predictors (opts.pred, opts.sparsity not off; doc/predictors.md, "Runtime"): ffn_predict evaluates
 * layer il's predictor on the rows it reads (pi_predictor_input: the residual stream h or the FFN input;
 * pi_predictor_eval, on the forward pass's pool), hands the mask
 * to the loop, and ffn_hot then computes, for each token, only the hot neurons its mask selects
 * (compute/sparse.h: neuron by neuron over the packed hot rows, or the model's own for a layer whose
 * neurons are all hot; or, for a batch that selects many, densely with the unselected activations
 * zeroed), the exact gate sign still deciding each of them. The FFN policy is not consulted.
 *
 * Activation thresholds (opts.gate_min, a SwiGLU model's; doc/thresholds.md): the hot neurons take the
 * rule the CPU workers take (pi_ffn_gate_skip), on whichever path computes them: a layer whose neurons are
 * all hot through the forward pass's own thresholds (pi_forward_set_gate_min: the single process's
 * dense FFN with the skipped activations zeroed, so at hot fraction 1 the logits are the single process's
 * with thresholds, bit for bit), a partial hot set densely over the packed slice with the skipped
 * activations zeroed (pi_partition_ffn_dense_gated, as a CPU worker computes its slice) or neuron by
 * neuron with the skipped neurons' up and down rows unread (pi_ffn_neurons_batch with the thresholds). A
 * pipeline run with thresholds then computes the same function whatever the hot fraction, to the two
 * paths' rounding. The pairs skipped are counted per layer for ffn_hot_skipped.
 *
 * Threads: the hot neurons run on the forward pass's own pool (pi_forward_pool), between its steps;
 * a second pool would spin its threads against the first one's on the same cores. The neuron
 * kernel's sums do not depend on thread timing, so a run is reproducible bit for bit.
 *
 * Prompt streaming (ffn_stream, compute/stream-policy.h): the stand-in for the cuda backend's streamed
 * layers: the layer's whole FFN from the mapping's ffn_gate, ffn_up and ffn_down (the products of the
 * single process's dense FFN), so a streamed step's logits are those of hot fraction 1. There is no
 * device link (no stream_rates: both 0), so [tune] prompt_stream auto never streams here; on does, on every
 * prompt step, which is what the tests run.
 *
 * Memory: h (max_tokens, n_embd) and hot (max_tokens, n_embd), allocated once; with prompt_stream on,
 * the streamed FFN's gate and up (max_tokens, n_ff) each.
 */
#include "config.h"
#include "compute/backend.h"
#include "compute/ffn-policy.h"
#include "compute/partition.h"
#include "compute/sparse.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/ops.h"
#include "lib/common.h"
#include "compute/forward.h"
#include "lib/log.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

struct host_backend {
    struct pi_backend base;
    pi_forward_t *fwd;
    pi_ffn_work_t *work;
    struct pi_backend_opts o;
    int d;                     /* n_embd */
    float *h;                  /* (max_tokens, d): the residual stream of the batch */
    float *hot;                /* (max_tokens, d): the hot neurons' partial of the current layer, or
                                  for a dense layer h + its whole FFN (see dense) */
    bool dense;                /* the current layer's hot set is all of it: hot = h + ffn(h) */
    const float *x;            /* (n, d): the FFN input given to ffn_input (caller's memory) */
    int32_t *seq, *pos;        /* (max_tokens): the batch being computed */
    int32_t *ident;            /* (largest n_hot): 0, 1, 2, ... the row ids of o.hot_layers, or NULL */
    float *dense_scr;          /* pi_partition_dense_scratch(max_tokens) for the largest n_hot, or NULL */
    struct pi_ffn_policy policy; /* dense or neuron by neuron, per layer (compute/ffn-policy.h) */
    int n;                     /* rows of the batch */
    /* predictors (o.pred with o.sparsity not off), else all NULL */
    int64_t mask_words;        /* ceil(n_ff / 64) */
    uint64_t *mask;            /* (max_tokens, mask_words): the current layer's prediction */
    bool masked;               /* ffn_predict ran for the current layer: ffn_hot computes its mask only */
    float *pred_scr;           /* pi_predictor_scratch(max_tokens) */
    float *xown;               /* (max_tokens, d): the FFN input of a layer without an exchange */
    int32_t *list;             /* (n_ff): pi_sparse_ffn's scratch */
    struct pi_sparse_slice *slices; /* (n_layer): the hot ids as mask bitmaps (compute/sparse.h) */
    float *sp_gate, *sp_up;    /* (max_tokens, n_ff): a whole layer's dense masked FFN (all hot) */
    /* activation thresholds (o.gate_min), else NULL */
    float *gm_full;            /* (n_layer, n_ff): each hot neuron's threshold at its id, 0 elsewhere: for the
                                  forward pass (a layer all hot) and the neuron path over the model's rows */
    struct pi_sparse_stats gm_stats; /* the forward pass's counts (a layer all hot) */
    int64_t *skipped;          /* (n_layer): hot pairs skipped since the last ffn_hot_skipped */
    /* prompt streaming (o.tune.prompt_stream on), else NULL: the streamed layer's FFN input and its
     * products */
    float *st_x;               /* (max_tokens, d) */
    float *st_gate, *st_up;    /* (max_tokens, n_ff) */
};

static struct host_backend *hb(pi_backend_t *b) { return (struct host_backend *)b; }

static void host_destroy(pi_backend_t *b)
{
    struct host_backend *s = hb(b);
    pi_forward_destroy(&s->fwd);
    pi_ffn_work_destroy(&s->work);
    free(s->h);
    free(s->hot);
    free(s->seq);
    free(s->pos);
    free(s->ident);
    free(s->dense_scr);
    free(s->mask);
    free(s->pred_scr);
    free(s->xown);
    free(s->list);
    pi_sparse_slices_free(&s->slices);
    free(s->sp_gate);
    free(s->sp_up);
    free(s->st_x);
    free(s->st_gate);
    free(s->st_up);
    free(s->gm_full);
    free(s->skipped);
    pi_sparse_stats_free(&s->gm_stats);
    pi_ffn_policy_free(&s->policy);
    free(s);
}

static int host_begin(pi_backend_t *b, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n)
{
    struct host_backend *s = hb(b);
    if (n < 1 || n > s->o.max_tokens) {
        pi_error("host backend: batch of %d tokens (1..%d)", n, s->o.max_tokens);
        return -PI_ERR_RANGE;
    }
    int rc = pi_forward_begin(s->fwd, tokens, seq, pos, n);
    if (rc != 0) return rc;
    memcpy(s->seq, seq, (size_t)n * sizeof *seq);
    memcpy(s->pos, pos, (size_t)n * sizeof *pos);
    s->n = n;
    pi_forward_embed(s->fwd, tokens, n, s->h);
    return 0;
}

static int host_attn(pi_backend_t *b, int il)
{
    struct host_backend *s = hb(b);
    pi_forward_attn(s->fwd, il, s->seq, s->pos, s->n, s->h);
    return 0;
}

static int host_ffn_input(pi_backend_t *b, int il, float *x)
{
    struct host_backend *s = hb(b);
    if (x) pi_forward_ffn_input(s->fwd, il, s->n, s->h, x); /* NULL: a dense layer, pi_forward_ffn norms h itself */
    s->x = x;
    s->masked = false;
    return 0;
}

/* hot (n, d) = the hot neurons of layer il that each token's mask selects (compute/sparse.h), from the
 * packed hot rows, or from the model's own rows where the worker packed none (a layer whose neurons
 * are all hot). merge then adds hot like any partial. */
static int host_ffn_hot_masked(struct host_backend *s, int il)
{
    const pi_model_t *m = s->base.model;
    const int64_t nh = s->o.n_hot[il];
    s->dense = false;
    const bool all = nh >= (int64_t)m->hp.n_ff, packed = s->o.hot_layers && !all;
    const struct pi_layer *L = packed ? &s->o.hot_layers[il] : &m->layers[il];
    const struct pi_sparse_slice *sl = all ? NULL : &s->slices[il];
    pi_pool_t *pool = pi_forward_pool(s->fwd);
    if (nh == 0) {
        memset(s->hot, 0, (size_t)s->n * (size_t)s->d * sizeof(float));
        return 0;
    }
    const bool dense = pi_sparse_dense(s->mask, s->n, s->mask_words, sl, m->hp.n_ff);
    if (dense && all) /* the whole layer: the model's own matrices, the unselected activations zeroed */
        pi_sparse_ffn_dense_layer(pool, L, m->hp.act, s->x, s->n, s->mask, s->mask_words, s->sp_gate, s->sp_up, s->hot);
    else if (dense && s->o.hot_part)
        pi_partition_ffn_dense_masked(pool, s->o.hot_part, il, m->hp.act, s->x, s->n, s->mask, s->mask_words, s->dense_scr,
                                      s->hot);
    else /* one token, few selected, or a partial hot set without a packed partition: neuron by neuron */
        pi_sparse_ffn(pool, s->work, L, sl, packed, m->hp.act, s->x, s->n, s->mask, s->mask_words, s->list, s->hot, NULL);
    return 0;
}

static int host_ffn_predict(pi_backend_t *b, int il, uint64_t *mask, int64_t mask_words, int64_t *n_active)
{
    struct host_backend *s = hb(b);
    if (!s->mask || (mask && mask_words != s->mask_words)) {
        pi_error("host backend: layer %d: predictors are not set up (or %lld mask words, not %lld)", il,
                 (long long)mask_words, (long long)s->mask_words);
        return -PI_ERR_INVAL;
    }
    if (!s->x) { /* a layer without an exchange: the input is ours to make */
        pi_forward_ffn_input(s->fwd, il, s->n, s->h, s->xown);
        s->x = s->xown;
    }
    const float *in = pi_predictor_input(s->o.pred, s->h, s->x);
    *n_active = pi_predictor_eval(pi_forward_pool(s->fwd), s->o.pred, il, s->o.sparsity, in, s->n, s->pred_scr, s->mask,
                                  s->mask_words);
    if (mask) memcpy(mask, s->mask, (size_t)s->n * (size_t)s->mask_words * sizeof *mask);
    s->masked = true;
    return 0;
}

/* Pairs of layer il the forward pass's thresholds skipped, as its counts stand (pairs - predicted). */
static uint64_t fwd_skipped(const struct host_backend *s, int il)
{
    return s->gm_stats.layers[il].pairs - s->gm_stats.layers[il].predicted;
}

/* hot (n, d) = the hot neurons of layer il over each row of x, under the thresholds where given.
 * Synchronous on the host: the CPU workers run at the same time in their own processes. A layer whose
 * neurons are all hot is the single process's FFN step instead: hot = h + ffn(ffn_norm(h)), the sum
 * pi_forward_ffn makes (with the forward pass's thresholds). */
static int host_ffn_hot(pi_backend_t *b, int il)
{
    struct host_backend *s = hb(b);
    const pi_model_t *m = b->model;
    size_t nd = (size_t)s->n * (size_t)s->d;
    int64_t nh = s->o.n_hot[il];
    if (s->masked) return host_ffn_hot_masked(s, il);
    s->dense = nh >= (int64_t)m->hp.n_ff;
    if (s->dense) {
        memcpy(s->hot, s->h, nd * sizeof(float));
        const uint64_t before = s->gm_full ? fwd_skipped(s, il) : 0;
        pi_forward_ffn(s->fwd, il, s->n, s->hot);
        if (s->gm_full) s->skipped[il] += (int64_t)(fwd_skipped(s, il) - before);
        return 0;
    }
    if (!s->x) {
        pi_error("host backend: layer %d: hot neurons without an FFN input", il);
        return -PI_ERR_INVAL;
    }
    memset(s->hot, 0, nd * sizeof(float));
    if (nh == 0) return 0;
    pi_pool_t *pool = pi_forward_pool(s->fwd);
    /* the thresholds of the rows read: packed (row i is hot neuron i) or the model's (row j is neuron j) */
    const float *gm = s->o.gate_min ? s->o.gate_min[il] : NULL;
    const float *gm_rows = s->gm_full ? s->gm_full + (size_t)il * (size_t)m->hp.n_ff : NULL;
    int64_t kept;
    if (pi_ffn_policy_choose(&s->policy, il, s->n) == PI_FFN_PATH_DENSE) {
        /* dense over the packed slice, as a CPU worker computes its own (compute/partition.h) */
        const struct pi_partition *part = s->o.hot_part;
        kept = gm ? pi_partition_ffn_dense_gated(pool, part, il, m->hp.act, gm, s->x, s->n, s->dense_scr, s->hot)
                  : pi_partition_ffn_dense(pool, part, il, m->hp.act, s->x, s->n, s->dense_scr, s->hot);
    } else if (s->o.hot_layers) { /* the packed hot rows: row i is neuron hot[il][i] */
        const struct pi_layer *L = &s->o.hot_layers[il];
        kept = pi_ffn_neurons_batch(pool, s->work, L, m->hp.act, gm, s->x, s->n, s->ident, nh, s->hot);
    } else {
        const struct pi_layer *L = &m->layers[il];
        kept = pi_ffn_neurons_batch(pool, s->work, L, m->hp.act, gm_rows, s->x, s->n, s->o.hot[il], nh, s->hot);
    }
    if (gm) s->skipped[il] += PI_MAX((int64_t)s->n * nh - kept, (int64_t)0);
    return 0;
}

static int host_ffn_merge(pi_backend_t *b, int il, const float *cold)
{
    struct host_backend *s = hb(b);
    (void)il;
    size_t n = (size_t)s->n * (size_t)s->d;
    if (s->dense) {
        /* hot already holds h + ffn; without partials h becomes exactly the single process's */
        if (cold)
            for (size_t i = 0; i < n; i++) s->h[i] = s->hot[i] + cold[i];
        else
            memcpy(s->h, s->hot, n * sizeof(float));
        return 0;
    }
    for (size_t i = 0; i < n; i++) s->h[i] += s->hot[i] + (cold ? cold[i] : 0.0f);
    return 0;
}

/* y (n, W.rows) = W (rows, cols) @ x (n, cols) per row, as the single process's dense FFN projects. */
static void host_project(pi_pool_t *pool, const struct pi_weight *W, const float *x, int n, float *y)
{
    if (n == 1) pi_matvec(pool, W->type, W->data, W->rows, W->cols, x, y);
    else pi_matmul(pool, W->type, W->data, W->rows, W->cols, x, n, y);
}

/* h += ffn(ffn_norm(h)) of layer il, every neuron, from the mapping (backend.h). Synchronous: nothing
 * to prefetch, so next and il = -1 ask for nothing. hot (n, d) takes the down product. */
static int host_ffn_stream(pi_backend_t *b, int il, int next)
{
    struct host_backend *s = hb(b);
    const pi_model_t *m = b->model;
    (void)next;
    if (il < 0) return 0;
    if (!s->st_x || il >= m->hp.n_layer || s->n < 1) {
        pi_error("host backend: layer %d streamed without prompt_stream on (or outside the model)", il);
        return -PI_ERR_INVAL;
    }
    const struct pi_layer *L = &m->layers[il];
    pi_pool_t *pool = pi_forward_pool(s->fwd);
    pi_forward_ffn_input(s->fwd, il, s->n, s->h, s->st_x);
    host_project(pool, &L->ffn_gate, s->st_x, s->n, s->st_gate);
    host_project(pool, &L->ffn_up, s->st_x, s->n, s->st_up);
    pi_ffn_act(m->hp.act, s->st_gate, s->st_up, (int64_t)s->n * (int64_t)m->hp.n_ff);
    host_project(pool, &L->ffn_down, s->st_gate, s->n, s->hot);
    const size_t nd = (size_t)s->n * (size_t)s->d;
    for (size_t i = 0; i < nd; i++) s->h[i] += s->hot[i];
    return 0;
}

static int host_output(pi_backend_t *b, int n_out, float *logits)
{
    struct host_backend *s = hb(b);
    if (n_out < 1 || n_out > s->n) return -PI_ERR_RANGE;
    pi_forward_output(s->fwd, s->h, s->n, n_out, logits);
    return 0;
}

static void host_commit(pi_backend_t *b)
{
    struct host_backend *s = hb(b);
    pi_forward_commit(s->fwd, s->seq, s->pos, s->n);
    s->n = 0;
}

static int host_seq_truncate(pi_backend_t *b, int seq, int n) { return pi_forward_seq_truncate(hb(b)->fwd, seq, n); }

static int host_seq_len(const pi_backend_t *b, int seq)
{
    return pi_forward_seq_len(((const struct host_backend *)b)->fwd, seq);
}

static int host_ffn_hot_skipped(pi_backend_t *b, int64_t *skipped)
{
    struct host_backend *s = hb(b);
    const size_t L = (size_t)b->model->hp.n_layer;
    if (!s->skipped) {
        memset(skipped, 0, L * sizeof *skipped);
        return 0;
    }
    memcpy(skipped, s->skipped, L * sizeof *skipped);
    memset(s->skipped, 0, L * sizeof *s->skipped);
    return 0;
}

static int64_t host_ffn_hot_count(const pi_backend_t *b, int il)
{
    const struct host_backend *s = (const struct host_backend *)b;
    return il >= 0 && il < b->model->hp.n_layer ? s->o.n_hot[il] : 0;
}

static const struct pi_backend_ops host_ops = {
    .name = "host",
    .destroy = host_destroy,
    .begin = host_begin,
    .attn = host_attn,
    .ffn_input = host_ffn_input,
    .ffn_hot = host_ffn_hot,
    .ffn_merge = host_ffn_merge,
    .output = host_output,
    .commit = host_commit,
    .seq_truncate = host_seq_truncate,
    .seq_len = host_seq_len,
    .ffn_hot_count = host_ffn_hot_count,
    .ffn_predict = host_ffn_predict,
    .ffn_stream = host_ffn_stream,
    .ffn_hot_skipped = host_ffn_hot_skipped,
};

/* The predictors' buffers, when o asks for them: 0, -PI_ERR_INVAL (predictors of another shape, or a
 * SwiGLU model) or -PI_ERR_NOMEM. */
static int host_predictors_init(struct host_backend *s, const pi_model_t *m, const struct pi_backend_opts *o)
{
    if (!o->pred || o->sparsity == PI_SPARSITY_OFF) return 0;
    const struct pi_predictors *p = o->pred;
    if (p->n_layer != m->hp.n_layer || p->n_ff != m->hp.n_ff || p->n_embd != m->hp.n_embd || m->hp.act == PI_FFN_ACT_SILU) {
        pi_error("host backend: the predictors do not fit the model (or it is SwiGLU)");
        return -PI_ERR_INVAL;
    }
    s->mask_words = pi_sparse_mask_words(m->hp.n_ff);
    s->mask = malloc((size_t)o->max_tokens * (size_t)s->mask_words * sizeof *s->mask);
    s->pred_scr = malloc(pi_predictor_scratch(p, o->max_tokens) * sizeof(float));
    s->xown = malloc((size_t)o->max_tokens * (size_t)s->d * sizeof(float));
    s->list = malloc((size_t)m->hp.n_ff * sizeof *s->list);
    s->sp_gate = malloc((size_t)o->max_tokens * (size_t)m->hp.n_ff * sizeof *s->sp_gate);
    s->sp_up = malloc((size_t)o->max_tokens * (size_t)m->hp.n_ff * sizeof *s->sp_up);
    if (!s->mask || !s->pred_scr || !s->xown || !s->list || !s->sp_gate || !s->sp_up) return -PI_ERR_NOMEM;
    return pi_sparse_slices_new(m->hp.n_layer, m->hp.n_ff, o->hot, o->n_hot, &s->slices); /* logs bad ids */
}

/* The activation thresholds of the hot neurons, when o gives them: checked (each >= 0 and finite; not
 * with predictors), spread to gm_full by id, and the forward pass's own where a layer is all hot. 0,
 * -PI_ERR_INVAL (logged) or -PI_ERR_NOMEM. */
static int host_thresholds_init(struct host_backend *s, const pi_model_t *m, const struct pi_backend_opts *o)
{
    if (!o->gate_min) return 0;
    const int64_t ff = m->hp.n_ff;
    if (o->pred && o->sparsity != PI_SPARSITY_OFF) {
        pi_error("host backend: activation thresholds and predictors together");
        return -PI_ERR_INVAL;
    }
    s->gm_full = calloc((size_t)m->hp.n_layer * (size_t)ff, sizeof *s->gm_full);
    s->skipped = calloc((size_t)m->hp.n_layer, sizeof *s->skipped);
    if (!s->gm_full || !s->skipped || pi_sparse_stats_init(&s->gm_stats, m) != 0) return -PI_ERR_NOMEM;
    bool all_hot = false;
    for (int il = 0; il < m->hp.n_layer; il++) {
        all_hot |= o->n_hot[il] >= ff;
        for (int64_t i = 0; i < o->n_hot[il]; i++) {
            const float t = o->gate_min[il][i];
            const int32_t id = o->hot[il][i];
            if (!(t >= 0.0f && t <= FLT_MAX) || id < 0 || id >= ff) {
                pi_error("host backend: layer %d hot neuron %lld (id %d): activation threshold %g", il, (long long)i,
                         id, (double)t);
                return -PI_ERR_INVAL;
            }
            s->gm_full[(size_t)il * (size_t)ff + (size_t)id] = t;
        }
    }
    /* the forward pass applies them in the FFN step an all-hot layer takes (its own validation) */
    return all_hot ? pi_forward_set_gate_min(s->fwd, s->gm_full, &s->gm_stats) : 0;
}

int pi_backend_host_new(const pi_model_t *m, const struct pi_backend_opts *o, pi_backend_t **out)
{
    *out = NULL;
    if (o->max_tokens < 1 || !o->n_hot || !o->hot) return -PI_ERR_INVAL;
    struct host_backend *s = calloc(1, sizeof *s);
    if (!s) return -PI_ERR_NOMEM;
    s->base.ops = &host_ops;
    s->base.model = m;
    s->o = *o;
    s->d = m->hp.n_embd;
    struct pi_forward_opts fo;
    pi_forward_opts_default(&fo);
    fo.n_threads = o->n_threads > 0 ? o->n_threads : 1;
    if (o->n_ctx > 0) fo.n_ctx = o->n_ctx;
    if (o->n_seq > 0) fo.n_seq = o->n_seq;
    fo.n_batch = o->max_tokens;
    /* without the model's own down rows (the worker packed only its hot ones) the forward pass is
     * used for everything but the FFN; a layer that needs its FFN step is refused below */
    for (int il = 0; il < m->hp.n_layer; il++) fo.no_ffn |= !m->layers[il].ffn_down_t.data;
    size_t hd = (size_t)o->max_tokens * (size_t)s->d;
    s->fwd = pi_forward_new(m, &fo);
    s->work = pi_ffn_work_new(s->d, fo.n_threads);
    s->h = malloc(hd * sizeof(float));
    s->hot = malloc(hd * sizeof(float));
    s->seq = malloc((size_t)o->max_tokens * sizeof(int32_t));
    s->pos = malloc((size_t)o->max_tokens * sizeof(int32_t));
    int64_t nh_max = 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        if (!m->layers[il].ffn_down_t.data && (o->n_hot[il] >= m->hp.n_ff || (o->n_hot[il] > 0 && !o->hot_layers))) {
            /* an all-hot layer is the single process's FFN step, which needs the model's own rows;
             * a partial one needs them too unless the worker packed its hot rows (hot_layers) */
            pi_error("host backend: layer %d needs transposed down rows the model was opened without", il);
            host_destroy(&s->base);
            return -PI_ERR_INVAL;
        }
        nh_max = PI_MAX(nh_max, o->n_hot[il]);
    }
    if (o->hot_layers && (s->ident = malloc((size_t)PI_MAX(nh_max, (int64_t)1) * sizeof *s->ident)))
        for (int64_t i = 0; i < nh_max; i++) s->ident[i] = (int32_t)i;
    /* the dense path, where the worker packed the hot rows as a partition */
    bool dense_bad = false;
    const bool dense_ok = o->hot_part && nh_max > 0;
    if (dense_ok) dense_bad = !(s->dense_scr = malloc(pi_partition_dense_scratch(o->hot_part, o->max_tokens) * sizeof(float)));
    if (o->hot_part && (o->hot_part->n_layer != m->hp.n_layer || o->hot_part->edges_only)) {
        pi_error("host backend: the packed hot neurons do not match the model");
        host_destroy(&s->base);
        return -PI_ERR_INVAL;
    }
    int prc = pi_ffn_policy_init(&s->policy, m->hp.act, m->hp.n_layer, dense_ok, true);
    bool stream_bad = false;
    if (o->tune.prompt_stream == PI_TUNE_PROMPT_STREAM_ON) {
        const size_t tf = (size_t)o->max_tokens * (size_t)m->hp.n_ff;
        s->st_x = malloc(hd * sizeof(float));
        s->st_gate = malloc(tf * sizeof(float));
        s->st_up = malloc(tf * sizeof(float));
        stream_bad = !s->st_x || !s->st_gate || !s->st_up;
    }
    int rc = host_predictors_init(s, m, o);
    if (rc == 0 && s->fwd) rc = host_thresholds_init(s, m, o);
    if (rc == -PI_ERR_INVAL) {
        host_destroy(&s->base);
        return rc;
    }
    if (!s->fwd || !s->work || !s->h || !s->hot || !s->seq || !s->pos || (o->hot_layers && !s->ident) || prc != 0 || rc != 0 ||
        dense_bad || stream_bad || pi_ffn_work_reserve(s->work, o->max_tokens) != 0) {
        host_destroy(&s->base);
        return -PI_ERR_NOMEM;
    }
    *out = &s->base;
    return 0;
}
