/*
 * tests/unit/test-thresholds.c - the activation thresholds' calibration (compute/thresholds.h) on the
 * tiny SwiGLU llama of the fixtures over fresh random token ids:
 *   - bad options and a ReLU model are refused (-PI_ERR_INVAL) with nothing allocated;
 *   - by KLD: both modes within their bounds on the held-out chunks (margin x target, safe's top-token
 *     floor), every threshold finite and >= 0, aggressive's at least safe's for every neuron (its step
 *     is further along the same path), per-layer shares in [0, 1];
 *   - the same inputs and thread count give the same bits;
 *   - by sparsity targets: the shares skipped reach the targets on the held-out chunks (to within the
 *     sampling's error), and the forward pass with the thresholds skips about that share.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/forward.h"
#include "compute/sparse.h"
#include "compute/thresholds.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "model/model.h"
#include "tests/tap.h"

#define CTX 32
#define CHUNKS 12

static int32_t ids[CHUNKS * CTX];

static void test_refusals(const pi_model_t *silu, const pi_model_t *relu)
{
    struct pi_thr_opts o;
    struct pi_thr_result r;
    pi_thr_opts_default(&o, CHUNKS, CTX, silu->hp.n_vocab);
    o.held_out_chunks = CHUNKS;
    tap_is_int(pi_thr_calibrate(silu, ids, CHUNKS, CTX, &o, &r), -PI_ERR_INVAL, "every chunk held out: refused");
    tap_ok(r.gate_min == NULL && r.layer_sparsity == NULL, "  nothing allocated");
    pi_thr_opts_default(&o, CHUNKS, CTX, silu->hp.n_vocab);
    o.margin = 0.0f;
    tap_is_int(pi_thr_calibrate(silu, ids, CHUNKS, CTX, &o, &r), -PI_ERR_INVAL, "margin 0: refused");
    pi_thr_opts_default(&o, CHUNKS, CTX, silu->hp.n_vocab);
    o.sparsity[0] = 1.0f;
    tap_is_int(pi_thr_calibrate(silu, ids, CHUNKS, CTX, &o, &r), -PI_ERR_INVAL, "a sparsity target of 1: refused");
    pi_thr_opts_default(&o, CHUNKS, CTX, relu->hp.n_vocab);
    tap_is_int(pi_thr_calibrate(relu, ids, CHUNKS, CTX, &o, &r), -PI_ERR_INVAL, "a ReLU model: refused");
}

/* Every threshold finite and >= 0, aggressive >= safe per neuron, shares in [0, 1]. */
static bool sane(const struct pi_thr_result *r, const pi_model_t *m)
{
    const size_t ff = (size_t)m->hp.n_ff;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const float *s = r->gate_min + (size_t)il * 2 * ff, *a = s + ff;
        for (size_t j = 0; j < ff; j++)
            if (!(s[j] >= 0.0f && isfinite(s[j]) && isfinite(a[j]) && a[j] >= s[j])) return false;
        for (int k = 0; k < 2; k++)
            if (!(r->layer_sparsity[2 * il + k] >= 0.0f && r->layer_sparsity[2 * il + k] <= 1.0f)) return false;
    }
    return r->sparsity[0] <= r->sparsity[1] && r->tokens[0] > 0 && r->tokens[1] > 0;
}

static void test_by_kld(const pi_model_t *m)
{
    struct pi_thr_opts o;
    struct pi_thr_result r, r2;
    pi_thr_opts_default(&o, CHUNKS, CTX, m->hp.n_vocab);
    o.n_threads = 2;
    o.sample_tokens = 64;
    o.held_out_chunks = 4;
    int rc = pi_thr_calibrate(m, ids, CHUNKS, CTX, &o, &r);
    tap_is_int(rc, 0, "by KLD: calibrated");
    if (rc != 0) return;
    tap_ok(sane(&r, m), "by KLD: thresholds finite, >= 0, aggressive >= safe per neuron; shares in [0, 1]");
    tap_ok(r.kld[0] <= o.margin * o.kld_target[0] + 1e-9 && r.top1[0] >= o.top1_min[0] &&
               r.kld[1] <= o.margin * o.kld_target[1] + 1e-9,
           "by KLD: held-out KLD %.5f / %.5f within %.4f / %.4f, safe's same top %.3f >= %.2f", r.kld[0], r.kld[1],
           o.margin * o.kld_target[0], o.margin * o.kld_target[1], r.top1[0], o.top1_min[0]);
    rc = pi_thr_calibrate(m, ids, CHUNKS, CTX, &o, &r2);
    const size_t n = (size_t)m->hp.n_layer * 2 * (size_t)m->hp.n_ff;
    tap_ok(rc == 0 && memcmp(r.gate_min, r2.gate_min, n * sizeof(float)) == 0 && r.kld[1] == r2.kld[1],
           "by KLD: a second run gives the same bits");
    tap_diag("safe %.1f%% (KLD %.5f), aggressive %.1f%% (KLD %.5f)", 100.0 * r.sparsity[0], r.kld[0], 100.0 * r.sparsity[1],
             r.kld[1]);
    pi_thr_result_free(&r);
    pi_thr_result_free(&r2);
}

static void test_by_sparsity(const pi_model_t *m)
{
    struct pi_thr_opts o;
    struct pi_thr_result r;
    pi_thr_opts_default(&o, CHUNKS, CTX, m->hp.n_vocab);
    o.sample_tokens = 128;
    o.held_out_chunks = 4;
    o.sparsity[0] = 0.3f;
    o.sparsity[1] = 0.5f;
    int rc = pi_thr_calibrate(m, ids, CHUNKS, CTX, &o, &r);
    tap_is_int(rc, 0, "by sparsity: calibrated");
    if (rc != 0) return;
    tap_ok(sane(&r, m), "by sparsity: thresholds sane");
    tap_ok(fabsf(r.sparsity[0] - 0.3f) < 0.1f && fabsf(r.sparsity[1] - 0.5f) < 0.1f,
           "by sparsity: held-out shares %.3f and %.3f near the targets 0.3 and 0.5", r.sparsity[0], r.sparsity[1]);
    /* the aggressive thresholds through the forward pass on the held-out chunks: about that share */
    const size_t ff = (size_t)m->hp.n_ff;
    float *gm = malloc((size_t)m->hp.n_layer * ff * sizeof *gm);
    for (int il = 0; il < m->hp.n_layer; il++) memcpy(gm + (size_t)il * ff, r.gate_min + ((size_t)il * 2 + 1) * ff, ff * 4);
    struct pi_forward_opts fo;
    pi_forward_opts_default(&fo);
    fo.n_ctx = CTX;
    fo.n_batch = CTX;
    pi_forward_t *f = pi_forward_new(m, &fo);
    struct pi_sparse_stats st;
    rc = f && pi_sparse_stats_init(&st, m) == 0 ? pi_forward_set_gate_min(f, gm, &st) : -1;
    for (int c = CHUNKS - 4; rc == 0 && c < CHUNKS; c++) {
        pi_forward_seq_reset(f, 0);
        rc = pi_forward_tokens(f, 0, ids + c * CTX, CTX, 0, NULL, false);
    }
    struct pi_sparse_summary sum = {0};
    if (rc == 0) pi_sparse_summary(&st, -1, &sum);
    tap_ok(rc == 0 && fabs(sum.sparsity - r.sparsity[1]) < 0.02,
           "the forward pass with the aggressive thresholds skips %.3f of the pairs (calibration: %.3f)", sum.sparsity,
           r.sparsity[1]);
    /* a bad threshold is refused */
    gm[3] = -1.0f;
    tap_is_int(pi_forward_set_gate_min(f, gm, &st), -PI_ERR_INVAL, "a negative threshold is refused");
    gm[3] = NAN;
    tap_is_int(pi_forward_set_gate_min(f, gm, &st), -PI_ERR_INVAL, "a NaN threshold is refused");
    pi_sparse_stats_free(&st);
    pi_forward_destroy(&f);
    free(gm);
    pi_thr_result_free(&r);
}

int main(void)
{
    char silu_path[512], relu_path[512];
    pi_model_t *silu = NULL, *relu = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    if (pi_model_open(tap_data(silu_path, sizeof silu_path, "tiny-llama-q4_0.gguf"), &mo, &silu, NULL, 0) != 0 ||
        pi_model_open(tap_data(relu_path, sizeof relu_path, "demo-relu-q4_0.gguf"), &mo, &relu, NULL, 0) != 0)
        tap_bail("cannot open the models");
    struct pi_rng rng;
    uint64_t seed = pi_rng_entropy_seed();
    pi_rng_seed(&rng, seed);
    tap_diag("seed %llu", (unsigned long long)seed);
    for (int i = 0; i < CHUNKS * CTX; i++) ids[i] = (int32_t)pi_rng_below(&rng, (uint64_t)silu->hp.n_vocab);
    for (int c = 0; c < CHUNKS; c++) ids[c * CTX] = 1; /* each chunk starts as a sequence does */
    test_refusals(silu, relu);
    test_by_kld(silu);
    test_by_sparsity(silu);
    pi_model_destroy(&silu);
    pi_model_destroy(&relu);
    return tap_done();
}
