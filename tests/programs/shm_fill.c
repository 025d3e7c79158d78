/* Issue 27, finding 3: fills the container's memory with a SysV shared-memory
 * segment that no process holds. A child attaches a segment larger than the
 * container's memory and touches every page (the OOM killer ends it, or it
 * finishes); the segment stays, charged to the container, after the child is gone.
 * Then the job allocates a little, so whatever allocates next in the container
 * (the job, kiln's supervisor, kiln's agent) finds no memory left.
 *
 * With argv[2] = "quiet" the job instead lowers its oom_score_adj back to 0 (kiln
 * raises it to 1000; 0 is as low as an unprivileged process may go: the agent's
 * value) and allocates nothing more: the next allocation is kiln's own.
 *
 * argv[1]: MiB of the segment. Bounded: one segment, 64 MiB of allocations. */
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    size_t size = (size_t)(argc > 1 ? atol(argv[1]) : 1024) << 20;
    int quiet = argc > 2 && !strcmp(argv[2], "quiet");
    if (quiet) {
        int fd = open("/proc/self/oom_score_adj", O_WRONLY);
        if (fd < 0 || write(fd, "0", 1) != 1) perror("oom_score_adj");
    }
    int id = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
    if (id < 0) {
        perror("shmget");
        return 2;
    }
    pid_t toucher = fork();
    if (toucher == 0) {
        char *p = shmat(id, NULL, 0);
        if (p == (void *)-1) _exit(3);
        for (size_t at = 0; at < size; at += 4096) p[at] = 1;
        _exit(0);
    }
    int status = 0;
    waitpid(toucher, &status, 0);
    printf("toucher ended: %s %d\n", WIFSIGNALED(status) ? "signal" : "exit",
           WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    if (quiet) return 0;
    for (int i = 0; i < 64; i++) {
        char *q = malloc(1 << 20);
        if (!q) break;
        memset(q, i, 1 << 20);
    }
    printf("allocated after the segment\n");
    return 0;
}
