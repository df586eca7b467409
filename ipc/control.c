/*
 * ipc/control.c - the control protocol's codec, its ZeroMQ socket helpers and the run directory
 * (see ipc/control.h for the wire format and doc/ipc.md for the message table).
 *
 * DESIGN: the codec is pure (bytes in, struct out) so that every malformed input can be tested
 * without sockets. Decoding validates in a fixed order - length against the header size, magic,
 * version, reserved flags, type, body_len against the frame and PI_CTL_MAX_MSG, then the body -
 * and every body reader is bounds-checked by struct rd: a read past the end sets rd.bad instead of
 * touching memory, and each body decoder finishes by requiring that it consumed exactly body_len
 * bytes. Strings are copied out (NUL-terminated) and rejected if they contain a NUL, so no string
 * in a decoded message can be cut short or run past its buffer.
 *
 * Ordering over ZeroMQ needs no argument of its own: one socket pair delivers frames in order, and
 * a reply names its request by request_id, so a late reply to an abandoned request is recognised
 * and dropped by the requester. Sockets never linger (linger 0): a process exits at once even when
 * its peer is gone, which is what a crash-only worker needs.
 */
#include "config.h"

#include "ipc/control.h"

#include "lib/common.h"
#include "lib/log.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <zmq.h>

#define PI_CTL_MAX_PREDICT 1000000u /* tokens one generate request may ask for */
#define PI_CTL_MAX_TEMP 100.0f
#define PI_UNIX_PATH_MAX 107u       /* sizeof(sockaddr_un.sun_path) - 1 */

static const char *const type_names[] = {
    "unknown",         "hello",    "load",     "ready", "heartbeat", "error", "status-request",
    "status-response", "shutdown", "generate", "chunk", "end",       "auth",
};
_Static_assert(sizeof type_names / sizeof type_names[0] == PI_CTL_TYPE_MAX + 1, "a name per type");

static const char *const defect_names[] = {
    "ok", "bad magic", "bad version", "truncated", "too large", "trailing bytes", "unknown type",
    "reserved flags set", "inconsistent body",
};

const char *pi_ctl_type_name(unsigned type) { return type <= PI_CTL_TYPE_MAX ? type_names[type] : "unknown"; }

const char *pi_ctl_defect_name(enum pi_ctl_defect d)
{
    return (unsigned)d < PI_ARRAY_LEN(defect_names) ? defect_names[d] : "unknown defect";
}

void pi_ctl_msg_clear(struct pi_ctl_msg *m)
{
    switch (m->type) {
    case PI_CTL_HELLO: free(m->u.hello.cores); break;
    case PI_CTL_ERROR: free(m->u.error.text); break;
    case PI_CTL_GENERATE: free(m->u.generate.prompt); break;
    case PI_CTL_CHUNK: free(m->u.chunk.text); break;
    case PI_CTL_END: free(m->u.end.reason); break;
    case PI_CTL_AUTH: free(m->u.auth.token); break;
    case PI_CTL_LOAD:
    case PI_CTL_STATUS_RESP: json_decref(m->u.json); break;
    default: break;
    }
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- rate-limited peer warnings */

/* One window of a second for the whole process (any thread: the coordinator's main thread and the
 * supervisor both decode peers' messages). The mutex only guards three counters; the line itself is
 * written outside it. */
static pthread_mutex_t warn_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t warn_window_ns = INT64_MIN; /* start of the current window */
static unsigned warn_lines;                /* lines written in it */
static uint64_t warn_dropped;              /* lines suppressed since the last report */

static int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

void pi_ctl_peer_warn(const char *fmt, ...)
{
    const int64_t now = mono_ns();
    uint64_t report = 0;
    bool emit;
    pthread_mutex_lock(&warn_mu);
    if (warn_window_ns == INT64_MIN || now - warn_window_ns >= 1000000000) {
        warn_window_ns = now;
        warn_lines = 0;
    }
    emit = warn_lines < PI_CTL_WARN_BURST;
    if (emit) {
        warn_lines++;
        report = warn_dropped;
        warn_dropped = 0;
    } else {
        warn_dropped++;
    }
    pthread_mutex_unlock(&warn_mu);
    if (!emit) return;
    if (report)
        pi_warn("control: %llu more warnings about peers' messages were suppressed (at most %u a second)",
                (unsigned long long)report, PI_CTL_WARN_BURST);
    va_list ap;
    va_start(ap, fmt);
    pi_logv(PI_LOG_WARN, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- little-endian writer */

struct wr {
    uint8_t *p;
    size_t len, cap;
    int err; /* first failure: -PI_ERR_NOMEM or -PI_ERR_RANGE */
};

/* Append n bytes. The writer never produces a frame the peer's decoder (or ZMQ_MAXMSGSIZE) would
 * refuse: growing past PI_CTL_MAX_MSG is an error here, at the sender, where it is a bug. */
static void wr_bytes(struct wr *w, const void *src, size_t n)
{
    if (w->err) return;
    if (n > PI_CTL_MAX_MSG - w->len) {
        w->err = -PI_ERR_RANGE;
        return;
    }
    if (w->len + n > w->cap) {
        size_t cap = PI_MAX(w->cap * 2, w->len + n + 64);
        uint8_t *np = realloc(w->p, cap);
        if (!np) {
            w->err = -PI_ERR_NOMEM;
            return;
        }
        w->p = np;
        w->cap = cap;
    }
    if (n) memcpy(w->p + w->len, src, n);
    w->len += n;
}

/* Explicit little-endian byte order, independent of the host's: the wire format is fixed. */
static void wr_u16(struct wr *w, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    wr_bytes(w, b, 2);
}

static void wr_u32(struct wr *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    wr_bytes(w, b, 4);
}

static void wr_u64(struct wr *w, uint64_t v)
{
    wr_u32(w, (uint32_t)v);
    wr_u32(w, (uint32_t)(v >> 32));
}

static void wr_f32(struct wr *w, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    wr_u32(w, v);
}

/* A u32 length then the bytes of s (NULL = ""), or the bytes only when !with_len. */
static void wr_str(struct wr *w, const char *s, int with_len)
{
    size_t n = s ? strlen(s) : 0;
    if (n > PI_CTL_MAX_BODY) {
        w->err = -PI_ERR_RANGE;
        return;
    }
    if (with_len) wr_u32(w, (uint32_t)n);
    wr_bytes(w, s, n);
}

/* ---------------------------------------------------------------- bounds-checked reader */

struct rd {
    const uint8_t *p;
    size_t len, pos;
    int bad; /* set by any read past the end */
};

static const uint8_t *rd_take(struct rd *r, size_t n)
{
    const uint8_t *q;
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        return NULL;
    }
    q = r->p + r->pos;
    r->pos += n;
    return q;
}

static uint16_t rd_u16(struct rd *r)
{
    const uint8_t *b = rd_take(r, 2);
    return b ? (uint16_t)(b[0] | b[1] << 8) : 0;
}

static uint32_t rd_u32(struct rd *r)
{
    const uint8_t *b = rd_take(r, 4);
    return b ? (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24 : 0;
}

static uint64_t rd_u64(struct rd *r)
{
    uint64_t lo = rd_u32(r);
    return lo | (uint64_t)rd_u32(r) << 32;
}

static float rd_f32(struct rd *r)
{
    uint32_t v = rd_u32(r);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

/* Copy n bytes into a new NUL-terminated string; NULL (and r->bad) if short or containing NUL. */
static char *rd_str(struct rd *r, size_t n)
{
    const uint8_t *b = rd_take(r, n);
    char *s;
    if (!b || memchr(b, 0, n)) {
        r->bad = 1;
        return NULL;
    }
    s = malloc(n + 1);
    if (!s) {
        r->bad = 1;
        return NULL;
    }
    memcpy(s, b, n);
    s[n] = '\0';
    return s;
}

/* A u32 length then that many bytes, which must be the rest of the body. */
static char *rd_str_rest(struct rd *r)
{
    uint32_t n = rd_u32(r);
    if (r->bad || n != r->len - r->pos) {
        r->bad = 1;
        return NULL;
    }
    return rd_str(r, n);
}

/* ---------------------------------------------------------------- encoder */

/* Bound the nesting of JSON bodies: whoever walks a decoded tree recursively (status printers,
 * pi-ctl) must not be made to recurse deeply by a peer. */
static int json_depth_ok(json_t *j, int depth)
{
    const char *key;
    json_t *v;
    size_t i;
    if (depth > PI_CTL_MAX_JSON_DEPTH) return 0;
    if (json_is_object(j)) {
        json_object_foreach(j, key, v) if (!json_depth_ok(v, depth + 1)) return 0;
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v) if (!json_depth_ok(v, depth + 1)) return 0;
    }
    return 1;
}

/* Append the body of m; returns 0 or -PI_ERR_INVAL for a field out of its documented range. */
static int encode_body(struct wr *w, const struct pi_ctl_msg *m)
{
    const struct pi_ctl_hello *h = &m->u.hello;
    char *js;
    switch (m->type) {
    case PI_CTL_HELLO:
        /* The decoder's checks, so that a bad hello fails at its sender, not at the coordinator. */
        if (h->role < PI_ROLE_COORDINATOR || h->role > PI_ROLE_CTL || h->numa_node < -1 ||
            h->proto_version != PI_CTL_VERSION || h->n_cores > PI_CTL_MAX_CORES || (h->n_cores && !h->cores))
            return -PI_ERR_INVAL;
        wr_u32(w, h->role);
        wr_u32(w, h->pid);
        wr_u32(w, (uint32_t)h->numa_node);
        wr_u32(w, h->worker_index);
        wr_u32(w, h->proto_version);
        wr_u32(w, h->n_cores);
        for (uint32_t i = 0; i < h->n_cores; i++) wr_u32(w, h->cores[i]);
        return 0;
    case PI_CTL_LOAD:
    case PI_CTL_STATUS_RESP:
        /* The body is the JSON text itself, without a length: body_len delimits it. */
        if (!json_is_object(m->u.json) || !json_depth_ok(m->u.json, 1)) return -PI_ERR_INVAL;
        js = json_dumps(m->u.json, JSON_COMPACT);
        if (!js) return -PI_ERR_NOMEM;
        wr_str(w, js, 0);
        free(js);
        return 0;
    case PI_CTL_READY:
        /* Pad words keep the u64 fields 8-aligned within the body and must be 0 (checked). */
        wr_u32(w, m->u.ready.worker_index);
        wr_u32(w, 0);
        wr_u64(w, m->u.ready.neurons);
        wr_u64(w, m->u.ready.mem_bytes);
        return 0;
    case PI_CTL_HEARTBEAT:
        wr_u64(w, m->u.heartbeat.seq);
        wr_u64(w, m->u.heartbeat.uptime_ms);
        wr_u32(w, m->u.heartbeat.state);
        wr_u32(w, 0);
        return 0;
    case PI_CTL_ERROR:
        if (m->u.error.code >= 0) return -PI_ERR_INVAL;
        wr_u32(w, (uint32_t)m->u.error.code);
        wr_str(w, m->u.error.text, 1);
        return 0;
    case PI_CTL_STATUS_REQ: return 0;
    case PI_CTL_SHUTDOWN:
        if (m->u.shutdown.flags & ~PI_CTL_SHUTDOWN_NOW) return -PI_ERR_INVAL;
        wr_u32(w, m->u.shutdown.flags);
        return 0;
    case PI_CTL_GENERATE:
        if (m->u.generate.n_predict > PI_CTL_MAX_PREDICT || !isfinite(m->u.generate.temp) ||
            m->u.generate.temp < 0 || m->u.generate.temp > PI_CTL_MAX_TEMP ||
            (m->u.generate.defaults & ~PI_CTL_GEN_DEFAULT_ALL))
            return -PI_ERR_INVAL;
        wr_u32(w, m->u.generate.n_predict);
        wr_u32(w, m->u.generate.defaults);
        wr_u64(w, m->u.generate.seed);
        wr_f32(w, m->u.generate.temp);
        wr_str(w, m->u.generate.prompt, 1);
        return 0;
    case PI_CTL_CHUNK: wr_str(w, m->u.chunk.text, 0); return 0;
    case PI_CTL_END:
        if (m->u.end.status > 0) return -PI_ERR_INVAL;
        wr_u32(w, (uint32_t)m->u.end.status);
        wr_u32(w, m->u.end.n_prompt);
        wr_u32(w, m->u.end.n_generated);
        wr_str(w, m->u.end.reason, 1);
        return 0;
    case PI_CTL_AUTH: {
        size_t n = m->u.auth.token ? strlen(m->u.auth.token) : 0;
        if (n < PI_CTL_TOKEN_MIN || n > PI_CTL_TOKEN_MAX) return -PI_ERR_INVAL;
        wr_str(w, m->u.auth.token, 1);
        return 0;
    }
    default: return -PI_ERR_INVAL;
    }
}

int pi_ctl_encode(const struct pi_ctl_msg *m, uint8_t **buf, size_t *len)
{
    struct wr w = {0};
    int rc;
    *buf = NULL;
    *len = 0;
    wr_u32(&w, PI_CTL_MAGIC);
    wr_u16(&w, PI_CTL_VERSION);
    wr_u16(&w, m->type);
    wr_u32(&w, 0); /* body_len, patched below */
    wr_u32(&w, 0); /* flags */
    wr_u64(&w, m->request_id);
    rc = encode_body(&w, m);
    if (rc == 0) rc = w.err;
    if (rc < 0) {
        pi_error("control: cannot encode %s message: %s", pi_ctl_type_name(m->type), pi_err_str(rc));
        free(w.p);
        return rc;
    }
    {
        uint32_t body = (uint32_t)(w.len - PI_CTL_HEADER_SIZE);
        uint8_t b[4] = {(uint8_t)body, (uint8_t)(body >> 8), (uint8_t)(body >> 16), (uint8_t)(body >> 24)};
        memcpy(w.p + 8, b, 4);
    }
    *buf = w.p;
    *len = w.len;
    return 0;
}

/* ---------------------------------------------------------------- decoder */

static int decode_hello(struct rd *r, struct pi_ctl_hello *h)
{
    h->role = rd_u32(r);
    h->pid = rd_u32(r);
    h->numa_node = (int32_t)rd_u32(r);
    h->worker_index = rd_u32(r);
    h->proto_version = rd_u32(r);
    h->n_cores = rd_u32(r);
    /* Check the count against the bytes really there before allocating anything. */
    if (r->bad || h->role < PI_ROLE_COORDINATOR || h->role > PI_ROLE_CTL || h->numa_node < -1 ||
        h->proto_version != PI_CTL_VERSION || h->n_cores > PI_CTL_MAX_CORES ||
        (uint64_t)h->n_cores * 4 != r->len - r->pos)
        return 0;
    if (h->n_cores) {
        h->cores = malloc((size_t)h->n_cores * sizeof *h->cores);
        if (!h->cores) return 0;
        for (uint32_t i = 0; i < h->n_cores; i++) h->cores[i] = rd_u32(r);
    }
    return !r->bad;
}

/* The rest of the body as one JSON object; jansson rejects trailing garbage and (with the flag)
 * duplicate keys, which would otherwise make two readers disagree about a message. */
static int decode_json(struct rd *r, json_t **out)
{
    json_error_t err;
    json_t *j = json_loadb((const char *)r->p + r->pos, r->len - r->pos, JSON_REJECT_DUPLICATES, &err);
    r->pos = r->len;
    if (!j) {
        pi_ctl_peer_warn("control: JSON body rejected at line %d: %s", err.line, err.text);
        return 0;
    }
    if (!json_is_object(j) || !json_depth_ok(j, 1)) {
        json_decref(j);
        return 0;
    }
    *out = j;
    return 1;
}

/* Decode the body of m->type from r; returns 1 when well-formed and fully consumed. */
static int decode_body(struct rd *r, struct pi_ctl_msg *m)
{
    switch (m->type) {
    case PI_CTL_HELLO: return decode_hello(r, &m->u.hello);
    case PI_CTL_LOAD:
    case PI_CTL_STATUS_RESP: return decode_json(r, &m->u.json);
    case PI_CTL_READY:
        m->u.ready.worker_index = rd_u32(r);
        if (rd_u32(r) != 0) return 0;
        m->u.ready.neurons = rd_u64(r);
        m->u.ready.mem_bytes = rd_u64(r);
        break;
    case PI_CTL_HEARTBEAT:
        m->u.heartbeat.seq = rd_u64(r);
        m->u.heartbeat.uptime_ms = rd_u64(r);
        m->u.heartbeat.state = rd_u32(r);
        if (rd_u32(r) != 0) return 0;
        break;
    case PI_CTL_ERROR:
        m->u.error.code = (int32_t)rd_u32(r);
        if (m->u.error.code >= 0) return 0;
        m->u.error.text = rd_str_rest(r);
        break;
    case PI_CTL_STATUS_REQ: break;
    case PI_CTL_SHUTDOWN:
        m->u.shutdown.flags = rd_u32(r);
        if (m->u.shutdown.flags & ~PI_CTL_SHUTDOWN_NOW) return 0;
        break;
    case PI_CTL_GENERATE:
        m->u.generate.n_predict = rd_u32(r);
        m->u.generate.defaults = rd_u32(r);
        if (m->u.generate.defaults & ~PI_CTL_GEN_DEFAULT_ALL) return 0;
        m->u.generate.seed = rd_u64(r);
        m->u.generate.temp = rd_f32(r);
        if (m->u.generate.n_predict > PI_CTL_MAX_PREDICT || !isfinite(m->u.generate.temp) ||
            m->u.generate.temp < 0 || m->u.generate.temp > PI_CTL_MAX_TEMP)
            return 0;
        m->u.generate.prompt = rd_str_rest(r);
        break;
    case PI_CTL_CHUNK: m->u.chunk.text = rd_str(r, r->len - r->pos); break;
    case PI_CTL_END:
        m->u.end.status = (int32_t)rd_u32(r);
        m->u.end.n_prompt = rd_u32(r);
        m->u.end.n_generated = rd_u32(r);
        if (m->u.end.status > 0) return 0;
        m->u.end.reason = rd_str_rest(r);
        break;
    case PI_CTL_AUTH: {
        /* The length is checked before the copy: a token is short. */
        const size_t n = r->len - r->pos;
        if (n < 4 + PI_CTL_TOKEN_MIN || n > 4 + PI_CTL_TOKEN_MAX) return 0;
        m->u.auth.token = rd_str_rest(r);
        break;
    }
    default: return 0;
    }
    return !r->bad && r->pos == r->len;
}

/* Check the header; returns 0 or the error and sets *d. The order matters for the defect a test
 * (or a log reader) sees: size limits first (nothing else is read from an oversized or short
 * frame), then identity (magic, version), then the fields that depend on the version. */
static int check_header(struct rd *h, size_t len, uint16_t *type, uint64_t *req, enum pi_ctl_defect *d)
{
    uint32_t magic, body_len, flags;
    uint16_t version;
    if (len > PI_CTL_MAX_MSG) return *d = PI_CTL_TOO_LARGE, -PI_ERR_RANGE;
    if (len < PI_CTL_HEADER_SIZE) return *d = PI_CTL_TRUNCATED, -PI_ERR_FORMAT;
    magic = rd_u32(h);
    version = rd_u16(h);
    *type = rd_u16(h);
    body_len = rd_u32(h);
    flags = rd_u32(h);
    *req = rd_u64(h);
    if (magic != PI_CTL_MAGIC) return *d = PI_CTL_BAD_MAGIC, -PI_ERR_FORMAT;
    if (version != PI_CTL_VERSION) return *d = PI_CTL_BAD_VERSION, -PI_ERR_UNSUPPORTED;
    if (flags != 0) return *d = PI_CTL_BAD_FLAGS, -PI_ERR_FORMAT;
    if (*type == 0 || *type > PI_CTL_TYPE_MAX) return *d = PI_CTL_BAD_TYPE, -PI_ERR_UNSUPPORTED;
    if (body_len > PI_CTL_MAX_BODY) return *d = PI_CTL_TOO_LARGE, -PI_ERR_RANGE;
    if (body_len > len - PI_CTL_HEADER_SIZE) return *d = PI_CTL_TRUNCATED, -PI_ERR_FORMAT;
    if (body_len < len - PI_CTL_HEADER_SIZE) return *d = PI_CTL_TRAILING, -PI_ERR_FORMAT;
    return 0;
}

int pi_ctl_frame_size(const uint8_t *hdr, size_t *total, enum pi_ctl_defect *defect)
{
    struct rd h = {.p = hdr, .len = PI_CTL_HEADER_SIZE};
    const uint32_t body_len =
        (uint32_t)hdr[8] | (uint32_t)hdr[9] << 8 | (uint32_t)hdr[10] << 16 | (uint32_t)hdr[11] << 24;
    /* The identity first (a stream that is not ours is "bad magic", not "too large"), then the size. */
    const size_t len = PI_CTL_HEADER_SIZE + (size_t)PI_MIN(body_len, PI_CTL_MAX_BODY);
    enum pi_ctl_defect d = PI_CTL_OK;
    uint16_t type;
    uint64_t req;
    int rc = check_header(&h, len, &type, &req, &d);
    if (rc == 0 && body_len > PI_CTL_MAX_BODY) d = PI_CTL_TOO_LARGE, rc = -PI_ERR_RANGE;
    if (defect) *defect = d;
    if (rc == 0) *total = len;
    return rc;
}

int pi_ctl_decode(const uint8_t *buf, size_t len, struct pi_ctl_msg *m, enum pi_ctl_defect *defect)
{
    struct rd r = {.p = buf, .len = PI_MIN(len, (size_t)PI_CTL_HEADER_SIZE)};
    enum pi_ctl_defect d = PI_CTL_OK;
    uint16_t type = 0;
    uint64_t req = 0;
    int rc;

    memset(m, 0, sizeof *m);
    rc = check_header(&r, len, &type, &req, &d);
    if (rc == 0) {
        struct rd body = {.p = buf + PI_CTL_HEADER_SIZE, .len = len - PI_CTL_HEADER_SIZE};
        m->type = type;
        m->request_id = req;
        if (!decode_body(&body, m)) {
            d = PI_CTL_BAD_BODY;
            rc = -PI_ERR_FORMAT;
            pi_ctl_msg_clear(m);
        }
    }
    if (defect) *defect = d;
    if (rc < 0)
        pi_ctl_peer_warn("control: rejected a %zu-byte message (type %u %s): %s", len, type, pi_ctl_type_name(type),
                pi_ctl_defect_name(d));
    return rc;
}

/* ---------------------------------------------------------------- sockets */

void *pi_ctl_socket(void *ctx, int type, int timeout_ms)
{
    int64_t maxmsg = PI_CTL_MAX_MSG;
    int zero = 0, one = 1;
    void *s = zmq_socket(ctx, type);
    if (!s) {
        pi_error("zmq_socket(%d) failed: %s", type, zmq_strerror(zmq_errno()));
        return NULL;
    }
    if (zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0 ||
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms) != 0 ||
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms) != 0 ||
        /* A ROUTER reports an unknown or departed peer instead of dropping the message silently. */
        (type == ZMQ_ROUTER && zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0)) {
        pi_error("zmq_setsockopt failed: %s", zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

int pi_ctl_bind(void *sock, const char *endpoint)
{
    if (zmq_bind(sock, endpoint) != 0) {
        pi_error("zmq_bind(%s) failed: %s", endpoint, zmq_strerror(zmq_errno()));
        return -PI_ERR_IO;
    }
    return 0;
}

int pi_ctl_connect(void *sock, const char *endpoint)
{
    if (zmq_connect(sock, endpoint) != 0) {
        pi_error("zmq_connect(%s) failed: %s", endpoint, zmq_strerror(zmq_errno()));
        return -PI_ERR_IO;
    }
    return 0;
}

void pi_ctl_close(void **sock)
{
    if (!sock || !*sock) return;
    zmq_close(*sock);
    *sock = NULL;
}

static int zmq_err(const char *what)
{
    int e = zmq_errno();
    if (e == EAGAIN) return -PI_ERR_TIMEOUT;
    if (e == EHOSTUNREACH) return -PI_ERR_PEER;
    pi_error("%s failed: %s", what, zmq_strerror(e));
    return -PI_ERR_IO;
}

int pi_ctl_send(void *sock, const void *id, size_t id_len, const struct pi_ctl_msg *msg)
{
    uint8_t *buf;
    size_t len;
    int rc = pi_ctl_encode(msg, &buf, &len);
    if (rc < 0) return rc;
    if (id && zmq_send(sock, id, id_len, ZMQ_SNDMORE) < 0) rc = zmq_err("zmq_send(routing id)");
    else if (zmq_send(sock, buf, len, 0) < 0) rc = zmq_err("zmq_send(control message)");
    free(buf);
    return rc;
}

static int more_frames(void *sock)
{
    int more = 0;
    size_t sz = sizeof more;
    return zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more;
}

/* Discard the rest of a multi-frame message. */
static void drain(void *sock)
{
    while (more_frames(sock)) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, sock, 0) < 0) {
            zmq_msg_close(&f);
            return;
        }
        zmq_msg_close(&f);
    }
}

/* zmq_msg_t rather than a fixed buffer: ZMQ_MAXMSGSIZE already bounds the size, and the decoder
 * must see the frame's true length to tell "truncated" from "trailing". */
int pi_ctl_recv(void *sock, void *id, size_t *id_len, struct pi_ctl_msg *msg, enum pi_ctl_defect *defect)
{
    zmq_msg_t f;
    int rc;
    memset(msg, 0, sizeof *msg);
    if (defect) *defect = PI_CTL_OK;
    zmq_msg_init(&f);
    if (zmq_msg_recv(&f, sock, 0) < 0) {
        zmq_msg_close(&f);
        return zmq_err("zmq_msg_recv");
    }
    if (id) {
        size_t n = zmq_msg_size(&f);
        if (!more_frames(sock) || n > *id_len) {
            pi_ctl_peer_warn("control: message without a usable routing frame dropped");
            zmq_msg_close(&f);
            drain(sock);
            return -PI_ERR_FORMAT;
        }
        memcpy(id, zmq_msg_data(&f), n);
        *id_len = n;
        zmq_msg_close(&f);
        zmq_msg_init(&f);
        /* The rest of a message arrives with its first frame: this cannot block. */
        if (zmq_msg_recv(&f, sock, 0) < 0) {
            zmq_msg_close(&f);
            return zmq_err("zmq_msg_recv");
        }
    }
    if (more_frames(sock)) {
        pi_ctl_peer_warn("control: multi-frame message dropped");
        zmq_msg_close(&f);
        drain(sock);
        return -PI_ERR_FORMAT;
    }
    rc = pi_ctl_decode(zmq_msg_data(&f), zmq_msg_size(&f), msg, defect);
    zmq_msg_close(&f);
    return rc;
}

/* ---------------------------------------------------------------- run directory */

int pi_rundir_create(const char *parent, char *out, size_t out_len)
{
    struct stat st;
    if (!parent || !*parent) {
        /* No explicit parent: the per-user runtime directory if there is one, else the temp dir.
         * An explicit parent is used as given, and its absence is an error, not a fallback. */
        parent = getenv("XDG_RUNTIME_DIR");
        if (!parent || !*parent || stat(parent, &st) != 0 || !S_ISDIR(st.st_mode)) parent = getenv("TMPDIR");
        if (!parent || !*parent) parent = "/tmp";
    }
    /* Leave room for "/<name>.sock" (up to 24 characters) within the unix socket path limit. */
    if ((size_t)snprintf(out, out_len, "%s/pinfer.XXXXXX", parent) >= out_len ||
        strlen(out) > PI_UNIX_PATH_MAX - 24) {
        pi_error("run directory under %s: path too long for unix sockets", parent);
        return -PI_ERR_RANGE;
    }
    if (!mkdtemp(out)) { /* mkdtemp creates the directory with mode 0700 */
        pi_error("mkdtemp(%s) failed: %s", out, strerror(errno));
        return -PI_ERR_IO;
    }
    if (lstat(out, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
        pi_error("run directory %s is not a private directory of ours", out);
        rmdir(out);
        return -PI_ERR_IO;
    }
    return 0;
}

int pi_ctl_endpoint(const char *rundir, const char *name, char *out, size_t out_len)
{
    int n = snprintf(out, out_len, "ipc://%s/%s.sock", rundir, name);
    if (n < 0 || (size_t)n >= out_len || (size_t)n - 6 > PI_UNIX_PATH_MAX) {
        pi_error("endpoint for %s/%s.sock does not fit a unix socket path", rundir, name);
        return -PI_ERR_RANGE;
    }
    return 0;
}

/* Only *.sock entries are ours to delete: anything else in the directory was put there by someone
 * else, so it is reported and the directory is left in place rather than removed recursively. */
int pi_rundir_remove(const char *rundir)
{
    DIR *d = opendir(rundir);
    struct dirent *e;
    int rc = 0;
    if (!d) {
        pi_error("opendir(%s) failed: %s", rundir, strerror(errno));
        return -PI_ERR_IO;
    }
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        struct stat st;
        if (n > 5 && strcmp(e->d_name + n - 5, ".sock") == 0 && fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISSOCK(st.st_mode) && unlinkat(dirfd(d), e->d_name, 0) == 0)
            continue;
        pi_error("run directory %s: cannot remove %s", rundir, e->d_name);
        rc = -PI_ERR_IO;
    }
    closedir(d);
    if (rc == 0 && rmdir(rundir) != 0) {
        pi_error("rmdir(%s) failed: %s", rundir, strerror(errno));
        rc = -PI_ERR_IO;
    }
    return rc;
}

/* True when nobody accepts connections on the unix socket name inside the directory dfd (path shown
 * as dir): connect(2) is refused. Through /proc/self/fd/N so that the path stays short and relative
 * to the directory we opened. */
static bool socket_stale(int dfd, const char *name)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int n = snprintf(sa.sun_path, sizeof sa.sun_path, "/proc/self/fd/%d/%s", dfd, name);
    if (n < 0 || (size_t)n >= sizeof sa.sun_path) return false;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return false;
    bool stale = connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno == ECONNREFUSED;
    close(fd);
    return stale;
}

/* Sweep one "pinfer.*" entry of the parent; returns 1 when it was removed. */
static int sweep_one(int pfd, const char *parent, const char *name)
{
    struct stat st;
    if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) return 0;
    int dfd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) return 0;
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return 0;
    }
    /* What is in it: sockets, all refusing connections, and nothing else. */
    int socks = 0, other = 0, live = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        struct stat es;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (fstatat(dfd, e->d_name, &es, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISSOCK(es.st_mode)) other++;
        else if (socket_stale(dfd, e->d_name)) socks++;
        else live++;
    }
    const bool old_empty = socks == 0 && time(NULL) - st.st_mtime > 60;
    int removed = 0;
    if (!other && !live && (socks > 0 || old_empty)) {
        rewinddir(d);
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            struct stat es;
            if (fstatat(dfd, e->d_name, &es, AT_SYMLINK_NOFOLLOW) == 0 && S_ISSOCK(es.st_mode)) unlinkat(dfd, e->d_name, 0);
        }
        removed = unlinkat(pfd, name, AT_REMOVEDIR) == 0;
        if (removed) pi_info("run dir %s: removed %s, left by a coordinator that did not clean up (%d stale sockets)", parent, name, socks);
    }
    closedir(d);
    return removed;
}

int pi_rundir_sweep(int parent_fd, const char *parent)
{
    int dfd = dup(parent_fd);
    if (dfd < 0) return 0;
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return 0;
    }
    /* Names first, removal after: unlinking while readdir walks the same stream may skip entries. */
    char names[64][32];
    int n = 0, removed = 0;
    for (struct dirent *e; n < 64 && (e = readdir(d)) != NULL;)
        if (strncmp(e->d_name, "pinfer.", 7) == 0 && strlen(e->d_name) < sizeof names[0]) snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    for (int i = 0; i < n; i++) removed += sweep_one(parent_fd, parent, names[i]);
    closedir(d);
    return removed;
}
