/*
 * coordinator/oneshot.c - pi-coordinator's one-shot mode: one prompt, the generated text streamed to
 * stdout as it is produced, statistics to the log, exit. Also the model opening shared with the
 * server mode.
 */
#include "config.h"
#include "coordinator/coordinator.h"
#include "coordinator/generate.h"
#include "compute/thresholds.h"
#include "text/calib.h"
#include "text/chat.h"
#include "lib/common.h"
#include "lib/log.h"

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int pi_coord_threads(const struct pi_coord_opts *o)
{
    if (o->cfg.cpu_threads > 0) return (int)o->cfg.cpu_threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

const char *pi_coord_sidecar_file(const struct pi_coord_opts *o, char *buf, size_t len)
{
    if (o->cfg.sidecar_path && *o->cfg.sidecar_path) snprintf(buf, len, "%s", o->cfg.sidecar_path);
    else if (!o->cfg.model_path || pi_sidecar_path(o->cfg.model_path, buf, len) < 0) return NULL; /* no default for such a path */
    return buf;
}

int pi_coord_sidecar_open(const struct pi_coord_opts *o, struct pi_coord_model *cm, const char *prog)
{
    char path[4096], err[512] = "";
    struct pi_sidecar *s = NULL;
    bool given = o->cfg.sidecar_path && *o->cfg.sidecar_path;
    if (!pi_coord_sidecar_file(o, path, sizeof path)) return 0;
    int rc = pi_sidecar_load(path, cm->model, &s, err, sizeof err);
    if (rc == -PI_ERR_NOTFOUND && !given) return 0; /* no statistics: the placement's fallback */
    if (rc < 0) {
        fprintf(stderr, "%s: sidecar %s: %s\n", prog, path, rc == -PI_ERR_NOTFOUND ? "no such file" : err);
        return rc;
    }
    pi_info("sidecar %s: profile of %llu tokens", path, (unsigned long long)s->tokens);
    cm->sidecar = s;
    return 0;
}

/* The first-load calibration (doc/thresholds.md, "Calibration at first load"): a SwiGLU model asked
 * to run safe or aggressive whose sidecar has no activation thresholds gets them now, over the
 * calibration text ([model] calibration_text, else the bundled one), with fewer positions than
 * pi-profile uses (a one-time wait at start, with progress lines). 0 when done or not needed (an
 * unreadable sidecar is left to pi_sparse_open to report); a negative pi_err with one line on stderr
 * when the calibration or the sidecar's write fails. */
static int thresholds_first_load(const struct pi_coord_opts *o, struct pi_coord_model *cm, const char *prog)
{
    const enum pi_sparsity_cfg mode = o->cfg.sparsity.mode;
    char side[4096], err[512] = "";
    if (cm->model->hp.act != PI_FFN_ACT_SILU || (mode != PI_SPARSITY_CFG_SAFE && mode != PI_SPARSITY_CFG_AGGRESSIVE) ||
        !pi_coord_sidecar_file(o, side, sizeof side))
        return 0;
    struct pi_sidecar *s = NULL;
    int rc = pi_sidecar_load(side, cm->model, &s, err, sizeof err);
    if ((rc == 0 && s->gate_min) || (rc < 0 && rc != -PI_ERR_NOTFOUND)) {
        pi_sidecar_destroy(&s);
        return 0;
    }
    const char *text = o->cfg.calib_text && *o->cfg.calib_text ? o->cfg.calib_text : PI_CALIB_DEFAULT_TEXT;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.act = cm->model->hp.act;
    /* with its transposed down rows, which the forward pass needs: the open model when it has them
     * (the in-process engine's), else a second handle, closed after */
    pi_model_t *own = NULL;
    const pi_model_t *mw = cm->model->layers[0].ffn_down_t.data ? cm->model : NULL;
    int32_t *ids = NULL, bos = -1;
    size_t n = 0;
    struct pi_thr_result r = {0};
    if (!mw && (rc = pi_model_open(o->cfg.model_path, &mo, &own, err, sizeof err)) == 0) mw = own;
    if (!mw) {
        fprintf(stderr, "%s: calibration: cannot load %s: %s\n", prog, o->cfg.model_path, err);
        goto out;
    }
    struct pi_calib_args ca = {prog, o->cfg.model_path, text, text, 0, 1};
    if (pi_calib_tokens(&ca, mw, &ids, &n, &bos) != 0) { /* printed */
        rc = -PI_ERR_INVAL;
        goto out;
    }
    const int ctx = PI_MIN(pi_model_default_ctx(mw), 512);
    const int n_chunks = (int)PI_MIN(n / (size_t)ctx, (size_t)40);
    if (n_chunks < 2) {
        fprintf(stderr, "%s: calibration: %s holds %zu tokens, fewer than two chunks of %d\n", prog, text, n, ctx);
        rc = -PI_ERR_INVAL;
        goto out;
    }
    for (int c = 0; c < n_chunks && bos >= 0; c++) ids[(size_t)c * (size_t)ctx] = bos;
    /* the text is there and long enough: only now the wait is announced (a refusal stays one line) */
    fprintf(stderr, "%s: %s has no activation thresholds: calibrating them over %s, once, into %s (pi-profile -m MODEL "
            "does the same with more text)\n", prog, o->cfg.model_path, text, side);
    struct pi_thr_opts to;
    pi_thr_opts_default(&to, n_chunks, ctx, mw->hp.n_vocab);
    to.held_out_chunks = PI_MAX(1, PI_MIN(to.held_out_chunks, 2048 / PI_MAX(1, ctx - ctx / 2))); /* a shorter wait */
    to.n_threads = pi_coord_threads(o);
    to.progress = stderr;
    to.prog = prog;
    if ((rc = pi_thr_calibrate(mw, ids, n_chunks, ctx, &to, &r)) != 0) {
        fprintf(stderr, "%s: the activation threshold calibration failed (%s)\n", prog, pi_err_str(rc));
        goto out;
    }
    if (!s && !(s = pi_sidecar_new(cm->model, false, false))) {
        rc = -PI_ERR_NOMEM;
        goto out;
    }
    pi_thr_result_to_sidecar(&r, &to, s);
    if ((rc = pi_sidecar_save(side, cm->model, s)) != 0)
        fprintf(stderr, "%s: cannot write the sidecar %s (set [model] sidecar to a writable path, or run pi-profile "
                "--sidecar PATH)\n", prog, side);
out:
    pi_thr_result_free(&r);
    pi_sidecar_destroy(&s);
    free(ids);
    pi_model_destroy(&own);
    return rc;
}

int pi_coord_sparsity_open(const struct pi_coord_opts *o, struct pi_coord_model *cm, const char *prog)
{
    char *line = cm->sparsity_line;
    const size_t len = sizeof cm->sparsity_line;
    char side[4096];
    int rc = thresholds_first_load(o, cm, prog);
    if (rc != 0) {
        snprintf(line, len, "no activation thresholds (the calibration above failed)");
        return rc;
    }
    rc = pi_sparse_open(cm->model, pi_coord_sidecar_file(o, side, sizeof side), o->cfg.sparsity.mode, &cm->pred, &cm->gate_min,
                            &cm->sparsity, line, len);
    if (rc != 0) {
        fprintf(stderr, "%s: --sparsity: %s\n", prog, line);
        return rc;
    }
    if (cm->sparsity != PI_SPARSITY_OFF && o->cfg.sparsity.recall_every > 0) {
        size_t n = strlen(line);
        snprintf(line + n, len - n, "; recall measured every %lld steps", (long long)o->cfg.sparsity.recall_every);
    }
    return 0;
}

int pi_coord_model_open(const struct pi_coord_opts *o, bool with_weights, struct pi_coord_model *cm)
{
    memset(cm, 0, sizeof *cm);
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    static const enum pi_ffn_act acts[] = {PI_FFN_ACT_DEFAULT, PI_FFN_ACT_SILU, PI_FFN_ACT_RELU, PI_FFN_ACT_DRELU};
    mo.act = acts[o->cfg.activation];
    mo.no_down_t = !with_weights;
    mo.no_down_build = !with_weights;
    /* the in-process CPU engine's dense products (kernels/cpu/rows16.h) */
    mo.rows16 = with_weights && o->cfg.tune.cpu_pack != PI_TUNE_CPU_PACK_OFF;
    mo.down_t_grouped = with_weights && o->cfg.tune.down_t == PI_TUNE_DOWN_T_GROUPED;
    _Static_assert((int)PI_CHECK_TENSORS_CFG_FULL == (int)PI_TENSOR_CHECK_FULL &&
                       (int)PI_CHECK_TENSORS_CFG_SAMPLED == (int)PI_TENSOR_CHECK_SAMPLED,
                   "[model] check_tensors holds enum pi_tensor_check's values");
    mo.check = (enum pi_tensor_check)o->cfg.check_tensors;
    char err[512] = "", where[256];
    /* The loader logs its failure as well as returning it; the user gets our one line instead,
     * which says where the path was configured. */
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (devnull >= 0) pi_log_set_fd(devnull);
    int rc = pi_model_open(o->cfg.model_path, &mo, &cm->model, err, sizeof err);
    pi_log_set_fd(2);
    if (devnull >= 0) close(devnull);
    if (rc != 0) {
        fprintf(stderr, "pi-coordinator: %s: cannot load model %s: %s\n", pi_coord_opts_model_origin(o, where, sizeof where),
                o->cfg.model_path, *err ? err : pi_err_str(rc));
        return rc;
    }
    pi_model_log_down_t(cm->model);
    if (cm->model->rows16_declined) /* the loader's own warning went to /dev/null with its other lines */
        pi_warn("not enough memory for the 16-row packed weights of %s: the CPU products read the file's rows (slower; "
                "[tune] cpu_pack = off says so quietly)", o->cfg.model_path);
    if ((rc = pi_coord_sidecar_open(o, cm, "pi-coordinator")) < 0 || (rc = pi_coord_sparsity_open(o, cm, "pi-coordinator")) < 0) {
        pi_coord_model_close(cm);
        return rc;
    }
    if (pi_gguf_find_key(cm->model->gguf, "tokenizer.ggml.model") < 0 && !o->prompt) {
        pi_warn("model %s has no tokenizer: prompts only as --tokens, output as token ids", o->cfg.model_path);
        return 0;
    }
    cm->tok = pi_tokenizer_new(cm->model->gguf, err, sizeof err);
    if (!cm->tok) {
        fprintf(stderr, "pi-coordinator: %s: model %s has no usable tokenizer: %s\n",
                pi_coord_opts_model_origin(o, where, sizeof where), o->cfg.model_path, err);
        pi_coord_model_close(cm);
        return -PI_ERR_FORMAT;
    }
    if (pi_tokenizer_n_vocab(cm->tok) > cm->model->hp.n_vocab) {
        fprintf(stderr, "pi-coordinator: %s: model %s: tokenizer has %d tokens, the embedding %d\n",
                pi_coord_opts_model_origin(o, where, sizeof where), o->cfg.model_path, pi_tokenizer_n_vocab(cm->tok),
                cm->model->hp.n_vocab);
        pi_coord_model_close(cm);
        return -PI_ERR_FORMAT;
    }
    return 0;
}

void pi_coord_model_close(struct pi_coord_model *cm)
{
    struct pi_sidecar *s = (struct pi_sidecar *)cm->sidecar; /* owned here; const to its readers */
    pi_sidecar_destroy(&s);
    cm->sidecar = NULL;
    pi_predictors_free(&cm->pred);
    free(cm->gate_min);
    cm->gate_min = NULL;
    cm->sparsity = PI_SPARSITY_OFF;
    pi_tokenizer_destroy(&cm->tok);
    pi_model_destroy(&cm->model);
}

/* SIGINT/SIGTERM during a one-shot run: stop generating and shut the workers down cleanly (a second
 * signal kills at once: SA_RESETHAND). */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig) { interrupted = sig; }

static int stop_requested(void *ctx)
{
    (void)ctx;
    return interrupted != 0;
}

/* Stream generated text to stdout as it comes. */
static int emit_stdout(void *ctx, const char *text, size_t len)
{
    size_t *total = ctx;
    if (interrupted) return -1;
    *total += len;
    if (fwrite(text, 1, len, stdout) != len) return -1;
    return fflush(stdout) == 0 ? 0 : -1;
}


char *pi_coord_chat_render(const struct pi_coord_opts *o, const pi_tokenizer_t *t, const struct pi_chat_msg *msgs, size_t n,
                           const char *what)
{
    char err[256], bos[256], eos[256];
    enum pi_chat_format fmt;
    const char *name = o->cfg.chat_template && *o->cfg.chat_template ? o->cfg.chat_template : NULL;
    if (pi_chat_resolve(name, pi_tokenizer_chat_template(t), &fmt, err, sizeof err) != 0) {
        fprintf(stderr, "pi-coordinator: %s: %s with --chat-template\n", what, err);
        return NULL;
    }
    int rc = 0;
    /* a token that exists but cannot be a C string is refused: the formatter would otherwise fall back
     * to "<s>"/"</s>", silently the wrong text */
    const int rb = pi_token_cstr(t, pi_tokenizer_bos(t), bos, sizeof bos);
    const int re = pi_token_cstr(t, pi_tokenizer_eos(t), eos, sizeof eos);
    const char *bos_text = rb == 1 ? bos : NULL, *eos_text = re == 1 ? eos : NULL;
    if (rb < 0 || re < 0) {
        fprintf(stderr, "pi-coordinator: %s: the model's BOS or EOS text is longer than %zu bytes or holds a NUL byte\n",
                what, sizeof bos - 1);
        return NULL;
    }
    char *text = pi_chat_apply(fmt, msgs, n, true, bos_text, eos_text, &rc);
    if (!text)
        fprintf(stderr, "pi-coordinator: %s: formatting the conversation as %s failed: %s%s\n", what, pi_chat_name(fmt),
                pi_err_str(rc), rc == -PI_ERR_INVAL ? " (does the format take a system prompt?)" : "");
    else pi_debug("chat prompt (%s): %s", pi_chat_name(fmt), text);
    return text;
}

/* --chat: the prompt as one user turn (after --system, when given) of the chat format, with the
 * assistant's turn opened. Returns a malloc'd string, or NULL after printing one line on stderr. */
static char *chat_prompt(const struct pi_coord_opts *o, const pi_tokenizer_t *t)
{
    struct pi_chat_msg msgs[2];
    size_t n = 0;
    if (o->system) msgs[n++] = (struct pi_chat_msg){"system", o->system};
    msgs[n++] = (struct pi_chat_msg){"user", o->prompt};
    return pi_coord_chat_render(o, t, msgs, n, "--chat");
}

int pi_coord_check_bias(const struct pi_coord_opts *o, int n_vocab)
{
    for (size_t i = 0; i < o->n_bias; i++) {
        if (o->bias_ids[i] >= n_vocab) {
            fprintf(stderr, "pi-coordinator: --logit-bias: token %d is outside the model's vocabulary (0..%d)\n",
                    (int)o->bias_ids[i], n_vocab - 1);
            return -PI_ERR_RANGE;
        }
    }
    return 0;
}

void pi_coord_request_extras(const struct pi_coord_opts *o, struct pi_gen_request *r)
{
    r->stop_strings = (const char *const *)o->stop;
    r->n_stop = o->n_stop;
    r->bias_ids = o->bias_ids;
    r->bias = o->bias;
    r->n_bias = o->n_bias;
}

/* The run's sparse execution in one log line (compute/sparse.h), when the engine ran with predictors. */
static void log_sparsity(pi_engine_t *e, const pi_model_t *m)
{
    struct pi_sparse_stats st;
    struct pi_sparse_summary sum;
    if (pi_sparse_stats_init(&st, m) != 0) return;
    if (pi_engine_sparse_stats(e, &st) == 0) {
        pi_sparse_summary(&st, -1, &sum);
        char rec[64] = "not measured (--recall-every N)";
        if (sum.recall_true) snprintf(rec, sizeof rec, "%.2f%%", 100.0 * sum.recall);
        pi_info("FFN sparsity %.1f%% of the (token, neuron) pairs, %.1f MB of FFN weights skipped; predictor recall %s",
                100.0 * sum.sparsity, (double)sum.bytes_skipped / 1e6, rec);
    }
    pi_sparse_stats_free(&st);
}

int pi_coord_run_oneshot(const struct pi_coord_opts *o, const char *argv0)
{
    struct pi_coord_model cm;
    if (pi_coord_model_open(o, o->cfg.gpu_backend == PI_GPU_NONE, &cm) != 0) return PI_EXIT_USAGE;
    int status = PI_EXIT_FAILURE;
    FILE *lf = NULL;
    pi_engine_t *e = NULL;
    char *chat_text = NULL;
    if (o->logits_out && !(lf = fopen(o->logits_out, "wbe") /* close-on-exec: not the workers' */)) {
        fprintf(stderr, "pi-coordinator: --logits-out %s: %s\n", o->logits_out, strerror(errno));
        status = PI_EXIT_USAGE;
        goto out;
    }
    if (pi_coord_check_bias(o, cm.model->hp.n_vocab) != 0) {
        status = PI_EXIT_USAGE;
        goto out;
    }
    if (o->chat && (!cm.tok || !(chat_text = chat_prompt(o, cm.tok)))) {
        if (!cm.tok) fprintf(stderr, "pi-coordinator: --chat: the model has no tokenizer\n");
        status = PI_EXIT_USAGE;
        goto out;
    }
    e = pi_coord_engine_new(o, &cm, argv0);
    if (!e) {
        fprintf(stderr, "pi-coordinator: the %s could not be started (see the errors above)\n",
                o->cfg.gpu_backend == PI_GPU_NONE ? "forward pass" : "pipeline");
        goto out;
    }
    struct pi_gen_request r = {0};
    r.prompt = o->prompt;
    if (chat_text) {
        r.prompt = chat_text;
        r.parse_special = true;
    }
    r.tokens = o->tokens;
    r.n_tokens = o->n_tokens;
    r.n_predict = o->cfg.n_predict;
    r.logits_out = lf;
    r.stop = stop_requested;
    pi_coord_request_extras(o, &r);
    pi_gen_params_from_config(&o->cfg, &r.sample);
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct pi_gen_result res;
    size_t bytes = 0;
    int rc = pi_generate(e, cm.tok, &r, emit_stdout, &bytes, &res);
    if (bytes) { fputc('\n', stdout); fflush(stdout); }
    if (rc != 0) {
        if (interrupted && res.n_prompt_done < res.n_prompt)
            fprintf(stderr, "pi-coordinator: interrupted by signal %d after %d of %d prompt tokens\n", (int)interrupted,
                    res.n_prompt_done, res.n_prompt);
        else if (interrupted) fprintf(stderr, "pi-coordinator: interrupted by signal %d\n", (int)interrupted);
        else fprintf(stderr, "pi-coordinator: generation failed: %s\n",
                     rc == -PI_ERR_PEER ? "a worker of the pipeline died during the request" : pi_err_str(rc));
        goto out;
    }
    pi_info("prompt: %d tokens in %.3f s (%.1f tok/s); generated %d tokens in %.3f s (%.1f tok/s)%s", res.n_prompt,
            res.prompt_s, res.prompt_s > 0 ? res.n_prompt / res.prompt_s : 0.0, res.n_generated, res.gen_s,
            res.gen_s > 0 ? res.n_generated / res.gen_s : 0.0, res.stop_eog ? ", stopped at end of text" : "");
    log_sparsity(e, cm.model);
    status = PI_EXIT_OK;
out:
    free(chat_text);
    pi_engine_destroy(&e);
    if (lf && fclose(lf) != 0 && status == PI_EXIT_OK) {
        fprintf(stderr, "pi-coordinator: --logits-out %s: %s\n", o->logits_out, strerror(errno));
        status = PI_EXIT_FAILURE;
    }
    pi_coord_model_close(&cm);
    return status;
}
