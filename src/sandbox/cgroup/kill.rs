//! Killing every process of a job cgroup, bounded in time.
//!
//! A job may fork as fast as its pids limit lets it, so a plain "list, then kill"
//! races new children. cgroup v2's `cgroup.kill` (Linux 5.14) kills the whole cgroup
//! in the kernel, new forks included. Without it the cgroup is frozen first
//! (v2 `cgroup.freeze`, v1 freezer hierarchy: Documentation/admin-guide/cgroup-v1/
//! freezer-subsystem.rst), so no process forks or exits while its pid is read and
//! signalled (a pid that exited could have been reused by a host process). Without a
//! freezer, list-and-kill is repeated until the cgroup is empty.

use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::dir::CgroupDir;
use super::CgroupError;

/// How long killing a job's processes may take before `remove` gives up.
pub(super) const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a freeze may take before the processes are killed anyway.
const FREEZE_WAIT: Duration = Duration::from_millis(100);
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The directories of one job cgroup (one per v1 hierarchy, one on v2).
pub(super) struct KillTarget<'a> {
    pub dirs: Vec<&'a CgroupDir>,
    pub v2: bool,
    /// v1 only: the job's cgroup in the freezer hierarchy, when it is mounted.
    pub v1_freezer: Option<&'a CgroupDir>,
}

impl KillTarget<'_> {
    /// Kills every process and waits until none is left, for at most `timeout`.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = self.pids().len();
            if remaining == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                let path = self.dirs.first().map(|d| d.path().to_owned()).unwrap_or_default();
                return Err(CgroupError::Kill { path, remaining, timeout });
            }
            self.kill_pass(true);
            sleep(POLL_INTERVAL);
        }
    }

    /// One pass without waiting for anything (for `Drop`): `cgroup.kill`, or a SIGKILL
    /// to each listed process.
    pub fn kill_once(&self) {
        self.kill_pass(false);
    }

    fn kill_pass(&self, may_freeze: bool) {
        if let [dir] = self.dirs[..] {
            if self.v2 && dir.has("cgroup.kill") {
                if let Err(e) = dir.write("cgroup.kill", "1") {
                    tracing::warn!(error = %crate::report::ErrorChain(&e), "cgroup.kill failed; signalling instead");
                } else {
                    return;
                }
            }
        }
        let frozen = may_freeze && self.freeze();
        for pid in self.pids() {
            match kill(pid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::warn!(%pid, error = %e, "SIGKILL of a job process failed"),
            }
        }
        if frozen {
            // SIGKILLed tasks of a frozen v1 cgroup die once thawed; v2 lets them die frozen.
            self.thaw();
        }
    }

    /// The union of the pids listed in every directory (a process is in all of them
    /// unless it is between two moves).
    fn pids(&self) -> BTreeSet<Pid> {
        let mut pids = BTreeSet::new();
        for dir in &self.dirs {
            match dir.pids() {
                Ok(list) => pids.extend(list),
                Err(e) => tracing::debug!(error = %crate::report::ErrorChain(&e), "listing a job cgroup failed"),
            }
        }
        pids
    }

    /// Freezes the job and waits (briefly) until it is frozen. `false`: no freezer.
    fn freeze(&self) -> bool {
        let (dir, file, value) = match (self.v2, self.v1_freezer, self.dirs.first()) {
            (true, _, Some(dir)) if dir.has("cgroup.freeze") => (*dir, "cgroup.freeze", "1"),
            (false, Some(dir), _) => (dir, "freezer.state", "FROZEN"),
            _ => return false,
        };
        if let Err(e) = dir.write(file, value) {
            tracing::warn!(error = %crate::report::ErrorChain(&e), "freezing a job cgroup failed");
            return false;
        }
        let deadline = Instant::now() + FREEZE_WAIT;
        while Instant::now() < deadline {
            let frozen = if self.v2 {
                dir.keyed("cgroup.events", "frozen") == Some(1)
            } else {
                dir.read("freezer.state").is_ok_and(|s| s.trim() == "FROZEN")
            };
            if frozen {
                break;
            }
            sleep(Duration::from_millis(1));
        }
        true
    }

    fn thaw(&self) {
        let result = match (self.v2, self.v1_freezer, self.dirs.first()) {
            (true, _, Some(dir)) => dir.write("cgroup.freeze", "0"),
            (false, Some(dir), _) => dir.write("freezer.state", "THAWED"),
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %crate::report::ErrorChain(&e), "thawing a job cgroup failed");
        }
    }
}
