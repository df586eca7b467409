/*
 * ipc/exchange.c - the per-layer exchange segment: layout, creation, validated attach, and the
 * publish / wait / post / merge hand-off of ipc/exchange.h.
 *
 * DESIGN: who writes which word, in what order, and why it is correct.
 *
 *   word (cache line)        writer          readers         ordering
 *   x, mask (sections 2,3)   GPU worker      CPU workers     plain stores, then publish_seq release
 *   step_* (ctl line 1)      GPU worker      CPU workers     relaxed, then publish_seq release
 *   publish_seq (ctl line 2) GPU worker      CPU workers     seq_cst store; readers acquire
 *   publish_sleepers (line 2) CPU workers    GPU worker      seq_cst increments around a sleep
 *   partial[w] (section 4)   CPU worker w    GPU worker      plain stores, then done_seq[w] store
 *   done_seq[w] (done line w) CPU worker w   GPU worker      seq_cst store; reader acquires
 *   sleepers (done line w)   GPU worker      CPU worker w    seq_cst increments around a sleep
 *   kept, pairs (done line w) CPU worker w   GPU worker      relaxed, before done_seq[w]'s seq_cst store;
 *                                                            read relaxed after the wait's acquire of it
 *   abort (ctl line 3)        supervisor     everyone        release/acquire
 *   stats (section 5)        GPU worker      coordinator     plain stores before the step channel's
 *                                                            response (release); read after it (acquire)
 *
 * Publish (GPU worker, step s = old publish_seq + 1):
 *   1. write x rows and mask rows;  2. store step_layer/n_tokens/flags (relaxed);
 *   3. store publish_seq = s (seq_cst, hence release);  4. FUTEX_WAKE(publish_seq) if
 *      publish_sleepers is non-zero (the seq_cst pair that makes skipping the wake safe is argued
 *      in ipc/futex.c).
 * A CPU worker's acquire load that reads s synchronises with (3), so the stores of (1) and (2)
 * happen-before everything it does after that load: it reads the complete x of step s. Both the
 * spin and the futex path end with such an acquire load (ipc/futex.c), and the futex compare makes
 * a lost wake-up impossible (argument in ipc/futex.c).
 *
 * Post (CPU worker w): write partial[w] rows; store done_seq[w] = s (seq_cst); FUTEX_WAKE if the
 * GPU worker sleeps (done line's sleepers). The
 * GPU worker's acquire load of done_seq[w] >= s makes the partial visible before it merges.
 *
 * Single buffering is safe because the two sides alternate strictly: the GPU worker writes x for
 * s+1 only after it saw every done_seq[w] >= s, which each worker stores after its last read of x
 * for s (the release orders those reads before the store); a worker writes partial[w] for s+1 only
 * after it saw publish_seq = s+1, which the GPU worker stores after its merge of s read partial[w]
 * (its release orders those reads). So no slot is ever written while someone still reads it.
 *
 * A worker also checks that publish_seq moved by exactly one: a skipped sequence means the protocol
 * broke (two publishes without a wait) and the step is rejected rather than computed on torn data.
 *
 * Dead peers: every wait has a timeout; the supervisor's abort word makes waits return -PI_ERR_PEER
 * (within PI_FUTEX_ABORT_SLICE_NS at worst, see ipc/futex.c). The GPU worker's timeout names the
 * late worker and its pid. Nothing here trusts the shared header after attach: parameters, offsets
 * and the layout are private copies validated once, and each step's n_tokens/layer/flags are read
 * once into locals and checked before use.
 */
#include "config.h"

#include "ipc/exchange.h"

#include "ipc/shm.h"
#include "lib/common.h"
#include "lib/log.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { SEC_CTL, SEC_DONE, SEC_X, SEC_MASK, SEC_PARTIAL, SEC_STATS, SEC_COUNT };

struct pi_exchange {
    pi_shm_t *shm;
    struct pi_exchange_params params; /* private, validated */
    struct pi_exchange_layout layout; /* private, validated */
    struct pi_exchange_ctl *ctl;
    struct pi_exchange_done *done;    /* [n_workers] */
    float *x;                         /* (max_tokens, n_embd) */
    uint64_t *mask;                   /* (max_tokens, mask_words) */
    uint8_t *partial;                 /* n_workers slots of partial_stride bytes */
    uint64_t *stats;                  /* (n_layers, PI_EXCHANGE_STATS_FIELDS) */
    int64_t spin_ns;                  /* this process's waits: spin at least this long (set_spin_ns) */
};

static int check_params(const struct pi_exchange_params *p)
{
    if (p->n_embd == 0 || p->n_embd > PI_EXCHANGE_MAX_EMBD || p->max_tokens == 0 ||
        p->max_tokens > PI_EXCHANGE_MAX_TOKENS || p->n_ff > PI_EXCHANGE_MAX_FF || p->n_layers == 0 ||
        p->n_layers > PI_EXCHANGE_MAX_LAYERS || p->n_workers == 0 || p->n_workers > PI_EXCHANGE_MAX_WORKERS) {
        pi_error("exchange: parameters out of range (n_embd %u, max_tokens %u, n_ff %u, n_layers %u, "
                 "n_workers %u)", p->n_embd, p->max_tokens, p->n_ff, p->n_layers, p->n_workers);
        return -PI_ERR_INVAL;
    }
    return 0;
}

int pi_exchange_layout(const struct pi_exchange_params *p, struct pi_exchange_layout *out)
{
    uint64_t sizes[SEC_COUNT], row, total;
    struct pi_shm_section sec[SEC_COUNT];
    int rc = check_params(p);
    if (rc < 0) return rc;
    memset(out, 0, sizeof *out);
    out->mask_words = (p->n_ff + 63) / 64;
    /* Each product is bounded by the limits above (2^16 * 2^20 * 4 = 2^38), but check anyway: the
     * limits may grow, and these feed mmap sizes. */
    if (pi_mul_overflows((uint64_t)p->max_tokens, (uint64_t)p->n_embd * sizeof(float), &row) ||
        pi_mul_overflows((uint64_t)p->max_tokens, (uint64_t)out->mask_words * 8, &sizes[SEC_MASK]) ||
        pi_mul_overflows(pi_align_up(row, PI_SHM_ALIGN), p->n_workers, &sizes[SEC_PARTIAL]))
        goto overflow;
    sizes[SEC_CTL] = sizeof(struct pi_exchange_ctl);
    sizes[SEC_DONE] = (uint64_t)p->n_workers * sizeof(struct pi_exchange_done);
    sizes[SEC_X] = row;
    sizes[SEC_STATS] = (uint64_t)p->n_layers * PI_EXCHANGE_STATS_FIELDS * sizeof(uint64_t);
    total = pi_shm_layout(sizes, SEC_COUNT, sec);
    if (total == 0) goto overflow;
    out->ctl_off = sec[SEC_CTL].offset;
    out->done_off = sec[SEC_DONE].offset;
    out->x_off = sec[SEC_X].offset;
    out->mask_off = sec[SEC_MASK].offset;
    out->partial_off = sec[SEC_PARTIAL].offset;
    out->stats_off = sec[SEC_STATS].offset;
    out->stats_size = sizes[SEC_STATS];
    out->ctl_size = sizes[SEC_CTL];
    out->done_size = sizes[SEC_DONE];
    out->x_size = sizes[SEC_X];
    out->mask_size = sizes[SEC_MASK];
    out->partial_size = sizes[SEC_PARTIAL];
    out->partial_stride = pi_align_up(row, PI_SHM_ALIGN);
    out->total = total;
    return 0;
overflow:
    pi_error("exchange: layout for n_embd %u x max_tokens %u x %u workers overflows", p->n_embd,
             p->max_tokens, p->n_workers);
    return -PI_ERR_RANGE;
}

/* Point the handle's fields into the mapped segment (sections already validated). */
static void bind_sections(pi_exchange_t *ex)
{
    ex->ctl = pi_shm_section(ex->shm, SEC_CTL, NULL);
    ex->done = pi_shm_section(ex->shm, SEC_DONE, NULL);
    ex->x = pi_shm_section(ex->shm, SEC_X, NULL);
    ex->mask = pi_shm_section(ex->shm, SEC_MASK, NULL);
    ex->partial = pi_shm_section(ex->shm, SEC_PARTIAL, NULL);
    ex->stats = pi_shm_section(ex->shm, SEC_STATS, NULL);
}

pi_exchange_t *pi_exchange_new(const struct pi_exchange_params *p)
{
    uint64_t sizes[SEC_COUNT];
    pi_exchange_t *ex = calloc(1, sizeof *ex);
    if (!ex) return NULL;
    if (pi_exchange_layout(p, &ex->layout) < 0) goto err;
    ex->params = *p;
    sizes[SEC_CTL] = ex->layout.ctl_size;
    sizes[SEC_DONE] = ex->layout.done_size;
    sizes[SEC_X] = ex->layout.x_size;
    sizes[SEC_MASK] = ex->layout.mask_size;
    sizes[SEC_PARTIAL] = ex->layout.partial_size;
    sizes[SEC_STATS] = ex->layout.stats_size;
    ex->shm = pi_shm_new("pinfer-exchange", PI_SHM_KIND_EXCHANGE, sizes, SEC_COUNT);
    if (!ex->shm) goto err;
    bind_sections(ex);
    /* The segment is fresh (zeros) and not yet shared: plain stores suffice; the fd reaches a
     * worker only through fork/exec, which orders them. */
    ex->ctl->magic = PI_EXCHANGE_MAGIC;
    ex->ctl->version = PI_EXCHANGE_VERSION;
    ex->ctl->params = *p;
    ex->ctl->mask_words = ex->layout.mask_words;
    return ex;
err:
    pi_exchange_destroy(&ex);
    return NULL;
}

/* Compare the mapped section table with the layout recomputed from the parameters. */
static int check_sections(const pi_exchange_t *ex, int fd)
{
    const struct pi_exchange_layout *l = &ex->layout;
    const uint64_t want_off[SEC_COUNT] = {l->ctl_off, l->done_off, l->x_off, l->mask_off, l->partial_off, l->stats_off};
    const uint64_t want_size[SEC_COUNT] = {l->ctl_size, l->done_size, l->x_size, l->mask_size, l->partial_size,
                                           l->stats_size};
    if (pi_shm_n_sections(ex->shm) != SEC_COUNT || pi_shm_size(ex->shm) != l->total) {
        pi_error("exchange fd %d: %u sections / %llu bytes, parameters need %u / %llu", fd,
                 pi_shm_n_sections(ex->shm), (unsigned long long)pi_shm_size(ex->shm), (unsigned)SEC_COUNT,
                 (unsigned long long)l->total);
        return -PI_ERR_RANGE;
    }
    for (unsigned i = 0; i < SEC_COUNT; i++) {
        uint64_t size;
        uint8_t *p = pi_shm_section(ex->shm, i, &size);
        if ((uint64_t)(p - (uint8_t *)pi_shm_base(ex->shm)) != want_off[i] || size != want_size[i]) {
            pi_error("exchange fd %d: section %u does not match the layout of its parameters", fd, i);
            return -PI_ERR_RANGE;
        }
    }
    return 0;
}

int pi_exchange_attach(int fd, pi_exchange_t **out)
{
    struct pi_exchange_ctl head;
    uint64_t ctl_size;
    void *ctl;
    int rc;
    pi_exchange_t *ex = calloc(1, sizeof *ex);
    *out = NULL;
    if (!ex) return -PI_ERR_NOMEM;
    rc = pi_shm_map_fd(fd, PI_SHM_KIND_EXCHANGE, &ex->shm);
    if (rc < 0) goto err;
    ctl = pi_shm_section(ex->shm, SEC_CTL, &ctl_size);
    if (!ctl || ctl_size < offsetof(struct pi_exchange_ctl, step_layer)) {
        pi_error("exchange fd %d: no control section", fd);
        rc = -PI_ERR_FORMAT;
        goto err;
    }
    /* Snapshot line 0 (written once before the fd was shared), then validate only the snapshot. */
    memcpy(&head, ctl, offsetof(struct pi_exchange_ctl, step_layer));
    if (head.magic != PI_EXCHANGE_MAGIC) {
        pi_error("exchange fd %d: bad magic 0x%08x", fd, head.magic);
        rc = -PI_ERR_FORMAT;
        goto err;
    }
    if (head.version != PI_EXCHANGE_VERSION) {
        pi_error("exchange fd %d: version %u, this build speaks %u", fd, head.version, PI_EXCHANGE_VERSION);
        rc = -PI_ERR_UNSUPPORTED;
        goto err;
    }
    ex->params = head.params;
    rc = pi_exchange_layout(&ex->params, &ex->layout);
    if (rc < 0) goto err;
    if (head.mask_words != ex->layout.mask_words) {
        pi_error("exchange fd %d: mask_words %u, n_ff %u needs %u", fd, head.mask_words, ex->params.n_ff,
                 ex->layout.mask_words);
        rc = -PI_ERR_FORMAT;
        goto err;
    }
    rc = check_sections(ex, fd);
    if (rc < 0) goto err;
    bind_sections(ex);
    *out = ex;
    return 0;
err:
    pi_shm_unmap_keep_fd(&ex->shm); /* the caller keeps its fd on failure */
    free(ex);
    return rc;
}

void pi_exchange_destroy(pi_exchange_t **p)
{
    pi_exchange_t *ex = p ? *p : NULL;
    if (!ex) return;
    pi_shm_destroy(&ex->shm);
    free(ex);
    *p = NULL;
}

int pi_exchange_fd(const pi_exchange_t *ex) { return pi_shm_fd(ex->shm); }
const struct pi_exchange_params *pi_exchange_params(const pi_exchange_t *ex) { return &ex->params; }
const struct pi_exchange_layout *pi_exchange_get_layout(const pi_exchange_t *ex) { return &ex->layout; }
float *pi_exchange_x(pi_exchange_t *ex) { return ex->x; }
uint64_t *pi_exchange_mask(pi_exchange_t *ex) { return ex->mask; }
uint64_t *pi_exchange_stats(pi_exchange_t *ex) { return ex->stats; }

float *pi_exchange_partial(pi_exchange_t *ex, uint32_t w)
{
    if (w >= ex->params.n_workers) return NULL;
    return (float *)(void *)(ex->partial + (size_t)w * ex->layout.partial_stride);
}

static int flags_valid(uint32_t flags)
{
    uint32_t kind = flags & (PI_EXCHANGE_ALL | PI_EXCHANGE_MASK);
    return (flags & ~PI_EXCHANGE_FLAGS_KNOWN) == 0 && (kind == PI_EXCHANGE_ALL || kind == PI_EXCHANGE_MASK);
}

int pi_exchange_publish(pi_exchange_t *ex, uint32_t layer, uint32_t n_tokens, uint32_t flags, uint32_t *seq)
{
    struct pi_exchange_ctl *c = ex->ctl;
    uint32_t s;
    if (layer >= ex->params.n_layers || n_tokens == 0 || n_tokens > ex->params.max_tokens || !flags_valid(flags)) {
        pi_error("exchange: publish of layer %u, %u tokens, flags 0x%x is invalid", layer, n_tokens, flags);
        return -PI_ERR_INVAL;
    }
    atomic_store_explicit(&c->step_layer, layer, memory_order_relaxed);
    atomic_store_explicit(&c->step_n_tokens, n_tokens, memory_order_relaxed);
    atomic_store_explicit(&c->step_flags, flags, memory_order_relaxed);
    /* Single writer: a relaxed read of our own last store, then the release that publishes x. */
    s = atomic_load_explicit(&c->publish_seq, memory_order_relaxed) + 1;
    atomic_store_explicit(&c->publish_seq, s, memory_order_seq_cst);
    *seq = s;
    return pi_futex_wake_sleepers(&c->publish_seq, &c->publish_sleepers, INT_MAX) < 0 ? -PI_ERR_IO : 0;
}

int pi_exchange_wait_partials(pi_exchange_t *ex, uint32_t seq, unsigned spin, int64_t timeout_ns)
{
    int64_t deadline = timeout_ns >= 0 ? pi_futex_deadline(timeout_ns) : 0;
    for (uint32_t w = 0; w < ex->params.n_workers; w++) {
        _Atomic uint32_t *word = &ex->done[w].done_seq;
        int64_t left = PI_FUTEX_FOREVER;
        uint32_t v = 0;
        int rc;
        if (timeout_ns >= 0) {
            left = deadline - pi_clock_ns();
            if (left < 0) left = 0;
        }
        struct pi_futex_aux aux = {.abort_word = &ex->ctl->abort, .sleepers = &ex->done[w].sleepers, .spin_ns = ex->spin_ns};
        rc = pi_futex_wait_ge_aux(word, seq, spin, left, &aux, &v);
        if (rc == -PI_ERR_TIMEOUT) {
            pi_error("exchange: CPU worker %u (pid %u) is late: done_seq %u, waiting for %u, after %lld ms", w,
                     atomic_load_explicit(&ex->done[w].pid, memory_order_relaxed),
                     atomic_load_explicit(word, memory_order_relaxed), seq,
                     (long long)(timeout_ns / 1000000));
            return rc;
        }
        if (rc == -PI_ERR_PEER) {
            pi_error("exchange: aborted (reason %u) while waiting for CPU worker %u",
                     atomic_load_explicit(&ex->ctl->abort, memory_order_relaxed), w);
            return rc;
        }
        if (rc < 0) return rc;
        if (v != seq) {
            pi_error("exchange: CPU worker %u posted step %u while step %u was in flight", w, v, seq);
            return -PI_ERR_PEER;
        }
    }
    return 0;
}

void pi_exchange_set_spin_ns(pi_exchange_t *ex, int64_t ns) { ex->spin_ns = ns < 0 ? 0 : ns; }

void pi_exchange_merge(const pi_exchange_t *ex, uint32_t n_tokens, float *out)
{
    size_t n = (size_t)PI_MIN(n_tokens, ex->params.max_tokens) * ex->params.n_embd;
    for (uint32_t w = 0; w < ex->params.n_workers; w++) {
        const float *p = (const float *)(const void *)(ex->partial + (size_t)w * ex->layout.partial_stride);
        for (size_t i = 0; i < n; i++) out[i] += p[i];
    }
}

void pi_exchange_counts(const pi_exchange_t *ex, uint64_t *kept, uint64_t *pairs)
{
    uint64_t k = 0, p = 0;
    for (uint32_t w = 0; w < ex->params.n_workers; w++) {
        uint64_t a = atomic_load_explicit(&ex->done[w].kept, memory_order_relaxed);
        uint64_t b = atomic_load_explicit(&ex->done[w].pairs, memory_order_relaxed);
        k = a > UINT64_MAX - k ? UINT64_MAX : k + a; /* a hostile worker cannot wrap the sums */
        p = b > UINT64_MAX - p ? UINT64_MAX : p + b;
    }
    *kept = k;
    *pairs = p;
}

void pi_exchange_set_counts(pi_exchange_t *ex, uint32_t w, uint64_t kept, uint64_t pairs)
{
    PI_ASSERT(w < ex->params.n_workers);
    atomic_store_explicit(&ex->done[w].kept, kept, memory_order_relaxed);
    atomic_store_explicit(&ex->done[w].pairs, pairs, memory_order_relaxed);
}

int pi_exchange_join(pi_exchange_t *ex, uint32_t w, uint32_t *seen)
{
    uint32_t s;
    if (w >= ex->params.n_workers) {
        pi_error("exchange: worker index %u, segment has %u workers", w, ex->params.n_workers);
        return -PI_ERR_INVAL;
    }
    atomic_store_explicit(&ex->done[w].pid, (uint32_t)getpid(), memory_order_relaxed);
    s = atomic_load_explicit(&ex->ctl->publish_seq, memory_order_acquire);
    atomic_store_explicit(&ex->done[w].done_seq, s, memory_order_release);
    *seen = s;
    return 0;
}

int pi_exchange_wait_publish(pi_exchange_t *ex, uint32_t seen, unsigned spin, int64_t timeout_ns,
                             struct pi_exchange_step *step)
{
    struct pi_exchange_ctl *c = ex->ctl;
    uint32_t s, layer, n_tokens, flags;
    struct pi_futex_aux aux = {.abort_word = &c->abort, .sleepers = &c->publish_sleepers, .spin_ns = ex->spin_ns};
    int rc = pi_futex_wait_ne_aux(&c->publish_seq, seen, spin, timeout_ns, &aux, &s);
    if (rc < 0) return rc;
    /* Read each shared field once; validate the copies, never re-read. */
    layer = atomic_load_explicit(&c->step_layer, memory_order_relaxed);
    n_tokens = atomic_load_explicit(&c->step_n_tokens, memory_order_relaxed);
    flags = atomic_load_explicit(&c->step_flags, memory_order_relaxed);
    if (s != seen + 1 || layer >= ex->params.n_layers || n_tokens == 0 || n_tokens > ex->params.max_tokens ||
        !flags_valid(flags)) {
        pi_error("exchange: corrupt step (seq %u after %u, layer %u/%u, %u tokens of %u, flags 0x%x)", s, seen,
                 layer, ex->params.n_layers, n_tokens, ex->params.max_tokens, flags);
        return -PI_ERR_FORMAT;
    }
    step->seq = s;
    step->layer = layer;
    step->n_tokens = n_tokens;
    step->flags = flags;
    step->x = ex->x;
    step->mask = (flags & PI_EXCHANGE_MASK) ? ex->mask : NULL;
    return 0;
}

int pi_exchange_post_partial(pi_exchange_t *ex, uint32_t w, uint32_t seq)
{
    if (w >= ex->params.n_workers) {
        pi_error("exchange: post from worker %u, segment has %u workers", w, ex->params.n_workers);
        return -PI_ERR_INVAL;
    }
    atomic_store_explicit(&ex->done[w].done_seq, seq, memory_order_seq_cst);
    return pi_futex_wake_sleepers(&ex->done[w].done_seq, &ex->done[w].sleepers, INT_MAX) < 0 ? -PI_ERR_IO : 0;
}

void pi_exchange_abort(pi_exchange_t *ex, uint32_t reason)
{
    atomic_store_explicit(&ex->ctl->abort, reason ? reason : (uint32_t)PI_ERR_PEER, memory_order_seq_cst);
    /* Wake every sleeper on every word; each re-reads the abort word when it wakes. */
    pi_futex_wake(&ex->ctl->publish_seq, INT_MAX);
    for (uint32_t w = 0; w < ex->params.n_workers; w++) pi_futex_wake(&ex->done[w].done_seq, INT_MAX);
}

uint32_t pi_exchange_aborted(const pi_exchange_t *ex)
{
    return atomic_load_explicit(&ex->ctl->abort, memory_order_acquire);
}
