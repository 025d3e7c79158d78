//! Unpacker: unpacks each toolchain archive once into a root that sandboxes mount
//! read-only (as an overlay's lower layer).
//!
//! Single-flight per toolchain: the first request starts the unpack on tokio's
//! blocking pool, later ones for the same toolchain wait for that result. Different
//! toolchains unpack in parallel; no lock is held while one unpacks. Roots are
//! LRU-bounded by bytes and never evicted while a sandbox holds their lease.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use flate2::read::MultiGzDecoder;
use tokio::sync::oneshot;

use super::toolchain_cache::ArchiveLease;
use crate::archive::{extract_tar, ArchiveError, ExtractLimits};
use crate::lru::ByteLru;
use crate::report::ErrorChain;
use crate::sandbox::ToolchainRoot;
use crate::stats::Stats;

/// Why a toolchain could not be unpacked. Cloned to every job waiting for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unpacking toolchain {archive_id} failed: {reason}")]
pub struct UnpackFailed {
    pub archive_id: String,
    pub reason: String,
    /// The archive itself is bad (as opposed to the server's disk).
    pub bad_archive: bool,
}

type Waiter = oneshot::Sender<Result<ToolchainRoot, UnpackFailed>>;

pub struct Unpacker {
    dir: PathBuf,
    limits: ExtractLimits,
    index: ByteLru,
    in_flight: HashMap<String, Vec<Waiter>>,
    next_tmp: AtomicU64,
    stats: Arc<Stats>,
}

impl Unpacker {
    /// `dir` must be empty or absent: roots of a previous run are swept at startup.
    pub fn new(dir: PathBuf, budget: u64, limits: ExtractLimits, stats: Arc<Stats>) -> Self {
        Unpacker {
            dir,
            limits,
            index: ByteLru::new(budget),
            in_flight: HashMap::new(),
            next_tmp: AtomicU64::new(0),
            stats,
        }
    }

    fn root_of(&mut self, archive_id: &str) -> Option<ToolchainRoot> {
        let lease = self.index.lease(archive_id)?;
        Some(ToolchainRoot { archive_id: archive_id.to_owned(), path: self.dir.join(archive_id), lease })
    }
}

impl Actor for Unpacker {
    type Context = Context<Self>;
}

/// Returns the unpacked root of `archive`, unpacking it first if needed.
#[derive(Message)]
#[rtype(result = "Result<ToolchainRoot, UnpackFailed>")]
pub struct UnpackToolchain {
    pub archive: ArchiveLease,
}

impl Handler<UnpackToolchain> for Unpacker {
    type Result = ResponseFuture<Result<ToolchainRoot, UnpackFailed>>;

    fn handle(&mut self, msg: UnpackToolchain, ctx: &mut Context<Self>) -> Self::Result {
        let archive_id = msg.archive.archive_id.clone();
        if let Some(root) = self.root_of(&archive_id) {
            return Box::pin(async move { Ok(root) });
        }
        let (tx, rx) = oneshot::channel();
        let waiters = self.in_flight.entry(archive_id.clone()).or_default();
        waiters.push(tx);
        if waiters.len() == 1 {
            Stats::bump(&self.stats.unpacks);
            let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
            let staging = self.dir.join(format!(".unpacking-{archive_id}-{n}"));
            let target = self.dir.join(&archive_id);
            let limits = self.limits;
            let me = ctx.address();
            actix_rt::spawn(async move {
                let archive = msg.archive;
                tracing::info!(archive_id = %archive.archive_id, "unpacking toolchain");
                let started = std::time::Instant::now();
                let result = tokio::task::spawn_blocking(move || unpack(&archive.path, &staging, &target, &limits))
                    .await
                    .unwrap_or_else(|e| {
                        Err(UnpackError::Io(std::io::Error::other(format!("unpack task failed: {e}"))))
                    });
                tracing::info!(%archive_id, elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "unpack finished");
                me.do_send(UnpackFinished { archive_id, result });
            });
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(UnpackFailed {
                    archive_id: String::new(),
                    reason: "the unpacker stopped".into(),
                    bad_archive: false,
                })
            })
        })
    }
}

/// Internal: an unpack started by [`UnpackToolchain`] ended.
#[derive(Message)]
#[rtype(result = "()")]
struct UnpackFinished {
    archive_id: String,
    result: Result<u64, UnpackError>,
}

impl Handler<UnpackFinished> for Unpacker {
    type Result = ();

    fn handle(&mut self, msg: UnpackFinished, _: &mut Context<Self>) {
        let waiters = self.in_flight.remove(&msg.archive_id).unwrap_or_default();
        let answer = match msg.result {
            Ok(size) => {
                // The waiting jobs need this root whatever the budget says: evict
                // every idle root that has to go, and tolerate the overshoot while
                // roots stay in use (the next unpack evicts them once idle).
                let evicted = self.index.make_room_best_effort(size);
                self.evict(evicted);
                if self.index.used() + size > self.index.budget() {
                    tracing::warn!(archive_id = %msg.archive_id, used = self.index.used(), size, budget = self.index.budget(), "unpacked roots over budget while in use");
                }
                drop(self.index.insert(msg.archive_id.clone(), size));
                match self.root_of(&msg.archive_id) {
                    Some(root) => Ok(root),
                    None => unreachable_failure(&msg.archive_id),
                }
            }
            Err(e) => {
                tracing::error!(archive_id = %msg.archive_id, error = %ErrorChain(&e), "toolchain unpack failed");
                Err(UnpackFailed {
                    archive_id: msg.archive_id.clone(),
                    bad_archive: e.is_bad_archive(),
                    reason: ErrorChain(&e).to_string(),
                })
            }
        };
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
    }
}

fn unreachable_failure(archive_id: &str) -> Result<ToolchainRoot, UnpackFailed> {
    Err(UnpackFailed {
        archive_id: archive_id.to_owned(),
        reason: "root vanished from the index".into(),
        bad_archive: false,
    })
}

impl Unpacker {
    fn evict(&mut self, ids: Vec<String>) {
        for id in ids {
            Stats::bump(&self.stats.roots_evicted);
            let path = self.dir.join(&id);
            tracing::info!(archive_id = %id, "evicting unpacked toolchain root");
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(?path, error = %e, "removing an evicted root failed");
                }
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum UnpackError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl UnpackError {
    fn is_bad_archive(&self) -> bool {
        matches!(self, UnpackError::Archive(e) if !matches!(e, ArchiveError::OpenRoot { .. } | ArchiveError::Write { .. }))
    }
}

/// Blocking: gunzip + untar into `staging`, then rename it to `target`.
/// Returns the unpacked size in bytes.
fn unpack(archive: &Path, staging: &Path, target: &Path, limits: &ExtractLimits) -> Result<u64, UnpackError> {
    std::fs::create_dir_all(staging)?;
    let result = (|| {
        let file = File::open(archive)?;
        // Multi-member: sccache's client writes the archive with a parallel gzip.
        let stats = extract_tar(MultiGzDecoder::new(BufReader::new(file)), staging, limits)?;
        // A root forgotten after failures (ForgetRoot) may still be there: move it
        // aside (jobs still running in it keep their open files) and remove it.
        if std::fs::symlink_metadata(target).is_ok() {
            let aside = staging.with_extension("stale");
            std::fs::rename(target, &aside)?;
            if let Err(e) = std::fs::remove_dir_all(&aside).or_else(|_| std::fs::remove_file(&aside)) {
                tracing::warn!(path = ?aside, error = %e, "removing a forgotten root failed");
            }
        }
        std::fs::rename(staging, target)?;
        Ok(stats.bytes)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(staging);
    }
    result
}

/// Forgets the unpacked root of a toolchain whose jobs keep failing (see
/// [`crate::quarantine`]): the next job unpacks it afresh. Sandboxes still using
/// the old directory keep it; the next unpack moves it aside before renaming the
/// new root into place, and the startup sweep empties `roots/` anyway.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetRoot {
    pub archive_id: String,
}

impl Handler<ForgetRoot> for Unpacker {
    type Result = ();

    fn handle(&mut self, msg: ForgetRoot, _: &mut Context<Self>) {
        if self.index.remove(&msg.archive_id) {
            Stats::bump(&self.stats.toolchain_reunpacks);
            tracing::warn!(archive_id = %msg.archive_id, "forgetting the unpacked root of a failing toolchain; the next job unpacks it again");
        }
    }
}

/// Which roots are unpacked, and which are being unpacked.
#[derive(Message)]
#[rtype(result = "crate::observe::StoreView")]
pub struct DescribeRoots;

impl Handler<DescribeRoots> for Unpacker {
    type Result = MessageResult<DescribeRoots>;

    fn handle(&mut self, _: DescribeRoots, _: &mut Context<Self>) -> Self::Result {
        let mut view = crate::observe::StoreView::of(&self.index);
        view.in_progress = self.in_flight.keys().cloned().collect();
        MessageResult(view)
    }
}

/// Garbage collection: removes every unpacked root no job or sandbox holds (the
/// next job of that toolchain unpacks it again). Answers what it removed.
#[derive(Message)]
#[rtype(result = "crate::observe::Freed")]
pub struct EvictIdleRoots;

impl Handler<EvictIdleRoots> for Unpacker {
    type Result = MessageResult<EvictIdleRoots>;

    fn handle(&mut self, _: EvictIdleRoots, _: &mut Context<Self>) -> Self::Result {
        let before = self.index.used();
        let victims = self.index.make_room_best_effort(self.index.budget());
        let freed = crate::observe::Freed { items: victims.len() as u64, bytes: before - self.index.used() };
        self.evict(victims);
        MessageResult(freed)
    }
}
