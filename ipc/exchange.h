/*
 * ipc/exchange.h - the per-layer exchange between the GPU worker and the CPU workers: one sealed
 * memfd segment (ipc/shm.h) holding the FFN input of the layer being computed, which cold neurons
 * are active, one partial-sum slot per CPU worker, and the sequence words that hand the layer back
 * and forth (DESIGN.md, "The per-layer exchange").
 *
 * One round trip per layer:
 *   GPU worker:  write x (and the mask) -> pi_exchange_publish -> compute hot neurons ->
 *                pi_exchange_wait_partials -> pi_exchange_merge -> next layer
 *   CPU worker w: pi_exchange_wait_publish -> compute its cold neurons into its partial slot ->
 *                pi_exchange_post_partial
 * The slots are single-buffered: the GPU worker only rewrites x after every worker has posted the
 * previous layer (it waited for that), and a worker only rewrites its partial after the next publish
 * (which comes after the GPU worker merged). The ordering argument is in ipc/exchange.c.
 *
 * Segment layout (sections of the shm table, each 64-byte aligned, offsets from the segment start):
 *   0 ctl      struct pi_exchange_ctl: parameters, the published step, publish_seq, abort
 *   1 done     n_workers x struct pi_exchange_done: one cache line per CPU worker (done_seq, pid, and
 *              the counts of its last step)
 *   2 x        float32 (max_tokens, n_embd) row-major: the FFN input (ffn_norm output) of the layer
 *   3 mask     uint64 (max_tokens, mask_words): bit j of word j/64 of token t = cold neuron j active
 *   4 partial  n_workers slots of partial_stride bytes, each float32 (max_tokens, n_embd) row-major
 *   5 stats    uint64 (n_layers, PI_EXCHANGE_STATS_FIELDS): the sparse execution's counts of the last
 *              step (compute/sparse.h), written by the GPU worker before it answers the step, read by
 *              the coordinator after the answer (the step channel orders them); CPU workers ignore it
 */
#ifndef PI_IPC_EXCHANGE_H
#define PI_IPC_EXCHANGE_H

#include "ipc/futex.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PI_EXCHANGE_MAGIC 0x58454950u /* "PIEX" little-endian */
#define PI_EXCHANGE_VERSION 3u /* 2: the stats section; 3: the workers' counts in their done lines */
#define PI_EXCHANGE_STATS_FIELDS 4u /* per layer: predicted, pairs, recall_true, recall_hit */

/* Bounds on the parameters; a header that claims more is corrupt. */
#define PI_EXCHANGE_MAX_WORKERS 64u
#define PI_EXCHANGE_MAX_EMBD (1u << 20)
#define PI_EXCHANGE_MAX_TOKENS (1u << 16)
#define PI_EXCHANGE_MAX_FF (1u << 24)
#define PI_EXCHANGE_MAX_LAYERS (1u << 12)

/* What a published step asks the CPU workers to compute (pi_exchange_ctl.step_flags). Exactly one
 * of ALL and MASK is set; GATE_SKIP may be added to either. */
enum pi_exchange_flags {
    PI_EXCHANGE_ALL = 1u << 0,       /* every cold neuron of the worker's partition; mask unused */
    PI_EXCHANGE_MASK = 1u << 1,      /* only the neurons whose bit is set in the token's mask row */
    PI_EXCHANGE_GATE_SKIP = 1u << 2, /* ReLU model: a neuron whose gate <= 0 may be skipped (it adds 0) */
    PI_EXCHANGE_FRESH = 1u << 3,     /* some row of the step starts a sequence (position 0). Until
                                      * issue 19 it restarted a worker's running activity statistics
                                      * (which picked its dense or neuron path); the path is now fixed
                                      * (compute/ffn-policy.h, batch invariance), so a worker has no
                                      * running state to restart and ignores it. Still set and accepted,
                                      * for logs and tests. */
};
#define PI_EXCHANGE_FLAGS_KNOWN (PI_EXCHANGE_ALL | PI_EXCHANGE_MASK | PI_EXCHANGE_GATE_SKIP | PI_EXCHANGE_FRESH)

/* The sizes a segment is made for. */
struct pi_exchange_params {
    uint32_t n_embd;     /* model width: elements of one x row and one partial row */
    uint32_t max_tokens; /* rows per step (1 for decode; the prefill chunk size) */
    uint32_t n_ff;       /* FFN neurons per layer (bits per mask row) */
    uint32_t n_layers;   /* layers; a published layer index must be below this */
    uint32_t n_workers;  /* CPU workers, each with one done line and one partial slot */
};

/* Section 0. Line 0 is written once by the creator; each later line has one writer. */
struct pi_exchange_ctl {
    uint32_t magic;      /* PI_EXCHANGE_MAGIC */
    uint32_t version;    /* PI_EXCHANGE_VERSION */
    struct pi_exchange_params params;
    uint32_t mask_words; /* ceil(n_ff / 64) */
    uint8_t pad0[28];
    /* line 1, written by the GPU worker before it bumps publish_seq (relaxed; publish orders them) */
    _Alignas(64) _Atomic uint32_t step_layer;
    _Atomic uint32_t step_n_tokens;
    _Atomic uint32_t step_flags;
    /* line 2, written by the GPU worker: +1 per published layer (seq_cst, which includes release),
     * futex-woken; publish_sleepers counts CPU workers asleep on it (ipc/futex.h), so a publish
     * whose workers are all spinning costs no system call */
    _Alignas(64) _Atomic uint32_t publish_seq;
    _Atomic uint32_t publish_sleepers;
    /* line 3, written by the supervisor (coordinator or GPU worker): non-zero = stop waiting, the
     * value is the reason (an enum pi_err); epoch is always 0 (a segment is never reset: see
     * pi_exchange_abort), kept so that the layout stays the same */
    _Alignas(64) _Atomic uint32_t abort;
    _Atomic uint32_t epoch;
};
_Static_assert(sizeof(struct pi_exchange_ctl) == 256, "pi_exchange_ctl is 4 cache lines");
_Static_assert(offsetof(struct pi_exchange_ctl, step_layer) == 64, "step on line 1");
_Static_assert(offsetof(struct pi_exchange_ctl, publish_seq) == 128, "publish_seq on line 2");
_Static_assert(offsetof(struct pi_exchange_ctl, abort) == 192, "abort on line 3");

/* Section 1, one per CPU worker, each on its own line so workers never share a written line. */
struct pi_exchange_done {
    _Alignas(64) _Atomic uint32_t done_seq; /* = the publish_seq whose partial is complete (seq_cst) */
    _Atomic uint32_t pid;                   /* the worker's pid, for error messages (pi_exchange_join) */
    _Atomic uint32_t sleepers;              /* GPU-side waiters asleep on done_seq (ipc/futex.h) */
    /* the (token, neuron) pairs the worker computed and held in the step it last posted, for the
     * activation thresholds' telemetry (pi_exchange_set_counts): written before done_seq (relaxed;
     * the post's seq_cst store orders them), read by the GPU worker after pi_exchange_wait_partials */
    _Atomic uint64_t kept, pairs;
};
_Static_assert(sizeof(struct pi_exchange_done) == 64, "one done line per worker");

/* Byte offsets and sizes of the sections, as pi_exchange_layout computes them. */
struct pi_exchange_layout {
    uint64_t ctl_off, done_off, x_off, mask_off, partial_off, stats_off;
    uint64_t ctl_size, done_size, x_size, mask_size, partial_size, stats_size;
    uint64_t partial_stride; /* bytes between worker slots (64-aligned) */
    uint32_t mask_words;     /* uint64 words per mask row */
    uint64_t total;          /* segment size */
};

/* A published step as a CPU worker sees it: every field validated against the segment. */
struct pi_exchange_step {
    uint32_t seq;            /* publish sequence: post the partial with this */
    uint32_t layer;          /* < n_layers */
    uint32_t n_tokens;       /* 1..max_tokens */
    uint32_t flags;          /* enum pi_exchange_flags */
    const float *x;          /* (n_tokens, n_embd) row-major */
    const uint64_t *mask;    /* (n_tokens, mask_words), NULL unless flags has PI_EXCHANGE_MASK */
};

typedef struct pi_exchange pi_exchange_t;

/* Compute the layout for params: every size overflow-checked, every parameter within the bounds
 * above. Returns 0, or -PI_ERR_INVAL (a parameter is 0 or too large) / -PI_ERR_RANGE (overflow). */
int pi_exchange_layout(const struct pi_exchange_params *p, struct pi_exchange_layout *out);

/* Create a segment for params (memfd, sealed, zeroed, header and ctl written). The creator is the
 * coordinator; the fd (close-on-exec, pi_exchange_fd) goes to the workers through pi_super_spawn's
 * keep list. Returns NULL on failure (logged). */
pi_exchange_t *pi_exchange_new(const struct pi_exchange_params *p);

/* Map an inherited exchange fd and validate it: the shm header (ipc/shm.h), then the ctl magic,
 * version and parameters, then that the section table equals the layout recomputed from those
 * parameters. On success the handle owns fd; on failure (-PI_ERR_FORMAT, -PI_ERR_UNSUPPORTED,
 * -PI_ERR_RANGE, -PI_ERR_INVAL, -PI_ERR_IO, logged) the caller still owns it. */
int pi_exchange_attach(int fd, pi_exchange_t **out);

/* Unmap and close; accepts NULL; nulls the caller's pointer. */
void pi_exchange_destroy(pi_exchange_t **p);

/* The segment fd (close-on-exec: a worker gets it through pi_super_spawn's keep list). */
int pi_exchange_fd(const pi_exchange_t *ex);

/* The validated parameters and layout (private copies, not the shared header). */
const struct pi_exchange_params *pi_exchange_params(const pi_exchange_t *ex);
const struct pi_exchange_layout *pi_exchange_get_layout(const pi_exchange_t *ex);

/* This process's waits on ex (pi_exchange_wait_publish, pi_exchange_wait_partials) spin for at least
 * ns after their spin reads before they sleep (struct pi_futex_aux's spin_ns; 0, the default: the
 * spin reads only). For a waiter whose next step is due within ns, as a serving CPU worker's next
 * layer is: a futex wake-up costs the hand-off tens of microseconds. */
void pi_exchange_set_spin_ns(pi_exchange_t *ex, int64_t ns);

/* ---- GPU worker side ---- */

/* Writable x: float32 (max_tokens, n_embd) row-major; and the mask: uint64 (max_tokens, mask_words).
 * Write only between pi_exchange_wait_partials (or start) and pi_exchange_publish. */
float *pi_exchange_x(pi_exchange_t *ex);
uint64_t *pi_exchange_mask(pi_exchange_t *ex);

/* The stats section: uint64 (n_layers, PI_EXCHANGE_STATS_FIELDS). The GPU worker writes a step's counts
 * before it answers the step; the coordinator reads them after the answer and validates each value
 * (pi_sparse_stats_add_wire). */
uint64_t *pi_exchange_stats(pi_exchange_t *ex);

/* Publish layer `layer` with n_tokens rows of x (and mask rows when flags has PI_EXCHANGE_MASK):
 * stores the step, then publish_seq+1 (seq_cst: a release store), then wakes the workers asleep
 * on it (no system call when none is).
 * Stores the new sequence in *seq. Returns 0 or -PI_ERR_INVAL (bad layer/n_tokens/flags: a caller
 * bug, logged) or -PI_ERR_IO (futex). */
int pi_exchange_publish(pi_exchange_t *ex, uint32_t layer, uint32_t n_tokens, uint32_t flags, uint32_t *seq);

/* Wait until every worker's done_seq has reached seq: spin `spin` reads per worker, then futex,
 * all within timeout_ns in total. Returns 0; -PI_ERR_TIMEOUT naming the late worker (index and pid)
 * in the log; -PI_ERR_PEER when aborted or a worker reports a sequence ahead of seq. */
int pi_exchange_wait_partials(pi_exchange_t *ex, uint32_t seq, unsigned spin, int64_t timeout_ns);

/* out (n_tokens, n_embd) += the sum of every worker's partial rows, added in worker order (so the
 * result is reproducible). Call after pi_exchange_wait_partials succeeded for this step. */
void pi_exchange_merge(const pi_exchange_t *ex, uint32_t n_tokens, float *out);

/* The sums over the workers of their step's counts (pi_exchange_set_counts), read after
 * pi_exchange_wait_partials succeeded for the step. Untrusted (another process's): the caller checks
 * kept <= pairs <= what the step could hold. */
void pi_exchange_counts(const pi_exchange_t *ex, uint64_t *kept, uint64_t *pairs);

/* ---- CPU worker side ---- */

/* Register as worker w (< n_workers): records the pid in its done line, sets done_seq to the
 * current publish_seq and returns that value in *seen (the sequence to wait beyond). Call at start,
 * and only while nothing is being published: a join during a
 * publish would mark that step done. In the pipeline the worker joins, then sends READY over the
 * control socket, and the GPU worker publishes only after the coordinator saw every READY.
 * Returns 0 or -PI_ERR_INVAL. */
int pi_exchange_join(pi_exchange_t *ex, uint32_t w, uint32_t *seen);

/* Wait for the publish after `seen` (spin, then futex, at most timeout_ns; PI_FUTEX_FOREVER allowed
 * because a worker also watches the coordinator), and fill *step with validated values. Returns 0;
 * -PI_ERR_TIMEOUT; -PI_ERR_PEER when aborted; -PI_ERR_FORMAT when the published step is corrupt
 * (sequence skipped, layer/n_tokens out of range, unknown flags), logged. */
int pi_exchange_wait_publish(pi_exchange_t *ex, uint32_t seen, unsigned spin, int64_t timeout_ns,
                             struct pi_exchange_step *step);

/* Worker w's partial slot: float32 (max_tokens, n_embd) row-major; NULL when w >= n_workers.
 * The worker writes rows 0..n_tokens-1 of the step, the GPU worker reads them after wait_partials. */
float *pi_exchange_partial(pi_exchange_t *ex, uint32_t w);

/* Declare worker w's partial for step seq complete: store done_seq (seq_cst: a release store),
 * then futex-wake the GPU worker if it sleeps. Returns 0, -PI_ERR_INVAL (w out of range) or -PI_ERR_IO. */
int pi_exchange_post_partial(pi_exchange_t *ex, uint32_t w, uint32_t seq);

/* Worker w's counts for the step it is about to post (before pi_exchange_post_partial): the (token,
 * neuron) pairs it computed and those it held. w must be valid (checked by PI_ASSERT). */
void pi_exchange_set_counts(pi_exchange_t *ex, uint32_t w, uint64_t kept, uint64_t pairs);

/* ---- supervision ---- */

/* Make every current and future wait on this segment return -PI_ERR_PEER (reason: a positive
 * enum pi_err, stored as the abort word), and wake all sleepers. Safe from any attached process. An
 * aborted segment is not used again: recovery makes new segments for the restarted workers
 * (coordinator/pipeline.c). A reset in place would let a worker from before it, still inside its
 * compute, write the slot a restarted worker of the same index owns, and nothing could tell the two
 * apart (a review reproduced it; the reset was removed). */
void pi_exchange_abort(pi_exchange_t *ex, uint32_t reason);

/* The abort word: 0 while running. */
uint32_t pi_exchange_aborted(const pi_exchange_t *ex);

#endif
