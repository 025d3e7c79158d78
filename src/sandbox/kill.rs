//! Killing a sandbox's process from another thread without racing its reaping.

use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, Default)]
struct KillState {
    /// Set while the process exists and has not been reaped, so the pid cannot
    /// have been reused by another process.
    pid: Option<Pid>,
    cancelled: bool,
}

/// Shared between the thread that owns a child process and whoever may need to
/// stop it (a timeout, a dropped request).
#[derive(Debug, Clone, Default)]
pub(crate) struct KillHandle(Arc<Mutex<KillState>>);

impl KillHandle {
    fn state(&self) -> MutexGuard<'_, KillState> {
        // A poisoned lock only means a panic elsewhere; the state is still valid.
        crate::sync::lock(&self.0)
    }

    /// Kills the process if it runs, and stops one from being started.
    pub fn kill(&self) {
        let mut state = self.state();
        state.cancelled = true;
        if let Some(pid) = state.pid {
            kill_with_children(pid);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.state().cancelled
    }

    /// Records a started process; kills it at once if a kill came first.
    pub fn started(&self, pid: Pid) {
        let mut state = self.state();
        state.pid = Some(pid);
        if state.cancelled {
            kill_with_children(pid);
        }
    }

    /// Call after the process exited (`WNOWAIT`) and before reaping it.
    pub fn exited(&self) {
        self.state().pid = None;
    }
}

/// Kills the job if the future that waits for it is dropped early.
pub(crate) struct KillOnDrop(pub Option<KillHandle>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.kill();
        }
    }
}

/// SIGKILLs `pid` and its children.
///
/// bubblewrap's sandboxed child (pid 1 of the job's pid namespace: killing it ends
/// every process of the job) only arms its own parent-death signal some time after
/// it is cloned; a job cancelled right after it started would outlive a kill of
/// bubblewrap alone. `pid` is stopped first so it cannot clone while its children
/// are listed. Reading `/proc/<pid>/task/<pid>/children` is an in-memory procfs read.
fn kill_with_children(pid: Pid) {
    let _ = kill(pid, Signal::SIGSTOP);
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    let _ = kill(pid, Signal::SIGKILL);
}
