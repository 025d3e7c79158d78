//! [`Ops`]: what the operator endpoints read, and [`Snapshot`]: one reading of it,
//! gathered by asking each actor (bounded in time: a busy actor shows as
//! "unavailable" rather than stalling a scrape).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use serde::{Deserialize, Serialize};

use super::activity::{BuilderView, ErrorRecord, JobRecord};
use super::lifecycle::Lifecycle;
use super::observer::Observer;
use super::views::{Freed, PoolView, StoreView};
use crate::actors::{
    DescribeCache, DescribePool, DescribeRoots, DiscardIdle, EvictIdleRoots, SandboxPool, ToolchainCache, TrimCache,
    Unpacker,
};
use crate::quarantine::{Quarantine, ToolchainHealth};
use crate::scheduler::{LinkHealth, SharedLinkHealth};
use crate::stats::{Stats, StatsSnapshot};

/// How long a reading waits for one actor's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The actors and shared state the operator endpoints read.
pub struct Ops {
    pub observer: Arc<Observer>,
    pub lifecycle: Arc<Lifecycle>,
    pub stats: Arc<Stats>,
    pub cache: Addr<ToolchainCache>,
    pub unpacker: Addr<Unpacker>,
    pub pool: Addr<SandboxPool>,
    pub backend: &'static str,
    pub builders: usize,
    pub link_health: Option<SharedLinkHealth>,
    pub quarantine: Arc<Quarantine>,
    pub started: Instant,
}

/// One reading of everything the status page and the metrics show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    pub uptime_secs: u64,
    pub backend: String,
    pub draining: bool,
    /// run_job requests accepted and not yet answered (waiting or running).
    pub jobs_in_flight: usize,
    pub jobs_running: usize,
    /// assign_job/run_job refused because kiln was draining.
    pub jobs_refused_draining: u64,
    /// Flattened: the counters stay top-level keys of the JSON status, as before.
    #[serde(flatten)]
    pub counters: StatsSnapshot,
    pub builders: Vec<BuilderView>,
    /// `None`: the actor did not answer in time.
    pub archives: Option<StoreView>,
    pub roots: Option<StoreView>,
    pub pool: Option<PoolView>,
    pub recent_jobs: Vec<JobRecord>,
    pub recent_errors: Vec<ErrorRecord>,
    pub scheduler_link: Option<LinkHealth>,
    /// Toolchains whose jobs failed in kiln's machinery lately: their consecutive
    /// failures, whether they were re-unpacked, the quarantine time left.
    #[serde(default)]
    pub toolchain_health: Vec<ToolchainHealth>,
}

/// `GET /api/v1/kiln/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDocument {
    /// Jobs assigned and not yet run.
    pub assigned_jobs: usize,
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

/// What `kiln gc` freed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct GcReport {
    pub sandboxes: Freed,
    pub roots: Freed,
    pub archives: Freed,
}

async fn ask<A, M>(addr: &Addr<A>, msg: M) -> Option<M::Result>
where
    A: actix::Actor + actix::Handler<M>,
    A::Context: actix::dev::ToEnvelope<A, M>,
    M: actix::Message + Send + 'static,
    M::Result: Send,
{
    tokio::time::timeout(ASK_TIMEOUT, addr.send(msg)).await.ok()?.ok()
}

impl Ops {
    pub async fn snapshot(&self) -> Snapshot {
        let (archives, roots, pool) = tokio::join!(
            ask(&self.cache, DescribeCache),
            ask(&self.unpacker, DescribeRoots),
            ask(&self.pool, DescribePool)
        );
        let activity = &self.observer.activity;
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            backend: self.backend.to_owned(),
            draining: self.lifecycle.is_draining(),
            jobs_in_flight: self.lifecycle.in_flight(),
            jobs_running: activity.running(),
            jobs_refused_draining: self.lifecycle.refused(),
            counters: self.stats.snapshot(),
            builders: activity.builders(),
            archives,
            roots,
            pool,
            recent_jobs: activity.recent_jobs(),
            recent_errors: activity.recent_errors(),
            scheduler_link: self.link_health.as_ref().map(|h| h.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            toolchain_health: self.quarantine.describe(),
        }
    }

    /// Garbage collection now: idle sandboxes first (they pin roots), then every
    /// unused unpacked root, then archives over budget.
    pub async fn collect_garbage(&self) -> Result<GcReport, &'static str> {
        let sandboxes = self.pool.send(DiscardIdle).await.map_err(|_| "sandbox pool")?;
        let roots = self.unpacker.send(EvictIdleRoots).await.map_err(|_| "unpacker")?;
        let archives = self.cache.send(TrimCache).await.map_err(|_| "toolchain cache")?;
        let report = GcReport { sandboxes, roots, archives };
        tracing::info!(?report, "garbage collected");
        Ok(report)
    }
}
