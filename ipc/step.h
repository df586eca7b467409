/*
 * ipc/step.h - the step channel between pi-coordinator and pi-gpu-worker: one sealed memfd
 * segment (ipc/shm.h) through which the coordinator hands the GPU worker one batch at a time
 * (token ids, sequence, positions) and gets the logits back.
 *
 * One request in flight at a time, a strict ping-pong:
 *   coordinator: write the request fields and tokens -> req_seq+1 (release) -> futex wake
 *   GPU worker:  wait req_seq -> compute -> write logits and status -> resp_seq = req_seq (release)
 *   coordinator: wait resp_seq (with a timeout and the abort word) -> read status and logits
 * The segment carries the request's parameters in atomics written before req_seq; the worker
 * validates every one (command, counts, positions) before it uses it, and the coordinator trusts
 * only the bounded logits region of a response.
 *
 * Layout (sections of the shm table):
 *   0 ctl     struct pi_step_ctl
 *   1 tokens  int32 (max_tokens)
 *   2 logits  float32 (max_tokens, n_vocab) row-major
 */
#ifndef PI_IPC_STEP_H
#define PI_IPC_STEP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PI_STEP_MAGIC 0x50545350u /* "PSTP" little-endian */
#define PI_STEP_VERSION 1u
#define PI_STEP_SHM_KIND 0x100u    /* pi_shm_header.kind of a step segment */
#define PI_STEP_MAX_TOKENS 4096u
#define PI_STEP_MAX_VOCAB (1u << 22)

enum pi_step_cmd {
    PI_STEP_EVAL = 1,     /* run tokens of seq at pos0..pos0+n-1, return the last n_out rows of logits */
    PI_STEP_TRUNCATE = 2, /* truncate seq's cache to pos0 positions */
    PI_STEP_STOP = 3,     /* exit cleanly */
};

struct pi_step_ctl {
    uint32_t magic;      /* PI_STEP_MAGIC */
    uint32_t version;    /* PI_STEP_VERSION */
    uint32_t max_tokens; /* rows of tokens and logits */
    uint32_t n_vocab;    /* elements of one logits row */
    uint8_t pad0[48];
    /* line 1: the request, written by the coordinator before req_seq */
    _Alignas(64) _Atomic uint32_t cmd;
    _Atomic uint32_t seq;     /* sequence id in the worker's cache */
    _Atomic uint32_t n_tokens;
    _Atomic uint32_t pos0;
    _Atomic uint32_t n_out;   /* logits rows wanted (0 = none, up to n_tokens) */
    /* line 2: +1 per request (coordinator, release), futex-woken */
    _Alignas(64) _Atomic uint32_t req_seq;
    /* line 3: = req_seq when the response is complete (GPU worker, release), futex-woken */
    _Alignas(64) _Atomic uint32_t resp_seq;
    _Atomic int32_t status;   /* 0 or a negative enum pi_err, written before resp_seq */
    /* line 4: non-zero = stop waiting (set by the coordinator's supervisor) */
    _Alignas(64) _Atomic uint32_t abort;
};
_Static_assert(sizeof(struct pi_step_ctl) == 320, "pi_step_ctl is 5 cache lines");
_Static_assert(offsetof(struct pi_step_ctl, cmd) == 64, "request on line 1");
_Static_assert(offsetof(struct pi_step_ctl, req_seq) == 128, "req_seq on line 2");
_Static_assert(offsetof(struct pi_step_ctl, resp_seq) == 192, "resp_seq on line 3");
_Static_assert(offsetof(struct pi_step_ctl, abort) == 256, "abort on line 4");

/* A request as the GPU worker sees it, validated. */
struct pi_step_req {
    uint32_t id;        /* req_seq: answer with pi_step_respond(id, ...) */
    uint32_t cmd;       /* enum pi_step_cmd */
    uint32_t seq;
    uint32_t n_tokens;  /* 1..max_tokens for EVAL */
    uint32_t pos0;
    uint32_t n_out;     /* <= n_tokens */
    const int32_t *tokens; /* (n_tokens): a private copy, each id < n_vocab; valid until the next wait */
};

typedef struct pi_step pi_step_t;

/* Create a step segment (coordinator). NULL on failure or out-of-bounds sizes (logged). */
pi_step_t *pi_step_new(uint32_t max_tokens, uint32_t n_vocab);

/* Map an inherited step fd (GPU worker), validating the shm header and the ctl line 0 against the
 * section sizes. On success the handle owns fd; on a failure after the mapping succeeded fd is closed
 * (the worker exits on any failure here). 0 or a negative pi_err (logged). */
int pi_step_attach(int fd, pi_step_t **out);

void pi_step_destroy(pi_step_t **s);

/* The segment's fd as it is (close-on-exec: pass it to pi_super_spawn's keep list). */
int pi_step_fd(const pi_step_t *s);

uint32_t pi_step_max_tokens(const pi_step_t *s);
uint32_t pi_step_n_vocab(const pi_step_t *s);

/* Logits region: float32 (max_tokens, n_vocab). */
float *pi_step_logits(pi_step_t *s);

/* ---- coordinator side ---- */

/* Send one request and wait for its response, at most timeout_ns in total (PI_FUTEX_FOREVER: no
 * bound) and until the abort word is set. tokens (n_tokens) may be NULL for TRUNCATE/STOP. On
 * success the first n_out rows of pi_step_logits hold the logits. Returns the worker's status (0 or
 * a negative pi_err), -PI_ERR_TIMEOUT or -PI_ERR_PEER (aborted: the worker died). */
int pi_step_call(pi_step_t *s, uint32_t cmd, uint32_t seq, const int32_t *tokens, uint32_t n_tokens,
                 uint32_t pos0, uint32_t n_out, int64_t timeout_ns);

/* Make a pending or future pi_step_call return -PI_ERR_PEER; clear with pi_step_clear_abort. */
void pi_step_abort(pi_step_t *s);
void pi_step_clear_abort(pi_step_t *s);

/* ---- GPU worker side ---- */

/* Wait for the request after the last one answered (spin, then futex, at most timeout_ns), and
 * validate it into *req. 0, -PI_ERR_TIMEOUT, or -PI_ERR_FORMAT for a corrupt request (logged; answer
 * it with an error status all the same so the coordinator does not wait forever). */
int pi_step_wait(pi_step_t *s, int64_t timeout_ns, struct pi_step_req *req);

/* Answer request id with status (0 or a negative pi_err). */
void pi_step_respond(pi_step_t *s, uint32_t id, int32_t status);

#endif
