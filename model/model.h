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
    /* opts.down_t_grouped, kept for the partitions of this model (compute/partition.c), which then pack
     * grouped down rows where the model's own layers would (model/model.c's rule), even when the model
     * itself was opened with no_down_t */
    bool down_t_grouped;
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
    /* Pack ffn_down_t as grouped rows (kernels/cpu/quant.h, "Grouped rows"; [tune] down_t = grouped)
     * where the file's ffn_down is Q4_0 or Q8_0 with n_embd and n_ff multiples of 32: each element the
     * exact value of the file's (no rounding at all), in the file's own bytes (a Q4_0 file's 13B-shaped
     * layer: 39.8 MB against 141.6 MB as f16). Other layers take down_t_type. The model's ffn_down_t
     * then has gscale set, which only the CPU's neuron kernels read (kernels/cpu/ops.h): for the
     * in-process CPU engine, never for a backend. Kept in pi_model.down_t_grouped for the partitions
     * (the CPU workers open their model with it and no_down_t). */
    bool down_t_grouped;
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

/* One info line for a model opened with down_t_grouped and its own ffn_down_t: in how many layers the
 * rows are grouped, their memory, and why the others are not; nothing otherwise. For the callers of
 * pi_model_open, which may silence the loader's log while it runs. */
void pi_model_log_down_t(const pi_model_t *m);

#endif
