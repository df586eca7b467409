/*
 * tests/unit/test-step.c - the step channel between the coordinator and the GPU worker (ipc/step.h),
 * through its public header:
 *   - pi_step_new refuses sizes outside its bounds (max_tokens, n_vocab, n_seq); pi_step_attach checks
 *     the segment's magic, version and sizes, closes the fd on a failure after the mapping and leaves it to the caller
 *     when the mapping itself failed (a segment of another kind);
 *   - a real round trip across processes: a forked "GPU worker" attaches the inherited memfd and
 *     answers a few hundred version-2 batches (several sequences interleaved, random row lists) with
 *     fresh random sizes and ids; every field it saw and every logits row it wrote is checked by the
 *     coordinator side;
 *   - a hostile coordinator (in one process, the worker side on a thread): the arrays are validated on
 *     private copies; an id >= n_vocab, a negative id, an empty batch, n_rows > n_tokens, a sequence id
 *     >= n_seq or negative, a gap or a step back in a sequence's positions, a negative position, a row
 *     list that is not increasing or reaches past the batch, a TRUNCATE of a sequence >= n_seq, an
 *     unknown command and a skipped request id are each rejected and answered (one error response, the
 *     worker going on), and a status that is no pi_err is refused by the coordinator side;
 *     pi_step_batch_check gives the sender the same verdicts as its own -PI_ERR_INVAL / -PI_ERR_RANGE;
 *   - bounded waits: no worker -> -PI_ERR_TIMEOUT within the bound, pi_step_abort ends a pending call
 *     at once and every later one until pi_step_clear_abort, out-of-range calls are refused before
 *     anything is written.
 * The random inputs change every run; the seed is printed and `test-step SEED` replays it.
 */
#include "config.h"
#include "ipc/futex.h"
#include "ipc/shm.h"
#include "ipc/step.h"
#include "lib/common.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MS (INT64_C(1000000))
#define ST_VOCAB 100u
#define ST_MAX 8u
#define ST_SEQ 3u

static uint64_t rng_state;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

static bool fd_open(int fd) { return fcntl(fd, F_GETFD) >= 0 || errno != EBADF; }

/* The control line of a segment as the coordinator's own mapping sees it (a second view of its fd). */
static struct pi_step_ctl *ctl_of(pi_shm_t *view) { return pi_shm_section(view, 0, NULL); }

/* ---- creation and attachment ---- */

static void test_bounds(void)
{
    pi_step_t *s;
    tap_ok(!(s = pi_step_new(0, 10, 1)), "max_tokens 0 refused");
    tap_ok(!(s = pi_step_new(PI_STEP_MAX_TOKENS + 1, 10, 1)), "max_tokens PI_STEP_MAX_TOKENS+1 refused");
    tap_ok(!(s = pi_step_new(4, 0, 1)), "n_vocab 0 refused");
    tap_ok(!(s = pi_step_new(4, PI_STEP_MAX_VOCAB + 1, 1)), "n_vocab PI_STEP_MAX_VOCAB+1 refused");
    tap_ok(!(s = pi_step_new(4, 10, 0)), "n_seq 0 refused");
    tap_ok(!(s = pi_step_new(4, 10, PI_STEP_MAX_SEQ + 1)), "n_seq PI_STEP_MAX_SEQ+1 refused");
    const uint32_t mt = 1 + rnd() % 64, nv = 1 + rnd() % 5000, nq = 1 + rnd() % 300;
    s = pi_step_new(mt, nv, nq);
    tap_ok(s && pi_step_max_tokens(s) == mt && pi_step_n_vocab(s) == nv && pi_step_n_seq(s) == nq &&
               pi_step_logits(s) && pi_step_fd(s) >= 0,
           "pi_step_new(%u, %u, %u) gives its sizes back", mt, nv, nq);
    pi_step_destroy(&s);
    tap_ok(s == NULL, "pi_step_destroy nulls the pointer");
    pi_step_destroy(&s); /* accepts NULL */
    pi_step_destroy(NULL);
}

/* Corrupt one field of line 0, attach a dup of the fd, put the field back. */
static void attach_corrupt(pi_step_t *c, pi_shm_t *view, uint32_t *field, uint32_t value, int want, const char *what)
{
    const uint32_t saved = *field;
    *field = value;
    pi_step_t *w = NULL;
    int fd = dup(pi_step_fd(c));
    int rc = pi_step_attach(fd, &w);
    tap_ok(rc == want && w == NULL && !fd_open(fd), "attach with %s: %s, fd closed (%d)", what, pi_err_str(rc), rc);
    if (fd_open(fd)) close(fd);
    *field = saved;
}

static void test_attach(void)
{
    const uint32_t mt = 2 + rnd() % 30, nv = 2 + rnd() % 3000, nq = 1 + rnd() % 16;
    pi_step_t *c = pi_step_new(mt, nv, nq), *w = NULL;
    pi_shm_t *view = NULL;
    if (!c || pi_shm_map_fd(dup(pi_step_fd(c)), PI_STEP_SHM_KIND, &view) != 0) tap_bail("a step segment and its view");
    struct pi_step_ctl *ctl = ctl_of(view);
    tap_ok(ctl->magic == PI_STEP_MAGIC && ctl->version == PI_STEP_VERSION && ctl->max_tokens == mt &&
               ctl->n_vocab == nv && ctl->n_seq == nq,
           "line 0 carries magic, version and sizes");

    int fd = dup(pi_step_fd(c));
    tap_ok(pi_step_attach(fd, &w) == 0 && w && pi_step_max_tokens(w) == mt && pi_step_n_vocab(w) == nv &&
               pi_step_n_seq(w) == nq,
           "attach: the worker reads max_tokens %u, n_vocab %u, n_seq %u", mt, nv, nq);
    pi_step_destroy(&w);
    tap_ok(!fd_open(fd), "the attached handle owned its fd and closed it");

    attach_corrupt(c, view, &ctl->magic, PI_STEP_MAGIC ^ 1u, -PI_ERR_FORMAT, "a bad magic");
    attach_corrupt(c, view, &ctl->version, PI_STEP_VERSION + 1, -PI_ERR_UNSUPPORTED, "another version");
    attach_corrupt(c, view, &ctl->max_tokens, 0, -PI_ERR_RANGE, "max_tokens 0");
    attach_corrupt(c, view, &ctl->n_vocab, PI_STEP_MAX_VOCAB + 1, -PI_ERR_RANGE, "n_vocab over the bound");
    attach_corrupt(c, view, &ctl->n_seq, 0, -PI_ERR_RANGE, "n_seq 0");
    attach_corrupt(c, view, &ctl->n_seq, PI_STEP_MAX_SEQ + 1, -PI_ERR_RANGE, "n_seq over the bound");
    /* within the bounds, but more than the sections hold: the segment would be read past its end */
    attach_corrupt(c, view, &ctl->n_vocab, nv + 64, -PI_ERR_RANGE, "n_vocab larger than the logits section");
    attach_corrupt(c, view, &ctl->max_tokens, mt + 16, -PI_ERR_RANGE, "max_tokens larger than the token section");

    /* A segment of another kind fails in pi_shm_map_fd: the fd is still the caller's. */
    uint64_t sz[3] = {sizeof(struct pi_step_ctl), 64, 64};
    pi_shm_t *other = pi_shm_new("pinfer-test", PI_SHM_KIND_TEST, sz, 3);
    if (!other) tap_bail("pi_shm_new");
    fd = dup(pi_shm_fd(other));
    int rc = pi_step_attach(fd, &w);
    tap_ok(rc != 0 && w == NULL && fd_open(fd), "a segment of another kind is refused (%d) and the fd left open", rc);
    close(fd);
    pi_shm_destroy(&other);
    pi_shm_destroy(&view);
    pi_step_destroy(&c);
}

/* ---- a round trip across processes ---- */

/* What the worker writes into logits row k of a request (batch row r): a function of everything it
 * was asked about that row, so that the coordinator can tell a field lost or mixed up on the way. */
static float expect_logit(uint32_t id, int32_t seq, int32_t pos, int32_t tok, uint32_t r, uint32_t k, uint32_t j)
{
    return (float)((id * 7u + (uint32_t)seq * 3u + (uint32_t)pos + r * 11u + k) % 1000u) + (float)tok * 0.5f +
           (float)j * 1e-3f;
}

/* The forked worker: serve until STOP. Exit status 0, or the number of the first broken check. */
static int rt_worker(int fd)
{
    alarm(30);
    pi_step_t *w = NULL;
    if (pi_step_attach(fd, &w) != 0) return 10;
    const uint32_t V = pi_step_n_vocab(w);
    for (;;) {
        struct pi_step_req r;
        int rc = pi_step_wait(w, 20000 * MS, &r);
        if (rc != 0) return 11;
        if (r.cmd == PI_STEP_STOP) {
            pi_step_respond(w, r.id, 0);
            break;
        }
        if (r.cmd == PI_STEP_TRUNCATE) {
            /* answer with what it asked for, as a recognisable error-free status */
            pi_step_respond(w, r.id, r.seq == 1 && r.keep == 5 ? 0 : -PI_ERR_RANGE);
            continue;
        }
        if (r.cmd == PI_STEP_RESET) {
            pi_step_respond(w, r.id, -PI_ERR_NOTFOUND);
            continue;
        }
        if (r.cmd != PI_STEP_EVAL) return 12;
        float *lg = pi_step_logits(w);
        for (uint32_t k = 0; k < r.n_rows; k++) {
            const int32_t row = r.rows[k];
            for (uint32_t j = 0; j < V; j++)
                lg[(size_t)k * V + j] = expect_logit(r.id, r.seqs[row], r.pos[row], r.tokens[row], (uint32_t)row, k, j);
        }
        /* a worker status is part of the protocol: batches whose first row is of an odd sequence
         * answer -PI_ERR_DEVICE */
        pi_step_respond(w, r.id, r.seqs[0] % 2 ? -PI_ERR_DEVICE : 0);
    }
    pi_step_destroy(&w);
    return 0;
}

/* A random well-formed batch of n rows over nq sequences: each sequence from a random start at
 * consecutive positions, interleaved at random; a random increasing row list. */
static void random_batch(uint32_t n, uint32_t nv, uint32_t nq, int32_t *tok, int32_t *seq, int32_t *pos, int32_t *rows,
                         uint32_t *n_rows)
{
    int32_t next[64];
    for (uint32_t q = 0; q < nq; q++) next[q] = (int32_t)(rnd() % 10000);
    *n_rows = 0;
    for (uint32_t i = 0; i < n; i++) {
        tok[i] = (int32_t)(rnd() % nv);
        seq[i] = (int32_t)(rnd() % nq);
        pos[i] = next[seq[i]]++;
        if (rnd() % 3 == 0) rows[(*n_rows)++] = (int32_t)i;
    }
}

static void test_round_trip(void)
{
    const uint32_t mt = 4 + rnd() % 60, nv = 16 + rnd() % 2000, nq = 1 + rnd() % 64;
    pi_step_t *c = pi_step_new(mt, nv, nq);
    if (!c) tap_bail("pi_step_new");
    const int fd = dup(pi_step_fd(c));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) tap_bail("fork");
    if (pid == 0) _exit(rt_worker(fd));
    close(fd);

    enum { N = 300 };
    int32_t toks[PI_STEP_MAX_TOKENS], seqs[PI_STEP_MAX_TOKENS], pos[PI_STEP_MAX_TOKENS], rows[PI_STEP_MAX_TOKENS];
    int bad_status = 0, bad_rows = 0, evals = 0;
    for (uint32_t id = 1; id <= N; id++) {
        const uint32_t n = 1 + rnd() % mt;
        uint32_t n_rows;
        random_batch(n, nv, nq, toks, seqs, pos, rows, &n_rows);
        const struct pi_step_batch b = {toks, seqs, pos, n, n_rows ? rows : NULL, n_rows};
        int rc = pi_step_eval(c, &b, 20000 * MS);
        evals++;
        if (rc != (seqs[0] % 2 ? -PI_ERR_DEVICE : 0)) {
            if (bad_status++ < 3) tap_diag("request %u: status %d", id, rc);
            continue;
        }
        const float *lg = pi_step_logits(c);
        for (uint32_t k = 0; k < n_rows; k++) {
            const int32_t r = rows[k];
            for (uint32_t j = 0; j < nv; j += 1 + j / 7) /* every row, a spread of columns */
                if (lg[(size_t)k * nv + j] != expect_logit(id, seqs[r], pos[r], toks[r], (uint32_t)r, k, j)) {
                    if (bad_rows++ < 3) tap_diag("request %u: row %u column %u wrong", id, k, j);
                    break;
                }
        }
    }
    tap_ok(bad_status == 0,
           "%d batches of random sizes (max %u, vocab %u, %u sequences) each answered with the worker's status", evals,
           mt, nv, nq);
    tap_ok(bad_rows == 0,
           "every logits row the worker wrote reaches the coordinator, matching the row it was asked for");
    if (nq > 1) {
        tap_is_int(pi_step_call(c, PI_STEP_TRUNCATE, 1, 5, 20000 * MS), 0,
                   "TRUNCATE (seq 1, keep 5) reaches the worker");
        tap_is_int(pi_step_call(c, PI_STEP_TRUNCATE, 1, 6, 20000 * MS), -PI_ERR_RANGE,
                   "TRUNCATE's keep is what the worker saw");
    } else {
        tap_is_int(pi_step_call(c, PI_STEP_TRUNCATE, 0, 5, 20000 * MS), -PI_ERR_RANGE,
                   "TRUNCATE's seq is what the worker saw");
        tap_ok(1, "(one sequence: no second TRUNCATE)");
    }
    tap_is_int(pi_step_call(c, PI_STEP_RESET, 0, 0, 20000 * MS), -PI_ERR_NOTFOUND, "RESET reaches the worker");
    tap_is_int(pi_step_call(c, PI_STEP_STOP, 0, 0, 20000 * MS), 0, "STOP answered");
    int st = 0;
    waitpid(pid, &st, 0);
    tap_ok(WIFEXITED(st) && WEXITSTATUS(st) == 0,
           "the forked worker attached the inherited memfd and ended cleanly (%d)",
           WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
    pi_step_destroy(&c);
}

/* ---- a hostile coordinator ---- */

enum { ST_REQ = 32 };

struct st_worker {
    pi_step_t *w;
    int32_t *seg_tokens;     /* the segment's token section, as a hostile coordinator would write it */
    int n;                   /* requests to serve */
    int rc[ST_REQ];          /* pi_step_wait's result per request */
    int32_t seen[ST_REQ][3]; /* req.tokens[0..2] after the segment was overwritten */
    int32_t answer[ST_REQ];  /* the status to answer with */
};

static void *st_worker_main(void *arg)
{
    struct st_worker *sw = arg;
    for (int k = 0; k < sw->n; k++) {
        struct pi_step_req r;
        int rc;
        do rc = pi_step_wait(sw->w, 100 * MS, &r);
        while (rc == -PI_ERR_TIMEOUT);
        sw->rc[k] = rc;
        if (rc == 0 && r.cmd == PI_STEP_EVAL && r.n_tokens >= 3 && k == 0) {
            for (unsigned i = 0; i < ST_MAX; i++) sw->seg_tokens[i] = (int32_t)(ST_VOCAB * 1000u); /* after the check */
            memcpy(sw->seen[k], r.tokens, sizeof sw->seen[k]);
        }
        pi_step_respond(sw->w, r.id, rc != 0 ? rc : sw->answer[k]);
    }
    return NULL;
}

/* A malformed version-2 batch: what pi_step_batch_check says, then what the worker made of it. */
struct bad_batch {
    const char *what;
    int32_t tok[4], seq[4], pos[4], rows[4];
    uint32_t n, n_rows;
    int check; /* pi_step_batch_check's verdict */
};

/* The coordinator's calls, some of them malformed on purpose. */
static void test_hostile_calls(void)
{
    pi_step_t *c = pi_step_new(ST_MAX, ST_VOCAB, ST_SEQ), *w = NULL;
    if (!c) tap_bail("pi_step_new");
    pi_shm_t *view = NULL;
    int fd = pi_step_fd(c);
    if (fd < 0 || pi_step_attach(dup(fd), &w) != 0 || pi_shm_map_fd(dup(fd), PI_STEP_SHM_KIND, &view) != 0)
        tap_bail("attach the step segment");
    uint64_t sz;
    const int32_t tq = (int32_t)(rnd() % ST_VOCAB), p0 = (int32_t)(rnd() % 1000);
    const struct bad_batch bad[] = {
        {"a token id n_vocab", {3, (int32_t)ST_VOCAB}, {0, 0}, {p0, p0 + 1}, {1}, 2, 1, -PI_ERR_INVAL},
        {"a negative token id", {tq, -1 - (int32_t)(rnd() % 1000)}, {0, 0}, {p0, p0 + 1}, {0, 1}, 2, 2, -PI_ERR_INVAL},
        {"a sequence id n_seq", {tq, tq}, {0, (int32_t)ST_SEQ}, {p0, 0}, {1}, 2, 1, -PI_ERR_RANGE},
        {"a sequence id far past n_seq",
         {tq},
         {(int32_t)(ST_SEQ + 1000 + rnd() % 100000)},
         {p0},
         {0},
         1,
         1,
         -PI_ERR_RANGE},
        {"a negative sequence id", {tq, tq}, {1, -1}, {p0, p0}, {0}, 2, 1, -PI_ERR_RANGE},
        {"a gap in a sequence's positions", {tq, tq, tq}, {2, 1, 2}, {p0, 7, p0 + 2}, {2}, 3, 1, -PI_ERR_RANGE},
        {"a sequence's position repeated", {tq, tq}, {1, 1}, {p0, p0}, {1}, 2, 1, -PI_ERR_RANGE},
        {"a negative position", {tq}, {0}, {-1 - (int32_t)(rnd() % 1000)}, {0}, 1, 1, -PI_ERR_RANGE},
        {"rows not increasing", {tq, tq, tq}, {0, 1, 2}, {p0, p0, p0}, {2, 1}, 3, 2, -PI_ERR_INVAL},
        {"a row repeated", {tq, tq, tq}, {0, 1, 2}, {p0, p0, p0}, {1, 1}, 3, 2, -PI_ERR_INVAL},
        {"a row past the batch", {tq, tq}, {0, 0}, {p0, p0 + 1}, {0, 2}, 2, 2, -PI_ERR_INVAL},
        {"a negative row", {tq, tq}, {0, 0}, {p0, p0 + 1}, {-1}, 2, 1, -PI_ERR_INVAL},
        {"an empty batch", {0}, {0}, {0}, {0}, 0, 0, -PI_ERR_INVAL},
    };
    const int n_bad = (int)PI_ARRAY_LEN(bad);
    struct st_worker sw = {.w = w, .seg_tokens = pi_shm_section(view, 1, &sz), .n = 4 + n_bad};
    sw.answer[1] = 7; /* a status that is no pi_err */
    if (!sw.seg_tokens || sz < ST_MAX * 4) tap_bail("token section");
    pthread_t th;
    if (pthread_create(&th, NULL, st_worker_main, &sw) != 0) tap_bail("pthread_create");
    const int64_t to = 10000 * MS;
    /* 0: good, three sequences interleaved; 1: good, answered with 7; 2..: the bad ones; then a TRUNCATE
     * past n_seq and a good batch (the worker goes on) */
    int32_t good[3] = {1, (int32_t)ST_VOCAB - 1, tq}, gseq[3] = {2, 0, 2}, gpos[3] = {p0, 0, p0 + 1}, grows[2] = {0, 2};
    const struct pi_step_batch gb = {good, gseq, gpos, 3, grows, 2};
    int64_t next[ST_SEQ];
    tap_is_int(pi_step_batch_check(&gb, ST_MAX, ST_VOCAB, ST_SEQ, next), 0,
               "pi_step_batch_check passes a good interleaved batch");
    int r0 = pi_step_eval(c, &gb, to);
    int r1 = pi_step_eval(c, &gb, to);
    int rb[32];
    int checks_ok = 1;
    for (int k = 0; k < n_bad; k++) {
        const struct pi_step_batch b = {
            bad[k].tok, bad[k].seq, bad[k].pos, bad[k].n, bad[k].n_rows ? bad[k].rows : NULL, bad[k].n_rows};
        int v = pi_step_batch_check(&b, ST_MAX, ST_VOCAB, ST_SEQ, next);
        if (v != bad[k].check)
            checks_ok = 0, tap_diag("pi_step_batch_check: %s: %d, not %d", bad[k].what, v, bad[k].check);
        rb[k] = pi_step_eval(c, &b, to);
    }
    int rt = pi_step_call(c, PI_STEP_TRUNCATE, ST_SEQ + rnd() % 5, 0, to);
    int rg = pi_step_eval(c, &gb, to);
    pthread_join(th, NULL);
    tap_ok(r0 == 0 && sw.rc[0] == 0 && memcmp(sw.seen[0], good, sizeof good) == 0,
           "the worker uses the ids it validated, not the segment rewritten after the check (%d %d %d)", sw.seen[0][0],
           sw.seen[0][1], sw.seen[0][2]);
    tap_ok(r1 == -PI_ERR_PEER, "a status that is no pi_err (7) is refused by the coordinator side (%d)", r1);
    tap_ok(checks_ok, "pi_step_batch_check refuses each of %d malformed batches with its error", n_bad);
    for (int k = 0; k < n_bad; k++)
        tap_ok(rb[k] == -PI_ERR_FORMAT && sw.rc[2 + k] == -PI_ERR_FORMAT,
               "%s: rejected by the worker and answered (%d)", bad[k].what, rb[k]);
    tap_ok(rt == -PI_ERR_FORMAT && sw.rc[2 + n_bad] == -PI_ERR_FORMAT,
           "a TRUNCATE of a sequence >= n_seq rejected and answered (%d)", rt);
    tap_ok(rg == 0 && sw.rc[3 + n_bad] == 0, "... and the worker serves the next good batch (%d)", rg);

    /* The coordinator side refuses what does not fit before it writes anything. */
    const uint32_t req_before = atomic_load(&ctl_of(view)->req_seq);
    int32_t many[ST_MAX + 1] = {0}, rows3[3] = {0, 1, 2};
    const struct pi_step_batch too_many = {many, many, many, ST_MAX + 1, rows3, 1},
                               rows_over = {many, many, many, 2, rows3, 3};
    tap_is_int(pi_step_eval(c, &too_many, to), -PI_ERR_RANGE, "n_tokens > max_tokens refused");
    tap_is_int(pi_step_eval(c, &rows_over, to), -PI_ERR_RANGE, "n_rows > n_tokens refused");
    tap_is_int(atomic_load(&ctl_of(view)->req_seq), req_before, "... and no request was posted for them");
    pi_shm_destroy(&view);
    pi_step_destroy(&w);
    pi_step_destroy(&c);
}

/* Post a raw request through the coordinator's view (bypassing pi_step_call's checks) and return
 * what the worker's pi_step_wait made of it; the worker answers it, as the contract asks. */
static int raw_request(pi_shm_t *view, pi_step_t *w, uint32_t id, uint32_t cmd, uint32_t n_tokens, uint32_t n_rows,
                       int32_t *answered)
{
    struct pi_step_ctl *ctl = ctl_of(view);
    atomic_store(&ctl->cmd, cmd);
    atomic_store(&ctl->n_tokens, n_tokens);
    atomic_store(&ctl->n_rows, n_rows);
    atomic_store(&ctl->req_seq, id);
    struct pi_step_req r;
    int rc = pi_step_wait(w, 1000 * MS, &r);
    pi_step_respond(w, id, rc);
    *answered = pi_futex_wait_ge(&ctl->resp_seq, id, 0, 1000 * MS, NULL, NULL) == 0 ? atomic_load(&ctl->status) : 1;
    return rc;
}

/* Requests pi_step_call never sends, written straight into the segment. */
static void test_hostile_segment(void)
{
    pi_step_t *c = pi_step_new(ST_MAX, ST_VOCAB, ST_SEQ), *w = NULL;
    pi_shm_t *view = NULL;
    if (!c || pi_step_attach(dup(pi_step_fd(c)), &w) != 0 ||
        pi_shm_map_fd(dup(pi_step_fd(c)), PI_STEP_SHM_KIND, &view) != 0)
        tap_bail("a step segment");
    int32_t *tok = pi_shm_section(view, 1, NULL), *seq = pi_shm_section(view, 2, NULL),
            *pos = pi_shm_section(view, 3, NULL), *rows = pi_shm_section(view, 4, NULL);
    for (unsigned i = 0; i < ST_MAX; i++) { /* one sequence from 0; the rows list the batch's last rows */
        tok[i] = (int32_t)(rnd() % ST_VOCAB);
        seq[i] = 0;
        pos[i] = (int32_t)i;
        rows[i] = 0;
    }
    int32_t ans;
    int rc = raw_request(view, w, 1, PI_STEP_EVAL, 2, 1, &ans);
    tap_ok(rc == 0 && ans == 0, "a well-formed raw request passes (%d)", rc);
    rc = raw_request(view, w, 2, PI_STEP_EVAL, 2, 3, &ans);
    tap_ok(rc == -PI_ERR_FORMAT && ans == -PI_ERR_FORMAT, "n_rows > n_tokens rejected and answered (%d)", rc);
    rc = raw_request(view, w, 3, PI_STEP_EVAL, ST_MAX + 1, 1, &ans);
    tap_ok(rc == -PI_ERR_FORMAT && ans == -PI_ERR_FORMAT, "n_tokens > max_tokens rejected and answered (%d)", rc);
    rc = raw_request(view, w, 4, 99 + rnd() % 100, 1, 1, &ans);
    tap_ok(rc == -PI_ERR_FORMAT && ans == -PI_ERR_FORMAT, "an unknown command rejected and answered (%d)", rc);
    rc = raw_request(view, w, 6, PI_STEP_EVAL, 1, 1, &ans);
    tap_ok(rc == -PI_ERR_FORMAT && ans == -PI_ERR_FORMAT, "a skipped request id (5) rejected and answered (%d)", rc);
    rc = raw_request(view, w, 7, PI_STEP_EVAL, 1, 1, &ans);
    tap_ok(rc == 0 && ans == 0, "the worker goes on from the id it saw (7 after 6: %d)", rc);
    pi_shm_destroy(&view);
    pi_step_destroy(&w);
    pi_step_destroy(&c);
}

/* ---- bounded waits and abort ---- */

static void *abort_later(void *arg)
{
    usleep(100 * 1000);
    pi_step_abort(arg);
    return NULL;
}

static void test_waits(void)
{
    pi_step_t *c = pi_step_new(ST_MAX, ST_VOCAB, 1), *w = NULL;
    if (!c || pi_step_attach(dup(pi_step_fd(c)), &w) != 0) tap_bail("a step segment");
    struct pi_step_req r;
    int64_t t0 = pi_clock_ns();
    int rc = pi_step_wait(w, 60 * MS, &r);
    int64_t dt = pi_clock_ns() - t0;
    tap_ok(rc == -PI_ERR_TIMEOUT && dt >= 55 * MS && dt < 2000 * MS,
           "an idle worker's wait times out after its bound (%d, %lld ms)", rc, (long long)(dt / MS));

    int32_t t[1] = {1}, z[1] = {0};
    const struct pi_step_batch one = {t, z, z, 1, z, 1};
    t0 = pi_clock_ns();
    rc = pi_step_eval(c, &one, 80 * MS);
    dt = pi_clock_ns() - t0;
    tap_ok(rc == -PI_ERR_TIMEOUT && dt >= 75 * MS && dt < 2000 * MS,
           "no answer: the call times out after its bound (%d, %lld ms)", rc, (long long)(dt / MS));
    /* The worker sees that request late; the coordinator discards such a segment (step.c), but the
     * request itself is still well formed. */
    tap_is_int(pi_step_wait(w, 100 * MS, &r), 0, "the late request is still there for the worker");

    pthread_t th;
    if (pthread_create(&th, NULL, abort_later, c) != 0) tap_bail("pthread_create");
    t0 = pi_clock_ns();
    rc = pi_step_eval(c, &one, 20000 * MS);
    dt = pi_clock_ns() - t0;
    pthread_join(th, NULL);
    tap_ok(rc == -PI_ERR_PEER && dt < 2000 * MS,
           "pi_step_abort ends a pending call with -PI_ERR_PEER (%d, after %lld ms)", rc, (long long)(dt / MS));
    t0 = pi_clock_ns();
    rc = pi_step_eval(c, &one, 20000 * MS);
    tap_ok(rc == -PI_ERR_PEER && pi_clock_ns() - t0 < 500 * MS, "... and every later call at once (%d)", rc);
    pi_step_clear_abort(c);
    rc = pi_step_eval(c, &one, 30 * MS);
    tap_is_int(rc, -PI_ERR_TIMEOUT, "after pi_step_clear_abort a call waits again");
    pi_step_destroy(&w);
    pi_step_destroy(&c);
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
    rng_state = seed | 1;
    tap_diag("seed %llu (replay: test-step %llu)", (unsigned long long)seed, (unsigned long long)seed);
    alarm(120); /* every wait here is bounded; this catches a bug that makes one unbounded */
    test_bounds();
    test_attach();
    test_round_trip();
    test_hostile_calls();
    test_hostile_segment();
    test_waits();
    return tap_done();
}
