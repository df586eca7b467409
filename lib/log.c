/*
 * lib/log.c - the logger behind lib/log.h, and pi_err_str / pi_assert_fail from lib/common.h.
 *
 * Each line is formatted into a stack buffer and written with a single write(2), which keeps lines
 * whole across threads and processes without a lock. The level is an atomic so that reads from hot
 * paths (pi_debug) cost one load.
 */
#include "config.h"
#include "lib/log.h"
#include "lib/common.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define PI_LOG_LINE_MAX 4096

static const char *log_program = "pinfer";
static atomic_int log_level = -1; /* -1: not yet initialised from the environment */
static atomic_int log_fd = 2;

const char *const pi_log_level_names[] = {"error", "warn", "info", "debug", NULL};
#define N_LEVELS (PI_ARRAY_LEN(pi_log_level_names) - 1)

void pi_log_set_program(const char *name) { log_program = name ? name : "pinfer"; }

int pi_log_parse_level(const char *s, enum pi_log_level *out)
{
    if (!s) return -PI_ERR_INVAL;
    for (size_t i = 0; i < N_LEVELS; i++) {
        if (strcasecmp(s, pi_log_level_names[i]) == 0) {
            *out = (enum pi_log_level)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = PI_LOG_WARN;
        return 0;
    }
    return -PI_ERR_INVAL;
}

enum pi_log_level pi_log_get_level(void)
{
    int lv = atomic_load_explicit(&log_level, memory_order_relaxed);
    if (lv < 0) {
        enum pi_log_level parsed = PI_LOG_INFO;
        const char *env = getenv("PI_LOG_LEVEL");
        if (env && pi_log_parse_level(env, &parsed) != 0) parsed = PI_LOG_INFO;
        int expected = -1;
        atomic_compare_exchange_strong(&log_level, &expected, (int)parsed);
        lv = atomic_load(&log_level);
    }
    return (enum pi_log_level)lv;
}

void pi_log_set_level(enum pi_log_level level) { atomic_store(&log_level, (int)level); }

void pi_log_set_fd(int fd) { atomic_store(&log_fd, fd); }

void pi_logv(enum pi_log_level level, const char *fmt, va_list ap)
{
    if ((int)level > (int)pi_log_get_level()) return;
    int saved_errno = errno;
    char line[PI_LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int lv = (int)level;
    if (lv < 0 || lv >= (int)N_LEVELS) lv = PI_LOG_ERROR;
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%ld] %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000L, log_program, (long)getpid(), pi_log_level_names[lv]);
    if (n < 0) n = 0;
    const int body = n;
    if ((size_t)n < sizeof line) {
        int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        if (m > 0) n += m;
    }
    if ((size_t)n >= sizeof line) n = (int)sizeof line - 1; /* truncated: the newline takes the last byte */
    /* One record, one line: control characters in the message (text from a peer, a file name) become
     * '?', so that no string can start a forged line or move the terminal's cursor. */
    for (int i = body; i < n; i++)
        if ((unsigned char)line[i] < 0x20 ? line[i] != '\t' : (unsigned char)line[i] == 0x7f) line[i] = '?';
    line[n++] = '\n';
    const char *p = line;
    size_t left = (size_t)n;
    int fd = atomic_load(&log_fd);
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        p += w;
        left -= (size_t)w;
    }
    errno = saved_errno;
}

void pi_log(enum pi_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pi_logv(level, fmt, ap);
    va_end(ap);
}

const char *pi_err_str(int err)
{
    static const char *const names[] = {
        [PI_OK] = "ok",
        [PI_ERR_NOMEM] = "out of memory",
        [PI_ERR_IO] = "I/O error",
        [PI_ERR_FORMAT] = "malformed input",
        [PI_ERR_INVAL] = "invalid argument",
        [PI_ERR_RANGE] = "out of range",
        [PI_ERR_UNSUPPORTED] = "unsupported",
        [PI_ERR_NOTFOUND] = "not found",
        [PI_ERR_PEER] = "peer failure",
        [PI_ERR_DEVICE] = "device error",
        [PI_ERR_TIMEOUT] = "timed out",
    };
    /* Magnitude in unsigned arithmetic: -INT_MIN would overflow. */
    unsigned e = err < 0 ? 0u - (unsigned)err : (unsigned)err;
    if (e >= PI_ARRAY_LEN(names) || !names[e]) return "unknown error";
    return names[e];
}

__attribute__((noreturn)) void pi_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    pi_log(PI_LOG_ERROR, "assertion failed: %s (%s:%d, %s)", expr, file, line, func);
    abort();
}
