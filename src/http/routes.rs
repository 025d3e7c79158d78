//! The build-server endpoints of the sccache-dist protocol; the operator endpoints
//! (ops.rs) are served beside them.

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use tracing::Instrument;

use super::body::BoundedBody;
use super::state::AppState;
use super::ApiError;
use crate::actors::SubmitJob;
use crate::jobs::{JobError, JobRequest};
use crate::observe::{JobPhases, Phase};
use crate::protocol::{
    self, AssignJobResult, JobId, JobState, RunJobResult, SubmitToolchainResult, Toolchain, BINCODE_CONTENT_TYPE,
    MAX_SMALL_MESSAGE,
};
use crate::scheduler::ClaimedJob;
use crate::toolchains::UploadError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/distserver")
            .route("/assign_job/{job_id}", web::post().to(assign_job))
            .route("/submit_toolchain/{job_id}", web::post().to(submit_toolchain))
            .route("/run_job/{job_id}", web::post().to(run_job)),
    )
    .configure(super::ops::configure)
    .default_service(web::to(|| async { Err::<HttpResponse, _>(ApiError::NotFound) }));
}

type State = web::Data<AppState>;

/// The opening the three build-server calls share, as an extractor: the job id
/// from the path, checked against the call's bearer token, and the span that
/// tags every log line of the call with the id. A bad id or token is answered
/// before the handler runs and before any of the body is read.
struct JobCall {
    job_id: JobId,
    span: tracing::Span,
}

impl FromRequest for JobCall {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(JobCall::check(req))
    }
}

impl JobCall {
    fn check(req: &HttpRequest) -> Result<Self, ApiError> {
        let raw = req.match_info().get("job_id").unwrap_or_default();
        let span = tracing::info_span!("job", job_id = %raw);
        let state = req.app_data::<State>().ok_or(ApiError::Unavailable("build-server state"))?;
        let job_id = raw.parse::<u64>().map(JobId).map_err(|_| ApiError::BadJobId(raw.to_owned()))?;
        let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        state.key.verify(authorization, job_id)?;
        Ok(JobCall { job_id, span })
    }
}

/// Answers in the encoding the request accepts, as upstream's servers do:
/// bincode when `Accept` is absent or allows `application/octet-stream`, JSON
/// when it asks for `application/json`, 406 otherwise.
pub(super) fn encoded_response<T: serde::Serialize>(req: &HttpRequest, value: &T) -> Result<HttpResponse, ApiError> {
    match preferred_encoding(req)? {
        Encoding::Bincode => {
            let bytes = protocol::encode(value)?;
            Ok(HttpResponse::Ok().content_type(BINCODE_CONTENT_TYPE).body(bytes))
        }
        Encoding::Json => Ok(HttpResponse::Ok().json(value)),
    }
}

enum Encoding {
    Bincode,
    Json,
}

fn preferred_encoding(req: &HttpRequest) -> Result<Encoding, ApiError> {
    let Some(accept) = req.headers().get(header::ACCEPT) else { return Ok(Encoding::Bincode) };
    let accept = accept.to_str().map_err(|_| ApiError::NotAcceptable("<not text>".into()))?;
    // In the client's order; q-values are not weighed (no sccache peer sends them).
    for range in accept.split(',').map(|r| r.split(';').next().unwrap_or("").trim()) {
        match range {
            "application/octet-stream" | "application/*" | "*/*" => return Ok(Encoding::Bincode),
            "application/json" => return Ok(Encoding::Json),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable(accept.to_owned()))
}

async fn assign_job(
    state: State,
    req: HttpRequest,
    JobCall { job_id, span }: JobCall,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    async move {
        let body = BoundedBody::new(&req, payload, MAX_SMALL_MESSAGE, state.limits.body_timeout)?.read_all().await?;
        let toolchain: Toolchain = protocol::decode(&body, MAX_SMALL_MESSAGE)?;
        let answer = assign(&state, job_id, toolchain).await?;
        encoded_response(&req, &answer)
    }
    .instrument(span)
    .await
}

/// Records a job placed on this server (by a scheduler's assign_job, or kiln's
/// own scheduler) and says whether its toolchain must be sent: only when it is
/// neither here, nor in the farm's store, nor already on its way.
pub(super) async fn assign(state: &AppState, job_id: JobId, toolchain: Toolchain) -> Result<AssignJobResult, ApiError> {
    // In flight from here to its answer: a drain that starts meanwhile waits for it.
    let held = state.ops.lifecycle.start_job()?;
    let offer = state.toolchains.offer(&toolchain.archive_id, job_id).await?;
    let archive_id = toolchain.archive_id.clone();
    tracing::info!(%archive_id, need_toolchain = offer.need_toolchain(), ?offer, "job assigned");
    let has = !offer.need_toolchain();
    if let Err(e) = state.jobs.assign(job_id, toolchain, has, Some(held)) {
        if !has {
            state.toolchains.withdraw(&archive_id, job_id);
        }
        return Err(e.into());
    }
    let job_state = if has { JobState::Ready } else { JobState::Pending };
    Ok(AssignJobResult { state: job_state, need_toolchain: !has })
}

async fn submit_toolchain(
    state: State,
    req: HttpRequest,
    JobCall { job_id, span }: JobCall,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    async move {
        let body = BoundedBody::new(&req, payload, state.limits.max_archive_bytes, state.limits.upload_timeout)?;
        let Some(toolchain) = state.jobs.toolchain_of(job_id) else {
            tracing::warn!("submit_toolchain for a job this server does not know");
            body.discard().await?;
            return encoded_response(&req, &SubmitToolchainResult::JobNotFound);
        };
        let archive_id = toolchain.archive_id;
        // Until this upload ends, kiln's own scheduler keeps the job's slot.
        let _upload = state.jobs.start_upload(job_id);
        match state.toolchains.receive(&archive_id, job_id).await? {
            // Another job brought it meanwhile.
            None => body.discard().await?,
            Some(mut upload) => {
                let mut body = body;
                while let Some(chunk) = body.next_chunk().await? {
                    upload.write(&chunk).await?;
                }
                match upload.finish().await {
                    Ok(()) => {}
                    Err(e @ UploadError::NoRoom(_)) => {
                        tracing::warn!(%archive_id, error = %e, "toolchain cannot be cached");
                        return encoded_response(&req, &SubmitToolchainResult::CannotCache);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if state.jobs.mark_ready(job_id) {
            state.scheduler.report(job_id, JobState::Ready).await;
        }
        encoded_response(&req, &SubmitToolchainResult::Success)
    }
    .instrument(span)
    .await
}

async fn run_job(
    state: State,
    req: HttpRequest,
    JobCall { job_id, span }: JobCall,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let job_span = span.clone();
    async move {
        // Claimed before anything is read or reserved: a second run_job of this id,
        // at once or later, finds nothing; and from here every way out ends the
        // job at the scheduler, which frees its slot. A job assigned before a drain
        // began runs: it is counted in flight from its assignment to this answer.
        let Some(mut job) = state.jobs.take(job_id) else {
            tracing::warn!("run_job for a job this server does not know (never assigned, expired, or already run)");
            run_job_body(&state, &req, payload)?
                .discard()
                .await?;
            return encoded_response(&req, &RunJobResult::JobNotFound);
        };
        let in_flight = job.held.take();
        let mut claimed = ClaimedJob::new(state.scheduler.clone(), job_id, job.ready);
        let outcome = run_claimed(&state, &req, payload, job, &mut claimed, job_span).await;
        claimed.complete().await;
        if let Err(e) = &outcome {
            tracing::info!(error = %crate::report::ErrorChain(e), "the job ended without a result; its scheduler slot is free");
        }
        drop(in_flight);
        encoded_response(&req, &RunJobResult::Complete(outcome?))
    }
    .instrument(span)
    .await
}

/// A run_job body, bounded by the job request limits (read, or discarded when
/// the call is answered without it).
fn run_job_body(state: &AppState, req: &HttpRequest, payload: web::Payload) -> Result<BoundedBody, ApiError> {
    BoundedBody::new(req, payload, state.limits.max_request_bytes, state.limits.body_timeout)
}

/// Reads a claimed job's body, runs the job and waits for its result.
async fn run_claimed(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    job: crate::jobs::AssignedJob,
    claimed: &mut ClaimedJob,
    job_span: tracing::Span,
) -> Result<crate::protocol::JobComplete, ApiError> {
    let body = run_job_body(state, req, payload)?;
    // Held until the job is answered: the body lives that long, in the job.
    let (body, _memory) = body.read_all_within(&state.body_memory).await?;
    let (request, inputs) = protocol::split_run_job_body(&body)?;
    crate::jobs::check_request_shape(&request.command, &request.outputs)?;
    let inputs_zlib = body.slice(body.len() - inputs.len()..);
    tracing::info!(executable = %request.command.executable, inputs_bytes = inputs_zlib.len(), "job accepted");
    // assign_job may have promised a toolchain still on its way (another job's
    // upload, or a fetch from the store): it must be here first. The wait is the
    // job's toolchain phase.
    let phases = JobPhases::starting(Phase::Toolchain);
    state.toolchains.arrival(&job.toolchain.archive_id).await?;
    phases.enter(Phase::Queue);
    claimed.start().await;
    let request = JobRequest {
        job_id: claimed.job_id(),
        archive_id: job.toolchain.archive_id,
        command: request.command,
        outputs: request.outputs,
        inputs_zlib,
        span: job_span,
        phases,
    };
    let answer = state.queue.send(SubmitJob(request)).await.map_err(|_| ApiError::Unavailable("job queue"))??;
    // A dropped sender means the builder died with the job.
    Ok(answer.await.map_err(|_| JobError::BuilderCrashed)??)
}
