/*
 * tests/unit/fuzz-config.c - libFuzzer target for the configuration parser (lib/conf.c; `make fuzz`,
 * needs clang).
 *
 * Each input is written to a memfd and read by pi_config_load_file through /proc/self/fd/N, the path
 * a file given with --config takes (inih through lib/conf.c's line-counting reader, every key's type
 * and bounds). Its first line is also applied as one `--set SECTION.KEY=VALUE`. Whatever happens, the
 * error text must be a NUL-terminated string inside its buffer, an accepted configuration must pass
 * or fail pi_config_validate without crashing, and everything must be freed (ASan's leak check).
 * Built with ASan and UBSan. Not part of `make check`. Seeds: tests/unit/fuzz-config-seeds/.
 */
#define _GNU_SOURCE
#include "config.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "lib/log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* err must hold a NUL within its len bytes: a message cut short is fine, one that runs on is not. */
static void check_err(const char *err, size_t len)
{
    if (!memchr(err, '\0', len)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet) {
        pi_log_set_level(PI_LOG_ERROR);
        quiet = 1;
    }
    struct pi_config cfg;
    char err[512], path[64];
    if (pi_config_defaults(&cfg) != 0) abort();
    int fd = memfd_create("fuzz-config", MFD_CLOEXEC);
    if (fd < 0) abort();
    if (size && write(fd, data, size) != (ssize_t)size) abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    memset(err, 'x', sizeof err);
    err[sizeof err - 1] = '\0';
    if (pi_config_load_file(&cfg, path, err, sizeof err) == 0) {
        if (pi_config_validate(&cfg, err, sizeof err) != 0) check_err(err, sizeof err);
    } else {
        check_err(err, sizeof err);
    }
    close(fd);

    /* the first line as a --set assignment: "key=value" split at the first '=' */
    char line[256];
    size_t n = 0;
    while (n < size && n < sizeof line - 1 && data[n] != '\n') n++;
    memcpy(line, data, n);
    line[n] = '\0';
    char *eq = strchr(line, '=');
    if (eq && strlen(line) == n) {
        *eq = '\0';
        if (pi_config_set(&cfg, line, eq + 1, "fuzz", err, sizeof err) != 0) check_err(err, sizeof err);
    }
    pi_config_free(&cfg);
    return 0;
}
