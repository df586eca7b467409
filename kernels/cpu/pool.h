/*
 * kernels/cpu/pool.h - a persistent thread pool for data-parallel kernel loops (matvec rows, token
 * tiles). The calling thread takes part as thread 0; n_threads - 1 workers wait between jobs,
 * spinning briefly and then sleeping on a futex, so a job can be started thousands of times a second.
 *
 * Threading contract: one pi_pool_for at a time per pool (not re-entrant: fn must not call
 * pi_pool_for on the same pool; a nested or concurrent call aborts through PI_ASSERT); different
 * pools are independent.
 */
#ifndef PI_KERNELS_CPU_POOL_H
#define PI_KERNELS_CPU_POOL_H

#include <stdint.h>

typedef struct pi_pool pi_pool_t;

/* Called for the half-open range [begin, end) on thread `thread` (0 = the caller, 1.. = workers). */
typedef void (*pi_pool_fn)(void *ctx, int64_t begin, int64_t end, int thread);

/* A pool of n_threads threads in total, the caller counting as one (so n_threads - 1 are started);
 * 0 means pi_cpus_usable() (lib/cpus.h; at most the pool's limit). Returns NULL on failure (logged). */
pi_pool_t *pi_pool_new(int n_threads);

/* Stop and join the workers, free, and NULL the caller's pointer; accepts NULL. */
void pi_pool_destroy(pi_pool_t **p);

/* How long an idle worker spins for the next job before it sleeps in the kernel (default
 * PI_POOL_SPIN_NS_DEFAULT). A sleeping worker costs the next job a futex wake and the worker's
 * wake-up latency (tens of microseconds on a VM's vCPUs), so an owner whose jobs come in a known
 * cadence (a CPU worker's layers) spins across the gap; on a machine without a CPU per spinning thread
 * spinning only delays the threads that have work. Set between jobs only; accepts a NULL pool. */
#define PI_POOL_SPIN_NS_DEFAULT 100000
void pi_pool_set_spin_ns(pi_pool_t *p, int64_t ns);

/* Threads in the pool including the caller; 1 for a NULL pool. */
int pi_pool_size(const pi_pool_t *p);

/* Run fn over [0, n) split into chunks of at least grain (>= 1) indices, handed out dynamically to
 * all threads; returns when every chunk is done. Every index is in exactly one chunk. With a NULL
 * pool, one thread, or n <= grain it runs fn(ctx, 0, n, 0) inline. n <= 0 does nothing. */
void pi_pool_for(pi_pool_t *p, int64_t n, int64_t grain, pi_pool_fn fn, void *ctx);

#endif
