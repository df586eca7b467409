/* tests/unit/test-config.c - pinfer.conf parsing: defaults, overrides, and one clear error per bad input. */
#include "config.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "tests/tap.h"

#include <sys/stat.h>
#include <unistd.h>

static char path[64];

static void write_conf(const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) tap_bail("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* Load text as a config file; returns the rc and leaves the message in err. */
static int load(const char *text, struct pi_config *cfg, char *err, size_t len)
{
    write_conf(text);
    pi_config_free(cfg);
    if (pi_config_defaults(cfg) != 0) tap_bail("defaults failed");
    err[0] = '\0';
    return pi_config_load_file(cfg, path, err, len);
}

int main(void)
{
    struct pi_config cfg = {0};
    char err[512];
    snprintf(path, sizeof path, "/tmp/pi-test-config-%ld.conf", (long)getpid());

    tap_ok(pi_config_defaults(&cfg) == 0, "defaults load");
    tap_ok(cfg.gpu_backend == PI_GPU_HOST && cfg.hot_fraction == 0.5 && cfg.seed == -1, "defaults match the table");
    tap_ok(pi_config_validate(&cfg, err, sizeof err) == -PI_ERR_INVAL && strstr(err, "no model"), "validation wants a model: %s", err);

    int rc = load("# comment\n[model]\npath = /m.gguf\nactivation = relu\n[gpu]\nbackend = cuda\nhot_fraction = 0.25\n"
                  "vram_budget = 6G\n[cpu]\nworkers = 2\n", &cfg, err, sizeof err);
    tap_ok(rc == 0, "good file loads (%s)", err);
    tap_is_str(cfg.model_path, "/m.gguf", "model path read");
    tap_ok(cfg.activation == PI_ACT_CFG_RELU && cfg.gpu_backend == PI_GPU_CUDA, "enums read");
    tap_ok(cfg.hot_fraction == 0.25 && cfg.cpu_workers == 2, "numbers read");
    tap_ok(cfg.vram_budget == 6ull << 30, "byte size with suffix read");
    tap_ok(pi_config_validate(&cfg, err, sizeof err) == 0, "complete config validates");

    rc = pi_config_set(&cfg, "gpu.hot_fraction", "1", "command line", err, sizeof err);
    tap_ok(rc == 0 && cfg.hot_fraction == 1.0, "command line overrides the file");
    rc = pi_config_set(&cfg, "gpu.hot_fraction", "1.5", "command line", err, sizeof err);
    tap_ok(rc == -PI_ERR_RANGE && strstr(err, "command line: [gpu] hot_fraction: 1.5 is out of range"), "override out of range: %s", err);
    rc = pi_config_set(&cfg, "gpu.nosuch", "1", "command line", err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, "[gpu] nosuch: unknown key"), "override of an unknown key: %s", err);
    rc = pi_config_set(&cfg, "nodot", "1", "command line", err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, "not a section.key"), "override without a section: %s", err);

    /* Each bad file: the error names the file, the line and the key. */
    char want[256];
    rc = load("[model]\npath = x\nbogus = 1\n", &cfg, err, sizeof err);
    snprintf(want, sizeof want, "%s:3: [model] bogus: unknown key", path);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, want), "unknown key names file and line: %s", err);
    rc = load("[nosection]\na = 1\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, ":2: unknown section [nosection]"), "unknown section: %s", err);
    rc = load("[cpu]\nworkers = many\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, ":2: [cpu] workers: 'many' is not an integer"), "bad integer: %s", err);
    rc = load("[cpu]\nworkers = 100000\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_RANGE && strstr(err, "out of range"), "integer out of range: %s", err);
    rc = load("[gpu]\nbackend = metal\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, "'metal' is not one of: none, host, cuda"), "bad enum: %s", err);
    rc = load("[gpu]\nvram_budget = 12Q\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, "not a byte size"), "bad byte size: %s", err);
    rc = load("[generate]\ntemperature = nan\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL, "NaN rejected: %s", err);
    rc = load("[model\npath = x\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_FORMAT && strstr(err, ":1: syntax error"), "a section header without ']' is the error, not the key after it: %s", err);
    rc = load("[cpu]\nworkers = 2\n[gpu\nbackend = cuda\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_FORMAT && strstr(err, ":3: syntax error"), "the same further down: %s", err);
    rc = load("[log]\nlevel = loud\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, ":2: [log] level: 'loud' is not one of: error, warn, info, debug"), "bad log level in a file: %s", err);
    rc = pi_config_set(&cfg, "log.level", "verbose", "--log-level", err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, "--log-level: [log] level: 'verbose' is not one of"), "bad log level on the command line: %s", err);
    char late_long[400];
    snprintf(late_long, sizeof late_long, "[cpu\n# %0*d\n", 250, 0); /* no key between: the reader fails next */
    rc = load(late_long, &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_FORMAT && strstr(err, ":1: syntax error"), "the first of a syntax error and a long line is reported: %s", err);
    rc = load("[log]\nlevel = WARNING\n", &cfg, err, sizeof err);
    tap_ok(rc == 0, "the log level takes lib/log.c's spellings (any case, 'warning'): %s", err);
    rc = load("[model]\nthis line has no equals sign\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_FORMAT && strstr(err, ":2: syntax error"), "syntax error names the line: %s", err);
    pi_config_free(&cfg);
    pi_config_defaults(&cfg);
    rc = pi_config_load_file(&cfg, "/nonexistent/pinfer.conf", err, sizeof err);
    tap_ok(rc == -PI_ERR_IO && strstr(err, "/nonexistent/pinfer.conf: cannot open"), "missing file: %s", err);
    rc = pi_config_load_file(&cfg, "/", err, sizeof err);
    tap_ok(rc == -PI_ERR_IO && strstr(err, "is a directory"), "a directory is an error, not an empty file: %s", err);

    /* Lines that inih alone would read as something else (a review found each) */
    char longline[400];
    snprintf(longline, sizeof longline, "[cpu]\n# %0*d threads = 4096\n", 197, 0);
    rc = load(longline, &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_FORMAT && strstr(err, ":2: line longer than") && cfg.cpu_threads != 4096,
           "a comment longer than inih's line is an error, not a setting from its tail: %s", err);
    rc = load("[cpu]\nworkers = 4\n  8\n", &cfg, err, sizeof err);
    tap_ok(rc == -PI_ERR_FORMAT && strstr(err, ":3: syntax error") && cfg.cpu_workers != 8,
           "an indented line is no continuation of the value above: %s", err);
    rc = load("  [cpu]\n    workers = 3\n\t# a comment\n\tthreads = 2\n", &cfg, err, sizeof err);
    tap_ok(rc == 0 && cfg.cpu_workers == 3 && cfg.cpu_threads == 2,
           "indented headers, keys and comments are read as unindented ones (pinfer.conf(5)): %s", rc ? err : "");
    rc = load("[run]\ndir = /tmp/a;b ;c\n", &cfg, err, sizeof err);
    tap_ok(rc == 0 && strcmp(cfg.run_dir, "/tmp/a;b ;c") == 0, "a ';' after a value is part of it (only whole lines are comments)");
    FILE *nf = fopen(path, "wb");
    if (!nf) tap_bail("cannot write %s", path);
    fwrite("[cpu]\nworkers = 1\0006\n", 1, 20, nf);
    fclose(nf);
    pi_config_free(&cfg);
    pi_config_defaults(&cfg);
    rc = pi_config_load_file(&cfg, path, err, sizeof err);
    tap_ok(rc == -PI_ERR_FORMAT && strstr(err, ":2: NUL byte"), "a NUL byte is an error, not the end of the value: %s", err);
    char fifo[96];
    snprintf(fifo, sizeof fifo, "/tmp/pi-test-config-%ld.fifo", (long)getpid());
    unlink(fifo);
    if (mkfifo(fifo, 0600) == 0) {
        rc = pi_config_load_file(&cfg, fifo, err, sizeof err); /* would block in open() without O_NONBLOCK */
        tap_ok(rc == -PI_ERR_IO && strstr(err, "not a regular file"), "a FIFO is refused at once: %s", err);
        unlink(fifo);
    } else {
        tap_skip(1, "mkfifo failed");
    }
    rc = pi_config_load_file(&cfg, "/dev/zero", err, sizeof err);
    tap_ok(rc == -PI_ERR_IO && strstr(err, "not a regular file"), "/dev/zero is refused, not read forever: %s", err);

    int64_t iv = 0;
    tap_ok(pi_parse_int("-1", -1, 5, &iv) == 0 && iv == -1, "integer at the lower bound");
    tap_ok(pi_parse_int("6", -1, 5, &iv) == -PI_ERR_RANGE, "integer above the upper bound");
    tap_ok(pi_parse_int("99999999999999999999", INT64_MIN, INT64_MAX, &iv) == -PI_ERR_RANGE, "integer past 64 bits");
    tap_ok(pi_parse_int("3x", 0, 5, &iv) == -PI_ERR_INVAL && pi_parse_int("", 0, 5, &iv) == -PI_ERR_INVAL &&
               pi_parse_int(NULL, 0, 5, &iv) == -PI_ERR_INVAL, "non-integers rejected");

    uint64_t b = 0;
    tap_ok(pi_parse_bytes("512M", &b) == 0 && b == 512ull << 20, "512M");
    tap_ok(pi_parse_bytes("2GiB", &b) == 0 && b == 2ull << 30, "2GiB");
    tap_ok(pi_parse_bytes("1000", &b) == 0 && b == 1000, "plain bytes");
    tap_ok(pi_parse_bytes("-1G", &b) == -PI_ERR_INVAL, "negative rejected");
    tap_ok(pi_parse_bytes(" -1", &b) == -PI_ERR_INVAL && pi_parse_bytes("+5", &b) == -PI_ERR_INVAL,
           "a blank or sign before the digits rejected (strtoull would wrap \" -1\" to 2^64-1)");
    tap_ok(pi_parse_bytes("99999999999T", &b) == -PI_ERR_RANGE, "overflow rejected");
    tap_ok(pi_parse_bytes("", &b) == -PI_ERR_INVAL, "empty rejected");

    /* [tune]: the performance choices, a section of the same table */
    tap_ok(cfg.tune.cuda_matvec == PI_TUNE_CUDA_MATVEC_AUTO, "tune.cuda_matvec defaults to auto");
    rc = pi_config_set(&cfg, "tune.cuda_matvec", "f32", "command line", err, sizeof err);
    tap_ok(rc == 0 && cfg.tune.cuda_matvec == PI_TUNE_CUDA_MATVEC_F32, "tune.cuda_matvec = f32 set from the command line");
    rc = pi_config_set(&cfg, "tune.cuda_matvec", "q8", "command line", err, sizeof err);
    tap_ok(rc == -PI_ERR_INVAL && strstr(err, "[tune] cuda_matvec: 'q8' is not one of: auto, f32") &&
               cfg.tune.cuda_matvec == PI_TUNE_CUDA_MATVEC_F32, "a value outside the table refused, the old one kept: %s", err);
    char val[64];
    size_t ki = 0;
    while (ki < pi_config_key_count() && strcmp(pi_config_key(ki)->key, "cuda_matvec") != 0) ki++;
    tap_ok(ki < pi_config_key_count() && strcmp(pi_config_key(ki)->section, "tune") == 0 &&
               pi_config_key_value(&cfg, ki, val, sizeof val) == 3 && strcmp(val, "f32") == 0,
           "pi_config_key_value spells the value as the file does (%s)", val);
    struct pi_tune t = {0};
    tap_ok(pi_tune_set(&t, "tune.cuda_matvec=f32", "--set", err, sizeof err) == 0 && t.cuda_matvec == PI_TUNE_CUDA_MATVEC_F32,
           "pi_tune_set takes tune.KEY=VALUE");
    tap_ok(pi_tune_set(&t, "gpu.device=1", "--set", err, sizeof err) == -PI_ERR_INVAL && strstr(err, "is not tune.KEY=VALUE") &&
               pi_tune_set(&t, "tune.cuda_matvec", "--set", err, sizeof err) == -PI_ERR_INVAL &&
               pi_tune_set(&t, "tune.cuda_matvec=fast", "--set", err, sizeof err) == -PI_ERR_INVAL &&
               t.cuda_matvec == PI_TUNE_CUDA_MATVEC_F32,
           "pi_tune_set refuses another section, a missing value and a value outside the table");
    t.cuda_matvec = PI_TUNE_CUDA_MATVEC_Q8; /* the test-only value is never written as another one */
    cfg.tune = t;
    pi_config_key_value(&cfg, ki, val, sizeof val);
    tap_ok(strcmp(val, "2") == 0 && pi_config_set(&cfg, "tune.cuda_matvec", val, "x", err, sizeof err) != 0,
           "the test-only q8 formats as a number the table refuses (%s)", val);
    cfg.tune.cuda_matvec = PI_TUNE_CUDA_MATVEC_AUTO;
    tap_ok(cfg.tune.cpu_kernels == PI_TUNE_CPU_KERNELS_AUTO &&
               pi_config_set(&cfg, "tune.cpu_kernels", "AVX2", "x", err, sizeof err) == 0 &&
               cfg.tune.cpu_kernels == PI_TUNE_CPU_KERNELS_AVX2 &&
               pi_config_set(&cfg, "tune.cpu_kernels", "sse4", "x", err, sizeof err) == -PI_ERR_INVAL,
           "tune.cpu_kernels: auto by default, a variant by name (any case), an unknown one refused");
    cfg.tune.cpu_kernels = PI_TUNE_CPU_KERNELS_AUTO;

    char text[4096];
    size_t n = pi_config_format(&cfg, text, sizeof text);
    tap_ok(n < sizeof text && strstr(text, "[gpu]\nbackend = host\n") != NULL && strstr(text, "[tune]\ncuda_matvec = auto\ncpu_kernels = auto\n"),
           "formatted config round-trips the section layout, [tune] included");
    tap_ok(pi_config_key_count() >= 15 && pi_config_key(0) && !pi_config_key(pi_config_key_count()), "key table exposed");

    pi_config_free(&cfg);
    unlink(path);
    return tap_done();
}
