/*
 * lib/numa.h - where a CPU worker runs and keeps its memory: hwloc finds the NUMA nodes and
 * their cores, the process is bound to its node's cores (every thread it starts inherits that), and
 * libnuma allocates its packed weights on the node.
 */
#ifndef PI_LIB_NUMA_H
#define PI_LIB_NUMA_H

#include <stddef.h>
#include <stdint.h>

struct pi_numa_place {
    int n_nodes;         /* NUMA nodes of the machine (1 where there is no NUMA) */
    int node;            /* the node this worker uses: worker index modulo n_nodes */
    int node_os;         /* its OS index (for libnuma), -1 when unknown */
    uint32_t *cores;     /* (n_cores) OS ids of the node's processing units */
    uint32_t n_cores;
    int n_physical;      /* physical cores of the node */
    int sharing;         /* workers placed on this node (index, index + n_nodes, ...) */
};

/* Discover the topology, choose the node of worker `index` of `n_workers` and bind the process to
 * its cores (a failed binding is a warning, not an error: containers often forbid it). Returns 0
 * or a negative pi_err (logged). */
int pi_numa_place(int index, int n_workers, struct pi_numa_place *p);
void pi_numa_place_free(struct pi_numa_place *p);

/* bytes on node node_os (libnuma) or from the heap when NUMA is unavailable; zeroed. NULL on failure.
 * Free with pi_numa_free(ptr, bytes). */
void *pi_numa_alloc(size_t bytes, int node_os);
void pi_numa_free(void *ptr, size_t bytes);

#endif
