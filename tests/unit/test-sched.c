/*
 * tests/unit/test-sched.c - the scheduler (coordinator/sched.h) over a fake engine whose logits are a
 * hash of each sequence's whole history, so that any mistake in the batches it builds (a wrong
 * position, a token of another sequence, a cache prefix kept that is not the prompt's) changes the
 * text. Checked: every request's tokens equal the same request run alone, whatever ran beside it;
 * a prompt sharing a prefix with a slot's cache evaluates only the rest; steps carry several
 * sequences; cancel, queue limits, deadlines, stop strings, logprobs; an engine failure
 * ends the running jobs with an error, resets the engine, and later jobs run; an engine that breaks
 * while idle is reset without a request, and one that dies after each start is reset with a growing
 * back-off; the restart cap counts failures of a running engine, not failed resets; past it no reset
 * is tried and every request ends with the reason (issue 20, defect 10); a stopping scheduler's
 * health is "stopping". The fake engine checks every batch against the engine
 * rules (coordinator/engine.h) and counts violations.
 */
#include "config.h"
#include "coordinator/sched.h"
#include "ipc/futex.h"
#include "lib/common.h"
#include "tests/tap.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NV 64 /* vocabulary */
#define NSEQ 4
#define NCTX 256
#define BATCH 16

struct fake {
    struct pi_engine base;
    uint64_t hist[NSEQ][NCTX + 1]; /* hash of the first p tokens of each sequence at [p] */
    int len[NSEQ];
    _Atomic int violations;
    _Atomic long tokens;       /* tokens evaluated */
    _Atomic long steps, multi; /* steps, and steps with more than one sequence */
    _Atomic int fail_at;       /* the step number that fails with -PI_ERR_PEER (0: none) */
    _Atomic int resets;        /* reset calls, failed ones included */
    _Atomic int delay_us;      /* each step takes at least this long */
    _Atomic int broken;        /* ops->broken answers this (a worker died while idle); a good reset clears it */
    _Atomic int reset_fail;    /* reset fails with -PI_ERR_IO (the workers cannot start) */
    _Atomic int die_after;     /* a good reset leaves broken set: a worker that dies soon after each start */
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static int fake_eval(pi_engine_t *e, const int32_t *tok, const int32_t *seq, const int32_t *pos, int n,
                     const int32_t *rows, int n_rows, float *logits)
{
    struct fake *f = (struct fake *)e;
    if (atomic_fetch_add(&f->steps, 1) + 1 == atomic_load(&f->fail_at)) return -PI_ERR_PEER;
    if (atomic_load(&f->delay_us)) usleep((useconds_t)atomic_load(&f->delay_us));
    int want[NSEQ];
    memcpy(want, f->len, sizeof want);
    int seen = 0;
    for (int i = 0; i < n; i++) {
        if (seq[i] < 0 || seq[i] >= NSEQ || pos[i] != want[seq[i]] || pos[i] >= NCTX || tok[i] < 0 || tok[i] >= NV) {
            atomic_fetch_add(&f->violations, 1);
            return -PI_ERR_INVAL;
        }
        want[seq[i]]++;
        seen |= 1 << seq[i];
    }
    for (int r = 0; r < n_rows; r++)
        if (rows[r] < 0 || rows[r] >= n || (r && rows[r] <= rows[r - 1])) {
            atomic_fetch_add(&f->violations, 1);
            return -PI_ERR_INVAL;
        }
    if (__builtin_popcount((unsigned)seen) > 1) atomic_fetch_add(&f->multi, 1);
    int r = 0;
    for (int i = 0; i < n; i++) {
        const int s = seq[i], p = pos[i];
        f->hist[s][p + 1] = mix(f->hist[s][p], (uint64_t)tok[i] + 1);
        f->len[s] = p + 1;
        if (r < n_rows && rows[r] == i) {
            float *row = logits + (size_t)r * NV;
            uint64_t h = f->hist[s][p + 1];
            for (int v = 0; v < NV; v++) row[v] = (float)((mix(h, (uint64_t)v) >> 40) % 1000) / 100.0f;
            r++;
        }
    }
    atomic_fetch_add(&f->tokens, n);
    return 0;
}

static int fake_truncate(pi_engine_t *e, int seq, int n)
{
    struct fake *f = (struct fake *)e;
    if (seq < 0 || seq >= NSEQ || n < 0 || n > f->len[seq]) {
        atomic_fetch_add(&f->violations, 1);
        return -PI_ERR_RANGE;
    }
    f->len[seq] = n;
    return 0;
}

static int fake_reset(pi_engine_t *e)
{
    struct fake *f = (struct fake *)e;
    memset(f->len, 0, sizeof f->len);
    atomic_fetch_add(&f->resets, 1);
    if (atomic_load(&f->reset_fail)) return -PI_ERR_IO;
    atomic_store(&f->broken, atomic_load(&f->die_after));
    return 0;
}

static void fake_destroy(pi_engine_t *e) { (void)e; }

static int fake_broken(pi_engine_t *e) { return atomic_load(&((struct fake *)e)->broken); }

static const struct pi_engine_ops fake_ops = {fake_eval, fake_truncate, fake_reset, fake_destroy, NULL, fake_broken};

static void fake_init(struct fake *f)
{
    memset(f, 0, sizeof *f);
    f->base = (struct pi_engine){&fake_ops, NV, BATCH, NCTX, NSEQ};
    for (int s = 0; s < NSEQ; s++) f->hist[s][0] = 0x1234;
}

/* What a job produced. */
struct out {
    int32_t toks[NCTX];
    int n;
    char text[4096];
    size_t len;
    float lp[NCTX];
    int n_top[NCTX];
    int top_sorted, top_has_tok;
    _Atomic int ended;
    _Atomic int pieces; /* on_piece calls, for the waits of another thread */
    struct pi_sched_end end;
    _Atomic int stop_me; /* stopped() answers this */
    _Atomic int started; /* the order of its first piece among all jobs (1, 2, ...) */
};

static _Atomic int first_pieces;

static void on_piece(void *ctx, const struct pi_sched_piece *p)
{
    struct out *o = ctx;
    if (o->n < NCTX) {
        o->lp[o->n] = p->logprob;
        o->n_top[o->n] = p->n_top;
        o->toks[o->n++] = p->token;
    }
    for (int k = 1; k < p->n_top; k++)
        if (p->top_lp[k] > p->top_lp[k - 1]) o->top_sorted = 0;
    if (p->n_top > 0 && p->top_ids[0] == p->token) o->top_has_tok++;
    if (o->len + p->len < sizeof o->text) memcpy(o->text + o->len, p->text, p->len), o->len += p->len;
    if (atomic_fetch_add(&o->pieces, 1) == 0) atomic_store(&o->started, atomic_fetch_add(&first_pieces, 1) + 1);
}

static int on_stopped(void *ctx) { return atomic_load(&((struct out *)ctx)->stop_me); }

/* Wait (at most 10 s) until o has had k pieces. */
static int wait_pieces(struct out *o, int k)
{
    for (int i = 0; i < 20000 && atomic_load(&o->pieces) < k; i++) usleep(500);
    return atomic_load(&o->pieces) >= k;
}

static void on_end(void *ctx, const struct pi_sched_end *e)
{
    struct out *o = ctx;
    if (o->len + e->len < sizeof o->text) memcpy(o->text + o->len, e->text, e->len), o->len += e->len;
    o->text[o->len] = '\0';
    o->end = *e;
    o->end.text = NULL;
    atomic_store(&o->ended, 1);
}

static struct pi_sched_job job_of(const int32_t *toks, size_t n, int64_t n_predict, struct out *o)
{
    struct pi_sched_job j = {.tokens = toks,
                             .n_tokens = n,
                             .n_predict = n_predict,
                             .top_logprobs = -1,
                             .sink = {on_piece, on_end, NULL},
                             .ctx = o};
    pi_sample_params_default(&j.sample);
    j.sample.temperature = 0;
    memset(o, 0, sizeof *o);
    o->top_sorted = 1;
    return j;
}

struct runner {
    pi_sched_t *s;
    pthread_t th;
};

static void *run_main(void *arg)
{
    pi_sched_run(arg);
    return NULL;
}

static void wait_end(struct out *o)
{
    for (int i = 0; i < 20000 && !atomic_load(&o->ended); i++) usleep(500);
}

static pi_sched_t *start_opts(struct fake *f, struct runner *r, const struct pi_sched_opts *so)
{
    r->s = pi_sched_new(NULL, NV, so);
    pi_sched_set_engine(r->s, &f->base);
    pthread_create(&r->th, NULL, run_main, r->s);
    return r->s;
}

static pi_sched_t *start(struct fake *f, struct runner *r, int slots, int queue, int64_t max_tokens, int64_t timeout_ms)
{
    struct pi_sched_opts so = {
        .n_slots = slots, .queue_max = queue, .max_tokens = max_tokens, .timeout_ms = timeout_ms};
    return start_opts(f, r, &so);
}

static void stop(struct runner *r)
{
    pi_sched_stop(r->s, "test over");
    pthread_join(r->th, NULL);
    pi_sched_destroy(&r->s);
}

/* Wait (at most 10 s) until f has had n reset calls. */
static bool wait_resets(struct fake *f, int n)
{
    for (int i = 0; i < 20000 && atomic_load(&f->resets) < n; i++) usleep(500);
    return atomic_load(&f->resets) >= n;
}

static void test_health_words(void)
{
    struct pi_sched_stats st = {0};
    const char *loading = pi_sched_health(&st);
    st.ready = true;
    const char *ok = pi_sched_health(&st);
    st.ready = false;
    st.engine_errors = 1;
    const char *restarting = pi_sched_health(&st);
    st.failed = true;
    const char *failing = pi_sched_health(&st);
    st.gave_up = true;
    const char *failed = pi_sched_health(&st);
    tap_ok(!strcmp(loading, "loading") && !strcmp(ok, "ok") && !strcmp(restarting, "restarting") &&
               !strcmp(failing, "failing") && !strcmp(failed, "failed"),
           "health: %s, %s, %s, %s, %s", loading, ok, restarting, failing, failed);
    /* a stop after an engine error: nothing is restarted any more, so not "restarting" */
    st = (struct pi_sched_stats){.engine_errors = 1, .stopping = true};
    const char *stop_err = pi_sched_health(&st);
    st.failed = st.gave_up = true;
    const char *stop_failed = pi_sched_health(&st);
    tap_ok(!strcmp(stop_err, "stopping") && !strcmp(stop_failed, "stopping"),
           "health while stopping, after an engine error: %s; after giving up: %s", stop_err, stop_failed);
}

/* The health of a real scheduler stopped after an engine failure whose reset failed. */
static void test_health_stopping(const int32_t *prompt, int n)
{
    struct fake f;
    struct runner r;
    struct out a;
    fake_init(&f);
    pi_sched_t *s = start(&f, &r, NSEQ, 16, 0, 0);
    atomic_store(&f.reset_fail, 1);
    atomic_store(&f.fail_at, 1);
    struct pi_sched_job jb = job_of(prompt, (size_t)n, 4, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    pi_sched_stop(s, "test stop");
    struct pi_sched_stats st;
    pi_sched_stats(s, &st);
    tap_ok(a.end.finish == PI_SCHED_ERROR && st.engine_errors == 1 && !strcmp(pi_sched_health(&st), "stopping"),
           "a scheduler stopped after a failed restart says stopping (%s, %llu errors)", pi_sched_health(&st),
           (unsigned long long)st.engine_errors);
    stop(&r);
}

/* A worker that dies soon after each good start, while idle: the restarts back off (1 s doubling to a
 * minute) instead of respawning it at every idle tick, even with no restart cap. Counted, not timed:
 * after the third failure the back-off has doubled twice past its start. */
static void test_idle_backoff(void)
{
    struct fake f;
    struct runner r;
    fake_init(&f);
    struct pi_sched_opts so = {.n_slots = NSEQ, .queue_max = 16, .restart_max = 0, .restart_window_ms = 1000};
    pi_sched_t *s = start_opts(&f, &r, &so);
    atomic_store(&f.die_after, 1);
    atomic_store(&f.broken, 1);
    struct pi_sched_stats st;
    for (int i = 0; i < 20000; i++) { /* a hang guard of 10 s; the three failures take about 1.5 s */
        pi_sched_stats(s, &st);
        if (st.engine_errors >= 3) break;
        usleep(500);
    }
    const int resets = atomic_load(&f.resets);
    tap_ok(
        st.engine_errors >= 3 && st.backoff_ms >= 4000 && resets <= (int)st.engine_errors,
        "a worker dying after each start while idle: restarts back off (%llu failures, %d resets, next wait %lld ms)",
        (unsigned long long)st.engine_errors, resets, (long long)st.backoff_ms);
    stop(&r);
}

/* A worker that dies while nothing runs (the engine's broken flag) gets its pipeline reset at once,
 * not when the next request finds it gone; the next request then runs as it would have. */
static void test_idle_death(const int32_t *prompt, int n, const struct out *ref)
{
    struct fake f;
    struct runner r;
    struct out a;
    fake_init(&f);
    pi_sched_t *s = start(&f, &r, NSEQ, 16, 0, 0);
    atomic_store(&f.broken, 1);
    const bool reset = wait_resets(&f, 1);
    struct pi_sched_stats st;
    for (int i = 0; i < 20000; i++) { /* the reset's outcome is published just after it returns */
        pi_sched_stats(s, &st);
        if (st.restarts == 1) break;
        usleep(500);
    }
    tap_ok(reset && atomic_load(&f.broken) == 0 && st.engine_errors == 1 && st.restarts == 1 && st.ready &&
               strstr(st.last_error, "while it was idle") && !strcmp(pi_sched_health(&st), "ok"),
           "a worker dead while idle: the engine is reset without a request (%d reset, %llu restart, %s; last: %s)",
           atomic_load(&f.resets), (unsigned long long)st.restarts, pi_sched_health(&st), st.last_error);
    struct pi_sched_job jb = job_of(prompt, (size_t)n, ref->n, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    tap_ok(a.end.finish == PI_SCHED_LENGTH && a.n == ref->n &&
               memcmp(a.toks, ref->toks, sizeof(int32_t) * (size_t)a.n) == 0 && atomic_load(&f.resets) == 1,
           "the next request runs as it did alone, with no further reset");
    stop(&r);
}

/* The restart cap counts outages, not tries: resets that keep failing (the workers cannot start for a
 * while) are one restart, however many requests force one; an engine that starts and fails again makes
 * another. With restart_max 3 the fourth failure of a running engine is not restarted: the scheduler
 * gives up, no reset is tried again, every request ends with the reason. */
static void test_restart_cap(const int32_t *prompt, int n)
{
    struct fake f;
    struct runner r;
    struct out a;
    fake_init(&f);
    atomic_store(&f.reset_fail, 1);
    struct pi_sched_opts so = {.n_slots = NSEQ, .queue_max = 16, .restart_max = 3, .restart_window_ms = 3600 * 1000};
    pi_sched_t *s = start_opts(&f, &r, &so);
    atomic_store(&f.broken, 1); /* the first failure: the idle reset fails; each request then forces one */
    int errors = 0, k = 0;
    for (; k < 6; k++) {
        struct pi_sched_job jb = job_of(prompt, (size_t)n, 4, &a);
        pi_sched_submit(s, &jb, NULL);
        wait_end(&a);
        errors += a.end.finish == PI_SCHED_ERROR && !strstr(a.end.reason, "gave up");
    }
    struct pi_sched_stats st;
    pi_sched_stats(s, &st);
    tap_ok(errors == 6 && atomic_load(&f.resets) >= 6 && !st.gave_up && !strcmp(pi_sched_health(&st), "failing"),
           "6 failed resets of one outage are one restart: no giving up at restart_max 3 (%d resets, %s)",
           atomic_load(&f.resets), pi_sched_health(&st));
    atomic_store(&f.reset_fail, 0);
    struct pi_sched_job jb = job_of(prompt, (size_t)n, 4, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    tap_ok(a.end.finish == PI_SCHED_LENGTH && a.n == 4, "... the engine starts again and a request runs (%s: %s)",
           pi_sched_finish_name(a.end.finish), a.end.reason);
    /* two more failures of the running engine, each restarted: the request reads its prompt again */
    int ran = 0;
    for (int i = 0; i < 2; i++) {
        atomic_store(&f.fail_at, (int)atomic_load(&f.steps) + 1);
        jb = job_of(prompt, (size_t)n, 4, &a);
        pi_sched_submit(s, &jb, NULL);
        wait_end(&a);
        ran += a.end.finish == PI_SCHED_LENGTH && a.n == 4;
    }
    const int resets = atomic_load(&f.resets);
    pi_sched_stats(s, &st);
    tap_ok(ran == 2 && st.restarts == 3 && !st.gave_up, "2 more engine failures, restarted: restarts 3 (%llu), %d ran",
           (unsigned long long)st.restarts, ran);
    atomic_store(&f.fail_at, (int)atomic_load(&f.steps) + 1); /* the fourth: past the cap */
    jb = job_of(prompt, (size_t)n, 4, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    pi_sched_stats(s, &st);
    tap_ok(a.end.finish == PI_SCHED_ERROR && strstr(a.end.reason, "gave up") && atomic_load(&f.resets) == resets &&
               st.gave_up && st.failed && !st.ready && !strcmp(pi_sched_health(&st), "failed"),
           "the fourth failure of a running engine is not restarted: the scheduler gives up (%d resets; %s; %s)",
           atomic_load(&f.resets), a.end.reason, pi_sched_health(&st));
    jb = job_of(prompt, (size_t)n, 4, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    tap_ok(a.end.finish == PI_SCHED_ERROR && strstr(a.end.reason, "gave up") && atomic_load(&f.resets) == resets,
           "after giving up a request ends at once with the reason and no reset is tried (%d): %s",
           atomic_load(&f.resets), a.end.reason);
    stop(&r);

    /* restart_max 0: no cap, however many restarts fail */
    fake_init(&f);
    atomic_store(&f.reset_fail, 1);
    so.restart_max = 0;
    s = start_opts(&f, &r, &so);
    atomic_store(&f.broken, 1);
    errors = 0;
    for (k = 0; k < 6; k++) {
        jb = job_of(prompt, (size_t)n, 4, &a);
        pi_sched_submit(s, &jb, NULL);
        wait_end(&a);
        errors += a.end.finish == PI_SCHED_ERROR && !strstr(a.end.reason, "gave up");
    }
    pi_sched_stats(s, &st);
    tap_ok(errors == 6 && atomic_load(&f.resets) >= 6 && !st.gave_up && !strcmp(pi_sched_health(&st), "failing"),
           "restart_max 0: %d failed restarts and no giving up (%s)", atomic_load(&f.resets), pi_sched_health(&st));
    atomic_store(&f.reset_fail, 0);
    jb = job_of(prompt, (size_t)n, 4, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    tap_ok(a.end.finish == PI_SCHED_LENGTH && a.n == 4, "... and once the engine starts again, requests run (%s)",
           pi_sched_finish_name(a.end.finish));
    stop(&r);
}

int main(void)
{
    uint64_t seed = (uint64_t)pi_clock_ns();
    tap_diag("seed %llu", (unsigned long long)seed);
    srand((unsigned)seed);
    struct fake f;
    struct runner r;
    enum { NJ = 24 };
    static int32_t prompts[NJ][64];
    int plen[NJ], npred[NJ];
    for (int j = 0; j < NJ; j++) {
        plen[j] = 1 + rand() % 40;
        npred[j] = 1 + rand() % 30;
        for (int k = 0; k < plen[j]; k++) prompts[j][k] = rand() % (NV - 1);
    }
    /* alone: one at a time */
    static struct out alone[NJ], together[NJ];
    fake_init(&f);
    pi_sched_t *s = start(&f, &r, 1, 64, 0, 0);
    for (int j = 0; j < NJ; j++) {
        struct pi_sched_job jb = job_of(prompts[j], (size_t)plen[j], npred[j], &alone[j]);
        uint64_t id = 0;
        pi_sched_submit(s, &jb, &id);
        wait_end(&alone[j]);
    }
    stop(&r);
    int good = 1;
    for (int j = 0; j < NJ; j++) good &= alone[j].end.finish == PI_SCHED_LENGTH && alone[j].n == npred[j];
    tap_ok(good && atomic_load(&f.violations) == 0, "%d jobs alone: each generated its n_predict tokens, no bad batch",
           NJ);

    /* together: all submitted at once over 4 slots */
    fake_init(&f);
    s = start(&f, &r, NSEQ, 64, 0, 0);
    int took = 0;
    for (int j = 0; j < NJ; j++) {
        struct pi_sched_job jb = job_of(prompts[j], (size_t)plen[j], npred[j], &together[j]);
        took += pi_sched_submit(s, &jb, NULL) == 0;
    }
    tap_is_int(took, NJ, "all jobs accepted (4 slots, queue 64)");
    for (int j = 0; j < NJ; j++) wait_end(&together[j]);
    int same = 1;
    for (int j = 0; j < NJ; j++)
        same &= together[j].n == alone[j].n &&
                memcmp(together[j].toks, alone[j].toks, sizeof(int32_t) * (size_t)alone[j].n) == 0 &&
                strcmp(together[j].text, alone[j].text) == 0;
    tap_ok(same, "the same %d jobs in 4 slots at once: every job's tokens and text equal its run alone", NJ);
    tap_ok(atomic_load(&f.violations) == 0, "no batch broke the engine's rules");
    tap_ok(atomic_load(&f.multi) > 0, "steps carried several sequences (%ld of %ld)", (long)atomic_load(&f.multi),
           (long)atomic_load(&f.steps));
    struct pi_sched_stats st;
    pi_sched_stats(s, &st);
    tap_is_int((long long)st.requests[PI_SCHED_LENGTH], NJ, "stats: every job ended by length");
    tap_is_int(st.running + st.waiting, 0, "stats: nothing running or waiting");

    stop(&r);

    /* more generating slots than a batch holds (batches of 3 tokens, 4 slots): they take turns */
    fake_init(&f);
    f.base.max_batch = 3;
    s = start(&f, &r, NSEQ, 64, 0, 0);
    for (int j = 0; j < 8; j++) {
        struct pi_sched_job jb = job_of(prompts[j], (size_t)plen[j], npred[j], &together[j]);
        pi_sched_submit(s, &jb, NULL);
    }
    for (int j = 0; j < 8; j++) wait_end(&together[j]);
    same = 1;
    for (int j = 0; j < 8; j++)
        same &= together[j].n == alone[j].n &&
                memcmp(together[j].toks, alone[j].toks, sizeof(int32_t) * (size_t)alone[j].n) == 0;
    tap_ok(same && atomic_load(&f.violations) == 0,
           "batches of 3 tokens for 4 slots: every job ends and equals its run alone");
    stop(&r);
    fake_init(&f);
    s = start(&f, &r, NSEQ, 64, 0, 0);

    /* prefix reuse: a prompt extending an ended job's prompt and answer evaluates only the new part */
    struct out a, b;
    int32_t p2[128];
    memcpy(p2, prompts[0], sizeof(int32_t) * (size_t)plen[0]);
    struct pi_sched_job jb = job_of(prompts[0], (size_t)plen[0], 5, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    int n2 = plen[0];
    for (int k = 0; k < a.n - 1; k++) p2[n2++] = a.toks[k]; /* the answer minus its last (unevaluated) token */
    p2[n2++] = 7;
    p2[n2++] = 9;
    long before = atomic_load(&f.tokens);
    jb = job_of(p2, (size_t)n2, 3, &b);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&b);
    long evaluated = atomic_load(&f.tokens) - before;
    tap_ok(b.end.n_cached == n2 - 2 && evaluated == 2 + 2,
           "a follow-up turn: %d of %d prompt tokens cached, %ld evaluated", b.end.n_cached, n2, evaluated);
    /* and its tokens equal a fresh run of the same prompt */
    struct fake f2;
    struct runner r2;
    fake_init(&f2);
    pi_sched_t *s2 = start(&f2, &r2, 1, 4, 0, 0);
    struct out c;
    jb = job_of(p2, (size_t)n2, 3, &c);
    pi_sched_submit(s2, &jb, NULL);
    wait_end(&c);
    stop(&r2);
    tap_ok(c.n == b.n && memcmp(c.toks, b.toks, sizeof(int32_t) * (size_t)c.n) == 0,
           "the cached run equals a fresh one");

    /* logprobs */
    jb = job_of(prompts[1], (size_t)plen[1], 6, &a);
    jb.top_logprobs = 5;
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    int lp_ok = a.n == 6 && a.top_sorted && a.top_has_tok == 6;
    for (int k = 0; k < a.n; k++) lp_ok &= a.n_top[k] == 5 && a.lp[k] <= 0;
    tap_ok(lp_ok, "logprobs: 5 alternatives, sorted, greedy token first, log-probabilities <= 0");

    /* stop string: the text of the fake tokenizer-less run is the ids; stop on the 3rd token's text */
    char stop_s[32];
    snprintf(stop_s, sizeof stop_s, " %d", alone[2].toks[2]);
    const char *stops[] = {stop_s};
    jb = job_of(prompts[2], (size_t)plen[2], npred[2], &a);
    jb.stops = stops;
    jb.n_stops = 1;
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    const char *at = strstr(alone[2].text, stop_s);
    if (npred[2] >= 3 && at) {
        tap_ok(a.end.finish == PI_SCHED_STOP && a.len == (size_t)(at - alone[2].text) &&
                   memcmp(a.text, alone[2].text, a.len) == 0,
               "stop string \"%s\": the text ends before it (%s)", stop_s, a.text);
    } else {
        tap_skip(1, "the reference is too short for a stop string");
    }

    /* cancel a long job (slow steps, so that it is still running) */
    atomic_store(&f.delay_us, 1000);
    jb = job_of(prompts[3], (size_t)plen[3], NCTX, &a);
    uint64_t id = 0;
    pi_sched_submit(s, &jb, &id);
    wait_pieces(&a, 1);
    pi_sched_cancel(s, id);
    wait_end(&a);
    tap_ok(a.end.finish == PI_SCHED_CANCELLED && a.n < NCTX, "cancel: ended CANCELLED after %d tokens", a.n);
    pi_sched_cancel(s, id); /* again, after its end: nothing */
    atomic_store(&f.delay_us, 0);
    stop(&r);

    /* the queue: 1 slot, queue 2; a job of the whole context holds the slot */
    fake_init(&f);
    atomic_store(&f.delay_us, 2000); /* the first job holds its slot for about half a second */
    s = start(&f, &r, 1, 2, 0, 0);
    struct out q[5];
    int refused = 0, accepted = 0;
    for (int j = 0; j < 5; j++) {
        jb = job_of(prompts[j], (size_t)plen[j], NCTX, &q[j]);
        int rc = pi_sched_submit(s, &jb, NULL);
        if (rc == -PI_ERR_RANGE) refused++;
        else if (rc == 0) accepted++;
        if (j == 0) wait_pieces(&q[0], 1);
    }
    tap_ok(accepted == 3 && refused == 2, "1 slot + queue 2: 3 accepted, 2 refused (got %d, %d)", accepted, refused);
    pi_sched_stop(s, "stopping now");
    pthread_join(r.th, NULL);
    int all_cancelled = 1;
    for (int j = 0; j < 3; j++) all_cancelled &= q[j].ended && q[j].end.finish == PI_SCHED_CANCELLED;
    tap_ok(all_cancelled, "stop: the running and the queued jobs end CANCELLED");
    jb = job_of(prompts[0], 1, 1, &a);
    tap_is_int(pi_sched_submit(s, &jb, NULL), -PI_ERR_PEER, "a stopped scheduler refuses jobs");
    pi_sched_destroy(&s);

    /* the server's max_tokens and a deadline */
    fake_init(&f);
    s = start(&f, &r, 2, 8, 7, 0);
    jb = job_of(prompts[4], (size_t)plen[4], -1, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    tap_ok(a.end.finish == PI_SCHED_LENGTH && a.n == 7, "max_tokens 7 caps a request without n_predict (%d)", a.n);
    stop(&r);
    fake_init(&f);
    atomic_store(&f.delay_us, 2000); /* 2 ms a step: a job of the whole context takes about half a second */
    s = start(&f, &r, 1, 8, 0, 50);
    jb = job_of(prompts[6], (size_t)plen[6], -1, &a);
    struct pi_sched_job jb2 = job_of(prompts[7], (size_t)plen[7], 3, &b);
    pi_sched_submit(s, &jb, NULL);
    usleep(120 * 1000);
    pi_sched_submit(s, &jb2, NULL);
    wait_end(&a);
    wait_end(&b);
    tap_ok(a.end.finish == PI_SCHED_TIMEOUT && a.n < 100 && b.end.finish == PI_SCHED_LENGTH,
           "deadline 50 ms: a long job ends by %s after %d tokens; the next one runs (%s)",
           pi_sched_finish_name(a.end.finish), a.n, pi_sched_finish_name(b.end.finish));
    stop(&r);

    /* an engine failure mid-run */
    fake_init(&f);
    atomic_store(&f.delay_us, 500);
    s = start(&f, &r, NSEQ, 16, 0, 0);
    for (int j = 0; j < 4; j++) {
        jb = job_of(prompts[j], (size_t)plen[j], 200, &together[j]);
        pi_sched_submit(s, &jb, NULL);
    }
    int all_began = 1;
    for (int j = 0; j < 4; j++) all_began &= wait_pieces(&together[j], 1);
    atomic_store(&f.fail_at, (int)atomic_load(&f.steps) + 2); /* every job has sent tokens by then */
    for (int j = 0; j < 4; j++) wait_end(&together[j]);
    atomic_store(&f.delay_us, 0);
    int errs = 0;
    for (int j = 0; j < 4; j++)
        errs += together[j].end.finish == PI_SCHED_ERROR && together[j].end.status == -PI_ERR_PEER;
    tap_ok(all_began && errs == 4 && atomic_load(&f.resets) == 1,
           "a failed step: the %d running jobs that sent tokens end with the engine's error, %d reset(s)", errs,
           atomic_load(&f.resets));
    jb = job_of(prompts[8], (size_t)plen[8], npred[8], &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    tap_ok(a.end.finish == PI_SCHED_LENGTH && a.n == alone[8].n &&
               memcmp(a.toks, alone[8].toks, sizeof(int32_t) * (size_t)a.n) == 0,
           "the next job runs and equals its run alone");
    stop(&r);

    /* a failure before any job generated a token (a worker died while the server was idle): the jobs
     * read their prompts again after the reset and end as if nothing happened */
    fake_init(&f);
    s = start(&f, &r, NSEQ, 16, 0, 0);
    atomic_store(&f.fail_at, 1);
    for (int j = 0; j < 4; j++) {
        jb = job_of(prompts[j], (size_t)plen[j], npred[j], &together[j]);
        pi_sched_submit(s, &jb, NULL);
    }
    for (int j = 0; j < 4; j++) wait_end(&together[j]);
    same = 1;
    for (int j = 0; j < 4; j++)
        same &= together[j].end.finish == PI_SCHED_LENGTH && together[j].n == alone[j].n &&
                memcmp(together[j].toks, alone[j].toks, sizeof(int32_t) * (size_t)alone[j].n) == 0;
    tap_ok(same && atomic_load(&f.resets) == 1,
           "a failed first step: the jobs start again after the reset and equal their runs alone");
    stop(&r);

    /* the queue: jobs cancelled behind the head leave it at once (1 slot held by a long job) */
    fake_init(&f);
    atomic_store(&f.delay_us, 1000);
    s = start(&f, &r, 1, 2, 0, 0);
    struct out qa, qb, qc, qd;
    jb = job_of(prompts[0], (size_t)plen[0], NCTX, &qa);
    pi_sched_submit(s, &jb, NULL);
    wait_pieces(&qa, 1);
    jb = job_of(prompts[1], (size_t)plen[1], 2, &qb);
    pi_sched_submit(s, &jb, NULL);
    uint64_t idc = 0;
    jb = job_of(prompts[2], (size_t)plen[2], 2, &qc);
    pi_sched_submit(s, &jb, &idc);
    pi_sched_cancel(s, idc); /* behind qb */
    for (int i = 0; i < 2000 && !atomic_load(&qc.ended); i++) usleep(500);
    tap_ok(atomic_load(&qc.ended) && qc.end.finish == PI_SCHED_CANCELLED && !atomic_load(&qa.ended),
           "a job cancelled behind the head ends while the head still waits");
    jb = job_of(prompts[3], (size_t)plen[3], 2, &qd);
    jb.sink.stopped = on_stopped;
    tap_is_int(pi_sched_submit(s, &jb, NULL), 0, "its place in the queue is free again");
    atomic_store(&qd.stop_me, 1); /* its client went away while it waits */
    for (int i = 0; i < 2000 && !atomic_load(&qd.ended); i++) usleep(500);
    tap_ok(atomic_load(&qd.ended) && qd.end.finish == PI_SCHED_CANCELLED && qd.n == 0,
           "a waiting job whose stopped() says so ends without running");
    stop(&r);

    /* fairness: client 1 holds both slots and has two more waiting; client 2's job, queued after them,
     * gets the next free slot */
    fake_init(&f);
    atomic_store(&f.delay_us, 500);
    s = start(&f, &r, 2, 8, 0, 0);
    struct out fa[4], fb;
    for (int j = 0; j < 4; j++) {
        jb = job_of(prompts[j], (size_t)plen[j], 20 + 5 * j, &fa[j]);
        jb.client = 1;
        pi_sched_submit(s, &jb, NULL);
        if (j == 1) wait_pieces(&fa[1], 1);
    }
    jb = job_of(prompts[5], (size_t)plen[5], 5, &fb);
    jb.client = 2;
    pi_sched_submit(s, &jb, NULL);
    for (int j = 0; j < 4; j++) wait_end(&fa[j]);
    wait_end(&fb);
    tap_ok(fb.started > 0 && fb.started < fa[2].started && fb.started < fa[3].started,
           "fairness: another client's job queued last starts before the first client's waiting ones (%d < %d, %d)",
           (int)fb.started, (int)fa[2].started, (int)fa[3].started);
    stop(&r);

    /* the queue's reserve: 1 slot held by a long job, a queue of 8 whose last 4 places take only a client
     * with fewer than 4 waiting; client 1 gets 4 places and is refused, client 2 then gets the reserve */
    {
        fake_init(&f);
        atomic_store(&f.delay_us, 1000);
        struct pi_sched_opts so = {.n_slots = 1, .queue_max = 8, .queue_reserve = 4};
        r.s = s = pi_sched_new(NULL, NV, &so);
        pi_sched_set_engine(s, &f.base);
        pthread_create(&r.th, NULL, run_main, s);
        struct out rh, rq[12];
        jb = job_of(prompts[0], (size_t)plen[0], NCTX, &rh);
        jb.client = 1;
        pi_sched_submit(s, &jb, NULL);
        wait_pieces(&rh, 1); /* the slot is taken */
        int took1 = 0, took2 = 0, took3 = 0;
        for (int j = 0; j < 6; j++) {
            jb = job_of(prompts[1], (size_t)plen[1], 1, &rq[j]);
            jb.client = 1;
            took1 += pi_sched_submit(s, &jb, NULL) == 0;
        }
        for (int j = 6; j < 11; j++) {
            jb = job_of(prompts[2], (size_t)plen[2], 1, &rq[j]);
            jb.client = 2;
            took2 += pi_sched_submit(s, &jb, NULL) == 0;
        }
        jb = job_of(prompts[3], (size_t)plen[3], 1, &rq[11]);
        jb.client = 3;
        took3 = pi_sched_submit(s, &jb, NULL) == 0;
        tap_ok(took1 == 4 && took2 == 4 && !took3,
               "queue reserve: one client holds 4 of 8 places (%d), another the reserved 4 (%d), then it is full (%d)",
               took1, took2, took3);
        stop(&r);
    }

    /* n_predict 0: the prompt is read, nothing generated */
    fake_init(&f);
    s = start(&f, &r, 1, 2, 0, 0);
    long t0 = atomic_load(&f.tokens);
    jb = job_of(prompts[4], (size_t)plen[4], 0, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    tap_ok(a.end.finish == PI_SCHED_LENGTH && a.n == 0 && atomic_load(&f.tokens) - t0 == plen[4],
           "n_predict 0: the prompt's %d tokens evaluated, none generated (%d)", plen[4], a.n);
    stop(&r);

    /* bad jobs */
    fake_init(&f);
    s = start(&f, &r, 1, 4, 0, 0);
    int32_t bad_tok[] = {NV};
    jb = job_of(bad_tok, 1, 1, &a);
    tap_is_int(pi_sched_submit(s, &jb, NULL), -PI_ERR_INVAL, "a token outside the vocabulary is refused");
    jb = job_of(prompts[0], 0, 1, &a);
    tap_is_int(pi_sched_submit(s, &jb, NULL), -PI_ERR_INVAL, "an empty prompt is refused");
    jb = job_of(prompts[0], 3, 1, &a);
    jb.top_logprobs = PI_SCHED_MAX_TOP + 1;
    tap_is_int(pi_sched_submit(s, &jb, NULL), -PI_ERR_INVAL, "too many logprobs alternatives are refused");
    static int32_t longp[NCTX + 5];
    jb = job_of(longp, NCTX + 1, 1, &a);
    pi_sched_submit(s, &jb, NULL);
    wait_end(&a);
    tap_ok(a.end.finish == PI_SCHED_ERROR && a.end.status == -PI_ERR_RANGE,
           "a prompt longer than the context: error (%s)", a.end.reason);
    stop(&r);

    test_health_words();
    test_health_stopping(prompts[10], plen[10]);
    test_idle_backoff();
    test_idle_death(prompts[9], plen[9], &alone[9]);
    test_restart_cap(prompts[10], plen[10]);
    return tap_done();
}
