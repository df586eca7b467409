/*
 * text/sample.c - the sampler behind text/sample.h.
 *
 * Every stage is a filter on one candidate array kept in ascending token id, so the final draw walks
 * the survivors in a canonical order that does not depend on how they were selected: that is what
 * makes a seed mean the same thing on every machine and in every future version of the selection
 * code. Cost per token, for a vocabulary of V:
 *   - one pass gathers the finite logits and finds the maximum (greedy stops here: an argmax);
 *     bias and penalties, when set, cost a copy plus the size of the history: O(V);
 *   - top-k finds its cut-off element with a heap of k (quickselect for k > 4096), top-p with one
 *     exp per candidate into logit buckets and a mass-weighted quickselect inside the one bucket
 *     where the running sum crosses the target; then one stable pass keeps the candidates at or
 *     above the cuts: no full sort anywhere;
 *   - min-p is a threshold on the logit (p >= min_p * p_max  <=>  z >= z_max + log(min_p));
 *   - the draw: one exp per survivor and a walk that stops at the chosen token.
 * Candidates compare by (logit descending, id ascending), a total order, so "the k best" and "the
 * nucleus" are always well defined, ties included. Weights use pexpf below, plain IEEE arithmetic
 * rather than libm, and sums run in double in a fixed order, so the bits are the same everywhere
 * (log(min_p), once per call, is the only libm call on the path).
 *
 * Scratch (owned, allocated once): cand and scratch (V each, 8 bytes), stamp (V), and the history:
 * win_count / gen_count (V), gen_list (V), win_list (V, only for repeat_last_n == -1), the ring
 * (repeat_last_n).
 */
#include "config.h"
#include "text/sample.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Reproducible bits need every a * b + c rounded twice, never fused: GCC does that under -std=c11
 * (its ISO mode sets -ffp-contract=off), clang needs telling (it contracts by default). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define PI_SAMPLE_MAX_VOCAB (1 << 30)
#define PI_SAMPLE_MAX_LAST_N (1 << 20) /* far beyond any context length; bounds the ring allocation */
#define PI_HEAP_MAX_K 4096             /* top-k up to this uses a heap, larger a quickselect */
#define PI_TOPP_BUCKETS 512            /* top-p buckets of 1/8 logit below the max: 64 logits deep */
#define PI_TOPP_BUCKET_SCALE 8.0f

/* One candidate token: its working logit and its id. */
struct pi_cand {
    float z;
    int32_t id;
};

struct pi_sampler {
    int32_t n_vocab;
    struct pi_sample_params p;
    struct pi_rng rng;

    struct pi_cand *cand; /* (n_vocab,) working candidates, ascending id between stages */
    void *scratch;        /* (n_vocab,) 8 bytes each: struct pi_cand copies that the selections
                           * permute, or double weights for the draw */
    double bucket_mass[PI_TOPP_BUCKETS]; /* top-p: mass per logit bucket */
    uint32_t *stamp;      /* (n_vocab,) "penalised in this call" marks */
    uint32_t stamp_now;

    /* Repeat window: how often each token occurs in it. A ring of the last repeat_last_n tokens
     * when that is > 0; with -1 every token since reset counts, and win_list holds the distinct
     * ones (so applying the penalty costs the history, not V). */
    int32_t *win_count;        /* (n_vocab,) */
    int32_t *ring;             /* (ring_cap,) */
    int32_t ring_cap, ring_len, ring_head;
    int32_t *win_list;         /* (n_vocab,) or NULL */
    int32_t n_win_list;

    /* Generated tokens for the frequency/presence penalties: counts and the distinct ids. */
    int32_t *gen_count;        /* (n_vocab,) */
    int32_t *gen_list;         /* (n_vocab,) */
    int32_t n_gen_list;

    int32_t *bias_tok;         /* (n_bias,) */
    float *bias_val;           /* (n_bias,) */
    size_t n_bias;
    int32_t *eog;              /* (n_eog,) */
    size_t n_eog;
};

void pi_sample_params_default(struct pi_sample_params *p)
{
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->frequency_penalty = 0.0f;
    p->presence_penalty = 0.0f;
    p->seed = PI_SAMPLE_SEED_DEFAULT;
}

int pi_sample_params_check(const struct pi_sample_params *p)
{
    /* Each test is written so that NaN fails it. */
    if (!(isfinite(p->temperature) && p->temperature >= 0.0f)) {
        pi_error("sampling: temperature %g must be finite and >= 0", (double)p->temperature);
        return -PI_ERR_INVAL;
    }
    if (p->top_k < 0) {
        pi_error("sampling: top_k %d must be >= 0 (0 = off)", (int)p->top_k);
        return -PI_ERR_INVAL;
    }
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
        pi_error("sampling: top_p %g must be in (0, 1]", (double)p->top_p);
        return -PI_ERR_INVAL;
    }
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        pi_error("sampling: min_p %g must be in [0, 1]", (double)p->min_p);
        return -PI_ERR_INVAL;
    }
    if (!(isfinite(p->repeat_penalty) && p->repeat_penalty > 0.0f)) {
        pi_error("sampling: repeat_penalty %g must be finite and > 0 (1 = off)", (double)p->repeat_penalty);
        return -PI_ERR_INVAL;
    }
    if (p->repeat_last_n < -1 || p->repeat_last_n > PI_SAMPLE_MAX_LAST_N) {
        pi_error("sampling: repeat_last_n %d must be in [-1, %d]", (int)p->repeat_last_n, PI_SAMPLE_MAX_LAST_N);
        return -PI_ERR_INVAL;
    }
    if (!isfinite(p->frequency_penalty) || !isfinite(p->presence_penalty)) {
        pi_error("sampling: frequency_penalty %g and presence_penalty %g must be finite",
                 (double)p->frequency_penalty, (double)p->presence_penalty);
        return -PI_ERR_INVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------- lifetime and history */

/* Size the repeat-window storage for p (ring or distinct list). Called with a cleared history. */
static int sampler_size_window(pi_sampler_t *s, const struct pi_sample_params *p)
{
    if (p->repeat_last_n > s->ring_cap) {
        int32_t *ring = realloc(s->ring, (size_t)p->repeat_last_n * sizeof *ring);
        if (!ring) {
            pi_error("sampling: out of memory for a repeat window of %d tokens", (int)p->repeat_last_n);
            return -PI_ERR_NOMEM;
        }
        s->ring = ring;
        s->ring_cap = p->repeat_last_n;
    }
    if (p->repeat_last_n == -1 && !s->win_list) {
        s->win_list = malloc((size_t)s->n_vocab * sizeof *s->win_list);
        if (!s->win_list) {
            pi_error("sampling: out of memory for the repeat history");
            return -PI_ERR_NOMEM;
        }
    }
    return 0;
}

pi_sampler_t *pi_sampler_new(int32_t n_vocab, const struct pi_sample_params *p)
{
    if (n_vocab < 1 || n_vocab > PI_SAMPLE_MAX_VOCAB) {
        pi_error("sampling: vocabulary size %d out of range [1, %d]", (int)n_vocab, PI_SAMPLE_MAX_VOCAB);
        return NULL;
    }
    if (pi_sample_params_check(p) != 0) return NULL;
    pi_sampler_t *s = calloc(1, sizeof *s);
    if (!s) goto nomem;
    size_t v = (size_t)n_vocab;
    s->n_vocab = n_vocab;
    s->cand = malloc(v * sizeof *s->cand);
    s->scratch = malloc(v * sizeof(struct pi_cand));
    s->stamp = calloc(v, sizeof *s->stamp);
    s->win_count = calloc(v, sizeof *s->win_count);
    s->gen_count = calloc(v, sizeof *s->gen_count);
    s->gen_list = malloc(v * sizeof *s->gen_list);
    if (!s->cand || !s->scratch || !s->stamp || !s->win_count || !s->gen_count || !s->gen_list) goto nomem;
    if (sampler_size_window(s, p) != 0) goto err;
    s->p = *p;
    pi_sampler_reset(s);
    return s;
nomem:
    pi_error("sampling: out of memory for a sampler over %d tokens", (int)n_vocab);
err:
    pi_sampler_destroy(&s);
    return NULL;
}

void pi_sampler_destroy(pi_sampler_t **sp)
{
    if (!sp || !*sp) return;
    pi_sampler_t *s = *sp;
    free(s->cand);
    free(s->scratch);
    free(s->stamp);
    free(s->win_count);
    free(s->ring);
    free(s->win_list);
    free(s->gen_count);
    free(s->gen_list);
    free(s->bias_tok);
    free(s->bias_val);
    free(s->eog);
    free(s);
    *sp = NULL;
}

void pi_sampler_reset(pi_sampler_t *s)
{
    size_t v = (size_t)s->n_vocab;
    memset(s->win_count, 0, v * sizeof *s->win_count);
    memset(s->gen_count, 0, v * sizeof *s->gen_count);
    s->ring_len = s->ring_head = 0;
    s->n_win_list = s->n_gen_list = 0;
    pi_rng_seed(&s->rng, s->p.seed);
}

int pi_sampler_set_params(pi_sampler_t *s, const struct pi_sample_params *p)
{
    int rc = pi_sample_params_check(p);
    if (rc != 0) return rc;
    rc = sampler_size_window(s, p);
    if (rc != 0) return rc;
    s->p = *p;
    pi_sampler_reset(s);
    return 0;
}

const struct pi_sample_params *pi_sampler_params(const pi_sampler_t *s) { return &s->p; }

/* Copy n tokens into a fresh array of *dst (old one freed), after checking their range. */
static int copy_tokens(const pi_sampler_t *s, int32_t **dst, const int32_t *tokens, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= s->n_vocab) {
            pi_error("sampling: %s token %d outside the vocabulary [0, %d)", what, (int)tokens[i], (int)s->n_vocab);
            return -PI_ERR_RANGE;
        }
    }
    int32_t *t = NULL;
    if (n > INT32_MAX) {
        pi_error("sampling: %zu %s tokens is too many", n, what);
        return -PI_ERR_RANGE;
    }
    if (n > 0) {
        t = malloc(n * sizeof *t);
        if (!t) {
            pi_error("sampling: out of memory for %zu %s tokens", n, what);
            return -PI_ERR_NOMEM;
        }
        memcpy(t, tokens, n * sizeof *t);
    }
    free(*dst);
    *dst = t;
    return 0;
}

int pi_sampler_set_logit_bias(pi_sampler_t *s, const int32_t *tokens, const float *bias, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (isnan(bias[i])) {
            pi_error("sampling: logit bias for token %d is NaN", (int)tokens[i]);
            return -PI_ERR_INVAL;
        }
    }
    float *val = NULL;
    if (n > INT32_MAX) return copy_tokens(s, &s->bias_tok, tokens, n, "logit-bias"); /* refuses */
    if (n > 0 && !(val = malloc(n * sizeof *val))) {
        pi_error("sampling: out of memory for %zu logit biases", n);
        return -PI_ERR_NOMEM;
    }
    int rc = copy_tokens(s, &s->bias_tok, tokens, n, "logit-bias");
    if (rc != 0) {
        free(val);
        return rc;
    }
    if (n > 0) memcpy(val, bias, n * sizeof *val);
    free(s->bias_val);
    s->bias_val = val;
    s->n_bias = n;
    return 0;
}

int pi_sampler_set_eog(pi_sampler_t *s, const int32_t *tokens, size_t n)
{
    int rc = copy_tokens(s, &s->eog, tokens, n, "end-of-generation");
    if (rc == 0) s->n_eog = n;
    return rc;
}

bool pi_sampler_is_eog(const pi_sampler_t *s, int32_t token)
{
    for (size_t i = 0; i < s->n_eog; i++)
        if (s->eog[i] == token) return true;
    return false;
}

static int check_token(const pi_sampler_t *s, int32_t token)
{
    if (token >= 0 && token < s->n_vocab) return 0;
    pi_error("sampling: accepted token %d outside the vocabulary [0, %d)", (int)token, (int)s->n_vocab);
    return -PI_ERR_RANGE;
}

/* Push a token into the repeat window, evicting the oldest when the ring is full. */
static void window_push(pi_sampler_t *s, int32_t token)
{
    int32_t n = s->p.repeat_last_n;
    if (n == 0) return;
    if (n == -1) {
        if (s->win_count[token]++ == 0) s->win_list[s->n_win_list++] = token;
        return;
    }
    if (s->ring_len == n) s->win_count[s->ring[s->ring_head]]--;
    else s->ring_len++;
    s->ring[s->ring_head] = token;
    s->win_count[token]++;
    s->ring_head = s->ring_head + 1 == n ? 0 : s->ring_head + 1;
}

int pi_sampler_accept_prompt(pi_sampler_t *s, const int32_t *tokens, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = check_token(s, tokens[i]);
        if (rc != 0) return rc;
        window_push(s, tokens[i]);
    }
    return 0;
}

int pi_sampler_accept(pi_sampler_t *s, int32_t token)
{
    int rc = check_token(s, token);
    if (rc != 0) return rc;
    window_push(s, token);
    /* gen_count saturates rather than wrapping; 2^31 generated copies of one token is not a real
     * sequence, but the counter must not overflow into a negative penalty. */
    if (s->gen_count[token] == 0) s->gen_list[s->n_gen_list++] = token;
    if (s->gen_count[token] < INT32_MAX) s->gen_count[token]++;
    return 0;
}

/* ---------------------------------------------------------------- bias and penalties */

/* cand[] is indexed by token id here (loaded in id order, nothing dropped yet). */
static void apply_bias(pi_sampler_t *s)
{
    for (size_t i = 0; i < s->n_bias; i++) s->cand[s->bias_tok[i]].z += s->bias_val[i];
}

/* Penalise one token once, whatever lists it is on. llama.cpp's rule for the repeat penalty (divide
 * a positive logit, multiply a non-positive one: both move it down), then OpenAI's
 *   z -= count * frequency_penalty + (count > 0) * presence_penalty,
 * both in float like the logits. */
static void penalise(pi_sampler_t *s, int32_t t)
{
    if (s->stamp[t] == s->stamp_now) return;
    s->stamp[t] = s->stamp_now;
    float z = s->cand[t].z;
    const float rp = s->p.repeat_penalty;
    if (s->win_count[t] > 0 && rp != 1.0f) z = z <= 0.0f ? z * rp : z / rp;
    int32_t c = s->gen_count[t];
    if (c > 0) z -= (float)c * s->p.frequency_penalty + s->p.presence_penalty;
    s->cand[t].z = z;
}

static bool penalties_active(const pi_sampler_t *s)
{
    return (s->p.repeat_penalty != 1.0f && s->p.repeat_last_n != 0) || s->p.frequency_penalty != 0.0f ||
           s->p.presence_penalty != 0.0f;
}

/* cand[] is indexed by token id here too. Each token of the history is penalised once. */
static void apply_penalties(pi_sampler_t *s)
{
    const bool rep = s->p.repeat_penalty != 1.0f && s->p.repeat_last_n != 0;
    const bool gen = s->p.frequency_penalty != 0.0f || s->p.presence_penalty != 0.0f;
    if (!rep && !gen) return;
    if (++s->stamp_now == 0) { /* wrapped after 2^32 calls: clear the marks once */
        memset(s->stamp, 0, (size_t)s->n_vocab * sizeof *s->stamp);
        s->stamp_now = 1;
    }
    if (rep) {
        if (s->p.repeat_last_n == -1)
            for (int32_t i = 0; i < s->n_win_list; i++) penalise(s, s->win_list[i]);
        else
            for (int32_t i = 0; i < s->ring_len; i++) penalise(s, s->ring[i]);
    }
    if (gen)
        for (int32_t i = 0; i < s->n_gen_list; i++) penalise(s, s->gen_list[i]);
}

/* ---------------------------------------------------------------- exp */

/* e^x for x <= 0, in plain IEEE-754 single-precision arithmetic (no libm: C libraries' exp differ in
 * the last bit, and a last bit can move a draw across a boundary). Inline so the hot loops carry no
 * calls. Range reduction x = k ln2 + r, |r| <= ln2/2, with ln2 split so that k * ln2_hi is exact;
 * e^r by its Taylor polynomial to degree 7 (truncation below 5e-9 relative; Estrin's evaluation order); 2^k built in the
 * exponent field. Relative error about 2e-7. Returns 0 below -87 (e^-87 ~ 1.6e-38: such a token
 * is never drawn) and for NaN. */
static inline float pexpf(float x)
{
    if (!(x > -87.0f)) return 0.0f;
    const float shifter = 0x1.8p23f; /* adding it rounds to an integer in the low mantissa bits */
    const float kf = (x * 0x1.715476p+0f + shifter) - shifter; /* round(x / ln2), in [-126, 0] */
    const float r = (x - kf * 0x1.62e4p-1f) - kf * 0x1.7f7d1cp-20f;
    /* Estrin's scheme: the same polynomial with a shorter dependency chain than Horner's. */
    const float r2 = r * r, r4 = r2 * r2;
    const float p01 = 1.0f + r, p23 = 0.5f + r * (1.0f / 6.0f);
    const float p45 = 1.0f / 24.0f + r * (1.0f / 120.0f), p67 = 1.0f / 720.0f + r * (1.0f / 5040.0f);
    const float p = (p01 + r2 * p23) + r4 * (p45 + r2 * p67);
    const uint32_t bits = (uint32_t)((int32_t)kf + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* ---------------------------------------------------------------- selection */

/* The total order of candidates: higher logit first, lower id on equal logits. */
static inline bool better(struct pi_cand a, struct pi_cand b) { return a.z > b.z || (a.z == b.z && a.id < b.id); }

static int cmp_better(const void *pa, const void *pb)
{
    const struct pi_cand *a = pa, *b = pb;
    return better(*a, *b) ? -1 : better(*b, *a) ? 1 : 0;
}

static inline void swap_cand(struct pi_cand *a, int32_t i, int32_t j)
{
    struct pi_cand t = a[i];
    a[i] = a[j];
    a[j] = t;
}

/* Partition a[lo..hi] (inclusive, lo < hi) around the median of its first, middle and last elements.
 * Returns p: a[lo..p) are better than a[p], a(p..hi] worse. Keys are distinct, so no three-way
 * split is needed. */
static int32_t partition(struct pi_cand *a, int32_t lo, int32_t hi)
{
    int32_t mid = lo + (hi - lo) / 2;
    if (better(a[mid], a[lo])) swap_cand(a, lo, mid);
    if (better(a[hi], a[lo])) swap_cand(a, lo, hi);
    if (better(a[hi], a[mid])) swap_cand(a, mid, hi);
    swap_cand(a, mid, hi); /* the median becomes the pivot at hi */
    const struct pi_cand pivot = a[hi];
    int32_t i = lo;
    for (int32_t j = lo; j < hi; j++)
        if (better(a[j], pivot)) swap_cand(a, i++, j);
    swap_cand(a, i, hi);
    return i;
}

/* Rounds of partitioning before falling back to a sort of what is left: bounds the quadratic worst
 * case of quickselect on adversarial input while keeping the result identical (it is defined by
 * the total order, not by the algorithm). */
static int32_t select_budget(int32_t n)
{
    int32_t b = 16;
    while (n > 1) {
        n >>= 1;
        b += 2;
    }
    return b;
}

/* Rearrange a (n,) so that a[k] is the (k+1)-th best, with the better ones before it. Returns a[k]. */
static struct pi_cand select_kth(struct pi_cand *a, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1, budget = select_budget(n);
    while (lo < hi) {
        if (--budget == 0) {
            qsort(a + lo, (size_t)(hi - lo + 1), sizeof *a, cmp_better);
            break;
        }
        int32_t p = partition(a, lo, hi);
        if (p == k) break;
        if (k < p) hi = p - 1;
        else lo = p + 1;
    }
    return a[k];
}

/* The nucleus inside a (n >= 1,): the shortest prefix of a in candidate order whose mass, exp(z - zmax)
 * each, reaches target. Rearranges a and returns the prefix's worst element (the worst of all when
 * rounding keeps the sum below target). Quickselect on mass: partition, weigh the better side,
 * continue into the side where the running sum crosses. */
static struct pi_cand select_mass(struct pi_cand *a, int32_t n, float zmax, double target)
{
    int32_t lo = 0, hi = n, budget = select_budget(n);
    double acc = 0.0; /* mass of a[0..lo), all in the nucleus */
    while (lo < hi) {
        if (--budget == 0 || hi - lo == 1) {
            qsort(a + lo, (size_t)(hi - lo), sizeof *a, cmp_better);
            for (int32_t i = lo; i < hi; i++) {
                acc += pexpf(a[i].z - zmax);
                if (acc >= target) return a[i];
            }
            break;
        }
        int32_t p = partition(a, lo, hi - 1);
        double g = 0.0;
        for (int32_t i = lo; i < p; i++) g += pexpf(a[i].z - zmax);
        if (acc + g >= target) {
            hi = p;
            continue;
        }
        acc += g + pexpf(a[p].z - zmax);
        if (acc >= target) return a[p];
        lo = p + 1;
    }
    struct pi_cand worst = a[0];
    for (int32_t i = 1; i < n; i++)
        if (better(worst, a[i])) worst = a[i];
    return worst;
}

/* Heap of the k best seen so far in h (k,), the worst at the root (every parent worse than its
 * children). Move h[i] down to its place. */
static void heap_sift_down(struct pi_cand *h, int32_t k, int32_t i)
{
    const struct pi_cand x = h[i];
    for (;;) {
        int32_t ch = 2 * i + 1;
        if (ch >= k) break;
        if (ch + 1 < k && better(h[ch], h[ch + 1])) ch++; /* the worse child */
        if (!better(x, h[ch])) break;
        h[i] = h[ch];
        i = ch;
    }
    h[i] = x;
}

/* The k-th best of c (n,), 0 < k < n, through a heap of k in h (k,): one comparison per candidate
 * past the first k, a sift for each that enters (about k ln(n/k) of them on unordered input, at
 * most n log k). Beats quickselect's copy and partitions when k is small, the usual case. */
static struct pi_cand heap_kth(const struct pi_cand *c, int32_t n, int32_t k, struct pi_cand *h)
{
    memcpy(h, c, (size_t)k * sizeof *h);
    for (int32_t i = k / 2 - 1; i >= 0; i--) heap_sift_down(h, k, i);
    for (int32_t i = k; i < n; i++) {
        if (better(c[i], h[0])) {
            h[0] = c[i];
            heap_sift_down(h, k, 0);
        }
    }
    return h[0];
}

/* Keep the candidates of c (n,) that are better than or equal to thr, in their order. */
static int32_t keep_from(struct pi_cand *c, int32_t n, struct pi_cand thr)
{
    int32_t j = 0;
    for (int32_t i = 0; i < n; i++)
        if (!better(thr, c[i])) c[j++] = c[i];
    return j;
}


/* ---------------------------------------------------------------- the chain */

/* Greedy without bias or penalties: the first maximum of logits (v,), skipping NaN; -1 when every
 * logit is NaN or -inf. A +inf beats everything, and the first +inf wins. */
static int32_t argmax(const float *z, int32_t v)
{
    int32_t best = -1;
    float bz = -INFINITY;
    for (int32_t i = 0; i < v; i++) {
        if (z[i] > bz) {
            bz = z[i];
            best = i;
        }
    }
    return best;
}

/* Gather the candidates of src (v,), or of cand itself when src is NULL (bias and penalties already
 * applied there), into cand in ascending id, dropping NaN and -inf. If any logit is +inf, only the
 * +inf ones stay, at logit 0 each: the limit of the softmax, all mass spread equally over them.
 * Returns the count (0: nothing left); *zmax and *best describe the first maximum. */
static int32_t gather(struct pi_cand *c, const float *src, int32_t v, float *zmax, int32_t *best)
{
    int32_t j = 0, n_posinf = 0, bid = -1;
    float bz = -INFINITY;
    for (int32_t i = 0; i < v; i++) {
        const float z = src ? src[i] : c[i].z;
        if (!(z > -INFINITY)) continue; /* NaN or -inf */
        if (z > bz) {
            bz = z;
            bid = i;
        }
        n_posinf += z == INFINITY;
        c[j++] = (struct pi_cand){z, i};
    }
    if (n_posinf > 0) {
        int32_t k = 0;
        for (int32_t i = 0; i < j; i++)
            if (c[i].z == INFINITY) c[k++] = (struct pi_cand){0.0f, c[i].id};
        j = k;
        bz = 0.0f;
    }
    *zmax = bz;
    *best = bid;
    return j;
}

/* Bucket of a logit z <= zmax by its distance below the maximum; the far tail shares the last. */
static inline int32_t bucket_of(float zmax, float z)
{
    const float d = (zmax - z) * PI_TOPP_BUCKET_SCALE;
    return d < (float)(PI_TOPP_BUCKETS - 1) ? (int32_t)d : PI_TOPP_BUCKETS - 1;
}

/* Top-p on c (n,): the worst candidate of the nucleus, the shortest prefix in candidate order whose
 * mass exp(z - zmax) reaches top_p of the total. One exp per candidate: the masses are summed per
 * logit bucket (buckets are ordered like the candidates, ties share one), the bucket where the
 * running sum crosses the target is found, and only its members are ordered, by select_mass. */
static struct pi_cand top_p_cut(pi_sampler_t *s, const struct pi_cand *c, int32_t n, float zmax)
{
    double *mass = s->bucket_mass;
    memset(mass, 0, sizeof s->bucket_mass);
    for (int32_t i = 0; i < n; i++) mass[bucket_of(zmax, c[i].z)] += pexpf(c[i].z - zmax);
    double total = 0.0;
    for (int32_t b = 0; b < PI_TOPP_BUCKETS; b++) total += mass[b];
    const double target = (double)s->p.top_p * total;
    double acc = 0.0;
    int32_t b = 0;
    while (b < PI_TOPP_BUCKETS - 1 && acc + mass[b] < target) acc += mass[b++];
    /* Only rounding can leave the last bucket short; select_mass then returns its worst member. */
    struct pi_cand *sel = s->scratch;
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++)
        if (bucket_of(zmax, c[i].z) == b) sel[m++] = c[i];
    PI_ASSERT(m > 0); /* the crossing bucket has mass, so members */
    return select_mass(sel, m, zmax, target - acc);
}

/* Top-k, top-p and min-p on cand (n,), ascending id in and out. Returns the number of survivors. */
static int32_t filter(pi_sampler_t *s, int32_t n, float zmax)
{
    struct pi_cand *c = s->cand, *sel = s->scratch;
    const int32_t k = s->p.top_k;
    if (k > 0 && k < n) {
        struct pi_cand kth;
        if (k <= PI_HEAP_MAX_K) {
            kth = heap_kth(c, n, k, sel);
        } else {
            memcpy(sel, c, (size_t)n * sizeof *c);
            kth = select_kth(sel, n, k - 1);
        }
        n = keep_from(c, n, kth);
    }
    /* Top-p's mass is relative to what top-k left (llama.cpp renormalises after each stage). Then
     * min-p: both keep a prefix of the candidate order, and p_max is the same before and after
     * top-p, so one pass applies both cuts. */
    const bool cut_p = s->p.top_p < 1.0f && n > 1;
    const bool cut_min = s->p.min_p > 0.0f;
    if (!cut_p && !cut_min) return n;
    const struct pi_cand last = cut_p ? top_p_cut(s, c, n, zmax) : c[0];
    const double zcut = cut_min ? (double)zmax + log((double)s->p.min_p) : -INFINITY;
    int32_t j = 0;
    for (int32_t i = 0; i < n; i++)
        if ((double)c[i].z >= zcut && (!cut_p || !better(last, c[i]))) c[j++] = c[i];
    return j;
}

/* Draw one of cand (n >= 1,) with probability proportional to exp((z - zmax) / temperature), walking
 * in ascending id with u in [0, 1). */
static int32_t draw(pi_sampler_t *s, int32_t n, float zmax, double u)
{
    const struct pi_cand *c = s->cand;
    double *w = s->scratch;
    const float t = s->p.temperature;
    double total = 0.0;
    for (int32_t i = 0; i < n; i++) total += w[i] = pexpf((c[i].z - zmax) / t);
    const double target = u * total;
    double acc = 0.0;
    int32_t last = 0;
    for (int32_t i = 0; i < n; i++) {
        if (w[i] > 0.0) last = i;
        acc += w[i];
        if (acc > target) return c[i].id;
    }
    return c[last].id; /* rounding left the target at the very top: the last token with weight */
}

int32_t pi_sampler_sample(pi_sampler_t *s, const float *logits)
{
    struct pi_cand *c = s->cand;
    const int32_t v = s->n_vocab;
    const double u = pi_rng_uniform(&s->rng); /* exactly one output per call, whatever follows */
    const bool greedy = s->p.temperature == 0.0f || s->p.top_k == 1;
    const bool modify = s->n_bias > 0 || penalties_active(s);
    float zmax = 0.0f;
    int32_t best = -1, n;

    if (greedy && !modify) {
        best = argmax(logits, v);
        if (best >= 0) return best;
        n = 0;
    } else if (modify) {
        for (int32_t i = 0; i < v; i++) c[i].z = logits[i];
        apply_bias(s);
        apply_penalties(s);
        n = gather(c, NULL, v, &zmax, &best);
    } else {
        n = gather(c, logits, v, &zmax, &best);
    }
    if (n == 0) {
        pi_error("sampling: no token left: every logit is NaN or -inf after bias and penalties");
        return -PI_ERR_RANGE;
    }
    if (greedy || n == 1) return best;
    n = filter(s, n, zmax);
    PI_ASSERT(n >= 1); /* the best candidate survives every stage */
    return draw(s, n, zmax, u);
}
