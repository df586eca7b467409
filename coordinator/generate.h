/*
 * coordinator/generate.h - one generation request from prompt to text: tokenize (BOS as the model
 * file says), evaluate the prompt in batches, sample, detokenize, and hand the text to a callback
 * as it becomes valid UTF-8. Shared by the one-shot mode and the control-socket server.
 */
#ifndef PI_COORDINATOR_GENERATE_H
#define PI_COORDINATOR_GENERATE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>

#include "coordinator/engine.h"
#include "text/sample.h"
#include "text/tokenizer.h"

struct pi_gen_request {
    const char *prompt;        /* text, or NULL when tokens is given */
    bool parse_special;        /* special tokens written in the text are parsed (chat-formatted prompts) */
    const int32_t *tokens;     /* prompt ids (n_tokens), used as they are (no BOS added) */
    size_t n_tokens;
    int64_t n_predict;         /* tokens to generate; 0 = evaluate the prompt only */
    struct pi_sample_params sample;
    FILE *logits_out;          /* when not NULL: every prompt position's logits, float32 LE,
                                * position-major (n_prompt x n_vocab) */
    int (*stop)(void *ctx);    /* optional, with the emit function's ctx: asked between prompt
                                * batches; non-zero cancels the request as an emit failure does (a
                                * long prompt is not evaluated to its end after a stop signal) */
    /* Prompt tokens already in sequence 0's cache: the first n_keep ids of this prompt are what an
     * earlier request left there (interactive chat), so the cache is truncated to n_keep instead of
     * reset and the prompt is evaluated from position n_keep. 0 <= n_keep < the prompt's length; an
     * engine that cannot truncate is reset and evaluates the whole prompt. */
    int n_keep;
    const char *const *stop_strings; /* n_stop strings that end the output (text/stop.h); the text of
                                      * a match and after it is not emitted */
    size_t n_stop;
    const int32_t *bias_ids;   /* logit bias: bias[i] added to token bias_ids[i] (n_bias), or NULL */
    const float *bias;
    size_t n_bias;
    int32_t *gen_ids;          /* optional: the generated ids (at most gen_cap, in order) */
    size_t gen_cap;
};

struct pi_gen_result {
    int n_prompt;              /* prompt tokens, once the engine has taken the request (0 when it
                                * failed before: a bad prompt, or an engine that could not reset) */
    int n_prompt_done;         /* prompt tokens evaluated (n_prompt unless cancelled or failed) */
    int n_generated;
    double prompt_s;           /* seconds spent evaluating the prompt */
    double gen_s;              /* seconds spent generating (sampling included) */
    int stop_eog;              /* 1 when an end-of-generation token ended the request */
    int stop_string;           /* index of the stop string that ended it, or -1 */
    int n_cached;              /* positions of sequence 0 in the engine's cache at the end: the
                                * prompt's evaluated tokens, then every generated token but the ones
                                * not evaluated (the last one, an end-of-generation id) */
};

/* Called with each piece of complete UTF-8 text; a non-zero return cancels the request (the
 * generation then returns -PI_ERR_IO, e.g. the reader went away). */
typedef int (*pi_gen_emit_fn)(void *ctx, const char *text, size_t len);

/* Run r on sequence 0 of e with tokenizer t: the engine is reset first (every sequence forgotten), or
 * sequence 0 truncated to r->n_keep. One request at a time; continuous batching drives the engine
 * itself. Returns 0, or a negative pi_err (logged): the engine's error (-PI_ERR_PEER when a worker
 * died), -PI_ERR_RANGE when the prompt plus n_predict does not fit the context, -PI_ERR_INVAL for an
 * empty prompt, a bad token id, a bad stop string or logit bias. */
int pi_generate(pi_engine_t *e, const pi_tokenizer_t *t, const struct pi_gen_request *r, pi_gen_emit_fn emit,
                void *ctx, struct pi_gen_result *res);

/* Sampling parameters from the configuration's [generate] section (seed -1: from the clock). */
struct pi_config;
void pi_gen_params_from_config(const struct pi_config *cfg, struct pi_sample_params *p);

/* A control GENERATE request's fields that its client left to the coordinator (g->defaults,
 * ipc/control.h) filled from cfg's [generate] keys (seed -1: a random one), and defaults cleared: what
 * pinfer.conf(5) promises a request that does not set them. */
struct pi_ctl_generate;
void pi_gen_ctl_defaults(const struct pi_config *cfg, struct pi_ctl_generate *g);

#endif
