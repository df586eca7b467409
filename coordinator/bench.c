/*
 * coordinator/bench.c - pi-bench: main(), its command line and --help (coordinator/bench.h).
 *
 * The interface is llama-bench's, so that pinfer's figures sit beside llama.cpp's: -m (repeatable),
 * -p/-n/-t lists (comma-separated or the option repeated), -r repetitions, -o md|csv|json; every
 * combination of the list options is run. pinfer's placement options are pi-coordinator's
 * (--gpu-backend, --hot-fraction, --vram-budget, --cpu-workers), lists too, each value checked
 * against the configuration table (lib/conf.c) with its own message. The older single-purpose
 * benchmarks are modes that print their own tables: --kernels matvec|matmul, --exchange,
 * --cuda-kernels. Every value is validated before anything runs: a bad one is one line on stderr
 * and exit status 2; a runtime failure (a model that does not load, a worker that dies) is 1.
 */
#include "config.h"
#include "coordinator/bench.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "lib/log.h"
#include "model/model-gen.h"
#include "model/model.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { EXIT_USAGE = 2 };

enum mode { MODE_MODELS = 0, MODE_MATVEC, MODE_MATMUL, MODE_EXCHANGE, MODE_CUDA, MODE_NEURONS, MODE_ATTN };

enum {
    OPT_NO_WARMUP = 256, OPT_SPARSITY, OPT_BW, OPT_CTX, OPT_BACKEND, OPT_HOT, OPT_VRAM, OPT_INDEX, OPT_SET, OPT_WORKERS, OPT_RUN_DIR, OPT_LOG,
    OPT_KERNELS, OPT_EXCHANGE, OPT_CUDA, OPT_ROWS, OPT_COLS, OPT_TYPES, OPT_DOWN_TYPE, OPT_ITERS, OPT_SPIN, OPT_BATCH,
    OPT_EMBD,
};

static long online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? n : 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: pi-bench [OPTION]...\n"
            "Benchmark pinfer through its real engines and print llama-bench's table: prompt processing (ppN)\n"
            "and text generation (tgN) tokens/s, mean and standard deviation over the repetitions.\n"
            "List options take N,N,... or may be repeated; every combination of them is run.\n"
            "\n"
            "Tests:\n"
            "  -m, --model M          a GGUF file, or gen:PRESET[-TYPE][-ACT] for a model with random weights\n"
            "                         written for the run and deleted after it (presets %s;\n"
            "                         TYPE q4_0 (default), q4_1, q5_0, q5_1, q8_0, f16, bf16, f32; ACT silu,\n"
            "                         relu, drelu; default: the file's, silu); repeatable; required\n"
            "  -p, --n-prompt N,...   prompt tokens of a pp test, 0 for none; default: 512\n"
            "  -n, --n-gen N,...      generated tokens of a tg test, 0 for none; default: 128\n"
            "  -r, --repetitions N    runs of each test; default: 5\n"
            "  -t, --threads N,...    CPU threads of every process; default: the online CPUs (%ld)\n"
            "  -o, --output FMT       md, csv or json; default: md\n"
            "      --no-warmup        do not run each test once before timing it; default: warm up\n"
            "      --bw GBPS|auto     add GB/s (weight bytes of a dense decode step x tg tokens/s) and bw %%\n"
            "                         against GBPS, or against this machine's read bandwidth (auto);\n"
            "                         default: off\n"
            "      --ctx N            context length; default: 0, the largest test\n"
            "\n"
            "Placement (as pi-coordinator(1); each engine is started once for all its tests):\n"
            "      --gpu-backend B,...   none (the forward pass inside pi-bench), host or cuda (the pipeline:\n"
            "                            pi-gpu-worker with that backend and the CPU workers); default: host\n"
            "      --hot-fraction F,...  share of each layer's FFN neurons on the GPU worker, 0 to 1;\n"
            "                            default: 0.5\n"
            "      --vram-budget BYTES   device memory budget (K/M/G suffixes), instead of the hot fraction;\n"
            "                            default: 0 (the hot fraction decides)\n"
            "      --gpu-index PATH      PowerInfer GPU index (.gpuidx) naming each layer's hot neurons,\n"
            "                            instead of the hot fraction and the budget; default: none\n"
            "      --cpu-workers N,...   CPU worker processes, 0 for one per NUMA node; default: 0\n"
            "      --sparsity MODE,...   auto, off, safe or aggressive: FFN sparsity through the model's\n"
            "                            predictors, one engine each; adds the realised sparsity and the\n"
            "                            predictor's recall (with --set sparsity.recall_every=N) columns;\n"
            "                            default: auto (safe for a ReLU model with predictors, else off)\n"
            "      --set tune.KEY=VALUE  a performance choice of pinfer.conf(5)'s [tune] section for every\n"
            "                            engine and this process (repeatable); default: the table's\n"
            "      --set sparsity.KEY=VALUE  the same for the [sparsity] section (recall_every)\n"
            "      --run-dir DIR         where the workers' sockets and generated models go;\n"
            "                            default: $XDG_RUNTIME_DIR/pinfer, else /tmp/pinfer-$UID\n"
            "      --log-level LEVEL     error, warn, info or debug; default: warn\n"
            "\n"
            "Other measurements (instead of the tests; markdown tables of their own):\n"
            "      --kernels matvec      pi_matvec weight GB/s per type on 1 and the largest -t threads, against\n"
            "                            the streaming read bandwidth (and the 16-row packed weights where the\n"
            "                            variant has a kernel for them); -r rounds\n"
            "      --kernels matmul      pi_matmul GFLOP/s over -p tokens (default 64) against one dot per\n"
            "                            output (and the 16-row packed weights), one thread; -r rounds\n"
            "      --kernels neurons     pi_ffn_neurons GB/s of rows read (every neuron, a random 10%%, a batch)\n"
            "                            on 1 and the largest -t threads; --types default q4_0; -r rounds\n"
            "      --kernels attention   pi_attn_group ns per position and head over an f16 cache of -p\n"
            "                            positions (default 1024), head_dim 64 and 128, each kernel variant\n"
            "                            this CPU runs, one thread; -r rounds\n"
            "      --exchange            the per-layer exchange round trip between processes (publish, every\n"
            "                            CPU worker's partial, merge): median, p99 and mean microseconds,\n"
            "                            over --cpu-workers (default 1,2) and --n-embd\n"
            "      --cuda-kernels        the CUDA kernels on device 0: copy bandwidth, matvec variants,\n"
            "                            prompt GEMM over -p tokens (default 512), hot FFN, decode attention%s\n"
            "      --rows N              matrix rows of --kernels and --cuda-kernels; default: 11008\n"
            "      --cols N              matrix columns, a multiple of 256; default: 4096\n"
            "      --types T,...         weight types of --kernels; default: every type with a kernel\n"
            "      --down-type T         --kernels neurons' down rows (ffn_down_t): f16 (default, what pinfer\n"
            "                            packs) or a type with a quantiser, e.g. q8_0\n"
            "      --iters N             --exchange round trips (default 5000), --cuda-kernels launches per\n"
            "                            trial (default 50)\n"
            "      --spin N              --exchange pause iterations before sleeping; default: 2000\n"
            "      --batch N             --exchange rows per step; default: 1\n"
            "      --n-embd N,...        --exchange row widths; default: 2048,4096\n"
            "\n"
            "  -h, --help             print this help and exit\n"
            "  -V, --version          print the version and exit\n"
            "\n"
            "Exit status: 0 on success, 1 on a runtime failure, 2 on a usage error. See pi-bench(1).\n",
            pi_model_gen_preset_names(), online_cpus(),
#ifdef PI_HAVE_CUDA
            ""
#else
            "\n                            (not in this build: configure found no CUDA)"
#endif
    );
}

/* One line on stderr about a bad value; returns -PI_ERR_INVAL for the caller to pass up. */
static int bad(const char *opt, const char *value, const char *why)
{
    fprintf(stderr, "pi-bench: %s '%s': %s\n", opt, value, why);
    return -PI_ERR_INVAL;
}

/* Append the comma-separated integers of s, each in [lo, hi], to l. */
static int parse_list(const char *opt, const char *s, int64_t lo, int64_t hi, struct pi_bench_list *l)
{
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", s) >= (int)sizeof buf || !*s) return bad(opt, s, "expected N[,N...]");
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int64_t v;
        if (pi_parse_int(tok, lo, hi, &v) != 0) {
            char why[96];
            snprintf(why, sizeof why, "'%s' is not an integer from %lld to %lld", tok, (long long)lo, (long long)hi);
            return bad(opt, s, why);
        }
        if (l->n == PI_BENCH_MAX_LIST) return bad(opt, s, "too many values (at most 32)");
        l->v[l->n++] = v;
    }
    if (s[strlen(s) - 1] == ',' || strstr(s, ",,") || s[0] == ',') return bad(opt, s, "empty value in the list");
    return 0;
}

/* Check value against configuration key `key` (its bounds and its message) on a scratch config. */
static int check_key(struct pi_config *scratch, const char *opt, const char *key, const char *value)
{
    char err[512];
    if (pi_config_set(scratch, key, value, opt, err, sizeof err) != 0) {
        fprintf(stderr, "pi-bench: %s\n", err);
        return -PI_ERR_INVAL;
    }
    return 0;
}

/* --set tune.KEY=VALUE or sparsity.KEY=VALUE: a key of the configuration table, through its own check;
 * applied to every engine's configuration (bench-model.c) and to b->tune. Other sections have options
 * of their own. */
static int parse_set(struct pi_config *scratch, const char *s, struct pi_bench_opts *b)
{
    char key[128];
    const char *eq = strchr(s, '=');
    if (!eq || (strncmp(s, "tune.", 5) != 0 && strncmp(s, "sparsity.", 9) != 0) || (size_t)(eq - s) >= sizeof key)
        return bad("--set", s, "expected tune.KEY=VALUE or sparsity.KEY=VALUE (pinfer.conf(5))");
    memcpy(key, s, (size_t)(eq - s));
    key[eq - s] = '\0';
    if (check_key(scratch, "--set", key, eq + 1) != 0) return -PI_ERR_INVAL;
    if (b->n_sets == PI_BENCH_MAX_LIST) return bad("--set", s, "too many settings (at most 32)");
    b->sets[b->n_sets++] = s;
    b->tune = scratch->tune;
    return 0;
}

/* --sparsity MODE,...: each through [sparsity] mode's check. */
static int parse_sparsity(struct pi_config *scratch, const char *s, struct pi_bench_list *l)
{
    char buf[256];
    if (snprintf(buf, sizeof buf, "%s", s) >= (int)sizeof buf || !*s) return bad("--sparsity", s, "expected MODE[,MODE...]");
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (check_key(scratch, "--sparsity", "sparsity.mode", tok) != 0) return -PI_ERR_INVAL;
        if (l->n == PI_BENCH_MAX_LIST) return bad("--sparsity", s, "too many values (at most 32)");
        l->v[l->n++] = scratch->sparsity.mode;
    }
    return 0;
}

/* --hot-fraction F,...: each through [gpu] hot_fraction's check. */
static int parse_hot(struct pi_config *scratch, const char *s, struct pi_bench_dlist *l)
{
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", s) >= (int)sizeof buf || !*s || s[strlen(s) - 1] == ',' || strstr(s, ",,") ||
        s[0] == ',')
        return bad("--hot-fraction", s, "expected F[,F...]");
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (check_key(scratch, "--hot-fraction", "gpu.hot_fraction", tok) != 0) return -PI_ERR_INVAL;
        if (l->n == PI_BENCH_MAX_LIST) return bad("--hot-fraction", s, "too many values (at most 32)");
        l->v[l->n++] = scratch->hot_fraction;
    }
    return 0;
}

/* --gpu-backend B,...: none, host or cuda; cuda only in a build with CUDA. */
static int parse_backends(struct pi_config *scratch, const char *s, struct pi_bench_opts *b)
{
    char buf[256];
    if (snprintf(buf, sizeof buf, "%s", s) >= (int)sizeof buf || !*s || s[strlen(s) - 1] == ',' || strstr(s, ",,") ||
        s[0] == ',')
        return bad("--gpu-backend", s, "expected none, host or cuda, or a list of them");
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (check_key(scratch, "--gpu-backend", "gpu.backend", tok) != 0) return -PI_ERR_INVAL;
        if (b->n_backends == 3) return bad("--gpu-backend", s, "at most three backends");
        b->backends[b->n_backends++] = scratch->gpu_backend;
    }
    return 0;
}

/* --types T,...: types with a CPU kernel. */
static int parse_types(const char *s, struct pi_bench_opts *b)
{
    char buf[512];
    if (snprintf(buf, sizeof buf, "%s", s) >= (int)sizeof buf || !*s) return bad("--types", s, "expected T[,T...]");
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        enum pi_type t;
        if (!pi_type_from_name(tok, &t) || !pi_kernel_supported(t)) {
            char why[96];
            snprintf(why, sizeof why, "no kernel for type '%s'", tok);
            return bad("--types", s, why);
        }
        if (b->n_types == PI_TYPE_COUNT) return bad("--types", s, "too many types");
        b->types[b->n_types++] = t;
    }
    return 0;
}

/* --down-type T: a type the synthetic down rows can be quantised to (and added with pi_vec_mad). */
static int parse_down_type(const char *s, struct pi_bench_opts *b)
{
    enum pi_type t;
    if (!pi_type_from_name(s, &t) || !pi_quantize_supported(t) || !pi_kernel_supported(t))
        return bad("--down-type", s, "expected a type with a quantiser (f16, q8_0, q4_0, ...)");
    b->down_type = t;
    return 0;
}

static int parse_one(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    if (pi_parse_int(s, lo, hi, out) == 0) return 0;
    char why[96];
    snprintf(why, sizeof why, "expected an integer from %lld to %lld", (long long)lo, (long long)hi);
    return bad(opt, s, why);
}

/* -m M: a readable file or a valid gen: spec, appended to b's models. */
static int add_model(const char *m, struct pi_bench_opts *b)
{
    if (b->n_models == PI_BENCH_MAX_LIST) return bad("-m", m, "at most 32 models");
    if (strncmp(m, "gen:", 4) == 0) {
        struct pi_model_gen mg;
        char err[256];
        if (pi_bench_gen_parse(m, &mg, err, sizeof err) != 0) {
            fprintf(stderr, "pi-bench: -m %s\n", err);
            return -PI_ERR_INVAL;
        }
    } else if (access(m, R_OK) != 0) {
        return bad("-m", m, strerror(errno));
    }
    b->models[b->n_models++] = m;
    return 0;
}

/* What the command line asked for, beyond the options struct: which options were given. */
struct given {
    bool sparsity;
    bool p, n, r, t, o, workers, hot, backend, vram, index, bw, ctx, warm, models;
    bool rows, cols, types, down_type, iters, spin, batch, embd;
};

static int parse(int argc, char **argv, struct pi_bench_opts *b, enum mode *mode, struct given *g)
{
    static const struct option lo[] = {
        {"model", required_argument, NULL, 'm'}, {"n-prompt", required_argument, NULL, 'p'},
        {"n-gen", required_argument, NULL, 'n'}, {"repetitions", required_argument, NULL, 'r'},
        {"threads", required_argument, NULL, 't'}, {"output", required_argument, NULL, 'o'},
        {"no-warmup", no_argument, NULL, OPT_NO_WARMUP}, {"bw", required_argument, NULL, OPT_BW},
        {"ctx", required_argument, NULL, OPT_CTX}, {"gpu-backend", required_argument, NULL, OPT_BACKEND},
        {"hot-fraction", required_argument, NULL, OPT_HOT}, {"vram-budget", required_argument, NULL, OPT_VRAM},
        {"gpu-index", required_argument, NULL, OPT_INDEX}, {"set", required_argument, NULL, OPT_SET},
        {"sparsity", required_argument, NULL, OPT_SPARSITY},
        {"cpu-workers", required_argument, NULL, OPT_WORKERS}, {"run-dir", required_argument, NULL, OPT_RUN_DIR},
        {"log-level", required_argument, NULL, OPT_LOG}, {"kernels", required_argument, NULL, OPT_KERNELS},
        {"exchange", no_argument, NULL, OPT_EXCHANGE}, {"cuda-kernels", no_argument, NULL, OPT_CUDA},
        {"rows", required_argument, NULL, OPT_ROWS}, {"cols", required_argument, NULL, OPT_COLS},
        {"types", required_argument, NULL, OPT_TYPES}, {"down-type", required_argument, NULL, OPT_DOWN_TYPE},
        {"iters", required_argument, NULL, OPT_ITERS},
        {"spin", required_argument, NULL, OPT_SPIN}, {"batch", required_argument, NULL, OPT_BATCH},
        {"n-embd", required_argument, NULL, OPT_EMBD}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0},
    };
    struct pi_config scratch;
    if (pi_config_defaults(&scratch) != 0) return -PI_ERR_NOMEM;
    int c, rc = 0, n_modes = 0;
    int64_t v = 0;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":m:p:n:r:t:o:hV", lo, NULL)) != -1) {
        switch (c) {
        case 'm': g->models = true, rc = add_model(optarg, b); break;
        case 'p': g->p = true, rc = parse_list("-p", optarg, 0, 1 << 20, &b->n_prompt); break;
        case 'n': g->n = true, rc = parse_list("-n", optarg, 0, 1 << 20, &b->n_gen); break;
        case 't': g->t = true, rc = parse_list("-t", optarg, 1, PI_MAX_THREADS, &b->threads); break;
        case 'r':
            g->r = true;
            if ((rc = parse_one("-r", optarg, 1, 100000, &v)) == 0) b->reps = (int)v;
            break;
        case 'o':
            g->o = true;
            if (strcmp(optarg, "md") == 0) b->format = PI_BENCH_MD;
            else if (strcmp(optarg, "csv") == 0) b->format = PI_BENCH_CSV;
            else if (strcmp(optarg, "json") == 0) b->format = PI_BENCH_JSON;
            else rc = bad("-o", optarg, "expected md, csv or json");
            break;
        case OPT_NO_WARMUP: g->warm = true, b->warmup = false; break;
        case OPT_BW:
            g->bw = true;
            if (strcmp(optarg, "auto") == 0) { b->bw_gbs = -1.0; break; }
            char *end;
            errno = 0;
            b->bw_gbs = strtod(optarg, &end);
            if (end == optarg || *end || errno || !(b->bw_gbs > 0 && b->bw_gbs < 1e6))
                rc = bad("--bw", optarg, "expected auto or GB/s, a number above 0");
            break;
        case OPT_CTX: g->ctx = true, rc = check_key(&scratch, "--ctx", "model.ctx", optarg), b->ctx = scratch.ctx_len; break;
        case OPT_BACKEND: g->backend = true, rc = parse_backends(&scratch, optarg, b); break;
        case OPT_HOT: g->hot = true, rc = parse_hot(&scratch, optarg, &b->hot_fraction); break;
        case OPT_VRAM:
            g->vram = true, rc = check_key(&scratch, "--vram-budget", "gpu.vram_budget", optarg);
            b->vram_budget = scratch.vram_budget;
            break;
        case OPT_INDEX:
            g->index = true;
            if (access(optarg, R_OK) != 0) rc = bad("--gpu-index", optarg, strerror(errno));
            b->gpu_index = optarg;
            break;
        case OPT_SET: rc = parse_set(&scratch, optarg, b); break;
        case OPT_SPARSITY: g->sparsity = b->sparsity_given = true, rc = parse_sparsity(&scratch, optarg, &b->sparsity); break;
        case OPT_WORKERS: g->workers = true, rc = parse_list("--cpu-workers", optarg, 0, 64, &b->cpu_workers); break;
        case OPT_RUN_DIR: rc = check_key(&scratch, "--run-dir", "run.dir", optarg), b->run_dir = optarg; break;
        case OPT_LOG: rc = check_key(&scratch, "--log-level", "log.level", optarg), b->log_level = optarg; break;
        case OPT_KERNELS:
            n_modes++;
            if (strcmp(optarg, "matvec") == 0) *mode = MODE_MATVEC;
            else if (strcmp(optarg, "matmul") == 0) *mode = MODE_MATMUL;
            else if (strcmp(optarg, "neurons") == 0) *mode = MODE_NEURONS;
            else if (strcmp(optarg, "attention") == 0) *mode = MODE_ATTN;
            else rc = bad("--kernels", optarg, "expected matvec, matmul, neurons or attention");
            break;
        case OPT_EXCHANGE: n_modes++, *mode = MODE_EXCHANGE; break;
        case OPT_CUDA: n_modes++, *mode = MODE_CUDA; break;
        case OPT_ROWS: g->rows = true, rc = parse_one("--rows", optarg, 1, 1 << 20, &b->rows); break;
        case OPT_COLS:
            g->cols = true, rc = parse_one("--cols", optarg, 256, 1 << 20, &b->cols);
            if (rc == 0 && b->cols % 256) rc = bad("--cols", optarg, "not a multiple of 256");
            break;
        case OPT_TYPES: g->types = true, rc = parse_types(optarg, b); break;
        case OPT_DOWN_TYPE: g->down_type = true, rc = parse_down_type(optarg, b); break;
        case OPT_ITERS: g->iters = true, rc = parse_one("--iters", optarg, 1, 100000000, &b->iters); break;
        case OPT_SPIN: g->spin = true, rc = parse_one("--spin", optarg, 0, 100000000, &b->spin); break;
        case OPT_BATCH: g->batch = true, rc = parse_one("--batch", optarg, 1, 4096, &b->batch); break;
        case OPT_EMBD: g->embd = true, rc = parse_list("--n-embd", optarg, 1, 1 << 20, &b->n_embd); break;
        case 'h': usage(stdout); rc = 1; break;
        case 'V': printf("pi-bench (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); rc = 1; break;
        case ':': fprintf(stderr, "pi-bench: option %s needs a value (see --help)\n", argv[optind - 1]); rc = -PI_ERR_INVAL; break;
        default: fprintf(stderr, "pi-bench: unknown option %s (see --help)\n", argv[optind - 1]); rc = -PI_ERR_INVAL; break;
        }
    }
    pi_config_free(&scratch);
    if (rc != 0) return rc;
    if (optind < argc) {
        fprintf(stderr, "pi-bench: unexpected argument '%s' (models are given with -m; see --help)\n", argv[optind]);
        return -PI_ERR_INVAL;
    }
    if (n_modes > 1) {
        fprintf(stderr, "pi-bench: give at most one of --kernels, --exchange, --cuda-kernels\n");
        return -PI_ERR_INVAL;
    }
    return 0;
}

/* Options that belong to another mode than the one chosen: one line naming the first. */
static int check_mode(enum mode mode, const struct given *g)
{
    struct rule {
        bool given;
        const char *opt;
        unsigned modes; /* bit per enum mode */
    };
#define M(x) (1u << (x))
    const struct rule rules[] = {
        {g->models, "-m", M(MODE_MODELS)},
        {g->n, "-n", M(MODE_MODELS)},
        {g->p, "-p", M(MODE_MODELS) | M(MODE_MATMUL) | M(MODE_CUDA) | M(MODE_ATTN)},
        {g->r, "-r", M(MODE_MODELS) | M(MODE_MATVEC) | M(MODE_MATMUL) | M(MODE_NEURONS) | M(MODE_ATTN)},
        {g->t, "-t", M(MODE_MODELS) | M(MODE_MATVEC) | M(MODE_NEURONS)},
        {g->o, "-o", M(MODE_MODELS)},
        {g->warm, "--no-warmup", M(MODE_MODELS)},
        {g->bw, "--bw", M(MODE_MODELS)},
        {g->ctx, "--ctx", M(MODE_MODELS)},
        {g->backend, "--gpu-backend", M(MODE_MODELS)},
        {g->hot, "--hot-fraction", M(MODE_MODELS)},
        {g->vram, "--vram-budget", M(MODE_MODELS)},
        {g->index, "--gpu-index", M(MODE_MODELS)},
        {g->sparsity, "--sparsity", M(MODE_MODELS)},
        {g->workers, "--cpu-workers", M(MODE_MODELS) | M(MODE_EXCHANGE)},
        {g->rows, "--rows", M(MODE_MATVEC) | M(MODE_MATMUL) | M(MODE_CUDA) | M(MODE_NEURONS)},
        {g->cols, "--cols", M(MODE_MATVEC) | M(MODE_MATMUL) | M(MODE_CUDA) | M(MODE_NEURONS)},
        {g->types, "--types", M(MODE_MATVEC) | M(MODE_MATMUL) | M(MODE_NEURONS)},
        {g->down_type, "--down-type", M(MODE_NEURONS)},
        {g->iters, "--iters", M(MODE_EXCHANGE) | M(MODE_CUDA)},
        {g->spin, "--spin", M(MODE_EXCHANGE)},
        {g->batch, "--batch", M(MODE_EXCHANGE)},
        {g->embd, "--n-embd", M(MODE_EXCHANGE)},
    };
    static const char *const names[] = {"the model tests", "--kernels matvec", "--kernels matmul", "--exchange",
                                        "--cuda-kernels", "--kernels neurons", "--kernels attention"};
    for (size_t i = 0; i < PI_ARRAY_LEN(rules); i++) {
        if (!rules[i].given || (rules[i].modes & M(mode))) continue;
        fprintf(stderr, "pi-bench: %s does not apply to %s (see --help)\n", rules[i].opt, names[mode]);
        return -PI_ERR_INVAL;
    }
#undef M
    if (mode == MODE_MODELS && !g->models) {
        fprintf(stderr, "pi-bench: no model: give -m FILE.gguf or -m gen:PRESET (see --help)\n");
        return -PI_ERR_INVAL;
    }
    return 0;
}

/* The model tests' lists against each other: at least one test, and a context that holds them. */
static int check_tests(const struct pi_bench_opts *b)
{
    int64_t most = 0;
    for (int i = 0; i < b->n_prompt.n; i++) most = PI_MAX(most, b->n_prompt.v[i]);
    for (int i = 0; i < b->n_gen.n; i++) most = PI_MAX(most, b->n_gen.v[i]);
    if (most == 0) {
        fprintf(stderr, "pi-bench: -p and -n are all 0: no test to run\n");
        return -PI_ERR_INVAL;
    }
    if (b->ctx && b->ctx < most) {
        fprintf(stderr, "pi-bench: --ctx %lld is smaller than the largest test (%lld tokens)\n", (long long)b->ctx,
                (long long)most);
        return -PI_ERR_INVAL;
    }
    return 0;
}

/* Defaults of the lists and numbers not given, which depend on the mode. */
static void defaults(enum mode mode, struct pi_bench_opts *b)
{
    if (!b->n_prompt.n) b->n_prompt.v[b->n_prompt.n++] = mode == MODE_MATMUL ? 64 : mode == MODE_ATTN ? 1024 : 512;
    if (!b->n_gen.n) b->n_gen.v[b->n_gen.n++] = 128;
    if (!b->threads.n) b->threads.v[b->threads.n++] = online_cpus();
    if (!b->n_backends) b->backends[b->n_backends++] = PI_GPU_HOST;
    if (!b->hot_fraction.n) b->hot_fraction.v[b->hot_fraction.n++] = 0.5;
    if (!b->sparsity.n) b->sparsity.v[b->sparsity.n++] = PI_SPARSITY_CFG_AUTO;
    if (!b->cpu_workers.n) {
        b->cpu_workers.v[b->cpu_workers.n++] = mode == MODE_EXCHANGE ? 1 : 0;
        if (mode == MODE_EXCHANGE) b->cpu_workers.v[b->cpu_workers.n++] = 2;
    }
    if (!b->n_embd.n) b->n_embd.v[b->n_embd.n++] = 2048, b->n_embd.v[b->n_embd.n++] = 4096;
    if (!b->iters) b->iters = mode == MODE_CUDA ? 50 : 5000;
}

int main(int argc, char **argv)
{
    pi_log_set_program("pi-bench");
    struct pi_bench_opts b = {.reps = 5, .warmup = true, .log_level = "warn", .rows = 11008, .cols = 4096,
                              .down_type = PI_TYPE_F16, .spin = 2000, .batch = 1};
    struct given g = {0};
    enum mode mode = MODE_MODELS;
    int rc = parse(argc, argv, &b, &mode, &g);
    if (rc > 0) return 0; /* --help, --version */
    if (rc < 0 || check_mode(mode, &g) != 0) return EXIT_USAGE;
    defaults(mode, &b);
    if (mode == MODE_MODELS && check_tests(&b) != 0) return EXIT_USAGE;
#ifndef PI_HAVE_CUDA
    for (int i = 0; i < b.n_backends; i++)
        if (b.backends[i] == PI_GPU_CUDA) {
            fprintf(stderr, "pi-bench: --gpu-backend cuda: this build has no CUDA (configure found none)\n");
            return EXIT_USAGE;
        }
#endif
    enum pi_log_level lv;
    if (pi_log_parse_level(b.log_level, &lv) != 0) return EXIT_USAGE; /* checked by parse() */
    pi_log_set_level(lv);
    setenv("PI_LOG_LEVEL", b.log_level, 1); /* the workers log at the same level */
    pi_kernels_use(pi_kernels_of_tune(&b.tune)); /* this process's kernels (--set tune.cpu_kernels) */
    switch (mode) {
    case MODE_MODELS: return pi_bench_models(&b);
    case MODE_MATVEC: return pi_bench_kernels_matvec(&b);
    case MODE_MATMUL: return pi_bench_kernels_matmul(&b);
    case MODE_NEURONS: return pi_bench_kernels_neurons(&b);
    case MODE_ATTN: return pi_bench_kernels_attention(&b);
    case MODE_EXCHANGE: return pi_bench_exchange(&b);
    case MODE_CUDA:
#ifdef PI_HAVE_CUDA
        return pi_bench_cuda(&b);
#else
        fprintf(stderr, "pi-bench: --cuda-kernels: this build has no CUDA (configure found none)\n");
        return EXIT_USAGE;
#endif
    }
    return EXIT_USAGE;
}
