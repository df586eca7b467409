/*
 * compute/backend-cuda-module.h - the cuda backend as a loadable module (issue 20, item 6).
 *
 * The cuda backend (compute/backend-cuda.c over kernels/cuda/) and what it links, cudart, cuBLAS and
 * cuBLASLt (about 200 MB of resident memory once mapped and relocated), live in one shared module,
 * pinfer-cuda.so, installed in $(pkglibdir). No program links CUDA: pi-gpu-worker opens the module
 * with dlopen() the first time the cuda backend is asked for (pi_backend_check, pi_backend_new), so a
 * run with the host backend, or none, never maps it.
 *
 * The module also holds the predictor trainer's cuda engine (compute/predictor-train-cuda.c), which
 * pi-train-predictors opens through the same loader (compute/predictor-train.h, pi_ptrain_engine_new).
 *
 * The module exports one symbol, PI_BACKEND_CUDA_MODULE_SYM, a struct pi_backend_cuda_module. Its
 * references into the program (logging, types, quantisation, the VRAM plan in libpinfer.a) resolve
 * against the program that loads it: such a program links with the export list the build derives
 * from the module's undefined symbols (PI_CUDA_IMPORTS_* in compute/Makemodule.am), which also
 * pulls those functions out of libpinfer.a. A module from another build is refused by its ABI number
 * and the sizes of the structs that cross the boundary, never called.
 *
 * Where it is looked for: compute/backend-cuda-load.c, pi_backend_cuda_load.
 */
#ifndef PI_COMPUTE_BACKEND_CUDA_MODULE_H
#define PI_COMPUTE_BACKEND_CUDA_MODULE_H

#include <stdint.h>

#include "compute/backend.h"
#include "compute/predictor-train.h"

#define PI_BACKEND_CUDA_MODULE_FILE "pinfer-cuda.so"
#define PI_BACKEND_CUDA_MODULE_SYM "pi_backend_cuda_module"
/* Bumped whenever this struct or the meaning of a member changes. 2: ops.stream_rates replaced
 * stream_bps, opts.thresholds; 3: the predictor trainer's engine (ptrain_new and the sizes of the two
 * structs it shares); 4: opts.gate_min, ops.ffn_hot_skipped (the plan's gate part); 5:
 * opts.tune.cuda_hot_thresholds (struct pi_tune kept its size: the new enum took padding, so only this
 * number tells an old module from a new one). */
#define PI_BACKEND_CUDA_ABI 5

struct pi_backend_cuda_module {
    uint32_t abi; /* PI_BACKEND_CUDA_ABI */
    /* sizeof of the structs the program and the module share, as the module was built: struct
     * pi_backend_opts, struct pi_backend_ops, struct pi_model, struct pi_layer */
    uint32_t size_opts, size_ops, size_model, size_layer;
    const char *version; /* PACKAGE_VERSION */
    /* compute/backend-cuda.h: pi_backend_cuda_new, pi_backend_cuda_usage, pi_backend_cuda_mem_info */
    int (*backend_new)(const pi_model_t *m, const struct pi_backend_opts *o, pi_backend_t **out);
    void (*usage)(const pi_backend_t *b, uint64_t *budget, uint64_t *used, uint64_t *peak, uint64_t *planned,
                  uint64_t *overhead);
    int (*mem_info)(pi_backend_t *b, uint64_t *free_bytes, uint64_t *total_bytes);
    /* compute/predictor-train-cuda.h: pi_ptrain_cuda_new; sizeof struct pi_ptrain_samples and struct
     * pi_ptrain_engine as the module was built */
    uint32_t size_ptrain_samples, size_ptrain_engine;
    int (*ptrain_new)(const struct pi_ptrain_samples *s, int64_t batch, struct pi_ptrain_engine *e, char *why,
                      size_t why_len);
};

/* The cuda backend's module, loaded on the first call (thread-safe) and kept for the life of the
 * process. NULL when it cannot be had, with the reason logged at each call: a build without CUDA,
 * or the module missing, unloadable (the path tried and dlerror()) or from another build. */
const struct pi_backend_cuda_module *pi_backend_cuda_load(void);

/* pi_backend_cuda_load without the log: NULL with the reason written to why (why_len bytes) when the
 * module cannot be had. For callers that fall back quietly (pi-train-predictors --device auto). */
const struct pi_backend_cuda_module *pi_backend_cuda_try_load(char *why, size_t why_len);

/* The path the module is loaded from in this process (or would be: the first candidate that
 * exists, else the installed one), written to out; for messages and tests. */
void pi_backend_cuda_module_path(char *out, size_t len);

#endif
