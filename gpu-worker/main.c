/*
 * gpu-worker/main.c - pi-gpu-worker: started by pi-coordinator with the step, exchange and placement
 * segments inherited as file descriptors; maps the model, packs the hot neurons the placement gives
 * it, builds the backend (host or cuda) over them, registers over the control link and runs the layer
 * loop until told to stop.
 * See pi-gpu-worker(8).
 */
#include "config.h"
#include "compute/partition.h"
#include "compute/placement.h"
#include "compute/backend.h"
#include "ipc/link.h"
#include "kernels/cpu/dispatch.h"
#include "gpu-worker/loop.h"
#include "ipc/control.h"
#include "ipc/shm.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "lib/log.h"
#include "compute/sparse.h"
#include "model/model.h"

#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct gw_opts {
    const char *backend, *model, *control, *activation;
    int step_fd, exchange_fd, placement_fd;
    int64_t threads, ctx, device, n_seq, stall_ms;
    uint64_t vram_budget;
    struct pi_tune tune; /* --set tune.KEY=VALUE: the backend's performance choices (pinfer.conf(5)) */
    const char *sidecar; /* --sidecar: where the trained predictors are, or NULL */
    struct pi_sparsity_conf sparsity; /* --set sparsity.KEY=VALUE: predictors and telemetry (pinfer.conf(5)) */
};

static void usage(FILE *f)
{
    fputs("Usage: pi-gpu-worker --model PATH --step-fd FD --exchange-fd FD --placement-fd FD [OPTION]...\n"
          "The GPU worker of a pinfer pipeline; started by pi-coordinator, not by hand (see pi-gpu-worker(8)).\n"
          "\n"
          "  --backend B          host (plain C) or cuda; default: host\n"
          "  --model PATH         GGUF model file (mapped read-only); required\n"
          "  --activation ACT     FFN activation: auto, silu, relu, drelu; default: auto\n"
          "  --step-fd FD         inherited step segment (memfd); required\n"
          "  --exchange-fd FD     inherited per-layer exchange segment (memfd); required\n"
          "  --placement-fd FD    inherited placement segment (memfd): the hot neurons of every layer; required\n"
          "  --control ENDPOINT   the coordinator's worker endpoint; default: none (no control link)\n"
          "  --threads N          host backend threads; default: 1\n"
          "  --ctx N              positions per sequence; default: the model's\n"
          "  --n-seq N            sequences in the KV cache; default: 1\n"
          "  --device N           CUDA device; default: 0\n"
          "  --vram-budget BYTES  device memory the cuda backend may hold (K/M/G suffixes); default: 0 (free memory)\n"
          "  --stall-ms N         ms the main thread may go without progress before the control link stops\n"
          "                       its heartbeats (500 to 3600000); default: 30000\n"
          "  --set tune.KEY=VAL   a performance choice of the [tune] section of pinfer.conf(5) (repeatable;\n"
          "                       cuda_matvec, cpu_kernels, batch, prompt_stream, cpu_pack);\n"
          "                       default: each key's default there\n"
          "  --sidecar PATH       the model's sidecar, whose trained predictors to use; default: none (the\n"
          "                       model file's predictors)\n"
          "  --set sparsity.KEY=VAL  a key of the [sparsity] section of pinfer.conf(5) (mode: off, safe,\n"
          "                       aggressive, auto; recall_every); default: auto, 0\n"
          "  -h, --help           print this help and exit\n"
          "  -V, --version        print the version and exit\n",
          f);
}

/* Returns 1 to run, 0 to exit successfully, -1 on a usage error. */
static int parse(int argc, char **argv, struct gw_opts *o)
{
    static const struct option lo[] = {
        {"backend", required_argument, NULL, 'b'}, {"model", required_argument, NULL, 'm'},
        {"activation", required_argument, NULL, 'a'}, {"step-fd", required_argument, NULL, 's'},
        {"exchange-fd", required_argument, NULL, 'x'}, {"control", required_argument, NULL, 'c'},
        {"placement-fd", required_argument, NULL, 'P'}, {"threads", required_argument, NULL, 't'},
        {"ctx", required_argument, NULL, 'C'}, {"device", required_argument, NULL, 'd'},
        {"n-seq", required_argument, NULL, 'S'}, {"vram-budget", required_argument, NULL, 'B'},
        {"set", required_argument, NULL, 'T'}, {"stall-ms", required_argument, NULL, 'L'},
        {"sidecar", required_argument, NULL, 'Y'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
    *o = (struct gw_opts){.backend = "host", .activation = "auto", .step_fd = -1, .exchange_fd = -1, .placement_fd = -1, .threads = 1,
                          .n_seq = 1, .stall_ms = PI_LINK_STALL_MS};
    int c, bad = 0;
    while (!bad && (c = getopt_long(argc, argv, "hV", lo, NULL)) != -1) {
        switch (c) {
        case 'b': o->backend = optarg; break;
        case 'm': o->model = optarg; break;
        case 'a': o->activation = optarg; break;
        case 'c': o->control = optarg; break;
        case 'Y': o->sidecar = optarg; break;
        case 's': bad = pi_shm_parse_fd(optarg, &o->step_fd) != 0; break;
        case 'x': bad = pi_shm_parse_fd(optarg, &o->exchange_fd) != 0; break;
        case 'P': bad = pi_shm_parse_fd(optarg, &o->placement_fd) != 0; break;
        case 't': bad = pi_parse_int(optarg, 1, PI_MAX_THREADS, &o->threads) != 0; break;
        case 'C': bad = pi_parse_int(optarg, 0, 1L << 24, &o->ctx) != 0; break;
        case 'd': bad = pi_parse_int(optarg, 0, 64, &o->device) != 0; break;
        case 'S': bad = pi_parse_int(optarg, 1, PI_STEP_MAX_SEQ, &o->n_seq) != 0; break;
        case 'B': bad = pi_parse_bytes(optarg, &o->vram_budget) != 0; break;
        case 'L': bad = pi_parse_int(optarg, PI_LINK_STALL_MS_MIN, PI_LINK_STALL_MS_MAX, &o->stall_ms) != 0; break;
        case 'T': {
            char err[256];
            int src = strncmp(optarg, "sparsity.", 9) == 0 ? pi_sparsity_conf_set(&o->sparsity, optarg, "--set", err, sizeof err)
                                                           : pi_tune_set(&o->tune, optarg, "--set", err, sizeof err);
            if (src != 0) {
                fprintf(stderr, "pi-gpu-worker: %s\n", err);
                return -1;
            }
            break;
        }
        case 'h': usage(stdout); return 0;
        case 'V': printf("pi-gpu-worker (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
        default: bad = 1; break;
        }
        if (bad && c != '?' && c != ':') fprintf(stderr, "pi-gpu-worker: bad value '%s' (see --help)\n", optarg);
    }
    if (bad || optind < argc) { fprintf(stderr, "pi-gpu-worker: bad arguments (see --help)\n"); return -1; }
    if (pi_backend_check(o->backend) != 0) return -1;
    if (!o->model || o->step_fd < 0 || o->exchange_fd < 0 || o->placement_fd < 0) {
        fprintf(stderr, "pi-gpu-worker: --model, --step-fd, --exchange-fd and --placement-fd are required (see --help)\n");
        return -1;
    }
    return 1;
}

/* Bytes of the hot neurons' weights (gate row, up row, down column each) over all layers. */
static uint64_t hot_bytes(const pi_model_t *m, const struct pi_placement *pl) { return pi_placement_bytes(pl, m, -1, 0); }

/* Check that the segments were made for this model. */
static int check_segments(const pi_model_t *m, pi_step_t *step, pi_exchange_t *ex, int64_t n_seq)
{
    if (pi_step_n_seq(step) != (uint64_t)n_seq) { /* the step channel's seq ids index this cache */
        pi_error("the step segment is for %u sequences, --n-seq says %lld", pi_step_n_seq(step), (long long)n_seq);
        return -PI_ERR_INVAL;
    }
    const struct pi_exchange_params *p = pi_exchange_params(ex);
    const struct pi_hparams *hp = &m->hp;
    if (p->n_embd != (uint32_t)hp->n_embd || p->n_ff != (uint32_t)hp->n_ff || p->n_layers != (uint32_t)hp->n_layer ||
        p->max_tokens != pi_step_max_tokens(step) || pi_step_n_vocab(step) != (uint32_t)hp->n_vocab) {
        pi_error("segments do not match the model (exchange n_embd %u n_ff %u layers %u max_tokens %u; step "
                 "max_tokens %u n_vocab %u; model n_embd %d n_ff %d layers %d n_vocab %d)",
                 p->n_embd, p->n_ff, p->n_layers, p->max_tokens, pi_step_max_tokens(step), pi_step_n_vocab(step),
                 hp->n_embd, hp->n_ff, hp->n_layer, hp->n_vocab);
        return -PI_ERR_INVAL;
    }
    return 0;
}

/* The predictors of [sparsity] mode (the coordinator resolved it), logged with their source; or a
 * SwiGLU model's activation thresholds, *gate_all ((n_layer, n_ff), malloc'd) with *gated. */
static int open_predictors(const struct gw_opts *o, const pi_model_t *m, struct pi_predictors *pred, enum pi_sparsity *mode,
                           float **gate_all, bool *gated)
{
    char line[320];
    int rc = pi_sparse_open(m, o->sidecar, o->sparsity.mode, pred, gate_all, mode, line, sizeof line);
    if (rc != 0) pi_error("%s", line);
    else pi_info("%s", line);
    if (*gate_all) {
        /* A SwiGLU model's activation thresholds apply to the CPU workers' neurons (each skips its own,
         * cpu-worker/main.c) and to the hot neurons here (the backend's gate_min, doc/thresholds.md): the
         * host backend's always, the cuda backend's with [tune] cuda_hot_thresholds on. */
        *mode = PI_SPARSITY_OFF;
        *gated = true;
        const bool dev_dense =
            strcmp(o->backend, "cuda") == 0 && o->tune.cuda_hot_thresholds == PI_TUNE_CUDA_HOT_THRESHOLDS_OFF;
        pi_info("activation thresholds: the CPU workers skip their cold neurons under them; the %s backend's hot "
                "ones %s", o->backend, dev_dense ? "stay dense ([tune] cuda_hot_thresholds off)" : "too");
    }
    return rc;
}

/* The hot neurons' thresholds in the order of their ids (pi_backend_opts.gate_min): (*out)[il] (n_hot[il])
 * from gate_all (n_layer, n_ff), in one allocation ((*out)[0] when any, then free(*out)). */
static int hot_thresholds(const pi_model_t *m, const float *gate_all, const int32_t *const *hot, const int64_t *n_hot,
                          float ***out)
{
    int64_t total = 0;
    for (int il = 0; il < m->hp.n_layer; il++) total += n_hot[il];
    float **gm = calloc((size_t)m->hp.n_layer, sizeof *gm), *mem = malloc((size_t)PI_MAX(total, 1) * sizeof *mem);
    if (!gm || !mem) {
        free(gm), free(mem);
        return -PI_ERR_NOMEM;
    }
    for (int il = 0; il < m->hp.n_layer; il++) {
        gm[il] = mem;
        for (int64_t i = 0; i < n_hot[il]; i++) mem[i] = gate_all[(size_t)il * (size_t)m->hp.n_ff + (size_t)hot[il][i]];
        mem += n_hot[il];
    }
    *out = gm;
    return 0;
}

/* Run the layer loop g until stopped, with predictors pred in mode when pred is set, counting the
 * activation thresholds' skipped pairs (the CPU workers' and the backend's) when gated. */
static int serve(const struct gw_opts *o, struct pi_gpu_loop *g, const struct pi_predictors *pred, enum pi_sparsity mode,
                 bool gated)
{
    int rc = pred ? pi_gpu_loop_sparse_init(g, pred, mode, o->sparsity.recall_every, (int)o->threads)
             : gated ? pi_gpu_loop_gated_init(g)
                     : 0;
    if (rc == 0) rc = pi_gpu_loop_stream_init(g, o->tune.prompt_stream);
    if (rc == 0) rc = pi_gpu_loop_run(g);
    pi_gpu_loop_free(g);
    pi_gpu_loop_sparse_free(g);
    if (rc != 0 && g->link) pi_link_error(g->link, rc, "the layer loop failed");
    return rc;
}

static int run(const struct gw_opts *o)
{
    pi_model_t *m = NULL;
    pi_backend_t *be = NULL;
    pi_step_t *step = NULL;
    pi_exchange_t *ex = NULL;
    pi_link_t *link = NULL;
    struct pi_placement *pl = NULL;
    const int32_t **hot = NULL;
    int64_t *n_hot = NULL;
    float **hot_gm = NULL; /* (n_layer) -> (n_hot[il]): the hot neurons' activation thresholds, or NULL */
    struct pi_partition part = {0};
    struct pi_predictors pred = {0};
    enum pi_sparsity mode = PI_SPARSITY_OFF;
    char err[512] = "";
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    int rc = pi_ffn_act_parse(o->activation, &mo.act);
    if (rc != 0 && strcmp(o->activation, "auto") == 0) { mo.act = PI_FFN_ACT_DEFAULT; rc = 0; }
    if (rc != 0) { pi_error("--activation %s: not auto, silu, relu or drelu", o->activation); goto out; }
    /* Transposed down rows: opened without them; only where the backend needs the model's own (host,
     * a layer with every neuron hot) the model is opened again with them. Otherwise the worker packs
     * just its hot neurons' rows below, not a transposed copy of the whole model (pi_backend_hot_rows). */
    mo.no_down_t = true;
    if ((rc = pi_model_open(o->model, &mo, &m, err, sizeof err)) != 0) { pi_error("cannot load model %s: %s", o->model, err); goto out; }
    if ((rc = pi_step_attach(o->step_fd, &step)) != 0) goto out;
    if ((rc = pi_exchange_attach(o->exchange_fd, &ex)) != 0) goto out;
    if ((rc = check_segments(m, step, ex, o->n_seq)) != 0) goto out;
    if ((rc = pi_placement_map_fd(o->placement_fd, m->hp.n_layer, m->hp.n_ff, (int)pi_exchange_params(ex)->n_workers, &pl)) != 0) goto out;
    enum pi_backend_rows rows = pi_backend_hot_rows(o->backend, m, pl);
    if (rows == PI_BACKEND_ROWS_MODEL) {
        pi_model_destroy(&m);
        mo.no_down_t = false;
        if ((rc = pi_model_open(o->model, &mo, &m, err, sizeof err)) != 0) { pi_error("cannot load model %s: %s", o->model, err); goto out; }
    }
    bool gated = false;
    float *gate_all = NULL;
    if ((rc = open_predictors(o, m, &pred, &mode, &gate_all, &gated)) != 0) goto out;
    hot = calloc((size_t)m->hp.n_layer, sizeof *hot);
    n_hot = calloc((size_t)m->hp.n_layer, sizeof *n_hot);
    if (!hot || !n_hot) { rc = -PI_ERR_NOMEM; free(gate_all); goto out; }
    for (int il = 0; il < m->hp.n_layer; il++) hot[il] = pi_placement_hot(pl, il, &n_hot[il]);
    if (gate_all) rc = hot_thresholds(m, gate_all, (const int32_t *const *)hot, n_hot, &hot_gm);
    free(gate_all);
    if (rc != 0) goto out;
    struct pi_backend_opts bo = {.n_threads = (int)o->threads, .n_ctx = (int)o->ctx, .n_seq = (int)o->n_seq,
                                 .max_tokens = (int)pi_step_max_tokens(step), .device = (int)o->device, .vram_budget = o->vram_budget,
                                 .hot = (const int32_t *const *)hot, .n_hot = n_hot, .tune = o->tune,
                                 .pred = mode != PI_SPARSITY_OFF ? &pred : NULL, .sparsity = mode, .thresholds = gated,
                                 .gate_min = (const float *const *)hot_gm};
    uint64_t mem_bytes = hot_bytes(m, pl);
    if (rows == PI_BACKEND_ROWS_PACKED) {
        if ((rc = pi_partition_pack(m, pl, 0, -1, true, false, &part)) != 0) {
            pi_error("packing the %lld hot neurons failed (%s)", (long long)pi_placement_hot_total(pl), pi_err_str(rc));
            goto out;
        }
        bo.hot_layers = part.layers; /* gate and up rows are the mapping's where a layer's ids are a range */
        bo.hot_part = &part;
    }
    /* what pi-ctl status shows: the device bytes for a device backend, else the hot weights */
    uint64_t dev_bytes = 0;
    if (pi_backend_device_bytes(o->backend, m, &bo, &dev_bytes) == 0) mem_bytes = dev_bytes;
    rc = pi_backend_new(o->backend, m, &bo, &be);
    if (strcmp(o->backend, "host") != 0) pi_partition_free(&part); /* uploaded: the device holds them now */
    uint32_t cores[256], n_cores = 0;
    cpu_set_t cs;
    if (sched_getaffinity(0, sizeof cs, &cs) == 0)
        for (int c = 0; c < CPU_SETSIZE && n_cores < 256; c++)
            if (CPU_ISSET(c, &cs)) cores[n_cores++] = (uint32_t)c;
    if (rc == 0 && o->control) {
        struct pi_link_opts lo = {.endpoint = o->control, .role = PI_ROLE_GPU_WORKER, .numa_node = -1, .cores = cores,
                                  .n_cores = n_cores, .stall_ms = (uint32_t)o->stall_ms};
        link = pi_link_start(&lo);
        if (!link) rc = -PI_ERR_IO;
    }
    if (rc == 0) {
        const int64_t total = pi_placement_hot_total(pl);
        if (link) pi_link_ready(link, (uint64_t)total, mem_bytes);
        pi_info("ready: backend %s, %lld hot neurons in %d layers of %d (at most %lld in a layer)", o->backend,
                (long long)total, m->hp.n_layer, m->hp.n_ff, (long long)pi_placement_hot_max(pl));
        struct pi_gpu_loop g = {.be = be, .step = step, .ex = ex, .link = link, .n_seq = (int)o->n_seq,
                                .ex_flags = PI_EXCHANGE_ALL | (m->hp.act == PI_FFN_ACT_SILU ? 0u : PI_EXCHANGE_GATE_SKIP),
                                .hot = (const int32_t *const *)hot, .n_hot = n_hot};
        rc = serve(o, &g, mode != PI_SPARSITY_OFF ? &pred : NULL, mode, gated);
    }
    pi_backend_destroy(&be);
out:
    pi_link_stop(&link);
    pi_exchange_destroy(&ex);
    pi_step_destroy(&step);
    free(hot);
    free(n_hot);
    if (hot_gm) free(hot_gm[0]);
    free(hot_gm);
    pi_partition_free(&part);
    pi_predictors_free(&pred);
    pi_placement_destroy(&pl);
    pi_model_destroy(&m);
    return rc;
}

int main(int argc, char **argv)
{
    pi_log_set_program("pi-gpu-worker");
    struct gw_opts o;
    int p = parse(argc, argv, &o);
    if (p <= 0) return p == 0 ? 0 : 2;
    if (pi_link_die_with_parent() != 0 && o.control) return 3;
    pi_kernels_use(pi_kernels_of_tune(&o.tune)); /* before any kernel and thread */
    return run(&o) == 0 ? 0 : 1;
}
