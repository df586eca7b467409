/*
 * lib/log.h - leveled logging to stderr, shared by every pinfer program.
 *
 * Lines look like "2026-11-25T14:00:00.123Z pi-coordinator[1234] error: shm_open(/pi-x) failed: ...".
 * The program name and level are set once in main(); the logger is thread-safe (one write(2) per
 * line, so lines from several threads or processes sharing stderr never interleave).
 */
#ifndef PI_LOG_H
#define PI_LOG_H

#include <stdarg.h>

enum pi_log_level {
    PI_LOG_ERROR = 0,
    PI_LOG_WARN = 1,
    PI_LOG_INFO = 2,
    PI_LOG_DEBUG = 3,
};

/* Set the program name shown on every line (borrowed: must outlive logging). NULL keeps "pinfer". */
void pi_log_set_program(const char *name);

/* Lines above this level are dropped. Default PI_LOG_INFO, or $PI_LOG_LEVEL if set at first use. */
void pi_log_set_level(enum pi_log_level level);
enum pi_log_level pi_log_get_level(void);

/* The levels' names, index = enum pi_log_level, NULL-terminated. */
extern const char *const pi_log_level_names[];

/* Parse "error", "warn", "info", "debug" (case-insensitive; "warning" too). Returns 0 and sets *out,
 * or -PI_ERR_INVAL. */
int pi_log_parse_level(const char *s, enum pi_log_level *out);

/* Redirect output to fd (default 2). Used by tests to capture lines. */
void pi_log_set_fd(int fd);

/* Format and emit one line (a trailing newline is added; control characters of the message other than
 * tab are written as '?'). Lines longer than 4 KiB are truncated. */
void pi_log(enum pi_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void pi_logv(enum pi_log_level level, const char *fmt, va_list ap);

#define pi_error(...) pi_log(PI_LOG_ERROR, __VA_ARGS__)
#define pi_warn(...) pi_log(PI_LOG_WARN, __VA_ARGS__)
#define pi_info(...) pi_log(PI_LOG_INFO, __VA_ARGS__)
#define pi_debug(...)                                                                              \
    do {                                                                                           \
        if (pi_log_get_level() >= PI_LOG_DEBUG) pi_log(PI_LOG_DEBUG, __VA_ARGS__);                 \
    } while (0)

#endif
