/*
 * tools/pi-place.c - pi-place: the placement solver from the command line. Reads a model and its
 * activation profile (the sidecar pi-profile writes), solves the placement exactly as pi-coordinator
 * would for the same settings (compute/placement-solve.h), prints the plan (per layer: hot neurons,
 * their share of the layer's activations, each CPU worker's cold neurons) with its modelled time per
 * token, and exports the hot sets as PowerInfer's GPU index file (MODEL.generated.gpuidx by default),
 * which pi-coordinator (--gpu-index) and PowerInfer both read. See pi-place(1).
 */
#include "config.h"
#include "compute/placement-solve.h"
#include "compute/placement.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "lib/log.h"
#include "model/model.h"
#include "model/sidecar.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_USAGE 2

static void usage(FILE *f)
{
    fputs("Usage: pi-place -m MODEL [OPTION]...\n"
          "Choose each layer's hot FFN neurons (GPU) and each CPU worker's cold ones from the model's\n"
          "activation profile, print the plan and its modelled time, and export it as a GPU index file.\n"
          "\n"
          "  -m, --model PATH        GGUF model file; required\n"
          "      --sidecar PATH      the model's activation profile; default: MODEL.pinfer.gguf\n"
          "      --vram-budget BYTES device bytes the GPU worker may hold (K/M/G suffixes); default: 0\n"
          "                          (the bytes the hot fraction would take)\n"
          "      --hot-fraction F    without a budget, the share of each layer's neurons whose bytes the\n"
          "                          solver may spend; default: 0.5\n"
          "      --gpu-backend B     cuda (bytes by the cuda backend's plan) or host (by the weights);\n"
          "                          default: cuda in a build with CUDA, else host\n"
          "      --cpu-workers N     CPU workers sharing the cold neurons; default: 1\n"
          "      --ctx N             positions of the KV cache the plan counts; default: the model's\n"
          "      --set placement.KEY=VALUE\n"
          "                          a [placement] speed of pinfer.conf(5): gpu_gbs, cpu_gbs, exchange_us\n"
          "  -o, --output PATH       where the GPU index goes; default: MODEL.generated.gpuidx\n"
          "      --no-export         print the plan only\n"
          "  -q, --quiet             print the summary only, not the per-layer table\n"
          "  -h, --help              print this help and exit\n"
          "  -V, --version           print the version and exit\n",
          f);
}

struct opts {
    const char *model, *sidecar, *output;
    bool no_export, quiet;
    struct pi_config cfg;
    int64_t workers;
};

static int bad(const char *opt, const char *v, const char *why)
{
    fprintf(stderr, "pi-place: %s '%s': %s\n", opt, v, why);
    return -1;
}

/* 1: run; 0: --help/--version done; -1: usage error (reported). */
static int parse(int argc, char **argv, struct opts *o)
{
    enum { O_SIDECAR = 256, O_BUDGET, O_HOT, O_BACKEND, O_WORKERS, O_CTX, O_SET, O_NOEXPORT };
    static const struct option lo[] = {
        {"model", required_argument, NULL, 'm'}, {"sidecar", required_argument, NULL, O_SIDECAR},
        {"vram-budget", required_argument, NULL, O_BUDGET}, {"hot-fraction", required_argument, NULL, O_HOT},
        {"gpu-backend", required_argument, NULL, O_BACKEND}, {"cpu-workers", required_argument, NULL, O_WORKERS},
        {"ctx", required_argument, NULL, O_CTX}, {"set", required_argument, NULL, O_SET},
        {"output", required_argument, NULL, 'o'}, {"no-export", no_argument, NULL, O_NOEXPORT},
        {"quiet", no_argument, NULL, 'q'}, {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0}};
    char err[512];
    int c;
    o->workers = 1;
#ifdef PI_HAVE_CUDA
    o->cfg.gpu_backend = PI_GPU_CUDA;
#else
    o->cfg.gpu_backend = PI_GPU_HOST;
#endif
    while ((c = getopt_long(argc, argv, "m:o:qhV", lo, NULL)) != -1) {
        const char *key = NULL, *opt = NULL;
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'o': o->output = optarg; break;
        case 'q': o->quiet = true; break;
        case O_SIDECAR: o->sidecar = optarg; break;
        case O_NOEXPORT: o->no_export = true; break;
        case O_BUDGET: key = "gpu.vram_budget", opt = "--vram-budget"; break;
        case O_HOT: key = "gpu.hot_fraction", opt = "--hot-fraction"; break;
        case O_BACKEND: key = "gpu.backend", opt = "--gpu-backend"; break;
        case O_CTX: key = "model.ctx", opt = "--ctx"; break;
        case O_WORKERS:
            if (pi_parse_int(optarg, 1, PI_PLACEMENT_MAX_WORKERS, &o->workers) != 0) return bad("--cpu-workers", optarg, "not 1 to 64");
            break;
        case O_SET: {
            const char *eq = strchr(optarg, '=');
            char k[128];
            if (!eq || strncmp(optarg, "placement.", 10) != 0 || (size_t)(eq - optarg) >= sizeof k)
                return bad("--set", optarg, "expected placement.KEY=VALUE (gpu_gbs, cpu_gbs, exchange_us)");
            snprintf(k, sizeof k, "%.*s", (int)(eq - optarg), optarg);
            if (pi_config_set(&o->cfg, k, eq + 1, "--set", err, sizeof err) != 0) {
                fprintf(stderr, "pi-place: %s\n", err);
                return -1;
            }
            break;
        }
        case 'h': usage(stdout); return 0;
        case 'V': printf("pi-place (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
        default: fprintf(stderr, "pi-place: see --help\n"); return -1;
        }
        if (key) {
            if (pi_config_set(&o->cfg, key, optarg, opt, err, sizeof err) != 0) {
                fprintf(stderr, "pi-place: %s\n", err);
                return -1;
            }
        }
    }
    if (optind < argc) return bad("argument", argv[optind], "unexpected (see --help)");
    if (!o->model) {
        fprintf(stderr, "pi-place: -m MODEL is required (see --help)\n");
        return -1;
    }
    if (o->cfg.gpu_backend == PI_GPU_NONE) return bad("--gpu-backend", "none", "has no GPU to place neurons on");
    return 1;
}

/* The plan, per layer: hot count, hot share of the layer's activations, the workers' cold counts. */
static void print_layers(const struct pi_placement *p, const float *f)
{
    printf("| layer | hot | hot %% | activations on the GPU %% |");
    for (int w = 0; w < p->n_workers; w++) printf(" cpu %d |", w);
    printf("\n|---:|---:|---:|---:|");
    for (int w = 0; w < p->n_workers; w++) printf("---:|");
    printf("\n");
    for (int il = 0; il < p->n_layer; il++) {
        int64_t n;
        const int32_t *h = pi_placement_hot(p, il, &n);
        const float *fl = f + (size_t)il * (size_t)p->n_ff;
        double all = 0, hot = 0;
        for (int i = 0; i < p->n_ff; i++) all += fl[i];
        for (int64_t j = 0; j < n; j++) hot += fl[h[j]];
        printf("| %d | %lld | %.1f | %.1f |", il, (long long)n, 100.0 * (double)n / p->n_ff, all > 0 ? 100.0 * hot / all : 0.0);
        for (int w = 0; w < p->n_workers; w++) {
            int64_t c;
            pi_placement_cold(p, il, w, &c);
            printf(" %lld |", (long long)c);
        }
        printf("\n");
    }
}

static int run(struct opts *o)
{
    char err[512], scpath[4096], out[4096];
    pi_model_t *m = NULL;
    struct pi_sidecar *sc = NULL;
    struct pi_placement *p = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true;
    mo.no_down_build = true; /* the solver counts bytes; it reads no weight */
    int rc = pi_model_open(o->model, &mo, &m, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "pi-place: %s: %s\n", o->model, err);
        return 1;
    }
    if (o->sidecar) snprintf(scpath, sizeof scpath, "%s", o->sidecar);
    else if (pi_sidecar_path(o->model, scpath, sizeof scpath) != 0) {
        fprintf(stderr, "pi-place: %s: path too long\n", o->model);
        rc = -PI_ERR_RANGE;
        goto done;
    }
    rc = pi_sidecar_load(scpath, m, &sc, err, sizeof err);
    if (rc == -PI_ERR_NOTFOUND) {
        fprintf(stderr, "pi-place: %s: no activation profile (run pi-profile -m %s first)\n", scpath, o->model);
        goto done;
    }
    if (rc != 0) {
        fprintf(stderr, "pi-place: %s: %s\n", scpath, err);
        goto done;
    }
    if (!sc->act_freq || m->hp.act == PI_FFN_ACT_SILU) {
        fprintf(stderr, "pi-place: %s: a SwiGLU model computes every neuron: its profile cannot rank them (the rule "
                "without statistics applies)\n", o->model);
        rc = -PI_ERR_FORMAT;
        goto done;
    }
    const int n_ctx = o->cfg.ctx_len > 0 ? (int)o->cfg.ctx_len : pi_model_default_ctx(m);
    struct pi_place_cost cost;
    /* the KV caches of a server with the default [server] slots: the placement serves both modes */
    rc = pi_place_solve_config(&o->cfg, m, sc->act_freq, (int)o->workers, n_ctx, (int)o->cfg.server_slots, 64, NULL, &p, &cost);
    if (rc != 0) {
        fprintf(stderr, "pi-place: no placement fits (%s)\n", pi_err_str(rc));
        goto done;
    }
    printf("model %s, profile %s (%llu tokens)\n", o->model, scpath, (unsigned long long)sc->tokens);
    printf("hot: %lld of %lld neurons (%.1f%% of the activations), %llu device bytes (%s backend, context %d)\n",
           (long long)cost.hot, (long long)m->hp.n_ff * m->hp.n_layer, 100 * cost.hot_freq_share,
           (unsigned long long)cost.device_bytes, o->cfg.gpu_backend == PI_GPU_CUDA ? "cuda" : "host", n_ctx);
    printf("modelled: %.1f us/token (GPU %.1f, CPU %.1f, %d layer exchanges) at %.0f GB/s GPU, %.1f GB/s CPU, %.0f us exchange\n",
           cost.t_us, cost.gpu_us, cost.cpu_us, cost.n_exchanges, cost.speeds.gpu_gbs, cost.speeds.cpu_gbs,
           cost.speeds.exchange_us);
    if (!o->quiet) print_layers(p, sc->act_freq);
    if (!o->no_export) {
        if (o->output) snprintf(out, sizeof out, "%s", o->output);
        else if (snprintf(out, sizeof out, "%s.generated.gpuidx", o->model) >= (int)sizeof out) {
            fprintf(stderr, "pi-place: %s: path too long\n", o->model);
            rc = -PI_ERR_RANGE;
            goto done;
        }
        /* split.vram_capacity in PowerInfer's sense: the bytes of the hot neurons alone, which its loader
         * compares with what its budget leaves after the layers' other weights (not our device total) */
        const uint64_t split = pi_place_weights_bytes(m, p) - pi_place_fixed_bytes(m);
        if ((rc = pi_placement_write_gpuidx(p, out, split)) != 0) goto done;
        printf("wrote %s (hot neurons' weights %llu bytes)\n", out, (unsigned long long)split);
    }
done:
    pi_placement_destroy(&p);
    pi_sidecar_destroy(&sc);
    pi_model_destroy(&m);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    pi_log_set_program("pi-place");
    struct opts o = {0};
    if (pi_config_defaults(&o.cfg) != 0) return 1;
    int p = parse(argc, argv, &o);
    int rc = p < 0 ? EXIT_USAGE : p == 0 ? 0 : run(&o);
    pi_config_free(&o.cfg);
    return rc;
}
