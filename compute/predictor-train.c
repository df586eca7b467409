/*
 * compute/predictor-train.c - sample capture and per-layer training of the activation predictors
 * (contracts in compute/predictor-train.h, method in doc/predictors.md).
 *
 * Layout: the samples; the loss and its gradient; the cpu engine (struct pi_ptrain_engine over the
 * pool); choosing an engine (the cuda one comes from the module pinfer-cuda.so,
 * compute/predictor-train-cuda.c); the training policy of one rank, generic over the engine; storing,
 * thresholds and the rank ladder, on the host whatever the engine.
 *
 * Threading (cpu engine): every product is a pi_sgemm over the caller's pool; the element-wise passes
 * (the loss and its gradient per row, Adam per parameter block) are pool jobs whose results do not
 * depend on which thread ran them; sums over rows (the loss) are added on the calling thread in row
 * order. Hence the same bits for any pool size.
 */
#include "config.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/predictor-train.h"
#include "compute/backend-cuda-module.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"

/* ---------------------------------------------------------------- samples */

struct pi_ptrain_samples *pi_ptrain_samples_new(const pi_model_t *m, int64_t n_train, int64_t n_heldout, int rows_max,
                                                uint64_t seed)
{
    PI_ASSERT(m->hp.act == PI_FFN_ACT_RELU || m->hp.act == PI_FFN_ACT_DRELU);
    PI_ASSERT(n_train >= 1 && n_heldout >= 1 && rows_max >= 1);
    struct pi_ptrain_samples *s = calloc(1, sizeof *s);
    if (!s) goto nomem;
    s->n_layer = m->hp.n_layer;
    s->n_embd = m->hp.n_embd;
    s->n_ff = m->hp.n_ff;
    s->mask_words = (s->n_ff + 63) / 64;
    s->act = m->hp.act;
    s->cap[PI_PTRAIN_TRAIN] = n_train;
    s->cap[PI_PTRAIN_HELDOUT] = n_heldout;
    for (int k = 0; k < 2; k++) {
        size_t rows = (size_t)s->n_layer * (size_t)s->cap[k];
        s->x[k] = malloc(rows * (size_t)s->n_embd * sizeof(float));
        s->mask[k] = calloc(rows * (size_t)s->mask_words, sizeof(uint64_t));
        if (!s->x[k] || !s->mask[k]) goto nomem;
    }
    s->rows_max = rows_max;
    if (!(s->slot = malloc((size_t)rows_max * sizeof *s->slot))) goto nomem;
    struct pi_rng r;
    pi_rng_seed(&r, seed);
    memcpy(s->rng, r.s, sizeof s->rng);
    return s;
nomem:
    pi_error("predictor samples: out of memory (%lld + %lld rows per layer)", (long long)n_train, (long long)n_heldout);
    pi_ptrain_samples_destroy(&s);
    return NULL;
}

void pi_ptrain_samples_destroy(struct pi_ptrain_samples **ps)
{
    if (!ps || !*ps) return;
    for (int k = 0; k < 2; k++) {
        free((*ps)->x[k]);
        free((*ps)->mask[k]);
    }
    free((*ps)->slot);
    free(*ps);
    *ps = NULL;
}

void pi_ptrain_samples_chunk(struct pi_ptrain_samples *s, int set, int rows)
{
    PI_ASSERT((set == PI_PTRAIN_TRAIN || set == PI_PTRAIN_HELDOUT) && rows >= 1 && rows <= s->rows_max);
    struct pi_rng r;
    memcpy(r.s, s->rng, sizeof r.s);
    for (int i = 0; i < rows; i++) {
        uint64_t k = s->seen[set]++;
        if (k < (uint64_t)s->cap[set]) {
            s->slot[i] = (int64_t)k;
            s->n[set] = (int64_t)k + 1;
        } else {
            uint64_t j = pi_rng_below(&r, k + 1);
            s->slot[i] = j < (uint64_t)s->cap[set] ? (int64_t)j : -1;
        }
    }
    memcpy(s->rng, r.s, sizeof s->rng);
    s->set = set;
    s->rows = rows;
}

void pi_ptrain_capture(void *ctx, int il, int n, const float *h, const float *x, const float *gate, const float *up)
{
    (void)h;
    struct pi_ptrain_samples *s = ctx;
    PI_ASSERT(n == s->rows && il >= 0 && il < s->n_layer);
    const int64_t d = s->n_embd, ff = s->n_ff, w = s->mask_words, cap = s->cap[s->set];
    bool drelu = s->act == PI_FFN_ACT_DRELU;
    for (int i = 0; i < n; i++) {
        if (s->slot[i] < 0) continue;
        size_t row = (size_t)il * (size_t)cap + (size_t)s->slot[i];
        memcpy(s->x[s->set] + row * (size_t)d, x + (size_t)i * (size_t)d, (size_t)d * sizeof(float));
        uint64_t *mk = s->mask[s->set] + row * (size_t)w;
        const float *g = gate + (size_t)i * (size_t)ff, *u = up + (size_t)i * (size_t)ff;
        memset(mk, 0, (size_t)w * sizeof *mk);
        for (int64_t j = 0; j < ff; j++)
            if (g[j] > 0.0f && (!drelu || u[j] > 0.0f)) mk[j / 64] |= UINT64_C(1) << (j % 64);
    }
}

/* ---------------------------------------------------------------- loss and gradient */

void pi_ptrain_opts_default(struct pi_ptrain_opts *o)
{
    memset(o, 0, sizeof *o);
    o->recall[0] = 0.997; /* issue 17's quality bar for safe on the demo model (doc/predictors.md) */
    o->recall[1] = 0.95;
    o->headroom = 0.5;
    o->rank_min = 32;
    o->rank_max = 1024;
    o->max_overhead = 0.5;
    o->epochs = 30;
    o->patience = 2;
    o->batch = 128;
    o->lr = 5e-3f;
    o->pos_weight = 4.0f;
    o->seed = 1;
    o->type = PI_TYPE_F16;
}

/* Scratch of one batch of up to B rows. */
struct work {
    int64_t B, r, d, ff;
    float *X;        /* (B, d) gathered inputs */
    uint64_t *M;     /* (B, mask_words) gathered masks */
    float *H;        /* (B, r) fc1 products, then dH */
    float *A;        /* (B, r) relu(H) */
    float *Z;        /* (B, ff) logits, then dZ */
    float *dA;       /* (B, r) */
    double *rowloss; /* (B) */
};

static void work_free(struct work *w)
{
    free(w->X), free(w->M), free(w->H), free(w->A), free(w->Z), free(w->dA), free(w->rowloss);
    memset(w, 0, sizeof *w);
}

static int work_alloc(struct work *w, int64_t B, int64_t r, int64_t d, int64_t ff, int64_t mask_words)
{
    *w = (struct work){B, r, d, ff, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    w->X = malloc((size_t)(B * d) * sizeof(float));
    w->M = malloc((size_t)(B * mask_words) * sizeof(uint64_t));
    w->H = malloc((size_t)(B * r) * sizeof(float));
    w->A = malloc((size_t)(B * r) * sizeof(float));
    w->Z = malloc((size_t)(B * ff) * sizeof(float));
    w->dA = malloc((size_t)(B * r) * sizeof(float));
    w->rowloss = malloc((size_t)B * sizeof(double));
    if (w->X && w->M && w->H && w->A && w->Z && w->dA && w->rowloss) return 0;
    work_free(w);
    return -PI_ERR_NOMEM;
}

struct bce_task {
    float *Z;          /* (n, ff) logits in, d loss / d logit out (when grad) */
    const uint64_t *M; /* (n, mask_words) */
    int64_t ff, mask_words;
    float pos_weight, scale; /* scale = 1 / (n ff): the loss is a mean */
    bool grad;
    double *rowloss;
};

/* Rows [begin, end): with grad, d loss / d logit in place of the logits (the training steps, which need
 * no loss value); without, the weighted BCE per row. One expf per pair: with e = exp(-|z|),
 * softplus(z) = max(z, 0) + log1p(e) and sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e) below. */
static void bce_rows(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    const struct bce_task *t = ctx;
    for (int64_t i = begin; i < end; i++) {
        float *z = t->Z + i * t->ff;
        const uint64_t *m = t->M + i * t->mask_words;
        double sum = 0;
        for (int64_t j = 0; j < t->ff; j++) {
            bool y = (m[j / 64] >> (j % 64)) & 1;
            float zj = z[j], e = expf(-fabsf(zj));
            if (t->grad) {
                float sig = zj >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
                z[j] = t->scale * (y ? t->pos_weight * (sig - 1.0f) : sig);
            } else {
                float sp_pos = (zj > 0.0f ? zj : 0.0f) + log1pf(e); /* softplus(z) = -log(1 - sigmoid z) */
                sum += y ? t->pos_weight * (sp_pos - zj) : sp_pos;  /* softplus(-z) = softplus(z) - z */
            }
        }
        t->rowloss[i] = sum;
    }
}

/* The loss of w's n gathered rows (w->X, w->M); or, when g1/g2, its gradients instead (NaN returned). */
static double batch_loss_grad(pi_pool_t *pool, struct work *w, int64_t mask_words, const float *W1, const float *W2,
                              int64_t n, float pos_weight, float *g1, float *g2)
{
    const int64_t r = w->r, d = w->d, ff = w->ff;
    pi_sgemm(pool, false, true, n, r, d, 1.0f, w->X, d, W1, d, 0.0f, w->H, r); /* H = X W1^T */
    for (int64_t i = 0; i < n * r; i++) w->A[i] = w->H[i] > 0.0f ? w->H[i] : 0.0f;
    pi_sgemm(pool, false, true, n, ff, r, 1.0f, w->A, r, W2, r, 0.0f, w->Z, ff); /* Z = A W2^T */
    struct bce_task t = {w->Z,       w->M,      ff, mask_words, pos_weight, 1.0f / (float)((double)n * (double)ff),
                         g1 != NULL, w->rowloss};
    pi_pool_for(pool, n, 8, bce_rows, &t);
    if (g1) {
        pi_sgemm(pool, true, false, ff, r, n, 1.0f, w->Z, ff, w->A, r, 0.0f, g2, r);    /* dW2 = dZ^T A */
        pi_sgemm(pool, false, false, n, r, ff, 1.0f, w->Z, ff, W2, r, 0.0f, w->dA, r);  /* dA = dZ W2 */
        for (int64_t i = 0; i < n * r; i++) w->H[i] = w->H[i] > 0.0f ? w->dA[i] : 0.0f; /* dH */
        pi_sgemm(pool, true, false, r, d, n, 1.0f, w->H, r, w->X, d, 0.0f, g1, d);      /* dW1 = dH^T X */
        return NAN;
    }
    double loss = 0;
    for (int64_t i = 0; i < n; i++) loss += w->rowloss[i];
    return loss / ((double)n * (double)ff);
}

/* Copy rows idx[0..n) of set k of layer il into w->X, w->M. */
static void gather(const struct pi_ptrain_samples *s, int k, int il, const int64_t *idx, int64_t n, struct work *w)
{
    const size_t d = (size_t)s->n_embd, mw = (size_t)s->mask_words, base = (size_t)il * (size_t)s->cap[k];
    for (int64_t i = 0; i < n; i++) {
        memcpy(w->X + (size_t)i * d, s->x[k] + (base + (size_t)idx[i]) * d, d * sizeof(float));
        memcpy(w->M + (size_t)i * mw, s->mask[k] + (base + (size_t)idx[i]) * mw, mw * sizeof(uint64_t));
    }
}

double pi_ptrain_loss_grad(pi_pool_t *pool, const struct pi_ptrain_samples *s, int64_t r, const float *W1,
                           const float *W2, const float *X, const uint64_t *masks, int64_t n, float pos_weight,
                           float *g1, float *g2)
{
    struct work w;
    PI_ASSERT(work_alloc(&w, n, r, s->n_embd, s->n_ff, s->mask_words) == 0);
    memcpy(w.X, X, (size_t)(n * s->n_embd) * sizeof(float));
    memcpy(w.M, masks, (size_t)(n * s->mask_words) * sizeof(uint64_t));
    double loss = batch_loss_grad(pool, &w, s->mask_words, W1, W2, n, pos_weight, g1, g2);
    work_free(&w);
    return loss;
}

/* ---------------------------------------------------------------- the cpu engine */

/* One network and its Adam state; p holds W1 (r, d) then W2 (ff, r), g, m, v the same layout. */
struct net {
    int64_t r, d, ff, np; /* np = r d + ff r */
    float *p, *g, *m, *v, *best;
};

static void net_free(struct net *n)
{
    free(n->p), free(n->g), free(n->m), free(n->v), free(n->best);
    memset(n, 0, sizeof *n);
}

/* Weights p0, moments zero. */
static int net_init(struct net *n, int64_t r, int64_t d, int64_t ff, const float *p0)
{
    *n = (struct net){r, d, ff, r * d + ff * r, NULL, NULL, NULL, NULL, NULL};
    n->p = malloc((size_t)n->np * sizeof(float));
    n->g = malloc((size_t)n->np * sizeof(float));
    n->m = calloc((size_t)n->np, sizeof(float));
    n->v = calloc((size_t)n->np, sizeof(float));
    n->best = malloc((size_t)n->np * sizeof(float));
    if (!n->p || !n->g || !n->m || !n->v || !n->best) {
        net_free(n);
        return -PI_ERR_NOMEM;
    }
    memcpy(n->p, p0, (size_t)n->np * sizeof(float));
    memcpy(n->best, p0, (size_t)n->np * sizeof(float));
    return 0;
}

struct adam_task {
    struct net *n;
    float lr_t; /* lr sqrt(1 - b2^t) / (1 - b1^t) */
};

#define ADAM_GRAIN 4096

static void adam_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    const struct adam_task *t = ctx;
    struct net *n = t->n;
    for (int64_t i = begin * ADAM_GRAIN; i < PI_MIN(end * ADAM_GRAIN, n->np); i++) {
        float g = n->g[i];
        n->m[i] = PI_PTRAIN_ADAM_B1 * n->m[i] + (1.0f - PI_PTRAIN_ADAM_B1) * g;
        n->v[i] = PI_PTRAIN_ADAM_B2 * n->v[i] + (1.0f - PI_PTRAIN_ADAM_B2) * g * g;
        n->p[i] -= t->lr_t * n->m[i] / (sqrtf(n->v[i]) + PI_PTRAIN_ADAM_EPS);
    }
}

/* Mean loss of the held-out set of layer il under weights p. */
static double heldout_loss(pi_pool_t *pool, const struct pi_ptrain_samples *s, int il, const float *p, int64_t r,
                           struct work *w, int64_t *idx, float pos_weight)
{
    const int64_t nh = s->n[PI_PTRAIN_HELDOUT];
    double sum = 0;
    for (int64_t b = 0; b < nh; b += w->B) {
        int64_t nb = PI_MIN(w->B, nh - b);
        for (int64_t i = 0; i < nb; i++) idx[i] = b + i;
        gather(s, PI_PTRAIN_HELDOUT, il, idx, nb, w);
        sum += batch_loss_grad(pool, w, s->mask_words, p, p + r * s->n_embd, nb, pos_weight, NULL, NULL) * (double)nb;
    }
    return sum / (double)nh;
}

/* The cpu engine: the pool's threads, on the host's copy of the samples. */
struct cpu_engine {
    pi_pool_t *pool;
    const struct pi_ptrain_samples *s;
    int64_t batch; /* the engine's batch (struct pi_ptrain_engine) */
    int64_t B;     /* rows of a step and of a held-out batch (pi_ptrain_step_rows at init) */
    int il;        /* the bound layer */
    struct work w; /* B rows at the current rank */
    struct net n;  /* the current rank's network */
    int64_t *hidx; /* (B) held-out rows of a batch */
};

static void cpu_release(struct cpu_engine *c)
{
    work_free(&c->w);
    net_free(&c->n);
}

static int cpu_layer(void *ctx, int il)
{
    ((struct cpu_engine *)ctx)->il = il;
    return 0;
}

static int cpu_init(void *ctx, int64_t r, const float *p0)
{
    struct cpu_engine *c = ctx;
    const struct pi_ptrain_samples *s = c->s;
    cpu_release(c);
    free(c->hidx);
    c->B = pi_ptrain_step_rows(s, c->batch);
    if (!(c->hidx = malloc((size_t)c->B * sizeof *c->hidx))) return -PI_ERR_NOMEM;
    int rc = work_alloc(&c->w, c->B, r, s->n_embd, s->n_ff, s->mask_words);
    if (rc == 0 && (rc = net_init(&c->n, r, s->n_embd, s->n_ff, p0)) < 0) work_free(&c->w);
    return rc; /* -PI_ERR_NOMEM: logged by pi_ptrain_layer_on */
}

static int cpu_step(void *ctx, const int64_t *idx, int64_t nb, float lr_t, float pos_weight)
{
    struct cpu_engine *c = ctx;
    const struct pi_ptrain_samples *s = c->s;
    struct net *n = &c->n;
    PI_ASSERT(n->p && nb >= 1 && nb <= c->B);
    gather(s, PI_PTRAIN_TRAIN, c->il, idx, nb, &c->w);
    batch_loss_grad(c->pool, &c->w, s->mask_words, n->p, n->p + n->r * n->d, nb, pos_weight, n->g, n->g + n->r * n->d);
    struct adam_task t = {n, lr_t};
    pi_pool_for(c->pool, (n->np + ADAM_GRAIN - 1) / ADAM_GRAIN, 1, adam_range, &t);
    return 0;
}

static int cpu_heldout_loss(void *ctx, float pos_weight, double *loss)
{
    struct cpu_engine *c = ctx;
    PI_ASSERT(c->n.p);
    *loss = heldout_loss(c->pool, c->s, c->il, c->n.p, c->n.r, &c->w, c->hidx, pos_weight);
    return 0;
}

static int cpu_save_best(void *ctx)
{
    struct cpu_engine *c = ctx;
    memcpy(c->n.best, c->n.p, (size_t)c->n.np * sizeof(float));
    return 0;
}

static int cpu_read(void *ctx, int buf, float *host)
{
    struct cpu_engine *c = ctx;
    const float *src = buf == PI_PTRAIN_BUF_W ? c->n.p : buf == PI_PTRAIN_BUF_GRAD ? c->n.g : c->n.best;
    PI_ASSERT(src && buf >= PI_PTRAIN_BUF_W && buf <= PI_PTRAIN_BUF_BEST);
    memcpy(host, src, (size_t)c->n.np * sizeof(float));
    return 0;
}

static void cpu_destroy(void *ctx)
{
    struct cpu_engine *c = ctx;
    if (!c) return;
    cpu_release(c);
    free(c->hidx);
    free(c);
}

static int cpu_engine_new(struct pi_ptrain_engine *e)
{
    struct cpu_engine *c = calloc(1, sizeof *c);
    if (!c) return -PI_ERR_NOMEM;
    c->pool = e->pool, c->s = e->s, c->batch = e->batch, c->il = 0;
    e->ctx = c;
    snprintf(e->desc, sizeof e->desc, "cpu, %d threads (%s GEMM)", e->pool ? pi_pool_size(e->pool) : 1,
             pi_sgemm_kernel_name());
    e->layer = cpu_layer, e->init = cpu_init, e->step = cpu_step, e->heldout_loss = cpu_heldout_loss;
    e->save_best = cpu_save_best, e->read = cpu_read, e->destroy = cpu_destroy;
    return 0;
}

/* ---------------------------------------------------------------- engines */

/* The cuda engine from the module into e: 0, or a negative pi_err with the reason in why (not logged
 * when the module or a device is missing: AUTO then falls back quietly). */
static int cuda_engine_new(struct pi_ptrain_engine *e, char *why, size_t len)
{
    const struct pi_backend_cuda_module *mod = pi_backend_cuda_try_load(why, len);
    if (!mod) return -PI_ERR_UNSUPPORTED;
    return mod->ptrain_new(e->s, e->batch, e, why, len);
}

int pi_ptrain_engine_new(pi_pool_t *pool, const struct pi_ptrain_samples *s, const struct pi_ptrain_opts *o,
                         struct pi_ptrain_engine **out)
{
    PI_ASSERT(o->batch >= 1);
    *out = NULL;
    struct pi_ptrain_engine *e = calloc(1, sizeof *e);
    if (!e) {
        pi_error("predictor training: out of memory");
        return -PI_ERR_NOMEM;
    }
    e->pool = pool, e->s = s;
    e->batch = o->batch;
    char why[512] = "";
    int rc = -PI_ERR_UNSUPPORTED;
    if (o->device == PI_PTRAIN_DEVICE_CUDA || o->device == PI_PTRAIN_DEVICE_AUTO) {
        rc = cuda_engine_new(e, why, sizeof why);
        if (rc == 0) e->device = PI_PTRAIN_DEVICE_CUDA;
        else if (o->device == PI_PTRAIN_DEVICE_CUDA) {
            pi_error("predictor training: cannot train on cuda: %s", why);
            free(e);
            return rc;
        }
    }
    if (rc < 0) {
        if ((rc = cpu_engine_new(e)) < 0) {
            pi_error("predictor training: out of memory");
            free(e);
            return rc;
        }
        e->device = PI_PTRAIN_DEVICE_CPU;
        size_t at = strlen(e->desc);
        if (o->device == PI_PTRAIN_DEVICE_AUTO && at < sizeof e->desc)
            snprintf(e->desc + at, sizeof e->desc - at, "; not cuda: %s", why);
    }
    *out = e;
    return 0;
}

void pi_ptrain_engine_destroy(struct pi_ptrain_engine **pe)
{
    if (!pe || !*pe) return;
    if ((*pe)->destroy) (*pe)->destroy((*pe)->ctx);
    free(*pe);
    *pe = NULL;
}

/* ---------------------------------------------------------------- training one rank */

/* Random initial weights p (np floats): H = X W1^T has variance about 2 and the logits about 1 (ms:
 * mean x^2). */
static void init_weights(float *p, int64_t r, int64_t d, int64_t ff, double ms, uint64_t seed)
{
    struct pi_rng rng;
    pi_rng_seed(&rng, seed);
    double a1 = sqrt(3.0 * 2.0 / ((double)d * (ms > 0 ? ms : 1.0))), a2 = sqrt(3.0 / (double)r);
    for (int64_t i = 0; i < r * d + ff * r; i++)
        p[i] = (float)((2.0 * pi_rng_uniform(&rng) - 1.0) * (i < r * d ? a1 : a2));
}

/* Mean of x^2 over layer il's training inputs (sets the initial scale). */
static double mean_square(const struct pi_ptrain_samples *s, int il)
{
    const size_t n = (size_t)s->n[PI_PTRAIN_TRAIN] * (size_t)s->n_embd;
    const float *x = s->x[PI_PTRAIN_TRAIN] + (size_t)il * (size_t)s->cap[PI_PTRAIN_TRAIN] * (size_t)s->n_embd;
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return n ? sum / (double)n : 1.0;
}

/* Train rank r on e's bound layer il: epochs of shuffled minibatches until the held-out loss stops
 * improving; the engine's best holds the weights of the best epoch. p: (np) host scratch. */
static int train_rank(struct pi_ptrain_engine *e, int il, const struct pi_ptrain_opts *o, int64_t r, float *p,
                      struct pi_ptrain_report *rep)
{
    const struct pi_ptrain_samples *s = e->s;
    const int64_t nt = s->n[PI_PTRAIN_TRAIN], B = pi_ptrain_step_rows(s, e->batch);
    uint64_t st = o->seed ^ ((uint64_t)il << 32) ^ (uint64_t)r;
    struct pi_rng rng;
    int64_t *idx = malloc((size_t)nt * sizeof *idx);
    if (!idx) return -PI_ERR_NOMEM;
    init_weights(p, r, s->n_embd, s->n_ff, mean_square(s, il), pi_rng_splitmix64(&st));
    int rc = e->init(e->ctx, r, p);
    pi_rng_seed(&rng, pi_rng_splitmix64(&st));
    for (int64_t i = 0; i < nt; i++) idx[i] = i;
    double best = INFINITY;
    int bad = 0, epoch = 0;
    int64_t t = 0; /* Adam's steps */
    while (rc == 0 && epoch < o->epochs && bad < o->patience) {
        epoch++;
        for (int64_t i = nt - 1; i > 0; i--) { /* Fisher-Yates */
            int64_t j = (int64_t)pi_rng_below(&rng, (uint64_t)i + 1), tmp = idx[i];
            idx[i] = idx[j], idx[j] = tmp;
        }
        for (int64_t b = 0; rc == 0 && b < nt; b += B) {
            t++;
            double c1 = 1.0 - pow(PI_PTRAIN_ADAM_B1, (double)t), c2 = 1.0 - pow(PI_PTRAIN_ADAM_B2, (double)t);
            rc = e->step(e->ctx, idx + b, PI_MIN(B, nt - b), (float)(o->lr * sqrt(c2) / c1), o->pos_weight);
        }
        double hl = NAN;
        if (rc < 0 || (rc = e->heldout_loss(e->ctx, o->pos_weight, &hl)) < 0) break;
        if (hl < best) {
            best = hl, bad = 0;
            rc = e->save_best(e->ctx);
            rep->epochs = epoch;
        } else bad++;
        if (o->progress) o->progress(o->progress_ctx, il, r, epoch, hl);
    }
    rep->loss = best;
    free(idx);
    return rc;
}
/* ---------------------------------------------------------------- storing and thresholds */

/* out's weights = best (np floats: W1 (r, d) then W2 (ff, r)) in type. */
static int store(const float *best, int64_t r, int64_t d, int64_t ff, enum pi_type type, struct pi_sidecar_pred *out)
{
    uint64_t rb1, rb2;
    if (!pi_type_row_bytes(type, (uint64_t)d, &rb1) || !pi_type_row_bytes(type, (uint64_t)r, &rb2))
        return -PI_ERR_INVAL;
    memset(out, 0, sizeof *out);
    out->rank = r;
    out->type = type;
    out->fc1 = malloc((size_t)(rb1 * (uint64_t)r));
    out->fc2 = malloc((size_t)(rb2 * (uint64_t)ff));
    if (!out->fc1 || !out->fc2) {
        pi_sidecar_pred_free(out);
        return -PI_ERR_NOMEM;
    }
    for (int64_t i = 0; i < r; i++) pi_quantize_row(type, best + i * d, (char *)out->fc1 + (size_t)i * rb1, d);
    for (int64_t i = 0; i < ff; i++) pi_quantize_row(type, best + r * d + i * r, (char *)out->fc2 + (size_t)i * rb2, r);
    return 0;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Z (n, ff) = the stored predictor's logits for X (n, d), through the products pi_predictor_eval uses. */
static void stored_logits(pi_pool_t *pool, const struct pi_sidecar_pred *p, int64_t d, int64_t ff, const float *X,
                          int64_t n, float *H, float *Z)
{
    pi_matmul(pool, p->type, p->fc1, p->rank, d, X, n, H);
    for (int64_t i = 0; i < n * p->rank; i++) H[i] = H[i] > 0.0f ? H[i] : 0.0f;
    pi_matmul(pool, p->type, p->fc2, ff, p->rank, H, n, Z);
}

#define CAL_ROWS 256

/* p's thresholds, recalls and active shares from layer il's held-out set: per mode, the k-th smallest
 * logit of the truly active pairs, k = floor(headroom (1 - target) P), so that at most k of the P
 * truly active pairs have a logit below it. */
static int calibrate(pi_pool_t *pool, const struct pi_ptrain_samples *s, int il, const struct pi_ptrain_opts *o,
                     struct pi_sidecar_pred *p)
{
    const int64_t nh = s->n[PI_PTRAIN_HELDOUT], d = s->n_embd, ff = s->n_ff, mw = s->mask_words;
    const float *X = s->x[PI_PTRAIN_HELDOUT] + (size_t)il * (size_t)s->cap[PI_PTRAIN_HELDOUT] * (size_t)d;
    const uint64_t *M = s->mask[PI_PTRAIN_HELDOUT] + (size_t)il * (size_t)s->cap[PI_PTRAIN_HELDOUT] * (size_t)mw;
    float *Z = malloc((size_t)(nh * ff) * sizeof *Z), *H = malloc((size_t)(CAL_ROWS * p->rank) * sizeof *H);
    float *pos = malloc((size_t)(nh * ff) * sizeof *pos);
    if (!Z || !H || !pos) {
        free(Z), free(H), free(pos);
        return -PI_ERR_NOMEM;
    }
    for (int64_t b = 0; b < nh; b += CAL_ROWS)
        stored_logits(pool, p, d, ff, X + b * d, PI_MIN(CAL_ROWS, nh - b), H, Z + b * ff);
    size_t P = 0;
    for (int64_t i = 0; i < nh; i++)
        for (int64_t j = 0; j < ff; j++)
            if ((M[i * mw + j / 64] >> (j % 64)) & 1) pos[P++] = Z[i * ff + j];
    qsort(pos, P, sizeof *pos, cmp_float);
    const double pairs = (double)nh * (double)ff;
    for (int k = 0; k < 2; k++) {
        size_t at = (size_t)floor(o->headroom * (1.0 - o->recall[k]) * (double)P);
        float thr = P ? pos[PI_MIN(at, P - 1)] : -FLT_MAX;
        size_t first = 0, above = 0;
        while (first < P && pos[first] < thr) first++;
        for (int64_t i = 0; i < nh * ff; i++) above += Z[i] >= thr;
        p->threshold[k] = thr;
        p->recall[k] = P ? (float)((double)(P - first) / (double)P) : 1.0f;
        p->active[k] = (float)((double)above / pairs);
    }
    p->active[2] = (float)((double)P / pairs);
    free(Z), free(H), free(pos);
    return 0;
}

/* ---------------------------------------------------------------- the rank ladder */

static int check_opts(const struct pi_ptrain_samples *s, const struct pi_ptrain_opts *o)
{
    const char *why = NULL;
    if (!(o->recall[0] > 0 && o->recall[0] <= 1 && o->recall[1] > 0 && o->recall[1] <= o->recall[0]))
        why = "recall targets must satisfy 0 < aggressive <= safe <= 1";
    else if (o->rank_min < 1 || o->rank_max < o->rank_min || o->rank_max > PI_SIDECAR_PRED_RANK_MAX)
        why = "ranks must satisfy 1 <= rank_min <= rank_max <= 16384";
    else if (o->type != PI_TYPE_F32 && o->type != PI_TYPE_F16 && o->type != PI_TYPE_Q8_0)
        why = "the weights' type must be f32, f16 or q8_0";
    else if (o->type == PI_TYPE_Q8_0 && (s->n_embd % 32 || o->rank_min % 32))
        why = "q8_0 needs n_embd and every rank to be multiples of 32";
    else if (o->epochs < 1 || o->patience < 1 || o->batch < 1 || !(o->lr > 0) || !(o->pos_weight > 0) ||
             !(o->max_overhead >= 0) || !(o->headroom > 0 && o->headroom <= 1))
        why = "epochs, patience, batch, lr, pos_weight must be positive, max_overhead >= 0, headroom in (0, 1]";
    if (!why) return 0;
    pi_error("predictor training: %s", why);
    return -PI_ERR_INVAL;
}

int pi_ptrain_layer_on(struct pi_ptrain_engine *e, int il, const struct pi_ptrain_opts *o, struct pi_sidecar_pred *out,
                       struct pi_ptrain_report *rep)
{
    const struct pi_ptrain_samples *s = e->s;
    PI_ASSERT(il >= 0 && il < s->n_layer && s->n[PI_PTRAIN_TRAIN] >= 1 && s->n[PI_PTRAIN_HELDOUT] >= 1);
    memset(out, 0, sizeof *out);
    memset(rep, 0, sizeof *rep);
    int rc = check_opts(s, o);
    if (rc == 0 && e->batch != o->batch) {
        pi_error("predictor training: the engine was made for batches of %lld rows, not %d", (long long)e->batch,
                 o->batch);
        rc = -PI_ERR_INVAL;
    }
    float *p = NULL; /* (np) host copy of the weights at the largest rank */
    if (rc == 0 && !(p = malloc((size_t)(o->rank_max * (s->n_embd + s->n_ff)) * sizeof *p))) rc = -PI_ERR_NOMEM;
    if (rc == 0) rc = e->layer(e->ctx, il);
    for (int64_t r = o->rank_min; rc == 0 && r <= o->rank_max; r *= 2) {
        struct pi_ptrain_report rr = {0};
        struct pi_sidecar_pred cand;
        if ((rc = train_rank(e, il, o, r, p, &rr)) < 0 || (rc = e->read(e->ctx, PI_PTRAIN_BUF_BEST, p)) < 0) break;
        if ((rc = store(p, r, s->n_embd, s->n_ff, o->type, &cand)) < 0) break;
        if ((rc = calibrate(e->pool, s, il, o, &cand)) < 0) {
            pi_sidecar_pred_free(&cand);
            break;
        }
        rep->ranks_tried++;
        if (!out->fc1 || cand.active[0] < out->active[0]) {
            pi_sidecar_pred_free(out);
            *out = cand;
            rep->epochs = rr.epochs;
            rep->loss = rr.loss;
        } else pi_sidecar_pred_free(&cand);
        if (out->active[0] <= (1.0 + o->max_overhead) * out->active[2]) break;
    }
    free(p);
    if (rc < 0) {
        if (rc == -PI_ERR_NOMEM) pi_error("predictor training: layer %d: out of memory", il);
        pi_sidecar_pred_free(out);
    }
    return rc;
}

int pi_ptrain_layer(pi_pool_t *pool, const struct pi_ptrain_samples *s, int il, const struct pi_ptrain_opts *o,
                    struct pi_sidecar_pred *out, struct pi_ptrain_report *rep)
{
    struct pi_ptrain_engine *e = NULL;
    memset(out, 0, sizeof *out);
    memset(rep, 0, sizeof *rep);
    int rc = check_opts(s, o);
    if (rc == 0 && (rc = pi_ptrain_engine_new(pool, s, o, &e)) == 0) rc = pi_ptrain_layer_on(e, il, o, out, rep);
    pi_ptrain_engine_destroy(&e);
    return rc;
}
