/*
 * compute/predictor.h - the per-layer activation predictors of a ReLU model: which FFN neurons will
 * fire for a token, decided from the layer's FFN input before any FFN weight is read. PowerInfer's
 * shape (arXiv 2312.12456, section 5.1): logits (n_ff) = fc2 @ relu(fc1 @ x), neuron j predicted
 * active iff logits[j] >= the layer's threshold; x is the ffn_norm output, the same rows the exchange
 * carries (ipc/exchange.h).
 *
 * Where they come from (one set per model, picked by pi_predictors_open; sidecar weights are copied
 * into memory the set owns, the model file's stay in its mapping):
 *   - the model's sidecar (MODEL.pinfer.gguf; pi-train-predictors writes them: per-layer rank chosen
 *     for a recall target, one threshold per sparsity mode), when it has them;
 *   - else the model file itself (PowerInfer's PWRI files carry blk.N.fc1/fc2; the threshold is the
 *     file's powerinfer.sparse_threshold, or 0, for every mode).
 *
 * What uses them: the GPU worker's backends (they evaluate layer l's predictor right after attention
 * and publish the mask with x), and the single-process forward pass. The mask only narrows the
 * neurons computed: for a ReLU model the exact gate sign still decides each computed neuron's output.
 */
#ifndef PI_COMPUTE_PREDICTOR_H
#define PI_COMPUTE_PREDICTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/pool.h"
#include "lib/weights.h"
#include "model/model.h"
#include "model/sidecar.h"

/* The sparse modes (--sparsity, [sparsity] mode): off is dense; safe uses each layer's trained
 * threshold; aggressive a lower recall target (doc/predictors.md). */
enum pi_sparsity { PI_SPARSITY_OFF = 0, PI_SPARSITY_SAFE = 1, PI_SPARSITY_AGGRESSIVE = 2 };
#define PI_SPARSITY_MODES 3

/* "off", "safe", "aggressive" -> *out; 0 or -PI_ERR_INVAL. */
int pi_sparsity_parse(const char *s, enum pi_sparsity *out);
const char *pi_sparsity_name(enum pi_sparsity s);

struct pi_predictor_layer {
    int64_t rank;           /* 0: this layer has no predictor (every neuron is predicted active) */
    struct pi_weight fc1;   /* (rank, n_embd) */
    struct pi_weight fc2;   /* (n_ff, rank) */
    float threshold[PI_SPARSITY_MODES]; /* logit threshold per mode ([OFF] unused) */
};

struct pi_predictors {
    int n_layer;
    int64_t n_embd, n_ff;
    int64_t rank_max;                  /* the largest rank */
    struct pi_predictor_layer *layers; /* (n_layer) */
    char source[16];                   /* "model" or "sidecar" */
    /* What the predictors read: true, the layer's residual stream h before ffn_norm (PowerInfer's
     * convention: its llama and bamboo graphs feed fc1 ffn_inp, not the norm's output; the model file's
     * fc1/fc2 follow it); false, the ffn_norm output x (the sidecar's, trained by pi-train-predictors on
     * the rows the exchange carries). pi_predictor_input picks the rows. */
    bool on_residual;
    void *owned;                       /* memory this set owns (layers, copied weights), or NULL */
};

/* The rows a set's predictors read (on_residual): h, the residual stream before ffn_norm, or x, the
 * ffn_norm output, both (n, n_embd) of the same tokens. */
static inline const float *pi_predictor_input(const struct pi_predictors *p, const float *h, const float *x)
{
    return p->on_residual ? h : x;
}

/* The predictors the model file itself carries (blk.N.fc1/fc2, bound in m's mapping: m must outlive
 * out), which read the residual stream as PowerInfer's do (on_residual). Every layer must have them.
 * 0, -PI_ERR_NOTFOUND (the file has none; out is zeroed) or -PI_ERR_NOMEM / -PI_ERR_UNSUPPORTED (a type
 * the CPU kernels lack). */
int pi_predictors_from_model(const pi_model_t *m, struct pi_predictors *out);

/* The predictors a sidecar carries (s->pred, with their weights: pi_sidecar_load_pred): the set owns copies of the
 * weights (one allocation with its layers), so s may be destroyed at once; threshold[SAFE] and
 * [AGGRESSIVE] are the sidecar's, [OFF] the safe one. 0, -PI_ERR_NOTFOUND (s has none; out zeroed),
 * -PI_ERR_NOMEM. */
int pi_predictors_from_sidecar(const struct pi_sidecar *s, struct pi_predictors *out);

/* The model's predictors: the sidecar's at sidecar_path when that file exists and has predictors,
 * else the model file's (pi_predictors_from_model), else -PI_ERR_NOTFOUND. sidecar_path NULL: the
 * model file only. A sidecar that exists but is malformed or another model's is an error
 * (-PI_ERR_FORMAT, logged with its reason), never silently skipped. */
int pi_predictors_open(const pi_model_t *m, const char *sidecar_path, struct pi_predictors *out);

void pi_predictors_free(struct pi_predictors *p);

/* Floats of scratch pi_predictor_eval needs for n tokens: n * (rank_max + n_ff). */
size_t pi_predictor_scratch(const struct pi_predictors *p, int64_t n);

/* mask (n, mask_words) uint64 rows = layer il's prediction for each row of X (n, n_embd): bit j of word
 * j / 64 of row t set iff neuron j is predicted active for token t at mode's threshold (mode != OFF);
 * bits past n_ff are cleared. A layer without a predictor sets every bit below n_ff. mask_words >=
 * ceil(n_ff / 64). fc1 and fc2 go through pi_matvec (n = 1) or pi_matmul, so the logits carry the
 * weight types' activation rounding. Returns the number of (token, neuron) pairs predicted active. */
int64_t pi_predictor_eval(pi_pool_t *pool, const struct pi_predictors *p, int il, enum pi_sparsity mode,
                          const float *X, int64_t n, float *scratch, uint64_t *mask, int64_t mask_words);

#endif
