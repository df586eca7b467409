/*
 * gpu-worker/loop.h - pi-gpu-worker's layer loop: take a batch from the step channel, run it layer
 * by layer on the backend, publishing each layer's FFN input to the CPU workers and merging their
 * partial sums, and answer with the logits.
 */
#ifndef PI_GPU_WORKER_LOOP_H
#define PI_GPU_WORKER_LOOP_H

#include <stdint.h>

#include "compute/backend.h"
#include "compute/sparse.h"
#include "compute/stream-policy.h"
#include "ipc/link.h"
#include "ipc/step.h"
#include "ipc/exchange.h"

/* How long the GPU worker waits for the CPU partials of one layer before it declares a worker
 * dead (the coordinator usually notices first and aborts the exchange). */
#define PI_GPU_PARTIAL_TIMEOUT_NS (INT64_C(5) * 1000 * 1000 * 1000)

struct pi_gpu_loop {
    pi_backend_t *be;
    pi_step_t *step;
    pi_exchange_t *ex;
    pi_link_t *link;     /* may be NULL (tests) */
    uint32_t ex_flags;   /* PI_EXCHANGE_ALL, plus GATE_SKIP for ReLU models */
    bool fresh;          /* a row of the step being computed starts a sequence: FRESH on its publishes */
    int n_seq;           /* sequences the backend's cache holds */
    /* statistics: layer round trips through the exchange and their total time in ns, from publish
     * to the partials merged, minus the hot neurons computed in between (the exchange's own cost
     * plus the CPU workers' compute beyond the GPU worker's) */
    uint64_t n_rt;
    int64_t rt_ns;
    uint64_t n_skip;     /* layers computed without the exchange: no CPU worker owns a neuron of them */
    /* Prompt streaming (compute/stream-policy.h), set up by pi_gpu_loop_stream_init; without it (stream.cold
     * NULL) no step streams. Its counters are the steps and layers streamed. */
    struct pi_stream_policy stream;
    bool prompt_now;     /* the step being computed is a prompt step (pi_stream_policy_is_prompt) */
    int n_cur;           /* rows of the step being computed */
    /* Sparse execution (doc/predictors.md, "Runtime"): with pred set and sparsity not off, each layer's
     * mask comes from the backend's ffn_predict, or, for a backend without it (cuda before its device
     * predictor), from the predictor evaluated here on the host over the exchange's x (predictors that
     * read x only: those that read the residual stream are refused, pi_gpu_loop_sparse_init): the CPU
     * workers then compute their predicted neurons and the backend all its hot ones (counted as
     * computed). Set up by pi_gpu_loop_sparse_init. */
    const struct pi_predictors *pred;
    enum pi_sparsity sparsity;
    /* A SwiGLU model's activation thresholds (doc/thresholds.md): the CPU workers skip their own cold
     * neurons and report their counts in the exchange's done lines; the backend skips its hot ones where it
     * was given their thresholds (pi_backend_opts.gate_min) and reports its counts per step
     * (ops.ffn_hot_skipped). Set by pi_gpu_loop_gated_init: the counts go into stats as with predictors. */
    bool gated;
    int64_t *hot_skipped; /* (n_layer) with gated: the step's hot pairs skipped, from ffn_hot_skipped */
    int64_t recall_every;   /* [sparsity] recall_every: 0 = never */
    const int32_t *const *hot; /* (n_layer) the hot ids (for the host fallback's counts), n_hot[il] each */
    const int64_t *n_hot;
    struct pi_sparse_stats stats; /* the step's counts, copied to the exchange's stats section */
    uint64_t n_steps;       /* EVAL steps run with predictors (the recall schedule) */
    bool recall_now;        /* this step measures the recall */
    int64_t mask_words;
    pi_pool_t *pool;        /* host-side predictor and recall products; NULL = one thread */
    /* the batch's scratch, grown to the largest batch seen and kept (pi_gpu_loop_free): a stream of
     * decode steps allocates nothing */
    int cap;
    float *cold;         /* (cap, n_embd) */
    /* with predictors: a layer's x and mask where the exchange carries none (recall steps), the host
     * fallback's scratch, and the recall's gates */
    float *x_own;        /* (cap, n_embd) */
    uint64_t *mask_own;  /* (cap, mask_words) */
    float *pred_scr;     /* pi_predictor_scratch(cap) */
    float *gate;         /* (cap, n_ff) */
};

/* Turn sparse execution on for g (be, ex set): pred (borrowed) in mode (not off), recall every
 * recall_every steps, threads for the host-side products (the fallback predictor, the recall). The
 * model must not be SwiGLU. 0 or -PI_ERR_INVAL / -PI_ERR_NOMEM (logged). */
int pi_gpu_loop_sparse_init(struct pi_gpu_loop *g, const struct pi_predictors *pred, enum pi_sparsity mode,
                            int64_t recall_every, int threads);

/* Count a SwiGLU model's activation thresholds (applied by the CPU workers to their cold neurons, and by
 * the backend to its hot ones where it has ffn_hot_skipped) for g (be, ex set). 0 or -PI_ERR_NOMEM. Freed
 * by pi_gpu_loop_sparse_free. */
int pi_gpu_loop_gated_init(struct pi_gpu_loop *g);

/* Prompt streaming for g (be set) in mode ([tune] prompt_stream): the cost model over the backend's
 * measured rates (ops.stream_rates). A backend without ffn_stream, or mode off, never streams; nor does
 * a loop with predictors or activation thresholds (pi_stream_policy_mode: their masks and counts are the
 * CPU workers'), so call it after pi_gpu_loop_sparse_init or _gated_init. 0 or -PI_ERR_NOMEM. Freed by
 * pi_gpu_loop_sparse_free. */
int pi_gpu_loop_stream_init(struct pi_gpu_loop *g, enum pi_tune_prompt_stream mode);

/* Free what pi_gpu_loop_sparse_init, _gated_init and _stream_init made (pi_gpu_loop_free keeps it: it
 * only drops the scratch). */
void pi_gpu_loop_sparse_free(struct pi_gpu_loop *g);

/* Free the loop's scratch (the struct itself is the caller's). */
void pi_gpu_loop_free(struct pi_gpu_loop *g);

/* Serve steps until a STOP step, a SHUTDOWN from the coordinator, or a fatal error. Returns 0 on a
 * clean stop or a negative pi_err. */
int pi_gpu_loop_run(struct pi_gpu_loop *g);

/* Run one EVAL batch: tokens, seq, pos (n): token i of sequence seq[i] (< n_seq) at position pos[i]
 * (ipc/step.h's rules; the backend checks that each sequence continues its cache); logits (n_rows,
 * n_vocab) of rows[0..n_rows), strictly increasing row indices below n (rows NULL iff n_rows 0), the
 * buffer having room for n - rows[0] rows (it is the scratch of the output first). Exposed for tests and
 * benchmarks. 0 or a negative pi_err (-PI_ERR_RANGE for a bad row list or sequence id; the batch is then
 * not committed). */
int pi_gpu_loop_eval(struct pi_gpu_loop *g, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n,
                     const int32_t *rows, int n_rows, float *logits);

#endif
