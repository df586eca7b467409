/*
 * model/sidecar.h - the per-model sidecar file, MODEL.pinfer.gguf: what pinfer has learned about one
 * model file (activation statistics now; predictors and thresholds later), bound to that file by its
 * identity so that statistics are never applied to another model.
 *
 * The sidecar is a GGUF (written with the GGUF writer, read with the hardened reader: it is untrusted
 * input like any model file). Layout, version 1 (doc/locality.md, "The sidecar"):
 *
 *   general.architecture      string  "pinfer.sidecar"
 *   pinfer.sidecar.version    u32     1
 *   pinfer.model.size         u64     the model file's size in bytes
 *   pinfer.model.hash         u64     pi_sidecar_identity()'s hash of the model's tensors
 *   pinfer.model.n_layer      u32     the model's layers   (checked: a clearer message than the hash)
 *   pinfer.model.n_ff         u32     its FFN neurons per layer
 *   pinfer.profile.tokens     u64     tokens the statistics were measured over
 *   blk.N.act_freq            F32[n_ff]     per neuron, the share of profiled tokens with it active
 *                                           (ReLU/dReLU: gate output > 0); every layer or none
 *   blk.N.act_hist            F32[PI_SIDECAR_HIST_BINS]  per layer, the share of (token, neuron) pairs
 *                                           whose |act(gate) * up| falls in each bin (below); every
 *                                           layer or none (SwiGLU models; ReLU models too)
 *
 * Histogram bins (fixed by the version; the keys pinfer.profile.hist_log2_min and
 * pinfer.profile.hist_log2_step record them and are checked): bin 0 holds |a| < 2^MIN (exact zeros
 * included), bin b in 1..BINS-2 holds 2^(MIN + (b-1)*STEP) <= |a| < 2^(MIN + b*STEP), the last bin
 * everything larger.
 *
 * Predictors (pi-train-predictors; doc/predictors.md), every layer or none, their own version key:
 *   pinfer.predictor.version        u32   1
 *   pinfer.predictor.recall_target  f32[2] held-out recall targets: safe, aggressive
 *   pinfer.predictor.samples        u64[2] training and held-out tokens per layer
 *   pinfer.predictor.seed           u64   the training seed
 *   blk.N.fc1.weight    F32/F16/Q8_0 ne {n_embd, r}  (PowerInfer's name and layout; r per layer)
 *   blk.N.fc2.weight    the same type ne {r, n_ff}
 *   blk.N.fc_threshold  F32[2]  logit thresholds: safe, aggressive (finite)
 *   blk.N.fc_recall     F32[2]  held-out recall at them, in [0, 1]
 *   blk.N.fc_active     F32[3]  held-out shares: predicted active (safe, aggressive), truly active
 *
 * Activation thresholds (SwiGLU models, issue 18; doc/thresholds.md), every layer or none, their own
 * version key:
 *   pinfer.threshold.version     u32    1
 *   pinfer.threshold.kld_target  f32[2] the held-out mean KLD against dense each mode was calibrated to
 *   pinfer.threshold.kld         f32[2] the held-out mean KLD measured at the chosen thresholds
 *   pinfer.threshold.sparsity    f32[2] the held-out share of (token, neuron) pairs skipped
 *   pinfer.threshold.tokens      u64[2] calibration and held-out tokens
 *   blk.N.gate_threshold F32[2 n_ff]  per neuron the |act(gate)| at or under which it is skipped: the
 *                                layer's n_ff safe thresholds, then its n_ff aggressive ones (finite, >= 0)
 *   blk.N.gate_sparsity  F32[2]  the held-out share of the layer's pairs skipped: safe, aggressive
 *
 * Extension: keys and tensors this version does not know are ignored by the reader and carried over
 * by pi_sidecar_save when it rewrites an existing sidecar of the same model, so a later tool (a
 * predictor trainer) can add its tensors without this module losing them when pi-profile runs again.
 */
#ifndef PI_MODEL_SIDECAR_H
#define PI_MODEL_SIDECAR_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

#define PI_SIDECAR_VERSION 1
#define PI_SIDECAR_HIST_BINS 64
#define PI_SIDECAR_HIST_LOG2_MIN (-20.0f)
#define PI_SIDECAR_HIST_LOG2_STEP 0.5f
/* What the identity hash reads of each tensor's data: this many samples of this many bytes. */
#define PI_SIDECAR_ID_SAMPLES 8
#define PI_SIDECAR_ID_SAMPLE_BYTES 64

#define PI_SIDECAR_PRED_VERSION 1
#define PI_SIDECAR_THRESHOLD_VERSION 1
#define PI_SIDECAR_PRED_RANK_MAX 16384 /* the largest rank a sidecar may declare */

/* One layer's trained predictor: logits (n_ff) = fc2 @ relu(fc1 @ x). */
struct pi_sidecar_pred {
    int64_t rank;       /* 1..PI_SIDECAR_PRED_RANK_MAX */
    enum pi_type type;  /* PI_TYPE_F32, F16 or Q8_0 (Q8_0: n_embd and rank multiples of 32) */
    void *fc1;          /* (rank, n_embd) rows of type (GGUF ne {n_embd, rank}); owned; NULL when
                         * loaded by pi_sidecar_load (pi_sidecar_load_pred copies them) */
    void *fc2;          /* (n_ff, rank) rows of type (GGUF ne {rank, n_ff}); owned; NULL likewise */
    float threshold[2]; /* logit thresholds: [0] safe, [1] aggressive */
    float recall[2];    /* held-out recall at them */
    float active[3];    /* held-out shares: predicted active at [0] safe, [1] aggressive; [2] truly active */
};

/* Free p's weights and zero it; accepts NULL. */
void pi_sidecar_pred_free(struct pi_sidecar_pred *p);

struct pi_sidecar {
    int n_layer, n_ff;
    int64_t n_embd;               /* the model's (shapes of the predictors) */
    uint64_t tokens;              /* tokens the statistics were measured over */
    float *act_freq;              /* (n_layer, n_ff): share of profiled tokens with the neuron active, or NULL */
    int n_hist;                   /* PI_SIDECAR_HIST_BINS when act_hist is set, else 0 */
    float *act_hist;              /* (n_layer, n_hist): share of (token, neuron) pairs per |activation| bin, or NULL */
    struct pi_sidecar_pred *pred; /* (n_layer) trained predictors, or NULL (owned) */
    float pred_target[2];         /* their recall targets: safe, aggressive */
    uint64_t pred_samples[2];     /* training and held-out tokens per layer */
    uint64_t pred_seed;
    float *gate_min;         /* (n_layer, 2, n_ff): per layer its safe, then its aggressive thresholds, or
                              * NULL (owned) */
    float *gate_sparsity;    /* (n_layer, 2): per layer the held-out share skipped; set with gate_min */
    float thr_kld_target[2]; /* the keys of the thresholds (layout above), by mode */
    float thr_kld[2];
    float thr_sparsity[2];
    uint64_t thr_tokens[2];
};

/* A model file's identity: its size and a 64-bit hash that is cheap even for a 40 GB file. The hash is
 * FNV-1a (64-bit) over, for each tensor in file order: its name, type (u32), n_dims (u32), ne[0..3]
 * (u64 each), byte count (u64), then PI_SIDECAR_ID_SAMPLES samples of min(64, bytes) bytes of its data
 * at evenly spaced offsets floor(k * (bytes - len) / (SAMPLES - 1)), k = 0..SAMPLES-1 (first and last
 * bytes included). Integers are hashed little-endian. About 512 bytes a tensor: a 7B model reads
 * 150 KB of its weights. A change of one weight outside the samples goes unnoticed; a requantised,
 * retrained or reshaped model does not. */
struct pi_model_identity {
    uint64_t size;
    uint64_t hash;
};

/* The identity of g's file (g validated by pi_gguf_open). */
void pi_sidecar_identity(const pi_gguf_t *g, struct pi_model_identity *id);

/* out (len bytes) = the default sidecar path of model_path: MODEL.pinfer.gguf, where MODEL is
 * model_path without a trailing ".gguf". 0, or -PI_ERR_RANGE when it does not fit. */
int pi_sidecar_path(const char *model_path, char *out, size_t len);

/* A zeroed sidecar for m's shape (n_layer, n_ff) with act_freq allocated (zeros) when with_freq and
 * act_hist when with_hist. NULL on no memory. */
struct pi_sidecar *pi_sidecar_new(const pi_model_t *m, bool with_freq, bool with_hist);

/* Read and validate the sidecar at path for model m. Returns 0 and *out; or *out NULL and
 * -PI_ERR_NOTFOUND when there is no file at path, -PI_ERR_FORMAT when the file is malformed or made for
 * another model (err holds the reason, one line, without the path), -PI_ERR_IO / -PI_ERR_NOMEM.
 * Nothing is logged: reporting is the caller's. */
int pi_sidecar_load(const char *path, const pi_model_t *m, struct pi_sidecar **out, char *err, size_t errlen);

/* The same, with the predictors' weights copied too (pi_sidecar_load validates them but leaves fc1 and
 * fc2 NULL, so that a reader of the statistics, pi-coordinator, does not copy a 7B model's 1 GB of
 * predictors). */
int pi_sidecar_load_pred(const char *path, const pi_model_t *m, struct pi_sidecar **out, char *err, size_t errlen);

/* Write s for model m to path, atomically (its shape must be m's: PI_ASSERT). Keys and tensors of an
 * existing valid sidecar of the same model at path that s does not define are carried over. 0 or a
 * negative pi_err (logged). */
int pi_sidecar_save(const char *path, const pi_model_t *m, const struct pi_sidecar *s);

/* Free; accepts NULL; NULLs the caller's pointer. */
void pi_sidecar_destroy(struct pi_sidecar **s);

/* The histogram bin of an activation magnitude a >= 0 (see the layout above). */
int pi_sidecar_hist_bin(float a);

#endif
