/*
 * cpu-worker/main.c - pi-cpu-worker: one per NUMA node (or as many as `cpu.workers` says). Binds
 * itself to its node's cores, packs its partition of the cold neurons into node-local memory from
 * the mmapped model, registers over the control link, then computes its neurons for every layer the
 * GPU worker publishes on the exchange, into its partial-sum slot. See pi-cpu-worker(8).
 *
 * DESIGN: crash-only. Any error in the loop (a corrupt step, an aborted exchange) ends the process;
 * the coordinator notices (pidfd), fails the request in flight and restarts the pipeline.
 */
#include "config.h"
#include "lib/numa.h"
#include "compute/ffn-policy.h"
#include "compute/partition.h"
#include "compute/placement.h"
#include "compute/sparse.h"
#include "ipc/link.h"
#include "ipc/control.h"
#include "ipc/exchange.h"
#include "ipc/futex.h"
#include "ipc/shm.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "lib/cpus.h"
#include "lib/log.h"
#include "model/model.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CW_IDLE_NS (INT64_C(100) * 1000 * 1000)

struct cw_opts {
    const char *model, *control, *activation, *sidecar;
    struct pi_sparsity_conf sparsity; /* --set sparsity.mode: a SwiGLU model's activation thresholds */
    int exchange_fd, placement_fd;
    int64_t index, workers, threads;
    struct pi_tune tune; /* --set tune.KEY=VALUE: the performance choices (pinfer.conf(5)) */
};

static void usage(FILE *f)
{
    fputs("Usage: pi-cpu-worker --model PATH --exchange-fd FD --placement-fd FD --index I --workers N [OPTION]...\n"
          "A CPU worker of a pinfer pipeline; started by pi-coordinator, not by hand (see pi-cpu-worker(8)).\n"
          "\n"
          "  --model PATH         GGUF model file (mapped read-only); required\n"
          "  --activation ACT     FFN activation: auto, silu, relu, drelu; default: auto\n"
          "  --exchange-fd FD     inherited per-layer exchange segment (memfd); required\n"
          "  --index I            this worker's index, 0..N-1; required\n"
          "  --workers N          CPU workers in the pipeline; required\n"
          "  --placement-fd FD    inherited placement segment (memfd): which neurons of every layer are this worker's; required\n"
          "  --threads N          compute threads; default: the node's cores shared among its workers\n"
          "  --control ENDPOINT   the coordinator's worker endpoint; default: none (no control link)\n"
          "  --set tune.KEY=VAL   a performance choice of the [tune] section of pinfer.conf(5) (repeatable);\n"
          "                       default: each key's default there\n"
          "  --set sparsity.mode=MODE  off, safe or aggressive: with --sidecar, a SwiGLU model's activation\n"
          "                       thresholds of that mode skip this worker's small neurons; default: off\n"
          "  --sidecar PATH       the model's sidecar (its activation thresholds); default: none\n"
          "  -h, --help           print this help and exit\n"
          "  -V, --version        print the version and exit\n",
          f);
}

/* Returns 1 to run, 0 to exit successfully, -1 on a usage error. */
static int parse(int argc, char **argv, struct cw_opts *o)
{
    static const struct option lo[] = {
        {"model", required_argument, NULL, 'm'}, {"activation", required_argument, NULL, 'a'},
        {"exchange-fd", required_argument, NULL, 'x'}, {"index", required_argument, NULL, 'i'},
        {"workers", required_argument, NULL, 'w'}, {"placement-fd", required_argument, NULL, 'P'},
        {"threads", required_argument, NULL, 't'}, {"control", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 'T'}, {"sidecar", required_argument, NULL, 'Y'},
        {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0}};
    *o = (struct cw_opts){.activation = "auto", .exchange_fd = -1, .placement_fd = -1, .index = -1, .workers = 0,
                          .sparsity = {.mode = PI_SPARSITY_CFG_OFF}};
    if (pi_tune_defaults(&o->tune) != 0) {
        fprintf(stderr, "pi-cpu-worker: out of memory\n");
        return -1;
    }
    int c, bad = 0;
    while (!bad && (c = getopt_long(argc, argv, "hV", lo, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'a': o->activation = optarg; break;
        case 'c': o->control = optarg; break;
        case 'Y': o->sidecar = optarg; break;
        case 'x': bad = pi_shm_parse_fd(optarg, &o->exchange_fd) != 0; break;
        case 'i': bad = pi_parse_int(optarg, 0, PI_EXCHANGE_MAX_WORKERS - 1, &o->index) != 0; break;
        case 'w': bad = pi_parse_int(optarg, 1, PI_EXCHANGE_MAX_WORKERS, &o->workers) != 0; break;
        case 'P': bad = pi_shm_parse_fd(optarg, &o->placement_fd) != 0; break;
        case 't': bad = pi_parse_int(optarg, 1, PI_MAX_THREADS, &o->threads) != 0; break;
        case 'T': {
            char err[256];
            int src = strncmp(optarg, "sparsity.", 9) == 0 ? pi_sparsity_conf_set(&o->sparsity, optarg, "--set", err, sizeof err)
                                                           : pi_tune_set(&o->tune, optarg, "--set", err, sizeof err);
            if (src != 0) {
                fprintf(stderr, "pi-cpu-worker: %s\n", err);
                return -1;
            }
            break;
        }
        case 'h': usage(stdout); return 0;
        case 'V': printf("pi-cpu-worker (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
        default: bad = 1; break;
        }
        if (bad && c != '?' && c != ':') fprintf(stderr, "pi-cpu-worker: bad value '%s' (see --help)\n", optarg);
    }
    if (bad || optind < argc) { fprintf(stderr, "pi-cpu-worker: bad arguments (see --help)\n"); return -1; }
    if (!o->model || o->exchange_fd < 0 || o->placement_fd < 0 || o->index < 0 || o->workers < 1 || o->index >= o->workers) {
        fprintf(stderr, "pi-cpu-worker: --model, --exchange-fd, --placement-fd, --index and --workers (index < workers) are required\n");
        return -1;
    }
    return 1;
}

struct cw {
    pi_exchange_t *ex;
    pi_pool_t *pool;
    pi_ffn_work_t *work;
    struct pi_partition part;
    struct pi_sparse_slice *slices; /* (n_layer): the partition's neurons as mask bitmaps (compute/sparse.h) */
    enum pi_ffn_act act;
    int32_t *idx;      /* (count_max): 0..count-1, or the masked subset of one token */
    float *dense_scr;  /* pi_partition_dense_scratch(max_tokens) floats: the dense path's scratch */
    struct pi_ffn_policy policy; /* dense or neuron by neuron, per layer (compute/ffn-policy.h) */
    float **gate_min;  /* (n_layer) -> (count[il]): the packed neurons' activation thresholds, or NULL */
    int64_t n_ff;
    uint32_t w;
    pi_link_t *link;
    uint64_t n_served;  /* layer publishes served, and their token rows (the exit log: what the GPU */
    uint64_t n_rows;    /* worker's prompt streaming left to this worker, tests/integration) */
    uint64_t n_masked1; /* masked one-token steps (decode with predictors), and their time from the */
    int64_t masked1_ns; /* publish seen to the partial written: the exit log's share of the round trip */
};

/* Rows of the partial for one published step. With activation thresholds the step's counts go into
 * the worker's done line (pi_exchange_set_counts) for the GPU worker's telemetry. */
static void compute_step(struct cw *c, const struct pi_exchange_step *st, float *out, int64_t d)
{
    const int il = (int)st->layer;
    const struct pi_layer *L = &c->part.layers[il];
    const int64_t cnt = c->part.count[il];
    uint32_t mask_words = pi_exchange_get_layout(c->ex)->mask_words;
    if (c->gate_min) pi_exchange_set_counts(c->ex, c->w, 0, 0);
    if (cnt == 0) { /* nothing of this layer here: a zero partial */
        memset(out, 0, (size_t)st->n_tokens * (size_t)d * sizeof *out);
        return;
    }
    /* An edges-only slice (SwiGLU) has no down rows for the neuron kernel: per-token masks are then
     * ignored and every neuron computed, which is the exact FFN the masks approximate. */
    if (!(st->flags & PI_EXCHANGE_MASK) || c->part.edges_only) {
        /* Every token over all of this worker's neurons, densely or neuron by neuron as the FFN
         * policy says: the same path for every batch (compute/ffn-policy.h), so each row's partial is
         * a function of the row alone (batch invariance). The FRESH flag needs nothing here. */
        const int64_t n = st->n_tokens;
        int64_t active;
        const float *gm = c->gate_min ? c->gate_min[il] : NULL;
        if (pi_ffn_policy_choose(&c->policy, il, n) == PI_FFN_PATH_DENSE) {
            active = gm ? pi_partition_ffn_dense_gated(c->pool, &c->part, il, c->act, gm, st->x, n, c->dense_scr, out)
                        : pi_partition_ffn_dense(c->pool, &c->part, il, c->act, st->x, n, c->dense_scr, out);
        } else {
            memset(out, 0, (size_t)n * (size_t)d * sizeof *out);
            for (int64_t j = 0; j < cnt; j++) c->idx[j] = (int32_t)j;
            active = pi_ffn_neurons_batch(c->pool, c->work, L, c->act, gm, st->x, n, c->idx, cnt, out);
        }
        if (gm) pi_exchange_set_counts(c->ex, c->w, (uint64_t)active, (uint64_t)(n * cnt));
        return;
    }
    /* Each token's predicted neurons of this slice (compute/sparse.h): neuron by neuron over its own
     * list, or, for a batch that selects many, densely with the others zeroed. The masks decide, not
     * the FFN policy. */
    const struct pi_sparse_slice *sl = &c->slices[il];
    if (pi_sparse_dense(st->mask, st->n_tokens, mask_words, sl, c->n_ff))
        pi_partition_ffn_dense_masked(c->pool, &c->part, il, c->act, st->x, st->n_tokens, st->mask, mask_words, c->dense_scr, out);
    else
        pi_sparse_ffn(c->pool, c->work, L, sl, true, c->act, st->x, st->n_tokens, st->mask, mask_words, c->idx, out, NULL);
}

/* Serve published layers after `seen` until told to stop or the exchange is aborted. */
static int serve(struct cw *c, int64_t d, uint32_t seen)
{
    int rc;
    float *out = pi_exchange_partial(c->ex, c->w);
    for (;;) {
        if (c->link && pi_link_stopping(c->link)) return 0;
        struct pi_exchange_step st;
        rc = pi_exchange_wait_publish(c->ex, seen, PI_FUTEX_SPIN_DEFAULT, CW_IDLE_NS, &st);
        if (rc == -PI_ERR_TIMEOUT) continue;
        if (rc != 0) return rc;
        seen = st.seq;
        const int64_t t0 = pi_clock_ns();
        compute_step(c, &st, out, d);
        if (st.n_tokens == 1 && (st.flags & PI_EXCHANGE_MASK)) c->n_masked1++, c->masked1_ns += pi_clock_ns() - t0;
        c->n_served++;
        c->n_rows += st.n_tokens;
        rc = pi_exchange_post_partial(c->ex, c->w, st.seq);
        if (rc != 0) return rc;
    }
}

/* The activation thresholds of a SwiGLU model's [sparsity] mode into *gate_all ((n_layer, n_ff), NULL
 * when off or not SwiGLU). 0 or a negative pi_err (logged). */
static int open_thresholds(const struct cw_opts *o, const pi_model_t *m, float **gate_all)
{
    *gate_all = NULL;
    if (m->hp.act != PI_FFN_ACT_SILU || o->sparsity.mode == PI_SPARSITY_CFG_OFF) return 0;
    if (o->sparsity.mode == PI_SPARSITY_CFG_AUTO) {
        pi_error("--set sparsity.mode=auto: the coordinator resolves the mode");
        return -PI_ERR_INVAL;
    }
    char err[256] = "";
    int rc = pi_sparse_gate_load(m, o->sidecar, (enum pi_sparsity)(o->sparsity.mode - 1), gate_all, NULL, err, sizeof err);
    if (rc != 0) pi_error("activation thresholds from %s: %s", o->sidecar ? o->sidecar : "(no --sidecar)",
                          rc == -PI_ERR_NOTFOUND ? "none there" : *err ? err : pi_err_str(rc));
    return rc;
}

/* c->gate_min: each packed neuron's threshold, taken from gate_all (n_layer, n_ff). */
static int pack_thresholds(struct cw *c, const pi_model_t *m, const float *gate_all)
{
    int64_t total = 0;
    for (int il = 0; il < m->hp.n_layer; il++) total += c->part.count[il];
    c->gate_min = calloc((size_t)m->hp.n_layer, sizeof *c->gate_min);
    float *mem = malloc((size_t)PI_MAX(total, 1) * sizeof *mem);
    if (!c->gate_min || !mem) {
        free(c->gate_min), free(mem);
        c->gate_min = NULL;
        return -PI_ERR_NOMEM;
    }
    for (int il = 0; il < m->hp.n_layer; il++) {
        c->gate_min[il] = mem;
        for (int64_t j = 0; j < c->part.count[il]; j++) mem[j] = gate_all[(size_t)il * (size_t)m->hp.n_ff + (size_t)c->part.ids[il][j]];
        mem += c->part.count[il];
    }
    return 0;
}

static int run(const struct cw_opts *o)
{
    struct cw c = {.w = (uint32_t)o->index};
    struct pi_placement *pl = NULL;
    struct pi_numa_place place;
    pi_model_t *m = NULL;
    char err[512] = "";
    int rc = pi_numa_place((int)o->index, (int)o->workers, &place);
    if (rc != 0) return rc;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true; /* compute/partition.c transposes only this worker's down columns */
    mo.down_t_grouped = o->tune.down_t == PI_TUNE_DOWN_T_GROUPED; /* ... as grouped rows where it can */
    if (strcmp(o->activation, "auto") != 0 && pi_ffn_act_parse(o->activation, &mo.act) != 0) {
        pi_error("--activation %s: not auto, silu, relu or drelu", o->activation);
        rc = -PI_ERR_INVAL;
        goto out;
    }
    rc = pi_model_open(o->model, &mo, &m, err, sizeof err);
    if (rc != 0) { pi_error("cannot load model %s: %s", o->model, err); goto out; }
    if ((rc = pi_exchange_attach(o->exchange_fd, &c.ex)) != 0) goto out;
    const struct pi_exchange_params *xp = pi_exchange_params(c.ex);
    if (xp->n_embd != (uint32_t)m->hp.n_embd || xp->n_ff != (uint32_t)m->hp.n_ff || xp->n_layers != (uint32_t)m->hp.n_layer ||
        xp->n_workers != (uint32_t)o->workers) {
        pi_error("the exchange segment does not match the model or --workers");
        rc = -PI_ERR_INVAL;
        goto out;
    }
    if ((rc = pi_placement_map_fd(o->placement_fd, m->hp.n_layer, m->hp.n_ff, (int)o->workers, &pl)) != 0) goto out;
    float *gate_all = NULL;
    if ((rc = open_thresholds(o, m, &gate_all)) != 0) goto out;
    /* A SwiGLU slice without thresholds is always computed densely: only its edge neurons need
     * transposed down rows. With thresholds it goes neuron by neuron too (doc/thresholds.md: the
     * memory this costs). */
    rc = pi_partition_pack(m, pl, 1 + (int)o->index, place.node_os, false, m->hp.act == PI_FFN_ACT_SILU && !gate_all, &c.part);
    if (rc == 0 && gate_all) rc = pack_thresholds(&c, m, gate_all);
    if (rc == 0) rc = pi_sparse_slices_new(m->hp.n_layer, m->hp.n_ff, c.part.ids, c.part.count, &c.slices);
    free(gate_all);
    if (rc != 0) goto out;
    int threads = o->threads > 0 ? (int)o->threads : PI_MAX(1, place.n_physical / place.sharing);
    c.act = m->hp.act;
    c.n_ff = m->hp.n_ff;
    c.pool = pi_pool_new(threads);
    /* Spin across the gap between layers only where every thread of the hand-off has a CPU: the
     * threads of this node's workers and the GPU worker's (ipc/futex.h: spinning on a shared CPU
     * delays the other side). Otherwise the pool keeps its own short spin and the wait its reads. */
    const bool spin = pi_cpus_usable() >= threads * PI_MAX(place.sharing, 1) + 1;
    const int64_t spin_ns = spin ? o->tune.worker_spin_us * 1000 : 0;
    if (spin) pi_pool_set_spin_ns(c.pool, spin_ns);
    pi_exchange_set_spin_ns(c.ex, spin_ns);
    c.work = pi_ffn_work_new(m->hp.n_embd, threads);
    c.idx = malloc((size_t)(c.part.count_max ? c.part.count_max : 1) * sizeof *c.idx);
    if (!c.pool || !c.work || !c.idx) { rc = -PI_ERR_NOMEM; goto out; }
    if ((rc = pi_ffn_work_reserve(c.work, (int64_t)xp->max_tokens)) != 0) goto out;
    /* the dense path's products through 16-row packed copies, as the in-process engine's (where they fit) */
    size_t packed16 = 0;
    /* every worker of the machine packs at once, each seeing the same available memory */
    if (o->tune.cpu_pack != PI_TUNE_CPU_PACK_OFF) pi_partition_pack_rows16(&c.part, c.pool, (int)o->workers, &packed16);
    if ((rc = pi_ffn_policy_init(&c.policy, c.act, m->hp.n_layer, true, !c.part.edges_only)) != 0) goto out;
    pi_ffn_policy_set_gate_min(&c.policy, c.gate_min != NULL);
    if (!(c.dense_scr = malloc(pi_partition_dense_scratch(&c.part, (int64_t)xp->max_tokens) * sizeof(float)))) {
        rc = -PI_ERR_NOMEM;
        goto out;
    }
    /* Join the exchange before READY: the GPU worker publishes only once every worker is READY, so
     * no step can fall between the join and the first wait (doc/ipc.md, "Joining"). */
    uint32_t seen;
    int64_t held = 0;
    for (int il = 0; il < m->hp.n_layer; il++) held += c.part.count[il];
    if ((rc = pi_exchange_join(c.ex, c.w, &seen)) != 0) goto out;
    if (o->control) {
        struct pi_link_opts lo = {.endpoint = o->control, .role = PI_ROLE_CPU_WORKER, .index = (uint32_t)o->index,
                                  .numa_node = place.node, .cores = place.cores, .n_cores = place.n_cores};
        if (!(c.link = pi_link_start(&lo))) { rc = -PI_ERR_IO; goto out; }
        pi_link_ready(c.link, (uint64_t)held, c.part.bytes + packed16); /* the memory it holds, copies included */
    }
    int grouped = 0;
    for (int il = 0; il < m->hp.n_layer; il++) grouped += c.part.layers[il].ffn_down_t.gscale != NULL;
    pi_info("worker %lld/%lld: %lld neurons in %d layers of %d (at most %lld in a layer), %zu bytes on node %d "
            "(and %zu in 16-row groups; down rows grouped in %d layers), %d threads, idle spin %s%lld us",
            (long long)o->index, (long long)o->workers, (long long)held, m->hp.n_layer, m->hp.n_ff, (long long)c.part.count_max,
            c.part.bytes, place.node, packed16, grouped, threads, spin ? "" : "off (too few CPUs): ",
            (long long)(spin_ns / 1000));
    rc = serve(&c, m->hp.n_embd, seen);
    pi_info("worker %lld: served %llu layer publishes, %llu token rows", (long long)o->index, (unsigned long long)c.n_served,
            (unsigned long long)c.n_rows);
    if (c.n_masked1)
        pi_info("worker %lld: %llu masked one-token steps, mean %.1f us from the publish seen to the partial written",
                (long long)o->index, (unsigned long long)c.n_masked1, (double)c.masked1_ns / 1e3 / (double)c.n_masked1);
    if (rc != 0 && c.link) pi_link_error(c.link, rc, "the exchange failed");
out:
    pi_link_stop(&c.link);
    free(c.idx);
    free(c.dense_scr);
    if (c.gate_min) free(c.gate_min[0]);
    free(c.gate_min);
    pi_ffn_policy_free(&c.policy);
    pi_placement_destroy(&pl);
    pi_ffn_work_destroy(&c.work);
    pi_pool_destroy(&c.pool);
    pi_partition_free(&c.part);
    pi_sparse_slices_free(&c.slices);
    pi_exchange_destroy(&c.ex);
    pi_model_destroy(&m);
    pi_numa_place_free(&place);
    return rc;
}

int main(int argc, char **argv)
{
    pi_log_set_program("pi-cpu-worker");
    struct cw_opts o;
    int p = parse(argc, argv, &o);
    if (p <= 0) return p == 0 ? 0 : 2;
    if (pi_link_die_with_parent() != 0 && o.control) return 3;
    pi_kernels_use(pi_kernels_of_tune(&o.tune)); /* before any kernel and thread */
    int rc = run(&o);
    if (rc == -PI_ERR_PEER) pi_info("the exchange was aborted: exiting");
    return rc == 0 ? 0 : 1;
}
