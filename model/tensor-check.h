/*
 * model/tensor-check.h - the values of a model file's tensors: no NaN or infinity where a weight or a
 * block's scale is stored.
 *
 * The GGUF reader (model/gguf.h) checks a file's structure; a file can be well formed and still carry
 * a NaN in one block's fp16 scale (a converter's bug, a bit flipped on disk), and such a weight turns
 * every output it touches into NaN, which the sampler then reads as garbage text with exit 0. This
 * module reads the floating-point fields of every tensor: the elements of F32, F16, BF16 and F64
 * tensors, and each block's scales (d, and m, dmin or s where the type has one) of the quantised
 * types. Integer tensors hold no such field and are not read.
 *
 * Two depths (issue 20, defect 10; llama.cpp's --check-tensors reads everything):
 *   sampled  PI_TENSOR_CHECK_WINDOWS windows of PI_TENSOR_CHECK_WINDOW_BYTES per tensor, evenly spread
 *            from its first block to its last: at most 64 KiB of each tensor is read, which catches a
 *            file that is wrong throughout or at either end, not a single bad block in the middle;
 *   full     every block of every tensor (the whole file is read once).
 * Measured on the 2-core VM, a 1B Q4_K_M file (668 MB, 201 tensors): sampled 6 ms from the page
 * cache, 0.6 s from disk (the mapping's read-around fetches more than the windows); full 81 ms and
 * 0.8 s. The workers read the whole file at start anyway.
 * The loader runs the depth it is given (pi_model_opts.check, from [model] check_tensors); pi-gguf
 * --check runs the full one.
 */
#ifndef PI_MODEL_TENSOR_CHECK_H
#define PI_MODEL_TENSOR_CHECK_H

#include <stddef.h>

#include "model/gguf.h"

#define PI_TENSOR_CHECK_WINDOWS 16
#define PI_TENSOR_CHECK_WINDOW_BYTES 4096 /* rounded down to whole blocks; one block at least */

enum pi_tensor_check {
    PI_TENSOR_CHECK_SAMPLED = 0, /* the default: windows of each tensor */
    PI_TENSOR_CHECK_FULL = 1,    /* every block */
};

/* Check tensor t's floating-point fields at depth mode. 0 when every field read is finite; otherwise
 * -PI_ERR_FORMAT with one line in err naming the tensor, the block or element and the value, e.g.
 * "blk.0.ffn_up.weight (q4_0): block 17 of 2048 has a non-finite scale (nan)". -PI_ERR_INVAL for a mode
 * outside the enum. Reads only inside t's n_bytes (the reader checked they lie in the file). */
int pi_tensor_check(const struct pi_gguf_tensor *t, enum pi_tensor_check mode, char *err, size_t errlen);

/* pi_tensor_check over every tensor of g in file order; the first failure is returned. */
int pi_tensor_check_file(const pi_gguf_t *g, enum pi_tensor_check mode, char *err, size_t errlen);

#endif
