//! Where job state transitions go, and kiln's own scheduler.
//!
//! With `scheduler_url` set, kiln is a build server behind upstream's
//! `sccache-dist scheduler`: transitions travel to it through the
//! [`UpstreamScheduler`] actor. Without one, kiln answers the client-facing
//! scheduler API itself ([`LocalScheduler`]) for a farm of one, and the
//! transitions stay in process.

mod local;
pub mod upstream;

pub use local::{ClientAuthError, LocalScheduler, Reservation, ReserveError};

use std::sync::Arc;

use actix::Addr;

use crate::protocol::{JobId, JobState};
pub use upstream::{ReportJobState, UpstreamScheduler};

/// How long a job waits for the scheduler to take one of its state reports.
pub const REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The scheduler this server answers to.
#[derive(Clone)]
pub enum Scheduler {
    Upstream(Addr<UpstreamScheduler>),
    Local(Arc<LocalScheduler>),
}

impl Scheduler {
    /// The link to upstream's scheduler, if that is what places jobs here.
    pub fn upstream(&self) -> Option<Addr<UpstreamScheduler>> {
        match self {
            Scheduler::Upstream(link) => Some(link.clone()),
            Scheduler::Local(_) => None,
        }
    }

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
}

/// A job this server has claimed for running (run_job took it from the job
/// table): on every way out of run_job (done, refused, timed out, the client
/// gone) the scheduler hears every state the job has left up to `Complete`, so
/// its slot is free at once. Upstream's scheduler only takes
/// `Pending → Ready → Started → Complete`, one step at a time, in order.
pub struct ClaimedJob {
    scheduler: Option<Scheduler>,
    job_id: JobId,
    /// The last state the scheduler was told.
    told: JobState,
}

impl ClaimedJob {
    /// `ready`: whether the scheduler already knows the job as `Ready`.
    pub fn new(scheduler: Scheduler, job_id: JobId, ready: bool) -> Self {
        let told = if ready { JobState::Ready } else { JobState::Pending };
        ClaimedJob { scheduler: Some(scheduler), job_id, told }
    }

    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// Reports `Started` (after `Ready`, if the scheduler does not know that yet).
    pub async fn start(&mut self) {
        self.advance_to(JobState::Started).await;
    }

    /// Reports every state up to `Complete` and waits for the scheduler, before
    /// the answer goes out (so the client's next job finds the slot free, as with
    /// upstream's server).
    pub async fn complete(mut self) {
        self.advance_to(JobState::Complete).await;
        self.scheduler = None;
    }

    async fn advance_to(&mut self, target: JobState) {
        let Some(scheduler) = self.scheduler.clone() else { return };
        while let Some(next) = next_state(self.told).filter(|_| self.told != target) {
            scheduler.report(self.job_id, next).await;
            self.told = next;
        }
    }
}

/// The state after `state` in the only order the scheduler accepts.
fn next_state(state: JobState) -> Option<JobState> {
    match state {
        JobState::Pending => Some(JobState::Ready),
        JobState::Ready => Some(JobState::Started),
        JobState::Started => Some(JobState::Complete),
        JobState::Complete => None,
    }
}

impl Drop for ClaimedJob {
    /// The handler was dropped (its client hung up): report the rest in the
    /// background, in order.
    fn drop(&mut self) {
        let Some(scheduler) = self.scheduler.take() else { return };
        let (job_id, mut told) = (self.job_id, self.told);
        if told == JobState::Complete {
            return;
        }
        match scheduler {
            Scheduler::Local(local) => {
                while let Some(next) = next_state(told) {
                    local.update(job_id, next);
                    told = next;
                }
            }
            upstream @ Scheduler::Upstream(_) => {
                actix_rt::spawn(async move {
                    while let Some(next) = next_state(told) {
                        upstream.report(job_id, next).await;
                        told = next;
                    }
                });
            }
        }
    }
}
