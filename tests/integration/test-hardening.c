/*
 * tests/integration/test-hardening.c - pi-coordinator in server mode (--gpu-backend none: one process)
 * against hostile local clients, every process in a private temporary directory under a hard timeout,
 * every flood bounded in count and time and aimed only at an ipc:// socket of that directory:
 *   - a connection flood: 1,100 plain connect() calls (no ZeroMQ handshake) to the control socket of a
 *     coordinator started with a descriptor limit of 512 (soft 256) do not kill it, and it answers
 *     `pi-ctl status` afterwards (issue 20, defect 1);
 *   - --cpu-threads over the thread pool's bound is a usage error (exit 2, before anything starts),
 *     the bound itself runs (defect 7);
 *   - the prompt from a file (-f) or standard input (--prompt -) in pi-coordinator and pi-ctl generate
 *     gives the text --prompt gives; a missing file, a NUL byte, an endless input are usage errors
 *     (defect 8);
 *   - pi-ctl on a socket it may not reach says "permission denied", not "no such socket" (defect 10);
 *   - a run dir that is a symlink is refused, a file at the control socket's path that is not a socket
 *     is never removed, and the default run dir is $XDG_RUNTIME_DIR/pinfer, found by pi-ctl too
 *     (defect 4);
 *   - a worker directory left by a killed coordinator (pinfer.X/workers.sock, nobody listening) is
 *     swept at start; one in use is not (defect 5).
 */
#include "config.h"
#include "lib/common.h"
#include "tests/test-pipeline-util.h"

#include <grp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>

#define FLOOD_N 1100 /* connections opened, more than the coordinator's hard descriptor limit */

static char coord[512], ctl[512], model[512], endpoint[600], rundir[300];

/* pi-ctl with arguments (NULL-terminated) against the test's endpoint (tp_pictl). */
static int pictl(const char *name, const char *const *args, double timeout_s) { return tp_pictl(ctl, endpoint, name, args, timeout_s); }

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
        struct stat sb;
        int rc = tp_wait(srv, 20);
        tap_ok(rc == 0 && lstat(endpoint + 6, &sb) != 0, "SIGTERM after the pauses: exit %d, no socket file left", rc);
    } else {
        tap_skip(1, "the coordinator died");
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

/* Run a shell command line with its output in tp_dir/NAME.{out,err}; returns its exit status. */
static int sh(const char *name, const char *cmd)
{
    char *argv[] = {"/bin/sh", "-c", (char *)cmd, NULL};
    return tp_run(argv, name, 60);
}

static void test_prompt_file(void)
{
    char pf[400], nul[400], cmd[3000];
    snprintf(pf, sizeof pf, "%s/prompt.txt", tp_dir);
    snprintf(nul, sizeof nul, "%s/nul.txt", tp_dir);
    FILE *f = fopen(pf, "w");
    fputs("Once upon a time", f);
    fclose(f);
    f = fopen(nul, "w");
    fwrite("Once\0upon", 1, 9, f);
    fclose(f);
    const char *arg[] = {"--gpu-backend", "none", "--prompt", "Once upon a time", "-n", "8", "--temp", "0", NULL};
    int rc = oneshot("prompt-arg", arg);
    char *want = tp_output("prompt-arg", "out");
    tap_ok(rc == 0 && strlen(want) > 1, "one-shot --prompt TEXT: %s", want);
    const char *file[] = {"--gpu-backend", "none", "-f", pf, "-n", "8", "--temp", "0", NULL};
    rc = oneshot("prompt-file", file);
    char *got = tp_output("prompt-file", "out");
    tap_ok(rc == 0 && strcmp(got, want) == 0, "one-shot -f FILE gives the same text (exit %d): %s", rc, got);
    free(got);
    snprintf(cmd, sizeof cmd, "exec '%s' --model '%s' --run-dir '%s' --gpu-backend none --prompt - -n 8 --temp 0 < '%s'", coord,
             model, rundir, pf);
    rc = sh("prompt-stdin", cmd);
    got = tp_output("prompt-stdin", "out");
    tap_ok(rc == 0 && strcmp(got, want) == 0, "one-shot --prompt - (standard input) gives the same text (exit %d): %s", rc, got);
    free(got);
    const char *missing[] = {"--gpu-backend", "none", "--prompt-file", "/nonexistent/prompt", NULL};
    const char *withnul[] = {"--gpu-backend", "none", "-f", nul, NULL};
    const char *endless[] = {"--gpu-backend", "none", "-f", "/dev/zero", NULL};
    int r1 = oneshot("prompt-missing", missing), r2 = oneshot("prompt-nul", withnul), r3 = oneshot("prompt-zero", endless);
    char *e3 = tp_output("prompt-zero", "err");
    tap_ok(r1 == 2 && r2 == 2 && r3 == 2 && strstr(e3, "longer than"),
           "a missing prompt file, a NUL byte, /dev/zero: usage errors (exit %d %d %d), %s", r1, r2, r3, e3);
    free(e3);

    /* pi-ctl generate against a server */
    pid_t srv = start_server("prompt-server", 1024, 4096);
    if (!tap_ok(srv > 0, "a server for pi-ctl generate started")) {
        free(want);
        return;
    }
    const char *garg[] = {"generate", "--prompt", "Once upon a time", "-n", "8", NULL};
    rc = pictl("gen-arg", garg, 60);
    char *gwant = tp_output("gen-arg", "out");
    const char *gfile[] = {"generate", "-f", pf, "-n", "8", NULL};
    rc |= pictl("gen-file", gfile, 60);
    got = tp_output("gen-file", "out");
    tap_ok(rc == 0 && strlen(gwant) > 1 && strcmp(got, gwant) == 0, "pi-ctl generate -f FILE gives the text of --prompt: %s", got);
    free(got);
    snprintf(cmd, sizeof cmd, "exec '%s' --endpoint '%s' generate --prompt - -n 8 < '%s'", ctl, endpoint, pf);
    rc = sh("gen-stdin", cmd);
    got = tp_output("gen-stdin", "out");
    tap_ok(rc == 0 && strcmp(got, gwant) == 0, "pi-ctl generate --prompt - reads standard input (exit %d): %s", rc, got);
    free(got);
    const char *gnul[] = {"generate", "-f", nul, NULL};
    const char *gzero[] = {"generate", "--prompt-file", "/dev/zero", NULL};
    r1 = pictl("gen-nul", gnul, 20);
    r2 = pictl("gen-zero", gzero, 20);
    tap_ok(r1 == 2 && r2 == 2, "pi-ctl generate: a NUL byte, an endless input: usage errors (exit %d %d)", r1, r2);
    free(gwant);
    free(want);
    kill(srv, SIGTERM);
    tp_wait(srv, 20);
}

/* pi-ctl status on ep as a user who may not reach it: as root, the child becomes nobody (65534), as
 * anyone else the directory is mode 0. Returns pi-ctl's exit status; its stderr in tp_dir/NAME.err. */
static int pictl_denied(const char *name, const char *ep)
{
    char errp[600];
    snprintf(errp, sizeof errp, "%s/%s.err", tp_dir, name);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        if (fe < 0) _exit(126);
        dup2(fe, 2);
        close(fe);
        if (geteuid() == 0 && (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)) _exit(125);
        execl(ctl, ctl, "--endpoint", ep, "--timeout", "500", "status", (char *)NULL);
        _exit(127);
    }
    return tp_wait(pid, 20);
}

static void test_denied(void)
{
    char dir[400], ep[500], path[480];
    snprintf(dir, sizeof dir, "%s/locked", tp_dir);
    snprintf(path, sizeof path, "%s/control.sock", dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    /* a listening socket in a directory the caller cannot enter */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (mkdir(dir, 0700) != 0 || fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4) != 0) {
        tap_ok(0, "a listening socket in %s: %s", dir, strerror(errno));
        return;
    }
    /* tp_dir is 0700 too: as nobody even reaching it is denied; open it up to the locked directory */
    chmod(tp_dir, 0711);
    if (geteuid() != 0) chmod(dir, 0);
    int rc = pictl_denied("denied", ep);
    char *err = tp_output("denied", "err");
    tap_ok(rc == 1 && strstr(err, "permission denied") && !strstr(err, "no such socket"),
           "pi-ctl on a socket it may not reach: exit %d, %s", rc, err);
    free(err);
    chmod(dir, 0700);
    chmod(tp_dir, 0700);
    close(fd);
}

/* A unix socket bound at path: listening (returns its fd) or, listen false, closed at once (stale). */
static int unix_socket_at(const char *path, bool listening)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return -1;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || (listening && listen(fd, 4) != 0)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    if (!listening) {
        close(fd);
        return 0;
    }
    return fd;
}

static bool is_regular(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static void test_run_dir(void)
{
    char target[400], link[400], file[480], cmd[3000];
    /* a symlink as the run dir, to a directory holding a regular file named control.sock */
    snprintf(target, sizeof target, "%s/target", tp_dir);
    snprintf(link, sizeof link, "%s/link", tp_dir);
    snprintf(file, sizeof file, "%s/control.sock", target);
    mkdir(target, 0700);
    FILE *f = fopen(file, "w");
    fputs("precious\n", f);
    fclose(f);
    if (symlink(target, link) != 0) tap_bail("symlink: %s", strerror(errno));
    char *a1[] = {coord, "--model", model, "--gpu-backend", "none", "--run-dir", link, NULL};
    int rc = tp_run(a1, "rundir-link", 30);
    char *err = tp_output("rundir-link", "err");
    tap_ok(rc == 2 && is_regular(file) && strstr(err, "symbolic link"), "a run dir that is a symlink: refused (exit %d), the file there kept: %s",
           rc, err);
    free(err);
    /* a regular file at the control socket's path of a real run dir */
    char *a2[] = {coord, "--model", model, "--gpu-backend", "none", "--run-dir", target, NULL};
    rc = tp_run(a2, "rundir-file", 30);
    err = tp_output("rundir-file", "err");
    tap_ok(rc != 0 && is_regular(file) && strstr(err, "not a socket"), "a file that is not a socket at control.sock: kept, the server refused (exit %d): %s",
           rc, err);
    free(err);

    /* the default run dir: $XDG_RUNTIME_DIR/pinfer, for pi-coordinator and pi-ctl alike */
    char xdg[400], sock[480];
    snprintf(xdg, sizeof xdg, "%s/xdg", tp_dir);
    snprintf(sock, sizeof sock, "%s/pinfer/control.sock", xdg);
    mkdir(xdg, 0700);
    snprintf(cmd, sizeof cmd, "XDG_RUNTIME_DIR='%s' exec '%s' --model '%s' --gpu-backend none", xdg, coord, model);
    char *a3[] = {"/bin/sh", "-c", cmd, NULL};
    pid_t srv = tp_spawn(a3, "xdg-server");
    bool up = false;
    for (int i = 0; i < 200 && !up; i++) {
        up = exists(sock);
        if (!up) usleep(50000);
    }
    snprintf(cmd, sizeof cmd, "XDG_RUNTIME_DIR='%s' exec '%s' --timeout 2000 status", xdg, ctl);
    rc = up ? sh("xdg-status", cmd) : -1;
    tap_ok(up && rc == 0, "without --run-dir the control socket is $XDG_RUNTIME_DIR/pinfer/control.sock, and pi-ctl finds it (%d)", rc);
    kill(srv, SIGTERM);
    tp_wait(srv, 20);
}

static void test_sweep(void)
{
    char dir[400], stale[480], live[480], sock[560], cmd[3000];
    snprintf(dir, sizeof dir, "%s/sweep", tp_dir);
    snprintf(stale, sizeof stale, "%s/pinfer.Stale1", dir);
    snprintf(live, sizeof live, "%s/pinfer.Live01", dir);
    mkdir(dir, 0700);
    mkdir(stale, 0700);
    mkdir(live, 0700);
    snprintf(sock, sizeof sock, "%s/workers.sock", stale);
    int s0 = unix_socket_at(sock, false);
    snprintf(sock, sizeof sock, "%s/workers.sock", live);
    int s1 = unix_socket_at(sock, true);
    if (!tap_ok(s0 == 0 && s1 >= 0, "a stale and a live worker directory made")) return;
    snprintf(cmd, sizeof cmd, "exec '%s' --model '%s' --cpu-workers 1 --cpu-threads 1 --run-dir '%s' --prompt Hi -n 1", coord, model,
             dir);
    int rc = sh("sweep", cmd);
    char *err = tp_output("sweep", "err");
    tap_ok(rc == 0 && !exists(stale) && exists(live) && exists(sock),
           "at start the stale worker directory is swept, the one in use kept (exit %d): %s", rc, err);
    free(err);
    close(s1);
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
    test_prompt_file();
    test_denied();
    test_run_dir();
    test_sweep();
    return tap_done();
}
