/*
 * compute/predictor-train-cuda.h - the predictor trainer's cuda engine (compute/predictor-train.h, struct
 * pi_ptrain_engine), built into the module pinfer-cuda.so only and reached through its struct
 * (compute/backend-cuda-module.h: ptrain_new); callers use pi_ptrain_engine_new.
 */
#ifndef PI_COMPUTE_PREDICTOR_TRAIN_CUDA_H
#define PI_COMPUTE_PREDICTOR_TRAIN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "compute/predictor-train.h"

/* Fill e's engine block (ctx, desc, the functions) with a cuda engine on device 0 for s's sets, steps of
 * at most batch rows. Both sets of a layer live on the device while it is bound (n_embd floats and mw
 * mask words a row), with the current rank's weights, gradient, Adam's moments, the best weights and
 * the step's scratch; what does not fit the device's free memory is refused with the bytes named.
 * 0; or -PI_ERR_DEVICE with the reason in why and nothing logged when there is no CUDA device (the
 * caller decides whether that is an error); or a negative pi_err, logged, for any other failure. */
int pi_ptrain_cuda_new(const struct pi_ptrain_samples *s, int64_t batch, struct pi_ptrain_engine *e, char *why,
                       size_t why_len);

#endif
