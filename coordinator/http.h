/*
 * coordinator/http.h - pi-coordinator's HTTP API (server mode): OpenAI's chat and text completions
 * (streamed as server-sent events or whole), the model list, tokenize/detokenize, health and
 * Prometheus metrics, over libmicrohttpd. Requests become scheduler jobs (coordinator/sched.h); bodies
 * are parsed and answers built by coordinator/openai.h. doc/serving.md describes the API for users.
 *
 * Who may connect: every route but /health and /metrics needs one of the API keys ("Authorization:
 * Bearer KEY") when keys are configured; without keys the listener must be a loopback address (a
 * server reachable from the network without authentication is refused at start).
 */
#ifndef PI_COORDINATOR_HTTP_H
#define PI_COORDINATOR_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "coordinator/sched.h"
#include "text/chat.h"
#include "text/sample.h"
#include "text/tokenizer.h"

typedef struct pi_http pi_http_t;

struct pi_http_opts {
    const char *listen;       /* "HOST:PORT" ("[::1]:8080" for IPv6); port 0 picks a free one */
    const char *model_id;     /* the name /v1/models lists and responses carry */
    const char *api_key_file; /* NULL or "": no keys; else one key per line ('#' comments, blanks skipped) */
    size_t max_body;          /* request bodies larger than this get 413 */
    int max_connections;      /* connections held at once, at most half from one address; more are refused
                                 by the listener (0: 256) */
    int start_connections;    /* the cap until pi_http_set_max_connections, at most max_connections (0: that) */
    bool has_chat;            /* chat: the chat format resolved at start; false: /v1/chat/completions gives 400 */
    enum pi_chat_format chat;
    const char *chat_error;           /* why there is no chat format (shown in that 400) */
    struct pi_sample_params defaults; /* [generate]'s sampling, for what a request does not set */
    int64_t default_max_tokens;       /* [generate] n_predict for requests without max_tokens (-1: to the end) */
    bool default_seed_random;         /* [generate] seed -1: a request without a seed gets one from the clock */
    /* Optional: more metric families appended to /metrics (Prometheus text), e.g. the workers' restarts. */
    void (*metrics_extra)(void *ctx, FILE *out);
    void *metrics_ctx;
};

/* Start listening (threads of its own) with jobs going to sched and texts through tok (both borrowed;
 * they must outlive the server). NULL on failure, with one line on stderr naming the cause (a bad or
 * busy address, a non-loopback address without keys, an unreadable key file). Logs the address it
 * listens on ("http: listening on http://127.0.0.1:8080"). */
pi_http_t *pi_http_start(const struct pi_http_opts *o, pi_sched_t *sched, const pi_tokenizer_t *tok);

/* The port it listens on, and its address as "http://HOST:PORT" ("off" for NULL). */
int pi_http_port(const pi_http_t *h);
const char *pi_http_url(const pi_http_t *h);

/* Hold at most n connections from now on (1 to max_connections; the descriptor budget's share): past
 * it each new connection is closed as it comes; those open stay. Thread-safe; accepts NULL. */
void pi_http_set_max_connections(pi_http_t *h, int n);

/* Connections open now (0 for NULL). Thread-safe. */
int pi_http_connections(const pi_http_t *h);

/* Stop accepting, end the connections and free h (the scheduler's jobs of its requests are cancelled);
 * accepts NULL; nulls the pointer. Call after pi_sched_stop so that waiting handlers end. */
void pi_http_stop(pi_http_t **h);

/* Parse "HOST:PORT" / "[V6]:PORT" into host (len bytes) and *port. 0 or -PI_ERR_INVAL. */
int pi_http_parse_listen(const char *s, char *host, size_t len, int *port);

#endif
