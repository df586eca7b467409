/*
 * compute/partition.h - one CPU worker's share of the cold FFN neurons, copied out of the
 * mmapped model into node-local memory (also used by pi-gpu-worker for its hot neurons; both link it
 * from libpinfer.a).
 *
 * The rule (doc/pipeline.md): the hot neurons of every layer are ids 0..n_hot-1; the cold ones,
 * n_hot..n_ff-1, are cut into n_workers contiguous ranges of nearly equal size, range w going to
 * CPU worker w. The worker's copy of layer l is a struct pi_layer whose ffn_gate, ffn_up and
 * ffn_down_t hold only its own neurons (rows 0..n_own-1 = neurons first..first+n_own-1), so the
 * neuron-subset kernel (pi_ffn_neurons) runs on it unchanged.
 */
#ifndef PI_COMPUTE_PARTITION_H
#define PI_COMPUTE_PARTITION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"
#include "model/model.h"

/* First neuron and count of worker w's range. */
void pi_partition_range(int64_t n_ff, int64_t n_hot, int n_workers, int w, int64_t *first, int64_t *count);

struct pi_partition {
    int64_t first, count;      /* neuron range, the same in every layer */
    /* (n_layer): ffn_gate, ffn_up (count, d) and ffn_down_t (count, d) are bound, and ffn_down (d, blk)
     * = the columns [first + blk_off[il], + blk) of the file's ffn_down in its own type, the whole
     * quantisation blocks inside the range (data NULL, blk 0: none), for pi_partition_ffn_dense */
    struct pi_layer *layers;
    int64_t *blk_off;          /* (n_layer) */
    /* ffn_down_t holds only the edge neurons' rows (those outside the dense block), one after the
     * other: the slice can only be computed by pi_partition_ffn_dense (packed with dense_only) */
    bool edges_only;
    void *mem;                 /* one node-local allocation holding every packed row */
    size_t bytes;
    int node_os;
};

/* Pack worker w's neurons of m into memory on NUMA node node_os (-1: local). m may be opened without
 * packing (pi_model_opts.no_down_t): the down rows then come from ffn_down. dense_only: the slice
 * will only be computed by pi_partition_ffn_dense (a SwiGLU model, which never goes neuron by
 * neuron), so only the edge neurons get transposed down rows (edges_only): for Q4_0 weights that
 * leaves 2.2 instead of 4.2 bytes per neuron weight. 0 or a negative pi_err. */
int pi_partition_pack(const pi_model_t *m, int64_t n_hot, int n_workers, int w, int node_os, bool dense_only,
                      struct pi_partition *p);
/* The same for the neurons [first, first + count) of every layer: the GPU worker's hot neurons (ids
 * 0..n_hot-1), so that it holds transposed down rows for those only, not for the whole model. With
 * views, gate and up (and a file's own ffn_down_t) are views of m's mapping rather than copies, and
 * only the down rows built from ffn_down and the dense down block take memory (bytes); m must then
 * outlive p. */
int pi_partition_pack_range(const pi_model_t *m, int64_t first, int64_t count, int node_os, bool views,
                            bool dense_only, struct pi_partition *p);
void pi_partition_free(struct pi_partition *p);

/* Floats of scratch pi_partition_ffn_dense needs for n tokens. */
size_t pi_partition_dense_scratch(const struct pi_partition *p, int64_t n);

/* Y (n, d) = the FFN of the partition's neurons of layer il over each row of X (n, d), computed densely:
 * gate and up as matrix products of the packed rows, the activation, then the down block as one
 * product (its input quantised as pi_matvec does) and the few neurons outside whole blocks at the
 * range's edges through their ffn_down_t rows. This is the single-process pass's dense FFN on a slice
 * (the same kernels, so its rounding, not the neuron kernel's); it reads every weight of the range,
 * which beats the neuron kernel unless few neurons are active (compute/forward.c: about 20%). Y is
 * overwritten. Returns the (token, neuron) pairs with a non-zero activation. */
int64_t pi_partition_ffn_dense(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act,
                               const float *X, int64_t n, float *scratch, float *Y);

#endif
