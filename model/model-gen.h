/*
 * model/model-gen.h - random-weight models with real shapes (tests, benchmarks, tools/pi-gen-model):
 * a description of the file to write, and the writer, with models of known locality and test hooks
 * for the loader's checks (model/model.h binds what is written here; model/model-gen.c writes it).
 */
#ifndef PI_MODEL_MODEL_GEN_H
#define PI_MODEL_MODEL_GEN_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "lib/types.h"
#include "lib/weights.h"

/* What pi_model_gen_write produces: a llama-family GGUF with every tensor model/model.h binds, weights
 * uniform with standard deviation 1/sqrt(cols) (so activations stay O(1) through the layers), norm
 * weights near 1, and no tokenizer. Zero fields take the defaults noted. */
struct pi_model_gen {
    const char *arch;           /* "llama" */
    int n_vocab, n_embd, n_layer, n_ff, n_head, n_head_kv; /* required, except n_head_kv (= n_head) */
    int n_ctx;                  /* context_length (2048) */
    enum pi_type type;          /* weight matrices (F32 when 0) */
    enum pi_type embd_type;     /* token_embd (0: as type) */
    enum pi_type out_type;      /* output.weight (0: as type) */
    enum pi_ffn_act act;        /* written as pinfer.ffn_activation unless DEFAULT */
    bool tied;                  /* no output.weight */
    /* also write blk.N.ffn_down_t.weight, the transpose of ffn_down's values (each quantised along its
     * own rows; pinfer's own files: both tensors) */
    bool down_t;
    int pred_rank;              /* > 0: write blk.N.fc1/fc2 predictors of this rank */
    /* NULL, or a GGUF (a llama.cpp vocabulary file, another model) whose tokenizer.* keys are copied,
     * so that engines which need a tokenizer (llama.cpp, PowerInfer) load the model; its
     * tokenizer.ggml.tokens must have n_vocab entries (pi_model_gen_vocab_size reads the count) */
    const char *vocab_from;
    uint64_t seed;              /* weights are a function of the seed (and not of n_threads) */
    int n_threads;              /* rows generated in parallel on this many threads; 0: every usable CPU */
    /* Known locality (doc/locality.md, "Models with known locality"): ReLU neurons that fire, over
     * random tokens, at designed per-neuron rates (pi_model_gen_locality_freq) with this mean share of
     * inactive neurons per layer (0: 0.9) and this share of neurons carrying 80% of the activations
     * (0: 0.26). Channel n_embd - 1 of the residual stream holds a constant that the gate weights turn
     * into a per-neuron bias. Requires act relu (set when DEFAULT) and n_embd a multiple of 32, >= 64. */
    bool locality;
    float sparsity;
    float hot_share;
    /* With locality, > 0: every layer's ffn_gate is U V with V (gate_rank, n_embd) (plus the constant
     * channel's column), so whether a neuron fires is a function of gate_rank numbers of its input:
     * predictors of rank about 2 gate_rank can learn it (a stand-in for the predictability of real
     * models' activations; doc/locality.md). 0: full-rank random gates, whose firing no small
     * predictor can foresee beyond each neuron's rate. */
    int gate_rank;
    /* With locality and gate_rank > 0: the predictors blk.N.fc1/fc2 are written from the gate's own
     * factors, rank 2 gate_rank + 1 (pred_rank must be that): fc1 = [V w; -V w; e_c], fc2 = [U, -U, g_c w_c]
     * (w the ffn_norm weights), so that fc2 relu(fc1 h) is rms(h) times the gate's pre-activation up to the
     * gate's quantisation (relu(a) - relu(-a) = a; h_c = K > 0), read from the residual stream h before
     * the norm as a model file's predictors are (PowerInfer's llama graph feeds them ffn_inp). For speed
     * measurements: a predictor that foresees every firing neuron, the same for several engines; they
     * draw nothing from the main stream, so every other tensor is the same with and without them. */
    bool pred_exact;
    /* PowerInfer's layout: magic "PWRI", and blk.N.ffn_down_t.weight *instead of* ffn_down (PowerInfer
     * refuses a file with both; down_t implied). With pred_rank, its fc1/fc2 predictors. The random
     * stream is the same with and without it: the same seed gives the same weights in either layout. */
    bool powerinfer;
    /* Test hooks for the loader's checks: leave the tensor `omit` out; write `reshape` with one row
     * too many; write `bad_key` (a full key name, u32) with the value bad_value instead of the real
     * one, or in addition to the keys written when it is not one of them. */
    const char *omit;
    const char *reshape;
    const char *bad_key;
    uint32_t bad_value;
    /* More hooks: write the float key `bad_fkey` (a full key name) as bad_fvalue; write tensor
     * `retype` as type retype_as (zero bytes); write `nan_norm` (a norm vector) as NaN, +Inf, ...;
     * n_tokens > 0: write a tokenizer.ggml.tokens array of n_tokens strings. */
    const char *bad_fkey;
    float bad_fvalue;
    const char *retype;
    enum pi_type retype_as;
    const char *nan_norm;
    int n_tokens;
    /* write the string key `bad_skey` as the bad_slen bytes of bad_svalue (NUL bytes allowed) */
    const char *bad_skey;
    const char *bad_svalue;
    size_t bad_slen;
};

/* The designed activation rate of each neuron of layer il of a locality model g: freq (n_ff), the
 * share of random tokens with the neuron's gate output > 0. 0, or -PI_ERR_INVAL (logged) when the
 * sparsity and hot share cannot be met (sparsity in (0, 1); hot share between the least concentration
 * the rates' cap of 0.999 allows and 0.8, the share of uniform rates). */
int pi_model_gen_locality_freq(const struct pi_model_gen *g, int il, float *freq);

/* Write the model described by g to path (atomically, through the GGUF writer). 0 or -PI_ERR_*. */
int pi_model_gen_write(const struct pi_model_gen *g, const char *path);

/* Set g's shape (n_embd, n_ff, n_layer, n_head, n_head_kv, n_vocab) from a named preset: "7b"
 * (4096, 11008, 32, 32, 32, 32000: llama-2 7B's shapes), "1b" (2048, 5632, 22, 32, 4, 32000),
 * "demo" (256, 1024, 8, 8, 4, 8192), "tiny" (64, 256, 4, 4, 2, 32000). Other fields untouched.
 * 0, or -PI_ERR_NOTFOUND for an unknown name. pi_model_gen_preset_names() lists them for messages. */
int pi_model_gen_preset(const char *name, struct pi_model_gen *g);
const char *pi_model_gen_preset_names(void);

/* *n = the number of entries of tokenizer.ggml.tokens in the GGUF at path (for pi_model_gen's
 * vocab_from). 0, or a negative pi_err with the reason in err. */
int pi_model_gen_vocab_size(const char *path, int *n, char *err, size_t errlen);

#endif
