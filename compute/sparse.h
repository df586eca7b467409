/*
 * compute/sparse.h - sparse execution at run time (issue 17; doc/predictors.md, "Runtime"): which
 * predictors a run uses and in which mode, the masked FFN of a packed slice of neurons, and the one
 * place where the telemetry is counted.
 *
 * A mask is uint64 rows, one per token, bit j of word j / 64 set when neuron j of the layer is
 * predicted active (compute/predictor.h). The host backend (its hot slice), the CPU workers (their
 * cold slices) and the single-process forward pass (the whole layer) compute, for each token, exactly
 * the neurons of their slice its row selects, neuron by neuron or densely with the others zeroed
 * (pi_sparse_dense says which); a ReLU model's exact gate sign still decides each computed neuron's
 * output. So what a token computes does not depend on how the tokens are batched: a prompt's token
 * sums its own predicted neurons, as in decode (the two paths round differently).
 *
 * The telemetry (struct pi_sparse_stats): per layer the (token, neuron) pairs predicted active (those
 * computed) and the pairs there were, from which the realised sparsity and the FFN weight bytes skipped
 * (each pair not computed saves its neuron's gate row, up row and down column, pi_place_neuron_bytes);
 * and, on every Nth step ([sparsity] recall_every), the pairs truly active (gate . x > 0, every gate
 * computed) and how many of them were predicted. The GPU worker counts a step's figures and hands them
 * to the coordinator in the exchange's stats section; the forward pass counts its own; pi-ctl status,
 * pi-bench and pi-perplexity read them through the engine.
 */
#ifndef PI_COMPUTE_SPARSE_H
#define PI_COMPUTE_SPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compute/ffn-policy.h"
#include "compute/predictor.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"
#include "lib/conf.h"
#include "model/model.h"
#include "model/sidecar.h"

/* The run's predictors or activation thresholds and its mode for a configured [sparsity] mode over m:
 *   ReLU/dReLU models, predictors (doc/predictors.md):
 *     AUTO: safe when m has predictors, else off; OFF: off (nothing opened); SAFE, AGGRESSIVE: that
 *     mode, refused (-PI_ERR_NOTFOUND) for a model without predictors. The predictors come from
 *     pi_predictors_open(m, sidecar): the trained ones of the sidecar at that path when it has them
 *     (NULL: none), else the model file's.
 *   SwiGLU models, activation thresholds (issue 18, doc/thresholds.md) from the sidecar:
 *     AUTO: safe when the sidecar has thresholds whose calibrated safe sparsity is at least
 *     PI_SPARSE_GATE_AUTO_MIN (a choice, not a measurement: at 60% kept the decode policy goes
 *     dense, compute/ffn-policy.h, where thresholds save nothing, so `safe` would cost quality for no
 *     speed), else off; OFF: off; SAFE, AGGRESSIVE: that mode,
 *     refused (-PI_ERR_NOTFOUND) without thresholds (pi-profile calibrates them).
 * On success *mode is the mode; when it is not off, *pred holds the predictors (pi_predictors_free
 * it; zeroed for thresholds) or *gate_min the thresholds ((n_layer, n_ff) floats, malloc'd: free it;
 * NULL for predictors); line (len bytes) says what was chosen and why, e.g. "sparsity safe
 * (predictors from model, rank 16 to 16)". On failure line is the reason, one sentence. */
#define PI_SPARSE_GATE_AUTO_MIN 0.4f
int pi_sparse_open(const pi_model_t *m, const char *sidecar, enum pi_sparsity_cfg asked, struct pi_predictors *pred,
                   float **gate_min, enum pi_sparsity *mode, char *line, size_t len);

/* The activation thresholds of mode (SAFE or AGGRESSIVE) from the sidecar at path for m: 0 and
 * *gate_min ((n_layer, n_ff) floats, malloc'd) with *info (optional) = the sidecar's figures, or
 * -PI_ERR_NOTFOUND (no sidecar, or one without thresholds), -PI_ERR_FORMAT (a bad sidecar: the
 * reason in err), -PI_ERR_NOMEM. */
struct pi_sparse_gate_info {
    float sparsity, kld, kld_target; /* the calibration's held-out figures for the mode */
};
int pi_sparse_gate_load(const pi_model_t *m, const char *path, enum pi_sparsity mode, float **gate_min,
                        struct pi_sparse_gate_info *info, char *err, size_t errlen);

/* mask words per row for n_ff neurons */
static inline int64_t pi_sparse_mask_words(int64_t n_ff) { return (n_ff + 63) / 64; }

static inline bool pi_sparse_bit(const uint64_t *row, int64_t j) { return (row[j / 64] >> (j % 64)) & 1u; }

/* A slice of a layer's neurons (its ids ascending in [0, n_ff)) as a bitmap over the layer's ids, with
 * each word's rank (how many of the slice's neurons the words before it hold): a token's selection is
 * then the AND of its mask row with the bitmap, walked bit by bit, and a selected neuron's position in
 * the slice (its packed row) is its word's rank plus the bits below it. So selecting costs a pass over
 * the mask words plus one step per selected neuron, not a bit test per neuron of the slice (a
 * 13B-shaped layer's CPU worker: 216 words and about 500 selected, against 11,700 tests per token). */
struct pi_sparse_slice {
    int64_t count;        /* neurons in the slice */
    int64_t words;        /* mask words the bitmap covers: pi_sparse_mask_words(n_ff) */
    const uint64_t *bits; /* (words): bit j % 64 of word j / 64 = neuron j is in the slice */
    const int32_t *rank;  /* (words): the slice's neurons in words 0..q-1, at [q] */
};

/* *out = n_layer slices, layer il's from ids[il] (count[il] ids, ascending, in [0, n_ff); ids[il] may
 * be NULL when count[il] is 0), in one allocation (pi_sparse_slices_free). 0, -PI_ERR_INVAL (ids not
 * ascending or out of range: *out NULL) or -PI_ERR_NOMEM. */
int pi_sparse_slices_new(int n_layer, int64_t n_ff, const int32_t *const *ids, const int64_t *count,
                         struct pi_sparse_slice **out);
void pi_sparse_slices_free(struct pi_sparse_slice **s);

/* How a masked slice of n tokens is computed: neuron by neuron, each token over its own list
 * (pi_sparse_ffn), while the selected (token, neuron) pairs are under PI_SPARSE_LISTS_MAX_SHARE of the
 * slice's (one token: PI_SPARSE_DECODE_DENSE_SHARE); above it densely (every row read once for the
 * batch, the activations of the neurons a token's mask does not select zeroed:
 * pi_partition_ffn_dense_masked, pi_sparse_ffn_dense_layer), which costs the same whatever the masks.
 * One token on the same layer: dense 2.16 ms, lists 2.32 / 1.02 / 0.48 ms at 50 / 20 / 10% selected.
 * Measured (1B-class layer, n_embd 2048, n_ff 5632, Q4_0, this 2-core VM): 64 tokens on one thread,
 * lists 27.6 / 56.0 / 94.5 ms at 5 / 10 / 20% selected, dense 50 to 62 ms; 16 tokens, lists 4.2 / 9.9 /
 * 26.1 ms, dense 12.7 to 15.9 ms; the same on two threads. A third way, the union of the masks through
 * a grouped neuron kernel, lost everywhere (64 tokens, 2 threads: 72 / 71 / 119 ms at 10 / 30 / 50%,
 * dense 60 to 69) and is not kept. Where a slice has no dense form (the host backend's partial hot set
 * over the model's own rows) it goes neuron by neuron.
 * sl: the slice (sl->words == mask_words), or NULL for the whole layer of n_ff neurons; mask (n,
 * mask_words) over the layer's ids. */
#define PI_SPARSE_LISTS_MAX_SHARE 0.12
#define PI_SPARSE_DECODE_DENSE_SHARE 0.45
bool pi_sparse_dense(const uint64_t *mask, int64_t n, int64_t mask_words, const struct pi_sparse_slice *sl, int64_t n_ff);

/* Y (n, d) = for each token t, the FFN of the slice's neurons that mask row t selects, over row t of X,
 * neuron by neuron (pi_ffn_neurons over each token's own list, in ascending neuron order):
 *   L: the layer's rows (ffn_gate, ffn_up, ffn_down_t); the slice sl (count > 0 neurons,
 *   sl->words == mask_words), or NULL for every neuron of L; packed: row i of L is the slice's neuron
 *   of rank i (a packed partition, compute/partition.h), else row j is neuron j (the model's own layer);
 *   X (n, d); mask (n, mask_words) over the layer's ids (bits past the layer's neurons are ignored);
 *   list (the slice's count) int32 scratch; Y (n, d) is overwritten. A ReLU neuron whose gate is not
 *   positive adds nothing (its up and down rows unread).
 * *selected (optional) = the (token, neuron) pairs selected. Returns the pairs whose down row was added. */
int64_t pi_sparse_ffn(pi_pool_t *pool, pi_ffn_work_t *w, const struct pi_layer *L, const struct pi_sparse_slice *sl,
                      bool packed, enum pi_ffn_act act, const float *X, int64_t n, const uint64_t *mask,
                      int64_t mask_words, int32_t *list, float *Y, int64_t *selected);

/* Y (n, d) = the whole layer L's FFN over X (n, d) densely (gate and up products, the activation, the
 * activations of the neurons token t's mask row does not select zeroed, the down product), with the
 * forward pass's kernels (pi_matmul, or pi_matvec for one token). gate, up: (n, n_ff) floats of
 * scratch. Returns the non-zero activations. */
int64_t pi_sparse_ffn_dense_layer(pi_pool_t *pool, const struct pi_layer *L, enum pi_ffn_act act, const float *X, int64_t n,
                                  const uint64_t *mask, int64_t mask_words, float *gate, float *up, float *Y);

/* ---- telemetry ---- */

/* One layer's counts; the wire order of the exchange's stats section (PI_SPARSE_FIELDS uint64s). */
struct pi_sparse_layer {
    uint64_t predicted;   /* (token, neuron) pairs predicted active: computed */
    uint64_t pairs;       /* (token, neuron) pairs through the layer with predictors on */
    uint64_t recall_true; /* on recall steps: pairs truly active (gate . x > 0) */
    uint64_t recall_hit;  /* of those, predicted active */
};
#define PI_SPARSE_FIELDS 4

struct pi_sparse_stats {
    int n_layer;
    int64_t n_ff;
    uint64_t *neuron_bytes;          /* (n_layer): gate row + up row + down column of one neuron */
    uint64_t *skip_bytes;            /* (n_layer): what a pair not computed saves: all of neuron_bytes
                                      * with predictors; up row + down column with activation thresholds,
                                      * whose gate row is read to decide (pi_sparse_stats_gated) */
    struct pi_sparse_layer *layers;  /* (n_layer) */
};

/* For m's shape. 0 or -PI_ERR_NOMEM. */
int pi_sparse_stats_init(struct pi_sparse_stats *s, const pi_model_t *m);
/* Count s as activation thresholds do: a skipped pair saves its up row and down column only. */
void pi_sparse_stats_gated(struct pi_sparse_stats *s, const pi_model_t *m);
void pi_sparse_stats_free(struct pi_sparse_stats *s);
void pi_sparse_stats_clear(struct pi_sparse_stats *s);

/* Layer il computed n tokens with `predicted` (token, neuron) pairs predicted active. */
void pi_sparse_note(struct pi_sparse_stats *s, int il, int64_t n, int64_t predicted);

/* Of the pairs of layer il already noted as computed, `skipped` were not computed after all: the GPU
 * worker's hot neurons under activation thresholds, whose backend reports them at the end of a step
 * (compute/backend.h, ffn_hot_skipped). Clamped to what was noted (a count from a device is not trusted
 * to be consistent). */
void pi_sparse_note_skipped(struct pi_sparse_stats *s, int il, int64_t skipped);

/* Recall of layer il's masks: the true activity of all n_ff neurons over X (n, d) (m's ffn_gate, and
 * for dReLU also ffn_up, through pi_matvec/pi_matmul: the inference rounding; active: gate > 0, and
 * for dReLU up > 0 too, as the trainer counts it), compared with mask (n, mask_words); counted into
 * s. gate: (n, n_ff) floats of scratch; up: the same, used only when m's activation is dReLU. */
void pi_sparse_recall(struct pi_sparse_stats *s, pi_pool_t *pool, const pi_model_t *m, int il, const float *X, int64_t n,
                      const uint64_t *mask, int64_t mask_words, float *gate, float *up);

/* dst += src, dst -= src (same shape; sub: src counted before dst, every count of dst at least src's);
 * add also takes src's way of counting bytes (skip_bytes). */
void pi_sparse_stats_add(struct pi_sparse_stats *dst, const struct pi_sparse_stats *src);
void pi_sparse_stats_sub(struct pi_sparse_stats *dst, const struct pi_sparse_stats *src);

/* The counts as the exchange's stats section carries them: w (n_layer, PI_SPARSE_FIELDS). */
void pi_sparse_stats_to_wire(const struct pi_sparse_stats *s, uint64_t *w);

/* Add counts read from another process (w as above) for a step of n_tokens tokens: a layer whose
 * counts break the invariants (predicted <= pairs <= n_tokens * n_ff, hit <= true <= pairs) is not
 * added. Returns the number of such layers (0: all taken). */
int pi_sparse_stats_add_wire(struct pi_sparse_stats *s, const uint64_t *w, int64_t n_tokens);

/* The figures of layer il, or of all layers for il < 0. */
struct pi_sparse_summary {
    uint64_t pairs;         /* 0: no step ran with predictors */
    double sparsity;        /* share of pairs not computed */
    uint64_t bytes_total;   /* FFN weight bytes a dense run would have read for these pairs, per token */
    uint64_t bytes_skipped; /* of those, what the pairs not computed saved (skip_bytes) */
    uint64_t recall_true;   /* 0: recall not measured */
    double recall;          /* recall_hit / recall_true */
};
void pi_sparse_summary(const struct pi_sparse_stats *s, int il, struct pi_sparse_summary *out);

#endif
