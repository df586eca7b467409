/*
 * coordinator/generate.c - the generation loop (coordinator/generate.h).
 *
 * The prompt is evaluated in batches of the engine's max_batch tokens; only the last batch asks for
 * logits, unless the caller wants every position's (--logits-out). Then one token per step:
 * sample, stop on an end-of-generation id (its text is not emitted), detokenize, evaluate it.
 * The sampler gets the prompt for its repetition window, as llama.cpp's server does.
 */
#include "config.h"
#include "coordinator/generate.h"
#include "ipc/futex.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "ipc/control.h"
#include "text/stop.h"

#include <stdlib.h>
#include <string.h>

void pi_gen_params_from_config(const struct pi_config *cfg, struct pi_sample_params *p)
{
    pi_sample_params_default(p);
    p->temperature = (float)cfg->temperature;
    p->top_k = (int32_t)cfg->top_k;
    p->top_p = (float)cfg->top_p;
    p->min_p = (float)cfg->min_p;
    p->repeat_penalty = (float)cfg->repeat_penalty;
    p->presence_penalty = (float)cfg->presence_penalty;
    p->frequency_penalty = (float)cfg->frequency_penalty;
    p->seed = cfg->seed < 0 ? pi_rng_entropy_seed() : (uint64_t)cfg->seed;
}

void pi_gen_ctl_defaults(const struct pi_config *cfg, struct pi_ctl_generate *g)
{
    if (g->defaults & PI_CTL_GEN_DEFAULT_N_PREDICT) g->n_predict = (uint32_t)cfg->n_predict;
    if (g->defaults & PI_CTL_GEN_DEFAULT_SEED) g->seed = cfg->seed < 0 ? pi_rng_entropy_seed() : (uint64_t)cfg->seed;
    if (g->defaults & PI_CTL_GEN_DEFAULT_TEMP) g->temp = (float)cfg->temperature;
    g->defaults = 0;
}

/* The prompt ids of r into a fresh array (*ids, *n). */
static int prompt_ids(const pi_tokenizer_t *t, const struct pi_gen_request *r, int32_t **ids, size_t *n)
{
    if (r->tokens) {
        *ids = malloc((r->n_tokens ? r->n_tokens : 1) * sizeof **ids);
        if (!*ids) return -PI_ERR_NOMEM;
        memcpy(*ids, r->tokens, r->n_tokens * sizeof **ids);
        *n = r->n_tokens;
        return 0;
    }
    return pi_tokenize_alloc(t, r->prompt, strlen(r->prompt), true, r->parse_special, ids, n);
}

/* The one call of the engine's evaluation: tokens (n) of sequence 0 at positions pos0.., logits of the
 * last n_out. */
static int eval_seq0(pi_engine_t *e, const int32_t *tokens, int n, int pos0, float *logits, int n_out)
{
    return pi_engine_eval_seq0(e, tokens, n, pos0, logits, n_out);
}

/* Evaluate the prompt from position from (what the cache holds already); logits (n_vocab) = the last
 * position's; *done = the tokens in the cache. */
static int eval_prompt(pi_engine_t *e, const struct pi_gen_request *r, void *ctx, const int32_t *ids, int n, int from,
                       float *all, float *logits, int *done)
{
    FILE *logits_out = r->logits_out;
    *done = from;
    for (int p = from; p < n; p += e->max_batch) {
        if (r->stop && r->stop(ctx)) return -PI_ERR_IO; /* cancelled, as by emit */
        int nb = PI_MIN(e->max_batch, n - p);
        bool last = p + nb == n;
        int n_out = logits_out ? nb : (last ? 1 : 0);
        int rc = eval_seq0(e, ids + p, nb, p, all, n_out);
        if (rc != 0) return rc;
        if (logits_out && fwrite(all, sizeof(float) * (size_t)e->n_vocab, (size_t)nb, logits_out) != (size_t)nb) {
            pi_error("writing the prompt logits failed");
            return -PI_ERR_IO;
        }
        if (last) memcpy(logits, all + (size_t)(n_out - 1) * (size_t)e->n_vocab, sizeof(float) * (size_t)e->n_vocab);
        *done = p + nb;
    }
    return 0;
}

/* End-of-generation ids of t into the sampler. */
static int set_eog(pi_sampler_t *s, const pi_tokenizer_t *t)
{
    int32_t nv = pi_tokenizer_n_vocab(t), n = 0;
    int32_t *ids = malloc((size_t)nv * sizeof *ids);
    if (!ids) return -PI_ERR_NOMEM;
    for (int32_t i = 0; i < nv; i++)
        if (pi_tokenizer_is_eog(t, i)) ids[n++] = i;
    int rc = pi_sampler_set_eog(s, ids, (size_t)n);
    free(ids);
    return rc;
}

/* Text of the output through the stop matcher m (NULL: straight to emit): 0, 1 when a stop string
 * completed (res->stop_string set), or -PI_ERR_IO / -PI_ERR_NOMEM. */
static int emit_text(pi_stop_t *m, const char *text, size_t len, pi_gen_emit_fn emit, void *ctx,
                     struct pi_gen_result *res)
{
    struct pi_stop_out so = {text, len, -1};
    if (m && pi_stop_feed(m, text, len, &so) != 0) return -PI_ERR_NOMEM;
    if (so.len > 0 && emit && emit(ctx, so.text, so.len) != 0) return -PI_ERR_IO;
    if (so.stop >= 0) res->stop_string = so.stop;
    return so.stop >= 0;
}

/* The decode loop after the prompt: sample, emit, evaluate. */
static int decode(pi_engine_t *e, const pi_tokenizer_t *t, pi_sampler_t *s, const struct pi_gen_request *r, int pos,
                  float *logits, pi_gen_emit_fn emit, void *ctx, struct pi_gen_result *res)
{
    pi_stop_t *m = NULL;
    if (r->n_stop > 0 && !(m = pi_stop_new(r->stop_strings, r->n_stop))) return -PI_ERR_INVAL; /* logged */
    /* Without a tokenizer (a model file with none, prompt given as ids) tokens print as their ids. */
    pi_detok_t *d = t ? pi_detok_new(t, false) : NULL;
    size_t cap = (t ? pi_detok_max_push(t) : 0) + 24;
    char *buf = malloc(cap);
    int rc = ((t && !d) || !buf) ? -PI_ERR_NOMEM : 0;
    for (int64_t i = 0; rc == 0 && i < r->n_predict; i++) {
        int32_t tok = pi_sampler_sample(s, logits);
        if (tok < 0) { /* every logit NaN or -inf: a broken model file, not the context's fault */
            pi_error("sampling found no finite logit: the model's output is broken (NaN or -inf everywhere)");
            rc = -PI_ERR_FORMAT;
            break;
        }
        if (pi_sampler_is_eog(s, tok)) { res->stop_eog = 1; break; }
        pi_sampler_accept(s, tok);
        if (r->gen_ids && (size_t)res->n_generated < r->gen_cap) r->gen_ids[res->n_generated] = tok;
        res->n_generated++;
        int w = d ? pi_detok_push(d, tok, buf, cap) : snprintf(buf, cap, "%s%d", i ? " " : "", tok);
        if (w == -PI_ERR_INVAL) w = 0; /* an embedding row past the tokenizer's vocabulary: no text */
        if (w < 0) { rc = w; break; }
        if (w > 0 && (rc = emit_text(m, buf, (size_t)w, emit, ctx, res)) != 0) {
            if (rc > 0) rc = 0; /* a stop string: the end of the output */
            goto done;
        }
        if (i + 1 == r->n_predict) break; /* the last token needs no evaluation */
        if (pos >= e->n_ctx) {
            pi_error("generation: context of %d positions is full", e->n_ctx);
            rc = -PI_ERR_RANGE;
            break;
        }
        rc = eval_seq0(e, &tok, 1, pos, logits, 1);
        if (rc == 0) res->n_cached = ++pos;
    }
    if (d && buf && rc != -PI_ERR_NOMEM) {
        int w = pi_detok_flush(d, buf, cap);
        int r2 = w > 0 ? emit_text(m, buf, (size_t)w, emit, ctx, res) : 0;
        if (r2 < 0 && rc == 0) rc = r2;
    }
    if (m && rc == 0 && res->stop_string < 0) { /* the held tail of a stop string that never completed */
        struct pi_stop_out so;
        pi_stop_flush(m, &so);
        if (so.len > 0 && emit && emit(ctx, so.text, so.len) != 0) rc = -PI_ERR_IO;
    }
done:
    free(buf);
    pi_detok_destroy(&d);
    pi_stop_destroy(&m);
    return rc;
}

int pi_generate(pi_engine_t *e, const pi_tokenizer_t *t, const struct pi_gen_request *r, pi_gen_emit_fn emit,
                void *ctx, struct pi_gen_result *res)
{
    memset(res, 0, sizeof *res);
    res->stop_string = -1;
    int32_t *ids = NULL;
    size_t n = 0;
    if (!t && !r->tokens) {
        pi_error("the model has no tokenizer: give the prompt as token ids");
        return -PI_ERR_INVAL;
    }
    int rc = prompt_ids(t, r, &ids, &n);
    if (rc != 0) { pi_error("tokenizing the prompt failed: %s", pi_err_str(rc)); return rc; }
    if (n == 0) { free(ids); pi_error("the prompt is empty"); return -PI_ERR_INVAL; }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= e->n_vocab) {
            pi_error("prompt token %d is outside the vocabulary (0..%d)", ids[i], e->n_vocab - 1);
            free(ids);
            return -PI_ERR_INVAL;
        }
    }
    /* The last generated token is never evaluated, so n + n_predict may reach n_ctx + 1; with nothing
     * to generate every prompt token is evaluated and the prompt alone must fit. */
    if (r->n_predict < 0 || (int64_t)n > (int64_t)e->n_ctx || (int64_t)n + r->n_predict > (int64_t)e->n_ctx + 1) {
        pi_error("prompt (%zu tokens) + %lld to generate exceed the context of %d positions", n,
                 (long long)r->n_predict, e->n_ctx);
        free(ids);
        return -PI_ERR_RANGE;
    }
    if (r->n_keep < 0 || (size_t)r->n_keep >= n) {
        pi_error("generation: %d prompt tokens kept in the cache of a prompt of %zu", r->n_keep, n);
        free(ids);
        return -PI_ERR_INVAL;
    }
    float *all = malloc(sizeof(float) * (size_t)e->n_vocab * (size_t)e->max_batch);
    float *logits = malloc(sizeof(float) * (size_t)e->n_vocab);
    pi_sampler_t *s = pi_sampler_new(e->n_vocab, &r->sample);
    int from = r->n_keep;
    rc = (!all || !logits || !s) ? -PI_ERR_NOMEM : pi_engine_truncate(e, from);
    if (rc == -PI_ERR_UNSUPPORTED) rc = e->ops->reset(e), from = 0; /* evaluated again from the start */
    if (rc == 0) res->n_prompt = (int)n; /* 0 tells a caller that the engine took nothing */
    if (rc == 0 && t) rc = set_eog(s, t);
    if (rc == 0 && r->n_bias) rc = pi_sampler_set_logit_bias(s, r->bias_ids, r->bias, r->n_bias);
    int64_t t0 = pi_clock_ns();
    if (rc == 0) pi_debug("evaluating the prompt: %zu tokens from position %d in batches of %d", n, from, e->max_batch);
    if (rc == 0) rc = eval_prompt(e, r, ctx, ids, (int)n, from, all, logits, &res->n_prompt_done);
    res->n_cached = res->n_prompt_done;
    int64_t t1 = pi_clock_ns();
    res->prompt_s = (double)(t1 - t0) * 1e-9;
    if (rc == 0 && r->n_predict > 0) {
        pi_sampler_accept_prompt(s, ids, n);
        rc = decode(e, t, s, r, (int)n, logits, emit, ctx, res);
    }
    res->gen_s = (double)(pi_clock_ns() - t1) * 1e-9;
    pi_sampler_destroy(&s);
    free(logits);
    free(all);
    free(ids);
    return rc;
}
