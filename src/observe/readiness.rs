//! Whether kiln can take jobs now (`/readyz`, `kiln_ready`): not while it drains,
//! not while its sandbox backend cannot make a sandbox, not while the data dir's
//! file system is below the disk reserve.
//!
//! `/healthz` says whether the process serves at all (a liveness probe restarts
//! it otherwise); `/readyz` says whether a scheduler, a load balancer or a
//! rollout should count on it for new jobs. Each reason is read here and only
//! here, so the endpoint, the metrics and the status page agree:
//!
//! - draining: [`Lifecycle::is_draining`], set the instant SIGTERM arrives;
//! - the sandbox backend: a [`BackendProbe`] the server builds for its backend
//!   (overlay: bubblewrap makes a user-namespace sandbox as a job uid, the check
//!   `kiln check` and the startup run; docker: the daemon answered the pool's last
//!   health check). Its answer is kept for [`PROBE_INTERVAL`], so probes cost one
//!   short process per interval however often kiln is asked;
//! - the disk: `statvfs(3)` of the data dir's (and the toolchain cache's) file
//!   system against [`DiskReserve`], read at every ask (a system call, no I/O).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::disk::{DiskReserve, FsSpace};
use super::lifecycle::Lifecycle;

/// A probe's answer is reused for this long.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A probe (or a `statvfs` of a hung network file system) that takes longer
/// than this counts as failed: a backend that slow cannot make sandboxes either.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Blocking: `Ok` if the backend can make a sandbox now, else why not. Run on
/// the blocking pool.
pub type BackendProbe = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// One reason kiln cannot take jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum NotReady {
    Draining,
    SandboxBackend(String),
    DiskReserve(String),
}

impl NotReady {
    /// Every reason's label, for metrics that list each one (0 or 1).
    pub const LABELS: [&'static str; 3] = ["draining", "sandbox_backend", "disk_reserve"];

    pub fn label(&self) -> &'static str {
        match self {
            NotReady::Draining => "draining",
            NotReady::SandboxBackend(_) => "sandbox_backend",
            NotReady::DiskReserve(_) => "disk_reserve",
        }
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Draining => f.write_str("draining: kiln is shutting down and takes no new jobs"),
            NotReady::SandboxBackend(why) => write!(f, "the sandbox backend cannot make a sandbox: {why}"),
            NotReady::DiskReserve(why) => write!(f, "below the disk reserve: {why}"),
        }
    }
}

/// What readiness is read from; shared by the operator endpoints.
pub struct Readiness {
    lifecycle: Arc<Lifecycle>,
    probe: BackendProbe,
    /// The data dir's file systems (build dir, toolchain cache).
    disk_paths: Vec<PathBuf>,
    reserve: DiskReserve,
    /// The last probe: when it ran and what it said. A tokio mutex, held across
    /// the probe, so concurrent asks share one probe.
    last_probe: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    pub fn new(lifecycle: Arc<Lifecycle>, probe: BackendProbe, disk_paths: Vec<PathBuf>, reserve: DiskReserve) -> Self {
        Readiness { lifecycle, probe, disk_paths, reserve, last_probe: tokio::sync::Mutex::new(None) }
    }

    /// Every reason kiln cannot take jobs now; empty: ready.
    pub async fn check(&self) -> Vec<NotReady> {
        let mut reasons = Vec::new();
        if self.lifecycle.is_draining() {
            reasons.push(NotReady::Draining);
        }
        if let Err(why) = self.backend().await {
            reasons.push(NotReady::SandboxBackend(why));
        }
        if let Err(why) = self.disk().await {
            reasons.push(NotReady::DiskReserve(why));
        }
        reasons
    }

    async fn backend(&self) -> Result<(), String> {
        let mut last = self.last_probe.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < PROBE_INTERVAL {
                return answer.clone();
            }
        }
        let probe = self.probe.clone();
        let answer = match blocking(move || probe()).await {
            Ok(answer) => answer,
            Err(why) => Err(why),
        };
        if let Err(why) = &answer {
            tracing::warn!(error = %why, "readiness: the sandbox backend cannot make a sandbox");
        }
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn disk(&self) -> Result<(), String> {
        let (paths, reserve) = (self.disk_paths.clone(), self.reserve);
        blocking(move || {
            for path in &paths {
                let space = FsSpace::of(path).map_err(|e| format!("cannot read the file system of {path:?}: {e}"))?;
                below_reserve(&reserve, &space).map_err(|why| format!("{path:?}: {why}"))?;
            }
            Ok(())
        })
        .await?
    }
}

/// `Err` if `space` has fewer free bytes or inodes than the reserve keeps.
fn below_reserve(reserve: &DiskReserve, space: &FsSpace) -> Result<(), String> {
    let (bytes, inodes) = reserve.reserved(space);
    if space.free_bytes < bytes || space.free_inodes < inodes {
        return Err(format!(
            "{} bytes and {} inodes free, kiln.disk_reserve keeps {bytes} bytes and {inodes} inodes",
            space.free_bytes, space.free_inodes
        ));
    }
    Ok(())
}

/// Runs `f` on the blocking pool, bounded by [`PROBE_TIMEOUT`].
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("the check failed: {e}")),
        Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const RESERVE: DiskReserve = DiskReserve { percent: 0, min_free_bytes: 0, min_free_inodes: 0 };

    fn readiness(broken: Arc<AtomicBool>, probes: Arc<AtomicUsize>, reserve: DiskReserve) -> Readiness {
        let probe: BackendProbe = Arc::new(move || {
            probes.fetch_add(1, Ordering::SeqCst);
            match broken.load(Ordering::SeqCst) {
                true => Err("bwrap: exit status 1".to_owned()),
                false => Ok(()),
            }
        });
        Readiness::new(Arc::new(Lifecycle::default()), probe, vec![std::env::temp_dir()], reserve)
    }

    #[actix_rt::test]
    async fn each_reason_is_reported_and_probes_are_reused_within_the_interval() {
        let (broken, probes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let ready = readiness(broken.clone(), probes.clone(), RESERVE);
        assert_eq!(ready.check().await, vec![]);
        broken.store(true, Ordering::SeqCst);
        // Within the interval the healthy answer stands: one probe so far.
        assert_eq!(ready.check().await, vec![]);
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        *ready.last_probe.lock().await = None;
        let reasons = ready.check().await;
        assert!(
            matches!(&reasons[..], [NotReady::SandboxBackend(why)] if why.contains("exit status 1")),
            "{reasons:?}"
        );
        ready.lifecycle.begin_drain(true);
        let labels: Vec<_> = ready.check().await.iter().map(NotReady::label).collect();
        assert_eq!(labels, ["draining", "sandbox_backend"]);
    }

    #[actix_rt::test]
    async fn a_file_system_below_the_reserve_is_not_ready() {
        let unreachable = DiskReserve { min_free_bytes: u64::MAX, ..RESERVE };
        let ready = readiness(Arc::default(), Arc::default(), unreachable);
        let reasons = ready.check().await;
        assert!(
            matches!(&reasons[..], [NotReady::DiskReserve(why)] if why.contains("kiln.disk_reserve")),
            "{reasons:?}"
        );
        assert!(reasons[0].to_string().starts_with("below the disk reserve: "), "{}", reasons[0]);
    }

    #[test]
    fn exactly_at_the_reserve_is_still_ready() {
        let reserve = DiskReserve { percent: 0, min_free_bytes: 100, min_free_inodes: 10 };
        let space = |free_bytes, free_inodes| FsSpace { total_bytes: 1000, free_bytes, total_inodes: 100, free_inodes };
        assert!(below_reserve(&reserve, &space(100, 10)).is_ok());
        assert!(below_reserve(&reserve, &space(99, 10)).is_err());
        assert!(below_reserve(&reserve, &space(100, 9)).is_err());
    }
}
