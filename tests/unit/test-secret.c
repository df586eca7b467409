/*
 * tests/unit/test-secret.c - lib/secret.h: each policy's modes, the file types refused (a FIFO without
 * a writer is refused at once, not waited on), symbolic links, missing files, and the message naming
 * the file and the chmod that fixes it.
 */
#include "config.h"
#include "lib/common.h"
#include "lib/secret.h"
#include "tests/tap.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

/* A file at dir/name holding "key\n" with mode; its path in out. */
static void make_file(char *out, size_t len, const char *name, mode_t mode)
{
    snprintf(out, len, "%s/%s", dir, name);
    FILE *f = fopen(out, "w");
    if (!f || fputs("key\n", f) < 0 || fclose(f) != 0 || chmod(out, mode) != 0) tap_bail("cannot write %s", out);
}

/* pi_secret_open's result for path under policy, its descriptor closed; its message in err. */
static int try_open(const char *path, enum pi_secret_policy policy, char *err, size_t len)
{
    err[0] = '\0';
    int fd = pi_secret_open(path, policy, "test file", err, len);
    if (fd >= 0) {
        char b[8];
        const bool read_ok = read(fd, b, sizeof b) == 4 && memcmp(b, "key\n", 4) == 0;
        close(fd);
        return read_ok ? 0 : -100;
    }
    return fd;
}

int main(void)
{
    char path[400], link[400], fifo[400], err[1024];
    snprintf(dir, sizeof dir, "%s/pi-test-secret.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) tap_bail("mkdtemp failed");
    alarm(60); /* a hang guard only: an open that blocks (the bug this tests) would otherwise never end */

    make_file(path, sizeof path, "key", 0600);
    tap_is_int(try_open(path, PI_SECRET_OWNER, err, sizeof err), 0, "owner policy, mode 0600: opened and read");
    tap_is_int(try_open(path, PI_SECRET_GROUP, err, sizeof err), 0, "group policy, mode 0600: opened and read");
    chmod(path, 0640);
    tap_ok(try_open(path, PI_SECRET_OWNER, err, sizeof err) == -PI_ERR_INVAL && strstr(err, "chmod 600") &&
               strstr(err, "test file") && strstr(err, path) && strstr(err, "mode 640"),
           "owner policy, mode 0640: refused: %s", err);
    tap_is_int(try_open(path, PI_SECRET_GROUP, err, sizeof err), 0, "group policy, mode 0640: opened");
    chmod(path, 0660);
    tap_is_int(try_open(path, PI_SECRET_GROUP, err, sizeof err), 0, "group policy, mode 0660: opened");
    chmod(path, 0604);
    tap_ok(try_open(path, PI_SECRET_GROUP, err, sizeof err) == -PI_ERR_INVAL && strstr(err, "chmod o-rwx") &&
               strstr(err, "mode 604"),
           "group policy, mode 0604 (others may read): refused: %s", err);
    chmod(path, 0602);
    tap_is_int(try_open(path, PI_SECRET_GROUP, err, sizeof err), -PI_ERR_INVAL,
               "group policy, mode 0602 (others may write): refused");
    tap_is_int(try_open(path, PI_SECRET_OWNER, err, sizeof err), -PI_ERR_INVAL, "owner policy, mode 0602: refused");
    chmod(path, 0600);

    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    if (mkfifo(fifo, 0600) != 0) tap_bail("mkfifo failed");
    tap_ok(try_open(fifo, PI_SECRET_GROUP, err, sizeof err) == -PI_ERR_INVAL && strstr(err, "a FIFO"),
           "group policy, a FIFO without a writer: refused at once: %s", err);
    tap_ok(try_open(fifo, PI_SECRET_OWNER, err, sizeof err) == -PI_ERR_INVAL && strstr(err, "a FIFO"),
           "owner policy, a FIFO without a writer: refused at once: %s", err);
    tap_ok(try_open(dir, PI_SECRET_GROUP, err, sizeof err) == -PI_ERR_INVAL && strstr(err, "a directory"),
           "a directory: refused: %s", err);
    tap_ok(try_open("/dev/null", PI_SECRET_GROUP, err, sizeof err) == -PI_ERR_INVAL && strstr(err, "a device"),
           "a device: refused: %s", err);

    snprintf(link, sizeof link, "%s/link", dir);
    if (symlink(path, link) != 0) tap_bail("symlink failed");
    tap_is_int(try_open(link, PI_SECRET_OWNER, err, sizeof err), -PI_ERR_IO, "owner policy, a symbolic link: refused");
    tap_is_int(try_open(link, PI_SECRET_GROUP, err, sizeof err), 0, "group policy, a symbolic link: followed");
    unlink(link);
    snprintf(link, sizeof link, "%s/none", dir);
    tap_ok(try_open(link, PI_SECRET_GROUP, err, sizeof err) == -PI_ERR_IO && strstr(err, "No such file"),
           "a missing file: refused: %s", err);

    unlink(fifo);
    unlink(path);
    rmdir(dir);
    return tap_done();
}
