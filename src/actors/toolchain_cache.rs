//! ToolchainCache: the compressed toolchain archives on disk, LRU-bounded by bytes.
//!
//! Archives are verified (BLAKE3) and staged by the web facade before they reach
//! this actor; it only decides what to keep, renames the staged file into place and
//! deletes what it evicts. Archives survive restarts: the directory is re-read at
//! startup.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;

use crate::lru::{ByteLru, NoRoom};
use crate::protocol::is_valid_archive_id;
use crate::stats::Stats;

pub struct ToolchainCache {
    dir: PathBuf,
    index: ByteLru,
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
        let mut index = ByteLru::new(budget);
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if is_valid_archive_id(&name) && meta.is_file() && index.make_room(meta.len()).is_ok() {
                drop(index.insert(name, meta.len()));
            } else {
                tracing::info!(path = ?entry.path(), "removing stray file from the toolchain cache");
                let _ = std::fs::remove_file(entry.path()).or_else(|_| std::fs::remove_dir_all(entry.path()));
            }
        }
        tracing::info!(archives = index.len(), bytes = index.used(), "toolchain cache loaded");
        Ok(ToolchainCache { dir: dir.to_owned(), index, stats })
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
pub struct StoreToolchain {
    pub archive_id: String,
    pub staged: PathBuf,
    pub size: u64,
}

impl Handler<StoreToolchain> for ToolchainCache {
    type Result = AtomicResponse<Self, Result<(), CacheError>>;

    fn handle(&mut self, msg: StoreToolchain, _: &mut Context<Self>) -> Self::Result {
        let target = self.path_of(&msg.archive_id);
        let evicted =
            if self.index.contains(&msg.archive_id) { Ok(Vec::new()) } else { self.index.make_room(msg.size) };
        let victims: Vec<PathBuf> = match evicted {
            Ok(ids) => ids.iter().map(|id| self.path_of(id)).collect(),
            Err(NoRoom { needed, budget }) => {
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
                tracing::info!(%archive_id, size, "toolchain archive stored");
                Stats::bump(&act.stats.toolchains_stored);
                drop(act.index.insert(archive_id, size));
                Ok(())
            }),
        ))
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
#[rtype(result = "crate::observe::StoreView")]
pub struct DescribeCache;

impl Handler<DescribeCache> for ToolchainCache {
    type Result = MessageResult<DescribeCache>;

    fn handle(&mut self, _: DescribeCache, _: &mut Context<Self>) -> Self::Result {
        MessageResult(crate::observe::StoreView::of(&self.index))
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
        let victims = self.index.make_room_best_effort(0);
        let freed = crate::observe::Freed { items: victims.len() as u64, bytes: before - self.index.used() };
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
