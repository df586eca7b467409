/*
 * compute/placement-solve.c - the placement solver (compute/placement-solve.h): ranking by activation
 * frequency, the longest ranking prefix within the exact budget, then trades that complete layers.
 *
 * The model's cost needs only per-layer sums (hot count, cold count, the cold neurons' frequency
 * sum), so a trade is evaluated in O(layers); only an accepted state is turned into a placement map
 * and measured by the caller's exact byte count.
 */
#include "config.h"
#include "compute/placement-solve.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void pi_place_neuron_bytes(const pi_model_t *m, int il, uint64_t *g, uint64_t *u, uint64_t *d)
{
    const struct pi_layer *L = &m->layers[il];
    *g = L->ffn_gate.row_bytes;
    *u = L->ffn_up.row_bytes;
    /* a file without ffn_down (PowerInfer's) stores the column as an ffn_down_t row; the ffn_down built
     * from it at load has the copy's type, not the file's */
    if (L->down_built) *d = L->ffn_down_t.row_bytes;
    else if (!pi_type_row_bytes(L->ffn_down.type, (uint64_t)m->hp.n_embd, d)) *d = 4u * (uint64_t)m->hp.n_embd;
}

static uint64_t attn_bytes(const struct pi_layer *L)
{
    const struct pi_weight *w[] = {&L->attn_q, &L->attn_k, &L->attn_v, &L->attn_output};
    uint64_t b = 0;
    for (int k = 0; k < 4; k++) b += w[k]->row_bytes * (uint64_t)w[k]->rows;
    return b;
}

uint64_t pi_place_fixed_bytes(const pi_model_t *m)
{
    uint64_t b = m->token_embd.row_bytes * (uint64_t)m->token_embd.rows;
    if (!m->tied) b += m->output.row_bytes * (uint64_t)m->output.rows;
    for (int il = 0; il < m->hp.n_layer; il++) b += attn_bytes(&m->layers[il]);
    return b;
}

uint64_t pi_place_weights_bytes(const pi_model_t *m, const struct pi_placement *p)
{
    uint64_t b = pi_place_fixed_bytes(m);
    for (int il = 0; il < m->hp.n_layer; il++) {
        uint64_t g, u, d;
        int64_t n;
        pi_place_neuron_bytes(m, il, &g, &u, &d);
        pi_placement_hot(p, il, &n);
        b += (uint64_t)n * (g + u + d);
    }
    return b;
}

/* The solver's state: which neurons are hot, and the per-layer sums the cost needs. */
struct state {
    const struct pi_place_problem *q;
    int L, ff;
    uint8_t *hot;      /* (L, ff) */
    int64_t *nh;       /* (L) hot neurons */
    double *fcold;     /* (L) sum of f over the cold neurons */
    bool *pinned;      /* (L) completed by a trade: its hot neurons are not given away */
};

/* Modelled time of the state's sums (us per token), with its parts. */
static double model_time(const struct state *s, const int64_t *nh, const double *fcold, struct pi_place_cost *c)
{
    const pi_model_t *m = s->q->m;
    const double bg = s->q->speeds.gpu_gbs * 1e3, bc = s->q->speeds.cpu_gbs * 1e3; /* bytes per us */
    double t = 0, tg = 0, tc = 0;
    int ex = 0;
    for (int il = 0; il < s->L; il++) {
        uint64_t g, u, d;
        pi_place_neuron_bytes(m, il, &g, &u, &d);
        const int64_t cold = s->ff - nh[il];
        const double gpu = ((double)attn_bytes(&m->layers[il]) + (double)nh[il] * (double)(g + u + d)) / bg;
        const double cpu = s->q->sparse ? fcold[il] * (double)(g + u + d) / bc
                                         : ((double)cold * (double)g + fcold[il] * (double)(u + d)) / bc;
        t += (gpu > cpu ? gpu : cpu) + (cold > 0 ? s->q->speeds.exchange_us : 0);
        tg += gpu, tc += cpu, ex += cold > 0;
    }
    const struct pi_weight *head = m->tied ? &m->token_embd : &m->output;
    t += (double)head->row_bytes * (double)head->rows / bg;
    if (c) c->t_us = t, c->gpu_us = tg, c->cpu_us = tc, c->n_exchanges = ex;
    return t;
}

/* The state's placement map: its hot sets, cold ids split by expected bytes. */
static int state_placement(const struct state *s, struct pi_placement **out)
{
    const pi_model_t *m = s->q->m;
    int32_t *ids = malloc((size_t)s->L * (size_t)s->ff * sizeof *ids);
    const int32_t **hot = calloc((size_t)s->L, sizeof *hot);
    float *w = malloc((size_t)s->L * (size_t)s->ff * sizeof *w);
    int rc = -PI_ERR_NOMEM;
    if (ids && hot && w) {
        for (int il = 0; il < s->L; il++) {
            uint64_t g, u, d;
            pi_place_neuron_bytes(m, il, &g, &u, &d);
            int32_t *h = ids + (size_t)il * (size_t)s->ff;
            int64_t k = 0;
            for (int i = 0; i < s->ff; i++) {
                const size_t at = (size_t)il * (size_t)s->ff + (size_t)i;
                if (s->hot[at]) h[k++] = i;
                w[at] = (float)((double)g + (double)s->q->act_freq[at] * (double)(u + d));
            }
            hot[il] = h;
        }
        rc = pi_placement_new_weighted(s->L, s->ff, s->q->n_workers, hot, s->nh, w, out);
    }
    free(ids);
    free(hot);
    free(w);
    return rc;
}

/* Ranking of (layer, id) by f descending, then layer, then id: entries carry their own key, so the
 * comparison needs no context (qsort has no context argument, and no global is shared). */
struct ranked {
    float f;
    uint32_t at; /* layer * n_ff + id */
};

static int by_freq(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    if (x->f != y->f) return x->f > y->f ? -1 : 1;
    return x->at < y->at ? -1 : x->at > y->at;
}

/* Set the state to the first k neurons of the ranking hot. */
static void set_prefix(struct state *s, const uint32_t *rank, int64_t k)
{
    const size_t n = (size_t)s->L * (size_t)s->ff;
    memset(s->hot, 0, n);
    for (int il = 0; il < s->L; il++) s->nh[il] = 0, s->fcold[il] = 0, s->pinned[il] = false;
    for (int64_t r = 0; r < k; r++) s->hot[rank[r]] = 1;
    for (size_t at = 0; at < n; at++) {
        const int il = (int)(at / (size_t)s->ff);
        if (s->hot[at]) s->nh[il]++;
        else s->fcold[il] += s->q->act_freq[at];
    }
}

/* Whether the state fits the budget by the caller's exact count (*err: its error, if any). */
static bool state_fits(struct state *s, uint64_t *bytes, int *err)
{
    struct pi_placement *p = NULL;
    int rc = state_placement(s, &p);
    if (rc == 0) rc = s->q->device_bytes(s->q->ctx, p, bytes);
    pi_placement_destroy(&p);
    if (rc != 0) {
        if (*err == 0) *err = rc;
        return false;
    }
    return *bytes <= s->q->budget;
}

/* One trade: complete layer l (its cold neurons hot) and give up as many of the least frequent hot
 * neurons of layers not completed, if that lowers the modelled time and fits. true when taken. */
static bool trade(struct state *s, const uint32_t *rank, int64_t n_rank, int l, double *t_now, int *err)
{
    const int64_t need = s->ff - s->nh[l];
    if (need <= 0 || s->pinned[l]) return false;
    int64_t *nh = malloc((size_t)s->L * sizeof *nh);
    double *fc = malloc((size_t)s->L * sizeof *fc);
    uint32_t *give = malloc((size_t)need * sizeof *give);
    bool taken = false;
    if (!nh || !fc || !give) goto out;
    memcpy(nh, s->nh, (size_t)s->L * sizeof *nh);
    memcpy(fc, s->fcold, (size_t)s->L * sizeof *fc);
    int64_t n_give = 0;
    for (int64_t r = n_rank - 1; r >= 0 && n_give < need; r--) { /* the least frequent hot ones */
        const uint32_t at = rank[r];
        const int il = (int)(at / (uint32_t)s->ff);
        if (!s->hot[at] || il == l || s->pinned[il]) continue;
        give[n_give++] = at;
        nh[il]--, fc[il] += s->q->act_freq[at];
    }
    if (n_give < need) goto out;
    nh[l] = s->ff, fc[l] = 0;
    const double t = model_time(s, nh, fc, NULL);
    if (!(t < *t_now * (1 - 1e-9))) goto out;
    /* take it, then check the exact budget; undo when it does not fit */
    uint8_t *was = malloc((size_t)s->ff);
    if (!was) goto out;
    memcpy(was, s->hot + (size_t)l * (size_t)s->ff, (size_t)s->ff);
    memset(s->hot + (size_t)l * (size_t)s->ff, 1, (size_t)s->ff);
    for (int64_t k = 0; k < n_give; k++) s->hot[give[k]] = 0;
    int64_t *nh0 = s->nh;
    double *fc0 = s->fcold;
    s->nh = nh, s->fcold = fc;
    uint64_t bytes;
    if (state_fits(s, &bytes, err)) {
        s->pinned[l] = true;
        *t_now = t;
        taken = true;
        nh = nh0, fc = fc0; /* freed below: the old sums */
    } else {
        memcpy(s->hot + (size_t)l * (size_t)s->ff, was, (size_t)s->ff);
        for (int64_t k = 0; k < n_give; k++) s->hot[give[k]] = 1;
        s->nh = nh0, s->fcold = fc0;
    }
    free(was);
out:
    free(nh);
    free(fc);
    free(give);
    return taken;
}

static int check_problem(const struct pi_place_problem *q)
{
    const struct pi_hparams *hp = &q->m->hp;
    if (!q->act_freq || q->n_workers < 1 || q->n_workers > PI_PLACEMENT_MAX_WORKERS || !(q->speeds.gpu_gbs > 0) ||
        !(q->speeds.cpu_gbs > 0) || !(q->speeds.exchange_us >= 0) || !q->device_bytes) {
        pi_error("placement solver: no frequencies, workers outside 1..%d or speeds not positive", PI_PLACEMENT_MAX_WORKERS);
        return -PI_ERR_INVAL;
    }
    if ((uint64_t)hp->n_layer * (uint64_t)hp->n_ff > UINT32_MAX) { /* the ranking's indices are u32 */
        pi_error("placement solver: %d layers of %d neurons are more than it ranks", hp->n_layer, hp->n_ff);
        return -PI_ERR_INVAL;
    }
    for (size_t i = 0; i < (size_t)hp->n_layer * (size_t)hp->n_ff; i++)
        if (!(q->act_freq[i] >= 0.0f && q->act_freq[i] <= 1.0f)) {
            pi_error("placement solver: layer %zu neuron %zu: frequency %g is not in [0, 1]", i / (size_t)hp->n_ff,
                     i % (size_t)hp->n_ff, (double)q->act_freq[i]);
            return -PI_ERR_INVAL;
        }
    return 0;
}

int pi_place_cost(const struct pi_place_problem *q, const struct pi_placement *p, bool with_bytes, struct pi_place_cost *cost)
{
    const struct pi_hparams *hp = &q->m->hp;
    if (p->n_layer != hp->n_layer || p->n_ff != hp->n_ff) return -PI_ERR_INVAL;
    struct state s = {.q = q, .L = hp->n_layer, .ff = hp->n_ff};
    int64_t *nh = calloc((size_t)s.L, sizeof *nh);
    double *fc = calloc((size_t)s.L, sizeof *fc);
    if (!nh || !fc) { free(nh); free(fc); return -PI_ERR_NOMEM; }
    double f_all = 0, f_hot = 0;
    for (int il = 0; il < s.L; il++) {
        int64_t n;
        const int32_t *h = pi_placement_hot(p, il, &n);
        nh[il] = n;
        const float *f = q->act_freq + (size_t)il * (size_t)s.ff;
        double fl = 0, fh = 0;
        for (int i = 0; i < s.ff; i++) fl += f[i];
        for (int64_t j = 0; j < n; j++) fh += f[h[j]];
        fc[il] = fl - fh, f_all += fl, f_hot += fh;
    }
    memset(cost, 0, sizeof *cost);
    model_time(&s, nh, fc, cost);
    cost->hot = pi_placement_hot_total(p);
    cost->hot_freq_share = f_all > 0 ? f_hot / f_all : 0;
    cost->speeds = q->speeds;
    int rc = with_bytes ? q->device_bytes(q->ctx, p, &cost->device_bytes) : 0;
    free(nh);
    free(fc);
    return rc;
}

int pi_place_solve(const struct pi_place_problem *q, struct pi_placement **out, struct pi_place_cost *cost)
{
    *out = NULL;
    int rc = check_problem(q);
    if (rc != 0) return rc;
    const struct pi_hparams *hp = &q->m->hp;
    const int64_t n = (int64_t)hp->n_layer * hp->n_ff;
    struct state s = {.q = q, .L = hp->n_layer, .ff = hp->n_ff};
    uint32_t *rank = malloc((size_t)n * sizeof *rank);
    s.hot = malloc((size_t)n);
    s.nh = calloc((size_t)s.L, sizeof *s.nh);
    s.fcold = calloc((size_t)s.L, sizeof *s.fcold);
    s.pinned = calloc((size_t)s.L, sizeof *s.pinned);
    if (!rank || !s.hot || !s.nh || !s.fcold || !s.pinned) {
        rc = -PI_ERR_NOMEM;
        goto done;
    }
    struct ranked *order = malloc((size_t)n * sizeof *order);
    if (!order) {
        rc = -PI_ERR_NOMEM;
        goto done;
    }
    for (int64_t i = 0; i < n; i++) order[i] = (struct ranked){.f = q->act_freq[i], .at = (uint32_t)i};
    qsort(order, (size_t)n, sizeof *order, by_freq);
    for (int64_t i = 0; i < n; i++) rank[i] = order[i].at;
    free(order);
    /* the longest prefix of the ranking within the budget: every neuron first (a layer whose neurons
     * are all hot can take fewer bytes than one neuron short of it: the cuda backend's dense layers),
     * then none, then bisection (the byte count grows with the prefix below that end) */
    int err = 0;
    uint64_t bytes = 0;
    int64_t k;
    set_prefix(&s, rank, n);
    if (state_fits(&s, &bytes, &err)) {
        k = n;
    } else {
        set_prefix(&s, rank, 0);
        if (!state_fits(&s, &bytes, &err)) {
            rc = err ? err : -PI_ERR_RANGE;
            if (!err)
                pi_error("placement solver: even with no hot neuron the device needs %llu bytes, over the budget of %llu",
                         (unsigned long long)bytes, (unsigned long long)q->budget);
            goto done;
        }
        int64_t lo = 0, hi = n - 1; /* prefix lo fits; hi + 1 does not */
        while (lo < hi && err == 0) {
            const int64_t mid = lo + (hi - lo + 1) / 2;
            set_prefix(&s, rank, mid);
            if (state_fits(&s, &bytes, &err)) lo = mid;
            else hi = mid - 1;
        }
        k = lo;
    }
    if (err) {
        rc = err;
        goto done;
    }
    set_prefix(&s, rank, k);
    /* trades that complete a layer: the layers with the fewest cold neurons first, a bounded number of
     * rounds (each round tries every layer once) */
    double t = model_time(&s, s.nh, s.fcold, NULL);
    bool *tried = calloc((size_t)s.L, sizeof *tried);
    if (!tried) {
        rc = -PI_ERR_NOMEM;
        goto done;
    }
    for (int round = 0; round < 4 && k < n && err == 0; round++) {
        bool any = false;
        memset(tried, 0, (size_t)s.L * sizeof *tried);
        for (;;) {
            int best = -1;
            for (int il = 0; il < s.L; il++) /* the untried layer with the fewest cold neurons, > 0 */
                if (!tried[il] && s.nh[il] < s.ff && (best < 0 || s.ff - s.nh[il] < s.ff - s.nh[best])) best = il;
            if (best < 0) break;
            tried[best] = true;
            if (trade(&s, rank, n, best, &t, &err)) any = true;
            if (err) break;
        }
        if (!any) break;
    }
    free(tried);
    if (err) {
        rc = err;
        goto done;
    }
    if ((rc = state_placement(&s, out)) != 0) goto done;
    if (cost) rc = pi_place_cost(q, *out, true, cost);
    if (rc != 0) pi_placement_destroy(out);
done:
    free(rank);
    free(s.hot);
    free(s.nh);
    free(s.fcold);
    free(s.pinned);
    return rc;
}
