/*
 * tests/unit/fuzz-openai.c - libFuzzer target for the OpenAI-compatible API's request bodies
 * (coordinator/openai.h; `make fuzz`, needs clang).
 *
 * Every input is one HTTP body, given to all four parsers: pi_oai_parse as a chat request and as a
 * completion request, pi_oai_parse_tokenize and pi_oai_parse_detokenize (the same bytes, not
 * NUL-terminated, so a read past len is ASan's to see). Whatever the bytes:
 *   - a refusal is a 400 (or a 500 for memory) with NUL-terminated fields, a request left all zero,
 *     and an error object that jansson reads back;
 *   - an accepted request keeps the header's promises: 1..max_messages messages with known roles and
 *     content, exactly one of prompt / prompt_ids, ids below n_vocab, stop strings non-empty and
 *     within their bounds, logit biases within [-100, 100], max_tokens -1 or within [1, cap],
 *     top_logprobs within its kind's range, sampling parameters that pass pi_sample_params_check;
 *   - the response builders, fed the accepted text and the raw input bytes as generated text and as
 *     logprob tokens (any bytes, broken UTF-8 included), write JSON that jansson reads back;
 *   - nothing leaks (ASan's leak check) and no undefined behaviour (UBSan).
 * Seeds: tests/unit/fuzz-openai-seeds/ (JSON bodies: valid chat and completion requests with every
 * field, tokenize and detokenize bodies, and some refused ones). Not part of `make check`.
 */
#include "config.h"
#include "coordinator/openai.h"
#include "lib/common.h"
#include "text/sample.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) abort();                                                                                          \
    } while (0)

static struct pi_oai_limits lim;
static struct pi_sample_params defaults;

static bool all_zero(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return false;
    return true;
}

/* s must be valid JSON (and not NULL: the fuzzer does not run out of memory here). Generated text may
 * hold NUL bytes, which JSON carries as \u0000: jansson reads those only when asked. */
static void check_json(char *s)
{
    CHECK(s);
    json_error_t je;
    json_t *j = json_loads(s, JSON_ALLOW_NUL, &je);
    CHECK(j);
    json_decref(j);
    free(s);
}

static void check_error(const struct pi_oai_error *e)
{
    CHECK(e->status == 400 || e->status == 500);
    CHECK(memchr(e->type, 0, sizeof e->type) && memchr(e->param, 0, sizeof e->param));
    CHECK(memchr(e->code, 0, sizeof e->code) && memchr(e->message, 0, sizeof e->message) && e->message[0]);
    check_json(pi_oai_error_json(e));
}

static void check_request(const struct pi_oai_request *r)
{
    if (r->kind == PI_OAI_CHAT) {
        CHECK(r->n_msgs >= 1 && r->n_msgs <= lim.max_messages && r->msgs && !r->prompt && !r->prompt_ids);
        for (size_t i = 0; i < r->n_msgs; i++) {
            const char *role = r->msgs[i].role;
            CHECK(role && (!strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant")));
            CHECK(r->msgs[i].content);
        }
        CHECK(r->top_logprobs >= -1 && r->top_logprobs <= 20);
    } else {
        CHECK(!r->msgs && !r->n_msgs && (!r->prompt != !r->prompt_ids));
        CHECK(r->prompt || (r->n_prompt_ids >= 1 && r->n_prompt_ids <= lim.max_prompt_tokens));
        for (size_t i = 0; i < r->n_prompt_ids; i++) CHECK(r->prompt_ids[i] >= 0 && r->prompt_ids[i] < lim.n_vocab);
        CHECK(r->top_logprobs >= -1 && r->top_logprobs <= 5);
    }
    CHECK(r->n_stop <= lim.max_stop);
    for (size_t i = 0; i < r->n_stop; i++) CHECK(r->stop[i][0] && strlen(r->stop[i]) <= lim.max_stop_bytes);
    CHECK(r->n_bias <= lim.max_logit_bias);
    for (size_t i = 0; i < r->n_bias; i++) {
        CHECK(r->bias_ids[i] >= 0 && r->bias_ids[i] < lim.n_vocab);
        CHECK(r->bias[i] >= -100.0f && r->bias[i] <= 100.0f);
    }
    CHECK(r->max_tokens == -1 || (r->max_tokens >= 1 && r->max_tokens <= lim.max_tokens_cap));
    CHECK(pi_sample_params_check(&r->sample) == 0);
}

/* The builders on accepted text and on the raw bytes: valid JSON whatever the bytes. */
static void check_builders(const char *text, const uint8_t *data, size_t size)
{
    size_t half = size / 2;
    const char *raw = (const char *)data;
    struct pi_oai_top tops[2] = {{raw, half, -0.5f}, {raw + half, size - half, -1e30f}};
    struct pi_oai_logprob lp[2] = {{raw, half, -0.25f, tops, 2}, {raw + half, size - half, 0.0f, tops + 1, 1}};
    struct pi_oai_usage u = {(int64_t)size, 2};
    check_json(pi_oai_chat_response("chatcmpl-x", 1, text, raw, size, "stop", &u, lp, 2));
    check_json(pi_oai_chat_chunk("chatcmpl-x", 1, "m", "assistant", raw, size, NULL, lp, 2, NULL));
    check_json(pi_oai_completion_response("cmpl-x", 1, "m", text, strlen(text), "length", &u, lp, 2));
    check_json(pi_oai_completion_chunk("cmpl-x", 1, text, raw, size, NULL, lp, 2, NULL));
    check_json(pi_oai_content_json(raw, size));
}

static void fuzz_parse(enum pi_oai_kind kind, const uint8_t *data, size_t size)
{
    struct pi_oai_request r;
    struct pi_oai_error e;
    memset(&e, 0, sizeof e);
    if (pi_oai_parse(kind, (const char *)data, size, &lim, &defaults, &r, &e) != 0) {
        check_error(&e);
        CHECK(all_zero(&r, sizeof r));
        return;
    }
    CHECK(r.kind == kind);
    check_request(&r);
    const char *text = kind == PI_OAI_CHAT ? r.msgs[0].content : r.prompt ? r.prompt : "";
    check_builders(text, data, size);
    pi_oai_request_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!lim.max_messages) {
        pi_oai_limits_default(&lim);
        lim.max_messages = 64;
        lim.max_prompt_tokens = 4096;
        lim.n_vocab = 32000;
        lim.max_tokens_cap = 1 << 20;
        pi_sample_params_default(&defaults);
    }
    fuzz_parse(PI_OAI_CHAT, data, size);
    fuzz_parse(PI_OAI_COMPLETION, data, size);

    struct pi_oai_error e;
    char *content;
    bool add, parse;
    if (pi_oai_parse_tokenize((const char *)data, size, &content, &add, &parse, &e) == 0) {
        CHECK(content);
        free(content);
    } else {
        CHECK(!content);
        check_error(&e);
    }
    int32_t *ids;
    size_t n;
    if (pi_oai_parse_detokenize((const char *)data, size, &lim, &ids, &n, &e) == 0) {
        CHECK(n <= lim.max_prompt_tokens && (n == 0) == (ids == NULL));
        for (size_t i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < lim.n_vocab);
        check_json(pi_oai_tokens_json(ids, n));
        free(ids);
    } else {
        CHECK(!ids && !n);
        check_error(&e);
    }
    return 0;
}
