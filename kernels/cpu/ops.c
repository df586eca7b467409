/*
 * kernels/cpu/ops.c - RMSNorm, RoPE, softmax, attention heads, FFN activations and the neuron-subset
 * FFN kernel (see kernels/cpu/ops.h for the contracts).
 *
 * The neuron kernel is the unit later issues split across devices: neuron i reads gate row i, up row i
 * and down_t row i, all contiguous, so a subset of neurons costs only its own rows. The neuron list is
 * cut into a fixed number of parts by position (not by thread), each part is summed in list order
 * into its own d-vector, and the parts are added to y in part order: the float sums never depend on
 * which thread ran what, so a run's results are bit-for-bit reproducible.
 */
#include "config.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "kernels/cpu/act-impl.h"
#include "kernels/cpu/attn-impl.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"

void pi_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

void pi_rope_table(float *cs, int pos, int n_rot, float base)
{
    for (int i = 0; i < n_rot / 2; i++) {
        double theta = (double)pos * pow((double)base, -2.0 * i / (double)n_rot);
        cs[2 * i] = (float)cos(theta);
        cs[2 * i + 1] = (float)sin(theta);
    }
}

void pi_rope_apply(float *x, int n_head, int head_dim, int n_rot, const float *cs)
{
    for (int h = 0; h < n_head; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < n_rot / 2; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1];
            float x0 = xh[2 * i], x1 = xh[2 * i + 1];
            xh[2 * i] = x0 * c - x1 * s;
            xh[2 * i + 1] = x0 * s + x1 * c;
        }
    }
}

void pi_softmax(float *x, int64_t n)
{
    float max = x[0];
    for (int64_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

/* GCC/Clang vector types: portable SIMD without an ISA-specific build (this file is compiled for the
 * x86-64 baseline, where an 8-lane vector is two SSE registers); unaligned access through memcpy. */
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));

int pi_log_softmax(const float *logits, int n, float *logp)
{
    PI_ASSERT(n >= 1);
    int top = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[top]) top = i;
    const double mx = logits[top];
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((double)logits[i] - mx);
    const double lse = mx + log(sum);
    for (int i = 0; i < n; i++) logp[i] = (float)((double)logits[i] - lse);
    return top;
}

double pi_kl_logp(const float *logp, const float *logq, int n, int *top_p)
{
    double kl = 0.0;
    int top = 0;
    for (int i = 0; i < n; i++) {
        if (logp[i] > logp[top]) top = i;
        kl += exp((double)logp[i]) * ((double)logp[i] - (double)logq[i]);
    }
    if (top_p) *top_p = top;
    return kl;
}

/* y (n) += a * x (n), sixteen lanes per step. (An AVX2 clone measured no faster: the neuron loop is
 * bound by its rows' memory latency and the dequantisation, not by this.) */
static void axpy(float *y, float a, const float *x, int64_t n)
{
    int64_t j = 0;
    v8f va = {a, a, a, a, a, a, a, a};
    for (; j + 16 <= n; j += 16) {
        v8f x0, x1, y0, y1;
        memcpy(&x0, x + j, 32);
        memcpy(&x1, x + j + 8, 32);
        memcpy(&y0, y + j, 32);
        memcpy(&y1, y + j + 8, 32);
        y0 += va * x0;
        y1 += va * x1;
        memcpy(y + j, &y0, 32);
        memcpy(y + j + 8, &y1, 32);
    }
    for (; j < n; j++) y[j] += a * x[j];
}

/* y (n) += x (n), sixteen lanes per step: the same sums, element by element, as the plain loop (which
 * GCC -O2 leaves scalar for want of knowing that y and x do not overlap: 10% of a small layer's time). */
static void add_into(float *y, const float *x, int64_t n)
{
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        v8f x0, x1, y0, y1;
        memcpy(&x0, x + j, 32);
        memcpy(&x1, x + j + 8, 32);
        memcpy(&y0, y + j, 32);
        memcpy(&y1, y + j + 8, 32);
        y0 += x0;
        y1 += x1;
        memcpy(y + j, &y0, 32);
        memcpy(y + j + 8, &y1, 32);
    }
    for (; j < n; j++) y[j] += x[j];
}

/* x (n) . y (n), in four-lane partial sums. */
static float dot_f32(const float *x, const float *y, int64_t n)
{
    int64_t j = 0;
    v4f acc0 = {0, 0, 0, 0}, acc1 = {0, 0, 0, 0};
    for (; j + 8 <= n; j += 8) {
        v4f x0, x1, y0, y1;
        memcpy(&x0, x + j, 16);
        memcpy(&x1, x + j + 4, 16);
        memcpy(&y0, y + j, 16);
        memcpy(&y1, y + j + 4, 16);
        acc0 += x0 * y0;
        acc1 += x1 * y1;
    }
    acc0 += acc1;
    float s = acc0[0] + acc0[1] + acc0[2] + acc0[3];
    for (; j < n; j++) s += x[j] * y[j];
    return s;
}

/* f16 cache rows are widened in chunks through the dispatched (F16C) row converter. */
#define KV_CHUNK 256

static float dot_kv(const float *q, const void *k, enum pi_type t, int hd)
{
    float buf[KV_CHUNK], s = 0.0f;
    if (t == PI_TYPE_F32) return dot_f32(q, k, hd);
    for (int j = 0; j < hd; j += KV_CHUNK) {
        int n = PI_MIN(KV_CHUNK, hd - j);
        pi_dequant_row(PI_TYPE_F16, (const uint16_t *)k + j, buf, n);
        s += dot_f32(q + j, buf, n);
    }
    return s;
}

static void axpy_kv(float *out, float a, const void *v, enum pi_type t, int hd)
{
    float buf[KV_CHUNK];
    if (t == PI_TYPE_F32) {
        axpy(out, a, v, hd);
        return;
    }
    for (int j = 0; j < hd; j += KV_CHUNK) {
        int n = PI_MIN(KV_CHUNK, hd - j);
        pi_dequant_row(PI_TYPE_F16, (const uint16_t *)v + j, buf, n);
        axpy(out + j, a, buf, n);
    }
}

/* The attention kernels of the active kernel variant for this cache type and head_dim
 * (kernels/cpu/attn-impl.h); false: the portable loops below. */
struct attn_simd {
    pi_attn_scores_fn scores;
    pi_attn_mix_fn mix;
    pi_attn_softmax_fn softmax;
};

static bool attn_simd(enum pi_type t, int hd, struct attn_simd *a)
{
#ifdef PI_HAVE_X86_SIMD
    const enum pi_kernel_isa isa = pi_kernels_isa();
    const bool f16 = t == PI_TYPE_F16;
    if (isa >= PI_KERNEL_AVX512 && hd % 16 == 0 && hd <= 256) {
        *a = (struct attn_simd){f16 ? pi_attn_scores_f16_avx512 : pi_attn_scores_f32_avx512,
                                f16 ? pi_attn_mix_f16_avx512 : pi_attn_mix_f32_avx512, pi_attn_softmax_avx512};
        return true;
    }
    if (isa >= PI_KERNEL_AVX2 && hd % 8 == 0 && hd <= 256) {
        *a = (struct attn_simd){f16 ? pi_attn_scores_f16_avx2 : pi_attn_scores_f32_avx2,
                                f16 ? pi_attn_mix_f16_avx2 : pi_attn_mix_f32_avx2, pi_attn_softmax_avx2};
        return true;
    }
#endif
    (void)t, (void)hd, (void)a;
    return false;
}

/* One query through the portable loops. */
static void attn_one(float *out, const float *q, const void *k, const void *v, size_t stride, enum pi_type kv_type,
                     int n_kv, int hd, float scale, float *scores)
{
    for (int t = 0; t < n_kv; t++)
        scores[t] = scale * dot_kv(q, (const char *)k + (size_t)t * stride, kv_type, hd);
    pi_softmax(scores, n_kv);
    memset(out, 0, (size_t)hd * sizeof *out);
    for (int t = 0; t < n_kv; t++) axpy_kv(out, scores[t], (const char *)v + (size_t)t * stride, kv_type, hd);
}

void pi_attn_tile(float *const *out, const float *const *q, const int *n_kv, int n_q, const void *k, const void *v,
                  size_t stride, enum pi_type kv_type, int hd, float scale, float *scores)
{
    PI_ASSERT(kv_type == PI_TYPE_F32 || kv_type == PI_TYPE_F16);
    PI_ASSERT(n_q >= 1 && hd >= 1);
    struct attn_simd a;
    if (!attn_simd(kv_type, hd, &a)) {
        for (int j = 0; j < n_q; j++) {
            PI_ASSERT(n_kv[j] >= 1);
            attn_one(out[j], q[j], k, v, stride, kv_type, n_kv[j], hd, scale, scores);
        }
        return;
    }
    /* calls of up to PI_ATTN_GROUP_MAX queries: scores of every query against the rows up to the
     * call's largest count (each score is one query's dot with one key: its bits do not depend on the
     * others), each query's softmax over its own count, the values mixed up to each query's count */
    for (int j0 = 0; j0 < n_q; j0 += PI_ATTN_GROUP_MAX) {
        const int g = PI_MIN(PI_ATTN_GROUP_MAX, n_q - j0);
        int hi = 0;
        for (int j = j0; j < j0 + g; j++) {
            PI_ASSERT(n_kv[j] >= 1);
            hi = PI_MAX(hi, n_kv[j]);
        }
        a.scores(scores, (size_t)hi, q + j0, g, k, stride, hi, hd, scale);
        for (int j = 0; j < g; j++) a.softmax(scores + (size_t)j * hi, n_kv[j0 + j]);
        a.mix(out + j0, scores, (size_t)hi, n_kv + j0, g, v, stride, hd);
    }
}

void pi_attn_group(float *out, const float *q, int group, const void *k, const void *v, size_t stride,
                   enum pi_type kv_type, int n_kv, int hd, float scale, float *scores)
{
    PI_ASSERT(n_kv > 0 && group >= 1);
    float *o[PI_ATTN_GROUP_MAX];
    const float *qs[PI_ATTN_GROUP_MAX];
    int nk[PI_ATTN_GROUP_MAX];
    for (int j0 = 0; j0 < group; j0 += PI_ATTN_GROUP_MAX) {
        const int g = PI_MIN(PI_ATTN_GROUP_MAX, group - j0);
        for (int j = 0; j < g; j++) {
            o[j] = out + (size_t)(j0 + j) * hd;
            qs[j] = q + (size_t)(j0 + j) * hd;
            nk[j] = n_kv;
        }
        pi_attn_tile(o, qs, nk, g, k, v, stride, kv_type, hd, scale, scores);
    }
}

void pi_attn_head(float *out, const float *q, const void *k, const void *v, size_t stride,
                  enum pi_type kv_type, int n_kv, int hd, float scale, float *scores)
{
    pi_attn_group(out, q, 1, k, v, stride, kv_type, n_kv, hd, scale, scores);
}

static inline float silu(float g) { return g / (1.0f + expf(-g)); }
static inline float relu(float g) { return g > 0.0f ? g : 0.0f; }

/* The SiLU-gated activation of the active kernel variant (kernels/cpu/act-impl.h); false: the portable
 * loops (libm's expf). */
static bool silu_simd(pi_ffn_silu_fn *act, pi_ffn_silu_min_fn *act_min)
{
#ifdef PI_HAVE_X86_SIMD
    const enum pi_kernel_isa isa = pi_kernels_isa();
    if (isa >= PI_KERNEL_AVX512) {
        *act = pi_ffn_silu_avx512, *act_min = pi_ffn_silu_min_avx512;
        return true;
    }
    if (isa >= PI_KERNEL_AVX2) {
        *act = pi_ffn_silu_avx2, *act_min = pi_ffn_silu_min_avx2;
        return true;
    }
#endif
    (void)act, (void)act_min;
    return false;
}

void pi_ffn_act(enum pi_ffn_act act, float *g, const float *u, int64_t n)
{
    pi_ffn_silu_fn sfn;
    pi_ffn_silu_min_fn smin;
    switch (act) {
    case PI_FFN_ACT_SILU:
        if (silu_simd(&sfn, &smin)) sfn(g, u, n);
        else
            for (int64_t i = 0; i < n; i++) g[i] = silu(g[i]) * u[i];
        break;
    case PI_FFN_ACT_RELU:
        for (int64_t i = 0; i < n; i++) g[i] = relu(g[i]) * u[i];
        break;
    case PI_FFN_ACT_DRELU:
        for (int64_t i = 0; i < n; i++) g[i] = relu(g[i]) * relu(u[i]);
        break;
    default:
        PI_ASSERT(!"unresolved FFN activation");
    }
}

int64_t pi_ffn_act_min(enum pi_ffn_act act, const float *gate_min, float *g, const float *u, int64_t n, int64_t ff)
{
    PI_ASSERT(act == PI_FFN_ACT_SILU || act == PI_FFN_ACT_RELU || act == PI_FFN_ACT_DRELU);
    pi_ffn_silu_fn sfn;
    pi_ffn_silu_min_fn smin;
    if (act == PI_FFN_ACT_SILU && silu_simd(&sfn, &smin)) return smin(gate_min, g, u, n, ff);
    int64_t kept = 0;
    for (int64_t i = 0; i < n * ff; i++) {
        if (pi_ffn_gate_skip(act, gate_min[i % ff], g[i])) {
            g[i] = 0.0f;
            continue;
        }
        float a = act == PI_FFN_ACT_SILU ? silu(g[i]) * u[i] : act == PI_FFN_ACT_RELU ? g[i] * u[i] : g[i] * relu(u[i]);
        g[i] = a;
        kept += a != 0.0f || act == PI_FFN_ACT_SILU;
    }
    return kept;
}

/* ---------------------------------------------------------------- neuron-subset FFN */

/* The neuron list is cut into about FFN_PARTS parts, rounded up to a multiple of the pool's threads so
 * that equal parts fill equal rounds (16 parts on 5 threads would leave 4 threads idle in the last
 * round): enough for dynamic balance, few enough that clearing and adding the partial vectors costs
 * little next to the rows (16 x d floats, 128 KiB at d = 2048). A part holds at least MIN_PART
 * neurons, so short lists use fewer parts. */
#define FFN_PARTS 16
#define MIN_PART 32
/* Tokens one thread takes together in pi_ffn_neurons_batch: a weight row is read once per group and
 * dotted with the group's tokens from L1 (four at a time where the type has a 4-token kernel). */
#define FFN_GROUP 16

struct pi_ffn_work {
    int64_t d;
    int n_threads;
    int max_parts;      /* FFN_PARTS + n_threads: enough for any pool of up to n_threads */
    size_t xq_bytes;    /* capacity of each quantised-input buffer */
    void *xq_gate;      /* x quantised for the gate rows' dot type */
    void *xq_up;        /* x quantised for the up rows' dot type (== xq_gate when the same) */
    float *acc;         /* (max_parts, d) per-part partial sums */
    float *row;         /* (n_threads, d) per-thread widened down_t row */
    int64_t *active;    /* (max_parts) contributing neurons per part */
    /* pi_ffn_neurons_batch (after pi_ffn_work_reserve; 0 / NULL before) */
    int64_t cap_tokens; /* tokens whose quantised inputs fit below */
    uint8_t *xqb_gate;  /* (cap_tokens, xq_bytes) */
    uint8_t *xqb_up;    /* (cap_tokens, xq_bytes) */
    float *bacc;        /* (n_threads, FFN_GROUP, d) per-thread partial sums of a token group */
    int64_t *bactive;   /* (n_threads) contributing (neuron, token) pairs per thread */
};

pi_ffn_work_t *pi_ffn_work_new(int64_t d, int n_threads)
{
    pi_ffn_work_t *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->d = d;
    w->n_threads = n_threads < 1 ? 1 : n_threads;
    w->max_parts = FFN_PARTS + w->n_threads;
    /* the widest activation row is f32 (F32/F16/BF16 weights take f32 activations) */
    w->xq_bytes = (size_t)d * sizeof(float) + 64;
    size_t acc_bytes = (size_t)w->max_parts * (size_t)d * sizeof(float);
    size_t row_bytes = (size_t)w->n_threads * (size_t)d * sizeof(float);
    if (posix_memalign(&w->xq_gate, 64, w->xq_bytes) != 0) w->xq_gate = NULL;
    if (posix_memalign(&w->xq_up, 64, w->xq_bytes) != 0) w->xq_up = NULL;
    if (posix_memalign((void **)&w->acc, 64, acc_bytes) != 0) w->acc = NULL;
    if (posix_memalign((void **)&w->row, 64, row_bytes) != 0) w->row = NULL;
    w->active = calloc((size_t)w->max_parts, sizeof *w->active);
    if (!w->xq_gate || !w->xq_up || !w->acc || !w->row || !w->active) pi_ffn_work_destroy(&w);
    return w;
}

void pi_ffn_work_destroy(pi_ffn_work_t **pw)
{
    pi_ffn_work_t *w = pw ? *pw : NULL;
    if (!w) return;
    free(w->xq_gate);
    free(w->xq_up);
    free(w->acc);
    free(w->row);
    free(w->active);
    free(w->xqb_gate);
    free(w->xqb_up);
    free(w->bacc);
    free(w->bactive);
    free(w);
    *pw = NULL;
}

int pi_ffn_work_reserve(pi_ffn_work_t *w, int64_t max_tokens)
{
    if (max_tokens < 0) return -PI_ERR_RANGE;
    if (max_tokens <= w->cap_tokens) return 0;
    size_t xb, ab;
    if (!pi_size_mul((size_t)max_tokens, w->xq_bytes, &xb) ||
        !pi_size_mul((size_t)w->n_threads * FFN_GROUP, (size_t)w->d * sizeof(float), &ab))
        return -PI_ERR_RANGE;
    uint8_t *g = NULL, *u = NULL;
    float *acc = NULL;
    int64_t *act = calloc((size_t)w->n_threads, sizeof *act);
    if (posix_memalign((void **)&g, 64, xb) != 0) g = NULL;
    if (posix_memalign((void **)&u, 64, xb) != 0) u = NULL;
    if (posix_memalign((void **)&acc, 64, ab) != 0) acc = NULL;
    if (!g || !u || !acc || !act) {
        free(g), free(u), free(acc), free(act);
        return -PI_ERR_NOMEM;
    }
    free(w->xqb_gate), free(w->xqb_up), free(w->bacc), free(w->bactive);
    w->xqb_gate = g, w->xqb_up = u, w->bacc = acc, w->bactive = act;
    w->cap_tokens = max_tokens;
    return 0;
}

struct neuron_task {
    pi_ffn_work_t *w;
    const struct pi_layer *L;
    enum pi_ffn_act act;
    const float *gate_min; /* per row of L, or NULL */
    const void *xq_up;
    const int32_t *idx;
    int64_t n_idx;
    int n_parts;
};

/* Whether the active kernels have a fused SIMD y += a * row for down_t's type (pi_vec_mad: F16 and
 * Q8_0 on AVX2 and up). It gives the same floats as widening the row and the axpy below (multiply,
 * then add, each rounded), and on the 2-core Zen 4 it made the 1B-class CPU worker's FFN about 1.3x
 * faster than that pair, whose axpy is built for the x86-64 baseline (SSE). */
static bool fused_mad(const struct pi_weight *dt) { return pi_kernels_active()->vec_mad[dt->type] != NULL; }

/* acc (d) += a[j] * grouped down_t row r[j] for j < m (1..4; lib/weights.h's gscale), one pass over acc
 * (pi_vec_madg4), prefetching the grouped rows pf[0..m) (NULL: none). */
static void add_grouped_rows(float *acc, const struct pi_weight *dt, const int32_t *r, const float *a, int m,
                             const int32_t *pf)
{
    const void *rows[4], *next[4];
    const uint16_t *sc[4];
    for (int j = 0; j < m; j++) rows[j] = pi_weight_row(dt, r[j]), sc[j] = pi_weight_gscale(dt, r[j]);
    if (pf)
        for (int j = 0; j < m; j++) next[j] = pi_weight_row(dt, pf[j]);
    pi_vec_madg4(dt->type, rows, sc, a, m, pf ? next : NULL, acc, dt->cols);
}

/* acc (d) += a * down_t row r: grouped rows through their kernel; fused where fused_mad, else widened
 * first into row (d) through the dispatched dequantiser unless it is f32, then the axpy. */
static void add_down_row(float *acc, float *row, const struct pi_weight *dt, int64_t r, float a)
{
    if (dt->gscale) {
        pi_vec_mad_row(dt, r, a, acc);
        return;
    }
    if (fused_mad(dt)) {
        pi_vec_mad(dt->type, pi_weight_row(dt, r), a, acc, dt->cols);
        return;
    }
    const float *src = pi_weight_row(dt, r);
    if (dt->type != PI_TYPE_F32) {
        pi_dequant_row(dt->type, src, row, dt->cols);
        src = row;
    }
    axpy(acc, a, src, dt->cols);
}

/* Ask for a weight row ahead of its use, into L2 (prefetcht1). Rows of a sparse neuron set are not
 * contiguous, so the hardware prefetcher, which follows streams, starts cold on each one (dequantising
 * every other row of a Q8_0 matrix measured 5x slower than the same number of consecutive rows).
 * Not prefetchnta: a non-temporal prefetch fills only a small part of L1 (about one way), so the rows
 * asked for two neurons ahead (2 x 2.9 KiB of Q4_0 gate at d = 5120, 10 KiB per f16 down row) evicted
 * one another before use and were read twice; with it the 13B-shaped ReLU layer ran at 2.1-4.3 GB/s on
 * one thread against 4.3-7.6 with this (doc/kernels.md, "The neuron-wise path"). Consecutive rows are
 * prefetched too: leaving them to the hardware prefetcher saved 7% with the rows in cache but lost 10%
 * reading them from memory (7.4-7.6 against 8.2-8.7 GB/s over every neuron of that layer). */
static void prefetch_row(const struct pi_weight *w, int64_t r)
{
    const char *p = pi_weight_row(w, r);
    for (size_t off = 0; off < w->row_bytes; off += 64) __builtin_prefetch(p + off, 0, 2);
}

/* out[0..m) = rows r[0..m) of w (m = 1 or 2; their first d elements) dotted with xq: two at once
 * through the variant's vec_dot2 where the type has one (the activations prepared once for both
 * rows), the same floats as pi_vec_dot. */
static void dots_rows(const struct pi_weight *w, const int32_t *r, int m, const void *xq, int64_t d, float *out)
{
    pi_vec_dot2_fn d2 = pi_kernels_active()->vec_dot2[w->type];
    if (m == 2 && d2) {
        d2(pi_weight_row(w, r[0]), pi_weight_row(w, r[1]), xq, out, d);
        return;
    }
    for (int j = 0; j < m; j++) out[j] = pi_vec_dot(w->type, pi_weight_row(w, r[j]), xq, d);
}

/* out[0..m) = rows r[0..m) of w (m = 1..4) dotted with xq, the floats of pi_vec_dot. Four at once
 * through the variant's vec_dot4r, which prefetches the rows pf[0..4) (NULL: none) as it reads these,
 * spread over its arithmetic; otherwise pairs through dots_rows, the pf rows asked for in a burst
 * first. */
static void dots_quad(const struct pi_weight *w, const int32_t *r, int m, const int32_t *pf, const void *xq, int64_t d,
                      float *out)
{
    pi_vec_dot4r_fn d4 = pi_kernels_active()->vec_dot4r[w->type];
    if (m == 4 && d4) {
        const void *rows[4], *next[4];
        for (int j = 0; j < 4; j++) rows[j] = pi_weight_row(w, r[j]);
        if (pf)
            for (int j = 0; j < 4; j++) next[j] = pi_weight_row(w, pf[j]);
        d4(rows, pf ? next : NULL, xq, out, d);
        return;
    }
    for (int j = 0; pf && j < 4; j++) prefetch_row(w, pf[j]);
    for (int j = 0; j < m; j += 2) dots_rows(w, r + j, PI_MIN(2, m - j), xq, d, out + j);
}

/* acc (d) += a[j] * down_t row r[j] for j < m (1..4), in that order: one pass over acc through
 * pi_vec_mad4 where the variant has a kernel for the type (which prefetches the rows pf[0..m) as it
 * goes; NULL: none), else add_down_row per row (row (d) is its scratch). The same floats either way. */
static void add_down_rows(float *acc, float *row, const struct pi_weight *dt, const int32_t *r, const float *a, int m,
                          const int32_t *pf)
{
    if (dt->gscale) {
        add_grouped_rows(acc, dt, r, a, m, pf);
        return;
    }
    if (pi_kernels_active()->vec_mad4[dt->type]) {
        const void *rows[4], *next[4];
        for (int j = 0; j < m; j++) rows[j] = pi_weight_row(dt, r[j]);
        if (pf)
            for (int j = 0; j < m; j++) next[j] = pi_weight_row(dt, pf[j]);
        pi_vec_mad4(dt->type, rows, a, m, pf ? next : NULL, acc, dt->cols);
        return;
    }
    for (int j = 0; pf && j < m; j++) prefetch_row(dt, pf[j]);
    for (int j = 0; j < m; j++) add_down_row(acc, row, dt, r[j], a[j]);
}

/* The neurons a part has found active (gate not skipped) and not yet added: a ring of LIVE_RING, the
 * oldest at tail. */
#define LIVE_RING 16 /* a power of two above the most pending: 2 * 4 - 1 waiting plus a gate quad's 4 */

struct live_ring {
    int32_t id[LIVE_RING];
    float gate[LIVE_RING];
    int64_t head, tail; /* entries [tail, head), index & (LIVE_RING - 1) */
};

/* The next m (up to 4) pending neurons from position at, each repeated past the last (n of them
 * pending from at): the prefetch targets of a quad. */
static void ring_next(const struct live_ring *q, int64_t at, int64_t n, int32_t *out)
{
    for (int j = 0; j < 4; j++) out[j] = q->id[(at + PI_MIN(j, n - 1)) & (LIVE_RING - 1)];
}

/* Up and down rows of the m (1..4) oldest pending neurons of q, then they leave the ring: their up
 * rows dotted with xq_up (the next pending neurons' up and down rows prefetched meanwhile, when there
 * are any), their activations, and the down rows of those not skipped added to acc in list order.
 * Returns the neurons added. */
static int64_t up_down(const struct neuron_task *t, struct live_ring *q, int m, float *acc, float *row)
{
    const struct pi_layer *L = t->L;
    int32_t id[4] = {0}, next[4], keep[4];
    float u[4], a[4];
    for (int j = 0; j < m; j++) id[j] = q->id[(q->tail + j) & (LIVE_RING - 1)];
    const int64_t rest = q->head - q->tail - m;
    if (rest > 0) ring_next(q, q->tail + m, rest, next);
    dots_quad(&L->ffn_up, id, m, rest > 0 ? next : NULL, t->xq_up, t->w->d, u);
    int n_keep = 0;
    for (int j = 0; j < m; j++) {
        const float g = q->gate[(q->tail + j) & (LIVE_RING - 1)];
        if (t->act == PI_FFN_ACT_SILU) a[n_keep] = g / (1.0f + expf(-g)) * u[j];
        else if (t->act == PI_FFN_ACT_RELU) a[n_keep] = g * u[j];
        else if (u[j] > 0.0f) a[n_keep] = g * u[j];
        else continue;
        keep[n_keep++] = id[j];
    }
    q->tail += m;
    if (n_keep > 0) add_down_rows(acc, row, &L->ffn_down_t, keep, a, n_keep, rest > 0 ? next : NULL);
    return n_keep;
}

/* acc (d) += the neurons idx[begin, end), their down rows in list order: the gate rows four at a time
 * (dots_quad, prefetching the next four listed neurons' gate rows as it reads these), each neuron
 * whose gate is not skipped queued in the ring; whenever eight are queued, the oldest four's up and
 * down rows (up_down, prefetching the next four's as it reads these). So the rows of the gate stream
 * and of the up/down stream are asked for one group ahead, from inside the arithmetic, and the two
 * streams interleave in quads. row (d) is scratch. Returns the neurons added. */
static int64_t neurons_into(const struct neuron_task *t, int64_t begin, int64_t end, float *acc, float *row)
{
    const struct pi_layer *L = t->L;
    const int64_t d = t->w->d;
    const int32_t *idx = t->idx;
    struct live_ring q = {.head = 0, .tail = 0};
    int64_t active = 0;
    for (int64_t k = begin; k < end; k += 4) {
        const int m = (int)PI_MIN(4, end - k);
        int32_t next[4];
        float g[4];
        for (int j = 0; j < m; j++) PI_ASSERT(idx[k + j] >= 0 && idx[k + j] < L->ffn_gate.rows);
        for (int j = 0; j < 4 && k + 4 < end; j++) {
            next[j] = idx[PI_MIN(k + 4 + j, end - 1)];
            PI_ASSERT(next[j] >= 0 && next[j] < L->ffn_gate.rows);
        }
        dots_quad(&L->ffn_gate, idx + k, m, k + 4 < end ? next : NULL, t->w->xq_gate, d, g);
        for (int j = 0; j < m; j++) {
            const int32_t i = idx[k + j];
            if (pi_ffn_gate_skip(t->act, t->gate_min ? t->gate_min[i] : 0.0f, g[j])) continue;
            q.id[q.head & (LIVE_RING - 1)] = i;
            q.gate[q.head++ & (LIVE_RING - 1)] = g[j];
        }
        while (q.head - q.tail >= 8) active += up_down(t, &q, 4, acc, row);
    }
    while (q.head > q.tail) active += up_down(t, &q, (int)PI_MIN(4, q.head - q.tail), acc, row);
    return active;
}

/* Parts [begin, end) of the neuron list: part p is idx[p * n / n_parts, (p + 1) * n / n_parts), summed
 * from zero into its own acc row, whichever thread runs it. */
static void part_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct neuron_task *t = ctx;
    int64_t d = t->w->d, n = t->n_idx;
    float *row = t->w->row + (size_t)thread * (size_t)d;
    PI_ASSERT(thread >= 0 && thread < t->w->n_threads);
    for (int64_t p = begin; p < end; p++) {
        float *acc = t->w->acc + (size_t)p * (size_t)d;
        memset(acc, 0, (size_t)d * sizeof(float));
        t->w->active[p] = neurons_into(t, p * n / t->n_parts, (p + 1) * n / t->n_parts, acc, row);
    }
}

/* y += the parts' sums, in part order, split by columns over the pool: each element gets the same
 * additions in the same order whichever thread does them. Done by the caller alone, this was 16 to 32
 * parts x d floats read by one thread after the others had finished (at d = 5120 and 30 parts, 600
 * KiB: tens of microseconds a layer). */
#define SUM_COLS 64 /* columns per index of the pool loop */
#define SUM_GRAIN 8 /* indices per chunk at least: 512 columns, 2 KiB of each part */

struct sum_task {
    const pi_ffn_work_t *w;
    int n_parts;
    float *y; /* (d) */
};

static void sum_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    const struct sum_task *t = ctx;
    const int64_t d = t->w->d, c0 = begin * SUM_COLS, c1 = PI_MIN(d, end * SUM_COLS);
    (void)thread;
    for (int p = 0; p < t->n_parts; p++) add_into(t->y + c0, t->w->acc + (size_t)p * (size_t)d + c0, c1 - c0);
}

/* The part count depends only on the list length and the pool size. */
static int ffn_parts(int64_t n_idx, int n_threads)
{
    int per_thread = (FFN_PARTS + n_threads - 1) / n_threads;
    return (int)PI_MIN((int64_t)n_threads * per_thread, (n_idx + MIN_PART - 1) / MIN_PART);
}

static void check_layer(const pi_ffn_work_t *w, const struct pi_layer *L, enum pi_ffn_act act, int n_threads)
{
    int64_t d = w->d;
    PI_ASSERT(L->ffn_down_t.data && L->ffn_gate.cols == d && L->ffn_down_t.cols == d);
    PI_ASSERT(n_threads <= w->n_threads);
    PI_ASSERT(act == PI_FFN_ACT_SILU || act == PI_FFN_ACT_RELU || act == PI_FFN_ACT_DRELU);
    PI_ASSERT(pi_act_row_bytes(L->ffn_gate.type, d) <= w->xq_bytes);
    PI_ASSERT(pi_act_row_bytes(L->ffn_up.type, d) <= w->xq_bytes);
}

int64_t pi_ffn_neurons(pi_pool_t *pool, pi_ffn_work_t *w, const struct pi_layer *L, enum pi_ffn_act act,
                       const float *gate_min, const float *x, const int32_t *idx, int64_t n_idx, float *y)
{
    int64_t d = w->d;
    int n_threads = pool ? pi_pool_size(pool) : 1;
    check_layer(w, L, act, n_threads);
    pi_quantize_act(L->ffn_gate.type, x, w->xq_gate, d);
    const void *xq_up = w->xq_gate;
    if (pi_vec_dot_type(L->ffn_up.type) != pi_vec_dot_type(L->ffn_gate.type)) {
        pi_quantize_act(L->ffn_up.type, x, w->xq_up, d);
        xq_up = w->xq_up;
    }
    int n_parts = ffn_parts(n_idx, n_threads);
    if (n_parts < 1) return 0;
    PI_ASSERT(n_parts <= w->max_parts);
    struct neuron_task task = {w, L, act, gate_min, xq_up, idx, n_idx, n_parts};
    pi_pool_for(pool, n_parts, 1, part_range, &task);
    struct sum_task sum = {w, n_parts, y};
    pi_pool_for(pool, (d + SUM_COLS - 1) / SUM_COLS, SUM_GRAIN, sum_range, &sum);
    int64_t active = 0;
    for (int p = 0; p < n_parts; p++) active += w->active[p];
    return active;
}

/* ---------------------------------------------------------------- the same over a batch of tokens */

struct batch_task {
    pi_ffn_work_t *w;
    const struct pi_layer *L;
    enum pi_ffn_act act;
    const float *gate_min; /* per row of L, or NULL */
    const uint8_t *xq_gate, *xq_up; /* (n, xrb_gate) and (n, xrb_up) */
    size_t xrb_gate, xrb_up;
    const int32_t *idx;
    int64_t n_idx, n;
    int n_parts;
    float *Y; /* (n, d) */
};

/* out[k] = the dot products of weight row `wrow` with tokens [t0, t0 + nt) of xq (row stride xrb):
 * four at a time through vec_dot4 where the type has one. Each equals pi_vec_dot of that token (the
 * 4-token kernels return the same floats, kernels/cpu/dispatch.h). */
static void dots(enum pi_type t, const void *wrow, const uint8_t *xq, size_t xrb, int64_t nt, int64_t d, float *out)
{
    pi_vec_dot4_fn d4 = pi_kernels_active()->vec_dot4[t];
    int64_t k = 0;
    for (; d4 && k + 4 <= nt; k += 4) d4(wrow, xq + (size_t)k * xrb, xrb, out + k, d);
    for (; k < nt; k++) out[k] = pi_vec_dot(t, wrow, xq + (size_t)k * xrb, d);
}

/* dots for two weight rows at wrow and wrow + ws at once (out0, out1), through vec_dot8 where the type
 * has one: the tokens' activations are loaded once for both rows; the same floats as two dots. */
static void dots2(enum pi_type t, const void *wrow, size_t ws, const uint8_t *xq, size_t xrb, int64_t nt, int64_t d,
                  float *out0, float *out1)
{
    pi_vec_dot8_fn d8 = pi_kernels_active()->vec_dot8[t];
    int64_t k = 0;
    for (; d8 && k + 4 <= nt; k += 4) {
        float o[8];
        d8(wrow, ws, xq + (size_t)k * xrb, xrb, o, d);
        memcpy(out0 + k, o, 4 * sizeof(float));
        memcpy(out1 + k, o + 4, 4 * sizeof(float));
    }
    if (k < nt) {
        dots(t, wrow, xq + (size_t)k * xrb, xrb, nt - k, d, out0 + k);
        dots(t, (const uint8_t *)wrow + ws, xq + (size_t)k * xrb, xrb, nt - k, d, out1 + k);
    }
}

/* Up to four neurons of a token group waiting for their down rows: neuron id[q]'s activation for token
 * j is a[q][j], added only where on[q][j]. */
struct down_quad {
    int32_t id[4];
    float a[4][FFN_GROUP];
    bool on[4][FFN_GROUP];
    int n;
};

/* Queue neuron i with its gate and up values g, u (nt) for nt tokens: its activation for each token
 * the per-token kernel would add (the same skip rule and formulas as up_down). dq must have room. */
static void down_quad_add(struct down_quad *dq, enum pi_ffn_act act, float gmin, int32_t i, const float *g,
                          const float *u, int64_t nt)
{
    for (int64_t j = 0; j < nt; j++) {
        dq->on[dq->n][j] = !pi_ffn_gate_skip(act, gmin, g[j]) && (act != PI_FFN_ACT_DRELU || u[j] > 0.0f);
        if (dq->on[dq->n][j])
            dq->a[dq->n][j] = act == PI_FFN_ACT_SILU ? g[j] / (1.0f + expf(-g[j])) * u[j] : g[j] * u[j];
    }
    dq->id[dq->n++] = i;
}

/* acc (nt, d) += the waiting neurons' down rows: for each token, those on for it, in list order, in
 * one pi_vec_mad4 pass over the token's accumulator (the floats of one pi_vec_mad per pair, in the same
 * order). Empties dq; returns the (neuron, token) pairs added. */
static int64_t down_quad_flush(struct down_quad *dq, const struct pi_weight *dt, int64_t nt, float *acc)
{
    const int64_t d = dt->cols;
    int64_t added = 0;
    for (int64_t j = 0; j < nt && dq->n > 0; j++) {
        const void *rows[4];
        const uint16_t *sc[4];
        float a[4];
        int m = 0;
        for (int q = 0; q < dq->n; q++)
            if (dq->on[q][j]) {
                rows[m] = pi_weight_row(dt, dq->id[q]), a[m] = dq->a[q][j];
                sc[m++] = dt->gscale ? pi_weight_gscale(dt, dq->id[q]) : NULL;
            }
        if (m > 0 && dt->gscale) pi_vec_madg4(dt->type, rows, sc, a, m, NULL, acc + (size_t)j * (size_t)d, d);
        else if (m > 0) pi_vec_mad4(dt->type, rows, a, m, NULL, acc + (size_t)j * (size_t)d, d);
        added += m;
    }
    dq->n = 0;
    return added;
}

/* Token groups [begin, end): for each group and each part in order, the part's neurons are summed in
 * list order into one accumulator per token, which is then added to the token's output row: the
 * operations pi_ffn_neurons does for each token, in the same order. Where the down rows' type has a
 * vec_mad4, they wait in fours (down_quad) and each token's accumulator takes them in one pass. */
static void group_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    const struct batch_task *t = ctx;
    const struct pi_layer *L = t->L;
    const int64_t d = t->w->d;
    float *row = t->w->row + (size_t)thread * (size_t)d;
    float *acc = t->w->bacc + (size_t)thread * FFN_GROUP * (size_t)d;
    PI_ASSERT(thread >= 0 && thread < t->w->n_threads);
    int64_t active = 0;
    float g[FFN_GROUP], u[FFN_GROUP], g_next[FFN_GROUP];
    const bool pairs = pi_kernels_active()->vec_dot8[L->ffn_gate.type] != NULL;
    /* grouped rows always go in fours: their kernel (pi_vec_madg4) exists for every variant */
    const bool quads = L->ffn_down_t.gscale || pi_kernels_active()->vec_mad4[L->ffn_down_t.type] != NULL;
    struct down_quad dq = {.n = 0};
    for (int64_t gi = begin; gi < end; gi++) {
        const int64_t t0 = gi * FFN_GROUP, nt = PI_MIN((int64_t)FFN_GROUP, t->n - t0);
        const uint8_t *xg = t->xq_gate + (size_t)t0 * t->xrb_gate, *xu = t->xq_up + (size_t)t0 * t->xrb_up;
        for (int p = 0; p < t->n_parts; p++) {
            memset(acc, 0, (size_t)nt * (size_t)d * sizeof(float));
            const int64_t k0 = p * t->n_idx / t->n_parts, k1 = (p + 1) * t->n_idx / t->n_parts;
            bool have_next = false; /* g_next holds neuron idx[k]'s gates (the second row of a pair) */
            for (int64_t k = k0; k < k1; k++) {
                const int32_t i = t->idx[k];
                PI_ASSERT(i >= 0 && i < L->ffn_gate.rows);
                if (k + 1 < k1) {
                    prefetch_row(&L->ffn_gate, t->idx[k + 1]);
                    prefetch_row(&L->ffn_up, t->idx[k + 1]);
                }
                if (have_next) {
                    memcpy(g, g_next, (size_t)nt * sizeof(float));
                    have_next = false;
                } else if (pairs && k + 1 < k1 && t->idx[k + 1] == i + 1 && i + 1 < L->ffn_gate.rows) {
                    /* the next neuron's gate row follows this one's: both at once (vec_dot8) */
                    dots2(L->ffn_gate.type, pi_weight_row(&L->ffn_gate, i), L->ffn_gate.row_bytes, xg, t->xrb_gate, nt, d,
                          g, g_next);
                    have_next = true;
                } else {
                    dots(L->ffn_gate.type, pi_weight_row(&L->ffn_gate, i), xg, t->xrb_gate, nt, d, g);
                }
                const float gmin = t->gate_min ? t->gate_min[i] : 0.0f;
                bool any = false; /* as the per-token kernel (a NaN gate is added, as NaN) */
                for (int64_t j = 0; !any && j < nt; j++) any = !pi_ffn_gate_skip(t->act, gmin, g[j]);
                if (!any) continue; /* no token has anything to add */
                prefetch_row(&L->ffn_down_t, i);
                dots(L->ffn_up.type, pi_weight_row(&L->ffn_up, i), xu, t->xrb_up, nt, d, u);
                if (quads) { /* this neuron's activations wait with up to three others for one pass */
                    down_quad_add(&dq, t->act, gmin, i, g, u, nt);
                    if (dq.n == 4) active += down_quad_flush(&dq, &L->ffn_down_t, nt, acc);
                    continue;
                }
                const float *src = pi_weight_row(&L->ffn_down_t, i);
                const bool fused = fused_mad(&L->ffn_down_t);
                bool widened = L->ffn_down_t.type == PI_TYPE_F32;
                for (int64_t j = 0; j < nt; j++) {
                    float a;
                    if (pi_ffn_gate_skip(t->act, gmin, g[j])) continue;
                    if (t->act == PI_FFN_ACT_SILU) a = g[j] / (1.0f + expf(-g[j])) * u[j];
                    else if (t->act == PI_FFN_ACT_RELU) a = g[j] * u[j];
                    else if (u[j] > 0.0f) a = g[j] * u[j];
                    else continue;
                    if (fused) { /* as add_down_row */
                        pi_vec_mad(L->ffn_down_t.type, src, a, acc + (size_t)j * (size_t)d, d);
                        active++;
                        continue;
                    }
                    if (!widened) {
                        pi_dequant_row(L->ffn_down_t.type, src, row, d);
                        src = row;
                        widened = true;
                    }
                    axpy(acc + (size_t)j * (size_t)d, a, src, d);
                    active++;
                }
            }
            active += down_quad_flush(&dq, &L->ffn_down_t, nt, acc);
            for (int64_t j = 0; j < nt; j++) add_into(t->Y + (size_t)(t0 + j) * (size_t)d, acc + (size_t)j * (size_t)d, d);
        }
    }
    t->w->bactive[thread] += active;
}

int64_t pi_ffn_neurons_batch(pi_pool_t *pool, pi_ffn_work_t *w, const struct pi_layer *L, enum pi_ffn_act act,
                             const float *gate_min, const float *X, int64_t n, const int32_t *idx, int64_t n_idx, float *Y)
{
    const int64_t d = w->d;
    const int n_threads = pool ? pi_pool_size(pool) : 1;
    int64_t active = 0;
    /* Fewer groups than threads would leave threads idle where the per-token kernel splits the
     * neurons among all of them; without reserved buffers there is nowhere to put the batch. */
    if (n < (int64_t)FFN_GROUP * n_threads || w->cap_tokens < FFN_GROUP) {
        for (int64_t t = 0; t < n; t++)
            active += pi_ffn_neurons(pool, w, L, act, gate_min, X + (size_t)t * (size_t)d, idx, n_idx, Y + (size_t)t * (size_t)d);
        return active;
    }
    check_layer(w, L, act, n_threads);
    const int n_parts = ffn_parts(n_idx, n_threads);
    if (n_parts < 1) return 0;
    const size_t xrb_gate = pi_act_row_bytes(L->ffn_gate.type, d), xrb_up = pi_act_row_bytes(L->ffn_up.type, d);
    const bool same = pi_vec_dot_type(L->ffn_up.type) == pi_vec_dot_type(L->ffn_gate.type);
    /* chunks of at most cap_tokens tokens (the quantised inputs' room), whole groups but the last */
    const int64_t chunk = w->cap_tokens / FFN_GROUP * FFN_GROUP;
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        const int64_t nc = PI_MIN(chunk, n - c0);
        for (int64_t t = 0; t < nc; t++) {
            const float *x = X + (size_t)(c0 + t) * (size_t)d;
            pi_quantize_act(L->ffn_gate.type, x, w->xqb_gate + (size_t)t * xrb_gate, d);
            if (!same) pi_quantize_act(L->ffn_up.type, x, w->xqb_up + (size_t)t * xrb_up, d);
        }
        struct batch_task task = {w, L, act, gate_min, w->xqb_gate, same ? w->xqb_gate : w->xqb_up, xrb_gate, same ? xrb_gate : xrb_up,
                                  idx, n_idx, nc, n_parts, Y + (size_t)c0 * (size_t)d};
        memset(w->bactive, 0, (size_t)w->n_threads * sizeof *w->bactive);
        pi_pool_for(pool, (nc + FFN_GROUP - 1) / FFN_GROUP, 1, group_range, &task);
        for (int i = 0; i < w->n_threads; i++) active += w->bactive[i];
    }
    return active;
}
