/*
 * ipc/futex.c - futex wait/wake across processes and the spin-then-sleep waits of ipc/futex.h.
 *
 * DESIGN (the lost-wake-up argument): a writer first stores the new value (release), then calls
 * FUTEX_WAKE. A waiter loads the value (acquire), finds its condition false, and calls FUTEX_WAIT
 * with the value it loaded as `expected`. The kernel compares *word with `expected` under the
 * futex bucket lock, the same lock FUTEX_WAKE takes. So either the writer's store lands before the
 * kernel's compare (the compare fails, FUTEX_WAIT returns EAGAIN at once, the waiter re-checks), or
 * it lands after the waiter is queued (the wake finds it). There is no window where the store
 * happened, the wake found nobody, and the waiter sleeps on a stale value.
 *
 * Skipping the wake system call when nobody sleeps (pi_futex_wake_sleepers): a waiter increments
 * the sleeper count (seq_cst) and then re-reads the word (seq_cst) before it sleeps; the writer
 * stores the word (seq_cst) and then reads the count (seq_cst). In the single total order of
 * seq_cst operations either the waiter's increment comes first - the writer sees a sleeper and
 * wakes (and if the waiter is not queued yet, the kernel's compare sees the new value) - or the
 * writer's load of the count comes first, and then so does its store of the word, which the
 * waiter's re-read therefore sees: it does not sleep. A waiter killed while counted leaves the
 * count high; that costs a needless system call per wake, never a missed one.
 *
 * An abort word is a second word the futex cannot watch; its wake-up can race with our queueing on
 * the first word. Sleeps are therefore cut into slices of PI_FUTEX_ABORT_SLICE_NS when an abort
 * word is given, and the abort word is re-read after every slice.
 */
#include "config.h"

#include "ipc/futex.h"

#include "lib/common.h"
#include "lib/cpus.h"
#include "lib/log.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int64_t pi_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int pi_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    long r;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tsp = &ts;
    }
    /* FUTEX_WAIT, not FUTEX_WAIT_PRIVATE: the word is shared with other processes. The cast is
     * sound: a lock-free _Atomic uint32_t has the representation of a uint32_t. */
    r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, tsp, NULL, 0);
    if (r == 0) return 0;
    switch (errno) {
    case EAGAIN: /* *word != expected already */
    case EINTR:  /* a signal: the caller re-checks and, if needed, waits again */
        return 0;
    case ETIMEDOUT:
        return -PI_ERR_TIMEOUT;
    default:
        pi_error("futex(FUTEX_WAIT, %p) failed: %s", (void *)word, strerror(errno));
        return -PI_ERR_IO;
    }
}

int pi_futex_wake(_Atomic uint32_t *word, int n)
{
    long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
    if (r < 0) {
        pi_error("futex(FUTEX_WAKE, %p) failed: %s", (void *)word, strerror(errno));
        return -PI_ERR_IO;
    }
    return (int)r;
}

unsigned pi_futex_spin_budget(unsigned n_procs)
{
    return (unsigned)pi_cpus_usable() >= n_procs ? PI_FUTEX_SPIN_DEFAULT : 0;
}

int pi_futex_wake_sleepers(_Atomic uint32_t *word, _Atomic uint32_t *sleepers, int n)
{
    if (sleepers && atomic_load_explicit(sleepers, memory_order_seq_cst) == 0) return 0;
    return pi_futex_wake(word, n);
}

static inline int cond_met(uint32_t v, uint32_t ref, int ge) { return ge ? pi_seq_reached(v, ref) : v != ref; }

static inline int aborted(const struct pi_futex_aux *aux)
{
    return aux && aux->abort_word && atomic_load_explicit(aux->abort_word, memory_order_acquire) != 0;
}

/* One futex sleep of at most slice ns on *word while it still holds v, counted in aux->sleepers.
 * Returns 0 (woken, changed, or slice over) or -PI_ERR_IO; *v is re-read on return. */
static int sleep_once(_Atomic uint32_t *word, uint32_t *v, uint32_t ref, int ge, int64_t slice,
                      const struct pi_futex_aux *aux)
{
    _Atomic uint32_t *sl = aux ? aux->sleepers : NULL;
    int rc = 0;
    if (sl) {
        atomic_fetch_add_explicit(sl, 1, memory_order_seq_cst);
        *v = atomic_load_explicit(word, memory_order_seq_cst);
    }
    if (!cond_met(*v, ref, ge)) rc = pi_futex_wait(word, *v, slice);
    if (sl) atomic_fetch_sub_explicit(sl, 1, memory_order_seq_cst);
    *v = atomic_load_explicit(word, memory_order_acquire);
    return rc == -PI_ERR_IO ? rc : 0;
}

/* The shared loop of wait_ne and wait_ge: `ge` selects the condition. */
static int wait_cond(_Atomic uint32_t *word, uint32_t ref, int ge, unsigned spin, int64_t timeout_ns,
                     const struct pi_futex_aux *aux, uint32_t *out)
{
    int64_t deadline = 0;
    /* the time spin never outlasts the timeout */
    const int64_t spin_ns = aux ? (timeout_ns >= 0 ? PI_MIN(aux->spin_ns, timeout_ns) : aux->spin_ns) : 0;
    const int64_t t0 = spin_ns > 0 ? pi_clock_ns() : 0;
    uint32_t v;

    for (unsigned i = 0;; i++) {
        v = atomic_load_explicit(word, memory_order_acquire);
        if (cond_met(v, ref, ge)) goto done;
        if (aborted(aux)) return -PI_ERR_PEER;
        if (i >= spin && spin_ns <= 0) break;
        if (i >= spin && i % 64 == 0) { /* the timed spin: its end, and past 100 us a yield every 64 reads */
            const int64_t t = pi_clock_ns() - t0;
            if (t > spin_ns) break;
            if (t > PI_SPIN_YIELD_NS) sched_yield(); /* a CPU another thread needs (the process we wait for) */
        }
        pi_cpu_relax();
    }
    if (timeout_ns >= 0) /* from the start of the wait: a timed spin is part of the timeout */
        deadline = spin_ns > 0 && timeout_ns <= INT64_MAX - t0 ? t0 + timeout_ns : pi_futex_deadline(timeout_ns);
    for (;;) {
        int64_t slice = PI_FUTEX_FOREVER;
        if (timeout_ns >= 0) {
            slice = deadline - pi_clock_ns();
            if (slice <= 0) return -PI_ERR_TIMEOUT;
        }
        if (aux && aux->abort_word && (slice < 0 || slice > PI_FUTEX_ABORT_SLICE_NS)) slice = PI_FUTEX_ABORT_SLICE_NS;
        /* A slice that ran out is not an error: the deadline check above decides. */
        if (sleep_once(word, &v, ref, ge, slice, aux) < 0) return -PI_ERR_IO;
        if (cond_met(v, ref, ge)) goto done;
        if (aborted(aux)) return -PI_ERR_PEER;
    }
done:
    if (out) *out = v;
    return 0;
}

int pi_futex_wait_ne_aux(_Atomic uint32_t *word, uint32_t seen, unsigned spin, int64_t timeout_ns,
                         const struct pi_futex_aux *aux, uint32_t *out)
{
    return wait_cond(word, seen, 0, spin, timeout_ns, aux, out);
}

int pi_futex_wait_ge_aux(_Atomic uint32_t *word, uint32_t target, unsigned spin, int64_t timeout_ns,
                         const struct pi_futex_aux *aux, uint32_t *out)
{
    return wait_cond(word, target, 1, spin, timeout_ns, aux, out);
}

int pi_futex_wait_ne(_Atomic uint32_t *word, uint32_t seen, unsigned spin, int64_t timeout_ns,
                     _Atomic uint32_t *abort_word, uint32_t *out)
{
    struct pi_futex_aux aux = {.abort_word = abort_word};
    return wait_cond(word, seen, 0, spin, timeout_ns, &aux, out);
}

int pi_futex_wait_ge(_Atomic uint32_t *word, uint32_t target, unsigned spin, int64_t timeout_ns,
                     _Atomic uint32_t *abort_word, uint32_t *out)
{
    struct pi_futex_aux aux = {.abort_word = abort_word};
    return wait_cond(word, target, 1, spin, timeout_ns, &aux, out);
}
