//! A toolchain store shared by a farm of kilns, `[kiln.toolchains] store`: archives by
//! archive_id in a directory every kiln mounts (NFS and the like, [`directory`]) or
//! in an object store (S3-compatible, GCS, Azure Blob: [`object`]).
//!
//! Behind upstream's scheduler a client uploads a toolchain to every server that asks
//! for it. With a store, a toolchain a client uploads to one kiln is published there
//! once (atomically: no kiln sees it half written); a kiln that lacks a toolchain
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
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use serde::Deserialize;

use crate::actors::{CheckoutToolchain, HasToolchain, StoreToolchain, ToolchainCache};
use crate::protocol::ArchiveCheck;
use crate::report::ErrorChain;
use crate::stats::Stats;

mod claims;
mod directory;
mod object;

pub use claims::{ClaimOutcome, CLAIM_TTL};

use directory::DirectoryStore;
use object::ObjectStore;

/// How long assign_job waits for the store to say whether it holds an archive.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// Copy and download buffer.
const CHUNK: usize = 1 << 20;

/// Where the farm's store is, as configured: an absolute path, or an object store's
/// URI (`s3://bucket/prefix?region=eu-west-1&endpoint=https://...`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StoreLocation {
    Directory(PathBuf),
    Object(String),
}

impl TryFrom<String> for StoreLocation {
    type Error = String;

    fn try_from(location: String) -> Result<Self, String> {
        if location.contains("://") {
            // Checked now, so a wrong scheme or option stops kiln at start.
            ObjectStore::check_uri(&location).map_err(|e| ErrorChain(&e).to_string())?;
            Ok(StoreLocation::Object(location))
        } else {
            Ok(StoreLocation::Directory(location.into()))
        }
    }
}

impl fmt::Display for StoreLocation {
    /// Without an object store's options or user info: they may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = match self {
            StoreLocation::Directory(dir) => return write!(f, "{}", dir.display()),
            StoreLocation::Object(uri) => uri.split(['?', '#']).next().unwrap_or_default(),
        };
        let Some((scheme, rest)) = uri.split_once("://") else { return f.write_str(uri) };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        write!(f, "{scheme}://{host}{path}")
    }
}

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Proven bad: the entry is not the archive its name says.
    #[error("the store's copy is corrupt: {0}")]
    Corrupt(String),
    /// Larger than this kiln takes, though the store said otherwise: not proof that
    /// the entry is bad (another kiln may take more), so it stays.
    #[error("the store's copy is larger than max_archive_bytes ({0} bytes)")]
    TooLarge(u64),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("the object store")]
    Object(#[from] opendal::Error),
    #[error("the object store's HTTP client: {0}")]
    Client(String),
    #[error("the store did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the store's worker thread failed")]
    ThreadFailed,
}

impl StoreError {
    fn io(what: String, source: std::io::Error) -> Self {
        StoreError::Io { what, source }
    }
}

/// A failed fetch, as the job that waited for it reports it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fetching toolchain {archive_id} from the store failed: {reason}")]
pub struct FetchFailed {
    pub archive_id: String,
    pub reason: String,
}

/// The one store a kiln is configured with.
enum Backend {
    Directory(DirectoryStore),
    Object(ObjectStore),
}

impl Backend {
    fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        Ok(match location {
            StoreLocation::Directory(dir) => Backend::Directory(DirectoryStore::new(dir.clone())),
            StoreLocation::Object(uri) => Backend::Object(ObjectStore::open(uri)?),
        })
    }

    async fn lookup(&self, archive_id: &str) -> Result<Option<u64>, StoreError> {
        match self {
            Backend::Directory(store) => store.lookup(archive_id).await,
            Backend::Object(store) => store.lookup(archive_id).await,
        }
    }

    async fn fetch(&self, archive_id: &str, staged: &Path, max_bytes: u64) -> Result<u64, StoreError> {
        match self {
            Backend::Directory(store) => store.fetch(archive_id, staged, max_bytes).await,
            Backend::Object(store) => store.fetch(archive_id, staged, max_bytes).await,
        }
    }

    async fn publish(&self, archive_id: &str, source: &Path) -> Result<bool, StoreError> {
        match self {
            Backend::Directory(store) => store.publish(archive_id, source).await,
            Backend::Object(store) => store.publish(archive_id, source).await,
        }
    }

    async fn remove(&self, archive_id: &str) -> Result<(), StoreError> {
        match self {
            Backend::Directory(store) => store.remove(archive_id).await,
            Backend::Object(store) => store.remove(archive_id).await,
        }
    }

    /// The archives the store holds (names that are archive ids), with their size
    /// and when each was last used (directory) or published (object store).
    async fn archives(&self) -> Result<Vec<StoredArchive>, StoreError> {
        match self {
            Backend::Directory(store) => store.archives().await,
            Backend::Object(store) => store.archives().await,
        }
    }

    async fn create(&self, name: &str, record: Vec<u8>) -> Result<bool, StoreError> {
        match self {
            Backend::Directory(store) => store.create(name, record).await,
            Backend::Object(store) => store.create(name, record).await,
        }
    }

    async fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Backend::Directory(store) => store.read_small(name, max).await,
            Backend::Object(store) => store.read_small(name, max).await,
        }
    }

    async fn overwrite(&self, name: &str, record: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Backend::Directory(store) => store.overwrite(name, record).await,
            Backend::Object(store) => store.overwrite(name, record).await,
        }
    }
}

/// One archive in the store, as its budget sees it.
#[derive(Debug, Clone)]
struct StoredArchive {
    archive_id: String,
    size: u64,
    last_used: std::time::SystemTime,
}

/// Whether the store at `location` answers a lookup (`kiln check`).
pub async fn probe(location: &StoreLocation) -> Result<(), StoreError> {
    let backend = Backend::open(location)?;
    // No archive has this name: any answer, found or not, proves the store reachable.
    backend.lookup(".kiln-check").await.map(drop)
}

/// An archive arriving from the store: written to a new file and checked as it goes,
/// then synced before the cache may adopt it.
struct Staging {
    file: std::fs::File,
    check: ArchiveCheck,
    max_bytes: u64,
}

impl Staging {
    /// Fails if anything, a symlink included, is at `path`.
    fn create(path: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| StoreError::io(format!("creating {path:?}"), e))?;
        Ok(Staging { file, check: ArchiveCheck::new(), max_bytes })
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if self.check.size() + chunk.len() as u64 > self.max_bytes {
            return Err(StoreError::TooLarge(self.max_bytes));
        }
        self.check.update(chunk);
        self.file.write_all(chunk).map_err(|e| StoreError::io("writing the staged archive".into(), e))
    }

    /// The archive's size, if it is a gzip stream whose BLAKE3 is `archive_id`.
    fn finish(self, archive_id: &str) -> Result<u64, StoreError> {
        self.file.sync_all().map_err(|e| StoreError::io("syncing the staged archive".into(), e))?;
        self.check
            .verify(archive_id)
            .map_err(|_| StoreError::Corrupt("not a gzip stream whose BLAKE3 is its name".into()))
    }
}

type Fetch = Shared<BoxFuture<'static, Result<(), FetchFailed>>>;

/// The store, and the fetches from it under way.
pub struct ToolchainStore {
    location: StoreLocation,
    backend: Backend,
    cache: Addr<ToolchainCache>,
    /// Where fetched archives are staged (the cache's file system).
    incoming_dir: PathBuf,
    stats: Arc<Stats>,
    fetches: Mutex<HashMap<String, Fetch>>,
    next_file: AtomicU64,
    limits: FetchLimits,
    /// This kiln's claims (see [`claims`]).
    claims: claims::Claims,
}

/// What a fetch from the store may take: the bounds of a client's upload.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// `max_archive_bytes`.
    pub max_bytes: u64,
    /// `upload_timeout_secs`: a store that stalls mid-fetch fails the job after it.
    pub timeout: Duration,
    /// `store_max_bytes`: the store's budget (0: none).
    pub store_max_bytes: u64,
}

impl ToolchainStore {
    pub fn new(
        location: StoreLocation,
        cache: Addr<ToolchainCache>,
        incoming_dir: PathBuf,
        limits: FetchLimits,
        stats: Arc<Stats>,
    ) -> Result<Arc<Self>, StoreError> {
        let backend = Backend::open(&location)?;
        let (fetches, next_file, claims) = (Mutex::default(), AtomicU64::new(0), claims::Claims::new());
        Ok(Arc::new(ToolchainStore {
            location,
            backend,
            cache,
            incoming_dir,
            stats,
            fetches,
            next_file,
            limits,
            claims,
        }))
    }

    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Whether the store holds `archive_id`; if so, its fetch into the cache starts
    /// (or is already under way). `false` also when the store does not answer in time.
    pub async fn offers(self: &Arc<Self>, archive_id: &str) -> bool {
        let looked_up = tokio::time::timeout(LOOKUP_WAIT, self.backend.lookup(archive_id))
            .await
            .unwrap_or(Err(StoreError::TimedOut(LOOKUP_WAIT)));
        let found = match looked_up {
            Ok(Some(size)) if size > self.limits.max_bytes => {
                let max = self.limits.max_bytes;
                tracing::warn!(%archive_id, size, max, "the store's entry is larger than max_archive_bytes; asking the client");
                false
            }
            Ok(size) => size.is_some(),
            Err(e) => {
                Stats::bump(&self.stats.toolchain_store_failures);
                let error = ErrorChain(&e);
                tracing::warn!(%archive_id, store = %self.location, %error, "the toolchain store failed a lookup; asking the client");
                false
            }
        };
        if found {
            Stats::bump(&self.stats.toolchain_store_hits);
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
    pub fn start_fetch(self: &Arc<Self>, archive_id: &str) {
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
        let FetchLimits { max_bytes, timeout, .. } = self.limits;
        let fetched = tokio::time::timeout(timeout, self.backend.fetch(archive_id, &staged, max_bytes)).await;
        let size = match fetched.unwrap_or(Err(StoreError::TimedOut(timeout))) {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&staged).await;
                Stats::bump(&self.stats.toolchain_store_failures);
                let reason = ErrorChain(&e).to_string();
                tracing::error!(%archive_id, store = %self.location, %reason, "fetching a toolchain from the store failed");
                if matches!(e, StoreError::Corrupt(_)) {
                    // Proven bad by its hash: the next job asks its client instead.
                    if let Err(e) = self.backend.remove(archive_id).await {
                        tracing::warn!(%archive_id, error = %ErrorChain(&e), "removing a corrupt entry from the store failed");
                    }
                }
                return Err(failed(reason));
            }
        };
        let stored = self.cache.send(StoreToolchain { archive_id: archive_id.to_owned(), staged, size }).await;
        match stored {
            Ok(Ok(())) => {
                Stats::bump(&self.stats.toolchain_store_fetches);
                self.stats.toolchain_store_fetched_bytes.fetch_add(size, Ordering::Relaxed);
                tracing::info!(%archive_id, size, store = %self.location, "toolchain fetched from the store");
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
            let Ok(Some(lease)) = store.cache.send(CheckoutToolchain { archive_id: id.clone() }).await else {
                store.release_claim(&id).await;
                return;
            };
            // The lease keeps the cache from evicting the archive while it is copied.
            let published = store.backend.publish(&id, &lease.path).await;
            // Published or not, this kiln is no longer receiving it.
            store.release_claim(&id).await;
            match published {
                Ok(true) => {
                    Stats::bump(&store.stats.toolchain_store_publishes);
                    tracing::info!(archive_id = %id, store = %store.location, "toolchain published to the store");
                    store.keep_within_budget(&id).await;
                }
                Ok(false) => {}
                Err(e) => {
                    Stats::bump(&store.stats.toolchain_store_failures);
                    let error = ErrorChain(&e);
                    tracing::warn!(archive_id = %id, store = %store.location, %error, "publishing a toolchain to the store failed");
                }
            }
        });
    }

    /// Removes the least recently used archives beyond `store_max_bytes`, never
    /// `keep` (just published). Every kiln that publishes does this; two at once
    /// remove the same entries, which is harmless. An archive removed while another
    /// kiln fetches it fails that one job (its client compiles locally).
    async fn keep_within_budget(&self, keep: &str) {
        let archives = match self.backend.archives().await {
            Ok(archives) => archives,
            Err(e) => {
                Stats::bump(&self.stats.toolchain_store_failures);
                tracing::warn!(store = %self.location, error = %ErrorChain(&e), "listing the store for its budget failed");
                return;
            }
        };
        let budget = self.limits.store_max_bytes;
        let (mut total, evicted) = over_budget(archives, budget, keep);
        for archive in evicted {
            match self.backend.remove(&archive.archive_id).await {
                Ok(()) => {
                    total -= archive.size;
                    Stats::bump(&self.stats.toolchain_store_evictions);
                    tracing::info!(archive_id = %archive.archive_id, size = archive.size, budget, store = %self.location, "toolchain removed from the store (least recently used beyond store_max_bytes)");
                }
                Err(e) => {
                    tracing::warn!(archive_id = %archive.archive_id, error = %ErrorChain(&e), "removing a toolchain from the store failed")
                }
            }
        }
        self.stats.toolchain_store_bytes.store(total, Ordering::Relaxed);
    }
}

/// The store's total size, and the archives to remove, least recently used
/// first, to bring it within `budget` (0: none), never `keep`.
fn over_budget(mut archives: Vec<StoredArchive>, budget: u64, keep: &str) -> (u64, Vec<StoredArchive>) {
    let total: u64 = archives.iter().map(|a| a.size).sum();
    if budget == 0 || total <= budget {
        return (total, Vec::new());
    }
    archives.sort_by_key(|a| a.last_used);
    let mut left = total;
    let evicted = archives
        .into_iter()
        .filter(|a| a.archive_id != keep)
        .take_while(|a| {
            let over = left > budget;
            left = left.saturating_sub(a.size);
            over
        })
        .collect();
    (total, evicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_and_the_new_one_stays() {
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let archive = |id: &str, size, used| StoredArchive { archive_id: id.into(), size, last_used: at(used) };
        let archives =
            vec![archive("new", 40, 1), archive("old", 30, 2), archive("older", 30, 1), archive("recent", 30, 9)];
        let (total, evicted) = over_budget(archives.clone(), 70, "new");
        let evicted: Vec<_> = evicted.iter().map(|a| a.archive_id.as_str()).collect();
        assert_eq!((total, evicted), (130, vec!["older", "old"]));
        assert!(over_budget(archives.clone(), 0, "new").1.is_empty(), "0: no budget");
        assert!(over_budget(archives, 500, "new").1.is_empty());
    }
}
