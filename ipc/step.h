/*
 * ipc/step.h - the step channel between pi-coordinator and pi-gpu-worker: one sealed memfd
 * segment (ipc/shm.h) through which the coordinator hands the GPU worker one batch at a time
 * (token ids, each token's sequence and position, the rows whose logits it wants) and gets those
 * logits back.
 *
 * DESIGN: one request in flight at a time, a strict ping-pong:
 *   coordinator: write the request fields and arrays -> req_seq+1 (release) -> futex wake
 *   GPU worker:  wait req_seq -> copy and validate -> compute -> write logits and status ->
 *                resp_seq = req_seq (release)
 *   coordinator: wait resp_seq (with a timeout and the abort word) -> read status and logits
 * The segment carries the request's parameters in atomics written before req_seq; the worker copies
 * every array out of the segment once and validates the copies (command, counts, token ids, sequence
 * ids, positions, row list) before it uses them, and the coordinator trusts only the bounded logits
 * region of a response. A batch (version 2) mixes sequences, for continuous batching (issue 19).
 *
 * Layout (sections of the shm table):
 *   0 ctl     struct pi_step_ctl
 *   1 tokens  int32 (max_tokens): EVAL's token ids
 *   2 seq     int32 (max_tokens): EVAL's sequence id of each token, < n_seq
 *   3 pos     int32 (max_tokens): EVAL's position of each token
 *   4 rows    int32 (max_tokens): EVAL's rows whose logits are wanted, n_rows of them, strictly
 *             increasing, each < n_tokens
 *   5 logits  float32 (max_tokens, n_vocab) row-major: row k = the logits of batch row rows[k]
 *
 * An EVAL batch's rules, checked by the GPU worker (a request that breaks one is answered with an
 * error status, never a crash): 1 <= n_tokens <= max_tokens; each token id < n_vocab; each sequence
 * id < n_seq; the tokens of one sequence at consecutive positions in batch order (other sequences'
 * tokens may come between), each >= 0; n_rows <= n_tokens with the rows as above. That the first
 * position of each sequence is its cached length is the backend's check (compute/backend.h, begin).
 */
#ifndef PI_IPC_STEP_H
#define PI_IPC_STEP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PI_STEP_MAGIC 0x50545350u /* "PSTP" little-endian */
#define PI_STEP_VERSION 2u        /* 2: per-token sequences and positions, the row list, RESET */
#define PI_STEP_SHM_KIND 0x100u   /* pi_shm_header.kind of a step segment */
#define PI_STEP_MAX_TOKENS 4096u
#define PI_STEP_MAX_VOCAB (1u << 22)
#define PI_STEP_MAX_SEQ 1024u /* sequences a worker's cache may hold (pi-gpu-worker --n-seq) */
#define PI_STEP_SECTIONS 6u

enum pi_step_cmd {
    PI_STEP_EVAL = 1,     /* run the batch (n_tokens rows), return the logits of its n_rows rows */
    PI_STEP_TRUNCATE = 2, /* keep the first `keep` positions of sequence seq */
    PI_STEP_STOP = 3,     /* exit cleanly */
    PI_STEP_RESET = 4,    /* forget every sequence */
};

struct pi_step_ctl {
    uint32_t magic;      /* PI_STEP_MAGIC */
    uint32_t version;    /* PI_STEP_VERSION */
    uint32_t max_tokens; /* rows of tokens, seq, pos, rows and logits */
    uint32_t n_vocab;    /* elements of one logits row */
    uint32_t n_seq;      /* sequences of the worker's cache: every seq id is below it */
    uint8_t pad0[44];
    /* line 1: the request, written by the coordinator before req_seq */
    _Alignas(64) _Atomic uint32_t cmd;
    _Atomic uint32_t seq;      /* TRUNCATE: the sequence */
    _Atomic uint32_t n_tokens; /* EVAL: rows of the batch */
    _Atomic uint32_t keep;     /* TRUNCATE: positions kept */
    _Atomic uint32_t n_rows;   /* EVAL: logits rows wanted (0 = none, up to n_tokens) */
    /* line 2: +1 per request (coordinator, release), futex-woken */
    _Alignas(64) _Atomic uint32_t req_seq;
    /* line 3: = req_seq when the response is complete (GPU worker, release), futex-woken */
    _Alignas(64) _Atomic uint32_t resp_seq;
    _Atomic int32_t status; /* 0 or a negative enum pi_err, written before resp_seq */
    /* line 4: non-zero = stop waiting (set by the coordinator's supervisor) */
    _Alignas(64) _Atomic uint32_t abort;
};
_Static_assert(sizeof(struct pi_step_ctl) == 320, "pi_step_ctl is 5 cache lines");
_Static_assert(offsetof(struct pi_step_ctl, n_seq) == 16, "n_seq on line 0");
_Static_assert(offsetof(struct pi_step_ctl, cmd) == 64, "request on line 1");
_Static_assert(offsetof(struct pi_step_ctl, req_seq) == 128, "req_seq on line 2");
_Static_assert(offsetof(struct pi_step_ctl, resp_seq) == 192, "resp_seq on line 3");
_Static_assert(offsetof(struct pi_step_ctl, abort) == 256, "abort on line 4");

/* An EVAL batch as the coordinator hands it over: tokens, seq, pos (n_tokens), rows (n_rows; NULL
 * when n_rows is 0). */
struct pi_step_batch {
    const int32_t *tokens, *seq, *pos;
    uint32_t n_tokens;
    const int32_t *rows;
    uint32_t n_rows;
};

/* A request as the GPU worker sees it, validated (the rules above). */
struct pi_step_req {
    uint32_t id;       /* req_seq: answer with pi_step_respond(id, ...) */
    uint32_t cmd;      /* enum pi_step_cmd */
    uint32_t seq;      /* TRUNCATE: < n_seq */
    uint32_t keep;     /* TRUNCATE: <= INT32_MAX (the backend checks it against the sequence's length) */
    uint32_t n_tokens; /* EVAL: 1..max_tokens */
    uint32_t n_rows;   /* EVAL: <= n_tokens */
    /* EVAL: private copies, valid until the next wait: tokens, seq, pos (n_tokens), rows (n_rows) */
    const int32_t *tokens, *seqs, *pos, *rows;
};

typedef struct pi_step pi_step_t;

/* Create a step segment (coordinator) for batches of max_tokens rows over n_vocab logits and a cache
 * of n_seq sequences. NULL on failure or out-of-bounds sizes (logged). */
pi_step_t *pi_step_new(uint32_t max_tokens, uint32_t n_vocab, uint32_t n_seq);

/* Map an inherited step fd (GPU worker), validating the shm header and the ctl line 0 against the
 * section sizes. On success the handle owns fd; on a failure after the mapping succeeded fd is closed
 * (the worker exits on any failure here). 0 or a negative pi_err (logged). */
int pi_step_attach(int fd, pi_step_t **out);

void pi_step_destroy(pi_step_t **s);

/* The segment's fd as it is (close-on-exec: pass it to pi_super_spawn's keep list). */
int pi_step_fd(const pi_step_t *s);

uint32_t pi_step_max_tokens(const pi_step_t *s);
uint32_t pi_step_n_vocab(const pi_step_t *s);
uint32_t pi_step_n_seq(const pi_step_t *s);

/* Logits region: float32 (max_tokens, n_vocab). */
float *pi_step_logits(pi_step_t *s);

/* ---- coordinator side ---- */

/* Send one EVAL request and wait for its response, at most timeout_ns in total (PI_FUTEX_FOREVER: no
 * bound) and until the abort word is set. Only the sizes are checked here (n_tokens <= max_tokens,
 * n_rows <= n_tokens: else -PI_ERR_RANGE, nothing sent); the worker checks the rest. On success the
 * first n_rows rows of pi_step_logits hold the logits of the rows asked for. Returns the worker's
 * status (0 or a negative pi_err), -PI_ERR_TIMEOUT or -PI_ERR_PEER (aborted: the worker died). */
int pi_step_eval(pi_step_t *s, const struct pi_step_batch *b, int64_t timeout_ns);

/* Check batch b against the rules above for a segment of max_tokens rows, n_vocab logits and n_seq
 * sequences (the checks pi_step_wait applies, for a sender that wants its own errors first). next
 * (n_seq) is scratch. 0, -PI_ERR_INVAL (a size, token id or row list) or -PI_ERR_RANGE (a sequence id
 * or position), logged. */
int pi_step_batch_check(const struct pi_step_batch *b, uint32_t max_tokens, uint32_t n_vocab, uint32_t n_seq,
                        int64_t *next);

/* The same for TRUNCATE (seq, keep), RESET and STOP (seq and keep 0). */
int pi_step_call(pi_step_t *s, uint32_t cmd, uint32_t seq, uint32_t keep, int64_t timeout_ns);

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
