/*
 * tools/pi-ctl.c - pi-ctl: talk to a running pi-coordinator over its control socket (ipc/control.h):
 * `status` (JSON), `workers` (a table), `generate` (streams the text), `shutdown`. See pi-ctl(1).
 * With --config it finds the endpoint (and a tcp endpoint's token file) in the coordinator's
 * configuration file; a generation request carries only what the user set, the coordinator fills
 * the rest from its [generate] keys (ipc/control.h, PI_CTL_GEN_DEFAULT_*).
 *
 * One connection (ipc/control-stream.h: a unix or TCP socket carrying the protocol's messages), one
 * request, bounded waits: when no coordinator is there the command fails with a clear message and a
 * non-zero exit instead of hanging. Over tcp the first message is AUTH with the token of --token-file.
 */
#include "config.h"
#include "ipc/control.h"
#include "ipc/control-stream.h"
#include "ipc/futex.h"
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
#include <unistd.h>

struct ctl_opts {
    char endpoint[512];
    int timeout_ms;
    const char *cmd;
    const char *prompt;
    const char *token_file; /* tcp: the shared token's file */
    char *prompt_buf; /* owned: the prompt read from a file or standard input */
    const char *config_path; /* --config: the coordinator's configuration file */
    int endpoint_given;      /* --endpoint was given: it wins over --config */
    char token_buf[4096];    /* [control] token_file of --config */
    long n_predict;
    double temp;
    unsigned long long seed;
    uint32_t defaults; /* PI_CTL_GEN_DEFAULT_* bits of what the user did not set */
};

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: pi-ctl [--config FILE | --endpoint EP] [--token-file FILE] [--timeout MS] COMMAND [ARGS]\n"
            "Control a running pi-coordinator.\n"
            "\n"
            "Commands:\n"
            "  status                       the coordinator's state as JSON (model, uptime, counters, workers, tune)\n"
            "  workers                      one line per worker: role, index, pid, NUMA node, state, ...\n"
            "  ps                           one screen for people: the model, the CPU/GPU split, requests,\n"
            "                               speed and latency, the workers, the last error\n"
            "  generate --prompt TEXT [-n N] [--temp T] [--seed S]\n"
            "  generate -f FILE [-n N] ...  (--prompt-file FILE; FILE or --prompt '-': standard input,\n"
            "                               so the prompt is not on the command line that ps(1) shows)\n"
            "                               generate on the coordinator, streaming the text to stdout\n"
            "                               (what is not given comes from the coordinator's [generate]\n"
            "                               keys: n_predict, temperature, seed)\n"
            "  shutdown                     stop the coordinator and its workers\n"
            "\n"
            "Options:\n"
            "  --config FILE      the coordinator's configuration (pinfer.conf(5)): the endpoint is its\n"
            "                     [control] endpoint, else ipc://RUN_DIR/control.sock with its [run] dir,\n"
            "                     and a tcp:// endpoint's token is its [control] token_file; default: none\n"
            "  --endpoint EP      the control socket (wins over --config); default: $PI_CONTROL, else\n"
            "                     ipc://RUN_DIR/control.sock with RUN_DIR $XDG_RUNTIME_DIR/pinfer, or\n"
            "                     /tmp/pinfer-$UID without it\n"
            "  --token-file FILE  the shared token a tcp:// endpoint needs: the file of the coordinator's\n"
            "                     [control] token_file (mode 0600); default: none (ipc:// needs none)\n"
            "  --timeout MS       how long to wait for an answer; default: 5000 (generate: per piece of text)\n"
            "  -h, --help         print this help and exit\n"
            "  -V, --version      print the version and exit\n"
            "\n"
            "Exit status: 0 on success, 1 when the coordinator is not there, refused the connection or the request\n"
            "failed, 2 on a usage error.\n");
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

/* --config: the endpoint (unless --endpoint was given) and the token file (unless --token-file was)
 * as the coordinator derives them from the same file. Prints the error line. */
static int from_config(struct ctl_opts *o)
{
    struct pi_config cfg;
    char err[512];
    if (pi_config_defaults(&cfg) != 0) return -1;
    if (pi_config_load_file(&cfg, o->config_path, err, sizeof err) != 0) {
        fprintf(stderr, "pi-ctl: --config: %s\n", err);
        pi_config_free(&cfg);
        return -1;
    }
    int rc = 0;
    if (!o->endpoint_given) {
        int w = cfg.control_endpoint && *cfg.control_endpoint
                    ? snprintf(o->endpoint, sizeof o->endpoint, "%s", cfg.control_endpoint)
                    : snprintf(o->endpoint, sizeof o->endpoint, "ipc://%s/control.sock", cfg.run_dir);
        if (w < 0 || (size_t)w >= sizeof o->endpoint) {
            fprintf(stderr, "pi-ctl: --config %s: the control endpoint is longer than %zu bytes\n", o->config_path,
                    sizeof o->endpoint - 1);
            rc = -1;
        }
    }
    if (rc == 0 && !o->token_file && cfg.control_token_file && *cfg.control_token_file) {
        if (strlen(cfg.control_token_file) >= sizeof o->token_buf) {
            fprintf(stderr, "pi-ctl: --config %s: [control] token_file is too long\n", o->config_path);
            rc = -1;
        } else {
            snprintf(o->token_buf, sizeof o->token_buf, "%s", cfg.control_token_file);
            o->token_file = o->token_buf;
        }
    }
    pi_config_free(&cfg);
    return rc;
}

static int parse(int argc, char **argv, struct ctl_opts *o)
{
    static const struct option lo[] = {{"endpoint", required_argument, NULL, 'e'},
                                       {"timeout", required_argument, NULL, 't'},
                                       {"token-file", required_argument, NULL, 'k'},
                                       {"prompt", required_argument, NULL, 'p'},
                                       {"prompt-file", required_argument, NULL, 'f'},
                                       {"n-predict", required_argument, NULL, 'n'},
                                       {"temp", required_argument, NULL, 'T'},
                                       {"seed", required_argument, NULL, 's'},
                                       {"config", required_argument, NULL, 'c'},
                                       {"help", no_argument, NULL, 'h'},
                                       {"version", no_argument, NULL, 'V'},
                                       {NULL, 0, NULL, 0}};
    const char *env = getenv("PI_CONTROL");
    if (env && *env) snprintf(o->endpoint, sizeof o->endpoint, "%s", env);
    else {
        char dir[256];
        pi_run_dir_default(dir, sizeof dir); /* the coordinator's default [run] dir */
        snprintf(o->endpoint, sizeof o->endpoint, "ipc://%s/control.sock", dir);
    }
    o->timeout_ms = 5000;
    o->defaults = PI_CTL_GEN_DEFAULT_ALL;
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
            o->endpoint_given = 1;
            break;
        case 'c': o->config_path = optarg; break;
        case 't': {
            long t = strtol(optarg, &end, 10); /* range-checked as a long: (int) would wrap huge values */
            if (*end || errno || t < 1 || t > INT32_MAX) goto bad;
            o->timeout_ms = (int)t;
            break;
        }
        case 'k': o->token_file = optarg; break;
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
            o->defaults &= ~PI_CTL_GEN_DEFAULT_N_PREDICT;
            break;
        case 'T':
            o->temp = strtod(optarg, &end);
            if (*end || !(o->temp >= 0 && o->temp <= 100)) goto bad;
            o->defaults &= ~PI_CTL_GEN_DEFAULT_TEMP;
            break;
        case 's':
            o->seed = strtoull(optarg, &end, 10);
            if (*end || errno) goto bad;
            o->defaults &= ~PI_CTL_GEN_DEFAULT_SEED;
            break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("pi-ctl (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
        default: fprintf(stderr, "pi-ctl: bad option (see --help)\n"); return -1;
        }
        continue;
    bad:
        fprintf(stderr, "pi-ctl: bad value '%s' (see --help)\n", optarg);
        return -1;
    }
    if (o->config_path && from_config(o) != 0) return -1;
    if (optind >= argc) { fprintf(stderr, "pi-ctl: no command (status, workers, ps, generate, shutdown; see --help)\n"); return -1; }
    o->cmd = argv[optind++]; /* GNU getopt moved the options (generate's too) before it */
    if (optind < argc) { fprintf(stderr, "pi-ctl: unexpected argument '%s'\n", argv[optind]); return -1; }
    return 1;
}

/* Connect and, with a token file, authenticate (the coordinator answers a wrong token with an ERROR
 * and closes). Each failure of connect(2) is named: a socket we may not reach is not a missing one. */
static pi_ctl_client_t *connect_ctl(const struct ctl_opts *o, uint64_t req)
{
    char token[PI_CTL_TOKEN_MAX + 1] = "", err[512];
    if (o->token_file && pi_ctl_token_load(o->token_file, token, sizeof token, err, sizeof err) != 0) {
        fprintf(stderr, "pi-ctl: %s\n", err);
        return NULL;
    }
    struct pi_ctl_ep ep;
    if (pi_ctl_ep_parse(o->endpoint, &ep, err, sizeof err) != 0) {
        fprintf(stderr, "pi-ctl: %s\n", err);
        return NULL;
    }
    if (ep.transport == PI_CTL_TCP && !token[0])
        fprintf(stderr, "pi-ctl: warning: %s is tcp:// and no --token-file was given; the coordinator will refuse\n",
                o->endpoint);
    pi_ctl_client_t *c = pi_ctl_client_new(o->endpoint, o->timeout_ms);
    if (!c) {
        const int e = errno;
        if (e == EACCES || e == EPERM)
            fprintf(stderr,
                    "pi-ctl: %s: permission denied (the socket or a directory above it is not this user's to open)\n",
                    o->endpoint);
        else if (e == ENOENT || e == ENOTDIR)
            fprintf(stderr, "pi-ctl: no coordinator at %s (no such socket: %s)\n", o->endpoint, strerror(e));
        else if (e == EAGAIN || e == EWOULDBLOCK)
            fprintf(stderr,
                    "pi-ctl: the coordinator at %s is busy: its queue of new connections stayed full for the "
                    "timeout (%d ms); try again, or raise --timeout\n",
                    o->endpoint, o->timeout_ms);
        else if (e == ECONNREFUSED && ep.transport == PI_CTL_IPC)
            fprintf(stderr, "pi-ctl: no coordinator at %s (stale socket: nobody is listening)\n", o->endpoint);
        else fprintf(stderr, "pi-ctl: no coordinator at %s (%s)\n", o->endpoint, strerror(e));
        explicit_bzero(token, sizeof token);
        return NULL;
    }
    if (token[0]) {
        struct pi_ctl_msg a = {.type = PI_CTL_AUTH, .request_id = req};
        a.u.auth.token = token;
        int rc = pi_ctl_client_send(c, &a);
        if (rc != 0 && rc != -PI_ERR_PEER) { /* closed: the coordinator's answer says why */
            fprintf(stderr, "pi-ctl: cannot send to %s: %s\n", o->endpoint, pi_err_str(rc));
            pi_ctl_client_destroy(&c);
        }
    }
    explicit_bzero(token, sizeof token);
    return c;
}

/* Receive the answer to request req (skipping stale ones, but within the one timeout: answers to
 * other requests do not extend it). 0 or -1 with a message printed. */
static int recv_answer(pi_ctl_client_t *c, const struct ctl_opts *o, int timeout_ms, uint64_t req, struct pi_ctl_msg *m)
{
    const int64_t deadline = pi_clock_ns() / 1000000 + timeout_ms;
    for (;;) {
        int rc = pi_ctl_client_recv(c, m, (int)PI_MAX(0, deadline - pi_clock_ns() / 1000000));
        if (rc == -PI_ERR_TIMEOUT) {
            fprintf(stderr, "pi-ctl: no answer from %s within %d ms (is pi-coordinator running?)\n", o->endpoint,
                    timeout_ms);
            return -1;
        }
        if (rc == -PI_ERR_PEER) {
            fprintf(stderr, "pi-ctl: %s closed the connection without an answer (at its connection cap?)\n",
                    o->endpoint);
            return -1;
        }
        if (rc != 0) { fprintf(stderr, "pi-ctl: bad answer from %s: %s\n", o->endpoint, pi_err_str(rc)); return -1; }
        /* An ERROR for request 0 is about the connection (refused, out of step): the answer too. */
        if (m->request_id == req || (m->type == PI_CTL_ERROR && m->request_id == 0)) return 0;
        pi_ctl_msg_clear(m);
    }
}

/* Send a request; 0 also when the coordinator closed the connection first (it refused it: the
 * answer it sent before says why, and recv_answer prints it). */
static int send_req(pi_ctl_client_t *c, const struct ctl_opts *o, struct pi_ctl_msg *m)
{
    int rc = pi_ctl_client_send(c, m);
    if (rc != 0 && rc != -PI_ERR_PEER) fprintf(stderr, "pi-ctl: cannot send to %s: %s\n", o->endpoint, pi_err_str(rc));
    return rc == 0 || rc == -PI_ERR_PEER ? 0 : -1;
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

static long long jint(json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

static double jreal(json_t *o, const char *key)
{
    return json_number_value(json_object_get(o, key));
}

/* A byte count for people ("3.8 GiB"). */
static const char *human_bytes(double b, char *buf, size_t len)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) b /= 1024, u++;
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
    return buf;
}

/* pi-ctl ps: the status as one screen. */
static void print_ps(json_t *st)
{
    json_t *m = json_object_get(st, "model"), *sc = json_object_get(st, "scheduler"), *sp = json_object_get(st, "sparsity");
    char b1[32];
    const char *path = jstr(m, "path"), *slash = strrchr(path, '/');
    printf("model     %s  %s, %s, %lld layers, n_embd %lld, n_ff %lld, vocab %lld, %s\n", slash ? slash + 1 : path,
           human_bytes((double)jint(m, "file_bytes"), b1, sizeof b1), jstr(m, "arch"), jint(m, "layers"),
           jint(m, "n_embd"), jint(m, "n_ff"), jint(m, "n_vocab"), jstr(m, "activation"));
    const long long hot = jint(st, "hot_neurons_per_layer"), n_ff = jint(m, "n_ff");
    printf("split     backend %s", jstr(st, "gpu_backend"));
    if (hot >= 0 && n_ff > 0)
        printf(", hot neurons %lld of %lld per layer (%.0f%%) on the GPU worker, the rest on %lld CPU worker(s)", hot, n_ff,
               100.0 * (double)hot / (double)n_ff, jint(st, "cpu_workers"));
    else if (hot < 0) printf(", the whole model in the coordinator's process");
    printf("\n");
    const long long up = jint(st, "uptime_ms") / 1000;
    printf("uptime    %lldh%02lldm%02llds  pid %lld  control %s  http %s\n", up / 3600, up / 60 % 60, up % 60, jint(st, "pid"),
           jstr(st, "control"), sc ? jstr(sc, "http") : "?");
    if (sc) {
        json_t *oc = json_object_get(sc, "outcomes");
        printf("requests  %s; running %lld, waiting %lld (queue %lld), slots %lld; ended %lld: stop %lld, length %lld, "
               "cancelled %lld, timeout %lld, error %lld; refused %lld\n",
               json_is_true(json_object_get(sc, "ready")) ? "ready" : "NOT READY", jint(sc, "running"), jint(sc, "waiting"),
               jint(sc, "queue_max"), jint(sc, "slots"), jint(sc, "requests_ended"), jint(oc, "stop"), jint(oc, "length"),
               jint(oc, "cancelled"), jint(oc, "timeout"), jint(oc, "error"), jint(sc, "refused"));
        const double tpot = jreal(sc, "mean_tpot_s");
        printf("speed     %lld tokens generated (%.1f tok/s over the uptime); mean time to first token %.0f ms, %.1f tok/s "
               "per request; prompt tokens %lld (%lld from the cache); KV cache %.0f%% used\n",
               jint(sc, "generated_tokens"), jreal(sc, "generated_tokens_per_s"), jreal(sc, "mean_ttft_s") * 1e3,
               tpot > 0 ? 1.0 / tpot : 0.0, jint(sc, "prompt_tokens"), jint(sc, "cached_tokens"),
               jreal(sc, "kv_cache_usage") * 100);
    }
    if (sp) printf("sparsity  %s: %.1f%% of the FFN pairs skipped\n", jstr(sp, "mode"), jreal(sp, "sparsity") * 100);
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(st, "workers"), i, w) {
        printf("%s %s %lld: %s, pid %lld, node %lld, %s\n", i ? "         " : "workers  ", jstr(w, "role"), jint(w, "index"),
               jstr(w, "state"), jint(w, "pid"), jint(w, "numa_node"),
               human_bytes((double)jint(w, "memory_bytes"), b1, sizeof b1));
    }
    const char *err = sc ? jstr(sc, "last_error") : "";
    printf("errors    %lld engine failure(s), %lld restart(s); last: %s\n", sc ? jint(sc, "engine_errors") : 0,
           sc ? jint(sc, "restarts") : 0, *err ? err : "none");
}

/* status, workers, ps, shutdown: one request, one answer. */
static int simple(pi_ctl_client_t *c, const struct ctl_opts *o, int type, uint64_t req)
{
    struct pi_ctl_msg q = {.type = (uint16_t)type, .request_id = req};
    struct pi_ctl_msg m;
    if (send_req(c, o, &q) != 0 || recv_answer(c, o, o->timeout_ms, q.request_id, &m) != 0) return -1;
    int rc = 0;
    if (type == PI_CTL_SHUTDOWN && m.type == PI_CTL_SHUTDOWN) {
        printf("shutting down\n");
    } else if (type == PI_CTL_STATUS_REQ && m.type == PI_CTL_STATUS_RESP) {
        if (strcmp(o->cmd, "workers") == 0) print_workers(m.u.json);
        else if (strcmp(o->cmd, "ps") == 0) print_ps(m.u.json);
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

static int generate(pi_ctl_client_t *c, const struct ctl_opts *o, uint64_t req)
{
    struct pi_ctl_msg q = {.type = PI_CTL_GENERATE, .request_id = req};
    q.u.generate.defaults = o->defaults; /* the rest is the coordinator's [generate] */
    q.u.generate.n_predict = (uint32_t)o->n_predict;
    q.u.generate.seed = o->seed;
    q.u.generate.temp = (float)o->temp;
    q.u.generate.prompt = (char *)o->prompt;
    if (send_req(c, o, &q) != 0) return -1;
    size_t bytes = 0;
    for (;;) {
        struct pi_ctl_msg m;
        if (recv_answer(c, o, PI_MAX(o->timeout_ms, 60000), q.request_id, &m) != 0) return -1;
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
    int type = strcmp(o.cmd, "status") == 0 || strcmp(o.cmd, "workers") == 0 || strcmp(o.cmd, "ps") == 0 ? PI_CTL_STATUS_REQ
               : strcmp(o.cmd, "shutdown") == 0                              ? PI_CTL_SHUTDOWN
               : strcmp(o.cmd, "generate") == 0                              ? PI_CTL_GENERATE
                                                                             : 0;
    if (!type) {
        fprintf(stderr, "pi-ctl: unknown command '%s' (see --help)\n", o.cmd);
        free(o.prompt_buf);
        return 2;
    }
    if (type == PI_CTL_GENERATE && !o.prompt) {
        fprintf(stderr, "pi-ctl: generate needs --prompt TEXT\n");
        free(o.prompt_buf);
        return 2;
    }
    const uint64_t req = (uint64_t)getpid();
    pi_ctl_client_t *c = connect_ctl(&o, req);
    int rc = -1;
    if (c) rc = type == PI_CTL_GENERATE ? generate(c, &o, req) : simple(c, &o, type, req);
    pi_ctl_client_destroy(&c);
    free(o.prompt_buf);
    return rc == 0 ? 0 : 1;
}
