/*
 * model/tensor-check.c - NaN and infinity in a model file's tensors (model/tensor-check.h).
 *
 * Every type is described by where its floating-point fields sit in a block: the plain types are
 * blocks of one element, each quantised type has one or two fp16 scales at fixed offsets (taken with
 * offsetof from kernels/cpu/quant.h, so the table follows the layouts the kernels read). A field is
 * non-finite when its exponent bits are all ones, which is how each format spells both NaN and
 * infinity; the test reads the bits, so no value is converted and no signalling NaN is raised.
 */
#include "config.h"
#include "model/tensor-check.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum field_kind { FK_NONE = 0, FK_F16, FK_BF16, FK_F32, FK_F64 };

/* The floating-point fields of one block of a type: kind, and up to two byte offsets in the block. */
struct block_fields {
    enum field_kind kind;
    int n;         /* fields per block: 0 (integers), 1 or 2 */
    size_t off[2]; /* byte offsets in the block */
    bool scale;    /* the fields are scales of quantised values (for the message), not elements */
};

static struct block_fields fields_of(uint32_t type)
{
    switch (type) {
    case PI_TYPE_F32: return (struct block_fields){FK_F32, 1, {0, 0}, false};
    case PI_TYPE_F16: return (struct block_fields){FK_F16, 1, {0, 0}, false};
    case PI_TYPE_BF16: return (struct block_fields){FK_BF16, 1, {0, 0}, false};
    case PI_TYPE_F64: return (struct block_fields){FK_F64, 1, {0, 0}, false};
    case PI_TYPE_Q4_0: return (struct block_fields){FK_F16, 1, {offsetof(struct pi_block_q4_0, d), 0}, true};
    case PI_TYPE_Q4_1:
        return (struct block_fields){
            FK_F16, 2, {offsetof(struct pi_block_q4_1, d), offsetof(struct pi_block_q4_1, m)}, true};
    case PI_TYPE_Q5_0: return (struct block_fields){FK_F16, 1, {offsetof(struct pi_block_q5_0, d), 0}, true};
    case PI_TYPE_Q5_1:
        return (struct block_fields){
            FK_F16, 2, {offsetof(struct pi_block_q5_1, d), offsetof(struct pi_block_q5_1, m)}, true};
    case PI_TYPE_Q8_0: return (struct block_fields){FK_F16, 1, {offsetof(struct pi_block_q8_0, d), 0}, true};
    case PI_TYPE_Q8_1:
        return (struct block_fields){
            FK_F16, 2, {offsetof(struct pi_block_q8_1, d), offsetof(struct pi_block_q8_1, s)}, true};
    case PI_TYPE_Q2_K:
        return (struct block_fields){
            FK_F16, 2, {offsetof(struct pi_block_q2_K, d), offsetof(struct pi_block_q2_K, dmin)}, true};
    case PI_TYPE_Q3_K: return (struct block_fields){FK_F16, 1, {offsetof(struct pi_block_q3_K, d), 0}, true};
    case PI_TYPE_Q4_K:
        return (struct block_fields){
            FK_F16, 2, {offsetof(struct pi_block_q4_K, d), offsetof(struct pi_block_q4_K, dmin)}, true};
    case PI_TYPE_Q5_K:
        return (struct block_fields){
            FK_F16, 2, {offsetof(struct pi_block_q5_K, d), offsetof(struct pi_block_q5_K, dmin)}, true};
    case PI_TYPE_Q6_K: return (struct block_fields){FK_F16, 1, {offsetof(struct pi_block_q6_K, d), 0}, true};
    case PI_TYPE_Q8_K: return (struct block_fields){FK_F32, 1, {offsetof(struct pi_block_q8_K, d), 0}, true};
    default: return (struct block_fields){FK_NONE, 0, {0, 0}, false}; /* I8..I64: no float field */
    }
}

/* Whether the field of kind k at p (unaligned, little-endian like the file) is NaN or infinite; the
 * name of what it is goes to *what. */
static bool non_finite(enum field_kind k, const uint8_t *p, const char **what)
{
    uint64_t bits = 0;
    bool mant_zero;
    switch (k) {
    case FK_F16:
        memcpy(&bits, p, 2);
        if ((bits & 0x7c00u) != 0x7c00u) return false;
        mant_zero = (bits & 0x03ffu) == 0;
        break;
    case FK_BF16:
        memcpy(&bits, p, 2);
        if ((bits & 0x7f80u) != 0x7f80u) return false;
        mant_zero = (bits & 0x007fu) == 0;
        break;
    case FK_F32:
        memcpy(&bits, p, 4);
        if ((bits & 0x7f800000u) != 0x7f800000u) return false;
        mant_zero = (bits & 0x007fffffu) == 0;
        break;
    case FK_F64:
        memcpy(&bits, p, 8);
        if ((bits & 0x7ff0000000000000ull) != 0x7ff0000000000000ull) return false;
        mant_zero = (bits & 0x000fffffffffffffull) == 0;
        break;
    default: return false;
    }
    *what = mant_zero ? "inf" : "nan";
    return true;
}

/* Blocks [b0, b1) of t: 0, or -PI_ERR_FORMAT with the first bad field in err. */
static int check_blocks(const struct pi_gguf_tensor *t, const struct block_fields *f, size_t block_bytes, uint64_t b0,
                        uint64_t b1, uint64_t n_blocks, char *err, size_t errlen)
{
    const uint8_t *base = t->data;
    for (uint64_t b = b0; b < b1; b++)
        for (int i = 0; i < f->n; i++) {
            const char *what;
            if (!non_finite(f->kind, base + b * block_bytes + f->off[i], &what)) continue;
            if (err && errlen)
                snprintf(err, errlen, "%.*s (%s): %s %" PRIu64 " of %" PRIu64 " %s (%s)", (int)PI_MIN(t->name.len, 256),
                         t->name.ptr, pi_type_name(t->type), f->scale ? "block" : "element", b, n_blocks,
                         f->scale ? "has a non-finite scale" : "is not finite", what);
            return -PI_ERR_FORMAT;
        }
    return 0;
}

int pi_tensor_check(const struct pi_gguf_tensor *t, enum pi_tensor_check mode, char *err, size_t errlen)
{
    if (mode != PI_TENSOR_CHECK_SAMPLED && mode != PI_TENSOR_CHECK_FULL) return -PI_ERR_INVAL;
    const struct pi_type_info *ti = pi_type_get(t->type);
    const struct block_fields f = fields_of(t->type);
    if (!ti || f.n == 0 || t->n_bytes == 0) return 0;
    const size_t bb = ti->block_bytes;
    const uint64_t n_blocks = t->n_bytes / bb; /* the reader checked n_bytes = rows x row bytes */
    /* a window: as many whole blocks as fit PI_TENSOR_CHECK_WINDOW_BYTES, one at least */
    const uint64_t w = PI_MAX((uint64_t)1, (uint64_t)(PI_TENSOR_CHECK_WINDOW_BYTES / bb));
    if (mode == PI_TENSOR_CHECK_FULL || n_blocks <= w * PI_TENSOR_CHECK_WINDOWS)
        return check_blocks(t, &f, bb, 0, n_blocks, n_blocks, err, errlen);
    /* window k starts at block floor(k span / (WINDOWS - 1)), span = n_blocks - w: the first at 0, the
     * last ending at the tensor's end, apart since n_blocks > WINDOWS w (quotient and remainder taken
     * apart so that no product can wrap) */
    const uint64_t span = n_blocks - w, q = span / (PI_TENSOR_CHECK_WINDOWS - 1),
                   r = span % (PI_TENSOR_CHECK_WINDOWS - 1);
    for (uint64_t k = 0; k < PI_TENSOR_CHECK_WINDOWS; k++) {
        const uint64_t b0 = k * q + k * r / (PI_TENSOR_CHECK_WINDOWS - 1);
        int rc = check_blocks(t, &f, bb, b0, b0 + w, n_blocks, err, errlen);
        if (rc != 0) return rc;
    }
    return 0;
}

int pi_tensor_check_file(const pi_gguf_t *g, enum pi_tensor_check mode, char *err, size_t errlen)
{
    for (uint64_t i = 0; i < pi_gguf_n_tensors(g); i++) {
        int rc = pi_tensor_check(pi_gguf_tensor(g, i), mode, err, errlen);
        if (rc != 0) return rc;
    }
    return 0;
}
