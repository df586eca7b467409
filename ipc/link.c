/*
 * ipc/link.c - the worker side of the control link (ipc/link.h).
 *
 * DESIGN: ZeroMQ sockets are not thread-safe, so the socket lives entirely in the link thread; the
 * worker's main thread talks to it only through atomics (ready, stopping) and a small mutex-guarded
 * error slot. The thread wakes at least every PI_LINK_HEARTBEAT_MS to send a heartbeat, so the
 * coordinator sees a stalled or dead worker within a few periods even when the per-layer futexes
 * are quiet.
 */
#include "config.h"
#include "ipc/link.h"
#include "ipc/control.h"
#include "ipc/futex.h"
#include "lib/common.h"
#include "lib/log.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <zmq.h>

struct pi_link {
    struct pi_link_opts o;
    uint32_t *cores;
    void *ctx;
    pthread_t thread;
    pid_t parent;
    int64_t t_start;
    _Atomic int ready_pending;  /* 1: READY to be sent */
    _Atomic int loaded;         /* READY was reported: heartbeat state 1 */
    _Atomic int quit;           /* pi_link_stop asked the thread to end */
    _Atomic int stopping;       /* SHUTDOWN received */
    _Atomic int64_t progress_ns; /* the main thread's last pi_link_progress (0: not armed) */
    int64_t stall_ns;           /* o.stall_ms, or PI_LINK_STALL_MS */
    bool stalled;               /* the stall was reported and the heartbeats stopped (link thread) */
    int64_t last_tick;          /* the link thread's previous pass (link thread) */
    uint64_t neurons, mem_bytes;
    pthread_mutex_t mu;
    int err_code;               /* a pending ERROR (0: none) */
    char err_text[256];
};

int pi_link_die_with_parent(void)
{
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) pi_warn("prctl(PR_SET_PDEATHSIG) failed");
    if (getppid() != parent || parent == 1) {
        pi_error("the coordinator is already gone");
        return -PI_ERR_PEER;
    }
    return 0;
}

static int send_simple(void *sock, struct pi_ctl_msg *m)
{
    int rc = pi_ctl_send(sock, NULL, 0, m);
    if (rc != 0 && rc != -PI_ERR_TIMEOUT) pi_warn("control link: sending %s failed", pi_ctl_type_name(m->type));
    return rc;
}

static void send_hello(pi_link_t *l, void *sock)
{
    struct pi_ctl_msg m = {.type = PI_CTL_HELLO};
    m.u.hello.role = l->o.role;
    m.u.hello.pid = (uint32_t)getpid();
    m.u.hello.numa_node = l->o.numa_node;
    m.u.hello.worker_index = l->o.index;
    m.u.hello.proto_version = PI_CTL_VERSION;
    m.u.hello.n_cores = l->o.n_cores;
    m.u.hello.cores = l->cores;
    send_simple(sock, &m);
}

/* Send what the main thread left for us (READY, ERROR) and the periodic heartbeat. */
static void send_pending(pi_link_t *l, void *sock, uint64_t *hb_seq, int64_t *next_hb)
{
    if (atomic_exchange(&l->ready_pending, 0)) {
        struct pi_ctl_msg m = {.type = PI_CTL_READY};
        m.u.ready.worker_index = l->o.index;
        m.u.ready.neurons = l->neurons;
        m.u.ready.mem_bytes = l->mem_bytes;
        send_simple(sock, &m);
    }
    pthread_mutex_lock(&l->mu);
    if (l->err_code) {
        struct pi_ctl_msg m = {.type = PI_CTL_ERROR};
        m.u.error.code = l->err_code;
        m.u.error.text = l->err_text;
        send_simple(sock, &m);
        l->err_code = 0;
    }
    pthread_mutex_unlock(&l->mu);
    int64_t now = pi_clock_ns();
    int64_t prog = atomic_load(&l->progress_ns);
    /* This thread itself ran late (the whole process was stopped or frozen, the machine overloaded):
     * the main thread had no chance either, so its clock starts again now rather than counting that
     * pause as a stall (it has until the limit from here to show progress). */
    if (prog && l->last_tick && now - l->last_tick > (int64_t)PI_LINK_HEARTBEAT_MS * 5 * 1000000) {
        int64_t expected = prog;
        atomic_compare_exchange_strong(&l->progress_ns, &expected, now);
        prog = atomic_load(&l->progress_ns);
    }
    l->last_tick = now;
    const bool stalled = prog && atomic_load(&l->loaded) && now - prog > l->stall_ns;
    if (stalled && !l->stalled)
        pi_error("the worker's main thread made no progress for %lld ms: heartbeats stopped, for the coordinator "
                 "to replace this worker", (long long)((now - prog) / 1000000));
    l->stalled = stalled;
    if (stalled) return;
    if (now >= *next_hb) {
        struct pi_ctl_msg m = {.type = PI_CTL_HEARTBEAT};
        m.u.heartbeat.seq = (*hb_seq)++;
        m.u.heartbeat.uptime_ms = (uint64_t)((now - l->t_start) / 1000000);
        m.u.heartbeat.state = atomic_load(&l->loaded) ? 1u : 0u;
        send_simple(sock, &m);
        *next_hb = now + (int64_t)PI_LINK_HEARTBEAT_MS * 1000000;
    }
}

static void *link_main(void *arg)
{
    pi_link_t *l = arg;
    void *sock = pi_ctl_socket(l->ctx, ZMQ_DEALER, 1000);
    if (!sock || pi_ctl_connect(sock, l->o.endpoint) != 0) {
        pi_error("control link: cannot connect to %s: exiting", l->o.endpoint);
        _exit(3);
    }
    send_hello(l, sock);
    int64_t last_seen = pi_clock_ns(), next_hb = 0;
    uint64_t hb_seq = 0;
    while (!atomic_load(&l->quit)) {
        send_pending(l, sock, &hb_seq, &next_hb);
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, PI_LINK_HEARTBEAT_MS / 2);
        if (n > 0 && (it.revents & ZMQ_POLLIN)) {
            struct pi_ctl_msg m;
            if (pi_ctl_recv(sock, NULL, NULL, &m, NULL) == 0) {
                last_seen = pi_clock_ns();
                if (m.type == PI_CTL_SHUTDOWN) atomic_store(&l->stopping, 1);
                pi_ctl_msg_clear(&m);
            }
        }
        if (getppid() != l->parent) {
            pi_error("the coordinator (pid %d) is gone: exiting", (int)l->parent);
            _exit(3);
        }
        if (pi_clock_ns() - last_seen > (int64_t)PI_LINK_SILENCE_MS * 1000000) {
            pi_error("no heartbeat from the coordinator for %d ms: exiting", PI_LINK_SILENCE_MS);
            _exit(3);
        }
    }
    pi_ctl_close(&sock);
    return NULL;
}

pi_link_t *pi_link_start(const struct pi_link_opts *o)
{
    if (o->stall_ms && (o->stall_ms < PI_LINK_STALL_MS_MIN || o->stall_ms > PI_LINK_STALL_MS_MAX)) {
        pi_error("control link: a stall limit of %u ms is outside [%d, %d]", o->stall_ms, PI_LINK_STALL_MS_MIN,
                 PI_LINK_STALL_MS_MAX);
        return NULL;
    }
    pi_link_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->o = *o;
    l->parent = getppid();
    l->t_start = pi_clock_ns();
    l->stall_ns = (int64_t)(o->stall_ms ? o->stall_ms : PI_LINK_STALL_MS) * 1000000;
    pthread_mutex_init(&l->mu, NULL);
    l->cores = calloc(o->n_cores ? o->n_cores : 1, sizeof *l->cores);
    l->ctx = zmq_ctx_new();
    if (!l->cores || !l->ctx) goto fail;
    if (o->n_cores) memcpy(l->cores, o->cores, o->n_cores * sizeof *l->cores);
    if (pthread_create(&l->thread, NULL, link_main, l) != 0) goto fail;
    return l;
fail:
    pi_error("control link: cannot start");
    if (l->ctx) zmq_ctx_term(l->ctx);
    free(l->cores);
    free(l);
    return NULL;
}

void pi_link_ready(pi_link_t *l, uint64_t neurons, uint64_t mem_bytes)
{
    l->neurons = neurons;
    l->mem_bytes = mem_bytes;
    atomic_store(&l->ready_pending, 1); /* the store orders the fields before it (seq_cst) */
    atomic_store(&l->loaded, 1);
}

void pi_link_error(pi_link_t *l, int code, const char *text)
{
    pthread_mutex_lock(&l->mu);
    l->err_code = code ? code : -PI_ERR_PEER;
    snprintf(l->err_text, sizeof l->err_text, "%s", text);
    pthread_mutex_unlock(&l->mu);
}

bool pi_link_stopping(const pi_link_t *l) { return atomic_load(&l->stopping) != 0; }

void pi_link_progress(pi_link_t *l) { atomic_store_explicit(&l->progress_ns, pi_clock_ns(), memory_order_relaxed); }

void pi_link_stop(pi_link_t **p)
{
    if (!p || !*p) return;
    pi_link_t *l = *p;
    atomic_store(&l->quit, 1);
    pthread_join(l->thread, NULL);
    zmq_ctx_term(l->ctx);
    pthread_mutex_destroy(&l->mu);
    free(l->cores);
    free(l);
    *p = NULL;
}
