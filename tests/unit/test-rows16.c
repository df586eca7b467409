/*
 * tests/unit/test-rows16.c - Q4_0, Q8_0, Q4_K, Q5_K and Q6_K matrices packed in 16-row groups (kernels/cpu/rows16.h).
 *
 * Q4_0, Q8_0, Q4_K, Q5_K and Q6_K. The layout: every quant byte and scale of every row is where the header says (read
 * back from the packed bytes). The scalar reference against plain pi_vec_dot over the file's rows (the scalar
 * variant), within a bound on the summation-order difference over each output's sum |w x|. Then, for
 * every variant with a packed kernel: the kernel equals the reference bit for bit, and the product
 * through a packed weight (pi_matvec_w / pi_matmul_w) gives each token the same bits alone (n = 1),
 * in batches of 2..70 tokens (several token tiles at 4096 columns) and on 1, 2 and 3 threads. A weight
 * that cannot be packed (rows not a multiple of 16) keeps pi_matvec's bits. The amx variant's tile
 * kernel runs in the batches of 16 or more tokens (16, 17, 33, 64, 70), so it is held to the same bits; without
 * AMX its checks are skipped with a message. The K-quants also at 7 and 43 super-blocks (the AMX
 * kernels' last chunk of super-blocks short after whole ones) and with every weight, scale and
 * activation at the extremes the exact sums' bounds assume. Inputs are fresh random numbers (seed
 * printed; PI_SEED repeats).
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/quant-impl.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/rows16.h"
#include "lib/common.h"
#include "lib/rng.h"
#include "tests/tap.h"

static uint64_t rng_state;

static float rndf(void)
{
    uint64_t z = pi_rng_splitmix64(&rng_state);
    return (float)((double)(z >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static float *rnd_floats(int64_t n)
{
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = rndf();
    return x;
}

/* A random weight of type t (Q4_0, Q8_0, Q4_K, Q5_K or Q6_K), (rows, cols), with its packed copy (rows16 NULL when
 * not packable). */
static struct pi_weight make_weight(enum pi_type t, int64_t rows, int64_t cols)
{
    size_t rb = 0;
    PI_ASSERT(pi_type_row_bytes(t, (uint64_t)cols, &rb));
    struct pi_weight W = {t, rows, cols, rb, NULL, NULL, NULL, NULL};
    uint8_t *data = malloc(W.row_bytes * (size_t)rows);
    float *x = rnd_floats(cols);
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *row = data + (size_t)r * W.row_bytes;
        if (t == PI_TYPE_Q4_K || t == PI_TYPE_Q5_K || t == PI_TYPE_Q6_K) { /* random bytes, finite scales */
            for (size_t i = 0; i < W.row_bytes; i++) row[i] = (uint8_t)(pi_rng_splitmix64(&rng_state) >> 56);
            for (int64_t b = 0; b < cols / 256; b++) {
                const uint16_t d = pi_fp32_to_fp16((0.002f + 0.01f * (rndf() + 1)) * (1.0f + (float)(r % 5)));
                if (t == PI_TYPE_Q6_K) {
                    ((struct pi_block_q6_K *)(void *)row)[b].d = d;
                    continue;
                }
                /* Q4_K and Q5_K blocks both start with d and dmin */
                struct pi_block_q4_K *blk =
                    (struct pi_block_q4_K *)(void *)(row + (size_t)b * (W.row_bytes / (size_t)(cols / 256)));
                blk->d = d;
                blk->dmin = pi_fp32_to_fp16(0.002f + 0.01f * (rndf() + 1));
            }
            continue;
        }
        for (int64_t i = 0; i < cols; i++) x[i] = rndf() * (1.0f + (float)(r % 5));
        pi_quantize_row(t, x, row, cols);
    }
    free(x);
    W.data = data;
    if (pi_r16_packable(&W)) {
        void *p = NULL;
        PI_ASSERT(posix_memalign(&p, 64, pi_r16_group_bytes(t, cols) * (size_t)(rows / 16)) == 0);
        pi_r16_pack(NULL, &W, p);
        W.rows16 = p;
    }
    return W;
}

static void free_weight(struct pi_weight *W)
{
    free((void *)W->data);
    free((void *)W->rows16);
}

/* Every byte of the packed copy read back against the rows it came from. */
static void test_layout(enum pi_type t)
{
    struct pi_weight W = make_weight(t, 48, 96);
    const int64_t nb = 3;
    const int J = t == PI_TYPE_Q4_0 ? 4 : 8;
    const size_t gb = pi_r16_group_bytes(t, 96), bb = W.row_bytes / (size_t)nb;
    int bad = 0;
    tap_ok(gb == 2 * (size_t)(128 * J + 64), "%s: group of 3 blocks: %zu bytes (two pairs of whole lines)",
           pi_type_name(t), gb);
    for (int64_t r = 0; r < W.rows; r++) {
        const uint8_t *row = pi_weight_row(&W, r);
        const uint8_t *g = (const uint8_t *)W.rows16 + (size_t)(r / 16) * gb;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + (size_t)b * bb;
            /* pair b / 2: 2J lines of quants (block 2p, then 2p + 1), then the line of both blocks' scales */
            const uint8_t *pair = g + (b / 2) * (128 * J + 64);
            for (int i = 0; i < 4 * J; i++)
                bad += pair[(b % 2) * 64 * J + (i / 4) * 64 + (r % 16) * 4 + i % 4] != blk[2 + i];
            bad += memcmp(pair + 128 * J + (b % 2) * 32 + (r % 16) * 2, blk, 2) != 0;
        }
    }
    tap_ok(bad == 0, "%s: packed bytes are the rows' quants and scales where rows16.h says (%d wrong)", pi_type_name(t),
           bad);
    free_weight(&W);
}

/* Q4_K and Q5_K: every quant byte (Q5_K: and fifth bit, from the file's qh: bit 2c + h of byte o for
 * input o of sub-block 2c + h), unpacked scale and min, d and dmin of every row where rows16.h says. */
static void test_layout_q45_K(enum pi_type t)
{
    const bool q5 = t == PI_TYPE_Q5_K;
    struct pi_weight W = make_weight(t, 32, 512);
    const size_t gb = pi_r16_group_bytes(t, 512), sbb = q5 ? PI_R16_Q5K_SB : PI_R16_Q4K_SB;
    const size_t pairb = q5 ? PI_R16_Q5K_PAIR : 512, scb = q5 ? PI_R16_Q5K_SC : PI_R16_Q4K_SC;
    const size_t mb = q5 ? PI_R16_Q5K_M : PI_R16_Q4K_M, db = q5 ? PI_R16_Q5K_D : PI_R16_Q4K_D;
    const size_t dmb = q5 ? PI_R16_Q5K_DMIN : PI_R16_Q4K_DMIN;
    int bad = 0;
    tap_ok(gb == 2 * sbb && sbb == (q5 ? 45 : 37) * 64, "%s: group of 2 super-blocks: %zu bytes (%d lines each)",
           pi_type_name(t), gb, q5 ? 45 : 37);
    for (int64_t r = 0; r < W.rows; r++) {
        const uint8_t *row = pi_weight_row(&W, r);
        const uint8_t *g = (const uint8_t *)W.rows16 + (size_t)(r / 16) * gb;
        const int rr = (int)(r % 16);
        for (int sb = 0; sb < 2; sb++) {
            const struct pi_block_q4_K *blk = (const void *)(row + (size_t)sb * (W.row_bytes / 2));
            const struct pi_block_q5_K *b5 = (const void *)blk;
            const uint8_t *qs = q5 ? b5->qs : blk->qs;
            const uint8_t *base = g + (size_t)sb * sbb;
            for (int i = 0; i < 128; i++)
                bad += base[pairb * (size_t)(i / 32) + (i % 32 / 4) * 64 + rr * 4 + i % 4] != qs[i];
            for (int e = 0; q5 && e < 256; e++) { /* e = 32 s + o, s = 2c + h */
                const int s = e / 32, o = e % 32, c = s / 2, h = s % 2;
                const uint8_t v = base[pairb * (size_t)c + 512 + 64 * (o / 16) + 4 * rr + o % 4];
                bad += ((v >> (2 * (o / 4 % 4) + h)) & 1) != ((b5->qh[o] >> s) & 1);
            }
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                pi_k4_scale_min(j, blk->scales, &sc, &m);
                bad += base[scb + 16 * (size_t)j + (size_t)rr] != sc;
                bad += base[mb + 32 * (size_t)(j / 2) + 2 * (size_t)rr + (size_t)(j % 2)] != m;
            }
            bad += memcmp(base + db + 2 * rr, &blk->d, 2) != 0;
            bad += memcmp(base + dmb + 2 * rr, &blk->dmin, 2) != 0;
        }
    }
    tap_ok(bad == 0, "%s: packed quants%s, scales, mins, d and dmin where rows16.h says (%d wrong)", pi_type_name(t),
           q5 ? ", fifth bits" : "", bad);
    free_weight(&W);
}

/* Q6_K: element e's 6-bit value read from the file's block (ql: per 128-element half, byte l holds
 * elements l and l + 64 in its nibbles, byte l + 32 elements l + 32 and l + 96; qh byte l the high two
 * bits of l, l + 32, l + 64, l + 96) and from the packed group (rows16.h), for every element, scale and
 * d of every row. */
static void test_layout_q6_K(void)
{
    struct pi_weight W = make_weight(PI_TYPE_Q6_K, 32, 512);
    const size_t gb = pi_r16_group_bytes(PI_TYPE_Q6_K, 512);
    int bad = 0;
    tap_ok(gb == 2 * PI_R16_Q6K_SB && PI_R16_Q6K_SB == 53 * 64,
           "q6_K: group of 2 super-blocks: %zu bytes (53 lines each)", gb);
    for (int64_t r = 0; r < W.rows; r++) {
        const struct pi_block_q6_K *row = pi_weight_row(&W, r);
        const uint8_t *g = (const uint8_t *)W.rows16 + (size_t)(r / 16) * gb;
        const int rr = (int)(r % 16);
        for (int sb = 0; sb < 2; sb++) {
            const struct pi_block_q6_K *blk = row + sb;
            const uint8_t *base = g + (size_t)sb * PI_R16_Q6K_SB;
            for (int e = 0; e < 256; e++) {
                const int half = e / 128, l = e % 128;
                const int lo = l < 64 ? blk->ql[64 * half + l % 64] & 15 : blk->ql[64 * half + l % 64] >> 4;
                const int want = lo | ((blk->qh[64 * half / 2 + l % 32] >> (2 * (l / 32))) & 3) << 4;
                const int c = e / 64, o = e % 64, j = o % 32 / 4, k = o % 4, odd = o >= 32;
                const uint8_t pl = base[PI_R16_Q6K_PAIR * c + 64 * j + 4 * rr + k];
                const uint8_t ph = base[PI_R16_Q6K_PAIR * c + 64 * (8 + j % 4) + 4 * rr + k];
                const int got = (odd ? pl >> 4 : pl & 15) | ((ph >> (4 * (j / 4) + 2 * odd)) & 3) << 4;
                bad += got != want;
            }
            for (int s = 0; s < 16; s++)
                bad += (int8_t)base[PI_R16_Q6K_SC + 32 * (s / 2) + 2 * rr + s % 2] != blk->scales[s];
            bad += memcmp(base + PI_R16_Q6K_D + 2 * rr, &blk->d, 2) != 0;
        }
    }
    tap_ok(bad == 0, "q6_K: packed 6-bit values, scales and d where rows16.h says (%d wrong)", bad);
    free_weight(&W);
}

/* The reference through pi_r16_matmul against the scalar variant's pi_matvec, per token within 2^-20 of
 * sum |w x| (the floats are summed in another order; float's 2^-24 per step over <= 256 steps). */
static void test_reference(enum pi_type t)
{
    pi_kernels_use(PI_KERNEL_SCALAR);
    struct pi_weight W = make_weight(t, 64, 2048);
    int64_t n = 5;
    float *X = rnd_floats(n * W.cols), *Y = malloc(sizeof(float) * (size_t)(n * W.rows));
    float *y = malloc(sizeof(float) * (size_t)W.rows), *wf = malloc(sizeof(float) * (size_t)W.cols);
    pi_r16_matmul(NULL, pi_r16_ref(t), &W, X, n, Y);
    double worst = 0;
    for (int64_t k = 0; k < n; k++) {
        pi_matvec(NULL, W.type, W.data, W.rows, W.cols, X + k * W.cols, y);
        for (int64_t r = 0; r < W.rows; r++) {
            pi_dequant_row(t, pi_weight_row(&W, r), wf, W.cols);
            double mag = 0;
            for (int64_t i = 0; i < W.cols; i++) mag += fabs((double)wf[i] * X[k * W.cols + i]);
            worst = fmax(worst, fabs((double)Y[k * W.rows + r] - y[r]) / (mag + 1e-30));
        }
    }
    tap_ok(worst < 0x1p-20, "%s: reference vs scalar pi_matvec: worst %.3g of sum |w x| (bound 2^-20)", pi_type_name(t),
           worst);
    pi_kernels_use(-1);
    free(X), free(Y), free(y), free(wf);
    free_weight(&W);
}

/* Variant isa's packed kernel for t: matvec_w per token vs the reference (memcmp), then matmul_w at
 * several n and pool sizes vs those (memcmp). */
static void test_variant(enum pi_kernel_isa isa, enum pi_type t, int64_t rows, int64_t cols)
{
    pi_kernels_use((int)isa);
    const char *name = pi_kernels_variant(), *tn = pi_type_name(t);
    struct pi_weight W = make_weight(t, rows, cols);
    const int64_t nmax = 70;
    float *X = rnd_floats(nmax * cols);
    float *ref = malloc(sizeof(float) * (size_t)(nmax * rows)), *one = malloc(sizeof(float) * (size_t)(nmax * rows));
    float *Y = malloc(sizeof(float) * (size_t)(nmax * rows));
    pi_r16_matmul(NULL, pi_r16_ref(t), &W, X, nmax, ref);
    for (int64_t k = 0; k < nmax; k++) pi_matvec_w(NULL, &W, X + k * cols, one + k * rows);
    tap_ok(memcmp(one, ref, sizeof(float) * (size_t)(nmax * rows)) == 0,
           "%s %s (%lld x %lld): pi_matvec_w through the packed kernel == scalar reference, %lld tokens", name, tn,
           (long long)rows, (long long)cols, (long long)nmax);
    static const int64_t ns[] = {2, 3, 4, 5, 7, 8, 13, 16, 17, 33, 64, 70};
    static const int threads[] = {1, 2, 3};
    for (size_t ti = 0; ti < sizeof threads / sizeof threads[0]; ti++) {
        pi_pool_t *pool = threads[ti] > 1 ? pi_pool_new(threads[ti]) : NULL;
        int bad = 0;
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
            /* tokens taken from an offset so that batches do not all start at token 0 */
            int64_t n = ns[k], t0 = (int64_t)k % (nmax - n + 1);
            pi_matmul_w(pool, &W, X + t0 * cols, n, Y);
            bad += memcmp(Y, one + t0 * rows, sizeof(float) * (size_t)(n * rows)) != 0;
        }
        pi_matvec_w(pool, &W, X, Y);
        bad += memcmp(Y, one, sizeof(float) * (size_t)rows) != 0;
        tap_ok(bad == 0,
               "%s %s (%lld x %lld), %d thread(s): pi_matmul_w at n = 2..70 == pi_matvec_w per token (%d differ)", name,
               tn, (long long)rows, (long long)cols, threads[ti], bad);
        pi_pool_destroy(&pool);
    }
    pi_kernels_use(-1);
    free(X), free(ref), free(one), free(Y);
    free_weight(&W);
}

/* pi_matmul_wn over three weights of one width (48, 16 and 32 rows, as q, k, v) equals three
 * pi_matmul_w calls bit for bit, on 1 and 2 threads, n = 1, 5, 20; and a mix of a packed and an
 * unpackable weight takes the per-weight path with the same bits. */
static void test_fused(enum pi_type t)
{
    struct pi_weight W[4] = {make_weight(t, 48, 256), make_weight(t, 16, 256), make_weight(t, 32, 256),
                             make_weight(t, 40 + 3, 256)};
    const int64_t rows[4] = {48, 16, 32, 43};
    float *X = rnd_floats(20 * 256), *a[4], *b[4];
    for (int i = 0; i < 4; i++) a[i] = malloc(sizeof(float) * 20 * 48), b[i] = malloc(sizeof(float) * 20 * 48);
    int bad = 0;
    for (int th = 1; th <= 2; th++) {
        pi_pool_t *pool = th > 1 ? pi_pool_new(th) : NULL;
        static const int64_t ns[] = {1, 5, 20};
        for (int k = 0; k < 3; k++) {
            int64_t n = ns[k];
            for (int set = 0; set < 2; set++) { /* {0, 1, 2} packed alike; {0, 3} with an unpackable one */
                const struct pi_weight *ws[3] = {&W[0], set ? &W[3] : &W[1], &W[2]};
                int nw = set ? 2 : 3;
                pi_matmul_wn(pool, ws, nw, X, n, a);
                for (int i = 0; i < nw; i++) {
                    if (n == 1) pi_matvec_w(pool, ws[i], X, b[i]);
                    else pi_matmul_w(pool, ws[i], X, n, b[i]);
                    bad += memcmp(a[i], b[i], sizeof(float) * (size_t)(n * (set && i == 1 ? rows[3] : rows[i]))) != 0;
                }
            }
        }
        pi_pool_destroy(&pool);
    }
    tap_ok(bad == 0,
           "%s: pi_matmul_wn (3 weights in one job, or a mix with an unpackable one) == separate calls (%d differ)",
           pi_type_name(t), bad);
    for (int i = 0; i < 4; i++) free(a[i]), free(b[i]), free_weight(&W[i]);
    free(X);
}

/* K-quants at the bounds rows16.h states for the exact sums: every quant and 6-bit scale and min at its
 * largest (Q4_K, Q5_K: all bits set), Q6_K's values all 0 (q - 32 = -32) under scales of -128, against
 * activations that quantise to -128 or 127 everywhere (one sign per token). Every variant's kernel
 * equals the reference bit for bit at n = 1 and 32 (the AMX tiles), and the reference stays within
 * 2^-20 of sum |w x| of the scalar pi_matvec (a wrapped int32 would be far off). */
static void test_extreme(enum pi_type t)
{
    const int64_t rows = 16, cols = 7 * 256, n = 32;
    struct pi_weight W = make_weight(t, rows, cols);
    uint8_t *data = (uint8_t *)(uintptr_t)W.data;
    const size_t bb = W.row_bytes / (size_t)(cols / 256);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < cols / 256; b++) {
            uint8_t *blk = data + (size_t)r * W.row_bytes + (size_t)b * bb;
            const uint16_t d = pi_fp32_to_fp16(1e-3f);
            if (t == PI_TYPE_Q6_K) {
                struct pi_block_q6_K *q6 = (struct pi_block_q6_K *)(void *)blk;
                memset(q6->ql, 0, sizeof q6->ql);
                memset(q6->qh, 0, sizeof q6->qh);
                memset(q6->scales, 0x80, sizeof q6->scales);
                q6->d = d;
            } else {
                memset(blk, 0xFF, bb);
                struct pi_block_q4_K *q4 = (struct pi_block_q4_K *)(void *)blk;
                q4->d = d;
                q4->dmin = d;
            }
        }
    pi_r16_pack(NULL, &W, (uint8_t *)(uintptr_t)W.rows16);
    float *X = malloc(sizeof(float) * (size_t)(n * cols)), *ref = malloc(sizeof(float) * (size_t)(n * rows));
    float *Y = malloc(sizeof(float) * (size_t)(n * rows)), *y = malloc(sizeof(float) * (size_t)rows);
    for (int64_t k = 0; k < n; k++)
        for (int64_t i = 0; i < cols; i++) X[k * cols + i] = k & 1 ? 1.0f : -1.0f;
    pi_r16_matmul(NULL, pi_r16_ref(t), &W, X, n, ref);
    pi_kernels_use(PI_KERNEL_SCALAR);
    double worst = 0;
    for (int64_t k = 0; k < n; k++) {
        pi_matvec(NULL, t, W.data, rows, cols, X + k * cols, y);
        for (int64_t r = 0; r < rows; r++)
            worst = fmax(worst, fabs((double)ref[k * rows + r] - y[r]) / (fabs((double)y[r]) + 1e-30));
    }
    pi_kernels_use(-1);
    int bad = 0, ran = 0;
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        if ((int)pi_kernels_use(isa) != isa || !pi_r16_kernel(t)) continue;
        ran++;
        pi_matmul_w(NULL, &W, X, n, Y);
        bad += memcmp(Y, ref, sizeof(float) * (size_t)(n * rows)) != 0;
        pi_matvec_w(NULL, &W, X, Y);
        bad += memcmp(Y, ref, sizeof(float) * (size_t)rows) != 0;
    }
    pi_kernels_use(-1);
    tap_ok(bad == 0 && worst < 0x1p-20,
           "%s at the sums' bounds: %d variants' kernels == reference (%d differ), reference vs scalar pi_matvec "
           "%.3g (bound 2^-20)",
           pi_type_name(t), ran, bad, worst);
    free(X), free(ref), free(Y), free(y);
    free_weight(&W);
}

/* Rows not a multiple of 16: no packed copy, and pi_matvec_w / pi_matmul_w are pi_matvec / pi_matmul. */
static void test_unpackable(void)
{
    struct pi_weight W = make_weight(PI_TYPE_Q4_0, 40 + 3, 256);
    float *X = rnd_floats(6 * 256), *a = malloc(sizeof(float) * 6 * 43), *b = malloc(sizeof(float) * 6 * 43);
    tap_ok(W.rows16 == NULL, "43 rows: not packable");
    pi_matvec_w(NULL, &W, X, a);
    pi_matvec(NULL, W.type, W.data, W.rows, W.cols, X, b);
    int bad = memcmp(a, b, sizeof(float) * 43) != 0;
    pi_matmul_w(NULL, &W, X, 6, a);
    pi_matmul(NULL, W.type, W.data, W.rows, W.cols, X, 6, b);
    bad += memcmp(a, b, sizeof(float) * 6 * 43) != 0;
    tap_ok(bad == 0, "43 rows: pi_matvec_w / pi_matmul_w give pi_matvec / pi_matmul's bits");
    free(X), free(a), free(b);
    free_weight(&W);
}

int main(void)
{
    static const enum pi_type types[] = {PI_TYPE_Q4_0, PI_TYPE_Q8_0, PI_TYPE_Q4_K, PI_TYPE_Q5_K, PI_TYPE_Q6_K};
    const char *seed = getenv("PI_SEED");
    rng_state = seed ? strtoull(seed, NULL, 10) : (uint64_t)time(NULL);
    tap_diag("seed %llu (PI_SEED repeats)", (unsigned long long)rng_state);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        enum pi_type t = types[k];
        if (t == PI_TYPE_Q4_K || t == PI_TYPE_Q5_K) test_layout_q45_K(t);
        else if (t == PI_TYPE_Q6_K) test_layout_q6_K();
        else test_layout(t);
        test_reference(t);
        int with = 0;
        for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
            const struct pi_kernel_table *tb = pi_kernels_table((enum pi_kernel_isa)isa);
            if (!tb || !tb->r16_dot[t]) continue;
            with++;
            test_variant((enum pi_kernel_isa)isa, t, 64, 2048);
            test_variant((enum pi_kernel_isa)isa, t, 32, 4096); /* 48 tokens per tile: n = 64, 70 cross tiles */
            test_variant((enum pi_kernel_isa)isa, t, 16, t == PI_TYPE_Q4_0 || t == PI_TYPE_Q8_0 ? 32 : 256);
            if (t == PI_TYPE_Q4_K || t == PI_TYPE_Q5_K || t == PI_TYPE_Q6_K) {
                /* super-block counts that leave the AMX kernels a short last chunk (CHUNK_SB = 4) after
                 * whole ones: 7 (4 + 3) and 43 (11008 columns, a 7B ffn_down: 10 x 4 + 3) */
                test_variant((enum pi_kernel_isa)isa, t, 16, 7 * 256);
                test_variant((enum pi_kernel_isa)isa, t, 16, 11008);
            }
        }
        if (!with) tap_skip(1, "no kernel variant with a 16-row packed kernel on this CPU or build");
        test_fused(t);
        if (t == PI_TYPE_Q4_K || t == PI_TYPE_Q5_K || t == PI_TYPE_Q6_K) test_extreme(t);
        /* the amx variant's tile products run at n >= 16 (the batches of 16 and more above) */
        if (with && !pi_kernels_available(PI_KERNEL_AMX))
            tap_skip(1, "AMX check: no AMX-INT8 here (CPU, OS permission or compiler); the amx variant was not run");
    }
    test_unpackable();
    uint64_t avail = 0;
    const bool none = pi_r16_room(UINT64_MAX, &avail), small = pi_r16_room(0, NULL);
    tap_ok(avail == 0 ? none && small : !none && small == (avail >= PI_R16_RESERVE),
           "pi_r16_room: no copy fits 2^64 bytes, an empty one fits with the reserve to spare (MemAvailable %.0f MiB)",
           avail / 1048576.0);
    return tap_done();
}
