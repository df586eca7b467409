/*
 * coordinator/openai.c - the OpenAI-compatible API's request parsing and response bodies (see
 * coordinator/openai.h for what is accepted and refused, and why).
 *
 * DESIGN: pure functions of their arguments except pi_oai_id, the module's only shared state: a
 * salt drawn once per process under pthread_once and an atomic counter, so that the HTTP server's
 * threads may call it at once. Everything else may run on any thread concurrently.
 *
 * Parsing: jansson builds the tree (bounded by the body, which the server bounds); then each field is
 * read through one of the want_* checkers, which either store a value or fill the error with the
 * field's path and return -1. The first refusal wins and everything allocated so far is freed by
 * pi_oai_request_free, which accepts a request filled halfway (every pointer starts NULL).
 *
 * Building: jansson again; json_object_set_new takes NULL (no memory) as a failure and frees what it
 * was given, so each builder ORs the results and frees the whole tree once at the end. Text is made
 * valid UTF-8 before it reaches jansson, which would refuse it otherwise.
 */
#include "config.h"

#include "coordinator/openai.h"

#include "lib/common.h"
#include "lib/rng.h"

#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* JSON text out: compact; floats (log probabilities, token biases) with the 9 digits a float needs. */
#define DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(9))
/* Integers written as JSON reals are taken only while exact in a double. */
#define EXACT_INT_MAX 9007199254740992.0 /* 2^53 */
/* OpenAI's floor for a log probability (JSON has no -inf). */
#define LOGPROB_FLOOR -9999.0
#define CHAT_TOP_LOGPROBS_MAX 20
#define COMPLETION_LOGPROBS_MAX 5
/* How much of a client's value an error message quotes. */
#define QUOTE "%.40s"

/* ---------------------------------------------------------------- errors */

static const char *type_of_status(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static void error_setv(struct pi_oai_error *e, int status, const char *param, const char *code, const char *fmt,
                       va_list ap) __attribute__((format(printf, 5, 0)));
static void error_setv(struct pi_oai_error *e, int status, const char *param, const char *code, const char *fmt,
                       va_list ap)
{
    e->status = status;
    snprintf(e->type, sizeof e->type, "%s", type_of_status(status));
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    vsnprintf(e->message, sizeof e->message, fmt, ap);
}

void pi_oai_error_set(struct pi_oai_error *e, int status, const char *param, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(e, status, param, code, fmt, ap);
    va_end(ap);
}

/* A 400 for the field at param; returns -1 for the caller to return. */
static int refuse(struct pi_oai_error *e, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(struct pi_oai_error *e, const char *param, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(e, 400, param, code, fmt, ap);
    va_end(ap);
    return -1;
}

/* A field's path into path[0..n), truncated when deeper than the error's param can hold anyway. */
static void pathf(char *path, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void pathf(char *path, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(path, n, fmt, ap);
    va_end(ap);
}

static int nomem(struct pi_oai_error *e)
{
    pi_oai_error_set(e, 500, NULL, NULL, "The server ran out of memory reading the request; try again later.");
    return -1;
}

/* ---------------------------------------------------------------- UTF-8 */

/* The length of the valid UTF-8 sequence at p[0..n) (n >= 1), or 0 with *skip = the bytes of its
 * longest valid prefix (at least 1), which become one U+FFFD (Unicode's "maximal subpart"). */
static size_t utf8_seq(const uint8_t *p, size_t n, size_t *skip)
{
    uint8_t c = p[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0; /* overlong */
        if (c == 0xED) hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90; /* overlong */
        if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
        *skip = 1;
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (i >= n || p[i] < l || p[i] > h) {
            *skip = i;
            return 0;
        }
    }
    return need + 1;
}

static bool utf8_valid(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t skip;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i, &skip);
        if (!k) return false;
        i += k;
    }
    return true;
}

/* A JSON string of s[0..n) with every broken sequence replaced by U+FFFD; NULL on no memory. */
static json_t *jtext(const char *s, size_t n)
{
    if (!n) return json_string("");
    if (utf8_valid(s, n)) return json_stringn(s, n);
    size_t cap;
    if (!pi_size_mul(n, 3, &cap)) return NULL; /* each bad byte grows to at most 3 */
    char *buf = malloc(cap);
    if (!buf) return NULL;
    const uint8_t *p = (const uint8_t *)s;
    size_t o = 0, skip;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i, &skip);
        if (k) {
            memcpy(buf + o, p + i, k);
            o += k, i += k;
        } else {
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3, i += skip;
        }
    }
    json_t *j = json_stringn(buf, o);
    free(buf);
    return j;
}

static json_t *jstr(const char *s) { return s ? jtext(s, strlen(s)) : json_null(); }

static char *dump(json_t *o)
{
    if (!o) return NULL;
    char *s = json_dumps(o, DUMP_FLAGS);
    json_decref(o);
    return s;
}

char *pi_oai_error_json(const struct pi_oai_error *e)
{
    json_t *in = json_object(), *root = json_object();
    int bad = !in || !root;
    if (in) {
        bad |= json_object_set_new(in, "message", jstr(e->message));
        bad |= json_object_set_new(in, "type", jstr(e->type));
        bad |= json_object_set_new(in, "param", e->param[0] ? jstr(e->param) : json_null());
        bad |= json_object_set_new(in, "code", e->code[0] ? jstr(e->code) : json_null());
    }
    if (root && in) bad |= json_object_set(root, "error", in);
    json_decref(in);
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return dump(root);
}

/* ---------------------------------------------------------------- typed fields */

void pi_oai_limits_default(struct pi_oai_limits *l)
{
    l->max_messages = 1024;
    l->max_stop = 16;
    l->max_stop_bytes = 256;
    l->max_logit_bias = 1024;
    l->max_prompt_tokens = (size_t)1 << 20;
    l->n_vocab = INT32_MAX;
    l->max_tokens_cap = 0;
}

/* "a string", "an array", ...: what the client sent, for messages. */
static const char *jtype(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* The member key of o, or NULL when absent or JSON null. Optional fields take null as absent: clients
 * generated from OpenAI's schema send null for every nullable field they were not given. */
static json_t *field(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static int wrong_type(struct pi_oai_error *e, const char *param, const char *want, const json_t *v)
{
    return refuse(e, param, "invalid_type", "Invalid type for '%s': expected %s, but got %s.", param, want, jtype(v));
}

static int want_bool(const json_t *v, const char *param, bool *out, struct pi_oai_error *e)
{
    if (!json_is_boolean(v)) return wrong_type(e, param, "a boolean", v);
    *out = json_is_true(v);
    return 0;
}

/* An integer: a JSON integer, or a real with no fraction that a double holds exactly. 2.0 is taken
 * because some clients write every number as a float (JavaScript, serialisers of Python floats); 1.5
 * and 1e300 are not, so no integer field ever sees a value that was rounded on its way here. */
static bool as_int(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (!json_is_real(v)) return false;
    double d = json_real_value(v);
    if (!(fabs(d) <= EXACT_INT_MAX) || d != floor(d)) return false;
    *out = (int64_t)d;
    return true;
}

static int want_int(const json_t *v, const char *param, int64_t lo, int64_t hi, int64_t *out, struct pi_oai_error *e)
{
    int64_t x;
    if (!as_int(v, &x)) return wrong_type(e, param, "an integer", v);
    if (x < lo)
        return refuse(e, param, "integer_below_min_value",
                      "Invalid '%s': integer below minimum value. Expected a value >= %" PRId64 ", but got %" PRId64
                      " instead.",
                      param, lo, x);
    if (x > hi)
        return refuse(e, param, "integer_above_max_value",
                      "Invalid '%s': integer above maximum value. Expected a value <= %" PRId64 ", but got %" PRId64
                      " instead.",
                      param, hi, x);
    *out = x;
    return 0;
}

/* A float in [lo, hi] ((lo, hi] when lo_open), checked again after the cast to float, so that a value
 * that rounds to the open bound or past FLT_MAX is refused too. */
static int want_float(const json_t *v, const char *param, double lo, double hi, bool lo_open, float *out,
                      struct pi_oai_error *e)
{
    if (!json_is_number(v)) return wrong_type(e, param, "a number", v);
    double d = json_number_value(v);
    float f = (float)d;
    if (!isfinite(d) || !isfinite(f))
        return refuse(e, param, "invalid_value", "Invalid '%s': not a finite number.", param);
    /* the negated comparisons also catch NaN, though jansson never yields one (it refuses overflow) */
    if (lo_open ? !(f > lo) : !(d >= lo))
        return refuse(e, param, "decimal_below_min_value",
                      "Invalid '%s': decimal below minimum value. Expected a value %s %g, but got %g instead.", param,
                      lo_open ? ">" : ">=", lo, d);
    if (!(d <= hi))
        return refuse(e, param, "decimal_above_max_value",
                      "Invalid '%s': decimal above maximum value. Expected a value <= %g, but got %g instead.", param,
                      hi, d);
    *out = f;
    return 0;
}

/* A copy of the string v (NUL-free: jansson refuses "\u0000" unless asked not to). */
static int want_strdup(const json_t *v, const char *param, char **out, struct pi_oai_error *e)
{
    if (!json_is_string(v)) return wrong_type(e, param, "a string", v);
    size_t n = json_string_length(v);
    char *s = malloc(n + 1);
    if (!s) return nomem(e);
    memcpy(s, json_string_value(v), n);
    s[n] = 0;
    *out = s;
    return 0;
}

/* Token ids from the array v (param names it): at most lim->max_prompt_tokens, each in [0, n_vocab);
 * *ids is NULL when there are none (allowed only with allow_empty). */
static int want_ids(const json_t *v, const char *param, const struct pi_oai_limits *lim, bool allow_empty,
                    int32_t **ids, size_t *n, struct pi_oai_error *e)
{
    char path[96];
    if (!json_is_array(v)) return wrong_type(e, param, "an array of token ids", v);
    size_t k = json_array_size(v);
    if (!k && !allow_empty)
        return refuse(e, param, "empty_array", "Invalid '%s': empty array. Expected at least one token id.", param);
    if (k > lim->max_prompt_tokens)
        return refuse(e, param, "array_above_max_length",
                      "Invalid '%s': %zu token ids, more than this server's limit of %zu.", param, k,
                      lim->max_prompt_tokens);
    int32_t *out = k ? malloc(k * sizeof *out) : NULL;
    if (k && !out) return nomem(e);
    for (size_t i = 0; i < k; i++) {
        pathf(path, sizeof path, "%s[%zu]", param, i);
        int64_t id;
        if (want_int(json_array_get(v, i), path, 0, (int64_t)lim->n_vocab - 1, &id, e)) {
            free(out);
            return -1;
        }
        out[i] = (int32_t)id;
    }
    *ids = out;
    *n = k;
    return 0;
}

/* ---------------------------------------------------------------- chat messages */

/* content as a string or text parts joined with "\n": a malloc'd copy in *out. */
static int want_content(const json_t *c, const char *param, char **out, struct pi_oai_error *e)
{
    char path[96];
    if (json_is_string(c)) return want_strdup(c, param, out, e);
    if (!json_is_array(c)) return wrong_type(e, param, "a string or an array of content parts", c);
    size_t n = json_array_size(c), total = 0;
    if (!n)
        return refuse(e, param, "empty_array", "Invalid '%s': empty array. Expected at least one text part.", param);
    for (size_t j = 0; j < n; j++) { /* check every part before allocating */
        const json_t *part = json_array_get(c, j), *type, *text;
        pathf(path, sizeof path, "%s[%zu]", param, j);
        if (!json_is_object(part)) return wrong_type(e, path, "an object", part);
        pathf(path, sizeof path, "%s[%zu].type", param, j);
        if (!(type = json_object_get(part, "type")))
            return refuse(e, path, "missing_required_parameter", "Missing required parameter: '%s'.", path);
        if (!json_is_string(type)) return wrong_type(e, path, "a string", type);
        if (strcmp(json_string_value(type), "text") != 0)
            return refuse(e, path, "invalid_value",
                          "Content parts of type '" QUOTE "' are not supported: this server takes text parts only.",
                          json_string_value(type));
        pathf(path, sizeof path, "%s[%zu].text", param, j);
        if (!(text = json_object_get(part, "text")))
            return refuse(e, path, "missing_required_parameter", "Missing required parameter: '%s'.", path);
        if (!json_is_string(text)) return wrong_type(e, path, "a string", text);
        total += json_string_length(text) + 1; /* bounded by the body: cannot wrap */
    }
    char *s = malloc(total);
    if (!s) return nomem(e);
    size_t o = 0;
    for (size_t j = 0; j < n; j++) {
        const json_t *text = json_object_get(json_array_get(c, j), "text");
        if (j) s[o++] = '\n';
        memcpy(s + o, json_string_value(text), json_string_length(text));
        o += json_string_length(text);
    }
    s[o] = 0;
    *out = s;
    return 0;
}

static int want_message(const json_t *m, size_t i, struct pi_chat_msg *msg, struct pi_oai_error *e)
{
    char path[96];
    pathf(path, sizeof path, "messages[%zu]", i);
    if (!json_is_object(m)) return wrong_type(e, path, "an object", m);
    pathf(path, sizeof path, "messages[%zu].role", i);
    const json_t *role = json_object_get(m, "role");
    if (!role) return refuse(e, path, "missing_required_parameter", "Missing required parameter: '%s'.", path);
    if (!json_is_string(role)) return wrong_type(e, path, "a string", role);
    const char *r = json_string_value(role);
    if (!strcmp(r, "system") || !strcmp(r, "developer")) msg->role = "system";
    else if (!strcmp(r, "user")) msg->role = "user";
    else if (!strcmp(r, "assistant")) msg->role = "assistant";
    else
        return refuse(e, path, "invalid_value",
                      "Invalid value: '" QUOTE "'. Supported roles are 'system', 'developer', 'user' and 'assistant' "
                      "(this server has no tools).",
                      r);
    /* a history with tool calls cannot be rendered without tools; an empty list (some clients always
     * send one) asks for nothing */
    static const char *const tool_keys[] = {"tool_calls", "function_call"};
    for (size_t k = 0; k < PI_ARRAY_LEN(tool_keys); k++) {
        const json_t *t = field(m, tool_keys[k]);
        if (!t || (json_is_array(t) && !json_array_size(t))) continue;
        pathf(path, sizeof path, "messages[%zu].%s", i, tool_keys[k]);
        return refuse(e, path, "unsupported_parameter", "'%s' is not supported: this server has no tools.", path);
    }
    pathf(path, sizeof path, "messages[%zu].content", i);
    const json_t *c = field(m, "content");
    if (!c) return refuse(e, path, "missing_required_parameter", "Missing required parameter: '%s'.", path);
    char *content = NULL;
    if (want_content(c, path, &content, e)) return -1;
    msg->content = content;
    return 0;
}

static int parse_messages(const json_t *root, const struct pi_oai_limits *lim, struct pi_oai_request *r,
                          struct pi_oai_error *e)
{
    const json_t *msgs = field(root, "messages");
    if (!msgs) return refuse(e, "messages", "missing_required_parameter", "Missing required parameter: 'messages'.");
    if (!json_is_array(msgs)) return wrong_type(e, "messages", "an array", msgs);
    size_t n = json_array_size(msgs);
    if (!n)
        return refuse(e, "messages", "empty_array", "Invalid 'messages': empty array. Expected at least one message.");
    if (n > lim->max_messages)
        return refuse(e, "messages", "array_above_max_length",
                      "Invalid 'messages': %zu messages, more than this server's limit of %zu.", n, lim->max_messages);
    r->msgs = calloc(n, sizeof *r->msgs);
    if (!r->msgs) return nomem(e);
    r->n_msgs = n; /* the free walks all n: contents not reached yet are NULL */
    for (size_t i = 0; i < n; i++)
        if (want_message(json_array_get(msgs, i), i, &r->msgs[i], e)) return -1;
    return 0;
}

/* ---------------------------------------------------------------- completion prompt */

static int parse_prompt(const json_t *root, const struct pi_oai_limits *lim, struct pi_oai_request *r,
                        struct pi_oai_error *e)
{
    const json_t *p = field(root, "prompt");
    if (!p) return refuse(e, "prompt", "missing_required_parameter", "Missing required parameter: 'prompt'.");
    if (json_is_string(p)) return want_strdup(p, "prompt", &r->prompt, e);
    if (!json_is_array(p)) return wrong_type(e, "prompt", "a string or an array", p);
    size_t n = json_array_size(p);
    if (!n) return refuse(e, "prompt", "empty_array", "Invalid 'prompt': empty array. Expected a prompt.");
    /* the first element decides the form; want_ids then checks every element as a token id */
    const json_t *first = json_array_get(p, 0);
    if (json_is_number(first)) return want_ids(p, "prompt", lim, false, &r->prompt_ids, &r->n_prompt_ids, e);
    if (!json_is_string(first) && !json_is_array(first))
        return wrong_type(e, "prompt[0]", "a string, a token id or an array of token ids", first);
    if (n != 1)
        return refuse(e, "prompt", "unsupported_parameter",
                      "Invalid 'prompt': %zu prompts in one request; this server takes one prompt per request.", n);
    if (json_is_string(first)) return want_strdup(first, "prompt[0]", &r->prompt, e);
    return want_ids(first, "prompt[0]", lim, false, &r->prompt_ids, &r->n_prompt_ids, e);
}

/* ---------------------------------------------------------------- sampling, stop, bias */

static int parse_sampling(const json_t *root, struct pi_oai_request *r, struct pi_oai_error *e)
{
    static const struct {
        const char *key;
        double lo, hi;
        bool lo_open;
        size_t off; /* of the float in struct pi_sample_params */
    } floats[] = {
        {"temperature", 0, 2, false, offsetof(struct pi_sample_params, temperature)},
        {"top_p", 0, 1, true, offsetof(struct pi_sample_params, top_p)},
        {"min_p", 0, 1, false, offsetof(struct pi_sample_params, min_p)},
        {"presence_penalty", -2, 2, false, offsetof(struct pi_sample_params, presence_penalty)},
        {"frequency_penalty", -2, 2, false, offsetof(struct pi_sample_params, frequency_penalty)},
        {"repeat_penalty", 0, FLT_MAX, true, offsetof(struct pi_sample_params, repeat_penalty)},
    };
    for (size_t i = 0; i < PI_ARRAY_LEN(floats); i++) {
        const json_t *v = field(root, floats[i].key);
        float f;
        if (!v) continue;
        if (want_float(v, floats[i].key, floats[i].lo, floats[i].hi, floats[i].lo_open, &f, e)) return -1;
        memcpy((char *)&r->sample + floats[i].off, &f, sizeof f);
    }
    const json_t *v;
    int64_t x;
    if ((v = field(root, "top_k"))) {
        if (want_int(v, "top_k", 0, INT32_MAX, &x, e)) return -1;
        r->sample.top_k = (int32_t)x;
    }
    if ((v = field(root, "repeat_last_n"))) {
        if (want_int(v, "repeat_last_n", -1, INT32_MAX, &x, e)) return -1;
        r->sample.repeat_last_n = (int32_t)x;
    }
    if ((v = field(root, "seed"))) {
        if (want_int(v, "seed", INT64_MIN, INT64_MAX, &x, e)) return -1;
        r->sample.seed = (uint64_t)x;
        r->has_seed = true;
    }
    return 0;
}

static int want_stop_string(const json_t *v, const char *param, const struct pi_oai_limits *lim, char **out,
                            struct pi_oai_error *e)
{
    if (!json_is_string(v)) return wrong_type(e, param, "a string", v);
    size_t n = json_string_length(v);
    if (!n) return refuse(e, param, "empty_string", "Invalid '%s': empty string. A stop string needs text.", param);
    if (n > lim->max_stop_bytes)
        return refuse(e, param, "string_above_max_length",
                      "Invalid '%s': %zu bytes, more than this server's limit of %zu per stop string.", param, n,
                      lim->max_stop_bytes);
    return want_strdup(v, param, out, e);
}

static int parse_stop(const json_t *root, const struct pi_oai_limits *lim, struct pi_oai_request *r,
                      struct pi_oai_error *e)
{
    char path[96];
    const json_t *v = field(root, "stop");
    if (!v) return 0;
    if (!json_is_string(v) && !json_is_array(v)) return wrong_type(e, "stop", "a string or an array of strings", v);
    size_t n = json_is_string(v) ? 1 : json_array_size(v);
    if (n > lim->max_stop)
        return refuse(e, "stop", "array_above_max_length",
                      "Invalid 'stop': %zu stop strings, more than this server's limit of %zu.", n, lim->max_stop);
    if (!n) return 0;
    r->stop = calloc(n, sizeof *r->stop);
    if (!r->stop) return nomem(e);
    r->n_stop = n; /* strings not reached yet are NULL for the free */
    if (json_is_string(v)) return want_stop_string(v, "stop", lim, &r->stop[0], e);
    for (size_t i = 0; i < n; i++) {
        pathf(path, sizeof path, "stop[%zu]", i);
        if (want_stop_string(json_array_get(v, i), path, lim, &r->stop[i], e)) return -1;
    }
    return 0;
}

/* A logit_bias key: 1 to 10 ASCII digits naming a token id below n_vocab. Parsed by hand, not with
 * strtol, which would also take " +5", "0x5" and 64-bit overflows. */
static bool bias_key(const char *k, int32_t n_vocab, int32_t *id)
{
    size_t n = strlen(k);
    uint64_t x = 0;
    if (n < 1 || n > 10) return false;
    for (size_t i = 0; i < n; i++) {
        if (k[i] < '0' || k[i] > '9') return false;
        x = x * 10 + (uint64_t)(k[i] - '0');
    }
    if (x >= (uint64_t)(n_vocab > 0 ? n_vocab : 0)) return false;
    *id = (int32_t)x;
    return true;
}

static int parse_bias(const json_t *root, const struct pi_oai_limits *lim, struct pi_oai_request *r,
                      struct pi_oai_error *e)
{
    char path[96];
    const json_t *v = field(root, "logit_bias");
    if (!v) return 0;
    if (!json_is_object(v)) return wrong_type(e, "logit_bias", "an object", v);
    size_t n = json_object_size(v), i = 0;
    if (n > lim->max_logit_bias)
        return refuse(e, "logit_bias", "invalid_value",
                      "Invalid 'logit_bias': %zu entries, more than this server's limit of %zu.", n,
                      lim->max_logit_bias);
    if (!n) return 0;
    r->bias_ids = malloc(n * sizeof *r->bias_ids);
    r->bias = malloc(n * sizeof *r->bias);
    if (!r->bias_ids || !r->bias) return nomem(e);
    for (void *it = json_object_iter((json_t *)v); it; it = json_object_iter_next((json_t *)v, it)) {
        const char *key = json_object_iter_key(it);
        const json_t *val = json_object_iter_value(it);
        int32_t id;
        if (!bias_key(key, lim->n_vocab, &id))
            return refuse(e, "logit_bias", "invalid_value",
                          "Invalid key '" QUOTE "' in 'logit_bias': keys are token ids in [0, %" PRId32 ").", key,
                          lim->n_vocab);
        pathf(path, sizeof path, "logit_bias.%s", key);
        if (want_float(val, path, -100, 100, false, &r->bias[i], e)) return -1;
        r->bias_ids[i++] = id;
        r->n_bias = i;
    }
    return 0;
}

/* ---------------------------------------------------------------- the rest of the fields */

/* Fields whose any non-null value asks for something this server does not do. */
static int refuse_unsupported(const json_t *root, struct pi_oai_error *e)
{
    static const char *const keys[] = {"grammar", "json_schema", "audio"};
    for (size_t i = 0; i < PI_ARRAY_LEN(keys); i++)
        if (field(root, keys[i]))
            return refuse(e, keys[i], "unsupported_parameter", "'%s' is not supported by this server.", keys[i]);
    static const char *const tools[] = {"tools", "functions"}; /* an empty list asks for nothing */
    for (size_t i = 0; i < PI_ARRAY_LEN(tools); i++) {
        const json_t *v = field(root, tools[i]);
        if (v && !json_is_array(v)) return wrong_type(e, tools[i], "an array", v);
        if (v && json_array_size(v))
            return refuse(e, tools[i], "unsupported_parameter", "'%s' is not supported: this server has no tools.",
                          tools[i]);
    }
    static const char *const choice[] = {"tool_choice", "function_call"}; /* "none"/"auto" without tools: no-ops */
    for (size_t i = 0; i < PI_ARRAY_LEN(choice); i++) {
        const json_t *v = field(root, choice[i]);
        const char *s = json_string_value(v);
        if (v && !(s && (!strcmp(s, "none") || !strcmp(s, "auto"))))
            return refuse(e, choice[i], "unsupported_parameter", "'%s' is not supported: this server has no tools.",
                          choice[i]);
    }
    const json_t *v = field(root, "response_format"), *t;
    if (v) {
        if (!json_is_object(v)) return wrong_type(e, "response_format", "an object", v);
        if (!(t = json_object_get(v, "type")))
            return refuse(e, "response_format.type", "missing_required_parameter",
                          "Missing required parameter: 'response_format.type'.");
        if (!json_is_string(t)) return wrong_type(e, "response_format.type", "a string", t);
        if (strcmp(json_string_value(t), "text") != 0)
            return refuse(e, "response_format.type", "unsupported_parameter",
                          "response_format '" QUOTE "' is not supported: this server produces text only.",
                          json_string_value(t));
    }
    if ((v = field(root, "modalities"))) {
        if (!json_is_array(v)) return wrong_type(e, "modalities", "an array", v);
        for (size_t i = 0; i < json_array_size(v); i++) {
            const char *s = json_string_value(json_array_get(v, i));
            if (!s || strcmp(s, "text") != 0)
                return refuse(e, "modalities", "unsupported_parameter", "Only the 'text' modality is supported.");
        }
    }
    return 0;
}

/* n, and for completions best_of, echo and suffix: each asks for more than one plain answer. */
static int parse_single_answer(const json_t *root, enum pi_oai_kind kind, struct pi_oai_error *e)
{
    const json_t *v;
    int64_t x;
    bool b = false;
    if ((v = field(root, "n"))) {
        if (want_int(v, "n", 1, INT64_MAX, &x, e)) return -1;
        if (x != 1)
            return refuse(e, "n", "unsupported_parameter", "Only n = 1 is supported: send one request per answer.");
    }
    if (kind != PI_OAI_COMPLETION) return 0;
    if ((v = field(root, "best_of"))) {
        if (want_int(v, "best_of", 1, INT64_MAX, &x, e)) return -1;
        if (x != 1) return refuse(e, "best_of", "unsupported_parameter", "Only best_of = 1 is supported.");
    }
    if ((v = field(root, "echo"))) {
        if (want_bool(v, "echo", &b, e)) return -1;
        if (b) return refuse(e, "echo", "unsupported_parameter", "echo is not supported: the prompt is not sent back.");
    }
    if ((v = field(root, "suffix"))) {
        if (!json_is_string(v)) return wrong_type(e, "suffix", "a string", v);
        if (json_string_length(v))
            return refuse(e, "suffix", "unsupported_parameter", "suffix (insertion) is not supported.");
    }
    return 0;
}

static int parse_length_and_logprobs(const json_t *root, const struct pi_oai_limits *lim, struct pi_oai_request *r,
                                     struct pi_oai_error *e)
{
    const json_t *mt = field(root, "max_tokens"), *mct = field(root, "max_completion_tokens"), *v;
    int64_t hi = lim->max_tokens_cap > 0 ? lim->max_tokens_cap : INT64_MAX, x;
    if (mt && mct)
        return refuse(e, "max_completion_tokens", "invalid_value",
                      "Send one of 'max_tokens' and 'max_completion_tokens', not both.");
    if (mt && want_int(mt, "max_tokens", 1, hi, &r->max_tokens, e)) return -1;
    if (mct && want_int(mct, "max_completion_tokens", 1, hi, &r->max_tokens, e)) return -1;
    if (r->kind == PI_OAI_COMPLETION) {
        if ((v = field(root, "logprobs"))) {
            if (want_int(v, "logprobs", 0, COMPLETION_LOGPROBS_MAX, &x, e)) return -1;
            r->top_logprobs = (int)x;
        }
        return 0;
    }
    bool lp = false;
    if ((v = field(root, "logprobs")) && want_bool(v, "logprobs", &lp, e)) return -1;
    x = 0;
    if ((v = field(root, "top_logprobs"))) {
        if (want_int(v, "top_logprobs", 0, CHAT_TOP_LOGPROBS_MAX, &x, e)) return -1;
        if (!lp)
            return refuse(e, "top_logprobs", "invalid_value",
                          "Invalid 'top_logprobs': it needs 'logprobs' set to true.");
    }
    r->top_logprobs = lp ? (int)x : -1;
    return 0;
}

static int parse_flags(const json_t *root, struct pi_oai_request *r, struct pi_oai_error *e)
{
    const json_t *v, *so;
    if ((v = field(root, "model")) && want_strdup(v, "model", &r->model, e)) return -1;
    if ((v = field(root, "stream")) && want_bool(v, "stream", &r->stream, e)) return -1;
    if ((v = field(root, "ignore_eos")) && want_bool(v, "ignore_eos", &r->ignore_eos, e)) return -1;
    /* stream_options without stream does nothing (OpenAI refuses it; llama-server ignores it, as here) */
    if ((so = field(root, "stream_options"))) {
        if (!json_is_object(so)) return wrong_type(e, "stream_options", "an object", so);
        if ((v = field(so, "include_usage")) && want_bool(v, "stream_options.include_usage", &r->include_usage, e))
            return -1;
    }
    return 0;
}

static json_t *load(const char *body, size_t len, struct pi_oai_error *e)
{
    json_error_t je;
    json_t *root = json_loadb(body ? body : "", body ? len : 0, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        refuse(e, NULL, "invalid_json", "The body is not valid JSON (%s, at byte %d); send one JSON object.", je.text,
               je.position);
        return NULL;
    }
    if (!json_is_object(root)) {
        refuse(e, NULL, "invalid_type", "The body must be a JSON object, not %s.", jtype(root));
        json_decref(root);
        return NULL;
    }
    return root;
}

int pi_oai_parse(enum pi_oai_kind kind, const char *body, size_t len, const struct pi_oai_limits *lim,
                 const struct pi_sample_params *defaults, struct pi_oai_request *out, struct pi_oai_error *e)
{
    PI_ASSERT(kind == PI_OAI_CHAT || kind == PI_OAI_COMPLETION);
    PI_ASSERT(lim && defaults && out && e);
    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->max_tokens = -1;
    out->top_logprobs = -1;
    out->sample = *defaults;
    /* The checks run in a fixed order, so a body with several faults always gets the same refusal:
     * the body, model/stream flags, messages or prompt, what is unsupported, then the numbers. */
    json_t *root = load(body, len, e);
    if (!root) {
        pi_oai_request_free(out);
        return -1;
    }
    int rc = parse_flags(root, out, e);
    if (!rc) rc = kind == PI_OAI_CHAT ? parse_messages(root, lim, out, e) : parse_prompt(root, lim, out, e);
    if (!rc) rc = refuse_unsupported(root, e);
    if (!rc) rc = parse_single_answer(root, kind, e);
    if (!rc) rc = parse_length_and_logprobs(root, lim, out, e);
    if (!rc) rc = parse_sampling(root, out, e);
    if (!rc) rc = parse_stop(root, lim, out, e);
    if (!rc) rc = parse_bias(root, lim, out, e);
    json_decref(root);
    if (rc) pi_oai_request_free(out);
    return rc ? -1 : 0;
}

void pi_oai_request_free(struct pi_oai_request *r)
{
    if (!r) return;
    free(r->model);
    for (size_t i = 0; r->msgs && i < r->n_msgs; i++) free((void *)(uintptr_t)r->msgs[i].content);
    free(r->msgs);
    free(r->prompt);
    free(r->prompt_ids);
    for (size_t i = 0; r->stop && i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->bias_ids);
    free(r->bias);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------- /tokenize, /detokenize */

int pi_oai_parse_tokenize(const char *body, size_t len, char **content, bool *add_special, bool *parse_special,
                          struct pi_oai_error *e)
{
    *content = NULL;
    *add_special = true;
    *parse_special = false;
    json_t *root = load(body, len, e), *v;
    if (!root) return -1;
    int rc = 0;
    if (!(v = field(root, "content")))
        rc = refuse(e, "content", "missing_required_parameter", "Missing required parameter: 'content'.");
    else rc = want_strdup(v, "content", content, e);
    if (!rc && (v = field(root, "add_special"))) rc = want_bool(v, "add_special", add_special, e);
    if (!rc && (v = field(root, "parse_special"))) rc = want_bool(v, "parse_special", parse_special, e);
    json_decref(root);
    if (rc) {
        free(*content);
        *content = NULL;
    }
    return rc ? -1 : 0;
}

int pi_oai_parse_detokenize(const char *body, size_t len, const struct pi_oai_limits *lim, int32_t **ids, size_t *n,
                            struct pi_oai_error *e)
{
    *ids = NULL;
    *n = 0;
    json_t *root = load(body, len, e), *v;
    if (!root) return -1;
    int rc;
    if (!(v = field(root, "tokens")))
        rc = refuse(e, "tokens", "missing_required_parameter", "Missing required parameter: 'tokens'.");
    else rc = want_ids(v, "tokens", lim, true, ids, n, e);
    json_decref(root);
    return rc ? -1 : 0;
}

/* ---------------------------------------------------------------- responses */

/* A log probability as a JSON real; -inf (a banned token), NaN and anything below the floor become
 * the floor, since JSON cannot carry them and a client must still be able to sort the values. */
static json_t *jlogprob(float lp)
{
    double d = lp;
    if (!isfinite(d) || d < LOGPROB_FLOOR) d = LOGPROB_FLOOR;
    return json_real(d);
}

/* [b0, b1, ...]: a token's exact bytes. */
static json_t *jbytes(const char *s, size_t n)
{
    json_t *a = json_array();
    int bad = !a;
    for (size_t i = 0; a && i < n; i++) bad |= json_array_append_new(a, json_integer((uint8_t)s[i]));
    if (bad) {
        json_decref(a);
        return NULL;
    }
    return a;
}

/* id, object, created, model: the head of every response and chunk. */
static json_t *head(const char *id, const char *object, int64_t created, const char *model)
{
    PI_ASSERT(id && model);
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = json_object_set_new(o, "id", jstr(id));
    bad |= json_object_set_new(o, "object", json_string(object));
    bad |= json_object_set_new(o, "created", json_integer(created));
    bad |= json_object_set_new(o, "model", jstr(model));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *usage(const struct pi_oai_usage *u)
{
    if (!u) return json_null();
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = json_object_set_new(o, "prompt_tokens", json_integer(u->prompt_tokens));
    bad |= json_object_set_new(o, "completion_tokens", json_integer(u->completion_tokens));
    bad |= json_object_set_new(o, "total_tokens", json_integer(u->prompt_tokens + u->completion_tokens));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* {"token", "logprob", "bytes"}: one entry of chat's logprobs. */
static json_t *chat_token(const char *s, size_t n, float lp)
{
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = json_object_set_new(o, "token", jtext(s, n));
    bad |= json_object_set_new(o, "logprob", jlogprob(lp));
    bad |= json_object_set_new(o, "bytes", jbytes(s, n));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Chat's {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal": null};
 * null when lp is NULL. */
static json_t *chat_logprobs(const struct pi_oai_logprob *lp, size_t n)
{
    if (!lp) return json_null();
    json_t *o = json_object(), *content = json_array();
    int bad = !o || !content;
    for (size_t i = 0; !bad && i < n; i++) {
        json_t *t = chat_token(lp[i].token, lp[i].len, lp[i].logprob), *tops = json_array();
        bad |= !t || !tops;
        for (size_t k = 0; !bad && k < lp[i].n_top; k++)
            bad |= json_array_append_new(tops, chat_token(lp[i].top[k].token, lp[i].top[k].len, lp[i].top[k].logprob));
        if (!bad) {
            bad |= json_object_set_new(t, "top_logprobs", tops);
            tops = NULL;
        }
        json_decref(tops);
        if (!bad) bad |= json_array_append_new(content, t);
        else json_decref(t);
    }
    if (!bad) {
        bad |= json_object_set_new(o, "content", content);
        content = NULL;
        bad |= json_object_set_new(o, "refusal", json_null());
    }
    json_decref(content);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* A legacy completion's token text: the text when it is valid UTF-8 without NUL, else OpenAI's
 * "bytes:\xNN..." form (ASCII), so it is also a usable object key. malloc'd in *out. */
static int legacy_token(const char *s, size_t n, char **out, size_t *out_len)
{
    bool plain = utf8_valid(s, n) && !memchr(s, 0, n);
    size_t cap;
    if (!pi_size_mul(n, 4, &cap) || !pi_size_add(cap, 7, &cap)) return -1;
    char *t = malloc(plain ? n + 1 : cap);
    if (!t) return -1;
    size_t o = 0;
    if (plain) {
        memcpy(t, s, n);
        o = n;
    } else {
        memcpy(t, "bytes:", 6);
        o = 6;
        for (size_t i = 0; i < n; i++) o += (size_t)snprintf(t + o, cap - o, "\\x%02x", (uint8_t)s[i]);
    }
    t[o] = 0;
    *out = t;
    *out_len = o;
    return 0;
}

/* One position's {token: logprob, ...}: the alternatives, the higher logprob where two share a text. */
static json_t *legacy_tops(const struct pi_oai_top *top, size_t n)
{
    json_t *o = json_object();
    int bad = !o;
    for (size_t k = 0; !bad && k < n; k++) {
        char *key;
        size_t kn;
        if (legacy_token(top[k].token, top[k].len, &key, &kn)) {
            bad = 1;
            break;
        }
        json_t *old = json_object_getn(o, key, kn);
        if (!old || json_real_value(old) < (double)top[k].logprob)
            bad |= json_object_setn_new(o, key, kn, jlogprob(top[k].logprob));
        free(key);
    }
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The legacy {"tokens", "token_logprobs", "top_logprobs", "text_offset"}; null when lp is NULL.
 * text_offset counts code points (bytes that do not continue a sequence) from the first token. */
static json_t *completion_logprobs(const struct pi_oai_logprob *lp, size_t n)
{
    if (!lp) return json_null();
    json_t *o = json_object(), *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    int bad = !o || !tokens || !lps || !tops || !offs;
    int64_t offset = 0;
    for (size_t i = 0; !bad && i < n; i++) {
        char *t;
        size_t tn;
        if (legacy_token(lp[i].token, lp[i].len, &t, &tn)) {
            bad = 1;
            break;
        }
        bad |= json_array_append_new(tokens, json_stringn(t, tn));
        free(t);
        bad |= json_array_append_new(lps, jlogprob(lp[i].logprob));
        bad |= json_array_append_new(tops, legacy_tops(lp[i].top, lp[i].n_top));
        bad |= json_array_append_new(offs, json_integer(offset));
        for (size_t b = 0; b < lp[i].len; b++) offset += ((uint8_t)lp[i].token[b] & 0xC0) != 0x80;
    }
    if (!bad) {
        bad |= json_object_set(o, "tokens", tokens);
        bad |= json_object_set(o, "token_logprobs", lps);
        bad |= json_object_set(o, "top_logprobs", tops);
        bad |= json_object_set(o, "text_offset", offs);
    }
    json_decref(tokens);
    json_decref(lps);
    json_decref(tops);
    json_decref(offs);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *jfinish(const char *finish) { return finish ? json_string(finish) : json_null(); }

/* The root with "choices": [choice] (with_choice false: [], the usage-only chunk) and "usage". Takes
 * the references to root, choice and usage_v, whatever happens: the builders pass what they made,
 * NULL included (no memory), and this frees everything once. */
static char *finish_root(json_t *root, json_t *choice, bool with_choice, json_t *usage_v)
{
    json_t *choices = json_array();
    int bad = !root || !choices || (with_choice && !choice) || !usage_v;
    if (!bad && with_choice) bad |= json_array_append(choices, choice);
    if (!bad) bad |= json_object_set(root, "choices", choices);
    if (!bad) bad |= json_object_set(root, "usage", usage_v);
    json_decref(choice);
    json_decref(choices);
    json_decref(usage_v);
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return dump(root);
}

char *pi_oai_chat_response(const char *id, int64_t created, const char *model, const char *text, size_t len,
                           const char *finish, const struct pi_oai_usage *u, const struct pi_oai_logprob *lp,
                           size_t n_lp)
{
    json_t *choice = json_object(), *msg = json_object();
    int bad = !choice || !msg;
    if (msg) {
        bad |= json_object_set_new(msg, "role", json_string("assistant"));
        bad |= json_object_set_new(msg, "content", jtext(text, len));
        bad |= json_object_set_new(msg, "refusal", json_null());
    }
    if (choice) {
        bad |= json_object_set_new(choice, "index", json_integer(0));
        bad |= msg ? json_object_set(choice, "message", msg) : -1;
        bad |= json_object_set_new(choice, "logprobs", chat_logprobs(lp, n_lp));
        bad |= json_object_set_new(choice, "finish_reason", jfinish(finish));
    }
    json_decref(msg);
    if (bad) {
        json_decref(choice);
        return NULL;
    }
    return finish_root(head(id, "chat.completion", created, model), choice, true, usage(u));
}

char *pi_oai_chat_chunk(const char *id, int64_t created, const char *model, const char *role, const char *text,
                        size_t len, const char *finish, const struct pi_oai_logprob *lp, size_t n_lp,
                        const struct pi_oai_usage *u)
{
    json_t *root = head(id, "chat.completion.chunk", created, model);
    if (u) return finish_root(root, NULL, false, usage(u));
    json_t *choice = json_object(), *delta = json_object();
    int bad = !choice || !delta;
    if (delta && role) bad |= json_object_set_new(delta, "role", json_string(role));
    if (delta && text) bad |= json_object_set_new(delta, "content", jtext(text, len));
    if (choice) {
        bad |= json_object_set_new(choice, "index", json_integer(0));
        bad |= delta ? json_object_set(choice, "delta", delta) : -1;
        bad |= json_object_set_new(choice, "logprobs", chat_logprobs(lp, n_lp));
        bad |= json_object_set_new(choice, "finish_reason", jfinish(finish));
    }
    json_decref(delta);
    if (bad) {
        json_decref(choice);
        json_decref(root);
        return NULL;
    }
    return finish_root(root, choice, true, json_null());
}

/* One text_completion choice. */
static json_t *completion_choice(const char *text, size_t len, const char *finish, const struct pi_oai_logprob *lp,
                                 size_t n_lp)
{
    json_t *choice = json_object();
    if (!choice) return NULL;
    int bad = json_object_set_new(choice, "text", jtext(text, len));
    bad |= json_object_set_new(choice, "index", json_integer(0));
    bad |= json_object_set_new(choice, "logprobs", completion_logprobs(lp, n_lp));
    bad |= json_object_set_new(choice, "finish_reason", jfinish(finish));
    if (bad) {
        json_decref(choice);
        return NULL;
    }
    return choice;
}

char *pi_oai_completion_response(const char *id, int64_t created, const char *model, const char *text, size_t len,
                                 const char *finish, const struct pi_oai_usage *u, const struct pi_oai_logprob *lp,
                                 size_t n_lp)
{
    return finish_root(head(id, "text_completion", created, model), completion_choice(text, len, finish, lp, n_lp),
                       true, usage(u));
}

char *pi_oai_completion_chunk(const char *id, int64_t created, const char *model, const char *text, size_t len,
                              const char *finish, const struct pi_oai_logprob *lp, size_t n_lp,
                              const struct pi_oai_usage *u)
{
    json_t *root = head(id, "text_completion", created, model);
    if (u) return finish_root(root, NULL, false, usage(u));
    return finish_root(root, completion_choice(text, len, finish, lp, n_lp), true, json_null());
}

char *pi_oai_models(const char *model, int64_t created, const char *owner)
{
    json_t *root = json_object(), *data = json_array(), *m = head(model, "model", created, model);
    int bad = !root || !data || !m;
    if (m) {
        /* head() wrote "model" too: a model object has none */
        json_object_del(m, "model");
        bad |= json_object_set_new(m, "owned_by", jstr(owner ? owner : "pinfer"));
    }
    if (!bad) bad |= json_array_append(data, m);
    if (root) {
        bad |= json_object_set_new(root, "object", json_string("list"));
        bad |= data ? json_object_set(root, "data", data) : -1;
    }
    json_decref(m);
    json_decref(data);
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return dump(root);
}

char *pi_oai_tokens_json(const int32_t *ids, size_t n)
{
    json_t *root = json_object(), *a = json_array();
    int bad = !root || !a;
    for (size_t i = 0; !bad && i < n; i++) bad |= json_array_append_new(a, json_integer(ids[i]));
    if (!bad) bad |= json_object_set(root, "tokens", a);
    json_decref(a);
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return dump(root);
}

char *pi_oai_content_json(const char *text, size_t len)
{
    json_t *root = json_object();
    if (!root) return NULL;
    if (json_object_set_new(root, "content", jtext(text, len))) {
        json_decref(root);
        return NULL;
    }
    return dump(root);
}

/* ---------------------------------------------------------------- ids */

static pthread_once_t id_once = PTHREAD_ONCE_INIT;
static uint64_t id_salt;                /* written once under id_once */
static _Atomic uint64_t id_counter = 0; /* ids handed out so far */

static void id_init(void) { id_salt = pi_rng_entropy_seed(); }

void pi_oai_id(enum pi_oai_kind kind, char *out, size_t len)
{
    pthread_once(&id_once, id_init);
    uint64_t k = atomic_fetch_add(&id_counter, 1);
    /* the salt has a fixed width, so salt + counter never reads as another salt + counter */
    snprintf(out, len, "%s-%016" PRIx64 "%08" PRIx64, kind == PI_OAI_CHAT ? "chatcmpl" : "cmpl", id_salt, k);
}
