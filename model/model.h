/*
 * model/model.h - the model description: a llama-family transformer bound from a validated GGUF file.
 *
 * pi_model_load() reads the hyper-parameters from the `<arch>.*` keys, looks every tensor up by name,
 * and checks its shape and type against those hyper-parameters, so that the forward pass and the
 * workers can index weights without further checks. A file whose tensors disagree with its metadata
 * is rejected with a message naming the tensor, the expected and the actual shape.
 *
 * Architectures: "llama" and "bamboo" (PowerInfer's sparse llama; same tensors). Shapes below are
 * written as (rows, cols) of the row-major matrix, i.e. (ne[1], ne[0]) in GGUF order: a weight
 * W (rows, cols) maps x (cols,) to W @ x (rows,). Weights point into the GGUF mapping, so the model
 * must not outlive the pi_gguf_t it was bound from (pi_model_open owns its file).
 *
 * The FFN is described neuron-wise: neuron i of layer l owns gate row i, up row i and down column i.
 * `ffn_down_t` holds the down weights transposed, one neuron per contiguous row: taken from the file
 * when it has PowerInfer's `blk.N.ffn_down_t.weight`, otherwise packed at load (see
 * pi_model_opts.down_t_type), so that any subset of neurons can be computed without gathering.
 * PowerInfer's own files carry `ffn_down_t` *instead of* `blk.N.ffn_down.weight` (its loader refuses
 * a file with both); for them `ffn_down` is built at load as the transpose of the file's `ffn_down_t`
 * (pi_layer.down_built), in memory the model owns, so that every user of a model finds both. Such an
 * ffn_down is not in the file: nothing may take its address for a file offset.
 */
#ifndef PI_MODEL_MODEL_H
#define PI_MODEL_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "model/gguf.h"
#include "model/tensor-check.h"
#include "lib/types.h"
#include "lib/weights.h"


/* Hyper-parameters. All counts are validated positive and consistent. */
struct pi_hparams {
    char arch[16];      /* "llama" or "bamboo" */
    int n_vocab;        /* rows of token_embd */
    int n_embd;         /* model width d */
    int n_layer;
    int n_ff;           /* FFN neurons per layer */
    int n_head;         /* query heads */
    int n_head_kv;      /* key/value heads (GQA: n_head % n_head_kv == 0) */
    int head_dim;       /* attention.key_length, default n_embd / n_head */
    int n_rot;          /* rope.dimension_count, default head_dim; even, <= head_dim */
    int n_ctx_train;    /* context_length (0 when absent) */
    float rms_eps;      /* attention.layer_norm_rms_epsilon (default 1e-5) */
    float rope_base;    /* rope.freq_base (default 10000) */
    enum pi_ffn_act act; /* resolved, never DEFAULT */
    bool has_sparse_threshold;
    float sparse_threshold; /* powerinfer.sparse_threshold, when present */
    enum pi_gguf_flavour flavour;
};


typedef struct pi_model pi_model_t;

struct pi_model {
    struct pi_hparams hp;
    struct pi_weight token_embd;  /* (n_vocab, d): row t is token t's embedding */
    const float *output_norm;     /* (d,) final RMSNorm weights (owned f32 copy) */
    struct pi_weight output;      /* (n_vocab, d): logits = output @ x; == token_embd when tied */
    bool tied;                    /* the file has no output.weight */
    struct pi_layer *layers;      /* (n_layer) */
    const pi_gguf_t *gguf;        /* the file the weights live in (borrowed unless opened here) */
    pi_gguf_t *owned_gguf;        /* set by pi_model_open */
    /* one allocation holding the transposed copies made at load: ffn_down_t rows packed from ffn_down,
     * and ffn_down built from the file's ffn_down_t (PowerInfer's files, pi_layer.down_built) */
    void *packed;
    size_t packed_bytes;
    void *rows16;                 /* anonymous mapping holding every 16-row packed copy (opts.rows16) */
    size_t rows16_bytes;
    /* opts.rows16 asked for copies that were not made (the memory was not available or the mapping
     * failed; a warning was logged): the products read the file's rows. For loaders that silence the
     * model's log during the load and must say it themselves. */
    bool rows16_declined;
    float *norms;                 /* one allocation holding every norm vector */
};

struct pi_model_opts {
    enum pi_ffn_act act;          /* PI_FFN_ACT_DEFAULT: `pinfer.ffn_activation`, then format default */
    /* Type of the packed ffn_down_t when the file has none (pi_model_down_t_type). PI_TYPE_COUNT (the
     * default from pi_model_opts_default) picks the down weights' own type for F32/F16/BF16 (an exact
     * transpose) and F16 for quantised down weights (within 2^-11 of each weight: the neuron kernel
     * then adds no rounding of its own; Q8_0 halves the copy's memory but requantising costs up to
     * half an 8-bit step per weight, +25% on an FFN's error, measured in doc/forward.md). The same
     * rule, with rows of n_ff elements, gives the type of an ffn_down built from the file's ffn_down_t
     * when the file has no ffn_down (PowerInfer's files). */
    enum pi_type down_t_type;
    /* skip packing ffn_down_t (metadata-only users: the coordinator, tools). An ffn_down missing from
     * the file is built all the same: the dense products and the backends read it. */
    bool no_down_t;
    /* a process that computes no FFN (the coordinator of a pipeline, pi-place): an ffn_down missing from
     * the file (PowerInfer's layout) is described (type, shape, down_built) but not built, its data NULL,
     * which saves the copy (5.7 GB for a 13B-shaped Q4_0 file, as f16) and its transposition */
    bool no_down_build;
    int n_threads;                /* threads for packing (0: every online CPU; 1: this thread) */
    /* Also copy the dense matrices (attention, FFN, output) that the active CPU kernel variant has a
     * 16-row packed kernel for (kernels/cpu/rows16.h: Q4_0, Q8_0, Q4_K, Q5_K and Q6_K on AVX512-VNNI,
     * rows a multiple of 16) into that layout, for the in-process CPU forward pass; each copy is about as
     * large as its matrix (the K-quants' 1-3% more). Off by default: programs that run the dense
     * products on the CPU turn it on. */
    bool rows16;
    /* How much of every tensor of the file is read for NaN and infinity before the model is bound
     * (model/tensor-check.h): sampled (the default, a few windows per tensor) or full. */
    enum pi_tensor_check check;
};

/* Defaults: activation from the file, automatic down_t type, packing on, the sampled tensor check. */
void pi_model_opts_default(struct pi_model_opts *o);

/* The type ffn_down_t is packed in for down weights of type down with rows of d elements, given the
 * option opt (see down_t_type; PI_TYPE_COUNT: automatic; a type whose blocks do not divide d: F16).
 * Exported so that CPU workers packing their own neurons' rows get the same bits. The loader also types
 * an ffn_down built from a file's ffn_down_t by it (down: ffn_down_t's type, d: n_ff). */
enum pi_type pi_model_down_t_type(enum pi_type opt, enum pi_type down, int64_t d);

/* Bind a model from g (borrowed: it must outlive the model). opts may be NULL (defaults).
 * Returns 0 and *out, or a negative enum pi_err with *out NULL and err (if not NULL) holding one line,
 * e.g. "blk.2.attn_k.weight: shape (64, 64), expected (32, 64) (kv_dim, n_embd)", or -PI_ERR_FORMAT
 * for a NaN or infinity the tensor check (opts->check) found. A layer needs blk.N.ffn_down.weight or
 * PowerInfer's blk.N.ffn_down_t.weight (then ffn_down is built from it, logged at info level). */
int pi_model_load(const pi_gguf_t *g, const struct pi_model_opts *opts, pi_model_t **out,
                  char *err, size_t errlen);

/* Open path with pi_gguf_open and bind it; the model owns the file. */
int pi_model_open(const char *path, const struct pi_model_opts *opts, pi_model_t **out,
                  char *err, size_t errlen);

/* Free the model (and its file when it owns it). Accepts NULL; NULLs the caller's pointer. */
void pi_model_destroy(pi_model_t **m);

/* The context length used when none is configured: the file's context_length capped at
 * PI_MODEL_DEFAULT_CTX (as llama.cpp does: a 128K-context file would otherwise size a KV cache of
 * tens of GiB), or 2048 when the file has none. */
#define PI_MODEL_DEFAULT_CTX 4096
static inline int pi_model_default_ctx(const pi_model_t *m)
{
    int n = m->hp.n_ctx_train;
    return n <= 0 ? 2048 : (n > PI_MODEL_DEFAULT_CTX ? PI_MODEL_DEFAULT_CTX : n);
}


/* Bytes of all weights a dense decode step streams: every matrix once, the embedding row excluded
 * (a sparse ReLU step reads less: only the active neurons' up and down rows). The benchmarks turn
 * tokens/s into GB/s with it. */
uint64_t pi_model_decode_bytes(const pi_model_t *m);

/* ---- random-weight models with real shapes (tests, benchmarks) ---- */

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
