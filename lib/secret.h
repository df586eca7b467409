/*
 * lib/secret.h - opening a secret file (a key, a token) without trusting it.
 *
 * A file named in the configuration that holds credentials is checked before a byte of it is read:
 * that it is a regular file, and that no one it is not meant for may read or write it. The checks
 * run on the opened descriptor (fstat), not on the name, so the file cannot be swapped between them;
 * and the open never blocks, so a FIFO or a device named there is refused at once instead of
 * stalling the process (an open of a FIFO without a writer waits, and no signal handler that returns
 * ends that wait). Two policies, one per kind of secret the programs hold.
 */
#ifndef PI_SECRET_H
#define PI_SECRET_H

#include <stddef.h>

/* Who may hold and read a secret file. */
enum pi_secret_policy {
    /* This user's own file, which no one else may read or write (mode & 077 clear: chmod 600); a
     * symbolic link is refused (the control token: pi-ctl and the coordinator run as one user). */
    PI_SECRET_OWNER,
    /* Any owner's; its group may read it, others may neither read nor write (mode & 007 clear: chmod
     * o-rwx); a symbolic link is followed (the API key file, which a system service's group may
     * share with it). */
    PI_SECRET_GROUP,
};

/* Open path for reading as a secret file held as policy says: close-on-exec, without blocking, then
 * checked on the descriptor. what names the file in messages ("token file"). Returns the descriptor
 * (the caller closes it; it is O_NONBLOCK, which a regular file's reads ignore), or a negative enum
 * pi_err with one line in err (err_len > 0), naming what and path and, for a mode, the chmod that
 * fixes it: -PI_ERR_IO when it cannot be opened or stat'd (missing, unreadable, a symbolic link under
 * PI_SECRET_OWNER), -PI_ERR_INVAL when it is not a regular file or others may reach it. */
int pi_secret_open(const char *path, enum pi_secret_policy policy, const char *what, char *err, size_t err_len);

#endif
