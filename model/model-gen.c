/*
 * model/model-gen.c - the random-model generator (see model/model-gen.h): llama-family GGUF files with
 * real shapes and random weights, for tools/pi-gen-model, the benchmarks and the tests.
 *
 * Every tensor's values come from one SplitMix64 stream seeded by pi_model_gen.seed, drawn in file
 * order, so a file is a function of its description (and of the vocabulary file vocab_from names).
 * Rows are generated in parallel on a pool, each from its own place in the stream, so the bytes do
 * not depend on the thread count either.
 * What draws from a stream of its own (the low-rank gate's factors) or from none (the exact
 * predictors, written from values) leaves the main stream, and so every other tensor, unchanged.
 *
 * Also here: the models with known locality (doc/locality.md; construction in the section comment
 * below), the copy of a vocabulary file's tokenizer.* keys (vocab_from), the test hooks that write a
 * file the loader (model/model.c) must reject, and the named shape presets.
 */
#include "config.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "model/gguf.h"
#include "model/model-gen.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/quant.h"

/* ---------------------------------------------------------------- random-weight models */

struct gen {
    const struct pi_model_gen *g;
    pi_gguf_writer_t *w;
    uint64_t rng;    /* the main stream (SplitMix64 state): every tensor's random values in file order */
    float *buf;      /* (n_threads, largest cols) f32 staging: one row per thread */
    void *qbuf;      /* (largest rows * cols) a tensor quantised */
    float *down;     /* (n_embd, n_ff) f32: the current layer's down matrix (gen_down) */
    struct gen_loc *loc; /* locality models only (below) */
    pi_pool_t *pool; /* rows in parallel (gen_tensor_src, gen_down); NULL: one thread */
    float *deq;      /* (n_threads, largest cols) the locality rewrite's scratch: a dequantised row */
    void *qrow;      /* (n_threads, largest cols * 8 bytes) and a quantised row */
    int64_t cols_max;
};

/* One thread's row scratch (the staging row, the locality rewrite's dequantised and quantised rows). */
struct gen_scratch {
    float *row, *deq;
    void *qrow;
};

static struct gen_scratch gen_scratch_of(const struct gen *G, int thread)
{
    const size_t c = (size_t)G->cols_max;
    return (struct gen_scratch){G->buf + (size_t)thread * c, G->deq + (size_t)thread * c,
                                (char *)G->qrow + (size_t)thread * c * 8};
}

static int loc_row(struct gen *G, const char *name, enum pi_type t, int64_t r, float *row, int64_t cols,
                   const struct gen_scratch *sc);
static int gen_pred_exact(struct gen *G, int il);
static int gen_vocab(struct gen *G);

/* splitmix64 -> uniform in [-1, 1) */
static float gen_uniform(uint64_t *s)
{
    uint64_t z = pi_rng_splitmix64(s);
    return (float)((double)(z >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

/* The rows of one gen_tensor_src call. */
struct gen_job {
    struct gen *G;
    const char *name;
    enum pi_type t;
    int64_t rows, cols;  /* rows of values; the reshape hook's extra row is zeros */
    bool norm, nan;
    const float *src;    /* NULL: from the stream, else element (r, j) at src[r * rs + j * cs] */
    int64_t rs, cs;
    float sd;
    uint64_t rb;         /* bytes of a quantised row */
    uint64_t s0;         /* the main stream's state at row 0: row r draws outputs r * cols .. + cols - 1 */
    _Atomic int rc;
};

/* Row r of job j into its place in qbuf, drawing from *s (at row r's first output) when it has no src. */
static int gen_row(const struct gen_job *j, int64_t r, uint64_t *s, const struct gen_scratch *sc)
{
    struct gen *G = j->G;
    float *row = sc->row;
    const int64_t cols = j->cols;
    if (!j->src)
        for (int64_t k = 0; k < cols; k++) row[k] = (j->norm ? 1.0f : 0.0f) + j->sd * gen_uniform(s);
    else if (r < j->rows)
        for (int64_t k = 0; k < cols; k++) row[k] = j->src[r * j->rs + k * j->cs];
    else /* the reshape hook's extra row */
        memset(row, 0, (size_t)cols * sizeof *row);
    for (int64_t k = 0; j->nan && k < cols; k++) row[k] = k % 3 == 0 ? NAN : k % 3 == 1 ? INFINITY : -INFINITY;
    if (G->loc && !j->src && (j->norm || r < j->rows)) { /* not the reshape hook's extra row (no neuron of its own) */
        int rc = loc_row(G, j->name, j->t, r, row, cols, sc);
        if (rc < 0) return rc;
    }
    char *q = (char *)G->qbuf + (size_t)r * j->rb;
    if (pi_type_get(j->t) && pi_kernel_supported(j->t)) pi_quantize_row(j->t, row, q, cols);
    else memset(q, 0, (size_t)j->rb); /* the retype hook's integer types */
    return 0;
}

static void gen_rows(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct gen_job *j = ctx;
    const struct gen_scratch sc = gen_scratch_of(j->G, thread);
    uint64_t s = j->s0;
    pi_rng_splitmix64_skip(&s, (uint64_t)begin * (uint64_t)j->cols);
    for (int64_t r = begin; r < end && atomic_load_explicit(&j->rc, memory_order_relaxed) == 0; r++) {
        int rc = gen_row(j, r, &s, &sc);
        if (rc < 0) atomic_store(&j->rc, rc);
    }
}

/* One tensor (rows, cols) of type t; norm = vector near 1 (rows == 0). src NULL: random values from
 * the stream; else element (r, j) is src[r * rs + j * cs] (the values final: no locality rewrite).
 * Rows go in parallel on G->pool, each from its own place in the stream (so the bytes do not depend on
 * the threads), except the locality model's token_embd, whose rows add up the embedding's statistics
 * in order. */
static int gen_tensor_src(struct gen *G, const char *name, enum pi_type t, int64_t rows, int64_t cols, bool norm,
                          const float *src, int64_t rs, int64_t cs)
{
    uint64_t rb, ne[2];
    int64_t r_out = rows;
    if (G->g->omit && strcmp(name, G->g->omit) == 0) return 0;
    if (G->g->reshape && strcmp(name, G->g->reshape) == 0) r_out = rows + 1;
    if (G->g->retype && strcmp(name, G->g->retype) == 0) t = G->g->retype_as;
    int64_t nr = norm ? 1 : r_out;
    if (!pi_type_row_bytes(t, (uint64_t)cols, &rb)) {
        pi_error("gen: %s: %lld columns are not whole %s blocks", name, (long long)cols, pi_type_name(t));
        return -PI_ERR_INVAL;
    }
    struct gen_job j = {.G = G, .name = name, .t = t, .rows = rows, .cols = cols, .norm = norm,
                        .nan = G->g->nan_norm && strcmp(name, G->g->nan_norm) == 0, .src = src, .rs = rs, .cs = cs,
                        .sd = norm ? 0.1f : 1.7320508f / sqrtf((float)cols), /* uniform: sd = a / sqrt(3) */
                        .rb = rb, .s0 = G->rng};
    atomic_init(&j.rc, 0);
    const bool in_order = G->loc && !src && strcmp(name, "token_embd.weight") == 0;
    if (in_order) gen_rows(&j, 0, nr, 0);
    else pi_pool_for(G->pool, nr, 16, gen_rows, &j);
    if (!src) pi_rng_splitmix64_skip(&G->rng, (uint64_t)nr * (uint64_t)cols);
    int rc = atomic_load(&j.rc);
    if (rc < 0) return rc;
    ne[0] = (uint64_t)cols;
    ne[1] = (uint64_t)nr;
    return pi_gguf_writer_add_tensor(G->w, name, t, norm ? 1 : 2, ne, G->qbuf);
}

static int gen_tensor(struct gen *G, const char *name, enum pi_type t, int64_t rows, int64_t cols, bool norm)
{
    return gen_tensor_src(G, name, t, rows, cols, norm, NULL, 0, 0);
}

struct gen_down_job {
    struct gen *G;
    const char *name;
    enum pi_type t;
    uint64_t s0; /* the stream at row 0: row r draws outputs r * n_ff .. + n_ff - 1 */
    _Atomic int rc;
};

static void gen_down_rows(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct gen_down_job *j = ctx;
    struct gen *G = j->G;
    const int64_t ff = G->g->n_ff;
    const float sd = 1.7320508f / sqrtf((float)ff);
    const struct gen_scratch sc = gen_scratch_of(G, thread);
    uint64_t s = j->s0;
    pi_rng_splitmix64_skip(&s, (uint64_t)begin * (uint64_t)ff);
    for (int64_t r = begin; r < end; r++) {
        float *row = G->down + r * ff;
        for (int64_t k = 0; k < ff; k++) row[k] = sd * gen_uniform(&s);
        int rc = G->loc ? loc_row(G, j->name, j->t, r, row, ff, &sc) : 0;
        if (rc < 0) atomic_store(&j->rc, rc);
    }
}

/* Layer il's down matrix (n_embd, n_ff), drawn once from the stream as ffn_down always was, then written
 * as blk.N.ffn_down (unless powerinfer: PowerInfer's files have none) and, with down_t or powerinfer,
 * transposed as blk.N.ffn_down_t (n_ff, n_embd). Both then hold the same values (each quantised along
 * its own rows), and the stream, so every other tensor, is the same whichever of them is written. */
static int gen_down(struct gen *G, int il, enum pi_type t)
{
    const struct pi_model_gen *g = G->g;
    const int64_t d = g->n_embd, ff = g->n_ff;
    char name[96];
    snprintf(name, sizeof name, "blk.%d.ffn_down.weight", il);
    struct gen_down_job j = {.G = G, .name = name, .t = t, .s0 = G->rng};
    atomic_init(&j.rc, 0);
    pi_pool_for(G->pool, d, 16, gen_down_rows, &j); /* each row from its own place in the stream */
    pi_rng_splitmix64_skip(&G->rng, (uint64_t)d * (uint64_t)ff);
    int rc = atomic_load(&j.rc);
    if (rc < 0) return rc;
    if (!g->powerinfer && (rc = gen_tensor_src(G, name, t, d, ff, false, G->down, ff, 1)) < 0) return rc;
    snprintf(name, sizeof name, "blk.%d.ffn_down_t.weight", il);
    if (g->down_t || g->powerinfer) rc = gen_tensor_src(G, name, t, ff, d, false, G->down, 1, ff);
    return rc;
}

static int gen_u32(struct gen *G, const char *suffix, uint32_t v)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", G->g->arch ? G->g->arch : "llama", suffix);
    if (G->g->bad_key && strcmp(key, G->g->bad_key) == 0) v = G->g->bad_value;
    return pi_gguf_writer_set_u32(G->w, key, v);
}

static int gen_metadata(struct gen *G)
{
    const struct pi_model_gen *g = G->g;
    const char *arch = g->arch ? g->arch : "llama";
    char key[128];
    int rc = 0;
    rc |= pi_gguf_writer_set_str(G->w, "general.architecture", arch);
    rc |= pi_gguf_writer_set_str(G->w, "general.name", "pinfer random model");
    rc |= gen_u32(G, "embedding_length", (uint32_t)g->n_embd);
    rc |= gen_u32(G, "block_count", (uint32_t)g->n_layer);
    rc |= gen_u32(G, "feed_forward_length", (uint32_t)g->n_ff);
    rc |= gen_u32(G, "attention.head_count", (uint32_t)g->n_head);
    rc |= gen_u32(G, "attention.head_count_kv", (uint32_t)(g->n_head_kv ? g->n_head_kv : g->n_head));
    rc |= gen_u32(G, "context_length", (uint32_t)(g->n_ctx ? g->n_ctx : 2048));
    rc |= gen_u32(G, "rope.dimension_count", (uint32_t)(g->n_embd / g->n_head));
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    rc |= pi_gguf_writer_set_f32(G->w, key, 1e-5f);
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    rc |= pi_gguf_writer_set_f32(G->w, key, 10000.0f);
    if (g->act != PI_FFN_ACT_DEFAULT)
        rc |= pi_gguf_writer_set_str(G->w, "pinfer.ffn_activation", pi_ffn_act_name(g->act));
    /* set again: a key gen does not write (attention.key_length, ...) is added, others replaced */
    if (g->bad_key) rc |= pi_gguf_writer_set_u32(G->w, g->bad_key, g->bad_value);
    if (g->bad_fkey) rc |= pi_gguf_writer_set_f32(G->w, g->bad_fkey, g->bad_fvalue);
    if (g->bad_skey) rc |= pi_gguf_writer_set_strn(G->w, g->bad_skey, g->bad_svalue, g->bad_slen);
    if (rc == 0 && g->vocab_from && (rc = gen_vocab(G)) < 0) return rc;
    if (g->n_tokens > 0) {
        const char **tok = malloc((size_t)g->n_tokens * sizeof *tok);
        if (!tok) return -PI_ERR_NOMEM;
        for (int i = 0; i < g->n_tokens; i++) tok[i] = "t";
        rc |= pi_gguf_writer_set_arr_str(G->w, "tokenizer.ggml.tokens", tok, (uint64_t)g->n_tokens);
        free(tok);
    }
    return rc ? -PI_ERR_INVAL : 0;
}

/* The string array key i of v (n strings) into the writer, each string NUL-terminated. */
static int gen_copy_str_arr(pi_gguf_writer_t *w, const pi_gguf_t *v, uint64_t i, const char *key, uint64_t n)
{
    char **strs = calloc((size_t)(n ? n : 1), sizeof *strs);
    int rc = strs ? 0 : -PI_ERR_NOMEM;
    for (uint64_t j = 0; rc == 0 && j < n; j++) {
        struct pi_gguf_str s;
        if (pi_gguf_kv_arr_str(v, i, j, &s) < 0 || pi_gguf_str_has_nul(s)) rc = -PI_ERR_FORMAT;
        else if (!(strs[j] = malloc((size_t)s.len + 1))) rc = -PI_ERR_NOMEM;
        else {
            memcpy(strs[j], s.ptr, (size_t)s.len);
            strs[j][s.len] = '\0';
        }
    }
    if (rc == 0) rc = pi_gguf_writer_set_arr_str(w, key, (const char *const *)strs, n);
    for (uint64_t j = 0; strs && j < n; j++) free(strs[j]);
    free(strs);
    return rc;
}

/* Copy key i of v (a tokenizer.* key of the vocabulary file) into the writer. */
static int gen_copy_kv(pi_gguf_writer_t *w, const pi_gguf_t *v, uint64_t i, const char *key)
{
    enum pi_gguf_vtype t = pi_gguf_kv_type(v, i), et;
    struct pi_gguf_str s;
    uint64_t n, u;
    int64_t k;
    double f;
    bool b;
    switch (t) {
    case PI_GGUF_STRING:
        return pi_gguf_kv_str(v, i, &s) < 0 ? -PI_ERR_FORMAT : pi_gguf_writer_set_strn(w, key, s.ptr, (size_t)s.len);
    case PI_GGUF_BOOL:
        return pi_gguf_kv_bool(v, i, &b) < 0 ? -PI_ERR_FORMAT : pi_gguf_writer_set_bool(w, key, b);
    case PI_GGUF_F32: {
        if (pi_gguf_kv_f64(v, i, &f) < 0) return -PI_ERR_FORMAT;
        return pi_gguf_writer_set_f32(w, key, (float)f);
    }
    case PI_GGUF_U8: case PI_GGUF_U16: case PI_GGUF_U32: case PI_GGUF_U64: {
        if (pi_gguf_kv_uint(v, i, &u) < 0) return -PI_ERR_FORMAT;
        uint8_t u8 = (uint8_t)u;
        uint16_t u16 = (uint16_t)u;
        uint32_t u32 = (uint32_t)u;
        const void *p = t == PI_GGUF_U8 ? (const void *)&u8 : t == PI_GGUF_U16 ? (const void *)&u16
                      : t == PI_GGUF_U32 ? (const void *)&u32 : (const void *)&u;
        return pi_gguf_writer_set(w, key, t, p);
    }
    case PI_GGUF_I8: case PI_GGUF_I16: case PI_GGUF_I32: case PI_GGUF_I64: {
        if (pi_gguf_kv_int(v, i, &k) < 0) return -PI_ERR_FORMAT;
        int8_t i8 = (int8_t)k;
        int16_t i16 = (int16_t)k;
        int32_t i32 = (int32_t)k;
        const void *p = t == PI_GGUF_I8 ? (const void *)&i8 : t == PI_GGUF_I16 ? (const void *)&i16
                      : t == PI_GGUF_I32 ? (const void *)&i32 : (const void *)&k;
        return pi_gguf_writer_set(w, key, t, p);
    }
    case PI_GGUF_ARRAY:
        if (pi_gguf_kv_arr(v, i, &et, &n) < 0) return -PI_ERR_FORMAT;
        if (et != PI_GGUF_STRING) {
            const void *d = pi_gguf_kv_arr_data(v, i);
            return d ? pi_gguf_writer_set_arr(w, key, et, d, n) : -PI_ERR_FORMAT;
        }
        return gen_copy_str_arr(w, v, i, key, n);
    default:
        return -PI_ERR_UNSUPPORTED;
    }
}

/* Every tokenizer.* key of the vocabulary file g->vocab_from, whose token count must be n_vocab. */
static int gen_vocab(struct gen *G)
{
    pi_gguf_t *v = NULL;
    char err[256];
    enum pi_gguf_vtype et;
    uint64_t n = 0;
    int rc = pi_gguf_open(G->g->vocab_from, &v, err, sizeof err);
    if (rc < 0) {
        pi_error("gen: vocabulary %s: %s", G->g->vocab_from, err);
        return rc;
    }
    if (pi_gguf_get_arr(v, "tokenizer.ggml.tokens", &et, &n) < 0 || et != PI_GGUF_STRING || n != (uint64_t)G->g->n_vocab) {
        pi_error("gen: vocabulary %s: tokenizer.ggml.tokens must be a string array of %d tokens (the model's vocab), has %llu",
                 G->g->vocab_from, G->g->n_vocab, (unsigned long long)n);
        pi_gguf_destroy(&v);
        return -PI_ERR_INVAL;
    }
    for (uint64_t i = 0; rc == 0 && i < pi_gguf_n_kv(v); i++) {
        struct pi_gguf_str k = pi_gguf_key(v, i);
        char key[256];
        if (k.len < 10 || k.len >= sizeof key || memcmp(k.ptr, "tokenizer.", 10) != 0) continue;
        memcpy(key, k.ptr, (size_t)k.len);
        key[k.len] = '\0';
        if ((rc = gen_copy_kv(G->w, v, i, key)) < 0) pi_error("gen: vocabulary %s: cannot copy %s", G->g->vocab_from, key);
    }
    pi_gguf_destroy(&v);
    return rc;
}

static int gen_layers(struct gen *G, enum pi_type t)
{
    const struct pi_model_gen *g = G->g;
    int64_t d = g->n_embd, hd = g->n_embd / g->n_head, ff = g->n_ff;
    int64_t kvd = (int64_t)(g->n_head_kv ? g->n_head_kv : g->n_head) * hd;
    char name[96];
    int rc = 0;
#define GEN(s, tt, r, c, norm)                                                                     \
    (snprintf(name, sizeof name, "blk.%d." s ".weight", il), gen_tensor(G, name, tt, r, c, norm))
    for (int il = 0; il < g->n_layer && rc == 0; il++) {
        if ((rc = GEN("attn_norm", PI_TYPE_F32, 0, d, true)) < 0 || (rc = GEN("attn_q", t, d, d, false)) < 0 ||
            (rc = GEN("attn_k", t, kvd, d, false)) < 0 || (rc = GEN("attn_v", t, kvd, d, false)) < 0 ||
            (rc = GEN("attn_output", t, d, d, false)) < 0 ||
            (rc = GEN("ffn_norm", PI_TYPE_F32, 0, d, true)) < 0 ||
            (rc = GEN("ffn_gate", t, ff, d, false)) < 0 || (rc = GEN("ffn_up", t, ff, d, false)) < 0 ||
            (rc = gen_down(G, il, t)) < 0)
            break;
        if (g->pred_exact) rc = gen_pred_exact(G, il);
        else if (g->pred_rank > 0 && ((rc = GEN("fc1", PI_TYPE_F16, g->pred_rank, d, false)) < 0 ||
                                      (rc = GEN("fc2", PI_TYPE_F16, ff, g->pred_rank, false)) < 0))
            break;
    }
#undef GEN
    return rc;
}

/* ---------------------------------------------------------------- models with known locality
 *
 * Construction (doc/locality.md): channel c = n_embd - 1 of the residual stream holds the constant K
 * in every token's embedding, and nothing ever writes to it: the rows of attn_output and ffn_down
 * for c are zero (so is column c of ffn_down_t). RMSNorm divides every channel of a token by the same
 * positive number, so the sign of gate_i . x, which is all that decides whether a ReLU neuron fires,
 * does not depend on it: neuron i is active iff g_ic K w_c + sum_{j != c} g_ij w_j h_j > 0 (w the
 * ffn_norm weights). Over random tokens the sum is nearly Gaussian (n_embd - 33 independent uniform
 * terms) with mean mu_i and variance s_i^2 computed from the dequantised gate row and the dequantised
 * embedding's per-channel mean and variance; g_ic = (s_i z_i - mu_i) / (K w_c) with z_i =
 * Phi^-1(p_i) then makes the neuron fire at the designed rate p_i. The 31 channels sharing c's
 * 32-element block are zero in the embedding and the gate rows, so that the quantised blocks hold
 * K and g_ic exactly (the largest magnitude of a Q4_0/Q8_0 block is exact). c is kept out of
 * attention and the up projection (their column c is zero), and attn_output and ffn_down are scaled
 * by 0.1 / sqrt(n_layer * n_embd) (the embedding's entries have sd 1/sqrt(n_embd)), so the residual
 * stream stays close to the embedding through the layers (every sublayer together add about 2% to
 * its variance) and the layer-0 statistics hold in every layer. Without that scale the demo shape's
 * 80% share drifted from 26% in layer 0 to 37% in layer 7. The rates p_i follow p(u) = min(A u^-alpha, 0.999) over the rank quantile u = (i + 0.5) /
 * n_ff, with A and alpha solved for the mean and the 80% share, then permuted per layer at random. */

#define LOC_K 1.0f
#define LOC_PMAX 0.999
#define LOC_PMIN 1e-5

struct gen_loc {
    int64_t d, c, z0;     /* width, the constant channel, first channel of its zeroed block (c if none) */
    double *emb_sum, *emb_sq; /* (d) per-channel sums over the vocabulary of the dequantised embedding */
    double k_eff;         /* K as dequantised */
    float *ffn_norm;      /* (d) the current layer's ffn_norm */
    float *z;             /* (n_ff) Phi^-1 of the current layer's designed rates */
    double *base;         /* (n_ff) the designed rates in rank order (the same for every layer) */
    float *deq;           /* (n_ff) the current layer's designed rates, then their probits (ffn_norm's rewrite) */
    float scale;          /* of attn_output and ffn_down */
    float *gv;            /* (gate_rank, d): the current layer's gate factor V (gate = U V), or NULL */
    float *gc;            /* (n_ff): the current layer's stored gate weights on channel c (pred_exact) */
    float *pred;          /* (max(d, n_ff) * pred_rank): an exact predictor's values (pred_exact) */
    int il;               /* layer of the last norm seen */
};

/* Share of the n rates p (sorted descending) that carries 80% of their sum. */
static double loc_share(const double *p, int n)
{
    double sum = 0, acc = 0;
    int k = 0;
    for (int i = 0; i < n; i++) sum += p[i];
    while (k < n && acc < 0.8 * sum) acc += p[k++];
    return (double)k / n;
}

/* p (n) = min(max(A u^-alpha, PMIN), PMAX), with A such that the mean is mean (p doubles as the
 * scratch of -alpha log u). */
static void loc_rates(double alpha, double mean, int n, double *p)
{
    double lo = -60, hi = 60;
    for (int i = 0; i < n; i++) p[i] = -alpha * log((i + 0.5) / n);
    for (int it = 0; it < 100; it++) {
        double la = 0.5 * (lo + hi), sum = 0;
        for (int i = 0; i < n; i++) {
            double v = exp(la + p[i]);
            sum += v > LOC_PMAX ? LOC_PMAX : v < LOC_PMIN ? LOC_PMIN : v;
        }
        if (sum / n < mean) lo = la;
        else hi = la;
    }
    for (int i = 0; i < n; i++) {
        double v = exp(lo + p[i]);
        p[i] = v > LOC_PMAX ? LOC_PMAX : v < LOC_PMIN ? LOC_PMIN : v;
    }
}

/* The designed rates in rank order, p (n_ff) descending. 0 or -PI_ERR_INVAL (logged). */
static int loc_base_rates(const struct pi_model_gen *g, double *p)
{
    double sparsity = g->sparsity > 0 ? g->sparsity : 0.9, share = g->hot_share > 0 ? g->hot_share : 0.26;
    double lo = 0, hi = 8;
    int n = g->n_ff;
    if (!(sparsity > 0 && sparsity < 1 && share > 0 && share < 0.8)) goto bad;
    loc_rates(hi, 1 - sparsity, n, p);
    if (loc_share(p, n) > share) goto bad; /* more concentrated than the cap allows */
    for (int it = 0; it < 60; it++) { /* the share falls as alpha grows */
        double a = 0.5 * (lo + hi);
        loc_rates(a, 1 - sparsity, n, p);
        if (loc_share(p, n) > share) lo = a;
        else hi = a;
    }
    loc_rates(hi, 1 - sparsity, n, p);
    return 0;
bad:
    pi_error("gen: no rates with mean sparsity %g and 80%% of activations in %g of the neurons", sparsity, share);
    return -PI_ERR_INVAL;
}

/* freq (n_ff) = layer il's permutation of the base rates p: the hot neurons are anywhere, not ids
 * 0..k-1. */
static void loc_permute(const struct pi_model_gen *g, int il, const double *p, float *freq)
{
    uint64_t s = g->seed * 0x9e3779b97f4a7c15ull + 0x51ed270b27e3ull * (uint64_t)(il + 1);
    for (int i = 0; i < g->n_ff; i++) freq[i] = (float)p[i];
    for (int i = g->n_ff - 1; i > 0; i--) {
        int j = (int)(pi_rng_splitmix64(&s) % (uint64_t)(i + 1));
        float t = freq[i];
        freq[i] = freq[j];
        freq[j] = t;
    }
}

int pi_model_gen_locality_freq(const struct pi_model_gen *g, int il, float *freq)
{
    double *p = malloc((size_t)g->n_ff * sizeof *p);
    if (!p) return -PI_ERR_NOMEM;
    int rc = loc_base_rates(g, p);
    if (rc == 0) loc_permute(g, il, p, freq);
    free(p);
    return rc;
}

/* Phi^-1(p) by bisection (erfc is exact enough; this runs n_ff times a layer). */
static double loc_probit(double p)
{
    double lo = -12, hi = 12;
    for (int it = 0; it < 80; it++) {
        double m = 0.5 * (lo + hi);
        if (0.5 * erfc(-m / sqrt(2.0)) < p) lo = m;
        else hi = m;
    }
    return 0.5 * (lo + hi);
}

/* Element (channel, neuron) of layer il's down matrix (gen_down writes it as ffn_down and ffn_down_t). */
static float loc_down(const struct gen *G, int il, int64_t ch, int64_t neuron)
{
    if (ch == G->loc->c) return 0.0f;
    uint64_t s = G->g->seed ^ ((uint64_t)il << 48) ^ ((uint64_t)ch << 24) ^ (uint64_t)neuron;
    return G->loc->scale * 1.7320508f / sqrtf((float)G->g->n_ff) * gen_uniform(&s);
}

/* The gate row of neuron r: the zeroed block, then g_ic for its designed rate (three rounds so that
 * types whose blocks span c and other channels converge on what is stored). */
/* A stream of its own for (layer, row) of the low-rank gate: the main stream, and so every other
 * tensor, is the same with and without --gate-rank. */
static uint64_t loc_gate_seed(const struct gen *G, int il, int64_t r)
{
    uint64_t s = G->g->seed ^ 0x6a09e667f3bcc908ULL ^ ((uint64_t)(uint32_t)il << 40) ^ (uint64_t)(r + 1);
    (void)pi_rng_splitmix64(&s);
    return s;
}

/* Layer il's gate factor V (gate_rank, d): entries uniform with variance 1/d. */
static void loc_gate_factor(struct gen *G, int il)
{
    struct gen_loc *L = G->loc;
    uint64_t s = loc_gate_seed(G, il, -1);
    const float a = sqrtf(3.0f / (float)L->d);
    for (int64_t i = 0; i < (int64_t)G->g->gate_rank * L->d; i++) L->gv[i] = a * gen_uniform(&s);
}

/* Gate row r of layer il = U_r V, U_r (gate_rank) uniform with variance 1/gate_rank: entries of
 * variance 1/d as the full-rank rows have, and gate . x a function of the gate_rank numbers V x (and
 * of the constant channel, which loc_gate sets afterwards). */
static void loc_gate_low_rank(struct gen *G, int il, int64_t r, float *row)
{
    struct gen_loc *L = G->loc;
    const int R = G->g->gate_rank;
    uint64_t s = loc_gate_seed(G, il, r);
    const float a = sqrtf(3.0f / (float)R);
    memset(row, 0, (size_t)L->d * sizeof *row);
    for (int k = 0; k < R; k++) {
        const float u = a * gen_uniform(&s), *v = L->gv + (size_t)k * (size_t)L->d;
        for (int64_t j = 0; j < L->d; j++) row[j] += u * v[j];
    }
}

static int loc_gate(struct gen *G, enum pi_type t, int64_t r, float *row, const struct gen_scratch *sc)
{
    struct gen_loc *L = G->loc;
    double V = (double)G->g->n_vocab;
    for (int64_t j = L->z0; j <= L->c; j++) row[j] = 0.0f;
    for (int round = 0; round < 3; round++) {
        double mu = 0, var = 0;
        pi_quantize_row(t, row, sc->qrow, L->d);
        pi_dequant_row(t, sc->qrow, sc->deq, L->d);
        for (int64_t j = 0; j < L->d; j++) {
            if (j == L->c) continue;
            double m = L->emb_sum[j] / V, v = L->emb_sq[j] / V - m * m, a = (double)sc->deq[j] * L->ffn_norm[j];
            mu += a * m;
            var += a * a * (v > 0 ? v : 0);
        }
        row[L->c] = (float)((sqrt(var) * L->z[r] - mu) / (L->k_eff * L->ffn_norm[L->c]));
    }
    if (L->gc) { /* what the file will hold on channel c, for the exact predictors */
        pi_quantize_row(t, row, sc->qrow, L->d);
        pi_dequant_row(t, sc->qrow, sc->deq, L->d);
        L->gc[r] = sc->deq[L->c];
    }
    return 0;
}

/* Row r of layer il's exact predictor (pi_model_gen.pred_exact): fc1 (2R + 1, d) = [V * w; -V * w; e_c]
 * with V's columns z0..c zero as in the gate rows and w the layer's ffn_norm weights, fc2 (n_ff, 2R + 1)
 * = [U_r, -U_r, g_rc w_c]. A model file's predictors read the residual stream h (PowerInfer's
 * convention, compute/predictor.h): with x = h / rms(h) * w the logit is rms(h) times the gate's
 * pre-activation g_r . x, the same sign. */
static void loc_pred_row(struct gen *G, int il, bool fc1, int64_t r, float *row, int64_t cols)
{
    struct gen_loc *L = G->loc;
    const int R = G->g->gate_rank;
    memset(row, 0, (size_t)cols * sizeof *row);
    if (fc1) {
        if (r == 2 * R) {
            row[L->c] = 1.0f;
            return;
        }
        const float sgn = r < R ? 1.0f : -1.0f, *v = L->gv + (size_t)(r % R) * (size_t)L->d;
        for (int64_t j = 0; j < L->z0; j++) row[j] = sgn * v[j] * L->ffn_norm[j];
        return;
    }
    uint64_t s = loc_gate_seed(G, il, r); /* U_r as loc_gate_low_rank draws it */
    const float a = sqrtf(3.0f / (float)R);
    for (int k = 0; k < R; k++) {
        row[k] = a * gen_uniform(&s);
        row[R + k] = -row[k];
    }
    row[2 * R] = L->gc[r] * L->ffn_norm[L->c];
}

/* Layer il's exact predictors, blk.N.fc1 and blk.N.fc2 in F16, their rows from loc_pred_row (after the
 * layer's gate, whose factors and channel-c weights they take): written from values, so they draw
 * nothing from the main stream and every other tensor is the same with and without them. */
static int gen_pred_exact(struct gen *G, int il)
{
    const int64_t d = G->g->n_embd, ff = G->g->n_ff, rank = G->g->pred_rank;
    float *p = G->loc->pred;
    char name[96];
    for (int64_t r = 0; r < rank; r++) loc_pred_row(G, il, true, r, p + r * d, d);
    snprintf(name, sizeof name, "blk.%d.fc1.weight", il);
    int rc = gen_tensor_src(G, name, PI_TYPE_F16, rank, d, false, p, d, 1);
    for (int64_t r = 0; rc == 0 && r < ff; r++) loc_pred_row(G, il, false, r, p + r * rank, rank);
    snprintf(name, sizeof name, "blk.%d.fc2.weight", il);
    return rc < 0 ? rc : gen_tensor_src(G, name, PI_TYPE_F16, ff, rank, false, p, rank, 1);
}

/* The locality model's rewrite of row r of tensor `name` (thread scratch sc). Every row's rewrite is
 * independent of the others' except token_embd's (the embedding's statistics add up in row order) and
 * ffn_norm's (the layer's rates, in shared scratch): gen_tensor_src keeps token_embd in row order, and a
 * norm is one row, which the pool runs on the calling thread. */
static int loc_row(struct gen *G, const char *name, enum pi_type t, int64_t r, float *row, int64_t cols,
                   const struct gen_scratch *sc)
{
    struct gen_loc *L = G->loc;
    char kind[32] = "";
    int il = -1;
    if (sscanf(name, "blk.%d.%31[^.]", &il, kind) != 2) il = -1;
    if (strcmp(name, "token_embd.weight") == 0) {
        for (int64_t j = L->z0; j < L->c; j++) row[j] = 0.0f;
        row[L->c] = LOC_K;
        pi_quantize_row(t, row, sc->qrow, cols);
        pi_dequant_row(t, sc->qrow, sc->deq, cols);
        for (int64_t j = 0; j < cols; j++) {
            L->emb_sum[j] += sc->deq[j];
            L->emb_sq[j] += (double)sc->deq[j] * sc->deq[j];
        }
        L->k_eff = sc->deq[L->c];
        return 0;
    }
    if (il < 0) return 0;
    if (strcmp(kind, "ffn_norm") == 0) {
        memcpy(L->ffn_norm, row, (size_t)cols * sizeof *row);
        float *f = (float *)L->deq; /* the designed rates, then their probits */
        loc_permute(G->g, il, L->base, f);
        for (int i = 0; i < G->g->n_ff; i++) L->z[i] = (float)loc_probit(f[i]);
        if (L->gv) loc_gate_factor(G, il);
    } else if (!strcmp(kind, "attn_q") || !strcmp(kind, "attn_k") || !strcmp(kind, "attn_v") ||
               !strcmp(kind, "ffn_up")) {
        row[L->c] = 0.0f;
    } else if (strcmp(kind, "attn_output") == 0) {
        for (int64_t j = 0; j < cols; j++) row[j] = r == L->c ? 0.0f : row[j] * L->scale;
    } else if (strcmp(kind, "ffn_down") == 0) {
        for (int64_t j = 0; j < cols; j++) row[j] = loc_down(G, il, r, j);
    } else if (strcmp(kind, "ffn_gate") == 0) {
        if (L->gv) loc_gate_low_rank(G, il, r, row);
        return loc_gate(G, t, r, row, sc);
    }
    return 0;
}

static void loc_free(struct gen_loc **pl)
{
    struct gen_loc *L = *pl;
    if (!L) return;
    free(L->emb_sum);
    free(L->emb_sq);
    free(L->ffn_norm);
    free(L->z);
    free(L->base);
    free(L->deq);
    free(L->gv);
    free(L->gc);
    free(L->pred);
    free(L);
    *pl = NULL;
}

static int loc_new(struct gen *G, int64_t cols_max)
{
    const struct pi_model_gen *g = G->g;
    if (g->n_embd < 64 || g->n_embd % 32 != 0 || (g->act != PI_FFN_ACT_DEFAULT && g->act != PI_FFN_ACT_RELU)) {
        pi_error("gen: a locality model needs n_embd a multiple of 32 and >= 64 (%d) and the relu activation",
                 g->n_embd);
        return -PI_ERR_INVAL;
    }
    struct gen_loc *L = calloc(1, sizeof *L);
    if (!L) return -PI_ERR_NOMEM;
    G->loc = L;
    L->d = g->n_embd;
    L->c = L->d - 1;
    L->z0 = L->d - 32;
    L->scale = 0.1f / sqrtf((float)g->n_layer * (float)g->n_embd); /* the embedding has sd 1/sqrt(n_embd) */
    L->emb_sum = calloc((size_t)L->d, sizeof *L->emb_sum);
    L->emb_sq = calloc((size_t)L->d, sizeof *L->emb_sq);
    L->ffn_norm = calloc((size_t)L->d, sizeof *L->ffn_norm);
    L->z = calloc((size_t)g->n_ff, sizeof *L->z);
    L->deq = calloc((size_t)g->n_ff, sizeof *L->deq);
    L->base = calloc((size_t)g->n_ff, sizeof *L->base);
    if (!L->emb_sum || !L->emb_sq || !L->ffn_norm || !L->z || !L->deq || !L->base) return -PI_ERR_NOMEM;
    if (g->gate_rank < 0 || g->gate_rank > g->n_embd) {
        pi_error("gen: gate rank %d outside 0..n_embd (%d)", g->gate_rank, g->n_embd);
        return -PI_ERR_INVAL;
    }
    if (g->gate_rank > 0 && !(L->gv = malloc((size_t)g->gate_rank * (size_t)L->d * sizeof *L->gv))) return -PI_ERR_NOMEM;
    if (g->pred_exact && (g->gate_rank < 1 || g->pred_rank != 2 * g->gate_rank + 1)) {
        pi_error("gen: exact predictors need a gate rank R >= 1 and pred_rank 2 R + 1 (%d, %d)", g->gate_rank,
                 g->pred_rank);
        return -PI_ERR_INVAL;
    }
    if (g->pred_exact && (!(L->gc = malloc((size_t)g->n_ff * sizeof *L->gc)) ||
                          !(L->pred = malloc((size_t)PI_MAX(L->d, g->n_ff) * (size_t)g->pred_rank * sizeof *L->pred))))
        return -PI_ERR_NOMEM;
    return loc_base_rates(g, L->base); /* before any tensor: bad rates fail fast */
}

int pi_model_gen_write(const struct pi_model_gen *g, const char *path)
{
    enum pi_type t = g->type ? g->type : PI_TYPE_F32;
    enum pi_type te = g->embd_type ? g->embd_type : t, to = g->out_type ? g->out_type : t;
    struct gen G = {.g = g, .w = pi_gguf_writer_new(), .rng = g->seed};
    struct pi_model_gen gl;
    int64_t cols_max = PI_MAX(PI_MAX(g->n_embd, g->n_ff), g->pred_rank);
    int64_t rows_max = PI_MAX(PI_MAX(g->n_vocab, cols_max), 1) + 1; /* + 1: the reshape hook */
    int rc;
    if (g->n_embd < 1 || g->n_head < 1 || g->n_embd % g->n_head != 0 || g->n_layer < 1 || g->n_ff < 1 ||
        g->n_vocab < 1 || g->pred_rank < 0 || (g->pred_exact && !g->locality)) {
        pi_error("gen: %s",
                 g->pred_exact && !g->locality ? "exact predictors need a locality model" : "bad model shape");
        pi_gguf_writer_destroy(&G.w);
        return -PI_ERR_INVAL;
    }
    /* rows in parallel (the bytes do not depend on the count) */
    G.pool = g->n_threads == 1 ? NULL : pi_pool_new(g->n_threads > 0 ? g->n_threads : 0);
    const size_t nt = (size_t)pi_pool_size(G.pool);
    G.cols_max = cols_max;
    G.buf = malloc(nt * (size_t)cols_max * sizeof(float));
    G.deq = malloc(nt * (size_t)cols_max * sizeof(float));
    G.qrow = malloc(nt * (size_t)cols_max * 8);
    /* 8 bytes an element: f64 and i64 (the retype hook) are the widest types */
    G.qbuf = malloc((size_t)rows_max * (size_t)cols_max * sizeof(double));
    G.down = malloc((size_t)g->n_embd * (size_t)g->n_ff * sizeof(float));
    if (g->n_threads != 1 && !G.pool) {
        rc = -PI_ERR_IO; /* pi_pool_new logged why */
        goto out;
    }
    if (!G.w || !G.buf || !G.deq || !G.qrow || !G.qbuf || !G.down) {
        rc = -PI_ERR_NOMEM;
        goto out;
    }
    if (g->locality) {
        gl = *g;
        if (gl.act == PI_FFN_ACT_DEFAULT) gl.act = PI_FFN_ACT_RELU;
        G.g = &gl;
        if ((rc = loc_new(&G, cols_max)) < 0) goto out;
    }
    if ((rc = gen_metadata(&G)) < 0 ||
        (rc = gen_tensor(&G, "token_embd.weight", te, g->n_vocab, g->n_embd, false)) < 0 ||
        (rc = gen_tensor(&G, "output_norm.weight", PI_TYPE_F32, 0, g->n_embd, true)) < 0 ||
        (!g->tied && (rc = gen_tensor(&G, "output.weight", to, g->n_vocab, g->n_embd, false)) < 0) ||
        (rc = gen_layers(&G, t)) < 0)
        goto out;
    /* PowerInfer's files are GGUF v3 with the magic "PWRI" (and its ggml's integer type ids) */
    if (g->powerinfer) pi_gguf_writer_set_flavour(G.w, PI_GGUF_FLAVOUR_POWERINFER);
    rc = pi_gguf_writer_write(G.w, path);
out:
    loc_free(&G.loc);
    free(G.buf);
    free(G.deq);
    free(G.qrow);
    pi_pool_destroy(&G.pool);
    free(G.qbuf);
    free(G.down);
    pi_gguf_writer_destroy(&G.w);
    return rc;
}

/* The shapes benchmarks and tests generate: (n_embd, n_ff, n_layer, n_head, n_head_kv, n_vocab). */
static const struct gen_preset {
    const char *name;
    int embd, ff, layers, heads, kv, vocab;
} gen_presets[] = {
    {"70b", 8192, 28672, 80, 64, 8, 32000},
    {"13b", 5120, 13824, 40, 40, 40, 32000},
    {"7b", 4096, 11008, 32, 32, 32, 32000},
    {"1b", 2048, 5632, 22, 32, 4, 32000},
    {"demo", 256, 1024, 8, 8, 4, 8192},
    {"tiny", 64, 256, 4, 4, 2, 32000},
};

int pi_model_gen_preset(const char *name, struct pi_model_gen *g)
{
    for (size_t i = 0; i < PI_ARRAY_LEN(gen_presets); i++) {
        const struct gen_preset *p = &gen_presets[i];
        if (strcmp(name, p->name) != 0) continue;
        g->n_embd = p->embd;
        g->n_ff = p->ff;
        g->n_layer = p->layers;
        g->n_head = p->heads;
        g->n_head_kv = p->kv;
        g->n_vocab = p->vocab;
        return 0;
    }
    return -PI_ERR_NOTFOUND;
}

const char *pi_model_gen_preset_names(void) { return "70b, 13b, 7b, 1b, demo, tiny"; }

int pi_model_gen_vocab_size(const char *path, int *n, char *err, size_t errlen)
{
    pi_gguf_t *v = NULL;
    enum pi_gguf_vtype et;
    uint64_t cnt = 0;
    int rc = pi_gguf_open(path, &v, err, errlen);
    if (rc < 0) return rc;
    if (pi_gguf_get_arr(v, "tokenizer.ggml.tokens", &et, &cnt) < 0 || et != PI_GGUF_STRING || cnt < 1 ||
        cnt > INT32_MAX) {
        snprintf(err, errlen, "no tokenizer.ggml.tokens string array");
        rc = -PI_ERR_FORMAT;
    } else {
        *n = (int)cnt;
    }
    pi_gguf_destroy(&v);
    return rc;
}
