/*
 * kiln-init: kiln's own process inside every docker sandbox container.
 *
 * Nothing in a kiln image is pulled from a registry, so the container's long-running
 * process is this static helper, which kiln builds (build.rs) and puts into every
 * toolchain image as /kiln-init. It runs as the job user (never root) and has two modes:
 *
 *   kiln-init          pid 1 of the container: reaps orphans (every process of a job is
 *                      re-parented to it) and otherwise sleeps. On SIGUSR1 sent from
 *                      outside the container (the Engine API's kill endpoint, which needs
 *                      no new process: a fork bomb that exhausted the pids limit cannot
 *                      stop it) it SIGKILLs every other process. Other signals are
 *                      ignored, so a job cannot stop the container.
 *   kiln-init reset    run by kiln's cleaner (docker exec, as the job user) between jobs:
 *                      kills every process but pid 1 and itself, removes every SysV IPC
 *                      object (shared memory, semaphores, message queues: they outlive
 *                      their processes, and the next job, maybe another client's, could
 *                      attach them), then removes every file and directory the job user
 *                      owns. The toolchain is owned by root and the job user has no
 *                      capabilities, so what it owns is exactly what jobs added. Exit 0:
 *                      the container is as it was created.
 *
 * kill(-1, sig) sends to every process the caller may signal except itself and the
 * namespace's init (kill(2)): for a caller running as the job user that is exactly the
 * job's processes.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How long the kill loop keeps trying before it reports survivors (200 x 10 ms). */
#define KILL_ROUNDS 200

static void reap(void) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {
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

static int kill_others(int reaper) {
    struct timespec pause = {0, 10 * 1000 * 1000};
    for (int round = 0; round < KILL_ROUNDS; round++) {
        kill(-1, SIGKILL);
        if (reaper) reap();
        if (others_alive() == 0) return 0;
        nanosleep(&pause, NULL);
    }
    return -1;
}

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

static int reset(void) {
    if (kill_others(0) != 0) {
        fprintf(stderr, "kiln-init: processes survive SIGKILL\n");
        return 2;
    }
    int ipc_left = purge_ipc();
    if (ipc_left) {
        fprintf(stderr, "kiln-init: %d SysV IPC objects could not be removed\n", ipc_left);
        return 4;
    }
    int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) return 3;
    int failed = purge(root, getuid(), 1);
    close(root);
    if (failed) {
        fprintf(stderr, "kiln-init: %d entries could not be removed\n", failed);
        return 1;
    }
    return 0;
}

static _Noreturn void init(void) {
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&all, &info);
        if (sig == SIGCHLD) {
            reap();
        } else if (sig == SIGUSR1 && info.si_pid == 0) {
            /* si_pid is 0 only for a sender outside this pid namespace: the daemon. */
            kill_others(1);
        }
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "reset")) return reset();
    if (argc == 1) init();
    fprintf(stderr, "usage: kiln-init [reset]\n");
    return 64;
}
