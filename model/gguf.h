/*
 * model/gguf.h - GGUF model files: a hardened reader (mmap, every field validated against the real file
 * size before use) and a writer for the sidecar files pinfer's tools produce.
 *
 * A GGUF file is untrusted input. pi_gguf_open() validates the whole header, metadata and tensor
 * table up front (see doc/gguf-validation.md for the rules); after it succeeds, every accessor below
 * returns only data that lies inside the mapping, so callers need no further bounds checks on offsets.
 * Accepted: GGUF v2 and v3 ("GGUF"), and PowerInfer's files (GGUF v3 with the magic "PWRI").
 * A file is mapped, not copied: one that is truncated by someone else while open makes later reads
 * of the cut-off part fault (SIGBUS). Model files are read-only inputs; do not rewrite them in place.
 */
#ifndef PI_MODEL_GGUF_H
#define PI_MODEL_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "lib/types.h"

typedef struct pi_gguf pi_gguf_t;

/* Metadata value types as stored on disk (GGUF spec numbering). */
enum pi_gguf_vtype {
    PI_GGUF_U8 = 0,
    PI_GGUF_I8 = 1,
    PI_GGUF_U16 = 2,
    PI_GGUF_I16 = 3,
    PI_GGUF_U32 = 4,
    PI_GGUF_I32 = 5,
    PI_GGUF_F32 = 6,
    PI_GGUF_BOOL = 7,
    PI_GGUF_STRING = 8,
    PI_GGUF_ARRAY = 9,
    PI_GGUF_U64 = 10,
    PI_GGUF_I64 = 11,
    PI_GGUF_F64 = 12,
    PI_GGUF_VTYPE_COUNT = 13,
};

enum pi_gguf_flavour {
    PI_GGUF_FLAVOUR_GGUF = 0, /* magic "GGUF" */
    PI_GGUF_FLAVOUR_POWERINFER = 1, /* magic "PWRI" (PowerInfer's sparse-llama files) */
};

/* A borrowed, length-delimited string inside the mapping (NOT NUL-terminated). */
struct pi_gguf_str {
    const char *ptr;
    uint64_t len;
};

#define PI_GGUF_MAX_DIMS 4

/* One tensor of the table. All fields are validated; data points into the mapping. */
struct pi_gguf_tensor {
    struct pi_gguf_str name;
    uint32_t n_dims;                  /* 1..4 */
    uint64_t ne[PI_GGUF_MAX_DIMS];    /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    uint32_t type;                    /* enum pi_type */
    uint64_t offset;                  /* from the start of the data section */
    uint64_t n_elems;                 /* product of ne */
    uint64_t n_bytes;                 /* rows * row bytes */
    const void *data;                 /* inside the mapping, aligned to the file's alignment */
};

/* Open and validate path. On success returns 0 and *out; on failure returns a negative enum pi_err,
 * *out is NULL, and err (if not NULL) holds one line naming the field and its file offset, e.g.
 * "tensor 3 (blk.0.attn_q.weight): data offset 81920 + 4096 bytes past end of file (size 80000) at offset 1234".
 * Errors: -PI_ERR_FORMAT for a malformed file, -PI_ERR_UNSUPPORTED for a well-formed file this reader
 * does not take (GGUF v1, big-endian, unknown version), -PI_ERR_NOTFOUND when path does not exist,
 * -PI_ERR_IO for other system-call failures, -PI_ERR_NOMEM. The message does not repeat the path.
 * Logging: when err is NULL the message is logged once with pi_error() (prefixed by the path); when
 * the caller passes err, reporting it is the caller's job and nothing is logged. */
int pi_gguf_open(const char *path, pi_gguf_t **out, char *err, size_t errlen);

/* Same, over a caller-owned buffer (for the fuzzer and tests). buf must outlive the handle. */
int pi_gguf_open_buffer(const void *buf, size_t len, pi_gguf_t **out, char *err, size_t errlen);

/* Unmap and free; accepts NULL and NULL-s the caller's pointer. */
void pi_gguf_destroy(pi_gguf_t **g);

/* What the header said, validated at open: version (2 or 3), flavour (by magic), data alignment
 * (general.alignment or 32), the file's size in bytes, the start of the mapping (or the caller's
 * buffer) and the file offset of the data section (a multiple of the alignment). */
uint32_t pi_gguf_version(const pi_gguf_t *g);
enum pi_gguf_flavour pi_gguf_flavour(const pi_gguf_t *g);

/* Tensor type ids as a file of flavour f writes them. PowerInfer's files (PWRI) come from its ggml of
 * December 2023 (SJTU-IPADS/PowerInfer d3ebd7c, ggml.h), which numbered the integer types I8 16, I16 17,
 * I32 18, ids that today's GGUF gives to IQ2_XXS, IQ2_XS and IQ3_XXS (pinfer's PI_TYPE_I8..I32 are 24-26);
 * its reader divides by a block size of 0 on an id it does not know. Every other id is the same in both.
 * pi_gguf_type_to_file: pinfer's id -> the file's; pi_gguf_type_from_file: the file's -> pinfer's (a PWRI
 * file's 16-18 are its integers; 24-26 also read as integers, as pinfer's writer once wrote them). */
uint32_t pi_gguf_type_to_file(enum pi_gguf_flavour f, uint32_t type);
uint32_t pi_gguf_type_from_file(enum pi_gguf_flavour f, uint32_t type);
uint32_t pi_gguf_alignment(const pi_gguf_t *g);
uint64_t pi_gguf_file_size(const pi_gguf_t *g);
const void *pi_gguf_base(const pi_gguf_t *g);     /* start of the mapping */
uint64_t pi_gguf_data_offset(const pi_gguf_t *g); /* file offset of the data section */

/* ---- metadata ---- */
/* Number of metadata entries (keys are unique: duplicates are rejected at open). */
uint64_t pi_gguf_n_kv(const pi_gguf_t *g);
/* Index of key, or -1 when absent. */
int64_t pi_gguf_find_key(const pi_gguf_t *g, const char *key);
/* Key and value type of entry i; i < pi_gguf_n_kv() is the caller's invariant (PI_ASSERT). */
struct pi_gguf_str pi_gguf_key(const pi_gguf_t *g, uint64_t i);
enum pi_gguf_vtype pi_gguf_kv_type(const pi_gguf_t *g, uint64_t i);

/* Typed getters by key. Each returns 0 and stores the value, -PI_ERR_NOTFOUND when the key is absent,
 * or -PI_ERR_FORMAT when it has another type. get_uint/get_int accept any integer width and sign and
 * fail with -PI_ERR_RANGE when the value does not fit. get_f32 also accepts f64. */
int pi_gguf_get_uint(const pi_gguf_t *g, const char *key, uint64_t *out);
int pi_gguf_get_int(const pi_gguf_t *g, const char *key, int64_t *out);
int pi_gguf_get_f32(const pi_gguf_t *g, const char *key, float *out);
int pi_gguf_get_f64(const pi_gguf_t *g, const char *key, double *out);
int pi_gguf_get_bool(const pi_gguf_t *g, const char *key, bool *out);
int pi_gguf_get_str(const pi_gguf_t *g, const char *key, struct pi_gguf_str *out);

/* Arrays: element type and count, then element access. get_arr returns 0 and fills *type and *n.
 * For fixed-size element types, pi_gguf_arr_data returns a pointer to n packed little-endian elements
 * (unaligned: read with memcpy). For string arrays use pi_gguf_arr_str (O(1): offsets are indexed at
 * open). Out-of-range indices return -PI_ERR_RANGE. */
int pi_gguf_get_arr(const pi_gguf_t *g, const char *key, enum pi_gguf_vtype *type, uint64_t *n);
const void *pi_gguf_arr_data(const pi_gguf_t *g, const char *key);
int pi_gguf_arr_str(const pi_gguf_t *g, const char *key, uint64_t i, struct pi_gguf_str *out);

/* Same getters by index (for listing all metadata). Same return values as the by-key getters;
 * an index >= pi_gguf_n_kv() gives -PI_ERR_RANGE. */
int pi_gguf_kv_uint(const pi_gguf_t *g, uint64_t i, uint64_t *out);
int pi_gguf_kv_str(const pi_gguf_t *g, uint64_t i, struct pi_gguf_str *out);
int pi_gguf_kv_int(const pi_gguf_t *g, uint64_t i, int64_t *out);
int pi_gguf_kv_f64(const pi_gguf_t *g, uint64_t i, double *out); /* f32 or f64 */
int pi_gguf_kv_bool(const pi_gguf_t *g, uint64_t i, bool *out);
int pi_gguf_kv_arr(const pi_gguf_t *g, uint64_t i, enum pi_gguf_vtype *type, uint64_t *n);
const void *pi_gguf_kv_arr_data(const pi_gguf_t *g, uint64_t i); /* NULL unless a fixed-size array */
int pi_gguf_kv_arr_str(const pi_gguf_t *g, uint64_t i, uint64_t j, struct pi_gguf_str *out);

/* Bytes one value of type t takes on disk: 1..8 for the fixed-size types, 0 for STRING, ARRAY and
 * unknown types. */
size_t pi_gguf_vtype_size(enum pi_gguf_vtype t);
/* "u8", "string", "array", ...; "unknown" for ids outside the table. */
const char *pi_gguf_vtype_name(enum pi_gguf_vtype t);

/* ---- tensors ---- */
/* Number of tensors in the table (names unique, data inside the file and not overlapping). */
uint64_t pi_gguf_n_tensors(const pi_gguf_t *g);
/* Tensor i in file order, or NULL when i >= pi_gguf_n_tensors(). */
const struct pi_gguf_tensor *pi_gguf_tensor(const pi_gguf_t *g, uint64_t i);
/* Lookup by name (hashed at open); NULL when absent. */
const struct pi_gguf_tensor *pi_gguf_find_tensor(const pi_gguf_t *g, const char *name);

/* True when s equals the NUL-terminated c. */
bool pi_gguf_str_eq(struct pi_gguf_str s, const char *c);
/* Whether s holds a NUL byte (a name or template read as a C string would silently end there). */
bool pi_gguf_str_has_nul(struct pi_gguf_str s);

/* ---- writer (sidecar files: activation statistics, predictors, placement) ---- */
typedef struct pi_gguf_writer pi_gguf_writer_t;

/* A writer collects metadata and tensors in memory and writes a GGUF v3 file in one go.
 * Data passed to add_tensor is copied. Returns NULL on allocation failure.
 * Setters return 0, -PI_ERR_INVAL (empty or over-long key, bad type, bad tensor shape, duplicate tensor
 * name) or -PI_ERR_NOMEM. Setting a key that is already set replaces its value (keeping its place).
 * The data section is aligned to 32 bytes, or to general.alignment when that is set as a u32 power of
 * two <= 1 MiB (another value makes write() fail with -PI_ERR_INVAL). */
pi_gguf_writer_t *pi_gguf_writer_new(void);
void pi_gguf_writer_destroy(pi_gguf_writer_t **w);
int pi_gguf_writer_set_u32(pi_gguf_writer_t *w, const char *key, uint32_t v);
int pi_gguf_writer_set_i32(pi_gguf_writer_t *w, const char *key, int32_t v);
int pi_gguf_writer_set_u64(pi_gguf_writer_t *w, const char *key, uint64_t v);
int pi_gguf_writer_set_f32(pi_gguf_writer_t *w, const char *key, float v);
int pi_gguf_writer_set_bool(pi_gguf_writer_t *w, const char *key, bool v);
int pi_gguf_writer_set_str(pi_gguf_writer_t *w, const char *key, const char *v);
/* len bytes of v, which may hold NUL bytes (for tests of the readers). */
int pi_gguf_writer_set_strn(pi_gguf_writer_t *w, const char *key, const char *v, size_t len);
int pi_gguf_writer_set_arr(pi_gguf_writer_t *w, const char *key, enum pi_gguf_vtype type,
                           const void *data, uint64_t n); /* fixed-size element types */
int pi_gguf_writer_set_arr_str(pi_gguf_writer_t *w, const char *key, const char *const *v, uint64_t n);
/* Any fixed-size scalar type (U8..F64 except STRING and ARRAY); v points to one value of that type. */
int pi_gguf_writer_set(pi_gguf_writer_t *w, const char *key, enum pi_gguf_vtype type, const void *v);
/* ne[0] is the row length; n_dims 1..4; data holds the tensor's n_bytes. */
int pi_gguf_writer_add_tensor(pi_gguf_writer_t *w, const char *name, enum pi_type type,
                              uint32_t n_dims, const uint64_t *ne, const void *data);
/* The magic the file gets: "GGUF" (the default) or PowerInfer's "PWRI" (same layout, version 3). */
void pi_gguf_writer_set_flavour(pi_gguf_writer_t *w, enum pi_gguf_flavour f);
/* Write atomically (temporary file + rename). 0 or -PI_ERR_*. */
int pi_gguf_writer_write(pi_gguf_writer_t *w, const char *path);

#endif
