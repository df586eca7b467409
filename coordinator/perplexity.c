/*
 * coordinator/perplexity.c - pi-perplexity: main(), its command line, and the chunk loop that runs
 * llama-perplexity's method through the coordinator's engines (doc/perplexity.md).
 *
 * The method: the whole text is tokenized once, BOS first; it is cut into chunks of CTX tokens; each
 * chunk is evaluated as one sequence from position 0 (the engine reset before it) with its first token
 * replaced by BOS, in the engine's batches; the logits at positions j in [CTX/2, CTX - 1) score the
 * token at j + 1. The second half only, so that every scored token has at least CTX/2 of context.
 *
 * The engine is any of pi-coordinator's: the forward pass in this process (--gpu-backend none) or the
 * process pipeline with its placement options, built by coordinator/libcoordinator.a exactly as
 * pi-coordinator builds it. Every value is checked before the model is loaded: a bad one is one line
 * on stderr and exit status 2; a runtime failure (a worker that dies) is 1.
 */
#include "config.h"
#include "coordinator/coordinator.h"
#include "coordinator/perplexity.h"
#include "kernels/cpu/dispatch.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_USAGE = 2, CTX_MIN = 8, CTX_MAX = 1 << 20, CTX_DEFAULT = 512 };

enum {
    OPT_CHUNKS = 256,
    OPT_KL_BASE,
    OPT_KL,
    OPT_SET,
    OPT_HELP,
    OPT_VERSION,
    OPT_KEY_BASE = 512, /* OPT_KEY_BASE + i: the i-th entry of key_opts */
};

/* A named option that sets one configuration key, as pi-coordinator's. */
static const struct {
    const char *name, *dotted, *arg;
} key_opts[] = {
    {"gpu-backend", "gpu.backend", "B"},         {"hot-fraction", "gpu.hot_fraction", "F"},
    {"vram-budget", "gpu.vram_budget", "BYTES"}, {"gpu-index", "gpu.gpu_index", "PATH"},
    {"gpu-device", "gpu.device", "N"},           {"cpu-workers", "cpu.workers", "N"},
    {"cpu-threads", "cpu.threads", "N"},         {"run-dir", "run.dir", "DIR"},
    {"log-level", "log.level", "LEVEL"},         {"sidecar", "model.sidecar", "PATH"},
    {"sparsity", "sparsity.mode", "MODE"},       {"recall-every", "sparsity.recall_every", "N"},
};

/* What the command line asked for. */
struct ppl_opts {
    struct pi_coord_opts co; /* the engine's configuration (co.cfg), as pi-coordinator resolves it */
    const char *model;       /* -m */
    const char *text;        /* -f, or NULL (--kl-divergence reads the ids from the base file) */
    int ctx;                 /* -c */
    bool ctx_given;
    int chunks;          /* --chunks, -1: every chunk the text holds */
    const char *kl_base; /* --kl-divergence-base FILE, or NULL */
    bool kl;             /* --kl-divergence: compare with kl_base instead of writing it */
};

/* The model, tokenizer and engine of a run, and what the loop needs of them. */
struct run {
    const struct ppl_opts *o;
    struct pi_coord_model cm;
    pi_engine_t *e;
    int n_vocab;
    int32_t bos;     /* put at each chunk's start, or -1 when the model adds no BOS */
    int32_t *tokens; /* (n_tokens) the text's ids */
    size_t n_tokens;
    int n_chunk;
    float *logits;      /* (max_batch, n_vocab) */
    float *logp, *base; /* (n_vocab) */
    FILE *bf;           /* the base file, or NULL */
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: pi-perplexity -m MODEL -f TEXT [-c CTX] [OPTION]...\n"
            "Perplexity of a model over a text as llama-perplexity measures it (chunks of CTX tokens, BOS at\n"
            "each chunk's start, the second half of each chunk scored), through pinfer's real engines; and\n"
            "the KL divergence of a run against the saved log-probabilities of another.\n"
            "\n"
            "  -m, --model FILE          the GGUF model; required\n"
            "  -f, --file TEXT           the text; required, except with --kl-divergence (the token ids\n"
            "                            come from the base file; a TEXT given must give the same ids)\n"
            "  -c, --ctx-size CTX        tokens per chunk, even, %d to %d; default: %d\n"
            "      --chunks N            evaluate only the first N chunks; default: every whole chunk\n"
            "      --kl-divergence-base FILE\n"
            "                            write the log-probabilities of the scored positions to FILE (float32,\n"
            "                            4 x n_vocab bytes per scored token); with --kl-divergence, read them\n"
            "      --kl-divergence       compare this run with FILE: KL divergence, Δp, same top token\n"
            "\n"
            "Engine (as pi-coordinator(1); each is also a key of pinfer.conf(5)):\n",
            CTX_MIN, CTX_MAX, CTX_DEFAULT);
    for (size_t i = 0; i < PI_ARRAY_LEN(key_opts); i++) {
        const struct pi_config_key_info *k = NULL;
        for (size_t j = 0; j < pi_config_key_count(); j++) {
            const struct pi_config_key_info *c = pi_config_key(j);
            char dotted[96];
            snprintf(dotted, sizeof dotted, "%s.%s", c->section, c->key);
            if (strcmp(dotted, key_opts[i].dotted) == 0) k = c;
        }
        PI_ASSERT(k != NULL);
        char lhs[64];
        snprintf(lhs, sizeof lhs, "--%s %s", key_opts[i].name, key_opts[i].arg);
        const char *def = k->default_text;
        if (strcmp(key_opts[i].dotted, "log.level") == 0) def = "warn";
        if (strcmp(key_opts[i].dotted, "sparsity.recall_every") == 0) def = "1 (every step: an evaluation)";
        fprintf(out, "      %-20s  %s; default: %s\n", lhs, k->help, *def ? def : "(empty)");
    }
    fputs("      --set tune.KEY=VALUE  a performance choice of pinfer.conf(5)'s [tune] section (repeatable)\n"
          "\n"
          "  -h, --help                print this help and exit\n"
          "  -V, --version             print the version and exit\n"
          "\n"
          "Exit status: 0 on success, 1 on a runtime failure, 2 on a usage error. See pi-perplexity(1).\n",
          out);
}

static int bad(const char *opt, const char *value, const char *why)
{
    fprintf(stderr, "pi-perplexity: %s '%s': %s\n", opt, value, why);
    return -PI_ERR_INVAL;
}

/* Set configuration key dotted from option opt, through the table's own check. */
static int set_key(struct ppl_opts *o, const char *opt, const char *dotted, const char *value)
{
    char err[512];
    if (pi_config_set(&o->co.cfg, dotted, value, opt, err, sizeof err) != 0) {
        fprintf(stderr, "pi-perplexity: %s\n", err);
        return -PI_ERR_INVAL;
    }
    return 0;
}

static int readable(const char *opt, const char *path)
{
    struct stat st;
    if (access(path, R_OK) != 0) return bad(opt, path, strerror(errno));
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return bad(opt, path, "not a regular file");
    return 0;
}

/* Parse argv into o (o->co.cfg holds the defaults). 0 to run, 1 after --help/--version, or a negative
 * pi_err after one line on stderr. */
static int parse(int argc, char **argv, struct ppl_opts *o)
{
    struct option lo[PI_ARRAY_LEN(key_opts) + 12];
    size_t n = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(key_opts); i++)
        lo[n++] = (struct option){key_opts[i].name, required_argument, NULL, OPT_KEY_BASE + (int)i};
    lo[n++] = (struct option){"model", required_argument, NULL, 'm'};
    lo[n++] = (struct option){"file", required_argument, NULL, 'f'};
    lo[n++] = (struct option){"ctx-size", required_argument, NULL, 'c'};
    lo[n++] = (struct option){"chunks", required_argument, NULL, OPT_CHUNKS};
    lo[n++] = (struct option){"kl-divergence-base", required_argument, NULL, OPT_KL_BASE};
    lo[n++] = (struct option){"kl-divergence", no_argument, NULL, OPT_KL};
    lo[n++] = (struct option){"set", required_argument, NULL, OPT_SET};
    lo[n++] = (struct option){"help", no_argument, NULL, 'h'};
    lo[n++] = (struct option){"version", no_argument, NULL, 'V'};
    lo[n++] = (struct option){NULL, 0, NULL, 0};
    PI_ASSERT(n <= PI_ARRAY_LEN(lo));
    int c, rc = 0;
    int64_t v;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":m:f:c:hV", lo, NULL)) != -1) {
        switch (c) {
        case 'm':
            o->model = optarg, rc = readable("-m", optarg);
            if (rc == 0) rc = set_key(o, "-m", "model.path", optarg);
            break;
        case 'f': o->text = optarg, rc = readable("-f", optarg); break;
        case 'c':
            if (pi_parse_int(optarg, CTX_MIN, CTX_MAX, &v) != 0) {
                char why[96];
                snprintf(why, sizeof why, "expected an even number of tokens from %d to %d", CTX_MIN, CTX_MAX);
                rc = bad("-c", optarg, why);
            } else if (v % 2) {
                rc = bad("-c", optarg, "odd: the second half of a chunk must start at CTX/2 exactly");
            } else {
                o->ctx = (int)v, o->ctx_given = true;
            }
            break;
        case OPT_CHUNKS:
            if (pi_parse_int(optarg, 1, INT32_MAX, &v) != 0)
                rc = bad("--chunks", optarg, "expected a positive integer");
            else o->chunks = (int)v;
            break;
        case OPT_KL_BASE: o->kl_base = optarg; break;
        case OPT_KL: o->kl = true; break;
        case OPT_SET:
            if ((strncmp(optarg, "tune.", 5) != 0 && strncmp(optarg, "sparsity.", 9) != 0) || !strchr(optarg, '=')) {
                rc = bad("--set", optarg, "expected tune.KEY=VALUE or sparsity.KEY=VALUE (pinfer.conf(5))");
            } else {
                char key[128];
                const char *eq = strchr(optarg, '=');
                if ((size_t)(eq - optarg) >= sizeof key) {
                    rc = bad("--set", optarg, "key too long");
                    break;
                }
                memcpy(key, optarg, (size_t)(eq - optarg));
                key[eq - optarg] = '\0';
                rc = set_key(o, "--set", key, eq + 1);
            }
            break;
        case 'h': usage(stdout); return 1;
        case 'V': printf("pi-perplexity (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 1;
        case ':':
            fprintf(stderr, "pi-perplexity: option %s needs a value (see --help)\n", argv[optind - 1]);
            return -PI_ERR_INVAL;
        case '?':
            fprintf(stderr, "pi-perplexity: unknown option %s (see --help)\n", argv[optind - 1]);
            return -PI_ERR_INVAL;
        default: {
            const int k = c - OPT_KEY_BASE;
            PI_ASSERT(k >= 0 && (size_t)k < PI_ARRAY_LEN(key_opts));
            char what[48];
            snprintf(what, sizeof what, "--%s", key_opts[k].name);
            rc = set_key(o, what, key_opts[k].dotted, optarg);
            break;
        }
        }
    }
    if (rc != 0) return rc;
    if (optind < argc) {
        fprintf(stderr, "pi-perplexity: unexpected argument '%s' (see --help)\n", argv[optind]);
        return -PI_ERR_INVAL;
    }
    if (!o->model) {
        fprintf(stderr, "pi-perplexity: no model: give -m FILE.gguf (see --help)\n");
        return -PI_ERR_INVAL;
    }
    if (o->kl && !o->kl_base) {
        fprintf(stderr,
                "pi-perplexity: --kl-divergence needs --kl-divergence-base FILE (the base run's log-probabilities)\n");
        return -PI_ERR_INVAL;
    }
    if (!o->kl && !o->text) {
        fprintf(stderr, "pi-perplexity: no text: give -f TEXT (see --help)\n");
        return -PI_ERR_INVAL;
    }
    if (o->kl && readable("--kl-divergence-base", o->kl_base) != 0) return -PI_ERR_INVAL;
    char err[512];
    if (pi_config_validate(&o->co.cfg, err, sizeof err) != 0) {
        fprintf(stderr, "pi-perplexity: %s\n", err);
        return -PI_ERR_INVAL;
    }
#ifndef PI_HAVE_CUDA
    if (o->co.cfg.gpu_backend == PI_GPU_CUDA) {
        fprintf(stderr, "pi-perplexity: --gpu-backend cuda: this build has no CUDA (configure found none)\n");
        return -PI_ERR_INVAL;
    }
#endif
    return 0;
}

/* Read the whole of path into a fresh NUL-terminated buffer (*len bytes). */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rbe");
    if (!f) {
        fprintf(stderr, "pi-perplexity: -f %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            if (n > PI_TOKENIZE_MAX_BYTES) break;
            cap = (n + 65536 + 1) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                fprintf(stderr, "pi-perplexity: -f %s: out of memory reading it\n", path);
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err || n > PI_TOKENIZE_MAX_BYTES) {
        if (err) fprintf(stderr, "pi-perplexity: -f %s: read failed\n", path);
        else
            fprintf(stderr, "pi-perplexity: -f %s: larger than the tokenizer's %zu MiB\n", path,
                    PI_TOKENIZE_MAX_BYTES >> 20);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Open the model (packed for the in-process engine, metadata for the pipeline) and its tokenizer. */
static int open_model(struct run *r)
{
    const struct ppl_opts *o = r->o;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = o->co.cfg.gpu_backend != PI_GPU_NONE;
    mo.no_down_build = mo.no_down_t;
    /* the CPU forward pass's dense products (kernels/cpu/rows16.h) */
    mo.rows16 = !mo.no_down_t && o->co.cfg.tune.cpu_pack != PI_TUNE_CPU_PACK_OFF;
    mo.down_t_grouped = !mo.no_down_t && o->co.cfg.tune.down_t == PI_TUNE_DOWN_T_GROUPED;
    char err[512] = "";
    /* the loader logs its failure as well as returning it: the user gets this one line instead */
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (devnull >= 0) pi_log_set_fd(devnull);
    int rc = pi_model_open(o->model, &mo, &r->cm.model, err, sizeof err);
    pi_log_set_fd(2);
    if (devnull >= 0) close(devnull);
    if (rc == 0) pi_model_log_down_t(r->cm.model);
    if (rc != 0) {
        fprintf(stderr, "pi-perplexity: -m %s: cannot load the model: %s\n", o->model, *err ? err : pi_err_str(rc));
        return rc;
    }
    if (r->cm.model->rows16_declined) /* the loader's own warning went to /dev/null with its other lines */
        fprintf(stderr, "pi-perplexity: warning: not enough memory for the 16-row packed weights; the CPU products "
                        "read the file's rows (slower; [tune] cpu_pack = off says so quietly)\n");
    r->cm.tok = pi_tokenizer_new(r->cm.model->gguf, err, sizeof err);
    if (!r->cm.tok) {
        fprintf(stderr, "pi-perplexity: -m %s: no usable tokenizer: %s\n", o->model, err);
        return -PI_ERR_FORMAT;
    }
    r->n_vocab = r->cm.model->hp.n_vocab;
    /* the activation profile, so that the pipeline places the neurons as pi-coordinator does */
    struct pi_coord_opts co = o->co;
    co.cfg.model_path = (char *)o->model;
    if ((rc = pi_coord_sidecar_open(&co, &r->cm, "pi-perplexity")) < 0 ||
        (rc = pi_coord_sparsity_open(&co, &r->cm, "pi-perplexity")) < 0)
        return rc;
    if (pi_tokenizer_n_vocab(r->cm.tok) > r->n_vocab) {
        fprintf(stderr, "pi-perplexity: -m %s: the tokenizer has %d tokens, the embedding %d\n", o->model,
                pi_tokenizer_n_vocab(r->cm.tok), r->n_vocab);
        return -PI_ERR_FORMAT;
    }
    /* does the model add BOS (and not EOS)? as llama-perplexity, which refuses models that add EOS */
    int32_t probe[4];
    size_t np = 0;
    if (pi_tokenize(r->cm.tok, "", 0, true, false, probe, PI_ARRAY_LEN(probe), &np) != 0 || np > 1) {
        fprintf(stderr, "pi-perplexity: -m %s: the model adds EOS to a text: not a model for perplexity\n", o->model);
        return -PI_ERR_UNSUPPORTED;
    }
    r->bos = np == 1 ? probe[0] : -1;
    return 0;
}

/* The text's ids: tokenized from -f, BOS first. */
static int tokenize_text(struct run *r)
{
    size_t len = 0, need = 0;
    char *text = slurp(r->o->text, &len);
    if (!text) return -PI_ERR_INVAL;
    int rc = pi_tokenize(r->cm.tok, text, len, true, false, NULL, 0, &need);
    if (rc == -PI_ERR_RANGE && need > 0) {
        r->tokens = malloc(sizeof(int32_t) * need);
        rc = r->tokens ? pi_tokenize(r->cm.tok, text, len, true, false, r->tokens, need, &r->n_tokens) : -PI_ERR_NOMEM;
    } else if (rc == 0) {
        r->n_tokens = 0;
    }
    free(text);
    if (rc != 0) fprintf(stderr, "pi-perplexity: -f %s: tokenizing failed: %s\n", r->o->text, pi_err_str(rc));
    return rc;
}

/* Chunks from the token count: llama-perplexity needs 2 * CTX tokens and uses every whole chunk. */
static int count_chunks(struct run *r)
{
    const struct ppl_opts *o = r->o;
    if (r->n_tokens < 2 * (size_t)o->ctx) {
        fprintf(
            stderr,
            "pi-perplexity: -f %s: %zu tokens; a context of %d needs at least %d (two chunks), as llama-perplexity\n",
            o->text, r->n_tokens, o->ctx, 2 * o->ctx);
        return -PI_ERR_INVAL;
    }
    r->n_chunk = (int)PI_MIN(r->n_tokens / (size_t)o->ctx, (size_t)INT32_MAX);
    if (o->chunks > 0) r->n_chunk = PI_MIN(r->n_chunk, o->chunks);
    return 0;
}

/* --kl-divergence: the ids, context and chunks come from the base file, checked against the model. */
static int open_base_for_reading(struct run *r, struct pi_kld_header *h)
{
    const struct ppl_opts *o = r->o;
    const pi_gguf_t *g = r->cm.model->gguf;
    if (!(r->bf = fopen(o->kl_base, "rbe"))) {
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: %s\n", o->kl_base, strerror(errno));
        return -PI_ERR_INVAL;
    }
    int32_t *ids = NULL;
    int rc =
        pi_kld_read_header(r->bf, o->kl_base, r->n_vocab, pi_gguf_file_size(g), pi_ppl_model_fingerprint(g), h, &ids);
    if (rc != 0) return rc;
    if (o->ctx_given && (uint32_t)o->ctx != h->n_ctx) {
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: made with -c %u, this run asks for -c %d\n",
                o->kl_base, h->n_ctx, o->ctx);
        free(ids);
        return -PI_ERR_INVAL;
    }
    if (o->chunks > 0 && (uint32_t)o->chunks > h->n_chunk) {
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: holds %u chunks, --chunks asks for %d\n", o->kl_base,
                h->n_chunk, o->chunks);
        free(ids);
        return -PI_ERR_INVAL;
    }
    const size_t n_ids = (size_t)h->n_chunk * h->n_ctx;
    if (o->text) { /* the text given must be the one the base run read */
        if ((rc = tokenize_text(r)) != 0) {
            free(ids);
            return rc;
        }
        if (r->n_tokens < n_ids || memcmp(r->tokens, ids, n_ids * sizeof *ids) != 0) {
            fprintf(stderr, "pi-perplexity: -f %s: not the text the base file %s was made from\n", o->text, o->kl_base);
            free(ids);
            return -PI_ERR_INVAL;
        }
        free(r->tokens);
    }
    r->tokens = ids;
    r->n_tokens = n_ids;
    r->n_chunk = o->chunks > 0 ? o->chunks : (int)h->n_chunk;
    return 0;
}

/* --kl-divergence-base without --kl-divergence: write the header and the ids of the chunks to be run. */
static int open_base_for_writing(struct run *r)
{
    const struct ppl_opts *o = r->o;
    const pi_gguf_t *g = r->cm.model->gguf;
    if (!(r->bf = fopen(o->kl_base, "wbe"))) {
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: %s\n", o->kl_base, strerror(errno));
        return -PI_ERR_INVAL;
    }
    const size_t n_ids = (size_t)r->n_chunk * (size_t)o->ctx;
    struct pi_kld_header h = {.version = PI_KLD_VERSION,
                              .n_vocab = (uint32_t)r->n_vocab,
                              .n_ctx = (uint32_t)o->ctx,
                              .n_chunk = (uint32_t)r->n_chunk,
                              .n_scored = (uint32_t)(o->ctx - 1 - o->ctx / 2),
                              .model_bytes = pi_gguf_file_size(g),
                              .model_hash = pi_ppl_model_fingerprint(g),
                              .tokens_hash = pi_ppl_hash(PI_PPL_HASH_INIT, r->tokens, n_ids * sizeof(int32_t))};
    memcpy(h.magic, PI_KLD_MAGIC, 8);
    return pi_kld_write_header(r->bf, o->kl_base, &h, r->tokens);
}

/* SIGINT/SIGTERM: stop after the chunk in flight, so that a half-written base file is removed and the
 * pipeline's workers are shut down cleanly (a second signal kills at once: SA_RESETHAND). */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig) { interrupted = sig; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Score one position: logits (n_vocab) predict tok. Adds to acc, and to kld (reading the base row) or
 * to the base file (writing it) when there is one. */
static int score(struct run *r, const float *logits, int32_t tok, struct pi_ppl_acc *acc, struct pi_kld_acc *kld)
{
    const int top = pi_log_softmax(logits, r->n_vocab, r->logp);
    pi_ppl_acc_add(acc, -(double)r->logp[tok]);
    if (!r->bf) return 0;
    const size_t nv = (size_t)r->n_vocab;
    if (r->o->kl) {
        if (fread(r->base, sizeof(float), nv, r->bf) != nv) {
            fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: short read\n", r->o->kl_base);
            return -PI_ERR_IO;
        }
        pi_kld_acc_add(kld, r->logp, r->base, r->n_vocab, tok, top);
    } else if (fwrite(r->logp, sizeof(float), nv, r->bf) != nv) {
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: write failed: %s\n", r->o->kl_base, strerror(errno));
        return -PI_ERR_IO;
    }
    return 0;
}

/* Evaluate chunk c (the engine reset first) and score its second half. */
static int run_chunk(struct run *r, int c, int32_t *ids, struct pi_ppl_acc *acc, struct pi_kld_acc *kld)
{
    const int ctx = r->o->ctx, first = ctx / 2, nb = r->e->max_batch;
    const int32_t *chunk = r->tokens + (size_t)c * (size_t)ctx;
    int rc = r->e->ops->reset(r->e);
    if (rc != 0) return rc;
    memcpy(ids, chunk, sizeof(int32_t) * (size_t)ctx);
    if (r->bos >= 0) ids[0] = r->bos;
    for (int pos = 0; pos < ctx; pos += nb) {
        const int n = PI_MIN(nb, ctx - pos);
        const bool scored = pos + n - 1 >= first; /* logits only for batches reaching the second half */
        rc = pi_engine_eval_seq0(r->e, ids + pos, n, pos, scored ? r->logits : NULL, scored ? n : 0);
        if (rc != 0) return rc;
        for (int k = 0; scored && k < n; k++) {
            const int j = pos + k;
            if (j < first || j >= ctx - 1) continue;
            if ((rc = score(r, r->logits + (size_t)k * (size_t)r->n_vocab, chunk[j + 1], acc, kld)) != 0) return rc;
        }
    }
    return 0;
}

/* The sparse execution's lines (issue 16, item 4): the share of FFN weight bytes the predictors or the
 * activation thresholds let the engine skip, per token, over the whole run (dense: 0, exact: a dense run reads every row, the neuron
 * path for single tokens never runs here since chunks go in batches); the recall where it was measured. */
static void print_sparsity(struct run *r)
{
    struct pi_sparse_stats st;
    struct pi_sparse_summary sum = {0};
    if (pi_sparse_stats_init(&st, r->cm.model) == 0) {
        if (pi_engine_sparse_stats(r->e, &st) == 0) pi_sparse_summary(&st, -1, &sum);
        pi_sparse_stats_free(&st);
    }
    double skipped = sum.bytes_total ? (double)sum.bytes_skipped / (double)sum.bytes_total : 0.0;
    printf("FFN sparsity: %.1f%% (FFN weight bytes skipped)\n", 100.0 * skipped);
    if (r->cm.sparsity == PI_SPARSITY_OFF) return;
    if (r->cm.gate_min) { /* activation thresholds: no predictor; the pairs they skipped */
        /* the bytes above are what those pairs save on the neuron-wise decode path; a run of batches,
         * as here, reads every row and zeroes their activations */
        printf("activation thresholds: %.1f%% of FFN (token, neuron) pairs skipped (activations zeroed; rows read in "
               "batches)\n",
               100.0 * sum.sparsity);
        return;
    }
    if (sum.recall_true) printf("predictor recall: %.2f%%\n", 100.0 * sum.recall);
    else printf("predictor recall: not measured (--recall-every N)\n");
}

/* The chunk loop and the report. Returns an exit status. */
static int run_chunks(struct run *r)
{
    const int ctx = r->o->ctx;
    struct pi_ppl_acc acc = {0};
    struct pi_kld_acc kld = {0};
    const int64_t n_scored = (int64_t)r->n_chunk * (ctx - 1 - ctx / 2);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)ctx);
    if (!ids || (r->o->kl && pi_kld_acc_init(&kld, n_scored) != 0)) {
        free(ids);
        fprintf(stderr, "pi-perplexity: out of memory\n");
        return PI_EXIT_FAILURE;
    }
    fprintf(stderr, "perplexity: calculating perplexity over %d chunks, n_ctx=%d, batch_size=%d, %lld scored tokens\n",
            r->n_chunk, ctx, r->e->max_batch, (long long)n_scored);
    if (r->o->kl) pi_kld_print_chunk_header(stdout);
    int status = PI_EXIT_OK;
    for (int c = 0; c < r->n_chunk; c++) {
        if (interrupted) {
            fprintf(stderr, "\npi-perplexity: interrupted by signal %d after %d of %d chunks\n", (int)interrupted, c,
                    r->n_chunk);
            status = PI_EXIT_FAILURE;
            break;
        }
        const double t0 = now_s();
        int rc = run_chunk(r, c, ids, &acc, &kld);
        if (rc != 0) {
            fprintf(stderr, "\npi-perplexity: chunk %d failed: %s\n", c + 1,
                    rc == -PI_ERR_PEER ? "a worker of the pipeline died" : pi_err_str(rc));
            status = PI_EXIT_FAILURE;
            break;
        }
        if (c == 0) {
            const double t = now_s() - t0;
            fprintf(stderr, "perplexity: %.2f seconds per pass - ETA %.2f minutes\n", t, t * r->n_chunk / 60.0);
        }
        if (r->o->kl) {
            pi_kld_print_chunk(stdout, &kld, c + 1);
        } else {
            double err;
            printf("[%d]%.4f,", c + 1, pi_ppl_acc_ppl(&acc, &err));
        }
        fflush(stdout);
    }
    if (status == PI_EXIT_OK) {
        printf("\n");
        double err;
        const double ppl = pi_ppl_acc_ppl(&acc, &err);
        if (r->o->kl) {
            printf("\n");
            pi_kld_print_summary(stdout, &kld);
            printf("\n");
        } else if (err >= 0) {
            printf("Final estimate: PPL = %.4f +/- %.5f\n", ppl, err);
        } else {
            printf("Final estimate: PPL = %.4f (no standard error: the log-probabilities have no spread)\n", ppl);
        }
        print_sparsity(r);
    }
    pi_kld_acc_free(&kld);
    free(ids);
    return status;
}

static int run(struct ppl_opts *o, const char *argv0)
{
    struct run r = {.o = o};
    struct pi_kld_header h;
    int status = EXIT_USAGE;
    if (open_model(&r) != 0) goto out;
    if (o->kl) {
        if (open_base_for_reading(&r, &h) != 0) goto out;
        o->ctx = (int)h.n_ctx;
    } else {
        if (tokenize_text(&r) != 0 || count_chunks(&r) != 0) goto out;
        if (o->kl_base && open_base_for_writing(&r) != 0) goto out;
    }
    fprintf(stderr, "perplexity: %zu tokens, %d chunks of %d\n", r.n_tokens, r.n_chunk, o->ctx);
    if (o->ctx > r.cm.model->hp.n_ctx_train && r.cm.model->hp.n_ctx_train > 0)
        fprintf(stderr, "perplexity: warning: the model was trained on only %d context tokens (-c %d)\n",
                r.cm.model->hp.n_ctx_train, o->ctx);
    status = PI_EXIT_FAILURE;
    o->co.cfg.ctx_len = o->ctx; /* the engine's context is one chunk */
    r.e = pi_coord_engine_new(&o->co, &r.cm, argv0);
    if (!r.e) {
        fprintf(stderr, "pi-perplexity: the %s could not be started (see the errors above)\n",
                o->co.cfg.gpu_backend == PI_GPU_NONE ? "forward pass" : "pipeline");
        goto out;
    }
    fprintf(stderr, "perplexity: %s\n", r.cm.sparsity_line); /* the engine runs: no more usage errors */
    if (r.e->n_vocab != r.n_vocab || r.e->max_batch < 1) {
        fprintf(stderr, "pi-perplexity: the engine has %d logits per token, the model %d\n", r.e->n_vocab, r.n_vocab);
        goto out;
    }
    r.logits = malloc(sizeof(float) * (size_t)r.e->max_batch * (size_t)r.n_vocab);
    r.logp = malloc(sizeof(float) * (size_t)r.n_vocab);
    r.base = malloc(sizeof(float) * (size_t)r.n_vocab);
    if (!r.logits || !r.logp || !r.base) {
        fprintf(stderr, "pi-perplexity: out of memory\n");
        goto out;
    }
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    status = run_chunks(&r);
out:
    pi_engine_destroy(&r.e);
    if (r.bf && fclose(r.bf) != 0 && status == PI_EXIT_OK && !o->kl) {
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: %s\n", o->kl_base, strerror(errno));
        status = PI_EXIT_FAILURE;
    }
    if (r.bf && status != PI_EXIT_OK && !o->kl) unlink(o->kl_base); /* no half-written base file */
    free(r.tokens);
    free(r.logits);
    free(r.logp);
    free(r.base);
    pi_coord_model_close(&r.cm);
    return status;
}

int main(int argc, char **argv)
{
    pi_log_set_program("pi-perplexity");
    struct ppl_opts o = {.ctx = CTX_DEFAULT, .chunks = -1};
    if (pi_config_defaults(&o.co.cfg) != 0) return PI_EXIT_FAILURE;
    char err[256];
    if (pi_config_set(&o.co.cfg, "log.level", "warn", "pi-perplexity", err, sizeof err) != 0) return PI_EXIT_FAILURE;
    o.co.cfg.sparsity.recall_every = 1; /* an evaluation: the recall of every step (--recall-every 0 turns it off) */
    int rc = parse(argc, argv, &o);
    if (rc != 0) {
        pi_config_free(&o.co.cfg);
        return rc > 0 ? PI_EXIT_OK : EXIT_USAGE;
    }
    enum pi_log_level lv;
    if (pi_log_parse_level(o.co.cfg.log_level, &lv) == 0) pi_log_set_level(lv);
    setenv("PI_LOG_LEVEL", o.co.cfg.log_level, 1); /* the workers log at the same level */
    pi_kernels_use(pi_kernels_of_tune(&o.co.cfg.tune));
    int status = run(&o, argv[0]);
    pi_config_free(&o.co.cfg);
    return status;
}
