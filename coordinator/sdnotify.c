/*
 * coordinator/sdnotify.c - sd_notify(3)'s datagram protocol (coordinator/sdnotify.h).
 */
#include "config.h"
#include "coordinator/sdnotify.h"
#include "lib/log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct sockaddr_un g_addr;
static socklen_t g_len;     /* 0: no socket */
static atomic_int g_warned; /* a failed send was logged */
static int g_inited;

void pi_sd_notify_init(void)
{
    if (g_inited) return;
    g_inited = 1;
    const char *e = getenv("NOTIFY_SOCKET");
    if (!e) return;
    size_t n = strlen(e);
    if (n < 2 || n >= sizeof g_addr.sun_path || (e[0] != '/' && e[0] != '@')) {
        pi_warn("NOTIFY_SOCKET \"%.*s\" is not an absolute path or an abstract name that fits a socket address: "
                "readiness is not reported",
                64, e);
        unsetenv("NOTIFY_SOCKET");
        return;
    }
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sun_family = AF_UNIX;
    memcpy(g_addr.sun_path, e, n);
    if (e[0] == '@') g_addr.sun_path[0] = '\0'; /* the abstract namespace: the length says where it ends */
    g_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (e[0] == '/' ? 1 : 0));
    unsetenv("NOTIFY_SOCKET");
}

int pi_sd_notify_enabled(void) { return g_len > 0; }

void pi_sd_notify(const char *state)
{
    if (g_len == 0 || !state) return;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ssize_t w = -1;
    if (fd >= 0) {
        w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (const struct sockaddr *)&g_addr, g_len);
        int err = errno;
        close(fd);
        errno = err;
    }
    if (w < 0 && atomic_exchange(&g_warned, 1) == 0)
        pi_warn("sd_notify: cannot reach the service manager's socket: %s (further failures are not logged)",
                strerror(errno));
}
