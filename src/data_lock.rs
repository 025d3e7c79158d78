//! One kiln per data directory: an exclusive `flock(2)` on `<dir>/kiln.lock`, held
//! for the life of the process.
//!
//! A second kiln on the same directory would sweep the first one's sandboxes at
//! startup (kill them, empty `roots/` and `sandboxes/` under its jobs), share its
//! toolchain cache without its index, and fight over container labels. The lock is
//! taken before anything else touches the directory. `flock` locks die with the
//! process (even on `kill -9`), so a stale lock file never blocks a restart; the
//! file only carries the holder's pid, for the message.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside each locked directory.
pub const LOCK_FILE: &str = "kiln.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another kiln{} is already using {dir:?} (it holds {lock:?}); stop it, or give this one directories of its own (kiln.data_dir, or cache_dir and builder.build_dir)", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held { dir: PathBuf, lock: PathBuf, holder: Option<u32> },
    #[error("cannot lock {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held locks; dropping this releases them.
#[derive(Debug)]
pub struct DataDirLock {
    _locks: Vec<Flock<File>>,
}

impl DataDirLock {
    /// Locks every directory in `dirs` (created if missing; duplicates locked once).
    pub fn acquire<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Result<Self, LockError> {
        let mut seen: Vec<&Path> = Vec::new();
        let mut locks = Vec::new();
        for dir in dirs {
            if seen.contains(&dir) {
                continue;
            }
            seen.push(dir);
            locks.push(lock_one(dir)?);
        }
        Ok(DataDirLock { _locks: locks })
    }
}

fn lock_one(dir: &Path) -> Result<Flock<File>, LockError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| LockError::Io { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    // std opens with O_CLOEXEC: no sandbox process spawned later inherits the lock.
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held { dir: dir.to_owned(), lock: path, holder: text.trim().parse().ok() });
        }
        Err((_, errno)) => return Err(io(errno.into())),
    };
    // Ours now: record our pid for the next one's message.
    lock.set_len(0).map_err(io)?;
    lock.rewind().map_err(io)?;
    writeln!(lock, "{}", std::process::id()).map_err(io)?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire([dir.path(), dir.path()]).unwrap();
        // flock locks belong to the open file description: a second open in this
        // same process conflicts as another process would.
        let err = DataDirLock::acquire([dir.path()]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        assert!(text.contains("already using"), "{text}");
        drop(held);
        DataDirLock::acquire([dir.path()]).unwrap();
    }
}
