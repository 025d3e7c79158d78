//! Jobs assigned by the scheduler and not yet run: the state the three
//! build-server calls of one job share.
//!
//! A `DashMap` rather than an actor: every request touches it once, briefly, from
//! whichever HTTP worker serves it, and no operation spans an await.

use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::protocol::{JobId, Toolchain};

#[derive(Debug, Clone)]
pub struct AssignedJob {
    pub toolchain: Toolchain,
    /// Whether the scheduler knows the job as `Ready` (else `Pending`: it still
    /// waits for its toolchain).
    pub ready: bool,
    assigned_at: Instant,
}

#[derive(Debug, thiserror::Error)]
#[error("job {0} is already assigned to this server")]
pub struct DuplicateJob(pub JobId);

#[derive(Debug, Default)]
pub struct JobTable {
    jobs: DashMap<JobId, AssignedJob>,
}

impl JobTable {
    /// Records a job; `ready` as told to the scheduler in the assign_job answer.
    pub fn assign(&self, job_id: JobId, toolchain: Toolchain, ready: bool) -> Result<(), DuplicateJob> {
        match self.jobs.entry(job_id) {
            Entry::Occupied(_) => Err(DuplicateJob(job_id)),
            Entry::Vacant(slot) => {
                slot.insert(AssignedJob { toolchain, ready, assigned_at: Instant::now() });
                Ok(())
            }
        }
    }

    /// Marks the job `Ready`; true if it was `Pending` (the scheduler must hear of it).
    pub fn mark_ready(&self, job_id: JobId) -> bool {
        self.jobs.get_mut(&job_id).is_some_and(|mut job| !std::mem::replace(&mut job.ready, true))
    }

    pub fn toolchain_of(&self, job_id: JobId) -> Option<Toolchain> {
        self.jobs.get(&job_id).map(|job| job.toolchain.clone())
    }

    /// Removes the job for running it: a job runs at most once.
    pub fn take(&self, job_id: JobId) -> Option<AssignedJob> {
        self.jobs.remove(&job_id).map(|(_, job)| job)
    }

    /// Forgets jobs assigned longer than `ttl` ago and never run; returns how many.
    pub fn expire(&self, ttl: Duration) -> usize {
        let before = self.jobs.len();
        self.jobs.retain(|_, job| job.assigned_at.elapsed() < ttl);
        before - self.jobs.len()
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}
