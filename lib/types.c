/* lib/types.c - the element-type table behind lib/types.h (ids and block sizes as in ggml). */
#include "config.h"
#include "lib/types.h"
#include "lib/common.h"

#include <strings.h>

static const struct pi_type_info type_table[PI_TYPE_COUNT] = {
    [PI_TYPE_F32] = {"f32", 1, 4},
    [PI_TYPE_F16] = {"f16", 1, 2},
    [PI_TYPE_Q4_0] = {"q4_0", 32, 2 + 16},
    [PI_TYPE_Q4_1] = {"q4_1", 32, 2 + 2 + 16},
    [PI_TYPE_Q5_0] = {"q5_0", 32, 2 + 4 + 16},
    [PI_TYPE_Q5_1] = {"q5_1", 32, 2 + 2 + 4 + 16},
    [PI_TYPE_Q8_0] = {"q8_0", 32, 2 + 32},
    [PI_TYPE_Q8_1] = {"q8_1", 32, 4 + 32},
    [PI_TYPE_Q2_K] = {"q2_k", 256, 16 + 64 + 2 + 2},
    [PI_TYPE_Q3_K] = {"q3_k", 256, 32 + 64 + 12 + 2},
    [PI_TYPE_Q4_K] = {"q4_k", 256, 2 + 2 + 12 + 128},
    [PI_TYPE_Q5_K] = {"q5_k", 256, 2 + 2 + 12 + 32 + 128},
    [PI_TYPE_Q6_K] = {"q6_k", 256, 128 + 64 + 16 + 2},
    [PI_TYPE_Q8_K] = {"q8_k", 256, 4 + 256 + 32},
    [PI_TYPE_I8] = {"i8", 1, 1},
    [PI_TYPE_I16] = {"i16", 1, 2},
    [PI_TYPE_I32] = {"i32", 1, 4},
    [PI_TYPE_I64] = {"i64", 1, 8},
    [PI_TYPE_F64] = {"f64", 1, 8},
    [PI_TYPE_BF16] = {"bf16", 1, 2},
};

const struct pi_type_info *pi_type_get(uint32_t t)
{
    if (t >= PI_TYPE_COUNT || type_table[t].name == NULL) return NULL;
    return &type_table[t];
}

const char *pi_type_name(uint32_t t)
{
    const struct pi_type_info *ti = pi_type_get(t);
    return ti ? ti->name : "unknown";
}

bool pi_type_from_name(const char *name, enum pi_type *out)
{
    if (!name) return false;
    for (uint32_t t = 0; t < PI_TYPE_COUNT; t++) {
        if (type_table[t].name && strcasecmp(type_table[t].name, name) == 0) {
            *out = (enum pi_type)t;
            return true;
        }
    }
    return false;
}

bool pi_type_row_bytes(uint32_t t, uint64_t n, uint64_t *bytes)
{
    const struct pi_type_info *ti = pi_type_get(t);
    uint64_t b;
    if (!ti || n % ti->block_elems != 0) return false;
    if (pi_mul_overflows(n / ti->block_elems, ti->block_bytes, &b)) return false;
    *bytes = b;
    return true;
}
