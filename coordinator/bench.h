/*
 * coordinator/bench.h - pi-bench, pinfer's one benchmark program: what its files share.
 *
 * pi-bench lives in coordinator/ because its main measurement runs the coordinator's own engines
 * (coordinator/engine.h: the in-process forward pass for --gpu-backend none, the process pipeline
 * otherwise), and a program folder may not include another's. Its files:
 *   bench.c           main(), the command line, --help
 *   bench-model.c     the llama-bench tests (ppN, tgN) through an engine, and the md/csv/json output
 *   bench-kernels.c   --kernels matvec|matmul|neurons|attention: CPU kernels against this machine's memory bandwidth
 *   bench-exchange.c  --exchange: the per-layer exchange round trip between processes
 *   bench-cuda.c      --cuda-kernels: the CUDA kernels' bandwidth and GEMM (built with CUDA only)
 * Each mode prints its table on stdout and returns an exit status (0, 1 on a runtime failure);
 * usage errors are caught by bench.c before any mode starts.
 */
#ifndef PI_COORDINATOR_BENCH_H
#define PI_COORDINATOR_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/conf.h"
#include "lib/types.h"

#define PI_BENCH_MAX_LIST 32 /* values of one list option (-p 16,32,... or repeated) */

enum pi_bench_format { PI_BENCH_MD = 0, PI_BENCH_CSV = 1, PI_BENCH_JSON = 2 };

/* A list option: -p 64,128 -p 512 gives {64, 128, 512}. */
struct pi_bench_list {
    int64_t v[PI_BENCH_MAX_LIST];
    int n;
};

struct pi_bench_dlist {
    double v[PI_BENCH_MAX_LIST];
    int n;
};

struct pi_bench_opts {
    /* the llama-bench tests */
    const char *models[PI_BENCH_MAX_LIST]; /* -m: GGUF paths or gen:PRESET[-TYPE][-ACT] (argv strings) */
    int n_models;
    struct pi_bench_list n_prompt; /* -p: pp tests; 0 entries are skipped */
    struct pi_bench_list n_gen;    /* -n: tg tests; 0 entries are skipped */
    struct pi_bench_list threads;  /* -t: CPU threads of every process */
    int reps;                      /* -r */
    enum pi_bench_format format;   /* -o */
    bool warmup;                   /* off with --no-warmup */
    double bw_gbs;                 /* --bw: > 0 the figure, < 0 measure it, 0 no GB/s columns */
    int64_t ctx;                   /* --ctx: 0 = the largest test of the run */
    /* placement: every combination of these lists is one engine */
    enum pi_gpu_backend backends[3]; /* --gpu-backend */
    int n_backends;
    struct pi_bench_dlist hot_fraction;  /* --hot-fraction */
    uint64_t vram_budget;                /* --vram-budget (0: the hot fraction decides) */
    const char *gpu_index;               /* --gpu-index: PowerInfer .gpuidx hot sets, or NULL */
    struct pi_bench_list cpu_workers;    /* --cpu-workers (0: one per NUMA node) */
    struct pi_bench_list sparsity;       /* --sparsity: enum pi_sparsity_cfg values (default auto) */
    bool sparsity_given;                 /* --sparsity given: the markdown table shows its columns */
    const char *run_dir;                 /* --run-dir, or NULL: the configuration's default */
    const char *log_level;               /* --log-level */
    const char *sets[PI_BENCH_MAX_LIST]; /* --set tune.KEY=VALUE or sparsity.KEY=VALUE (argv strings, checked) */
    int n_sets;
    struct pi_tune tune; /* those settings applied to the defaults (this process's kernels) */
    /* the kernel and IPC modes */
    int64_t rows, cols;                /* --rows, --cols: the matrix of the kernel modes */
    enum pi_type types[PI_TYPE_COUNT]; /* --types (n_types 0: the mode's default set) */
    int n_types;
    enum pi_type down_type;      /* --down-type: ffn_down_t of --kernels neurons (default F16) */
    int64_t iters;               /* --iters: exchange round trips / CUDA launches per trial */
    int64_t spin;                /* --spin: exchange spin before sleeping */
    int64_t batch;               /* --batch: exchange rows per step */
    struct pi_bench_list n_embd; /* --n-embd: exchange widths */
};

/* The llama-bench table over every model x placement x threads, pp and tg tests, printed row by row
 * as the tests finish. Returns 0, or 1 when a model or an engine failed (the other rows are still
 * printed, the failure named on stderr). */
int pi_bench_models(const struct pi_bench_opts *b);

/* Parse a generated-model spec "gen:PRESET[-TYPE][-ACT]" (gen:7b, gen:1b-q8_0-relu) into g (zeroed
 * here; type Q4_0 and output Q8_0 unless TYPE says otherwise, activation from the file's default,
 * seed 1). 0, or -PI_ERR_INVAL with one line in err. Specs not starting with "gen:" are GGUF paths. */
struct pi_model_gen;
int pi_bench_gen_parse(const char *spec, struct pi_model_gen *g, char *err, size_t errlen);

/* --kernels matvec: streaming read bandwidth, then pi_matvec GB/s per type on 1 and N threads (N: the
 * largest -t), best and median call, as a share of the bandwidth. 0 or 1. */
int pi_bench_kernels_matvec(const struct pi_bench_opts *b);

/* --kernels neurons: pi_ffn_neurons and pi_ffn_neurons_batch GB/s of rows read on 1 and N threads
 * (every neuron, a random 10%, a batch), against the streaming read. 0 or 1. */
int pi_bench_kernels_neurons(const struct pi_bench_opts *b);

/* --kernels matmul: pi_matmul over -p tokens against one vec_dot per output, one thread. 0 or 1. */
int pi_bench_kernels_matmul(const struct pi_bench_opts *b);

/* --kernels attention: pi_attn_group (a kv head's queries together) over an f16 cache of -p positions, head_dim 64 and 128, every
 * kernel variant this CPU runs, one thread: ns per position and head. 0 or 1. */
int pi_bench_kernels_attention(const struct pi_bench_opts *b);

/* The best streaming read bandwidth of this machine in GB/s (1e9 bytes) on `threads` threads: a
 * 1 GiB buffer read in 64 MiB slices, `passes` passes, best slice. 0 when it could not be measured. */
double pi_bench_read_bandwidth(int threads, int passes);

/* --exchange: publish -> every partial posted -> merged, median/p99/mean microseconds. 0 or 1. */
int pi_bench_exchange(const struct pi_bench_opts *b);

/* --cuda-kernels: copy bandwidth, matvec variants, prompt GEMM, hot FFN, decode attention on device 0.
 * 1 when there is no device or a CUDA call failed. Only in builds with CUDA (PI_HAVE_CUDA). */
int pi_bench_cuda(const struct pi_bench_opts *b);

#endif
