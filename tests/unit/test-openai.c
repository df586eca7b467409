/*
 * tests/unit/test-openai.c - the OpenAI-compatible API's bodies (coordinator/openai.h): malformed
 * requests refused with the right status, field path and code, and nothing held afterwards; the valid
 * forms of every field; the tokenize/detokenize bodies; and every response builder read back with
 * jansson, field by field, including tokens whose bytes are not valid UTF-8.
 *
 * Leaks are the sanitizer build's (--enable-sanitizers, LeakSanitizer at exit) or valgrind's to find:
 * every refused request below must leave nothing allocated.
 */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/openai.h"
#include "lib/common.h"
#include "text/sample.h"
#include "tests/tap.h"

#define C PI_OAI_CHAT
#define P PI_OAI_COMPLETION
#define M "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

/* The limits every case runs under: small enough that the length checks are cheap to reach. */
static struct pi_oai_limits lim;

static void set_limits(void)
{
    pi_oai_limits_default(&lim);
    lim.max_messages = 8;
    lim.max_stop = 4;
    lim.max_stop_bytes = 16;
    lim.max_logit_bias = 4;
    lim.max_prompt_tokens = 8;
    lim.n_vocab = 32000;
    lim.max_tokens_cap = 4096;
}

struct bad_case {
    enum pi_oai_kind kind;
    const char *body;
    const char *param; /* "" = none */
    const char *code;
};

static const struct bad_case bad_cases[] = {
    /* the body itself */
    {C, "not json", "", "invalid_json"},
    {C, "", "", "invalid_json"},
    {C, "[1,2]", "", "invalid_type"},
    {C, "{" M ",", "", "invalid_json"},
    {C, "{" M "} trailing", "", "invalid_json"},
    {C, "{" M ",\"a\":1,\"a\":2}", "", "invalid_json"},                                   /* duplicate keys */
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", "", "invalid_json"}, /* bad UTF-8 */
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", "", "invalid_json"},
    {C, "{" M ",\"temperature\":1e400}", "", "invalid_json"}, /* overflows a double */
    /* messages */
    {C, "{}", "messages", "missing_required_parameter"},
    {C, "{\"messages\":null}", "messages", "missing_required_parameter"},
    {C, "{\"messages\":[]}", "messages", "empty_array"},
    {C, "{\"messages\":\"hi\"}", "messages", "invalid_type"},
    {C, "{\"messages\":[1,2,3,4,5,6,7,8,9]}", "messages", "array_above_max_length"},
    {C, "{\"messages\":[\"hi\"]}", "messages[0]", "invalid_type"},
    {C, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages[0].role", "invalid_value"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"content\":\"b\"}]}", "messages[1].role",
     "missing_required_parameter"},
    {C, "{\"messages\":[{\"role\":7,\"content\":\"b\"}]}", "messages[0].role", "invalid_type"},
    {C, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content", "missing_required_parameter"},
    {C, "{\"messages\":[{\"role\":\"assistant\",\"content\":null}]}", "messages[0].content",
     "missing_required_parameter"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":42}]}", "messages[0].content", "invalid_type"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[]}]}", "messages[0].content", "empty_array"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}",
     "messages[0].content[0].type", "invalid_value"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\"}]}]}",
     "messages[0].content[1].text", "missing_required_parameter"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"a\"}]}]}", "messages[0].content[0].type",
     "missing_required_parameter"},
    {C, "{\"messages\":[{\"role\":\"user\",\"content\":[\"a\"]}]}", "messages[0].content[0]", "invalid_type"},
    {C,
     "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\",\"tool_calls\":[{}"
     "]}]}",
     "messages[1].tool_calls", "unsupported_parameter"},
    /* sampling */
    {C, "{" M ",\"temperature\":2.5}", "temperature", "decimal_above_max_value"},
    {C, "{" M ",\"temperature\":-0.1}", "temperature", "decimal_below_min_value"},
    {C, "{" M ",\"temperature\":\"hot\"}", "temperature", "invalid_type"},
    {C, "{" M ",\"top_p\":0}", "top_p", "decimal_below_min_value"},
    {C, "{" M ",\"top_p\":1e-300}", "top_p", "decimal_below_min_value"}, /* 0 as a float */
    {C, "{" M ",\"top_p\":1.01}", "top_p", "decimal_above_max_value"},
    {C, "{" M ",\"min_p\":true}", "min_p", "invalid_type"},
    {C, "{" M ",\"frequency_penalty\":-3}", "frequency_penalty", "decimal_below_min_value"},
    {C, "{" M ",\"presence_penalty\":2.5}", "presence_penalty", "decimal_above_max_value"},
    {C, "{" M ",\"repeat_penalty\":0}", "repeat_penalty", "decimal_below_min_value"},
    {C, "{" M ",\"repeat_penalty\":1e39}", "repeat_penalty", "invalid_value"}, /* past FLT_MAX */
    {C, "{" M ",\"top_k\":-1}", "top_k", "integer_below_min_value"},
    {C, "{" M ",\"top_k\":3000000000}", "top_k", "integer_above_max_value"},
    {C, "{" M ",\"top_k\":4.5}", "top_k", "invalid_type"},
    {C, "{" M ",\"seed\":1.5}", "seed", "invalid_type"},
    {C, "{" M ",\"seed\":\"42\"}", "seed", "invalid_type"},
    /* length, logprobs */
    {C, "{" M ",\"max_tokens\":1.5}", "max_tokens", "invalid_type"},
    {C, "{" M ",\"max_tokens\":0}", "max_tokens", "integer_below_min_value"},
    {C, "{" M ",\"max_tokens\":4097}", "max_tokens", "integer_above_max_value"},
    {C, "{" M ",\"max_tokens\":10,\"max_completion_tokens\":10}", "max_completion_tokens", "invalid_value"},
    {C, "{" M ",\"max_completion_tokens\":\"10\"}", "max_completion_tokens", "invalid_type"},
    {C, "{" M ",\"top_logprobs\":3}", "top_logprobs", "invalid_value"},
    {C, "{" M ",\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs", "integer_above_max_value"},
    {C, "{" M ",\"logprobs\":1}", "logprobs", "invalid_type"},
    /* flags */
    {C, "{" M ",\"stream\":\"true\"}", "stream", "invalid_type"},
    {C, "{" M ",\"stream\":1}", "stream", "invalid_type"},
    {C, "{" M ",\"stream\":true,\"stream_options\":{\"include_usage\":\"yes\"}}", "stream_options.include_usage",
     "invalid_type"},
    {C, "{" M ",\"stream_options\":[]}", "stream_options", "invalid_type"},
    {C, "{" M ",\"model\":5}", "model", "invalid_type"},
    {C, "{" M ",\"ignore_eos\":\"no\"}", "ignore_eos", "invalid_type"},
    /* stop */
    {C, "{" M ",\"stop\":[\"a\",\"\"]}", "stop[1]", "empty_string"},
    {C, "{" M ",\"stop\":\"\"}", "stop", "empty_string"},
    {C, "{" M ",\"stop\":[1]}", "stop[0]", "invalid_type"},
    {C, "{" M ",\"stop\":{\"a\":1}}", "stop", "invalid_type"},
    {C, "{" M ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop", "array_above_max_length"},
    {C, "{" M ",\"stop\":[\"a\",\"0123456789abcdefg\"]}", "stop[1]", "string_above_max_length"},
    /* logit_bias */
    {C, "{" M ",\"logit_bias\":{\"abc\":1}}", "logit_bias", "invalid_value"},
    {C, "{" M ",\"logit_bias\":{\"-1\":1}}", "logit_bias", "invalid_value"},
    {C, "{" M ",\"logit_bias\":{\"32000\":1}}", "logit_bias", "invalid_value"},
    {C, "{" M ",\"logit_bias\":{\"99999999999\":1}}", "logit_bias", "invalid_value"},
    {C, "{" M ",\"logit_bias\":{\"5\":101}}", "logit_bias.5", "decimal_above_max_value"},
    {C, "{" M ",\"logit_bias\":{\"5\":\"x\"}}", "logit_bias.5", "invalid_type"},
    {C, "{" M ",\"logit_bias\":{\"1\":1,\"2\":1,\"3\":1,\"4\":1,\"5\":1}}", "logit_bias", "invalid_value"},
    {C, "{" M ",\"logit_bias\":[1]}", "logit_bias", "invalid_type"},
    /* what this server does not do */
    {C, "{" M ",\"n\":2}", "n", "unsupported_parameter"},
    {C, "{" M ",\"n\":0}", "n", "integer_below_min_value"},
    {C, "{" M ",\"tools\":[{\"type\":\"function\"}]}", "tools", "unsupported_parameter"},
    {C, "{" M ",\"tool_choice\":\"required\"}", "tool_choice", "unsupported_parameter"},
    {C, "{" M ",\"functions\":[{}]}", "functions", "unsupported_parameter"},
    {C, "{" M ",\"response_format\":{\"type\":\"json_object\"}}", "response_format.type", "unsupported_parameter"},
    {C, "{" M ",\"response_format\":\"text\"}", "response_format", "invalid_type"},
    {C, "{" M ",\"grammar\":\"root ::= x\"}", "grammar", "unsupported_parameter"},
    {C, "{" M ",\"modalities\":[\"text\",\"audio\"]}", "modalities", "unsupported_parameter"},
    /* completions */
    {P, "{}", "prompt", "missing_required_parameter"},
    {P, "{\"prompt\":[]}", "prompt", "empty_array"},
    {P, "{\"prompt\":{\"a\":1}}", "prompt", "invalid_type"},
    {P, "{\"prompt\":[\"a\",\"b\"]}", "prompt", "unsupported_parameter"},
    {P, "{\"prompt\":[[1,2],[3]]}", "prompt", "unsupported_parameter"},
    {P, "{\"prompt\":[[]]}", "prompt[0]", "empty_array"},
    {P, "{\"prompt\":[null]}", "prompt[0]", "invalid_type"},
    {P, "{\"prompt\":[1,\"a\"]}", "prompt[1]", "invalid_type"},
    {P, "{\"prompt\":[1,-2]}", "prompt[1]", "integer_below_min_value"},
    {P, "{\"prompt\":[1,32000]}", "prompt[1]", "integer_above_max_value"},
    {P, "{\"prompt\":[[1,2.5]]}", "prompt[0][1]", "invalid_type"},
    {P, "{\"prompt\":[1,2,3,4,5,6,7,8,9]}", "prompt", "array_above_max_length"},
    {P, "{\"prompt\":\"x\",\"echo\":true}", "echo", "unsupported_parameter"},
    {P, "{\"prompt\":\"x\",\"best_of\":3}", "best_of", "unsupported_parameter"},
    {P, "{\"prompt\":\"x\",\"suffix\":\"y\"}", "suffix", "unsupported_parameter"},
    {P, "{\"prompt\":\"x\",\"logprobs\":6}", "logprobs", "integer_above_max_value"},
    {P, "{\"prompt\":\"x\",\"logprobs\":true}", "logprobs", "invalid_type"},
    {P, "{\"prompt\":\"x\",\"stop\":[\"\"]}", "stop[0]", "empty_string"},
};

static bool is_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return false;
    return true;
}

/* The error object read back: {"error": {message, type, param, code}} with nulls for "". */
static void check_error_json(const struct pi_oai_error *e, const char *what)
{
    char *s = pi_oai_error_json(e);
    json_error_t je;
    json_t *root = s ? json_loads(s, 0, &je) : NULL, *in = json_object_get(root, "error");
    const json_t *param = json_object_get(in, "param"), *code = json_object_get(in, "code");
    bool ok =
        in && json_is_string(json_object_get(in, "message")) &&
        !strcmp(json_string_value(json_object_get(in, "type")), e->type) &&
        (e->param[0] ? json_is_string(param) && !strcmp(json_string_value(param), e->param) : json_is_null(param)) &&
        (e->code[0] ? json_is_string(code) && !strcmp(json_string_value(code), e->code) : json_is_null(code));
    tap_ok(ok, "%s: the error object reads back", what);
    if (!ok) tap_diag("  %s", s ? s : "(null)");
    json_decref(root);
    free(s);
}

static void test_bad_requests(void)
{
    struct pi_sample_params def;
    pi_sample_params_default(&def);
    for (size_t i = 0; i < PI_ARRAY_LEN(bad_cases); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct pi_oai_request r;
        struct pi_oai_error e;
        memset(&e, 0, sizeof e);
        int rc = pi_oai_parse(c->kind, c->body, strlen(c->body), &lim, &def, &r, &e);
        bool ok = rc == -1 && e.status == 400 && !strcmp(e.type, "invalid_request_error") &&
                  !strcmp(e.param, c->param) && !strcmp(e.code, c->code) && e.message[0] && is_zero(&r, sizeof r);
        tap_ok(ok, "refused: %.70s -> %s %s", c->body, c->param[0] ? c->param : "(no param)", c->code);
        if (!ok)
            tap_diag("  rc %d status %d param '%s' code '%s' message '%s'", rc, e.status, e.param, e.code, e.message);
        if (i % 10 == 0) check_error_json(&e, c->body);
    }
}

/* Nesting past jansson's depth limit, built here: a parse error, not a stack overflow. */
static void test_deep_nesting(void)
{
    struct pi_sample_params def;
    pi_sample_params_default(&def);
    size_t depth = 100000;
    char *b = malloc(2 * depth + 64);
    if (!b) return;
    size_t o = (size_t)sprintf(b, "{\"messages\":");
    memset(b + o, '[', depth);
    o += depth;
    memset(b + o, ']', depth);
    o += depth;
    b[o++] = '}';
    struct pi_oai_request r;
    struct pi_oai_error e;
    int rc = pi_oai_parse(C, b, o, &lim, &def, &r, &e);
    tap_ok(rc == -1 && e.status == 400 && !strcmp(e.code, "invalid_json"), "nesting 100000 deep is refused (%s)",
           e.message);
    free(b);
}

static int parse_ok(enum pi_oai_kind kind, const char *body, struct pi_oai_request *r)
{
    struct pi_sample_params def;
    struct pi_oai_error e;
    pi_sample_params_default(&def);
    int rc = pi_oai_parse(kind, body, strlen(body), &lim, &def, r, &e);
    if (rc) tap_diag("  refused: %d %s: %s", e.status, e.param, e.message);
    return rc;
}

static void test_chat_valid(void)
{
    struct pi_oai_request r;
    const char *body = "{\"model\":\"demo\",\"messages\":["
                       "{\"role\":\"developer\",\"content\":\"Be brief.\",\"name\":\"ops\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hello\"},"
                       "{\"type\":\"text\",\"text\":\"w\\u00f6rld\"}]},"
                       "{\"role\":\"assistant\",\"content\":\"Hi\",\"tool_calls\":[]},"
                       "{\"role\":\"system\",\"content\":\"\"}],"
                       "\"temperature\":0,\"top_p\":0.5,\"top_k\":7,\"min_p\":0.25,\"presence_penalty\":-1.5,"
                       "\"frequency_penalty\":2,\"repeat_penalty\":1.1,\"repeat_last_n\":-1,\"seed\":-1,"
                       "\"max_completion_tokens\":2.0,\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                       "\"stop\":[\"\\n\\n\",\"END\"],\"logit_bias\":{\"0\":-100,\"31999\":5.5},\"logprobs\":true,"
                       "\"top_logprobs\":20,\"ignore_eos\":true,\"n\":1,\"user\":\"u1\",\"metadata\":{\"a\":\"b\"},"
                       "\"store\":false,\"service_tier\":\"auto\",\"tools\":[],\"tool_choice\":\"none\","
                       "\"response_format\":{\"type\":\"text\"},\"parallel_tool_calls\":false}";
    if (!tap_ok(parse_ok(C, body, &r) == 0, "chat: a request with every field is taken")) return;
    tap_ok(r.kind == C && r.model && !strcmp(r.model, "demo"), "chat: model");
    tap_ok(r.n_msgs == 4 && !strcmp(r.msgs[0].role, "system") && !strcmp(r.msgs[0].content, "Be brief."),
           "chat: developer is taken as system");
    tap_is_str(r.msgs[1].content, "Hello\nw\xc3\xb6rld", "chat: text parts joined in order with \\n");
    tap_ok(!strcmp(r.msgs[1].role, "user") && !strcmp(r.msgs[2].role, "assistant") &&
               !strcmp(r.msgs[2].content, "Hi") && !strcmp(r.msgs[3].content, ""),
           "chat: roles and contents in order, an empty content kept");
    tap_ok(r.sample.temperature == 0.0f && r.sample.top_p == 0.5f && r.sample.top_k == 7 && r.sample.min_p == 0.25f &&
               r.sample.presence_penalty == -1.5f && r.sample.frequency_penalty == 2.0f &&
               r.sample.repeat_penalty == 1.1f && r.sample.repeat_last_n == -1,
           "chat: the sampling fields");
    tap_ok(r.has_seed && r.sample.seed == UINT64_MAX, "chat: seed -1 is taken as its 64 bits");
    tap_is_int(r.max_tokens, 2, "chat: max_completion_tokens 2.0 is the integer 2");
    tap_ok(r.stream && r.include_usage && r.ignore_eos, "chat: stream, include_usage, ignore_eos");
    tap_ok(r.n_stop == 2 && !strcmp(r.stop[0], "\n\n") && !strcmp(r.stop[1], "END"), "chat: stop as a list");
    bool bias = r.n_bias == 2;
    for (size_t i = 0; bias && i < 2; i++)
        bias = r.bias_ids[i] == 0 ? r.bias[i] == -100.0f : r.bias_ids[i] == 31999 && r.bias[i] == 5.5f;
    tap_ok(bias && r.bias_ids[0] != r.bias_ids[1], "chat: logit_bias keys and values");
    tap_is_int(r.top_logprobs, 20, "chat: logprobs true with top_logprobs 20");
    pi_oai_request_free(&r);
    tap_ok(is_zero(&r, sizeof r), "chat: the free zeroes the request");

    struct pi_sample_params def;
    pi_sample_params_default(&def);
    if (parse_ok(C, "{" M ",\"temperature\":null,\"stop\":\"###\",\"logprobs\":true,\"seed\":null}", &r) == 0) {
        tap_ok(!memcmp(&r.sample, &def, sizeof def) && !r.has_seed, "chat: null fields keep the defaults");
        tap_ok(r.n_stop == 1 && !strcmp(r.stop[0], "###"), "chat: stop as a string");
        tap_is_int(r.top_logprobs, 0, "chat: logprobs true alone: 0 alternatives");
        tap_ok(r.max_tokens == -1 && !r.stream && !r.model && r.n_bias == 0, "chat: absent fields");
        pi_oai_request_free(&r);
    } else {
        tap_ok(0, "chat: null fields keep the defaults");
    }

    /* the body need not be NUL-terminated: only len bytes are read */
    const char full[] = "{" M "}GARBAGE";
    struct pi_oai_error e;
    int rc = pi_oai_parse(C, full, strlen(full) - 7, &lim, &def, &r, &e);
    tap_ok(rc == 0 && r.n_msgs == 1 && r.top_logprobs == -1, "chat: only len bytes of the body are read");
    if (!rc) pi_oai_request_free(&r);
    pi_oai_request_free(NULL);
}

static void test_completion_valid(void)
{
    struct pi_oai_request r;
    if (parse_ok(P,
                 "{\"prompt\":\"Once upon\",\"max_tokens\":16,\"logprobs\":3,\"echo\":false,\"best_of\":1,"
                 "\"suffix\":null,\"stop\":\"\\n\"}",
                 &r) == 0) {
        tap_ok(r.kind == P && r.prompt && !strcmp(r.prompt, "Once upon") && !r.prompt_ids && r.max_tokens == 16 &&
                   r.top_logprobs == 3 && r.n_stop == 1 && !r.msgs,
               "completion: a string prompt and its fields");
        pi_oai_request_free(&r);
    } else {
        tap_ok(0, "completion: a string prompt");
    }
    if (parse_ok(P, "{\"prompt\":[\"only one\"]}", &r) == 0) {
        tap_ok(r.prompt && !strcmp(r.prompt, "only one") && r.top_logprobs == -1, "completion: an array of one string");
        pi_oai_request_free(&r);
    } else {
        tap_ok(0, "completion: an array of one string");
    }
    if (parse_ok(P, "{\"prompt\":[1,0,31999,2.0]}", &r) == 0) {
        tap_ok(!r.prompt && r.n_prompt_ids == 4 && r.prompt_ids[0] == 1 && r.prompt_ids[1] == 0 &&
                   r.prompt_ids[2] == 31999 && r.prompt_ids[3] == 2,
               "completion: an array of token ids");
        pi_oai_request_free(&r);
    } else {
        tap_ok(0, "completion: an array of token ids");
    }
    if (parse_ok(P, "{\"prompt\":[[5,6]],\"logprobs\":0}", &r) == 0) {
        tap_ok(r.n_prompt_ids == 2 && r.prompt_ids[0] == 5 && r.prompt_ids[1] == 6 && r.top_logprobs == 0,
               "completion: an array of one token array; logprobs 0");
        pi_oai_request_free(&r);
    } else {
        tap_ok(0, "completion: an array of one token array");
    }
    if (parse_ok(P, "{\"prompt\":\"\"}", &r) == 0) {
        tap_ok(r.prompt && !r.prompt[0], "completion: an empty prompt string is taken");
        pi_oai_request_free(&r);
    } else {
        tap_ok(0, "completion: an empty prompt string");
    }
}

static void test_tokenize(void)
{
    struct pi_oai_error e;
    char *content;
    bool add, parse;
    const char *b = "{\"content\":\"Hello world\"}";
    int rc = pi_oai_parse_tokenize(b, strlen(b), &content, &add, &parse, &e);
    tap_ok(rc == 0 && content && !strcmp(content, "Hello world") && add && !parse, "tokenize: defaults");
    free(content);
    b = "{\"content\":\"x\",\"add_special\":false,\"parse_special\":true,\"with_pieces\":false}";
    rc = pi_oai_parse_tokenize(b, strlen(b), &content, &add, &parse, &e);
    tap_ok(rc == 0 && content && !add && parse, "tokenize: add_special and parse_special");
    free(content);
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{}", "content"},
        {"{\"content\":1}", "content"},
        {"{\"content\":\"x\",\"add_special\":1}", "add_special"},
        {"{\"content\":\"x\",\"parse_special\":\"no\"}", "parse_special"},
        {"[]", ""},
    };
    for (size_t i = 0; i < PI_ARRAY_LEN(bad); i++) {
        rc = pi_oai_parse_tokenize(bad[i].body, strlen(bad[i].body), &content, &add, &parse, &e);
        tap_ok(rc == -1 && e.status == 400 && !strcmp(e.param, bad[i].param) && !content, "tokenize refuses %s",
               bad[i].body);
    }

    int32_t *ids;
    size_t n;
    b = "{\"tokens\":[1,2,31999]}";
    rc = pi_oai_parse_detokenize(b, strlen(b), &lim, &ids, &n, &e);
    tap_ok(rc == 0 && n == 3 && ids[0] == 1 && ids[2] == 31999, "detokenize: ids");
    free(ids);
    b = "{\"tokens\":[]}";
    rc = pi_oai_parse_detokenize(b, strlen(b), &lim, &ids, &n, &e);
    tap_ok(rc == 0 && n == 0 && !ids, "detokenize: an empty list");
    static const struct {
        const char *body, *param;
    } dbad[] = {
        {"{}", "tokens"},
        {"{\"tokens\":\"1 2\"}", "tokens"},
        {"{\"tokens\":[1,-1]}", "tokens[1]"},
        {"{\"tokens\":[32000]}", "tokens[0]"},
        {"{\"tokens\":[1,2,3,4,5,6,7,8,9]}", "tokens"},
        {"{\"tokens\":[true]}", "tokens[0]"},
    };
    for (size_t i = 0; i < PI_ARRAY_LEN(dbad); i++) {
        rc = pi_oai_parse_detokenize(dbad[i].body, strlen(dbad[i].body), &lim, &ids, &n, &e);
        tap_ok(rc == -1 && e.status == 400 && !strcmp(e.param, dbad[i].param) && !ids && !n, "detokenize refuses %s",
               dbad[i].body);
    }
    char *s = pi_oai_tokens_json((const int32_t[]){5, 0, 31999}, 3);
    tap_is_str(s, "{\"tokens\":[5,0,31999]}", "tokens_json");
    free(s);
    s = pi_oai_tokens_json(NULL, 0);
    tap_is_str(s, "{\"tokens\":[]}", "tokens_json: none");
    free(s);
    s = pi_oai_content_json("a\377b\"", 4); /* octal: a hex escape would swallow the b */
    tap_is_str(s, "{\"content\":\"a\357\277\275b\\\"\"}", "content_json: a broken byte becomes U+FFFD");
    free(s);
    s = pi_oai_content_json("a\0b", 3);
    tap_is_str(s, "{\"content\":\"a\\u0000b\"}", "content_json: a NUL byte is written as \\u0000");
    free(s);
}

/* ---------------------------------------------------------------- responses, read back */

static json_t *load(char *s, const char *what)
{
    json_error_t je;
    json_t *j = s ? json_loads(s, 0, &je) : NULL;
    if (!tap_ok(j != NULL, "%s: valid JSON", what)) tap_diag("  %s", s ? s : "(null)");
    free(s);
    return j;
}

static const char *str_at(const json_t *o, const char *key) { return json_string_value(json_object_get(o, key)); }
static long long int_at(const json_t *o, const char *key) { return json_integer_value(json_object_get(o, key)); }

static bool head_ok(const json_t *j, const char *object)
{
    return j && !strcmp(str_at(j, "id") ? str_at(j, "id") : "", "chatcmpl-1") &&
           !strcmp(str_at(j, "object") ? str_at(j, "object") : "", object) && int_at(j, "created") == 1700000000 &&
           !strcmp(str_at(j, "model") ? str_at(j, "model") : "", "demo");
}

static bool usage_ok(const json_t *u, long long p, long long c)
{
    return json_is_object(u) && int_at(u, "prompt_tokens") == p && int_at(u, "completion_tokens") == c &&
           int_at(u, "total_tokens") == p + c;
}

/* Tokens: "Hi" (valid), then the euro sign split over two tokens ("\xe2\x82" and "\xac"). */
static const struct pi_oai_top tops0[] = {{"Hi", 2, -0.25f}, {"Hello", 5, -1.5f}};
static const struct pi_oai_top tops1[] = {{"\xe2\x82", 2, -0.5f}, {"x", 1, -INFINITY}};
static const struct pi_oai_logprob lps[] = {
    {"Hi", 2, -0.25f, tops0, 2},
    {"\xe2\x82", 2, -0.5f, tops1, 2},
    {"\xac", 1, NAN, NULL, 0},
};

static bool bytes_are(const json_t *a, const char *s, size_t n)
{
    if (!json_is_array(a) || json_array_size(a) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (json_integer_value(json_array_get(a, i)) != (uint8_t)s[i]) return false;
    return true;
}

static void test_chat_response(void)
{
    struct pi_oai_usage u = {12, 3};
    json_t *j = load(pi_oai_chat_response("chatcmpl-1", 1700000000, "demo", "Hi \xe2\x82\xac", 6, "stop", &u, NULL, 0),
                     "chat response");
    const json_t *ch = json_array_get(json_object_get(j, "choices"), 0), *msg = json_object_get(ch, "message");
    tap_ok(head_ok(j, "chat.completion"), "chat response: id, object, created, model");
    tap_ok(json_array_size(json_object_get(j, "choices")) == 1 && int_at(ch, "index") == 0 &&
               !strcmp(str_at(msg, "role"), "assistant") && !strcmp(str_at(msg, "content"), "Hi \xe2\x82\xac") &&
               !strcmp(str_at(ch, "finish_reason"), "stop") && json_is_null(json_object_get(ch, "logprobs")),
           "chat response: one choice, message, finish_reason, logprobs null");
    tap_ok(usage_ok(json_object_get(j, "usage"), 12, 3), "chat response: usage with total_tokens");
    json_decref(j);

    j = load(pi_oai_chat_response("chatcmpl-1", 1700000000, "demo", "Hi\xe2\x82\xac", 5, "length", &u, lps, 3),
             "chat response with logprobs");
    ch = json_array_get(json_object_get(j, "choices"), 0);
    const json_t *lp = json_object_get(ch, "logprobs"), *content = json_object_get(lp, "content");
    const json_t *t0 = json_array_get(content, 0), *t1 = json_array_get(content, 1), *t2 = json_array_get(content, 2);
    tap_ok(json_array_size(content) == 3 && json_is_null(json_object_get(lp, "refusal")) &&
               !strcmp(str_at(ch, "finish_reason"), "length"),
           "chat logprobs: three tokens");
    tap_ok(!strcmp(str_at(t0, "token"), "Hi") && fabs(json_real_value(json_object_get(t0, "logprob")) + 0.25) < 1e-6 &&
               bytes_are(json_object_get(t0, "bytes"), "Hi", 2),
           "chat logprobs: token, logprob, bytes");
    tap_ok(!strcmp(str_at(t1, "token"), "\xef\xbf\xbd") && bytes_are(json_object_get(t1, "bytes"), "\xe2\x82", 2),
           "chat logprobs: a partial sequence is U+FFFD in token, exact in bytes");
    tap_ok(!strcmp(str_at(t2, "token"), "\xef\xbf\xbd") && bytes_are(json_object_get(t2, "bytes"), "\xac", 1) &&
               json_real_value(json_object_get(t2, "logprob")) == -9999.0,
           "chat logprobs: a lone continuation byte; a NaN logprob is written as -9999");
    const json_t *top0 = json_object_get(t0, "top_logprobs"), *top1 = json_object_get(t1, "top_logprobs");
    tap_ok(json_array_size(top0) == 2 && !strcmp(str_at(json_array_get(top0, 1), "token"), "Hello") &&
               fabs(json_real_value(json_object_get(json_array_get(top0, 1), "logprob")) + 1.5) < 1e-6 &&
               bytes_are(json_object_get(json_array_get(top0, 1), "bytes"), "Hello", 5),
           "chat logprobs: top_logprobs entries");
    tap_ok(json_array_size(top1) == 2 &&
               json_real_value(json_object_get(json_array_get(top1, 1), "logprob")) == -9999.0 &&
               json_array_size(json_object_get(t2, "top_logprobs")) == 0,
           "chat logprobs: -inf is written as -9999; no alternatives is []");
    json_decref(j);
}

static void test_chat_chunks(void)
{
    json_t *j = load(pi_oai_chat_chunk("chatcmpl-1", 1700000000, "demo", "assistant", "", 0, NULL, NULL, 0, NULL),
                     "first chunk");
    const json_t *ch = json_array_get(json_object_get(j, "choices"), 0), *d = json_object_get(ch, "delta");
    tap_ok(head_ok(j, "chat.completion.chunk") && !strcmp(str_at(d, "role"), "assistant") &&
               !strcmp(str_at(d, "content"), "") && json_is_null(json_object_get(ch, "finish_reason")) &&
               json_is_null(json_object_get(ch, "logprobs")) && json_is_null(json_object_get(j, "usage")),
           "first chunk: role, empty content, finish_reason null, usage null");
    json_decref(j);
    j = load(pi_oai_chat_chunk("chatcmpl-1", 1700000000, "demo", NULL, "\xe2\x82", 2, NULL, lps + 1, 1, NULL),
             "middle chunk");
    ch = json_array_get(json_object_get(j, "choices"), 0);
    d = json_object_get(ch, "delta");
    tap_ok(!json_object_get(d, "role") && !strcmp(str_at(d, "content"), "\xef\xbf\xbd") &&
               json_array_size(json_object_get(json_object_get(ch, "logprobs"), "content")) == 1,
           "middle chunk: no role, content made valid, its logprobs");
    json_decref(j);
    j = load(pi_oai_chat_chunk("chatcmpl-1", 1700000000, "demo", NULL, NULL, 0, "stop", NULL, 0, NULL), "last chunk");
    ch = json_array_get(json_object_get(j, "choices"), 0);
    d = json_object_get(ch, "delta");
    tap_ok(json_is_object(d) && json_object_size(d) == 0 && !strcmp(str_at(ch, "finish_reason"), "stop"),
           "last chunk: empty delta, finish_reason");
    json_decref(j);
    struct pi_oai_usage u = {7, 9};
    j = load(pi_oai_chat_chunk("chatcmpl-1", 1700000000, "demo", NULL, NULL, 0, NULL, NULL, 0, &u), "usage chunk");
    tap_ok(head_ok(j, "chat.completion.chunk") && json_is_array(json_object_get(j, "choices")) &&
               json_array_size(json_object_get(j, "choices")) == 0 && usage_ok(json_object_get(j, "usage"), 7, 9),
           "usage chunk: choices [], usage");
    json_decref(j);
}

static void test_completion_response(void)
{
    struct pi_oai_usage u = {4, 3};
    json_t *j =
        load(pi_oai_completion_response("chatcmpl-1", 1700000000, "demo", "Hi\xe2\x82\xac", 5, "length", &u, lps, 3),
             "completion response");
    const json_t *ch = json_array_get(json_object_get(j, "choices"), 0), *lp = json_object_get(ch, "logprobs");
    tap_ok(head_ok(j, "text_completion") && !strcmp(str_at(ch, "text"), "Hi\xe2\x82\xac") && int_at(ch, "index") == 0 &&
               !strcmp(str_at(ch, "finish_reason"), "length") && usage_ok(json_object_get(j, "usage"), 4, 3),
           "completion response: text, index, finish_reason, usage");
    const json_t *toks = json_object_get(lp, "tokens"), *tlp = json_object_get(lp, "token_logprobs"),
                 *tops = json_object_get(lp, "top_logprobs"), *offs = json_object_get(lp, "text_offset");
    tap_ok(json_array_size(toks) == 3 && !strcmp(json_string_value(json_array_get(toks, 0)), "Hi") &&
               !strcmp(json_string_value(json_array_get(toks, 1)), "bytes:\\xe2\\x82") &&
               !strcmp(json_string_value(json_array_get(toks, 2)), "bytes:\\xac"),
           "completion logprobs: tokens, broken ones in the bytes: form");
    tap_ok(json_array_size(tlp) == 3 && fabs(json_real_value(json_array_get(tlp, 1)) + 0.5) < 1e-6 &&
               json_real_value(json_array_get(tlp, 2)) == -9999.0,
           "completion logprobs: token_logprobs");
    const json_t *top0 = json_array_get(tops, 0), *top1 = json_array_get(tops, 1);
    tap_ok(json_array_size(tops) == 3 && json_object_size(top0) == 2 &&
               fabs(json_real_value(json_object_get(top0, "Hello")) + 1.5) < 1e-6 &&
               json_is_real(json_object_get(top1, "bytes:\\xe2\\x82")) &&
               json_object_size(json_array_get(tops, 2)) == 0,
           "completion logprobs: top_logprobs as objects");
    tap_ok(json_array_size(offs) == 3 && json_integer_value(json_array_get(offs, 0)) == 0 &&
               json_integer_value(json_array_get(offs, 1)) == 2 && json_integer_value(json_array_get(offs, 2)) == 3,
           "completion logprobs: text_offset in characters");
    json_decref(j);

    j = load(pi_oai_completion_chunk("chatcmpl-1", 1700000000, "demo", " there", 6, NULL, NULL, 0, NULL),
             "completion chunk");
    ch = json_array_get(json_object_get(j, "choices"), 0);
    tap_ok(head_ok(j, "text_completion") && !strcmp(str_at(ch, "text"), " there") &&
               json_is_null(json_object_get(ch, "finish_reason")) && json_is_null(json_object_get(ch, "logprobs")),
           "completion chunk: text, finish_reason null");
    json_decref(j);
    j = load(pi_oai_completion_chunk("chatcmpl-1", 1700000000, "demo", NULL, 0, NULL, NULL, 0, &u),
             "completion usage chunk");
    tap_ok(json_array_size(json_object_get(j, "choices")) == 0 && usage_ok(json_object_get(j, "usage"), 4, 3),
           "completion usage chunk");
    json_decref(j);
}

static void test_misc(void)
{
    json_t *j = load(pi_oai_models("demo-relu", 1700000000, "pinfer"), "models");
    const json_t *m = json_array_get(json_object_get(j, "data"), 0);
    tap_ok(!strcmp(str_at(j, "object"), "list") && json_array_size(json_object_get(j, "data")) == 1 &&
               !strcmp(str_at(m, "id"), "demo-relu") && !strcmp(str_at(m, "object"), "model") &&
               int_at(m, "created") == 1700000000 && !strcmp(str_at(m, "owned_by"), "pinfer") &&
               !json_object_get(m, "model"),
           "models: list of one");
    json_decref(j);

    static const struct {
        int status;
        const char *type;
    } types[] = {{400, "invalid_request_error"}, {401, "authentication_error"}, {404, "not_found_error"},
                 {413, "invalid_request_error"}, {429, "rate_limit_error"},     {500, "server_error"},
                 {503, "server_error"}};
    for (size_t i = 0; i < PI_ARRAY_LEN(types); i++) {
        struct pi_oai_error e;
        pi_oai_error_set(&e, types[i].status, NULL, NULL, "status %d", types[i].status);
        tap_ok(e.status == types[i].status && !strcmp(e.type, types[i].type) && !e.param[0] && !e.code[0],
               "error %d is %s", types[i].status, types[i].type);
        check_error_json(&e, types[i].type);
    }
    struct pi_oai_error e;
    pi_oai_error_set(&e, 400, "messages[0].role", "invalid_value", "bad role '%s'", "caf\xc3");
    char *s = pi_oai_error_json(&e);
    tap_ok(s && strstr(s, "\"param\":\"messages[0].role\"") && strstr(s, "\"code\":\"invalid_value\"") &&
               strstr(s, "caf\xef\xbf\xbd"),
           "error json: param, code, a cut UTF-8 sequence repaired");
    free(s);

    char a[PI_OAI_ID_MAX], b[PI_OAI_ID_MAX], small[12];
    pi_oai_id(PI_OAI_CHAT, a, sizeof a);
    pi_oai_id(PI_OAI_CHAT, b, sizeof b);
    tap_ok(!strncmp(a, "chatcmpl-", 9) && strlen(a) > 20 && strcmp(a, b) != 0, "ids: chatcmpl-, distinct (%s, %s)", a,
           b);
    pi_oai_id(PI_OAI_COMPLETION, a, sizeof a);
    tap_ok(!strncmp(a, "cmpl-", 5) && strspn(a + 5, "0123456789abcdef") == strlen(a + 5), "ids: cmpl- and hex (%s)", a);
    pi_oai_id(PI_OAI_CHAT, small, sizeof small);
    tap_ok(strlen(small) == sizeof small - 1, "ids: truncated to the buffer");
}

int main(void)
{
    set_limits();
    test_bad_requests();
    test_deep_nesting();
    test_chat_valid();
    test_completion_valid();
    test_tokenize();
    test_chat_response();
    test_chat_chunks();
    test_completion_response();
    test_misc();
    return tap_done();
}
