//! kiln's own scheduler: the client-facing half of upstream's
//! `sccache-dist scheduler`, for the one server it runs in.
//!
//! It places jobs on this server only, with upstream's rule: at most
//! `cpus + 1 + cpus/8` jobs at once (more answer `Fail`, and the client compiles
//! locally). Unlike upstream's, it sees the server's side of every job, so a job
//! nobody claims loses its slot after `kiln.scheduler.unclaimed_secs` (10 s),
//! not after upstream's 60 s (`Ready`) or 300 s (`Pending`): a `Pending` job
//! keeps it while its toolchain upload is being received, and a job started
//! keeps it until it completes. A `Mutex` rather than an actor: every call is a
//! few map operations, never held across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{ClientAuth, INSECURE_CLIENT_TOKEN};
use crate::jobs::JobTable;
use crate::protocol::{
    JobId, JobKey, JobState, ProtocolError, SchedulerStatusResult, ServerCertificateHttpResponse, ServerId,
};

/// Why `alloc_job` gets no job.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// Upstream's wording starts the same way; clients log it and compile locally.
    #[error("Insufficient capacity across 1 available servers: {in_progress} of {capacity} job slots in use")]
    Full { in_progress: usize, capacity: usize },
    #[error("signing the job token failed")]
    Token(#[source] ProtocolError),
}

/// Why a client's bearer token was refused; `code` goes into `WWW-Authenticate`
/// as upstream's scheduler writes it.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the client token is not the one this scheduler accepts")]
    Mismatch,
}

impl ClientAuthError {
    pub const fn code(&self) -> &'static str {
        match self {
            ClientAuthError::Missing => "no_bearer_auth",
            ClientAuthError::Mismatch => "bearer_auth_failed",
        }
    }
}

struct Tracked {
    state: JobState,
    /// When it entered `state`.
    since: Instant,
}

pub struct LocalScheduler {
    server_id: ServerId,
    cert: ServerCertificateHttpResponse,
    num_cpus: usize,
    capacity: usize,
    client_token: String,
    key: JobKey,
    /// How long a placed job may wait for its upload or its run_job.
    unclaimed: Duration,
    next_job: AtomicU64,
    jobs: Mutex<HashMap<JobId, Tracked>>,
}

/// A job placed on this server: what `alloc_job` answers with.
#[derive(Debug)]
pub struct Reservation {
    pub job_id: JobId,
    pub token: String,
}

impl LocalScheduler {
    /// `num_cpus` is what a heartbeat would report (`Config::scheduler_cpus`); `job_id_base` should be random, so ids from
    /// before a restart are not reused (as upstream's scheduler does).
    pub fn new(
        server_id: ServerId,
        cert: ServerCertificateHttpResponse,
        num_cpus: usize,
        client_auth: &ClientAuth,
        key: JobKey,
        job_id_base: u64,
        unclaimed: Duration,
    ) -> Self {
        let client_token = match client_auth {
            ClientAuth::Insecure => INSECURE_CLIENT_TOKEN.to_owned(),
            ClientAuth::Token { token } => token.clone(),
        };
        LocalScheduler {
            server_id,
            cert,
            num_cpus,
            capacity: crate::config::scheduler_capacity(num_cpus),
            client_token,
            key,
            unclaimed,
            next_job: AtomicU64::new(job_id_base),
            jobs: Mutex::new(HashMap::new()),
        }
    }

    pub fn server_id(&self) -> ServerId {
        self.server_id
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Checks the raw `Authorization` header of a client request.
    pub fn check_client(&self, authorization: Option<&str>) -> Result<(), ClientAuthError> {
        match authorization.and_then(|h| h.split_once(' ')) {
            Some(("Bearer", token)) if token == self.client_token => Ok(()),
            Some(("Bearer", _)) => Err(ClientAuthError::Mismatch),
            _ => Err(ClientAuthError::Missing),
        }
    }

    /// Takes a job slot, or says why not. Expired unclaimed jobs are dropped
    /// from `table` first, so they free their slots.
    pub fn reserve(&self, table: &JobTable) -> Result<Reservation, ReserveError> {
        let mut jobs = crate::sync::lock(&self.jobs);
        self.expire(&mut jobs, table);
        if jobs.len() >= self.capacity {
            return Err(ReserveError::Full { in_progress: jobs.len(), capacity: self.capacity });
        }
        let job_id = JobId(self.next_job.fetch_add(1, Ordering::Relaxed));
        let token = self.key.token_for(job_id).map_err(ReserveError::Token)?;
        jobs.insert(job_id, Tracked { state: JobState::Pending, since: Instant::now() });
        Ok(Reservation { job_id, token })
    }

    /// Gives a slot back when the job could not be placed after all.
    pub fn release(&self, job_id: JobId) {
        crate::sync::lock(&self.jobs).remove(&job_id);
    }

    /// Follows a job through `Pending → Ready → Started → Complete`, as upstream's
    /// scheduler does; other transitions are ignored (and logged). Jobs it never
    /// placed (assigned over the build-server API directly) are not tracked.
    pub fn update(&self, job_id: JobId, state: JobState) {
        let mut jobs = crate::sync::lock(&self.jobs);
        let Some(job) = jobs.get_mut(&job_id) else { return };
        match (job.state, state) {
            (JobState::Pending, JobState::Ready) | (JobState::Ready, JobState::Started) => {
                *job = Tracked { state, since: Instant::now() };
            }
            (JobState::Started, JobState::Complete) => {
                jobs.remove(&job_id);
            }
            (from, to) => tracing::debug!(%job_id, %from, %to, "ignored an invalid job state transition"),
        }
    }

    pub fn status(&self, table: &JobTable) -> SchedulerStatusResult {
        let mut jobs = crate::sync::lock(&self.jobs);
        self.expire(&mut jobs, table);
        SchedulerStatusResult { num_servers: 1, num_cpus: self.num_cpus as u64, in_progress: jobs.len() as u64 }
    }

    /// The certificate of `server_id`, if that is this server.
    pub fn certificate(&self, server_id: &str) -> Option<&ServerCertificateHttpResponse> {
        (server_id == self.server_id.addr().to_string()).then_some(&self.cert)
    }

    pub fn cert_digest(&self) -> &[u8] {
        &self.cert.cert_digest
    }

    /// Frees the slots of jobs placed longer than `unclaimed` ago whose client
    /// has done nothing since: not started its toolchain upload (`Pending`), not
    /// sent its run_job (`Ready`). An upload under way counts as activity.
    fn expire(&self, jobs: &mut HashMap<JobId, Tracked>, table: &JobTable) {
        let mut expired = Vec::new();
        jobs.retain(|&job_id, job| {
            match job.state {
                JobState::Pending if table.is_uploading(job_id) => {
                    job.since = Instant::now();
                    return true;
                }
                JobState::Pending | JobState::Ready => {}
                JobState::Started | JobState::Complete => return true,
            }
            let keep = job.since.elapsed() < self.unclaimed;
            if !keep {
                expired.push(job_id);
            }
            keep
        });
        for job_id in expired {
            table.take(job_id);
            tracing::warn!(%job_id, unclaimed = ?self.unclaimed,
                "a job placed here was not claimed in time (no toolchain upload, no run_job); its slot is free again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(cpus: usize) -> LocalScheduler {
        let cert = ServerCertificateHttpResponse { cert_digest: vec![1; 32], cert_pem: b"pem".to_vec() };
        let server_id = ServerId("127.0.0.1:10501".parse().unwrap());
        LocalScheduler::new(
            server_id,
            cert,
            cpus,
            &ClientAuth::Insecure,
            JobKey::from_bytes(&[7; 32]).unwrap(),
            100,
            Duration::from_millis(300),
        )
    }

    #[test]
    fn capacity_is_upstreams_and_complete_frees_a_slot() {
        let (sched, table) = (scheduler(2), JobTable::default());
        assert_eq!(sched.capacity(), 3);
        let ids: Vec<JobId> = (0..3).map(|_| sched.reserve(&table).unwrap().job_id).collect();
        assert_eq!(ids, vec![JobId(100), JobId(101), JobId(102)]);
        assert!(matches!(sched.reserve(&table), Err(ReserveError::Full { in_progress: 3, capacity: 3 })));
        // Complete before Started is not a valid transition: the slot stays taken.
        sched.update(ids[0], JobState::Complete);
        assert!(sched.reserve(&table).is_err());
        for state in [JobState::Ready, JobState::Started, JobState::Complete] {
            sched.update(ids[0], state);
        }
        assert_eq!(sched.status(&table).in_progress, 2);
        assert!(sched.reserve(&table).is_ok());
    }

    #[test]
    fn unclaimed_jobs_free_their_slots_unless_an_upload_is_under_way() {
        use crate::protocol::Toolchain;
        let (sched, table) = (scheduler(1), JobTable::default());
        let toolchain = Toolchain { archive_id: "made-up".into() };
        let idle = sched.reserve(&table).unwrap().job_id;
        table.assign(idle, toolchain.clone(), false, None).unwrap();
        let uploading = sched.reserve(&table).unwrap().job_id;
        table.assign(uploading, toolchain, false, None).unwrap();
        let upload = table.start_upload(uploading);
        assert!(sched.reserve(&table).is_err(), "both slots taken");
        std::thread::sleep(Duration::from_millis(400));
        // The idle job is gone from the scheduler and from the server's table.
        assert_eq!(sched.status(&table).in_progress, 1);
        assert!(table.toolchain_of(idle).is_none());
        assert!(table.toolchain_of(uploading).is_some());
        // Once its upload ends (failed here), the other one gets the same grace.
        drop(upload);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(sched.status(&table).in_progress, 0);
    }

    #[test]
    fn client_tokens() {
        let sched = scheduler(1);
        assert!(sched.check_client(Some("Bearer dangerously_insecure_client")).is_ok());
        assert!(matches!(sched.check_client(Some("Bearer nope")), Err(ClientAuthError::Mismatch)));
        assert!(matches!(sched.check_client(None), Err(ClientAuthError::Missing)));
        assert!(matches!(sched.check_client(Some("Basic x")), Err(ClientAuthError::Missing)));
        assert!(sched.certificate("127.0.0.1:10501").is_some());
        assert!(sched.certificate("127.0.0.1:1").is_none());
    }
}
