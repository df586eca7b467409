/*
 * tests/test-pipeline-util.h - helpers of the pipeline's integration tests: run a program with a
 * hard timeout and capture its output, a private temporary directory, the golden files, and the
 * relative error of logits rows, the copy of a GGUF file's metadata. Header-only, like tests/tap.h.
 */
#ifndef PI_TESTS_PIPELINE_UTIL_H
#define PI_TESTS_PIPELINE_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/rng.h"
#include "model/gguf.h"
#include "lib/types.h"
#include "tests/tap.h"

static char tp_dir[256]; /* the test's private temporary directory */

/* Path of a program of the build tree ($PI_BUILDDIR/rel). */
__attribute__((unused)) static const char *tp_prog(char *buf, size_t len, const char *rel)
{
    const char *b = getenv("PI_BUILDDIR");
    snprintf(buf, len, "%s/%s", b && *b ? b : ".", rel);
    return buf;
}

static void tp_rmdir(void)
{
    if (!tp_dir[0]) return;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tp_dir);
    if (system(cmd) != 0) fprintf(stderr, "# cleanup of %s failed\n", tp_dir);
}

/* Create the temporary directory (removed at exit). */
__attribute__((unused)) static void tp_mkdir(const char *name)
{
    const char *t = getenv("TMPDIR");
    snprintf(tp_dir, sizeof tp_dir, "%s/%s.XXXXXX", t && *t ? t : "/tmp", name);
    if (!mkdtemp(tp_dir)) tap_bail("mkdtemp(%s): %s", tp_dir, strerror(errno));
    atexit(tp_rmdir);
}

/* Read a whole file into a NUL-terminated buffer (caller frees); NULL when missing. */
__attribute__((unused)) static char *tp_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(n > 0 ? n : 0) + 1);
    if (b && n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    if (b) b[n > 0 ? n : 0] = '\0';
    if (len) *len = (size_t)(n > 0 ? n : 0);
    fclose(f);
    return b;
}

/* Every process group started by tp_spawn, killed at exit (also after a failed check or a bail-out)
 * so that a test never leaves a coordinator or its workers behind. */
static pid_t tp_started[256]; /* 0 once reaped */
static int tp_n_started;

static void tp_kill_all(void)
{
    for (int i = 0; i < tp_n_started; i++) {
        if (tp_started[i] <= 0) continue;
        kill(-tp_started[i], SIGKILL);
        kill(tp_started[i], SIGKILL);
        waitpid(tp_started[i], NULL, WNOHANG);
    }
}

static void tp_on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "Bail out! the test ran past its hard timeout\n";
    if (write(1, msg, sizeof msg - 1) < 0) _exit(1);
    tp_kill_all();
    _exit(1);
}

/* A hard timeout for the whole test program: after seconds it kills everything it started and
 * fails. Also registers the clean-up at exit. */
__attribute__((unused)) static void tp_guard(unsigned seconds)
{
    signal(SIGALRM, tp_on_alarm);
    alarm(seconds);
    atexit(tp_kill_all);
}

/* Start argv with stdout and stderr redirected to files tp_dir/NAME.out and .err; its own process
 * group so that the whole tree can be killed. Returns the pid. */
__attribute__((unused)) static pid_t tp_spawn(char *const argv[], const char *name)
{
    char out[600], err[600];
    snprintf(out, sizeof out, "%s/%s.out", tp_dir, name);
    snprintf(err, sizeof err, "%s/%s.err", tp_dir, name);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) tap_bail("fork: %s", strerror(errno));
    if (pid == 0) {
        setpgid(0, 0);
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600), fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fo < 0 || fe < 0) _exit(126);
        dup2(fo, 1);
        dup2(fe, 2);
        close(fo);
        close(fe);
        execv(argv[0], argv);
        _exit(127);
    }
    setpgid(pid, pid);
    if (tp_n_started < (int)(sizeof tp_started / sizeof tp_started[0])) tp_started[tp_n_started++] = pid;
    return pid;
}

/* pid was reaped: never signal its (possibly reused) id again. */
static void tp_forget(pid_t pid)
{
    for (int i = 0; i < tp_n_started; i++)
        if (tp_started[i] == pid) tp_started[i] = 0;
}

/* Wait for pid at most timeout_s seconds; on timeout kill its process group and return -1, else
 * the exit status (128 + signal when killed). */
__attribute__((unused)) static int tp_wait(pid_t pid, double timeout_s)
{
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            tp_forget(pid);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (r < 0) return -2;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) * 1e-9 > timeout_s) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            tp_forget(pid);
            tap_diag("process %d timed out after %.0f s: killed", (int)pid, timeout_s);
            return -1;
        }
        usleep(2000);
    }
}

/* Run argv to completion (hard timeout) with output captured as NAME.out / NAME.err. */
__attribute__((unused)) static int tp_run(char *const argv[], const char *name, double timeout_s)
{
    return tp_wait(tp_spawn(argv, name), timeout_s);
}

/* The captured output NAME.out / NAME.err (caller frees). */
__attribute__((unused)) static char *tp_output(const char *name, const char *ext)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s.%s", tp_dir, name, ext);
    char *s = tp_slurp(p, NULL);
    return s ? s : strdup("");
}

/* Processes (other than this one) whose command line contains needle, e.g. the test's run directory,
 * which every worker it started has in its --control argument. */
__attribute__((unused)) static int tp_count_procs(const char *needle)
{
    DIR *d = opendir("/proc");
    int n = 0;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        char p[64], buf[4096];
        snprintf(p, sizeof p, "/proc/%ld/cmdline", pid);
        FILE *f = fopen(p, "rb");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        for (size_t i = 0; i < len; i++)
            if (buf[i] == '\0') buf[i] = ' ';
        buf[len] = '\0';
        if (strstr(buf, needle)) n++;
    }
    closedir(d);
    return n;
}

struct tp_golden {
    pi_gguf_t *g;
    const int32_t *tokens; /* (n) */
    int n;
    const float *logits;   /* (n, n_vocab) */
    int n_vocab;
    const int32_t *greedy; /* (n_greedy) */
    int n_greedy;
};

__attribute__((unused)) static int tp_golden_open(const char *path, struct tp_golden *gd)
{
    char err[256];
    memset(gd, 0, sizeof *gd);
    if (pi_gguf_open(path, &gd->g, err, sizeof err) < 0) { tap_diag("%s: %s", path, err); return -1; }
    const struct pi_gguf_tensor *t = pi_gguf_find_tensor(gd->g, "tokens");
    const struct pi_gguf_tensor *l = pi_gguf_find_tensor(gd->g, "logits");
    const struct pi_gguf_tensor *y = pi_gguf_find_tensor(gd->g, "greedy");
    if (!t || !l || !y || t->type != PI_TYPE_I32 || l->type != PI_TYPE_F32 || y->type != PI_TYPE_I32 || l->ne[1] != t->ne[0]) {
        tap_diag("%s: unexpected golden layout", path);
        return -1;
    }
    gd->tokens = t->data;
    gd->n = (int)t->ne[0];
    gd->logits = l->data;
    gd->n_vocab = (int)l->ne[0];
    gd->greedy = y->data;
    gd->n_greedy = (int)y->ne[0];
    return 0;
}

/* "1,2,3" of ids (n) into buf. */
__attribute__((unused)) static const char *tp_ids(char *buf, size_t len, const int32_t *ids, int n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && o < len; i++) o += (size_t)snprintf(buf + o, len - o, "%s%d", i ? "," : "", ids[i]);
    return buf;
}

/* Worst relative error ||a - b|| / ||b|| over n rows of width w. */
__attribute__((unused)) static double tp_rel_err(const float *a, const float *b, int n, int w)
{
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        double num = 0.0, den = 0.0;
        for (int j = 0; j < w; j++) {
            double e = (double)a[(size_t)i * w + j] - b[(size_t)i * w + j];
            num += e * e;
            den += (double)b[(size_t)i * w + j] * b[(size_t)i * w + j];
        }
        double r = den > 0 ? sqrt(num / den) : sqrt(num);
        if (!(r <= worst)) worst = r; /* NaN sticks */
    }
    return worst;
}

/* Read a --logits-out file of n rows of w floats (caller frees); NULL when the size is wrong. */
__attribute__((unused)) static float *tp_read_logits(const char *path, int n, int w)
{
    size_t len;
    char *b = tp_slurp(path, &len);
    if (!b) return NULL;
    if (len != (size_t)n * (size_t)w * sizeof(float)) {
        tap_diag("%s: %zu bytes, expected %d x %d floats", path, len, n, w);
        free(b);
        return NULL;
    }
    return (float *)(void *)b;
}

/* Run pi-ctl (the program ctl) with --endpoint endpoint and the NULL-terminated args (at most 28)
 * as tp_run does: its exit status, its output kept under name. */
__attribute__((unused)) static int tp_pictl(const char *ctl, const char *endpoint, const char *name, const char *const *args,
                                            double timeout_s)
{
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)ctl;
    argv[n++] = "--endpoint";
    argv[n++] = (char *)endpoint;
    for (int i = 0; args[i] && n < 31; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return tp_run(argv, name, timeout_s);
}

/* Write a PowerInfer GPU index (.gpuidx, compute/placement.h) at path whose hot set of layer il is the
 * neurons i with hot[il * n_ff + i] != 0. 0 or a negative pi_err. */
__attribute__((unused)) static int tp_write_gpuidx(const char *path, int n_layer, int n_ff, const unsigned char *hot)
{
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    int32_t *flag = malloc((size_t)n_ff * sizeof *flag), *ids = malloc((size_t)n_ff * sizeof *ids);
    int rc = w && flag && ids ? 0 : -PI_ERR_NOMEM;
    if (rc == 0) rc = pi_gguf_writer_set_str(w, "general.architecture", "generic.gpu_index");
    if (rc == 0) rc = pi_gguf_writer_set_u32(w, "generic.gpu_index.block_count", (uint32_t)n_layer);
    if (rc == 0) rc = pi_gguf_writer_set_u64(w, "split.vram_capacity", 0);
    for (int il = 0; rc == 0 && il < n_layer; il++) {
        uint64_t k = 0, ne[1] = {(uint64_t)n_ff};
        for (int i = 0; i < n_ff; i++) {
            flag[i] = hot[(size_t)il * (size_t)n_ff + (size_t)i] != 0;
            if (flag[i]) ids[k++] = i;
        }
        char name[48];
        snprintf(name, sizeof name, "blk.%d.gpu_idx", il);
        rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_I32, 1, ne, flag);
        snprintf(name, sizeof name, "blk.%d.gpu_bucket", il);
        ne[0] = k;
        if (rc == 0) rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_I32, 1, ne, ids);
    }
    if (rc == 0) rc = pi_gguf_writer_write(w, path);
    pi_gguf_writer_destroy(&w);
    free(flag);
    free(ids);
    return rc;
}

/* Write a .gpuidx (tp_write_gpuidx) of random hot sets from the generator state *st: variant 0, a
 * random half of every layer; variant 1, mixed layers: layer 0 all hot, layer 1 exactly one hot
 * neuron (PowerInfer's file has no empty bucket), the others 10% to 90%. 0 or a negative pi_err. */
__attribute__((unused)) static int tp_write_random_gpuidx(const char *path, int n_layer, int n_ff, int variant, uint64_t *st)
{
    unsigned char *hot = malloc((size_t)n_layer * (size_t)n_ff);
    if (!hot) return -PI_ERR_NOMEM;
    for (int il = 0; il < n_layer; il++) {
        unsigned char *h = hot + (size_t)il * (size_t)n_ff;
        const double p = variant == 0 ? 0.5 : il == 0 ? 1.0 : 0.1 + 0.8 * (double)(il % 5) / 4.0;
        for (int i = 0; i < n_ff; i++) h[i] = (double)(pi_rng_splitmix64(st) >> 11) / 9007199254740992.0 < p;
        if (variant == 1 && il == 1) {
            memset(h, 0, (size_t)n_ff);
            h[pi_rng_splitmix64(st) % (uint64_t)n_ff] = 1;
        }
    }
    int rc = tp_write_gpuidx(path, n_layer, n_ff, hot);
    free(hot);
    return rc;
}

/* Copy metadata entry i of g into w, string arrays included (the tokenizer's). */
__attribute__((unused)) static int tp_gguf_copy_kv(pi_gguf_writer_t *w, const pi_gguf_t *g, uint64_t i)
{
    struct pi_gguf_str k = pi_gguf_key(g, i), s;
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
    enum pi_gguf_vtype t = pi_gguf_kv_type(g, i), et;
    uint64_t n;
    if (t == PI_GGUF_STRING) return pi_gguf_kv_str(g, i, &s) < 0 ? -1 : pi_gguf_writer_set_strn(w, key, s.ptr, s.len);
    if (t != PI_GGUF_ARRAY) { /* fixed-size scalars: their bytes as stored (little-endian) */
        uint64_t u = 0;
        int64_t v = 0;
        double f = 0;
        bool b = false;
        unsigned char buf[8] = {0};
        if (t == PI_GGUF_BOOL) return pi_gguf_kv_bool(g, i, &b) < 0 ? -1 : pi_gguf_writer_set_bool(w, key, b);
        if (t == PI_GGUF_F32 || t == PI_GGUF_F64) {
            if (pi_gguf_kv_f64(g, i, &f) < 0) return -1;
            float x = (float)f;
            return pi_gguf_writer_set(w, key, t, t == PI_GGUF_F32 ? (const void *)&x : (const void *)&f);
        }
        if (pi_gguf_kv_uint(g, i, &u) < 0 && pi_gguf_kv_int(g, i, &v) == 0) u = (uint64_t)v;
        for (int j = 0; j < 8; j++) buf[j] = (unsigned char)(u >> (8 * j));
        return pi_gguf_writer_set(w, key, t, buf);
    }
    if (pi_gguf_kv_arr(g, i, &et, &n) < 0) return -1;
    if (et != PI_GGUF_STRING) return pi_gguf_writer_set_arr(w, key, et, pi_gguf_kv_arr_data(g, i), n);
    char **v = calloc(n ? n : 1, sizeof *v);
    int rc = v ? 0 : -1;
    for (uint64_t j = 0; rc == 0 && j < n; j++) {
        rc = pi_gguf_kv_arr_str(g, i, j, &s) < 0 || !(v[j] = strndup(s.ptr, s.len)) ? -1 : 0;
    }
    if (rc == 0) rc = pi_gguf_writer_set_arr_str(w, key, (const char *const *)v, n);
    for (uint64_t j = 0; v && j < n; j++) free(v[j]);
    free(v);
    return rc;
}

#endif
