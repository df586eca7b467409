/*
 * tests/integration/test-batch.c - batch invariance of the engines (coordinator/engine.h, issue 19):
 * a token's logits are the same bits whether its sequence runs alone or interleaved with others, and
 * whatever the split of its prompt into batches. For the in-process engine (`--gpu-backend none`) and
 * the pipeline with the host backend and one CPU worker at hot fractions 0, 0.5 and 1 (real
 * pi-gpu-worker and pi-cpu-worker processes in a private run directory, under a hard timeout), over
 * the ReLU demo model and a SwiGLU model (fixtures demo-silu; the tiny llama where the fixtures are
 * absent), the SwiGLU model also in process with random activation thresholds:
 *   1. each of 4 random token sequences evaluated alone in one batch gives the reference logits; then
 *      twice, all four interleaved in random batches (random chunk of each sequence per batch, rows
 *      merged in random order, all rows or a random subset of rows asked for; a quarter of the batches
 *      a single token) must give, for every row returned, the reference's bits (memcmp);
 *   2. prefix reuse: seq_truncate of a sequence to a random prefix, then a new random suffix in random
 *      chunks, equals that prefix plus suffix evaluated afresh in another slot, bit for bit;
 *   3. a batch that breaks the rules (a sequence id past n_seq, a position gap in one of two sequences,
 *      rows not increasing) is refused with -PI_ERR_RANGE / -PI_ERR_INVAL and changes nothing: the
 *      sequences start at position 0 afterwards; a truncate past a sequence's length is refused.
 * The tokens and chunkings are fresh every run; the seed is printed and `test-batch SEED` replays it.
 */
#include "config.h"
#include "coordinator/coordinator.h"
#include "coordinator/engine.h"
#include "coordinator/options.h"
#include "compute/sparse.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "tests/test-pipeline-util.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NSEQ 4
#define CTX 64
#define MAXL 40 /* reference prompts are one batch: MAXL <= max_batch */

static struct pi_rng rng;

static int rnd(int n) { return (int)pi_rng_below(&rng, (uint64_t)n); }

struct seqs {
    int len[NSEQ];
    int32_t tok[NSEQ][CTX];
    float *ref[NSEQ]; /* (len, n_vocab): each sequence alone, one batch */
};

/* Evaluate rows (n) of one sequence q at positions p0.. in one batch, every row's logits into out. */
static int eval_alone(pi_engine_t *e, int q, const int32_t *tok, int p0, int n, float *out)
{
    int32_t seq[CTX], pos[CTX], rows[CTX];
    for (int i = 0; i < n; i++) seq[i] = q, pos[i] = p0 + i, rows[i] = i;
    return e->ops->eval(e, tok, seq, pos, n, rows, n, out);
}

/* One interleaved run over every sequence from position `from[q]` to its length, in random batches;
 * each row returned is compared with want[q] row (position). Returns the rows that differ (-1 on an
 * engine error). *n_batches and *n_rows count what ran. */
static int interleaved(pi_engine_t *e, const struct seqs *S, float *const *want, const int *from, float *lg,
                       int *n_batches, int *n_rows)
{
    const size_t V = (size_t)e->n_vocab;
    int next[NSEQ], bad = 0;
    memcpy(next, from, sizeof next);
    for (;;) {
        /* a chunk of each sequence with tokens left, some sequences left out at random */
        int take[NSEQ] = {0}, total = 0, left = 0;
        for (int q = 0; q < NSEQ; q++) left += S->len[q] - next[q];
        if (left == 0) break;
        const bool decode = rnd(4) == 0; /* a batch of one token, as a lone decode step is */
        for (int q = 0; q < NSEQ && !(decode && total); q++) {
            const int rest = S->len[q] - next[q];
            if (rest == 0 || (rnd(3) == 0 && total > 0)) continue;
            if (decode) {
                take[q] = total = 1;
                continue;
            }
            int c = rnd(4) == 0 ? rest : 1 + rnd(PI_MIN(rest, 9));
            c = PI_MIN(c, e->max_batch - total);
            take[q] = c;
            total += c;
        }
        if (total == 0) { /* every sequence was skipped: take one token of the first with some left */
            for (int q = 0; q < NSEQ && !total; q++)
                if (S->len[q] > next[q]) take[q] = total = 1;
        }
        /* merge the chunks in a random order, each sequence's own order kept */
        int32_t tok[CTX * NSEQ], seq[CTX * NSEQ], pos[CTX * NSEQ], rows[CTX * NSEQ];
        int used[NSEQ] = {0}, nr = 0;
        for (int i = 0; i < total; i++) {
            int pick = rnd(total - i), q = 0;
            for (; q < NSEQ; q++) { /* the pick-th remaining token */
                if (pick < take[q] - used[q]) break;
                pick -= take[q] - used[q];
            }
            seq[i] = q;
            pos[i] = next[q] + used[q];
            tok[i] = S->tok[q][pos[i]];
            used[q]++;
        }
        const bool all = rnd(2) == 0;
        for (int i = 0; i < total; i++)
            if (all || rnd(2) == 0) rows[nr++] = i;
        if (e->ops->eval(e, tok, seq, pos, total, nr ? rows : NULL, nr, nr ? lg : NULL) != 0) return -1;
        for (int k = 0; k < nr; k++) {
            const int i = rows[k];
            if (memcmp(lg + (size_t)k * V, want[seq[i]] + (size_t)pos[i] * V, V * sizeof *lg) != 0) {
                if (bad++ < 3)
                    tap_diag("sequence %d position %d (batch row %d of %d) differs from alone", seq[i], pos[i], i,
                             total);
            }
        }
        for (int q = 0; q < NSEQ; q++) next[q] += take[q];
        (*n_batches)++;
        *n_rows += nr;
    }
    return bad;
}

/* The refusals: nothing changes (checked by the run that follows, which starts every sequence at 0). */
static void refusals(pi_engine_t *e, const char *what)
{
    int32_t tok[3] = {1, 2, 3}, seq[3] = {0, 1, 1}, pos[3] = {0, 0, 1}, rows[2] = {1, 0};
    int32_t bad_seq[3] = {0, NSEQ, 1}, gap[3] = {0, 0, 2};
    float *lg = malloc((size_t)3 * (size_t)e->n_vocab * sizeof *lg);
    if (!lg) tap_bail("malloc");
    int r1 = e->ops->eval(e, tok, bad_seq, pos, 3, rows + 1, 1, lg);
    int r2 = e->ops->eval(e, tok, seq, gap, 3, rows + 1, 1, lg);
    int r3 = e->ops->eval(e, tok, seq, pos, 3, rows, 2, lg);
    int32_t late[3] = {0, 5, 6}; /* sequence 0 fine, sequence 1 not at its length (0) */
    int r4 = e->ops->eval(e, tok, seq, late, 3, rows + 1, 1, lg);
    tap_ok(r1 == -PI_ERR_RANGE && r2 == -PI_ERR_RANGE && r3 == -PI_ERR_INVAL && r4 == -PI_ERR_RANGE,
           "%s: a sequence id past n_seq, a position gap, rows not increasing and a sequence not at its length are "
           "refused (%d %d %d %d)",
           what, r1, r2, r3, r4);
    free(lg);
}

static void run_engine(pi_engine_t *e, const char *what)
{
    const size_t V = (size_t)e->n_vocab;
    struct seqs S;
    for (int q = 0; q < NSEQ; q++) {
        S.len[q] = 6 + rnd(MAXL - 6 + 1);
        for (int i = 0; i < CTX; i++) S.tok[q][i] = 1 + rnd(e->n_vocab - 1);
        S.ref[q] = malloc((size_t)CTX * V * sizeof(float));
        if (!S.ref[q]) tap_bail("malloc");
    }
    float *lg = malloc((size_t)e->max_batch * V * sizeof *lg), *fresh = malloc((size_t)CTX * V * sizeof *fresh);
    if (!lg || !fresh) tap_bail("malloc");
    /* 1. references: each sequence alone, in one batch, in its own slot */
    int rc = e->ops->reset(e);
    for (int q = 0; rc == 0 && q < NSEQ; q++) rc = eval_alone(e, q, S.tok[q], 0, S.len[q], S.ref[q]);
    tap_ok(rc == 0 && e->n_seq == NSEQ, "%s: %d sequences of %d, %d, %d, %d tokens evaluated alone (%d)", what, NSEQ,
           S.len[0], S.len[1], S.len[2], S.len[3], rc);
    /* 3. the refusals, then 1. the interleaved runs from a reset */
    rc = e->ops->reset(e);
    refusals(e, what);
    const int zero[NSEQ] = {0};
    for (int round = 0; round < 2; round++) {
        int nb = 0, nr = 0;
        if (round > 0) rc = e->ops->reset(e);
        int bad = rc == 0 ? interleaved(e, &S, S.ref, zero, lg, &nb, &nr) : -1;
        tap_ok(bad == 0,
               "%s: interleaved in %d random batches, %d logits rows: each the bits of its sequence alone (%d differ)",
               what, nb, nr, bad);
    }
    /* 2. prefix reuse: truncate sequence q to k, a new suffix in random chunks beside nothing else; the
     * reference is prefix + suffix evaluated afresh in slot r */
    const int q = rnd(NSEQ), r = (q + 1) % NSEQ, k = rnd(S.len[q]);
    tap_ok(e->ops->seq_truncate(e, q, S.len[q] + 1) != 0, "%s: truncating sequence %d past its length (%d) is refused",
           what, q, S.len[q]);
    rc = e->ops->seq_truncate(e, q, k);
    const int l2 = 1 + rnd(PI_MIN(CTX, e->max_batch) - k);
    for (int i = k; i < k + l2; i++) S.tok[q][i] = 1 + rnd(e->n_vocab - 1);
    S.len[q] = k + l2;
    int from[NSEQ];
    float *want[NSEQ];
    for (int t = 0; t < NSEQ; t++) from[t] = S.len[t], want[t] = fresh; /* only q has tokens left */
    from[q] = k;
    if (rc == 0) rc = e->ops->seq_truncate(e, r, 0);
    if (rc == 0) rc = eval_alone(e, r, S.tok[q], 0, k + l2, fresh);
    int nb = 0, nr = 0;
    int bad = rc == 0 ? interleaved(e, &S, want, from, lg, &nb, &nr) : -1;
    tap_ok(bad == 0,
           "%s: sequence %d truncated to %d, %d new tokens in %d batches: the bits of a fresh evaluation (%d differ, "
           "rc %d)",
           what, q, k, l2, nb, bad, rc);
    for (int t = 0; t < NSEQ; t++) free(S.ref[t]);
    free(lg);
    free(fresh);
}

/* The checks on one engine of configuration (backend, hot) over model path. */
static void one(const char *path, const char *label, enum pi_gpu_backend be, double hot)
{
    struct pi_coord_opts o;
    memset(&o, 0, sizeof o);
    char what[128], run[300];
    if (be == PI_GPU_NONE) snprintf(what, sizeof what, "%s, in-process", label);
    else snprintf(what, sizeof what, "%s, host pipeline at hot %.1f", label, hot);
    snprintf(run, sizeof run, "%s/run", tp_dir);
    if (pi_config_defaults(&o.cfg) != 0) tap_bail("config defaults");
    free(o.cfg.model_path);
    free(o.cfg.run_dir);
    o.cfg.model_path = strdup(path);
    o.cfg.run_dir = strdup(run);
    o.cfg.gpu_backend = be;
    o.cfg.hot_fraction = hot;
    o.cfg.cpu_workers = 1;
    o.cfg.cpu_threads = be == PI_GPU_NONE ? 2 : 1;
    o.cfg.ctx_len = CTX;
    o.cfg.sparsity.mode = PI_SPARSITY_CFG_OFF;
    o.n_seq = NSEQ;
    struct pi_coord_model cm;
    pi_engine_t *e = NULL;
    if (!o.cfg.model_path || !o.cfg.run_dir || pi_coord_model_open(&o, be == PI_GPU_NONE, &cm) != 0)
        tap_bail("open %s", path);
    e = pi_coord_engine_new(&o, &cm, "test-batch");
    tap_ok(e != NULL, "%s: the engine starts", what);
    if (e) run_engine(e, what);
    pi_engine_destroy(&e);
    pi_coord_model_close(&cm);
    pi_coord_opts_free(&o);
}

/* The in-process engine of a SwiGLU model with activation thresholds (doc/thresholds.md): random ones
 * here, 0 to 0.2 per neuron, which skip a share of the neurons; the dense form zeroes them per row. */
static void one_gated(const char *path, const char *label)
{
    struct pi_coord_opts o;
    memset(&o, 0, sizeof o);
    if (pi_config_defaults(&o.cfg) != 0) tap_bail("config defaults");
    free(o.cfg.model_path);
    o.cfg.model_path = strdup(path);
    o.cfg.sparsity.mode = PI_SPARSITY_CFG_OFF;
    struct pi_coord_model cm;
    if (!o.cfg.model_path || pi_coord_model_open(&o, true, &cm) != 0) tap_bail("open %s", path);
    const size_t nt = (size_t)cm.model->hp.n_layer * (size_t)cm.model->hp.n_ff;
    float *gm = malloc(nt * sizeof *gm);
    if (!gm) tap_bail("malloc");
    for (size_t i = 0; i < nt; i++) gm[i] = 0.2f * (float)pi_rng_uniform(&rng);
    cm.gate_min = gm; /* pi_coord_model_close frees it */
    char what[128];
    snprintf(what, sizeof what, "%s, in-process with activation thresholds", label);
    pi_engine_t *e = pi_engine_local_new(cm.model, 2, CTX, NSEQ, 0, &cm.pred, gm, PI_SPARSITY_SAFE, 0);
    tap_ok(e != NULL, "%s: the engine starts", what);
    if (e) run_engine(e, what);
    /* the thresholds must have skipped something, or the check above said nothing about them */
    struct pi_sparse_stats st;
    uint64_t kept = 0, pairs = 0;
    if (e && pi_sparse_stats_init(&st, cm.model) == 0) {
        pi_sparse_stats_gated(&st, cm.model);
        if (pi_engine_sparse_stats(e, &st) == 0)
            for (int il = 0; il < st.n_layer; il++) kept += st.layers[il].predicted, pairs += st.layers[il].pairs;
        pi_sparse_stats_free(&st);
    }
    tap_ok(pairs > 0 && kept < pairs && kept > pairs / 4,
           "%s: the thresholds skipped %.1f%% of the (token, neuron) pairs", what,
           pairs ? 100.0 * (double)(pairs - kept) / (double)pairs : 0.0);
    pi_engine_destroy(&e);
    pi_coord_model_close(&cm);
    pi_coord_opts_free(&o);
}

static void model(const char *path, const char *label, bool swiglu)
{
    one(path, label, PI_GPU_NONE, 0);
    if (swiglu) one_gated(path, label);
    static const double hots[] = {0.0, 0.5, 1.0};
    for (int h = 0; h < 3; h++) one(path, label, PI_GPU_HOST, hots[h]);
}

int main(int argc, char **argv)
{
    const uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : pi_rng_entropy_seed();
    pi_rng_seed(&rng, seed);
    tap_diag("seed %llu (replay: test-batch %llu)", (unsigned long long)seed, (unsigned long long)seed);
    tp_guard(600);
    tp_mkdir("test-batch");
    pi_log_set_level(PI_LOG_ERROR);
    /* the pipeline finds its workers beside the program or in PI_WORKER_DIR: this test's binary lives
     * in tests/integration, so the build tree's two workers are linked into one directory */
    char wd[300], src[600], dst[600];
    snprintf(wd, sizeof wd, "%s/workers", tp_dir);
    if (mkdir(wd, 0700) != 0) tap_bail("mkdir %s", wd);
    static const char *const progs[][2] = {{"gpu-worker/pi-gpu-worker", "pi-gpu-worker"},
                                           {"cpu-worker/pi-cpu-worker", "pi-cpu-worker"}};
    for (int i = 0; i < 2; i++) {
        tp_prog(src, sizeof src, progs[i][0]);
        snprintf(dst, sizeof dst, "%s/%s", wd, progs[i][1]);
        char abs[PATH_MAX];
        if (!realpath(src, abs) || symlink(abs, dst) != 0) tap_bail("link %s", src);
    }
    setenv("PI_WORKER_DIR", wd, 1);
    char path[512];
    model(tap_data(path, sizeof path, "demo-relu-q4_0.gguf"), "demo ReLU", false);
    if (tap_fixture(path, sizeof path, "demo-silu/demo-silu-q4_0.gguf")) model(path, "demo SwiGLU", true);
    else model(tap_data(path, sizeof path, "tiny-llama-q4_0.gguf"), "tiny SwiGLU (no fixtures)", true);
    return tap_done();
}
