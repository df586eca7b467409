/*
 * tests/integration/test-pipeline.c - golden logits through the whole process pipeline: pi-coordinator spawns
 * pi-gpu-worker (host backend) and 1, 2 or 3 pi-cpu-workers, with hot fraction 0, 0.5 and 1, in a
 * private run directory with a hard timeout. Every configuration's prompt logits (--logits-out) must
 * match the golden logits (HF transformers, float64, same weights) within the single-process pass's
 * Q4_0 tolerance, and the single-process pass's own logits much more closely (the pipeline only
 * splits and re-orders the FFN sums). At hot fraction 1 (the host backend's dense FFN, no exchange)
 * the logits equal the single process's within the golden tolerance (in fact bit for bit) and do not
 * depend on the number of CPU workers. A SwiGLU model (the tiny llama, whose CPU workers compute
 * densely over slices without most of their transposed down rows) stays as close to its golden logits
 * as the single process. Afterwards no worker is left and nothing is in /dev/shm.
 */
#include "config.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "model/model.h"
#include "model/sidecar.h"
#include "tests/test-pipeline-util.h"

#include <stdbool.h>
#include <string.h>


#define TIMEOUT_S 60.0
#define GOLDEN_TOL 4e-2 /* Q4_0 weights, 8-bit activations: as tests/test-forward.c */
/* Against the single process the bound is 2 * GOLDEN_TOL: its prompt batches go through the dense
 * matmul FFN (ffn_down, activations quantised to 8 bits) while the pipeline's FFN is the neuron
 * kernel (the transposed down rows, an f16 copy): two quantisation paths, each within GOLDEN_TOL of
 * the reference. Between pipeline configurations only the split of the neurons differs (the order of
 * the float32 sums, and ReLU gates within rounding of 0); measured differences are below 3e-2 in the
 * worst row, so the same GOLDEN_TOL bounds them. */
#define SPLIT_TOL GOLDEN_TOL
/* At hot fraction 1 the host backend computes every layer's FFN as the single process does
 * (pi_forward_ffn, dense) and no layer goes through the exchange: its logits must equal the single
 * process's within GOLDEN_TOL (by construction they are the same bits), every hot-1 run must give
 * the same bits whatever the number of (idle) CPU workers, and against the unsplit pipeline (hot 0:
 * the neuron kernel) the bound is the two-path one, 2 * GOLDEN_TOL. */

static char coord[512], model[512];

static int run_logits(const char *name, const char *ids, const char *backend, const char *hot, const char *workers, const char *out)
{
    char rundir[300];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    char *argv[] = {coord, "--model", model, "--tokens", (char *)ids, "-n", "0", "--logits-out", (char *)out,
                    "--gpu-backend", (char *)backend, "--hot-fraction", (char *)hot, "--cpu-workers", (char *)workers,
                    "--run-dir", rundir, "--log-level", "warn", NULL};
    return tp_run(argv, name, TIMEOUT_S);
}

/* Entries of /dev/shm whose name mentions pinfer (memfd segments never appear there). */
static int shm_leftovers(void)
{
    DIR *d = opendir("/dev/shm");
    int n = 0;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, "pinfer") || strstr(e->d_name, "pi-")) n++;
    closedir(d);
    return n;
}


/* --vram-budget: the documented rule (doc/pipeline.md, "Placement") computed here from the model's
 * tensors must give the hot count the pipeline reports. */
static void test_vram_budget(const char *ids)
{
    pi_model_t *m;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true;
    if (pi_model_open(model, &mo, &m, NULL, 0) != 0) tap_bail("open %s", model);
    uint64_t fixed = m->token_embd.row_bytes * (uint64_t)m->token_embd.rows, per = 0;
    if (!m->tied) fixed += m->output.row_bytes * (uint64_t)m->output.rows;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        const struct pi_weight *att[] = {&L->attn_q, &L->attn_k, &L->attn_v, &L->attn_output};
        for (int k = 0; k < 4; k++) fixed += att[k]->row_bytes * (uint64_t)att[k]->rows;
        uint64_t down;
        if (!pi_type_row_bytes(L->ffn_down.type, (uint64_t)m->hp.n_embd, &down)) tap_bail("row bytes");
        per += L->ffn_gate.row_bytes + L->ffn_up.row_bytes + down;
    }
    pi_model_destroy(&m);
    char budget[32], rundir[300], want[96];
    snprintf(budget, sizeof budget, "%llu", (unsigned long long)(fixed + 300 * per + per / 2));
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    char *argv[] = {coord, "--model", model, "--tokens", (char *)ids, "-n", "1", "--vram-budget", budget,
                    "--cpu-workers", "1", "--run-dir", rundir, "--log-level", "info", NULL};
    int st = tp_run(argv, "vram", TIMEOUT_S);
    char *err = tp_output("vram", "err");
    snprintf(want, sizeof want, "at most 300 of %d in a layer", 1024);
    tap_ok(st == 0 && strstr(err, want), "--vram-budget %s bytes: 300 hot neurons per layer", budget);
    free(err);
}

/* Placements that are not a prefix (compute/placement.h), through PowerInfer's GPU index file
 * (--gpu-index): (a) every layer's hot set a fresh random half of its neurons, so the GPU worker packs
 * scattered rows and every CPU worker a scattered cold set; (b) mixed layers, one with every neuron
 * hot, one with a single one, the rest random at other densities. With 1, 2 and 3 CPU workers each must give
 * the golden logits within the usual tolerance, and the single process's within the two-path bound. */
static void test_permuted(const char *ids, const struct tp_golden *gd, const float *ref)
{
    pi_model_t *m;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true;
    if (pi_model_open(model, &mo, &m, NULL, 0) != 0) tap_bail("open %s", model);
    const int L = m->hp.n_layer, ff = m->hp.n_ff;
    pi_model_destroy(&m);
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20), st = seed;
    tap_diag("random placements from seed %llu", (unsigned long long)seed);
    for (int variant = 0; variant < 2; variant++) {
        char idx[600];
        snprintf(idx, sizeof idx, "%s/perm%d.gpuidx", tp_dir, variant);
        if (tp_write_random_gpuidx(idx, L, ff, variant, &st) != 0) tap_bail("cannot write %s", idx);
        static const char *const workers[] = {"1", "2", "3"};
        for (size_t w = 0; w < PI_ARRAY_LEN(workers); w++) {
            char name[64], out[600], rundir[300];
            snprintf(name, sizeof name, "perm%d-w%s", variant, workers[w]);
            snprintf(out, sizeof out, "%s/%s.f32", tp_dir, name);
            snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
            char *argv[] = {coord, "--model", model, "--tokens", (char *)ids, "-n", "0", "--logits-out", out,
                            "--gpu-backend", "host", "--gpu-index", idx, "--cpu-workers", (char *)workers[w],
                            "--run-dir", rundir, "--log-level", "warn", NULL};
            int rc = tp_run(argv, name, TIMEOUT_S);
            float *lg = rc == 0 ? tp_read_logits(out, gd->n, gd->n_vocab) : NULL;
            if (!lg) {
                char *err = tp_output(name, "err");
                tap_ok(0, "%s placement, %s CPU workers: exit %d: %s", variant ? "mixed" : "random-half", workers[w], rc, err);
                free(err);
                continue;
            }
            double eg = tp_rel_err(lg, gd->logits, gd->n, gd->n_vocab), es = tp_rel_err(lg, ref, gd->n, gd->n_vocab);
            tap_ok(eg <= GOLDEN_TOL && es <= 2 * GOLDEN_TOL,
                   "%s placement (not a prefix), %s CPU workers: relative error vs golden %.3g (<= %.0e), vs single process "
                   "%.3g (<= %.0e)", variant ? "mixed" : "random-half", workers[w], eg, GOLDEN_TOL, es, 2 * GOLDEN_TOL);
            free(lg);
        }
    }
}

/* A placement the solver chooses from an activation profile (compute/placement-solve.h): a sidecar
 * with fresh random frequencies (power law, a different mean per layer) given with --sidecar; the
 * coordinator must say it solved the placement, and with 1 and 2 CPU workers at hot fractions 0.3
 * and 0.6 the logits must be the golden ones within the usual tolerance. */
static void test_solved(const char *ids, const struct tp_golden *gd, const float *ref)
{
    pi_model_t *m;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true;
    if (pi_model_open(model, &mo, &m, NULL, 0) != 0) tap_bail("open %s", model);
    struct pi_sidecar *sc = pi_sidecar_new(m, true, false);
    if (!sc) tap_bail("out of memory");
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 24), st = seed;
    tap_diag("profile frequencies from seed %llu", (unsigned long long)seed);
    for (int il = 0; il < m->hp.n_layer; il++) {
        const double scale = 0.1 + 0.5 * (double)(pi_rng_splitmix64(&st) >> 11) / 9007199254740992.0;
        for (int i = 0; i < m->hp.n_ff; i++) {
            const double u = (double)(pi_rng_splitmix64(&st) >> 11) / 9007199254740992.0, x = 3 * scale * u * u * u;
            sc->act_freq[(size_t)il * (size_t)m->hp.n_ff + (size_t)i] = (float)(x > 1 ? 1 : x);
        }
    }
    sc->tokens = 1000;
    char scp[600];
    snprintf(scp, sizeof scp, "%s/demo.pinfer.gguf", tp_dir);
    if (pi_sidecar_save(scp, m, sc) != 0) tap_bail("cannot write %s", scp);
    pi_sidecar_destroy(&sc);
    pi_model_destroy(&m);
    static const char *const hots[] = {"0.3", "0.6"};
    static const char *const workers[] = {"1", "2"};
    for (size_t h = 0; h < PI_ARRAY_LEN(hots); h++)
        for (size_t w = 0; w < PI_ARRAY_LEN(workers); w++) {
            char name[64], out[600], rundir[300];
            snprintf(name, sizeof name, "solved-h%s-w%s", hots[h], workers[w]);
            snprintf(out, sizeof out, "%s/%s.f32", tp_dir, name);
            snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
            char *argv[] = {coord, "--model", model, "--tokens", (char *)ids, "-n", "0", "--logits-out", out,
                            "--gpu-backend", "host", "--hot-fraction", (char *)hots[h], "--sidecar", scp,
                            "--cpu-workers", (char *)workers[w], "--run-dir", rundir, "--log-level", "info", NULL};
            int rc = tp_run(argv, name, TIMEOUT_S);
            float *lg = rc == 0 ? tp_read_logits(out, gd->n, gd->n_vocab) : NULL;
            char *err = tp_output(name, "err");
            const bool solved = err && strstr(err, "solved from the activation profile");
            double eg = lg ? tp_rel_err(lg, gd->logits, gd->n, gd->n_vocab) : INFINITY;
            double es = lg ? tp_rel_err(lg, ref, gd->n, gd->n_vocab) : INFINITY;
            tap_ok(lg && solved && eg <= GOLDEN_TOL && es <= 2 * GOLDEN_TOL,
                   "solved placement (profile), hot %s, %s CPU workers: %s; relative error vs golden %.3g (<= %.0e), vs "
                   "single process %.3g (<= %.0e)", hots[h], workers[w], solved ? "solved" : "NOT solved", eg, GOLDEN_TOL,
                   es, 2 * GOLDEN_TOL);
            if (!lg) tap_diag("exit %d: %s", rc, err ? err : "");
            free(err);
            free(lg);
        }
}

/* A SwiGLU model (the tiny llama): its CPU workers keep only the edge neurons' transposed down rows
 * and compute every step densely. Through the pipeline at hot 0 and 0.5 its logits must stay as
 * close to the golden ones as the single process's, and close to the single process's. */
static void test_swiglu(void)
{
    char gpath[512], ids[4096], ref_path[600], out[600];
    struct tp_golden gd;
    if (tp_golden_open(tap_data(gpath, sizeof gpath, "tiny-llama-q4_0.golden.gguf"), &gd) != 0) tap_bail("golden");
    char saved[sizeof model];
    memcpy(saved, model, sizeof model); /* run_logits runs `model`: the tiny llama here, restored below */
    tap_data(model, sizeof model, "tiny-llama-q4_0.gguf");
    tp_ids(ids, sizeof ids, gd.tokens, gd.n);
    snprintf(ref_path, sizeof ref_path, "%s/swiglu-single.f32", tp_dir);
    int st = run_logits("swiglu-single", ids, "none", "0", "1", ref_path);
    float *ref = st == 0 ? tp_read_logits(ref_path, gd.n, gd.n_vocab) : NULL;
    if (!tap_ok(ref != NULL, "tiny llama (SwiGLU): single-process logits written (status %d)", st)) {
        pi_gguf_destroy(&gd.g);
        memcpy(model, saved, sizeof model);
        return;
    }
    const double e_single = tp_rel_err(ref, gd.logits, gd.n, gd.n_vocab);
    static const char *const cfg[][2] = {{"0", "1"}, {"0", "3"}, {"0.5", "2"}};
    for (size_t k = 0; k < PI_ARRAY_LEN(cfg); k++) {
        char name[64];
        snprintf(name, sizeof name, "swiglu-h%s-w%s", cfg[k][0], cfg[k][1]);
        snprintf(out, sizeof out, "%s/%s.f32", tp_dir, name);
        st = run_logits(name, ids, "host", cfg[k][0], cfg[k][1], out);
        float *lg = st == 0 ? tp_read_logits(out, gd.n, gd.n_vocab) : NULL;
        if (!lg) {
            char *err = tp_output(name, "err");
            tap_ok(0, "tiny llama hot %s, %s CPU workers: exit %d: %s", cfg[k][0], cfg[k][1], st, err);
            free(err);
            continue;
        }
        double eg = tp_rel_err(lg, gd.logits, gd.n, gd.n_vocab), es = tp_rel_err(lg, ref, gd.n, gd.n_vocab);
        tap_ok(eg <= e_single + GOLDEN_TOL / 2 && es <= GOLDEN_TOL,
               "tiny llama hot %s, %s CPU workers: vs golden %.3g (single process %.3g), vs single process %.3g (<= %.0e)",
               cfg[k][0], cfg[k][1], eg, e_single, es, GOLDEN_TOL);
        free(lg);
    }
    free(ref);
    pi_gguf_destroy(&gd.g);
    memcpy(model, saved, sizeof model);
}

int main(void)
{
    tp_prog(coord, sizeof coord, "coordinator/pi-coordinator");
    tap_data(model, sizeof model, "demo-relu-q4_0.gguf");
    tp_guard(300); /* generous: the sanitizer build on a loaded 2-core machine */
    tp_mkdir("pi-test-pipeline");
    char gpath[512], ids[4096], ref_path[300];
    struct tp_golden gd;
    if (tp_golden_open(tap_data(gpath, sizeof gpath, "demo-relu-q4_0.golden.gguf"), &gd) != 0) tap_bail("golden");
    tp_ids(ids, sizeof ids, gd.tokens, gd.n);
    int shm_before = shm_leftovers();

    snprintf(ref_path, sizeof ref_path, "%s/single.f32", tp_dir);
    int st = run_logits("single", ids, "none", "0", "1", ref_path);
    float *ref = st == 0 ? tp_read_logits(ref_path, gd.n, gd.n_vocab) : NULL;
    tap_ok(ref != NULL, "single-process logits written (status %d)", st);
    if (!ref) return tap_done();

    test_permuted(ids, &gd, ref);
    test_solved(ids, &gd, ref);
    float *whole = NULL; /* hot 0, 1 CPU worker: every neuron in one place */
    float *allhot = NULL; /* hot 1, 1 CPU worker */
    static const char *const hots[] = {"0", "0.5", "1"};
    static const char *const workers[] = {"1", "2", "3"};
    for (size_t h = 0; h < PI_ARRAY_LEN(hots); h++) {
        for (size_t w = 0; w < PI_ARRAY_LEN(workers); w++) {
            char name[64], out[600];
            snprintf(name, sizeof name, "pipe-h%s-w%s", hots[h], workers[w]);
            snprintf(out, sizeof out, "%s/%s.f32", tp_dir, name);
            st = run_logits(name, ids, "host", hots[h], workers[w], out);
            float *lg = st == 0 ? tp_read_logits(out, gd.n, gd.n_vocab) : NULL;
            if (!lg) {
                char *err = tp_output(name, "err");
                tap_ok(0, "hot %s, %s CPU workers: exit %d: %s", hots[h], workers[w], st, err);
                free(err);
                continue;
            }
            if (!whole) whole = lg;
            bool all_hot = strcmp(hots[h], "1") == 0;
            double eg = tp_rel_err(lg, gd.logits, gd.n, gd.n_vocab), es = tp_rel_err(lg, ref, gd.n, gd.n_vocab);
            double ew = tp_rel_err(lg, whole, gd.n, gd.n_vocab), tw = all_hot ? 2 * GOLDEN_TOL : SPLIT_TOL;
            tap_ok(eg <= GOLDEN_TOL && es <= 2 * GOLDEN_TOL && ew <= tw,
                   "hot %s, %s CPU workers: relative error vs golden %.3g (<= %.0e), vs single process %.3g (<= %.0e), "
                   "vs unsplit pipeline %.3g (<= %.0e)", hots[h], workers[w], eg, GOLDEN_TOL, es, 2 * GOLDEN_TOL, ew, tw);
            if (all_hot) {
                size_t bytes = (size_t)gd.n * (size_t)gd.n_vocab * sizeof(float);
                tap_ok(es <= GOLDEN_TOL, "hot 1, %s CPU workers: the single process's logits within %.0e (%.3g; %s)",
                       workers[w], GOLDEN_TOL, es, memcmp(lg, ref, bytes) == 0 ? "bit-identical" : "not bit-identical");
                if (!allhot) {
                    allhot = lg;
                    continue;
                }
                tap_ok(memcmp(lg, allhot, bytes) == 0, "hot 1, %s CPU workers: the same bits as with 1 CPU worker", workers[w]);
            }
            if (lg != whole) free(lg);
        }
    }
    free(ref);
    if (allhot != whole) free(allhot);
    free(whole);
    test_swiglu();
    test_vram_budget(ids);
    tap_is_int(tp_count_procs(tp_dir), 0, "no process left behind");
    tap_is_int(shm_leftovers(), shm_before, "nothing new in /dev/shm");
    char rundir[300];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    DIR *d = opendir(rundir);
    int entries = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) entries += e->d_name[0] != '.';
        closedir(d);
    }
    tap_is_int(entries, 0, "the run directory is left empty");
    pi_gguf_destroy(&gd.g);
    return tap_done();
}
