//! Cleaner: removes what sandboxes leave behind, off the request path, and at
//! startup whatever a crashed previous run left in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::ffi::OsStrExt;

use crate::sandbox::Leftovers;
use crate::stats::Stats;

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

    fn handle(&mut self, msg: CleanLeftovers, _: &mut Context<Self>) {
        let (stats, observer) = (self.stats.clone(), self.observer.clone());
        let dir = match msg.0 {
            Leftovers::Dir(dir) => dir,
            Leftovers::Container(used) => {
                // Async Engine API calls only: a task on this arbiter, no thread.
                actix::spawn(async move {
                    match used.recycle().await {
                        Ok(_) => Stats::bump(&stats.sandboxes_cleaned),
                        Err(e) => {
                            Stats::bump(&stats.cleanup_failures);
                            tracing::warn!(error = %crate::report::ErrorChain(&e), "resetting a container failed; it was removed");
                        }
                    }
                });
                return;
            }
        };
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                Stats::bump(&stats.sandboxes_cleaned);
                if let Some(observer) = observer {
                    observer.cleanup_took(started.elapsed());
                }
            }
            Err(e) => {
                Stats::bump(&stats.cleanup_failures);
                tracing::warn!(?dir, error = %e, "removing a sandbox directory failed");
            }
        });
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

    fn handle(&mut self, msg: SweepStale, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || sweep(&msg)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
        })
    }
}

fn sweep(msg: &SweepStale) -> std::io::Result<SweepReport> {
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
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for mount_point in mounts {
        match umount2(&mount_point, MntFlags::MNT_DETACH) {
            Ok(()) => report.unmounted += 1,
            Err(e) => tracing::warn!(?mount_point, error = %e, "detaching a stale mount failed"),
        }
    }
    for dir in per_run_dirs {
        if dir.exists() {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                match removed {
                    Ok(()) => report.removed += 1,
                    Err(e) => tracing::warn!(?path, error = %e, "removing a stale entry failed"),
                }
            }
        }
        std::fs::create_dir_all(dir)?;
    }
    Ok(report)
}

/// Processes that bind a directory below `dir` (`--bind <dir>/<n>/merged /`): the
/// bubblewrap processes of kiln's sandboxes, and nothing an operator runs there.
fn processes_mentioning(dir: &Path) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut prefix = dir.as_os_str().as_bytes().to_vec();
    prefix.push(b'/');
    let binds_below = |cmdline: Vec<u8>| {
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        args.windows(2).any(|pair| pair[0] == b"--bind" && pair[1].starts_with(&prefix))
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<i32>().ok()?, e.path())))
        .filter(|(pid, path)| {
            *pid != std::process::id() as i32 && std::fs::read(path.join("cmdline")).is_ok_and(binds_below)
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
}
