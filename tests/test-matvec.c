/*
 * tests/test-matvec.c - kernels/cpu/matvec.h against plain loops over the scalar reference dot
 * product: every type, odd row counts, several pool sizes (NULL, 1, 2, 3 threads), matmul with token
 * counts around the tile size. Inputs are fresh random numbers (seed printed; PI_SEED repeats).
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "tests/tap.h"

static uint64_t rng_state;

static float rndf(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static const enum pi_type types[] = {
    PI_TYPE_F32, PI_TYPE_F16, PI_TYPE_BF16, PI_TYPE_Q4_0, PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1,
    PI_TYPE_Q8_0, PI_TYPE_Q2_K, PI_TYPE_Q3_K, PI_TYPE_Q4_K, PI_TYPE_Q5_K, PI_TYPE_Q6_K,
};

/* Weights for type t: quantised random floats where a quantiser exists, else random bytes with
 * finite fp16 super-block scales (K-quants). */
static void *random_matrix(enum pi_type t, int64_t rows, int64_t cols, size_t *row_bytes)
{
    uint64_t rb = 0;
    pi_type_row_bytes(t, (uint64_t)cols, &rb);
    *row_bytes = (size_t)rb;
    uint8_t *w = malloc((size_t)rb * (size_t)rows);
    float *x = malloc((size_t)cols * 4);
    const struct pi_type_info *ti = pi_type_get(t);
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *row = w + (size_t)r * rb;
        if (pi_quantize_supported(t)) {
            for (int64_t i = 0; i < cols; i++) x[i] = rndf();
            pi_quantize_row(t, x, row, cols);
            continue;
        }
        for (size_t i = 0; i < rb; i++) row[i] = (uint8_t)(rndf() * 128 + 128);
        for (int64_t b = 0; b < cols / ti->block_elems; b++) {
            uint8_t *blk = row + (size_t)b * ti->block_bytes;
            uint16_t d = pi_fp32_to_fp16(0.002f + 0.01f * (rndf() + 1));
            size_t off = t == PI_TYPE_Q2_K ? 80 : t == PI_TYPE_Q3_K ? 108 : t == PI_TYPE_Q6_K ? 208 : 0;
            memcpy(blk + off, &d, 2);
            if (t == PI_TYPE_Q2_K || t == PI_TYPE_Q4_K || t == PI_TYPE_Q5_K) memcpy(blk + off + 2, &d, 2);
        }
    }
    free(x);
    return w;
}

/* max_r |y[r] - ref[r]| / (1 + max |ref|) */
static double rel_err(const float *y, const float *ref, int64_t n)
{
    double e = 0, m = 0;
    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)y[i] - ref[i])), m = fmax(m, fabs(ref[i]));
    return e / (1 + m);
}

int main(void)
{
    static const int64_t row_counts[] = {1, 7, 33, 129};
    static const int64_t tok_counts[] = {1, 3, 17};
    static const int pool_sizes[] = {0, 1, 2, 3}; /* 0 = NULL pool */
    const int64_t cols = 512;
    const char *s = getenv("PI_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL);
    rng_state = seed;
    tap_diag("seed %llu, variant %s", (unsigned long long)seed, pi_kernels_variant());

    pi_pool_t *pools[4] = {NULL};
    for (int i = 1; i < 4; i++) pools[i] = pi_pool_new(pool_sizes[i]);
    const pi_vec_dot_fn *ref_dot = pi_kernels_table(PI_KERNEL_SCALAR)->vec_dot;
    float *X = malloc(17 * cols * 4), *Y = malloc(17 * 129 * 4), *R = malloc(17 * 129 * 4);
    uint8_t *xq = malloc(17 * (size_t)cols * 4);

    for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
        enum pi_type t = types[k];
        double worst_mv = 0, worst_mm = 0;
        for (size_t rc = 0; rc < PI_ARRAY_LEN(row_counts); rc++) {
            int64_t rows = row_counts[rc];
            size_t rb;
            uint8_t *W = random_matrix(t, rows, cols, &rb);
            size_t xb = pi_act_row_bytes(t, cols);
            for (int64_t i = 0; i < 17 * cols; i++) X[i] = rndf();
            for (int64_t i = 0; i < 17; i++) pi_quantize_act(t, X + i * cols, xq + (size_t)i * xb, cols);
            for (int64_t i = 0; i < 17; i++)
                for (int64_t r = 0; r < rows; r++) R[i * rows + r] = ref_dot[t](W + (size_t)r * rb, xq + (size_t)i * xb, cols);
            for (size_t ps = 0; ps < PI_ARRAY_LEN(pool_sizes); ps++) {
                for (int64_t r = 0; r < rows; r++) Y[r] = NAN;
                pi_matvec(pools[ps], t, W, rows, cols, X, Y);
                worst_mv = fmax(worst_mv, rel_err(Y, R, rows));
                for (size_t tc = 0; tc < PI_ARRAY_LEN(tok_counts); tc++) {
                    int64_t n = tok_counts[tc];
                    for (int64_t i = 0; i < n * rows; i++) Y[i] = NAN;
                    pi_matmul(pools[ps], t, W, rows, cols, X, n, Y);
                    worst_mm = fmax(worst_mm, rel_err(Y, R, n * rows));
                }
            }
            free(W);
        }
        /* same quantised inputs; only the summation order of the variant differs */
        tap_ok(worst_mv < 1e-5, "%s matvec vs scalar loop (rows 1..129, pools NULL/1/2/3): %.3g",
               pi_type_name(t), worst_mv);
        tap_ok(worst_mm < 1e-5, "%s matmul vs scalar loop (tokens 1/3/17): %.3g", pi_type_name(t), worst_mm);
    }
    for (int i = 1; i < 4; i++) pi_pool_destroy(&pools[i]);
    free(X), free(Y), free(R), free(xq);

    /* odd block counts (96 = 3 blocks of 32, 33 floats) and pi_vec_mad against dequant + axpy */
    for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
        enum pi_type t = types[k];
        uint32_t be = pi_type_get(t)->block_elems;
        int64_t c = be == 1 ? 33 : be == 32 ? 96 : 768, rows = 5;
        size_t rb;
        uint8_t *W = random_matrix(t, rows, c, &rb);
        float *x = malloc((size_t)c * 4), *y = malloc(rows * 4), *row = malloc((size_t)c * 4);
        float *acc = malloc((size_t)c * 4), *ref = malloc((size_t)c * 4);
        uint8_t *q = malloc(pi_act_row_bytes(t, c));
        for (int64_t i = 0; i < c; i++) x[i] = rndf(), acc[i] = ref[i] = rndf();
        pi_quantize_act(t, x, q, c);
        pi_matvec(NULL, t, W, rows, c, x, y);
        float want[5];
        for (int64_t r = 0; r < rows; r++) want[r] = ref_dot[t](W + (size_t)r * rb, q, c);
        double e = rel_err(y, want, rows);
        for (int64_t r = 0; r < rows; r++) {
            float a = rndf();
            pi_vec_mad(t, W + (size_t)r * rb, a, acc, c);
            pi_dequant_row(t, W + (size_t)r * rb, row, c);
            for (int64_t i = 0; i < c; i++) ref[i] += a * row[i];
        }
        tap_ok(e < 1e-5, "%s matvec with %lld columns: %.3g", pi_type_name(t), (long long)c, e);
        tap_ok(memcmp(acc, ref, (size_t)c * 4) == 0, "%s pi_vec_mad equals dequant + axpy", pi_type_name(t));
        free(W), free(x), free(y), free(row), free(acc), free(ref), free(q);
    }
    return tap_done();
}
