/*
 * compute/forward.h - the single-process llama forward pass on the CPU: embeddings, then per layer an
 * attention step and an FFN step on the residual stream, then the final norm and the output head.
 *
 * A batch is n tokens, token i belonging to sequence seq[i] at position pos[i]. Both shapes the
 * engine needs are batches: a prompt (n tokens of one sequence at consecutive positions) and a decode
 * step (one token of each of several sequences). Within a batch, each sequence's tokens must continue
 * its cache: the first at its current length, the next one after, and so on.
 *
 * The per-layer steps are exported so that the pipeline can place them in different processes
 * (attention on the GPU worker, FFN neurons split between devices): pi_forward_batch() is just
 *   embed -> for each layer { attn, ffn } -> output, with begin/commit around it.
 * Prompt batches use matrix-matrix kernels (pi_matmul), a single-token batch pi_matvec.
 *
 * Batch invariance (issue 19, doc/design.md): a row's results -- its keys and values, its residual
 * stream, its logits -- are the same bits whatever else is in its batch (other sequences, or more of
 * its own prompt) and however its sequence was split into batches. Every step is a function of the row
 * alone: the norms, RoPE and the embedding are per row; attention is pi_attn_group per (row, kv head)
 * (each query head exactly as alone) over the row's own cache prefix (positions 0..pos, the batch's earlier rows of its sequence stored
 * first), each in its own scores row; the products quantise each activation row by itself and
 * pi_matmul is bit-equal to pi_matvec per row (kernels/cpu/matvec.h, checked by test-matvec and
 * test-batch); the FFN path never depends on the batch (compute/ffn-policy.h: dense; until issue 19
 * single-token ReLU batches went neuron by neuron when a running, sequence-shared activity was
 * low, which rounds differently). Not covered: predictor-driven sparse execution
 * (pi_forward_set_sparse), where a batch's combined masks choose dense or neuron-wise sums
 * (compute/sparse.h pi_sparse_dense); serving with predictors gives results that may depend on the
 * batch to float rounding.
 *
 * Threading: the forward object owns a thread pool; one call at a time per object.
 */
#ifndef PI_COMPUTE_FORWARD_H
#define PI_COMPUTE_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/cpu/pool.h"
#include "compute/kv-cache.h"
#include "compute/predictor.h"
#include "model/model.h"

typedef struct pi_forward pi_forward_t;

struct pi_forward_opts {
    int n_threads;         /* pool threads (default 1; <= 0 means 1) */
    int n_ctx;             /* positions per sequence (default: the model's context_length, or 2048);
                            * at most 2^24, and n_seq full sequences must fit in RAM (pi_kv_new) */
    int n_seq;             /* sequences in the cache (default 1) */
    int n_batch;           /* tokens per internal step; larger calls are split (default 512; lowered
                            * to n_ctx * n_seq, the most a batch can hold) */
    enum pi_type kv_type;  /* PI_TYPE_F32 (default) or PI_TYPE_F16 */
    /* Reference mode: every product dequantises the weight rows and keeps the activations in f32
     * (double accumulation), instead of quantising activations to 8 bits as the kernels do. Several
     * times slower; it separates the forward pass's own exactness from the kernels' rounding in the
     * golden tests, and is the yardstick for accuracy reports. */
    bool f32_activations;
    /* Only with f32_activations: round each product's input through its weight type's activation
     * format first (pi_quantize_act, then dequantised: Q8_0 for the 32-element types, Q8_K for the
     * K-quants; f32 stays f32), keeping the exact double sums. That is the 8-bit activation rounding
     * of llama.cpp's CPU path and nothing else, so it measures the floor of any path that quantises
     * activations (the golden test reports it next to the kernels' figure; doc/forward.md). */
    bool round_activations;
    /* The caller computes every FFN itself (the pipeline's host backend with a partial hot set):
     * pi_forward_ffn, pi_forward_tokens and pi_forward_batch must not be called (checked), and the
     * model may have been opened without ffn_down_t (pi_model_opts.no_down_t). */
    bool no_ffn;
};

void pi_forward_opts_default(struct pi_forward_opts *o);

/* A forward pass over m (borrowed; must outlive it). NULL on bad options, a cache too large for
 * RAM, or no memory (logged). */
pi_forward_t *pi_forward_new(const pi_model_t *m, const struct pi_forward_opts *o);
void pi_forward_destroy(pi_forward_t **f);

const pi_model_t *pi_forward_model(const pi_forward_t *f);
pi_kv_t *pi_forward_kv(pi_forward_t *f);
/* The pass's thread pool (borrowed; NULL when it runs on one thread, which every pool user accepts).
 * Callers that interleave their own kernels with the pass's steps (the GPU worker's host backend)
 * use it instead of a second pool, whose threads would spin against these. Never while a step of f
 * is running: a pool runs one job at a time. */
pi_pool_t *pi_forward_pool(pi_forward_t *f);

/* Run a batch: tokens, seq, pos (n). logits: (n, n_vocab) when all_logits, else (n_vocab) for the last
 * token of the batch; may be NULL to only fill the cache. Returns 0, or -PI_ERR_INVAL / -PI_ERR_RANGE
 * for a token id, sequence or position that breaks the rules above (nothing is changed then). */
int pi_forward_batch(pi_forward_t *f, const int32_t *tokens, const int32_t *seq, const int32_t *pos,
                     int n, float *logits, bool all_logits);

/* The common case: n tokens of seq at positions pos0, pos0 + 1, ... (pos0 must be seq's length). */
int pi_forward_tokens(pi_forward_t *f, int seq, const int32_t *tokens, int n, int pos0, float *logits,
                      bool all_logits);

/* 0 when rows (n_rows) are strictly increasing row indices below n, rows NULL exactly when n_rows is 0
 * (n_rows <= n); else -PI_ERR_INVAL. The engines' and the step channel's rule for an output row list. */
int pi_forward_rows_check(const int32_t *rows, int n_rows, int n);

/* Run a batch of n <= n_batch rows as pi_forward_batch does and write logits (n_rows, n_vocab) for the
 * rows rows[0..n_rows) (pi_forward_rows_check; logits may be NULL when n_rows is 0). 0, -PI_ERR_INVAL
 * for a bad row list or size, or pi_forward_batch's refusals (nothing changed on any of them). */
int pi_forward_batch_rows(pi_forward_t *f, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n,
                          const int32_t *rows, int n_rows, float *logits);

/* Positions cached for seq; truncate it to n positions (n <= length); reset = truncate to 0. */
int pi_forward_seq_len(const pi_forward_t *f, int seq);
int pi_forward_seq_truncate(pi_forward_t *f, int seq, int n);
void pi_forward_seq_reset(pi_forward_t *f, int seq);

/* ---- the steps (n <= the object's n_batch) ---- */

/* Check a batch against the cache and reserve its sequences' storage. 0 or a negative pi_err. */
int pi_forward_begin(pi_forward_t *f, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n);
/* h (n, n_embd) = the embedding rows of tokens. */
void pi_forward_embed(pi_forward_t *f, const int32_t *tokens, int n, float *h);
/* Attention of layer il: stores the batch's keys and values in the cache, then
 * h (n, n_embd) += attn_output @ attention(rope(q), cache) with q, k, v from attn_norm(h). */
void pi_forward_attn(pi_forward_t *f, int il, const int32_t *seq, const int32_t *pos, int n, float *h);
/* FFN of layer il: h (n, n_embd) += ffn(ffn_norm(h)). */
void pi_forward_ffn(pi_forward_t *f, int il, int n, float *h);
/* FFN input only: x (n, n_embd) = ffn_norm(h) (for callers that split the neurons themselves). */
void pi_forward_ffn_input(pi_forward_t *f, int il, int n, const float *h, float *x);
/* logits (n_out, n_vocab) = output @ output_norm(h_i) for the last n_out rows of h (n, n_embd). */
void pi_forward_output(pi_forward_t *f, const float *h, int n, int n_out, float *logits);
/* logits (n_rows, n_vocab) = output @ output_norm(h_r) for the rows r = rows[0..n_rows) of h (n, n_embd),
 * strictly increasing and below n (checked by PI_ASSERT), 1 <= n_rows <= n. */
void pi_forward_output_rows(pi_forward_t *f, const float *h, int n, const int32_t *rows, int n_rows, float *logits);
/* Mark the batch's positions filled. */
void pi_forward_commit(pi_forward_t *f, const int32_t *seq, const int32_t *pos, int n);

/* Activation statistics (pi-profile): while a stats buffer is set, every FFN step counts, per layer
 * and neuron, the tokens whose gate output was positive (gate . x > 0: for ReLU and dReLU the neuron
 * is active, its output non-zero; for SwiGLU silu(gate) > 0, which only says the sign), and adds each
 * (token, neuron)'s |act(gate, up)| to the layer's histogram (bins of model/sidecar.h:
 * pi_sidecar_hist_bin). The FFN then always runs dense (whole matrices), so that every neuron's gate
 * is computed, whatever the decode policy would have chosen; the sums are the inference path's own.
 * Counting is single-threaded, about 1 + 1/4 of a log2f per (token, neuron). */
struct pi_ffn_stats {
    int n_layer, n_ff, n_hist;  /* the model's; n_hist = PI_SIDECAR_HIST_BINS */
    uint64_t tokens;            /* rows through layer 0's FFN */
    uint64_t *active;           /* (n_layer, n_ff): tokens with gate . x > 0 */
    uint64_t *hist;             /* (n_layer, n_hist): (token, neuron) pairs per |act| bin; may be NULL */
};

/* Count into s (borrowed: it must outlive its use; shape checked by PI_ASSERT), or stop with NULL. */
void pi_forward_set_stats(pi_forward_t *f, struct pi_ffn_stats *s);

/* Sparse execution (doc/predictors.md, "Runtime"): with pred (borrowed; must outlive its use) and mode
 * not off, every FFN step evaluates the layer's predictor on its input and computes, for each token,
 * only the neurons its mask selects (pi_sparse_ffn; the exact gate still decides each), whatever the
 * decode policy says; the counts go into stats (borrowed, pi_sparse_stats_init'ed for the model), the
 * recall measured on every recall_every-th batch step (0: never). pred NULL or mode off: dense again.
 * A statistics buffer (pi_forward_set_stats) wins: profiling always runs dense. A SwiGLU model or
 * predictors of another shape: -PI_ERR_INVAL; no memory: -PI_ERR_NOMEM. */
struct pi_sparse_stats;
int pi_forward_set_sparse(pi_forward_t *f, const struct pi_predictors *pred, enum pi_sparsity mode, int64_t recall_every,
                          struct pi_sparse_stats *stats);

/* Activation thresholds (issue 18, doc/thresholds.md): with gate_min ((n_layer, n_ff) floats, each >= 0
 * and finite; borrowed: it must outlive its use), every FFN step skips neuron j of layer il when its
 * |act(gate)| <= gate_min[il * n_ff + j] (kernels/cpu/ops.h, pi_ffn_gate_skip): densely, their activations
 * zeroed (every batch alike: batch invariance); the computed (token,
 * neuron) pairs are counted into stats (borrowed, pi_sparse_stats_init'ed for the model) as
 * pi_sparse_note's `predicted`. NULL: no thresholds. Predictors (pi_forward_set_sparse) take
 * precedence; statistics and capture run dense. -PI_ERR_INVAL for a bad threshold, a missing stats
 * buffer or a mode without the FFN kernels. */
int pi_forward_set_gate_min(pi_forward_t *f, const float *gate_min, struct pi_sparse_stats *stats);

/* Sample capture (pi-train-predictors, the threshold calibration): while set, every FFN step calls fn
 * once per layer with the residual stream h (n, n_embd) entering the FFN, the step's FFN input x (n,
 * n_embd) (the ffn_norm output of h) and the gate and up products (n, n_ff) each,
 * before the activation; the FFN then runs dense, as with statistics, so every neuron's gate and up
 * are there (activation thresholds still apply to the step's output: the calibration captures the
 * inputs of a thresholded pass). The arrays are the pass's scratch: read them during the call only. fn runs on the
 * calling thread, between the pass's pool jobs (it may use the pass's pool). NULL stops. */
typedef void (*pi_ffn_capture_fn)(void *ctx, int il, int n, const float *h, const float *x, const float *gate,
                                  const float *up);
void pi_forward_set_capture(pi_forward_t *f, pi_ffn_capture_fn fn, void *ctx);

/* FFN neurons that were non-zero since the forward was created, summed over layers and tokens
 * (ReLU/dReLU models; 0 for SwiGLU). For sparsity statistics. */
int64_t pi_forward_active_neurons(const pi_forward_t *f);

#endif
