/*
 * tests/unit/test-model.c - the model description (model/model.h): binding real files, the activation rules,
 * the packed ffn_down_t, PowerInfer's extras and its layout (ffn_down_t instead of ffn_down: ffn_down
 * built at load), and rejection of models whose tensors disagree with
 * their metadata (files made with the GGUF writer through pi_model_gen_write's test hooks).
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
#include "kernels/cpu/quant.h"
#include "tests/tap.h"

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

/* Worst difference between down_t row i and column i of down (d, ff), in units of the packing's
 * resolution: an 8-bit step of the 32-block (q8) or half an f16 ulp of the weight. */
static double down_t_error(const struct pi_layer *L, bool q8)
{
    int64_t d = L->ffn_down.rows, ff = L->ffn_down.cols;
    float *down = malloc((size_t)(d * ff) * sizeof *down), *row = malloc((size_t)d * sizeof *row);
    double worst = 0.0;
    for (int64_t r = 0; r < d; r++) pi_dequant_row(L->ffn_down.type, pi_weight_row(&L->ffn_down, r), down + r * ff, ff);
    for (int64_t i = 0; i < ff; i++) {
        pi_dequant_row(L->ffn_down_t.type, pi_weight_row(&L->ffn_down_t, i), row, d);
        for (int64_t b = 0; b < d; b += 32) {
            float amax = 0.0f;
            for (int64_t j = b; j < b + 32; j++) amax = fmaxf(amax, fabsf(down[j * ff + i]));
            for (int64_t j = b; j < b + 32; j++) {
                double x = down[j * ff + i];
                double unit = q8 ? amax / 127.0 + 1e-30 : fmax(fabs(x) * ldexp(1.0, -11), ldexp(1.0, -25));
                double e = fabs(row[j] - x) / unit;
                worst = e > worst ? e : worst;
            }
        }
    }
    free(down);
    free(row);
    return worst;
}

/* The tiny llama from tests/data: hyper-parameters as its converter wrote them, norms copied. */
static void test_tiny(void)
{
    char path[1024], err[256];
    pi_model_t *m = NULL;
    tap_data(path, sizeof path, "tiny-llama-q4_0.gguf");
    if (!tap_ok(pi_model_open(path, NULL, &m, err, sizeof err) == 0, "tiny-llama-q4_0 binds")) {
        tap_diag("  %s", err);
        tap_bail("cannot continue");
    }
    const struct pi_hparams *hp = &m->hp;
    tap_is_str(hp->arch, "llama", "arch");
    tap_ok(hp->n_vocab == 32000 && hp->n_embd == 64 && hp->n_layer == 4 && hp->n_ff == 256,
           "vocab 32000, embd 64, 4 layers, n_ff 256");
    tap_ok(hp->n_head == 4 && hp->n_head_kv == 2 && hp->head_dim == 16 && hp->n_rot == 16,
           "4 heads, 2 kv heads, head_dim 16, n_rot 16");
    tap_ok(fabsf(hp->rms_eps - 1e-5f) < 1e-9f && hp->rope_base == 10000.0f && hp->n_ctx_train == 512,
           "eps 1e-5, rope base 10000, context 512");
    tap_ok(hp->act == PI_FFN_ACT_SILU, "plain llama defaults to SiLU");
    tap_ok(!m->tied && m->output.type == PI_TYPE_Q8_0 && m->token_embd.type == PI_TYPE_Q4_0, "untied, output q8_0");
    const struct pi_gguf_tensor *t = pi_gguf_find_tensor(m->gguf, "blk.3.ffn_norm.weight");
    tap_ok(t && memcmp(t->data, m->layers[3].ffn_norm, 64 * sizeof(float)) == 0, "blk.3.ffn_norm copied");
    tap_ok(m->layers[1].attn_k.rows == 32 && m->layers[1].attn_k.cols == 64, "attn_k is (kv_dim 32, 64)");

    /* packed down_t row i == column i of down: as f16 (the default for quantised files) within f16
     * rounding of each weight (2^-11 relative; 2^-25 absolute for subnormals) */
    const struct pi_layer *L = &m->layers[2];
    tap_ok(L->ffn_down_t.type == PI_TYPE_F16 && !L->down_t_from_file, "down_t packed as f16");
    double worst = down_t_error(L, false);
    tap_ok(worst <= 1.0001, "down_t row i is column i of down (worst error %.3f of an f16 half-ulp)", worst);
    pi_model_destroy(&m);
    /* as Q8_0 on request: within half a step of the block, plus the step's own rounding to fp16
     * (127 * 2^-11 of a step, ggml stores d as fp16) */
    struct pi_model_opts o;
    pi_model_opts_default(&o);
    o.down_t_type = PI_TYPE_Q8_0;
    tap_ok(pi_model_open(path, &o, &m, err, sizeof err) == 0, "tiny-llama-q4_0 binds with a q8_0 down_t");
    L = &m->layers[2];
    tap_ok(L->ffn_down_t.type == PI_TYPE_Q8_0 && !L->down_t_from_file, "down_t packed as q8_0 on request");
    worst = down_t_error(L, true);
    tap_ok(worst <= 0.57, "q8_0 down_t row i is column i of down (worst error %.3f of a q8 step)", worst);
    tap_ok(pi_model_decode_bytes(m) > 0, "decode bytes %llu", (unsigned long long)pi_model_decode_bytes(m));
    pi_model_destroy(&m);

    /* grouped on request (kernels/cpu/quant.h): row i is column i of the file's down, every value exact,
     * for Q4_0 and Q8_0 files; the scales at gscale */
    static const char *const gfiles[] = {"tiny-llama-q4_0.gguf", "demo-relu-q4_0.gguf", "models/tiny-llama-q8_0.gguf"};
    for (size_t f = 0; f < PI_ARRAY_LEN(gfiles); f++) {
        pi_model_opts_default(&o);
        o.down_t_grouped = true;
        if (f < 2) tap_data(path, sizeof path, gfiles[f]);
        else if (!tap_fixture(path, sizeof path, gfiles[f])) {
            tap_skip(1, "no shared fixtures (PI_FIXTURES)");
            continue;
        }
        if (!tap_ok(pi_model_open(path, &o, &m, err, sizeof err) == 0, "%s binds with grouped down_t", gfiles[f])) continue;
        int64_t d = m->hp.n_embd, ff = m->hp.n_ff, bad = 0, grouped = 0;
        float *col = malloc((size_t)ff * sizeof *col), *y = malloc((size_t)d * sizeof *y);
        for (int il = 0; il < m->hp.n_layer; il++) {
            L = &m->layers[il];
            const struct pi_weight *dt = &L->ffn_down_t;
            grouped += dt->gscale && dt->type == L->ffn_down.type && dt->rows == ff && dt->cols == d &&
                       dt->row_bytes == pi_grouped_row_bytes(dt->type, d);
            for (int64_t i = 0; dt->gscale && i < ff; i++) {
                const void *row[4] = {pi_weight_row(dt, i)};
                const uint16_t *sc[4] = {pi_weight_gscale(dt, i)};
                const float a[4] = {1.0f};
                memset(y, 0, (size_t)d * sizeof *y);
                pi_vec_madg4(dt->type, row, sc, a, 1, NULL, y, d);
                for (int64_t r = 0; r < d; r++) {
                    pi_dequant_row(L->ffn_down.type, pi_weight_row(&L->ffn_down, r), col, ff);
                    bad += y[r] != col[i];
                }
            }
        }
        tap_ok(grouped == m->hp.n_layer && bad == 0, "%s: %lld of %d layers grouped, every down value exact (%lld differ)",
               gfiles[f], (long long)grouped, m->hp.n_layer, (long long)bad);
        free(col), free(y);
        pi_model_destroy(&m);
    }
    /* another type keeps f16 rows */
    pi_model_opts_default(&o);
    o.down_t_grouped = true;
    if (!tap_fixture(path, sizeof path, "models/tiny-llama-f16.gguf")) {
        tap_skip(1, "no shared fixtures (PI_FIXTURES)");
    } else {
        tap_ok(pi_model_open(path, &o, &m, err, sizeof err) == 0 && !m->layers[0].ffn_down_t.gscale &&
                   m->layers[0].ffn_down_t.type == PI_TYPE_F16,
               "an f16 file's down_t stays f16 rows with grouped asked for");
        pi_model_destroy(&m);
    }
    tap_ok(m == NULL, "destroy NULLs the pointer");
    pi_model_destroy(&m);
}

static void test_activation_rules(void)
{
    char path[1024], err[256];
    pi_model_t *m = NULL;
    struct pi_model_opts o;
    tap_data(path, sizeof path, "demo-relu-q4_0.gguf");
    tap_ok(pi_model_open(path, NULL, &m, err, sizeof err) == 0 && m->hp.act == PI_FFN_ACT_RELU,
           "demo: pinfer.ffn_activation = relu is read");
    pi_model_destroy(&m);
    pi_model_opts_default(&o);
    o.act = PI_FFN_ACT_DRELU;
    o.no_down_t = true;
    tap_ok(pi_model_open(path, &o, &m, err, sizeof err) == 0 && m->hp.act == PI_FFN_ACT_DRELU &&
               m->layers[0].ffn_down_t.data == NULL,
           "the option overrides the file; no_down_t skips packing");
    pi_model_destroy(&m);
    enum pi_ffn_act a;
    tap_ok(pi_ffn_act_parse("ReLU", &a) == 0 && a == PI_FFN_ACT_RELU && pi_ffn_act_parse("gelu", &a) < 0,
           "activation names parse");
}

static struct pi_model_gen small(void)
{
    struct pi_model_gen g = {0};
    g.n_vocab = 96;
    g.n_embd = 64;
    g.n_layer = 2;
    g.n_ff = 96;
    g.n_head = 4;
    g.n_head_kv = 2;
    g.type = PI_TYPE_F16;
    g.seed = 42;
    return g;
}

/* Load a generated model; returns the error code, err holds the message. */
static int load_gen(const struct pi_model_gen *g, const char *name, pi_model_t **m, char *err, size_t len)
{
    const char *p = tmp_path(name);
    if (pi_model_gen_write(g, p) < 0) {
        snprintf(err, len, "(could not write %.200s)", p);
        return 1;
    }
    return pi_model_open(p, NULL, m, err, len);
}

/* The generator's bytes are a function of the seed alone: one thread and three write the same file,
 * for a plain model and a locality model with exact predictors (whose embedding statistics and gate
 * rewrite run per row), in Q4_0. */
static void test_gen_threads(void)
{
    for (int loc = 0; loc < 2; loc++) {
        struct pi_model_gen g = small();
        g.type = PI_TYPE_Q4_0;
        g.n_embd = 128, g.n_ff = 320, g.n_vocab = 300;
        if (loc) g.locality = true, g.gate_rank = 4, g.pred_exact = true, g.pred_rank = 9, g.act = PI_FFN_ACT_RELU;
        char a[600], b[600];
        snprintf(a, sizeof a, "%s", tmp_path("t1.gguf"));
        snprintf(b, sizeof b, "%s", tmp_path("t3.gguf"));
        g.n_threads = 1;
        int ra = pi_model_gen_write(&g, a);
        g.n_threads = 3;
        int rb = pi_model_gen_write(&g, b);
        FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
        bool same = ra == 0 && rb == 0 && fa && fb;
        long n = 0;
        for (int ca = 0, cb = 0; same && ca != EOF; n++) {
            ca = fgetc(fa), cb = fgetc(fb);
            same = ca == cb;
        }
        tap_ok(same && n > 100000, "%s model: 1 and 3 generating threads write the same %ld bytes",
               loc ? "a locality" : "a plain", n - 1);
        if (fa) fclose(fa);
        if (fb) fclose(fb);
    }
}

static void test_generated(void)
{
    char err[256];
    pi_model_t *m = NULL;
    struct pi_model_gen g = small();
    g.tied = true;
    g.pred_rank = 8;
    g.n_tokens = 96; /* a tokenizer vocabulary matching token_embd's rows */
    int rc = load_gen(&g, "ok.gguf", &m, err, sizeof err);
    if (!tap_ok(rc == 0, "generated f16 model binds")) {
        tap_diag("  %s", err);
        return;
    }
    tap_ok(m->tied && m->output.data == m->token_embd.data, "no output.weight: tied to token_embd");
    tap_ok(m->layers[1].fc1.rows == 8 && m->layers[1].fc2.rows == 96 && m->layers[1].fc2.cols == 8,
           "predictor fc1 (8, 64) and fc2 (96, 8) bound");
    /* an f16 down_t is an exact transpose */
    const struct pi_layer *L = &m->layers[0];
    int exact = L->ffn_down_t.type == PI_TYPE_F16;
    for (int64_t i = 0; i < 96 && exact; i++)
        for (int64_t j = 0; j < 64 && exact; j++) {
            uint16_t a, b;
            memcpy(&a, (const char *)pi_weight_row(&L->ffn_down_t, i) + 2 * j, 2);
            memcpy(&b, (const char *)pi_weight_row(&L->ffn_down, j) + 2 * i, 2);
            exact = a == b;
        }
    tap_ok(exact, "f16 down_t is the exact transpose of down");
    pi_model_destroy(&m);

    g = small();
    g.down_t = true;
    g.arch = "bamboo";
    rc = load_gen(&g, "dt.gguf", &m, err, sizeof err);
    tap_ok(rc == 0 && m->layers[1].down_t_from_file && m->packed == NULL, "ffn_down_t taken from the file");
    tap_ok(rc == 0 && m->hp.act == PI_FFN_ACT_RELU, "bamboo defaults to ReLU");
    pi_model_destroy(&m);

    /* PowerInfer's magic: the same file with "PWRI" is a ReLU model by default */
    g = small();
    const char *p = tmp_path("pwri.gguf");
    FILE *fp = NULL;
    if (pi_model_gen_write(&g, p) == 0 && (fp = fopen(p, "r+b")) != NULL) {
        fwrite("PWRI", 1, 4, fp);
        fclose(fp);
    }
    rc = pi_model_open(p, NULL, &m, err, sizeof err);
    tap_ok(rc == 0 && m->hp.flavour == PI_GGUF_FLAVOUR_POWERINFER && m->hp.act == PI_FFN_ACT_RELU,
           "PowerInfer flavour defaults to ReLU");
    if (rc) tap_diag("  %s", err);
    pi_model_destroy(&m);
}

/* Worst difference between the built ffn_down (d, ff) and the transpose of the file's ffn_down_t
 * (ff, d), against the source's values in float64 (a dequantised Q4_0/Q8_0 weight, scale times an
 * integer of at most 8 bits, is exact in float), in units of the built type's resolution: half an f16
 * ulp of the weight (2^-11 relative, 2^-25 absolute for subnormals), or an 8-bit step of the built
 * row's 32-block (q8). */
static double built_down_error(const struct pi_layer *L, bool q8)
{
    int64_t d = L->ffn_down.rows, ff = L->ffn_down.cols;
    float *src = malloc((size_t)(d * ff) * sizeof *src), *row = malloc((size_t)ff * sizeof *row);
    double worst = 0.0;
    for (int64_t i = 0; i < ff; i++)
        pi_dequant_row(L->ffn_down_t.type, pi_weight_row(&L->ffn_down_t, i), src + i * d, d);
    for (int64_t r = 0; r < d; r++) {
        pi_dequant_row(L->ffn_down.type, pi_weight_row(&L->ffn_down, r), row, ff);
        for (int64_t b = 0; b < ff; b += 32) {
            double amax = 0.0;
            for (int64_t i = b; i < b + 32 && i < ff; i++) amax = fmax(amax, fabs((double)src[i * d + r]));
            for (int64_t i = b; i < b + 32 && i < ff; i++) {
                double x = (double)src[i * d + r];
                double unit = q8 ? amax / 127.0 + 1e-30 : fmax(fabs(x) * ldexp(1.0, -11), ldexp(1.0, -25));
                worst = fmax(worst, fabs((double)row[i] - x) / unit);
            }
        }
    }
    free(src);
    free(row);
    return worst;
}

/* Whether p lies in the mapping of the file m was bound from. */
static bool in_file(const pi_model_t *m, const void *p)
{
    const char *base = pi_gguf_base(m->gguf);
    return (const char *)p >= base && (const char *)p < base + pi_gguf_file_size(m->gguf);
}

/* PowerInfer's tensor set (pi_model_gen powerinfer: ffn_down_t and no ffn_down): ffn_down is built at
 * load, outside the mapping, as the transpose of ffn_down_t: f16 for a quantised file within f16
 * rounding, the same bits as the file written with ffn_down from the same seed for f16 and f32, q8_0
 * on request; with no_down_t too. */
static void test_powerinfer_layout(void)
{
    char err[256];
    pi_model_t *m = NULL, *ref = NULL;
    struct pi_model_gen g = small();
    g.type = PI_TYPE_Q4_0;
    g.powerinfer = true;
    g.pred_rank = 8;
    int rc = load_gen(&g, "pwri-q4.gguf", &m, err, sizeof err);
    if (!tap_ok(rc == 0, "a PWRI q4_0 file without ffn_down binds")) {
        tap_diag("  %s", err);
        return;
    }
    /* PowerInfer's loader wants exactly these: 3 + n_layer x 11 tensors (its "wrong number of tensors") */
    tap_ok(pi_gguf_n_tensors(m->gguf) == 3 + 2 * 11 && !pi_gguf_find_tensor(m->gguf, "blk.0.ffn_down.weight") &&
               pi_gguf_find_tensor(m->gguf, "blk.1.ffn_down_t.weight") && m->hp.flavour == PI_GGUF_FLAVOUR_POWERINFER,
           "the generated file holds PowerInfer's set: ffn_down_t, no ffn_down (%llu tensors)",
           (unsigned long long)pi_gguf_n_tensors(m->gguf));
    int flags = 1, outside = 1;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        flags &= L->down_built && L->down_t_from_file && L->ffn_down_t.type == PI_TYPE_Q4_0;
        const char *p = L->ffn_down.data, *pk = m->packed;
        outside &= p && !in_file(m, p) && in_file(m, L->ffn_down_t.data) && p >= pk &&
                   p + L->ffn_down.row_bytes * 64 <= pk + m->packed_bytes;
    }
    tap_ok(flags, "every layer: down_built, ffn_down_t from the file (q4_0)");
    tap_ok(outside, "the built ffn_down lies in the model's own allocation, ffn_down_t in the file");
    const struct pi_layer *L = &m->layers[1];
    tap_ok(L->ffn_down.type == PI_TYPE_F16 && L->ffn_down.rows == 64 && L->ffn_down.cols == 96 &&
               L->ffn_down.row_bytes == 96 * 2,
           "built ffn_down is f16 (64, 96)");
    double worst = 0;
    for (int il = 0; il < m->hp.n_layer; il++) worst = fmax(worst, built_down_error(&m->layers[il], false));
    tap_ok(worst <= 1.0001, "built ffn_down == ffn_down_t transposed (worst error %.3f of an f16 half-ulp)", worst);
    pi_model_destroy(&m);

    struct pi_model_opts o;
    pi_model_opts_default(&o);
    o.no_down_t = true;
    o.n_threads = 1;
    rc = pi_model_open(tmp_path("pwri-q4.gguf"), &o, &m, err, sizeof err);
    tap_ok(rc == 0 && m->layers[0].down_built && m->layers[0].ffn_down.data && m->layers[0].down_t_from_file,
           "no_down_t: ffn_down is built all the same");
    pi_model_destroy(&m);
    o.no_down_build = true; /* the coordinator of a pipeline, pi-place */
    rc = pi_model_open(tmp_path("pwri-q4.gguf"), &o, &m, err, sizeof err);
    const struct pi_weight *bd = rc == 0 ? &m->layers[0].ffn_down : NULL;
    tap_ok(bd && m->layers[0].down_built && !bd->data && bd->type == PI_TYPE_F16 && bd->rows == m->hp.n_embd &&
               bd->cols == m->hp.n_ff && !m->packed,
           "no_down_build: ffn_down described (f16, n_embd x n_ff) but not built, nothing packed");
    pi_model_destroy(&m);
    o.no_down_build = false;
    o.no_down_t = false;
    o.down_t_type = PI_TYPE_Q8_0;
    rc = pi_model_open(tmp_path("pwri-q4.gguf"), &o, &m, err, sizeof err);
    tap_ok(rc == 0 && m->layers[0].ffn_down.type == PI_TYPE_Q8_0 && built_down_error(&m->layers[0], true) <= 0.57,
           "down_t_type q8_0: ffn_down built as q8_0 within half a step (+ the f16 scale's rounding)");
    pi_model_destroy(&m);

    /* f16 and f32: the same seed written with ffn_down (and ffn_down_t) gives the same bits */
    const enum pi_type types[] = {PI_TYPE_F16, PI_TYPE_F32};
    for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
        g = small();
        g.type = types[k];
        g.seed = 7;
        g.powerinfer = true;
        int rc1 = load_gen(&g, "pwri.gguf", &m, err, sizeof err);
        g.powerinfer = false;
        g.down_t = true;
        int rc2 = load_gen(&g, "dt.gguf", &ref, err, sizeof err);
        int same = rc1 == 0 && rc2 == 0 && !ref->layers[0].down_built && ref->layers[0].down_t_from_file;
        for (int il = 0; same && il < m->hp.n_layer; il++) {
            const struct pi_layer *A = &m->layers[il], *B = &ref->layers[il];
            same = A->ffn_down.type == B->ffn_down.type && A->ffn_down.row_bytes == B->ffn_down.row_bytes &&
                   memcmp(A->ffn_down_t.data, B->ffn_down_t.data, B->ffn_down_t.row_bytes * 96) == 0 &&
                   memcmp(A->ffn_down.data, B->ffn_down.data, B->ffn_down.row_bytes * 64) == 0 &&
                   memcmp(A->ffn_gate.data, B->ffn_gate.data, B->ffn_gate.row_bytes * 96) == 0 &&
                   memcmp(A->attn_q.data, B->attn_q.data, B->attn_q.row_bytes * 64) == 0;
        }
        tap_ok(same, "%s: built ffn_down == the ffn_down written from the same seed, bit for bit (and other weights)",
               pi_type_name(types[k]));
        pi_model_destroy(&m);
        pi_model_destroy(&ref);
    }
}

struct broken {
    const char *what;
    void (*edit)(struct pi_model_gen *g);
    const char *expect1, *expect2; /* substrings of the message */
};

static void e_missing(struct pi_model_gen *g) { g->omit = "blk.1.ffn_up.weight"; }
static void e_shape(struct pi_model_gen *g) { g->reshape = "blk.0.attn_k.weight"; }
static void e_embd_shape(struct pi_model_gen *g) { g->reshape = "output.weight"; }
static void e_norm(struct pi_model_gen *g) { g->omit = "output_norm.weight"; }
static void e_heads(struct pi_model_gen *g) { g->bad_key = "llama.attention.head_count"; g->bad_value = 6; }
static void e_kv_heads(struct pi_model_gen *g) { g->bad_key = "llama.attention.head_count_kv"; g->bad_value = 3; }
static void e_zero_layers(struct pi_model_gen *g) { g->bad_key = "llama.block_count"; g->bad_value = 0; }
static void e_more_layers(struct pi_model_gen *g) { g->bad_key = "llama.block_count"; g->bad_value = 3; }
static void e_ff(struct pi_model_gen *g) { g->bad_key = "llama.feed_forward_length"; g->bad_value = 100; }
static void e_rot(struct pi_model_gen *g) { g->bad_key = "llama.rope.dimension_count"; g->bad_value = 15; }
static void e_arch(struct pi_model_gen *g) { g->arch = "gpt2"; }
static void e_fc(struct pi_model_gen *g) { g->pred_rank = 4; g->omit = "blk.0.fc1.weight"; }
static void e_down_t(struct pi_model_gen *g) { g->down_t = true; g->reshape = "blk.1.ffn_down_t.weight"; }
static void e_type(struct pi_model_gen *g) { g->type = PI_TYPE_Q8_1; }
/* hostile hyper-parameters in a valid container */
static void e_no_heads(struct pi_model_gen *g) { g->bad_key = "llama.attention.head_count"; g->bad_value = 0; }
static void e_no_kv_heads(struct pi_model_gen *g) { g->bad_key = "llama.attention.head_count_kv"; g->bad_value = 0; }
static void e_huge_layers(struct pi_model_gen *g) { g->bad_key = "llama.block_count"; g->bad_value = 4096; }
static void e_absurd_layers(struct pi_model_gen *g) { g->bad_key = "llama.block_count"; g->bad_value = 0xffffffffu; }
static void e_huge_embd(struct pi_model_gen *g) { g->bad_key = "llama.embedding_length"; g->bad_value = 1u << 20; }
static void e_odd_head_dim(struct pi_model_gen *g) { g->bad_key = "llama.attention.key_length"; g->bad_value = 15; }
static void e_rot_big(struct pi_model_gen *g) { g->bad_key = "llama.rope.dimension_count"; g->bad_value = 18; }
static void e_rot_zero(struct pi_model_gen *g) { g->bad_key = "llama.rope.dimension_count"; g->bad_value = 0; }
static void e_key_val(struct pi_model_gen *g) { g->bad_key = "llama.attention.value_length"; g->bad_value = 8; }
static void e_eps_neg(struct pi_model_gen *g) { g->bad_fkey = "llama.attention.layer_norm_rms_epsilon"; g->bad_fvalue = -1e-5f; }
static void e_eps_nan(struct pi_model_gen *g) { g->bad_fkey = "llama.attention.layer_norm_rms_epsilon"; g->bad_fvalue = NAN; }
static void e_eps_zero(struct pi_model_gen *g) { g->bad_fkey = "llama.attention.layer_norm_rms_epsilon"; g->bad_fvalue = 0.0f; }
static void e_head_dim_huge(struct pi_model_gen *g) { g->bad_key = "llama.attention.key_length"; g->bad_value = 1u << 20; }
static void e_attn_wide(struct pi_model_gen *g) { g->bad_key = "llama.attention.key_length"; g->bad_value = 256; }
static void e_act_nul(struct pi_model_gen *g) { g->bad_skey = "pinfer.ffn_activation"; g->bad_svalue = "relu\0xxx"; g->bad_slen = 8; }
static void e_base_zero(struct pi_model_gen *g) { g->bad_fkey = "llama.rope.freq_base"; g->bad_fvalue = 0.0f; }
static void e_base_neg(struct pi_model_gen *g) { g->bad_fkey = "llama.rope.freq_base"; g->bad_fvalue = -10000.0f; }
static void e_base_nan(struct pi_model_gen *g) { g->bad_fkey = "llama.rope.freq_base"; g->bad_fvalue = NAN; }
static void e_base_inf(struct pi_model_gen *g) { g->bad_fkey = "llama.rope.freq_base"; g->bad_fvalue = INFINITY; }
/* a layer-0 shape error and a missing layer-1 norm: the norms are all checked first, before anything
 * sized by block_count x embedding_length is allocated */
static void e_norm_first(struct pi_model_gen *g) { g->omit = "blk.1.attn_norm.weight"; g->reshape = "blk.0.attn_q.weight"; }
static void e_threshold(struct pi_model_gen *g) { g->bad_fkey = "powerinfer.sparse_threshold"; g->bad_fvalue = NAN; }
static void e_tokens(struct pi_model_gen *g) { g->n_tokens = 97; }
static void e_int_weight(struct pi_model_gen *g) { g->retype = "blk.0.attn_q.weight"; g->retype_as = PI_TYPE_I32; }
static void e_int_embd(struct pi_model_gen *g) { g->retype = "token_embd.weight"; g->retype_as = PI_TYPE_I8; }
static void e_int_norm(struct pi_model_gen *g) { g->retype = "blk.1.ffn_norm.weight"; g->retype_as = PI_TYPE_I16; }
static void e_f64_down_t(struct pi_model_gen *g) { g->down_t = true; g->retype = "blk.0.ffn_down_t.weight"; g->retype_as = PI_TYPE_F64; }
static void e_down_t_cols(struct pi_model_gen *g) { g->down_t = true; g->reshape = "blk.0.ffn_down.weight"; }
static void e_no_down(struct pi_model_gen *g) { g->omit = "blk.1.ffn_down.weight"; }
static void e_pwri_down_t(struct pi_model_gen *g) { g->powerinfer = true; g->reshape = "blk.1.ffn_down_t.weight"; }
static void e_pwri_f64(struct pi_model_gen *g)
{
    g->powerinfer = true;
    g->retype = "blk.0.ffn_down_t.weight";
    g->retype_as = PI_TYPE_F64;
}

static const struct broken broken[] = {
    {"missing tensor", e_missing, "blk.1.ffn_up.weight", "missing"},
    {"wrong shape", e_shape, "blk.0.attn_k.weight: shape (33, 64)", "expected (32, 64)"},
    {"wrong output shape", e_embd_shape, "output.weight: shape (97, 64)", "expected (96, 64)"},
    {"missing norm", e_norm, "output_norm.weight", "missing"},
    {"head count not dividing n_embd", e_heads, "embedding_length 64", "head_count 6"},
    {"kv heads not dividing heads", e_kv_heads, "head_count 4", "head_count_kv 3"},
    {"zero layers", e_zero_layers, "block_count", "outside"},
    {"more layers than tensors", e_more_layers, "blk.2.", "missing"},
    {"n_ff disagrees with ffn_gate", e_ff, "blk.0.ffn_gate.weight", "expected (100, 64)"},
    {"odd rope dimension", e_rot, "rope.dimension_count", "odd"},
    {"unsupported architecture", e_arch, "gpt2", "not supported"},
    {"fc2 without fc1", e_fc, "blk.0.fc2.weight", "without"},
    {"ffn_down_t wrong shape", e_down_t, "blk.1.ffn_down_t.weight", "expected (96, 64)"},
    {"matrix type without kernels", e_type, "q8_1", "not supported"},
    {"zero heads", e_no_heads, "attention.head_count = 0", "outside"},
    {"zero kv heads", e_no_kv_heads, "attention.head_count_kv = 0", "outside"},
    {"4096 layers in a 2-layer file (before allocating norms)", e_huge_layers, "blk.2.attn_norm.weight", "missing"},
    {"block_count 2^32 - 1", e_absurd_layers, "block_count = 4294967295", "outside"},
    {"n_embd 2^20 against the tensors", e_huge_embd, "output_norm.weight: shape (64)", "expected (1048576)"},
    {"odd head_dim (rope default)", e_odd_head_dim, "rope.dimension_count = 16", "outside [2, 15]"},
    {"rope dimension > head_dim", e_rot_big, "rope.dimension_count = 18", "outside [2, 16]"},
    {"rope dimension 0", e_rot_zero, "rope.dimension_count = 0", "outside"},
    {"value_length != key_length", e_key_val, "value_length 8", "key_length 16"},
    {"negative rms epsilon", e_eps_neg, "layer_norm_rms_epsilon", "out of range"},
    {"NaN rms epsilon", e_eps_nan, "layer_norm_rms_epsilon", "out of range"},
    {"zero rms epsilon", e_eps_zero, "layer_norm_rms_epsilon 0", "out of range"},
    {"head size 2^20 (the attention scratch of a small file)", e_head_dim_huge, "attention.key_length = 1048576", "outside"},
    {"attention 8+ times wider than n_embd", e_attn_wide, "attention width 256 x 4 heads", "8 times"},
    {"ffn_activation with a NUL byte", e_act_nul, "pinfer.ffn_activation", "NUL"},
    {"rope freq_base 0", e_base_zero, "rope.freq_base 0", "out of range"},
    {"negative rope freq_base", e_base_neg, "rope.freq_base -10000", "out of range"},
    {"NaN rope freq_base", e_base_nan, "rope.freq_base", "out of range"},
    {"infinite rope freq_base", e_base_inf, "rope.freq_base", "out of range"},
    {"norms found before any layer is bound", e_norm_first, "blk.1.attn_norm.weight", "missing"},
    {"NaN sparse threshold", e_threshold, "powerinfer.sparse_threshold nan", "not finite"},
    {"tokenizer vocabulary != token_embd rows", e_tokens, "tokenizer.ggml.tokens has 97", "96 rows"},
    {"integer weight matrix", e_int_weight, "blk.0.attn_q.weight: type i32", "not supported"},
    {"integer token_embd", e_int_embd, "token_embd.weight: type i8", "not supported"},
    {"integer norm vector", e_int_norm, "blk.1.ffn_norm.weight: type i16", "not supported"},
    {"f64 ffn_down_t", e_f64_down_t, "blk.0.ffn_down_t.weight: type f64", "not supported"},
    {"ffn_down disagrees with ffn_down_t", e_down_t_cols, "blk.0.ffn_down.weight: shape (65, 96)", "expected (64, 96)"},
    {"neither ffn_down nor ffn_down_t", e_no_down, "blk.1.ffn_down.weight missing", "no blk.1.ffn_down_t.weight"},
    {"PWRI: ffn_down_t wrong shape", e_pwri_down_t, "blk.1.ffn_down_t.weight: shape (97, 64)", "expected (96, 64)"},
    {"PWRI: f64 ffn_down_t", e_pwri_f64, "blk.0.ffn_down_t.weight: type f64", "not supported"},
};

static void test_broken(void)
{
    char err[256];
    for (size_t i = 0; i < PI_ARRAY_LEN(broken); i++) {
        pi_model_t *m = NULL;
        struct pi_model_gen g = small();
        broken[i].edit(&g);
        int rc = load_gen(&g, "bad.gguf", &m, err, sizeof err);
        int ok = rc < 0 && m == NULL && strstr(err, broken[i].expect1) && strstr(err, broken[i].expect2);
        tap_ok(ok, "rejected: %s", broken[i].what);
        if (!ok) tap_diag("  rc %d, message \"%s\"", rc, err);
        pi_model_destroy(&m);
    }
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/pi-test-model-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) tap_bail("mkdtemp failed");
    test_tiny();
    test_activation_rules();
    test_generated();
    test_gen_threads();
    test_powerinfer_layout();
    test_broken();
    const char *names[] = {"ok.gguf", "dt.gguf", "pwri.gguf", "pwri-q4.gguf", "bad.gguf"};
    for (size_t i = 0; i < PI_ARRAY_LEN(names); i++) unlink(tmp_path(names[i]));
    rmdir(tmpdir);
    return tap_done();
}
