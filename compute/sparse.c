/*
 * compute/sparse.c - sparse execution at run time: the mode, the masked FFN of a slice, the
 * telemetry's accounting (compute/sparse.h).
 */
#include "config.h"
#include "compute/sparse.h"
#include "compute/placement-solve.h"
#include "ipc/exchange.h"
#include "kernels/cpu/matvec.h"
#include "lib/common.h"
#include "lib/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(PI_SPARSE_FIELDS == PI_EXCHANGE_STATS_FIELDS, "the exchange's stats section carries struct pi_sparse_layer");

/* "rank R" or "rank A to B" of the layers that have a predictor */
static void rank_text(const struct pi_predictors *p, char *buf, size_t len)
{
    int64_t lo = INT64_MAX, hi = 0;
    for (int il = 0; il < p->n_layer; il++) {
        lo = PI_MIN(lo, p->layers[il].rank);
        hi = PI_MAX(hi, p->layers[il].rank);
    }
    if (lo == hi) snprintf(buf, len, "rank %lld", (long long)hi);
    else snprintf(buf, len, "rank %lld to %lld", (long long)lo, (long long)hi);
}

int pi_sparse_gate_load(const pi_model_t *m, const char *path, enum pi_sparsity mode, float **gate_min,
                        struct pi_sparse_gate_info *info, char *err, size_t errlen)
{
    struct pi_sidecar *s = NULL;
    *gate_min = NULL;
    PI_ASSERT(mode == PI_SPARSITY_SAFE || mode == PI_SPARSITY_AGGRESSIVE);
    if (!path) return -PI_ERR_NOTFOUND;
    int rc = pi_sidecar_load(path, m, &s, err, errlen);
    if (rc < 0) return rc;
    if (!s->gate_min) {
        pi_sidecar_destroy(&s);
        return -PI_ERR_NOTFOUND;
    }
    const int k = mode == PI_SPARSITY_SAFE ? 0 : 1;
    const size_t ff = (size_t)m->hp.n_ff;
    float *g = malloc((size_t)m->hp.n_layer * ff * sizeof *g);
    if (!g) {
        pi_sidecar_destroy(&s);
        return -PI_ERR_NOMEM;
    }
    for (int il = 0; il < m->hp.n_layer; il++)
        memcpy(g + (size_t)il * ff, s->gate_min + ((size_t)il * 2 + (size_t)k) * ff, ff * sizeof *g);
    if (info) *info = (struct pi_sparse_gate_info){s->thr_sparsity[k], s->thr_kld[k], s->thr_kld_target[k]};
    pi_sidecar_destroy(&s);
    *gate_min = g;
    return 0;
}

/* The SwiGLU half of pi_sparse_open. */
static int open_gate(const pi_model_t *m, const char *sidecar, bool is_auto, enum pi_sparsity want, float **gate_min,
                     enum pi_sparsity *mode, char *line, size_t len)
{
    char err[256] = "";
    struct pi_sparse_gate_info info;
    int rc = pi_sparse_gate_load(m, sidecar, want, gate_min, &info, err, sizeof err);
    if (rc == -PI_ERR_NOTFOUND && is_auto) {
        snprintf(line, len, "sparsity off (default: a SwiGLU model without calibrated activation thresholds)");
        return 0;
    }
    if (rc != 0) {
        snprintf(line, len, "sparsity %s: %s", pi_sparsity_name(want),
                 rc == -PI_ERR_NOTFOUND ? "the model has no activation thresholds in its sidecar (pi-profile -m MODEL "
                                          "calibrates them; doc/thresholds.md)"
                 : rc == -PI_ERR_FORMAT ? err
                                        : "out of memory");
        return rc == -PI_ERR_NOMEM ? rc : rc == -PI_ERR_NOTFOUND ? rc : -PI_ERR_UNSUPPORTED;
    }
    if (is_auto && info.sparsity < PI_SPARSE_GATE_AUTO_MIN) {
        free(*gate_min);
        *gate_min = NULL;
        snprintf(line, len, "sparsity off (default: the safe activation thresholds skip %.1f%% of the FFN pairs, "
                 "under the %.0f%% that pays; --sparsity safe uses them)", 100.0 * info.sparsity,
                 100.0 * PI_SPARSE_GATE_AUTO_MIN);
        return 0;
    }
    snprintf(line, len, "sparsity %s (%sactivation thresholds from the sidecar: %.1f%% of FFN pairs skipped at a "
             "calibrated KLD of %.4f, target %g)", pi_sparsity_name(want), is_auto ? "default: " : "",
             100.0 * info.sparsity, (double)info.kld, (double)info.kld_target);
    *mode = want;
    return 0;
}

int pi_sparse_open(const pi_model_t *m, const char *sidecar, enum pi_sparsity_cfg asked, struct pi_predictors *pred,
                   float **gate_min, enum pi_sparsity *mode, char *line, size_t len)
{
    memset(pred, 0, sizeof *pred);
    *gate_min = NULL;
    *mode = PI_SPARSITY_OFF;
    if (asked == PI_SPARSITY_CFG_OFF) {
        snprintf(line, len, "sparsity off (dense FFN, as configured)");
        return 0;
    }
    const bool is_auto = asked == PI_SPARSITY_CFG_AUTO;
    const enum pi_sparsity want = is_auto ? PI_SPARSITY_SAFE : (enum pi_sparsity)(asked - 1);
    if (m->hp.act == PI_FFN_ACT_SILU) return open_gate(m, sidecar, is_auto, want, gate_min, mode, line, len);
    int rc = pi_predictors_open(m, sidecar, pred);
    if (rc == -PI_ERR_NOTFOUND && is_auto) {
        snprintf(line, len, "sparsity off (default: the model has no predictors)");
        return 0;
    }
    if (rc != 0) {
        snprintf(line, len, "sparsity %s: %s", pi_sparsity_name(want),
                 rc == -PI_ERR_NOTFOUND ? "the model has no predictors (in its sidecar or its file; pi-train-predictors writes them)"
                                        : "its predictors cannot be used (see the error above)");
        return rc == -PI_ERR_NOTFOUND ? rc : -PI_ERR_UNSUPPORTED;
    }
    char ranks[64];
    rank_text(pred, ranks, sizeof ranks);
    snprintf(line, len, "sparsity %s (%spredictors from the %s, %s)", pi_sparsity_name(want),
             is_auto ? "default for a ReLU model with " : "", pred->source, ranks);
    *mode = want;
    return 0;
}

int pi_sparse_slices_new(int n_layer, int64_t n_ff, const int32_t *const *ids, const int64_t *count,
                         struct pi_sparse_slice **out)
{
    *out = NULL;
    PI_ASSERT(n_layer > 0 && n_ff > 0);
    const int64_t mw = pi_sparse_mask_words(n_ff);
    const size_t head = ((size_t)n_layer * sizeof(struct pi_sparse_slice) + 63) & ~(size_t)63;
    const size_t nb = (size_t)n_layer * (size_t)mw;
    char *mem = calloc(1, head + nb * sizeof(uint64_t) + nb * sizeof(int32_t));
    if (!mem) return -PI_ERR_NOMEM;
    struct pi_sparse_slice *s = (struct pi_sparse_slice *)(void *)mem;
    uint64_t *bits = (uint64_t *)(void *)(mem + head);
    int32_t *rank = (int32_t *)(void *)(bits + nb);
    for (int il = 0; il < n_layer; il++) {
        uint64_t *b = bits + (size_t)il * (size_t)mw;
        int32_t *r = rank + (size_t)il * (size_t)mw;
        const int64_t c = count[il];
        for (int64_t i = 0; i < c; i++) {
            const int32_t j = ids[il][i];
            if (j < 0 || j >= n_ff || (i > 0 && j <= ids[il][i - 1])) {
                pi_error("sparse: layer %d: the slice's neuron ids are not ascending in [0, %lld)", il, (long long)n_ff);
                free(mem);
                return -PI_ERR_INVAL;
            }
            b[j / 64] |= UINT64_C(1) << (j % 64);
        }
        int32_t below = 0;
        for (int64_t q = 0; q < mw; q++) {
            r[q] = below;
            below += (int32_t)__builtin_popcountll(b[q]);
        }
        s[il] = (struct pi_sparse_slice){.count = c, .words = mw, .bits = b, .rank = r};
    }
    *out = s;
    return 0;
}

void pi_sparse_slices_free(struct pi_sparse_slice **s)
{
    if (!s) return;
    free(*s);
    *s = NULL;
}

/* Word q of a token's selection: its mask word, limited to the slice (or, for the whole layer of n_ff
 * neurons, to the layer's bits: a mask from another process may set bits past n_ff). */
static inline uint64_t selected_word(const uint64_t *row, int64_t q, const struct pi_sparse_slice *sl, int64_t n_ff)
{
    if (sl) return row[q] & sl->bits[q];
    const int64_t past = n_ff - q * 64;
    return past >= 64 ? row[q] : row[q] & ((UINT64_C(1) << past) - 1);
}

/* The words of a mask row that can hold selected bits. */
static inline int64_t selection_words(int64_t mask_words, const struct pi_sparse_slice *sl, int64_t n_ff)
{
    if (sl) {
        PI_ASSERT(sl->words == mask_words);
        return mask_words;
    }
    return PI_MIN(mask_words, pi_sparse_mask_words(n_ff));
}

bool pi_sparse_dense(const uint64_t *mask, int64_t n, int64_t mask_words, const struct pi_sparse_slice *sl, int64_t n_ff)
{
    const int64_t count = sl ? sl->count : n_ff;
    if (n < 1 || count <= 0) return false;
    const int64_t words = selection_words(mask_words, sl, n_ff);
    int64_t sel = 0;
    for (int64_t t = 0; t < n; t++)
        for (int64_t q = 0; q < words; q++) sel += __builtin_popcountll(selected_word(mask + t * mask_words, q, sl, n_ff));
    const double most = n == 1 ? PI_SPARSE_DECODE_DENSE_SHARE : PI_SPARSE_LISTS_MAX_SHARE;
    return (double)sel >= most * (double)n * (double)count;
}

/* list = the rows of the neurons of sl (NULL: the whole layer of n_ff) that mask row `row` selects,
 * ascending: the slice's ranks where packed, else the neuron ids. Returns how many. */
static int64_t select_list(const uint64_t *row, int64_t words, const struct pi_sparse_slice *sl, int64_t n_ff,
                           bool packed, int32_t *list)
{
    int64_t k = 0;
    for (int64_t q = 0; q < words; q++) {
        for (uint64_t v = selected_word(row, q, sl, n_ff); v; v &= v - 1) {
            const int b = __builtin_ctzll(v);
            list[k++] = packed && sl ? sl->rank[q] + (int32_t)__builtin_popcountll(sl->bits[q] & ((UINT64_C(1) << b) - 1))
                                     : (int32_t)(q * 64 + b);
        }
    }
    return k;
}

int64_t pi_sparse_ffn(pi_pool_t *pool, pi_ffn_work_t *w, const struct pi_layer *L, const struct pi_sparse_slice *sl,
                      bool packed, enum pi_ffn_act act, const float *X, int64_t n, const uint64_t *mask,
                      int64_t mask_words, int32_t *list, float *Y, int64_t *selected)
{
    const int64_t rows = L->ffn_gate.rows, count = sl ? sl->count : rows;
    PI_ASSERT(count > 0 && n >= 1); /* an empty slice has no rows to say its width: the caller clears Y */
    PI_ASSERT(!packed || !sl || rows >= sl->count); /* the ranks are rows of L */
    const int64_t d = L->ffn_gate.cols, words = selection_words(mask_words, sl, rows);
    int64_t added = 0, sel = 0;
    memset(Y, 0, (size_t)n * (size_t)d * sizeof *Y);
    for (int64_t t = 0; t < n; t++) {
        const int64_t k = select_list(mask + t * mask_words, words, sl, rows, packed, list);
        sel += k;
        if (k > 0) added += pi_ffn_neurons(pool, w, L, act, NULL, X + t * d, list, k, Y + t * d);
    }
    if (selected) *selected = sel;
    return added;
}

int64_t pi_sparse_ffn_dense_layer(pi_pool_t *pool, const struct pi_layer *L, enum pi_ffn_act act, const float *X, int64_t n,
                                  const uint64_t *mask, int64_t mask_words, float *gate, float *up, float *Y)
{
    const int64_t ff = L->ffn_gate.rows;
    float *g = gate, *u = up;
    const struct pi_weight *gu[2] = {&L->ffn_gate, &L->ffn_up};
    float *const out[2] = {g, u};
    pi_matmul_wn(pool, gu, 2, X, n, out); /* one pool job where both are packed alike */
    pi_ffn_act(act, g, u, n * ff);
    int64_t active = 0;
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < ff; j++) {
            float *a = &g[t * ff + j];
            if (!pi_sparse_bit(mask + t * mask_words, j)) *a = 0.0f;
            active += *a != 0.0f;
        }
    if (n == 1) pi_matvec_w(pool, &L->ffn_down, g, Y);
    else pi_matmul_w(pool, &L->ffn_down, g, n, Y);
    return active;
}

/* ---------------------------------------------------------------- telemetry */

int pi_sparse_stats_init(struct pi_sparse_stats *s, const pi_model_t *m)
{
    memset(s, 0, sizeof *s);
    s->n_layer = m->hp.n_layer;
    s->n_ff = m->hp.n_ff;
    s->neuron_bytes = calloc((size_t)s->n_layer, sizeof *s->neuron_bytes);
    s->skip_bytes = calloc((size_t)s->n_layer, sizeof *s->skip_bytes);
    s->layers = calloc((size_t)s->n_layer, sizeof *s->layers);
    if (!s->neuron_bytes || !s->skip_bytes || !s->layers) {
        pi_sparse_stats_free(s);
        return -PI_ERR_NOMEM;
    }
    for (int il = 0; il < s->n_layer; il++) {
        uint64_t g, u, dn;
        pi_place_neuron_bytes(m, il, &g, &u, &dn);
        s->neuron_bytes[il] = s->skip_bytes[il] = g + u + dn;
    }
    return 0;
}

void pi_sparse_stats_gated(struct pi_sparse_stats *s, const pi_model_t *m)
{
    PI_ASSERT(s->n_layer == m->hp.n_layer);
    for (int il = 0; il < s->n_layer; il++) {
        uint64_t g, u, dn;
        pi_place_neuron_bytes(m, il, &g, &u, &dn);
        s->skip_bytes[il] = u + dn;
    }
}

void pi_sparse_stats_free(struct pi_sparse_stats *s)
{
    if (!s) return;
    free(s->neuron_bytes);
    free(s->skip_bytes);
    free(s->layers);
    memset(s, 0, sizeof *s);
}

void pi_sparse_stats_clear(struct pi_sparse_stats *s)
{
    if (s->layers) memset(s->layers, 0, (size_t)s->n_layer * sizeof *s->layers);
}

void pi_sparse_note(struct pi_sparse_stats *s, int il, int64_t n, int64_t predicted)
{
    PI_ASSERT(il >= 0 && il < s->n_layer && n >= 0 && predicted >= 0 && predicted <= n * s->n_ff);
    s->layers[il].predicted += (uint64_t)predicted;
    s->layers[il].pairs += (uint64_t)(n * s->n_ff);
}

void pi_sparse_note_skipped(struct pi_sparse_stats *s, int il, int64_t skipped)
{
    PI_ASSERT(il >= 0 && il < s->n_layer);
    if (skipped <= 0) return;
    s->layers[il].predicted -= PI_MIN((uint64_t)skipped, s->layers[il].predicted);
}

void pi_sparse_recall(struct pi_sparse_stats *s, pi_pool_t *pool, const pi_model_t *m, int il, const float *X, int64_t n,
                      const uint64_t *mask, int64_t mask_words, float *gate, float *up)
{
    const struct pi_weight *G = &m->layers[il].ffn_gate, *U = &m->layers[il].ffn_up;
    const bool drelu = m->hp.act == PI_FFN_ACT_DRELU;
    PI_ASSERT(il >= 0 && il < s->n_layer && G->rows == s->n_ff && (!drelu || (up && U->rows == s->n_ff)));
    if (n == 1) pi_matvec_w(pool, G, X, gate);
    else pi_matmul_w(pool, G, X, n, gate);
    if (drelu && n == 1) pi_matvec_w(pool, U, X, up);
    else if (drelu) pi_matmul_w(pool, U, X, n, up);
    uint64_t tru = 0, hit = 0;
    for (int64_t t = 0; t < n; t++) {
        const float *g = gate + t * s->n_ff, *u = drelu ? up + t * s->n_ff : NULL;
        const uint64_t *row = mask + t * mask_words;
        for (int64_t j = 0; j < s->n_ff; j++) {
            if (!(g[j] > 0.0f) || (u && !(u[j] > 0.0f))) continue;
            tru++;
            hit += pi_sparse_bit(row, j);
        }
    }
    s->layers[il].recall_true += tru;
    s->layers[il].recall_hit += hit;
}

void pi_sparse_stats_add(struct pi_sparse_stats *dst, const struct pi_sparse_stats *src)
{
    PI_ASSERT(dst->n_layer == src->n_layer);
    for (int il = 0; il < dst->n_layer; il++) {
        dst->skip_bytes[il] = src->skip_bytes[il]; /* how src counts: predictors or thresholds */
        dst->layers[il].predicted += src->layers[il].predicted;
        dst->layers[il].pairs += src->layers[il].pairs;
        dst->layers[il].recall_true += src->layers[il].recall_true;
        dst->layers[il].recall_hit += src->layers[il].recall_hit;
    }
}

void pi_sparse_stats_sub(struct pi_sparse_stats *dst, const struct pi_sparse_stats *src)
{
    PI_ASSERT(dst->n_layer == src->n_layer);
    for (int il = 0; il < dst->n_layer; il++) {
        struct pi_sparse_layer *d = &dst->layers[il];
        const struct pi_sparse_layer *s = &src->layers[il];
        PI_ASSERT(d->predicted >= s->predicted && d->pairs >= s->pairs && d->recall_true >= s->recall_true &&
                  d->recall_hit >= s->recall_hit);
        d->predicted -= s->predicted, d->pairs -= s->pairs;
        d->recall_true -= s->recall_true, d->recall_hit -= s->recall_hit;
    }
}

void pi_sparse_stats_to_wire(const struct pi_sparse_stats *s, uint64_t *w)
{
    for (int il = 0; il < s->n_layer; il++) {
        uint64_t *r = w + (size_t)il * PI_SPARSE_FIELDS;
        r[0] = s->layers[il].predicted, r[1] = s->layers[il].pairs;
        r[2] = s->layers[il].recall_true, r[3] = s->layers[il].recall_hit;
    }
}

int pi_sparse_stats_add_wire(struct pi_sparse_stats *s, const uint64_t *w, int64_t n_tokens)
{
    int bad = 0;
    const uint64_t most = (uint64_t)n_tokens * (uint64_t)s->n_ff;
    for (int il = 0; il < s->n_layer; il++) {
        /* read each shared word once: the GPU worker may rewrite the section, so check the copies */
        const volatile uint64_t *src = w + (size_t)il * PI_SPARSE_FIELDS;
        const uint64_t r[4] = {src[0], src[1], src[2], src[3]};
        if (r[0] > r[1] || r[1] > most || r[3] > r[2] || r[2] > most) {
            bad++;
            continue;
        }
        s->layers[il].predicted += r[0], s->layers[il].pairs += r[1];
        s->layers[il].recall_true += r[2], s->layers[il].recall_hit += r[3];
    }
    return bad;
}

void pi_sparse_summary(const struct pi_sparse_stats *s, int il, struct pi_sparse_summary *out)
{
    memset(out, 0, sizeof *out);
    uint64_t pred = 0, hit = 0;
    for (int l = il < 0 ? 0 : il; l < (il < 0 ? s->n_layer : il + 1); l++) {
        const struct pi_sparse_layer *L = &s->layers[l];
        const uint64_t per_neuron = s->neuron_bytes[l];
        out->pairs += L->pairs;
        pred += L->predicted;
        out->bytes_total += L->pairs * per_neuron;
        out->bytes_skipped += (L->pairs - L->predicted) * s->skip_bytes[l];
        out->recall_true += L->recall_true;
        hit += L->recall_hit;
    }
    out->sparsity = out->pairs ? 1.0 - (double)pred / (double)out->pairs : 0.0;
    out->recall = out->recall_true ? (double)hit / (double)out->recall_true : 0.0;
}
