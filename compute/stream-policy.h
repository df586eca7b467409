/*
 * compute/stream-policy.h - where a hybrid placement's prompt step computes its cold FFN neurons: on
 * the CPU workers through the exchange (the layer loop's usual path), or on the device from the
 * layer's whole FFN weights streamed over PCIe (pi_backend_ops.ffn_stream, compute/backend.h). One
 * decision per step, made by the GPU worker's layer loop (gpu-worker/loop.c) from [tune] prompt_stream
 * (lib/conf.h) and, for auto, the cost model below (doc/pipeline.md, "Prompt streaming").
 *
 * DESIGN: the model compares two times for the step's n rows over the layers with cold neurons
 * (the layers whose neurons are all hot never use the exchange and are not streamed):
 *
 *   stream = r (pack_first + sum over those layers of max(pack_il, copy_il, compute))
 *   cpu    = sum over those layers of n * cpu_ns_tok
 *
 *   pack_il = bytes_il / pack_bps, copy_il = bytes_il / copy_bps, compute = 6 n_embd n_ff n / PI_STREAM_GPU_FLOPS
 *
 * The three are the stages of a pipeline (compute/backend-cuda.c, "Prompt streaming"): the host packs
 * layer il + 2 into staging while layer il + 1's copy and layer il's products run, waiting only on the
 * copy that last read the staging it refills, so in steady state a layer costs the slowest stage. The
 * first layer's pack precedes its copy with nothing to hide it (pack_first: the first layer with cold
 * neurons). bytes_il: the file's bytes of layer il's ffn_gate, ffn_up and ffn_down; copy_bps and
 * pack_bps: the backend's rates, measured once at its start (ops.stream_rates; copy_bps 0: no device
 * link, as the host backend: auto then never streams; pack_bps 0: no packing stage). cpu_ns_tok: the
 * hybrid FFN's time per token and layer, publish to partials merged (the hot neurons computed
 * meanwhile), measured by the loop on the prompt steps that went through the exchange with at least
 * PI_STREAM_MEASURE_ROWS rows, a running mean (half old, half new); before the first such step, the cold
 * neurons' 6 n_embd n_cold flops per token at PI_STREAM_CPU_FLOPS. Once a step has streamed, the loop
 * notes its measured time (pi_stream_policy_note_stream) and the stream side is scaled by r, the running
 * mean of measured / modelled (st_ratio; 1 until measured), so that start-up rates that were too optimistic do not keep
 * the decision wrong. auto streams the step when stream < cpu. Decode steps (no sequence with two rows
 * in the step) never stream: their weights would cross PCIe for one token each.
 *
 * Whether a configuration may stream at all is pi_stream_policy_mode, the one rule that the loop, the
 * cuda backend's plan (compute/backend-cuda-plan.c) and the coordinator's placement all apply: never
 * with predictors or activation thresholds, whose masks and counts are the CPU workers'.
 *
 * Plain data, no threads: owned and driven by the loop's one thread.
 */
#ifndef PI_COMPUTE_STREAM_POLICY_H
#define PI_COMPUTE_STREAM_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/conf.h"
#include "model/model.h"

/* The device's modelled rate on a dense FFN layer's three GEMMs, flop/s: an H100 computed a 512-token
 * 7B-class dense FFN layer (6 x 4096 x 11008 x 512 = 138 Gflop) in about 1 ms; this is set lower, so
 * that the model errs towards the CPU where the two are close. */
#define PI_STREAM_GPU_FLOPS 1e14
/* The CPU workers' modelled rate on their cold neurons before a measurement, flop/s: a 7B Q4_0 at half
 * offload ran prompts at about 100 tok/s on a 16-core host, 135 Mflop per token and layer in 0.3 ms. */
#define PI_STREAM_CPU_FLOPS 5e11
/* Rows from which a hybrid prompt step's layer times are taken as a measurement (fewer rows: the fixed
 * cost of a round trip dominates and would overstate the time per token). */
#define PI_STREAM_MEASURE_ROWS 16

struct pi_stream_policy {
    enum pi_tune_prompt_stream mode;
    int n_layer;
    bool *cold;        /* (n_layer): layer il has neurons on the CPU workers (n_hot < n_ff) */
    int n_cold;        /* such layers (none: nothing to stream) */
    uint64_t *bytes;   /* (n_layer): the file's bytes of layer il's ffn_gate, ffn_up, ffn_down */
    double flops_tok;  /* 6 n_embd n_ff: a dense FFN layer's flops per token */
    double copy_bps;   /* measured host-to-device copy, bytes/s; 0 = no device link */
    double pack_bps;   /* measured host packing into staging, bytes/s; 0 = no packing stage */
    int first;         /* the first layer with cold neurons (its pack is not hidden), -1 none */
    double cpu_ns_tok; /* the hybrid FFN's ns per token and cold layer: measured, or the default */
    bool measured;     /* cpu_ns_tok is a measurement */
    double st_ratio;   /* running mean of a streamed step's measured / modelled time; used when st_measured */
    bool st_measured;  /* some streamed step was measured (else the model's stream side is taken as it is) */
    /* what the loop did (the GPU worker's log at stop) */
    uint64_t n_steps;  /* steps streamed */
    uint64_t n_layers; /* layers streamed over all those steps */
};

/* The prompt-streaming mode a configuration really runs: off with predictors (a sparsity mode other
 * than off with predictors loaded) or with activation thresholds (a SwiGLU model's [sparsity] gates),
 * else asked ([tune] prompt_stream). The one rule for "may this configuration stream". */
enum pi_tune_prompt_stream pi_stream_policy_mode(enum pi_tune_prompt_stream asked, bool predictors, bool thresholds);

/* Set p up for m with n_hot[il] hot neurons per layer (borrowed for the call), in mode, over a copy
 * link of copy_bps bytes/s (0: none) with packing at pack_bps (0: no packing stage). 0 or
 * -PI_ERR_NOMEM. pi_stream_policy_free releases it. */
int pi_stream_policy_init(struct pi_stream_policy *p, const pi_model_t *m, const int64_t *n_hot,
                          enum pi_tune_prompt_stream mode, double copy_bps, double pack_bps);
void pi_stream_policy_free(struct pi_stream_policy *p);

/* Whether a step of n rows (seq, pos: each row's sequence and position) is a prompt step: some row
 * continues the row before it in the same sequence (a run of two or more tokens). */
bool pi_stream_policy_is_prompt(const int32_t *seq, const int32_t *pos, int n);

/* The modelled times of a step of n rows, in ns: streamed (scaled by st_ratio once measured), and
 * through the CPU workers. */
void pi_stream_policy_model(const struct pi_stream_policy *p, int n, double *stream_ns, double *cpu_ns);

/* Whether the step (n rows, seq, pos) streams its layers with cold neurons: never for a decode step,
 * in mode off or without a layer with cold neurons, always for a prompt step in mode on, by pi_stream_policy_model in auto. */
bool pi_stream_policy_decide(const struct pi_stream_policy *p, const int32_t *seq, const int32_t *pos, int n);

/* A hybrid layer of n rows took ns from publish to partials merged: folded into cpu_ns_tok when n is
 * at least PI_STREAM_MEASURE_ROWS. */
void pi_stream_policy_note(struct pi_stream_policy *p, int n, int64_t ns);

/* A streamed step of n rows took ns over its layers (every layer with cold neurons streamed): the ratio
 * of ns to the unscaled model's stream time is folded into st_ratio (half old, half new). */
void pi_stream_policy_note_stream(struct pi_stream_policy *p, int n, int64_t ns);

#endif
