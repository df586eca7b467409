/*
 * coordinator/bench-kernels.c - pi-bench --kernels matvec|matmul|neurons|attention: how close the CPU kernels come to
 * this machine's memory bandwidth (coordinator/bench.h; was tools/pi-bench-matvec, doc/kernels.md).
 *
 * matvec: first the streaming read bandwidth (a 1 GiB buffer, much larger than the last-level cache,
 * read by 1 and by N threads in 64 MiB slices timed one by one; best slice), then, for each weight
 * type, the rate at which pi_matvec streams weight bytes on 1 and N threads (N: the largest -t). The
 * weights are several copies of a rows x cols matrix, together at least 512 MiB, used in turn so that
 * no call finds its weights in cache (as in a forward pass, where every layer's weights are read once
 * per token). Each call is timed on its own. The machine may be shared and the bandwidth it gets
 * drifts, so the read bandwidth is measured again (one pass, best slice, all thread counts) just
 * before each type. Table: type, threads, GB/s of weights (best call and median call), that
 * bandwidth, best call as % of it, GB/s per thread, a plain read of the same weight copies on as many
 * threads (issue 14: the kernel against a read-only stream over the same bytes) and the best call as
 * % of that, kernel variant. Where the active variant has a kernel over 16-row packed copies
 * (kernels/cpu/rows16.h: Q4_0, Q8_0 and the K-quants Q4_K, Q5_K, Q6_K on avx512vnni and amx), the type
 * gets a second row, e.g. "q4_0 rows16": the same
 * copies packed and read through pi_matvec_w.
 *
 * matmul: on one thread, pi_matmul (prompt processing: the 4-token kernels where the variant has
 * them) against the same product done as one vec_dot per (row, token) in the same tiling (pi_matmul
 * before the 4-token kernels), both including the activation quantisation; GFLOP/s = 2 * rows * cols
 * * tokens / time, best of -r calls, the two timed alternately; where the variant has a 16-row packed
 * kernel for the type, pi_matmul_w over a packed copy as a third, in the same alternation.
 *
 * neurons: pi_ffn_neurons (ReLU), the CPU workers' kernel, over synthetic layers of --rows neurons of
 * width --cols (gate and up of each --types type, Q4_0 by default; down_t --down-type, f16 by default) cycled through a
 * working set of >= 1 GiB (the 2-core VM's CPUID reports a 480 MiB L3): every neuron, a sorted random 10% of them (what an activation predictor
 * hands over), and pi_ffn_neurons_batch over 16 tokens per thread (one x repeated, so that the rows
 * read are known: each group of 16 tokens reads its neurons' rows once); GB/s of rows actually read,
 * also per thread, against the streaming read. The K-quants, which pinfer cannot quantise, get rows
 * of random bytes with small fp16 scales, each gate row's scales negated where needed so that it is
 * on or off as the layer asks (kquant_row).
 *
 * attention: on one thread, pi_attn_group (one query per head over an f16 cache, a kv head's 4 query
 * heads together, as a decode step's attention in the forward pass) for each kernel variant this CPU
 * runs, over -p positions (default 1024) and head_dim 64 and 128, a layer's 32 heads sharing 8 kv
 * heads; best of -r passes over the 8 groups: nanoseconds per position and query head, and GB/s of
 * keys and values (every row of the layer's cache once per pass).
 *
 * Not tests: the numbers depend on the machine and on whatever else runs on it.
 */
#include "config.h"
#include "coordinator/bench.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/rows16.h"
#include "lib/common.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BW_BUFFER_BYTES ((size_t)1 << 30)      /* the streaming-read buffer */
#define WORKSET_BYTES ((size_t)512 << 20)      /* the matvec weights cycled through */
#define NEURON_WORKSET_BYTES ((size_t)1 << 30) /* the neuron layers cycled through: twice a 480 MiB L3 */
#define FFN_BENCH_GROUP 16                     /* tokens per thread of the batch case: pi_ffn_neurons_batch's group */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- streaming read bandwidth ---- */

struct read_ctx {
    const uint64_t *buf; /* (n,) */
    uint64_t sink[64];   /* per-thread result so the reads are not optimised away */
};

#if defined(__x86_64__) && defined(PI_HAVE_X86_SIMD)
#include <immintrin.h>
__attribute__((target("avx2"))) static uint64_t read_avx2(const uint64_t *p, int64_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, a0);
    for (; i < n; i++) t[0] += p[i];
    return t[0] + t[1] + t[2] + t[3];
}
#endif

static uint64_t read_plain(const uint64_t *p, int64_t n)
{
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) a0 += p[i], a1 += p[i + 1], a2 += p[i + 2], a3 += p[i + 3];
    for (; i < n; i++) a0 += p[i];
    return a0 + a1 + a2 + a3;
}

static void read_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    struct read_ctx *c = vctx;
    uint64_t s;
#if defined(__x86_64__) && defined(PI_HAVE_X86_SIMD)
    if (pi_kernels_available(PI_KERNEL_AVX2)) s = read_avx2(c->buf + begin, end - begin);
    else
#endif
        s = read_plain(c->buf + begin, end - begin);
    c->sink[thread & 63] += s;
}

/* Read bandwidth in GB/s (1e9 bytes) on pool's threads: the buffer is read in 64 MiB slices (each
 * twice the size of the largest LLC we expect), each timed on its own, for `passes` passes over the
 * whole buffer; returns the best slice, so that it is comparable with the best matvec call. */
static double read_bandwidth(pi_pool_t *pool, const uint64_t *buf, size_t bytes, int passes)
{
    struct read_ctx c = {0};
    const size_t slice = (size_t)64 << 20;
    double best = 0;
    for (int p = 0; p < passes; p++) {
        for (size_t off = 0; off + slice <= bytes; off += slice) {
            int64_t n = (int64_t)(slice / 8);
            c.buf = buf + off / 8;
            double t0 = now_s();
            pi_pool_for(pool, n, 4096, read_range, &c); /* chunked like pi_matvec */
            best = PI_MAX(best, (double)slice / (now_s() - t0) / 1e9);
        }
    }
    return best;
}

/* ---- matvec ---- */

struct bench_type {
    enum pi_type t;
    void **copies; /* n_copies matrices of rows x cols */
    int n_copies;
    size_t bytes;          /* one matrix */
    struct pi_weight *w16; /* (n_copies) with 16-row packed copies (pack_rows16), or NULL */
};

static int prepare(struct bench_type *b, enum pi_type t, int64_t rows, int64_t cols, size_t workset)
{
    uint64_t rb;
    if (!pi_type_row_bytes(t, (uint64_t)cols, &rb)) return -1;
    b->t = t;
    b->bytes = (size_t)rb * (size_t)rows;
    b->n_copies = (int)PI_MAX(2, (workset + b->bytes - 1) / b->bytes);
    b->copies = calloc((size_t)b->n_copies, sizeof(void *));
    float *row = malloc((size_t)cols * 4);
    if (!b->copies || !row) {
        b->n_copies = 0; /* release() frees what there is */
        free(row);
        return -1;
    }
    for (int64_t i = 0; i < cols; i++) row[i] = (float)((i * 7919) % 2001 - 1000) / 1000.0f;
    for (int k = 0; k < b->n_copies; k++) {
        uint8_t *m = malloc(b->bytes);
        if (!m) {
            free(row);
            return -1;
        }
        if (pi_quantize_supported(t)) {
            for (int64_t r = 0; r < rows; r++) pi_quantize_row(t, row, m + (size_t)r * rb, cols);
        } else { /* K-quants: bytes that look like blocks with small finite scales */
            for (size_t i = 0; i < b->bytes; i++) m[i] = (uint8_t)(i * 2654435761u >> 13);
            const struct pi_type_info *ti = pi_type_get(t);
            size_t off = t == PI_TYPE_Q2_K ? 80 : t == PI_TYPE_Q3_K ? 108 : t == PI_TYPE_Q6_K ? 208 : 0;
            uint16_t h = pi_fp32_to_fp16(0.01f);
            for (size_t blk = 0; blk < b->bytes / ti->block_bytes; blk++) {
                memcpy(m + blk * ti->block_bytes + off, &h, 2);
                if (t != PI_TYPE_Q3_K && t != PI_TYPE_Q6_K) memcpy(m + blk * ti->block_bytes + off + 2, &h, 2);
            }
        }
        b->copies[k] = m;
    }
    free(row);
    return 0;
}

static void release(struct bench_type *b)
{
    for (int k = 0; k < b->n_copies; k++) free(b->copies[k]);
    free(b->copies);
    for (int k = 0; b->w16 && k < b->n_copies; k++) free((void *)b->w16[k].rows16);
    free(b->w16);
}

/* b's copies as weights with 16-row packed copies (kernels/cpu/rows16.h) in b->w16, where the active
 * variant has a packed kernel for the type and shape. 1: packed; 0: not packable here; -1: no memory. */
static int pack_rows16(struct bench_type *b, int64_t rows, int64_t cols)
{
    struct pi_weight w = {b->t, rows, cols, b->bytes / (size_t)rows, b->copies[0], NULL, NULL, NULL};
    if (!pi_r16_kernel(b->t) || !pi_r16_packable(&w)) return 0;
    size_t bytes = pi_r16_group_bytes(b->t, cols) * (size_t)(rows / PI_R16_ROWS);
    if (!(b->w16 = calloc((size_t)b->n_copies, sizeof *b->w16))) return -1;
    for (int k = 0; k < b->n_copies; k++) {
        void *p = NULL;
        b->w16[k] = w;
        b->w16[k].data = b->copies[k];
        if (posix_memalign(&p, 64, bytes) != 0) return -1;
        pi_r16_pack(NULL, &b->w16[k], p);
        b->w16[k].rows16 = p;
    }
    return 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct rate {
    double best, median; /* GB/s of weights over single calls */
};

/* Times single pi_matvec calls on pool, cycling through the copies for `passes` rounds after one
 * warm-up round; each call on its own, so that calls during which another process held a core (the
 * machine may be shared) do not spoil the others. */
static struct rate matvec_rate(pi_pool_t *pool, struct bench_type *b, int64_t rows, int64_t cols, const float *x,
                               float *y, int passes)
{
    int n = passes * b->n_copies;
    double *rate = malloc((size_t)n * sizeof(double));
    PI_ASSERT(rate != NULL);
    for (int k = 0; k < b->n_copies; k++) pi_matvec(pool, b->t, b->copies[k], rows, cols, x, y);
    for (int k = 0; b->w16 && k < b->n_copies; k++) pi_matvec_w(pool, &b->w16[k], x, y);
    for (int i = 0; i < n; i++) {
        double t0 = now_s();
        if (b->w16) pi_matvec_w(pool, &b->w16[i % b->n_copies], x, y);
        else pi_matvec(pool, b->t, b->copies[i % b->n_copies], rows, cols, x, y);
        rate[i] = (double)b->bytes / (now_s() - t0) / 1e9;
    }
    qsort(rate, (size_t)n, sizeof(double), cmp_double);
    struct rate r = {.best = rate[n - 1], .median = rate[n / 2]};
    free(rate);
    return r;
}

/* The streaming read over the very bytes matvec_rate reads: each copy of the matrix read whole on
 * pool's threads (chunked as read_bandwidth), one timed read per copy and round, the copies in the
 * same order; best read in GB/s. What one core (or all) can pull from memory in this access pattern,
 * the ceiling of the kernel's GB/s. */
static double copies_read_rate(pi_pool_t *pool, const struct bench_type *b, int passes)
{
    struct read_ctx c = {0};
    double best = 0;
    for (int i = 0; i < passes * b->n_copies; i++) {
        c.buf = b->copies[i % b->n_copies];
        double t0 = now_s();
        pi_pool_for(pool, (int64_t)(b->bytes / 8), 4096, read_range, &c);
        best = PI_MAX(best, (double)(b->bytes / 8 * 8) / (now_s() - t0) / 1e9);
    }
    return best;
}

/* ---- prompt processing: pi_matmul against one dot per (row, token) ---- */

#define MM_TILE_BYTES (256 * 1024) /* pi_matmul's token tile (kernels/cpu/matvec.c) */

/* Y (n, rows) = X (n, cols) @ W^T with one vec_dot per output, rows outer and tokens inner within
 * tiles of tokens, as pi_matmul did before its 4-token kernels (one thread). */
static void matmul_by_dots(enum pi_type t, const uint8_t *W, int64_t rows, int64_t cols, const float *X, int64_t n,
                           float *Y, uint8_t *xq)
{
    pi_vec_dot_fn dot = pi_kernels_active()->vec_dot[t];
    uint64_t wrb = 0;
    PI_ASSERT(pi_type_row_bytes(t, (uint64_t)cols, &wrb));
    size_t xrb = pi_act_row_bytes(t, cols);
    const uint8_t *x = (const uint8_t *)X;
    if (pi_vec_dot_type(t) != PI_TYPE_F32) {
        for (int64_t i = 0; i < n; i++) pi_quantize_act(t, X + i * cols, xq + (size_t)i * xrb, cols);
        x = xq;
    }
    int64_t tile = PI_MAX(1, (int64_t)(MM_TILE_BYTES / xrb));
    for (int64_t t0 = 0; t0 < n; t0 += tile)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = t0; k < PI_MIN(n, t0 + tile); k++)
                Y[k * rows + r] = dot(W + (size_t)r * wrb, x + (size_t)k * xrb, cols);
}

/* Prints one row per type: GFLOP/s of one vec_dot per output and of pi_matmul, one thread. 0 or 1
 * (out of memory). */
static int bench_matmul(const enum pi_type *types, int n_types, int64_t rows, int64_t cols, int64_t n, int passes)
{
    float *X = malloc((size_t)(n * cols) * 4), *Y = malloc((size_t)(n * rows) * 4);
    uint8_t *xq = malloc((size_t)(n * cols) * 4 + 64);
    int status = 1;
    if (!X || !Y || !xq) goto out;
    for (int64_t i = 0; i < n * cols; i++) X[i] = (float)((i * 7919) % 2001 - 1000) / 1000.0f;
    printf("# matmul %lld x %lld weights @ %lld tokens, one thread, kernel variant %s, best of %d calls\n",
           (long long)rows, (long long)cols, (long long)n, pi_kernels_variant(), passes);
    printf("| type | dots GFLOP/s | matmul GFLOP/s | speedup | 4-token kernel | rows16 GFLOP/s | rows16 vs matmul |\n"
           "|---|--:|--:|--:|---|--:|--:|\n");
    for (int k = 0; k < n_types; k++) {
        struct bench_type b = {0};
        if (prepare(&b, types[k], rows, cols, 0) != 0) {
            release(&b);
            goto out;
        }
        int r16 = pack_rows16(&b, rows, cols);
        if (r16 < 0) {
            release(&b);
            goto out;
        }
        double best_dots = 1e30, best_mm = 1e30, best_r16 = 1e30;
        for (int p = 0; p < passes; p++) {
            double t0 = now_s();
            matmul_by_dots(types[k], b.copies[0], rows, cols, X, n, Y, xq);
            double t1 = now_s();
            pi_matmul(NULL, types[k], b.copies[0], rows, cols, X, n, Y);
            double t2 = now_s();
            if (r16) pi_matmul_w(NULL, &b.w16[0], X, n, Y);
            double t3 = now_s();
            best_dots = PI_MIN(best_dots, t1 - t0), best_mm = PI_MIN(best_mm, t2 - t1),
            best_r16 = PI_MIN(best_r16, t3 - t2);
        }
        double flop = 2.0 * (double)rows * (double)cols * (double)n;
        char c16[64] = "-", s16[32] = "-";
        if (r16)
            snprintf(c16, sizeof c16, "%.1f", flop / best_r16 / 1e9),
                snprintf(s16, sizeof s16, "%.2fx", best_mm / best_r16);
        printf("| %s | %.1f | %.1f | %.2fx | %s | %s | %s |\n", pi_type_name(types[k]), flop / best_dots / 1e9,
               flop / best_mm / 1e9, best_dots / best_mm, pi_kernels_active()->vec_dot4[types[k]] ? "yes" : "no", c16,
               s16);
        fflush(stdout);
        release(&b);
    }
    status = 0;
out:
    free(X), free(Y), free(xq);
    return status;
}

/* The types of the run: --types, or every type with a kernel. */
static int run_types(const struct pi_bench_opts *b, enum pi_type *types)
{
    static const enum pi_type all[] = {PI_TYPE_F32,  PI_TYPE_F16,  PI_TYPE_BF16, PI_TYPE_Q8_0, PI_TYPE_Q4_0,
                                       PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1, PI_TYPE_Q2_K, PI_TYPE_Q3_K,
                                       PI_TYPE_Q4_K, PI_TYPE_Q5_K, PI_TYPE_Q6_K};
    int n = 0;
    if (b->n_types)
        for (int i = 0; i < b->n_types; i++) types[n++] = b->types[i];
    else
        for (size_t i = 0; i < PI_ARRAY_LEN(all); i++) types[n++] = all[i];
    return n;
}

int pi_bench_kernels_matmul(const struct pi_bench_opts *b)
{
    enum pi_type types[PI_TYPE_COUNT];
    int n_types = run_types(b, types);
    for (int i = 0; i < b->n_prompt.n; i++) {
        if (b->n_prompt.v[i] == 0) continue;
        if (bench_matmul(types, n_types, b->rows, b->cols, b->n_prompt.v[i], b->reps) != 0) {
            fprintf(stderr, "pi-bench: --kernels matmul: out of memory\n");
            return 1;
        }
    }
    return 0;
}

double pi_bench_read_bandwidth(int threads, int passes)
{
    pi_pool_t *pool = pi_pool_new(threads);
    uint64_t *buf = malloc(BW_BUFFER_BYTES);
    double bw = 0;
    if (pool && buf) {
        for (size_t i = 0; i < BW_BUFFER_BYTES / 8; i++) buf[i] = i;
        bw = read_bandwidth(pool, buf, BW_BUFFER_BYTES, passes);
    }
    free(buf);
    pi_pool_destroy(&pool);
    return bw;
}

int pi_bench_kernels_matvec(const struct pi_bench_opts *b)
{
    enum pi_type types[PI_TYPE_COUNT];
    int n_types = run_types(b, types), passes = b->reps, status = 1;
    int64_t rows = b->rows, cols = b->cols, max_threads = 1;
    for (int i = 0; i < b->threads.n; i++) max_threads = PI_MAX(max_threads, b->threads.v[i]);
    int thread_counts[2] = {1, (int)max_threads}, n_tc = max_threads > 1 ? 2 : 1;
    pi_pool_t *pools[2] = {NULL, NULL};
    uint64_t *buf = malloc(BW_BUFFER_BYTES);
    float *x = malloc((size_t)cols * 4), *y = malloc((size_t)rows * 4);
    for (int i = 0; i < n_tc; i++) pools[i] = pi_pool_new(thread_counts[i]);
    if (!buf || !x || !y || !pools[0] || (n_tc > 1 && !pools[1])) {
        fprintf(stderr, "pi-bench: --kernels matvec: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < BW_BUFFER_BYTES / 8; i++) buf[i] = i;
    double bw[2] = {0, 0};
    for (int i = 0; i < n_tc; i++) bw[i] = read_bandwidth(pools[i], buf, BW_BUFFER_BYTES, passes);
    printf("# machine: %d threads, kernel variant %s\n", thread_counts[n_tc - 1], pi_kernels_variant());
    for (int i = 0; i < n_tc; i++)
        printf("# streaming read, %d passes over %zu MiB in 64 MiB slices, best slice: %.1f GB/s on %d thread%s\n",
               passes, BW_BUFFER_BYTES >> 20, bw[i], thread_counts[i], thread_counts[i] > 1 ? "s" : "");
    printf("# matvec %lld x %lld, weights cycled through a working set of >= %zu MiB, %d rounds.\n"
           "# GB/s: weight bytes per second, best single call (and median); bw: the best streaming read\n"
           "# (same method as above, any thread count) measured again just before each type; %% of bw: best / bw;\n"
           "# per thread: best / threads; read: a plain streaming read of the same weight copies on as many\n"
           "# threads, best copy; %% of read: best / read\n",
           (long long)rows, (long long)cols, WORKSET_BYTES >> 20, passes);
    printf("| type | threads | GB/s | (median) | bw | %% of bw | per thread | read | %% of read | variant |\n");
    printf("|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n");
    for (int64_t i = 0; i < cols; i++) x[i] = (float)((i * 31) % 17 - 8) / 8.0f;
    for (int k = 0; k < n_types; k++) {
        struct bench_type bt = {0};
        if (prepare(&bt, types[k], rows, cols, WORKSET_BYTES) != 0) {
            fprintf(stderr, "pi-bench: --kernels matvec: out of memory preparing %s\n", pi_type_name(types[k]));
            release(&bt);
            goto out;
        }
        double bw_now = 0;
        for (int i = 0; i < n_tc; i++) bw_now = PI_MAX(bw_now, read_bandwidth(pools[i], buf, BW_BUFFER_BYTES, 1));
        int r16 = 0;
        for (int pass = 0; pass < 2; pass++) { /* the file's rows, then the 16-row copies where there are */
            if (pass == 1 && (r16 = pack_rows16(&bt, rows, cols)) <= 0) break;
            for (int i = 0; i < n_tc; i++) {
                struct rate r = matvec_rate(pools[i], &bt, rows, cols, x, y, passes);
                double rd = copies_read_rate(pools[i], &bt, passes);
                printf("| %s%s | %d | %.1f | %.1f | %.1f | %.0f%% | %.1f | %.1f | %.0f%% | %s |\n",
                       pi_type_name(types[k]), pass ? " rows16" : "", thread_counts[i], r.best, r.median, bw_now,
                       100.0 * r.best / bw_now, r.best / thread_counts[i], rd, 100.0 * r.best / rd,
                       pi_kernels_variant());
                fflush(stdout);
            }
        }
        release(&bt);
        if (r16 < 0) goto out;
    }
    status = 0;
out:
    free(x), free(y), free(buf);
    for (int i = 0; i < n_tc; i++) pi_pool_destroy(&pools[i]);
    return status;
}

/* ---- the neuron-wise FFN (pi_ffn_neurons), the CPU workers' kernel ---- */

/* One synthetic FFN layer of n_ff neurons of width d: gate and up (n_ff, d) of the weight type, down_t
 * (n_ff, d) of type dt (--down-type; F16 by default, what pinfer packs, model/model.c). Neuron i is
 * active (its gate row points along x, so its ReLU gate is > 0) iff active[i]; the others point
 * against x. */
struct neuron_layer {
    struct pi_layer L;
    uint8_t *mem; /* gate, up and down_t rows */
};

/* Byte offsets in a block of type t of its fp16 super-block scales (d, and dmin where there is one;
 * -1: none): negating them negates every value of the block. Only the K-quants have them here. */
static void kquant_scale_offsets(enum pi_type t, int off[2])
{
    off[0] = off[1] = -1;
    switch (t) {
    case PI_TYPE_Q2_K:
        off[0] = (int)offsetof(struct pi_block_q2_K, d), off[1] = (int)offsetof(struct pi_block_q2_K, dmin);
        break;
    case PI_TYPE_Q3_K: off[0] = (int)offsetof(struct pi_block_q3_K, d); break;
    case PI_TYPE_Q4_K:
        off[0] = (int)offsetof(struct pi_block_q4_K, d), off[1] = (int)offsetof(struct pi_block_q4_K, dmin);
        break;
    case PI_TYPE_Q5_K:
        off[0] = (int)offsetof(struct pi_block_q5_K, d), off[1] = (int)offsetof(struct pi_block_q5_K, dmin);
        break;
    case PI_TYPE_Q6_K: off[0] = (int)offsetof(struct pi_block_q6_K, d); break;
    default: break;
    }
}

/* dst: one row of d elements of a K-quant (no quantiser: pinfer has none for them), random bytes with
 * small positive fp16 scales, the scales negated where needed so that the row's dot product with x
 * has the sign of sign (so its ReLU gate is on or off as the layer asks). row (d): scratch, left
 * holding the row's values. */
static void kquant_row(enum pi_type t, uint8_t *dst, int64_t d, const float *x, float sign, float *row, uint64_t *s)
{
    const struct pi_type_info *ti = pi_type_get(t);
    int64_t nb = d / ti->block_elems;
    int off[2];
    kquant_scale_offsets(t, off);
    for (size_t j = 0; j < (size_t)nb * ti->block_bytes; j++) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        dst[j] = (uint8_t)(*s >> 56);
    }
    for (int64_t b = 0; b < nb; b++)
        for (int k = 0; k < 2; k++) {
            uint16_t h = pi_fp32_to_fp16(0.001f * (float)(k + 1));
            if (off[k] >= 0) memcpy(dst + (size_t)b * ti->block_bytes + off[k], &h, 2);
        }
    pi_dequant_row(t, dst, row, d);
    double dot = 0;
    for (int64_t j = 0; j < d; j++) dot += (double)row[j] * x[j];
    if ((dot > 0) == (sign > 0)) return;
    for (int64_t b = 0; b < nb; b++)
        for (int k = 0; k < 2; k++)
            if (off[k] >= 0) dst[(size_t)b * ti->block_bytes + off[k] + 1] ^= 0x80; /* the fp16 sign bit */
    for (int64_t j = 0; j < d; j++) row[j] = -row[j];
}

static int neuron_layer_make(struct neuron_layer *nl, enum pi_type t, enum pi_type dtype, int64_t n_ff, int64_t d,
                             const float *x, const uint8_t *active)
{
    uint64_t rb, drb;
    memset(nl, 0, sizeof *nl);
    if (!pi_type_row_bytes(t, (uint64_t)d, &rb) || !pi_type_row_bytes(dtype, (uint64_t)d, &drb)) return -1;
    size_t gb = (size_t)rb * (size_t)n_ff, db = (size_t)drb * (size_t)n_ff;
    float *row = malloc((size_t)d * sizeof(float));
    nl->mem = malloc(2 * gb + db);
    if (!row || !nl->mem) {
        free(row);
        return -1;
    }
    struct pi_weight g = {t, n_ff, d, (size_t)rb, nl->mem, NULL, NULL, NULL},
                     u = {t, n_ff, d, (size_t)rb, nl->mem + gb, NULL, NULL, NULL};
    struct pi_weight dt = {dtype, n_ff, d, (size_t)drb, nl->mem + 2 * gb, NULL, NULL, NULL};
    nl->L.ffn_gate = g, nl->L.ffn_up = u, nl->L.ffn_down_t = dt;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < n_ff; i++) {
        float sign = active[i] ? 1.0f : -1.0f;
        if (!pi_quantize_supported(t)) { /* a K-quant: random rows, the gate's sign set by its scales */
            kquant_row(t, (uint8_t *)g.data + (size_t)i * rb, d, x, sign, row, &s);
            kquant_row(t, (uint8_t *)u.data + (size_t)i * rb, d, x, 1.0f, row, &s);
            pi_quantize_row(dtype, row, (uint8_t *)dt.data + (size_t)i * drb, d);
            continue;
        }
        for (int64_t j = 0; j < d; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            float noise = (float)(int64_t)(s >> 40) / (float)(1 << 24) - 0.5f; /* [-0.5, 0.5) */
            row[j] = sign * x[j] + 0.25f * noise;
        }
        pi_quantize_row(t, row, (uint8_t *)g.data + (size_t)i * rb, d);
        for (int64_t j = 0; j < d; j++) row[j] = row[(j * 7 + i) % d] * 0.5f;
        pi_quantize_row(t, row, (uint8_t *)u.data + (size_t)i * rb, d);
        pi_quantize_row(dtype, row, (uint8_t *)dt.data + (size_t)i * drb, d);
    }
    free(row);
    return 0;
}

/* Bytes one call reads: every listed neuron's gate row, and up and down_t rows of the active ones. */
static double neuron_bytes(const struct pi_layer *L, int64_t n_idx, int64_t n_active)
{
    return (double)n_idx * (double)L->ffn_gate.row_bytes +
           (double)n_active * (double)(L->ffn_up.row_bytes + L->ffn_down_t.row_bytes);
}

/* A list of neurons per call: n_lists lists (the neuron list of call c is list c % n_lists), so that
 * the subsets, a tenth of a layer each, do not stay in the last-level cache between calls. */
struct neuron_case {
    const char *name;
    const int32_t *idx;    /* the lists one after the other */
    const int64_t *offset; /* (n_lists + 1) list c is idx[offset[c], offset[c + 1]) */
    int n_lists;
    int64_t tokens; /* 1: pi_ffn_neurons; more: pi_ffn_neurons_batch over that many tokens */
};

/* GB/s of rows read by single calls on pool, cycling through the layers and lists (one warm-up round
 * of n_layers calls): best and median call; *active and *listed get the active and listed neurons of
 * the last call. */
static struct rate neuron_rate(pi_pool_t *pool, pi_ffn_work_t *w, struct neuron_layer *nl, int n_layers,
                               const struct neuron_case *c, const float *X, float *Y, int passes, int64_t *active,
                               int64_t *listed)
{
    int n = passes * n_layers;
    double *rate = malloc((size_t)n * sizeof(double));
    PI_ASSERT(rate != NULL);
    int64_t a = 0;
    for (int i = -n_layers; i < n; i++) {
        const int c_i = i + n_layers;
        const struct pi_layer *L = &nl[c_i % n_layers].L;
        const int32_t *idx = c->idx + c->offset[c_i % c->n_lists];
        const int64_t n_idx = c->offset[c_i % c->n_lists + 1] - c->offset[c_i % c->n_lists];
        double t0 = now_s();
        if (c->tokens == 1) a = pi_ffn_neurons(pool, w, L, PI_FFN_ACT_RELU, NULL, X, idx, n_idx, Y);
        else a = pi_ffn_neurons_batch(pool, w, L, PI_FFN_ACT_RELU, NULL, X, c->tokens, idx, n_idx, Y);
        double dt = now_s() - t0;
        /* the batch's tokens are one x, so each has a / tokens active neurons, and each group of
         * FFN_BENCH_GROUP tokens reads their rows once */
        const int64_t groups = (c->tokens + FFN_BENCH_GROUP - 1) / FFN_BENCH_GROUP;
        if (i >= 0) rate[i] = (double)groups * neuron_bytes(L, n_idx, a / c->tokens) / dt / 1e9;
    }
    qsort(rate, (size_t)n, sizeof(double), cmp_double);
    struct rate r = {.best = rate[n - 1], .median = rate[n / 2]};
    free(rate);
    *active = a;
    *listed = (c->offset[(n + n_layers - 1) % c->n_lists + 1] - c->offset[(n + n_layers - 1) % c->n_lists]) * c->tokens;
    PI_ASSERT(a % c->tokens == 0); /* the same neurons are active in every token */
    return r;
}

int pi_bench_kernels_neurons(const struct pi_bench_opts *b)
{
    enum pi_type types[PI_TYPE_COUNT];
    int n_types = b->n_types ? run_types(b, types) : 1, passes = b->reps, status = 1;
    if (!b->n_types) types[0] = PI_TYPE_Q4_0;
    const int64_t n_ff = b->rows, d = b->cols;
    int64_t max_threads = 1;
    for (int i = 0; i < b->threads.n; i++) max_threads = PI_MAX(max_threads, b->threads.v[i]);
    int thread_counts[2] = {1, (int)max_threads}, n_tc = max_threads > 1 ? 2 : 1;
    const int64_t max_tokens = FFN_BENCH_GROUP * max_threads;
    pi_pool_t *pools[2] = {NULL, NULL};
    pi_ffn_work_t *work[2] = {NULL, NULL};
    uint64_t *buf = malloc(BW_BUFFER_BYTES);
    float *X = malloc((size_t)(max_tokens * d) * sizeof(float)), *Y = calloc((size_t)(max_tokens * d), sizeof(float));
    uint8_t *active = malloc((size_t)n_ff);
    int32_t *all = malloc((size_t)n_ff * sizeof(int32_t)), *sub = malloc((size_t)n_ff * sizeof(int32_t));
    int64_t all_off[2] = {0, n_ff}, sub_off[11] = {0}, fill[10];
    struct neuron_layer *nl = NULL;
    int n_layers = 0;
    for (int i = 0; i < n_tc; i++) {
        pools[i] = pi_pool_new(thread_counts[i]);
        work[i] = pi_ffn_work_new(d, thread_counts[i]);
        if (work[i] && pi_ffn_work_reserve(work[i], max_tokens) != 0) pi_ffn_work_destroy(&work[i]);
    }
    if (!buf || !X || !Y || !active || !all || !sub || !pools[0] || !work[0] || (n_tc > 1 && (!pools[1] || !work[1]))) {
        fprintf(stderr, "pi-bench: --kernels neurons: out of memory\n");
        goto out;
    }
    /* x: a fixed pattern, the same for every token of the batch; neuron i active with probability 1/5 and in one of 10 random subsets (each
     * sorted) */
    for (int64_t t = 0; t < max_tokens; t++)
        for (int64_t j = 0; j < d; j++) X[t * d + j] = (float)((j * 31) % 17 - 8) / 8.0f;
    for (int pass = 0; pass < 2; pass++) { /* count the subsets, then fill them */
        uint64_t s = 42;
        for (int64_t i = 0; i < n_ff; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int j = (int)((s >> 45) % 10);
            if (pass == 0) active[i] = (s >> 33) % 5 == 0, all[i] = (int32_t)i, sub_off[j + 1]++;
            else sub[fill[j]++] = (int32_t)i;
        }
        for (int j = 0; pass == 0 && j < 10; j++) sub_off[j + 1] += sub_off[j], fill[j] = sub_off[j];
    }
    for (size_t i = 0; i < BW_BUFFER_BYTES / 8; i++) buf[i] = i;
    double bw[2] = {0, 0};
    for (int i = 0; i < n_tc; i++) bw[i] = read_bandwidth(pools[i], buf, BW_BUFFER_BYTES, passes);
    printf("# machine: %d threads, kernel variant %s\n", thread_counts[n_tc - 1], pi_kernels_variant());
    for (int i = 0; i < n_tc; i++)
        printf("# streaming read, %d passes over %zu MiB in 64 MiB slices, best slice: %.1f GB/s on %d thread%s "
               "(%.1f per thread)\n",
               passes, BW_BUFFER_BYTES >> 20, bw[i], thread_counts[i], thread_counts[i] > 1 ? "s" : "",
               bw[i] / thread_counts[i]);
    printf("# pi_ffn_neurons (ReLU) over a layer of %lld neurons x %lld: gate and up of the type, down_t %s;\n"
           "# layers cycled through a working set of >= %zu MiB (the 10%% case: 10 subsets in turn), %d rounds.\n"
           "# GB/s: rows read (every listed gate row, up and down_t of the active neurons; a batch: once per\n"
           "# group of 16 tokens) per second, best single call (and median), and per thread; bw: the streaming\n"
           "# read measured again just before each type; %% of bw: best / bw\n",
           (long long)n_ff, (long long)d, pi_type_name(b->down_type), NEURON_WORKSET_BYTES >> 20, passes);
    printf("| type | rows | tokens | threads | active | GB/s | (median) | GB/s/thread | bw | %% of bw |\n");
    printf("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for (int k = 0; k < n_types; k++) {
        uint64_t rb, drb;
        int off[2];
        kquant_scale_offsets(types[k], off);
        if (!pi_quantize_supported(types[k]) && off[0] < 0) { /* neither quantised nor made by kquant_row */
            fprintf(stderr, "pi-bench: --kernels neurons: no way to make %s rows\n", pi_type_name(types[k]));
            goto out;
        }
        if (!pi_type_row_bytes(types[k], (uint64_t)d, &rb) || !pi_type_row_bytes(b->down_type, (uint64_t)d, &drb)) {
            fprintf(stderr, "pi-bench: --kernels neurons: %s rows of %lld elements\n", pi_type_name(types[k]),
                    (long long)d);
            goto out;
        }
        size_t layer_bytes = (size_t)n_ff * (2 * (size_t)rb + (size_t)drb);
        n_layers = (int)PI_MAX(2, (NEURON_WORKSET_BYTES + layer_bytes - 1) / layer_bytes);
        nl = calloc((size_t)n_layers, sizeof *nl);
        if (!nl) goto out;
        for (int l = 0; l < n_layers; l++)
            if (neuron_layer_make(&nl[l], types[k], b->down_type, n_ff, d, X, active) != 0) {
                fprintf(stderr, "pi-bench: --kernels neurons: out of memory preparing %s\n", pi_type_name(types[k]));
                goto out;
            }
        double bw_now = 0;
        for (int i = 0; i < n_tc; i++) bw_now = PI_MAX(bw_now, read_bandwidth(pools[i], buf, BW_BUFFER_BYTES, 1));
        for (int i = 0; i < n_tc; i++) {
            const struct neuron_case cases[] = {
                {"all", all, all_off, 1, 1},
                {"10%", sub, sub_off, 10, 1},
                {"all", all, all_off, 1, FFN_BENCH_GROUP * thread_counts[i]},
            };
            for (size_t c = 0; c < PI_ARRAY_LEN(cases); c++) {
                int64_t a = 0, listed = 1;
                struct rate r = neuron_rate(pools[i], work[i], nl, n_layers, &cases[c], X, Y, passes, &a, &listed);
                printf("| %s | %s | %lld | %d | %.0f%% | %.1f | %.1f | %.1f | %.1f | %.0f%% |\n",
                       pi_type_name(types[k]), cases[c].name, (long long)cases[c].tokens, thread_counts[i],
                       100.0 * (double)a / (double)listed, r.best, r.median, r.best / thread_counts[i], bw_now,
                       100.0 * r.best / bw_now);
                fflush(stdout);
            }
        }
        for (int l = 0; l < n_layers; l++) free(nl[l].mem);
        free(nl), nl = NULL;
    }
    status = 0;
out:
    if (nl)
        for (int l = 0; l < n_layers; l++) free(nl[l].mem);
    free(nl), free(buf), free(X), free(Y), free(active), free(all), free(sub);
    for (int i = 0; i < n_tc; i++) pi_pool_destroy(&pools[i]), pi_ffn_work_destroy(&work[i]);
    return status;
}

/* ---- decode attention: pi_attn_group per kernel variant ---- */

#define ATT_HEADS 32
#define ATT_KV_HEADS 8

/* One (head_dim, positions) row per available variant; best of passes. 0 or 1 (no memory). */
static int bench_attention(int hd, int64_t n_kv, int passes)
{
    const size_t stride = (size_t)ATT_KV_HEADS * (size_t)hd * 2; /* one position of every kv head, f16 */
    uint16_t *k = malloc(stride * (size_t)n_kv), *v = malloc(stride * (size_t)n_kv);
    float *q = malloc(sizeof(float) * ATT_HEADS * (size_t)hd), *out = malloc(sizeof(float) * ATT_HEADS * (size_t)hd);
    float *scores = malloc(sizeof(float) * PI_ATTN_GROUP_MAX * (size_t)n_kv);
    if (!k || !v || !q || !out || !scores) {
        free(k), free(v), free(q), free(out), free(scores);
        return 1;
    }
    uint64_t r = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < stride / 2 * (size_t)n_kv; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        k[i] = pi_fp32_to_fp16((float)((r >> 40) & 0xFFFF) / 65536.0f - 0.5f);
        v[i] = pi_fp32_to_fp16((float)((r >> 20) & 0xFFFF) / 65536.0f - 0.5f);
    }
    for (int i = 0; i < ATT_HEADS * hd; i++) q[i] = (float)(i % 17) / 17.0f - 0.5f;
    const enum pi_kernel_isa active = pi_kernels_isa();
    for (int isa = 0; isa < PI_KERNEL_ISA_COUNT; isa++) {
        if (!pi_kernels_available((enum pi_kernel_isa)isa)) continue;
        pi_kernels_use(isa);
        double best = 1e30;
        for (int p = 0; p <= passes; p++) { /* pass 0 warms up */
            double t0 = now_s();
            for (int kvh = 0; kvh < ATT_KV_HEADS; kvh++) { /* as the forward pass: a kv head's queries together */
                const int g = ATT_HEADS / ATT_KV_HEADS, h0 = kvh * g;
                pi_attn_group(out + (size_t)h0 * hd, q + (size_t)h0 * hd, g, k + (size_t)kvh * hd, v + (size_t)kvh * hd,
                              stride, PI_TYPE_F16, (int)n_kv, hd, 0.125f, scores);
            }
            if (p > 0) best = PI_MIN(best, now_s() - t0);
        }
        const double per = best / ((double)n_kv * ATT_HEADS);
        printf("| %d | %lld | %s | %.1f | %.1f |\n", hd, (long long)n_kv, pi_kernels_variant(), per * 1e9,
               (double)ATT_KV_HEADS * (double)n_kv * (double)hd * 4.0 / best / 1e9);
    }
    pi_kernels_use((int)active);
    free(k), free(v), free(q), free(out), free(scores);
    return 0;
}

int pi_bench_kernels_attention(const struct pi_bench_opts *b)
{
    static const int hds[] = {64, 128};
    printf("# pi_attn_group: one query per head, %d heads over %d kv heads of an f16 cache (a kv head's queries\n"
           "# together), one thread, best of %d passes; ns per position and query head; GB/s of keys and values\n",
           ATT_HEADS, ATT_KV_HEADS, b->reps);
    printf("| head_dim | positions | variant | ns/pos/head | GB/s |\n|--:|--:|---|--:|--:|\n");
    for (int i = 0; i < b->n_prompt.n; i++)
        for (size_t j = 0; j < PI_ARRAY_LEN(hds); j++) {
            if (b->n_prompt.v[i] == 0) continue;
            if (bench_attention(hds[j], b->n_prompt.v[i], b->reps) != 0) {
                fprintf(stderr, "pi-bench: --kernels attention: out of memory\n");
                return 1;
            }
        }
    return 0;
}
