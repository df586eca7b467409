/*
 * kernels/cuda/device.cu - device discovery for the cuda backend: how many GPUs, and what they are.
 * Failure to reach the driver is a normal answer on machines without a GPU (CI), reported as
 * -PI_ERR_DEVICE so callers can skip cleanly.
 */
#include "kernels/cuda/cuda.h"

extern "C" {
#include "lib/common.h"
#include "lib/log.h"
}

#include <cuda_runtime.h>
#include <cstdio>

extern "C" int pi_cuda_device_count(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        pi_debug("cudaGetDeviceCount failed: %s", cudaGetErrorString(e));
        (void)cudaGetLastError(); /* clear the non-sticky error */
        return -PI_ERR_DEVICE;
    }
    return n;
}

extern "C" int pi_cuda_device_describe(int dev, char *buf, size_t len)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, dev);
    if (e != cudaSuccess) {
        pi_error("cudaGetDeviceProperties(%d) failed: %s", dev, cudaGetErrorString(e));
        return -PI_ERR_DEVICE;
    }
    snprintf(buf, len, "%s, sm_%d%d, %.1f GiB, %d SMs", p.name, p.major, p.minor,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), p.multiProcessorCount);
    return 0;
}
