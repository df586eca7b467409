/*
 * kernels/cpu/ops.h - the forward pass's non-matmul kernels: RMSNorm, RoPE, softmax, one attention
 * head over a KV cache, the gated FFN activations, and the neuron-subset FFN kernel.
 *
 * Plain C on f32 activations (the weight arithmetic goes through kernels/cpu/quant.h and matvec.h).
 * Each kernel states its shapes; none allocates except pi_ffn_work_new. Threading: only
 * pi_ffn_neurons uses the pool; the others are called per token or per head from the caller's
 * pool tasks and are reentrant.
 */
#ifndef PI_KERNELS_CPU_OPS_H
#define PI_KERNELS_CPU_OPS_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/weights.h"
#include "lib/types.h"
#include "kernels/cpu/pool.h"

/* out (n) = x (n) / sqrt(mean(x^2) + eps) * w (n). out may alias x. */
void pi_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);

/* cs (n_rot) = the rotation of position pos: cs[2i] = cos(theta_i), cs[2i+1] = sin(theta_i) with
 * theta_i = pos * base^(-2i / n_rot), i < n_rot / 2 (computed in double, like the reference). */
void pi_rope_table(float *cs, int pos, int n_rot, float base);

/* Rotate x (n_head, head_dim) in place with the GGUF llama convention ("normal" rope in ggml): each
 * head's adjacent pairs (x[2i], x[2i+1]), i < n_rot / 2, by the angles of cs (from pi_rope_table);
 * elements past n_rot are left alone. The converters permute Q and K so that this equals HF's
 * rotate_half on the original weights. */
void pi_rope_apply(float *x, int n_head, int head_dim, int n_rot, const float *cs);

/* x (n) = softmax(x) in place (max-subtracted). */
void pi_softmax(float *x, int64_t n);

/* logp (n) = log softmax(logits) (n >= 1), the sums in double; returns the index of the largest
 * logit (the first of equals). */
int pi_log_softmax(const float *logits, int n, float *logp);

/* KL(P || Q) = sum_i p_i (log p_i - log q_i) over n log-probabilities (each from pi_log_softmax), in
 * double; *top_p (optional) = the index of P's largest. */
double pi_kl_logp(const float *logp, const float *logq, int n, int *top_p);

/* One attention head of one query over n_kv cached positions:
 *   out (hd) = sum_t softmax_t(scale * q . k_t) * v_t,  t < n_kv,
 * where k_t = (const char *)k + t * stride and v_t likewise, each hd elements of kv_type (F32 or F16).
 * scores (n_kv) is scratch. */
void pi_attn_head(float *out, const float *q, const void *k, const void *v, size_t stride,
                  enum pi_type kv_type, int n_kv, int hd, float scale, float *scores);

/* The `group` query heads q (group, hd) that share one kv head (grouped-query attention), each exactly
 * as pi_attn_head computes it alone (the same bits): out (group, hd); scores
 * (PI_MIN(group, PI_ATTN_GROUP_MAX), n_kv) is scratch. pi_attn_tile with n_kv for every query. */
#define PI_ATTN_GROUP_MAX 8
void pi_attn_group(float *out, const float *q, int group, const void *k, const void *v, size_t stride,
                   enum pi_type kv_type, int n_kv, int hd, float scale, float *scores);

/* A tile of n_q queries over one kv head's cache, each with its own count: query j (q[j], hd floats)
 * attends over rows 0..n_kv[j] - 1 (n_kv[j] >= 1) into out[j] (hd), each exactly as pi_attn_head
 * computes it alone (the same bits), so a prompt's rows may share a tile whatever their positions.
 * scores (PI_MIN(n_q, PI_ATTN_GROUP_MAX), max n_kv) is scratch; rows up to the largest n_kv are read
 * for all the queries of a kernel call (their scores are computed and unused). With a SIMD kernel
 * variant (f16 or f32 cache; kernels/cpu/attn-impl.h) the keys and values are read once for up to
 * PI_ATTN_GROUP_MAX queries. */
void pi_attn_tile(float *const *out, const float *const *q, const int *n_kv, int n_q, const void *k, const void *v,
                  size_t stride, enum pi_type kv_type, int hd, float scale, float *scores);

/* g (n) = act(g, u) elementwise: silu(g) * u, relu(g) * u or relu(g) * relu(u). */
void pi_ffn_act(enum pi_ffn_act act, float *g, const float *u, int64_t n);

/* The activation threshold (issue 18, doc/thresholds.md): a neuron whose gate output is small in
 * magnitude, |silu(g)| or |relu(g)| <= gate_min (its own threshold), is skipped (its up row and down
 * column unread), as CATS (arXiv 2404.08763) does for SwiGLU models. gate_min 0 skips nothing more
 * than the activation itself does (a ReLU gate <= 0); a NaN gate is never skipped. The one rule every
 * kernel applies. */
static inline bool pi_ffn_gate_skip(enum pi_ffn_act act, float gate_min, float g)
{
    if (act != PI_FFN_ACT_SILU && g <= 0.0f) return true;
    if (!(gate_min > 0.0f)) return false;
    float s = act == PI_FFN_ACT_SILU ? g / (1.0f + expf(-g)) : g;
    return fabsf(s) <= gate_min;
}

/* g (n, ff) = act(g, u) as pi_ffn_act, but 0 where pi_ffn_gate_skip(act, gate_min[j], g) for neuron
 * j (column j of each of the n rows; gate_min (ff)): the dense form of the thresholds (every row is
 * read, the skipped neurons' activations zeroed). Returns the activations not skipped. All-zero
 * thresholds give pi_ffn_act's floats. */
int64_t pi_ffn_act_min(enum pi_ffn_act act, const float *gate_min, float *g, const float *u, int64_t n, int64_t ff);

/* ---- the neuron-subset FFN kernel ---- */

/* Scratch for pi_ffn_neurons: the quantised input, one accumulator per part, one row per thread;
 * for pi_ffn_neurons_batch also the room of pi_ffn_work_reserve. */
typedef struct pi_ffn_work pi_ffn_work_t;

/* Scratch for layers of width d computed by up to n_threads threads. NULL on allocation failure. */
pi_ffn_work_t *pi_ffn_work_new(int64_t d, int n_threads);
void pi_ffn_work_destroy(pi_ffn_work_t **w);

/* y (d) += sum over i in idx of a_i * down_t row i, with a_i = act(gate row i . x, up row i . x).
 *   L: one layer (ffn_gate, ffn_up (n_ff, d), ffn_down_t (n_ff, d) must be bound);
 *   x (d) f32: the FFN input (already ffn_norm-ed);  idx (n_idx): neuron ids in [0, n_ff), any order,
 *   no duplicates;  y (d): the partial sum, accumulated into (not cleared).
 * The dot products use each weight type's activation quantisation (pi_vec_dot), as the dense matvec
 * does. A neuron pi_ffn_gate_skip(act, gate_min, gate) skips contributes nothing and its up and down
 * rows are not read: for ReLU and dReLU every neuron whose gate pre-activation is <= 0 (dReLU also
 * skips the down row when up <= 0), and with gate_min (L's rows: the threshold of row r at [r]; NULL:
 * none) those under their threshold.
 * Threads of pool share the work, but the sums do not depend on thread timing: idx is cut by position
 * into parts (about 16, a multiple of the pool size; fewer for short lists), each part summed in list
 * order, the parts added to y in order. So a call with the same pool size is bit-for-bit reproducible
 * (pools of 1, 2, 4, 8 and 16 threads give the same bits: 16 parts); another pool size or a different
 * split of the same neurons agrees to float rounding.
 * Returns the number of neurons whose down row was added: the listed ones not skipped. */
int64_t pi_ffn_neurons(pi_pool_t *pool, pi_ffn_work_t *w, const struct pi_layer *L, enum pi_ffn_act act,
                       const float *gate_min, const float *x, const int32_t *idx, int64_t n_idx, float *y);

/* Room in w for batches of up to max_tokens tokens in pi_ffn_neurons_batch (their quantised inputs
 * and per-thread accumulators of a group of tokens); call once at setup, never while serving.
 * 0, -PI_ERR_NOMEM or -PI_ERR_RANGE (w unchanged). */
int pi_ffn_work_reserve(pi_ffn_work_t *w, int64_t max_tokens);

/* Y (n, d) += pi_ffn_neurons of each row of X (n, d) over the same neuron list: bit for bit what n
 * calls of pi_ffn_neurons with the same pool give (same parts, same order of every sum). With enough
 * tokens (16 per thread of the pool) and room reserved, threads take groups of 16 tokens instead of
 * parts of the list, so that each weight row is read once per group and dotted with its tokens from
 * L1 (the 4-token kernels where the type has them); otherwise it is the n calls. Returns the summed
 * counts of those calls. */
int64_t pi_ffn_neurons_batch(pi_pool_t *pool, pi_ffn_work_t *w, const struct pi_layer *L, enum pi_ffn_act act,
                             const float *gate_min, const float *X, int64_t n, const int32_t *idx, int64_t n_idx, float *Y);

#endif
