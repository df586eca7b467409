/*
 * tests/unit/test-fd-budget.c - server mode's descriptor budget (coordinator/fd-budget.h): the split of
 * the free descriptors between the control socket and the HTTP API after the reserve, worked out by
 * hand (room for both settings, halves, one setting within its half and the other taking the rest, the
 * HTTP API off, no room at all, no limit), the cap while the engine loads, and the measured count
 * against descriptors opened here.
 */
#include "config.h"
#include "coordinator/fd-budget.h"
#include "tests/tap.h"

#include <fcntl.h>
#include <unistd.h>

int main(void)
{
    struct pi_fd_budget b;
    /* 4096 - 100 in use - (20 + 32) reserve = 3944: room for both */
    pi_fd_budget_split(&b, 4096, 100, 20, 256, 256);
    tap_ok(b.control == 256 && b.http == 256 && !b.control_lowered && !b.http_lowered &&
               b.reserve == 20 + PI_FD_RESERVE,
           "room for both: the settings (%d, %d), reserve %lld", b.control, b.http, (long long)b.reserve);
    /* 256 - 32 - (16 + 32) = 176, in the ratio 256:256 */
    pi_fd_budget_split(&b, 256, 32, 16, 256, 256);
    tap_ok(b.control == 88 && b.http == 88 && b.control_lowered && b.http_lowered,
           "256 descriptors: 88 and 88 (%d, %d)", b.control, b.http);
    tap_ok(b.in_use + b.reserve + b.control + b.http <= b.limit, "the shares and the reserve fit the limit");
    /* one setting fits its half, the other not: only the other is lowered, to the rest */
    pi_fd_budget_split(&b, 256, 32, 16, 64, 1024);
    tap_ok(b.control == 64 && b.http == 112 && !b.control_lowered && b.http_lowered,
           "control 64 fits its half, HTTP takes the rest: %d, %d", b.control, b.http);
    pi_fd_budget_split(&b, 256, 32, 16, 1024, 8);
    tap_ok(b.control == 168 && b.http == 8 && b.control_lowered && !b.http_lowered,
           "HTTP 8 fits its half, control takes the rest: %d, %d", b.control, b.http);
    /* the HTTP API off: the control socket may take every free descriptor */
    pi_fd_budget_split(&b, 512, 12, 2, 256, 0);
    tap_ok(b.control == 256 && b.http == 0 && !b.control_lowered && !b.http_lowered, "HTTP off: control %d, http %d",
           b.control, b.http);
    pi_fd_budget_split(&b, 200, 12, 2, 256, 0);
    tap_ok(b.control == 200 - 12 - 2 - PI_FD_RESERVE && b.control_lowered, "HTTP off, 200 descriptors: control %d",
           b.control);
    /* no room at all: one each, both lowered */
    pi_fd_budget_split(&b, 64, 60, 30, 256, 256);
    tap_ok(b.control == 1 && b.http == 1 && b.control_lowered && b.http_lowered,
           "no room: one connection each (%d, %d)", b.control, b.http);
    /* no limit (RLIM_INFINITY) */
    pi_fd_budget_split(&b, -1, 100, 20, 256, 16384);
    tap_ok(b.control == 256 && b.http == 16384 && !b.control_lowered && !b.http_lowered, "no limit: the settings");

    tap_is_int(pi_fd_budget_loading(4096, 100, 256), PI_FD_LOADING_HTTP, "while loading: at most PI_FD_LOADING_HTTP");
    tap_is_int(pi_fd_budget_loading(4096, 100, 4), 4, "while loading: a smaller setting stays");
    tap_is_int(pi_fd_budget_loading(60, 20, 256), 10, "while loading: a quarter of the free descriptors");
    tap_is_int(pi_fd_budget_loading(20, 20, 256), 1, "while loading: at least 1");
    tap_is_int(pi_fd_budget_loading(-1, 20, 256), PI_FD_LOADING_HTTP, "while loading, no limit");

    const int before = pi_fd_budget_count();
    int fds[5];
    for (int i = 0; i < 5; i++) fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    const int after = pi_fd_budget_count();
    for (int i = 0; i < 5; i++) close(fds[i]);
    tap_ok(before >= 3 && after == before + 5 && pi_fd_budget_count() == before, "pi_fd_budget_count: %d, 5 opened: %d",
           before, after);
    tap_ok(pi_fd_budget_limit() == -1 || pi_fd_budget_limit() >= after, "pi_fd_budget_limit: %lld",
           (long long)pi_fd_budget_limit());
    return tap_done();
}
