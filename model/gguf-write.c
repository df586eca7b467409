/*
 * model/gguf-write.c - the GGUF v3 writer behind model/gguf.h, for the sidecar files pinfer's tools
 * produce (activation statistics, predictors, placement).
 *
 * The writer keeps everything in memory (metadata already serialised, tensor data copied) and writes
 * the file in one pass: header, metadata, tensor infos, padding to the alignment, then each tensor's
 * data padded to the alignment. It writes a temporary file beside the target and renames it over the
 * target only after fsync, so a reader never sees a half-written file. It validates what it is given
 * with the same rules the reader applies (doc/gguf-validation.md), so every file it writes reopens.
 */
#include "config.h"
#include "model/gguf.h"
#include "lib/common.h"
#include "lib/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define W_MAX_KEY 65535u
#define W_MAX_ALIGN (1u << 20)
#define W_DEFAULT_ALIGN 32u

struct wkv {
    char *key;
    uint32_t type;  /* enum pi_gguf_vtype */
    uint8_t *val;   /* the value exactly as it goes on disk, after the type field */
    size_t val_len;
};

struct wtensor {
    char *name;
    uint32_t type; /* enum pi_type */
    uint32_t n_dims;
    uint64_t ne[PI_GGUF_MAX_DIMS];
    uint64_t n_bytes;
    void *data; /* n_bytes, owned */
};

struct pi_gguf_writer {
    struct wkv *kvs;
    size_t n_kv, cap_kv;
    struct wtensor *ts;
    size_t n_t, cap_t;
    enum pi_gguf_flavour flavour; /* the magic written: "GGUF", or PowerInfer's "PWRI" */
};

pi_gguf_writer_t *pi_gguf_writer_new(void) { return calloc(1, sizeof(pi_gguf_writer_t)); }

void pi_gguf_writer_set_flavour(pi_gguf_writer_t *w, enum pi_gguf_flavour f) { w->flavour = f; }

void pi_gguf_writer_destroy(pi_gguf_writer_t **wp)
{
    if (!wp || !*wp) return;
    pi_gguf_writer_t *w = *wp;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kvs[i].key);
        free(w->kvs[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->ts[i].name);
        free(w->ts[i].data);
    }
    free(w->kvs);
    free(w->ts);
    free(w);
    *wp = NULL;
}

/* Grow *arr (of elem-byte items, *cap of them) to hold one more. */
static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 16, bytes;
    if (!pi_size_mul(nc, elem, &bytes)) return -PI_ERR_NOMEM;
    void *p = realloc(*arr, bytes);
    if (!p) return -PI_ERR_NOMEM;
    *arr = p;
    *cap = nc;
    return 0;
}

/* Store key = (type, val[0, len)) taking ownership of val; replaces an existing value in place. */
static int put_kv(pi_gguf_writer_t *w, const char *key, uint32_t type, uint8_t *val, size_t len)
{
    size_t klen = key ? strlen(key) : 0;
    if (klen == 0 || klen > W_MAX_KEY) {
        free(val);
        pi_error("gguf writer: key \"%.64s\" is %s", key ? key : "(null)", klen ? "longer than 65535 bytes" : "empty");
        return -PI_ERR_INVAL;
    }
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kvs[i].key, key) == 0) {
            free(w->kvs[i].val);
            w->kvs[i].type = type;
            w->kvs[i].val = val;
            w->kvs[i].val_len = len;
            return 0;
        }
    }
    char *k = strdup(key);
    if (!k || grow((void **)&w->kvs, &w->cap_kv, w->n_kv, sizeof *w->kvs)) {
        free(k);
        free(val);
        return -PI_ERR_NOMEM;
    }
    w->kvs[w->n_kv++] = (struct wkv){k, type, val, len};
    return 0;
}

static int put_copy(pi_gguf_writer_t *w, const char *key, uint32_t type, const void *v, size_t len)
{
    uint8_t *val = malloc(len ? len : 1);
    if (!val) return -PI_ERR_NOMEM;
    if (len) memcpy(val, v, len);
    return put_kv(w, key, type, val, len);
}

static bool is_fixed(enum pi_gguf_vtype t) { return pi_gguf_vtype_size(t) != 0; }

int pi_gguf_writer_set(pi_gguf_writer_t *w, const char *key, enum pi_gguf_vtype type, const void *v)
{
    if (!is_fixed(type)) {
        pi_error("gguf writer: %s: type %d is not a fixed-size scalar type", key ? key : "(null)", (int)type);
        return -PI_ERR_INVAL;
    }
    if (type == PI_GGUF_BOOL) {
        uint8_t b = *(const uint8_t *)v != 0;
        return put_copy(w, key, type, &b, 1);
    }
    return put_copy(w, key, type, v, pi_gguf_vtype_size(type));
}

int pi_gguf_writer_set_u32(pi_gguf_writer_t *w, const char *key, uint32_t v) { return put_copy(w, key, PI_GGUF_U32, &v, 4); }
int pi_gguf_writer_set_i32(pi_gguf_writer_t *w, const char *key, int32_t v) { return put_copy(w, key, PI_GGUF_I32, &v, 4); }
int pi_gguf_writer_set_u64(pi_gguf_writer_t *w, const char *key, uint64_t v) { return put_copy(w, key, PI_GGUF_U64, &v, 8); }
int pi_gguf_writer_set_f32(pi_gguf_writer_t *w, const char *key, float v) { return put_copy(w, key, PI_GGUF_F32, &v, 4); }

int pi_gguf_writer_set_bool(pi_gguf_writer_t *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return put_copy(w, key, PI_GGUF_BOOL, &b, 1);
}

/* Serialise a string (u64 length + bytes) at p; returns the bytes written. */
static size_t put_str_bytes(uint8_t *p, const char *s, size_t len)
{
    uint64_t l = len;
    memcpy(p, &l, 8);
    memcpy(p + 8, s, len);
    return 8 + len;
}

int pi_gguf_writer_set_str(pi_gguf_writer_t *w, const char *key, const char *v)
{
    return pi_gguf_writer_set_strn(w, key, v, strlen(v));
}

int pi_gguf_writer_set_strn(pi_gguf_writer_t *w, const char *key, const char *v, size_t len)
{
    if (len > SIZE_MAX - 8) return -PI_ERR_NOMEM;
    uint8_t *val = malloc(8 + len);
    if (!val) return -PI_ERR_NOMEM;
    put_str_bytes(val, v, len);
    return put_kv(w, key, PI_GGUF_STRING, val, 8 + len);
}

int pi_gguf_writer_set_arr(pi_gguf_writer_t *w, const char *key, enum pi_gguf_vtype type, const void *data, uint64_t n)
{
    size_t esz = pi_gguf_vtype_size(type), bytes, total;
    if (!is_fixed(type)) {
        pi_error("gguf writer: %s: array element type %d is not a fixed-size type", key ? key : "(null)", (int)type);
        return -PI_ERR_INVAL;
    }
    if (n > SIZE_MAX || !pi_size_mul((size_t)n, esz, &bytes) || !pi_size_add(bytes, 12, &total)) return -PI_ERR_NOMEM;
    uint8_t *val = malloc(total);
    if (!val) return -PI_ERR_NOMEM;
    uint32_t t = (uint32_t)type;
    memcpy(val, &t, 4);
    memcpy(val + 4, &n, 8);
    if (bytes) memcpy(val + 12, data, bytes);
    if (type == PI_GGUF_BOOL)
        for (size_t i = 0; i < bytes; i++) val[12 + i] = val[12 + i] != 0;
    return put_kv(w, key, PI_GGUF_ARRAY, val, total);
}

int pi_gguf_writer_set_arr_str(pi_gguf_writer_t *w, const char *key, const char *const *v, uint64_t n)
{
    size_t total = 12;
    for (uint64_t i = 0; i < n; i++)
        if (!pi_size_add(total, 8, &total) || !pi_size_add(total, strlen(v[i]), &total)) return -PI_ERR_NOMEM;
    uint8_t *val = malloc(total);
    if (!val) return -PI_ERR_NOMEM;
    uint32_t t = PI_GGUF_STRING;
    memcpy(val, &t, 4);
    memcpy(val + 4, &n, 8);
    size_t pos = 12;
    for (uint64_t i = 0; i < n; i++) pos += put_str_bytes(val + pos, v[i], strlen(v[i]));
    return put_kv(w, key, PI_GGUF_ARRAY, val, total);
}

/* Byte size of a tensor of the given shape, with the reader's rules; false (logged) when invalid. */
static bool tensor_bytes(const char *name, enum pi_type type, uint32_t n_dims, const uint64_t *ne, uint64_t *bytes)
{
    const struct pi_type_info *ti = pi_type_get((uint32_t)type);
    uint64_t n = 1, row;
    if (!ti) {
        pi_error("gguf writer: tensor %s: unknown type %d", name, (int)type);
        return false;
    }
    if (n_dims < 1 || n_dims > PI_GGUF_MAX_DIMS) {
        pi_error("gguf writer: tensor %s: n_dims %u not in 1..%d", name, n_dims, PI_GGUF_MAX_DIMS);
        return false;
    }
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX || pi_mul_overflows(n, ne[d], &n) || n > (uint64_t)INT64_MAX) {
            pi_error("gguf writer: tensor %s: dimension %u (%llu) is 0 or overflows", name, d, (unsigned long long)ne[d]);
            return false;
        }
    }
    if (!pi_type_row_bytes((uint32_t)type, ne[0], &row) || pi_mul_overflows(row, n / ne[0], bytes) || *bytes > SIZE_MAX) {
        pi_error("gguf writer: tensor %s: row length %llu is not a whole number of %s blocks, or the size overflows",
                 name, (unsigned long long)ne[0], ti->name);
        return false;
    }
    return true;
}

int pi_gguf_writer_add_tensor(pi_gguf_writer_t *w, const char *name, enum pi_type type, uint32_t n_dims,
                              const uint64_t *ne, const void *data)
{
    uint64_t bytes;
    size_t nlen = name ? strlen(name) : 0;
    if (nlen == 0 || nlen > 64) { /* the GGUF rule the reader enforces (model/gguf.c, GGUF_MAX_NAME) */
        pi_error("gguf writer: tensor name '%.80s' is empty or longer than 64 bytes", name ? name : "");
        return -PI_ERR_INVAL;
    }
    if (!tensor_bytes(name, type, n_dims, ne, &bytes)) return -PI_ERR_INVAL;
    for (size_t i = 0; i < w->n_t; i++) {
        if (strcmp(w->ts[i].name, name) == 0) {
            pi_error("gguf writer: duplicate tensor name %s", name);
            return -PI_ERR_INVAL;
        }
    }
    struct wtensor t = {.type = (uint32_t)type, .n_dims = n_dims, .n_bytes = bytes};
    for (uint32_t d = 0; d < PI_GGUF_MAX_DIMS; d++) t.ne[d] = d < n_dims ? ne[d] : 1;
    t.name = strdup(name);
    t.data = malloc(bytes ? (size_t)bytes : 1);
    if (!t.name || !t.data || grow((void **)&w->ts, &w->cap_t, w->n_t, sizeof *w->ts)) {
        free(t.name);
        free(t.data);
        return -PI_ERR_NOMEM;
    }
    memcpy(t.data, data, (size_t)bytes);
    w->ts[w->n_t++] = t;
    return 0;
}

/* The data alignment: general.alignment when set (it must be a u32 power of two <= 1 MiB). */
static int writer_alignment(const pi_gguf_writer_t *w, uint32_t *align)
{
    *align = W_DEFAULT_ALIGN;
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kvs[i].key, "general.alignment") != 0) continue;
        uint32_t a = 0;
        if (w->kvs[i].type == PI_GGUF_U32) memcpy(&a, w->kvs[i].val, 4);
        if (w->kvs[i].type != PI_GGUF_U32 || !pi_is_pow2(a) || a > W_MAX_ALIGN) {
            pi_error("gguf writer: general.alignment must be a u32 power of two <= %u", W_MAX_ALIGN);
            return -PI_ERR_INVAL;
        }
        *align = a;
    }
    return 0;
}

static bool wr(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n; }
static bool wr_u32(FILE *f, uint32_t v) { return wr(f, &v, 4); }
static bool wr_u64(FILE *f, uint64_t v) { return wr(f, &v, 8); }

static bool wr_pad(FILE *f, uint64_t *pos, uint32_t align)
{
    static const uint8_t zeros[256];
    uint64_t n = pi_align_up(*pos, align) - *pos;
    *pos += n;
    while (n) {
        size_t k = (size_t)PI_MIN(n, sizeof zeros);
        if (!wr(f, zeros, k)) return false;
        n -= k;
    }
    return true;
}

/* Header, metadata and tensor infos; *pos ends at the end of the infos. */
static bool write_head(const pi_gguf_writer_t *w, FILE *f, uint32_t align, uint64_t *pos)
{
    uint64_t off = 0;
    bool ok = wr(f, w->flavour == PI_GGUF_FLAVOUR_POWERINFER ? "PWRI" : "GGUF", 4) && wr_u32(f, 3) && wr_u64(f, w->n_t) && wr_u64(f, w->n_kv);
    *pos = 24;
    for (size_t i = 0; ok && i < w->n_kv; i++) {
        size_t kl = strlen(w->kvs[i].key);
        ok = wr_u64(f, kl) && wr(f, w->kvs[i].key, kl) && wr_u32(f, w->kvs[i].type) &&
             wr(f, w->kvs[i].val, w->kvs[i].val_len);
        *pos += 8 + kl + 4 + w->kvs[i].val_len;
    }
    for (size_t i = 0; ok && i < w->n_t; i++) {
        const struct wtensor *t = &w->ts[i];
        size_t nl = strlen(t->name);
        ok = wr_u64(f, nl) && wr(f, t->name, nl) && wr_u32(f, t->n_dims);
        for (uint32_t d = 0; ok && d < t->n_dims; d++) ok = wr_u64(f, t->ne[d]);
        ok = ok && wr_u32(f, pi_gguf_type_to_file(w->flavour, t->type)) && wr_u64(f, off);
        *pos += 8 + nl + 4 + 8ull * t->n_dims + 4 + 8;
        off = pi_align_up(off + t->n_bytes, align);
    }
    return ok;
}

static bool write_body(const pi_gguf_writer_t *w, FILE *f, uint32_t align, uint64_t pos)
{
    bool ok = wr_pad(f, &pos, align);
    for (size_t i = 0; ok && i < w->n_t; i++) {
        ok = wr(f, w->ts[i].data, (size_t)w->ts[i].n_bytes);
        pos += w->ts[i].n_bytes;
        ok = ok && wr_pad(f, &pos, align);
    }
    return ok;
}

int pi_gguf_writer_write(pi_gguf_writer_t *w, const char *path)
{
    uint32_t align;
    uint64_t pos;
    int rc = writer_alignment(w, &align);
    if (rc) return rc;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) return -PI_ERR_NOMEM;
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        pi_error("mkstemp(%s) failed: %s", tmp, strerror(errno));
        free(tmp);
        return -PI_ERR_IO;
    }
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        pi_error("fdopen(%s) failed: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        free(tmp);
        return -PI_ERR_IO;
    }
    bool ok = fchmod(fd, 0644) == 0 && write_head(w, f, align, &pos) && write_body(w, f, align, pos);
    const char *what = "write";
    if (ok) ok = fflush(f) == 0;
    if (ok && fsync(fd) != 0) {
        ok = false;
        what = "fsync";
    }
    if (fclose(f) != 0 && ok) {
        ok = false;
        what = "close";
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        what = "rename";
    }
    if (!ok) {
        pi_error("%s(%s) failed: %s", what, tmp, strerror(errno));
        unlink(tmp);
        rc = -PI_ERR_IO;
    }
    free(tmp);
    return rc;
}
