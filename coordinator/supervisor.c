/*
 * coordinator/supervisor.c - worker processes: spawn, register, heartbeat, death (supervisor.h).
 *
 * DESIGN: one thread owns the ROUTER socket (ZeroMQ sockets are single-threaded) and polls it
 * together with one pidfd per live worker, waking at least every POLL_MS. The worker table is
 * shared with the caller's threads under a mutex; a condition variable signals READY and deaths
 * to pi_super_wait_ready and pi_super_stop_all. A death is detected from the pidfd becoming
 * readable (immediately) or, where pidfd_open is unavailable, by waitpid(WNOHANG) on every wake-up
 * (within POLL_MS). Each worker is reaped exactly once, here, so no zombie is left.
 */
#include "config.h"
#include "coordinator/supervisor.h"
#include "ipc/control.h"
#include "ipc/futex.h"
#include "lib/common.h"
#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define POLL_MS 50
#define ID_MAX 256
#define STOP_KILL_WAIT_MS 10000 /* after SIGKILL, how long pi_super_stop_all waits for the reaping */

struct slot {
    bool used;
    struct pi_worker_info info;
    int pidfd;                /* -1 when unavailable or closed */
    uint8_t id[ID_MAX];       /* ZeroMQ routing id, once HELLO arrived */
    size_t id_len;
    int64_t last_msg_ns;      /* 0 before the first message */
    bool reported;            /* on_death was called */
    bool stopping;            /* we asked it to stop: its death is not an error */
};

struct pi_super {
    void *ctx, *router;
    pthread_t thread;
    _Atomic int quit;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct slot slots[PI_SUPER_MAX_WORKERS];
    pi_super_death_fn on_death;
    void *death_ctx;
    /* Deaths are reported outside mu; cb_mu serialises each report with pi_super_stop_all, which
     * bumps epoch under it: a death seen before a stop but reported after it (the supervisor thread
     * descheduled across a whole restart) belongs to stopped workers and is dropped, instead of
     * marking the next set of workers broken. */
    pthread_mutex_t cb_mu;
    uint64_t epoch;           /* written under cb_mu and mu together, read under either */
    int64_t next_hb_ns;
    bool send_shutdown;       /* pi_super_stop_all asked the thread to send SHUTDOWN */
};

static const char *role_name(int role)
{
    switch (role) {
    case PI_ROLE_GPU_WORKER: return "gpu-worker";
    case PI_ROLE_CPU_WORKER: return "cpu-worker";
    default: return "worker";
    }
}

static int slot_by_pid(pi_super_t *s, pid_t pid)
{
    for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++)
        if (s->slots[i].used && s->slots[i].info.pid == pid) return i;
    return -1;
}

static int slot_by_id(pi_super_t *s, const uint8_t *id, size_t len)
{
    for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++)
        if (s->slots[i].used && s->slots[i].id_len == len && memcmp(s->slots[i].id, id, len) == 0) return i;
    return -1;
}

/* A HELLO: bind the routing id to the worker with that pid (one we forked). A worker says hello once:
 * a second hello for a registered worker from another peer is ignored, so that no other local
 * process can take over a running worker's slot (its real heartbeats would then come from an
 * unregistered peer and it would be killed as silent). The run directory is 0700, so such a peer
 * runs as our user; before the worker's own hello a peer claiming its pid can still take the slot,
 * which costs that start (the worker is then killed as silent and the pipeline restarted). Called
 * with mu held. */
static void on_hello(pi_super_t *s, const uint8_t *id, size_t id_len, const struct pi_ctl_hello *h)
{
    int i = slot_by_pid(s, (pid_t)h->pid);
    if (i < 0) { pi_ctl_peer_warn("hello from unknown pid %u: ignored", h->pid); return; }
    struct slot *w = &s->slots[i];
    if (w->id_len && (w->id_len != id_len || memcmp(w->id, id, id_len) != 0)) {
        pi_warn("%s %d (pid %u): a second hello from another peer: ignored", role_name(w->info.role), w->info.index,
                h->pid);
        return;
    }
    if (h->proto_version != PI_CTL_VERSION || (int)h->role != w->info.role) {
        pi_warn("%s %d (pid %u): hello with role %u, protocol %u (expected %d, %u): ignored", role_name(w->info.role),
                w->info.index, h->pid, h->role, h->proto_version, w->info.role, PI_CTL_VERSION);
        return;
    }
    memcpy(w->id, id, id_len);
    w->id_len = id_len;
    w->info.numa_node = h->numa_node;
    w->info.n_cores = PI_MIN(h->n_cores, PI_SUPER_MAX_CORES);
    if (w->info.n_cores) memcpy(w->info.cores, h->cores, w->info.n_cores * sizeof *h->cores);
    pi_debug("%s %d (pid %d) registered, NUMA node %d, %u cores", role_name(w->info.role), w->info.index, (int)w->info.pid,
             h->numa_node, h->n_cores);
}

/* One message from a worker. */
static void on_message(pi_super_t *s)
{
    uint8_t id[ID_MAX];
    size_t id_len = sizeof id;
    struct pi_ctl_msg m;
    if (pi_ctl_recv(s->router, id, &id_len, &m, NULL) != 0) return; /* rejected and logged, or nothing */
    pthread_mutex_lock(&s->mu);
    if (m.type == PI_CTL_HELLO) on_hello(s, id, id_len, &m.u.hello);
    int i = slot_by_id(s, id, id_len);
    if (i < 0) {
        if (m.type != PI_CTL_HELLO) pi_ctl_peer_warn("%s from an unregistered peer: ignored", pi_ctl_type_name(m.type));
    } else {
        struct slot *w = &s->slots[i];
        w->last_msg_ns = pi_clock_ns();
        if (m.type == PI_CTL_READY && w->info.state == PI_WORKER_STARTING) {
            w->info.state = PI_WORKER_READY;
            w->info.neurons = m.u.ready.neurons;
            w->info.mem_bytes = m.u.ready.mem_bytes;
            pthread_cond_broadcast(&s->cv);
        } else if (m.type == PI_CTL_ERROR) {
            pi_error("%s %d (pid %d) reports: %s (%s)", role_name(w->info.role), w->info.index, (int)w->info.pid,
                     m.u.error.text ? m.u.error.text : "", pi_err_str(m.u.error.code));
        } else if (m.type != PI_CTL_HEARTBEAT && m.type != PI_CTL_HELLO && m.type != PI_CTL_READY) {
            pi_warn("unexpected %s from %s %d: ignored", pi_ctl_type_name(m.type), role_name(w->info.role), w->info.index);
        }
    }
    pthread_mutex_unlock(&s->mu);
    pi_ctl_msg_clear(&m);
}

/* Reap dead workers and kill silent ones; collect the slots to report. Called with mu held. */
static int check_children(pi_super_t *s, int *dead, int cap)
{
    int n = 0;
    int64_t now = pi_clock_ns();
    for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++) {
        struct slot *w = &s->slots[i];
        if (!w->used || w->info.state == PI_WORKER_DEAD) continue;
        int st = 0; /* stays 0 on ECHILD, where waitpid fills nothing */
        pid_t r = waitpid(w->info.pid, &st, WNOHANG);
        if (r == w->info.pid || (r < 0 && errno == ECHILD)) {
            w->info.state = PI_WORKER_DEAD;
            w->info.exit_status = r == w->info.pid ? st : 0;
            if (w->pidfd >= 0) { close(w->pidfd); w->pidfd = -1; }
            if (!w->stopping) {
                if (WIFSIGNALED(st)) pi_error("%s %d (pid %d) was killed by signal %d", role_name(w->info.role), w->info.index, (int)w->info.pid, WTERMSIG(st));
                else pi_error("%s %d (pid %d) exited with status %d", role_name(w->info.role), w->info.index, (int)w->info.pid, WEXITSTATUS(st));
            }
            if (!w->reported && n < cap) { dead[n++] = i; w->reported = true; }
            /* the pipeline is gone with it: its peers, alive, are no longer ready (pi-ctl workers) */
            for (int k = 0; !w->stopping && k < PI_SUPER_MAX_WORKERS; k++) {
                struct slot *p = &s->slots[k];
                if (p->used && !p->stopping && (p->info.state == PI_WORKER_READY || p->info.state == PI_WORKER_STARTING))
                    p->info.state = PI_WORKER_BROKEN;
            }
            pthread_cond_broadcast(&s->cv);
        } else if (w->last_msg_ns && now - w->last_msg_ns > (int64_t)PI_SUPER_SILENCE_MS * 1000000 && !w->stopping) {
            pi_error("%s %d (pid %d) silent for %d ms: killing it", role_name(w->info.role), w->info.index, (int)w->info.pid, PI_SUPER_SILENCE_MS);
            kill(w->info.pid, SIGKILL);
            w->last_msg_ns = 0;
        }
    }
    return n;
}

/* Heartbeats (and SHUTDOWN when asked) to every registered worker. Called with mu held. */
static void send_beats(pi_super_t *s)
{
    int64_t now = pi_clock_ns();
    bool beat = now >= s->next_hb_ns, shut = s->send_shutdown;
    if (!beat && !shut) return;
    s->next_hb_ns = now + (int64_t)PI_SUPER_HEARTBEAT_MS * 1000000;
    s->send_shutdown = false;
    for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++) {
        struct slot *w = &s->slots[i];
        if (!w->used || !w->id_len || w->info.state == PI_WORKER_DEAD) continue;
        struct pi_ctl_msg m = {.type = shut && w->stopping ? PI_CTL_SHUTDOWN : PI_CTL_HEARTBEAT};
        if (m.type == PI_CTL_HEARTBEAT) m.u.heartbeat.seq = (uint64_t)now;
        if (pi_ctl_send(s->router, w->id, w->id_len, &m) != 0) pi_debug("heartbeat to pid %d not sent", (int)w->info.pid);
    }
}

static void *super_main(void *arg)
{
    pi_super_t *s = arg;
    while (!atomic_load(&s->quit)) {
        zmq_pollitem_t items[PI_SUPER_MAX_WORKERS + 1];
        int n = 0;
        items[n++] = (zmq_pollitem_t){s->router, 0, ZMQ_POLLIN, 0};
        pthread_mutex_lock(&s->mu);
        for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++)
            if (s->slots[i].used && s->slots[i].pidfd >= 0) items[n++] = (zmq_pollitem_t){NULL, s->slots[i].pidfd, ZMQ_POLLIN, 0};
        pthread_mutex_unlock(&s->mu);
        int r = zmq_poll(items, n, POLL_MS);
        if (r > 0 && (items[0].revents & ZMQ_POLLIN))
            for (int k = 0; k < 64; k++) {
                int ev = 0;
                size_t evl = sizeof ev;
                if (zmq_getsockopt(s->router, ZMQ_EVENTS, &ev, &evl) != 0 || !(ev & ZMQ_POLLIN)) break;
                on_message(s);
            }
        int dead[PI_SUPER_MAX_WORKERS], nd;
        pthread_mutex_lock(&s->mu);
        const uint64_t epoch = s->epoch; /* with the reaping and the stopping flags, under mu */
        nd = check_children(s, dead, PI_SUPER_MAX_WORKERS);
        send_beats(s);
        bool stopping[PI_SUPER_MAX_WORKERS];
        for (int k = 0; k < nd; k++) stopping[k] = s->slots[dead[k]].stopping;
        pthread_mutex_unlock(&s->mu);
        if (nd > 0) {
            pthread_mutex_lock(&s->cb_mu);
            for (int k = 0; k < nd && s->epoch == epoch; k++)
                if (!stopping[k] && s->on_death) s->on_death(s->death_ctx, dead[k]);
            pthread_mutex_unlock(&s->cb_mu);
        }
    }
    return NULL;
}

pi_super_t *pi_super_new(const char *endpoint, pi_super_death_fn on_death, void *ctx)
{
    pi_super_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->cb_mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->on_death = on_death;
    s->death_ctx = ctx;
    s->ctx = zmq_ctx_new();
    if (s->ctx) s->router = pi_ctl_socket(s->ctx, ZMQ_ROUTER, 100);
    if (!s->router || pi_ctl_bind(s->router, endpoint) != 0 || pthread_create(&s->thread, NULL, super_main, s) != 0) {
        pi_ctl_close(&s->router);
        if (s->ctx) zmq_ctx_term(s->ctx);
        free(s);
        return NULL;
    }
    return s;
}

void pi_super_destroy(pi_super_t **p)
{
    if (!p || !*p) return;
    pi_super_t *s = *p;
    pi_super_stop_all(s, 1000);
    atomic_store(&s->quit, 1);
    pthread_join(s->thread, NULL);
    pi_ctl_close(&s->router);
    zmq_ctx_term(s->ctx);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->cb_mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    *p = NULL;
}

/* In the forked child, before exec: close every descriptor above stderr except keep[0..n_keep), so
 * that a worker holds only what it was given, not what the coordinator inherited without
 * close-on-exec (a pipe of the shell that started it, a service manager's socket). Async-signal-safe:
 * the kept fds are sorted on the stack (at most KEEP_MAX) and the gaps between them closed with
 * close_range(2), or one close(2) at a time up to the descriptor limit where the kernel lacks it. */
#define KEEP_MAX 16
static void close_gap(int lo, int hi) /* close [lo, hi]; hi < 0: to the end */
{
    if (hi >= 0 && hi < lo) return;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lo, hi < 0 ? ~0u : (unsigned)hi, 0) == 0) return;
#endif
    if (hi < 0) {
        struct rlimit rl;
        hi = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (1u << 20)
                 ? (int)rl.rlim_cur - 1
                 : (1 << 20) - 1;
    }
    for (int fd = lo; fd <= hi; fd++) close(fd);
}

static void close_all_but(const int *keep, int n_keep)
{
    int k[KEEP_MAX], n = 0;
    for (int i = 0; i < n_keep && n < KEEP_MAX; i++) {
        int v = keep[i], j = n++;
        for (; j > 0 && k[j - 1] > v; j--) k[j] = k[j - 1]; /* insertion sort */
        k[j] = v;
    }
    int lo = 3;
    for (int i = 0; i < n; i++) {
        if (k[i] < lo) continue; /* stdio, or a duplicate */
        close_gap(lo, k[i] - 1);
        lo = k[i] + 1;
    }
    close_gap(lo, -1);
}

int pi_super_spawn(pi_super_t *s, int role, int index, char *const argv[], const int *keep, int n_keep)
{
    if (n_keep < 0 || n_keep > KEEP_MAX || (n_keep > 0 && !keep)) {
        pi_error("pi_super_spawn: %d descriptors to pass on (at most %d)", n_keep, KEEP_MAX);
        return -PI_ERR_INVAL;
    }
    pthread_mutex_lock(&s->mu);
    int i = 0;
    while (i < PI_SUPER_MAX_WORKERS && s->slots[i].used) i++;
    if (i == PI_SUPER_MAX_WORKERS) {
        pthread_mutex_unlock(&s->mu);
        pi_error("too many workers");
        return -PI_ERR_RANGE;
    }
    pid_t pid = fork();
    if (pid < 0) {
        pthread_mutex_unlock(&s->mu);
        pi_error("fork failed: %s", strerror(errno));
        return -PI_ERR_IO;
    }
    if (pid == 0) {
        /* the child: only async-signal-safe calls until exec */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* Ctrl-C on a terminal signals the whole foreground process group: it is the coordinator's
         * to act on (stop a reply, shut down), never a worker's (an ignored signal stays so across exec) */
        struct sigaction ign = {.sa_handler = SIG_IGN};
        sigaction(SIGINT, &ign, NULL);
        close_all_but(keep, n_keep);
        for (int k = 0; k < n_keep; k++) {
            const int fl = fcntl(keep[k], F_GETFD);
            if (fl < 0 || fcntl(keep[k], F_SETFD, fl & ~FD_CLOEXEC) != 0) {
                static const char m[] = "pi-coordinator: a worker's segment fd could not be passed on\n";
                if (write(2, m, sizeof m - 1) < 0) _exit(127);
                _exit(127);
            }
        }
        execv(argv[0], argv);
        static const char msg[] = "pi-coordinator: exec of a worker failed\n";
        if (write(2, msg, sizeof msg - 1) < 0) _exit(127);
        _exit(127);
    }
    struct slot *w = &s->slots[i];
    memset(w, 0, sizeof *w);
    w->used = true;
    w->info.role = role;
    w->info.index = index;
    w->info.pid = pid;
    w->info.numa_node = -1;
    w->info.heartbeat_age_ms = -1;
    w->info.state = PI_WORKER_STARTING;
#ifdef SYS_pidfd_open
    w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#else
    w->pidfd = -1;
#endif
    pthread_mutex_unlock(&s->mu);
    pi_info("started %s %d: pid %d (%s)", role_name(role), index, (int)pid, argv[0]);
    return i;
}

int pi_super_wait_ready(pi_super_t *s, int timeout_ms)
{
    int64_t deadline = pi_clock_ns() + (int64_t)timeout_ms * 1000000;
    pthread_mutex_lock(&s->mu);
    int rc;
    for (;;) {
        bool all = true, dead = false;
        for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++) {
            if (!s->slots[i].used) continue;
            if (s->slots[i].info.state == PI_WORKER_DEAD) dead = true;
            if (s->slots[i].info.state != PI_WORKER_READY) all = false;
        }
        if (dead) { rc = -PI_ERR_PEER; break; }
        if (all) { rc = 0; break; }
        if (pi_clock_ns() >= deadline) { rc = -PI_ERR_TIMEOUT; break; }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000;
        if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc == -PI_ERR_TIMEOUT) pi_error("workers not ready after %d ms", timeout_ms);
    if (rc == -PI_ERR_PEER) pi_error("a worker died while loading");
    return rc;
}

void pi_super_stop_all(pi_super_t *s, int grace_ms)
{
    /* No report of these workers' deaths reaches the callback after this: the epoch moves in the
     * same critical section that marks them stopping (a report in progress finishes first, cb_mu),
     * so a death reaped before it is either marked stopping or carries the old epoch. cb_mu is let
     * go at once: the thread must be free to reap while we wait below. */
    pthread_mutex_lock(&s->cb_mu);
    pthread_mutex_lock(&s->mu);
    s->epoch++;
    pthread_mutex_unlock(&s->cb_mu);
    bool any = false;
    for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++)
        if (s->slots[i].used) { s->slots[i].stopping = true; any = true; }
    s->send_shutdown = true;
    int64_t deadline = pi_clock_ns() + (int64_t)grace_ms * 1000000;
    bool killed = false;
    while (any) {
        bool live = false;
        for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++)
            if (s->slots[i].used && s->slots[i].info.state != PI_WORKER_DEAD) live = true;
        if (!live) break;
        if (pi_clock_ns() >= deadline && !killed) {
            for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++)
                if (s->slots[i].used && s->slots[i].info.state != PI_WORKER_DEAD) kill(s->slots[i].info.pid, SIGKILL);
            killed = true;
            deadline = pi_clock_ns() + (int64_t)STOP_KILL_WAIT_MS * 1000000;
        } else if (killed && pi_clock_ns() >= deadline) {
            /* SIGKILL is not taking (a process stuck in the kernel, e.g. a driver's teardown): give
             * up rather than hang the coordinator; such a child stays a zombie until it exits. */
            pi_error("workers still alive %d ms after SIGKILL: not waiting for them any longer", STOP_KILL_WAIT_MS);
            break;
        }
        pthread_mutex_unlock(&s->mu);
        if (atomic_load(&s->quit)) { /* no thread to reap: do it here */
            pthread_mutex_lock(&s->mu);
            int dead[PI_SUPER_MAX_WORKERS];
            check_children(s, dead, PI_SUPER_MAX_WORKERS);
            pthread_mutex_unlock(&s->mu);
        }
        usleep(5000);
        pthread_mutex_lock(&s->mu);
    }
    for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++) {
        if (s->slots[i].used && s->slots[i].pidfd >= 0) close(s->slots[i].pidfd);
        s->slots[i].used = false;
        s->slots[i].pidfd = -1;
    }
    pthread_mutex_unlock(&s->mu);
}

size_t pi_super_snapshot(pi_super_t *s, struct pi_worker_info *out, size_t cap)
{
    size_t n = 0;
    int64_t now = pi_clock_ns();
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < PI_SUPER_MAX_WORKERS; i++) {
        if (!s->slots[i].used) continue;
        if (n < cap) {
            out[n] = s->slots[i].info;
            out[n].heartbeat_age_ms = s->slots[i].last_msg_ns ? (now - s->slots[i].last_msg_ns) / 1000000 : -1;
        }
        n++;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}
