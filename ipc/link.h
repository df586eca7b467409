/*
 * ipc/link.h - a worker's control link to the coordinator (used by pi-gpu-worker and
 * pi-cpu-worker): a thread owning one ZeroMQ DEALER socket (ipc/control.h) that registers the
 * worker (HELLO: role, pid, NUMA node, cores, protocol version), reports READY once loaded, sends a
 * HEARTBEAT every PI_LINK_HEARTBEAT_MS and watches the coordinator's.
 *
 * Crash-only: when the coordinator has been silent for PI_LINK_SILENCE_MS, or the parent process
 * changed (the coordinator died and we were re-parented; PR_SET_PDEATHSIG covers the usual case),
 * the thread ends the whole process with _exit(3). A SHUTDOWN message sets a flag the worker's main
 * loop polls (pi_link_stopping).
 *
 * Liveness is progress, not just a running link thread: once a worker's main thread has called
 * pi_link_progress (after READY), the heartbeats stop when it then goes PI_LINK_STALL_MS without
 * calling it again (a CUDA call that never returns, a deadlock), and the coordinator's supervision
 * replaces the worker as it does a silent one. Without this a hung GPU worker kept heart-beating and
 * a request waited for the step channel's 600 s timeout (a review reproduced it by stopping the main
 * thread with ptrace). pi_link_opts.stall_ms sets another limit (pinfer.conf's [gpu] stall_ms, 500 ms
 * up; tests take 1 s): below the slowest healthy gap between two calls (a layer whose CPU partials
 * take up to the exchange's 5 s) it can replace a healthy worker. A pause of the whole process (the link thread ran
 * late too) is not counted.
 */
#ifndef PI_IPC_LINK_H
#define PI_IPC_LINK_H

#include <stdbool.h>
#include <stdint.h>

#define PI_LINK_HEARTBEAT_MS 200
#define PI_LINK_SILENCE_MS 3000
/* Longer than any step's layer takes on a working worker (the GPU worker's wait for the CPU
 * workers' partials alone may take 5 s), far shorter than the step channel's 600 s. */
#define PI_LINK_STALL_MS 30000
#define PI_LINK_STALL_MS_MIN 500
#define PI_LINK_STALL_MS_MAX 3600000

typedef struct pi_link pi_link_t;

struct pi_link_opts {
    const char *endpoint;  /* the coordinator's worker endpoint */
    uint32_t role;         /* enum pi_ctl_role */
    uint32_t index;        /* CPU worker index; 0 for the GPU worker */
    int32_t numa_node;     /* -1: not bound */
    const uint32_t *cores; /* (n_cores) OS cpu ids the worker's threads run on */
    uint32_t n_cores;
    uint32_t stall_ms; /* the progress limit (pi_link_progress); 0: PI_LINK_STALL_MS, else within
                              [PI_LINK_STALL_MS_MIN, PI_LINK_STALL_MS_MAX] */
};

/* Set PR_SET_PDEATHSIG to SIGKILL and check the parent is still there (call first in main()).
 * Returns 0, or -PI_ERR_PEER when the parent already died. */
int pi_link_die_with_parent(void);

/* Connect and start the thread (HELLO is sent at once). NULL on failure (logged), also for a stall_ms
 * outside its range. */
pi_link_t *pi_link_start(const struct pi_link_opts *o);

/* Report READY (neurons owned over all layers, bytes of memory held) with the next heartbeat. */
void pi_link_ready(pi_link_t *l, uint64_t neurons, uint64_t mem_bytes);

/* Report an error (a negative pi_err and a line of text) to the coordinator. */
void pi_link_error(pi_link_t *l, int code, const char *text);

/* The calling (main) thread is making progress: call at least every PI_LINK_STALL_MS while READY, in
 * the idle wait and per layer. The first call arms the stall check (only the GPU worker arms it: a
 * CPU worker's hang already fails the layer at the GPU worker's 5 s wait for its partials). Cheap
 * (one atomic store). */
void pi_link_progress(pi_link_t *l);

/* True once the coordinator asked this worker to shut down. */
bool pi_link_stopping(const pi_link_t *l);

/* Stop the thread and close the socket; accepts NULL; nulls the caller's pointer. */
void pi_link_stop(pi_link_t **l);

#endif
