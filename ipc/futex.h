/*
 * ipc/futex.h - waiting on 32-bit words in shared memory across processes: Linux futexes (the
 * shared variants, FUTEX_WAIT/FUTEX_WAKE, never _PRIVATE: the waiters live in different processes
 * and the kernel must key the wait queue on the physical page, not on one process's mm), bounded
 * waits, and a spin-then-sleep helper for the per-layer hand-off where the wait is usually short.
 *
 * Words are C11 atomics (_Atomic uint32_t); a 32-bit atomic is lock-free and address-free on every
 * target we build for, so the same word may be mapped at different addresses in different processes.
 * Sequence numbers wrap: "v reached target" is (int32_t)(v - target) >= 0, so a sequence may run
 * forever as long as no waiter falls 2^31 steps behind.
 */
#ifndef PI_IPC_FUTEX_H
#define PI_IPC_FUTEX_H

#include <stdatomic.h>
#include <stdint.h>

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free to live in shared memory");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "a futex word is exactly 32 bits");

/* No timeout: wait until the condition holds (use only where a dead peer is otherwise detected). */
#define PI_FUTEX_FOREVER (-1)

/* One pause hint for spin loops (x86 PAUSE, ARM YIELD), so a spinning hyperthread yields its core's
 * resources and the loop does not flood the memory bus. */
static inline void pi_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* True when sequence v has reached target, modulo 2^32. */
static inline int pi_seq_reached(uint32_t v, uint32_t target) { return (int32_t)(v - target) >= 0; }

/* Sleep while *word == expected, at most timeout_ns (PI_FUTEX_FOREVER: no bound). Returns 0 when
 * woken or when *word already differed (the caller re-checks its condition: wake-ups may be
 * spurious), -PI_ERR_TIMEOUT when the time ran out, -PI_ERR_IO on an unexpected futex error
 * (logged). Does not log timeouts: the caller knows what it was waiting for. */
int pi_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns);

/* Wake up to n waiters sleeping on word (INT32_MAX: all). Returns the number woken (>= 0) or
 * -PI_ERR_IO (logged). */
int pi_futex_wake(_Atomic uint32_t *word, int n);

/* Wake as pi_futex_wake, but skip the system call when *sleepers reads 0 (NULL: always wake).
 * The writer must have stored the new value of *word with memory_order_seq_cst (or issued a
 * seq_cst fence after it): together with the waiters' seq_cst increment of *sleepers before their
 * last check, that guarantees a sleeper is never missed (argument in ipc/futex.c). Returns the
 * number woken or -PI_ERR_IO. */
int pi_futex_wake_sleepers(_Atomic uint32_t *word, _Atomic uint32_t *sleepers, int n);

/* Monotonic clock in nanoseconds. */
int64_t pi_clock_ns(void);

/* The absolute pi_clock_ns() deadline timeout_ns (>= 0) from now, saturating at INT64_MAX instead
 * of overflowing: a caller may pass INT64_MAX for "practically forever" without the sum wrapping
 * into the past (which would time out at once). */
static inline int64_t pi_futex_deadline(int64_t timeout_ns)
{
    int64_t now = pi_clock_ns();
    return timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
}

/* Wait until *word != seen: first `spin` reads with pi_cpu_relax between them, then futex sleeps,
 * in total at most timeout_ns. The read is an acquire load, so whatever the writer stored before
 * its release store of the new value is visible on return. Stores the value seen in *out (may be
 * NULL). Returns 0, -PI_ERR_TIMEOUT, or -PI_ERR_IO. If abort_word is not NULL, returns
 * -PI_ERR_PEER as soon as it reads non-zero; a sleep then lasts at most PI_FUTEX_ABORT_SLICE_NS,
 * which bounds how late an abort is seen when its wake-up races with our going to sleep. */
int pi_futex_wait_ne(_Atomic uint32_t *word, uint32_t seen, unsigned spin, int64_t timeout_ns,
                     _Atomic uint32_t *abort_word, uint32_t *out);

/* As pi_futex_wait_ne, but until pi_seq_reached(*word, target). */
int pi_futex_wait_ge(_Atomic uint32_t *word, uint32_t target, unsigned spin, int64_t timeout_ns,
                     _Atomic uint32_t *abort_word, uint32_t *out);

/* What the _aux waits look at besides the word itself (each optional, NULL = none). */
struct pi_futex_aux {
    _Atomic uint32_t *abort_word; /* non-zero: stop waiting, return -PI_ERR_PEER */
    _Atomic uint32_t *sleepers;   /* counted while asleep, for pi_futex_wake_sleepers */
    int64_t spin_ns;              /* > 0: after the spin reads, keep spinning until this long since the
                                     wait began, past PI_SPIN_YIELD_NS (lib/cpus.h) yielding the CPU
                                     every 64 reads, then sleep (a waiter that expects the word soon) */
};

/* As pi_futex_wait_ne / _ge, with an abort word and a sleeper count: while asleep the wait counts
 * itself in *aux->sleepers, so the writer may skip the wake system call with
 * pi_futex_wake_sleepers when nobody sleeps. aux may be NULL. */
int pi_futex_wait_ne_aux(_Atomic uint32_t *word, uint32_t seen, unsigned spin, int64_t timeout_ns,
                         const struct pi_futex_aux *aux, uint32_t *out);
int pi_futex_wait_ge_aux(_Atomic uint32_t *word, uint32_t target, unsigned spin, int64_t timeout_ns,
                         const struct pi_futex_aux *aux, uint32_t *out);

/* Spin budget (pause iterations, about 50-100 us on current x86) for a hand-off between n_procs
 * processes: PI_FUTEX_SPIN_DEFAULT when each of them can have a CPU of its own (counting the CPUs
 * this process may run on, so taskset and cpusets are honoured), else 0. A waiter that spins while
 * the process it waits for has no CPU only delays it: measured in doc/ipc.md, spinning made the
 * exchange 2-4x slower on 2 cores with 3 processes and ~5x faster with a core each. */
#define PI_FUTEX_SPIN_DEFAULT 2000u
unsigned pi_futex_spin_budget(unsigned n_procs);

/* Longest single futex sleep while an abort word is watched (see pi_futex_wait_ne). */
#define PI_FUTEX_ABORT_SLICE_NS (20 * 1000 * 1000)

#endif
