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
 * An abort word is a second word the futex cannot watch; its wake-up can race with our queueing on
 * the first word. Sleeps are therefore cut into slices of PI_FUTEX_ABORT_SLICE_NS when an abort
 * word is given, and the abort word is re-read after every slice.
 */
#include "config.h"

#include "ipc/futex.h"

#include "lib/common.h"
#include "lib/log.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
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

/* The shared loop of wait_ne and wait_ge: `ge` selects the condition. */
static int wait_cond(_Atomic uint32_t *word, uint32_t ref, int ge, unsigned spin, int64_t timeout_ns,
                     _Atomic uint32_t *abort_word, uint32_t *out)
{
    int64_t deadline = 0;
    uint32_t v;

    for (unsigned i = 0;; i++) {
        v = atomic_load_explicit(word, memory_order_acquire);
        if (ge ? pi_seq_reached(v, ref) : v != ref) goto done;
        if (abort_word && atomic_load_explicit(abort_word, memory_order_acquire) != 0) return -PI_ERR_PEER;
        if (i >= spin) break;
        pi_cpu_relax();
    }
    if (timeout_ns >= 0) deadline = pi_clock_ns() + timeout_ns;
    for (;;) {
        int64_t slice = PI_FUTEX_FOREVER;
        int rc;
        if (timeout_ns >= 0) {
            slice = deadline - pi_clock_ns();
            if (slice <= 0) return -PI_ERR_TIMEOUT;
        }
        if (abort_word && (slice < 0 || slice > PI_FUTEX_ABORT_SLICE_NS)) slice = PI_FUTEX_ABORT_SLICE_NS;
        rc = pi_futex_wait(word, v, slice);
        if (rc == -PI_ERR_IO) return rc;
        /* On -PI_ERR_TIMEOUT of a slice, fall through: the deadline check above decides. */
        v = atomic_load_explicit(word, memory_order_acquire);
        if (ge ? pi_seq_reached(v, ref) : v != ref) goto done;
        if (abort_word && atomic_load_explicit(abort_word, memory_order_acquire) != 0) return -PI_ERR_PEER;
    }
done:
    if (out) *out = v;
    return 0;
}

int pi_futex_wait_ne(_Atomic uint32_t *word, uint32_t seen, unsigned spin, int64_t timeout_ns,
                     _Atomic uint32_t *abort_word, uint32_t *out)
{
    return wait_cond(word, seen, 0, spin, timeout_ns, abort_word, out);
}

int pi_futex_wait_ge(_Atomic uint32_t *word, uint32_t target, unsigned spin, int64_t timeout_ns,
                     _Atomic uint32_t *abort_word, uint32_t *out)
{
    return wait_cond(word, target, 1, spin, timeout_ns, abort_word, out);
}
