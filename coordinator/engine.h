/*
 * coordinator/engine.h - what the coordinator's generation loop runs a batch on: either the
 * single-process forward pass in the coordinator itself (`--gpu-backend none`) or the process
 * pipeline (pi-gpu-worker plus the CPU workers, coordinator/pipeline.h). Both look the same to
 * coordinator/generate.c: tokens of one sequence at consecutive positions in, logits out.
 */
#ifndef PI_COORDINATOR_ENGINE_H
#define PI_COORDINATOR_ENGINE_H

#include <stdint.h>

#include "compute/predictor.h"
#include "compute/sparse.h"
#include "model/model.h"

typedef struct pi_engine pi_engine_t;

struct pi_engine_ops {
    /* Evaluate tokens (n, 1 <= n <= max_batch) of sequence 0 at positions pos0.. (pos0 = the cached
     * length); logits (n_out, n_vocab) = the last n_out rows, n_out in {0, 1, n}. 0 or -PI_ERR_*. */
    int (*eval)(pi_engine_t *e, const int32_t *tokens, int n, int pos0, float *logits, int n_out);
    /* Forget sequence 0 (the next eval starts at position 0). */
    int (*reset)(pi_engine_t *e);
    void (*destroy)(pi_engine_t *e);
    /* Optional (NULL: always dense): out (pi_sparse_stats_init'ed for the model) += the sparse
     * execution's counts since the engine was made (compute/sparse.h). 0, or -PI_ERR_NOTFOUND when the
     * engine runs dense. Safe from another thread while a batch runs (pi-ctl status). */
    int (*sparse_stats)(pi_engine_t *e, struct pi_sparse_stats *out);
    /* Optional (NULL: only reset): keep the first n positions of sequence 0 (0 <= n <= its cached
     * length) and forget the rest, so the next eval continues at pos0 = n. 0 or -PI_ERR_*. */
    int (*truncate)(pi_engine_t *e, int n);
};

/* Every engine struct starts with this. */
struct pi_engine {
    const struct pi_engine_ops *ops;
    int n_vocab;
    int max_batch; /* tokens per eval */
    int n_ctx;     /* positions of sequence 0 */
};

/* The in-process engine over m (borrowed): the single-process forward pass with n_threads threads
 * and a context of n_ctx positions (0: the model's); with mode not off, sparse: with pred (borrowed;
 * its layers set) through its predictors (pi_forward_set_sparse, the recall every recall_every
 * steps), or with gate_min (borrowed, (n_layer, n_ff)) through activation thresholds
 * (pi_forward_set_gate_min). NULL on failure (logged). */
pi_engine_t *pi_engine_local_new(const pi_model_t *m, int n_threads, int n_ctx, const struct pi_predictors *pred,
                                 const float *gate_min, enum pi_sparsity mode, int64_t recall_every);

/* e's sparse counts into out (see sparse_stats): 0, or -PI_ERR_NOTFOUND for a dense engine. */
int pi_engine_sparse_stats(pi_engine_t *e, struct pi_sparse_stats *out);

/* Keep the first n positions of e's sequence 0 (n == 0 is reset). 0, -PI_ERR_UNSUPPORTED when the
 * engine cannot truncate (the caller resets and evaluates again), or the engine's error. */
int pi_engine_truncate(pi_engine_t *e, int n);

/* Destroy any engine; accepts NULL; nulls the caller's pointer. */
void pi_engine_destroy(pi_engine_t **e);

#endif
