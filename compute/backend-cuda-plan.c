/*
 * compute/backend-cuda-plan.c - the cuda backend's VRAM plan (compute/backend-cuda-plan.h): host
 * arithmetic over the model's shapes and types and the kernels' needs from kernels/cuda/plan.h. The
 * order of the parts is the order compute/backend-cuda.c allocates them in (its header says why).
 */
#include "config.h"
#include "compute/backend-cuda-plan.h"
#include "compute/stream-policy.h"
#include "kernels/cuda/plan.h"
#include "lib/common.h"
#include "lib/log.h"

#include <string.h>

/* Propagate a negative return. */
#define PI_TRY(expr)                                                                               \
    do {                                                                                           \
        int r_ = (expr);                                                                           \
        if (r_ < 0) return r_;                                                                     \
    } while (0)

static uint64_t al(uint64_t x) { return pi_cuda_counted(x); }

static bool dev_type_ok(enum pi_type t, int64_t cols)
{
    switch (t) {
    case PI_TYPE_F16:
    case PI_TYPE_BF16:
    case PI_TYPE_Q4_0:
    case PI_TYPE_Q4_1:
    case PI_TYPE_Q5_0:
    case PI_TYPE_Q5_1:
    case PI_TYPE_Q8_0: return cols % 32 == 0;
    case PI_TYPE_Q2_K:
    case PI_TYPE_Q3_K:
    case PI_TYPE_Q4_K:
    case PI_TYPE_Q5_K:
    case PI_TYPE_Q6_K: return cols % 256 == 0;
    default: return false;
    }
}

/* The type a weight of type t with rows of cols elements is stored in on the device. */
enum pi_type pi_backend_cuda_dev_type(enum pi_type t, int64_t cols) { return dev_type_ok(t, cols) ? t : PI_TYPE_F16; }

static int wbytes(enum pi_type t, int64_t rows, int64_t cols, uint64_t *acc)
{
    size_t b = 0;
    int rc = pi_cuda_weight_bytes_for((int)pi_backend_cuda_dev_type(t, cols), rows, cols, &b);
    if (rc < 0) return rc;
    *acc += al(b);
    return 0;
}

/* pi_cuda_gemm's tile for a weight (rows, cols) of device type t (none for F16). */
static uint64_t tile_bytes(int64_t T, enum pi_type t, int64_t rows, int64_t cols)
{
    return pi_cuda_gemm_tile_bytes((int)t, rows, cols, T);
}

/* What a scratch slot of the context holds after a first request of `bytes` (ctx.cu: 25% headroom). */
static uint64_t slot(uint64_t bytes) { return pi_cuda_scratch_held(bytes); }

/* Whether layer L's q, k and v go to the device as one matrix: when their types agree and the device
 * takes that type as it is. */
bool pi_backend_cuda_fuse_qkv(const struct pi_layer *L, int64_t d)
{
    return L->attn_q.type == L->attn_k.type && L->attn_q.type == L->attn_v.type && dev_type_ok(L->attn_q.type, d);
}

enum pi_type pi_backend_cuda_gu_type(const struct pi_layer *L, int64_t d)
{
    if (L->ffn_gate.type == L->ffn_up.type && dev_type_ok(L->ffn_gate.type, d)) return L->ffn_gate.type;
    return PI_TYPE_F16;
}

/* Whether layer il's FFN runs dense on the device: all n_ff neurons hot, in id order. Its down product
 * is then a plain matrix-vector product with the file's ffn_down (d, n_ff) in its own type (for Q4_0,
 * 0.56 bytes per weight instead of the 2 of the f16 ffn_down_t rows; the matvec instead of the neuron
 * kernel), and no ffn_down_t copy is uploaded. Rows of n_ff elements must be whole 32-element segments
 * (the device kernels' unit, even for F16), else the layer keeps the neuron layout, whose rows are
 * n_embd long. */
static bool dense_ok(const pi_model_t *m) { return m->hp.n_ff % 32 == 0; }

bool pi_backend_cuda_dense_layer(const pi_model_t *m, const struct pi_backend_opts *o, int il)
{
    const int64_t n_ff = m->hp.n_ff;
    if (!dense_ok(m) || !o->n_hot || o->n_hot[il] != n_ff || !o->hot || !o->hot[il]) return false;
    for (int64_t i = 0; i < n_ff; i++)
        if (o->hot[il][i] != (int32_t)i) return false;
    return true;
}

bool pi_backend_cuda_all_dense(const pi_model_t *m, int64_t hot) { return hot == m->hp.n_ff && dense_ok(m); }

/* Where layer il's hot rows come from: the worker's packed copy (opts.hot_layers, row i = neuron
 * hot[il][i]) or the model's own rows (indexed by the neuron ids). Gate and up have the model's types
 * either way; ffn_down_t's type is the packed copy's. */
const struct pi_layer *pi_backend_cuda_hot_rows(const pi_model_t *m, const struct pi_backend_opts *o, int il)
{
    return o->hot_layers ? &o->hot_layers[il] : &m->layers[il];
}

void pi_backend_cuda_geometry(const pi_model_t *m, const struct pi_backend_opts *o, int *n_ctx, int *n_seq)
{
    *n_ctx = o->n_ctx > 0 ? o->n_ctx : pi_model_default_ctx(m);
    *n_seq = o->n_seq > 0 ? o->n_seq : 1;
}

/* The XQ scratch (kernels/cuda/cuda.h, pi_cuda_xq_reserve): x of the widest decode product, and a
 * dense FFN's n_ff activations beside the x of its gate/up product. */
uint64_t pi_backend_cuda_xq_reserve(const pi_model_t *m, bool any_dense)
{
    const struct pi_hparams *hp = &m->hp;
    const int64_t d = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim;
    return pi_cuda_xq_bytes(PI_MAX(d, qd)) + (any_dense ? pi_cuda_xq_bytes(hp->n_ff) : 0);
}

bool pi_backend_cuda_pred_on(const struct pi_backend_opts *o) { return o->pred && o->sparsity != PI_SPARSITY_OFF; }

bool pi_backend_cuda_gate_on(const struct pi_backend_opts *o)
{
    return o->thresholds && !pi_backend_cuda_pred_on(o) &&
           o->tune.cuda_hot_thresholds == PI_TUNE_CUDA_HOT_THRESHOLDS_ON;
}

int64_t pi_backend_cuda_pred_rank(int64_t rank) { return (rank + 31) / 32 * 32; }

enum pi_type pi_backend_cuda_pred_type(const struct pi_weight *w, int64_t rank, int64_t cols)
{
    return rank % 32 ? PI_TYPE_F16 : pi_backend_cuda_dev_type(w->type, cols);
}

static int64_t pred_rank_max(const struct pi_backend_opts *o)
{
    int64_t r = 0;
    for (int il = 0; il < o->pred->n_layer; il++) r = PI_MAX(r, pi_backend_cuda_pred_rank(o->pred->layers[il].rank));
    return r;
}

static bool layer_cold(const pi_model_t *m, const struct pi_backend_opts *o, int il)
{
    return (o->n_hot ? o->n_hot[il] : 0) < m->hp.n_ff;
}

/* The device bytes of weight w's image, or 0 when the device does not keep its type as it is. */
static uint64_t stream_image(const struct pi_weight *w)
{
    size_t b = 0;
    if (pi_backend_cuda_dev_type(w->type, w->cols) != w->type || pi_cuda_weight_bytes_for((int)w->type, w->rows, w->cols, &b) < 0)
        return 0;
    return b;
}

bool pi_backend_cuda_stream_on(const pi_model_t *m, const struct pi_backend_opts *o)
{
    /* the one rule (predictors, thresholds), then this backend's own: batches of two rows, types kept */
    if (pi_stream_policy_mode(o->tune.prompt_stream, pi_backend_cuda_pred_on(o), o->thresholds) == PI_TUNE_PROMPT_STREAM_OFF ||
        o->max_tokens < 2)
        return false;
    bool any = false;
    for (int il = 0; il < m->hp.n_layer; il++) {
        if (!layer_cold(m, o, il)) continue;
        const struct pi_layer *L = &m->layers[il];
        if (!stream_image(&L->ffn_gate) || !stream_image(&L->ffn_up) || !stream_image(&L->ffn_down)) return false;
        any = true;
    }
    return any;
}

uint64_t pi_backend_cuda_stream_slot(const pi_model_t *m, const struct pi_backend_opts *o)
{
    uint64_t best = 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        if (!layer_cold(m, o, il)) continue;
        const struct pi_layer *L = &m->layers[il];
        best = PI_MAX(best, stream_image(&L->ffn_gate) + stream_image(&L->ffn_up) + stream_image(&L->ffn_down));
    }
    return best;
}

uint64_t pi_backend_cuda_xq_total(const pi_model_t *m, const struct pi_backend_opts *o, bool any_dense)
{
    /* a streamed step of two rows takes the matvec path: the down product's x of n_ff columns */
    uint64_t xq = pi_backend_cuda_xq_reserve(m, any_dense || pi_backend_cuda_stream_on(m, o));
    return pi_backend_cuda_pred_on(o) ? PI_MAX(xq, (uint64_t)pi_cuda_xq_bytes(pred_rank_max(o))) : xq;
}

/* The predictors' part of the plan (pi_backend_cuda_plan.pred), and what they add to the GEMM's tile
 * and the widest GEMM input (fc1 and fc2 of a batch go through pi_cuda_matmul). */
static int plan_pred(const pi_model_t *m, const struct pi_backend_opts *o, int64_t n_hot_max, struct pi_backend_cuda_plan *p,
                     uint64_t *tile, int64_t *gemm_cols)
{
    const struct pi_hparams *hp = &m->hp;
    const struct pi_predictors *pr = o->pred;
    const uint64_t T = (uint64_t)o->max_tokens, f = sizeof(float), mw = ((uint64_t)hp->n_ff + 63) / 64;
    if (pr->n_layer != hp->n_layer || pr->n_embd != hp->n_embd || pr->n_ff != hp->n_ff) {
        pi_error("cuda plan: predictors for %d layers of (%lld, %lld), the model has %d of (%d, %d)", pr->n_layer,
                 (long long)pr->n_embd, (long long)pr->n_ff, hp->n_layer, hp->n_embd, hp->n_ff);
        return -PI_ERR_INVAL;
    }
    const int64_t rmax = pred_rank_max(o);
    for (int il = 0; il < hp->n_layer; il++) {
        const struct pi_predictor_layer *L = &pr->layers[il];
        const int64_t r = L->rank, r32 = pi_backend_cuda_pred_rank(r);
        const int64_t nh = o->n_hot ? o->n_hot[il] : 0;
        if (nh > 0 && !pi_backend_cuda_dense_layer(m, o, il)) p->pred += pi_cuda_counted((uint64_t)nh * sizeof(int32_t));
        if (r == 0) continue;
        const enum pi_type t1 = pi_backend_cuda_pred_type(&L->fc1, r, hp->n_embd), t2 = pi_backend_cuda_pred_type(&L->fc2, r, r);
        size_t b1 = 0, b2 = 0;
        PI_TRY(pi_cuda_weight_bytes_for((int)t1, r32, hp->n_embd, &b1));
        PI_TRY(pi_cuda_weight_bytes_for((int)t2, hp->n_ff, r32, &b2));
        p->pred += pi_cuda_counted(b1) + pi_cuda_counted(b2);
        if (T > PI_CUDA_MATVEC_MAX_ROWS) {
            *tile = PI_MAX(*tile, tile_bytes(T, t1, r32, hp->n_embd));
            *tile = PI_MAX(*tile, tile_bytes(T, t2, hp->n_ff, r32));
        }
    }
    if (T > PI_CUDA_MATVEC_MAX_ROWS) *gemm_cols = PI_MAX(*gemm_cols, rmax);
    /* d_ph (T, r32 max), d_plog (T, n_ff), d_words (T, mw), d_on (T); with hot neurons d_list (T, n_hot_max),
     * d_nlist (T) and d_sa (per-row rows, n_hot_max) */
    if (rmax > 0) p->pred += pi_cuda_counted(T * (uint64_t)rmax * f) + pi_cuda_counted(T * (uint64_t)hp->n_ff * f);
    p->pred += pi_cuda_counted(T * mw * sizeof(uint64_t)) + pi_cuda_counted(T * sizeof(int32_t));
    if (n_hot_max > 0) {
        const uint64_t rows = PI_MIN(T, (uint64_t)PI_BACKEND_CUDA_HOT_BATCH_MIN - 1);
        p->pred += pi_cuda_counted(T * (uint64_t)n_hot_max * sizeof(int32_t)) + pi_cuda_counted(T * sizeof(int32_t)) +
                   pi_cuda_counted(rows * (uint64_t)n_hot_max * f);
    }
    return 0;
}

/* The activation thresholds' part of the plan (pi_backend_cuda_plan.gate; compute/backend-cuda.c's
 * setup allocates it in this order). */
static uint64_t plan_gate(const pi_model_t *m, const struct pi_backend_opts *o, int64_t n_hot_max)
{
    const uint64_t T = (uint64_t)o->max_tokens, f = sizeof(float);
    const uint64_t rows = PI_MIN(T, (uint64_t)PI_BACKEND_CUDA_HOT_BATCH_MIN - 1);
    uint64_t b = 0;
    for (int il = 0; il < m->hp.n_layer; il++)
        if (o->n_hot && o->n_hot[il] > 0) b += pi_cuda_counted((uint64_t)o->n_hot[il] * f); /* d_gmin */
    if (n_hot_max > 0) /* d_list, d_nlist, d_sa of the per-row path */
        b += pi_cuda_counted(rows * (uint64_t)n_hot_max * sizeof(int32_t)) + pi_cuda_counted(rows * sizeof(int32_t)) +
             pi_cuda_counted(rows * (uint64_t)n_hot_max * f);
    return b + pi_cuda_counted((uint64_t)m->hp.n_layer * sizeof(uint64_t)); /* d_skip */
}

int pi_backend_cuda_plan_parts(const pi_model_t *m, const struct pi_backend_opts *o, struct pi_backend_cuda_plan *p)
{
    const struct pi_hparams *hp = &m->hp;
    const int64_t d = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t T = o->max_tokens;
    int n_ctx, n_seq;
    memset(p, 0, sizeof *p);
    if (T < 1) return -PI_ERR_INVAL;
    for (int il = 0; o->n_hot && il < hp->n_layer; il++)
        if (o->n_hot[il] < 0 || o->n_hot[il] > hp->n_ff || (o->n_hot[il] > 0 && !o->hot)) {
            pi_error("cuda plan: layer %d: %lld hot neurons of %d", il, (long long)o->n_hot[il], hp->n_ff);
            return -PI_ERR_RANGE;
        }
    pi_backend_cuda_geometry(m, o, &n_ctx, &n_seq);
    int64_t n_hot_max = 0, n_sparse_max = 0; /* largest hot count; the same over the non-dense layers */
    bool any_dense = false;
    uint64_t tile = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        if (pi_backend_cuda_fuse_qkv(L, d)) {
            PI_TRY(wbytes(L->attn_q.type, qd + 2 * kvd, d, &p->attn));
        } else {
            PI_TRY(wbytes(L->attn_q.type, qd, d, &p->attn));
            PI_TRY(wbytes(L->attn_k.type, kvd, d, &p->attn));
            PI_TRY(wbytes(L->attn_v.type, kvd, d, &p->attn));
        }
        PI_TRY(wbytes(L->attn_output.type, d, qd, &p->attn));
        tile = PI_MAX(tile, tile_bytes(T, pi_backend_cuda_dev_type(L->attn_q.type, d), qd, d));
        tile = PI_MAX(tile, tile_bytes(T, pi_backend_cuda_dev_type(L->attn_k.type, d), kvd, d));
        tile = PI_MAX(tile, tile_bytes(T, pi_backend_cuda_dev_type(L->attn_v.type, d), kvd, d));
        tile = PI_MAX(tile, tile_bytes(T, pi_backend_cuda_dev_type(L->attn_output.type, qd), d, qd));
        int64_t nh = o->n_hot ? o->n_hot[il] : 0;
        const bool dense = pi_backend_cuda_dense_layer(m, o, il);
        if (nh > 0) {
            size_t b = 0;
            PI_TRY(pi_cuda_weight_bytes_for((int)pi_backend_cuda_gu_type(L, d), 2 * nh, d, &b));
            p->hot += al(b);
            if (dense) PI_TRY(wbytes(L->ffn_down.type, d, hp->n_ff, &p->hot));
            else PI_TRY(wbytes(pi_backend_cuda_hot_rows(m, o, il)->ffn_down_t.type, nh, d, &p->hot));
            if (T >= PI_BACKEND_CUDA_HOT_BATCH_MIN) tile = PI_MAX(tile, tile_bytes(T, pi_backend_cuda_gu_type(L, d), 2 * nh, d));
            if (T >= PI_BACKEND_CUDA_HOT_BATCH_MIN && dense) tile = PI_MAX(tile, tile_bytes(T, pi_backend_cuda_dev_type(L->ffn_down.type, hp->n_ff), d, hp->n_ff));
        }
        n_hot_max = PI_MAX(n_hot_max, nh);
        if (!dense) n_sparse_max = PI_MAX(n_sparse_max, nh);
        any_dense |= dense;
    }
    p->norms = al((uint64_t)(2 * hp->n_layer + 1) * (uint64_t)d * sizeof(float));
    PI_TRY(wbytes(m->token_embd.type, hp->n_vocab, d, &p->head));
    const int64_t T_out = PI_MIN(T, (int64_t)PI_BACKEND_CUDA_OUT_ROWS); /* rows per output product */
    tile = PI_MAX(tile, tile_bytes(T_out, pi_backend_cuda_dev_type(m->output.type, d), hp->n_vocab, d));
    if (!m->tied) PI_TRY(wbytes(m->output.type, hp->n_vocab, d, &p->head));
    p->kv = al((uint64_t)hp->n_layer * (uint64_t)n_seq * 2 * (uint64_t)n_ctx * (uint64_t)kvd * 2);
    const uint64_t f = sizeof(float), uT = (uint64_t)T;
    /* d_h, d_xn, d_att, d_q/d_k/d_v, d_parts (hot and cold), d_logits, d_ids (with the decode attention's table) */
    p->act = al(uT * d * f) * 2 + al(uT * qd * f) + al(uT * (uint64_t)(qd + 2 * kvd) * f) + al(2 * uT * d * f) +
             al((uint64_t)T_out * (uint64_t)hp->n_vocab * f) + al(pi_backend_cuda_ids_bytes(uT));
    if (n_hot_max > 0 && T >= PI_BACKEND_CUDA_HOT_BATCH_MIN) {
        p->act += al(uT * 2 * (uint64_t)n_hot_max * f) + al(uT * (uint64_t)n_hot_max * f); /* d_g, d_a */
        if (n_sparse_max > 0) p->act += al((uint64_t)n_sparse_max * (uint64_t)d * 2);    /* d_down16 */
    }
    /* The kernels' scratch slots at their largest request (kernels/cuda/matmul.cu and ops.cu): the f16
     * copy of a GEMM's input is widest for the dense down product (n_ff columns) when there is one. */
    p->scratch = PI_CUDA_BLAS_WS;
    int64_t gemm_cols = PI_MAX(PI_MAX(d, qd), any_dense && T >= PI_BACKEND_CUDA_HOT_BATCH_MIN ? (int64_t)hp->n_ff : 0);
    if (pi_backend_cuda_stream_on(m, o)) { /* the slots, the products' buffer, the streamed GEMMs' tile and input */
        p->stream = 2 * al(pi_backend_cuda_stream_slot(m, o)) + al(uT * 2 * (uint64_t)hp->n_ff * f);
        for (int il = 0; il < hp->n_layer; il++) {
            const struct pi_layer *L = &m->layers[il];
            if (!layer_cold(m, o, il)) continue;
            tile = PI_MAX(tile, tile_bytes(T, L->ffn_gate.type, hp->n_ff, d));
            tile = PI_MAX(tile, tile_bytes(T, L->ffn_up.type, hp->n_ff, d));
            tile = PI_MAX(tile, tile_bytes(T, L->ffn_down.type, d, hp->n_ff));
        }
        gemm_cols = PI_MAX(gemm_cols, (int64_t)hp->n_ff);
    }
    if (pi_backend_cuda_pred_on(o)) PI_TRY(plan_pred(m, o, n_hot_max, p, &tile, &gemm_cols));
    if (pi_backend_cuda_gate_on(o)) p->gate = plan_gate(m, o, n_hot_max); /* never with predictors */
    if (T > PI_CUDA_MATVEC_MAX_ROWS) p->scratch += slot(pi_cuda_gemm_x16_bytes(T, gemm_cols)) + slot(tile);
    if (n_hot_max > 0) p->scratch += slot(pi_cuda_ffn_act_bytes(n_hot_max));
    /* the q8 matvec's quantised x (matvec-q8.cu), counted whatever tune.cuda_matvec says: 48 bytes per 32
     * columns of the widest decode product, plus the activations of a dense FFN (pi_cuda_xq_reserve) */
    p->scratch += slot(pi_backend_cuda_xq_total(m, o, any_dense));
    if (pi_cuda_att_head_dim_ok(hp->head_dim)) /* the flash-decoding kernels' split partials (ops.cu) */
        p->scratch += slot(pi_cuda_att_part_max(PI_MIN((int64_t)T, (int64_t)n_ctx), hp->n_head, n_ctx, hp->head_dim));
    p->total = p->attn + p->norms + p->head + p->hot + p->kv + p->act + p->scratch + p->pred + p->gate + p->stream;
    return 0;
}

int pi_backend_cuda_plan(const pi_model_t *m, const struct pi_backend_opts *o, uint64_t *bytes)
{
    struct pi_backend_cuda_plan p;
    *bytes = 0;
    PI_TRY(pi_backend_cuda_plan_parts(m, o, &p));
    *bytes = p.total;
    return 0;
}
