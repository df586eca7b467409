/*
 * kernels/cpu/pool.c - the persistent thread pool of kernels/cpu/pool.h.
 *
 * DESIGN. A job is published in three steps by the caller: write the job fields, store the claim word
 * `work` = (generation << 32) | chunks_left with release order, then bump the futex word `gen` and wake
 * sleepers (only when some worker announced that it sleeps). Threads claim chunks by a CAS that
 * decrements chunks_left only while the generation in `work` is their own, so a worker that wakes up
 * late can never claim (or read the fields of) a newer job by mistake; job fields are read only after a
 * successful claim, and the caller cannot publish the next job before every claimed chunk has bumped
 * `done`. The caller claims chunks too and then waits for `done == n_chunks` (spin, then yield: on a
 * shared machine a worker may be preempted mid-chunk). Idle workers spin on `gen` for spin_ns (yielding
 * the CPU every 64 reads past the default 100 us), then
 * sleep in FUTEX_WAIT; the sleeper count and `gen` are sequentially consistent so a wake-up is never
 * lost (either the caller sees the sleeper, or the sleeper's futex_wait sees the new gen and returns).
 */
#include "config.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/pool.h"
#include "lib/common.h"
#include "lib/cpus.h"
#include "lib/log.h"

#define CHUNKS_PER_THREAD 4     /* dynamic balancing: about this many chunks per thread and job */
#define MAX_THREADS PI_MAX_THREADS /* lib/common.h: the bound every --threads option checks */

struct pi_pool {
    int n_threads;                 /* including the caller */
    pthread_t *threads;            /* (n_threads - 1) workers */
    int n_started;

    /* job fields, written by the caller before publishing, stable until done == n_chunks */
    pi_pool_fn fn;
    void *ctx;
    int64_t n, chunk;
    uint32_t n_chunks;

    _Alignas(64) _Atomic uint64_t work;  /* (generation << 32) | chunks left to claim */
    _Alignas(64) _Atomic uint32_t gen;   /* futex word: generation of the latest job */
    _Alignas(64) _Atomic uint32_t done;  /* chunks finished in the current job */
    _Alignas(64) _Atomic int sleepers;   /* workers in (or entering) FUTEX_WAIT */
    _Atomic int stop;
    _Atomic int busy;                    /* a pi_pool_for is running (misuse check: not re-entrant) */
    _Atomic int64_t spin_ns;             /* idle workers spin this long after a job before sleeping */
};

/* Per-worker start argument. */
struct worker_arg {
    pi_pool_t *pool;
    int index;
};

static long futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Claim and run chunks of generation g until none are left. */
static void run_chunks(pi_pool_t *p, uint32_t g, int thread)
{
    uint64_t w = atomic_load_explicit(&p->work, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(w >> 32) != g || (uint32_t)w == 0) return;
        if (!atomic_compare_exchange_weak_explicit(&p->work, &w, w - 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue;
        int64_t idx = (int64_t)(p->n_chunks - (uint32_t)w);
        int64_t begin = idx * p->chunk, end = PI_MIN(begin + p->chunk, p->n);
        p->fn(p->ctx, begin, end, thread);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        w = atomic_load_explicit(&p->work, memory_order_acquire);
    }
}

static void *worker_main(void *arg)
{
    struct worker_arg a = *(struct worker_arg *)arg;
    pi_pool_t *p = a.pool;
    uint32_t seen = 0;
    free(arg);
    for (;;) {
        uint32_t g = atomic_load(&p->gen);
        if (g == seen) {
            const int64_t t0 = now_ns(), spin = atomic_load_explicit(&p->spin_ns, memory_order_relaxed);
            for (int i = 1; (g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen; i++) {
                cpu_relax();
                if (i % 64 != 0) continue;
                const int64_t t = now_ns() - t0;
                if (t > spin) break;
                /* past PI_SPIN_YIELD_NS, give the CPU to any thread that waits for it (a long spin on a
                 * shared CPU would delay the process this pool's next job comes from) */
                if (t > PI_SPIN_YIELD_NS) sched_yield();
            }
        }
        if (g == seen) {
            atomic_fetch_add(&p->sleepers, 1);
            futex(&p->gen, FUTEX_WAIT_PRIVATE, seen);
            atomic_fetch_sub(&p->sleepers, 1);
            continue;
        }
        seen = g;
        if (atomic_load(&p->stop)) break;
        run_chunks(p, g, a.index);
    }
    return NULL;
}

pi_pool_t *pi_pool_new(int n_threads)
{
    if (n_threads <= 0) n_threads = PI_MIN(pi_cpus_usable(), MAX_THREADS);
    if (n_threads > MAX_THREADS) {
        pi_error("thread pool: %d threads requested, at most %d", n_threads, MAX_THREADS);
        return NULL;
    }
    pi_pool_t *p = calloc(1, sizeof(*p));
    if (!p) goto err;
    p->n_threads = n_threads;
    atomic_init(&p->spin_ns, PI_POOL_SPIN_NS_DEFAULT);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) goto err;
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *a = malloc(sizeof(*a));
        if (!a) goto err;
        a->pool = p, a->index = i;
        int rc = pthread_create(&p->threads[i - 1], NULL, worker_main, a);
        if (rc != 0) {
            free(a);
            pi_error("pthread_create failed: %s", strerror(rc));
            goto err;
        }
        p->n_started++;
    }
    return p;
err:
    if (!p || !p->threads) pi_error("thread pool: out of memory");
    pi_pool_destroy(&p);
    return NULL;
}

void pi_pool_destroy(pi_pool_t **pp)
{
    pi_pool_t *p = pp ? *pp : NULL;
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    futex(&p->gen, FUTEX_WAKE_PRIVATE, INT32_MAX);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    free(p);
    *pp = NULL;
}

int pi_pool_size(const pi_pool_t *p) { return p ? p->n_threads : 1; }

void pi_pool_set_spin_ns(pi_pool_t *p, int64_t ns)
{
    if (p) atomic_store_explicit(&p->spin_ns, ns < 0 ? 0 : ns, memory_order_relaxed);
}

void pi_pool_for(pi_pool_t *p, int64_t n, int64_t grain, pi_pool_fn fn, void *ctx)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (!p || p->n_threads == 1 || n <= grain) {
        fn(ctx, 0, n, 0);
        return;
    }
    /* one job at a time: a nested or concurrent call would deadlock or corrupt the job fields */
    PI_ASSERT(atomic_exchange(&p->busy, 1) == 0);
    int64_t want = (int64_t)p->n_threads * CHUNKS_PER_THREAD;
    int64_t chunk = PI_MAX(grain, (n + want - 1) / want);
    p->fn = fn, p->ctx = ctx, p->n = n, p->chunk = chunk;
    p->n_chunks = (uint32_t)((n + chunk - 1) / chunk);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);

    uint32_t g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&p->work, (uint64_t)g << 32 | p->n_chunks, memory_order_release);
    atomic_store(&p->gen, g);
    if (atomic_load(&p->sleepers) > 0) futex(&p->gen, FUTEX_WAKE_PRIVATE, INT32_MAX);

    run_chunks(p, g, 0);
    for (int i = 1; atomic_load_explicit(&p->done, memory_order_acquire) != p->n_chunks; i++) {
        if (i % 256 == 0) sched_yield();
        else cpu_relax();
    }
    atomic_store(&p->busy, 0);
}
