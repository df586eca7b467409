/*
 * compute/backend-cuda.c - the `cuda` backend of pi-gpu-worker (compute/backend.h): the batch's
 * residual stream, attention with its KV cache, the hot FFN neurons, the merge of the CPU workers'
 * partial sums, the final norm and the output head, all on one CUDA device through kernels/cuda/cuda.h
 * (and the few kernels of compute/backend-cuda-kernels.cu).
 *
 * Memory. Every device byte is computed before anything is allocated (compute/backend-cuda-plan.c:
 * weights, KV cache, activations, the kernels' scratch, the cuBLAS workspace, each rounded as the
 * allocator counts it, by kernels/cuda/plan.h), checked against the budget (one clear error at start when it does not fit), then allocated in
 * the order attention weights and norms, embeddings and output head, hot neurons, KV cache, scratch:
 * the weights every token needs come first, the hot neurons are the part the placement can shrink.
 * The context's scratch slots grow on demand; the backend requests their largest sizes once at start
 * (warm_scratch), so serving never allocates and the planned bytes are what is held.
 *
 * Weights keep their file type where the device has kernels for it (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0, Q2_K..Q6_K; K-quants need rows of 256) and are converted to F16 on upload otherwise (F32;
 * logged). The hot neurons of a layer are packed: gate and up rows interleaved in one matrix (2 n_hot,
 * d), the ffn_down_t rows in another (n_hot, d); both in the ids' order. A dense layer (every neuron
 * hot, in id order: dense_layer) keeps the file's ffn_down (d, n_ff) instead of ffn_down_t rows, and its FFN is
 * the gate/up pairs then a plain product with it (pi_cuda_ffn_dense; GEMMs for larger batches).
 *
 * The q, k and v weights of a layer are uploaded as one stacked matrix (qd + 2 kvd, d) when their types
 * agree, with q, k and v as views of it: a one-token step projects them in one launch, larger batches
 * use the views.
 *
 * Batches: decode (n <= PI_CUDA_MATVEC_MAX_ROWS, 2) runs the quantised matvec kernels, larger batches cuBLAS GEMM (dequantised
 * f16 tiles); the hot FFN of a batch of more than 4 rows is a GEMM of the gate/up pairs and a tiled
 * product with the dequantised down rows, smaller ones the packed-neuron kernel per row. Attention runs
 * per "run": consecutive tokens of one sequence at consecutive positions, stored into that sequence's
 * cache and attended causally; a batch may hold several sequences. For a batch of one run, RoPE of q
 * and k and the KV store are one launch (pi_cuda_rope_kv); a decode step's RoPE, KV store and
 * attention are one launch together (pi_cuda_attention_dec). The residual adds are the products'
 * epilogues: the attention output projection and a dense layer's down product add into h
 * (pi_cuda_matmul_add), so neither needs a separate merge launch.
 *
 * The exchange: ffn_input downloads the FFN input straight into the caller's buffer (the exchange's
 * shared-memory slot, page-locked with cudaHostRegister the second time the same buffer is given);
 * ffn_hot only enqueues; ffn_merge copies the merged cold partial into pinned staging and then to the
 * device on the copy stream, and the compute stream waits for it by an event: one host round trip per
 * layer (the ffn_input download). A layer whose neurons are all hot has no exchange (ffn_hot_count
 * tells the loop): ffn_input then writes no x, so a step at hot fraction 1 runs without a host wait
 * until its logits. A one-token step applies the RMSNorms inside the q/k/v product and, for a dense
 * layer without exchange, the gate/up product (pi_cuda_matvec_norm, pi_cuda_ffn_dense with the norm
 * weight) where the product can. A failed CUDA call poisons the backend: every later call answers
 * -PI_ERR_DEVICE, and the worker ends (crash-only).
 *
 * Sparsity: with predictors (o->pred, o->sparsity not OFF) each layer's fc1 and fc2 are uploaded after
 * the hot neurons (padded to whole 32-element segments in F16 where the rank needs it), and
 * ffn_predict evaluates them on the device on the rows they read (d_h, the residual stream, for a model
 * file's; d_xn, the FFN input, for the sidecar's: compute/predictor.h), builds the mask and the lists of
 * predicted-active hot neurons there (kernels/cuda/sparse.cu), downloads the mask into the exchange and
 * leaves the lists to the layer's ffn_hot, which then computes only those neurons (ffn_hot_sparse).
 * A ReLU neuron's exact gate still decides its output. The decode FFN norm is then never deferred into
 * the gate/up product: the predictor needs the normed input first.
 *
 * Activation thresholds (o->thresholds with o->gate_min: a SwiGLU model's, doc/thresholds.md), where
 * pi_backend_cuda_gate_on ([tune] cuda_hot_thresholds on; off, the default, computes the hot neurons
 * densely, measured faster on the H100): each layer's thresholds of its hot neurons go to the device at
 * creation (d_gmin, in the packed rows' order), and
 * ffn_hot computes the layer gate-first (ffn_hot_gated) with the list kernels of the predictors' path:
 * per row of a decode step the gate rows of every hot neuron (pi_cuda_ffn_gu_part, GATE), then one
 * launch for the rows that applies pi_ffn_gate_skip's rule per (token, neuron) and lists the kept hot
 * neurons in ascending order (pi_cuda_gate_list; no host round trip), then per row the up rows of the
 * listed neurons (UP) and their down rows (pi_cuda_ffn_down_list). A dense layer (hot fraction 1) keeps
 * the file's ffn_down, whose product reads every column with the skipped activations zero: it saves the
 * up rows only (doc/cuda-backend.md, "What is left"). A batch of the GEMM path computes the gate/up pairs
 * densely and zeroes the skipped activations before the down product (the single process's dense form).
 * The skipped pairs are counted per layer on the device (integer atomics) and come down once per step
 * (ffn_hot_skipped). A layer whose thresholds are all 0 runs as without them.
 *
 * Prompt streaming (ffn_stream, compute/stream-policy.h; doc/cuda-backend.md): where [tune]
 * prompt_stream is not off and some layer has cold neurons whose ffn_gate, ffn_up and ffn_down the
 * device takes in their file types (pi_backend_cuda_stream_on), the backend holds two device slots of
 * one layer's three weights, their pinned host staging, and a (T, 2 n_ff) buffer for the products, all
 * in the plan; at creation it times a pinned copy of a slot and the packing of a layer, each the better
 * of two (stream_rates). A streamed layer's weights
 * are packed from the mapping into the device layout by host threads (pi_cuda_weight_pack_rows),
 * copied on the copy stream into a slot, and multiplied as a dense layer: gate and up products, the
 * gated activation, the down product added to h in its epilogue.
 *
 * DESIGN (the slots' protocol): slot k has two events. landed[k] is recorded on the copy stream after
 * the copy into it; the compute stream waits for it before the layer's products. done[k] is recorded on
 * the compute stream after the layer's down product; the next copy into slot k waits for it on the copy
 * stream, so a slot is never overwritten while read. The host waits (event sync on landed[k]) only
 * before it packs into staging k again, which the previous copy must have read. ffn_stream(il, next)
 * enqueues il's products from its slot and then packs and copies next into the other slot, so that
 * next's copy runs under il's products (double buffering); the loop's ffn_stream(-1, first), called
 * after attn(0) is enqueued, packs and copies the first layer under the first attention. The host's
 * packing of next is not overlapped with next's own copy, but with the copy of the layer before it and
 * the products before that: in steady state a layer costs its slowest stage (doc/cuda-backend.md). A slot remembers its layer (st_layer), so a
 * layer already copied is not copied again; st_layer is cleared before a slot is refilled.
 *
 * Tuning: o->tune (lib/conf.h, the [tune] section of pinfer.conf) picks how the one-token products
 * take x (cuda_matvec: auto or f32); the CUDA context gets it at creation (struct pi_cuda_opts);
 * prompt_stream whether the streaming buffers are held (above).
 *
 * Batch invariance (compute/forward.h, doc/design.md): this backend does NOT give a row the same bits
 * whatever its batch, and nothing here claims it. The path of every product is chosen by the batch's
 * size: up to PI_CUDA_MATVEC_MAX_ROWS rows the quantised matvec kernels (x rounded per cuda_matvec),
 * beyond that cuBLAS GEMMs over dequantised f16 tiles, whose sums are ordered and rounded otherwise; the
 * hot FFN switches from the packed-neuron kernel to the GEMM and tiled down product past 4 rows; a
 * one-token step fuses the RMSNorm into the q/k/v and gate/up products and RoPE, the KV store and
 * attention into one launch, while a batch of one run uses pi_cuda_rope_kv and larger ones the per-run
 * kernels. So with [server] slots above 1 a sequence's logits on this backend depend, to float rounding,
 * on what shares its batch (a greedy text can then differ from the same request served alone). Making
 * it invariant means fixing each row's path (one kernel per product for every batch size, the fusions
 * applied per row) and measuring what that costs on the GPU machine; the host backend and the
 * in-process engine are the invariant ones, tested by tests/integration/test-batch.c.
 */
#include "config.h"
#include "compute/backend-cuda.h"
#include "compute/backend-cuda-kernels.h"
#include "compute/backend-cuda-plan.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/quant.h"
#include "kernels/cuda/cuda.h"
#include "lib/common.h"
#include "lib/log.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Propagate a negative return. */
#define PI_TRY(expr)                                                                               \
    do {                                                                                           \
        int r_ = (expr);                                                                           \
        if (r_ < 0) return r_;                                                                     \
    } while (0)

struct cuda_layer {
    pi_cuda_weight_t *q, *k, *v, *o; /* q, k, v are views of qkv when it is not NULL */
    pi_cuda_weight_t *qkv;           /* q, k and v rows in one matrix (qd + 2 kvd, d): one decode launch */
    pi_cuda_weight_t *gu, *down; /* packed hot neurons; NULL when n_hot == 0. A dense layer's down is
                                    the file's ffn_down (d, n_ff) instead of ffn_down_t rows */
    int64_t n_hot;
    bool dense;                  /* every neuron hot, in id order: a = act(gu x), y = down a (dense_layer) */
    /* the activation predictor (pi_backend_cuda_pred_on): fc1 (r32, d), fc2 (n_ff, r32), NULL for a layer
     * without one (every neuron predicted active); d_ids (n_hot) the hot neurons' ids where the layer is
     * not dense (the mask's neuron of each hot index) */
    pi_cuda_weight_t *fc1, *fc2;
    int64_t r32;                 /* the predictor's device rank (pi_backend_cuda_pred_rank), 0 without one */
    enum pi_type t1, t2;         /* fc1's and fc2's device types */
    int32_t *d_ids;
    float thr;                   /* the logit threshold of o.sparsity's mode */
    /* activation thresholds (o.thresholds): d_gmin (n_hot) the hot neurons' thresholds in the packed rows'
     * order (zeros without o.gate_min); gm_on: one of them is positive (the layer takes ffn_hot_gated) */
    float *d_gmin;
    bool gm_on;
};

struct cuda_backend {
    struct pi_backend base;
    struct pi_backend_opts o;
    pi_cuda_ctx_t *ctx;
    void *stream, *copy_stream, *ev_copy;
    int d, qd, kvd, hd, n_head, n_head_kv, n_rot, n_layer, n_vocab, n_ctx, n_seq, T, act;
    float eps, rope_base;
    bool own_attn;            /* head_dim the flash-decoding kernel does not take */
    bool xn_deferred;         /* ffn_input left the FFN norm to ffn_hot's gate/up product (a dense
                                 decode layer without exchange: the product's staging or x quantiser) */
    int64_t n_hot_max;
    pi_cuda_weight_t *embd, *out; /* out == embd when tied */
    struct cuda_layer *L;
    float *d_norms;           /* (2 n_layer + 1, d): attn_norm, ffn_norm of each layer, output_norm */
    uint8_t *d_kv;            /* per layer, per sequence: K then V, (n_ctx, kvd) f16 each */
    float *d_h, *d_xn, *d_q, *d_k, *d_v, *d_att, /* d_q, d_k, d_v: one allocation, in this order */ *d_parts, *d_logits, *d_g, *d_a;
    void *d_down16;           /* (n_hot, d) f16 for the largest layer that is not dense: its down rows for the
                                 batched product (NULL when every hot layer is dense) */
    int32_t *d_ids;           /* (2 T): tokens, then positions; at pi_backend_cuda_seqtab_off(T) bytes the
                                 decode attention's table (pi_backend_cuda_ids_bytes) */
    float *h_cold;            /* pinned (T, d): staging of the cold partial */
    int32_t *h_ids;           /* (2 T) */
    int32_t *h_seqtab;        /* host staging of the decode attention's table, laid out as on the device: (T, 4)
                                 int32 rows, then at 16 T bytes (T) int64 offsets */
    /* The step is one token of each of several sequences (every run one token): attention through
     * pi_cuda_attention_seqs, its table uploaded by begin; max_nsplit and part_bytes from the plan. */
    bool seqs;
    int seqs_max_nsplit;
    size_t seqs_part_bytes;
    bool seqs_noted;          /* the fallback for want of scratch was logged (once) */
    uint64_t n_seqs;          /* steps whose attention took pi_cuda_attention_seqs (pi_backend_cuda_seqs_steps) */
    float *x_reg;             /* the FFN-input buffer page-locked, or NULL */
    size_t x_reg_bytes;
    const float *x_last;      /* the buffer given to the previous ffn_input */
    int32_t *len, *pend;      /* (n_seq): committed positions; tokens of the batch in flight */
    int32_t *seq, *pos;       /* (T): the batch */
    int32_t *run_start;       /* (T + 1): runs of the batch */
    int n, n_runs;
    bool hot_valid;           /* the current layer's hot partial is in d_parts (not for a dense layer,
                                 whose ffn_hot adds its product to d_h itself) */
    /* The sparse path (pi_backend_cuda_pred_on; NULL otherwise): the predictor's hidden rows d_ph (T, r32
     * max) and logits d_plog (T, n_ff), the mask d_words (T, mw) with per-row counts d_on (T); the lists
     * of predicted-active hot indices d_list (T, n_hot_max) with their lengths d_nlist (T), and the
     * per-row path's activations d_sa (min(T, 4), n_hot_max), unlisted entries zeroed by the mask kernel. */
    bool pred;
    int64_t mw;               /* mask words per row on the device: ceil(n_ff / 64) */
    float *d_ph, *d_plog, *d_sa;
    uint64_t *d_words, *h_words; /* h_words: (T, mw) host staging of the mask's download */
    int32_t *d_on, *d_list, *d_nlist, *h_on;
    int masked_il;            /* the layer whose ffn_predict ran last (its ffn_hot takes the lists), or -1 */
    /* Activation thresholds (o.thresholds; "Activation thresholds" above), else false and NULL: the per-row
     * path shares d_list, d_nlist and d_sa with the predictors' (never both; rows: at most
     * PI_BACKEND_CUDA_HOT_BATCH_MIN - 1), d_skip (n_layer) the pairs skipped since ffn_hot_skipped last
     * read them, h_skip its host copy */
    bool gated;
    uint64_t *d_skip, *h_skip;
    bool dead;                /* a device error happened: every call fails */
    uint64_t planned;
    /* Prompt streaming (pi_backend_cuda_stream_on; "Prompt streaming" above), else st_on false and the
     * rest NULL */
    bool st_on;
    uint64_t st_slot;         /* bytes of one slot: pi_backend_cuda_stream_slot */
    uint8_t *d_slot[2];       /* device: one layer's ffn_gate, ffn_up, ffn_down images, in this order */
    uint8_t *h_slot[2];       /* pinned host staging of the same bytes */
    void *ev_landed[2];       /* slot k's copy is on the device */
    void *ev_done[2];         /* slot k's products are done: it may be refilled */
    int st_layer[2];          /* the layer slot k holds (or is receiving), -1 none */
    pi_cuda_weight_t *st_w[2][3]; /* gate (n_ff, d), up (n_ff, d), down (d, n_ff) over d_slot[k] */
    float *d_sg;              /* (T, 2 n_ff): the gate products, then the up products; the gated
                                 activations overwrite the gate half */
    double st_copy_bps;       /* bytes/s of a slot's pinned copy, the better of two timed at creation */
    double st_pack_bps;       /* bytes/s of the host's packing of a layer, the better of two timed at creation */
    pi_pool_t *st_pool;       /* the host threads that pack a layer into staging: one per CPU the process may
                                 run on (pi_cpus_usable) */
};

static struct cuda_backend *cb(pi_backend_t *b) { return (struct cuda_backend *)b; }

/* Norm weight k of d_norms: 2 il attention, 2 il + 1 FFN of layer il, 2 n_layer the output norm. */
static float *norm_w(const struct cuda_backend *s, int k) { return s->d_norms + (size_t)k * (size_t)s->d; }

/* Whether the step's hot FFN runs row by row (the packed-neuron or dense kernels per token) rather
 * than as GEMMs: small batches, or no GEMM buffers planned. */
static bool ffn_per_row(const struct cuda_backend *s) { return s->n < PI_BACKEND_CUDA_HOT_BATCH_MIN || !s->d_g; }

/* pi_cuda_gemm's dequantised tile for a weight (rows, cols) of device type t (kernels/cuda/plan.h). */
static uint64_t tile_bytes(int64_t T, enum pi_type t, int64_t rows, int64_t cols)
{
    return pi_cuda_gemm_tile_bytes((int)t, rows, cols, T);
}

/* ------------------------------------------------------------------ upload */

/* Rows of the packed matrix being uploaded: row r is a's row ids[r] (b == NULL), or, with b, row 2i is
 * a's row ids[i] and row 2i + 1 is b's (ids NULL: identity). */
struct rows_src {
    const struct pi_weight *a, *b;
    const int32_t *ids;
    int64_t n; /* rows of the result */
};

static const void *src_row(const struct rows_src *s, int64_t r)
{
    const struct pi_weight *w = s->b && (r & 1) ? s->b : s->a;
    int64_t i = s->b ? r / 2 : r;
    return pi_weight_row(w, s->ids ? s->ids[i] : i);
}

static int upload(struct cuda_backend *s, const struct rows_src *src, enum pi_type type, pi_cuda_weight_t **out)
{
    const int64_t cols = src->a->cols;
    const bool same = src->a->type == type && (!src->b || src->b->type == type);
    if (same && !src->b && !src->ids) return pi_cuda_weight_upload(s->ctx, (int)type, src->n, cols, src->a->data, out);
    uint64_t rb = 0;
    if (!pi_type_row_bytes(type, (uint64_t)cols, &rb)) return -PI_ERR_UNSUPPORTED;
    uint8_t *buf = malloc((size_t)rb * (size_t)src->n);
    float *tmp = same ? NULL : malloc((size_t)cols * sizeof(float));
    if (!buf || (!same && !tmp)) {
        free(buf);
        free(tmp);
        return -PI_ERR_NOMEM;
    }
    for (int64_t r = 0; r < src->n; r++) {
        const struct pi_weight *w = src->b && (r & 1) ? src->b : src->a;
        if (w->type == type) {
            memcpy(buf + (size_t)r * rb, src_row(src, r), (size_t)rb);
        } else {
            pi_dequant_row(w->type, src_row(src, r), tmp, cols);
            pi_quantize_row(type, tmp, buf + (size_t)r * rb, cols);
        }
    }
    int rc = pi_cuda_weight_upload(s->ctx, (int)type, src->n, cols, buf, out);
    free(buf);
    free(tmp);
    return rc;
}

static int upload_whole(struct cuda_backend *s, const struct pi_weight *w, pi_cuda_weight_t **out)
{
    enum pi_type t = pi_backend_cuda_dev_type(w->type, w->cols);
    if (t != w->type) {
        if (!pi_kernel_supported(w->type)) {
            pi_error("cuda backend: weight type %s cannot be converted", pi_type_name(w->type));
            return -PI_ERR_UNSUPPORTED;
        }
        pi_info("cuda backend: a (%lld, %lld) %s weight is converted to F16 on upload (no device kernel)",
                (long long)w->rows, (long long)w->cols, pi_type_name(w->type));
    }
    struct rows_src src = {.a = w, .n = w->rows};
    return upload(s, &src, t, out);
}

/* Layer il's q, k and v rows stacked into one device matrix, and q, k, v as views of it. */
static int upload_qkv(struct cuda_backend *s, int il)
{
    const struct pi_layer *L = &s->base.model->layers[il];
    struct cuda_layer *cl = &s->L[il];
    uint64_t rb = 0;
    if (!pi_type_row_bytes(L->attn_q.type, (uint64_t)s->d, &rb)) return -PI_ERR_UNSUPPORTED;
    const size_t bq = (size_t)rb * (size_t)s->qd, bkv = (size_t)rb * (size_t)s->kvd;
    uint8_t *buf = malloc(bq + 2 * bkv);
    if (!buf) return -PI_ERR_NOMEM;
    memcpy(buf, pi_weight_row(&L->attn_q, 0), bq);
    memcpy(buf + bq, pi_weight_row(&L->attn_k, 0), bkv);
    memcpy(buf + bq + bkv, pi_weight_row(&L->attn_v, 0), bkv);
    int rc = pi_cuda_weight_upload(s->ctx, (int)L->attn_q.type, s->qd + 2 * s->kvd, s->d, buf, &cl->qkv);
    free(buf);
    PI_TRY(rc);
    PI_TRY(pi_cuda_weight_view(cl->qkv, 0, s->qd, &cl->q));
    PI_TRY(pi_cuda_weight_view(cl->qkv, s->qd, s->kvd, &cl->k));
    return pi_cuda_weight_view(cl->qkv, s->qd + s->kvd, s->kvd, &cl->v);
}

static int upload_hot(struct cuda_backend *s, int il)
{
    const struct pi_layer *L = &s->base.model->layers[il];
    struct cuda_layer *cl = &s->L[il];
    cl->n_hot = s->o.n_hot ? s->o.n_hot[il] : 0;
    if (cl->n_hot == 0) return 0;
    for (int64_t i = 0; i < cl->n_hot; i++) {
        int32_t id = s->o.hot[il][i];
        if (id < 0 || id >= s->base.model->hp.n_ff) {
            pi_error("cuda backend: layer %d: hot neuron id %d out of range [0, %d)", il, id, s->base.model->hp.n_ff);
            return -PI_ERR_RANGE;
        }
    }
    cl->dense = pi_backend_cuda_dense_layer(s->base.model, &s->o, il);
    /* rows from the worker's packed copy (row i = hot neuron i: no ids) or the model's (by id) */
    const struct pi_layer *H = pi_backend_cuda_hot_rows(s->base.model, &s->o, il);
    const int32_t *ids = s->o.hot_layers ? NULL : s->o.hot[il];
    if (s->o.hot_layers && (H->ffn_gate.rows < cl->n_hot || H->ffn_up.rows < cl->n_hot)) {
        pi_error("cuda backend: layer %d: %lld packed hot rows for %lld hot neurons", il, (long long)H->ffn_gate.rows,
                 (long long)cl->n_hot);
        return -PI_ERR_INVAL;
    }
    if (!cl->dense && (!H->ffn_down_t.data || H->ffn_down_t.rows < cl->n_hot)) {
        pi_error("cuda backend: layer %d has no ffn_down_t rows for its hot neurons (the model was loaded without "
                 "packing and no packed hot rows were given)", il);
        return -PI_ERR_INVAL;
    }
    struct rows_src gu = {.a = &H->ffn_gate, .b = &H->ffn_up, .ids = ids, .n = 2 * cl->n_hot};
    PI_TRY(upload(s, &gu, pi_backend_cuda_gu_type(L, s->d), &cl->gu));
    if (cl->dense) return upload_whole(s, &L->ffn_down, &cl->down);
    struct rows_src dn = {.a = &H->ffn_down_t, .ids = ids, .n = cl->n_hot};
    return upload(s, &dn, pi_backend_cuda_dev_type(H->ffn_down_t.type, s->d), &cl->down);
}

/* Layer il's predictor: fc1 (rank, d) and fc2 (n_ff, rank) as they are, or, with rank not a multiple of
 * 32, both in F16 padded to r32 (zero rows of fc1, zero columns of fc2); and its threshold. */
static int upload_pred(struct cuda_backend *s, int il)
{
    const struct pi_predictor_layer *P = &s->o.pred->layers[il];
    struct cuda_layer *cl = &s->L[il];
    const int64_t r = P->rank, r32 = pi_backend_cuda_pred_rank(r), d = s->d, ff = s->base.model->hp.n_ff;
    cl->thr = P->threshold[s->o.sparsity];
    if (r == 0) return 0;
    cl->r32 = r32;
    cl->t1 = pi_backend_cuda_pred_type(&P->fc1, r, d);
    cl->t2 = pi_backend_cuda_pred_type(&P->fc2, r, r);
    if (P->fc1.rows != r || P->fc1.cols != d || P->fc2.rows != ff || P->fc2.cols != r) {
        pi_error("cuda backend: layer %d: predictor fc1 (%lld, %lld) and fc2 (%lld, %lld) for rank %lld", il,
                 (long long)P->fc1.rows, (long long)P->fc1.cols, (long long)P->fc2.rows, (long long)P->fc2.cols, (long long)r);
        return -PI_ERR_INVAL;
    }
    if (r == r32) {
        PI_TRY(upload_whole(s, &P->fc1, &cl->fc1));
        return upload_whole(s, &P->fc2, &cl->fc2);
    }
    if (!pi_kernel_supported(P->fc1.type) || !pi_kernel_supported(P->fc2.type)) return -PI_ERR_UNSUPPORTED;
    const size_t n1 = (size_t)r32 * (size_t)d, n2 = (size_t)ff * (size_t)r32;
    uint16_t *buf = calloc(PI_MAX(n1, n2), sizeof(uint16_t)); /* f16 zeros are zero bits */
    float *row = calloc((size_t)PI_MAX(d, r32), sizeof(float));
    int rc = -PI_ERR_NOMEM;
    if (buf && row) {
        for (int64_t i = 0; i < r; i++) {
            pi_dequant_row(P->fc1.type, pi_weight_row(&P->fc1, i), row, d);
            pi_quantize_row(PI_TYPE_F16, row, buf + (size_t)i * (size_t)d, d);
        }
        rc = pi_cuda_weight_upload(s->ctx, PI_TYPE_F16, r32, d, buf, &cl->fc1);
        memset(buf, 0, n2 * sizeof(uint16_t));
        for (int64_t j = 0; rc == 0 && j < ff; j++) {
            memset(row, 0, (size_t)r32 * sizeof(float));
            pi_dequant_row(P->fc2.type, pi_weight_row(&P->fc2, j), row, r);
            pi_quantize_row(PI_TYPE_F16, row, buf + (size_t)j * (size_t)r32, r32);
        }
        if (rc == 0) rc = pi_cuda_weight_upload(s->ctx, PI_TYPE_F16, ff, r32, buf, &cl->fc2);
    }
    free(buf);
    free(row);
    return rc;
}

/* ------------------------------------------------------------------ destroy, errors */

static void cuda_destroy(pi_backend_t *b)
{
    struct cuda_backend *s = cb(b);
    if (s->ctx) {
        (void)pi_cuda_sync(s->ctx);
        if (s->ev_copy) (void)pi_cbk_event_sync(s->ev_copy);
        for (int il = 0; s->L && il < s->n_layer; il++) {
            struct cuda_layer *cl = &s->L[il];
            pi_cuda_weight_destroy(s->ctx, &cl->q);
            pi_cuda_weight_destroy(s->ctx, &cl->k);
            pi_cuda_weight_destroy(s->ctx, &cl->v);
            pi_cuda_weight_destroy(s->ctx, &cl->qkv); /* after its views */
            pi_cuda_weight_destroy(s->ctx, &cl->o);
            pi_cuda_weight_destroy(s->ctx, &cl->gu);
            pi_cuda_weight_destroy(s->ctx, &cl->down);
            pi_cuda_weight_destroy(s->ctx, &cl->fc1);
            pi_cuda_weight_destroy(s->ctx, &cl->fc2);
        }
        if (s->out != s->embd) pi_cuda_weight_destroy(s->ctx, &s->out);
        pi_cuda_weight_destroy(s->ctx, &s->embd);
        if (s->x_reg) pi_cbk_host_unregister(s->x_reg);
        pi_cbk_event_destroy(s->ev_copy);
        for (int k = 0; k < 2; k++) {
            for (int j = 0; j < 3; j++) pi_cuda_weight_destroy(s->ctx, &s->st_w[k][j]);
            if (s->ev_landed[k]) (void)pi_cbk_event_sync(s->ev_landed[k]); /* before its staging is freed */
            pi_cbk_event_destroy(s->ev_landed[k]);
            pi_cbk_event_destroy(s->ev_done[k]);
            pi_cbk_host_free(s->h_slot[k]);
        }
        pi_cbk_host_free(s->h_cold);
        pi_cuda_ctx_destroy(&s->ctx); /* frees every remaining allocation */
    }
    free(s->L);
    free(s->h_ids);
    free(s->h_seqtab);
    free(s->len);
    free(s->pend);
    free(s->seq);
    free(s->pos);
    free(s->run_start);
    free(s->h_words);
    free(s->h_on);
    free(s->h_skip);
    pi_pool_destroy(&s->st_pool);
    free(s);
}

/* Record a failure: a device error poisons the backend (the worker must end). Returns rc. */
static int fail(struct cuda_backend *s, int rc, const char *op)
{
    if (rc == -PI_ERR_DEVICE && !s->dead) {
        s->dead = true;
        pi_error("cuda backend: device error in %s; the backend is unusable from now on (the worker exits and "
                 "is restarted)", op);
    }
    return rc;
}

#define CK(s, expr, op)                                                                            \
    do {                                                                                           \
        int r_ = (expr);                                                                           \
        if (r_ < 0) return fail((s), r_, (op));                                                    \
    } while (0)

static int alive(struct cuda_backend *s, const char *op)
{
    if (!s->dead) return 0;
    pi_error("cuda backend: %s refused: an earlier device error left the device unusable", op);
    return -PI_ERR_DEVICE;
}

/* ------------------------------------------------------------------ the batch */

/* Whether this step's attention goes through pi_cuda_attention_seqs (one token of each of two or more
 * runs, a head size the flash-decoding kernels take, and the splits' partials within the attention
 * scratch already held: serving never allocates for it), and if so its table uploaded. Otherwise the
 * per-run path (cuda_attn), which gives each token the same bits. */
static int plan_seqs(struct cuda_backend *s)
{
    s->seqs = false;
    if (s->own_attn || s->n_runs != s->n || s->n < 2 || s->o.tune.cuda_att_no_seqs) return 0;
    int32_t *tab = s->h_seqtab;
    PI_TRY(pi_cuda_att_seqs_plan(s->ctx, s->n, s->n_head, s->hd, s->pos, tab, &s->seqs_max_nsplit, &s->seqs_part_bytes));
    if (s->seqs_part_bytes > pi_cuda_att_scratch_held(s->ctx)) {
        if (!s->seqs_noted)
            pi_debug("cuda backend: %d sequences' decode attention needs %zu bytes of partials, %zu held: one launch "
                     "group per sequence", s->n, s->seqs_part_bytes, pi_cuda_att_scratch_held(s->ctx));
        s->seqs_noted = true;
        return 0;
    }
    int64_t *off = (int64_t *)(void *)((uint8_t *)tab + 16 * (size_t)s->T);
    for (int t = 0; t < s->n; t++) off[t] = (int64_t)s->seq[t] * 2 * (int64_t)s->n_ctx * s->kvd; /* halves: K and V per sequence */
    /* one upload (one stream synchronisation) from the rows to the last offset */
    uint8_t *d = (uint8_t *)s->d_ids + pi_backend_cuda_seqtab_off((uint64_t)s->T);
    PI_TRY(pi_cuda_upload(s->ctx, d, tab, 16 * (size_t)s->T + 8 * (size_t)s->n));
    s->seqs = true;
    s->n_seqs++;
    return 0;
}

static int cuda_begin(pi_backend_t *b, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n)
{
    struct cuda_backend *s = cb(b);
    PI_TRY(alive(s, "begin"));
    if (n < 1 || n > s->T) {
        pi_error("cuda backend: batch of %d tokens (1..%d)", n, s->T);
        return -PI_ERR_RANGE;
    }
    memset(s->pend, 0, (size_t)s->n_seq * sizeof *s->pend);
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= s->n_vocab || seq[i] < 0 || seq[i] >= s->n_seq) {
            pi_error("cuda backend: token %d: id %d (vocabulary %d) or sequence %d (of %d) out of range", i,
                     tokens[i], s->n_vocab, seq[i], s->n_seq);
            return -PI_ERR_INVAL;
        }
        int want = s->len[seq[i]] + s->pend[seq[i]];
        if (pos[i] != want || pos[i] >= s->n_ctx) {
            pi_error("cuda backend: token %d of sequence %d at position %d (expected %d, context %d)", i, seq[i],
                     pos[i], want, s->n_ctx);
            return -PI_ERR_RANGE;
        }
        s->pend[seq[i]]++;
    }
    memcpy(s->seq, seq, (size_t)n * sizeof *seq);
    memcpy(s->pos, pos, (size_t)n * sizeof *pos);
    s->n_runs = 0;
    for (int i = 0; i < n; i++)
        if (i == 0 || seq[i] != seq[i - 1] || pos[i] != pos[i - 1] + 1) s->run_start[s->n_runs++] = i;
    s->run_start[s->n_runs] = n;
    s->n = n;
    memcpy(s->h_ids, tokens, (size_t)n * sizeof *tokens);
    memcpy(s->h_ids + n, pos, (size_t)n * sizeof *pos);
    CK(s, pi_cuda_upload(s->ctx, s->d_ids, s->h_ids, 2 * (size_t)n * sizeof(int32_t)), "begin");
    CK(s, pi_cuda_get_rows(s->ctx, s->embd, n, s->d_ids, s->d_h), "begin");
    CK(s, plan_seqs(s), "begin");
    return 0;
}

static uint8_t *kv_at(struct cuda_backend *s, int il, int seq, int which)
{
    size_t per = (size_t)s->n_ctx * (size_t)s->kvd * 2;
    return s->d_kv + (((size_t)il * (size_t)s->n_seq + (size_t)seq) * 2 + (size_t)which) * per;
}

static int attend(struct cuda_backend *s, int64_t T, int64_t pos0, const float *q, const void *kc, const void *vc,
                  float *out)
{
    if (s->own_attn) return pi_cbk_attention(s->stream, T, s->n_head, s->n_head_kv, s->hd, pos0, q, kc, vc, out);
    return pi_cuda_attention(s->ctx, T, s->n_head, s->n_head_kv, s->hd, pos0, q, kc, vc, out);
}

static int cuda_attn(pi_backend_t *b, int il)
{
    struct cuda_backend *s = cb(b);
    PI_TRY(alive(s, "attn"));
    const struct cuda_layer *cl = &s->L[il];
    const int n = s->n;
    const float *g = norm_w(s, 2 * il);
    float *d_k = s->d_k, *d_v = s->d_v;
    if (cl->qkv && n == 1) {
        /* one launch; q, k, v land one after the other (d_q's allocation holds them, see setup) */
        if (pi_cuda_norm_fusable(s->ctx, cl->qkv)) {
            CK(s, pi_cuda_matvec_norm(s->ctx, cl->qkv, s->d_h, g, s->eps, s->d_q), "attn");
        } else {
            CK(s, pi_cuda_rmsnorm(s->ctx, n, s->d, s->d_h, g, s->eps, s->d_xn), "attn");
            CK(s, pi_cuda_matvec(s->ctx, cl->qkv, s->d_xn, s->d_q), "attn");
        }
        d_k = s->d_q + s->qd;
        d_v = d_k + s->kvd;
    } else {
        CK(s, pi_cuda_rmsnorm(s->ctx, n, s->d, s->d_h, g, s->eps, s->d_xn), "attn");
        CK(s, pi_cuda_matmul(s->ctx, cl->q, n, s->d_xn, s->d_q), "attn");
        CK(s, pi_cuda_matmul(s->ctx, cl->k, n, s->d_xn, s->d_k), "attn");
        CK(s, pi_cuda_matmul(s->ctx, cl->v, n, s->d_xn, s->d_v), "attn");
    }
    const int32_t *d_pos = s->d_ids + n;
    const bool fused = s->n_runs == 1 && s->hd % 2 == 0;
    if (n == 1 && fused && !s->own_attn) {
        /* decode: RoPE, the KV store and attention in one launch, then h += o @ att (the attention may
         * quantise att for the product) */
        const int sq = s->seq[0], p0 = s->pos[0];
        CK(s, pi_cuda_attention_dec(s->ctx, s->n_head, s->n_head_kv, s->hd, s->n_rot, p0, s->rope_base, 1.0f, s->d_q,
                                    d_k, d_v, kv_at(s, il, sq, 0), kv_at(s, il, sq, 1), s->d_att, cl->o, s->d_h),
           "attn");
        return 0;
    }
    /* One run (one sequence's prompt): RoPE of q and k and the KV store in one launch. */
    if (fused) {
        const int sq = s->seq[0], p0 = s->pos[0];
        CK(s, pi_cuda_rope_kv(s->ctx, n, s->n_head, s->n_head_kv, s->hd, s->n_rot, d_pos, s->rope_base, 1.0f, s->d_q,
                              d_k, d_v, p0, kv_at(s, il, sq, 0), kv_at(s, il, sq, 1)), "attn");
    } else {
        CK(s, pi_cuda_rope(s->ctx, n, s->n_head, s->hd, s->n_rot, d_pos, s->rope_base, 1.0f, s->d_q), "attn");
        CK(s, pi_cuda_rope(s->ctx, n, s->n_head_kv, s->hd, s->n_rot, d_pos, s->rope_base, 1.0f, d_k), "attn");
    }
    if (s->seqs) { /* one token of each of several sequences: the KV stores and attention of all at once */
        const uint8_t *tab = (const uint8_t *)s->d_ids + pi_backend_cuda_seqtab_off((uint64_t)s->T);
        CK(s, pi_cuda_attention_seqs(s->ctx, n, s->seqs_max_nsplit, s->seqs_part_bytes, s->n_head, s->n_head_kv, s->hd,
                                     (const int32_t *)tab, (const int64_t *)(tab + 16 * (size_t)s->T), s->d_q, d_k, d_v,
                                     kv_at(s, il, 0, 0), kv_at(s, il, 0, 1), s->d_att), "attn");
        CK(s, pi_cuda_matmul_add(s->ctx, cl->o, n, s->d_att, s->d_h), "attn");
        return 0;
    }
    for (int r = 0; r < s->n_runs; r++) {
        const int t0 = s->run_start[r], T = s->run_start[r + 1] - t0, sq = s->seq[t0], p0 = s->pos[t0];
        uint8_t *kc = kv_at(s, il, sq, 0), *vc = kv_at(s, il, sq, 1);
        if (!fused)
            CK(s, pi_cuda_kv_store(s->ctx, s->n_head_kv, s->hd, p0, T, d_k + (size_t)t0 * (size_t)s->kvd,
                                   d_v + (size_t)t0 * (size_t)s->kvd, kc, vc), "attn");
        CK(s, attend(s, T, p0, s->d_q + (size_t)t0 * (size_t)s->qd, kc, vc, s->d_att + (size_t)t0 * (size_t)s->qd), "attn");
    }
    /* h += o @ att: the residual add in the product's epilogue */
    CK(s, pi_cuda_matmul_add(s->ctx, cl->o, n, s->d_att, s->d_h), "attn");
    return 0;
}

/* Page-lock the FFN-input buffer once the caller has given the same one twice (the exchange slot). */
static void maybe_register(struct cuda_backend *s, float *x)
{
    size_t bytes = (size_t)s->n * (size_t)s->d * sizeof(float);
    if (x == s->x_reg && bytes <= s->x_reg_bytes) return;
    if (x != s->x_last) {
        s->x_last = x;
        return;
    }
    if (s->x_reg) pi_cbk_host_unregister(s->x_reg);
    s->x_reg = NULL;
    s->x_reg_bytes = 0;
    if (pi_cbk_host_register(x, bytes) == 0) {
        s->x_reg = x;
        s->x_reg_bytes = bytes;
        pi_debug("cuda backend: FFN input buffer %p (%zu bytes) page-locked", (void *)x, bytes);
    }
}

static int cuda_ffn_input(pi_backend_t *b, int il, float *x)
{
    struct cuda_backend *s = cb(b);
    PI_TRY(alive(s, "ffn_input"));
    const int n = s->n;
    const struct cuda_layer *cl = &s->L[il];
    /* A layer whose neurons are all hot has no exchange (ffn_hot_count tells the loop so): the loop
     * asks for its x (x not NULL) only on the predictors' recall steps, and otherwise the host does not
     * wait for the device. */
    const bool all_hot = cl->n_hot >= (int64_t)s->base.model->hp.n_ff;
    s->hot_valid = false;
    /* a dense layer's decode gate/up product applies the norm itself */
    s->masked_il = -1;
    s->xn_deferred = !s->pred && !cl->gm_on && (!x || all_hot) && cl->dense && ffn_per_row(s) &&
                     pi_cuda_norm_fusable(s->ctx, cl->gu);
    if (s->xn_deferred) return 0;
    CK(s, pi_cuda_rmsnorm(s->ctx, n, s->d, s->d_h, norm_w(s, 2 * il + 1), s->eps, s->d_xn),
       "ffn_input");
    if (x) {
        if (!all_hot) maybe_register(s, x); /* the exchange's x, not the loop's recall buffer */
        /* With predictors the protocol calls ffn_predict next (compute/backend.h), whose download of
         * the mask (or the counts) waits for this stream: x is complete when it returns, and a layer
         * waits for the device once, not twice (about 10-20 us each). */
        const size_t xb = (size_t)n * (size_t)s->d * sizeof(float);
        if (s->pred) CK(s, pi_cuda_download_async(s->ctx, x, s->d_xn, xb), "ffn_input");
        else CK(s, pi_cuda_download(s->ctx, x, s->d_xn, xb), "ffn_input");
    }
    return 0;
}

/* Layer il's predictor over the n rows it reads (d_h or d_xn, pi_predictor_input's rule): logits =
 * fc2 relu(fc1 x) (pi_cuda_matmul: matvecs for
 * decode, GEMMs for batches), then the mask words, the lists of predicted-active hot neurons and, for the
 * per-row path, zeros for the unlisted activations (pi_cuda_pred_mask); the mask rows go to the host
 * (mask, the exchange's mask section) and the following ffn_hot takes the lists. */
static int cuda_ffn_predict(pi_backend_t *b, int il, uint64_t *mask, int64_t mask_words, int64_t *n_active)
{
    struct cuda_backend *s = cb(b);
    PI_TRY(alive(s, "ffn_predict"));
    const struct cuda_layer *cl = &s->L[il];
    const int n = s->n;
    const int64_t ff = s->base.model->hp.n_ff;
    *n_active = 0;
    if (!s->pred || (mask && mask_words < s->mw)) {
        pi_error("cuda backend: ffn_predict %s", s->pred ? "with fewer mask words than the layer's neurons" : "without predictors");
        return -PI_ERR_INVAL;
    }
    const float *logits = NULL;
    if (cl->fc1) {
        /* the residual d_h (the FFN's input before ffn_norm: the hot products add to it later) or d_xn */
        CK(s, pi_cuda_matmul(s->ctx, cl->fc1, n, s->o.pred->on_residual ? s->d_h : s->d_xn, s->d_ph), "ffn_predict");
        CK(s, pi_cuda_act(s->ctx, PI_CUDA_ACT_RELU, (int64_t)n * cl->r32, s->d_ph, s->d_ph), "ffn_predict");
        CK(s, pi_cuda_matmul(s->ctx, cl->fc2, n, s->d_ph, s->d_plog), "ffn_predict");
        logits = s->d_plog;
    }
    const bool per_row = ffn_per_row(s);
    CK(s, pi_cuda_pred_mask(s->ctx, n, ff, logits, cl->thr, s->d_words, s->d_on, cl->n_hot, cl->d_ids, s->d_list,
                            s->d_nlist, per_row ? s->d_sa : NULL, per_row ? n : 0), "ffn_predict");
    s->masked_il = il;
    if (mask) { /* the mask rows, padded to the exchange's width; n_active from them */
        CK(s, pi_cuda_download(s->ctx, s->h_words, s->d_words, (size_t)n * (size_t)s->mw * sizeof(uint64_t)), "ffn_predict");
        for (int t = 0; t < n; t++) {
            uint64_t *row = mask + (size_t)t * (size_t)mask_words;
            memcpy(row, s->h_words + (size_t)t * (size_t)s->mw, (size_t)s->mw * sizeof(uint64_t));
            memset(row + s->mw, 0, (size_t)(mask_words - s->mw) * sizeof(uint64_t));
            for (int64_t w = 0; w < s->mw; w++) *n_active += __builtin_popcountll(row[w]);
        }
    } else { /* a layer without exchange: only the counts (a wait for the device: doc/cuda-backend.md) */
        CK(s, pi_cuda_download(s->ctx, s->h_on, s->d_on, (size_t)n * sizeof(int32_t)), "ffn_predict");
        for (int t = 0; t < n; t++) *n_active += s->h_on[t];
    }
    return 0;
}

/* The GEMM path's down product of layer cl's hot activations d_a (n, n_hot): a dense layer adds the file's
 * ffn_down times them to d_h (its epilogue; hot_valid stays false, merge adds only cold), any other the
 * down rows (dequantised to f16) into d_parts[0 .. n d) (hot_valid). */
static int hot_down_batch(struct cuda_backend *s, const struct cuda_layer *cl)
{
    if (cl->dense) {
        CK(s, pi_cuda_matmul_add(s->ctx, cl->down, s->n, s->d_a, s->d_h), "ffn_hot");
        return 0;
    }
    CK(s, pi_cuda_dequant_f16(s->ctx, cl->down, s->d_down16), "ffn_hot");
    CK(s, pi_cbk_down_batch(s->stream, s->n, cl->n_hot, s->d, s->d_a, s->d_down16, s->d_parts), "ffn_hot");
    s->hot_valid = true;
    return 0;
}

/* The predicted-active hot neurons of layer il (after its ffn_predict): per row, the gate/up pairs of the
 * listed neurons, then the down rows of those whose activation is not zero (a dense layer: the file's
 * ffn_down times the activations, the unlisted ones zero); batches of the GEMM path compute the pairs
 * densely and zero the activations of the neurons predicted inactive before the down product. */
static int ffn_hot_sparse(struct cuda_backend *s, int il)
{
    const struct cuda_layer *cl = &s->L[il];
    const int n = s->n;
    const int64_t d = s->d, nh = cl->n_hot;
    if (ffn_per_row(s)) {
        for (int t = 0; t < n; t++) {
            const float *x = s->d_xn + (size_t)t * (size_t)d;
            const int32_t *list = s->d_list + (size_t)t * (size_t)nh, *cnt = s->d_nlist + t;
            float *a = s->d_sa + (size_t)t * (size_t)nh;
            if (cl->dense) {
                CK(s, pi_cuda_ffn_gu_list(s->ctx, cl->gu, s->act, x, list, cnt, a), "ffn_hot");
                CK(s, pi_cuda_matvec_add(s->ctx, cl->down, a, s->d_h + (size_t)t * (size_t)d), "ffn_hot");
            } else {
                CK(s, pi_cuda_ffn_hot_list(s->ctx, cl->gu, cl->down, s->act, x, list, cnt, a,
                                           s->d_parts + (size_t)t * (size_t)d), "ffn_hot");
            }
        }
        s->hot_valid = !cl->dense;
        return 0;
    }
    CK(s, pi_cuda_gemm(s->ctx, cl->gu, n, s->d_xn, s->d_g), "ffn_hot");
    CK(s, pi_cbk_glu_pairs(s->stream, s->act, n, nh, s->d_g, s->d_a), "ffn_hot");
    CK(s, pi_cuda_mask_act(s->ctx, n, nh, cl->d_ids, s->d_words, s->mw, s->d_a), "ffn_hot");
    return hot_down_batch(s, cl);
}

/* The hot neurons of layer il under its activation thresholds ("Activation thresholds" above): per row the
 * gate rows of every hot neuron, one launch that applies the rule to every row's gates (the skipped
 * activations zeroed, the kept neurons listed, the skipped pairs counted into d_skip[il]), then per row the
 * listed neurons' up rows and down rows (a dense layer: the file's ffn_down times the activations, the
 * skipped ones zero); batches of the GEMM path compute the pairs densely and zero the skipped activations
 * before the down product. */
static int ffn_hot_gated(struct cuda_backend *s, int il)
{
    const struct cuda_layer *cl = &s->L[il];
    const int n = s->n;
    const int64_t d = s->d, nh = cl->n_hot;
    uint64_t *skip = s->d_skip + il;
    if (ffn_per_row(s)) {
        for (int t = 0; t < n; t++) {
            const float *x = s->d_xn + (size_t)t * (size_t)d;
            float *a = s->d_sa + (size_t)t * (size_t)nh; /* the gate products, then the activations */
            CK(s, pi_cuda_ffn_gu_part(s->ctx, cl->gu, PI_CUDA_GU_GATE, s->act, x, NULL, NULL, a), "ffn_hot");
        }
        CK(s, pi_cuda_gate_list(s->ctx, n, nh, s->act, cl->d_gmin, s->d_sa, nh, 1, s->d_sa, nh, s->d_list, s->d_nlist,
                                skip), "ffn_hot");
        for (int t = 0; t < n; t++) {
            const float *x = s->d_xn + (size_t)t * (size_t)d;
            const int32_t *list = s->d_list + (size_t)t * (size_t)nh, *cnt = s->d_nlist + t;
            float *a = s->d_sa + (size_t)t * (size_t)nh, *y = s->d_parts + (size_t)t * (size_t)d;
            CK(s, pi_cuda_ffn_gu_part(s->ctx, cl->gu, PI_CUDA_GU_UP, s->act, x, list, cnt, a), "ffn_hot");
            if (cl->dense) CK(s, pi_cuda_matvec_add(s->ctx, cl->down, a, s->d_h + (size_t)t * (size_t)d), "ffn_hot");
            else CK(s, pi_cuda_ffn_down_list(s->ctx, cl->down, list, cnt, a, y), "ffn_hot");
        }
        s->hot_valid = !cl->dense;
        return 0;
    }
    CK(s, pi_cuda_gemm(s->ctx, cl->gu, n, s->d_xn, s->d_g), "ffn_hot");
    CK(s, pi_cbk_glu_pairs(s->stream, s->act, n, nh, s->d_g, s->d_a), "ffn_hot");
    CK(s, pi_cuda_gate_list(s->ctx, n, nh, s->act, cl->d_gmin, s->d_g, 2 * nh, 2, s->d_a, nh, NULL, NULL, skip),
       "ffn_hot");
    return hot_down_batch(s, cl);
}

/* The hot neurons of layer il over the rows of d_xn: into d_parts[0 .. n d) (hot_valid), or, for a
 * dense layer, added to d_h directly (its down product's epilogue; ffn_merge then adds only cold). With
 * the layer's prediction (ffn_predict) only the predicted-active ones (ffn_hot_sparse); under activation
 * thresholds the kept ones (ffn_hot_gated). */
static int cuda_ffn_hot(pi_backend_t *b, int il)
{
    struct cuda_backend *s = cb(b);
    PI_TRY(alive(s, "ffn_hot"));
    const struct cuda_layer *cl = &s->L[il];
    const int n = s->n;
    const int64_t d = s->d;
    s->hot_valid = false;
    const bool deferred = s->xn_deferred;
    s->xn_deferred = false;
    if (deferred && !(cl->dense && ffn_per_row(s))) { /* ffn_input's condition, which implies this */
        pi_error("cuda backend: layer %d: the FFN norm was left to a path that does not apply it", il);
        return -PI_ERR_INVAL;
    }
    if (cl->n_hot == 0) return 0;
    if (s->masked_il == il) {
        s->masked_il = -1;
        return ffn_hot_sparse(s, il);
    }
    if (cl->gm_on) return ffn_hot_gated(s, il);
    if (cl->dense && ffn_per_row(s)) {
        /* a dense layer adds its product to h directly (the epilogue's add); merge adds only cold. With
         * xn_deferred the input is h itself and the gate/up product applies the FFN norm. */
        const float *g = deferred ? norm_w(s, 2 * il + 1) : NULL;
        for (int t = 0; t < n; t++)
            CK(s, pi_cuda_ffn_dense(s->ctx, cl->gu, cl->down, s->act, (g ? s->d_h : s->d_xn) + (size_t)t * (size_t)d, g,
                                    s->eps, s->d_h + (size_t)t * (size_t)d, 1), "ffn_hot");
        return 0;
    }
    if (ffn_per_row(s)) { /* a layer of hot rows */
        for (int t = 0; t < n; t++)
            CK(s, pi_cuda_ffn_hot(s->ctx, cl->gu, cl->down, s->act, s->d_xn + (size_t)t * (size_t)d, NULL, NULL,
                                  s->d_parts + (size_t)t * (size_t)d), "ffn_hot");
        s->hot_valid = true;
        return 0;
    }
    CK(s, pi_cuda_gemm(s->ctx, cl->gu, n, s->d_xn, s->d_g), "ffn_hot");
    CK(s, pi_cbk_glu_pairs(s->stream, s->act, n, cl->n_hot, s->d_g, s->d_a), "ffn_hot");
    return hot_down_batch(s, cl);
}

/* h += hot + cold; cold (n, d) host memory or NULL. */
static int cuda_ffn_merge(pi_backend_t *b, int il, const float *cold)
{
    struct cuda_backend *s = cb(b);
    (void)il;
    PI_TRY(alive(s, "ffn_merge"));
    const size_t nd = (size_t)s->n * (size_t)s->d;
    float *d_cold = s->d_parts + nd; /* pi_cuda_merge's parts are (n_parts, nd) */
    if (cold) {
        CK(s, pi_cbk_event_sync(s->ev_copy), "ffn_merge"); /* the staging's previous copy is done */
        memcpy(s->h_cold, cold, nd * sizeof(float));
        CK(s, pi_cbk_copy_in(s->copy_stream, s->stream, s->ev_copy, d_cold, s->h_cold, nd * sizeof(float)), "ffn_merge");
    }
    if (s->hot_valid && cold) CK(s, pi_cuda_merge(s->ctx, (int64_t)nd, 2, s->d_parts, s->d_h), "ffn_merge");
    else if (s->hot_valid) CK(s, pi_cuda_merge(s->ctx, (int64_t)nd, 1, s->d_parts, s->d_h), "ffn_merge");
    else if (cold) CK(s, pi_cuda_merge(s->ctx, (int64_t)nd, 1, d_cold, s->d_h), "ffn_merge");
    s->hot_valid = false;
    return 0;
}

static int cuda_output(pi_backend_t *b, int n_out, float *logits)
{
    struct cuda_backend *s = cb(b);
    PI_TRY(alive(s, "output"));
    if (n_out < 1 || n_out > s->n) {
        pi_error("cuda backend: output of %d rows of a batch of %d", n_out, s->n);
        return -PI_ERR_RANGE;
    }
    const float *h = s->d_h + (size_t)(s->n - n_out) * (size_t)s->d;
    CK(s, pi_cuda_rmsnorm(s->ctx, n_out, s->d, h, norm_w(s, 2 * s->n_layer), s->eps,
                          s->d_xn), "output");
    /* the head over at most PI_BACKEND_CUDA_OUT_ROWS rows per product (d_logits holds that many) */
    const size_t V = (size_t)s->n_vocab;
    for (int r0 = 0; r0 < n_out; r0 += PI_BACKEND_CUDA_OUT_ROWS) {
        const int nr = PI_MIN(n_out - r0, PI_BACKEND_CUDA_OUT_ROWS);
        CK(s, pi_cuda_matmul(s->ctx, s->out, nr, s->d_xn + (size_t)r0 * (size_t)s->d, s->d_logits), "output");
        CK(s, pi_cuda_download(s->ctx, logits + (size_t)r0 * V, s->d_logits, (size_t)nr * V * sizeof(float)), "output");
    }
    return 0;
}

static void cuda_commit(pi_backend_t *b)
{
    struct cuda_backend *s = cb(b);
    for (int i = 0; i < s->n; i++)
        if (s->pos[i] + 1 > s->len[s->seq[i]]) s->len[s->seq[i]] = s->pos[i] + 1;
    s->n = 0;
}

static int cuda_seq_truncate(pi_backend_t *b, int seq, int n)
{
    struct cuda_backend *s = cb(b);
    if (seq < 0 || seq >= s->n_seq || n < 0 || n > s->len[seq]) {
        pi_error("cuda backend: cannot truncate sequence %d to %d positions", seq, n);
        return -PI_ERR_RANGE;
    }
    s->len[seq] = n;
    return 0;
}

static int cuda_seq_len(const pi_backend_t *b, int seq)
{
    const struct cuda_backend *s = (const struct cuda_backend *)b;
    if (seq < 0 || seq >= s->n_seq) return -PI_ERR_RANGE;
    return s->len[seq];
}

/* The pairs skipped per layer since the last call: d_skip downloaded (a wait for the step's work, which the
 * loop's output already waited for) and cleared on the stream. */
static int cuda_ffn_hot_skipped(pi_backend_t *b, int64_t *skipped)
{
    struct cuda_backend *s = cb(b);
    const size_t L = (size_t)s->n_layer;
    memset(skipped, 0, L * sizeof *skipped);
    if (!s->d_skip) return 0;
    PI_TRY(alive(s, "ffn_hot_skipped"));
    CK(s, pi_cuda_download(s->ctx, s->h_skip, s->d_skip, L * sizeof(uint64_t)), "ffn_hot_skipped");
    CK(s, pi_cuda_memset(s->ctx, s->d_skip, 0, L * sizeof(uint64_t)), "ffn_hot_skipped");
    for (size_t il = 0; il < L; il++) skipped[il] = (int64_t)PI_MIN(s->h_skip[il], (uint64_t)INT64_MAX);
    return 0;
}

static int64_t cuda_ffn_hot_count(const pi_backend_t *b, int il)
{
    const struct cuda_backend *s = (const struct cuda_backend *)b;
    return il >= 0 && il < s->n_layer ? s->L[il].n_hot : 0;
}

/* ------------------------------------------------------------------ prompt streaming */

/* Layer il's ffn_gate, ffn_up, ffn_down as packing sees them: the weights and their offsets in a slot.
 * 0, or -PI_ERR_INVAL where they do not fit a slot (not a layer pi_backend_cuda_stream_slot counted). */
static int stream_layout(const struct cuda_backend *s, int il, const struct pi_weight *w[3], uint64_t off[3], uint64_t *total)
{
    const struct pi_layer *L = &s->base.model->layers[il];
    w[0] = &L->ffn_gate, w[1] = &L->ffn_up, w[2] = &L->ffn_down;
    uint64_t at = 0;
    for (int j = 0; j < 3; j++) {
        size_t b = 0;
        if (pi_backend_cuda_dev_type(w[j]->type, w[j]->cols) != w[j]->type ||
            pi_cuda_weight_bytes_for((int)w[j]->type, w[j]->rows, w[j]->cols, &b) < 0)
            return -PI_ERR_INVAL;
        off[j] = at;
        at += b; /* a multiple of 256: the next image starts aligned */
    }
    *total = at;
    return at <= s->st_slot ? 0 : -PI_ERR_INVAL;
}

struct pack_task {
    const struct pi_weight *w[3];
    uint64_t off[3];
    uint8_t *image;
    _Atomic int rc;
};

/* Rows [b, e) of the three weights counted one after another (gate's, up's, down's) into the image. */
static void pack_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct pack_task *t = ctx;
    (void)thread;
    int64_t base = 0;
    for (int j = 0; j < 3; j++) {
        const struct pi_weight *w = t->w[j];
        const int64_t lo = PI_MAX(b, base), hi = PI_MIN(e, base + w->rows);
        if (lo < hi && pi_cuda_weight_pack_rows((int)w->type, w->rows, w->cols, w->data, lo - base, hi - lo, t->image + t->off[j]) < 0)
            t->rc = -PI_ERR_INVAL;
        base += w->rows;
    }
}

/* Pack layer il's FFN weights into staging k (host threads), once its previous copy has read it: w, off
 * and bytes as stream_layout gives them. Slot k is marked empty first. */
static int stream_pack(struct cuda_backend *s, int il, int k, const struct pi_weight *w[3], uint64_t off[3], uint64_t *bytes)
{
    struct pack_task t = {.image = s->h_slot[k]};
    if (stream_layout(s, il, w, off, bytes) != 0) {
        pi_error("cuda backend: layer %d's FFN weights do not fit a streaming slot (%llu bytes)", il, (unsigned long long)s->st_slot);
        return -PI_ERR_INVAL;
    }
    s->st_layer[k] = -1;
    CK(s, pi_cbk_event_sync(s->ev_landed[k]), "ffn_stream"); /* the staging's previous copy has read it */
    memcpy(t.w, w, sizeof t.w);
    memcpy(t.off, off, sizeof t.off);
    pi_pool_for(s->st_pool, w[0]->rows + w[1]->rows + w[2]->rows, 64, pack_range, &t);
    if (t.rc != 0) {
        pi_error("cuda backend: layer %d: packing its FFN weights failed", il);
        return -PI_ERR_INVAL;
    }
    return 0;
}

/* Start moving layer il's FFN weights into slot k: pack them into its staging, wrap the slot's weights,
 * and copy on the copy stream once the slot's previous products are done. */
static int stream_start(struct cuda_backend *s, int il, int k)
{
    const struct pi_weight *w[3];
    uint64_t off[3], bytes = 0;
    PI_TRY(stream_pack(s, il, k, w, off, &bytes));
    for (int j = 0; j < 3; j++) {
        pi_cuda_weight_destroy(s->ctx, &s->st_w[k][j]); /* the kernels took their values at launch */
        PI_TRY(pi_cuda_weight_wrap((int)w[j]->type, w[j]->rows, w[j]->cols, s->d_slot[k] + off[j], &s->st_w[k][j]));
    }
    CK(s, pi_cbk_copy_after(s->copy_stream, s->ev_done[k], s->d_slot[k], s->h_slot[k], (size_t)bytes, s->ev_landed[k]),
       "ffn_stream");
    s->st_layer[k] = il;
    return 0;
}

/* h += down act(gate x, up x) with x = ffn_norm(h), from slot k (layer il), once its copy has landed. */
static int stream_layer(struct cuda_backend *s, int il, int k)
{
    const int n = s->n;
    const size_t nf = (size_t)n * (size_t)s->base.model->hp.n_ff;
    float *g = s->d_sg, *u = s->d_sg + nf;
    CK(s, pi_cbk_stream_wait(s->stream, s->ev_landed[k]), "ffn_stream");
    CK(s, pi_cuda_rmsnorm(s->ctx, n, s->d, s->d_h, norm_w(s, 2 * il + 1), s->eps, s->d_xn), "ffn_stream");
    CK(s, pi_cuda_matmul(s->ctx, s->st_w[k][0], n, s->d_xn, g), "ffn_stream");
    CK(s, pi_cuda_matmul(s->ctx, s->st_w[k][1], n, s->d_xn, u), "ffn_stream");
    CK(s, pi_cuda_glu(s->ctx, s->act, (int64_t)nf, g, u, g), "ffn_stream");
    CK(s, pi_cuda_matmul_add(s->ctx, s->st_w[k][2], n, g, s->d_h), "ffn_stream");
    CK(s, pi_cbk_event_record(s->stream, s->ev_done[k]), "ffn_stream");
    return 0;
}

/* compute/backend.h: layer il's whole FFN from its slot (copied now if it was not prefetched), then
 * next's copy into the other slot. */
static int cuda_ffn_stream(pi_backend_t *b, int il, int next)
{
    struct cuda_backend *s = cb(b);
    PI_TRY(alive(s, "ffn_stream"));
    if (!s->st_on || s->n < 1 || il < -1 || il >= s->n_layer || next < -1 || next >= s->n_layer || (next >= 0 && next <= il)) {
        pi_error("cuda backend: ffn_stream(%d, %d) %s", il, next,
                 s->st_on ? "outside the model's layers or out of order" : "without the streaming buffers (prompt_stream off?)");
        return -PI_ERR_INVAL;
    }
    s->hot_valid = false;
    s->masked_il = -1;
    s->xn_deferred = false;
    int k = -1;
    if (il >= 0) {
        k = s->st_layer[0] == il ? 0 : s->st_layer[1] == il ? 1 : -1;
        if (k < 0) { /* not prefetched: copy it now, into the slot that does not hold next */
            k = next >= 0 && s->st_layer[0] == next ? 1 : 0;
            PI_TRY(stream_start(s, il, k));
        }
        PI_TRY(stream_layer(s, il, k));
    }
    if (next >= 0 && s->st_layer[0] != next && s->st_layer[1] != next) PI_TRY(stream_start(s, next, k < 0 ? 0 : 1 - k));
    return 0;
}

/* compute/backend.h: the measured copy and packing, or -PI_ERR_UNSUPPORTED without streaming buffers. */
static int cuda_stream_rates(const pi_backend_t *b, double *copy_bps, double *pack_bps)
{
    const struct cuda_backend *s = (const struct cuda_backend *)b;
    *copy_bps = s->st_on ? s->st_copy_bps : 0.0;
    *pack_bps = s->st_on ? s->st_pack_bps : 0.0;
    return s->st_on ? 0 : -PI_ERR_UNSUPPORTED;
}

static const struct pi_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .begin = cuda_begin,
    .attn = cuda_attn,
    .ffn_input = cuda_ffn_input,
    .ffn_hot = cuda_ffn_hot,
    .ffn_merge = cuda_ffn_merge,
    .output = cuda_output,
    .commit = cuda_commit,
    .seq_truncate = cuda_seq_truncate,
    .seq_len = cuda_seq_len,
    .ffn_hot_count = cuda_ffn_hot_count,
    .ffn_predict = cuda_ffn_predict,
    .ffn_stream = cuda_ffn_stream,
    .stream_rates = cuda_stream_rates,
    .ffn_hot_skipped = cuda_ffn_hot_skipped,
};

/* ------------------------------------------------------------------ creation */

static int dalloc(struct cuda_backend *s, uint64_t bytes, void *out)
{
    return pi_cuda_alloc(s->ctx, (size_t)bytes, (void **)out);
}

/* Grow the context's scratch slots to their largest sizes now, each slot's largest request first, so
 * that what the context holds is what plan() counted and serving never allocates. */
static int warm_scratch(struct cuda_backend *s)
{
    const pi_model_t *m = s->base.model;
    const int T = s->T;
    if (!s->own_attn) {
        int Ta = PI_MIN(T, s->n_ctx);
        CK(s, pi_cuda_attention(s->ctx, Ta, s->n_head, s->n_head_kv, s->hd, s->n_ctx - Ta, s->d_q, kv_at(s, 0, 0, 0),
                                kv_at(s, 0, 0, 1), s->d_att), "start");
    }
    if (T > PI_CUDA_MATVEC_MAX_ROWS) { /* the GEMMs' scratch (kernels/cuda/plan.h), each slot at its largest */
        /* the dequantised tile: the weight with the largest one (none where every batch takes the integer
         * GEMM or the weights are F16) */
        const struct pi_weight *ow = m->tied ? &m->token_embd : &m->output;
        uint64_t best = tile_bytes(PI_MIN(s->T, PI_BACKEND_CUDA_OUT_ROWS), pi_backend_cuda_dev_type(ow->type, s->d),
                                   s->n_vocab, s->d); /* cuda_output's products */
        for (int il = 0; il < s->n_layer; il++) {
            const struct pi_layer *L = &m->layers[il];
            const struct cuda_layer *cl = &s->L[il];
            best = PI_MAX(best, tile_bytes(s->T, pi_backend_cuda_dev_type(L->attn_q.type, s->d), s->qd, s->d));
            best = PI_MAX(best, tile_bytes(s->T, pi_backend_cuda_dev_type(L->attn_k.type, s->d), s->kvd, s->d));
            best = PI_MAX(best, tile_bytes(s->T, pi_backend_cuda_dev_type(L->attn_v.type, s->d), s->kvd, s->d));
            best = PI_MAX(best, tile_bytes(s->T, pi_backend_cuda_dev_type(L->attn_output.type, s->qd), s->d, s->qd));
            if (s->d_g && cl->n_hot > 0)
                best = PI_MAX(best, tile_bytes(s->T, pi_backend_cuda_gu_type(L, s->d), 2 * cl->n_hot, s->d));
            if (s->d_g && cl->dense)
                best = PI_MAX(best, tile_bytes(s->T, pi_backend_cuda_dev_type(L->ffn_down.type, m->hp.n_ff), s->d,
                                               m->hp.n_ff));
            if (cl->fc1) best = PI_MAX(best, tile_bytes(s->T, cl->t1, cl->r32, s->d));
            if (cl->fc2) best = PI_MAX(best, tile_bytes(s->T, cl->t2, m->hp.n_ff, cl->r32));
            if (s->st_on && cl->n_hot < m->hp.n_ff) { /* a streamed layer's products (its file types) */
                best = PI_MAX(best, tile_bytes(s->T, L->ffn_gate.type, m->hp.n_ff, s->d));
                best = PI_MAX(best, tile_bytes(s->T, L->ffn_up.type, m->hp.n_ff, s->d));
                best = PI_MAX(best, tile_bytes(s->T, L->ffn_down.type, s->d, m->hp.n_ff));
            }
        }
        /* the GEMM input at T rows of the widest input: a dense layer's down product (n_ff columns) where
         * there is one, a predictor's fc2 where wider, else o or q */
        bool dense = false;
        int64_t widest = PI_MAX(s->d, s->qd);
        for (int il = 0; il < s->n_layer; il++) {
            dense |= s->d_g && s->L[il].dense;
            if (s->L[il].fc2) widest = PI_MAX(widest, s->L[il].r32);
        }
        if (dense || s->st_on) widest = PI_MAX(widest, (int64_t)m->hp.n_ff);
        CK(s, pi_cuda_gemm_reserve(s->ctx, pi_cuda_gemm_x16_bytes(T, widest), (size_t)best), "start");
    }
    bool any_dense = false;
    for (int il = 0; il < s->n_layer; il++) any_dense |= s->L[il].dense;
    CK(s, pi_cuda_xq_reserve(s->ctx, (size_t)pi_backend_cuda_xq_total(m, &s->o, any_dense)), "start");
    for (int il = 0; il < s->n_layer; il++) {
        const struct cuda_layer *cl = &s->L[il];
        if (cl->n_hot != s->n_hot_max || cl->n_hot == 0) continue;
        if (cl->dense) CK(s, pi_cuda_ffn_dense(s->ctx, cl->gu, cl->down, s->act, s->d_xn, NULL, 0.0f, s->d_parts, 0), "start");
        else CK(s, pi_cuda_ffn_hot(s->ctx, cl->gu, cl->down, s->act, s->d_xn, NULL, NULL, s->d_parts), "start");
        break;
    }
    return 0;
}

/* Prompt streaming's buffers (the plan's stream part): the two device slots and the products' buffer,
 * the pinned staging, the events and the packing threads; then the timed copy and packing
 * (st_copy_bps, st_pack_bps). */
static int setup_stream(struct cuda_backend *s)
{
    const uint64_t ff = (uint64_t)s->base.model->hp.n_ff;
    s->st_slot = pi_backend_cuda_stream_slot(s->base.model, &s->o);
    s->st_layer[0] = s->st_layer[1] = -1;
    for (int k = 0; k < 2; k++) {
        PI_TRY(dalloc(s, s->st_slot, &s->d_slot[k]));
        PI_TRY(pi_cbk_host_alloc((size_t)s->st_slot, (void **)&s->h_slot[k]));
        memset(s->h_slot[k], 0, (size_t)s->st_slot);
        PI_TRY(pi_cbk_event_new(&s->ev_landed[k]));
        PI_TRY(pi_cbk_event_new(&s->ev_done[k]));
    }
    PI_TRY(dalloc(s, (uint64_t)s->T * 2 * ff * sizeof(float), &s->d_sg));
    /* one packing thread per CPU this process may run on (its affinity and cpuset: pi_cpus_usable), not
     * --threads (1 unless [cpu] threads is set: the GPU worker's own compute is on the device): the
     * packing is on a streamed step's critical path, and the CPU workers, which own those cores, have
     * nothing to do during such a step (they sleep in their wait) */
    if (!(s->st_pool = pi_pool_new(0))) return -PI_ERR_NOMEM;
    PI_TRY(pi_cbk_h2d_measure(s->copy_stream, s->d_slot[0], s->h_slot[0], (size_t)s->st_slot, &s->st_copy_bps));
    /* The packing, timed on the first layer with cold neurons: twice, the better kept (as the copy), since
     * the first pass may read pages of the mapping from disk that serving finds resident. The cost model
     * overlaps the packing with the copy and the products (compute/stream-policy.h). */
    int il0 = 0;
    while (il0 < s->n_layer && s->L[il0].n_hot >= (int64_t)s->base.model->hp.n_ff) il0++;
    for (int pass = 0; pass < 2; pass++) {
        const struct pi_weight *w[3];
        uint64_t off[3], bytes = 0;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        PI_TRY(stream_pack(s, il0, 0, w, off, &bytes));
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
        if (sec > 0) s->st_pack_bps = PI_MAX(s->st_pack_bps, (double)bytes / sec);
    }
    pi_info("cuda backend: prompt streaming: 2 slots of %.1f MiB on the device and pinned on the host; host-to-device copy "
            "%.1f GB/s, packing %.1f GB/s (%d threads, the better of two)", s->st_slot / 1048576.0, s->st_copy_bps / 1e9,
            s->st_pack_bps / 1e9, pi_pool_size(s->st_pool));
    return 0;
}

/* Layer il's activation thresholds on the device (o.thresholds): its hot neurons' (o.gate_min[il], in the
 * packed rows' order), zeros without o.gate_min; gm_on when one is positive. */
static int upload_gate(struct cuda_backend *s, int il)
{
    struct cuda_layer *cl = &s->L[il];
    if (cl->n_hot == 0) return 0;
    const size_t bytes = (size_t)cl->n_hot * sizeof(float);
    PI_TRY(dalloc(s, bytes, &cl->d_gmin));
    const float *g = s->o.gate_min ? s->o.gate_min[il] : NULL;
    if (!g) return pi_cuda_memset(s->ctx, cl->d_gmin, 0, bytes);
    for (int64_t i = 0; i < cl->n_hot; i++) cl->gm_on |= g[i] > 0.0f;
    return pi_cuda_upload(s->ctx, cl->d_gmin, g, bytes);
}

static int setup(struct cuda_backend *s, const struct pi_backend_cuda_plan *p)
{
    const pi_model_t *m = s->base.model;
    const uint64_t T = (uint64_t)s->T, f = sizeof(float);
    /* 1. attention weights and norms */
    for (int il = 0; il < s->n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        if (pi_backend_cuda_fuse_qkv(L, s->d)) {
            PI_TRY(upload_qkv(s, il));
        } else {
            PI_TRY(upload_whole(s, &L->attn_q, &s->L[il].q));
            PI_TRY(upload_whole(s, &L->attn_k, &s->L[il].k));
            PI_TRY(upload_whole(s, &L->attn_v, &s->L[il].v));
        }
        PI_TRY(upload_whole(s, &L->attn_output, &s->L[il].o));
    }
    PI_TRY(dalloc(s, p->norms, &s->d_norms));
    for (int il = 0; il < s->n_layer; il++) {
        PI_TRY(pi_cuda_upload(s->ctx, norm_w(s, 2 * il), m->layers[il].attn_norm, (size_t)s->d * f));
        PI_TRY(pi_cuda_upload(s->ctx, norm_w(s, 2 * il + 1), m->layers[il].ffn_norm, (size_t)s->d * f));
    }
    PI_TRY(pi_cuda_upload(s->ctx, norm_w(s, 2 * s->n_layer), m->output_norm, (size_t)s->d * f));
    /* 2. embeddings and output head */
    PI_TRY(upload_whole(s, &m->token_embd, &s->embd));
    if (m->tied) s->out = s->embd;
    else PI_TRY(upload_whole(s, &m->output, &s->out));
    /* 3. hot neurons, then the predictors and the hot ids their masks are read through */
    for (int il = 0; il < s->n_layer; il++) PI_TRY(upload_hot(s, il));
    for (int il = 0; s->pred && il < s->n_layer; il++) {
        struct cuda_layer *cl = &s->L[il];
        PI_TRY(upload_pred(s, il));
        if (cl->n_hot == 0 || cl->dense) continue;
        PI_TRY(dalloc(s, (uint64_t)cl->n_hot * sizeof(int32_t), &cl->d_ids));
        PI_TRY(pi_cuda_upload(s->ctx, cl->d_ids, s->o.hot[il], (size_t)cl->n_hot * sizeof(int32_t)));
    }
    for (int il = 0; s->gated && il < s->n_layer; il++) PI_TRY(upload_gate(s, il)); /* the thresholds */
    /* 4. KV cache */
    PI_TRY(dalloc(s, p->kv, &s->d_kv));
    PI_TRY(pi_cuda_memset(s->ctx, s->d_kv, 0, (size_t)p->kv));
    /* 5. activations */
    const uint64_t d = (uint64_t)s->d;
    PI_TRY(dalloc(s, T * d * f, &s->d_h));
    PI_TRY(dalloc(s, T * d * f, &s->d_xn));
    PI_TRY(dalloc(s, T * (uint64_t)(s->qd + 2 * s->kvd) * f, &s->d_q));
    s->d_k = s->d_q + T * (uint64_t)s->qd;
    s->d_v = s->d_k + T * (uint64_t)s->kvd;
    PI_TRY(dalloc(s, T * (uint64_t)s->qd * f, &s->d_att));
    PI_TRY(dalloc(s, 2 * T * d * f, &s->d_parts));
    PI_TRY(dalloc(s, (uint64_t)PI_MIN(T, (uint64_t)PI_BACKEND_CUDA_OUT_ROWS) * (uint64_t)s->n_vocab * f, &s->d_logits));
    PI_TRY(dalloc(s, pi_backend_cuda_ids_bytes(T), &s->d_ids));
    if (s->n_hot_max > 0 && s->T >= PI_BACKEND_CUDA_HOT_BATCH_MIN) {
        PI_TRY(dalloc(s, T * 2 * (uint64_t)s->n_hot_max * f, &s->d_g));
        PI_TRY(dalloc(s, T * (uint64_t)s->n_hot_max * f, &s->d_a));
        int64_t n_sparse_max = 0; /* d_down16 serves the layers that are not dense (make_plan) */
        for (int il = 0; il < s->n_layer; il++)
            if (!s->L[il].dense) n_sparse_max = PI_MAX(n_sparse_max, s->L[il].n_hot);
        if (n_sparse_max > 0) PI_TRY(dalloc(s, (uint64_t)n_sparse_max * d * 2, &s->d_down16));
        PI_TRY(pi_cuda_memset(s->ctx, s->d_a, 0, (size_t)(T * (uint64_t)s->n_hot_max * f))); /* warm_scratch reads it */
    }
    if (s->pred) { /* the sparse path's buffers (plan_pred in compute/backend-cuda-plan.c) */
        int64_t rmax = 0;
        for (int il = 0; il < s->n_layer; il++) rmax = PI_MAX(rmax, s->L[il].r32);
        if (rmax > 0) {
            PI_TRY(dalloc(s, T * (uint64_t)rmax * f, &s->d_ph));
            PI_TRY(dalloc(s, T * (uint64_t)m->hp.n_ff * f, &s->d_plog));
            PI_TRY(pi_cuda_memset(s->ctx, s->d_ph, 0, (size_t)(T * (uint64_t)rmax * f))); /* warm_scratch reads it */
        }
        PI_TRY(dalloc(s, T * (uint64_t)s->mw * sizeof(uint64_t), &s->d_words));
        PI_TRY(dalloc(s, T * sizeof(int32_t), &s->d_on));
        if (s->n_hot_max > 0) {
            const uint64_t rows = PI_MIN(T, (uint64_t)PI_BACKEND_CUDA_HOT_BATCH_MIN - 1);
            PI_TRY(dalloc(s, T * (uint64_t)s->n_hot_max * sizeof(int32_t), &s->d_list));
            PI_TRY(dalloc(s, T * sizeof(int32_t), &s->d_nlist));
            PI_TRY(dalloc(s, rows * (uint64_t)s->n_hot_max * f, &s->d_sa));
        }
    }
    if (s->gated) { /* the thresholds' buffers (plan_gate in compute/backend-cuda-plan.c) */
        if (s->n_hot_max > 0) {
            const uint64_t rows = PI_MIN(T, (uint64_t)PI_BACKEND_CUDA_HOT_BATCH_MIN - 1);
            PI_TRY(dalloc(s, rows * (uint64_t)s->n_hot_max * sizeof(int32_t), &s->d_list));
            PI_TRY(dalloc(s, rows * sizeof(int32_t), &s->d_nlist));
            PI_TRY(dalloc(s, rows * (uint64_t)s->n_hot_max * f, &s->d_sa));
        }
        PI_TRY(dalloc(s, (uint64_t)s->n_layer * sizeof(uint64_t), &s->d_skip));
        PI_TRY(pi_cuda_memset(s->ctx, s->d_skip, 0, (size_t)s->n_layer * sizeof(uint64_t)));
    }
    /* defined contents for the warm-up's products */
    PI_TRY(pi_cuda_memset(s->ctx, s->d_xn, 0, (size_t)(T * d * f)));
    PI_TRY(pi_cuda_memset(s->ctx, s->d_q, 0, (size_t)(T * (uint64_t)s->qd * f)));
    PI_TRY(pi_cuda_memset(s->ctx, s->d_att, 0, (size_t)(T * (uint64_t)s->qd * f)));
    if (s->st_on) PI_TRY(setup_stream(s)); /* the slots, the products' buffer; their host side */
    /* 6. the kernels' scratch, then the host side of the exchange */
    PI_TRY(warm_scratch(s));
    PI_TRY(pi_cbk_host_alloc((size_t)(T * d * f), (void **)&s->h_cold));
    PI_TRY(pi_cbk_event_new(&s->ev_copy));
    return pi_cuda_sync(s->ctx);
}

static void too_big(const struct pi_backend_cuda_plan *p, uint64_t budget, int64_t n_hot_max, int n_seq, int n_ctx)
{
    const double M = 1048576.0;
    pi_error("cuda backend: the model does not fit the VRAM budget: it needs %.1f MiB (attention weights %.1f, "
             "norms %.2f, embeddings and output head %.1f, hot neurons %.1f (up to %lld per layer), KV cache %.1f "
             "(%d sequences x %d positions, f16), activations %.1f, kernel scratch and cuBLAS workspace %.1f, predictors and "
             "sparse buffers %.1f, prompt streaming %.1f; %llu bytes in all) but the budget is %.1f MiB (%llu bytes); lower the hot "
             "fraction, the context or the sequences, set tune.prompt_stream=off, or raise --vram-budget",
             p->total / M, p->attn / M, p->norms / M, p->head / M, p->hot / M, (long long)n_hot_max, p->kv / M, n_seq,
             n_ctx, p->act / M, p->scratch / M, (p->pred + p->gate) / M, p->stream / M, (unsigned long long)p->total,
             budget / M, (unsigned long long)budget);
}

/* The backend's host side: geometry from m and o, and the host arrays. NULL when out of memory. */
static struct cuda_backend *new_host_side(const pi_model_t *m, const struct pi_backend_opts *o, int n_ctx, int n_seq,
                                          bool own_attn, int64_t n_hot_max, uint64_t planned)
{
    const struct pi_hparams *hp = &m->hp;
    struct cuda_backend *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->base.ops = &cuda_ops;
    s->base.model = m;
    s->o = *o;
    s->d = hp->n_embd;
    s->hd = hp->head_dim;
    s->n_head = hp->n_head;
    s->n_head_kv = hp->n_head_kv;
    s->qd = hp->n_head * hp->head_dim;
    s->kvd = hp->n_head_kv * hp->head_dim;
    s->n_rot = hp->n_rot;
    s->n_layer = hp->n_layer;
    s->n_vocab = hp->n_vocab;
    s->n_ctx = n_ctx;
    s->n_seq = n_seq;
    s->T = o->max_tokens;
    s->act = (int)hp->act; /* enum pi_ffn_act and enum pi_cuda_act share their values */
    s->eps = hp->rms_eps;
    s->rope_base = hp->rope_base;
    s->own_attn = own_attn;
    s->n_hot_max = n_hot_max;
    s->planned = planned;
    s->pred = pi_backend_cuda_pred_on(o);
    s->gated = pi_backend_cuda_gate_on(o); /* the plan's rule */
    s->st_on = pi_backend_cuda_stream_on(m, o);
    s->mw = (hp->n_ff + 63) / 64;
    s->masked_il = -1;
    s->L = calloc((size_t)hp->n_layer, sizeof *s->L);
    s->h_ids = malloc(2 * (size_t)s->T * sizeof(int32_t));
    s->h_seqtab = calloc((size_t)s->T, 16 + 8);
    s->len = calloc((size_t)n_seq, sizeof(int32_t));
    s->pend = calloc((size_t)n_seq, sizeof(int32_t));
    s->seq = malloc((size_t)s->T * sizeof(int32_t));
    s->pos = malloc((size_t)s->T * sizeof(int32_t));
    s->run_start = malloc(((size_t)s->T + 1) * sizeof(int32_t));
    s->h_words = malloc((size_t)s->T * (size_t)s->mw * sizeof(uint64_t));
    s->h_on = malloc((size_t)s->T * sizeof(int32_t));
    s->h_skip = calloc((size_t)hp->n_layer, sizeof(uint64_t));
    if (!s->L || !s->h_ids || !s->h_seqtab || !s->len || !s->pend || !s->seq || !s->pos || !s->run_start || !s->h_words ||
        !s->h_on || !s->h_skip) {
        cuda_destroy(&s->base);
        return NULL;
    }
    return s;
}

/* o's activation thresholds, if any: with thresholds, not with predictors, each >= 0 and finite. 0 or
 * -PI_ERR_INVAL (logged). */
static int check_gate(const pi_model_t *m, const struct pi_backend_opts *o)
{
    if (!o->gate_min) return 0;
    if (!o->thresholds || pi_backend_cuda_pred_on(o) || !o->n_hot || !o->hot) {
        pi_error("cuda backend: activation thresholds without opts.thresholds, or with predictors");
        return -PI_ERR_INVAL;
    }
    for (int il = 0; il < m->hp.n_layer; il++)
        for (int64_t i = 0; i < o->n_hot[il]; i++)
            if (!(o->gate_min[il][i] >= 0.0f && o->gate_min[il][i] <= FLT_MAX)) {
                pi_error("cuda backend: layer %d hot neuron %lld: activation threshold %g", il, (long long)i,
                         (double)o->gate_min[il][i]);
                return -PI_ERR_INVAL;
            }
    return 0;
}

int pi_backend_cuda_new(const pi_model_t *m, const struct pi_backend_opts *o, pi_backend_t **out)
{
    const struct pi_hparams *hp = &m->hp;
    *out = NULL;
    if (o->max_tokens < 1) {
        pi_error("cuda backend: max_tokens %d", o->max_tokens);
        return -PI_ERR_INVAL;
    }
    if (check_gate(m, o) != 0) return -PI_ERR_INVAL;
    struct pi_backend_cuda_plan p;
    int rc = pi_backend_cuda_plan_parts(m, o, &p);
    if (rc < 0) {
        pi_error("cuda backend: no VRAM plan (%s): %s", pi_err_str(rc),
                 rc == -PI_ERR_RANGE ? "a layer's hot count is out of range"
                                     : "a weight of the model has a shape or type the device kernels cannot take");
        return rc;
    }
    int n_ctx, n_seq;
    pi_backend_cuda_geometry(m, o, &n_ctx, &n_seq);
    const bool own_attn = !pi_cuda_att_head_dim_ok(hp->head_dim);
    if (own_attn && (hp->head_dim > 256 || n_ctx > pi_cbk_attention_max_pos(hp->head_dim))) {
        pi_error("cuda backend: head_dim %d with a context of %d positions is not supported (at most %lld positions "
                 "for this head size)", hp->head_dim, n_ctx, (long long)pi_cbk_attention_max_pos(hp->head_dim));
        return -PI_ERR_UNSUPPORTED;
    }
    int64_t n_hot_max = 0;
    for (int il = 0; il < hp->n_layer; il++) n_hot_max = PI_MAX(n_hot_max, o->n_hot ? o->n_hot[il] : 0);
    if (o->vram_budget && p.total > o->vram_budget) {
        too_big(&p, o->vram_budget, n_hot_max, n_seq, n_ctx);
        return -PI_ERR_NOMEM;
    }
    int n_dev = pi_cuda_device_count();
    if (n_dev <= 0) {
        pi_error("cuda backend: no usable CUDA device (%s)", n_dev < 0 ? "the driver cannot be reached" : "none visible");
        return -PI_ERR_DEVICE;
    }
    struct cuda_backend *s = new_host_side(m, o, n_ctx, n_seq, own_attn, n_hot_max, p.total);
    if (!s) return -PI_ERR_NOMEM;
    const struct pi_cuda_opts co = {.x = (int)o->tune.cuda_matvec, .no_pdl = o->tune.cuda_no_pdl,
                                    .att_unfused = o->tune.cuda_att_unfused};
    s->ctx = pi_cuda_ctx_new(o->device, (size_t)o->vram_budget, &co);
    if (!s->ctx) {
        pi_error("cuda backend: cannot open CUDA device %d", o->device);
        cuda_destroy(&s->base);
        return -PI_ERR_DEVICE;
    }
    s->stream = pi_cuda_ctx_stream(s->ctx);
    s->copy_stream = pi_cuda_ctx_copy_stream(s->ctx);
    size_t budget = 0, used = 0;
    pi_cuda_ctx_usage(s->ctx, &budget, NULL, NULL, NULL);
    if (p.total > budget) {
        too_big(&p, budget, n_hot_max, n_seq, n_ctx);
        cuda_destroy(&s->base);
        return -PI_ERR_NOMEM;
    }
    rc = setup(s, &p);
    if (rc < 0) {
        pi_error("cuda backend: setting up the device failed (%s)", pi_err_str(rc));
        cuda_destroy(&s->base);
        return rc;
    }
    s->o.hot_layers = NULL; /* the packed hot rows were needed for the upload only (backend.h) */
    pi_cuda_ctx_usage(s->ctx, NULL, &used, NULL, NULL);
    pi_info("cuda backend: %.1f MiB planned, %.1f MiB held of a %.1f MiB budget (weights %.1f, hot neurons %.1f, "
            "KV cache %.1f, activations and scratch %.1f, predictors, thresholds and sparse buffers %.1f, prompt "
            "streaming %.1f)%s",
            p.total / 1048576.0, used / 1048576.0, budget / 1048576.0, (p.attn + p.norms + p.head) / 1048576.0,
            p.hot / 1048576.0, p.kv / 1048576.0, (p.act + p.scratch) / 1048576.0, (p.pred + p.gate) / 1048576.0,
            p.stream / 1048576.0, own_attn ? "; attention by the any-head-size kernel" : "");
    *out = &s->base;
    return 0;
}

void pi_backend_cuda_usage(const pi_backend_t *b, uint64_t *budget, uint64_t *used, uint64_t *peak, uint64_t *planned,
                           uint64_t *overhead)
{
    const struct cuda_backend *s = (const struct cuda_backend *)b;
    size_t bu = 0, us = 0, pk = 0, ov = 0;
    pi_cuda_ctx_usage(s->ctx, &bu, &us, &pk, &ov);
    if (budget) *budget = bu;
    if (used) *used = us;
    if (peak) *peak = pk;
    if (planned) *planned = s->planned;
    if (overhead) *overhead = ov;
}

uint64_t pi_backend_cuda_seqs_steps(const pi_backend_t *b) { return ((const struct cuda_backend *)b)->n_seqs; }

int pi_backend_cuda_mem_info(pi_backend_t *b, uint64_t *free_bytes, uint64_t *total_bytes)
{
    size_t fr = 0, to = 0;
    int rc = pi_cuda_mem_info(cb(b)->ctx, &fr, &to);
    if (free_bytes) *free_bytes = fr;
    if (total_bytes) *total_bytes = to;
    return rc;
}
