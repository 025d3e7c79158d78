/*
 * kiln-init: kiln's agent inside every docker sandbox container.
 *
 * Nothing in a kiln image is pulled from a registry, so the container's one long-running
 * process is this static helper, which kiln builds (build.rs) and puts into every
 * toolchain image as /kiln-init. It is pid 1, runs as the job user (never root, no
 * capabilities), and serves kiln over its stdin and stdout, which kiln holds through
 * one Engine API attach made when the container was created: a warm job costs no
 * Engine API call at all.
 *
 * Requests (kiln -> agent; integers little-endian, str = u32 length + bytes):
 *   "KJOB" u64 timeout_ms, u64 max_stdio, u64 max_output,
 *          str cwd, u32 n + n str argv, u32 n + n str env ("K=V"),
 *          u32 n + n str outputs (absolute paths),
 *          entries until kind 0:
 *            'd' u32 mode, str path              a directory
 *            'f' u32 mode, str path, u64 mtime, u64 size, size bytes
 *            'l' str path, str target            a symlink
 *            'h' str path, str target            a hard link to an earlier 'f'
 *          (paths absolute; kiln checked them all against the toolchain first)
 *   "KRST"                                       reset the container
 * Replies (agent -> kiln):
 *   "KRES" u8 0 (exited) or 2 (timed out), i32 code (128 + signal when killed),
 *          u64 user_us, u64 system_us, u64 max_rss_kib (what the command and
 *          every process it reaped used),
 *          u64 n + n bytes stdout, u64 n + n bytes stderr,
 *          then, exited only, per output: u8 0 missing | 1 u64 size + bytes |
 *          2 not a regular file | 3 over max_output (the reply ends there)
 *   "KRES" u8 1, str message                     the job could not be started
 *   "KRES" u8 3, u32 signal                      the job's supervisor was killed
 *   "KRES" u8 4, str message                     the inputs could not be laid out
 *   "KRST" u8 0 | 1, str message
 *
 * Each job runs under a supervisor, forked from pid 1: it lays the inputs out as the
 * job user, runs the command with the job's env in its cwd, bounds stdout, stderr and
 * time, kills every process the command left, reads the outputs and writes the reply.
 * Everything of kiln's (this process and the supervisor) is non-dumpable, so a job of
 * the same uid can neither ptrace it nor open its descriptors through /proc: the job
 * never reaches the stream to kiln. It can kill its own supervisor; pid 1 then replies
 * for it. Signals from inside the container to pid 1 are ignored; SIGUSR1 from outside
 * (the daemon's kill endpoint: needs no new process, so a fork bomb cannot stop it)
 * kills every other process.
 *
 * The reset runs in pid 1 itself (no fork: the job may have exhausted the pids limit):
 * it kills every other process, removes every SysV IPC object (they outlive their
 * processes, and the next job, maybe another client's, could attach them), then every
 * file and directory the job user owns. The toolchain is owned by root and the job
 * user has no capabilities, so what it owns is exactly what jobs added.
 *
 * kill(-1, sig) sends to every process the caller may signal except itself and the
 * namespace's init (kill(2)): for the job user that is exactly the job's processes.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How long the kill loop keeps trying before it reports survivors (200 x 10 ms). */
#define KILL_ROUNDS 200
/* Bounds on what kiln sends; larger means the stream is not kiln's. */
#define MAX_STR (1u << 20)
#define MAX_COUNT (1u << 16)
/* Supervisor exit codes pid 1 acts on. */
#define SUPERVISOR_REPLIED 0
#define SUPERVISOR_STREAM_BROKEN 2

extern char **environ;

/* ---- buffered stdin / stdout ---- */

static unsigned char in_buf[1 << 16], out_buf[1 << 16];
static size_t in_pos, in_len, out_len;

static void die(const char *what) {
    fprintf(stderr, "kiln-init: %s\n", what);
    _exit(SUPERVISOR_STREAM_BROKEN);
}

/* Reads more of the request into the empty buffer; the stream's end is fatal. */
static void refill(void) {
    for (;;) {
        ssize_t got = read(0, in_buf, sizeof in_buf);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) die("kiln closed the stream");
        in_pos = 0;
        in_len = (size_t)got;
        return;
    }
}

static void read_exact(void *dst, size_t n) {
    unsigned char *p = dst;
    while (n) {
        if (in_pos == in_len) refill();
        size_t take = in_len - in_pos < n ? in_len - in_pos : n;
        memcpy(p, in_buf + in_pos, take);
        in_pos += take;
        p += take;
        n -= take;
    }
}

static uint32_t read_u32(void) {
    unsigned char b[4];
    read_exact(b, 4);
    return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t read_u64(void) {
    uint64_t lo = read_u32();
    return lo | (uint64_t)read_u32() << 32;
}

/* A NUL-terminated copy of a str; NULs inside are refused. */
static char *read_str(void) {
    uint32_t n = read_u32();
    if (n > MAX_STR) die("string too long");
    char *s = malloc(n + 1);
    if (!s) die("out of memory");
    read_exact(s, n);
    s[n] = 0;
    if (strlen(s) != n) die("string with a NUL byte");
    return s;
}

static char **read_strs(void) {
    uint32_t n = read_u32();
    if (n > MAX_COUNT) die("too many strings");
    char **v = calloc(n + 1, sizeof *v);
    if (!v) die("out of memory");
    for (uint32_t i = 0; i < n; i++) v[i] = read_str();
    return v;
}

static void flush_out(void) {
    size_t done = 0;
    while (done < out_len) {
        ssize_t n = write(1, out_buf + done, out_len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) _exit(SUPERVISOR_STREAM_BROKEN);
        done += (size_t)n;
    }
    out_len = 0;
}

static void put(const void *src, size_t n) {
    const unsigned char *p = src;
    while (n) {
        if (out_len == sizeof out_buf) flush_out();
        size_t take = sizeof out_buf - out_len < n ? sizeof out_buf - out_len : n;
        memcpy(out_buf + out_len, p, take);
        out_len += take;
        p += take;
        n -= take;
    }
}

static void put_u8(unsigned v) {
    unsigned char b = (unsigned char)v;
    put(&b, 1);
}

static void put_u32(uint32_t v) {
    unsigned char b[4] = {v, v >> 8, v >> 16, v >> 24};
    put(b, 4);
}

static void put_u64(uint64_t v) {
    put_u32((uint32_t)v);
    put_u32((uint32_t)(v >> 32));
}

static void put_str(const char *s) {
    put_u32((uint32_t)strlen(s));
    put(s, strlen(s));
}

/* ---- processes ---- */

static pid_t supervisor;
static int supervisor_status = -1;

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == supervisor) supervisor_status = status;
    }
}

/* Processes other than pid 1 and the caller that are not yet zombies. */
static int others_alive(void) {
    DIR *proc = opendir("/proc");
    if (!proc) return -1;
    pid_t self = getpid();
    int alive = 0;
    struct dirent *e;
    while ((e = readdir(proc))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 1 || pid == self) continue;
        char path[64], stat[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, stat, sizeof stat - 1);
        close(fd);
        if (n <= 0) continue;
        stat[n] = 0;
        char *paren = strrchr(stat, ')');
        if (paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X')) continue;
        alive++;
    }
    closedir(proc);
    return alive;
}

/* SIGKILLs every process but pid 1 and the caller until none is left; reaps what
 * the caller may reap. 0 on success. */
static int kill_others(void) {
    struct timespec pause = {0, 10 * 1000 * 1000};
    for (int round = 0; round < KILL_ROUNDS; round++) {
        kill(-1, SIGKILL);
        if (getpid() == 1) {
            reap();
        } else {
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
        }
        if (others_alive() == 0) return 0;
        nanosleep(&pause, NULL);
    }
    return -1;
}

/* ---- the reset ---- */

static int remove_tree(int dirfd);

/* Removes entry `name` of `dirfd` and everything below it. */
static int remove_entry(int dirfd, const char *name, const struct stat *st) {
    if (S_ISDIR(st->st_mode)) {
        /* A job may have left its own directories unreadable; it owns them, so it may
         * open them up again. */
        fchmodat(dirfd, name, 0700, 0);
        int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) return 1;
        int failed = remove_tree(fd);
        close(fd);
        return failed + (unlinkat(dirfd, name, AT_REMOVEDIR) != 0);
    }
    return unlinkat(dirfd, name, 0) != 0;
}

static int remove_tree(int dirfd) {
    int dup_fd = dup(dirfd);
    DIR *dir = dup_fd < 0 ? NULL : fdopendir(dup_fd);
    if (!dir) return 1;
    int failed = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat st;
        if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        failed += remove_entry(dirfd, e->d_name, &st);
    }
    closedir(dir);
    return failed;
}

/* Removes what `uid` owns below `dirfd`; descends into other directories to find it.
 * Never follows a symlink (AT_SYMLINK_NOFOLLOW, O_NOFOLLOW). */
static int purge(int dirfd, uid_t uid, int top) {
    int dup_fd = dup(dirfd);
    DIR *dir = dup_fd < 0 ? NULL : fdopendir(dup_fd);
    if (!dir) return 0; /* not readable by the job user: it cannot have written below */
    int failed = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        /* Kernel file systems, not the job's. */
        if (top && (!strcmp(e->d_name, "proc") || !strcmp(e->d_name, "sys"))) continue;
        struct stat st;
        if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        if (st.st_uid == uid) {
            failed += remove_entry(dirfd, e->d_name, &st);
        } else if (S_ISDIR(st.st_mode)) {
            int fd = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (fd >= 0) {
                failed += purge(fd, uid, 0);
                close(fd);
            }
        }
    }
    closedir(dir);
    return failed;
}

/* The ids listed in /proc/sysvipc/<kind> (second column; this IPC namespace's),
 * each removed with `rm`; returns how many are listed, or -1 if unreadable. */
static int remove_ipc(const char *kind, int (*rm)(int id)) {
    char path[64];
    snprintf(path, sizeof path, "/proc/sysvipc/%s", kind);
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    char line[512];
    int listed = 0;
    if (!fgets(line, sizeof line, f)) { /* the header line */
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof line, f)) {
        long key, id;
        if (sscanf(line, "%ld %ld", &key, &id) != 2) continue;
        listed++;
        rm((int)id);
    }
    fclose(f);
    return listed;
}

static int rm_shm(int id) { return shmctl(id, IPC_RMID, NULL); }
static int rm_sem(int id) { return semctl(id, 0, IPC_RMID); }
static int rm_msg(int id) { return msgctl(id, IPC_RMID, NULL); }

/* Removes every SysV IPC object; 0 once none is left. */
static int purge_ipc(void) {
    static const char *kinds[] = {"shm", "sem", "msg"};
    int (*rms[])(int) = {rm_shm, rm_sem, rm_msg};
    int left = 0;
    for (int i = 0; i < 3; i++) {
        remove_ipc(kinds[i], rms[i]);
        /* Listed again: what is still there could not be removed (not the job's). */
        int still = remove_ipc(kinds[i], rms[i]);
        if (still != 0) left += still < 0 ? 1 : still;
    }
    return left;
}

static void reset(void) {
    char message[128] = "";
    if (kill_others() != 0) {
        snprintf(message, sizeof message, "processes survive SIGKILL");
    } else {
        int ipc_left = purge_ipc();
        if (ipc_left) {
            snprintf(message, sizeof message, "%d SysV IPC objects could not be removed", ipc_left);
        } else {
            int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            int failed = root < 0 ? 1 : purge(root, getuid(), 1);
            if (root >= 0) close(root);
            if (failed) snprintf(message, sizeof message, "%d entries could not be removed", failed);
        }
    }
    put("KRST", 4);
    put_u8(message[0] != 0);
    put_str(message);
    flush_out();
}

/* ---- one job, in the supervisor ---- */

static char failure[512];

static void fail(const char *what, const char *path) {
    if (!failure[0]) snprintf(failure, sizeof failure, "%s %s: %s", what, path, strerror(errno));
}

/* Copies `size` bytes of the request into `fd` (-1: skips them). */
static void copy_in(int fd, uint64_t size, const char *path) {
    while (size) {
        if (in_pos == in_len) refill();
        size_t take = in_len - in_pos < size ? in_len - in_pos : (size_t)size;
        if (fd >= 0) {
            size_t done = 0;
            while (done < take) {
                ssize_t n = write(fd, in_buf + in_pos + done, take - done);
                if (n < 0 && errno == EINTR) continue;
                if (n < 0) {
                    fail("writing", path);
                    break;
                }
                done += (size_t)n;
            }
        }
        in_pos += take;
        size -= take;
    }
}

/* Lays out the request's entries, as the job user; after a failure only reads on,
 * so the stream stays in step. */
static void place_entries(void) {
    for (;;) {
        unsigned char kind;
        read_exact(&kind, 1);
        if (kind == 0) return;
        if (kind == 'd') {
            mode_t mode = read_u32() & 0777;
            char *path = read_str();
            if (!failure[0] && mkdir(path, mode) != 0) fail("creating directory", path);
            free(path);
        } else if (kind == 'f') {
            mode_t mode = read_u32() & 0777;
            char *path = read_str();
            uint64_t mtime = read_u64();
            uint64_t size = read_u64();
            int fd = -1;
            if (!failure[0]) {
                fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
                if (fd < 0) fail("creating", path);
            }
            copy_in(fd, size, path);
            if (fd >= 0) {
                struct timespec times[2] = {{(time_t)mtime, 0}, {(time_t)mtime, 0}};
                futimens(fd, times);
                close(fd);
            }
            free(path);
        } else if (kind == 'l' || kind == 'h') {
            char *path = read_str(), *target = read_str();
            int made = kind == 'l' ? symlink(target, path) : link(target, path);
            if (!failure[0] && made != 0) fail("creating link", path);
            free(path);
            free(target);
        } else {
            die("unknown entry kind");
        }
    }
}

static int chld_pipe[2] = {-1, -1};

static void on_chld(int sig) {
    (void)sig;
    int saved = errno;
    if (write(chld_pipe[1], "c", 1) < 0) {
    }
    errno = saved;
}

struct capture {
    int fd;
    char *data;
    uint64_t len, max;
};

/* Reads what is there; 0 at end of file. */
static int drain(struct capture *c) {
    char chunk[1 << 16];
    ssize_t n = read(c->fd, chunk, sizeof chunk);
    if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
    if (n == 0) return 0;
    uint64_t keep = c->max - c->len < (uint64_t)n ? c->max - c->len : (uint64_t)n;
    memcpy(c->data + c->len, chunk, keep);
    c->len += keep;
    return 1;
}

static uint64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

/* Makes the job the OOM killer's first choice (oom_score_adj 1000, proc(5)): when
 * the container runs out of memory the job goes before kiln's supervisor and agent
 * (left at the container's 0), so they live to report its end. Raising needs no
 * privilege; the job may lower its own back to 0, the least an unprivileged process
 * may set, never below the agent's. Best effort: kiln tells an OOM kill from its own
 * failures by the cgroup's counter (and the daemon's OOMKilled) either way.
 * /proc/self is root's while the process is non-dumpable, so this process becomes
 * dumpable first, as the exec that follows would make it anyway; it holds no fd of
 * kiln's by then. */
static void prefer_for_oom_kill(void) {
    prctl(PR_SET_DUMPABLE, 1);
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    if (write(fd, "1000", 4) < 0) {
    }
    close(fd);
}

static _Noreturn void exec_command(const char *cwd, char **argv, char **env, int out, int err) {
    signal(SIGCHLD, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
    /* Nothing of kiln's stream reaches the job: every other descriptor is closed. */
    if (syscall(SYS_close_range, 3, ~0u, 0) != 0) {
        for (int fd = 3; fd < 1024; fd++) close(fd);
    }
    if (chdir(cwd) != 0) {
        dprintf(2, "kiln-init: cannot enter %s: %s\n", cwd, strerror(errno));
        _exit(126);
    }
    prefer_for_oom_kill();
    environ = env;
    execvp(argv[0], argv);
    int e = errno;
    dprintf(2, "kiln-init: cannot run %s: %s\n", argv[0], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

/* Sends output `path`: at most `*room` bytes over all outputs. 0: stop here. */
static int put_output(const char *path, uint64_t *room) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        put_u8(errno == ELOOP ? 2 : 0);
        return 1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        put_u8(2);
        return 1;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size > *room) {
        close(fd);
        put_u8(3);
        return 0;
    }
    *room -= size;
    put_u8(1);
    put_u64(size);
    /* No process of the job is left, so the file cannot change under us; a short
     * read is padded to keep the stream in step. */
    char chunk[1 << 16];
    while (size) {
        ssize_t n = read(fd, chunk, size < sizeof chunk ? size : sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            memset(chunk, 0, sizeof chunk);
            n = size < sizeof chunk ? (ssize_t)size : (ssize_t)sizeof chunk;
        }
        put(chunk, (size_t)n);
        size -= (uint64_t)n;
    }
    close(fd);
    return 1;
}

static _Noreturn void supervise(void) {
    prctl(PR_SET_DUMPABLE, 0);
    umask(0);
    uint64_t timeout_ms = read_u64(), max_stdio = read_u64(), max_output = read_u64();
    char *cwd = read_str();
    char **argv = read_strs(), **env = read_strs(), **outputs = read_strs();
    if (!argv[0]) die("empty argv");
    place_entries();
    if (failure[0]) {
        put("KRES", 4);
        put_u8(4);
        put_str(failure);
        flush_out();
        _exit(SUPERVISOR_REPLIED);
    }

    struct capture out = {-1, NULL, 0, max_stdio}, err = {-1, NULL, 0, max_stdio};
    int out_pipe[2], err_pipe[2];
    if (pipe2(out_pipe, O_CLOEXEC) || pipe2(err_pipe, O_CLOEXEC) || pipe2(chld_pipe, O_CLOEXEC | O_NONBLOCK)) {
        die("pipe");
    }
    out.fd = out_pipe[0];
    err.fd = err_pipe[0];
    out.data = malloc(max_stdio ? max_stdio : 1);
    err.data = malloc(max_stdio ? max_stdio : 1);
    if (!out.data || !err.data) die("out of memory");
    signal(SIGCHLD, on_chld);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    pid_t command = fork();
    if (command < 0) {
        put("KRES", 4);
        put_u8(1);
        put_str("cannot start the command: no process left");
        flush_out();
        _exit(SUPERVISOR_REPLIED);
    }
    if (command == 0) exec_command(cwd, argv, env, out_pipe[1], err_pipe[1]);
    close(out_pipe[1]);
    close(err_pipe[1]);

    uint64_t deadline = now_ms() + timeout_ms;
    int status = 0, exited = 0, timed_out = 0, out_open = 1, err_open = 1;
    while (!exited && !timed_out) {
        uint64_t now = now_ms();
        if (now >= deadline) {
            timed_out = 1;
            break;
        }
        struct pollfd p[3] = {{out.fd, out_open ? POLLIN : 0, 0}, {err.fd, err_open ? POLLIN : 0, 0}, {chld_pipe[0], POLLIN, 0}};
        uint64_t wait = deadline - now;
        if (poll(p, 3, wait > 60000 ? 60000 : (int)wait) < 0 && errno != EINTR) die("poll");
        if (out_open && p[0].revents) out_open = drain(&out);
        if (err_open && p[1].revents) err_open = drain(&err);
        if (p[2].revents) {
            char b[64];
            while (read(chld_pipe[0], b, sizeof b) > 0) {
            }
        }
        if (waitpid(command, &status, WNOHANG) == command) exited = 1;
    }
    /* The command is done (or out of time): nothing it started outlives it. */
    if (kill_others() != 0) die("processes survive SIGKILL");
    while (out_open) out_open = drain(&out);
    while (err_open) err_open = drain(&err);

    int code = timed_out ? 128 + SIGKILL : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    /* The command is reaped (here, or by kill_others): its usage, and that of every
     * process it reaped in turn, is this process's children's. */
    struct rusage used;
    if (getrusage(RUSAGE_CHILDREN, &used) != 0) memset(&used, 0, sizeof used);
    put("KRES", 4);
    put_u8(timed_out ? 2 : 0);
    put_u32((uint32_t)code);
    put_u64((uint64_t)used.ru_utime.tv_sec * 1000000 + (uint64_t)used.ru_utime.tv_usec);
    put_u64((uint64_t)used.ru_stime.tv_sec * 1000000 + (uint64_t)used.ru_stime.tv_usec);
    put_u64((uint64_t)used.ru_maxrss);
    put_u64(out.len);
    put(out.data, out.len);
    put_u64(err.len);
    put(err.data, err.len);
    if (!timed_out) {
        uint64_t room = max_output;
        for (char **o = outputs; *o; o++) {
            if (!put_output(*o, &room)) break;
        }
    }
    flush_out();
    _exit(SUPERVISOR_REPLIED);
}

/* ---- pid 1 ---- */

static int signals;

/* Handles pending signals; blocks for one when `wait` is set. */
static void handle_signals(int wait) {
    struct signalfd_siginfo info;
    if (!wait) {
        struct pollfd p = {signals, POLLIN, 0};
        if (poll(&p, 1, 0) <= 0) return;
    }
    if (read(signals, &info, sizeof info) != sizeof info) return;
    if (info.ssi_signo == SIGCHLD) {
        reap();
    } else if (info.ssi_signo == SIGUSR1 && info.ssi_pid == 0) {
        /* ssi_pid is 0 only for a sender outside this pid namespace: the daemon. */
        kill_others();
    }
}

static void run_job(void) {
    supervisor_status = -1;
    supervisor = fork();
    if (supervisor < 0) {
        /* The request is still unread: the stream cannot be kept in step. */
        die("cannot fork the job's supervisor");
    }
    if (supervisor == 0) {
        close(signals);
        supervise();
    }
    /* The supervisor reads the request on from what was buffered here; this
     * process's copy of it is spent. */
    in_pos = in_len = 0;
    while (supervisor_status == -1) handle_signals(1);
    supervisor = 0;
    int status = supervisor_status;
    if (WIFEXITED(status) && WEXITSTATUS(status) == SUPERVISOR_REPLIED) return;
    if (WIFEXITED(status) && WEXITSTATUS(status) == SUPERVISOR_STREAM_BROKEN) _exit(1);
    /* Killed (by the job, by the OOM killer, by the daemon's SIGUSR1) or failed: no
     * reply was written, since the supervisor writes only once no job process is left,
     * and it had read the whole request before it ran the command. */
    kill_others();
    put("KRES", 4);
    if (WIFSIGNALED(status)) {
        put_u8(3);
        put_u32((uint32_t)WTERMSIG(status));
    } else {
        char message[64];
        snprintf(message, sizeof message, "the job's supervisor failed (exit %d)", WEXITSTATUS(status));
        put_u8(1);
        put_str(message);
    }
    flush_out();
}

int main(int argc, char **argv) {
    (void)argv;
    if (argc != 1 || getpid() != 1) {
        fprintf(stderr, "kiln-init runs as pid 1 of a kiln container and takes no arguments\n");
        return 64;
    }
    prctl(PR_SET_DUMPABLE, 0);
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    signals = signalfd(-1, &all, SFD_CLOEXEC);
    if (signals < 0) return 70;
    for (;;) {
        struct pollfd p[2] = {{0, POLLIN, 0}, {signals, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents) handle_signals(0);
        if (!p[0].revents) continue;
        char magic[4];
        read_exact(magic, 4); /* kiln gone: exits, and the container stops */
        if (!memcmp(magic, "KJOB", 4)) {
            run_job();
        } else if (!memcmp(magic, "KRST", 4)) {
            reset();
        } else {
            die("not a kiln request");
        }
    }
}
