/*
 * kernels/cuda/cuda.h - the C interface of the CUDA side (the .cu files of kernels/cuda/), used by the GPU worker's
 * cuda backend. Only built when configure found nvcc and cuBLAS (PI_HAVE_CUDA). Every function checks
 * every CUDA/cuBLAS call and returns 0 or a negative enum pi_err, logging the failed call once.
 *
 * Conventions. A context (pi_cuda_ctx_t) owns one device, a compute stream, a copy stream, a cuBLAS
 * handle and a VRAM budget: every device byte the backend holds comes from pi_cuda_alloc and is counted
 * against the budget (the cuBLAS workspace and the kernels' scratch included). Pointers named `d_*`
 * below are device pointers from pi_cuda_alloc; every kernel entry point only enqueues work on the
 * context's compute stream (call pi_cuda_sync to wait), so host buffers are never touched by kernels.
 * Activations are f32, row-major: a batch of T vectors of n elements is (T, n). A device error that
 * poisons the context (a sticky error) is reported by the next call as -PI_ERR_DEVICE; the worker then
 * ends (crash-only) and the coordinator's supervision takes over.
 */
#ifndef PI_KERNELS_CUDA_H
#define PI_KERNELS_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda/plan.h" /* the kernels' memory: weight bytes, scratch sizes (host C) */

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices visible (>= 0), or a negative enum pi_err when the driver cannot be used
 * (no driver, no device node): a machine without a GPU answers -PI_ERR_DEVICE, not a crash. */
int pi_cuda_device_count(void);

/* Describe device dev ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB, 132 SMs") into buf. 0 or -PI_ERR_*. */
int pi_cuda_device_describe(int dev, char *buf, size_t len);

/* ------------------------------------------------------------------ context and memory */

typedef struct pi_cuda_ctx pi_cuda_ctx_t;

/* How a context's automatic products take x (struct pi_cuda_opts.x): AUTO quantises it to 8 bits for
 * quantised weights of at least 12 Mi elements (pi_cuda_q8_for), F32 never, Q8 for every quantised
 * weight (tests: the q8 paths on small shapes). The values are those of lib/conf.h's enum
 * pi_tune_cuda_matvec. */
enum pi_cuda_x { PI_CUDA_X_AUTO = 0, PI_CUDA_X_F32 = 1, PI_CUDA_X_Q8 = 2 };

/* A context's choices, fixed at creation; all zero is the default. */
struct pi_cuda_opts {
    int x;            /* enum pi_cuda_x */
    bool no_pdl;      /* tests: launch without programmatic dependent launch (cuda-impl.h, DESIGN note) */
    bool att_unfused; /* tests: pi_cuda_attention_dec in three launches, as beyond PI_CUDA_ATT_CNT heads */
    bool no_mmq;      /* tests, benchmarks: batched products through the f16 tiles and cuBLAS only */
};

/* Open device dev with a budget of `budget` bytes for everything pi_cuda_alloc hands out (0: the
 * device's free memory at creation, less 256 MiB) and the choices o (NULL: the defaults). The CUDA
 * context and cuBLAS handle themselves are not budgeted; their size is measured (cudaMemGetInfo
 * before/after) and logged. The cuBLAS workspace (32 MiB) is allocated from the budget. Returns the
 * context, or NULL (error logged; also for an o->x outside enum pi_cuda_x). */
pi_cuda_ctx_t *pi_cuda_ctx_new(int dev, size_t budget, const struct pi_cuda_opts *o);

/* Free every allocation still held, the handle and the streams. Accepts NULL; NULLs *ctx. */
void pi_cuda_ctx_destroy(pi_cuda_ctx_t **ctx);

/* Bytes the budget allows, bytes held now, the largest amount held so far, and the unbudgeted device
 * memory the CUDA context and cuBLAS took at creation. Any pointer may be NULL. */
void pi_cuda_ctx_usage(const pi_cuda_ctx_t *ctx, size_t *budget, size_t *used, size_t *peak,
                       size_t *overhead);

/* The compute and copy streams (cudaStream_t, as void * so that C callers need no CUDA headers). */
void *pi_cuda_ctx_stream(pi_cuda_ctx_t *ctx);
void *pi_cuda_ctx_copy_stream(pi_cuda_ctx_t *ctx);

/* Allocate `bytes` (> 0) of device memory counted against the budget. Counted bytes are rounded up to
 * 256 (cudaMalloc's alignment). Returns 0 and *ptr, or -PI_ERR_NOMEM (logged with the request, the
 * bytes in use and the budget) when the budget would be exceeded or the device has no memory left. */
int pi_cuda_alloc(pi_cuda_ctx_t *ctx, size_t bytes, void **ptr);

/* Free an allocation of ctx (NULL is a no-op). Waits for the device (cudaFree does). -PI_ERR_INVAL for a
 * pointer ctx did not hand out. */
int pi_cuda_free(pi_cuda_ctx_t *ctx, void *ptr);

/* Copy bytes host -> device / device -> host on the compute stream and wait for it. */
int pi_cuda_upload(pi_cuda_ctx_t *ctx, void *d_dst, const void *src, size_t bytes);
int pi_cuda_download(pi_cuda_ctx_t *ctx, void *dst, const void *d_src, size_t bytes);

/* The download queued on the compute stream without the wait: dst holds the bytes once a later wait
 * for that stream returns (pi_cuda_download, pi_cuda_sync). dst page-locked (cudaHostRegister) for the
 * copy to overlap the host; pageable memory makes the copy synchronous, as the runtime does. */
int pi_cuda_download_async(pi_cuda_ctx_t *ctx, void *dst, const void *d_src, size_t bytes);

/* Fill bytes of device memory with the byte value (tests poison outputs with 0xff = NaN). */
int pi_cuda_memset(pi_cuda_ctx_t *ctx, void *d_dst, int value, size_t bytes);

/* Device-to-device copy of bytes (a multiple of 16, both pointers 16-byte aligned) by a kernel with
 * 16-byte loads and stores; the benchmarks use it to measure the device's copy bandwidth. */
int pi_cuda_copy(pi_cuda_ctx_t *ctx, void *d_dst, const void *d_src, size_t bytes);

/* The device's free and total memory now (cudaMemGetInfo), for tests of the budget. */
int pi_cuda_mem_info(pi_cuda_ctx_t *ctx, size_t *free_bytes, size_t *total_bytes);

/* Wait for everything enqueued on the compute stream; reports a sticky device error. */
int pi_cuda_sync(pi_cuda_ctx_t *ctx);

/* ------------------------------------------------------------------ weights */

typedef struct pi_cuda_weight pi_cuda_weight_t;

/* Upload a row-major weight W (rows, cols) in ggml's block layout of type (an enum pi_type: F16, BF16,
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K), rows of pi_type_row_bytes(type, cols) bytes each,
 * contiguous. Stored on the device in the layout described in kernels/cuda/cuda-impl.h (same values,
 * 16-byte aligned quant planes). cols must be a multiple of 32 (256 for the K-quants). Returns 0 and *out, or
 * -PI_ERR_UNSUPPORTED (type), -PI_ERR_INVAL (shape), -PI_ERR_NOMEM (budget), -PI_ERR_DEVICE. */
int pi_cuda_weight_upload(pi_cuda_ctx_t *ctx, int type, int64_t rows, int64_t cols, const void *src,
                          pi_cuda_weight_t **out);

/* A view of rows [r0, r0 + nr) of w as a weight of its own (same device memory, no device bytes held
 * or counted): every product takes it. Destroy it with pi_cuda_weight_destroy before w. 0, or
 * -PI_ERR_RANGE (rows outside w), -PI_ERR_NOMEM (host). */
int pi_cuda_weight_view(const pi_cuda_weight_t *w, int64_t r0, int64_t nr, pi_cuda_weight_t **out);

/* A weight (rows, cols) of type over device memory the caller owns: d_mem, 256-byte aligned, of
 * pi_cuda_weight_bytes_for bytes holding the weight's device image (pi_cuda_weight_pack_rows, copied
 * there by the caller). Like a view it holds and counts no device bytes; destroy it before d_mem is
 * reused for another image. 0, or a negative pi_err as pi_cuda_weight_planes, -PI_ERR_NOMEM (host). */
int pi_cuda_weight_wrap(int type, int64_t rows, int64_t cols, void *d_mem, pi_cuda_weight_t **out);

/* Free a weight (NULL ok); NULLs *w. */
void pi_cuda_weight_destroy(pi_cuda_ctx_t *ctx, pi_cuda_weight_t **w);

/* Device bytes the weight holds (counted against the budget); before uploading, the bytes a shape
 * needs are pi_cuda_weight_bytes_for (kernels/cuda/plan.h). */
size_t pi_cuda_weight_bytes(const pi_cuda_weight_t *w);

/* ------------------------------------------------------------------ matrix products */

/* y (rows,) = W (rows, cols) @ x (cols,): one warp per group of rows, 16-byte loads, f32 sums. The
 * kernel: for quantised weights of at least 12 Mi elements, x quantised to 8 bits and integer dots
 * (pi_cuda_q8_for, matvec-q8.cu); otherwise the staged one below where x fits its shared memory, with
 * 4, 2 or 1 rows per warp by the matrix's height (enough blocks for every SM; pi_cuda_ffn_hot's
 * gate/up pairs: PI_CUDA_MV_STAGED with the activation), else the register-x kernel (the automatic R
 * below). The context's x choice (struct pi_cuda_opts) changes which products quantise x: F32 none,
 * Q8 every quantised one. */
int pi_cuda_matvec(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, const float *d_x, float *d_y);

/* pi_cuda_matvec with a chosen kernel instead of the automatic choice (tests, benchmarks): R = 1, 2 or 4
 * rows per warp with x read from the cache, or PI_CUDA_MV_STAGED (x staged in shared memory, 2 rows per
 * warp, 4 segments per lane in flight for Q4_0/Q8_0, 2 for the others) or PI_CUDA_MV_STAGED_TALL (4 rows
 * per warp, half the segments). */
#define PI_CUDA_MV_STAGED 8
#define PI_CUDA_MV_STAGED_TALL 9
#define PI_CUDA_MV_STAGED_NARROW 10 /* 1 row per warp, 8 segments per lane in flight (4 for the others) */
#define PI_CUDA_MV_Q8 12            /* x quantised to 8 bits, integer dot (matvec-q8.cu), rows per warp by height */
#define PI_CUDA_MV_Q8_1 13          /* the same with 1, 2 or 4 rows per warp */
#define PI_CUDA_MV_Q8_2 14
#define PI_CUDA_MV_Q8_4 15
#define PI_CUDA_MV_ADD 0x100        /* or-ed into R: y += W x (the epilogue of pi_cuda_matvec_add) */
int pi_cuda_matvec_r(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, const float *d_x, float *d_y, int R);

/* Whether the q8 matvec (PI_CUDA_MV_Q8*) takes weights of this type (every quantised type of
 * pi_cuda_weight_upload); F16 and BF16 run the float kernels under any x choice. */
bool pi_cuda_q8_type(int type);

/* Whether ctx's automatic products (pi_cuda_matvec, _add, _norm, the gate/up pairs) of a (rows, cols)
 * weight of this type quantise x to 8 bits: PI_CUDA_X_AUTO (the default) for quantised weights of at
 * least 12 Mi elements (the 7B-class matrices; smaller ones keep x in float, where the quantisation's
 * launch costs more than it saves), PI_CUDA_X_Q8 for every quantised weight, never with PI_CUDA_X_F32
 * (auto's float kernels only). */
bool pi_cuda_q8_for(const pi_cuda_ctx_t *ctx, int type, int64_t rows, int64_t cols);

/* (The XQ scratch a q8 product of `cols` columns quantises x into is pi_cuda_xq_bytes, 48 bytes per 32
 * columns, kernels/cuda/plan.h: the backend's VRAM plan counts the widest.) */

/* Grow the XQ scratch to `bytes` now (the backend's start, so that serving never allocates): the
 * widest product's pi_cuda_xq_bytes, plus pi_cuda_xq_bytes(n_ff) where a dense FFN quantises its
 * activations while x is still held (pi_cuda_ffn_dense). 0, or -PI_ERR_NOMEM past the budget. */
int pi_cuda_xq_reserve(pi_cuda_ctx_t *ctx, size_t bytes);

/* Y (T, rows) = X (T, cols) @ W^T. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q3_K, Q4_K, Q5_K and Q6_K weights (the
 * integer GEMM's types, pi_cuda_mmq_built) in batches of up to
 * PI_CUDA_MMQ_MAX_T tokens, where the context has it (pi_cuda_mmq_for): pi_cuda_mmq below. Otherwise X is converted to f16, W is dequantised to f16 in row tiles (F16 is used
 * in place) and each tile goes through cublasGemmEx (f16 inputs, f32 accumulation, tensor cores).
 * Scratch: pi_cuda_gemm_x16_bytes(T, cols) plus, for the f16 path, a tile of at most 64 MiB
 * (pi_cuda_gemm_tile_bytes), from the budget. */
int pi_cuda_gemm(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y);

/* Grow the GEMMs' two scratch slots now (the backend's start, so that serving never allocates): the input
 * (pi_cuda_gemm_x16_bytes of the widest input at the largest batch) and the dequantised tile (the
 * largest pi_cuda_gemm_tile_bytes; 0: none). Each slot is asked for its largest size first, so what it
 * holds is what the VRAM plan counts. 0, or -PI_ERR_NOMEM past the budget. */
int pi_cuda_gemm_reserve(pi_cuda_ctx_t *ctx, size_t x16_bytes, size_t tile_bytes);

/* Whether ctx's batched products of a weight of `type` take pi_cuda_mmq: pi_cuda_mmq_built(type)
 * (kernels/cuda/plan.h) and not turned off by pi_cuda_opts.no_mmq. */
bool pi_cuda_mmq_for(const pi_cuda_ctx_t *ctx, int type);

/* Y (T, rows) = X (T, cols) @ W^T (add: Y += ...) on the quantised blocks (kernels/cuda/mmq.cu): X
 * quantised to 8 bits per token and 32 columns (the q8 matvec's rule) into the X16 scratch, integer
 * tensor-core products per block, float accumulation in block order. A token's row of Y is the same
 * bits in any batch. T >= 1; -PI_ERR_UNSUPPORTED where !pi_cuda_mmq_for. */
int pi_cuda_mmq(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y, int add);

/* Either of the above: matvec for T <= 2 (per token), gemm beyond. Same shapes as pi_cuda_gemm. */
int pi_cuda_matmul(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y);

/* y = W @ (RMSNorm(h) * g) with the norm applied while the staged kernel copies h to shared memory
 * (no separate RMSNorm launch; pi_cuda_rmsnorm's formula, eps inside the square root). Needs the
 * staged kernel: pi_cuda_norm_fusable(ctx, w) (x fits the shared memory, cols a multiple of 4) or the
 * q8 product, whose quantiser applies the norm; -PI_ERR_UNSUPPORTED otherwise. */
bool pi_cuda_norm_fusable(const pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w);
int pi_cuda_matvec_norm(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, const float *d_h, const float *d_g, float eps,
                        float *d_y);

/* y += W @ x and Y += X @ W^T: the products above added to what y holds (the residual stream), in the
 * matvec's epilogue or as the GEMM's beta = 1, which saves a separate add of the result. */
int pi_cuda_matvec_add(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, const float *d_x, float *d_y);
int pi_cuda_matmul_add(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y);

/* out (n_ids, cols) f32 = rows ids[0..n_ids) of W (token embeddings); d_ids is int32 on the device,
 * each id in [0, rows) (checked on the device: an out-of-range id gives a row of NaN). */
int pi_cuda_get_rows(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, int64_t n_ids, const int32_t *d_ids,
                     float *d_out);

/* out (rows, cols) f16 = W dequantised (the GEMM's tile step, exposed for tests). */
int pi_cuda_dequant_f16(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *w, void *d_out);

/* ------------------------------------------------------------------ element-wise and attention */

/* y (T, n) = x / sqrt(mean(x^2) + eps) * g (n,), per row. y may equal x. */
int pi_cuda_rmsnorm(pi_cuda_ctx_t *ctx, int64_t T, int64_t n, const float *d_x, const float *d_g, float eps,
                    float *d_y);

/* In place RoPE, GGUF llama convention (adjacent pairs): for token t, head h and pair i < n_rot / 2,
 * (x[2i], x[2i+1]) of x (T, n_head, head_dim) rotates by pos[t] * freq_scale * base^(-2i / n_rot).
 * Dimensions >= n_rot are left alone. d_pos is int32 (T,). */
int pi_cuda_rope(pi_cuda_ctx_t *ctx, int64_t T, int n_head, int head_dim, int n_rot, const int32_t *d_pos,
                 float base, float freq_scale, float *d_x);

/* Store T new keys and values, k and v (T, n_head_kv * head_dim) f32, as f16 into positions
 * [pos0, pos0 + T) of the caches k_cache, v_cache (n_ctx, n_head_kv, head_dim) f16. */
int pi_cuda_kv_store(pi_cuda_ctx_t *ctx, int n_head_kv, int head_dim, int64_t pos0, int64_t T,
                     const float *d_k, const float *d_v, void *d_k_cache, void *d_v_cache);

/* pi_cuda_rope of q (T, n_head, head_dim) and of k (T, n_head_kv, head_dim), then pi_cuda_kv_store of
 * the rotated k and of v at positions [pos0, pos0 + T), in one launch (decode's step is a handful of
 * small kernels; each launch costs more than its work). Same results, bit for bit, as the three calls;
 * head_dim must be even and the caches 4-byte aligned (v is stored as pairs of halves). k is rotated
 * in place; v is only read. d_pos NULL: the rotation positions are pos0 .. pos0 + T - 1. */
int pi_cuda_rope_kv(pi_cuda_ctx_t *ctx, int64_t T, int n_head, int n_head_kv, int head_dim, int n_rot,
                    const int32_t *d_pos, float base, float freq_scale, float *d_q, float *d_k, const float *d_v,
                    int64_t pos0, void *d_k_cache, void *d_v_cache);

/* Causal attention of T queries q (T, n_head, head_dim) f32 at positions pos0 .. pos0 + T - 1 over the
 * f16 caches (positions 0 .. pos0 + t inclusive for query t), grouped-query: query head h reads kv
 * head h / (n_head / n_head_kv). out (T, n_head, head_dim) f32; scale 1/sqrt(head_dim). head_dim 32,
 * 64, 128 or 256. Split over positions (flash-decoding) with an online softmax; the
 * split partials live in the context's scratch. */
int pi_cuda_attention(pi_cuda_ctx_t *ctx, int64_t T, int n_head, int n_head_kv, int head_dim, int64_t pos0,
                      const float *d_q, const void *d_k_cache, const void *d_v_cache, float *d_out);

/* Decode attention of n tokens of different sequences (or of one sequence's non-consecutive positions),
 * one query each, in three launches whatever n: for each token its k and v rows (d_k, d_v: (n,
 * n_head_kv, head_dim) f32, already rotated) stored as f16 at its position, then causal grouped-query
 * attention of its q row (d_q: (n, n_head, head_dim)) over positions 0 .. its position of its own
 * caches into d_out (n, n_head, head_dim). The caches of the token's sequence start d_off[t] halves
 * after d_k_cache / d_v_cache ((n_ctx, n_head_kv, head_dim) f16 each). d_tab (n, 4) int32 and
 * max_nsplit, part_bytes come from pi_cuda_att_seqs_plan over the tokens' positions. Each token's output
 * is the same bits as pi_cuda_attention's for that token alone (T = 1 at its position). head_dim 32,
 * 64, 128 or 256. */
int pi_cuda_attention_seqs(pi_cuda_ctx_t *ctx, int n, int max_nsplit, size_t part_bytes, int n_head, int n_head_kv,
                           int head_dim, const int32_t *d_tab, const int64_t *d_off, const float *d_q, const float *d_k,
                           const float *d_v, void *d_k_cache, void *d_v_cache, float *d_out);

/* The table of pi_cuda_attention_seqs for n tokens at positions pos (host arrays): tab (n, 4) int32 =
 * {position, split length, splits, first partial} per token, the splits pi_cuda_attention chooses for
 * one query there; the largest split count and the partials' bytes. 0, or -PI_ERR_INVAL / -PI_ERR_RANGE
 * (a negative position; past the grid's limits). */
int pi_cuda_att_seqs_plan(pi_cuda_ctx_t *ctx, int n, int n_head, int head_dim, const int32_t *pos, int32_t *tab,
                          int *max_nsplit, size_t *part_bytes);

/* Bytes the attention's scratch slot holds now (its partials never reallocate below this). */
size_t pi_cuda_att_scratch_held(const pi_cuda_ctx_t *ctx);

/* One decode step's attention for one sequence, the query at position pos: RoPE of q (n_head,
 * head_dim) and k (n_head_kv, head_dim) at pos as pi_cuda_rope does it, k and v (n_head_kv, head_dim)
 * stored as f16 at position pos of the caches (n_ctx, n_head_kv, head_dim), causal grouped-query
 * attention over positions 0 .. pos into out (n_head, head_dim) f32 as pi_cuda_attention computes it,
 * then, unless o is NULL, h (o->rows) += o @ out. One launch for all but the projection
 * (k_attn_dec in ops.cu; more than 1024 heads, or a context made with att_unfused: pi_cuda_rope_kv,
 * then pi_cuda_attention's two launches). Where o takes the q8 matvec (pi_cuda_q8_for), the
 * attention quantises out for the projection itself. q and k are scratch:
 * afterwards they hold the rotated or the original values. v is only read. o->cols must be
 * n_head * head_dim; head_dim 32, 64, 128 or 256; n_rot even, at most head_dim. */
int pi_cuda_attention_dec(pi_cuda_ctx_t *ctx, int n_head, int n_head_kv, int head_dim, int n_rot, int64_t pos,
                          float base, float freq_scale, float *d_q, float *d_k, const float *d_v, void *d_k_cache,
                          void *d_v_cache, float *d_out, const pi_cuda_weight_t *o, float *d_h);

/* x (rows, n) softmax per row, in place. */
int pi_cuda_softmax(pi_cuda_ctx_t *ctx, int64_t rows, int64_t n, float *d_x);

/* FFN activations; values equal those of model/model.h's enum pi_ffn_act. */
enum pi_cuda_act {
    PI_CUDA_ACT_SILU = 1,  /* silu(g) * u */
    PI_CUDA_ACT_RELU = 2,  /* relu(g) * u */
    PI_CUDA_ACT_DRELU = 3, /* relu(g) * relu(u) */
};

/* y (n,) = act(x) element-wise: silu or relu (DRELU acts as RELU here). y may equal x. */
int pi_cuda_act(pi_cuda_ctx_t *ctx, int act, int64_t n, const float *d_x, float *d_y);

/* out (n,) = the gated activation of g and u (see enum pi_cuda_act). out may alias g or u. */
int pi_cuda_glu(pi_cuda_ctx_t *ctx, int act, int64_t n, const float *d_g, const float *d_u, float *d_out);

/* y (n,) += sum over p < n_parts of parts (n_parts, n): adds the CPU workers' partial sums (copied to
 * the device) and, with y the residual, closes the layer. */
int pi_cuda_merge(pi_cuda_ctx_t *ctx, int64_t n, int n_parts, const float *d_parts, float *d_y);

/* ------------------------------------------------------------------ hot neurons */

/* The GPU's packed copy of its hot neurons of one layer:
 *   gu   (2 * n_hot, n_embd): row 2i is hot neuron i's gate row, row 2i + 1 its up row (weight type);
 *   down (n_hot, n_embd): row i is hot neuron i's down column (ffn_down_t's row, in its own type: the
 *        file's when it has PowerInfer's transposed copy, else as model/model.c packs it, f16 by default;
 *        the types differ in general, which is why it is a second matrix).
 * y (n_embd,) = sum over active hot neurons i of act(gate_i . x, up_i . x) * down_i (y overwritten).
 * Neuron i is skipped (no weight read) when d_mask is not NULL and d_mask[ids ? ids[i] : i] == 0;
 * d_mask is uint8 over the layer's n_ff neurons, d_ids int32 (n_hot,) maps hot index -> neuron id
 * (NULL: identity). The activations (n_hot floats) live in the context's scratch. */
int pi_cuda_ffn_hot(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down, int act,
                    const float *d_x, const uint8_t *d_mask, const int32_t *d_ids, float *d_y);

/* The FFN of a layer whose neurons are all on the device, in id order: a (n_ff,) = act(gate . x, up . x)
 * over the packed pairs gu (2 n_ff, d) as in pi_cuda_ffn_hot, then y (d,) = down (d, n_ff) @ a with the
 * file's ffn_down (no transposed copy) through pi_cuda_matvec. y is written, or with accumulate != 0
 * added to (the residual stream directly). With d_norm_g not NULL, x is the residual h and the gate/up
 * product applies RMSNorm(h) * g itself (pi_cuda_matvec_norm's conditions; y may then be h, which is
 * read in full before the down product adds to it). Scratch: n_ff floats (the slot pi_cuda_ffn_hot uses). */
int pi_cuda_ffn_dense(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down, int act,
                      const float *d_x, const float *d_norm_g, float eps, float *d_y, int accumulate);

/* ------------------------------------------------------------------ sparse FFN (sparse.cu) */

/* The mask of a layer's predictor, per row t < n of the batch: words (n, ceil(n_ff / 64)) uint64, bit j
 * of row t set iff logits (n, n_ff)[t][j] >= thr (every j < n_ff when d_logits is NULL: a layer
 * without predictor), bits past n_ff clear; on[t] = the set bits of row t. With n_hot > 0 also the
 * compacted list of the GPU's predicted-active hot neurons: list (n, n_hot) row t holds the hot indices
 * i whose neuron (ids[i], ids NULL: i) is set, in no particular order, n_list[t] of them; and for rows t
 * < a0_rows, a0 (a0_rows, n_hot)[t][i] = 0 for every other i (the activations the list kernels leave
 * alone). One block per row; ceil(n_ff / 64) words must fit 48 KiB (n_ff <= 393216). */
int pi_cuda_pred_mask(pi_cuda_ctx_t *ctx, int64_t n, int64_t n_ff, const float *d_logits, float thr, uint64_t *d_words,
                      int32_t *d_on, int64_t n_hot, const int32_t *d_ids, int32_t *d_list, int32_t *d_n_list,
                      float *d_a0, int64_t a0_rows);

/* a (n, n_hot) = 0 where hot neuron i's neuron (ids[i], or i) is clear in row t of words (n, mw): a
 * batch's activations computed densely (GEMM) restricted to the predicted-active neurons. */
int pi_cuda_mask_act(pi_cuda_ctx_t *ctx, int64_t n, int64_t n_hot, const int32_t *d_ids, const uint64_t *d_words,
                     int64_t mw, float *d_a);

/* The activation thresholds (issue 18, doc/thresholds.md) of n rows of n_hot hot neurons: pair (t, i) is
 * skipped when pi_ffn_gate_skip(act, gmin[i], g) of kernels/cpu/ops.h holds for its gate product g =
 * g[t g_row + i g_el] (the same rule, with the device's expf: where |silu(g)| equals gmin[i] to the last
 * bits, the host's libm expf may decide otherwise); its activation a[t a_row + i] is then set to 0
 * (nothing else of a is written). With list (n, n_hot) and n_list (n), row t of list gets the kept
 * indices in ascending order and n_list[t] their count: the list pi_cuda_ffn_gu_part (UP) and
 * pi_cuda_ffn_down_list read. skipped (optional, one uint64 on the device) += the pairs skipped, by integer
 * atomics (exact, the same every run; no float atomics in this kernel, though the down list's sums use
 * them). g and a may be the same array (the per-row path: the gate products in a, strides n_hot and 1); a
 * batch's GEMM output of gate/up pairs is g_row 2 n_hot, g_el 2 with a its own (n, n_hot) activations. One
 * block per row; a_row >= n_hot. */
int pi_cuda_gate_list(pi_cuda_ctx_t *ctx, int64_t n, int64_t n_hot, int act, const float *d_gmin, const float *d_g,
                      int64_t g_row, int64_t g_el, float *d_a, int64_t a_row, int32_t *d_list, int32_t *d_n_list,
                      uint64_t *d_skipped);

/* One row's hot FFN over a list of hot indices (pi_cuda_pred_mask's, *d_cnt entries of d_list, read on
 * the device): a[i] = act(gate_i . x, up_i . x) for listed i (gu as pi_cuda_ffn_hot's; other entries of
 * a (n_hot) untouched: zero them first), then y (d,) = sum over listed i with a[i] != 0 of a[i] down_i
 * (y overwritten). x is staged in shared memory (n_embd + 32 at most the staging's limit). Every weight
 * type of pi_cuda_weight_upload, for gu and down independently. */
int pi_cuda_ffn_gu_list(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *gu, int act, const float *d_x, const int32_t *d_list,
                        const int32_t *d_cnt, float *d_a);
/* pi_cuda_ffn_gu_list by parts, for the gate-first order of the activation thresholds (issue 18,
 * doc/thresholds.md): part BOTH is pi_cuda_ffn_gu_list; GATE writes a[i] = gate_i . x only (the up rows
 * unread); UP writes a[i] = act(a[i], up_i . x), a[i] holding the gate product (the gate rows unread).
 * d_list and d_cnt both NULL: every hot neuron (i < n_hot), e.g. GATE over the whole hot set. The same
 * dot products in the same order as BOTH, so GATE then UP over a list gives BOTH's activations. */
enum pi_cuda_gu_part { PI_CUDA_GU_BOTH = 0, PI_CUDA_GU_GATE = 1, PI_CUDA_GU_UP = 2 };
int pi_cuda_ffn_gu_part(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *gu, int part, int act, const float *d_x,
                        const int32_t *d_list, const int32_t *d_cnt, float *d_a);
int pi_cuda_ffn_down_list(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *down, const int32_t *d_list, const int32_t *d_cnt,
                          const float *d_a, float *d_y);
int pi_cuda_ffn_hot_list(pi_cuda_ctx_t *ctx, const pi_cuda_weight_t *gu, const pi_cuda_weight_t *down, int act,
                         const float *d_x, const int32_t *d_list, const int32_t *d_cnt, float *d_a, float *d_y);

#ifdef __cplusplus
}
#endif

#endif
