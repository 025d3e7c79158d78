//! ToolchainCache: the compressed toolchain archives on disk, LRU-bounded by bytes.
//!
//! Archives are verified (BLAKE3) and staged by the web facade before they reach
//! this actor; it only decides what to keep, renames the staged file into place and
//! deletes what it evicts. Archives survive restarts: the directory is re-read at
//! startup. It also keeps the cache's file system's reserve ([`DiskReserve`]): the
//! facade asks [`CheckDiskReserve`] before an upload and as it streams in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;

use crate::lru::{Cost, Lru, NoRoom};
use crate::observe::{BelowReserve, DiskReserve, FsSpace};
use crate::protocol::is_valid_archive_id;
use crate::stats::Stats;

pub struct ToolchainCache {
    dir: PathBuf,
    index: Lru,
    reserve: DiskReserve,
    stats: Arc<Stats>,
}

/// A toolchain archive pinned in the cache while a job needs it.
#[derive(Debug, Clone)]
pub struct ArchiveLease {
    pub archive_id: String,
    pub path: PathBuf,
    _lease: Arc<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("toolchain archive of {needed} bytes does not fit the cache ({budget} bytes, the rest in use)")]
    NoRoom { needed: u64, budget: u64 },
    #[error("moving the archive into the cache at {path:?} failed")]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ToolchainCache {
    /// Indexes the archives a previous run left in `dir` (blocking; called at startup).
    pub fn load(dir: &Path, budget: u64, stats: Arc<Stats>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut index = Lru::new(Cost::bytes_only(budget));
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if is_valid_archive_id(&name) && meta.is_file() && index.make_room(Cost::file(meta.len())).is_ok() {
                drop(index.insert(name, Cost::file(meta.len())));
            } else {
                tracing::info!(path = ?entry.path(), "removing stray file from the toolchain cache");
                let _ = std::fs::remove_file(entry.path()).or_else(|_| std::fs::remove_dir_all(entry.path()));
            }
        }
        tracing::info!(archives = index.len(), bytes = index.used().bytes, "toolchain cache loaded");
        Ok(ToolchainCache { dir: dir.to_owned(), index, reserve: DiskReserve::NONE, stats })
    }

    /// Keeps `reserve` free on the cache's file system (`kiln.disk_reserve`);
    /// warns at once if it is already below it.
    pub fn with_reserve(mut self, reserve: DiskReserve) -> Self {
        self.reserve = reserve;
        match FsSpace::of(&self.dir).map(|space| reserve.check(&space, &self.dir, "storing toolchains", 0, 1)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "toolchain uploads and unpacks will be refused until space is freed")
            }
            Err(e) => {
                tracing::warn!(path = ?self.dir, error = %e, "cannot read the free space of the toolchain cache's file system")
            }
        }
        self
    }

    fn path_of(&self, archive_id: &str) -> PathBuf {
        self.dir.join(archive_id)
    }
}

impl Actor for ToolchainCache {
    type Context = Context<Self>;
}

/// Whether the archive is cached (assign_job's `need_toolchain`).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct HasToolchain {
    pub archive_id: String,
}

impl Handler<HasToolchain> for ToolchainCache {
    type Result = bool;

    fn handle(&mut self, msg: HasToolchain, _: &mut Context<Self>) -> bool {
        self.index.lease(&msg.archive_id).is_some()
    }
}

/// Adopts a verified archive staged at `staged` (same file system as the cache).
#[derive(Message)]
#[rtype(result = "Result<(), CacheError>")]
pub struct AdoptToolchain {
    pub archive_id: String,
    pub staged: PathBuf,
    pub size: u64,
}

impl Handler<AdoptToolchain> for ToolchainCache {
    type Result = AtomicResponse<Self, Result<(), CacheError>>;

    fn handle(&mut self, msg: AdoptToolchain, _: &mut Context<Self>) -> Self::Result {
        let target = self.path_of(&msg.archive_id);
        let evicted = if self.index.contains(&msg.archive_id) {
            Ok(Vec::new())
        } else {
            self.index.make_room(Cost::file(msg.size))
        };
        let victims: Vec<PathBuf> = match evicted {
            Ok(ids) => ids.iter().map(|id| self.path_of(id)).collect(),
            Err(NoRoom { needed, budget }) => {
                let (needed, budget) = (needed.bytes, budget.bytes);
                let staged = msg.staged;
                return AtomicResponse::new(Box::pin(
                    async move {
                        let _ = tokio::fs::remove_file(&staged).await;
                        Err(CacheError::NoRoom { needed, budget })
                    }
                    .into_actor(self),
                ));
            }
        };
        for victim in &victims {
            tracing::info!(path = ?victim, "evicting toolchain archive");
            Stats::bump(&self.stats.toolchains_evicted);
        }
        // Atomic: no other message sees the index until the file is in place.
        AtomicResponse::new(Box::pin(
            async move {
                for victim in victims {
                    let _ = tokio::fs::remove_file(victim).await;
                }
                tokio::fs::rename(&msg.staged, &target)
                    .await
                    .map_err(|source| CacheError::Rename { path: target, source })?;
                Ok((msg.archive_id, msg.size))
            }
            .into_actor(self)
            .map(|result, act, _| {
                let (archive_id, size) = result?;
                tracing::info!(%archive_id, size, "toolchain archive cached");
                Stats::bump(&act.stats.toolchains_stored);
                drop(act.index.insert(archive_id, Cost::file(size)));
                Ok(())
            }),
        ))
    }
}

/// Whether `bytes` more (and one inode) fit on the cache's file system above its
/// reserve. The facade asks before it stages an upload and again every few MiB
/// while it streams in, so an upload never takes the disk below the reserve.
#[derive(Message)]
#[rtype(result = "Result<(), BelowReserve>")]
pub struct CheckDiskReserve {
    pub bytes: u64,
}

impl Handler<CheckDiskReserve> for ToolchainCache {
    type Result = ResponseFuture<Result<(), BelowReserve>>;

    fn handle(&mut self, msg: CheckDiskReserve, _: &mut Context<Self>) -> Self::Result {
        let (dir, reserve, stats) = (self.dir.clone(), self.reserve, self.stats.clone());
        Box::pin(async move {
            // statvfs on the blocking pool: the cache may be on a network mount.
            let probe = dir.clone();
            let space = match tokio::task::spawn_blocking(move || FsSpace::of(&probe)).await {
                Ok(Ok(space)) => space,
                // Unreadable: let the upload go on; a full disk still fails its write.
                Ok(Err(e)) => {
                    tracing::warn!(path = ?dir, error = %e, "cannot read the free space of the toolchain cache's file system");
                    return Ok(());
                }
                Err(_) => return Ok(()),
            };
            reserve.check(&space, &dir, "storing a toolchain upload", msg.bytes, 1).map(drop).inspect_err(|e| {
                Stats::bump(&stats.disk_reserve_refusals);
                tracing::error!(error = %e, "toolchain upload refused: no room on the cache's file system");
            })
        })
    }
}

/// Pins an archive for a job; `None` if it is not cached.
#[derive(Message)]
#[rtype(result = "Option<ArchiveLease>")]
pub struct CheckoutToolchain {
    pub archive_id: String,
}

impl Handler<CheckoutToolchain> for ToolchainCache {
    type Result = Option<ArchiveLease>;

    fn handle(&mut self, msg: CheckoutToolchain, _: &mut Context<Self>) -> Self::Result {
        let lease = self.index.lease(&msg.archive_id)?;
        Some(ArchiveLease { path: self.path_of(&msg.archive_id), archive_id: msg.archive_id, _lease: lease })
    }
}

/// Forgets an archive that turned out to be unusable (it does not unpack), so the
/// next job's assign_job asks for it again instead of failing on it forever.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DiscardToolchain {
    pub archive_id: String,
}

impl Handler<DiscardToolchain> for ToolchainCache {
    type Result = ();

    fn handle(&mut self, msg: DiscardToolchain, _: &mut Context<Self>) {
        if self.index.remove(&msg.archive_id) {
            tracing::warn!(archive_id = %msg.archive_id, "discarding a toolchain archive that does not unpack");
            let path = self.path_of(&msg.archive_id);
            actix_rt::spawn(async move {
                let _ = tokio::fs::remove_file(path).await;
            });
        }
    }
}

/// Which archives are cached (for the status page and metrics).
#[derive(Message)]
#[rtype(result = "crate::observe::CacheView")]
pub struct DescribeCache;

impl Handler<DescribeCache> for ToolchainCache {
    type Result = MessageResult<DescribeCache>;

    fn handle(&mut self, _: DescribeCache, _: &mut Context<Self>) -> Self::Result {
        MessageResult(crate::observe::CacheView::of(&self.index))
    }
}

/// Garbage collection: evicts unused archives until the cache is within its
/// budget (it normally is: stores evict as they go). Answers what it removed.
#[derive(Message)]
#[rtype(result = "crate::observe::Freed")]
pub struct TrimCache;

impl Handler<TrimCache> for ToolchainCache {
    type Result = MessageResult<TrimCache>;

    fn handle(&mut self, _: TrimCache, _: &mut Context<Self>) -> Self::Result {
        let before = self.index.used();
        let victims = self.index.make_room_best_effort(Cost::default());
        let freed = crate::observe::Freed { items: victims.len() as u64, bytes: (before - self.index.used()).bytes };
        for id in victims {
            Stats::bump(&self.stats.toolchains_evicted);
            let path = self.path_of(&id);
            tracing::info!(archive_id = %id, "gc: evicting toolchain archive over budget");
            actix_rt::spawn(async move {
                let _ = tokio::fs::remove_file(path).await;
            });
        }
        MessageResult(freed)
    }
}
