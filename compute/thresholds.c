/*
 * compute/thresholds.c - the activation thresholds' calibration (compute/thresholds.h).
 */
#include "config.h"
#include "compute/thresholds.h"
#include "compute/forward.h"
#include "compute/sparse.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/log.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void pi_thr_opts_default(struct pi_thr_opts *o, int n_chunks, int ctx, int n_vocab)
{
    /* scored positions: at most 4096, and their dense log-probabilities in at most 256 MiB */
    const int64_t per_chunk = PI_MAX(1, ctx - ctx / 2);
    const int64_t positions = PI_MAX(1, PI_MIN(4096, ((int64_t)256 << 20) / ((int64_t)PI_MAX(1, n_vocab) * 4)));
    *o = (struct pi_thr_opts){.n_threads = 1,
                              .kld_target = {0.01f, 0.03f},
                              .top1_min = {0.97f, 0.0f},
                              .margin = 0.7f,
                              .sample_tokens = 256,
                              .held_out_chunks = (int)PI_MAX(1, PI_MIN(n_chunks / 4, positions / per_chunk))};
}

void pi_thr_result_free(struct pi_thr_result *r)
{
    free(r->gate_min);
    free(r->layer_sparsity);
    memset(r, 0, sizeof *r);
}

/* the level each layer is probed at for its sensitivity (step 3a): 20% of its pairs */
#define PI_THR_PROBE 4

void pi_thr_result_to_sidecar(struct pi_thr_result *r, const struct pi_thr_opts *o, struct pi_sidecar *s)
{
    PI_ASSERT(r->gate_min && r->layer_sparsity && r->n_layer == s->n_layer);
    free(s->gate_min);
    free(s->gate_sparsity);
    s->gate_min = r->gate_min;
    s->gate_sparsity = r->layer_sparsity;
    r->gate_min = r->layer_sparsity = NULL;
    for (int k = 0; k < 2; k++) {
        s->thr_kld_target[k] = o->kld_target[k];
        s->thr_kld[k] = r->kld[k];
        s->thr_sparsity[k] = r->sparsity[k];
        s->thr_tokens[k] = r->tokens[k];
    }
    pi_thr_result_free(r);
}

/* ---------------------------------------------------------------- 1. capture */

struct capture {
    int n_layer, slots;
    int64_t d, ff, stride;
    int64_t *seen; /* (n_layer) rows the hook has seen */
    int *kept;     /* (n_layer) rows kept */
    float *a;      /* (n_layer, slots, ff) |silu(gate)| */
    float *act;    /* (n_layer, slots, ff) silu(gate) * up */
    double *r2;    /* (n_layer, slots) |h|^2 of the residual entering the FFN */
};

/* The forward pass's capture hook: keep every stride-th row (the middle one of each stride). */
static void capture_rows(void *ctx, int il, int n, const float *h, const float *x, const float *gate, const float *up)
{
    struct capture *c = ctx;
    (void)x;
    PI_ASSERT(il >= 0 && il < c->n_layer);
    for (int i = 0; i < n; i++) {
        int64_t t = c->seen[il]++;
        if (t % c->stride != c->stride / 2 || c->kept[il] >= c->slots) continue;
        size_t slot = (size_t)il * (size_t)c->slots + (size_t)c->kept[il]++;
        const float *g = gate + (size_t)i * (size_t)c->ff, *u = up + (size_t)i * (size_t)c->ff;
        float *a = c->a + slot * (size_t)c->ff, *v = c->act + slot * (size_t)c->ff;
        for (int64_t j = 0; j < c->ff; j++) {
            float s = g[j] / (1.0f + expf(-g[j])); /* silu, as the kernels compute it */
            a[j] = fabsf(s);
            v[j] = s * u[j];
        }
        double r = 0.0;
        for (int64_t k = 0; k < c->d; k++)
            r += (double)h[(size_t)i * (size_t)c->d + k] * h[(size_t)i * (size_t)c->d + k];
        c->r2[slot] = r;
    }
}

/* ---------------------------------------------------------------- 2. the grid */

static int cmp_float(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a > b) - (a < b);
}

/* Layer il's thresholds t (PI_THR_LEVELS) on |silu(gate)| and errors e (PI_THR_LEVELS). sorted
 * (slots * ff), D (slots, ff) and Y (slots, d) are scratch. The score is |silu(gate)| alone (CATS): a
 * WINA-style per-neuron factor (the RMS of the neuron's up times its down column's norm) chose the
 * same thresholds on the demo SwiGLU model and is not kept (doc/thresholds.md). */
static void layer_grid(pi_pool_t *pool, const struct pi_layer *L, const struct capture *c, int il, float *t, double *e,
                       float *sorted, float *D, float *Y)
{
    const int S = c->kept[il];
    const size_t n = (size_t)S * (size_t)c->ff, base = (size_t)il * (size_t)c->slots * (size_t)c->ff;
    const float *a = c->a + base, *act = c->act + base;
    memcpy(sorted, a, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_float);
    double den = 0.0;
    for (int s = 0; s < S; s++) den += c->r2[(size_t)il * (size_t)c->slots + (size_t)s];
    t[0] = 0.0f;
    e[0] = 0.0;
    for (int k = 1; k < PI_THR_LEVELS; k++) {
        size_t m = (size_t)((double)k / PI_THR_LEVELS * (double)n);
        t[k] = m > 0 ? sorted[m - 1] : 0.0f;
        for (size_t i = 0; i < n; i++) D[i] = a[i] <= t[k] ? act[i] : 0.0f;
        pi_matmul(pool, L->ffn_down.type, L->ffn_down.data, L->ffn_down.rows, L->ffn_down.cols, D, S, Y);
        double err = 0.0;
        for (size_t i = 0; i < (size_t)S * (size_t)c->d; i++) err += (double)Y[i] * Y[i];
        e[k] = den > 0.0 ? err / den : err;
    }
}

/* ---------------------------------------------------------------- 4. the held-out chunks */

struct heldout {
    pi_forward_t *f;
    const int32_t *chunks; /* (n, ctx) */
    int n, ctx, n_vocab;
    int first;     /* the first scored position of a chunk: ctx / 2 (at least 1), as llama-perplexity */
    float *base;   /* (n, ctx - first, n_vocab) dense log-probabilities of the scored positions */
    float *logits; /* (ctx, n_vocab) */
    float *logq;   /* (n_vocab) */
    struct pi_sparse_stats st;
};

struct point {
    bool done;
    double kld, top1, sparsity;
};

/* Run the held-out chunks with thresholds gm (NULL: dense, into h->base); layer (n_layer, optional) =
 * each layer's share of pairs skipped. 0 or a negative pi_err. */
static int run_heldout(struct heldout *h, const float *gm, struct point *p, float *layer)
{
    const size_t V = (size_t)h->n_vocab;
    int rc = pi_forward_set_gate_min(h->f, gm, &h->st);
    if (rc < 0) return rc;
    pi_sparse_stats_clear(&h->st);
    double kl = 0.0;
    int64_t same = 0, count = 0;
    for (int c = 0; c < h->n; c++) {
        pi_forward_seq_reset(h->f, 0);
        if ((rc = pi_forward_tokens(h->f, 0, h->chunks + (size_t)c * (size_t)h->ctx, h->ctx, 0, h->logits, true)) < 0)
            return rc;
        for (int pos = h->first; pos < h->ctx; pos++) {
            float *base = h->base + ((size_t)c * (size_t)(h->ctx - h->first) + (size_t)(pos - h->first)) * V;
            const float *lg = h->logits + (size_t)pos * V;
            if (!gm) {
                pi_log_softmax(lg, h->n_vocab, base);
                continue;
            }
            int top_q = pi_log_softmax(lg, h->n_vocab, h->logq), top_p;
            kl += pi_kl_logp(base, h->logq, h->n_vocab, &top_p);
            same += top_p == top_q;
            count++;
        }
    }
    if (gm && p) {
        struct pi_sparse_summary sum;
        pi_sparse_summary(&h->st, -1, &sum);
        *p = (struct point){true, count ? kl / (double)count : 0.0, count ? (double)same / (double)count : 1.0,
                            sum.sparsity};
        for (int il = 0; layer && il < h->st.n_layer; il++) {
            pi_sparse_summary(&h->st, il, &sum);
            layer[il] = (float)sum.sparsity;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- the whole */

struct calib {
    const pi_model_t *m;
    const struct pi_thr_opts *o;
    int n_layer, steps;
    int64_t ff;
    float *t;          /* (n_layer, LEVELS) thresholds of |silu(gate)| */
    int *path;         /* (steps): the layer raised at each step */
    int *level;        /* (n_layer) scratch */
    float *gm;         /* (n_layer, ff) scratch: per-neuron |silu(gate)| thresholds */
    struct point *pts; /* (steps + 1) */
    float *pts_layer;  /* (steps + 1, n_layer): each layer's share skipped at the step */
    struct heldout h;
};

/* c->gm = the thresholds of the levels c->level. */
static void levels_to_gm(struct calib *c)
{
    for (int il = 0; il < c->n_layer; il++) {
        const float t = c->t[(size_t)il * PI_THR_LEVELS + (size_t)c->level[il]];
        float *g = c->gm + (size_t)il * (size_t)c->ff;
        for (int64_t j = 0; j < c->ff; j++) g[j] = t; /* stored per neuron; a layer's share one today */
    }
}

/* The thresholds after `step` steps of the path into c->gm. */
static void thresholds_at(struct calib *c, int step)
{
    memset(c->level, 0, (size_t)c->n_layer * sizeof *c->level);
    for (int s = 0; s < step; s++) c->level[c->path[s]]++;
    levels_to_gm(c);
}

/* The held-out figures at `step` (cached). */
static int point_at(struct calib *c, int step, const struct point **out)
{
    struct point *p = &c->pts[step];
    if (!p->done) {
        thresholds_at(c, step);
        int rc = run_heldout(&c->h, c->gm, p, c->pts_layer + (size_t)step * (size_t)c->n_layer);
        if (rc < 0) return rc;
        if (c->o->progress)
            fprintf(c->o->progress,
                    "%s: thresholds: step %d/%d: %.1f%% of FFN pairs skipped, KLD %.5f, same top %.2f%%\n",
                    c->o->prog ? c->o->prog : "pinfer", step, c->steps, 100.0 * p->sparsity, p->kld, 100.0 * p->top1);
    }
    *out = p;
    return 0;
}

/* The last step in [lo, steps] meeting mode k's bounds (lo is taken to meet them), by bisection. */
static int search(struct calib *c, int k, int lo, int *found)
{
    int hi = c->steps;
    const double kld_max = (double)c->o->margin * c->o->kld_target[k];
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        const struct point *p;
        int rc = point_at(c, mid, &p);
        if (rc < 0) return rc;
        if (p->kld <= kld_max && p->top1 >= (double)c->o->top1_min[k]) lo = mid;
        else hi = mid - 1;
    }
    *found = lo;
    return 0;
}

static bool opts_ok(const struct pi_thr_opts *o, int n_chunks, int ctx, const pi_model_t *m)
{
    for (int k = 0; k < 2; k++)
        if (!(o->kld_target[k] > 0.0f && o->kld_target[k] <= 10.0f) ||
            !(o->top1_min[k] >= 0.0f && o->top1_min[k] <= 1.0f) || !(o->sparsity[k] >= 0.0f && o->sparsity[k] < 1.0f))
            return false;
    return o->n_threads >= 1 && o->margin > 0.0f && o->margin <= 1.0f && o->sample_tokens >= 16 && ctx >= 2 &&
           o->held_out_chunks >= 1 && o->held_out_chunks < n_chunks && m->hp.act == PI_FFN_ACT_SILU;
}

int pi_thr_calibrate(const pi_model_t *m, const int32_t *chunks, int n_chunks, int ctx, const struct pi_thr_opts *o,
                     struct pi_thr_result *out)
{
    memset(out, 0, sizeof *out);
    if (!opts_ok(o, n_chunks, ctx, m)) {
        pi_error("thresholds: bad calibration options or model (a SwiGLU model, at least %d chunks of at least 2 "
                 "tokens, targets in (0, 10], margin in (0, 1])",
                 o->held_out_chunks + 1);
        return -PI_ERR_INVAL;
    }
    const struct pi_hparams *hp = &m->hp;
    const int n_cap = n_chunks - o->held_out_chunks;
    const int64_t d = hp->n_embd, ff = hp->n_ff;
    const int S = (int)PI_MIN((int64_t)o->sample_tokens, (int64_t)n_cap * ctx);
    struct capture cap = {
        .n_layer = hp->n_layer, .slots = S, .d = d, .ff = ff, .stride = PI_MAX(1, (int64_t)n_cap * ctx / S)};
    struct calib c = {.m = m, .o = o, .n_layer = hp->n_layer, .steps = hp->n_layer * (PI_THR_LEVELS - 1)};
    const size_t LS = (size_t)hp->n_layer * (size_t)S;
    float *sorted = NULL, *D = NULL, *Y = NULL;
    double *e = NULL, *gain = NULL;
    int rc = -PI_ERR_NOMEM;
    struct pi_forward_opts fo;
    pi_forward_opts_default(&fo);
    fo.n_threads = o->n_threads;
    fo.n_ctx = ctx;
    fo.n_batch = ctx;
    c.h.f = pi_forward_new(m, &fo);
    cap.seen = calloc((size_t)hp->n_layer, sizeof *cap.seen);
    cap.kept = calloc((size_t)hp->n_layer, sizeof *cap.kept);
    cap.a = malloc(LS * (size_t)ff * sizeof *cap.a);
    cap.act = malloc(LS * (size_t)ff * sizeof *cap.act);
    cap.r2 = calloc(LS, sizeof *cap.r2);
    c.ff = ff;
    if (!c.h.f || !cap.seen || !cap.kept || !cap.a || !cap.act || !cap.r2) goto out;

    /* 1. capture */
    pi_forward_set_capture(c.h.f, capture_rows, &cap);
    for (int ch = 0; ch < n_cap; ch++) {
        pi_forward_seq_reset(c.h.f, 0);
        if ((rc = pi_forward_tokens(c.h.f, 0, chunks + (size_t)ch * (size_t)ctx, ctx, 0, NULL, false)) < 0) goto out;
        if (o->progress && ((ch + 1) * 10 / n_cap != ch * 10 / n_cap || ch + 1 == n_cap))
            fprintf(o->progress, "%s: thresholds: captured chunk %d/%d\n", o->prog ? o->prog : "pinfer", ch + 1, n_cap);
    }
    pi_forward_set_capture(c.h.f, NULL, NULL);
    out->tokens[0] = (uint64_t)n_cap * (uint64_t)ctx;

    /* 2. the grid and its errors */
    rc = -PI_ERR_NOMEM;
    sorted = malloc((size_t)S * (size_t)ff * sizeof *sorted);
    D = malloc((size_t)S * (size_t)ff * sizeof *D);
    Y = malloc((size_t)S * (size_t)d * sizeof *Y);
    e = malloc((size_t)hp->n_layer * PI_THR_LEVELS * sizeof *e);
    c.t = malloc((size_t)hp->n_layer * PI_THR_LEVELS * sizeof *c.t);
    c.path = malloc((size_t)c.steps * sizeof *c.path);
    c.level = calloc((size_t)hp->n_layer, sizeof *c.level);
    c.gm = malloc((size_t)hp->n_layer * (size_t)ff * sizeof *c.gm);
    c.pts = calloc((size_t)c.steps + 1, sizeof *c.pts);
    c.pts_layer = calloc(((size_t)c.steps + 1) * (size_t)hp->n_layer, sizeof *c.pts_layer);
    if (!sorted || !D || !Y || !e || !c.t || !c.path || !c.level || !c.gm || !c.pts || !c.pts_layer) goto out;
    for (int il = 0; il < hp->n_layer; il++) {
        PI_ASSERT(cap.kept[il] == cap.kept[0] && cap.kept[il] > 0);
        layer_grid(pi_forward_pool(c.h.f), &m->layers[il], &cap, il, c.t + (size_t)il * PI_THR_LEVELS,
                   e + (size_t)il * PI_THR_LEVELS, sorted, D, Y);
    }
    if (o->progress)
        fprintf(o->progress, "%s: thresholds: errors of %d levels in %d layers measured over %d tokens\n",
                o->prog ? o->prog : "pinfer", PI_THR_LEVELS, hp->n_layer, cap.kept[0]);

    /* 4. the modes, on the held-out chunks */
    c.h.chunks = chunks + (size_t)n_cap * (size_t)ctx;
    c.h.n = o->held_out_chunks;
    c.h.ctx = ctx;
    c.h.n_vocab = hp->n_vocab;
    c.h.first = PI_MAX(1, ctx / 2);
    c.h.base = malloc((size_t)c.h.n * (size_t)(ctx - c.h.first) * (size_t)hp->n_vocab * sizeof *c.h.base);
    c.h.logits = malloc((size_t)ctx * (size_t)hp->n_vocab * sizeof *c.h.logits);
    c.h.logq = malloc((size_t)hp->n_vocab * sizeof *c.h.logq);
    if (!c.h.base || !c.h.logits || !c.h.logq || pi_sparse_stats_init(&c.h.st, m) != 0) goto out;
    if ((rc = run_heldout(&c.h, NULL, NULL, NULL)) < 0) goto out;
    out->tokens[1] = (uint64_t)c.h.n * (uint64_t)(ctx - c.h.first);
    c.pts[0] = (struct point){true, 0.0, 1.0, 0.0}; /* step 0 is the dense FFN */

    /* 3a. Each layer's sensitivity: a perturbation of the residual early in the model is amplified by
     * the layers after it, which the local errors do not see (on the demo SwiGLU model, skipping 1%
     * of layer 0's pairs cost as much KLD as 16% of layer 7's). Layer il alone at level
     * PI_THR_PROBE gives the held-out KLD per unit of its local error: its gain. */
    if (!(gain = malloc((size_t)hp->n_layer * sizeof *gain))) {
        rc = -PI_ERR_NOMEM;
        goto out;
    }
    const bool by_sparsity = o->sparsity[0] > 0.0f && o->sparsity[1] > 0.0f; /* no quality to protect: no probes */
    for (int il = 0; il < hp->n_layer; il++) {
        struct point pr;
        if (by_sparsity) {
            gain[il] = 1.0;
            continue;
        }
        memset(c.level, 0, (size_t)hp->n_layer * sizeof *c.level);
        c.level[il] = PI_THR_PROBE;
        levels_to_gm(&c);
        if ((rc = run_heldout(&c.h, c.gm, &pr, NULL)) < 0) goto out;
        const double el = e[(size_t)il * PI_THR_LEVELS + PI_THR_PROBE];
        gain[il] = PI_MAX(pr.kld, 1e-9) / PI_MAX(el, 1e-12);
        if (o->progress)
            fprintf(o->progress, "%s: thresholds: layer %d alone at %d%%: KLD %.5f, local error %.3g\n",
                    o->prog ? o->prog : "pinfer", il, 100 * PI_THR_PROBE / PI_THR_LEVELS, pr.kld, el);
    }

    /* 3b. the greedy path over the weighted errors */
    memset(c.level, 0, (size_t)hp->n_layer * sizeof *c.level);
    for (int s = 0; s < c.steps; s++) {
        int best = -1;
        double best_inc = 0.0;
        for (int il = 0; il < hp->n_layer; il++) {
            if (c.level[il] >= PI_THR_LEVELS - 1) continue;
            const double *el = e + (size_t)il * PI_THR_LEVELS;
            double inc = gain[il] * (el[c.level[il] + 1] - el[c.level[il]]);
            if (best < 0 || inc < best_inc) best = il, best_inc = inc;
        }
        PI_ASSERT(best >= 0);
        c.path[s] = best;
        c.level[best]++;
    }
    out->layer_sparsity = malloc((size_t)hp->n_layer * 2 * sizeof *out->layer_sparsity);
    if (!(out->gate_min = malloc((size_t)hp->n_layer * 2 * (size_t)ff * sizeof *out->gate_min)) ||
        !out->layer_sparsity) {
        rc = -PI_ERR_NOMEM;
        goto out;
    }
    out->n_layer = hp->n_layer;
    int lo = 0;
    for (int k = 0; k < 2; k++) {
        int step;
        const struct point *p;
        if (o->sparsity[k] > 0.0f) /* each step raises one layer by one level: 1 / (n_layer LEVELS) of the pairs */
            step = PI_MIN(c.steps, (int)ceil((double)o->sparsity[k] * hp->n_layer * PI_THR_LEVELS - 1e-9));
        else if ((rc = search(&c, k, lo, &step)) < 0) goto out;
        if ((rc = point_at(&c, step, &p)) < 0) goto out;
        thresholds_at(&c, step);
        for (int il = 0; il < hp->n_layer; il++)
            memcpy(out->gate_min + ((size_t)il * 2 + (size_t)k) * (size_t)ff, c.gm + (size_t)il * (size_t)ff,
                   (size_t)ff * sizeof *c.gm);
        out->kld[k] = (float)p->kld;
        out->top1[k] = (float)p->top1;
        out->sparsity[k] = (float)p->sparsity;
        for (int il = 0; il < hp->n_layer; il++)
            out->layer_sparsity[2 * (size_t)il + (size_t)k] =
                c.pts_layer[(size_t)step * (size_t)hp->n_layer + (size_t)il];
        lo = step;
    }
    rc = 0;
out:
    if (rc < 0) pi_thr_result_free(out);
    pi_sparse_stats_free(&c.h.st);
    pi_forward_destroy(&c.h.f);
    free(cap.seen), free(cap.kept), free(cap.a), free(cap.act), free(cap.r2);
    free(sorted), free(D), free(Y), free(e), free(gain);
    free(c.pts_layer), free(c.t), free(c.path), free(c.level), free(c.gm), free(c.pts);
    free(c.h.base), free(c.h.logits), free(c.h.logq);
    return rc;
}
