//! [`Snapshot`]: one reading of everything the operator endpoints show; the
//! operator endpoints gather it (`http::Ops`) by asking each actor.

use serde::{Deserialize, Serialize};

use super::activity::{BuilderView, ErrorRecord, JobRecord};
use super::readiness::NotReady;
use super::views::{CacheView, Freed, LinkHealth, PoolView};
use crate::quarantine::ToolchainHealth;
use crate::stats::StatsSnapshot;

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
    pub archives: Option<CacheView>,
    pub roots: Option<CacheView>,
    pub pool: Option<PoolView>,
    pub recent_jobs: Vec<JobRecord>,
    pub recent_errors: Vec<ErrorRecord>,
    pub scheduler_link: Option<LinkHealth>,
    /// Toolchains whose jobs failed in kiln's machinery lately: their consecutive
    /// failures, whether they were re-unpacked, the quarantine time left.
    #[serde(default)]
    pub toolchain_health: Vec<ToolchainHealth>,
    /// Why kiln cannot take jobs now (`/readyz`); empty: ready.
    #[serde(default)]
    pub not_ready: Vec<NotReady>,
}

/// `GET /api/v1/kiln/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDocument {
    /// Jobs assigned and not yet run.
    pub assigned_jobs: usize,
    /// The farm's toolchain store (without options that may hold credentials).
    #[serde(default)]
    pub toolchain_store: Option<String>,
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
