/*
 * coordinator/http.c - the HTTP API over libmicrohttpd (coordinator/http.h says what it serves).
 *
 * DESIGN (threads and ownership): libmicrohttpd runs one thread per connection (so a handler may
 * block); the scheduler's thread calls the sinks. A generation request is a struct hreq shared by
 * three holders, each with a reference: the connection (until libmicrohttpd's completion callback),
 * the response's reader (streaming: until its free callback) and the scheduler (until the job's end
 * callback). The last to drop its reference frees it. Everything the sinks and the reader share is
 * under hreq.mu; the sinks only append and signal, never wait.
 *   - Whole answers: the handler waits (cond, in slices of POLL_MS) for the end, checking between
 *     slices that the client is still connected; a client that went away cancels its job.
 *   - Streams: the handler queues a response whose reader formats each batch of pieces as one SSE
 *     "data:" event; it waits the same way, and returns an error to libmicrohttpd (which closes the
 *     connection) when the client went away, after cancelling the job. A job that ends in an error
 *     after the stream began sends an error event, then "data: [DONE]".
 * A client's disconnection is seen by a non-blocking peek at its socket (EOF or an error), so a
 * generation stops within POLL_MS of it whether or not anything was being written.
 *
 * Descriptors: each connection is one socket and one thread (its thread polls the socket and the
 * daemon's one inter-thread eventfd, shared by all). libmicrohttpd's MHD_OPTION_CONNECTION_LIMIT is
 * [http] max_connections, fixed when the daemon starts; the server's descriptor budget
 * (coordinator/fd-budget.h), known only once the engine runs, is applied afterwards as cap: past it
 * the accept policy (on_accept, in the daemon's thread, after accept()) closes each new connection
 * at once, so the connections never pass the cap by more than the one being closed. Connections are
 * counted (open) by libmicrohttpd's start and close notifications, both from the daemon's thread. On
 * EMFILE at accept() libmicrohttpd does not abort: it stops accepting until a connection closes (it
 * logs "Hit process or system resource limit"; with no connection open it retries at every poll).
 */
#include "config.h"
#include "coordinator/http.h"

#include "coordinator/openai.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/secret.h"
#include "text/unicode.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define POLL_MS 100        /* how often a waiting handler checks its client */
#define KEEPALIVE_MS 10000 /* a stream silent this long gets an SSE comment */
#define IDLE_S 30          /* a connection idle this long (headers unfinished, nothing read) is closed */
#define MAX_KEYS 64        /* API keys in the key file, at most */
#define MAX_KEY_LEN 256
#define DRAIN_FACTOR 16 /* an oversized body is read (and dropped) up to this many limits */

struct pi_http {
    struct MHD_Daemon *d;
    pi_sched_t *sched;
    const pi_tokenizer_t *tok;
    struct pi_http_opts o;
    char *model_id;
    char *keys[MAX_KEYS];
    size_t n_keys;
    int port;
    char url[300];                 /* "http://HOST:PORT" as bound */
    int64_t created;               /* the model's "created" in /v1/models: the server's start */
    _Atomic uint64_t by_status[6]; /* answers by status class: 2xx, 4xx (not 429), 429, 5xx, other, streams */
    _Atomic int cap;               /* connections held at most now (the descriptor budget's share) */
    _Atomic int open;              /* connections open (libmicrohttpd's notifications) */
    uint64_t refused;              /* connections closed at the cap (the daemon's thread only) */
    char bos[256], eos[256];       /* the vocabulary's BOS/EOS texts for chat templates ("" = none) */
};

enum route { R_NONE = 0, R_CHAT, R_COMPLETION, R_MODELS, R_HEALTH, R_METRICS, R_TOKENIZE, R_DETOKENIZE };

/* Text and token events of one job, between its sinks and its handler or reader. */
struct lp_entry {
    char *tok; /* the token's bytes */
    size_t len;
    float lp;
    int n_top;
    struct pi_oai_top top[PI_SCHED_MAX_TOP];
    char *top_text[PI_SCHED_MAX_TOP];
};

struct hreq {
    _Atomic int refs;
    struct pi_http *h;
    enum route route;
    /* the body */
    char *body;
    size_t len, cap;
    bool too_big;
    uint64_t dropped; /* body bytes read past the limit */
    /* a generation */
    struct pi_oai_request rq;
    bool parsed;
    uint64_t job;
    char id[64];
    int64_t created;
    int n_prompt;
    uint64_t client; /* its API key or address (the scheduler's fairness) */
    int fd;          /* the client's socket, for the disconnection check */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu: what the sinks produced and the reader or handler has not taken yet */
    char *text; /* pending text (all of it for whole answers) */
    size_t text_len, text_cap;
    struct lp_entry *lps; /* (n_lps) pending logprob entries */
    size_t n_lps, lps_cap;
    bool ended;
    struct pi_sched_end end; /* when ended (text fields not kept) */
    /* the reader's (streaming) */
    char *out; /* formatted bytes not yet given to libmicrohttpd */
    size_t out_len, out_off, out_cap;
    bool sent_role, done;
    int64_t last_out_ns;
};

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void lp_clear(struct hreq *r)
{
    for (size_t i = 0; i < r->n_lps; i++) {
        free(r->lps[i].tok);
        for (int k = 0; k < r->lps[i].n_top; k++) free(r->lps[i].top_text[k]);
    }
    r->n_lps = 0;
}

static void hreq_unref(struct hreq *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
    lp_clear(r);
    free(r->lps);
    free(r->text);
    free(r->out);
    free(r->body);
    if (r->parsed) pi_oai_request_free(&r->rq);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* ---- growable buffers ---- */

static bool buf_add(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = PI_MAX(*cap * 2, *len + n + 256);
        char *q = realloc(*buf, c);
        if (!q) return false;
        *buf = q;
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';
    return true;
}

/* Bytes b (n) as valid UTF-8 (broken sequences become U+FFFD, NUL too: JSON strings carry it, but
 * keeping it out spares every client), malloc'd and NUL-terminated; *out_len its length. */
static char *utf8_clean(const char *b, size_t n, size_t *out_len)
{
    char *o = malloc(n * 3 + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char c = (unsigned char)b[i];
        size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        bool ok = need > 0 && i + need <= n && c != 0 && !(need == 2 && c < 0xC2);
        for (size_t j = 1; ok && j < need; j++) ok = ((unsigned char)b[i + j] & 0xC0) == 0x80;
        if (ok && need == 3) { /* no overlongs, no surrogates */
            const unsigned char c1 = (unsigned char)b[i + 1];
            ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
        }
        if (ok && need == 4) {
            const unsigned char c1 = (unsigned char)b[i + 1];
            ok = !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90) && c <= 0xF4;
        }
        if (ok) {
            memcpy(o + k, b + i, need);
            k += need;
            i += need;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    o[k] = '\0';
    *out_len = k;
    return o;
}

/* ---- answers ---- */

static void count_status(struct pi_http *h, unsigned status)
{
    const int c = status == 429                   ? 2
                  : status >= 200 && status < 300 ? 0
                  : status >= 400 && status < 500 ? 1
                  : status >= 500                 ? 3
                                                  : 4;
    atomic_fetch_add(&h->by_status[c], 1);
}

/* Queue body (malloc'd, taken) with status and content type; Retry-After: 1 with 429, and with retry
 * (a 503 that will pass: the model loading or restarting). Not with a timeout or a cancel: an SDK would
 * retry those and run the whole request again. */
static enum MHD_Result answer_r(struct pi_http *h, struct MHD_Connection *c, unsigned status, char *body,
                                const char *type, bool retry)
{
    if (!body) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
                                  "\"code\":null}}";
        body = strdup(oom);
        status = 500;
        if (!body) return MHD_NO;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    if (status == 429 || retry) MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    count_status(h, status);
    enum MHD_Result ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Queue body with status; Retry-After goes with 429 only (see answer_r). */
static enum MHD_Result answer(struct pi_http *h, struct MHD_Connection *c, unsigned status, char *body,
                              const char *type)
{
    return answer_r(h, c, status, body, type, false);
}

static enum MHD_Result answer_json(struct pi_http *h, struct MHD_Connection *c, unsigned status, char *body)
{
    return answer(h, c, status, body, "application/json");
}

static enum MHD_Result answer_error(struct pi_http *h, struct MHD_Connection *c, const struct pi_oai_error *e)
{
    return answer_json(h, c, (unsigned)e->status, pi_oai_error_json(e));
}

static enum MHD_Result fail(struct pi_http *h, struct MHD_Connection *c, int status, const char *param,
                            const char *code, const char *fmt, ...)
{
    struct pi_oai_error e;
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pi_oai_error_set(&e, status, param, code, "%s", msg);
    return answer_error(h, c, &e);
}

/* ---- the sinks (the scheduler's thread) ---- */

static void sink_piece(void *ctx, const struct pi_sched_piece *p)
{
    struct hreq *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (p->len) buf_add(&r->text, &r->text_len, &r->text_cap, p->text, p->len);
    if (r->rq.top_logprobs >= 0 && p->token >= 0) {
        if (r->n_lps == r->lps_cap) {
            size_t c = r->lps_cap ? r->lps_cap * 2 : 16;
            struct lp_entry *q = realloc(r->lps, c * sizeof *q);
            if (q) r->lps = q, r->lps_cap = c;
        }
        if (r->n_lps < r->lps_cap) {
            struct lp_entry *e = &r->lps[r->n_lps];
            memset(e, 0, sizeof *e);
            size_t n = 0;
            const char *t = r->h->tok ? pi_token_piece(r->h->tok, p->token, &n) : NULL;
            char num[16];
            if (!t) n = (size_t)snprintf(num, sizeof num, "%d", (int)p->token), t = num;
            e->tok = malloc(n + 1);
            if (e->tok) memcpy(e->tok, t, n), e->tok[n] = '\0', e->len = n;
            e->lp = p->logprob;
            for (int k = 0; k < p->n_top && k < PI_SCHED_MAX_TOP; k++) {
                size_t m = 0;
                const char *tt = r->h->tok ? pi_token_piece(r->h->tok, p->top_ids[k], &m) : NULL;
                if (!tt) m = (size_t)snprintf(num, sizeof num, "%d", (int)p->top_ids[k]), tt = num;
                e->top_text[k] = malloc(m + 1);
                if (!e->top_text[k]) break;
                memcpy(e->top_text[k], tt, m);
                e->top_text[k][m] = '\0';
                e->top[k] = (struct pi_oai_top){e->top_text[k], m, p->top_lp[k]};
                e->n_top = k + 1;
            }
            if (e->tok) r->n_lps++;
        }
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void sink_end(void *ctx, const struct pi_sched_end *e)
{
    struct hreq *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (e->len) buf_add(&r->text, &r->text_len, &r->text_cap, e->text, e->len);
    r->end = *e;
    r->end.text = NULL;
    r->end.len = 0;
    r->ended = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    hreq_unref(r);
}

/* ---- the client's presence ---- */

/* True when the client closed its side or the socket failed. */
static bool client_gone(int fd)
{
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) return true;
    char b;
    const ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Wait (mu held) up to POLL_MS for a change. */
static void wait_slice(struct hreq *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t at = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + (int64_t)POLL_MS * 1000000;
    ts.tv_sec = at / 1000000000;
    ts.tv_nsec = at % 1000000000;
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
}

/* ---- building the answers ---- */

static const char *finish_str(const struct pi_sched_end *e) { return e->finish == PI_SCHED_STOP ? "stop" : "length"; }

/* Logprobs asked for but no token yet: "logprobs" is then an empty list, not null. */
static const struct pi_oai_logprob no_lp;

/* The pending logprob entries as the builders' array (borrowing r's strings): *n entries. */
static struct pi_oai_logprob *lp_view(struct hreq *r, size_t *n)
{
    *n = 0;
    if (r->rq.top_logprobs < 0 || !r->n_lps) return NULL;
    struct pi_oai_logprob *v = calloc(r->n_lps, sizeof *v);
    if (!v) return NULL;
    for (size_t i = 0; i < r->n_lps; i++)
        v[i] =
            (struct pi_oai_logprob){r->lps[i].tok, r->lps[i].len, r->lps[i].lp, r->lps[i].top, (size_t)r->lps[i].n_top};
    *n = r->n_lps;
    return v;
}

/* The error a failed job answers with. */
static void end_error(const struct hreq *r, struct pi_oai_error *e)
{
    const struct pi_sched_end *x = &r->end;
    if (x->finish == PI_SCHED_ERROR && x->status == -PI_ERR_RANGE)
        pi_oai_error_set(e, 400, r->route == R_CHAT ? "messages" : "prompt", "context_length_exceeded", "%s",
                         x->reason);
    else if (x->finish == PI_SCHED_ERROR)
        pi_oai_error_set(e, x->status == -PI_ERR_PEER ? 503 : 500, NULL, NULL, "%s", x->reason);
    else if (x->finish == PI_SCHED_TIMEOUT)
        pi_oai_error_set(e, 504, NULL, "timeout", "%s ([server] timeout)", x->reason);
    else pi_oai_error_set(e, 503, NULL, "cancelled", "%s", x->reason);
}

static char *whole_answer(struct hreq *r)
{
    size_t n_lp = 0, clen = 0;
    struct pi_oai_logprob *lp = lp_view(r, &n_lp);
    char *text = utf8_clean(r->text ? r->text : "", r->text_len, &clen);
    struct pi_oai_usage u = {r->end.n_prompt, r->end.n_generated};
    char *body = NULL;
    if (text && r->route == R_CHAT)
        body = pi_oai_chat_response(r->id, r->created, r->h->model_id, text, clen, finish_str(&r->end), &u,
                                    r->rq.top_logprobs >= 0 ? (lp ? lp : &no_lp) : NULL,
                                    r->rq.top_logprobs >= 0 ? n_lp : 0);
    else if (text)
        body = pi_oai_completion_response(r->id, r->created, r->h->model_id, text, clen, finish_str(&r->end), &u,
                                          r->rq.top_logprobs >= 0 ? (lp ? lp : &no_lp) : NULL,
                                          r->rq.top_logprobs >= 0 ? n_lp : 0);
    free(text);
    free(lp);
    return body;
}

/* One SSE event "data: JSON\n\n" into r->out; JSON is taken. */
static bool sse_add(struct hreq *r, char *json)
{
    if (!json) return false;
    bool ok = buf_add(&r->out, &r->out_len, &r->out_cap, "data: ", 6) &&
              buf_add(&r->out, &r->out_len, &r->out_cap, json, strlen(json)) &&
              buf_add(&r->out, &r->out_len, &r->out_cap, "\n\n", 2);
    free(json);
    return ok;
}

/* Format what the sinks left (mu held) as SSE events; at the end, the final chunk, usage and [DONE]. */
static bool sse_format(struct hreq *r)
{
    const bool chat = r->route == R_CHAT;
    const char *model = r->h->model_id;
    bool ok = true;
    if (chat && !r->sent_role) {
        ok = sse_add(r, pi_oai_chat_chunk(r->id, r->created, model, "assistant", "", 0, NULL, NULL, 0, NULL));
        r->sent_role = true;
    }
    if (ok && (r->text_len || r->n_lps)) {
        size_t n_lp = 0, clen = 0;
        struct pi_oai_logprob *lp = lp_view(r, &n_lp);
        char *text = utf8_clean(r->text ? r->text : "", r->text_len, &clen);
        const struct pi_oai_logprob *lpa = r->rq.top_logprobs >= 0 ? (lp ? lp : &no_lp) : NULL;
        if (!text) ok = false;
        else if (chat)
            ok = sse_add(r, pi_oai_chat_chunk(r->id, r->created, model, NULL, text, clen, NULL, lpa, n_lp, NULL));
        else ok = sse_add(r, pi_oai_completion_chunk(r->id, r->created, model, text, clen, NULL, lpa, n_lp, NULL));
        free(text);
        free(lp);
        r->text_len = 0;
        lp_clear(r);
    }
    if (ok && r->ended && !r->done) {
        const struct pi_sched_end *e = &r->end;
        if (e->finish == PI_SCHED_STOP || e->finish == PI_SCHED_LENGTH) {
            const char *f = finish_str(e);
            ok = chat ? sse_add(r, pi_oai_chat_chunk(r->id, r->created, model, NULL, NULL, 0, f, NULL, 0, NULL))
                      : sse_add(r, pi_oai_completion_chunk(r->id, r->created, model, "", 0, f, NULL, 0, NULL));
            if (ok && r->rq.include_usage) {
                struct pi_oai_usage u = {e->n_prompt, e->n_generated};
                ok = chat ? sse_add(r, pi_oai_chat_chunk(r->id, r->created, model, NULL, NULL, 0, NULL, NULL, 0, &u))
                          : sse_add(r, pi_oai_completion_chunk(r->id, r->created, model, NULL, 0, NULL, NULL, 0, &u));
            }
        } else {
            struct pi_oai_error err;
            end_error(r, &err);
            ok = sse_add(r, pi_oai_error_json(&err));
        }
        if (ok) ok = buf_add(&r->out, &r->out_len, &r->out_cap, "data: [DONE]\n\n", 14);
        r->done = true;
    }
    return ok;
}

/* libmicrohttpd's reader of a stream. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct hreq *r = cls;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (r->out_off < r->out_len) {
            size_t n = PI_MIN(max, r->out_len - r->out_off);
            memcpy(buf, r->out + r->out_off, n);
            r->out_off += n;
            if (r->out_off == r->out_len) r->out_off = r->out_len = 0;
            r->last_out_ns = mono_ns();
            pthread_mutex_unlock(&r->mu);
            return (ssize_t)n;
        }
        if (r->done) {
            pthread_mutex_unlock(&r->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (r->text_len || r->n_lps || r->ended || (r->route == R_CHAT && !r->sent_role)) {
            if (!sse_format(r)) {
                pthread_mutex_unlock(&r->mu);
                pi_sched_cancel(r->h->sched, r->job);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            continue;
        }
        if (client_gone(r->fd)) {
            pthread_mutex_unlock(&r->mu);
            pi_sched_cancel(r->h->sched, r->job);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (mono_ns() - r->last_out_ns > (int64_t)KEEPALIVE_MS * 1000000) {
            buf_add(&r->out, &r->out_len, &r->out_cap, ": keep-alive\n\n", 14);
            continue;
        }
        wait_slice(r);
    }
}

static void stream_free(void *cls)
{
    struct hreq *r = cls;
    pthread_mutex_lock(&r->mu);
    const bool ended = r->ended;
    pthread_mutex_unlock(&r->mu);
    if (!ended) pi_sched_cancel(r->h->sched, r->job);
    hreq_unref(r);
}

/* ---- generation requests ---- */

static int client_fd(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* The prompt's token ids of a parsed request: the chat rendered through the template, or the text. */
static int prompt_tokens(struct pi_http *h, struct hreq *r, int32_t **ids, size_t *n, struct pi_oai_error *e)
{
    *ids = NULL;
    *n = 0;
    if (r->rq.prompt_ids) {
        *ids = malloc(r->rq.n_prompt_ids * sizeof **ids);
        if (!*ids) return -PI_ERR_NOMEM;
        memcpy(*ids, r->rq.prompt_ids, r->rq.n_prompt_ids * sizeof **ids);
        *n = r->rq.n_prompt_ids;
        return 0;
    }
    char *text = NULL;
    bool special = false;
    if (r->route == R_CHAT) {
        int err = 0;
        text = pi_chat_apply(h->o.chat, r->rq.msgs, r->rq.n_msgs, true, h->bos[0] ? h->bos : NULL,
                             h->eos[0] ? h->eos : NULL, &err);
        if (!text) {
            if (err == -PI_ERR_NOMEM) return err;
            pi_oai_error_set(e, 400, "messages", "invalid_value",
                             "the conversation cannot be rendered in the model's chat format (%s): %s",
                             pi_chat_name(h->o.chat), pi_err_str(err));
            return -PI_ERR_INVAL;
        }
        special = true;
    } else {
        text = strdup(r->rq.prompt ? r->rq.prompt : "");
        if (!text) return -PI_ERR_NOMEM;
    }
    int rc = pi_tokenize_alloc(h->tok, text, strlen(text), true, special, ids, n);
    free(text);
    if (rc != 0) {
        if (rc != -PI_ERR_NOMEM)
            pi_oai_error_set(e, 400, r->route == R_CHAT ? "messages" : "prompt", "invalid_value",
                             "the prompt could not be tokenized: %s", pi_err_str(rc));
    }
    return rc;
}

static enum MHD_Result generate(struct pi_http *h, struct MHD_Connection *c, struct hreq *r)
{
    struct pi_oai_error e;
    struct pi_oai_limits lim;
    pi_oai_limits_default(&lim);
    if (h->tok) lim.n_vocab = pi_tokenizer_n_vocab(h->tok);
    const enum pi_oai_kind kind = r->route == R_CHAT ? PI_OAI_CHAT : PI_OAI_COMPLETION;
    if (pi_oai_parse(kind, r->body ? r->body : "", r->len, &lim, &h->o.defaults, &r->rq, &e) != 0)
        return answer_error(h, c, &e);
    r->parsed = true;
    if (kind == PI_OAI_CHAT && !h->o.has_chat)
        return fail(h, c, 400, NULL, "unsupported_value", "%s", h->o.chat_error ? h->o.chat_error : "no chat template");
    struct pi_sched_stats st;
    pi_sched_stats(h->sched, &st);
    /* loading (no engine yet) or a restart that failed: refused; a restart under way: the request
     * waits for it in the queue */
    if (pi_sched_n_ctx(h->sched) == 0 || st.failed) {
        struct pi_oai_error le;
        pi_oai_error_set(&le, 503, NULL, NULL, "the model is not ready: %s",
                         st.last_error[0] ? st.last_error : "it is loading");
        return answer_r(h, c, 503, pi_oai_error_json(&le), "application/json", true);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = prompt_tokens(h, r, &ids, &n, &e);
    if (rc == -PI_ERR_NOMEM) return fail(h, c, 500, NULL, NULL, "out of memory");
    if (rc != 0) return answer_error(h, c, &e);
    const int n_ctx = pi_sched_n_ctx(h->sched);
    const char *pparam = kind == PI_OAI_CHAT ? "messages" : "prompt";
    if (n == 0) {
        free(ids);
        return fail(h, c, 400, pparam, "invalid_value", "the prompt is empty");
    }
    int64_t max_tokens = r->rq.max_tokens >= 0 ? r->rq.max_tokens : h->o.default_max_tokens;
    if (n_ctx > 0 &&
        ((int64_t)n > n_ctx || (r->rq.max_tokens >= 0 && (int64_t)n + r->rq.max_tokens > (int64_t)n_ctx + 1))) {
        free(ids);
        if (r->rq.max_tokens >= 0)
            return fail(h, c, 400, pparam, "context_length_exceeded",
                        "the context holds %d tokens, but the prompt has %zu and max_tokens asks for %" PRId64 " more",
                        n_ctx, n, r->rq.max_tokens);
        return fail(h, c, 400, pparam, "context_length_exceeded", "the prompt has %zu tokens; the context holds %d", n,
                    n_ctx);
    }
    r->n_prompt = (int)n;
    struct pi_sample_params sp = r->rq.sample;
    if (!r->rq.has_seed && h->o.default_seed_random) sp.seed = (uint64_t)mono_ns() ^ ((uint64_t)(uintptr_t)r << 16);
    struct pi_sched_job j = {.tokens = ids,
                             .n_tokens = n,
                             .n_predict = max_tokens,
                             .sample = sp,
                             .stops = (const char *const *)r->rq.stop,
                             .n_stops = r->rq.n_stop,
                             .bias_ids = r->rq.bias_ids,
                             .bias = r->rq.bias,
                             .n_bias = r->rq.n_bias,
                             .top_logprobs = r->rq.top_logprobs,
                             .ignore_eos = r->rq.ignore_eos,
                             .client = r->client,
                             .sink = {sink_piece, sink_end, NULL},
                             .ctx = r};
    pi_oai_id(kind, r->id, sizeof r->id);
    r->created = (int64_t)time(NULL);
    r->fd = client_fd(c);
    atomic_fetch_add(&r->refs, 1); /* the scheduler's */
    rc = pi_sched_submit(h->sched, &j, &r->job);
    free(ids);
    if (rc != 0) {
        atomic_fetch_sub(&r->refs, 1);
        if (rc == -PI_ERR_RANGE)
            return fail(h, c, 429, NULL, "rate_limit_exceeded",
                        "the server is busy: %d requests are waiting; try again shortly", st.queue_max);
        if (rc == -PI_ERR_INVAL)
            return fail(h, c, 400, NULL, "invalid_value", "the request's parameters are out of range");
        if (rc == -PI_ERR_PEER) return fail(h, c, 503, NULL, NULL, "the server is shutting down");
        return fail(h, c, 500, NULL, NULL, "out of memory");
    }
    if (r->rq.stream) {
        atomic_fetch_add(&r->refs, 1); /* the reader's */
        r->last_out_ns = mono_ns();
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, r, stream_free);
        if (!resp) {
            stream_free(r);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        count_status(h, 200);
        atomic_fetch_add(&h->by_status[5], 1);
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    /* a whole answer: wait for the end here, watching the client */
    pthread_mutex_lock(&r->mu);
    while (!r->ended) {
        if (client_gone(r->fd)) {
            pthread_mutex_unlock(&r->mu);
            pi_sched_cancel(h->sched, r->job);
            return MHD_NO; /* nobody to answer: libmicrohttpd closes the connection */
        }
        wait_slice(r);
    }
    pthread_mutex_unlock(&r->mu);
    if (r->end.finish != PI_SCHED_STOP && r->end.finish != PI_SCHED_LENGTH) {
        end_error(r, &e);
        return answer_error(h, c, &e);
    }
    return answer_json(h, c, 200, whole_answer(r));
}

/* ---- the other routes ---- */

static enum MHD_Result tokenize(struct pi_http *h, struct MHD_Connection *c, struct hreq *r)
{
    struct pi_oai_error e;
    char *content = NULL;
    bool add_special = true, parse_special = false;
    if (pi_oai_parse_tokenize(r->body ? r->body : "", r->len, &content, &add_special, &parse_special, &e) != 0)
        return answer_error(h, c, &e);
    if (!h->tok) {
        free(content);
        return fail(h, c, 400, NULL, NULL, "the model has no tokenizer");
    }
    size_t n = 0;
    int32_t *ids = NULL;
    int rc = pi_tokenize_alloc(h->tok, content, strlen(content), add_special, parse_special, &ids, &n);
    free(content);
    if (rc != 0) {
        return rc == -PI_ERR_NOMEM
                   ? fail(h, c, 500, NULL, NULL, "out of memory")
                   : fail(h, c, 400, "content", "invalid_value", "tokenizing failed: %s", pi_err_str(rc));
    }
    char *body = pi_oai_tokens_json(ids, n);
    free(ids);
    return answer_json(h, c, 200, body);
}

static enum MHD_Result detokenize(struct pi_http *h, struct MHD_Connection *c, struct hreq *r)
{
    struct pi_oai_error e;
    struct pi_oai_limits lim;
    pi_oai_limits_default(&lim);
    if (h->tok) lim.n_vocab = pi_tokenizer_n_vocab(h->tok);
    int32_t *ids = NULL;
    size_t n = 0;
    if (pi_oai_parse_detokenize(r->body ? r->body : "", r->len, &lim, &ids, &n, &e) != 0) return answer_error(h, c, &e);
    if (!h->tok) {
        free(ids);
        return fail(h, c, 400, NULL, NULL, "the model has no tokenizer");
    }
    pi_detok_t *d = pi_detok_new(h->tok, false);
    const size_t cap = pi_detok_max_push(h->tok) + 8;
    char *piece = malloc(cap), *text = NULL;
    size_t len = 0, tcap = 0;
    bool ok = d && piece;
    for (size_t i = 0; ok && i < n; i++) {
        int w = pi_detok_push(d, ids[i], piece, cap);
        if (w > 0) ok = buf_add(&text, &len, &tcap, piece, (size_t)w);
    }
    if (ok) {
        int w = pi_detok_flush(d, piece, cap);
        if (w > 0) ok = buf_add(&text, &len, &tcap, piece, (size_t)w);
    }
    pi_detok_destroy(&d);
    free(piece);
    free(ids);
    size_t clen = 0;
    char *clean = ok ? utf8_clean(text ? text : "", len, &clen) : NULL;
    free(text);
    char *body = clean ? pi_oai_content_json(clean, clen) : NULL;
    free(clean);
    return answer_json(h, c, 200, body);
}

static void hist(FILE *f, const char *name, const char *help, const uint64_t *b, const double *bounds, int nb,
                 double sum)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < nb; i++) {
        cum += b[i];
        if (i < nb - 1) fprintf(f, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds[i], cum);
        else fprintf(f, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    }
    fprintf(f, "%s_sum %.6f\n%s_count %" PRIu64 "\n", name, sum, name, cum);
}

static enum MHD_Result metrics(struct pi_http *h, struct MHD_Connection *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return fail(h, c, 500, NULL, NULL, "out of memory");
    struct pi_sched_stats st;
    pi_sched_stats(h->sched, &st);
    fprintf(
        f,
        "# HELP pinfer_requests_total Generation requests ended, by outcome.\n# TYPE pinfer_requests_total counter\n");
    for (int i = 0; i < PI_SCHED_FINISH_COUNT; i++)
        fprintf(f, "pinfer_requests_total{outcome=\"%s\"} %" PRIu64 "\n", pi_sched_finish_name((enum pi_sched_finish)i),
                st.requests[i]);
    fprintf(f,
            "# HELP pinfer_requests_refused_total Requests refused because the queue was full (429).\n"
            "# TYPE pinfer_requests_refused_total counter\npinfer_requests_refused_total %" PRIu64 "\n",
            st.refused);
    fprintf(f, "# HELP pinfer_http_responses_total HTTP answers by status class.\n# TYPE pinfer_http_responses_total "
               "counter\n");
    static const char *const cls[] = {"2xx", "4xx", "429", "5xx", "other"};
    for (int i = 0; i < 5; i++)
        fprintf(f, "pinfer_http_responses_total{class=\"%s\"} %" PRIu64 "\n", cls[i], atomic_load(&h->by_status[i]));
    fprintf(f,
            "# HELP pinfer_prompt_tokens_total Prompt tokens of ended requests.\n# TYPE pinfer_prompt_tokens_total "
            "counter\n"
            "pinfer_prompt_tokens_total %" PRIu64 "\n",
            st.prompt_tokens);
    fprintf(f,
            "# HELP pinfer_prompt_tokens_cached_total Prompt tokens found in a slot's cache (not evaluated again).\n"
            "# TYPE pinfer_prompt_tokens_cached_total counter\npinfer_prompt_tokens_cached_total %" PRIu64 "\n",
            st.cached_tokens);
    fprintf(f,
            "# HELP pinfer_generated_tokens_total Tokens generated.\n# TYPE pinfer_generated_tokens_total counter\n"
            "pinfer_generated_tokens_total %" PRIu64 "\n",
            st.generated_tokens);
    fprintf(f, "# HELP pinfer_steps_total Engine steps (batches).\n# TYPE pinfer_steps_total counter\n");
    fprintf(f, "pinfer_steps_total %" PRIu64 "\n", st.steps);
    fprintf(f, "# HELP pinfer_step_tokens_total Tokens carried by the engine steps.\n");
    fprintf(f, "# TYPE pinfer_step_tokens_total counter\npinfer_step_tokens_total %" PRIu64 "\n", st.step_tokens);
    fprintf(f,
            "# HELP pinfer_engine_errors_total Engine failures (a worker died, ...).\n# TYPE "
            "pinfer_engine_errors_total counter\n"
            "pinfer_engine_errors_total %" PRIu64 "\n",
            st.engine_errors);
    fprintf(f,
            "# HELP pinfer_restarts_total Engine restarts after a failure (the pipeline's workers started again).\n"
            "# TYPE pinfer_restarts_total counter\npinfer_restarts_total %" PRIu64 "\n",
            st.restarts);
    hist(f, "pinfer_time_to_first_token_seconds", "Time from a request's arrival to its first token.", st.ttft,
         pi_sched_ttft_bounds, PI_SCHED_TTFT_BUCKETS, st.ttft_sum);
    hist(f, "pinfer_time_per_output_token_seconds", "Per request: decode time per generated token after the first.",
         st.tpot, pi_sched_tpot_bounds, PI_SCHED_TPOT_BUCKETS, st.tpot_sum);
    fprintf(f,
            "# HELP pinfer_requests_running Requests holding a slot.\n# TYPE pinfer_requests_running gauge\n"
            "pinfer_requests_running %d\n",
            st.running);
    fprintf(f,
            "# HELP pinfer_requests_waiting Requests waiting for a slot.\n# TYPE pinfer_requests_waiting gauge\n"
            "pinfer_requests_waiting %d\n",
            st.waiting);
    fprintf(f, "# HELP pinfer_slots Sequences run at once.\n# TYPE pinfer_slots gauge\npinfer_slots %d\n", st.n_slots);
    fprintf(f,
            "# HELP pinfer_kv_cache_usage_ratio Positions held in the slots' caches over their capacity.\n"
            "# TYPE pinfer_kv_cache_usage_ratio gauge\npinfer_kv_cache_usage_ratio %.6f\n",
            st.kv_total > 0 ? (double)st.kv_used / (double)st.kv_total : 0.0);
    fprintf(
        f,
        "# HELP pinfer_ready Whether the engine is ready (1) or not (0).\n# TYPE pinfer_ready gauge\npinfer_ready %d\n",
        st.ready ? 1 : 0);
    if (h->o.metrics_extra) h->o.metrics_extra(h->o.metrics_ctx, f);
    if (fclose(f) != 0) {
        free(text);
        return fail(h, c, 500, NULL, NULL, "out of memory");
    }
    return answer(h, c, 200, text, "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result health(struct pi_http *h, struct MHD_Connection *c)
{
    struct pi_sched_stats st;
    pi_sched_stats(h->sched, &st);
    if (st.ready) return answer_json(h, c, 200, strdup("{\"status\":\"ok\"}"));
    return fail(h, c, 503, NULL, "unavailable", "not ready: %s",
                st.last_error[0] ? st.last_error : "the model is loading");
}

/* ---- dispatch ---- */

/* Which key the request carries: 1 + its index, 0 when no key is configured, -1 for a missing or wrong one. */
static int key_of(struct pi_http *h, struct MHD_Connection *c)
{
    if (!h->n_keys) return 0;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) != 0) return -1;
    a += 7;
    while (*a == ' ') a++;
    const size_t n = strlen(a);
    int which = -1;
    for (size_t i = 0; i < h->n_keys; i++) { /* every key compared in full: the time does not tell the prefix */
        const size_t m = strlen(h->keys[i]);
        unsigned char diff = (unsigned char)(n != m);
        for (size_t k = 0; k < m; k++) diff |= (unsigned char)(h->keys[i][k] ^ (k < n ? a[k] : 0));
        if (diff == 0) which = (int)i + 1;
    }
    return which;
}

/* The client a request counts for in the scheduler's fairness: its API key, else its address. */
static uint64_t client_of(struct MHD_Connection *c, int key)
{
    if (key > 0) return (uint64_t)key;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *a = ci ? ci->client_addr : NULL;
    const unsigned char *b = NULL;
    size_t n = 0;
    if (a && a->sa_family == AF_INET) b = (const unsigned char *)&((const struct sockaddr_in *)a)->sin_addr, n = 4;
    if (a && a->sa_family == AF_INET6) b = (const unsigned char *)&((const struct sockaddr_in6 *)a)->sin6_addr, n = 16;
    uint64_t hsh = 1469598103934665603ull; /* FNV-1a over the address bytes; never 1..MAX_KEYS in practice */
    for (size_t i = 0; i < n; i++) hsh = (hsh ^ b[i]) * 1099511628211ull;
    return hsh | (1ull << 63);
}

static enum route route_of(const char *url, const char *method, bool *method_ok)
{
    static const struct {
        const char *path, *method;
        enum route r;
    } t[] = {{"/v1/chat/completions", "POST", R_CHAT},
             {"/v1/completions", "POST", R_COMPLETION},
             {"/chat/completions", "POST", R_CHAT},
             {"/completions", "POST", R_COMPLETION},
             {"/v1/models", "GET", R_MODELS},
             {"/models", "GET", R_MODELS},
             {"/health", "GET", R_HEALTH},
             {"/metrics", "GET", R_METRICS},
             {"/tokenize", "POST", R_TOKENIZE},
             {"/detokenize", "POST", R_DETOKENIZE}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(url, t[i].path) == 0) {
            *method_ok = strcmp(method, t[i].method) == 0;
            return t[i].r;
        }
    *method_ok = false;
    return R_NONE;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    struct pi_http *h = cls;
    struct hreq *r = *con_cls;
    if (!r) {
        bool method_ok = false;
        enum route rt = route_of(url, method, &method_ok);
        if (rt == R_NONE) return fail(h, c, 404, NULL, "not_found", "no route %s %s", method, url);
        if (!method_ok) return fail(h, c, 405, NULL, "method_not_allowed", "%s does not take %s", url, method);
        const int key = rt != R_HEALTH && rt != R_METRICS ? key_of(h, c) : 0;
        if (key < 0)
            return fail(h, c, 401, NULL, "invalid_api_key", "a valid API key is needed (Authorization: Bearer KEY)");
        /* A body announced larger than DRAIN_FACTOR limits is refused at once (the connection is then
         * closed under the client, which may see a reset); a smaller oversized one is read and dropped
         * first, so that the client gets its 413. */
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end = NULL;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || end == cl || *end)
                return fail(h, c, 400, NULL, "invalid_request", "Content-Length is not a number of bytes");
            if (v / DRAIN_FACTOR > h->o.max_body || (v > 0 && strcmp(method, "GET") == 0))
                return fail(h, c, 413, NULL, "request_too_large", "the body is larger than the limit of %zu bytes%s",
                            h->o.max_body, strcmp(method, "GET") == 0 ? " (GET takes none)" : "");
        }
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        atomic_init(&r->refs, 1);
        r->h = h;
        r->route = rt;
        r->client = client_of(c, key);
        r->fd = -1;
        r->rq.top_logprobs = -1;
        pthread_mutex_init(&r->mu, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&r->cv, &ca);
        pthread_condattr_destroy(&ca);
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size) { /* a piece of the body: kept up to the limit, then counted and dropped */
        const bool takes_body =
            r->route == R_CHAT || r->route == R_COMPLETION || r->route == R_TOKENIZE || r->route == R_DETOKENIZE;
        if (!r->too_big && (!takes_body || r->len + *upload_size > h->o.max_body)) r->too_big = true;
        if (!r->too_big && !buf_add(&r->body, &r->len, &r->cap, upload, *upload_size)) r->too_big = true;
        r->dropped += r->too_big ? *upload_size : 0;
        *upload_size = 0;
        if (r->dropped / DRAIN_FACTOR > h->o.max_body) return MHD_NO; /* a body without end: close */
        return MHD_YES;
    }
    if (r->too_big)
        return fail(h, c, 413, NULL, "request_too_large", "the body is larger than the limit of %zu bytes",
                    h->o.max_body);
    switch (r->route) {
    case R_CHAT:
    case R_COMPLETION: return generate(h, c, r);
    case R_MODELS: return answer_json(h, c, 200, pi_oai_models(h->model_id, h->created, "pinfer"));
    case R_HEALTH: return health(h, c);
    case R_METRICS: return metrics(h, c);
    case R_TOKENIZE: return tokenize(h, c, r);
    case R_DETOKENIZE: return detokenize(h, c, r);
    case R_NONE: break;
    }
    return MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    hreq_unref(*con_cls);
    *con_cls = NULL;
}

/* The accept policy (the daemon's thread, the new connection accepted): past the cap, closed at once. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    struct pi_http *h = cls;
    (void)addr;
    (void)addrlen;
    const int open = atomic_load(&h->open), cap = atomic_load(&h->cap);
    if (open < cap) return MHD_YES;
    if (h->refused++ % 1000 == 0)
        pi_warn("http: %d connections open, the cap: closing new ones as they come (%llu so far)", open,
                (unsigned long long)h->refused);
    return MHD_NO;
}

/* Connections opened and closed (both from the daemon's thread). */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct pi_http *h = cls;
    (void)c;
    (void)socket_ctx;
    atomic_fetch_add(&h->open, toe == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    pi_debug("http: %s", line);
}

/* ---- start and stop ---- */

int pi_http_parse_listen(const char *s, char *host, size_t len, int *port)
{
    if (!s || !*s) return -PI_ERR_INVAL;
    const char *colon;
    size_t hl;
    const char *h0 = s;
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') return -PI_ERR_INVAL;
        h0 = s + 1;
        hl = (size_t)(close - h0);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || strchr(s, ':') != colon) return -PI_ERR_INVAL;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= len) return -PI_ERR_INVAL;
    int64_t p = 0;
    if (pi_parse_int(colon + 1, 0, 65535, &p) != 0) return -PI_ERR_INVAL;
    memcpy(host, h0, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

static bool is_loopback(const struct sockaddr *a)
{
    if (a->sa_family == AF_INET) return (ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) >> 24) == 127;
    if (a->sa_family == AF_INET6) {
        const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(x) || (IN6_IS_ADDR_V4MAPPED(x) && x->s6_addr[12] == 127);
    }
    return false;
}

/* One key per line of path into h->keys. 0, or -1 after one line on stderr. The file must be a regular
 * file that users other than its owner and group may neither read nor write: keys every local user
 * can read authenticate no one (the service's group may share it, as a system service's key file
 * needs: lib/secret.h's PI_SECRET_GROUP). A FIFO or a device is refused without blocking. */
static int load_keys(struct pi_http *h, const char *path)
{
    char why[PATH_MAX + 160];
    int fd = pi_secret_open(path, PI_SECRET_GROUP, "[http] api_key_file", why, sizeof why);
    if (fd < 0) {
        fprintf(stderr, "pi-coordinator: %s\n", why);
        return -1;
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        fprintf(stderr, "pi-coordinator: [http] api_key_file %s: fdopen: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    char line[MAX_KEY_LEN + 8];
    int ln = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        ln++;
        size_t n = strlen(line);
        if (n == sizeof line - 1 && line[n - 1] != '\n') {
            fprintf(stderr, "pi-coordinator: %s:%d: a key longer than %d bytes\n", path, ln, MAX_KEY_LEN);
            rc = -1;
            break;
        }
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
            line[--n] = '\0';
        const char *k = line;
        while (*k == ' ' || *k == '\t') k++;
        if (!*k || *k == '#') continue;
        if (h->n_keys == MAX_KEYS) {
            fprintf(stderr, "pi-coordinator: %s: more than %d keys\n", path, MAX_KEYS);
            rc = -1;
            break;
        }
        for (const char *p = k; *p; p++)
            if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f) {
                fprintf(stderr, "pi-coordinator: %s:%d: a key holds a space or a non-ASCII byte\n", path, ln);
                rc = -1;
                break;
            }
        if (rc == 0 && !(h->keys[h->n_keys++] = strdup(k))) rc = -1;
    }
    explicit_bzero(line, sizeof line);
    fclose(f);
    if (rc == 0 && h->n_keys == 0) {
        fprintf(stderr, "pi-coordinator: [http] api_key_file %s holds no key\n", path);
        rc = -1;
    }
    return rc;
}

static void http_free(struct pi_http *h)
{
    for (size_t i = 0; i < h->n_keys; i++) free(h->keys[i]);
    free(h->model_id);
    free(h);
}

pi_http_t *pi_http_start(const struct pi_http_opts *o, pi_sched_t *sched, const pi_tokenizer_t *tok)
{
    char host[256];
    int port = 0;
    if (pi_http_parse_listen(o->listen, host, sizeof host, &port) != 0) {
        fprintf(stderr,
                "pi-coordinator: [http] listen \"%s\": expected HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080) or off\n",
                o->listen ? o->listen : "");
        return NULL;
    }
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int g = getaddrinfo(host, ps, &hints, &ai);
    if (g != 0 || !ai) {
        fprintf(stderr, "pi-coordinator: [http] listen %s: %s\n", o->listen, gai_strerror(g));
        return NULL;
    }
    struct pi_http *h = calloc(1, sizeof *h);
    if (!h) {
        freeaddrinfo(ai);
        return NULL;
    }
    h->o = *o;
    h->sched = sched;
    h->tok = tok;
    h->created = (int64_t)time(NULL);
    h->model_id = strdup(o->model_id ? o->model_id : "pinfer");
    if (tok) {
        /* "" where the model has none or it cannot be a C string (the chat formatter's own default then) */
        (void)pi_token_cstr(tok, pi_tokenizer_bos(tok), h->bos, sizeof h->bos);
        (void)pi_token_cstr(tok, pi_tokenizer_eos(tok), h->eos, sizeof h->eos);
    }
    if (!h->model_id || (o->api_key_file && *o->api_key_file && load_keys(h, o->api_key_file) != 0)) {
        freeaddrinfo(ai);
        http_free(h);
        return NULL;
    }
    h->o.model_id = h->model_id;
    h->o.api_key_file = NULL;
    if (!h->n_keys && !is_loopback(ai->ai_addr)) {
        fprintf(stderr,
                "pi-coordinator: [http] listen %s is reachable from the network and no API key is set: set [http] "
                "api_key_file, or listen on 127.0.0.1\n",
                o->listen);
        freeaddrinfo(ai);
        http_free(h);
        return NULL;
    }
    const int max_conn = o->max_connections > 0 ? o->max_connections : 256;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    atomic_store(&h->cap, o->start_connections > 0 ? PI_MIN(o->start_connections, max_conn) : max_conn);
    h->d = MHD_start_daemon(flags, (uint16_t)port, on_accept, h, on_request, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)max_conn, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                            (unsigned)PI_MAX(1, max_conn / 2), MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_S,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
                            h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                            (size_t)65536, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        fprintf(stderr,
                "pi-coordinator: [http] listen %s: cannot listen there (in use, or not an address of this machine)\n",
                o->listen);
        http_free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? (int)di->port : port;
    const bool v6 = strchr(host, ':') != NULL;
    snprintf(h->url, sizeof h->url, "http://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", h->port);
    pi_info("http: listening on %s (%s)", h->url, h->n_keys ? "API keys required" : "no API key");
    return h;
}

int pi_http_port(const pi_http_t *h) { return h ? h->port : 0; }

const char *pi_http_url(const pi_http_t *h) { return h ? h->url : "off"; }

void pi_http_set_max_connections(pi_http_t *h, int n)
{
    if (h) atomic_store(&h->cap, PI_MAX(1, PI_MIN(n, h->o.max_connections > 0 ? h->o.max_connections : 256)));
}

int pi_http_connections(const pi_http_t *h) { return h ? atomic_load(&h->open) : 0; }

void pi_http_stop(pi_http_t **hp)
{
    if (!hp || !*hp) return;
    pi_http_t *h = *hp;
    if (h->d) MHD_stop_daemon(h->d);
    http_free(h);
    *hp = NULL;
}
