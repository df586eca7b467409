/*
 * coordinator/bench-model.c - pi-bench's main measurement: llama-bench's pp and tg tests through the
 * coordinator's real engines, and the table in llama-bench's three formats (coordinator/bench.h).
 *
 * A test runs on an engine of coordinator/engine.h exactly as a request does: the in-process
 * forward pass for --gpu-backend none, otherwise the process pipeline (pi-gpu-worker with the host or
 * cuda backend, and the CPU workers), started once per model x placement x threads and reused by
 * that combination's tests. ppN evaluates N random token ids from position 0 in the engine's
 * batches, asking for the last position's logits, as a prompt is; tgN evaluates N random ids one at
 * a time from position 0, logits every step, as decoding does (without sampling: the ids are fixed,
 * as in llama-bench). Each test is run once to warm up (tg: one token), then -r times; a run is timed
 * from its first eval to its last one's logits, the reset of the sequence before it excluded. t/s is
 * the mean of the runs' tokens/s and its sample standard deviation, as llama-bench computes them.
 *
 * Output is printed row by row as the tests finish, so a long run shows progress and a failure
 * keeps the rows before it. The markdown columns follow llama-bench (model, size, params, backend,
 * threads, test, t/s); pinfer adds "hot" (the share of each layer's FFN neurons the GPU worker
 * holds, as placed) and "workers" (CPU worker processes) when any engine is a pipeline, and "GB/s"
 * and "bw %" (weight bytes a dense decode step streams x tokens/s, against --bw) with --bw.
 */
#include "config.h"
#include "coordinator/bench.h"
#include "coordinator/coordinator.h"
#include "coordinator/engine.h"
#include "coordinator/pipeline.h"
#include "compute/placement.h"
#include "lib/common.h"
#include "lib/log.h"
#include "model/model-gen.h"
#include "model/model.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* What the table says about a model: llama-bench's model, size and params columns. */
struct model_info {
    const char *file;   /* as given on the command line (a path or a gen: spec) */
    char type[64];      /* "llama 7B Q4_0": architecture, parameter class, weight type */
    uint64_t size;      /* bytes of every tensor in the file */
    uint64_t n_params;  /* elements of every tensor */
    uint64_t decode_bytes; /* weight bytes a dense decode step streams (pi_model_decode_bytes) */
    int n_ff, n_layer;
};

/* One engine's placement: a combination of the placement lists and -t. */
struct placement {
    enum pi_gpu_backend backend;
    double hot_fraction; /* as asked (pipeline only) */
    int64_t workers;     /* as asked, 0 = one per NUMA node (pipeline only) */
    int64_t threads;
    enum pi_sparsity_cfg sparsity; /* as asked (--sparsity) */
};

/* One finished test. */
struct result {
    const struct model_info *mi;
    struct placement pl;
    int64_t n_hot;       /* FFN neurons the GPU worker holds, all layers; -1 for the in-process engine */
    double hot_share;    /* n_hot / (n_layer x n_ff) */
    int n_workers;       /* CPU worker processes started; 0 for the in-process engine */
    int64_t n_prompt, n_gen;
    char test_time[32];  /* ISO 8601 UTC, when the test started */
    const int64_t *ns;   /* (reps) nanoseconds of each run */
    int reps;
    double avg_ns, sd_ns, avg_ts, sd_ts;
    enum pi_sparsity sparsity;       /* the mode the engine runs (resolved) */
    const pi_model_t *m;             /* the model the engine runs (for the sparse counts' shape) */
    struct pi_sparse_summary sparse; /* the test's counts (pairs 0: dense) */
};

static const char *const backend_names[] = {"CPU", "host", "CUDA"};   /* the table's backend column */
static const char *const backend_keys[] = {"none", "host", "cuda"};   /* csv/json, as --gpu-backend */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- generated models ---- */

int pi_bench_gen_parse(const char *spec, struct pi_model_gen *g, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    g->type = PI_TYPE_Q4_0;
    g->seed = 1;
    if (strncmp(spec, "gen:", 4) != 0) {
        snprintf(err, errlen, "'%s' is not a gen: spec", spec);
        return -PI_ERR_INVAL;
    }
    char buf[128];
    if (snprintf(buf, sizeof buf, "%s", spec + 4) >= (int)sizeof buf) {
        snprintf(err, errlen, "'%s': too long", spec);
        return -PI_ERR_INVAL;
    }
    bool type_set = false, act_set = false;
    int i = 0;
    for (char *save = NULL, *tok = strtok_r(buf, "-", &save); tok; tok = strtok_r(NULL, "-", &save), i++) {
        enum pi_type t;
        enum pi_ffn_act a;
        if (i == 0) {
            if (pi_model_gen_preset(tok, g) != 0) {
                snprintf(err, errlen, "'%s': unknown preset '%s' (one of: %s)", spec, tok, pi_model_gen_preset_names());
                return -PI_ERR_INVAL;
            }
        } else if (!type_set && pi_type_from_name(tok, &t)) {
            static const enum pi_type ok[] = {PI_TYPE_F32, PI_TYPE_F16, PI_TYPE_BF16, PI_TYPE_Q8_0,
                                              PI_TYPE_Q4_0, PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1};
            bool found = false;
            for (size_t k = 0; k < PI_ARRAY_LEN(ok); k++) found |= ok[k] == t;
            if (!found) {
                snprintf(err, errlen, "'%s': the generator writes f32, f16, bf16, q8_0, q4_0, q4_1, q5_0 or q5_1, not %s",
                         spec, tok);
                return -PI_ERR_INVAL;
            }
            g->type = t;
            type_set = true;
        } else if (!act_set && pi_ffn_act_parse(tok, &a) == 0) {
            g->act = a;
            act_set = true;
        } else {
            snprintf(err, errlen, "'%s': '%s' is neither a weight type nor an activation (silu, relu, drelu)", spec, tok);
            return -PI_ERR_INVAL;
        }
    }
    if (i == 0) {
        snprintf(err, errlen, "'%s': expected gen:PRESET[-TYPE][-ACT]", spec);
        return -PI_ERR_INVAL;
    }
    /* the output head stays at 8 bits for 4- and 5-bit weights, as llama.cpp's quantiser keeps it */
    bool small = g->type == PI_TYPE_Q4_0 || g->type == PI_TYPE_Q4_1 || g->type == PI_TYPE_Q5_0 || g->type == PI_TYPE_Q5_1;
    g->out_type = small ? PI_TYPE_Q8_0 : g->type;
    return 0;
}

/* The file of model `spec`: the path itself, or a generated model written into dir as path. */
static int model_file(const char *spec, const char *dir, int index, char *path, size_t len, bool *generated)
{
    *generated = false;
    if (strncmp(spec, "gen:", 4) != 0) {
        snprintf(path, len, "%s", spec);
        return 0;
    }
    struct pi_model_gen g;
    char err[256];
    if (pi_bench_gen_parse(spec, &g, err, sizeof err) != 0) { /* bench.c checked it: cannot happen */
        fprintf(stderr, "pi-bench: -m %s\n", err);
        return -PI_ERR_INVAL;
    }
    snprintf(path, len, "%s/pi-bench-%ld-%d.gguf", dir, (long)getpid(), index);
    int rc = pi_model_gen_write(&g, path);
    if (rc != 0) {
        fprintf(stderr, "pi-bench: -m %s: writing the generated model to %s failed: %s\n", spec, path, pi_err_str(rc));
        return rc;
    }
    *generated = true;
    return 0;
}

/* The table's description of m, read from its file. */
static void model_describe(const pi_model_t *m, const char *file, struct model_info *mi)
{
    memset(mi, 0, sizeof *mi);
    mi->file = file;
    for (uint64_t i = 0; i < pi_gguf_n_tensors(m->gguf); i++) {
        const struct pi_gguf_tensor *t = pi_gguf_tensor(m->gguf, i);
        mi->size += t->n_bytes;
        mi->n_params += t->n_elems;
    }
    mi->decode_bytes = pi_model_decode_bytes(m);
    mi->n_ff = m->hp.n_ff;
    mi->n_layer = m->hp.n_layer;
    char cls[16], ty[16];
    double p = (double)mi->n_params;
    if (p >= 1e9) snprintf(cls, sizeof cls, "%.0fB", p / 1e9);
    else snprintf(cls, sizeof cls, "%.0fM", p / 1e6);
    snprintf(ty, sizeof ty, "%s", pi_type_name(m->layers[0].ffn_up.type));
    for (char *c = ty; *c; c++) *c = (char)toupper((unsigned char)*c);
    snprintf(mi->type, sizeof mi->type, "%s %s %s", m->hp.arch, cls, ty);
}

/* ---- output ---- */

/* The markdown columns; the optional ones appear when the run has them. */
struct column {
    const char *name;
    int width;
    bool right;
};

static const struct column col_model = {"model", 30, false}, col_size = {"size", 10, true},
                           col_params = {"params", 10, true}, col_backend = {"backend", 10, false},
                           col_hot = {"hot", 5, true}, col_workers = {"workers", 7, true},
                           col_threads = {"threads", 7, true}, col_test = {"test", 13, true},
                           col_ts = {"t/s", 20, true}, col_gbs = {"GB/s", 8, true}, col_bw = {"bw %", 6, true},
                           col_sparse = {"sparsity", 16, false}, col_recall = {"recall", 7, true};

struct table {
    const struct pi_bench_opts *b;
    bool pipeline;   /* the hot and workers columns */
    bool bw;         /* the GB/s and bw % columns */
    bool sparse;     /* the sparsity and recall columns (--sparsity given) */
    double bw_gbs;   /* the bandwidth they compare with */
    int rows;        /* printed so far */
    char cpu_info[128];
};

/* Pad to a column: text is `cells` characters wide on screen (± is two bytes, one character). */
static void md_cell(const struct column *c, const char *text, int cells)
{
    int pad = c->width > cells ? c->width - cells : 0;
    if (c->right) printf(" %*s%s |", pad, "", text);
    else printf(" %s%*s |", text, pad, "");
}

static void md_text(const struct column *c, const char *text) { md_cell(c, text, (int)strlen(text)); }

/* The table's columns into cols, NULL-terminated (16 entries are enough). */
static void md_columns(const struct table *t, const struct column **cols)
{
    int n = 0;
    cols[n++] = &col_model, cols[n++] = &col_size, cols[n++] = &col_params, cols[n++] = &col_backend;
    if (t->pipeline) cols[n++] = &col_hot, cols[n++] = &col_workers;
    cols[n++] = &col_threads;
    if (t->sparse) cols[n++] = &col_sparse;
    cols[n++] = &col_test, cols[n++] = &col_ts;
    if (t->sparse) cols[n++] = &col_recall;
    if (t->bw) cols[n++] = &col_gbs, cols[n++] = &col_bw;
    cols[n] = NULL;
}

static void md_header(const struct table *t)
{
    const struct column *cols[16];
    md_columns(t, cols);
    printf("|");
    for (int i = 0; cols[i]; i++) md_text(cols[i], cols[i]->name);
    printf("\n|");
    for (int i = 0; cols[i]; i++) {
        char dash[64];
        int w = cols[i]->width;
        memset(dash, '-', (size_t)w);
        if (cols[i]->right) dash[w - 1] = ':';
        dash[w] = '\0';
        printf(" %s |", dash);
    }
    printf("\n");
}

/* Decode GB/s of a tg row (weights streamed per token x tokens/s); negative for pp rows. */
static double row_gbs(const struct result *r)
{
    return r->n_gen > 0 ? r->avg_ts * (double)r->mi->decode_bytes / 1e9 : -1.0;
}

static void md_row(const struct table *t, const struct result *r)
{
    char s[64];
    printf("|");
    md_text(&col_model, r->mi->type);
    double sz = (double)r->mi->size, np = (double)r->mi->n_params;
    if (sz >= 1073741824.0) snprintf(s, sizeof s, "%.2f GiB", sz / 1073741824.0);
    else snprintf(s, sizeof s, "%.2f MiB", sz / 1048576.0);
    md_text(&col_size, s);
    if (np >= 1e9) snprintf(s, sizeof s, "%.2f B", np / 1e9);
    else snprintf(s, sizeof s, "%.2f M", np / 1e6);
    md_text(&col_params, s);
    md_text(&col_backend, backend_names[r->pl.backend]);
    if (t->pipeline) {
        if (r->n_hot >= 0) snprintf(s, sizeof s, "%.2f", r->hot_share);
        else snprintf(s, sizeof s, "-");
        md_text(&col_hot, s);
        if (r->n_hot >= 0) snprintf(s, sizeof s, "%d", r->n_workers);
        md_text(&col_workers, s);
    }
    snprintf(s, sizeof s, "%lld", (long long)r->pl.threads);
    md_text(&col_threads, s);
    if (t->sparse) { /* the mode and the share of (token, neuron) pairs not computed */
        if (r->sparse.pairs) snprintf(s, sizeof s, "%s %.1f%%", pi_sparsity_name(r->sparsity), 100.0 * r->sparse.sparsity);
        else snprintf(s, sizeof s, "%s", pi_sparsity_name(r->sparsity));
        md_text(&col_sparse, s);
    }
    snprintf(s, sizeof s, "%s%lld", r->n_prompt ? "pp" : "tg", (long long)(r->n_prompt ? r->n_prompt : r->n_gen));
    md_text(&col_test, s);
    snprintf(s, sizeof s, "%.2f ± %.2f", r->avg_ts, r->sd_ts);
    md_cell(&col_ts, s, (int)strlen(s) - 1);
    if (t->sparse) {
        if (r->sparse.recall_true) snprintf(s, sizeof s, "%.1f%%", 100.0 * r->sparse.recall);
        else snprintf(s, sizeof s, "-");
        md_text(&col_recall, s);
    }
    if (t->bw) {
        double g = row_gbs(r);
        if (g >= 0) snprintf(s, sizeof s, "%.1f", g);
        else snprintf(s, sizeof s, "-");
        md_text(&col_gbs, s);
        if (g >= 0) snprintf(s, sizeof s, "%.0f%%", 100.0 * g / t->bw_gbs);
        md_text(&col_bw, s);
    }
    printf("\n");
}

/* The csv and json fields of a row, in order; NULL value = not applicable (csv "", json null). */
#define N_FIELDS 28
static const char *const field_names[N_FIELDS] = {
    "pinfer_version", "cpu_info", "model_filename", "model_type", "model_size", "model_n_params",
    "backend", "hot_fraction", "hot_share", "n_hot", "n_layer", "n_ff", "cpu_workers", "n_threads", "n_prompt", "n_gen",
    "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "decode_gbs", "bw_gbs", "bw_share",
    "sparsity", "ffn_sparsity", "ffn_bytes_skipped", "predictor_recall"};
/* which fields are numbers in json */
static const bool field_num[N_FIELDS] = {false, false, false, false, true, true, false, true, true, true, true, true, true, true,
                                         true,  true,  false, true,  true, true, true, true, true, true, false, true, true, true};

static void row_fields(const struct table *t, const struct result *r, char v[N_FIELDS][256], bool present[N_FIELDS])
{
    int k = 0;
    bool pipe = r->n_hot >= 0;
    double g = t->bw ? row_gbs(r) : -1.0;
    for (int i = 0; i < N_FIELDS; i++) present[i] = true;
    snprintf(v[k++], 256, "%s", PACKAGE_VERSION);
    snprintf(v[k++], 256, "%s", t->cpu_info);
    snprintf(v[k++], 256, "%s", r->mi->file);
    snprintf(v[k++], 256, "%s", r->mi->type);
    snprintf(v[k++], 256, "%llu", (unsigned long long)r->mi->size);
    snprintf(v[k++], 256, "%llu", (unsigned long long)r->mi->n_params);
    snprintf(v[k++], 256, "%s", backend_keys[r->pl.backend]);
    present[k] = pipe, snprintf(v[k++], 256, "%g", r->pl.hot_fraction);
    present[k] = pipe, snprintf(v[k++], 256, "%.6f", r->hot_share);
    present[k] = pipe, snprintf(v[k++], 256, "%lld", (long long)r->n_hot);
    snprintf(v[k++], 256, "%d", r->mi->n_layer);
    snprintf(v[k++], 256, "%d", r->mi->n_ff);
    present[k] = pipe, snprintf(v[k++], 256, "%d", r->n_workers);
    snprintf(v[k++], 256, "%lld", (long long)r->pl.threads);
    snprintf(v[k++], 256, "%lld", (long long)r->n_prompt);
    snprintf(v[k++], 256, "%lld", (long long)r->n_gen);
    snprintf(v[k++], 256, "%s", r->test_time);
    snprintf(v[k++], 256, "%.0f", r->avg_ns);
    snprintf(v[k++], 256, "%.0f", r->sd_ns);
    snprintf(v[k++], 256, "%.6f", r->avg_ts);
    snprintf(v[k++], 256, "%.6f", r->sd_ts);
    present[k] = g >= 0, snprintf(v[k++], 256, "%.3f", g);
    present[k] = t->bw, snprintf(v[k++], 256, "%.3f", t->bw_gbs);
    present[k] = g >= 0, snprintf(v[k++], 256, "%.4f", g / t->bw_gbs);
    /* sparse execution: per test, the share of (token, neuron) pairs not computed, the FFN weight bytes
     * they would have read (per token, summed over the test's tokens), the predictor's recall */
    snprintf(v[k++], 256, "%s", pi_sparsity_name(r->sparsity));
    present[k] = r->sparse.pairs > 0, snprintf(v[k++], 256, "%.6f", r->sparse.sparsity);
    present[k] = r->sparse.pairs > 0, snprintf(v[k++], 256, "%llu", (unsigned long long)r->sparse.bytes_skipped);
    present[k] = r->sparse.recall_true > 0, snprintf(v[k++], 256, "%.6f", r->sparse.recall);
    PI_ASSERT(k == N_FIELDS);
}

static void csv_quoted(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"') putchar('"');
        putchar(*s);
    }
    putchar('"');
}

static void csv_row(const struct table *t, const struct result *r)
{
    char v[N_FIELDS][256];
    bool present[N_FIELDS];
    row_fields(t, r, v, present);
    for (int i = 0; i < N_FIELDS; i++) {
        if (i) putchar(',');
        csv_quoted(present[i] ? v[i] : "");
    }
    putchar('\n');
}

/* One json object; its samples in ns and in tokens/s, as llama-bench's samples_ns and samples_ts. */
static int json_row(const struct table *t, const struct result *r)
{
    char v[N_FIELDS][256];
    bool present[N_FIELDS];
    row_fields(t, r, v, present);
    json_t *o = json_object(), *sn = json_array(), *st = json_array();
    if (!o || !sn || !st) goto nomem;
    for (int i = 0; i < N_FIELDS; i++) {
        json_t *x = !present[i] ? json_null() : field_num[i] ? json_real(strtod(v[i], NULL)) : json_string(v[i]);
        if (field_num[i] && present[i] && !strpbrk(v[i], ".eE")) { /* integers stay integers */
            json_decref(x);
            x = json_integer(strtoll(v[i], NULL, 10));
        }
        if (!x || json_object_set_new(o, field_names[i], x) != 0) goto nomem;
    }
    int64_t n = r->n_prompt ? r->n_prompt : r->n_gen;
    for (int i = 0; i < r->reps; i++) {
        if (json_array_append_new(sn, json_integer(r->ns[i])) != 0 ||
            json_array_append_new(st, json_real((double)n * 1e9 / (double)r->ns[i])) != 0)
            goto nomem;
    }
    json_object_set_new(o, "samples_ns", sn);
    json_object_set_new(o, "samples_ts", st);
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(o);
    if (!s) return -PI_ERR_NOMEM;
    printf("%s%s", t->rows ? ",\n" : "", s);
    free(s);
    return 0;
nomem:
    json_decref(o), json_decref(sn), json_decref(st);
    return -PI_ERR_NOMEM;
}

static void table_begin(struct table *t)
{
    switch (t->b->format) {
    case PI_BENCH_MD: md_header(t); break;
    case PI_BENCH_CSV:
        for (int i = 0; i < N_FIELDS; i++) printf("%s%s", i ? "," : "", field_names[i]);
        printf("\n");
        break;
    case PI_BENCH_JSON: printf("[\n"); break;
    }
    fflush(stdout);
}

static void table_row(struct table *t, const struct result *r)
{
    switch (t->b->format) {
    case PI_BENCH_MD: md_row(t, r); break;
    case PI_BENCH_CSV: csv_row(t, r); break;
    case PI_BENCH_JSON:
        if (json_row(t, r) != 0) fprintf(stderr, "pi-bench: out of memory formatting a row\n");
        break;
    }
    t->rows++;
    fflush(stdout);
}

static void table_end(const struct table *t)
{
    if (t->b->format == PI_BENCH_JSON) printf("%s]\n", t->rows ? "\n" : "");
    fflush(stdout);
}

/* /proc/cpuinfo's first "model name", or "unknown". */
static void cpu_info(char *out, size_t len)
{
    snprintf(out, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (strncmp(line, "model name", 10) != 0 || !c) continue;
        c++;
        while (*c == ' ' || *c == '\t') c++;
        c[strcspn(c, "\n")] = '\0';
        snprintf(out, len, "%s", c);
        break;
    }
    fclose(f);
}

/* ---- the tests ---- */

/* One run: reset the sequence, then n_prompt tokens in batches (pp) or n_gen single tokens (tg). */
static int run_once(pi_engine_t *e, const int32_t *tokens, int64_t n_prompt, int64_t n_gen, float *logits, int64_t *ns)
{
    int rc = e->ops->reset(e);
    if (rc != 0) return rc;
    int64_t t0 = now_ns();
    for (int64_t p = 0; rc == 0 && p < n_prompt; p += e->max_batch) {
        int nb = (int)PI_MIN((int64_t)e->max_batch, n_prompt - p);
        rc = pi_engine_eval_seq0(e, tokens + p, nb, (int)p, logits, p + nb == n_prompt ? 1 : 0);
    }
    for (int64_t i = 0; rc == 0 && i < n_gen; i++) rc = pi_engine_eval_seq0(e, tokens + i, 1, (int)i, logits, 1);
    *ns = now_ns() - t0;
    return rc;
}

/* r->sparse = the engine's sparse counts of the timed runs: after minus before (summaries of both). */
static void sparse_delta(pi_engine_t *e, const pi_model_t *m, const struct pi_sparse_stats *before, struct result *r)
{
    struct pi_sparse_stats now;
    memset(&r->sparse, 0, sizeof r->sparse);
    if (!before || pi_sparse_stats_init(&now, m) != 0) return;
    if (pi_engine_sparse_stats(e, &now) == 0) {
        pi_sparse_stats_sub(&now, before);
        pi_sparse_summary(&now, -1, &r->sparse);
    }
    pi_sparse_stats_free(&now);
}

/* Run one test -r times (after a warm-up) and fill r's statistics. */
static int run_test(const struct pi_bench_opts *b, pi_engine_t *e, const int32_t *tokens, float *logits, int64_t *ns,
                    struct result *r)
{
    int64_t n = r->n_prompt ? r->n_prompt : r->n_gen, warm;
    time_t now = time(NULL);
    struct tm tm;
    strftime(r->test_time, sizeof r->test_time, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    int rc = b->warmup ? run_once(e, tokens, r->n_prompt, r->n_prompt ? 0 : 1, logits, &warm) : 0;
    struct pi_sparse_stats before;
    const bool counted = r->sparsity != PI_SPARSITY_OFF && pi_sparse_stats_init(&before, r->m) == 0;
    if (counted) pi_engine_sparse_stats(e, &before);
    for (int i = 0; rc == 0 && i < b->reps; i++) rc = run_once(e, tokens, r->n_prompt, r->n_gen, logits, &ns[i]);
    if (rc == 0) sparse_delta(e, r->m, counted ? &before : NULL, r);
    if (counted) pi_sparse_stats_free(&before);
    if (rc != 0) return rc;
    double s = 0, s2 = 0, st = 0, st2 = 0;
    for (int i = 0; i < b->reps; i++) {
        double x = (double)ns[i], ts = (double)n * 1e9 / x;
        s += x, s2 += x * x, st += ts, st2 += ts * ts;
    }
    double k = b->reps;
    r->ns = ns;
    r->reps = b->reps;
    r->avg_ns = s / k;
    r->avg_ts = st / k;
    r->sd_ns = k > 1 ? sqrt(fmax(0.0, (s2 - s * s / k) / (k - 1))) : 0.0;
    r->sd_ts = k > 1 ? sqrt(fmax(0.0, (st2 - st * st / k) / (k - 1))) : 0.0;
    return 0;
}

/* The engine of one placement over model m (opened to match: packed for the in-process engine). */
static pi_engine_t *engine_new(const struct pi_bench_opts *b, const struct placement *pl, const char *path, int64_t ctx,
                               struct pi_coord_opts *o, struct pi_coord_model *cm)
{
    struct pi_config *c = &o->cfg;
    c->gpu_backend = pl->backend;
    c->hot_fraction = pl->hot_fraction;
    c->vram_budget = b->vram_budget;
    if (b->gpu_index) {
        free(c->gpu_index);
        if (!(c->gpu_index = strdup(b->gpu_index))) return NULL;
    }
    c->cpu_workers = pl->workers;
    c->cpu_threads = pl->threads;
    c->ctx_len = ctx;
    char line[320], side[4096];
    free(c->model_path);
    c->model_path = strdup(path);
    if (!c->model_path) return NULL;
    if (pi_sparse_open(cm->model, pi_coord_sidecar_file(o, side, sizeof side), pl->sparsity, &cm->pred, &cm->gate_min, &cm->sparsity, line,
                       sizeof line) != 0) {
        fprintf(stderr, "pi-bench: %s: --sparsity: %s\n", path, line);
        return NULL;
    }
    pi_info("%s", line);
    if (pl->backend == PI_GPU_NONE)
        return pi_engine_local_new(cm->model, (int)pl->threads, (int)ctx, 1, pi_tune_batch(&c->tune), &cm->pred, cm->gate_min,
                                   cm->sparsity, c->sparsity.recall_every);
    /* the model's activation profile, as pi-coordinator reads it: the placement solver's input */
    if (pi_coord_sidecar_open(o, cm, "pi-bench") < 0) return NULL;
    return pi_engine_pipeline_new(o, cm, "pi-bench");
}

/* Open path for a placement: with packed weights for the in-process engine (and 16-row copies unless
 * [tune] cpu_pack is off), metadata for the workers. */
static int model_open(const char *path, bool packed, const struct pi_tune *tune, pi_model_t **m)
{
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = !packed;
    /* the in-process engine's dense products (where the CPU variant has the kernel) */
    mo.rows16 = packed && tune->cpu_pack != PI_TUNE_CPU_PACK_OFF;
    mo.down_t_grouped = packed && tune->down_t == PI_TUNE_DOWN_T_GROUPED;
    char err[512] = "";
    int rc = pi_model_open(path, &mo, m, err, sizeof err);
    if (rc != 0) fprintf(stderr, "pi-bench: cannot load model %s: %s\n", path, *err ? err : pi_err_str(rc));
    else pi_model_log_down_t(*m);
    return rc;
}

/* Every placement of the run, in llama-bench's order (backend, then hot fraction, CPU workers and
 * threads, then the sparsity modes; the in-process engine has no hot fraction or workers). Returns a
 * fresh array and its length in *n, or NULL when out of memory. */
static struct placement *placements(const struct pi_bench_opts *b, int *n)
{
    size_t cap = (size_t)b->n_backends * (size_t)b->hot_fraction.n * (size_t)b->cpu_workers.n * (size_t)b->threads.n *
                 (size_t)b->sparsity.n;
    struct placement *pl = calloc(cap ? cap : 1, sizeof *pl);
    *n = 0;
    if (!pl) return NULL;
    for (int bi = 0; bi < b->n_backends; bi++) {
        bool pipe = b->backends[bi] != PI_GPU_NONE;
        for (int hi = 0; hi < (pipe ? b->hot_fraction.n : 1); hi++)
            for (int wi = 0; wi < (pipe ? b->cpu_workers.n : 1); wi++)
                for (int ti = 0; ti < b->threads.n; ti++)
                    for (int si = 0; si < b->sparsity.n; si++)
                        pl[(*n)++] = (struct placement){b->backends[bi], pipe ? b->hot_fraction.v[hi] : 0.0,
                                                        pipe ? b->cpu_workers.v[wi] : 0, b->threads.v[ti],
                                                        (enum pi_sparsity_cfg)b->sparsity.v[si]};
    }
    return pl;
}

/* The pp tests, then the tg tests, of one engine; rows go to t. 0, or 1 when a test failed. */
static int bench_engine(const struct pi_bench_opts *b, struct table *t, pi_engine_t *e, struct result *r,
                        const int32_t *tokens, float *logits, int64_t *ns)
{
    int status = 0;
    for (int k = 0; k < b->n_prompt.n + b->n_gen.n; k++) {
        bool pp = k < b->n_prompt.n;
        r->n_prompt = pp ? b->n_prompt.v[k] : 0;
        r->n_gen = pp ? 0 : b->n_gen.v[k - b->n_prompt.n];
        if (r->n_prompt + r->n_gen == 0) continue; /* -p 0 / -n 0: no such test */
        int rc = run_test(b, e, tokens, logits, ns, r);
        if (rc != 0) {
            fprintf(stderr, "pi-bench: %s, %s backend: %s%lld failed: %s\n", r->mi->file, backend_keys[r->pl.backend],
                    pp ? "pp" : "tg", (long long)(r->n_prompt + r->n_gen), pi_err_str(rc));
            status = 1;
            continue;
        }
        table_row(t, r);
    }
    return status;
}

/* Every placement and test of one model file; rows go to t. The model is opened once for the
 * in-process engine (packed) and once for the pipelines (metadata), as the placements need it.
 * 0, or 1 when something failed. */
static int bench_model(const struct pi_bench_opts *b, struct table *t, const char *spec, const char *path,
                       struct pi_coord_opts *o, const int32_t *tokens, int64_t ctx)
{
    int status = 0, n_pl = 0;
    pi_model_t *m = NULL;
    bool packed = false;
    struct model_info mi;
    struct placement *pls = placements(b, &n_pl);
    int64_t *ns = calloc((size_t)b->reps, sizeof *ns);
    float *logits = NULL;
    bool fatal = !pls || !ns; /* no model or no memory: the other placements cannot run either */
    if (fatal) status = 1;
    for (int i = 0; !fatal && i < n_pl; i++) {
        const struct placement *pl = &pls[i];
        bool pipe = pl->backend != PI_GPU_NONE;
        if (m && packed != !pipe) pi_model_destroy(&m);
        if (!m) {
            if (model_open(path, !pipe, &b->tune, &m) != 0) { status = 1; fatal = true; break; }
            packed = !pipe;
            model_describe(m, spec, &mi);
            free(logits);
            if (!(logits = malloc(sizeof(float) * (size_t)m->hp.n_vocab))) { status = 1; fatal = true; break; }
        }
        struct pi_coord_model cm = {.model = m, .tok = NULL};
        pi_engine_t *e = engine_new(b, pl, path, ctx, o, &cm);
        if (!e) {
            cm.model = NULL;
            pi_coord_model_close(&cm);
            fprintf(stderr, "pi-bench: %s: the %s engine could not be started\n", spec, backend_keys[pl->backend]);
            status = 1;
            continue;
        }
        const struct pi_placement *map = pipe ? pi_engine_pipeline_placement(e) : NULL;
        struct result r = {.mi = &mi, .pl = *pl, .n_hot = map ? pi_placement_hot_total(map) : -1,
                           .n_workers = map ? map->n_workers : 0};
        r.hot_share = map ? (double)r.n_hot / ((double)mi.n_layer * mi.n_ff) : -1.0;
        r.sparsity = cm.sparsity;
        r.m = m;
        status |= bench_engine(b, t, e, &r, tokens, logits, ns);
        pi_engine_destroy(&e);
        cm.model = NULL; /* m stays open for the next placement; the sidecar goes */
        pi_coord_model_close(&cm);
    }
    pi_model_destroy(&m);
    free(logits);
    free(ns);
    free(pls);
    return status;
}

int pi_bench_models(const struct pi_bench_opts *b)
{
    struct table t = {.b = b, .bw = b->bw_gbs != 0, .sparse = b->sparsity_given};
    for (int i = 0; i < b->n_backends; i++) t.pipeline |= b->backends[i] != PI_GPU_NONE;
    cpu_info(t.cpu_info, sizeof t.cpu_info);
    if (b->bw_gbs < 0) {
        int64_t tmax = 1;
        for (int i = 0; i < b->threads.n; i++) tmax = PI_MAX(tmax, b->threads.v[i]);
        t.bw_gbs = pi_bench_read_bandwidth((int)tmax, 3);
        if (t.bw_gbs <= 0) {
            fprintf(stderr, "pi-bench: --bw auto: the memory bandwidth could not be measured\n");
            return 1;
        }
        fprintf(stderr, "pi-bench: memory read bandwidth, %lld thread%s: %.1f GB/s\n", (long long)tmax, tmax > 1 ? "s" : "",
                t.bw_gbs);
    } else {
        t.bw_gbs = b->bw_gbs;
    }
    /* the context holds the largest test; the token ids are the same for every test */
    int64_t ctx = b->ctx, n_tok = 1;
    for (int i = 0; i < b->n_prompt.n; i++) n_tok = PI_MAX(n_tok, b->n_prompt.v[i]);
    for (int i = 0; i < b->n_gen.n; i++) n_tok = PI_MAX(n_tok, b->n_gen.v[i]);
    if (ctx == 0) ctx = n_tok;
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)n_tok);
    struct pi_coord_opts o = {0};
    int status = 0;
    if (!tokens || pi_config_defaults(&o.cfg) != 0) {
        free(tokens);
        pi_config_free(&o.cfg);
        return 1;
    }
    if (b->run_dir) {
        free(o.cfg.run_dir);
        o.cfg.run_dir = strdup(b->run_dir);
    }
    for (int i = 0; i < b->n_sets; i++) { /* --set tune.KEY=VALUE or sparsity.KEY=VALUE, checked by the parser */
        char key[128], err[256];
        const char *eq = strchr(b->sets[i], '=');
        snprintf(key, sizeof key, "%.*s", (int)(eq - b->sets[i]), b->sets[i]);
        if (pi_config_set(&o.cfg, key, eq + 1, "--set", err, sizeof err) != 0) {
            fprintf(stderr, "pi-bench: %s\n", err);
            status = 1;
            goto out;
        }
    }
    if (!o.cfg.run_dir || pi_coord_run_dir_check(o.cfg.run_dir) != 0) {
        status = 1;
        goto out;
    }
    table_begin(&t);
    for (int mi = 0; mi < b->n_models; mi++) {
        char path[4096];
        bool generated;
        if (model_file(b->models[mi], o.cfg.run_dir, mi, path, sizeof path, &generated) != 0) {
            status = 1;
            continue;
        }
        /* random ids 1..n_vocab-1 of this model's vocabulary (0 is often <unk>), the same for every test */
        pi_model_t *probe = NULL;
        if (model_open(path, false, &b->tune, &probe) == 0) {
            uint64_t x = 0x9E3779B97F4A7C15ull;
            for (int64_t i = 0; i < n_tok; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                tokens[i] = probe->hp.n_vocab > 1 ? (int32_t)(1 + x % (uint64_t)(probe->hp.n_vocab - 1)) : 0;
            }
            pi_model_destroy(&probe);
            status |= bench_model(b, &t, b->models[mi], path, &o, tokens, ctx);
        } else {
            status = 1;
        }
        if (generated && unlink(path) != 0) pi_warn("unlink(%s) failed: %s", path, strerror(errno));
    }
    table_end(&t);
out:
    pi_config_free(&o.cfg);
    free(tokens);
    return status;
}
