/*
 * lib/numa.c - NUMA discovery and binding of a CPU worker (lib/numa.h), with hwloc for
 * the topology and the CPU binding and libnuma for node-local memory.
 *
 * numa_alloc_onnode memory is not tracked by the heap; pi_numa_free must be given the size. Where
 * the kernel has no NUMA support (numa_available() < 0) the worker falls back to the heap: one node,
 * nothing to bind it to.
 */
#include "config.h"
#include "lib/numa.h"
#include "lib/common.h"
#include "lib/log.h"

#include <hwloc.h>
#include <numa.h>
#include <stdlib.h>
#include <string.h>

int pi_numa_place(int index, int n_workers, struct pi_numa_place *p)
{
    memset(p, 0, sizeof *p);
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) != 0 || hwloc_topology_load(topo) != 0) {
        pi_error("hwloc: cannot load the topology");
        return -PI_ERR_IO;
    }
    int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
    p->n_nodes = n > 0 ? n : 1;
    p->node = index % p->n_nodes;
    p->sharing = (n_workers - p->node + p->n_nodes - 1) / p->n_nodes;
    if (p->sharing < 1) p->sharing = 1;
    hwloc_obj_t node = n > 0 ? hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)p->node) : NULL;
    hwloc_const_cpuset_t set = node ? node->cpuset : hwloc_topology_get_topology_cpuset(topo);
    p->node_os = node ? (int)node->os_index : -1;
    int w = hwloc_bitmap_weight(set);
    p->cores = calloc(w > 0 ? (size_t)w : 1, sizeof *p->cores);
    if (!p->cores) { hwloc_topology_destroy(topo); return -PI_ERR_NOMEM; }
    unsigned i;
    hwloc_bitmap_foreach_begin(i, set) { p->cores[p->n_cores++] = i; }
    hwloc_bitmap_foreach_end();
    p->n_physical = hwloc_get_nbobjs_inside_cpuset_by_type(topo, set, HWLOC_OBJ_CORE);
    if (p->n_physical < 1) p->n_physical = (int)(p->n_cores ? p->n_cores : 1);
    if (hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) != 0)
        pi_warn("hwloc: cannot bind to the cores of NUMA node %d (running unbound)", p->node);
    hwloc_topology_destroy(topo);
    return 0;
}

void pi_numa_place_free(struct pi_numa_place *p)
{
    free(p->cores);
    memset(p, 0, sizeof *p);
}

void *pi_numa_alloc(size_t bytes, int node_os)
{
    if (bytes == 0) bytes = 1;
    if (numa_available() >= 0) {
        void *q = node_os >= 0 ? numa_alloc_onnode(bytes, node_os) : numa_alloc_local(bytes);
        if (q) memset(q, 0, bytes);
        return q;
    }
    return calloc(1, bytes);
}

void pi_numa_free(void *ptr, size_t bytes)
{
    if (!ptr) return;
    if (bytes == 0) bytes = 1;
    if (numa_available() >= 0) {
        numa_free(ptr, bytes);
        return;
    }
    free(ptr);
}
