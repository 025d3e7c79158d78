//! One host, several kilns: each claims a job uid range no other live kiln uses.
//!
//! Per-uid kernel limits (`RLIMIT_NPROC`, inotify instances and watches, POSIX
//! message queue bytes, keyrings) are shared by every process of a uid, so two
//! kilns whose jobs run as the same uids let one kiln's jobs take the other's
//! budgets, and a job of one could signal or ptrace a job of the other if their
//! namespaces ever met (issue 27, finding 10). Every kiln on a host records the
//! range it uses as a file in [`CLAIMS_DIR`], `flock`ed for the life of the process
//! (the kernel drops the lock even on `kill -9`, so a dead kiln's claim is
//! recognised and removed by the next one). A kiln whose configured range overlaps
//! a live claim takes the next free range `uid_base + k × uid_count` and says so;
//! two kilns with the same config (upstream's server.toml files) then still share
//! a host as they did, without sharing uids.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

use super::identity::IdRange;

/// Where the claims live: on the host's runtime tmpfs, root's alone.
pub const CLAIMS_DIR: &str = "/run/kiln/job-uids";
/// How many ranges past the configured one are tried.
const MAX_SHIFTS: u64 = 1024;

/// Why no job uid range could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("cannot record this kiln's job uid range in {path}: {source}")]
    Registry { path: PathBuf, source: Errno },
    #[error(
        "no free job uid range: the {MAX_SHIFTS} ranges of {count} ids from kiln.sandbox.uid_base {base} on are \
         taken by other kilns or run past 4294967295; set kiln.sandbox.uid_base to a free range"
    )]
    NoneFree { base: u32, count: u32 },
}

/// A job uid range this kiln holds until it exits.
#[derive(Debug)]
pub struct IdClaim {
    pub range: IdRange,
    path: PathBuf,
    _lock: Flock<OwnedFd>,
}

impl Drop for IdClaim {
    /// A clean stop takes its claim back; a killed kiln's is removed by the next.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A live claim of another kiln.
struct Held {
    range: IdRange,
    owner: String,
}

/// Claims `configured`, or the first range after it (in steps of its size) that no
/// live claim in `dir` overlaps; `owner` is written into the claim for the other
/// kilns' messages. Blocking: startup only.
pub fn claim_ids(dir: &Path, configured: IdRange, owner: &str) -> Result<IdClaim, ClaimError> {
    let registry = |source| ClaimError::Registry { path: dir.to_owned(), source };
    let io = |e: std::io::Error| registry(Errno::from_raw(e.raw_os_error().unwrap_or(0)));
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(io)?;
    // Held while the claims are read and one is added: two kilns starting at once
    // never pick the same range.
    let registry_fd = open(&dir.join(".lock"), OFlag::O_CREAT | OFlag::O_RDWR).map_err(registry)?;
    let _registry = lock(registry_fd, true).map_err(|(_, e)| registry(e))?;
    let held = live_claims(dir).map_err(registry)?;
    let count = u64::from(configured.count);
    for shift in 0..MAX_SHIFTS {
        let base = u64::from(configured.base) + shift * count;
        // The config's rule: every id below 4294967295 (the kernel's "no id").
        if base + count >= u64::from(u32::MAX) {
            break;
        }
        let range = IdRange { base: base as u32, count: configured.count };
        if let Some(other) = held.iter().find(|h| overlaps(h.range, range)) {
            tracing::info!(
                other = %other.owner,
                "another kiln uses job uids {}: trying the next range",
                other.range
            );
            continue;
        }
        let path = dir.join(format!("{}-{}", range.base, range.count));
        let mut file = File::from(open(&path, OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY).map_err(registry)?);
        file.write_all(owner.as_bytes()).map_err(io)?;
        let lock = lock(file.into(), false).map_err(|(_, e)| registry(e))?;
        return Ok(IdClaim { range, path, _lock: lock });
    }
    Err(ClaimError::NoneFree { base: configured.base, count: configured.count })
}

fn overlaps(a: IdRange, b: IdRange) -> bool {
    let end = |r: IdRange| u64::from(r.base) + u64::from(r.count);
    u64::from(a.base) < end(b) && u64::from(b.base) < end(a)
}

/// The claims in `dir` whose kiln still holds them; the others are removed.
fn live_claims(dir: &Path) -> Result<Vec<Held>, Errno> {
    let to_errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(0));
    let mut held = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(to_errno)?.take(100_000) {
        let path = entry.map_err(to_errno)?.path();
        let Some(range) = path.file_name().and_then(|n| n.to_str()).and_then(parse_name) else { continue };
        let fd = match open(&path, OFlag::O_RDONLY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        match lock(fd, false) {
            // Nobody holds it: its kiln is gone.
            Ok(stale) => {
                let _ = std::fs::remove_file(&path);
                drop(stale);
            }
            Err((fd, Errno::EWOULDBLOCK)) => {
                let mut owner = String::new();
                let _ = File::from(fd).take(512).read_to_string(&mut owner);
                held.push(Held { range, owner: owner.trim().to_owned() });
            }
            Err((_, e)) => return Err(e),
        }
    }
    Ok(held)
}

/// `<base>-<count>`, as claims are named.
fn parse_name(name: &str) -> Option<IdRange> {
    let (base, count) = name.split_once('-')?;
    Some(IdRange { base: base.parse().ok()?, count: count.parse().ok()? })
}

/// Opens a claim or the registry lock: never through a symlink, closed on exec.
fn open(path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(path, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::from_bits_truncate(0o644))
}

/// An exclusive `flock`, waiting for it when `wait`; the fd comes back on failure.
fn lock(fd: OwnedFd, wait: bool) -> Result<Flock<OwnedFd>, (OwnedFd, Errno)> {
    Flock::lock(fd, if wait { FlockArg::LockExclusive } else { FlockArg::LockExclusiveNonblock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_kiln_takes_the_next_free_range_and_a_dead_ones_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let configured = IdRange { base: 2_000_000_000, count: 1000 };
        let first = claim_ids(dir.path(), configured, "kiln A").unwrap();
        assert_eq!(first.range.base, 2_000_000_000);
        // Same process, another open file: the first claim's lock is held.
        let second = claim_ids(dir.path(), configured, "kiln B").unwrap();
        assert_eq!(second.range.base, 2_000_001_000);
        // An overlapping, differently sized range skips past both.
        let third = claim_ids(dir.path(), IdRange { base: 2_000_000_500, count: 1000 }, "kiln C").unwrap();
        assert_eq!(third.range.base, 2_000_002_500);
        drop(first);
        let again = claim_ids(dir.path(), configured, "kiln D").unwrap();
        assert_eq!(again.range.base, 2_000_000_000, "a released range is free again");
    }

    #[test]
    fn a_range_running_past_the_last_uid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let configured = IdRange { base: u32::MAX - 10, count: 5 };
        let _held = claim_ids(dir.path(), configured, "kiln A").unwrap();
        assert!(matches!(claim_ids(dir.path(), configured, "kiln B"), Err(ClaimError::NoneFree { .. })));
    }
}
