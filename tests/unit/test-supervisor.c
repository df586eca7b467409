/*
 * tests/unit/test-supervisor.c - the coordinator's supervisor of worker processes (coordinator/supervisor.h),
 * with real child processes: small shell commands and this program re-executed as a worker
 * (--worker MODE ...: a real control link, ipc/link.h).
 *   - death detection: a child that exits with a random status, one killed by a signal and one whose
 *     exec fails are each reported once to on_death, within a bound, with their wait status;
 *   - registration: real workers (one GPU, two CPU) say HELLO and READY; the snapshot shows their
 *     role, index, pid, NUMA node, cores, neurons and bytes; pi_super_stop_all ends them through
 *     SHUTDOWN (each leaves a mark on a clean exit) well before the grace period;
 *   - liveness: a worker stopped with SIGSTOP, and one whose main thread hangs after arming the
 *     link's stall check, go silent and are killed and reported;
 *   - pi_super_wait_ready: a timeout when a child never registers, -PI_ERR_PEER when one died;
 *     pi_super_stop_all kills what ignores SHUTDOWN after the grace period and reports no death;
 *   - restart: death, stop and spawn again, several times: the new workers come up, and no file
 *     descriptor or zombie is left behind (also over pi_super_new/destroy);
 *   - the keep list: a kept descriptor is inherited, another close-on-exec one is not, and the flag
 *     stays set in this process;
 *   - other peers on the endpoint: garbage, a HELLO for an unknown pid or with the wrong role, and a
 *     second HELLO for a registered worker are ignored, READY from an unregistered peer too;
 *   - the table's bound: the 66th worker is refused;
 *   - a worker's death leaves its live peers BROKEN at once; workers ignore SIGINT.
 * Every wait is bounded; the whole program runs under alarm().
 */
#include "config.h"
#include "coordinator/supervisor.h"
#include "ipc/control.h"
#include "ipc/futex.h"
#include "ipc/link.h"
#include "lib/common.h"
#include "tests/tap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MS (INT64_C(1000000))

static uint64_t rng_state;
static char self_exe[PATH_MAX];
static char rundir[256], ep[200];

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

static void msleep(int ms) { usleep((useconds_t)ms * 1000); }

/* ---- what on_death saw ---- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int count; /* reports so far */
    int last_slot;
    int64_t last_ns;
} deaths = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, -1, 0};

static void on_death(void *ctx, int slot)
{
    (void)ctx;
    pthread_mutex_lock(&deaths.mu);
    deaths.count++;
    deaths.last_slot = slot;
    deaths.last_ns = pi_clock_ns();
    pthread_cond_broadcast(&deaths.cv);
    pthread_mutex_unlock(&deaths.mu);
}

static int death_count(void)
{
    pthread_mutex_lock(&deaths.mu);
    int n = deaths.count;
    pthread_mutex_unlock(&deaths.mu);
    return n;
}

/* Wait until on_death has been called more than `before` times, at most ms. True when it was. */
static bool wait_death(int before, int ms)
{
    const int64_t end = pi_clock_ns() + ms * MS;
    pthread_mutex_lock(&deaths.mu);
    while (deaths.count <= before && pi_clock_ns() < end) {
        pthread_mutex_unlock(&deaths.mu);
        msleep(2);
        pthread_mutex_lock(&deaths.mu);
    }
    bool ok = deaths.count > before;
    pthread_mutex_unlock(&deaths.mu);
    return ok;
}

/* The snapshot entry of pid (false if none). Called before a check, not inside tap_ok's condition:
 * the message's arguments, which print *out, may be evaluated before the condition. */
static bool info_of(pi_super_t *s, pid_t pid, struct pi_worker_info *out)
{
    static struct pi_worker_info all[PI_SUPER_MAX_WORKERS];
    size_t n = pi_super_snapshot(s, all, PI_SUPER_MAX_WORKERS);
    for (size_t i = 0; i < n && i < PI_SUPER_MAX_WORKERS; i++)
        if (all[i].pid == pid) {
            *out = all[i];
            return true;
        }
    return false;
}

static pid_t pid_of(pi_super_t *s, int slot)
{
    struct pi_worker_info all[8];
    size_t n = pi_super_snapshot(s, all, 8);
    /* slots fill from 0 and the snapshot lists them in slot order: slot k is the k-th when all
     * lower slots are used, which holds in every test here */
    return slot >= 0 && (size_t)slot < n && n <= 8 ? all[slot].pid : -1;
}

/* ---- what the process leaves behind ---- */

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* The descriptor count once ZeroMQ's I/O thread has closed what departed peers left (it does so
 * asynchronously): two reads 100 ms apart that agree, or the last read after 3 s. */
static int settled_fds(void)
{
    int n = count_fds();
    for (int i = 0; i < 30; i++) {
        msleep(100);
        int m = count_fds();
        if (m == n) break;
        n = m;
    }
    return n;
}

/* Children of this process that are zombies (state Z in /proc/PID/stat). */
static int count_zombies(void)
{
    DIR *d = opendir("/proc");
    if (!d) return -1;
    int n = 0;
    char path[300], buf[512];
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        const char *rp = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
        char state;
        int ppid;
        if (rp && sscanf(rp + 1, " %c %d", &state, &ppid) == 2 && ppid == getpid() && state == 'Z') n++;
    }
    closedir(d);
    return n;
}

/* ---- spawning ---- */

static int spawn_sh(pi_super_t *s, const char *cmd)
{
    char *argv[] = {"/bin/sh", "-c", (char *)cmd, NULL};
    return pi_super_spawn(s, PI_ROLE_CPU_WORKER, 0, argv, NULL, 0);
}

/* This program as a worker: --worker MODE ENDPOINT ROLE INDEX NEURONS MEM_BYTES [FD...] */
static int spawn_worker(pi_super_t *s, const char *mode, int role, int index, uint64_t neurons, uint64_t bytes,
                        const int *keep, int n_keep, char *const *extra)
{
    char r[16], i[16], n[32], b[32];
    snprintf(r, sizeof r, "%d", role);
    snprintf(i, sizeof i, "%d", index);
    snprintf(n, sizeof n, "%llu", (unsigned long long)neurons);
    snprintf(b, sizeof b, "%llu", (unsigned long long)bytes);
    char *argv[12] = {self_exe, "--worker", (char *)mode, ep, r, i, n, b, NULL};
    for (int k = 0; extra && extra[k] && k < 3; k++) argv[8 + k] = extra[k];
    return pi_super_spawn(s, role, index, argv, keep, n_keep);
}

static const char *status_str(int st, char *buf, size_t len)
{
    if (WIFEXITED(st)) snprintf(buf, len, "exit %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) snprintf(buf, len, "signal %d", WTERMSIG(st));
    else snprintf(buf, len, "status %#x", st);
    return buf;
}

/* ---- tests ---- */

static void test_deaths(pi_super_t *s)
{
    char cmd[64], sb[32];
    struct pi_worker_info w = {0};
    bool have;

    /* an exit status */
    const int code = 1 + (int)(rnd() % 120);
    snprintf(cmd, sizeof cmd, "exit %d", code);
    int before = death_count();
    int64_t t0 = pi_clock_ns();
    int slot = spawn_sh(s, cmd);
    bool seen = wait_death(before, 3000);
    double dt = (double)(deaths.last_ns - t0) / 1e9;
    pid_t pid = pid_of(s, slot);
    tap_ok(slot >= 0 && seen && deaths.last_slot == slot, "sh -c '%s': reported to on_death for slot %d after %.3f s",
           cmd, slot, dt);
    have = info_of(s, pid, &w);
    tap_ok(have && w.state == PI_WORKER_DEAD && WIFEXITED(w.exit_status) && WEXITSTATUS(w.exit_status) == code,
           "the snapshot shows it dead with its status (%s)", status_str(w.exit_status, sb, sizeof sb));
    tap_is_int(pi_super_wait_ready(s, 2000), -PI_ERR_PEER, "pi_super_wait_ready: -PI_ERR_PEER once a worker died");
    msleep(300);
    tap_is_int(death_count(), before + 1, "a death is reported once");
    pi_super_stop_all(s, 100);

    /* a signal, with the latency of the report */
    before = death_count();
    slot = spawn_sh(s, "exec sleep 30");
    pid = pid_of(s, slot);
    msleep(100);
    const int sig = rnd() % 2 ? SIGTERM : SIGKILL;
    t0 = pi_clock_ns();
    kill(pid, sig);
    seen = wait_death(before, 3000);
    dt = (double)(deaths.last_ns - t0) / 1e9;
    tap_ok(seen && deaths.last_slot == slot && dt < 1.0, "a worker killed by signal %d is reported %.3f s later", sig,
           dt);
    have = info_of(s, pid, &w);
    tap_ok(have && w.state == PI_WORKER_DEAD && WIFSIGNALED(w.exit_status) && WTERMSIG(w.exit_status) == sig,
           "... with its signal (%s)", status_str(w.exit_status, sb, sizeof sb));
    pi_super_stop_all(s, 100);

    /* exec failure */
    before = death_count();
    char *argv[] = {"/nonexistent/pi-worker", NULL};
    slot = pi_super_spawn(s, PI_ROLE_GPU_WORKER, 0, argv, NULL, 0);
    pid = pid_of(s, slot);
    seen = wait_death(before, 3000);
    have = info_of(s, pid, &w);
    tap_ok(slot >= 0 && seen && have && WIFEXITED(w.exit_status) && WEXITSTATUS(w.exit_status) == 127,
           "a program that cannot be executed: reported, exit status 127 (%s)",
           status_str(w.exit_status, sb, sizeof sb));
    pi_super_stop_all(s, 100);
}

static void test_never_ready(pi_super_t *s)
{
    int before = death_count();
    int slot = spawn_sh(s, "exec sleep 30");
    pid_t pid = pid_of(s, slot);
    int64_t t0 = pi_clock_ns();
    int rc = pi_super_wait_ready(s, 200);
    double dt = (double)(pi_clock_ns() - t0) / 1e9;
    tap_ok(rc == -PI_ERR_TIMEOUT && dt >= 0.19 && dt < 2.0,
           "a child that never registers: wait_ready times out after %.2f s", dt);
    struct pi_worker_info w = {0};
    bool have;
    have = info_of(s, pid, &w);
    tap_ok(have && w.state == PI_WORKER_STARTING && w.heartbeat_age_ms == -1 && w.numa_node == -1,
           "it is STARTING, with no heartbeat and no NUMA node yet");
    /* sleep ignores SHUTDOWN (it never registered): killed after the grace period */
    t0 = pi_clock_ns();
    pi_super_stop_all(s, 300);
    dt = (double)(pi_clock_ns() - t0) / 1e9;
    errno = 0;
    const bool reaped = waitpid(pid, NULL, WNOHANG) < 0 && errno == ECHILD;
    tap_ok(dt >= 0.29 && dt < 3.0 && reaped, "pi_super_stop_all: killed after its 0.3 s grace (%.2f s) and reaped", dt);
    tap_ok(pi_super_snapshot(s, NULL, 0) == 0, "no workers afterwards");
    msleep(200);
    tap_is_int(death_count(), before, "the deaths of stopped workers are not reported");
}

/* Where a worker leaves its mark on a clean exit. */
static void mark_path(char *buf, size_t len, long pid) { snprintf(buf, len, "%s/clean.%ld", rundir, pid); }

static void test_workers(pi_super_t *s)
{
    struct {
        int role, index, slot;
        uint64_t neurons, bytes;
        pid_t pid;
    } w[3] = {
        {PI_ROLE_GPU_WORKER, 0, 0, 0, 0, 0}, {PI_ROLE_CPU_WORKER, 0, 0, 0, 0, 0}, {PI_ROLE_CPU_WORKER, 1, 0, 0, 0, 0}};
    for (int k = 0; k < 3; k++) {
        w[k].neurons = 1 + rnd();
        w[k].bytes = ((uint64_t)rnd() << 16) + k;
        w[k].slot = spawn_worker(s, "good", w[k].role, w[k].index, w[k].neurons, w[k].bytes, NULL, 0, NULL);
        w[k].pid = pid_of(s, w[k].slot);
    }
    int before = death_count();
    int rc = pi_super_wait_ready(s, 20000);
    tap_is_int(rc, 0, "three real workers (one GPU, two CPU) registered and READY");
    struct pi_worker_info info[4];
    size_t n = pi_super_snapshot(s, info, 4);
    int good = 0;
    for (size_t i = 0; i < n && i < 3; i++) {
        const int k = (int)i;
        const struct pi_worker_info *x = &info[i];
        /* the worker says cores {index*2 + 100, index*2 + 101} and NUMA node index % 2 */
        good += x->pid == w[k].pid && x->role == w[k].role && x->index == w[k].index && x->state == PI_WORKER_READY &&
                x->neurons == w[k].neurons && x->mem_bytes == w[k].bytes && x->numa_node == w[k].index % 2 &&
                x->n_cores == 2 && x->cores[0] == (uint32_t)(w[k].index * 2 + 100) &&
                x->cores[1] == (uint32_t)(w[k].index * 2 + 101) && x->heartbeat_age_ms >= 0 &&
                x->heartbeat_age_ms < 1000;
    }
    tap_ok(n == 3 && good == 3,
           "the snapshot shows each one's role, index, pid, NUMA node, cores, neurons, bytes and a "
           "fresh heartbeat (%d of %zu)",
           good, n);
    msleep(PI_SUPER_SILENCE_MS + 300);
    n = pi_super_snapshot(s, info, 4);
    int live = 0;
    for (size_t i = 0; i < n && i < 3; i++) live += info[i].state == PI_WORKER_READY && info[i].heartbeat_age_ms < 1000;
    tap_ok(live == 3 && death_count() == before,
           "after the silence limit they are still READY: the heartbeats flow both ways");
    const int64_t t0 = pi_clock_ns();
    pi_super_stop_all(s, 8000);
    const double dt = (double)(pi_clock_ns() - t0) / 1e9;
    int clean = 0;
    for (int k = 0; k < 3; k++) {
        char p[300];
        mark_path(p, sizeof p, (long)w[k].pid);
        clean += access(p, F_OK) == 0;
        unlink(p);
    }
    tap_ok(clean == 3 && dt < 4.0,
           "pi_super_stop_all: all three left through SHUTDOWN (%d clean exits) in %.2f s, "
           "not at the 8 s grace",
           clean, dt);
    tap_is_int(death_count(), before, "and none of them was reported dead");
}

/* A worker's death breaks its pipeline: its live peers leave READY when the death is seen, not at the
 * next request (issue 19: pi-ctl workers showed the GPU worker ready). */
static void test_peer_death(pi_super_t *s)
{
    const int g = spawn_worker(s, "good", PI_ROLE_GPU_WORKER, 0, 1, 1, NULL, 0, NULL);
    const int c = spawn_worker(s, "good", PI_ROLE_CPU_WORKER, 0, 1, 1, NULL, 0, NULL);
    const pid_t gp = pid_of(s, g), cp = pid_of(s, c);
    tap_is_int(pi_super_wait_ready(s, 20000), 0, "a GPU and a CPU worker READY");
    const int before = death_count();
    if (cp > 0) kill(cp, SIGKILL);
    const bool seen = wait_death(before, 3000);
    struct pi_worker_info w = {0};
    const bool have = info_of(s, gp, &w);
    tap_ok(seen && have && w.state == PI_WORKER_BROKEN && kill(gp, 0) == 0,
           "the CPU worker's death leaves the live GPU worker BROKEN, not READY (state %d)", (int)w.state);
    pi_super_stop_all(s, 2000);
    char mark[300];
    mark_path(mark, sizeof mark, (long)gp); /* a clean exit's mark */
    unlink(mark);
    tap_is_int(death_count(), before + 1, "only the dead one is reported");
}

/* Ctrl-C on a terminal signals the whole process group: workers ignore SIGINT (the coordinator acts). */
static void test_sigint(pi_super_t *s)
{
    const int before = death_count();
    const int slot = spawn_sh(s, "kill -INT $$; exit 7");
    const pid_t pid = pid_of(s, slot);
    const bool seen = wait_death(before, 3000);
    struct pi_worker_info w = {0};
    char sb[32];
    const bool have = info_of(s, pid, &w);
    tap_ok(seen && have && WIFEXITED(w.exit_status) && WEXITSTATUS(w.exit_status) == 7, "a worker ignores SIGINT (%s)",
           status_str(w.exit_status, sb, sizeof sb));
    pi_super_stop_all(s, 100);
}

/* A worker that goes silent (SIGSTOP), and one whose main thread hangs with the stall check armed. */
static void test_silent(pi_super_t *s, const char *mode, const char *what)
{
    int before = death_count();
    int slot = spawn_worker(s, mode, PI_ROLE_GPU_WORKER, 0, 1, 1, NULL, 0, NULL);
    pid_t pid = pid_of(s, slot);
    int rc = pi_super_wait_ready(s, 20000);
    const int64_t t0 = pi_clock_ns();
    bool seen = wait_death(before, 10000);
    const double dt = (double)(deaths.last_ns - t0) / 1e9;
    struct pi_worker_info w = {0};
    bool have;
    char sb[32];
    have = info_of(s, pid, &w);
    tap_ok(rc == 0 && seen && have && WIFSIGNALED(w.exit_status) && WTERMSIG(w.exit_status) == SIGKILL &&
               dt > PI_SUPER_SILENCE_MS / 1000.0 * 0.8 && dt < 6.0,
           "%s: killed and reported %.2f s after READY (%s)", what, dt, status_str(w.exit_status, sb, sizeof sb));
    pi_super_stop_all(s, 100);
}

static void test_restart(pi_super_t *s)
{
    const int fds0 = settled_fds();
    int ok_cycles = 0, reports = 0;
    enum { CYCLES = 4 };
    for (int c = 0; c < CYCLES; c++) {
        int before = death_count();
        int slot = spawn_worker(s, "good", PI_ROLE_GPU_WORKER, 0, (uint64_t)c + 1, 7, NULL, 0, NULL);
        int rc = pi_super_wait_ready(s, 20000);
        pid_t pid = pid_of(s, slot);
        struct pi_worker_info w;
        bool ready = rc == 0 && info_of(s, pid, &w) && w.neurons == (uint64_t)c + 1;
        kill(pid, SIGKILL); /* a crash */
        bool seen = wait_death(before, 3000);
        reports += death_count() - before;
        pi_super_stop_all(s, 1000);
        ok_cycles += slot == 0 && ready && seen;
    }
    tap_ok(ok_cycles == CYCLES && reports == CYCLES,
           "%d crash-and-restart cycles: each restarted worker came up READY in "
           "slot 0, each crash reported once (%d ok, %d reports)",
           CYCLES, ok_cycles, reports);
    const int fds1 = settled_fds();
    tap_ok(fds0 > 0 && fds1 == fds0, "no descriptor leaked over the cycles (%d before, %d after)", fds0, fds1);
    tap_is_int(count_zombies(), 0, "no zombie child left");
}

static void test_keep(pi_super_t *s)
{
    int a[2], b[2];
    if (pipe2(a, O_CLOEXEC) != 0 || pipe2(b, O_CLOEXEC) != 0) tap_bail("pipe2");
    char fa[16], fb[16];
    snprintf(fa, sizeof fa, "%d", a[1]);
    snprintf(fb, sizeof fb, "%d", b[1]);
    char *extra[] = {fa, fb, NULL};
    int before = death_count();
    int slot = spawn_worker(s, "fds", PI_ROLE_CPU_WORKER, 0, 1, 1, &a[1], 1, extra);
    pid_t pid = pid_of(s, slot);
    bool seen = wait_death(before, 5000);
    struct pi_worker_info w = {0};
    bool have;
    char sb[32];
    have = info_of(s, pid, &w);
    tap_ok(seen && have && WIFEXITED(w.exit_status) && WEXITSTATUS(w.exit_status) == 0,
           "the kept descriptor is open in the worker, another close-on-exec one is not (%s)",
           status_str(w.exit_status, sb, sizeof sb));
    tap_ok(fcntl(a[1], F_GETFD) & FD_CLOEXEC, "the kept descriptor is still close-on-exec in this process");
    pi_super_stop_all(s, 100);
    close(a[0]), close(a[1]), close(b[0]), close(b[1]);
}

/* A descriptor the coordinator inherited without close-on-exec (a pipe from the shell that started it,
 * a log file, a socket of a service manager) is not passed on to a worker: only what keep names is. */
static void test_inherited(pi_super_t *s)
{
    int a[2], c[2];
    if (pipe2(a, O_CLOEXEC) != 0 || pipe(c) != 0) tap_bail("pipe");
    char fa[16], fc[16];
    snprintf(fa, sizeof fa, "%d", a[1]);
    snprintf(fc, sizeof fc, "%d", c[1]);
    char *extra[] = {fa, fc, NULL};
    int before = death_count();
    int slot = spawn_worker(s, "fds", PI_ROLE_CPU_WORKER, 0, 1, 1, &a[1], 1, extra);
    pid_t pid = pid_of(s, slot);
    bool seen = wait_death(before, 5000);
    struct pi_worker_info w = {0};
    char sb[32];
    bool have = info_of(s, pid, &w);
    tap_ok(seen && have && WIFEXITED(w.exit_status) && WEXITSTATUS(w.exit_status) == 0,
           "an inherited descriptor without close-on-exec is closed in the worker, the kept one open (%s)",
           status_str(w.exit_status, sb, sizeof sb));
    tap_ok(fcntl(c[1], F_GETFD) >= 0, "the inherited descriptor stays open in this process");
    pi_super_stop_all(s, 100);
    close(a[0]), close(a[1]), close(c[0]), close(c[1]);
}

/* A DEALER on the supervisor's endpoint, speaking for itself. */
static void dealer_send(void *d, uint16_t type, uint32_t pid, uint32_t role)
{
    struct pi_ctl_msg m = {.type = type};
    if (type == PI_CTL_HELLO) {
        m.u.hello.role = role;
        m.u.hello.pid = pid;
        m.u.hello.numa_node = 3;
        m.u.hello.proto_version = PI_CTL_VERSION;
    } else if (type == PI_CTL_READY) {
        m.u.ready.neurons = pid; /* recognisable */
        m.u.ready.mem_bytes = role;
    }
    pi_ctl_send(d, NULL, 0, &m);
}

static void test_peers(pi_super_t *s)
{
    void *ctx = zmq_ctx_new();
    void *d1 = pi_ctl_socket(ctx, ZMQ_DEALER, 500), *d2 = pi_ctl_socket(ctx, ZMQ_DEALER, 500);
    if (!d1 || !d2 || pi_ctl_connect(d1, ep) != 0 || pi_ctl_connect(d2, ep) != 0) tap_bail("dealers");
    int slot = spawn_sh(s, "exec sleep 30");
    const pid_t pid = pid_of(s, slot);
    struct pi_worker_info w = {0};
    bool have;

    /* garbage, an unknown pid, the wrong role, another protocol version; READY unregistered */
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)rnd();
    zmq_send(d1, junk, sizeof junk, 0);
    zmq_send(d1, junk, 3, ZMQ_SNDMORE);
    zmq_send(d1, junk, 10, 0);
    dealer_send(d1, PI_CTL_HELLO, (uint32_t)pid + 100000u + rnd() % 1000, PI_ROLE_CPU_WORKER);
    dealer_send(d1, PI_CTL_HELLO, (uint32_t)pid, PI_ROLE_GPU_WORKER);
    dealer_send(d1, PI_CTL_READY, 11, 12);
    msleep(300);
    have = info_of(s, pid, &w);
    tap_ok(have && w.state == PI_WORKER_STARTING && w.numa_node == -1 && w.heartbeat_age_ms == -1,
           "garbage, a HELLO for an unknown pid or with the wrong role, READY unregistered: all ignored");

    dealer_send(d1, PI_CTL_HELLO, (uint32_t)pid, PI_ROLE_CPU_WORKER);
    msleep(300);
    have = info_of(s, pid, &w);
    tap_ok(have && w.state == PI_WORKER_STARTING && w.numa_node == 3 && w.heartbeat_age_ms >= 0,
           "a HELLO with the right pid and role registers the peer");
    dealer_send(d2, PI_CTL_HELLO, (uint32_t)pid, PI_ROLE_CPU_WORKER);
    dealer_send(d2, PI_CTL_READY, 21, 22);
    msleep(300);
    have = info_of(s, pid, &w);
    tap_ok(have && w.state == PI_WORKER_STARTING, "a second HELLO from another peer does not take the slot over");
    dealer_send(d1, PI_CTL_READY, 31, 32);
    msleep(300);
    have = info_of(s, pid, &w);
    tap_ok(have && w.state == PI_WORKER_READY && w.neurons == 31 && w.mem_bytes == 32,
           "READY from the registered peer counts (neurons %llu)", (unsigned long long)w.neurons);
    /* the peer now goes quiet: the supervisor kills "the worker" it stands for */
    int before = death_count();
    bool seen = wait_death(before, 5000);
    have = info_of(s, pid, &w);
    tap_ok(seen && have && WIFSIGNALED(w.exit_status) && WTERMSIG(w.exit_status) == SIGKILL,
           "when the registered peer goes silent its process is killed and reported");
    pi_super_stop_all(s, 100);
    pi_ctl_close(&d1);
    pi_ctl_close(&d2);
    zmq_ctx_term(ctx);
}

static void test_full(pi_super_t *s)
{
    int n = 0, slot;
    while (n < PI_SUPER_MAX_WORKERS + 1 && (slot = spawn_sh(s, "exec sleep 30")) >= 0) n++;
    tap_ok(n == PI_SUPER_MAX_WORKERS && slot == -PI_ERR_RANGE, "%d workers fit; the next is refused with -PI_ERR_RANGE",
           PI_SUPER_MAX_WORKERS);
    int before = death_count();
    pi_super_stop_all(s, 100);
    tap_ok(pi_super_snapshot(s, NULL, 0) == 0 && count_zombies() == 0 && death_count() == before,
           "pi_super_stop_all ends and reaps all of them, reporting none");
}

/* ---- the worker side ---- */

static int worker_main(int argc, char **argv)
{
    /* --worker MODE ENDPOINT ROLE INDEX NEURONS MEM [FD...] */
    alarm(30);
    const char *mode = argv[2];
    if (strcmp(mode, "fds") == 0) { /* FD_KEPT FD_NOT_KEPT */
        if (argc < 10) return 3;
        const int kept = atoi(argv[8]), other = atoi(argv[9]);
        const bool kept_open = fcntl(kept, F_GETFD) >= 0, other_open = fcntl(other, F_GETFD) >= 0;
        return kept_open && !other_open ? 0 : 1 + kept_open * 2 + other_open * 4;
    }
    if (pi_link_die_with_parent() != 0) return 4;
    const int index = atoi(argv[5]);
    const uint32_t cores[2] = {(uint32_t)(index * 2 + 100), (uint32_t)(index * 2 + 101)};
    const struct pi_link_opts o = {.endpoint = argv[3],
                                   .role = (uint32_t)atoi(argv[4]),
                                   .index = (uint32_t)index,
                                   .numa_node = index % 2,
                                   .cores = cores,
                                   .n_cores = 2,
                                   .stall_ms = strcmp(mode, "hang") == 0 ? 500u : 0u}; /* this worker only */
    pi_link_t *l = pi_link_start(&o);
    if (!l) return 4;
    msleep(50 + (int)(getpid() % 100)); /* "loading" */
    pi_link_ready(l, strtoull(argv[6], NULL, 10), strtoull(argv[7], NULL, 10));
    pi_link_progress(l);
    if (strcmp(mode, "freeze") == 0) {
        msleep(300); /* READY goes out first */
        raise(SIGSTOP);
    }
    if (strcmp(mode, "hang") == 0) msleep(30000); /* the main thread hangs, the link thread is fine */
    while (!pi_link_stopping(l)) {
        pi_link_progress(l);
        msleep(20);
    }
    pi_link_stop(&l);
    char p[300];
    mark_path(p, sizeof p, (long)getpid());
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 8 && strcmp(argv[1], "--worker") == 0) {
        /* the run directory is the endpoint's folder: ipc://DIR/super.sock */
        snprintf(rundir, sizeof rundir, "%s", argv[3] + 6);
        char *slash = strrchr(rundir, '/');
        if (slash) *slash = '\0';
        return worker_main(argc, argv);
    }
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
    rng_state = seed | 1;
    tap_diag("seed %llu (replay: test-supervisor %llu)", (unsigned long long)seed, (unsigned long long)seed);
    alarm(180);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0) tap_bail("readlink /proc/self/exe");
    if (pi_rundir_create(NULL, rundir, sizeof rundir) != 0 || pi_ctl_endpoint(rundir, "super", ep, sizeof ep) != 0)
        tap_bail("run directory");

    char bad[300];
    snprintf(bad, sizeof bad, "ipc://%s/missing/super.sock", rundir);
    pi_super_t *s = pi_super_new(bad, on_death, NULL);
    tap_ok(s == NULL, "pi_super_new on an endpoint that cannot be bound: NULL");
    pi_super_destroy(&s);
    pi_super_destroy(NULL);

    const int fds0 = count_fds();
    s = pi_super_new(ep, on_death, NULL);
    if (!s) tap_bail("pi_super_new(%s)", ep);
    test_deaths(s);
    test_never_ready(s);
    test_workers(s);
    test_peer_death(s);
    test_sigint(s);
    test_silent(s, "freeze", "a worker stopped with SIGSTOP");
    test_silent(s, "hang", "a worker whose main thread hangs (stall check armed, limit 0.5 s)");
    test_restart(s);
    test_keep(s);
    test_inherited(s);
    test_peers(s);
    test_full(s);
    pi_super_destroy(&s);
    const int fds1 = count_fds();
    tap_ok(s == NULL && fds1 == fds0, "pi_super_destroy gives back every descriptor (%d before pi_super_new, %d after)",
           fds0, fds1);
    tap_ok(pi_rundir_remove(rundir) == 0, "the run directory is removed");
    return tap_done();
}
