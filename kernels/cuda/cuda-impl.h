/*
 * kernels/cuda/cuda-impl.h - private to the .cu files of kernels/cuda/: the checked-call macros, the
 * context and weight structs, and the device-side decoders of every weight type.
 *
 * Device weight layout (why it differs from the file): ggml's Q4_0 (18 bytes), Q8_0 (34) and Q6_K
 * (210) blocks are only 2-byte aligned in a row, which forbids 16-byte loads. On upload their f16 scale
 * `d` is split out into a side plane of its own (rows * blocks halves) and the rest of each block (16,
 * 32 and 208 bytes) is stored contiguously, so every quant load is a 16-byte vector. Q4_1 (20 bytes),
 * Q5_0 (22) and Q5_1 (24) keep their 16 nibble bytes in the quant plane and the rest in a side entry of
 * 4 bytes {d, m} (Q4_1) or 8 bytes {d, 0, qh} (Q5_0) / {d, m, qh} (Q5_1), one aligned load each; Q2_K
 * (84 bytes) keeps its scales and quants (80 bytes) and puts {d, dmin} in a 4-byte side entry; Q3_K
 * (110 bytes) is kept whole with 2 zero bytes after it (112), so its d sits in the scales' vector. Q4_K
 * (144 bytes), Q5_K (176 = 11 x 16 bytes), F16 and BF16 keep ggml's layout unchanged: their blocks are
 * whole multiples of 16 bytes, so every block of a row that starts 16-byte aligned is aligned too (the
 * planes start at 256, a row is nblk whole blocks). Values are bit-identical to the file's; only
 * addresses move (plus Q5_0's and Q3_K's 2 zero bytes a block).
 *
 * Every kernel works on "segments" of 32 consecutive elements of a row: segment s of row r covers
 * columns [32 s, 32 s + 32). A K-quant super-block of 256 holds 8 segments.
 */
#ifndef PI_KERNELS_CUDA_IMPL_H
#define PI_KERNELS_CUDA_IMPL_H

#include "kernels/cuda/cuda.h"
#include "kernels/cuda/plan.h"

extern "C" {
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"
}

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <stdint.h>

/* Check a CUDA runtime call; on failure log the call's text and the error, and return -PI_ERR_DEVICE
 * from the enclosing function. */
#define PI_CU(call)                                                                                \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            pi_error("%s failed: %s (%s:%d)", #call, cudaGetErrorString(e_), __FILE__, __LINE__);  \
            return -PI_ERR_DEVICE;                                                                 \
        }                                                                                          \
    } while (0)

/* The same for cuBLAS. */
#define PI_CUBLAS(call)                                                                            \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            pi_error("%s failed: %s (%s:%d)", #call, cublasGetStatusString(s_), __FILE__, __LINE__); \
            return -PI_ERR_DEVICE;                                                                 \
        }                                                                                          \
    } while (0)

/* DESIGN (programmatic dependent launch, sm_90+). The decode step is a chain of short kernels on one
 * stream, and each used to start only once the one before it had finished and drained: a few
 * microseconds of launch and ramp per kernel during which the memory system idled. The q8 matvecs,
 * the x quantiser, the dense gate/up kernel, the decode attention and the float staged matvec
 * (k_matvec_xs) are launched with cudaLaunchAttributeProgrammaticStreamSerialization (pi_launch_pdl,
 * when the context's `pdl` is set: device and built code sm_90+), so the device may start them while
 * the kernel before them still runs. The rules every such kernel keeps:
 * - it calls pi_pdl_launch() at its start (the kernel after it may then be launched as soon as all of
 *   this one's blocks are running);
 * - before pi_pdl_wait() it reads only data no kernel of the stream writes (weights, norm weights:
 *   uploaded, and waited for, before the first step), and it writes nothing. Kernels before it may still be running,
 *   several of them: each waits only for the one before it, so completion is transitive, not early
 *   launch. Activations, caches and scratch are read after the wait;
 * - pi_pdl_wait() returns once the kernel before it has completed and its writes are visible, and
 *   at once when the kernel was launched without the attribute.
 * A kernel launched with the attribute that skipped the wait would race; only the launches through
 * pi_launch_pdl set it, and only for kernels written to these rules. A context made with
 * pi_cuda_opts.no_pdl launches them plainly; test-backend-cuda checks that off and on give
 * bit-identical logits. */
__device__ __forceinline__ void pi_pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pi_pdl_launch()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/* Launch kernel k on the compute stream (smem bytes of dynamic shared memory), with programmatic
 * stream serialization where c->pdl. */
template <typename... K, typename... A>
static inline cudaError_t pi_launch_pdl(const struct pi_cuda_ctx *c, void (*k)(K...), dim3 grid, dim3 block, size_t smem,
                                        A... args);

/* After a kernel launch: a bad configuration shows up in cudaGetLastError. */
#define PI_CU_LAUNCH(name) PI_CU_LAUNCH_((name), __FILE__, __LINE__)
#define PI_CU_LAUNCH_(name, f, l)                                                                  \
    do {                                                                                           \
        cudaError_t e_ = cudaGetLastError();                                                       \
        if (e_ != cudaSuccess) {                                                                   \
            pi_error("launch of %s failed: %s (%s:%d)", name, cudaGetErrorString(e_), f, l);       \
            return -PI_ERR_DEVICE;                                                                 \
        }                                                                                          \
    } while (0)

/* Propagate a negative return. */
#define PI_TRY(expr)                                                                               \
    do {                                                                                           \
        int r_ = (expr);                                                                           \
        if (r_ < 0) return r_;                                                                     \
    } while (0)

#define PI_CUDA_ATT_CNT 1024 /* decode heads the one-launch attention handles (ctx.cu, ops.cu) */

/* Scratch slots of a context; each grows on demand through the budgeted allocator. */
enum pi_cuda_scratch {
    PI_CUDA_SCR_X16 = 0, /* activations converted to f16 for cuBLAS */
    PI_CUDA_SCR_TILE,    /* dequantised f16 weight tile */
    PI_CUDA_SCR_ATT,     /* attention split partials */
    PI_CUDA_SCR_FFN,     /* hot-FFN activations (n_hot floats) */
    PI_CUDA_SCR_XQ,      /* x quantised to 8 bits for the q8 matvec (pi_cuda_xq_bytes) */
    PI_CUDA_SCR_COUNT,
};

struct pi_cuda_alloc_rec {
    void *ptr;
    size_t bytes; /* as counted against the budget */
};

/* XQ layout (pi_xq_at) and the plan's count of it (PI_CUDA_XQ_SEG_BYTES, kernels/cuda/plan.h) agree. */
static_assert(sizeof(int4) == 16, "an XQ segment's metadata is one 16-byte int4");

struct pi_cuda_ctx {
    int dev;
    size_t budget;   /* bytes pi_cuda_alloc may hand out in total */
    size_t used;     /* bytes handed out now */
    size_t peak;     /* largest `used` seen */
    size_t overhead; /* device memory the CUDA context and cuBLAS took at creation (not budgeted) */
    int n_sm;
    int64_t xs_max_cols; /* widest x the staged matvec can hold in shared memory */
    int x_mode;          /* enum pi_cuda_x: which automatic products quantise x (pi_cuda_opts.x) */
    bool att_dec;        /* decode attention in one launch with RoPE and the KV store (off: opts.att_unfused) */
    unsigned *att_cnt;   /* PI_CUDA_ATT_CNT per-head split counters of k_attn_dec, zero between launches */
    bool pdl;            /* programmatic dependent launch of the decode kernels (sm_90+; off: opts.no_pdl) */
    bool mmq;            /* batched quantised products on the integer tensor cores (mmq.cu; off: opts.no_mmq) */
    cudaStream_t stream; /* compute: every kernel and cuBLAS call */
    cudaStream_t copy;   /* transfers the caller wants overlapped */
    cublasHandle_t blas;
    void *blas_ws; /* cuBLAS workspace, ours so that it is counted */
    struct pi_cuda_alloc_rec *recs;
    size_t n_recs, cap_recs;
    void *scr[PI_CUDA_SCR_COUNT];
    size_t scr_bytes[PI_CUDA_SCR_COUNT];
};

template <typename... K, typename... A>
static inline cudaError_t pi_launch_pdl(const struct pi_cuda_ctx *c, void (*k)(K...), dim3 grid, dim3 block, size_t smem,
                                        A... args)
{
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = c->stream;
    cfg.attrs = at;
    cfg.numAttrs = c->pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, args...);
}

/* A weight matrix W (rows, cols) in the device layout above. */
struct pi_cuda_weight {
    enum pi_type type;
    int64_t rows, cols;
    int64_t nblk;   /* blocks per row (cols for F16/BF16) */
    size_t qbytes;  /* bytes per block in the quant plane (2 for F16/BF16) */
    size_t sbytes;  /* bytes per block in the side plane (0: none) */
    uint8_t *q;     /* rows * nblk * qbytes */
    __half *d;      /* the side plane, rows * nblk entries of sbytes (the f16 d, or d and m, qh), or NULL */
    size_t bytes;   /* both planes, as counted (0 for a view) */
    bool view;      /* rows of another weight (pi_cuda_weight_view): owns no device memory */
};

/* Plain-value view of a weight passed to kernels by value. */
struct pi_wdev {
    const uint8_t *q;
    const __half *d;
    int64_t rows, cols, nblk;
};

static inline pi_wdev pi_wdev_of(const pi_cuda_weight *w)
{
    pi_wdev v;
    v.q = w->q;
    v.d = w->d;
    v.rows = w->rows;
    v.cols = w->cols;
    v.nblk = w->nblk;
    return v;
}

/* Ensure scratch slot `slot` holds at least `bytes`; *out is the slot's buffer. */
int pi_cuda_scratch(pi_cuda_ctx_t *ctx, enum pi_cuda_scratch slot, size_t bytes, void **out);

/* What a matvec does with its row sums: store them (y[r]), add them (y[r] += sum, add != 0), or, for
 * the hot FFN's gate/up pairs (R = 2, rows 2n and 2n + 1), store act(gate, up) into y[n], skipping
 * neurons the mask marks inactive. */
struct pi_mv_epi {
    float *y;
    int act;
    const uint8_t *mask;
    const int32_t *ids;
    int add;
    const float *ng; /* not NULL: x is the residual h and the staged kernel applies RMSNorm (weight ng) */
    float eps;
};

__device__ __forceinline__ void pi_mv_store(const pi_mv_epi &e, int64_t r, float v)
{
    if (e.add) e.y[r] += v;
    else e.y[r] = v;
}

__device__ __forceinline__ float pi_glu_f(int act, float g, float u);

/* A gate/up pair's warp whose neuron (e.ids[warp], or warp) the mask marks inactive: lane 0 stores its
 * activation 0; true when the warp has nothing more to do. */
__device__ __forceinline__ bool pi_mv_masked_off(const pi_mv_epi &e, int64_t warp, int lane)
{
    if (!e.mask) return false;
    const int64_t id = e.ids ? e.ids[warp] : warp;
    if (e.mask[id]) return false;
    if (lane == 0) e.y[warp] = 0.0f;
    return true;
}

/* The end of a matvec warp, by lane 0, over its warp-summed acc: the GLU pair's activation into
 * y[warp], or rows r0 .. r0 + R - 1 (those below rows) stored or added. */
template <int R, bool GLU>
__device__ __forceinline__ void pi_mv_finish(const pi_mv_epi &e, int64_t warp, int64_t r0, int64_t rows, const float (&acc)[R])
{
    if constexpr (GLU) {
        e.y[warp] = pi_glu_f(e.act, acc[0], acc[1]);
    } else {
#pragma unroll
        for (int i = 0; i < R; i++)
            if (r0 + i < rows) pi_mv_store(e, r0 + i, acc[i]);
    }
}

__device__ __forceinline__ float pi_glu_f(int act, float g, float u)
{
    if (act == PI_CUDA_ACT_SILU) return g / (1.0f + expf(-g)) * u;
    if (act == PI_CUDA_ACT_RELU) return fmaxf(g, 0.0f) * u;
    return fmaxf(g, 0.0f) * fmaxf(u, 0.0f);
}

/* W x with x quantised to 8 bits per 32-element segment (matvec-q8.cu): the quantisation (applying
 * RMSNorm with weight e.ng first when not NULL) into the XQ scratch, then the integer-dot kernel with R
 * rows per warp (1, 2 or 4; 0: by the height; the GLU epilogue e.act: pairs). Quantised weight types
 * only (pi_cuda_q8_type), cols a multiple of 32. */
int pi_cuda_matvec_q8(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, const float *d_x, const pi_mv_epi &e, int R);

/* x of `cols` columns quantised to 8 bits, as matvec-q8.cu lays it out in (a region of) the XQ
 * scratch of pi_cuda_xq_bytes(cols): the cols int8 values, then cols / 32 int4 meta. */
struct pi_xq {
    int8_t *qs;
    int4 *meta;
};
static inline pi_xq pi_xq_at(void *buf, int64_t cols)
{
    pi_xq x;
    x.qs = (int8_t *)buf;
    x.meta = (int4 *)(x.qs + cols);
    return x;
}

/* The same over an x already quantised (e.ng unused). */
int pi_cuda_matvec_q8_from(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, const pi_xq &x, const pi_mv_epi &e, int R);

/* pi_cuda_ffn_dense with both products in 8 bits and the activations quantised by the gate/up kernel
 * itself (matvec-q8.cu, k_glu_q8), where pi_cuda_ffn_dense_q8_ok: Q4_0 or Q8_0 gate/up pairs, both
 * products q8 by pi_cuda_q8_for. Same arguments as pi_cuda_ffn_dense; the
 * XQ scratch holds the quantised x and then the quantised activations (pi_cuda_xq_bytes of both). */
bool pi_cuda_ffn_dense_q8_ok(const pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down);
int pi_cuda_ffn_dense_q8(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down, int act,
                         const float *d_x, const float *d_norm_g, float eps, float *d_y, int accumulate);

/* Gate/up pairs of the hot FFN (matmul.cu): a (n_hot,) = act(gate_i . x, up_i . x) over gu (2 n_hot, d),
 * 0 for neurons the mask marks inactive. With d_norm_g, x is the residual h and x = RMSNorm(h) * g is
 * applied in the staging (pi_cuda_norm_fusable must hold). */
int pi_cuda_ffn_gu(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *gu, int act, const float *d_x, const uint8_t *d_mask,
                   const int32_t *d_ids, const float *d_norm_g, float eps, float *d_a);

/* ------------------------------------------------------------------ device decoders */

__device__ __forceinline__ uint4 pi_ld16(const void *p) { return __ldg((const uint4 *)p); }

__device__ __forceinline__ float pi_bf16_to_f32(uint32_t bits16) { return __uint_as_float(bits16 << 16); }

/* Byte i (0..11) of the three words w1, w2, w3, selected without a run-time register index (which
 * would move the words to local memory). */
__device__ __forceinline__ uint32_t pi_byte12(uint32_t w1, uint32_t w2, uint32_t w3, int i)
{
    uint32_t w = i < 4 ? w1 : (i < 8 ? w2 : w3);
    return (w >> (8 * (i & 3))) & 0xff;
}

/* Q4_K's 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes held in w1..w3 (ggml's
 * get_scale_min_k4, ggml-quants.c: j < 4 take the low 6 bits of bytes j and j + 4; j >= 4 combine the
 * nibbles of byte j + 4 with the top two bits of bytes j - 4 and j). */
__device__ __forceinline__ void pi_q4k_scale_min(uint32_t w1, uint32_t w2, uint32_t w3, int j, float *sc, float *m)
{
    if (j < 4) {
        *sc = (float)(pi_byte12(w1, w2, w3, j) & 63);
        *m = (float)(pi_byte12(w1, w2, w3, j + 4) & 63);
    } else {
        uint32_t b4 = pi_byte12(w1, w2, w3, j + 4);
        *sc = (float)((b4 & 0xF) | ((pi_byte12(w1, w2, w3, j - 4) >> 6) << 4));
        *m = (float)((b4 >> 4) | ((pi_byte12(w1, w2, w3, j) >> 6) << 4));
    }
}

/* Q3_K's d times the 6-bit scales (minus 32) of the 16-element halves 2 j and 2 j + 1 of segment j (0..7),
 * from the block's last 16 bytes sv (scales[12], then d): bytes 2 (j & 1) and 2 (j & 1) + 1 of word
 * j / 2 of ggml's unpacking (pi_k3_scales, kernels/cpu/quant-impl.h: the low nibbles of bytes 0..7 for
 * words 0 and 1, their high nibbles for 2 and 3, each with two bits of bytes 8..11 above them). */
__device__ __forceinline__ void pi_q3k_scales(const uint4 &sv, int j, float *s0, float *s1)
{
    const int k = j >> 1, b0 = 2 * (j & 1);
    const uint32_t base = (k & 1) ? sv.y : sv.x;
    const uint32_t wk = ((base >> (4 * (k >> 1))) & 0x0F0F0F0Fu) | (((sv.z >> (2 * k)) & 0x03030303u) << 4);
    const float d = __half2float(__ushort_as_half((unsigned short)(sv.w & 0xffff)));
    *s0 = d * (float)((int)((wk >> (8 * b0)) & 0xFF) - 32);
    *s1 = d * (float)((int)((wk >> (8 * b0 + 8)) & 0xFF) - 32);
}

/* Byte k (0..3) of w as an exact float without an int-to-float conversion (a quarter-rate instruction
 * on Hopper): the byte becomes the low mantissa bits of 2^23 (one PRMT), then 2^23 is subtracted. */
__device__ __forceinline__ float pi_b2f(uint32_t w, int k)
{
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7640u + (unsigned)k)) - 8388608.0f;
}



/* Byte k (0..3) of w, a value b below 128, as 0.5 + b / 256 exactly in one PRMT: the byte lands in bits
 * 16..23 under the byte 0x3F (exponent of 2^-1, b / 128 the top bits of the mantissa). */
__device__ __forceinline__ float pi_b2f_half(uint32_t w, int k)
{
    return __uint_as_float(__byte_perm(w, 0x3F000000u, 0x7054u | ((unsigned)k << 8)));
}

/* Sum of 16 products over the 4 bytes of each of the words w[0..3] times x[0..15]: with HALF false
 * the bytes as unsigned values b (pi_b2f); with HALF true each byte below 128 as 0.5 + b / 256
 * (pi_b2f_half: two instructions per element instead of three; sum b x = 256 (this) - 128 sum x, an
 * exact rescaling, and the cancellation costs about 5 of the 24 bits; the matvec tests bound the
 * error at 5e-5). */
template <bool HALF> __device__ __forceinline__ float pi_dot_bytes16(const uint32_t *w, const float *x)
{
    float a = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int k = 0; k < 4; k++) a = fmaf(HALF ? pi_b2f_half(w[j], k) : pi_b2f(w[j], k), x[4 * j + k], a);
    return a;
}

/* v = scale * q - off for the 16 byte values of lo (first half) and hi (second half). */
__device__ __forceinline__ void pi_u8_decode(const uint32_t *lo, const uint32_t *hi, float s0, float o0, float s1,
                                             float o1, float *v)
{
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[4 * j + k] = fmaf(s0, pi_b2f(lo[j], k), -o0);
            v[16 + 4 * j + k] = fmaf(s1, pi_b2f(hi[j], k), -o1);
        }
}

/* Decoding is split in two steps so that kernels can issue the loads of several segments before any
 * arithmetic (memory-level parallelism): pi_seg_load<T> fetches the raw bytes of segment s of row r
 * (16-byte vector loads only, plus one small scalar) into a pi_seg_raw held in registers, and
 * pi_seg_unpack_raw<T> turns them into two halves of 16 unsigned byte values with the affine map
 * value = scale * q - off of each half. The formulas are ggml's (dequantize_row_* in ggml-quants.c);
 * the unsigned forms fold the offsets:
 *   Q4_0: (q - 8) d            -> scale d, off 8 d       (q = nibble)
 *   Q8_0: s d, s = int8        -> scale d, off 128 d     (q = s ^ 0x80, unsigned)
 *   Q4_1: d q + m              -> scale d, off -m        (q = nibble)
 *   Q5_0: (q - 16) d           -> scale d, off 16 d      (q = nibble | bit of qh << 4)
 *   Q5_1: d q + m              -> scale d, off -m        (q as Q5_0)
 *   Q2_K: d sc q - dmin m      -> scale d sc, off dmin m per 16-element half (q 2 bits)
 *   Q3_K: (q - 4) d sc         -> scale d sc, off 4 d sc per half (q = 2 bits | hmask bit << 2)
 *   Q4_K: d sc q - dmin m      -> scale d sc, off dmin m
 *   Q5_K: d sc q - dmin m      -> scale d sc, off dmin m (q = nibble | fifth bit << 4)
 *   Q6_K: (q - 32) d sc_half   -> scale d sc, off 32 d sc per 16-element half */
struct pi_seg_raw {
    uint4 a, b, c, e, f; /* f: Q3_K's and Q5_K's second 16 bytes of high bits; unused fields cost no registers */
    uint32_t m, n;
};

struct pi_seg_u8 {
    uint32_t lo[4], hi[4];
    float s0, o0, s1, o1;
};

__device__ __forceinline__ float pi_h2f_bits(uint32_t bits) { return __half2float(__ushort_as_half((unsigned short)(bits & 0xffff))); }

/* Bits 0..3 of b as bit 4 of bytes 0..3 (Q5_0/Q5_1's fifth bits): the four shifted copies of the
 * nibble (shifts 0, 7, 14, 21) do not overlap, so the multiply carries nothing, and bit k of the
 * nibble lands on bit 8 k. */
__device__ __forceinline__ uint32_t pi_bits4_to_bytes(uint32_t b)
{
    return (((b & 0xFu) * 0x00204081u) & 0x01010101u) << 4;
}

template <int T> __device__ __forceinline__ void pi_seg_load(const pi_wdev &w, int64_t r, int64_t s, pi_seg_raw &x)
{
    if constexpr (T == PI_TYPE_F16 || T == PI_TYPE_BF16) {
        /* 32 halves or bfloats of the row, 64 bytes. */
        const uint8_t *p = w.q + ((size_t)r * (size_t)w.cols + (size_t)s * 32) * 2;
        x.a = pi_ld16(p), x.b = pi_ld16(p + 16), x.c = pi_ld16(p + 32), x.e = pi_ld16(p + 48);
    } else if constexpr (T == PI_TYPE_Q4_0) {
        /* ggml block_q4_0: d, 16 bytes of nibbles (element j < 16: low nibble of byte j; j >= 16: high
         * nibble of byte j - 16). Device layout: the 16 bytes, d in the scale plane. */
        const size_t b = (size_t)r * (size_t)w.nblk + (size_t)s;
        x.a = pi_ld16(w.q + b * 16);
        x.m = __half_as_ushort(w.d[b]);
    } else if constexpr (T == PI_TYPE_Q4_1) {
        /* ggml block_q4_1: d, m, the 16 bytes of nibbles as Q4_0's. Device: the 16 bytes; {d, m} in the
         * side plane. */
        const size_t b = (size_t)r * (size_t)w.nblk + (size_t)s;
        x.a = pi_ld16(w.q + b * 16);
        x.m = __ldg((const uint32_t *)w.d + b);
    } else if constexpr (T == PI_TYPE_Q5_0 || T == PI_TYPE_Q5_1) {
        /* ggml block_q5_0 {d, qh[4], qs[16]}, block_q5_1 {d, m, qh[4], qs[16]}: element j's fifth bit
         * is bit j of qh (a little-endian word). Device: the 16 bytes of nibbles; {d, 0 or m, qh} in
         * the side plane. */
        const size_t b = (size_t)r * (size_t)w.nblk + (size_t)s;
        x.a = pi_ld16(w.q + b * 16);
        const uint2 sd = __ldg((const uint2 *)w.d + b);
        x.m = sd.x, x.n = sd.y;
    } else if constexpr (T == PI_TYPE_Q8_0) {
        /* ggml block_q8_0: d, 32 int8. */
        const size_t b = (size_t)r * (size_t)w.nblk + (size_t)s;
        x.a = pi_ld16(w.q + b * 32), x.b = pi_ld16(w.q + b * 32 + 16);
        x.m = __half_as_ushort(w.d[b]);
    } else if constexpr (T == PI_TYPE_Q2_K) {
        /* ggml block_q2_K {scales[16], qs[64], d, dmin}: in half c (128 elements) and quarter k, element l
         * (0..31) is (qs[32 c + l] >> 2 k) & 3, with scales[2 j], scales[2 j + 1] (low nibble: scale,
         * high: min) for its two 16-element halves, j = 4 c + k. Device: the 80 bytes, {d, dmin} in the
         * side plane. */
        const size_t b = (size_t)r * (size_t)w.nblk + (size_t)(s >> 3);
        const int j = (int)(s & 7);
        const uint8_t *blk = w.q + b * 80;
        x.a = pi_ld16(blk + 16 + 32 * (j >> 2)), x.b = pi_ld16(blk + 32 + 32 * (j >> 2));
        x.m = __ldg((const uint32_t *)w.d + b);
        x.n = (uint32_t)__ldg((const unsigned short *)(blk + 2 * j)) | ((uint32_t)j << 16);
    } else if constexpr (T == PI_TYPE_Q3_K) {
        /* ggml block_q3_K {hmask[32], qs[64], scales[12], d} (112 bytes on the device, the last 2 zero):
         * element l of segment j = 4 c + k is ((qs[32 c + l] >> 2 k) & 3) | (bit j of hmask[l]) << 2,
         * minus 4, times d and the 6-bit scale (minus 32) of its 16-element half, 2 j or 2 j + 1. */
        const size_t b = (size_t)r * (size_t)w.nblk + (size_t)(s >> 3);
        const int j = (int)(s & 7);
        const uint8_t *blk = w.q + b * 112;
        x.a = pi_ld16(blk + 32 + 32 * (j >> 2)), x.b = pi_ld16(blk + 48 + 32 * (j >> 2));
        x.e = pi_ld16(blk), x.f = pi_ld16(blk + 16);
        x.c = pi_ld16(blk + 96);
        x.m = (uint32_t)j;
    } else if constexpr (T == PI_TYPE_Q4_K) {
        /* ggml block_q4_K (144 bytes, kept whole): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins,
         * 128 bytes of nibbles; sub-block j (32 elements) is the low (even j) or high (odd j) nibbles
         * of the 32 bytes at 32 (j / 2). */
        const size_t b = (size_t)r * (size_t)w.nblk + (size_t)(s >> 3);
        const int j = (int)(s & 7);
        const uint8_t *blk = w.q + b * 144;
        x.a = pi_ld16(blk);
        x.b = pi_ld16(blk + 16 + 32 * (j >> 1)), x.c = pi_ld16(blk + 32 + 32 * (j >> 1));
        x.m = (uint32_t)j;
    } else if constexpr (T == PI_TYPE_Q5_K) {
        /* ggml block_q5_K (176 bytes, kept whole): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins (as
         * Q4_K), qh[32] at 16, qs[128] at 48; sub-block j is the low (even j) or high (odd j) nibbles of
         * the 32 bytes at 48 + 32 (j / 2), element l's fifth bit is bit j of qh[l]. */
        const size_t b = (size_t)r * (size_t)w.nblk + (size_t)(s >> 3);
        const int j = (int)(s & 7);
        const uint8_t *blk = w.q + b * 176;
        x.a = pi_ld16(blk);
        x.e = pi_ld16(blk + 16), x.f = pi_ld16(blk + 32);
        x.b = pi_ld16(blk + 48 + 32 * (j >> 1)), x.c = pi_ld16(blk + 64 + 32 * (j >> 1));
        x.m = (uint32_t)j;
    } else {
        static_assert(T == PI_TYPE_Q6_K, "no decoder for this type");
        /* ggml block_q6_K: ql[128] low nibbles, qh[64] high 2 bits, int8 scales[16], f16 d (d in the
         * scale plane on the device). In half h (128 elements) and quarter k, element l (0..31) is
         * ((ql[64h + 32(k&1) + l] >> 4(k>>1)) & 0xF) | (((qh[32h + l] >> 2k) & 3) << 4), minus 32,
         * times d * scales[8h + 2k + l/16]. */
        const size_t b = (size_t)r * (size_t)w.nblk + (size_t)(s >> 3);
        const int j = (int)(s & 7), h = j >> 2, k = j & 3;
        const uint8_t *blk = w.q + b * 208;
        const uint8_t *ql = blk + 64 * h + 32 * (k & 1), *qh = blk + 128 + 32 * h;
        x.a = pi_ld16(ql), x.b = pi_ld16(ql + 16), x.c = pi_ld16(qh), x.e = pi_ld16(qh + 16);
        x.m = __half_as_ushort(w.d[b]) | ((uint32_t)__ldg((const unsigned short *)(blk + 192 + 8 * h + 2 * k)) << 16);
        x.n = (uint32_t)j;
    }
}

template <int T> __device__ __forceinline__ void pi_seg_unpack_raw(const pi_seg_raw &x, pi_seg_u8 &u)
{
    const uint32_t w0[4] = {x.a.x, x.a.y, x.a.z, x.a.w}, w1[4] = {x.b.x, x.b.y, x.b.z, x.b.w};
    if constexpr (T == PI_TYPE_Q4_0) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u.lo[j] = w0[j] & 0x0F0F0F0Fu;
            u.hi[j] = (w0[j] >> 4) & 0x0F0F0F0Fu;
        }
        u.s0 = u.s1 = pi_h2f_bits(x.m);
        u.o0 = u.o1 = 8.0f * u.s0;
    } else if constexpr (T == PI_TYPE_Q4_1) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u.lo[j] = w0[j] & 0x0F0F0F0Fu;
            u.hi[j] = (w0[j] >> 4) & 0x0F0F0F0Fu;
        }
        u.s0 = u.s1 = pi_h2f_bits(x.m);
        u.o0 = u.o1 = -pi_h2f_bits(x.m >> 16);
    } else if constexpr (T == PI_TYPE_Q5_0 || T == PI_TYPE_Q5_1) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u.lo[j] = (w0[j] & 0x0F0F0F0Fu) | pi_bits4_to_bytes(x.n >> (4 * j));
            u.hi[j] = ((w0[j] >> 4) & 0x0F0F0F0Fu) | pi_bits4_to_bytes(x.n >> (16 + 4 * j));
        }
        u.s0 = u.s1 = pi_h2f_bits(x.m);
        u.o0 = u.o1 = T == PI_TYPE_Q5_0 ? 16.0f * u.s0 : -pi_h2f_bits(x.m >> 16);
    } else if constexpr (T == PI_TYPE_Q8_0) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u.lo[j] = w0[j] ^ 0x80808080u;
            u.hi[j] = w1[j] ^ 0x80808080u;
        }
        u.s0 = u.s1 = pi_h2f_bits(x.m);
        u.o0 = u.o1 = 128.0f * u.s0;
    } else if constexpr (T == PI_TYPE_Q4_K) {
        const uint32_t w2[4] = {x.c.x, x.c.y, x.c.z, x.c.w};
        const int j = (int)x.m, shift = (j & 1) * 4;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u.lo[i] = (w1[i] >> shift) & 0x0F0F0F0Fu;
            u.hi[i] = (w2[i] >> shift) & 0x0F0F0F0Fu;
        }
        float sc, m;
        pi_q4k_scale_min(x.a.y, x.a.z, x.a.w, j, &sc, &m);
        u.s0 = u.s1 = pi_h2f_bits(x.a.x) * sc;
        u.o0 = u.o1 = pi_h2f_bits(x.a.x >> 16) * m;
    } else if constexpr (T == PI_TYPE_Q2_K) {
        const int j = (int)(x.n >> 16), sh = 2 * (j & 3);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u.lo[i] = (w0[i] >> sh) & 0x03030303u;
            u.hi[i] = (w1[i] >> sh) & 0x03030303u;
        }
        const float d = pi_h2f_bits(x.m), dm = pi_h2f_bits(x.m >> 16);
        u.s0 = d * (float)(x.n & 0xF), u.o0 = dm * (float)((x.n >> 4) & 0xF);
        u.s1 = d * (float)((x.n >> 8) & 0xF), u.o1 = dm * (float)((x.n >> 12) & 0xF);
    } else if constexpr (T == PI_TYPE_Q3_K) {
        const uint32_t h0[4] = {x.e.x, x.e.y, x.e.z, x.e.w}, h1[4] = {x.f.x, x.f.y, x.f.z, x.f.w};
        const int j = (int)x.m, sh = 2 * (j & 3);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u.lo[i] = ((w0[i] >> sh) & 0x03030303u) | (((h0[i] >> j) & 0x01010101u) << 2);
            u.hi[i] = ((w1[i] >> sh) & 0x03030303u) | (((h1[i] >> j) & 0x01010101u) << 2);
        }
        pi_q3k_scales(x.c, j, &u.s0, &u.s1);
        u.o0 = 4.0f * u.s0, u.o1 = 4.0f * u.s1;
    } else if constexpr (T == PI_TYPE_Q5_K) {
        const uint32_t w2[4] = {x.c.x, x.c.y, x.c.z, x.c.w};
        const uint32_t h0[4] = {x.e.x, x.e.y, x.e.z, x.e.w}, h1[4] = {x.f.x, x.f.y, x.f.z, x.f.w};
        const int j = (int)x.m, shift = (j & 1) * 4;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u.lo[i] = ((w1[i] >> shift) & 0x0F0F0F0Fu) | (((h0[i] >> j) & 0x01010101u) << 4);
            u.hi[i] = ((w2[i] >> shift) & 0x0F0F0F0Fu) | (((h1[i] >> j) & 0x01010101u) << 4);
        }
        float sc, m;
        pi_q4k_scale_min(x.a.y, x.a.z, x.a.w, j, &sc, &m);
        u.s0 = u.s1 = pi_h2f_bits(x.a.x) * sc;
        u.o0 = u.o1 = pi_h2f_bits(x.a.x >> 16) * m;
    } else {
        static_assert(T == PI_TYPE_Q6_K, "no unsigned unpacking for this type");
        const uint32_t h0[4] = {x.c.x, x.c.y, x.c.z, x.c.w}, h1[4] = {x.e.x, x.e.y, x.e.z, x.e.w};
        const int k = (int)x.n & 3, lsh = 4 * (k >> 1), hsh = 2 * k;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u.lo[i] = ((w0[i] >> lsh) & 0x0F0F0F0Fu) | (((h0[i] >> hsh) & 0x03030303u) << 4);
            u.hi[i] = ((w1[i] >> lsh) & 0x0F0F0F0Fu) | (((h1[i] >> hsh) & 0x03030303u) << 4);
        }
        const float d = pi_h2f_bits(x.m);
        u.s0 = d * (float)(int8_t)((x.m >> 16) & 0xff);
        u.s1 = d * (float)(int8_t)(x.m >> 24);
        u.o0 = 32.0f * u.s0;
        u.o1 = 32.0f * u.s1;
    }
}

/* Values of a loaded segment, v[0..31]. */
template <int T> __device__ __forceinline__ void pi_seg_values(const pi_seg_raw &x, float *v)
{
    if constexpr (T == PI_TYPE_F16) {
        const uint4 q[4] = {x.a, x.b, x.c, x.e};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t wd[4] = {q[k].x, q[k].y, q[k].z, q[k].w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 f = __half22float2(*(const __half2 *)&wd[j]);
                v[8 * k + 2 * j] = f.x;
                v[8 * k + 2 * j + 1] = f.y;
            }
        }
    } else if constexpr (T == PI_TYPE_BF16) {
        const uint4 q[4] = {x.a, x.b, x.c, x.e};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t wd[4] = {q[k].x, q[k].y, q[k].z, q[k].w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                v[8 * k + 2 * j] = pi_bf16_to_f32(wd[j] & 0xffff);
                v[8 * k + 2 * j + 1] = pi_bf16_to_f32(wd[j] >> 16);
            }
        }
    } else {
        pi_seg_u8 u;
        pi_seg_unpack_raw<T>(x, u);
        pi_u8_decode(u.lo, u.hi, u.s0, u.o0, u.s1, u.o1, v);
    }
}

/* Prefetch into L2 the weight bytes of rows [r0, r0 + R) (those that exist) that their first nseg
 * segments occupy, in 128-byte lines spread over the warp's lanes: issued before pi_pdl_wait(), they
 * stream from memory while the kernel before this one finishes, without holding registers. */
template <int T>
__device__ __forceinline__ void pi_rows_prefetch(const pi_wdev &w, int64_t r0, int R, int64_t nseg, int lane)
{
    /* the quant plane's bytes per block and 32-element segments per block (F16/BF16: a block is one
     * element, 32 per segment), and the side plane's bytes per block (0: none) */
    constexpr bool F = T == PI_TYPE_F16 || T == PI_TYPE_BF16;
    constexpr bool L32 = T == PI_TYPE_Q4_0 || T == PI_TYPE_Q4_1 || T == PI_TYPE_Q5_0 || T == PI_TYPE_Q5_1;
    constexpr int BQ = F                   ? 2
                       : L32               ? 16
                       : T == PI_TYPE_Q8_0 ? 32
                       : T == PI_TYPE_Q2_K ? 80
                       : T == PI_TYPE_Q3_K ? 112
                       : T == PI_TYPE_Q4_K ? 144
                       : T == PI_TYPE_Q5_K ? 176
                                           : 208;
    constexpr int SPB = L32 || T == PI_TYPE_Q8_0 || F ? 1 : 8;
    constexpr int SB = F || T == PI_TYPE_Q3_K || T == PI_TYPE_Q4_K || T == PI_TYPE_Q5_K ? 0
                       : T == PI_TYPE_Q4_1 || T == PI_TYPE_Q2_K                         ? 4
                       : T == PI_TYPE_Q5_0 || T == PI_TYPE_Q5_1                         ? 8
                                                                                        : 2;
    const int64_t nb = PI_MIN(w.nblk, F ? nseg * 32 : (nseg + SPB - 1) / SPB);
    for (int i = 0; i < R && r0 + i < w.rows; i++) {
        const uintptr_t q0 = (uintptr_t)(w.q + (size_t)(r0 + i) * (size_t)w.nblk * BQ), q1 = q0 + (uintptr_t)nb * BQ;
        for (uintptr_t a = (q0 & ~(uintptr_t)127) + (uintptr_t)lane * 128; a < q1; a += 32 * 128)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
        if constexpr (SB > 0) {
            const uintptr_t d0 = (uintptr_t)w.d + (uintptr_t)((size_t)(r0 + i) * (size_t)w.nblk * SB),
                            d1 = d0 + (uintptr_t)nb * SB;
            for (uintptr_t a = (d0 & ~(uintptr_t)127) + (uintptr_t)lane * 128; a < d1; a += 32 * 128)
                asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
        }
    }
}

/* Decode segment s (32 elements) of row r of w into v[0..31]. T is an enum pi_type. */
template <int T> __device__ __forceinline__ void pi_seg_decode(const pi_wdev &w, int64_t r, int64_t s, float *v)
{
    pi_seg_raw x;
    pi_seg_load<T>(w, r, s, x);
    pi_seg_values<T>(x, v);
}

/* Dot product of a loaded segment with x[0..31]; xs0 and xs1 are the sums of x[0..15] and x[16..31]
 * (shared by the rows of a warp), which fold each half's offset into one multiply. */
template <int T>
__device__ __forceinline__ float pi_seg_dot_raw(const pi_seg_raw &r, const float *x, float xs0, float xs1)
{
    if constexpr (T == PI_TYPE_F16 || T == PI_TYPE_BF16) {
        float v[32], a = 0.0f;
        pi_seg_values<T>(r, v);
#pragma unroll
        for (int j = 0; j < 32; j++) a = fmaf(v[j], x[j], a);
        return a;
    } else {
        pi_seg_u8 u;
        pi_seg_unpack_raw<T>(r, u);
        float d0, d1;
        if constexpr (T == PI_TYPE_Q8_0) { /* full bytes */
            d0 = pi_dot_bytes16<false>(u.lo, x), d1 = pi_dot_bytes16<false>(u.hi, x + 16);
        } else { /* values below 64: the two-instruction form */
            d0 = fmaf(256.0f, pi_dot_bytes16<true>(u.lo, x), -128.0f * xs0);
            d1 = fmaf(256.0f, pi_dot_bytes16<true>(u.hi, x + 16), -128.0f * xs1);
        }
        return u.s0 * d0 - u.o0 * xs0 + (u.s1 * d1 - u.o1 * xs1);
    }
}

template <int T>
__device__ __forceinline__ float pi_seg_dot(const pi_wdev &w, int64_t r, int64_t s, const float *x, float xs0, float xs1)
{
    pi_seg_raw raw;
    pi_seg_load<T>(w, r, s, raw);
    return pi_seg_dot_raw<T>(raw, x, xs0, xs1);
}

/* Whether type T's segments are its whole 32-element blocks (a few registers each: kernels keep more of
 * them in flight per lane). */
template <int T> __host__ __device__ constexpr bool pi_small_seg()
{
    return T == PI_TYPE_Q4_0 || T == PI_TYPE_Q4_1 || T == PI_TYPE_Q5_0 || T == PI_TYPE_Q5_1 || T == PI_TYPE_Q8_0;
}

/* Run F(std::integral_constant-like tag) for the weight's type; returns -PI_ERR_UNSUPPORTED for a type
 * without a device decoder. */
template <int T> struct pi_type_tag {
    static constexpr int value = T;
};

template <typename F> static inline int pi_dispatch_type(enum pi_type t, F &&f)
{
    switch (t) {
    case PI_TYPE_F16: return f(pi_type_tag<PI_TYPE_F16>());
    case PI_TYPE_BF16: return f(pi_type_tag<PI_TYPE_BF16>());
    case PI_TYPE_Q4_0: return f(pi_type_tag<PI_TYPE_Q4_0>());
    case PI_TYPE_Q4_1: return f(pi_type_tag<PI_TYPE_Q4_1>());
    case PI_TYPE_Q5_0: return f(pi_type_tag<PI_TYPE_Q5_0>());
    case PI_TYPE_Q5_1: return f(pi_type_tag<PI_TYPE_Q5_1>());
    case PI_TYPE_Q8_0: return f(pi_type_tag<PI_TYPE_Q8_0>());
    case PI_TYPE_Q2_K: return f(pi_type_tag<PI_TYPE_Q2_K>());
    case PI_TYPE_Q3_K: return f(pi_type_tag<PI_TYPE_Q3_K>());
    case PI_TYPE_Q4_K: return f(pi_type_tag<PI_TYPE_Q4_K>());
    case PI_TYPE_Q5_K: return f(pi_type_tag<PI_TYPE_Q5_K>());
    case PI_TYPE_Q6_K: return f(pi_type_tag<PI_TYPE_Q6_K>());
    default:
        pi_error("cuda: no device kernels for type %s", pi_type_name(t));
        return -PI_ERR_UNSUPPORTED;
    }
}

/* Warp-wide sum; every lane gets the result. */
__device__ __forceinline__ float pi_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The sum of v over a block of NT threads (NT / 32 warps), in every thread; red: NT / 32 floats of
 * shared memory. Every thread of the block must call it (it holds a barrier), once per red buffer
 * (ops.cu's pi_block_sum(v, sh) takes any block size and may be called again). */
template <int NT>
__device__ __forceinline__ float pi_block_sum(float v, float *red)
{
    v = pi_warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float tot = 0.0f;
#pragma unroll
    for (int k = 0; k < NT / 32; k++) tot += red[k];
    return tot;
}

/* Quantise the warp's 32 values (lane j holds v, element j of segment s) into qs[32 s ..] and meta[s]:
 * the 8-bit x of the q8 matvec (matvec-q8.cu: d = max |x| / 127, q = round-to-nearest-even(x / d), the
 * integer sums of q over each half). Every lane of the warp must call it. */
__device__ __forceinline__ void pi_q8_quant_warp(float v, int64_t s, int lane, int8_t *__restrict__ qs, int4 *__restrict__ meta)
{
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    /* a segment of values below ~4e-37 becomes zeros: 1 / d would overflow to inf */
    const float d0 = amax / 127.0f, d = d0 >= 1.17549435e-38f ? d0 : 0.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    const int q = __float2int_rn(v * id);
    qs[s * 32 + lane] = (int8_t)q;
    int h = q; /* the sum over this lane's 16-lane half */
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) h += __shfl_xor_sync(0xffffffffu, h, o);
    const int h1 = __shfl_sync(0xffffffffu, h, 16);
    if (lane == 0) meta[s] = make_int4(__float_as_int(d), h, h1, 0);
}


__device__ __forceinline__ float pi_warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif
