/*
 * lib/types.h - the tensor element types pinfer knows, with ggml's numeric ids (they are on disk in
 * every GGUF file) and their block geometry. The block layouts themselves are in kernels/cpu/quant.h.
 *
 * Facts from ggml's type table (ggml.h / ggml.c, MIT): a type stores elements in blocks of
 * `block_elems` values taking `block_bytes` bytes; a row of n elements takes n / block_elems blocks and
 * n must be a multiple of block_elems.
 */
#ifndef PI_TYPES_H
#define PI_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* ggml type ids as stored in GGUF tensor infos. Gaps are ids ggml retired or that pinfer does not
 * know (they are rejected as unknown). */
enum pi_type {
    PI_TYPE_F32 = 0,
    PI_TYPE_F16 = 1,
    PI_TYPE_Q4_0 = 2,
    PI_TYPE_Q4_1 = 3,
    PI_TYPE_Q5_0 = 6,
    PI_TYPE_Q5_1 = 7,
    PI_TYPE_Q8_0 = 8,
    PI_TYPE_Q8_1 = 9,
    PI_TYPE_Q2_K = 10,
    PI_TYPE_Q3_K = 11,
    PI_TYPE_Q4_K = 12,
    PI_TYPE_Q5_K = 13,
    PI_TYPE_Q6_K = 14,
    PI_TYPE_Q8_K = 15,
    PI_TYPE_I8 = 24,
    PI_TYPE_I16 = 25,
    PI_TYPE_I32 = 26,
    PI_TYPE_I64 = 27,
    PI_TYPE_F64 = 28,
    PI_TYPE_BF16 = 30,
    PI_TYPE_COUNT = 31, /* one past the largest id in the table; not a type */
};

struct pi_type_info {
    const char *name;     /* "q4_0", "f16", ... (lowercase, as llama.cpp prints them) */
    uint32_t block_elems; /* elements per block (1 for plain types) */
    uint32_t block_bytes; /* bytes per block */
};

/* Geometry of type t, or NULL when t is not a type pinfer knows (including the gaps). */
const struct pi_type_info *pi_type_get(uint32_t t);

/* Name of type t, or "unknown". */
const char *pi_type_name(uint32_t t);

/* Look a type up by its name (case-insensitive: "Q4_0", "q4_k"). Returns true and sets *out. */
bool pi_type_from_name(const char *name, enum pi_type *out);

/* Bytes taken by a row of n elements of type t. Returns false (leaving *bytes alone) when t is
 * unknown, n is not a whole number of blocks, or the size overflows. */
bool pi_type_row_bytes(uint32_t t, uint64_t n, uint64_t *bytes);

#endif
