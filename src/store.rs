//! A toolchain store shared by a farm of kilns: archives by archive_id in a directory
//! every kiln of the farm mounts (NFS and the like), `[kiln.toolchains] store`.
//!
//! Behind upstream's scheduler a client uploads a toolchain to every server that asks
//! for it. With a store, a toolchain a client uploads to one kiln is published there
//! once (atomically: a temporary name, then a rename); a kiln that lacks a toolchain
//! the store holds answers assign_job with `need_toolchain = false` and fetches it in
//! the background (single-flight per archive, BLAKE3-checked, into its own cache); the
//! job's run_job waits for that fetch. So each toolchain crosses the client's link once.
//!
//! A store that fails or is slow never fails a job it has not yet promised: a lookup
//! that does not answer within [`LOOKUP_WAIT`] counts as a miss (the client is asked
//! for the archive). A fetch that fails later fails that job with a clear error, which
//! the client answers by compiling locally, and the corrupt entry is removed so the
//! next job asks its client again.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;

use crate::actors::{CheckoutToolchain, HasToolchain, StoreToolchain, ToolchainCache};
use crate::protocol::ArchiveCheck;
use crate::report::ErrorChain;
use crate::stats::Stats;

/// How long assign_job waits for the store to say whether it holds an archive.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// Copy buffer for publishing and fetching.
const CHUNK: usize = 1 << 20;

/// A failed fetch, as the job that waited for it reports it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fetching toolchain {archive_id} from the store failed: {reason}")]
pub struct FetchFailed {
    pub archive_id: String,
    pub reason: String,
}

type Fetch = Shared<BoxFuture<'static, Result<(), FetchFailed>>>;

/// The store, and the fetches from it under way.
pub struct ToolchainStore {
    dir: PathBuf,
    cache: Addr<ToolchainCache>,
    /// Where fetched archives are staged (the cache's file system).
    incoming_dir: PathBuf,
    stats: Arc<Stats>,
    fetches: Mutex<HashMap<String, Fetch>>,
    next_file: AtomicU64,
    /// Largest archive taken from the store (`max_archive_bytes`, as for uploads).
    max_bytes: u64,
}

impl ToolchainStore {
    pub fn new(
        dir: PathBuf,
        cache: Addr<ToolchainCache>,
        incoming_dir: PathBuf,
        max_bytes: u64,
        stats: Arc<Stats>,
    ) -> Arc<Self> {
        let fetches = Mutex::default();
        Arc::new(ToolchainStore { dir, cache, incoming_dir, stats, fetches, next_file: AtomicU64::new(0), max_bytes })
    }

    fn path_of(&self, archive_id: &str) -> PathBuf {
        self.dir.join(archive_id)
    }

    /// Whether the store holds `archive_id`; if so, its fetch into the cache starts
    /// (or is already under way). `false` also when the store does not answer in time.
    pub async fn offers(self: &Arc<Self>, archive_id: &str) -> bool {
        let path = self.path_of(archive_id);
        // Never through a symlink: whoever can write the store must not make kiln
        // (root) read other files.
        let found = match tokio::time::timeout(LOOKUP_WAIT, tokio::fs::symlink_metadata(&path)).await {
            Ok(Ok(meta)) => meta.is_file() && meta.len() <= self.max_bytes,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => false,
            Ok(Err(e)) => {
                Stats::bump(&self.stats.toolchain_store_failures);
                tracing::warn!(%archive_id, store = ?self.dir, error = %e, "the toolchain store cannot be read; asking the client");
                false
            }
            Err(_) => {
                Stats::bump(&self.stats.toolchain_store_failures);
                tracing::warn!(%archive_id, store = ?self.dir, wait = ?LOOKUP_WAIT, "the toolchain store did not answer; asking the client");
                false
            }
        };
        if found {
            self.start_fetch(archive_id);
        }
        found
    }

    /// Waits for the fetch of `archive_id` if one is under way, or reports the one
    /// that failed (unless the client has uploaded the toolchain since).
    pub async fn fetched(&self, archive_id: &str) -> Result<(), FetchFailed> {
        let fetch = crate::sync::lock(&self.fetches).get(archive_id).cloned();
        let Some(fetch) = fetch else { return Ok(()) };
        let failed = match fetch.await {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        match self.cache.send(HasToolchain { archive_id: archive_id.to_owned() }).await {
            Ok(true) => Ok(()),
            _ => Err(failed),
        }
    }

    /// Starts fetching `archive_id`, unless a fetch is under way. A failed fetch stays
    /// recorded (the job promised the toolchain learns why) until the next one starts.
    fn start_fetch(self: &Arc<Self>, archive_id: &str) {
        let mut fetches = crate::sync::lock(&self.fetches);
        if fetches.get(archive_id).is_some_and(|fetch| !matches!(fetch.peek(), Some(Err(_)))) {
            return;
        }
        let (store, id) = (self.clone(), archive_id.to_owned());
        let fetch = async move {
            let result = store.fetch(&id).await;
            if result.is_ok() {
                crate::sync::lock(&store.fetches).remove(&id);
            }
            result
        }
        .boxed()
        .shared();
        fetches.insert(archive_id.to_owned(), fetch.clone());
        // Runs whether or not a job waits for it.
        actix::spawn(async move {
            let _ = fetch.await;
        });
    }

    async fn fetch(&self, archive_id: &str) -> Result<(), FetchFailed> {
        let failed = |reason: String| FetchFailed { archive_id: archive_id.to_owned(), reason };
        let has = self.cache.send(HasToolchain { archive_id: archive_id.to_owned() }).await;
        if has.map_err(|_| failed("the toolchain cache is not running".into()))? {
            return Ok(());
        }
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let staged = self.incoming_dir.join(format!("store-{archive_id}-{n}.part"));
        let (source, target, id) = (self.path_of(archive_id), staged.clone(), archive_id.to_owned());
        let max_bytes = self.max_bytes;
        let copied = tokio::task::spawn_blocking(move || copy_checked(&source, &target, &id, max_bytes))
            .await
            .unwrap_or_else(|e| Err(format!("the copy's thread failed: {e}")));
        let size = match copied {
            Ok(size) => size,
            Err(reason) => {
                let _ = std::fs::remove_file(&staged);
                Stats::bump(&self.stats.toolchain_store_failures);
                tracing::error!(%archive_id, store = ?self.dir, %reason, "fetching a toolchain from the store failed");
                if reason.starts_with(CORRUPT) {
                    // Proven bad by its hash: the next job asks its client instead.
                    let _ = std::fs::remove_file(self.path_of(archive_id));
                }
                return Err(failed(reason));
            }
        };
        let stored = self.cache.send(StoreToolchain { archive_id: archive_id.to_owned(), staged, size }).await;
        match stored {
            Ok(Ok(())) => {
                Stats::bump(&self.stats.toolchain_store_fetches);
                self.stats.toolchain_store_fetched_bytes.fetch_add(size, Ordering::Relaxed);
                tracing::info!(%archive_id, size, "toolchain fetched from the store");
                Ok(())
            }
            Ok(Err(e)) => Err(failed(ErrorChain(&e).to_string())),
            Err(_) => Err(failed("the toolchain cache is not running".into())),
        }
    }

    /// Publishes `archive_id` (just uploaded by a client into the cache) to the
    /// store, in the background, unless the store holds it already.
    pub fn publish(self: &Arc<Self>, archive_id: &str) {
        // Uploaded: a failed fetch of it is history.
        crate::sync::lock(&self.fetches).remove(archive_id);
        let (store, id) = (self.clone(), archive_id.to_owned());
        actix::spawn(async move {
            let Ok(Some(lease)) = store.cache.send(CheckoutToolchain { archive_id: id.clone() }).await else { return };
            let n = store.next_file.fetch_add(1, Ordering::Relaxed);
            let (dir, source) = (store.dir.clone(), lease.path.clone());
            let tmp_name = format!(".{id}.{}.{n}.part", std::process::id());
            let target = id.clone();
            let published = tokio::task::spawn_blocking(move || publish_file(&source, &dir, &tmp_name, &target))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            drop(lease);
            match published {
                Ok(true) => {
                    Stats::bump(&store.stats.toolchain_store_publishes);
                    tracing::info!(archive_id = %id, store = ?store.dir, "toolchain published to the store");
                }
                Ok(false) => {}
                Err(e) => {
                    Stats::bump(&store.stats.toolchain_store_failures);
                    tracing::warn!(archive_id = %id, store = ?store.dir, error = %e, "publishing a toolchain to the store failed");
                }
            }
        });
    }
}

/// The prefix of a fetch failure that proves the store's copy bad.
const CORRUPT: &str = "the store's copy is corrupt";

/// Copies `source` (a regular file, not through a symlink, at most `max_bytes`) to
/// `target` (created anew), checking it is a gzip stream whose BLAKE3 is
/// `archive_id`; synced before the cache may adopt it. Returns its size.
fn copy_checked(source: &Path, target: &Path, archive_id: &str, max_bytes: u64) -> Result<u64, String> {
    let from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(source)
        .map_err(|e| format!("opening {source:?}: {e}"))?;
    let meta = from.metadata().map_err(|e| format!("reading {source:?}: {e}"))?;
    if !meta.is_file() || meta.len() > max_bytes {
        return Err(format!("{CORRUPT}: not a regular file of at most {max_bytes} bytes"));
    }
    let mut from = from.take(max_bytes + 1);
    let mut to = new_file(target).map_err(|e| format!("creating {target:?}: {e}"))?;
    let mut check = ArchiveCheck::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).map_err(|e| format!("reading {source:?}: {e}"))?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|e| format!("writing {target:?}: {e}"))?;
    }
    to.sync_all().map_err(|e| format!("syncing {target:?}: {e}"))?;
    match check.verify(archive_id) {
        Ok(size) if size <= max_bytes => Ok(size),
        _ => Err(format!("{CORRUPT}: not a gzip stream whose BLAKE3 is its name")),
    }
}

/// Creates `path` for writing; fails if anything, a symlink included, is there.
fn new_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// Copies `source` into `dir` as `name`, through `tmp_name` and a rename, so no kiln
/// ever sees it half written. `Ok(false)`: the store held it already.
fn publish_file(source: &Path, dir: &Path, tmp_name: &str, name: &str) -> std::io::Result<bool> {
    let target = dir.join(name);
    if target.exists() {
        return Ok(false);
    }
    let tmp = dir.join(tmp_name);
    let mut created = false;
    let copied = (|| {
        let mut from = std::fs::File::open(source)?;
        // A name planted in the store (a symlink to a host file) is never written through.
        let mut to = new_file(&tmp)?;
        created = true;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if copied.is_err() && created {
        let _ = std::fs::remove_file(&tmp);
    }
    copied.map(|()| true)
}
