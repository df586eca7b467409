/*
 * tests/integration/test-pipeline-thresholds.c - a SwiGLU model's activation thresholds (issue 18,
 * doc/thresholds.md) through the real programs, in a private temporary directory with a hard timeout:
 * the hot neurons of the GPU worker's host backend take the thresholds as the CPU workers' cold ones
 * do, so a pipeline run computes the same function whatever the hot fraction.
 *
 * The tiny SiLU llama of tests/data gets thresholds from pi-profile (--random tokens,
 * --threshold-sparsity 0.4,0.5: about 40% and 50% of the FFN pairs skipped, the benchmarks' way for
 * random-weight models), written to a sidecar. Then, for `--sparsity safe` and `aggressive`, the prompt
 * logits of the single process (--gpu-backend none, its dense FFN with the skipped activations zeroed)
 * are the reference, and:
 *   - the reference is far from the dense run's (`--sparsity off`): the thresholds act, by more than the
 *     bound below several times over;
 *   - the pipeline with the host backend at hot fraction 0 (1 CPU worker), 0.5 (2) and 1 (1) gives the
 *     reference's logits within THR_TOL. At hot fraction 1 every neuron is the GPU worker's: before the
 *     hot neurons took the thresholds that run was the dense one;
 *   - each run's "FFN sparsity" line (the telemetry: pairs skipped by the CPU workers plus those the
 *     backend reports, ffn_hot_skipped) is the reference's within a point, and above a quarter of the
 *     pairs, at hot fraction 1 too (where only the hot side can skip).
 */
#include "config.h"
#include "lib/common.h"
#include "tests/test-pipeline-util.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#define TIMEOUT_S 60.0
#define N_VOCAB 32000 /* the tiny llama's */
/* Pipeline against the single process, both with thresholds. The two round differently (the CPU
 * workers' and the host backend's slices are packed, their gate products summed over other blocks), and
 * a pair whose |silu(gate)| is at its threshold to rounding can be skipped by one and not the other;
 * the pipeline's golden bound (Q4_0 weights, 8-bit activations: test-pipeline.c) covers both. Measured
 * on this build VM: at most 4e-8, the paths' products agreeing here; the dense run is 0.2 to 0.35 away. */
#define THR_TOL 4e-2

static char coord[512], prof[512], model[600], sidecar[600], ids[1024];
static int n_tok;

/* Prompt logits (n_tok rows) of one run with the sidecar's thresholds at mode; *sparsity = the share of
 * FFN pairs its "FFN sparsity" line reports (-1 when there is none). NULL on failure (diagnosed). */
static float *run_logits(const char *name, const char *mode, const char *backend, const char *hot, const char *workers,
                         double *sparsity)
{
    char rundir[300], out[600];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    snprintf(out, sizeof out, "%s/%s.f32", tp_dir, name);
    char *argv[] = {coord,
                    "--model",
                    model,
                    "--sidecar",
                    sidecar,
                    "--tokens",
                    ids,
                    "-n",
                    "0",
                    "--logits-out",
                    out,
                    "--sparsity",
                    (char *)mode,
                    "--gpu-backend",
                    (char *)backend,
                    "--hot-fraction",
                    (char *)hot,
                    "--cpu-workers",
                    (char *)workers,
                    "--run-dir",
                    rundir,
                    "--log-level",
                    "info",
                    NULL};
    int st = tp_run(argv, name, TIMEOUT_S);
    float *lg = st == 0 ? tp_read_logits(out, n_tok, N_VOCAB) : NULL;
    char *err = tp_output(name, "err");
    const char *line = err ? strstr(err, "FFN sparsity ") : NULL;
    double pct = -100;
    if (!line || sscanf(line, "FFN sparsity %lf%%", &pct) != 1) pct = -100;
    *sparsity = pct / 100;
    if (!lg) tap_diag("%s: exit %d: %.400s", name, st, err ? err : "");
    free(err);
    return lg;
}

/* The engines and placements: backend, hot fraction, CPU workers. */
static const char *const configs[][3] = {{"host", "0", "1"}, {"host", "0.5", "2"}, {"host", "1", "1"}};

static void check_mode(const char *mode)
{
    char name[64];
    double s_ref = -1, s_dense = -1;
    snprintf(name, sizeof name, "%s-none", mode);
    float *ref = run_logits(name, mode, "none", "0", "1", &s_ref);
    float *dense = run_logits("dense-none", "off", "none", "0", "1", &s_dense);
    const double far = ref && dense ? tp_rel_err(dense, ref, n_tok, N_VOCAB) : 0.0;
    tap_ok(ref && dense && far > 4 * THR_TOL && s_ref > 0.25,
           "%s, single process: %.1f%% of the FFN pairs skipped, the logits %.3g from the dense run's (> %.2g)", mode,
           100 * s_ref, far, 4 * THR_TOL);
    for (size_t k = 0; ref && k < PI_ARRAY_LEN(configs); k++) {
        double sp = -1;
        snprintf(name, sizeof name, "%s-%s-%s-%s", mode, configs[k][0], configs[k][1], configs[k][2]);
        float *lg = run_logits(name, mode, configs[k][0], configs[k][1], configs[k][2], &sp);
        const double e = lg ? tp_rel_err(lg, ref, n_tok, N_VOCAB) : 1e9;
        tap_ok(e <= THR_TOL, "%s, %s hot %s, %s CPU workers: the single process's logits within %.3g (<= %.0e)", mode,
               configs[k][0], configs[k][1], configs[k][2], e, THR_TOL);
        tap_ok(fabs(sp - s_ref) <= 0.01 && sp > 0.25,
               "%s, %s hot %s, %s CPU workers: %.1f%% of the FFN pairs skipped (the single process %.1f%%)", mode,
               configs[k][0], configs[k][1], configs[k][2], 100 * sp, 100 * s_ref);
        free(lg);
    }
    free(ref);
    free(dense);
}

int main(void)
{
    tp_prog(coord, sizeof coord, "coordinator/pi-coordinator");
    tp_prog(prof, sizeof prof, "tools/pi-profile");
    tap_data(model, sizeof model, "tiny-llama-q4_0.gguf");
    tp_guard(600); /* generous: the sanitizer build on a loaded 2-core machine */
    tp_mkdir("pi-test-pipeline-thresholds");
    char rundir[300];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    if (mkdir(rundir, 0700) != 0) tap_bail("mkdir %s", rundir);
    /* 48 token ids spread over the vocabulary: one prompt batch (the host paths take no other for decode) */
    size_t off = (size_t)snprintf(ids, sizeof ids, "1");
    for (n_tok = 1; n_tok < 48; n_tok++)
        off += (size_t)snprintf(ids + off, sizeof ids - off, ",%d", (n_tok * 977) % 31000 + 2);
    snprintf(sidecar, sizeof sidecar, "%s/tiny.pinfer.gguf", tp_dir);
    char *pargv[] = {prof,      "-m",        model,   "--random", "512", "-c", "128", "-t", "2", "--threshold-sparsity",
                     "0.4,0.5", "--sidecar", sidecar, NULL};
    int st = tp_run(pargv, "profile", TIMEOUT_S);
    tap_ok(st == 0, "pi-profile: thresholds for 40%% and 50%% of the pairs into the sidecar (exit %d)", st);
    if (st != 0) return tap_done();
    check_mode("safe");
    check_mode("aggressive");
    tap_is_int(tp_count_procs(tp_dir), 0, "no process left behind");
    return tap_done();
}
