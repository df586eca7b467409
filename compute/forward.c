/*
 * compute/forward.c - the llama forward pass on the CPU (see compute/forward.h for the contract).
 *
 * It reads as the model does, one token row of the residual stream h (n_embd) at a time:
 *
 *   h = token_embd[token]
 *   for each layer:
 *       x = rmsnorm(h) * attn_norm
 *       q, k, v = Wq x, Wk x, Wv x;  rope(q), rope(k);  cache k, v at the token's position
 *       h += Wo concat_heads(softmax(q k^T / sqrt(head_dim)) v)      (GQA: n_head / n_head_kv
 *                                                                      query heads share a kv head)
 *       x = rmsnorm(h) * ffn_norm
 *       h += sum over neurons i of act(gate_i . x, up_i . x) * down[:, i]
 *   logits = Woutput (rmsnorm(h) * output_norm)
 *
 * Batches of n rows go through pi_matmul (one pass over each weight for all rows); a single row
 * (decode) goes through pi_matvec, which gives each row the same bits (batch invariance,
 * compute/forward.h).
 */
#include "config.h"

#include <float.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "compute/forward.h"
#include "compute/sparse.h"
#include "model/sidecar.h"
#include "lib/log.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/quant.h"

struct pi_forward {
    const pi_model_t *m;
    struct pi_forward_opts o;
    pi_pool_t *pool;
    pi_kv_t *kv;
    pi_ffn_work_t *ffw;
    int n_threads;      /* pi_pool_size(pool) */
    /* scratch for n_batch rows; d = n_embd, q_dim = n_head * head_dim, kv_dim = n_head_kv * head_dim */
    float *h;           /* (n_batch, d) residual stream */
    float *x;           /* (n_batch, d) normed input of the current step */
    float *q;           /* (n_batch, q_dim) */
    float *k;           /* (n_batch, kv_dim) */
    float *v;           /* (n_batch, kv_dim) */
    float *att;         /* (n_batch, q_dim) attention output, heads concatenated */
    float *gate;        /* (n_batch, n_ff) */
    float *up;          /* (n_batch, n_ff) */
    float *out;         /* (n_batch, d) a step's contribution to h */
    float *cs;          /* (n_threads, n_rot) rope table of one position, one per pool thread */
    float *scores;      /* (n_threads, PI_ATTN_GROUP_MAX, n_ctx) attention weights, one block per pool thread */
    int *pend;          /* (n_seq) lengths while checking a batch */
    float *ref_rows;    /* (n_threads, max cols) dequantised weight rows (reference mode only) */
    float *ref_x;       /* (n_batch, max cols) rounded inputs (round_activations only) */
    void *ref_xq;       /* one quantised input row (round_activations only) */
    int64_t ref_cols;   /* widest weight row */
    int64_t active;     /* FFN neurons that were non-zero (ReLU/dReLU models) */
    struct pi_ffn_stats *stats;  /* activation statistics being counted, or NULL (pi_forward_set_stats) */
    /* sparse execution (pi_forward_set_sparse): pred NULL = dense */
    const struct pi_predictors *pred;
    enum pi_sparsity sparsity;
    int64_t recall_every;
    uint64_t sp_steps;          /* batch steps run with predictors (the recall schedule) */
    bool recall_now;            /* the current step measures the recall */
    struct pi_sparse_stats *sp_stats;
    int64_t mask_words;
    uint64_t *mask;             /* (n_batch, mask_words) */
    float *pred_scr;            /* pi_predictor_scratch(n_batch) */
    int32_t *list;              /* (n_ff) */
    /* activation thresholds (pi_forward_set_gate_min): NULL = none */
    const float *gate_min;      /* (n_layer, n_ff) */
    bool *gm_on;                /* (n_layer): the layer has a threshold above 0 */
    struct pi_sparse_stats *gm_stats;
    pi_ffn_capture_fn capture;   /* sample capture, or NULL (pi_forward_set_capture) */
    void *capture_ctx;
};

void pi_forward_opts_default(struct pi_forward_opts *o)
{
    memset(o, 0, sizeof *o);
    o->n_threads = 1;
    o->n_seq = 1;
    o->n_batch = 512;
    o->kv_type = PI_TYPE_F32;
}

static float *falloc(size_t n)
{
    void *p = NULL;
    return posix_memalign(&p, 64, PI_MAX(n, 1) * sizeof(float)) == 0 ? p : NULL;
}

/* Positions per sequence beyond any real model (llama.cpp's largest are 10M): past it the per-thread
 * score rows alone would be gigabytes, so a context_length this large is an error, not a default. */
#define MAX_CTX (1 << 24)

pi_forward_t *pi_forward_new(const pi_model_t *m, const struct pi_forward_opts *opts)
{
    const struct pi_hparams *hp = &m->hp;
    struct pi_forward_opts o;
    if (opts) o = *opts;
    else pi_forward_opts_default(&o);
    if (o.n_threads <= 0) o.n_threads = 1;
    if (o.n_seq <= 0) o.n_seq = 1;
    if (o.n_batch <= 0) o.n_batch = 512;
    if (o.n_ctx <= 0) o.n_ctx = pi_model_default_ctx(m);
    if (o.kv_type != PI_TYPE_F32 && o.kv_type != PI_TYPE_F16) {
        pi_error("forward: kv cache type %s is not f32 or f16", pi_type_name(o.kv_type));
        return NULL;
    }
    if (o.n_ctx > MAX_CTX) {
        pi_error("forward: context of %d positions (n_ctx, default the model's context_length) exceeds %d",
                 o.n_ctx, MAX_CTX);
        return NULL;
    }
    /* a batch never holds more rows than the cache has positions: larger scratch would be unused */
    if ((int64_t)o.n_batch > (int64_t)o.n_ctx * o.n_seq) o.n_batch = (int)((int64_t)o.n_ctx * o.n_seq);
    for (int il = 0; !o.no_ffn && il < hp->n_layer; il++) {
        if (!m->layers[il].ffn_down_t.data) {
            pi_error("forward: layer %d has no ffn_down_t (model bound with no_down_t)", il);
            return NULL;
        }
    }
    pi_forward_t *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->m = m;
    f->o = o;
    size_t B = (size_t)o.n_batch, d = (size_t)hp->n_embd, ff = (size_t)hp->n_ff;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    f->pool = o.n_threads > 1 ? pi_pool_new(o.n_threads) : NULL;
    f->n_threads = f->pool ? pi_pool_size(f->pool) : 1;
    f->kv = pi_kv_new(hp->n_layer, (int)kvd, o.n_ctx, o.n_seq, o.kv_type);
    if (!f->kv) { /* logged; refused before the scratch sized by n_ctx is allocated */
        pi_forward_destroy(&f);
        return NULL;
    }
    f->ffw = pi_ffn_work_new(hp->n_embd, f->n_threads);
    f->h = falloc(B * d);
    f->x = falloc(B * d);
    f->q = falloc(B * qd);
    f->k = falloc(B * kvd);
    f->v = falloc(B * kvd);
    f->att = falloc(B * qd);
    f->gate = falloc(B * ff);
    f->up = falloc(B * ff);
    f->out = falloc(B * d);
    f->cs = falloc((size_t)f->n_threads * (size_t)hp->n_rot);
    f->scores = falloc((size_t)f->n_threads * PI_ATTN_GROUP_MAX * (size_t)o.n_ctx);
    f->pend = malloc((size_t)o.n_seq * sizeof *f->pend);
    f->ref_cols = (int64_t)PI_MAX(PI_MAX(d, ff), qd);
    if (o.f32_activations) f->ref_rows = falloc((size_t)f->n_threads * (size_t)f->ref_cols);
    if (o.f32_activations && o.round_activations) {
        f->ref_x = falloc(B * (size_t)f->ref_cols);
        f->ref_xq = falloc((size_t)f->ref_cols * 2); /* >= any activation format's row (Q8_0: 34/32) */
    }
    if ((o.n_threads > 1 && !f->pool) || !f->kv || !f->ffw || !f->h || !f->x || !f->q || !f->k || !f->v ||
        !f->att || !f->gate || !f->up || !f->out || !f->cs || !f->scores || !f->pend ||
        (o.f32_activations && !f->ref_rows) || (o.f32_activations && o.round_activations && (!f->ref_x || !f->ref_xq))) {
        pi_error("forward: out of memory (batch %d, ctx %d, %d sequences)", o.n_batch, o.n_ctx, o.n_seq);
        pi_forward_destroy(&f);
        return NULL;
    }
    return f;
}

void pi_forward_destroy(pi_forward_t **pf)
{
    pi_forward_t *f = pf ? *pf : NULL;
    if (!f) return;
    pi_pool_destroy(&f->pool);
    pi_kv_destroy(&f->kv);
    pi_ffn_work_destroy(&f->ffw);
    free(f->h);
    free(f->x);
    free(f->q);
    free(f->k);
    free(f->v);
    free(f->att);
    free(f->gate);
    free(f->up);
    free(f->out);
    free(f->cs);
    free(f->scores);
    free(f->pend);
    free(f->mask);
    free(f->pred_scr);
    free(f->gm_on);
    free(f->list);
    free(f->ref_rows);
    free(f->ref_x);
    free(f->ref_xq);
    free(f);
    *pf = NULL;
}

const pi_model_t *pi_forward_model(const pi_forward_t *f) { return f->m; }
pi_kv_t *pi_forward_kv(pi_forward_t *f) { return f->kv; }
pi_pool_t *pi_forward_pool(pi_forward_t *f) { return f->pool; }
int64_t pi_forward_active_neurons(const pi_forward_t *f) { return f->active; }

void pi_forward_set_stats(pi_forward_t *f, struct pi_ffn_stats *s)
{
    PI_ASSERT(!s || (s->n_layer == f->m->hp.n_layer && s->n_ff == f->m->hp.n_ff && s->active &&
                     (!s->hist || s->n_hist == PI_SIDECAR_HIST_BINS)));
    f->stats = s;
}

int pi_forward_set_sparse(pi_forward_t *f, const struct pi_predictors *pred, enum pi_sparsity mode, int64_t recall_every,
                          struct pi_sparse_stats *stats)
{
    const struct pi_hparams *hp = &f->m->hp;
    f->pred = NULL;
    if (!pred || mode == PI_SPARSITY_OFF) return 0;
    if (hp->act == PI_FFN_ACT_SILU || pred->n_layer != hp->n_layer || pred->n_ff != hp->n_ff || pred->n_embd != hp->n_embd ||
        !stats || stats->n_layer != hp->n_layer || recall_every < 0 || f->o.no_ffn || f->o.f32_activations) {
        pi_error("forward: predictors of another shape, a SwiGLU model, or a mode without the FFN kernels");
        return -PI_ERR_INVAL;
    }
    size_t B = (size_t)f->o.n_batch;
    f->mask_words = pi_sparse_mask_words(hp->n_ff);
    if (!f->mask) f->mask = malloc(B * (size_t)f->mask_words * sizeof *f->mask);
    if (!f->list) f->list = malloc((size_t)hp->n_ff * sizeof *f->list);
    free(f->pred_scr);
    f->pred_scr = malloc(pi_predictor_scratch(pred, (int64_t)B) * sizeof *f->pred_scr);
    if (!f->mask || !f->list || !f->pred_scr || pi_ffn_work_reserve(f->ffw, (int64_t)B) != 0) return -PI_ERR_NOMEM;
    f->pred = pred;
    f->sparsity = mode;
    f->recall_every = recall_every;
    f->sp_stats = stats;
    return 0;
}

int pi_forward_set_gate_min(pi_forward_t *f, const float *gate_min, struct pi_sparse_stats *stats)
{
    const struct pi_hparams *hp = &f->m->hp;
    f->gate_min = NULL;
    if (!gate_min) return 0;
    if (!f->gm_on && !(f->gm_on = malloc((size_t)hp->n_layer * sizeof *f->gm_on))) return -PI_ERR_NOMEM;
    for (int il = 0; il < hp->n_layer; il++) {
        f->gm_on[il] = false;
        for (int64_t j = 0; j < hp->n_ff; j++) {
            const float t = gate_min[(size_t)il * (size_t)hp->n_ff + (size_t)j];
            if (!(t >= 0.0f && t <= FLT_MAX)) {
                pi_error("forward: activation threshold of layer %d neuron %lld is %g", il, (long long)j, (double)t);
                return -PI_ERR_INVAL;
            }
            f->gm_on[il] |= t > 0.0f;
        }
    }
    if (!stats || stats->n_layer != hp->n_layer || f->o.no_ffn || f->o.f32_activations) {
        pi_error("forward: activation thresholds need a stats buffer and the FFN kernels");
        return -PI_ERR_INVAL;
    }
    f->gate_min = gate_min;
    f->gm_stats = stats;
    return 0;
}

/* The FFN of layer il over x (n, d) with the predictors: f->out (n, d) = each token's predicted
 * neurons (compute/sparse.h: neuron by neuron, or densely with the others zeroed), counted into the
 * stats. The recall's true gates go through f->gate after the FFN is done with it. */
static void ffn_sparse(pi_forward_t *f, int il, int n, const float *h)
{
    const struct pi_hparams *hp = &f->m->hp;
    const struct pi_layer *L = &f->m->layers[il];
    int64_t predicted = pi_predictor_eval(f->pool, f->pred, il, f->sparsity, pi_predictor_input(f->pred, h, f->x), n,
                                          f->pred_scr, f->mask, f->mask_words);
    int64_t active;
    if (pi_sparse_dense(f->mask, n, f->mask_words, NULL, hp->n_ff)) /* every row once, the others zeroed */
        active = pi_sparse_ffn_dense_layer(f->pool, L, hp->act, f->x, n, f->mask, f->mask_words, f->gate, f->up, f->out);
    else
        active = pi_sparse_ffn(f->pool, f->ffw, L, NULL, false, hp->act, f->x, n, f->mask, f->mask_words, f->list, f->out, NULL);
    pi_sparse_note(f->sp_stats, il, n, predicted);
    if (f->recall_now) pi_sparse_recall(f->sp_stats, f->pool, f->m, il, f->x, n, f->mask, f->mask_words, f->gate, f->up);
    f->active += active;
}

void pi_forward_set_capture(pi_forward_t *f, pi_ffn_capture_fn fn, void *ctx)
{
    f->capture = fn;
    f->capture_ctx = ctx;
}

/* The statistics hook: gate (n, n_ff) before the activation; act (n, n_ff) after it. */
static void stats_gate(struct pi_ffn_stats *s, int il, int n, const float *gate)
{
    uint64_t *cnt = s->active + (size_t)il * (size_t)s->n_ff;
    for (int i = 0; i < n; i++) {
        const float *g = gate + (size_t)i * (size_t)s->n_ff;
        for (int j = 0; j < s->n_ff; j++) cnt[j] += g[j] > 0.0f;
    }
    if (il == 0) s->tokens += (uint64_t)n;
}

static void stats_act(struct pi_ffn_stats *s, int il, int n, const float *act)
{
    if (!s->hist) return;
    uint64_t *h = s->hist + (size_t)il * (size_t)s->n_hist;
    for (size_t j = 0; j < (size_t)n * (size_t)s->n_ff; j++) h[pi_sidecar_hist_bin(fabsf(act[j]))]++;
}

struct ref_task {
    pi_forward_t *f;
    const struct pi_weight *W;
    const float *X;
    int n;
    float *Y;
};

/* Reference products for weight rows [begin, end): dequantise the row, f32 inputs, double sums. */
static void ref_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct ref_task *t = ctx;
    int64_t cols = t->W->cols;
    float *row = t->f->ref_rows + (size_t)thread * (size_t)t->f->ref_cols;
    for (int64_t r = begin; r < end; r++) {
        pi_dequant_row(t->W->type, pi_weight_row(t->W, r), row, cols);
        for (int i = 0; i < t->n; i++) {
            const float *x = t->X + (size_t)i * (size_t)cols;
            double s = 0.0;
            for (int64_t j = 0; j < cols; j++) s += (double)row[j] * x[j];
            t->Y[(size_t)i * (size_t)t->W->rows + (size_t)r] = (float)s;
        }
    }
}

/* Y (n, W.rows) = X (n, W.cols) @ W^T: a matvec for one row, a matmul otherwise. */
static void project(pi_forward_t *f, const struct pi_weight *W, const float *X, int n, float *Y)
{
    if (f->o.f32_activations) {
        enum pi_type at = pi_vec_dot_type(W->type);
        if (f->o.round_activations && at != PI_TYPE_F32) {
            /* the rounding llama.cpp's CPU path applies (experiment; see the option) */
            for (int i = 0; i < n; i++) {
                const float *xi = X + (size_t)i * (size_t)W->cols;
                float *ri = f->ref_x + (size_t)i * (size_t)W->cols;
                pi_quantize_act(W->type, xi, f->ref_xq, W->cols);
                pi_dequant_row(at, f->ref_xq, ri, W->cols);
            }
            X = f->ref_x;
        }
        struct ref_task t = {f, W, X, n, Y};
        pi_pool_for(f->pool, W->rows, 16, ref_range, &t);
        return;
    }
    if (n == 1) pi_matvec_w(f->pool, W, X, Y);
    else pi_matmul_w(f->pool, W, X, n, Y);
}

/* Y[i] = X @ W[i]^T for the nw (<= 4) products of one input (q, k, v; gate, up): project's results,
 * in one pool job where the weights are packed alike (pi_matmul_wn). */
static void project_n(pi_forward_t *f, const struct pi_weight *const *W, int nw, const float *X, int n,
                      float *const *Y)
{
    if (f->o.f32_activations) {
        for (int i = 0; i < nw; i++) project(f, W[i], X, n, Y[i]);
        return;
    }
    pi_matmul_wn(f->pool, W, nw, X, n, Y);
}

#define ACT_CHUNK 1024 /* FFN activations per pool index */

/* The FFN activation over the pool: element-wise, so the same bits as one pi_ffn_act(_min) call. */
struct act_task {
    enum pi_ffn_act act;
    const float *gmin; /* (ff) thresholds, or NULL */
    float *g;          /* (n, ff) gate in, activation out */
    const float *u;    /* (n, ff) */
    int64_t ff, per_row; /* chunks per row */
    int64_t kept;        /* pi_ffn_act_min's count, summed atomically */
};

static void act_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct act_task *t = ctx;
    int64_t kept = 0;
    (void)thread;
    for (int64_t i = begin; i < end; i++) {
        int64_t c0 = i % t->per_row * ACT_CHUNK, len = PI_MIN(ACT_CHUNK, t->ff - c0);
        size_t off = (size_t)(i / t->per_row * t->ff + c0);
        if (t->gmin) kept += pi_ffn_act_min(t->act, t->gmin + c0, t->g + off, t->u + off, 1, len);
        else pi_ffn_act(t->act, t->g + off, t->u + off, len);
    }
    __atomic_fetch_add(&t->kept, kept, __ATOMIC_RELAXED);
}

/* g (n, ff) = act(g, u) (with the thresholds gmin where not NULL); returns pi_ffn_act_min's count of
 * kept activations (0 without thresholds). Split over the pool: a prompt's activations were a serial
 * tenth of its time on two threads. */
static int64_t ffn_act(pi_forward_t *f, const float *gmin, int n, int64_t ff)
{
    struct act_task t = {f->m->hp.act, gmin, f->gate, f->up, ff, (ff + ACT_CHUNK - 1) / ACT_CHUNK, 0};
    pi_pool_for(f->pool, (int64_t)n * t.per_row, 1, act_range, &t);
    return t.kept;
}

#define ROW_GRAIN 4 /* batch rows per pool index of the per-row steps (a 2048-wide row: about 2 us) */

/* The per-row steps over the pool: each row computed exactly as alone, whichever thread takes it (a
 * 512-token prompt's RMSNorms were 2% of its samples on one thread while the other waited). */
struct row_task {
    pi_forward_t *f;
    const float *h, *w; /* norm: h (n, d) in, w (d) */
    float *x;           /* norm: (n, d) out */
    int il;             /* rope: the layer whose cache rows are stored */
    const int32_t *seq, *pos;
};

static void norm_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    const struct row_task *t = ctx;
    const int64_t d = t->f->m->hp.n_embd;
    (void)thread;
    for (int64_t i = begin; i < end; i++) pi_rmsnorm(t->x + i * d, t->h + i * d, t->w, d, t->f->m->hp.rms_eps);
}

/* x (n, d) = rmsnorm(h) * w, row by row. */
static void norm_rows(pi_forward_t *f, const float *h, const float *w, int n, float *x)
{
    struct row_task t = {.f = f, .h = h, .w = w, .x = x};
    pi_pool_for(f->pool, n, ROW_GRAIN, norm_range, &t);
}

/* Rows [begin, end): RoPE on q and k at each row's position (the table in the thread's own cs), then
 * k and v into the cache. */
static void rope_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    const struct row_task *t = ctx;
    pi_forward_t *f = t->f;
    const struct pi_hparams *hp = &f->m->hp;
    const size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    float *cs = f->cs + (size_t)thread * (size_t)hp->n_rot;
    for (int64_t i = begin; i < end; i++) {
        pi_rope_table(cs, t->pos[i], hp->n_rot, hp->rope_base);
        pi_rope_apply(f->q + i * qd, hp->n_head, hp->head_dim, hp->n_rot, cs);
        pi_rope_apply(f->k + i * kvd, hp->n_head_kv, hp->head_dim, hp->n_rot, cs);
        pi_kv_store(f->kv, t->seq[i], t->il, t->pos[i], f->k + i * kvd, f->v + i * kvd);
    }
}

static void add_rows(float *h, const float *o, size_t n)
{
    for (size_t j = 0; j < n; j++) h[j] += o[j];
}

/* ---------------------------------------------------------------- batch bookkeeping */

/* Check tokens, sequences and positions without changing anything; fills f->pend. */
static int check_batch(pi_forward_t *f, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n)
{
    int n_seq = f->o.n_seq;
    if (n < 0) return -PI_ERR_INVAL;
    for (int s = 0; s < n_seq; s++) f->pend[s] = pi_kv_len(f->kv, s);
    for (int i = 0; i < n; i++) {
        if (tokens && (tokens[i] < 0 || tokens[i] >= f->m->hp.n_vocab)) {
            pi_error("forward: token %d at batch row %d outside the vocabulary [0, %d)", tokens[i], i,
                     f->m->hp.n_vocab);
            return -PI_ERR_INVAL;
        }
        if (seq[i] < 0 || seq[i] >= n_seq) {
            pi_error("forward: sequence %d at batch row %d outside [0, %d)", seq[i], i, n_seq);
            return -PI_ERR_RANGE;
        }
        if (pos[i] != f->pend[seq[i]] || pos[i] >= f->o.n_ctx) {
            pi_error("forward: position %d at batch row %d: sequence %d continues at %d (context %d)", pos[i],
                     i, seq[i], f->pend[seq[i]], f->o.n_ctx);
            return -PI_ERR_RANGE;
        }
        f->pend[seq[i]]++;
    }
    return 0;
}

int pi_forward_begin(pi_forward_t *f, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n)
{
    int rc;
    if (n > f->o.n_batch) {
        pi_error("forward: batch of %d rows exceeds n_batch %d", n, f->o.n_batch);
        return -PI_ERR_RANGE;
    }
    if ((rc = check_batch(f, tokens, seq, pos, n)) < 0) return rc;
    for (int i = 0; i < n; i++)
        if ((rc = pi_kv_reserve(f->kv, seq[i])) < 0) return rc;
    if (f->pred) { /* the recall schedule counts batch steps */
        f->recall_now = f->recall_every > 0 && f->sp_steps % (uint64_t)f->recall_every == 0;
        f->sp_steps++;
    }
    return 0;
}

void pi_forward_commit(pi_forward_t *f, const int32_t *seq, const int32_t *pos, int n)
{
    for (int i = 0; i < n; i++) {
        PI_ASSERT(seq[i] >= 0 && seq[i] < f->o.n_seq && pos[i] >= 0 && pos[i] < f->o.n_ctx);
        if (pos[i] + 1 > pi_kv_len(f->kv, seq[i])) pi_kv_set_len(f->kv, seq[i], pos[i] + 1);
    }
}

int pi_forward_seq_len(const pi_forward_t *f, int seq)
{
    return seq >= 0 && seq < f->o.n_seq ? pi_kv_len(f->kv, seq) : 0;
}

int pi_forward_seq_truncate(pi_forward_t *f, int seq, int n)
{
    if (seq < 0 || seq >= f->o.n_seq || n < 0 || n > pi_kv_len(f->kv, seq)) {
        pi_error("forward: cannot truncate sequence %d to %d positions", seq, n);
        return -PI_ERR_RANGE;
    }
    pi_kv_set_len(f->kv, seq, n);
    return 0;
}

void pi_forward_seq_reset(pi_forward_t *f, int seq)
{
    if (seq < 0 || seq >= f->o.n_seq) return;
    pi_kv_set_len(f->kv, seq, 0);
}

/* ---------------------------------------------------------------- the steps */

void pi_forward_embed(pi_forward_t *f, const int32_t *tokens, int n, float *h)
{
    const struct pi_weight *E = &f->m->token_embd;
    for (int i = 0; i < n; i++) {
        PI_ASSERT(tokens[i] >= 0 && tokens[i] < E->rows);
        pi_dequant_row(E->type, pi_weight_row(E, tokens[i]), h + (size_t)i * E->cols, E->cols);
    }
}

struct attn_task {
    pi_forward_t *f;
    int il;
    const int32_t *seq, *pos;
    int n;         /* batch rows */
    int gs, parts; /* query heads per item (a part of a kv head's group), parts per group */
    int rows;      /* batch rows per item: 1, or up to PI_ATTN_GROUP_MAX / gs */
};

/* Items are (tile, kv head, part): item = (tile * n_head_kv + kv head) * parts + part; a tile is up to
 * `rows` consecutive batch rows, a part gs consecutive query heads of the kv head's group. The tile's
 * rows of one sequence go to pi_attn_tile together (the keys and values read once for all their
 * heads, each row up to its own position); every query's bits are its own (kernels/cpu/ops.h), so the
 * tiling never shows in the results. */
static void attn_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct attn_task *t = ctx;
    pi_forward_t *f = t->f;
    const struct pi_hparams *hp = &f->m->hp;
    int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    size_t qd = (size_t)hp->n_head * hd, es = pi_kv_type(f->kv) == PI_TYPE_F32 ? 4 : 2;
    float scale = (float)(1.0 / sqrt((double)hd));
    float *scores = f->scores + (size_t)thread * (size_t)f->o.n_ctx * PI_ATTN_GROUP_MAX;
    float *o[PI_ATTN_GROUP_MAX];
    const float *q[PI_ATTN_GROUP_MAX];
    int nk[PI_ATTN_GROUP_MAX];
    for (int64_t it = begin; it < end; it++) {
        const int part = (int)(it % t->parts), kvh = (int)(it / t->parts % hp->n_head_kv);
        const int i0 = (int)(it / t->parts / hp->n_head_kv) * t->rows, i1 = PI_MIN(t->n, i0 + t->rows);
        const int h0 = kvh * group + part * t->gs, g = PI_MIN(t->gs, group - part * t->gs);
        const size_t off = (size_t)kvh * (size_t)hd * es;
        for (int r0 = i0, r1; r0 < i1; r0 = r1) { /* runs of one sequence's rows */
            for (r1 = r0 + 1; r1 < i1 && t->seq[r1] == t->seq[r0];) r1++;
            const char *k0 = pi_kv_k(f->kv, t->seq[r0], t->il, 0), *v0 = pi_kv_v(f->kv, t->seq[r0], t->il, 0);
            int n_q = 0; /* queries gathered for the next call, at most PI_ATTN_GROUP_MAX */
            for (int i = r0; i < r1; i++)
                for (int h = h0; h < h0 + g; h++) {
                    o[n_q] = f->att + i * qd + (size_t)h * hd;
                    q[n_q] = f->q + i * qd + (size_t)h * hd;
                    nk[n_q++] = t->pos[i] + 1;
                    if (n_q == PI_ATTN_GROUP_MAX || (i == r1 - 1 && h == h0 + g - 1)) {
                        pi_attn_tile(o, q, nk, n_q, k0 + off, v0 + off, pi_kv_row_bytes(f->kv), pi_kv_type(f->kv), hd,
                                     scale, scores);
                        n_q = 0;
                    }
                }
        }
    }
}

void pi_forward_attn(pi_forward_t *f, int il, const int32_t *seq, const int32_t *pos, int n, float *h)
{
    const struct pi_hparams *hp = &f->m->hp;
    const struct pi_layer *L = &f->m->layers[il];
    size_t d = (size_t)hp->n_embd;
    PI_ASSERT(n >= 1 && n <= f->o.n_batch && il >= 0 && il < hp->n_layer);
    norm_rows(f, h, L->attn_norm, n, f->x);
    const struct pi_weight *qkv[3] = {&L->attn_q, &L->attn_k, &L->attn_v};
    float *const out[3] = {f->q, f->k, f->v};
    project_n(f, qkv, 3, f->x, n, out);
    for (int i = 0; i < n; i++) PI_ASSERT(pos[i] >= 0 && pos[i] < f->o.n_ctx);
    struct row_task rt = {.f = f, .il = il, .seq = seq, .pos = pos};
    pi_pool_for(f->pool, n, ROW_GRAIN, rope_range, &rt); /* rows at distinct positions: distinct cache rows */
    /* every row's keys are cached before any row attends: row i sees positions 0..pos[i] of its
     * sequence, which includes earlier rows of this batch (causal within the batch) */
    /* each kv head's group in as few parts as still give every thread an item; then rows in tiles of
     * up to PI_ATTN_GROUP_MAX queries (several rows where the group is smaller), still an item a thread */
    const int group = hp->n_head / hp->n_head_kv, items = n * hp->n_head_kv;
    const int parts = PI_MIN(group, PI_MAX(1, (f->n_threads + items - 1) / items));
    const int gs = (group + parts - 1) / parts, np = (group + gs - 1) / gs;
    const int rows = PI_MAX(1, PI_MIN(PI_ATTN_GROUP_MAX / gs, items * np / f->n_threads));
    struct attn_task task = {f, il, seq, pos, n, gs, np, rows};
    const int64_t tiles = (n + rows - 1) / rows;
    pi_pool_for(f->pool, tiles * hp->n_head_kv * np, 1, attn_range, &task);
    project(f, &L->attn_output, f->att, n, f->out);
    add_rows(h, f->out, (size_t)n * d);
}

void pi_forward_ffn_input(pi_forward_t *f, int il, int n, const float *h, float *x)
{
    PI_ASSERT(n >= 0 && il >= 0 && il < f->m->hp.n_layer);
    norm_rows(f, h, f->m->layers[il].ffn_norm, n, x);
}

void pi_forward_ffn(pi_forward_t *f, int il, int n, float *h)
{
    PI_ASSERT(!f->o.no_ffn); /* its rows may be absent (pi_forward_opts.no_ffn) */
    const struct pi_hparams *hp = &f->m->hp;
    const struct pi_layer *L = &f->m->layers[il];
    size_t d = (size_t)hp->n_embd, ff = (size_t)hp->n_ff;
    const float *gmin = f->gate_min && !f->stats && f->gm_on[il] ? f->gate_min + (size_t)il * ff : NULL;
    bool relu = hp->act != PI_FFN_ACT_SILU;
    int64_t active = 0;
    PI_ASSERT(n >= 1 && n <= f->o.n_batch && il >= 0 && il < hp->n_layer);
    norm_rows(f, h, L->ffn_norm, n, f->x);
    if (!f->stats && !f->capture && f->pred) {
        ffn_sparse(f, il, n, h); /* each token's predicted neurons only; the policy is not consulted */
        add_rows(h, f->out, (size_t)n * d);
        return;
    }
    /* Whole matrices, rows batched (pi_matmul) or one row (pi_matvec), bit for bit the same per row:
     * every row takes this path whatever the batch (compute/ffn-policy.h, batch invariance), the
     * activation thresholds zeroing the skipped neurons' activations. */
    const struct pi_weight *gu[2] = {&L->ffn_gate, &L->ffn_up};
    float *const out[2] = {f->gate, f->up};
    project_n(f, gu, 2, f->x, n, out);
    if (f->stats) stats_gate(f->stats, il, n, f->gate);
    if (f->capture) f->capture(f->capture_ctx, il, n, h, f->x, f->gate, f->up);
    if (gmin) active = ffn_act(f, gmin, n, (int64_t)ff);
    else ffn_act(f, NULL, n, (int64_t)ff);
    if (f->stats) stats_act(f->stats, il, n, f->gate);
    project(f, &L->ffn_down, f->gate, n, f->out);
    for (size_t j = 0; relu && !gmin && j < (size_t)n * ff; j++) active += f->gate[j] != 0.0f;
    if (f->gate_min && !f->stats) pi_sparse_note(f->gm_stats, il, n, gmin ? active : n * (int64_t)ff);
    if (relu) f->active += active;
    add_rows(h, f->out, (size_t)n * d);
}

void pi_forward_output(pi_forward_t *f, const float *h, int n, int n_out, float *logits)
{
    size_t d = (size_t)f->m->hp.n_embd;
    PI_ASSERT(n_out >= 1 && n_out <= n && n <= f->o.n_batch);
    norm_rows(f, h + (size_t)(n - n_out) * d, f->m->output_norm, n_out, f->x);
    project(f, &f->m->output, f->x, n_out, logits);
}

void pi_forward_output_rows(pi_forward_t *f, const float *h, int n, const int32_t *rows, int n_rows, float *logits)
{
    size_t d = (size_t)f->m->hp.n_embd;
    PI_ASSERT(n_rows >= 1 && n_rows <= n && n <= f->o.n_batch);
    for (int k = 0; k < n_rows; k++) {
        PI_ASSERT(rows[k] >= 0 && rows[k] < n && (k == 0 || rows[k] > rows[k - 1]));
        pi_rmsnorm(f->x + (size_t)k * d, h + (size_t)rows[k] * d, f->m->output_norm, (int64_t)d, f->m->hp.rms_eps);
    }
    project(f, &f->m->output, f->x, n_rows, logits);
}

/* ---------------------------------------------------------------- whole batches */

int pi_forward_batch(pi_forward_t *f, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n,
                     float *logits, bool all_logits)
{
    int rc = check_batch(f, tokens, seq, pos, n);
    size_t V = (size_t)f->m->hp.n_vocab;
    if (rc < 0) return rc;
    for (int c = 0; c < n; c += f->o.n_batch) {
        int nc = PI_MIN(f->o.n_batch, n - c);
        if ((rc = pi_forward_begin(f, tokens + c, seq + c, pos + c, nc)) < 0) return rc;
        pi_forward_embed(f, tokens + c, nc, f->h);
        for (int il = 0; il < f->m->hp.n_layer; il++) {
            pi_forward_attn(f, il, seq + c, pos + c, nc, f->h);
            pi_forward_ffn(f, il, nc, f->h);
        }
        pi_forward_commit(f, seq + c, pos + c, nc);
        if (logits && all_logits) pi_forward_output(f, f->h, nc, nc, logits + (size_t)c * V);
        else if (logits && c + nc == n) pi_forward_output(f, f->h, nc, 1, logits);
    }
    return 0;
}

int pi_forward_rows_check(const int32_t *rows, int n_rows, int n)
{
    if (n_rows < 0 || n_rows > n || (n_rows > 0) != (rows != NULL)) return -PI_ERR_INVAL;
    for (int k = 0; k < n_rows; k++)
        if (rows[k] < 0 || rows[k] >= n || (k > 0 && rows[k] <= rows[k - 1])) return -PI_ERR_INVAL;
    return 0;
}

int pi_forward_batch_rows(pi_forward_t *f, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n,
                          const int32_t *rows, int n_rows, float *logits)
{
    int rc;
    if (n < 1 || n > f->o.n_batch || pi_forward_rows_check(rows, n_rows, n) != 0 || (n_rows > 0 && !logits)) {
        pi_error("forward: a batch of %d rows (1..%d) with %d output rows that are not increasing row indices", n,
                 f->o.n_batch, n_rows);
        return -PI_ERR_INVAL;
    }
    if ((rc = pi_forward_begin(f, tokens, seq, pos, n)) < 0) return rc;
    pi_forward_embed(f, tokens, n, f->h);
    for (int il = 0; il < f->m->hp.n_layer; il++) {
        pi_forward_attn(f, il, seq, pos, n, f->h);
        pi_forward_ffn(f, il, n, f->h);
    }
    pi_forward_commit(f, seq, pos, n);
    if (n_rows > 0) pi_forward_output_rows(f, f->h, n, rows, n_rows, logits);
    return 0;
}

int pi_forward_tokens(pi_forward_t *f, int seq, const int32_t *tokens, int n, int pos0, float *logits,
                      bool all_logits)
{
    /* checked before pos0 + i is formed (it could overflow) and before n sizes an allocation */
    if (n < 0 || n > f->o.n_ctx || pos0 < 0 || pos0 > f->o.n_ctx - n) {
        pi_error("forward: %d tokens at position %d do not fit the context of %d", n, pos0, f->o.n_ctx);
        return -PI_ERR_RANGE;
    }
    int32_t *sp = malloc((size_t)PI_MAX(n, 1) * 2 * sizeof *sp);
    if (!sp) return -PI_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        sp[i] = seq;
        sp[n + i] = pos0 + i;
    }
    int rc = pi_forward_batch(f, tokens, sp, sp + n, n, logits, all_logits);
    free(sp);
    return rc;
}
