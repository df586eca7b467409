/*
 * tools/pi-profile.c - measures how often each FFN neuron of a model is active over a calibration
 * text and writes the model's sidecar (model/sidecar.h, doc/locality.md).
 *
 * The text is tokenized once with BOS first and cut into chunks of CTX tokens, each chunk's first
 * token replaced by BOS (llama-perplexity's chunking, so chunks start as sequences do). Every chunk
 * runs through the inference forward pass (compute/forward.c) from an empty cache, with the pass's
 * statistics hook counting per neuron the tokens whose gate output is positive and the histogram of
 * |act(gate, up)| per layer. Models without a tokenizer (pi-gen-model's) are profiled over random
 * token ids with --random N. For a SwiGLU model it then calibrates the activation thresholds of the
 * sparsity modes over the same chunks (compute/thresholds.h, doc/thresholds.md) into the sidecar.
 *
 *   pi-profile -m model.gguf                   # bundled calibration text, MODEL.pinfer.gguf
 *   pi-profile -m model.gguf -f text.txt -c 512 --sidecar /tmp/x.pinfer.gguf
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/forward.h"
#include "compute/thresholds.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "model/model.h"
#include "model/sidecar.h"
#include "text/calib.h"

#define DEFAULT_TEXT PI_CALIB_DEFAULT_TEXT

enum { EXIT_USAGE = 2 };

struct args {
    const char *model, *text, *sidecar;
    int ctx, threads;
    bool no_thresholds;
    float thr_sparsity[2]; /* --threshold-sparsity SAFE,AGGRESSIVE; 0: by KLD */
    long random_tokens;
    uint64_t seed;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pi-profile -m MODEL [-f TEXT] [--sidecar PATH] [-c CTX] [-t THREADS]\n"
            "Measure each FFN neuron's activation frequency over a calibration text and write the sidecar.\n\n"
            "  -m, --model PATH     the model (GGUF)\n"
            "  -f, --file TEXT      calibration text (default: " DEFAULT_TEXT ")\n"
            "      --sidecar PATH   where to write (default: MODEL.pinfer.gguf beside the model)\n"
            "  -c, --ctx N          tokens per chunk, at most the model's context length (default: that, at most 512)\n"
            "  -t, --threads N      threads (default: every online CPU)\n"
            "      --random N       profile N random token ids instead of a text (models without a tokenizer)\n"
            "      --seed N         seed of --random (default: 1)\n"
            "      --no-thresholds  SwiGLU models: do not calibrate the activation thresholds of --sparsity\n"
            "      --threshold-sparsity S,A\n"
            "                       SwiGLU models: thresholds skipping the shares S (safe) and A (aggressive) of\n"
            "                       the FFN pairs, not chosen by KLD (random-weight models: benchmarks)\n"
            "  -h, --help           this text\n"
            "  -V, --version        show the version and exit\n");
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* 0, or EXIT_USAGE after printing the reason. */
static int parse_args(int argc, char **argv, struct args *a)
{
    enum { O_SIDECAR = 256, O_RANDOM, O_SEED, O_NO_THR, O_THR_SP };
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},
        {"file", 1, 0, 'f'},
        {"ctx", 1, 0, 'c'},
        {"threads", 1, 0, 't'},
        {"sidecar", 1, 0, O_SIDECAR},
        {"random", 1, 0, O_RANDOM},
        {"seed", 1, 0, O_SEED},
        {"help", 0, 0, 'h'},
        {"version", 0, 0, 'V'},
        {"no-thresholds", 0, 0, O_NO_THR},
        {"threshold-sparsity", 1, 0, O_THR_SP},
        {0, 0, 0, 0},
    };
    int c;
    long v;
    memset(a, 0, sizeof *a);
    a->seed = 1;
    while ((c = getopt_long(argc, argv, "m:f:c:t:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'f': a->text = optarg; break;
        case O_SIDECAR: a->sidecar = optarg; break;
        case 'c':
            if (parse_long(optarg, 2, 1 << 20, &v) < 0) goto bad;
            a->ctx = (int)v;
            break;
        case 't':
            if (parse_long(optarg, 1, 4096, &v) < 0) goto bad;
            a->threads = (int)v;
            break;
        case O_RANDOM:
            if (parse_long(optarg, 1, 1L << 32, &a->random_tokens) < 0) goto bad;
            break;
        case O_SEED:
            if (parse_long(optarg, 0, 1L << 62, &v) < 0) goto bad;
            a->seed = (uint64_t)v;
            break;
        case O_NO_THR: a->no_thresholds = true; break;
        case O_THR_SP: {
            char *end;
            errno = 0;
            double s0 = strtod(optarg, &end), s1 = -1.0;
            if (*end == ',') s1 = strtod(end + 1, &end);
            if (errno || *end != '\0' || !(s0 > 0.0 && s0 < 1.0) || !(s1 >= s0 && s1 < 1.0)) {
                fprintf(stderr, "pi-profile: --threshold-sparsity '%s': expected S,A with 0 < S <= A < 1\n", optarg);
                return EXIT_USAGE;
            }
            a->thr_sparsity[0] = (float)s0;
            a->thr_sparsity[1] = (float)s1;
            break;
        }
        case 'h': usage(stdout); exit(0);
        case 'V': printf("pi-profile (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); exit(0);
        default: usage(stderr); return EXIT_USAGE;
        }
        continue;
    bad:
        fprintf(stderr, "pi-profile: bad value for -%c/--%s: '%s'\n", c < 256 ? c : '-',
                c == 'c'        ? "ctx"
                : c == 't'      ? "threads"
                : c == O_RANDOM ? "random"
                                : "seed",
                optarg);
        return EXIT_USAGE;
    }
    if (optind != argc || !a->model) {
        if (optind != argc) fprintf(stderr, "pi-profile: unexpected argument '%s'\n", argv[optind]);
        else fprintf(stderr, "pi-profile: -m MODEL is required\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    if (a->text && a->random_tokens) {
        fprintf(stderr, "pi-profile: -f and --random exclude each other\n");
        return EXIT_USAGE;
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Run every chunk through f with the statistics hook on. 0 or 1 (printed). */
static int profile(pi_forward_t *f, int32_t *ids, size_t n, int32_t bos, int ctx, struct pi_ffn_stats *st)
{
    size_t n_chunks = n / (size_t)ctx, shown = 1;
    bool tty = isatty(STDERR_FILENO);
    double t0 = now_s();
    pi_forward_set_stats(f, st);
    for (size_t c = 0; c < n_chunks; c++) {
        int32_t *chunk = ids + c * (size_t)ctx;
        if (bos >= 0) chunk[0] = bos; /* each chunk starts as a sequence does */
        pi_forward_seq_reset(f, 0);
        if (pi_forward_tokens(f, 0, chunk, ctx, 0, NULL, false) < 0) {
            fprintf(stderr, "\npi-profile: the forward pass failed on chunk %zu\n", c);
            return 1;
        }
        /* a progress line: rewritten in place on a terminal, every tenth of the run in a log */
        size_t tenth = (c + 1) * 10 / n_chunks;
        if (!tty && tenth < shown && c + 1 < n_chunks) continue;
        shown = tenth + 1;
        double dt = now_s() - t0;
        fprintf(stderr, "%spi-profile: chunk %zu/%zu, %llu tokens, %.0f tokens/s%s", tty ? "\r" : "", c + 1, n_chunks,
                (unsigned long long)st->tokens, dt > 0 ? (double)st->tokens / dt : 0.0, tty ? "" : "\n");
    }
    if (tty) fprintf(stderr, "\n");
    pi_forward_set_stats(f, NULL);
    return 0;
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Share of layer il's (token, neuron) pairs with |act| below 2^e (e on a bin edge). */
static double hist_below(const struct pi_sidecar *s, int il, float e)
{
    int last = (int)((e - PI_SIDECAR_HIST_LOG2_MIN) / PI_SIDECAR_HIST_LOG2_STEP); /* bins 0..last lie below */
    double sum = 0;
    for (int b = 0; b <= last && b < s->n_hist; b++) sum += s->act_hist[(size_t)il * s->n_hist + b];
    return sum;
}

/* Per layer: ReLU models, the mean sparsity and the share of neurons that carry 80% of the
 * activations; SwiGLU models (no zeros), how much of the activations is small. */
static void report(const struct pi_sidecar *s, enum pi_ffn_act act)
{
    if (act == PI_FFN_ACT_SILU) {
        for (int il = 0; il < s->n_layer; il++)
            printf("layer %d: |silu(gate)*up| < 2^-7 for %.1f%%, < 2^-3 for %.1f%% of (token, neuron) pairs\n", il,
                   100.0 * hist_below(s, il, -7.0f), 100.0 * hist_below(s, il, -3.0f));
        return;
    }

    float *row = malloc((size_t)s->n_ff * sizeof *row);
    if (!row) return;
    for (int il = 0; il < s->n_layer; il++) {
        double sum = 0, acc = 0;
        int k = 0;
        memcpy(row, s->act_freq + (size_t)il * s->n_ff, (size_t)s->n_ff * sizeof *row);
        qsort(row, (size_t)s->n_ff, sizeof *row, cmp_desc);
        for (int i = 0; i < s->n_ff; i++) sum += row[i];
        while (k < s->n_ff && acc < 0.8 * sum) acc += row[k++];
        printf("layer %d: sparsity %.1f%%, 80%% of activations in %.1f%% of neurons\n", il,
               100.0 * (1.0 - sum / s->n_ff), 100.0 * k / s->n_ff);
    }
    free(row);
}

/* Calibrate the activation thresholds over the chunks (at least two: main checks) into sc. 0 or 1 (printed). */
static int calibrate(const pi_model_t *m, const int32_t *ids, size_t n, int ctx, int threads, const float *sparsity,
                     struct pi_sidecar *sc)
{
    const int n_chunks = (int)PI_MIN(n / (size_t)ctx, (size_t)INT32_MAX);
    struct pi_thr_opts o;
    struct pi_thr_result r;
    pi_thr_opts_default(&o, n_chunks, ctx, m->hp.n_vocab);
    o.n_threads = threads;
    o.sparsity[0] = sparsity[0];
    o.sparsity[1] = sparsity[1];
    o.progress = stderr;
    o.prog = "pi-profile";
    if (pi_thr_calibrate(m, ids, n_chunks, ctx, &o, &r) < 0) {
        fprintf(stderr, "pi-profile: the threshold calibration failed\n");
        return 1;
    }
    pi_thr_result_to_sidecar(&r, &o, sc);
    return 0;
}

/* The thresholds' figures, one line per mode and one per layer. */
static void report_thresholds(const struct pi_sidecar *s)
{
    static const char *const mode[2] = {"safe", "aggressive"};
    for (int k = 0; k < 2; k++)
        printf("thresholds %s: %.1f%% of FFN (token, neuron) pairs skipped, held-out KLD %.5f (target %g)\n", mode[k],
               100.0 * s->thr_sparsity[k], (double)s->thr_kld[k], (double)s->thr_kld_target[k]);
    for (int il = 0; il < s->n_layer; il++)
        printf("layer %d: pairs skipped safe %.1f%%, aggressive %.1f%%\n", il, 100.0 * s->gate_sparsity[2 * il],
               100.0 * s->gate_sparsity[2 * il + 1]);
}

int main(int argc, char **argv)
{
    struct args a;
    struct pi_model_opts mo;
    pi_model_t *m = NULL;
    pi_forward_t *f = NULL;
    struct pi_sidecar *sc = NULL;
    struct pi_ffn_stats st = {0};
    int32_t *ids = NULL, bos = -1;
    size_t n = 0;
    char err[512], path[4096];
    int rc;
    pi_log_set_program("pi-profile");
    if ((rc = parse_args(argc, argv, &a)) != 0) return rc;
    pi_model_opts_default(&mo);
    if (pi_model_open(a.model, &mo, &m, err, sizeof err) < 0) {
        fprintf(stderr, "pi-profile: %s: %s\n", a.model, err);
        return 1;
    }
    if (a.sidecar) snprintf(path, sizeof path, "%s", a.sidecar);
    else if (pi_sidecar_path(a.model, path, sizeof path) < 0) {
        fprintf(stderr, "pi-profile: model path too long\n");
        rc = EXIT_USAGE;
        goto out;
    }
    int ctx = a.ctx ? a.ctx : PI_MIN(pi_model_default_ctx(m), 512);
    if (m->hp.n_ctx_train > 0 && ctx > m->hp.n_ctx_train) {
        fprintf(stderr, "pi-profile: -c %d exceeds the model's context length %d\n", ctx, m->hp.n_ctx_train);
        rc = EXIT_USAGE;
        goto out;
    }
    struct pi_calib_args ca = {"pi-profile", a.model, a.text, DEFAULT_TEXT, a.random_tokens, a.seed};
    if ((rc = pi_calib_tokens(&ca, m, &ids, &n, &bos)) != 0) goto out;
    if (n < (size_t)ctx) {
        fprintf(stderr, "pi-profile: the text has %zu tokens, fewer than one chunk of %d (-c)\n", n, ctx);
        rc = EXIT_USAGE;
        goto out;
    }
    struct pi_forward_opts fo;
    pi_forward_opts_default(&fo);
    fo.n_ctx = ctx;
    fo.n_batch = ctx;
    fo.n_threads = a.threads ? a.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    st.n_layer = m->hp.n_layer;
    st.n_ff = m->hp.n_ff;
    st.n_hist = PI_SIDECAR_HIST_BINS;
    st.active = calloc((size_t)st.n_layer * (size_t)st.n_ff, sizeof *st.active);
    st.hist = calloc((size_t)st.n_layer * (size_t)st.n_hist, sizeof *st.hist);
    sc = pi_sidecar_new(m, true, true);
    if (!(f = pi_forward_new(m, &fo)) || !st.active || !st.hist || !sc) {
        fprintf(stderr, "pi-profile: out of memory\n");
        rc = 1;
        goto out;
    }
    if ((rc = profile(f, ids, n, bos, ctx, &st)) != 0) goto out;
    pi_forward_destroy(&f); /* the calibration runs its own passes */
    sc->tokens = st.tokens;
    for (size_t i = 0; i < (size_t)st.n_layer * (size_t)st.n_ff; i++)
        sc->act_freq[i] = (float)((double)st.active[i] / (double)st.tokens);
    for (size_t i = 0; i < (size_t)st.n_layer * (size_t)st.n_hist; i++)
        sc->act_hist[i] = (float)((double)st.hist[i] / ((double)st.tokens * st.n_ff));
    /* the profile is written first: a calibration that fails (or cannot run on a text of one chunk)
     * does not lose it */
    if (pi_sidecar_save(path, m, sc) < 0) {
        rc = 1;
        goto out;
    }
    if (m->hp.act == PI_FFN_ACT_SILU && !a.no_thresholds) {
        if (n / (size_t)ctx < 2) {
            fprintf(stderr,
                    "pi-profile: the text has one chunk of %d tokens: the activation thresholds need two "
                    "(profile written without them)\n",
                    ctx);
        } else if ((rc = calibrate(m, ids, n, ctx, fo.n_threads, a.thr_sparsity, sc)) != 0) {
            fprintf(stderr, "pi-profile: %s holds the profile; the thresholds were not written\n", path);
            goto out;
        } else if (pi_sidecar_save(path, m, sc) < 0) {
            rc = 1;
            goto out;
        }
    }
    report(sc, m->hp.act);
    if (sc->gate_min) report_thresholds(sc);
    printf("wrote %s: profile of %llu tokens (%zu chunks of %d)\n", path, (unsigned long long)st.tokens,
           n / (size_t)ctx, ctx);
out:
    pi_sidecar_destroy(&sc);
    pi_forward_destroy(&f);
    pi_model_destroy(&m);
    free(st.active);
    free(st.hist);
    free(ids);
    return rc;
}
