use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

/// Why the job cgroups could not be set up, made, read or removed.
///
/// Each message names the path concerned and what is missing; the cause (an errno)
/// is the `source()`, so a log line shows both through `report::ErrorChain`.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("the cgroup limits are invalid: {0}")]
    BadLimits(&'static str),
    #[error("reading {} failed", path.display())]
    ReadProc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {}: line {line:?}", path.display())]
    ProcLine { path: PathBuf, line: String },
    #[error("the {controller} controller is not mounted (no cgroup v1 hierarchy in /proc/self/mountinfo lists it)")]
    NotMounted { controller: &'static str },
    #[error("kiln's own {controller} cgroup is not listed in /proc/self/cgroup")]
    NotListed { controller: &'static str },
    #[error("kiln's cgroup path {path:?} is refused: {reason}")]
    OwnPath { path: String, reason: &'static str },
    #[error("kiln's cgroup {own:?} is outside the part of its hierarchy mounted at {} (mount root {root:?})", mount.display())]
    OutsideMount { own: String, mount: PathBuf, root: String },
    #[error("{} is not a cgroup file system of the expected version", path.display())]
    NotCgroupFs { path: PathBuf },
    #[error(
        "the {controller} controller is not available in {} \
         (enable it in the parent's cgroup.subtree_control: is the cgroup delegated? Delegate=yes)",
        path.display()
    )]
    ControllerUnavailable { controller: &'static str, path: PathBuf },
    #[error("cannot open {}{}", path.display(), hint(source))]
    Open {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot create {}{}", path.display(), hint(source))]
    Create {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot write {value:?} to {}{}", path.display(), hint(source))]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: Errno,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("another kiln held the lock on {} for longer than {timeout:?}", path.display())]
    LockTimeout { path: PathBuf, timeout: Duration },
    #[error("processes still in {} after killing them for {timeout:?}: {remaining}", path.display())]
    Kill { path: PathBuf, remaining: usize, timeout: Duration },
    #[error("cannot remove {}{}", path.display(), hint(source))]
    Remove {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("a job cgroup's name must be 1-64 characters of [A-Za-z0-9_.-], not . or ..: {0:?}")]
    BadName(String),
}

/// What an errno most likely means in cgroupfs, said where it fails.
fn hint(errno: &Errno) -> &'static str {
    match errno {
        Errno::EACCES | Errno::EPERM | Errno::EROFS => " (is the cgroup delegated to kiln? Delegate=yes)",
        // cgroup v2's no-internal-processes rule (cgroups(7)).
        Errno::EBUSY => " (busy: processes in a cgroup whose subtree_control enables controllers, or still running)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ErrorChain;

    #[test]
    fn permission_errors_point_at_delegation() {
        let e = CgroupError::Create { path: "/sys/fs/cgroup/pids/kiln-jobs".into(), source: Errno::EACCES };
        assert_eq!(
            ErrorChain(&e).to_string(),
            "cannot create /sys/fs/cgroup/pids/kiln-jobs (is the cgroup delegated to kiln? Delegate=yes): \
             EACCES: Permission denied"
        );
        let e = CgroupError::Remove { path: "/x".into(), source: Errno::ENOTEMPTY };
        assert_eq!(ErrorChain(&e).to_string(), "cannot remove /x: ENOTEMPTY: Directory not empty");
    }
}
