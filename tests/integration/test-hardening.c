/*
 * tests/integration/test-hardening.c - pi-coordinator in server mode (--gpu-backend none: one process)
 * against hostile local clients, every process in a private temporary directory under a hard timeout,
 * every flood bounded in count and time and aimed only at an ipc:// socket of that directory:
 *   - a connection flood: 1,100 plain connect() calls (no ZeroMQ handshake) to the control socket of a
 *     coordinator started with a descriptor limit of 512 (soft 256) do not kill it, and it answers
 *     `pi-ctl status` afterwards (issue 20, defect 1);
 *   - --cpu-threads over the thread pool's bound is a usage error (exit 2, before anything starts),
 *     the bound itself runs (defect 7).
 */
#include "config.h"
#include "lib/common.h"
#include "tests/test-pipeline-util.h"

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>

#define FLOOD_N 1100 /* connections opened, more than the coordinator's hard descriptor limit */

static char coord[512], ctl[512], model[512], endpoint[600], rundir[300];

/* pi-ctl with arguments (NULL-terminated) against the test's endpoint. */
static int pictl(const char *name, const char *const *args, double timeout_s)
{
    char *argv[32];
    int n = 0;
    argv[n++] = ctl;
    argv[n++] = "--endpoint";
    argv[n++] = endpoint;
    for (int i = 0; args[i] && n < 31; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return tp_run(argv, name, timeout_s);
}

/* True when pi-ctl status answers within seconds (retrying: the server may pause its listener). */
static bool status_within(double seconds)
{
    for (int i = 0; i < (int)(seconds * 10); i++) {
        const char *a[] = {"--timeout", "500", "status", NULL};
        if (pictl("status", a, 10) == 0) return true;
        usleep(100000);
    }
    return false;
}

/* Start a server through sh with the descriptor limits soft/hard; wait until it answers status. */
static pid_t start_server(const char *name, int soft, int hard)
{
    char cmd[2400];
    snprintf(cmd, sizeof cmd,
             "ulimit -Sn %d && ulimit -Hn %d && exec '%s' --model '%s' --gpu-backend none --run-dir '%s' --control '%s' "
             "--cpu-threads 1",
             soft, hard, coord, model, rundir, endpoint);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    pid_t pid = tp_spawn(argv, name);
    for (int i = 0; i < 400; i++) {
        const char *a[] = {"--timeout", "500", "status", NULL};
        if (pictl("wait-status", a, 10) == 0) return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            tp_forget(pid);
            return -1;
        }
        usleep(50000);
    }
    return -1;
}

/* Open n non-blocking unix-socket connections to the control socket, retrying while the listener is
 * paused or its backlog full, for at most 15 seconds; returns how many connected (fds[i], or -1). */
static int flood(int *fds, int n)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(endpoint + 6) >= sizeof sa.sun_path) return 0;
    memcpy(sa.sun_path, endpoint + 6, strlen(endpoint + 6) + 1);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int got = 0;
    for (int i = 0; i < n; i++) fds[i] = -1;
    while (got < n) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec >= 15) break;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) break;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            fds[got++] = fd;
            continue;
        }
        int e = errno;
        close(fd);
        /* The backlog full (EAGAIN), the listener paused (ENOENT, ECONNREFUSED): again shortly. */
        if (e != EAGAIN && e != ENOENT && e != ECONNREFUSED) break;
        usleep(1000);
    }
    return got;
}

static void test_connection_flood(void)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < FLOOD_N + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < FLOOD_N + 64) {
        tap_skip(3, "this process may not open enough descriptors for the flood");
        return;
    }
    pid_t srv = start_server("flood", 256, 512);
    if (!tap_ok(srv > 0, "a coordinator with 256 (soft) / 512 (hard) descriptors started")) {
        char *e = tp_output("flood", "err");
        tap_diag("%s", e);
        free(e);
        return;
    }
    int *fds = malloc(FLOOD_N * sizeof *fds);
    int got = flood(fds, FLOOD_N);
    usleep(500000);
    int st;
    bool alive = waitpid(srv, &st, WNOHANG) == 0;
    for (int i = 0; i < FLOOD_N; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(fds);
    if (!alive) tp_forget(srv);
    char *err = tp_output("flood", "err");
    tap_ok(alive && got == FLOOD_N, "%d of %d plain connect() calls: the coordinator is alive (%s)", got, FLOOD_N,
           alive ? "" : strstr(err, "Too many") ? "Too many open files" : "dead");
    tap_ok(alive && status_within(20), "after the flood pi-ctl status is answered");
    tap_ok(alive && strstr(err, "connections open, the cap"), "the flood is logged");
    for (char *line = strtok(err, "\n"); line; line = strtok(NULL, "\n"))
        if (strstr(line, "control:") || strstr(line, "open files")) tap_diag("%s", line);
    free(err);
    if (alive) {
        kill(srv, SIGTERM);
        tp_wait(srv, 20);
    }
}

/* pi-coordinator one-shot with extra arguments (NULL-terminated); returns its exit status. */
static int oneshot(const char *name, const char *const *args)
{
    char *argv[32];
    int n = 0;
    argv[n++] = coord;
    argv[n++] = "--model";
    argv[n++] = model;
    argv[n++] = "--run-dir";
    argv[n++] = rundir;
    for (int i = 0; args[i] && n < 31; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return tp_run(argv, name, 60);
}

static void test_cpu_threads(void)
{
    const char *over[] = {"--gpu-backend", "none", "--cpu-threads", "1025", "--prompt", "Hi", "-n", "1", NULL};
    int rc = oneshot("threads-over", over);
    char *err = tp_output("threads-over", "err");
    tap_ok(rc == 2 && strstr(err, "threads") && strstr(err, "1024"), "--cpu-threads 1025: exit %d (2), %s", rc, err);
    free(err);
    const char *huge[] = {"--cpu-threads", "4096", "--prompt", "Hi", "-n", "1", NULL};
    rc = oneshot("threads-huge", huge);
    err = tp_output("threads-huge", "err");
    tap_ok(rc == 2 && !strstr(err, "out of memory"), "--cpu-threads 4096 with workers: exit %d (2), %s", rc, err);
    free(err);
    const char *max[] = {"--gpu-backend", "none", "--cpu-threads", "1024", "--prompt", "Hi", "-n", "1", NULL};
    rc = oneshot("threads-max", max);
    tap_ok(rc == 0, "--cpu-threads 1024 (the bound) runs: exit %d", rc);
}

int main(void)
{
    tp_prog(coord, sizeof coord, "coordinator/pi-coordinator");
    tp_prog(ctl, sizeof ctl, "tools/pi-ctl");
    tap_data(model, sizeof model, "demo-relu-q4_0.gguf");
    tp_guard(240);
    tp_mkdir("pi-test-hardening");
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    snprintf(endpoint, sizeof endpoint, "ipc://%s/control.sock", rundir);
    test_connection_flood();
    test_cpu_threads();
    return tap_done();
}
