/*
 * tests/unit/test-predictor-train.c - compute/predictor-train.h on synthetic data, fresh every run:
 *   - the reservoirs: sizes bounded, every kept row's mask the true one of its own x;
 *   - the gradient of the weighted cross-entropy against central finite differences (double);
 *   - training on masks drawn from a hidden ReLU layer of rank 4: held-out recall reaches the targets at the
 *     stored thresholds and the predicted share is well below 1;
 *   - determinism: the same seed gives the same bits on 1 and 3 threads, another seed other bits;
 *   - bad options refused.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/predictor-train.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "model/model-gen.h"
#include "model/model.h"
#include "tests/tap.h"

static struct pi_rng rng;

static float urand(void) { return (float)(2.0 * pi_rng_uniform(&rng) - 1.0); }

static pi_model_t *gen_model(const char *path)
{
    struct pi_model_gen g = {0};
    struct pi_model_opts o;
    pi_model_t *m = NULL;
    char err[256];
    pi_model_gen_preset("tiny", &g); /* n_embd 64, n_ff 256, 4 layers */
    g.n_vocab = 64;
    g.type = PI_TYPE_F32;
    g.act = PI_FFN_ACT_RELU;
    if (pi_model_gen_write(&g, path) < 0) tap_bail("cannot write %s", path);
    pi_model_opts_default(&o);
    o.no_down_t = true;
    if (pi_model_open(path, &o, &m, err, sizeof err) < 0) tap_bail("cannot open %s: %s", path, err);
    return m;
}

/* Offer chunks of rows tokens whose x, gate come from a hidden layer G (n_ff, d) with bias b: gate =
 * G x + b over x[1..] (x[0] is noise the predictor must learn to ignore). Every layer gets the same rows. */
static void feed(struct pi_ptrain_samples *s, const float *G, const float *bias, int chunks, int rows,
                 int heldout_every)
{
    const int64_t d = s->n_embd, ff = s->n_ff;
    float *x = malloc(sizeof(float) * (size_t)(rows * d)), *gate = malloc(sizeof(float) * (size_t)(rows * ff));
    for (int c = 0; c < chunks; c++) {
        for (int i = 0; i < rows; i++) {
            float *xi = x + i * d;
            for (int64_t k = 0; k < d; k++) xi[k] = urand();
            for (int64_t j = 0; j < ff; j++) {
                double z = bias[j];
                for (int64_t k = 1; k < d; k++) z += (double)G[j * d + k] * xi[k];
                gate[i * ff + j] = (float)z;
            }
        }
        pi_ptrain_samples_chunk(s, (c + 1) % heldout_every == 0 ? PI_PTRAIN_HELDOUT : PI_PTRAIN_TRAIN, rows);
        for (int il = 0; il < s->n_layer; il++) pi_ptrain_capture(s, il, rows, NULL, x, gate, gate);
    }
    free(x), free(gate);
}

/* G (n_ff, d) of rank 4 (every gate a combination of four directions, as a predictor of rank 32 can
 * represent) and biases for a sparse layer (~20% active). */
static void hidden_layer(const struct pi_ptrain_samples *s, float *G, float *bias)
{
    float B[4][64];
    PI_ASSERT(s->n_embd == 64);
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 64; i++) B[k][i] = urand();
    for (int64_t j = 0; j < s->n_ff; j++) {
        float c[4] = {urand(), urand(), urand(), urand()};
        for (int i = 0; i < 64; i++) G[j * 64 + i] = c[0] * B[0][i] + c[1] * B[1][i] + c[2] * B[2][i] + c[3] * B[3][i];
    }
    for (int64_t j = 0; j < s->n_ff; j++) bias[j] = -2.5f + 2.0f * urand(); /* sparse: ~10-40% active */
}

/* Every kept row's mask is its gate's sign (recomputed from x through G). */
static void test_reservoir(struct pi_ptrain_samples *s, const float *G, const float *bias)
{
    tap_ok(s->n[0] == s->cap[0] && s->n[1] == s->cap[1] && s->seen[0] > (uint64_t)s->cap[0],
           "reservoir: full (%lld of %llu, %lld of %llu offered)", (long long)s->n[0], (unsigned long long)s->seen[0],
           (long long)s->n[1], (unsigned long long)s->seen[1]);
    int bad = 0;
    for (int k = 0; k < 2; k++)
        for (int64_t r = 0; r < s->n[k]; r++) {
            const float *x = s->x[k] + (size_t)(3 * s->cap[k] + r) * (size_t)s->n_embd; /* layer 3 */
            const uint64_t *mk = s->mask[k] + (size_t)(3 * s->cap[k] + r) * (size_t)s->mask_words;
            for (int64_t j = 0; j < s->n_ff; j++) {
                double z = bias[j];
                for (int64_t i = 1; i < s->n_embd; i++) z += (double)G[j * s->n_embd + i] * x[i];
                bad += (float)z > 0.0f ? !((mk[j / 64] >> (j % 64)) & 1) : (int)((mk[j / 64] >> (j % 64)) & 1);
            }
        }
    tap_is_int(bad, 0, "reservoir: every kept row carries its own true mask");
}

/* Central differences of the loss (pos_weight 4) in random coordinates of W1 and W2, against the
 * analytic gradient. The loss is summed in double from float terms (relative error ~1e-7), so a step
 * of 1e-2 leaves the difference quotient about 1e-5 of noise; ReLU kinks within the step are avoided
 * by skipping coordinates whose hidden unit has |h| < 0.05 on some row. */
static void test_gradient(pi_pool_t *pool, const struct pi_ptrain_samples *s)
{
    const int64_t r = 8, d = s->n_embd, ff = s->n_ff, n = 6;
    float *W1 = malloc(sizeof(float) * (size_t)(r * d)), *W2 = malloc(sizeof(float) * (size_t)(ff * r));
    float *g1 = malloc(sizeof(float) * (size_t)(r * d)), *g2 = malloc(sizeof(float) * (size_t)(ff * r));
    const float *X = s->x[0];
    const uint64_t *M = s->mask[0];
    for (int64_t i = 0; i < r * d; i++) W1[i] = 0.3f * urand();
    for (int64_t i = 0; i < ff * r; i++) W2[i] = 0.5f * urand();
    double nan_ret = pi_ptrain_loss_grad(pool, s, r, W1, W2, X, M, n, 4.0f, g1, g2);
    double worst = 0, eps = 1e-2;
    int checked = 0;
    for (int t = 0; t < 200 && checked < 40; t++) {
        bool first = t % 2 == 0;
        int64_t idx = (int64_t)pi_rng_below(&rng, (uint64_t)(first ? r * d : ff * r)), unit = first ? idx / d : idx % r;
        bool kink = false;
        for (int64_t row = 0; row < n; row++) {
            double h = 0;
            for (int64_t i = 0; i < d; i++) h += (double)W1[unit * d + i] * X[row * d + i];
            kink |= fabs(h) < 0.05;
        }
        if (kink) continue;
        float *w = first ? W1 + idx : W2 + idx, keep = *w;
        *w = keep + (float)eps;
        double lp = pi_ptrain_loss_grad(pool, s, r, W1, W2, X, M, n, 4.0f, NULL, NULL);
        *w = keep - (float)eps;
        double lm = pi_ptrain_loss_grad(pool, s, r, W1, W2, X, M, n, 4.0f, NULL, NULL);
        *w = keep;
        double fd = (lp - lm) / (2 * eps), an = first ? g1[idx] : g2[idx];
        double err = fabs(fd - an) / (fabs(an) + 1e-4);
        if (err > worst) worst = err;
        checked++;
    }
    tap_ok(isnan(nan_ret), "gradient: a gradient call returns NaN for the loss");
    tap_ok(checked >= 20 && worst < 0.01,
           "gradient: %d coordinates of W1 and W2 match central differences "
           "(worst relative error %.2g < 0.01)",
           checked, worst);
    free(W1), free(W2), free(g1), free(g2);
}

static bool same(const struct pi_sidecar_pred *a, const struct pi_sidecar_pred *b, int64_t d, int64_t ff)
{
    return a->rank == b->rank && a->type == b->type &&
           memcmp(a->fc1, b->fc1, sizeof(float) * (size_t)(a->rank * d)) == 0 &&
           memcmp(a->fc2, b->fc2, sizeof(float) * (size_t)(ff * a->rank)) == 0 &&
           memcmp(a->threshold, b->threshold, sizeof a->threshold) == 0;
}

static void test_train(pi_pool_t *pool3, const struct pi_ptrain_samples *s)
{
    struct pi_ptrain_opts o;
    struct pi_sidecar_pred a, b, c;
    struct pi_ptrain_report ra, rb, rc;
    pi_ptrain_opts_default(&o);
    o.rank_min = o.rank_max = 32;
    o.epochs = 10;
    o.batch = 64;
    o.lr = 1e-2f;
    o.type = PI_TYPE_F32;
    int e1 = pi_ptrain_layer(NULL, s, 1, &o, &a, &ra);
    int e2 = pi_ptrain_layer(pool3, s, 1, &o, &b, &rb);
    o.seed = 2;
    int e3 = pi_ptrain_layer(pool3, s, 1, &o, &c, &rc);
    tap_ok(e1 == 0 && e2 == 0 && e3 == 0 && a.rank == 32, "train: three runs (rank %lld, %d epochs, loss %.4f)",
           (long long)a.rank, ra.epochs, ra.loss);
    tap_ok(a.recall[0] >= 0.99f && a.recall[1] >= 0.95f && a.recall[1] < a.recall[0] + 1e-6f,
           "train: held-out recall %.4f (safe) and %.4f (aggressive) reach 0.99 and 0.95", a.recall[0], a.recall[1]);
    tap_ok(a.active[0] < 0.6f && a.active[1] <= a.active[0] && a.active[2] < a.active[0],
           "train: predicted active %.3f (safe), %.3f (aggressive) against %.3f truly active", a.active[0], a.active[1],
           a.active[2]);
    tap_ok(same(&a, &b, s->n_embd, s->n_ff), "determinism: the same bits on 1 and 3 threads");
    tap_ok(!same(&a, &c, s->n_embd, s->n_ff), "determinism: another seed, other weights");
    pi_sidecar_pred_free(&a), pi_sidecar_pred_free(&b), pi_sidecar_pred_free(&c);
    struct pi_ptrain_opts bad[5];
    for (int k = 0; k < 5; k++) pi_ptrain_opts_default(&bad[k]);
    bad[0].recall[0] = 0.9, bad[0].recall[1] = 0.95; /* aggressive above safe */
    bad[1].rank_max = 16;                            /* below rank_min */
    bad[2].rank_max = PI_SIDECAR_PRED_RANK_MAX + 1;
    bad[3].type = PI_TYPE_Q4_0;
    bad[4].lr = 0;
    int refused = 0;
    for (int k = 0; k < 5; k++) refused += pi_ptrain_layer(NULL, s, 0, &bad[k], &a, &ra) == -PI_ERR_INVAL;
    tap_is_int(refused, 5, "bad options refused (5 cases)");
}

int main(void)
{
    uint64_t seed = (uint64_t)time(NULL);
    char path[] = "/tmp/pi-test-ptrain-XXXXXX";
    pi_rng_seed(&rng, seed);
    tap_diag("seed %llu", (unsigned long long)seed);
    int fd = mkstemp(path);
    if (fd < 0) tap_bail("mkstemp failed");
    close(fd);
    pi_model_t *m = gen_model(path);
    unlink(path);
    struct pi_ptrain_samples *s = pi_ptrain_samples_new(m, 1536, 384, 64, seed);
    float *G = malloc(sizeof(float) * (size_t)(s->n_ff * s->n_embd)), *bias = malloc(sizeof(float) * (size_t)s->n_ff);
    hidden_layer(s, G, bias);
    feed(s, G, bias, 40, 64, 5); /* 2048 training and 512 held-out tokens offered */
    pi_pool_t *pool3 = pi_pool_new(3);
    test_reservoir(s, G, bias);
    test_gradient(pool3, s);
    test_train(pool3, s);
    pi_pool_destroy(&pool3);
    pi_ptrain_samples_destroy(&s);
    pi_model_destroy(&m);
    free(G), free(bias);
    return tap_done();
}
