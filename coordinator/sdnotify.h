/*
 * coordinator/sdnotify.h - systemd's readiness protocol (sd_notify(3)) for pi-coordinator's server
 * mode, without libsystemd: one datagram per state change to the AF_UNIX socket named by the
 * NOTIFY_SOCKET environment variable, which systemd sets for a Type=notify unit (data/pinfer.service.in).
 * Outside such a unit the variable is unset and every call is a no-op.
 *
 * What pi-coordinator sends: STATUS=<what it is doing> while it reads the model and the workers load,
 * READY=1 (with STATUS=serving ...) once the engine answers and the sockets listen, STOPPING=1 at
 * shutdown.
 */
#ifndef PI_COORDINATOR_SDNOTIFY_H
#define PI_COORDINATOR_SDNOTIFY_H

/* Read NOTIFY_SOCKET once and remove it from the environment (so that the worker processes, which do
 * not speak for the unit, never see it). An absolute path or an abstract name ("@..." ) that fits a
 * sockaddr_un is kept; anything else is refused with one warning. Idempotent. */
void pi_sd_notify_init(void);

/* Send `state` (newline-separated VAR=value assignments, e.g. "READY=1\nSTATUS=serving") as one
 * datagram. No-op without a socket; a failed send is logged once as a warning and otherwise ignored
 * (the service manager's absence never stops the server). Thread-safe (each call its own socket). */
void pi_sd_notify(const char *state);

/* Whether pi_sd_notify_init found a socket to talk to. */
int pi_sd_notify_enabled(void);

#endif
