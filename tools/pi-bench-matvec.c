/*
 * tools/pi-bench-matvec.c - how close the CPU matvec kernels come to this machine's memory bandwidth.
 *
 * First measures the streaming read bandwidth (a 1 GiB buffer, much larger than the last-level
 * cache, read by 1 and by N threads in 64 MiB slices timed one by one; best slice), then, for each
 * weight type, the rate at which pi_matvec streams weight bytes on 1 and N threads. The weights are
 * several copies of a rows x cols matrix, together at least -w MiB, used in turn so that no call
 * finds its weights in cache (as in a forward pass, where every layer's weights are read once per
 * token). Each call is timed on its own. The machine may be shared and the bandwidth it gets drifts,
 * so the read bandwidth is measured again (one pass, best slice, all thread counts) just before each
 * type. Prints a table: type, threads, GB/s of weights (best call and median call), that bandwidth,
 * best call as % of it, kernel variant.
 * With -M TOKENS it instead compares, on one thread, pi_matmul (prompt processing: the 4-token
 * kernels where the variant has them) with the same product done as one vec_dot per (row, token) in
 * the same tiling (pi_matmul before the 4-token kernels), both including the activation quantisation;
 * GFLOP/s = 2 * rows * cols * tokens / time, best of PASSES calls, the two timed alternately.
 * Not a test: numbers depend on the machine and on whatever else runs on it.
 *
 *   pi-bench-matvec [-r ROWS] [-c COLS] [-t MAXTHREADS] [-m BW_MIB] [-w WORKSET_MIB] [-p PASSES] [TYPE...]
 *   pi-bench-matvec -M 64 -r 2048 -c 2048 q4_0 q8_0 q4_k q6_k f16
 */
#include "config.h"

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"

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
    void **copies;       /* n_copies matrices of rows x cols */
    int n_copies;
    size_t bytes;        /* one matrix */
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
    if (!b->copies || !row) return -1;
    for (int64_t i = 0; i < cols; i++) row[i] = (float)((i * 7919) % 2001 - 1000) / 1000.0f;
    for (int k = 0; k < b->n_copies; k++) {
        uint8_t *m = malloc(b->bytes);
        if (!m) return -1;
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
    for (int i = 0; i < n; i++) {
        double t0 = now_s();
        pi_matvec(pool, b->t, b->copies[i % b->n_copies], rows, cols, x, y);
        rate[i] = (double)b->bytes / (now_s() - t0) / 1e9;
    }
    qsort(rate, (size_t)n, sizeof(double), cmp_double);
    struct rate r = {.best = rate[n - 1], .median = rate[n / 2]};
    free(rate);
    return r;
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

/* Prints one line per type: GFLOP/s of one vec_dot per output and of pi_matmul, one thread. */
static int bench_matmul(const enum pi_type *types, int n_types, int64_t rows, int64_t cols, int64_t n, int passes)
{
    float *X = malloc((size_t)(n * cols) * 4), *Y = malloc((size_t)(n * rows) * 4);
    uint8_t *xq = malloc((size_t)(n * cols) * 4 + 64);
    if (!X || !Y || !xq) return 1;
    for (int64_t i = 0; i < n * cols; i++) X[i] = (float)((i * 7919) % 2001 - 1000) / 1000.0f;
    printf("# matmul %lld x %lld weights @ %lld tokens, one thread, kernel variant %s, best of %d calls\n",
           (long long)rows, (long long)cols, (long long)n, pi_kernels_variant(), passes);
    printf("%-6s %16s %16s %8s  %s\n", "type", "dots GFLOP/s", "matmul GFLOP/s", "speedup", "4-token kernel");
    for (int k = 0; k < n_types; k++) {
        struct bench_type b = {0};
        if (prepare(&b, types[k], rows, cols, 0) != 0) return 1;
        double best_dots = 1e30, best_mm = 1e30;
        for (int p = 0; p < passes; p++) {
            double t0 = now_s();
            matmul_by_dots(types[k], b.copies[0], rows, cols, X, n, Y, xq);
            double t1 = now_s();
            pi_matmul(NULL, types[k], b.copies[0], rows, cols, X, n, Y);
            double t2 = now_s();
            best_dots = PI_MIN(best_dots, t1 - t0), best_mm = PI_MIN(best_mm, t2 - t1);
        }
        double flop = 2.0 * (double)rows * (double)cols * (double)n;
        printf("%-6s %16.1f %16.1f %7.2fx  %s\n", pi_type_name(types[k]), flop / best_dots / 1e9, flop / best_mm / 1e9,
               best_dots / best_mm, pi_kernels_active()->vec_dot4[types[k]] ? "yes" : "no");
        fflush(stdout);
        release(&b);
    }
    free(X), free(Y), free(xq);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: pi-bench-matvec [-r ROWS (11008)] [-c COLS (4096)] [-t MAXTHREADS (online CPUs)]\n"
               "                       [-m BANDWIDTH_BUFFER_MIB (1024)] [-w WEIGHTS_WORKING_SET_MIB (512)]\n"
               "                       [-p PASSES (10)] [-M TOKENS (0: matvec)] [-k VARIANT (auto)] [TYPE...]\n"
               "                       (default types: all with kernels)\n"
               "-M TOKENS: compare pi_matmul over TOKENS tokens with one vec_dot per output (one thread)\n"
               "-k VARIANT: the CPU kernel variant, auto (the best CPUID allows), scalar, avx2, avx512 or avx512vnni\n"
               "(as [tune] cpu_kernels of pinfer.conf(5); clamped to what the CPU runs)\n");
}

/* The types named on the command line (all types with kernels when none), into types; count or -1. */
static int parse_types(int argc, char **argv, enum pi_type *types)
{
    static const enum pi_type all[] = {PI_TYPE_F32, PI_TYPE_F16, PI_TYPE_BF16, PI_TYPE_Q8_0, PI_TYPE_Q4_0,
                                       PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1, PI_TYPE_Q2_K, PI_TYPE_Q3_K,
                                       PI_TYPE_Q4_K, PI_TYPE_Q5_K, PI_TYPE_Q6_K};
    int n = 0;
    for (int i = 0; i < argc && n < PI_TYPE_COUNT; i++) {
        enum pi_type t;
        if (!pi_type_from_name(argv[i], &t) || !pi_kernel_supported(t)) {
            fprintf(stderr, "pi-bench-matvec: no kernel for type '%s'\n", argv[i]);
            return -1;
        }
        types[n++] = t;
    }
    if (n == 0)
        for (size_t i = 0; i < PI_ARRAY_LEN(all); i++) types[n++] = all[i];
    return n;
}

int main(int argc, char **argv)
{
    int64_t rows = 11008, cols = 4096;
    int max_threads = 0, passes = 10, opt;
    size_t bw_mib = 1024, ws_mib = 512;
    int64_t mm_tokens = 0;
    while ((opt = getopt(argc, argv, "r:c:t:m:w:p:M:k:h")) != -1) {
        switch (opt) {
        case 'r': rows = atoll(optarg); break;
        case 'c': cols = atoll(optarg); break;
        case 't': max_threads = atoi(optarg); break;
        case 'm': bw_mib = (size_t)atoll(optarg); break;
        case 'w': ws_mib = (size_t)atoll(optarg); break;
        case 'p': passes = atoi(optarg); break;
        case 'M': mm_tokens = atoll(optarg); break;
        case 'k': {
            struct pi_tune t = {0};
            char kv[64], err[160];
            snprintf(kv, sizeof kv, "tune.cpu_kernels=%s", optarg);
            if (pi_tune_set(&t, kv, "-k", err, sizeof err) != 0) {
                fprintf(stderr, "pi-bench-matvec: %s\n", err);
                return 2;
            }
            pi_kernels_use(pi_kernels_of_tune(&t));
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (rows < 1 || cols < 256 || cols % 256 || passes < 1 || bw_mib < 64) {
        fprintf(stderr, "pi-bench-matvec: need ROWS >= 1, COLS a multiple of 256, PASSES >= 1, BW_MIB >= 64\n");
        return 2;
    }
    enum pi_type types[PI_TYPE_COUNT];
    int n_types = parse_types(argc - optind, argv + optind, types);
    if (n_types < 0) return 2;
    if (mm_tokens > 0) return bench_matmul(types, n_types, rows, cols, mm_tokens, passes);

    pi_pool_t *probe = pi_pool_new(max_threads);
    if (!probe) return 1;
    max_threads = pi_pool_size(probe);
    pi_pool_destroy(&probe);
    int thread_counts[2] = {1, max_threads}, n_tc = max_threads > 1 ? 2 : 1;
    pi_pool_t *pools[2] = {NULL, NULL};
    for (int i = 0; i < n_tc; i++) pools[i] = pi_pool_new(thread_counts[i]);

    /* bandwidth */
    size_t bw_bytes = bw_mib << 20;
    uint64_t *buf = malloc(bw_bytes);
    if (!buf) {
        fprintf(stderr, "pi-bench-matvec: cannot allocate %zu MiB\n", bw_mib);
        return 1;
    }
    for (size_t i = 0; i < bw_bytes / 8; i++) buf[i] = i;
    double bw[2] = {0, 0};
    for (int i = 0; i < n_tc; i++) bw[i] = read_bandwidth(pools[i], buf, bw_bytes, passes);
    printf("# machine: %d threads, kernel variant %s\n", max_threads, pi_kernels_variant());
    for (int i = 0; i < n_tc; i++)
        printf("# streaming read, %d passes over %zu MiB in 64 MiB slices, best slice: %.1f GB/s on %d thread%s\n", passes, bw_mib, bw[i],
               thread_counts[i], thread_counts[i] > 1 ? "s" : "");
    printf("# matvec %lld x %lld, weights cycled through a working set of >= %zu MiB, %d rounds.\n"
           "# GB/s: weight bytes per second, best single call (and median); bw: the best streaming read\n"
           "# (same method as above, any thread count) measured again just before each type; %% of bw: best / bw\n",
           (long long)rows, (long long)cols, ws_mib, passes);
    printf("%-6s %7s %9s %9s %7s %9s  %s\n", "type", "threads", "GB/s", "(median)", "bw", "% of bw", "variant");

    float *x = malloc((size_t)cols * 4), *y = malloc((size_t)rows * 4);
    for (int64_t i = 0; i < cols; i++) x[i] = (float)((i * 31) % 17 - 8) / 8.0f;
    for (int k = 0; k < n_types; k++) {
        struct bench_type b = {0};
        if (prepare(&b, types[k], rows, cols, ws_mib << 20) != 0) {
            fprintf(stderr, "pi-bench-matvec: out of memory preparing %s\n", pi_type_name(types[k]));
            return 1;
        }
        double bw_now = 0;
        for (int i = 0; i < n_tc; i++) bw_now = PI_MAX(bw_now, read_bandwidth(pools[i], buf, bw_bytes, 1));
        for (int i = 0; i < n_tc; i++) {
            struct rate r = matvec_rate(pools[i], &b, rows, cols, x, y, passes);
            printf("%-6s %7d %9.1f %9.1f %7.1f %8.0f%%  %s\n", pi_type_name(types[k]), thread_counts[i], r.best,
                   r.median, bw_now, 100.0 * r.best / bw_now, pi_kernels_variant());
            fflush(stdout);
        }
        release(&b);
    }
    free(x), free(y), free(buf);
    for (int i = 0; i < n_tc; i++) pi_pool_destroy(&pools[i]);
    return 0;
}
