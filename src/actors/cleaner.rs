//! Cleaner: removes what sandboxes leave behind, off the request path, and at
//! startup whatever a crashed previous run left in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::ffi::OsStrExt;

use crate::archive::{remove_tree, RemoveError};
use crate::report::ErrorChain;
use crate::sandbox::Leftovers;
use crate::stats::Stats;

/// How long one pass at removing a tree may take. A job can leave a tree of any
/// shape (16,000 levels, millions of entries); removal runs on the blocking pool,
/// one pass at a time per tree. A pass that runs out of time is followed by another
/// (after [`RETRY_AFTER`]) while the tree shrinks, so the space always comes back;
/// ordinary leftovers take well under a second. A minute is millions of unlinks,
/// but can be as few as ~15,000 rmdirs (ext4 with `discard` on a VM disk: ~4 ms each).
const PASS_TIME_LIMIT: Duration = Duration::from_secs(60);
/// Pause between two passes at the same tree.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Passes at one tree before it is left for the next start's sweep (a day's worth
/// of work at most; only a tree that cannot be removed at all gets there).
const MAX_PASSES: u32 = 1440;

/// Prefix of an entry the startup sweep moves aside before removing it in the
/// background: the name it had (a sandbox number, an upload's name) is free at once,
/// so a new sandbox never finds a previous job's files in its directory, and a
/// start never waits for a tree a job left.
const STALE_PREFIX: &str = ".stale-";

pub struct Cleaner {
    stats: Arc<Stats>,
    /// Told how long each cleanup took (the jobs' `cleanup` phase).
    observer: Option<Arc<crate::observe::Observer>>,
}

impl Cleaner {
    pub fn new(stats: Arc<Stats>) -> Self {
        Cleaner { stats, observer: None }
    }

    pub fn observed_by(mut self, observer: Arc<crate::observe::Observer>) -> Self {
        self.observer = Some(observer);
        self
    }
}

impl Actor for Cleaner {
    type Context = Context<Self>;
}

/// Remove a used or discarded sandbox's leftovers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CleanLeftovers(pub Leftovers);

impl Handler<CleanLeftovers> for Cleaner {
    type Result = ();

    fn handle(&mut self, msg: CleanLeftovers, ctx: &mut Context<Self>) {
        let stats = self.stats.clone();
        let dir = match msg.0 {
            Leftovers::Dir(dir) => dir,
            Leftovers::CleansItself(leftovers) => {
                // Async calls only: a task on this arbiter, no thread.
                actix::spawn(async move {
                    match leftovers.clean().await {
                        Ok(()) => Stats::bump(&stats.sandboxes_cleaned),
                        Err(e) => {
                            Stats::bump(&stats.cleanup_failures);
                            tracing::warn!(error = %crate::report::ErrorChain(&e), "cleaning a used sandbox failed");
                        }
                    }
                });
                return;
            }
        };
        ctx.notify(RemoveTree { path: dir, started: Instant::now(), sandbox: true, pass: 1 });
    }
}

/// One bounded pass at removing a tree (a sandbox's dir, or a stale entry moved
/// aside at startup); sent again while the tree is not gone.
#[derive(Message)]
#[rtype(result = "()")]
struct RemoveTree {
    path: PathBuf,
    started: Instant,
    /// A used sandbox's dir (counted and timed as its job's cleanup), not a stale entry.
    sandbox: bool,
    pass: u32,
}

impl Handler<RemoveTree> for Cleaner {
    type Result = ();

    fn handle(&mut self, msg: RemoveTree, ctx: &mut Context<Self>) {
        let path = msg.path.clone();
        let pass = tokio::task::spawn_blocking(move || remove_tree(&path, Instant::now() + PASS_TIME_LIMIT));
        ctx.spawn(actix::fut::wrap_future(pass).map(move |result, cleaner: &mut Cleaner, ctx| {
            let error = match result {
                Ok(Ok(())) => {
                    if msg.sandbox {
                        Stats::bump(&cleaner.stats.sandboxes_cleaned);
                        if let Some(observer) = &cleaner.observer {
                            observer.cleanup_took(msg.started.elapsed());
                        }
                    }
                    return;
                }
                Ok(Err(RemoveError::TimedOut { .. })) if msg.pass < MAX_PASSES => {
                    tracing::info!(path = ?msg.path, pass = msg.pass, "a large tree is still being removed");
                    ctx.notify_later(RemoveTree { pass: msg.pass + 1, ..msg }, RETRY_AFTER);
                    return;
                }
                Ok(Err(e)) => ErrorChain(&e).to_string(),
                Err(e) => e.to_string(),
            };
            Stats::bump(&cleaner.stats.cleanup_failures);
            tracing::warn!(path = ?msg.path, passes = msg.pass, %error, "removing a directory failed; the next start retries it");
        }));
    }
}

/// Startup: kill sandbox processes a previous run left, detach any mount below
/// `data_dir` and empty the directories that only hold per-run state. Answers with
/// what was removed.
#[derive(Message)]
#[rtype(result = "std::io::Result<SweepReport>")]
pub struct SweepStale {
    pub data_dir: PathBuf,
    pub sandboxes_dir: PathBuf,
    pub per_run_dirs: Vec<PathBuf>,
}

#[derive(Debug, Default)]
pub struct SweepReport {
    pub killed: usize,
    pub unmounted: usize,
    pub removed: usize,
}

impl Handler<SweepStale> for Cleaner {
    type Result = ResponseFuture<std::io::Result<SweepReport>>;

    fn handle(&mut self, msg: SweepStale, ctx: &mut Context<Self>) -> Self::Result {
        let me = ctx.address();
        Box::pin(async move {
            let (report, stale) = tokio::task::spawn_blocking(move || sweep(&msg))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
            for path in stale {
                me.do_send(RemoveTree { path, started: Instant::now(), sandbox: false, pass: 1 });
            }
            Ok(report)
        })
    }
}

/// Kills, unmounts and moves aside; answers the report and the entries moved aside,
/// which the Cleaner then removes in the background.
fn sweep(msg: &SweepStale) -> std::io::Result<(SweepReport, Vec<PathBuf>)> {
    let SweepStale { data_dir, sandboxes_dir, per_run_dirs } = msg;
    let mut report = SweepReport::default();
    // Sandboxes die with the kiln that started them (parent-death signals), but a
    // job started in the instant kiln died could have missed it.
    for pid in processes_mentioning(sandboxes_dir) {
        if kill(pid, Signal::SIGKILL).is_ok() {
            tracing::warn!(%pid, "killed a sandbox process left by the previous run");
            report.killed += 1;
        }
    }
    // kiln's own sandboxes never mount in this namespace; anything here was left by
    // something else (an older version, a hand-made mount) and would pin the dirs.
    let mut mounts = mounts_below(data_dir)?;
    // The data dir itself may be a mount point of the host's (a disk of its own) or
    // of the service manager's (systemd binds it for ReadWritePaths= under
    // ProtectSystem=strict): detaching it would leave kiln writing to whatever is
    // beneath, or to a read-only view.
    mounts.retain(|mount_point| mount_point != data_dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for mount_point in mounts {
        match umount2(&mount_point, MntFlags::MNT_DETACH) {
            Ok(()) => report.unmounted += 1,
            Err(e) => tracing::warn!(?mount_point, error = %e, "detaching a stale mount failed"),
        }
    }
    let mut stale = Vec::new();
    for dir in per_run_dirs {
        // Private like the data dir (see `server::make_private`).
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            match move_aside(dir, &name) {
                Ok(path) => stale.push(path),
                // Not renamed: removed here, or kiln would reuse the name.
                Err(e) => {
                    tracing::warn!(path = ?dir.join(&name), error = %e, "moving a stale entry aside failed; removing it now");
                    remove_tree(&dir.join(&name), Instant::now() + PASS_TIME_LIMIT)
                        .map_err(|e| std::io::Error::other(ErrorChain(&e).to_string()))?;
                }
            }
            report.removed += 1;
        }
    }
    Ok((report, stale))
}

/// Renames `name` in `dir` to a [`STALE_PREFIX`] name (unless it has one) and
/// answers its path.
fn move_aside(dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<PathBuf> {
    if name.as_bytes().starts_with(STALE_PREFIX.as_bytes()) {
        return Ok(dir.join(name));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut aside = std::ffi::OsString::from(format!("{STALE_PREFIX}{nanos}-"));
    aside.push(name);
    let to = dir.join(aside);
    std::fs::rename(dir.join(name), &to)?;
    Ok(to)
}

/// Processes whose mount table holds one of kiln's sandbox overlays (its
/// `upperdir` below `dir`): the bubblewrap processes of kiln's sandboxes and the
/// jobs in them, and nothing an operator runs there. Public for the tests.
pub fn processes_mentioning(dir: &Path) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut needle = b"upperdir=".to_vec();
    needle.extend_from_slice(dir.as_os_str().as_bytes());
    needle.push(b'/');
    let mounts_below = |mountinfo: Vec<u8>| mountinfo.windows(needle.len()).any(|w| w == needle.as_slice());
    entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<i32>().ok()?, e.path())))
        .filter(|(pid, path)| {
            *pid != std::process::id() as i32 && std::fs::read(path.join("mountinfo")).is_ok_and(mounts_below)
        })
        .map(|(pid, _)| Pid::from_raw(pid))
        .collect()
}

/// Mount points at or below `dir`, from this process's mount table.
pub fn mounts_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let digit = |k: usize| u32::from(bytes[i + k] - b'0');
            out.push((digit(1) * 64 + digit(2) * 8 + digit(3)) as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_octal_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
    }

    const SWEEP_CHILD_DIR: &str = "KILN_SWEEP_CHILD_DIR";

    /// The startup sweep detaches a mount left below the data dir, and keeps the
    /// data dir's own (a disk of its own, or systemd's ReadWritePaths= bind under
    /// ProtectSystem=strict, where detaching it made the data dir read-only and kiln
    /// refuse to start). Runs as root, in a copy of this test binary started by
    /// `unshare -m` so its mounts stay in a namespace of its own.
    #[test]
    fn sweep_keeps_the_data_dirs_own_mount() {
        use nix::mount::{mount, MsFlags};
        if let Some(dir) = std::env::var_os(SWEEP_CHILD_DIR).map(PathBuf::from) {
            let data_dir = dir.join("data");
            let tmpfs = |at: &Path| mount(Some("tmpfs"), at, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
            tmpfs(&data_dir);
            let leftover = data_dir.join("sandboxes/left");
            std::fs::create_dir_all(&leftover).unwrap();
            tmpfs(&leftover);
            let msg = SweepStale {
                data_dir: data_dir.clone(),
                sandboxes_dir: data_dir.join("sandboxes"),
                per_run_dirs: vec![data_dir.join("roots")],
            };
            let (report, _) = sweep(&msg).unwrap();
            assert_eq!(report.unmounted, 1);
            assert_eq!(mounts_below(&data_dir).unwrap(), vec![data_dir.clone()]);
            assert!(data_dir.join("roots").is_dir(), "the per-run dir was made on the data dir's mount");
            return;
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("data")).unwrap();
        let test = format!("{}::sweep_keeps_the_data_dirs_own_mount", module_path!().split_once("::").unwrap().1);
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private"])
            .arg(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(SWEEP_CHILD_DIR, tmp.path())
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && stdout.contains("1 passed"), "child failed:\n{stdout}\n{stderr}");
        assert!(mounts_below(tmp.path()).unwrap().is_empty(), "a mount leaked into the test's namespace");
    }
}
