/*
 * tests/unit/test-matvec.c - kernels/cpu/matvec.h against plain loops over the scalar reference dot
 * product: every type, odd row counts, several pool sizes (NULL, 1, 2, 3 threads), matmul with token
 * counts around the 4-token kernels' step (1, 3, 4, 5, 17, 64). pi_matmul must equal pi_matvec token by
 * token bit for bit (the forward pass compares prompt and decode logits), and every variant's 4-token
 * kernel its own 1-token kernel bit for bit, at block counts with and without a remainder. Inputs are
 * fresh random numbers (seed printed; PI_SEED repeats).
 */
#include "config.h"

#include <math.h>

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "tests/tap.h"

static uint64_t rng_state;

static float rndf(void)
{
    uint64_t z = pi_rng_splitmix64(&rng_state);
    return (float)((double)(z >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static const enum pi_type types[] = {
    PI_TYPE_F32,  PI_TYPE_F16,  PI_TYPE_BF16, PI_TYPE_Q4_0, PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1,
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
        /* rndf() can round to 1.0f (a double in [0, 1) cast to float): 256 would overflow the cast */
        for (size_t i = 0; i < rb; i++) row[i] = (uint8_t)fminf(rndf() * 128 + 128, 255.0f);
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

/* The worst |y - ref| of n outputs, each over its own magnitude mag[i] = sum_j |w_j x_j| (the scale of
 * a summation-order difference, however much the terms cancel). */
static double rel_err(const float *y, const float *ref, const double *mag, int64_t n)
{
    double e = 0;
    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)y[i] - ref[i]) / (mag[i] + 1e-30));
    return e;
}

/* Each available variant's vec_dot4 and vec_dot8 (two rows) against its own vec_dot (bit for bit) and
 * the scalar reference. */
static void test_dot4(void)
{
    static const int64_t block_counts[] = {1, 3, 4, 7, 16};
    const pi_vec_dot_fn *ref_dot = pi_kernels_table(PI_KERNEL_SCALAR)->vec_dot;
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        if (!tab) {
            tap_skip(1, "variant not available here");
            continue;
        }
        int checked = 0, checked8 = 0, same = 1;
        double worst = 0;
        for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
            enum pi_type t = types[k];
            if (!tab->vec_dot4[t]) continue;
            for (size_t bc = 0; bc < PI_ARRAY_LEN(block_counts); bc++) {
                uint32_t be = pi_type_get(t)->block_elems;
                /* float weights: whole 64-wide steps, a 16-wide step and a scalar tail */
                int64_t cols =
                    be == 1 ? 16 * block_counts[bc] + (int64_t)(64 * (bc & 1) + bc) : (int64_t)be * block_counts[bc];
                size_t rb, xb = pi_act_row_bytes(t, cols);
                uint8_t *W = random_matrix(t, 2, cols, &rb), *xq = malloc(4 * xb);
                float *x = malloc((size_t)cols * 4 * 4), *wd = malloc((size_t)cols * 4 * 2), out[4], out8[8];
                for (int i = 0; i < 4; i++) {
                    for (int64_t j = 0; j < cols; j++) x[(size_t)i * cols + j] = rndf();
                    pi_quantize_act(t, x + (size_t)i * cols, xq + (size_t)i * xb, cols);
                }
                pi_dequant_row(t, W, wd, cols);
                pi_dequant_row(t, W + rb, wd + cols, cols);
                tab->vec_dot4[t](W, xq, xb, out, cols);
                if (tab->vec_dot8[t]) tab->vec_dot8[t](W, rb, xq, xb, out8, cols), checked8++;
                for (int i = 0; i < 8; i++) {
                    const uint8_t *row = W + (size_t)(i / 4) * rb;
                    float one = tab->vec_dot[t](row, xq + (size_t)(i % 4) * xb, cols);
                    float ref = ref_dot[t](row, xq + (size_t)(i % 4) * xb, cols);
                    float got = i < 4 ? out[i] : tab->vec_dot8[t] ? out8[i] : one;
                    same &= memcmp(&one, &got, 4) == 0 && (!tab->vec_dot8[t] || memcmp(&one, &out8[i], 4) == 0);
                    /* summation order differs from the scalar loop: normalise by sum |w_j x_j| (the
                     * magnitude the rounding errors scale with), as tests/unit/test-quant-simd.c does */
                    double mag = 1e-30;
                    for (int64_t j = 0; j < cols; j++)
                        mag += fabs((double)wd[(size_t)(i / 4) * cols + j] * x[(size_t)(i % 4) * cols + j]);
                    worst = fmax(worst, fabs((double)got - ref) / mag);
                }
                checked++;
                free(W), free(xq), free(x), free(wd);
            }
        }
        tap_ok(same && worst < 1e-5, "%s: vec_dot4 (%d cases) and vec_dot8 (%d) == vec_dot bit for bit, vs scalar %.3g",
               tab->name, checked, checked8, worst);
    }
}

/* Rows w[0..3] through vec_dot4r, each output against the variant's vec_dot (bit for bit) and the
 * scalar reference (normalised by sum |w x|); wd: the dequantised rows (5, cols), row r at W + r * rb. */
static void check_dot4r(const struct pi_kernel_table *tab, enum pi_type t, const uint8_t *W, size_t rb, const float *wd,
                        const float *x, const uint8_t *xq, int64_t cols, const int quad[4], const int *pf, int *same,
                        double *worst)
{
    const void *w[4], *next[4];
    for (int i = 0; i < 4; i++) w[i] = W + (size_t)quad[i] * rb;
    for (int i = 0; pf && i < 4; i++) next[i] = W + (size_t)pf[i] * rb;
    float out[4];
    tab->vec_dot4r[t](w, pf ? next : NULL, xq, out, cols);
    for (int i = 0; i < 4; i++) {
        float one = tab->vec_dot[t](w[i], xq, cols),
              ref = pi_kernels_table(PI_KERNEL_SCALAR)->vec_dot[t](w[i], xq, cols);
        *same &= memcmp(&one, &out[i], 4) == 0;
        double mag = 1e-30;
        for (int64_t j = 0; j < cols; j++) mag += fabs((double)wd[(size_t)quad[i] * cols + j] * x[j]);
        *worst = fmax(*worst, fabs((double)out[i] - ref) / mag);
    }
}

/* Each available variant's vec_dot2 (two rows of one matrix, any order, one token) and vec_dot4r (four
 * rows, any order, repeats, with and without the prefetch offset) against its own vec_dot (bit for bit)
 * and the scalar reference: random bytes with finite block scales, so every weight bit pattern occurs;
 * block counts with and without a remainder after the 4-block steps. */
static void test_dot2(void)
{
    static const int64_t block_counts[] = {1, 2, 3, 4, 5, 7, 16, 161};
    static const int pairs[][2] = {{0, 1}, {1, 0}, {3, 1}, {2, 4}, {4, 4}};
    static const int quads[][4] = {{0, 1, 2, 3}, {1, 2, 3, 4}, {4, 3, 2, 1}, {2, 0, 4, 0}, {3, 3, 3, 3}};
    const pi_vec_dot_fn *ref_dot = pi_kernels_table(PI_KERNEL_SCALAR)->vec_dot;
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        if (!tab) {
            tap_skip(2, "variant not available here");
            continue;
        }
        int checked = 0, same = 1, checked4 = 0, same4 = 1;
        double worst = 0, worst4 = 0;
        for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
            enum pi_type t = types[k];
            if (!tab->vec_dot2[t] && !tab->vec_dot4r[t]) continue;
            const struct pi_type_info *ti = pi_type_get(t);
            for (size_t bc = 0; bc < PI_ARRAY_LEN(block_counts); bc++) {
                int64_t cols = (int64_t)ti->block_elems * block_counts[bc];
                size_t rb;
                uint8_t *W = random_matrix(t, 5, cols, &rb), *xq = malloc(pi_act_row_bytes(t, cols));
                float *x = malloc((size_t)cols * 4), *wd = malloc((size_t)cols * 4 * 5);
                if (ti->block_elems == 32) /* legacy blocks: the fp16 scale first, then any bytes */
                    for (int64_t b = 0; b < 5 * block_counts[bc]; b++) {
                        uint8_t *blk = W + (size_t)b * ti->block_bytes;
                        uint16_t d = pi_fp32_to_fp16(0.002f + 0.01f * (rndf() + 1));
                        for (size_t i = 2; i < ti->block_bytes; i++) blk[i] = (uint8_t)(rndf() * 128 + 128);
                        memcpy(blk, &d, 2);
                        /* Q4_1 / Q5_1: a finite minimum too (an Inf or NaN one makes the dot a NaN,
                         * whose sign and payload depend on the operand order the compiler chose) */
                        if (t == PI_TYPE_Q4_1 || t == PI_TYPE_Q5_1) {
                            uint16_t m = pi_fp32_to_fp16(0.01f * rndf());
                            memcpy(blk + 2, &m, 2);
                        }
                    }
                for (int64_t j = 0; j < cols; j++) x[j] = rndf();
                pi_quantize_act(t, x, xq, cols);
                for (int r = 0; r < 5; r++) pi_dequant_row(t, W + (size_t)r * rb, wd + (size_t)r * cols, cols);
                for (size_t q = 0; tab->vec_dot4r[t] && q < PI_ARRAY_LEN(quads); q++) {
                    /* pf: none, and four rows of the matrix in another order (prefetches never
                     * fault, but the test should not rely on that) */
                    check_dot4r(tab, t, W, rb, wd, x, xq, cols, quads[q], NULL, &same4, &worst4);
                    check_dot4r(tab, t, W, rb, wd, x, xq, cols, quads[q], quads[(q + 2) % PI_ARRAY_LEN(quads)], &same4,
                                &worst4);
                    checked4 += 2;
                }
                for (size_t p = 0; tab->vec_dot2[t] && p < PI_ARRAY_LEN(pairs); p++) {
                    float out[2];
                    tab->vec_dot2[t](W + (size_t)pairs[p][0] * rb, W + (size_t)pairs[p][1] * rb, xq, out, cols);
                    for (int i = 0; i < 2; i++) {
                        const uint8_t *row = W + (size_t)pairs[p][i] * rb;
                        float one = tab->vec_dot[t](row, xq, cols), ref = ref_dot[t](row, xq, cols);
                        same &= memcmp(&one, &out[i], 4) == 0;
                        double mag = 1e-30;
                        for (int64_t j = 0; j < cols; j++)
                            mag += fabs((double)wd[(size_t)pairs[p][i] * cols + j] * x[j]);
                        worst = fmax(worst, fabs((double)out[i] - ref) / mag);
                    }
                    checked++;
                }
                free(W), free(xq), free(x), free(wd);
            }
        }
        if (checked == 0) tap_skip(1, "no vec_dot2 in this variant");
        else
            tap_ok(same && worst < 1e-5,
                   "%s: vec_dot2 (%d row pairs, in both orders) == vec_dot bit for bit, vs scalar %.3g", tab->name,
                   checked, worst);
        if (checked4 == 0) tap_skip(1, "no vec_dot4r in this variant");
        else
            tap_ok(same4 && worst4 < 1e-5,
                   "%s: vec_dot4r (%d row quadruples, any order, repeats) == vec_dot bit for bit, vs scalar %.3g",
                   tab->name, checked4, worst4);
    }
}

/* Each available variant's fused vec_mad (y += a * row) against the scalar dequantiser and a plain
 * multiply-then-add loop, bit for bit; lengths with and without a loop tail. */
static void test_vec_mad(void)
{
    /* 32- and 8-wide steps, tails; whole 32-element blocks (Q4_0, Q8_0): 1, 2, 3, 8, 9, 32 and 160 of them */
    static const int64_t lens[] = {32, 64, 96, 256, 288, 1024, 5120, 8 * 33 + 5, 21, 48, 5120 + 17};
    const struct pi_kernel_table *sc = pi_kernels_table(PI_KERNEL_SCALAR);
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        int checked = 0, same = 1;
        for (size_t k = 0; tab && k < PI_ARRAY_LEN(types); k++) {
            enum pi_type t = types[k];
            for (size_t l = 0; tab->vec_mad[t] && l < PI_ARRAY_LEN(lens); l++) {
                int64_t n = lens[l];
                if (n % pi_type_get(t)->block_elems) continue;
                size_t rb;
                uint8_t *W = random_matrix(t, 1, n, &rb);
                float *y = malloc((size_t)n * 4), *ref = malloc((size_t)n * 4), *row = malloc((size_t)n * 4);
                float a = rndf() * 3;
                for (int64_t i = 0; i < n; i++) y[i] = ref[i] = rndf();
                sc->dequant[t](W, row, n);
                for (int64_t i = 0; i < n; i++) ref[i] += a * row[i];
                tab->vec_mad[t](W, a, y, n);
                same &= memcmp(y, ref, (size_t)n * 4) == 0;
                checked++;
                free(W), free(y), free(ref), free(row);
            }
        }
        if (!tab) tap_skip(1, "variant not available here");
        else tap_ok(same, "%s: vec_mad == dequant + axpy bit for bit (%d cases)", tab->name, checked);
    }
}

/* Each available variant's vec_mad4 (1..4 rows added in one pass over y) against the scalar
 * dequantiser and a plain multiply-then-add loop over the rows in order, bit for bit, on fresh random
 * rows and scales: every row count, with and without prefetch rows (other rows of the matrix), lengths
 * with and without a loop tail. */
static void test_vec_mad4(void)
{
    static const int64_t lens[] = {32, 64, 96, 256, 288, 1024, 5120, 8 * 33 + 5, 21, 48, 5120 + 17};
    const struct pi_kernel_table *sc = pi_kernels_table(PI_KERNEL_SCALAR);
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        int checked = 0, same = 1;
        for (size_t k = 0; tab && k < PI_ARRAY_LEN(types); k++) {
            enum pi_type t = types[k];
            for (size_t l = 0; tab->vec_mad4[t] && l < PI_ARRAY_LEN(lens); l++) {
                int64_t n = lens[l];
                if (n % pi_type_get(t)->block_elems) continue;
                size_t rb;
                uint8_t *W = random_matrix(t, 8, n, &rb);
                float *y = malloc((size_t)n * 4), *ref = malloc((size_t)n * 4), *row = malloc((size_t)n * 4);
                for (int m = 1; m <= 4; m++)
                    for (int with_pf = 0; with_pf < 2; with_pf++) {
                        const void *rows[4], *pf[4];
                        float a[4];
                        for (int r = 0; r < m; r++) {
                            rows[r] = W + (size_t)((3 * r + m) % 8) * rb, pf[r] = W + (size_t)(7 - r) * rb;
                            a[r] = rndf() * 3;
                        }
                        for (int64_t i = 0; i < n; i++) y[i] = ref[i] = rndf();
                        for (int r = 0; r < m; r++) {
                            sc->dequant[t](rows[r], row, n);
                            for (int64_t i = 0; i < n; i++) ref[i] += a[r] * row[i];
                        }
                        tab->vec_mad4[t](rows, a, m, with_pf ? pf : NULL, y, n);
                        same &= memcmp(y, ref, (size_t)n * 4) == 0;
                        checked++;
                    }
                free(W), free(y), free(ref), free(row);
            }
        }
        if (!tab) tap_skip(1, "variant not available here");
        else if (checked == 0) tap_skip(1, "no vec_mad4 in this variant");
        else
            tap_ok(same, "%s: vec_mad4 (1..4 rows) == dequant + axpy per row in order, bit for bit (%d cases)",
                   tab->name, checked);
    }
}

/* Each available variant's vec_madg4 (grouped rows, kernels/cpu/quant.h) against the scalar reference,
 * bit for bit: Q4_0 and Q8_0 rows of a fresh random matrix's columns (pi_grouped_from_cols), 1..4 rows
 * per call with their scales all one group's or from two groups, with and without prefetch rows; and
 * against the source's dequantised values with a multiply-then-add loop (the same floats). */
static void test_vec_madg4(void)
{
    static const int64_t lens[] = {32, 64, 96, 256, 1024, 5120};
    static const enum pi_type gt[] = {PI_TYPE_Q4_0, PI_TYPE_Q8_0};
    const struct pi_kernel_table *sc = pi_kernels_table(PI_KERNEL_SCALAR);
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        int checked = 0, same = 1, deq = 1;
        for (size_t k = 0; tab && k < PI_ARRAY_LEN(gt); k++) {
            const enum pi_type t = gt[k];
            for (size_t l = 0; l < PI_ARRAY_LEN(lens); l++) {
                const int64_t n = lens[l], C = 64; /* source (n, 64): two groups of 32 columns */
                size_t rb;
                uint8_t *W = random_matrix(t, n, C, &rb);
                const struct pi_weight src = {t, n, C, rb, W, NULL, NULL, NULL};
                const size_t grb = pi_grouped_row_bytes(t, n);
                uint8_t *q = malloc(grb * (size_t)C);
                uint16_t *s = malloc(sizeof(uint16_t) * 2 * (size_t)n);
                float *y = malloc((size_t)n * 4), *ref = malloc((size_t)n * 4), *col = malloc((size_t)C * 4);
                float *val = malloc((size_t)n * (size_t)C * 4); /* val[j n + i]: element i of column j */
                pi_grouped_from_cols(&src, 0, 2, q, s);
                for (int64_t i = 0; i < n; i++) {
                    sc->dequant[t](W + (size_t)i * rb, col, C);
                    for (int64_t j = 0; j < C; j++) val[j * n + i] = col[j];
                }
                for (int m = 1; m <= 4; m++)
                    for (int mix = 0; mix < 2; mix++)
                        for (int with_pf = 0; with_pf < 2; with_pf++) {
                            const void *rows[4], *pf[4];
                            const uint16_t *ss[4];
                            float a[4];
                            int cols[4];
                            for (int r = 0; r < m; r++) {
                                cols[r] = (5 * r + m + (mix && r % 2 ? 32 : 0)) % 64; /* mix: groups 0 and 1 */
                                if (!mix) cols[r] %= 32;
                                rows[r] = q + (size_t)cols[r] * grb, ss[r] = s + (size_t)(cols[r] / 32) * (size_t)n;
                                pf[r] = q + (size_t)(63 - r) * grb, a[r] = rndf() * 3;
                            }
                            for (int64_t i = 0; i < n; i++) y[i] = ref[i] = rndf();
                            float *y2 = malloc((size_t)n * 4);
                            memcpy(y2, y, (size_t)n * 4);
                            sc->vec_madg4[t](rows, ss, a, m, NULL, ref, n);
                            tab->vec_madg4[t](rows, ss, a, m, with_pf ? pf : NULL, y, n);
                            same &= memcmp(y, ref, (size_t)n * 4) == 0;
                            for (int r = 0; r < m; r++)
                                for (int64_t i = 0; i < n; i++)
                                    y2[i] += a[r] * val[(size_t)cols[r] * (size_t)n + (size_t)i];
                            deq &= memcmp(y2, ref, (size_t)n * 4) == 0;
                            free(y2);
                            checked++;
                        }
                free(W), free(q), free(s), free(y), free(ref), free(col), free(val);
            }
        }
        if (!tab) tap_skip(1, "variant not available here");
        else
            tap_ok(same && deq,
                   "%s: vec_madg4 (1..4 grouped rows, one group or two) == the scalar reference == dequantised "
                   "columns times a, added in order, bit for bit (%d cases)",
                   tab->name, checked);
    }
}

/* Long rows, so that pi_matmul's token tile (256 KiB of activations) holds fewer than 64 tokens and
 * 64 tokens cross tile boundaries: still equal to pi_matvec per token, bit for bit. */
static void test_tiles(pi_pool_t *pool)
{
    static const enum pi_type tt[] = {PI_TYPE_F16, PI_TYPE_Q4_0, PI_TYPE_Q8_0, PI_TYPE_Q4_K};
    const int64_t cols = 8192, rows = 5, n = 64;
    float *X = malloc((size_t)(n * cols) * 4), *Y = malloc((size_t)(n * rows) * 4), *M = malloc((size_t)(n * rows) * 4);
    for (int64_t i = 0; i < n * cols; i++) X[i] = rndf();
    int same = 1;
    for (size_t k = 0; k < PI_ARRAY_LEN(tt); k++) {
        size_t rb;
        uint8_t *W = random_matrix(tt[k], rows, cols, &rb);
        pi_matmul(pool, tt[k], W, rows, cols, X, n, Y);
        for (int64_t i = 0; i < n; i++) pi_matvec(NULL, tt[k], W, rows, cols, X + i * cols, M + i * rows);
        same &= memcmp(Y, M, (size_t)(n * rows) * 4) == 0;
        free(W);
    }
    tap_ok(same, "matmul across token tiles (8192 columns, 64 tokens) == matvec per token, bit for bit");
    free(X), free(Y), free(M);
}

int main(void)
{
    static const int64_t row_counts[] = {1, 7, 33, 129};
    static const int64_t tok_counts[] = {1, 3, 4, 5, 17, 64};
    static const int pool_sizes[] = {0, 1, 2, 3}; /* 0 = NULL pool */
    const int64_t cols = 512;
    const char *s = getenv("PI_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL);
    rng_state = seed;
    tap_diag("seed %llu, variant %s", (unsigned long long)seed, pi_kernels_variant());

    pi_pool_t *pools[4] = {NULL};
    for (int i = 1; i < 4; i++) pools[i] = pi_pool_new(pool_sizes[i]);
    const pi_vec_dot_fn *ref_dot = pi_kernels_table(PI_KERNEL_SCALAR)->vec_dot;
    enum { NT = 64 };
    float *X = malloc(NT * cols * 4), *Y = malloc(NT * 129 * 4), *R = malloc(NT * 129 * 4);
    float *M = malloc(NT * 129 * 4), *wd = malloc((size_t)cols * 4), *xd = malloc((size_t)NT * cols * 4);
    double *mag = malloc(NT * 129 * sizeof(double));
    uint8_t *xq = malloc(NT * (size_t)cols * 4);
    test_dot4();
    test_dot2();
    test_vec_mad();
    test_vec_mad4();
    test_vec_madg4();

    for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
        enum pi_type t = types[k];
        double worst_mv = 0, worst_mm = 0;
        int mm_same = 1;
        for (size_t rc = 0; rc < PI_ARRAY_LEN(row_counts); rc++) {
            int64_t rows = row_counts[rc];
            size_t rb;
            uint8_t *W = random_matrix(t, rows, cols, &rb);
            size_t xb = pi_act_row_bytes(t, cols);
            for (int64_t i = 0; i < NT * cols; i++) X[i] = rndf();
            for (int64_t i = 0; i < NT; i++) pi_quantize_act(t, X + i * cols, xq + (size_t)i * xb, cols);
            for (int64_t i = 0; i < NT; i++)
                for (int64_t r = 0; r < rows; r++)
                    R[i * rows + r] = ref_dot[t](W + (size_t)r * rb, xq + (size_t)i * xb, cols);
            /* each output's magnitude sum_j |w_j x_j| over the weights and activations as the kernels see them */
            const enum pi_type at = pi_vec_dot_type(t);
            for (int64_t i = 0; i < NT; i++)
                pi_kernels_table(PI_KERNEL_SCALAR)->dequant[at](xq + (size_t)i * xb, xd + (size_t)i * cols, cols);
            for (int64_t r = 0; r < rows; r++) {
                pi_kernels_table(PI_KERNEL_SCALAR)->dequant[t](W + (size_t)r * rb, wd, cols);
                for (int64_t i = 0; i < NT; i++) {
                    double m = 0;
                    for (int64_t j = 0; j < cols; j++) m += fabs((double)wd[j] * xd[(size_t)i * cols + j]);
                    mag[i * rows + r] = m;
                }
            }
            for (int64_t i = 0; i < NT; i++) pi_matvec(NULL, t, W, rows, cols, X + i * cols, M + i * rows);
            for (size_t ps = 0; ps < PI_ARRAY_LEN(pool_sizes); ps++) {
                for (int64_t r = 0; r < rows; r++) Y[r] = NAN;
                pi_matvec(pools[ps], t, W, rows, cols, X, Y);
                worst_mv = fmax(worst_mv, rel_err(Y, R, mag, rows));
                for (size_t tc = 0; tc < PI_ARRAY_LEN(tok_counts); tc++) {
                    int64_t n = tok_counts[tc];
                    for (int64_t i = 0; i < n * rows; i++) Y[i] = NAN;
                    pi_matmul(pools[ps], t, W, rows, cols, X, n, Y);
                    worst_mm = fmax(worst_mm, rel_err(Y, R, mag, n * rows));
                    mm_same &= memcmp(Y, M, (size_t)(n * rows) * 4) == 0;
                }
            }
            free(W);
        }
        /* same quantised inputs; only the summation order of the variant differs (and where a kernel takes
         * an offset through the activations' block sums, as Q6_K's -32, its separate rounding): against
         * each output's sum |w x|, as test_dot4 measures (the earlier scale, 1 + the largest output,
         * let Q4_K and Q6_K reach 1e-5 now and then by cancellation) */
        tap_ok(worst_mv < 1e-5, "%s matvec vs scalar loop (rows 1..129, pools NULL/1/2/3): %.3g", pi_type_name(t),
               worst_mv);
        tap_ok(worst_mm < 1e-5, "%s matmul vs scalar loop (tokens 1/3/4/5/17/64): %.3g", pi_type_name(t), worst_mm);
        tap_ok(mm_same, "%s matmul == matvec per token, bit for bit", pi_type_name(t));
    }
    test_tiles(pools[2]);
    for (int i = 1; i < 4; i++) pi_pool_destroy(&pools[i]);
    free(X), free(Y), free(R), free(M), free(xq), free(wd), free(xd), free(mag);

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
        double mg[5];
        pi_kernels_table(PI_KERNEL_SCALAR)->dequant[pi_vec_dot_type(t)](q, ref, c); /* ref: scratch until below */
        for (int64_t r = 0; r < rows; r++) {
            want[r] = ref_dot[t](W + (size_t)r * rb, q, c);
            pi_dequant_row(t, W + (size_t)r * rb, row, c);
            mg[r] = 0;
            for (int64_t i = 0; i < c; i++) mg[r] += fabs((double)row[i] * ref[i]);
        }
        double e = rel_err(y, want, mg, rows);
        for (int64_t i = 0; i < c; i++) ref[i] = acc[i];
        for (int64_t r = 0; r < rows; r++) {
            float a = rndf();
            pi_vec_mad(t, W + (size_t)r * rb, a, acc, c);
            pi_dequant_row(t, W + (size_t)r * rb, row, c);
            for (int64_t i = 0; i < c; i++) ref[i] += a * row[i];
        }
        tap_ok(e < 1e-5, "%s matvec with %lld columns: %.3g", pi_type_name(t), (long long)c, e);
        tap_ok(memcmp(acc, ref, (size_t)c * 4) == 0, "%s pi_vec_mad equals dequant + axpy", pi_type_name(t));
        /* pi_vec_mad4 over the same rows (1..4 at a time, the next ones as prefetch rows) == the above */
        for (int64_t i = 0; i < c; i++) acc[i] = ref[i] = rndf();
        for (int64_t r0 = 0, m = 1; r0 < rows; r0 += m, m = m % 4 + 1) {
            const void *rr[4], *pf[4];
            float a[4];
            m = PI_MIN(m, rows - r0);
            for (int64_t j = 0; j < m; j++) {
                rr[j] = W + (size_t)(r0 + j) * rb, pf[j] = W + (size_t)((r0 + j + 1) % rows) * rb, a[j] = rndf();
                pi_vec_mad(t, rr[j], a[j], ref, c);
            }
            pi_vec_mad4(t, rr, a, (int)m, m % 2 ? pf : NULL, acc, c);
        }
        tap_ok(memcmp(acc, ref, (size_t)c * 4) == 0, "%s pi_vec_mad4 equals pi_vec_mad row by row", pi_type_name(t));
        free(W), free(x), free(y), free(row), free(acc), free(ref), free(q);
    }
    return tap_done();
}
