//! A cgroup directory held open, and the file operations on it.
//!
//! Every path below a mount point is walked one component at a time with
//! `O_NOFOLLOW` and every file is opened relative to its directory's fd, so nothing
//! kiln builds from `/proc` data can be redirected by a symlink, and a directory
//! renamed or replaced after it was opened is not confused with another one.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, Flock, FlockArg, OFlag, AT_FDCWD};
use nix::sys::stat::{fstatat, mkdirat, Mode};
use nix::sys::statfs::{fstatfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
use nix::unistd::{unlinkat, Pid, UnlinkatFlags};

use super::CgroupError;

/// How often a busy cgroup directory is tried again before its removal fails: a
/// cgroup whose last process just died can stay "populated" for a moment.
const RMDIR_ATTEMPTS: u32 = 100;
const RMDIR_RETRY_DELAY: Duration = Duration::from_millis(10);

/// How often the lock on a shared directory is tried while another kiln holds it
/// (it only holds it while sweeping stale cgroups, which is bounded in time).
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
const LOCK_RETRY_DELAY: Duration = Duration::from_millis(20);

/// An open cgroup directory and its path, for messages.
#[derive(Debug)]
pub(super) struct CgroupDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl CgroupDir {
    /// Opens `relative` (plain components, see `procfs::relative_own_path`) under
    /// `mount`, a mount point of a cgroup (`v2 == false`) or cgroup2 file system.
    pub fn open(mount: &Path, relative: &Path, v2: bool) -> Result<CgroupDir, CgroupError> {
        let fd = openat(AT_FDCWD, mount, dir_flags(), Mode::empty())
            .map_err(|source| CgroupError::Open { path: mount.to_owned(), source })?;
        let magic = if v2 { CGROUP2_SUPER_MAGIC } else { CGROUP_SUPER_MAGIC };
        match fstatfs(&fd) {
            Ok(stat) if stat.filesystem_type() == magic => {}
            Ok(_) => return Err(CgroupError::NotCgroupFs { path: mount.to_owned() }),
            Err(source) => return Err(CgroupError::Open { path: mount.to_owned(), source }),
        }
        let mut dir = CgroupDir { fd, path: mount.to_owned() };
        for component in relative.iter() {
            dir = dir.child(Path::new(component))?;
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The existing child cgroup `name` (one plain component).
    pub fn child(&self, name: &Path) -> Result<CgroupDir, CgroupError> {
        let path = self.path.join(name);
        let fd = openat(&self.fd, name, dir_flags(), Mode::empty())
            .map_err(|source| CgroupError::Open { path: path.clone(), source })?;
        Ok(CgroupDir { fd, path })
    }

    /// Makes the child cgroup `name` unless it exists, and opens it.
    pub fn make_child(&self, name: &str) -> Result<CgroupDir, CgroupError> {
        match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => self.child(Path::new(name)),
            Err(source) => Err(CgroupError::Create { path: self.path.join(name), source }),
        }
    }

    /// Makes the child cgroup `name`, which must not exist yet.
    pub fn make_new_child(&self, name: &str) -> Result<CgroupDir, CgroupError> {
        mkdirat(&self.fd, name, Mode::from_bits_truncate(0o755))
            .map_err(|source| CgroupError::Create { path: self.path.join(name), source })?;
        self.child(Path::new(name))
    }

    /// The names of the child cgroups.
    pub fn children(&self) -> Result<Vec<String>, CgroupError> {
        let read_err = |source| CgroupError::Read { path: self.path.clone(), source };
        let mut dir = Dir::openat(&self.fd, ".", dir_flags(), Mode::empty()).map_err(read_err)?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(read_err)?;
            let is_dir = matches!(entry.file_type(), Some(nix::dir::Type::Directory));
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_dir && name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Removes the empty child cgroup `name`, trying again while it is busy.
    /// A child that is already gone counts as removed.
    pub fn remove_child(&self, name: &str) -> Result<(), CgroupError> {
        let mut attempt = 1;
        loop {
            match unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => return Ok(()),
                Err(Errno::EBUSY) if attempt < RMDIR_ATTEMPTS => {
                    attempt += 1;
                    sleep(RMDIR_RETRY_DELAY);
                }
                Err(source) => return Err(CgroupError::Remove { path: self.path.join(name), source }),
            }
        }
    }

    /// One attempt at [`remove_child`](Self::remove_child), for `Drop`.
    pub fn try_remove_child(&self, name: &str) -> Result<(), Errno> {
        match unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn has(&self, file: &str) -> bool {
        fstatat(&self.fd, file, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    }

    fn open_file(&self, file: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
        openat(&self.fd, file, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
    }

    pub fn read(&self, file: &str) -> Result<String, CgroupError> {
        let read_err = |source| CgroupError::Read { path: self.path.join(file), source };
        let fd = self.open_file(file, OFlag::O_RDONLY).map_err(read_err)?;
        let mut text = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut text)
            .map_err(|e| read_err(Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32))))?;
        Ok(text)
    }

    /// The value of `key` in a flat-keyed file (`memory.events`, `pids.events`,
    /// `memory.oom_control`: one `key value` a line); `None` if the file or key is absent.
    pub fn keyed(&self, file: &str, key: &str) -> Option<u64> {
        flat_keyed(&self.read(file).ok()?, key)
    }

    /// Writes `value` in one write(2): cgroupfs takes a value per write call.
    pub fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let write_err = |source| CgroupError::Write { path: self.path.join(file), value: value.to_owned(), source };
        let fd = self.open_file(file, OFlag::O_WRONLY).map_err(write_err)?;
        match nix::unistd::write(&fd, value.as_bytes()) {
            Ok(n) if n == value.len() => Ok(()),
            Ok(_) => Err(write_err(Errno::EIO)),
            Err(source) => Err(write_err(source)),
        }
    }

    /// `cgroup.procs` opened for writing, to move a process in with `write("0")`.
    pub fn open_procs_for_write(&self) -> Result<OwnedFd, CgroupError> {
        self.open_file("cgroup.procs", OFlag::O_WRONLY)
            .map_err(|source| CgroupError::Open { path: self.path.join("cgroup.procs"), source })
    }

    /// The processes in this cgroup (not its children), as seen from kiln's pid namespace.
    pub fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        Ok(self.read("cgroup.procs")?.split_whitespace().filter_map(|p| p.parse().ok()).map(Pid::from_raw).collect())
    }

    /// An exclusive lock on this directory (flock(2) on a new open file description),
    /// held until the returned fd is dropped or the process dies. `None`: someone holds it.
    pub fn try_lock(&self) -> Result<Option<Flock<OwnedFd>>, CgroupError> {
        let lock_err = |source| CgroupError::Lock { path: self.path.clone(), source };
        let fd = openat(&self.fd, ".", dir_flags(), Mode::empty()).map_err(lock_err)?;
        match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, source)) => Err(lock_err(source)),
        }
    }

    /// [`try_lock`](Self::try_lock), waiting up to [`LOCK_TIMEOUT`].
    pub fn lock(&self) -> Result<Flock<OwnedFd>, CgroupError> {
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            if let Some(lock) = self.try_lock()? {
                return Ok(lock);
            }
            if Instant::now() > deadline {
                return Err(CgroupError::LockTimeout { path: self.path.clone(), timeout: LOCK_TIMEOUT });
            }
            sleep(LOCK_RETRY_DELAY);
        }
    }
}

/// The value of `key` in flat-keyed `text` (`key value` lines).
pub(super) fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_values() {
        let events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(flat_keyed(events, "oom_kill"), Some(1));
        assert_eq!(flat_keyed(events, "oom"), Some(2), "whole keys only");
        assert_eq!(flat_keyed(events, "missing"), None);
        assert_eq!(flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n", "oom_kill"), Some(7));
    }
}
