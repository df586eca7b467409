/*
 * lib/model.c - binds a llama-family model from a validated GGUF file (see lib/model.h).
 *
 * Order of work, each step failing with one message that names what is wrong:
 *   1. hyper-parameters from `<arch>.*` keys, checked for consistency and sane bounds;
 *   2. every tensor by name, with its shape checked against the hyper-parameters and its type against
 *      the types the CPU kernels implement;
 *   3. the FFN activation (option, then `pinfer.ffn_activation`, then the format default);
 *   4. the norm vectors copied to f32, and ffn_down packed transposed (one neuron per row) unless the
 *      file brings PowerInfer's ffn_down_t.
 * The GGUF reader has already checked that every tensor's bytes lie inside the file.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/common.h"
#include "lib/log.h"
#include "lib/model.h"
#include "kernels/cpu/quant.h"

/* Bounds that keep every product below in range and reject absurd files early. */
#define MAX_LAYERS 4096
#define MAX_DIM (1 << 20)
#define MAX_HEADS 4096

struct binder {
    const pi_gguf_t *g;
    pi_model_t *m;
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

const char *pi_ffn_act_name(enum pi_ffn_act a)
{
    switch (a) {
    case PI_FFN_ACT_SILU: return "silu";
    case PI_FFN_ACT_RELU: return "relu";
    case PI_FFN_ACT_DRELU: return "drelu";
    default: return "default";
    }
}

int pi_ffn_act_parse(const char *s, enum pi_ffn_act *out)
{
    static const enum pi_ffn_act acts[] = {PI_FFN_ACT_SILU, PI_FFN_ACT_RELU, PI_FFN_ACT_DRELU};
    for (size_t i = 0; s && i < PI_ARRAY_LEN(acts); i++) {
        if (strcasecmp(s, pi_ffn_act_name(acts[i])) == 0) {
            *out = acts[i];
            return 0;
        }
    }
    return -PI_ERR_INVAL;
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
    if ((rc = get_count(b, "attention.key_length", hp->n_embd / hp->n_head, 1, MAX_DIM, &key_len)) < 0 ||
        (rc = get_count(b, "attention.value_length", key_len, 1, MAX_DIM, &val_len)) < 0)
        return rc;
    if (val_len != key_len)
        return fail(b, "%s.attention.value_length %d differs from key_length %d", hp->arch, val_len, key_len);
    if ((int64_t)key_len * hp->n_head > MAX_DIM)
        return fail(b, "attention width %d x %d heads too large", key_len, hp->n_head);
    hp->head_dim = key_len;
    if ((rc = get_count(b, "rope.dimension_count", hp->head_dim, 2, hp->head_dim, &hp->n_rot)) < 0) return rc;
    if (hp->n_rot % 2 != 0) return fail(b, "%s.rope.dimension_count %d is odd", hp->arch, hp->n_rot);
    if ((rc = get_float(b, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps)) < 0 ||
        (rc = get_float(b, "rope.freq_base", 10000.0f, &hp->rope_base)) < 0)
        return rc;
    if (!(hp->rms_eps >= 0.0f && hp->rms_eps < 1.0f))
        return fail(b, "%s.attention.layer_norm_rms_epsilon %g out of range", hp->arch, (double)hp->rms_eps);
    if (!(hp->rope_base > 1.0f && hp->rope_base < 1e12f))
        return fail(b, "%s.rope.freq_base %g out of range", hp->arch, (double)hp->rope_base);
    rc = pi_gguf_get_f32(b->g, "powerinfer.sparse_threshold", &hp->sparse_threshold);
    if (rc < 0 && rc != -PI_ERR_NOTFOUND) return fail(b, "powerinfer.sparse_threshold is not a float");
    hp->has_sparse_threshold = rc == 0;
    return read_activation(b, act);
}

/* ---------------------------------------------------------------- tensors */

/* Matrix types the CPU kernels (kernels/cpu/quant.h) implement. */
static bool matrix_type_ok(uint32_t t)
{
    switch (t) {
    case PI_TYPE_F32: case PI_TYPE_F16: case PI_TYPE_BF16:
    case PI_TYPE_Q4_0: case PI_TYPE_Q4_1: case PI_TYPE_Q5_0: case PI_TYPE_Q5_1: case PI_TYPE_Q8_0:
    case PI_TYPE_Q2_K: case PI_TYPE_Q3_K: case PI_TYPE_Q4_K: case PI_TYPE_Q5_K: case PI_TYPE_Q6_K:
        return true;
    default:
        return false;
    }
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
    /* printed as (rows, cols) = (ne1, ne0), the convention of lib/model.h */
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
    if (!matrix_type_ok(t->type)) return fail(b, "%s: type %s is not supported", name, pi_type_name(t->type));
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
        (rc = bind_matrix(b, TNAME("ffn_down"), d, ff, "(n_embd, n_ff)", false, &L->ffn_down)) < 0 ||
        (rc = bind_matrix(b, TNAME("ffn_down_t"), ff, d, "(n_ff, n_embd)", true, &L->ffn_down_t)) < 0)
        return rc;
    L->attn_norm = norms;
    L->ffn_norm = norms + d;
    L->down_t_from_file = L->ffn_down_t.data != NULL;
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

/* ---------------------------------------------------------------- packing ffn_down_t */

static enum pi_type pick_down_t_type(enum pi_type opt, enum pi_type down, int64_t d)
{
    const struct pi_type_info *ti;
    if (opt == PI_TYPE_COUNT) {
        if (down == PI_TYPE_F32 || down == PI_TYPE_F16 || down == PI_TYPE_BF16) return down;
        opt = PI_TYPE_Q8_0;
    }
    ti = pi_type_get(opt);
    /* a row of d elements must be whole blocks; f16 fits any width */
    if (!ti || d % ti->block_elems != 0) return PI_TYPE_F16;
    return opt;
}

/* Transpose every layer's ffn_down (d, n_ff) into ffn_down_t (n_ff, d) of type dt, through an f32
 * buffer: dequantise each row of down, scatter it into columns, quantise each neuron's row. */
static int pack_down_t(struct binder *b, enum pi_type opt)
{
    pi_model_t *m = b->m;
    const struct pi_hparams *hp = &m->hp;
    int64_t d = hp->n_embd, ff = hp->n_ff;
    size_t per_layer = 0, total = 0;
    uint64_t rb;
    enum pi_type dt = PI_TYPE_F32;
    for (int il = 0; il < hp->n_layer; il++) {
        struct pi_layer *L = &m->layers[il];
        if (L->down_t_from_file) continue;
        dt = pick_down_t_type(opt, L->ffn_down.type, d);
        if (!pi_type_row_bytes(dt, (uint64_t)d, &rb)) return fail(b, "cannot pack ffn_down_t as %s", pi_type_name(dt));
        per_layer = (size_t)rb * (size_t)ff;
        total += pi_align_up(per_layer, 64);
    }
    if (total == 0) return 0;
    float *tmp = malloc((size_t)d * (size_t)ff * sizeof(float));
    float *row = malloc((size_t)ff * sizeof(float));
    if (posix_memalign(&m->packed, 64, total) != 0) m->packed = NULL;
    if (!tmp || !row || !m->packed) {
        free(tmp);
        free(row);
        return -PI_ERR_NOMEM;
    }
    m->packed_bytes = total;
    char *dst = m->packed;
    for (int il = 0; il < hp->n_layer; il++) {
        struct pi_layer *L = &m->layers[il];
        if (L->down_t_from_file) continue;
        dt = pick_down_t_type(opt, L->ffn_down.type, d);
        (void)pi_type_row_bytes(dt, (uint64_t)d, &rb);
        for (int64_t r = 0; r < d; r++) {
            pi_dequant_row(L->ffn_down.type, pi_weight_row(&L->ffn_down, r), row, ff);
            for (int64_t i = 0; i < ff; i++) tmp[i * d + r] = row[i];
        }
        for (int64_t i = 0; i < ff; i++) pi_quantize_row(dt, tmp + i * d, dst + (size_t)i * rb, d);
        L->ffn_down_t = (struct pi_weight){dt, ff, d, (size_t)rb, dst};
        dst += pi_align_up((size_t)rb * (size_t)ff, 64);
    }
    free(tmp);
    free(row);
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
    b.m = calloc(1, sizeof *b.m);
    if (!b.m) return -PI_ERR_NOMEM;
    b.m->gguf = g;
    if ((rc = read_hparams(&b, opts->act)) < 0 || (rc = bind_tensors(&b)) < 0) goto err;
    if (!opts->no_down_t && (rc = pack_down_t(&b, opts->down_t_type)) < 0) goto err;
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
    pi_gguf_destroy(&m->owned_gguf);
    free(m);
    *pm = NULL;
}

static uint64_t weight_bytes(const struct pi_weight *w)
{
    return w->data ? (uint64_t)w->row_bytes * (uint64_t)w->rows : 0;
}

uint64_t pi_model_decode_bytes(const pi_model_t *m)
{
    uint64_t sum = weight_bytes(&m->output);
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        sum += weight_bytes(&L->attn_q) + weight_bytes(&L->attn_k) + weight_bytes(&L->attn_v) +
               weight_bytes(&L->attn_output) + weight_bytes(&L->ffn_gate) + weight_bytes(&L->ffn_up) +
               weight_bytes(&L->ffn_down_t);
    }
    return sum;
}
