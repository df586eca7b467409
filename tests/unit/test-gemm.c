/*
 * tests/unit/test-gemm.c - kernels/cpu/gemm.h against a double-precision scalar reference: fresh random
 * shapes every run (edges below and across the MR, NR, MC, NC and KC blocks), all four transpose cases,
 * alpha and beta (beta 0 over a C full of NaN, which must never be read), each kernel variant this CPU
 * runs, and the same bits for 1, 2 and 3 threads.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gemm.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "tests/tap.h"

static struct pi_rng rng;

static int64_t dim(void)
{
    static const int64_t edges[] = {1, 5, 6, 7, 16, 17, 47, 48, 49, 128, 129, 255, 256, 257};
    if (pi_rng_below(&rng, 2)) return edges[pi_rng_below(&rng, PI_ARRAY_LEN(edges))];
    return 1 + (int64_t)pi_rng_below(&rng, 300);
}

static void fill(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = (float)(2.0 * pi_rng_uniform(&rng) - 1.0);
}

/* Normalised squared error of C against the double reference alpha op(A) op(B) + beta C0. */
static double nmse(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
                   float beta, const float *C0, const float *C)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (double)(ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
            double want = alpha * s + (beta != 0.0f ? beta * (double)C0[i * N + j] : 0.0);
            num += (C[i * N + j] - want) * (C[i * N + j] - want);
            den += want * want;
        }
    return den > 0 ? num / den : num;
}

/* One random case on every pool: error against the reference, and identical bits across pools. */
static void one_case(pi_pool_t *pools[3], const char *variant, int idx, double *worst, int *bad_bits)
{
    bool ta = pi_rng_below(&rng, 2), tb = pi_rng_below(&rng, 2);
    int64_t M = dim(), N = dim(), K = dim();
    float alpha = pi_rng_below(&rng, 2) ? 1.0f : -0.75f, beta = (float[]){0.0f, 1.0f, 0.5f}[pi_rng_below(&rng, 3)];
    float *A = malloc(sizeof(float) * (size_t)(M * K)), *B = malloc(sizeof(float) * (size_t)(K * N));
    float *C0 = malloc(sizeof(float) * (size_t)(M * N)), *C[3];
    fill(A, (size_t)(M * K));
    fill(B, (size_t)(K * N));
    fill(C0, (size_t)(M * N));
    for (int p = 0; p < 3; p++) {
        C[p] = malloc(sizeof(float) * (size_t)(M * N));
        if (beta == 0.0f)
            for (int64_t i = 0; i < M * N; i++) C[p][i] = NAN;
        else memcpy(C[p], C0, sizeof(float) * (size_t)(M * N));
        pi_sgemm(pools[p], ta, tb, M, N, K, alpha, A, ta ? M : K, B, tb ? K : N, beta, C[p], N);
    }
    double e = nmse(ta, tb, M, N, K, alpha, A, B, beta, C0, C[0]);
    if (!(e <= *worst)) *worst = e;
    if (memcmp(C[0], C[1], sizeof(float) * (size_t)(M * N)) || memcmp(C[0], C[2], sizeof(float) * (size_t)(M * N)))
        (*bad_bits)++;
    if (!(e < 1e-10))
        tap_diag("%s case %d: %s%s M %lld N %lld K %lld alpha %g beta %g: nmse %.3g", variant, idx, ta ? "T" : "N",
                 tb ? "T" : "N", (long long)M, (long long)N, (long long)K, alpha, beta, e);
    free(A), free(B), free(C0);
    for (int p = 0; p < 3; p++) free(C[p]);
}

int main(void)
{
    uint64_t seed = (uint64_t)time(NULL);
    pi_rng_seed(&rng, seed);
    tap_diag("seed %llu", (unsigned long long)seed);
    pi_pool_t *pools[3] = {NULL, pi_pool_new(2), pi_pool_new(3)};
    if (!pools[1] || !pools[2]) tap_bail("no pool");
    for (int isa = PI_KERNEL_SCALAR; isa <= PI_KERNEL_AVX512; isa++) {
        if (pi_kernels_use(isa) != (enum pi_kernel_isa)isa) { /* the variant this CPU lacks: skipped */
            tap_skip(2, "this CPU or build lacks the variant");
            continue;
        }
        const char *name = pi_sgemm_kernel_name();
        double worst = 0;
        int bad_bits = 0;
        for (int c = 0; c < 40; c++) one_case(pools, name, c, &worst, &bad_bits);
        /* float32 sums of up to 300 products of values in [-1, 1] against double: ~1e-14 typical, 1e-12 at worst (cancellation) */
        tap_ok(worst < 1e-10, "%s: 40 random shapes and transposes match the double reference (worst nmse %.3g)", name,
               worst);
        tap_is_int(bad_bits, 0, "  the same bits on 1, 2 and 3 threads");
    }
    pi_kernels_use(-1);
    float c = NAN;
    pi_sgemm(NULL, false, false, 1, 1, 0, 1.0f, NULL, 0, NULL, 1, 0.0f, &c, 1);
    tap_ok(c == 0.0f, "K = 0 with beta 0 clears C");
    pi_pool_destroy(&pools[1]);
    pi_pool_destroy(&pools[2]);
    return tap_done();
}
