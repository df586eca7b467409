/*
 * coordinator/fd-budget.c - the descriptor budget of server mode (coordinator/fd-budget.h says why and
 * how it is split).
 */
#include "config.h"
#include "coordinator/fd-budget.h"
#include "lib/common.h"
#include "lib/log.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

void pi_fd_budget_split(struct pi_fd_budget *b, int64_t limit, int64_t in_use, int64_t engine, int control_want,
                        int http_want)
{
    *b = (struct pi_fd_budget){.limit = limit, .in_use = in_use, .reserve = PI_MAX(engine, 0) + PI_FD_RESERVE};
    const int64_t cw = PI_MAX(control_want, 1), hw = PI_MAX(http_want, 0);
    /* what the two listeners may hold together; no limit: what they ask for */
    const int64_t avail = limit < 0 ? cw + hw : limit - in_use - b->reserve;
    /* half each, and what one does not need goes to the other (with the HTTP API off, all to control) */
    const int64_t room = PI_MAX(avail, 0), half = hw ? room / 2 : room;
    int64_t c = PI_MIN(cw, half);
    const int64_t h = PI_MIN(hw, room - c);
    c = PI_MIN(cw, room - h);
    b->control = (int)PI_MAX(c, 1);
    b->http = hw ? (int)PI_MAX(h, 1) : 0;
    b->control_lowered = b->control < cw;
    b->http_lowered = b->http < hw;
}

int pi_fd_budget_loading(int64_t limit, int64_t in_use, int http_want)
{
    int64_t cap = PI_MIN((int64_t)http_want, PI_FD_LOADING_HTTP);
    if (limit >= 0) cap = PI_MIN(cap, (limit - in_use) / 4);
    return (int)PI_MAX(cap, 1);
}

void pi_fd_budget_raise_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_max;
    if (rl.rlim_cur >= want) return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        pi_warn("setrlimit(RLIMIT_NOFILE, %llu) failed: %s", (unsigned long long)want, strerror(errno));
    else pi_info("open files: soft limit raised from %llu to %llu", (unsigned long long)was, (unsigned long long)want);
}

int64_t pi_fd_budget_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return -1;
    return (int64_t)rl.rlim_cur;
}

int pi_fd_budget_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

void pi_fd_budget_log(const struct pi_fd_budget *b, int control_want, int http_want)
{
    char http[32] = "off";
    if (http_want) snprintf(http, sizeof http, "%d", b->http);
    pi_info("open files: limit %lld, %lld in use, %lld kept in reserve: control socket %d connections, HTTP API %s",
            (long long)b->limit, (long long)b->in_use, (long long)b->reserve, b->control, http);
    if (!b->control_lowered && !b->http_lowered) return;
    char keys[200] = "";
    if (b->control_lowered)
        snprintf(keys, sizeof keys, "[control] max_connections %d lowered to %d", control_want, b->control);
    if (b->http_lowered)
        snprintf(keys + strlen(keys), sizeof keys - strlen(keys), "%s[http] max_connections %d lowered to %d",
                 b->control_lowered ? ", " : "", http_want, b->http);
    pi_warn("open files: the limit of %lld (%lld in use, %lld kept in reserve) is too small for the connections "
            "configured: %s; raise the hard limit of open files (ulimit -Hn, LimitNOFILE=) to at least %lld",
            (long long)b->limit, (long long)b->in_use, (long long)b->reserve, keys,
            (long long)(b->in_use + b->reserve + control_want + http_want));
}
