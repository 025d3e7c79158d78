//! UpstreamScheduler: kiln's link to upstream's `sccache-dist scheduler` (an actor;
//! it lives here, beside [`super::LocalScheduler`], as the other kind of scheduler).
//!
//! It heartbeats every 30 s (10 s after a failure), as upstream's server does, so
//! the scheduler knows this server, its capacity, its job-token key and its TLS
//! certificate; and it reports job state transitions (`Ready`, `Started`,
//! `Complete`), which the scheduler's capacity accounting depends on.
//!
//! Unlike upstream, a failed report never fails the job: the compile the client
//! waits for matters more than the scheduler's bookkeeping. A lost `Complete`
//! would hold one of this server's slots at the scheduler forever, so it is
//! retried a few times in the background.
//!
//! When kiln drains with `drain_mode = "handoff"` it [`Leave`]s: no more
//! heartbeats or reports, and one last heartbeat that re-registers this server
//! afresh, with no jobs, so the scheduler places one last round of jobs here (as
//! many as it gives a server of its CPUs at once) and then none (see
//! [`crate::config::DrainMode`]).

use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use awc::http::header;
use bytes::Bytes;
use futures_util::FutureExt;

use crate::observe::SharedLinkHealth;
use crate::protocol::{
    self, HeartbeatServerHttpRequest, HeartbeatServerResult, JobId, JobState, ServerNonce, UpdateJobStateResult,
    BINCODE_CONTENT_TYPE, MAX_SMALL_MESSAGE,
};

/// Upstream's heartbeat period, and its shorter period after a failure.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
const HEARTBEAT_RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// One request to the scheduler; it answers from memory, so this is generous.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Delays before re-sending a `Complete` the scheduler did not take.
const COMPLETE_RETRIES: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(15)];
/// The scheduler forgets a server it has not heard from for 90 s
/// (`HEARTBEAT_TIMEOUT`, checked at its next request); a little more to be sure.
pub const FORGOTTEN_AFTER: Duration = Duration::from_secs(95);
/// The jobs the scheduler places on a server of `cpus` CPUs at once: it takes
/// one while it has fewer than `cpus + 1 + cpus / 8` assigned (upstream's
/// `load_weight`). A re-registered server has none assigned, and one that
/// reports no `Complete` frees none.
pub fn slots_of(cpus: u64) -> u64 {
    cpus + 1 + cpus / 8
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("POST {url} failed: {message}")]
    Send { url: String, message: String },
    #[error("the scheduler answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the scheduler's answer to {url} does not decode")]
    Decode {
        url: String,
        #[source]
        source: protocol::ProtocolError,
    },
    #[error("the scheduler refused the job state: {0}")]
    StateRefused(String),
    #[error("the scheduler link is not running")]
    Stopped,
}

pub struct UpstreamScheduler {
    url: String,
    /// `Authorization: Bearer <this>`, formatted from `scheduler_auth` as upstream does.
    bearer: String,
    heartbeat: HeartbeatServerHttpRequest,
    encoded: Bytes,
    http: awc::Client,
    health: SharedLinkHealth,
    /// Time of the last failed heartbeat, so repeated failures log once a minute.
    last_failure_log: Option<Instant>,
    /// Time of the last heartbeat the scheduler took.
    last_beat: Option<Instant>,
    /// Held by each heartbeat while it is sent, so that the handoff's heartbeat
    /// (a new nonce) cannot arrive before an older one, which would re-register
    /// the server with its full CPUs.
    sending: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// kiln drains: no more heartbeats or job state reports.
    leaving: bool,
}

impl UpstreamScheduler {
    pub fn new(
        url: String,
        bearer: String,
        heartbeat: &HeartbeatServerHttpRequest,
        health: SharedLinkHealth,
    ) -> Result<Self, protocol::ProtocolError> {
        let http = awc::Client::builder().timeout(REQUEST_TIMEOUT).finish();
        crate::sync::lock(&health).scheduler_url = url.clone();
        Ok(UpstreamScheduler {
            url,
            bearer,
            encoded: Bytes::from(protocol::encode(heartbeat)?),
            heartbeat: heartbeat.clone(),
            http,
            health,
            last_failure_log: None,
            last_beat: None,
            sending: Default::default(),
            leaving: false,
        })
    }

    /// Sends `body` as a heartbeat, after any heartbeat still being sent.
    fn send_heartbeat(
        &self,
        body: Bytes,
    ) -> impl std::future::Future<Output = Result<HeartbeatServerResult, LinkError>> + 'static {
        let url = format!("{}/api/v1/scheduler/heartbeat_server", self.url);
        let (http, bearer, sending) = (self.http.clone(), self.bearer.clone(), self.sending.clone());
        async move {
            let _sending = sending.lock().await;
            post_bincode::<HeartbeatServerResult>(http, url, bearer, body).await
        }
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        if self.leaving {
            return;
        }
        let call = self.send_heartbeat(self.encoded.clone());
        ctx.spawn(call.into_actor(self).map(|result, act, ctx| {
            let next = act.beaten(result);
            if !act.leaving {
                ctx.run_later(next, Self::beat);
            }
        }));
    }

    /// Records a heartbeat's outcome; returns when to send the next one.
    fn beaten(&mut self, result: Result<HeartbeatServerResult, LinkError>) -> Duration {
        let mut health = crate::sync::lock(&self.health);
        match result {
            Ok(HeartbeatServerResult { is_new }) => {
                if is_new || !health.connected {
                    tracing::info!(scheduler = %self.url, is_new, "registered with the scheduler");
                }
                health.connected = true;
                health.last_error = None;
                self.last_beat = Some(Instant::now());
                health.last_heartbeat_at =
                    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs());
                self.last_failure_log = None;
                HEARTBEAT_INTERVAL
            }
            Err(e) => {
                let quiet = self.last_failure_log.is_some_and(|at| at.elapsed() < Duration::from_secs(60));
                if !quiet {
                    tracing::warn!(scheduler = %self.url, error = %e, retry_in = ?HEARTBEAT_RETRY_INTERVAL,
                        "heartbeat to the scheduler failed; it will not send jobs here until one succeeds");
                    self.last_failure_log = Some(Instant::now());
                }
                health.connected = false;
                health.heartbeats_failed += 1;
                health.last_error = Some(e.to_string());
                HEARTBEAT_RETRY_INTERVAL
            }
        }
    }
}

impl Actor for UpstreamScheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.beat(ctx);
    }
}

/// Tells the scheduler a job moved to `state`. Answers once the scheduler took
/// it (or refused); a refused `Complete` is also retried in the background.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<(), LinkError>")]
pub struct ReportJobState {
    pub job_id: JobId,
    pub state: JobState,
}

impl Handler<ReportJobState> for UpstreamScheduler {
    type Result = ResponseActFuture<Self, Result<(), LinkError>>;

    fn handle(&mut self, msg: ReportJobState, _: &mut Context<Self>) -> Self::Result {
        if self.leaving {
            // A report would keep the scheduler from forgetting this server, and a
            // `Complete` would free a slot it must not fill again.
            tracing::debug!(job_id = %msg.job_id, state = %msg.state, "draining: job state not reported");
            return Box::pin(actix::fut::ready(Ok(())));
        }
        let report = self.report(msg);
        Box::pin(report.into_actor(self).map(move |result, act, ctx| {
            act.reported(msg, &result, 0, ctx);
            result
        }))
    }
}

impl UpstreamScheduler {
    fn report(&self, msg: ReportJobState) -> impl std::future::Future<Output = Result<(), LinkError>> + 'static {
        let url = format!("{}/api/v1/scheduler/job_state/{}", self.url, msg.job_id);
        let body = protocol::encode(&msg.state).map(Bytes::from);
        let (http, bearer) = (self.http.clone(), self.bearer.clone());
        async move {
            let body = body.map_err(|source| LinkError::Decode { url: url.clone(), source })?;
            match post_bincode::<UpdateJobStateResult>(http, url, bearer, body).await? {
                UpdateJobStateResult::Success => Ok(()),
                UpdateJobStateResult::Fail { msg } => Err(LinkError::StateRefused(msg)),
            }
        }
    }

    fn reported(
        &mut self,
        msg: ReportJobState,
        result: &Result<(), LinkError>,
        attempt: usize,
        ctx: &mut Context<Self>,
    ) {
        let mut health = crate::sync::lock(&self.health);
        let Err(e) = result else {
            health.states_reported += 1;
            return;
        };
        health.states_failed += 1;
        drop(health);
        // The scheduler refuses a state it cannot accept (unknown job, wrong
        // transition) with a 500: retrying those cannot help. Only a `Complete`
        // that did not get through is worth another try.
        let retry = matches!(e, LinkError::Send { .. }) && msg.state == JobState::Complete && !self.leaving;
        match COMPLETE_RETRIES.get(attempt).filter(|_| retry) {
            Some(&delay) => {
                tracing::warn!(job_id = %msg.job_id, state = %msg.state, error = %e, retry_in = ?delay,
                    "reporting a job state to the scheduler failed");
                ctx.run_later(delay, move |act, ctx| {
                    ctx.spawn(act.report(msg).into_actor(act).map(move |result, act, ctx| {
                        act.reported(msg, &result, attempt + 1, ctx);
                    }));
                });
            }
            None => tracing::warn!(job_id = %msg.job_id, state = %msg.state, error = %e,
                "reporting a job state to the scheduler failed; giving up"),
        }
    }
}

/// kiln drains (`drain_mode = "handoff"`): stop heartbeating and reporting, and
/// hand off with one last heartbeat. Answers how that went.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Left")]
pub struct Leave;

/// How the scheduler was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// It took the handoff heartbeat at `at`: it places at most `slots` more
    /// jobs here.
    HandedOff { at: Instant, slots: u64 },
    /// The handoff failed: the scheduler hears nothing more from this server,
    /// and has forgotten it by `forgotten_at`.
    Silent { forgotten_at: Instant },
}

impl Handler<Leave> for UpstreamScheduler {
    type Result = ResponseActFuture<Self, Left>;

    fn handle(&mut self, _: Leave, _: &mut Context<Self>) -> Self::Result {
        self.leaving = true;
        let forgotten_at = self.last_beat.map_or_else(Instant::now, |at| at + FORGOTTEN_AFTER);
        let silent = Left::Silent { forgotten_at };
        // A new nonce makes the scheduler drop this server's jobs from its books
        // (they run on here all the same) and register it afresh, with none.
        let body = ServerNonce::generate().and_then(|server_nonce| {
            let heartbeat = HeartbeatServerHttpRequest { server_nonce, ..self.heartbeat.clone() };
            protocol::encode(&heartbeat).map(Bytes::from)
        });
        let (url, slots) = (self.url.clone(), slots_of(self.heartbeat.num_cpus));
        let handoff = match body {
            Ok(body) => self.send_heartbeat(body).left_future(),
            Err(source) => {
                let failed = LinkError::Decode { url: "the handoff heartbeat".into(), source };
                std::future::ready(Err(failed)).right_future()
            }
        };
        Box::pin(handoff.into_actor(self).map(move |result, _, _| match result {
            Ok(_) => {
                tracing::info!(scheduler = %url, slots,
                    "draining: handed off; the scheduler places at most this many more jobs here, which kiln runs");
                Left::HandedOff { at: Instant::now(), slots }
            }
            Err(e) => {
                tracing::warn!(scheduler = %url, error = %e,
                    "draining: the handoff heartbeat failed; taking the jobs the scheduler still sends until it forgets this server");
                silent
            }
        }))
    }
}

/// POSTs a bincode body with the server's bearer token and decodes the answer.
async fn post_bincode<T: serde::de::DeserializeOwned>(
    http: awc::Client,
    url: String,
    bearer: String,
    body: Bytes,
) -> Result<T, LinkError> {
    let send = |message: String| LinkError::Send { url: url.clone(), message };
    let mut response = http
        .post(&url)
        .bearer_auth(bearer)
        .insert_header((header::CONTENT_TYPE, BINCODE_CONTENT_TYPE))
        .insert_header((header::ACCEPT, BINCODE_CONTENT_TYPE))
        .send_body(body)
        .await
        .map_err(|e| send(e.to_string()))?;
    let body = response.body().limit(MAX_SMALL_MESSAGE as usize).await.map_err(|e| send(e.to_string()))?;
    if !response.status().is_success() {
        let body = String::from_utf8_lossy(&body).chars().take(500).collect();
        return Err(LinkError::Refused { status: response.status().as_u16(), body });
    }
    protocol::decode(&body, MAX_SMALL_MESSAGE).map_err(|source| LinkError::Decode { url, source })
}
