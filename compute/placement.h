/*
 * compute/placement.h - how many FFN neurons of every layer are hot (computed by the GPU worker):
 * the rule every process of a pipeline follows (doc/pipeline.md, "Placement").
 */
#ifndef PI_COMPUTE_PLACEMENT_H
#define PI_COMPUTE_PLACEMENT_H

#include <stdint.h>

#include "lib/conf.h"
#include "model/model.h"

/* Hot neurons per layer (ids 0..k-1) for configuration c and model m, with a context of n_ctx
 * positions and batches of up to max_tokens rows:
 *   - no VRAM budget: k = round(hot_fraction * n_ff);
 *   - a budget and the cuda backend (in a build with it): the largest k whose exact device plan
 *     (pi_backend_cuda_plan: weights, hot rows, KV cache, activations, scratch, as the GPU worker
 *     will compute it) fits the budget; every neuron when that fits;
 *   - a budget otherwise: as many as fit after the attention, embedding and output weights, each
 *     neuron costing its gate row, up row and down column in the file's types.
 * 0 when nothing fits (the GPU worker then refuses with the figures). */
int64_t pi_coord_choose_hot(const struct pi_config *c, const pi_model_t *m, int n_ctx, int max_tokens);

#endif
