/*
 * coordinator/sched.c - continuous batching over one engine (coordinator/sched.h says what and why).
 *
 * DESIGN: the mutex guards the queue (a FIFO of struct job), the running table (the job of each slot,
 * for pi_sched_cancel), the counters and the flags; the run thread holds it only to move jobs in and
 * out and to count, never across an engine step or a sink call. Slots (struct slot) belong to the run
 * thread alone. A job is owned by the queue while it waits and by its slot while it runs; the run
 * thread frees it after its end callback (a cancel that finds no job is a no-op, so a late cancel of an
 * ended id cannot touch freed memory: ids are looked up, never dereferenced from outside).
 */
#include "config.h"
#include "coordinator/sched.h"

#include "ipc/futex.h"
#include "kernels/cpu/ops.h"
#include "lib/common.h"
#include "lib/log.h"
#include "text/stop.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const double pi_sched_ttft_bounds[PI_SCHED_TTFT_BUCKETS - 1] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                                1.0,  2.5,   5.0,  10., 30.};
const double pi_sched_tpot_bounds[PI_SCHED_TPOT_BUCKETS - 1] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04,
                                                                0.08,  0.16,   0.32,  0.64, 1.28};

#define IDLE_WAIT_NS (INT64_C(250) * 1000 * 1000) /* longest sleep without a job: deadlines stay checked */
#define RETRY_NS (INT64_C(1000) * 1000 * 1000)    /* between two resets of a failed engine, at first */
#define FAIR_SCAN 1024                            /* queued jobs looked at for the fairest next one */
#define RETRY_MAX_NS (INT64_C(60) * RETRY_NS)     /* ... doubling up to this */

struct job {
    uint64_t id;
    struct job *next; /* queue link */
    int32_t *tokens;  /* (n_tokens) */
    int n_tokens;
    int64_t limit; /* tokens to generate, at most (n_predict, max_tokens) */
    struct pi_sample_params sample;
    char **stops; /* (n_stops) */
    size_t n_stops;
    int32_t *bias_ids; /* (n_bias) */
    float *bias;
    size_t n_bias;
    int top; /* top_logprobs */
    bool ignore_eos;
    struct pi_sched_sink sink;
    void *ctx;
    int64_t t_submit, t_slot, t_first, deadline; /* ns; deadline 0 = none */
    bool cancel;                                 /* under the mutex */
    int retries;                                 /* prompt readings started again after an engine failure */
    uint64_t client;                             /* who asked (fairness between clients) */
};

enum slot_state { SLOT_FREE = 0, SLOT_PROMPT, SLOT_GEN };

struct slot {
    enum slot_state state;
    struct job *job;
    int32_t *cache; /* (n_ctx) the tokens in the engine's sequence (its first n_cache) */
    int n_cache;
    int n_cached; /* the job's prompt tokens found in the cache */
    int32_t next; /* SLOT_GEN: the token sampled and not yet evaluated */
    int n_gen;
    int64_t last_used;  /* ns: the end of its last job (least recently used is reused first) */
    int64_t t_gen_last; /* ns: the last token sampled */
    pi_sampler_t *smp;
    pi_detok_t *detok;
    pi_stop_t *stop;
    int row;   /* the batch row whose logits it samples in this step, or -1 */
    int chunk; /* tokens it put in this step */
};

struct pi_sched {
    const pi_tokenizer_t *tok;
    int32_t n_vocab;
    struct pi_sched_opts o;
    pi_engine_t *e;
    /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *head, *tail;
    int n_waiting;
    struct job **running; /* (o.n_slots) */
    uint64_t next_id;
    bool stopping;
    char stop_reason[160];
    struct pi_sched_stats st;
    int n_ctx;
    /* run thread only */
    struct slot *slots; /* (o.n_slots) */
    int32_t *eog;       /* (n_eog) the tokenizer's end-of-generation ids */
    size_t n_eog;
    int32_t *b_tok, *b_seq, *b_pos, *b_rows; /* (max_batch) the step's batch */
    float *logits;                           /* (max_batch, n_vocab) */
    float *logp;                             /* (n_vocab) */
    char *buf;                               /* detokeniser output */
    char *endtxt;                            /* (tail_cap) a job's end text */
    size_t tail_len, tail_cap;
    size_t buf_cap;
    int rr;             /* round-robin start among prompt-reading slots */
    int gen_rr;         /* and among generating slots, when they outnumber the batch */
    int64_t retry_at;   /* ns: a failed engine is reset again from then */
    int64_t retry_ns;   /* the wait after the next failure that comes soon, doubling while they do; 0: none */
    int64_t ready_at;   /* ns: when the engine last became ready (set, or a reset that succeeded) */
    bool counted;       /* this outage (engine failure to good reset) is counted against the restart cap */
    int64_t *restart_t; /* (o.restart_max) ring: the times (ns) of the last restarts, the oldest at restart_i */
    int n_restart_t, restart_i;
};

const char *pi_sched_finish_name(enum pi_sched_finish f)
{
    static const char *const names[] = {"stop", "length", "cancelled", "timeout", "error"};
    return (unsigned)f < PI_SCHED_FINISH_COUNT ? names[f] : "unknown";
}

static void job_free(struct job *j)
{
    if (!j) return;
    for (size_t i = 0; i < j->n_stops; i++) free(j->stops[i]);
    free(j->stops);
    free(j->tokens);
    free(j->bias_ids);
    free(j->bias);
    free(j);
}

pi_sched_t *pi_sched_new(const pi_tokenizer_t *t, int32_t n_vocab, const struct pi_sched_opts *o)
{
    if (!o || o->n_slots < 1 || o->n_slots > 4096 || o->queue_max < 0 || o->queue_reserve < 0 || o->max_tokens < 0 ||
        o->timeout_ms < 0 || o->restart_max < 0 || o->restart_max > PI_SCHED_RESTART_MAX || o->restart_window_ms < 0 ||
        n_vocab < 1) {
        pi_error("scheduler: bad options");
        return NULL;
    }
    pi_sched_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->tok = t;
    s->n_vocab = n_vocab;
    s->o = *o;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->running = calloc((size_t)o->n_slots, sizeof *s->running);
    s->slots = calloc((size_t)o->n_slots, sizeof *s->slots);
    s->logp = malloc((size_t)n_vocab * sizeof *s->logp);
    s->eog = malloc((size_t)n_vocab * sizeof *s->eog);
    s->buf_cap = (t ? pi_detok_max_push(t) : 0) + 32;
    s->buf = malloc(s->buf_cap);
    s->restart_t = calloc((size_t)PI_MAX(o->restart_max, 1), sizeof *s->restart_t);
    if (!s->running || !s->slots || !s->logp || !s->eog || !s->buf || !s->restart_t) {
        pi_sched_destroy(&s);
        return NULL;
    }
    for (int32_t i = 0; t && i < n_vocab && i < pi_tokenizer_n_vocab(t); i++)
        if (pi_tokenizer_is_eog(t, i)) s->eog[s->n_eog++] = i;
    for (int i = 0; i < o->n_slots; i++) s->slots[i].row = -1;
    s->st.n_slots = o->n_slots;
    s->st.queue_max = o->queue_max;
    return s;
}

static void slot_free(struct slot *sl)
{
    free(sl->cache);
    pi_sampler_destroy(&sl->smp);
    pi_detok_destroy(&sl->detok);
    pi_stop_destroy(&sl->stop);
}

void pi_sched_destroy(pi_sched_t **sp)
{
    if (!sp || !*sp) return;
    pi_sched_t *s = *sp;
    for (struct job *j = s->head, *n; j; j = n) {
        n = j->next;
        job_free(j);
    }
    for (int i = 0; s->slots && i < s->o.n_slots; i++) {
        job_free(s->slots[i].job);
        slot_free(&s->slots[i]);
    }
    free(s->slots);
    free(s->running);
    free(s->eog);
    free(s->b_tok);
    free(s->b_seq);
    free(s->b_pos);
    free(s->b_rows);
    free(s->logits);
    free(s->logp);
    free(s->buf);
    free(s->endtxt);
    free(s->restart_t);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    *sp = NULL;
}

static int64_t now_ns(void) { return pi_clock_ns(); }

/* ---- submission (any thread) ---- */

static int job_copy(pi_sched_t *s, const struct pi_sched_job *in, struct job *j)
{
    if (!in->tokens || in->n_tokens == 0 || in->n_tokens > (size_t)INT32_MAX / 2) return -PI_ERR_INVAL;
    for (size_t i = 0; i < in->n_tokens; i++)
        if (in->tokens[i] < 0 || in->tokens[i] >= s->n_vocab) return -PI_ERR_INVAL;
    if (pi_sample_params_check(&in->sample) != 0) return -PI_ERR_INVAL;
    if (in->top_logprobs < -1 || in->top_logprobs > PI_SCHED_MAX_TOP) return -PI_ERR_INVAL;
    if (in->n_stops > PI_STOP_MAX_STRINGS || (in->n_stops && !in->stops)) return -PI_ERR_INVAL;
    if (in->n_bias > (size_t)s->n_vocab * 4 || (in->n_bias && (!in->bias_ids || !in->bias))) return -PI_ERR_INVAL;
    for (size_t i = 0; i < in->n_bias; i++)
        if (in->bias_ids[i] < 0 || in->bias_ids[i] >= s->n_vocab || isnan(in->bias[i])) return -PI_ERR_INVAL;
    if (!in->sink.end || !in->sink.piece) return -PI_ERR_INVAL;
    j->n_tokens = (int)in->n_tokens;
    j->tokens = malloc(in->n_tokens * sizeof *j->tokens);
    if (!j->tokens) return -PI_ERR_NOMEM;
    memcpy(j->tokens, in->tokens, in->n_tokens * sizeof *j->tokens);
    int64_t limit = in->n_predict < 0 ? INT64_MAX : in->n_predict;
    if (s->o.max_tokens > 0 && limit > s->o.max_tokens) limit = s->o.max_tokens;
    j->limit = limit;
    j->sample = in->sample;
    if (in->n_stops) {
        j->stops = calloc(in->n_stops, sizeof *j->stops);
        if (!j->stops) return -PI_ERR_NOMEM;
        for (size_t i = 0; i < in->n_stops; i++) {
            if (!in->stops[i] || !in->stops[i][0] || strlen(in->stops[i]) > PI_STOP_MAX_LEN) return -PI_ERR_INVAL;
            j->stops[i] = strdup(in->stops[i]);
            j->n_stops = i + 1;
            if (!j->stops[i]) return -PI_ERR_NOMEM;
        }
    }
    size_t n_bias = in->n_bias + (in->ignore_eos ? s->n_eog : 0);
    if (n_bias) {
        j->bias_ids = malloc(n_bias * sizeof *j->bias_ids);
        j->bias = malloc(n_bias * sizeof *j->bias);
        if (!j->bias_ids || !j->bias) return -PI_ERR_NOMEM;
        if (in->n_bias) {
            memcpy(j->bias_ids, in->bias_ids, in->n_bias * sizeof *j->bias_ids);
            memcpy(j->bias, in->bias, in->n_bias * sizeof *j->bias);
        }
        for (size_t i = in->n_bias; i < n_bias; i++) { /* ignore_eos: the end tokens are never drawn */
            j->bias_ids[i] = s->eog[i - in->n_bias];
            j->bias[i] = -INFINITY;
        }
        j->n_bias = n_bias;
    }
    j->top = in->top_logprobs;
    j->client = in->client;
    j->ignore_eos = in->ignore_eos;
    j->sink = in->sink;
    j->ctx = in->ctx;
    return 0;
}

int pi_sched_submit(pi_sched_t *s, const struct pi_sched_job *in, uint64_t *id)
{
    if (!s || !in) return -PI_ERR_INVAL;
    struct job *j = calloc(1, sizeof *j);
    if (!j) return -PI_ERR_NOMEM;
    int rc = job_copy(s, in, j);
    if (rc != 0) {
        job_free(j);
        return rc;
    }
    j->t_submit = now_ns();
    if (s->o.timeout_ms > 0) j->deadline = j->t_submit + s->o.timeout_ms * INT64_C(1000000);
    pthread_mutex_lock(&s->mu);
    /* a full queue refuses, unless a slot is free right now: then the job waits one step at most; its
     * last queue_reserve places (at most half the queue; counted the same way) take only a client with
     * fewer than that many waiting */
    int free_slots = 0;
    for (int i = 0; i < s->o.n_slots; i++) free_slots += !s->running[i];
    const int room = free_slots + s->o.queue_max, reserve = PI_MIN(s->o.queue_reserve, s->o.queue_max / 2);
    if (s->stopping) {
        rc = -PI_ERR_PEER;
    } else if (s->n_waiting >= room) {
        rc = -PI_ERR_RANGE;
    } else if (reserve > 0 && s->n_waiting >= room - reserve) {
        int mine = 0;
        for (const struct job *q = s->head; q; q = q->next) mine += q->client == j->client;
        if (mine >= reserve) rc = -PI_ERR_RANGE;
    }
    if (rc == 0) {
        j->id = ++s->next_id;
        if (s->tail) s->tail->next = j;
        else s->head = j;
        s->tail = j;
        s->n_waiting++;
        s->st.waiting = s->n_waiting;
        if (id) *id = j->id;
        pthread_cond_signal(&s->cv);
    } else if (rc == -PI_ERR_RANGE) {
        s->st.refused++;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0) job_free(j);
    return rc;
}

void pi_sched_cancel(pi_sched_t *s, uint64_t id)
{
    if (!s || !id) return;
    pthread_mutex_lock(&s->mu);
    for (struct job *j = s->head; j; j = j->next)
        if (j->id == id) j->cancel = true;
    for (int i = 0; i < s->o.n_slots; i++)
        if (s->running[i] && s->running[i]->id == id) s->running[i]->cancel = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void pi_sched_stop(pi_sched_t *s, const char *reason)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    if (!s->stopping) snprintf(s->stop_reason, sizeof s->stop_reason, "%s", reason ? reason : "the server is stopping");
    s->stopping = true;
    s->st.stopping = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void pi_sched_stats(pi_sched_t *s, struct pi_sched_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    pthread_mutex_unlock(&s->mu);
}

const char *pi_sched_health(const struct pi_sched_stats *st)
{
    if (st->stopping) return "stopping"; /* whatever failed before: nothing is restarted now */
    if (st->gave_up) return "failed";
    if (st->ready) return "ok";
    if (st->failed) return "failing";
    return st->engine_errors > 0 ? "restarting" : "loading";
}

int pi_sched_n_ctx(pi_sched_t *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->n_ctx;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ---- the run thread ---- */

void pi_sched_set_engine(pi_sched_t *s, pi_engine_t *e)
{
    s->e = e;
    pthread_mutex_lock(&s->mu);
    if (e && e->n_seq < s->o.n_slots) {
        pi_warn("scheduler: the engine holds %d sequences: %d slots instead of %d", e->n_seq, e->n_seq, s->o.n_slots);
        s->o.n_slots = e->n_seq > 0 ? e->n_seq : 1;
        s->st.n_slots = s->o.n_slots;
    }
    s->n_ctx = e ? e->n_ctx : 0;
    s->st.ready = e != NULL;
    s->ready_at = now_ns();
    s->st.kv_total = e ? (int64_t)e->n_ctx * s->o.n_slots : 0;
    pthread_mutex_unlock(&s->mu);
}

/* Append len bytes to the scheduler's end text. */
static void tail_add(pi_sched_t *s, const char *text, size_t len)
{
    if (!len) return;
    if (s->tail_len + len > s->tail_cap) {
        size_t cap = PI_MAX(s->tail_cap * 2, s->tail_len + len + 64);
        char *p = realloc(s->endtxt, cap);
        if (!p) return; /* out of memory: the held bytes are lost, the end is still reported */
        s->endtxt = p;
        s->tail_cap = cap;
    }
    memcpy(s->endtxt + s->tail_len, text, len);
    s->tail_len += len;
}

/* The end of job j, in slot sl (NULL for a job that never got one): release its held text (the
 * detokeniser's tail through the stop matcher, unless a stop string already ended it), call its end,
 * count, free it. Run thread. */
static void finish(pi_sched_t *s, struct slot *sl, struct job *j, enum pi_sched_finish f, int status,
                   const char *reason)
{
    struct pi_sched_end e = {.finish = f, .status = status, .n_prompt = j->n_tokens, .text = "", .len = 0};
    const int64_t t = now_ns();
    if (reason) snprintf(e.reason, sizeof e.reason, "%s", reason);
    s->tail_len = 0;
    if (sl) {
        e.n_cached = sl->n_cached;
        e.n_generated = sl->n_gen;
        const int w = sl->detok && sl->n_gen ? pi_detok_flush(sl->detok, s->buf, s->buf_cap) : 0;
        if (sl->stop) {
            struct pi_stop_out o = {.text = "", .len = 0, .stop = -1};
            if (w > 0 && pi_stop_feed(sl->stop, s->buf, (size_t)w, &o) == 0) tail_add(s, o.text, o.len);
            pi_stop_flush(sl->stop, &o); /* nothing when a stop string matched */
            if (o.stop < 0) tail_add(s, o.text, o.len);
        } else if (w > 0) {
            tail_add(s, s->buf, (size_t)w);
        }
        e.text = s->tail_len ? s->endtxt : "";
        e.len = s->tail_len;
        e.queue_s = (double)(j->t_slot - j->t_submit) * 1e-9;
    } else {
        e.queue_s = (double)(t - j->t_submit) * 1e-9;
    }
    e.ttft_s = j->t_first ? (double)(j->t_first - j->t_submit) * 1e-9 : 0;
    e.total_s = (double)(t - j->t_submit) * 1e-9;
    double tpot = -1;
    if (sl && sl->n_gen > 1) tpot = (double)(sl->t_gen_last - j->t_first) * 1e-9 / (sl->n_gen - 1);
    /* The statistics count the job before its sink hears the end, so a client that has its answer and then
     * reads the statistics finds itself counted. */
    pthread_mutex_lock(&s->mu);
    s->st.requests[f]++;
    if (sl) {
        s->st.prompt_tokens += (uint64_t)j->n_tokens;
        s->st.cached_tokens += (uint64_t)sl->n_cached;
        s->st.generated_tokens += (uint64_t)sl->n_gen;
        for (int i = 0; i < s->o.n_slots; i++)
            if (s->running[i] == j) s->running[i] = NULL;
        s->st.running--;
    }
    if (j->t_first) {
        int b = 0;
        while (b < PI_SCHED_TTFT_BUCKETS - 1 && e.ttft_s > pi_sched_ttft_bounds[b]) b++;
        s->st.ttft[b]++;
        s->st.ttft_sum += e.ttft_s;
    }
    if (tpot >= 0) {
        int b = 0;
        while (b < PI_SCHED_TPOT_BUCKETS - 1 && tpot > pi_sched_tpot_bounds[b]) b++;
        s->st.tpot[b]++;
        s->st.tpot_sum += tpot;
    }
    pthread_mutex_unlock(&s->mu);
    j->sink.end(j->ctx, &e);
    pi_info("request %" PRIu64 ": prompt %d tokens (%d cached), generated %d, ttft %.0f ms, %.1f tok/s, %s%s%s", j->id,
            e.n_prompt, e.n_cached, e.n_generated, e.ttft_s * 1e3, tpot > 0 ? 1.0 / tpot : 0.0, pi_sched_finish_name(f),
            reason ? ": " : "", reason ? reason : "");
    if (sl) {
        sl->job = NULL;
        sl->state = SLOT_FREE;
        sl->last_used = t;
        sl->row = -1;
        sl->n_gen = 0;
    }
    job_free(j);
}

/* Longest common prefix of a and b. */
static int lcp(const int32_t *a, int na, const int32_t *b, int nb)
{
    int n = 0;
    while (n < na && n < nb && a[n] == b[n]) n++;
    return n;
}

/* Put job j into the free slot i: reuse its cached prefix, set up its sampler, detokeniser and stop
 * matcher. 0, or a negative pi_err (the job is then ended by the caller). */
static int slot_start(pi_sched_t *s, int i, struct job *j)
{
    struct slot *sl = &s->slots[i];
    const int n_ctx = s->e->n_ctx;
    pi_detok_destroy(&sl->detok); /* nothing of the last job's may reach this one's end */
    pi_stop_destroy(&sl->stop);
    sl->job = j;
    sl->n_gen = 0;
    sl->n_cached = 0;
    sl->row = -1;
    j->t_slot = now_ns();
    if (!sl->cache) {
        sl->cache = malloc((size_t)n_ctx * sizeof *sl->cache);
        if (!sl->cache) return -PI_ERR_NOMEM;
    }
    /* keep the common prefix, but evaluate at least the prompt's last token: its logits are needed */
    int keep = PI_MIN(lcp(sl->cache, sl->n_cache, j->tokens, j->n_tokens), j->n_tokens - 1);
    if (keep < sl->n_cache) {
        int rc = s->e->ops->seq_truncate(s->e, i, keep);
        if (rc != 0) {
            sl->n_cache = 0;
            return rc;
        }
        sl->n_cache = keep;
    }
    sl->n_cached = keep;
    if (!sl->smp) sl->smp = pi_sampler_new(s->n_vocab, &j->sample);
    if (!sl->smp) return -PI_ERR_NOMEM;
    int rc = pi_sampler_set_params(sl->smp, &j->sample);
    if (rc == 0) rc = pi_sampler_set_logit_bias(sl->smp, j->bias_ids, j->bias, j->n_bias);
    if (rc == 0) rc = pi_sampler_set_eog(sl->smp, j->ignore_eos ? NULL : s->eog, j->ignore_eos ? 0 : s->n_eog);
    if (rc == 0) rc = pi_sampler_accept_prompt(sl->smp, j->tokens, (size_t)j->n_tokens);
    if (rc != 0) return rc;
    if (s->tok && !(sl->detok = pi_detok_new(s->tok, false))) return -PI_ERR_NOMEM;
    if (j->n_stops && !(sl->stop = pi_stop_new((const char *const *)j->stops, j->n_stops))) return -PI_ERR_NOMEM;
    sl->state = SLOT_PROMPT;
    return 0;
}

/* Move queued jobs into free slots (the longest cached prefix first, else the least recently used);
 * end the cancelled and timed-out ones. Run thread, mutex not held. */
/* Take the queued jobs that were cancelled (pi_sched_cancel, or their stopped()) or whose deadline
 * passed off the queue, wherever they wait, and end them: a client that went away frees its place in
 * the queue at once, not when its job reaches the head. */
static void queue_sweep(pi_sched_t *s)
{
    const int64_t t = now_ns();
    struct job *gone = NULL, **tail = &gone;
    pthread_mutex_lock(&s->mu);
    struct job *prev = NULL;
    for (struct job *j = s->head, *next; j; j = next) {
        next = j->next;
        if (!j->cancel && j->sink.stopped && j->sink.stopped(j->ctx)) j->cancel = true;
        if (!j->cancel && !(j->deadline && t >= j->deadline)) {
            prev = j;
            continue;
        }
        if (prev) prev->next = next;
        else s->head = next;
        if (s->tail == j) s->tail = prev;
        j->next = NULL;
        *tail = j;
        tail = &j->next;
        s->n_waiting--;
    }
    s->st.waiting = s->n_waiting;
    pthread_mutex_unlock(&s->mu);
    for (struct job *j = gone, *next; j; j = next) {
        next = j->next;
        if (j->cancel) finish(s, NULL, j, PI_SCHED_CANCELLED, 0, "cancelled before it started");
        else finish(s, NULL, j, PI_SCHED_TIMEOUT, 0, "the request's time limit passed while it waited");
    }
}

/* The queued job that gets the next free slot (mutex held), *prev its predecessor in the queue (NULL for
 * the head): the oldest job of the client that holds the fewest slots now, among the first FAIR_SCAN
 * waiting; so a client with many requests in flight cannot keep one with none waiting behind them.
 * Among clients holding as many, the oldest job wins (first come, first served). */
static struct job *fair_pick(pi_sched_t *s, struct job **prev)
{
    struct job *pick = s->head, *p = NULL;
    *prev = NULL;
    int pick_held = INT32_MAX, scanned = 0;
    for (struct job *j = s->head; j && scanned < FAIR_SCAN && pick_held > 0; p = j, j = j->next, scanned++) {
        int held = 0;
        for (int i = 0; i < s->o.n_slots; i++) held += s->running[i] && s->running[i]->client == j->client;
        if (held < pick_held) {
            pick = j;
            *prev = p;
            pick_held = held;
        }
    }
    return pick;
}

static void admit(pi_sched_t *s)
{
    queue_sweep(s);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        struct job *prev = NULL, *j = fair_pick(s, &prev);
        int best = -1, best_lcp = -1;
        for (int i = 0; j && i < s->o.n_slots; i++) {
            const struct slot *sl = &s->slots[i];
            if (sl->state != SLOT_FREE) continue;
            int l = lcp(sl->cache, sl->n_cache, j->tokens, j->n_tokens);
            if (l > best_lcp || (l == best_lcp && sl->last_used < s->slots[best].last_used)) best = i, best_lcp = l;
        }
        enum { GO, CANCEL, LATE, LONG } what = GO;
        if (j && j->cancel) what = CANCEL; /* since queue_sweep */
        else if (j && j->deadline && now_ns() >= j->deadline) what = LATE;
        else if (j && j->n_tokens > s->e->n_ctx) what = LONG;
        if (!j || (best < 0 && what == GO)) {
            pthread_mutex_unlock(&s->mu);
            return;
        }
        if (prev) prev->next = j->next;
        else s->head = j->next;
        if (s->tail == j) s->tail = prev;
        j->next = NULL;
        s->n_waiting--;
        s->st.waiting = s->n_waiting;
        if (what == GO) {
            s->running[best] = j;
            s->st.running++;
        }
        pthread_mutex_unlock(&s->mu);
        char why[160];
        switch (what) {
        case CANCEL: finish(s, NULL, j, PI_SCHED_CANCELLED, 0, "cancelled before it started"); continue;
        case LATE: finish(s, NULL, j, PI_SCHED_TIMEOUT, 0, "the request's time limit passed while it waited"); continue;
        case LONG:
            snprintf(why, sizeof why, "the prompt (%d tokens) does not fit the context of %d positions", j->n_tokens,
                     s->e->n_ctx);
            finish(s, NULL, j, PI_SCHED_ERROR, -PI_ERR_RANGE, why);
            continue;
        case GO: break;
        }
        int rc = slot_start(s, best, j);
        if (rc != 0) finish(s, &s->slots[best], j, PI_SCHED_ERROR, rc, "the request could not be started");
    }
}

/* The top n entries of logp (n_vocab), most likely first, into ids/lp. */
static void top_n(const float *logp, int32_t n_vocab, int n, int32_t *ids, float *lp)
{
    int k = 0;
    for (int32_t t = 0; t < n_vocab; t++) {
        const float v = logp[t];
        if (k == n && !(v > lp[k - 1])) continue;
        int at = k < n ? k++ : n - 1;
        while (at > 0 && v > lp[at - 1]) {
            ids[at] = ids[at - 1];
            lp[at] = lp[at - 1];
            at--;
        }
        ids[at] = t;
        lp[at] = v;
    }
}

/* Slot i's row of logits: sample, report the token, decide whether the job goes on. */
static void slot_sample(pi_sched_t *s, int i, const float *row)
{
    struct slot *sl = &s->slots[i];
    struct job *j = sl->job;
    if (j->limit == 0) { /* the prompt only */
        finish(s, sl, j, PI_SCHED_LENGTH, 0, NULL);
        return;
    }
    int32_t top_ids[PI_SCHED_MAX_TOP];
    float top_lp[PI_SCHED_MAX_TOP];
    struct pi_sched_piece p = {.text = "", .len = 0};
    const int32_t tok = pi_sampler_sample(sl->smp, row);
    const int64_t t = now_ns();
    if (!j->t_first) j->t_first = t;
    sl->t_gen_last = t;
    if (tok < 0) {
        finish(s, sl, j, PI_SCHED_ERROR, -PI_ERR_FORMAT,
               "sampling found no finite logit: the model's output is broken");
        return;
    }
    if (pi_sampler_is_eog(sl->smp, tok)) {
        finish(s, sl, j, PI_SCHED_STOP, 0, NULL);
        return;
    }
    pi_sampler_accept(sl->smp, tok);
    sl->n_gen++;
    p.token = tok;
    if (j->top >= 0) {
        pi_log_softmax(row, s->n_vocab, s->logp);
        p.logprob = s->logp[tok];
        if (j->top > 0) top_n(s->logp, s->n_vocab, j->top, top_ids, top_lp);
        p.n_top = PI_MIN(j->top, (int)s->n_vocab);
        p.top_ids = top_ids;
        p.top_lp = top_lp;
    }
    int w = sl->detok ? pi_detok_push(sl->detok, tok, s->buf, s->buf_cap)
                      : snprintf(s->buf, s->buf_cap, "%s%d", sl->n_gen > 1 ? " " : "", tok);
    if (w < 0) w = 0; /* an embedding row past the tokenizer's vocabulary: no text */
    int stop = -1;
    if (sl->stop) {
        struct pi_stop_out so = {.text = "", .len = 0, .stop = -1};
        if (pi_stop_feed(sl->stop, s->buf, (size_t)w, &so) != 0) {
            finish(s, sl, j, PI_SCHED_ERROR, -PI_ERR_NOMEM, "out of memory");
            return;
        }
        p.text = so.text;
        p.len = so.len;
        stop = so.stop;
    } else {
        p.text = s->buf;
        p.len = (size_t)w;
    }
    j->sink.piece(j->ctx, &p);
    if (stop >= 0) finish(s, sl, j, PI_SCHED_STOP, 0, NULL);
    else if (sl->n_gen >= j->limit || sl->n_cache >= s->e->n_ctx) finish(s, sl, j, PI_SCHED_LENGTH, 0, NULL);
    else {
        sl->next = tok;
        sl->state = SLOT_GEN;
    }
}

/* When a failed engine is reset (retry_at). An engine that ran a while (RETRY_NS) and failed in a step
 * is reset at once: a job waits for it. One that failed soon after its start, or while idle (nothing
 * waits; a worker that dies after each good start would otherwise be respawned at every idle tick), is
 * reset after retry_ns, which then doubles up to RETRY_MAX_NS; an engine that lived RETRY_MAX_NS
 * starts that series again from 0 (an idle death after a long life is replaced at once). */
static void backoff(pi_sched_t *s, bool idle)
{
    const int64_t t = now_ns(), up = t - s->ready_at;
    if (up >= RETRY_MAX_NS) s->retry_ns = 0;
    if (idle || up < RETRY_NS) {
        s->retry_at = t + s->retry_ns;
        s->retry_ns = s->retry_ns ? PI_MIN(s->retry_ns * 2, RETRY_MAX_NS) : RETRY_NS;
    } else {
        s->retry_at = 0;
    }
    pthread_mutex_lock(&s->mu);
    s->st.backoff_ms = s->retry_ns / 1000000;
    pthread_mutex_unlock(&s->mu);
}

/* After an engine failure rc every sequence is lost. A job that has sent nothing yet (still reading
 * its prompt, or about to sample its first token) starts its prompt again after the reset, once (a
 * second failure ends it): a worker that died while the server was idle costs its next request
 * nothing. A job that has generated tokens ends with the error: its client has a partial answer.
 * During a stop every job ends as cancelled, with the stop's reason. idle: the engine said it broke
 * between steps (ops->broken), not a step. */
static void engine_failed(pi_sched_t *s, int rc, bool idle)
{
    char why[160];
    pthread_mutex_lock(&s->mu);
    const bool stopping = s->stopping;
    if (stopping) snprintf(why, sizeof why, "%s", s->stop_reason);
    else if (idle)
        snprintf(why, sizeof why, "a worker of the pipeline died while it was idle; the pipeline is being restarted");
    else if (rc == -PI_ERR_PEER)
        snprintf(why, sizeof why, "a worker of the pipeline died during the request; the pipeline is being restarted");
    else snprintf(why, sizeof why, "the engine failed: %s", pi_err_str(rc));
    s->st.engine_errors++;
    /* past the restart cap the reason stays the give-up's: a later notice (another worker of the dead
     * pipeline exiting) must not make status read as if a restart were coming */
    if (!s->st.gave_up) snprintf(s->st.last_error, sizeof s->st.last_error, "%s", why);
    s->st.ready = false;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->o.n_slots; i++) {
        struct slot *sl = &s->slots[i];
        struct job *j = sl->job;
        sl->n_cache = 0;
        if (!j) continue;
        if (stopping) finish(s, sl, j, PI_SCHED_CANCELLED, 0, why);
        else if (sl->n_gen > 0 || j->retries > 0) finish(s, sl, j, PI_SCHED_ERROR, rc, why);
        else { /* nothing sent: read the prompt again after the reset */ j->retries++;
            sl->n_cached = 0;
            sl->state = SLOT_PROMPT;
        }
    }
    backoff(s, idle);
}

/* The jobs in the slots end with PI_SCHED_ERROR, status rc and reason why. */
static void fail_slots(pi_sched_t *s, int rc, const char *why)
{
    for (int i = 0; i < s->o.n_slots; i++)
        if (s->slots[i].job) finish(s, &s->slots[i], s->slots[i].job, PI_SCHED_ERROR, rc, why);
}

/* The restart cap (opts.restart_max in restart_window_ms): whether one more restart may be tried at t;
 * when it may, t is recorded as one. Called once per outage (engine_ready's counted). */
static bool restart_allowed(pi_sched_t *s, int64_t t)
{
    const int max = s->o.restart_max;
    if (max == 0) return true;
    if (s->n_restart_t == max) { /* the ring is full: its oldest entry is the max-th restart back */
        if (t - s->restart_t[s->restart_i] < s->o.restart_window_ms * INT64_C(1000000)) return false;
        s->restart_t[s->restart_i] = t;
        s->restart_i = (s->restart_i + 1) % max;
        return true;
    }
    s->restart_t[(s->restart_i + s->n_restart_t++) % max] = t;
    return true;
}

/* Past the restart cap: failed for good, with a reason that says so and what the last failure was. */
static void give_up(pi_sched_t *s)
{
    pthread_mutex_lock(&s->mu);
    char last[160];
    snprintf(last, sizeof last, "%s", s->st.last_error);
    s->st.ready = false;
    s->st.failed = true;
    s->st.gave_up = true;
    snprintf(s->st.last_error, sizeof s->st.last_error,
             "gave up after %d restarts in %lld s (restart the server): %.60s", s->o.restart_max,
             (long long)(s->o.restart_window_ms / 1000), last);
    pthread_mutex_unlock(&s->mu);
    pi_error("scheduler: %d engine restarts within %lld s: not restarting it again (%s)", s->o.restart_max,
             (long long)(s->o.restart_window_ms / 1000), last);
    fail_slots(s, -PI_ERR_PEER, "the pipeline failed too often; the server gave up restarting it (see pi-ctl status)");
}

/* A failed engine: reset it, at most once per RETRY_NS unless force (jobs wait for it: each new batch
 * of requests gets its own try, as a pipeline restarted at every request would), and never past the
 * restart cap. True when it is ready. When the reset fails, the jobs waiting to read their prompt
 * again end with the reason. */
static bool engine_ready(pi_sched_t *s, bool force)
{
    pthread_mutex_lock(&s->mu);
    const bool ready = s->st.ready, gave_up = s->st.gave_up, stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (ready) return true;
    if (gave_up || stopping) return false; /* a stop cancels the engine: it is not restarted for that */
    const int64_t t = now_ns();
    if (!force && t < s->retry_at) return false;
    /* the cap counts outages, not tries: the resets after a failed one are the same restart */
    if (!s->counted) {
        if (!restart_allowed(s, t)) {
            give_up(s);
            return false;
        }
        s->counted = true;
    }
    int rc = s->e->ops->reset(s->e);
    /* failed resets back off, 1 s doubling to a minute; a waiting request always gets its try (force).
     * A good one keeps retry_ns: an engine that dies soon after it waits longer next time (backoff). */
    if (rc != 0) {
        const int64_t wait = s->retry_ns ? s->retry_ns : RETRY_NS;
        s->retry_at = now_ns() + wait;
        s->retry_ns = PI_MIN(wait * 2, RETRY_MAX_NS);
    } else {
        s->ready_at = now_ns();
        s->counted = false;
    }
    pthread_mutex_lock(&s->mu);
    s->st.backoff_ms = s->retry_ns / 1000000;
    s->st.ready = rc == 0;
    s->st.failed = rc != 0;
    if (rc != 0)
        snprintf(s->st.last_error, sizeof s->st.last_error, "the pipeline's workers could not be started: %s",
                 pi_err_str(rc));
    else s->st.restarts++;
    pthread_mutex_unlock(&s->mu);
    if (rc != 0) {
        pi_error("scheduler: restarting the engine failed: %s", pi_err_str(rc));
        fail_slots(s, rc,
                   "the pipeline's workers could not be started (see the server's log); the next request tries again");
    }
    return rc == 0;
}

/* End the queued jobs (the engine cannot be restarted, or the scheduler stops). */
static void drain_queue(pi_sched_t *s, enum pi_sched_finish f, int status, const char *why)
{
    for (;;) {
        pthread_mutex_lock(&s->mu);
        struct job *j = s->head;
        if (j) {
            s->head = j->next;
            if (!s->head) s->tail = NULL;
            s->n_waiting--;
            s->st.waiting = s->n_waiting;
        }
        pthread_mutex_unlock(&s->mu);
        if (!j) return;
        finish(s, NULL, j, f, status, why);
    }
}

/* Ask each running job whether it goes on (cancel, stopped(), deadline); end those that do not. */
static void sweep(pi_sched_t *s)
{
    const int64_t t = now_ns();
    for (int i = 0; i < s->o.n_slots; i++) {
        struct slot *sl = &s->slots[i];
        struct job *j = sl->job;
        if (!j) continue;
        pthread_mutex_lock(&s->mu);
        bool cancel = j->cancel;
        pthread_mutex_unlock(&s->mu);
        if (!cancel && j->sink.stopped && j->sink.stopped(j->ctx)) cancel = true;
        if (cancel) finish(s, sl, j, PI_SCHED_CANCELLED, 0, "cancelled");
        else if (j->deadline && t >= j->deadline)
            finish(s, sl, j, PI_SCHED_TIMEOUT, 0, "the request's time limit passed");
    }
}

/* Build and run one step. Returns false when there was nothing to run. */
static bool step(pi_sched_t *s)
{
    pi_engine_t *e = s->e;
    const int cap = e->max_batch;
    int n = 0, n_rows = 0;
    for (int i = 0; i < s->o.n_slots; i++) {
        s->slots[i].row = -1;
        s->slots[i].chunk = 0;
    }
    /* decode tokens first; with more generating slots than the batch holds, in turn from where the last
     * step stopped (rows stay in batch order: the batch is built in slot order within the turn) */
    /* while prompts wait, a quarter of the batch is theirs, so that new requests start even when more
     * slots are generating than a batch holds */
    int gen_cap = cap;
    for (int i = 0; i < s->o.n_slots; i++)
        if (s->slots[i].state == SLOT_PROMPT) gen_cap = PI_MAX(1, cap - PI_MAX(1, cap / 4)); /* batch 1: gen only */
    const int gr = s->gen_rr;
    for (int k = 0; k < s->o.n_slots && n < gen_cap; k++) {
        const int i = (gr + k) % s->o.n_slots;
        struct slot *sl = &s->slots[i];
        if (sl->state != SLOT_GEN) continue;
        s->b_tok[n] = sl->next;
        s->b_seq[n] = i;
        s->b_pos[n] = sl->n_cache;
        sl->row = n_rows;
        sl->chunk = 1;
        s->b_rows[n_rows++] = n++;
        s->gen_rr = (i + 1) % s->o.n_slots;
    }
    /* prompts fill the rest, in turn from where the last step stopped */
    const int rr = s->rr;
    for (int k = 0; k < s->o.n_slots && n < cap; k++) {
        const int i = (rr + k) % s->o.n_slots;
        struct slot *sl = &s->slots[i];
        if (sl->state != SLOT_PROMPT) continue;
        const struct job *j = sl->job;
        const int left = j->n_tokens - sl->n_cache, take = PI_MIN(left, cap - n);
        for (int t = 0; t < take; t++) {
            s->b_tok[n + t] = j->tokens[sl->n_cache + t];
            s->b_seq[n + t] = i;
            s->b_pos[n + t] = sl->n_cache + t;
        }
        n += take;
        sl->chunk = take;
        if (take == left) {
            sl->row = n_rows;
            s->b_rows[n_rows++] = n - 1;
        }
        s->rr = (i + 1) % s->o.n_slots;
    }
    if (n == 0) return false;
    /* rows must increase: decode rows come first, then each prompt's last row, all in batch order */
    int rc = e->ops->eval(e, s->b_tok, s->b_seq, s->b_pos, n, s->b_rows, n_rows, s->logits);
    pthread_mutex_lock(&s->mu);
    s->st.steps++;
    s->st.step_tokens += (uint64_t)n;
    pthread_mutex_unlock(&s->mu);
    if (rc != 0) {
        pi_error("scheduler: a step of %d tokens failed: %s", n, pi_err_str(rc));
        engine_failed(s, rc, false);
        return true;
    }
    int64_t kv = 0;
    for (int i = 0; i < s->o.n_slots; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->chunk) {
            for (int t = 0; t < sl->chunk; t++)
                sl->cache[sl->n_cache + t] = sl->state == SLOT_GEN ? sl->next : sl->job->tokens[sl->n_cache + t];
            sl->n_cache += sl->chunk;
        }
        if (sl->row >= 0) slot_sample(s, i, s->logits + (size_t)sl->row * (size_t)s->n_vocab);
        kv += sl->n_cache;
    }
    pthread_mutex_lock(&s->mu);
    s->st.kv_used = kv;
    pthread_mutex_unlock(&s->mu);
    return true;
}

/* Whether any slot holds a job (run thread). */
static bool busy(const pi_sched_t *s)
{
    for (int i = 0; i < s->o.n_slots; i++)
        if (s->slots[i].job) return true;
    return false;
}

int pi_sched_run(pi_sched_t *s)
{
    pi_engine_t *e = s->e;
    if (!e) return -PI_ERR_INVAL;
    const size_t cap = (size_t)e->max_batch;
    s->b_tok = malloc(cap * sizeof *s->b_tok);
    s->b_seq = malloc(cap * sizeof *s->b_seq);
    s->b_pos = malloc(cap * sizeof *s->b_pos);
    s->b_rows = malloc(cap * sizeof *s->b_rows);
    s->logits = malloc(cap * (size_t)s->n_vocab * sizeof *s->logits);
    if (!s->b_tok || !s->b_seq || !s->b_pos || !s->b_rows || !s->logits) {
        pi_error("scheduler: out of memory for a batch of %zu tokens", cap);
        pthread_mutex_lock(&s->mu);
        s->st.ready = false;
        s->st.failed = true;
        snprintf(s->st.last_error, sizeof s->st.last_error, "out of memory for the batches");
        pthread_mutex_unlock(&s->mu);
        pi_sched_stop(s, "the server ran out of memory");
    }
    for (;;) {
        pthread_mutex_lock(&s->mu);
        const bool stopping = s->stopping;
        char why[160];
        snprintf(why, sizeof why, "%s", s->stop_reason);
        pthread_mutex_unlock(&s->mu);
        if (stopping) {
            for (int i = 0; i < s->o.n_slots; i++)
                if (s->slots[i].job) finish(s, &s->slots[i], s->slots[i].job, PI_SCHED_CANCELLED, 0, why);
            drain_queue(s, PI_SCHED_CANCELLED, 0, why);
            return 0;
        }
        sweep(s);
        pthread_mutex_lock(&s->mu);
        const bool queued = s->head != NULL, was_ready = s->st.ready;
        pthread_mutex_unlock(&s->mu);
        /* a worker that died between requests: restarted now (status says so meanwhile), not when the
         * next request finds the pipeline gone */
        if (was_ready && !busy(s) && e->ops->broken && e->ops->broken(e)) engine_failed(s, -PI_ERR_PEER, true);
        if (!engine_ready(s, queued || busy(s))) { /* a job to read its prompt again waits too */
            pthread_mutex_lock(&s->mu);
            const bool gave_up = s->st.gave_up, stop_now = s->stopping;
            char last[160];
            snprintf(last, sizeof last, "%s", s->st.last_error);
            pthread_mutex_unlock(&s->mu);
            if (stop_now) continue; /* the loop's top ends every job with the stop's reason */
            if (queued)
                drain_queue(s, PI_SCHED_ERROR, -PI_ERR_PEER,
                            gave_up ? last
                                    : "the pipeline's workers could not be started (see the server's log); the next "
                                      "request tries again");
        } else {
            admit(s);
            if (step(s)) continue;
        }
        /* nothing to run: sleep until a submission, a cancel or the stop (deadlines: IDLE_WAIT_NS) */
        pthread_mutex_lock(&s->mu);
        if (!s->stopping && !s->head) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t at = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + IDLE_WAIT_NS;
            ts.tv_sec = at / 1000000000;
            ts.tv_nsec = at % 1000000000;
            while (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == EINTR) {}
        }
        pthread_mutex_unlock(&s->mu);
    }
}
