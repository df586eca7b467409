/*
 * tests/unit/test-quant.c - kernels/cpu/quant.h against the outside world and against float64:
 *  - every type's dequantiser (every available variant) equals gguf-py's values in
 *    tests/data/quant-blocks.gguf (made by llama.cpp's gguf-py, not by us);
 *  - fp16 conversions against the compiler's _Float16 (libgcc) over every half and random floats,
 *    bf16 against a float64 round-to-nearest-even reference;
 *  - quantise -> dequantise round trips within each format's step bound;
 *  - the scalar dot product and pi_vec_dot against a float64 dot of the dequantised weights and the
 *    dequantised activations, for every type, on fresh random inputs (seed printed; PI_SEED repeats).
 */
#include "config.h"

#include <float.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "model/gguf.h"
#include "lib/rng.h"
#include "tests/tap.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
    return pi_rng_splitmix64(&rng_state);
}

static float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0) * 2.0f - 1.0f; }

static void seed_rng(void)
{
    const char *s = getenv("PI_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    rng_state = seed;
    tap_diag("seed %llu (set PI_SEED to repeat)", (unsigned long long)seed);
}

static const enum pi_type fixture_types[] = {
    PI_TYPE_Q4_0, PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1, PI_TYPE_Q8_0,
    PI_TYPE_Q2_K, PI_TYPE_Q3_K, PI_TYPE_Q4_K, PI_TYPE_Q5_K, PI_TYPE_Q6_K,
};

static const enum pi_type dot_types[] = {
    PI_TYPE_F32, PI_TYPE_F16, PI_TYPE_BF16, PI_TYPE_Q4_0, PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1,
    PI_TYPE_Q8_0, PI_TYPE_Q2_K, PI_TYPE_Q3_K, PI_TYPE_Q4_K, PI_TYPE_Q5_K, PI_TYPE_Q6_K,
};

static void upper(const char *s, char *out)
{
    for (; *s; s++) *out++ = (char)(*s >= 'a' && *s <= 'z' ? *s - 32 : *s);
    *out = 0;
}

static void test_fixture(void)
{
    char path[4096], err[512], name[64], uname[16];
    pi_gguf_t *g = NULL;
    tap_data(path, sizeof(path), "quant-blocks.gguf");
    int rc = pi_gguf_open(path, &g, err, sizeof(err));
    if (!tap_ok(rc == 0, "open %s", path)) {
        tap_diag("%s", err);
        return;
    }
    for (size_t k = 0; k < PI_ARRAY_LEN(fixture_types); k++) {
        enum pi_type t = fixture_types[k];
        upper(pi_type_name(t), uname);
        snprintf(name, sizeof(name), "blocks.%s", uname);
        const struct pi_gguf_tensor *bt = pi_gguf_find_tensor(g, name);
        snprintf(name, sizeof(name), "expect.%s", uname);
        const struct pi_gguf_tensor *et = pi_gguf_find_tensor(g, name);
        if (!tap_ok(bt && et && bt->type == (uint32_t)t && et->type == PI_TYPE_F32 &&
                        bt->n_elems == et->n_elems && bt->n_elems >= 32,
                    "fixture has blocks.%s and expect.%s", uname, uname))
            continue;
        int64_t n = (int64_t)bt->n_elems;
        float *out = malloc((size_t)n * sizeof(float)), *want = malloc((size_t)n * sizeof(float));
        memcpy(want, et->data, (size_t)n * sizeof(float));
        for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
            const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
            if (!tab) continue;
            memset(out, 0xff, (size_t)n * sizeof(float));
            tab->dequant[t](bt->data, out, n);
            int64_t bad = 0, first = -1;
            for (int64_t i = 0; i < n; i++)
                if (memcmp(&out[i], &want[i], 4) != 0 && !(out[i] == want[i])) bad++, first = first < 0 ? i : first;
            tap_ok(bad == 0, "%s dequant (%s) equals gguf-py on %lld values", uname, tab->name, (long long)n);
            if (bad) tap_diag("  %lld differ, first at %lld: got %.9g want %.9g", (long long)bad,
                              (long long)first, out[first], want[first]);
        }
        /* the public entry point too */
        pi_dequant_row(t, bt->data, out, n);
        tap_ok(memcmp(out, want, (size_t)n * 4) == 0, "pi_dequant_row(%s) equals gguf-py", uname);
        free(out);
        free(want);
    }
    pi_gguf_destroy(&g);
}

/* ---- fp16 / bf16 ---- */

#ifdef __FLT16_MAX__
static bool same_bits_or_both_nan(float a, float b)
{
    uint32_t x, y;
    memcpy(&x, &a, 4), memcpy(&y, &b, 4);
    return x == y || (a != a && b != b);
}
#endif

/* Reference fp32 -> fp16 by search: the largest half magnitude h with value(h) <= |f| (values are
 * monotonic in the bits), then the nearer of h and h + 1, ties to the even one; |f| >= 65520 is Inf. */
static uint16_t fp16_ref(float f)
{
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    double a = fabs((double)f);
    if (f != f) return 0x7e00;
    if (a >= 65520.0) return sign | 0x7c00;
    uint32_t lo = 0, hi = 0x7bff; /* value(lo) <= a; find the largest such */
    while (lo < hi) {
        uint32_t mid = (lo + hi + 1) / 2;
        if ((double)pi_fp16_to_fp32((uint16_t)mid) <= a) lo = mid;
        else hi = mid - 1;
    }
    double v0 = pi_fp16_to_fp32((uint16_t)lo), v1 = lo == 0x7bff ? 65536.0 : pi_fp16_to_fp32((uint16_t)(lo + 1));
    uint32_t pick = a - v0 < v1 - a ? lo : a - v0 > v1 - a ? lo + 1 : (lo & 1 ? lo + 1 : lo);
    return (uint16_t)(sign | pick);
}

static void test_fp16(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = pi_fp16_to_fp32((uint16_t)h);
        uint16_t back = pi_fp32_to_fp16(f);
        bool is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        /* NaNs come back quiet with the payload kept; everything else exactly */
        if (is_nan ? back != (h | 0x200) : back != h) bad++;
#ifdef __FLT16_MAX__
        _Float16 hf;
        uint16_t hb = (uint16_t)h;
        memcpy(&hf, &hb, 2);
        if (!same_bits_or_both_nan(f, (float)hf)) bad++;
#endif
    }
    tap_ok(bad == 0, "fp16 -> fp32 -> fp16 exact over all 65536 halves (%d bad)", bad);
#ifdef __FLT16_MAX__
    bad = 0;
    for (int i = 0; i < 2000000; i++) {
        uint32_t bits = (uint32_t)rnd();
        float f;
        if (i % 4 == 1) bits = (bits & 0x8fffffffu) | 0x30000000u; /* around the half range */
        if (i % 4 == 2) bits = (bits & 0x83ffffffu) | 0x38000000u; /* half subnormals */
        if (i % 4 == 3) bits = (bits & 0x81ffffffu) | 0x46000000u; /* near the overflow edge */
        memcpy(&f, &bits, 4);
        _Float16 ref = (_Float16)f;
        uint16_t rb;
        memcpy(&rb, &ref, 2);
        uint16_t got = pi_fp32_to_fp16(f);
        if (got != rb && !(f != f && (got & 0x7c00) == 0x7c00 && (got & 0x3ff))) bad++;
    }
    tap_ok(bad == 0, "fp32 -> fp16 rounds like _Float16 on 2M random floats (%d bad)", bad);
#else
    tap_skip(1, "compiler has no _Float16");
#endif
    bad = 0;
    for (int i = 0; i < 300000; i++) {
        uint32_t bits = (uint32_t)rnd();
        float f;
        if (i % 3 == 1) bits = (bits & 0x83ffffffu) | 0x38000000u; /* half subnormals */
        if (i % 3 == 2) bits = (bits & 0x8fffffffu) | 0x30000000u;
        memcpy(&f, &bits, 4);
        uint16_t got = pi_fp32_to_fp16(f);
        if (f != f) bad += !((got & 0x7c00) == 0x7c00 && (got & 0x3ff));
        else bad += got != fp16_ref(f);
    }
    tap_ok(bad == 0, "fp32 -> fp16 equals a search for the nearest half (ties to even) on 300k floats (%d bad)", bad);
    bad = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t bits = (uint32_t)rnd(), lo = bits & 0xffff0000u;
        float f, a, b;
        memcpy(&f, &bits, 4);
        uint16_t got = pi_fp32_to_bf16(f);
        if (f != f) {
            bad += !((got & 0x7f80) == 0x7f80 && (got & 0x7f));
            continue;
        }
        uint32_t hi = lo + 0x10000u; /* next bf16 away from zero (Inf past the largest finite) */
        memcpy(&a, &lo, 4), memcpy(&b, &hi, 4);
        double vb = isinf(b) ? copysign(0x1p128, (double)f) : (double)b;
        double da = fabs((double)f - (double)a), db = fabs((double)f - vb);
        uint16_t want = da < db ? (uint16_t)(lo >> 16) : db < da ? (uint16_t)(hi >> 16)
                                                                : (uint16_t)(((lo >> 16) & 1) ? hi >> 16 : lo >> 16);
        bad += got != want;
    }
    tap_ok(bad == 0, "fp32 -> bf16 round-to-nearest-even on 1M random floats (%d bad)", bad);
    tap_ok(pi_fp32_to_bf16(INFINITY) == 0x7f80 && pi_fp32_to_bf16(-INFINITY) == 0xff80 &&
               pi_bf16_to_fp32(0x3f80) == 1.0f && pi_fp32_to_fp16(1.0f) == 0x3c00 &&
               pi_fp32_to_fp16(65504.0f) == 0x7bff && pi_fp32_to_fp16(65520.0f) == 0x7c00 &&
               pi_fp32_to_fp16(-0.0f) == 0x8000 && pi_fp16_to_fp32(0x0001) == 5.9604644775390625e-8f,
           "fp16/bf16 landmarks (1, 65504, overflow, -0, smallest subnormal, Inf)");
}

/* ---- round trips ---- */

/* Per-element bound of |x - dequant(quant(x))| in units of the block's absolute maximum. */
static double step_bound(enum pi_type t)
{
    switch (t) {
    case PI_TYPE_F16: return 0x1p-11;
    case PI_TYPE_BF16: return 0x1p-8;
    case PI_TYPE_F32: return 0;
    case PI_TYPE_Q8_0: case PI_TYPE_Q8_1: case PI_TYPE_Q8_K: return 0.5 / 127 + 0x1p-9;
    case PI_TYPE_Q4_0: return 1.0 / 8 + 0x1p-9;    /* the clamped side can be off by a full step */
    case PI_TYPE_Q5_0: return 1.0 / 16 + 0x1p-9;
    case PI_TYPE_Q4_1: return 2.0 * 0.5 / 15 + 0x1p-9; /* range up to 2 amax, half a step */
    case PI_TYPE_Q5_1: return 2.0 * 0.5 / 31 + 0x1p-9;
    default: return 0;
    }
}

static void test_round_trip(void)
{
    static const enum pi_type types[] = {PI_TYPE_F32, PI_TYPE_F16, PI_TYPE_BF16, PI_TYPE_Q8_0, PI_TYPE_Q8_1,
                                         PI_TYPE_Q4_0, PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1, PI_TYPE_Q8_K};
    const int64_t n = 4096;
    float *x = malloc(n * 4), *y = malloc(n * 4);
    void *q = malloc((size_t)n * 4);
    for (size_t k = 0; k < PI_ARRAY_LEN(types); k++) {
        enum pi_type t = types[k];
        int64_t bs = pi_type_get(t)->block_elems < 32 ? 32 : pi_type_get(t)->block_elems;
        for (int64_t i = 0; i < n; i++) x[i] = rndf() * (float)(1 + (i / bs) % 7) * (i % 97 == 0 ? 4.0f : 1.0f);
        for (int64_t i = 0; i < 32; i++) x[i] = 0; /* an all-zero block */
        pi_quantize_row(t, x, q, n);
        pi_dequant_row(t, q, y, n);
        double worst = 0, se = 0, sx = 0;
        for (int64_t b = 0; b < n / bs; b++) {
            double amax = 0;
            for (int64_t i = b * bs; i < (b + 1) * bs; i++) amax = fmax(amax, fabs(x[i]));
            for (int64_t i = b * bs; i < (b + 1) * bs; i++) {
                double e = fabs((double)x[i] - y[i]);
                se += e * e, sx += (double)x[i] * x[i];
                if (amax > 0) worst = fmax(worst, e / amax);
                else if (e != 0) worst = INFINITY;
            }
        }
        tap_ok(worst <= step_bound(t), "%s round trip: max error %.4g of block amax (bound %.4g), rms rel %.3g",
               pi_type_name(t), worst, step_bound(t), sqrt(se / sx));
    }
    free(x), free(y), free(q);
}

/* ---- dot products against float64 ---- */

/* Random weights for type t: quantised random floats for the float and legacy types; random bytes
 * with finite fp16 scales for the K-quants (as the fixture). */
static void random_row(enum pi_type t, void *w, int64_t n)
{
    const struct pi_type_info *ti = pi_type_get(t);
    if (t == PI_TYPE_F32 || t == PI_TYPE_F16 || t == PI_TYPE_BF16 || pi_quantize_supported(t)) {
        float *x = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) x[i] = rndf();
        pi_quantize_row(t, x, w, n);
        free(x);
        return;
    }
    uint8_t *p = w;
    size_t bytes = (size_t)(n / ti->block_elems) * ti->block_bytes;
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)rnd();
    for (int64_t b = 0; b < n / ti->block_elems; b++) {
        uint8_t *blk = p + (size_t)b * ti->block_bytes;
        uint16_t d = pi_fp32_to_fp16(0.001f + 0.01f * (rndf() + 1)), m = pi_fp32_to_fp16(0.001f + 0.01f * (rndf() + 1));
        size_t off_d = t == PI_TYPE_Q2_K ? 80 : t == PI_TYPE_Q3_K ? 108 : t == PI_TYPE_Q6_K ? 208 : 0;
        memcpy(blk + off_d, &d, 2);
        if (t == PI_TYPE_Q2_K || t == PI_TYPE_Q4_K || t == PI_TYPE_Q5_K) memcpy(blk + off_d + 2, &m, 2);
    }
}

static void test_dot_f64(void)
{
    const int64_t n = 2048;
    float *x = malloc(n * 4), *wd = malloc(n * 4), *xd = malloc(n * 4);
    void *w = malloc((size_t)n * 4), *xq = malloc((size_t)n * 4 + 4096);
    const struct pi_kernel_table *sc = pi_kernels_table(PI_KERNEL_SCALAR);
    for (size_t k = 0; k < PI_ARRAY_LEN(dot_types); k++) {
        enum pi_type t = dot_types[k];
        double worst = 0, worst_pub = 0;
        for (int rep = 0; rep < 8; rep++) {
            random_row(t, w, n);
            for (int64_t i = 0; i < n; i++) x[i] = rndf() * (rep + 1);
            pi_quantize_act(t, x, xq, n);
            pi_dequant_row(t, w, wd, n);
            pi_dequant_row(pi_vec_dot_type(t), xq, xd, n);
            double ref = 0, mag = 0;
            for (int64_t i = 0; i < n; i++) ref += (double)wd[i] * xd[i], mag += fabs((double)wd[i] * xd[i]);
            worst = fmax(worst, fabs(sc->vec_dot[t](w, xq, n) - ref) / mag);
            worst_pub = fmax(worst_pub, fabs(pi_vec_dot(t, w, xq, n) - ref) / mag);
        }
        /* float32 accumulation of n terms: a few 1e-7 of sum|w x| */
        tap_ok(worst < 2e-5, "%s scalar vec_dot vs float64: normalised error %.3g", pi_type_name(t), worst);
        tap_ok(worst_pub < 2e-5, "%s pi_vec_dot (%s) vs float64: normalised error %.3g", pi_type_name(t),
               pi_kernels_variant(), worst_pub);
        /* and the activation format is what the weight type wants */
        tap_ok(pi_act_row_bytes(t, n) == (size_t)(pi_vec_dot_type(t) == PI_TYPE_F32 ? n * 4
                                                  : pi_vec_dot_type(t) == PI_TYPE_Q8_0 ? n / 32 * 34
                                                                                       : n / 256 * 292),
               "%s activation row bytes", pi_type_name(t));
    }
    free(x), free(wd), free(xd), free(w), free(xq);
}

/* The choice ([tune] cpu_kernels, through pi_kernels_use) is honoured where the CPU and OS can run
 * it and clamped otherwise; auto and an unknown variant take the best. An AVX-512 variant is never
 * available where the compiler's own CPU check (which also asks the OS, through XGETBV) says no
 * AVX-512. The process's variant is the best again afterwards. */
static void test_override(void)
{
    static const enum pi_tune_cpu_kernels tunes[] = {PI_TUNE_CPU_KERNELS_SCALAR, PI_TUNE_CPU_KERNELS_AVX2,
                                                     PI_TUNE_CPU_KERNELS_AVX512, PI_TUNE_CPU_KERNELS_AVX512VNNI,
                                                     PI_TUNE_CPU_KERNELS_AMX, PI_TUNE_CPU_KERNELS_AUTO};
    int best = PI_KERNEL_SCALAR;
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++)
        if (pi_kernels_available((enum pi_kernel_isa)isa)) best = isa;
    int bad = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(tunes); i++) {
        const struct pi_tune t = {.cpu_kernels = tunes[i]};
        const int want = tunes[i] == PI_TUNE_CPU_KERNELS_AUTO ? best : PI_MIN((int)tunes[i] - 1, best);
        const int got = (int)pi_kernels_use(pi_kernels_of_tune(&t));
        if (got != want || (int)pi_kernels_isa() != want) bad++, tap_diag("  cpu_kernels %d: variant %d, want %d", (int)tunes[i], got, want);
    }
    bad += pi_kernels_use(PI_KERNEL_ISA_COUNT + 3) != (enum pi_kernel_isa)best;
    tap_ok(bad == 0 && pi_kernels_isa() == (enum pi_kernel_isa)best,
           "the cpu_kernels choice is honoured where the CPU can run it, clamped otherwise (best here: %s)",
           pi_kernels_table((enum pi_kernel_isa)best)->name);
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    bool cpu512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    bool cpu2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    bool cpuvnni = cpu512 && __builtin_cpu_supports("avx512vnni");
    tap_ok((!pi_kernels_available(PI_KERNEL_AVX512) || cpu512) && (!pi_kernels_available(PI_KERNEL_AVX2) || cpu2) &&
               (!pi_kernels_available(PI_KERNEL_AVX512VNNI) || cpuvnni),
           "a SIMD variant is available only where the compiler's CPU check agrees (avx2 %d, avx512 %d, vnni %d)", cpu2,
           cpu512, cpuvnni);
#else
    tap_skip(1, "not x86");
#endif
}

static void test_dispatch(void)
{
    tap_ok(pi_kernels_table(PI_KERNEL_SCALAR) != NULL, "scalar table always available");
    tap_diag("active variant %s; avx2 %s, avx512 %s", pi_kernels_variant(),
             pi_kernels_available(PI_KERNEL_AVX2) ? "available" : "absent",
             pi_kernels_available(PI_KERNEL_AVX512) ? "available" : "absent");
    int incomplete = 0;
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
        for (size_t k = 0; tab && k < PI_ARRAY_LEN(dot_types); k++)
            incomplete += !tab->vec_dot[dot_types[k]] || !tab->dequant[dot_types[k]];
    }
    tap_ok(incomplete == 0, "every available table is complete for the 13 types");
    for (size_t k = 0; k < PI_ARRAY_LEN(dot_types); k++)
        if (!pi_kernel_supported(dot_types[k])) incomplete++;
    tap_ok(incomplete == 0 && !pi_kernel_supported(PI_TYPE_I32) && !pi_kernel_supported(PI_TYPE_Q8_K),
           "pi_kernel_supported");
}

int main(void)
{
    seed_rng();
    test_override(); /* leaves the best variant active */
    test_dispatch();
    test_fixture();
    test_fp16();
    test_round_trip();
    test_dot_f64();
    return tap_done();
}
