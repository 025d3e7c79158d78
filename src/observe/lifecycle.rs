//! Serving or draining, and how many jobs are in flight.
//!
//! On SIGTERM kiln drains: `/healthz` and `/readyz` say 503 so load balancers
//! move on, kiln's own scheduler places no more jobs, and the jobs in flight run
//! to their answer (bounded by `kiln.drain_timeout_secs`) before the HTTP servers
//! stop. A job is in flight from its assignment (the JobTable holds its
//! [`InFlight`]), so one assigned just before the SIGTERM still gets its upload
//! and run_job served.
//!
//! Whether assign_job is still taken while draining depends on
//! `kiln.drain_mode`: upstream's scheduler cannot be told that a server leaves,
//! and fails a client's compile (it compiles locally) for every assign_job a
//! server refuses. So by default (`handoff`) kiln keeps taking the few jobs the
//! scheduler still sends, and stops once the scheduler can send no more
//! ([`Release`]); with `refuse` it refuses them at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// With `drain_mode = "handoff"`, a drain also ends once no job was assigned for
/// this long: the scheduler had a free slot here but no client asked for one
/// (an idle farm, or the scheduler is unreachable), so the drain does not wait
/// for the whole timeout.
pub const QUIET: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Lifecycle {
    draining: AtomicBool,
    /// While draining: assign_job is refused (`drain_mode = "refuse"`).
    refuse_jobs: AtomicBool,
    in_flight: AtomicUsize,
    /// Jobs assigned since start, and when the last one was (ms after `born`,
    /// plus one: 0 is never).
    assigned: AtomicU64,
    last_assigned_ms: AtomicU64,
    /// Of `assigned`, those taken while draining.
    assigned_draining: AtomicU64,
    born: Instant,
    /// Requests refused because kiln was draining.
    refused: AtomicU64,
    changed: Notify,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            draining: AtomicBool::new(false),
            refuse_jobs: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            assigned: AtomicU64::new(0),
            last_assigned_ms: AtomicU64::new(0),
            assigned_draining: AtomicU64::new(0),
            born: Instant::now(),
            refused: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }
}

/// Counts one job as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// kiln is draining: no new jobs.
#[derive(Debug, thiserror::Error)]
#[error("kiln is shutting down and takes no new jobs; send this job to another server or compile it locally")]
pub struct Draining;

/// When a draining kiln may stop once no job is in flight: when whatever places
/// jobs here can place no more. Any condition that is set releases it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Release {
    /// Once this many jobs were assigned since start (the scheduler's last free
    /// slots here are taken).
    pub after_assigned: Option<u64>,
    /// Once no job was assigned for [`QUIET`] after this instant.
    pub quiet_after: Option<Instant>,
    /// At this instant (the scheduler has forgotten this server).
    pub at: Option<Instant>,
}

impl Release {
    /// At once: nothing places jobs here any more.
    pub fn now() -> Release {
        Release { at: Some(Instant::now()), ..Default::default() }
    }
}

impl Lifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Jobs assigned since start.
    pub fn assigned(&self) -> u64 {
        self.assigned.load(Ordering::SeqCst)
    }

    /// Jobs assigned while draining.
    pub fn assigned_draining(&self) -> u64 {
        self.assigned_draining.load(Ordering::SeqCst)
    }

    /// Refuses new work once draining (kiln's own scheduler's alloc_job).
    pub fn admit(&self) -> Result<(), Draining> {
        if self.is_draining() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Draining);
        }
        Ok(())
    }

    /// Counts a job as in flight (assign_job), unless kiln drains and refuses jobs.
    pub fn start_job(self: &Arc<Self>) -> Result<InFlight, Draining> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // Checked after counting, so `drained` cannot miss a job that got in.
        // (`refuse_jobs` is set only with `draining`.)
        if self.refuse_jobs.load(Ordering::SeqCst) {
            if let Err(e) = self.admit() {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.changed.notify_waiters();
                return Err(e);
            }
        }
        if self.is_draining() {
            self.assigned_draining.fetch_add(1, Ordering::SeqCst);
        }
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_assigned_ms.fetch_max(ms + 1, Ordering::SeqCst);
        self.assigned.fetch_add(1, Ordering::SeqCst);
        Ok(InFlight(self.clone()))
    }

    /// Starts the drain: `/healthz` and `/readyz` turn 503, kiln's own scheduler
    /// places nothing, and assign_job is refused if `refuse_jobs`.
    pub fn begin_drain(&self, refuse_jobs: bool) {
        self.refuse_jobs.store(refuse_jobs, Ordering::SeqCst);
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn last_assigned(&self) -> Option<Instant> {
        match self.last_assigned_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(self.born + Duration::from_millis(ms - 1)),
        }
    }

    fn released(&self, release: &Release) -> bool {
        let now = Instant::now();
        release.after_assigned.is_some_and(|n| self.assigned() >= n)
            || release.at.is_some_and(|at| now >= at)
            || release.quiet_after.is_some_and(|after| {
                let last = self.last_assigned().map_or(after, |last| last.max(after));
                now.duration_since(last) >= QUIET
            })
    }

    /// Waits until no job is in flight and `release` holds, or `deadline`. Returns
    /// the jobs still in flight when it gave up.
    pub async fn drained(&self, release: Release, deadline: tokio::time::Instant) -> usize {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let left = self.in_flight();
            if left == 0 && self.released(&release) {
                return 0;
            }
            // Time-based conditions are polled; jobs ending wake this at once.
            let tick = tokio::time::sleep(Duration::from_millis(200));
            tokio::select! {
                _ = changed => {}
                _ = tick => {}
                _ = tokio::time::sleep_until(deadline) => return self.in_flight(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusing drain (`drain_mode = "refuse"`, or no upstream scheduler).
    async fn drain(lifecycle: &Lifecycle, timeout: Duration) -> usize {
        lifecycle.begin_drain(true);
        lifecycle.drained(Release::now(), tokio::time::Instant::now() + timeout).await
    }

    #[actix_rt::test]
    async fn drain_waits_for_jobs_in_flight_and_refuses_new_ones() {
        let lifecycle = Arc::new(Lifecycle::default());
        let job = lifecycle.start_job().unwrap();
        let waiter = {
            let lifecycle = lifecycle.clone();
            actix_rt::spawn(async move { drain(&lifecycle, Duration::from_secs(30)).await })
        };
        while !lifecycle.is_draining() {
            tokio::task::yield_now().await;
        }
        assert!(lifecycle.start_job().is_err());
        assert_eq!(lifecycle.refused(), 1);
        drop(job);
        assert_eq!(waiter.await.unwrap(), 0);
        let stuck = Arc::new(Lifecycle::default());
        let _job = stuck.start_job().unwrap();
        assert_eq!(drain(&stuck, Duration::from_millis(10)).await, 1);
    }

    #[actix_rt::test]
    async fn a_handoff_drain_takes_jobs_until_the_schedulers_last_slots_are_used() {
        let lifecycle = Arc::new(Lifecycle::default());
        lifecycle.begin_drain(false);
        assert!(lifecycle.admit().is_err(), "kiln's own scheduler places nothing while draining");
        let release = Release {
            after_assigned: Some(lifecycle.assigned() + 2),
            quiet_after: Some(Instant::now() + Duration::from_secs(600)),
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let first = lifecycle.start_job().expect("a draining kiln still takes the scheduler's jobs");
        assert!(!lifecycle.released(&release), "one of the two slots is left");
        let second = lifecycle.start_job().unwrap();
        assert!(lifecycle.released(&release));
        assert_eq!(lifecycle.assigned_draining(), 2);
        drop(first);
        let waiter = {
            let lifecycle = lifecycle.clone();
            actix_rt::spawn(async move { lifecycle.drained(release, deadline).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "a job is still in flight");
        drop(second);
        assert_eq!(waiter.await.unwrap(), 0);
    }

    #[actix_rt::test]
    async fn a_handoff_drain_ends_when_no_job_comes_for_a_while() {
        let lifecycle = Arc::new(Lifecycle::default());
        lifecycle.begin_drain(false);
        let release = Release {
            after_assigned: Some(lifecycle.assigned() + 2),
            quiet_after: Some(Instant::now() - QUIET + Duration::from_millis(300)),
            ..Default::default()
        };
        assert!(!lifecycle.released(&release));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        assert_eq!(lifecycle.drained(release, deadline).await, 0);
    }
}
