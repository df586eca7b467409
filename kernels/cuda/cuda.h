/*
 * kernels/cuda/cuda.h - the C interface of the CUDA side (the .cu files of kernels/cuda/), used by the GPU worker's
 * cuda backend. Only built when configure found nvcc and cuBLAS (PI_HAVE_CUDA). Every function checks
 * every CUDA/cuBLAS call and returns 0 or a negative enum pi_err, logging the failed call once.
 */
#ifndef PI_KERNELS_CUDA_H
#define PI_KERNELS_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices visible (>= 0), or a negative enum pi_err when the driver cannot be used
 * (no driver, no device node): a machine without a GPU answers -PI_ERR_DEVICE, not a crash. */
int pi_cuda_device_count(void);

/* Describe device dev ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB, 132 SMs") into buf. 0 or -PI_ERR_*. */
int pi_cuda_device_describe(int dev, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
