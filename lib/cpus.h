/*
 * lib/cpus.h - how many CPUs this process may run on: its affinity mask (taskset, cgroups' cpusets,
 * a worker bound to its NUMA node) rather than the machine's count. The one count for the thread
 * pools' default size (kernels/cpu/pool.c) and the futex waits' decision to spin (ipc/futex.c).
 */
#ifndef PI_LIB_CPUS_H
#define PI_LIB_CPUS_H

/* CPUs in this thread's affinity mask (sched_getaffinity); where that cannot be read, the online
 * CPUs; at least 1. */
int pi_cpus_usable(void);

#endif
