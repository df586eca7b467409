/*
 * compute/partition.h - one worker's share of a layer's FFN neurons, copied out of the mmapped model
 * into node-local memory: a CPU worker's cold neurons, or the GPU worker's hot ones (both pack theirs
 * with this code, from their group of the placement map, compute/placement.h).
 *
 * The worker's copy of layer l is a struct pi_layer whose ffn_gate, ffn_up and ffn_down_t hold only
 * its own neurons, row j being neuron ids[l][j] (ascending), so the neuron-subset kernel
 * (pi_ffn_neurons) runs on it unchanged. For the dense path the copy also keeps, in the file's own
 * type, the columns of ffn_down that form whole quantisation blocks of the worker's neurons (every
 * id of the block is its own): the dense down block. A group that is a range (the rule without
 * statistics) has one such run of blocks and packs exactly as a range always did; a scattered group
 * (a hot set chosen by frequency) has as many runs as it has whole blocks, and its other neurons
 * (the edges) go through their transposed down rows.
 */
#ifndef PI_COMPUTE_PARTITION_H
#define PI_COMPUTE_PARTITION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compute/placement.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"
#include "model/model.h"

/* Consecutive packed neurons [pos, pos + len) whose down columns are whole blocks of the file's
 * ffn_down, held in the dense down block at its columns [col, col + len). */
struct pi_partition_run {
    int64_t pos, len, col;
};

struct pi_partition {
    int n_layer;
    int64_t *count;            /* (n_layer): neurons of layer il held here */
    int64_t count_max;         /* the largest count */
    const int32_t **ids;       /* (n_layer) -> (count[il]): row j of layer il is neuron ids[il][j], ascending */
    /* (n_layer): ffn_gate, ffn_up (count, d) and ffn_down_t (count, or the edges' rows, d) are bound,
     * and ffn_down (d, blk) = the dense down block: the whole quantisation blocks of the file's
     * ffn_down among the neurons, one after the other (data NULL, blk 0: none) */
    struct pi_layer *layers;
    struct pi_partition_run **runs; /* (n_layer) -> (n_runs[il]) */
    int64_t *n_runs;                /* (n_layer) */
    /* (n_layer) -> (count[il]): the ffn_down_t row of packed neuron j, -1 for a neuron of the dense
     * block whose down row is not kept (edges_only) */
    int32_t **down_row;
    /* ffn_down_t holds only the edge neurons' rows (those outside the dense block), one after the
     * other: the slice can only be computed by pi_partition_ffn_dense (packed with dense_only) */
    bool edges_only;
    void *meta;                /* one allocation holding ids, runs and down_row */
    void *mem;                 /* one node-local allocation holding every packed row */
    size_t bytes;              /* of mem */
    void *mem16;               /* node-local: the 16-row packed copies (pi_partition_pack_rows16), or NULL */
    size_t bytes16;            /* of mem16 */
    /* (n_layer, 2) or NULL: layer il's ffn_gate [2 il] and ffn_up [2 il + 1] cut to their first
     * count & ~15 rows with 16-row packed copies (rows16 NULL where none was made); the dense path
     * computes those rows through the copies and the last count % 16 from the rows */
    struct pi_weight *gu16;
    int node_os;
};

/* Pack group g of placement pl (0: the GPU worker's hot neurons, 1 + w: CPU worker w's cold ones) of
 * every layer of m into memory on NUMA node node_os (-1: local). m may be opened without its own
 * transposed down rows (pi_model_opts.no_down_t): they are then built from ffn_down for these neurons
 * only. views: where a layer's neurons are a range, gate and up (and a file's own ffn_down_t) are views
 * of m's mapping rather than copies (m must then outlive p). dense_only: the slice will only be
 * computed by pi_partition_ffn_dense (a SwiGLU model, which never goes neuron by neuron), so only the
 * edge neurons get transposed down rows (edges_only): for Q4_0 weights that leaves 2.2 instead of 4.2
 * bytes per neuron weight. 0 or a negative pi_err (logged). */
int pi_partition_pack(const pi_model_t *m, const struct pi_placement *pl, int g, int node_os, bool views,
                      bool dense_only, struct pi_partition *p);
/* The same for the ids[il] (count[il], ascending, in [0, n_ff)) of every layer. */
int pi_partition_pack_ids(const pi_model_t *m, const int32_t *const *ids, const int64_t *count, int node_os, bool views,
                          bool dense_only, struct pi_partition *p);
/* The same for the neurons [first, first + count) of every layer. */
int pi_partition_pack_range(const pi_model_t *m, int64_t first, int64_t count, int node_os, bool views,
                            bool dense_only, struct pi_partition *p);
void pi_partition_free(struct pi_partition *p);

/* Give every layer's ffn_gate and ffn_up (their first count & ~15 rows; the last count % 16 stay rows)
 * and its dense down block a 16-row packed copy (kernels/cpu/rows16.h) where the active kernel variant
 * has a kernel for the type, in one node-local allocation on p's node, packed over pool (NULL: this
 * thread). The dense path (pi_partition_ffn_dense*) then reads the copies: the in-process engine's
 * kernels and bits per row (pp64 through the pipeline's CPU worker 1.5-2.1x, doc/kernels.md). Costs
 * as much memory again as the packed matrices: nothing is done (a warning) where that
 * does not fit the machine's available memory (pi_r16_room) or cannot be allocated (p unchanged then),
 * nor where nothing is packable. sharing (>= 1): the processes that pack slices of this size at the same
 * time on this machine (the CPU workers), each seeing the same available memory: the room asked for is
 * sharing times this copy. The neuron-wise kernels keep reading the rows. *bytes (optional) = the
 * bytes packed (0: none). Nothing to return: the copy is an optimisation, never a reason to fail. */
void pi_partition_pack_rows16(struct pi_partition *p, pi_pool_t *pool, int sharing, size_t *bytes);

/* Floats of scratch pi_partition_ffn_dense needs for n tokens. */
size_t pi_partition_dense_scratch(const struct pi_partition *p, int64_t n);

/* Y (n, d) = the FFN of the partition's neurons of layer il over each row of X (n, d), computed densely:
 * gate and up as matrix products of the packed rows, the activation, then the dense down block as one
 * product (its input quantised as pi_matvec does) and the other neurons through their ffn_down_t rows.
 * This is the single-process pass's dense FFN on a slice (the same kernels, so its rounding, not the
 * neuron kernel's); it reads every weight of the slice, which beats the neuron kernel unless few
 * neurons are active (compute/ffn-policy.h). Y is overwritten. Returns the (token, neuron) pairs with
 * a non-zero activation. */
int64_t pi_partition_ffn_dense(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act,
                               const float *X, int64_t n, float *scratch, float *Y);

/* The same with each token's predicted-active mask (compute/sparse.h): mask (n, mask_words) over the
 * layer's ids; an activation whose neuron token t's row does not select is zeroed before the down
 * product, so each token sums exactly its selected neurons (every weight row is still read once). */
int64_t pi_partition_ffn_dense_masked(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act,
                                      const float *X, int64_t n, const uint64_t *mask, int64_t mask_words, float *scratch,
                                      float *Y);

/* The same with activation thresholds (kernels/cpu/ops.h, pi_ffn_gate_skip): gate_min (count[il]) the
 * threshold of each packed neuron; a skipped neuron's activation is zeroed before the down product. */
int64_t pi_partition_ffn_dense_gated(pi_pool_t *pool, const struct pi_partition *p, int il, enum pi_ffn_act act,
                                     const float *gate_min, const float *X, int64_t n, float *scratch, float *Y);

#endif
