/*
 * compute/placement-choose.c - choosing the pipeline's placement (compute/placement.h): the hot sets
 * of a GPU index file; with activation statistics the solver's placement (compute/placement-solve.h)
 * within the budget; otherwise the hot-neuron count of the rule without statistics, from the hot
 * fraction or the VRAM budget. Budgets are counted by the cuda backend's plan
 * (compute/backend-cuda-plan.h, host arithmetic only) for the cuda backend, by the weights otherwise.
 */
#include "config.h"
#include "compute/placement.h"
#include "compute/backend-cuda-plan.h"
#include "compute/placement-solve.h"
#include "compute/predictor.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

/* The file-type rule: weights every token needs, then gate + up + down column per neuron. */
static int64_t fit_by_rows(const struct pi_config *c, const pi_model_t *m)
{
    const uint64_t fixed = pi_place_fixed_bytes(m);
    uint64_t per_neuron = 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        uint64_t g, u, d;
        pi_place_neuron_bytes(m, il, &g, &u, &d);
        per_neuron += g + u + d;
    }
    if (c->vram_budget <= fixed || per_neuron == 0) return 0;
    uint64_t k = (c->vram_budget - fixed) / per_neuron;
    return (int64_t)PI_MIN(k, (uint64_t)m->hp.n_ff);
}

/* Whether the run applies a SwiGLU model's activation thresholds: its [sparsity] mode, as the pipeline
 * resolved it, is safe or aggressive (pi_sparse_open gives such a run thresholds or refuses it). The GPU
 * worker's cuda backend then holds their buffers (compute/backend-cuda-plan.h, part gate). */
static bool run_gated(const struct pi_config *c, const pi_model_t *m)
{
    return m->hp.act == PI_FFN_ACT_SILU &&
           (c->sparsity.mode == PI_SPARSITY_CFG_SAFE || c->sparsity.mode == PI_SPARSITY_CFG_AGGRESSIVE);
}

#ifdef PI_HAVE_CUDA
struct cuda_fit {
    const pi_model_t *m;
    struct pi_backend_opts o;
    int64_t *nh;
    uint64_t budget;
    int err; /* the first error of the plan (not "too big": it could not be made), or 0 */
};

/* Whether k hot neurons per layer fit the budget by the backend's plan; a plan that cannot be made
 * does not fit and sets f->err. */
static bool fits(struct cuda_fit *f, int64_t k)
{
    uint64_t bytes = 0;
    for (int il = 0; il < f->m->hp.n_layer; il++) f->nh[il] = k;
    int rc = pi_backend_cuda_plan(f->m, &f->o, &bytes);
    if (rc != 0 && f->err == 0) f->err = rc;
    return rc == 0 && bytes <= f->budget;
}

/* The cuda backend's own plan, searched over k. The opts are those pi-gpu-worker builds: hot ids
 * 0..k-1 in every layer, its packed hot rows (whose down rows have model/model.c's automatic type when
 * the file has none), n_seq sequences of n_ctx positions, batches of max_tokens. The plan grows with k
 * except at k = n_ff, where every layer turns dense (the file's down weights instead of the
 * transposed rows), so that end is tried first. -1 when out of memory or when the plan cannot be made
 * (an error, not a budget too small: the caller falls back to the weights-only rule). */
static int64_t fit_cuda(const struct pi_config *c, const pi_model_t *m, int n_ctx, int n_seq, int max_tokens,
                        const struct pi_predictors *pred)
{
    const struct pi_hparams *hp = &m->hp;
    const int L = hp->n_layer;
    int32_t *ids = malloc((size_t)hp->n_ff * sizeof *ids);
    const int32_t **hot = calloc((size_t)L, sizeof *hot);
    int64_t *nh = calloc((size_t)L, sizeof *nh);
    struct pi_layer *hl = calloc((size_t)L, sizeof *hl);
    int64_t best = -1;
    if (ids && hot && nh && hl) {
        for (int64_t i = 0; i < hp->n_ff; i++) ids[i] = (int32_t)i;
        for (int il = 0; il < L; il++) {
            hot[il] = ids;
            hl[il] = m->layers[il];
            if (!hl[il].ffn_down_t.data)
                hl[il].ffn_down_t.type = pi_model_down_t_type(PI_TYPE_COUNT, m->layers[il].ffn_down.type, hp->n_embd);
        }
        struct cuda_fit f = {.m = m, .nh = nh, .budget = c->vram_budget,
                             .o = {.n_ctx = n_ctx, .n_seq = n_seq, .max_tokens = max_tokens, .hot = hot, .n_hot = nh,
                                   .hot_layers = hl, .pred = pred, .sparsity = pred ? PI_SPARSITY_SAFE : PI_SPARSITY_OFF,
                                   .tune = c->tune, .thresholds = run_gated(c, m)}}; /* tune.prompt_stream: its slots */
        if (fits(&f, hp->n_ff)) {
            best = hp->n_ff;
        } else if (!fits(&f, 0)) {
            best = 0;
        } else {
            int64_t lo = 0, hi = hp->n_ff - 1; /* plan(lo) fits; plan(hi + 1) does not */
            while (lo < hi) {
                int64_t mid = lo + (hi - lo + 1) / 2;
                if (fits(&f, mid)) lo = mid;
                else hi = mid - 1;
            }
            best = lo;
        }
        if (f.err != 0) {
            pi_warn("placement: the cuda backend's plan failed (%s)", pi_err_str(f.err));
            best = -1;
        }
    }
    free(ids);
    free(hot);
    free(nh);
    free(hl);
    return best;
}
#endif

int64_t pi_placement_hot_count(const struct pi_config *c, const pi_model_t *m, int n_ctx, int n_seq, int max_tokens,
                               const struct pi_predictors *pred)
{
    if (c->vram_budget == 0) return (int64_t)llround(c->hot_fraction * m->hp.n_ff);
#ifdef PI_HAVE_CUDA
    if (c->gpu_backend == PI_GPU_CUDA) {
        int64_t k = fit_cuda(c, m, n_ctx, PI_MAX(n_seq, 1), max_tokens, pred);
        if (k >= 0) return k;
        pi_warn("placement: the cuda backend's plan could not be made; using the weights-only rule");
    }
#else
    (void)n_ctx, (void)n_seq, (void)max_tokens, (void)pred;
#endif
    return fit_by_rows(c, m);
}

/* The device bytes of a placement: the cuda backend's plan (as pi-gpu-worker will make it: its packed
 * hot rows, down rows in model/model.c's automatic type where the file has none, n_seq sequences of
 * n_ctx positions, batches of max_tokens), or the weights rule (attention, embeddings and head, each
 * hot neuron's gate row, up row and down column in the file's types). */
struct bytes_ctx {
    const pi_model_t *m;
    bool cuda;
    int n_ctx, n_seq, max_tokens;
    struct pi_layer *hl;         /* (n_layer): the layers with their down rows' type, for the plan */
    const struct pi_predictors *pred; /* a sparse run's predictors (on the device too), or NULL */
    struct pi_tune tune;         /* [tune]: prompt_stream's slots are in the plan */
    bool gated;                  /* activation thresholds: their buffers are in the plan (run_gated) */
};

static int placement_bytes(void *ctx, const struct pi_placement *p, uint64_t *bytes)
{
    const struct bytes_ctx *b = ctx;
    const pi_model_t *m = b->m;
    const int L = m->hp.n_layer;
    if (!b->cuda) {
        *bytes = pi_place_weights_bytes(m, p);
        return 0;
    }
    const int32_t **hot = calloc((size_t)L, sizeof *hot);
    int64_t *nh = calloc((size_t)L, sizeof *nh);
    int rc = -PI_ERR_NOMEM;
    if (hot && nh) {
        for (int il = 0; il < L; il++) hot[il] = pi_placement_hot(p, il, &nh[il]);
        struct pi_backend_opts o = {.n_ctx = b->n_ctx, .n_seq = b->n_seq, .max_tokens = b->max_tokens,
                                    .hot = (const int32_t *const *)hot, .n_hot = nh, .hot_layers = b->hl,
                                    .pred = b->pred, .sparsity = b->pred ? PI_SPARSITY_SAFE : PI_SPARSITY_OFF,
                                    .tune = b->tune, .thresholds = b->gated};
        rc = pi_backend_cuda_plan(m, &o, bytes);
    }
    free(hot);
    free(nh);
    return rc;
}

int pi_place_solve_config(const struct pi_config *c, const pi_model_t *m, const float *act_freq, int n_workers, int n_ctx,
                          int n_seq, int max_tokens, const struct pi_predictors *pred, struct pi_placement **out,
                          struct pi_place_cost *cost_out)
{
    const struct pi_hparams *hp = &m->hp;
    struct bytes_ctx b = {.m = m, .cuda = c->gpu_backend == PI_GPU_CUDA, .n_ctx = n_ctx, .n_seq = PI_MAX(n_seq, 1), .max_tokens = max_tokens, .pred = pred, .tune = c->tune};
    b.gated = run_gated(c, m);
#ifndef PI_HAVE_CUDA
    b.cuda = false;
#endif
    int rc = 0;
    if (b.cuda) {
        if (!(b.hl = calloc((size_t)hp->n_layer, sizeof *b.hl))) return -PI_ERR_NOMEM;
        for (int il = 0; il < hp->n_layer; il++) {
            b.hl[il] = m->layers[il];
            if (!b.hl[il].ffn_down_t.data)
                b.hl[il].ffn_down_t.type = pi_model_down_t_type(PI_TYPE_COUNT, m->layers[il].ffn_down.type, hp->n_embd);
        }
    }
    struct pi_place_problem q = {.m = m, .act_freq = act_freq, .n_workers = n_workers < 1 ? 1 : n_workers,
                                 .budget = c->vram_budget, .device_bytes = placement_bytes, .ctx = &b,
                                 .speeds = {.gpu_gbs = c->place_gpu_gbs, .cpu_gbs = c->place_cpu_gbs, .exchange_us = c->place_exchange_us},
                                 .sparse = pred != NULL};
    if (!(q.speeds.cpu_gbs > 0)) { /* 0: measured now, one worker's rate times the workers */
        /* one worker's threads: [cpu] threads, else its share of the online CPUs (the workers take
         * their node's physical cores, shared among the node's workers: about the same share) */
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        int threads = c->cpu_threads > 0 ? (int)c->cpu_threads : online > 0 ? (int)PI_MAX(1, online / q.n_workers) : 1;
        double one = 0;
        rc = pi_place_measure_cpu_gbs(m, threads, &one);
        if (rc < 0) {
            pi_error("placement: the CPU workers' speed could not be measured (%s): set [placement] cpu_gbs", pi_err_str(rc));
            free(b.hl);
            return rc;
        }
        q.speeds.cpu_gbs = one * q.n_workers;
        pi_info("placement: CPU worker speed measured: %.1f GB/s with %d threads (neuron kernel, %s gate rows)", one,
                threads, pi_type_name(m->layers[0].ffn_gate.type));
    }
    if (q.budget == 0) { /* the hot fraction's bytes */
        struct pi_placement *pre = NULL;
        rc = pi_placement_prefix(hp->n_layer, hp->n_ff, q.n_workers, (int64_t)llround(c->hot_fraction * hp->n_ff), &pre);
        if (rc == 0) rc = placement_bytes(&b, pre, &q.budget);
        pi_placement_destroy(&pre);
    }
    struct pi_place_cost cost = {0};
    if (rc == 0) rc = pi_place_solve(&q, out, &cost);
    cost.speeds = q.speeds;
    if (rc == 0 && n_workers == 0 && pi_placement_hot_total(*out) < (int64_t)hp->n_layer * hp->n_ff) {
        pi_placement_destroy(out);
        rc = -PI_ERR_INVAL; /* cannot happen: the pipeline always has a CPU worker */
    }
    if (rc == 0)
        pi_info("placement: solved from the activation profile: %lld of %lld neurons hot (%.1f%% of the activations), "
                "%llu device bytes of %llu, %d layers exchange; modelled %.0f us/token (GPU %.0f, CPU %.0f; speeds "
                "%.0f and %.1f GB/s, exchange %.0f us)",
                (long long)cost.hot, (long long)hp->n_ff * hp->n_layer, 100 * cost.hot_freq_share,
                (unsigned long long)cost.device_bytes, (unsigned long long)q.budget, cost.n_exchanges, cost.t_us, cost.gpu_us,
                cost.cpu_us, q.speeds.gpu_gbs, q.speeds.cpu_gbs, q.speeds.exchange_us);
    free(b.hl);
    if (rc == 0 && cost_out) *cost_out = cost;
    return rc;
}

int pi_placement_choose(const struct pi_config *c, const pi_model_t *m, const float *act_freq, int n_workers, int n_ctx,
                        int n_seq, int max_tokens, const struct pi_predictors *pred, struct pi_placement **out)
{
    if (c->gpu_index && c->gpu_index[0]) {
        int rc = pi_placement_read_gpuidx(c->gpu_index, m->hp.n_layer, m->hp.n_ff, n_workers, out);
        if (rc == 0) pi_info("placement: the hot neurons of %s (%lld of %lld)", c->gpu_index, (long long)pi_placement_hot_total(*out),
                             (long long)m->hp.n_ff * m->hp.n_layer);
        return rc;
    }
    if (act_freq && m->hp.act == PI_FFN_ACT_SILU) {
        /* a SwiGLU FFN computes every neuron (its profile's gate > 0 counts say nothing about the
         * work): no ranking to exploit, the rule without statistics decides */
        pi_info("placement: a SwiGLU model: its profile does not rank the neurons; the rule without statistics decides");
        act_freq = NULL;
    }
    if (act_freq) {
        int rc = pi_place_solve_config(c, m, act_freq, n_workers, n_ctx, n_seq, max_tokens, pred, out, NULL);
        if (rc != -PI_ERR_RANGE) return rc;
        pi_warn("placement: the profile's solution does not fit; the rule without statistics decides");
    }
    int64_t k = pi_placement_hot_count(c, m, n_ctx, n_seq, max_tokens, pred);
    return pi_placement_prefix(m->hp.n_layer, m->hp.n_ff, n_workers, k, out);
}
