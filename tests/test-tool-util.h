/*
 * tests/test-tool-util.h - helpers of the tests that run an offline tool through the shell
 * (test-profile, test-train-predictors): a private temporary directory, paths in it, a run with
 * stdout and stderr into its files `out` and `err` under a hard timeout, and a search of those
 * files. Header-only, like tests/tap.h.
 */
#ifndef PI_TESTS_TOOL_UTIL_H
#define PI_TESTS_TOOL_UTIL_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/tap.h"

static char tt_dir[256]; /* the test's private temporary directory (tt_mkdir) */

/* Create tt_dir as /tmp/pi-test-NAME-XXXXXX; bails out on failure. */
__attribute__((unused)) static void tt_mkdir(const char *name)
{
    snprintf(tt_dir, sizeof tt_dir, "/tmp/pi-test-%s-XXXXXX", name);
    if (!mkdtemp(tt_dir)) tap_bail("mkdtemp failed");
}

/* Remove tt_dir and everything in it. */
__attribute__((unused)) static void tt_rmdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tt_dir);
    if (system(cmd) != 0) tap_diag("could not remove %s", tt_dir);
}

/* tt_dir/name, in one of four rotating buffers (so a call may take a few such paths). */
__attribute__((unused)) static const char *tt_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tt_dir, name);
    return buf[k];
}

/* Run program p with args (stdout to tt_dir/out, stderr to tt_dir/err, killed after 300 s); its exit
 * status, or -1. */
__attribute__((unused)) static int tt_run(const char *p, const char *args)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "timeout 300 %s %s > %s/out 2> %s/err", p, args, tt_dir, tt_dir);
    int st = system(cmd);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Whether the first 64 KiB of tt_dir/name hold s. */
__attribute__((unused)) static bool tt_file_has(const char *name, const char *s)
{
    static char buf[1 << 16];
    FILE *f = fopen(tt_path(name), "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = '\0';
    return strstr(buf, s) != NULL;
}

#endif
