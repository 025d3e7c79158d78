//! The client-facing scheduler API of upstream's `sccache-dist scheduler`,
//! answered by kiln itself when no `scheduler_url` is configured: `alloc_job`,
//! `server_certificate` and `status`, plain HTTP, same bincode types and client
//! auth as upstream. The server-facing half (heartbeats, job states) has no
//! HTTP here: this scheduler lives in the server it schedules for.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::body::BoundedBody;
use super::routes::{assign, encoded_response};
use super::state::AppState;
use super::ApiError;
use crate::protocol::{self, AllocJobHttpResponse, JobAlloc, Toolchain, MAX_SMALL_MESSAGE};
use crate::scheduler::{LocalScheduler, ReserveError};

pub fn configure_scheduler(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/scheduler")
            .route("/alloc_job", web::post().to(alloc_job))
            .route("/server_certificate/{server_id}", web::get().to(server_certificate))
            .route("/status", web::get().to(status)),
    )
    .default_service(web::to(|| async { Err::<HttpResponse, _>(ApiError::NotFound) }));
}

type State = web::Data<AppState>;
type Local = web::Data<Arc<LocalScheduler>>;

async fn alloc_job(
    state: State,
    local: Local,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    local.check_client(authorization)?;
    let body = BoundedBody::new(&req, payload, MAX_SMALL_MESSAGE, state.limits.body_timeout)?.read_all().await?;
    let toolchain: Toolchain = protocol::decode(&body, MAX_SMALL_MESSAGE)?;
    if let Err(draining) = state.ops.lifecycle.admit() {
        // The client compiles locally, as it does when every slot is taken.
        return encoded_response(&req, &AllocJobHttpResponse::Fail { msg: draining.to_string() });
    }
    let reservation = match local.reserve(&state.jobs) {
        Ok(reservation) => reservation,
        Err(full @ ReserveError::Full { .. }) => {
            tracing::info!(reason = %full, "alloc_job: no free slot, the client compiles locally");
            return encoded_response(&req, &AllocJobHttpResponse::Fail { msg: full.to_string() });
        }
        Err(e @ ReserveError::Token(_)) => return Err(ApiError::Internal(crate::report::ErrorChain(&e).to_string())),
    };
    let job_id = reservation.job_id;
    let assigned = match assign(&state, job_id, toolchain).await {
        Ok(assigned) => assigned,
        Err(e) => {
            local.release(job_id);
            return Err(e);
        }
    };
    if !assigned.need_toolchain {
        local.update(job_id, protocol::JobState::Ready);
    }
    let job_alloc = JobAlloc { auth: reservation.token, job_id, server_id: local.server_id() };
    let answer = AllocJobHttpResponse::Success {
        job_alloc,
        need_toolchain: assigned.need_toolchain,
        cert_digest: local.cert_digest().to_vec(),
    };
    encoded_response(&req, &answer)
}

async fn server_certificate(local: Local, req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    match local.certificate(&path) {
        Some(cert) => encoded_response(&req, cert),
        None => Err(ApiError::UnknownServer(path.into_inner())),
    }
}

async fn status(state: State, local: Local, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    encoded_response(&req, &local.status(&state.jobs))
}
