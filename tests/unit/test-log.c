/* tests/unit/test-log.c - the logger's line format, level filtering and parsing, and pi_err_str. */
#include "config.h"
#include "lib/common.h"
#include "lib/log.h"
#include "tests/tap.h"

#include <unistd.h>

static size_t capture(char *buf, size_t len, int fds[2])
{
    ssize_t n = read(fds[0], buf, len - 1);
    buf[n > 0 ? n : 0] = '\0';
    return n > 0 ? (size_t)n : 0;
}

int main(void)
{
    int fds[2];
    char buf[8192];
    if (pipe(fds) != 0) tap_bail("pipe failed");
    pi_log_set_fd(fds[1]);
    pi_log_set_program("test-log");
    pi_log_set_level(PI_LOG_INFO);

    pi_info("hello %d", 42);
    capture(buf, sizeof buf, fds);
    tap_ok(strstr(buf, "test-log[") != NULL, "line names the program");
    tap_ok(strstr(buf, " info: hello 42\n") != NULL, "line carries level and message: %s", buf);
    tap_ok(buf[4] == '-' && buf[10] == 'T' && strchr(buf, 'Z') != NULL, "line starts with an ISO-8601 UTC time");

    pi_debug("hidden");
    pi_info("visible");
    capture(buf, sizeof buf, fds);
    tap_ok(strstr(buf, "hidden") == NULL && strstr(buf, "visible") != NULL, "debug lines dropped at info level");

    pi_log_set_level(PI_LOG_ERROR);
    pi_warn("warned");
    pi_error("failed");
    capture(buf, sizeof buf, fds);
    tap_ok(strstr(buf, "warned") == NULL && strstr(buf, "error: failed") != NULL, "error level keeps only errors");

    /* A line longer than the buffer is truncated, still ends in a newline, and is written whole. */
    pi_log_set_level(PI_LOG_INFO);
    static char big[10000];
    memset(big, 'x', sizeof big - 1);
    pi_info("%s", big);
    size_t n = capture(buf, sizeof buf, fds);
    tap_ok(n == 4096 && buf[n - 1] == '\n', "long line truncated to 4096 bytes with a newline (got %zu)", n);

    /* Text from elsewhere cannot forge a second line or carry terminal escapes; tabs stay. */
    pi_info("peer says: %s", "ok\n2026-01-01T00:00:00.000Z pi-gpu-worker[1] error: forged\r\x1b[2J\x7f\tend");
    n = capture(buf, sizeof buf, fds);
    tap_ok(strchr(buf, '\n') == buf + n - 1 && !strchr(buf, '\r') && !strchr(buf, '\x1b') && !strchr(buf, '\x7f') &&
               strstr(buf, "ok?2026-01-01T") && strstr(buf, "forged??[2J?\tend"),
           "control characters of a message are written as '?' (one record, one line): %s", buf);

    enum pi_log_level lv = PI_LOG_INFO;
    tap_ok(pi_log_parse_level("DEBUG", &lv) == 0 && lv == PI_LOG_DEBUG, "parse DEBUG");
    tap_ok(pi_log_parse_level("warning", &lv) == 0 && lv == PI_LOG_WARN, "parse warning");
    tap_ok(pi_log_parse_level("loud", &lv) == -PI_ERR_INVAL, "reject unknown level");
    tap_ok(pi_log_parse_level(NULL, &lv) == -PI_ERR_INVAL, "reject NULL level");

    tap_is_str(pi_err_str(-PI_ERR_FORMAT), "malformed input", "pi_err_str of a negated error");
    tap_is_str(pi_err_str(PI_ERR_NOMEM), "out of memory", "pi_err_str of a positive error");
    tap_is_str(pi_err_str(-9999), "unknown error", "pi_err_str of an unknown value");

    uint64_t r;
    tap_ok(pi_mul_overflows(UINT64_MAX / 2 + 1, 2, &r), "multiplication overflow detected");
    tap_ok(!pi_add_overflows(1, 2, &r) && r == 3, "addition without overflow");
    tap_is_int((long long)pi_align_up(33, 32), 64, "align up");
    tap_ok(pi_is_pow2(64) && !pi_is_pow2(0) && !pi_is_pow2(96), "power-of-two test");
    return tap_done();
}
