/*
 * tests/unit/test-sample.c - the generator against its published vectors, and every sampling stage
 * against references written here from the definitions:
 *   - an exact reference: a sort-based implementation of the whole chain (bias, penalties, top-k,
 *     top-p, min-p, temperature, the draw in ascending id) fed the same uniform number, which must
 *     pick the same token as the sampler on thousands of random cases;
 *   - statistics: many draws with a fixed seed, compared by a chi-square test at p = 1e-4 with the
 *     distribution computed from the formula; each test also shows it can fail by rejecting a
 *     wrong distribution;
 *   - greedy ties, reproducibility, parameter validation, NaN/Inf logits, bias, end-of-generation;
 *   - a timing diagnostic (not a check) at vocabulary sizes 32000 and 151936.
 * Deliberately no known-answer token sequences: those would only pin this code's own output.
 */
#include "config.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "text/sample.h"
#include "tests/tap.h"

#include <fcntl.h>
#include <time.h>

static struct pi_rng trng; /* the test's own input generator */

static double randn(void)
{
    double u1 = pi_rng_uniform(&trng), u2 = pi_rng_uniform(&trng);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
}

static int32_t randint(int32_t lo, int32_t hi) { return lo + (int32_t)pi_rng_below(&trng, (uint64_t)(hi - lo + 1)); }

static struct pi_sample_params plain(float temperature)
{
    struct pi_sample_params p;
    pi_sample_params_default(&p);
    p.temperature = temperature;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    return p;
}

/* ---------------------------------------------------------------- generator */

static void test_rng(void)
{
    /* xoshiro256** from state {1, 2, 3, 4}: the reference implementation's first ten outputs (as
     * published in the test suite of the rand_xoshiro crate). */
    static const uint64_t xo[10] = {11520ULL, 0ULL, 1509978240ULL, 1215971899390074240ULL,
                                    1216172134540287360ULL, 607988272756665600ULL, 16172922978634559625ULL,
                                    8476171486693032832ULL, 10595114339597558777ULL, 2904607092377533576ULL};
    struct pi_rng r = {{1, 2, 3, 4}};
    int ok = 1;
    for (int i = 0; i < 10; i++) ok &= pi_rng_next(&r) == xo[i];
    tap_ok(ok, "xoshiro256** matches the reference outputs from state {1,2,3,4}");

    /* SplitMix64: seed 1234567 (the reference splitmix64.c example) and seed 0. */
    static const uint64_t sm[5] = {6457827717110365317ULL, 3203168211198807973ULL, 9817491932198370423ULL,
                                   4593380528125082431ULL, 16408922859458223821ULL};
    static const uint64_t sm0[4] = {0xe220a8397b1dcdafULL, 0x6e789e6aa1b965f4ULL, 0x06c45d188009454fULL,
                                    0xf88bb8a8724c81ecULL};
    uint64_t st = 1234567;
    ok = 1;
    for (int i = 0; i < 5; i++) ok &= pi_rng_splitmix64(&st) == sm[i];
    tap_ok(ok, "splitmix64 matches the reference outputs from seed 1234567");
    pi_rng_seed(&r, 0);
    ok = 1;
    for (int i = 0; i < 4; i++) ok &= r.s[i] == sm0[i];
    tap_ok(ok, "pi_rng_seed(0) fills the state with splitmix64's first four outputs");

    /* uniform: in [0,1) and its mean and variance; below: in range and unbiased enough. */
    pi_rng_seed(&r, 42);
    double sum = 0, sum2 = 0;
    int in_range = 1;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double u = pi_rng_uniform(&r);
        in_range &= u >= 0.0 && u < 1.0;
        sum += u;
        sum2 += u * u;
    }
    tap_ok(in_range, "uniform draws lie in [0, 1)");
    tap_near(sum / n, 0.5, 5 * sqrt(1.0 / 12 / n), "uniform mean is 1/2 within 5 sigma");
    tap_near(sum2 / n - (sum / n) * (sum / n), 1.0 / 12, 0.002, "uniform variance is 1/12");
    int counts[7] = {0};
    in_range = 1;
    for (int i = 0; i < 70000; i++) {
        uint64_t b = pi_rng_below(&r, 7);
        in_range &= b < 7;
        if (b < 7) counts[b]++;
    }
    double chi = 0;
    for (int i = 0; i < 7; i++) chi += (counts[i] - 10000.0) * (counts[i] - 10000.0) / 10000.0;
    tap_ok(in_range && chi < 27.9, "pi_rng_below(7) is in range and uniform (chi2 %.2f, 6 df, p=1e-4 cut 27.9)", chi);
}

/* ---------------------------------------------------------------- validation */

static void test_validation(void)
{
    struct pi_sample_params d, p;
    pi_sample_params_default(&d);
    tap_is_int(pi_sample_params_check(&d), 0, "defaults are valid");
    /* One field at a time, each out of range in every way that matters (NaN included). */
    const float fnan = NAN, finf = INFINITY;
    struct {
        const char *what;
        int field;
        double value;
    } cases[] = {
        {"temperature -0.1", 0, -0.1}, {"temperature NaN", 0, fnan}, {"temperature inf", 0, finf},
        {"top_k -1", 1, -1},           {"top_p 0", 2, 0.0},          {"top_p 1.01", 2, 1.01},
        {"top_p NaN", 2, fnan},        {"top_p -0.5", 2, -0.5},      {"min_p -0.01", 3, -0.01},
        {"min_p 1.5", 3, 1.5},         {"min_p NaN", 3, fnan},       {"repeat_penalty 0", 4, 0.0},
        {"repeat_penalty -1", 4, -1},  {"repeat_penalty NaN", 4, fnan}, {"repeat_penalty inf", 4, finf},
        {"repeat_last_n -2", 5, -2},   {"repeat_last_n 2^30", 5, 1 << 30}, {"frequency_penalty NaN", 6, fnan},
        {"frequency_penalty -inf", 6, -finf}, {"presence_penalty NaN", 7, fnan}, {"presence_penalty inf", 7, finf},
    };
    int all = 1;
    for (size_t i = 0; i < PI_ARRAY_LEN(cases); i++) {
        p = d;
        switch (cases[i].field) {
        case 0: p.temperature = (float)cases[i].value; break;
        case 1: p.top_k = (int32_t)cases[i].value; break;
        case 2: p.top_p = (float)cases[i].value; break;
        case 3: p.min_p = (float)cases[i].value; break;
        case 4: p.repeat_penalty = (float)cases[i].value; break;
        case 5: p.repeat_last_n = (int32_t)cases[i].value; break;
        case 6: p.frequency_penalty = (float)cases[i].value; break;
        default: p.presence_penalty = (float)cases[i].value; break;
        }
        pi_sampler_t *s = pi_sampler_new(100, &p);
        int ok = pi_sample_params_check(&p) == -PI_ERR_INVAL && s == NULL;
        if (!ok) tap_diag("  %s accepted", cases[i].what);
        all &= ok;
        pi_sampler_destroy(&s);
    }
    tap_ok(all, "each out-of-range or NaN parameter gives -PI_ERR_INVAL and no sampler (%zu cases)",
           PI_ARRAY_LEN(cases));
    /* Edges that are valid. */
    p = d;
    p.temperature = 0;
    p.top_p = 1;
    p.min_p = 1;
    p.repeat_last_n = -1;
    p.frequency_penalty = -2;
    tap_is_int(pi_sample_params_check(&p), 0, "edge values (T 0, top_p 1, min_p 1, last_n -1, negative penalty) are valid");

    pi_sampler_t *s = pi_sampler_new(0, &d);
    tap_ok(s == NULL, "vocabulary size 0 is refused");
    s = pi_sampler_new(50, &d);
    p = d;
    p.top_p = NAN;
    tap_is_int(pi_sampler_set_params(s, &p), -PI_ERR_INVAL, "set_params refuses NaN top_p");
    tap_ok(pi_sampler_params(s)->top_p == d.top_p, "and keeps the old parameters");
    int32_t tok[2] = {3, 50};
    float bias[2] = {1.0f, 1.0f};
    tap_is_int(pi_sampler_set_logit_bias(s, tok, bias, 2), -PI_ERR_RANGE, "logit bias on token 50 of 50 is refused");
    tok[1] = 4;
    bias[1] = NAN;
    tap_is_int(pi_sampler_set_logit_bias(s, tok, bias, 2), -PI_ERR_INVAL, "NaN logit bias is refused");
    tap_is_int(pi_sampler_accept(s, -1), -PI_ERR_RANGE, "accepting token -1 is refused");
    tap_is_int(pi_sampler_accept(s, 50), -PI_ERR_RANGE, "accepting token n_vocab is refused");
    tap_is_int(pi_sampler_set_eog(s, tok, 1), 0, "end-of-generation ids are set");
    tap_ok(pi_sampler_is_eog(s, 3) && !pi_sampler_is_eog(s, 4) && !pi_sampler_is_eog(s, -7), "is_eog answers for the set only");
    pi_sampler_destroy(&s);
    pi_sampler_destroy(&s);
    tap_ok(s == NULL, "destroy nulls the pointer and accepts NULL");
}

/* ---------------------------------------------------------------- the exact reference */

struct ref_case {
    int32_t v;
    struct pi_sample_params p;
    const int32_t *prompt; /* window only */
    int32_t n_prompt;
    const int32_t *gen;    /* window and counts */
    int32_t n_gen;
    const int32_t *bias_tok;
    const float *bias_val;
    int32_t n_bias;
};

struct ref_key {
    float z;
    int32_t id;
};

static int ref_cmp(const void *pa, const void *pb)
{
    const struct ref_key *a = pa, *b = pb;
    if (a->z != b->z) return a->z > b->z ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* The chain from its definition, with a full sort. Returns the token for uniform u; *fragile is set
 * when a decision lies within rounding distance of a boundary (the case is then not compared). */
static int32_t ref_sample(const struct ref_case *rc, const float *logits, double u, float *z, int32_t *cnt,
                          char *inwin, struct ref_key *k, int *fragile)
{
    const struct pi_sample_params *p = &rc->p;
    const int32_t v = rc->v;
    *fragile = 0;
    for (int32_t i = 0; i < v; i++) {
        z[i] = logits[i];
        cnt[i] = 0;
        inwin[i] = 0;
    }
    for (int32_t i = 0; i < rc->n_bias; i++) z[rc->bias_tok[i]] += rc->bias_val[i];
    int32_t total = rc->n_prompt + rc->n_gen;
    int32_t first = p->repeat_last_n < 0 ? 0 : PI_MAX(0, total - p->repeat_last_n);
    for (int32_t i = first; i < total; i++) inwin[i < rc->n_prompt ? rc->prompt[i] : rc->gen[i - rc->n_prompt]] = 1;
    for (int32_t i = 0; i < rc->n_gen; i++) cnt[rc->gen[i]]++;
    for (int32_t i = 0; i < v; i++) {
        if (inwin[i]) z[i] = z[i] > 0 ? z[i] / p->repeat_penalty : z[i] * p->repeat_penalty;
        if (cnt[i]) z[i] -= (float)cnt[i] * p->frequency_penalty + p->presence_penalty;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < v; i++)
        if (!isnan(z[i]) && z[i] > -INFINITY) k[n++] = (struct ref_key){z[i], i};
    if (n == 0) return -PI_ERR_RANGE;
    qsort(k, (size_t)n, sizeof *k, ref_cmp);
    if (p->temperature == 0 || p->top_k == 1) return k[0].id;
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    const double zmax = k[0].z;
    int32_t keep = n;
    if (p->top_p < 1) {
        double tot = 0, cum = 0;
        for (int32_t i = 0; i < n; i++) tot += exp(k[i].z - zmax);
        for (int32_t i = 0; i < n; i++) {
            cum += exp(k[i].z - zmax);
            if (fabs(cum - p->top_p * tot) < 1e-5 * tot) *fragile = 1;
            if (cum >= p->top_p * tot) {
                keep = i + 1;
                break;
            }
        }
    }
    for (int32_t i = 0; i < keep; i++) {
        /* min-p as a probability ratio: p_i >= min_p * p_max. */
        double ratio = exp(k[i].z - zmax);
        if (fabs(ratio - p->min_p) < 1e-5 * ratio) *fragile = 1;
        if (ratio < p->min_p) {
            keep = i;
            break;
        }
    }
    /* The draw: survivors by ascending id. */
    qsort(k, (size_t)keep, sizeof *k, ref_cmp); /* already sorted by z; re-sort by id below */
    for (int32_t i = 0; i < v; i++) inwin[i] = 0;
    for (int32_t i = 0; i < keep; i++) inwin[k[i].id] = 1;
    double tot = 0;
    for (int32_t i = 0; i < v; i++)
        if (inwin[i]) tot += exp((z[i] - zmax) / p->temperature);
    double target = u * tot, acc = 0;
    int32_t pick = -1;
    for (int32_t i = 0; i < v; i++) {
        if (!inwin[i]) continue;
        acc += exp((z[i] - zmax) / p->temperature);
        if (fabs(acc - target) < 1e-5 * tot) *fragile = 1;
        if (acc > target && pick < 0) pick = i;
    }
    return pick;
}

static void random_params(struct pi_sample_params *p, int32_t v)
{
    pi_sample_params_default(p);
    p->temperature = randint(0, 9) == 0 ? 0.0f : (float)(0.2 + 1.8 * pi_rng_uniform(&trng));
    p->top_k = randint(0, 2) == 0 ? 0 : randint(1, v + 5);
    p->top_p = randint(0, 2) == 0 ? 1.0f : (float)(0.3 + 0.69 * pi_rng_uniform(&trng));
    p->min_p = randint(0, 2) == 0 ? 0.0f : (float)(0.3 * pi_rng_uniform(&trng));
    p->repeat_penalty = randint(0, 1) ? 1.0f : (float)(0.8 + 0.8 * pi_rng_uniform(&trng));
    p->repeat_last_n = randint(-1, 40);
    p->frequency_penalty = randint(0, 1) ? 0.0f : (float)(2 * pi_rng_uniform(&trng) - 1);
    p->presence_penalty = randint(0, 1) ? 0.0f : (float)(2 * pi_rng_uniform(&trng) - 1);
    p->seed = pi_rng_next(&trng);
}

static void test_exact_reference(void)
{
    enum { MAXV = 8000, CASES = 400, DRAWS = 6 };
    float *logits = malloc(MAXV * sizeof *logits), *z = malloc(MAXV * sizeof *z);
    int32_t *cnt = malloc(MAXV * sizeof *cnt);
    char *inwin = malloc(MAXV);
    struct ref_key *k = malloc(MAXV * sizeof *k);
    int32_t prompt[64], gen[64], bias_tok[8];
    float bias_val[8];
    int compared = 0, fragile_n = 0, mismatches = 0;
    for (int c = 0; c < CASES; c++) {
        struct ref_case rc = {.prompt = prompt, .gen = gen, .bias_tok = bias_tok, .bias_val = bias_val};
        rc.v = c < 20 ? randint(2, 8) : c % 40 == 39 ? randint(4200, MAXV) : randint(2, 2000);
        random_params(&rc.p, rc.v);
        if (c % 40 == 39) rc.p.top_k = randint(4097, rc.v + 5); /* past the heap: quickselect */
        /* Logits: normal with a random scale, some quantised to make ties, a few non-finite. */
        double scale = c % 40 == 39 ? 0.05 : 0.5 + 4 * pi_rng_uniform(&trng); /* flat: every k counts */
        int quant = randint(0, 3) == 0;
        for (int32_t i = 0; i < rc.v; i++) {
            double x = scale * randn();
            logits[i] = (float)(quant ? round(x) : x);
            if (randint(0, 200) == 0) logits[i] = randint(0, 1) ? NAN : -INFINITY;
        }
        rc.n_prompt = randint(0, 30);
        rc.n_gen = randint(0, 30);
        for (int32_t i = 0; i < rc.n_prompt; i++) prompt[i] = randint(0, rc.v - 1);
        for (int32_t i = 0; i < rc.n_gen; i++) gen[i] = randint(0, PI_MIN(rc.v - 1, 20)); /* repeats */
        rc.n_bias = randint(0, 1) ? 0 : randint(1, 8);
        for (int32_t i = 0; i < rc.n_bias; i++) {
            bias_tok[i] = randint(0, rc.v - 1);
            bias_val[i] = randint(0, 5) == 0 ? -INFINITY : (float)(3 * randn());
        }
        pi_sampler_t *s = pi_sampler_new(rc.v, &rc.p);
        if (!s || pi_sampler_set_logit_bias(s, bias_tok, bias_val, (size_t)rc.n_bias) != 0 ||
            pi_sampler_accept_prompt(s, prompt, (size_t)rc.n_prompt) != 0)
            tap_bail("sampler setup failed in case %d", c);
        for (int32_t i = 0; i < rc.n_gen; i++) pi_sampler_accept(s, gen[i]);
        struct pi_rng shadow; /* the documented contract: one output per call */
        pi_rng_seed(&shadow, rc.p.seed);
        for (int d = 0; d < DRAWS; d++) {
            double u = pi_rng_uniform(&shadow);
            int fragile;
            int32_t want = ref_sample(&rc, logits, u, z, cnt, inwin, k, &fragile);
            int32_t got = pi_sampler_sample(s, logits);
            if (fragile) {
                fragile_n++;
                continue;
            }
            compared++;
            if (got != want && mismatches++ < 5)
                tap_diag("  case %d draw %d: V %d T %g k %d p %g minp %g rp %g n %d: got %d want %d", c, d, rc.v,
                         (double)rc.p.temperature, rc.p.top_k, (double)rc.p.top_p, (double)rc.p.min_p,
                         (double)rc.p.repeat_penalty, rc.p.repeat_last_n, got, want);
        }
        pi_sampler_destroy(&s);
    }
    tap_ok(mismatches == 0 && compared > CASES * DRAWS * 9 / 10,
           "the sampler picks the reference's token for the same uniform (%d compared, %d near a boundary, %d differ)",
           compared, fragile_n, mismatches);
    free(logits);
    free(z);
    free(cnt);
    free(inwin);
    free(k);
}

/* ---------------------------------------------------------------- statistics */

/* The chi-square critical value at upper tail p = 1e-4 (Wilson-Hilferty; z = 3.719). */
static double chi2_crit(int df)
{
    double a = 2.0 / (9.0 * df);
    double t = 1.0 - a + 3.719 * sqrt(a);
    return df * t * t * t;
}

/* Chi-square of counts (v,) against probabilities want (v,) over n draws; cells with probability 0
 * must have count 0 (else the statistic is infinite). Returns the statistic, *df the degrees. */
static double chi2(const int *counts, const double *want, int v, int n, int *df)
{
    double x = 0;
    *df = -1;
    for (int i = 0; i < v; i++) {
        double e = want[i] * n;
        if (want[i] == 0) {
            if (counts[i]) return INFINITY;
            continue;
        }
        x += (counts[i] - e) * (counts[i] - e) / e;
        (*df)++;
    }
    return x;
}

/* Draw n tokens from s with logits (v,) into counts. */
static void draw_counts(pi_sampler_t *s, const float *logits, int v, int n, int *counts)
{
    memset(counts, 0, (size_t)v * sizeof *counts);
    for (int i = 0; i < n; i++) {
        int32_t t = pi_sampler_sample(s, logits);
        if (t >= 0 && t < v) counts[t]++;
    }
}

/* softmax(z / t) over the tokens with keep[i], into w. */
static void softmax_keep(const float *z, const char *keep, int v, double t, double *w)
{
    double m = -INFINITY, tot = 0;
    for (int i = 0; i < v; i++)
        if (keep[i] && z[i] > m) m = z[i];
    for (int i = 0; i < v; i++) tot += w[i] = keep[i] ? exp((z[i] - m) / t) : 0.0;
    for (int i = 0; i < v; i++) w[i] /= tot;
}

/* One statistical check: draws from s match want (and do not match wrong, when given). */
static void check_dist(const char *name, pi_sampler_t *s, const float *logits, int v, int n, const double *want,
                       const double *wrong)
{
    int counts[64];
    int df;
    draw_counts(s, logits, v, n, counts);
    double x = chi2(counts, want, v, n, &df);
    tap_ok(df > 0 && x < chi2_crit(df), "%s: chi2 %.1f < %.1f (%d df, p = 1e-4)", name, x, chi2_crit(df), df);
    if (wrong) {
        double y = chi2(counts, wrong, v, n, &df);
        tap_ok(df <= 0 || y > chi2_crit(df), "%s: the test rejects a wrong distribution (chi2 %.1f)", name, y);
    }
}

static void test_statistics(void)
{
    enum { V = 16, N = 40000 };
    float logits[V];
    char keep[V];
    double want[V], wrong[V];
    pi_rng_seed(&trng, 7);
    for (int i = 0; i < V; i++) logits[i] = (float)(1.5 * randn());

    /* Plain temperature sampling: softmax(z / 0.7); the wrong one is softmax(z). */
    struct pi_sample_params p = plain(0.7f);
    p.seed = 11;
    pi_sampler_t *s = pi_sampler_new(V, &p);
    memset(keep, 1, V);
    softmax_keep(logits, keep, V, 0.7, want);
    softmax_keep(logits, keep, V, 1.0, wrong);
    check_dist("temperature 0.7", s, logits, V, N, want, wrong);
    pi_sampler_destroy(&s);

    /* Top-k 5 at T 1: renormalised over the five best (found here by counting). */
    struct ref_key k[V];
    for (int i = 0; i < V; i++) k[i] = (struct ref_key){logits[i], i};
    qsort(k, V, sizeof *k, ref_cmp);
    p = plain(1.0f);
    p.top_k = 5;
    s = pi_sampler_new(V, &p);
    memset(keep, 0, V);
    for (int i = 0; i < 5; i++) keep[k[i].id] = 1;
    softmax_keep(logits, keep, V, 1.0, want);
    memset(keep, 0, V);
    for (int i = 0; i < 6; i++) keep[k[i].id] = 1;
    softmax_keep(logits, keep, V, 1.0, wrong);
    check_dist("top-k 5", s, logits, V, N, want, wrong);
    pi_sampler_destroy(&s);

    /* Top-p 0.8 at T 1.3: the nucleus by cumulative probability at T 1 (before temperature). */
    p = plain(1.3f);
    p.top_p = 0.8f;
    s = pi_sampler_new(V, &p);
    memset(keep, 1, V);
    double pr[V];
    softmax_keep(logits, keep, V, 1.0, pr);
    double cum = 0;
    memset(keep, 0, V);
    int nucleus = 0;
    for (int i = 0; i < V && cum < 0.8; i++, nucleus++) {
        keep[k[i].id] = 1;
        cum += pr[k[i].id];
    }
    softmax_keep(logits, keep, V, 1.3, want);
    keep[k[nucleus].id] = 1;
    softmax_keep(logits, keep, V, 1.3, wrong);
    check_dist("top-p 0.8 then T 1.3", s, logits, V, N, want, wrong);
    pi_sampler_destroy(&s);

    /* Min-p 0.1: tokens with p >= 0.1 p_max, renormalised. */
    p = plain(1.0f);
    p.min_p = 0.1f;
    s = pi_sampler_new(V, &p);
    for (int i = 0; i < V; i++) keep[i] = pr[i] >= 0.1 * pr[k[0].id];
    softmax_keep(logits, keep, V, 1.0, want);
    memset(keep, 1, V);
    check_dist("min-p 0.1", s, logits, V, N, want, pr);
    pi_sampler_destroy(&s);

    /* Penalties: history 3 3 5 9 with the repeat window the last 3 (3 5 9), repeat 1.3, frequency
     * 0.4, presence 0.6; the prompt token 0 is in the window only when the window covers it. */
    p = plain(1.0f);
    p.repeat_penalty = 1.3f;
    p.repeat_last_n = 3;
    p.frequency_penalty = 0.4f;
    p.presence_penalty = 0.6f;
    s = pi_sampler_new(V, &p);
    int32_t prompt[1] = {0}, hist[4] = {3, 3, 5, 9};
    pi_sampler_accept_prompt(s, prompt, 1);
    for (int i = 0; i < 4; i++) pi_sampler_accept(s, hist[i]);
    float pen[V];
    for (int i = 0; i < V; i++) {
        float zz = logits[i];
        int c = (i == 3) * 2 + (i == 5) + (i == 9);
        int w = i == 3 || i == 5 || i == 9;
        if (w) zz = zz > 0 ? zz / 1.3f : zz * 1.3f;
        if (c) zz -= (float)c * 0.4f + 0.6f;
        pen[i] = zz;
    }
    memset(keep, 1, V);
    softmax_keep(pen, keep, V, 1.0, want);
    check_dist("repeat / frequency / presence penalties", s, logits, V, N, want, pr);
    pi_sampler_destroy(&s);

    /* Logit bias: +2 on token 0, ban token 1. */
    p = plain(1.0f);
    s = pi_sampler_new(V, &p);
    int32_t bt[2] = {0, 1};
    float bv[2] = {2.0f, -INFINITY};
    pi_sampler_set_logit_bias(s, bt, bv, 2);
    float biased[V];
    memcpy(biased, logits, sizeof biased);
    biased[0] += 2.0f;
    keep[1] = 0;
    softmax_keep(biased, keep, V, 1.0, want);
    check_dist("logit bias (+2, -inf)", s, logits, V, N, want, pr);
    pi_sampler_destroy(&s);
}

/* Larger vocabularies: the drawn tokens never leave the set each filter allows. */
static void test_support(void)
{
    enum { V = 5000, N = 1000 };
    float *logits = malloc(V * sizeof *logits);
    struct ref_key *k = malloc(V * sizeof *k);
    char *allowed = malloc(V);
    for (int i = 0; i < V; i++) logits[i] = (float)(3 * randn());
    for (int i = 0; i < V; i++) k[i] = (struct ref_key){logits[i], i};
    qsort(k, V, sizeof *k, ref_cmp);
    double tot = 0;
    for (int i = 0; i < V; i++) tot += exp(k[i].z - k[0].z);

    struct {
        const char *name;
        int32_t top_k;
        float top_p, min_p;
    } f[] = {{"top-k 1", 1, 1, 0}, {"top-k 7", 7, 1, 0}, {"top-k 1000", 1000, 1, 0}, {"top-p 0.5", 0, 0.5f, 0},
             {"top-p 0.95", 0, 0.95f, 0}, {"min-p 0.05", 0, 1, 0.05f}, {"min-p 1 (the max only)", 0, 1, 1.0f},
             {"top-k 50 + top-p 0.9 + min-p 0.02", 50, 0.9f, 0.02f}, {"top-k 4500 (quickselect)", 4500, 1, 0}};
    for (size_t c = 0; c < PI_ARRAY_LEN(f); c++) {
        /* The allowed set, from the definitions: k best, the nucleus, p >= min_p p_max. */
        int32_t n = f[c].top_k ? f[c].top_k : V;
        double ktot = 0, cum = 0;
        for (int32_t i = 0; i < n; i++) ktot += exp(k[i].z - k[0].z);
        memset(allowed, 0, V);
        int32_t n_allowed = 0;
        for (int32_t i = 0; i < n; i++) {
            double w = exp(k[i].z - k[0].z);
            if (w < f[c].min_p) break;
            allowed[k[i].id] = 1;
            n_allowed++;
            cum += w;
            if (f[c].top_p < 1 && cum >= f[c].top_p * ktot) break;
        }
        struct pi_sample_params p = plain(1.5f);
        p.top_k = f[c].top_k;
        p.top_p = f[c].top_p;
        p.min_p = f[c].min_p;
        pi_sampler_t *s = pi_sampler_new(V, &p);
        int outside = 0, distinct = 0;
        char *seen = calloc(V, 1);
        for (int i = 0; i < N; i++) {
            int32_t t = pi_sampler_sample(s, logits);
            if (t < 0 || t >= V || !allowed[t]) outside++;
            else if (!seen[t]++) distinct++;
        }
        tap_ok(outside == 0 && (n_allowed == 1 || distinct > 1), "%s: %d draws stay in the %d allowed tokens (%d seen)",
               f[c].name, N, n_allowed, distinct);
        free(seen);
        pi_sampler_destroy(&s);
    }
    (void)tot;
    free(logits);
    free(k);
    free(allowed);
}

/* ---------------------------------------------------------------- greedy, seeds, non-finite */

static void test_greedy(void)
{
    enum { V = 1000 };
    float logits[V];
    int ok = 1, ok_k1 = 0;
    struct pi_sample_params p0 = plain(0.0f), p1 = plain(1.0f);
    p1.top_k = 1;
    pi_sampler_t *g = pi_sampler_new(V, &p0), *k1 = pi_sampler_new(V, &p1);
    for (int trial = 0; trial < 200; trial++) {
        /* Coarse values so the maximum is often shared. */
        for (int i = 0; i < V; i++) logits[i] = (float)randint(-20, trial % 2 ? 3 : 20);
        int32_t want = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[want]) want = i;
        ok &= pi_sampler_sample(g, logits) == want;
        ok_k1 += pi_sampler_sample(k1, logits) == want;
    }
    tap_ok(ok, "temperature 0 picks the argmax, lowest id on ties (200 trials)");
    tap_is_int(ok_k1, 200, "top-k 1 is greedy too");
    pi_sampler_destroy(&g);
    pi_sampler_destroy(&k1);
}

static void run_sequence(pi_sampler_t *s, const float *logits, int v, int n, int32_t *out)
{
    for (int i = 0; i < n; i++) {
        out[i] = pi_sampler_sample(s, logits);
        pi_sampler_accept(s, out[i]);
        (void)v;
    }
}

static void test_seeds(void)
{
    enum { V = 2000, N = 200 };
    float *logits = malloc(V * sizeof *logits);
    for (int i = 0; i < V; i++) logits[i] = (float)(2 * randn());
    int32_t a[N], b[N], c[N];
    struct pi_sample_params p;
    pi_sample_params_default(&p);
    p.repeat_penalty = 1.1f; /* history feeds back into the logits */
    p.presence_penalty = 0.3f;
    p.seed = 1234;
    pi_sampler_t *s1 = pi_sampler_new(V, &p), *s2 = pi_sampler_new(V, &p);
    run_sequence(s1, logits, V, N, a);
    run_sequence(s2, logits, V, N, b);
    tap_ok(memcmp(a, b, sizeof a) == 0, "two samplers with the same seed produce the same %d tokens", N);
    pi_sampler_reset(s1);
    run_sequence(s1, logits, V, N, c);
    tap_ok(memcmp(a, c, sizeof a) == 0, "reset reproduces the sequence");
    p.seed = 1235;
    pi_sampler_set_params(s2, &p);
    run_sequence(s2, logits, V, N, b);
    int same = 0;
    for (int i = 0; i < N; i++) same += a[i] == b[i];
    tap_ok(same < N / 2, "seed 1235 gives a different sequence (%d of %d positions agree)", same, N);
    pi_sampler_destroy(&s1);
    pi_sampler_destroy(&s2);
    free(logits);
}

static void test_nonfinite(void)
{
    enum { V = 8, N = 20000 };
    float logits[V] = {1, NAN, 2, NAN, 0.5f, -INFINITY, 2, -1};
    struct pi_sample_params p = plain(1.0f);
    pi_sampler_t *s = pi_sampler_new(V, &p);
    int counts[V];
    draw_counts(s, logits, V, N, counts);
    tap_ok(counts[1] == 0 && counts[3] == 0 && counts[5] == 0, "NaN and -inf logits are never drawn");
    double want[V];
    char keep[V] = {1, 0, 1, 0, 1, 0, 1, 1};
    float z[V];
    for (int i = 0; i < V; i++) z[i] = keep[i] ? logits[i] : 0;
    softmax_keep(z, keep, V, 1.0, want);
    int df;
    double x = chi2(counts, want, V, N, &df);
    tap_ok(x < chi2_crit(df), "the other tokens keep their softmax distribution (chi2 %.1f, %d df)", x, df);

    float allnan[V];
    for (int i = 0; i < V; i++) allnan[i] = i % 2 ? NAN : -INFINITY;
    tap_is_int(pi_sampler_sample(s, allnan), -PI_ERR_RANGE, "all NaN / -inf: -PI_ERR_RANGE");
    struct pi_sample_params g = plain(0.0f);
    pi_sampler_t *sg = pi_sampler_new(V, &g);
    tap_is_int(pi_sampler_sample(sg, logits), 2, "greedy skips NaN and takes the lowest id of the tied max");

    float inf2[V] = {1, INFINITY, 2, NAN, INFINITY, 0, 3, INFINITY};
    tap_is_int(pi_sampler_sample(sg, inf2), 1, "greedy with +inf logits takes the lowest +inf id");
    draw_counts(s, inf2, V, 3000, counts);
    int x3[3] = {counts[1], counts[4], counts[7]};
    double w3[3] = {1.0 / 3, 1.0 / 3, 1.0 / 3};
    x = chi2(x3, w3, 3, 3000, &df);
    tap_ok(counts[1] + counts[4] + counts[7] == 3000 && x < chi2_crit(df),
           "+inf logits: uniform over the +inf tokens only (%d %d %d)", counts[1], counts[4], counts[7]);

    /* Bias +inf forces a token; with T > 0 it is then the only one. */
    int32_t bt = 5;
    float bv = INFINITY;
    pi_sampler_set_logit_bias(s, &bt, &bv, 1);
    float fin[V] = {1, 2, 3, 4, 5, 6, 7, 8};
    int forced = 1;
    for (int i = 0; i < 100; i++) forced &= pi_sampler_sample(s, fin) == 5;
    tap_ok(forced, "logit bias +inf forces its token");
    pi_sampler_destroy(&s);
    pi_sampler_destroy(&sg);
}

/* ---------------------------------------------------------------- timing (diagnostic only) */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time: the CI box is shared */
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void bench(void)
{
    static const int32_t vocabs[2] = {32000, 151936};
    for (int vi = 0; vi < 2; vi++) {
        int32_t v = vocabs[vi];
        float *logits = malloc((size_t)v * sizeof *logits);
        /* Roughly model-like: a peaked head over a broad tail. */
        for (int32_t i = 0; i < v; i++) logits[i] = (float)(2.5 * randn());
        for (int i = 0; i < 20; i++) logits[randint(0, v - 1)] += 8.0f;
        struct {
            const char *name;
            float t;
            int32_t k;
            float tp, mp;
        } cfg[] = {{"greedy", 0, 0, 1, 0}, {"defaults (k40 p.95 minp.05 T.8)", 0.8f, 40, 0.95f, 0.05f},
                   {"top-p 0.9 alone", 1, 0, 0.9f, 0}, {"top-k 0, T 1", 1, 0, 1, 0}};
        for (size_t c = 0; c < PI_ARRAY_LEN(cfg); c++) {
            struct pi_sample_params p = plain(cfg[c].t);
            p.top_k = cfg[c].k;
            p.top_p = cfg[c].tp;
            p.min_p = cfg[c].mp;
            pi_sampler_t *s = pi_sampler_new(v, &p);
            const int reps = 20;
            pi_sampler_sample(s, logits); /* first touch of the scratch pages */
            double t0 = now_s();
            for (int r = 0; r < reps; r++) pi_sampler_sample(s, logits);
            tap_diag("timing V=%d %-34s %8.1f us CPU/token", v, cfg[c].name, 1e6 * (now_s() - t0) / reps);
            pi_sampler_destroy(&s);
        }
        free(logits);
    }
}

int main(void)
{
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) pi_log_set_fd(devnull); /* the validation cases log on purpose */
    pi_rng_seed(&trng, 20261125);
    test_rng();
    test_validation();
    test_greedy();
    test_exact_reference();
    test_statistics();
    test_support();
    test_seeds();
    test_nonfinite();
    bench();
    return tap_done();
}
