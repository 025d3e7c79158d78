//! The front door of a toolchain's arrival: what the build-server calls ask about
//! toolchains, behind one cheap-to-clone handle.
//!
//! - [`Toolchains::offer`] (assign_job): is the toolchain here, in the farm's
//!   store, already on its way, or must this job's client send it?
//! - [`Toolchains::receive`] (submit_toolchain): one upload, staged and checked as
//!   its bytes arrive, then handed to the cache and published to the store.
//! - [`Toolchains::arrival`] (run_job): wait until what was promised has arrived.
//!
//! Single flight (issue 23): of the jobs of a cold build that all need the same
//! missing toolchain, only the first one's client is asked to send it; the others
//! wait for that upload ([`arrivals`]); across a farm, a claim in the store makes
//! one kiln the receiver (`claims.rs`), and the others fetch what it publishes
//! ([`farm`]). The cache and the unpacker (actors) keep their own state; this
//! module decides who sends what, and who waits, and is the only way the rest of
//! kiln reaches a toolchain's arrival.

pub mod arrivals;
mod claims;
pub mod farm;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::io::AsyncWriteExt;

use crate::actors::toolchain_cache::CheckDiskReserve;
pub use crate::actors::UnpackFailed;
use crate::actors::{AdoptToolchain, CacheError, HasToolchain, ToolchainCache};
use crate::observe::BelowReserve;
use crate::protocol::{ArchiveCheck, ArchiveMismatch, JobId};
use crate::report::ErrorChain;
use crate::stats::Stats;
pub use arrivals::{ArrivalFailed, Source};
use arrivals::{Arrivals, Expect};
pub use claims::{ClaimOutcome, CLAIM_TTL};
pub use farm::{FetchFailed, FetchLimits, ToolchainStore};

/// What assign_job tells the scheduler and the client about a job's toolchain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// In the cache.
    Here,
    /// In the farm's store: fetched meanwhile.
    FromStore,
    /// On its way (another job's upload, or a fetch): run_job waits for it.
    Arriving,
    /// Missing: this job's client must send it.
    SendIt,
}

impl Offer {
    pub fn need_toolchain(self) -> bool {
        self == Offer::SendIt
    }
}

/// Bounds on a toolchain's arrival, from `[kiln.toolchains]` (the caller bounds an
/// upload's bytes and time as its body arrives).
#[derive(Debug, Clone, Copy)]
pub struct ArrivalLimits {
    /// `upload_timeout_secs`: what an upload or a fetch may take; a job waits for
    /// one at most this (plus the uploader's start bound).
    pub upload_timeout: Duration,
}

/// Why an upload was not taken.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Reserve(#[from] BelowReserve),
    /// Not the archive its id names: the client's fault.
    #[error("{0}")]
    Mismatch(String),
    /// Larger than the cache can hold even when empty of unused archives.
    #[error(transparent)]
    NoRoom(CacheError),
    #[error("staging the toolchain at {path:?}")]
    Staging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the toolchain cache failed to take the archive")]
    Cache(#[source] CacheError),
    #[error("kiln's toolchain cache is not running")]
    CacheGone,
}

/// The handle every build-server call shares.
#[derive(Clone)]
pub struct Toolchains {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Addr<ToolchainCache>,
    store: Option<Arc<ToolchainStore>>,
    arrivals: Arrivals,
    /// Where uploads are staged (the cache's file system).
    incoming_dir: PathBuf,
    next_upload: AtomicU64,
    limits: ArrivalLimits,
    stats: Arc<Stats>,
}

/// Bytes of an upload gathered before each write to disk.
const UPLOAD_BUFFER: usize = 1 << 20;

/// Bytes of an upload received between two checks of the disk reserve; each check
/// asks for this much room above it, so the upload never writes into it.
const RESERVE_CHECK_BYTES: u64 = 16 << 20;

impl Toolchains {
    pub fn new(
        cache: Addr<ToolchainCache>,
        store: Option<Arc<ToolchainStore>>,
        incoming_dir: PathBuf,
        limits: ArrivalLimits,
        stats: Arc<Stats>,
    ) -> Toolchains {
        let arrivals = Arrivals::default();
        let inner = Inner { cache, store, arrivals, incoming_dir, next_upload: AtomicU64::new(0), limits, stats };
        Toolchains { inner: Arc::new(inner) }
    }

    /// The farm's store, as configured (for the status document).
    pub fn store(&self) -> Option<&Arc<ToolchainStore>> {
        self.inner.store.as_ref()
    }

    async fn cached(&self, archive_id: &str) -> Result<bool, UploadError> {
        let has = self.inner.cache.send(HasToolchain { archive_id: archive_id.to_owned() }).await;
        has.map_err(|_| UploadError::CacheGone)
    }

    /// For assign_job of `job_id`: where its toolchain will come from. When the
    /// answer is [`Offer::SendIt`], the job is the toolchain's uploader until its
    /// upload ends (or [`Toolchains::withdraw`]).
    pub async fn offer(&self, archive_id: &str, job_id: JobId) -> Result<Offer, UploadError> {
        let inner = &self.inner;
        if self.cached(archive_id).await? {
            Stats::bump(&inner.stats.toolchain_cache_hits);
            return Ok(Offer::Here);
        }
        Stats::bump(&inner.stats.toolchain_cache_misses);
        if inner.arrivals.is_arriving(archive_id) {
            Stats::bump(&inner.stats.toolchain_arrival_waits);
            return Ok(Offer::Arriving);
        }
        if let Some(store) = &inner.store {
            if store.offers(archive_id).await {
                self.follow_fetch(store.clone(), archive_id);
                return Ok(Offer::FromStore);
            }
        }
        if let Expect::Arriving(_) = inner.arrivals.expect(archive_id, job_id) {
            Stats::bump(&inner.stats.toolchain_arrival_waits);
            return Ok(Offer::Arriving);
        }
        let Some(store) = &inner.store else { return Ok(Offer::SendIt) };
        // This job is the uploader here; is another kiln of the farm receiving it?
        let (this, id) = (self.clone(), archive_id.to_owned());
        match store.claim(archive_id, move || this.inner.arrivals.is_arriving(&id)).await {
            ClaimOutcome::Ours => Ok(Offer::SendIt),
            ClaimOutcome::Published => {
                inner.arrivals.to_store(archive_id, job_id);
                store.start_fetch(archive_id);
                self.follow_fetch(store.clone(), archive_id);
                Ok(Offer::FromStore)
            }
            ClaimOutcome::Theirs { holder } => {
                tracing::info!(%archive_id, %holder, "another kiln of the farm is receiving this toolchain; waiting for its publish");
                inner.arrivals.to_store(archive_id, job_id);
                Stats::bump(&inner.stats.toolchain_arrival_waits);
                let (this, store, id) = (self.clone(), store.clone(), archive_id.to_owned());
                let limit = arrivals::UPLOAD_START_WITHIN + inner.limits.upload_timeout;
                actix::spawn(async move {
                    match store.published_by_other(&id, limit).await {
                        Ok(()) => this.inner.arrivals.arrived(&id),
                        Err(e) => this.fail(&id, Source::Store, &e.to_string()),
                    }
                });
                Ok(Offer::Arriving)
            }
        }
    }

    /// The job [`Toolchains::offer`] made the uploader was refused after all: the
    /// jobs that joined its arrival fail, and the next assign_job asks again.
    pub fn withdraw(&self, archive_id: &str, job_id: JobId) {
        self.fail(archive_id, Source::Upload { uploader: job_id }, "the job told to send it was refused");
    }

    /// A fetch from the store started (or was under way): jobs wait for it as
    /// for an upload, and learn of its end through the arrivals.
    fn follow_fetch(&self, store: Arc<ToolchainStore>, archive_id: &str) {
        self.inner.arrivals.fetching(archive_id);
        let (this, id) = (self.clone(), archive_id.to_owned());
        actix::spawn(async move {
            match store.fetched(&id).await {
                Ok(()) => this.inner.arrivals.arrived(&id),
                Err(e) => this.fail(&id, Source::Store, &e.to_string()),
            }
        });
    }

    fn fail(&self, archive_id: &str, source: Source, reason: &str) {
        if self.inner.arrivals.failed(archive_id, source, reason) {
            Stats::bump(&self.inner.stats.toolchain_arrivals_failed);
        }
    }

    /// For submit_toolchain of `job_id`: an upload to write the body into, or
    /// `None` when the toolchain is here already (the body is not needed).
    pub async fn receive(&self, archive_id: &str, job_id: JobId) -> Result<Option<Upload>, UploadError> {
        let started = self.start_upload(archive_id, job_id).await;
        if let Err(e) = &started {
            // Refused before a byte was taken: the jobs waiting for it learn now.
            let reason = format!("the upload by job {job_id} was refused: {}", ErrorChain(e));
            self.fail(archive_id, Source::Upload { uploader: job_id }, &reason);
        }
        started
    }

    async fn start_upload(&self, archive_id: &str, job_id: JobId) -> Result<Option<Upload>, UploadError> {
        if self.cached(archive_id).await? {
            self.inner.arrivals.arrived(archive_id);
            return Ok(None);
        }
        self.check_reserve().await?;
        let n = self.inner.next_upload.fetch_add(1, Ordering::Relaxed);
        let staged = self.inner.incoming_dir.join(format!("{job_id}-{n}.part"));
        let file = tokio::fs::File::create(&staged)
            .await
            .map_err(|source| UploadError::Staging { path: staged.clone(), source })?;
        self.inner.arrivals.receiving(archive_id, job_id);
        Ok(Some(Upload {
            toolchains: self.clone(),
            archive_id: archive_id.to_owned(),
            job_id,
            // Buffered: the body arrives in chunks of a few KiB, and each write to a
            // tokio file is a round trip to the blocking pool.
            file: Some(tokio::io::BufWriter::with_capacity(UPLOAD_BUFFER, file)),
            staged,
            check: ArchiveCheck::new(),
            unchecked: 0,
            ended: false,
        }))
    }

    async fn check_reserve(&self) -> Result<(), UploadError> {
        let check = CheckDiskReserve { bytes: RESERVE_CHECK_BYTES };
        Ok(self.inner.cache.send(check).await.map_err(|_| UploadError::CacheGone)??)
    }

    /// For run_job: waits until the job's toolchain, if it was promised from an
    /// arrival, is in the cache. Every arrival ends by itself within the upload
    /// timeout (an upload's body, a fetch) once started; the waiter's own bound is
    /// a backstop beyond that, so the arrival's own error is what the job reports.
    pub async fn arrival(&self, archive_id: &str) -> Result<(), ArrivalFailed> {
        let backstop = arrivals::UPLOAD_START_WITHIN + self.inner.limits.upload_timeout + Duration::from_secs(5);
        self.inner.arrivals.wait(archive_id, backstop).await
    }
}

/// One client's upload under way: staged to a file of its own and checked (gzip,
/// BLAKE3 = its id, the disk reserve) as it arrives. Dropped before
/// [`Upload::finish`], it removes its file and fails the jobs waiting for it.
pub struct Upload {
    toolchains: Toolchains,
    archive_id: String,
    job_id: JobId,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    staged: PathBuf,
    check: ArchiveCheck,
    unchecked: u64,
    ended: bool,
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        self.unchecked += chunk.len() as u64;
        if self.unchecked >= RESERVE_CHECK_BYTES {
            self.toolchains.check_reserve().await?;
            self.unchecked = 0;
        }
        self.check.update(chunk);
        let file = self.file.as_mut().expect("an upload's file is there until it ends");
        file.write_all(chunk).await.map_err(|source| UploadError::Staging { path: self.staged.clone(), source })
    }

    /// The whole body has arrived: checks it, hands it to the cache, publishes it
    /// to the store, and lets every job waiting for it go on.
    pub async fn finish(mut self) -> Result<(), UploadError> {
        let staging = |source| UploadError::Staging { path: self.staged.clone(), source };
        let mut file = self.file.take().expect("an upload's file is there until it ends");
        file.flush().await.map_err(staging)?;
        // Durable before the cache adopts it: after a crash the cache trusts archives
        // on disk by name, so a truncated one must never get there.
        file.get_ref().sync_all().await.map_err(staging)?;
        drop(file);
        let check = std::mem::replace(&mut self.check, ArchiveCheck::new());
        let size = check.verify(&self.archive_id).map_err(|mismatch| {
            UploadError::Mismatch(match mismatch {
                ArchiveMismatch::NotGzip => "the archive is not a gzip stream".into(),
                ArchiveMismatch::WrongId { actual } => {
                    format!("the archive's BLAKE3 is {actual}, not the archive_id {}", self.archive_id)
                }
            })
        })?;
        let inner = &self.toolchains.inner;
        let store = AdoptToolchain { archive_id: self.archive_id.clone(), staged: self.staged.clone(), size };
        match inner.cache.send(store).await {
            Ok(Ok(())) => {}
            Ok(Err(e @ CacheError::NoRoom { .. })) => return Err(UploadError::NoRoom(e)),
            Ok(Err(e)) => return Err(UploadError::Cache(e)),
            Err(_) => return Err(UploadError::CacheGone),
        }
        self.ended = true;
        Stats::bump(&inner.stats.toolchain_uploads);
        inner.arrivals.arrived(&self.archive_id);
        if let Some(store) = &inner.store {
            store.publish(&self.archive_id);
        }
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let reason = format!("the upload by job {} failed", self.job_id);
        tracing::info!(archive_id = %self.archive_id, %reason, "jobs waiting for this toolchain fail");
        self.toolchains.fail(&self.archive_id, Source::Upload { uploader: self.job_id }, &reason);
        // Not adopted by the cache: the staged file goes (the cache renames it
        // away when it adopts it, so this finds nothing then).
        let staged = std::mem::take(&mut self.staged);
        actix::spawn(async move {
            if let Err(e) = tokio::fs::remove_file(&staged).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = ?staged, error = %ErrorChain(&e), "removing a failed upload's staged file failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
