/*
 * tests/unit/fuzz-sidecar.c - libFuzzer target for the sidecar reader (model/sidecar.h:
 * pi_sidecar_load and pi_sidecar_load_pred read MODEL.pinfer.gguf, an untrusted file; `make fuzz`,
 * needs clang).
 *
 * A sidecar is bound to one model file by its identity, so the target opens two models' GGUF files
 * once (PI_FUZZ_DATA, tests/data, at build time): the demo model (demo-relu-q4_0.gguf, ReLU: its
 * sidecars carry statistics and predictors) and tiny-llama-q4_0.gguf (SwiGLU: statistics and
 * activation thresholds), and every input is a candidate sidecar of each. Each input is written to a
 * private temporary file (the reader takes a path) and loaded both ways against both models. Whatever the
 * bytes: no read outside the file, no leak, no undefined behaviour (ASan + UBSan); both loads agree;
 * a refusal says why in one line; and a sidecar that is accepted keeps the header's promises (the
 * model's shape, frequencies and histogram shares finite in [0, 1], activation thresholds finite and
 * >= 0 with their sparsities in [0, 1], every layer's predictor of a declared rank and type with
 * finite thresholds, recalls and shares in [0, 1], q8_0 only on multiples of 32) and survives
 * pi_sidecar_save and a second load bit for bit.
 * Seeds, tests/unit/fuzz-sidecar-seeds/, real sidecars under 100 kB, written by the project's tools
 * over the first 20,000 bytes of data/demo-calib.txt (calib.txt), MODEL the demo model:
 *   stats           pi-profile -m MODEL -f calib.txt -c 64 --sidecar stats
 *   stats-pred-f16  stats, then pi-train-predictors -m MODEL -f calib.txt -c 64 --samples 256
 *                   --rank-min 1 --rank-max 1 --epochs 1 --type f16 --sidecar stats-pred-f16
 *   pred-f32        the same with --type f32 into a new file (predictors and that run's statistics)
 *   tiny-thresholds pi-profile -m tiny-llama-q4_0.gguf -f calib.txt -c 64 --sidecar tiny-thresholds
 * Not part of `make check`.
 */
#include "config.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"
#include "model/gguf.h"
#include "model/model.h"
#include "model/sidecar.h"

#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef PI_FUZZ_DATA
#error "PI_FUZZ_DATA (tests/data, where the models the sidecars are made for are) is set by the Makefile"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const model_files[] = {PI_FUZZ_DATA "/demo-relu-q4_0.gguf", PI_FUZZ_DATA "/tiny-llama-q4_0.gguf"};
static struct pi_model models[2];
static const pi_model_t *model; /* the one the current input is being read against */
static char dir[] = "/tmp/pi-fuzz-sidecar.XXXXXX", in_path[64], out_path[64];

static void cleanup(void)
{
    unlink(in_path);
    unlink(out_path);
    rmdir(dir);
}

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz-sidecar: %s:%d: broken: %s\n", __FILE__, __LINE__, #cond);                           \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* The model a sidecar is read against is its file's identity (the GGUF) and three numbers (its
 * shape): model/sidecar.c reads nothing else of a pi_model_t, so the target builds that much from
 * each model's metadata instead of linking the whole model loader and its kernels. */
static int hp(const pi_gguf_t *g, const char *file, const char *key)
{
    uint64_t v = 0;
    if (pi_gguf_get_uint(g, key, &v) != 0 || v == 0 || v > 1u << 20) {
        fprintf(stderr, "fuzz-sidecar: %s: no usable %s\n", file, key);
        abort();
    }
    return (int)v;
}

static void setup(void)
{
    char err[256];
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC); /* the writer logs its failures */
    if (devnull >= 0) pi_log_set_fd(devnull);
    for (size_t i = 0; i < PI_ARRAY_LEN(models); i++) {
        struct pi_model *m = &models[i];
        if (pi_gguf_open(model_files[i], &m->owned_gguf, err, sizeof err) != 0) {
            fprintf(stderr, "fuzz-sidecar: cannot open %s: %s\n", model_files[i], err);
            abort();
        }
        m->gguf = m->owned_gguf;
        m->hp.n_layer = hp(m->gguf, model_files[i], "llama.block_count");
        m->hp.n_ff = hp(m->gguf, model_files[i], "llama.feed_forward_length");
        m->hp.n_embd = hp(m->gguf, model_files[i], "llama.embedding_length");
    }
    if (!mkdtemp(dir)) abort();
    snprintf(in_path, sizeof in_path, "%s/in.pinfer.gguf", dir);
    snprintf(out_path, sizeof out_path, "%s/out.pinfer.gguf", dir);
    atexit(cleanup); /* libFuzzer ends with exit() when its time is up */
}

static void write_file(const char *path, const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    for (size_t off = 0; off < size;) {
        ssize_t w = write(fd, data + off, size - off);
        CHECK(w > 0);
        off += (size_t)w;
    }
    close(fd);
}

/* Bytes of rows rows of n elements of type t (the type and n already checked by the reader). */
static size_t rows_bytes(enum pi_type t, int64_t n, int64_t rows)
{
    uint64_t b = 0;
    CHECK(pi_type_row_bytes(t, (uint64_t)n, &b));
    return (size_t)b * (size_t)rows;
}

static bool in01(float v) { return isfinite(v) && v >= 0.0f && v <= 1.0f; }

/* What pi_sidecar_load promises of a sidecar it accepted (model/sidecar.h). */
static void check_accepted(const struct pi_sidecar *s, bool weights)
{
    const pi_model_t *m = model;
    CHECK(s->n_layer == m->hp.n_layer && s->n_ff == m->hp.n_ff && s->n_embd == m->hp.n_embd);
    for (int i = 0; s->act_freq && i < s->n_layer * s->n_ff; i++) CHECK(in01(s->act_freq[i]));
    CHECK(s->act_hist ? s->n_hist == PI_SIDECAR_HIST_BINS : s->n_hist == 0);
    for (int i = 0; s->act_hist && i < s->n_layer * s->n_hist; i++) CHECK(in01(s->act_hist[i]));
    CHECK(!s->gate_min == !s->gate_sparsity);
    for (int i = 0; s->gate_min && i < s->n_layer * 2 * s->n_ff; i++)
        CHECK(isfinite(s->gate_min[i]) && s->gate_min[i] >= 0.0f);
    for (int i = 0; s->gate_sparsity && i < s->n_layer * 2; i++) CHECK(in01(s->gate_sparsity[i]));
    if (!s->pred) return;
    for (int k = 0; k < 2; k++)
        CHECK(isfinite(s->pred_target[k]) && s->pred_target[k] > 0.0f && s->pred_target[k] <= 1.0f);
    for (int il = 0; il < s->n_layer; il++) {
        const struct pi_sidecar_pred *p = &s->pred[il];
        CHECK(p->rank >= 1 && p->rank <= PI_SIDECAR_PRED_RANK_MAX);
        CHECK(p->type == PI_TYPE_F32 || p->type == PI_TYPE_F16 || p->type == PI_TYPE_Q8_0);
        if (p->type == PI_TYPE_Q8_0) CHECK(s->n_embd % 32 == 0 && p->rank % 32 == 0);
        for (int k = 0; k < 2; k++) CHECK(isfinite(p->threshold[k]) && in01(p->recall[k]));
        for (int k = 0; k < 3; k++) CHECK(in01(p->active[k]));
        if (!weights) {
            CHECK(!p->fc1 && !p->fc2);
            continue;
        }
        /* the weights are the caller's to read in full: touch their first and last bytes */
        const size_t b1 = rows_bytes(p->type, s->n_embd, p->rank), b2 = rows_bytes(p->type, p->rank, s->n_ff);
        CHECK(p->fc1 && p->fc2 && b1 > 0 && b2 > 0);
        volatile uint8_t sink = ((const uint8_t *)p->fc1)[0] ^ ((const uint8_t *)p->fc1)[b1 - 1] ^
                                ((const uint8_t *)p->fc2)[0] ^ ((const uint8_t *)p->fc2)[b2 - 1];
        (void)sink;
    }
}

static bool same_floats(const float *a, const float *b, size_t n)
{
    return (!a && !b) || (a && b && memcmp(a, b, n * sizeof(float)) == 0);
}

/* s (loaded with its weights) saved and loaded again is the same sidecar. */
static void check_round_trip(const struct pi_sidecar *s)
{
    struct pi_sidecar *r = NULL;
    char err[256];
    unlink(out_path); /* a fresh file: pi_sidecar_save carries over what an old one holds */
    CHECK(pi_sidecar_save(out_path, model, s) == 0);
    int rc = pi_sidecar_load_pred(out_path, model, &r, err, sizeof err);
    if (rc != 0) fprintf(stderr, "fuzz-sidecar: a saved sidecar is refused: %s\n", err);
    CHECK(rc == 0 && r);
    CHECK(r->tokens == s->tokens && r->n_hist == s->n_hist);
    CHECK(same_floats(r->act_freq, s->act_freq, (size_t)s->n_layer * (size_t)s->n_ff));
    CHECK(same_floats(r->act_hist, s->act_hist, (size_t)s->n_layer * (size_t)s->n_hist));
    CHECK(same_floats(r->gate_min, s->gate_min, (size_t)s->n_layer * 2 * (size_t)s->n_ff));
    CHECK(same_floats(r->gate_sparsity, s->gate_sparsity, (size_t)s->n_layer * 2));
    CHECK(!r->pred == !s->pred);
    for (int il = 0; s->pred && il < s->n_layer; il++) {
        const struct pi_sidecar_pred *p = &s->pred[il], *q = &r->pred[il];
        CHECK(p->rank == q->rank && p->type == q->type);
        CHECK(memcmp(p->threshold, q->threshold, sizeof p->threshold) == 0 &&
              memcmp(p->recall, q->recall, sizeof p->recall) == 0 &&
              memcmp(p->active, q->active, sizeof p->active) == 0);
        CHECK(memcmp(p->fc1, q->fc1, rows_bytes(p->type, s->n_embd, p->rank)) == 0);
        CHECK(memcmp(p->fc2, q->fc2, rows_bytes(p->type, p->rank, s->n_ff)) == 0);
    }
    pi_sidecar_destroy(&r);
}

/* The input, in in_path, read against model m both ways. */
static void check_against(const pi_model_t *m)
{
    struct pi_sidecar *a = NULL, *b = NULL;
    char ea[256] = "", eb[256] = "";
    model = m;
    int ra = pi_sidecar_load(in_path, model, &a, ea, sizeof ea);
    int rb = pi_sidecar_load_pred(in_path, model, &b, eb, sizeof eb);
    CHECK(ra == rb);
    if (ra != 0) {
        /* refused: a known code, nothing returned, one line saying why */
        CHECK(ra == -PI_ERR_FORMAT || ra == -PI_ERR_NOMEM || ra == -PI_ERR_IO);
        CHECK(!a && !b && ea[0] && !strchr(ea, '\n') && strcmp(ea, eb) == 0);
        return;
    }
    CHECK(a && b);
    check_accepted(a, false);
    check_accepted(b, true);
    CHECK(a->tokens == b->tokens && !a->pred == !b->pred);
    CHECK(same_floats(a->act_freq, b->act_freq, (size_t)a->n_layer * (size_t)a->n_ff));
    check_round_trip(b);
    pi_sidecar_destroy(&a);
    pi_sidecar_destroy(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) setup(), ready = true;
    write_file(in_path, data, size);
    for (size_t i = 0; i < PI_ARRAY_LEN(models); i++) check_against(&models[i]);
    return 0;
}
