//! The store as a directory every kiln of the farm mounts (NFS and the like).
//!
//! kiln runs as root; whoever can write the store must not make it write or read
//! other host files. So nothing is ever opened through a symlink: lookups use
//! `symlink_metadata`, fetches open with `O_NOFOLLOW`, and publishing creates its
//! temporary file with `O_EXCL` (a name planted there fails the publish).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Staging, StoreError, StoredArchive, CHUNK};

pub(super) struct DirectoryStore {
    dir: PathBuf,
    /// Makes each temporary name of this process unique.
    next_file: AtomicU64,
}

impl DirectoryStore {
    pub(super) fn new(dir: PathBuf) -> Self {
        DirectoryStore { dir, next_file: AtomicU64::new(0) }
    }

    fn path_of(&self, archive_id: &str) -> PathBuf {
        self.dir.join(archive_id)
    }

    /// The size of `archive_id` if the store holds it as a regular file.
    pub(super) async fn lookup(&self, archive_id: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path_of(archive_id);
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) => Ok(meta.is_file().then_some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("looking up {path:?}"), e)),
        }
    }

    pub(super) async fn fetch(&self, archive_id: &str, staged: &Path, max_bytes: u64) -> Result<u64, StoreError> {
        let (source, staged, id) = (self.path_of(archive_id), staged.to_owned(), archive_id.to_owned());
        tokio::task::spawn_blocking(move || copy_checked(&source, &staged, &id, max_bytes))
            .await
            .map_err(|_| StoreError::ThreadFailed)?
    }

    /// Copies `source` into the store as `archive_id`, through a temporary name and a
    /// rename, so no kiln ever sees it half written. `Ok(false)`: it was there already.
    pub(super) async fn publish(&self, archive_id: &str, source: &Path) -> Result<bool, StoreError> {
        let target = self.path_of(archive_id);
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{archive_id}.{}.{n}.part", std::process::id()));
        let source = source.to_owned();
        tokio::task::spawn_blocking(move || publish_file(&source, &tmp, &target))
            .await
            .map_err(|_| StoreError::ThreadFailed)?
    }

    pub(super) async fn remove(&self, archive_id: &str) -> Result<(), StoreError> {
        let path = self.path_of(archive_id);
        tokio::fs::remove_file(&path).await.map_err(|e| StoreError::io(format!("removing {path:?}"), e))
    }

    /// The regular files named as archive ids, with their size and mtime (the
    /// last fetch or publish: a fetch touches it).
    pub(super) async fn archives(&self) -> Result<Vec<StoredArchive>, StoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let listing = std::fs::read_dir(&dir).map_err(|e| StoreError::io(format!("listing {dir:?}"), e))?;
            let mut archives = Vec::new();
            for entry in listing.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                if !crate::protocol::is_valid_archive_id(&name) {
                    continue;
                }
                let Ok(meta) = entry.path().symlink_metadata() else { continue };
                if meta.is_file() {
                    let last_used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    archives.push(StoredArchive { archive_id: name, size: meta.len(), last_used });
                }
            }
            Ok(archives)
        })
        .await
        .map_err(|_| StoreError::ThreadFailed)?
    }

    /// Creates `name` holding `record` unless something is there (`O_EXCL`, which
    /// NFS v3 and later honour). `Ok(false)`: something was.
    pub(super) async fn create(&self, name: &str, record: Vec<u8>) -> Result<bool, StoreError> {
        let path = self.dir.join(name);
        tokio::task::spawn_blocking(move || {
            let created = std::fs::OpenOptions::new().write(true).create_new(true).open(&path);
            match created {
                Ok(mut file) => {
                    std::io::Write::write_all(&mut file, &record)
                        .map_err(|e| StoreError::io(format!("writing {path:?}"), e))?;
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(StoreError::io(format!("creating {path:?}"), e)),
            }
        })
        .await
        .map_err(|_| StoreError::ThreadFailed)?
    }

    /// Reads a small regular file (a claim), at most `max` bytes, never through a
    /// symlink; `None` if absent.
    pub(super) async fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.dir.join(name);
        tokio::task::spawn_blocking(move || {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(&path);
            let file = match opened {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::io(format!("opening {path:?}"), e)),
            };
            let mut bytes = Vec::new();
            file.take(max).read_to_end(&mut bytes).map_err(|e| StoreError::io(format!("reading {path:?}"), e))?;
            Ok(Some(bytes))
        })
        .await
        .map_err(|_| StoreError::ThreadFailed)?
    }

    /// Replaces `name` with `record` atomically (a new file renamed over it).
    pub(super) async fn overwrite(&self, name: &str, record: Vec<u8>) -> Result<(), StoreError> {
        let target = self.dir.join(name);
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{name}.{}.{n}.part", std::process::id()));
        tokio::task::spawn_blocking(move || {
            let written = (|| {
                let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
                std::io::Write::write_all(&mut file, &record)?;
                std::fs::rename(&tmp, &target)
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written.map_err(|e| StoreError::io(format!("replacing {target:?}"), e))
        })
        .await
        .map_err(|_| StoreError::ThreadFailed)?
    }
}

/// Copies `source` (a regular file, not through a symlink, at most `max_bytes`) into
/// a new `target`, checking it is the archive `archive_id`. Returns its size.
fn copy_checked(source: &Path, target: &Path, archive_id: &str, max_bytes: u64) -> Result<u64, StoreError> {
    let from = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO planted under the name must not hang the fetch.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(source)
        .map_err(|e| StoreError::io(format!("opening {source:?}"), e))?;
    let meta = from.metadata().map_err(|e| StoreError::io(format!("reading {source:?}"), e))?;
    if !meta.is_file() {
        return Err(StoreError::Corrupt("not a regular file".into()));
    }
    // Its mtime says when it was last used, for the store's budget (best effort:
    // a store mounted with root squashed refuses).
    let _ = from.set_modified(std::time::SystemTime::now());
    let mut from = from.take(max_bytes + 1);
    let mut staging = Staging::create(target, max_bytes)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).map_err(|e| StoreError::io(format!("reading {source:?}"), e))?;
        if n == 0 {
            break;
        }
        staging.write(&buf[..n])?;
    }
    staging.finish(archive_id)
}

fn publish_file(source: &Path, tmp: &Path, target: &Path) -> Result<bool, StoreError> {
    if target.symlink_metadata().is_ok() {
        return Ok(false);
    }
    let mut created = false;
    let copied = (|| {
        let mut from = std::fs::File::open(source)?;
        // A name planted in the store (a symlink to a host file) is never written through.
        let mut to = std::fs::OpenOptions::new().write(true).create_new(true).open(tmp)?;
        created = true;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        std::fs::rename(tmp, target)
    })();
    if copied.is_err() && created {
        let _ = std::fs::remove_file(tmp);
    }
    copied.map(|()| true).map_err(|e| StoreError::io(format!("publishing to {target:?}"), e))
}
