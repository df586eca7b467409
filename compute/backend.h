/*
 * compute/backend.h - the interface between pi-gpu-worker's layer loop (gpu-worker/loop.c) and
 * the device that computes attention and the hot neurons.
 *
 * The loop owns the protocol (steps from the coordinator, the per-layer exchange with the CPU
 * workers); a backend owns the residual stream h (n, n_embd) of the batch being computed, the KV
 * cache and the hot neurons' weights, wherever they live. One batch goes through:
 *
 *   begin(tokens, seq, pos, n)          check the batch against the cache, embed the tokens into h
 *   for each layer il:
 *     attn(il)                          h += attention(h) (keys and values appended to the cache)
 *     ffn_input(il, x)                  x (n, n_embd) host memory = ffn_norm(h); the loop publishes it
 *                                       (x NULL: the layer has no exchange, nothing to write; a layer
 *                                       without an exchange gets an x on the predictors' recall steps,
 *                                       where the loop reads it). x is complete when ffn_input returns,
 *                                       or, with predictors, when the ffn_predict after it returns 0
 *     [ffn_predict(il, mask)]           with predictors: the mask of predicted-active neurons; the
 *                                       loop publishes it with x, ffn_hot computes only those
 *     ffn_hot(il)                       start the hot neurons of il on that input (may be asynchronous)
 *     ffn_merge(il, cold)               h += hot partial + cold (n, n_embd), the merged CPU partials
 *                                       (cold NULL: no CPU partials, the layer had no exchange)
 *   (ffn_input, ffn_hot and ffn_merge once each per layer, in this order: a backend may add the hot
 *   partial to h in ffn_hot already, as the cuda backend's dense layers do, and merge only cold. On a
 *   streamed prompt step, ffn_stream(il, next) replaces the three for each layer with cold neurons.)
 *   output(n_out, logits)               logits (n_out, n_vocab) of the last n_out rows of h
 *   commit()                            the batch's positions are now part of the cache
 *   [ffn_hot_skipped(skipped)]          with activation thresholds: the hot pairs the step skipped
 *
 * Two backends: `host` (plain C over the forward-pass ops, compute/backend-host.c; the CI stand-in
 * and the reference) and `cuda` (compute/backend-cuda.c, in the module pinfer-cuda.so loaded on
 * demand; pi_backend_new reports it missing when not built or not loadable).
 * A backend is driven by one thread.
 */
#ifndef PI_COMPUTE_BACKEND_H
#define PI_COMPUTE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "compute/partition.h"
#include "compute/placement.h"
#include "compute/predictor.h"
#include "lib/conf.h"
#include "model/model.h"

typedef struct pi_backend pi_backend_t;

struct pi_backend_opts {
    int n_threads;        /* host threads (host backend); <= 0 means 1 */
    int n_ctx;            /* positions per sequence */
    int n_seq;            /* sequences in the cache */
    int max_tokens;       /* rows per batch (the exchange's max_tokens) */
    int device;           /* CUDA device index (cuda backend) */
    uint64_t vram_budget; /* device bytes the backend may hold (cuda); 0 = the device's free memory */
    /* hot[il] (n_hot[il]): the neuron ids of layer il computed by this backend, any order, no
     * duplicates (ascending where the host backend runs predictors: compute/sparse.h's slices);
     * borrowed for the lifetime of the backend. */
    const int32_t *const *hot;
    const int64_t *n_hot;
    /* (n_layer) or NULL: layer il's hot neurons packed in the order of hot[il] (row i of ffn_gate,
     * ffn_up and ffn_down_t is neuron hot[il][i]; compute/partition.h). When given, the backend
     * reads hot rows from here, and the model may have been opened without its own ffn_down_t
     * (pi_model_opts.no_down_t). Borrowed; the cuda backend needs it only until it is created. */
    const struct pi_layer *hot_layers;
    /* The partition hot_layers belongs to, where the worker packed them as one (compute/partition.h):
     * with its dense down blocks the host backend computes a partial hot set densely as a CPU worker
     * does. NULL: neuron by neuron only. Borrowed. */
    const struct pi_partition *hot_part;
    /* The performance choices ([tune] of pinfer.conf, lib/conf.h); zero: every default. The host
     * backend takes only prompt_stream (on: its streamed FFN's buffers). */
    struct pi_tune tune;
    /* The activation predictors (compute/predictor.h) and the mode they run in; NULL or
     * PI_SPARSITY_OFF: dense, ffn_predict is not called. Borrowed for the lifetime of the backend
     * (the cuda backend copies the weights to the device at creation). */
    const struct pi_predictors *pred;
    enum pi_sparsity sparsity;
    /* A SwiGLU model's activation thresholds are on (doc/thresholds.md): the CPU workers skip their cold
     * neurons under them, and this backend its hot ones under gate_min. Set where pred is: such a run
     * never streams its prompts (pi_stream_policy_mode), so the cuda backend holds no streaming buffers
     * for it; it holds the thresholds' buffers instead (compute/backend-cuda-plan.h, part gate), which
     * the placement's plan counts from this flag alone. */
    bool thresholds;
    /* With thresholds, the hot neurons' thresholds, or NULL (the hot neurons dense): gate_min[il]
     * (n_hot[il]) floats, each >= 0 and finite, in the order of hot[il] (neuron hot[il][i]'s threshold at
     * [i]). A (token, hot neuron) pair is skipped when pi_ffn_gate_skip(act, gate_min[il][i], gate)
     * (kernels/cpu/ops.h): gate-first, its up row and down row unread where the path allows. Borrowed for
     * the lifetime of the backend (the cuda backend copies them to the device at creation). Not with
     * pred. */
    const float *const *gate_min;
};

/* The operations of one backend; every function returns 0 or a negative enum pi_err (logged). */
struct pi_backend_ops {
    const char *name;
    void (*destroy)(pi_backend_t *b);
    int (*begin)(pi_backend_t *b, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n);
    int (*attn)(pi_backend_t *b, int il);
    int (*ffn_input)(pi_backend_t *b, int il, float *x);
    int (*ffn_hot)(pi_backend_t *b, int il);
    int (*ffn_merge)(pi_backend_t *b, int il, const float *cold);
    int (*output)(pi_backend_t *b, int n_out, float *logits);
    void (*commit)(pi_backend_t *b);
    int (*seq_truncate)(pi_backend_t *b, int seq, int n);
    int (*seq_len)(const pi_backend_t *b, int seq);
    /* Optional (NULL = not provided): the number of hot neurons of layer il (opts.n_hot[il]). When
     * it equals n_ff, no CPU worker owns a neuron of il and the loop skips the layer's exchange,
     * calling ffn_input(il, NULL), ffn_hot(il), ffn_merge(il, NULL). Without it the loop publishes
     * every layer. */
    int64_t (*ffn_hot_count)(const pi_backend_t *b, int il);
    /* Optional (NULL = no predictors on this backend), called between ffn_input and ffn_hot when
     * opts.pred is set and opts.sparsity is not OFF: evaluate layer il's predictor on the rows it reads
     * (pi_predictor_input: the residual stream or the FFN input) of the batch's n rows, write the
     * predicted-active mask (n, mask_words) into mask (host memory: the exchange's mask section; for a
     * layer without an exchange NULL, or the loop's own buffer on the
     * recall steps of [sparsity] recall_every, gpu-worker/loop.c) and restrict the following
     * ffn_hot to the hot neurons predicted active (a ReLU model's exact gate still decides each of
     * them). *n_active = the (token, neuron) pairs predicted active over all n_ff neurons. */
    int (*ffn_predict)(pi_backend_t *b, int il, uint64_t *mask, int64_t mask_words, int64_t *n_active);
    /* Optional (NULL = no prompt streaming; compute/stream-policy.h): h (n, n_embd) += ffn(ffn_norm(h))
     * of layer il over the batch's n rows, every neuron of the layer, from the model's own ffn_gate,
     * ffn_up and ffn_down (the mapping; not the packed hot rows), so the CPU workers take no part. Called
     * after attn(il) instead of ffn_input, ffn_hot and ffn_merge. next: the layer the loop streams after
     * il in this batch, or -1; the backend may start moving its weights now (cuda: the copy into the
     * other device slot overlaps il's products). il = -1: only start next's (the loop calls this once
     * after begin and attn(0), so that the first layer's packing and copy overlap the first attention).
     * The loop streams only when pi_stream_policy_mode(opts.tune.prompt_stream, predictors, thresholds)
     * is not off. */
    int (*ffn_stream)(pi_backend_t *b, int il, int next);
    /* Optional (NULL = 0 with both rates 0): the rates of ffn_stream's two transfer stages, bytes/s,
     * measured at creation: *copy_bps the copy of a layer's weight bytes onto the device (0 when there is
     * no link to stream over: host, whose ffn_stream still works), *pack_bps the host's packing of a
     * layer into the staging the copy reads (0: no packing stage). The cost model
     * (compute/stream-policy.h) overlaps the two stages with the products. 0, or -PI_ERR_UNSUPPORTED
     * (rates 0) when this backend cannot stream with its options (cuda without its streaming buffers:
     * prompt_stream off, predictors or thresholds, or a layer's FFN type the device would convert). */
    int (*stream_rates)(const pi_backend_t *b, double *copy_bps, double *pack_bps);
    /* Optional (NULL = the hot neurons skip nothing): with opts.gate_min, skipped (n_layer) = the (token,
     * hot neuron) pairs each layer's ffn_hot skipped under the thresholds since the last call (or the
     * backend's creation); the counters are then cleared. The loop calls it once per step, after the
     * step's layers, and takes the counts from the pairs it noted as computed (pi_sparse_note_skipped): the
     * cuda backend counts on the device and downloads its counters here, one wait at the end of a step
     * rather than one per layer. Without gate_min every count is 0. */
    int (*ffn_hot_skipped)(pi_backend_t *b, int64_t *skipped);
};

/* Every backend struct starts with this. */
struct pi_backend {
    const struct pi_backend_ops *ops;
    const pi_model_t *model;
};

/* Create the backend named name ("host" or "cuda") over m (borrowed). Returns 0 and *out, or
 * -PI_ERR_UNSUPPORTED with a clear message when the backend was not built (cuda without
 * --with-cuda) or its module cannot be loaded, -PI_ERR_INVAL for an unknown name, or another
 * negative pi_err. */
int pi_backend_new(const char *name, const pi_model_t *m, const struct pi_backend_opts *o, pi_backend_t **out);

/* Which transposed down rows (ffn_down_t) backend `name` needs on the host to compute the hot
 * neurons of placement pl (group 0) over m (whose hyper-parameters are all that is read):
 *   NONE   - none (no hot neurons; or cuda with every layer dense: it multiplies by ffn_down itself);
 *   MODEL  - the model's own, packed at load for every neuron (host with a layer whose neurons are all
 *            hot: such a layer is the single-process FFN step, compute/forward.h);
 *   PACKED - only the hot neurons' rows, given as opts.hot_layers (compute/partition.h), so the
 *            model can be opened without its own (pi_model_opts.no_down_t). */
enum pi_backend_rows { PI_BACKEND_ROWS_NONE, PI_BACKEND_ROWS_MODEL, PI_BACKEND_ROWS_PACKED };
enum pi_backend_rows pi_backend_hot_rows(const char *name, const pi_model_t *m, const struct pi_placement *pl);

/* The device bytes backend `name` will hold for m and o (cuda: pi_backend_cuda_plan, exact to the
 * allocator's rounding). -PI_ERR_UNSUPPORTED for a backend without a device (host). */
int pi_backend_device_bytes(const char *name, const pi_model_t *m, const struct pi_backend_opts *o, uint64_t *bytes);

/* Destroy; accepts NULL; nulls the caller's pointer. */
void pi_backend_destroy(pi_backend_t **b);

/* 0 when backend `name` can run in this program, else -PI_ERR_UNSUPPORTED (cuda: built without the
 * CUDA backend, or its module could not be loaded) or -PI_ERR_INVAL (unknown name), with the reason
 * logged. For cuda this loads the module (once per process). Checked before anything is loaded. */
int pi_backend_check(const char *name);

/* The host backend (compute/backend-host.c). */
int pi_backend_host_new(const pi_model_t *m, const struct pi_backend_opts *o, pi_backend_t **out);

/* The cuda backend (compute/backend-cuda.c) is built, where configure found CUDA (PI_HAVE_CUDA), into
 * the module pinfer-cuda.so that pi_backend_check and pi_backend_new load when it is first named
 * (compute/backend-cuda-module.h). */

#endif
