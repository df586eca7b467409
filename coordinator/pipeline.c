/*
 * coordinator/pipeline.c - the process pipeline engine (coordinator/pipeline.h).
 *
 * DESIGN: the coordinator creates the two shared segments (the step channel to the GPU worker and the
 * per-layer exchange between the GPU and CPU workers), clears close-on-exec on their fds, and spawns
 * pi-gpu-worker and the CPU workers with the fd numbers on their command lines; each maps the model
 * file itself, read-only. The supervisor (coordinator/supervisor.h) reports a death from its thread:
 * we then abort both segments, so that the step in flight (waiting in pi_step_eval or pi_step_call)
 * and the workers (waiting on the exchange) return at once with -PI_ERR_PEER, and mark the pipeline
 * broken. The next reset restarts it as a whole (every sequence starts again empty); any other step
 * (an eval or a truncate of any sequence) fails with -PI_ERR_PEER until then, since the cache of every
 * sequence died with the workers. A restart stops every worker, drops the segments and makes them
 * anew, and spawns the workers again, so no state of the failed run (a half-published layer, a
 * partial sum, a KV cache missing positions) can leak into the next request.
 *
 * Placement: the coordinator builds the placement map once (compute/placement.h: which neurons of
 * every layer the GPU worker and each CPU worker hold), puts its wire form in a sealed memfd segment
 * that lives as long as the engine, and hands that fd to every worker it spawns, on every restart.
 */
#include "config.h"
#include "coordinator/pipeline.h"
#include "compute/placement.h"
#include "compute/stream-policy.h"
#include "coordinator/supervisor.h"
#include "ipc/step.h"
#include "ipc/control.h"
#include "ipc/exchange.h"
#include "ipc/shm.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <hwloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(PI_TUNE_BATCH_MAX == PI_STEP_MAX_TOKENS, "[tune] batch is bounded by the step segment's rows");
#define PIPE_READY_MS 60000
#define PIPE_STEP_TIMEOUT_NS (INT64_C(600) * 1000 * 1000 * 1000)

struct pipe_engine {
    struct pi_engine base;
    const struct pi_coord_opts *o;
    const pi_model_t *m;
    char rundir[PATH_MAX];
    char worker_ep[PATH_MAX + 16];
    char gpu_exe[PATH_MAX], cpu_exe[PATH_MAX];
    pi_super_t *sup;
    pthread_mutex_t mu;        /* guards ex and step against the supervisor thread's on_death */
    pi_exchange_t *ex;
    pi_step_t *step;
    int n_cpu;
    struct pi_placement *pl;   /* the placement map, made once */
    pi_shm_t *pl_shm;          /* its wire form, inherited by every worker */
    _Atomic int broken;        /* a worker died: restart at the next reset */
    _Atomic int cancelled;     /* pi_engine_pipeline_cancel was called: a failed step is no death */
    uint64_t restarts;
    /* sparse execution: the resolved mode the GPU worker runs, and the counts of every step it answered
     * (read from the exchange's stats section; guarded by mu, which pi-ctl status's thread takes too) */
    enum pi_sparsity sparsity;
    char pred_sidecar[4096];   /* the sidecar the predictors or thresholds came from ("" : the model file's) */
    bool gated;                /* a SwiGLU model's activation thresholds: the CPU workers apply them */
    struct pi_sparse_stats sparse;
    bool sparse_bad_logged;
    int64_t *next;             /* (n_seq): pi_step_batch_check's scratch */
};

/* Find a worker program: $PI_WORKER_DIR, the build tree beside this program, the install dir. */
static int find_exe(const char *name, const char *subdir, char *out, size_t len)
{
    char self[PATH_MAX];
    const char *env = getenv("PI_WORKER_DIR");
    if (env && *env) {
        snprintf(out, len, "%s/%s", env, name);
        return access(out, X_OK) == 0 ? 0 : -PI_ERR_NOTFOUND;
    }
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) *slash = '\0';
        int w = snprintf(out, len, "%s/../%s/%s", self, subdir, name);
        if (w > 0 && (size_t)w < len && access(out, X_OK) == 0) return 0;
        w = snprintf(out, len, "%s/%s", self, name);
        if (w > 0 && (size_t)w < len && access(out, X_OK) == 0) return 0;
    }
    snprintf(out, len, "%s/%s", PI_SBINDIR, name);
    if (access(out, X_OK) == 0) return 0;
    pi_error("cannot find %s (looked beside pi-coordinator, in the build tree and in %s; set PI_WORKER_DIR)", name, PI_SBINDIR);
    return -PI_ERR_NOTFOUND;
}

static void on_death(void *ctx, int slot)
{
    struct pipe_engine *p = ctx;
    (void)slot;
    atomic_store(&p->broken, 1);
    pthread_mutex_lock(&p->mu);
    if (p->ex) pi_exchange_abort(p->ex, PI_ERR_PEER);
    if (p->step) pi_step_abort(p->step);
    pthread_mutex_unlock(&p->mu);
}

/* Stop the workers and drop the segments. */
static void pipe_stop(struct pipe_engine *p)
{
    if (p->step && !atomic_load(&p->broken)) pi_step_call(p->step, PI_STEP_STOP, 0, 0, INT64_C(1000000000));
    pi_super_stop_all(p->sup, 2000);
    pthread_mutex_lock(&p->mu);
    pi_exchange_destroy(&p->ex);
    pi_step_destroy(&p->step);
    pthread_mutex_unlock(&p->mu);
}

/* argv of a worker: fills a[] from the strings in buf. ARGV_MAX holds the longest worker command line
 * with room: the GPU worker's, 23 fixed arguments, --vram-budget and --sidecar when set, and one --set
 * per [tune] key (8 today: 33 in all; the CPU worker's is at most 16 and the keys). */
#define ARGV_MAX 48
struct argv_buf {
    char *a[ARGV_MAX];
    char s[ARGV_MAX][PATH_MAX + 32];
    int n;
};

static void arg(struct argv_buf *b, const char *prefix, const char *v)
{
    PI_ASSERT(b->n < ARGV_MAX - 1);
    int w = snprintf(b->s[b->n], sizeof b->s[b->n], "%s%s", prefix, v);
    PI_ASSERT(w >= 0 && (size_t)w < sizeof b->s[b->n]);
    b->a[b->n] = b->s[b->n];
    b->a[++b->n] = NULL;
}

static void argl(struct argv_buf *b, const char *name, long v)
{
    char t[32];
    snprintf(t, sizeof t, "%ld", v);
    arg(b, "", name);
    arg(b, "", t);
}

/* The performance choices for a worker's argv: every key of [tune] as this configuration resolved it,
 * as --set=tune.KEY=VALUE (the workers read no environment for them). */
static void arg_tune(struct argv_buf *b, const struct pi_config *c)
{
    for (size_t i = 0; i < pi_config_key_count(); i++) {
        const struct pi_config_key_info *k = pi_config_key(i);
        char kv[160], val[96];
        if (strcmp(k->section, "tune") != 0) continue;
        pi_config_key_value(c, i, val, sizeof val);
        snprintf(kv, sizeof kv, "tune.%s=%s", k->key, val);
        arg(b, "--set=", kv);
    }
}

/* Create the segments and spawn every worker; wait until all are READY. */
static int pipe_start(struct pipe_engine *p)
{
    const struct pi_config *c = &p->o->cfg;
    const struct pi_hparams *hp = &p->m->hp;
    struct pi_exchange_params xp = {.n_embd = (uint32_t)hp->n_embd, .max_tokens = (uint32_t)p->base.max_batch, .n_ff = (uint32_t)hp->n_ff,
                                    .n_layers = (uint32_t)hp->n_layer, .n_workers = (uint32_t)p->n_cpu};
    pi_exchange_t *ex = pi_exchange_new(&xp);
    pi_step_t *step = pi_step_new((uint32_t)p->base.max_batch, (uint32_t)hp->n_vocab, (uint32_t)p->base.n_seq);
    if (!ex || !step) { pi_exchange_destroy(&ex); pi_step_destroy(&step); return -PI_ERR_NOMEM; }
    /* close-on-exec here; each worker's spawn passes on just the segments it uses */
    const int xfd = pi_exchange_fd(ex), sfd = pi_step_fd(step), pfd = pi_shm_fd(p->pl_shm);
    /* the placement's wire form afresh: the segment is mapped writable by the workers (only its size
     * is sealed), so a restart must not trust what the workers of the failed run left in it */
    pi_placement_to_wire(p->pl, pi_shm_section(p->pl_shm, 0, NULL));
    pthread_mutex_lock(&p->mu);
    p->ex = ex;
    p->step = step;
    pthread_mutex_unlock(&p->mu);
    atomic_store(&p->broken, 0);
    static const char *const acts[] = {"auto", "silu", "relu", "drelu"};
    static const char *const backends[] = {"none", "host", "cuda"};
    struct argv_buf *b = calloc(1, sizeof *b);
    if (!b) { /* broken again, so that the next reset retries instead of calling absent workers */
        atomic_store(&p->broken, 1);
        pipe_stop(p);
        return -PI_ERR_NOMEM;
    }
    int rc = 0;
    arg(b, "", p->gpu_exe);
    arg(b, "--backend=", backends[c->gpu_backend]);
    arg(b, "--model=", c->model_path);
    arg(b, "--activation=", acts[c->activation]);
    argl(b, "--step-fd", sfd);
    argl(b, "--exchange-fd", xfd);
    arg(b, "--control=", p->worker_ep);
    argl(b, "--placement-fd", pfd);
    argl(b, "--threads", c->cpu_threads > 0 ? (long)c->cpu_threads : 1);
    argl(b, "--ctx", (long)p->base.n_ctx);
    argl(b, "--n-seq", (long)p->base.n_seq);
    argl(b, "--device", (long)c->gpu_device);
    argl(b, "--stall-ms", (long)c->gpu_stall_ms);
    if (c->vram_budget) {
        char vb[32];
        snprintf(vb, sizeof vb, "%llu", (unsigned long long)c->vram_budget);
        arg(b, "--vram-budget=", vb);
    }
    arg_tune(b, c);
    arg(b, "--set=sparsity.mode=", pi_sparsity_name(p->sparsity)); /* resolved: never auto here */
    if (p->pred_sidecar[0]) arg(b, "--sidecar=", p->pred_sidecar); /* the same predictors as resolved here */
    char re[32];
    snprintf(re, sizeof re, "%lld", (long long)c->sparsity.recall_every);
    arg(b, "--set=sparsity.recall_every=", re);
    const int gpu_keep[3] = {sfd, xfd, pfd};
    if (pi_super_spawn(p->sup, PI_ROLE_GPU_WORKER, 0, b->a, gpu_keep, 3) < 0) rc = -PI_ERR_IO;
    for (int w = 0; rc == 0 && w < p->n_cpu; w++) {
        b->n = 0;
        arg(b, "", p->cpu_exe);
        arg(b, "--model=", c->model_path);
        arg(b, "--activation=", acts[c->activation]);
        argl(b, "--exchange-fd", xfd);
        argl(b, "--index", w);
        argl(b, "--workers", p->n_cpu);
        argl(b, "--placement-fd", pfd);
        arg(b, "--control=", p->worker_ep);
        if (c->cpu_threads > 0) argl(b, "--threads", (long)c->cpu_threads);
        arg_tune(b, c);
        if (p->gated) { /* the same thresholds as resolved here */
            arg(b, "--set=sparsity.mode=", pi_sparsity_name(p->sparsity));
            arg(b, "--sidecar=", p->pred_sidecar);
        }
        const int cpu_keep[2] = {xfd, pfd};
        if (pi_super_spawn(p->sup, PI_ROLE_CPU_WORKER, w, b->a, cpu_keep, 2) < 0) rc = -PI_ERR_IO;
    }
    free(b);
    if (rc == 0) rc = pi_super_wait_ready(p->sup, PIPE_READY_MS);
    if (rc != 0) {
        atomic_store(&p->broken, 1);
        pipe_stop(p);
        return rc;
    }
    pi_info("pipeline ready: gpu worker (%s backend, %lld of %lld neurons hot, at most %lld of %d in a layer) and %d CPU workers",
            backends[c->gpu_backend], (long long)pi_placement_hot_total(p->pl), (long long)hp->n_ff * hp->n_layer,
            (long long)pi_placement_hot_max(p->pl), hp->n_ff, p->n_cpu);
    return 0;
}

static int pipe_restart(struct pipe_engine *p)
{
    pi_warn("restarting the pipeline after a worker failure");
    pipe_stop(p);
    p->restarts++;
    return pipe_start(p);
}

/* Whether the pipeline may run cmd now. A fresh pipeline has an empty cache: only a reset may start
 * one after a death. A step of the requests that were in flight when the worker died fails with them;
 * continuing them on the new pipeline would evaluate positions whose cache is gone. 0, or -PI_ERR_PEER /
 * -PI_ERR_IO (logged). */
static int pipe_ready(struct pipe_engine *p, uint32_t cmd)
{
    if (!atomic_load(&p->broken)) return 0;
    if (cmd != PI_STEP_RESET) {
        pi_error("the requests' pipeline is gone (a worker died); the next reset restarts it");
        return -PI_ERR_PEER;
    }
    int rc = pipe_restart(p);
    if (rc != 0) { /* not a death during a request: nothing ran */
        pi_error("the pipeline could not be restarted (%s); the next reset tries again", pi_err_str(rc));
        return -PI_ERR_IO;
    }
    return 0;
}

/* A step's outcome: a dead peer or a timeout marks the pipeline broken (every sequence is gone). */
static int pipe_outcome(struct pipe_engine *p, int rc)
{
    if (rc == -PI_ERR_PEER || rc == -PI_ERR_TIMEOUT) {
        atomic_store(&p->broken, 1);
        if (atomic_load(&p->cancelled)) pi_info("the request in flight was cancelled");
        else pi_error("the request failed: a worker of the pipeline died (%s)", pi_err_str(rc));
        return -PI_ERR_PEER;
    }
    return rc;
}

static int pipe_eval(pi_engine_t *e, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n,
                     const int32_t *rows, int n_rows, float *logits)
{
    struct pipe_engine *p = (struct pipe_engine *)e;
    if (n < 1 || n > e->max_batch || n_rows < 0 || n_rows > n || (n_rows > 0 && !logits)) return -PI_ERR_INVAL;
    const struct pi_step_batch b = {tokens, seq, pos, (uint32_t)n, rows, (uint32_t)n_rows};
    /* the step channel's rules checked here first, so that a bad batch is the caller's -PI_ERR_INVAL or
     * -PI_ERR_RANGE with nothing sent (the worker checks them again: its input is not ours to trust) */
    int rc = pi_step_batch_check(&b, (uint32_t)e->max_batch, (uint32_t)e->n_vocab, (uint32_t)e->n_seq, p->next);
    if (rc != 0) return rc;
    if ((rc = pipe_ready(p, PI_STEP_EVAL)) != 0) return rc;
    rc = pipe_outcome(p, pi_step_eval(p->step, &b, PIPE_STEP_TIMEOUT_NS));
    if (rc == 0 && n_rows > 0) memcpy(logits, pi_step_logits(p->step), sizeof(float) * (size_t)n_rows * (size_t)e->n_vocab);
    if (rc == 0 && p->sparsity != PI_SPARSITY_OFF) {
        /* the step's counts, written by the GPU worker before its answer: another process's numbers,
         * each checked (pi_sparse_stats_add_wire) */
        pthread_mutex_lock(&p->mu);
        int bad = pi_sparse_stats_add_wire(&p->sparse, pi_exchange_stats(p->ex), n);
        pthread_mutex_unlock(&p->mu);
        if (bad && !p->sparse_bad_logged) {
            pi_warn("the GPU worker's sparse counts of %d layers were inconsistent and left out", bad);
            p->sparse_bad_logged = true;
        }
    }
    return rc;
}

static int pipe_seq_truncate(pi_engine_t *e, int seq, int n)
{
    struct pipe_engine *p = (struct pipe_engine *)e;
    if (seq < 0 || seq >= e->n_seq || n < 0) return -PI_ERR_RANGE;
    int rc = pipe_ready(p, PI_STEP_TRUNCATE);
    return rc != 0 ? rc : pipe_outcome(p, pi_step_call(p->step, PI_STEP_TRUNCATE, (uint32_t)seq, (uint32_t)n, PIPE_STEP_TIMEOUT_NS));
}

static int pipe_sparse_stats(pi_engine_t *e, struct pi_sparse_stats *out)
{
    struct pipe_engine *p = (struct pipe_engine *)e;
    if (p->sparsity == PI_SPARSITY_OFF) return -PI_ERR_NOTFOUND;
    pthread_mutex_lock(&p->mu);
    pi_sparse_stats_add(out, &p->sparse);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

static int pipe_reset(pi_engine_t *e)
{
    struct pipe_engine *p = (struct pipe_engine *)e;
    int rc = pipe_ready(p, PI_STEP_RESET);
    return rc != 0 ? rc : pipe_outcome(p, pi_step_call(p->step, PI_STEP_RESET, 0, 0, PIPE_STEP_TIMEOUT_NS));
}

static void pipe_destroy(pi_engine_t *e)
{
    struct pipe_engine *p = (struct pipe_engine *)e;
    if (p->sup) pipe_stop(p);
    pi_super_destroy(&p->sup);
    if (p->rundir[0]) pi_rundir_remove(p->rundir);
    pi_shm_destroy(&p->pl_shm);
    pi_placement_destroy(&p->pl);
    pi_sparse_stats_free(&p->sparse);
    free(p->next);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* A worker died since the last step (the supervisor's thread set broken): the scheduler restarts the
 * pipeline at once instead of at the next request. */
static int pipe_broken(pi_engine_t *e) { return atomic_load(&((struct pipe_engine *)e)->broken); }

static const struct pi_engine_ops pipe_ops = {pipe_eval,    pipe_seq_truncate, pipe_reset,
                                              pipe_destroy, pipe_sparse_stats, pipe_broken};

/* Make sure the configured run directory exists, is ours and private. The last component is opened
 * with O_NOFOLLOW | O_DIRECTORY and checked through that descriptor: a symlink planted where the run
 * dir should be (another user's /tmp/pinfer-X -> some directory of ours) is refused, not followed.
 * The first call of the process also sweeps what killed coordinators left there (pi_rundir_sweep). */
int pi_coord_run_dir_check(const char *dir)
{
    static atomic_bool swept;
    struct stat st;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        pi_error("[run] dir %s: cannot create: %s", dir, strerror(errno));
        return -PI_ERR_IO;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        struct stat lst;
        if (e == ELOOP || (lstat(dir, &lst) == 0 && S_ISLNK(lst.st_mode)))
            pi_error("[run] dir %s: is a symbolic link; refused (the run dir must be a directory of this user)", dir);
        else pi_error("[run] dir %s: cannot open: %s", dir, strerror(e));
        return -PI_ERR_INVAL;
    }
    int ok = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == getuid() && !(st.st_mode & 077);
    if (ok && !atomic_exchange(&swept, true)) pi_rundir_sweep(fd, dir);
    close(fd);
    if (!ok) {
        pi_error("[run] dir %s: not a directory private to this user (mode 0700)", dir);
        return -PI_ERR_INVAL;
    }
    return 0;
}

int pi_coord_cpu_workers(const struct pi_config *c)
{
    if (c->cpu_workers > 0) return (int)c->cpu_workers;
    static int nodes; /* NUMA nodes found by hwloc, counted once */
    if (!nodes) {
        hwloc_topology_t topo;
        nodes = 1;
        if (hwloc_topology_init(&topo) == 0) {
            if (hwloc_topology_load(topo) == 0) nodes = PI_MAX(1, hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE));
            hwloc_topology_destroy(topo);
        }
    }
    return PI_MIN(nodes, (int)PI_EXCHANGE_MAX_WORKERS);
}
_Static_assert(PI_EXCHANGE_MAX_WORKERS == 64, "lib/conf.c bounds [cpu] workers by 64, the exchange's limit");

pi_engine_t *pi_engine_pipeline_new(const struct pi_coord_opts *o, const struct pi_coord_model *cm, const char *argv0)
{
    (void)argv0;
    struct pipe_engine *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    p->base.ops = &pipe_ops;
    p->o = o;
    p->m = cm->model;
    p->base.n_vocab = cm->model->hp.n_vocab;
    /* [tune] batch: the segments, scratch and plan follow it; no step holds more than every sequence's context */
    p->base.max_batch = pi_tune_batch(&o->cfg.tune);
    p->base.n_ctx = o->cfg.ctx_len > 0 ? (int)o->cfg.ctx_len : pi_model_default_ctx(cm->model);
    p->base.n_seq = o->n_seq > 0 ? o->n_seq : 1;
    p->base.max_batch = (int)PI_MIN((int64_t)p->base.max_batch, (int64_t)p->base.n_ctx * p->base.n_seq);
    p->next = malloc((size_t)p->base.n_seq * sizeof *p->next);
    p->n_cpu = pi_coord_cpu_workers(&o->cfg);
    p->sparsity = cm->sparsity;
    p->gated = cm->gate_min != NULL;
    if (cm->sparsity != PI_SPARSITY_OFF && (strcmp(cm->pred.source, "sidecar") == 0 || cm->gate_min) &&
        !pi_coord_sidecar_file(o, p->pred_sidecar, sizeof p->pred_sidecar))
        p->pred_sidecar[0] = '\0';
    if (pi_sparse_stats_init(&p->sparse, cm->model) == 0 && p->gated) pi_sparse_stats_gated(&p->sparse, cm->model);
    /* The placement's device plan holds prompt streaming's buffers only where the GPU worker may stream:
     * pi_stream_policy_mode, the rule the worker's backend and loop apply (no predictors, no thresholds). */
    const struct pi_predictors *place_pred = cm->sparsity != PI_SPARSITY_OFF && cm->pred.layers ? &cm->pred : NULL;
    struct pi_config place_cfg = o->cfg;
    place_cfg.tune.prompt_stream = pi_stream_policy_mode(o->cfg.tune.prompt_stream, place_pred != NULL, p->gated);
    /* the mode as resolved (auto is safe or off by now): with thresholds the plan holds their buffers */
    _Static_assert(PI_SPARSITY_CFG_OFF == PI_SPARSITY_OFF + 1 && PI_SPARSITY_CFG_SAFE == PI_SPARSITY_SAFE + 1 &&
                       PI_SPARSITY_CFG_AGGRESSIVE == PI_SPARSITY_AGGRESSIVE + 1,
                   "a resolved mode is its [sparsity] mode's value minus one");
    place_cfg.sparsity.mode = (enum pi_sparsity_cfg)(cm->sparsity + 1);
    if (!p->next || !p->sparse.layers || pi_placement_choose(&place_cfg, cm->model, cm->sidecar ? cm->sidecar->act_freq : NULL, p->n_cpu, p->base.n_ctx, p->base.n_seq, p->base.max_batch,
                                                                    place_pred, &p->pl) != 0 ||
        pi_placement_share(p->pl, &p->pl_shm) != 0 || pi_coord_run_dir_check(o->cfg.run_dir) != 0 || find_exe("pi-gpu-worker", "gpu-worker", p->gpu_exe, sizeof p->gpu_exe) != 0 ||
        find_exe("pi-cpu-worker", "cpu-worker", p->cpu_exe, sizeof p->cpu_exe) != 0 ||
        pi_rundir_create(o->cfg.run_dir, p->rundir, sizeof p->rundir) != 0 ||
        pi_ctl_endpoint(p->rundir, "workers", p->worker_ep, sizeof p->worker_ep) != 0 ||
        !(p->sup = pi_super_new(p->worker_ep, on_death, p)) || pipe_start(p) != 0) {
        pipe_destroy(&p->base);
        return NULL;
    }
    return &p->base;
}

/* Status of the pipeline engine for the control socket: fills what it knows. */
size_t pi_engine_pipeline_workers(pi_engine_t *e, struct pi_worker_info *out, size_t cap)
{
    if (!e || e->ops != &pipe_ops) return 0;
    return pi_super_snapshot(((struct pipe_engine *)e)->sup, out, cap);
}

void pi_engine_pipeline_cancel(pi_engine_t *e)
{
    if (!e || e->ops != &pipe_ops) return;
    struct pipe_engine *p = (struct pipe_engine *)e;
    atomic_store(&p->cancelled, 1);
    atomic_store(&p->broken, 1);
    pthread_mutex_lock(&p->mu);
    if (p->step) pi_step_abort(p->step); /* only the step: the CPU workers stop on SHUTDOWN, not as failures */
    pthread_mutex_unlock(&p->mu);
}

const struct pi_placement *pi_engine_pipeline_placement(pi_engine_t *e)
{
    return e && e->ops == &pipe_ops ? ((struct pipe_engine *)e)->pl : NULL;
}

pi_engine_t *pi_coord_engine_new(const struct pi_coord_opts *o, const struct pi_coord_model *cm, const char *argv0)
{
    pi_info("%s", cm->sparsity_line); /* here, not at the model's open: a usage error there stays one line */
    if (o->cfg.gpu_backend == PI_GPU_NONE)
        return pi_engine_local_new(cm->model, pi_coord_threads(o), (int)o->cfg.ctx_len, o->n_seq, pi_tune_batch(&o->cfg.tune), &cm->pred,
                                   cm->gate_min, cm->sparsity, o->cfg.sparsity.recall_every);
    return pi_engine_pipeline_new(o, cm, argv0);
}
