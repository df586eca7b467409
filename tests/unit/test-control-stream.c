/* tests/unit/test-control-stream.c - the control protocol over a byte stream (ipc/control-stream.h):
 * the framer on random messages cut into random pieces, bad and oversized headers refused before any
 * buffer is allocated; the endpoint rules (abstract sockets refused, tcp host and port forms, loopback);
 * the peer uid from SO_PEERCRED (another uid is refused: test-hardening checks a real second user
 * where it runs as root); the token
 * file's rules; the listening socket's mode 0600 under any umask; the client against a socketpair's
 * other end (pieces, timeout, a closed peer) and a missing or stale socket. */
#include "config.h"
#include "ipc/control-stream.h"
#include "ipc/futex.h"
#include "lib/common.h"
#include "lib/log.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static char dir[256];

/* N messages (status requests, chunks of random text, generates) encoded back to back. */
static uint8_t *stream_of(int n, size_t *len, uint16_t *types)
{
    uint8_t *all = NULL;
    *len = 0;
    for (int i = 0; i < n; i++) {
        struct pi_ctl_msg m = {.type = (uint16_t)(i % 3 == 0   ? PI_CTL_STATUS_REQ
                                                  : i % 3 == 1 ? PI_CTL_CHUNK
                                                               : PI_CTL_GENERATE),
                               .request_id = (uint64_t)i};
        char text[300];
        size_t tl = rnd() % (sizeof text - 1);
        for (size_t k = 0; k < tl; k++) text[k] = (char)('a' + rnd() % 26);
        text[tl] = '\0';
        if (m.type == PI_CTL_CHUNK) m.u.chunk.text = text;
        if (m.type == PI_CTL_GENERATE) m.u.generate.prompt = text, m.u.generate.n_predict = 5;
        uint8_t *b;
        size_t bl;
        if (pi_ctl_encode(&m, &b, &bl) != 0) tap_bail("encode");
        all = realloc(all, *len + bl);
        memcpy(all + *len, b, bl);
        *len += bl;
        free(b);
        types[i] = m.type;
    }
    return all;
}

static void test_framer(void)
{
    enum { N = 200 };
    uint16_t types[N];
    size_t len;
    uint8_t *all = stream_of(N, &len, types);
    struct pi_ctl_framer f = {0};
    int got = 0, in_order = 1, errors = 0;
    size_t max_held = 0;
    for (size_t pos = 0; pos < len;) {
        const size_t want = (size_t)(1 + rnd() % 700); /* outside PI_MIN, which evaluates twice */
        size_t piece = PI_MIN(len - pos, want);
        const uint8_t *p = all + pos;
        size_t n = piece;
        while (n) {
            int r = pi_ctl_framer_feed(&f, &p, &n, NULL);
            max_held = PI_MAX(max_held, pi_ctl_framer_held(&f));
            if (r < 0) {
                errors++;
                break;
            }
            if (r == 0) continue;
            struct pi_ctl_msg m;
            if (pi_ctl_framer_pop(&f, &m, NULL) != 0) {
                errors++;
                continue;
            }
            in_order &= got < N && m.type == types[got] && m.request_id == (uint64_t)got;
            got++;
            pi_ctl_msg_clear(&m);
        }
        pos += piece;
    }
    tap_ok(got == N && in_order && errors == 0 && !pi_ctl_framer_partial(&f),
           "%d messages cut into random pieces of 1..700 bytes: framed in order (%d, errors %d)", N, got, errors);
    tap_ok(max_held < 400, "the framer holds one message at a time (at most %zu bytes)", max_held);
    free(all);

    /* a header announcing more than the protocol's bound: refused at its 24th byte, nothing allocated */
    uint8_t h[PI_CTL_HEADER_SIZE] = {0x50, 0x49, 0x43, 0x54, 1, 0, PI_CTL_GENERATE, 0, 0xff, 0xff, 0xff, 0x7f};
    const uint8_t *p = h;
    size_t n = PI_CTL_HEADER_SIZE - 1;
    enum pi_ctl_defect d = PI_CTL_OK;
    int r0 = pi_ctl_framer_feed(&f, &p, &n, &d);
    n = 1;
    int r1 = pi_ctl_framer_feed(&f, &p, &n, &d);
    tap_ok(r0 == 0 && r1 == -PI_ERR_RANGE && d == PI_CTL_TOO_LARGE && pi_ctl_framer_held(&f) == 0,
           "a body length of 2 GiB: refused at the header (%d, %s), no buffer", r1, pi_ctl_defect_name(d));
    pi_ctl_framer_clear(&f);
    /* bad magic, and a framer limit below the message */
    memcpy(h, "ZMTP", 4);
    p = h, n = sizeof h;
    tap_ok(pi_ctl_framer_feed(&f, &p, &n, &d) == -PI_ERR_FORMAT && d == PI_CTL_BAD_MAGIC,
           "bad magic: refused at the header");
    pi_ctl_framer_clear(&f);
    memcpy(h, "PICT", 4);
    uint32_t body = 1000;
    memcpy(h + 8, &body, 4);
    f.max = 500;
    p = h, n = sizeof h;
    tap_ok(pi_ctl_framer_feed(&f, &p, &n, &d) == -PI_ERR_RANGE && d == PI_CTL_TOO_LARGE && pi_ctl_framer_held(&f) == 0,
           "a message over the framer's own limit (before a tcp peer's token): refused at the header");
    pi_ctl_framer_clear(&f);
    tap_ok(f.max == 500, "clearing keeps the framer's limit");
}

static void test_endpoints(void)
{
    static const struct {
        const char *ep;
        int ok;
        int transport, loopback;
        const char *host;
    } t[] = {
        {"ipc:///run/user/1000/pinfer/control.sock", 1, PI_CTL_IPC, 0, ""},
        {"ipc://@pinfer", 0, 0, 0, ""},
        {"ipc://", 0, 0, 0, ""},
        {"tcp://127.0.0.1:5555", 1, PI_CTL_TCP, 1, "127.0.0.1"},
        {"tcp://127.1.2.3:5555", 1, PI_CTL_TCP, 1, "127.1.2.3"},
        {"tcp://localhost:1", 1, PI_CTL_TCP, 1, "localhost"},
        {"tcp://[::1]:65535", 1, PI_CTL_TCP, 1, "::1"},
        {"tcp://192.168.1.5:80", 1, PI_CTL_TCP, 0, "192.168.1.5"},
        {"tcp://0.0.0.0:80", 1, PI_CTL_TCP, 0, "0.0.0.0"},
        {"tcp://127.0.0.1.evil.example:80", 1, PI_CTL_TCP, 0, "127.0.0.1.evil.example"},
        {"tcp://*:80", 0, 0, 0, ""},
        {"tcp://127.0.0.1:0", 0, 0, 0, ""},
        {"tcp://127.0.0.1:65536", 0, 0, 0, ""},
        {"tcp://127.0.0.1:", 0, 0, 0, ""},
        {"tcp://127.0.0.1:+80", 0, 0, 0, ""},
        {"tcp://::1:80", 0, 0, 0, ""},
        {"tcp://eth0;127.0.0.1:80", 0, 0, 0, ""},
        {"inproc://x", 0, 0, 0, ""},
        {"ws://127.0.0.1:80", 0, 0, 0, ""},
    };
    int bad = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(t); i++) {
        struct pi_ctl_ep ep;
        char err[256] = "";
        int rc = pi_ctl_ep_parse(t[i].ep, &ep, err, sizeof err);
        int ok =
            (rc == 0) == t[i].ok && (!t[i].ok || ((int)ep.transport == t[i].transport && ep.loopback == t[i].loopback &&
                                                  (t[i].transport != PI_CTL_TCP || strcmp(ep.host, t[i].host) == 0)));
        ok &= t[i].ok || err[0];
        if (!ok) tap_diag("%s: rc %d, %s", t[i].ep, rc, err);
        bad += !ok;
    }
    tap_ok(bad == 0, "%zu endpoints parsed or refused as they should (abstract sockets, wildcards, ports)",
           PI_ARRAY_LEN(t));
    char err[256];
    struct pi_ctl_ep ep;
    pi_ctl_ep_parse("ipc://@name", &ep, err, sizeof err);
    tap_ok(strstr(err, "abstract") != NULL, "an abstract socket is refused with its reason: %s", err);
}

static void test_peer_uid(void)
{
    int sv[2];
    uint32_t uid = 12345;
    tap_ok(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0 && pi_ctl_peer_uid(sv[0], &uid) == 0 &&
               uid == (uint32_t)geteuid(),
           "SO_PEERCRED of a unix socket: this process's uid (%u)", uid);
    close(sv[0]);
    close(sv[1]);
    int p[2];
    tap_ok(pipe(p) == 0 && pi_ctl_peer_uid(p[0], &uid) == -PI_ERR_IO, "no credentials on a pipe: refused");
    close(p[0]);
    close(p[1]);
}

static int write_file(const char *path, const char *text, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    chmod(path, mode);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static void test_token(void)
{
    char path[320], link[330], out[PI_CTL_TOKEN_MAX + 1], err[512];
    snprintf(path, sizeof path, "%s/token", dir);
    snprintf(link, sizeof link, "%s/token-link", dir);
    write_file(path, "0123456789abcdef0123\nsecond line\n", 0600);
    tap_ok(pi_ctl_token_load(path, out, sizeof out, err, sizeof err) == 0 && strcmp(out, "0123456789abcdef0123") == 0,
           "a token file of mode 0600: its first line");
    chmod(path, 0400);
    tap_ok(pi_ctl_token_load(path, out, sizeof out, err, sizeof err) == 0, "mode 0400 too");
    chmod(path, 0640);
    tap_ok(pi_ctl_token_load(path, out, sizeof out, err, sizeof err) == -PI_ERR_INVAL && strstr(err, "chmod 600"),
           "mode 0640 (the group may read it): refused: %s", err);
    write_file(path, "short\n", 0600);
    tap_is_int(pi_ctl_token_load(path, out, sizeof out, err, sizeof err), -PI_ERR_INVAL, "a token of 5 bytes: refused");
    {
        int fd = open(path, O_WRONLY | O_TRUNC);
        tap_ok(fd >= 0 && write(fd, "0123456789abcdef\0tail\n", 22) == 22 && close(fd) == 0 &&
                   pi_ctl_token_load(path, out, sizeof out, err, sizeof err) == -PI_ERR_INVAL,
               "a token file with a NUL byte: refused");
    }
    write_file(path, "0123456789 abcdef0123\n", 0600);
    tap_is_int(pi_ctl_token_load(path, out, sizeof out, err, sizeof err), -PI_ERR_INVAL,
               "a token with a space: refused");
    char longtok[PI_CTL_TOKEN_MAX + 3];
    memset(longtok, 'x', PI_CTL_TOKEN_MAX);
    longtok[PI_CTL_TOKEN_MAX] = '\0';
    write_file(path, longtok, 0600);
    tap_ok(pi_ctl_token_load(path, out, sizeof out, err, sizeof err) == 0 && strlen(out) == PI_CTL_TOKEN_MAX,
           "a token of %u bytes (the bound) without a newline: read", PI_CTL_TOKEN_MAX);
    strcat(longtok, "x");
    write_file(path, longtok, 0600);
    tap_is_int(pi_ctl_token_load(path, out, sizeof out, err, sizeof err), -PI_ERR_INVAL, "one byte more: refused");
    write_file(path, "0123456789abcdef0123\n", 0600);
    unlink(link);
    tap_ok(symlink(path, link) == 0 && pi_ctl_token_load(link, out, sizeof out, err, sizeof err) == -PI_ERR_IO,
           "a symbolic link to a token file: refused (%s)", err);
    tap_ok(pi_ctl_token_load(dir, out, sizeof out, err, sizeof err) == -PI_ERR_INVAL, "a directory: refused");
    snprintf(link, sizeof link, "%s/none", dir);
    tap_is_int(pi_ctl_token_load(link, out, sizeof out, err, sizeof err), -PI_ERR_IO, "a missing file: refused");
    tap_ok(pi_ctl_token_equal("abcdefghabcdefgh", "abcdefghabcdefgh") &&
               !pi_ctl_token_equal("abcdefghabcdefgh", "abcdefghabcdefgx") &&
               !pi_ctl_token_equal("abcdefghabcdefgh", "abcdefghabcdefg") && !pi_ctl_token_equal("abcdefgh", "") &&
               !pi_ctl_token_equal("", "abcdefgh"),
           "tokens compare equal only when equal (no prefix, no empty)");
}

static void test_listen(void)
{
    char path[320], err[512], sub[300];
    struct stat st;
    snprintf(path, sizeof path, "%s/c.sock", dir);
    static const mode_t masks[] = {0, 022, 0177, 0777};
    int good = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(masks); i++) {
        mode_t old = umask(masks[i]);
        int fd = pi_ctl_listen_ipc(path, err, sizeof err);
        umask(old);
        good += fd >= 0 && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0600 &&
                (fcntl(fd, F_GETFL) & O_NONBLOCK) && (fcntl(fd, F_GETFD) & FD_CLOEXEC);
        if (fd >= 0) close(fd);
    }
    tap_is_int(good, (int)PI_ARRAY_LEN(masks), "the listening socket is mode 0600 under umask 000, 022, 0177 and 0777");

    /* the client: a missing socket, a stale one, a live one */
    pi_ctl_client_t *c;
    char ep[400];
    snprintf(ep, sizeof ep, "ipc://%s/missing.sock", dir);
    c = pi_ctl_client_new(ep, 1000);
    tap_ok(!c && errno == ENOENT, "the client on a missing socket: ENOENT at once");
    snprintf(ep, sizeof ep, "ipc://%s", path);
    c = pi_ctl_client_new(ep, 1000); /* the socket of the last iteration: closed, so stale */
    tap_ok(!c && errno == ECONNREFUSED, "the client on a stale socket: ECONNREFUSED");
    c = pi_ctl_client_new("ipc://@abstract", 1000);
    tap_ok(!c && errno == EINVAL, "the client on an abstract socket: EINVAL");

    int fd = pi_ctl_listen_ipc(path, err, sizeof err);
    c = pi_ctl_client_new(ep, 1000);
    int peer = fd >= 0 ? accept(fd, NULL, NULL) : -1;
    struct pi_ctl_msg m;
    tap_ok(c && peer >= 0 && pi_ctl_client_recv(c, &m, 100) == -PI_ERR_TIMEOUT,
           "the client connects; nothing sent: a timeout");
    /* two messages written in three pieces, then the end of the stream */
    uint16_t types[2];
    size_t len;
    uint8_t *two = stream_of(2, &len, types);
    ssize_t w = write(peer, two, 5) + write(peer, two + 5, len - 14) + write(peer, two + len - 9, 9);
    free(two);
    close(peer);
    int r1 = pi_ctl_client_recv(c, &m, 1000);
    int ok1 = r1 == 0 && m.type == types[0];
    if (r1 == 0) pi_ctl_msg_clear(&m);
    int r2 = pi_ctl_client_recv(c, &m, 1000);
    int ok2 = r2 == 0 && m.type == types[1];
    if (r2 == 0) pi_ctl_msg_clear(&m);
    tap_ok(w == (ssize_t)len && ok1 && ok2 && pi_ctl_client_recv(c, &m, 1000) == -PI_ERR_PEER,
           "two messages in three pieces received, then the closed peer: -PI_ERR_PEER");
    pi_ctl_client_destroy(&c);
    tap_ok(c == NULL, "destroy nulls the pointer");
    pi_ctl_client_destroy(&c);
    if (fd >= 0) close(fd);

    /* a regular file at the path is kept and refused; a directory others may write is refused */
    unlink(path);
    write_file(path, "mine", 0600);
    tap_ok(pi_ctl_listen_ipc(path, err, sizeof err) == -PI_ERR_INVAL && lstat(path, &st) == 0 && S_ISREG(st.st_mode),
           "a regular file at the socket's path: refused and kept (%s)", err);
    snprintf(sub, sizeof sub, "%s/open", dir);
    mkdir(sub, 0700);
    chmod(sub, 0777);
    snprintf(path, sizeof path, "%s/c.sock", sub);
    tap_ok(pi_ctl_listen_ipc(path, err, sizeof err) == -PI_ERR_INVAL && strstr(err, "writable by no one else"),
           "a directory others may write: refused: %s", err);
    rmdir(sub);
}

/* A listener whose backlog is full (listen(fd, 0), nothing accepted): the client retries its connect
 * until the deadline and then fails with EAGAIN ("busy"), not as if connected (it used to take a unix
 * connect's EAGAIN for EINPROGRESS, then fail later with an I/O error); once a place frees up, it
 * connects. */
static void test_backlog_full(void)
{
    char path[320], ep[400];
    snprintf(path, sizeof path, "%s/full.sock", dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        tap_skip(2, "the socket path is too long for a unix socket");
        return;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    int fill[64], n_fill = 0;
    bool full = false;
    if (lfd >= 0 && bind(lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(lfd, 0) == 0) {
        while (!full && n_fill < (int)PI_ARRAY_LEN(fill)) {
            int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (fd < 0) break;
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) fill[n_fill++] = fd;
            else full = errno == EAGAIN, close(fd);
        }
    }
    const int64_t t0 = pi_clock_ns();
    pi_ctl_client_t *c = full ? pi_ctl_client_new(ep, 300) : NULL;
    const int e = errno;
    const double ms = (double)(pi_clock_ns() - t0) / 1e6;
    tap_ok(full && !c && e == EAGAIN && ms >= 250 && ms < 2000,
           "a full listen backlog: the client retries for its timeout, then EAGAIN (%.0f ms, %s)", ms, strerror(e));
    pi_ctl_client_destroy(&c);
    int a = lfd >= 0 ? accept(lfd, NULL, NULL) : -1; /* a place in the backlog */
    c = full ? pi_ctl_client_new(ep, 1000) : NULL;
    tap_ok(c != NULL, "a place in the backlog: the client connects");
    pi_ctl_client_destroy(&c);
    if (a >= 0) close(a);
    for (int k = 0; k < n_fill; k++) close(fill[k]);
    if (lfd >= 0) close(lfd);
    unlink(path);
}

int main(void)
{
    alarm(30);
    pi_log_set_program("test-control-stream");
    snprintf(dir, sizeof dir, "%s/test-control-stream.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) tap_bail("mkdtemp: %s", strerror(errno));
    test_framer();
    test_endpoints();
    test_peer_uid();
    test_token();
    test_listen();
    test_backlog_full();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) tap_diag("could not remove %s", dir);
    return tap_done();
}
