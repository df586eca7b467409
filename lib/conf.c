/*
 * lib/conf.c - the configuration key table and its INI / command-line parsers (lib/conf.h).
 *
 * The table is the single source of truth: each row names a field of struct pi_config by offset, its
 * kind (string, integer, real, byte size, enumeration), bounds and default. inih does the INI
 * tokenising; everything it hands us is validated here.
 */
#include "config.h"
#include "lib/conf.h"
#include "lib/common.h"
#include "lib/log.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

enum key_kind { K_STR, K_INT, K_REAL, K_BYTES, K_ENUM };

struct key_def {
    struct pi_config_key_info info;
    enum key_kind kind;
    size_t offset;            /* into struct pi_config */
    double min, max;          /* K_INT, K_REAL bounds (inclusive) */
    const char *const *names; /* K_ENUM: NULL-terminated, index = value; K_STR: the values to list when valid refuses */
    bool (*valid)(const char *v); /* K_STR: the value's check, or NULL (any text) */
};

/* K_ENUM fields are stored through an int: the enums must have int's size. */
_Static_assert(sizeof(enum pi_gpu_backend) == sizeof(int), "enum pi_gpu_backend is stored as an int");
_Static_assert(sizeof(enum pi_activation_cfg) == sizeof(int), "enum pi_activation_cfg is stored as an int");
_Static_assert(sizeof(enum pi_check_tensors_cfg) == sizeof(int), "enum pi_check_tensors_cfg is stored as an int");
_Static_assert(sizeof(enum pi_tune_cuda_matvec) == sizeof(int), "enum pi_tune_cuda_matvec is stored as an int");
_Static_assert(sizeof(enum pi_tune_cpu_kernels) == sizeof(int), "enum pi_tune_cpu_kernels is stored as an int");
_Static_assert(sizeof(enum pi_tune_prompt_stream) == sizeof(int), "enum pi_tune_prompt_stream is stored as an int");
_Static_assert(sizeof(enum pi_tune_cpu_pack) == sizeof(int), "enum pi_tune_cpu_pack is stored as an int");
_Static_assert(sizeof(enum pi_tune_cuda_hot_thresholds) == sizeof(int), "enum pi_tune_cuda_hot_thresholds is stored as an int");
_Static_assert(sizeof(enum pi_tune_down_t) == sizeof(int), "enum pi_tune_down_t is stored as an int");
_Static_assert(sizeof(enum pi_sparsity_cfg) == sizeof(int), "enum pi_sparsity_cfg is stored as an int");

static const char *const backend_names[] = {"none", "host", "cuda", NULL};
static const char *const activation_names[] = {"auto", "silu", "relu", "drelu", NULL};
static const char *const check_tensors_names[] = {"sampled", "full", NULL};
/* PI_TUNE_CUDA_MATVEC_Q8 (tests only) is left out on purpose: a configuration cannot choose it. */
static const char *const cuda_matvec_names[] = {"auto", "f32", NULL};
static const char *const cpu_kernels_names[] = {"auto", "scalar", "avx2", "avx512", "avx512vnni", "amx", NULL};
static const char *const prompt_stream_names[] = {"auto", "off", "on", NULL};
static const char *const cpu_pack_names[] = {"auto", "off", NULL};
static const char *const cuda_hot_thresholds_names[] = {"off", "on", NULL};
static const char *const down_t_names[] = {"f16", "grouped", NULL};
static const char *const sparsity_names[] = {"auto", "off", "safe", "aggressive", NULL};

/* The log level as lib/log.c reads it (any case; "warning" too), so that the coordinator and the
 * workers (PI_LOG_LEVEL) take the same spellings. */
/* [http] listen: "off" or HOST:PORT (the address itself is resolved when the server starts). */
static bool http_listen_ok(const char *v)
{
    if (strcmp(v, "off") == 0) return true;
    const char *c = v[0] == '[' ? strstr(v, "]:") : strrchr(v, ':');
    if (!c || c == v) return false;
    c += v[0] == '[' ? 2 : 1;
    int64_t port = 0;
    return pi_parse_int(c, 0, 65535, &port) == 0;
}

static bool log_level_ok(const char *v)
{
    enum pi_log_level lv;
    return pi_log_parse_level(v, &lv) == 0;
}

#define OFF(f) offsetof(struct pi_config, f)
static const struct key_def keys[] = {
    {{"model", "path", "", "GGUF model file (required)"}, K_STR, OFF(model_path), 0, 0, NULL, NULL},
    {{"model", "activation", "auto", "FFN activation: auto (from the file), silu, relu, drelu"}, K_ENUM, OFF(activation), 0, 0, activation_names, NULL},
    {{"model", "ctx", "0", "context length per sequence; 0 = the model's, at most 4096"}, K_INT, OFF(ctx_len), 0, 1 << 24, NULL, NULL},
    {{"model", "sidecar", "", "the model's sidecar (pi-profile's statistics); empty = MODEL.pinfer.gguf beside the model, read when present"}, K_STR, OFF(sidecar_path), 0, 0, NULL, NULL},
    {{"model", "calibration_text", "", "text the activation thresholds of a SwiGLU model are calibrated over when --sparsity safe or aggressive finds none in its sidecar; empty = the text installed with pinfer"}, K_STR, OFF(calib_text), 0, 0, NULL, NULL},
    {{"model", "chat_template", "", "chat format (llama2, llama3, chatml, mistral-v1, ...); empty = recognised from tokenizer.chat_template"}, K_STR, OFF(chat_template), 0, 0, NULL, NULL},
    {{"model", "check_tensors", "sampled", "NaN and infinity in the model's weights and block scales refuse the file at load: sampled (16 windows of 4 KiB per tensor, milliseconds) or full (every block: the whole file is read)"}, K_ENUM, OFF(check_tensors), 0, 0, check_tensors_names, NULL},
    {{"run", "dir", "$XDG_RUNTIME_DIR/pinfer", "run directory for sockets, created mode 0700; without $XDG_RUNTIME_DIR /tmp/pinfer-$UID"}, K_STR, OFF(run_dir), 0, 0, NULL, NULL},
    {{"control", "endpoint", "", "endpoint of the control socket: ipc://PATH or tcp://HOST:PORT (tcp needs [control] token_file); empty = ipc://RUN_DIR/control.sock"}, K_STR, OFF(control_endpoint), 0, 0, NULL, NULL},
    {{"control", "max_connections", "256", "connections the control socket holds at once; past it new ones are closed as they come (lowered to its share of the free file descriptors)"}, K_INT, OFF(max_connections), 1, 65536, NULL, NULL},
    {{"control", "token_file", "", "file (mode 0600) whose first line is the shared token a tcp:// client must send first; required for a tcp:// endpoint"}, K_STR, OFF(control_token_file), 0, 0, NULL, NULL},
    {{"http", "listen", "127.0.0.1:8080", "address of the HTTP API in server mode, HOST:PORT ([::1]:PORT for IPv6; port 0 picks a free one), or off; an address off the loopback needs api_key_file"}, K_STR, OFF(http_listen), 0, 0, NULL, http_listen_ok},
    {{"http", "api_key_file", "", "file of API keys, one per line; when set every route but /health and /metrics needs \"Authorization: Bearer KEY\""}, K_STR, OFF(http_api_key_file), 0, 0, NULL, NULL},
    {{"http", "max_body", "4M", "largest request body in bytes (K/M suffixes); larger ones get 413"}, K_BYTES, OFF(http_max_body), 0, 0, NULL, NULL},
    {{"http", "max_connections", "256", "HTTP connections held at once; more are refused (lowered to its share of the free file descriptors)"}, K_INT, OFF(http_max_connections), 1, 16384, NULL, NULL},
    {{"server", "slots", "4", "sequences served at once in server mode (continuous batching), each with its own KV cache of [model] ctx positions; one-shot runs use one"}, K_INT, OFF(server_slots), 1, 256, NULL, NULL},
    {{"server", "queue", "64", "requests waiting for a slot, at most; more get 429 (HTTP) or busy (control socket)"}, K_INT, OFF(server_queue), 0, 65536, NULL, NULL},
    {{"server", "queue_reserve", "16", "the last N places of the queue go only to clients (an API key, else an address) with fewer than N requests waiting, so that one client cannot fill it; 0: none reserved"}, K_INT, OFF(server_queue_reserve), 0, 65536, NULL, NULL},
    {{"server", "max_tokens", "0", "tokens one request may generate, at most; 0 = up to the context"}, K_INT, OFF(server_max_tokens), 0, 1 << 24, NULL, NULL},
    {{"server", "timeout", "600", "seconds a request may take from its arrival to its end, queue included; 0 = no limit"}, K_INT, OFF(server_timeout), 0, 86400 * 7, NULL, NULL},
    {{"server", "restart_max", "5", "restarts of the workers' pipeline within restart_window, at most (one per failure of a running pipeline; the tries after a failed restart are part of it); the next failure is final: requests are refused, pi-ctl status says failed, until the server is restarted; 0 = no cap"}, K_INT, OFF(server_restart_max), 0, 1000, NULL, NULL}, /* PI_SCHED_RESTART_MAX */
    {{"server", "restart_window", "300", "seconds over which restart_max counts restarts"}, K_INT, OFF(server_restart_window), 1, 86400 * 7, NULL, NULL},
    {{"cpu", "workers", "0", "number of CPU worker processes; 0 = one per NUMA node"}, K_INT, OFF(cpu_workers), 0, 64, NULL, NULL}, /* PI_EXCHANGE_MAX_WORKERS */
    {{"cpu", "threads", "0", "threads per CPU worker; 0 = the cores of its NUMA node"}, K_INT, OFF(cpu_threads), 0, PI_MAX_THREADS, NULL, NULL},
    {{"gpu", "backend", "host", "GPU worker backend: cuda, host (plain C stand-in) or none"}, K_ENUM, OFF(gpu_backend), 0, 0, backend_names, NULL},
    {{"gpu", "hot_fraction", "0.5", "fraction of each layer's FFN neurons kept by the GPU worker, 0 to 1"}, K_REAL, OFF(hot_fraction), 0, 1, NULL, NULL},
    {{"gpu", "vram_budget", "0", "device memory budget in bytes (K/M/G suffixes); 0 = use hot_fraction"}, K_BYTES, OFF(vram_budget), 0, 0, NULL, NULL},
    {{"gpu", "device", "0", "CUDA device index"}, K_INT, OFF(gpu_device), 0, 64, NULL, NULL},
    {{"gpu", "gpu_index", "", "PowerInfer GPU index file (.gpuidx) naming each layer's hot neurons; empty = the lowest ids, as many as hot_fraction or vram_budget give"}, K_STR, OFF(gpu_index), 0, 0, NULL, NULL},
    {{"gpu", "stall_ms", "30000", "ms the GPU worker may go without progress (a hung device call) before it is replaced; below 6000 a healthy one waiting on slow CPU workers can be"}, K_INT, OFF(gpu_stall_ms), 500, 3600000, NULL, NULL}, /* ipc/link.h PI_LINK_STALL_MS_MIN, _MAX */
    {{"generate", "n_predict", "128", "tokens to generate per request when not given"}, K_INT, OFF(n_predict), 0, 1 << 24, NULL, NULL},
    {{"generate", "temperature", "0.8", "sampling temperature; 0 = greedy"}, K_REAL, OFF(temperature), 0, 100, NULL, NULL},
    {{"generate", "top_k", "40", "keep the k most likely tokens; 0 = off"}, K_INT, OFF(top_k), 0, 1 << 24, NULL, NULL},
    {{"generate", "top_p", "0.95", "nucleus sampling threshold; 1 = off"}, K_REAL, OFF(top_p), 1e-6, 1, NULL, NULL}, /* > 0, as the sampler needs */
    {{"generate", "min_p", "0.05", "drop tokens below min_p times the top probability; 0 = off"}, K_REAL, OFF(min_p), 0, 1, NULL, NULL},
    {{"generate", "repeat_penalty", "1.0", "repetition penalty over recent tokens; 1 = off"}, K_REAL, OFF(repeat_penalty), 1e-6, 100, NULL, NULL},
    {{"generate", "presence_penalty", "0", "subtracted once from the logit of every token already generated (OpenAI's presence_penalty); 0 = off"}, K_REAL, OFF(presence_penalty), -2, 2, NULL, NULL},
    {{"generate", "frequency_penalty", "0", "subtracted from a token's logit once per time it was generated (OpenAI's frequency_penalty); 0 = off"}, K_REAL, OFF(frequency_penalty), -2, 2, NULL, NULL},
    {{"generate", "seed", "-1", "sampling seed; -1 = a random one (getrandom); also of a server request that sets none"}, K_INT, OFF(seed), -1, 9007199254740992.0, NULL, NULL},
    {{"log", "level", "info", "log level: error, warn, info, debug"}, K_STR, OFF(log_level), 0, 0, pi_log_level_names, log_level_ok},
    {{"sparsity", "mode", "auto", "FFN sparsity: ReLU models through their activation predictors, SwiGLU models through the sidecar's activation thresholds: off (dense), safe, aggressive (a lower recall target; thresholds at a KLD of 0.03 instead of 0.01), auto (safe for a ReLU model with predictors or a SwiGLU model whose safe thresholds skip at least 40%, else off)"}, K_ENUM, OFF(sparsity.mode), 0, 0, sparsity_names, NULL},
    {{"sparsity", "recall_every", "0", "measure the predictors' recall every Nth step (all gates computed and compared); 0 = never, at no cost"}, K_INT, OFF(sparsity.recall_every), 0, 1 << 30, NULL, NULL},
    /* [tune]: the performance choices that are real choices, each with what it costs (doc/cuda-backend.md) */
    {{"placement", "gpu_gbs", "2000", "the solver's device read bandwidth, GB/s (pi-bench --cuda-kernels measures it)"}, K_REAL, OFF(place_gpu_gbs), 1, 100000, NULL, NULL},
    {{"placement", "cpu_gbs", "0", "the solver's read bandwidth of all CPU workers together, GB/s; 0: measured at start-up (the workers' neuron kernel, about 0.2 s)"}, K_REAL, OFF(place_cpu_gbs), 0, 100000, NULL, NULL},
    {{"placement", "exchange_us", "20", "the solver's cost of one layer's exchange round trip, us (pi-bench --exchange measures it)"}, K_REAL, OFF(place_exchange_us), 0, 1000000, NULL, NULL},
    {{"tune", "cuda_matvec", "auto", "cuda backend's decode x: auto (8 bits for quantised weights of 12 Mi elements or more) or f32 (float precision; slower on 7B-class models)"}, K_ENUM, OFF(tune.cuda_matvec), 0, 0, cuda_matvec_names, NULL},
    {{"tune", "cpu_kernels", "auto", "CPU kernel variant of every process: auto (the best this CPU runs), scalar, avx2, avx512, avx512vnni, amx (clamped to what the CPU runs)"}, K_ENUM, OFF(tune.cpu_kernels), 0, 0, cpu_kernels_names, NULL},
    {{"tune", "batch", "512", "tokens one step evaluates at most: prompts go in chunks of this many (in server mode together with the running sequences' next tokens); larger chunks reuse each weight over more tokens (faster prompts) and cost host and device memory in proportion (1 to 4096)"}, K_INT, OFF(tune.batch), 1, 4096, NULL, NULL}, /* PI_TUNE_BATCH_MAX */
    {{"tune", "prompt_stream", "auto", "where a hybrid placement's prompt steps compute their cold FFN neurons: auto (the cost model of pinfer.conf(5): stream each layer's FFN weights to the GPU when modelled faster than the CPU workers), off (the CPU workers), on (always streamed); decode steps never stream"}, K_ENUM, OFF(tune.prompt_stream), 0, 0, prompt_stream_names, NULL},
    {{"tune", "worker_spin_us", "1000", "how long a CPU worker's idle threads (its thread pool and its wait for the next layer) spin before they sleep, microseconds: a layer that finds them asleep pays their wake-up (tens of microseconds on virtual CPUs); on a machine shared with other busy processes a long spin takes CPU time from the GPU worker (100 or 0 there); 0: the pool sleeps at once. A worker spins only where its threads and the GPU worker have a CPU each (0 to 1000000)"}, K_INT, OFF(tune.worker_spin_us), 0, 1000000, NULL, NULL},
    {{"tune", "cpu_pack", "auto", "whether the CPU's dense products read 16-row packed copies of their quantised weights (the in-process engine's matrices, the CPU workers' slices): auto (where the kernel variant has a packed kernel for the type and the copy fits the available memory with 1 GiB to spare), off (the file's rows: less memory, slower products)"}, K_ENUM, OFF(tune.cpu_pack), 0, 0, cpu_pack_names, NULL},
    {{"tune", "cuda_hot_thresholds", "off", "whether the cuda backend applies a SwiGLU model's activation thresholds to its hot neurons (the gate rows first, then the up and down rows of the neurons kept) or computes them densely: off (dense; on the H100 the gate-first path of a 7B-shaped layer took 1.2-1.6x the dense one's time at 40-50% of the pairs skipped), on. The CPU workers and the host backend apply the thresholds either way"}, K_ENUM, OFF(tune.cuda_hot_thresholds), 0, 0, cuda_hot_thresholds_names, NULL},
    {{"tune", "down_t", "f16", "the layout of the transposed down rows that the CPU workers and the single process (--gpu-backend none) read for their neuron-wise FFN (sparse runs): f16 (each weight rounded to f16, 2 bytes a weight) or grouped (a Q4_0 or Q8_0 file's own quants and scales, exact, about a quarter of f16's bytes; other types stay f16)"}, K_ENUM, OFF(tune.down_t), 0, 0, down_t_names, NULL},
};
#undef OFF

size_t pi_config_key_count(void) { return PI_ARRAY_LEN(keys); }

const struct pi_config_key_info *pi_config_key(size_t i) { return i < PI_ARRAY_LEN(keys) ? &keys[i].info : NULL; }

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t len, const char *fmt, ...)
{
    if (!err || len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

int pi_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    if (!s) return -PI_ERR_INVAL;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (end == s || *end != '\0') return -PI_ERR_INVAL;
    if (errno == ERANGE || x < lo || x > hi) return -PI_ERR_RANGE;
    *out = x;
    return 0;
}

int pi_parse_bytes(const char *s, uint64_t *out)
{
    /* A digit first: strtoull would also take leading blanks and a sign, and it turns " -1" into
     * 2^64 - 1 without reporting an error. */
    if (!s || *s < '0' || *s > '9') return -PI_ERR_INVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s) return -PI_ERR_INVAL;
    if (errno == ERANGE) return -PI_ERR_RANGE;
    uint64_t mult = 1;
    switch (*end) {
    case 'k': case 'K': mult = 1ull << 10; end++; break;
    case 'm': case 'M': mult = 1ull << 20; end++; break;
    case 'g': case 'G': mult = 1ull << 30; end++; break;
    case 't': case 'T': mult = 1ull << 40; end++; break;
    default: break;
    }
    if (mult > 1 && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0)) end += strlen(end);
    else if (mult == 1 && strcmp(end, "B") == 0) end++;
    if (*end != '\0') return -PI_ERR_INVAL;
    uint64_t r;
    if (pi_mul_overflows(v, mult, &r)) return -PI_ERR_RANGE;
    *out = r;
    return 0;
}

static char **str_field(struct pi_config *cfg, const struct key_def *k) { return (char **)((char *)cfg + k->offset); }

/* why = "'v' is not one of: a, b, ..." for the NULL-terminated names. */
static void not_one_of(const char *v, const char *const *names, char *why, size_t wlen)
{
    char list[256] = "";
    for (int i = 0; names[i]; i++) {
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, names[i], sizeof list - strlen(list) - 1);
    }
    set_err(why, wlen, "'%s' is not one of: %s", v, list);
}

/* Store text into the field of k, validating it. Returns 0 or -PI_ERR_* with a reason in why. */
static int set_value(struct pi_config *cfg, const struct key_def *k, const char *v, char *why, size_t wlen)
{
    char *end;
    switch (k->kind) {
    case K_STR: {
        if (k->valid && !k->valid(v)) { /* a string with a fixed set of values (the log level: kept as text for the workers) */
            not_one_of(v, k->names, why, wlen);
            return -PI_ERR_INVAL;
        }
        char *dup = strdup(v);
        if (!dup) return -PI_ERR_NOMEM;
        char **f = str_field(cfg, k);
        free(*f);
        *f = dup;
        return 0;
    }
    case K_INT: {
        int64_t x;
        int rc = pi_parse_int(v, (int64_t)k->min, (int64_t)k->max, &x);
        if (rc == -PI_ERR_INVAL) set_err(why, wlen, "'%s' is not an integer", v);
        else if (rc != 0) set_err(why, wlen, "%s is out of range [%.0f, %.0f]", v, k->min, k->max);
        else *(int64_t *)((char *)cfg + k->offset) = x;
        return rc;
    }
    case K_REAL: {
        errno = 0;
        double x = strtod(v, &end);
        if (end == v || *end != '\0' || isnan(x)) { set_err(why, wlen, "'%s' is not a number", v); return -PI_ERR_INVAL; }
        if (errno == ERANGE || x < k->min || x > k->max) {
            set_err(why, wlen, "%s is out of range [%g, %g]", v, k->min, k->max);
            return -PI_ERR_RANGE;
        }
        memcpy((char *)cfg + k->offset, &x, sizeof x);
        return 0;
    }
    case K_BYTES: {
        uint64_t x;
        int rc = pi_parse_bytes(v, &x);
        if (rc != 0) { set_err(why, wlen, "'%s' is not a byte size (e.g. 8G, 512M, 1073741824)", v); return rc; }
        *(uint64_t *)((char *)cfg + k->offset) = x;
        return 0;
    }
    case K_ENUM:
        for (int i = 0; k->names[i]; i++) {
            if (strcasecmp(k->names[i], v) == 0) {
                *(int *)((char *)cfg + k->offset) = i;
                return 0;
            }
        }
        not_one_of(v, k->names, why, wlen);
        return -PI_ERR_INVAL;
    }
    return -PI_ERR_INVAL;
}

static const struct key_def *find_key(const char *section, const char *key)
{
    for (size_t i = 0; i < PI_ARRAY_LEN(keys); i++)
        if (strcmp(keys[i].info.section, section) == 0 && strcmp(keys[i].info.key, key) == 0) return &keys[i];
    return NULL;
}

static bool section_known(const char *section)
{
    for (size_t i = 0; i < PI_ARRAY_LEN(keys); i++)
        if (strcmp(keys[i].info.section, section) == 0) return true;
    return false;
}

void pi_run_dir_default(char *out, size_t len)
{
    /* $XDG_RUNTIME_DIR is the per-user directory systemd makes (mode 0700, owned by the user; the
     * unit's RuntimeDirectory= too): nobody else can plant anything there, unlike /tmp. Taken only
     * when it is an absolute path to such a directory, short enough for the sockets under it. */
    const char *x = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    if (x && x[0] == '/' && strlen(x) + sizeof "/pinfer" <= PI_MIN(len, (size_t)64) && stat(x, &st) == 0 &&
        S_ISDIR(st.st_mode) && st.st_uid == getuid()) {
        snprintf(out, len, "%s/pinfer", x);
        return;
    }
    snprintf(out, len, "/tmp/pinfer-%u", (unsigned)getuid());
}

int pi_config_defaults(struct pi_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    char why[128];
    for (size_t i = 0; i < PI_ARRAY_LEN(keys); i++) {
        const char *d = keys[i].info.default_text;
        char buf[256];
        if (strcmp(keys[i].info.key, "dir") == 0 && strcmp(keys[i].info.section, "run") == 0) {
            pi_run_dir_default(buf, sizeof buf);
            d = buf;
        }
        int rc = set_value(cfg, &keys[i], d, why, sizeof why);
        PI_ASSERT(rc == 0 || rc == -PI_ERR_NOMEM); /* the table's defaults are valid */
        if (rc != 0) { pi_config_free(cfg); return rc; }
    }
    return 0;
}

void pi_config_free(struct pi_config *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < PI_ARRAY_LEN(keys); i++) {
        if (keys[i].kind == K_STR) {
            char **f = str_field(cfg, &keys[i]);
            free(*f);
            *f = NULL;
        }
    }
    memset(cfg, 0, sizeof *cfg);
}

struct load_ctx {
    struct pi_config *cfg;
    const char *path;
    FILE *f;
    int lineno; /* lines handed to inih so far: the line its handler is looking at */
    char *err;
    size_t errlen;
    int rc;
    int err_line; /* the line of the handler's error, when rc != 0 */
};

#define CONF_MAX_FILE (1 << 20) /* bytes of a config file */

/* Debian's inih is built without INI_HANDLER_LINENO, so the handler gets no line number: we feed
 * inih through our own reader and count the lines it takes (inih never reads ahead). The reader
 * also ends the parse with an error at a line longer than the buffer (inih would take its rest as a
 * line of its own: a '#' comment could turn into a setting) and at a NUL byte (the rest of the line
 * would be dropped silently). */
static char *read_line(char *str, int num, void *stream)
{
    struct load_ctx *c = stream;
    if (c->rc != 0 || num < 2) return NULL;
    int n = 0, ch = EOF;
    while (n < num - 1 && (ch = getc(c->f)) != EOF) {
        if (ch == '\0') {
            set_err(c->err, c->errlen, "%s:%d: NUL byte in the line", c->path, c->lineno + 1);
            c->rc = -PI_ERR_FORMAT;
            c->err_line = c->lineno + 1;
            return NULL;
        }
        str[n++] = (char)ch;
        if (ch == '\n') break;
    }
    if (n == 0) return NULL;
    str[n] = '\0';
    c->lineno++;
    if (str[n - 1] != '\n' && n == num - 1 && (ch = getc(c->f)) != EOF) {
        set_err(c->err, c->errlen, "%s:%d: line longer than %d bytes", c->path, c->lineno, num - 2);
        c->rc = -PI_ERR_FORMAT;
        c->err_line = c->lineno;
        return NULL;
    }
    return str;
}

static int handle_ini_line(void *user, const char *section, const char *name, const char *value)
{
    struct load_ctx *c = user;
    int lineno = c->lineno;
    if (c->rc != 0) return 0;
    c->err_line = lineno; /* kept only if this line fails */
    if (!section_known(section)) {
        set_err(c->err, c->errlen, "%s:%d: unknown section [%s]", c->path, lineno, section);
        c->rc = -PI_ERR_INVAL;
        return 0;
    }
    const struct key_def *k = find_key(section, name);
    if (!k) {
        set_err(c->err, c->errlen, "%s:%d: [%s] %s: unknown key", c->path, lineno, section, name);
        c->rc = -PI_ERR_INVAL;
        return 0;
    }
    char why[160];
    int rc = set_value(c->cfg, k, value, why, sizeof why);
    if (rc != 0) {
        set_err(c->err, c->errlen, "%s:%d: [%s] %s: %s", c->path, lineno, section, name,
                rc == -PI_ERR_NOMEM ? "out of memory" : why);
        c->rc = rc;
        return 0;
    }
    return 1;
}

int pi_config_load_file(struct pi_config *cfg, const char *path, char *err, size_t errlen)
{
    /* Non-blocking open: a FIFO given as the config must not hang the open; only a regular file of
     * at most CONF_MAX_FILE bytes is read (a directory, a FIFO or /dev/zero would be no settings, a
     * hang or an endless read). */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -PI_ERR_IO;
    }
    if (fstat(fd, &st) != 0) {
        set_err(err, errlen, "%s: fstat failed: %s", path, strerror(errno));
        close(fd);
        return -PI_ERR_IO;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > CONF_MAX_FILE) {
        set_err(err, errlen, "%s: cannot read: %s", path,
                S_ISDIR(st.st_mode) ? "is a directory" : !S_ISREG(st.st_mode) ? "not a regular file" : "larger than 1 MiB");
        close(fd);
        return -PI_ERR_IO;
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        close(fd);
        return -PI_ERR_IO;
    }
    /* inih's run-time switches (Debian's inih 55 has them): an indented line is not the continuation
     * of the previous value, and a ';' after a value is part of it (only whole lines are comments).
     * Its line buffer stays as built (200 bytes); read_line refuses longer lines. */
    ini_allow_multiline = false;
    ini_allow_inline_comments = false;
    struct load_ctx c = {cfg, path, f, 0, err, errlen, 0, 0};
    int r = ini_parse_stream(read_line, &c, handle_ini_line, &c);
    fclose(f);
    /* inih goes on after a line it cannot parse and returns the first such line: a section header
     * without its ']' is such a line, and the keys below it then reach the handler with the section
     * before it (or none), so the handler's complaint about one of them comes second. */
    if (c.rc != 0 && !(r > 0 && r < c.err_line)) return c.rc;
    if (r != 0) {
        /* inih reports the first line it could not parse (a handler error is caught above). */
        set_err(err, errlen, "%s:%d: syntax error (expected [section] or key = value)", path, r);
        return -PI_ERR_FORMAT;
    }
    return 0;
}

int pi_config_set(struct pi_config *cfg, const char *dotted, const char *value, const char *origin,
                  char *err, size_t errlen)
{
    const char *dot = strchr(dotted, '.');
    char section[64];
    if (!dot || (size_t)(dot - dotted) >= sizeof section) {
        set_err(err, errlen, "%s: '%s' is not a section.key name", origin, dotted);
        return -PI_ERR_INVAL;
    }
    memcpy(section, dotted, (size_t)(dot - dotted));
    section[dot - dotted] = '\0';
    const struct key_def *k = find_key(section, dot + 1);
    if (!k) {
        set_err(err, errlen, "%s: [%s] %s: unknown key", origin, section, dot + 1);
        return -PI_ERR_INVAL;
    }
    char why[160];
    int rc = set_value(cfg, k, value, why, sizeof why);
    if (rc != 0) set_err(err, errlen, "%s: [%s] %s: %s", origin, section, dot + 1, rc == -PI_ERR_NOMEM ? "out of memory" : why);
    return rc;
}

/* Set "SECTION.KEY=VALUE" of one plain section (no string keys) into c, which the caller zeroed and
 * filled with that section's current values. */
static int set_plain(struct pi_config *c, const char *section, const char *assignment, const char *origin, char *err,
                     size_t errlen)
{
    const char *eq = strchr(assignment, '=');
    char dotted[96];
    size_t sl = strlen(section);
    if (!eq || strncmp(assignment, section, sl) != 0 || assignment[sl] != '.' || (size_t)(eq - assignment) >= sizeof dotted) {
        set_err(err, errlen, "%s: '%s' is not %s.KEY=VALUE", origin, assignment, section);
        return -PI_ERR_INVAL;
    }
    memcpy(dotted, assignment, (size_t)(eq - assignment));
    dotted[eq - assignment] = '\0';
    /* the section's keys are plain values (no strings to own), so a zeroed config can carry them */
    const struct key_def *k = find_key(section, dotted + sl + 1);
    PI_ASSERT(!k || k->kind != K_STR);
    return pi_config_set(c, dotted, eq + 1, origin, err, errlen);
}

int pi_tune_defaults(struct pi_tune *t)
{
    struct pi_config c;
    int rc = pi_config_defaults(&c);
    if (rc == 0) *t = c.tune;
    pi_config_free(&c);
    return rc;
}

int pi_tune_set(struct pi_tune *t, const char *assignment, const char *origin, char *err, size_t errlen)
{
    struct pi_config c;
    memset(&c, 0, sizeof c);
    c.tune = *t;
    int rc = set_plain(&c, "tune", assignment, origin, err, errlen);
    if (rc == 0) *t = c.tune;
    return rc;
}

int pi_sparsity_conf_set(struct pi_sparsity_conf *s, const char *assignment, const char *origin, char *err, size_t errlen)
{
    struct pi_config c;
    memset(&c, 0, sizeof c);
    c.sparsity = *s;
    int rc = set_plain(&c, "sparsity", assignment, origin, err, errlen);
    if (rc == 0) *s = c.sparsity;
    return rc;
}

int pi_config_validate(const struct pi_config *cfg, char *err, size_t errlen)
{
    if (!cfg->model_path || !*cfg->model_path) {
        set_err(err, errlen, "no model: set [model] path in the config file or give --model");
        return -PI_ERR_INVAL;
    }
    if (!cfg->run_dir || !*cfg->run_dir) {
        set_err(err, errlen, "[run] dir must not be empty");
        return -PI_ERR_INVAL;
    }
    return 0;
}

size_t pi_config_key_value(const struct pi_config *cfg, size_t i, char *buf, size_t len)
{
    if (i >= PI_ARRAY_LEN(keys)) {
        if (len) buf[0] = '\0';
        return 0;
    }
    const struct key_def *k = &keys[i];
    const void *f = (const char *)cfg + k->offset;
    int w = 0;
    switch (k->kind) {
    case K_STR: w = snprintf(buf, len, "%s", *(char *const *)f ? *(char *const *)f : ""); break;
    case K_INT: w = snprintf(buf, len, "%lld", (long long)*(const int64_t *)f); break;
    case K_REAL: w = snprintf(buf, len, "%g", *(const double *)f); break;
    case K_BYTES: w = snprintf(buf, len, "%llu", (unsigned long long)*(const uint64_t *)f); break;
    case K_ENUM: {
        /* a value outside the names (a test hook such as PI_TUNE_CUDA_MATVEC_Q8) is never written as
         * another value: it shows as its number, which pi_config_set refuses */
        int v = *(const int *)f, n = 0;
        while (k->names[n]) n++;
        w = v >= 0 && v < n ? snprintf(buf, len, "%s", k->names[v]) : snprintf(buf, len, "%d", v);
        break;
    }
    }
    return w > 0 ? (size_t)w : 0;
}

size_t pi_config_format(const struct pi_config *cfg, char *buf, size_t len)
{
    size_t n = 0;
    const char *cur = "";
    for (size_t i = 0; i < PI_ARRAY_LEN(keys); i++) {
        const struct key_def *k = &keys[i];
        char val[128];
        pi_config_key_value(cfg, i, val, sizeof val);
        int w;
        if (strcmp(cur, k->info.section) != 0) {
            cur = k->info.section;
            w = snprintf(n < len ? buf + n : NULL, n < len ? len - n : 0, "%s[%s]\n", n ? "\n" : "", cur);
            if (w > 0) n += (size_t)w;
        }
        w = snprintf(n < len ? buf + n : NULL, n < len ? len - n : 0, "%s = %s\n", k->info.key, val);
        if (w > 0) n += (size_t)w;
    }
    return n;
}
