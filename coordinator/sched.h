/*
 * coordinator/sched.h - the server's scheduler: continuous batching of generation requests over one
 * engine (coordinator/engine.h) with several sequences, one per slot.
 *
 * A request (a job: prompt token ids, sampling, stop strings, limits) is submitted from any thread and
 * waits in a bounded queue until a slot is free. The scheduler's thread (pi_sched_run) owns the engine
 * and runs steps: every step is one engine batch holding the next token of every slot that is
 * generating plus chunks of the prompts of slots still reading theirs, so new requests join running
 * ones without waiting for them to end. After each step every slot that got logits samples its next
 * token with its own sampler, and its text (detokenised, held back where it might start a stop string)
 * goes to the job's sink.
 *
 * Fairness: a free slot goes to the oldest waiting request of the client (job.client) holding the
 * fewest slots, so one client's many requests cannot keep another's from starting; and the queue's
 * last opts.queue_reserve places (at most half of it) take only clients with fewer than that many
 * requests waiting, so one client cannot fill the queue for the others. Requests on the control socket
 * are client 0, one client.
 *
 * A slot keeps its sequence's tokens in the engine's cache after its request ends; the next request
 * is given the free slot whose cached tokens share the longest prefix with its prompt, and only the
 * rest of its prompt is evaluated (a chat's next turn re-reads nothing it sent before).
 *
 * Results do not depend on the neighbours: each slot has its own sampler (its seed), and the engine's
 * logits for a token are the same bits alone or in a batch (coordinator/engine.h's rule), so a greedy
 * request gives the same text whether it runs alone or beside others.
 *
 * DESIGN (threads): pi_sched_submit, pi_sched_cancel, pi_sched_stop and pi_sched_stats may be called
 * from any thread; they take the scheduler's mutex briefly and never wait for a step. Everything else
 * (the engine, slots, samplers) belongs to the thread in pi_sched_run, and a job's sink is called only
 * from that thread, never with the mutex held (but stopped(), which only reads flags); a sink must not
 * block for long (it holds every slot's next step) and must not call pi_sched_submit re-entrantly with a
 * full queue in mind (it may call pi_sched_cancel). After a job's end callback the scheduler never touches its ctx again.
 */
#ifndef PI_COORDINATOR_SCHED_H
#define PI_COORDINATOR_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coordinator/engine.h"
#include "text/sample.h"
#include "text/tokenizer.h"

#define PI_SCHED_MAX_TOP 20 /* alternatives per token in logprobs, at most (OpenAI's limit) */

typedef struct pi_sched pi_sched_t;

struct pi_sched_opts {
    int n_slots;        /* sequences run at once, 1..engine n_seq */
    int queue_max;      /* requests waiting for a slot, at most (>= 0); more are refused (-PI_ERR_RANGE) */
    int queue_reserve;  /* the queue's last places (>= 0; at most half the queue) go only to a client with
                         * fewer than that many waiting; others are refused there (-PI_ERR_RANGE) */
    int64_t max_tokens; /* tokens one request may generate, at most (0: up to the context) */
    int64_t timeout_ms; /* a request ends (PI_SCHED_TIMEOUT) this long after submission (0: never) */
    /* The restart cap: at most restart_max engine restarts within any restart_window_ms. A restart is
     * counted when an engine that was running fails and its first reset is tried: the resets that
     * follow a failed one (the back-off's, a request's) belong to that restart, however many fail,
     * so one transient start failure does not use up the cap. The restart after the cap is not tried
     * and the scheduler gives up for good (stats.gave_up; every request then ends with PI_SCHED_ERROR
     * and the reason), so a pipeline that starts and dies again and again (a model file truncated
     * under the server) does not fail request after request. restart_max 0: no cap; at most
     * PI_SCHED_RESTART_MAX. */
    int restart_max;
    int64_t restart_window_ms;
};
#define PI_SCHED_RESTART_MAX 1000

enum pi_sched_finish {
    PI_SCHED_STOP = 0,      /* an end-of-generation token or a stop string */
    PI_SCHED_LENGTH = 1,    /* its n_predict, the server's max_tokens or the context */
    PI_SCHED_CANCELLED = 2, /* pi_sched_cancel, its stopped() said so, or the scheduler stopped */
    PI_SCHED_TIMEOUT = 3,   /* its deadline (opts.timeout_ms) passed */
    PI_SCHED_ERROR = 4,     /* the engine failed (status says how; -PI_ERR_PEER: a worker died) */
    PI_SCHED_FINISH_COUNT
};
/* "stop", "length", "cancelled", "timeout", "error". */
const char *pi_sched_finish_name(enum pi_sched_finish f);

/* One generated token, as the sink gets it. */
struct pi_sched_piece {
    const char *text; /* bytes now safe to send (complete UTF-8, no possible stop-string start); may be "" */
    size_t len;
    int32_t token;
    /* with logprobs asked (job.top_logprobs >= 0): the token's log-probability under the model's
     * distribution (before temperature and the other sampling transforms) and the n_top most likely
     * tokens with theirs, most likely first */
    float logprob;
    int n_top;
    const int32_t *top_ids; /* (n_top) */
    const float *top_lp;    /* (n_top) */
};

struct pi_sched_end {
    enum pi_sched_finish finish;
    int status;       /* 0, or the negative pi_err behind PI_SCHED_ERROR */
    const char *text; /* the last bytes of the text, released at the end (the held tail); may be "" */
    size_t len;
    int n_prompt;     /* prompt tokens */
    int n_cached;     /* of those, found in the slot's cache and not evaluated again */
    int n_generated;  /* tokens generated (a stop string's tokens included) */
    double queue_s;   /* submission to a slot */
    double ttft_s;    /* submission to the first token sampled (0 when none) */
    double total_s;   /* submission to the end */
    char reason[160]; /* for CANCELLED, TIMEOUT and ERROR: one line a client can be shown */
};

struct pi_sched_sink {
    /* A generated token (called for every token, also when its text is empty). */
    void (*piece)(void *ctx, const struct pi_sched_piece *p);
    /* The job is over: always called exactly once per accepted job, last. */
    void (*end)(void *ctx, const struct pi_sched_end *e);
    /* Optional: asked while the job waits and before each step it takes part in; non-zero cancels it.
     * Unlike the others it may be called with the scheduler's mutex held: it must only read flags
     * (no scheduler call, no blocking). */
    int (*stopped)(void *ctx);
};

struct pi_sched_job {
    const int32_t *tokens; /* the prompt's ids (n_tokens >= 1, each < n_vocab), copied by submit */
    size_t n_tokens;
    int64_t n_predict; /* tokens to generate, at most; -1: until the end of generation, the server's
                                  max_tokens or the context */
    struct pi_sample_params sample;
    const char *const *stops; /* (n_stops) stop strings (copied), NULL when none */
    size_t n_stops;
    const int32_t *bias_ids; /* (n_bias) logit bias (copied), NULL when none */
    const float *bias;
    size_t n_bias;
    int top_logprobs; /* -1: no logprobs; 0..PI_SCHED_MAX_TOP alternatives per token */
    bool ignore_eos;  /* end-of-generation tokens do not end it (they are then never sampled) */
    uint64_t client;  /* who asks (an API key, an address; 0 for all others): a free slot goes to the
                       * waiting job whose client holds the fewest slots, the oldest first */
    struct pi_sched_sink sink;
    void *ctx; /* the sink's */
};

/* A scheduler over tokenizer t (borrowed; NULL: texts are the token ids in decimal) for an engine of
 * n_vocab tokens, set with pi_sched_set_engine before pi_sched_run. Jobs may be submitted before: they
 * wait for it. NULL on bad options or no memory (logged). */
pi_sched_t *pi_sched_new(const pi_tokenizer_t *t, int32_t n_vocab, const struct pi_sched_opts *o);
void pi_sched_destroy(pi_sched_t **s);

/* Accept job j: 0 and its id in *id (> 0); -PI_ERR_RANGE when the queue is full (the client should try
 * again later); -PI_ERR_INVAL for a bad job (no tokens, a token outside the vocabulary, bad sampling
 * parameters or logit bias, a stop string too long, top_logprobs out of range); -PI_ERR_PEER when the
 * scheduler is stopping; -PI_ERR_NOMEM. A prompt that cannot fit the engine's context ends the job with
 * PI_SCHED_ERROR, status -PI_ERR_RANGE. The sink's end is called for every accepted job and only for
 * those. Any thread. */
int pi_sched_submit(pi_sched_t *s, const struct pi_sched_job *j, uint64_t *id);

/* End job id (queued or running) with PI_SCHED_CANCELLED at the next step; unknown or ended ids are
 * ignored. Any thread, the sinks included. */
void pi_sched_cancel(pi_sched_t *s, uint64_t id);

/* The engine the scheduler runs on (borrowed; its n_vocab must be the scheduler's; n_slots is lowered to
 * its n_seq). Call from the thread that will call pi_sched_run, before it. */
void pi_sched_set_engine(pi_sched_t *s, pi_engine_t *e);

/* Run steps on the engine until pi_sched_stop: the calling thread owns the engine until it returns.
 * After an engine failure every running job ends with PI_SCHED_ERROR and the engine is reset (a pipeline
 * restarts its workers); queued jobs then run. An engine that reports itself broken while idle (its
 * ops->broken: a worker died between requests) is reset then too, without waiting for a request. An
 * engine that fails again while idle or within a second of its start, or whose reset failed, is reset
 * after a back-off (1 s doubling to a minute; stats.backoff_ms) unless a job waits. Past the restart
 * cap (opts.restart_max) no reset is tried again. Returns 0 after a stop, -PI_ERR_INVAL
 * without an engine. */
int pi_sched_run(pi_sched_t *s);

/* Make pi_sched_run return: running and queued jobs end with PI_SCHED_CANCELLED and reason, and later
 * submissions are refused. Any thread. */
void pi_sched_stop(pi_sched_t *s, const char *reason);

/* Counters since the scheduler was made (any thread). Histograms count observations with value <=
 * bound[i] in bucket i, the last bucket being +Inf. */
#define PI_SCHED_TTFT_BUCKETS 12
#define PI_SCHED_TPOT_BUCKETS 12
extern const double pi_sched_ttft_bounds[PI_SCHED_TTFT_BUCKETS - 1]; /* seconds */
extern const double pi_sched_tpot_bounds[PI_SCHED_TPOT_BUCKETS - 1]; /* seconds per generated token */
struct pi_sched_stats {
    uint64_t requests[PI_SCHED_FINISH_COUNT]; /* ended requests by finish */
    uint64_t refused;                         /* submissions refused for a full queue */
    uint64_t prompt_tokens, cached_tokens, generated_tokens;
    uint64_t steps, step_tokens; /* engine steps and the tokens they carried */
    uint64_t engine_errors;
    uint64_t restarts; /* engine resets that succeeded after a failure */
    int running, waiting, n_slots, queue_max;
    int64_t kv_used, kv_total; /* positions held in the slots' caches, and their capacity */
    uint64_t ttft[PI_SCHED_TTFT_BUCKETS];
    double ttft_sum;
    uint64_t tpot[PI_SCHED_TPOT_BUCKETS]; /* per request: decode time / (generated - 1) */
    double tpot_sum;
    bool ready;           /* an engine is set and its last reset succeeded */
    bool failed;          /* the last restart failed (requests are then refused,
                                                  not queued); false while one is under way */
    bool gave_up;         /* the restart cap was reached: failed for good, no restart is tried again */
    bool stopping;        /* pi_sched_stop was called: jobs end as cancelled, nothing is restarted */
    int64_t backoff_ms;   /* the wait before the next reset after a failure that comes soon: it doubles (to a
                             minute) while resets fail or engines die soon after their start */
    char last_error[160]; /* the last engine failure, "" when none */
};
void pi_sched_stats(pi_sched_t *s, struct pi_sched_stats *out);

/* One word for the scheduler's state in st, status's overall health:
 *   "stopping"    the server is stopping: nothing is restarted, jobs end as cancelled;
 *   "loading"     no engine yet (the model and the workers are being started);
 *   "ok"          ready: requests run;
 *   "restarting"  the engine failed (a worker died) and is being reset; requests wait for it;
 *   "failing"     the last restart failed; the next request (or the back-off) tries again;
 *   "failed"      the restart cap was reached: nothing is tried again until the server is restarted. */
const char *pi_sched_health(const struct pi_sched_stats *st);

/* Positions per sequence of the engine (0 before pi_sched_set_engine). Any thread. */
int pi_sched_n_ctx(pi_sched_t *s);

#endif
