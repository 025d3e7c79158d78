//! Containment: each test is an attack a job holding a valid token makes on the
//! host (issue 13), performed for real, followed by a read-back of the host state
//! it aimed at (a sysctl, a process's uid, a cgroup, a file's mode and owner, a
//! process count, a directory left behind). Run as root, as production runs.
//!
//! Host-side checks read: `/proc/<pid>/{cmdline,status,cgroup}` of the job's
//! processes (found by a unique marker in their command line, plus descendants),
//! `/sys/fs/cgroup/pids/**/pids.max`, `/sys/fs/cgroup/memory/<job's cgroup>/`,
//! a running sandbox's root (through a sandbox thread's
//! `/proc/<kiln>/task/<tid>/root/tmp/root`) and `<data_dir>/roots/<archive_id>/tmp`.
//! The cgroup test starts kiln in a pids cgroup of its own
//! (`/sys/fs/cgroup/pids/kiln-cgroup-<pid>-<n>`, removed afterwards); the deep-tree
//! test keeps its data dir on tmpfs (`/dev/shm`) when there is one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kiln::protocol::{CompileCommand, JobComplete, RunJobHttpRequest, RunJobResult};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// The host ids jobs run as by default (`kiln.sandbox.uid_base`, `uid_count`):
/// the tests use the defaults so they need no new config key.
const UID_BASE: u32 = 1_500_000_000;
const UID_COUNT: u32 = 65_536;

/// Every test's kiln: a job that outlives this fails its test, never hangs it.
const JOB_TIMEOUT: &str = "[kiln.jobs]\ntimeout_secs = 30\n";
/// Bound on one test's job as the test waits for it (kiln's timeout plus slack).
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// A name no other job, test or run uses, put in a job's command line so the
/// test can find the job's processes on the host.
fn marker(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("kiln-{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn sh(script: &str) -> CompileCommand {
    command("/bin/sh", &["-c", script], "/work")
}

fn both(done: &JobComplete) -> String {
    format!("exit {}\n--- stdout\n{}--- stderr\n{}", done.output.code, stdout(done), stderr(done))
}

fn no_inputs() -> Vec<u8> {
    programs(&[])
}

/// Runs `job` to its end while `sample` is called every 50 ms; at most `limit`.
async fn sampling<T, S>(limit: Duration, job: impl Future<Output = T>, mut sample: impl FnMut() -> S) -> (T, Vec<S>) {
    let deadline = Instant::now() + limit;
    let mut job = std::pin::pin!(job);
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            out = &mut job => return (out, samples),
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                assert!(Instant::now() < deadline, "the job did not end within {limit:?}");
                samples.push(sample());
            }
        }
    }
}

/// Processes whose command line holds `marker`, and all their descendants.
fn job_processes(marker: &str) -> Vec<i32> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten().take(1_000_000) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            found.insert(pid);
            found.extend(descendants(pid));
        }
    }
    found.into_iter().collect()
}

/// A process's ids on the host, from `/proc/<pid>/status`.
#[derive(Debug, Clone)]
struct Ids {
    pid: i32,
    name: String,
    /// Real, effective, saved, filesystem.
    uids: Vec<u32>,
    gids: Vec<u32>,
    groups: Vec<u32>,
}

impl Ids {
    fn of(pid: i32) -> Option<Ids> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_default().trim().to_owned();
        let numbers = |key: &str| field(key).split_whitespace().filter_map(|n| n.parse().ok()).collect::<Vec<u32>>();
        Some(Ids {
            pid,
            name: field("Name:"),
            uids: numbers("Uid:"),
            gids: numbers("Gid:"),
            groups: numbers("Groups:"),
        })
    }
}

/// Whether `id` is one a job of some kiln may run as: a kiln whose range another
/// live kiln holds (tests run kilns side by side) takes the next, up to 1,024
/// ranges on (`src/sandbox/overlay/id_claim.rs`).
fn in_job_range(id: u32) -> bool {
    (UID_BASE..UID_BASE + UID_COUNT * 1024).contains(&id)
}

/// Directories below `root` (itself included), breadth first, never through a
/// symlink, at most `max`.
fn walk_dirs(root: &Path, max: usize) -> Vec<PathBuf> {
    let mut found = vec![root.to_owned()];
    let mut next = 0;
    while next < found.len() && found.len() < max {
        let dir = found[next].clone();
        next += 1;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) && found.len() < max {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Every entry below `root` (not itself), never through a symlink, at most `max`.
fn walk_all(root: &Path, max: usize) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
            if meta.is_dir() {
                todo.push(entry.path());
            }
            found.push((entry.path(), meta));
            if found.len() >= max {
                return found;
            }
        }
    }
    found
}

/// `pids.max` of every cgroup in the v1 pids hierarchy (bounded walk).
fn pids_max_everywhere() -> BTreeMap<PathBuf, String> {
    walk_dirs(Path::new("/sys/fs/cgroup/pids"), 20_000)
        .into_iter()
        .filter_map(|dir| Some((dir.clone(), std::fs::read_to_string(dir.join("pids.max")).ok()?)))
        .collect()
}

/// The root of the running sandbox that holds `relative`, as root on the host
/// reaches it: through one of kiln's sandbox threads, whose mount namespace has
/// it at `/tmp/root` (`/proc/<kiln>/task/<thread>/root/tmp/root`). What a job
/// writes is on its sandbox's own tmpfs, mounted there and nowhere on the host;
/// the overlay shows the attributes that tmpfs holds.
fn sandbox_root_holding(kiln: &Kiln, relative: &str) -> Option<PathBuf> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", kiln.pid())).ok()?;
    tasks
        .flatten()
        .map(|task| task.path().join("root/tmp/root"))
        .find(|root| std::fs::symlink_metadata(root.join(relative)).is_ok())
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// Makes `depth` nested directories `a/a/a/...` below `top`, one open fd at a time
/// (the path is far longer than PATH_MAX).
fn make_deep_tree(top: &Path, depth: usize) {
    std::fs::create_dir_all(top).unwrap();
    let mut dir = nix::fcntl::open(top, DIR_FLAGS, Mode::empty()).unwrap();
    for _ in 0..depth {
        nix::sys::stat::mkdirat(&dir, "a", Mode::from_bits_truncate(0o755)).unwrap();
        dir = nix::fcntl::openat(&dir, "a", DIR_FLAGS, Mode::empty()).unwrap();
    }
}

/// Removes `top` and everything below it without recursion and with two fds at
/// most: the test's own cleanup of trees deeper than std's `remove_dir_all` (and a
/// 2 MiB test thread stack) survive. Best effort, bounded in steps and time.
fn remove_deep_tree(top: &Path) {
    let Ok(mut dir) = nix::fcntl::open(top, DIR_FLAGS, Mode::empty()) else {
        let _ = std::fs::remove_file(top);
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut names: Vec<OsString> = Vec::new();
    for _ in 0..10_000_000u64 {
        if Instant::now() > deadline {
            break;
        }
        // Listed through /proc/self/fd: no path resolution of the deep path.
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let mut descended = false;
        for entry in listing.into_iter().flatten().flatten() {
            let name = entry.file_name();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Ok(child) = nix::fcntl::openat(&dir, name.as_os_str(), DIR_FLAGS, Mode::empty()) {
                    names.push(name);
                    dir = child;
                    descended = true;
                    break;
                }
                let _ = nix::unistd::unlinkat(&dir, name.as_os_str(), UnlinkatFlags::RemoveDir);
            } else {
                let _ = nix::unistd::unlinkat(&dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
        if descended {
            continue;
        }
        let Some(name) = names.pop() else { break };
        let Ok(parent) = nix::fcntl::openat(&dir, "..", DIR_FLAGS, Mode::empty()) else { break };
        let _ = nix::unistd::unlinkat(&parent, name.as_os_str(), UnlinkatFlags::RemoveDir);
        dir = parent;
    }
    drop(dir);
    let _ = std::fs::remove_dir(top);
}

/// A data dir for kilns whose sandboxes may hold trees too deep for
/// `remove_dir_all`; on drop (after those kilns are gone), removes the sandboxes
/// iteratively before the temp dir goes.
///
/// On tmpfs where there is one: on a disk mounted with `discard` (this machine's
/// ext4) each rmdir costs ~3 ms, so 16,000 directories take ~50 s to remove, in
/// memory ~0.1 s. What the test checks is that removal survives the depth.
struct DeepDataDir(tempfile::TempDir);

impl DeepDataDir {
    fn new() -> DeepDataDir {
        let shm = Path::new("/dev/shm");
        let in_memory =
            nix::sys::statfs::statfs(shm).is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        let mut builder = tempfile::Builder::new();
        builder.prefix("kiln-deep-");
        DeepDataDir(if in_memory { builder.tempdir_in(shm) } else { builder.tempdir() }.unwrap())
    }

    fn path(&self) -> PathBuf {
        self.0.path().join("data")
    }
}

impl Drop for DeepDataDir {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.path().join("sandboxes")).into_iter().flatten().flatten() {
            remove_deep_tree(&entry.path());
        }
    }
}

/// Writes `contents` back to `path` on drop, whatever the test did.
struct Restore {
    path: &'static str,
    contents: String,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if std::fs::read_to_string(self.path).map(|c| c.trim().to_owned()).ok().as_deref() != Some(&self.contents) {
            let _ = std::fs::write(self.path, format!("{}\n", self.contents));
        }
    }
}

/// A pids cgroup of the test's own, `/sys/fs/cgroup/pids/<name>`, for kiln to run
/// in: kiln's cgroup is then not the hierarchy's root, and has a `pids.max` a job
/// could aim at. On drop (after kiln's), removes it and whatever is below it.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str, pids_max: u32) -> TestCgroup {
        let dir = Path::new("/sys/fs/cgroup/pids").join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("pids.max"), pids_max.to_string()).unwrap();
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its processes (kiln's, already killed) may take a moment to go.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.exists() && Instant::now() < deadline {
            let mut dirs = walk_dirs(&self.0, 20_000);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                let _ = std::fs::remove_dir(dir);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn kiln_alive(kiln: &mut Kiln) -> bool {
    kiln.child.try_wait().is_ok_and(|status| status.is_none())
}

// --- 1. sysctls ------------------------------------------------------------

#[actix_rt::test]
async fn job_cannot_write_host_sysctls() {
    const SYSCTL: &str = "/proc/sys/fs/lease-break-time";
    let original = std::fs::read_to_string(SYSCTL).unwrap().trim().to_owned();
    let _restore = Restore { path: SYSCTL, contents: original.clone() };
    let attack = original.parse::<u64>().unwrap() + 7;
    let kiln = Kiln::start(JOB_TIMEOUT);
    // sysrq-trigger: 'h' only prints the help, should the write ever get through.
    let script = format!(
        "echo {attack} > {SYSCTL} && echo wrote-sysctl; \
         if [ -e /proc/sysrq-trigger ]; then echo h > /proc/sysrq-trigger && echo wrote-sysrq; fi; \
         echo job-sees=$(cat {SYSCTL})"
    );
    let done = run(&kiln.client(), gcc_toolchain(), sh(&script), &[], no_inputs()).await;
    let host = std::fs::read_to_string(SYSCTL).unwrap().trim().to_owned();
    assert_eq!(host, original, "a job changed the host's {SYSCTL}\n{}", both(&done));
    assert!(!stdout(&done).contains("wrote-sysctl"), "the sysctl write succeeded\n{}", both(&done));
    assert!(!stdout(&done).contains("wrote-sysrq"), "the sysrq-trigger write succeeded\n{}", both(&done));
    assert!(stdout(&done).contains("job-sees="), "the job ran\n{}", both(&done));
}

// --- 2. host uid -----------------------------------------------------------

#[actix_rt::test]
async fn job_runs_as_an_unprivileged_host_uid() {
    let kiln = Kiln::start(JOB_TIMEOUT);
    let m = marker("uid");
    let script = format!(": {m}; echo x > made-by-job; id -u; id -g; sleep 3; echo done");
    let client = kiln.client();
    let job = run(&client, gcc_toolchain(), sh(&script), &[], no_inputs());
    let (done, samples) =
        sampling(TEST_LIMIT, job, || job_processes(&m).into_iter().filter_map(Ids::of).collect::<Vec<_>>()).await;
    assert_eq!(stdout(&done), "0\n0\ndone\n", "inside, the job is uid and gid 0\n{}", both(&done));
    let seen: Vec<Ids> = samples.into_iter().flatten().collect();
    assert!(seen.iter().any(|ids| ids.name == "sleep"), "the job's `sleep` was seen on the host: {seen:?}");
    for ids in &seen {
        let pid = ids.pid;
        assert!(ids.uids.len() == 4 && ids.uids.iter().all(|&u| in_job_range(u)), "host uids of pid {pid}: {ids:?}");
        assert!(ids.gids.len() == 4 && ids.gids.iter().all(|&g| in_job_range(g)), "host gids of {ids:?}");
        assert!(!ids.groups.contains(&0), "supplementary group 0: {ids:?}");
    }
}

// --- 3. nested user namespace + cgroup mount -------------------------------

const CGROUP_ATTACK_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static void step(const char *what, int result) {
    if (result == 0) printf("%s: SUCCEEDED\n", what);
    else printf("%s: failed: errno %d (%s)\n", what, errno, strerror(errno));
    fflush(stdout);
}

/* argv[1]: a marker (for the host to find it); argv[2]: the child cgroup to make. */
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    sleep(1); /* the host reads the job's cgroup first */
    step("unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWCGROUP)",
         unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP));
    step("write /proc/self/setgroups", put("/proc/self/setgroups", "deny"));
    step("write /proc/self/uid_map", put("/proc/self/uid_map", "0 0 1"));
    step("write /proc/self/gid_map", put("/proc/self/gid_map", "0 0 1"));
    mkdir("cg", 0755);
    step("mount cgroup v1 pids", mount("cgroup", "cg", "cgroup", 0, "pids"));
    step("write the mounted root's pids.max", put("cg/pids.max", "max"));
    char dir[512], file[600];
    snprintf(dir, sizeof dir, "cg/%s", argv[2]);
    step("mkdir a child cgroup", mkdir(dir, 0755));
    snprintf(file, sizeof file, "%s/pids.max", dir);
    step("write the child cgroup's pids.max", put(file, "7"));
    sleep(1); /* the host reads the job's cgroup again while it lives */
    return 0;
}
"#;

#[actix_rt::test]
async fn nested_user_namespace_and_cgroup_mount_fail() {
    let m = marker("cgroup");
    // kiln runs in a pids cgroup of its own (as under systemd), not the root.
    let cgroup = TestCgroup::new(&m, 4096);
    let kiln = Kiln::start_in_cgroup(JOB_TIMEOUT, &cgroup.0.join("cgroup.procs"));
    let child = format!("{m}-child");
    let attack = static_program("cgroup_attack", CGROUP_ATTACK_C);
    // A first job makes kiln prepare warm sandboxes (and their cgroups, if any),
    // so the snapshot below already holds the cgroup the attacking job runs in.
    run(&kiln.client(), gcc_toolchain(), sh("true"), &[], no_inputs()).await;
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let before = pids_max_everywhere();
    let kiln_cgroup = cgroup_dir(kiln.pid(), "pids").unwrap();
    assert_eq!(kiln_cgroup, cgroup.0, "kiln started in the test's cgroup");
    let kiln_pids_max = std::fs::read_to_string(kiln_cgroup.join("pids.max")).ok();

    let client = kiln.client();
    let job = run(
        &client,
        gcc_toolchain(),
        command("/work/cgroup_attack", &[&m, &child], "/work"),
        &[],
        programs(&[("cgroup_attack", &attack)]),
    );
    // The job's own pids cgroup and its pids.max, before and after its attack.
    let (done, samples) = sampling(TEST_LIMIT, job, || {
        job_processes(&m)
            .into_iter()
            .filter_map(|pid| cgroup_dir(pid, "pids"))
            .map(|dir| {
                let max = std::fs::read_to_string(dir.join("pids.max")).ok();
                (dir, max)
            })
            .collect::<Vec<_>>()
    })
    .await;
    println!("{}", both(&done));
    let after = pids_max_everywhere();

    let made: Vec<_> = after.keys().filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy() == child)).collect();
    assert!(made.is_empty(), "the job made host cgroups {made:?}\n{}", both(&done));
    // Every pids.max on the host is unchanged, but those of the sandboxes other
    // tests' kilns (started at the hierarchy's root, this one is not) make and
    // limit meanwhile: a job cgroup is created with "max", then limited.
    let others_sandboxes = Path::new("/sys/fs/cgroup/pids/kiln-jobs");
    for (dir, value) in &before {
        let other_kilns_sandbox = dir.strip_prefix(others_sandboxes).is_ok_and(|rest| rest.components().count() >= 2);
        if let (Some(now), false) = (after.get(dir), other_kilns_sandbox) {
            assert_eq!(now, value, "{}/pids.max changed\n{}", dir.display(), both(&done));
        }
    }
    assert_eq!(std::fs::read_to_string(kiln_cgroup.join("pids.max")).ok(), kiln_pids_max, "kiln's own pids.max");
    let mut seen: BTreeMap<PathBuf, BTreeSet<Option<String>>> = BTreeMap::new();
    for (dir, max) in samples.into_iter().flatten() {
        seen.entry(dir).or_default().insert(max);
    }
    assert!(!seen.is_empty(), "the job's process was seen on the host\n{}", both(&done));
    for (dir, values) in &seen {
        assert_eq!(values.len(), 1, "the job's cgroup {} changed its pids.max: {values:?}", dir.display());
    }
    let out = stdout(&done);
    assert!(out.contains("unshare("), "the attack ran\n{}", both(&done));
    // Every step that needs the cgroup mount must fail. The mkdir alone may succeed:
    // with the mount refused, it makes a plain directory in the job's own overlay.
    let succeeded: Vec<&str> =
        out.lines().filter(|l| l.ends_with("SUCCEEDED") && !l.starts_with("mkdir a child cgroup")).collect();
    assert!(succeeded.is_empty(), "every step of the attack must fail: {succeeded:?}\n{}", both(&done));
    assert!(out.contains("mount cgroup v1 pids: failed"), "the cgroup mount was refused\n{}", both(&done));
}

// --- 4. setuid files on the host -------------------------------------------

const SETUID_ATTACK_C: &str = r##"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void step(const char *what, int result) {
    if (result == 0) printf("%s: ok\n", what);
    else printf("%s: failed: errno %d (%s)\n", what, errno, strerror(errno));
}

static void create(const char *name, mode_t mode) {
    int fd = open(name, O_CREAT | O_WRONLY | O_EXCL, mode);
    step(name, fd < 0 ? -1 : 0);
    if (fd < 0) return;
    (void)write(fd, "#!/bin/sh\nid\n", 13);
    step("fchmod", fchmod(fd, mode));
    close(fd);
}

int main(void) {
    step("chmod 4755 suid-copy", chmod("suid-copy", 04755));
    step("chmod 2755 sgid-copy", chmod("sgid-copy", 02755));
    step("chmod 6755 both-copy", chmod("both-copy", 06755));
    create("created-4755", 04755);
    create("created-2755", 02755);
    const char *names[] = {"suid-copy", "sgid-copy", "both-copy", "created-4755", "created-2755"};
    for (unsigned i = 0; i < sizeof names / sizeof *names; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0) printf("%s: mode %o\n", names[i], (unsigned)st.st_mode & 07777);
    }
    return 0;
}
"##;

#[actix_rt::test]
async fn job_leaves_no_setuid_file_on_the_host() {
    let kiln = Kiln::start(JOB_TIMEOUT);
    let m = marker("setuid");
    let attack = static_program("setuid_attack", SETUID_ATTACK_C);
    let done_file = format!("done-{m}");
    let script = format!(
        ": {m}; cat /bin/sh > suid-copy; cat /bin/sh > sgid-copy; cat /bin/sh > both-copy; \
         ./setuid_attack; echo > {done_file}; sleep 3"
    );
    let client = kiln.client();
    let job = run(&client, gcc_toolchain(), sh(&script), &[], programs(&[("setuid_attack", &attack)]));
    // While the job still runs: what it wrote, as root on the host finds it.
    let relative = format!("work/{done_file}");
    let (done, samples) = sampling(TEST_LIMIT, job, || {
        let root = sandbox_root_holding(&kiln, &relative)?;
        Some((root.clone(), walk_all(&root.join("work"), 100_000)))
    })
    .await;
    let Some((root, entries)) = samples.into_iter().flatten().next() else {
        panic!("no sandbox under {} held {relative} while the job ran\n{}", kiln.data_dir.display(), both(&done))
    };
    println!("{}", both(&done));
    let privileged: Vec<String> = entries
        .iter()
        .filter(|(_, meta)| {
            let mode = meta.permissions().mode();
            mode & 0o4000 != 0 || (!meta.is_dir() && mode & 0o2000 != 0)
        })
        .map(|(path, meta)| format!("{} mode {:o} owner {}:{}", path.display(), meta.mode(), meta.uid(), meta.gid()))
        .collect();
    assert!(privileged.is_empty(), "setuid/setgid files on the host: {privileged:#?}");
    let work = root.join("work");
    // The copies and the marker exist; an `open(O_CREAT, 04755)` may have been
    // refused outright, leaving no file (which is fine).
    for (name, required) in [
        ("suid-copy", true),
        ("sgid-copy", true),
        ("both-copy", true),
        ("created-4755", false),
        ("created-2755", false),
        (done_file.as_str(), true),
    ] {
        let Some((_, meta)) = entries.iter().find(|(path, _)| *path == work.join(name)) else {
            assert!(!required, "the job made {name}\n{}", both(&done));
            continue;
        };
        assert!(meta.uid() != 0 && meta.gid() != 0, "{name} is owned by {}:{} on the host", meta.uid(), meta.gid());
    }
    // Nobody but root may even reach the sandboxes.
    let sandboxes = kiln.data_dir.join("sandboxes");
    let mut dirs = vec![kiln.data_dir.clone(), sandboxes.clone()];
    dirs.extend(std::fs::read_dir(&sandboxes).unwrap().flatten().map(|e| e.path()));
    for dir in dirs {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue }; // cleaned meanwhile
        let mode = meta.permissions().mode() & 0o7777;
        assert!(mode & 0o077 == 0, "{} is mode {mode:o}: other users can reach it", dir.display());
    }
}

// --- 5. sticky /tmp --------------------------------------------------------

#[actix_rt::test]
async fn toolchain_tmp_keeps_its_sticky_bit() {
    // The premise: the toolchain archive itself has tmp/ at 1777.
    let tc = gcc_toolchain();
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(&tc.bytes[..]));
    let tmp_mode = archive
        .entries()
        .unwrap()
        .flatten()
        .find(|e| e.path().is_ok_and(|p| p.to_str().map(|p| p.trim_end_matches('/')) == Some("tmp")))
        .map(|e| e.header().mode().unwrap() & 0o7777);
    assert_eq!(tmp_mode, Some(0o1777), "the toolchain archive has tmp/ at 1777");

    let kiln = Kiln::start(JOB_TIMEOUT);
    let done = run(&kiln.client(), tc, sh("ls -ld /tmp"), &[], no_inputs()).await;
    assert!(stdout(&done).starts_with("drwxrwxrwt "), "the job's /tmp\n{}", both(&done));
    let root_tmp = kiln.data_dir.join("roots").join(&tc.archive_id).join("tmp");
    let mode = std::fs::symlink_metadata(&root_tmp).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "{} on the host is {mode:o}", root_tmp.display());
}

// --- 6. fork bomb ----------------------------------------------------------

/// `max_pids` as these tests set it, and what may run beyond it (kiln's own
/// helper processes in the job's cgroup: bubblewrap, the shim).
const MAX_PIDS: usize = 64;
const PIDS_SLACK: usize = 8;

#[actix_rt::test]
async fn fork_bomb_is_stopped_by_pids_max() {
    let kiln = Kiln::start("[kiln.jobs]\nmax_pids = 64\ntimeout_secs = 30\n");
    let m = marker("forks");
    let script = format!(
        ": {m}; i=0; while [ $i -lt 5000 ]; do sleep 10 & i=$((i+1)); done; echo forked-all-5000; wait; echo waited"
    );
    let started = Instant::now();
    let client = kiln.client();
    let job = run(&client, gcc_toolchain(), sh(&script), &[], no_inputs());
    let (done, counts) = sampling(TEST_LIMIT, job, || job_processes(&m).len()).await;
    let took = started.elapsed();
    let most = counts.iter().copied().max().unwrap_or(0);
    let err = stderr(&done);
    println!("most processes seen: {most}; took {took:?}\n{}", both(&done));
    assert!(most <= MAX_PIDS + PIDS_SLACK, "the host ran {most} processes of one job");
    assert!(!stdout(&done).contains("forked-all"), "5000 forks succeeded\n{}", both(&done));
    assert!(
        err.to_lowercase().contains("fork") || err.contains("Resource temporarily unavailable"),
        "the job saw its forks fail\n{}",
        both(&done)
    );
    assert!(took < Duration::from_secs(30), "the job ended within its timeout: {took:?}");
    assert_compiles(&kiln).await;
}

// --- 7. memory bomb --------------------------------------------------------

const MEMORY_BOMB_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Touches 512 MiB in 16 MiB steps, after a second for the host to look. */
int main(void) {
    sleep(1);
    const size_t step = 16u << 20;
    for (int i = 1; i <= 32; i++) {
        char *p = malloc(step);
        if (!p) { printf("malloc failed after %d MiB\n", (i - 1) * 16); return 3; }
        memset(p, i, step);
    }
    printf("touched 512 MiB\n");
    return 0;
}
"#;

#[actix_rt::test]
async fn memory_bomb_is_reported_as_killed_by_the_memory_limit() {
    const LIMIT: u64 = 64 << 20;
    let kiln = Kiln::start("[kiln.jobs]\nmax_memory_bytes = 67108864\ntimeout_secs = 30\n");
    let kiln_cgroup = cgroup_dir(kiln.pid(), "memory").unwrap();
    let m = marker("memory");
    let bomb = static_program("memory_bomb", MEMORY_BOMB_C);
    let client = kiln.client();
    let job = run(
        &client,
        gcc_toolchain(),
        command("/work/memory_bomb", &[&m], "/work"),
        &[],
        programs(&[("memory_bomb", &bomb)]),
    );
    let (done, samples) = sampling(TEST_LIMIT, job, || {
        job_processes(&m)
            .into_iter()
            .filter_map(|pid| cgroup_dir(pid, "memory"))
            .map(|dir| {
                let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes")).ok();
                (dir, limit.and_then(|l| l.trim().parse::<u64>().ok()))
            })
            .collect::<Vec<_>>()
    })
    .await;
    println!("{}", both(&done));
    let seen: BTreeMap<PathBuf, Option<u64>> = samples.into_iter().flatten().collect();
    assert!(!seen.is_empty(), "the job's process was seen on the host");
    for (dir, limit) in &seen {
        assert_ne!(dir, &kiln_cgroup, "the job runs in a memory cgroup of its own, not kiln's");
        assert!(limit.is_some_and(|l| l <= LIMIT), "{}: memory.limit_in_bytes {limit:?}", dir.display());
    }
    assert!(!stdout(&done).contains("touched 512 MiB"), "the job got 512 MiB\n{}", both(&done));
    assert_eq!(done.output.code, 137, "killed by SIGKILL, reported as 128 + 9\n{}", both(&done));
    assert!(stderr(&done).contains("memory limit"), "kiln says why\n{}", both(&done));
    // The job's cgroup goes with the job.
    let gone = wait_for(Duration::from_secs(10), || seen.keys().all(|dir| !dir.exists()).then_some(())).await;
    assert!(gone.is_some(), "the job's memory cgroup is still there: {:?}", seen.keys());
    let status = kiln.status().await;
    assert_eq!(status.snapshot.counters.builder_restarts, 0, "not a machinery failure: {status:?}");
    assert_compiles(&kiln).await;
}

// --- 8. deep tree ----------------------------------------------------------

const DEEP_TREE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* argv[1]: the name of the top directory; argv[2]: the depth below it. */
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int depth = atoi(argv[2]);
    if (mkdir(argv[1], 0755) != 0 || chdir(argv[1]) != 0) { perror(argv[1]); return 1; }
    for (int i = 0; i < depth; i++) {
        if (mkdir("a", 0755) != 0 || chdir("a") != 0) {
            printf("stopped at depth %d: %s\n", i, strerror(errno));
            return 1;
        }
    }
    printf("depth %d\n", depth);
    return 0;
}
"#;

const DEPTH: usize = 16_000;

#[actix_rt::test]
async fn deep_tree_is_cleaned_and_kiln_survives() {
    // Declared first, dropped last: every kiln is dead before the tree goes.
    let data = DeepDataDir::new();
    let mut kiln = Kiln::start_on(&data.path(), JOB_TIMEOUT);
    let m = marker("deep");
    let top = format!("tree-{m}");
    let program = static_program("deep_tree", DEEP_TREE_C);
    let depth = DEPTH.to_string();
    let done = run(
        &kiln.client(),
        gcc_toolchain(),
        command("/work/deep_tree", &[&top, &depth], "/work"),
        &[],
        programs(&[("deep_tree", &program)]),
    )
    .await;
    assert_eq!(stdout(&done), format!("depth {DEPTH}\n"), "the job made its tree\n{}", both(&done));
    // The cleaner gets the tree after the job; kiln must live through it.
    let relative = format!("work/{top}");
    let cleaned = wait_for(Duration::from_secs(60), || {
        if !kiln_alive(&mut kiln) {
            return Some(false);
        }
        sandbox_root_holding(&kiln, &relative).is_none().then_some(true)
    })
    .await;
    assert!(kiln_alive(&mut kiln), "kiln died cleaning the tree");
    assert_eq!(cleaned, Some(true), "the sandbox holding the tree was not removed within 60 s");
    assert_compiles(&kiln).await;

    // A tree left by a previous run (kiln killed before it could clean it): the
    // startup sweep must survive it and remove it.
    kiln.kill9();
    let stale = kiln.data_dir.join("sandboxes").join("999999");
    make_deep_tree(&stale.join("upper/work").join(&top), DEPTH);
    let mut restarted = Kiln::start_on(&data.path(), JOB_TIMEOUT);
    let swept = wait_for(Duration::from_secs(60), || {
        if !kiln_alive(&mut restarted) {
            return Some(false);
        }
        (!stale.exists()).then_some(true)
    })
    .await;
    assert!(kiln_alive(&mut restarted), "the restarted kiln died sweeping the tree");
    assert_eq!(swept, Some(true), "the restarted kiln did not remove {} within 60 s", stale.display());
    assert_compiles(&restarted).await;
}

// --- 9. inherited fds ------------------------------------------------------

#[actix_rt::test]
async fn inherited_fd_does_not_reach_the_job() {
    const FD: i32 = 7;
    let secret_dir = tempfile::Builder::new().prefix("kiln-secret-").tempdir().unwrap();
    let secret_path = secret_dir.path().join("secret");
    let secret = marker("secret");
    std::fs::write(&secret_path, &secret).unwrap();
    let kiln = Kiln::start_with_inherited_fd(JOB_TIMEOUT, &secret_path, FD);
    // The premise: kiln holds the secret on fd 7.
    let target = std::fs::read_link(format!("/proc/{}/fd/{FD}", kiln.pid())).unwrap();
    assert_eq!(target, secret_path, "kiln inherited fd {FD}");

    let script = format!("ls /proc/self/fd; echo ---; ls -l /proc/self/fd; cat /proc/self/fd/{FD}; cat <&{FD}");
    let done = run(&kiln.client(), gcc_toolchain(), sh(&script), &[], no_inputs()).await;
    let out = stdout(&done);
    assert!(!out.contains(&secret) && !stderr(&done).contains(&secret), "the job read the secret\n{}", both(&done));
    let listed: BTreeSet<&str> = out.split("---").next().unwrap().split_whitespace().collect();
    // 0, 1, 2 and the directory `ls` itself opens (3).
    assert!(listed.is_subset(&BTreeSet::from(["0", "1", "2", "3"])), "the job's fds: {listed:?}\n{}", both(&done));
}

// --- 10. host processes ----------------------------------------------------

#[actix_rt::test]
async fn job_cannot_see_or_signal_host_processes() {
    let mut kiln = Kiln::start(JOB_TIMEOUT);
    let mut bystander = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let targets = [kiln.pid(), bystander.id() as i32];
    let script = format!("ls /proc; for p in {} {}; do kill -9 $p; echo kill-$p=$?; done", targets[0], targets[1]);
    let done = run(&kiln.client(), gcc_toolchain(), sh(&script), &[], no_inputs()).await;
    let out = stdout(&done);
    let pids: Vec<i32> = out.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(!pids.is_empty() && pids.iter().all(|&p| p < 100), "the job sees only its own pids\n{}", both(&done));
    for p in targets {
        assert!(!pids.contains(&p), "the job sees host pid {p}");
        assert!(!out.contains(&format!("kill-{p}=0")), "kill -9 {p} succeeded\n{}", both(&done));
    }
    assert!(bystander.try_wait().unwrap().is_none(), "the host's sleep survived");
    assert!(kiln_alive(&mut kiln), "kiln survived");
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert_compiles(&kiln).await;
}

// --- 10b. a job ends when kiln says so (issue 27, finding 1) -----------------

/// Subverts the sandbox's pid 1 so that the job outlives its answer: opens
/// `/proc/1/mem` for writing and, at the address pid 1's blocked `wait()` returns
/// to (`/proc/1/syscall`), writes x86-64 code that clears its parent-death signal,
/// tells bubblewrap's monitor "exit 0" through the eventfd pid 1 holds, and then
/// pauses forever. A forked child keeps the job's stdout open for `argv[2]`
/// seconds. Prints how far it got.
const SUBVERT_PID1_C: &str = r#"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int linger = argc > 2 ? atoi(argv[2]) : 60;
    int mem = open("/proc/1/mem", O_RDWR);
    if (mem < 0) { printf("open /proc/1/mem: %s\n", strerror(errno)); return 0; }
    int evfd = -1;
    DIR *fds = opendir("/proc/1/fd");
    struct dirent *e;
    while (fds && (e = readdir(fds))) {
        char path[64], target[64] = {0};
        snprintf(path, sizeof path, "/proc/1/fd/%s", e->d_name);
        if (readlink(path, target, sizeof target - 1) > 0 && strstr(target, "eventfd")) evfd = atoi(e->d_name);
    }
    char line[512] = {0};
    FILE *sc = fopen("/proc/1/syscall", "r");
    if (!sc || !fgets(line, sizeof line, sc)) { printf("no /proc/1/syscall\n"); return 0; }
    char *last = strrchr(line, ' ');
    unsigned long long pc = strtoull(last ? last + 1 : line, NULL, 16);
    unsigned char code[] = {
        0xbf, 1, 0, 0, 0, 0x31, 0xf6, 0xb8, 157, 0, 0, 0, 0x0f, 0x05,   /* prctl(PR_SET_PDEATHSIG, 0) */
        0xbf, 0, 0, 0, 0, 0x48, 0x8d, 0x35, 0x15, 0, 0, 0,            /* edi = evfd; rsi = &one */
        0xba, 8, 0, 0, 0, 0xb8, 1, 0, 0, 0, 0x0f, 0x05,               /* write(evfd, &one, 8) */
        0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7,                    /* for (;;) pause(); */
        1, 0, 0, 0, 0, 0, 0, 0,                                       /* one: "exited 0" */
    };
    memcpy(code + 15, &evfd, 4);
    if (pwrite(mem, code, sizeof code, (off_t)pc) != (ssize_t)sizeof code) {
        printf("pwrite: %s\n", strerror(errno));
        return 0;
    }
    printf("pid 1 patched at %llx, eventfd %d\n", pc, evfd);
    fflush(stdout);
    if (fork() == 0) {
        setsid();
        for (int i = 0; i < linger; i++) sleep(1);
        _exit(0);
    }
    return 0;
}
"#;

#[actix_rt::test]
async fn a_job_that_subverts_pid_1_does_not_outlive_its_answer() {
    // A short timeout: on a kiln the attack works on, the job's answer is the
    // timeout's, while the lingering process (60 s) still runs.
    let kiln = Kiln::start("[kiln.jobs]\ntimeout_secs = 5\n");
    let m = marker("subvert");
    let program = static_program("subvert_pid1", SUBVERT_PID1_C);
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = RunJobHttpRequest { command: command("./subvert", &[&m, "60"], "/work"), outputs: vec![] };
    let inputs = programs(&[("subvert", &program)]);
    let answer = tokio::time::timeout(TEST_LIMIT, client.run_job(job_id, &token(job_id), &request, &inputs))
        .await
        .expect("kiln answered the job");
    let left: Vec<Ids> = job_processes(&m).into_iter().filter_map(Ids::of).collect();
    let shown = match &answer {
        Ok(RunJobResult::Complete(done)) => both(done),
        other => format!("{other:?}"),
    };
    // Leave nothing behind whatever happened, before asserting.
    for ids in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(ids.pid), nix::sys::signal::SIGKILL);
    }
    assert!(left.is_empty(), "the job's processes outlived its answer: {left:?}\n{shown}");
    match answer {
        Ok(RunJobResult::Complete(done)) => assert_eq!(done.output.code, 0, "the job ran to its end\n{shown}"),
        other => panic!("the job was answered as complete, not {other:?}"),
    }
    assert_compiles(&kiln).await;
}

/// A clean stop (SIGTERM) kills and removes every job cgroup of this kiln, the
/// warm sandboxes' included; only a killed kiln leaves them, for the next start.
#[actix_rt::test]
async fn a_clean_stop_removes_the_job_cgroups() {
    let mut kiln = Kiln::start(JOB_TIMEOUT);
    // This kiln's instance in each hierarchy it may use.
    let instance_name = format!("kiln-{}-0", kiln.pid());
    let instances: Vec<PathBuf> = ["pids", "memory", "freezer", "cpu"]
        .iter()
        .filter_map(|controller| Some(cgroup_dir(kiln.pid(), controller)?.join("kiln-jobs").join(&instance_name)))
        .collect();
    let instance = instances[0].clone();
    assert_compiles(&kiln).await;
    // The pool prepares the next sandboxes ahead, each in a cgroup of its own.
    let warm = wait_for(Duration::from_secs(10), || {
        let children = walk_dirs(&instance, 100).len() - 1;
        (children > 0).then_some(children)
    })
    .await;
    assert!(warm.is_some(), "warm sandboxes have cgroups under {instance:?}");

    let status = kiln.stop_cleanly().await;
    assert!(status.success(), "a clean stop exits 0: {status:?}");
    let left: Vec<&PathBuf> = instances.iter().filter(|dir| dir.exists()).collect();
    assert!(left.is_empty(), "job cgroups outlived a clean stop: {left:?}");
}

// --- 10c. pseudo-terminals: a job's own bounded share (issue 27, finding 8) ---

/// Opens pseudo-terminals until the kernel refuses, holds them for 2 s (for the
/// host to look) and prints how many it got.
const PTY_HOG_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    int got = 0, err = 0;
    for (int i = 0; i < 5000; i++) {
        int fd = posix_openpt(O_RDWR | O_NOCTTY);
        if (fd < 0) { err = errno; break; }
        got++;
    }
    printf("ptys %d (%s)\n", got, strerror(err));
    fflush(stdout);
    sleep(2);
    return 0;
}
"#;

/// What a sandbox's devpts allows (`MAX_PTYS` in src/sandbox/overlay/namespace.rs).
const MAX_PTYS: u64 = 16;

#[actix_rt::test]
async fn a_job_gets_a_bounded_share_of_the_hosts_ptys() {
    let kiln = Kiln::start(JOB_TIMEOUT);
    let program = static_program("pty_hog", PTY_HOG_C);
    let before = proc_sys_u64("kernel/pty/nr");
    let client = kiln.client();
    let job =
        run(&client, gcc_toolchain(), command("./pty_hog", &[], "/work"), &[], programs(&[("pty_hog", &program)]));
    let (done, samples) = sampling(TEST_LIMIT, job, || proc_sys_u64("kernel/pty/nr")).await;
    let most = samples.iter().copied().max().unwrap_or(before);
    let out = stdout(&done);
    println!("ptys in use before {before}, at most {most}\n{}", both(&done));
    let got: u64 = out.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("the job counted its ptys");
    assert!(got > 0, "a job still gets a pseudo-terminal\n{}", both(&done));
    assert!(got <= MAX_PTYS, "the job held {got} pseudo-terminals\n{}", both(&done));
    // Other processes on the host may open a few meanwhile.
    assert!(most <= before + MAX_PTYS + 8, "the host's ptys in use went from {before} to {most}");
    assert_compiles(&kiln).await;
}

// --- 10d. kiln's own memory per job (issue 27, finding 6) ---------------------

/// Leaves a sparse 300 MiB output: nothing on disk, all of it zeros to read.
const SPARSE_OUTPUT_C: &str = r#"
#include <fcntl.h>
#include <unistd.h>

int main(void) {
    int fd = open("big.o", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    return fd < 0 || ftruncate(fd, 300L << 20) != 0;
}
"#;

/// The peak resident memory of `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim();
    kib.parse::<u64>().unwrap() * 1024
}

#[actix_rt::test]
async fn a_large_output_costs_kiln_its_compressed_size_only() {
    const OUTPUT: u64 = 300 << 20;
    let kiln = Kiln::start(JOB_TIMEOUT);
    // Toolchain unpacked, sandboxes warm: what is left to grow is the job's own.
    assert_compiles(&kiln).await;
    let before = peak_rss(kiln.pid());
    let program = static_program("sparse_output", SPARSE_OUTPUT_C);
    let inputs = programs(&[("sparse", &program)]);
    let done = run(&kiln.client(), gcc_toolchain(), command("./sparse", &[], "/work"), &["big.o"], inputs).await;
    let after = peak_rss(kiln.pid());
    assert_eq!(done.output.code, 0, "{}", both(&done));
    let (_, data) = done.outputs.iter().find(|(name, _)| name == "big.o").expect("the output came back");
    assert_eq!(data.uncompressed_len(), OUTPUT);
    println!(
        "kiln's peak RSS {} -> {} MiB; the output compressed to {} bytes",
        before >> 20,
        after >> 20,
        data.compressed().len()
    );
    assert!(
        after < before + (64 << 20),
        "a 300 MiB output took kiln's peak RSS from {} to {} MiB",
        before >> 20,
        after >> 20
    );
}

// --- 10e. one host, two kilns: never the same job uids (issue 27, finding 10) --

/// The job uid range `pid`'s kiln claimed, from its claim in `/run/kiln/job-uids`.
fn claimed_range(pid: i32) -> Option<std::ops::Range<u64>> {
    std::fs::read_dir("/run/kiln/job-uids").ok()?.flatten().find_map(|entry| {
        let owner = std::fs::read_to_string(entry.path()).ok()?;
        owner.starts_with(&format!("kiln pid {pid},")).then_some(())?;
        let name = entry.file_name().into_string().ok()?;
        let (base, count) = name.split_once('-')?;
        let (base, count): (u64, u64) = (base.parse().ok()?, count.parse().ok()?);
        Some(base..base + count)
    })
}

#[actix_rt::test]
async fn two_kilns_on_one_host_never_share_job_uids() {
    // The same configuration for both, as two upstream server.toml files would have.
    let (a, b) = (Kiln::start(JOB_TIMEOUT), Kiln::start(JOB_TIMEOUT));
    let mut seen = Vec::new();
    for kiln in [&a, &b] {
        let m = marker("uids");
        let client = kiln.client();
        let job = run(&client, gcc_toolchain(), sh(&format!(": {m}; sleep 1; :")), &[], no_inputs());
        // Each process's host ids, read while it runs.
        let host_uids =
            || job_processes(&m).into_iter().filter_map(Ids::of).flat_map(|ids| ids.uids).collect::<Vec<_>>();
        let (done, samples) = sampling(TEST_LIMIT, job, host_uids).await;
        assert_eq!(done.output.code, 0, "{}", both(&done));
        let uids: BTreeSet<u32> = samples.into_iter().flatten().collect();
        assert!(!uids.is_empty(), "the job's processes were seen on the host");
        seen.push(uids);
    }
    assert!(seen[0].is_disjoint(&seen[1]), "both kilns ran jobs as {:?}", seen[0].intersection(&seen[1]));
    let claims = [&a, &b].map(|kiln| claimed_range(kiln.pid()).expect("each kiln records the job uid range it holds"));
    for (uids, range) in seen.iter().zip(&claims) {
        assert!(
            uids.iter().all(|&uid| range.contains(&u64::from(uid))),
            "job uids {uids:?} outside the claim {range:?}"
        );
    }
    let [range_a, range_b] = &claims;
    assert!(range_a.end <= range_b.start || range_b.end <= range_a.start, "claims {range_a:?} and {range_b:?} overlap");
}

// --- 11. no cgroups for jobs: refuse, unless the config opts out --------------

/// Runs in kiln's forked process: a mount namespace of its own where
/// `/sys/fs/cgroup` is an empty tmpfs, as on a host whose cgroups kiln may not use.
fn hide_cgroups() -> std::io::Result<()> {
    let check = |r: nix::libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    let none = std::ptr::null();
    // SAFETY: unshare(2) and mount(2) with static C strings: plain system calls,
    // no allocation, in the forked child.
    unsafe {
        check(nix::libc::unshare(nix::libc::CLONE_NEWNS))?;
        check(nix::libc::mount(none, c"/".as_ptr(), none, nix::libc::MS_REC | nix::libc::MS_PRIVATE, none.cast()))?;
        check(nix::libc::mount(c"none".as_ptr(), c"/sys/fs/cgroup".as_ptr(), c"tmpfs".as_ptr(), 0, none.cast()))
    }
}

#[actix_rt::test]
async fn without_job_cgroups_kiln_refuses_to_start_unless_told_to() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::Builder::new().prefix("kiln-test-").tempdir().unwrap();
    let mut command = Kiln::serve_command(&tmp.path().join("data"), "", "");
    command.stderr(std::process::Stdio::piped());
    // SAFETY: `hide_cgroups` only makes system calls.
    unsafe {
        command.pre_exec(hide_cgroups);
    }
    let child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(Instant::now() < deadline, "kiln took more than 30 s to refuse");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kiln started without cgroups for its jobs:\n{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("kiln cannot start: ")).unwrap_or_default();
    assert!(line.contains("kiln.sandbox.require_cgroups = false"), "one line saying how to opt out:\n{stderr}");
    assert!(line.contains("cannot open /sys/fs/cgroup/"), "and naming what is missing:\n{stderr}");

    // Told to, it runs jobs without the limits.
    let kiln = Kiln::start_with_pre_exec("[kiln.sandbox]\nrequire_cgroups = false\n", hide_cgroups);
    assert_compiles(&kiln).await;
}

// --- 12. kiln started with a strict umask (systemd's UMask=0077) --------------

#[actix_rt::test]
async fn a_strict_umask_leaves_jobs_their_root_and_tmp() {
    // SAFETY: umask(2) is a plain system call in the forked child.
    let kiln = Kiln::start_with_pre_exec(JOB_TIMEOUT, || {
        unsafe { nix::libc::umask(0o077) };
        Ok(())
    });
    assert_compiles(&kiln).await;
    let client = kiln.client();
    let done =
        run(&client, gcc_toolchain(), sh("echo ok > /tmp/probe && cat /tmp/probe && ls -ld /tmp"), &[], no_inputs())
            .await;
    assert_eq!(done.output.code, 0, "{}", both(&done));
    let out = stdout(&done);
    assert!(out.starts_with("ok\ndrwxrwxrwt"), "the job writes a 1777 /tmp:\n{}", both(&done));
}

// --- 13. `kiln check` on a cgroup v2 host reads, it does not rearrange --------

#[test]
fn kiln_check_on_a_cgroup_v2_host_changes_nothing() {
    // A mount namespace of its own where /sys/fs/cgroup is the host's cgroup2
    // hierarchy (controller-less here: they are all bound to v1).
    let script = format!(
        "mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && \
         ls /sys/fs/cgroup > /dev/stderr && {} check",
        env!("CARGO_BIN_EXE_kiln")
    );
    let before: BTreeSet<OsString> = std::fs::read_dir("/sys/fs/cgroup/unified")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let out = std::process::Command::new("unshare").args(["-m", "sh", "-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("job cgroups")).unwrap_or_default();
    assert!(line.starts_with("[FAIL]") && line.contains("pids controller"), "{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    let after: BTreeSet<OsString> = std::fs::read_dir("/sys/fs/cgroup/unified")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(!after.contains(std::ffi::OsStr::new("kiln-server")), "kiln check moved processes");
    assert!(after.is_subset(&before), "kiln check made cgroups: {:?}", after.difference(&before).collect::<Vec<_>>());
}

// --- 14. TCP buffers count against the job's memory (issue 27, finding 4) -----

/// A cgroup file's number, if it can be read.
fn cgroup_number(dir: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
}

/// A job under a 64 MiB memory limit opens loopback connections and writes 256 MiB
/// without reading (`tests/programs/tcp_hoard.c`). On cgroup v1 socket buffers are
/// outside `memory.limit_in_bytes`: before kiln set the job cgroup's
/// `memory.kmem.tcp.limit_in_bytes`, the host's TCP memory grew by the whole
/// 256 MiB. Now the job's part of the host's pool stays within its memory limit.
#[actix_rt::test]
async fn tcp_buffers_are_charged_to_the_jobs_memory_limit() {
    const LIMIT: u64 = 64 << 20;
    /// Others' sockets on the host, and the first buffer of each connection, which
    /// the kernel grants even over the limit (tcp_wmem[0]) so a socket makes progress.
    const SLACK: u64 = 32 << 20;
    let kiln = Kiln::start("[kiln.jobs]\nmax_memory_bytes = 67108864\ntimeout_secs = 30\n");
    let m = marker("tcp");
    let hoard = static_program("tcp_hoard", include_str!("programs/tcp_hoard.c"));
    let client = kiln.client();
    let before = host_tcp_mem_pages();
    let job = run(
        &client,
        gcc_toolchain(),
        command("/work/tcp_hoard", &[&m, "256"], "/work"),
        &[],
        programs(&[("tcp_hoard", &hoard)]),
    );
    let (done, samples) = sampling(TEST_LIMIT, job, || {
        let cgroups: Vec<(PathBuf, Option<u64>, Option<u64>)> = job_processes(&m)
            .into_iter()
            .filter_map(|pid| cgroup_dir(pid, "memory"))
            .map(|dir| {
                let limit = cgroup_number(&dir, "memory.kmem.tcp.limit_in_bytes");
                let used = cgroup_number(&dir, "memory.kmem.tcp.max_usage_in_bytes");
                (dir, limit, used)
            })
            .collect();
        (host_tcp_mem_pages(), cgroups)
    })
    .await;
    println!("{}", both(&done));
    assert_eq!(done.output.code, 0, "the attack ran to its end\n{}", both(&done));
    assert!(stdout(&done).contains("held"), "{}", both(&done));
    let most = samples.iter().map(|(pages, _)| *pages).max().unwrap_or(0);
    let grew = most.saturating_sub(before) * 4096;
    println!("host TCP memory: {before} pages before, {most} at most: grew {} MiB", grew >> 20);
    assert!(
        grew <= LIMIT + SLACK,
        "the job pinned {} MiB of the host's TCP memory under a {} MiB limit",
        grew >> 20,
        LIMIT >> 20
    );
    let cgroups: Vec<_> = samples.into_iter().flat_map(|(_, c)| c).collect();
    assert!(!cgroups.is_empty(), "the job's process was seen on the host");
    for (dir, limit, _) in &cgroups {
        assert!(limit.is_some_and(|l| l <= LIMIT), "{}: memory.kmem.tcp.limit_in_bytes {limit:?}", dir.display());
    }
    let charged = cgroups.iter().filter_map(|(_, _, used)| *used).max().unwrap_or(0);
    assert!(charged > 16 << 20, "the job's sockets were charged to its cgroup: {charged} bytes at most");
    assert_compiles(&kiln).await;
}

// --- 15. the seccomp filter: vsock, kernel AIO, mount inspection, personas ---
// (issue 27, findings 5, 8 and 9)

/// Binds and listens on vsock port argv[1] (any CID), holds it 3 s. Also tries
/// the family with garbage above the `int` (the kernel reads the low 32 bits).
const VSOCK_LISTEN_C: &str = r#"
#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long wide = syscall(SYS_socket, 0xffffffff00000000L | AF_VSOCK, SOCK_STREAM, 0);
    printf("wide socket %ld errno %d\n", wide, wide < 0 ? errno : 0);
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { printf("socket errno %d\n", errno); return 0; }
    struct sockaddr_vm addr = {0};
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = (unsigned)atoi(argv[1]);
    int bound = -1;
    for (int i = 0; i < 50 && bound != 0; i++) {
        bound = bind(s, (struct sockaddr *)&addr, sizeof addr);
        if (bound != 0) usleep(20000);
    }
    if (bound != 0 || listen(s, 1) != 0) { printf("bind/listen errno %d\n", errno); return 0; }
    printf("listening on %u\n", addr.svm_port);
    fflush(stdout);
    sleep(3);
    return 0;
}
"#;

#[actix_rt::test]
async fn a_job_cannot_take_a_vsock_port_from_the_host() {
    let port = 40_000 + std::process::id() % 20_000;
    if let Err(e) = host_binds_vsock(port) {
        eprintln!("\n!!!!! SKIPPING: this host has no vsock ({e}) !!!!!\n");
        return;
    }
    let kiln = Kiln::start(JOB_TIMEOUT);
    let program = static_program("vsock_listen", VSOCK_LISTEN_C);
    let client = kiln.client();
    let cmd = command("./vsock_listen", &[&port.to_string()], "/work");
    let job = run(&client, gcc_toolchain(), cmd, &[], programs(&[("vsock_listen", &program)]));
    // The host binds the port (and lets it go) every 50 ms while the job runs.
    let (done, samples) = sampling(TEST_LIMIT, job, || host_binds_vsock(port)).await;
    let out = stdout(&done);
    println!("{}\nhost binds: {samples:?}", both(&done));
    let taken = samples.iter().filter(|s| **s == Err(nix::errno::Errno::EADDRINUSE)).count();
    assert_eq!(taken, 0, "the job held vsock port {port}: the host's bind failed {taken} times\n{out}");
    assert!(samples.iter().any(Result::is_ok), "the host bound the port while the job ran: {samples:?}");
    let refused = format!("errno {}", nix::libc::EAFNOSUPPORT);
    assert!(out.contains(&format!("socket {refused}")), "the job's vsock socket was refused\n{out}");
    assert!(out.contains(&format!("wide socket -1 {refused}")), "AF_VSOCK with high bits was refused\n{out}");
    assert_compiles(&kiln).await;
}

/// Sets up kernel AIO contexts until io_setup fails (halving the size on each
/// failure; at most 200 calls), then holds them 3 s.
const AIO_HOG_C: &str = r#"
#include <errno.h>
#include <linux/aio_abi.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    long taken = 0;
    int last = 0;
    unsigned n = 65536;
    for (int calls = 0; calls < 200 && n > 0; calls++) {
        aio_context_t ctx = 0;
        if (syscall(SYS_io_setup, n, &ctx) == 0) taken += n;
        else { last = errno; n /= 2; }
    }
    printf("aio taken %ld errno %d\n", taken, last);
    fflush(stdout);
    sleep(3);
    return 0;
}
"#;

#[actix_rt::test]
async fn a_job_cannot_take_the_hosts_aio_budget() {
    let kiln = Kiln::start(JOB_TIMEOUT);
    let program = static_program("aio_hog", AIO_HOG_C);
    let before = proc_sys_u64("fs/aio-nr");
    let client = kiln.client();
    let job =
        run(&client, gcc_toolchain(), command("./aio_hog", &[], "/work"), &[], programs(&[("aio_hog", &program)]));
    let (done, samples) = sampling(TEST_LIMIT, job, || proc_sys_u64("fs/aio-nr")).await;
    let most = samples.iter().copied().max().unwrap_or(before);
    println!(
        "fs.aio-nr before {before}, at most {most} of {}\n{}",
        std::fs::read_to_string("/proc/sys/fs/aio-max-nr").unwrap().trim(),
        both(&done)
    );
    assert_eq!(most, before, "the job took {} of the host's fs.aio-max-nr", most.saturating_sub(before));
    let out = stdout(&done);
    assert!(out.contains(&format!("aio taken 0 errno {}", nix::libc::ENOSYS)), "io_setup was refused\n{out}");
    assert_compiles(&kiln).await;
}

/// Calls the mount-inspection and mount API calls the filter did not know, and
/// personas that undo exploit mitigations (last, so a persona that was set stays
/// for the host to see); prints each result; then holds 2 s (argv[1] is the
/// test's marker, to find the process on the host).
const INSPECT_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/personality.h>
#include <sys/syscall.h>
#include <unistd.h>
struct mnt_id_req { unsigned size, spare; unsigned long long mnt_id, param, mnt_ns_id; };
static void report(const char *what, long r) { printf("%s %ld errno %d\n", what, r, r < 0 ? errno : 0); }
int main(void) {
    unsigned long long ids[64], buf[512];
    struct mnt_id_req req = { 32, 0, 0xffffffffffffffffULL /* LSMT_ROOT */, 0, 0 };
    report("listmount", syscall(458, &req, ids, 64, 0));
    req.mnt_id = ids[0];
    report("statmount", syscall(457, &req, buf, sizeof buf, 0));
    unsigned long long attr[4] = {0};
    report("open_tree_attr", syscall(467, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */, attr, sizeof attr));
    report("linux32", syscall(SYS_personality, PER_LINUX32));
    report("query", syscall(SYS_personality, 0xffffffff));
    report("linux", syscall(SYS_personality, PER_LINUX));
    report("no_randomize", syscall(SYS_personality, ADDR_NO_RANDOMIZE));
    report("linux32_no_randomize", syscall(SYS_personality, PER_LINUX32 | ADDR_NO_RANDOMIZE));
    report("read_implies_exec", syscall(SYS_personality, READ_IMPLIES_EXEC | ADDR_NO_RANDOMIZE));
    fflush(stdout);
    sleep(2);
    return 0;
}
"#;

#[actix_rt::test]
async fn mount_inspection_and_mitigation_undoing_personas_are_refused() {
    let kiln = Kiln::start(JOB_TIMEOUT);
    let m = marker("inspect");
    let program = static_program("inspect", INSPECT_C);
    let client = kiln.client();
    let job =
        run(&client, gcc_toolchain(), command("./inspect", &[&m], "/work"), &[], programs(&[("inspect", &program)]));
    // The job's personas as the host's /proc shows them.
    let (done, samples) = sampling(TEST_LIMIT, job, || {
        job_processes(&m)
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/personality")).ok())
            .filter_map(|p| u32::from_str_radix(p.trim(), 16).ok())
            .collect::<Vec<u32>>()
    })
    .await;
    let out = stdout(&done);
    println!("{}\npersonas seen: {samples:?}", both(&done));
    let personas: Vec<u32> = samples.into_iter().flatten().collect();
    assert!(!personas.is_empty(), "the job's process was seen on the host");
    let undoing = nix::libc::ADDR_NO_RANDOMIZE as u32 | 0x0040_0000 /* READ_IMPLIES_EXEC */;
    assert!(personas.iter().all(|p| p & undoing == 0), "a persona undid a mitigation: {personas:x?}");
    let (eperm, enosys) = (nix::libc::EPERM, nix::libc::ENOSYS);
    for refused in [
        format!("listmount -1 errno {enosys}"),
        format!("statmount -1 errno {enosys}"),
        format!("open_tree_attr -1 errno {eperm}"),
        format!("no_randomize -1 errno {eperm}"),
        format!("linux32_no_randomize -1 errno {eperm}"),
        format!("read_implies_exec -1 errno {eperm}"),
    ] {
        assert!(out.lines().any(|l| l == refused), "expected `{refused}`\n{out}");
    }
    // Docker's personas still work (the query answers the current one).
    for allowed in ["linux32 0 errno 0", "query 8 errno 0", "linux 8 errno 0"] {
        assert!(out.lines().any(|l| l == allowed), "expected `{allowed}`\n{out}");
    }
}

// --- 16. a host with many mounts (issue 24) ------------------------------------

/// kiln started in a mount namespace of its own with 300 extra mounts, as on a
/// Kubernetes node or a docker host (where some of them hold secrets: service
/// account tokens, other pods' volumes). Each sandbox thread's namespace, which
/// bubblewrap copies for the job, holds the dozen mounts a sandbox needs, not
/// the host's: before, it held every one of them, and copying them cost each
/// sandbox 5.7× its set-up time with 1,000 (benches/toolchain.rs). Jobs compile.
#[actix_rt::test]
async fn sandboxes_start_from_a_small_mount_table_whatever_the_hosts() {
    const EXTRA: usize = 300;
    let dir = tempfile::Builder::new().prefix("kiln-mounts-").tempdir_in("/var/tmp").unwrap();
    let points: Vec<std::ffi::CString> = (0..EXTRA)
        .map(|i| {
            let point = dir.path().join(i.to_string());
            std::fs::create_dir(&point).unwrap();
            std::ffi::CString::new(point.into_os_string().into_encoded_bytes()).unwrap()
        })
        .collect();
    let kiln = Kiln::start_with_pre_exec("builders = 1\n", move || {
        let check = |r: nix::libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
        // SAFETY: plain system calls on strings made before the fork.
        unsafe {
            check(nix::libc::unshare(nix::libc::CLONE_NEWNS))?;
            let root = c"/".as_ptr();
            check(nix::libc::mount(
                std::ptr::null(),
                root,
                std::ptr::null(),
                nix::libc::MS_REC | nix::libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for point in &points {
                let fs = c"tmpfs".as_ptr();
                check(nix::libc::mount(fs, point.as_ptr(), fs, 0, c"size=4k".as_ptr().cast()))?;
            }
        }
        Ok(())
    });
    assert_compiles(&kiln).await;
    let kilns = mount_count(&format!("/proc/{}/mountinfo", kiln.pid()));
    assert!(kilns > EXTRA, "kiln's namespace has the extra mounts: {kilns}");
    // The warm sandboxes prepared after the compile, each a parked thread.
    let sandboxes = wait_for(TEST_LIMIT, || {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", kiln.pid())).ok()?;
        let counts: Vec<usize> = tasks
            .flatten()
            .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("kiln-sandbox-")))
            .map(|t| mount_count(&t.path().join("mountinfo").display().to_string()))
            .collect();
        (!counts.is_empty()).then_some(counts)
    })
    .await
    .expect("a warm sandbox's thread");
    for count in sandboxes {
        assert!(count < 40, "a sandbox's namespace holds {count} mounts, kiln's {kilns}");
    }
    assert_compiles(&kiln).await;
}

fn mount_count(mountinfo: &str) -> usize {
    std::fs::read_to_string(mountinfo).map_or(0, |t| t.lines().count())
}
