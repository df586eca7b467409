/*
 * tests/unit/test-predictor-sidecar.c - trained predictors in the sidecar (model/sidecar.h) and their
 * loading (compute/predictor.h): a round trip bit for bit in each stored type, the statistics and the
 * predictors kept when the other is rewritten, pi_predictors_open's order (sidecar, model, none), the
 * evaluation of a sidecar set against a float reference, and rejection of malformed predictors (wrong
 * shapes and types, NaN thresholds, recalls outside [0, 1], rank 0 and ranks past the limit, a partial
 * set, another version, a missing key). Fresh random weights every run.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/predictor.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "model/gguf.h"
#include "model/model-gen.h"
#include "model/model.h"
#include "model/sidecar.h"
#include "tests/tap.h"

static char tmpdir[256];
static struct pi_rng rng;

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static pi_model_t *gen_model(const char *name)
{
    struct pi_model_gen g = {0};
    struct pi_model_opts o;
    pi_model_t *m = NULL;
    char err[256];
    pi_model_gen_preset("tiny", &g);
    g.n_vocab = 64;
    g.type = PI_TYPE_F16;
    g.act = PI_FFN_ACT_RELU;
    g.seed = 3;
    if (pi_model_gen_write(&g, tmp_path(name)) < 0) tap_bail("cannot write %s", name);
    pi_model_opts_default(&o);
    o.no_down_t = true;
    if (pi_model_open(tmp_path(name), &o, &m, err, sizeof err) < 0) tap_bail("cannot open %s: %s", name, err);
    return m;
}

/* n floats uniform in [-1, 1] in type t (malloc'd). */
static void *rand_rows(enum pi_type t, int64_t rows, int64_t cols, float *f32)
{
    uint64_t rb;
    if (!pi_type_row_bytes(t, (uint64_t)cols, &rb)) tap_bail("row bytes");
    char *out = malloc((size_t)(rb * (uint64_t)rows));
    for (int64_t r = 0; r < rows; r++) {
        float *row = f32 + r * cols;
        for (int64_t c = 0; c < cols; c++) row[c] = (float)(2.0 * pi_rng_uniform(&rng) - 1.0);
        pi_quantize_row(t, row, out + (size_t)r * rb, cols);
    }
    return out;
}

/* A sidecar of m with random predictors of rank r (layer il: r * (il + 1) when grow) in type t. */
static struct pi_sidecar *with_pred(const pi_model_t *m, enum pi_type t, int64_t r, bool grow)
{
    struct pi_sidecar *s = pi_sidecar_new(m, true, true);
    s->tokens = 77;
    s->pred = calloc((size_t)s->n_layer, sizeof *s->pred);
    s->pred_target[0] = 0.99f, s->pred_target[1] = 0.95f;
    s->pred_samples[0] = 900, s->pred_samples[1] = 100;
    s->pred_seed = 5;
    for (int il = 0; il < s->n_layer; il++) {
        struct pi_sidecar_pred *p = &s->pred[il];
        int64_t rank = grow ? r * (il + 1) : r;
        float *tmp = malloc(sizeof(float) * (size_t)(PI_MAX(rank * s->n_embd, (int64_t)s->n_ff * rank)));
        p->rank = rank;
        p->type = t;
        p->fc1 = rand_rows(t, rank, s->n_embd, tmp);
        p->fc2 = rand_rows(t, s->n_ff, rank, tmp);
        p->threshold[0] = -0.5f - (float)il, p->threshold[1] = 0.25f;
        p->recall[0] = 0.991f, p->recall[1] = 0.951f;
        p->active[0] = 0.3f, p->active[1] = 0.2f, p->active[2] = 0.15f;
        free(tmp);
    }
    return s;
}

static bool same_pred(const struct pi_sidecar *a, const struct pi_sidecar *b)
{
    if (!a->pred || !b->pred || memcmp(a->pred_target, b->pred_target, sizeof a->pred_target) ||
        memcmp(a->pred_samples, b->pred_samples, sizeof a->pred_samples) || a->pred_seed != b->pred_seed)
        return false;
    for (int il = 0; il < a->n_layer; il++) {
        const struct pi_sidecar_pred *p = &a->pred[il], *q = &b->pred[il];
        uint64_t b1, b2;
        pi_type_row_bytes(p->type, (uint64_t)a->n_embd, &b1);
        pi_type_row_bytes(p->type, (uint64_t)p->rank, &b2);
        if (p->rank != q->rank || p->type != q->type || memcmp(p->fc1, q->fc1, b1 * (uint64_t)p->rank) ||
            memcmp(p->fc2, q->fc2, b2 * (uint64_t)a->n_ff) || memcmp(p->threshold, q->threshold, sizeof p->threshold) ||
            memcmp(p->recall, q->recall, sizeof p->recall) || memcmp(p->active, q->active, sizeof p->active))
            return false;
    }
    return true;
}

static void test_round_trip(const pi_model_t *m)
{
    const enum pi_type types[] = {PI_TYPE_F32, PI_TYPE_F16, PI_TYPE_Q8_0};
    char err[256] = "";
    for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
        struct pi_sidecar *s = with_pred(m, types[k], 32, true), *r = NULL;
        const char *p = tmp_path("rt.pinfer.gguf");
        unlink(p);
        tap_ok(pi_sidecar_save(p, m, s) == 0, "%s: saved", pi_type_name(types[k]));
        int rc = pi_sidecar_load_pred(p, m, &r, err, sizeof err);
        tap_ok(rc == 0 && r && same_pred(s, r) && r->tokens == 77,
               "%s: predictors loaded bit for bit, ranks 32..%d (%s)", pi_type_name(types[k]), 32 * m->hp.n_layer, err);
        pi_sidecar_destroy(&r);
        rc = pi_sidecar_load(p, m, &r, err, sizeof err);
        tap_ok(rc == 0 && r && r->pred && !r->pred[0].fc1 && !r->pred[0].fc2 && r->pred[1].rank == 64 &&
                   r->pred[1].threshold[0] == s->pred[1].threshold[0],
               "%s: pi_sidecar_load validates and reads all but the weights", pi_type_name(types[k]));
        pi_sidecar_destroy(&r);
        pi_sidecar_destroy(&s);
    }
}

/* pi-profile rewriting the statistics keeps the predictors; training again keeps the statistics. */
static void test_keep(const pi_model_t *m)
{
    const char *p = tmp_path("keep.pinfer.gguf");
    struct pi_sidecar *s = with_pred(m, PI_TYPE_F16, 64, false), *stats = pi_sidecar_new(m, true, true), *r = NULL;
    char err[256] = "";
    unlink(p);
    pi_sidecar_save(p, m, s);
    stats->tokens = 4242;
    tap_is_int(pi_sidecar_save(p, m, stats), 0, "keep: the statistics rewritten alone");
    tap_ok(pi_sidecar_load_pred(p, m, &r, err, sizeof err) == 0 && r->tokens == 4242 && same_pred(s, r),
           "keep: the predictors carried over (%s)", err);
    pi_sidecar_destroy(&r);
    struct pi_sidecar *s2 = with_pred(m, PI_TYPE_F32, 32, false);
    s2->tokens = 4242;
    tap_is_int(pi_sidecar_save(p, m, s2), 0, "keep: new predictors of another rank and type");
    tap_ok(pi_sidecar_load_pred(p, m, &r, err, sizeof err) == 0 && same_pred(s2, r), "keep: the old ones replaced");
    pi_sidecar_destroy(&r);
    pi_sidecar_destroy(&s);
    pi_sidecar_destroy(&s2);
    pi_sidecar_destroy(&stats);
}

/* pi_predictors_open: sidecar first, else the model's (the tiny model has none), and the set evaluates
 * as a float reference does. */
static void test_open(const pi_model_t *m)
{
    struct pi_predictors P;
    const char *p = tmp_path("open.pinfer.gguf");
    tap_is_int(pi_predictors_open(m, NULL, &P), -PI_ERR_NOTFOUND, "open: no sidecar, none in the model: NOTFOUND");
    tap_is_int(pi_predictors_open(m, tmp_path("absent.gguf"), &P), -PI_ERR_NOTFOUND, "open: absent sidecar: NOTFOUND");
    struct pi_sidecar *s = with_pred(m, PI_TYPE_F32, 32, true);
    unlink(p);
    pi_sidecar_save(p, m, s);
    int rc = pi_predictors_open(m, p, &P);
    tap_ok(rc == 0 && strcmp(P.source, "sidecar") == 0 && P.rank_max == 32 * m->hp.n_layer &&
               P.n_layer == m->hp.n_layer && !P.on_residual, /* trained on the ffn_norm output */
           "open: the sidecar's set (source %s, rank_max %lld)", rc == 0 ? P.source : "-", (long long)P.rank_max);
    if (rc < 0) {
        tap_skip(2, "not opened");
        pi_sidecar_destroy(&s);
        return;
    }
    pi_sidecar_destroy(&s); /* the set owns its copies */
    s = NULL;
    struct pi_sidecar *r = NULL;
    char err[256];
    pi_sidecar_load_pred(p, m, &r, err, sizeof err);
    const int64_t d = m->hp.n_embd, ff = m->hp.n_ff, words = (ff + 63) / 64;
    float *x = malloc(sizeof(float) * (size_t)d), *scratch = malloc(sizeof(float) * pi_predictor_scratch(&P, 1));
    uint64_t *mask = malloc(sizeof(uint64_t) * (size_t)words);
    int bad = 0, thr_ok = 1;
    for (int il = 0; il < P.n_layer; il++) {
        const struct pi_sidecar_pred *q = &r->pred[il];
        thr_ok &= P.layers[il].threshold[PI_SPARSITY_SAFE] == q->threshold[0] &&
                  P.layers[il].threshold[PI_SPARSITY_AGGRESSIVE] == q->threshold[1];
        for (int64_t i = 0; i < d; i++) x[i] = (float)(2.0 * pi_rng_uniform(&rng) - 1.0);
        pi_predictor_eval(NULL, &P, il, PI_SPARSITY_SAFE, x, 1, scratch, mask, words);
        const float *W1 = q->fc1, *W2 = q->fc2;
        for (int64_t j = 0; j < ff; j++) {
            double z = 0;
            for (int64_t k = 0; k < q->rank; k++) {
                double h = 0;
                for (int64_t i = 0; i < d; i++) h += (double)W1[k * d + i] * x[i];
                z += W2[j * q->rank + k] * (h > 0 ? h : 0);
            }
            bool want = z >= q->threshold[0], got = (mask[j / 64] >> (j % 64)) & 1;
            bad += want != got && fabs(z - q->threshold[0]) > 1e-3; /* float against double sums */
        }
    }
    tap_ok(thr_ok, "open: thresholds per mode are the sidecar's");
    tap_is_int(bad, 0, "open: masks of the sidecar set match a double reference in every layer");
    free(x), free(scratch), free(mask);
    pi_sidecar_destroy(&r);
    pi_predictors_free(&P);
}

/* ---------------------------------------------------------------- malformed predictors */

enum bad {
    BAD_NONE,
    BAD_VERSION,
    BAD_NO_SEED,
    BAD_TARGET,
    BAD_FC1_SHAPE,
    BAD_FC2_RANK,
    BAD_FC2_TYPE,
    BAD_Q4,
    BAD_NAN_THR,
    BAD_INF_THR,
    BAD_RECALL,
    BAD_ACTIVE_NEG,
    BAD_PARTIAL,
    BAD_NO_RECALL,
    BAD_RANK_HUGE,
    BAD_COUNT
};
static const char *const bad_names[] = {
    "valid",
    "predictor version 2",
    "no seed key",
    "three recall targets",
    "fc1 32 columns short",
    "fc2 of another rank",
    "fc2 f16 beside fc1 f32",
    "q4_0 predictor",
    "NaN threshold",
    "+Inf threshold",
    "recall 1.5",
    "active share -0.1",
    "layer 3 without fc1/fc2",
    "no fc_recall",
    "rank 16385",
};

static bool named(struct pi_gguf_str n, const char *c) { return pi_gguf_str_eq(n, c); }

/* Copy key i of g into w (the types a sidecar holds), or change it for case b. */
static void copy_key(pi_gguf_writer_t *w, const pi_gguf_t *g, uint64_t i, enum bad b)
{
    struct pi_gguf_str k = pi_gguf_key(g, i), str;
    char key[128];
    uint64_t u, n;
    double f;
    enum pi_gguf_vtype et;
    snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
    if (b == BAD_NO_SEED && named(k, "pinfer.predictor.seed")) return;
    if (b == BAD_VERSION && named(k, "pinfer.predictor.version")) {
        pi_gguf_writer_set_u32(w, key, 2);
        return;
    }
    switch (pi_gguf_kv_type(g, i)) {
    case PI_GGUF_STRING: pi_gguf_kv_str(g, i, &str), pi_gguf_writer_set_strn(w, key, str.ptr, str.len); break;
    case PI_GGUF_U32: pi_gguf_kv_uint(g, i, &u), pi_gguf_writer_set_u32(w, key, (uint32_t)u); break;
    case PI_GGUF_U64: pi_gguf_kv_uint(g, i, &u), pi_gguf_writer_set_u64(w, key, u); break;
    case PI_GGUF_F32: pi_gguf_kv_f64(g, i, &f), pi_gguf_writer_set_f32(w, key, (float)f); break;
    case PI_GGUF_ARRAY: {
        float three[3] = {0.99f, 0.95f, 0.9f};
        pi_gguf_kv_arr(g, i, &et, &n);
        if (b == BAD_TARGET && named(k, "pinfer.predictor.recall_target"))
            pi_gguf_writer_set_arr(w, key, PI_GGUF_F32, three, 3);
        else pi_gguf_writer_set_arr(w, key, et, pi_gguf_kv_arr_data(g, i), n);
        break;
    }
    default: tap_bail("unexpected key type in %s", key);
    }
}

/* Copy tensor t into w, or change it for case b. */
static void copy_tensor(pi_gguf_writer_t *w, const struct pi_gguf_tensor *t, enum bad b, const void *zeros)
{
    char name[128];
    uint64_t ne[2] = {t->ne[0], t->ne[1]};
    enum pi_type type = (enum pi_type)t->type;
    const void *data = t->data;
    float v[3];
    snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
    if (b == BAD_PARTIAL && (named(t->name, "blk.3.fc1.weight") || named(t->name, "blk.3.fc2.weight"))) return;
    if (b == BAD_NO_RECALL && named(t->name, "blk.0.fc_recall")) return;
    if (b == BAD_FC1_SHAPE && named(t->name, "blk.1.fc1.weight")) ne[0] -= 32;
    if (b == BAD_FC2_RANK && named(t->name, "blk.1.fc2.weight")) ne[0] /= 2, ne[1] *= 2;
    if (b == BAD_FC2_TYPE && named(t->name, "blk.1.fc2.weight")) type = PI_TYPE_F16;
    if (b == BAD_Q4 && strstr(name, ".fc") && strstr(name, ".weight")) type = PI_TYPE_Q4_0;
    if (b == BAD_RANK_HUGE && named(t->name, "blk.0.fc1.weight")) ne[1] = PI_SIDECAR_PRED_RANK_MAX + 1, data = zeros;
    if (b == BAD_RANK_HUGE && named(t->name, "blk.0.fc2.weight")) ne[0] = PI_SIDECAR_PRED_RANK_MAX + 1, data = zeros;
    memcpy(v, t->data, (size_t)t->ne[0] * sizeof(float) < sizeof v ? (size_t)t->ne[0] * sizeof(float) : sizeof v);
    if (b == BAD_NAN_THR && named(t->name, "blk.2.fc_threshold")) v[0] = NAN, data = v;
    if (b == BAD_INF_THR && named(t->name, "blk.2.fc_threshold")) v[1] = INFINITY, data = v;
    if (b == BAD_RECALL && named(t->name, "blk.2.fc_recall")) v[0] = 1.5f, data = v;
    if (b == BAD_ACTIVE_NEG && named(t->name, "blk.2.fc_active")) v[2] = -0.1f, data = v;
    if (pi_gguf_writer_add_tensor(w, name, type, t->n_dims, ne, data) < 0) tap_bail("cannot add %s", name);
}

static void write_case(const char *src, const char *dst, enum bad b, const void *zeros)
{
    pi_gguf_t *g = NULL;
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    if (pi_gguf_open(src, &g, NULL, 0) < 0) tap_bail("cannot reopen %s", src);
    for (uint64_t i = 0; i < pi_gguf_n_kv(g); i++) copy_key(w, g, i, b);
    for (uint64_t i = 0; i < pi_gguf_n_tensors(g); i++) copy_tensor(w, pi_gguf_tensor(g, i), b, zeros);
    if (pi_gguf_writer_write(w, dst) < 0) tap_bail("cannot write case %d", (int)b);
    pi_gguf_writer_destroy(&w);
    pi_gguf_destroy(&g);
}

/* Rank 0 cannot be written (the GGUF writer refuses a 0 dimension): patch the file's fc1 ne[1] in place. */
static int patch_rank0(const char *path)
{
    FILE *f = fopen(path, "r+b");
    static char buf[1 << 16];
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    const char *name = "blk.0.fc1.weight";
    char *at = memmem(buf, n, name, strlen(name));
    if (!at) return f ? fclose(f), -1 : -1;
    long off = (long)(at - buf) + (long)strlen(name) + 4 /* n_dims */ + 8 /* ne[0] */;
    uint64_t zero = 0;
    int rc = fseek(f, off, SEEK_SET) == 0 && fwrite(&zero, 8, 1, f) == 1 ? 0 : -1;
    fclose(f);
    return rc;
}

static void test_malformed(const pi_model_t *m)
{
    const char *src = tmp_path("valid.pinfer.gguf"), *p = tmp_path("bad.pinfer.gguf");
    struct pi_sidecar *s = with_pred(m, PI_TYPE_F32, 64, false), *r = NULL;
    struct pi_predictors P;
    char err[256];
    unlink(src);
    pi_sidecar_save(src, m, s);
    pi_sidecar_destroy(&s);
    void *zeros = calloc((size_t)(PI_SIDECAR_PRED_RANK_MAX + 1) * (size_t)m->hp.n_ff, sizeof(float));
    for (int b = 0; b < BAD_COUNT; b++) {
        write_case(src, p, (enum bad)b, zeros);
        err[0] = '\0';
        int rc = pi_sidecar_load(p, m, &r, err, sizeof err);
        if (b == BAD_NONE) tap_ok(rc == 0 && r && r->pred, "the rewritten valid sidecar loads (%s)", err);
        else tap_ok(rc == -PI_ERR_FORMAT && !r && err[0], "rejected: %s: %s", bad_names[b], err);
        pi_sidecar_destroy(&r);
    }
    write_case(src, p, BAD_NONE, zeros);
    int prc = patch_rank0(p);
    int rc = pi_sidecar_load(p, m, &r, err, sizeof err);
    tap_ok(prc == 0 && rc == -PI_ERR_FORMAT && !r, "rejected: rank 0: %s", err);
    tap_is_int(pi_predictors_open(m, p, &P), -PI_ERR_FORMAT, "open: a malformed sidecar is an error, not skipped");
    free(zeros);
}

int main(void)
{
    uint64_t seed = (uint64_t)time(NULL);
    pi_rng_seed(&rng, seed);
    tap_diag("seed %llu", (unsigned long long)seed);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/pi-test-predsc-XXXXXX");
    if (!mkdtemp(tmpdir)) tap_bail("mkdtemp failed");
    pi_model_t *m = gen_model("m.gguf");
    test_round_trip(m);
    test_keep(m);
    test_open(m);
    test_malformed(m);
    pi_model_destroy(&m);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) tap_diag("could not remove %s", tmpdir);
    return tap_done();
}
