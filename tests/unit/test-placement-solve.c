/*
 * tests/unit/test-placement-solve.c - the placement solver (compute/placement-solve.h) on the demo
 * model's shapes with fresh random activation frequencies (seed printed), the device's bytes counted
 * by the weights rule (attention, head and every hot neuron's rows: exact for this test's purpose):
 *   - at 41 budgets from nothing to everything the placement never exceeds the budget; with a device
 *     that never bounds a layer and no exchange cost the hot sets are exactly the most frequent
 *     neurons (every hot neuron fires at least as often as every cold one), the longest such set that
 *     fits, and the modelled time never grows with the budget; with real speeds and an exchange cost
 *     the solution is never slower than that frequency prefix;
 *   - with a large exchange cost the trades complete layers: fewer exchanges, lower modelled time
 *     than the frequency prefix, still within the budget;
 *   - a budget holding everything puts every neuron on the GPU (no exchange);
 *   - each layer's cold neurons are split among the CPU workers in consecutive ranges of nearly equal
 *     expected bytes (gate row, plus up row and down column times the frequency);
 *   - bad problems are refused: NaN or out-of-range frequencies, no workers, zero speeds, a budget
 *     below the placement with nothing hot.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/placement-solve.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "model/model.h"
#include "tests/tap.h"

static uint64_t rng;

static double urand(void) { return (double)(pi_rng_splitmix64(&rng) >> 11) / 9007199254740992.0; }

/* The weights rule (pi_place_weights_bytes): the budget this test solves within. */
static int rows_bytes(void *ctx, const struct pi_placement *p, uint64_t *bytes)
{
    *bytes = pi_place_weights_bytes(ctx, p);
    return 0;
}

/* Whether every hot neuron fires at least as often as every cold one. */
static bool hot_by_freq(const struct pi_placement *p, const float *f)
{
    float min_hot = 2, max_cold = -1;
    for (int il = 0; il < p->n_layer; il++) {
        for (int g = 0; g <= p->n_workers; g++) {
            int64_t n;
            const int32_t *ids = pi_placement_group(p, il, g, &n);
            for (int64_t j = 0; j < n; j++) {
                const float x = f[(size_t)il * (size_t)p->n_ff + (size_t)ids[j]];
                if (g == 0) min_hot = x < min_hot ? x : min_hot;
                else max_cold = x > max_cold ? x : max_cold;
            }
        }
    }
    return min_hot >= max_cold;
}

/* Each layer's cold groups: consecutive ids (ascending across the groups), weights within one
 * neuron's weight of an equal share. */
static bool balanced(const struct pi_placement *p, const pi_model_t *m, const float *f)
{
    for (int il = 0; il < p->n_layer; il++) {
        uint64_t g, u, d;
        pi_place_neuron_bytes(m, il, &g, &u, &d);
        double total = 0, wmax = 0, sum[PI_PLACEMENT_MAX_WORKERS] = {0};
        int32_t last = -1;
        for (int w = 0; w < p->n_workers; w++) {
            int64_t n;
            const int32_t *ids = pi_placement_cold(p, il, w, &n);
            for (int64_t j = 0; j < n; j++) {
                if (ids[j] <= last) return false;
                last = ids[j];
                const double x = (double)g + (double)f[(size_t)il * (size_t)p->n_ff + (size_t)ids[j]] * (double)(u + d);
                sum[w] += x, total += x, wmax = x > wmax ? x : wmax;
            }
        }
        for (int w = 0; w < p->n_workers; w++)
            if (fabs(sum[w] - total / p->n_workers) > 2 * wmax + 1e-6 * total) return false;
    }
    return true;
}

int main(void)
{
    pi_log_set_level(PI_LOG_ERROR);
    const uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    rng = seed;
    tap_diag("seed %llu", (unsigned long long)seed);
    char path[1024], err[256];
    pi_model_t *m = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true;
    if (pi_model_open(tap_data(path, sizeof path, "demo-relu-q4_0.gguf"), &mo, &m, err, sizeof err) != 0)
        tap_bail("demo model: %s", err);
    const int L = m->hp.n_layer, ff = m->hp.n_ff;
    float *f = malloc(sizeof(float) * (size_t)L * (size_t)ff);
    PI_ASSERT(f);
    /* power-law frequencies, a different mean per layer (ReLU models: 10-40% active) */
    for (int il = 0; il < L; il++) {
        const double scale = 0.1 + 0.3 * urand();
        for (int i = 0; i < ff; i++) {
            const double x = 3.0 * scale * pow(urand(), 3.0);
            f[(size_t)il * (size_t)ff + (size_t)i] = (float)(x > 1 ? 1 : x);
        }
    }
    struct pi_place_problem q = {.m = m, .act_freq = f, .n_workers = 3, .device_bytes = rows_bytes, .ctx = m,
                                 .speeds = {.gpu_gbs = 2000, .cpu_gbs = 50, .exchange_us = 0}};
    struct pi_placement *none = NULL, *all = NULL;
    uint64_t lo_b, hi_b;
    PI_ASSERT(pi_placement_prefix(L, ff, 3, 0, &none) == 0 && pi_placement_prefix(L, ff, 3, ff, &all) == 0);
    rows_bytes(m, none, &lo_b);
    rows_bytes(m, all, &hi_b);
    pi_placement_destroy(&none);
    pi_placement_destroy(&all);
    /* budgets from nothing hot to everything. First with a device so fast it never bounds a layer and
     * no exchange cost: then the best placement is the frequency prefix, whose time only falls with
     * the budget. Then with this machine's kind of speeds and a 20 us exchange: the trades may move
     * neurons, but the result is never slower than that prefix under the same model. */
    bool within = true, monotone = true, by_freq = true, bal = true, no_worse = true;
    double t_prev = INFINITY;
    int64_t hot_prev = -1;
    for (int k = 0; k <= 40; k++) {
        q.budget = lo_b + (hi_b - lo_b) * (uint64_t)k / 40;
        struct pi_placement *p = NULL, *p2 = NULL;
        struct pi_place_cost c, c2, c_pre;
        q.speeds = (struct pi_place_speeds){.gpu_gbs = 1e9, .cpu_gbs = 50, .exchange_us = 0};
        int rc = pi_place_solve(&q, &p, &c);
        if (rc != 0) { within = false; break; }
        within &= c.device_bytes <= q.budget;
        monotone &= c.t_us <= t_prev * (1 + 1e-9) && c.hot >= hot_prev;
        by_freq &= hot_by_freq(p, f);
        bal &= balanced(p, m, f);
        t_prev = c.t_us, hot_prev = c.hot;
        q.speeds = (struct pi_place_speeds){.gpu_gbs = 2000, .cpu_gbs = 50, .exchange_us = 20};
        rc = pi_place_solve(&q, &p2, &c2);
        if (rc != 0 || pi_place_cost(&q, p, false, &c_pre) != 0) { within = false; pi_placement_destroy(&p); break; }
        within &= c2.device_bytes <= q.budget;
        no_worse &= c2.t_us <= c_pre.t_us * (1 + 1e-9);
        bal &= balanced(p2, m, f);
        if (k == 40) tap_ok(c2.hot == (int64_t)L * ff && c2.n_exchanges == 0, "a budget holding everything: every neuron hot, no exchange");
        if (k == 20) tap_diag("half the FFN budget: %lld hot, %.1f%% of activations, %.1f us/token (prefix %.1f), %d exchanges",
                              (long long)c2.hot, 100 * c2.hot_freq_share, c2.t_us, c_pre.t_us, c2.n_exchanges);
        pi_placement_destroy(&p);
        pi_placement_destroy(&p2);
    }
    q.speeds = (struct pi_place_speeds){.gpu_gbs = 2000, .cpu_gbs = 50, .exchange_us = 0};
    tap_ok(within, "82 solutions at 41 budgets: none exceeds its budget");
    tap_ok(monotone, "the frequency prefix: the modelled time never grows, the hot count never shrinks, with the budget");
    tap_ok(by_freq, "with a device that never bounds a layer and no exchange cost, every hot neuron fires at least as often as every cold one");
    tap_ok(no_worse, "with real speeds and an exchange cost the solution is never slower than the frequency prefix");
    tap_ok(bal, "cold neurons in consecutive ranges of nearly equal expected bytes per worker");
    /* the largest prefix that fits: one more neuron would not */
    {
        q.budget = lo_b + (hi_b - lo_b) / 3;
        struct pi_placement *p = NULL;
        struct pi_place_cost c;
        PI_ASSERT(pi_place_solve(&q, &p, &c) == 0);
        uint64_t g, u, d;
        pi_place_neuron_bytes(m, 0, &g, &u, &d);
        tap_ok(c.device_bytes <= q.budget && c.device_bytes + (g + u + d) > q.budget,
               "the longest frequency prefix within the budget (%llu of %llu bytes, a neuron is %llu)",
               (unsigned long long)c.device_bytes, (unsigned long long)q.budget, (unsigned long long)(g + u + d));
        /* a large exchange cost: trades complete layers */
        struct pi_placement *p2 = NULL;
        struct pi_place_cost c2, c_prefix;
        q.speeds.exchange_us = 500;
        PI_ASSERT(pi_place_cost(&q, p, false, &c_prefix) == 0);
        PI_ASSERT(pi_place_solve(&q, &p2, &c2) == 0);
        tap_ok(c2.n_exchanges < c_prefix.n_exchanges && c2.t_us < c_prefix.t_us && c2.device_bytes <= q.budget,
               "exchange 500 us: trades complete layers (%d -> %d exchanges, %.0f -> %.0f us/token), within the budget",
               c_prefix.n_exchanges, c2.n_exchanges, c_prefix.t_us, c2.t_us);
        q.speeds.exchange_us = 0;
        pi_placement_destroy(&p);
        pi_placement_destroy(&p2);
    }
    /* bad problems */
    struct pi_placement *p = NULL;
    q.budget = hi_b;
    float keep = f[5];
    f[5] = NAN;
    tap_ok(pi_place_solve(&q, &p, NULL) == -PI_ERR_INVAL && !p, "a NaN frequency is refused");
    f[5] = 1.5f;
    tap_ok(pi_place_solve(&q, &p, NULL) == -PI_ERR_INVAL && !p, "a frequency above 1 is refused");
    f[5] = keep;
    q.n_workers = 0;
    tap_ok(pi_place_solve(&q, &p, NULL) == -PI_ERR_INVAL && !p, "no CPU workers are refused");
    q.n_workers = 3;
    q.speeds.cpu_gbs = 0;
    tap_ok(pi_place_solve(&q, &p, NULL) == -PI_ERR_INVAL && !p, "a zero CPU speed is refused");
    q.speeds.cpu_gbs = 50;
    q.budget = lo_b - 1;
    tap_ok(pi_place_solve(&q, &p, NULL) == -PI_ERR_RANGE && !p, "a budget below the placement with nothing hot is refused");
    free(f);
    pi_model_destroy(&m);
    return tap_done();
}
