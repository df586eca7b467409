/*
 * compute/ffn-policy.h - how a slice of a layer's FFN is computed: densely (whole matrix products over
 * its rows) or neuron by neuron (pi_ffn_neurons: only the active neurons' up and down rows are read).
 * One policy for the single-process forward pass (compute/forward.c), the host backend
 * (compute/backend-host.c) and the CPU workers (cpu-worker/main.c).
 *
 * The rule (batch invariance, doc/design.md): the path is a pure function of the slice's fixed
 * configuration -- dense wherever the slice can be computed densely, neuron by neuron only where it
 * cannot (a packed slice without dense blocks, or the reference mode's missing kernels). It never
 * depends on the number of rows in a batch, on which other rows share the batch, or on what ran
 * before. The two paths round differently (the dense down product quantises the activations to 8 bits;
 * the neuron kernel sums float down rows), so a choice that depended on any of those would make a
 * token's logits depend on its neighbours in the batch or on the split of its prompt into chunks,
 * which continuous batching (issue 19) must not allow.
 *
 * What that cost: until issue 19 a single-token batch of a ReLU layer whose running fraction of active
 * neurons was below 20% went neuron by neuron (the break-even measured on the 1B-class ReLU model,
 * where neuron-wise took 1.75x the dense time at 50% active). The running fraction was shared by every
 * sequence and history-dependent; the measurement of what dropping it costs is in doc/design.md
 * ("Batch invariance"). Predictor masks (compute/sparse.h) and the activation thresholds' dense form
 * (pi_ffn_act_min) are separate: the policy does not consult them.
 */
#ifndef PI_COMPUTE_FFN_POLICY_H
#define PI_COMPUTE_FFN_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/weights.h"

enum pi_ffn_path { PI_FFN_PATH_DENSE, PI_FFN_PATH_NEURONS };

struct pi_ffn_policy {
    enum pi_ffn_act act;
    bool dense_ok;   /* the slice can be computed densely */
    bool neurons_ok; /* every neuron of the slice has its transposed down row (the neuron kernel can run) */
    bool gate_min;   /* activation thresholds are on (pi_ffn_policy_set_gate_min) */
    int n_layer;
};

/* Set up p for n_layer layers of a slice with activation act. At least one of dense_ok and
 * neurons_ok must hold. 0 or -PI_ERR_INVAL. */
int pi_ffn_policy_init(struct pi_ffn_policy *p, enum pi_ffn_act act, int n_layer, bool dense_ok, bool neurons_ok);
void pi_ffn_policy_free(struct pi_ffn_policy *p);

/* Activation thresholds on or off for every layer (off after init). */
void pi_ffn_policy_set_gate_min(struct pi_ffn_policy *p, bool on);

/* The path for layer il over a batch of n_tokens rows: the same for every il and n_tokens of one
 * policy (see the rule above); the arguments stay so that a future rule keyed on the layer alone
 * keeps its callers. */
enum pi_ffn_path pi_ffn_policy_choose(const struct pi_ffn_policy *p, int il, int64_t n_tokens);

#endif
