//! What every handler of the web facade shares.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use super::body::BodyBudget;
use crate::actors::JobQueue;
use crate::jobs::JobTable;
use crate::protocol::JobKey;
use crate::scheduler::Scheduler;
use crate::stats::Stats;

/// Request size and time bounds, from the config.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_archive_bytes: u64,
    pub max_request_bytes: u64,
    /// Deadline for assign_job and run_job bodies.
    pub body_timeout: Duration,
    /// Deadline for a toolchain upload (much larger bodies).
    pub upload_timeout: Duration,
}

/// What every handler shares.
pub struct AppState {
    pub key: JobKey,
    pub jobs: JobTable,
    pub queue: Addr<JobQueue>,
    pub stats: Arc<Stats>,
    pub limits: HttpLimits,
    /// run_job bodies held in memory at once.
    pub body_memory: BodyBudget,
    /// Where job state transitions go.
    pub scheduler: Scheduler,
    /// Where toolchains come from: the cache, the farm's store, uploads.
    pub toolchains: crate::toolchains::Toolchains,
    /// Metrics, live activity and the serving/draining lifecycle.
    pub ops: Arc<super::Ops>,
}
