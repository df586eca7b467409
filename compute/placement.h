/*
 * compute/placement.h - where every FFN neuron of every layer is computed: the placement map, the
 * one value every process of a pipeline follows (doc/pipeline.md, "Placement").
 *
 * A placement says, for each layer, which neuron ids the GPU worker holds (the hot set: any set, not
 * a prefix) and which cold ids each CPU worker holds; together they are every id of the layer exactly
 * once. The coordinator builds it (today from the hot fraction or the VRAM budget: the lowest ids
 * first; later from activation statistics and a solver), sends it to the workers in its wire form
 * (a sealed memfd segment, ipc/shm.h kind PI_SHM_KIND_PLACEMENT) and every worker packs exactly its
 * own neurons (compute/partition.h). Within a group the ids are ascending, so a group that is a range
 * packs as that range always did.
 *
 * Wire form (little-endian, all fields u32 unless said): magic "PIPL", version, n_layer, n_ff,
 * n_workers, reserved 0; then for each layer its n_workers + 1 group sizes (GPU first, then CPU
 * worker 0, 1, ...); then for each layer its n_ff ids (i32) in group order. A receiver checks every
 * field against its model and the bytes it was given, and that each layer's ids are a permutation of
 * 0..n_ff-1 ascending within each group, before using any of it.
 */
#ifndef PI_COMPUTE_PLACEMENT_H
#define PI_COMPUTE_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "ipc/shm.h"
#include "lib/conf.h"
#include "model/model.h"

struct pi_predictors; /* compute/predictor.h */

#define PI_PLACEMENT_MAGIC 0x4c504950u /* "PIPL" read as little-endian bytes */
#define PI_PLACEMENT_VERSION 1u
#define PI_PLACEMENT_MAX_WORKERS 64 /* the exchange's limit (ipc/exchange.h) */

/* The groups of a layer: group 0 is the GPU worker's hot set, group 1 + w CPU worker w's cold set. */
struct pi_placement {
    int n_layer, n_ff, n_workers;
    int32_t *ids; /* (n_layer, n_ff): layer il's ids at ids + il * n_ff, grouped, ascending in a group */
    int64_t *off; /* (n_layer, n_workers + 2): group g of layer il is ids[il * n_ff + off[il * (W + 2) + g]
                    * .. off[.. + g + 1]); off[.. + 0] = 0 and off[.. + W + 1] = n_ff */
};

/* A placement whose hot set of layer il is hot[il] (n_hot[il] ids in any order, no duplicates, each
 * in [0, n_ff)) and whose cold ids, ascending, are cut into n_workers consecutive groups of nearly
 * equal size (the first cold ids to worker 0). hot NULL: the hot set of layer il is ids
 * 0..n_hot[il]-1. n_workers may be 0 only when every neuron is hot. Returns 0 and *out (free with
 * pi_placement_destroy), or -PI_ERR_INVAL (logged) / -PI_ERR_NOMEM. */
int pi_placement_new(int n_layer, int n_ff, int n_workers, const int32_t *const *hot, const int64_t *n_hot,
                     struct pi_placement **out);
/* The same, the cold ids of each layer cut into consecutive groups of nearly equal total weight
 * (weight: (n_layer, n_ff), a neuron's expected cost to its CPU worker, e.g. the bytes it reads per
 * token; negative counts as 0) rather than equal counts. weight NULL: equal counts. */
int pi_placement_new_weighted(int n_layer, int n_ff, int n_workers, const int32_t *const *hot, const int64_t *n_hot,
                              const float *weight, struct pi_placement **out);
/* The same with ids 0..k-1 hot in every layer (the rule without statistics). */
int pi_placement_prefix(int n_layer, int n_ff, int n_workers, int64_t k, struct pi_placement **out);
void pi_placement_destroy(struct pi_placement **p);

/* Group g's ids of layer il (borrowed from p) and their count in *n. */
static inline const int32_t *pi_placement_group(const struct pi_placement *p, int il, int g, int64_t *n)
{
    const int64_t *o = p->off + (size_t)il * (size_t)(p->n_workers + 2);
    *n = o[g + 1] - o[g];
    return p->ids + (size_t)il * (size_t)p->n_ff + (size_t)o[g];
}
static inline const int32_t *pi_placement_hot(const struct pi_placement *p, int il, int64_t *n)
{
    return pi_placement_group(p, il, 0, n);
}
static inline const int32_t *pi_placement_cold(const struct pi_placement *p, int il, int w, int64_t *n)
{
    return pi_placement_group(p, il, 1 + w, n);
}
/* Hot neurons over all layers, and the most in any one layer. */
int64_t pi_placement_hot_total(const struct pi_placement *p);
int64_t pi_placement_hot_max(const struct pi_placement *p);

/* Bytes of m's FFN weights in group g of layer il (il < 0: all layers): for each neuron its gate row,
 * its up row and its down column in the file's types (a down column costs n_embd values of ffn_down's
 * type, or its ffn_down_t row where the file has one). */
uint64_t pi_placement_bytes(const struct pi_placement *p, const pi_model_t *m, int il, int g);

/* Bytes of the wire form, and the wire form written into buf (pi_placement_wire_size bytes). */
size_t pi_placement_wire_size(const struct pi_placement *p);
void pi_placement_to_wire(const struct pi_placement *p, void *buf);
/* Parse and check a wire form of len bytes (untrusted: from another process) for a model with
 * n_layer layers of n_ff neurons and n_workers CPU workers. 0 and *out, or -PI_ERR_FORMAT with the
 * reason in err (and logged), or -PI_ERR_NOMEM. */
int pi_placement_from_wire(const void *buf, size_t len, int n_layer, int n_ff, int n_workers, struct pi_placement **out,
                           char *err, size_t errlen);

/* A sealed memfd segment (ipc/shm.h, kind PI_SHM_KIND_PLACEMENT) holding p's wire form, for the
 * workers to inherit: 0 and *out (the creator's handle; pi_shm_fd gives the fd), or a negative pi_err. */
int pi_placement_share(const struct pi_placement *p, pi_shm_t **out);
/* The placement in the inherited segment fd, checked (pi_placement_from_wire) against a model of
 * n_layer layers of n_ff neurons and n_workers CPU workers; fd is closed on every path (the placement
 * is copied out). 0 and *out, or a negative pi_err (logged). */
int pi_placement_map_fd(int fd, int n_layer, int n_ff, int n_workers, struct pi_placement **out);

/* The placement whose hot sets are those of PowerInfer's GPU index file at path (`.gpuidx`, doc:
 * ../shared/powerinfer-formats.md: architecture "generic.gpu_index", per layer by position
 * blk.N.gpu_idx I32[n_ff] with 1 = hot, then blk.N.gpu_bucket I32[k] the ascending hot ids, or
 * gpu_idx alone), for a model of n_layer layers of n_ff neurons, the cold ids split among n_workers
 * CPU workers. Every field is checked (an untrusted file); a bucket must agree with its flags. A layer
 * with no hot neuron needs the gpu_idx-only form: GGUF files here may not hold empty tensors
 * (doc/gguf-validation.md). 0 and *out, or a negative pi_err (logged). */
int pi_placement_read_gpuidx(const char *path, int n_layer, int n_ff, int n_workers, struct pi_placement **out);

/* Write p's hot sets as PowerInfer's GPU index file at path (magic "PWRI", version 3, the layout
 * pi_placement_read_gpuidx reads: per layer gpu_idx, then gpu_bucket unless a layer has no hot
 * neuron, in which case no layer has one and a warning says PowerInfer's loader, which wants both,
 * will refuse the file), with split.vram_capacity = vram_capacity (PowerInfer compares it with the
 * budget its other weights leave: pi-place passes the hot neurons' bytes). Atomic (a temporary file
 * renamed). 0 or a negative pi_err (logged). */
int pi_placement_write_gpuidx(const struct pi_placement *p, const char *path, uint64_t vram_capacity);

/* The pipeline's placement for configuration c and model m with n_workers CPU workers, n_seq (>= 1)
 * sequences of n_ctx positions each and batches of up to max_tokens rows: the hot sets of [gpu] gpu_index when set;
 * else, with activation statistics act_freq ((n_layer, n_ff) frequencies from the model's sidecar;
 * NULL: none), the placement solver's (compute/placement-solve.h) within [gpu] vram_budget, or within
 * the bytes the hot fraction would take, with the [placement] speeds; else ids 0..k-1 hot in every
 * layer with k from pi_placement_hot_count. pred: the predictors of a sparse run (NULL: dense), whose
 * device bytes the budget counts and with which the solver models the CPU's work. A SwiGLU model whose
 * c->sparsity.mode is safe or aggressive (the mode as resolved: pass auto as what it became) has
 * activation thresholds, whose device buffers the budget counts too. Logs what it chose. 0 and *out, or a
 * negative pi_err (logged). */
int pi_placement_choose(const struct pi_config *c, const pi_model_t *m, const float *act_freq, int n_workers, int n_ctx,
                        int n_seq, int max_tokens, const struct pi_predictors *pred, struct pi_placement **out);

/* Hot neurons per layer (ids 0..k-1) for configuration c and model m, with n_seq sequences of n_ctx
 * positions each (their KV cache on the device) and batches of up to max_tokens rows:
 *   - no VRAM budget: k = round(hot_fraction * n_ff);
 *   - a budget and the cuda backend (in a build with it): the largest k whose exact device plan
 *     (pi_backend_cuda_plan: weights, hot rows, KV cache, activations, scratch, as the GPU worker
 *     will compute it) fits the budget; every neuron when that fits;
 *   - a budget otherwise: as many as fit after the attention, embedding and output weights, each
 *     neuron costing its gate row, up row and down column in the file's types.
 * 0 when nothing fits (the GPU worker then refuses with the figures). */
int64_t pi_placement_hot_count(const struct pi_config *c, const pi_model_t *m, int n_ctx, int n_seq, int max_tokens,
                               const struct pi_predictors *pred);

#endif
