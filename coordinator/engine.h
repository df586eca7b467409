/*
 * coordinator/engine.h - what the coordinator's generation loop runs a batch on: either the
 * single-process forward pass in the coordinator itself (`--gpu-backend none`) or the process
 * pipeline (pi-gpu-worker plus the CPU workers, coordinator/pipeline.h). Both look the same to
 * their callers: a batch of tokens of one or several sequences in (each token with its sequence and
 * position), the logits of the chosen rows out; continuous batching (issue 19) runs several requests'
 * sequences through one batch.
 */
#ifndef PI_COORDINATOR_ENGINE_H
#define PI_COORDINATOR_ENGINE_H

#include <stdint.h>

#include "compute/predictor.h"
#include "compute/sparse.h"
#include "model/model.h"

typedef struct pi_engine pi_engine_t;

struct pi_engine_ops {
    /* Evaluate a batch of n tokens (1 <= n <= max_batch): token i belongs to sequence seq[i]
     * (0 <= seq[i] < n_seq) at position pos[i]; within the batch each sequence's tokens are at consecutive
     * positions in order, the first at the sequence's cached length (tokens of different sequences may
     * interleave or be grouped; the engine may reorder internally). logits (n_rows, n_vocab) receive the rows
     * rows[0..n_rows) of the batch, rows strictly increasing indices < n (n_rows 0..n; rows NULL iff n_rows 0).
     * 0, or a negative pi_err: -PI_ERR_INVAL/-PI_ERR_RANGE for a batch that breaks the rules (nothing changed),
     * -PI_ERR_PEER when a worker died (every sequence is then lost: the caller calls reset).
     * Batch invariance: a row's logits are the same bits whatever else shares its batch and however its
     * sequence was split into batches (compute/forward.h; doc/design.md, "Batch invariance"). */
    int (*eval)(pi_engine_t *e, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n,
                const int32_t *rows, int n_rows, float *logits);
    /* Keep the first n positions of sequence seq (0 <= n <= its length; 0 forgets it). 0 or a negative pi_err. */
    int (*seq_truncate)(pi_engine_t *e, int seq, int n);
    /* Forget every sequence; a pipeline whose workers died restarts here. 0 or a negative pi_err. */
    int (*reset)(pi_engine_t *e);
    void (*destroy)(pi_engine_t *e);
    /* Optional (NULL: always dense): out (pi_sparse_stats_init'ed for the model) += the sparse
     * execution's counts since the engine was made (compute/sparse.h). 0, or -PI_ERR_NOTFOUND when the
     * engine runs dense. Safe from another thread while a batch runs (pi-ctl status). */
    int (*sparse_stats)(pi_engine_t *e, struct pi_sparse_stats *out);
    /* Optional (NULL: never): non-zero when the engine lost its state since its last step (a worker of
     * the pipeline died while no step ran); the next step would fail and reset restarts it. Safe from
     * the thread that runs the steps; reads a flag only. */
    int (*broken)(pi_engine_t *e);
};

/* Every engine struct starts with this. */
struct pi_engine {
    const struct pi_engine_ops *ops;
    int n_vocab;
    int max_batch; /* tokens per eval */
    int n_ctx;     /* positions per sequence */
    int n_seq;     /* sequences (ids 0..n_seq-1), each with its own cache of n_ctx positions */
};

/* The sequence-0 convenience the old callers use: tokens (n) of sequence 0 at pos0..; logits = the last n_out
 * rows (n_out in {0, 1, n}). 0 or eval's errors (-PI_ERR_INVAL for another n_out, -PI_ERR_NOMEM). */
int pi_engine_eval_seq0(pi_engine_t *e, const int32_t *tokens, int n, int pos0, float *logits, int n_out);

/* The in-process engine over m (borrowed): the single-process forward pass with n_threads threads
 * and n_seq sequences (>= 1) of n_ctx positions each (n_ctx 0: the model's), evaluating at most
 * max_batch tokens per step (0: PI_TUNE_BATCH_DEFAULT; at most n_ctx * n_seq); with mode not off, sparse: with pred (borrowed;
 * its layers set) through its predictors (pi_forward_set_sparse, the recall every recall_every
 * steps), or with gate_min (borrowed, (n_layer, n_ff)) through activation thresholds
 * (pi_forward_set_gate_min). NULL on failure (logged). */
pi_engine_t *pi_engine_local_new(const pi_model_t *m, int n_threads, int n_ctx, int n_seq, int max_batch,
                                 const struct pi_predictors *pred, const float *gate_min, enum pi_sparsity mode,
                                 int64_t recall_every);

/* e's sparse counts into out (see sparse_stats): 0, or -PI_ERR_NOTFOUND for a dense engine. */
int pi_engine_sparse_stats(pi_engine_t *e, struct pi_sparse_stats *out);

/* Keep the first n positions of e's sequence 0 (n == 0 resets the whole engine): seq_truncate for the
 * one-sequence callers (interactive chat). 0 or the engine's error. */
int pi_engine_truncate(pi_engine_t *e, int n);

/* Destroy any engine; accepts NULL; nulls the caller's pointer. */
void pi_engine_destroy(pi_engine_t **e);

#endif
