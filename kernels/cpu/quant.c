/*
 * kernels/cpu/quant.c - the portable scalar reference for every quantised type (dequantisation,
 * reference quantisers, dot products), and the public entry points of kernels/cpu/quant.h, which
 * dispatch through the table chosen in dispatch.c.
 *
 * The value formulas and bit layouts are ggml's (ggml-quants.c, MIT); the float operations of each
 * dequantiser are done in the same order as ggml / gguf-py so results are bit-identical to theirs.
 * K-quant blocks are first unpacked into plain integer quants and per-sub-block scales, and both the
 * dequantiser and the dot product work from that unpacking, so the fixture test of the dequantiser
 * also checks the dot product's reading of the bits. Speed is not a goal here: the SIMD variants are.
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "kernels/cpu/quant-impl.h"
#include "lib/common.h"

/* ---------------------------------------------------------------- float types */

static void dequant_f32(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

static void dequant_f16(const void *src, float *dst, int64_t n)
{
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = pi_fp16_to_fp32(h);
    }
}

static void dequant_bf16(const void *src, float *dst, int64_t n)
{
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = pi_bf16_to_fp32(h);
    }
}

static float dot_f32(const void *w, const void *xq, int64_t n)
{
    const float *a = w, *b = xq;
    float s[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) s[k] += a[i + k] * b[i + k];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static float dot_f16(const void *w, const void *xq, int64_t n)
{
    const uint8_t *a = w;
    const float *b = xq;
    float s = 0;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        s += pi_fp16_to_fp32(h) * b[i];
    }
    return s;
}

static float dot_bf16(const void *w, const void *xq, int64_t n)
{
    const uint8_t *a = w;
    const float *b = xq;
    float s = 0;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, a + 2 * i, 2);
        s += pi_bf16_to_fp32(h) * b[i];
    }
    return s;
}

/* ---------------------------------------------------------------- legacy 32-element types */

/* Integer quants of one legacy block: q[32] (before the offset / minimum is applied). */
static void unpack_nibbles(const uint8_t *qs, int q[32])
{
    for (int j = 0; j < 16; j++) {
        q[j] = qs[j] & 0xF;
        q[j + 16] = qs[j] >> 4;
    }
}

static void unpack_q5(const uint8_t *qs, const uint8_t qhb[4], int q[32])
{
    uint32_t qh = (uint32_t)qhb[0] | (uint32_t)qhb[1] << 8 | (uint32_t)qhb[2] << 16 | (uint32_t)qhb[3] << 24;
    unpack_nibbles(qs, q);
    for (int j = 0; j < 32; j++) q[j] |= (int)((qh >> j) & 1) << 4;
}

static void dequant_q4_0(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / PI_QK4_0; i++) {
        float d = pi_fp16_to_fp32(b[i].d);
        int q[32];
        unpack_nibbles(b[i].qs, q);
        for (int j = 0; j < 32; j++) dst[32 * i + j] = (float)(q[j] - 8) * d;
    }
}

static void dequant_q4_1(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / PI_QK4_1; i++) {
        float d = pi_fp16_to_fp32(b[i].d), m = pi_fp16_to_fp32(b[i].m);
        int q[32];
        unpack_nibbles(b[i].qs, q);
        for (int j = 0; j < 32; j++) dst[32 * i + j] = (float)q[j] * d + m;
    }
}

static void dequant_q5_0(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / PI_QK5_0; i++) {
        float d = pi_fp16_to_fp32(b[i].d);
        int q[32];
        unpack_q5(b[i].qs, b[i].qh, q);
        for (int j = 0; j < 32; j++) dst[32 * i + j] = (float)(q[j] - 16) * d;
    }
}

static void dequant_q5_1(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / PI_QK5_1; i++) {
        float d = pi_fp16_to_fp32(b[i].d), m = pi_fp16_to_fp32(b[i].m);
        int q[32];
        unpack_q5(b[i].qs, b[i].qh, q);
        for (int j = 0; j < 32; j++) dst[32 * i + j] = (float)q[j] * d + m;
    }
}

static void dequant_q8_0(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / PI_QK8_0; i++) {
        float d = pi_fp16_to_fp32(b[i].d);
        for (int j = 0; j < 32; j++) dst[32 * i + j] = (float)b[i].qs[j] * d;
    }
}

static void dequant_q8_1(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q8_1 *b = src;
    for (int64_t i = 0; i < n / PI_QK8_1; i++) {
        float d = pi_fp16_to_fp32(b[i].d);
        for (int j = 0; j < 32; j++) dst[32 * i + j] = (float)b[i].qs[j] * d;
    }
}

static void dequant_q8_K(const void *src, float *dst, int64_t n)
{
    const struct pi_block_q8_K *b = src;
    for (int64_t i = 0; i < n / PI_QK_K; i++)
        for (int j = 0; j < PI_QK_K; j++) dst[PI_QK_K * i + j] = (float)b[i].qs[j] * b[i].d;
}

/* Dot products of legacy blocks with Q8_0 activations: per block d_w * d_x * sum(q * q8), plus, for
 * the types with a minimum, m * d_x * sum(q8). */
static float dot_legacy(const void *w, const void *xq, int64_t n, enum pi_type t)
{
    const struct pi_block_q8_0 *x = xq;
    float sum = 0;
    for (int64_t i = 0; i < n / 32; i++) {
        int q[32], off = 0;
        float d, m = 0;
        switch (t) {
        case PI_TYPE_Q4_0: {
            const struct pi_block_q4_0 *b = (const struct pi_block_q4_0 *)w + i;
            unpack_nibbles(b->qs, q), d = pi_fp16_to_fp32(b->d), off = 8;
            break;
        }
        case PI_TYPE_Q4_1: {
            const struct pi_block_q4_1 *b = (const struct pi_block_q4_1 *)w + i;
            unpack_nibbles(b->qs, q), d = pi_fp16_to_fp32(b->d), m = pi_fp16_to_fp32(b->m);
            break;
        }
        case PI_TYPE_Q5_0: {
            const struct pi_block_q5_0 *b = (const struct pi_block_q5_0 *)w + i;
            unpack_q5(b->qs, b->qh, q), d = pi_fp16_to_fp32(b->d), off = 16;
            break;
        }
        case PI_TYPE_Q5_1: {
            const struct pi_block_q5_1 *b = (const struct pi_block_q5_1 *)w + i;
            unpack_q5(b->qs, b->qh, q), d = pi_fp16_to_fp32(b->d), m = pi_fp16_to_fp32(b->m);
            break;
        }
        default: {
            const struct pi_block_q8_0 *b = (const struct pi_block_q8_0 *)w + i;
            for (int j = 0; j < 32; j++) q[j] = b->qs[j];
            d = pi_fp16_to_fp32(b->d);
            break;
        }
        }
        int sumi = 0, sumx = 0;
        for (int j = 0; j < 32; j++) {
            sumi += (q[j] - off) * x[i].qs[j];
            sumx += x[i].qs[j];
        }
        float dx = pi_fp16_to_fp32(x[i].d);
        sum += (float)sumi * d * dx + m * dx * (float)sumx;
    }
    return sum;
}

static float dot_q4_0(const void *w, const void *x, int64_t n) { return dot_legacy(w, x, n, PI_TYPE_Q4_0); }
static float dot_q4_1(const void *w, const void *x, int64_t n) { return dot_legacy(w, x, n, PI_TYPE_Q4_1); }
static float dot_q5_0(const void *w, const void *x, int64_t n) { return dot_legacy(w, x, n, PI_TYPE_Q5_0); }
static float dot_q5_1(const void *w, const void *x, int64_t n) { return dot_legacy(w, x, n, PI_TYPE_Q5_1); }
static float dot_q8_0(const void *w, const void *x, int64_t n) { return dot_legacy(w, x, n, PI_TYPE_Q8_0); }

/* ---------------------------------------------------------------- K-quants */

/* One K-quant super-block unpacked: x[j] = d * sc[j / sub] * q[j] - dmin * mn[j / sub], where sub is
 * 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K) elements. */
struct kblock {
    int8_t q[PI_QK_K];
    int sc[16], mn[16];
    int sub;
    float d, dmin;
};

static void unpack_q2_K(const struct pi_block_q2_K *b, struct kblock *k)
{
    k->sub = 16, k->d = pi_fp16_to_fp32(b->d), k->dmin = pi_fp16_to_fp32(b->dmin);
    for (int j = 0; j < 16; j++) k->sc[j] = b->scales[j] & 0xF, k->mn[j] = b->scales[j] >> 4;
    for (int c = 0; c < 2; c++)         /* 128-element halves */
        for (int s = 0; s < 4; s++)     /* 2-bit planes */
            for (int l = 0; l < 32; l++) k->q[128 * c + 32 * s + l] = (int8_t)((b->qs[32 * c + l] >> (2 * s)) & 3);
}

static void unpack_q3_K(const struct pi_block_q3_K *b, struct kblock *k)
{
    int8_t sc[16];
    k->sub = 16, k->d = pi_fp16_to_fp32(b->d), k->dmin = 0;
    pi_k3_scales(b->scales, sc);
    for (int j = 0; j < 16; j++) k->sc[j] = sc[j], k->mn[j] = 0;
    for (int c = 0; c < 2; c++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++) {
                int e = 128 * c + 32 * s + l; /* hmask bit (4c + s) of byte l */
                int hi = (b->hmask[l] >> (4 * c + s)) & 1;
                k->q[e] = (int8_t)(((b->qs[32 * c + l] >> (2 * s)) & 3) - (hi ? 0 : 4));
            }
}

static void unpack_q4_K(const struct pi_block_q4_K *b, struct kblock *k)
{
    k->sub = 32, k->d = pi_fp16_to_fp32(b->d), k->dmin = pi_fp16_to_fp32(b->dmin);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        pi_k4_scale_min(j, b->scales, &sc, &m);
        k->sc[j] = sc, k->mn[j] = m;
    }
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            k->q[64 * c + l] = (int8_t)(b->qs[32 * c + l] & 0xF);
            k->q[64 * c + 32 + l] = (int8_t)(b->qs[32 * c + l] >> 4);
        }
}

static void unpack_q5_K(const struct pi_block_q5_K *b, struct kblock *k)
{
    k->sub = 32, k->d = pi_fp16_to_fp32(b->d), k->dmin = pi_fp16_to_fp32(b->dmin);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        pi_k4_scale_min(j, b->scales, &sc, &m);
        k->sc[j] = sc, k->mn[j] = m;
    }
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            int h0 = (b->qh[l] >> (2 * c)) & 1, h1 = (b->qh[l] >> (2 * c + 1)) & 1;
            k->q[64 * c + l] = (int8_t)((b->qs[32 * c + l] & 0xF) | h0 << 4);
            k->q[64 * c + 32 + l] = (int8_t)((b->qs[32 * c + l] >> 4) | h1 << 4);
        }
}

static void unpack_q6_K(const struct pi_block_q6_K *b, struct kblock *k)
{
    k->sub = 16, k->d = pi_fp16_to_fp32(b->d), k->dmin = 0;
    for (int j = 0; j < 16; j++) k->sc[j] = b->scales[j], k->mn[j] = 0;
    for (int c = 0; c < 2; c++) { /* 128-element halves: ql[64c..], qh[32c..] */
        const uint8_t *ql = b->ql + 64 * c, *qh = b->qh + 32 * c;
        int8_t *q = k->q + 128 * c;
        for (int l = 0; l < 32; l++) {
            q[l] = (int8_t)(((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32);
            q[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32);
            q[l + 64] = (int8_t)(((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32);
            q[l + 96] = (int8_t)(((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32);
        }
    }
}

static void unpack_k(enum pi_type t, const void *w, int64_t i, struct kblock *k)
{
    switch (t) {
    case PI_TYPE_Q2_K: unpack_q2_K((const struct pi_block_q2_K *)w + i, k); break;
    case PI_TYPE_Q3_K: unpack_q3_K((const struct pi_block_q3_K *)w + i, k); break;
    case PI_TYPE_Q4_K: unpack_q4_K((const struct pi_block_q4_K *)w + i, k); break;
    case PI_TYPE_Q5_K: unpack_q5_K((const struct pi_block_q5_K *)w + i, k); break;
    default: unpack_q6_K((const struct pi_block_q6_K *)w + i, k); break;
    }
}

/* Same float operation order as ggml's dequantize_row_qN_K: (d*sc) * q - (dmin*m). */
static void dequant_k(enum pi_type t, const void *src, float *dst, int64_t n)
{
    struct kblock k;
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        unpack_k(t, src, i, &k);
        for (int s = 0; s < PI_QK_K / k.sub; s++) {
            float dl = k.d * (float)k.sc[s], ml = k.dmin * (float)k.mn[s];
            for (int l = 0; l < k.sub; l++) {
                int e = s * k.sub + l;
                dst[PI_QK_K * i + e] = t == PI_TYPE_Q2_K || t == PI_TYPE_Q4_K || t == PI_TYPE_Q5_K
                                           ? dl * (float)k.q[e] - ml
                                           : dl * (float)k.q[e];
            }
        }
    }
}

/* Dot with Q8_K activations: d_x * (d * sum_s sc[s] * sum(q*q8) - dmin * sum_s mn[s] * sum(q8)). */
static float dot_k(enum pi_type t, const void *w, const void *xq, int64_t n)
{
    const struct pi_block_q8_K *x = xq;
    struct kblock k;
    float sum = 0;
    for (int64_t i = 0; i < n / PI_QK_K; i++) {
        unpack_k(t, w, i, &k);
        int32_t sumi = 0, summ = 0;
        for (int s = 0; s < PI_QK_K / k.sub; s++) {
            int32_t si = 0;
            for (int l = 0; l < k.sub; l++) si += k.q[s * k.sub + l] * x[i].qs[s * k.sub + l];
            sumi += k.sc[s] * si;
            for (int b = 0; b < k.sub / 16; b++) summ += k.mn[s] * x[i].bsums[s * k.sub / 16 + b];
        }
        sum += x[i].d * (k.d * (float)sumi - k.dmin * (float)summ);
    }
    return sum;
}

static void dequant_q2_K(const void *s, float *d, int64_t n) { dequant_k(PI_TYPE_Q2_K, s, d, n); }
static void dequant_q3_K(const void *s, float *d, int64_t n) { dequant_k(PI_TYPE_Q3_K, s, d, n); }
static void dequant_q4_K(const void *s, float *d, int64_t n) { dequant_k(PI_TYPE_Q4_K, s, d, n); }
static void dequant_q5_K(const void *s, float *d, int64_t n) { dequant_k(PI_TYPE_Q5_K, s, d, n); }
static void dequant_q6_K(const void *s, float *d, int64_t n) { dequant_k(PI_TYPE_Q6_K, s, d, n); }
static float dot_q2_K(const void *w, const void *x, int64_t n) { return dot_k(PI_TYPE_Q2_K, w, x, n); }
static float dot_q3_K(const void *w, const void *x, int64_t n) { return dot_k(PI_TYPE_Q3_K, w, x, n); }
static float dot_q4_K(const void *w, const void *x, int64_t n) { return dot_k(PI_TYPE_Q4_K, w, x, n); }
static float dot_q5_K(const void *w, const void *x, int64_t n) { return dot_k(PI_TYPE_Q5_K, w, x, n); }
static float dot_q6_K(const void *w, const void *x, int64_t n) { return dot_k(PI_TYPE_Q6_K, w, x, n); }

/* ---------------------------------------------------------------- grouped rows (pi_vec_madg4)
 * The reference: element by element, each row's x = q * s (exact), then a * x and the sum rounded, the
 * rows in order (kernels/cpu/quant.h, "Grouped rows"). */
static void madg4_q4_0(const void *const row[4], const uint16_t *const s[4], const float a[4], int m,
                       const void *const pf[4], float *y, int64_t n)
{
    (void)pf;
    for (int64_t i = 0; i < n; i++) {
        const int64_t k = i / 32, e = i % 32;
        for (int r = 0; r < m; r++) {
            const uint8_t b = ((const uint8_t *)row[r])[16 * k + (e & 15)];
            const int q = (e < 16 ? b & 0x0F : b >> 4) - 8;
            const float x = (float)q * pi_fp16_to_fp32(s[r][i]);
            y[i] += a[r] * x;
        }
    }
}

static void madg4_q8_0(const void *const row[4], const uint16_t *const s[4], const float a[4], int m,
                       const void *const pf[4], float *y, int64_t n)
{
    (void)pf;
    for (int64_t i = 0; i < n; i++)
        for (int r = 0; r < m; r++) {
            const float x = (float)((const int8_t *)row[r])[i] * pi_fp16_to_fp32(s[r][i]);
            y[i] += a[r] * x;
        }
}

const struct pi_kernel_table pi_kernels_scalar_raw = {
    .name = "scalar",
    .vec_madg4 = {[PI_TYPE_Q4_0] = madg4_q4_0, [PI_TYPE_Q8_0] = madg4_q8_0},
    .vec_dot = {
        [PI_TYPE_F32] = dot_f32, [PI_TYPE_F16] = dot_f16, [PI_TYPE_BF16] = dot_bf16,
        [PI_TYPE_Q4_0] = dot_q4_0, [PI_TYPE_Q4_1] = dot_q4_1, [PI_TYPE_Q5_0] = dot_q5_0,
        [PI_TYPE_Q5_1] = dot_q5_1, [PI_TYPE_Q8_0] = dot_q8_0,
        [PI_TYPE_Q2_K] = dot_q2_K, [PI_TYPE_Q3_K] = dot_q3_K, [PI_TYPE_Q4_K] = dot_q4_K,
        [PI_TYPE_Q5_K] = dot_q5_K, [PI_TYPE_Q6_K] = dot_q6_K,
    },
    .dequant = {
        [PI_TYPE_F32] = dequant_f32, [PI_TYPE_F16] = dequant_f16, [PI_TYPE_BF16] = dequant_bf16,
        [PI_TYPE_Q4_0] = dequant_q4_0, [PI_TYPE_Q4_1] = dequant_q4_1, [PI_TYPE_Q5_0] = dequant_q5_0,
        [PI_TYPE_Q5_1] = dequant_q5_1, [PI_TYPE_Q8_0] = dequant_q8_0, [PI_TYPE_Q8_1] = dequant_q8_1,
        [PI_TYPE_Q2_K] = dequant_q2_K, [PI_TYPE_Q3_K] = dequant_q3_K, [PI_TYPE_Q4_K] = dequant_q4_K,
        [PI_TYPE_Q5_K] = dequant_q5_K, [PI_TYPE_Q6_K] = dequant_q6_K, [PI_TYPE_Q8_K] = dequant_q8_K,
    },
};

/* ---------------------------------------------------------------- reference quantisers */

/* Largest |x| of block x (n,) and the signed value that has it. */
static float block_absmax(const float *x, int n, float *signed_max)
{
    float amax = 0, max = 0;
    for (int j = 0; j < n; j++)
        if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
    if (signed_max) *signed_max = max;
    return amax;
}

static void block_minmax(const float *x, int n, float *mn, float *mx)
{
    float lo = INFINITY, hi = -INFINITY;
    for (int j = 0; j < n; j++) lo = fminf(lo, x[j]), hi = fmaxf(hi, x[j]);
    *mn = lo, *mx = hi;
}

/* roundf(v) as int8 in [-127, 127]; NaN -> 0. Activations can hold Inf/NaN (a diverging or hostile
 * model), and converting a NaN or out-of-range float to an integer type is undefined behaviour. */
static inline int8_t q8_round(float v)
{
    if (v >= -127.0f && v <= 127.0f) return (int8_t)roundf(v);
    return v > 0 ? 127 : v < 0 ? -127 : 0;
}

static void quant_q8_0(const float *x, void *dst, int64_t n)
{
    struct pi_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        float d = block_absmax(x, 32, NULL) / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = pi_fp32_to_fp16(d);
        for (int j = 0; j < 32; j++) b[i].qs[j] = q8_round(x[j] * id);
    }
}

static void quant_q8_1(const float *x, void *dst, int64_t n)
{
    struct pi_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        float d = block_absmax(x, 32, NULL) / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) b[i].qs[j] = q8_round(x[j] * id), sum += b[i].qs[j];
        b[i].d = pi_fp32_to_fp16(d);
        b[i].s = pi_fp32_to_fp16((float)sum * d);
    }
}

/* Q4_0 / Q5_0: d = max / -(2^(bits-1)) keeps the signed extreme exactly representable (ggml's ref). */
static void quant_q4_0(const float *x, void *dst, int64_t n)
{
    struct pi_block_q4_0 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        float max;
        block_absmax(x, 32, &max);
        float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = pi_fp32_to_fp16(d);
        for (int j = 0; j < 16; j++) {
            int q0 = PI_MIN(15, (int)(x[j] * id + 8.5f)), q1 = PI_MIN(15, (int)(x[j + 16] * id + 8.5f));
            b[i].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void quant_q4_1(const float *x, void *dst, int64_t n)
{
    struct pi_block_q4_1 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        float mn, mx;
        block_minmax(x, 32, &mn, &mx);
        float d = (mx - mn) / 15.0f, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = pi_fp32_to_fp16(d), b[i].m = pi_fp32_to_fp16(mn);
        for (int j = 0; j < 16; j++) {
            int q0 = PI_MIN(15, (int)((x[j] - mn) * id + 0.5f)), q1 = PI_MIN(15, (int)((x[j + 16] - mn) * id + 0.5f));
            b[i].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

/* Q5 high bits: bit j of qh is bit 4 of q[j] (j < 32, low nibbles first). */
static void pack_q5(const int q[32], uint8_t qs[16], uint8_t qhb[4])
{
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 0xF) | (q[j + 16] & 0xF) << 4);
    for (int j = 0; j < 32; j++) qh |= (uint32_t)((q[j] >> 4) & 1) << j;
    for (int k = 0; k < 4; k++) qhb[k] = (uint8_t)(qh >> (8 * k));
}

static void quant_q5_0(const float *x, void *dst, int64_t n)
{
    struct pi_block_q5_0 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        float max;
        int q[32];
        block_absmax(x, 32, &max);
        float d = max / -16.0f, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = pi_fp32_to_fp16(d);
        for (int j = 0; j < 32; j++) q[j] = PI_MIN(31, (int)(x[j] * id + 16.5f));
        pack_q5(q, b[i].qs, b[i].qh);
    }
}

static void quant_q5_1(const float *x, void *dst, int64_t n)
{
    struct pi_block_q5_1 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        float mn, mx;
        int q[32];
        block_minmax(x, 32, &mn, &mx);
        float d = (mx - mn) / 31.0f, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = pi_fp32_to_fp16(d), b[i].m = pi_fp32_to_fp16(mn);
        for (int j = 0; j < 32; j++) q[j] = PI_MIN(31, (int)((x[j] - mn) * id + 0.5f));
        pack_q5(q, b[i].qs, b[i].qh);
    }
}

/* Q8_K: symmetric, d = amax / 127 kept in float32; bsums per 16 elements. */
static void quant_q8_K(const float *x, void *dst, int64_t n)
{
    struct pi_block_q8_K *b = dst;
    for (int64_t i = 0; i < n / PI_QK_K; i++, x += PI_QK_K) {
        float amax = block_absmax(x, PI_QK_K, NULL);
        float id = amax != 0 ? 127.0f / amax : 0.0f;
        b[i].d = amax / 127.0f;
        for (int j = 0; j < PI_QK_K; j++) b[i].qs[j] = (int8_t)PI_MIN(127, PI_MAX(-127, (int)lrintf(x[j] * id)));
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += b[i].qs[16 * g + l];
            b[i].bsums[g] = (int16_t)s;
        }
    }
}

static void quant_f16(const float *x, void *dst, int64_t n)
{
    uint8_t *p = dst;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = pi_fp32_to_fp16(x[i]);
        memcpy(p + 2 * i, &h, 2);
    }
}

static void quant_bf16(const float *x, void *dst, int64_t n)
{
    uint8_t *p = dst;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = pi_fp32_to_bf16(x[i]);
        memcpy(p + 2 * i, &h, 2);
    }
}

static void quant_f32(const float *x, void *dst, int64_t n) { memcpy(dst, x, (size_t)n * 4); }

typedef void (*quant_fn)(const float *x, void *dst, int64_t n);

static const quant_fn quant_table[PI_TYPE_COUNT] = {
    [PI_TYPE_F32] = quant_f32, [PI_TYPE_F16] = quant_f16, [PI_TYPE_BF16] = quant_bf16,
    [PI_TYPE_Q8_0] = quant_q8_0, [PI_TYPE_Q8_1] = quant_q8_1, [PI_TYPE_Q4_0] = quant_q4_0,
    [PI_TYPE_Q4_1] = quant_q4_1, [PI_TYPE_Q5_0] = quant_q5_0, [PI_TYPE_Q5_1] = quant_q5_1,
    [PI_TYPE_Q8_K] = quant_q8_K,
};

/* ---------------------------------------------------------------- public entry points */

/* Every block size here is a power of two (1, 32, 256), so the whole-block check is a mask: this
 * runs on every pi_vec_dot call of the sparse path. */
static void check_row(enum pi_type t, int64_t n)
{
    const struct pi_type_info *ti = pi_type_get((uint32_t)t);
    PI_ASSERT(ti != NULL && n >= 0 && pi_is_pow2(ti->block_elems) && (n & (int64_t)(ti->block_elems - 1)) == 0);
}

bool pi_kernel_supported(enum pi_type t)
{
    return (unsigned)t < PI_TYPE_COUNT && pi_kernels_scalar_raw.vec_dot[t] != NULL;
}

bool pi_quantize_supported(enum pi_type t) { return (unsigned)t < PI_TYPE_COUNT && quant_table[t] != NULL; }

void pi_dequant_row(enum pi_type t, const void *src, float *dst, int64_t n)
{
    check_row(t, n);
    pi_dequant_fn f = pi_kernels_active()->dequant[t];
    PI_ASSERT(f != NULL);
    f(src, dst, n);
}

void pi_quantize_row(enum pi_type t, const float *src, void *dst, int64_t n)
{
    check_row(t, n);
    PI_ASSERT(pi_quantize_supported(t));
    pi_quantize_fn f = pi_kernels_active()->quantize[t]; /* a SIMD one writes the same bytes */
    (f ? f : quant_table[t])(src, dst, n);
}

void pi_quantize_row_ref(enum pi_type t, const float *src, void *dst, int64_t n)
{
    check_row(t, n);
    PI_ASSERT(pi_quantize_supported(t));
    quant_table[t](src, dst, n);
}

enum pi_type pi_vec_dot_type(enum pi_type wtype)
{
    switch (wtype) {
    case PI_TYPE_F32: case PI_TYPE_F16: case PI_TYPE_BF16: return PI_TYPE_F32;
    case PI_TYPE_Q4_0: case PI_TYPE_Q4_1: case PI_TYPE_Q5_0: case PI_TYPE_Q5_1: case PI_TYPE_Q8_0:
        return PI_TYPE_Q8_0;
    case PI_TYPE_Q2_K: case PI_TYPE_Q3_K: case PI_TYPE_Q4_K: case PI_TYPE_Q5_K: case PI_TYPE_Q6_K:
        return PI_TYPE_Q8_K;
    default: PI_ASSERT(!"type has no dot product"); return PI_TYPE_F32;
    }
}

size_t pi_act_row_bytes(enum pi_type wtype, int64_t n)
{
    uint64_t bytes = 0;
    PI_ASSERT(n >= 0 && pi_type_row_bytes(pi_vec_dot_type(wtype), (uint64_t)n, &bytes));
    return (size_t)bytes;
}

void pi_quantize_act(enum pi_type wtype, const float *x, void *xq, int64_t n)
{
    pi_quantize_row(pi_vec_dot_type(wtype), x, xq, n);
}

float pi_vec_dot(enum pi_type wtype, const void *wrow, const void *xq, int64_t n)
{
    check_row(wtype, n);
    pi_vec_dot_fn f = pi_kernel_supported(wtype) ? pi_kernels_active()->vec_dot[wtype] : NULL;
    PI_ASSERT(f != NULL);
    return f(wrow, xq, n);
}

void pi_vec_mad(enum pi_type t, const void *row, float a, float *y, int64_t n)
{
    check_row(t, n);
    pi_vec_mad_fn mad = pi_kernels_active()->vec_mad[t];
    if (mad) { /* fused SIMD variant (F16, Q4_0, Q8_0): the same floats as the loop below */
        mad(row, a, y, n);
        return;
    }
    const struct pi_type_info *ti = pi_type_get((uint32_t)t);
    pi_dequant_fn f = pi_kernels_active()->dequant[t];
    PI_ASSERT(f != NULL);
    float buf[PI_QK_K];
    /* chunks of whole blocks: 256 elements (a multiple of every block size here) */
    for (int64_t i = 0; i < n; i += PI_QK_K) {
        int64_t m = PI_MIN((int64_t)PI_QK_K, n - i);
        f((const uint8_t *)row + (size_t)(i / ti->block_elems) * ti->block_bytes, buf, m);
        for (int64_t j = 0; j < m; j++) y[i + j] += a * buf[j];
    }
}

void pi_grouped_from_cols(const struct pi_weight *src, int64_t g0, int64_t g1, void *q, uint16_t *s)
{
    const int64_t R = src->rows;
    const size_t rb = pi_grouped_row_bytes(src->type, R);
    PI_ASSERT(rb > 0 && src->cols % 32 == 0 && g0 >= 0 && g1 <= src->cols / 32);
    for (int64_t g = g0; g < g1; g++) {
        uint16_t *sg = s + (size_t)(g - g0) * (size_t)R;
        uint8_t *qg = (uint8_t *)q + (size_t)(g - g0) * 32 * rb;
        if (src->type == PI_TYPE_Q8_0) {
            for (int64_t r = 0; r < R; r++) {
                const struct pi_block_q8_0 *b = (const struct pi_block_q8_0 *)pi_weight_row(src, r) + g;
                sg[r] = b->d;
                for (int e = 0; e < 32; e++) qg[(size_t)e * rb + (size_t)r] = (uint8_t)b->qs[e];
            }
            continue;
        }
        /* Q4_0: element e of block g of row r is nibble (e & 15) of qs, low for e < 16; in the grouped row
         * 32 g + e, rows 32 k + i and 32 k + 16 + i of src share byte 16 k + i (low, high) */
        for (int64_t k = 0; k < R / 32; k++)
            for (int i = 0; i < 16; i++) {
                const struct pi_block_q4_0 *lo = (const struct pi_block_q4_0 *)pi_weight_row(src, 32 * k + i) + g;
                const struct pi_block_q4_0 *hi = (const struct pi_block_q4_0 *)pi_weight_row(src, 32 * k + 16 + i) + g;
                sg[32 * k + i] = lo->d, sg[32 * k + 16 + i] = hi->d;
                for (int e = 0; e < 32; e++) {
                    const int nl = e < 16 ? lo->qs[e] & 0x0F : lo->qs[e - 16] >> 4;
                    const int nh = e < 16 ? hi->qs[e] & 0x0F : hi->qs[e - 16] >> 4;
                    qg[(size_t)e * rb + (size_t)(16 * k + i)] = (uint8_t)(nl | nh << 4);
                }
            }
    }
}

void pi_vec_mad_row(const struct pi_weight *w, int64_t r, float a, float *y)
{
    PI_ASSERT(r >= 0 && r < w->rows);
    if (!w->gscale) {
        pi_vec_mad(w->type, pi_weight_row(w, r), a, y, w->cols);
        return;
    }
    const void *row[4] = {pi_weight_row(w, r)};
    const uint16_t *s[4] = {pi_weight_gscale(w, r)};
    const float av[4] = {a};
    pi_vec_madg4(w->type, row, s, av, 1, NULL, y, w->cols);
}

size_t pi_grouped_row_bytes(enum pi_type t, int64_t n)
{
    if (n <= 0 || n % 32 != 0) return 0;
    return t == PI_TYPE_Q4_0 ? (size_t)n / 2 : t == PI_TYPE_Q8_0 ? (size_t)n : 0;
}

void pi_vec_madg4(enum pi_type t, const void *const row[4], const uint16_t *const s[4], const float a[4], int m,
                  const void *const pf[4], float *y, int64_t n)
{
    PI_ASSERT(pi_grouped_row_bytes(t, n) > 0 && m >= 1 && m <= 4);
    pi_vec_madg4_fn f = pi_kernels_active()->vec_madg4[t];
    PI_ASSERT(f != NULL); /* the scalar table has both types, every variant inherits them */
    f(row, s, a, m, pf, y, n);
}

void pi_vec_mad4(enum pi_type t, const void *const row[4], const float a[4], int m, const void *const pf[4], float *y,
                 int64_t n)
{
    check_row(t, n);
    PI_ASSERT(m >= 1 && m <= 4);
    pi_vec_mad4_fn mad4 = pi_kernels_active()->vec_mad4[t];
    if (mad4) {
        mad4(row, a, m, pf, y, n);
        return;
    }
    for (int r = 0; r < m; r++) pi_vec_mad(t, row[r], a[r], y, n);
}
