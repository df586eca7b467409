/*
 * compute/backend-cuda-module.c - the one symbol pinfer-cuda.so exports (compute/backend-cuda-module.h):
 * the cuda backend's entry points, the predictor trainer's cuda engine, and what the loader checks
 * before calling any of them.
 * Built only into the module, never into libpinfer.a.
 */
#include "config.h"
#include "compute/backend-cuda-module.h"
#include "compute/backend-cuda.h"
#include "compute/predictor-train-cuda.h"

__attribute__((visibility("default"))) const struct pi_backend_cuda_module pi_backend_cuda_module = {
    .abi = PI_BACKEND_CUDA_ABI,
    .size_opts = sizeof(struct pi_backend_opts),
    .size_ops = sizeof(struct pi_backend_ops),
    .size_model = sizeof(struct pi_model),
    .size_layer = sizeof(struct pi_layer),
    .version = PACKAGE_VERSION,
    .backend_new = pi_backend_cuda_new,
    .usage = pi_backend_cuda_usage,
    .mem_info = pi_backend_cuda_mem_info,
    .size_ptrain_samples = sizeof(struct pi_ptrain_samples),
    .size_ptrain_engine = sizeof(struct pi_ptrain_engine),
    .ptrain_new = pi_ptrain_cuda_new,
};
