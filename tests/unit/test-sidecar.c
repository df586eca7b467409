/*
 * tests/unit/test-sidecar.c - the per-model sidecar (model/sidecar.h): default paths, the identity
 * hash, a save/load round trip, keys and tensors of later tools carried over, refusal of a sidecar
 * made for another model, and rejection of malformed sidecars (truncations, wrong types and shapes,
 * NaN or out-of-range frequencies, a partial set of layers, another version); the activation
 * thresholds of issue 18: round trip, carried over by a save without them, bad values rejected.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/common.h"
#include "model/gguf.h"
#include "model/model-gen.h"
#include "model/model.h"
#include "model/sidecar.h"
#include "tests/tap.h"

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static pi_model_t *gen_model(const char *name, uint64_t seed)
{
    struct pi_model_gen g = {0};
    struct pi_model_opts o;
    pi_model_t *m = NULL;
    char err[256];
    pi_model_gen_preset("tiny", &g);
    g.n_vocab = 64;
    g.type = PI_TYPE_F16;
    g.act = PI_FFN_ACT_RELU;
    g.seed = seed;
    if (pi_model_gen_write(&g, tmp_path(name)) < 0) tap_bail("cannot write %s", name);
    pi_model_opts_default(&o);
    o.no_down_t = true;
    if (pi_model_open(tmp_path(name), &o, &m, err, sizeof err) < 0) tap_bail("cannot open %s: %s", name, err);
    return m;
}

static void test_paths(void)
{
    char out[64];
    tap_ok(pi_sidecar_path("/m/llama-7b.Q4_0.gguf", out, sizeof out) == 0 &&
               strcmp(out, "/m/llama-7b.Q4_0.pinfer.gguf") == 0,
           "path: .gguf replaced (%s)", out);
    tap_ok(pi_sidecar_path("model.bin", out, sizeof out) == 0 && strcmp(out, "model.bin.pinfer.gguf") == 0,
           "path: other names get the suffix appended (%s)", out);
    tap_is_int(pi_sidecar_path("/a/very/long/path/that/does/not/fit/into/the/buffer.gguf", out, 32), -PI_ERR_RANGE,
               "path: too long for the buffer is an error");
}

static void fill(struct pi_sidecar *s)
{
    s->tokens = 12345;
    for (int i = 0; i < s->n_layer * s->n_ff; i++) s->act_freq[i] = (float)((i * 37) % 101) / 100.0f;
    for (int il = 0; il < s->n_layer; il++)
        for (int b = 0; b < s->n_hist; b++) s->act_hist[il * s->n_hist + b] = b == il ? 1.0f : 0.0f;
}

static void test_round_trip(const pi_model_t *m, const pi_model_t *other)
{
    struct pi_sidecar *s = pi_sidecar_new(m, true, true), *r = NULL;
    char err[256] = "";
    const char *p = tmp_path("a.pinfer.gguf");
    fill(s);
    tap_is_int(pi_sidecar_save(p, m, s), 0, "round trip: saved");
    tap_is_int(pi_sidecar_load(p, m, &r, err, sizeof err), 0, "round trip: loaded");
    if (r) {
        tap_ok(r->n_layer == s->n_layer && r->n_ff == s->n_ff && r->tokens == 12345, "round trip: shape and tokens");
        tap_ok(r->act_freq && memcmp(r->act_freq, s->act_freq, (size_t)s->n_layer * s->n_ff * sizeof(float)) == 0,
               "round trip: act_freq bit for bit");
        tap_ok(r->act_hist && r->n_hist == PI_SIDECAR_HIST_BINS &&
                   memcmp(r->act_hist, s->act_hist, (size_t)s->n_layer * s->n_hist * sizeof(float)) == 0,
               "round trip: act_hist bit for bit");
    } else {
        tap_diag("%s", err);
        tap_skip(3, "not loaded");
    }
    pi_sidecar_destroy(&r);
    tap_ok(r == NULL, "destroy nulls the pointer");

    /* another model: refused with one message naming both identities */
    err[0] = '\0';
    tap_is_int(pi_sidecar_load(p, other, &r, err, sizeof err), -PI_ERR_FORMAT, "another model's sidecar refused");
    tap_ok(r == NULL && strstr(err, "made for another model") != NULL, "  with a clear message: %s", err);

    tap_is_int(pi_sidecar_load(tmp_path("absent.pinfer.gguf"), m, &r, err, sizeof err), -PI_ERR_NOTFOUND,
               "absent sidecar: NOTFOUND");

    /* a sidecar without statistics (a later tool's only) loads with NULL arrays */
    struct pi_sidecar *e = pi_sidecar_new(m, false, false);
    tap_is_int(pi_sidecar_save(tmp_path("e.pinfer.gguf"), m, e), 0, "empty sidecar saved");
    tap_ok(pi_sidecar_load(tmp_path("e.pinfer.gguf"), m, &r, err, sizeof err) == 0 && r && !r->act_freq && !r->act_hist,
           "empty sidecar loads with no arrays");
    pi_sidecar_destroy(&r);
    pi_sidecar_destroy(&e);
    pi_sidecar_destroy(&s);
}

/* A later tool's key and tensor survive pi_sidecar_save rewriting the file. */
static void test_carry_over(const pi_model_t *m)
{
    const char *p = tmp_path("c.pinfer.gguf");
    struct pi_sidecar *s = pi_sidecar_new(m, true, false), *r = NULL;
    char err[256];
    fill(s);
    tap_is_int(pi_sidecar_save(p, m, s), 0, "carry over: first save");
    /* a later tool rewrites it with its own additions (through the writer, as it would) */
    pi_gguf_t *g = NULL;
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    pi_gguf_open(p, &g, NULL, 0);
    for (uint64_t i = 0; i < pi_gguf_n_kv(g); i++) {
        struct pi_gguf_str k = pi_gguf_key(g, i);
        char key[128];
        uint64_t u;
        snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
        if (pi_gguf_kv_type(g, i) == PI_GGUF_STRING) pi_gguf_writer_set_str(w, key, "pinfer.sidecar");
        else if (pi_gguf_kv_uint(g, i, &u) == 0 && pi_gguf_kv_type(g, i) == PI_GGUF_U32)
            pi_gguf_writer_set_u32(w, key, (uint32_t)u);
        else if (pi_gguf_kv_uint(g, i, &u) == 0) pi_gguf_writer_set_u64(w, key, u);
    }
    for (uint64_t i = 0; i < pi_gguf_n_tensors(g); i++) {
        const struct pi_gguf_tensor *t = pi_gguf_tensor(g, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        pi_gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data);
    }
    float pred[6] = {1, 2, 3, 4, 5, 6};
    uint64_t ne[2] = {3, 2};
    pi_gguf_writer_set_f32(w, "pinfer.later.threshold", 0.25f);
    pi_gguf_writer_add_tensor(w, "blk.0.later.weight", PI_TYPE_F32, 2, ne, pred);
    pi_gguf_destroy(&g);
    tap_is_int(pi_gguf_writer_write(w, p), 0, "carry over: a later tool added its key and tensor");
    pi_gguf_writer_destroy(&w);
    s->tokens = 999;
    tap_is_int(pi_sidecar_save(p, m, s), 0, "carry over: saved again");
    tap_ok(pi_sidecar_load(p, m, &r, err, sizeof err) == 0 && r && r->tokens == 999, "carry over: new statistics");
    pi_sidecar_destroy(&r);
    float th = 0;
    const struct pi_gguf_tensor *t = NULL;
    if (pi_gguf_open(p, &g, NULL, 0) == 0) t = pi_gguf_find_tensor(g, "blk.0.later.weight");
    tap_ok(g && pi_gguf_get_f32(g, "pinfer.later.threshold", &th) == 0 && th == 0.25f,
           "carry over: the later tool's key kept");
    tap_ok(t && t->ne[0] == 3 && t->ne[1] == 2 && memcmp(t->data, pred, sizeof pred) == 0,
           "carry over: the later tool's tensor kept");
    pi_gguf_destroy(&g);
    pi_sidecar_destroy(&s);
}

/* Malformed sidecars, written field by field with the GGUF writer. */
enum bad {
    BAD_NONE,
    BAD_ARCH,
    BAD_VERSION,
    BAD_NO_TOKENS,
    BAD_TOKENS_TYPE,
    BAD_NLAYER,
    BAD_FREQ_TYPE,
    BAD_FREQ_SHAPE,
    BAD_FREQ_2D,
    BAD_FREQ_PARTIAL,
    BAD_FREQ_NAN,
    BAD_FREQ_INF,
    BAD_FREQ_HIGH,
    BAD_FREQ_NEG,
    BAD_HIST_NEG,
    BAD_HIST_SHAPE,
    BAD_HIST_BINS,
    BAD_COUNT
};
static const char *const bad_names[] = {
    "valid",
    "wrong architecture",
    "version 2",
    "no tokens key",
    "tokens as a string",
    "n_layer off by one",
    "act_freq as f16",
    "act_freq one neuron short",
    "act_freq 2-D",
    "act_freq for some layers only",
    "act_freq NaN",
    "act_freq +Inf",
    "act_freq 1.5",
    "act_freq -0.1",
    "act_hist negative",
    "act_hist 63 bins",
    "act_hist bins key differs",
};

static int write_bad(const char *path, const pi_model_t *m, enum bad b)
{
    struct pi_model_identity id;
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    int nl = m->hp.n_layer, nff = m->hp.n_ff;
    float *row = calloc((size_t)nff + 1, sizeof(float)), hist[PI_SIDECAR_HIST_BINS] = {1.0f};
    uint16_t *h16 = calloc((size_t)nff, 2);
    char name[64];
    pi_sidecar_identity(m->gguf, &id);
    for (int i = 0; i < nff; i++) row[i] = 0.5f;
    pi_gguf_writer_set_str(w, "general.architecture", b == BAD_ARCH ? "llama" : "pinfer.sidecar");
    pi_gguf_writer_set_u32(w, "pinfer.sidecar.version", b == BAD_VERSION ? 2 : 1);
    pi_gguf_writer_set_u64(w, "pinfer.model.size", id.size);
    pi_gguf_writer_set_u64(w, "pinfer.model.hash", id.hash);
    pi_gguf_writer_set_u32(w, "pinfer.model.n_layer", (uint32_t)(b == BAD_NLAYER ? nl + 1 : nl));
    pi_gguf_writer_set_u32(w, "pinfer.model.n_ff", (uint32_t)nff);
    if (b == BAD_TOKENS_TYPE) pi_gguf_writer_set_str(w, "pinfer.profile.tokens", "100");
    else if (b != BAD_NO_TOKENS) pi_gguf_writer_set_u64(w, "pinfer.profile.tokens", 100);
    pi_gguf_writer_set_f32(w, "pinfer.profile.hist_log2_min", b == BAD_HIST_BINS ? -16.0f : PI_SIDECAR_HIST_LOG2_MIN);
    pi_gguf_writer_set_f32(w, "pinfer.profile.hist_log2_step", PI_SIDECAR_HIST_LOG2_STEP);
    for (int il = 0; il < nl; il++) {
        uint64_t ne[2] = {(uint64_t)nff, 1};
        if (b == BAD_FREQ_PARTIAL && il == nl - 1) break;
        if (il == 1 && b == BAD_FREQ_NAN) row[7] = NAN;
        if (il == 1 && b == BAD_FREQ_INF) row[7] = INFINITY;
        if (il == 1 && b == BAD_FREQ_HIGH) row[7] = 1.5f;
        if (il == 1 && b == BAD_FREQ_NEG) row[7] = -0.1f;
        if (b == BAD_FREQ_SHAPE) ne[0] = (uint64_t)nff - 1;
        if (b == BAD_FREQ_2D) ne[0] = (uint64_t)nff / 2, ne[1] = 2;
        snprintf(name, sizeof name, "blk.%d.act_freq", il);
        if (b == BAD_FREQ_TYPE) pi_gguf_writer_add_tensor(w, name, PI_TYPE_F16, 1, ne, h16);
        else pi_gguf_writer_add_tensor(w, name, PI_TYPE_F32, b == BAD_FREQ_2D ? 2 : 1, ne, row);
        uint64_t hn[1] = {b == BAD_HIST_SHAPE ? PI_SIDECAR_HIST_BINS - 1 : PI_SIDECAR_HIST_BINS};
        if (b == BAD_HIST_NEG) hist[3] = -1.0f;
        snprintf(name, sizeof name, "blk.%d.act_hist", il);
        pi_gguf_writer_add_tensor(w, name, PI_TYPE_F32, 1, hn, hist);
    }
    int rc = pi_gguf_writer_write(w, path);
    pi_gguf_writer_destroy(&w);
    free(row);
    free(h16);
    return rc;
}

static void test_malformed(const pi_model_t *m)
{
    const char *p = tmp_path("bad.pinfer.gguf");
    struct pi_sidecar *r = NULL;
    char err[256];
    for (int b = 0; b < BAD_COUNT; b++) {
        if (write_bad(p, m, (enum bad)b) < 0) tap_bail("cannot write case %s", bad_names[b]);
        err[0] = '\0';
        int rc = pi_sidecar_load(p, m, &r, err, sizeof err);
        if (b == BAD_NONE) tap_ok(rc == 0 && r, "the hand-written valid sidecar loads (%s)", err);
        else tap_ok(rc == -PI_ERR_FORMAT && !r && err[0], "rejected: %s: %s", bad_names[b], err);
        pi_sidecar_destroy(&r);
    }
    /* truncations of a valid file: every cut is rejected as malformed, never read past */
    write_bad(p, m, BAD_NONE);
    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    int bad = 0, n = 0;
    for (long cut = 0; cut < size; cut += (cut < 512 ? 7 : 97), n++) {
        if (truncate(p, cut) != 0) tap_bail("truncate failed");
        int rc = pi_sidecar_load(p, m, &r, err, sizeof err);
        bad += rc != -PI_ERR_FORMAT || r != NULL;
        pi_sidecar_destroy(&r);
        write_bad(p, m, BAD_NONE);
    }
    tap_ok(bad == 0, "%d truncations of a %ld-byte sidecar all rejected as malformed (%d not)", n, size, bad);
}

/* A sidecar with activation thresholds: bit for bit back, carried over, bad values refused. */
static void test_thresholds(const pi_model_t *m)
{
    const char *p = tmp_path("t.pinfer.gguf");
    struct pi_sidecar *s = pi_sidecar_new(m, true, false), *r = NULL;
    char err[256] = "";
    const size_t n = (size_t)s->n_layer * 2 * (size_t)s->n_ff;
    fill(s);
    s->gate_min = malloc(n * sizeof *s->gate_min);
    s->gate_sparsity = malloc((size_t)s->n_layer * 2 * sizeof *s->gate_sparsity);
    for (size_t i = 0; i < n; i++) s->gate_min[i] = (float)(i % 97) * 0.001f;
    for (int i = 0; i < s->n_layer * 2; i++) s->gate_sparsity[i] = 0.05f * (float)i;
    for (int k = 0; k < 2; k++) {
        s->thr_kld_target[k] = k ? 0.03f : 0.01f;
        s->thr_kld[k] = k ? 0.02f : 0.007f;
        s->thr_sparsity[k] = k ? 0.4f : 0.25f;
        s->thr_tokens[k] = 1000u + (uint64_t)k;
    }
    tap_is_int(pi_sidecar_save(p, m, s), 0, "thresholds: saved");
    int rc = pi_sidecar_load(p, m, &r, err, sizeof err);
    tap_ok(rc == 0 && r && r->gate_min && memcmp(r->gate_min, s->gate_min, n * sizeof(float)) == 0 &&
               r->gate_sparsity &&
               memcmp(r->gate_sparsity, s->gate_sparsity, (size_t)s->n_layer * 2 * sizeof(float)) == 0 &&
               r->thr_kld[0] == 0.007f && r->thr_kld_target[1] == 0.03f && r->thr_sparsity[1] == 0.4f &&
               r->thr_tokens[1] == 1001u,
           "thresholds: round trip bit for bit (%s)", err);
    pi_sidecar_destroy(&r);
    /* pi-profile --no-thresholds (or pi-train-predictors) rewrites it without them: they stay */
    struct pi_sidecar *plain = pi_sidecar_new(m, true, false);
    fill(plain);
    tap_is_int(pi_sidecar_save(p, m, plain), 0, "thresholds: a save without them");
    rc = pi_sidecar_load(p, m, &r, err, sizeof err);
    tap_ok(rc == 0 && r && r->gate_min && memcmp(r->gate_min, s->gate_min, n * sizeof(float)) == 0 &&
               r->thr_kld[1] == 0.02f,
           "thresholds: carried over by a save without them (%s)", err);
    pi_sidecar_destroy(&r);
    pi_sidecar_destroy(&plain);
    /* hostile values: each refused with a reason */
    static const char *const what[] = {"a negative threshold",     "a NaN threshold", "an infinite threshold",
                                       "a layer sparsity above 1", "a KLD above 100", "a sparsity key above 1"};
    for (int b = 0; b < 6; b++) {
        struct pi_sidecar *t = pi_sidecar_new(m, true, false);
        fill(t);
        t->gate_min = malloc(n * sizeof *t->gate_min);
        t->gate_sparsity = malloc((size_t)t->n_layer * 2 * sizeof *t->gate_sparsity);
        memcpy(t->gate_min, s->gate_min, n * sizeof(float));
        memcpy(t->gate_sparsity, s->gate_sparsity, (size_t)t->n_layer * 2 * sizeof(float));
        memcpy(t->thr_kld_target, s->thr_kld_target, sizeof t->thr_kld_target);
        memcpy(t->thr_kld, s->thr_kld, sizeof t->thr_kld);
        memcpy(t->thr_sparsity, s->thr_sparsity, sizeof t->thr_sparsity);
        if (b == 0) t->gate_min[n / 2] = -0.5f;
        if (b == 1) t->gate_min[3] = NAN;
        if (b == 2) t->gate_min[n - 1] = INFINITY;
        if (b == 3) t->gate_sparsity[1] = 1.5f;
        if (b == 4) t->thr_kld[0] = 1e9f;
        if (b == 5) t->thr_sparsity[1] = 2.0f;
        unlink(p);
        pi_sidecar_save(p, m, t);
        err[0] = '\0';
        rc = pi_sidecar_load(p, m, &r, err, sizeof err);
        tap_ok(rc == -PI_ERR_FORMAT && !r && err[0], "thresholds: %s refused: %s", what[b], err);
        pi_sidecar_destroy(&r);
        pi_sidecar_destroy(&t);
    }
    pi_sidecar_destroy(&s);
}

static void test_hist_bins(void)
{
    tap_is_int(pi_sidecar_hist_bin(0.0f), 0, "hist: 0 in bin 0");
    tap_is_int(pi_sidecar_hist_bin(ldexpf(1.0f, -21)), 0, "hist: 2^-21 in bin 0");
    tap_is_int(pi_sidecar_hist_bin(ldexpf(1.0f, -20)), 1, "hist: 2^-20 opens bin 1");
    tap_is_int(pi_sidecar_hist_bin(1.0f), 41, "hist: 1.0 in bin 1 + 20/0.5");
    tap_is_int(pi_sidecar_hist_bin(1e30f), PI_SIDECAR_HIST_BINS - 1, "hist: huge in the last bin");
    tap_is_int(pi_sidecar_hist_bin(NAN), 0, "hist: NaN in bin 0");
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/pi-test-sidecar-XXXXXX");
    if (!mkdtemp(tmpdir)) tap_bail("mkdtemp failed");
    pi_model_t *a = gen_model("a.gguf", 1), *b = gen_model("b.gguf", 2);
    struct pi_model_identity ia, ia2, ib;
    pi_sidecar_identity(a->gguf, &ia);
    pi_sidecar_identity(a->gguf, &ia2);
    pi_sidecar_identity(b->gguf, &ib);
    tap_ok(ia.hash == ia2.hash && ia.size == ia2.size, "identity is deterministic");
    tap_ok(ia.size == ib.size && ia.hash != ib.hash, "same shape, other weights: same size, other hash");
    test_paths();
    test_hist_bins();
    test_round_trip(a, b);
    test_carry_over(a);
    test_malformed(a);
    test_thresholds(a);
    pi_model_destroy(&a);
    pi_model_destroy(&b);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) tap_diag("could not remove %s", tmpdir);
    return tap_done();
}
