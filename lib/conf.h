/*
 * lib/conf.h - pinfer's configuration: the INI file (pinfer.conf(5)) and its command-line overrides.
 *
 * Every key lives in a table (lib/conf.c) with its section, type, default, bounds and help text;
 * the parser, the `--help` output, the man page and the defaults all come from that one table. A
 * value is set, in increasing priority: built-in default, config file, command line. Any error (unknown
 * section or key, bad value, out of range) is one line naming the file, line and key, and the caller
 * exits non-zero before anything is started.
 */
#ifndef PI_CONF_H
#define PI_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

enum pi_gpu_backend { PI_GPU_NONE = 0, PI_GPU_HOST = 1, PI_GPU_CUDA = 2 };
enum pi_activation_cfg { PI_ACT_AUTO = 0, PI_ACT_CFG_SILU = 1, PI_ACT_CFG_RELU = 2, PI_ACT_CFG_DRELU = 3 };
/* [model] check_tensors: how much of the model file is read for NaN and infinity at load, with the
 * values of model/tensor-check.h's enum pi_tensor_check (lib/ cannot include it; the coordinator
 * asserts they agree). */
enum pi_check_tensors_cfg { PI_CHECK_TENSORS_CFG_SAMPLED = 0, PI_CHECK_TENSORS_CFG_FULL = 1 };

/* [tune] cuda_matvec: how the cuda backend's one-token products take x. AUTO quantises x to 8 bits
 * for quantised weights of at least 12 Mi elements (kernels/cuda/matvec-q8.cu), F32 keeps x in float
 * for every product (float precision; slower on 7B-class models). Q8 (x in 8 bits for every quantised
 * weight) is not in the table: it lost on both models measured and is kept for the tests of the q8
 * kernels' paths on small models only. */
enum pi_tune_cuda_matvec { PI_TUNE_CUDA_MATVEC_AUTO = 0, PI_TUNE_CUDA_MATVEC_F32 = 1, PI_TUNE_CUDA_MATVEC_Q8 = 2 };

/* [tune] cpu_kernels: the CPU kernel variant of every process (kernels/cpu/dispatch.h): AUTO the best
 * this CPU runs, else that variant (enum pi_kernel_isa + 1), clamped with a warning to what the CPU
 * runs. The variants give the same results within float rounding. */
enum pi_tune_cpu_kernels {
    PI_TUNE_CPU_KERNELS_AUTO = 0,
    PI_TUNE_CPU_KERNELS_SCALAR = 1,
    PI_TUNE_CPU_KERNELS_AVX2 = 2,
    PI_TUNE_CPU_KERNELS_AVX512 = 3,
    PI_TUNE_CPU_KERNELS_AVX512VNNI = 4,
    PI_TUNE_CPU_KERNELS_AMX = 5,
};

/* [tune] prompt_stream: where a hybrid placement's prompt steps compute their cold FFN neurons
 * (compute/stream-policy.h): AUTO by the cost model (the layer's weights streamed to the device when
 * that is modelled faster than the CPU workers), OFF always on the CPU workers, ON always streamed
 * (a prompt step: some sequence has two or more rows in it; decode steps never stream). */
enum pi_tune_prompt_stream { PI_TUNE_PROMPT_STREAM_AUTO = 0, PI_TUNE_PROMPT_STREAM_OFF = 1, PI_TUNE_PROMPT_STREAM_ON = 2 };

/* [tune] cpu_pack: whether the CPU products keep 16-row packed copies of the weights they read densely
 * (kernels/cpu/rows16.h; the in-process engine's matrices, a CPU worker's dense slices): AUTO where the
 * kernel variant has a packed kernel for the type and the memory is available, OFF never (the file's
 * rows: less memory, slower products). */
enum pi_tune_cpu_pack { PI_TUNE_CPU_PACK_AUTO = 0, PI_TUNE_CPU_PACK_OFF = 1 };
/* [tune] cuda_hot_thresholds: whether the cuda backend applies a SwiGLU model's activation thresholds to its
 * hot neurons (gate first); off keeps them dense (doc/thresholds.md, the H100's figures) */
enum pi_tune_cuda_hot_thresholds { PI_TUNE_CUDA_HOT_THRESHOLDS_OFF = 0, PI_TUNE_CUDA_HOT_THRESHOLDS_ON = 1 };
/* [tune] down_t: the layout of the CPU workers' and the single process's transposed down rows
 * (model/model.h, pi_model_opts.down_t_grouped): F16 (each weight rounded to f16, 2 bytes a weight) or GROUPED (a Q4_0
 * or Q8_0 file's own quants and scales, exact; other types stay f16) */
enum pi_tune_down_t { PI_TUNE_DOWN_T_F16 = 0, PI_TUNE_DOWN_T_GROUPED = 1 };

/* [sparsity] mode: AUTO is safe for a ReLU model with predictors, else off; the others as
 * compute/predictor.h's enum pi_sparsity (off, safe, aggressive), one more than its value. */
enum pi_sparsity_cfg { PI_SPARSITY_CFG_AUTO = 0, PI_SPARSITY_CFG_OFF = 1, PI_SPARSITY_CFG_SAFE = 2, PI_SPARSITY_CFG_AGGRESSIVE = 3 };

/* The [sparsity] section (doc/predictors.md, "Runtime"): handed by the coordinator to the GPU worker as
 * `--set sparsity.KEY=VALUE`, with mode resolved (never auto there). */
struct pi_sparsity_conf {
    enum pi_sparsity_cfg mode; /* [sparsity] mode */
    int64_t recall_every;      /* [sparsity] recall_every: measure the predictors' recall every Nth step; 0 = never */
};

/* The performance choices: the [tune] section of the table (lib/conf.c, pinfer.conf(5)), handed by the
 * coordinator to the workers (`--set tune.KEY=VALUE` on their command lines) and by the GPU worker to
 * its backend (struct pi_backend_opts). Zero is every default. */
struct pi_tune {
    enum pi_tune_cuda_matvec cuda_matvec; /* [tune] cuda_matvec */
    enum pi_tune_cpu_kernels cpu_kernels; /* [tune] cpu_kernels */
    int64_t batch;                        /* [tune] batch: tokens per step, 1..PI_TUNE_BATCH_MAX; 0 = the default */
    enum pi_tune_prompt_stream prompt_stream; /* [tune] prompt_stream */
    enum pi_tune_cpu_pack cpu_pack;           /* [tune] cpu_pack */
    int64_t worker_spin_us;                   /* [tune] worker_spin_us: a CPU worker's idle spin, us */
    enum pi_tune_cuda_hot_thresholds cuda_hot_thresholds; /* [tune] cuda_hot_thresholds */
    enum pi_tune_down_t down_t;                           /* [tune] down_t */
    /* Test hooks, not in the table (never set from a configuration): the cuda backend launches its
     * decode kernels without programmatic dependent launch (the PDL identity check of
     * test-backend-cuda), and runs decode attention in three launches as it does beyond 1024 heads
     * (covers the merge that quantises the output projection's x on small models). */
    bool cuda_no_pdl;
    bool cuda_att_unfused;
    bool cuda_att_no_seqs; /* decode steps of several sequences take the per-sequence attention launches
                              (the bit-identity check of pi_cuda_attention_seqs in test-backend-cuda) */
};

/* [tune] batch: the most tokens one step of an engine evaluates (a prompt goes in chunks of this many;
 * in server mode, the running sequences' next tokens and chunks of new prompts together). Sizes the step
 * and exchange segments, the workers' scratch and the VRAM plan's activations. */
#define PI_TUNE_BATCH_DEFAULT 512
#define PI_TUNE_BATCH_MAX 4096 /* ipc/step.h PI_STEP_MAX_TOKENS */

/* t's batch, the default where it is 0 (a zeroed struct). */
static inline int pi_tune_batch(const struct pi_tune *t) { return t->batch > 0 ? (int)t->batch : PI_TUNE_BATCH_DEFAULT; }

/* Plain data: the resolved configuration. Strings are owned by the struct (pi_config_free). */
struct pi_config {
    /* [model] */
    char *model_path;          /* GGUF file; required */
    enum pi_activation_cfg activation; /* auto: from the file (pinfer.ffn_activation, format default) */
    int64_t ctx_len;           /* context length per sequence; 0 = the model's, at most 4096 */
    char *sidecar_path;        /* the model's sidecar; empty = MODEL.pinfer.gguf beside it, when present */
    char *calib_text;          /* [model] calibration_text: the first-load threshold calibration's text; empty = bundled */
    char *chat_template;       /* chat format name (text/chat.h); empty = recognised from the file */
    enum pi_check_tensors_cfg check_tensors; /* NaN/Inf check at load: sampled or full */
    /* [run] */
    char *run_dir;             /* where sockets live; created 0700 */
    /* [control] */
    int64_t max_connections;   /* control connections held at once; past it the listener pauses */
    char *control_endpoint;    /* ZeroMQ endpoint of the control socket; empty = ipc://RUN_DIR/control */
    char *control_token_file;  /* the shared token's file; tcp:// needs it (ipc/control-stream.h) */
    /* [http] */
    char *http_listen;         /* HOST:PORT of the HTTP API, or "off" */
    char *http_api_key_file;   /* API keys, one per line; empty = none (loopback only) */
    uint64_t http_max_body;    /* bytes */
    int64_t http_max_connections;
    /* [server] */
    int64_t server_queue;      /* requests waiting for a slot, at most */
    int64_t server_queue_reserve; /* the queue's last places, for clients with fewer waiting than this */
    int64_t server_max_tokens; /* tokens per request, at most; 0 = the context */
    int64_t server_timeout;    /* seconds from arrival to end; 0 = none */
    int64_t server_restart_max;    /* engine restarts within server_restart_window, at most; 0 = no cap */
    int64_t server_restart_window; /* seconds */
    /* [cpu] */
    int64_t cpu_workers;       /* 0 = one per NUMA node */
    int64_t cpu_threads;       /* threads per CPU worker; 0 = the node's cores */
    /* [gpu] */
    enum pi_gpu_backend gpu_backend;
    double hot_fraction;       /* fraction of each layer's FFN neurons kept by the GPU worker, 0..1 */
    uint64_t vram_budget;      /* bytes; 0 = use hot_fraction instead */
    int64_t gpu_device;
    char *gpu_index;           /* PowerInfer .gpuidx file with the hot neurons of every layer; empty = none */
    int64_t gpu_stall_ms;      /* ms the GPU worker's main thread may go without progress (ipc/link.h) */
    /* [generate] */
    int64_t n_predict;
    double temperature;
    int64_t top_k;
    double top_p;
    double min_p;
    double repeat_penalty;
    double presence_penalty;   /* OpenAI's, -2..2 */
    double frequency_penalty;  /* OpenAI's, -2..2 */
    int64_t seed;              /* -1 = from the clock */
    /* [server] */
    int64_t server_slots;      /* sequences served at once (continuous batching), 1..256 */
    /* [log] */
    char *log_level;
    /* [placement]: the speeds the placement solver models (compute/placement-solve.h) */
    double place_gpu_gbs;      /* device read bandwidth, GB/s */
    double place_cpu_gbs;      /* all CPU workers' read bandwidth, GB/s; 0: measured at start-up */
    double place_exchange_us;  /* one layer's exchange round trip, us */
    /* [sparsity] */
    struct pi_sparsity_conf sparsity;
    /* [tune] */
    struct pi_tune tune;
};

/* The default run directory into out (len bytes, at least 32): "$XDG_RUNTIME_DIR/pinfer" when that
 * variable names an absolute directory of this user (short enough for socket paths under it), else
 * "/tmp/pinfer-$UID". pi-coordinator's [run] dir and pi-ctl's default endpoint both come from it. */
void pi_run_dir_default(char *out, size_t len);

/* Fill cfg with the built-in defaults (allocates the default strings). 0 or -PI_ERR_NOMEM. */
int pi_config_defaults(struct pi_config *cfg);

/* Free the strings of cfg and zero it. Accepts a zeroed struct. */
void pi_config_free(struct pi_config *cfg);

/* Parse the INI file path into cfg (keys override what is there). On error returns -PI_ERR_* and
 * writes "FILE:LINE: [section] key: reason" into err. */
int pi_config_load_file(struct pi_config *cfg, const char *path, char *err, size_t errlen);

/* Set one key from text, as "section.key" (e.g. "gpu.hot_fraction", "0.5"). origin names where the
 * value came from for the error message ("command line"). 0 or -PI_ERR_* with err filled. */
int pi_config_set(struct pi_config *cfg, const char *dotted_key, const char *value, const char *origin,
                  char *err, size_t errlen);

/* t = every [tune] key at its default (a worker's starting point before its --set options). 0 or
 * -PI_ERR_NOMEM. */
int pi_tune_defaults(struct pi_tune *t);

/* Set one [tune] key of t from "tune.KEY=VALUE", as the workers take their tuning on the command line
 * (`--set tune.KEY=VALUE`, which pi-coordinator adds from its own configuration): the table's checks,
 * and only keys of [tune] (a worker takes its other settings as named options). origin names the
 * source for the error. 0 or -PI_ERR_INVAL / -PI_ERR_RANGE with err filled ("ORIGIN: [tune] KEY: ..."). */
int pi_tune_set(struct pi_tune *t, const char *assignment, const char *origin, char *err, size_t errlen);

/* The same for one key of [sparsity] ("sparsity.KEY=VALUE"), as the GPU worker takes them. */
int pi_sparsity_conf_set(struct pi_sparsity_conf *s, const char *assignment, const char *origin, char *err, size_t errlen);

/* Check cross-key constraints (model path present, ...). 0 or -PI_ERR_INVAL with err filled. */
int pi_config_validate(const struct pi_config *cfg, char *err, size_t errlen);

/* Parse a whole decimal integer s (optional sign, nothing after the digits) within [lo, hi].
 * 0 and *out, -PI_ERR_INVAL when s is not an integer, -PI_ERR_RANGE when it is outside [lo, hi] or
 * does not fit 64 bits. Used for config values and the workers' command lines alike. */
int pi_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out);

/* Parse a byte size with an optional K/M/G/T suffix (powers of 1024, optional trailing "iB"/"B").
 * 0 or -PI_ERR_INVAL / -PI_ERR_RANGE. */
int pi_parse_bytes(const char *s, uint64_t *out);

/* One entry of the key table, for --help and documentation. */
struct pi_config_key_info {
    const char *section;
    const char *key;
    const char *default_text; /* as written in pinfer.conf */
    const char *help;
};
/* Number of keys, and key i (0 <= i < count). */
size_t pi_config_key_count(void);
const struct pi_config_key_info *pi_config_key(size_t i);

/* Key i's value in cfg as pinfer.conf would spell it (the text pi_config_set takes back) into buf.
 * Returns the bytes that would be written (snprintf semantics); 0 and "" for i out of range. */
size_t pi_config_key_value(const struct pi_config *cfg, size_t i, char *buf, size_t len);

/* Write the resolved configuration as INI text (for logs and `pi-ctl status`). Returns bytes that
 * would be written (snprintf semantics). */
size_t pi_config_format(const struct pi_config *cfg, char *buf, size_t len);

#endif
