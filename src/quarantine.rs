//! Faulty-toolchain detection: consecutive machinery failures per toolchain, a
//! re-unpack once, then a cool-down during which its jobs are refused at once.
//!
//! A builder already restarts after a machinery failure (see `actors.md`), but a
//! toolchain whose unpacked root is broken (removed or damaged on disk, a lower
//! layer overlayfs refuses) fails every job the same way, each after a sandbox
//! preparation and a builder restart. Buildbarn stops taking work after repeated
//! infrastructure failures; kiln narrows that to the toolchain that fails:
//!
//! 1. after `quarantine_after` consecutive machinery failures of jobs of one
//!    toolchain, its root is forgotten and its warm sandboxes discarded, so the
//!    next job unpacks it afresh ([`Strike::Reunpack`]);
//! 2. if it reaches the threshold again within `quarantine_secs` of that re-unpack,
//!    it is quarantined for `quarantine_secs` ([`Strike::Quarantine`]): its jobs
//!    get 503 with the reason and the time left, without touching a sandbox;
//! 3. after the cool-down it is tried afresh (unpacked again, counters cleared).
//!
//! A completed job clears the consecutive count. Failures of the job's own request,
//! timeouts, cancellations and an unreachable docker daemon never count.
//!
//! A `Mutex<HashMap>` like the JobTable, not an actor: builders touch it once per
//! job, never across an await.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the caller must do after a failure was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// Below the threshold: nothing.
    Counted,
    /// Threshold reached the first time: forget the root and its warm sandboxes.
    Reunpack,
    /// Threshold reached again: the toolchain is quarantined (also forget its root,
    /// so the try after the cool-down starts afresh).
    Quarantine,
}

/// A toolchain's jobs are refused until the cool-down ends.
#[derive(Debug, Clone, thiserror::Error)]
#[error("toolchain {archive_id} is quarantined for another {}s after {failures} consecutive failures of kiln's machinery (the last: {reason}); retry later or elsewhere", remaining.as_secs().max(1))]
pub struct Quarantined {
    pub archive_id: String,
    pub failures: u32,
    pub reason: String,
    pub remaining: Duration,
}

#[derive(Debug, Default)]
struct Health {
    consecutive: u32,
    last_reason: String,
    /// When the root was last discarded for re-unpacking.
    reunpacked: Option<Instant>,
    quarantined_until: Option<Instant>,
}

/// One toolchain's health, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolchainHealth {
    pub archive_id: String,
    pub consecutive_failures: u32,
    pub last_failure: String,
    /// Re-unpacked after failures within the last cool-down period.
    pub reunpacked: bool,
    /// Seconds of quarantine left; 0 when not quarantined.
    pub quarantined_secs_left: u64,
}

/// The failure counts of every toolchain that failed recently.
#[derive(Debug)]
pub struct Quarantine {
    /// Consecutive machinery failures that trigger a step; 0 disables the whole thing.
    after: u32,
    cool_down: Duration,
    toolchains: Mutex<HashMap<String, Health>>,
}

impl Quarantine {
    pub fn new(after: u32, cool_down: Duration) -> Self {
        Quarantine { after, cool_down, toolchains: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Health>> {
        crate::sync::lock(&self.toolchains)
    }

    /// `Err` while `archive_id` is quarantined. A cool-down that has ended clears
    /// the toolchain's record: it gets a fresh start.
    pub fn check(&self, archive_id: &str) -> Result<(), Quarantined> {
        let mut map = self.lock();
        let Some(health) = map.get(archive_id) else { return Ok(()) };
        match health.quarantined_until {
            Some(until) if until > Instant::now() => Err(Quarantined {
                archive_id: archive_id.to_owned(),
                failures: health.consecutive,
                reason: health.last_reason.clone(),
                remaining: until - Instant::now(),
            }),
            Some(_) => {
                map.remove(archive_id);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A job of `archive_id` completed: its machinery works.
    pub fn succeeded(&self, archive_id: &str) {
        let mut map = self.lock();
        if let Some(health) = map.get_mut(archive_id) {
            health.consecutive = 0;
            if health.reunpacked.is_none_or(|at| at.elapsed() >= self.cool_down) {
                map.remove(archive_id);
            }
        }
    }

    /// A job of `archive_id` failed because of the machinery.
    pub fn failed(&self, archive_id: &str, reason: &str) -> Strike {
        if self.after == 0 {
            return Strike::Counted;
        }
        let mut map = self.lock();
        let health = map.entry(archive_id.to_owned()).or_default();
        health.consecutive += 1;
        health.last_reason = reason.to_owned();
        if health.quarantined_until.is_some() || health.consecutive < self.after {
            return Strike::Counted;
        }
        let now = Instant::now();
        match health.reunpacked {
            Some(at) if now.duration_since(at) < self.cool_down => {
                health.quarantined_until = Some(now + self.cool_down);
                Strike::Quarantine
            }
            _ => {
                health.reunpacked = Some(now);
                health.consecutive = 0;
                Strike::Reunpack
            }
        }
    }

    /// Every toolchain with a failure on record (for the status and metrics).
    pub fn describe(&self) -> Vec<ToolchainHealth> {
        let now = Instant::now();
        let mut list: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, h)| ToolchainHealth {
                archive_id: id.clone(),
                consecutive_failures: h.consecutive,
                last_failure: h.last_reason.clone(),
                reunpacked: h.reunpacked.is_some_and(|at| now.duration_since(at) < self.cool_down),
                quarantined_secs_left: h
                    .quarantined_until
                    .map(|until| until.saturating_duration_since(now).as_secs())
                    .unwrap_or(0),
            })
            .collect();
        list.sort_by(|a, b| a.archive_id.cmp(&b.archive_id));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reunpacks_once_then_quarantines_then_forgives() {
        let q = Quarantine::new(2, Duration::from_millis(200));
        assert_eq!(q.failed("a", "mount failed"), Strike::Counted);
        assert_eq!(q.failed("a", "mount failed"), Strike::Reunpack);
        // A success after the re-unpack clears the count, not the memory of it.
        q.succeeded("a");
        assert_eq!(q.failed("a", "mount failed"), Strike::Counted);
        assert!(q.check("a").is_ok());
        assert_eq!(q.failed("a", "mount failed"), Strike::Quarantine);
        let err = q.check("a").unwrap_err();
        assert!(err.to_string().contains("quarantined") && err.to_string().contains("mount failed"), "{err}");
        assert!(q.check("b").is_ok(), "other toolchains are not affected");
        assert_eq!(q.describe()[0].consecutive_failures, 2);
        std::thread::sleep(Duration::from_millis(250));
        assert!(q.check("a").is_ok(), "the cool-down ends");
        assert!(q.describe().is_empty());
        assert_eq!(q.failed("a", "x"), Strike::Counted, "a fresh start");
    }

    #[test]
    fn zero_disables() {
        let q = Quarantine::new(0, Duration::from_secs(60));
        for _ in 0..10 {
            assert_eq!(q.failed("a", "x"), Strike::Counted);
        }
        assert!(q.check("a").is_ok());
    }
}
