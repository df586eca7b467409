/*
 * compute/thresholds.h - activation thresholds for SwiGLU models (issue 18; doc/thresholds.md): the
 * calibration that chooses, for every layer, the |silu(gate)| at or under which a neuron is skipped
 * (kernels/cpu/ops.h, pi_ffn_gate_skip: its up row and down column are not read, as in CATS, arXiv
 * 2404.08763), one set of thresholds per [sparsity] mode, stored in the model's sidecar.
 *
 * The calibration (pi_thr_calibrate), over chunks of a calibration text, each starting with BOS:
 *  1. Capture. The chunks but the held-out ones run dense through the inference forward pass with its
 *     capture hook; up to sample_tokens tokens, evenly spaced, keep per layer |silu(gate)| and the
 *     activation silu(gate) * up of every neuron and the squared norm of the residual entering the FFN.
 *  2. The grid. Per layer, thresholds t(k) = the k / PI_THR_LEVELS quantile of the sampled
 *     |silu(gate)|, k = 0 .. PI_THR_LEVELS - 1 (t(0) = 0: nothing skipped), and the measured output
 *     error of each: e(k) = sum over the samples of |ffn_down @ (the activations t(k) skips)|^2 over the
 *     sum of the residuals' |h|^2, through the model's own down weights and kernels.
 *  3. The greedy allocation (TEAL, arXiv 2408.14690): from every layer at level 0, raise one level at a
 *     time the layer whose weighted error grows least, until all are at the top. The weight is the
 *     layer's sensitivity, measured: the held-out KLD with that layer alone at 20% over its local error
 *     there (an early layer's error is amplified by every layer after it; TEAL's local errors alone
 *     put the first steps in the layers that cost the most). Each layer's FFN weighs the same,
 *     so every step skips the same share of the model's FFN pairs: a path of n_layer * (LEVELS - 1)
 *     steps of growing sparsity, each a set of thresholds.
 *  4. The modes. The held-out chunks ran dense once (their log-probabilities kept, before step 3);
 *     for each mode a bisection along the path finds the last step whose thresholds keep the
 *     held-out mean KL divergence against dense within margin * kld_target (and, for safe, the same
 *     top token at least top1_min of the positions), or, with a sparsity target, the step that
 *     reaches it. The second half of each chunk is scored, as llama-perplexity and pi-perplexity
 *     score it.
 * Thresholds are stored per neuron; the score is |silu(gate)| today, so a layer's neurons share one.
 * The result is deterministic for its inputs and thread count (the forward pass's sums are).
 */
#ifndef PI_COMPUTE_THRESHOLDS_H
#define PI_COMPUTE_THRESHOLDS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "model/model.h"
#include "model/sidecar.h"

#define PI_THR_LEVELS 20 /* grid steps per layer: 0, 5, ..., 95% of its sampled pairs */

struct pi_thr_opts {
    int n_threads;       /* the forward pass's threads (>= 1) */
    float kld_target[2]; /* [0] safe, [1] aggressive: the held-out mean KLD each aims under */
    float top1_min[2];   /* the share of held-out positions keeping the dense top token (0: none) */
    float margin;        /* in (0, 1]: the share of the target the calibration's own held-out text may use,
                          * room for a text that differs from it */
    int sample_tokens;   /* per layer, for the grid and its errors (>= 16) */
    int held_out_chunks; /* chunks kept for step 4 (>= 1, fewer than the chunks) */
    float sparsity[2];   /* > 0: mode k takes the first step of the path skipping at least this share of
                          * the pairs instead of searching by KLD (random-weight models, whose quality
                          * means nothing: benchmarks); the held-out figures are still measured;
                          * with both set, step 3's sensitivities are not measured (all 1) */
    FILE *progress;      /* progress lines (prefixed with prog), or NULL */
    const char *prog;
};

/* Defaults for n_chunks chunks of ctx tokens and a vocabulary of n_vocab: targets 0.01 / 0.03 (about
 * one llama.cpp quantisation step, q5_K_M and q4_K_M on Llama-3-8B), safe keeps the top token at 97%
 * of the positions, margin 0.7, 256 samples, one chunk in four held out (at least one) but no more
 * than 4096 scored positions whose dense log-probabilities fit in 256 MiB, 1 thread, no progress. */
void pi_thr_opts_default(struct pi_thr_opts *o, int n_chunks, int ctx, int n_vocab);

struct pi_thr_result {
    int n_layer;
    float *gate_min;       /* (n_layer, 2, n_ff): neuron j of layer il's |silu(gate)| thresholds, safe at
                            * [(2 il) n_ff + j], aggressive at [(2 il + 1) n_ff + j] */
    float kld[2];          /* held-out mean KLD at the chosen thresholds */
    float top1[2];         /* held-out share of positions keeping the dense top token */
    float sparsity[2];     /* held-out share of FFN (token, neuron) pairs skipped */
    float *layer_sparsity; /* (n_layer, 2): the same per layer, safe at [2 il], aggressive at [2 il + 1] */
    uint64_t tokens[2];    /* tokens the capture ran over, held-out positions counted */
};

/* Calibrate m (a SwiGLU model, its weights bound with ffn_down_t) over n_chunks chunks of ctx tokens
 * (chunks (n_chunks, ctx), each already starting with BOS; ctx >= 2 and at most the model's context).
 * 0 and *out (pi_thr_result_free it), or -PI_ERR_INVAL (bad options, too few chunks: at least one
 * besides the held-out ones; logged), -PI_ERR_NOMEM. */
int pi_thr_calibrate(const pi_model_t *m, const int32_t *chunks, int n_chunks, int ctx, const struct pi_thr_opts *o,
                     struct pi_thr_result *out);
void pi_thr_result_free(struct pi_thr_result *r);

/* Move r's thresholds into sidecar s (model/sidecar.h: gate_min, gate_sparsity and the
 * pinfer.threshold keys, with o's KLD targets), replacing any it had; r is left empty. s must be for
 * r's model (PI_ASSERT on the layers). */
void pi_thr_result_to_sidecar(struct pi_thr_result *r, const struct pi_thr_opts *o, struct pi_sidecar *s);

#endif
