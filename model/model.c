/*
 * model/model.c - binds a llama-family model from a validated GGUF file (see model/model.h).
 *
 * Order of work, each step failing with one message that names what is wrong:
 *   1. hyper-parameters from `<arch>.*` keys, checked for consistency and sane bounds;
 *   2. every tensor by name, with its shape checked against the hyper-parameters and its type against
 *      the types the CPU kernels implement;
 *   3. the FFN activation (option, then `pinfer.ffn_activation`, then the format default);
 *   4. the values: no NaN or infinity in any tensor's elements or block scales, read in windows of
 *      each tensor or whole (model/tensor-check.h, opts->check);
 *   5. the norm vectors copied to f32, and the transposed copies: ffn_down packed transposed (one
 *      neuron per row) unless the file brings PowerInfer's ffn_down_t, and ffn_down built from the
 *      file's ffn_down_t where the file has none (PowerInfer's files carry ffn_down_t instead).
 * The GGUF reader has already checked that every tensor's bytes lie inside the file. The random-model
 * generator, which writes files this binds, is model/model-gen.c.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <math.h>
#include <sys/mman.h>
#include <time.h>

#include "lib/common.h"
#include "lib/log.h"
#include "model/model.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/rows16.h"

/* Bounds that keep every product below in range and reject absurd files early. */
#define MAX_LAYERS 4096
#define MAX_DIM (1 << 20)
#define MAX_HEADS 4096
#define MAX_HEAD_DIM 1024  /* largest per-head size accepted (real models: 64 to 256) */
#define MAX_ATTN_RATIO 8   /* heads x head size at most this many times n_embd (real models: 1 to 1.34) */

struct binder {
    const pi_gguf_t *g;
    pi_model_t *m;
    const struct pi_model_opts *opts;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 2, 3))) static int fail(struct binder *b, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pi_error("model: %s", line);
    if (b->err && b->errlen) snprintf(b->err, b->errlen, "%s", line);
    return -PI_ERR_FORMAT;
}

void pi_model_opts_default(struct pi_model_opts *o)
{
    memset(o, 0, sizeof *o);
    o->act = PI_FFN_ACT_DEFAULT;
    o->down_t_type = PI_TYPE_COUNT;
}

/* ---------------------------------------------------------------- hyper-parameters */

/* An integer key `<arch>.<suffix>` into *out, within [lo, hi]. def < 0 means required. */
static int get_count(struct binder *b, const char *suffix, int64_t def, int64_t lo, int64_t hi, int *out)
{
    char key[128];
    uint64_t v;
    snprintf(key, sizeof key, "%s.%s", b->m->hp.arch, suffix);
    int rc = pi_gguf_get_uint(b->g, key, &v);
    if (rc == -PI_ERR_NOTFOUND && def >= 0) {
        *out = (int)def;
        return 0;
    }
    if (rc == -PI_ERR_NOTFOUND) return fail(b, "metadata key %s missing", key);
    if (rc < 0) return fail(b, "metadata key %s: not an unsigned integer in range", key);
    if ((int64_t)v < lo || v > (uint64_t)hi)
        return fail(b, "metadata key %s = %llu outside [%lld, %lld]", key, (unsigned long long)v,
                    (long long)lo, (long long)hi);
    *out = (int)v;
    return 0;
}

static int get_float(struct binder *b, const char *suffix, float def, float *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", b->m->hp.arch, suffix);
    int rc = pi_gguf_get_f32(b->g, key, out);
    if (rc == -PI_ERR_NOTFOUND) {
        *out = def;
        return 0;
    }
    if (rc < 0) return fail(b, "metadata key %s: not a float", key);
    return 0;
}

static int read_arch(struct binder *b)
{
    struct pi_gguf_str s;
    if (pi_gguf_get_str(b->g, "general.architecture", &s) < 0)
        return fail(b, "metadata key general.architecture missing or not a string");
    if (!pi_gguf_str_eq(s, "llama") && !pi_gguf_str_eq(s, "bamboo"))
        return fail(b, "architecture \"%.*s\" is not supported (llama, bamboo)", (int)PI_MIN(s.len, 64),
                    s.ptr);
    memcpy(b->m->hp.arch, s.ptr, s.len);
    b->m->hp.arch[s.len] = '\0';
    return 0;
}

/* The FFN activation: option, then `pinfer.ffn_activation`, then the format default. */
static int read_activation(struct binder *b, enum pi_ffn_act opt)
{
    struct pi_hparams *hp = &b->m->hp;
    struct pi_gguf_str s;
    char name[16];
    if (opt != PI_FFN_ACT_DEFAULT) {
        hp->act = opt;
        return 0;
    }
    int rc = pi_gguf_get_str(b->g, "pinfer.ffn_activation", &s);
    if (rc == 0) {
        if (pi_gguf_str_has_nul(s)) return fail(b, "pinfer.ffn_activation holds a NUL byte");
        snprintf(name, sizeof name, "%.*s", (int)PI_MIN(s.len, sizeof name - 1), s.ptr);
        if (s.len >= sizeof name || pi_ffn_act_parse(name, &hp->act) < 0)
            return fail(b, "pinfer.ffn_activation \"%.*s\" is not silu, relu or drelu",
                        (int)PI_MIN(s.len, 32), s.ptr);
        return 0;
    }
    if (rc != -PI_ERR_NOTFOUND) return fail(b, "pinfer.ffn_activation is not a string");
    /* PowerInfer's sparse files (magic PWRI) and Bamboo are ReLU models; plain llama is SwiGLU. */
    bool sparse = hp->flavour == PI_GGUF_FLAVOUR_POWERINFER || strcmp(hp->arch, "bamboo") == 0;
    hp->act = sparse ? PI_FFN_ACT_RELU : PI_FFN_ACT_SILU;
    return 0;
}

static int read_hparams(struct binder *b, enum pi_ffn_act act)
{
    struct pi_hparams *hp = &b->m->hp;
    int rc, key_len, val_len;
    hp->flavour = pi_gguf_flavour(b->g);
    if ((rc = read_arch(b)) < 0) return rc;
    if ((rc = get_count(b, "embedding_length", -1, 1, MAX_DIM, &hp->n_embd)) < 0 ||
        (rc = get_count(b, "block_count", -1, 1, MAX_LAYERS, &hp->n_layer)) < 0 ||
        (rc = get_count(b, "feed_forward_length", -1, 1, MAX_DIM, &hp->n_ff)) < 0 ||
        (rc = get_count(b, "attention.head_count", -1, 1, MAX_HEADS, &hp->n_head)) < 0 ||
        (rc = get_count(b, "attention.head_count_kv", hp->n_head, 1, MAX_HEADS, &hp->n_head_kv)) < 0 ||
        (rc = get_count(b, "context_length", 0, 0, INT32_MAX, &hp->n_ctx_train)) < 0)
        return rc;
    if (hp->n_head % hp->n_head_kv != 0)
        return fail(b, "%s.attention.head_count %d is not a multiple of head_count_kv %d", hp->arch,
                    hp->n_head, hp->n_head_kv);
    if (hp->n_embd % hp->n_head != 0)
        return fail(b, "%s.embedding_length %d is not a multiple of attention.head_count %d", hp->arch,
                    hp->n_embd, hp->n_head);
    /* The per-head size is bounded on its own and against n_embd: the attention scratch and the KV
     * cache grow with heads x head size, which a small file could otherwise set to millions (a 17 MB
     * file made a run take 8.6 GB). */
    if ((rc = get_count(b, "attention.key_length", hp->n_embd / hp->n_head, 1, MAX_HEAD_DIM, &key_len)) < 0 ||
        (rc = get_count(b, "attention.value_length", key_len, 1, MAX_HEAD_DIM, &val_len)) < 0)
        return rc;
    if (val_len != key_len)
        return fail(b, "%s.attention.value_length %d differs from key_length %d", hp->arch, val_len, key_len);
    if ((int64_t)key_len * hp->n_head > MAX_DIM || (int64_t)key_len * hp->n_head > (int64_t)MAX_ATTN_RATIO * hp->n_embd)
        return fail(b, "attention width %d x %d heads is more than %d times embedding_length %d", key_len, hp->n_head,
                    MAX_ATTN_RATIO, hp->n_embd);
    hp->head_dim = key_len;
    if ((rc = get_count(b, "rope.dimension_count", hp->head_dim, 2, hp->head_dim, &hp->n_rot)) < 0) return rc;
    if (hp->n_rot % 2 != 0)
        return fail(b, "%s.rope.dimension_count %d is odd (rope rotates pairs; default: head_dim)", hp->arch,
                    hp->n_rot);
    if ((rc = get_float(b, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps)) < 0 ||
        (rc = get_float(b, "rope.freq_base", 10000.0f, &hp->rope_base)) < 0)
        return rc;
    if (!(hp->rms_eps > 0.0f && hp->rms_eps < 1.0f)) /* 0 would make a zero row 0/0 */
        return fail(b, "%s.attention.layer_norm_rms_epsilon %g out of range", hp->arch, (double)hp->rms_eps);
    if (!(hp->rope_base > 1.0f && hp->rope_base < 1e12f))
        return fail(b, "%s.rope.freq_base %g out of range", hp->arch, (double)hp->rope_base);
    rc = pi_gguf_get_f32(b->g, "powerinfer.sparse_threshold", &hp->sparse_threshold);
    if (rc < 0 && rc != -PI_ERR_NOTFOUND) return fail(b, "powerinfer.sparse_threshold is not a float");
    if (rc == 0 && !isfinite(hp->sparse_threshold))
        return fail(b, "powerinfer.sparse_threshold %g is not finite", (double)hp->sparse_threshold);
    hp->has_sparse_threshold = rc == 0;
    return read_activation(b, act);
}

/* ---------------------------------------------------------------- tensors */

/* Matrix types the CPU kernels implement (a dequantiser and a dot product). */
static bool matrix_type_ok(uint32_t t)
{
    return t < PI_TYPE_COUNT && pi_type_get(t) && pi_kernel_supported((enum pi_type)t);
}

/* True when t has exactly the dims (ne0, ne1) with any further dims equal to 1. ne1 = 0: a vector. */
static bool shape_is(const struct pi_gguf_tensor *t, uint64_t ne0, uint64_t ne1)
{
    if (t->ne[0] != ne0) return false;
    if (ne1 == 0) return t->ne[1] == 1 && t->ne[2] == 1 && t->ne[3] == 1;
    return t->ne[1] == ne1 && t->ne[2] == 1 && t->ne[3] == 1;
}

static void shape_str(const struct pi_gguf_tensor *t, char *buf, size_t len)
{
    /* printed as (rows, cols) = (ne1, ne0), the convention of model/model.h */
    if (t->n_dims <= 1) snprintf(buf, len, "(%llu)", (unsigned long long)t->ne[0]);
    else if (t->n_dims == 2)
        snprintf(buf, len, "(%llu, %llu)", (unsigned long long)t->ne[1], (unsigned long long)t->ne[0]);
    else
        snprintf(buf, len, "(%llu, %llu, %llu, %llu)", (unsigned long long)t->ne[3],
                 (unsigned long long)t->ne[2], (unsigned long long)t->ne[1], (unsigned long long)t->ne[0]);
}

/* Look up name and check it is a matrix (rows, cols), or a vector (cols) when rows == 0. `what`
 * names the expected shape in words. Sets *out (data NULL when absent and optional). */
static int find(struct binder *b, const char *name, int64_t rows, int64_t cols, const char *what,
                bool optional, const struct pi_gguf_tensor **out)
{
    char have[96];
    const struct pi_gguf_tensor *t = pi_gguf_find_tensor(b->g, name);
    *out = t;
    if (!t) return optional ? 0 : fail(b, "tensor %s missing", name);
    if (!shape_is(t, (uint64_t)cols, (uint64_t)rows)) {
        shape_str(t, have, sizeof have);
        if (rows == 0) return fail(b, "%s: shape %s, expected (%lld) %s", name, have, (long long)cols, what);
        return fail(b, "%s: shape %s, expected (%lld, %lld) %s", name, have, (long long)rows,
                    (long long)cols, what);
    }
    return 0;
}

static int bind_matrix(struct binder *b, const char *name, int64_t rows, int64_t cols, const char *what,
                       bool optional, struct pi_weight *w)
{
    const struct pi_gguf_tensor *t;
    uint64_t rb;
    int rc = find(b, name, rows, cols, what, optional, &t);
    memset(w, 0, sizeof *w);
    if (rc < 0 || !t) return rc;
    if (!matrix_type_ok(t->type) || !pi_type_row_bytes(t->type, t->ne[0], &rb))
        return fail(b, "%s: type %s is not supported for weight matrices", name, pi_type_name(t->type));
    w->type = (enum pi_type)t->type;
    w->rows = rows;
    w->cols = cols;
    w->row_bytes = (size_t)rb;
    w->data = t->data;
    return 0;
}

/* A norm vector (n,) of any float or quantised type, dequantised into dst. */
static int bind_norm(struct binder *b, const char *name, int64_t n, float *dst)
{
    const struct pi_gguf_tensor *t;
    int rc = find(b, name, 0, n, "(n_embd)", false, &t);
    if (rc < 0) return rc;
    uint64_t rb;
    if (!matrix_type_ok(t->type) || !pi_type_row_bytes(t->type, t->ne[0], &rb))
        return fail(b, "%s: type %s is not supported", name, pi_type_name(t->type));
    pi_dequant_row((enum pi_type)t->type, t->data, dst, n);
    return 0;
}

static int bind_layer(struct binder *b, int il, float *norms)
{
    const struct pi_hparams *hp = &b->m->hp;
    struct pi_layer *L = &b->m->layers[il];
    int64_t d = hp->n_embd, q_dim = (int64_t)hp->n_head * hp->head_dim;
    int64_t kv_dim = (int64_t)hp->n_head_kv * hp->head_dim, ff = hp->n_ff;
    char name[96];
    int rc;
#define TNAME(s) (snprintf(name, sizeof name, "blk.%d." s ".weight", il), name)
    if ((rc = bind_norm(b, TNAME("attn_norm"), d, norms)) < 0 ||
        (rc = bind_norm(b, TNAME("ffn_norm"), d, norms + d)) < 0 ||
        (rc = bind_matrix(b, TNAME("attn_q"), q_dim, d, "(q_dim, n_embd)", false, &L->attn_q)) < 0 ||
        (rc = bind_matrix(b, TNAME("attn_k"), kv_dim, d, "(kv_dim, n_embd)", false, &L->attn_k)) < 0 ||
        (rc = bind_matrix(b, TNAME("attn_v"), kv_dim, d, "(kv_dim, n_embd)", false, &L->attn_v)) < 0 ||
        (rc = bind_matrix(b, TNAME("attn_output"), d, q_dim, "(n_embd, q_dim)", false, &L->attn_output)) < 0 ||
        (rc = bind_matrix(b, TNAME("ffn_gate"), ff, d, "(n_ff, n_embd)", false, &L->ffn_gate)) < 0 ||
        (rc = bind_matrix(b, TNAME("ffn_up"), ff, d, "(n_ff, n_embd)", false, &L->ffn_up)) < 0 ||
        (rc = bind_matrix(b, TNAME("ffn_down"), d, ff, "(n_embd, n_ff)", true, &L->ffn_down)) < 0 ||
        (rc = bind_matrix(b, TNAME("ffn_down_t"), ff, d, "(n_ff, n_embd)", true, &L->ffn_down_t)) < 0)
        return rc;
    L->attn_norm = norms;
    L->ffn_norm = norms + d;
    L->down_t_from_file = L->ffn_down_t.data != NULL;
    if (!L->ffn_down.data && !L->down_t_from_file)
        return fail(b, "tensor blk.%d.ffn_down.weight missing (and no blk.%d.ffn_down_t.weight to build it from)", il,
                    il);
    if (!L->ffn_down.data) {
        /* PowerInfer's files carry ffn_down_t instead: ffn_down is its transpose, described here and built
         * by pack_transposed (rows of n_ff elements, so the type's blocks must divide n_ff) */
        enum pi_type dt = pi_model_down_t_type(b->opts->down_t_type, L->ffn_down_t.type, ff);
        uint64_t rb;
        if (!pi_type_row_bytes(dt, (uint64_t)ff, &rb))
            return fail(b, "blk.%d.ffn_down.weight: cannot build it from ffn_down_t as %s", il, pi_type_name(dt));
        L->ffn_down = (struct pi_weight){dt, d, ff, (size_t)rb, NULL, NULL, NULL, NULL};
        L->down_built = true;
    }
    /* The predictor's rank is whatever fc1 says; fc2 must agree with it. */
    const struct pi_gguf_tensor *fc1 = pi_gguf_find_tensor(b->g, TNAME("fc1"));
    if (fc1) {
        int64_t rank = (int64_t)fc1->ne[1];
        if (rank < 1 || rank > MAX_DIM) return fail(b, "%s: rank %lld out of range", name, (long long)rank);
        if ((rc = bind_matrix(b, name, rank, d, "(rank, n_embd)", false, &L->fc1)) < 0 ||
            (rc = bind_matrix(b, TNAME("fc2"), ff, rank, "(n_ff, rank)", false, &L->fc2)) < 0)
            return rc;
    } else if (pi_gguf_find_tensor(b->g, TNAME("fc2"))) {
        return fail(b, "%s present without blk.%d.fc1.weight", name, il);
    }
#undef TNAME
    return 0;
}

/* Every norm vector present with shape (n_embd), checked before the f32 copies are allocated: the
 * copies take (2 n_layer + 1) n_embd floats, which block_count and embedding_length alone could make
 * tens of GB in a file of a few MB. Checked here, they are bounded by what the file really holds. */
static int check_norms(struct binder *b)
{
    const struct pi_hparams *hp = &b->m->hp;
    const struct pi_gguf_tensor *t;
    char name[96];
    int rc;
    if ((rc = find(b, "output_norm.weight", 0, hp->n_embd, "(n_embd)", false, &t)) < 0) return rc;
    for (int il = 0; il < hp->n_layer; il++) {
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", il);
        if ((rc = find(b, name, 0, hp->n_embd, "(n_embd)", false, &t)) < 0) return rc;
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", il);
        if ((rc = find(b, name, 0, hp->n_embd, "(n_embd)", false, &t)) < 0) return rc;
    }
    return 0;
}

/* tokenizer.ggml.tokens, when present, must name exactly the n_vocab rows of token_embd: a longer
 * list lets the tokenizer emit ids the model has no rows for, a shorter one lets the sampler pick
 * ids the tokenizer cannot print (llama.cpp requires the same equality). */
static int check_vocab(struct binder *b)
{
    enum pi_gguf_vtype type;
    uint64_t n;
    int rc = pi_gguf_get_arr(b->g, "tokenizer.ggml.tokens", &type, &n);
    if (rc == -PI_ERR_NOTFOUND) return 0;
    if (rc < 0) return fail(b, "tokenizer.ggml.tokens is not an array");
    if (n != (uint64_t)b->m->hp.n_vocab)
        return fail(b, "tokenizer.ggml.tokens has %llu entries, token_embd.weight %d rows (n_vocab)",
                    (unsigned long long)n, b->m->hp.n_vocab);
    return 0;
}

static int bind_tensors(struct binder *b)
{
    pi_model_t *m = b->m;
    const struct pi_hparams *hp = &m->hp;
    const struct pi_gguf_tensor *t = pi_gguf_find_tensor(b->g, "token_embd.weight");
    int rc;
    if (!t) return fail(b, "tensor token_embd.weight missing");
    if (t->ne[1] < 1 || t->ne[1] > INT32_MAX)
        return fail(b, "token_embd.weight: vocabulary size %llu out of range", (unsigned long long)t->ne[1]);
    m->hp.n_vocab = (int)t->ne[1];
    if ((rc = check_vocab(b)) < 0 || (rc = check_norms(b)) < 0) return rc;
    size_t n_norms = ((size_t)hp->n_layer * 2 + 1) * (size_t)hp->n_embd;
    m->norms = malloc(n_norms * sizeof(float));
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->norms || !m->layers) return -PI_ERR_NOMEM;
    if ((rc = bind_matrix(b, "token_embd.weight", hp->n_vocab, hp->n_embd, "(n_vocab, n_embd)", false,
                          &m->token_embd)) < 0 ||
        (rc = bind_norm(b, "output_norm.weight", hp->n_embd, m->norms)) < 0 ||
        (rc = bind_matrix(b, "output.weight", hp->n_vocab, hp->n_embd, "(n_vocab, n_embd)", true,
                          &m->output)) < 0)
        return rc;
    m->output_norm = m->norms;
    m->tied = m->output.data == NULL;
    if (m->tied) m->output = m->token_embd;
    for (int il = 0; il < hp->n_layer; il++)
        if ((rc = bind_layer(b, il, m->norms + (size_t)(1 + 2 * il) * hp->n_embd)) < 0) return rc;
    return 0;
}

/* ---------------------------------------------------------------- transposing ffn_down and ffn_down_t */

enum pi_type pi_model_down_t_type(enum pi_type opt, enum pi_type down, int64_t d)
{
    const struct pi_type_info *ti;
    if (opt == PI_TYPE_COUNT) {
        /* f16 holds a quantised weight to 2^-11 of itself: measured lossless next to the 8-bit
         * activation rounding (doc/forward.md, "Accuracy"), where Q8_0 added 25% to an FFN's error */
        if (down == PI_TYPE_F32 || down == PI_TYPE_BF16) return down;
        return PI_TYPE_F16;
    }
    ti = pi_type_get(opt);
    /* a row of d elements must be whole blocks; f16 fits any width */
    if (!ti || d % ti->block_elems != 0) return PI_TYPE_F16;
    return opt;
}

/* One matrix's transposition, in two parallel phases over the pool (see transpose). */
struct pack_task {
    const struct pi_weight *src; /* (R, C) */
    float *tmp;                  /* (C, R) f32 */
    float *rows;                 /* (threads, PACK_ROWS, C) */
    char *dst;                   /* (C) rows of R elements of type dt */
    enum pi_type dt;
    size_t rb;                   /* bytes of one dst row */
};

#define PACK_ROWS 16

/* Phase 1, over blocks of PACK_ROWS rows of src: dequantise the block, then write it as a column
 * block of tmp, so that both sides stay in cache (one row at a time would stride R floats per
 * element). Blocks write disjoint columns. */
static void pack_gather(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct pack_task *t = ctx;
    int64_t R = t->src->rows, C = t->src->cols;
    float *rows = t->rows + (size_t)thread * PACK_ROWS * (size_t)C;
    for (int64_t blk = begin; blk < end; blk++) {
        int64_t r0 = blk * PACK_ROWS, nr = PI_MIN(PACK_ROWS, R - r0);
        for (int64_t r = 0; r < nr; r++)
            pi_dequant_row(t->src->type, pi_weight_row(t->src, r0 + r), rows + r * C, C);
        for (int64_t i = 0; i < C; i++)
            for (int64_t r = 0; r < nr; r++) t->tmp[i * R + r0 + r] = rows[r * C + i];
    }
}

/* Phase 2, over the rows of dst: quantise each. */
static void pack_quantize(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct pack_task *t = ctx;
    int64_t R = t->src->rows;
    (void)thread;
    for (int64_t i = begin; i < end; i++) pi_quantize_row(t->dt, t->tmp + i * R, t->dst + (size_t)i * t->rb, R);
}

/* dst (C, R) of type dt = src (R, C) transposed, through t's f32 buffers (tmp: R C floats; rows:
 * threads x PACK_ROWS x C), on pool (NULL: this thread). Each element is dequantised and quantised
 * alone, so the bits do not depend on the threads. Returns the weight that describes dst (dt's row of
 * R elements checked by the caller). */
static struct pi_weight transpose(pi_pool_t *pool, struct pack_task *t, const struct pi_weight *src, enum pi_type dt,
                                  char *dst)
{
    uint64_t rb = 0;
    (void)pi_type_row_bytes(dt, (uint64_t)src->rows, &rb);
    t->src = src;
    t->dt = dt;
    t->rb = (size_t)rb;
    t->dst = dst;
    pi_pool_for(pool, (src->rows + PACK_ROWS - 1) / PACK_ROWS, 1, pack_gather, t);
    pi_pool_for(pool, src->cols, 64, pack_quantize, t);
    return (struct pi_weight){dt, src->cols, src->rows, (size_t)rb, dst, NULL, NULL, NULL};
}

/* Whether layer L gets ffn_down_t packed from ffn_down: the file has none and packing is on. */
static bool packs_down_t(const struct pi_layer *L, const struct pi_model_opts *o)
{
    return !o->no_down_t && !L->down_t_from_file;
}

/* Whether that packing is grouped (pi_model_opts.down_t_grouped): asked for, and the file's ffn_down is
 * Q4_0 or Q8_0 in whole blocks both ways. */
static bool groups_down_t(const struct pi_layer *L, const struct pi_model_opts *o)
{
    const struct pi_weight *w = &L->ffn_down;
    return o->down_t_grouped && packs_down_t(L, o) && !L->down_built && pi_grouped_row_bytes(w->type, w->rows) > 0 &&
           w->cols % PI_GROUP_ROWS == 0;
}

/* Bytes of layer L's grouped ffn_down_t: the rows (n_ff of them), then the scales (n_ff / 32 rows of d). */
static size_t grouped_bytes(const struct pi_weight *down, size_t *rows_bytes)
{
    *rows_bytes = pi_align_up(pi_grouped_row_bytes(down->type, down->rows) * (size_t)down->cols, 64);
    return *rows_bytes + pi_align_up((size_t)(down->cols / PI_GROUP_ROWS) * (size_t)down->rows * sizeof(uint16_t), 64);
}

struct group_task {
    const struct pi_weight *src;
    void *q;
    uint16_t *s;
};

static void group_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    const struct group_task *t = ctx;
    const int64_t R = t->src->rows;
    (void)thread;
    pi_grouped_from_cols(t->src, begin, end, (char *)t->q + (size_t)begin * PI_GROUP_ROWS * pi_grouped_row_bytes(t->src->type, R),
                         t->s + (size_t)begin * (size_t)R);
}

/* The transposed copies, in one allocation (m->packed), on a temporary pool of opts->n_threads (0:
 * every online CPU): ffn_down (d, n_ff) built from the file's ffn_down_t where the file has no
 * ffn_down (PowerInfer's files; always, whatever no_down_t says: the dense products read it), and
 * ffn_down_t (n_ff, d) packed from ffn_down where the file has no ffn_down_t (unless no_down_t). */
static int pack_transposed(struct binder *b)
{
    pi_model_t *m = b->m;
    const struct pi_model_opts *o = b->opts;
    const struct pi_hparams *hp = &m->hp;
    int64_t d = hp->n_embd, ff = hp->n_ff;
    size_t total = 0, built = 0;
    int n_built = 0;
    enum pi_type built_type = PI_TYPE_F16;
    uint64_t rb;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        if (L->down_built && !o->no_down_build) {
            built += pi_align_up(L->ffn_down.row_bytes * (size_t)d, 64);
            built_type = L->ffn_down.type;
            n_built++;
        }
        if (!packs_down_t(L, o)) continue;
        size_t rows_bytes;
        if (groups_down_t(L, o)) {
            total += grouped_bytes(&L->ffn_down, &rows_bytes);
            continue;
        }
        enum pi_type dt = pi_model_down_t_type(o->down_t_type, L->ffn_down.type, d);
        if (!pi_type_row_bytes(dt, (uint64_t)d, &rb)) return fail(b, "cannot pack ffn_down_t as %s", pi_type_name(dt));
        total += pi_align_up((size_t)rb * (size_t)ff, 64);
    }
    total += built;
    if (total == 0) return 0;
    pi_pool_t *pool = o->n_threads == 1 ? NULL : pi_pool_new(o->n_threads);
    int nt = pi_pool_size(pool);
    struct pack_task t = {0};
    t.tmp = malloc((size_t)d * (size_t)ff * sizeof(float));
    t.rows = malloc((size_t)nt * PACK_ROWS * (size_t)PI_MAX(d, ff) * sizeof(float));
    if (posix_memalign(&m->packed, 64, total) != 0) m->packed = NULL;
    if (!t.tmp || !t.rows || !m->packed) {
        free(t.tmp);
        free(t.rows);
        pi_pool_destroy(&pool);
        return -PI_ERR_NOMEM;
    }
    m->packed_bytes = total;
    char *dst = m->packed;
    for (int il = 0; il < hp->n_layer; il++) {
        struct pi_layer *L = &m->layers[il];
        if (L->down_built && !o->no_down_build) {
            L->ffn_down = transpose(pool, &t, &L->ffn_down_t, L->ffn_down.type, dst);
            dst += pi_align_up(L->ffn_down.row_bytes * (size_t)d, 64);
        }
        if (groups_down_t(L, o)) {
            size_t rows_bytes, bytes = grouped_bytes(&L->ffn_down, &rows_bytes);
            struct group_task gt = {&L->ffn_down, dst, (uint16_t *)(dst + rows_bytes)};
            pi_pool_for(pool, ff / PI_GROUP_ROWS, 4, group_range, &gt);
            L->ffn_down_t = (struct pi_weight){L->ffn_down.type, ff, d, pi_grouped_row_bytes(L->ffn_down.type, d), dst,
                                               NULL, gt.s, NULL};
            dst += bytes;
        } else if (packs_down_t(L, o)) {
            enum pi_type dt = pi_model_down_t_type(o->down_t_type, L->ffn_down.type, d);
            L->ffn_down_t = transpose(pool, &t, &L->ffn_down, dt, dst);
            dst += pi_align_up(L->ffn_down_t.row_bytes * (size_t)ff, 64);
        }
    }
    free(t.tmp);
    free(t.rows);
    pi_pool_destroy(&pool);
    if (n_built > 0)
        pi_info("model: the file has no ffn_down in %d of %d layers (PowerInfer's layout): built from ffn_down_t, "
                "transposed, as %s: %zu bytes (%.1f MiB) of memory outside the file's mapping", n_built, hp->n_layer,
                pi_type_name(built_type), built, built / 1048576.0);
    return 0;
}

/* The dense matrices that pi_model_opts.rows16 repacks, in one order for sizing and packing. */
static int dense_weights(pi_model_t *m, struct pi_weight **out)
{
    int n = 0;
    out[n++] = &m->output;
    for (int il = 0; il < m->hp.n_layer; il++) {
        struct pi_layer *L = &m->layers[il];
        struct pi_weight *w[] = {&L->attn_q, &L->attn_k, &L->attn_v, &L->attn_output, &L->ffn_gate, &L->ffn_up,
                                 &L->ffn_down};
        for (size_t k = 0; k < sizeof w / sizeof w[0]; k++) out[n++] = w[k];
    }
    return n;
}

/* w is packed: the layout takes it and the active kernel variant has a kernel for its type. */
static bool packs(const struct pi_weight *w) { return pi_r16_packable(w) && pi_r16_kernel(w->type); }

/* Copy every packable dense matrix into 16-row groups (kernels/cpu/rows16.h), in one anonymous mapping
 * (transparent huge pages asked for: the kernels stream it), on a temporary pool of n_threads. Nothing
 * is done where the active kernel variant has no packed kernel, and where the mapping cannot be had
 * (a warning: the products then read the file's rows). The file's pages of the packed matrices are
 * not read again by the dense products, so the page cache may drop them. */
static int pack_rows16(struct binder *b, int n_threads)
{
    pi_model_t *m = b->m;
    struct pi_weight **w = malloc((size_t)(1 + 7 * m->hp.n_layer) * sizeof *w);
    if (!w) { /* as a failed mapping below: slower, not wrong */
        pi_warn("model: out of memory for the 16-row packing's list of weights; using the file's rows");
        return 0;
    }
    int n = dense_weights(m, w);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (packs(w[i])) total += pi_r16_group_bytes(w[i]->type, w[i]->cols) * (size_t)(w[i]->rows / PI_R16_ROWS);
    if (total == 0) {
        free(w);
        return 0;
    }
    /* The copy is anonymous memory, as large again as the packed weights (pi_r16_room says why and
     * how much must stay free). */
    uint64_t avail = 0;
    if (!pi_r16_room((uint64_t)total, &avail)) {
        pi_warn("model: the 16-row packed copy of the quantised weights needs %.1f MiB and %.1f MiB are available; "
                "using the file's rows (slower products)", total / 1048576.0, avail / 1048576.0);
        m->rows16_declined = true;
        free(w);
        return 0;
    }
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { /* the file's rows still work: slower, not wrong */
        pi_warn("model: mmap(%zu bytes) for the 16-row packed weights failed: %s; using the file's rows", total,
                strerror(errno));
        m->rows16_declined = true;
        free(w);
        return 0;
    }
#ifdef MADV_HUGEPAGE
    (void)madvise(p, total, MADV_HUGEPAGE); /* a hint: without it the copy is only slower to stream */
#endif
    m->rows16 = p;
    m->rows16_bytes = total;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pi_pool_t *pool = n_threads == 1 ? NULL : pi_pool_new(n_threads);
    uint8_t *dst = p;
    for (int i = 0; i < n; i++) {
        if (!packs(w[i])) continue;
        pi_r16_pack(pool, w[i], dst);
        w[i]->rows16 = dst;
        dst += pi_r16_group_bytes(w[i]->type, w[i]->cols) * (size_t)(w[i]->rows / PI_R16_ROWS);
    }
    pi_pool_destroy(&pool);
    free(w);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pi_debug("model: %zu bytes of quantised weights packed in 16-row groups in %.3f s", total,
             (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    return 0;
}

/* ---------------------------------------------------------------- public */

int pi_model_load(const pi_gguf_t *g, const struct pi_model_opts *opts, pi_model_t **out, char *err,
                  size_t errlen)
{
    struct pi_model_opts def;
    struct binder b = {.g = g, .err = err, .errlen = errlen};
    int rc;
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    if (!opts) {
        pi_model_opts_default(&def);
        opts = &def;
    }
    b.opts = opts;
    b.m = calloc(1, sizeof *b.m);
    if (!b.m) return -PI_ERR_NOMEM;
    b.m->gguf = g;
    b.m->down_t_grouped = opts->down_t_grouped;
    if ((rc = read_hparams(&b, opts->act)) < 0 || (rc = bind_tensors(&b)) < 0) goto err;
    char line[512] = "";
    if ((rc = pi_tensor_check_file(g, opts->check, line, sizeof line)) == -PI_ERR_FORMAT) {
        rc = fail(&b, "%s: the file is damaged", line);
        goto err;
    }
    if (rc < 0) goto err; /* a check mode outside the enum: the caller's bug */
    if ((rc = pack_transposed(&b)) < 0) goto err;
    if (opts->rows16 && (rc = pack_rows16(&b, opts->n_threads)) < 0) goto err;
    *out = b.m;
    return 0;
err:
    if (rc == -PI_ERR_NOMEM) {
        pi_error("model: out of memory binding the model");
        if (err && errlen) snprintf(err, errlen, "out of memory");
    }
    pi_model_destroy(&b.m);
    return rc;
}

int pi_model_open(const char *path, const struct pi_model_opts *opts, pi_model_t **out, char *err,
                  size_t errlen)
{
    pi_gguf_t *g = NULL;
    *out = NULL;
    int rc = pi_gguf_open(path, &g, err, errlen);
    if (rc < 0) {
        pi_error("model: cannot open %s: %s", path, err && errlen ? err : pi_err_str(rc));
        return rc;
    }
    rc = pi_model_load(g, opts, out, err, errlen);
    if (rc < 0) {
        pi_gguf_destroy(&g);
        return rc;
    }
    (*out)->owned_gguf = g;
    return 0;
}

void pi_model_destroy(pi_model_t **pm)
{
    pi_model_t *m = pm ? *pm : NULL;
    if (!m) return;
    free(m->layers);
    free(m->norms);
    free(m->packed);
    if (m->rows16) munmap(m->rows16, m->rows16_bytes);
    pi_gguf_destroy(&m->owned_gguf);
    free(m);
    *pm = NULL;
}

static uint64_t weight_bytes(const struct pi_weight *w)
{
    return w->data ? (uint64_t)w->row_bytes * (uint64_t)w->rows : 0;
}

void pi_model_log_down_t(const pi_model_t *m)
{
    if (!m->down_t_grouped || !m->layers[0].ffn_down_t.data) return;
    int n = 0;
    size_t bytes = 0, rows;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        if (!L->ffn_down_t.gscale) continue;
        n++;
        bytes += grouped_bytes(&L->ffn_down, &rows);
    }
    pi_info("[tune] down_t = grouped: down rows grouped in %d of %d layers (the file's Q4_0/Q8_0 quants and "
            "scales), %.1f MiB%s", n, m->hp.n_layer, bytes / 1048576.0,
            n < m->hp.n_layer ? "; the others keep the file's own ffn_down_t, or their ffn_down is not Q4_0 or Q8_0 "
                                "in whole blocks: f16 rows, or the f32/bf16 file's own type"
                              : "");
}

uint64_t pi_model_decode_bytes(const pi_model_t *m)
{
    uint64_t sum = weight_bytes(&m->output);
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        sum += weight_bytes(&L->attn_q) + weight_bytes(&L->attn_k) + weight_bytes(&L->attn_v) +
               weight_bytes(&L->attn_output) + weight_bytes(&L->ffn_gate) + weight_bytes(&L->ffn_up) +
               weight_bytes(&L->ffn_down);
    }
    return sum;
}
