/*
 * compute/backend-cuda-module.h - the cuda backend as a loadable module (issue 20, item 6).
 *
 * The cuda backend (compute/backend-cuda.c over kernels/cuda/) and what it links, cudart, cuBLAS and
 * cuBLASLt (about 200 MB of resident memory once mapped and relocated), live in one shared module,
 * pinfer-cuda.so, installed in $(pkglibdir). No program links CUDA: pi-gpu-worker opens the module
 * with dlopen() the first time the cuda backend is asked for (pi_backend_check, pi_backend_new), so a
 * run with the host backend, or none, never maps it.
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

#define PI_BACKEND_CUDA_MODULE_FILE "pinfer-cuda.so"
#define PI_BACKEND_CUDA_MODULE_SYM "pi_backend_cuda_module"
/* Bumped whenever this struct or the meaning of a member changes. */
#define PI_BACKEND_CUDA_ABI 2 /* 2: ops.stream_rates replaced stream_bps, opts.thresholds */

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
};

/* The cuda backend's module, loaded on the first call (thread-safe) and kept for the life of the
 * process. NULL when it cannot be had, with the reason logged at each call: a build without CUDA,
 * or the module missing, unloadable (the path tried and dlerror()) or from another build. */
const struct pi_backend_cuda_module *pi_backend_cuda_load(void);

/* The path the module is loaded from in this process (or would be: the first candidate that
 * exists, else the installed one), written to out; for messages and tests. */
void pi_backend_cuda_module_path(char *out, size_t len);

#endif
