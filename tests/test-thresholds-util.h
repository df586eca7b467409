/*
 * tests/test-thresholds-util.h - activation thresholds that no (token, neuron) pair sits near, for the
 * backends' tests of SwiGLU thresholds (tests/unit/test-backend-host, tests/cuda/test-backend-cuda).
 * Header-only, like tests/tap.h.
 */
#ifndef PI_TESTS_THRESHOLDS_UTIL_H
#define PI_TESTS_THRESHOLDS_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "compute/forward.h"
#include "compute/sparse.h"
#include "lib/common.h"

/* The capture's gates of one layer (the thresholds being chosen). */
struct tt_gates {
    int il;
    int64_t n_ff;
    float *v; /* (n, n_ff) of the prompt */
};

static void tt_capture_gates(void *ctx, int il, int n, const float *h, const float *x, const float *gate,
                             const float *up)
{
    struct tt_gates *g = ctx;
    (void)h, (void)x, (void)up;
    if (il == g->il) memcpy(g->v, gate, (size_t)n * (size_t)g->n_ff * sizeof(float));
}

static int tt_cmp_f(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Thresholds gm (n_layer, n_ff) for the n tokens tok (positions 0..n-1 of sequence 0, which f truncates)
 * that no pair sits near: layer by layer (each layer's gates captured from a pass of f with the thresholds
 * of the layers before it, counted into st), neuron j's threshold at the geometric middle of a gap of at
 * least 20% between two of its n values of |silu(gate)|, the gap nearest a random rank (rnd) in the
 * middle half (0, skipping nothing, where there is none). Rounding that moves a gate by less than a
 * tenth then decides no pair differently, so that paths which round differently (the host backend's,
 * the device's) can be held to one result to rounding. f's capture hook is cleared on return. */
__attribute__((unused)) static void tt_margin_thresholds(pi_forward_t *f, struct pi_sparse_stats *st,
                                                         const int32_t *tok, int n, float *gm, uint64_t (*rnd)(void))
{
    const pi_model_t *m = pi_forward_model(f);
    const int64_t nf = m->hp.n_ff;
    int32_t *seq0 = calloc((size_t)n, sizeof *seq0), *pos = malloc((size_t)n * sizeof *pos);
    struct tt_gates g = {.n_ff = nf, .v = malloc((size_t)n * (size_t)nf * sizeof(float))};
    float *col = malloc((size_t)n * sizeof(float));
    PI_ASSERT(seq0 && pos && g.v && col);
    for (int i = 0; i < n; i++) pos[i] = i;
    memset(gm, 0, (size_t)m->hp.n_layer * (size_t)nf * sizeof *gm);
    pi_forward_set_capture(f, tt_capture_gates, &g);
    for (int il = 0; il < m->hp.n_layer; il++) {
        g.il = il;
        PI_ASSERT(pi_forward_set_gate_min(f, gm, st) == 0 && pi_forward_seq_truncate(f, 0, 0) == 0);
        PI_ASSERT(pi_forward_batch(f, tok, seq0, pos, n, NULL, false) == 0);
        for (int64_t j = 0; j < nf; j++) {
            for (int t = 0; t < n; t++) {
                const float v = g.v[(size_t)t * (size_t)nf + (size_t)j];
                col[t] = fabsf(v / (1.0f + expf(-v)));
            }
            qsort(col, (size_t)n, sizeof *col, tt_cmp_f);
            const int r = n / 4 + (int)(rnd() % (uint64_t)(n / 2));
            for (int d = 0; d < n; d++) { /* the gaps r - 1 | r, r | r + 1, r - 2 | r - 1, ... */
                const int i = r + (d % 2 ? (d + 1) / 2 : -(d / 2) - 1);
                if (i < 0 || i + 1 >= n || !(col[i] > 1e-6f) || !(col[i + 1] > 1.2f * col[i])) continue;
                gm[(size_t)il * (size_t)nf + (size_t)j] = sqrtf(col[i] * col[i + 1]);
                break;
            }
        }
    }
    pi_forward_set_capture(f, NULL, NULL);
    free(seq0), free(pos), free(g.v), free(col);
}

#endif
