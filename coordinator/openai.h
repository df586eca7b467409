/*
 * coordinator/openai.h - the OpenAI-compatible API's bodies: parsing and checking requests into C
 * structs, and building every response body (issue 19).
 *
 * The pure part between the HTTP server and the scheduler: no I/O, no threads, no HTTP, no logging
 * (a refused request is reported in struct pi_oai_error, which the server returns to the client and
 * puts in its one log line per request; logging here would let any client fill the log). Every
 * request body is hostile: it is read with jansson (which refuses bad UTF-8, "\u0000" in strings,
 * duplicate keys and nesting deeper than 2048), then checked field by field, and a refusal names the
 * field as a path ("messages[2].content[0].type") with OpenAI's error types and codes. Fields are
 * typed strictly: booleans must be JSON booleans, integers integral (2.0 is taken, 1.5 is not),
 * floats finite JSON numbers. A JSON null is taken as "absent" for every optional field, as OpenAI
 * does for its nullable ones. Unknown top-level fields are ignored (user, metadata, store,
 * service_tier, parallel_tool_calls, clients' own extensions); the fields that would change the
 * output in a way pinfer does not implement are refused as unsupported_parameter (tools, functions,
 * tool_choice, function_call, response_format other than text, n != 1, best_of > 1, echo, suffix,
 * grammar, json_schema, audio, modalities other than text).
 *
 * Error codes (struct pi_oai_error.code) are OpenAI's: invalid_json, invalid_type, invalid_value,
 * missing_required_parameter, unsupported_parameter, integer_below_min_value,
 * integer_above_max_value, decimal_below_min_value, decimal_above_max_value, array_above_max_length,
 * empty_array, string_above_max_length, empty_string, and context_length_exceeded (set by the
 * server, which alone knows the tokenized length).
 *
 * Responses are malloc'd NUL-terminated JSON text; any text given to them is made valid UTF-8 first
 * (broken bytes become U+FFFD), so a response is valid JSON whatever bytes the model produced.
 */
#ifndef PI_COORDINATOR_OPENAI_H
#define PI_COORDINATOR_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "text/chat.h"
#include "text/sample.h"

enum pi_oai_kind { PI_OAI_CHAT = 1, PI_OAI_COMPLETION = 2 };

/* An error for the client: HTTP status and OpenAI's error object. */
struct pi_oai_error {
    int status;        /* HTTP status: 400, 401, 404, 405, 413, 415, 429, 500, 503 */
    char type[40];     /* "invalid_request_error", "authentication_error" (401), "permission_error" (403),
                          "not_found_error" (404), "rate_limit_error" (429), "server_error" (5xx) */
    char param[96];    /* the offending field as a path ("messages[2].role", "stop[1]"); "" -> JSON null */
    char code[48];     /* see the list above; "" -> JSON null */
    char message[320]; /* one sentence a user can act on */
};

/* Fill e: status, type from status, param and code (NULL = ""), message printf-style. Each field is
 * truncated to its array (the JSON builder repairs a UTF-8 sequence cut short). */
void pi_oai_error_set(struct pi_oai_error *e, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* {"error": {"message", "type", "param", "code"}}: malloc'd, NUL-terminated (caller frees); NULL on no
 * memory. */
char *pi_oai_error_json(const struct pi_oai_error *e);

/* The server's bounds on a request; pi_oai_limits_default fills sane ones. */
struct pi_oai_limits {
    size_t max_messages;      /* 1024 */
    size_t max_stop;          /* 16 (OpenAI: 4) */
    size_t max_stop_bytes;    /* 256 per stop string */
    size_t max_logit_bias;    /* 1024 entries */
    size_t max_prompt_tokens; /* token arrays given as prompt or to detokenize: at most this many ids (1 << 20) */
    int32_t n_vocab;          /* token ids (logit_bias keys, prompt ids, detokenize ids) must be < this (default
                                 INT32_MAX: set the model's) */
    int64_t max_tokens_cap;   /* > 0: max_tokens above it is a 400; 0: no cap (default) */
};

void pi_oai_limits_default(struct pi_oai_limits *l);

/* A checked request. Every pointer is owned by the request (pi_oai_request_free), except the roles,
 * which point at the string constants "system", "user" and "assistant". */
struct pi_oai_request {
    enum pi_oai_kind kind;
    char *model; /* as sent (NULL when absent); the server checks it */
    /* chat: roles "system", "user", "assistant" ("developer" is taken as "system"); content a string,
     * or an array of {"type":"text","text":...} parts joined in order with "\n" between them (two
     * parts read as two lines, as vLLM joins them); any other part type is a 400 naming it */
    struct pi_chat_msg *msgs; /* (n_msgs) */
    size_t n_msgs;
    /* completion: prompt a string, an array of exactly one string, an array of token ids (then
     * prompt_ids, at least one), or an array of exactly one such array; one of prompt / prompt_ids is set */
    char *prompt;
    int32_t *prompt_ids; /* (n_prompt_ids), each in [0, n_vocab) */
    size_t n_prompt_ids;
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    int64_t max_tokens; /* -1 when absent, else >= 1; "max_completion_tokens" is the same field (both: 400) */
    /* starts as the defaults the caller passes; overridden by temperature [0, 2], top_p (0, 1], top_k
     * >= 0 (extension), min_p [0, 1] (extension), presence_penalty and frequency_penalty [-2, 2],
     * repeat_penalty > 0 (extension), repeat_last_n >= -1 (extension), seed (any int64, taken as its
     * uint64 bits; sets has_seed) */
    struct pi_sample_params sample;
    bool has_seed;
    char **stop; /* (n_stop) NUL-terminated, non-empty: "stop" as a string or a list */
    size_t n_stop;
    int32_t *bias_ids; /* (n_bias) logit_bias: keys are token ids as decimal strings ... */
    float *bias;       /* (n_bias) ... values in [-100, 100] */
    size_t n_bias;
    int top_logprobs; /* -1: no logprobs; else 0..20 alternatives per token (chat: logprobs true plus
                         top_logprobs, which needs logprobs; completion: logprobs N, 0..5) */
    bool ignore_eos;  /* extension */
};

/* Parse body (len bytes; need not be NUL-terminated) as kind's request with limits lim; sample fields
 * start from *defaults. Returns 0, or -1 with e filled: 400 for anything malformed or unsupported, 500
 * when memory runs out. On -1 *out holds nothing (it is freed and zeroed). */
int pi_oai_parse(enum pi_oai_kind kind, const char *body, size_t len, const struct pi_oai_limits *lim,
                 const struct pi_sample_params *defaults, struct pi_oai_request *out, struct pi_oai_error *e);

/* Free what r owns and zero it. Accepts NULL and a zeroed request. */
void pi_oai_request_free(struct pi_oai_request *r);

/* ---------------------------------------------------------------- responses
 * All malloc'd NUL-terminated JSON (caller frees), NULL on no memory. text is len bytes of UTF-8
 * (NULL when len is 0); id and model are NUL-terminated. Log probabilities that are not finite or
 * below -9999 are written as -9999 (JSON has no -inf; OpenAI uses the same floor). */
struct pi_oai_usage {
    int64_t prompt_tokens, completion_tokens; /* total_tokens is their sum */
};

struct pi_oai_top { /* one alternative at a position */
    const char *token;
    size_t len; /* token's bytes */
    float logprob;
};

struct pi_oai_logprob { /* one generated token */
    const char *token;
    size_t len; /* its bytes (may be a partial UTF-8 sequence: chat's "token" gets the valid text with
                   U+FFFD for broken bytes, "bytes" the exact byte values; completion's "tokens" entry is
                   OpenAI's "bytes:\xNN..." form for such a token) */
    float logprob;
    const struct pi_oai_top *top; /* (n_top) */
    size_t n_top;
};

/* A "chat.completion": one choice with message {role "assistant", content text}, finish ("stop",
 * "length"; NULL -> null), usage u (NULL -> null), logprobs {"content": [...]} from lp[0..n_lp) (lp
 * NULL: "logprobs": null). */
char *pi_oai_chat_response(const char *id, int64_t created, const char *model, const char *text, size_t len,
                           const char *finish, const struct pi_oai_usage *u, const struct pi_oai_logprob *lp,
                           size_t n_lp);

/* One "chat.completion.chunk": role (first chunk: "assistant", else NULL: omitted), content (text
 * NULL: omitted), finish (NULL unless last), lp as above; "usage" is null in these. usage non-NULL
 * makes the final usage-only chunk instead (choices [], the other arguments unused) for include_usage. */
char *pi_oai_chat_chunk(const char *id, int64_t created, const char *model, const char *role, const char *text,
                        size_t len, const char *finish, const struct pi_oai_logprob *lp, size_t n_lp,
                        const struct pi_oai_usage *usage);

/* A "text_completion": one choice {text, index 0, logprobs, finish_reason}, usage u. Logprobs in the
 * legacy form {"tokens", "token_logprobs", "top_logprobs" (one {token: logprob} object per position),
 * "text_offset"}; text_offset counts characters (code points) from the start of this response's
 * (or chunk's) tokens, as the server does not send the prompt back (no echo). */
char *pi_oai_completion_response(const char *id, int64_t created, const char *model, const char *text, size_t len,
                                 const char *finish, const struct pi_oai_usage *u, const struct pi_oai_logprob *lp,
                                 size_t n_lp);

/* One streamed "text_completion" chunk; usage non-NULL: the final usage-only chunk (choices []). */
char *pi_oai_completion_chunk(const char *id, int64_t created, const char *model, const char *text, size_t len,
                              const char *finish, const struct pi_oai_logprob *lp, size_t n_lp,
                              const struct pi_oai_usage *usage);

/* {"object":"list","data":[{"id":model,"object":"model","created":created,"owned_by":owner}]} */
char *pi_oai_models(const char *model, int64_t created, const char *owner);

/* POST /tokenize {"content": string (required), "add_special": bool (default true), "parse_special":
 * bool (default false)}: 0 with *content malloc'd (caller frees), or -1 with e filled (nothing
 * allocated). */
int pi_oai_parse_tokenize(const char *body, size_t len, char **content, bool *add_special, bool *parse_special,
                          struct pi_oai_error *e);

/* POST /detokenize {"tokens": [ids]}: each an integer in [0, n_vocab), at most max_prompt_tokens of
 * them. 0 with *ids malloc'd (NULL when *n is 0; caller frees), or -1 with e filled. */
int pi_oai_parse_detokenize(const char *body, size_t len, const struct pi_oai_limits *lim, int32_t **ids, size_t *n,
                            struct pi_oai_error *e);

/* The replies of /tokenize and /detokenize (llama-server's forms): {"tokens": [..]} and {"content": ".."}. */
char *pi_oai_tokens_json(const int32_t *ids, size_t n);
char *pi_oai_content_json(const char *text, size_t len);

/* Bytes pi_oai_id writes at most, NUL included. */
#define PI_OAI_ID_MAX 48

/* A response id, "chatcmpl-<hex>" / "cmpl-<hex>", unique in the process: 64 random bits drawn once
 * per process, then a counter. Thread-safe. Truncated (and NUL-terminated) when len is below
 * PI_OAI_ID_MAX. */
void pi_oai_id(enum pi_oai_kind kind, char *out, size_t len);

#endif
