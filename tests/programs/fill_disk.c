/* Writes zeros, 1 MiB at a time, to `fill` in its cwd until a write fails or
 * argv[1] MiB (default 200) are written; says how far it got and why it
 * stopped, then stays a few seconds so a test can act while its bytes are held.
 * Issue 27, finding 7 (tests/budgets.rs, tests/docker.rs). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char chunk[1 << 20];

int main(int argc, char **argv) {
    long limit = (argc > 1 ? atol(argv[1]) : 200L) << 20;
    int fd = open("fill", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    long written = 0;
    const char *why = "done";
    if (fd < 0) {
        why = strerror(errno);
    }
    while (fd >= 0 && written < limit) {
        ssize_t n = write(fd, chunk, sizeof chunk);
        if (n <= 0) {
            why = n < 0 ? strerror(errno) : "short write";
            break;
        }
        written += n;
    }
    printf("wrote %ld: %s\n", written, why);
    fflush(stdout);
    sleep(4);
    return 0;
}
