/*
 * tests/integration/test-pipeline-stream.c - prompt streaming ([tune] prompt_stream, compute/stream-policy.h)
 * through the whole process pipeline with the host backend (the CI stand-in for the cuda backend's
 * streamed layers): pi-coordinator, pi-gpu-worker and two pi-cpu-workers at hot fraction 0.5, in a
 * private run directory with a hard timeout.
 *
 * With prompt_stream=on the prompt step streams every layer: its logits must be the golden ones within
 * the single process's Q4_0 tolerance (and the single process's own within it: a streamed layer is the
 * single process's dense FFN), and the CPU workers must have been sent nothing (each logs the layer
 * publishes it served when it exits: 0), while the GPU worker counts the layers and steps it streamed.
 * With off the same workers serve one publish per layer, so the counter can fail. With auto the host
 * backend (no device link) never streams. The greedy text with on equals the text with off, and its
 * decode steps still go through the CPU workers (decode steps never stream).
 */
#include "config.h"
#include "lib/common.h"
#include "model/model.h"
#include "tests/test-pipeline-util.h"

#include <stdbool.h>
#include <string.h>

#define TIMEOUT_S 60.0
#define GOLDEN_TOL 4e-2 /* Q4_0 weights, 8-bit activations: as tests/integration/test-pipeline.c */

static char coord[512], model[512];

/* Run the pipeline at hot 0.5 with 2 CPU workers and tune.prompt_stream=mode, -n npred, logging at info
 * (the workers' counters). out: the logits file or NULL. Exit status. */
static int run(const char *name, const char *ids, const char *mode, const char *npred, const char *out)
{
    char rundir[300], set[64];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    snprintf(set, sizeof set, "tune.prompt_stream=%s", mode);
    char *argv[] = {coord,         "--model",
                    model,         "--tokens",
                    (char *)ids,   "-n",
                    (char *)npred, "--temp",
                    "0",           "--gpu-backend",
                    "host",        "--hot-fraction",
                    "0.5",         "--cpu-workers",
                    "2",           "--set",
                    set,           "--run-dir",
                    rundir,        "--log-level",
                    "info",        out ? "--logits-out" : NULL,
                    (char *)out,   NULL};
    return tp_run(argv, name, TIMEOUT_S);
}

/* Occurrences of needle in s. */
static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

int main(void)
{
    tp_prog(coord, sizeof coord, "coordinator/pi-coordinator");
    tap_data(model, sizeof model, "demo-relu-q4_0.gguf");
    tp_guard(240);
    tp_mkdir("pi-test-pipeline-stream");
    char gpath[512], ids[4096], path[600], want[160];
    struct tp_golden gd;
    if (tp_golden_open(tap_data(gpath, sizeof gpath, "demo-relu-q4_0.golden.gguf"), &gd) != 0) tap_bail("golden");
    tp_ids(ids, sizeof ids, gd.tokens, gd.n);
    pi_model_t *m;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true;
    if (pi_model_open(model, &mo, &m, NULL, 0) != 0) tap_bail("open %s", model);
    const int L = m->hp.n_layer;
    pi_model_destroy(&m);

    /* the single process's logits: a streamed layer is its dense FFN */
    snprintf(path, sizeof path, "%s/single.f32", tp_dir);
    char rundir[300];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    char *sv[] = {coord, "--model",       model,  "--tokens",  ids,    "-n",          "0",    "--logits-out",
                  path,  "--gpu-backend", "none", "--run-dir", rundir, "--log-level", "warn", NULL};
    int st = tp_run(sv, "single", TIMEOUT_S);
    float *ref = st == 0 ? tp_read_logits(path, gd.n, gd.n_vocab) : NULL;
    if (!tap_ok(ref != NULL, "single-process logits written (status %d)", st)) return tap_done();

    /* on: the prompt (one step) streamed, nothing published */
    snprintf(path, sizeof path, "%s/on.f32", tp_dir);
    st = run("on", ids, "on", "0", path);
    float *lg = st == 0 ? tp_read_logits(path, gd.n, gd.n_vocab) : NULL;
    char *err = tp_output("on", "err");
    if (lg) {
        const double eg = tp_rel_err(lg, gd.logits, gd.n, gd.n_vocab), es = tp_rel_err(lg, ref, gd.n, gd.n_vocab);
        const size_t bytes = (size_t)gd.n * (size_t)gd.n_vocab * sizeof(float);
        tap_ok(
            eg <= GOLDEN_TOL && es <= GOLDEN_TOL,
            "prompt_stream=on, hot 0.5: relative error vs golden %.3g (<= %.0e), vs single process %.3g (<= %.0e; %s)",
            eg, GOLDEN_TOL, es, GOLDEN_TOL, memcmp(lg, ref, bytes) == 0 ? "bit-identical" : "not bit-identical");
    } else {
        tap_ok(0, "prompt_stream=on: exit %d: %s", st, err);
    }
    free(lg);
    tap_ok(count(err, "served 0 layer publishes") == 2,
           "prompt_stream=on: both CPU workers were sent no layer of the prompt");
    snprintf(want, sizeof want, "prompt streaming: %d layers of 1 steps streamed", L);
    tap_ok(strstr(err, want) != NULL, "the GPU worker counts them: \"%s\"", want);
    if (count(err, "served 0 layer publishes") != 2 || !strstr(err, want)) tap_diag("%s", err);
    free(err);

    /* off: one publish per layer for each worker (the counter can tell) */
    st = run("off", ids, "off", "0", NULL);
    err = tp_output("off", "err");
    snprintf(want, sizeof want, "served %d layer publishes, %d token rows", L, L * gd.n);
    tap_ok(st == 0 && count(err, want) == 2 && !strstr(err, "prompt streaming"),
           "prompt_stream=off: each CPU worker served \"%s\", nothing streamed (exit %d)", want, st);
    free(err);

    /* auto on the host backend: no device link, the model never streams */
    st = run("auto", ids, "auto", "0", NULL);
    err = tp_output("auto", "err");
    tap_ok(st == 0 && count(err, want) == 2 && strstr(err, "prompt streaming: 0 layers of 0 steps streamed"),
           "prompt_stream=auto, host backend: nothing streamed, the workers served every layer (exit %d)", st);
    free(err);

    /* greedy text: on equals off; the decode steps went to the CPU workers */
    st = run("text-off", ids, "off", "8", NULL);
    char *t_off = tp_output("text-off", "out");
    int st2 = run("text-on", ids, "on", "8", NULL);
    char *t_on = tp_output("text-on", "out");
    err = tp_output("text-on", "err");
    tap_ok(st == 0 && st2 == 0 && strlen(t_on) > 1 && strcmp(t_on, t_off) == 0,
           "8 greedy tokens: the same text with prompt_stream on and off (exit %d, %d): \"%s\"", st, st2, t_on);
    if (strcmp(t_on, t_off) != 0) tap_diag("off: \"%s\"", t_off);
    snprintf(want, sizeof want, "prompt streaming: %d layers of 1 steps streamed", L);
    tap_ok(strstr(err, want) && count(err, "served 0 layer publishes") == 0,
           "with on, only the prompt step streamed and the decode steps were published");
    free(err);
    free(t_on);
    free(t_off);
    free(ref);
    tap_is_int(tp_count_procs(tp_dir), 0, "no process left behind");
    pi_gguf_destroy(&gd.g);
    return tap_done();
}
