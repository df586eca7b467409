/*
 * tests/unit/test-tensor-check.c - NaN and infinity in a model file's tensors (model/tensor-check.h).
 *
 * Checked:
 *   - every type with floating-point fields: a tensor whose fields are finite passes, and a NaN, +inf
 *     or -inf in any one scale field (each of d, m, dmin, s) or element is refused with a line naming
 *     the tensor, the block and the value; the quantised types' other bytes are all 0xff (NaN were
 *     they read as a scale), so a wrong offset in the table fails here; integer tensors are not read;
 *   - the depths: a NaN in the first or last block, or at the start of any of the sampled windows, is
 *     found by both; one between two windows passes the sampled check and not the full one;
 *   - the loader: a generated model with a NaN in a weight is refused by pi_model_open (by default, or
 *     with full when the NaN lies between windows), naming the tensor (issue 20, defect 10: such a
 *     file used to load and produce garbage with exit 0).
 */
#include "config.h"
#include "model/gguf.h"
#include "model/model-gen.h"
#include "model/model.h"
#include "model/tensor-check.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/types.h"
#include "tests/tap.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct case_type {
    enum pi_type type;
    int n;         /* float fields per block */
    size_t off[2]; /* their offsets */
    int width;     /* bytes of a field: 2 (f16, bf16), 4 (f32), 8 (f64) */
    bool bf16;
};

static const struct case_type cases[] = {
    {PI_TYPE_F32, 1, {0, 0}, 4, false},
    {PI_TYPE_F16, 1, {0, 0}, 2, false},
    {PI_TYPE_BF16, 1, {0, 0}, 2, true},
    {PI_TYPE_F64, 1, {0, 0}, 8, false},
    {PI_TYPE_Q4_0, 1, {offsetof(struct pi_block_q4_0, d), 0}, 2, false},
    {PI_TYPE_Q4_1, 2, {offsetof(struct pi_block_q4_1, d), offsetof(struct pi_block_q4_1, m)}, 2, false},
    {PI_TYPE_Q5_0, 1, {offsetof(struct pi_block_q5_0, d), 0}, 2, false},
    {PI_TYPE_Q5_1, 2, {offsetof(struct pi_block_q5_1, d), offsetof(struct pi_block_q5_1, m)}, 2, false},
    {PI_TYPE_Q8_0, 1, {offsetof(struct pi_block_q8_0, d), 0}, 2, false},
    {PI_TYPE_Q8_1, 2, {offsetof(struct pi_block_q8_1, d), offsetof(struct pi_block_q8_1, s)}, 2, false},
    {PI_TYPE_Q2_K, 2, {offsetof(struct pi_block_q2_K, d), offsetof(struct pi_block_q2_K, dmin)}, 2, false},
    {PI_TYPE_Q3_K, 1, {offsetof(struct pi_block_q3_K, d), 0}, 2, false},
    {PI_TYPE_Q4_K, 2, {offsetof(struct pi_block_q4_K, d), offsetof(struct pi_block_q4_K, dmin)}, 2, false},
    {PI_TYPE_Q5_K, 2, {offsetof(struct pi_block_q5_K, d), offsetof(struct pi_block_q5_K, dmin)}, 2, false},
    {PI_TYPE_Q6_K, 1, {offsetof(struct pi_block_q6_K, d), 0}, 2, false},
    {PI_TYPE_Q8_K, 1, {offsetof(struct pi_block_q8_K, d), 0}, 4, false},
};

/* The bytes of a finite value (1.0), NaN, +inf and -inf in a field of c's kind. */
enum val { V_ONE, V_NAN, V_INF, V_NINF };
static void put(const struct case_type *c, uint8_t *p, enum val v)
{
    if (c->width == 2) {
        static const uint16_t f16[] = {0x3c00, 0x7e00, 0x7c00, 0xfc00}, bf16[] = {0x3f80, 0x7fc0, 0x7f80, 0xff80};
        memcpy(p, c->bf16 ? &bf16[v] : &f16[v], 2);
    } else if (c->width == 4) {
        static const uint32_t f32[] = {0x3f800000u, 0x7fc00000u, 0x7f800000u, 0xff800000u};
        memcpy(p, &f32[v], 4);
    } else {
        static const uint64_t f64[] = {0x3ff0000000000000ull, 0x7ff8000000000000ull, 0x7ff0000000000000ull,
                                       0xfff0000000000000ull};
        memcpy(p, &f64[v], 8);
    }
}

/* A tensor of n_blocks blocks of c's type over buf: quantised bytes 0xff, every float field 1.0. */
static struct pi_gguf_tensor make(const struct case_type *c, uint8_t *buf, uint64_t n_blocks)
{
    const struct pi_type_info *ti = pi_type_get(c->type);
    memset(buf, 0xff, n_blocks * ti->block_bytes);
    for (uint64_t b = 0; b < n_blocks; b++)
        for (int i = 0; i < c->n; i++) put(c, buf + b * ti->block_bytes + c->off[i], V_ONE);
    struct pi_gguf_tensor t = {.name = {"w", 1}, .n_dims = 1, .type = c->type, .data = buf};
    t.ne[0] = n_blocks * ti->block_elems;
    t.ne[1] = t.ne[2] = t.ne[3] = 1;
    t.n_elems = t.ne[0];
    t.n_bytes = n_blocks * ti->block_bytes;
    return t;
}

static void test_types(void)
{
    enum { NB = 7 };
    static uint8_t buf[NB * sizeof(struct pi_block_q8_K)];
    static const char *const vname[] = {"", "nan", "inf", "inf"};
    for (size_t k = 0; k < PI_ARRAY_LEN(cases); k++) {
        const struct case_type *c = &cases[k];
        const size_t bb = pi_type_get(c->type)->block_bytes;
        char err[256] = "";
        struct pi_gguf_tensor t = make(c, buf, NB);
        int rc_ok = pi_tensor_check(&t, PI_TENSOR_CHECK_FULL, err, sizeof err);
        bool all = true;
        for (int i = 0; i < c->n; i++)
            for (int v = V_NAN; v <= V_NINF; v++) {
                make(c, buf, NB);
                put(c, buf + 5 * bb + c->off[i], (enum val)v);
                int rc = pi_tensor_check(&t, PI_TENSOR_CHECK_FULL, err, sizeof err);
                char want[64];
                snprintf(want, sizeof want, " 5 of %d ", NB);
                const bool good = rc == -PI_ERR_FORMAT && strstr(err, want) && strstr(err, vname[v]) &&
                                  strncmp(err, "w (", 3) == 0 && strstr(err, pi_type_name(c->type));
                if (!good) tap_diag("%s field %d value %d: rc %d, \"%s\"", pi_type_name(c->type), i, v, rc, err);
                all &= good;
            }
        tap_ok(rc_ok == 0 && all,
               "%s: finite fields pass (the other bytes 0xff), NaN/+inf/-inf in each of its %d field(s) refused (%s)",
               pi_type_name(c->type), c->n, err);
    }
    /* integers: nothing to read (bytes that would be NaN as any float) */
    memset(buf, 0xff, sizeof buf);
    struct pi_gguf_tensor t = {.name = {"i", 1}, .n_dims = 1, .type = PI_TYPE_I16, .data = buf, .n_bytes = 64};
    t.ne[0] = t.n_elems = 32;
    t.ne[1] = t.ne[2] = t.ne[3] = 1;
    tap_is_int(pi_tensor_check(&t, PI_TENSOR_CHECK_FULL, NULL, 0), 0, "an i16 tensor is not read as floats");
    tap_is_int(pi_tensor_check(&t, (enum pi_tensor_check)7, NULL, 0), -PI_ERR_INVAL,
               "a mode outside the enum: -PI_ERR_INVAL");
}

/* The sampled windows: where the NaN is found and where it is not. */
static void test_depths(void)
{
    const struct case_type *c = &cases[0]; /* f32: a block is one element */
    const uint64_t w = PI_TENSOR_CHECK_WINDOW_BYTES / 4, n = 40 * w + 123, span = n - w;
    uint8_t *buf = malloc(n * 4);
    if (!buf) tap_bail("out of memory");
    struct pi_gguf_tensor t = make(c, buf, n);
    char err[256];
    tap_ok(pi_tensor_check(&t, PI_TENSOR_CHECK_SAMPLED, err, sizeof err) == 0 &&
               pi_tensor_check(&t, PI_TENSOR_CHECK_FULL, err, sizeof err) == 0,
           "a finite f32 tensor of %llu elements passes both depths", (unsigned long long)n);
    /* the start and the end of each window are read (window k starts at k span / 15) */
    bool each = true;
    for (uint64_t k = 0; k < PI_TENSOR_CHECK_WINDOWS; k++) {
        const uint64_t b0 = k * span / (PI_TENSOR_CHECK_WINDOWS - 1);
        for (int e = 0; e < 2; e++) {
            const uint64_t at = e ? b0 + w - 1 : b0;
            make(c, buf, n);
            put(c, buf + at * 4, V_NAN);
            int rc = pi_tensor_check(&t, PI_TENSOR_CHECK_SAMPLED, err, sizeof err);
            if (rc != -PI_ERR_FORMAT)
                tap_diag("window %llu, element %llu: not found", (unsigned long long)k, (unsigned long long)at);
            each &= rc == -PI_ERR_FORMAT;
        }
    }
    tap_ok(each,
           "sampled: a NaN at the first or last element of any of the %d windows is found (the first block and the "
           "last among them)",
           PI_TENSOR_CHECK_WINDOWS);
    /* between windows 0 and 1 */
    const uint64_t gap = w + (span / (PI_TENSOR_CHECK_WINDOWS - 1) - w) / 2;
    make(c, buf, n);
    put(c, buf + gap * 4, V_INF);
    int rs = pi_tensor_check(&t, PI_TENSOR_CHECK_SAMPLED, err, sizeof err);
    int rf = pi_tensor_check(&t, PI_TENSOR_CHECK_FULL, err, sizeof err);
    tap_ok(rs == 0 && rf == -PI_ERR_FORMAT,
           "an inf between two windows (element %llu): sampled passes (%d), full refuses (%s)", (unsigned long long)gap,
           rs, err);
    /* a tensor of at most 16 windows is read whole by either depth */
    t.n_bytes = PI_TENSOR_CHECK_WINDOWS * w * 4;
    t.ne[0] = t.n_elems = t.n_bytes / 4;
    tap_is_int(pi_tensor_check(&t, PI_TENSOR_CHECK_SAMPLED, err, sizeof err), -PI_ERR_FORMAT,
               "a tensor of 16 windows' bytes is read whole when sampled");
    free(buf);
}

static char tmpdir[256];

/* The file offset of tensor name's data in the file at path (-1 when it cannot be found). */
static long tensor_offset(const char *path, const char *name)
{
    pi_gguf_t *g = NULL;
    if (pi_gguf_open(path, &g, NULL, 0) != 0) return -1;
    const struct pi_gguf_tensor *t = pi_gguf_find_tensor(g, name);
    long off = t ? (long)((const uint8_t *)t->data - (const uint8_t *)pi_gguf_base(g)) : -1;
    pi_gguf_destroy(&g);
    return off;
}

/* Write the 4 bytes of an f32 NaN at offset off of path. */
static bool poke_nan(const char *path, long off)
{
    const uint32_t nan_bits = 0x7fc00000u;
    FILE *f = fopen(path, "r+b");
    bool ok = f && off >= 0 && fseek(f, off, SEEK_SET) == 0 && fwrite(&nan_bits, 4, 1, f) == 1;
    if (f) ok &= fclose(f) == 0;
    return ok;
}

static void test_loader(void)
{
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/nan.gguf", tmpdir);
    struct pi_model_gen g = {.arch = "llama",
                             .n_vocab = 4096,
                             .n_embd = 64,
                             .n_layer = 2,
                             .n_ff = 128,
                             .n_head = 4,
                             .type = PI_TYPE_F32,
                             .seed = 7};
    pi_model_t *m = NULL;
    struct pi_model_opts full;
    pi_model_opts_default(&full);
    full.check = PI_TENSOR_CHECK_FULL;
    full.no_down_t = true;
    if (pi_model_gen_write(&g, path) != 0) tap_bail("pi_model_gen_write %s", path);
    int rc = pi_model_open(path, &full, &m, err, sizeof err);
    tap_ok(rc == 0, "a generated model passes the full check (%s)", err);
    pi_model_destroy(&m);

    /* a NaN in the first element of a layer's up weights: refused by default */
    const long up = tensor_offset(path, "blk.1.ffn_up.weight");
    if (!poke_nan(path, up)) tap_bail("poke %s", path);
    rc = pi_model_open(path, NULL, &m, err, sizeof err);
    tap_ok(rc == -PI_ERR_FORMAT && !m && strstr(err, "blk.1.ffn_up.weight (f32): element 0 of") && strstr(err, "nan"),
           "a NaN in blk.1.ffn_up.weight: the default load refuses it (%s)", err);

    /* a NaN in the middle of token_embd (4096 x 64 f32: 1 MiB, 256 windows' worth): only full finds it */
    if (pi_model_gen_write(&g, path) != 0) tap_bail("pi_model_gen_write %s", path);
    const long emb = tensor_offset(path, "token_embd.weight");
    const long n_el = 4096L * 64, w = PI_TENSOR_CHECK_WINDOW_BYTES / 4;
    const long gap = w + ((n_el - w) / (PI_TENSOR_CHECK_WINDOWS - 1) - w) / 2;
    if (!poke_nan(path, emb + 4 * gap)) tap_bail("poke %s", path);
    struct pi_model_opts def;
    pi_model_opts_default(&def);
    def.no_down_t = true;
    rc = pi_model_open(path, &def, &m, err, sizeof err);
    tap_ok(rc == 0, "a NaN between the sampled windows of token_embd: the default load passes (rc %d)", rc);
    pi_model_destroy(&m);
    rc = pi_model_open(path, &full, &m, err, sizeof err);
    tap_ok(rc == -PI_ERR_FORMAT && !m && strstr(err, "token_embd.weight"), "... and full refuses it (%s)", err);
    unlink(path);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/pi-test-tensor-check-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) tap_bail("mkdtemp failed");
    test_types();
    test_depths();
    test_loader();
    rmdir(tmpdir);
    return tap_done();
}
