/*
 * ipc/control-stream.c - the control protocol over a byte stream: framing, endpoint rules, peer
 * credentials, the shared token, the coordinator's listening unix socket, and pi-ctl's client (see
 * ipc/control-stream.h for why, doc/security.md for the model).
 *
 * DESIGN: everything here treats its input as hostile. The framer allocates a message's buffer only
 * after its header passed every check a header can pass, so the memory one connection makes the
 * reader hold is at most PI_CTL_MAX_MSG. The client is plain POSIX sockets with poll(2) deadlines:
 * pi-ctl needs nothing from libzmq for one connection, and a refused or missing socket is reported
 * from connect(2)'s own errno at once instead of after a timeout.
 */
#include "config.h"

#include "ipc/control-stream.h"

#include "lib/common.h"
#include "lib/log.h"
#include "lib/secret.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_INBUF 65536 /* bytes one read(2) of the client takes */

static void say(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    if (!err || !err_len) return;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- framing */

int pi_ctl_framer_feed(struct pi_ctl_framer *f, const uint8_t **p, size_t *n, enum pi_ctl_defect *defect)
{
    if (defect) *defect = PI_CTL_OK;
    if (!f->want) {
        /* The header first, into the fixed array: nothing is allocated for a header we refuse. */
        size_t take = PI_MIN(*n, (size_t)PI_CTL_HEADER_SIZE - f->len);
        memcpy(f->hdr + f->len, *p, take);
        f->len += take, *p += take, *n -= take;
        if (f->len < PI_CTL_HEADER_SIZE) return 0;
        size_t total;
        int rc = pi_ctl_frame_size(f->hdr, &total, defect);
        if (rc != 0) return rc;
        if (f->max && total > f->max) {
            if (defect) *defect = PI_CTL_TOO_LARGE;
            return -PI_ERR_RANGE;
        }
        f->buf = malloc(total);
        if (!f->buf) return -PI_ERR_NOMEM;
        memcpy(f->buf, f->hdr, PI_CTL_HEADER_SIZE);
        f->want = total;
    }
    size_t take = PI_MIN(*n, f->want - f->len);
    memcpy(f->buf + f->len, *p, take);
    f->len += take, *p += take, *n -= take;
    return f->len == f->want;
}

int pi_ctl_framer_pop(struct pi_ctl_framer *f, struct pi_ctl_msg *msg, enum pi_ctl_defect *defect)
{
    PI_ASSERT(f->want && f->len == f->want);
    int rc = pi_ctl_decode(f->buf, f->len, msg, defect);
    pi_ctl_framer_clear(f);
    return rc;
}

size_t pi_ctl_framer_held(const struct pi_ctl_framer *f) { return f->buf ? f->want : 0; }

bool pi_ctl_framer_partial(const struct pi_ctl_framer *f) { return f->len > 0; }

void pi_ctl_framer_clear(struct pi_ctl_framer *f)
{
    const size_t max = f->max;
    free(f->buf);
    memset(f, 0, sizeof *f);
    f->max = max;
}

/* ---------------------------------------------------------------- endpoints */

/* "127.x.y.z", "localhost", "::1" (the forms a loopback bind names). */
static bool host_is_loopback(const char *h)
{
    unsigned a, b, c, d;
    char tail;
    if (strcmp(h, "localhost") == 0 || strcmp(h, "::1") == 0) return true;
    return sscanf(h, "%3u.%3u.%3u.%3u%c", &a, &b, &c, &d, &tail) == 4 && a == 127 && b < 256 && c < 256 && d < 256;
}

int pi_ctl_ep_parse(const char *e, struct pi_ctl_ep *ep, char *err, size_t err_len)
{
    memset(ep, 0, sizeof *ep);
    if (strncmp(e, "ipc://", 6) == 0) {
        const char *path = e + 6;
        ep->transport = PI_CTL_IPC;
        if (path[0] == '@' || path[0] == '\0') {
            say(err, err_len, "%s: %s", e,
                path[0] ? "an abstract unix socket has no permissions (any local user could connect); use a path"
                        : "no path");
            return -PI_ERR_INVAL;
        }
        if (strlen(path) >= sizeof ep->path) {
            say(err, err_len, "%s: the path is longer than a unix socket's %zu bytes", e, sizeof ep->path - 1);
            return -PI_ERR_INVAL;
        }
        memcpy(ep->path, path, strlen(path) + 1);
        return 0;
    }
    if (strncmp(e, "tcp://", 6) == 0) {
        const char *h = e + 6, *colon;
        size_t hl;
        ep->transport = PI_CTL_TCP;
        if (h[0] == '[') { /* [IPv6]:port */
            const char *close = strchr(h, ']');
            if (!close || close[1] != ':') goto bad_tcp;
            h++;
            hl = (size_t)(close - h);
            colon = close + 1;
        } else {
            colon = strrchr(h, ':');
            if (!colon || memchr(h, ':', (size_t)(colon - h))) goto bad_tcp; /* an IPv6 literal needs brackets */
            hl = (size_t)(colon - h);
        }
        const char *port = colon + 1;
        size_t pl = strlen(port);
        if (hl == 0 || hl >= sizeof ep->host || pl == 0 || pl > 5 || strspn(port, "0123456789") != pl) goto bad_tcp;
        long pn = strtol(port, NULL, 10);
        if (pn < 1 || pn > 65535) goto bad_tcp;
        memcpy(ep->host, h, hl);
        ep->host[hl] = '\0';
        if (strchr(ep->host, '*') || strchr(ep->host, ';')) {
            say(err, err_len, "%s: name the address to listen on (no wildcard, no interface list)", e);
            return -PI_ERR_INVAL;
        }
        snprintf(ep->port, sizeof ep->port, "%ld", pn);
        ep->loopback = host_is_loopback(ep->host);
        return 0;
    bad_tcp:
        say(err, err_len, "%s: expected tcp://HOST:PORT (tcp://[IPV6]:PORT) with a port 1..65535", e);
        return -PI_ERR_INVAL;
    }
    say(err, err_len, "%s: only ipc://PATH and tcp://HOST:PORT endpoints are supported", e);
    return -PI_ERR_INVAL;
}

/* ---------------------------------------------------------------- peer credentials */

int pi_ctl_peer_uid(int fd, uint32_t *uid)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || len != sizeof cr) return -PI_ERR_IO;
    *uid = (uint32_t)cr.uid;
    return 0;
}

/* ---------------------------------------------------------------- token */

int pi_ctl_token_load(const char *path, char *out, size_t out_len, char *err, size_t err_len)
{
    char buf[PI_CTL_TOKEN_MAX + 2];
    char why[PATH_MAX + 160];
    PI_ASSERT(out_len > PI_CTL_TOKEN_MAX);
    int fd = pi_secret_open(path, PI_SECRET_OWNER, "token file", why, sizeof why);
    if (fd < 0) {
        say(err, err_len, "%s", why);
        return fd;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) {
        say(err, err_len, "token file %s: %s", path, strerror(errno));
        return -PI_ERR_IO;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', (size_t)n)) { /* strcspn would stop there and take what comes before */
        say(err, err_len, "token file %s: a NUL byte", path);
        return -PI_ERR_INVAL;
    }
    size_t len = strcspn(buf, "\n");
    if (len == (size_t)n && (size_t)n > PI_CTL_TOKEN_MAX) len = (size_t)n; /* no newline within the bound */
    if (len < PI_CTL_TOKEN_MIN || len > PI_CTL_TOKEN_MAX) {
        say(err, err_len, "token file %s: the token (its first line) must have %u to %u bytes", path, PI_CTL_TOKEN_MIN,
            PI_CTL_TOKEN_MAX);
        return -PI_ERR_INVAL;
    }
    for (size_t i = 0; i < len; i++) {
        if (buf[i] < '!' || buf[i] > '~') {
            say(err, err_len, "token file %s: the token must be printable ASCII without spaces", path);
            return -PI_ERR_INVAL;
        }
    }
    memcpy(out, buf, len);
    out[len] = '\0';
    explicit_bzero(buf, sizeof buf);
    return 0;
}

bool pi_ctl_token_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    /* Every byte of a is compared (b's cycled), so the time says nothing about where they differ. */
    for (size_t i = 0; i < la; i++) diff |= (unsigned char)(a[i] ^ (lb ? b[i % lb] : 0));
    return diff == 0 && la == lb;
}

/* ---------------------------------------------------------------- listening sockets */

/* The directory part of path, which must be this user's and writable by no one else. */
static int parent_private(const char *path, char *err, size_t err_len)
{
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    const char *slash = strrchr(path, '/');
    struct stat st;
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (stat(dir, &st) != 0) {
        say(err, err_len, "ipc://%s: directory %s: %s", path, dir, strerror(errno));
        return -PI_ERR_IO;
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
        say(err, err_len,
            "ipc://%s: the directory %s must be this user's and writable by no one else (it is uid %u, "
            "mode %03o): another user could replace the socket",
            path, dir, (unsigned)st.st_uid, (unsigned)(st.st_mode & 0777));
        return -PI_ERR_INVAL;
    }
    return 0;
}

int pi_ctl_listen_ipc(const char *path, char *err, size_t err_len)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    if (strlen(path) >= sizeof sa.sun_path || path[0] == '\0' || path[0] == '@') {
        say(err, err_len, "ipc://%s: not a path for a unix socket", path);
        return -PI_ERR_INVAL;
    }
    int rc = parent_private(path, err, err_len);
    if (rc != 0) return rc;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            say(err, err_len, "ipc://%s: the path exists and is not a socket", path);
            return -PI_ERR_INVAL;
        }
        unlink(path); /* a socket nobody listens on (the caller checked) */
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        say(err, err_len, "socket(AF_UNIX) failed: %s", strerror(errno));
        return -PI_ERR_IO;
    }
    /* Linux creates the file with the socket inode's mode less the umask: set the mode before bind,
     * so the file is never more open than 0600, and again after, in case the umask took bits away. */
    if (fchmod(fd, 0600) != 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || chmod(path, 0600) != 0 ||
        listen(fd, SOMAXCONN) != 0) {
        say(err, err_len, "ipc://%s: %s", path, strerror(errno));
        close(fd);
        return -PI_ERR_IO;
    }
    if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode) || (st.st_mode & 0777) != 0600) {
        say(err, err_len, "ipc://%s: the socket file is not mode 0600 after bind", path);
        close(fd);
        unlink(path);
        return -PI_ERR_IO;
    }
    return fd;
}

int pi_ctl_listen_tcp(const struct pi_ctl_ep *ep, char *err, size_t err_len)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    int g = getaddrinfo(ep->host, ep->port, &hints, &res);
    if (g != 0) {
        say(err, err_len, "tcp://%s:%s: %s", ep->host, ep->port, gai_strerror(g));
        return -PI_ERR_IO;
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, res->ai_protocol), one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
        say(err, err_len, "tcp://%s:%s: %s", ep->host, ep->port, strerror(errno));
        if (fd >= 0) close(fd);
        fd = -PI_ERR_IO;
    }
    freeaddrinfo(res);
    return fd;
}

/* ---------------------------------------------------------------- client */

struct pi_ctl_client {
    int fd;
    struct pi_ctl_framer fr;
    uint8_t in[CLIENT_INBUF]; /* bytes read and not yet framed: in[pos..len) */
    size_t pos, len;
    bool closed; /* the peer closed, or the stream is out of step */
};

static int64_t ms_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Wait for events on fd until deadline_ms (-1: none). 1 ready (*revents, when given, says which), 0
 * timed out, -1 error (errno). */
static int wait_fd_ev(int fd, short events, int64_t deadline_ms, short *revents)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int left = deadline_ms < 0 ? -1 : (int)PI_MAX(0, PI_MIN(deadline_ms - ms_now(), (int64_t)INT_MAX));
        int r = poll(&p, 1, left);
        if (r < 0 && errno == EINTR) continue;
        if (revents) *revents = p.revents;
        return r < 0 ? -1 : r;
    }
}

static int wait_fd(int fd, short events, int64_t deadline_ms) { return wait_fd_ev(fd, events, deadline_ms, NULL); }

#define CONNECT_RETRY_MS 5 /* the pause between two connects while a unix listener's backlog is full */

/* Non-blocking connect to sa, waiting until deadline. 0 or -1 with errno: EAGAIN when a unix
 * socket's listen backlog stayed full until the deadline (the coordinator is busy: a unix connect is
 * never "in progress", its EAGAIN means try again), ECONNRESET when the socket hung up unconnected. */
static int connect_by(int fd, const struct sockaddr *sa, socklen_t len, int64_t deadline)
{
    for (;;) {
        if (connect(fd, sa, len) == 0) return 0;
        if (errno == EINTR) continue;
        if (errno != EAGAIN || sa->sa_family != AF_UNIX) break;
        const int64_t left = deadline < 0 ? CONNECT_RETRY_MS : deadline - ms_now();
        if (left <= 0) return -1; /* errno: EAGAIN */
        struct timespec t = {0, (long)PI_MIN(left, (int64_t)CONNECT_RETRY_MS) * 1000000L};
        nanosleep(&t, NULL);
    }
    if (errno != EINPROGRESS) return -1;
    short re = 0;
    int r = wait_fd_ev(fd, POLLOUT, deadline, &re);
    if (r <= 0) {
        if (r == 0) errno = ETIMEDOUT;
        return -1;
    }
    int e = 0;
    socklen_t el = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0) return -1;
    if (!e && (re & (POLLHUP | POLLERR | POLLNVAL))) e = ECONNRESET; /* hung up, whatever SO_ERROR says */
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

static int client_connect(const struct pi_ctl_ep *ep, int64_t deadline)
{
    if (ep->transport == PI_CTL_IPC) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, ep->path, strlen(ep->path) + 1);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) return -1;
        if (connect_by(fd, (struct sockaddr *)&sa, sizeof sa, deadline) != 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        return fd;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    int g = getaddrinfo(ep->host, ep->port, &hints, &res);
    if (g != 0) {
        errno = g == EAI_SYSTEM ? errno : EHOSTUNREACH;
        return -1;
    }
    int fd = -1, e = ECONNREFUSED;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) continue;
        if (connect_by(fd, a->ai_addr, a->ai_addrlen, deadline) != 0) {
            e = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) errno = e;
    return fd;
}

pi_ctl_client_t *pi_ctl_client_new(const char *endpoint, int timeout_ms)
{
    struct pi_ctl_ep ep;
    if (pi_ctl_ep_parse(endpoint, &ep, NULL, 0) != 0) {
        errno = EINVAL;
        return NULL;
    }
    int fd = client_connect(&ep, timeout_ms < 0 ? -1 : ms_now() + timeout_ms);
    if (fd < 0) return NULL;
    pi_ctl_client_t *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->fd = fd;
    return c;
}

int pi_ctl_client_send_raw(pi_ctl_client_t *c, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    /* A bounded wait per send: a coordinator that stops reading must not hold the client forever. */
    const int64_t deadline = ms_now() + 60000;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n, len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(c->fd, POLLOUT, deadline);
            if (r == 0) return -PI_ERR_TIMEOUT;
            if (r > 0) continue;
        }
        if (errno == EPIPE || errno == ECONNRESET) return -PI_ERR_PEER;
        return -PI_ERR_IO;
    }
    return 0;
}

int pi_ctl_client_send(pi_ctl_client_t *c, const struct pi_ctl_msg *msg)
{
    uint8_t *buf;
    size_t len;
    int rc = pi_ctl_encode(msg, &buf, &len);
    if (rc < 0) return rc;
    rc = pi_ctl_client_send_raw(c, buf, len);
    free(buf);
    return rc;
}

int pi_ctl_client_recv(pi_ctl_client_t *c, struct pi_ctl_msg *msg, int timeout_ms)
{
    const int64_t deadline = timeout_ms < 0 ? -1 : ms_now() + timeout_ms;
    memset(msg, 0, sizeof *msg);
    for (;;) {
        while (c->pos < c->len && !c->closed) {
            const uint8_t *p = c->in + c->pos;
            size_t n = c->len - c->pos;
            enum pi_ctl_defect d;
            int r = pi_ctl_framer_feed(&c->fr, &p, &n, &d);
            c->pos = c->len - n;
            if (r == 1) return pi_ctl_framer_pop(&c->fr, msg, NULL);
            if (r < 0) {
                c->closed = true; /* out of step: nothing after this can be read */
                pi_ctl_peer_warn("control: the coordinator sent a bad header (%s)", pi_ctl_defect_name(d));
                return r;
            }
        }
        if (c->closed) return -PI_ERR_PEER;
        c->pos = c->len = 0;
        int w = wait_fd(c->fd, POLLIN, deadline);
        if (w == 0) return -PI_ERR_TIMEOUT;
        if (w < 0) return -PI_ERR_IO;
        ssize_t n = recv(c->fd, c->in, sizeof c->in, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0 && errno != ECONNRESET) return -PI_ERR_IO;
        if (n <= 0) {
            c->closed = true;
            return -PI_ERR_PEER;
        }
        c->len = (size_t)n;
    }
}

void pi_ctl_client_destroy(pi_ctl_client_t **c)
{
    if (!c || !*c) return;
    close((*c)->fd);
    pi_ctl_framer_clear(&(*c)->fr);
    free(*c);
    *c = NULL;
}
