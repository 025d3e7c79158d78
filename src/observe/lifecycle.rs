//! Serving or draining, and how many jobs are in flight.
//!
//! On SIGTERM kiln drains: assign_job gets 503 (with Retry-After), `/healthz`
//! says 503 so load balancers move on, and the jobs already in flight run to their
//! answer (bounded by `kiln.drain_timeout_secs`) before the HTTP servers stop. A
//! job is in flight from its assignment (the JobTable holds its [`InFlight`]), so
//! one assigned just before the SIGTERM still gets its upload and run_job served.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Requests refused because kiln was draining.
    refused: AtomicU64,
    changed: Notify,
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

    /// Refuses new work once draining.
    pub fn admit(&self) -> Result<(), Draining> {
        if self.is_draining() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Draining);
        }
        Ok(())
    }

    /// Counts a job as in flight, unless kiln is draining (assign_job).
    pub fn start_job(self: &Arc<Self>) -> Result<InFlight, Draining> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // Checked after counting, so `drain` cannot miss a job that got in.
        if let Err(e) = self.admit() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.changed.notify_waiters();
            return Err(e);
        }
        Ok(InFlight(self.clone()))
    }

    /// Stops taking jobs and waits until none is in flight, or `timeout`.
    /// Returns the jobs still in flight when it gave up.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let left = self.in_flight();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.in_flight();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn drain_waits_for_jobs_in_flight_and_refuses_new_ones() {
        let lifecycle = Arc::new(Lifecycle::default());
        let job = lifecycle.start_job().unwrap();
        let waiter = {
            let lifecycle = lifecycle.clone();
            actix_rt::spawn(async move { lifecycle.drain(Duration::from_secs(30)).await })
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
        assert_eq!(stuck.drain(Duration::from_millis(10)).await, 1);
    }
}
