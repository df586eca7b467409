/*
 * cpu-worker/partition.h - one CPU worker's share of the cold FFN neurons, copied out of the
 * mmapped model into node-local memory (also used by pi-gpu-worker for its hot neurons; both link it
 * from libpinfer.a).
 *
 * The rule (doc/pipeline.md): the hot neurons of every layer are ids 0..n_hot-1; the cold ones,
 * n_hot..n_ff-1, are cut into n_workers contiguous ranges of nearly equal size, range w going to
 * CPU worker w. The worker's copy of layer l is a struct pi_layer whose ffn_gate, ffn_up and
 * ffn_down_t hold only its own neurons (rows 0..n_own-1 = neurons first..first+n_own-1), so the
 * neuron-subset kernel (pi_ffn_neurons) runs on it unchanged.
 */
#ifndef PI_CPU_WORKER_PARTITION_H
#define PI_CPU_WORKER_PARTITION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/model.h"

/* First neuron and count of worker w's range. */
void pi_partition_range(int64_t n_ff, int64_t n_hot, int n_workers, int w, int64_t *first, int64_t *count);

struct pi_partition {
    int64_t first, count;      /* neuron range, the same in every layer */
    struct pi_layer *layers;   /* (n_layer): only ffn_gate, ffn_up, ffn_down_t are bound */
    void *mem;                 /* one node-local allocation holding every packed row */
    size_t bytes;
    int node_os;
};

/* Pack worker w's neurons of m into memory on NUMA node node_os (-1: local). m may be opened without
 * packing (pi_model_opts.no_down_t): the down rows then come from ffn_down. 0 or a negative pi_err. */
int pi_partition_pack(const pi_model_t *m, int64_t n_hot, int n_workers, int w, int node_os, struct pi_partition *p);
/* The same for the neurons [first, first + count) of every layer: the GPU worker's hot neurons (ids
 * 0..n_hot-1), so that it holds transposed down rows for those only, not for the whole model. With
 * views, gate and up (and a file's own ffn_down_t) are views of m's mapping rather than copies, and
 * only the down rows built from ffn_down take memory (bytes); m must then outlive p. */
int pi_partition_pack_range(const pi_model_t *m, int64_t first, int64_t count, int node_os, bool views,
                            struct pi_partition *p);
void pi_partition_free(struct pi_partition *p);

#endif
