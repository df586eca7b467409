/*
 * model/sidecar.c - the per-model sidecar MODEL.pinfer.gguf (layout and contracts in model/sidecar.h):
 * the model identity hash, validated loading, and saving that keeps what later tools added.
 *
 * Loading checks, in order: the file is a valid GGUF (pi_gguf_open), it says it is a sidecar of a
 * version this build reads, it was made for this model (size, hash, then shape), and every tensor it
 * knows has the type, shape and values the layout says (frequencies finite in [0, 1], histogram shares
 * finite and >= 0). The first failed check is the one message the caller prints.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "lib/log.h"
#include "model/sidecar.h"

#define ARCH "pinfer.sidecar"

/* ---------------------------------------------------------------- identity */

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * FNV_PRIME;
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
    return fnv(h, b, 8);
}

void pi_sidecar_identity(const pi_gguf_t *g, struct pi_model_identity *id)
{
    uint64_t h = FNV_OFFSET, nt = pi_gguf_n_tensors(g);
    for (uint64_t i = 0; i < nt; i++) {
        const struct pi_gguf_tensor *t = pi_gguf_tensor(g, i);
        h = fnv(h, t->name.ptr, (size_t)t->name.len);
        h = fnv_u64(h, ((uint64_t)t->n_dims << 32) | t->type);
        for (int k = 0; k < PI_GGUF_MAX_DIMS; k++) h = fnv_u64(h, t->ne[k]);
        h = fnv_u64(h, t->n_bytes);
        uint64_t len = PI_MIN(t->n_bytes, (uint64_t)PI_SIDECAR_ID_SAMPLE_BYTES), span = t->n_bytes - len;
        for (uint64_t k = 0; k < PI_SIDECAR_ID_SAMPLES && len > 0; k++) {
            /* floor(k * span / (SAMPLES - 1)) without forming k * span */
            uint64_t q = span / (PI_SIDECAR_ID_SAMPLES - 1), r = span % (PI_SIDECAR_ID_SAMPLES - 1);
            uint64_t off = q * k + r * k / (PI_SIDECAR_ID_SAMPLES - 1);
            h = fnv(h, (const char *)t->data + off, (size_t)len);
        }
    }
    id->size = pi_gguf_file_size(g);
    id->hash = h;
}

/* ---------------------------------------------------------------- paths and objects */

int pi_sidecar_path(const char *model_path, char *out, size_t len)
{
    size_t n = strlen(model_path);
    if (n >= 5 && strcmp(model_path + n - 5, ".gguf") == 0) n -= 5;
    int w = snprintf(out, len, "%.*s.pinfer.gguf", (int)n, model_path);
    return w < 0 || (size_t)w >= len ? -PI_ERR_RANGE : 0;
}

struct pi_sidecar *pi_sidecar_new(const pi_model_t *m, bool with_freq, bool with_hist)
{
    struct pi_sidecar *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->n_layer = m->hp.n_layer;
    s->n_ff = m->hp.n_ff;
    s->n_embd = m->hp.n_embd;
    if (with_freq) s->act_freq = calloc((size_t)s->n_layer * (size_t)s->n_ff, sizeof(float));
    if (with_hist) {
        s->n_hist = PI_SIDECAR_HIST_BINS;
        s->act_hist = calloc((size_t)s->n_layer * PI_SIDECAR_HIST_BINS, sizeof(float));
    }
    if ((with_freq && !s->act_freq) || (with_hist && !s->act_hist)) pi_sidecar_destroy(&s);
    return s;
}

void pi_sidecar_pred_free(struct pi_sidecar_pred *p)
{
    if (!p) return;
    free(p->fc1);
    free(p->fc2);
    memset(p, 0, sizeof *p);
}

void pi_sidecar_destroy(struct pi_sidecar **ps)
{
    if (!ps || !*ps) return;
    for (int il = 0; (*ps)->pred && il < (*ps)->n_layer; il++) pi_sidecar_pred_free(&(*ps)->pred[il]);
    free((*ps)->pred);
    free((*ps)->gate_min);
    free((*ps)->gate_sparsity);
    free((*ps)->act_freq);
    free((*ps)->act_hist);
    free(*ps);
    *ps = NULL;
}

int pi_sidecar_hist_bin(float a)
{
    if (!(a >= ldexpf(1.0f, (int)PI_SIDECAR_HIST_LOG2_MIN))) return 0; /* zeros, tiny values, NaN */
    float b = 1.0f + floorf((log2f(a) - PI_SIDECAR_HIST_LOG2_MIN) / PI_SIDECAR_HIST_LOG2_STEP);
    return b >= PI_SIDECAR_HIST_BINS - 1 ? PI_SIDECAR_HIST_BINS - 1 : (int)b;
}

/* ---------------------------------------------------------------- loading */

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (err && len) {
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return -PI_ERR_FORMAT;
}

static int need_uint(const pi_gguf_t *g, const char *key, uint64_t *v, char *err, size_t len)
{
    int rc = pi_gguf_get_uint(g, key, v);
    if (rc == -PI_ERR_NOTFOUND) return fail(err, len, "key %s is missing", key);
    if (rc < 0) return fail(err, len, "key %s is not an unsigned integer", key);
    return 0;
}

/* Read the per-layer tensors NAME_FMT of n F32 elements into dst (n_layer, n); every value checked
 * against [lo, hi] (hi < 0: no upper bound). Returns 1 when all layers have it, 0 when none, or
 * -PI_ERR_FORMAT. */
static int read_layers(const pi_gguf_t *g, const char *what, int n_layer, int n, float lo, float hi, float **dst,
                       char *err, size_t len)
{
    int have = 0;
    char name[64];
    for (int il = 0; il < n_layer; il++) {
        snprintf(name, sizeof name, "blk.%d.%s", il, what);
        have += pi_gguf_find_tensor(g, name) != NULL;
    }
    if (have == 0) return 0;
    if (have != n_layer) return fail(err, len, "%s is present for %d of %d layers", what, have, n_layer);
    *dst = malloc((size_t)n_layer * (size_t)n * sizeof(float));
    if (!*dst) return -PI_ERR_NOMEM;
    for (int il = 0; il < n_layer; il++) {
        snprintf(name, sizeof name, "blk.%d.%s", il, what);
        const struct pi_gguf_tensor *t = pi_gguf_find_tensor(g, name);
        if (t->type != PI_TYPE_F32 || t->n_dims != 1 || t->ne[0] != (uint64_t)n)
            return fail(err, len, "%s: %s[%llu] (%u dims), expected f32[%d]", name, pi_type_name(t->type),
                        (unsigned long long)t->ne[0], t->n_dims, n);
        float *row = *dst + (size_t)il * (size_t)n;
        memcpy(row, t->data, (size_t)n * sizeof(float));
        for (int i = 0; i < n; i++)
            if (!isfinite(row[i]) || row[i] < lo || (hi >= 0 && row[i] > hi))
                return fail(err, len, "%s[%d] = %g is outside [%g, %g]", name, i, row[i], lo, hi >= 0 ? hi : INFINITY);
    }
    return 1;
}

/* The 1-D F32 tensor name of n values into dst, each finite and, when lo <= hi, in [lo, hi]. */
static int read_small(const pi_gguf_t *g, const char *name, int n, float lo, float hi, float *dst, char *err,
                      size_t len)
{
    const struct pi_gguf_tensor *t = pi_gguf_find_tensor(g, name);
    if (!t) return fail(err, len, "%s is missing", name);
    if (t->type != PI_TYPE_F32 || t->n_dims != 1 || t->ne[0] != (uint64_t)n)
        return fail(err, len, "%s: %s[%llu] (%u dims), expected f32[%d]", name, pi_type_name(t->type),
                    (unsigned long long)t->ne[0], t->n_dims, n);
    memcpy(dst, t->data, (size_t)n * sizeof(float));
    for (int i = 0; i < n; i++)
        if (!isfinite(dst[i]) || (lo <= hi && (dst[i] < lo || dst[i] > hi)))
            return fail(err, len, "%s[%d] = %g is not finite%s", name, i, dst[i], lo <= hi ? " in [0, 1]" : "");
    return 0;
}

/* The fixed-size array key of n elements of type vt into dst. */
static int read_arr(const pi_gguf_t *g, const char *key, enum pi_gguf_vtype vt, uint64_t n, void *dst, char *err,
                    size_t len)
{
    enum pi_gguf_vtype t;
    uint64_t have;
    const void *p;
    if (pi_gguf_get_arr(g, key, &t, &have) < 0 || t != vt || have != n || !(p = pi_gguf_arr_data(g, key)))
        return fail(err, len, "key %s is not an array of %llu %s", key, (unsigned long long)n, pi_gguf_vtype_name(vt));
    memcpy(dst, p, (size_t)n * pi_gguf_vtype_size(vt));
    return 0;
}

/* Layer il's predictor tensors into p (weights copied). */
static int read_pred_layer(const pi_gguf_t *g, const struct pi_sidecar *s, int il, struct pi_sidecar_pred *p,
                           bool weights, char *err, size_t len)
{
    char n1[64], n2[64], name[64];
    snprintf(n1, sizeof n1, "blk.%d.fc1.weight", il);
    snprintf(n2, sizeof n2, "blk.%d.fc2.weight", il);
    const struct pi_gguf_tensor *a = pi_gguf_find_tensor(g, n1), *b = pi_gguf_find_tensor(g, n2);
    if (!a || !b) return fail(err, len, "%s is missing", a ? n2 : n1);
    if (a->type != PI_TYPE_F32 && a->type != PI_TYPE_F16 && a->type != PI_TYPE_Q8_0)
        return fail(err, len, "%s: type %s; predictors are f32, f16 or q8_0", n1, pi_type_name(a->type));
    uint64_t r = a->ne[1];
    if (a->n_dims != 2 || a->ne[0] != (uint64_t)s->n_embd || r < 1 || r > PI_SIDECAR_PRED_RANK_MAX)
        return fail(err, len, "%s: shape [%llu, %llu] (%u dims), expected [%lld, rank 1..%d]", n1,
                    (unsigned long long)a->ne[0], (unsigned long long)a->ne[1], a->n_dims, (long long)s->n_embd,
                    PI_SIDECAR_PRED_RANK_MAX);
    if (b->type != a->type || b->n_dims != 2 || b->ne[0] != r || b->ne[1] != (uint64_t)s->n_ff)
        return fail(err, len, "%s: %s [%llu, %llu], expected %s [%llu, %d]", n2, pi_type_name(b->type),
                    (unsigned long long)b->ne[0], (unsigned long long)b->ne[1], pi_type_name(a->type),
                    (unsigned long long)r, s->n_ff);
    p->rank = (int64_t)r;
    p->type = (enum pi_type)a->type;
    if (weights) {
        if (!(p->fc1 = malloc(a->n_bytes)) || !(p->fc2 = malloc(b->n_bytes))) return -PI_ERR_NOMEM;
        memcpy(p->fc1, a->data, a->n_bytes);
        memcpy(p->fc2, b->data, b->n_bytes);
    }
    int rc;
    snprintf(name, sizeof name, "blk.%d.fc_threshold", il);
    if ((rc = read_small(g, name, 2, 1.0f, 0.0f, p->threshold, err, len)) < 0) return rc;
    snprintf(name, sizeof name, "blk.%d.fc_recall", il);
    if ((rc = read_small(g, name, 2, 0.0f, 1.0f, p->recall, err, len)) < 0) return rc;
    snprintf(name, sizeof name, "blk.%d.fc_active", il);
    return read_small(g, name, 3, 0.0f, 1.0f, p->active, err, len);
}

/* The predictors, when the file has any: every layer's, and the keys of their version; the weights
 * copied only when weights. */
static int read_pred(const pi_gguf_t *g, struct pi_sidecar *s, bool weights, char *err, size_t len)
{
    uint64_t v;
    int rc;
    bool any = pi_gguf_find_key(g, "pinfer.predictor.version") >= 0;
    for (int il = 0; !any && il < s->n_layer; il++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.fc1.weight", il);
        any = pi_gguf_find_tensor(g, name) != NULL;
    }
    if (!any) return 0;
    if ((rc = need_uint(g, "pinfer.predictor.version", &v, err, len)) < 0) return rc;
    if (v != PI_SIDECAR_PRED_VERSION)
        return fail(err, len, "predictor version %llu; this build reads version %d", (unsigned long long)v,
                    PI_SIDECAR_PRED_VERSION);
    if ((rc = read_arr(g, "pinfer.predictor.recall_target", PI_GGUF_F32, 2, s->pred_target, err, len)) < 0 ||
        (rc = read_arr(g, "pinfer.predictor.samples", PI_GGUF_U64, 2, s->pred_samples, err, len)) < 0 ||
        (rc = need_uint(g, "pinfer.predictor.seed", &s->pred_seed, err, len)) < 0)
        return rc;
    for (int k = 0; k < 2; k++)
        if (!(s->pred_target[k] > 0.0f && s->pred_target[k] <= 1.0f))
            return fail(err, len, "pinfer.predictor.recall_target[%d] = %g is outside (0, 1]", k, s->pred_target[k]);
    if (!(s->pred = calloc((size_t)s->n_layer, sizeof *s->pred))) return -PI_ERR_NOMEM;
    for (int il = 0; il < s->n_layer; il++)
        if ((rc = read_pred_layer(g, s, il, &s->pred[il], weights, err, len)) < 0) return rc;
    return 0;
}

/* The activation thresholds, when the file has any: every layer's, and their keys. */
static int read_thresholds(const pi_gguf_t *g, struct pi_sidecar *s, char *err, size_t len)
{
    uint64_t v;
    int rc;
    if (pi_gguf_find_key(g, "pinfer.threshold.version") < 0) {
        if (pi_gguf_find_tensor(g, "blk.0.gate_threshold"))
            return fail(err, len, "gate thresholds without pinfer.threshold.version");
        return 0;
    }
    if ((rc = need_uint(g, "pinfer.threshold.version", &v, err, len)) < 0) return rc;
    if (v != PI_SIDECAR_THRESHOLD_VERSION)
        return fail(err, len, "threshold version %llu; this build reads version %d", (unsigned long long)v,
                    PI_SIDECAR_THRESHOLD_VERSION);
    if ((rc = read_arr(g, "pinfer.threshold.kld_target", PI_GGUF_F32, 2, s->thr_kld_target, err, len)) < 0 ||
        (rc = read_arr(g, "pinfer.threshold.kld", PI_GGUF_F32, 2, s->thr_kld, err, len)) < 0 ||
        (rc = read_arr(g, "pinfer.threshold.sparsity", PI_GGUF_F32, 2, s->thr_sparsity, err, len)) < 0 ||
        (rc = read_arr(g, "pinfer.threshold.tokens", PI_GGUF_U64, 2, s->thr_tokens, err, len)) < 0)
        return rc;
    for (int k = 0; k < 2; k++) {
        if (!(s->thr_kld_target[k] >= 0.0f && s->thr_kld_target[k] <= 100.0f) ||
            !(s->thr_kld[k] >= 0.0f && s->thr_kld[k] <= 100.0f))
            return fail(err, len, "pinfer.threshold.kld_target / kld [%d] is not in [0, 100]", k);
        if (!(s->thr_sparsity[k] >= 0.0f && s->thr_sparsity[k] <= 1.0f))
            return fail(err, len, "pinfer.threshold.sparsity[%d] = %g is outside [0, 1]", k,
                        (double)s->thr_sparsity[k]);
    }
    if ((rc = read_layers(g, "gate_threshold", s->n_layer, 2 * s->n_ff, 0.0f, -1.0f, &s->gate_min, err, len)) < 0 ||
        (rc == 1 && (rc = read_layers(g, "gate_sparsity", s->n_layer, 2, 0.0f, 1.0f, &s->gate_sparsity, err, len)) < 0))
        return rc;
    if (rc == 0)
        return fail(err, len, "pinfer.threshold.version without blk.N.gate_threshold and gate_sparsity tensors");
    return 0;
}

/* Everything after the file opened: the checks of the header comment, in order. */
static int load_checked(const pi_gguf_t *g, const pi_model_t *m, struct pi_sidecar *s, bool weights, char *err,
                        size_t len)
{
    struct pi_gguf_str arch;
    uint64_t v, size, hash, nl, nff;
    int rc;
    if (pi_gguf_get_str(g, "general.architecture", &arch) < 0 || !pi_gguf_str_eq(arch, ARCH))
        return fail(err, len, "not a pinfer sidecar (general.architecture is not \"%s\")", ARCH);
    if ((rc = need_uint(g, "pinfer.sidecar.version", &v, err, len)) < 0) return rc;
    if (v != PI_SIDECAR_VERSION)
        return fail(err, len, "sidecar version %llu; this build reads version %d", (unsigned long long)v,
                    PI_SIDECAR_VERSION);
    if ((rc = need_uint(g, "pinfer.model.size", &size, err, len)) < 0 ||
        (rc = need_uint(g, "pinfer.model.hash", &hash, err, len)) < 0 ||
        (rc = need_uint(g, "pinfer.model.n_layer", &nl, err, len)) < 0 ||
        (rc = need_uint(g, "pinfer.model.n_ff", &nff, err, len)) < 0 ||
        (rc = need_uint(g, "pinfer.profile.tokens", &s->tokens, err, len)) < 0)
        return rc;
    struct pi_model_identity id;
    pi_sidecar_identity(m->gguf, &id);
    if (size != id.size || hash != id.hash)
        return fail(err, len,
                    "made for another model (model size %llu, hash %016llx; this model: size %llu, hash %016llx)",
                    (unsigned long long)size, (unsigned long long)hash, (unsigned long long)id.size,
                    (unsigned long long)id.hash);
    if (nl != (uint64_t)m->hp.n_layer || nff != (uint64_t)m->hp.n_ff)
        return fail(err, len, "shape %llu layers x %llu neurons; the model has %d x %d", (unsigned long long)nl,
                    (unsigned long long)nff, m->hp.n_layer, m->hp.n_ff);
    float hmin, hstep;
    bool has_hist = pi_gguf_find_tensor(g, "blk.0.act_hist") != NULL;
    if (has_hist && (pi_gguf_get_f32(g, "pinfer.profile.hist_log2_min", &hmin) < 0 ||
                     pi_gguf_get_f32(g, "pinfer.profile.hist_log2_step", &hstep) < 0 ||
                     hmin != PI_SIDECAR_HIST_LOG2_MIN || hstep != PI_SIDECAR_HIST_LOG2_STEP))
        return fail(err, len, "act_hist bins are not version %d's (pinfer.profile.hist_log2_min %g, step %g)",
                    PI_SIDECAR_VERSION, (double)PI_SIDECAR_HIST_LOG2_MIN, (double)PI_SIDECAR_HIST_LOG2_STEP);
    if ((rc = read_layers(g, "act_freq", s->n_layer, s->n_ff, 0.0f, 1.0f, &s->act_freq, err, len)) < 0 ||
        (rc = read_layers(g, "act_hist", s->n_layer, PI_SIDECAR_HIST_BINS, 0.0f, 1.0f, &s->act_hist, err, len)) < 0)
        return rc;
    if (s->act_hist) s->n_hist = PI_SIDECAR_HIST_BINS;
    if ((rc = read_thresholds(g, s, err, len)) < 0) return rc;
    return read_pred(g, s, weights, err, len);
}

static int load(const char *path, const pi_model_t *m, bool weights, struct pi_sidecar **out, char *err, size_t errlen)
{
    pi_gguf_t *g = NULL;
    *out = NULL;
    int rc = pi_gguf_open(path, &g, err, errlen);
    if (rc < 0) return rc == -PI_ERR_UNSUPPORTED ? -PI_ERR_FORMAT : rc;
    struct pi_sidecar *s = calloc(1, sizeof *s);
    if (!s) {
        pi_gguf_destroy(&g);
        return -PI_ERR_NOMEM;
    }
    s->n_layer = m->hp.n_layer;
    s->n_ff = m->hp.n_ff;
    s->n_embd = m->hp.n_embd;
    rc = load_checked(g, m, s, weights, err, errlen);
    pi_gguf_destroy(&g);
    if (rc < 0) {
        if (rc == -PI_ERR_NOMEM && err && errlen) snprintf(err, errlen, "out of memory");
        pi_sidecar_destroy(&s);
        return rc;
    }
    *out = s;
    return 0;
}

int pi_sidecar_load(const char *path, const pi_model_t *m, struct pi_sidecar **out, char *err, size_t errlen)
{
    return load(path, m, false, out, err, errlen);
}

int pi_sidecar_load_pred(const char *path, const pi_model_t *m, struct pi_sidecar **out, char *err, size_t errlen)
{
    return load(path, m, true, out, err, errlen);
}

/* ---------------------------------------------------------------- saving */

/* Whether key or tensor name is one this version writes itself (never carried over). */
static bool own_key(struct pi_gguf_str k)
{
    static const char *const own[] = {
        "general.architecture",  "pinfer.sidecar.version",       "pinfer.model.size",
        "pinfer.model.hash",     "pinfer.model.n_layer",         "pinfer.model.n_ff",
        "pinfer.profile.tokens", "pinfer.profile.hist_log2_min", "pinfer.profile.hist_log2_step",
    };
    for (size_t i = 0; i < PI_ARRAY_LEN(own); i++)
        if (pi_gguf_str_eq(k, own[i])) return true;
    return false;
}

static bool has_prefix(struct pi_gguf_str k, const char *p)
{
    size_t l = strlen(p);
    return k.len >= l && memcmp(k.ptr, p, l) == 0;
}

/* Whether tensor n is one s writes itself: the statistics always, the predictors and the thresholds
 * when s has them. */
static bool own_tensor(struct pi_gguf_str n, bool pred, bool thr)
{
    enum { STATS, PRED, THR };
    static const struct {
        const char *sfx;
        int group;
    } own[] = {{".act_freq", STATS},  {".act_hist", STATS},     {".fc1.weight", PRED},
               {".fc2.weight", PRED}, {".fc_threshold", PRED},  {".fc_recall", PRED},
               {".fc_active", PRED},  {".gate_threshold", THR}, {".gate_sparsity", THR}};
    for (size_t i = 0; i < PI_ARRAY_LEN(own); i++) {
        size_t l = strlen(own[i].sfx);
        bool mine = own[i].group == STATS || (own[i].group == PRED && pred) || (own[i].group == THR && thr);
        if (mine && n.len > l && memcmp(n.ptr + n.len - l, own[i].sfx, l) == 0) return true;
    }
    return false;
}

/* Copy metadata entry i of g into w (any type the reader accepts). */
static int copy_kv(pi_gguf_writer_t *w, const pi_gguf_t *g, uint64_t i, const char *key)
{
    enum pi_gguf_vtype t = pi_gguf_kv_type(g, i), et;
    uint64_t n, u;
    int64_t s;
    double f;
    bool b;
    struct pi_gguf_str str;
    switch (t) {
    case PI_GGUF_STRING:
        return pi_gguf_kv_str(g, i, &str) < 0 ? -PI_ERR_FORMAT : pi_gguf_writer_set_strn(w, key, str.ptr, str.len);
    case PI_GGUF_BOOL: return pi_gguf_kv_bool(g, i, &b) < 0 ? -PI_ERR_FORMAT : pi_gguf_writer_set_bool(w, key, b);
    case PI_GGUF_F32: {
        float x;
        if (pi_gguf_kv_f64(g, i, &f) < 0) return -PI_ERR_FORMAT;
        x = (float)f;
        return pi_gguf_writer_set(w, key, t, &x);
    }
    case PI_GGUF_F64: return pi_gguf_kv_f64(g, i, &f) < 0 ? -PI_ERR_FORMAT : pi_gguf_writer_set(w, key, t, &f);
    case PI_GGUF_ARRAY:
        if (pi_gguf_kv_arr(g, i, &et, &n) < 0) return -PI_ERR_FORMAT;
        if (et != PI_GGUF_STRING) return pi_gguf_writer_set_arr(w, key, et, pi_gguf_kv_arr_data(g, i), n);
        return 0; /* string arrays are not carried over (no later tool writes one) */
    case PI_GGUF_U8:
    case PI_GGUF_U16:
    case PI_GGUF_U32:
    case PI_GGUF_U64: {
        if (pi_gguf_kv_uint(g, i, &u) < 0) return -PI_ERR_FORMAT;
        unsigned char buf[8];
        for (int k = 0; k < 8; k++) buf[k] = (unsigned char)(u >> (8 * k)); /* little-endian host (GGUF) */
        return pi_gguf_writer_set(w, key, t, buf);
    }
    default: {
        if (pi_gguf_kv_int(g, i, &s) < 0) return -PI_ERR_FORMAT;
        unsigned char buf[8];
        for (int k = 0; k < 8; k++) buf[k] = (unsigned char)((uint64_t)s >> (8 * k));
        return pi_gguf_writer_set(w, key, t, buf);
    }
    }
}

/* Carry over what an existing sidecar of the same model at path holds that s does not define. */
static int carry_over(pi_gguf_writer_t *w, const char *path, const pi_model_t *m, bool pred, bool thr)
{
    pi_gguf_t *g = NULL;
    struct pi_sidecar *old = NULL;
    char err[256], name[1024];
    int rc = pi_sidecar_load(path, m, &old, err, sizeof err);
    pi_sidecar_destroy(&old);
    if (rc < 0) return 0; /* absent, foreign or malformed: replaced, nothing to keep */
    if (pi_gguf_open(path, &g, NULL, 0) < 0) return 0;
    for (uint64_t i = 0; rc == 0 && i < pi_gguf_n_kv(g); i++) {
        struct pi_gguf_str k = pi_gguf_key(g, i);
        if (own_key(k) || (pred && has_prefix(k, "pinfer.predictor.")) || (thr && has_prefix(k, "pinfer.threshold.")) ||
            k.len >= sizeof name || pi_gguf_str_has_nul(k))
            continue;
        memcpy(name, k.ptr, (size_t)k.len);
        name[k.len] = '\0';
        rc = copy_kv(w, g, i, name);
    }
    for (uint64_t i = 0; rc == 0 && i < pi_gguf_n_tensors(g); i++) {
        const struct pi_gguf_tensor *t = pi_gguf_tensor(g, i);
        if (own_tensor(t->name, pred, thr) || t->name.len >= sizeof name || pi_gguf_str_has_nul(t->name)) continue;
        memcpy(name, t->name.ptr, (size_t)t->name.len);
        name[t->name.len] = '\0';
        rc = pi_gguf_writer_add_tensor(w, name, (enum pi_type)t->type, t->n_dims, t->ne, t->data);
    }
    pi_gguf_destroy(&g);
    return rc;
}

static int add_layers(pi_gguf_writer_t *w, const char *what, int n_layer, int n, const float *src)
{
    char name[64];
    uint64_t ne[1] = {(uint64_t)n};
    int rc = 0;
    for (int il = 0; rc == 0 && il < n_layer; il++) {
        snprintf(name, sizeof name, "blk.%d.%s", il, what);
        rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_F32, 1, ne, src + (size_t)il * (size_t)n);
    }
    return rc;
}

/* The predictors' keys and tensors (layout in model/sidecar.h). */
static int add_pred(pi_gguf_writer_t *w, const struct pi_sidecar *s)
{
    char name[64];
    int rc;
    if ((rc = pi_gguf_writer_set_u32(w, "pinfer.predictor.version", PI_SIDECAR_PRED_VERSION)) < 0 ||
        (rc = pi_gguf_writer_set_arr(w, "pinfer.predictor.recall_target", PI_GGUF_F32, s->pred_target, 2)) < 0 ||
        (rc = pi_gguf_writer_set_arr(w, "pinfer.predictor.samples", PI_GGUF_U64, s->pred_samples, 2)) < 0 ||
        (rc = pi_gguf_writer_set_u64(w, "pinfer.predictor.seed", s->pred_seed)) < 0)
        return rc;
    for (int il = 0; rc == 0 && il < s->n_layer; il++) {
        const struct pi_sidecar_pred *p = &s->pred[il];
        uint64_t ne1[2] = {(uint64_t)s->n_embd, (uint64_t)p->rank}, ne2[2] = {(uint64_t)p->rank, (uint64_t)s->n_ff};
        uint64_t n2[1] = {2}, n3[1] = {3};
        snprintf(name, sizeof name, "blk.%d.fc1.weight", il);
        if ((rc = pi_gguf_writer_add_tensor(w, name, p->type, 2, ne1, p->fc1)) < 0) break;
        snprintf(name, sizeof name, "blk.%d.fc2.weight", il);
        if ((rc = pi_gguf_writer_add_tensor(w, name, p->type, 2, ne2, p->fc2)) < 0) break;
        snprintf(name, sizeof name, "blk.%d.fc_threshold", il);
        if ((rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_F32, 1, n2, p->threshold)) < 0) break;
        snprintf(name, sizeof name, "blk.%d.fc_recall", il);
        if ((rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_F32, 1, n2, p->recall)) < 0) break;
        snprintf(name, sizeof name, "blk.%d.fc_active", il);
        rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_F32, 1, n3, p->active);
    }
    return rc;
}

/* The thresholds' keys and tensors (layout in model/sidecar.h). */
static int add_thresholds(pi_gguf_writer_t *w, const struct pi_sidecar *s)
{
    int rc;
    if ((rc = pi_gguf_writer_set_u32(w, "pinfer.threshold.version", PI_SIDECAR_THRESHOLD_VERSION)) < 0 ||
        (rc = pi_gguf_writer_set_arr(w, "pinfer.threshold.kld_target", PI_GGUF_F32, s->thr_kld_target, 2)) < 0 ||
        (rc = pi_gguf_writer_set_arr(w, "pinfer.threshold.kld", PI_GGUF_F32, s->thr_kld, 2)) < 0 ||
        (rc = pi_gguf_writer_set_arr(w, "pinfer.threshold.sparsity", PI_GGUF_F32, s->thr_sparsity, 2)) < 0 ||
        (rc = pi_gguf_writer_set_arr(w, "pinfer.threshold.tokens", PI_GGUF_U64, s->thr_tokens, 2)) < 0)
        return rc;
    PI_ASSERT(s->gate_sparsity);
    if ((rc = add_layers(w, "gate_threshold", s->n_layer, 2 * s->n_ff, s->gate_min)) < 0) return rc;
    return add_layers(w, "gate_sparsity", s->n_layer, 2, s->gate_sparsity);
}

int pi_sidecar_save(const char *path, const pi_model_t *m, const struct pi_sidecar *s)
{
    PI_ASSERT(s->n_layer == m->hp.n_layer && s->n_ff == m->hp.n_ff);
    PI_ASSERT(!s->act_hist || s->n_hist == PI_SIDECAR_HIST_BINS);
    PI_ASSERT(!s->pred || s->n_embd == m->hp.n_embd);
    struct pi_model_identity id;
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    int rc;
    if (!w) return -PI_ERR_NOMEM;
    pi_sidecar_identity(m->gguf, &id);
    if ((rc = pi_gguf_writer_set_str(w, "general.architecture", ARCH)) < 0 ||
        (rc = pi_gguf_writer_set_u32(w, "pinfer.sidecar.version", PI_SIDECAR_VERSION)) < 0 ||
        (rc = pi_gguf_writer_set_u64(w, "pinfer.model.size", id.size)) < 0 ||
        (rc = pi_gguf_writer_set_u64(w, "pinfer.model.hash", id.hash)) < 0 ||
        (rc = pi_gguf_writer_set_u32(w, "pinfer.model.n_layer", (uint32_t)s->n_layer)) < 0 ||
        (rc = pi_gguf_writer_set_u32(w, "pinfer.model.n_ff", (uint32_t)s->n_ff)) < 0 ||
        (rc = pi_gguf_writer_set_u64(w, "pinfer.profile.tokens", s->tokens)) < 0)
        goto out;
    if (s->act_hist &&
        ((rc = pi_gguf_writer_set_f32(w, "pinfer.profile.hist_log2_min", PI_SIDECAR_HIST_LOG2_MIN)) < 0 ||
         (rc = pi_gguf_writer_set_f32(w, "pinfer.profile.hist_log2_step", PI_SIDECAR_HIST_LOG2_STEP)) < 0))
        goto out;
    if ((s->act_freq && (rc = add_layers(w, "act_freq", s->n_layer, s->n_ff, s->act_freq)) < 0) ||
        (s->act_hist && (rc = add_layers(w, "act_hist", s->n_layer, s->n_hist, s->act_hist)) < 0) ||
        (s->pred && (rc = add_pred(w, s)) < 0) || (s->gate_min && (rc = add_thresholds(w, s)) < 0) ||
        (rc = carry_over(w, path, m, s->pred != NULL, s->gate_min != NULL)) < 0)
        goto out;
    rc = pi_gguf_writer_write(w, path);
out:
    if (rc < 0) pi_error("sidecar %s: writing failed: %s", path, pi_err_str(rc));
    pi_gguf_writer_destroy(&w);
    return rc;
}
