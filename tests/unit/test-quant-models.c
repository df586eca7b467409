/*
 * tests/unit/test-quant-models.c - the tensors of the shared fixture models load and dequantise, and the
 * dequantised values agree with the same model's f16 file.
 *
 * For each quantised file (fixtures/models/tiny-llama-{q8_0,q4_0,q4_1,q5_0,q5_1}.gguf and
 * fixtures/demo/demo-relu-{q8_0,q4_0}.gguf, all made by llama.cpp's converter and quantiser): every
 * tensor has a dequantiser; every available kernel variant dequantises it bit-identically to the scalar
 * reference and to finite values; and every tensor is within its format's quantisation step of the
 * same tensor in the f16 file (which llama.cpp converted from the same weights), per 32-element block:
 * |q - f| <= step * max|f| over the block + 2^-10 |f|. A wrong layout or scale shows up as errors of
 * the size of the weights themselves. Skips when ../shared/fixtures is absent.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "model/gguf.h"
#include "tests/tap.h"

/* Largest error of llama.cpp's reference quantiser of type t, in units of the block's max |x|
 * (as tests/unit/test-quant.c's round trips; the clamped side of Q4_0/Q5_0 can be a whole step off). */
static double step_of(uint32_t t)
{
    switch (t) {
    case PI_TYPE_F32: return 0;
    case PI_TYPE_F16: return 0x1p-11;
    case PI_TYPE_Q8_0: return 0.5 / 127 + 0x1p-9;
    case PI_TYPE_Q4_0: return 1.0 / 8 + 0x1p-9;
    case PI_TYPE_Q5_0: return 1.0 / 16 + 0x1p-9;
    case PI_TYPE_Q4_1: return 1.0 / 15 + 0x1p-9;
    case PI_TYPE_Q5_1: return 1.0 / 31 + 0x1p-9;
    default: return -1; /* no bound known: only the self-consistency checks */
    }
}

/* Dequantise tensor t (all rows) with table tab into out (n_elems floats). */
static void dequant_tensor(const struct pi_kernel_table *tab, const struct pi_gguf_tensor *t, float *out)
{
    uint64_t row_bytes = 0;
    int64_t cols = (int64_t)t->ne[0], rows = (int64_t)(t->n_elems / t->ne[0]);
    pi_type_row_bytes(t->type, t->ne[0], &row_bytes);
    for (int64_t r = 0; r < rows; r++)
        tab->dequant[t->type]((const uint8_t *)t->data + (size_t)r * row_bytes, out + (size_t)r * (size_t)cols, cols);
}

/* Checks one quantised file against its f16 sibling. */
static void check_file(const char *qrel, const char *frel)
{
    char qpath[4096], fpath[4096], err[512];
    pi_gguf_t *q = NULL, *f = NULL;
    if (!tap_fixture(qpath, sizeof(qpath), qrel) || !tap_fixture(fpath, sizeof(fpath), frel)) {
        tap_skip(3, "fixture missing");
        return;
    }
    if (!tap_ok(pi_gguf_open(qpath, &q, err, sizeof(err)) == 0 && pi_gguf_open(fpath, &f, err, sizeof(err)) == 0,
                "open %s and %s", qrel, frel)) {
        tap_diag("%s", err);
        pi_gguf_destroy(&q);
        pi_gguf_destroy(&f);
        tap_skip(2, "cannot open");
        return;
    }
    const struct pi_kernel_table *sc = pi_kernels_table(PI_KERNEL_SCALAR);
    int64_t unsupported = 0, variant_bad = 0, nonfinite = 0, far = 0, compared = 0;
    double worst = 0;
    for (uint64_t i = 0; i < pi_gguf_n_tensors(q); i++) {
        const struct pi_gguf_tensor *t = pi_gguf_tensor(q, i);
        if (t->type >= PI_TYPE_COUNT || !sc->dequant[t->type]) {
            unsupported++;
            continue;
        }
        float *a = malloc(t->n_elems * sizeof(float)), *b = malloc(t->n_elems * sizeof(float));
        PI_ASSERT(a && b);
        dequant_tensor(sc, t, a);
        for (uint64_t k = 0; k < t->n_elems; k++) nonfinite += !isfinite(a[k]);
        for (int isa = PI_KERNEL_AVX2; isa < PI_KERNEL_ISA_COUNT; isa++) {
            const struct pi_kernel_table *tab = pi_kernels_table((enum pi_kernel_isa)isa);
            if (!tab) continue;
            dequant_tensor(tab, t, b);
            variant_bad += memcmp(a, b, t->n_elems * sizeof(float)) != 0;
        }
        /* the same tensor in the f16 file */
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)PI_MIN(t->name.len, 255), t->name.ptr);
        const struct pi_gguf_tensor *ft = pi_gguf_find_tensor(f, name);
        double step = step_of(t->type);
        if (ft && ft->n_elems == t->n_elems && ft->type < PI_TYPE_COUNT && sc->dequant[ft->type] && step >= 0 &&
            t->ne[0] % 32 == 0) {
            dequant_tensor(sc, ft, b);
            for (uint64_t k0 = 0; k0 < t->n_elems; k0 += 32) {
                double amax = 0;
                for (uint64_t k = k0; k < k0 + 32; k++) amax = fmax(amax, fabs(b[k]));
                for (uint64_t k = k0; k < k0 + 32; k++) {
                    double e = fabs((double)a[k] - b[k]), bound = step * amax + 0x1p-10 * fabs(b[k]) + 1e-30;
                    worst = fmax(worst, e / (amax > 0 ? amax : 1));
                    far += e > bound;
                }
            }
            compared++;
        }
        free(a);
        free(b);
    }
    uint64_t n = pi_gguf_n_tensors(q);
    tap_ok(unsupported == 0 && nonfinite == 0 && variant_bad == 0,
           "%s: %llu tensors dequantise (%lld unsupported, %lld non-finite values, %lld variant mismatches)", qrel,
           (unsigned long long)n, (long long)unsupported, (long long)nonfinite, (long long)variant_bad);
    tap_ok(far == 0 && compared == (int64_t)n, "%s: %lld tensors within the quantisation step of %s (worst %.4g of block max, %lld values outside)",
           qrel, (long long)compared, frel, worst, (long long)far);
    pi_gguf_destroy(&q);
    pi_gguf_destroy(&f);
}

int main(void)
{
    static const char *const tiny[] = {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1"};
    static const char *const demo[] = {"q8_0", "q4_0"};
    char buf[4096], rel[128];
    if (!tap_fixture(buf, sizeof(buf), "models/tiny-llama-f16.gguf")) tap_skip_all("../shared/fixtures not found");
    tap_diag("kernel variant %s", pi_kernels_variant());
    for (size_t i = 0; i < PI_ARRAY_LEN(tiny); i++) {
        snprintf(rel, sizeof(rel), "models/tiny-llama-%s.gguf", tiny[i]);
        check_file(rel, "models/tiny-llama-f16.gguf");
    }
    for (size_t i = 0; i < PI_ARRAY_LEN(demo); i++) {
        snprintf(rel, sizeof(rel), "demo/demo-relu-%s.gguf", demo[i]);
        check_file(rel, "demo/demo-relu-f16.gguf");
    }
    return tap_done();
}
