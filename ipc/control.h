/*
 * ipc/control.h - the ZeroMQ control protocol between the coordinator, the workers and pi-ctl:
 * registration, load, ready, heartbeat, error, status, shutdown, and generation requests. Control
 * only: per-layer data never crosses ZeroMQ (that is ipc/exchange.h).
 *
 * Every message is one ZeroMQ frame: a fixed 24-byte little-endian header, then a body of at most
 * PI_CTL_MAX_BODY bytes whose structure depends on the type (doc/ipc.md has the table):
 *
 *   offset size field
 *   0      4    magic       PI_CTL_MAGIC ("PICT")
 *   4      2    version     PI_CTL_VERSION
 *   6      2    type        enum pi_ctl_type
 *   8      4    body_len    bytes after the header; must equal the frame size - 24
 *   12     4    flags       reserved, 0
 *   16     8    request_id  chosen by the requester, echoed in replies (0 for unsolicited messages)
 *
 * Binary bodies are little-endian fixed-width fields; strings carry a u32 length and no NUL (an
 * embedded NUL is rejected); JSON bodies (load, status response) are one UTF-8 JSON object parsed
 * by jansson. The decoder checks magic, version, type, length and the body's structure, and says
 * which check failed (enum pi_ctl_defect), so a malformed message from a peer is rejected with a
 * precise log line and the receiver keeps serving.
 *
 * Sockets: on the worker socket the coordinator binds a ROUTER and the workers connect DEALERs (no
 * REQ/REP: a dead peer must not wedge a lockstep state machine). Every socket has linger 0 (closing
 * never blocks on a dead peer), ZMQ_MAXMSGSIZE (a peer cannot make us allocate more than one
 * frame's bound) and send/receive timeouts. Endpoints are ipc:// paths in a run directory created
 * 0700, so only our user can connect. The control socket (pi-ctl) carries the same messages on a
 * byte stream instead: ipc/control-stream.h says why and how.
 */
#ifndef PI_IPC_CONTROL_H
#define PI_IPC_CONTROL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define PI_CTL_MAGIC 0x54434950u /* "PICT" little-endian */
#define PI_CTL_VERSION 1u
#define PI_CTL_HEADER_SIZE 24u
#define PI_CTL_MAX_MSG (1u << 20) /* whole frame, header included */
#define PI_CTL_MAX_BODY (PI_CTL_MAX_MSG - PI_CTL_HEADER_SIZE)
#define PI_CTL_MAX_CORES 4096u   /* cores listed in one hello */
#define PI_CTL_MAX_JSON_DEPTH 32 /* nesting accepted in JSON bodies */

enum pi_ctl_type {
    PI_CTL_HELLO = 1,       /* worker -> coordinator: who I am */
    PI_CTL_LOAD = 2,        /* coordinator -> worker: what to load (JSON object) */
    PI_CTL_READY = 3,       /* worker -> coordinator: loaded, serving */
    PI_CTL_HEARTBEAT = 4,   /* both ways, periodically */
    PI_CTL_ERROR = 5,       /* any reply: code + text */
    PI_CTL_STATUS_REQ = 6,  /* pi-ctl -> coordinator: empty body */
    PI_CTL_STATUS_RESP = 7, /* coordinator -> pi-ctl: JSON object */
    PI_CTL_SHUTDOWN = 8,    /* pi-ctl -> coordinator, coordinator -> worker */
    PI_CTL_GENERATE = 9,    /* pi-ctl -> coordinator: a generation request */
    PI_CTL_CHUNK = 10,      /* coordinator -> pi-ctl: a piece of generated text */
    PI_CTL_END = 11,        /* coordinator -> pi-ctl: generation finished (or failed) */
    PI_CTL_AUTH = 12,       /* pi-ctl -> coordinator: the shared token (tcp: the first message) */
};
#define PI_CTL_TYPE_MAX PI_CTL_AUTH
#define PI_CTL_TOKEN_MIN 16u  /* bytes of a shared token, at least (doc/security.md) */
#define PI_CTL_TOKEN_MAX 256u /* and at most; AUTH bodies carry no more */

/* Which check a rejected message failed (pi_ctl_decode's *defect). */
enum pi_ctl_defect {
    PI_CTL_OK = 0,
    PI_CTL_BAD_MAGIC,   /* -PI_ERR_FORMAT */
    PI_CTL_BAD_VERSION, /* -PI_ERR_UNSUPPORTED */
    PI_CTL_TRUNCATED,   /* -PI_ERR_FORMAT: shorter than the header, or than body_len says */
    PI_CTL_TOO_LARGE,   /* -PI_ERR_RANGE: frame or body_len above PI_CTL_MAX_MSG */
    PI_CTL_TRAILING,    /* -PI_ERR_FORMAT: more bytes than body_len says */
    PI_CTL_BAD_TYPE,    /* -PI_ERR_UNSUPPORTED: unknown type */
    PI_CTL_BAD_FLAGS,   /* -PI_ERR_FORMAT: reserved header bits set */
    PI_CTL_BAD_BODY,    /* -PI_ERR_FORMAT: body inconsistent with its type */
};

/* Worker roles (hello). */
enum pi_ctl_role {
    PI_ROLE_COORDINATOR = 1,
    PI_ROLE_GPU_WORKER = 2,
    PI_ROLE_CPU_WORKER = 3,
    PI_ROLE_CTL = 4,
};

/* Wire body of HELLO: role u32, pid u32, numa_node i32, worker_index u32, proto_version u32,
 * n_cores u32, then n_cores x u32 core ids. */
struct pi_ctl_hello {
    uint32_t role;          /* enum pi_ctl_role */
    uint32_t pid;
    int32_t numa_node;      /* -1: not bound */
    uint32_t worker_index;  /* CPU worker index; 0 for others */
    uint32_t proto_version; /* the sender's PI_CTL_VERSION (also in every header) */
    uint32_t n_cores;       /* <= PI_CTL_MAX_CORES */
    uint32_t *cores;        /* [n_cores] OS cpu ids; owned by the message */
};

/* READY: worker_index u32, pad u32, neurons u64 (neurons owned, summed over layers), mem_bytes u64. */
struct pi_ctl_ready {
    uint32_t worker_index;
    uint64_t neurons;
    uint64_t mem_bytes;
};

/* HEARTBEAT: seq u64, uptime_ms u64, state u32 (sender-defined), pad u32. */
struct pi_ctl_heartbeat {
    uint64_t seq;
    uint64_t uptime_ms;
    uint32_t state;
};

/* ERROR: code i32 (a negative enum pi_err), text_len u32, text. Also END's reason. */
struct pi_ctl_error {
    int32_t code;
    char *text; /* NUL-terminated copy; owned by the message */
};

/* SHUTDOWN: flags u32 (PI_CTL_SHUTDOWN_NOW: do not finish in-flight requests). */
#define PI_CTL_SHUTDOWN_NOW 1u
struct pi_ctl_shutdown {
    uint32_t flags;
};

/* GENERATE: n_predict u32, defaults u32, seed u64, temp f32 (finite, >= 0), prompt_len u32, prompt
 * (UTF-8 bytes, no NUL). defaults: the fields the client leaves to the coordinator's [generate] keys
 * (their wire values are then 0 and ignored); a client of the first protocol sends 0, every field
 * its own, which stays valid. Other bits are a malformed body. */
#define PI_CTL_GEN_DEFAULT_N_PREDICT 1u
#define PI_CTL_GEN_DEFAULT_SEED 2u
#define PI_CTL_GEN_DEFAULT_TEMP 4u
#define PI_CTL_GEN_DEFAULT_ALL 7u
struct pi_ctl_generate {
    uint32_t n_predict;
    uint32_t defaults; /* PI_CTL_GEN_DEFAULT_* bits */
    uint64_t seed;
    float temp;
    char *prompt; /* NUL-terminated copy; owned */
};

/* CHUNK: the body is the text itself (no NUL). */
struct pi_ctl_chunk {
    char *text; /* owned */
};

/* END: status i32 (0 or a negative enum pi_err), n_prompt u32, n_generated u32, reason_len u32,
 * reason. */
struct pi_ctl_end {
    int32_t status;
    uint32_t n_prompt;
    uint32_t n_generated;
    char *reason; /* owned; "" on success */
};

/* AUTH: token_len u32, token (PI_CTL_TOKEN_MIN..PI_CTL_TOKEN_MAX bytes, no NUL). */
struct pi_ctl_auth {
    char *token; /* owned */
};

/* A decoded (or to-be-encoded) message. Owned pointers are freed by pi_ctl_msg_clear. */
struct pi_ctl_msg {
    uint16_t type;       /* enum pi_ctl_type */
    uint64_t request_id;
    union {
        struct pi_ctl_hello hello;
        struct pi_ctl_ready ready;
        struct pi_ctl_heartbeat heartbeat;
        struct pi_ctl_error error;
        struct pi_ctl_shutdown shutdown;
        struct pi_ctl_generate generate;
        struct pi_ctl_chunk chunk;
        struct pi_ctl_end end;
        struct pi_ctl_auth auth;
        json_t *json; /* LOAD and STATUS_RESP: an object; the message holds one reference */
    } u;
};

/* Name of a message type ("hello", ...) or "unknown"; of a defect ("bad magic", ...). */
const char *pi_ctl_type_name(unsigned type);
const char *pi_ctl_defect_name(enum pi_ctl_defect d);

/* Free what msg owns (strings, cores, JSON reference) and zero it. Accepts a zeroed msg. */
void pi_ctl_msg_clear(struct pi_ctl_msg *msg);

/* Encode msg into a new buffer (*buf, caller frees; *len bytes). Returns 0, or -PI_ERR_INVAL
 * (unknown type, a field out of range, JSON not an object), -PI_ERR_RANGE (over PI_CTL_MAX_MSG),
 * -PI_ERR_NOMEM; logged. */
int pi_ctl_encode(const struct pi_ctl_msg *msg, uint8_t **buf, size_t *len);

/* Decode len bytes into *msg (zeroed first; on success the caller clears it). Returns 0 or a
 * negative enum pi_err with *defect (may be NULL) saying which check failed (see enum
 * pi_ctl_defect); a rejection is logged as a warning naming the defect. */
int pi_ctl_decode(const uint8_t *buf, size_t len, struct pi_ctl_msg *msg, enum pi_ctl_defect *defect);

/* The size of the whole message (header and body) whose 24-byte header is hdr, checked as far as a
 * header can be (magic, version, flags, type, body_len <= PI_CTL_MAX_BODY): what a reader of a byte
 * stream needs to know where a message ends before it holds the message. Returns 0 and *total, or
 * the decoder's error and *defect; nothing is logged. */
int pi_ctl_frame_size(const uint8_t *hdr, size_t *total, enum pi_ctl_defect *defect);

/* A warning about what a peer sent (a malformed or unexpected message), rate-limited for the whole
 * process: at most PI_CTL_WARN_BURST lines per second, so a flood of bad messages cannot become a
 * flood of log lines; the first warning after a suppression is preceded by a line counting the
 * suppressed ones. Thread-safe. */
#define PI_CTL_WARN_BURST 10
void pi_ctl_peer_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- sockets ---- */

/* A socket of ZMQ type `type` on ctx with linger 0, ZMQ_MAXMSGSIZE = PI_CTL_MAX_MSG, and send and
 * receive timeouts of timeout_ms (-1: block). Returns the socket or NULL (logged). */
void *pi_ctl_socket(void *ctx, int type, int timeout_ms);

/* Bind / connect with the endpoint in the log line on failure. Return 0 or -PI_ERR_IO. */
int pi_ctl_bind(void *sock, const char *endpoint);
int pi_ctl_connect(void *sock, const char *endpoint);

/* Close a socket (linger 0: never blocks); accepts NULL; nulls the caller's pointer. */
void pi_ctl_close(void **sock);

/* Send msg as one frame, preceded by a routing-id frame when id != NULL (ROUTER side). Returns 0,
 * -PI_ERR_TIMEOUT (send timeout), -PI_ERR_PEER (ROUTER: no peer with that id is connected), both
 * left to the caller to log, -PI_ERR_IO (logged), or the encoder's error (logged). */
int pi_ctl_send(void *sock, const void *id, size_t id_len, const struct pi_ctl_msg *msg);

/* Receive one message. With id != NULL (ROUTER side) the first frame is the peer's routing id,
 * copied into id (at most *id_len bytes; *id_len is set to its length). A message of any other
 * shape (extra or missing frames) is drained and rejected with -PI_ERR_FORMAT. Returns 0,
 * -PI_ERR_TIMEOUT when nothing arrived within the socket's timeout, -PI_ERR_IO, or the decoder's
 * error (the message was consumed: the caller may go on receiving). */
int pi_ctl_recv(void *sock, void *id, size_t *id_len, struct pi_ctl_msg *msg, enum pi_ctl_defect *defect);

/* ---- run directory ---- */

/* Create a fresh private run directory "<parent>/pinfer.XXXXXX" (mode 0700, via mkdtemp) and write
 * its path into out. parent NULL or "": $XDG_RUNTIME_DIR, else $TMPDIR, else /tmp; a given parent
 * must exist. The path is kept
 * short enough that "<dir>/<name>.sock" fits in a unix socket address. Returns 0, -PI_ERR_RANGE
 * (path too long), -PI_ERR_IO (logged). */
int pi_rundir_create(const char *parent, char *out, size_t out_len);

/* Write "ipc://<rundir>/<name>.sock" into out. Returns 0, or -PI_ERR_RANGE when it does not fit in
 * out or the socket path exceeds the unix socket limit (107 bytes). */
int pi_ctl_endpoint(const char *rundir, const char *name, char *out, size_t out_len);

/* Remove the socket files ("*.sock") in rundir and the directory itself. Only sockets are removed:
 * a file of another kind under a .sock name stays, like any foreign file, and the directory with it.
 * Returns 0 or -PI_ERR_IO (logged; e.g. a foreign file left in it). */
int pi_rundir_remove(const char *rundir);

/* Remove what coordinators killed before their clean-up left in the parent directory open as
 * parent_fd (named parent in log lines): each "pinfer.*" directory of ours whose workers.sock nobody
 * listens on any more, or that is empty and older than a minute (younger ones may be a starting
 * coordinator's). Only sockets and the directory itself are removed, relative to parent_fd, never
 * following a symlink; one in use, or holding anything else, is left. Returns how many were removed;
 * each is logged. */
int pi_rundir_sweep(int parent_fd, const char *parent);

#endif
