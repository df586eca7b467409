/*
 * compute/backend-cuda.h - the `cuda` backend of pi-gpu-worker (compute/backend-cuda.c): the
 * backend interface of compute/backend.h computed on one CUDA device, plus what its tests and logs
 * need to check the VRAM accounting. Only built when configure found CUDA (PI_HAVE_CUDA); its VRAM
 * plan is host C of its own (compute/backend-cuda-plan.h), built everywhere.
 */
#ifndef PI_COMPUTE_BACKEND_CUDA_H
#define PI_COMPUTE_BACKEND_CUDA_H

#include <stdint.h>

#include "compute/backend.h"
#include "compute/backend-cuda-plan.h" /* the plan it allocates by: pi_backend_cuda_plan, _all_dense */

/* Create the cuda backend over m (borrowed) on device o->device. Every device byte it will hold is
 * computed first (pi_backend_cuda_plan, compute/backend-cuda-plan.h); when that exceeds
 * o->vram_budget (or, with a budget of 0, the device's free memory less 256 MiB) the call fails with
 * one clear error and -PI_ERR_NOMEM before anything is allocated. Then the weights are uploaded (attention and norms, embeddings and output
 * head, then the hot neurons o->hot[il]: gate/up rows paired per neuron and ffn_down_t rows, or, for a
 * layer whose every neuron is hot in id order, the file's ffn_down itself), the KV cache (f16, o->n_seq
 * sequences of o->n_ctx positions) and the scratch are allocated, and the kernels' scratch is grown to
 * its largest size once, so that serving never allocates. Returns 0 and *out, or a negative pi_err
 * (-PI_ERR_DEVICE when no usable device, -PI_ERR_UNSUPPORTED for a shape no kernel takes). */
int pi_backend_cuda_new(const pi_model_t *m, const struct pi_backend_opts *o, pi_backend_t **out);

/* Accounting of a live cuda backend b: the budget, the bytes held now and at most so far (as the
 * context counts them), the planned bytes, and the unbudgeted CUDA context + cuBLAS overhead. Any
 * pointer may be NULL. */
void pi_backend_cuda_usage(const pi_backend_t *b, uint64_t *budget, uint64_t *used, uint64_t *peak,
                           uint64_t *planned, uint64_t *overhead);

/* A test hook: the steps so far whose decode attention of several sequences took the one-launch path
 * (pi_cuda_attention_seqs), not the per-sequence launches it falls back to where the partials would
 * exceed the attention scratch held. */
uint64_t pi_backend_cuda_seqs_steps(const pi_backend_t *b);

/* The device's free and total memory now (cudaMemGetInfo through the backend's context). */
int pi_backend_cuda_mem_info(pi_backend_t *b, uint64_t *free_bytes, uint64_t *total_bytes);

#endif
