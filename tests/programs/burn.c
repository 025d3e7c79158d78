/* Uses a known amount of CPU and memory, for the per-job accounting tests.
 *
 * burn CPU_MS MIB: touches MIB MiB and keeps them, then forks a child that burns
 * CPU_MS of CPU time and exits, waits for it, and burns CPU_MS more itself. So the
 * job used at least 2 * CPU_MS of CPU, half of it in a process it reaped, and at
 * least MIB MiB of memory in one process. Prints what getrusage says of both. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void burn(long ms) {
    struct timespec t;
    volatile unsigned long spin = 0;
    for (;;) {
        for (int i = 0; i < 100000; i++) spin++;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
        if (t.tv_sec * 1000 + t.tv_nsec / 1000000 >= ms) return;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    long ms = atol(argv[1]);
    size_t bytes = (size_t)atol(argv[2]) << 20;
    char *memory = malloc(bytes);
    if (!memory) return 3;
    memset(memory, 1, bytes);
    pid_t child = fork();
    if (child < 0) return 4;
    if (child == 0) {
        burn(ms);
        _exit(0);
    }
    int status;
    if (waitpid(child, &status, 0) != child || status != 0) return 5;
    burn(ms);
    struct rusage self, children;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &children);
    printf("burnt: self %ld ms, child %ld ms, max rss %ld KiB, touched %d\n",
           self.ru_utime.tv_sec * 1000 + self.ru_utime.tv_usec / 1000 + self.ru_stime.tv_sec * 1000 + self.ru_stime.tv_usec / 1000,
           children.ru_utime.tv_sec * 1000 + children.ru_utime.tv_usec / 1000 + children.ru_stime.tv_sec * 1000 + children.ru_stime.tv_usec / 1000,
           self.ru_maxrss, memory[bytes - 1]);
    return 0;
}
