/*
 * lib/weights.h - the in-memory views of weights that the kernels and everything above them read: a
 * weight matrix (struct pi_weight), one transformer block's tensors (struct pi_layer) and the FFN's
 * activation. Plain data with no owner of its own: model/model.h binds them to a GGUF mapping, and
 * compute/partition.h to packed copies of some neurons.
 *
 * Shapes are (rows, cols) of the row-major matrix, i.e. (ne[1], ne[0]) in GGUF order: a weight
 * W (rows, cols) maps x (cols,) to W @ x (rows,).
 */
#ifndef PI_LIB_WEIGHTS_H
#define PI_LIB_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/types.h"

/* The FFN's gated activation: out = down @ (act(gate @ x) * up @ x), per neuron. */
enum pi_ffn_act {
    PI_FFN_ACT_DEFAULT = 0, /* only as an option: take it from the file */
    PI_FFN_ACT_SILU = 1,    /* SwiGLU: silu(g) * u */
    PI_FFN_ACT_RELU = 2,    /* ReGLU: relu(g) * u */
    PI_FFN_ACT_DRELU = 3,   /* dReLU: relu(g) * relu(u) */
};

/* "silu", "relu", "drelu" (for logs and config files). */
const char *pi_ffn_act_name(enum pi_ffn_act a);
/* Parse one of those names (case-insensitive). Returns 0 and sets *out, or -PI_ERR_INVAL. */
int pi_ffn_act_parse(const char *s, enum pi_ffn_act *out);

/* A weight matrix W (rows, cols) in the mapping (or owned by the model when packed). Row r starts at
 * (const char *)data + r * row_bytes. data is NULL when an optional tensor is absent. */
struct pi_weight {
    enum pi_type type;
    int64_t rows;     /* ne[1] */
    int64_t cols;     /* ne[0], the contiguous dimension */
    size_t row_bytes; /* bytes of one row of cols elements of type */
    const void *data;
    /* NULL, or the same matrix repacked in 16-row groups for the dense CPU products
     * (kernels/cpu/rows16.h: Q4_0, Q8_0, Q4_K, Q5_K, Q6_K; (rows / 16) groups), owned by whoever packed it */
    const void *rows16;
    /* NULL, or this is a grouped transposed matrix (kernels/cpu/quant.h, "Grouped rows"): type Q4_0 or
     * Q8_0, each row holds its cols quants only (row_bytes = cols / 2 or cols) and row r's scales are
     * the cols f16 values of scale row grow[r] of gscale, or r / PI_GROUP_ROWS where grow is NULL (a
     * layer's neurons in id order) (pi_weight_gscale) */
    const uint16_t *gscale;
    const int32_t *grow; /* (rows) or NULL; only with gscale */
};

/* Rows of a grouped matrix that share one row of scales: a block of the source matrix's type. */
#define PI_GROUP_ROWS 32

/* One transformer block. q_dim = n_head * head_dim, kv_dim = n_head_kv * head_dim, d = n_embd. */
struct pi_layer {
    const float *attn_norm;     /* (d,) RMSNorm weights before attention (owned f32 copy) */
    struct pi_weight attn_q;    /* (q_dim, d) */
    struct pi_weight attn_k;    /* (kv_dim, d) */
    struct pi_weight attn_v;    /* (kv_dim, d) */
    struct pi_weight attn_output; /* (d, q_dim) */
    const float *ffn_norm;      /* (d,) RMSNorm weights before the FFN (owned f32 copy) */
    struct pi_weight ffn_gate;  /* (n_ff, d): row i is neuron i's gate */
    struct pi_weight ffn_up;    /* (n_ff, d): row i is neuron i's up */
    struct pi_weight ffn_down;  /* (d, n_ff): column i is neuron i's down (file's or built at load) */
    struct pi_weight ffn_down_t; /* (n_ff, d): row i is neuron i's down (file's or packed at load) */
    bool down_t_from_file;      /* ffn_down_t is PowerInfer's blk.N.ffn_down_t.weight */
    /* the file has no ffn_down (PowerInfer's files): ffn_down is the file's ffn_down_t transposed at load,
     * in memory the model owns, not in the file's mapping */
    bool down_built;
    struct pi_weight fc1;       /* optional predictor (rank, d); data NULL when absent */
    struct pi_weight fc2;       /* optional predictor (n_ff, rank); present iff fc1 is */
};

/* Row r of w (0 <= r < w->rows). */
static inline const void *pi_weight_row(const struct pi_weight *w, int64_t r)
{
    return (const char *)w->data + (size_t)r * w->row_bytes;
}

/* The scales of row r of a grouped matrix (w->gscale not NULL): cols f16 values. */
static inline const uint16_t *pi_weight_gscale(const struct pi_weight *w, int64_t r)
{
    return w->gscale + (size_t)(w->grow ? w->grow[r] : r / PI_GROUP_ROWS) * (size_t)w->cols;
}

#endif
