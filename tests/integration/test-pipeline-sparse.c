/*
 * tests/integration/test-pipeline-sparse.c - sparse execution through the real programs (issue 17,
 * doc/predictors.md, "Runtime"), in a private temporary directory with a hard timeout:
 *   - the demo ReLU model with an all-ones predictor added (fc2 = 0: every logit is 0, at the
 *     threshold 0, so every neuron is predicted active): `--sparsity safe` gives the golden logits
 *     within the golden tolerance and the dense run's within the two-path bound (the masked FFN is the
 *     neuron kernel, the dense prompt FFN the matmul), single process and pipeline at hot fraction 0,
 *     0.5 and 1 with 1 and 2 CPU workers; pi-ctl status then says sparsity 0 and recall 1 exactly;
 *   - the same model with predictors that select a fixed random 40% (prompts computed densely, the
 *     others zeroed) or 8% (neuron by neuron) of each layer's neurons: every
 *     engine and placement equals a reference computed here that skips the same neurons (the
 *     predictor evaluated on this reference's own FFN input, each selected neuron in float64 on the
 *     dequantised rows), and is far from the dense logits (the masks really act);
 *   - predictors whose masks follow the input's size (a model file's read the residual stream before
 *     ffn_norm, as PowerInfer's graph feeds them): every engine skips the share of the prompt's pairs
 *     computed here on the residual, not the one on the norm's output (66-70% against 37-39%);
 *   - with random predictors (about half the neurons, different per token) status gives per layer a
 *     sparsity near one half, the bytes skipped in proportion and a recall in (0.2, 0.8);
 *   - pi-perplexity prints the FFN sparsity and recall lines from the engines' counts;
 *   - a SwiGLU model without thresholds tries to calibrate them for safe (a missing text: exit 2, the
 *     text named) and runs dense under auto;
 *   - a model without predictors refuses safe; bad values of --sparsity, --recall-every and
 *     [sparsity] mode in a file are one line and exit status 2.
 */
#include "config.h"
#include "compute/forward.h"
#include "compute/predictor.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "model/gguf.h"
#include "model/model.h"
#include "tests/test-pipeline-util.h"

#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#define TIMEOUT_S 60.0
#define GOLDEN_TOL 4e-2 /* Q4_0 weights, 8-bit activations: as test-pipeline.c */
/* The masked FFN against the reference (float64 sums over dequantised rows, float x): the kernels'
 * rounding, as the golden test's, but a randomly masked network amplifies it more than the trained one
 * (its logits move by 1.2 to 1.3 from the dense ones), and by how much depends on the draw: over 12
 * seeds, 0.023 to 0.042 with the prompt's FFN neuron by neuron (f16 down rows) and 0.025 to 0.089 with
 * the dense masked path (Q4_0 down, the activations rounded to 8 bits). A wrong selection moves the
 * logits by about 1. */
#define MASK_TOL 0.15
#define SCALE_THRESHOLD 10.0 /* PRED_SCALE's logit threshold, against |input|_1 of 9 to 110 (residual) and 135 to 215 (norm) in the demo */

static char coord[512], ctl[512], ppl[512], demo[512], ones[600], fixed[600], few[600], rnd[600], scaled[600];

/* ---------------------------------------------------------------- models with predictors */

/* The predictors the tests add. */
enum pred_kind {
    PRED_ALL,    /* fc2 = 0: every logit is 0, at the threshold 0: every neuron predicted */
    PRED_FIXED,  /* fc2 row j = s_j (0.5 + U(0, 1)) with a random sign s_j (+ with probability `share`):
                  * since h = relu(fc1 x) >= 0 and (rank 32) never all zero, neuron j's logit has the sign
                  * s_j for every x: each layer predicts a fixed random share of its neurons, whatever the
                  * rounding of x, so a reference computed elsewhere selects exactly the same ones */
    PRED_RANDOM, /* fc1 and fc2 uniform: about half the neurons, different for every token */
    PRED_SCALE,  /* rank 2 n_embd: fc1 = [I; -I], fc2 row j = c_j (1, ..., 1) with c_j log-uniform in
                  * [0.01, 1], and the file's threshold SCALE_THRESHOLD: logit_j = c_j |input|_1, so a token
                  * selects the neurons with c_j >= threshold / |input|_1, a share set by the input's size:
                  * the demo's residual stream and its ffn_norm output differ in size by 2.5 to 15 times
                  * per layer, which tells the predictors' input apart, and rounding moves single neurons
                  * only (those with c_j |input|_1 at the threshold) */
};

/* dst = src plus blk.N.fc1 (rank, n_embd) and blk.N.fc2 (n_ff, rank), F32, of that kind. */
static int with_predictors(const char *src, const char *dst, int rank, enum pred_kind kind, double share, uint64_t seed)
{
    pi_gguf_t *g = NULL;
    char err[256];
    if (pi_gguf_open(src, &g, err, sizeof err) < 0) return -1;
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    uint64_t nl = 0, d = 0, ff = 0;
    int rc = w && pi_gguf_get_uint(g, "llama.block_count", &nl) == 0 && pi_gguf_get_uint(g, "llama.embedding_length", &d) == 0 &&
                     pi_gguf_get_uint(g, "llama.feed_forward_length", &ff) == 0 ? 0 : -1;
    for (uint64_t i = 0; rc == 0 && i < pi_gguf_n_kv(g); i++) rc = tp_gguf_copy_kv(w, g, i);
    for (uint64_t i = 0; rc == 0 && i < pi_gguf_n_tensors(g); i++) {
        const struct pi_gguf_tensor *t = pi_gguf_tensor(g, i);
        char name[80];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        rc = pi_gguf_writer_add_tensor(w, name, (enum pi_type)t->type, t->n_dims, t->ne, t->data);
    }
    if (rc == 0 && kind == PRED_SCALE) rc = pi_gguf_writer_set_f32(w, "powerinfer.sparse_threshold", (float)SCALE_THRESHOLD);
    if (kind == PRED_SCALE) rank = 2 * (int)d;
    float *f1 = malloc((size_t)rank * d * sizeof *f1), *f2 = malloc(ff * (size_t)rank * sizeof *f2);
    struct pi_rng r;
    pi_rng_seed(&r, seed);
    const double s1 = sqrt(12.0 / (double)d), s2 = sqrt(12.0); /* uniform, variance 1/d and 1 */
    for (uint64_t il = 0; rc == 0 && f1 && f2 && il < nl; il++) {
        char name[64];
        for (uint64_t j = 0; j < (uint64_t)rank * d; j++) f1[j] = (float)((pi_rng_uniform(&r) - 0.5) * s1);
        if (kind == PRED_SCALE)
            for (uint64_t j = 0; j < (uint64_t)rank * d; j++) f1[j] = j / d % d == j % d ? (j < d * d ? 1.0f : -1.0f) : 0.0f;
        for (uint64_t j = 0; j < ff; j++) {
            const float sign = pi_rng_uniform(&r) < share ? 1.0f : -1.0f;
            for (uint64_t k = 0; k < (uint64_t)rank; k++) {
                float *v = &f2[j * (uint64_t)rank + k];
                if (kind == PRED_ALL) *v = 0.0f;
                else if (kind == PRED_SCALE) *v = k == 0 ? (float)pow(10.0, -2.0 * pi_rng_uniform(&r)) : f2[j * (uint64_t)rank];
                else if (kind == PRED_FIXED) *v = sign * (0.5f + (float)pi_rng_uniform(&r));
                else *v = (float)((pi_rng_uniform(&r) - 0.5) * s2);
            }
        }
        const uint64_t ne1[2] = {d, (uint64_t)rank}, ne2[2] = {(uint64_t)rank, ff};
        snprintf(name, sizeof name, "blk.%llu.fc1.weight", (unsigned long long)il);
        rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_F32, 2, ne1, f1);
        snprintf(name, sizeof name, "blk.%llu.fc2.weight", (unsigned long long)il);
        if (rc == 0) rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_F32, 2, ne2, f2);
    }
    if (rc == 0 && (!f1 || !f2)) rc = -1;
    if (rc == 0) rc = pi_gguf_writer_write(w, dst);
    free(f1);
    free(f2);
    pi_gguf_writer_destroy(&w);
    pi_gguf_destroy(&g);
    return rc;
}

/* ---------------------------------------------------------------- the reference that skips the same neurons */

/* y (d) = sum over the neurons j that mask selects of relu(gate_j . x) * (up_j . x) * down[:, j], in
 * float64 over the dequantised rows: G, U (n_ff, d) and D (d, n_ff) row-major. */
static void masked_ffn(const float *G, const float *U, const float *D, int d, int ff, const float *x, const uint64_t *mask,
                       float *y)
{
    double *acc = calloc((size_t)d, sizeof *acc);
    for (int j = 0; acc && j < ff; j++) {
        if (!((mask[j / 64] >> (j % 64)) & 1u)) continue;
        double g = 0, u = 0;
        for (int c = 0; c < d; c++) g += (double)G[(size_t)j * d + c] * x[c], u += (double)U[(size_t)j * d + c] * x[c];
        if (g <= 0) continue;
        for (int c = 0; c < d; c++) acc[c] += g * u * D[(size_t)c * ff + j];
    }
    for (int c = 0; acc && c < d; c++) y[c] = (float)acc[c];
    free(acc);
}

/* Dequantise all rows of W into out (rows, cols). */
static void dequant(const struct pi_weight *W, float *out)
{
    for (int64_t r = 0; r < W->rows; r++) pi_dequant_row(W->type, pi_weight_row(W, r), out + r * W->cols, W->cols);
}

/* Logits (n, n_vocab) of the prompt tok (n) through the forward pass's attention and norms, with each
 * layer's FFN the masked reference over the model's own predictors (safe mode) evaluated on this pass's
 * residual stream before ffn_norm (PowerInfer's convention for a model file's predictors), or with
 * on_norm on the ffn_norm output instead (what the engines must not do). NULL on failure. */
static float *reference_logits(const char *path, const int32_t *tok, int n, bool on_norm, double *sparsity)
{
    uint64_t on = 0, pairs = 0;
    pi_model_t *m = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    if (pi_model_open(path, &mo, &m, NULL, 0) != 0) return NULL;
    struct pi_predictors pred;
    struct pi_forward_opts fo;
    pi_forward_opts_default(&fo);
    fo.n_batch = n;
    pi_forward_t *f = pi_predictors_from_model(m, &pred) == 0 ? pi_forward_new(m, &fo) : NULL;
    const int d = m->hp.n_embd, ff = m->hp.n_ff, mw = (ff + 63) / 64;
    float *h = malloc((size_t)n * d * sizeof *h), *x = malloc((size_t)n * d * sizeof *x), *y = malloc((size_t)d * sizeof *y);
    float *G = malloc((size_t)ff * d * sizeof *G), *U = malloc((size_t)ff * d * sizeof *U), *D = malloc((size_t)ff * d * sizeof *D);
    float *scr = malloc(pi_predictor_scratch(&pred, n) * sizeof *scr), *logits = malloc((size_t)n * m->hp.n_vocab * sizeof *logits);
    uint64_t *mask = malloc((size_t)n * mw * sizeof *mask);
    int32_t *seq = calloc((size_t)n, sizeof *seq), *pos = malloc((size_t)n * sizeof *pos);
    bool ok = f && h && x && y && G && U && D && scr && logits && mask && seq && pos;
    for (int i = 0; ok && i < n; i++) pos[i] = i;
    ok = ok && pi_forward_begin(f, tok, seq, pos, n) == 0;
    if (ok) pi_forward_embed(f, tok, n, h);
    for (int il = 0; ok && il < m->hp.n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        pi_forward_attn(f, il, seq, pos, n, h);
        pi_forward_ffn_input(f, il, n, h, x);
        PI_ASSERT(pred.on_residual);
        on += (uint64_t)pi_predictor_eval(NULL, &pred, il, PI_SPARSITY_SAFE, on_norm ? x : h, n, scr, mask, mw);
        pairs += (uint64_t)n * (uint64_t)ff;
        dequant(&L->ffn_gate, G), dequant(&L->ffn_up, U), dequant(&L->ffn_down, D);
        for (int t = 0; t < n; t++) {
            masked_ffn(G, U, D, d, ff, x + (size_t)t * d, mask + (size_t)t * mw, y);
            for (int c = 0; c < d; c++) h[(size_t)t * d + c] += y[c];
        }
    }
    if (ok) pi_forward_output(f, h, n, n, logits);
    if (sparsity) *sparsity = pairs ? 1.0 - (double)on / (double)pairs : 0.0;
    free(h), free(x), free(y), free(G), free(U), free(D), free(scr), free(mask), free(seq), free(pos);
    pi_forward_destroy(&f);
    pi_predictors_free(&pred);
    pi_model_destroy(&m);
    if (!ok) free(logits);
    return ok ? logits : NULL;
}

/* ---------------------------------------------------------------- runs */

/* One-shot prompt logits of model path with --sparsity mode, backend, hot fraction and workers. */
static float *run_logits(const char *name, const char *path, const char *ids, int n, int n_vocab, const char *mode,
                         const char *backend, const char *hot, const char *workers)
{
    char rundir[300], out[600];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    snprintf(out, sizeof out, "%s/%s.f32", tp_dir, name);
    char *argv[] = {coord, "--model", (char *)path, "--tokens", (char *)ids, "-n", "0", "--logits-out", out, "--sparsity",
                    (char *)mode, "--gpu-backend", (char *)backend, "--hot-fraction", (char *)hot, "--cpu-workers",
                    (char *)workers, "--run-dir", rundir, "--log-level", "warn", NULL};
    int st = tp_run(argv, name, TIMEOUT_S);
    float *lg = st == 0 ? tp_read_logits(out, n, n_vocab) : NULL;
    if (!lg) {
        char *err = tp_output(name, "err");
        tap_diag("%s: exit %d: %s", name, st, err ? err : "");
        free(err);
    }
    return lg;
}

/* The engines and placements every model runs through: backend, hot fraction, CPU workers. */
static const char *const configs[][3] = {{"none", "0", "1"}, {"host", "0", "1"}, {"host", "0.5", "2"}, {"host", "1", "1"}};

/* The all-ones predictor: every neuron predicted, so each engine gives its dense logits, to the
 * kernels' rounding. */
static void test_all_ones(const char *ids, const struct tp_golden *gd)
{
    for (size_t k = 0; k < PI_ARRAY_LEN(configs); k++) {
        char name[64];
        snprintf(name, sizeof name, "ones-%s-%s-%s", configs[k][0], configs[k][1], configs[k][2]);
        float *sp = run_logits(name, ones, ids, gd->n, gd->n_vocab, "safe", configs[k][0], configs[k][1], configs[k][2]);
        snprintf(name, sizeof name, "dense-%s-%s-%s", configs[k][0], configs[k][1], configs[k][2]);
        float *dn = run_logits(name, ones, ids, gd->n, gd->n_vocab, "off", configs[k][0], configs[k][1], configs[k][2]);
        double eg = sp ? tp_rel_err(sp, gd->logits, gd->n, gd->n_vocab) : 1e9;
        double ed = sp && dn ? tp_rel_err(sp, dn, gd->n, gd->n_vocab) : 1e9;
        tap_ok(eg <= GOLDEN_TOL && ed <= 2 * GOLDEN_TOL,
               "all-ones predictor, %s hot %s, %s CPU workers: vs golden %.3g (<= %.0e), vs dense %.3g (<= %.0e)",
               configs[k][0], configs[k][1], configs[k][2], eg, GOLDEN_TOL, ed, 2 * GOLDEN_TOL);
        free(sp);
        free(dn);
    }
}

/* Predictors of random fixed masks: each engine equals the reference that skips the same neurons, and
 * is far from the dense result. (With masks that change with x, a neuron whose logit is within rounding
 * of the threshold can be selected by one computation and not the other, and its whole contribution
 * differs: that case, per-token masks, is tests/unit/test-sparse.c's, against the same masks.) */
static void test_fixed(const char *ids, const struct tp_golden *gd, const char *path, const char *what)
{
    float *ref = reference_logits(path, gd->tokens, gd->n, false, NULL);
    tap_ok(ref != NULL, "the masked reference computed");
    if (!ref) return;
    double far = tp_rel_err(ref, gd->logits, gd->n, gd->n_vocab);
    tap_ok(far > 4 * MASK_TOL, "%s: the masks change the logits: reference vs dense golden %.3g (> %.2g)", what, far, 4 * MASK_TOL);
    float *first = NULL;
    for (size_t k = 0; k < PI_ARRAY_LEN(configs); k++) {
        char name[64];
        snprintf(name, sizeof name, "%s-%s-%s-%s", what, configs[k][0], configs[k][1], configs[k][2]);
        float *sp = run_logits(name, path, ids, gd->n, gd->n_vocab, "safe", configs[k][0], configs[k][1], configs[k][2]);
        double er = sp ? tp_rel_err(sp, ref, gd->n, gd->n_vocab) : 1e9;
        double ef = sp && first ? tp_rel_err(sp, first, gd->n, gd->n_vocab) : 0.0;
        tap_ok(er <= MASK_TOL && ef <= MASK_TOL,
               "%s, %s hot %s, %s CPU workers: vs the masked reference %.3g, vs the single process %.3g (<= %.2g)", what,
               configs[k][0], configs[k][1], configs[k][2], er, ef, MASK_TOL);
        if (!first) first = sp;
        else free(sp);
    }
    free(first);
    free(ref);
}

/* The model file's predictors read the residual stream, as PowerInfer's graph feeds them (its
 * llm_build_ffn_sparse gets ffn_inp): with masks set by the input's size, the share of pairs a prompt
 * skips differs between the residual and the ffn_norm output, and every engine must report the
 * residual's. Counts, not logits: rounding moves the single neurons at the threshold, which a randomly
 * masked network amplifies in its logits, but hardly the count. */
static void test_scale(const char *ids, const struct tp_golden *gd, const char *path)
{
    double s_res = -1, s_norm = -1;
    float *a = reference_logits(path, gd->tokens, gd->n, false, &s_res), *b = reference_logits(path, gd->tokens, gd->n, true, &s_norm);
    tap_ok(a && b && fabs(s_res - s_norm) > 0.1,
           "size masks: the predictors on the residual skip %.1f%% of the prompt's pairs, on the norm's output %.1f%%",
           100 * s_res, 100 * s_norm);
    free(a);
    free(b);
    char rundir[300];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    for (size_t k = 0; k < PI_ARRAY_LEN(configs); k++) {
        char name[64];
        snprintf(name, sizeof name, "scale-%s-%s-%s", configs[k][0], configs[k][1], configs[k][2]);
        char *argv[] = {coord, "--model", (char *)path, "--tokens", (char *)ids, "-n", "0", "--sparsity", "safe",
                        "--gpu-backend", (char *)configs[k][0], "--hot-fraction", (char *)configs[k][1], "--cpu-workers",
                        (char *)configs[k][2], "--run-dir", rundir, "--log-level", "info", NULL};
        int st = tp_run(argv, name, TIMEOUT_S);
        char *err = tp_output(name, "err");
        const char *line = err ? strstr(err, "FFN sparsity ") : NULL;
        double pct = -1;
        if (!line || sscanf(line, "FFN sparsity %lf%%", &pct) != 1) pct = -1;
        tap_ok(st == 0 && fabs(pct / 100 - s_res) <= 0.01, "size masks, %s hot %s, %s CPU workers: %.1f%% skipped (the residual's %.1f%%)",
               configs[k][0], configs[k][1], configs[k][2], pct, 100 * s_res);
        free(err);
    }
}

/* ---------------------------------------------------------------- telemetry */

/* Start a server over path with --recall-every 1 and the extra arguments, generate 6 tokens, and
 * return its status JSON (NULL on failure); the server is shut down. */
static json_t *served_status(const char *name, const char *path, const char *backend)
{
    char endpoint[600], rundir[300], n_err[96];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    snprintf(endpoint, sizeof endpoint, "ipc://%s/%s.sock", tp_dir, name);
    char *argv[] = {coord, "--http", "off", "--model", (char *)path, "--gpu-backend", (char *)backend, "--cpu-workers", "2", "--hot-fraction",
                    "0.5", "--recall-every", "1", "--run-dir", rundir, "--control", endpoint, "--log-level", "warn", NULL};
    pid_t pid = tp_spawn(argv, name);
    json_t *j = NULL;
    const char *wait[] = {"--timeout", "500", "status", NULL}, *gen[] = {"generate", "--prompt", "The jury said", "-n", "6",
                                                                           "--temp", "0", NULL};
    const char *st[] = {"status", NULL}, *down[] = {"shutdown", NULL};
    int up = -1;
    for (int i = 0; up != 0 && i < 400; i++) {
        snprintf(n_err, sizeof n_err, "%s-wait", name);
        if ((up = tp_pictl(ctl, endpoint, n_err, wait, 10)) != 0) usleep(50000);
    }
    snprintf(n_err, sizeof n_err, "%s-gen", name);
    if (up == 0 && tp_pictl(ctl, endpoint, n_err, gen, TIMEOUT_S) == 0) {
        snprintf(n_err, sizeof n_err, "%s-status", name);
        if (tp_pictl(ctl, endpoint, n_err, st, 20) == 0) {
            char *out = tp_output(n_err, "out");
            j = out ? json_loads(out, 0, NULL) : NULL;
            free(out);
        }
    }
    snprintf(n_err, sizeof n_err, "%s-down", name);
    tp_pictl(ctl, endpoint, n_err, down, 20);
    if (tp_wait(pid, 10) != 0) tap_diag("%s did not stop", name);
    return j;
}

/* The status's sparsity object: mode, 8 layers each with sparsity in [lo, hi], bytes skipped that add up
 * to the total and a recall in [rlo, rhi]. */
static bool status_ok(json_t *j, const char *mode, double lo, double hi, double rlo, double rhi)
{
    json_t *s = json_object_get(j, "sparsity"), *layers = json_object_get(s, "layers"), *l;
    const char *m = json_string_value(json_object_get(s, "mode"));
    bool ok = m && strcmp(m, mode) == 0 && json_array_size(layers) == 8;
    json_int_t sum = 0;
    size_t i;
    json_array_foreach(layers, i, l) {
        double sp = json_number_value(json_object_get(l, "sparsity")), rc = json_number_value(json_object_get(l, "recall"));
        sum += json_integer_value(json_object_get(l, "bytes_skipped"));
        if (!(sp >= lo && sp <= hi && json_is_real(json_object_get(l, "recall")) && rc >= rlo && rc <= rhi)) {
            tap_diag("layer %zu: sparsity %g, recall %g", i, sp, rc);
            ok = false;
        }
    }
    json_int_t total = json_integer_value(json_object_get(s, "bytes_skipped"));
    double share = (double)total / (double)json_integer_value(json_object_get(s, "bytes_total"));
    ok = ok && sum == total && fabs(share - json_number_value(json_object_get(s, "sparsity"))) < 1e-9;
    return ok;
}

static void test_status(void)
{
    json_t *j = served_status("st-ones", ones, "host");
    tap_ok(j && status_ok(j, "safe", 0.0, 0.0, 1.0, 1.0), "pi-ctl status, all-ones predictor: every layer sparsity 0, recall 1");
    json_decref(j);
    j = served_status("st-rnd", rnd, "host");
    tap_ok(j && status_ok(j, "safe", 0.3, 0.7, 0.2, 0.8),
           "pi-ctl status, random predictors: every layer sparsity near 1/2, recall in (0.2, 0.8), bytes adding up");
    json_decref(j);
}

/* pi-perplexity's lines over the demo text: the FFN sparsity from the engine's counts and the recall. */
static void test_perplexity(void)
{
    const char *fx = getenv("PI_FIXTURES");
    char text[512], rundir[300];
    snprintf(text, sizeof text, "%s/text/demo-val.txt", fx ? fx : "");
    if (!fx || access(text, R_OK) != 0) {
        tap_skip(2, "pi-perplexity needs $PI_FIXTURES/text/demo-val.txt");
        return;
    }
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    const char *models[2] = {ones, rnd}, *want_sp[2] = {"FFN sparsity: 0.0% (FFN weight bytes skipped)", "FFN sparsity: "};
    for (int k = 0; k < 2; k++) {
        char name[32];
        snprintf(name, sizeof name, "ppl-%d", k);
        char *argv[] = {ppl, "-m", (char *)models[k], "-f", text, "-c", "64", "--chunks", "2", "--gpu-backend", "none",
                        "--run-dir", rundir, NULL};
        int st = tp_run(argv, name, TIMEOUT_S);
        char *out = tp_output(name, "out");
        double sp = -1, rc = -1;
        const char *l1 = out ? strstr(out, "FFN sparsity: ") : NULL, *l2 = out ? strstr(out, "predictor recall: ") : NULL;
        if (l1) sp = strtod(l1 + 14, NULL);
        if (l2) rc = strtod(l2 + 18, NULL);
        bool ok = st == 0 && l1 && strncmp(l1, want_sp[k], strlen(want_sp[k])) == 0 && l2;
        ok = ok && (k == 0 ? rc == 100.0 : sp > 30 && sp < 70 && rc > 20 && rc < 80);
        tap_ok(ok, "pi-perplexity, %s predictor: FFN sparsity %.1f%%, predictor recall %.2f%% (exit %d)",
               k ? "random" : "all-ones", sp, rc, st);
        free(out);
    }
}

/* ---------------------------------------------------------------- refusals */

/* Run the coordinator with args (after --model path); expect exit status want and, on stderr, pattern. */
static void expect(const char *name, int want, const char *pattern, char *const *args)
{
    char rundir[300];
    char *argv[32];
    int n = 0;
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    argv[n++] = coord;
    for (int i = 0; args[i] && n < 26; i++) argv[n++] = args[i];
    argv[n++] = "--tokens", argv[n++] = "1,2,3", argv[n++] = "-n", argv[n++] = "1", argv[n++] = "--run-dir", argv[n++] = rundir;
    argv[n] = NULL;
    int st = tp_run(argv, name, TIMEOUT_S);
    char *err = tp_output(name, "err");
    int lines = 0;
    for (const char *c = err ? err : ""; *c; c++) lines += *c == '\n';
    bool ok = st == want && err && strstr(err, pattern) && (want != 2 || lines == 1);
    tap_ok(ok, "%s: exit %d (want %d), '%s' in: %.200s", name, st, want, pattern, err ? err : "");
    free(err);
}

static void test_refusals(void)
{
    char tiny[512], conf[600];
    tap_data(tiny, sizeof tiny, "tiny-llama-q4_0.gguf");
    /* no thresholds in its sidecar: the first load tries to calibrate them, here over a text that is
     * not there (never into the source tree's sidecar) */
    char *swiglu_safe[] = {"--model", tiny, "--sparsity", "safe", "--gpu-backend", "none", "--calibration-text",
                           "/nonexistent/calib.txt", NULL};
    expect("swiglu-safe", 2, "/nonexistent/calib.txt", swiglu_safe);
    char *swiglu_auto[] = {"--model", tiny, "--gpu-backend", "none", "--log-level", "info", NULL};
    expect("swiglu-auto", 0, "sparsity off (default: a SwiGLU model", swiglu_auto);
    char *nopred[] = {"--model", demo, "--sparsity", "aggressive", NULL};
    expect("no-predictors", 2, "has no predictors", nopred);
    char *nopred_auto[] = {"--model", demo, "--gpu-backend", "none", "--log-level", "info", NULL};
    expect("no-predictors-auto", 0, "sparsity off (default: the model has no predictors)", nopred_auto);
    char *with_auto[] = {"--model", rnd, "--gpu-backend", "host", "--cpu-workers", "1", "--log-level", "info", NULL};
    expect("predictors-auto", 0, "sparsity safe (default for a ReLU model with predictors from the model, rank 16)", with_auto);
    char *bad_mode[] = {"--model", demo, "--sparsity", "most", NULL};
    expect("bad-mode", 2, "[sparsity] mode: 'most' is not one of: auto, off, safe, aggressive", bad_mode);
    char *bad_recall[] = {"--model", demo, "--recall-every", "-1", NULL};
    expect("bad-recall", 2, "[sparsity] recall_every: -1 is out of range", bad_recall);
    snprintf(conf, sizeof conf, "%s/bad.conf", tp_dir);
    FILE *f = fopen(conf, "w");
    if (f) fputs("[sparsity]\nmode = sometimes\n", f), fclose(f);
    char *bad_file[] = {"--config", conf, "--model", demo, NULL};
    expect("bad-file", 2, "bad.conf:2: [sparsity] mode", bad_file);
}

int main(void)
{
    tp_prog(coord, sizeof coord, "coordinator/pi-coordinator");
    tp_prog(ctl, sizeof ctl, "tools/pi-ctl");
    tp_prog(ppl, sizeof ppl, "coordinator/pi-perplexity");
    tap_data(demo, sizeof demo, "demo-relu-q4_0.gguf");
    tp_guard(600); /* generous: the sanitizer build on a loaded 2-core machine */
    tp_mkdir("pi-test-pipeline-sparse");
    char gpath[512], ids[4096];
    struct tp_golden gd;
    if (tp_golden_open(tap_data(gpath, sizeof gpath, "demo-relu-q4_0.golden.gguf"), &gd) != 0) tap_bail("golden");
    tp_ids(ids, sizeof ids, gd.tokens, gd.n);
    snprintf(ones, sizeof ones, "%s/demo-ones.gguf", tp_dir);
    snprintf(rnd, sizeof rnd, "%s/demo-random.gguf", tp_dir);
    snprintf(fixed, sizeof fixed, "%s/demo-fixed.gguf", tp_dir);
    snprintf(few, sizeof few, "%s/demo-few.gguf", tp_dir);
    snprintf(scaled, sizeof scaled, "%s/demo-scale.gguf", tp_dir);
    uint64_t seed = pi_rng_entropy_seed();
    tap_diag("random predictors from seed %llu", (unsigned long long)seed);
    if (with_predictors(demo, ones, 8, PRED_ALL, 0, seed) != 0 || with_predictors(demo, fixed, 32, PRED_FIXED, 0.4, seed) != 0 ||
        with_predictors(demo, few, 32, PRED_FIXED, 0.08, seed) != 0 || with_predictors(demo, rnd, 16, PRED_RANDOM, 0, seed) != 0 ||
        with_predictors(demo, scaled, 0, PRED_SCALE, 0, seed) != 0)
        tap_bail("cannot write the models with predictors");
    test_all_ones(ids, &gd);
    test_fixed(ids, &gd, fixed, "fixed 40% masks (prompts dense, masked)");
    test_fixed(ids, &gd, few, "fixed 8% masks (prompts neuron by neuron)");
    test_scale(ids, &gd, scaled);
    test_status();
    test_perplexity();
    test_refusals();
    tap_is_int(tp_count_procs(tp_dir), 0, "no process left behind");
    pi_gguf_destroy(&gd.g);
    return tap_done();
}
