/*
 * ipc/control-stream.h - the control protocol over a byte stream (a unix or TCP socket), and what it
 * needs to be safe there: framing, the endpoint rules, peer credentials, the shared token, a listening
 * unix socket with an explicit mode, and the client pi-ctl uses.
 *
 * Why a byte stream: over ZeroMQ's own protocol (ZMTP) libzmq delivers a multipart message only after
 * its last frame and bounds each frame (ZMQ_MAXMSGSIZE), never the sum, so one peer could make the
 * coordinator hold gigabytes (issue 20, defect 2); and libzmq accepts connections on its own thread
 * and aborts the process when accept() fails with EMFILE (defect 1). So the control socket is a
 * plain unix or TCP socket that the coordinator accepts and reads itself, carrying the messages of
 * ipc/control.h back to back. A message announces its size in its header, so the reader (struct
 * pi_ctl_framer) checks the header as soon as it has its 24 bytes and never holds more than one
 * message of at most PI_CTL_MAX_MSG bytes per connection; a bad header ends the connection (a byte
 * stream cannot be resynchronised). See doc/security.md and doc/ipc.md.
 */
#ifndef PI_IPC_CONTROL_STREAM_H
#define PI_IPC_CONTROL_STREAM_H

#include "ipc/control.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- framing ---- */

/* One connection's message in the making. Zeroed = empty; pi_ctl_framer_clear frees it. */
struct pi_ctl_framer {
    uint8_t hdr[PI_CTL_HEADER_SIZE]; /* the header while it is incomplete */
    uint8_t *buf;                    /* [want] bytes, header included, once the header is checked */
    size_t len;                      /* bytes of the message received so far */
    size_t want;                     /* the message's size; 0 until its header is in */
    size_t max;                      /* the largest message taken (0: PI_CTL_MAX_MSG); set by the owner */
};

/* Take bytes from (*p, *n) up to the end of the current message, advancing both. Returns 1 when a
 * message is complete (take it with pi_ctl_framer_pop before feeding more), 0 when all bytes were
 * taken and the message is still incomplete, or the header's error (-PI_ERR_FORMAT, -PI_ERR_RANGE,
 * -PI_ERR_UNSUPPORTED, *defect set, nothing logged; -PI_ERR_RANGE with PI_CTL_TOO_LARGE too for a
 * message over f->max): the stream is out of step and must be closed.
 * -PI_ERR_NOMEM when the message's buffer cannot be allocated. */
int pi_ctl_framer_feed(struct pi_ctl_framer *f, const uint8_t **p, size_t *n, enum pi_ctl_defect *defect);

/* Decode the complete message (pi_ctl_decode: its result, logged by it when bad) and empty the
 * framer; the stream stays in step either way. */
int pi_ctl_framer_pop(struct pi_ctl_framer *f, struct pi_ctl_msg *msg, enum pi_ctl_defect *defect);

/* Bytes of memory the framer holds now (0 between messages). */
size_t pi_ctl_framer_held(const struct pi_ctl_framer *f);

/* True while part of a message has arrived and the rest has not. */
bool pi_ctl_framer_partial(const struct pi_ctl_framer *f);

/* Free the buffer and empty the framer. */
void pi_ctl_framer_clear(struct pi_ctl_framer *f);

/* ---- endpoints ---- */

enum pi_ctl_transport { PI_CTL_IPC = 1, PI_CTL_TCP = 2 };

struct pi_ctl_ep {
    enum pi_ctl_transport transport;
    char path[108]; /* ipc: the socket's path (fits sockaddr_un) */
    char host[256]; /* tcp: the host, brackets of an IPv6 literal removed */
    char port[8];   /* tcp: the port, digits */
    bool loopback;  /* tcp: 127.0.0.0/8, localhost or ::1 */
};

/* Parse "ipc://PATH" or "tcp://HOST:PORT" ("tcp://[::1]:PORT" for IPv6). Refused, with the reason in
 * err: an abstract socket ("ipc://@name": Linux gives it no permissions, so any local user could
 * connect), a path too long for a unix socket, a port that is not 1..65535, a wildcard host ("*"),
 * any other transport. Returns 0 or -PI_ERR_INVAL. */
int pi_ctl_ep_parse(const char *endpoint, struct pi_ctl_ep *ep, char *err, size_t err_len);

/* ---- peer credentials ---- */

/* The uid of the process at the other end of the unix socket fd (SO_PEERCRED: the kernel's record
 * from connect time, which the peer cannot forge). Returns 0, or -PI_ERR_IO (not a unix socket, or
 * the call failed; the caller refuses such a peer). */
int pi_ctl_peer_uid(int fd, uint32_t *uid);

/* ---- shared token (tcp) ---- */

/* Read the token from path: its first line, PI_CTL_TOKEN_MIN..PI_CTL_TOKEN_MAX bytes of printable
 * ASCII. The file must be a regular file owned by this user that no one else may read or write
 * (mode 0600 or 0400): a token others can read protects nothing. out needs PI_CTL_TOKEN_MAX + 1
 * bytes. Returns 0, or -PI_ERR_IO / -PI_ERR_INVAL with the reason in err (not logged). */
int pi_ctl_token_load(const char *path, char *out, size_t out_len, char *err, size_t err_len);

/* a equals b, in time that depends on their lengths only. */
bool pi_ctl_token_equal(const char *a, const char *b);

/* ---- the coordinator's listening sockets ---- */

/* A listening unix socket at path with mode 0600 whatever the umask (fchmod before bind, chmod
 * after), non-blocking and close-on-exec. The directory holding it must be this user's and writable
 * by no one else (otherwise another user could replace the socket). A socket file already at path is
 * replaced (the caller has checked that nobody listens on it); anything else there is refused.
 * Returns the descriptor, or -PI_ERR_IO / -PI_ERR_INVAL with the reason in err. */
int pi_ctl_listen_ipc(const char *path, char *err, size_t err_len);

/* A listening TCP socket on ep's host and port (SO_REUSEADDR, non-blocking, close-on-exec). Returns
 * the descriptor, or -PI_ERR_IO with the reason in err. */
int pi_ctl_listen_tcp(const struct pi_ctl_ep *ep, char *err, size_t err_len);

/* ---- the client (pi-ctl, tests) ---- */

typedef struct pi_ctl_client pi_ctl_client_t;

/* Connect to endpoint, waiting at most timeout_ms. Returns the client, or NULL with errno set
 * (ENOENT, ECONNREFUSED, EACCES, ETIMEDOUT, EAGAIN when a unix listener's backlog stayed full until the
 * timeout (retried meanwhile), EINVAL for an endpoint pi_ctl_ep_parse refuses, ...);
 * nothing is logged, the caller words the error. */
pi_ctl_client_t *pi_ctl_client_new(const char *endpoint, int timeout_ms);

/* Send msg, or len raw bytes (tests), whole. Returns 0, -PI_ERR_PEER (the connection is closed),
 * -PI_ERR_TIMEOUT, -PI_ERR_IO, or the encoder's error. */
int pi_ctl_client_send(pi_ctl_client_t *c, const struct pi_ctl_msg *msg);
int pi_ctl_client_send_raw(pi_ctl_client_t *c, const void *buf, size_t len);

/* Receive one message within timeout_ms (-1: no limit). Returns 0, -PI_ERR_TIMEOUT, -PI_ERR_PEER
 * (the coordinator closed the connection), -PI_ERR_IO, or a decoding error (the message was
 * consumed and the stream is still in step, except after a bad header: then -PI_ERR_PEER follows). */
int pi_ctl_client_recv(pi_ctl_client_t *c, struct pi_ctl_msg *msg, int timeout_ms);

/* Close and free; accepts NULL; nulls the caller's pointer. */
void pi_ctl_client_destroy(pi_ctl_client_t **c);

#endif
