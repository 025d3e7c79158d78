//! A kiln's side of the farm's store (`[kiln.toolchains] store`, [`crate::store`]).
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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;

use super::claims;
use crate::actors::{AdoptToolchain, CheckoutToolchain, HasToolchain, ToolchainCache};
use crate::report::ErrorChain;
use crate::stats::Stats;
use crate::store::{Backend, StoreError, StoreLocation, StoredArchive};

/// How long assign_job waits for the store to say whether it holds an archive.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);

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
    pub(super) location: StoreLocation,
    pub(super) backend: Backend,
    pub(super) cache: Addr<ToolchainCache>,
    /// Where fetched archives are staged (the cache's file system).
    pub(super) incoming_dir: PathBuf,
    pub(super) stats: Arc<Stats>,
    pub(super) fetches: Mutex<HashMap<String, Fetch>>,
    pub(super) next_file: AtomicU64,
    pub(super) limits: FetchLimits,
    /// This kiln's claims (see [`claims`]).
    pub(super) claims: claims::Claims,
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
        let stored = self.cache.send(AdoptToolchain { archive_id: archive_id.to_owned(), staged, size }).await;
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
