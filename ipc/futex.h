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

/* Monotonic clock in nanoseconds. */
int64_t pi_clock_ns(void);

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

/* Longest single futex sleep while an abort word is watched (see pi_futex_wait_ne). */
#define PI_FUTEX_ABORT_SLICE_NS (20 * 1000 * 1000)

#endif
