/* tests/unit/test-control.c - the control protocol (ipc/control.h): codec round trip of every message
 * type with random fields, each kind of malformed message rejected with its specific defect, random
 * truncations and byte flips never crash the decoder, and a real ZeroMQ exchange over ipc:// in a
 * private run directory (timeouts, malformed and oversized frames, the receiver keeps serving). */
#include "config.h"
#include "ipc/control.h"
#include "ipc/futex.h"
#include "lib/common.h"
#include "lib/log.h"
#include "tests/tap.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A random printable string of up to max characters (caller frees). */
static char *rnd_text(size_t max)
{
    size_t n = rnd() % (max + 1);
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++) s[i] = (char)(' ' + rnd() % 95);
    s[n] = '\0';
    return s;
}

/* Fill m with random valid content of the given type. */
static void make_msg(struct pi_ctl_msg *m, uint16_t type)
{
    memset(m, 0, sizeof *m);
    m->type = type;
    m->request_id = rnd();
    switch (type) {
    case PI_CTL_HELLO:
        m->u.hello.role = 1 + (uint32_t)(rnd() % 4);
        m->u.hello.pid = (uint32_t)rnd();
        m->u.hello.numa_node = (int32_t)(rnd() % 9) - 1;
        m->u.hello.worker_index = (uint32_t)(rnd() % 64);
        m->u.hello.proto_version = PI_CTL_VERSION;
        m->u.hello.n_cores = (uint32_t)(rnd() % 300);
        m->u.hello.cores = malloc(4 * (m->u.hello.n_cores + 1));
        for (uint32_t i = 0; i < m->u.hello.n_cores; i++) m->u.hello.cores[i] = (uint32_t)rnd();
        break;
    case PI_CTL_LOAD:
    case PI_CTL_STATUS_RESP:
        m->u.json = json_pack("{s:s, s:I, s:[i,i], s:{s:f}}", "model", "m.gguf", "n", (json_int_t)(rnd() % 1000000),
                              "layers", 0, (int)(rnd() % 80), "worker", "heartbeat_age", 0.25);
        break;
    case PI_CTL_READY:
        m->u.ready.worker_index = (uint32_t)rnd();
        m->u.ready.neurons = rnd();
        m->u.ready.mem_bytes = rnd();
        break;
    case PI_CTL_HEARTBEAT:
        m->u.heartbeat.seq = rnd();
        m->u.heartbeat.uptime_ms = rnd();
        m->u.heartbeat.state = (uint32_t)rnd();
        break;
    case PI_CTL_ERROR:
        m->u.error.code = -1 - (int32_t)(rnd() % 10);
        m->u.error.text = rnd_text(200);
        break;
    case PI_CTL_SHUTDOWN: m->u.shutdown.flags = (uint32_t)(rnd() & PI_CTL_SHUTDOWN_NOW); break;
    case PI_CTL_GENERATE:
        m->u.generate.n_predict = (uint32_t)(rnd() % 4096);
        m->u.generate.defaults = (uint32_t)(rnd() % 8);
        m->u.generate.seed = rnd();
        m->u.generate.temp = (float)(rnd() % 2000) / 1000.0f;
        m->u.generate.prompt = rnd_text(500);
        break;
    case PI_CTL_CHUNK: m->u.chunk.text = rnd_text(100); break;
    case PI_CTL_END:
        m->u.end.status = -(int32_t)(rnd() % 3);
        m->u.end.n_prompt = (uint32_t)rnd();
        m->u.end.n_generated = (uint32_t)rnd();
        m->u.end.reason = rnd_text(50);
        break;
    case PI_CTL_AUTH: {
        /* PI_CTL_TOKEN_MIN..PI_CTL_TOKEN_MAX printable bytes */
        size_t n = PI_CTL_TOKEN_MIN + (size_t)(rnd() % (PI_CTL_TOKEN_MAX - PI_CTL_TOKEN_MIN + 1));
        m->u.auth.token = malloc(n + 1);
        for (size_t i = 0; i < n; i++) m->u.auth.token[i] = (char)('!' + rnd() % 94);
        m->u.auth.token[n] = '\0';
        break;
    }
    default: break;
    }
}

static int str_eq(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

/* Field-by-field equality of two messages of the same type. */
static int msg_eq(const struct pi_ctl_msg *a, const struct pi_ctl_msg *b)
{
    if (a->type != b->type || a->request_id != b->request_id) return 0;
    switch (a->type) {
    case PI_CTL_HELLO:
        return a->u.hello.role == b->u.hello.role && a->u.hello.pid == b->u.hello.pid &&
               a->u.hello.numa_node == b->u.hello.numa_node && a->u.hello.worker_index == b->u.hello.worker_index &&
               a->u.hello.proto_version == b->u.hello.proto_version && a->u.hello.n_cores == b->u.hello.n_cores &&
               (a->u.hello.n_cores == 0 || memcmp(a->u.hello.cores, b->u.hello.cores, 4 * a->u.hello.n_cores) == 0);
    case PI_CTL_LOAD:
    case PI_CTL_STATUS_RESP: return json_equal(a->u.json, b->u.json);
    case PI_CTL_READY:
        return a->u.ready.worker_index == b->u.ready.worker_index && a->u.ready.neurons == b->u.ready.neurons &&
               a->u.ready.mem_bytes == b->u.ready.mem_bytes;
    case PI_CTL_HEARTBEAT:
        return a->u.heartbeat.seq == b->u.heartbeat.seq && a->u.heartbeat.uptime_ms == b->u.heartbeat.uptime_ms &&
               a->u.heartbeat.state == b->u.heartbeat.state;
    case PI_CTL_ERROR: return a->u.error.code == b->u.error.code && str_eq(a->u.error.text, b->u.error.text);
    case PI_CTL_STATUS_REQ: return 1;
    case PI_CTL_SHUTDOWN: return a->u.shutdown.flags == b->u.shutdown.flags;
    case PI_CTL_GENERATE:
        return a->u.generate.n_predict == b->u.generate.n_predict && a->u.generate.defaults == b->u.generate.defaults &&
               a->u.generate.seed == b->u.generate.seed &&
               a->u.generate.temp == b->u.generate.temp && str_eq(a->u.generate.prompt, b->u.generate.prompt);
    case PI_CTL_CHUNK: return str_eq(a->u.chunk.text, b->u.chunk.text);
    case PI_CTL_END:
        return a->u.end.status == b->u.end.status && a->u.end.n_prompt == b->u.end.n_prompt &&
               a->u.end.n_generated == b->u.end.n_generated && str_eq(a->u.end.reason, b->u.end.reason);
    case PI_CTL_AUTH: return str_eq(a->u.auth.token, b->u.auth.token);
    default: return 0;
    }
}

static void test_round_trip(void)
{
    for (uint16_t t = 1; t <= PI_CTL_TYPE_MAX; t++) {
        int ok = 1;
        for (int rep = 0; rep < 20 && ok; rep++) {
            struct pi_ctl_msg m, d;
            enum pi_ctl_defect def = PI_CTL_BAD_BODY;
            uint8_t *buf = NULL;
            size_t len = 0;
            make_msg(&m, t);
            ok = pi_ctl_encode(&m, &buf, &len) == 0 && len >= PI_CTL_HEADER_SIZE &&
                 pi_ctl_decode(buf, len, &d, &def) == 0 && def == PI_CTL_OK && msg_eq(&m, &d);
            free(buf);
            pi_ctl_msg_clear(&d);
            pi_ctl_msg_clear(&m);
        }
        tap_ok(ok, "round trip of %s messages", pi_ctl_type_name(t));
    }
}

/* Little-endian field pokes into an encoded message. */
static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Decode buf[0..len) and check the result is (want_rc, want_defect). */
static void expect(const uint8_t *buf, size_t len, int want_rc, enum pi_ctl_defect want_def, const char *what)
{
    struct pi_ctl_msg m;
    enum pi_ctl_defect def = PI_CTL_OK;
    int rc = pi_ctl_decode(buf, len, &m, &def);
    tap_ok(rc == want_rc && def == want_def, "%s: %s", what, pi_ctl_defect_name(want_def));
    if (rc != want_rc || def != want_def) tap_diag("  got rc %d defect %s", rc, pi_ctl_defect_name(def));
    if (rc == 0) pi_ctl_msg_clear(&m);
}

/* Encode a valid message of `type` into a fresh buffer with `extra` spare bytes at the end. */
static uint8_t *encoded(uint16_t type, size_t extra, size_t *len)
{
    struct pi_ctl_msg m;
    uint8_t *buf, *big;
    make_msg(&m, type);
    if (pi_ctl_encode(&m, &buf, len) != 0) tap_bail("encode failed");
    pi_ctl_msg_clear(&m);
    big = calloc(1, *len + extra + 1);
    memcpy(big, buf, *len);
    free(buf);
    return big;
}

/* Build header + raw body bytes. */
static size_t raw(uint8_t *buf, uint16_t type, const void *body, uint32_t body_len)
{
    memset(buf, 0, PI_CTL_HEADER_SIZE);
    put32(buf, PI_CTL_MAGIC);
    put16(buf + 4, PI_CTL_VERSION);
    put16(buf + 6, type);
    put32(buf + 8, body_len);
    memcpy(buf + PI_CTL_HEADER_SIZE, body, body_len);
    return PI_CTL_HEADER_SIZE + body_len;
}

/* Header checks, each failing with its own defect. */
static void test_malformed(void)
{
    size_t len;
    uint8_t *b = encoded(PI_CTL_HEARTBEAT, 64, &len);
    expect(b, len, 0, PI_CTL_OK, "valid heartbeat");
    b[0] ^= 0xff;
    expect(b, len, -PI_ERR_FORMAT, PI_CTL_BAD_MAGIC, "wrong magic");
    b[0] ^= 0xff;
    put16(b + 4, PI_CTL_VERSION + 1);
    expect(b, len, -PI_ERR_UNSUPPORTED, PI_CTL_BAD_VERSION, "wrong version");
    put16(b + 4, PI_CTL_VERSION);
    expect(b, 10, -PI_ERR_FORMAT, PI_CTL_TRUNCATED, "shorter than a header");
    expect(b, 0, -PI_ERR_FORMAT, PI_CTL_TRUNCATED, "empty frame");
    expect(b, len - 1, -PI_ERR_FORMAT, PI_CTL_TRUNCATED, "body shorter than body_len");
    expect(b, len + 4, -PI_ERR_FORMAT, PI_CTL_TRAILING, "bytes after the body");
    put32(b + 8, 0xffffffffu);
    expect(b, len, -PI_ERR_RANGE, PI_CTL_TOO_LARGE, "huge body_len");
    put32(b + 8, PI_CTL_MAX_BODY + 1);
    expect(b, len, -PI_ERR_RANGE, PI_CTL_TOO_LARGE, "body_len just over the limit");
    put32(b + 8, (uint32_t)(len - PI_CTL_HEADER_SIZE));
    expect(b, (size_t)PI_CTL_MAX_MSG + 1, -PI_ERR_RANGE, PI_CTL_TOO_LARGE, "frame over the limit");
    put16(b + 6, 0);
    expect(b, len, -PI_ERR_UNSUPPORTED, PI_CTL_BAD_TYPE, "type 0");
    put16(b + 6, PI_CTL_TYPE_MAX + 1);
    expect(b, len, -PI_ERR_UNSUPPORTED, PI_CTL_BAD_TYPE, "type past the last");
    put16(b + 6, 0xffff);
    expect(b, len, -PI_ERR_UNSUPPORTED, PI_CTL_BAD_TYPE, "type 0xffff");
    put16(b + 6, PI_CTL_HEARTBEAT);
    put32(b + 12, 1);
    expect(b, len, -PI_ERR_FORMAT, PI_CTL_BAD_FLAGS, "reserved flags set");
    put32(b + 12, 0);
    put16(b + 6, PI_CTL_READY); /* a 24-byte heartbeat body read as ready: its pad word is not 0 */
    put32(b + PI_CTL_HEADER_SIZE + 4, 7);
    expect(b, len, -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "ready with a non-zero pad");
    free(b);
}

/* Lines of the log file at path that contain needle. */
static int count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) n += strstr(line, needle) != NULL;
    if (f) fclose(f);
    return n;
}

/* A flood of malformed messages is not a flood of log lines: within a second at most a few warnings,
 * and the next warning after the second says how many were suppressed (issue 20: 20k messages wrote
 * 18k lines). */
static void test_warning_rate(void)
{
    char path[] = "/tmp/test-control-log.XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) tap_bail("mkstemp: %s", strerror(errno));
    size_t len;
    uint8_t *b = encoded(PI_CTL_HEARTBEAT, 64, &len);
    b[0] ^= 0xff;
    struct pi_ctl_msg m;
    sleep(1); /* a fresh window: the warnings of the tests before are another second's (and may be
               * counted by a first line of this one) */
    pi_log_set_fd(fd);
    int64_t t0 = pi_clock_ns();
    for (int i = 0; i < 5000; i++) pi_ctl_decode(b, len, &m, NULL);
    double secs = (double)(pi_clock_ns() - t0) * 1e-9;
    int first = count_lines(path, "bad magic"), summary0 = count_lines(path, "suppressed");
    usleep(1100000);
    pi_ctl_decode(b, len, &m, NULL);
    pi_log_set_fd(2);
    int after = count_lines(path, "bad magic"), summary = count_lines(path, "suppressed") - summary0;
    tap_ok(secs < 1.0 && first >= 1 && first <= 10, "5,000 malformed messages in %.2f s: %d warning lines (at most 10)", secs, first);
    tap_ok(after == first + 1 && summary == 1, "a second later: one more warning and one line counting the suppressed (%d, %d)",
           after - first, summary);
    free(b);
    close(fd);
    unlink(path);
}

/* Body structure, type by type: each body decoder rejects what does not fit its type. */
static void test_malformed_bodies(void)
{
    uint8_t buf[256], body[64];
    memset(body, 0, sizeof body);
    expect(buf, raw(buf, PI_CTL_HEARTBEAT, body, 20), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "heartbeat body too short");
    expect(buf, raw(buf, PI_CTL_HEARTBEAT, body, 28), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "heartbeat body too long");
    expect(buf, raw(buf, PI_CTL_STATUS_REQ, body, 1), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "status request with a body");
    put32(body, 2);
    expect(buf, raw(buf, PI_CTL_SHUTDOWN, body, 4), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "shutdown with unknown flags");
    put32(body, 5);
    put32(body + 4, 0);
    expect(buf, raw(buf, PI_CTL_ERROR, body, 8), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "error with a positive code");
    put32(body, (uint32_t)-3);
    put32(body + 4, 10);
    memcpy(body + 8, "abc", 3);
    expect(buf, raw(buf, PI_CTL_ERROR, body, 11), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "error text shorter than its length");
    put32(body + 4, 3);
    body[9] = '\0';
    expect(buf, raw(buf, PI_CTL_ERROR, body, 11), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "error text with a NUL");
    body[9] = 'b';
    expect(buf, raw(buf, PI_CTL_ERROR, body, 11), 0, PI_CTL_OK, "error with 3 bytes of text");
    /* hello: role, pid, node, index, version, n_cores, cores */
    memset(body, 0, sizeof body);
    put32(body, PI_ROLE_CPU_WORKER);
    put32(body + 16, PI_CTL_VERSION);
    put32(body + 20, 2);
    expect(buf, raw(buf, PI_CTL_HELLO, body, 28), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "hello with fewer cores than n_cores");
    expect(buf, raw(buf, PI_CTL_HELLO, body, 32), 0, PI_CTL_OK, "hello with 2 cores");
    put32(body + 20, 0xffffffffu);
    expect(buf, raw(buf, PI_CTL_HELLO, body, 32), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "hello with a huge n_cores");
    put32(body + 20, 2);
    put32(body, 0);
    expect(buf, raw(buf, PI_CTL_HELLO, body, 32), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "hello with role 0");
    put32(body, PI_ROLE_GPU_WORKER);
    put32(body + 8, (uint32_t)-2);
    expect(buf, raw(buf, PI_CTL_HELLO, body, 32), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "hello with NUMA node -2");
    put32(body + 8, 0);
    put32(body + 16, 9);
    expect(buf, raw(buf, PI_CTL_HELLO, body, 32), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "hello with another protocol version");
    /* generate: n_predict, flags, seed, temp, prompt_len, prompt */
    memset(body, 0, sizeof body);
    put32(body, 16);
    put32(body + 16, 0x7fc00000u); /* NaN */
    expect(buf, raw(buf, PI_CTL_GENERATE, body, 24), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "generate with a NaN temperature");
    put32(body + 16, 0);
    expect(buf, raw(buf, PI_CTL_GENERATE, body, 24), 0, PI_CTL_OK, "generate with an empty prompt");
    put32(body, 0xffffffffu);
    expect(buf, raw(buf, PI_CTL_GENERATE, body, 24), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "generate with a huge n_predict");
    put32(body, 1);
    put32(body + 4, 8);
    expect(buf, raw(buf, PI_CTL_GENERATE, body, 24), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "generate with an unknown defaults bit");
    put32(body + 4, PI_CTL_GEN_DEFAULT_ALL);
    expect(buf, raw(buf, PI_CTL_GENERATE, body, 24), 0, PI_CTL_OK, "generate leaving n_predict, seed and temp to the coordinator");
    put32(body + 4, 0);
    expect(buf, raw(buf, PI_CTL_GENERATE, body, 24), 0, PI_CTL_OK, "generate of the first protocol (defaults 0) still valid");
    /* JSON bodies */
    expect(buf, raw(buf, PI_CTL_STATUS_RESP, "[1,2]", 5), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "status JSON not an object");
    expect(buf, raw(buf, PI_CTL_STATUS_RESP, "{\"a\":", 5), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "status JSON cut short");
    expect(buf, raw(buf, PI_CTL_LOAD, "{\"a\":1,\"a\":2}", 13), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "load JSON with a duplicate key");
    expect(buf, raw(buf, PI_CTL_LOAD, "", 0), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "load with an empty body");
    expect(buf, raw(buf, PI_CTL_LOAD, "{\"a\":{}}", 8), 0, PI_CTL_OK, "load with a nested object");
    {
        /* {"a": 40 nested arrays} is deeper than PI_CTL_MAX_JSON_DEPTH */
        char deep[128];
        size_t n = 0;
        uint8_t *frame = malloc(PI_CTL_HEADER_SIZE + sizeof deep);
        memcpy(deep, "{\"a\":", 5);
        n = 5;
        for (int i = 0; i < 40; i++) deep[n++] = '[';
        for (int i = 0; i < 40; i++) deep[n++] = ']';
        deep[n++] = '}';
        expect(frame, raw(frame, PI_CTL_LOAD, deep, (uint32_t)n), -PI_ERR_FORMAT, PI_CTL_BAD_BODY,
               "load JSON nested too deep");
        free(frame);
    }
    expect(buf, raw(buf, PI_CTL_CHUNK, "a\0b", 3), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "chunk text with a NUL");
    memset(body, 0, sizeof body);
    put32(body, 1);
    expect(buf, raw(buf, PI_CTL_END, body, 16), -PI_ERR_FORMAT, PI_CTL_BAD_BODY, "end with a positive status");
}

/* The encoder refuses what the decoder would reject, so a bad message fails at its sender. */
static void test_encoder_refuses(void)
{
    {
        struct pi_ctl_msg m = {.type = PI_CTL_ERROR};
        uint8_t *out;
        size_t n;
        m.u.error.code = 1;
        tap_is_int(pi_ctl_encode(&m, &out, &n), -PI_ERR_INVAL, "encoder refuses a positive error code");
        m.type = 77;
        tap_is_int(pi_ctl_encode(&m, &out, &n), -PI_ERR_INVAL, "encoder refuses an unknown type");
        m.type = PI_CTL_GENERATE;
        m.u.generate.temp = NAN;
        tap_is_int(pi_ctl_encode(&m, &out, &n), -PI_ERR_INVAL, "encoder refuses a NaN temperature");
        memset(&m, 0, sizeof m);
        m.type = PI_CTL_HELLO;
        m.u.hello.role = PI_ROLE_CPU_WORKER;
        m.u.hello.proto_version = PI_CTL_VERSION;
        m.u.hello.numa_node = -2;
        tap_is_int(pi_ctl_encode(&m, &out, &n), -PI_ERR_INVAL, "encoder refuses a hello with NUMA node -2");
        m.u.hello.numa_node = -1;
        m.u.hello.role = 0;
        tap_is_int(pi_ctl_encode(&m, &out, &n), -PI_ERR_INVAL, "encoder refuses a hello with role 0");
        m.u.hello.role = PI_ROLE_CPU_WORKER;
        m.u.hello.proto_version = PI_CTL_VERSION + 1;
        tap_is_int(pi_ctl_encode(&m, &out, &n), -PI_ERR_INVAL, "encoder refuses a hello of another protocol version");
        m.u.hello.proto_version = PI_CTL_VERSION;
        tap_ok(pi_ctl_encode(&m, &out, &n) == 0, "encoder accepts the same hello once valid");
        if (out) free(out);
    }
}

/* Random truncations and byte flips of valid messages: the decoder must return (either way)
 * without reading out of bounds (the sanitizer build checks that) and agree on success/failure
 * with its own defect report. */
static void test_mutations(void)
{
    int consistent = 1, rejected = 0;
    pi_log_set_level(PI_LOG_ERROR); /* thousands of rejections: keep the log short */
    for (int i = 0; i < 3000; i++) {
        size_t len, cut;
        uint16_t t = (uint16_t)(1 + rnd() % PI_CTL_TYPE_MAX);
        uint8_t *b = encoded(t, 0, &len);
        struct pi_ctl_msg m;
        enum pi_ctl_defect def;
        int rc;
        if (rnd() & 1) {
            size_t pos = rnd() % len;
            b[pos] ^= (uint8_t)(1 + rnd() % 255);
            cut = len;
        } else {
            cut = rnd() % len;
        }
        /* Copy to an exact-size allocation so ASan sees any read past `cut`. */
        uint8_t *exact = malloc(cut ? cut : 1);
        memcpy(exact, b, cut);
        rc = pi_ctl_decode(exact, cut, &m, &def);
        consistent &= (rc == 0) == (def == PI_CTL_OK);
        if (rc == 0) pi_ctl_msg_clear(&m);
        else rejected++;
        free(exact);
        free(b);
    }
    pi_log_set_level(PI_LOG_INFO);
    tap_ok(consistent, "3000 mutated messages decoded or rejected consistently (%d rejected)", rejected);
    tap_ok(rejected > 1500, "every truncation and most flips are caught");
}

static void test_rundir(char *dir, size_t len, const char *parent)
{
    struct stat st;
    char ep[256], longname[200];
    tap_is_int(pi_rundir_create(parent, dir, len), 0, "run directory created");
    tap_ok(lstat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700, "run directory is mode 0700");
    tap_ok(strncmp(dir, parent, strlen(parent)) == 0, "under the given parent");
    tap_ok(pi_ctl_endpoint(dir, "control", ep, sizeof ep) == 0 && strncmp(ep, "ipc://", 6) == 0 &&
               strstr(ep, "/control.sock"),
           "endpoint %s", ep);
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    tap_is_int(pi_ctl_endpoint(dir, longname, ep, sizeof ep), -PI_ERR_RANGE, "endpoint past the unix path limit refused");
    {
        char other[256], missing[300];
        snprintf(missing, sizeof missing, "%s/does-not-exist", parent);
        tap_ok(pi_rundir_create(missing, other, sizeof other) == -PI_ERR_IO, "a missing explicit parent is an error");
    }
}

static void test_zmq(void)
{
    char parent[] = "/tmp/pi-test-control.XXXXXX", dir[256], ep[256], id[256];
    size_t id_len = sizeof id;
    void *ctx = zmq_ctx_new(), *router, *dealer, *bad;
    struct pi_ctl_msg m, r;
    enum pi_ctl_defect def;
    int64_t t0;
    int rc;
    if (!mkdtemp(parent)) tap_bail("mkdtemp failed");
    test_rundir(dir, sizeof dir, parent);
    pi_ctl_endpoint(dir, "control", ep, sizeof ep);
    router = pi_ctl_socket(ctx, ZMQ_ROUTER, 2000);
    dealer = pi_ctl_socket(ctx, ZMQ_DEALER, 2000);
    bad = pi_ctl_socket(ctx, ZMQ_DEALER, 2000);
    tap_ok(router && dealer && bad, "sockets created");
    tap_ok(pi_ctl_bind(router, ep) == 0 && pi_ctl_connect(dealer, ep) == 0 && pi_ctl_connect(bad, ep) == 0,
           "bind and connect over ipc://");
    {
        int linger = -1;
        int64_t maxmsg = 0;
        size_t sz = sizeof linger;
        zmq_getsockopt(dealer, ZMQ_LINGER, &linger, &sz);
        sz = sizeof maxmsg;
        zmq_getsockopt(dealer, ZMQ_MAXMSGSIZE, &maxmsg, &sz);
        tap_ok(linger == 0 && maxmsg == PI_CTL_MAX_MSG, "linger 0 and a bounded message size");
    }

    make_msg(&m, PI_CTL_HELLO);
    tap_is_int(pi_ctl_send(dealer, NULL, 0, &m), 0, "worker sends hello");
    rc = pi_ctl_recv(router, id, &id_len, &r, &def);
    tap_ok(rc == 0 && msg_eq(&m, &r), "coordinator receives the same hello");
    pi_ctl_msg_clear(&m);
    pi_ctl_msg_clear(&r);

    make_msg(&m, PI_CTL_LOAD);
    tap_is_int(pi_ctl_send(router, id, id_len, &m), 0, "coordinator replies load to that worker");
    rc = pi_ctl_recv(dealer, NULL, NULL, &r, &def);
    tap_ok(rc == 0 && msg_eq(&m, &r), "worker receives the load");
    pi_ctl_msg_clear(&m);
    pi_ctl_msg_clear(&r);

    /* Garbage from one peer is rejected; the next good message still arrives. */
    zmq_send(bad, "\x01\x02\x03 not a control message at all", 33, 0);
    id_len = sizeof id;
    rc = pi_ctl_recv(router, id, &id_len, &r, &def);
    tap_ok(rc == -PI_ERR_FORMAT && def == PI_CTL_BAD_MAGIC, "garbage frame rejected as bad magic");
    zmq_send(bad, "a", 1, ZMQ_SNDMORE);
    zmq_send(bad, "b", 1, 0);
    id_len = sizeof id;
    rc = pi_ctl_recv(router, id, &id_len, &r, &def);
    tap_is_int(rc, -PI_ERR_FORMAT, "multi-frame message rejected");
    {
        /* An oversized frame: ZeroMQ drops it (and the sender's connection) at ZMQ_MAXMSGSIZE. */
        size_t big_len = (size_t)PI_CTL_MAX_MSG + 4096;
        uint8_t *big = calloc(1, big_len);
        zmq_send(bad, big, big_len, 0);
        free(big);
    }
    make_msg(&m, PI_CTL_HEARTBEAT);
    pi_ctl_send(dealer, NULL, 0, &m);
    id_len = sizeof id;
    rc = pi_ctl_recv(router, id, &id_len, &r, &def);
    tap_ok(rc == 0 && msg_eq(&m, &r), "the receiver keeps serving: next heartbeat arrives intact");
    pi_ctl_msg_clear(&m);
    pi_ctl_msg_clear(&r);

    make_msg(&m, PI_CTL_SHUTDOWN);
    tap_is_int(pi_ctl_send(router, "no-such-peer", 12, &m), -PI_ERR_PEER,
               "a reply to an unknown peer is an error, not silence");
    pi_ctl_msg_clear(&m);
    {
        int to = 100;
        zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &to, sizeof to);
        t0 = pi_clock_ns();
        rc = pi_ctl_recv(dealer, NULL, NULL, &r, &def);
        t0 = pi_clock_ns() - t0;
        /* The upper bound only tells a timeout from a hang: a loaded CI machine may be slow. */
        tap_ok(rc == -PI_ERR_TIMEOUT && t0 >= 90 * 1000000LL && t0 < 10000 * 1000000LL,
               "receive with nothing sent times out (%.0f ms)", t0 / 1e6);
    }
    pi_ctl_close(&bad);
    pi_ctl_close(&dealer);
    pi_ctl_close(&router);
    tap_ok(router == NULL, "close nulls the socket");
    zmq_ctx_term(ctx);
    tap_is_int(pi_rundir_remove(dir), 0, "run directory removed with its sockets");
    tap_ok(access(dir, F_OK) != 0, "nothing left behind");
    rmdir(parent);
}

int main(void)
{
    alarm(30);
    pi_log_set_program("test-control");
    test_round_trip();
    test_malformed();
    test_malformed_bodies();
    test_warning_rate();
    test_encoder_refuses();
    test_mutations();
    test_zmq();
    return tap_done();
}
