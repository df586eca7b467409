/*
 * coordinator/perplexity.h - pi-perplexity's parts (doc/perplexity.md): the statistics of
 * llama-perplexity (perplexity with its standard error, KL divergence against a base run, the
 * token-probability differences) and the base file a run's log-probabilities are saved in.
 *
 * coordinator/perplexity.c owns the command line and the chunk loop over an engine;
 * coordinator/perplexity-stats.c owns what is here. The formulas are llama-perplexity's, so that the
 * figures compare with llama.cpp's; the file format is pinfer's own (float32 log-probabilities, a
 * header that names the model, vocabulary, context and chunks so that a mismatched file is refused).
 */
#ifndef PI_COORDINATOR_PERPLEXITY_H
#define PI_COORDINATOR_PERPLEXITY_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/cpu/ops.h"
#include <stdio.h>

#include "model/gguf.h"

/* One position's log-probabilities: pi_log_softmax and pi_kl_logp (kernels/cpu/ops.h). */

/* ---- perplexity: the running sums of the negative log-likelihoods ---- */

struct pi_ppl_acc {
    double sum_nll;  /* sum of -log p(token) over the scored positions */
    double sum_nll2; /* sum of its squares */
    int64_t count;   /* scored positions */
};

/* Add one scored position's negative log-likelihood. */
void pi_ppl_acc_add(struct pi_ppl_acc *a, double nll);
/* exp(mean nll); and its standard error as llama-perplexity gives it, ppl * sqrt(var(nll) / (count - 1))
 * with var = mean(nll^2) - mean(nll)^2; *err = -1 when count < 2 or var <= 0 (llama-perplexity then
 * prints no estimate). */
double pi_ppl_acc_ppl(const struct pi_ppl_acc *a, double *err);

/* ---- KL divergence of a run (Q) against a base run ---- */

struct pi_kld_acc {
    double sum_nll, sum_nll2;                    /* Q's -log p(token) */
    double sum_nll_base, sum_nll_base2;          /* the base's */
    double sum_nll_nll_base;                     /* their products (covariance) */
    double sum_kld, sum_kld2;                    /* KL(base || Q) per position */
    double sum_p_diff, sum_p_diff2, sum_p_diff4; /* p(token) under Q minus under the base */
    int64_t n_same_top;                          /* positions where both put the most probability on one token */
    int64_t count, cap;                          /* positions scored; room in the arrays below */
    float *kld_values;                           /* (cap) KL per position, for the percentiles */
    float *p_diff_values;                        /* (cap) Δp per position */
};

/* Room for cap positions. 0 or -PI_ERR_NOMEM. */
int pi_kld_acc_init(struct pi_kld_acc *k, int64_t cap);
void pi_kld_acc_free(struct pi_kld_acc *k);
/* Add one position: logp and base (n_vocab) are Q's and the base's log-probabilities, tok the token
 * that follows, top_q Q's argmax. The accumulator must have room (checked). */
void pi_kld_acc_add(struct pi_kld_acc *k, const float *logp, const float *base, int n_vocab, int32_t tok, int top_q);
/* One progress line of the chunk table (after the header pi_kld_print_chunk_header printed). */
void pi_kld_print_chunk_header(FILE *out);
void pi_kld_print_chunk(FILE *out, const struct pi_kld_acc *k, int chunk);
/* llama-perplexity's closing statistics: perplexities, KLD and Δp percentiles, same top p. Sorts
 * the arrays. Prints a line instead when fewer than 100 positions were scored (as llama-perplexity,
 * which keeps no statistics of so few). */
void pi_kld_print_summary(FILE *out, struct pi_kld_acc *k);

/* ---- the base file (doc/perplexity.md, "The base file") ----
 * Little-endian: this header (64 bytes), then the text's token ids int32 (n_chunk * n_ctx, as
 * tokenized: not with the BOS each chunk is evaluated with), then for each chunk and each scored
 * position j in [n_ctx/2, n_ctx - 1) the log-softmax of the logits at j, float32 (n_vocab): 4 *
 * n_vocab bytes per scored token. */
#define PI_KLD_MAGIC "PIKLBASE"
#define PI_KLD_VERSION 1u

struct pi_kld_header {
    char magic[8];        /* PI_KLD_MAGIC, no NUL */
    uint32_t version;     /* PI_KLD_VERSION */
    uint32_t n_vocab;     /* log-probabilities per scored position */
    uint32_t n_ctx;       /* tokens per chunk (-c) */
    uint32_t n_chunk;     /* chunks stored */
    uint32_t n_scored;    /* scored positions per chunk: n_ctx - 1 - n_ctx/2 */
    uint32_t reserved;    /* 0 */
    uint64_t model_bytes; /* size of the model file */
    uint64_t model_hash;  /* pi_ppl_model_fingerprint of the model file */
    uint64_t tokens_hash; /* pi_ppl_hash of the token ids */
    uint64_t reserved2;   /* 0 */
};
_Static_assert(sizeof(struct pi_kld_header) == 64, "the base file's header is 64 bytes");

/* FNV-1a 64 of n bytes, continuing from h (start with PI_PPL_HASH_INIT). */
#define PI_PPL_HASH_INIT 0xcbf29ce484222325ull
uint64_t pi_ppl_hash(uint64_t h, const void *p, size_t n);

/* The model file's fingerprint: the hash of its metadata and tensor directory (everything before the
 * tensor data) and of 64 samples of 4 KiB spread evenly over the tensor data. Two files with other
 * weights, types or shapes differ; it reads well under a megabyte of a 7B model, so it is cheap, but
 * it is a fingerprint, not a checksum of every byte. */
uint64_t pi_ppl_model_fingerprint(const pi_gguf_t *g);

/* Write the header and the token ids to f. 0, or -PI_ERR_IO after printing one line naming path. */
int pi_kld_write_header(FILE *f, const char *path, const struct pi_kld_header *h, const int32_t *tokens);

/* Read and check the header and token ids of the base file f (path for messages), against the run's
 * n_vocab and model identity (bytes, hash); the ids are returned in *tokens (caller frees). The file's
 * size must be exactly what its header says. On a mismatch or a malformed file prints one line naming
 * what differs and returns -PI_ERR_INVAL (or -PI_ERR_IO / -PI_ERR_NOMEM). */
int pi_kld_read_header(FILE *f, const char *path, int32_t n_vocab, uint64_t model_bytes, uint64_t model_hash,
                       struct pi_kld_header *h, int32_t **tokens);

#endif
