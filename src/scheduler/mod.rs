//! Where job state transitions go, and kiln's own scheduler.
//!
//! With `scheduler_url` set, kiln is a build server behind upstream's
//! `sccache-dist scheduler`: transitions travel to it through the
//! [`UpstreamScheduler`] actor. Without one, kiln answers the client-facing
//! scheduler API itself ([`LocalScheduler`]) for a farm of one, and the
//! transitions stay in process.

mod local;

pub use local::{ClientAuthError, LocalScheduler, Reservation, ReserveError};

use std::sync::Arc;

use actix::Addr;

use crate::actors::upstream_scheduler::{ReportJobState, UpstreamScheduler};
use crate::protocol::{JobId, JobState};

/// How long a job waits for the scheduler to take one of its state reports.
pub const REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The scheduler this server answers to.
#[derive(Clone)]
pub enum Scheduler {
    Upstream(Addr<UpstreamScheduler>),
    Local(Arc<LocalScheduler>),
}

impl Scheduler {
    /// Reports a transition and waits until the scheduler took it, or at most
    /// [`REPORT_WAIT`]: a slow or unreachable scheduler must not hold the job up
    /// (the report goes on in the link actor). Failures are logged by the link,
    /// never returned: they must not fail the job.
    pub async fn report(&self, job_id: JobId, state: JobState) {
        match self {
            Scheduler::Upstream(link) => {
                let sent = link.send(ReportJobState { job_id, state });
                if tokio::time::timeout(REPORT_WAIT, sent).await.is_err() {
                    tracing::warn!(%job_id, %state, wait = ?REPORT_WAIT,
                        "the scheduler has not taken a job state yet; the job goes on");
                }
            }
            Scheduler::Local(local) => local.update(job_id, state),
        }
    }

    /// Reports a transition without waiting, for paths that cannot await (drop).
    pub fn report_in_background(&self, job_id: JobId, state: JobState) {
        match self {
            Scheduler::Upstream(link) => link.do_send(ReportJobState { job_id, state }),
            Scheduler::Local(local) => local.update(job_id, state),
        }
    }
}

/// Reports `Complete` for a started job on every way out of `run_job`, including
/// the handler being dropped when its client hangs up: the scheduler counts the
/// job against this server's capacity until it hears `Complete`.
pub struct CompleteOnDrop {
    scheduler: Option<Scheduler>,
    job_id: JobId,
}

impl CompleteOnDrop {
    pub fn new(scheduler: Scheduler, job_id: JobId) -> Self {
        CompleteOnDrop { scheduler: Some(scheduler), job_id }
    }

    /// Reports `Complete` and waits for the scheduler, before the answer goes out
    /// (so the client's next job finds the slot free, as with upstream's server).
    pub async fn complete(mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.report(self.job_id, JobState::Complete).await;
        }
    }
}

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.report_in_background(self.job_id, JobState::Complete);
        }
    }
}
