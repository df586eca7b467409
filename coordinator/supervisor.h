/*
 * coordinator/supervisor.h - spawning and watching the worker processes.
 *
 * The supervisor owns the coordinator's worker endpoint (a ZeroMQ ROUTER, ipc/control.h) and a
 * thread that, every few tens of milliseconds: reads HELLO / READY / HEARTBEAT / ERROR from the
 * workers, sends each registered worker a HEARTBEAT every PI_SUPER_HEARTBEAT_MS (workers exit when
 * it stops: ipc/link.h), and polls a pidfd per worker. A worker that exits, is killed, or
 * sends no heartbeat for PI_SUPER_SILENCE_MS (it is then killed) is reported once to the on_death
 * callback, from the supervisor thread, within about 50 ms of its death.
 *
 * Workers are spawned with fork + exec from the calling thread; that thread must live as long as
 * the workers, because PR_SET_PDEATHSIG (which the workers set) fires when the forking *thread*
 * exits.
 */
#ifndef PI_COORDINATOR_SUPERVISOR_H
#define PI_COORDINATOR_SUPERVISOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PI_SUPER_MAX_WORKERS 65 /* one GPU worker and up to 64 CPU workers */
#define PI_SUPER_HEARTBEAT_MS 200
#define PI_SUPER_SILENCE_MS 1000
#define PI_SUPER_MAX_CORES 256  /* cores remembered per worker for the status */

enum pi_worker_state {
    PI_WORKER_STARTING = 0, /* spawned, not yet READY */
    PI_WORKER_READY = 1,    /* loaded and serving */
    PI_WORKER_DEAD = 2,     /* exited or killed; reported to on_death */
    PI_WORKER_BROKEN = 3,   /* alive, but another worker died: the workers of one supervisor are one
                             * pipeline, which serves nothing until it is restarted (stopped and
                             * spawned anew); set when the death is seen */
};

/* What the status shows of one worker (a copy; see pi_super_snapshot). */
struct pi_worker_info {
    int role;                /* enum pi_ctl_role */
    int index;               /* CPU worker index; 0 for the GPU worker */
    pid_t pid;
    int numa_node;           /* from HELLO; -1 until then or when unbound */
    uint32_t n_cores;
    uint32_t cores[PI_SUPER_MAX_CORES];
    enum pi_worker_state state;
    int64_t heartbeat_age_ms; /* since its last message; -1 before the first */
    uint64_t neurons;        /* FFN neurons owned, summed over layers (from READY) */
    uint64_t mem_bytes;      /* memory it holds for them (from READY) */
    int exit_status;         /* wait status once DEAD */
};

typedef struct pi_super pi_super_t;

/* Called from the supervisor thread when a worker died (its slot index). Must not call back into
 * the supervisor. Never called for a worker that pi_super_stop_all was asked to stop, even when the
 * death was seen just before the stop (a report still running when the stop starts finishes first). */
typedef void (*pi_super_death_fn)(void *ctx, int slot);

/* Bind endpoint and start the thread. NULL on failure (logged). */
pi_super_t *pi_super_new(const char *endpoint, pi_super_death_fn on_death, void *ctx);

/* Stop every worker (pi_super_stop_all), the thread, and free; accepts NULL; nulls the pointer. */
void pi_super_destroy(pi_super_t **s);

/* fork + exec argv (argv[0] is the program path) as worker (role, index). The n_keep descriptors of
 * keep (close-on-exec in this process) are inherited by this child only: it clears their
 * FD_CLOEXEC between fork and exec, so that each worker holds just the segments it uses (a CPU
 * worker has no business with the step channel). Every other descriptor above stderr is closed in
 * the child, those this process inherited without close-on-exec included. At most 16 in keep.
 * Returns the slot (>= 0) or a negative pi_err (logged; -PI_ERR_INVAL for more than 16). */
int pi_super_spawn(pi_super_t *s, int role, int index, char *const argv[], const int *keep, int n_keep);

/* Wait until every spawned worker is READY: 0; -PI_ERR_PEER as soon as one died;
 * -PI_ERR_TIMEOUT after timeout_ms. */
int pi_super_wait_ready(pi_super_t *s, int timeout_ms);

/* Ask every live worker to shut down (SHUTDOWN message), wait up to grace_ms for them to exit, then
 * SIGKILL the rest and reap them all. Afterwards the supervisor has no workers. */
void pi_super_stop_all(pi_super_t *s, int grace_ms);

/* Copy up to cap workers' state into out; returns the number of workers. */
size_t pi_super_snapshot(pi_super_t *s, struct pi_worker_info *out, size_t cap);

#endif
