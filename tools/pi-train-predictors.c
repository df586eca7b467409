/*
 * tools/pi-train-predictors.c - trains one activation predictor per layer of a ReLU or dReLU model and
 * writes them into the model's sidecar (compute/predictor-train.h, doc/predictors.md).
 *
 * Two phases. Capture: the calibration text (or --random ids) is cut into chunks as pi-profile cuts it
 * and run through the inference forward pass with its capture hook on; every tenth chunk is held out;
 * each layer's FFN inputs and true masks go into a training and a held-out reservoir (--samples
 * tokens per layer in all, a tenth of them held out). Training: layer by layer, up the rank ladder,
 * on the pass's thread pool or on the GPU (--device: the cuda engine of the module pinfer-cuda.so,
 * opened before the capture so that a missing GPU is said at once); calibration and storing on the
 * host. When the sidecar is absent (or has no statistics) the capture also counts the statistics
 * pi-profile would, so the new sidecar has them; existing ones are kept.
 *
 *   pi-train-predictors -m model.gguf                    # bundled text, MODEL.pinfer.gguf
 *   pi-train-predictors -m model.gguf -f text.txt --recall 0.995 --rank-max 512 -t 16
 *   pi-train-predictors -m model.gguf --device cuda      # fail (exit 1) where there is no GPU
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/forward.h"
#include "compute/predictor-train.h"
#include "lib/common.h"
#include "lib/log.h"
#include "model/model.h"
#include "model/sidecar.h"
#include "text/calib.h"

#define DEFAULT_TEXT PI_CALIB_DEFAULT_TEXT
#define PROG "pi-train-predictors"
#define HELDOUT_EVERY 10 /* chunk c is held out when (c + 1) % 10 == 0 */

enum { EXIT_USAGE = 2 };

struct args {
    const char *model, *text, *sidecar;
    int ctx, threads;
    long random_tokens, samples;
    struct pi_ptrain_opts o;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: " PROG " -m MODEL [-f TEXT | --random N] [--sidecar PATH] [options]\n"
            "Train each layer's activation predictor (ReLU and dReLU models) and write it into the sidecar.\n\n"
            "  -m, --model PATH       the model (GGUF)\n"
            "  -f, --file TEXT        calibration text (default: " DEFAULT_TEXT ")\n"
            "      --random N         N random token ids instead of a text (models without a tokenizer)\n"
            "      --sidecar PATH     the sidecar to update or create (default: MODEL.pinfer.gguf beside it)\n"
            "  -c, --ctx N            tokens per chunk (default: the model's context length, at most 512)\n"
            "  -t, --threads N        threads (default: every online CPU)\n"
            "      --samples N        tokens kept per layer, a tenth of them held out (default: 8192)\n"
            "      --recall R         the safe threshold's recall target (default: 0.997)\n"
            "      --recall-aggressive R  the aggressive threshold's target (default: 0.95)\n"
            "      --rank-min R       the smallest rank tried (default: 32)\n"
            "      --rank-max R       the largest rank tried; the ladder: R_min, 2 R_min, ... (default: 1024)\n"
            "      --headroom F       held-out misses at most F x what --recall allows (default: 0.5)\n"
            "      --max-overhead X   a rank is enough when it predicts at most (1 + X) x the truly active\n"
            "                         neurons at the safe threshold (default: 0.5)\n"
            "      --epochs N         at most N epochs per rank; early stop on the held-out loss (default: 30)\n"
            "      --lr L             Adam's learning rate (default: 0.005)\n"
            "      --type T           the weights' type: f16, f32 or q8_0 (default: f16)\n"
            "      --seed S           seed of the weights, the minibatches, the reservoirs, --random (default: 1)\n"
            "      --device D         where the training steps run: cpu, cuda (the GPU through cuBLAS; exit 1\n"
            "                         without one) or auto (cuda when there is a GPU, else cpu) (default: auto)\n"
            "  -h, --help             this text\n"
            "  -V, --version          show the version and exit\n");
}

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || errno || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

enum {
    O_SIDECAR = 256,
    O_RANDOM,
    O_SEED,
    O_SAMPLES,
    O_RECALL,
    O_RECALL_AGG,
    O_RANK_MIN,
    O_RANK_MAX,
    O_HEADROOM,
    O_OVERHEAD,
    O_EPOCHS,
    O_LR,
    O_TYPE,
    O_DEVICE
};

static const struct option long_opts[] = {
    {"model", 1, 0, 'm'},
    {"file", 1, 0, 'f'},
    {"ctx", 1, 0, 'c'},
    {"threads", 1, 0, 't'},
    {"sidecar", 1, 0, O_SIDECAR},
    {"random", 1, 0, O_RANDOM},
    {"seed", 1, 0, O_SEED},
    {"samples", 1, 0, O_SAMPLES},
    {"recall", 1, 0, O_RECALL},
    {"recall-aggressive", 1, 0, O_RECALL_AGG},
    {"rank-max", 1, 0, O_RANK_MAX},
    {"rank-min", 1, 0, O_RANK_MIN},
    {"headroom", 1, 0, O_HEADROOM},
    {"max-overhead", 1, 0, O_OVERHEAD},
    {"epochs", 1, 0, O_EPOCHS},
    {"lr", 1, 0, O_LR},
    {"type", 1, 0, O_TYPE},
    {"device", 1, 0, O_DEVICE},
    {"help", 0, 0, 'h'},
    {"version", 0, 0, 'V'},
    {0, 0, 0, 0},
};

/* One option's value into a; 0 or -1 (bad value). */
static int set_opt(struct args *a, int c, const char *v)
{
    double x;
    switch (c) {
    case 'm': a->model = v; return 0;
    case 'f': a->text = v; return 0;
    case O_SIDECAR: a->sidecar = v; return 0;
    case 'c': return parse_num(v, 2, 1 << 20, &x) < 0 || x != floor(x) ? -1 : (a->ctx = (int)x, 0);
    case 't': return parse_num(v, 1, 4096, &x) < 0 || x != floor(x) ? -1 : (a->threads = (int)x, 0);
    case O_RANDOM: return parse_num(v, 1, 4294967296.0, &x) < 0 || x != floor(x) ? -1 : (a->random_tokens = (long)x, 0);
    case O_SAMPLES: return parse_num(v, 20, 1 << 24, &x) < 0 || x != floor(x) ? -1 : (a->samples = (long)x, 0);
    case O_SEED: return parse_num(v, 0, 4.6e18, &x) < 0 || x != floor(x) ? -1 : (a->o.seed = (uint64_t)x, 0);
    case O_RECALL: return parse_num(v, 0.5, 1, &x) < 0 ? -1 : (a->o.recall[0] = x, 0);
    case O_RECALL_AGG: return parse_num(v, 0.5, 1, &x) < 0 ? -1 : (a->o.recall[1] = x, 0);
    case O_RANK_MAX:
        return parse_num(v, 1, PI_SIDECAR_PRED_RANK_MAX, &x) < 0 || x != floor(x) ? -1
                                                                                  : (a->o.rank_max = (int64_t)x, 0);
    case O_RANK_MIN:
        return parse_num(v, 1, PI_SIDECAR_PRED_RANK_MAX, &x) < 0 || x != floor(x) ? -1
                                                                                  : (a->o.rank_min = (int64_t)x, 0);
    case O_HEADROOM: return parse_num(v, 1e-6, 1, &x) < 0 ? -1 : (a->o.headroom = x, 0);
    case O_OVERHEAD: return parse_num(v, 0, 100, &x) < 0 ? -1 : (a->o.max_overhead = x, 0);
    case O_EPOCHS: return parse_num(v, 1, 10000, &x) < 0 || x != floor(x) ? -1 : (a->o.epochs = (int)x, 0);
    case O_LR: return parse_num(v, 1e-6, 1, &x) < 0 ? -1 : (a->o.lr = (float)x, 0);
    case O_TYPE:
        if (strcmp(v, "f16") == 0) a->o.type = PI_TYPE_F16;
        else if (strcmp(v, "f32") == 0) a->o.type = PI_TYPE_F32;
        else if (strcmp(v, "q8_0") == 0) a->o.type = PI_TYPE_Q8_0;
        else return -1;
        return 0;
    case O_DEVICE:
        if (strcmp(v, "auto") == 0) a->o.device = PI_PTRAIN_DEVICE_AUTO;
        else if (strcmp(v, "cpu") == 0) a->o.device = PI_PTRAIN_DEVICE_CPU;
        else if (strcmp(v, "cuda") == 0) a->o.device = PI_PTRAIN_DEVICE_CUDA;
        else return -1;
        return 0;
    default: return -1;
    }
}

/* 0, or EXIT_USAGE after printing the reason. */
static int parse_args(int argc, char **argv, struct args *a)
{
    int c, li = -1;
    memset(a, 0, sizeof *a);
    pi_ptrain_opts_default(&a->o);
    a->o.device = PI_PTRAIN_DEVICE_AUTO;
    a->samples = 8192;
    while ((c = getopt_long(argc, argv, "m:f:c:t:hV", long_opts, &li)) != -1) {
        if (c == 'h') usage(stdout), exit(0);
        if (c == 'V') printf(PROG " (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION), exit(0);
        if (c == '?' || c == ':') {
            usage(stderr);
            return EXIT_USAGE;
        }
        if (set_opt(a, c, optarg) < 0) {
            const char *name = "?";
            for (int i = 0; long_opts[i].name; i++)
                if (long_opts[i].val == c) name = long_opts[i].name;
            fprintf(stderr, PROG ": bad value for --%s: '%s'\n", name, optarg);
            return EXIT_USAGE;
        }
    }
    const char *why = optind != argc                    ? "unexpected argument"
                      : !a->model                       ? "-m MODEL is required"
                      : a->text && a->random_tokens     ? "-f and --random exclude each other"
                      : a->o.recall[1] > a->o.recall[0] ? "--recall-aggressive must not exceed --recall"
                      : a->o.rank_min > a->o.rank_max   ? "--rank-min must not exceed --rank-max"
                      : a->o.type == PI_TYPE_Q8_0 && a->o.rank_min % 32
                          ? "--type q8_0 needs --rank-min a multiple of 32"
                          : NULL;
    if (why) {
        fprintf(stderr, PROG ": %s%s%s\n", why, optind != argc ? " " : "", optind != argc ? argv[optind] : "");
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

/* The progress line: rewritten in place on a terminal, every tenth of a phase in a log. */
struct progress {
    bool tty;
    double t0; /* start of the phase */
    int shown; /* tenths shown (logs) */
    int n_layer, layers_done;
};

static void show(struct progress *p, double done, const char *what, double left)
{
    int tenth = (int)(done * 10);
    if (!p->tty && tenth < p->shown && done < 1.0) return;
    p->shown = tenth + 1;
    char eta[64] = "estimating time left";
    if (left >= 0) snprintf(eta, sizeof eta, "about %.0f s left", left);
    fprintf(stderr, "%s" PROG ": %s, %.0f s, %s%s", p->tty ? "\r\033[K" : "", what, now_s() - p->t0, eta,
            p->tty ? "" : "\n");
}

static void on_epoch(void *ctx, int il, int64_t rank, int epoch, double loss)
{
    struct progress *p = ctx;
    char what[128];
    double el = now_s() - p->t0;
    double left = p->layers_done > 0 ? el / p->layers_done * (p->n_layer - p->layers_done) : -1;
    if (!p->tty) return; /* logs get a line per tenth of the layers (train()) */
    snprintf(what, sizeof what, "training layer %d/%d, rank %lld, epoch %d, held-out loss %.4f", il + 1, p->n_layer,
             (long long)rank, epoch, loss);
    show(p, (double)p->layers_done / p->n_layer, what, left);
}

/* Capture: every chunk through f with the capture hook (and the statistics when st). 0 or 1. */
static int capture(pi_forward_t *f, int32_t *ids, size_t n, int32_t bos, int ctx, struct pi_ptrain_samples *s,
                   struct pi_ffn_stats *st)
{
    size_t n_chunks = n / (size_t)ctx;
    struct progress p = {isatty(STDERR_FILENO), now_s(), 1, 0, 0};
    bool held = false;
    pi_forward_set_capture(f, pi_ptrain_capture, s);
    if (st) pi_forward_set_stats(f, st);
    for (size_t c = 0; c < n_chunks; c++) {
        int32_t *chunk = ids + c * (size_t)ctx;
        bool h = (c + 1) % HELDOUT_EVERY == 0 || (c + 1 == n_chunks && !held);
        held |= h;
        if (bos >= 0) chunk[0] = bos;
        pi_forward_seq_reset(f, 0);
        pi_ptrain_samples_chunk(s, h ? PI_PTRAIN_HELDOUT : PI_PTRAIN_TRAIN, ctx);
        if (pi_forward_tokens(f, 0, chunk, ctx, 0, NULL, false) < 0) {
            fprintf(stderr, "\n" PROG ": the forward pass failed on chunk %zu\n", c);
            return 1;
        }
        char what[96];
        double el = now_s() - p.t0;
        snprintf(what, sizeof what, "capture chunk %zu/%zu", c + 1, n_chunks);
        show(&p, (double)(c + 1) / n_chunks, what, el / (c + 1) * (n_chunks - c - 1));
    }
    if (p.tty) fprintf(stderr, "\n");
    pi_forward_set_capture(f, NULL, NULL);
    pi_forward_set_stats(f, NULL);
    return 0;
}

/* Train every layer on e into sc->pred; print the table. 0 or 1. */
static int train(struct pi_ptrain_engine *e, const struct pi_ptrain_samples *s, struct pi_ptrain_opts *o,
                 struct pi_sidecar *sc)
{
    struct progress p = {isatty(STDERR_FILENO), now_s(), 1, s->n_layer, 0};
    struct pi_ptrain_report *rep = calloc((size_t)s->n_layer, sizeof *rep);
    if (!rep) return fprintf(stderr, PROG ": out of memory\n"), 1;
    o->progress = on_epoch;
    o->progress_ctx = &p;
    for (int il = 0; il < s->n_layer; il++) {
        if (pi_ptrain_layer_on(e, il, o, &sc->pred[il], &rep[il]) < 0) {
            free(rep);
            return 1;
        }
        p.layers_done = il + 1;
        double el = now_s() - p.t0;
        char what[96];
        snprintf(what, sizeof what, "trained layer %d/%d (rank %lld)", il + 1, s->n_layer,
                 (long long)sc->pred[il].rank);
        show(&p, (double)(il + 1) / s->n_layer, what, el / (il + 1) * (s->n_layer - il - 1));
    }
    if (p.tty) fprintf(stderr, "\n");
    printf("layer  rank  recall safe  recall aggr  predicted active (safe, aggr)  true active  epochs  ranks tried\n");
    for (int il = 0; il < s->n_layer; il++) {
        const struct pi_sidecar_pred *q = &sc->pred[il];
        printf("%5d  %4lld  %11.4f  %11.4f  %14.1f%% %13.1f%%  %10.1f%%  %6d  %11lld\n", il, (long long)q->rank,
               q->recall[0], q->recall[1], 100.0 * q->active[0], 100.0 * q->active[1], 100.0 * q->active[2],
               rep[il].epochs, (long long)rep[il].ranks_tried);
    }
    printf("trained in %.1f s on %s\n", now_s() - p.t0, e->desc);
    free(rep);
    return 0;
}

/* The sidecar to update (its statistics kept, its predictors replaced), or a new one. 0 or an exit
 * status (printed). *need_stats: the capture must count the statistics too. */
static int open_sidecar(const char *path, const pi_model_t *m, struct pi_sidecar **sc, bool *need_stats)
{
    char err[512];
    int rc = pi_sidecar_load(path, m, sc, err, sizeof err);
    if (rc == -PI_ERR_NOTFOUND) *sc = pi_sidecar_new(m, true, true);
    else if (rc < 0) {
        fprintf(stderr, PROG ": sidecar %s: %s (remove it, or name another with --sidecar)\n", path, err);
        return 1;
    }
    if (!*sc) return fprintf(stderr, PROG ": out of memory\n"), 1;
    for (int il = 0; (*sc)->pred && il < (*sc)->n_layer; il++) pi_sidecar_pred_free(&(*sc)->pred[il]);
    free((*sc)->pred);
    (*sc)->pred = calloc((size_t)m->hp.n_layer, sizeof *(*sc)->pred);
    *need_stats = rc == -PI_ERR_NOTFOUND || !(*sc)->act_freq || !(*sc)->act_hist;
    if (*need_stats && rc == 0) {
        free((*sc)->act_freq), free((*sc)->act_hist);
        (*sc)->act_freq = calloc((size_t)m->hp.n_layer * (size_t)m->hp.n_ff, sizeof(float));
        (*sc)->act_hist = calloc((size_t)m->hp.n_layer * PI_SIDECAR_HIST_BINS, sizeof(float));
        (*sc)->n_hist = PI_SIDECAR_HIST_BINS;
    }
    if (!(*sc)->pred || !(*sc)->act_freq || !(*sc)->act_hist) return fprintf(stderr, PROG ": out of memory\n"), 1;
    return 0;
}

/* The statistics counted during the capture into sc (as pi-profile writes them). */
static void put_stats(struct pi_sidecar *sc, const struct pi_ffn_stats *st)
{
    sc->tokens = st->tokens;
    for (size_t i = 0; i < (size_t)st->n_layer * (size_t)st->n_ff; i++)
        sc->act_freq[i] = (float)((double)st->active[i] / (double)st->tokens);
    for (size_t i = 0; i < (size_t)st->n_layer * (size_t)st->n_hist; i++)
        sc->act_hist[i] = (float)((double)st->hist[i] / ((double)st->tokens * st->n_ff));
}

/* The model's chunk length, or an exit status (printed). */
static int chunk_len(const struct args *a, const pi_model_t *m, size_t n_tokens, int *ctx)
{
    *ctx = a->ctx ? a->ctx : PI_MIN(pi_model_default_ctx(m), 512);
    if (m->hp.n_ctx_train > 0 && *ctx > m->hp.n_ctx_train)
        return fprintf(stderr, PROG ": -c %d exceeds the model's context length %d\n", *ctx, m->hp.n_ctx_train),
               EXIT_USAGE;
    if (n_tokens < 2 * (size_t)*ctx)
        return fprintf(stderr, PROG ": the text has %zu tokens, fewer than two chunks of %d (-c): one is held out\n",
                       n_tokens, *ctx),
               EXIT_USAGE;
    return 0;
}

int main(int argc, char **argv)
{
    struct args a;
    struct pi_model_opts mo;
    struct pi_forward_opts fo;
    pi_model_t *m = NULL;
    pi_forward_t *f = NULL;
    struct pi_sidecar *sc = NULL;
    struct pi_ptrain_samples *s = NULL;
    struct pi_ptrain_engine *e = NULL;
    struct pi_ffn_stats st = {0};
    int32_t *ids = NULL, bos = -1;
    size_t n = 0;
    char err[512], path[4096];
    int rc, ctx = 0;
    bool need_stats = false;
    pi_log_set_program(PROG);
    if ((rc = parse_args(argc, argv, &a)) != 0) return rc;
    pi_model_opts_default(&mo);
    if (pi_model_open(a.model, &mo, &m, err, sizeof err) < 0) {
        fprintf(stderr, PROG ": %s: %s\n", a.model, err);
        return 1;
    }
    if (m->hp.act == PI_FFN_ACT_SILU) {
        fprintf(stderr,
                PROG ": %s is a SwiGLU model: its neurons are never exactly inactive; predictors are "
                     "for ReLU and dReLU models\n",
                a.model);
        rc = EXIT_USAGE;
        goto out;
    }
    if (a.sidecar) snprintf(path, sizeof path, "%s", a.sidecar);
    else if (pi_sidecar_path(a.model, path, sizeof path) < 0) {
        fprintf(stderr, PROG ": model path too long\n");
        rc = EXIT_USAGE;
        goto out;
    }
    struct pi_calib_args ca = {PROG, a.model, a.text, DEFAULT_TEXT, a.random_tokens, a.o.seed};
    if ((rc = pi_calib_tokens(&ca, m, &ids, &n, &bos)) != 0 || (rc = chunk_len(&a, m, n, &ctx)) != 0 ||
        (rc = open_sidecar(path, m, &sc, &need_stats)) != 0)
        goto out;
    pi_forward_opts_default(&fo);
    fo.n_ctx = fo.n_batch = ctx;
    fo.n_threads = a.threads ? a.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    st = (struct pi_ffn_stats){m->hp.n_layer, m->hp.n_ff, PI_SIDECAR_HIST_BINS, 0, NULL, NULL};
    st.active = calloc((size_t)st.n_layer * (size_t)st.n_ff, sizeof *st.active);
    st.hist = calloc((size_t)st.n_layer * (size_t)st.n_hist, sizeof *st.hist);
    rc = 1;
    if (!st.active || !st.hist || !(f = pi_forward_new(m, &fo)) ||
        !(s = pi_ptrain_samples_new(m, a.samples - a.samples / HELDOUT_EVERY, a.samples / HELDOUT_EVERY, ctx,
                                    a.o.seed)))
        goto out;
    if (pi_ptrain_engine_new(pi_forward_pool(f), s, &a.o, &e) < 0) goto out; /* the reason is logged */
    fprintf(stderr, PROG ": training on %s\n", e->desc);
    if ((rc = capture(f, ids, n, bos, ctx, s, need_stats ? &st : NULL)) != 0) goto out;
    fprintf(stderr, PROG ": %lld training and %lld held-out tokens per layer (of %llu and %llu)\n", (long long)s->n[0],
            (long long)s->n[1], (unsigned long long)s->seen[0], (unsigned long long)s->seen[1]);
    if ((rc = train(e, s, &a.o, sc)) != 0) goto out;
    if (need_stats) put_stats(sc, &st);
    sc->pred_target[0] = (float)a.o.recall[0];
    sc->pred_target[1] = (float)a.o.recall[1];
    sc->pred_samples[0] = (uint64_t)s->n[0];
    sc->pred_samples[1] = (uint64_t)s->n[1];
    sc->pred_seed = a.o.seed;
    if ((rc = pi_sidecar_save(path, m, sc) < 0 ? 1 : 0) == 0)
        printf("wrote %s: predictors of %d layers%s\n", path, m->hp.n_layer,
               need_stats ? ", and the statistics of this run's tokens" : "");
out:
    pi_ptrain_engine_destroy(&e);
    pi_ptrain_samples_destroy(&s);
    pi_sidecar_destroy(&sc);
    pi_forward_destroy(&f);
    pi_model_destroy(&m);
    free(st.active), free(st.hist), free(ids);
    return rc;
}
