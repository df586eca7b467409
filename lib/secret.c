/*
 * lib/secret.c - opening a secret file without trusting it (lib/secret.h): open without blocking,
 * then fstat the descriptor and check its type, owner and mode against the policy.
 */
#include "config.h"
#include "lib/secret.h"
#include "lib/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What a file that is not regular is, for the message. */
static const char *kind_of(mode_t m)
{
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISDIR(m)) return "a directory";
    if (S_ISCHR(m) || S_ISBLK(m)) return "a device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

int pi_secret_open(const char *path, enum pi_secret_policy policy, const char *what, char *err, size_t err_len)
{
    PI_ASSERT(err && err_len > 0 && (policy == PI_SECRET_OWNER || policy == PI_SECRET_GROUP));
    /* O_NONBLOCK: a FIFO without a writer would block open(); the type is checked only after it */
    int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    if (policy == PI_SECRET_OWNER) flags |= O_NOFOLLOW;
    int fd = open(path, flags);
    if (fd < 0) {
        snprintf(err, err_len, "%s %s: %s", what, path, strerror(errno));
        return -PI_ERR_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, err_len, "%s %s: fstat: %s", what, path, strerror(errno));
        close(fd);
        return -PI_ERR_IO;
    }
    int rc = 0;
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, err_len, "%s %s: must be a regular file, not %s", what, path, kind_of(st.st_mode));
        rc = -PI_ERR_INVAL;
    } else if (policy == PI_SECRET_OWNER && (st.st_uid != geteuid() || (st.st_mode & 077))) {
        snprintf(err, err_len,
                 "%s %s: must be a regular file of this user's that no one else may read or write (chmod 600; "
                 "mode %03o)",
                 what, path, (unsigned)(st.st_mode & 0777));
        rc = -PI_ERR_INVAL;
    } else if (policy == PI_SECRET_GROUP && (st.st_mode & 007)) {
        snprintf(err, err_len,
                 "%s %s: must be a regular file that other users may not read or write (chmod o-rwx; mode %03o)", what,
                 path, (unsigned)(st.st_mode & 0777));
        rc = -PI_ERR_INVAL;
    }
    if (rc != 0) {
        close(fd);
        return rc;
    }
    return fd;
}
