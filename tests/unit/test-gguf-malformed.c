/*
 * tests/unit/test-gguf-malformed.c - the GGUF reader rejects malformed files with the specific error.
 *
 * Each case builds a small file byte by byte (a valid file with one thing wrong: every rule of
 * doc/gguf-validation.md, huge declared sizes, sizes chosen so that a careless multiplication would
 * wrap to a small number), hands it to pi_gguf_open_buffer in a heap block of exactly its size (so
 * that the sanitizer build catches any read past the end) and checks the error code and the message.
 * Then a real fixture (llama.cpp's converter output) is cut at many offsets, and the small valid file
 * gets a few thousand random byte mutations: each must open or fail cleanly, never crash.
 */
#include "config.h"
#include "lib/common.h"
#include "model/gguf.h"
#include "lib/log.h"
#include "tests/tap.h"

#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- a byte builder ---- */

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) tap_bail("out of memory");
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void u8(struct buf *b, uint8_t v) { put(b, &v, 1); }
static void zeros(struct buf *b, size_t n)
{
    for (size_t i = 0; i < n; i++) u8(b, 0);
}
static void str(struct buf *b, const char *s)
{
    u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void hdr_v(struct buf *b, const char *magic, uint32_t version, uint64_t n_t, uint64_t n_kv)
{
    put(b, magic, 4);
    u32(b, version);
    u64(b, n_t);
    u64(b, n_kv);
}
static void hdr(struct buf *b, uint64_t n_t, uint64_t n_kv) { hdr_v(b, "GGUF", 3, n_t, n_kv); }
static void kv_u32(struct buf *b, const char *k, uint32_t v)
{
    str(b, k);
    u32(b, PI_GGUF_U32);
    u32(b, v);
}
static void kv_str(struct buf *b, const char *k, const char *v)
{
    str(b, k);
    u32(b, PI_GGUF_STRING);
    str(b, v);
}
/* Tensor info with up to 4 dims. */
static void tinfo(struct buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off)
{
    str(b, name);
    u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) u64(b, ne[d]);
    u32(b, type);
    u64(b, off);
}
static void pad(struct buf *b, size_t align)
{
    while (b->n % align) u8(b, 0);
}

/* The valid file every tensor case starts from: two keys, one f32 tensor of 8 elements. */
static void good_head(struct buf *b, uint64_t n_t)
{
    hdr(b, n_t, 2);
    kv_str(b, "general.architecture", "test");
    kv_u32(b, "x.count", 7);
}
static void good(struct buf *b)
{
    static const uint64_t ne[] = {8};
    good_head(b, 1);
    tinfo(b, "w", 1, ne, PI_TYPE_F32, 0);
    pad(b, 32);
    zeros(b, 32);
}
/* One tensor "w" with the given shape/type/offset, then 64 bytes of data. */
static void one_tensor(struct buf *b, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off)
{
    good_head(b, 1);
    tinfo(b, "w", n_dims, ne, type, off);
    pad(b, 32);
    zeros(b, 64);
}
/* One kv "a" of value type vt followed by the raw value bytes v[0, n). */
static void one_kv(struct buf *b, uint32_t vt, const void *v, size_t n)
{
    hdr(b, 0, 1);
    str(b, "a");
    u32(b, vt);
    put(b, v, n);
}

/* ---- the cases ---- */

static void c_empty(struct buf *b) { (void)b; }
static void c_short_magic(struct buf *b) { put(b, "GGU", 3); }
static void c_bad_magic(struct buf *b) { hdr_v(b, "GGML", 3, 0, 0); }
static void c_v1(struct buf *b) { hdr_v(b, "GGUF", 1, 0, 0); }
static void c_v4(struct buf *b) { hdr_v(b, "GGUF", 4, 0, 0); }
static void c_v0(struct buf *b) { hdr_v(b, "PWRI", 0, 0, 0); }
static void c_bigendian(struct buf *b) { hdr_v(b, "GGUF", 0x03000000u, 0, 0); }
static void c_trunc_version(struct buf *b) { put(b, "GGUF\3\0", 6); }
static void c_trunc_ntensors(struct buf *b) { put(b, "GGUF\3\0\0\0\0\0\0\0", 12); }
static void c_trunc_nkv(struct buf *b) { hdr(b, 0, 0); b->n -= 3; }
static void c_nkv_2p60(struct buf *b) { hdr(b, 0, 1ull << 60); zeros(b, 64); }
static void c_nkv_max(struct buf *b) { hdr(b, 0, UINT64_MAX); zeros(b, 64); }
static void c_nt_2p60(struct buf *b) { hdr(b, 1ull << 60, 0); zeros(b, 64); }
static void c_nt_2p59(struct buf *b) { hdr(b, 0x0800000000000000ull, 0); zeros(b, 64); }
static void c_counts_together(struct buf *b) { hdr(b, 2, 3); zeros(b, 100); }
static void c_kv_missing(struct buf *b)
{
    hdr(b, 0, 2);
    kv_u32(b, "a", 1);
    u64(b, 5);
    put(b, "abc", 3);
}
static void c_key_len_huge(struct buf *b) { hdr(b, 0, 1); u64(b, 1ull << 63); zeros(b, 20); }
static void c_key_len_remaining(struct buf *b) { hdr(b, 0, 1); u64(b, 1000); zeros(b, 20); }
static void c_key_empty(struct buf *b) { hdr(b, 0, 1); u64(b, 0); u32(b, PI_GGUF_U32); u32(b, 1); }
static void c_key_too_long(struct buf *b)
{
    hdr(b, 0, 1);
    u64(b, 70000);
    for (int i = 0; i < 70000; i++) u8(b, 'k');
    u32(b, PI_GGUF_U8);
    u8(b, 1);
}
static void c_dup_key(struct buf *b)
{
    hdr(b, 0, 3);
    kv_u32(b, "a", 1);
    kv_u32(b, "b", 2);
    kv_u32(b, "a", 3);
}
static void c_vtype_13(struct buf *b) { one_kv(b, 13, "\0\0\0\0", 4); }
static void c_vtype_max(struct buf *b) { one_kv(b, UINT32_MAX, "\0\0\0\0", 4); }
static void c_trunc_u32(struct buf *b) { one_kv(b, PI_GGUF_U32, "\1\2", 2); }
static void c_trunc_u64(struct buf *b) { one_kv(b, PI_GGUF_F64, "\1\2\3\4\5", 5); }
static void c_trunc_vtype(struct buf *b) { hdr(b, 0, 1); str(b, "abcdefg"); put(b, "\4\0", 2); }
static void c_str_len_max(struct buf *b)
{
    uint64_t l = UINT64_MAX;
    one_kv(b, PI_GGUF_STRING, &l, 8);
    zeros(b, 8);
}
static void c_str_len_plus1(struct buf *b)
{
    uint64_t l = 11;
    one_kv(b, PI_GGUF_STRING, &l, 8);
    put(b, "0123456789", 10);
}
static void c_bool_2(struct buf *b) { one_kv(b, PI_GGUF_BOOL, "\2", 1); }
/* An array header: element type et, count n, then the element bytes v[0, len). */
static void arr(struct buf *b, uint32_t et, uint64_t n, const void *v, size_t len)
{
    hdr(b, 0, 1);
    str(b, "a");
    u32(b, PI_GGUF_ARRAY);
    u32(b, et);
    u64(b, n);
    put(b, v, len);
}
static void c_arr_of_arr(struct buf *b) { arr(b, PI_GGUF_ARRAY, 1, "\0\0\0\0\0\0\0\0\0\0\0\0", 12); }
static void c_arr_unknown(struct buf *b) { arr(b, 13, 1, "\0\0\0\0", 4); }
static void c_arr_trunc_et(struct buf *b) { hdr(b, 0, 1); str(b, "abc"); u32(b, PI_GGUF_ARRAY); put(b, "\4\0", 2); }
static void c_arr_trunc_count(struct buf *b) { hdr(b, 0, 1); str(b, "a"); u32(b, PI_GGUF_ARRAY); u32(b, 4); put(b, "\4\0", 2); }
static void c_arr_u32_wrap(struct buf *b) { arr(b, PI_GGUF_U32, 1ull << 62, "\0\0\0\0\0\0\0\0", 8); }
static void c_arr_u64_max(struct buf *b) { arr(b, PI_GGUF_U64, UINT64_MAX, "\0\0\0\0\0\0\0\0", 8); }
static void c_arr_short(struct buf *b) { arr(b, PI_GGUF_U32, 3, "\1\0\0\0\2\0\0\0\3\0\0", 11); }
static void c_arr_str_wrap(struct buf *b) { arr(b, PI_GGUF_STRING, 1ull << 61, "\0\0\0\0\0\0\0\0", 8); }
static void c_arr_str_elem(struct buf *b)
{
    arr(b, PI_GGUF_STRING, 2, "\1\0\0\0\0\0\0\0x", 9);
    u64(b, 1ull << 40);
    zeros(b, 8);
}
static void c_arr_str_short(struct buf *b)
{
    arr(b, PI_GGUF_STRING, 3, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16); /* two empty strings */
    u64(b, 5);
    put(b, "ab", 2);
}
static void c_arr_bool(struct buf *b) { arr(b, PI_GGUF_BOOL, 4, "\0\1\5\0", 4); }
static void c_align_string(struct buf *b) { hdr(b, 0, 1); kv_str(b, "general.alignment", "32"); }
static void c_align_u64(struct buf *b)
{
    hdr(b, 0, 1);
    str(b, "general.alignment");
    u32(b, PI_GGUF_U64);
    u64(b, 32);
}
static void c_align_0(struct buf *b) { hdr(b, 0, 1); kv_u32(b, "general.alignment", 0); }
static void c_align_48(struct buf *b) { hdr(b, 0, 1); kv_u32(b, "general.alignment", 48); }
static void c_align_2m(struct buf *b) { hdr(b, 0, 1); kv_u32(b, "general.alignment", 2u << 20); }
static void c_align_4(struct buf *b) { hdr(b, 0, 1); kv_u32(b, "general.alignment", 4); }
static void c_tname_empty(struct buf *b)
{
    static const uint64_t ne[] = {8};
    good_head(b, 1);
    tinfo(b, "", 1, ne, PI_TYPE_F32, 0);
    zeros(b, 64);
}
static void c_tname_huge(struct buf *b) { good_head(b, 1); u64(b, 1ull << 63); zeros(b, 64); }
static void c_tname_remaining(struct buf *b) { good_head(b, 1); u64(b, 60); zeros(b, 40); }
/* A tensor named by n bytes of 't': the GGUF format allows at most 64 (llama.cpp refuses more). */
static void tname_n(struct buf *b, int n)
{
    static const uint64_t ne[] = {8};
    char name[80];
    memset(name, 't', (size_t)n);
    name[n] = '\0';
    good_head(b, 1);
    tinfo(b, name, 1, ne, PI_TYPE_F32, 0);
    pad(b, 32);
    zeros(b, 32);
}
static void c_tname_65(struct buf *b) { tname_n(b, 65); }
static void c_tname_300(struct buf *b)
{
    good_head(b, 1);
    u64(b, 300);
    for (int i = 0; i < 300; i++) u8(b, 't');
    zeros(b, 128);
}
/* general.architecture names the model's family: the format makes it a string. */
static void c_arch_u32(struct buf *b) { hdr(b, 0, 1); kv_u32(b, "general.architecture", 7); }
static void c_tname_too_long(struct buf *b)
{
    good_head(b, 1);
    u64(b, 70000);
    for (int i = 0; i < 70000; i++) u8(b, 't');
    zeros(b, 128);
}
static void c_tdup(struct buf *b)
{
    static const uint64_t ne[] = {8};
    good_head(b, 2);
    tinfo(b, "w", 1, ne, PI_TYPE_F32, 0);
    tinfo(b, "w", 1, ne, PI_TYPE_F32, 32);
    pad(b, 32);
    zeros(b, 64);
}
static void c_ndims_0(struct buf *b) { one_tensor(b, 0, NULL, PI_TYPE_F32, 0); }
static void c_ndims_5(struct buf *b)
{
    static const uint64_t ne[] = {1, 1, 1, 1, 1};
    one_tensor(b, 5, ne, PI_TYPE_F32, 0);
}
static void c_ndims_max(struct buf *b)
{
    good_head(b, 1);
    str(b, "w");
    u32(b, UINT32_MAX);
    zeros(b, 64);
}
static void c_dim_0(struct buf *b)
{
    static const uint64_t ne[] = {8, 0};
    one_tensor(b, 2, ne, PI_TYPE_F32, 0);
}
static void c_dim_neg(struct buf *b)
{
    static const uint64_t ne[] = {1ull << 63};
    one_tensor(b, 1, ne, PI_TYPE_F32, 0);
}
static void c_elems_wrap(struct buf *b)
{
    static const uint64_t ne[] = {1ull << 32, 1ull << 32}; /* product wraps to 0 */
    one_tensor(b, 2, ne, PI_TYPE_F32, 0);
}
static void c_elems_int64(struct buf *b)
{
    static const uint64_t ne[] = {3, 1ull << 62}; /* fits u64, not int64 */
    one_tensor(b, 2, ne, PI_TYPE_F32, 0);
}
static void c_type_4(struct buf *b)
{
    static const uint64_t ne[] = {8};
    one_tensor(b, 1, ne, 4, 0);
}
static void c_type_1000(struct buf *b)
{
    static const uint64_t ne[] = {8};
    one_tensor(b, 1, ne, 1000, 0);
}
static void c_row_blocks(struct buf *b)
{
    static const uint64_t ne[] = {33, 2};
    one_tensor(b, 2, ne, PI_TYPE_Q4_0, 0);
}
static void c_bytes_wrap(struct buf *b)
{
    static const uint64_t ne[] = {1ull << 61}; /* 2^61 f64 = 2^64 bytes: wraps to 0 */
    one_tensor(b, 1, ne, PI_TYPE_F64, 0);
}
static void c_bytes_wrap_i64(struct buf *b)
{
    static const uint64_t ne[] = {1ull << 61, 3}; /* 3 * 2^61 elements fit int64; 8 bytes each do not */
    one_tensor(b, 2, ne, PI_TYPE_I64, 0);
}
static void c_off_unaligned(struct buf *b)
{
    static const uint64_t ne[] = {8};
    one_tensor(b, 1, ne, PI_TYPE_F32, 16);
}
static void c_off_unaligned64(struct buf *b)
{
    static const uint64_t ne[] = {8};
    hdr(b, 1, 1);
    kv_u32(b, "general.alignment", 64);
    tinfo(b, "w", 1, ne, PI_TYPE_F32, 32);
    pad(b, 64);
    zeros(b, 128);
}
static void c_off_past_end(struct buf *b)
{
    static const uint64_t ne[] = {8};
    good_head(b, 1);
    tinfo(b, "w", 1, ne, PI_TYPE_F32, 32);
    pad(b, 32);
    zeros(b, 32);
}
static void c_off_wrap(struct buf *b)
{
    static const uint64_t ne[] = {8};
    one_tensor(b, 1, ne, PI_TYPE_F32, 0xffffffffffffffe0ull); /* aligned; data offset + it wraps */
}
static void c_big_tensor(struct buf *b)
{
    static const uint64_t ne[] = {1ull << 40};
    one_tensor(b, 1, ne, PI_TYPE_F32, 0);
}
static void c_overlap(struct buf *b)
{
    static const uint64_t ne16[] = {16}, ne8[] = {8};
    good_head(b, 2);
    tinfo(b, "a", 1, ne16, PI_TYPE_F32, 0);
    tinfo(b, "b", 1, ne8, PI_TYPE_F32, 32);
    pad(b, 32);
    zeros(b, 128);
}
static void c_trunc_dims(struct buf *b) { good_head(b, 1); str(b, "w"); u32(b, 2); u64(b, 8); zeros(b, 4); }
static void c_trunc_ttype(struct buf *b)
{
    good_head(b, 1); /* the two keys alone satisfy the count bound for one tensor */
    str(b, "w");
    u32(b, 1);
    u64(b, 8);
    put(b, "\0\0", 2);
}
static void c_trunc_toff(struct buf *b)
{
    good_head(b, 1);
    str(b, "w");
    u32(b, 1);
    u64(b, 8);
    u32(b, 0);
    put(b, "\0\0\0", 3);
}
static void c_data_cut(struct buf *b)
{
    good(b);
    b->n -= 1;
}

struct mcase {
    const char *name;
    void (*build)(struct buf *);
    int code;
    const char *msg; /* must appear in the error */
};

#define F PI_ERR_FORMAT
#define U PI_ERR_UNSUPPORTED
static const struct mcase cases[] = {
    {"empty buffer", c_empty, F, "truncated magic (needs 4 bytes, 0 remain) at offset 0"},
    {"3-byte file", c_short_magic, F, "truncated magic"},
    {"bad magic", c_bad_magic, F, "bad magic \"GGML\""},
    {"GGUF v1", c_v1, U, "GGUF version 1 is not supported"},
    {"GGUF v4", c_v4, U, "GGUF version 4 is not supported (expected 2 or 3) at offset 4"},
    {"PWRI v0", c_v0, U, "GGUF version 0 is not supported"},
    {"big-endian v3", c_bigendian, U, "big-endian GGUF file"},
    {"truncated version", c_trunc_version, F, "truncated version"},
    {"truncated n_tensors", c_trunc_ntensors, F, "truncated n_tensors (needs 8 bytes, 4 remain) at offset 8"},
    {"truncated n_kv", c_trunc_nkv, F, "truncated n_kv (needs 8 bytes, 5 remain) at offset 16"},
    {"n_kv 2^60", c_nkv_2p60, F, "n_kv 1152921504606846976 exceeds what the 64 remaining bytes can hold (at most 4) at offset 16"},
    {"n_kv UINT64_MAX", c_nkv_max, F, "n_kv 18446744073709551615 exceeds"},
    {"n_tensors 2^60", c_nt_2p60, F, "n_tensors 1152921504606846976 exceeds what the 64 remaining bytes can hold (at most 1) at offset 8"},
    {"n_tensors 2^59", c_nt_2p59, F, "n_tensors 576460752303423488 exceeds"},
    {"n_kv + n_tensors together", c_counts_together, F, "n_tensors 2 and n_kv 3 together exceed the 100 remaining bytes"},
    {"second kv missing", c_kv_missing, F, "kv 1: key length 5 exceeds the 3 bytes remaining at offset 41"},
    {"key length 2^63", c_key_len_huge, F, "kv 0: key length 9223372036854775808 exceeds limit 65535 at offset 24"},
    {"key length past end", c_key_len_remaining, F, "kv 0: key length 1000 exceeds the 20 bytes remaining"},
    {"empty key", c_key_empty, F, "kv 0: empty key at offset 24"},
    {"key 70000 bytes", c_key_too_long, F, "key length 70000 exceeds limit 65535"},
    {"duplicate key", c_dup_key, F, "kv 2 (a): duplicate key (first at kv 0) at offset 58"},
    {"value type 13", c_vtype_13, F, "kv 0 (a): unknown value type 13 at offset 33"},
    {"value type 2^32-1", c_vtype_max, F, "unknown value type 4294967295"},
    {"truncated u32 value", c_trunc_u32, F, "kv 0 (a): truncated u32 value (needs 4 bytes, 2 remain) at offset 37"},
    {"truncated f64 value", c_trunc_u64, F, "truncated f64 value (needs 8 bytes, 5 remain)"},
    {"truncated value type", c_trunc_vtype, F, "kv 0 (abcdefg): truncated value type"},
    {"string length 2^64-1", c_str_len_max, F, "string length 18446744073709551615 exceeds the 8 bytes remaining"},
    {"string length one past end", c_str_len_plus1, F, "string length 11 exceeds the 10 bytes remaining at offset 37"},
    {"bool 2", c_bool_2, F, "bool value 2 is not 0 or 1 at offset 37"},
    {"array of arrays", c_arr_of_arr, F, "kv 0 (a): array of arrays is not supported at offset 37"},
    {"array element type 13", c_arr_unknown, F, "unknown array element type 13"},
    {"truncated array element type", c_arr_trunc_et, F, "truncated array element type"},
    {"truncated array count", c_arr_trunc_count, F, "truncated array count"},
    {"u32 array count 2^62 (x4 wraps)", c_arr_u32_wrap, F, "array of 4611686018427387904 u32 elements exceeds the 8 bytes remaining"},
    {"u64 array count 2^64-1", c_arr_u64_max, F, "array of 18446744073709551615 u64 elements exceeds"},
    {"u32 array one byte short", c_arr_short, F, "array of 3 u32 elements exceeds the 11 bytes remaining"},
    {"string array count 2^61 (x8 wraps)", c_arr_str_wrap, F, "array of 2305843009213693952 strings exceeds"},
    {"string array element length", c_arr_str_elem, F, "kv 0 (a): element 1: string length 1099511627776 exceeds"},
    {"string array short", c_arr_str_short, F, "kv 0 (a): element 2: string length 5 exceeds the 2 bytes remaining"},
    {"bool array value 5", c_arr_bool, F, "bool value 5 is not 0 or 1 at offset 51"},
    {"general.alignment string", c_align_string, F, "general.alignment has type string, expected u32"},
    {"general.alignment u64", c_align_u64, F, "general.alignment has type u64, expected u32"},
    {"general.alignment 0", c_align_0, F, "general.alignment 0 is not a power of two"},
    {"general.alignment 48", c_align_48, F, "general.alignment 48 is not a power of two"},
    {"general.alignment 2 MiB", c_align_2m, F, "general.alignment 2097152 exceeds limit 1048576"},
    {"general.alignment 4", c_align_4, F, "general.alignment 4 is below the minimum 8"},
    {"empty tensor name", c_tname_empty, F, "tensor 0: empty tensor name"},
    {"tensor name length 2^63", c_tname_huge, F, "tensor 0: tensor name length 9223372036854775808 exceeds limit 64"},
    {"tensor name past end", c_tname_remaining, F, "tensor name length 60 exceeds the 40 bytes remaining"},
    {"tensor name 70000 bytes", c_tname_too_long, F, "tensor name length 70000 exceeds limit 64"},
    {"tensor name 65 bytes", c_tname_65, F, "tensor name length 65 exceeds limit 64"},
    {"tensor name 300 bytes", c_tname_300, F, "tensor name length 300 exceeds limit 64"},
    {"general.architecture u32", c_arch_u32, F, "general.architecture has type u32, expected string"},
    {"duplicate tensor name", c_tdup, F, "tensor 1 (w): duplicate tensor name (first is tensor 0)"},
    {"n_dims 0", c_ndims_0, F, "tensor 0 (w): n_dims 0 not in 1..4"},
    {"n_dims 5", c_ndims_5, F, "n_dims 5 not in 1..4"},
    {"n_dims 2^32-1", c_ndims_max, F, "n_dims 4294967295 not in 1..4"},
    {"dimension 0", c_dim_0, F, "tensor 0 (w): dimension 1 is 0"},
    {"dimension 2^63", c_dim_neg, F, "dimension 0 (9223372036854775808) exceeds INT64_MAX"},
    {"element count wraps", c_elems_wrap, F, "element count overflows at dimension 1"},
    {"element count above INT64_MAX", c_elems_int64, F, "element count overflows at dimension 1"},
    {"type id 4 (retired)", c_type_4, U, "type id 4 is not a type pinfer knows"},
    {"type id 1000", c_type_1000, F, "type id 1000 is not a type pinfer knows"},
    {"row not whole blocks", c_row_blocks, F, "row length 33 is not a multiple of the q4_0 block size 32"},
    {"f64 byte size wraps", c_bytes_wrap, F, "byte size overflows"},
    {"i64 byte size wraps", c_bytes_wrap_i64, F, "byte size overflows (6917529027641081856 elements of i64)"},
    {"offset not aligned", c_off_unaligned, F, "data offset 16 is not a multiple of the alignment 32"},
    {"offset not aligned to 64", c_off_unaligned64, F, "data offset 32 is not a multiple of the alignment 64"},
    {"data past end", c_off_past_end, F, "tensor 0 (w): data offset 32 + 32 bytes past end of file"},
    {"offset + size wraps", c_off_wrap, F, "data offset 18446744073709551584 + 32 bytes past end of file"},
    {"2^40-element tensor", c_big_tensor, F, "4398046511104 bytes past end of file"},
    {"overlapping tensors", c_overlap, F, "tensor 1 (b): data ["},
    {"truncated dimension", c_trunc_dims, F, "tensor 0 (w): truncated dimension"},
    {"truncated tensor type", c_trunc_ttype, F, "tensor 0 (w): truncated type"},
    {"truncated data offset", c_trunc_toff, F, "tensor 0 (w): truncated data offset"},
    {"data one byte short", c_data_cut, F, "data offset 0 + 32 bytes past end of file"},
};
#undef F
#undef U

/* Open b's bytes from a heap block of exactly that size. */
static int open_exact(const uint8_t *p, size_t n, char *err, size_t errlen, pi_gguf_t **g)
{
    uint8_t *copy = malloc(n ? n : 1);
    if (n) memcpy(copy, p, n);
    err[0] = '\0';
    int rc = pi_gguf_open_buffer(n ? copy : NULL, n, g, err, errlen);
    pi_gguf_destroy(g);
    free(copy);
    return rc;
}

static void test_cases(void)
{
    char err[512];
    pi_gguf_t *g = NULL;
    struct buf b = {0};
    good(&b);
    tap_is_int(open_exact(b.p, b.n, err, sizeof err, &g), 0, "the base file of the cases is valid");
    b.n = 0;
    tname_n(&b, 64);
    tap_is_int(open_exact(b.p, b.n, err, sizeof err, &g), 0, "a 64-byte tensor name (the format's limit) is valid");
    b.n = 0;
    tap_diag("%zu malformed cases", PI_ARRAY_LEN(cases));
    for (size_t i = 0; i < PI_ARRAY_LEN(cases); i++) {
        const struct mcase *c = &cases[i];
        b.n = 0;
        c->build(&b);
        int rc = open_exact(b.p, b.n, err, sizeof err, &g);
        int ok = rc == -c->code && strstr(err, c->msg) != NULL && strstr(err, " at offset ") != NULL && g == NULL;
        tap_ok(ok, "%s: rejected", c->name);
        if (!ok) tap_diag("  rc %d, error \"%s\"; want rc %d, \"%s\"", rc, err, -c->code, c->msg);
    }
    free(b.p);
}

/* The same checks through the file path (mmap) and the errors of the file system. */
static void test_files(void)
{
    char dir[256], path[512], err[512];
    pi_gguf_t *g = NULL;
    snprintf(dir, sizeof dir, "%s/test-gguf-m-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) tap_bail("mkdtemp failed");
    snprintf(path, sizeof path, "%s/none.gguf", dir);
    tap_ok(pi_gguf_open(path, &g, err, sizeof err) == -PI_ERR_NOTFOUND && strstr(err, "open failed") && !g,
           "missing file: not found");
    tap_ok(pi_gguf_open(dir, &g, err, sizeof err) == -PI_ERR_IO && strstr(err, "not a regular file") && !g,
           "directory: not a regular file");
    FILE *f = fopen(path, "wb");
    fclose(f);
    tap_ok(pi_gguf_open(path, &g, err, sizeof err) == -PI_ERR_FORMAT && strstr(err, "truncated magic") && !g,
           "empty file: truncated magic");
    struct buf b = {0};
    c_off_past_end(&b);
    f = fopen(path, "wb");
    fwrite(b.p, 1, b.n, f);
    fclose(f);
    tap_ok(pi_gguf_open(path, &g, err, sizeof err) == -PI_ERR_FORMAT && strstr(err, "past end of file") && !g,
           "mapped file: tensor past the end");
    free(b.p);
    unlink(path);
    {
        /* A FIFO named as a model: rejected at once, not a block in open() waiting for a writer
         * (the alarm turns a hang into a failure). */
        char fifo[600];
        snprintf(fifo, sizeof fifo, "%s/fifo.gguf", dir);
        if (mkfifo(fifo, 0600) == 0) {
            alarm(20);
            tap_ok(pi_gguf_open(fifo, &g, err, sizeof err) == -PI_ERR_IO && strstr(err, "not a regular file") && !g,
                   "FIFO: not a regular file, without blocking");
            alarm(0);
            unlink(fifo);
        } else {
            tap_skip(1, "mkfifo failed");
        }
    }
    rmdir(dir);
}

/* A real file cut at many offsets: each cut fails with a truncation-type message, never a crash. */
static void test_truncations(void)
{
    char path[1024], err[512];
    pi_gguf_t *g = NULL;
    struct stat st;
    const char *src = getenv("PI_SRCDIR");
    if (!tap_fixture(path, sizeof path, "models/tiny-llama-q4_0.gguf")) {
        /* The same file is committed as test data; use it when the shared fixtures are absent. */
        snprintf(path, sizeof path, "%s/tests/data/tiny-llama-q4_0.gguf", src ? src : ".");
        if (stat(path, &st) != 0) {
            tap_skip(3, "tiny-llama-q4_0.gguf not found in the fixtures or tests/data");
            return;
        }
    }
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    size_t size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *all = malloc(size);
    if (fread(all, 1, size, f) != size) tap_bail("read %s", path);
    fclose(f);
    tap_is_int(open_exact(all, size, err, sizeof err, &g), 0, "tiny-llama-q4_0.gguf opens whole");

    /* Every offset in the header and the first keys, then a spread through the vocabulary, the tensor
     * table and the data; the last byte too. */
    size_t offs[1400], n_offs = 0;
    for (size_t o = 0; o < 1024; o++) offs[n_offs++] = o;
    for (size_t k = 0; k < 360; k++) offs[n_offs++] = 1024 + (size - 1025) / 360 * k + k % 7;
    offs[n_offs++] = size - 1;
    int bad = 0, in_data = 0;
    for (size_t i = 0; i < n_offs; i++) {
        int rc = open_exact(all, offs[i], err, sizeof err, &g);
        int ok = rc == -PI_ERR_FORMAT && (strstr(err, "truncated") || strstr(err, "exceeds the") ||
                                          strstr(err, "exceeds what") || strstr(err, "past end of file"));
        if (strstr(err, "past end of file")) in_data++;
        if (!ok && bad++ < 5) tap_diag("cut at %zu: rc %d \"%s\"", offs[i], rc, err);
    }
    tap_ok(bad == 0, "%zu cuts of a real file all rejected as truncated", n_offs);
    tap_ok(in_data > 10, "cuts inside the data section name the tensor past the end (%d)", in_data);
    free(all);
}

/* Random byte mutations of a small valid file with keys, arrays and tensors: open or fail with an
 * offset, never crash (the sanitizer build checks the "never"). */
static void test_mutations(void)
{
    char err[512];
    pi_gguf_t *g = NULL;
    struct buf b = {0};
    static const uint64_t ne[] = {32, 2};
    hdr(&b, 2, 3);
    kv_str(&b, "general.architecture", "llama");
    str(&b, "tokenizer.ggml.tokens");
    u32(&b, PI_GGUF_ARRAY);
    u32(&b, PI_GGUF_STRING);
    u64(&b, 3);
    str(&b, "<s>");
    str(&b, "a");
    str(&b, "bc");
    kv_u32(&b, "general.alignment", 32);
    tinfo(&b, "t0", 2, ne, PI_TYPE_Q8_0, 0);
    tinfo(&b, "t1", 1, ne, PI_TYPE_F32, 96);
    pad(&b, 32);
    zeros(&b, 96 + 128);
    tap_is_int(open_exact(b.p, b.n, err, sizeof err, &g), 0, "mutation base file is valid");
    uint64_t s = (uint64_t)time(NULL);
    tap_diag("mutation seed %llu", (unsigned long long)s);
    uint8_t *m = malloc(b.n);
    int bad = 0, opened = 0;
    for (int it = 0; it < 4000; it++) {
        memcpy(m, b.p, b.n);
        int flips = 1 + (int)(s % 4);
        for (int k = 0; k < flips; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(s >> 33) % 200; /* the header and tables, where the checks are */
            m[pos] = (uint8_t)(s >> 13);
        }
        int rc = open_exact(m, b.n, err, sizeof err, &g);
        if (rc == 0) opened++;
        else if (!strstr(err, " at offset ")) bad++;
    }
    tap_ok(bad == 0, "4000 mutated files: %d opened, the rest rejected with an offset", opened);
    free(m);
    free(b.p);
}

int main(void)
{
    pi_log_set_program("test-gguf-malformed");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    void (*parts[])(void) = {test_cases, test_files, test_truncations, test_mutations};
    for (size_t i = 0; i < PI_ARRAY_LEN(parts); i++) {
        parts[i]();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        tap_diag("part %zu done at %.2f s", i + 1,
                 (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    }
    return tap_done();
}
