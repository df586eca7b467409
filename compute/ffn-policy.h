/*
 * compute/ffn-policy.h - how a slice of a layer's FFN is computed: densely (whole matrix products over
 * its rows) or neuron by neuron (pi_ffn_neurons: only the active neurons' up and down rows are read).
 * One policy for the single-process forward pass (compute/forward.c), the host backend
 * (compute/backend-host.c) and the CPU workers (cpu-worker/main.c); later issues add the predictor
 * and activation thresholds here.
 *
 * The rule: the neuron-wise path pays per active neuron (its down row, float multiply-adds) what the
 * dense FFN (whole matrices, int8 dot products) pays for all neurons: measured on the 1B-class ReLU
 * model with 50% active, neuron-wise took 1.75x the dense time, which puts the break-even near 20%
 * active (PI_FFN_DENSE_MIN_ACTIVE). So a ReLU/dReLU slice goes neuron by neuron for one token while
 * the running fraction of its active neurons is below that; a SwiGLU slice (no exact zeros to skip)
 * and a batch of tokens (the matrix product amortises each weight over the rows) always go dense.
 * The running fraction starts with no history at the start of each sequence, so a request's choices do
 * not depend on the requests before it.
 *
 * Activation thresholds (issue 18, kernels/cpu/ops.h pi_ffn_gate_skip) give a SwiGLU slice neurons to
 * skip too: every gate row is still read, and only the neurons above the threshold cost their up row
 * and down column, so its break-even is its own: PI_FFN_GATE_DENSE_MIN_ACTIVE, not measured yet (a
 * choice from the ReLU figure above: the neuron path's up and down cost about 1.75x their dense share
 * per neuron, so it pays while fewer than about 1 / 1.75 of the neurons are kept; doc/thresholds.md).
 */
#ifndef PI_COMPUTE_FFN_POLICY_H
#define PI_COMPUTE_FFN_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/weights.h"

#define PI_FFN_DENSE_MIN_ACTIVE 0.2f
#define PI_FFN_GATE_DENSE_MIN_ACTIVE 0.6f

enum pi_ffn_path { PI_FFN_PATH_DENSE, PI_FFN_PATH_NEURONS };

struct pi_ffn_policy {
    enum pi_ffn_act act;
    bool dense_ok;   /* the slice can be computed densely */
    bool neurons_ok; /* every neuron of the slice has its transposed down row (the neuron kernel can run) */
    bool gate_min;   /* activation thresholds are on (pi_ffn_policy_set_gate_min) */
    int n_layer;
    float *recent;   /* (n_layer): running fraction of active neurons; < 0: no history */
};

/* Set up p for n_layer layers of a slice with activation act. At least one of dense_ok and
 * neurons_ok must hold. 0 or -PI_ERR_NOMEM / -PI_ERR_INVAL. */
int pi_ffn_policy_init(struct pi_ffn_policy *p, enum pi_ffn_act act, int n_layer, bool dense_ok, bool neurons_ok);
void pi_ffn_policy_free(struct pi_ffn_policy *p);

/* Activation thresholds on or off for every layer (off after init). */
void pi_ffn_policy_set_gate_min(struct pi_ffn_policy *p, bool on);

/* Forget the history of layer il (il < 0: every layer): a new sequence starts. */
void pi_ffn_policy_reset(struct pi_ffn_policy *p, int il);

/* The path for layer il over a batch of n_tokens rows. */
enum pi_ffn_path pi_ffn_policy_choose(const struct pi_ffn_policy *p, int il, int64_t n_tokens);

/* Record that a call on layer il found `active` non-zero (token, neuron) activations of `total`:
 * the running fraction becomes active/total on the first call, then 0.9 of itself plus 0.1 of it. */
void pi_ffn_policy_observe(struct pi_ffn_policy *p, int il, int64_t active, int64_t total);

#endif
