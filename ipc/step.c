/*
 * ipc/step.c - the coordinator <-> GPU worker step channel (ipc/step.h).
 *
 * Ordering: the coordinator stores the request fields (relaxed) and the tokens, then req_seq with
 * release; the worker's acquire load of req_seq makes them visible. The worker stores the logits and
 * status, then resp_seq with release; the coordinator's acquire load of resp_seq makes those visible.
 * Only one request is in flight (pi_step_call returns only when answered, timed out or aborted); after
 * a timeout or abort the coordinator discards the segment with its worker rather than reuse it, so a
 * late answer can never be taken for the next request's.
 */
#include "config.h"
#include "ipc/step.h"
#include "ipc/futex.h"
#include "ipc/shm.h"
#include "lib/common.h"
#include "lib/log.h"

#include <stdlib.h>
#include <string.h>

#define STEP_SPIN 2000u

struct pi_step {
    pi_shm_t *shm;
    struct pi_step_ctl *ctl;
    int32_t *tokens;              /* (max_tokens) in the segment: written by the coordinator */
    int32_t *tokens_priv;         /* worker: (max_tokens) private copy, validated once (no double fetch) */
    float *logits;
    uint32_t max_tokens, n_vocab; /* private copies, checked against the section sizes */
    uint32_t last;                /* worker: the last request id seen; coordinator: last sent */
};

static int bind_sections(pi_step_t *s)
{
    uint64_t sz0, sz1, sz2;
    s->ctl = pi_shm_section(s->shm, 0, &sz0);
    s->tokens = pi_shm_section(s->shm, 1, &sz1);
    s->logits = pi_shm_section(s->shm, 2, &sz2);
    if (!s->ctl || !s->tokens || !s->logits || sz0 < sizeof *s->ctl) return -PI_ERR_FORMAT;
    if (sz1 < (uint64_t)s->max_tokens * 4 || sz2 < (uint64_t)s->max_tokens * s->n_vocab * 4) return -PI_ERR_RANGE;
    return 0;
}

pi_step_t *pi_step_new(uint32_t max_tokens, uint32_t n_vocab)
{
    if (max_tokens < 1 || max_tokens > PI_STEP_MAX_TOKENS || n_vocab < 1 || n_vocab > PI_STEP_MAX_VOCAB) {
        pi_error("step segment: max_tokens %u / n_vocab %u out of range", max_tokens, n_vocab);
        return NULL;
    }
    pi_step_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    uint64_t sizes[3] = {sizeof(struct pi_step_ctl), (uint64_t)max_tokens * 4, (uint64_t)max_tokens * n_vocab * 4};
    s->shm = pi_shm_new("pinfer-step", PI_STEP_SHM_KIND, sizes, 3);
    s->max_tokens = max_tokens;
    s->n_vocab = n_vocab;
    s->tokens_priv = malloc((size_t)max_tokens * sizeof *s->tokens_priv);
    if (!s->shm || !s->tokens_priv || bind_sections(s) != 0) {
        pi_step_destroy(&s);
        return NULL;
    }
    s->ctl->magic = PI_STEP_MAGIC;
    s->ctl->version = PI_STEP_VERSION;
    s->ctl->max_tokens = max_tokens;
    s->ctl->n_vocab = n_vocab;
    return s;
}

int pi_step_attach(int fd, pi_step_t **out)
{
    *out = NULL;
    pi_shm_t *shm = NULL;
    int rc = pi_shm_map_fd(fd, PI_STEP_SHM_KIND, &shm);
    if (rc != 0) return rc;
    pi_step_t *s = calloc(1, sizeof *s);
    if (!s) { pi_shm_destroy(&shm); return -PI_ERR_NOMEM; }
    s->shm = shm;
    uint64_t sz0;
    const struct pi_step_ctl *c = pi_shm_section(shm, 0, &sz0);
    if (!c || sz0 < sizeof *c || c->magic != PI_STEP_MAGIC) {
        pi_error("step segment: bad magic");
        rc = -PI_ERR_FORMAT;
    } else if (c->version != PI_STEP_VERSION) {
        pi_error("step segment: version %u, this worker speaks %u", c->version, PI_STEP_VERSION);
        rc = -PI_ERR_UNSUPPORTED;
    } else if (c->max_tokens < 1 || c->max_tokens > PI_STEP_MAX_TOKENS || c->n_vocab < 1 || c->n_vocab > PI_STEP_MAX_VOCAB) {
        pi_error("step segment: max_tokens %u / n_vocab %u out of range", c->max_tokens, c->n_vocab);
        rc = -PI_ERR_RANGE;
    } else {
        /* Read once: the coordinator could change line 0 between the range check and the use. */
        s->max_tokens = c->max_tokens;
        s->n_vocab = c->n_vocab;
        if (s->max_tokens < 1 || s->max_tokens > PI_STEP_MAX_TOKENS || s->n_vocab < 1 || s->n_vocab > PI_STEP_MAX_VOCAB) {
            pi_error("step segment: max_tokens / n_vocab changed while attaching");
            rc = -PI_ERR_RANGE;
        } else {
            rc = bind_sections(s);
            if (rc != 0) pi_error("step segment: sections smaller than max_tokens %u x n_vocab %u", s->max_tokens, s->n_vocab);
        }
        if (rc == 0 && !(s->tokens_priv = malloc((size_t)s->max_tokens * sizeof *s->tokens_priv))) rc = -PI_ERR_NOMEM;
    }
    if (rc != 0) {
        s->shm = NULL;
        free(s->tokens_priv);
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
    free(*p);
    *p = NULL;
}

int pi_step_fd(const pi_step_t *s) { return pi_shm_fd(s->shm); }
uint32_t pi_step_max_tokens(const pi_step_t *s) { return s->max_tokens; }
uint32_t pi_step_n_vocab(const pi_step_t *s) { return s->n_vocab; }
float *pi_step_logits(pi_step_t *s) { return s->logits; }

int pi_step_call(pi_step_t *s, uint32_t cmd, uint32_t seq, const int32_t *tokens, uint32_t n_tokens,
                 uint32_t pos0, uint32_t n_out, int64_t timeout_ns)
{
    struct pi_step_ctl *c = s->ctl;
    if (n_tokens > s->max_tokens || n_out > n_tokens) return -PI_ERR_RANGE;
    if (atomic_load(&c->abort)) return -PI_ERR_PEER;
    if (tokens && n_tokens) memcpy(s->tokens, tokens, (size_t)n_tokens * sizeof *tokens);
    atomic_store_explicit(&c->cmd, cmd, memory_order_relaxed);
    atomic_store_explicit(&c->seq, seq, memory_order_relaxed);
    atomic_store_explicit(&c->n_tokens, n_tokens, memory_order_relaxed);
    atomic_store_explicit(&c->pos0, pos0, memory_order_relaxed);
    atomic_store_explicit(&c->n_out, n_out, memory_order_relaxed);
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
    req->n_tokens = atomic_load_explicit(&c->n_tokens, memory_order_relaxed);
    req->pos0 = atomic_load_explicit(&c->pos0, memory_order_relaxed);
    req->n_out = atomic_load_explicit(&c->n_out, memory_order_relaxed);
    req->tokens = s->tokens_priv;
    uint32_t expect = s->last + 1;
    s->last = id;
    if (id != expect) {
        pi_error("step: request %u after %u (a sequence number was skipped)", id, expect - 1);
        return -PI_ERR_FORMAT;
    }
    switch (req->cmd) {
    case PI_STEP_EVAL:
        if (req->n_tokens < 1 || req->n_tokens > s->max_tokens || req->n_out > req->n_tokens) break;
        /* Copy the ids out of the segment, then validate and use only the copy: the coordinator's
         * memory is not trusted to stay as it was between the check and the embedding lookup. */
        memcpy(s->tokens_priv, s->tokens, (size_t)req->n_tokens * sizeof *s->tokens_priv);
        for (uint32_t i = 0; i < req->n_tokens; i++)
            if (s->tokens_priv[i] < 0 || (uint32_t)s->tokens_priv[i] >= s->n_vocab) {
                pi_error("step %u: token %d out of the vocabulary", id, s->tokens_priv[i]);
                return -PI_ERR_FORMAT;
            }
        return 0;
    case PI_STEP_TRUNCATE:
    case PI_STEP_STOP:
        return 0;
    default:
        break;
    }
    pi_error("step %u: bad request (cmd %u, n_tokens %u, n_out %u, max %u)", id, req->cmd, req->n_tokens,
             req->n_out, s->max_tokens);
    return -PI_ERR_FORMAT;
}

void pi_step_respond(pi_step_t *s, uint32_t id, int32_t status)
{
    atomic_store_explicit(&s->ctl->status, status, memory_order_relaxed);
    atomic_store_explicit(&s->ctl->resp_seq, id, memory_order_release);
    pi_futex_wake(&s->ctl->resp_seq, 1);
}
