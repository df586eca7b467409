/*
 * tests/unit/test-gguf.c - the GGUF reader and writer through model/gguf.h.
 *
 *  1. Round trip: write every metadata type (fresh random values) and tensors of several types,
 *     reopen, compare every value and byte; alignment (default and general.alignment), PWRI and v2
 *     variants made by patching the header, the typed getters' conversions and errors, writer rejects.
 *  2. Fixtures made by llama.cpp's converter and gguf-py (../shared/fixtures): every file opens, every
 *     tensor's bytes lie inside the file and are aligned, and the metadata says what the fixture
 *     README says (tiny llama: 4 layers, n_embd 64, n_ff 256, 4 heads, 2 KV heads, 32000 tokens).
 *
 * With "--corpus DIR" it instead writes the fuzzer's seed corpus (small valid files from the writer,
 * and fixture files cut to 64 KiB) into DIR and exits; `make fuzz` uses that.
 */
#include "config.h"
#include "lib/common.h"
#include "model/gguf.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "tests/tap.h"

#include <dirent.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng_state;

static uint64_t rnd(void)
{
    return pi_rng_splitmix64(&rng_state);
}

static void fill_random(void *p, size_t n)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)rnd();
}

static char tmpdir[256];

static const char *tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
    return buf;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static int write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* ---- the round-trip file ---- */

struct scalars {
    uint8_t u8;
    int8_t i8;
    uint16_t u16;
    int16_t i16;
    uint32_t u32;
    int32_t i32;
    float f32;
    bool b;
    uint64_t u64;
    int64_t i64;
    double f64;
};

#define ARR_N 37
#define N_TENSORS 6

struct tspec {
    const char *name;
    enum pi_type type;
    uint32_t n_dims;
    uint64_t ne[4];
    size_t bytes;
    uint8_t *data;
};

static struct tspec tensors[N_TENSORS] = {
    {"f32.vec", PI_TYPE_F32, 1, {7, 1, 1, 1}, 7 * 4, NULL},
    {"f16.mat", PI_TYPE_F16, 2, {3, 5, 1, 1}, 15 * 2, NULL},
    {"blk.0.q4_0", PI_TYPE_Q4_0, 2, {64, 3, 1, 1}, 2 * 3 * 18, NULL},
    {"blk.0.q8_0", PI_TYPE_Q8_0, 3, {32, 2, 2, 1}, 4 * 34, NULL},
    {"q4_k", PI_TYPE_Q4_K, 2, {256, 2, 1, 1}, 2 * 144, NULL},
    {"i32.4d", PI_TYPE_I32, 4, {5, 1, 1, 2}, 10 * 4, NULL},
};

static struct scalars sc;
static uint8_t arrays[PI_GGUF_VTYPE_COUNT][ARR_N * 8];
static const char *strs[] = {"", "a", "hello world", "\xe2\x96\x81the", "<0x0A>", "tab\there"};
static char longstr[3000];

static const enum pi_gguf_vtype fixed_types[] = {
    PI_GGUF_U8, PI_GGUF_I8, PI_GGUF_U16, PI_GGUF_I16, PI_GGUF_U32, PI_GGUF_I32,
    PI_GGUF_F32, PI_GGUF_BOOL, PI_GGUF_U64, PI_GGUF_I64, PI_GGUF_F64,
};

static void make_values(void)
{
    fill_random(&sc, sizeof sc);
    sc.b = rnd() & 1;
    sc.i32 = -(int32_t)(rnd() % 1000000) - 1; /* negative, for the get_uint range check */
    sc.f32 = (float)(rnd() % 100000) / 7.0f;
    sc.f64 = (double)(rnd() % 100000000) / 3.0;
    sc.u64 = (rnd() | (1ull << 63)); /* above INT64_MAX, for the get_int range check */
    for (size_t t = 0; t < PI_ARRAY_LEN(fixed_types); t++) {
        enum pi_gguf_vtype vt = fixed_types[t];
        fill_random(arrays[vt], sizeof arrays[vt]);
        if (vt == PI_GGUF_BOOL)
            for (int i = 0; i < ARR_N; i++) arrays[vt][i] &= 1;
    }
    for (size_t i = 0; i + 1 < sizeof longstr; i++) longstr[i] = (char)('a' + rnd() % 26);
    for (int i = 0; i < N_TENSORS; i++) {
        free(tensors[i].data);
        tensors[i].data = malloc(tensors[i].bytes);
        fill_random(tensors[i].data, tensors[i].bytes);
    }
}

static pi_gguf_writer_t *make_writer(void)
{
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    int rc = 0;
    rc |= pi_gguf_writer_set(w, "t.u8", PI_GGUF_U8, &sc.u8);
    rc |= pi_gguf_writer_set(w, "t.i8", PI_GGUF_I8, &sc.i8);
    rc |= pi_gguf_writer_set(w, "t.u16", PI_GGUF_U16, &sc.u16);
    rc |= pi_gguf_writer_set(w, "t.i16", PI_GGUF_I16, &sc.i16);
    rc |= pi_gguf_writer_set_u32(w, "t.u32", 12345); /* replaced below: keeps its place */
    rc |= pi_gguf_writer_set_i32(w, "t.i32", sc.i32);
    rc |= pi_gguf_writer_set_f32(w, "t.f32", sc.f32);
    rc |= pi_gguf_writer_set_bool(w, "t.bool", sc.b);
    rc |= pi_gguf_writer_set_u64(w, "t.u64", sc.u64);
    rc |= pi_gguf_writer_set(w, "t.i64", PI_GGUF_I64, &sc.i64);
    rc |= pi_gguf_writer_set(w, "t.f64", PI_GGUF_F64, &sc.f64);
    rc |= pi_gguf_writer_set_str(w, "t.str", "hello \xe2\x96\x81 gguf");
    rc |= pi_gguf_writer_set_str(w, "t.str.empty", "");
    rc |= pi_gguf_writer_set_str(w, "t.str.long", longstr);
    rc |= pi_gguf_writer_set_u32(w, "t.u32", sc.u32);
    for (size_t t = 0; t < PI_ARRAY_LEN(fixed_types); t++) {
        char key[64];
        snprintf(key, sizeof key, "t.arr.%s", pi_gguf_vtype_name(fixed_types[t]));
        rc |= pi_gguf_writer_set_arr(w, key, fixed_types[t], arrays[fixed_types[t]], ARR_N);
    }
    rc |= pi_gguf_writer_set_arr(w, "t.arr.empty", PI_GGUF_F32, NULL, 0);
    rc |= pi_gguf_writer_set_arr_str(w, "t.arr.str", strs, PI_ARRAY_LEN(strs));
    rc |= pi_gguf_writer_set_arr_str(w, "t.arr.str.empty", NULL, 0);
    for (int i = 0; i < N_TENSORS; i++)
        rc |= pi_gguf_writer_add_tensor(w, tensors[i].name, tensors[i].type, tensors[i].n_dims, tensors[i].ne,
                                        tensors[i].data);
    tap_ok(rc == 0, "writer accepts every metadata type and %d tensors", N_TENSORS);
    return w;
}

static void check_scalars(const pi_gguf_t *g)
{
    uint64_t u;
    int64_t s;
    float f;
    double d;
    bool b;
    struct pi_gguf_str str;
    tap_ok(pi_gguf_get_uint(g, "t.u8", &u) == 0 && u == sc.u8, "u8 round trip");
    tap_ok(pi_gguf_get_int(g, "t.i8", &s) == 0 && s == sc.i8, "i8 round trip (sign kept)");
    tap_ok(pi_gguf_get_uint(g, "t.u16", &u) == 0 && u == sc.u16, "u16 round trip");
    tap_ok(pi_gguf_get_int(g, "t.i16", &s) == 0 && s == sc.i16, "i16 round trip");
    tap_ok(pi_gguf_get_uint(g, "t.u32", &u) == 0 && u == sc.u32, "u32 round trip (value replaced)");
    tap_ok(pi_gguf_get_int(g, "t.i32", &s) == 0 && s == sc.i32, "i32 round trip");
    tap_ok(pi_gguf_get_f32(g, "t.f32", &f) == 0 && f == sc.f32, "f32 round trip");
    tap_ok(pi_gguf_get_bool(g, "t.bool", &b) == 0 && b == sc.b, "bool round trip");
    tap_ok(pi_gguf_get_uint(g, "t.u64", &u) == 0 && u == sc.u64, "u64 round trip");
    tap_ok(pi_gguf_get_int(g, "t.i64", &s) == 0 && s == sc.i64, "i64 round trip");
    tap_ok(pi_gguf_get_f64(g, "t.f64", &d) == 0 && d == sc.f64, "f64 round trip");
    tap_ok(pi_gguf_get_f32(g, "t.f64", &f) == 0 && f == (float)sc.f64, "get_f32 accepts f64");
    tap_ok(pi_gguf_get_f64(g, "t.f32", &d) == 0 && d == (double)sc.f32, "get_f64 accepts f32");
    tap_ok(pi_gguf_get_str(g, "t.str", &str) == 0 && pi_gguf_str_eq(str, "hello \xe2\x96\x81 gguf"), "string round trip");
    tap_ok(pi_gguf_get_str(g, "t.str.empty", &str) == 0 && str.len == 0, "empty string round trip");
    tap_ok(pi_gguf_get_str(g, "t.str.long", &str) == 0 && pi_gguf_str_eq(str, longstr), "3000-byte string round trip");
    /* conversions and errors */
    tap_is_int(pi_gguf_get_uint(g, "t.i32", &u), -PI_ERR_RANGE, "get_uint of a negative i32 is a range error");
    tap_is_int(pi_gguf_get_int(g, "t.u64", &s), -PI_ERR_RANGE, "get_int of a u64 above INT64_MAX is a range error");
    tap_ok(pi_gguf_get_int(g, "t.u32", &s) == 0 && s == (int64_t)sc.u32, "get_int widens a u32");
    tap_is_int(pi_gguf_get_uint(g, "t.str", &u), -PI_ERR_FORMAT, "get_uint of a string is a format error");
    tap_is_int(pi_gguf_get_str(g, "t.u32", &str), -PI_ERR_FORMAT, "get_str of a u32 is a format error");
    tap_is_int(pi_gguf_get_f32(g, "t.u32", &f), -PI_ERR_FORMAT, "get_f32 of a u32 is a format error");
    tap_is_int(pi_gguf_get_bool(g, "t.u8", &b), -PI_ERR_FORMAT, "get_bool of a u8 is a format error");
    tap_is_int(pi_gguf_get_uint(g, "no.such.key", &u), -PI_ERR_NOTFOUND, "absent key is not found");
    tap_is_int(pi_gguf_find_key(g, "t."), -1, "find_key of a prefix is -1");
    tap_is_int(pi_gguf_kv_uint(g, pi_gguf_n_kv(g), &u), -PI_ERR_RANGE, "kv_uint past the end is a range error");
}

static void check_arrays(const pi_gguf_t *g)
{
    enum pi_gguf_vtype t;
    uint64_t n;
    struct pi_gguf_str s;
    int bad = 0;
    for (size_t k = 0; k < PI_ARRAY_LEN(fixed_types); k++) {
        char key[64];
        enum pi_gguf_vtype vt = fixed_types[k];
        snprintf(key, sizeof key, "t.arr.%s", pi_gguf_vtype_name(vt));
        const void *p = pi_gguf_arr_data(g, key);
        if (pi_gguf_get_arr(g, key, &t, &n) != 0 || t != vt || n != ARR_N || !p ||
            memcmp(p, arrays[vt], ARR_N * pi_gguf_vtype_size(vt)) != 0) {
            tap_diag("array %s differs", key);
            bad++;
        }
    }
    tap_ok(bad == 0, "arrays of all %zu fixed-size types round trip", PI_ARRAY_LEN(fixed_types));
    tap_ok(pi_gguf_get_arr(g, "t.arr.empty", &t, &n) == 0 && t == PI_GGUF_F32 && n == 0, "empty f32 array");
    tap_ok(pi_gguf_get_arr(g, "t.arr.str", &t, &n) == 0 && t == PI_GGUF_STRING && n == PI_ARRAY_LEN(strs),
           "string array type and count");
    bad = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(strs); i++)
        if (pi_gguf_arr_str(g, "t.arr.str", i, &s) != 0 || !pi_gguf_str_eq(s, strs[i])) bad++;
    tap_ok(bad == 0, "string array elements round trip");
    tap_is_int(pi_gguf_arr_str(g, "t.arr.str", PI_ARRAY_LEN(strs), &s), -PI_ERR_RANGE, "string index past the end");
    tap_ok(pi_gguf_arr_data(g, "t.arr.str") == NULL, "arr_data of a string array is NULL");
    tap_is_int(pi_gguf_arr_str(g, "t.arr.u8", 0, &s), -PI_ERR_FORMAT, "arr_str of a u8 array is a format error");
    tap_ok(pi_gguf_get_arr(g, "t.arr.str.empty", &t, &n) == 0 && n == 0, "empty string array");
    tap_is_int(pi_gguf_get_arr(g, "t.str", &t, &n), -PI_ERR_FORMAT, "get_arr of a string is a format error");
}

static void check_tensors(const pi_gguf_t *g, uint32_t align)
{
    int bad = 0;
    tap_is_int((long long)pi_gguf_n_tensors(g), N_TENSORS, "tensor count");
    tap_ok(pi_gguf_data_offset(g) % align == 0, "data section aligned to %u", align);
    for (int i = 0; i < N_TENSORS; i++) {
        const struct pi_gguf_tensor *t = pi_gguf_find_tensor(g, tensors[i].name);
        uint64_t n = 1;
        for (uint32_t d = 0; d < 4; d++) n *= tensors[i].ne[d];
        if (!t || t != pi_gguf_tensor(g, (uint64_t)i) || t->type != (uint32_t)tensors[i].type ||
            t->n_dims != tensors[i].n_dims || memcmp(t->ne, tensors[i].ne, sizeof t->ne) != 0 || t->n_elems != n ||
            t->n_bytes != tensors[i].bytes || t->offset % align != 0 ||
            ((const uint8_t *)t->data - (const uint8_t *)pi_gguf_base(g)) % align != 0 ||
            memcmp(t->data, tensors[i].data, tensors[i].bytes) != 0) {
            tap_diag("tensor %s differs", tensors[i].name);
            bad++;
        }
    }
    tap_ok(bad == 0, "every tensor's name, type, shape, size, alignment and bytes round trip");
    tap_ok(pi_gguf_find_tensor(g, "f32") == NULL && pi_gguf_tensor(g, N_TENSORS) == NULL, "absent tensors are NULL");
}

/* The writer's bytes read by hand, per the GGUF spec (not through the reader): the header, the first
 * kv ("t.u8", type 0, one byte) and the file size (every tensor padded to the alignment). */
static void check_raw_layout(const char *path, uint64_t data_offset, uint32_t align)
{
    size_t len;
    uint8_t *b = read_file(path, &len);
    uint32_t version, type;
    uint64_t n_t, n_kv, klen, want = data_offset;
    if (!b || len < 48) {
        tap_ok(0, "raw layout: file readable");
        free(b);
        return;
    }
    memcpy(&version, b + 4, 4);
    memcpy(&n_t, b + 8, 8);
    memcpy(&n_kv, b + 16, 8);
    memcpy(&klen, b + 24, 8);
    memcpy(&type, b + 36, 4);
    tap_ok(memcmp(b, "GGUF", 4) == 0 && version == 3 && n_t == N_TENSORS && n_kv == 28 && klen == 4 &&
               memcmp(b + 32, "t.u8", 4) == 0 && type == PI_GGUF_U8 && b[40] == sc.u8,
           "raw bytes: magic, version 3, counts, first key, type and value where the spec puts them");
    for (int i = 0; i < N_TENSORS; i++) want += (tensors[i].bytes + align - 1) / align * align;
    tap_is_int((long long)len, (long long)want, "file size is the data section plus each tensor padded to the alignment");
    free(b);
}

static void test_round_trip(void)
{
    char path[512], err[512];
    pi_gguf_t *g = NULL;
    make_values();
    pi_gguf_writer_t *w = make_writer();
    tap_is_int(pi_gguf_writer_write(w, tmp_path(path, sizeof path, "rt.gguf")), 0, "write rt.gguf");
    int rc = pi_gguf_open(path, &g, err, sizeof err);
    if (!tap_ok(rc == 0, "reopen rt.gguf")) tap_bail("cannot reopen: %s", err);
    tap_ok(pi_gguf_version(g) == 3 && pi_gguf_flavour(g) == PI_GGUF_FLAVOUR_GGUF && pi_gguf_alignment(g) == 32,
           "writer makes GGUF v3, alignment 32");
    tap_is_int((long long)pi_gguf_n_kv(g), 11 + 3 + 11 + 3, "key count (a replaced key is not duplicated)");
    tap_ok(pi_gguf_str_eq(pi_gguf_key(g, 4), "t.u32"), "replaced key keeps its place");
    check_scalars(g);
    check_arrays(g);
    check_tensors(g, 32);
    check_raw_layout(path, pi_gguf_data_offset(g), 32);
    pi_gguf_destroy(&g);
    tap_ok(g == NULL, "destroy NULLs the handle");
    pi_gguf_destroy(&g);

    /* general.alignment = 256 moves the data section and every offset onto 256. */
    pi_gguf_writer_set_u32(w, "general.alignment", 256);
    tap_is_int(pi_gguf_writer_write(w, path), 0, "write with general.alignment 256 (over the old file)");
    rc = pi_gguf_open(path, &g, err, sizeof err);
    tap_ok(rc == 0 && pi_gguf_alignment(g) == 256, "reopen: alignment 256");
    if (g) check_tensors(g, 256);
    pi_gguf_destroy(&g);

    /* The same bytes with the magic "PWRI", and as version 2. */
    size_t len;
    uint8_t *buf = read_file(path, &len);
    memcpy(buf, "PWRI", 4);
    rc = pi_gguf_open_buffer(buf, len, &g, err, sizeof err);
    tap_ok(rc == 0 && pi_gguf_flavour(g) == PI_GGUF_FLAVOUR_POWERINFER, "\"PWRI\" magic opens as the PowerInfer flavour");
    pi_gguf_destroy(&g);
    memcpy(buf, "GGUF", 4);
    buf[4] = 2;
    rc = pi_gguf_open_buffer(buf, len, &g, err, sizeof err);
    tap_ok(rc == 0 && pi_gguf_version(g) == 2, "version 2 opens");
    pi_gguf_destroy(&g);
    free(buf);

    /* Writer rejects what the reader would reject. */
    uint64_t ne[4] = {33, 1, 1, 1};
    uint8_t data[64] = {0};
    tap_is_int(pi_gguf_writer_add_tensor(w, "f32.vec", PI_TYPE_F32, 1, ne, data), -PI_ERR_INVAL, "writer: duplicate tensor name");
    tap_is_int(pi_gguf_writer_add_tensor(w, "bad.q4", PI_TYPE_Q4_0, 1, ne, data), -PI_ERR_INVAL, "writer: row not whole blocks");
    tap_is_int(pi_gguf_writer_add_tensor(w, "bad.dims", PI_TYPE_F32, 5, ne, data), -PI_ERR_INVAL, "writer: n_dims 5");
    ne[0] = 0;
    tap_is_int(pi_gguf_writer_add_tensor(w, "bad.zero", PI_TYPE_F32, 1, ne, data), -PI_ERR_INVAL, "writer: zero dimension");
    tap_is_int(pi_gguf_writer_add_tensor(w, "bad.type", (enum pi_type)4, 1, ne, data), -PI_ERR_INVAL, "writer: unknown type");
    tap_is_int(pi_gguf_writer_set_u32(w, "", 1), -PI_ERR_INVAL, "writer: empty key");
    tap_is_int(pi_gguf_writer_set(w, "x", PI_GGUF_STRING, "x"), -PI_ERR_INVAL, "writer: set() of a string type");
    pi_gguf_writer_set_u32(w, "general.alignment", 48);
    tap_is_int(pi_gguf_writer_write(w, path), -PI_ERR_INVAL, "writer: general.alignment 48 refused");
    pi_gguf_writer_set_str(w, "general.alignment", "32");
    tap_is_int(pi_gguf_writer_write(w, path), -PI_ERR_INVAL, "writer: string general.alignment refused");
    pi_gguf_writer_set_u32(w, "general.alignment", 32);
    tap_ok(pi_gguf_writer_write(w, "/nonexistent-dir/x.gguf") == -PI_ERR_IO, "writer: unwritable directory is an I/O error");
    pi_gguf_writer_destroy(&w);
    tap_ok(w == NULL, "writer destroy NULLs the handle");

    /* The atomic write left nothing but the files it meant to. */
    DIR *d = opendir(tmpdir);
    int stray = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) stray++;
    if (d) closedir(d);
    tap_is_int(stray, 0, "no temporary files left behind");
}

/* Integer tensors in PowerInfer's files carry its ggml's type ids (I8 16, I16 17, I32 18; today's GGUF
 * gives those ids to IQ2_XXS, IQ2_XS, IQ3_XXS): the writer writes them so in a PWRI file and the reader
 * takes them back, while a GGUF file keeps 24-26; a PWRI file with 24-26 (pinfer's older writer) reads too. */
static void test_powerinfer_ints(void)
{
    char path[512];
    const enum pi_type ty[3] = {PI_TYPE_I8, PI_TYPE_I16, PI_TYPE_I32};
    for (int flav = 0; flav < 2; flav++) {
        for (int k = 0; k < 3; k++) {
            pi_gguf_writer_t *w = pi_gguf_writer_new();
            uint64_t ne[1] = {4};
            int32_t v[4] = {1, -2, 3, -4};
            if (flav) pi_gguf_writer_set_flavour(w, PI_GGUF_FLAVOUR_POWERINFER);
            pi_gguf_writer_add_tensor(w, "x", ty[k], 1, ne, v);
            tap_is_int(pi_gguf_writer_write(w, tmp_path(path, sizeof path, "ints.gguf")), 0, "write an integer tensor");
            pi_gguf_writer_destroy(&w);
            size_t len;
            uint8_t *buf = read_file(path, &len);
            /* header 24 bytes, no keys; name length 8, "x", n_dims 4, ne[0] 8, then the type id */
            uint32_t id = 0;
            if (buf && len >= 49) memcpy(&id, buf + 45, 4);
            const uint32_t want = flav ? 16u + (uint32_t)k : (uint32_t)ty[k];
            pi_gguf_t *g = NULL;
            char err[256] = "";
            int rc = buf ? pi_gguf_open_buffer(buf, len, &g, err, sizeof err) : -1;
            const struct pi_gguf_tensor *t = rc == 0 ? pi_gguf_find_tensor(g, "x") : NULL;
            tap_ok(id == want && t && t->type == (uint32_t)ty[k] && memcmp(t->data, v, (size_t)1 << k) == 0,
                   "%s file: %s written as id %u (want %u) and read back as %s (%s)", flav ? "PWRI" : "GGUF",
                   pi_type_name(ty[k]), id, want, t ? pi_type_name((enum pi_type)t->type) : "-", err);
            pi_gguf_destroy(&g);
            if (flav && buf && len >= 49) { /* the modern id in a PWRI file, as pinfer wrote them before */
                memcpy(buf + 45, &(uint32_t){(uint32_t)ty[k]}, 4);
                rc = pi_gguf_open_buffer(buf, len, &g, err, sizeof err);
                t = rc == 0 ? pi_gguf_find_tensor(g, "x") : NULL;
                tap_ok(t && t->type == (uint32_t)ty[k], "PWRI file with today's id %u reads as %s", (uint32_t)ty[k],
                       pi_type_name(ty[k]));
                pi_gguf_destroy(&g);
            }
            free(buf);
            unlink(path);
        }
    }
}

/* An empty writer makes the smallest valid file: header only. */
static void test_empty(void)
{
    char path[512], err[512];
    pi_gguf_t *g = NULL;
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    tap_is_int(pi_gguf_writer_write(w, tmp_path(path, sizeof path, "empty.gguf")), 0, "write an empty file");
    int rc = pi_gguf_open(path, &g, err, sizeof err);
    tap_ok(rc == 0 && pi_gguf_n_kv(g) == 0 && pi_gguf_n_tensors(g) == 0 && pi_gguf_find_key(g, "x") == -1 &&
               pi_gguf_find_tensor(g, "x") == NULL,
           "empty file opens with no keys and no tensors");
    pi_gguf_destroy(&g);
    pi_gguf_writer_destroy(&w);
}

/* ---- fixtures ---- */

/* Every tensor inside the file, aligned, and its size what its type and shape say. */
static int check_layout(const pi_gguf_t *g, const char *name)
{
    int bad = 0;
    const uint8_t *base = pi_gguf_base(g);
    for (uint64_t i = 0; i < pi_gguf_n_tensors(g); i++) {
        const struct pi_gguf_tensor *t = pi_gguf_tensor(g, i);
        const struct pi_type_info *ti = pi_type_get(t->type);
        uint64_t start = (uint64_t)((const uint8_t *)t->data - base);
        uint64_t want = ti ? t->n_elems / ti->block_elems * ti->block_bytes : 0;
        if (!ti || start < pi_gguf_data_offset(g) || start + t->n_bytes > pi_gguf_file_size(g) ||
            start % pi_gguf_alignment(g) != 0 || t->n_bytes != want || pi_gguf_find_tensor(g, "") != NULL) {
            tap_diag("%s: tensor %llu bad layout", name, (unsigned long long)i);
            bad++;
        }
        char nm[256];
        snprintf(nm, sizeof nm, "%.*s", (int)PI_MIN(t->name.len, 255), t->name.ptr);
        if (pi_gguf_find_tensor(g, nm) != t) bad++;
    }
    return bad;
}

static void check_tiny_llama(const pi_gguf_t *g, const char *file, const char *qtype)
{
    uint64_t u;
    struct pi_gguf_str s;
    enum pi_gguf_vtype t;
    int ok = pi_gguf_get_str(g, "general.architecture", &s) == 0 && pi_gguf_str_eq(s, "llama");
    ok &= pi_gguf_get_uint(g, "llama.block_count", &u) == 0 && u == 4;
    ok &= pi_gguf_get_uint(g, "llama.embedding_length", &u) == 0 && u == 64;
    ok &= pi_gguf_get_uint(g, "llama.feed_forward_length", &u) == 0 && u == 256;
    ok &= pi_gguf_get_uint(g, "llama.attention.head_count", &u) == 0 && u == 4;
    ok &= pi_gguf_get_uint(g, "llama.attention.head_count_kv", &u) == 0 && u == 2;
    ok &= pi_gguf_get_arr(g, "tokenizer.ggml.tokens", &t, &u) == 0 && t == PI_GGUF_STRING && u == 32000;
    ok &= pi_gguf_arr_str(g, "tokenizer.ggml.tokens", 1, &s) == 0 && pi_gguf_str_eq(s, "<s>");
    ok &= pi_gguf_arr_str(g, "tokenizer.ggml.tokens", 31999, &s) == 0 && s.len > 0;
    tap_ok(ok, "%s: metadata matches the fixture README", file);
    const struct pi_gguf_tensor *e = pi_gguf_find_tensor(g, "token_embd.weight");
    const struct pi_gguf_tensor *q = pi_gguf_find_tensor(g, "blk.3.attn_q.weight");
    const struct pi_gguf_tensor *k = pi_gguf_find_tensor(g, "blk.0.attn_k.weight");
    const struct pi_gguf_tensor *f = pi_gguf_find_tensor(g, "blk.2.ffn_gate.weight");
    enum pi_type want;
    pi_type_from_name(qtype, &want);
    tap_ok(e && e->n_dims == 2 && e->ne[0] == 64 && e->ne[1] == 32000 && q && q->ne[0] == 64 && q->ne[1] == 64 &&
               q->type == (uint32_t)want && k && k->ne[1] == 32 && f && f->ne[0] == 64 && f->ne[1] == 256,
           "%s: tensor shapes and type %s", file, qtype);
}

static void test_fixtures(void)
{
    static const char *qtypes[] = {"f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"};
    char path[1024], rel[256], err[512];
    pi_gguf_t *g = NULL;
    if (!tap_fixture(path, sizeof path, "models/tiny-llama-f16.gguf")) {
        /* Without the shared fixtures, check the copy committed in tests/data. */
        const char *src = getenv("PI_SRCDIR");
        struct stat st;
        snprintf(path, sizeof path, "%s/tests/data/tiny-llama-q4_0.gguf", src ? src : ".");
        if (stat(path, &st) == 0 && pi_gguf_open(path, &g, err, sizeof err) == 0) {
            tap_ok(check_layout(g, path) == 0, "tests/data/tiny-llama-q4_0.gguf: tensors inside the file");
            check_tiny_llama(g, "tests/data/tiny-llama-q4_0.gguf", "q4_0");
            pi_gguf_destroy(&g);
        } else {
            tap_skip(1, "fixtures not found (set PI_FIXTURES)");
        }
        return;
    }
    for (size_t i = 0; i < PI_ARRAY_LEN(qtypes); i++) {
        snprintf(rel, sizeof rel, "models/tiny-llama-%s.gguf", qtypes[i]);
        if (!tap_fixture(path, sizeof path, rel)) {
            tap_skip(3, "fixture missing");
            continue;
        }
        int rc = pi_gguf_open(path, &g, err, sizeof err);
        if (!tap_ok(rc == 0, "%s opens", rel)) {
            tap_diag("%s", err);
            tap_skip(2, "did not open");
            continue;
        }
        tap_ok(check_layout(g, rel) == 0 && pi_gguf_n_tensors(g) == 39, "%s: 39 tensors, all inside the file", rel);
        check_tiny_llama(g, rel, qtypes[i]);
        pi_gguf_destroy(&g);
    }

    /* blocks.gguf: blocks.TYPE holds 64 blocks of TYPE, expect.TYPE the matching f32 values. */
    if (tap_fixture(path, sizeof path, "quant/blocks.gguf") && pi_gguf_open(path, &g, err, sizeof err) == 0) {
        static const char *bt[] = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"};
        int bad = check_layout(g, "blocks.gguf");
        for (size_t i = 0; i < PI_ARRAY_LEN(bt); i++) {
            char nb[32], ne[32];
            enum pi_type ty;
            snprintf(nb, sizeof nb, "blocks.%s", bt[i]);
            snprintf(ne, sizeof ne, "expect.%s", bt[i]);
            const struct pi_gguf_tensor *b = pi_gguf_find_tensor(g, nb), *x = pi_gguf_find_tensor(g, ne);
            if (!pi_type_from_name(bt[i], &ty) || !b || !x || b->type != (uint32_t)ty || x->type != PI_TYPE_F32 ||
                b->n_elems != 64u * pi_type_get(ty)->block_elems || x->n_elems != b->n_elems)
                bad++;
        }
        tap_ok(bad == 0, "quant/blocks.gguf: 10 block types with 64 blocks each and their f32 expectations");
        pi_gguf_destroy(&g);
    } else {
        tap_ok(0, "quant/blocks.gguf opens: %s", err);
    }

    /* Every vocabulary file opens, with as many token types and scores as tokens where present. */
    DIR *d = tap_fixture(path, sizeof path, "vocab") ? opendir(path) : NULL;
    struct dirent *e;
    int n_files = 0, bad = 0;
    while (d && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 5, ".gguf") != 0) continue;
        char fp[1200];
        enum pi_gguf_vtype t;
        uint64_t n_tok = 0, n;
        struct pi_gguf_str s;
        snprintf(fp, sizeof fp, "%s/%s", path, e->d_name);
        n_files++;
        if (pi_gguf_open(fp, &g, err, sizeof err) != 0) {
            tap_diag("%s: %s", e->d_name, err);
            bad++;
            continue;
        }
        if (pi_gguf_get_arr(g, "tokenizer.ggml.tokens", &t, &n_tok) != 0 || t != PI_GGUF_STRING || n_tok < 100 ||
            pi_gguf_arr_str(g, "tokenizer.ggml.tokens", n_tok - 1, &s) != 0 || check_layout(g, e->d_name) != 0 ||
            (pi_gguf_get_arr(g, "tokenizer.ggml.token_type", &t, &n) == 0 && n != n_tok)) {
            tap_diag("%s: tokens missing or inconsistent", e->d_name);
            bad++;
        }
        pi_gguf_destroy(&g);
    }
    if (d) closedir(d);
    tap_ok(n_files >= 5 && bad == 0, "all %d vocab/*.gguf files open with consistent token arrays", n_files);
}

/* ---- fuzzer seed corpus ---- */

static int write_corpus(const char *dir)
{
    char path[1200];
    rng_state = 1;
    make_values();
    pi_gguf_writer_t *w = make_writer();
    snprintf(path, sizeof path, "%s/seed-roundtrip.gguf", dir);
    int rc = pi_gguf_writer_write(w, path);
    pi_gguf_writer_set_u32(w, "general.alignment", 64);
    snprintf(path, sizeof path, "%s/seed-align64.gguf", dir);
    rc |= pi_gguf_writer_write(w, path);
    pi_gguf_writer_destroy(&w);
    w = pi_gguf_writer_new();
    snprintf(path, sizeof path, "%s/seed-empty.gguf", dir);
    rc |= pi_gguf_writer_write(w, path);
    pi_gguf_writer_destroy(&w);
    static const char *cut[] = {"models/tiny-llama-q4_0.gguf", "quant/blocks.gguf", "vocab/ggml-vocab-bert-bge.gguf",
                                "vocab/ggml-vocab-gpt-2.gguf", "golden/tiny-llama-f16.golden.gguf"};
    for (size_t i = 0; i < PI_ARRAY_LEN(cut); i++) {
        char fp[1024];
        size_t len;
        if (!tap_fixture(fp, sizeof fp, cut[i])) continue;
        uint8_t *b = read_file(fp, &len);
        if (!b) continue;
        snprintf(path, sizeof path, "%s/seed-fixture-%zu.gguf", dir, i);
        rc |= write_bytes(path, b, PI_MIN(len, (size_t)65536));
        free(b);
    }
    for (int i = 0; i < N_TENSORS; i++) free(tensors[i].data);
    fprintf(stderr, "test-gguf: corpus written to %s\n", dir);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    pi_log_set_program("test-gguf");
    if (argc == 3 && strcmp(argv[1], "--corpus") == 0) return write_corpus(argv[2]);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rng_state = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
    tap_diag("random seed %llu", (unsigned long long)rng_state);
    snprintf(tmpdir, sizeof tmpdir, "%s/test-gguf-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) tap_bail("mkdtemp failed");

    test_round_trip();
    test_powerinfer_ints();
    test_empty();
    test_fixtures();

    char path[512];
    unlink(tmp_path(path, sizeof path, "rt.gguf"));
    unlink(tmp_path(path, sizeof path, "empty.gguf"));
    rmdir(tmpdir);
    for (int i = 0; i < N_TENSORS; i++) free(tensors[i].data);
    return tap_done();
}
