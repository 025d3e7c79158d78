//! Unpacker: unpacks each toolchain archive once into a root that sandboxes mount
//! read-only (as an overlay's lower layer).
//!
//! Single-flight per toolchain: the first request starts the unpack on tokio's
//! blocking pool, later ones for the same toolchain wait for that result. Different
//! toolchains unpack in parallel; no lock is held while one unpacks. Roots are
//! LRU-bounded by bytes and by inodes (a root of 50,000 empty files is ~2 MB but
//! 50,000 inodes: issue 27) and never evicted while a sandbox holds their lease.
//!
//! An unpack never takes the data dir's file system below its reserve
//! ([`DiskReserve`]): it is refused when the reserve is already reached, and bounded
//! while it runs by what is above it (the archive's entries by the free inodes, its
//! bytes by the free bytes). A refused unpack fails its jobs with `no_space` (503:
//! another server, or later, may take them) and evicts every idle root.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use flate2::read::MultiGzDecoder;
use nix::errno::Errno;
use tokio::sync::oneshot;

use super::toolchain_cache::ArchiveLease;
use crate::archive::{extract_tar, ArchiveError, ExtractLimits};
use crate::lru::{Cost, Lru};
use crate::observe::{BelowReserve, DiskReserve, DiskView, FsSpace};
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
    /// The data dir's file system is full, or the unpack would have taken it below
    /// its reserve: neither the archive's fault nor a failure of kiln's machinery.
    pub no_space: bool,
}

type Waiter = oneshot::Sender<Result<ToolchainRoot, UnpackFailed>>;

pub struct Unpacker {
    dir: PathBuf,
    limits: ExtractLimits,
    index: Lru,
    reserve: DiskReserve,
    in_flight: HashMap<String, Vec<Waiter>>,
    next_tmp: AtomicU64,
    stats: Arc<Stats>,
}

impl Unpacker {
    /// `dir` must be empty or absent: roots of a previous run are swept at startup.
    /// Roots are bounded by `budget` bytes only, and no reserve is kept, until
    /// [`Unpacker::with_inode_budget`] and [`Unpacker::with_reserve`] say otherwise.
    pub fn new(dir: PathBuf, budget: u64, limits: ExtractLimits, stats: Arc<Stats>) -> Self {
        Unpacker {
            dir,
            limits,
            index: Lru::new(Cost::bytes_only(budget)),
            reserve: DiskReserve::NONE,
            in_flight: HashMap::new(),
            next_tmp: AtomicU64::new(0),
            stats,
        }
    }

    /// Bounds the inodes of all roots together (`kiln.toolchains.unpacked_inodes`).
    pub fn with_inode_budget(mut self, inodes: u64) -> Self {
        self.index = Lru::new(Cost { bytes: self.index.budget().bytes, inodes });
        self
    }

    /// Keeps `reserve` free on the roots' file system (`kiln.disk_reserve`).
    pub fn with_reserve(mut self, reserve: DiskReserve) -> Self {
        self.reserve = reserve;
        self
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
            let job = UnpackJob { staging, target, limits: self.limits, reserve: self.reserve };
            let me = ctx.address();
            actix_rt::spawn(async move {
                let archive = msg.archive;
                tracing::info!(archive_id = %archive.archive_id, "unpacking toolchain");
                let started = std::time::Instant::now();
                let result = tokio::task::spawn_blocking(move || job.run(&archive.path)).await.unwrap_or_else(|e| {
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
                    no_space: false,
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
    result: Result<Cost, UnpackError>,
}

impl Handler<UnpackFinished> for Unpacker {
    type Result = ();

    fn handle(&mut self, msg: UnpackFinished, _: &mut Context<Self>) {
        let waiters = self.in_flight.remove(&msg.archive_id).unwrap_or_default();
        let answer = match msg.result {
            Ok(cost) => {
                // The waiting jobs need this root whatever the budget says: evict
                // every idle root that has to go, and tolerate the overshoot while
                // roots stay in use (the next unpack evicts them once idle).
                let evicted = self.index.make_room_best_effort(cost);
                self.evict(evicted);
                let (used, budget) = (self.index.used(), self.index.budget());
                if !(used + cost).fits(budget) {
                    tracing::warn!(
                        archive_id = %msg.archive_id,
                        used_bytes = used.bytes,
                        used_inodes = used.inodes,
                        bytes = cost.bytes,
                        inodes = cost.inodes,
                        budget_bytes = budget.bytes,
                        budget_inodes = budget.inodes,
                        "unpacked roots over budget while in use"
                    );
                }
                drop(self.index.insert(msg.archive_id.clone(), cost));
                match self.root_of(&msg.archive_id) {
                    Some(root) => Ok(root),
                    None => unreachable_failure(&msg.archive_id),
                }
            }
            Err(e) => {
                let no_space = e.is_no_space();
                if no_space {
                    if matches!(e, UnpackError::Reserve(_)) {
                        Stats::bump(&self.stats.disk_reserve_refusals);
                    }
                    // Idle roots are the space kiln can give back: the next try (or
                    // the next toolchain) finds it free.
                    let idle = self.index.evict_idle();
                    tracing::error!(archive_id = %msg.archive_id, error = %ErrorChain(&e), evicting_idle_roots = idle.len(), "toolchain unpack refused: no room on the data dir's file system");
                    self.evict(idle);
                } else {
                    tracing::error!(archive_id = %msg.archive_id, error = %ErrorChain(&e), "toolchain unpack failed");
                }
                Err(UnpackFailed {
                    archive_id: msg.archive_id.clone(),
                    bad_archive: e.is_bad_archive(),
                    no_space,
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
        no_space: false,
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
    #[error(transparent)]
    Reserve(#[from] BelowReserve),
}

impl UnpackError {
    fn is_bad_archive(&self) -> bool {
        !self.is_no_space()
            && matches!(self, UnpackError::Archive(e) if !matches!(e, ArchiveError::OpenRoot { .. } | ArchiveError::Write { .. }))
    }

    /// The file system is full (ENOSPC, EDQUOT) or at its reserve.
    fn is_no_space(&self) -> bool {
        let full = |errno: Option<i32>| {
            errno.is_some_and(|errno| [Errno::ENOSPC as i32, Errno::EDQUOT as i32].contains(&errno))
        };
        match self {
            UnpackError::Reserve(_) => true,
            UnpackError::Io(e) => full(e.raw_os_error()),
            UnpackError::Archive(ArchiveError::Write { source, .. }) => full(source.raw_os_error()),
            UnpackError::Archive(ArchiveError::Io { source, .. }) => full(Some(*source as i32)),
            UnpackError::Archive(_) => false,
        }
    }
}

/// One unpack, run on the blocking pool.
struct UnpackJob {
    staging: PathBuf,
    target: PathBuf,
    limits: ExtractLimits,
    reserve: DiskReserve,
}

/// What a refusal says the unpack was doing.
const UNPACKING: &str = "unpacking a toolchain";

impl UnpackJob {
    /// Blocking: gunzip + untar into `staging`, then rename it to `target`.
    /// Returns what the root costs: its file bytes and its inodes (the root
    /// directory, and every entry and parent directory extraction made).
    fn run(&self, archive: &Path) -> Result<Cost, UnpackError> {
        let (staging, target) = (&self.staging, &self.target);
        let dir = staging.parent().unwrap_or(staging);
        // The staging directory is the first inode: refused if even that is
        // below the reserve, else the archive may take what is above it and no more.
        std::fs::create_dir_all(dir)?;
        let before = FsSpace::of(dir)?;
        let headroom = self.reserve.check(&before, dir, UNPACKING, 0, 1)?;
        let limits = ExtractLimits {
            max_entries: self.limits.max_entries.min(headroom.inodes - 1),
            max_bytes: self.limits.max_bytes.min(headroom.bytes),
            ..self.limits
        };
        // A limit the reserve lowered, hit: what the archive needed, in words.
        let over_reserve = |e: &ArchiveError| match e {
            ArchiveError::TooManyEntries { .. } if limits.max_entries < self.limits.max_entries => {
                Some(format!("more than the {} inodes above them", headroom.inodes))
            }
            ArchiveError::TooLarge { .. } if limits.max_bytes < self.limits.max_bytes => {
                Some(format!("more than the {} bytes above them", headroom.bytes))
            }
            _ => None,
        };
        std::fs::create_dir_all(staging)?;
        let result = (|| {
            let file = File::open(archive)?;
            // Multi-member: sccache's client writes the archive with a parallel gzip.
            let stats = match extract_tar(MultiGzDecoder::new(BufReader::new(file)), staging, &limits) {
                Err(e) => match over_reserve(&e) {
                    Some(needed) => return Err(self.reserve.refusal(&before, dir, UNPACKING, needed).into()),
                    None => return Err(e.into()),
                },
                Ok(stats) => stats,
            };
            // Blocks and directories cost more than file bytes: read back what is
            // left, and give the space back rather than stay below the reserve.
            let after = FsSpace::of(dir)?;
            self.reserve.check(&after, dir, UNPACKING, 0, 0)?;
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
            Ok(Cost { bytes: stats.bytes, inodes: stats.entries + 1 })
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(staging);
        }
        result
    }
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
#[rtype(result = "crate::observe::CacheView")]
pub struct DescribeRoots;

impl Handler<DescribeRoots> for Unpacker {
    type Result = ResponseFuture<crate::observe::CacheView>;

    fn handle(&mut self, _: DescribeRoots, _: &mut Context<Self>) -> Self::Result {
        let mut view = crate::observe::CacheView::of(&self.index);
        view.in_progress = self.in_flight.keys().cloned().collect();
        let (dir, reserve) = (self.dir.clone(), self.reserve);
        Box::pin(async move {
            // statvfs on the blocking pool: the data dir may be a network mount.
            // Before the first unpack `roots/` may not exist yet: its parent then.
            let space = tokio::task::spawn_blocking(move || {
                FsSpace::of(&dir).or_else(|e| dir.parent().map_or(Err(e), FsSpace::of))
            })
            .await;
            if let Ok(Ok(space)) = space {
                let (reserved_bytes, reserved_inodes) = reserve.reserved(&space);
                view.disk = Some(DiskView { space, reserved_bytes, reserved_inodes });
            }
            view
        })
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
        let victims = self.index.evict_idle();
        let freed = crate::observe::Freed { items: victims.len() as u64, bytes: (before - self.index.used()).bytes };
        self.evict(victims);
        MessageResult(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip'd tar of `files` empty files in one directory.
    fn archive_of(dir: &Path, files: u32) -> PathBuf {
        let mut tar = tar::Builder::new(Vec::new());
        for i in 0..files {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_path(format!("d/f{i}")).unwrap();
            header.set_size(0);
            header.set_cksum();
            tar.append(&header, &b""[..]).unwrap();
        }
        let path = dir.join("archive.tar.gz");
        let mut gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap();
        path
    }

    fn job(dir: &Path, reserve: DiskReserve) -> UnpackJob {
        let limits = ExtractLimits { max_entries: 100_000, max_bytes: 1 << 30, max_depth: 32 };
        UnpackJob { staging: dir.join("roots/.unpacking"), target: dir.join("roots/tc"), limits, reserve }
    }

    #[test]
    fn a_root_costs_its_bytes_and_every_inode_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let archive = archive_of(dir.path(), 300);
        let cost = job(dir.path(), DiskReserve::NONE).run(&archive).unwrap();
        // 300 files, the directory `d` no entry listed, and the root itself.
        assert_eq!(cost, Cost { bytes: 0, inodes: 302 });
        assert!(dir.path().join("roots/tc/d/f299").is_file());
    }

    /// The reserve as the unpack meets it: 2,000 inodes above it on this host's
    /// temporary file system (whatever else runs there: the archive is ten times
    /// that), and an archive of 20,000 files is refused as it goes, not after.
    #[test]
    fn an_unpack_stops_at_the_reserve_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let archive = archive_of(dir.path(), 20_000);
        std::fs::create_dir_all(dir.path().join("roots")).unwrap();
        let space = FsSpace::of(dir.path()).unwrap();
        if space.total_inodes == 0 {
            return; // no inode count to reserve (btrfs)
        }
        let reserve = DiskReserve { percent: 0, min_free_bytes: 0, min_free_inodes: space.free_inodes - 2_000 };
        let err = job(dir.path(), reserve).run(&archive).unwrap_err();
        assert!(matches!(err, UnpackError::Reserve(_)), "{err}");
        assert!(err.is_no_space() && !err.is_bad_archive());
        assert!(err.to_string().contains("kiln.disk_reserve"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path().join("roots")).unwrap().count(), 0, "the partial root is removed");
    }

    #[test]
    fn a_full_disk_is_no_space_not_a_bad_archive() {
        let full =
            UnpackError::Archive(ArchiveError::Io { op: "create file", path: "/f".into(), source: Errno::ENOSPC });
        assert!(full.is_no_space() && !full.is_bad_archive());
        let write = UnpackError::Archive(ArchiveError::Write {
            path: "/f".into(),
            source: std::io::Error::from_raw_os_error(Errno::EDQUOT as i32),
        });
        assert!(write.is_no_space());
        let bad = UnpackError::Archive(ArchiveError::TooManyEntries { limit: 3 });
        assert!(bad.is_bad_archive() && !bad.is_no_space());
    }
}
