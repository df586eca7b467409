/*
 * tests/unit/test-ffn-split.c - the neuron-subset FFN kernel (pi_ffn_neurons in kernels/cpu/ops.h).
 *
 *  - against a double-precision scalar reference built from the dequantised rows, on fresh random
 *    layers of several weight types, for SiLU, ReLU and dReLU, single-threaded and on a pool;
 *  - any random split of the neurons into parts, computed separately and summed, equals the whole
 *    layer (the partial sums the GPU and CPU workers will exchange);
 *  - ReLU/dReLU: the neurons counted active are those with a positive gate (and up), and the up and
 *    down rows of inactive neurons are never read (they are poisoned with NaN here);
 *  - reproducibility: repeated calls on pools of 2 and 3 threads give the same bits every time;
 *  - the batched kernel (pi_ffn_neurons_batch) gives the bits of one call per token, whichever path
 *    it takes, and also leaves inactive neurons' rows unread;
 *  - a real layer of the tiny llama against the dense product with the file's own ffn_down;
 *  - activation thresholds (issue 18): the skip rule's cases; all-zero thresholds give the bits of no
 *    thresholds; random per-neuron thresholds equal a reference over the neurons the rule keeps (the
 *    kernel's own gate values decide), the skipped neurons' up and down rows never read (poisoned);
 *    the batch kernel gives the bits of one call per token; pi_ffn_act_min zeroes exactly the skipped
 *    and gives pi_ffn_act's bits elsewhere;
 *  - in every kernel variant, a one-part list gives the bits of pi_vec_dot and pi_vec_mad in list
 *    order (the quads of rows and the queue of active neurons keep the order of every sum).
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "model/model.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/quant.h"
#include "tests/tap.h"

#define D 256
#define FF 384

static uint64_t rng_state = 0x853c49e6748fea9bull;

static float frand(void) /* uniform [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

/* A weight (rows, cols) of type t quantised from src (rows, cols) f32; data is malloc-ed. */
static struct pi_weight make_weight(enum pi_type t, int64_t rows, int64_t cols, const float *src)
{
    uint64_t rb;
    PI_ASSERT(pi_type_row_bytes(t, (uint64_t)cols, &rb));
    char *data = malloc((size_t)rb * (size_t)rows);
    for (int64_t r = 0; r < rows; r++) pi_quantize_row(t, src + r * cols, data + r * rb, cols);
    return (struct pi_weight){t, rows, cols, (size_t)rb, data, NULL, NULL, NULL};
}

struct rlayer {
    struct pi_layer L;
    float *gate, *up, *down_t; /* dequantised (FF, D) */
};

/* With g_grouped, make_layer's down_t (Q4_0 or Q8_0) is the grouped transposition (kernels/cpu/quant.h)
 * of a random ffn_down (D, FF) of that type, and R->down_t that matrix's dequantised columns. */
static bool g_grouped;

static const char *dt_name(enum pi_type dt) { return g_grouped ? (dt == PI_TYPE_Q4_0 ? "q4_0 grouped" : "q8_0 grouped") : pi_type_name(dt); }

static void make_layer(struct rlayer *R, enum pi_type wt, enum pi_type dt)
{
    float *src = malloc(sizeof(float) * FF * D);
    float **dst[3] = {&R->gate, &R->up, &R->down_t};
    struct pi_weight *w[3] = {&R->L.ffn_gate, &R->L.ffn_up, &R->L.ffn_down_t};
    memset(&R->L, 0, sizeof R->L);
    for (int k = 0; k < 3; k++) {
        for (int64_t i = 0; i < (int64_t)FF * D; i++) src[i] = frand() * 0.1f;
        *dst[k] = malloc(sizeof(float) * FF * D);
        if (k == 2 && g_grouped) {
            struct pi_weight down = make_weight(dt, D, FF, src); /* (D, FF): column i is neuron i's */
            const size_t rb = pi_grouped_row_bytes(dt, D);
            void *q = malloc(rb * FF);
            uint16_t *s = malloc(sizeof(uint16_t) * (FF / 32) * D);
            PI_ASSERT(rb > 0 && q && s);
            pi_grouped_from_cols(&down, 0, FF / 32, q, s);
            *w[2] = (struct pi_weight){dt, FF, D, rb, q, NULL, s, NULL};
            float *row = malloc(sizeof(float) * FF);
            for (int64_t r = 0; r < D; r++) {
                pi_dequant_row(dt, pi_weight_row(&down, r), row, FF);
                for (int64_t i = 0; i < FF; i++) R->down_t[i * D + r] = row[i];
            }
            free(row);
            free((void *)down.data);
            continue;
        }
        *w[k] = make_weight(k == 2 ? dt : wt, FF, D, src);
        for (int64_t r = 0; r < FF; r++) pi_dequant_row(w[k]->type, pi_weight_row(w[k], r), *dst[k] + r * D, D);
    }
    free(src);
}

static void free_layer(struct rlayer *R)
{
    free((void *)R->L.ffn_gate.data);
    free((void *)R->L.ffn_up.data);
    free((void *)R->L.ffn_down_t.data);
    free((void *)R->L.ffn_down_t.gscale);
    free(R->gate);
    free(R->up);
    free(R->down_t);
}

/* The grouped rows hold the source's columns exactly: row i added once with weight 1 into zeros is
 * column i of the dequantised ffn_down, bit for bit, on every kernel variant this CPU runs. */
static void test_grouped_exact(enum pi_type dt)
{
    struct rlayer R;
    g_grouped = true;
    make_layer(&R, PI_TYPE_F32, dt);
    g_grouped = false;
    float y[D];
    int same = 1, variants = 0;
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        if (!tab) continue;
        variants++;
        for (int i = 0; i < FF; i++) {
            const void *row[4] = {pi_weight_row(&R.L.ffn_down_t, i)};
            const uint16_t *s[4] = {pi_weight_gscale(&R.L.ffn_down_t, i)};
            const float a[4] = {1.0f};
            memset(y, 0, sizeof y);
            tab->vec_madg4[dt](row, s, a, 1, NULL, y, D);
            /* == rather than the bits: 0 + 1 * -0.0 is +0.0 (Q4_0's scales may be negative) */
            for (int j = 0; j < D; j++) same &= y[j] == R.down_t[(size_t)i * D + j];
        }
    }
    tap_ok(same && variants > 0, "%s: each grouped row is its ffn_down column exactly (%d variants, %d rows)", dt_name(dt),
           variants, FF);
    free_layer(&R);
}

static double dotd(const float *a, const float *b, int n)
{
    double s = 0.0;
    for (int j = 0; j < n; j++) s += (double)a[j] * b[j];
    return s;
}

/* y (D) = reference over neurons idx; returns the active count. */
static int64_t reference(const struct rlayer *R, enum pi_ffn_act act, const float *x, const int32_t *idx,
                         int64_t n, double *y)
{
    int64_t active = 0;
    memset(y, 0, sizeof(double) * D);
    for (int64_t k = 0; k < n; k++) {
        int i = idx[k];
        double g = dotd(R->gate + (size_t)i * D, x, D), u = dotd(R->up + (size_t)i * D, x, D), a;
        if (act == PI_FFN_ACT_SILU) a = g / (1.0 + exp(-g)) * u;
        else if (act == PI_FFN_ACT_RELU) a = g > 0 ? g * u : 0.0;
        else a = g > 0 && u > 0 ? g * u : 0.0;
        if (act == PI_FFN_ACT_SILU || a != 0.0) active++;
        for (int j = 0; j < D; j++) y[j] += a * R->down_t[(size_t)i * D + j];
    }
    return active;
}

static double rel_err_d(const float *y, const double *ref, int n)
{
    double num = 0.0, den = 0.0;
    for (int j = 0; j < n; j++) {
        num += (y[j] - ref[j]) * (y[j] - ref[j]);
        den += ref[j] * ref[j];
    }
    return sqrt(num / den);
}

static double rel_err_f(const float *y, const float *ref, int n)
{
    double num = 0.0, den = 0.0;
    for (int j = 0; j < n; j++) {
        num += ((double)y[j] - ref[j]) * ((double)y[j] - ref[j]);
        den += (double)ref[j] * ref[j];
    }
    return sqrt(num / den);
}

static void shuffle(int32_t *a, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)((frand() * 0.5 + 0.5) * (double)(i + 1)) % (i + 1);
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* Reference, splits and pool for one weight type and activation. */
static void test_random_layer(pi_pool_t *pool, enum pi_type wt, enum pi_type dt, enum pi_ffn_act act, double tol)
{
    struct rlayer R;
    float x[D], y[D], part[D], sum[D];
    double ref[D];
    int32_t all[FF], *parts = malloc(sizeof(int32_t) * FF);
    pi_ffn_work_t *w = pi_ffn_work_new(D, pi_pool_size(pool));
    make_layer(&R, wt, dt);
    for (int j = 0; j < D; j++) x[j] = frand();
    for (int i = 0; i < FF; i++) all[i] = i;
    const char *tn = pi_type_name(wt), *an = pi_ffn_act_name(act);

    /* the whole layer against the scalar reference */
    memset(y, 0, sizeof y);
    int64_t n_ref = reference(&R, act, x, all, FF, ref);
    int64_t n_act = pi_ffn_neurons(pool, w, &R.L, act, NULL, x, all, FF, y);
    double e = rel_err_d(y, ref, D);
    tap_ok(e <= tol, "%s/%s down %s, %d threads: whole layer vs reference, relative error %.3g (<= %.0e)", tn, an,
           dt_name(dt), pi_pool_size(pool), e, tol);
    if (wt == PI_TYPE_F32 || wt == PI_TYPE_F16)
        tap_ok(n_act == n_ref, "%s/%s: %lld active neurons, reference %lld", tn, an, (long long)n_act, (long long)n_ref);

    /* random partitions into 2..5 parts: the partial sums add up to the whole layer */
    double worst = 0.0;
    for (int trial = 0; trial < 4; trial++) {
        int k = 2 + trial;
        memcpy(parts, all, sizeof all);
        shuffle(parts, FF);
        memset(sum, 0, sizeof sum);
        int64_t begin = 0, counted = 0;
        for (int p = 0; p < k; p++) {
            int64_t end = p == k - 1 ? FF : begin + (int64_t)((frand() * 0.5 + 0.5) * (double)(FF - begin));
            memset(part, 0, sizeof part);
            counted += pi_ffn_neurons(pool, w, &R.L, act, NULL, x, parts + begin, end - begin, part);
            for (int j = 0; j < D; j++) sum[j] += part[j];
            begin = end;
        }
        double es = rel_err_f(sum, y, D);
        worst = es > worst ? es : worst;
        if (counted != n_act) worst = INFINITY;
    }
    tap_ok(worst <= 1e-5, "%s/%s: 4 random splits sum to the whole layer (worst %.3g, same active count)", tn,
           an, worst);
    pi_ffn_work_destroy(&w);
    free(parts);
    free_layer(&R);
}

/* Reproducibility: the kernel's float sums must not depend on thread timing. Fresh layers, the whole
 * list and a sparse shuffled subset, 40 calls alternating pools of 2 and 3 threads: each equal bit for
 * bit to the first call on the same pool, and (the contract: 16 parts for 1, 2, 4, 8, 16 threads) the
 * 2-thread results equal to the single-threaded one. */
static void test_repeatable(pi_pool_t *pool2, pi_pool_t *pool3, enum pi_type wt, enum pi_ffn_act act)
{
    struct rlayer R;
    float x[D], y1[D], first[2][D], y[D];
    int32_t idx[FF];
    pi_pool_t *pools[2] = {pool2, pool3};
    pi_ffn_work_t *w = pi_ffn_work_new(D, 3);
    int same = 1, same1 = 1, n_idx = 0;
    make_layer(&R, wt, PI_TYPE_F16);
    for (int j = 0; j < D; j++) x[j] = frand();
    for (int subset = 0; subset <= 1; subset++) {
        n_idx = 0;
        for (int i = 0; i < FF; i++)
            if (!subset || frand() < 0.0f) idx[n_idx++] = i;
        if (subset) shuffle(idx, n_idx);
        memset(y1, 0, sizeof y1);
        int64_t a1 = pi_ffn_neurons(NULL, w, &R.L, act, NULL, x, idx, n_idx, y1);
        for (int rep = 0; rep < 40; rep++) {
            float *out = rep < 2 ? first[rep] : y;
            memset(out, 0, sizeof y);
            int64_t a = pi_ffn_neurons(pools[rep % 2], w, &R.L, act, NULL, x, idx, n_idx, out);
            same &= a == a1 && memcmp(out, first[rep % 2], sizeof y) == 0;
        }
        same1 &= memcmp(first[0], y1, sizeof y1) == 0;
    }
    tap_ok(same, "%s/%s: 40 calls on 2 and 3 threads repeat bit for bit (all %d and a shuffled half, %d)",
           pi_type_name(wt), pi_ffn_act_name(act), FF, n_idx);
    tap_ok(same1, "%s/%s: 2 threads give the 1-thread bits", pi_type_name(wt), pi_ffn_act_name(act));
    pi_ffn_work_destroy(&w);
    free_layer(&R);
}

/* pi_ffn_neurons_batch gives the bits of one pi_ffn_neurons call per token on the same pool (the
 * accumulated Y included), for batches that take the per-token path (too few tokens for the pool),
 * the token-group path, and more tokens than the reserved room (two chunks), over all neurons in
 * order and a shuffled subset. */
static void test_batch(pi_pool_t *pool, enum pi_type wt, enum pi_type dt, enum pi_ffn_act act)
{
    enum { NMAX = 70, CAP = 48 };
    struct rlayer R;
    static float X[NMAX * D], Y0[NMAX * D], Y1[NMAX * D];
    int32_t idx[FF];
    const int n_threads = pool ? pi_pool_size(pool) : 1;
    pi_ffn_work_t *w = pi_ffn_work_new(D, n_threads);
    PI_ASSERT(w && pi_ffn_work_reserve(w, CAP) == 0);
    make_layer(&R, wt, dt);
    for (int i = 0; i < NMAX * D; i++) X[i] = frand();
    static const int ns[] = {1, 17, 40, NMAX};
    int same = 1, n_same = 0, n_runs = 0;
    for (int subset = 0; subset <= 1; subset++) {
        int n_idx = 0;
        for (int i = 0; i < FF; i++)
            if (!subset || frand() < 0.2f) idx[n_idx++] = i;
        if (subset) shuffle(idx, n_idx);
        for (size_t k = 0; k < PI_ARRAY_LEN(ns); k++) {
            const int n = ns[k];
            for (int i = 0; i < n * D; i++) Y0[i] = Y1[i] = frand(); /* accumulated into, not cleared */
            int64_t a0 = 0;
            for (int t = 0; t < n; t++) a0 += pi_ffn_neurons(pool, w, &R.L, act, NULL, X + t * D, idx, n_idx, Y0 + t * D);
            int64_t a1 = pi_ffn_neurons_batch(pool, w, &R.L, act, NULL, X, n, idx, n_idx, Y1);
            int ok = a0 == a1 && memcmp(Y0, Y1, sizeof(float) * (size_t)n * D) == 0;
            if (!ok) tap_diag("%d tokens, %d neurons: active %lld vs %lld, error %.3g", n, n_idx, (long long)a0,
                              (long long)a1, rel_err_f(Y1, Y0, n * D));
            same &= ok;
            n_same += ok, n_runs++;
        }
    }
    tap_ok(same, "%s/%s down %s, %d threads: batches of 1, 17, 40, 70 tokens (room for 48) give the per-token bits (%d of %d)",
           pi_type_name(wt), pi_ffn_act_name(act), dt_name(dt), n_threads, n_same, n_runs);
    pi_ffn_work_destroy(&w);
    free_layer(&R);
}

/* A NaN gate is added (as NaN) by the per-token kernel; the batch must do the same for that token
 * even when every other token of its group has the neuron inactive. */
static void test_batch_nan(void)
{
    enum { N = 16 };
    struct rlayer R;
    static float X[N * D], Y0[N * D], Y1[N * D];
    int32_t all[FF];
    make_layer(&R, PI_TYPE_F32, PI_TYPE_F32);
    memset(X, 0, sizeof X); /* zero inputs: every gate is 0, inactive */
    X[5 * D + 3] = NAN;     /* token 5: every gate NaN */
    for (int i = 0; i < FF; i++) all[i] = i;
    pi_ffn_work_t *w = pi_ffn_work_new(D, 1);
    PI_ASSERT(w && pi_ffn_work_reserve(w, N) == 0);
    memset(Y0, 0, sizeof Y0);
    memset(Y1, 0, sizeof Y1);
    int64_t a0 = 0;
    for (int t = 0; t < N; t++) a0 += pi_ffn_neurons(NULL, w, &R.L, PI_FFN_ACT_RELU, NULL, X + t * D, all, FF, Y0 + t * D);
    int64_t a1 = pi_ffn_neurons_batch(NULL, w, &R.L, PI_FFN_ACT_RELU, NULL, X, N, all, FF, Y1);
    tap_ok(a0 == a1 && memcmp(Y0, Y1, sizeof Y0) == 0 && isnan(Y1[5 * D]) && Y1[4 * D] == 0.0f,
           "a NaN gate in one token of a group: the batch adds it as the per-token kernel does (active %lld, %lld)",
           (long long)a0, (long long)a1);
    pi_ffn_work_destroy(&w);
    free_layer(&R);
}

/* The batch kernel, too, leaves the rows of a neuron inactive for every token of a group unread. */
static void test_batch_skip_reads(void)
{
    enum { N = 20 };
    struct rlayer R;
    static float X[N * D], Y[N * D];
    int32_t all[FF];
    int poisoned = 0;
    make_layer(&R, PI_TYPE_F32, PI_TYPE_F32);
    for (int j = 0; j < D; j++) X[j] = frand();
    for (int t = 1; t < N; t++) memcpy(X + t * D, X, sizeof(float) * D);
    for (int i = 0; i < FF; i++) {
        all[i] = i;
        if (dotd(R.gate + (size_t)i * D, X, D) < -1e-4) {
            float *up = (float *)pi_weight_row(&R.L.ffn_up, i), *dn = (float *)pi_weight_row(&R.L.ffn_down_t, i);
            for (int j = 0; j < D; j++) up[j] = dn[j] = NAN;
            poisoned++;
        }
    }
    pi_ffn_work_t *w = pi_ffn_work_new(D, 1);
    PI_ASSERT(w && pi_ffn_work_reserve(w, N) == 0);
    memset(Y, 0, sizeof Y);
    pi_ffn_neurons_batch(NULL, w, &R.L, PI_FFN_ACT_RELU, NULL, X, N, all, FF, Y);
    int finite = 1;
    for (int j = 0; j < N * D; j++) finite &= isfinite(Y[j]) != 0;
    tap_ok(finite && poisoned > FF / 4, "batch of %d tokens: rows of %d neurons inactive for all are never read", N, poisoned);
    tap_ok(pi_ffn_work_reserve(w, -1) == -PI_ERR_RANGE && pi_ffn_work_reserve(w, 4) == 0,
           "reserve: a negative size is refused, a smaller one keeps the room");
    pi_ffn_work_destroy(&w);
    free_layer(&R);
}

/* ReLU/dReLU must not read the up and down rows of a neuron whose gate is <= 0: poison them. */
static void test_skip_reads(pi_pool_t *pool, enum pi_ffn_act act)
{
    struct rlayer R;
    float x[D], y[D];
    int32_t all[FF];
    int poisoned = 0;
    make_layer(&R, PI_TYPE_F32, PI_TYPE_F32);
    for (int j = 0; j < D; j++) x[j] = frand();
    for (int i = 0; i < FF; i++) {
        all[i] = i;
        double g = dotd(R.gate + (size_t)i * D, x, D);
        if (g < -1e-4) { /* clearly inactive (a margin for the kernel's own summation order) */
            float *up = (float *)pi_weight_row(&R.L.ffn_up, i), *dn = (float *)pi_weight_row(&R.L.ffn_down_t, i);
            for (int j = 0; j < D; j++) up[j] = dn[j] = NAN;
            poisoned++;
        }
    }
    pi_ffn_work_t *w = pi_ffn_work_new(D, pi_pool_size(pool));
    memset(y, 0, sizeof y);
    pi_ffn_neurons(pool, w, &R.L, act, NULL, x, all, FF, y);
    int finite = 1;
    for (int j = 0; j < D; j++) finite &= isfinite(y[j]) != 0;
    tap_ok(finite && poisoned > FF / 4, "%s: rows of %d inactive neurons are never read", pi_ffn_act_name(act),
           poisoned);
    pi_ffn_work_destroy(&w);
    free_layer(&R);
}

/* A real layer: neuron kernel over every neuron vs dense down @ act(gate x, up x) from the file. */
static void test_real_layer(pi_pool_t *pool, const char *file, double tol)
{
    char path[1024], err[256];
    pi_model_t *m = NULL;
    tap_data(path, sizeof path, file);
    if (pi_model_open(path, NULL, &m, err, sizeof err) < 0) {
        tap_ok(0, "%s binds: %s", file, err);
        return;
    }
    const struct pi_layer *L = &m->layers[1];
    int64_t d = m->hp.n_embd, ff = m->hp.n_ff;
    float *x = malloc(sizeof(float) * d), *y = calloc((size_t)d, sizeof(float));
    float *row = malloc(sizeof(float) * (size_t)PI_MAX(d, ff));
    double *a = malloc(sizeof(double) * ff), *ref = malloc(sizeof(double) * d);
    int32_t *all = malloc(sizeof(int32_t) * ff);
    for (int64_t j = 0; j < d; j++) x[j] = frand();
    for (int64_t i = 0; i < ff; i++) {
        all[i] = (int32_t)i;
        pi_dequant_row(L->ffn_gate.type, pi_weight_row(&L->ffn_gate, i), row, d);
        double g = dotd(row, x, (int)d);
        pi_dequant_row(L->ffn_up.type, pi_weight_row(&L->ffn_up, i), row, d);
        double u = dotd(row, x, (int)d);
        a[i] = m->hp.act == PI_FFN_ACT_SILU ? g / (1.0 + exp(-g)) * u : (g > 0 ? g * u : 0.0);
    }
    for (int64_t j = 0; j < d; j++) {
        pi_dequant_row(L->ffn_down.type, pi_weight_row(&L->ffn_down, j), row, ff);
        ref[j] = 0.0;
        for (int64_t i = 0; i < ff; i++) ref[j] += a[i] * row[i];
    }
    pi_ffn_work_t *w = pi_ffn_work_new(d, pi_pool_size(pool));
    int64_t n_act = pi_ffn_neurons(pool, w, L, m->hp.act, NULL, x, all, ff, y);
    double e = rel_err_d(y, ref, (int)d);
    tap_ok(e <= tol, "%s layer 1 (%s): neuron kernel vs dense down, relative error %.3g (<= %.0e), %lld of %lld active",
           file, pi_ffn_act_name(m->hp.act), e, tol, (long long)n_act, (long long)ff);
    pi_ffn_work_destroy(&w);
    free(x);
    free(y);
    free(row);
    free(a);
    free(ref);
    free(all);
    pi_model_destroy(&m);
}

/* The skip rule, case by case. */
static void test_gate_rule(void)
{
    const float s1 = 1.0f / (1.0f + expf(-1.0f)); /* silu(1) */
    tap_ok(!pi_ffn_gate_skip(PI_FFN_ACT_SILU, 0.0f, 0.0f) && !pi_ffn_gate_skip(PI_FFN_ACT_SILU, 0.0f, -50.0f),
           "rule: SiLU without a threshold skips nothing, not even a zero gate");
    tap_ok(pi_ffn_gate_skip(PI_FFN_ACT_RELU, 0.0f, 0.0f) && pi_ffn_gate_skip(PI_FFN_ACT_DRELU, 0.0f, -1.0f) &&
               !pi_ffn_gate_skip(PI_FFN_ACT_RELU, 0.0f, 1e-30f),
           "rule: ReLU/dReLU skip a gate <= 0 whatever the threshold");
    tap_ok(pi_ffn_gate_skip(PI_FFN_ACT_SILU, s1, 1.0f) && !pi_ffn_gate_skip(PI_FFN_ACT_SILU, s1 * 0.999f, 1.0f) &&
               pi_ffn_gate_skip(PI_FFN_ACT_SILU, 0.01f, -40.0f) && !pi_ffn_gate_skip(PI_FFN_ACT_SILU, 0.2f, -1.5f),
           "rule: SiLU skips |silu(g)| <= threshold (both signs of the gate)");
    tap_ok(!pi_ffn_gate_skip(PI_FFN_ACT_SILU, 1.0f, NAN) && !pi_ffn_gate_skip(PI_FFN_ACT_RELU, 1.0f, NAN),
           "rule: a NaN gate is never skipped");
    tap_ok(pi_ffn_gate_skip(PI_FFN_ACT_RELU, 0.5f, 0.5f) && !pi_ffn_gate_skip(PI_FFN_ACT_RELU, 0.5f, 0.6f),
           "rule: ReLU with a threshold skips relu(g) <= threshold");
}

/* Random per-neuron thresholds on a quantised SiLU layer: the neurons the kernel keeps are those whose
 * own gate (x quantised as the kernel does it) passes the rule; their sum equals the reference; the rows
 * of the skipped ones are poisoned and never read. */
static void test_thresholds(pi_pool_t *pool, enum pi_type wt, enum pi_ffn_act act)
{
    enum { N = 40 };
    struct rlayer R;
    static float x[D], y0[D], y1[D], gmin[FF], zero[FF], X[N * D], Y0[N * D], Y1[N * D];
    double ref[D];
    int32_t all[FF], keep[FF];
    const char *tn = pi_type_name(wt), *an = pi_ffn_act_name(act);
    make_layer(&R, wt, PI_TYPE_F16);
    for (int j = 0; j < D; j++) x[j] = frand();
    pi_ffn_work_t *w = pi_ffn_work_new(D, pi_pool_size(pool));
    PI_ASSERT(w && pi_ffn_work_reserve(w, N) == 0);
    void *xq = malloc(pi_act_row_bytes(wt, D));
    pi_quantize_act(wt, x, xq, D);
    int64_t n_keep = 0;
    memset(ref, 0, sizeof ref);
    for (int i = 0; i < FF; i++) {
        all[i] = i;
        zero[i] = 0.0f;
        const float g = pi_vec_dot(wt, pi_weight_row(&R.L.ffn_gate, i), xq, D);
        const float s = act == PI_FFN_ACT_SILU ? g / (1.0f + expf(-g)) : (g > 0 ? g : 0);
        /* about 45% under their threshold, none within 1e-3 of it (the kernel's sums may differ) */
        gmin[i] = frand() < -0.1f ? fabsf(s) * 1.5f + 1e-3f : fmaxf(fabsf(s) * 0.5f - 1e-3f, 0.0f);
        if (pi_ffn_gate_skip(act, gmin[i], g)) {
            float *up = (float *)pi_weight_row(&R.L.ffn_up, i);
            memset(up, 0xff, R.L.ffn_up.row_bytes); /* NaN scales and values */
            memset((void *)pi_weight_row(&R.L.ffn_down_t, i), 0xff, R.L.ffn_down_t.row_bytes);
            continue;
        }
        keep[n_keep++] = i;
        const double u = pi_vec_dot(wt, pi_weight_row(&R.L.ffn_up, i), xq, D);
        const double a = act == PI_FFN_ACT_SILU ? (double)g / (1.0 + exp(-(double)g)) * u : (double)g * u;
        for (int j = 0; j < D; j++) ref[j] += a * R.down_t[(size_t)i * D + j];
    }
    memset(y1, 0, sizeof y1);
    int64_t a1 = pi_ffn_neurons(pool, w, &R.L, act, gmin, x, all, FF, y1);
    int finite = 1;
    for (int j = 0; j < D; j++) finite &= isfinite(y1[j]) != 0;
    double e = rel_err_d(y1, ref, D);
    tap_ok(finite && a1 == n_keep && n_keep > FF / 8 && n_keep < FF * 3 / 4 && e < 1e-5,
           "%s %s thresholds: %lld of %d neurons kept (expected %lld), rel err %.2g, skipped rows unread", tn, an,
           (long long)a1, FF, (long long)n_keep, e);
    /* the same neurons listed explicitly, without thresholds: the same sum to rounding */
    memset(y0, 0, sizeof y0);
    pi_ffn_neurons(pool, w, &R.L, act, NULL, x, keep, n_keep, y0);
    tap_ok(rel_err_f(y1, y0, D) < 1e-5, "%s %s thresholds: equal to the kept neurons listed", tn, an);
    /* zero thresholds: the bits of none, on the kept neurons (the others are poisoned) */
    memset(y0, 0, sizeof y0);
    memset(y1, 0, sizeof y1);
    pi_ffn_neurons(pool, w, &R.L, act, NULL, x, keep, n_keep, y0);
    pi_ffn_neurons(pool, w, &R.L, act, zero, x, keep, n_keep, y1);
    tap_ok(memcmp(y0, y1, sizeof y0) == 0, "%s %s: all-zero thresholds give the bits of none", tn, an);
    /* the batch: per-token bits, whichever path */
    for (int t = 0; t < N; t++)
        for (int j = 0; j < D; j++) X[t * D + j] = t == 0 ? x[j] : frand();
    memset(Y0, 0, sizeof Y0);
    memset(Y1, 0, sizeof Y1);
    int64_t b0 = 0;
    /* rows of skipped neurons are NaN: other tokens may keep them, so restore a clean layer */
    free_layer(&R);
    rng_state ^= 0x9e3779b97f4a7c15ull;
    make_layer(&R, wt, PI_TYPE_F16);
    for (int t = 0; t < N; t++) b0 += pi_ffn_neurons(pool, w, &R.L, act, gmin, X + t * D, all, FF, Y0 + t * D);
    int64_t b1 = pi_ffn_neurons_batch(pool, w, &R.L, act, gmin, X, N, all, FF, Y1);
    tap_ok(b0 == b1 && memcmp(Y0, Y1, sizeof Y0) == 0, "%s %s thresholds: the batch of %d gives each token's bits (%lld kept)",
           tn, an, N, (long long)b1);
    /* the dense form */
    static float g[2 * FF], u[2 * FF], g2[2 * FF];
    for (int i = 0; i < 2 * FF; i++) g[i] = g2[i] = frand() * 3.0f, u[i] = frand();
    int64_t kept = pi_ffn_act_min(act, gmin, g, u, 2, FF), want = 0;
    int same = 1;
    for (int i = 0; i < 2 * FF; i++) {
        float expect = 0.0f;
        if (!pi_ffn_gate_skip(act, gmin[i % FF], g2[i])) {
            expect = g2[i]; /* the dense activation's bits (SiLU: the kernel variant's exp) */
            pi_ffn_act(act, &expect, &u[i], 1);
            want++;
        }
        same &= memcmp(&expect, &g[i], sizeof expect) == 0;
    }
    tap_ok(same && kept == want, "%s: pi_ffn_act_min zeroes exactly the skipped (%lld of %d kept)", an, (long long)kept, 2 * FF);
    free(xq);
    pi_ffn_work_destroy(&w);
    free_layer(&R);
}

/* In every kernel variant this CPU runs: a list short enough to be one part (29 neurons, shuffled: seven
 * quads of gate rows and a remainder) gives the bits of the plain loop over the list: pi_vec_dot of the
 * gate and up rows, the skip rule, and pi_vec_mad of each active neuron's down row into a zeroed
 * accumulator in list order, then added to y. So the quads, the queue of active neurons and the
 * fallbacks of the types without vec_dot4r or vec_mad4 keep the order of every float sum. */
static void test_list_order(void)
{
    static const enum pi_type types[][2] = {
        {PI_TYPE_Q4_0, PI_TYPE_F16},
        {PI_TYPE_Q8_0, PI_TYPE_Q8_0},
        {PI_TYPE_Q5_0, PI_TYPE_F16},
        {PI_TYPE_F16, PI_TYPE_F32},
    };
    static const enum pi_ffn_act acts[] = {PI_FFN_ACT_SILU, PI_FFN_ACT_RELU, PI_FFN_ACT_DRELU};
    enum { N = 29 };
    pi_ffn_work_t *w = pi_ffn_work_new(D, 1);
    uint8_t *xq_g = malloc((size_t)D * 4 + 64), *xq_u = malloc((size_t)D * 4 + 64);
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        if (pi_kernels_use(isa) != (enum pi_kernel_isa)isa) {
            tap_skip(1, "variant not available here");
            continue;
        }
        int same = 1, cases = 0;
        for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
            struct rlayer R;
            make_layer(&R, types[k][0], types[k][1]);
            const struct pi_layer *L = &R.L;
            for (size_t ai = 0; ai < PI_ARRAY_LEN(acts); ai++) {
                const enum pi_ffn_act act = acts[ai];
                int32_t all[FF], idx[N];
                float x[D], y[D], want[D], acc[D];
                for (int i = 0; i < FF; i++) all[i] = i;
                shuffle(all, FF);
                memcpy(idx, all, sizeof idx);
                for (int j = 0; j < D; j++) x[j] = frand(), y[j] = want[j] = frand();
                pi_quantize_act(L->ffn_gate.type, x, xq_g, D);
                pi_quantize_act(L->ffn_up.type, x, xq_u, D);
                memset(acc, 0, sizeof acc);
                int64_t n_want = 0;
                for (int k2 = 0; k2 < N; k2++) {
                    const int32_t i = idx[k2];
                    float g = pi_vec_dot(L->ffn_gate.type, pi_weight_row(&L->ffn_gate, i), xq_g, D), a;
                    if (pi_ffn_gate_skip(act, 0.0f, g)) continue;
                    float u = pi_vec_dot(L->ffn_up.type, pi_weight_row(&L->ffn_up, i), xq_u, D);
                    if (act == PI_FFN_ACT_SILU) a = g / (1.0f + expf(-g)) * u;
                    else if (act == PI_FFN_ACT_RELU) a = g * u;
                    else if (u > 0.0f) a = g * u;
                    else continue;
                    pi_vec_mad(L->ffn_down_t.type, pi_weight_row(&L->ffn_down_t, i), a, acc, D);
                    n_want++;
                }
                for (int j = 0; j < D; j++) want[j] += acc[j];
                int64_t n_got = pi_ffn_neurons(NULL, w, L, act, NULL, x, idx, N, y);
                same &= memcmp(y, want, sizeof y) == 0 && n_got == n_want;
                cases++;
            }
            free_layer(&R);
        }
        tap_ok(same,
               "%s: one part of %d listed neurons == pi_vec_dot and pi_vec_mad in list order, bit for bit (%d cases)",
               pi_kernels_variant(), N, cases);
    }
    pi_kernels_use(-1);
    free(xq_g), free(xq_u);
    pi_ffn_work_destroy(&w);
}

int main(void)
{
    pi_pool_t *pool = pi_pool_new(2);
    static const enum pi_ffn_act acts[] = {PI_FFN_ACT_SILU, PI_FFN_ACT_RELU, PI_FFN_ACT_DRELU};
    if (!pool) tap_bail("no pool");
    for (size_t k = 0; k < PI_ARRAY_LEN(acts); k++) {
        /* f32/f16 gate and up keep the activations in f32: exact to float rounding */
        test_random_layer(NULL, PI_TYPE_F32, PI_TYPE_F32, acts[k], 1e-5);
        test_random_layer(pool, PI_TYPE_F16, PI_TYPE_F16, acts[k], 1e-5);
        /* quantised gate and up take 8-bit activations (about 1% per dot product) */
        test_random_layer(pool, PI_TYPE_Q8_0, PI_TYPE_Q8_0, acts[k], 3e-2);
        test_random_layer(pool, PI_TYPE_Q4_0, PI_TYPE_F16, acts[k], 3e-2);
    }
    pi_pool_t *pool3 = pi_pool_new(3);
    if (!pool3) tap_bail("no pool");
    test_repeatable(pool, pool3, PI_TYPE_Q4_0, PI_FFN_ACT_SILU);
    test_repeatable(pool, pool3, PI_TYPE_Q8_0, PI_FFN_ACT_RELU);
    for (size_t k = 0; k < PI_ARRAY_LEN(acts); k++) {
        test_batch(NULL, PI_TYPE_Q4_0, PI_TYPE_F16, acts[k]);
        test_batch(pool, PI_TYPE_Q4_0, PI_TYPE_F16, acts[k]);
        test_batch(pool3, PI_TYPE_Q8_0, PI_TYPE_Q8_0, acts[k]);
    }
    test_batch(pool, PI_TYPE_F16, PI_TYPE_F32, PI_FFN_ACT_SILU);
    test_batch(pool3, PI_TYPE_Q5_0, PI_TYPE_F16, PI_FFN_ACT_RELU);
    test_batch(pool, PI_TYPE_Q4_1, PI_TYPE_Q8_0, PI_FFN_ACT_DRELU);
    pi_pool_destroy(&pool3);
    pi_pool_t *pool3g = pi_pool_new(3);
    if (!pool3g) tap_bail("no pool");
    test_batch_skip_reads();
    test_batch_nan();
    test_skip_reads(pool, PI_FFN_ACT_RELU);
    test_skip_reads(NULL, PI_FFN_ACT_DRELU);
    test_gate_rule();
    test_thresholds(pool, PI_TYPE_Q8_0, PI_FFN_ACT_SILU);
    test_thresholds(NULL, PI_TYPE_Q4_0, PI_FFN_ACT_SILU);
    test_thresholds(pool, PI_TYPE_F16, PI_FFN_ACT_RELU);
    /* grouped down rows (kernels/cpu/quant.h): exact columns, the reference with f32 and quantised
     * gate/up, every neuron path (per token, batches, pools) */
    test_grouped_exact(PI_TYPE_Q4_0);
    test_grouped_exact(PI_TYPE_Q8_0);
    g_grouped = true;
    for (size_t k = 0; k < PI_ARRAY_LEN(acts); k++) {
        test_random_layer(pool, PI_TYPE_F32, PI_TYPE_Q4_0, acts[k], 1e-5);
        test_random_layer(NULL, PI_TYPE_Q4_0, PI_TYPE_Q8_0, acts[k], 3e-2);
        test_batch(pool, PI_TYPE_Q4_0, PI_TYPE_Q4_0, acts[k]);
        test_batch(pool3g, PI_TYPE_Q8_0, PI_TYPE_Q8_0, acts[k]);
    }
    test_batch(NULL, PI_TYPE_Q4_0, PI_TYPE_Q4_0, PI_FFN_ACT_SILU);
    g_grouped = false;
    test_real_layer(pool, "tiny-llama-q4_0.gguf", 3e-2);
    test_real_layer(pool, "demo-relu-q4_0.gguf", 3e-2);
    test_list_order();
    pi_pool_destroy(&pool3g);
    pi_pool_destroy(&pool);
    return tap_done();
}
