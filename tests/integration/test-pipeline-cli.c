/*
 * tests/integration/test-pipeline-cli.c - pi-coordinator's command line and one-shot mode, run as a real process
 * with a hard timeout in a private temporary directory:
 *   --help lists every option with its default, --version;
 *   configuration errors are one line naming the file, line and key, with exit status 2;
 *   man/pinfer.conf.5 documents every key of the configuration table with its default;
 *   --gpu-backend cuda in a build without the CUDA backend fails with a clear message;
 *   one-shot with --gpu-backend none: the prompt logits (--tokens, --logits-out) match the golden
 *   logits of the demo model (HF transformers in float64 on the same weights) within the forward
 *   pass's tolerance for Q4_0, and the greedy text equals the golden greedy continuation decoded;
 *   SIGTERM during a long prompt stops it at the next batch.
 * (The step channel between the coordinator and the GPU worker has its own test: tests/unit/test-step.c.)
 */
#include "config.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "text/tokenizer.h"
#include "tests/test-pipeline-util.h"

#include <sys/stat.h>
#include <unistd.h>

#define TIMEOUT_S 30.0
#define GOLDEN_TOL 4e-2 /* Q4_0 weights with 8-bit activations (tests/test-forward.c uses the same) */

static char coord[512], model[512];

/* pi-coordinator with extra arguments (NULL-terminated), output as NAME.*; returns the status. */
static int coordinator(const char *name, const char *const *args)
{
    char *argv[64];
    int n = 0;
    argv[n++] = coord;
    for (int i = 0; args[i] && n < 63; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return tp_run(argv, name, TIMEOUT_S);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) tap_bail("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void test_help(void)
{
    const char *a[] = {"--help", NULL};
    int st = coordinator("help", a);
    char *out = tp_output("help", "out");
    tap_is_int(st, 0, "--help exits 0");
    const char *want[] = {"--model PATH", "--prompt TEXT", "--tokens", "-n, --n-predict N", "--logits-out FILE",
                          "--config FILE", "--set SECTION.KEY=VAL", "--cpu-workers N", "--gpu-backend B",
                          "--hot-fraction F", "--vram-budget BYTES", "--control ENDPOINT", "--temp T", "--seed S",
                          "--gpu-stall-ms MS", "tune.cuda_matvec", "tune.cpu_kernels"};
    int all = 1;
    for (size_t i = 0; i < PI_ARRAY_LEN(want); i++)
        if (!strstr(out, want[i])) { tap_diag("--help lacks %s", want[i]); all = 0; }
    tap_ok(all, "--help lists every option");
    tap_ok(strstr(out, "fraction of each layer's FFN neurons kept by the GPU worker, 0 to 1; default: 0.5") != NULL,
           "--help shows the defaults of the config table");
    free(out);
    const char *v[] = {"--version", NULL};
    st = coordinator("version", v);
    out = tp_output("version", "out");
    tap_ok(st == 0 && strncmp(out, "pi-coordinator (pinfer) ", 24) == 0, "--version: %s", out);
    free(out);
}

/* A bad configuration: status 2, one line on stderr containing want, nothing on stdout. */
static void config_error(const char *name, const char *const *args, const char *want)
{
    int st = coordinator(name, args);
    char *err = tp_output(name, "err"), *out = tp_output(name, "out");
    tap_ok(st == 2 && strstr(err, want) && count_lines(err) == 1 && !*out, "%s: exit %d, \"%s\"", name, st, err);
    free(err);
    free(out);
}

static void test_config_errors(void)
{
    char conf[300], text[2048];
    snprintf(conf, sizeof conf, "%s/bad.conf", tp_dir);
    write_file(conf, "[model]\npath = /nonexistent.gguf\n[gpu]\nbogus = 1\n");
    const char *a1[] = {"--config", conf, "--prompt", "x", NULL};
    char want[1024];
    snprintf(want, sizeof want, "%s:4: [gpu] bogus: unknown key", conf);
    config_error("conf-unknown-key", a1, want);

    snprintf(text, sizeof text, "[model]\npath = %s\n[gpu]\nhot_fraction = 2\n", model);
    write_file(conf, text);
    snprintf(want, sizeof want, "%s:4: [gpu] hot_fraction: 2 is out of range", conf);
    config_error("conf-range", a1, want);

    write_file(conf, "# a model that is not there\n[model]\npath = /nonexistent.gguf\n");
    snprintf(want, sizeof want, "%s:3: [model] path: cannot load model /nonexistent.gguf", conf);
    config_error("conf-missing-model", a1, want);

    snprintf(text, sizeof text, "[model]\n\npath = %s\n", conf); /* the config file is not a model */
    write_file(conf, text);
    snprintf(want, sizeof want, "%s:3: [model] path: cannot load model %s", conf, conf);
    config_error("conf-invalid-model", a1, want);

    const char *a2[] = {"--model", model, "--hot-fraction", "x", "--prompt", "x", NULL};
    config_error("cli-bad-value", a2, "[gpu] hot_fraction: 'x' is not a number");
    const char *a3[] = {"--model", model, "--set", "gpu.nope=1", "--prompt", "x", NULL};
    config_error("cli-unknown-key", a3, "[gpu] nope: unknown key");
    const char *a4[] = {"--prompt", "x", NULL};
    config_error("no-model", a4, "no model");
    /* the tuning table's values only: q8 everywhere (a test hook of the backend) is no choice */
    const char *a8[] = {"--model", model, "--set", "tune.cuda_matvec=q8", "--prompt", "x", NULL};
    config_error("cli-tune-value", a8, "[tune] cuda_matvec: 'q8' is not one of: auto, f32");
    const char *a5[] = {"--model", model, "--frobnicate", NULL};
    config_error("unknown-option", a5, "unknown option --frobnicate");
    /* an abbreviated --config is read, not accepted and ignored */
    write_file(conf, "[cpu]\nworkers = 100000\n");
    const char *a6[] = {"--conf", conf, "--model", model, "--prompt", "x", NULL};
    config_error("conf-abbreviated", a6, "[cpu] workers: 100000 is out of range");
    /* the control socket has no authentication: no endpoint beyond the loopback interface */
    char rd[320];
    snprintf(rd, sizeof rd, "%s/run-ctl", tp_dir);
    const char *a7[] = {"--model", model, "--control", "tcp://0.0.0.0:47124", "--run-dir", rd, NULL};
    config_error("control-exposed", a7, "no authentication");
}

/* A good config file: its values are used, and the command line overrides its n_predict (3) before
 * or after --config in the argument list. want is the greedy text of n tokens. */
static void test_conf_good(const char *ids, const char *nstr, const char *want)
{
    int st;
    char *out;
    char conf[300], text[2048];
    snprintf(conf, sizeof conf, "%s/good.conf", tp_dir);
    snprintf(text, sizeof text, "; a good file\n[model]\npath = %s\n[gpu]\nbackend = none\n[generate]\n"
             "temperature = 0\nn_predict = 3\n", model);
    write_file(conf, text);
    const char *f1[] = {"-n", nstr, "--config", conf, "--tokens", ids, NULL};
    st = coordinator("conf-good", f1);
    out = tp_output("conf-good", "out");
    tap_ok(st == 0 && strcmp(out, want) == 0, "config file values are used and -n overrides the file's n_predict");
    free(out);
    const char *f2[] = {"--config", conf, "--tokens", ids, NULL};
    st = coordinator("conf-good3", f2);
    out = tp_output("conf-good3", "out");
    tap_ok(st == 0 && strlen(out) > 1 && strncmp(out, want, strlen(out) - 1) == 0 && strlen(out) < strlen(want),
           "without -n the file's n_predict = 3 applies: \"%s\"", out);
    free(out);
}

static void test_oneshot_golden(void)
{
    char gpath[512], lpath[300], ids[4096];
    struct tp_golden gd;
    if (tp_golden_open(tap_data(gpath, sizeof gpath, "demo-relu-q4_0.golden.gguf"), &gd) != 0) tap_bail("golden");
    snprintf(lpath, sizeof lpath, "%s/logits.f32", tp_dir);
    tp_ids(ids, sizeof ids, gd.tokens, gd.n);
    const char *a[] = {"--model", model, "--gpu-backend", "none", "--tokens", ids, "-n", "0", "--logits-out", lpath, NULL};
    int st = coordinator("oneshot-logits", a);
    tap_is_int(st, 0, "one-shot -n 0 --logits-out exits 0");
    float *lg = tp_read_logits(lpath, gd.n, gd.n_vocab);
    double e = lg ? tp_rel_err(lg, gd.logits, gd.n, gd.n_vocab) : INFINITY;
    tap_ok(e <= GOLDEN_TOL, "in-process prompt logits vs golden: %d positions, worst relative error %.3g (<= %.0e)", gd.n, e,
           GOLDEN_TOL);
    char *out = tp_output("oneshot-logits", "out");
    tap_ok(*out == '\0', "-n 0 prints no text");
    free(out);

    /* [tune] batch cuts the prompt into steps of that many tokens: chunks of 3 or more (the last one short)
     * give the same logits bit for bit (every kernel's result for a token is the same in any batch),
     * and so does the pipeline (host backend, a CPU worker) with steps of 5 against the golden. */
    int bsz = 3;
    while (bsz < gd.n && gd.n % bsz == 0) bsz++;
    char bset[32];
    snprintf(bset, sizeof bset, "tune.batch=%d", bsz);
    const char *a3[] = {"--model", model, "--gpu-backend", "none", "--tokens", ids, "-n", "0", "--logits-out", lpath,
                        "--set", bset, NULL};
    st = coordinator("oneshot-batch3", a3);
    float *l3 = st == 0 ? tp_read_logits(lpath, gd.n, gd.n_vocab) : NULL;
    tap_ok(lg && l3 && bsz < gd.n && memcmp(lg, l3, sizeof(float) * (size_t)gd.n * (size_t)gd.n_vocab) == 0,
           "%s: the %d-token prompt in steps of %d gives the same logits bit for bit (exit %d)", bset, gd.n, bsz, st);
    if (lg && l3) {
        size_t nd = 0, first = 0;
        for (size_t i = 0; i < (size_t)gd.n * (size_t)gd.n_vocab; i++)
            if (memcmp(&lg[i], &l3[i], 4) != 0 && nd++ == 0) first = i;
        if (nd) tap_diag("%zu floats differ, the first at position %zu", nd, first / (size_t)gd.n_vocab);
    }
    free(l3);
    free(lg);
    const char *a5[] = {"--model", model, "--gpu-backend", "host", "--hot-fraction", "0.5", "--cpu-workers", "1",
                        "--tokens", ids, "-n", "0", "--logits-out", lpath, "--set", "tune.batch=5", NULL};
    st = coordinator("pipeline-batch5", a5);
    float *l5 = st == 0 ? tp_read_logits(lpath, gd.n, gd.n_vocab) : NULL;
    e = l5 ? tp_rel_err(l5, gd.logits, gd.n, gd.n_vocab) : INFINITY;
    tap_ok(e <= GOLDEN_TOL, "tune.batch=5, pipeline: prompt logits vs golden, worst relative error %.3g (exit %d)", e, st);
    /* and the same bits as the pipeline's whole prompt in one step (the default batch): the host backend
     * and the CPU worker compute a token alike in any batch */
    const char *a512[] = {"--model", model, "--gpu-backend", "host", "--hot-fraction", "0.5", "--cpu-workers", "1",
                          "--tokens", ids, "-n", "0", "--logits-out", lpath, NULL};
    st = coordinator("pipeline-batch-default", a512);
    float *lb = st == 0 ? tp_read_logits(lpath, gd.n, gd.n_vocab) : NULL;
    tap_ok(l5 && lb && memcmp(l5, lb, sizeof(float) * (size_t)gd.n * (size_t)gd.n_vocab) == 0,
           "pipeline: the prompt in steps of 5 and in one step give the same logits bit for bit (exit %d)", st);
    free(lb);
    free(l5);
    const char *a0[] = {"--model", model, "--gpu-backend", "none", "--tokens", ids, "-n", "0", "--set", "tune.batch=0", NULL};
    st = coordinator("batch0", a0);
    char *err0 = tp_output("batch0", "err");
    tap_ok(st == 2 && strstr(err0, "tune") && strstr(err0, "batch"), "tune.batch=0 is refused (exit %d): %s", st, err0);
    free(err0);

    /* Greedy text: the golden greedy ids decoded by the model's tokenizer. */
    pi_gguf_t *mg;
    if (pi_gguf_open(model, &mg, NULL, 0) != 0) tap_bail("open %s", model);
    pi_tokenizer_t *tok = pi_tokenizer_new(mg, NULL, 0);
    if (!tok) tap_bail("tokenizer");
    pi_detok_t *d = pi_detok_new(tok, false);
    char want[8192];
    size_t n = 0;
    /* Greedy continuations of Q4_0 runs drift from the float64 reference after about a dozen tokens
     * where the top-2 margin falls below the quantisation error; the first 10 are stable. */
    int ng = 10;
    for (int i = 0; i < ng; i++) {
        int w = pi_detok_push(d, gd.greedy[i], want + n, sizeof want - n - 8);
        if (w > 0) n += (size_t)w;
    }
    int w = pi_detok_flush(d, want + n, sizeof want - n - 1);
    if (w > 0) n += (size_t)w;
    want[n++] = '\n';
    want[n] = '\0';
    char nstr[16];
    snprintf(nstr, sizeof nstr, "%d", ng);
    const char *b[] = {"--model", model, "--gpu-backend", "none", "--tokens", ids, "-n", nstr, "--temp", "0", NULL};
    st = coordinator("oneshot-greedy", b);
    out = tp_output("oneshot-greedy", "out");
    tap_ok(st == 0 && strcmp(out, want) == 0, "greedy %d tokens equal the golden continuation", ng);
    if (strcmp(out, want) != 0) tap_diag("got  \"%s\"\n# want \"%s\"", out, want);
    free(out);

    /* The prompt as text gives the same ids as the golden (BOS + text). */
    const char *c[] = {"--model", model, "--gpu-backend", "none", "--prompt", "The jury said it did find that many of the laws",
                       "-n", nstr, "--temp", "0", NULL};
    st = coordinator("oneshot-text", c);
    out = tp_output("oneshot-text", "out");
    tap_ok(st == 0 && strcmp(out, want) == 0, "--prompt TEXT tokenizes with BOS like the golden prompt");
    free(out);

    test_conf_good(ids, nstr, want);
    /* One thread: with several, the neuron kernel's dynamic split changes the float sum order from run
     * to run, and a sampled token whose probability sits at a cut-off may change. */
    const char *s1[] = {"--model", model, "--gpu-backend", "none", "--prompt", "Once upon a time", "-n", "12", "--temp", "0.9",
                        "--seed", "7", "--cpu-threads", "1", NULL};
    coordinator("seed-a", s1);
    coordinator("seed-b", s1);
    char *sa = tp_output("seed-a", "out"), *sb = tp_output("seed-b", "out");
    tap_ok(*sa && strcmp(sa, sb) == 0, "the same seed gives the same text (one thread)");
    free(sa);
    free(sb);
    pi_detok_destroy(&d);
    pi_tokenizer_destroy(&tok);
    pi_gguf_destroy(&mg);
    pi_gguf_destroy(&gd.g);
}

/* Every key of lib/conf.c's table is in man/pinfer.conf.5 under its section, with its default. */
static void test_man_keys(void)
{
    char path[512];
    const char *src = getenv("PI_SRCDIR");
    snprintf(path, sizeof path, "%s/man/pinfer.conf.5", src && *src ? src : ".");
    char *man = tp_slurp(path, NULL);
    if (!man) { tap_ok(0, "man/pinfer.conf.5 readable"); return; }
    int all = 1;
    for (size_t i = 0; i < pi_config_key_count(); i++) {
        const struct pi_config_key_info *k = pi_config_key(i);
        char sec[96], entry[256], def[128];
        size_t o = 0;
        for (const char *c = *k->default_text ? k->default_text : "(empty)"; *c && o < sizeof def - 3; c++) {
            if (*c == '-') def[o++] = '\\';
            def[o++] = *c;
        }
        def[o] = '\0';
        snprintf(sec, sizeof sec, ".SS [%s]\n", k->section);
        snprintf(entry, sizeof entry, ".BR %s \" (default: %s)\"\n", k->key, def);
        const char *in = strstr(man, sec);
        const char *next = in ? strstr(in + 1, ".SS ") : NULL;
        const char *at = in ? strstr(in, entry) : NULL;
        if (!at || (next && at > next)) { all = 0; tap_diag("pinfer.conf.5 lacks [%s] %s with default %s", k->section, k->key, def); }
    }
    tap_ok(all, "man/pinfer.conf.5 documents all %zu keys with their defaults", pi_config_key_count());
    free(man);
}

/* pi-gpu-worker takes its tuning as --set tune.KEY=VALUE (what the coordinator passes it): a value
 * outside the table's, or a key of another section, is a usage error (status 2, one line). */
static void test_gpu_worker_tune(void)
{
    char gw[512];
    tp_prog(gw, sizeof gw, "gpu-worker/pi-gpu-worker");
    static const char *const bad[][2] = {{"tune.cuda_matvec=fast", "[tune] cuda_matvec: 'fast' is not one of: auto, f32"},
                                         {"gpu.device=1", "'gpu.device=1' is not tune.KEY=VALUE"},
                                         {"tune.nosuch=1", "[tune] nosuch: unknown key"}};
    for (size_t i = 0; i < PI_ARRAY_LEN(bad); i++) {
        char name[32];
        snprintf(name, sizeof name, "gw-tune-%zu", i);
        char *argv[] = {gw, "--set", (char *)bad[i][0], "--model", model, "--step-fd", "3", "--exchange-fd", "4", NULL};
        int st = tp_run(argv, name, TIMEOUT_S);
        char *err = tp_output(name, "err");
        tap_ok(st == 2 && strstr(err, bad[i][1]) && count_lines(err) == 1, "pi-gpu-worker --set %s: exit %d, \"%s\"",
               bad[i][0], st, err);
        free(err);
    }
}

static void test_cuda_missing(void)
{
    char rundir[300];
    snprintf(rundir, sizeof rundir, "%s/run", tp_dir);
    const char *a[] = {"--model", model, "--prompt", "x", "-n", "1", "--gpu-backend", "cuda", "--run-dir", rundir, NULL};
    int st = coordinator("cuda", a);
    char *err = tp_output("cuda", "err");
    /* Either this build lacks the backend, or it has it and this machine has no usable device. */
    if (st == 0) tap_skip(1, "this build has the CUDA backend and a device");
    else tap_ok(strstr(err, "built without the CUDA backend") || strstr(err, "no usable CUDA device"),
                "--gpu-backend cuda without CUDA: exit %d, clear message", st);
    free(err);
}

/* A prompt one position longer than the context with nothing to generate is refused before any of
 * it is evaluated (the allowance for the never-evaluated last generated token does not apply). */
static void test_prompt_over_context(void)
{
    int32_t ids[17];
    for (int i = 0; i < 17; i++) ids[i] = 100 + i;
    char idbuf[256], lout[600];
    tp_ids(idbuf, sizeof idbuf, ids, 17);
    snprintf(lout, sizeof lout, "%s/over.f32", tp_dir);
    char *argv[] = {coord, "--model", model, "--tokens", idbuf, "-n", "0", "--ctx", "16", "--gpu-backend", "none",
                    "--logits-out", lout, NULL};
    int st = tp_run(argv, "over-ctx", TIMEOUT_S);
    char *err = tp_output("over-ctx", "err");
    struct stat sb;
    tap_ok(st == 1 && strstr(err, "exceed the context of 16") && stat(lout, &sb) == 0 && sb.st_size == 0,
           "17 prompt tokens, -n 0, context 16: refused before any position is evaluated (status %d)", st);
    free(err);
}

/* SIGTERM while a long prompt is evaluated: the run stops at the next prompt batch (it used to go on
 * to the prompt's end first: seconds for a long prompt) and says how far it got. */
static void test_signal_in_prompt(void)
{
    enum { N = 1000 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = 2 + (i * 37) % 7000;
    static char idbuf[N * 6];
    tp_ids(idbuf, sizeof idbuf, ids, N);
    char *argv[] = {coord, "--model", model, "--tokens", idbuf, "-n", "1", "--gpu-backend", "none", "--ctx", "1024", /* exit 1 */
                    "--log-level", "debug", NULL};
    pid_t pid = tp_spawn(argv, "sigprompt");
    char errp[600];
    snprintf(errp, sizeof errp, "%s/sigprompt.err", tp_dir);
    bool started = false;
    for (int i = 0; i < 30000 && !started; i++) { /* up to 60 s: the sanitizer build loads slowly */
        char *e = tp_slurp(errp, NULL);
        started = e && strstr(e, "evaluating the prompt");
        free(e);
        if (!started) usleep(2000);
    }
    if (started) kill(pid, SIGTERM);
    int st = tp_wait(pid, TIMEOUT_S);
    char *err = tp_output("sigprompt", "err");
    const char *at = err ? strstr(err, "interrupted by signal 15 after ") : NULL;
    int done = -1, total = -1;
    if (at) sscanf(at, "interrupted by signal 15 after %d of %d", &done, &total);
    tap_ok(started && st == 1 && total == N && done >= 0 && done < N,
           "SIGTERM during a %d-token prompt stops it at a batch boundary (status %d, %d of %d evaluated)", N, st, done, total);
    free(err);
}

int main(void)
{
    tp_prog(coord, sizeof coord, "coordinator/pi-coordinator");
    tap_data(model, sizeof model, "demo-relu-q4_0.gguf");
    tp_guard(240); /* generous: the sanitizer build on a loaded 2-core machine */
    tp_mkdir("pi-test-cli");
    test_help();
    test_config_errors();
    test_man_keys();
    test_gpu_worker_tune();
    test_cuda_missing();
    test_oneshot_golden();
    test_signal_in_prompt();
    test_prompt_over_context();
    return tap_done();
}
