/*
 * lib/input.c - a bounded read of a whole text input from a file or standard input (see lib/input.h).
 * One loop of read(2) into a buffer grown by doubling, never past max + 1 bytes: the + 1 is how a
 * longer input is told from one of exactly max bytes without a size from fstat, which a pipe or a
 * device does not have.
 */
#include "config.h"

#include "lib/input.h"

#include "lib/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int pi_input_read(const char *path, size_t max, char **out, size_t *len, char *err, size_t err_len)
{
    const bool is_stdin = strcmp(path, "-") == 0;
    const char *name = is_stdin ? "standard input" : path;
    int fd = is_stdin ? 0 : open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    size_t n = 0, cap = 0;
    char *buf = NULL;
    int rc = 0;
    *out = NULL;
    if (len) *len = 0;
    if (fd < 0) {
        snprintf(err, err_len, "%s: cannot open: %s", name, strerror(errno));
        return -PI_ERR_IO;
    }
    for (;;) {
        if (n == cap) {
            size_t ncap = PI_MIN(cap ? cap * 2 : 4096, max + 1);
            if (ncap == cap) { /* max + 1 bytes read: longer than allowed */
                snprintf(err, err_len, "%s: longer than %zu bytes", name, max);
                rc = -PI_ERR_RANGE;
                break;
            }
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                snprintf(err, err_len, "%s: out of memory", name);
                rc = -PI_ERR_NOMEM;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(err, err_len, "%s: read failed: %s", name, strerror(errno));
            rc = -PI_ERR_IO;
            break;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    if (!is_stdin) close(fd);
    if (rc == 0 && memchr(buf ? buf : "", '\0', n)) {
        snprintf(err, err_len, "%s: contains a NUL byte (a prompt is text)", name);
        rc = -PI_ERR_FORMAT;
    }
    if (rc != 0) {
        free(buf);
        return rc;
    }
    if (!buf && !(buf = malloc(1))) {
        snprintf(err, err_len, "%s: out of memory", name);
        return -PI_ERR_NOMEM;
    }
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return 0;
}
