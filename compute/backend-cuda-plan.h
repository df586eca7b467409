/*
 * compute/backend-cuda-plan.h - the cuda backend's VRAM plan, as host C: every device byte the cuda
 * backend (compute/backend-cuda.c) will hold for a model and its options, computed without a device,
 * and the layout rules the plan and the backend share (which weights keep their type, which layers
 * are dense, whether q, k and v are stacked, from which batch size the hot FFN goes through GEMM).
 *
 * Why apart from the backend: pi-coordinator sizes the hot set from this plan (compute/placement.c)
 * and must not link CUDA for it. The kernels' own needs (allocation rounding, cuBLAS workspace, GEMM
 * tile, attention partials, quantised x, weight bytes) come from kernels/cuda/plan.h, the header the
 * .cu files allocate by, so the plan and the kernels cannot drift apart. Built in every configuration
 * (libpinfer.a).
 */
#ifndef PI_COMPUTE_BACKEND_CUDA_PLAN_H
#define PI_COMPUTE_BACKEND_CUDA_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "compute/backend.h"
#include "lib/types.h"
#include "model/model.h"

/* Rows from which a batch's hot FFN runs as GEMMs (gate/up product, then the tiled down product)
 * rather than row by row; the plan holds the GEMM buffers only for batches this large. */
#define PI_BACKEND_CUDA_HOT_BATCH_MIN 5

/* Rows of logits the device computes at once: the output head runs over at most this many rows of a
 * step per product (more rows: several products, one after another), so its logits buffer is
 * PI_MIN(max_tokens, this) x n_vocab floats, not max_tokens x n_vocab (at [tune] batch 512 and a 128k
 * vocabulary that would be 262 MB of VRAM taken from the hot neurons). */
#define PI_BACKEND_CUDA_OUT_ROWS 64

/* The plan's parts, in device bytes as the allocator counts them (kernels/cuda/plan.h). */
struct pi_backend_cuda_plan {
    uint64_t attn;    /* q, k, v (stacked or apart) and output weights of every layer */
    uint64_t norms;   /* (2 n_layer + 1, n_embd) f32: attention and FFN norms, output norm */
    uint64_t head;    /* token embeddings and output head (one weight when tied) */
    uint64_t hot;     /* packed gate/up pairs and down rows (or the file's ffn_down for a dense layer) */
    uint64_t kv;      /* f16 K and V: n_layer x n_seq x 2 x n_ctx x kv_dim */
    uint64_t act;     /* activations of max_tokens rows, and the hot FFN's GEMM buffers */
    uint64_t scratch; /* the kernels' scratch slots at their largest request, the cuBLAS workspace */
    uint64_t pred;    /* with predictors (pi_backend_cuda_pred_on): their fc1 and fc2 weights, the hot ids of
                         the layers that are not dense, and the sparse path's buffers (logits, mask words,
                         lists, per-row activations); 0 without */
    uint64_t gate;    /* with thresholds on the hot neurons (pi_backend_cuda_gate_on): each layer's
                         thresholds of its hot neurons (n_hot floats), the per-row path's lists, counts and
                         activations (min(max_tokens, PI_BACKEND_CUDA_HOT_BATCH_MIN - 1) rows of n_hot_max),
                         and the per-layer counters of the pairs skipped (n_layer uint64); 0 without */
    uint64_t stream;  /* prompt streaming (pi_backend_cuda_stream_on): two slots of a layer's whole FFN
                         (pi_backend_cuda_stream_slot each) and the streamed products' (max_tokens, 2 n_ff)
                         f32 buffer; 0 without. Its larger GEMM tile and input are in scratch */
    uint64_t total;
};

/* The plan of the cuda backend over m with options o (o->hot, o->n_hot, o->hot_layers as the backend
 * will get them; nothing else of o->tune changes a byte). 0 and *p, or -PI_ERR_INVAL (max_tokens < 1),
 * or a negative pi_err for a weight shape the device kernels cannot take (logged). */
int pi_backend_cuda_plan_parts(const pi_model_t *m, const struct pi_backend_opts *o, struct pi_backend_cuda_plan *p);

/* Whether the cuda backend streams prompt layers (compute/stream-policy.h) for m and o: [tune]
 * prompt_stream not off for a run without predictors or activation thresholds (pi_stream_policy_mode,
 * the loop's rule too: o->pred with o->sparsity, o->thresholds), batches of two rows or more,
 * some layer with cold neurons (n_hot < n_ff), and each such layer's ffn_gate, ffn_up and ffn_down of a
 * type the device keeps as it is (pi_backend_cuda_dev_type: no conversion on the way). */
bool pi_backend_cuda_stream_on(const pi_model_t *m, const struct pi_backend_opts *o);

/* The device bytes of one streaming slot: over the layers with cold neurons, the largest sum of their
 * ffn_gate, ffn_up and ffn_down images (pi_cuda_weight_bytes_for each, so each starts 256-aligned). */
uint64_t pi_backend_cuda_stream_slot(const pi_model_t *m, const struct pi_backend_opts *o);

/* The plan's total (pi_backend_cuda_plan_parts), for placement: *bytes = 0 on error. */
int pi_backend_cuda_plan(const pi_model_t *m, const struct pi_backend_opts *o, uint64_t *bytes);

/* Whether every layer of m is dense in the cuda backend when its hot neurons are 0..hot-1 (all of
 * them, in id order, rows in whole 32-element segments): it then reads no ffn_down_t rows at all. */
bool pi_backend_cuda_all_dense(const pi_model_t *m, int64_t hot);

/* ---- the layout rules the plan and the backend share (compute/backend-cuda.c) */

/* Positions per sequence and sequences the backend holds for o (defaults: the model's context, 1). */
void pi_backend_cuda_geometry(const pi_model_t *m, const struct pi_backend_opts *o, int *n_ctx, int *n_seq);

/* The type a weight of type t with rows of cols elements has on the device: its own where the device
 * has kernels for it (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 with cols % 32 == 0; Q2_K..Q6_K with
 * cols % 256 == 0),
 * else F16 (converted on upload). */
enum pi_type pi_backend_cuda_dev_type(enum pi_type t, int64_t cols);

/* Whether layer L's q, k and v go to the device as one stacked matrix (qd + 2 kvd, d): their types
 * agree and the device takes that type as it is. */
bool pi_backend_cuda_fuse_qkv(const struct pi_layer *L, int64_t d);

/* The device type of layer L's packed gate/up pairs: the file's when gate and up agree and the device
 * takes it, else F16. */
enum pi_type pi_backend_cuda_gu_type(const struct pi_layer *L, int64_t d);

/* Whether layer il's FFN is dense on the device: all n_ff neurons hot, in id order, and rows of n_ff
 * elements in whole 32-element segments. Its down product then takes the file's ffn_down (d, n_ff). */
bool pi_backend_cuda_dense_layer(const pi_model_t *m, const struct pi_backend_opts *o, int il);

/* Where layer il's hot rows come from: o->hot_layers[il] (the worker's packed copy, row i = neuron
 * hot[il][i]) or the model's own layer. */
const struct pi_layer *pi_backend_cuda_hot_rows(const pi_model_t *m, const struct pi_backend_opts *o, int il);

/* Whether the backend evaluates predictors: o->pred set and o->sparsity not OFF. */
bool pi_backend_cuda_pred_on(const struct pi_backend_opts *o);

/* Whether the backend applies activation thresholds to its hot neurons (gate first): o->thresholds, no
 * predictors, and [tune] cuda_hot_thresholds on. Without it the hot neurons are dense. */
bool pi_backend_cuda_gate_on(const struct pi_backend_opts *o);

/* A predictor of rank r on the device: fc1 (r32, n_embd) and fc2 (n_ff, r32) with r32 = r rounded up to
 * whole 32-element segments; where r is not a multiple of 32 both are F16 (zero rows of fc1, zero
 * columns of fc2 fill the padding: relu(0) = 0 adds nothing), else each keeps its type where the device
 * takes it (pi_backend_cuda_dev_type). */
int64_t pi_backend_cuda_pred_rank(int64_t rank);
enum pi_type pi_backend_cuda_pred_type(const struct pi_weight *w, int64_t rank, int64_t cols);

/* The XQ scratch the backend reserves with options o: pi_backend_cuda_xq_reserve (with the n_ff
 * activations also where prompt streaming is on: a streamed step of two rows takes the matvecs), or with
 * predictors at least the x of the widest fc2 (pi_backend_cuda_pred_rank columns). */
uint64_t pi_backend_cuda_xq_total(const pi_model_t *m, const struct pi_backend_opts *o, bool any_dense);

/* Bytes of the backend's per-step table on the device for batches of up to T tokens: the token ids and
 * positions (2 T int32), then at pi_backend_cuda_seqtab_off(T) the decode attention's per-token rows
 * (T int4: position, split length, splits, first partial) and their sequences' cache offsets (T int64,
 * halves), as pi_cuda_attention_seqs takes them. */
static inline uint64_t pi_backend_cuda_seqtab_off(uint64_t T) { return (2 * T * sizeof(int32_t) + 15) & ~(uint64_t)15; }
static inline uint64_t pi_backend_cuda_ids_bytes(uint64_t T) { return pi_backend_cuda_seqtab_off(T) + T * (16 + 8); }

/* The XQ scratch the backend reserves: x of the widest decode product, plus a dense FFN's n_ff
 * activations beside it when a layer is dense. */
uint64_t pi_backend_cuda_xq_reserve(const pi_model_t *m, bool any_dense);

#endif
