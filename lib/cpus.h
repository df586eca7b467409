/*
 * lib/cpus.h - how many CPUs this process may run on: its affinity mask (taskset, cgroups' cpusets,
 * a worker bound to its NUMA node) rather than the machine's count. The one count for the thread
 * pools' default size (kernels/cpu/pool.c) and the futex waits' decision to spin (ipc/futex.c), and
 * the one rule both spins share for giving a CPU back.
 */
#ifndef PI_LIB_CPUS_H
#define PI_LIB_CPUS_H

/* CPUs in this thread's affinity mask (sched_getaffinity); where that cannot be read, the online
 * CPUs; at least 1. */
int pi_cpus_usable(void);

/* A thread that has spun this long for a word another thread or process will write yields its CPU
 * (sched_yield) every few reads from then on: the writer may be waiting for that CPU. The thread
 * pool's idle workers (kernels/cpu/pool.c) and the timed futex waits (ipc/futex.c) both follow it. */
#define PI_SPIN_YIELD_NS 100000

#endif
