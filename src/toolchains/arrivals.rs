//! Toolchains on their way to this kiln: one arrival per archive at a time.
//!
//! The sccache client sends a toolchain whenever assign_job answers
//! `need_toolchain = true`, and a cold build starts with many jobs at once: each
//! would upload the same archive. So only the first job for a missing toolchain is
//! asked for it (it becomes the arrival's *uploader*); every job assigned while the
//! arrival is under way is told the toolchain is here, and its run_job waits for
//! the arrival. An arrival ends in one of three ways, and every waiter learns at
//! once: the archive is in the cache (success), the upload failed or never started
//! (each waiter fails, so its client compiles locally, and the next assign_job asks
//! again), or the waiter's own bound passes.
//!
//! A plain mutex rather than an actor: each operation is a map lookup that never
//! spans an await, called from whichever HTTP worker serves the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::protocol::JobId;

/// How long the job told to send a toolchain has to start sending it. The client
/// packs its toolchain before it asks for a server and sends it right after the
/// answer, so this is generous; it bounds what a client that died (or chose to
/// compile locally) after its answer costs the jobs waiting on it.
pub const UPLOAD_START_WITHIN: Duration = Duration::from_secs(30);

/// How long the job told to send a toolchain has before the next job for it is
/// told to send it too (the first upload to finish serves every waiter): a
/// client that went away costs the jobs assigned after this nothing.
pub const SECOND_UPLOADER_AFTER: Duration = Duration::from_secs(5);

/// How long a failed arrival stays known, so the jobs promised it that call
/// run_job after the failure are told why (instead of finding no toolchain).
const FAILED_KEPT: Duration = Duration::from_secs(120);

/// Where an arrival comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A client's upload, asked of this job's client.
    Upload { uploader: JobId },
    /// A fetch from the farm's store.
    Store,
}

/// Why a toolchain did not arrive, as each job that waited for it reports it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("toolchain {archive_id} did not arrive: {reason}")]
pub struct ArrivalFailed {
    pub archive_id: String,
    pub from: Source,
    pub reason: String,
}

type Outcome = Option<Result<(), String>>;

struct Arrival {
    source: Source,
    /// When the arrival began (tokio's clock).
    since: Instant,
    /// When its current uploader was told to send it.
    asked: Instant,
    /// The uploader's body has started to arrive.
    receiving: bool,
    done: watch::Sender<Outcome>,
}

impl Arrival {
    fn new(source: Source) -> Arrival {
        let now = Instant::now();
        Arrival { source, since: now, asked: now, receiving: false, done: watch::channel(None).0 }
    }

    /// An uploader that has not started after `after`: ask another job too.
    fn slow_to_start(&self, after: Duration) -> bool {
        matches!(self.source, Source::Upload { .. }) && !self.receiving && self.asked.elapsed() > after
    }

    /// Finished (failed; successes leave the map at once).
    fn is_failed(&self) -> bool {
        self.done.borrow().is_some()
    }

    /// An uploader that never started, past `start_within`.
    fn stalled(&self, start_within: Duration) -> bool {
        matches!(self.source, Source::Upload { .. }) && !self.receiving && self.since.elapsed() > start_within
    }
}

/// What [`Arrivals::expect`] decided for one assign_job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The caller's job is the uploader: ask its client for the toolchain.
    Upload,
    /// Already on its way: its run_job waits.
    Arriving(Source),
}

/// The arrivals under way (and recently failed), by archive id.
pub struct Arrivals {
    map: Mutex<HashMap<String, Arc<Mutex<Arrival>>>>,
    /// [`UPLOAD_START_WITHIN`] and [`SECOND_UPLOADER_AFTER`], shorter in tests.
    start_within: Duration,
    second_uploader_after: Duration,
}

impl Default for Arrivals {
    fn default() -> Self {
        Arrivals::new(UPLOAD_START_WITHIN, SECOND_UPLOADER_AFTER)
    }
}

impl Arrivals {
    pub fn new(start_within: Duration, second_uploader_after: Duration) -> Arrivals {
        Arrivals { map: Mutex::default(), start_within, second_uploader_after }
    }

    fn stall_reason(&self) -> String {
        format!("the job told to send it did not start within {:?}", self.start_within)
    }

    /// For an assign_job of `job_id` whose toolchain is neither cached nor in the
    /// store: joins the arrival under way, or makes `job_id` its uploader (also
    /// when the current uploader has not started within `second_uploader_after`).
    /// A failed or stalled arrival is replaced (failing its waiters first).
    pub fn expect(&self, archive_id: &str, job_id: JobId) -> Expect {
        let mut map = crate::sync::lock(&self.map);
        map.retain(|_, a| {
            let a = crate::sync::lock(a);
            !a.is_failed() || a.since.elapsed() < FAILED_KEPT
        });
        if let Some(arrival) = map.get(archive_id) {
            let mut arrival = crate::sync::lock(arrival);
            if !arrival.is_failed() && !arrival.stalled(self.start_within) {
                if arrival.slow_to_start(self.second_uploader_after) {
                    arrival.source = Source::Upload { uploader: job_id };
                    arrival.asked = Instant::now();
                    return Expect::Upload;
                }
                return Expect::Arriving(arrival.source);
            }
            if !arrival.is_failed() {
                arrival.done.send_replace(Some(Err(self.stall_reason())));
            }
        }
        map.insert(archive_id.to_owned(), Arc::new(Mutex::new(Arrival::new(Source::Upload { uploader: job_id }))));
        Expect::Upload
    }

    /// Whether `archive_id` is on its way (not failed).
    pub fn is_arriving(&self, archive_id: &str) -> bool {
        let map = crate::sync::lock(&self.map);
        map.get(archive_id).is_some_and(|a| !crate::sync::lock(a).is_failed())
    }

    /// A fetch of `archive_id` from the store has started: jobs wait for it as
    /// for an upload. Replaces only a failed arrival.
    pub fn fetching(&self, archive_id: &str) {
        let mut map = crate::sync::lock(&self.map);
        if map.get(archive_id).is_some_and(|a| !crate::sync::lock(a).is_failed()) {
            return;
        }
        map.insert(archive_id.to_owned(), Arc::new(Mutex::new(Arrival::new(Source::Store))));
    }

    /// `job_id`'s upload of `archive_id` has started: it is the arrival's uploader
    /// now (of several asked, the one whose bytes come). An upload nobody waits
    /// for (its job was told to send before an arrival it could join existed, or
    /// after one failed) becomes the arrival.
    pub fn receiving(&self, archive_id: &str, job_id: JobId) {
        let mut map = crate::sync::lock(&self.map);
        let uploader = Source::Upload { uploader: job_id };
        let arrival = map.entry(archive_id.to_owned()).or_insert_with(|| Arc::new(Mutex::new(Arrival::new(uploader))));
        let mut arrival = crate::sync::lock(arrival);
        if arrival.is_failed() {
            *arrival = Arrival::new(uploader);
        }
        if matches!(arrival.source, Source::Upload { .. }) {
            arrival.source = uploader;
            arrival.receiving = true;
        }
    }

    /// `job_id` was made the uploader of `archive_id`, but another kiln of the farm
    /// is receiving it: the arrival becomes a fetch (of that kiln's publish).
    pub fn to_store(&self, archive_id: &str, job_id: JobId) {
        let map = crate::sync::lock(&self.map);
        let Some(arrival) = map.get(archive_id) else { return };
        let mut arrival = crate::sync::lock(arrival);
        if arrival.source == (Source::Upload { uploader: job_id }) && !arrival.is_failed() {
            arrival.source = Source::Store;
        }
    }

    /// `archive_id` is in the cache: every waiter goes on.
    pub fn arrived(&self, archive_id: &str) {
        if let Some(arrival) = crate::sync::lock(&self.map).remove(archive_id) {
            crate::sync::lock(&arrival).done.send_replace(Some(Ok(())));
        }
    }

    /// The arrival from `source` failed: every waiter fails with `reason`. An
    /// upload that fails ends the arrival only if it was its uploader's (another
    /// job's upload of the same archive may still succeed). Answers whether it
    /// ended an arrival.
    pub fn failed(&self, archive_id: &str, source: Source, reason: &str) -> bool {
        let map = crate::sync::lock(&self.map);
        let Some(arrival) = map.get(archive_id) else { return false };
        let arrival = crate::sync::lock(arrival);
        if arrival.source != source || arrival.is_failed() {
            return false;
        }
        arrival.done.send_replace(Some(Err(reason.to_owned())));
        true
    }

    /// Waits until `archive_id` has arrived, at most `limit`. Answers at once when
    /// nothing is on its way (the toolchain is here, or the job brings it).
    pub async fn wait(&self, archive_id: &str, limit: Duration) -> Result<(), ArrivalFailed> {
        let (mut done, source) = {
            let map = crate::sync::lock(&self.map);
            let Some(arrival) = map.get(archive_id) else { return Ok(()) };
            let arrival = crate::sync::lock(arrival);
            (arrival.done.subscribe(), arrival.source)
        };
        let failed = |reason: String| ArrivalFailed { archive_id: archive_id.to_owned(), from: source, reason };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(outcome) = done.borrow_and_update().clone() {
                return outcome.map_err(failed);
            }
            // Woken by the outcome, or every `start_within` to fail an uploader
            // that never started.
            let tick = (Instant::now() + self.start_within).min(deadline);
            match tokio::time::timeout_at(tick, done.changed()).await {
                Ok(Ok(())) => continue,
                // The arrival was replaced (it stalled and a new one began): wait for that one.
                Ok(Err(_)) => return Box::pin(self.wait(archive_id, deadline - Instant::now())).await,
                Err(_) if Instant::now() >= deadline => {
                    return Err(failed(format!("waited {limit:?}, the toolchain upload timeout")));
                }
                Err(_) => self.fail_if_stalled(archive_id),
            }
        }
    }

    fn fail_if_stalled(&self, archive_id: &str) {
        let map = crate::sync::lock(&self.map);
        let Some(arrival) = map.get(archive_id) else { return };
        let arrival = crate::sync::lock(arrival);
        if arrival.stalled(self.start_within) && !arrival.is_failed() {
            arrival.done.send_replace(Some(Err(self.stall_reason())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "a";

    #[tokio::test]
    async fn the_first_job_uploads_and_the_others_wait_for_it() {
        let arrivals = Arc::new(Arrivals::default());
        assert_eq!(arrivals.expect(ID, JobId(1)), Expect::Upload);
        let uploader = Source::Upload { uploader: JobId(1) };
        assert_eq!(arrivals.expect(ID, JobId(2)), Expect::Arriving(uploader));
        assert_eq!(arrivals.expect(ID, JobId(3)), Expect::Arriving(uploader));
        let waiter = tokio::spawn({
            let arrivals = arrivals.clone();
            async move { arrivals.wait(ID, Duration::from_secs(60)).await }
        });
        arrivals.receiving(ID, JobId(1));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        arrivals.arrived(ID);
        waiter.await.unwrap().unwrap();
        assert!(!arrivals.is_arriving(ID));
    }

    #[tokio::test]
    async fn a_failed_upload_fails_its_waiters_at_once_and_the_next_job_uploads() {
        let arrivals = Arc::new(Arrivals::default());
        assert_eq!(arrivals.expect(ID, JobId(1)), Expect::Upload);
        let waiter = tokio::spawn({
            let arrivals = arrivals.clone();
            async move { arrivals.wait(ID, Duration::from_secs(600)).await }
        });
        tokio::task::yield_now().await;
        // Another job's upload failing does not end the uploader's arrival.
        arrivals.failed(ID, Source::Upload { uploader: JobId(7) }, "not ours");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        arrivals.failed(ID, Source::Upload { uploader: JobId(1) }, "the client went away");
        let err = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap_err();
        assert!(err.reason.contains("went away"), "{err}");
        // A job promised the failed arrival learns why when it comes to wait.
        assert!(arrivals.wait(ID, Duration::from_secs(1)).await.is_err());
        assert_eq!(arrivals.expect(ID, JobId(2)), Expect::Upload);
    }

    #[tokio::test]
    async fn a_job_assigned_after_the_uploader_is_slow_to_start_is_asked_too() {
        let arrivals = Arc::new(Arrivals::new(Duration::from_secs(600), Duration::from_millis(100)));
        assert_eq!(arrivals.expect(ID, JobId(1)), Expect::Upload);
        let waiter = tokio::spawn({
            let arrivals = arrivals.clone();
            async move { arrivals.wait(ID, Duration::from_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(arrivals.expect(ID, JobId(2)), Expect::Upload, "the first uploader is slow: ask this job too");
        assert_eq!(arrivals.expect(ID, JobId(3)), Expect::Arriving(Source::Upload { uploader: JobId(2) }));
        // The first one's upload fails after all: the second one is still to come.
        arrivals.receiving(ID, JobId(2));
        arrivals.failed(ID, Source::Upload { uploader: JobId(1) }, "late and bad");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        arrivals.arrived(ID);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_uploader_that_never_starts_fails_its_waiters_after_the_start_bound() {
        let arrivals = Arrivals::new(Duration::from_millis(100), Duration::from_secs(600));
        assert_eq!(arrivals.expect(ID, JobId(1)), Expect::Upload);
        let err = arrivals.wait(ID, Duration::from_secs(600)).await.unwrap_err();
        assert!(err.reason.contains("did not start"), "{err}");
        assert_eq!(arrivals.expect(ID, JobId(2)), Expect::Upload);
        // An uploader whose body is arriving is not stalled, however long it takes.
        arrivals.receiving(ID, JobId(2));
        let waited = arrivals.wait(ID, Duration::from_millis(500)).await.unwrap_err();
        assert!(waited.reason.contains("waited"), "{waited}");
    }

    #[tokio::test]
    async fn a_waiter_gives_up_at_its_bound() {
        let arrivals = Arrivals::default();
        arrivals.fetching(ID);
        let err = arrivals.wait(ID, Duration::from_millis(200)).await.unwrap_err();
        assert!(err.reason.contains("waited"), "{err}");
        assert_eq!(err.from, Source::Store);
    }
}
