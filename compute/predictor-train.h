/*
 * compute/predictor-train.h - training the activation predictors of a ReLU or dReLU model on the CPU
 * (pi-train-predictors; method, loss and figures in doc/predictors.md).
 *
 * Two parts:
 *   - samples: while the real forward pass runs over calibration text (compute/forward.c's capture
 *     hook), each layer's FFN inputs x (ffn_norm output, f32) and true masks (ReLU: gate . x > 0;
 *     dReLU: gate > 0 and up > 0) are kept in two bounded reservoirs, a training set and a held-out
 *     set, filled by whole chunks (the caller says which chunk is held out) so that held-out tokens
 *     never share a context with training tokens. Memory: per set, n_layer * cap * (4 n_embd + n_ff / 8)
 *     bytes.
 *   - training, per layer: PowerInfer's shape logits = W2 @ relu(W1 @ x), W1 (r, n_embd),
 *     W2 (n_ff, r), no bias; binary cross-entropy on the logits with the truly active neurons weighted
 *     pos_weight times the others; Adam over shuffled minibatches; early stop on the held-out loss.
 *     Ranks are tried up a ladder (rank_min, 2 rank_min, ... <= rank_max); the first whose predicted
 *     active share at the safe threshold is at most (1 + max_overhead) x the true one is kept, else
 *     the one predicting the fewest. Thresholds: per mode, the largest logit threshold whose held-out
 *     recall reaches 1 - headroom (1 - target), measured with the weights as stored (F16, F32 or
 *     Q8_0) through the same products pi_predictor_eval uses.
 *
 * Where the steps run: an engine (struct pi_ptrain_engine below). The training policy (initial weights,
 * the shuffle, minibatches, Adam's step size, the held-out loss per epoch, early stop, the best weights)
 * is this file's, once; an engine only executes a step, a held-out loss and copies of the weights. The
 * cpu engine runs them on the pool (compute/predictor-train.c); the cuda engine on the GPU through
 * cuBLAS in FP32 (compute/predictor-train-cuda.c, in the module pinfer-cuda.so). Calibration and
 * storing stay on the host for both.
 *
 * Determinism: on the cpu engine, for a seed the result is the same bits whatever the number of threads
 * (every product is pi_sgemm, whose bits do not depend on the pool; every reduction runs in a fixed
 * order on one thread), on one CPU kernel variant (the AVX2 micro-kernel fuses multiply-adds, the scalar
 * one does not). On the cuda engine, the same bits run to run on one GPU model (cuBLAS' FP32 GEMMs are
 * deterministic for one handle and stream; no reduction uses atomics); the two engines agree to rounding
 * (tests/cuda/test-ptrain-cuda), not in bits.
 */
#ifndef PI_COMPUTE_PREDICTOR_TRAIN_H
#define PI_COMPUTE_PREDICTOR_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/cpu/pool.h"
#include "model/model.h"
#include "model/sidecar.h"

enum { PI_PTRAIN_TRAIN = 0, PI_PTRAIN_HELDOUT = 1 };

/* The two reservoirs of one model's samples. Plain data; filled through pi_ptrain_capture. */
struct pi_ptrain_samples {
    int n_layer;
    int64_t n_embd, n_ff, mask_words; /* mask_words = ceil(n_ff / 64) */
    enum pi_ffn_act act;
    int64_t cap[2];    /* rows per set ([PI_PTRAIN_TRAIN], [PI_PTRAIN_HELDOUT]) */
    int64_t n[2];      /* rows filled (<= cap) */
    uint64_t seen[2];  /* tokens offered to each set */
    float *x[2];       /* (n_layer, cap, n_embd) FFN inputs */
    uint64_t *mask[2]; /* (n_layer, cap, mask_words) true masks, bit j of word j / 64 = neuron j */
    uint64_t rng[4];   /* the reservoirs' generator (struct pi_rng's state) */
    int set, rows;     /* the chunk being captured: its set and its rows */
    int64_t *slot;     /* (rows_max) the reservoir row each chunk row goes to, or -1 */
    int rows_max;
};

/* Reservoirs for m (ReLU or dReLU: PI_ASSERT) of n_train and n_heldout rows (>= 1), chunks of at most
 * rows_max tokens, seeded. NULL on no memory (logged). */
struct pi_ptrain_samples *pi_ptrain_samples_new(const pi_model_t *m, int64_t n_train, int64_t n_heldout, int rows_max,
                                                uint64_t seed);
void pi_ptrain_samples_destroy(struct pi_ptrain_samples **s);

/* Before each chunk of rows tokens (<= rows_max) runs: its set, and which reservoir rows its tokens
 * replace (Vitter's algorithm R, one draw per token beyond the reservoir's size). */
void pi_ptrain_samples_chunk(struct pi_ptrain_samples *s, int set, int rows);

/* The forward pass's capture hook (pi_forward_set_capture(f, pi_ptrain_capture, s)): stores the
 * chunk's rows for layer il. n must be the rows announced by pi_ptrain_samples_chunk (PI_ASSERT). */
void pi_ptrain_capture(void *ctx, int il, int n, const float *h, const float *x, const float *gate, const float *up);

/* Where pi_ptrain_layer trains (struct pi_ptrain_opts.device). */
enum pi_ptrain_device {
    PI_PTRAIN_DEVICE_CPU = 0,  /* the pool's threads */
    PI_PTRAIN_DEVICE_CUDA = 1, /* CUDA device 0 through the module pinfer-cuda.so: an error where there is none */
    PI_PTRAIN_DEVICE_AUTO = 2, /* cuda where the module loads and finds a device, else cpu (no error) */
};

/* Called after every epoch: layer, rank, epoch (1-based), held-out loss. */
typedef void (*pi_ptrain_progress_fn)(void *ctx, int il, int64_t rank, int epoch, double loss);

struct pi_ptrain_opts {
    double recall[2];    /* recall targets: [0] safe (0.997), [1] aggressive (0.95) */
    double headroom;     /* thresholds are set where the held-out misses are at most headroom x what the
                            * target allows (0.5; 1: exactly the target): text unlike the calibration
                            * text misses more (doc/predictors.md) */
    int64_t rank_min;    /* the ladder's first rank (32) */
    int64_t rank_max;    /* its last (1024; at most n_embd * 4 and PI_SIDECAR_PRED_RANK_MAX) */
    double max_overhead; /* a rank is enough when its predicted active share at the safe threshold is
                            * at most (1 + max_overhead) x the true one (0.5) */
    int epochs;          /* at most this many epochs per rank (30) */
    int patience;        /* stop after this many epochs without a better held-out loss (2) */
    int batch;           /* minibatch rows (128) */
    float lr;            /* Adam's step (5e-3; beta1 0.9, beta2 0.999, eps 1e-8) */
    float pos_weight;    /* the loss's weight on truly active neurons (4) */
    uint64_t seed;       /* initial weights and minibatch order (1) */
    enum pi_type type;   /* the stored weights: PI_TYPE_F16 (default), F32 or Q8_0 */
    /* where the steps run (PI_PTRAIN_DEVICE_CPU; pi-train-predictors' default is AUTO) */
    enum pi_ptrain_device device;
    pi_ptrain_progress_fn progress;
    void *progress_ctx;
};

void pi_ptrain_opts_default(struct pi_ptrain_opts *o);

/* What training layer il gave besides its predictor. */
struct pi_ptrain_report {
    int64_t ranks_tried; /* ladder steps trained */
    int epochs;          /* epochs of the kept rank */
    double loss;         /* its best held-out loss */
};

/* Train layer il's predictor from s (both sets non-empty: PI_ASSERT) into out (its fc1 and fc2 are
 * allocated; free with pi_sidecar_pred_free), on an engine of o->device made for this call (a caller
 * training every layer makes one with pi_ptrain_engine_new and calls pi_ptrain_layer_on). 0, or
 * -PI_ERR_NOMEM / -PI_ERR_INVAL (bad options) / the engine's error (logged). */
int pi_ptrain_layer(pi_pool_t *pool, const struct pi_ptrain_samples *s, int il, const struct pi_ptrain_opts *o,
                    struct pi_sidecar_pred *out, struct pi_ptrain_report *rep);

/* ---- engines ---- */

/* Adam's constants, the same in every engine. */
#define PI_PTRAIN_ADAM_B1 0.9f
#define PI_PTRAIN_ADAM_B2 0.999f
#define PI_PTRAIN_ADAM_EPS 1e-8f

/* What an engine's read copies out: np = r n_embd + n_ff r floats, W1 (r, n_embd) then W2 (n_ff, r). */
enum pi_ptrain_buf {
    PI_PTRAIN_BUF_W = 0,    /* the weights now */
    PI_PTRAIN_BUF_GRAD = 1, /* the last step's gradient */
    PI_PTRAIN_BUF_BEST = 2, /* the weights of the last save_best (init's, before any) */
};

/* DESIGN. An engine executes what pi_ptrain_layer's policy asks, on the samples s it was made for:
 *   layer(il)              bind layer il's training and held-out sets (the cuda engine uploads both);
 *   init(r, p0)            weights of rank r = p0 (np floats, host), best = p0, Adam's moments zero;
 *   step(idx, nb, lr_t, w) gather training rows idx[0..nb) (nb <= pi_ptrain_step_rows) of the bound
 *                          layer, forward, the weighted BCE's gradient (pos_weight w), backward, then Adam
 *                          with the bias-corrected step lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), computed
 *                          by the caller (t: the rank's steps so far, this one included);
 *   heldout_loss(w, &loss) the mean loss over the bound layer's whole held-out set;
 *   save_best()            best = the weights now;
 *   read(buf, host)        copy a buffer of enum pi_ptrain_buf to the host (np floats);
 *   destroy()              free everything (the struct itself is the caller's).
 * Each returns 0 or a negative enum pi_err, logged by the engine. Calls are sequential: a cuda engine
 * queues the steps without waiting and waits in heldout_loss and read. The cpu engine is today's code
 * exactly (bit-identical results); the cuda engine computes the same formulas (tests/cuda/test-ptrain-cuda
 * compares them). The first block is filled by the engine's constructor: this struct crosses the
 * module's boundary (its size is checked, compute/backend-cuda-module.h). */
struct pi_ptrain_engine {
    void *ctx;      /* the engine's state */
    char desc[192]; /* for messages: "cpu, 16 threads (avx512 GEMM)", "cuda: NVIDIA H100 ..., sm_90, ..." */
    int (*layer)(void *ctx, int il);
    int (*init)(void *ctx, int64_t r, const float *p0);
    int (*step)(void *ctx, const int64_t *idx, int64_t nb, float lr_t, float pos_weight);
    int (*heldout_loss)(void *ctx, float pos_weight, double *loss);
    int (*save_best)(void *ctx);
    int (*read)(void *ctx, int buf, float *host);
    void (*destroy)(void *ctx);
    /* set by pi_ptrain_engine_new */
    enum pi_ptrain_device device; /* CPU or CUDA, never AUTO */
    pi_pool_t *pool;              /* the host's pool (calibration; the cpu engine's products) */
    const struct pi_ptrain_samples *s;
    int64_t batch; /* o->batch: a step takes min(batch, max(training rows, held-out rows)) rows */
};

/* An engine for o->device over s's sets (they may still be empty: the engine reads them when a layer
 * is bound), steps of at most o->batch rows; pool (NULL: one thread) serves the cpu engine and the
 * host's part (calibration). For PI_PTRAIN_DEVICE_AUTO, the cuda engine when the module loads and finds
 * a device, else the cpu engine, the reason appended to its desc (nothing logged where the module or a device is
 * missing; a device that is there but cannot take the sets logs why before the fallback). 0 and *out, or
 * -PI_ERR_NOMEM, or (PI_PTRAIN_DEVICE_CUDA) -PI_ERR_DEVICE / -PI_ERR_UNSUPPORTED / -PI_ERR_NOMEM with
 * the reason logged once ("no CUDA device", "this build has no CUDA", the module's load error, too little
 * device memory for the sets). */
int pi_ptrain_engine_new(pi_pool_t *pool, const struct pi_ptrain_samples *s, const struct pi_ptrain_opts *o,
                         struct pi_ptrain_engine **out);

/* The rows of a training step (and of the cpu engine's held-out batches) on s's sets as filled now:
 * min(batch, max(training rows, held-out rows)). Inline: the module's engine uses it too. */
static inline int64_t pi_ptrain_step_rows(const struct pi_ptrain_samples *s, int64_t batch)
{
    int64_t n = s->n[PI_PTRAIN_TRAIN] > s->n[PI_PTRAIN_HELDOUT] ? s->n[PI_PTRAIN_TRAIN] : s->n[PI_PTRAIN_HELDOUT];
    return batch < n ? batch : n;
}

/* Free the engine and its device memory; accepts NULL; NULLs *e. */
void pi_ptrain_engine_destroy(struct pi_ptrain_engine **e);

/* pi_ptrain_layer on engine e (made with the same o->batch: -PI_ERR_INVAL otherwise). */
int pi_ptrain_layer_on(struct pi_ptrain_engine *e, int il, const struct pi_ptrain_opts *o, struct pi_sidecar_pred *out,
                       struct pi_ptrain_report *rep);

/* ---- exposed for the tests ---- */

/* Mean weighted cross-entropy of W1 (r, d), W2 (n_ff, r) on rows X (n, d) with masks (n, mask_words)
 * (g1, g2 NULL); or its gradients into g1, g2 (same shapes as W1, W2; NaN returned): what one training
 * step descends. */
double pi_ptrain_loss_grad(pi_pool_t *pool, const struct pi_ptrain_samples *s, int64_t r, const float *W1,
                           const float *W2, const float *X, const uint64_t *masks, int64_t n, float pos_weight,
                           float *g1, float *g2);

#endif
