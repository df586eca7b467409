/*
 * tests/unit/test-pool.c - kernels/cpu/pool.h: every index is visited exactly once, by a valid thread,
 * over many repetitions and shapes (n smaller than the thread count, grain larger than n, uneven
 * tails), for a NULL pool, a 1-thread pool and multi-thread pools; start-up/shutdown churn, and
 * shutdown with workers in each state (never used, spinning, asleep on the futex).
 */
#include "config.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/cpu/pool.h"
#include "lib/cpus.h"
#include "lib/common.h"
#include "tests/tap.h"

struct visit {
    _Atomic int *count;   /* (n,) visits per index */
    int64_t n;
    int n_threads;
    _Atomic int bad;      /* ranges out of bounds, empty, or a bad thread index */
    _Atomic long calls;
};

static void visit_fn(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct visit *v = ctx;
    atomic_fetch_add(&v->calls, 1);
    if (begin < 0 || end > v->n || begin >= end || thread < 0 || thread >= v->n_threads) {
        atomic_fetch_add(&v->bad, 1);
        return;
    }
    for (int64_t i = begin; i < end; i++) atomic_fetch_add_explicit(&v->count[i], 1, memory_order_relaxed);
}

/* Run pi_pool_for reps times over n with grain; true when every index was visited exactly reps times. */
static bool run(pi_pool_t *p, int64_t n, int64_t grain, int reps, long *calls)
{
    struct visit v = {.n = n, .n_threads = pi_pool_size(p)};
    v.count = calloc((size_t)(n > 0 ? n : 1), sizeof(*v.count));
    for (int r = 0; r < reps; r++) pi_pool_for(p, n, grain, visit_fn, &v);
    bool ok = atomic_load(&v.bad) == 0;
    for (int64_t i = 0; i < n; i++) ok = ok && atomic_load(&v.count[i]) == reps;
    if (calls) *calls = atomic_load(&v.calls);
    free(v.count);
    return ok;
}

int main(void)
{
    static const int64_t sizes[] = {1, 2, 3, 7, 64, 1000, 4099};
    static const int64_t grains[] = {1, 3, 16, 5000};
    static const int threads[] = {1, 2, 3, 8};
    long calls;

    tap_ok(run(NULL, 1000, 1, 3, &calls) && calls == 3, "NULL pool runs inline, one call per job");
    tap_ok(pi_pool_size(NULL) == 1, "NULL pool has size 1");
    run(NULL, 0, 1, 1, &calls);
    tap_ok(calls == 0, "n = 0 calls nothing");

    for (size_t k = 0; k < sizeof(threads) / sizeof(threads[0]); k++) {
        pi_pool_t *p = pi_pool_new(threads[k]);
        if (!tap_ok(p != NULL && pi_pool_size(p) == threads[k], "pool of %d threads", threads[k])) continue;
        bool ok = true;
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
            for (size_t g = 0; g < sizeof(grains) / sizeof(grains[0]); g++)
                ok = ok && run(p, sizes[s], grains[g], 50, NULL);
        tap_ok(ok, "%d threads: every index exactly once, 7 sizes x 4 grains x 50 repetitions", threads[k]);
        tap_ok(run(p, 100000, 1, 2000, NULL), "%d threads: 2000 back-to-back jobs of 100000", threads[k]);
        run(p, 100, 1000, 1, &calls);
        tap_ok(calls == 1, "%d threads: grain above n runs one chunk", threads[k]);
        pi_pool_destroy(&p);
        tap_ok(p == NULL, "destroy NULLs the pointer");
    }

    pi_pool_t *p = pi_pool_new(0);
    cpu_set_t all, one;
    const bool aff = sched_getaffinity(0, sizeof all, &all) == 0;
    tap_ok(p != NULL && aff && pi_pool_size(p) == CPU_COUNT(&all) && pi_cpus_usable() == CPU_COUNT(&all),
           "pool of 0 = the CPUs of the affinity mask (%d, mask %d)", pi_pool_size(p), aff ? CPU_COUNT(&all) : -1);
    pi_pool_destroy(&p);
    /* narrowed to one CPU (as a cpuset or taskset would), a pool of 0 has one thread, whatever is online */
    int first = 0;
    while (aff && first < CPU_SETSIZE - 1 && !CPU_ISSET(first, &all)) first++;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    if (aff && sched_setaffinity(0, sizeof one, &one) == 0) {
        p = pi_pool_new(0);
        tap_ok(p != NULL && pi_pool_size(p) == 1 && pi_cpus_usable() == 1,
               "affinity narrowed to CPU %d: a pool of 0 has %d thread(s), want 1", first, p ? pi_pool_size(p) : -1);
        pi_pool_destroy(&p);
        PI_ASSERT(sched_setaffinity(0, sizeof all, &all) == 0);
    } else {
        tap_ok(0, "sched_setaffinity to one CPU failed");
    }
    pi_pool_destroy(&p); /* NULL is fine */
    /* the idle spin: 0 (every worker sleeps after each job, each job wakes them) and 5 ms (they spin
     * across the gaps) give the same coverage of every index */
    p = pi_pool_new(4);
    bool spun = p != NULL;
    static const int64_t spins[] = {0, 5 * 1000 * 1000, PI_POOL_SPIN_NS_DEFAULT};
    for (size_t k = 0; spun && k < PI_ARRAY_LEN(spins); k++) {
        pi_pool_set_spin_ns(p, spins[k]);
        for (int i = 0; spun && i < 20; i++) {
            struct timespec gap = {0, 200 * 1000};
            spun = run(p, 1000, 1, 5, NULL);
            nanosleep(&gap, NULL);
        }
    }
    pi_pool_set_spin_ns(NULL, 0); /* accepted */
    tap_ok(spun, "idle spins of 0, 5 ms and the default: every index once, with gaps between jobs");
    pi_pool_destroy(&p);
    bool churn = true;
    for (int i = 0; i < 50; i++) {
        pi_pool_t *q = pi_pool_new(3);
        churn = churn && q && run(q, 33, 1, 2, NULL);
        pi_pool_destroy(&q);
    }
    tap_ok(churn, "50 create/use/destroy cycles");

    /* Shutdown in each worker state: never given a job (spinning on gen 0), asleep on the futex
     * after idling past the spin time, and spinning right after a job. A lost wake-up hangs here. */
    struct timespec idle = {0, 5 * 1000 * 1000};
    bool states = true;
    for (int i = 0; i < 10; i++) {
        pi_pool_t *q = pi_pool_new(4);
        states = states && q;
        pi_pool_destroy(&q);
        q = pi_pool_new(4);
        states = states && q && run(q, 64, 1, 1, NULL);
        nanosleep(&idle, NULL); /* workers go to sleep */
        states = states && run(q, 64, 1, 1, NULL); /* woken for a job */
        nanosleep(&idle, NULL);
        pi_pool_destroy(&q); /* woken for the stop */
    }
    tap_ok(states, "destroy with workers never used, asleep, and spinning; jobs after sleeping (10 rounds)");
    return tap_done();
}
