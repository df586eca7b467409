/*
 * tests/unit/test-link.c - a worker's control link (ipc/link.h) against a coordinator played by this test:
 * a ZeroMQ ROUTER (ipc/control.h) bound to an ipc:// endpoint in a private run directory.
 *
 * In this process (the link thread beside the test's):
 *   - HELLO first, carrying role, index, pid, NUMA node, protocol version and the core list (random
 *     each run); then HEARTBEATs about every PI_LINK_HEARTBEAT_MS with consecutive sequence numbers
 *     and state 0; READY carries the neurons and bytes given to pi_link_ready, and the heartbeats
 *     say state 1 afterwards; pi_link_error reaches the peer (code 0 becomes -PI_ERR_PEER, a long
 *     text is cut, not overrun);
 *   - malformed frames from the peer (bad magic, another version, short, trailing bytes, unknown
 *     type, random bytes, two frames) change nothing: the link keeps beating and is not stopping;
 *     SHUTDOWN then sets pi_link_stopping;
 *   - pi_link_stop returns promptly, nulls the pointer, and no message follows it.
 * In child processes (this program re-executed with --child, so that no ZeroMQ state crosses a fork):
 *   - a coordinator that never speaks, or speaks only garbage, is taken for dead: exit status 3
 *     after about PI_LINK_SILENCE_MS;
 *   - stall detection: heartbeats go on while the stall check is not armed, stop once the armed main
 *     thread makes no progress for its stall limit (pi_link_opts.stall_ms), and come back with progress; a SIGSTOP of the
 *     whole process is not taken for a stall;
 *   - the parent's death: the link thread notices the re-parenting (exit 3, long before the silence
 *     limit), and pi_link_die_with_parent makes the kernel kill the worker (SIGKILL). This process
 *     is a child subreaper so that it can reap such orphans.
 * Every wait is bounded; the whole program runs under alarm().
 */
#include "config.h"
#include "ipc/control.h"
#include "ipc/futex.h"
#include "ipc/link.h"
#include "lib/common.h"
#include "lib/log.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MS (INT64_C(1000000))

static uint64_t rng_state;
static char self_exe[PATH_MAX];
static char rundir[256];

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

static void msleep(int ms) { usleep((useconds_t)ms * 1000); }

/* ---- the coordinator's side: one ROUTER and the peer that last spoke to it ---- */

struct peer {
    void *ctx, *router;
    char ep[160];
    uint8_t id[256]; /* routing id of the link, once it spoke */
    size_t id_len;
    bool beat; /* send a HEARTBEAT to the link every 200 ms while receiving */
    int64_t next_beat;
};

static void peer_open(struct peer *p, const char *name, bool beat)
{
    memset(p, 0, sizeof *p);
    p->beat = beat;
    p->ctx = zmq_ctx_new();
    if (!p->ctx || pi_ctl_endpoint(rundir, name, p->ep, sizeof p->ep) != 0) tap_bail("endpoint %s", name);
    p->router = pi_ctl_socket(p->ctx, ZMQ_ROUTER, 100);
    if (!p->router || pi_ctl_bind(p->router, p->ep) != 0) tap_bail("bind %s", p->ep);
}

static void peer_close(struct peer *p)
{
    pi_ctl_close(&p->router);
    zmq_ctx_term(p->ctx);
    p->ctx = NULL;
}

static void peer_send(struct peer *p, uint16_t type)
{
    struct pi_ctl_msg m = {.type = type};
    if (type == PI_CTL_HEARTBEAT) m.u.heartbeat.seq = (uint64_t)pi_clock_ns();
    if (p->id_len) pi_ctl_send(p->router, p->id, p->id_len, &m);
}

/* Send raw frames (n_frames of them) to the link, bypassing the encoder. False when the link is not
 * connected (the ROUTER is mandatory: it refuses the routing frame). */
static bool peer_send_raw(struct peer *p, const void *const *frames, const size_t *lens, int n_frames)
{
    if (zmq_send(p->router, p->id, p->id_len, ZMQ_SNDMORE) < 0) return false;
    for (int i = 0; i < n_frames; i++)
        if (zmq_send(p->router, frames[i], lens[i], i + 1 < n_frames ? ZMQ_SNDMORE : 0) < 0) return false;
    return true;
}

/* The next well-formed message from the link, waiting at most timeout_ms (and beating meanwhile
 * when p->beat). 0, or -PI_ERR_TIMEOUT. The caller clears *m. */
static int peer_recv(struct peer *p, struct pi_ctl_msg *m, int timeout_ms)
{
    const int64_t deadline = pi_clock_ns() + timeout_ms * MS;
    memset(m, 0, sizeof *m);
    for (;;) {
        int64_t now = pi_clock_ns();
        if (p->beat && p->id_len && now >= p->next_beat) {
            peer_send(p, PI_CTL_HEARTBEAT);
            p->next_beat = now + 200 * MS;
        }
        if (now >= deadline) return -PI_ERR_TIMEOUT;
        zmq_pollitem_t it = {p->router, 0, ZMQ_POLLIN, 0};
        int64_t left = (deadline - now) / MS + 1;
        if (zmq_poll(&it, 1, left < 50 ? left : 50) <= 0) continue;
        uint8_t id[256];
        size_t id_len = sizeof id;
        if (pi_ctl_recv(p->router, id, &id_len, m, NULL) != 0) continue;
        memcpy(p->id, id, id_len);
        p->id_len = id_len;
        return 0;
    }
}

/* Receive for ms milliseconds; count the messages of each type (counts[type], may be NULL) and
 * return the time of the last heartbeat (0 if none). */
static int64_t peer_watch(struct peer *p, int ms, int *counts)
{
    const int64_t end = pi_clock_ns() + ms * MS;
    int64_t last_hb = 0;
    for (int64_t now; (now = pi_clock_ns()) < end;) {
        struct pi_ctl_msg m;
        if (peer_recv(p, &m, (int)((end - now) / MS) + 1) != 0) continue;
        if (counts && m.type <= PI_CTL_TYPE_MAX) counts[m.type]++;
        if (m.type == PI_CTL_HEARTBEAT) last_hb = pi_clock_ns();
        pi_ctl_msg_clear(&m);
    }
    return last_hb;
}

/* Wait for the first message of a type (others skipped), at most timeout_ms. */
static int peer_expect(struct peer *p, uint16_t type, struct pi_ctl_msg *m, int timeout_ms)
{
    const int64_t deadline = pi_clock_ns() + timeout_ms * MS;
    for (int64_t now; (now = pi_clock_ns()) < deadline;) {
        if (peer_recv(p, m, (int)((deadline - now) / MS) + 1) != 0) continue;
        if (m->type == type) return 0;
        pi_ctl_msg_clear(m);
    }
    return -PI_ERR_TIMEOUT;
}

/* ---- in this process ---- */

static void test_messages(void)
{
    struct peer p;
    peer_open(&p, "link", true);
    uint32_t cores[40];
    const uint32_t n_cores = 1 + rnd() % 40;
    for (uint32_t i = 0; i < n_cores; i++) cores[i] = rnd() % 1024;
    const struct pi_link_opts o = {.endpoint = p.ep,
                                   .role = rnd() % 2 ? PI_ROLE_GPU_WORKER : PI_ROLE_CPU_WORKER,
                                   .index = rnd() % 64,
                                   .numa_node = (int32_t)(rnd() % 5) - 1,
                                   .cores = cores,
                                   .n_cores = n_cores};
    const int64_t t0 = pi_clock_ns();
    pi_link_t *l = pi_link_start(&o);
    if (!l) tap_bail("pi_link_start");
    cores[0] ^= 0xffffu; /* the link keeps its own copy */

    struct pi_ctl_msg m;
    int rc = peer_recv(&p, &m, 3000);
    const struct pi_ctl_hello *h = &m.u.hello;
    tap_ok(rc == 0 && m.type == PI_CTL_HELLO, "the first message is HELLO (%s)",
           rc == 0 ? pi_ctl_type_name(m.type) : "none");
    cores[0] ^= 0xffffu;
    tap_ok(rc == 0 && m.type == PI_CTL_HELLO && h->role == o.role && h->worker_index == o.index &&
               h->numa_node == o.numa_node && h->pid == (uint32_t)getpid() && h->proto_version == PI_CTL_VERSION,
           "HELLO carries role %u, index %u, NUMA node %d, our pid and the protocol version", o.role, o.index,
           o.numa_node);
    tap_ok(rc == 0 && m.type == PI_CTL_HELLO && h->n_cores == n_cores && memcmp(h->cores, cores, n_cores * 4) == 0,
           "HELLO carries the %u cores as given at start", n_cores);
    pi_ctl_msg_clear(&m);

    /* heartbeats: consecutive sequence numbers, state 0 before READY, about PI_LINK_HEARTBEAT_MS apart */
    uint64_t seq[6];
    int64_t at[6];
    int n_hb = 0, bad_state = 0;
    for (int64_t end = pi_clock_ns() + 3000 * MS; n_hb < 6 && pi_clock_ns() < end;) {
        if (peer_recv(&p, &m, 200) != 0) continue;
        if (m.type == PI_CTL_HEARTBEAT) {
            seq[n_hb] = m.u.heartbeat.seq;
            at[n_hb++] = pi_clock_ns();
            bad_state += m.u.heartbeat.state != 0;
        }
        pi_ctl_msg_clear(&m);
    }
    bool consecutive = n_hb == 6;
    for (int i = 1; i < n_hb; i++) consecutive &= seq[i] == seq[i - 1] + 1;
    const double gap_ms = n_hb == 6 ? (double)(at[5] - at[1]) / 4 / 1e6 : 0;
    tap_ok(consecutive && bad_state == 0, "6 heartbeats with consecutive sequence numbers and state 0 before READY");
    tap_ok(gap_ms > PI_LINK_HEARTBEAT_MS * 0.6 && gap_ms < PI_LINK_HEARTBEAT_MS * 2.5,
           "heartbeats %.0f ms apart (period %d ms)", gap_ms, PI_LINK_HEARTBEAT_MS);
    tap_ok(!pi_link_stopping(l), "not stopping before a SHUTDOWN");

    /* READY */
    const uint64_t neurons = ((uint64_t)rnd() << 20) | rnd(), bytes = ((uint64_t)rnd() << 24) | rnd();
    pi_link_ready(l, neurons, bytes);
    rc = peer_expect(&p, PI_CTL_READY, &m, 2000);
    tap_ok(rc == 0 && m.u.ready.worker_index == o.index && m.u.ready.neurons == neurons && m.u.ready.mem_bytes == bytes,
           "READY carries index %u, %llu neurons, %llu bytes", o.index, (unsigned long long)neurons,
           (unsigned long long)bytes);
    pi_ctl_msg_clear(&m);
    rc = peer_expect(&p, PI_CTL_HEARTBEAT, &m, 2000);
    tap_ok(rc == 0 && m.u.heartbeat.state == 1, "heartbeats say state 1 after READY");
    tap_ok(rc == 0 && m.u.heartbeat.uptime_ms <= (uint64_t)((pi_clock_ns() - t0) / MS),
           "a heartbeat's uptime (%llu ms) is no more than the time since the start",
           (unsigned long long)m.u.heartbeat.uptime_ms);
    pi_ctl_msg_clear(&m);

    /* ERROR */
    const int code = -(int)(1 + rnd() % PI_ERR_TIMEOUT);
    char text[64];
    snprintf(text, sizeof text, "error %u", rnd());
    pi_link_error(l, code, text);
    rc = peer_expect(&p, PI_CTL_ERROR, &m, 2000);
    tap_ok(rc == 0 && m.u.error.code == code && m.u.error.text && strcmp(m.u.error.text, text) == 0,
           "ERROR carries the code (%d) and the text \"%s\"", code, text);
    pi_ctl_msg_clear(&m);
    char longtext[1000];
    memset(longtext, 'x', sizeof longtext - 1);
    longtext[sizeof longtext - 1] = '\0';
    pi_link_error(l, 0, longtext);
    rc = peer_expect(&p, PI_CTL_ERROR, &m, 2000);
    const size_t got = rc == 0 && m.u.error.text ? strlen(m.u.error.text) : 0;
    tap_ok(rc == 0 && m.u.error.code == -PI_ERR_PEER, "an error code 0 is sent as -PI_ERR_PEER (%d)",
           rc == 0 ? m.u.error.code : 0);
    tap_ok(got > 100 && got < sizeof longtext - 1 && strspn(m.u.error.text, "x") == got,
           "a %zu-character text is cut to %zu characters of it", sizeof longtext - 1, got);
    pi_ctl_msg_clear(&m);

    /* garbage from the coordinator's side */
    uint8_t *good = NULL;
    size_t good_len = 0;
    struct pi_ctl_msg hb = {.type = PI_CTL_HEARTBEAT};
    if (pi_ctl_encode(&hb, &good, &good_len) != 0) tap_bail("encode");
    uint8_t bad_magic[64], bad_version[64], bad_type[64], trailing[80], rnd_bytes[100];
    memcpy(bad_magic, good, good_len);
    bad_magic[0] ^= 0x20;
    memcpy(bad_version, good, good_len);
    bad_version[4] = (uint8_t)(PI_CTL_VERSION + 1 + rnd() % 100);
    memcpy(bad_type, good, good_len);
    bad_type[6] = (uint8_t)(PI_CTL_TYPE_MAX + 1 + rnd() % 100);
    memset(trailing, 0, sizeof trailing);
    memcpy(trailing, good, good_len);
    for (size_t i = 0; i < sizeof rnd_bytes; i++) rnd_bytes[i] = (uint8_t)rnd();
    const void *frames[][2] = {{bad_magic}, {bad_version}, {bad_type}, {good}, {trailing}, {rnd_bytes}, {good, good}};
    const size_t lens[][2] = {{good_len},     {good_len},         {good_len},          {good_len / 2},
                              {good_len + 5}, {sizeof rnd_bytes}, {good_len, good_len}};
    const int n_frames[] = {1, 1, 1, 1, 1, 1, 2};
    p.beat = false; /* only garbage for a while */
    int sent = 0;
    for (int round = 0; round < 3; round++)
        for (size_t k = 0; k < sizeof n_frames / sizeof n_frames[0]; k++)
            sent += peer_send_raw(&p, frames[k], lens[k], n_frames[k]);
    int counts[PI_CTL_TYPE_MAX + 1] = {0};
    peer_watch(&p, 700, counts);
    tap_ok(sent == 21 && counts[PI_CTL_HEARTBEAT] >= 2 && !pi_link_stopping(l),
           "after %d malformed messages the link still beats (%d heartbeats in 0.7 s) and is not stopping", sent,
           counts[PI_CTL_HEARTBEAT]);
    free(good);
    p.beat = true;

    /* SHUTDOWN */
    peer_send(&p, PI_CTL_SHUTDOWN);
    bool stopping = false;
    for (int i = 0; i < 200 && !(stopping = pi_link_stopping(l)); i++) msleep(10);
    tap_ok(stopping, "SHUTDOWN sets pi_link_stopping");

    /* stop */
    const int64_t ts = pi_clock_ns();
    pi_link_stop(&l);
    const int64_t dt = pi_clock_ns() - ts;
    tap_ok(l == NULL && dt < 1000 * MS, "pi_link_stop returns in %lld ms and nulls the pointer", (long long)(dt / MS));
    peer_watch(&p, 10, NULL); /* what was sent before the stop */
    memset(counts, 0, sizeof counts);
    peer_watch(&p, 600, counts);
    tap_is_int(counts[PI_CTL_HEARTBEAT] + counts[PI_CTL_READY] + counts[PI_CTL_ERROR], 0,
               "nothing arrives after pi_link_stop");
    pi_link_stop(&l);
    pi_link_stop(NULL);
    peer_close(&p);
}

/* ---- child processes ---- */

/* This program as a child: test-link --child MODE ENDPOINT. */
static pid_t spawn_child(const char *mode, const char *ep)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) tap_bail("fork: %s", strerror(errno));
    if (pid == 0) {
        execl(self_exe, self_exe, "--child", mode, ep, (char *)NULL);
        _exit(126);
    }
    return pid;
}

/* Wait for pid at most ms; its wait status, or -1 after a timeout (it is then killed). */
static int wait_for(pid_t pid, int ms)
{
    int st;
    for (int64_t end = pi_clock_ns() + ms * MS; pi_clock_ns() < end; msleep(5))
        if (waitpid(pid, &st, WNOHANG) == pid) return st;
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

static const char *status_str(int st, char *buf, size_t len)
{
    if (st == -1) snprintf(buf, len, "still running");
    else if (WIFEXITED(st)) snprintf(buf, len, "exit %d", WEXITSTATUS(st));
    else snprintf(buf, len, "signal %d", WTERMSIG(st));
    return buf;
}

/* A coordinator that says nothing, and one that says only garbage: both are silent to the link. */
static void test_silence(void)
{
    struct peer quiet, noisy;
    peer_open(&quiet, "quiet", false);
    peer_open(&noisy, "noisy", false);
    const int64_t t0 = pi_clock_ns();
    pid_t a = spawn_child("plain", quiet.ep), b = spawn_child("plain", noisy.ep);
    struct pi_ctl_msg m;
    int ha = peer_expect(&quiet, PI_CTL_HELLO, &m, 3000);
    pi_ctl_msg_clear(&m);
    int hb = peer_expect(&noisy, PI_CTL_HELLO, &m, 3000);
    pi_ctl_msg_clear(&m);
    /* garbage every 100 ms to one of them until both are gone */
    uint8_t junk[40];
    int st_a = -1, st_b = -1, st;
    int64_t t_a = 0, t_b = 0;
    for (int64_t end = t0 + 10000 * MS; pi_clock_ns() < end && (!t_a || !t_b); msleep(100)) {
        for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)rnd();
        const void *f[1] = {junk};
        const size_t l[1] = {sizeof junk};
        if (!t_b && noisy.id_len) peer_send_raw(&noisy, f, l, 1);
        peer_watch(&quiet, 1, NULL);
        peer_watch(&noisy, 1, NULL);
        if (!t_a && waitpid(a, &st, WNOHANG) == a) st_a = st, t_a = pi_clock_ns();
        if (!t_b && waitpid(b, &st, WNOHANG) == b) st_b = st, t_b = pi_clock_ns();
    }
    if (!t_a) st_a = wait_for(a, 1);
    if (!t_b) st_b = wait_for(b, 1);
    char s1[32], s2[32];
    const double da = t_a ? (double)(t_a - t0) / 1e9 : -1, db = t_b ? (double)(t_b - t0) / 1e9 : -1;
    tap_ok(ha == 0 && hb == 0, "both children said HELLO");
    tap_ok(st_a != -1 && WIFEXITED(st_a) && WEXITSTATUS(st_a) == 3 && da >= PI_LINK_SILENCE_MS / 1000.0 * 0.9 && da < 8,
           "a silent coordinator: the worker exits with status 3 after %.1f s (%s)", da,
           status_str(st_a, s1, sizeof s1));
    tap_ok(st_b != -1 && WIFEXITED(st_b) && WEXITSTATUS(st_b) == 3 && db >= PI_LINK_SILENCE_MS / 1000.0 * 0.9 && db < 8,
           "a coordinator sending only garbage is silent too: exit 3 after %.1f s (%s)", db,
           status_str(st_b, s2, sizeof s2));
    peer_close(&quiet);
    peer_close(&noisy);
}

/* Heartbeats per window of the "stall" child's timeline (see child_stall). */
static void test_stall(void)
{
    struct peer p;
    peer_open(&p, "stall", true);
    pid_t pid = spawn_child("stall", p.ep);
    struct pi_ctl_msg m;
    int rc = peer_expect(&p, PI_CTL_READY, &m, 5000);
    pi_ctl_msg_clear(&m);
    const int64_t t0 = pi_clock_ns();
    int unarmed[PI_CTL_TYPE_MAX + 1] = {0}, stalled[PI_CTL_TYPE_MAX + 1] = {0}, resumed[PI_CTL_TYPE_MAX + 1] = {0};
    peer_watch(&p, 1000, unarmed);             /* 0 - 1.0 s: READY, progress never called */
    int64_t last = peer_watch(&p, 1300, NULL); /* 1.0 s: one progress; the stall limit is 0.5 s */
    peer_watch(&p, 1300, stalled);             /* 2.3 - 3.6 s: still no progress */
    peer_watch(&p, 600, NULL);                 /* 3.8 s: progress every 50 ms again */
    peer_watch(&p, 1000, resumed);             /* 4.2 - 5.2 s */
    const double stop_at = last ? (double)(last - t0) / 1e9 : -1;
    tap_ok(rc == 0 && unarmed[PI_CTL_HEARTBEAT] >= 3,
           "READY without pi_link_progress: not armed, heartbeats go on (%d in 1 s)", unarmed[PI_CTL_HEARTBEAT]);
    tap_ok(stalled[PI_CTL_HEARTBEAT] == 0 && stop_at >= 1.0 && stop_at < 2.3,
           "armed, then no progress: the last heartbeat %.2f s after the progress at 1.0 s (limit 0.5 s), none while "
           "it hangs",
           stop_at - 1.0);
    tap_ok(resumed[PI_CTL_HEARTBEAT] >= 3, "progress again: heartbeats come back (%d in 1 s)",
           resumed[PI_CTL_HEARTBEAT]);
    kill(pid, SIGKILL);
    wait_for(pid, 2000);
    peer_close(&p);
}

/* A SIGSTOP of the whole worker longer than the stall limit is not a stall. The worker's main thread
 * calls pi_link_progress once per byte this test writes into a pipe (every 100 ms while fed), so it
 * cannot make progress of its own right after the SIGCONT: the heartbeats in the 350 ms after it
 * come only from the link's rule that a pause of its own thread restarts the main thread's clock. */
static void feed(int fd, struct peer *p, int ms, int *counts)
{
    for (int t = 0; t < ms; t += 100) {
        if (write(fd, "x", 1) != 1) tap_diag("write to the worker's pipe failed");
        peer_watch(p, 100, counts);
    }
}

static void test_pause(void)
{
    struct peer p;
    peer_open(&p, "pause", true);
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0 || fcntl(pfd[0], F_SETFD, 0) != 0) tap_bail("pipe");
    char mode[32];
    snprintf(mode, sizeof mode, "busy:%d", pfd[0]);
    pid_t pid = spawn_child(mode, p.ep);
    close(pfd[0]);
    struct pi_ctl_msg m;
    int rc = peer_expect(&p, PI_CTL_READY, &m, 5000);
    pi_ctl_msg_clear(&m);
    feed(pfd[1], &p, 600, NULL);
    kill(pid, SIGSTOP);
    peer_watch(&p, 1500, NULL); /* three times the stall limit; the coordinator keeps beating */
    kill(pid, SIGCONT);
    int after[PI_CTL_TYPE_MAX + 1] = {0}, fed[PI_CTL_TYPE_MAX + 1] = {0};
    peer_watch(&p, 350, after);
    feed(pfd[1], &p, 1000, fed);
    tap_ok(rc == 0 && after[PI_CTL_HEARTBEAT] >= 1,
           "after a 1.5 s SIGSTOP of the whole worker it beats at once, before its main thread shows progress (%d in "
           "0.35 s)",
           after[PI_CTL_HEARTBEAT]);
    tap_ok(fed[PI_CTL_HEARTBEAT] >= 4, "and goes on beating (%d in 1 s)", fed[PI_CTL_HEARTBEAT]);
    close(pfd[1]);
    kill(pid, SIGKILL);
    wait_for(pid, 2000);
    peer_close(&p);
}

/* The worker's parent dies; the worker was forked by an intermediate child ("orphan-*" modes), and
 * is reaped here because this process is a subreaper. */
static void test_parent_death(const char *mode, bool want_kill)
{
    struct peer p;
    peer_open(&p, mode, true);
    pid_t mid = spawn_child(mode, p.ep);
    struct pi_ctl_msg m;
    int rc = peer_expect(&p, PI_CTL_HELLO, &m, 5000);
    const pid_t worker = rc == 0 ? (pid_t)m.u.hello.pid : -1;
    pi_ctl_msg_clear(&m);
    kill(mid, SIGKILL);
    int st_mid = wait_for(mid, 5000);
    const int64_t t_mid = pi_clock_ns();
    int st = -1;
    int64_t t_end = 0;
    for (int64_t end = t_mid + 5000 * MS; worker > 0 && pi_clock_ns() < end;) {
        peer_watch(&p, 5, NULL); /* keep beating: the silence limit must not be what ends it */
        if (waitpid(worker, &st, WNOHANG) == worker) {
            t_end = pi_clock_ns();
            break;
        }
        st = -1;
    }
    if (worker > 0 && !t_end) st = wait_for(worker, 1);
    char s[32];
    const double after = t_end ? (double)(t_end - t_mid) / 1e9 : -1;
    tap_ok(rc == 0 && st_mid != -1 && worker > 0, "%s: the worker (pid %d) said HELLO and its parent was killed", mode,
           (int)worker);
    if (want_kill)
        tap_ok(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && after < 1.0,
               "pi_link_die_with_parent: the kernel kills the worker with its parent (%s, %.2f s after)",
               status_str(st, s, sizeof s), after);
    else
        tap_ok(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 3 && after < 1.5,
               "without it, the link notices the new parent: exit 3 %.2f s after the parent's death (%s)", after,
               status_str(st, s, sizeof s));
    peer_close(&p);
}

/* --child MODE ENDPOINT: run a worker's side. Exit status 0 means it ran out its 15 s (which the
 * parent treats as a failure where it expected an exit); 4: setup failed. */
static int child_main(const char *mode, const char *ep)
{
    alarm(20);
    if (strncmp(mode, "orphan-", 7) == 0) {
        /* the intermediate parent: start the worker and wait to be killed by the test */
        pid_t pid = fork();
        if (pid < 0) return 4;
        if (pid == 0) {
            execl(self_exe, self_exe, "--child", strcmp(mode, "orphan-pdeath") == 0 ? "pdeath" : "plain", ep,
                  (char *)NULL);
            _exit(126);
        }
        for (;;) pause();
    }
    if (strcmp(mode, "pdeath") == 0 && pi_link_die_with_parent() != 0) return 4;
    const bool busy = strncmp(mode, "busy:", 5) == 0, gpu = busy || strcmp(mode, "stall") == 0;
    const int feed_fd = busy ? atoi(mode + 5) : -1;
    /* the GPU worker's children: the contract's lower bound of the stall limit ([gpu] stall_ms) */
    const struct pi_link_opts o = {.endpoint = ep,
                                   .role = gpu ? PI_ROLE_GPU_WORKER : PI_ROLE_CPU_WORKER,
                                   .numa_node = -1,
                                   .stall_ms = gpu ? 500u : 0u};
    pi_link_t *l = pi_link_start(&o);
    if (!l) return 4;
    if (gpu) pi_link_ready(l, 1, 1);
    if (busy) { /* one pi_link_progress per byte from the test, until it closes the pipe */
        pi_link_progress(l);
        char c;
        while (read(feed_fd, &c, 1) == 1) pi_link_progress(l);
        pi_link_stop(&l);
        return 0;
    }
    /* "stall": one pi_link_progress at 1.0 s (arms the check), none until 3.8 s, then every 50 ms */
    const int64_t t0 = pi_clock_ns();
    bool armed = false;
    for (int64_t now; (now = pi_clock_ns()) - t0 < 15000 * MS; msleep(50)) {
        const int64_t t = (now - t0) / MS;
        if (strcmp(mode, "stall") == 0 && ((!armed && t >= 1000) || t >= 3800)) {
            pi_link_progress(l);
            armed = true;
        }
    }
    pi_link_stop(&l);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--child") == 0) {
        ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
        if (n <= 0) return 4;
        return child_main(argv[2], argv[3]);
    }
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
    rng_state = seed | 1;
    tap_diag("seed %llu (replay: test-link %llu)", (unsigned long long)seed, (unsigned long long)seed);
    alarm(120);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0) tap_bail("readlink /proc/self/exe");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) tap_bail("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
    if (pi_rundir_create(NULL, rundir, sizeof rundir) != 0) tap_bail("run directory");
    test_messages();
    test_silence();
    test_stall();
    test_pause();
    test_parent_death("orphan-plain", false);
    test_parent_death("orphan-pdeath", true);
    tap_ok(pi_rundir_remove(rundir) == 0, "the run directory holds only our sockets and is removed");
    return tap_done();
}
