/*
 * coordinator/fd-budget.h - server mode's one budget of file descriptors: how many connections the
 * control socket and the HTTP API may hold at once, so that together they can never take the
 * descriptors the rest of the process needs.
 *
 * Why: libzmq's own accept() on the workers' socket (RUN_DIR/pinfer.XXXXXX/workers.sock) aborts the
 * process on EMFILE, and a pipeline restart needs new segments (memfd), pidfds and connections from
 * every worker. A flood of connections to the control socket or the HTTP API that took the last
 * descriptors would turn a worker's restart into the coordinator's death. So the descriptors left free
 * once the engine runs are split between the two listeners, after a reserve for everything else.
 *
 * The budget, measured once the engine is ready (doc/security.md):
 *   free    = the soft limit of open files (raised to the hard one at start) - the descriptors open
 *             (the HTTP API's connections not counted: they are what is being budgeted)
 *   reserve = the engine's own descriptors once more (what a pipeline restart opens while the old
 *             ones may still be closing: segments, pidfds, the workers' connections) + PI_FD_RESERVE
 *   shares  = free - reserve, half for the control socket and half for the HTTP API, and what one of
 *             them does not need ([control] max_connections, [http] max_connections) goes to the other;
 *             each setting is lowered to its share when the share is smaller (at least 1). With the
 *             HTTP API off the control socket may take it all.
 * While the engine loads (its count still unknown) the HTTP API holds at most PI_FD_LOADING_HTTP
 * connections (it then answers 503 to everything but the model list, health and metrics).
 */
#ifndef PI_COORDINATOR_FD_BUDGET_H
#define PI_COORDINATOR_FD_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

/* The fixed part of the reserve: each listener's accept-and-close past its cap (one descriptor each),
 * a pipe or two per worker spawn, sd_notify's socket, reading /proc, libmicrohttpd's and libzmq's
 * internals created later (an eventfd per new ZeroMQ socket), a log file reopened, with room to spare. */
#define PI_FD_RESERVE 32
/* The HTTP API's cap while the engine loads. */
#define PI_FD_LOADING_HTTP 16

struct pi_fd_budget {
    int64_t limit;   /* the soft limit of open files; -1: none (RLIM_INFINITY) */
    int64_t in_use;  /* descriptors open when measured, the HTTP API's connections not counted */
    int64_t reserve; /* kept for everything else: the engine's count + PI_FD_RESERVE */
    int control;     /* the control socket's cap: [control] max_connections or its share */
    int http;        /* the HTTP API's cap: [http] max_connections or its share; 0 with the API off */
    bool control_lowered, http_lowered; /* the share was smaller than the setting */
};

/* Split the descriptors between the two listeners (pure; see the DESIGN above): limit (-1: none),
 * in_use and engine (the engine's descriptors) as measured, control_want and http_want the settings
 * (http_want 0: the HTTP API is off, the control socket may take every free descriptor). */
void pi_fd_budget_split(struct pi_fd_budget *b, int64_t limit, int64_t in_use, int64_t engine, int control_want,
                        int http_want);

/* The HTTP API's cap while the engine loads: http_want, at most PI_FD_LOADING_HTTP and a quarter of
 * the descriptors free (limit - in_use; limit -1: none); at least 1. */
int pi_fd_budget_loading(int64_t limit, int64_t in_use, int http_want);

/* Raise the soft limit of open files to the hard one (what a flood must exhaust before the caps
 * matter); logged, a failure is a warning. */
void pi_fd_budget_raise_limit(void);

/* The soft limit of open files, or -1 when there is none (or it cannot be read). */
int64_t pi_fd_budget_limit(void);

/* Descriptors this process has open now (/proc/self/fd), or -1. */
int pi_fd_budget_count(void);

/* Log the budget: one info line, and, when a cap was lowered, one warning naming the keys lowered and
 * the limit of open files to raise. */
void pi_fd_budget_log(const struct pi_fd_budget *b, int control_want, int http_want);

#endif
