/*
 * compute/placement-speed.c - the CPU workers' speed for the placement solver, measured at start-up
 * ([placement] cpu_gbs = 0, the default): the neuron kernel the workers run for a decode step
 * (pi_ffn_neurons: every gate row, then the up and down rows of the neurons that fire) over a
 * synthetic slice in the model's own types, large enough not to fit in the caches, with the
 * workers' thread count. About 0.2 s; see doc/locality.md ("The placement solver").
 */
#include "config.h"
#include "compute/placement-solve.h"
#include "kernels/cpu/ops.h"
#include "ipc/futex.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"

#include <stdlib.h>
#include <string.h>

#define SPEED_GATE_BYTES (UINT64_C(48) << 20) /* of gate rows: over any L3 slice a VM gets */
#define SPEED_TILE_ROWS 64                    /* distinct random rows, repeated over the slice */
#define SPEED_REPS 9                          /* timed passes; the median counts */

/* A weight (rows, d) of type t: SPEED_TILE_ROWS random quantised rows repeated. NULL data on failure. */
static struct pi_weight speed_weight(enum pi_type t, int64_t rows, int64_t d, uint64_t *rng, float *tmp)
{
    struct pi_weight w = {.type = t, .rows = rows, .cols = d};
    uint64_t rb;
    if (!pi_type_row_bytes(t, (uint64_t)d, &rb)) return w;
    w.row_bytes = (size_t)rb;
    char *data = malloc((size_t)rows * w.row_bytes);
    if (!data) return w;
    for (int64_t r = 0; r < rows; r++) {
        if (r < SPEED_TILE_ROWS) {
            for (int64_t j = 0; j < d; j++) tmp[j] = (float)((double)(pi_rng_splitmix64(rng) >> 11) * 0x1p-53 - 0.5);
            pi_quantize_row(t, tmp, data + (size_t)r * w.row_bytes, d);
        } else {
            memcpy(data + (size_t)r * w.row_bytes, data + (size_t)(r % SPEED_TILE_ROWS) * w.row_bytes, w.row_bytes);
        }
    }
    w.data = data;
    return w;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int pi_place_measure_cpu_gbs(const pi_model_t *m, int n_threads, double *gbs)
{
    const struct pi_layer *ml = &m->layers[0];
    const int64_t d = m->hp.n_embd;
    enum pi_type tg = ml->ffn_gate.type, tu = ml->ffn_up.type;
    enum pi_type td = ml->ffn_down_t.data ? ml->ffn_down_t.type : pi_model_down_t_type(PI_TYPE_COUNT, ml->ffn_down.type, d);
    if (!pi_kernel_supported(tg) || !pi_kernel_supported(tu) || !pi_kernel_supported(td)) return -PI_ERR_UNSUPPORTED;
    const int64_t rows = PI_MAX((int64_t)(SPEED_GATE_BYTES / PI_MAX(ml->ffn_gate.row_bytes, 1)), SPEED_TILE_ROWS);
    uint64_t rng = 0x5eed5eedULL;
    int rc = -PI_ERR_NOMEM;
    float *tmp = malloc((size_t)d * 2 * sizeof *tmp), *x = tmp ? tmp + d : NULL;
    int32_t *idx = malloc((size_t)rows * sizeof *idx);
    float *y = malloc((size_t)d * sizeof *y);
    pi_pool_t *pool = pi_pool_new(n_threads < 1 ? 1 : n_threads);
    pi_ffn_work_t *work = pi_ffn_work_new(d, n_threads < 1 ? 1 : n_threads);
    struct pi_layer L = {0};
    if (!tmp || !idx || !y || !pool || !work) goto out;
    L.ffn_gate = speed_weight(tg, rows, d, &rng, tmp);
    L.ffn_up = speed_weight(tu, rows, d, &rng, tmp);
    L.ffn_down_t = speed_weight(td, rows, d, &rng, tmp);
    if (!L.ffn_gate.data || !L.ffn_up.data || !L.ffn_down_t.data) goto out;
    for (int64_t j = 0; j < d; j++) x[j] = (float)((double)(pi_rng_splitmix64(&rng) >> 11) * 0x1p-53 - 0.5);
    for (int64_t i = 0; i < rows; i++) idx[i] = (int32_t)i;
    double gb[SPEED_REPS];
    for (int r = 0; r <= SPEED_REPS; r++) { /* pass 0 warms the pages and the pool */
        memset(y, 0, (size_t)d * sizeof *y);
        int64_t t0 = pi_clock_ns();
        int64_t active = pi_ffn_neurons(pool, work, &L, PI_FFN_ACT_RELU, NULL, x, idx, rows, y);
        int64_t ns = pi_clock_ns() - t0;
        double bytes = (double)rows * (double)L.ffn_gate.row_bytes +
                       (double)active * (double)(L.ffn_up.row_bytes + L.ffn_down_t.row_bytes);
        if (r > 0) gb[r - 1] = bytes / (double)(ns > 0 ? ns : 1);
    }
    qsort(gb, SPEED_REPS, sizeof gb[0], cmp_double);
    *gbs = gb[SPEED_REPS / 2];
    rc = 0;
out:
    free((void *)L.ffn_gate.data);
    free((void *)L.ffn_up.data);
    free((void *)L.ffn_down_t.data);
    pi_ffn_work_destroy(&work);
    pi_pool_destroy(&pool);
    free(tmp);
    free(idx);
    free(y);
    return rc;
}
