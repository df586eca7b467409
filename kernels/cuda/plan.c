/*
 * kernels/cuda/plan.c - the device memory the CUDA kernels take (kernels/cuda/plan.h), host C: the
 * device layout of each weight type and the sizes of the kernels' scratch. Compiled into libpinfer.a
 * in every build, so that a process without CUDA can plan a device's memory exactly.
 */
#include "config.h"
#include "kernels/cuda/plan.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"

#include <limits.h>
#include <string.h>

size_t pi_cuda_xq_bytes(int64_t cols) { return (size_t)(cols / 32) * PI_CUDA_XQ_SEG_BYTES; }

int64_t pi_cuda_gemm_tile_rows(int64_t rows, int64_t cols)
{
    int64_t tr = (int64_t)(PI_CUDA_TILE_BYTES / ((size_t)cols * 2));
    tr = tr >= PI_CUDA_TILE_ROW_GRANULE ? tr / PI_CUDA_TILE_ROW_GRANULE * PI_CUDA_TILE_ROW_GRANULE : PI_MAX(tr, (int64_t)1);
    return PI_MIN(tr, rows);
}

bool pi_cuda_mmq_built(int type)
{
#if PI_CUDA_MIN_ARCH >= 80
    return type == PI_TYPE_Q4_0 || type == PI_TYPE_Q4_1 || type == PI_TYPE_Q5_0 || type == PI_TYPE_Q5_1 ||
           type == PI_TYPE_Q8_0 || type == PI_TYPE_Q3_K || type == PI_TYPE_Q4_K || type == PI_TYPE_Q5_K ||
           type == PI_TYPE_Q6_K;
#else
    (void)type;
    return false;
#endif
}

size_t pi_cuda_gemm_tile_bytes(int type, int64_t rows, int64_t cols, int64_t T)
{
    if (type == PI_TYPE_F16 || (pi_cuda_mmq_built(type) && T <= PI_CUDA_MMQ_MAX_T)) return 0;
    return (size_t)pi_cuda_gemm_tile_rows(rows, cols) * (size_t)cols * 2;
}

/* A split type: ggml's blocks of bbytes with the quant bytes [qoff, qoff + qbytes) in the quant plane and
 * the side pieces p0 (and p1 where its len is not 0) in an sbytes entry of the side plane. */
static void split(struct pi_cuda_geom *g, int64_t belems, size_t bbytes, size_t qbytes, size_t qoff, size_t sbytes,
                  struct pi_cuda_piece p0, struct pi_cuda_piece p1)
{
    g->belems = belems, g->bbytes = bbytes, g->qbytes = g->qlen = qbytes, g->qoff = qoff, g->sbytes = sbytes;
    g->side[0] = p0, g->side[1] = p1, g->n_side = p1.len ? 2 : 1;
}

int pi_cuda_geom_of(int type, struct pi_cuda_geom *g)
{
    static const struct pi_cuda_piece none = {0, 0, 0};
    memset(g, 0, sizeof *g);
    switch (type) {
    case PI_TYPE_F16:
    case PI_TYPE_BF16: g->belems = 1; g->bbytes = g->qbytes = g->qlen = 2; return 0;
    case PI_TYPE_Q4_K: g->belems = 256; g->bbytes = g->qbytes = g->qlen = 144; return 0;
    /* block_q5_K {half d, dmin; uint8 scales[12], qh[32], qs[128]}: 176 = 11 x 16 bytes, kept whole */
    case PI_TYPE_Q5_K: g->belems = 256; g->bbytes = g->qbytes = g->qlen = 176; return 0;
    /* block_q3_K {uint8 hmask[32], qs[64], scales[12]; half d}: kept whole, 110 bytes padded to 112, so
     * that d shares the 16-byte vector of the scales */
    case PI_TYPE_Q3_K: g->belems = 256; g->bbytes = 110; g->qbytes = 112; g->qlen = 110; return 0;
    /* block_q2_K {uint8 scales[16], qs[64]; half d, dmin}: the 80 bytes, {d, dmin} in the side plane */
    case PI_TYPE_Q2_K: split(g, 256, 84, 80, 0, 4, (struct pi_cuda_piece){80, 0, 4}, none); return 0;
    /* ggml-common.h: block_q4_0 {half d; uint8 qs[16]}, block_q8_0 {half d; int8 qs[32]},
     * block_q6_K {uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d}: d alone in the side plane */
    case PI_TYPE_Q4_0: split(g, 32, 18, 16, 2, 2, (struct pi_cuda_piece){0, 0, 2}, none); return 0;
    case PI_TYPE_Q8_0: split(g, 32, 34, 32, 2, 2, (struct pi_cuda_piece){0, 0, 2}, none); return 0;
    case PI_TYPE_Q6_K: split(g, 256, 210, 208, 0, 2, (struct pi_cuda_piece){208, 0, 2}, none); return 0;
    /* block_q4_1 {half d, m; uint8 qs[16]}: {d, m}, one 4-byte load */
    case PI_TYPE_Q4_1: split(g, 32, 20, 16, 4, 4, (struct pi_cuda_piece){0, 0, 4}, none); return 0;
    /* block_q5_0 {half d; uint8 qh[4]; uint8 qs[16]}: {d, 2 zero bytes, qh}, one 8-byte load (22 bytes
     * a block on the file, 24 on the device) */
    case PI_TYPE_Q5_0:
        split(g, 32, 22, 16, 6, 8, (struct pi_cuda_piece){0, 0, 2}, (struct pi_cuda_piece){2, 4, 4});
        return 0;
    /* block_q5_1 {half d, m; uint8 qh[4]; uint8 qs[16]}: {d, m, qh}, one 8-byte load */
    case PI_TYPE_Q5_1: split(g, 32, 24, 16, 8, 8, (struct pi_cuda_piece){0, 0, 8}, none); return 0;
    default:
        pi_error("cuda: no device kernels for type %s", pi_type_name((uint32_t)type));
        return -PI_ERR_UNSUPPORTED;
    }
}

int pi_cuda_weight_planes(int type, int64_t rows, int64_t cols, struct pi_cuda_geom *g, size_t *qplane, size_t *dplane)
{
    int rc = pi_cuda_geom_of(type, g);
    if (rc < 0) return rc;
    const struct pi_type_info *ti = pi_type_get((uint32_t)type);
    PI_ASSERT(ti && ti->block_bytes == g->bbytes && (int64_t)ti->block_elems == g->belems);
    int64_t align = g->belems > 32 ? g->belems : 32;
    if (rows <= 0 || cols <= 0 || cols % align != 0 || cols > INT_MAX || rows > INT_MAX) {
        pi_error("cuda: weight shape (%lld, %lld) of type %s unsupported (cols must be a positive multiple of %lld)",
                 (long long)rows, (long long)cols, pi_type_name((uint32_t)type), (long long)align);
        return -PI_ERR_INVAL;
    }
    uint64_t nblk = (uint64_t)(cols / g->belems), q = 0, d = 0;
    if (pi_mul_overflows(nblk * (uint64_t)rows, g->qbytes, &q) ||
        pi_mul_overflows(nblk * (uint64_t)rows, g->sbytes, &d)) {
        pi_error("cuda: weight (%lld, %lld) too large", (long long)rows, (long long)cols);
        return -PI_ERR_RANGE;
    }
    *qplane = (size_t)((q + 255) & ~(uint64_t)255);
    *dplane = (size_t)d;
    return 0;
}

int pi_cuda_weight_bytes_for(int type, int64_t rows, int64_t cols, size_t *bytes)
{
    struct pi_cuda_geom g;
    size_t q, d;
    int rc = pi_cuda_weight_planes(type, rows, cols, &g, &q, &d);
    if (rc < 0) return rc;
    *bytes = (q + d + 255) & ~(size_t)255;
    return 0;
}

/* nb blocks of bbytes each from in: bytes [qoff, qoff + qbytes) of each to q (qbytes apart), and its
 * one side piece, bytes [soff, soff + sbytes), to d (sbytes apart). Inlined with constant sizes for the
 * common types, so that the copies are plain loads and stores rather than calls (a 7B-class Q4_0 layer
 * is 4.2 million blocks: pi_cuda_pack_blocks's generic loop packs it at about 1.4 GB/s on one core). */
static inline __attribute__((always_inline)) void pack_fixed(const uint8_t *in, uint8_t *q, uint8_t *d, size_t nb, size_t bbytes,
                                                             size_t qoff, size_t qbytes, size_t soff, size_t sbytes)
{
    for (size_t b = 0; b < nb; b++) {
        memcpy(q + b * qbytes, in + b * bbytes + qoff, qbytes);
        memcpy(d + b * sbytes, in + b * bbytes + soff, sbytes);
    }
}

bool pi_cuda_geom_as_file(const struct pi_cuda_geom *g)
{
    return !g->sbytes && g->qlen == g->bbytes && g->qbytes == g->bbytes;
}

void pi_cuda_pack_blocks(const struct pi_cuda_geom *g, const uint8_t *in, size_t nb, uint8_t *q, uint8_t *d)
{
    /* Q4_0, Q8_0: the quant bytes whole (no padding), the f16 d the side entry (Q6_K's 208-byte copies
     * were slower inlined: 2.4 against 3.3 GB/s) */
    if (g->n_side == 1 && g->qlen == g->qbytes && g->side[0].dst == 0 && g->side[0].len == g->sbytes &&
        g->side[0].src == 0 && g->qoff == 2 && g->sbytes == 2) {
        if (g->bbytes == 18 && g->qbytes == 16) {
            pack_fixed(in, q, d, nb, 18, 2, 16, 0, 2);
            return;
        }
        if (g->bbytes == 34 && g->qbytes == 32) {
            pack_fixed(in, q, d, nb, 34, 2, 32, 0, 2);
            return;
        }
    }
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *blk = in + b * g->bbytes;
        memcpy(q + b * g->qbytes, blk + g->qoff, g->qlen);
        memset(q + b * g->qbytes + g->qlen, 0, g->qbytes - g->qlen);
        if (!g->sbytes) continue;
        memset(d + b * g->sbytes, 0, g->sbytes);
        for (int k = 0; k < g->n_side; k++) memcpy(d + b * g->sbytes + g->side[k].dst, blk + g->side[k].src, g->side[k].len);
    }
}

int pi_cuda_weight_pack_rows(int type, int64_t rows, int64_t cols, const void *src, int64_t r0, int64_t nr, void *image)
{
    struct pi_cuda_geom g;
    size_t qplane = 0, dplane = 0;
    int rc = pi_cuda_weight_planes(type, rows, cols, &g, &qplane, &dplane);
    if (rc < 0) return rc;
    if (r0 < 0 || nr < 0 || r0 + nr > rows) return -PI_ERR_RANGE;
    const size_t nblk = (size_t)(cols / g.belems), b0 = (size_t)r0 * nblk, nb = (size_t)nr * nblk;
    const uint8_t *in = (const uint8_t *)src + b0 * g.bbytes;
    uint8_t *q = (uint8_t *)image + b0 * g.qbytes, *d = (uint8_t *)image + qplane + b0 * g.sbytes;
    if (pi_cuda_geom_as_file(&g)) memcpy(q, in, nb * g.bbytes);
    else pi_cuda_pack_blocks(&g, in, nb, q, d);
    return 0;
}
