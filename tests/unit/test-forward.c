/*
 * tests/unit/test-forward.c - golden test of the forward pass against HF transformers.
 *
 * For each golden file (the fixtures README describes them): run its `tokens` through the model and
 * compare every position's logits with the reference `logits` by relative error ||out - ref|| / ||ref||,
 * twice: as one prompt batch (the matmul path) and token by token (the decode path: matvec and the
 * neuron-wise FFN). That is done with the real kernels (activations quantised to 8 bits for quantised
 * weights: per-type tolerance) and in reference mode (f32 activations: the forward pass itself must be
 * exact to float rounding for every weight type, 8.2e-7). As a diagnostic, reference mode with the
 * kernels' 8-bit activation rounding (round_activations) shows what that rounding alone costs.
 * First, reproducibility: repeated runs on 2 (and on 3) threads give the same logits bit for bit, and
 * a model in PowerInfer's layout (ffn_down_t instead of ffn_down) gives the logits of the same weights
 * stored with ffn_down.
 * Then generate greedily and compare with `greedy`, but only while the top-1 margin of our own logits
 * stays well above the error we measured on the prompt (four times the largest absolute logit error):
 * the random tiny model's margins are often tiny, and a token chosen by a margin smaller than our error
 * proves nothing. Once a step falls below that margin the rest is not compared (it may diverge). In
 * reference mode the error is ~1e-6, so the whole continuation is compared; with 8-bit activations
 * the margin needed is ~1, and the comparison usually stops early (the count is printed).
 *
 * tiny-llama-q4_0 and demo-relu-q4_0 are in tests/data; the other types read ../shared/fixtures and
 * skip when it is absent.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/common.h"
#include "compute/forward.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/rows16.h"
#include "model/gguf.h"
#include "model/model-gen.h"
#include "model/model.h"
#include "tests/tap.h"

struct golden_case {
    const char *model;  /* relative to tests/data (in_data) or the fixtures */
    const char *golden;
    bool in_data;
    double tol;         /* relative error allowed per position */
};

/* Bounds: 1.5x the worst position measured over the kernel variants (scalar, AVX2, AVX-512;
 * doc/forward.md has the table). f16 weights keep activations in f32 (~8e-7; 1.8e-6 with the scalar
 * kernels' plain float sums). The quantised types round each product's input to 8 bits as llama.cpp's
 * CPU path does (Q8_0 blocks, d = amax / 127): 2.4e-2..2.7e-2 on the trained demo model and
 * 4e-2..7.2e-2 on the random tiny model, whose random weights amplify rounding more. That is the
 * rounding itself, not the kernels: the same rounding with exact double sums (reference mode with
 * round_activations, printed as a diagnostic) lands at the same figures. */
static const struct golden_case cases[] = {
    {"tiny-llama-q4_0.gguf", "tiny-llama-q4_0.golden.gguf", true, 8.6e-2},
    {"demo-relu-q4_0.gguf", "demo-relu-q4_0.golden.gguf", true, 4.1e-2},
    {"models/tiny-llama-f16.gguf", "golden/tiny-llama-f16.golden.gguf", false, 2.1e-6},
    {"models/tiny-llama-q8_0.gguf", "golden/tiny-llama-q8_0.golden.gguf", false, 8.5e-2},
    {"models/tiny-llama-q4_1.gguf", "golden/tiny-llama-q4_1.golden.gguf", false, 6.1e-2},
    {"models/tiny-llama-q5_0.gguf", "golden/tiny-llama-q5_0.golden.gguf", false, 6.6e-2},
    {"models/tiny-llama-q5_1.gguf", "golden/tiny-llama-q5_1.golden.gguf", false, 1.1e-1},
    {"demo/demo-relu-f16.gguf", "demo/golden/demo-relu-f16.golden.gguf", false, 2.7e-6},
    {"demo/demo-relu-q8_0.gguf", "demo/golden/demo-relu-q8_0.golden.gguf", false, 3.6e-2},
};

/* Reference mode (f32 activations) must reproduce the float64 reference to float rounding: measured
 * 4.5e-7..5.5e-7 for every type; 1.5x. */
#define REF_TOL 8.2e-7

struct golden {
    pi_gguf_t *g;
    const int32_t *tokens; /* (n) */
    int n;
    const float *logits;   /* (n, n_vocab) */
    const int32_t *greedy; /* (n_greedy) */
    int n_greedy;
};

static int open_golden(const char *path, int n_vocab, struct golden *gd)
{
    char err[256];
    memset(gd, 0, sizeof *gd);
    if (pi_gguf_open(path, &gd->g, err, sizeof err) < 0) {
        tap_diag("%s: %s", path, err);
        return -1;
    }
    const struct pi_gguf_tensor *t = pi_gguf_find_tensor(gd->g, "tokens");
    const struct pi_gguf_tensor *l = pi_gguf_find_tensor(gd->g, "logits");
    const struct pi_gguf_tensor *y = pi_gguf_find_tensor(gd->g, "greedy");
    if (!t || !l || !y || t->type != PI_TYPE_I32 || l->type != PI_TYPE_F32 || y->type != PI_TYPE_I32 ||
        l->ne[0] != (uint64_t)n_vocab || l->ne[1] != t->ne[0]) {
        tap_diag("%s: unexpected golden layout", path);
        return -1;
    }
    gd->tokens = t->data;
    gd->n = (int)t->ne[0];
    gd->logits = l->data;
    gd->greedy = y->data;
    gd->n_greedy = (int)y->ne[0];
    return 0;
}

static double rel_err(const float *out, const float *ref, int n, double *max_abs)
{
    double num = 0.0, den = 0.0;
    for (int j = 0; j < n; j++) {
        double e = (double)out[j] - ref[j];
        num += e * e;
        den += (double)ref[j] * ref[j];
        if (max_abs && fabs(e) > *max_abs) *max_abs = fabs(e);
    }
    return sqrt(num / den);
}

/* argmax of x (n) and the margin to the runner-up. */
static int argmax(const float *x, int n, float *margin)
{
    int best = 0, second = -1;
    for (int j = 1; j < n; j++) {
        if (x[j] > x[best]) {
            second = best;
            best = j;
        } else if (second < 0 || x[j] > x[second]) {
            second = j;
        }
    }
    *margin = x[best] - x[second];
    return best;
}

/* Prompt logits through one path; returns the worst relative error over positions. */
static double prompt_error(const pi_model_t *m, const struct golden *gd, bool token_by_token, bool ref,
                           bool rounded, double *max_abs)
{
    int V = m->hp.n_vocab;
    struct pi_forward_opts o;
    pi_forward_opts_default(&o);
    o.n_threads = 2;
    o.f32_activations = ref || rounded;
    o.round_activations = rounded;
    o.n_ctx = 128;
    pi_forward_t *f = pi_forward_new(m, &o);
    float *lg = malloc((size_t)gd->n * V * sizeof *lg);
    double worst = INFINITY;
    if (!f || !lg) goto out;
    if (token_by_token) {
        for (int i = 0; i < gd->n; i++)
            if (pi_forward_tokens(f, 0, gd->tokens + i, 1, i, lg + (size_t)i * V, false) < 0) goto out;
    } else if (pi_forward_tokens(f, 0, gd->tokens, gd->n, 0, lg, true) < 0) {
        goto out;
    }
    worst = 0.0;
    for (int i = 0; i < gd->n; i++) {
        double e = rel_err(lg + (size_t)i * V, gd->logits + (size_t)i * V, V, max_abs);
        worst = e > worst ? e : worst;
    }
out:
    free(lg);
    pi_forward_destroy(&f);
    return worst;
}

/* Greedy continuation, compared while our margin exceeds `need`. Returns the tokens compared, or -1
 * on a mismatch. */
static int greedy_check(const pi_model_t *m, const struct golden *gd, bool ref, float need, int *first_bad)
{
    int V = m->hp.n_vocab, compared = -1;
    struct pi_forward_opts o;
    pi_forward_opts_default(&o);
    o.f32_activations = ref;
    o.n_ctx = 128;
    pi_forward_t *f = pi_forward_new(m, &o);
    float *lg = malloc((size_t)V * sizeof *lg), margin;
    if (!f || !lg || pi_forward_tokens(f, 0, gd->tokens, gd->n, 0, lg, false) < 0) goto out;
    compared = 0;
    for (int s = 0; s < gd->n_greedy; s++) {
        int32_t tok = argmax(lg, V, &margin);
        if (margin < need) break;
        if (tok != gd->greedy[s]) {
            *first_bad = s;
            compared = -1;
            break;
        }
        compared++;
        if (s + 1 < gd->n_greedy && pi_forward_tokens(f, 0, &tok, 1, gd->n + s, lg, false) < 0) {
            compared = -1;
            break;
        }
    }
out:
    free(lg);
    pi_forward_destroy(&f);
    return compared;
}

/* The prompt's logits as one batch and token by token: the same bits (memcmp)? */
static bool batch_invariant(const pi_model_t *m, const struct golden *gd)
{
    size_t nl = (size_t)gd->n * (size_t)m->hp.n_vocab;
    float *a = malloc(nl * sizeof *a), *b = malloc(nl * sizeof *b);
    struct pi_forward_opts o;
    pi_forward_opts_default(&o);
    o.n_threads = 2;
    o.n_ctx = 128;
    pi_forward_t *f1 = pi_forward_new(m, &o), *f2 = pi_forward_new(m, &o);
    bool same = a && b && f1 && f2 && pi_forward_tokens(f1, 0, gd->tokens, gd->n, 0, a, true) >= 0;
    for (int i = 0; same && i < gd->n; i++)
        same = pi_forward_tokens(f2, 0, gd->tokens + i, 1, i, b + (size_t)i * m->hp.n_vocab, false) >= 0;
    same = same && memcmp(a, b, nl * sizeof *a) == 0;
    pi_forward_destroy(&f1);
    pi_forward_destroy(&f2);
    free(a), free(b);
    return same;
}

/* One golden case; with rows16, the model's Q4_0 matrices packed in 16-row groups (the in-process CPU
 * engine's binding, kernels/cpu/rows16.h), which must meet the same bounds and give a token the same
 * bits in a batch as alone. */
static void run_case(const struct golden_case *c, bool rows16)
{
    char mp[1024], gp[1024], err[256];
    pi_model_t *m = NULL;
    struct golden gd;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.rows16 = rows16;
    const char *model = c->in_data ? tap_data(mp, sizeof mp, c->model) : tap_fixture(mp, sizeof mp, c->model);
    const char *golden = c->in_data ? tap_data(gp, sizeof gp, c->golden) : tap_fixture(gp, sizeof gp, c->golden);
    if (!model || !golden) {
        tap_skip(6 + rows16, "fixture not found (../shared/fixtures)");
        return;
    }
    if (!tap_ok(pi_model_open(model, &mo, &m, err, sizeof err) == 0, "%s: model binds%s", c->model,
                rows16 ? " (16-row packed)" : "")) {
        tap_diag("  %s", err);
        tap_skip(5 + rows16, "no model");
        return;
    }
    if (!tap_ok(open_golden(golden, m->hp.n_vocab, &gd) == 0, "%s: golden file readable", c->golden)) {
        tap_skip(4 + rows16, "no golden");
        pi_model_destroy(&m);
        return;
    }
    for (int ref = 0; ref <= 1; ref++) {
        double max_abs = 0.0, tol = ref ? REF_TOL : c->tol;
        const char *mode = ref ? "f32 activations" : rows16 ? "16-row packed kernels" : "kernels";
        double e_batch = prompt_error(m, &gd, false, ref, false, &max_abs);
        double e_tok = prompt_error(m, &gd, true, ref, false, &max_abs);
        if (!ref) {
            double e_round = prompt_error(m, &gd, false, false, true, NULL);
            tap_diag("%s: exact sums over 8-bit rounded activations (ggml's rounding only): %.3g", c->model,
                     e_round);
        }
        tap_ok(e_batch <= tol && e_tok <= tol,
               "%s (%s): %d positions, relative error batch %.3g, token by token %.3g (<= %.2g)", c->model,
               mode, gd.n, e_batch, e_tok, tol);
        float need = (float)PI_MAX(4.0 * max_abs, 1e-4);
        int bad = -1, n = greedy_check(m, &gd, ref, need, &bad);
        if (n < 0 && bad >= 0) tap_ok(0, "%s (%s): greedy token %d differs from the reference", c->model, mode, bad);
        else tap_ok(n >= 0 && (!ref || n == gd.n_greedy),
                    "%s (%s): greedy matches the reference on the first %d of %d tokens "
                    "(compared while the margin exceeds %.3g)",
                    c->model, mode, n, gd.n_greedy, (double)need);
    }
    if (rows16) tap_diag("%s: %zu bytes of weights packed in 16-row groups", c->model, m->rows16_bytes);
    if (rows16)
        tap_ok(m->rows16_bytes > 0 && batch_invariant(m, &gd), "%s (16-row packed, %s): prompt logits in one batch == token by token (memcmp)",
               c->model, pi_kernels_variant());
    pi_gguf_destroy(&gd.g);
    pi_model_destroy(&m);
}

/* logits (n_steps, V): the golden prompt as one batch, then n_steps - 1 greedy decode steps. */
static int run_steps(const pi_model_t *m, const struct golden *gd, int n_threads, int n_steps, float *logits)
{
    int V = m->hp.n_vocab, rc = -1;
    struct pi_forward_opts o;
    pi_forward_opts_default(&o);
    o.n_threads = n_threads;
    o.n_ctx = 128;
    pi_forward_t *f = pi_forward_new(m, &o);
    if (!f || pi_forward_tokens(f, 0, gd->tokens, gd->n, 0, logits, false) < 0) goto out;
    for (int s = 1; s < n_steps; s++) {
        float margin;
        int32_t tok = argmax(logits + (size_t)(s - 1) * V, V, &margin);
        if (pi_forward_tokens(f, 0, &tok, 1, gd->n + s - 1, logits + (size_t)s * V, false) < 0) goto out;
    }
    rc = 0;
out:
    pi_forward_destroy(&f);
    return rc;
}

/* Reproducibility: the same prompt and greedy decode (ReLU model: dense and neuron-wise layers), four
 * runs each on 2 and on 3 threads: every run's logits equal the first run's with the same thread
 * count bit for bit (no float sum depends on thread timing). */
static void test_repeatable(void)
{
    enum { STEPS = 10, RUNS = 4 };
    char mp[1024], gp[1024], err[256];
    pi_model_t *m = NULL;
    struct golden gd;
    if (pi_model_open(tap_data(mp, sizeof mp, "demo-relu-q4_0.gguf"), NULL, &m, err, sizeof err) < 0 ||
        open_golden(tap_data(gp, sizeof gp, "demo-relu-q4_0.golden.gguf"), m->hp.n_vocab, &gd) < 0) {
        tap_ok(0, "demo-relu-q4_0 opens: %s", err);
        pi_model_destroy(&m);
        return;
    }
    size_t nl = (size_t)STEPS * (size_t)m->hp.n_vocab;
    float *first = malloc(nl * sizeof *first), *lg = malloc(nl * sizeof *lg);
    for (int threads = 2; threads <= 3; threads++) {
        int runs = 0, same = first && lg && run_steps(m, &gd, threads, STEPS, first) == 0;
        for (int r = 1; same && r < RUNS; r++) {
            same = run_steps(m, &gd, threads, STEPS, lg) == 0 && memcmp(lg, first, nl * sizeof *lg) == 0;
            runs += same;
        }
        tap_ok(same, "demo-relu-q4_0, %d threads: prompt + %d decode steps, logits of %d runs equal bit for bit "
               "(%d of %d repeats)", threads, STEPS - 1, RUNS, runs, RUNS - 1);
    }
    free(first);
    free(lg);
    pi_gguf_destroy(&gd.g);
    pi_model_destroy(&m);
}

/* PowerInfer's layout: a file with ffn_down_t instead of ffn_down (pi_model_gen powerinfer), whose
 * ffn_down the loader builds by transposing ffn_down_t, against the same seed written with both
 * tensors (ffn_down as stored). For f16 and f32 weights each built ffn_down element is the stored
 * one's bits (a transpose through f32 and back is exact; test-model checks the bytes), ffn_down_t is
 * the same tensor in both files and so is every other weight; the forward pass is a function of the
 * weights' bits and the thread count (test_repeatable), so the logits must be equal bit for bit: the
 * tolerance is 0. ReLU (written as pinfer.ffn_activation, since PWRI alone would make only one of the
 * two files ReLU), so decode steps take both the dense and the neuron-wise (ffn_down_t) FFN. */
static void test_powerinfer_layout(void)
{
    enum { STEPS = 8, N_PROMPT = 12 };
    const enum pi_type types[] = {PI_TYPE_F16, PI_TYPE_F32};
    char dir[256], pa[512], pb[512], err[256];
    snprintf(dir, sizeof dir, "%s/pi-test-forward-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) tap_bail("mkdtemp failed");
    snprintf(pa, sizeof pa, "%s/pwri.gguf", dir);
    snprintf(pb, sizeof pb, "%s/both.gguf", dir);
    int32_t toks[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) toks[i] = (int32_t)((i * 37 + 5) % 128);
    struct golden gd = {.tokens = toks, .n = N_PROMPT};
    for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
        struct pi_model_gen g = {.n_vocab = 128, .n_embd = 64, .n_layer = 3, .n_ff = 192, .n_head = 4, .n_head_kv = 2,
                                 .type = types[k], .act = PI_FFN_ACT_RELU, .seed = 11, .powerinfer = true};
        pi_model_t *a = NULL, *b = NULL;
        int rc = pi_model_gen_write(&g, pa);
        g.powerinfer = false;
        g.down_t = true;
        if (rc == 0) rc = pi_model_gen_write(&g, pb);
        if (rc == 0) rc = pi_model_open(pa, NULL, &a, err, sizeof err);
        if (rc == 0) rc = pi_model_open(pb, NULL, &b, err, sizeof err);
        size_t nl = (size_t)STEPS * 128;
        float *la = malloc(nl * sizeof *la), *lb = malloc(nl * sizeof *lb);
        double worst = INFINITY;
        if (rc == 0 && la && lb && a->layers[0].down_built && !b->layers[0].down_built &&
            run_steps(a, &gd, 2, STEPS, la) == 0 && run_steps(b, &gd, 2, STEPS, lb) == 0) {
            worst = 0;
            for (size_t i = 0; i < nl; i++) worst = fmax(worst, fabs((double)la[i] - lb[i]));
        } else if (rc != 0) {
            tap_diag("  %s", err);
        }
        tap_ok(worst == 0.0, "%s, PowerInfer's layout (ffn_down built from ffn_down_t): prompt + %d decode steps, "
               "logits equal the file with ffn_down's (max difference %g)", pi_type_name(types[k]), STEPS - 1, worst);
        free(la);
        free(lb);
        pi_model_destroy(&a);
        pi_model_destroy(&b);
        unlink(pa);
        unlink(pb);
    }
    rmdir(dir);
}

int main(void)
{
    test_repeatable();
    test_powerinfer_layout();
    for (size_t i = 0; i < PI_ARRAY_LEN(cases); i++) run_case(&cases[i], false);
    /* the Q4_0 cases again through the 16-row packed kernels, where this CPU has them */
    for (size_t i = 0; i < 2; i++) {
        if (pi_r16_kernel(PI_TYPE_Q4_0)) run_case(&cases[i], true);
        else tap_skip(7, "no 16-row packed kernel in this CPU's variant");
    }
    return tap_done();
}
