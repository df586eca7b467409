/*
 * compute/placement-solve.h - the placement solver: from per-neuron activation frequencies (the
 * sidecar's profile), a VRAM budget and the machine's speeds, the placement map (compute/placement.h)
 * whose modelled time per token is smallest.
 *
 * The cost model, per token and layer l (doc/locality.md, "The placement solver"):
 *
 *   gpu_l = (A_l + sum over hot neurons of (g + u + d)) / B_gpu     attention weights A_l and every
 *                                                                   hot neuron's rows, on the device
 *   cpu_l = sum over cold neurons of (g + f_i (u + d)) / B_cpu      each cold gate row, and the up row
 *                                                                   and down column of the neurons
 *                                                                   that fire (ReLU and dReLU models;
 *                                                                   a SwiGLU model computes every
 *                                                                   neuron and is not solved)
 *   t_l   = max(gpu_l, cpu_l) + (E if layer l has a cold neuron)    E: one exchange round trip
 *
 * and t = sum of t_l plus the output head over B_gpu. g, u, d are one neuron's gate row, up row and
 * down column in the file's types. The VRAM budget is checked exactly by the caller's byte count of a
 * candidate placement (for the cuda backend its own plan: weights, KV cache, activations, scratch).
 *
 * The search: neurons are ranked by f_i (each moves the same bytes to the GPU and saves the CPU
 * g + f_i (u + d), so the most frequent save the most per VRAM byte), and the longest prefix of that
 * ranking that fits the budget is found by bisection on the exact byte count. Then a local search
 * trades: a layer with few cold neurons left is completed (its exchange disappears) when giving up the
 * same number of the least frequent hot neurons elsewhere lowers the modelled time, until no trade
 * helps. Cold neurons are split among the CPU workers in consecutive id ranges of equal expected
 * bytes (g + f_i (u + d)), not equal counts.
 */
#ifndef PI_COMPUTE_PLACEMENT_SOLVE_H
#define PI_COMPUTE_PLACEMENT_SOLVE_H

#include <stdbool.h>
#include <stdint.h>

#include "compute/placement.h"
#include "lib/conf.h"
#include "model/model.h"

/* The machine's speeds the model uses. */
struct pi_place_speeds {
    double gpu_gbs;     /* device read bandwidth, GB/s (> 0) */
    double cpu_gbs;     /* read bandwidth of all CPU workers together, GB/s (> 0) */
    double exchange_us; /* one layer's exchange round trip, us (>= 0) */
};

/* The device bytes of a candidate placement p (exact: the backend's plan), into *bytes; 0 or a
 * negative pi_err (the solver then fails with it). */
typedef int (*pi_place_bytes_fn)(void *ctx, const struct pi_placement *p, uint64_t *bytes);

struct pi_place_problem {
    const pi_model_t *m;
    const float *act_freq;       /* (n_layer, n_ff): each neuron's share of tokens it fires for, in [0, 1] */
    int n_workers;               /* CPU workers (>= 1) */
    uint64_t budget;             /* device bytes the placement may take, as device_bytes counts them */
    pi_place_bytes_fn device_bytes;
    void *ctx;
    struct pi_place_speeds speeds;
    /* Sparse execution (predictors): a CPU worker reads only the gate, up and down rows of its cold
     * neurons that fire, f_i (g + u + d) a neuron, not every gate row. */
    bool sparse;
};

/* The modelled time of a placement, and its parts. */
struct pi_place_cost {
    double t_us;                 /* per token */
    double gpu_us, cpu_us;       /* sums over the layers of gpu_l and cpu_l */
    int n_exchanges;             /* layers with a cold neuron */
    int64_t hot;                 /* hot neurons over all layers */
    double hot_freq_share;       /* the hot neurons' share of all activations (sum f over hot / sum f) */
    uint64_t device_bytes;       /* device_bytes of the placement */
    struct pi_place_speeds speeds; /* the speeds the model used (pi_place_solve_config: cpu_gbs as measured) */
};

/* Solve q: 0 and *out (destroy with pi_placement_destroy) and, when cost is not NULL, its modelled
 * cost; -PI_ERR_INVAL (logged) for a malformed problem (frequencies outside [0, 1] or NaN, no
 * workers, speeds not positive); -PI_ERR_RANGE when not even the placement with no hot neuron fits
 * the budget; another negative pi_err from device_bytes. Deterministic: equal frequencies are ranked
 * by layer, then id. */
int pi_place_solve(const struct pi_place_problem *q, struct pi_placement **out, struct pi_place_cost *cost);

/* The modelled cost of any placement p of q's model (q->budget and q->device_bytes unused unless
 * with_bytes). 0 or a negative pi_err. */
int pi_place_cost(const struct pi_place_problem *q, const struct pi_placement *p, bool with_bytes, struct pi_place_cost *cost);

/* The solver as the pipeline runs it for configuration c (compute/placement.h, pi_placement_choose):
 * the budget [gpu] vram_budget, or without one the bytes the hot fraction's prefix placement takes;
 * bytes counted by the cuda backend's plan for [gpu] backend = cuda (n_seq sequences of n_ctx positions, batches of
 * max_tokens; with pred, not NULL, the predictors the sparse run holds on the device too and the sparse
 * cost model), by the weights otherwise; the [placement] speeds. Logs the plan. 0 and *out (and
 * *cost when not NULL), or a negative pi_err (-PI_ERR_RANGE: nothing fits). */
int pi_place_solve_config(const struct pi_config *c, const pi_model_t *m, const float *act_freq, int n_workers, int n_ctx,
                          int n_seq, int max_tokens, const struct pi_predictors *pred, struct pi_placement **out,
                          struct pi_place_cost *cost);

/* *gbs = the bytes per ns (GB/s) one CPU worker of n_threads threads reads running the decode neuron
 * kernel (pi_ffn_neurons, ReLU) over a synthetic slice of m's layer-0 types about 150 MB large
 * (compute/placement-speed.c): the [placement] cpu_gbs of one worker when it is 0. About 0.2 s.
 * 0, -PI_ERR_NOMEM or -PI_ERR_UNSUPPORTED (a type without a CPU kernel). */
int pi_place_measure_cpu_gbs(const pi_model_t *m, int n_threads, double *gbs);

/* The bytes of one neuron of layer il in the file's types: gate row, up row, down column. */
void pi_place_neuron_bytes(const pi_model_t *m, int il, uint64_t *g, uint64_t *u, uint64_t *d);

/* The weights rule, for a device without a plan of its own: the weights every token needs (token
 * embeddings, the output head unless tied, every layer's attention), and with a placement also each
 * hot neuron's gate row, up row and down column (pi_place_neuron_bytes). */
uint64_t pi_place_fixed_bytes(const pi_model_t *m);
uint64_t pi_place_weights_bytes(const pi_model_t *m, const struct pi_placement *p);

#endif
