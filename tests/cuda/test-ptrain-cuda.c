/*
 * tests/cuda/test-ptrain-cuda.c - the predictor trainer's cuda engine (compute/predictor-train-cuda.c, in the
 * module pinfer-cuda.so) against its cpu engine, both through compute/predictor-train.h, on fresh random
 * samples every run: x uniform in [-1, 1), masks the signs of a hidden ReLU gate of low rank with a bias per
 * neuron (10-40% active), as tests/unit/test-predictor-train.c draws them. Two shapes: d 256, ff 1024, 1000
 * training and 200 held-out rows, rank 64, batch 128; and an odd one, d 96, ff 200 (a part-used mask word),
 * rank 48, batch 64 (1000 rows: the last batch has 40).
 *   (a) one step from the same weights on the same minibatch: the gradients of the two engines agree,
 *       max |cuda - cpu| <= 1e-4 max |cpu| (each of W1 and W2 apart). Why 1e-4: both compute in FP32 and
 *       differ only in the order of the GEMMs' sums (K up to 1024 terms: a relative error of order
 *       sqrt(K) 6e-8 = 2e-6 typically, K 6e-8 = 6e-5 at worst) and in expf (2 ulp). Left out: the W1 rows of
 *       hidden units whose pre-activation on some row of the batch is within the bound of a float sum's
 *       rounding of zero (a few percent of them, often none), where the ReLU's gradient mask may differ.
 *       The updated weights: Adam's first step is lr_t (1 - b1) g / (sqrt(1 - b2) |g| + eps), about
 *       lr sign(g), but steep where |g| is near eps: every weight's difference must be within its
 *       gradients' difference times that slope's bound (check_adam), which checks Adam's arithmetic
 *       without a tolerance that the amplification near g = 0 would make arbitrary;
 *   (b) the held-out loss before and after the step within 1e-5 relative: per-pair terms differ by the
 *       logits' rounding (sums of r terms) and CUDA's log1pf, both summed in double;
 *   (c) pi_ptrain_layer on each device, the same seed, the ladder 16, 32 (--max-overhead 0: both ranks are
 *       tried) for 10 epochs at lr 1e-2 (patience 10: no early stop, so the epochs line up): the same ranks
 *       tried, the held-out loss of every epoch within 1e-3 relative (the trajectories separate by rounding
 *       over a hundred or two Adam steps), the calibrated recalls and predicted active shares within 0.01,
 *       the true active share the same;
 *   (d) two cuda runs with the same seed: the same bits (weights, thresholds, every epoch's loss);
 *   (e) layer 1 of two, a held-out set of three forward chunks, and init again at the same rank
 *       (test_rebind);
 * then, unless --no-timing, a 7B-shaped layer (d 4096, ff 11008, 7373 training and 819 held-out rows:
 * the default --samples 8192): one epoch per rank of the ladder 32 ... 1024 on the cuda engine, a few
 * steps of the cpu engine at rank 1024 on every core, and a whole pi_ptrain_layer on cuda (ladder to 1024,
 * 10 epochs each) split into its epochs and the rest (calibration on the host): diagnostics only.
 *
 * The seed is printed; PI_SEED=<n> repeats a run. Skips (TAP "1..0 # SKIP") where there is no CUDA device
 * (or the build has no CUDA); a module that does not load or an engine that does not start is a failure.
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/predictor-train.h"
#include "kernels/cpu/pool.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "model/sidecar.h"
#include "tests/tap.h"

static struct pi_rng rng;
static pi_pool_t *pool;

static float urand(void) { return (float)(2.0 * pi_rng_uniform(&rng) - 1.0); }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* nl layers' samples, nt training and nh held-out rows each of x (d) and masks from gate = C (B x) + bias,
 * B (k, d), C (ff, k), bias_j = -t_j sd_j (sd_j the gate's spread over x, t_j in [0.3, 1.3]); every row of
 * every layer its own x. Plain data in the layout pi_ptrain_samples_new makes (free with
 * pi_ptrain_samples_destroy). */
static struct pi_ptrain_samples *make_layers(int nl, int64_t d, int64_t ff, int64_t nt, int64_t nh, int k)
{
    struct pi_ptrain_samples *s = calloc(1, sizeof *s);
    float *B = malloc(sizeof(float) * (size_t)(k * d)), *C = malloc(sizeof(float) * (size_t)(ff * k));
    float *bias = malloc(sizeof(float) * (size_t)ff), *u = malloc(sizeof(float) * (size_t)k);
    double *gram = calloc((size_t)(k * k), sizeof(double));
    PI_ASSERT(s && B && C && bias && u && gram);
    s->n_layer = nl, s->n_embd = d, s->n_ff = ff, s->mask_words = (ff + 63) / 64, s->act = PI_FFN_ACT_RELU;
    for (int64_t i = 0; i < k * d; i++) B[i] = urand();
    for (int64_t i = 0; i < ff * k; i++) C[i] = urand();
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++)
            for (int64_t i = 0; i < d; i++) gram[a * k + b] += (double)B[a * d + i] * B[b * d + i];
    for (int64_t j = 0; j < ff; j++) { /* var(gate_j) = |C_j B|^2 / 3 for x uniform in [-1, 1) */
        double v = 0;
        for (int a = 0; a < k; a++)
            for (int b = 0; b < k; b++) v += (double)C[j * k + a] * C[j * k + b] * gram[a * k + b];
        bias[j] = (float)(-(0.3 + pi_rng_uniform(&rng)) * sqrt(v / 3.0));
    }
    const int64_t rows[2] = {nt, nh};
    for (int set = 0; set < 2; set++) {
        s->cap[set] = s->n[set] = rows[set];
        s->seen[set] = (uint64_t)rows[set];
        s->x[set] = malloc(sizeof(float) * (size_t)(nl * rows[set] * d));
        s->mask[set] = calloc((size_t)(nl * rows[set] * s->mask_words), sizeof(uint64_t));
        PI_ASSERT(s->x[set] && s->mask[set]);
        for (int64_t r = 0; r < nl * rows[set]; r++) { /* layer r / rows[set], row r % rows[set] */
            float *x = s->x[set] + r * d;
            uint64_t *m = s->mask[set] + r * s->mask_words;
            for (int64_t i = 0; i < d; i++) x[i] = urand();
            for (int a = 0; a < k; a++) {
                double z = 0;
                for (int64_t i = 0; i < d; i++) z += (double)B[a * d + i] * x[i];
                u[a] = (float)z;
            }
            for (int64_t j = 0; j < ff; j++) {
                double z = bias[j];
                for (int a = 0; a < k; a++) z += (double)C[j * k + a] * u[a];
                if (z > 0) m[j / 64] |= UINT64_C(1) << (j % 64);
            }
        }
    }
    free(B), free(C), free(bias), free(u), free(gram);
    return s;
}

/* One layer's samples (make_layers). */
static struct pi_ptrain_samples *make_samples(int64_t d, int64_t ff, int64_t nt, int64_t nh, int k)
{
    return make_layers(1, d, ff, nt, nh, k);
}

/* An engine of device dev over s, or a bail-out. */
static struct pi_ptrain_engine *engine(const struct pi_ptrain_samples *s, enum pi_ptrain_device dev, int batch)
{
    struct pi_ptrain_opts o;
    struct pi_ptrain_engine *e = NULL;
    pi_ptrain_opts_default(&o);
    o.device = dev;
    o.batch = batch;
    if (pi_ptrain_engine_new(pool, s, &o, &e) < 0) tap_bail("cannot open the %s engine", dev ? "cuda" : "cpu");
    return e;
}

/* max |a - b| and max |b| over rows [0, rows) of cols floats whose skip[row] is false (skip NULL: all). */
static void diff(const float *a, const float *b, int64_t rows, int64_t cols, const bool *skip, double *worst,
                 double *scale)
{
    *worst = 0, *scale = 0;
    for (int64_t i = 0; i < rows * cols; i++) {
        if (skip && skip[i / cols]) continue;
        double dd = isfinite(a[i]) ? fabs((double)a[i] - b[i]) : INFINITY;
        *worst = dd > *worst ? dd : *worst;
        *scale = fabs((double)b[i]) > *scale ? fabs((double)b[i]) : *scale;
    }
}

/* W1 (but its rows skip[j]) and W2 of a and b (np floats at rank r) within tol of b's largest magnitude,
 * each apart. */
static void check_close(const char *what, const char *shape, const float *a, const float *b, int64_t r, int64_t d,
                        int64_t ff, const bool *skip, double tol)
{
    double w1, s1, w2, s2;
    diff(a, b, r, d, skip, &w1, &s1);
    diff(a + r * d, b + r * d, ff, r, NULL, &w2, &s2);
    tap_ok(w1 <= tol * s1 && w2 <= tol * s2 && s1 > 0 && s2 > 0,
           "%s: %s of cuda and cpu: max |diff| / max |cpu| = %.2g (W1), %.2g (W2) <= %.0e", shape, what, w1 / s1,
           w2 / s2, tol);
}

/* The weights after Adam's first step (a: cuda, b: cpu) from the same weights, given each engine's gradient
 * (ga, gb): the step is lr_t f(g), f(g) = (1 - b1) g / (sqrt(1 - b2) |g| + eps), whose slope is at most
 * (1 - b1) / eps, so |a_i - b_i| <= lr_t (1 - b1) / eps |ga_i - gb_i| plus the rounding of the update and
 * of the weight (1e-6 of the largest weight covers both). Checked for every weight (W1 rows skip[j] apart). */
static void check_adam(const char *shape, const float *a, const float *b, const float *ga, const float *gb, int64_t r,
                       int64_t d, int64_t ff, const bool *skip, float lr_t)
{
    const int64_t np = r * d + ff * r;
    const double slope = (double)lr_t * (1.0 - PI_PTRAIN_ADAM_B1) / PI_PTRAIN_ADAM_EPS;
    double wmax = 0, worst = 0;
    for (int64_t i = 0; i < np; i++) wmax = fmax(wmax, fabs((double)b[i]));
    int64_t bad = 0;
    for (int64_t i = 0; i < np; i++) {
        if (i < r * d && skip[i / d]) continue;
        double bound = 1.01 * slope * fabs((double)ga[i] - gb[i]) + 1e-6 * wmax, dd = fabs((double)a[i] - b[i]);
        bad += !(dd <= bound);
        worst = fmax(worst, dd / wmax);
    }
    tap_ok(bad == 0 && wmax > 0,
           "%s: weights after Adam's step: every |cuda - cpu| within its gradients' difference times Adam's slope "
           "(%lld outside; largest difference %.2g of the largest weight)",
           shape, (long long)bad, worst);
}

/* The hidden units whose ReLU may switch by rounding on this batch: skip[j] when some row i has
 * |h_ij| <= d 2^-23 sum_k |x_ik w_jk|, twice the bound on a float sum's error (each engine's h may be off by
 * d 2^-24 of the sum of magnitudes), h = x W1^T in double. There the two engines' gradient masks may differ,
 * and dW1's row j with them by a whole term; every other value is a smooth function of the rounding. */
static int64_t unsure_units(const struct pi_ptrain_samples *s, int il, const int64_t *idx, int64_t nb, const float *W1,
                            int64_t r, bool *skip)
{
    const int64_t d = s->n_embd;
    int64_t n = 0;
    for (int64_t j = 0; j < r; j++) {
        skip[j] = false;
        for (int64_t i = 0; i < nb && !skip[j]; i++) {
            const float *x = s->x[PI_PTRAIN_TRAIN] + ((int64_t)il * s->cap[PI_PTRAIN_TRAIN] + idx[i]) * d;
            double h = 0, mag = 0;
            for (int64_t k = 0; k < d; k++)
                h += (double)x[k] * W1[j * d + k], mag += fabs((double)x[k] * W1[j * d + k]);
            skip[j] = fabs(h) <= (double)d * 0x1p-23 * mag;
        }
        n += skip[j];
    }
    return n;
}

/* (a), (b): one step of each engine from the same weights on the same minibatch of nb rows. */
static void test_step(const char *shape, int64_t d, int64_t ff, int64_t r, int batch, int64_t nb)
{
    struct pi_ptrain_samples *s = make_samples(d, ff, 1000, 200, 8);
    struct pi_ptrain_engine *ec = engine(s, PI_PTRAIN_DEVICE_CPU, batch), *eg = engine(s, PI_PTRAIN_DEVICE_CUDA, batch);
    const int64_t np = r * d + ff * r;
    float *p0 = malloc(sizeof(float) * (size_t)np), *hc = malloc(sizeof(float) * (size_t)np);
    float *hg = malloc(sizeof(float) * (size_t)np), *gc = malloc(sizeof(float) * (size_t)np);
    float *gg = malloc(sizeof(float) * (size_t)np);
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)nb);
    PI_ASSERT(p0 && hc && hg && gc && gg && idx);
    const double a1 = sqrt(6.0 / ((double)d / 3.0)), a2 = sqrt(3.0 / (double)r); /* net_init's scales, E[x^2] = 1/3 */
    for (int64_t i = 0; i < np; i++) p0[i] = urand() * (float)(i < r * d ? a1 : a2);
    for (int64_t i = 0; i < nb; i++) idx[i] = (int64_t)pi_rng_below(&rng, 1000);     /* repeats allowed */
    const float lr_t = (float)(5e-3 * sqrt(1.0 - 0.999f) / (1.0 - 0.9f)), pw = 4.0f; /* Adam's first step */
    double lc[2], lg[2];
    int rc = 0;
    struct pi_ptrain_engine *es[2] = {ec, eg};
    for (int k = 0; k < 2; k++) {
        struct pi_ptrain_engine *e = es[k];
        double *l = k ? lg : lc;
        if (rc == 0) rc = e->layer(e->ctx, 0);
        if (rc == 0) rc = e->init(e->ctx, r, p0);
        if (rc == 0) rc = e->heldout_loss(e->ctx, pw, &l[0]);
        if (rc == 0) rc = e->step(e->ctx, idx, nb, lr_t, pw);
        if (rc == 0) rc = e->heldout_loss(e->ctx, pw, &l[1]);
    }
    bool *skip = malloc(sizeof(bool) * (size_t)r);
    PI_ASSERT(skip);
    int64_t unsure = unsure_units(s, 0, idx, nb, p0, r, skip);
    tap_ok(rc == 0 && unsure <= r / 4,
           "%s: both engines ran a step of %lld rows at rank %lld (%lld hidden units within rounding of a ReLU switch "
           "on this batch: their W1 rows are left out below)",
           shape, (long long)nb, (long long)r, (long long)unsure);
    if (rc == 0 && (rc = ec->read(ec->ctx, PI_PTRAIN_BUF_GRAD, gc)) == 0 &&
        (rc = eg->read(eg->ctx, PI_PTRAIN_BUF_GRAD, gg)) == 0)
        check_close("gradient", shape, gg, gc, r, d, ff, skip, 1e-4);
    else tap_ok(0, "%s: gradients read back", shape);
    if (rc == 0 && (rc = ec->read(ec->ctx, PI_PTRAIN_BUF_W, hc)) == 0 &&
        (rc = eg->read(eg->ctx, PI_PTRAIN_BUF_W, hg)) == 0)
        check_adam(shape, hg, hc, gg, gc, r, d, ff, skip, lr_t);
    else tap_ok(0, "%s: weights read back", shape);
    /* best is still init's weights: the engines copy them unchanged */
    if (rc == 0 && (rc = eg->read(eg->ctx, PI_PTRAIN_BUF_BEST, hg)) == 0)
        tap_ok(memcmp(hg, p0, sizeof(float) * (size_t)np) == 0, "%s: cuda best = the initial weights, bit for bit",
               shape);
    else tap_ok(0, "%s: best read back", shape);
    for (int k = 0; k < 2; k++)
        tap_ok(rc == 0 && fabs(lg[k] - lc[k]) <= 1e-5 * fabs(lc[k]),
               "%s: held-out loss %s the step: cuda %.9f, cpu %.9f (relative %.2g <= 1e-5)", shape,
               k ? "after" : "before", lg[k], lc[k], fabs(lg[k] - lc[k]) / fabs(lc[k]));
    pi_ptrain_engine_destroy(&ec);
    pi_ptrain_engine_destroy(&eg);
    pi_ptrain_samples_destroy(&s);
    free(p0), free(hc), free(hg), free(gc), free(gg), free(idx), free(skip);
}

/* (e) what (a)-(d) do not reach: a layer other than the first (the sets at il cap rows), a held-out set of
 * several of the cuda engine's forward chunks (1100 rows: 512, 512 and 76) and init again at the same rank,
 * which keeps the cuda engine's buffers and must zero Adam's moments. On layer 1 of two (every row its own
 * x), from the same weights: the held-out loss before and after a step and the step's gradient against the
 * cpu engine as in (a) and (b); then init(p0) and the same step again: the same gradient and weights, bit
 * for bit, as the first time. */
static void test_rebind(void)
{
    const int64_t d = 96, ff = 200, r = 48, nb = 64, np = r * d + ff * r;
    const int il = 1;
    struct pi_ptrain_samples *s = make_layers(2, d, ff, 1000, 1100, 8);
    struct pi_ptrain_engine *es[2] = {engine(s, PI_PTRAIN_DEVICE_CPU, 64), engine(s, PI_PTRAIN_DEVICE_CUDA, 64)};
    float *p0 = malloc(sizeof(float) * (size_t)np), *g[2][2], *w[2][2];
    int64_t idx[64];
    bool skip[48];
    PI_ASSERT(p0);
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 2; j++) {
            g[k][j] = malloc(sizeof(float) * (size_t)np), w[k][j] = malloc(sizeof(float) * (size_t)np);
            PI_ASSERT(g[k][j] && w[k][j]);
        }
    const double a1 = sqrt(6.0 / ((double)d / 3.0)), a2 = sqrt(3.0 / (double)r);
    for (int64_t i = 0; i < np; i++) p0[i] = urand() * (float)(i < r * d ? a1 : a2);
    for (int64_t i = 0; i < nb; i++) idx[i] = (int64_t)pi_rng_below(&rng, 1000);
    const float lr_t = (float)(5e-3 * sqrt(1.0 - 0.999f) / (1.0 - 0.9f)), pw = 4.0f;
    double l[2][2] = {{0}};
    int rc = 0;
    for (int k = 0; k < 2; k++) {
        struct pi_ptrain_engine *e = es[k];
        if (rc == 0) rc = e->layer(e->ctx, il);
        for (int j = 0; j < 2; j++) { /* j = 1: init again at the same rank */
            if (rc == 0) rc = e->init(e->ctx, r, p0);
            if (rc == 0 && j == 0) rc = e->heldout_loss(e->ctx, pw, &l[k][0]);
            if (rc == 0) rc = e->step(e->ctx, idx, nb, lr_t, pw);
            if (rc == 0 && j == 0) rc = e->heldout_loss(e->ctx, pw, &l[k][1]);
            if (rc == 0) rc = e->read(e->ctx, PI_PTRAIN_BUF_GRAD, g[k][j]);
            if (rc == 0) rc = e->read(e->ctx, PI_PTRAIN_BUF_W, w[k][j]);
        }
    }
    int64_t unsure = unsure_units(s, il, idx, nb, p0, r, skip);
    if (tap_ok(rc == 0 && unsure <= r / 4, "layer 1 of 2: both engines ran (%lld W1 rows within rounding of a switch)",
               (long long)unsure)) {
        for (int k = 0; k < 2; k++)
            tap_ok(fabs(l[1][k] - l[0][k]) <= 1e-5 * fabs(l[0][k]),
                   "layer 1 of 2, 1100 held-out rows: held-out loss %s the step: cuda %.9f, cpu %.9f",
                   k ? "after" : "before", l[1][k], l[0][k]);
        check_close("gradient", "layer 1 of 2", g[1][0], g[0][0], r, d, ff, skip, 1e-4);
        for (int k = 0; k < 2; k++)
            tap_ok(memcmp(g[k][1], g[k][0], sizeof(float) * (size_t)np) == 0 &&
                       memcmp(w[k][1], w[k][0], sizeof(float) * (size_t)np) == 0,
                   "%s: init again at the same rank, the same step: the same gradient and weights, bit for bit",
                   k ? "cuda" : "cpu");
    } else tap_skip(5, "an engine failed");
    pi_ptrain_engine_destroy(&es[0]);
    pi_ptrain_engine_destroy(&es[1]);
    pi_ptrain_samples_destroy(&s);
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 2; j++) free(g[k][j]), free(w[k][j]);
    free(p0);
}

/* Every epoch's figures, from the progress callback. */
struct trace {
    int n;
    int64_t rank[64];
    int epoch[64];
    double loss[64], t[64];
};

static void on_epoch(void *ctx, int il, int64_t rank, int epoch, double loss)
{
    (void)il;
    struct trace *tr = ctx;
    if (tr->n >= 64) return;
    tr->rank[tr->n] = rank, tr->epoch[tr->n] = epoch, tr->loss[tr->n] = loss, tr->t[tr->n] = now_s();
    tr->n++;
}

static int train(const struct pi_ptrain_samples *s, struct pi_ptrain_opts *o, enum pi_ptrain_device dev,
                 struct pi_sidecar_pred *out, struct pi_ptrain_report *rep, struct trace *tr)
{
    memset(tr, 0, sizeof *tr);
    o->device = dev;
    o->progress = on_epoch;
    o->progress_ctx = tr;
    return pi_ptrain_layer(pool, s, 0, o, out, rep);
}

static bool same_pred(const struct pi_sidecar_pred *a, const struct pi_sidecar_pred *b, int64_t d, int64_t ff)
{
    return a->rank == b->rank && memcmp(a->fc1, b->fc1, sizeof(float) * (size_t)(a->rank * d)) == 0 &&
           memcmp(a->fc2, b->fc2, sizeof(float) * (size_t)(ff * a->rank)) == 0 &&
           memcmp(a->threshold, b->threshold, sizeof a->threshold) == 0;
}

#define EPOCHS 10 /* per rank in test_layer, no early stop */

/* (c), (d): whole layers on each device. */
static void test_layer(const char *shape, int64_t d, int64_t ff, int batch)
{
    struct pi_ptrain_samples *s = make_samples(d, ff, 1000, 200, 8);
    struct pi_ptrain_opts o;
    struct pi_sidecar_pred pc, pg, pg2;
    struct pi_ptrain_report rc_, rg, rg2;
    static struct trace tc, tg, tg2;
    pi_ptrain_opts_default(&o);
    o.rank_min = 16, o.rank_max = 32, o.max_overhead = 0;
    o.epochs = o.patience = EPOCHS;
    o.batch = batch;
    o.lr = 1e-2f;
    o.type = PI_TYPE_F32;
    o.seed = pi_rng_next(&rng);
    int e1 = train(s, &o, PI_PTRAIN_DEVICE_CPU, &pc, &rc_, &tc);
    int e2 = train(s, &o, PI_PTRAIN_DEVICE_CUDA, &pg, &rg, &tg);
    int e3 = train(s, &o, PI_PTRAIN_DEVICE_CUDA, &pg2, &rg2, &tg2);
    if (!tap_ok(e1 == 0 && e2 == 0 && e3 == 0, "%s: pi_ptrain_layer on cpu, cuda, cuda (%d, %d, %d)", shape, e1, e2,
                e3)) {
        tap_skip(4, "a run failed");
        pi_ptrain_samples_destroy(&s);
        return;
    }
    tap_ok(rc_.ranks_tried == 2 && rg.ranks_tried == rc_.ranks_tried && tc.n == 2 * EPOCHS && tg.n == tc.n,
           "%s: the same ranks tried (cpu %lld, cuda %lld) and epochs run (%d, %d)", shape, (long long)rc_.ranks_tried,
           (long long)rg.ranks_tried, tc.n, tg.n);
    double worst = 0;
    bool aligned = tg.n == tc.n;
    for (int i = 0; aligned && i < tc.n; i++) {
        aligned = tg.rank[i] == tc.rank[i] && tg.epoch[i] == tc.epoch[i];
        double rel = fabs(tg.loss[i] - tc.loss[i]) / fabs(tc.loss[i]);
        worst = rel > worst || isnan(rel) ? rel : worst;
    }
    tap_ok(aligned && worst <= 1e-3,
           "%s: held-out loss of every epoch within %.2g relative (<= 1e-3; last: cuda %.6f, "
           "cpu %.6f)",
           shape, worst, tg.loss[tg.n - 1], tc.loss[tc.n - 1]);
    double dr = 0, da = 0;
    for (int k = 0; k < 2; k++) {
        dr = fmax(dr, fabs((double)pg.recall[k] - pc.recall[k]));
        da = fmax(da, fabs((double)pg.active[k] - pc.active[k]));
    }
    tap_ok(dr <= 0.01 && da <= 0.01 && pg.active[2] == pc.active[2],
           "%s: recall (safe %.4f / %.4f) and predicted active (%.3f / %.3f; true %.3f) of cuda / cpu within 0.01 "
           "(%.4f, %.4f); ranks kept %lld / %lld",
           shape, pg.recall[0], pc.recall[0], pg.active[0], pc.active[0], pc.active[2], dr, da, (long long)pg.rank,
           (long long)pc.rank);
    bool same_loss = tg2.n == tg.n;
    for (int i = 0; same_loss && i < tg.n; i++) same_loss = memcmp(&tg.loss[i], &tg2.loss[i], sizeof(double)) == 0;
    tap_ok(same_loss && same_pred(&pg, &pg2, d, ff) && rg.epochs == rg2.epochs,
           "%s: two cuda runs at seed %llu: the same bits (weights, thresholds, %d epochs' losses)", shape,
           (unsigned long long)o.seed, tg.n);
    pi_sidecar_pred_free(&pc), pi_sidecar_pred_free(&pg), pi_sidecar_pred_free(&pg2);
    pi_ptrain_samples_destroy(&s);
}

/* The 7B shape's figures (diagnostics). */
static void bench_7b(void)
{
    const int64_t d = 4096, ff = 11008, nt = 7373, nh = 819, rmax = 1024;
    double t0 = now_s();
    struct pi_ptrain_samples *s = make_samples(d, ff, nt, nh, 16);
    tap_diag("7B shape: samples drawn in %.1f s (%lld + %lld rows)", now_s() - t0, (long long)nt, (long long)nh);
    struct pi_ptrain_engine *eg = engine(s, PI_PTRAIN_DEVICE_CUDA, 128), *ec = engine(s, PI_PTRAIN_DEVICE_CPU, 128);
    float *p0 = malloc(sizeof(float) * (size_t)(rmax * (d + ff)));
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)nt);
    PI_ASSERT(p0 && idx);
    for (int64_t i = 0; i < nt; i++) idx[i] = (nt - 1 - i) * 7919 % nt; /* a permutation (7919 prime to 7373) */
    int rc = eg->layer(eg->ctx, 0);
    for (int64_t r = 32; rc == 0 && r <= rmax; r *= 2) {
        for (int64_t i = 0; i < r * (d + ff); i++) p0[i] = urand() * (i < r * d ? 0.03f : (float)sqrt(3.0 / r));
        double loss = 0, t1 = now_s();
        rc = eg->init(eg->ctx, r, p0);
        double t2 = now_s();
        for (int64_t b = 0; rc == 0 && b < nt; b += 128)
            rc = eg->step(eg->ctx, idx + b, PI_MIN(128, nt - b), 1e-3f, 4.0f);
        if (rc == 0) rc = eg->heldout_loss(eg->ctx, 4.0f, &loss);
        tap_diag("7B shape, cuda, rank %4lld: init %.3f s, one epoch (%lld steps of 128 rows and the held-out loss) "
                 "%.3f s, loss %.4f",
                 (long long)r, t2 - t1, (long long)((nt + 127) / 128), now_s() - t2, loss);
    }
    if (rc == 0) rc = ec->layer(ec->ctx, 0);
    if (rc == 0) rc = ec->init(ec->ctx, rmax, p0);
    double t1 = now_s();
    for (int k = 0; rc == 0 && k < 3; k++) rc = ec->step(ec->ctx, idx + 128 * k, 128, 1e-3f, 4.0f);
    tap_diag("7B shape, cpu (%d threads), rank 1024: %.3f s a step of 128 rows (one epoch: %lld steps)",
             pi_pool_size(pool), (now_s() - t1) / 3, (long long)((nt + 127) / 128));
    pi_ptrain_engine_destroy(&eg);
    pi_ptrain_engine_destroy(&ec);
    /* a whole layer as pi-train-predictors trains it on cuda (F16 weights), the ladder to 1024 forced */
    struct pi_ptrain_opts o;
    struct pi_sidecar_pred out;
    struct pi_ptrain_report rep;
    static struct trace tr;
    pi_ptrain_opts_default(&o);
    o.max_overhead = 0;
    o.epochs = o.patience = 10;
    t1 = now_s();
    if (rc == 0) rc = train(s, &o, PI_PTRAIN_DEVICE_CUDA, &out, &rep, &tr);
    /* a rank's epochs: its epoch count times the mean gap between its consecutive epochs (the gap before
     * its first epoch also holds its init and the rank before's calibration) */
    double total = now_s() - t1, epochs = 0;
    for (int i = 0; i < tr.n;) {
        int j = i + 1;
        while (j < tr.n && tr.rank[j] == tr.rank[i]) j++;
        if (j - i > 1) epochs += (tr.t[j - 1] - tr.t[i]) / (j - i - 1) * (j - i);
        i = j;
    }
    tap_diag("7B shape, cuda, one layer (ladder 32-1024, 10 epochs each, F16, calibration on %d threads): %.1f s, of "
             "which about %.1f s epochs and %.1f s the rest (init, calibration, storing); kept rank %lld, recall %.4f, "
             "predicted active %.3f of %.3f",
             pi_pool_size(pool), total, epochs, total - epochs, (long long)out.rank, out.recall[0], out.active[0],
             out.active[2]);
    tap_ok(rc == 0, "7B shape: the cuda engine trained a layer (diagnostics above)");
    if (rc == 0) pi_sidecar_pred_free(&out);
    pi_ptrain_samples_destroy(&s);
    free(p0), free(idx);
}

int main(int argc, char **argv)
{
    const bool timing = !(argc > 1 && strcmp(argv[1], "--no-timing") == 0);
    const char *se = getenv("PI_SEED");
    const uint64_t seed = se ? strtoull(se, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    pi_rng_seed(&rng, seed);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    pool = pi_pool_new(ncpu > 0 ? (int)PI_MIN(ncpu, 16) : 1);
    /* is there a cuda engine? AUTO says why not without logging an error */
    struct pi_ptrain_samples *probe = make_samples(8, 8, 2, 1, 1);
    struct pi_ptrain_opts o;
    struct pi_ptrain_engine *e = NULL;
    pi_ptrain_opts_default(&o);
    o.device = PI_PTRAIN_DEVICE_AUTO;
    if (pi_ptrain_engine_new(pool, probe, &o, &e) < 0) tap_bail("cannot open an engine");
    if (e->device != PI_PTRAIN_DEVICE_CUDA) {
        static char why[256];
        snprintf(why, sizeof why, "%s", e->desc);
        if (strstr(why, "no CUDA device") || strstr(why, "build has no CUDA")) tap_skip_all(why);
        tap_bail("the cuda engine is not available: %s", why);
    }
    tap_diag("%s; seed %llu (PI_SEED=%llu repeats)", e->desc, (unsigned long long)seed, (unsigned long long)seed);
    pi_ptrain_engine_destroy(&e);
    pi_ptrain_samples_destroy(&probe);

    test_step("d256 ff1024", 256, 1024, 64, 128, 128);
    test_step("d96 ff200", 96, 200, 48, 64, 40);
    test_rebind();
    test_layer("d256 ff1024", 256, 1024, 128);
    test_layer("d96 ff200", 96, 200, 64);
    if (timing) bench_7b();
    pi_pool_destroy(&pool);
    return tap_done();
}
