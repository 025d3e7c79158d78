//! The small mount namespace every overlay sandbox starts from.
//!
//! `unshare(CLONE_NEWNS)` copies the caller's whole mount table, and bubblewrap
//! copies the copy, makes every mount in it a slave and detaches them all after
//! its `pivot_root`: work per host mount, per sandbox. On a host with 1,000
//! mounts (a Kubernetes node, a docker host) preparing a sandbox took 4–6× as
//! long as with 22 (`benches/toolchain.rs`, issue 24). So kiln makes, once, a
//! mount namespace that keeps only the mounts a sandbox's set-up reaches: `/`,
//! `/proc`, `/dev`, and the mounts under which bubblewrap, its libraries, the exec
//! shim, the toolchain roots and the sandboxes' directories are. Each sandbox
//! thread enters it before it unshares a namespace of its own, and copies a
//! dozen mounts instead of the host's. Paths stay what they are on the host.
//!
//! Everything else is unmounted in the template only (it is private: nothing
//! propagates to the host or from it). That includes what container runtimes
//! mount over entries of `/proc` (see [`reveal_proc`](super::namespace::reveal_proc)).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;

use crate::sandbox::SandboxError;

/// What a sandbox's set-up reaches besides the paths kiln passes: the kernel's
/// interfaces bubblewrap mounts or binds from, and the system directories its
/// binary, its loader and its libraries live in.
const SYSTEM_PATHS: [&str; 9] = ["/proc", "/dev", "/tmp", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64"];

/// A mount namespace holding only the mounts sandboxes need; kept alive by its fd.
#[derive(Debug)]
pub struct MountTemplate {
    ns: OwnedFd,
    /// Mounts left in it, for the log.
    pub kept: usize,
    /// Mounts of kiln's namespace left out.
    pub left_out: usize,
}

impl MountTemplate {
    /// Makes the template on a thread of its own (which ends after), keeping the
    /// mounts that `paths` and [`SYSTEM_PATHS`] are on. Blocking: call it from a
    /// blocking thread. Unmounts that fail (a mount a container runtime locked)
    /// leave the mount in; a namespace that cannot be made, or entered, is an
    /// error. Nothing mounted inside kiln's directories needs keeping: kiln's
    /// start detaches whatever is there (the cleaner's sweep).
    pub fn make(paths: &[PathBuf]) -> Result<MountTemplate, SandboxError> {
        let mut needed: Vec<PathBuf> = SYSTEM_PATHS.iter().map(PathBuf::from).collect();
        needed.extend(paths.iter().cloned());
        // Mount points are where symlinks lead: /lib is /usr/lib on most hosts.
        let needed: Vec<PathBuf> = needed.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
        let template = on_a_thread(move || make_here(&needed))?;
        // Entering needs CAP_SYS_CHROOT besides CAP_SYS_ADMIN (setns(2)), which a
        // container given only the latter lacks: find out now, not per sandbox.
        let entered = on_a_thread(|| {
            template.join().map_err(|e| SandboxError::MountTemplate {
                step: "entering it (setns needs CAP_SYS_CHROOT)",
                source: e.into(),
            })
        });
        entered.map(|()| template)
    }

    /// Moves the calling thread into the template, which it must then unshare a
    /// namespace of its own from (a sandbox never mounts in the template itself).
    /// The thread must serve nothing else: its file-system attributes become its
    /// own (`CLONE_FS`), and its root and working directory the template's `/`.
    pub fn enter(&self) -> Result<(), SandboxError> {
        self.join().map_err(SandboxError::Namespace)
    }

    fn join(&self) -> nix::Result<()> {
        // setns(CLONE_NEWNS) refuses a thread that shares its root and cwd.
        unshare(CloneFlags::CLONE_FS)?;
        setns(self.ns.as_fd(), CloneFlags::CLONE_NEWNS)
    }
}

/// Runs `f` on a thread of its own: a thread that changes namespaces must serve
/// nothing else.
fn on_a_thread<T: Send>(f: impl FnOnce() -> Result<T, SandboxError> + Send) -> Result<T, SandboxError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("kiln-mount-template".into())
            .spawn_scoped(scope, f)
            .map_err(SandboxError::Thread)?
            .join()
            .map_err(|_| SandboxError::ThreadGone)?
    })
}

fn make_here(needed: &[PathBuf]) -> Result<MountTemplate, SandboxError> {
    let failed = |step| move |e: nix::Error| SandboxError::MountTemplate { step, source: e.into() };
    unshare(CloneFlags::CLONE_NEWNS).map_err(failed("unshare(CLONE_NEWNS)"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(failed("making / private"))?;
    let mountinfo = std::fs::read_to_string("/proc/thread-self/mountinfo")
        .map_err(|source| SandboxError::MountTemplate { step: "reading the mount table", source })?;
    let mut points: Vec<PathBuf> = crate::sandbox::cgroup::mount_points(&mountinfo).collect();
    let (mut kept, mut left_out) = (0, 0);
    // Deepest first, so a mount inside another goes before it.
    points.sort_by_key(|at| std::cmp::Reverse(at.components().count()));
    for at in points {
        if is_needed(&at, needed) {
            kept += 1;
            continue;
        }
        match umount2(&at, MntFlags::MNT_DETACH) {
            Ok(()) => left_out += 1,
            Err(e) => {
                kept += 1;
                tracing::debug!(path = %at.display(), error = %e, "a mount stays in the sandboxes' template");
            }
        }
    }
    let ns = nix::fcntl::open("/proc/thread-self/ns/mnt", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(failed("opening the namespace"))?;
    Ok(MountTemplate { ns, kept, left_out })
}

/// A mount is needed when a needed path is on it: its mount point is that path or
/// one of the path's ancestors.
fn is_needed(mount_point: &Path, needed: &[PathBuf]) -> bool {
    needed.iter().any(|path| path.starts_with(mount_point))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_is_kept_when_a_needed_path_is_on_it() {
        let needed = [PathBuf::from("/usr"), PathBuf::from("/var/lib/kiln/build"), PathBuf::from("/proc")];
        for kept in ["/", "/usr", "/var", "/var/lib/kiln", "/var/lib/kiln/build", "/proc"] {
            assert!(is_needed(Path::new(kept), &needed), "{kept}");
        }
        for gone in ["/proc/kcore", "/proc/sys", "/var/lib/kubelet/pods/x", "/usr2", "/var/lib/kiln/build/sandboxes/1"]
        {
            assert!(!is_needed(Path::new(gone), &needed), "{gone}");
        }
    }
}
