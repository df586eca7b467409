/*
 * tests/unit/test-quant-simd.c - every SIMD kernel variant this CPU can run (AVX2, AVX-512, AVX512-VNNI) against the
 * scalar reference on fresh random inputs: dot products by normalised error
 * |simd - scalar| / sum_i |w_i x_i| (per-type tolerance), dequantisers bit for bit. Weights are random
 * bytes with finite fp16 scales (so every bit pattern of the quants occurs, including -128 in Q8_0),
 * activations are quantised random floats with zero and large blocks mixed in. Row lengths cover the
 * unrolled loops and their tails. The K-quants also at their largest quants, scales and activations
 * (the int16 steps of the AVX-512 kernels at their bounds), and AVX512-VNNI against AVX-512 bit for
 * bit. The seed is printed; PI_SEED repeats a run.
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "tests/tap.h"

static uint64_t rng_state;

static uint64_t rnd(void) { return pi_rng_splitmix64(&rng_state); }

static float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0) * 2.0f - 1.0f; }

static const enum pi_type types[] = {
    PI_TYPE_F32,  PI_TYPE_F16,  PI_TYPE_BF16, PI_TYPE_Q4_0, PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1,
    PI_TYPE_Q8_0, PI_TYPE_Q2_K, PI_TYPE_Q3_K, PI_TYPE_Q4_K, PI_TYPE_Q5_K, PI_TYPE_Q6_K,
};

/* Byte offsets of the fp16 scale fields in a block of type t (d first; -1 = none). */
static void scale_offsets(enum pi_type t, int off[2])
{
    off[0] = 0, off[1] = -1;
    switch (t) {
    case PI_TYPE_Q4_1:
    case PI_TYPE_Q5_1:
    case PI_TYPE_Q4_K:
    case PI_TYPE_Q5_K: off[1] = 2; break;
    case PI_TYPE_Q2_K: off[0] = 80, off[1] = 82; break;
    case PI_TYPE_Q3_K: off[0] = 108; break;
    case PI_TYPE_Q6_K: off[0] = 208; break;
    default: break;
    }
}

static void random_weights(enum pi_type t, void *w, int64_t n)
{
    const struct pi_type_info *ti = pi_type_get(t);
    if (t == PI_TYPE_F32 || t == PI_TYPE_F16 || t == PI_TYPE_BF16) {
        float *x = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) x[i] = rndf() * 4;
        pi_quantize_row(t, x, w, n);
        free(x);
        return;
    }
    uint8_t *p = w;
    int off[2];
    scale_offsets(t, off);
    for (int64_t b = 0; b < n / ti->block_elems; b++) {
        uint8_t *blk = p + (size_t)b * ti->block_bytes;
        for (uint32_t i = 0; i < ti->block_bytes; i++) blk[i] = (uint8_t)rnd();
        for (int k = 0; k < 2; k++) {
            if (off[k] < 0) continue;
            uint16_t h = pi_fp32_to_fp16(rndf() * 0.05f);
            memcpy(blk + off[k], &h, 2);
        }
    }
}

static void random_acts(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t blk = i / 256;
        x[i] = blk % 5 == 3 ? 0.0f : rndf() * (blk % 3 == 1 ? 100.0f : 1.0f);
    }
}

/* The K-quants' largest integer sums: every quant at its maximum (all bits set: Q4_K 15, Q5_K 31, Q6_K
 * 63), the largest sub-block scales (6-bit 63; Q6_K's int8 127 and -128) and activations of +-127,
 * so that the AVX-512 kernels' sums of four reach 4 * 63 * 127 before they are narrowed to int16 (a
 * saturating step there, or an int16 product that overflows, shows up as a large error). Every
 * variant's vec_dot and, where it has them, vec_dot4r and vec_dot4 against the scalar one. */
static void test_k_extremes(void)
{
    static const enum pi_type kt[] = {PI_TYPE_Q4_K, PI_TYPE_Q5_K, PI_TYPE_Q6_K};
    const int64_t n = 1024;
    const struct pi_kernel_table *sc = pi_kernels_table(PI_KERNEL_SCALAR);
    uint8_t *w = malloc((size_t)n * 4), *xq = malloc(4 * ((size_t)n * 4 + 4096));
    float *x = malloc((size_t)n * 4), *wd = malloc((size_t)n * 4), *xd = malloc((size_t)n * 4);
    for (int isa = PI_KERNEL_AVX2; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        if (!tab) continue;
        double worst = 0;
        for (size_t k = 0; k < PI_ARRAY_LEN(kt); k++) {
            enum pi_type t = kt[k];
            const struct pi_type_info *ti = pi_type_get(t);
            size_t xs = pi_act_row_bytes(t, n);
            int off[2];
            scale_offsets(t, off);
            memset(w, 0xFF, (size_t)(n / ti->block_elems) * ti->block_bytes);
            for (int64_t b = 0; b < n / ti->block_elems; b++) {
                uint8_t *blk = w + (size_t)b * ti->block_bytes;
                if (t == PI_TYPE_Q6_K) memset(blk + 192, b % 2 ? 0x80 : 0x7F, 16); /* scales -128 / 127 */
                for (int j = 0; j < 2; j++) {
                    uint16_t h = pi_fp32_to_fp16(0.01f * (float)(j + 1));
                    if (off[j] >= 0) memcpy(blk + off[j], &h, 2);
                }
            }
            for (int tok = 0; tok < 4; tok++) { /* all +127, all -127, alternating blocks, alternating pairs */
                for (int64_t i = 0; i < n; i++)
                    x[i] = tok == 0   ? 1.0f
                           : tok == 1 ? -1.0f
                           : tok == 2 ? ((i / 256) % 2 ? -1.0f : 1.0f)
                                      : ((i / 2) % 2 ? -1.0f : 1.0f);
                pi_quantize_act(t, x, xq + (size_t)tok * xs, n);
            }
            sc->dequant[t](w, wd, n);
            for (int tok = 0; tok < 4; tok++) {
                sc->dequant[pi_vec_dot_type(t)](xq + (size_t)tok * xs, xd, n);
                double mag = 1e-30;
                for (int64_t i = 0; i < n; i++) mag += fabs((double)wd[i] * xd[i]);
                float ref = sc->vec_dot[t](w, xq + (size_t)tok * xs, n), got[3];
                got[0] = tab->vec_dot[t](w, xq + (size_t)tok * xs, n), got[1] = got[2] = got[0];
                if (tab->vec_dot4r[t]) {
                    const void *rows[4] = {w, w, w, w};
                    float o[4];
                    tab->vec_dot4r[t](rows, NULL, xq + (size_t)tok * xs, o, n);
                    got[1] = o[3];
                }
                if (tab->vec_dot4[t]) {
                    float o[4];
                    tab->vec_dot4[t](w, xq, xs, o, n);
                    got[2] = o[tok];
                }
                for (int g = 0; g < 3; g++) worst = fmax(worst, fabs((double)got[g] - ref) / mag);
            }
        }
        tap_ok(worst <= 2e-6,
               "%s Q4_K/Q5_K/Q6_K at the largest quants, scales and activations: vec_dot, vec_dot4r, "
               "vec_dot4 vs scalar %.3g",
               tab->name, worst);
    }
    free(w), free(xq), free(x), free(wd), free(xd);
}

int main(void)
{
    /* row lengths per block size: odd block counts and lengths that leave every loop a tail */
    static const int64_t lens1[] = {1, 7, 33, 100, 1001, 4099};
    static const int64_t lens32[] = {32, 64, 96, 160, 1056, 4128};
    static const int64_t lens256[] = {256, 512, 768, 1280, 4096, 4352};
    const int64_t nmax = 4352;
    const char *s = getenv("PI_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 24);
    rng_state = seed;
    tap_diag("seed %llu (set PI_SEED to repeat)", (unsigned long long)seed);

    const struct pi_kernel_table *sc = pi_kernels_table(PI_KERNEL_SCALAR);
    void *w = malloc((size_t)nmax * 4), *xq = malloc((size_t)nmax * 4 + 4096);
    float *x = malloc((size_t)nmax * 4), *wd = malloc((size_t)nmax * 4), *xd = malloc((size_t)nmax * 4);
    float *d1 = malloc((size_t)nmax * 4), *d2 = malloc((size_t)nmax * 4);
    int tested = 0;

    for (int isa = PI_KERNEL_AVX2; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        if (!tab) {
            tap_diag("variant %d not available on this CPU/build", isa);
            continue;
        }
        for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
            enum pi_type t = types[k];
            bool nd = pi_kernels_native_vec_dot((enum pi_kernel_isa)isa, t);
            bool nq = pi_kernels_native_dequant((enum pi_kernel_isa)isa, t);
            if (!nd && !nq) continue;
            double worst = 0;
            int64_t deq_bad = 0;
            uint32_t be = pi_type_get(t)->block_elems;
            const int64_t *lens = be == 1 ? lens1 : be == 32 ? lens32 : lens256;
            for (size_t li = 0; li < PI_ARRAY_LEN(lens1); li++) {
                int64_t n = lens[li];
                for (int rep = 0; rep < 4; rep++) {
                    random_weights(t, w, n);
                    random_acts(x, n);
                    pi_quantize_act(t, x, xq, n);
                    sc->dequant[t](w, wd, n);
                    sc->dequant[pi_vec_dot_type(t)](xq, xd, n);
                    double mag = 0;
                    for (int64_t i = 0; i < n; i++) mag += fabs((double)wd[i] * xd[i]);
                    if (nd) {
                        float a = sc->vec_dot[t](w, xq, n), b = tab->vec_dot[t](w, xq, n);
                        double e = mag > 0 ? fabs((double)a - b) / mag : fabs((double)a - b);
                        worst = fmax(worst, e != e ? INFINITY : e);
                    }
                    if (nq) {
                        tab->dequant[t](w, d2, n);
                        memcpy(d1, wd, (size_t)n * 4);
                        for (int64_t i = 0; i < n; i++) deq_bad += memcmp(&d1[i], &d2[i], 4) != 0;
                    }
                }
            }
            /* integer block sums are exact in both; only the float scaling/summation order differs */
            double tol = (t == PI_TYPE_F32 || t == PI_TYPE_F16 || t == PI_TYPE_BF16) ? 1e-6 : 2e-6;
            if (nd) {
                tap_ok(worst <= tol, "%s %s vec_dot vs scalar: normalised error %.3g (tol %.0e)", tab->name,
                       pi_type_name(t), worst, tol);
                tested++;
            }
            if (nq)
                tap_ok(deq_bad == 0, "%s %s dequant bit-identical to scalar (%lld differ)", tab->name, pi_type_name(t),
                       (long long)deq_bad);
        }
    }
    if (tested == 0) tap_skip(1, "no SIMD variant available on this CPU/build");
    /* SIMD activation quantisers: the scalar reference's bytes, on random blocks and on blocks made
     * of the awkward cases (zeros, NaN, infinities, exact halves after scaling, values just below a
     * half, the largest magnitudes). */
    for (int isa = PI_KERNEL_AVX2; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        if (!tab || !tab->quantize[PI_TYPE_Q8_0]) continue;
        enum { NB = 64 };
        static float src[NB * 32];
        static uint8_t a[NB * 34], b[NB * 34];
        int bad = 0;
        for (int rep = 0; rep < 50; rep++) {
            random_acts(src, NB * 32);
            for (int blk = 0; rep % 2 && blk < NB; blk++) {
                float *xb = src + blk * 32;
                switch (blk % 4) {
                case 0: /* amax 127 makes d = 1 and id = 1: x * id = x, so the halves stay exact halves */
                    for (int i = 0; i < 32; i++) {
                        int k = (int)(rnd() % 4);
                        xb[i] = k == 0   ? (float)((int)(rnd() % 253) - 126) + 0.5f
                                : k == 1 ? 0.49999997f
                                : k == 2 ? -0.0f
                                         : (float)((int)(rnd() % 253) - 126);
                    }
                    xb[rnd() % 32] = rnd() % 2 ? 127.0f : -127.0f;
                    break;
                case 1: /* NaNs among finite values: skipped by amax, quantised to 0 */
                    for (int i = 0; i < 32; i++) xb[i] = rnd() % 3 ? xb[i] * 50.0f : NAN;
                    break;
                case 2: /* an infinity: d = inf, id = 0, every value 0 */
                    xb[rnd() % 32] = rnd() % 2 ? INFINITY : -INFINITY;
                    break;
                default: /* zeros (d = 0) or a tiny block */
                    for (int i = 0; i < 32; i++) xb[i] = rnd() % 2 ? 0.0f : xb[i] * 1e-30f;
                    break;
                }
            }
            pi_quantize_row_ref(PI_TYPE_Q8_0, src, a, NB * 32);
            tab->quantize[PI_TYPE_Q8_0](src, b, NB * 32);
            bad += memcmp(a, b, sizeof a) != 0;
        }
        tap_ok(bad == 0, "%s Q8_0 activation quantiser writes the scalar bytes (%d of 50 rows of %d blocks differ)",
               tab->name, bad, NB);
    }
    /* AVX512-VNNI only replaces the byte multiply-adds of the AVX-512 kernels by vpdpbusd (and, for the
     * K-quants, the scaled pair sums by vpdpwssd), with the same int32 sums: its dot products must be
     * the AVX-512 ones bit for bit, 1-, 4- and 2x4-token, 2- and 4-row. */
    const struct pi_kernel_table *t512 = pi_kernels_table(PI_KERNEL_AVX512),
                                 *tv = pi_kernels_table(PI_KERNEL_AVX512VNNI);
    if (t512 && tv) {
        static const enum pi_type vt[] = {PI_TYPE_Q4_0, PI_TYPE_Q8_0, PI_TYPE_Q4_1, PI_TYPE_Q5_0,
                                          PI_TYPE_Q5_1, PI_TYPE_Q2_K, PI_TYPE_Q3_K, PI_TYPE_Q4_K,
                                          PI_TYPE_Q5_K, PI_TYPE_Q6_K};
        void *w2 = malloc((size_t)nmax * 16), *xq4 = malloc(4 * ((size_t)nmax * 4 + 4096));
        for (size_t k = 0; k < PI_ARRAY_LEN(vt); k++) {
            enum pi_type t = vt[k];
            const int64_t *lens = pi_type_get(t)->block_elems == 32 ? lens32 : lens256;
            uint64_t rb = 0;
            int diff = 0, cases = 0;
            for (size_t li = 0; li < PI_ARRAY_LEN(lens32); li++) {
                int64_t n = lens[li];
                size_t xs = pi_act_row_bytes(t, n);
                PI_ASSERT(pi_type_row_bytes(t, (uint64_t)n, &rb));
                for (int r = 0; r < 4; r++) random_weights(t, (uint8_t *)w2 + (size_t)r * rb, n);
                for (int j = 0; j < 4; j++) {
                    random_acts(x, n);
                    pi_quantize_act(t, x, (uint8_t *)xq4 + (size_t)j * xs, n);
                }
                float a1 = t512->vec_dot[t](w2, xq4, n), b1 = tv->vec_dot[t](w2, xq4, n), a4[4], b4[4], a8[8], b8[8];
                t512->vec_dot4[t](w2, xq4, xs, a4, n), tv->vec_dot4[t](w2, xq4, xs, b4, n);
                t512->vec_dot8[t](w2, (size_t)rb, xq4, xs, a8, n), tv->vec_dot8[t](w2, (size_t)rb, xq4, xs, b8, n);
                diff += memcmp(&a1, &b1, 4) != 0 || memcmp(a4, b4, sizeof a4) != 0 || memcmp(a8, b8, sizeof a8) != 0;
                if (t512->vec_dot4r[t] && tv->vec_dot4r[t]) {
                    const void *rows[4] = {w2, (uint8_t *)w2 + 3 * rb, (uint8_t *)w2 + rb, (uint8_t *)w2 + 2 * rb};
                    float ar[4], br[4];
                    t512->vec_dot4r[t](rows, NULL, xq4, ar, n), tv->vec_dot4r[t](rows, NULL, xq4, br, n);
                    diff += memcmp(ar, br, sizeof ar) != 0;
                    t512->vec_dot2[t](rows[1], rows[0], xq4, ar, n), tv->vec_dot2[t](rows[1], rows[0], xq4, br, n);
                    diff += memcmp(ar, br, 2 * sizeof ar[0]) != 0;
                }
                cases++;
            }
            tap_ok(diff == 0,
                   "avx512vnni %s vec_dot, vec_dot4, vec_dot8 (and vec_dot2, vec_dot4r) equal avx512's bit for bit (%d "
                   "of %d rows differ)",
                   pi_type_name(t), diff, cases);
        }
        free(w2), free(xq4);
    } else {
        tap_skip(1, "AVX512-VNNI not available on this CPU/build");
    }
    test_k_extremes();
    free(w), free(xq), free(x), free(wd), free(xd), free(d1), free(d2);
    return tap_done();
}
