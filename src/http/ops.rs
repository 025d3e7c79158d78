//! The operator endpoints, served on the build-server address and on
//! `kiln.metrics_listen` (plain HTTP): `/metrics` (Prometheus), `/status` (HTML),
//! `/healthz` (load balancers), `GET /api/v1/kiln/status` (JSON, `kiln status`)
//! and `POST /api/v1/kiln/gc` (`kiln gc`, loopback clients only).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::state::AppState;
use super::status_page;
use super::ApiError;
use crate::observe::{metrics, StatusDocument};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(prometheus))
        .route("/status", web::get().to(status_page))
        .route("/healthz", web::get().to(healthz))
        .route("/api/v1/kiln/status", web::get().to(status))
        .route("/api/v1/kiln/gc", web::post().to(gc));
}

type State = web::Data<AppState>;

async fn prometheus(state: State) -> Result<HttpResponse, ApiError> {
    let snapshot = state.ops.snapshot().await;
    let text = metrics::render(&state.ops.observer, &snapshot)
        .map_err(|e| ApiError::Internal(format!("encoding the metrics failed: {e}")))?;
    Ok(HttpResponse::Ok().content_type(metrics::CONTENT_TYPE).body(text))
}

async fn status_document(state: &AppState) -> StatusDocument {
    StatusDocument { assigned_jobs: state.jobs.len(), snapshot: state.ops.snapshot().await }
}

async fn status(state: State) -> HttpResponse {
    HttpResponse::Ok().json(status_document(&state).await)
}

async fn status_page(state: State) -> HttpResponse {
    let page = status_page::render(&status_document(&state).await);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(page)
}

/// 200 while serving, 503 while draining (so a load balancer stops sending jobs).
async fn healthz(state: State) -> HttpResponse {
    if state.ops.lifecycle.is_draining() {
        HttpResponse::ServiceUnavailable().insert_header((header::RETRY_AFTER, "5")).body("draining\n")
    } else {
        HttpResponse::Ok().body("ok\n")
    }
}

/// Garbage collection now. Loopback clients only: it throws away warm state, which
/// a remote client has no business doing.
async fn gc(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if !req.peer_addr().is_some_and(|peer| peer.ip().is_loopback()) {
        return Err(ApiError::Forbidden("garbage collection is only available to clients on this machine"));
    }
    let report = state.ops.collect_garbage().await.map_err(ApiError::Unavailable)?;
    Ok(HttpResponse::Ok().json(report))
}
