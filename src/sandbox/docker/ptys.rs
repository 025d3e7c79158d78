//! Each container's `/dev/pts`: a devpts instance of its own, with at most
//! [`MAX_PTYS`] pseudo-terminals (issue 27, finding 8).
//!
//! Docker mounts a new devpts instance in every container, but with no `max=`,
//! and every instance draws on the one host-wide `kernel.pty.max` (4,096): a job
//! that opened ptys until it failed left no other container on the host one. The
//! Engine API cannot mount devpts, so kiln mounts the instance on the host, under
//! `/run/kiln/pts/<owner>/`, binds it over the container's `/dev/pts` (runc makes
//! `/dev/ptmx` a link to `pts/ptmx`, so every pty the container opens is the
//! instance's), and unmounts it when the container is removed; a start sweeps
//! what a previous run left. The same bound as the overlay backend's
//! (`namespace::MAX_PTYS`).
//!
//! Mounting is a few system calls with no I/O, but kiln runs them on the blocking
//! pool all the same (the callers are async).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub use crate::sandbox::overlay::MAX_PTYS;

/// Where the instances of the kiln whose docker owner label is `owner` live.
fn dir_of(owner: &str) -> PathBuf {
    Path::new("/run/kiln/pts").join(owner)
}

/// The devpts instances of one kiln's containers.
#[derive(Debug)]
pub struct PtyInstances {
    dir: PathBuf,
    next: AtomicU64,
}

impl PtyInstances {
    pub fn new(owner: &str) -> PtyInstances {
        PtyInstances { dir: dir_of(owner), next: AtomicU64::new(0) }
    }

    /// Mounts a new instance and returns where (blocking).
    pub fn mount(&self) -> std::io::Result<PathBuf> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let at = self.dir.join(format!("{}-{n}", std::process::id()));
        std::fs::create_dir_all(&at)?;
        // gid=5 (tty) and mode=0620 as docker mounts it; ptmxmode=0666 so the job
        // user can open /dev/ptmx.
        let options = format!("newinstance,ptmxmode=0666,mode=0620,gid=5,max={MAX_PTYS}");
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        if let Err(e) = mount(Some("kiln-pts"), &at, Some("devpts"), flags, Some(options.as_str())) {
            let _ = std::fs::remove_dir(&at);
            return Err(e.into());
        }
        Ok(at)
    }

    /// Unmounts an instance (blocking); what its container held goes with it.
    pub fn unmount(at: &Path) {
        if let Err(e) = umount2(at, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %at.display(), error = %e, "unmounting a container's devpts failed");
        }
        let _ = std::fs::remove_dir(at);
    }

    /// Unmounts every instance of this kiln's, a previous run's included (blocking).
    pub fn sweep(&self) -> usize {
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return 0 };
        let mine: Vec<PathBuf> = crate::sandbox::cgroup::mount_points(&mountinfo)
            .filter(|at| at.parent() == Some(self.dir.as_path()))
            .collect();
        for at in &mine {
            PtyInstances::unmount(at);
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        mine.len()
    }
}
