/*
 * tests/integration/notify-listen.c - a stand-in for systemd's notification socket in
 * test-service.sh: binds an AF_UNIX datagram socket at PATH and prints every datagram it receives on
 * a line of its own (newlines inside a datagram become " | "), until one holds STOPPING=1 or SECONDS
 * pass. Exit 0 after STOPPING=1, 1 on timeout, 2 on a usage or socket error.
 */
#include "config.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: notify-listen PATH SECONDS\n");
        return 2;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof a.sun_path) return 2;
    strcpy(a.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("notify-listen");
        return 2;
    }
    const time_t end = time(NULL) + atoi(argv[2]);
    char buf[4096];
    while (time(NULL) < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n < 0) continue;
        buf[n] = '\0';
        for (char *c = buf; *c; c++)
            if (*c == '\n') *c = '|';
        printf("%s\n", buf);
        fflush(stdout);
        if (strstr(buf, "STOPPING=1")) return 0;
    }
    return 1;
}
