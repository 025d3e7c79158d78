//! The build-server endpoints of the sccache-dist protocol, plus kiln's status.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::body::BoundedBody;
use super::ApiError;
use crate::actors::{
    CacheError, HasToolchain, JobError, JobQueue, JobRequest, StoreToolchain, SubmitJob, ToolchainCache,
};
use crate::jobs::JobTable;
use crate::observe::{JobPhases, Phase};
use crate::protocol::{
    self, ArchiveHasher, AssignJobResult, JobId, JobKey, JobState, RunJobResult, SubmitToolchainResult, Toolchain,
    BINCODE_CONTENT_TYPE, MAX_SMALL_MESSAGE,
};
use crate::scheduler::{CompleteOnDrop, Scheduler};
use crate::stats::Stats;

/// Request size and time bounds, from the config.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_archive_bytes: u64,
    pub max_request_bytes: u64,
    pub max_buffered_request_bytes: u64,
    /// Deadline for assign_job and run_job bodies.
    pub body_timeout: Duration,
    /// Deadline for a toolchain upload (much larger bodies).
    pub upload_timeout: Duration,
}

/// What every handler shares.
pub struct AppState {
    pub key: JobKey,
    pub jobs: JobTable,
    pub cache: Addr<ToolchainCache>,
    pub queue: Addr<JobQueue>,
    pub stats: Arc<Stats>,
    pub limits: HttpLimits,
    /// Where toolchain uploads are staged (same file system as the cache).
    pub incoming_dir: PathBuf,
    pub next_upload: AtomicU64,
    /// KiB of run_job bodies that may be held in memory at once.
    pub body_memory: Arc<Semaphore>,
    /// Where job state transitions go.
    pub scheduler: Scheduler,
    /// What the status endpoint says about the scheduler link, if there is one.
    pub link_health: Option<crate::actors::upstream_scheduler::SharedLinkHealth>,
    /// Metrics, live activity and the serving/draining lifecycle.
    pub ops: Arc<crate::observe::Ops>,
}

/// Semaphore permits are KiB of request body (a u32 count of bytes would cap at 4 GiB).
pub fn body_memory_permits(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

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

/// Parses the job id and checks the job's bearer token.
fn authorize(state: &AppState, req: &HttpRequest, raw_id: &str) -> Result<JobId, ApiError> {
    let job_id = raw_id.parse::<u64>().map(JobId).map_err(|_| ApiError::BadJobId(raw_id.to_owned()))?;
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    state.key.verify(authorization, job_id)?;
    Ok(job_id)
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

fn job_span(job_id: &str) -> tracing::Span {
    tracing::info_span!("job", job_id = %job_id)
}

async fn assign_job(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let span = job_span(&path);
    async move {
        let job_id = authorize(&state, &req, &path)?;
        let body = BoundedBody::new(&req, payload, MAX_SMALL_MESSAGE, state.limits.body_timeout)?.read_all().await?;
        let toolchain: Toolchain = protocol::decode(&body, MAX_SMALL_MESSAGE)?;
        let answer = assign(&state, job_id, toolchain).await?;
        encoded_response(&req, &answer)
    }
    .instrument(span)
    .await
}

/// Records a job placed on this server (by a scheduler's assign_job, or kiln's
/// own scheduler) and says whether its toolchain must be sent.
pub(super) async fn assign(state: &AppState, job_id: JobId, toolchain: Toolchain) -> Result<AssignJobResult, ApiError> {
    state.ops.lifecycle.admit()?;
    let has = state
        .cache
        .send(HasToolchain { archive_id: toolchain.archive_id.clone() })
        .await
        .map_err(|_| ApiError::Unavailable("toolchain cache"))?;
    Stats::bump(if has { &state.stats.toolchain_cache_hits } else { &state.stats.toolchain_cache_misses });
    tracing::info!(archive_id = %toolchain.archive_id, need_toolchain = !has, "job assigned");
    state.jobs.assign(job_id, toolchain, has)?;
    let job_state = if has { JobState::Ready } else { JobState::Pending };
    Ok(AssignJobResult { state: job_state, need_toolchain: !has })
}

async fn submit_toolchain(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let span = job_span(&path);
    async move {
        let job_id = authorize(&state, &req, &path)?;
        let body = BoundedBody::new(&req, payload, state.limits.max_archive_bytes, state.limits.upload_timeout)?;
        let Some(toolchain) = state.jobs.toolchain_of(job_id) else {
            tracing::warn!("submit_toolchain for a job this server does not know");
            body.discard().await?;
            return encoded_response(&req, &SubmitToolchainResult::JobNotFound);
        };
        let archive_id = toolchain.archive_id;
        let has = state.cache.send(HasToolchain { archive_id: archive_id.clone() }).await;
        if has.map_err(|_| ApiError::Unavailable("toolchain cache"))? {
            // Another job brought it meanwhile.
            body.discard().await?;
        } else {
            let n = state.next_upload.fetch_add(1, Ordering::Relaxed);
            let staged = state.incoming_dir.join(format!("{job_id}-{n}.part"));
            let size = match receive_archive(body, &staged, &archive_id).await {
                Ok(size) => size,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&staged).await;
                    return Err(e);
                }
            };
            match state.cache.send(StoreToolchain { archive_id: archive_id.clone(), staged, size }).await {
                Ok(Ok(())) => {}
                Ok(Err(e @ CacheError::NoRoom { .. })) => {
                    tracing::warn!(%archive_id, error = %e, "toolchain cannot be cached");
                    return encoded_response(&req, &SubmitToolchainResult::CannotCache);
                }
                Ok(Err(e)) => return Err(ApiError::Internal(e.to_string())),
                Err(_) => return Err(ApiError::Unavailable("toolchain cache")),
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

/// gzip's magic bytes: a toolchain is a gzip'd tar.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Streams the upload to `staged` while hashing it; checks it is gzip and that its
/// id (sccache's BLAKE3 hex) is `archive_id`. Returns its size.
async fn receive_archive(mut body: BoundedBody, staged: &std::path::Path, archive_id: &str) -> Result<u64, ApiError> {
    let internal = |e: std::io::Error| ApiError::Internal(format!("staging the toolchain at {staged:?}: {e}"));
    let mut file = tokio::fs::File::create(staged).await.map_err(internal)?;
    let mut hasher = ArchiveHasher::new();
    let mut size = 0u64;
    let mut head: Vec<u8> = Vec::with_capacity(2);
    while let Some(chunk) = body.next_chunk().await? {
        if head.len() < 2 {
            head.extend(chunk.iter().take(2 - head.len()));
        }
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(internal)?;
    }
    // Durable before the cache adopts it: after a crash the cache trusts archives
    // on disk by name, so a truncated one must never get there.
    file.sync_all().await.map_err(internal)?;
    if head != GZIP_MAGIC {
        return Err(ApiError::BadToolchain("the archive is not a gzip stream".into()));
    }
    let actual = hasher.finish();
    if actual != archive_id {
        return Err(ApiError::BadToolchain(format!(
            "the archive's BLAKE3 is {actual}, not the archive_id {archive_id}"
        )));
    }
    Ok(size)
}

async fn run_job(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let span = job_span(&path);
    let job_span = span.clone();
    async move {
        let job_id = authorize(&state, &req, &path)?;
        let body = BoundedBody::new(&req, payload, state.limits.max_request_bytes, state.limits.body_timeout)?;
        // Counted until answered, so a drain waits for this job.
        let _in_flight = match state.ops.lifecycle.start_job() {
            Ok(in_flight) => in_flight,
            Err(draining) => {
                body.discard().await?;
                return Err(draining.into());
            }
        };
        if state.jobs.toolchain_of(job_id).is_none() {
            tracing::warn!("run_job for a job this server does not know");
            body.discard().await?;
            return encoded_response(&req, &RunJobResult::JobNotFound);
        }
        // Held until the answer is sent: the body lives that long, in the job.
        let permits = body_memory_permits(body.expected_len());
        let Ok(_memory) = state.body_memory.clone().try_acquire_many_owned(permits) else {
            body.discard().await?; // read and dropped chunk by chunk: no memory kept
            return Err(ApiError::TooManyBodies { limit: state.limits.max_buffered_request_bytes });
        };
        let body = body.read_all().await?;
        let (request, inputs) = protocol::split_run_job_body(&body)?;
        let inputs_zlib = body.slice(body.len() - inputs.len()..);
        // A job runs once: the second run_job of the same id finds nothing.
        let Some(job) = state.jobs.take(job_id) else {
            return encoded_response(&req, &RunJobResult::JobNotFound);
        };
        tracing::info!(executable = %request.command.executable, inputs_bytes = inputs_zlib.len(), "job accepted");
        // The scheduler only takes Pending → Ready → Started → Complete.
        if !job.ready {
            state.scheduler.report(job_id, JobState::Ready).await;
        }
        state.scheduler.report(job_id, JobState::Started).await;
        let started = CompleteOnDrop::new(state.scheduler.clone(), job_id);
        let request = JobRequest {
            job_id,
            archive_id: job.toolchain.archive_id,
            command: request.command,
            outputs: request.outputs,
            inputs_zlib,
            span: job_span,
            phases: JobPhases::starting(Phase::Queue),
        };
        let outcome = async {
            let answer =
                state.queue.send(SubmitJob(request)).await.map_err(|_| ApiError::Unavailable("job queue"))??;
            // A dropped sender means the builder died with the job.
            Ok::<_, ApiError>(answer.await.map_err(|_| JobError::BuilderCrashed)??)
        }
        .await;
        started.complete().await;
        encoded_response(&req, &RunJobResult::Complete(outcome?))
    }
    .instrument(span)
    .await
}
