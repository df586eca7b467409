/* tests/unit/test-futex.c - cross-process futex waits (ipc/futex.h): ping-pong between two processes
 * thousands of times with a payload that must arrive in order, timeouts, wrap-around sequences,
 * and an abort word that wakes a sleeping peer. */
#include "config.h"
#include "ipc/futex.h"
#include "ipc/shm.h"
#include "lib/common.h"
#include "lib/log.h"
#include "tests/tap.h"

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define ROUNDS 5000

/* The shared page of the ping-pong: each word on its own line, as in the real exchange. */
struct pingpong {
    _Alignas(64) _Atomic uint32_t ping; /* parent writes odd 2i+1 */
    _Atomic uint32_t ping_sleepers;     /* the child, while asleep on ping */
    _Alignas(64) _Atomic uint32_t pong; /* child writes even 2i+2 */
    _Atomic uint32_t pong_sleepers;
    _Alignas(64) _Atomic uint32_t abort;
    _Alignas(64) uint64_t payload[8];   /* plain memory, published by the release store of ping */
    uint64_t reply[8];                  /* plain memory, published by the release store of pong */
};

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* Child: answer every ping, checking the payload the parent wrote before it. Exit 0 = in order.
 * With `sleepers`, waits count themselves and wakes are skipped when nobody sleeps. */
static int pong_child(struct pingpong *pp, unsigned spin, int sleepers, int64_t spin_ns)
{
    struct pi_futex_aux aux = {.sleepers = sleepers ? &pp->ping_sleepers : NULL, .spin_ns = spin_ns};
    for (uint32_t i = 0; i < ROUNDS; i++) {
        uint32_t v;
        if (pi_futex_wait_ge_aux(&pp->ping, 2 * i + 1, spin, 5000000000LL, &aux, &v) < 0) return 2;
        if (v != 2 * i + 1) return 3; /* a skipped or repeated round */
        for (unsigned k = 0; k < 8; k++) {
            if (pp->payload[k] != mix(i * 8 + k)) return 4; /* payload not visible yet: ordering broken */
            pp->reply[k] = ~pp->payload[k];
        }
        atomic_store_explicit(&pp->pong, 2 * i + 2, memory_order_seq_cst);
        if (pi_futex_wake_sleepers(&pp->pong, aux.sleepers ? &pp->pong_sleepers : NULL, 1) < 0) return 5;
    }
    return 0;
}

static void test_pingpong(struct pingpong *pp, unsigned spin, int sleepers, int64_t spin_ns)
{
    struct pi_futex_aux aux = {.sleepers = sleepers ? &pp->pong_sleepers : NULL, .spin_ns = spin_ns};
    int st = -1, ok = 1;
    int64_t t0;
    pid_t pid;
    atomic_store(&pp->ping, 0);
    atomic_store(&pp->pong, 0);
    pid = fork();
    if (pid == 0) {
        alarm(20); /* never outlive a parent that died */
        _exit(pong_child(pp, spin, sleepers, spin_ns));
    }
    t0 = pi_clock_ns();
    for (uint32_t i = 0; i < ROUNDS && ok; i++) {
        uint32_t v;
        for (unsigned k = 0; k < 8; k++) pp->payload[k] = mix(i * 8 + k);
        atomic_store_explicit(&pp->ping, 2 * i + 1, memory_order_seq_cst);
        if (pi_futex_wake_sleepers(&pp->ping, sleepers ? &pp->ping_sleepers : NULL, 1) < 0) ok = 0;
        if (pi_futex_wait_ge_aux(&pp->pong, 2 * i + 2, spin, 5000000000LL, &aux, &v) < 0 || v != 2 * i + 2) ok = 0;
        for (unsigned k = 0; k < 8 && ok; k++) ok = pp->reply[k] == ~mix(i * 8 + k);
    }
    if (!ok) kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    tap_ok(ok && WIFEXITED(st) && WEXITSTATUS(st) == 0,
           "%d ping-pong rounds between processes, spin %u, timed spin %lld us, %s, in order", ROUNDS, spin,
           (long long)(spin_ns / 1000), sleepers ? "wake skipped without sleepers" : "always woken");
    if (WIFEXITED(st) && WEXITSTATUS(st)) tap_diag("child exit %d", WEXITSTATUS(st));
    tap_diag("%.2f us per round trip", (double)(pi_clock_ns() - t0) / ROUNDS / 1000.0);
    tap_ok(atomic_load(&pp->ping_sleepers) == 0 && atomic_load(&pp->pong_sleepers) == 0, "no sleeper left counted");
}

static void test_timeouts(struct pingpong *pp)
{
    int64_t t0;
    uint32_t v = 0;
    int rc;
    atomic_store(&pp->ping, 7);
    t0 = pi_clock_ns();
    rc = pi_futex_wait(&pp->ping, 7, 50 * 1000000LL);
    t0 = pi_clock_ns() - t0;
    tap_is_int(rc, -PI_ERR_TIMEOUT, "futex wait with nobody waking times out");
    /* Never early; the upper bound only tells a timeout from a hang (a loaded CI box is slow). */
    tap_ok(t0 >= 45 * 1000000LL && t0 < 10000 * 1000000LL, "after at least 50 ms, not a hang (%.1f ms)", t0 / 1e6);
    tap_is_int(pi_futex_wait(&pp->ping, 8, 50 * 1000000LL), 0, "wait on a changed value returns at once");
    t0 = pi_clock_ns();
    rc = pi_futex_wait_ne(&pp->ping, 7, 100, 30 * 1000000LL, NULL, &v);
    t0 = pi_clock_ns() - t0;
    tap_ok(rc == -PI_ERR_TIMEOUT && t0 >= 25 * 1000000LL, "wait_ne times out after spinning and sleeping");
    tap_ok(pi_futex_wait_ne(&pp->ping, 6, 0, 0, NULL, &v) == 0 && v == 7, "wait_ne with a changed word returns it");
    tap_ok(pi_futex_wait_ge(&pp->ping, 7, 0, 0, NULL, &v) == 0 && v == 7, "wait_ge reached");
    tap_is_int(pi_futex_wait_ge(&pp->ping, 8, 0, 0, NULL, &v), -PI_ERR_TIMEOUT, "wait_ge with zero timeout");
    struct pi_futex_aux aux = {.abort_word = &pp->abort};
    atomic_store(&pp->abort, 3);
    tap_is_int(pi_futex_wait_ne(&pp->ping, 7, 10, 1000000000LL, &pp->abort, &v), -PI_ERR_PEER,
               "a set abort word ends wait_ne");
    tap_is_int(pi_futex_wait_ge_aux(&pp->ping, 8, 10, 1000000000LL, &aux, &v), -PI_ERR_PEER,
               "a set abort word ends wait_ge_aux");
    atomic_store(&pp->abort, 0);
}

/* The timed spin (pi_futex_aux.spin_ns): a hand-off between processes whose waits spin 2 ms before
 * sleeping stays in order, and a spin longer than the timeout never outlasts it. */
static void test_spin_ns(struct pingpong *pp)
{
    uint32_t v = 0;
    atomic_store(&pp->ping, 7);
    struct pi_futex_aux aux = {.spin_ns = INT64_C(10) * 1000 * 1000 * 1000};
    int64_t t0 = pi_clock_ns();
    int rc = pi_futex_wait_ne_aux(&pp->ping, 7, 0, 20 * 1000000LL, &aux, &v);
    t0 = pi_clock_ns() - t0;
    /* the bound tells a timeout from the 10 s spin, not a speed (a loaded CI box is slow) */
    tap_ok(rc == -PI_ERR_TIMEOUT && t0 < 5000 * 1000000LL,
           "a 10 s timed spin with a 20 ms timeout times out with the timeout (%.1f ms)", t0 / 1e6);
    tap_ok(pi_futex_wait_ne_aux(&pp->ping, 6, 0, 0, &aux, &v) == 0 && v == 7, "a timed spin on a changed word returns it");
}

static void test_spin_budget(void)
{
    cpu_set_t set;
    unsigned n = sched_getaffinity(0, sizeof set, &set) == 0 ? (unsigned)CPU_COUNT(&set) : 1;
    tap_is_int(pi_futex_spin_budget(1), PI_FUTEX_SPIN_DEFAULT, "one process always has a CPU: spin");
    tap_is_int(pi_futex_spin_budget(n), PI_FUTEX_SPIN_DEFAULT, "as many processes as CPUs: spin");
    tap_is_int(pi_futex_spin_budget(n + 1), 0, "more processes than CPUs: sleep at once");
}

static void test_wrap(struct pingpong *pp)
{
    uint32_t v = 0;
    tap_ok(pi_seq_reached(5, 5) && pi_seq_reached(6, 5) && !pi_seq_reached(4, 5), "seq_reached basics");
    tap_ok(pi_seq_reached(2, UINT32_MAX - 1) && !pi_seq_reached(UINT32_MAX - 1, 2), "seq_reached across the wrap");
    atomic_store(&pp->ping, 1); /* 1 is past 0xfffffffe modulo 2^32 */
    tap_ok(pi_futex_wait_ge(&pp->ping, UINT32_MAX - 1, 0, 0, NULL, &v) == 0 && v == 1, "wait_ge across the wrap");
}

/* A child sleeps on a word nobody bumps; the parent sets the abort word and wakes it. */
static void test_abort_wakes(struct pingpong *pp)
{
    int st = -1;
    int64_t t0;
    pid_t pid;
    atomic_store(&pp->ping, 0);
    atomic_store(&pp->abort, 0);
    pid = fork();
    if (pid == 0) {
        alarm(10);
        int rc = pi_futex_wait_ne(&pp->ping, 0, 0, PI_FUTEX_FOREVER, &pp->abort, NULL);
        _exit(rc == -PI_ERR_PEER ? 0 : 1);
    }
    usleep(50 * 1000); /* let it go to sleep */
    t0 = pi_clock_ns();
    atomic_store(&pp->abort, PI_ERR_PEER);
    pi_futex_wake(&pp->ping, INT32_MAX);
    waitpid(pid, &st, 0);
    t0 = pi_clock_ns() - t0;
    tap_ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "abort wakes a peer sleeping without timeout");
    tap_ok(t0 < 8000 * 1000000LL, "within %.1f ms (bound generous for loaded CI)", t0 / 1e6);
}

/* A timeout of INT64_MAX means "practically forever": the deadline saturates instead of wrapping
 * into the past, so the wait sleeps until a child bumps the word rather than timing out at once. */
static void test_huge_timeout(struct pingpong *pp)
{
    int st = -1, rc;
    uint32_t v = 0;
    pid_t pid;
    atomic_store(&pp->ping, 40);
    atomic_store(&pp->abort, 0);
    pid = fork();
    if (pid == 0) {
        usleep(30 * 1000);
        atomic_store_explicit(&pp->ping, 41, memory_order_seq_cst);
        pi_futex_wake(&pp->ping, INT32_MAX);
        _exit(0);
    }
    rc = pi_futex_wait_ge(&pp->ping, 41, 0, INT64_MAX, &pp->abort, &v);
    waitpid(pid, &st, 0);
    tap_ok(rc == 0 && v == 41, "a wait with timeout INT64_MAX waits for the value (rc %d)", rc);
    tap_ok(pi_futex_deadline(INT64_MAX) == INT64_MAX && pi_futex_deadline(0) <= pi_clock_ns(),
           "pi_futex_deadline saturates and is not in the future for 0");
}

int main(void)
{
    uint64_t size = sizeof(struct pingpong);
    pi_shm_t *shm;
    struct pingpong *pp;
    alarm(30);
    pi_log_set_program("test-futex");
    shm = pi_shm_new("futex-test", PI_SHM_KIND_TEST, &size, 1);
    if (!shm) tap_bail("cannot create the shared page");
    pp = pi_shm_section(shm, 0, NULL);
    test_pingpong(pp, 0, 0, 0);
    test_pingpong(pp, 2000, 0, 0);
    test_pingpong(pp, 0, 1, 0);
    test_pingpong(pp, 30, 1, 0); /* short spins: many waits sleep just as the value changes */
    test_pingpong(pp, 2000, 1, 0);
    test_pingpong(pp, 0, 1, 2 * 1000 * 1000); /* the timed spin of a serving CPU worker */
    test_timeouts(pp);
    test_spin_ns(pp);
    test_wrap(pp);
    test_spin_budget();
    test_abort_wakes(pp);
    test_huge_timeout(pp);
    pi_shm_destroy(&shm);
    return tap_done();
}
