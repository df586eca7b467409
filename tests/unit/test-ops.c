/*
 * tests/unit/test-ops.c - the forward pass's small kernels (kernels/cpu/ops.h) against double-precision
 * scalar references on fresh random inputs: RMSNorm, the rope table and rotation (checked as complex
 * multiplication of adjacent pairs), softmax, one attention head over f32 and f16 rows (head widths
 * that do and do not fill the vector lanes and the f16 chunk), tiles of queries against each query alone
 * (bit for bit, f16 and f32 caches, every kernel variant), and the gated activations.
 * (The neuron-subset FFN kernel has its own test, test-ffn-split.)
 */
#include "config.h"

#include <complex.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/common.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "tests/tap.h"

static double urand(void) { return (double)rand() / RAND_MAX * 2.0 - 1.0; }

static double rel(const float *got, const double *ref, int n)
{
    double num = 0.0, den = 0.0;
    for (int j = 0; j < n; j++) {
        num += (got[j] - ref[j]) * (got[j] - ref[j]);
        den += ref[j] * ref[j];
    }
    return sqrt(num / (den > 0 ? den : 1.0));
}

static void test_rmsnorm(void)
{
    enum { N = 1000 };
    float x[N], w[N], y[N];
    double ref[N], ss = 0.0;
    for (int j = 0; j < N; j++) {
        x[j] = (float)(urand() * 3.0);
        w[j] = (float)(1.0 + 0.2 * urand());
        ss += (double)x[j] * x[j];
    }
    for (int j = 0; j < N; j++) ref[j] = x[j] / sqrt(ss / N + 1e-5) * w[j];
    pi_rmsnorm(y, x, w, N, 1e-5f);
    tap_ok(rel(y, ref, N) < 1e-6, "rmsnorm vs reference (%.2g)", rel(y, ref, N));
    pi_rmsnorm(x, x, w, N, 1e-5f);
    tap_ok(memcmp(x, y, sizeof x) == 0, "rmsnorm in place");
}

static void test_rope(void)
{
    enum { H = 3, HD = 16, ROT = 12 };
    float x[H * HD], cs[ROT];
    double ref[H * HD];
    int pos = 1 + rand() % 500;
    for (int j = 0; j < H * HD; j++) x[j] = (float)urand();
    for (int h = 0; h < H; h++)
        for (int i = 0; i < HD / 2; i++) {
            double complex z = x[h * HD + 2 * i] + I * x[h * HD + 2 * i + 1];
            if (2 * i < ROT) z *= cexp(I * pos * pow(10000.0, -2.0 * i / ROT));
            ref[h * HD + 2 * i] = creal(z);
            ref[h * HD + 2 * i + 1] = cimag(z);
        }
    pi_rope_table(cs, pos, ROT, 10000.0f);
    pi_rope_apply(x, H, HD, ROT, cs);
    tap_ok(rel(x, ref, H * HD) < 1e-6, "rope at position %d: adjacent pairs rotated, tail of each head kept (%.2g)",
           pos, rel(x, ref, H * HD));
}

static void test_softmax(void)
{
    enum { N = 300 };
    float x[N];
    double ref[N], sum = 0.0;
    for (int j = 0; j < N; j++) x[j] = (float)(urand() * 40.0 + 500.0); /* large: must subtract the max */
    for (int j = 0; j < N; j++) sum += exp((double)x[j] - 500.0);
    for (int j = 0; j < N; j++) ref[j] = exp((double)x[j] - 500.0) / sum;
    pi_softmax(x, N);
    tap_ok(rel(x, ref, N) < 1e-5, "softmax of large logits (%.2g)", rel(x, ref, N));
}

static void test_attention(enum pi_type t, int hd, int n_kv)
{
    int es = t == PI_TYPE_F32 ? 4 : 2;
    size_t stride = (size_t)(hd + 8) * (size_t)es; /* rows padded: the stride is honoured */
    char *k = malloc(stride * (size_t)n_kv), *v = malloc(stride * (size_t)n_kv);
    float *q = malloc(sizeof(float) * (size_t)hd), *out = malloc(sizeof(float) * (size_t)hd);
    float *scores = malloc(sizeof(float) * (size_t)n_kv);
    double *kd = malloc(sizeof(double) * (size_t)hd * n_kv), *vd = malloc(sizeof(double) * (size_t)hd * n_kv);
    double *w = malloc(sizeof(double) * (size_t)n_kv), *ref = calloc((size_t)hd, sizeof(double));
    for (int j = 0; j < hd; j++) q[j] = (float)urand();
    for (int r = 0; r < n_kv; r++)
        for (int j = 0; j < hd; j++) {
            float kf = (float)urand(), vf = (float)urand();
            if (t == PI_TYPE_F16) {
                uint16_t kh = pi_fp32_to_fp16(kf), vh = pi_fp32_to_fp16(vf);
                memcpy(k + r * stride + 2 * j, &kh, 2);
                memcpy(v + r * stride + 2 * j, &vh, 2);
                kf = pi_fp16_to_fp32(kh);
                vf = pi_fp16_to_fp32(vh);
            } else {
                memcpy(k + r * stride + 4 * j, &kf, 4);
                memcpy(v + r * stride + 4 * j, &vf, 4);
            }
            kd[(size_t)r * hd + j] = kf;
            vd[(size_t)r * hd + j] = vf;
        }
    double scale = 1.0 / sqrt(hd), max = -INFINITY, sum = 0.0;
    for (int r = 0; r < n_kv; r++) {
        w[r] = 0.0;
        for (int j = 0; j < hd; j++) w[r] += q[j] * kd[(size_t)r * hd + j] * scale;
        max = w[r] > max ? w[r] : max;
    }
    for (int r = 0; r < n_kv; r++) sum += (w[r] = exp(w[r] - max));
    for (int r = 0; r < n_kv; r++)
        for (int j = 0; j < hd; j++) ref[j] += w[r] / sum * vd[(size_t)r * hd + j];
    pi_attn_head(out, q, k, v, stride, t, n_kv, hd, (float)scale, scores);
    double e = rel(out, ref, hd);
    tap_ok(e < 1e-5, "attention head %s, head_dim %d, %d positions, %s kernels (%.2g)", pi_type_name(t), hd, n_kv,
           pi_kernels_variant(), e);
    free(k);
    free(v);
    free(q);
    free(out);
    free(scores);
    free(kd);
    free(vd);
    free(w);
    free(ref);
}

/* pi_attn_group against pi_attn_head query by query (bit for bit) on a fresh random f16 cache, for group
 * sizes 1..11 (past PI_ATTN_GROUP_MAX: split in calls) with the active kernel variant. */
static void test_attention_group(int hd, int n_kv)
{
    enum { GMAX = 11 };
    const size_t stride = (size_t)(2 * hd + 16) * 2; /* two kv heads per row and padding: the stride is honoured */
    uint16_t *k = malloc(stride * (size_t)n_kv), *v = malloc(stride * (size_t)n_kv);
    float *q = malloc(sizeof(float) * GMAX * (size_t)hd), *og = malloc(sizeof(float) * GMAX * (size_t)hd);
    float *o1 = malloc(sizeof(float) * (size_t)hd), *sc = malloc(sizeof(float) * PI_ATTN_GROUP_MAX * (size_t)n_kv);
    for (size_t i = 0; i < stride / 2 * (size_t)n_kv; i++) {
        k[i] = pi_fp32_to_fp16((float)urand());
        v[i] = pi_fp32_to_fp16((float)urand());
    }
    for (int i = 0; i < GMAX * hd; i++) q[i] = (float)urand();
    int same = 1;
    for (int g = 1; g <= GMAX; g++) {
        const uint16_t *kh = k + hd, *vh = v + hd; /* the second kv head */
        pi_attn_group(og, q, g, kh, vh, stride, PI_TYPE_F16, n_kv, hd, 0.125f, sc);
        for (int j = 0; j < g; j++) {
            pi_attn_head(o1, q + (size_t)j * hd, kh, vh, stride, PI_TYPE_F16, n_kv, hd, 0.125f, sc);
            same &= memcmp(o1, og + (size_t)j * hd, sizeof(float) * (size_t)hd) == 0;
        }
    }
    tap_ok(same, "attention group of 1..%d queries == each query alone, bit for bit (head_dim %d, %d positions, %s)",
           GMAX, hd, n_kv, pi_kernels_variant());
    free(k), free(v), free(q), free(og), free(o1), free(sc);
}

/* pi_attn_tile against pi_attn_head query by query (bit for bit): fresh random caches (f16 or f32),
 * `rows` consecutive positions of a prompt ending at n_kv - 1, each with `group` query heads sharing the
 * second of two kv heads, so the tile's queries have different counts (the causal staircase); the tile
 * is cut in every way from one query a call to the whole tile, and given in a shuffled order. */
static void test_attention_tile(enum pi_type t, int hd, int n_kv, int rows, int group)
{
    const int es = t == PI_TYPE_F32 ? 4 : 2, nq = rows * group;
    const size_t stride = (size_t)(2 * hd + 8) * (size_t)es; /* two kv heads per row and padding */
    char *k = malloc(stride * (size_t)n_kv), *v = malloc(stride * (size_t)n_kv);
    float *q = malloc(sizeof(float) * (size_t)nq * hd), *ot = malloc(sizeof(float) * (size_t)nq * hd);
    float *o1 = malloc(sizeof(float) * (size_t)hd), *sc = malloc(sizeof(float) * PI_ATTN_GROUP_MAX * (size_t)n_kv);
    float **op = malloc(sizeof(float *) * (size_t)nq);
    const float **qp = malloc(sizeof(float *) * (size_t)nq);
    int *nk = malloc(sizeof(int) * (size_t)nq), *perm = malloc(sizeof(int) * (size_t)nq);
    for (size_t i = 0; i < stride / (size_t)es * (size_t)n_kv; i++) {
        float kf = (float)urand(), vf = (float)urand();
        if (t == PI_TYPE_F16) {
            ((uint16_t *)k)[i] = pi_fp32_to_fp16(kf);
            ((uint16_t *)v)[i] = pi_fp32_to_fp16(vf);
        } else {
            ((float *)k)[i] = kf;
            ((float *)v)[i] = vf;
        }
    }
    for (int i = 0; i < nq * hd; i++) q[i] = (float)(urand() * 3.0);
    for (int j = 0; j < nq; j++) perm[j] = j;
    for (int j = nq - 1; j > 0; j--) { /* a shuffled order: the tile's queries need not be in row order */
        int r = rand() % (j + 1), x = perm[j];
        perm[j] = perm[r], perm[r] = x;
    }
    const char *kh = k + (size_t)hd * es, *vh = v + (size_t)hd * es; /* the second kv head */
    int same = 1;
    for (int cut = 1; cut <= nq; cut = cut < nq && 2 * cut > nq ? nq : 2 * cut) {
        memset(ot, 0xff, sizeof(float) * (size_t)nq * hd);
        for (int j = 0; j < nq; j++) {
            const int p = perm[j];
            op[j] = ot + (size_t)p * hd;
            qp[j] = q + (size_t)p * hd;
            nk[j] = n_kv - rows + 1 + p / group; /* row p / group at position n_kv - rows + p / group */
        }
        for (int j0 = 0; j0 < nq; j0 += cut)
            pi_attn_tile(op + j0, qp + j0, nk + j0, PI_MIN(cut, nq - j0), kh, vh, stride, t, hd, 0.125f, sc);
        for (int p = 0; p < nq; p++) {
            pi_attn_head(o1, q + (size_t)p * hd, kh, vh, stride, t, n_kv - rows + 1 + p / group, hd, 0.125f, sc);
            same &= memcmp(o1, ot + (size_t)p * hd, sizeof(float) * (size_t)hd) == 0;
        }
    }
    tap_ok(same,
           "attention tile of %d rows x %d heads (%s, head_dim %d, %d..%d positions) == each query alone, bit for "
           "bit, in calls of 1..%d queries (%s)",
           rows, group, pi_type_name(t), hd, n_kv - rows + 1, n_kv, nq, pi_kernels_variant());
    free(k), free(v), free(q), free(ot), free(o1), free(sc), free(op), free(qp), free(nk), free(perm);
}

/* The SiLU-gated activation of the active variant against a double reference, and its thresholded form
 * (pi_ffn_act_min) against pi_ffn_gate_skip's rule element by element: the same neurons kept (with
 * thresholds set at some elements' own |silu|, the boundary cases), the kept ones pi_ffn_act's bits. */
static void test_silu(void)
{
    enum { ROWS = 3, FF = 203 }; /* a width that leaves every lane count a tail */
    static float g[ROWS * FF], u[ROWS * FF], y[ROWS * FF], ya[ROWS * FF], gm[FF];
    static double ref[ROWS * FF];
    for (int i = 0; i < ROWS * FF; i++) {
        g[i] = (float)(urand() * (i % 7 == 0 ? 100.0 : 8.0)); /* some past the exp's clamp */
        u[i] = (float)(urand() * 2.0);
        ref[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    }
    memcpy(y, g, sizeof g);
    pi_ffn_act(PI_FFN_ACT_SILU, y, u, ROWS * FF);
    tap_ok(rel(y, ref, ROWS * FF) < 2e-7, "silu gated activation, %s kernels (%.2g)", pi_kernels_variant(),
           rel(y, ref, ROWS * FF));
    for (int j = 0; j < FF; j++) {
        float s = g[j] / (1.0f + expf(-g[j]));
        gm[j] = j % 5 == 0   ? 0.0f
                : j % 5 == 1 ? fabsf(s)
                : j % 5 == 2 ? nextafterf(fabsf(s), 0.0f)
                             : (float)(urand() * urand() * 0.5);
    }
    memcpy(ya, g, sizeof g);
    int64_t kept = pi_ffn_act_min(PI_FFN_ACT_SILU, gm, ya, u, ROWS, FF), want = 0;
    int agree = 1;
    for (int i = 0; i < ROWS * FF; i++) {
        const bool skip = pi_ffn_gate_skip(PI_FFN_ACT_SILU, gm[i % FF], g[i]);
        want += !skip;
        agree &= skip ? ya[i] == 0.0f : memcmp(&ya[i], &y[i], sizeof(float)) == 0;
    }
    tap_ok(agree && kept == want,
           "silu with thresholds: pi_ffn_gate_skip's %lld of %d neurons kept (%lld), the rest "
           "pi_ffn_act's bits, %s kernels",
           (long long)want, ROWS * FF, (long long)kept, pi_kernels_variant());
}

static void test_act(void)
{
    enum { N = 101 };
    float g[N], u[N], y[N];
    double ref[N];
    static const enum pi_ffn_act acts[] = {PI_FFN_ACT_SILU, PI_FFN_ACT_RELU, PI_FFN_ACT_DRELU};
    for (size_t k = 0; k < PI_ARRAY_LEN(acts); k++) {
        for (int j = 0; j < N; j++) {
            g[j] = (float)(urand() * 6.0);
            u[j] = (float)(urand() * 2.0);
            double gd = g[j], ud = u[j];
            ref[j] = acts[k] == PI_FFN_ACT_SILU   ? gd / (1.0 + exp(-gd)) * ud
                     : acts[k] == PI_FFN_ACT_RELU ? (gd > 0 ? gd : 0) * ud
                                                  : (gd > 0 ? gd : 0) * (ud > 0 ? ud : 0);
        }
        memcpy(y, g, sizeof g);
        pi_ffn_act(acts[k], y, u, N);
        tap_ok(rel(y, ref, N) < 1e-6, "%s gated activation (%.2g)", pi_ffn_act_name(acts[k]), rel(y, ref, N));
    }
}

int main(void)
{
    unsigned seed = (unsigned)time(NULL);
    srand(seed);
    tap_diag("seed %u", seed);
    test_rmsnorm();
    test_rope();
    test_softmax();
    test_attention(PI_TYPE_F32, 64, 1);
    test_attention(PI_TYPE_F32, 37, 200);
    /* the f16 and f32 caches through every kernel variant this CPU runs (kernels/cpu/attn-impl.h: AVX2 takes
     * head_dim a multiple of 8, AVX-512 of 16, both up to 256; the rest stays portable), with position
     * counts that leave the four-key step a remainder */
    static const int f16_shapes[][2] = {{64, 1}, {64, 7}, {128, 300}, {40, 13}, {256, 66}, {80, 5}, {300, 17}};
    /* tiles: head_dim, positions up to the last row's, rows, heads per kv head (GQA group) */
    static const int tile_shapes[][4] = {{64, 1, 1, 8},    {64, 9, 9, 1},   {64, 300, 16, 4}, {128, 77, 5, 8},
                                         {128, 513, 3, 2}, {64, 40, 12, 3}, {40, 30, 4, 2},   {96, 17, 2, 5}};
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        if (!pi_kernels_available((enum pi_kernel_isa)isa)) {
            tap_skip(2 * (int)PI_ARRAY_LEN(f16_shapes) + 5 + 2 * (int)PI_ARRAY_LEN(tile_shapes) + 2,
                     "kernel variant not available here");
            continue;
        }
        pi_kernels_use(isa);
        for (size_t i = 0; i < PI_ARRAY_LEN(f16_shapes); i++) {
            test_attention(PI_TYPE_F16, f16_shapes[i][0], f16_shapes[i][1]);
            test_attention(PI_TYPE_F32, f16_shapes[i][0], f16_shapes[i][1]);
        }
        test_attention_group(128, 37);
        test_attention_group(64, 5);
        test_attention_group(40, 9);
        test_attention_group(256, 9);
        test_attention_group(32, 6);
        for (size_t i = 0; i < PI_ARRAY_LEN(tile_shapes); i++)
            for (int f16 = 0; f16 < 2; f16++)
                test_attention_tile(f16 ? PI_TYPE_F16 : PI_TYPE_F32, tile_shapes[i][0], tile_shapes[i][1],
                                    tile_shapes[i][2], tile_shapes[i][3]);
        test_silu();
    }
    pi_kernels_use(-1);
    test_act();
    return tap_done();
}
