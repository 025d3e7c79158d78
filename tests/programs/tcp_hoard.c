/* Issue 27, finding 4: pins kernel TCP memory, the pool every socket on the host
 * shares (net.ipv4.tcp_mem), from inside a job. It opens loopback connections (the
 * job's own network namespace has loopback) with the largest buffers an unprivileged
 * process may ask for, writes without ever reading, holds what it pinned for 3 s so
 * the host can look, and prints what it wrote.
 *
 * argv[1]: a marker (ignored); argv[2]: MiB to write in all. Bounded: at most
 * MAX_CONNECTIONS connections, 10 s of writing, 64 MiB per connection. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 512
#define CHUNK (1 << 16)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    long long target = (argc > 2 ? atoll(argv[2]) : 256) << 20;
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    int big = 4 << 20; /* net.core.{r,w}mem_max here; the kernel doubles it */
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &big, sizeof big); /* accepted sockets inherit it */
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 4096) != 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &len) != 0) {
        perror("listen");
        return 2;
    }
    static char chunk[CHUNK];
    memset(chunk, 'k', sizeof chunk);
    long long written = 0;
    int connections = 0;
    double start = now();
    while (connections < MAX_CONNECTIONS && written < target && now() - start < 10) {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c < 0) break;
        setsockopt(c, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        if (connect(c, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS) break;
        struct pollfd p = {c, POLLOUT, 0};
        if (poll(&p, 1, 1000) != 1) break;
        if (accept(listener, NULL, NULL) < 0) break; /* kept open, never read */
        connections++;
        for (int i = 0; i < 1024 && written < target; i++) {
            ssize_t n = send(c, chunk, sizeof chunk, MSG_NOSIGNAL);
            if (n <= 0) break;
            written += n;
        }
    }
    printf("connections %d, written %lld MiB\n", connections, written >> 20);
    sleep(3);
    printf("held\n");
    return 0;
}
