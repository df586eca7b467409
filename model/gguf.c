/*
 * model/gguf.c - the hardened GGUF reader behind model/gguf.h.
 *
 * A GGUF file is untrusted input, so pi_gguf_open() parses and checks the whole header, metadata and
 * tensor table once, up front, against the real size of the file, and the accessors afterwards trust
 * what was checked. The rules are listed in doc/gguf-validation.md; each rejection writes one line
 * naming the field and its file offset.
 *
 * Why it is shaped this way:
 *  - Every read goes through a cursor (struct rd) that checks the bytes remain before touching them;
 *    lengths and counts are compared with the bytes that remain *before* any multiplication, so a
 *    declared size can never wrap into a small one.
 *  - Counts bound allocations: n_kv and n_tensors are checked against the smallest entry that could
 *    encode them (MIN_KV_BYTES, MIN_TENSOR_BYTES), so a file declaring 2^60 keys is rejected by one
 *    comparison and every allocation is proportional to the file's real size.
 *  - The parse is linear in the file size: keys and tensor names go into seeded open-addressing hash
 *    tables (duplicates found in O(1) each); string arrays get an offset index so that element i of a
 *    150k-entry vocabulary is O(1) (the index costs 8 bytes per element, and each element takes at
 *    least 8 bytes of the file, so the index is never larger than the file). Only the overlap check
 *    sorts the tensors (n log n).
 *
 * Format facts (GGUF spec, ggml docs/gguf.md, MIT): little-endian; magic, u32 version, u64 n_tensors,
 * u64 n_kv; kv = string key, u32 value type, value; string = u64 length + bytes (no NUL); array = u32
 * element type, u64 count, elements; tensor info = string name, u32 n_dims, u64 ne[n_dims], u32 type,
 * u64 offset (relative to the data section); the data section starts at the end of the tensor infos
 * rounded up to general.alignment (default 32). v1 used u32 counts and lengths and is not read.
 * PowerInfer's files are the same layout with the magic "PWRI" (PowerInfer ggml.h, MIT).
 */
#include "config.h"
#include "model/gguf.h"
#include "lib/common.h"
#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model/gguf.c reads little-endian GGUF files in place and needs a little-endian host"
#endif

#define GGUF_MAX_KEY 65535u         /* GGUF spec: keys are at most 2^16-1 bytes */
#define GGUF_MAX_NAME 64u           /* tensor names: the GGUF spec's "at most 64 bytes" (llama.cpp refuses more) */
#define GGUF_MAX_ALIGN (1u << 20)   /* general.alignment upper bound (1 MiB) */
#define GGUF_MIN_ALIGN 8u           /* the kernels read block structs in place: 8 covers every field */
#define GGUF_DEFAULT_ALIGN 32u
#define GGUF_HEADER_BYTES 24u       /* magic + version + n_tensors + n_kv */
#define MIN_KV_BYTES 14u            /* key length 8 + one key byte + type 4 + one u8 value */
#define MIN_TENSOR_BYTES 33u        /* name length 8 + one byte + n_dims 4 + one dim 8 + type 4 + offset 8 */
#define MAX_ENTRIES 0x7fffffffu     /* hash slots are u32; far above what the size bound allows in practice */
#define GGML_TYPE_ID_LIMIT 64u      /* ids below this may be ggml types pinfer lacks: "unsupported" */
#define ERR_MAX 512

struct kv {
    struct pi_gguf_str key;
    uint32_t type;      /* enum pi_gguf_vtype */
    uint32_t arr_type;  /* element type when type == ARRAY */
    uint64_t n;         /* element count when type == ARRAY */
    uint64_t val_off;   /* file offset of the value (scalar bytes, string length, first array element) */
    uint64_t *str_offs; /* string arrays: file offset of each element's length field (n entries) */
};

struct tensor {
    struct pi_gguf_tensor t;
    uint64_t info_off; /* file offset of the tensor's offset field (for messages) */
};

struct pi_gguf {
    const uint8_t *base; /* the mapping or the caller's buffer */
    uint64_t size;
    bool mapped;
    uint32_t version;
    enum pi_gguf_flavour flavour;
    uint32_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    uint64_t n_tensors;
    struct kv *kvs;         /* n_kv */
    struct tensor *tensors; /* n_tensors */
    uint32_t *kv_slots;     /* open addressing: 1 + index into kvs, 0 = empty */
    uint32_t *t_slots;      /* same for tensors */
    uint64_t kv_mask, t_mask;
    uint64_t seed;
};

/* The parse cursor. pos <= size always holds; ctx prefixes messages ("kv 3 (general.name)"). */
struct rd {
    const uint8_t *p;
    uint64_t size;
    uint64_t pos;
    char *err;
    size_t errlen;
    char ctx[128];
};

static const uint8_t vtype_sizes[PI_GGUF_VTYPE_COUNT] = {
    [PI_GGUF_U8] = 1, [PI_GGUF_I8] = 1, [PI_GGUF_U16] = 2, [PI_GGUF_I16] = 2, [PI_GGUF_U32] = 4,
    [PI_GGUF_I32] = 4, [PI_GGUF_F32] = 4, [PI_GGUF_BOOL] = 1, [PI_GGUF_STRING] = 0, [PI_GGUF_ARRAY] = 0,
    [PI_GGUF_U64] = 8, [PI_GGUF_I64] = 8, [PI_GGUF_F64] = 8,
};

static const char *const vtype_names[PI_GGUF_VTYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

size_t pi_gguf_vtype_size(enum pi_gguf_vtype t)
{
    return (unsigned)t < PI_GGUF_VTYPE_COUNT ? vtype_sizes[t] : 0;
}

const char *pi_gguf_vtype_name(enum pi_gguf_vtype t)
{
    return (unsigned)t < PI_GGUF_VTYPE_COUNT ? vtype_names[t] : "unknown";
}

bool pi_gguf_str_eq(struct pi_gguf_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

bool pi_gguf_str_has_nul(struct pi_gguf_str s) { return s.len && memchr(s.ptr, 0, (size_t)s.len) != NULL; }

/* ------------------------------------------------------------------------------------------------
 * Messages
 * ---------------------------------------------------------------------------------------------- */

/* Copy a name from the file into out for a message: printable ASCII kept, the rest as '?', cut at
 * 48 bytes with "...". */
static void printable(char *out, size_t outlen, const char *s, uint64_t len)
{
    size_t k = 0;
    for (uint64_t i = 0; i < len && k + 4 < outlen; i++) {
        if (k >= 48) {
            memcpy(out + k, "...", 3);
            k += 3;
            break;
        }
        unsigned char c = (unsigned char)s[i];
        out[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[k] = '\0';
}

/* Record a rejection: "<ctx>: <message> at offset <off>". Returns -code for the caller to return. */
__attribute__((format(printf, 4, 5))) static int fail(struct rd *r, int code, uint64_t off, const char *fmt, ...)
{
    char msg[ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->err && r->errlen)
        snprintf(r->err, r->errlen, "%s%s%s at offset %llu", r->ctx, r->ctx[0] ? ": " : "", msg,
                 (unsigned long long)off);
    return -code;
}

static void set_ctx(struct rd *r, const char *what, uint64_t i, const struct pi_gguf_str *name)
{
    char nm[64];
    if (name) {
        printable(nm, sizeof nm, name->ptr, name->len);
        snprintf(r->ctx, sizeof r->ctx, "%s %llu (%s)", what, (unsigned long long)i, nm);
    } else {
        snprintf(r->ctx, sizeof r->ctx, "%s %llu", what, (unsigned long long)i);
    }
}

/* ------------------------------------------------------------------------------------------------
 * Cursor reads: each checks that the bytes remain first
 * ---------------------------------------------------------------------------------------------- */

static uint64_t remain(const struct rd *r) { return r->size - r->pos; }

static int need(struct rd *r, uint64_t n, const char *what)
{
    if (n <= remain(r)) return 0;
    return fail(r, PI_ERR_FORMAT, r->pos, "truncated %s (needs %llu bytes, %llu remain)", what,
                (unsigned long long)n, (unsigned long long)remain(r));
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what)
{
    int rc = need(r, 4, what);
    if (rc) return rc;
    memcpy(v, r->p + r->pos, 4);
    r->pos += 4;
    return 0;
}

static int rd_u64(struct rd *r, uint64_t *v, const char *what)
{
    int rc = need(r, 8, what);
    if (rc) return rc;
    memcpy(v, r->p + r->pos, 8);
    r->pos += 8;
    return 0;
}

/* A length-prefixed string named what (element elem of an array when elem >= 0), of at most max bytes
 * (0: no limit but the file), and at least one byte when nonempty is set. Messages are formatted only
 * on failure: this runs once per vocabulary entry. */
static int rd_str(struct rd *r, struct pi_gguf_str *s, const char *what, int64_t elem, uint64_t max, bool nonempty)
{
    uint64_t off = r->pos, len = 0;
    bool trunc = remain(r) < 8;
    if (!trunc) {
        memcpy(&len, r->p + r->pos, 8);
        r->pos += 8;
        if (!(nonempty && len == 0) && !(max && len > max) && len <= remain(r)) {
            s->ptr = (const char *)r->p + r->pos;
            s->len = len;
            r->pos += len;
            return 0;
        }
    }
    char el[40] = "";
    if (elem >= 0) snprintf(el, sizeof el, "element %lld: ", (long long)elem);
    if (trunc)
        return fail(r, PI_ERR_FORMAT, off, "truncated %s%s length (needs 8 bytes, %llu remain)", el, what,
                    (unsigned long long)remain(r));
    if (nonempty && len == 0) return fail(r, PI_ERR_FORMAT, off, "%sempty %s", el, what);
    if (max && len > max)
        return fail(r, PI_ERR_FORMAT, off, "%s%s length %llu exceeds limit %llu", el, what, (unsigned long long)len,
                    (unsigned long long)max);
    return fail(r, PI_ERR_FORMAT, off, "%s%s length %llu exceeds the %llu bytes remaining", el, what,
                (unsigned long long)len, (unsigned long long)remain(r));
}

/* ------------------------------------------------------------------------------------------------
 * Hash tables (keys and tensor names)
 * ---------------------------------------------------------------------------------------------- */

/* FNV-1a with a per-handle seed folded into the start state and a final mix, so that a file cannot
 * be crafted offline to make every name collide. */
static uint64_t hash_bytes(uint64_t seed, const char *s, uint64_t len)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (uint64_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static uint64_t table_size(uint64_t n)
{
    uint64_t sz = 8;
    while (sz < 2 * n) sz *= 2;
    return sz;
}

typedef struct pi_gguf_str (*name_at_fn)(const struct pi_gguf *g, uint32_t i);

static struct pi_gguf_str kv_name_at(const struct pi_gguf *g, uint32_t i) { return g->kvs[i].key; }
static struct pi_gguf_str t_name_at(const struct pi_gguf *g, uint32_t i) { return g->tensors[i].t.name; }

/* Find name in the table; returns the slot (empty or matching) and sets *found to 1 + index or 0. */
static uint64_t table_probe(const struct pi_gguf *g, const uint32_t *slots, uint64_t mask, name_at_fn at,
                            const char *s, uint64_t len, uint32_t *found)
{
    uint64_t h = hash_bytes(g->seed, s, len) & mask;
    for (;;) {
        uint32_t e = slots[h];
        if (e == 0) break;
        struct pi_gguf_str o = at(g, e - 1);
        if (o.len == len && memcmp(o.ptr, s, len) == 0) break;
        h = (h + 1) & mask;
    }
    *found = slots[h];
    return h;
}

/* ------------------------------------------------------------------------------------------------
 * Header
 * ---------------------------------------------------------------------------------------------- */

static int parse_header(struct pi_gguf *g, struct rd *r)
{
    char magic[4];
    uint32_t version;
    int rc = need(r, 4, "magic");
    if (rc) return rc;
    memcpy(magic, r->p, 4);
    r->pos = 4;
    if (memcmp(magic, "GGUF", 4) == 0) {
        g->flavour = PI_GGUF_FLAVOUR_GGUF;
    } else if (memcmp(magic, "PWRI", 4) == 0) {
        g->flavour = PI_GGUF_FLAVOUR_POWERINFER;
    } else {
        char pm[8];
        printable(pm, sizeof pm, magic, 4);
        return fail(r, PI_ERR_FORMAT, 0, "bad magic \"%s\" (expected \"GGUF\" or \"PWRI\")", pm);
    }
    if ((rc = rd_u32(r, &version, "version"))) return rc;
    if (version == 1)
        return fail(r, PI_ERR_UNSUPPORTED, 4, "GGUF version 1 is not supported (convert the file again)");
    if (version == 0x02000000u || version == 0x03000000u)
        return fail(r, PI_ERR_UNSUPPORTED, 4, "big-endian GGUF file (version bytes 0x%08x) is not supported", version);
    if (version != 2 && version != 3)
        return fail(r, PI_ERR_UNSUPPORTED, 4, "GGUF version %u is not supported (expected 2 or 3)", version);
    g->version = version;
    if ((rc = rd_u64(r, &g->n_tensors, "n_tensors"))) return rc;
    if ((rc = rd_u64(r, &g->n_kv, "n_kv"))) return rc;

    /* Bound each count by the smallest entry that could encode it, then both together. */
    uint64_t rem = remain(r);
    if (g->n_tensors > rem / MIN_TENSOR_BYTES || g->n_tensors > MAX_ENTRIES)
        return fail(r, PI_ERR_FORMAT, 8, "n_tensors %llu exceeds what the %llu remaining bytes can hold (at most %llu)",
                    (unsigned long long)g->n_tensors, (unsigned long long)rem,
                    (unsigned long long)PI_MIN(rem / MIN_TENSOR_BYTES, MAX_ENTRIES));
    if (g->n_kv > rem / MIN_KV_BYTES || g->n_kv > MAX_ENTRIES)
        return fail(r, PI_ERR_FORMAT, 16, "n_kv %llu exceeds what the %llu remaining bytes can hold (at most %llu)",
                    (unsigned long long)g->n_kv, (unsigned long long)rem,
                    (unsigned long long)PI_MIN(rem / MIN_KV_BYTES, MAX_ENTRIES));
    if (g->n_tensors * MIN_TENSOR_BYTES + g->n_kv * MIN_KV_BYTES > rem)
        return fail(r, PI_ERR_FORMAT, 8, "n_tensors %llu and n_kv %llu together exceed the %llu remaining bytes",
                    (unsigned long long)g->n_tensors, (unsigned long long)g->n_kv, (unsigned long long)rem);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Metadata
 * ---------------------------------------------------------------------------------------------- */

static int check_bools(struct rd *r, uint64_t off, uint64_t n)
{
    for (uint64_t j = 0; j < n; j++) {
        uint8_t b = r->p[off + j];
        if (b > 1) return fail(r, PI_ERR_FORMAT, off + j, "bool value %u is not 0 or 1", b);
    }
    return 0;
}

static int parse_str_array(struct rd *r, struct kv *kv)
{
    uint64_t arr_off = r->pos - 8;
    /* Each element needs at least its 8-byte length: this bounds n before the index is allocated. */
    if (kv->n > remain(r) / 8)
        return fail(r, PI_ERR_FORMAT, arr_off, "array of %llu strings exceeds the %llu bytes remaining (8 bytes each at least)",
                    (unsigned long long)kv->n, (unsigned long long)remain(r));
    if (kv->n == 0) return 0;
    kv->str_offs = malloc(kv->n * sizeof *kv->str_offs);
    if (!kv->str_offs) return fail(r, PI_ERR_NOMEM, arr_off, "out of memory indexing %llu strings", (unsigned long long)kv->n);
    for (uint64_t j = 0; j < kv->n; j++) {
        struct pi_gguf_str s;
        kv->str_offs[j] = r->pos;
        int rc = rd_str(r, &s, "string", (int64_t)j, 0, false);
        if (rc) return rc;
    }
    return 0;
}

static int parse_array(struct rd *r, struct kv *kv)
{
    uint64_t off = r->pos;
    int rc = rd_u32(r, &kv->arr_type, "array element type");
    if (rc) return rc;
    if (kv->arr_type == PI_GGUF_ARRAY) return fail(r, PI_ERR_FORMAT, off, "array of arrays is not supported");
    if (kv->arr_type >= PI_GGUF_VTYPE_COUNT)
        return fail(r, PI_ERR_FORMAT, off, "unknown array element type %u", kv->arr_type);
    if ((rc = rd_u64(r, &kv->n, "array count"))) return rc;
    kv->val_off = r->pos;
    if (kv->arr_type == PI_GGUF_STRING) return parse_str_array(r, kv);
    uint64_t esz = vtype_sizes[kv->arr_type];
    if (kv->n > remain(r) / esz)
        return fail(r, PI_ERR_FORMAT, off + 4, "array of %llu %s elements exceeds the %llu bytes remaining",
                    (unsigned long long)kv->n, vtype_names[kv->arr_type], (unsigned long long)remain(r));
    if (kv->arr_type == PI_GGUF_BOOL && (rc = check_bools(r, r->pos, kv->n))) return rc;
    r->pos += kv->n * esz;
    return 0;
}

static int parse_value(struct rd *r, struct kv *kv)
{
    uint64_t off = r->pos;
    int rc = rd_u32(r, &kv->type, "value type");
    if (rc) return rc;
    if (kv->type >= PI_GGUF_VTYPE_COUNT) return fail(r, PI_ERR_FORMAT, off, "unknown value type %u", kv->type);
    kv->val_off = r->pos;
    if (kv->type == PI_GGUF_ARRAY) return parse_array(r, kv);
    if (kv->type == PI_GGUF_STRING) {
        struct pi_gguf_str s;
        return rd_str(r, &s, "string", -1, 0, false);
    }
    char what[32];
    snprintf(what, sizeof what, "%s value", vtype_names[kv->type]);
    if ((rc = need(r, vtype_sizes[kv->type], what))) return rc;
    if (kv->type == PI_GGUF_BOOL && (rc = check_bools(r, r->pos, 1))) return rc;
    r->pos += vtype_sizes[kv->type];
    return 0;
}

static int parse_kvs(struct pi_gguf *g, struct rd *r)
{
    g->kvs = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kvs);
    g->kv_mask = table_size(g->n_kv) - 1;
    g->kv_slots = calloc(g->kv_mask + 1, sizeof *g->kv_slots);
    if (!g->kvs || !g->kv_slots) return fail(r, PI_ERR_NOMEM, 16, "out of memory for %llu keys", (unsigned long long)g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        struct kv *kv = &g->kvs[i];
        uint64_t key_off = r->pos;
        uint32_t found;
        set_ctx(r, "kv", i, NULL);
        int rc = rd_str(r, &kv->key, "key", -1, GGUF_MAX_KEY, true);
        if (rc) return rc;
        set_ctx(r, "kv", i, &kv->key);
        uint64_t slot = table_probe(g, g->kv_slots, g->kv_mask, kv_name_at, kv->key.ptr, kv->key.len, &found);
        if (found) return fail(r, PI_ERR_FORMAT, key_off, "duplicate key (first at kv %u)", found - 1);
        if ((rc = parse_value(r, kv))) return rc;
        g->kv_slots[slot] = (uint32_t)i + 1;
    }
    r->ctx[0] = '\0';
    return 0;
}

static int parse_alignment(struct pi_gguf *g, struct rd *r)
{
    int64_t i = pi_gguf_find_key(g, "general.alignment");
    g->alignment = GGUF_DEFAULT_ALIGN;
    if (i < 0) return 0;
    const struct kv *kv = &g->kvs[i];
    snprintf(r->ctx, sizeof r->ctx, "kv %lld (general.alignment)", (long long)i);
    if (kv->type != PI_GGUF_U32)
        return fail(r, PI_ERR_FORMAT, kv->val_off - 4, "general.alignment has type %s, expected u32",
                    vtype_names[kv->type]);
    uint32_t a;
    memcpy(&a, r->p + kv->val_off, 4);
    if (!pi_is_pow2(a)) return fail(r, PI_ERR_FORMAT, kv->val_off, "general.alignment %u is not a power of two", a);
    if (a > GGUF_MAX_ALIGN)
        return fail(r, PI_ERR_FORMAT, kv->val_off, "general.alignment %u exceeds limit %u", a, GGUF_MAX_ALIGN);
    if (a < GGUF_MIN_ALIGN)
        return fail(r, PI_ERR_FORMAT, kv->val_off, "general.alignment %u is below the minimum %u (tensor data would be misaligned)",
                    a, GGUF_MIN_ALIGN);
    g->alignment = a;
    r->ctx[0] = '\0';
    return 0;
}

/* general.architecture, when present, is a string (the spec's type): a reader that looks the
 * architecture up as a string must not meet a number under that key. Its content is checked by the
 * model loader, which knows the architectures it runs. */
static int parse_architecture(const struct pi_gguf *g, struct rd *r)
{
    int64_t i = pi_gguf_find_key(g, "general.architecture");
    if (i < 0) return 0;
    const struct kv *kv = &g->kvs[i];
    snprintf(r->ctx, sizeof r->ctx, "kv %lld (general.architecture)", (long long)i);
    if (kv->type != PI_GGUF_STRING)
        return fail(r, PI_ERR_FORMAT, kv->val_off - 4, "general.architecture has type %s, expected string",
                    vtype_names[kv->type]);
    r->ctx[0] = '\0';
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Tensor table
 * ---------------------------------------------------------------------------------------------- */

/* Dimensions, element count and byte size of t, each checked for overflow. */
static int parse_shape(struct rd *r, enum pi_gguf_flavour flavour, struct pi_gguf_tensor *t)
{
    uint64_t off = r->pos;
    int rc = rd_u32(r, &t->n_dims, "n_dims");
    if (rc) return rc;
    if (t->n_dims < 1 || t->n_dims > PI_GGUF_MAX_DIMS)
        return fail(r, PI_ERR_FORMAT, off, "n_dims %u not in 1..%d", t->n_dims, PI_GGUF_MAX_DIMS);
    t->n_elems = 1;
    for (uint32_t d = 0; d < PI_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        off = r->pos;
        if ((rc = rd_u64(r, &t->ne[d], "dimension"))) return rc;
        if (t->ne[d] == 0) return fail(r, PI_ERR_FORMAT, off, "dimension %u is 0 (empty tensors are rejected)", d);
        if (t->ne[d] > (uint64_t)INT64_MAX)
            return fail(r, PI_ERR_FORMAT, off, "dimension %u (%llu) exceeds INT64_MAX", d, (unsigned long long)t->ne[d]);
        if (pi_mul_overflows(t->n_elems, t->ne[d], &t->n_elems) || t->n_elems > (uint64_t)INT64_MAX)
            return fail(r, PI_ERR_FORMAT, off, "element count overflows at dimension %u", d);
    }
    off = r->pos;
    if ((rc = rd_u32(r, &t->type, "type"))) return rc;
    t->type = pi_gguf_type_from_file(flavour, t->type);
    const struct pi_type_info *ti = pi_type_get(t->type);
    if (!ti)
        return fail(r, t->type < GGML_TYPE_ID_LIMIT ? PI_ERR_UNSUPPORTED : PI_ERR_FORMAT, off,
                    "type id %u is not a type pinfer knows", t->type);
    uint64_t row;
    if (t->ne[0] % ti->block_elems != 0)
        return fail(r, PI_ERR_FORMAT, off, "row length %llu is not a multiple of the %s block size %u",
                    (unsigned long long)t->ne[0], ti->name, ti->block_elems);
    if (!pi_type_row_bytes(t->type, t->ne[0], &row) || pi_mul_overflows(row, t->n_elems / t->ne[0], &t->n_bytes))
        return fail(r, PI_ERR_FORMAT, off, "byte size overflows (%llu elements of %s)",
                    (unsigned long long)t->n_elems, ti->name);
    return 0;
}

static int parse_tensor_infos(struct pi_gguf *g, struct rd *r)
{
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    g->t_mask = table_size(g->n_tensors) - 1;
    g->t_slots = calloc(g->t_mask + 1, sizeof *g->t_slots);
    if (!g->tensors || !g->t_slots)
        return fail(r, PI_ERR_NOMEM, 8, "out of memory for %llu tensors", (unsigned long long)g->n_tensors);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct pi_gguf_tensor *t = &g->tensors[i].t;
        uint64_t name_off = r->pos;
        uint32_t found;
        set_ctx(r, "tensor", i, NULL);
        int rc = rd_str(r, &t->name, "tensor name", -1, GGUF_MAX_NAME, true);
        if (rc) return rc;
        set_ctx(r, "tensor", i, &t->name);
        uint64_t slot = table_probe(g, g->t_slots, g->t_mask, t_name_at, t->name.ptr, t->name.len, &found);
        if (found) return fail(r, PI_ERR_FORMAT, name_off, "duplicate tensor name (first is tensor %u)", found - 1);
        if ((rc = parse_shape(r, g->flavour, t))) return rc;
        g->tensors[i].info_off = r->pos;
        if ((rc = rd_u64(r, &t->offset, "data offset"))) return rc;
        if (t->offset % g->alignment != 0)
            return fail(r, PI_ERR_FORMAT, g->tensors[i].info_off, "data offset %llu is not a multiple of the alignment %u",
                        (unsigned long long)t->offset, g->alignment);
        g->t_slots[slot] = (uint32_t)i + 1;
    }
    r->ctx[0] = '\0';
    return 0;
}

struct span {
    uint64_t start, end, index;
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index; /* 0 only for an element and itself */
}

/* With the data section placed: every tensor inside the file, and no two overlapping. */
static int place_data(struct pi_gguf *g, struct rd *r)
{
    /* r->pos <= size < 2^63 (a mapping or buffer), so rounding up cannot wrap. */
    g->data_offset = pi_align_up(r->pos, g->alignment);
    if (g->n_tensors == 0) return 0;
    struct span *sp = malloc(g->n_tensors * sizeof *sp);
    if (!sp) return fail(r, PI_ERR_NOMEM, 8, "out of memory for %llu tensors", (unsigned long long)g->n_tensors);
    int rc = 0;
    for (uint64_t i = 0; i < g->n_tensors && !rc; i++) {
        struct tensor *te = &g->tensors[i];
        uint64_t start, end;
        if (pi_add_overflows(g->data_offset, te->t.offset, &start) || pi_add_overflows(start, te->t.n_bytes, &end) ||
            end > g->size) {
            set_ctx(r, "tensor", i, &te->t.name);
            rc = fail(r, PI_ERR_FORMAT, te->info_off,
                      "data offset %llu + %llu bytes past end of file (size %llu, data section at %llu)",
                      (unsigned long long)te->t.offset, (unsigned long long)te->t.n_bytes,
                      (unsigned long long)g->size, (unsigned long long)g->data_offset);
            break;
        }
        te->t.data = g->base + start;
        sp[i] = (struct span){start, end, i};
    }
    if (!rc) qsort(sp, g->n_tensors, sizeof *sp, span_cmp);
    for (uint64_t k = 1; k < g->n_tensors && !rc; k++) {
        if (sp[k].start < sp[k - 1].end) {
            const struct tensor *te = &g->tensors[sp[k].index];
            char other[64];
            printable(other, sizeof other, g->tensors[sp[k - 1].index].t.name.ptr, g->tensors[sp[k - 1].index].t.name.len);
            set_ctx(r, "tensor", sp[k].index, &te->t.name);
            rc = fail(r, PI_ERR_FORMAT, te->info_off, "data [%llu, %llu) overlaps tensor %llu (%s)",
                      (unsigned long long)sp[k].start, (unsigned long long)sp[k].end,
                      (unsigned long long)sp[k - 1].index, other);
        }
    }
    free(sp);
    return rc;
}

/* ------------------------------------------------------------------------------------------------
 * Open / destroy
 * ---------------------------------------------------------------------------------------------- */

static uint64_t make_seed(const void *p)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull) ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)p;
}

/* Parse base[0, size) into a new handle (which takes over the mapping when mapped is set). */
static int parse(const void *base, uint64_t size, bool mapped, pi_gguf_t **out, char *err, size_t errlen)
{
    struct rd r = {.p = base, .size = size, .err = err, .errlen = errlen};
    pi_gguf_t *g = calloc(1, sizeof *g);
    if (!g) return fail(&r, PI_ERR_NOMEM, 0, "out of memory");
    g->base = base;
    g->size = size;
    g->mapped = mapped;
    g->seed = make_seed(g);
    int rc = parse_header(g, &r);
    if (!rc) rc = parse_kvs(g, &r);
    if (!rc) rc = parse_alignment(g, &r);
    if (!rc) rc = parse_architecture(g, &r);
    if (!rc) rc = parse_tensor_infos(g, &r);
    if (!rc) rc = place_data(g, &r);
    if (rc) {
        if (!mapped) g->base = NULL; /* the caller's buffer is not ours to unmap */
        pi_gguf_destroy(&g);
        return rc;
    }
    *out = g;
    return 0;
}

int pi_gguf_open_buffer(const void *buf, size_t len, pi_gguf_t **out, char *err, size_t errlen)
{
    char msg[ERR_MAX];
    PI_ASSERT(out != NULL);
    PI_ASSERT(buf != NULL || len == 0);
    *out = NULL;
    int rc = parse(buf, len, false, out, err ? err : msg, err ? errlen : sizeof msg);
    if (rc && !err) pi_error("gguf buffer: %s", msg);
    return rc;
}

/* Map path read-only; *base is NULL for an empty file (nothing to map). */
static int map_file(const char *path, const void **base, uint64_t *size, char *err, size_t errlen)
{
    struct stat st;
    /* O_NONBLOCK: a FIFO named as a model must fail the S_ISREG check below, not block in open()
     * until some writer appears. It changes nothing for a regular file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "open failed: %s", strerror(e));
        return e == ENOENT ? -PI_ERR_NOTFOUND : -PI_ERR_IO;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "fstat failed: %s", strerror(errno));
        close(fd);
        return -PI_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "not a regular file");
        close(fd);
        return -PI_ERR_IO;
    }
    *size = (uint64_t)st.st_size;
    *base = NULL;
    if (st.st_size > 0) {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            snprintf(err, errlen, "mmap of %llu bytes failed: %s", (unsigned long long)st.st_size, strerror(errno));
            close(fd);
            return -PI_ERR_IO;
        }
        *base = m;
    }
    close(fd);
    return 0;
}

int pi_gguf_open(const char *path, pi_gguf_t **out, char *err, size_t errlen)
{
    char msg[ERR_MAX];
    const void *base;
    uint64_t size;
    PI_ASSERT(path != NULL && out != NULL);
    *out = NULL;
    char *e = err ? err : msg;
    size_t el = err ? errlen : sizeof msg;
    int rc = map_file(path, &base, &size, e, el);
    if (!rc) rc = parse(base, size, base != NULL, out, e, el); /* on failure parse unmaps */
    if (rc && !err) pi_error("%s: %s", path, msg);
    return rc;
}

void pi_gguf_destroy(pi_gguf_t **gp)
{
    if (!gp || !*gp) return;
    pi_gguf_t *g = *gp;
    if (g->kvs)
        for (uint64_t i = 0; i < g->n_kv; i++) free(g->kvs[i].str_offs);
    free(g->kvs);
    free(g->tensors);
    free(g->kv_slots);
    free(g->t_slots);
    if (g->mapped && g->base) munmap((void *)g->base, (size_t)g->size);
    free(g);
    *gp = NULL;
}

/* ------------------------------------------------------------------------------------------------
 * Accessors: everything below reads only what the parse checked
 * ---------------------------------------------------------------------------------------------- */

uint32_t pi_gguf_version(const pi_gguf_t *g) { return g->version; }
enum pi_gguf_flavour pi_gguf_flavour(const pi_gguf_t *g) { return g->flavour; }

/* PowerInfer's ggml (d3ebd7c): GGML_TYPE_I8 = 16, I16, I32 (gguf.h) */
#define PWRI_TYPE_I8 16u

uint32_t pi_gguf_type_to_file(enum pi_gguf_flavour f, uint32_t type)
{
    if (f == PI_GGUF_FLAVOUR_POWERINFER && type >= PI_TYPE_I8 && type <= PI_TYPE_I32)
        return PWRI_TYPE_I8 + (type - PI_TYPE_I8);
    return type;
}

uint32_t pi_gguf_type_from_file(enum pi_gguf_flavour f, uint32_t type)
{
    if (f == PI_GGUF_FLAVOUR_POWERINFER && type >= PWRI_TYPE_I8 && type <= PWRI_TYPE_I8 + 2)
        return PI_TYPE_I8 + (type - PWRI_TYPE_I8);
    return type;
}
uint32_t pi_gguf_alignment(const pi_gguf_t *g) { return g->alignment; }
uint64_t pi_gguf_file_size(const pi_gguf_t *g) { return g->size; }
const void *pi_gguf_base(const pi_gguf_t *g) { return g->base; }
uint64_t pi_gguf_data_offset(const pi_gguf_t *g) { return g->data_offset; }
uint64_t pi_gguf_n_kv(const pi_gguf_t *g) { return g->n_kv; }
uint64_t pi_gguf_n_tensors(const pi_gguf_t *g) { return g->n_tensors; }

int64_t pi_gguf_find_key(const pi_gguf_t *g, const char *key)
{
    uint32_t found;
    if (g->n_kv == 0) return -1;
    table_probe(g, g->kv_slots, g->kv_mask, kv_name_at, key, strlen(key), &found);
    return found ? (int64_t)found - 1 : -1;
}

struct pi_gguf_str pi_gguf_key(const pi_gguf_t *g, uint64_t i)
{
    PI_ASSERT(i < g->n_kv);
    return g->kvs[i].key;
}

enum pi_gguf_vtype pi_gguf_kv_type(const pi_gguf_t *g, uint64_t i)
{
    PI_ASSERT(i < g->n_kv);
    return (enum pi_gguf_vtype)g->kvs[i].type;
}

static const struct kv *kv_at(const pi_gguf_t *g, uint64_t i) { return i < g->n_kv ? &g->kvs[i] : NULL; }

static const struct kv *kv_by_key(const pi_gguf_t *g, const char *key)
{
    int64_t i = pi_gguf_find_key(g, key);
    return i < 0 ? NULL : &g->kvs[i];
}

/* Integer value of kv: *neg set when it is a negative signed value (then *s holds it), else *u. */
static int kv_integer(const pi_gguf_t *g, const struct kv *kv, uint64_t *u, int64_t *s, bool *neg)
{
    const uint8_t *p = g->base + kv->val_off;
    *neg = false;
    switch (kv->type) {
    case PI_GGUF_U8: *u = p[0]; return 0;
    case PI_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *u = v; return 0; }
    case PI_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *u = v; return 0; }
    case PI_GGUF_U64: memcpy(u, p, 8); return 0;
    case PI_GGUF_I8: { int8_t v; memcpy(&v, p, 1); *s = v; break; }
    case PI_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *s = v; break; }
    case PI_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *s = v; break; }
    case PI_GGUF_I64: memcpy(s, p, 8); break;
    default: return -PI_ERR_FORMAT;
    }
    *neg = *s < 0;
    if (!*neg) *u = (uint64_t)*s;
    return 0;
}

static int kv_uint(const pi_gguf_t *g, const struct kv *kv, uint64_t *out)
{
    uint64_t u = 0;
    int64_t s = 0;
    bool neg;
    if (!kv) return -PI_ERR_NOTFOUND;
    int rc = kv_integer(g, kv, &u, &s, &neg);
    if (rc) return rc;
    if (neg) return -PI_ERR_RANGE;
    *out = u;
    return 0;
}

static int kv_int(const pi_gguf_t *g, const struct kv *kv, int64_t *out)
{
    uint64_t u = 0;
    int64_t s = 0;
    bool neg;
    if (!kv) return -PI_ERR_NOTFOUND;
    int rc = kv_integer(g, kv, &u, &s, &neg);
    if (rc) return rc;
    if (neg) {
        *out = s;
        return 0;
    }
    if (u > (uint64_t)INT64_MAX) return -PI_ERR_RANGE;
    *out = (int64_t)u;
    return 0;
}

static int kv_f64(const pi_gguf_t *g, const struct kv *kv, double *out)
{
    if (!kv) return -PI_ERR_NOTFOUND;
    if (kv->type == PI_GGUF_F32) {
        float f;
        memcpy(&f, g->base + kv->val_off, 4);
        *out = f;
        return 0;
    }
    if (kv->type != PI_GGUF_F64) return -PI_ERR_FORMAT;
    memcpy(out, g->base + kv->val_off, 8);
    return 0;
}

static int kv_bool(const pi_gguf_t *g, const struct kv *kv, bool *out)
{
    if (!kv) return -PI_ERR_NOTFOUND;
    if (kv->type != PI_GGUF_BOOL) return -PI_ERR_FORMAT;
    *out = g->base[kv->val_off] != 0;
    return 0;
}

/* The string whose u64 length field is at file offset off (checked at open). */
static struct pi_gguf_str str_at(const pi_gguf_t *g, uint64_t off)
{
    struct pi_gguf_str s;
    memcpy(&s.len, g->base + off, 8);
    s.ptr = (const char *)g->base + off + 8;
    return s;
}

static int kv_str(const pi_gguf_t *g, const struct kv *kv, struct pi_gguf_str *out)
{
    if (!kv) return -PI_ERR_NOTFOUND;
    if (kv->type != PI_GGUF_STRING) return -PI_ERR_FORMAT;
    *out = str_at(g, kv->val_off);
    return 0;
}

static int kv_arr(const struct kv *kv, enum pi_gguf_vtype *type, uint64_t *n)
{
    if (!kv) return -PI_ERR_NOTFOUND;
    if (kv->type != PI_GGUF_ARRAY) return -PI_ERR_FORMAT;
    if (type) *type = (enum pi_gguf_vtype)kv->arr_type;
    if (n) *n = kv->n;
    return 0;
}

static const void *kv_arr_data(const pi_gguf_t *g, const struct kv *kv)
{
    if (!kv || kv->type != PI_GGUF_ARRAY || kv->arr_type == PI_GGUF_STRING) return NULL;
    return g->base + kv->val_off;
}

static int kv_arr_str(const pi_gguf_t *g, const struct kv *kv, uint64_t j, struct pi_gguf_str *out)
{
    if (!kv) return -PI_ERR_NOTFOUND;
    if (kv->type != PI_GGUF_ARRAY || kv->arr_type != PI_GGUF_STRING) return -PI_ERR_FORMAT;
    if (j >= kv->n) return -PI_ERR_RANGE;
    *out = str_at(g, kv->str_offs[j]);
    return 0;
}

int pi_gguf_get_uint(const pi_gguf_t *g, const char *key, uint64_t *out) { return kv_uint(g, kv_by_key(g, key), out); }
int pi_gguf_get_int(const pi_gguf_t *g, const char *key, int64_t *out) { return kv_int(g, kv_by_key(g, key), out); }
int pi_gguf_get_f64(const pi_gguf_t *g, const char *key, double *out) { return kv_f64(g, kv_by_key(g, key), out); }
int pi_gguf_get_bool(const pi_gguf_t *g, const char *key, bool *out) { return kv_bool(g, kv_by_key(g, key), out); }
int pi_gguf_get_str(const pi_gguf_t *g, const char *key, struct pi_gguf_str *out) { return kv_str(g, kv_by_key(g, key), out); }

int pi_gguf_get_f32(const pi_gguf_t *g, const char *key, float *out)
{
    double d;
    int rc = kv_f64(g, kv_by_key(g, key), &d);
    if (!rc) *out = (float)d;
    return rc;
}

int pi_gguf_get_arr(const pi_gguf_t *g, const char *key, enum pi_gguf_vtype *type, uint64_t *n)
{
    return kv_arr(kv_by_key(g, key), type, n);
}

const void *pi_gguf_arr_data(const pi_gguf_t *g, const char *key) { return kv_arr_data(g, kv_by_key(g, key)); }

int pi_gguf_arr_str(const pi_gguf_t *g, const char *key, uint64_t i, struct pi_gguf_str *out)
{
    return kv_arr_str(g, kv_by_key(g, key), i, out);
}

static int range_or(const pi_gguf_t *g, uint64_t i) { return i < g->n_kv ? 0 : -PI_ERR_RANGE; }

int pi_gguf_kv_uint(const pi_gguf_t *g, uint64_t i, uint64_t *out)
{
    return range_or(g, i) ? -PI_ERR_RANGE : kv_uint(g, kv_at(g, i), out);
}
int pi_gguf_kv_int(const pi_gguf_t *g, uint64_t i, int64_t *out)
{
    return range_or(g, i) ? -PI_ERR_RANGE : kv_int(g, kv_at(g, i), out);
}
int pi_gguf_kv_f64(const pi_gguf_t *g, uint64_t i, double *out)
{
    return range_or(g, i) ? -PI_ERR_RANGE : kv_f64(g, kv_at(g, i), out);
}
int pi_gguf_kv_bool(const pi_gguf_t *g, uint64_t i, bool *out)
{
    return range_or(g, i) ? -PI_ERR_RANGE : kv_bool(g, kv_at(g, i), out);
}
int pi_gguf_kv_str(const pi_gguf_t *g, uint64_t i, struct pi_gguf_str *out)
{
    return range_or(g, i) ? -PI_ERR_RANGE : kv_str(g, kv_at(g, i), out);
}
int pi_gguf_kv_arr(const pi_gguf_t *g, uint64_t i, enum pi_gguf_vtype *type, uint64_t *n)
{
    return range_or(g, i) ? -PI_ERR_RANGE : kv_arr(kv_at(g, i), type, n);
}
const void *pi_gguf_kv_arr_data(const pi_gguf_t *g, uint64_t i) { return kv_arr_data(g, kv_at(g, i)); }
int pi_gguf_kv_arr_str(const pi_gguf_t *g, uint64_t i, uint64_t j, struct pi_gguf_str *out)
{
    return range_or(g, i) ? -PI_ERR_RANGE : kv_arr_str(g, kv_at(g, i), j, out);
}

const struct pi_gguf_tensor *pi_gguf_tensor(const pi_gguf_t *g, uint64_t i)
{
    return i < g->n_tensors ? &g->tensors[i].t : NULL;
}

const struct pi_gguf_tensor *pi_gguf_find_tensor(const pi_gguf_t *g, const char *name)
{
    uint32_t found;
    if (g->n_tensors == 0) return NULL;
    table_probe(g, g->t_slots, g->t_mask, t_name_at, name, strlen(name), &found);
    return found ? &g->tensors[found - 1].t : NULL;
}
