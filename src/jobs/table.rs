//! Jobs assigned by the scheduler and not yet run: the state the three
//! build-server calls of one job share.
//!
//! A `DashMap` rather than an actor: every request touches it once, briefly, from
//! whichever HTTP worker serves it, and no operation spans an await.
//!
//! A job token never expires (upstream signs `exp: 0`), so the table also
//! remembers which ids it has seen: a token is good for one job, and posting
//! assign_job again with it after the job ran is refused ([`UsedIds`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::observe::InFlight;
use crate::protocol::{JobId, Toolchain};

#[derive(Debug, Clone)]
pub struct AssignedJob {
    pub toolchain: Toolchain,
    /// Whether the scheduler knows the job as `Ready` (else `Pending`: it still
    /// waits for its toolchain).
    pub ready: bool,
    assigned_at: Instant,
    /// A submit_toolchain for it is being received.
    uploading: bool,
    /// Counts the job as in flight from its assignment to its answer (or its
    /// expiry), so a drain waits for it: a job assigned before SIGTERM still runs.
    pub held: Option<Arc<InFlight>>,
}

#[derive(Debug, thiserror::Error)]
#[error("job {0} was already assigned to this server: a job id and its token are good for one job")]
pub struct DuplicateJob(pub JobId);

#[derive(Debug, Default)]
pub struct JobTable {
    jobs: DashMap<JobId, AssignedJob>,
    used: Mutex<UsedIds>,
}

impl JobTable {
    /// Records a job; `ready` as told to the scheduler in the assign_job answer.
    /// An id this table has seen before (assigned now, or run) is refused.
    pub fn assign(
        &self,
        job_id: JobId,
        toolchain: Toolchain,
        ready: bool,
        held: Option<InFlight>,
    ) -> Result<(), DuplicateJob> {
        match self.jobs.entry(job_id) {
            Entry::Occupied(_) => Err(DuplicateJob(job_id)),
            Entry::Vacant(slot) => {
                // Under the entry's shard lock: two assigns of one id cannot both pass.
                if !crate::sync::lock(&self.used).first_use(job_id) {
                    return Err(DuplicateJob(job_id));
                }
                let held = held.map(Arc::new);
                slot.insert(AssignedJob { toolchain, ready, assigned_at: Instant::now(), uploading: false, held });
                Ok(())
            }
        }
    }

    /// Marks the job `Ready`; true if it was `Pending` (the scheduler must hear of it).
    pub fn mark_ready(&self, job_id: JobId) -> bool {
        self.jobs.get_mut(&job_id).is_some_and(|mut job| !std::mem::replace(&mut job.ready, true))
    }

    /// Marks the job's toolchain upload as under way until the guard is dropped.
    pub fn start_upload(&self, job_id: JobId) -> Upload<'_> {
        if let Some(mut job) = self.jobs.get_mut(&job_id) {
            job.uploading = true;
        }
        Upload { table: self, job_id }
    }

    /// Whether the job is assigned and its toolchain upload under way.
    pub fn is_uploading(&self, job_id: JobId) -> bool {
        self.jobs.get(&job_id).is_some_and(|job| job.uploading)
    }

    pub fn toolchain_of(&self, job_id: JobId) -> Option<Toolchain> {
        self.jobs.get(&job_id).map(|job| job.toolchain.clone())
    }

    /// Removes the job for running it (run_job claims it before reading its body):
    /// a job runs at most once, and a second run_job of the same id finds nothing.
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

/// A toolchain upload under way; see [`JobTable::start_upload`].
pub struct Upload<'a> {
    table: &'a JobTable,
    job_id: JobId,
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if let Some(mut job) = self.table.jobs.get_mut(&self.job_id) {
            job.uploading = false;
        }
    }
}

/// The job ids this server has been given, to refuse a token used twice.
///
/// Job ids come from a scheduler's counter: upstream's starts at a random 64-bit
/// base per scheduler start and counts up, and so does kiln's own. So ids fall in
/// a few series (one per scheduler start), each growing. Per series this keeps the
/// ids seen within [`UsedIds::WINDOW`] below the highest one, and refuses anything
/// older than that: a scheduler sends assign_job right after it allocates an id,
/// so it never sends one `WINDOW` ids behind another it already sent.
#[derive(Debug, Default)]
pub struct UsedIds {
    /// Most recently used series last.
    series: VecDeque<IdSeries>,
}

#[derive(Debug)]
struct IdSeries {
    /// Ids are kept as offsets from this, which sits [`UsedIds::SERIES_SPAN`] * 2
    /// below the series' first id: offsets never wrap, so they sort.
    base: u64,
    /// The highest offset seen.
    highest: u64,
    /// Offsets seen in `highest - WINDOW ..= highest`.
    seen: BTreeSet<u64>,
}

impl UsedIds {
    /// How far behind a series' highest id an id may still arrive.
    pub const WINDOW: u64 = 1 << 16;
    /// Ids this far apart belong to different series (different scheduler starts):
    /// two random 64-bit bases are this close with probability 2^-23.
    const SERIES_SPAN: u64 = 1 << 40;
    /// Series kept; the least recently used is forgotten (a scheduler restarted
    /// this many times since: its ids are long gone from every client).
    const MAX_SERIES: usize = 64;

    /// Records `job_id`; false if it was seen before or is too old to tell.
    pub fn first_use(&mut self, job_id: JobId) -> bool {
        let id = job_id.0;
        let found = self
            .series
            .iter()
            .position(|series| id.wrapping_sub(series.base).abs_diff(series.highest) < Self::SERIES_SPAN);
        let Some(index) = found else {
            if self.series.len() == Self::MAX_SERIES {
                self.series.pop_front();
            }
            let first = 2 * Self::SERIES_SPAN;
            let base = id.wrapping_sub(first);
            self.series.push_back(IdSeries { base, highest: first, seen: BTreeSet::from([first]) });
            return true;
        };
        let mut series = self.series.remove(index).expect("index from position");
        let offset = id.wrapping_sub(series.base);
        let fresh = if offset <= series.highest {
            series.highest - offset < Self::WINDOW && series.seen.insert(offset)
        } else {
            series.highest = offset;
            series.seen.insert(offset);
            series.seen = series.seen.split_off(&(offset - (Self::WINDOW - 1)));
            true
        };
        self.series.push_back(series);
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_good_once_per_series_and_old_ids_are_refused() {
        let mut used = UsedIds::default();
        let base = u64::MAX - 10; // a series that wraps
        for n in 0..20u64 {
            assert!(used.first_use(JobId(base.wrapping_add(n))), "id {n}");
        }
        // Out of order within the window is fine once; again never.
        assert!(!used.first_use(JobId(base.wrapping_add(3))));
        let mut gapped = UsedIds::default();
        assert!(gapped.first_use(JobId(1000)));
        assert!(gapped.first_use(JobId(1002)));
        assert!(gapped.first_use(JobId(1001)));
        assert!(!gapped.first_use(JobId(1001)));
        // Far behind the highest id: refused, even if never seen.
        assert!(gapped.first_use(JobId(1000 + UsedIds::WINDOW + 5)));
        assert!(!gapped.first_use(JobId(1003)));
        // Another scheduler start: a fresh series, the old one still remembered.
        assert!(gapped.first_use(JobId(1 << 62)));
        assert!(gapped.first_use(JobId((1 << 62) + 1)));
        assert!(!gapped.first_use(JobId(1002)));
        assert!(!gapped.first_use(JobId(1 << 62)));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut used = UsedIds::default();
        for n in 0..(4 * UsedIds::WINDOW) {
            assert!(used.first_use(JobId(n)));
        }
        assert!(used.series[0].seen.len() <= UsedIds::WINDOW as usize);
        for s in 1..(UsedIds::MAX_SERIES as u64 + 5) {
            assert!(used.first_use(JobId(s << 50)));
        }
        assert_eq!(used.series.len(), UsedIds::MAX_SERIES);
    }
}
