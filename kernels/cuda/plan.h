/*
 * kernels/cuda/plan.h - the device memory the CUDA kernels take, as host C: the one place that says
 * how the context's allocator rounds, how large the cuBLAS workspace, the GEMM's dequantised tile and
 * the attention's split partials are, which head sizes the flash-decoding kernels take, and how many
 * bytes a weight occupies in the device layout (kernels/cuda/cuda-impl.h).
 *
 * Why a header of its own: the VRAM plan (compute/backend-cuda-plan.c) must count every byte the
 * kernels will hold, and it runs in processes that have no CUDA at all (pi-coordinator sizes the hot
 * set from it). The .cu files include this header and call these functions for their own allocations,
 * so a kernel whose scratch changes changes the plan with it. Plain C (kernels/cuda/plan.c, compiled
 * into libpinfer.a by the C compiler); nothing here touches a device.
 */
#ifndef PI_KERNELS_CUDA_PLAN_H
#define PI_KERNELS_CUDA_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* pi_cuda_alloc counts every allocation in these units (cudaMalloc's alignment). */
#define PI_CUDA_ALLOC_ALIGN 256u

/* The cuBLAS workspace every context allocates from its budget (cuBLAS' recommendation on Hopper);
 * its last bytes hold the decode attention's per-head counters (ctx.cu). */
#define PI_CUDA_BLAS_WS ((size_t)32 << 20)

/* pi_cuda_matmul runs batches of up to this many rows as matrix-vector products, one per row (no
 * scratch but the quantised x), and larger ones as pi_cuda_gemm (the f16 input and the tile below). */
#define PI_CUDA_MATVEC_MAX_ROWS 2

/* Largest dequantised f16 weight tile of pi_cuda_gemm (matmul.cu), and its row granule. */
#define PI_CUDA_TILE_BYTES ((size_t)64 << 20)
#define PI_CUDA_TILE_ROW_GRANULE 128

/* Positions per split of the flash-decoding attention (ops.cu); shorter splits are taken only within
 * the scratch already held. */
#define PI_CUDA_ATT_CHUNK 256

/* Bytes per 32-element segment of x quantised to 8 bits (matvec-q8.cu): 32 int8 values and one
 * 16-byte int4 of metadata. */
#define PI_CUDA_XQ_SEG_BYTES (32u + 16u)

/* Bytes the allocator counts for a request of `bytes` (rounded up to PI_CUDA_ALLOC_ALIGN). */
static inline uint64_t pi_cuda_counted(uint64_t bytes)
{
    return (bytes + PI_CUDA_ALLOC_ALIGN - 1) & ~(uint64_t)(PI_CUDA_ALLOC_ALIGN - 1);
}

/* What a scratch slot asks the allocator for when a request of `bytes` grows it: 25% headroom, so that
 * a slightly larger request later does not reallocate (ctx.cu, pi_cuda_scratch). */
static inline size_t pi_cuda_scratch_want(size_t bytes) { return bytes + bytes / 4; }

/* The bytes a scratch slot holds, as counted, after its largest request was `bytes` (0: never used). */
static inline uint64_t pi_cuda_scratch_held(uint64_t bytes) { return bytes ? pi_cuda_counted(pi_cuda_scratch_want((size_t)bytes)) : 0; }

/* The head sizes the flash-decoding kernels (pi_cuda_attention, pi_cuda_attention_dec) are built
 * for; ops.cu instantiates one template per entry. */
static inline bool pi_cuda_att_head_dim_ok(int head_dim)
{
    return head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256;
}

/* Bytes of the attention's split partials for T queries of n_head heads in nsplit splits: per split,
 * head_dim sums plus the running maximum and denominator, f32. */
static inline size_t pi_cuda_att_part_bytes(int64_t T, int n_head, int64_t nsplit, int head_dim)
{
    return (size_t)T * (size_t)n_head * (size_t)nsplit * (size_t)(head_dim + 2) * sizeof(float);
}

/* The largest pi_cuda_att_part_bytes of T queries over a context of n_ctx positions
 * (PI_CUDA_ATT_CHUNK-position splits). */
static inline size_t pi_cuda_att_part_max(int64_t T, int n_head, int64_t n_ctx, int head_dim)
{
    return pi_cuda_att_part_bytes(T, n_head, (n_ctx + PI_CUDA_ATT_CHUNK - 1) / PI_CUDA_ATT_CHUNK, head_dim);
}

/* Bytes of the XQ scratch a q8 product of `cols` columns quantises x into. */
size_t pi_cuda_xq_bytes(int64_t cols);

/* The quantised GEMM (mmq.cu) pads a batch's tokens to a multiple of this. */
#define PI_CUDA_MMQ_TOK_ALIGN 8

/* Whether batched products with a weight of `type` (an enum pi_type) can take the integer tensor-core
 * GEMM of mmq.cu (every quantised device type but Q2_K) in this build: every architecture built has it (sm_80 on). */
bool pi_cuda_mmq_built(int type);

/* The largest batch pi_cuda_gemm gives the integer GEMM; larger ones take the f16 tiles and cuBLAS,
 * faster there (doc/cuda.md: on the H100, 11008 x 4096 Q4_0, the integer GEMM is 3.1x the tiles' speed
 * at 8 tokens, 1.3x at 32, 0.9x at 64). */
#define PI_CUDA_MMQ_MAX_T 32

/* Bytes of the GEMMs' input scratch (X16) for X (T, cols): pi_cuda_gemm's f16 copy, or mmq.cu's 8-bit
 * X (T padded to PI_CUDA_MMQ_TOK_ALIGN; one byte per value and two floats per 32), whichever is larger. */
static inline size_t pi_cuda_gemm_x16_bytes(int64_t T, int64_t cols)
{
    const size_t f16 = (size_t)T * (size_t)cols * 2;
    const size_t tp = (size_t)((T + PI_CUDA_MMQ_TOK_ALIGN - 1) / PI_CUDA_MMQ_TOK_ALIGN * PI_CUDA_MMQ_TOK_ALIGN);
    const size_t q8 = tp * (size_t)cols + tp * (size_t)(cols / 32) * 2 * sizeof(float);
    return f16 > q8 ? f16 : q8;
}

/* Bytes of the hot FFN's activations, n floats (the FFN scratch of pi_cuda_ffn_hot and
 * pi_cuda_ffn_dense). */
static inline size_t pi_cuda_ffn_act_bytes(int64_t n) { return (size_t)n * sizeof(float); }

/* Rows of pi_cuda_gemm's dequantised tile for a weight (rows, cols): as many as PI_CUDA_TILE_BYTES of
 * f16 hold, in multiples of PI_CUDA_TILE_ROW_GRANULE where that is at least one granule, at least 1,
 * at most rows. */
int64_t pi_cuda_gemm_tile_rows(int64_t rows, int64_t cols);

/* The dequantised tile pi_cuda_gemm takes for a weight (rows, cols) of device type `type` (an enum
 * pi_type) in batches of up to T tokens: 0 for F16, which the GEMM uses in place, and for the types of
 * pi_cuda_mmq_built when T <= PI_CUDA_MMQ_MAX_T (the integer GEMM takes them all). */
size_t pi_cuda_gemm_tile_bytes(int type, int64_t rows, int64_t cols, int64_t T);

/* A run of `len` bytes at `src` in ggml's block that the side plane's entry holds at `dst`. */
struct pi_cuda_piece {
    uint8_t src, dst, len;
};

/* How a weight type is laid out on the device (kernels/cuda/cuda-impl.h): elements and ggml bytes
 * per block; the quant plane's bytes per block, of which the first qlen are ggml's bytes [qoff, qoff +
 * qlen) and the rest zero (Q3_K: 110 bytes padded to 112); and, for the types whose ggml block is not
 * a whole number of 16-byte vectors, the side plane's bytes per block (0: not split; 2: the f16 d; 4:
 * d, m; 8: d, pad or m, qh) and the pieces of the block each entry holds (a pad left out of the pieces
 * is zero). */
struct pi_cuda_geom {
    int64_t belems;
    size_t bbytes;
    size_t qbytes, qoff, qlen;
    size_t sbytes;
    struct pi_cuda_piece side[2];
    int n_side;
};

/* The device layout of type (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
 * Q6_K): 0 and *g, or -PI_ERR_UNSUPPORTED (logged) for a type without device kernels. */
int pi_cuda_geom_of(int type, struct pi_cuda_geom *g);

/* The two planes of a (rows, cols) weight of type: the quant plane rounded to 256 bytes and the side
 * plane (rows * blocks * sbytes; 0 when not split). cols must be a positive multiple of 32 (256 for
 * the K-quants). 0, or -PI_ERR_UNSUPPORTED / -PI_ERR_INVAL (shape) / -PI_ERR_RANGE (size), logged. */
int pi_cuda_weight_planes(int type, int64_t rows, int64_t cols, struct pi_cuda_geom *g, size_t *qplane,
                          size_t *dplane);

/* Device bytes a (rows, cols) weight of type holds, both planes in one allocation, as counted. 0 or a
 * negative pi_err as pi_cuda_weight_planes. */
int pi_cuda_weight_bytes_for(int type, int64_t rows, int64_t cols, size_t *bytes);

/* Whether g's device layout is ggml's own (no side plane, blocks copied whole and unpadded): then a
 * weight's quant plane is the file's bytes as they are. */
bool pi_cuda_geom_as_file(const struct pi_cuda_geom *g);

/* nb consecutive ggml blocks from in into their device layout g: each block's quant bytes to q (g->qbytes
 * apart, the pad after g->qlen zero), its side pieces to d (g->sbytes apart, the rest of the entry zero;
 * d unused when g->sbytes is 0). The one conversion pi_cuda_weight_upload's staging and
 * pi_cuda_weight_pack_rows both use. */
void pi_cuda_pack_blocks(const struct pi_cuda_geom *g, const uint8_t *in, size_t nb, uint8_t *q, uint8_t *d);

/* The device image of rows [r0, r0 + nr) of a (rows, cols) weight of type, host side: src holds the
 * whole weight in ggml's layout (rows of pi_type_row_bytes each); image (pi_cuda_weight_bytes_for
 * bytes) receives those rows' blocks as pi_cuda_weight_upload lays them out on the device, the quant
 * plane from byte 0 and the side plane from the quant plane's rounded size, every pad byte of the
 * rows' blocks zero. Disjoint row ranges may be packed by different threads into the same image, which
 * then copied to device memory and wrapped (pi_cuda_weight_wrap) is the uploaded weight. 0, or a
 * negative pi_err as pi_cuda_weight_planes, or -PI_ERR_RANGE for rows outside the weight. */
int pi_cuda_weight_pack_rows(int type, int64_t rows, int64_t cols, const void *src, int64_t r0, int64_t nr, void *image);

#ifdef __cplusplus
}
#endif

#endif
