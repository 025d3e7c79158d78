/*
 * kiln-exec: the first program, and pid 1, of every prepared overlay sandbox.
 *
 * kiln starts bubblewrap when it prepares a sandbox, long before a job exists,
 * so that setting up namespaces and mounts is off the job's path. bubblewrap
 * (`--as-pid-1`) runs this program as pid 1 of the job's pid namespace. It waits
 * for the job on the fd its first argument names (3 if none): once kiln has
 * unpacked the inputs it writes the job's command there and closes the pipe. This
 * program then writes one byte to the fd its second argument names, if any, which
 * tells kiln that the sandbox was set up and the job started (a bubblewrap that
 * failed never gets here), and forks, the child changes to the job's directory and execs the
 * command with its environment only, and pid 1 reaps until that first process
 * exits, then exits with its status. EOF before any byte means the sandbox was
 * given up unused: exit quietly.
 *
 * Why this program is pid 1, and not bubblewrap's own init: a job's end must be
 * its end. pid 1 exiting makes the kernel kill every other process of the
 * namespace, so nothing the job started outlives its first process. bubblewrap's
 * init runs as the job's uid and is dumpable, so a job could open /proc/1/mem
 * for writing, patch that init to stay alive (and clear its parent-death
 * signal), and keep processes running after kiln answered, and after kiln itself
 * stopped (issue 27, finding 1). This pid 1 makes itself non-dumpable before the
 * job exists: /proc/1/mem, ptrace and process_vm_writev on it then need
 * CAP_SYS_PTRACE over its user namespace, which the job does not have
 * (--cap-drop ALL; ptrace(2), "Ptrace access mode checking"). It installs no
 * signal handler, so signals sent from inside the namespace never reach it
 * (pid_namespaces(7)).
 *
 * The command on that fd, every field NUL-terminated:
 *   cwd, executable, argument count, arguments..., variable count, KEY=VALUE...
 * argv[0] is the executable, as bubblewrap would pass it.
 *
 * Static (no loader or libc from the toolchain root), no allocation after the
 * read, every fd above 2 closed before the exec, and exit code 1 with a
 * one-line reason when the command cannot start.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SPEC_FD 3
/* A command line plus environment larger than this is refused by kiln first. */
#define MAX_SPEC (64u << 20)

extern char **environ;

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "kiln-exec: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    _exit(1);
}

/* Next NUL-terminated field at *pos, or fail. */
static char *field(char *buf, size_t len, size_t *pos) {
    if (*pos >= len) fail("truncated command from kiln", NULL);
    char *start = buf + *pos;
    char *end = memchr(start, '\0', len - *pos);
    if (!end) fail("unterminated field in the command from kiln", NULL);
    *pos = (size_t)(end - buf) + 1;
    return start;
}

static size_t count(char *buf, size_t len, size_t *pos) {
    char *text = field(buf, len, pos);
    char *end;
    errno = 0;
    unsigned long n = strtoul(text, &end, 10);
    if (errno || *end || n > MAX_SPEC) fail("bad count in the command from kiln", text);
    return (size_t)n;
}

/* The job's first process: never returns. */
static void exec_job(const char *cwd, const char *executable, char **argv, char **envp) {
    if (chdir(cwd) != 0) fail("cannot change to the job's directory", strerror(errno));
    /* execvp looks in the job's PATH: the job's environment is the current one. */
    environ = envp;
    /* ETXTBSY: kiln wrote the executable (a job's input) moments ago, and another
     * sandbox's bubblewrap, forked by kiln meanwhile, may still hold that write fd
     * between its fork and its exec (close-on-exec closes it only then). The
     * window is that short: retry for at most a second. */
    for (int tries = 0; tries < 100; tries++) {
        execvp(executable, argv);
        if (errno != ETXTBSY) break;
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    fprintf(stderr, "kiln-exec: execvp %s: %s\n", executable, strerror(errno));
    _exit(1);
}

/* An fd number kiln passed on the command line. */
static int fd_argument(const char *text) {
    char *end;
    long fd = strtol(text, &end, 10);
    if (*end || fd < 3 || fd > 65535) fail("bad fd from kiln", text);
    return (int)fd;
}

int main(int shim_argc, char **shim_argv) {
    /* First, before the job exists: no process of the job may write into this
     * one (see the top of this file). The fork below inherits it until the
     * job's exec, after which the job's processes are dumpable again. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) fail("prctl(PR_SET_DUMPABLE, 0)", strerror(errno));
    int spec_fd = shim_argc > 1 ? fd_argument(shim_argv[1]) : DEFAULT_SPEC_FD;
    int started_fd = shim_argc > 2 ? fd_argument(shim_argv[2]) : -1;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    if (!buf) fail("out of memory", NULL);
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_SPEC) fail("command from kiln too large", NULL);
            cap *= 2;
            buf = realloc(buf, cap);
            if (!buf) fail("out of memory", NULL);
        }
        ssize_t n = read(spec_fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("reading the command from kiln", strerror(errno));
        if (n == 0) break;
        len += (size_t)n;
    }
    if (len == 0) return 0; /* discarded unused */
    /* Before the job exists, so no process of the job can write it. */
    if (started_fd >= 0) {
        while (write(started_fd, "s", 1) < 0)
            if (errno != EINTR) fail("telling kiln the job started", strerror(errno));
    }
    /* Nothing but stdin, stdout and stderr reaches the job: kiln marks its own
     * fds close-on-exec before bubblewrap, and whatever bubblewrap left open
     * (the command pipe, the seccomp filter's) closes here. */
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
        for (int fd = 3; fd < 1024; fd++) close(fd);

    size_t pos = 0;
    char *cwd = field(buf, len, &pos);
    char *executable = field(buf, len, &pos);
    size_t argc = count(buf, len, &pos);
    char **argv = calloc(argc + 2, sizeof *argv);
    if (!argv) fail("out of memory", NULL);
    argv[0] = executable;
    for (size_t i = 0; i < argc; i++) argv[i + 1] = field(buf, len, &pos);
    size_t envc = count(buf, len, &pos);
    char **envp = calloc(envc + 1, sizeof *envp);
    if (!envp) fail("out of memory", NULL);
    for (size_t i = 0; i < envc; i++) envp[i] = field(buf, len, &pos);

    pid_t job = fork();
    if (job < 0) fail("fork", strerror(errno));
    if (job == 0) exec_job(cwd, executable, argv, envp);

    /* pid 1: reap whatever the job leaves to it until its first process ends,
     * then end the namespace with that process's status (128 + signal when it
     * was killed, as bubblewrap reports it). */
    for (;;) {
        int status;
        pid_t reaped = wait(&status);
        if (reaped < 0) {
            if (errno == EINTR) continue;
            fail("wait", strerror(errno));
        }
        if (reaped != job) continue;
        if (WIFSIGNALED(status)) _exit(128 + WTERMSIG(status));
        _exit(WEXITSTATUS(status));
    }
}
