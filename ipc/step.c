/*
 * ipc/step.c - the coordinator <-> GPU worker step channel (ipc/step.h).
 *
 * Ordering: the coordinator stores the request fields (relaxed) and the arrays, then req_seq with
 * release; the worker's acquire load of req_seq makes them visible. The worker stores the logits and
 * status, then resp_seq with release; the coordinator's acquire load of resp_seq makes those visible.
 * Only one request is in flight (pi_step_eval and pi_step_call return only when answered, timed out or aborted); after
 * a timeout or abort the coordinator discards the segment with its worker rather than reuse it, so a
 * late answer can never be taken for the next request's.
 */
#include "config.h"
#include "ipc/step.h"
#include "ipc/futex.h"
#include "ipc/shm.h"
#include "lib/common.h"
#include "lib/log.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define STEP_SPIN 2000u

struct pi_step {
    pi_shm_t *shm;
    struct pi_step_ctl *ctl;
    int32_t *tokens, *seq, *pos, *rows; /* (max_tokens) each, in the segment: written by the coordinator */
    /* worker: (max_tokens) private copies, validated once (no double fetch); next (n_seq) scratch */
    int32_t *tokens_priv, *seq_priv, *pos_priv, *rows_priv;
    int64_t *next;
    float *logits;
    uint32_t max_tokens, n_vocab, n_seq; /* private copies, checked against the section sizes */
    uint32_t last;                       /* worker: the last request id seen; coordinator: last sent */
};

static int bind_sections(pi_step_t *s)
{
    uint64_t sz[PI_STEP_SECTIONS];
    void *p[PI_STEP_SECTIONS];
    for (uint32_t i = 0; i < PI_STEP_SECTIONS; i++)
        if (!(p[i] = pi_shm_section(s->shm, i, &sz[i]))) return -PI_ERR_FORMAT;
    s->ctl = p[0];
    s->tokens = p[1];
    s->seq = p[2];
    s->pos = p[3];
    s->rows = p[4];
    s->logits = p[5];
    if (sz[0] < sizeof *s->ctl) return -PI_ERR_FORMAT;
    for (uint32_t i = 1; i < 5; i++)
        if (sz[i] < (uint64_t)s->max_tokens * 4) return -PI_ERR_RANGE;
    if (sz[5] < (uint64_t)s->max_tokens * s->n_vocab * 4) return -PI_ERR_RANGE;
    return 0;
}

static bool sizes_ok(uint32_t max_tokens, uint32_t n_vocab, uint32_t n_seq)
{
    return max_tokens >= 1 && max_tokens <= PI_STEP_MAX_TOKENS && n_vocab >= 1 && n_vocab <= PI_STEP_MAX_VOCAB &&
           n_seq >= 1 && n_seq <= PI_STEP_MAX_SEQ;
}

/* The worker's private arrays. 0 or -PI_ERR_NOMEM. */
static int alloc_priv(pi_step_t *s)
{
    size_t n = (size_t)s->max_tokens;
    s->tokens_priv = malloc(n * 4 * sizeof(int32_t));
    s->next = malloc((size_t)s->n_seq * sizeof *s->next);
    if (!s->tokens_priv || !s->next) return -PI_ERR_NOMEM;
    s->seq_priv = s->tokens_priv + n;
    s->pos_priv = s->tokens_priv + 2 * n;
    s->rows_priv = s->tokens_priv + 3 * n;
    return 0;
}

pi_step_t *pi_step_new(uint32_t max_tokens, uint32_t n_vocab, uint32_t n_seq)
{
    if (!sizes_ok(max_tokens, n_vocab, n_seq)) {
        pi_error("step segment: max_tokens %u / n_vocab %u / n_seq %u out of range", max_tokens, n_vocab, n_seq);
        return NULL;
    }
    pi_step_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    const uint64_t rows = (uint64_t)max_tokens * 4;
    uint64_t sizes[PI_STEP_SECTIONS] = {sizeof(struct pi_step_ctl),        rows, rows, rows, rows,
                                        (uint64_t)max_tokens * n_vocab * 4};
    s->shm = pi_shm_new("pinfer-step", PI_STEP_SHM_KIND, sizes, PI_STEP_SECTIONS);
    s->max_tokens = max_tokens;
    s->n_vocab = n_vocab;
    s->n_seq = n_seq;
    if (!s->shm || alloc_priv(s) != 0 || bind_sections(s) != 0) {
        pi_step_destroy(&s);
        return NULL;
    }
    s->ctl->magic = PI_STEP_MAGIC;
    s->ctl->version = PI_STEP_VERSION;
    s->ctl->max_tokens = max_tokens;
    s->ctl->n_vocab = n_vocab;
    s->ctl->n_seq = n_seq;
    return s;
}

int pi_step_attach(int fd, pi_step_t **out)
{
    *out = NULL;
    pi_shm_t *shm = NULL;
    int rc = pi_shm_map_fd(fd, PI_STEP_SHM_KIND, &shm);
    if (rc != 0) return rc;
    pi_step_t *s = calloc(1, sizeof *s);
    if (!s) {
        pi_shm_destroy(&shm);
        return -PI_ERR_NOMEM;
    }
    s->shm = shm;
    uint64_t sz0;
    const struct pi_step_ctl *c = pi_shm_section(shm, 0, &sz0);
    if (!c || sz0 < sizeof *c || c->magic != PI_STEP_MAGIC) {
        pi_error("step segment: bad magic");
        rc = -PI_ERR_FORMAT;
    } else if (c->version != PI_STEP_VERSION) {
        pi_error("step segment: version %u, this worker speaks %u", c->version, PI_STEP_VERSION);
        rc = -PI_ERR_UNSUPPORTED;
    } else {
        /* Read once: the coordinator could change line 0 between the range check and the use. */
        s->max_tokens = c->max_tokens;
        s->n_vocab = c->n_vocab;
        s->n_seq = c->n_seq;
        if (!sizes_ok(s->max_tokens, s->n_vocab, s->n_seq)) {
            pi_error("step segment: max_tokens %u / n_vocab %u / n_seq %u out of range", s->max_tokens, s->n_vocab,
                     s->n_seq);
            rc = -PI_ERR_RANGE;
        } else {
            rc = bind_sections(s);
            if (rc != 0)
                pi_error("step segment: sections smaller than max_tokens %u x n_vocab %u", s->max_tokens, s->n_vocab);
        }
        if (rc == 0) rc = alloc_priv(s);
    }
    if (rc != 0) {
        s->shm = NULL;
        free(s->tokens_priv);
        free(s->next);
        free(s);
        pi_shm_destroy(&shm); /* closes fd (see the contract in step.h) */
        return rc;
    }
    s->last = atomic_load_explicit(&s->ctl->resp_seq, memory_order_acquire);
    *out = s;
    return 0;
}

void pi_step_destroy(pi_step_t **p)
{
    if (!p || !*p) return;
    pi_shm_destroy(&(*p)->shm);
    free((*p)->tokens_priv);
    free((*p)->next);
    free(*p);
    *p = NULL;
}

int pi_step_fd(const pi_step_t *s) { return pi_shm_fd(s->shm); }
uint32_t pi_step_max_tokens(const pi_step_t *s) { return s->max_tokens; }
uint32_t pi_step_n_vocab(const pi_step_t *s) { return s->n_vocab; }
uint32_t pi_step_n_seq(const pi_step_t *s) { return s->n_seq; }
float *pi_step_logits(pi_step_t *s) { return s->logits; }

int pi_step_batch_check(const struct pi_step_batch *b, uint32_t max_tokens, uint32_t n_vocab, uint32_t n_seq,
                        int64_t *next)
{
    const uint32_t n = b->n_tokens;
    if (n < 1 || n > max_tokens || b->n_rows > n || (b->n_rows > 0) != (b->rows != NULL) || !b->tokens || !b->seq ||
        !b->pos) {
        pi_error("step: a batch of %u tokens (1..%u) with %u logits rows", n, max_tokens, b->n_rows);
        return -PI_ERR_INVAL;
    }
    for (uint32_t k = 0; k < b->n_rows; k++)
        if (b->rows[k] < 0 || (uint32_t)b->rows[k] >= n || (k > 0 && b->rows[k] <= b->rows[k - 1])) {
            pi_error("step: logits row %d (entry %u) is not an increasing row index below %u", b->rows[k], k, n);
            return -PI_ERR_INVAL;
        }
    for (uint32_t q = 0; q < n_seq; q++) next[q] = -1; /* not seen in this batch yet */
    for (uint32_t i = 0; i < n; i++) {
        const int32_t t = b->tokens[i], q = b->seq[i], p = b->pos[i];
        if (t < 0 || (uint32_t)t >= n_vocab) {
            pi_error("step: token %d at row %u out of the vocabulary", t, i);
            return -PI_ERR_INVAL;
        }
        if (q < 0 || (uint32_t)q >= n_seq) {
            pi_error("step: sequence %d at row %u out of [0, %u)", q, i, n_seq);
            return -PI_ERR_RANGE;
        }
        if (p < 0 || (next[q] >= 0 && p != next[q])) {
            pi_error("step: position %d at row %u: sequence %d continues at %lld", p, i, q, (long long)next[q]);
            return -PI_ERR_RANGE;
        }
        next[q] = (int64_t)p + 1;
    }
    return 0;
}

/* Send the request whose fields and arrays are written; wait for the answer. */
static int call(pi_step_t *s, int64_t timeout_ns)
{
    struct pi_step_ctl *c = s->ctl;
    uint32_t id = ++s->last;
    atomic_store_explicit(&c->req_seq, id, memory_order_release);
    pi_futex_wake(&c->req_seq, 1);
    int rc = pi_futex_wait_ge(&c->resp_seq, id, STEP_SPIN, timeout_ns, &c->abort, NULL);
    if (rc != 0) return rc;
    /* The status is the worker's word: anything but 0 or a known negative pi_err is corruption. */
    int32_t st = atomic_load_explicit(&c->status, memory_order_relaxed);
    if (st > 0 || st < -PI_ERR_TIMEOUT) {
        pi_error("step %u: the worker answered with status %d", id, st);
        return -PI_ERR_PEER;
    }
    return st;
}

static void put_request(struct pi_step_ctl *c, uint32_t cmd, uint32_t seq, uint32_t keep, uint32_t n_tokens,
                        uint32_t n_rows)
{
    atomic_store_explicit(&c->cmd, cmd, memory_order_relaxed);
    atomic_store_explicit(&c->seq, seq, memory_order_relaxed);
    atomic_store_explicit(&c->keep, keep, memory_order_relaxed);
    atomic_store_explicit(&c->n_tokens, n_tokens, memory_order_relaxed);
    atomic_store_explicit(&c->n_rows, n_rows, memory_order_relaxed);
}

int pi_step_eval(pi_step_t *s, const struct pi_step_batch *b, int64_t timeout_ns)
{
    const uint32_t n = b->n_tokens;
    if (n > s->max_tokens || b->n_rows > n) return -PI_ERR_RANGE;
    if (atomic_load(&s->ctl->abort)) return -PI_ERR_PEER;
    if (n && b->tokens) memcpy(s->tokens, b->tokens, (size_t)n * sizeof *s->tokens);
    if (n && b->seq) memcpy(s->seq, b->seq, (size_t)n * sizeof *s->seq);
    if (n && b->pos) memcpy(s->pos, b->pos, (size_t)n * sizeof *s->pos);
    if (b->n_rows && b->rows) memcpy(s->rows, b->rows, (size_t)b->n_rows * sizeof *s->rows);
    put_request(s->ctl, PI_STEP_EVAL, 0, 0, n, b->n_rows);
    return call(s, timeout_ns);
}

int pi_step_call(pi_step_t *s, uint32_t cmd, uint32_t seq, uint32_t keep, int64_t timeout_ns)
{
    if (atomic_load(&s->ctl->abort)) return -PI_ERR_PEER;
    put_request(s->ctl, cmd, seq, keep, 0, 0);
    return call(s, timeout_ns);
}

void pi_step_abort(pi_step_t *s)
{
    atomic_store(&s->ctl->abort, 1);
    pi_futex_wake(&s->ctl->abort, INT32_MAX);
    pi_futex_wake(&s->ctl->resp_seq, INT32_MAX);
    pi_futex_wake(&s->ctl->req_seq, INT32_MAX);
}

void pi_step_clear_abort(pi_step_t *s) { atomic_store(&s->ctl->abort, 0); }

int pi_step_wait(pi_step_t *s, int64_t timeout_ns, struct pi_step_req *req)
{
    struct pi_step_ctl *c = s->ctl;
    uint32_t id;
    int rc = pi_futex_wait_ne(&c->req_seq, s->last, STEP_SPIN, timeout_ns, NULL, &id);
    if (rc != 0) return rc;
    memset(req, 0, sizeof *req);
    req->id = id;
    req->cmd = atomic_load_explicit(&c->cmd, memory_order_relaxed);
    req->seq = atomic_load_explicit(&c->seq, memory_order_relaxed);
    req->keep = atomic_load_explicit(&c->keep, memory_order_relaxed);
    req->n_tokens = atomic_load_explicit(&c->n_tokens, memory_order_relaxed);
    req->n_rows = atomic_load_explicit(&c->n_rows, memory_order_relaxed);
    req->tokens = s->tokens_priv;
    req->seqs = s->seq_priv;
    req->pos = s->pos_priv;
    req->rows = s->rows_priv;
    uint32_t expect = s->last + 1;
    s->last = id;
    if (id != expect) {
        pi_error("step: request %u after %u (a sequence number was skipped)", id, expect - 1);
        return -PI_ERR_FORMAT;
    }
    switch (req->cmd) {
    case PI_STEP_EVAL: {
        if (req->n_tokens < 1 || req->n_tokens > s->max_tokens || req->n_rows > req->n_tokens) break;
        /* Copy the arrays out of the segment, then validate and use only the copies: the
         * coordinator's memory is not trusted to stay as it was between the check and the use. */
        const size_t n = req->n_tokens;
        memcpy(s->tokens_priv, s->tokens, n * sizeof *s->tokens_priv);
        memcpy(s->seq_priv, s->seq, n * sizeof *s->seq_priv);
        memcpy(s->pos_priv, s->pos, n * sizeof *s->pos_priv);
        memcpy(s->rows_priv, s->rows, (size_t)req->n_rows * sizeof *s->rows_priv);
        struct pi_step_batch b = {
            s->tokens_priv, s->seq_priv, s->pos_priv, req->n_tokens, req->n_rows ? s->rows_priv : NULL, req->n_rows};
        if (pi_step_batch_check(&b, s->max_tokens, s->n_vocab, s->n_seq, s->next) != 0) {
            pi_error("step %u: a malformed batch refused", id);
            return -PI_ERR_FORMAT;
        }
        if (!req->n_rows) req->rows = NULL;
        return 0;
    }
    case PI_STEP_TRUNCATE:
        if (req->seq >= s->n_seq || req->keep > INT32_MAX) {
            pi_error("step %u: truncate sequence %u (of %u) to %u positions", id, req->seq, s->n_seq, req->keep);
            return -PI_ERR_FORMAT;
        }
        return 0;
    case PI_STEP_STOP:
    case PI_STEP_RESET: return 0;
    default: break;
    }
    pi_error("step %u: bad request (cmd %u, n_tokens %u, n_rows %u, max %u)", id, req->cmd, req->n_tokens, req->n_rows,
             s->max_tokens);
    return -PI_ERR_FORMAT;
}

void pi_step_respond(pi_step_t *s, uint32_t id, int32_t status)
{
    atomic_store_explicit(&s->ctl->status, status, memory_order_relaxed);
    atomic_store_explicit(&s->ctl->resp_seq, id, memory_order_release);
    pi_futex_wake(&s->ctl->resp_seq, 1);
}
