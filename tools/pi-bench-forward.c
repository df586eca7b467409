/*
 * tools/pi-bench-forward.c - prompt and decode speed of the CPU forward pass (compute/forward.h).
 *
 * For each model: a prompt of --prompt random token ids as one batch (prompt tokens/s), then --decode
 * greedy single-token steps (decode tokens/s), best of --reps runs. Decode streams every weight
 * matrix once per token, so decode tokens/s times the model's decode bytes is the weight bandwidth
 * achieved; it is printed as a fraction of this machine's read bandwidth, measured here with the same
 * thread count (sum of a 512 MiB buffer, best of 3). A benchmark, not a test: numbers depend on the
 * machine and its load.
 *
 *   nice pi-bench-forward --threads 2 demo-relu-q4_0.gguf /tmp/rand-1b-q4_0.gguf
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/common.h"
#include "compute/forward.h"
#include "lib/log.h"
#include "model/model.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/pool.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct bw_task {
    const uint64_t *buf;
    uint64_t sums[256];
};

static void bw_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    struct bw_task *t = ctx;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int64_t i = begin; i + 3 < end; i += 4) {
        s0 += t->buf[i];
        s1 += t->buf[i + 1];
        s2 += t->buf[i + 2];
        s3 += t->buf[i + 3];
    }
    t->sums[thread & 255] += s0 + s1 + s2 + s3;
}

/* Read bandwidth in GB/s with the pool's threads. */
static double measure_bw(pi_pool_t *pool)
{
    size_t n = (size_t)64 << 20; /* 64 Mi words = 512 MiB */
    struct bw_task *t = calloc(1, sizeof *t);
    uint64_t *buf = malloc(n * sizeof *buf);
    double best = 0.0;
    if (!t || !buf) {
        free(t);
        free(buf);
        return 0.0;
    }
    for (size_t i = 0; i < n; i++) buf[i] = i;
    t->buf = buf;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        pi_pool_for(pool, (int64_t)n, 1 << 16, bw_range, t);
        double gbs = (double)(n * sizeof *buf) / (now() - t0) / 1e9;
        best = gbs > best ? gbs : best;
    }
    if (t->sums[0] == 42) printf(" "); /* keep the sums alive */
    free(buf);
    free(t);
    return best;
}

struct bench_opts {
    int threads, n_prompt, n_decode, reps;
    enum pi_type kv_type;
    double bw;
};

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int j = 1; j < n; j++) b = x[j] > x[b] ? j : b;
    return b;
}

static int bench_model(const char *path, const struct bench_opts *bo)
{
    char err[256];
    pi_model_t *m = NULL;
    double t0 = now();
    if (pi_model_open(path, NULL, &m, err, sizeof err) < 0) {
        fprintf(stderr, "pi-bench-forward: %s: %s\n", path, err);
        return 1;
    }
    double t_load = now() - t0;
    struct pi_forward_opts o;
    pi_forward_opts_default(&o);
    o.n_threads = bo->threads;
    o.n_ctx = bo->n_prompt + bo->n_decode + 1;
    o.n_batch = bo->n_prompt;
    o.kv_type = bo->kv_type;
    pi_forward_t *f = pi_forward_new(m, &o);
    int V = m->hp.n_vocab;
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)bo->n_prompt);
    float *logits = malloc(sizeof(float) * (size_t)V);
    if (!f || !prompt || !logits) {
        fprintf(stderr, "pi-bench-forward: out of memory\n");
        return 1;
    }
    srand(1);
    for (int i = 0; i < bo->n_prompt; i++) prompt[i] = 1 + rand() % (V - 1);
    /* warm-up: touch every weight once (page cache, mmap) */
    pi_forward_tokens(f, 0, prompt, 1, 0, logits, false);
    pi_forward_seq_reset(f, 0);

    /* best of --reps: the machine is shared, and the best run is the one least disturbed */
    double t_prompt = 1e30, t_decode = 1e30;
    int64_t active = 0;
    int rc = 0;
    for (int rep = 0; rep < bo->reps && rc == 0; rep++) {
        pi_forward_seq_reset(f, 0);
        t0 = now();
        rc = pi_forward_tokens(f, 0, prompt, bo->n_prompt, 0, logits, false);
        t_prompt = PI_MIN(t_prompt, now() - t0);
        int64_t active0 = pi_forward_active_neurons(f);
        t0 = now();
        for (int s = 0; s < bo->n_decode && rc == 0; s++) {
            int32_t tok = argmax(logits, V);
            rc = pi_forward_tokens(f, 0, &tok, 1, bo->n_prompt + s, logits, false);
        }
        t_decode = PI_MIN(t_decode, now() - t0);
        active = pi_forward_active_neurons(f) - active0;
    }
    double dec_tps = bo->n_decode / t_decode, gb = (double)pi_model_decode_bytes(m) / 1e9;
    double frac = (double)active / ((double)bo->n_decode * m->hp.n_layer * m->hp.n_ff);
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    printf("%-28s %-5s %7.3f GB  load %5.1f s  prompt %4d: %8.1f tok/s  decode %3d: %7.2f tok/s  "
           "%6.2f GB/s = %3.0f%% of %.1f GB/s  (FFN neurons active %.0f%%, %s)\n",
           name, pi_type_name(m->layers[0].ffn_gate.type), gb, t_load, bo->n_prompt, bo->n_prompt / t_prompt,
           bo->n_decode, dec_tps, dec_tps * gb, 100.0 * dec_tps * gb / bo->bw, bo->bw, 100.0 * frac,
           pi_ffn_act_name(m->hp.act));
    fflush(stdout);
    free(prompt);
    free(logits);
    pi_forward_destroy(&f);
    pi_model_destroy(&m);
    return rc < 0;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pi-bench-forward [options] MODEL.gguf...\n"
            "Prompt and decode tokens/s of the CPU forward pass; decode bandwidth against measured memory\n"
            "bandwidth.\n\n"
            "  -t, --threads N   threads (default: 2)\n"
            "  -p, --prompt N    prompt tokens, one batch (default: 128)\n"
            "  -n, --decode N    decode steps (default: 32)\n"
            "  -r, --reps N      repeat prompt and decode N times, report the best (default: 3)\n"
            "      --kv T        KV cache type f32 or f16 (default: f16)\n"
            "      --bw GB/s     skip measuring memory bandwidth and use this figure\n"
            "      --kernels V   CPU kernel variant: auto, scalar, avx2, avx512, avx512vnni (as [tune]\n"
            "                    cpu_kernels of pinfer.conf(5); default: auto, the best the CPU runs)\n"
            "  -h, --help        this text\n");
}

int main(int argc, char **argv)
{
    enum { O_KV = 256, O_BW, O_KERNELS };
    static const struct option opts[] = {
        {"threads", 1, 0, 't'}, {"prompt", 1, 0, 'p'}, {"decode", 1, 0, 'n'}, {"reps", 1, 0, 'r'},
        {"kv", 1, 0, O_KV},     {"bw", 1, 0, O_BW},     {"kernels", 1, 0, O_KERNELS}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0},
    };
    struct bench_opts bo = {2, 128, 32, 3, PI_TYPE_F16, 0.0};
    int c, rc = 0;
    pi_log_set_program("pi-bench-forward");
    while ((c = getopt_long(argc, argv, "t:p:n:r:h", opts, NULL)) != -1) {
        switch (c) {
        case 't': bo.threads = atoi(optarg); break;
        case 'p': bo.n_prompt = atoi(optarg); break;
        case 'n': bo.n_decode = atoi(optarg); break;
        case 'r': bo.reps = atoi(optarg); break;
        case O_KV:
            if (!pi_type_from_name(optarg, &bo.kv_type)) bo.kv_type = PI_TYPE_COUNT;
            break;
        case O_BW: bo.bw = atof(optarg); break;
        case O_KERNELS: {
            struct pi_tune t = {0};
            char kv[64], err[160];
            snprintf(kv, sizeof kv, "tune.cpu_kernels=%s", optarg);
            if (pi_tune_set(&t, kv, "--kernels", err, sizeof err) != 0) {
                fprintf(stderr, "pi-bench-forward: %s\n", err);
                return 2;
            }
            pi_kernels_use(pi_kernels_of_tune(&t));
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind >= argc || bo.threads < 1 || bo.n_prompt < 1 || bo.n_decode < 1 || bo.reps < 1 ||
        (bo.kv_type != PI_TYPE_F32 && bo.kv_type != PI_TYPE_F16)) {
        usage(stderr);
        return 2;
    }
    if (bo.bw <= 0.0) {
        pi_pool_t *pool = pi_pool_new(bo.threads);
        bo.bw = measure_bw(pool);
        pi_pool_destroy(&pool);
        printf("memory read bandwidth, %d threads: %.1f GB/s\n", bo.threads, bo.bw);
    }
    for (int i = optind; i < argc; i++) rc |= bench_model(argv[i], &bo);
    return rc;
}
