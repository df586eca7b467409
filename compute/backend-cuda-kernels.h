/*
 * compute/backend-cuda-kernels.h - the few device pieces the cuda backend (compute/backend-cuda.c)
 * needs beyond kernels/cuda/cuda.h: the batched hot-neuron FFN of prompt batches (gate/up pairs from a
 * GEMM, their activation, and the down product over the dequantised down rows), an attention kernel for
 * head sizes the flash-decoding kernel does not take (e.g. 16), and the host-memory side of the
 * exchange (pinned staging, cudaHostRegister of the exchange slot, the copy stream's event). Built by
 * nvcc; a C interface so that backend-cuda.c needs no CUDA headers. Every function checks every CUDA
 * call and returns 0 or a negative enum pi_err (logged); streams and events are passed as void *.
 * Device pointers (d_*) come from pi_cuda_alloc; kernels are only enqueued on the given stream.
 */
#ifndef PI_COMPUTE_BACKEND_CUDA_KERNELS_H
#define PI_COMPUTE_BACKEND_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* a (T, n_hot) = act(g[t, 2i], g[t, 2i + 1]) over g (T, 2 n_hot), the GEMM output of the packed
 * gate/up rows; act is an enum pi_cuda_act. */
int pi_cbk_glu_pairs(void *stream, int act, int64_t T, int64_t n_hot, const float *d_g, float *d_a);

/* y (T, d) = a (T, k) @ w (k, d), w f16 row-major (the hot neurons' down rows, dequantised). A tiled
 * f32-accumulating kernel (64 x 64 outputs per block). */
int pi_cbk_down_batch(void *stream, int64_t T, int64_t k, int64_t d, const float *d_a, const void *d_w16,
                      float *d_y);

/* Causal grouped-query attention with the contract of pi_cuda_attention (kernels/cuda/cuda.h) for any
 * head_dim <= 256: one block per (head, query), the scores of the (pos0 + T) positions in shared
 * memory. pi_cbk_attention_max_pos is the most positions it takes for head_dim hd. */
int pi_cbk_attention(void *stream, int64_t T, int n_head, int n_head_kv, int head_dim, int64_t pos0,
                     const float *d_q, const void *d_k_cache, const void *d_v_cache, float *d_out);
int64_t pi_cbk_attention_max_pos(int head_dim);

/* Pinned host memory (cudaHostAlloc) for staging copies; free accepts NULL. */
int pi_cbk_host_alloc(size_t bytes, void **p);
void pi_cbk_host_free(void *p);

/* Page-lock an existing host range so that copies to and from it run by DMA without staging. A
 * failure is not sticky: it is logged at debug level and returned, and the caller copies unpinned. */
int pi_cbk_host_register(void *p, size_t bytes);
void pi_cbk_host_unregister(void *p);

/* An event for ordering the copy stream before the compute stream; destroy accepts NULL. */
int pi_cbk_event_new(void **ev);
void pi_cbk_event_destroy(void *ev);

/* Copy bytes host src -> device dst on copy_stream, record ev there, and make compute_stream wait for
 * ev (no host wait). src must stay unchanged until ev completes (pi_cbk_event_sync). */
int pi_cbk_copy_in(void *copy_stream, void *compute_stream, void *ev, void *d_dst, const void *src, size_t bytes);

/* Wait for ev on the host (a never-recorded event is complete). */
int pi_cbk_event_sync(void *ev);

/* Prompt streaming's ordering (compute/backend-cuda.c, "Prompt streaming"): record ev on stream; make
 * stream wait for ev (no host wait); on copy_stream, wait for after (NULL: nothing), copy bytes host src
 * -> device dst and record done. src must stay unchanged until done completes. */
int pi_cbk_event_record(void *stream, void *ev);
int pi_cbk_stream_wait(void *stream, void *ev);
int pi_cbk_copy_after(void *copy_stream, void *after, void *d_dst, const void *src, size_t bytes, void *done);

/* The host-to-device bandwidth of copy_stream from pinned src to d_dst, bytes/s: the better of two
 * timed copies of bytes (the first also warms the path). */
int pi_cbk_h2d_measure(void *copy_stream, void *d_dst, const void *src, size_t bytes, double *bps);

#ifdef __cplusplus
}
#endif

#endif
