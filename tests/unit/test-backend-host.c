/*
 * tests/unit/test-backend-host.c - the host backend of pi-gpu-worker (compute/backend-host.c) through
 * the backend interface (compute/backend.h), in every build: with or without CUDA it is the backend
 * that CI runs and the reference the cuda backend is held to.
 *
 * The test drives the backend as pi-gpu-worker's loop does (begin, then per layer attn, ffn_input,
 * ffn_hot, ffn_merge with the cold neurons' partial sums computed here by pi_ffn_neurons as a CPU
 * worker would, then output and commit) on the demo ReLU model and the tiny SiLU llama (tests/data),
 * against their golden logits (HF transformers, float64, same weights), for:
 *   - a fresh random split of every layer's neurons at hot fraction 0, 0.5 and 1 (hot ids in random
 *     order, the model's own transposed down rows), and hot 1 with the ids in order;
 *   - the hot set as pi-gpu-worker builds it: ids 0..k-1 for a random k, the model opened without
 *     transposed down rows, the hot rows packed by pi_partition_pack_range (views, dense blocks);
 * each as the golden prompt in one batch, token-by-token decode on a second sequence, both sequences
 * truncated and continued interleaved in one batch, a position gap refused, and the prompt evaluated
 * again on a truncated sequence giving the same logits bit for bit (one thread: a request's result
 * must not depend on the requests before it). Then a SwiGLU model's activation thresholds on the hot
 * neurons (check_gated: the demo SwiGLU fixture where $PI_FIXTURES has it, and the tiny llama): each of
 * the backend's paths against the single process or the CPU's neuron kernel with the same thresholds,
 * and the pairs it reports skipped (ffn_hot_skipped). And the interface's own rules: pi_backend_check,
 * pi_backend_hot_rows, pi_backend_device_bytes, unknown names, a batch larger than max_tokens.
 *
 * Tolerance (relative error of a logits row, worst row): the single-process forward pass's bound for
 * each model (tests/unit/test-forward.c): Q4_0 weights and activations rounded to 8 bits, which the
 * random weights of the tiny llama amplify (4.1e-2 demo, 8.6e-2 tiny llama; measured here at most
 * 2.7e-2 and 5.7e-2).
 */
#include "config.h"
#include "compute/backend.h"
#include "compute/forward.h"
#include "compute/partition.h"
#include "compute/sparse.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"
#include "lib/common.h"
#include "tests/test-pipeline-util.h"
#include "tests/test-thresholds-util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define T_MAX 64
#define N_CTX 128

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* One configuration: which neurons are hot, and what the backend is given for them. */
struct setup {
    const pi_model_t *m;      /* the model the backend sees */
    const pi_model_t *m_cpu;  /* the model the cold neurons are computed from (with ffn_down_t) */
    int32_t **hot, **cold;    /* (n_layer) ids, hot in the order the backend gets them */
    int64_t *n_hot, *n_cold;  /* (n_layer) */
    struct pi_partition part; /* the packed hot rows (packed configurations only) */
    bool packed;
    bool no_part;         /* packed rows without their partition (hot_part NULL): neuron by neuron */
    const float *gm_full; /* (n_layer, n_ff) activation thresholds by neuron id, or NULL (check_gated) */
    bool cold_dense;      /* the cold neurons (ids n_hot[il]..n_ff-1) as a dense packed slice, cpart */
    struct pi_partition cpart;
    float *cold_scr;   /* pi_partition_dense_scratch(cpart, T_MAX) */
    float **gm_hot;    /* (n_layer) -> (n_hot[il]): the same in the order of hot[il], the backend's */
    int64_t cold_kept; /* with gm_full: the cold (token, neuron) pairs computed, and all of them */
    int64_t cold_pairs;
    pi_backend_t *be;
    pi_pool_t *pool; /* the "CPU worker's" threads */
    pi_ffn_work_t *work;
    float *x, *cold_sum; /* (T_MAX, n_embd) */
};

/* Hot neurons: the first frac of a random permutation of each layer's ids (shuffled) or of the ids in
 * order. */
static void split(struct setup *s, double frac, bool shuffled)
{
    const int L = s->m->hp.n_layer, nf = (int)s->m->hp.n_ff;
    s->hot = calloc((size_t)L, sizeof *s->hot);
    s->cold = calloc((size_t)L, sizeof *s->cold);
    s->n_hot = calloc((size_t)L, sizeof *s->n_hot);
    s->n_cold = calloc((size_t)L, sizeof *s->n_cold);
    PI_ASSERT(s->hot && s->cold && s->n_hot && s->n_cold);
    for (int il = 0; il < L; il++) {
        int32_t *perm = malloc((size_t)nf * sizeof *perm);
        PI_ASSERT(perm);
        for (int i = 0; i < nf; i++) perm[i] = i;
        for (int i = nf - 1; shuffled && i > 0; i--) {
            const int j = (int)(rnd() % (uint64_t)(i + 1));
            const int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        const int64_t k = (int64_t)(frac * nf + 0.5);
        s->hot[il] = perm;
        s->n_hot[il] = k;
        s->cold[il] = perm + k;
        s->n_cold[il] = nf - k;
    }
}

static int setup_backend(struct setup *s, int n_threads)
{
    struct pi_backend_opts o = {.n_threads = n_threads,
                                .n_ctx = N_CTX,
                                .n_seq = 2,
                                .max_tokens = T_MAX,
                                .hot = (const int32_t *const *)s->hot,
                                .n_hot = s->n_hot};
    if (s->packed) {
        o.hot_layers = s->part.layers;
        o.hot_part = s->no_part ? NULL : &s->part;
    }
    if (s->gm_full) { /* the worker's packing of the thresholds: gpu-worker/main.c */
        const int64_t nf = s->m->hp.n_ff;
        s->gm_hot = calloc((size_t)s->m->hp.n_layer, sizeof *s->gm_hot);
        PI_ASSERT(s->gm_hot);
        for (int il = 0; il < s->m->hp.n_layer; il++) {
            s->gm_hot[il] = malloc((size_t)PI_MAX(s->n_hot[il], 1) * sizeof(float));
            PI_ASSERT(s->gm_hot[il]);
            for (int64_t i = 0; i < s->n_hot[il]; i++) s->gm_hot[il][i] = s->gm_full[(size_t)il * nf + s->hot[il][i]];
        }
        o.thresholds = true;
        o.gate_min = (const float *const *)s->gm_hot;
    }
    if (s->cold_dense) {
        s->cold_scr = malloc(pi_partition_dense_scratch(&s->cpart, T_MAX) * sizeof(float));
        PI_ASSERT(s->cold_scr);
    }
    const int d = (int)s->m->hp.n_embd;
    s->pool = pi_pool_new(n_threads);
    s->work = pi_ffn_work_new(d, n_threads);
    s->x = malloc((size_t)T_MAX * (size_t)d * sizeof(float));
    s->cold_sum = malloc((size_t)T_MAX * (size_t)d * sizeof(float));
    PI_ASSERT(s->pool && s->work && s->x && s->cold_sum);
    return pi_backend_new("host", s->m, &o, &s->be);
}

static void setup_free(struct setup *s)
{
    pi_backend_destroy(&s->be);
    pi_pool_destroy(&s->pool);
    pi_ffn_work_destroy(&s->work);
    if (s->packed) pi_partition_free(&s->part);
    if (s->cold_dense) pi_partition_free(&s->cpart);
    free(s->cold_scr);
    for (int il = 0; s->gm_hot && il < s->m->hp.n_layer; il++) free(s->gm_hot[il]);
    free(s->gm_hot);
    for (int il = 0; s->hot && il < s->m->hp.n_layer; il++) free(s->hot[il]);
    free(s->hot), free(s->cold), free(s->n_hot), free(s->n_cold), free(s->x), free(s->cold_sum);
    memset(s, 0, sizeof *s);
}

/* One batch through the backend, the cold neurons computed here. 0 or the first error. */
static int step(struct setup *s, const int32_t *tok, const int32_t *seq, const int32_t *pos, int n, int n_out,
                float *logits)
{
    pi_backend_t *be = s->be;
    const int d = (int)s->m->hp.n_embd;
    int rc = be->ops->begin(be, tok, seq, pos, n);
    for (int il = 0; rc == 0 && il < s->m->hp.n_layer; il++) {
        const int64_t nc = s->n_cold[il];
        rc = be->ops->attn(be, il);
        if (rc == 0) rc = be->ops->ffn_input(be, il, s->x);
        if (rc == 0) rc = be->ops->ffn_hot(be, il);
        if (rc != 0) break;
        memset(s->cold_sum, 0, (size_t)n * (size_t)d * sizeof(float));
        /* the model's rows: neuron j's threshold at [j] of the layer's */
        const float *gm = s->gm_full ? s->gm_full + (size_t)il * (size_t)s->m->hp.n_ff : NULL;
        if (s->cold_dense && nc > 0) { /* a CPU worker's dense slice; its rows are ids n_hot.. in order */
            PI_ASSERT(s->cpart.count[il] == nc && s->cpart.ids[il][0] == s->n_hot[il]);
            s->cold_kept += pi_partition_ffn_dense_gated(s->pool, &s->cpart, il, s->m_cpu->hp.act, gm + s->n_hot[il],
                                                         s->x, n, s->cold_scr, s->cold_sum);
        }
        for (int t = 0; !s->cold_dense && t < n && nc > 0; t++)
            s->cold_kept += pi_ffn_neurons(s->pool, s->work, &s->m_cpu->layers[il], s->m_cpu->hp.act, gm,
                                           s->x + (size_t)t * d, s->cold[il], nc, s->cold_sum + (size_t)t * d);
        s->cold_pairs += (int64_t)n * nc;
        rc = be->ops->ffn_merge(be, il, nc > 0 ? s->cold_sum : NULL);
    }
    if (rc == 0) rc = be->ops->output(be, n_out, logits);
    if (rc == 0) be->ops->commit(be);
    return rc;
}

/* Worst relative error of rows[i] (width w) against the golden rows ref_rows[i]. */
static double rows_err(const float *a, const float *ref, const int *ref_rows, int n, int w)
{
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        const double e = tp_rel_err(a + (size_t)i * w, ref + (size_t)ref_rows[i] * w, 1, w);
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

/* The checks of one configuration against the golden file. */
static void check_setup(struct setup *s, const struct tp_golden *gd, double tol, const char *label)
{
    const int n = gd->n, V = gd->n_vocab;
    PI_ASSERT(n >= 4 && n <= T_MAX && V == s->m->hp.n_vocab);
    pi_backend_t *be = s->be;
    int32_t seq0[T_MAX] = {0}, pos[T_MAX];
    int rows[T_MAX];
    for (int i = 0; i < n; i++) pos[i] = i, rows[i] = i;
    float *lp = malloc((size_t)T_MAX * V * sizeof(float)), *ld = malloc((size_t)T_MAX * V * sizeof(float));
    PI_ASSERT(lp && ld);

    int counts_ok = be->ops->ffn_hot_count != NULL;
    for (int il = 0; counts_ok && il < s->m->hp.n_layer; il++)
        counts_ok = be->ops->ffn_hot_count(be, il) == s->n_hot[il];
    tap_ok(counts_ok, "%s: ffn_hot_count gives each layer's hot count (%lld in layer 0)", label,
           (long long)s->n_hot[0]);

    int rc = step(s, gd->tokens, seq0, pos, n, n, lp);
    const double ep = rc == 0 ? rows_err(lp, gd->logits, rows, n, V) : INFINITY;
    tap_ok(rc == 0 && ep <= tol && be->ops->seq_len(be, 0) == n,
           "%s: the prompt in one batch of %d: vs golden %.3g (<= %.1e)", label, n, ep, tol);

    int ok = 1;
    for (int t = 0; t < n && ok; t++) {
        const int32_t s1 = 1;
        ok = step(s, gd->tokens + t, &s1, &pos[t], 1, 1, ld + (size_t)t * V) == 0;
    }
    const double ed = ok ? rows_err(ld, gd->logits, rows, n, V) : INFINITY;
    tap_ok(ok && ed <= tol && be->ops->seq_len(be, 1) == n,
           "%s: token-by-token decode of %d on a second sequence: vs golden %.3g", label, n, ed);

    /* both sequences cut to k, the rest fed interleaved: seq 0, seq 1, seq 0, ... */
    const int k = 1 + (int)(rnd() % (uint64_t)(n - 2)), m2 = PI_MIN(n - k, T_MAX / 2);
    int32_t tok2[T_MAX], sq2[T_MAX], ps2[T_MAX];
    int rw2[T_MAX];
    for (int i = 0; i < m2; i++)
        for (int q = 0; q < 2; q++) {
            tok2[2 * i + q] = gd->tokens[k + i];
            sq2[2 * i + q] = q;
            ps2[2 * i + q] = k + i;
            rw2[2 * i + q] = k + i;
        }
    rc = be->ops->seq_truncate(be, 0, k);
    if (rc == 0) rc = be->ops->seq_truncate(be, 1, k);
    const bool cut = rc == 0 && be->ops->seq_len(be, 0) == k && be->ops->seq_len(be, 1) == k;
    if (rc == 0) rc = step(s, tok2, sq2, ps2, 2 * m2, 2 * m2, ld);
    const double ei = rc == 0 ? rows_err(ld, gd->logits, rw2, 2 * m2, V) : INFINITY;
    tap_ok(cut && rc == 0 && ei <= tol,
           "%s: both sequences cut to %d, then continued interleaved in one batch of %d: vs golden %.3g", label, k,
           2 * m2, ei);

    const int32_t gap = k + m2 + 1 + (int32_t)(rnd() % 5), s0 = 0;
    const int len0 = be->ops->seq_len(be, 0);
    tap_ok(be->ops->begin(be, gd->tokens, &s0, &gap, 1) == -PI_ERR_RANGE && be->ops->seq_len(be, 0) == len0,
           "%s: position %d after %d cached is refused, the cache unchanged", label, gap, len0);
    int32_t many_tok[T_MAX + 1] = {0}, many_seq[T_MAX + 1] = {0}, many_pos[T_MAX + 1];
    for (int i = 0; i <= T_MAX; i++) many_pos[i] = i;
    tap_ok(be->ops->begin(be, many_tok, many_seq, many_pos, T_MAX + 1) == -PI_ERR_RANGE,
           "%s: a batch of max_tokens + 1 is refused", label);
    free(lp);
    free(ld);
}

/* The prompt twice on sequence 0, truncated to 0 in between: the same logits, bit for bit. */
static void check_repeat(struct setup *s, const struct tp_golden *gd, const char *label)
{
    const int n = gd->n, V = gd->n_vocab;
    int32_t seq0[T_MAX] = {0}, pos[T_MAX];
    for (int i = 0; i < n; i++) pos[i] = i;
    float *a = malloc((size_t)n * V * sizeof(float)), *b = malloc((size_t)n * V * sizeof(float));
    PI_ASSERT(a && b);
    int rc = step(s, gd->tokens, seq0, pos, n, n, a);
    if (rc == 0) rc = s->be->ops->seq_truncate(s->be, 0, 0);
    if (rc == 0) rc = step(s, gd->tokens, seq0, pos, n, n, b);
    tap_ok(rc == 0 && memcmp(a, b, (size_t)n * V * sizeof(float)) == 0,
           "%s: the prompt again after truncating to 0 gives the same logits bit for bit (one thread)", label);
    free(a);
    free(b);
}

static void check_model(const char *file, const char *golden, double tol)
{
    char path[1024], gpath[1024], err[256];
    tap_data(path, sizeof path, file);
    tap_data(gpath, sizeof gpath, golden);
    struct tp_golden gd;
    pi_model_t *m = NULL, *m_packed = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    if (pi_model_open(path, &mo, &m, err, sizeof err) != 0) tap_bail("%s: %s", file, err);
    mo.no_down_t = true; /* as pi-gpu-worker opens it for a partial hot set */
    if (pi_model_open(path, &mo, &m_packed, err, sizeof err) != 0) tap_bail("%s: %s", file, err);
    if (tp_golden_open(gpath, &gd) != 0) tap_bail("%s", golden);
    const int64_t nf = m->hp.n_ff;

    {
        struct pi_placement *p0 = NULL, *ps = NULL, *pa = NULL;
        const int L = m->hp.n_layer;
        PI_ASSERT(pi_placement_prefix(L, (int)nf, 1, 0, &p0) == 0 &&
                  pi_placement_prefix(L, (int)nf, 1, 1 + (int64_t)(rnd() % (uint64_t)(nf - 1)), &ps) == 0 &&
                  pi_placement_prefix(L, (int)nf, 1, nf, &pa) == 0);
        tap_ok(pi_backend_hot_rows("host", m, p0) == PI_BACKEND_ROWS_NONE &&
                   pi_backend_hot_rows("host", m, ps) == PI_BACKEND_ROWS_PACKED &&
                   pi_backend_hot_rows("host", m, pa) == PI_BACKEND_ROWS_MODEL,
               "%s: the host backend needs no rows for 0 hot, packed rows for some, the model's for all", file);
        pi_placement_destroy(&p0), pi_placement_destroy(&ps), pi_placement_destroy(&pa);
    }

    static const double fracs[] = {0.0, 0.5, 1.0, 1.0};
    static const bool shuffled[] = {true, true, true, false};
    char label[160];
    for (size_t i = 0; i < PI_ARRAY_LEN(fracs); i++) {
        struct setup s = {.m = m, .m_cpu = m};
        split(&s, fracs[i], shuffled[i]);
        snprintf(label, sizeof label, "%s, hot %.1f%s", file, fracs[i],
                 shuffled[i] ? " (random ids)" : " (ids in order)");
        int rc = setup_backend(&s, 2);
        if (rc != 0) tap_ok(0, "%s: backend created (%s)", label, pi_err_str(rc));
        else check_setup(&s, &gd, tol, label);
        setup_free(&s);
    }

    /* as pi-gpu-worker: ids 0..k-1, packed rows over a model without its own ffn_down_t */
    const double frac = 0.1 + 0.8 * (double)(rnd() % 1000) / 1000.0;
    struct setup s = {.m = m_packed, .m_cpu = m, .packed = true};
    split(&s, frac, false);
    const int64_t k = s.n_hot[0];
    snprintf(label, sizeof label, "%s, hot 0..%lld packed as pi-gpu-worker packs them", file, (long long)k - 1);
    int rc = pi_partition_pack_range(m_packed, 0, k, -1, true, false, &s.part);
    if (rc == 0) rc = setup_backend(&s, 2);
    if (rc != 0) tap_ok(0, "%s: packed and created (%s)", label, pi_err_str(rc));
    else check_setup(&s, &gd, tol, label);
    setup_free(&s);

    /* one thread, random split: a request does not depend on the ones before it */
    s = (struct setup){.m = m, .m_cpu = m};
    split(&s, 0.5, true);
    snprintf(label, sizeof label, "%s, hot 0.5", file);
    if (setup_backend(&s, 1) != 0) tap_ok(0, "%s: backend created", label);
    else check_repeat(&s, &gd, label);
    setup_free(&s);

    pi_gguf_destroy(&gd.g);
    pi_model_destroy(&m_packed);
    pi_model_destroy(&m);
}

/* ---- activation thresholds (issue 18, doc/thresholds.md) */

/* The result of one run under thresholds: the prompt's logits, token-by-token decode's on a second
 * sequence, and the (token, neuron) pairs skipped over both. */
struct gated_run {
    float *lp, *ld; /* (n, n_vocab) each */
    int64_t skipped, pairs;
    int64_t hot_skipped, hot_pairs;
    bool cleared; /* a second ffn_hot_skipped read 0 */
    int rc;
};

/* Run configuration s (its cold neurons computed here, neuron by neuron or, with cold_dense, densely as a
 * CPU worker computes its packed slice) over tok. */
static void gated_run(struct setup *s, const int32_t *tok, int n, struct gated_run *r)
{
    const int V = s->m->hp.n_vocab, L = s->m->hp.n_layer;
    int32_t seq0[T_MAX] = {0}, pos[T_MAX];
    for (int i = 0; i < n; i++) pos[i] = i;
    r->lp = malloc((size_t)n * V * sizeof(float)), r->ld = malloc((size_t)n * V * sizeof(float));
    int64_t *sk = calloc((size_t)L, sizeof *sk);
    PI_ASSERT(r->lp && r->ld && sk);
    r->rc = step(s, tok, seq0, pos, n, n, r->lp);
    for (int t = 0; r->rc == 0 && t < n; t++) {
        const int32_t s1 = 1;
        r->rc = step(s, tok + t, &s1, &pos[t], 1, 1, r->ld + (size_t)t * V);
    }
    if (r->rc == 0) r->rc = s->be->ops->ffn_hot_skipped(s->be, sk);
    r->hot_skipped = r->hot_pairs = 0;
    for (int il = 0; il < L; il++) r->hot_skipped += sk[il], r->hot_pairs += 2 * (int64_t)n * s->n_hot[il];
    r->skipped = r->hot_skipped + s->cold_pairs - s->cold_kept;
    r->pairs = r->hot_pairs + s->cold_pairs;
    r->cleared = r->rc == 0 && s->be->ops->ffn_hot_skipped(s->be, sk) == 0;
    for (int il = 0; il < L; il++) r->cleared &= sk[il] == 0;
    free(sk);
}

static void gated_free(struct gated_run *r)
{
    free(r->lp), free(r->ld);
    memset(r, 0, sizeof *r);
}

/* A configuration against a reference computed the same way (the same path for every neuron, so that each
 * pair's gate, and with it the rule's decision, has the same bits; a (token, neuron) pair at its threshold
 * is otherwise decided by rounding, and skipping it removes a contribution of the threshold's size): the
 * logits within tol, the pairs skipped within a hundredth of a percent, the hot side's counts read and
 * cleared. */
static void gated_check(const struct gated_run *r, const struct gated_run *ref, int n, int V, double tol,
                        const char *vs, const char *label)
{
    const double ep = r->rc == 0 ? tp_rel_err(r->lp, ref->lp, n, V) : INFINITY;
    const double ed = r->rc == 0 ? tp_rel_err(r->ld, ref->ld, n, V) : INFINITY;
    tap_ok(r->rc == 0 && ep <= tol && ed <= tol, "%s: %s's logits: prompt %.3g, decode %.3g (<= %.2g)", label, vs, ep,
           ed, tol);
    tap_ok(
        r->cleared && r->pairs == ref->pairs &&
            fabs((double)(r->skipped - ref->skipped)) <= 1e-3 * (double)ref->pairs &&
            (r->hot_pairs == 0 || r->hot_skipped > 0),
        "%s: %.3f%% of the pairs skipped (the hot neurons %.2f%% of theirs, ffn_hot_skipped, cleared by the read), %s "
        "%.3f%%",
        label, 100.0 * (double)r->skipped / (double)r->pairs,
        r->hot_pairs ? 100.0 * (double)r->hot_skipped / (double)r->hot_pairs : 0.0, vs,
        100.0 * (double)ref->skipped / (double)ref->pairs);
}

/* A SwiGLU model with activation thresholds chosen with a margin (tt_margin_thresholds: about half the pairs
 * skipped, none near its threshold), over a random 24-token prompt and its token-by-token decode on a
 * second sequence. The host backend's hot neurons take them on each of its paths, the cold ones computed
 * here as a CPU worker would:
 *   - the dense path, against the single process (pi_forward_set_gate_min): a layer all hot (random ids:
 *     the backend runs the forward pass's own step), bit for bit; hot neurons 0..k-1 packed as a
 *     partition (pi_partition_ffn_dense_gated) with the cold ones a dense partition too, within tol;
 *   - the neuron path, against every neuron cold (pi_ffn_neurons with the thresholds, computed here):
 *     random ids at hot 0.5 (the backend neuron by neuron over the model's rows) and packed rows without
 *     their partition (neuron by neuron over them), within tol;
 * and each run's pairs skipped (ffn_hot_skipped plus the cold ones counted here) within 0.1% of its
 * reference's. The paths round differently (the dense down product takes the activations in 8 bits,
 * in other blocks of 32 where the neurons are split), which these small random models amplify; the dense
 * run is 0.45 to 1.8 away (checked: more than 2.5 tol). A backend that left its hot neurons dense fails
 * the counts (its hot pairs skip nothing) whatever the logits. */
static void check_gated(const char *path, const char *file, double tol)
{
    char err[256];
    pi_model_t *m = NULL, *m_packed = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    if (pi_model_open(path, &mo, &m, err, sizeof err) != 0) tap_bail("%s: %s", file, err);
    mo.no_down_t = true;
    if (pi_model_open(path, &mo, &m_packed, err, sizeof err) != 0) tap_bail("%s: %s", file, err);
    const int L = m->hp.n_layer, V = m->hp.n_vocab, n = 24;
    const int64_t nf = m->hp.n_ff;
    int32_t tok[24], seq0[24] = {0}, seq1 = 1, pos[24];
    for (int i = 0; i < n; i++) tok[i] = (int32_t)(1 + rnd() % (uint64_t)(V - 1)), pos[i] = i;
    float *gm = malloc((size_t)L * (size_t)nf * sizeof(float)), *ldense = malloc((size_t)n * V * sizeof(float));
    struct gated_run ref = {.lp = malloc((size_t)n * V * sizeof(float)), .ld = malloc((size_t)n * V * sizeof(float))};
    PI_ASSERT(gm && ldense && ref.lp && ref.ld);
    struct pi_forward_opts fo;
    pi_forward_opts_default(&fo);
    fo.n_threads = 2, fo.n_ctx = N_CTX, fo.n_seq = 2, fo.n_batch = T_MAX;
    pi_forward_t *f = pi_forward_new(m, &fo);
    struct pi_sparse_stats st;
    PI_ASSERT(f && pi_sparse_stats_init(&st, m) == 0);
    PI_ASSERT(pi_forward_batch(f, tok, seq0, pos, n, ldense, true) == 0); /* the dense run */
    tt_margin_thresholds(f, &st, tok, n, gm, rnd);
    pi_sparse_stats_clear(&st);
    /* the dense reference: the single process with the thresholds, on fresh sequences */
    PI_ASSERT(pi_forward_seq_truncate(f, 0, 0) == 0 && pi_forward_set_gate_min(f, gm, &st) == 0);
    PI_ASSERT(pi_forward_batch(f, tok, seq0, pos, n, ref.lp, true) == 0);
    for (int t = 0; t < n; t++)
        PI_ASSERT(pi_forward_batch(f, tok + t, &seq1, &pos[t], 1, ref.ld + (size_t)t * V, true) == 0);
    for (int il = 0; il < L; il++)
        ref.pairs += (int64_t)st.layers[il].pairs,
            ref.skipped += (int64_t)(st.layers[il].pairs - st.layers[il].predicted);
    const double far = tp_rel_err(ldense, ref.lp, n, V);
    tap_ok(far > 2.5 * tol && ref.skipped > 0,
           "%s thresholds: the single process skips %.1f%% of the pairs, its logits %.3g from the dense ones (> %.2g)",
           file, 100.0 * (double)ref.skipped / (double)ref.pairs, far, 2.5 * tol);
    pi_sparse_stats_free(&st);
    pi_forward_destroy(&f);

    char label[200];
    struct gated_run r = {0}, nref = {0};
    /* a layer all hot: the forward pass's step with its thresholds, bit for bit */
    struct setup s = {.m = m, .m_cpu = m, .gm_full = gm};
    split(&s, 1.0, true);
    snprintf(label, sizeof label, "%s with thresholds, hot 1 (random ids)", file);
    int rc = setup_backend(&s, 2);
    if (rc == 0) gated_run(&s, tok, n, &r);
    if (rc != 0) tap_ok(0, "%s: backend created (%s)", label, pi_err_str(rc));
    else gated_check(&r, &ref, n, V, 0.0, "the single process", label);
    gated_free(&r);
    setup_free(&s);
    /* hot 0..k-1 packed with their partition, the cold ones as a dense partition: the dense path throughout */
    s = (struct setup){.m = m_packed, .m_cpu = m, .packed = true, .gm_full = gm, .cold_dense = true};
    split(&s, 0.25 + 0.5 * (double)(rnd() % 1000) / 1000.0, false);
    int64_t k = s.n_hot[0];
    snprintf(label, sizeof label, "%s with thresholds, hot 0..%lld packed (dense)", file, (long long)k - 1);
    rc = pi_partition_pack_range(m_packed, 0, k, -1, true, false, &s.part);
    if (rc == 0) rc = pi_partition_pack_range(m, k, nf - k, -1, true, false, &s.cpart);
    if (rc == 0) rc = setup_backend(&s, 2);
    if (rc == 0) gated_run(&s, tok, n, &r);
    if (rc != 0) tap_ok(0, "%s: packed and created (%s)", label, pi_err_str(rc));
    else gated_check(&r, &ref, n, V, tol, "the single process", label);
    gated_free(&r);
    setup_free(&s);
    /* the neuron path: every neuron computed here, then the backend's two neuron-by-neuron paths */
    s = (struct setup){.m = m, .m_cpu = m, .gm_full = gm};
    split(&s, 0.0, true);
    rc = setup_backend(&s, 2);
    if (rc == 0) gated_run(&s, tok, n, &nref);
    tap_ok(
        rc == 0 && nref.rc == 0 && nref.pairs == ref.pairs,
        "%s with thresholds, hot 0: every neuron by pi_ffn_neurons: %.2f%% of the pairs skipped, %.3g from the single "
        "process (the paths' rounding at the rule's edge)",
        file, 100.0 * (double)nref.skipped / (double)nref.pairs,
        nref.lp ? tp_rel_err(nref.lp, ref.lp, n, V) : INFINITY);
    setup_free(&s);
    s = (struct setup){.m = m, .m_cpu = m, .gm_full = gm};
    split(&s, 0.5, true);
    snprintf(label, sizeof label, "%s with thresholds, hot 0.5 (random ids, neuron by neuron)", file);
    rc = setup_backend(&s, 2);
    if (rc == 0) gated_run(&s, tok, n, &r);
    if (rc != 0) tap_ok(0, "%s: backend created (%s)", label, pi_err_str(rc));
    else gated_check(&r, &nref, n, V, tol, "every neuron cold", label);
    gated_free(&r);
    setup_free(&s);
    s = (struct setup){.m = m_packed, .m_cpu = m, .packed = true, .no_part = true, .gm_full = gm};
    split(&s, 0.25 + 0.5 * (double)(rnd() % 1000) / 1000.0, false);
    k = s.n_hot[0];
    snprintf(label, sizeof label, "%s with thresholds, hot 0..%lld packed without the partition (neuron by neuron)",
             file, (long long)k - 1);
    rc = pi_partition_pack_range(m_packed, 0, k, -1, true, false, &s.part);
    if (rc == 0) rc = setup_backend(&s, 2);
    if (rc == 0) gated_run(&s, tok, n, &r);
    if (rc != 0) tap_ok(0, "%s: packed and created (%s)", label, pi_err_str(rc));
    else gated_check(&r, &nref, n, V, tol, "every neuron cold", label);
    gated_free(&r);
    setup_free(&s);
    /* refusals: a negative or a NaN threshold of a hot neuron */
    int bad[2];
    for (int b = 0; b < 2; b++) {
        s = (struct setup){.m = m, .m_cpu = m, .gm_full = gm};
        split(&s, 0.5, true);
        const size_t j = (size_t)s.hot[0][0];
        const float keep = gm[j];
        gm[j] = b ? NAN : -1.0f;
        bad[b] = setup_backend(&s, 1);
        gm[j] = keep;
        setup_free(&s);
    }
    tap_ok(bad[0] == -PI_ERR_INVAL && bad[1] == -PI_ERR_INVAL, "%s: a negative or NaN threshold is refused (%d, %d)",
           file, bad[0], bad[1]);
    gated_free(&nref);
    gated_free(&ref);
    free(gm), free(ldense);
    pi_model_destroy(&m_packed);
    pi_model_destroy(&m);
}

/* True when a file whose name contains what is mapped into this process (/proc/self/maps). */
static bool mapped(const char *what)
{
    char line[1024];
    bool found = false;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) tap_bail("/proc/self/maps: %s", strerror(errno));
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, what) != NULL;
    fclose(f);
    return found;
}

/* The interface's rules that need no model. Issue 20: the host backend, run to the end (check_model,
 * before this), has not mapped CUDA's libraries or the cuda backend's module; in a build with CUDA,
 * naming the cuda backend loads the module, and with it cuBLAS. */
static void check_names(void)
{
    tap_ok(!mapped("libcublas") && !mapped("libcudart") && !mapped("pinfer-cuda.so"),
           "the host backend's runs mapped neither cuBLAS, cudart nor pinfer-cuda.so");
    tap_is_int(pi_backend_check("host"), 0, "pi_backend_check(host): built in every configuration");
    tap_is_int(pi_backend_check("bogus"), -PI_ERR_INVAL, "pi_backend_check of an unknown name: -PI_ERR_INVAL");
#ifdef PI_HAVE_CUDA
    tap_is_int(pi_backend_check("cuda"), 0, "pi_backend_check(cuda) in a build with the CUDA backend");
    tap_ok(mapped("pinfer-cuda.so") && mapped("libcublas"),
           "  it loaded the module pinfer-cuda.so, and cuBLAS with it");
#else
    tap_is_int(pi_backend_check("cuda"), -PI_ERR_UNSUPPORTED, "pi_backend_check(cuda) in a build without it");
#endif
}

static void check_model_names(void)
{
    char path[1024], err[256];
    pi_model_t *m = NULL;
    if (pi_model_open(tap_data(path, sizeof path, "demo-relu-q4_0.gguf"), NULL, &m, err, sizeof err) != 0)
        tap_bail("%s", err);
    const int32_t *hot[64] = {0};
    int64_t n_hot[64] = {0};
    PI_ASSERT(m->hp.n_layer <= 64);
    struct pi_backend_opts o = {.n_threads = 1, .n_ctx = 16, .n_seq = 1, .max_tokens = 4, .hot = hot, .n_hot = n_hot};
    pi_backend_t *be = NULL;
    uint64_t bytes = 1;
    tap_ok(pi_backend_new("bogus", m, &o, &be) == -PI_ERR_INVAL && be == NULL,
           "pi_backend_new of an unknown name: -PI_ERR_INVAL, nothing created");
    tap_ok(pi_backend_device_bytes("host", m, &o, &bytes) == -PI_ERR_UNSUPPORTED,
           "pi_backend_device_bytes(host): -PI_ERR_UNSUPPORTED (no device)");
#ifndef PI_HAVE_CUDA
    tap_ok(pi_backend_new("cuda", m, &o, &be) == -PI_ERR_UNSUPPORTED && be == NULL,
           "pi_backend_new(cuda) in a build without it: -PI_ERR_UNSUPPORTED");
#endif
    pi_backend_destroy(&be);
    pi_backend_destroy(NULL);
    pi_model_destroy(&m);
}

int main(int argc, char **argv)
{
    const uint64_t seed =
        argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
    rng_state = seed | 1;
    tap_diag("seed %llu (replay: test-backend-host %llu)", (unsigned long long)seed, (unsigned long long)seed);
    alarm(300);
    check_model("demo-relu-q4_0.gguf", "demo-relu-q4_0.golden.gguf", 4.1e-2);
    check_model("tiny-llama-q4_0.gguf", "tiny-llama-q4_0.golden.gguf", 8.6e-2);
    /* The paths' rounding under thresholds with a margin (check_gated), over 802 seeds on this VM (both
     * models): the packed dense path against the single process median 0.03, above 0.06 in 16 runs, at
     * most 0.081; the neuron paths against every neuron cold at most 0.058; the dense run 0.45 to 1.8
     * away; 0 at hot 1 (the forward pass's own step). The bound of 6e-2 this had failed 2% of the runs;
     * 0.12 leaves half again the largest measured, under the randomly masked pipeline runs'
     * (tests/integration/test-pipeline-sparse.c, MASK_TOL 0.15). */
    char fx[1024], td[1024];
    if (tap_fixture(fx, sizeof fx, "demo-silu/demo-silu-q4_0.gguf")) check_gated(fx, "demo-silu-q4_0.gguf", 0.12);
    check_gated(tap_data(td, sizeof td, "tiny-llama-q4_0.gguf"), "tiny-llama-q4_0.gguf", 0.12);
    check_names(); /* after the host runs: it checks what they mapped */
    check_model_names();
    return tap_done();
}
