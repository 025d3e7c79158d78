//! Which host uid a sandbox's job runs as, and how kiln writes files it will own.
//!
//! A job never runs as host root (bubblewrap started by root with `--unshare-user`
//! maps the job's uid 0 to host uid 0: sysctl files, cgroup files and every
//! root-owned file the kernel checks by uid are then the job's to write). Each
//! sandbox instead gets its own uid and gid from a range no host account uses
//! (`kiln.sandbox.uid_base`, `uid_count`). bubblewrap is started as that uid and maps
//! it to 0 inside the job's user namespace: the job sees itself as root, owns its
//! files, and holds no capability the host honours.

use nix::unistd::{Gid, Uid};

use crate::sandbox::SandboxError;

/// The host uid and gid of one sandbox's job (equal numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobIdentity {
    pub uid: u32,
}

impl JobIdentity {
    pub fn gid(self) -> u32 {
        self.uid
    }
}

/// The range of host ids sandboxes take in turn.
#[derive(Debug, Clone, Copy)]
pub struct IdRange {
    pub base: u32,
    pub count: u32,
}

impl std::fmt::Display for IdRange {
    /// `base..end`, as logs show a range.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.base, u64::from(self.base) + u64::from(self.count))
    }
}

impl IdRange {
    /// The identity of sandbox number `n`. Ids are reused after `count` sandboxes;
    /// far fewer ever exist at once, and a reused id reaches nothing of the earlier
    /// sandbox (its mount namespace is gone and its files sit in 0700 directories).
    pub fn nth(self, n: u64) -> JobIdentity {
        JobIdentity { uid: self.base + (n % u64::from(self.count.max(1))) as u32 }
    }

    /// Host accounts (`/etc/passwd`, `/etc/group`) whose id falls inside the range,
    /// and subordinate ranges (`/etc/subuid`, `/etc/subgid`, handed to rootless
    /// containers) that overlap it: a job would share their ids.
    pub fn clashes(self) -> Vec<String> {
        let (start, end) = (u64::from(self.base), u64::from(self.base) + u64::from(self.count));
        let mut found = Vec::new();
        for file in ["/etc/passwd", "/etc/group"] {
            let Ok(text) = std::fs::read_to_string(file) else { continue };
            for line in text.lines() {
                let mut fields = line.split(':');
                let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else { continue };
                if id.parse::<u64>().is_ok_and(|id| (start..end).contains(&id)) {
                    found.push(format!("{name} ({id}, {file})"));
                }
            }
        }
        for file in ["/etc/subuid", "/etc/subgid"] {
            let Ok(text) = std::fs::read_to_string(file) else { continue };
            for line in text.lines() {
                let mut fields = line.split(':');
                let (Some(name), Some(first), Some(count)) = (fields.next(), fields.next(), fields.next()) else {
                    continue;
                };
                let (Ok(first), Ok(count)) = (first.parse::<u64>(), count.parse::<u64>()) else { continue };
                if first < end && start < first + count {
                    found.push(format!("{name} ({first}..+{count}, {file})"));
                }
            }
        }
        found
    }
}

/// Makes the calling thread create files as `id` while keeping root's access.
///
/// The sandbox thread unpacks the job's inputs and makes its directories; they must
/// belong to the job's uid, or the job (not root on the host) could not write its
/// own working directory. `setfsuid`/`setfsgid` are per thread and decide the owner
/// of new files (overlayfs gives a new file the caller's fsuid too); changing them
/// drops the file-system capabilities from the thread's effective set, so they are
/// raised again from its permitted set: kiln still reaches into root-owned
/// toolchain directories. Only the dedicated sandbox thread calls this, after it
/// started bubblewrap (which must not inherit it), and it ends with its job.
pub(super) fn create_files_as(id: JobIdentity) -> Result<(), SandboxError> {
    let fail = |source| SandboxError::JobOwner { uid: id.uid, source };
    nix::unistd::setfsgid(Gid::from_raw(id.gid()));
    nix::unistd::setfsuid(Uid::from_raw(id.uid));
    // Both calls answer the previous value; asking again with the same value
    // answers the current one, which tells whether the change took.
    if nix::unistd::setfsuid(Uid::from_raw(id.uid)).as_raw() != id.uid
        || nix::unistd::setfsgid(Gid::from_raw(id.gid())).as_raw() != id.gid()
    {
        return Err(fail(nix::errno::Errno::EPERM));
    }
    raise_permitted_capabilities().map_err(fail)
}

/// `capget`/`capset` header and data, version 3 (two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets this thread's effective capabilities to its permitted ones.
fn raise_permitted_capabilities() -> nix::Result<()> {
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with a version-3 header writes exactly two CapData words
    // into `data`, which lives for the call; pid 0 is the calling thread.
    let got = unsafe { nix::libc::syscall(nix::libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    nix::errno::Errno::result(got)?;
    for set in &mut data {
        set.effective = set.permitted;
    }
    // SAFETY: capset(2) reads the same header and two words; raising effective
    // capabilities within the permitted set is always allowed for the calling thread.
    let set = unsafe { nix::libc::syscall(nix::libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    nix::errno::Errno::result(set).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn identities_cycle_through_the_range() {
        let range = IdRange { base: 1_500_000_000, count: 3 };
        let uids: Vec<u32> = (0..4).map(|n| range.nth(n).uid).collect();
        assert_eq!(uids, [1_500_000_000, 1_500_000_001, 1_500_000_002, 1_500_000_000]);
        assert_eq!(range.nth(1).gid(), 1_500_000_001);
    }

    #[test]
    fn a_range_holding_root_clashes() {
        assert!(IdRange { base: 0, count: 1 }.clashes().iter().any(|c| c.starts_with("root ")));
        assert!(IdRange { base: 1_500_000_000, count: 65536 }.clashes().is_empty());
    }

    /// Runs as root (as kiln does): files made after the switch belong to the job,
    /// and the thread still creates them inside a root-only directory.
    #[test]
    fn files_made_after_the_switch_belong_to_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let id = JobIdentity { uid: 1_500_000_123 };
        let made = private.join("made");
        let thread_made = made.clone();
        std::thread::spawn(move || {
            create_files_as(id).unwrap();
            std::fs::create_dir(&thread_made).unwrap();
        })
        .join()
        .unwrap();
        let meta = std::fs::metadata(&made).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (id.uid, id.gid()));
        // The switch stayed on that thread: this one still creates files as root.
        std::fs::create_dir(private.join("root-made")).unwrap();
        assert_eq!(std::fs::metadata(private.join("root-made")).unwrap().uid(), 0);
    }
}
