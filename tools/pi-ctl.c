/*
 * tools/pi-ctl.c - pi-ctl: talk to a running pi-coordinator over its control socket (ipc/control.h):
 * `status` (JSON), `workers` (a table), `generate` (streams the text), `shutdown`. See pi-ctl(1).
 *
 * One DEALER socket, one request, bounded waits: when no coordinator is there the command fails with a
 * clear message and a non-zero exit instead of hanging.
 */
#include "config.h"
#include "ipc/control.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "lib/input.h"
#include "lib/log.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

struct ctl_opts {
    char endpoint[512];
    int timeout_ms;
    const char *cmd;
    const char *prompt;
    char *prompt_buf; /* owned: the prompt read from a file or standard input */
    long n_predict;
    double temp;
    unsigned long long seed;
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: pi-ctl [--endpoint EP] [--timeout MS] COMMAND [ARGS]\n"
               "Control a running pi-coordinator.\n"
               "\n"
               "Commands:\n"
               "  status                       the coordinator's state as JSON (model, uptime, counters, workers, tune)\n"
               "  workers                      one line per worker: role, index, pid, NUMA node, state, ...\n"
               "  generate --prompt TEXT [-n N] [--temp T] [--seed S]\n"
               "  generate -f FILE [-n N] ...  (--prompt-file FILE; FILE or --prompt '-': standard input,\n"
               "                               so the prompt is not on the command line that ps(1) shows)\n"
               "                               generate on the coordinator, streaming the text to stdout\n"
               "                               (defaults: -n 128, --temp 0, --seed 0)\n"
               "  shutdown                     stop the coordinator and its workers\n"
               "\n"
               "Options:\n"
               "  --endpoint EP    the control socket; default: $PI_CONTROL, else ipc://RUN_DIR/control.sock with\n"
               "                   RUN_DIR $XDG_RUNTIME_DIR/pinfer, or /tmp/pinfer-$UID without it\n"
               "  --timeout MS     how long to wait for an answer; default: 5000 (generate: per piece of text)\n"
               "  -h, --help       print this help and exit\n"
               "  -V, --version    print the version and exit\n"
               "\n"
               "Exit status: 0 on success, 1 when the coordinator is not there or the request failed, 2 on a usage error.\n");
}

/* The prompt from path ("-": standard input), at most the protocol's message size. Prints the error. */
static int read_prompt(struct ctl_opts *o, const char *path)
{
    char err[512];
    free(o->prompt_buf);
    o->prompt_buf = NULL;
    if (pi_input_read(path, PI_INPUT_MAX_PROMPT, &o->prompt_buf, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "pi-ctl: prompt: %s\n", err);
        return -1;
    }
    o->prompt = o->prompt_buf;
    return 0;
}

static int parse(int argc, char **argv, struct ctl_opts *o)
{
    static const struct option lo[] = {{"endpoint", required_argument, NULL, 'e'}, {"timeout", required_argument, NULL, 't'},
                                       {"prompt", required_argument, NULL, 'p'}, {"prompt-file", required_argument, NULL, 'f'}, {"n-predict", required_argument, NULL, 'n'},
                                       {"temp", required_argument, NULL, 'T'}, {"seed", required_argument, NULL, 's'},
                                       {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'},
                                       {NULL, 0, NULL, 0}};
    const char *env = getenv("PI_CONTROL");
    if (env && *env) snprintf(o->endpoint, sizeof o->endpoint, "%s", env);
    else {
        char dir[256];
        pi_run_dir_default(dir, sizeof dir); /* the coordinator's default [run] dir */
        snprintf(o->endpoint, sizeof o->endpoint, "ipc://%s/control.sock", dir);
    }
    o->timeout_ms = 5000;
    o->n_predict = 128;
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "hVn:f:", lo, NULL)) != -1) {
        errno = 0;
        /* numbers: digits required (strto* read "" as 0), no sign where none belongs (strtoull
         * reads "-1" as 2^64 - 1) */
        if ((c == 't' || c == 'n' || c == 'T' || c == 's') && !(optarg[0] >= '0' && optarg[0] <= '9') &&
            !(c == 'T' && optarg[0] == '.'))
            goto bad;
        switch (c) {
        case 'e':
            if (strlen(optarg) >= sizeof o->endpoint) goto bad; /* would be cut */
            snprintf(o->endpoint, sizeof o->endpoint, "%s", optarg);
            break;
        case 't': {
            long t = strtol(optarg, &end, 10); /* range-checked as a long: (int) would wrap huge values */
            if (*end || errno || t < 1 || t > INT32_MAX) goto bad;
            o->timeout_ms = (int)t;
            break;
        }
        case 'p': /* "--prompt -" reads standard input */
            if (strcmp(optarg, "-") == 0 && read_prompt(o, optarg) != 0) return -1;
            if (strcmp(optarg, "-") != 0) o->prompt = optarg;
            break;
        case 'f':
            if (read_prompt(o, optarg) != 0) return -1;
            break;
        case 'n': /* the protocol's bound (ipc/control.c, PI_CTL_MAX_PREDICT): beyond it nothing could be sent */
            o->n_predict = strtol(optarg, &end, 10);
            if (*end || errno || o->n_predict < 0 || o->n_predict > 1000000) goto bad;
            break;
        case 'T': o->temp = strtod(optarg, &end); if (*end || !(o->temp >= 0 && o->temp <= 100)) goto bad; break;
        case 's': o->seed = strtoull(optarg, &end, 10); if (*end || errno) goto bad; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("pi-ctl (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
        default: fprintf(stderr, "pi-ctl: bad option (see --help)\n"); return -1;
        }
        continue;
    bad:
        fprintf(stderr, "pi-ctl: bad value '%s' (see --help)\n", optarg);
        return -1;
    }
    if (optind >= argc) { fprintf(stderr, "pi-ctl: no command (status, workers, generate, shutdown; see --help)\n"); return -1; }
    o->cmd = argv[optind++]; /* GNU getopt moved the options (generate's too) before it */
    if (optind < argc) { fprintf(stderr, "pi-ctl: unexpected argument '%s'\n", argv[optind]); return -1; }
    return 1;
}

/* Connect; for ipc:// endpoints first check that the socket file exists, so a missing coordinator is
 * reported at once rather than after the timeout. */
static void *connect_ctl(void *ctx, const struct ctl_opts *o, int timeout_ms)
{
    if (strncmp(o->endpoint, "ipc://", 6) == 0) {
        /* Say what is really wrong: a socket we may not reach is not a missing one. */
        struct stat st;
        if (stat(o->endpoint + 6, &st) != 0) {
            if (errno == EACCES)
                fprintf(stderr, "pi-ctl: %s: permission denied (the socket or a directory above it is not this "
                                "user's to open)\n", o->endpoint);
            else
                fprintf(stderr, "pi-ctl: no coordinator at %s (no such socket: %s)\n", o->endpoint, strerror(errno));
            return NULL;
        }
        if (!S_ISSOCK(st.st_mode)) {
            fprintf(stderr, "pi-ctl: no coordinator at %s (not a socket)\n", o->endpoint);
            return NULL;
        }
        /* A socket file left by a coordinator that was killed: nobody accepts on it. */
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && strlen(o->endpoint + 6) < sizeof sa.sun_path) {
            memcpy(sa.sun_path, o->endpoint + 6, strlen(o->endpoint + 6) + 1);
            int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
            int e = errno;
            close(fd);
            if (r != 0 && e == ECONNREFUSED) {
                fprintf(stderr, "pi-ctl: no coordinator at %s (stale socket: nobody is listening)\n", o->endpoint);
                return NULL;
            }
            if (r != 0 && (e == EACCES || e == EPERM)) {
                fprintf(stderr, "pi-ctl: %s: permission denied (the socket is not this user's to connect to)\n",
                        o->endpoint);
                return NULL;
            }
        } else if (fd >= 0) {
            close(fd);
        }
    }
    void *sock = pi_ctl_socket(ctx, ZMQ_DEALER, timeout_ms);
    if (!sock) return NULL;
    if (pi_ctl_connect(sock, o->endpoint) != 0) {
        fprintf(stderr, "pi-ctl: cannot connect to %s\n", o->endpoint);
        pi_ctl_close(&sock);
    }
    return sock;
}

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Receive the answer to request req (skipping stale ones, but within the one timeout: answers to
 * other requests do not extend it). 0 or -1 with a message printed. */
static int recv_answer(void *sock, const struct ctl_opts *o, uint64_t req, struct pi_ctl_msg *m)
{
    const int64_t deadline = now_ms() + o->timeout_ms;
    for (;;) {
        int rc = pi_ctl_recv(sock, NULL, NULL, m, NULL);
        if (rc == 0 && m->request_id != req && now_ms() > deadline) {
            pi_ctl_msg_clear(m);
            rc = -PI_ERR_TIMEOUT;
        }
        if (rc == -PI_ERR_TIMEOUT) {
            fprintf(stderr, "pi-ctl: no answer from %s within %d ms (is pi-coordinator running?)\n", o->endpoint, o->timeout_ms);
            return -1;
        }
        if (rc != 0) { fprintf(stderr, "pi-ctl: bad answer from %s: %s\n", o->endpoint, pi_err_str(rc)); return -1; }
        if (m->request_id == req) return 0;
        pi_ctl_msg_clear(m);
    }
}

static int send_req(void *sock, const struct ctl_opts *o, struct pi_ctl_msg *m)
{
    int rc = pi_ctl_send(sock, NULL, 0, m);
    if (rc != 0) fprintf(stderr, "pi-ctl: cannot send to %s: %s\n", o->endpoint, pi_err_str(rc));
    return rc == 0 ? 0 : -1;
}

static int print_error(const struct pi_ctl_msg *m)
{
    if (m->type == PI_CTL_ERROR) {
        fprintf(stderr, "pi-ctl: the coordinator answered: %s (%s)\n", m->u.error.text ? m->u.error.text : "",
                pi_err_str(m->u.error.code));
        return -1;
    }
    fprintf(stderr, "pi-ctl: unexpected answer %s\n", pi_ctl_type_name(m->type));
    return -1;
}

/* A string member of a JSON object, "?" when missing or not a string (the status comes from a peer). */
static const char *jstr(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "?";
}

static void print_workers(json_t *st)
{
    json_t *ws = json_object_get(st, "workers");
    printf("%-5s %5s %8s %4s %-9s %8s %10s %12s  %s\n", "role", "index", "pid", "node", "state", "hb_ms", "neurons/l",
           "memory", "cores");
    size_t i;
    json_t *w;
    json_array_foreach(ws, i, w) {
        char cores[256] = "";
        size_t k, n = 0;
        json_t *c;
        json_array_foreach(json_object_get(w, "cores"), k, c) {
            if (n < sizeof cores - 16) n += (size_t)snprintf(cores + n, sizeof cores - n, "%s%lld", k ? "," : "", (long long)json_integer_value(c));
        }
        printf("%-5s %5lld %8lld %4lld %-9s %8lld %10lld %12lld  %s\n", jstr(w, "role"),
               (long long)json_integer_value(json_object_get(w, "index")), (long long)json_integer_value(json_object_get(w, "pid")),
               (long long)json_integer_value(json_object_get(w, "numa_node")), jstr(w, "state"),
               (long long)json_integer_value(json_object_get(w, "heartbeat_age_ms")),
               (long long)json_integer_value(json_object_get(w, "neurons_per_layer")),
               (long long)json_integer_value(json_object_get(w, "memory_bytes")), cores);
    }
}

/* status, workers, shutdown: one request, one answer. */
static int simple(void *sock, const struct ctl_opts *o, int type)
{
    struct pi_ctl_msg q = {.type = (uint16_t)type, .request_id = (uint64_t)getpid()};
    struct pi_ctl_msg m;
    if (send_req(sock, o, &q) != 0 || recv_answer(sock, o, q.request_id, &m) != 0) return -1;
    int rc = 0;
    if (type == PI_CTL_SHUTDOWN && m.type == PI_CTL_SHUTDOWN) {
        printf("shutting down\n");
    } else if (type == PI_CTL_STATUS_REQ && m.type == PI_CTL_STATUS_RESP) {
        if (strcmp(o->cmd, "workers") == 0) print_workers(m.u.json);
        else {
            char *txt = json_dumps(m.u.json, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            if (txt) printf("%s\n", txt);
            free(txt);
        }
    } else {
        rc = print_error(&m);
    }
    pi_ctl_msg_clear(&m);
    return rc;
}

static int generate(void *sock, const struct ctl_opts *o)
{
    if (!o->prompt) { fprintf(stderr, "pi-ctl: generate needs --prompt TEXT\n"); return -2; }
    struct pi_ctl_msg q = {.type = PI_CTL_GENERATE, .request_id = (uint64_t)getpid()};
    q.u.generate.n_predict = (uint32_t)o->n_predict;
    q.u.generate.seed = o->seed;
    q.u.generate.temp = (float)o->temp;
    q.u.generate.prompt = (char *)o->prompt;
    if (send_req(sock, o, &q) != 0) return -1;
    size_t bytes = 0;
    for (;;) {
        struct pi_ctl_msg m;
        if (recv_answer(sock, o, q.request_id, &m) != 0) return -1;
        if (m.type == PI_CTL_CHUNK) {
            size_t n = strlen(m.u.chunk.text);
            fwrite(m.u.chunk.text, 1, n, stdout);
            fflush(stdout);
            bytes += n;
            pi_ctl_msg_clear(&m);
            continue;
        }
        int rc = 0;
        if (bytes) putchar('\n');
        if (m.type == PI_CTL_END && m.u.end.status != 0) {
            fprintf(stderr, "pi-ctl: generation failed: %s (%s)\n", m.u.end.reason, pi_err_str(m.u.end.status));
            rc = -1;
        } else if (m.type != PI_CTL_END) {
            rc = print_error(&m);
        }
        pi_ctl_msg_clear(&m);
        return rc;
    }
}

int main(int argc, char **argv)
{
    pi_log_set_program("pi-ctl");
    pi_log_set_level(PI_LOG_ERROR);
    struct ctl_opts o = {0};
    int p = parse(argc, argv, &o);
    if (p <= 0) {
        free(o.prompt_buf);
        return p == 0 ? 0 : 2;
    }
    int type = strcmp(o.cmd, "status") == 0 || strcmp(o.cmd, "workers") == 0 ? PI_CTL_STATUS_REQ
               : strcmp(o.cmd, "shutdown") == 0                              ? PI_CTL_SHUTDOWN
               : strcmp(o.cmd, "generate") == 0                              ? PI_CTL_GENERATE
                                                                             : 0;
    if (!type) {
        fprintf(stderr, "pi-ctl: unknown command '%s' (see --help)\n", o.cmd);
        free(o.prompt_buf);
        return 2;
    }
    void *ctx = zmq_ctx_new();
    void *sock = connect_ctl(ctx, &o, type == PI_CTL_GENERATE ? PI_MAX(o.timeout_ms, 60000) : o.timeout_ms);
    int rc = -1;
    if (sock) rc = type == PI_CTL_GENERATE ? generate(sock, &o) : simple(sock, &o, type);
    pi_ctl_close(&sock);
    zmq_ctx_term(ctx);
    free(o.prompt_buf);
    return rc == 0 ? 0 : rc == -2 ? 2 : 1;
}
