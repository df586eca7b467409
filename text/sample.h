/*
 * text/sample.h - turning one row of logits into the next token: greedy, temperature, top-k, top-p,
 * min-p, repetition / frequency / presence penalties, logit bias, end-of-generation ids, and a seed
 * that makes every run reproducible.
 *
 * One sampler per sequence: it owns the sequence's token history (for the penalties), its generator
 * state and all scratch memory, so sampling a token allocates nothing. Not thread-safe: one thread
 * at a time per sampler (distinct samplers are independent). The chain, applied in this
 * order on every call (doc/sampling.md says why this order and how it compares with llama.cpp and
 * vLLM):
 *
 *   logits -> logit bias -> penalties -> non-finite values -> top-k -> top-p -> min-p
 *          -> temperature -> one draw, walking the survivors in ascending token id
 *
 * Temperature 0 (or top_k 1) is greedy: the highest logit after bias and penalties, lowest id on
 * ties. Reproducibility: the generator is xoshiro256** seeded by SplitMix64 (lib/rng.h); every call
 * of pi_sampler_sample consumes exactly one 64-bit output (greedy and errors included) and the
 * arithmetic after it is plain IEEE-754 in a fixed order, so the same seed, the same logits and the
 * same accepted tokens give the same tokens on every machine.
 */
#ifndef PI_TEXT_SAMPLE_H
#define PI_TEXT_SAMPLE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Seed used by pi_sample_params_default. Fixed, so that an unconfigured run is reproducible; a
 * server that wants fresh randomness per request picks a seed with pi_rng_entropy_seed() and
 * reports it. */
#define PI_SAMPLE_SEED_DEFAULT 0x70696e666572ULL /* "pinfer" */

/* Sampling parameters. Neutral values switch a stage off; pi_sample_params_check lists the ranges. */
struct pi_sample_params {
    float temperature;       /* >= 0 and finite; 0 = greedy. Default 0.8 (llama.cpp's). */
    int32_t top_k;           /* >= 0; 0 = off (whole vocabulary). Default 40. */
    float top_p;             /* (0, 1]; 1 = off. Default 0.95. */
    float min_p;             /* [0, 1]; 0 = off. Default 0.05. */
    float repeat_penalty;    /* > 0 and finite; 1 = off. Default 1 (llama.cpp's current default). */
    int32_t repeat_last_n;   /* window of the repeat penalty in tokens; 0 = off, -1 = all since
                              * reset; >= -1. Default 64. */
    float frequency_penalty; /* finite; subtracted once per earlier occurrence; 0 = off. Default 0. */
    float presence_penalty;  /* finite; subtracted once if the token occurred; 0 = off. Default 0. */
    uint64_t seed;           /* generator seed; any value. Default PI_SAMPLE_SEED_DEFAULT. */
};

typedef struct pi_sampler pi_sampler_t;

/* Fill *p with the defaults listed in the struct. */
void pi_sample_params_default(struct pi_sample_params *p);

/* 0 when every field of *p is in range, else -PI_ERR_INVAL (logged, naming the field). NaN fails
 * every check. */
int pi_sample_params_check(const struct pi_sample_params *p);

/* A sampler for a vocabulary of n_vocab tokens (1 <= n_vocab <= 2^30) with parameters *p (copied).
 * Allocates 32 bytes per vocabulary entry (36 with repeat_last_n == -1) plus the repeat
 * window; nothing after this. Returns NULL when p fails pi_sample_params_check, n_vocab is out of
 * range or memory runs out (logged). */
pi_sampler_t *pi_sampler_new(int32_t n_vocab, const struct pi_sample_params *p);

/* Free *s and set *s to NULL. Accepts NULL and *s == NULL. */
void pi_sampler_destroy(pi_sampler_t **s);

/* Replace the parameters (for a sampler reused by the next request) and reset: history cleared,
 * generator re-seeded from p->seed; logit bias and end-of-generation ids are kept. May allocate
 * when repeat_last_n grows. Returns 0, -PI_ERR_INVAL (and *s unchanged) or -PI_ERR_NOMEM. */
int pi_sampler_set_params(pi_sampler_t *s, const struct pi_sample_params *p);

/* The parameters in force (borrowed, valid until the next set_params or destroy). */
const struct pi_sample_params *pi_sampler_params(const pi_sampler_t *s);

/* Forget the history and re-seed the generator from params.seed: the sampler then produces the same
 * tokens as a fresh one. Logit bias and end-of-generation ids are kept. */
void pi_sampler_reset(pi_sampler_t *s);

/* Set the per-token logit bias (OpenAI's logit_bias), replacing any earlier one: bias[i] is added to
 * the logit of tokens[i] before the penalties. -INFINITY bans a token, +INFINITY forces it (among
 * forced tokens the draw is uniform). A token listed twice gets the sum. n == 0 clears. Returns 0,
 * -PI_ERR_RANGE (a token outside [0, n_vocab)), -PI_ERR_INVAL (a NaN bias) or -PI_ERR_NOMEM; on
 * error the previous bias stays. Setup-time: may allocate. */
int pi_sampler_set_logit_bias(pi_sampler_t *s, const int32_t *tokens, const float *bias, size_t n);

/* Set the ids that end generation (EOS, EOT, <|im_end|>, ...; from the model's tokenizer metadata),
 * replacing any earlier set. Returns 0, -PI_ERR_RANGE or -PI_ERR_NOMEM (previous set kept). */
int pi_sampler_set_eog(pi_sampler_t *s, const int32_t *tokens, size_t n);

/* True when token is one of the end-of-generation ids. The sampler does not stop by itself: the
 * caller samples, asks, and ends the sequence (not emitting the token's text). */
bool pi_sampler_is_eog(const pi_sampler_t *s, int32_t token);

/* Feed prompt tokens into the repeat-penalty window (llama.cpp's server does the same), but not into
 * the frequency/presence counts, which follow OpenAI and count generated tokens only. Returns 0 or
 * -PI_ERR_RANGE (a token outside the vocabulary; tokens before it were taken). */
int pi_sampler_accept_prompt(pi_sampler_t *s, const int32_t *tokens, size_t n);

/* Record a generated token (normally the one pi_sampler_sample returned, after the caller decided to
 * keep it): it enters the repeat window and the frequency/presence counts. Returns 0 or
 * -PI_ERR_RANGE. */
int pi_sampler_accept(pi_sampler_t *s, int32_t token);

/* Pick the next token from logits (n_vocab,) (not modified) through the chain above. Returns a token
 * id in [0, n_vocab), or -PI_ERR_RANGE when no token is left (every logit NaN or -inf after bias and
 * penalties; logged). NaN logits count as -inf; if any logit is +inf the draw is uniform among the
 * +inf tokens (the limit of softmax). Does not accept the token: call pi_sampler_accept. */
int32_t pi_sampler_sample(pi_sampler_t *s, const float *logits);

#endif
