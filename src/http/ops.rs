//! The operator endpoints, served on the build-server address and on
//! `kiln.metrics_listen` (plain HTTP): `/metrics` (Prometheus), `/status` (HTML),
//! `/healthz` (liveness), `/readyz` (readiness: can kiln take jobs now?),
//! `GET /api/v1/kiln/status` (JSON, `kiln status`)
//! and `POST /api/v1/kiln/gc` (`kiln gc`, loopback clients only).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::state::AppState;
use super::status_page;
use super::ApiError;
use crate::actors::{
    DescribeCache, DescribePool, DescribeRoots, DiscardIdle, EvictIdleRoots, SandboxPool, ToolchainCache, TrimCache,
    Unpacker,
};
use crate::observe::{metrics, GcReport, Lifecycle, Observer, Readiness, SharedLinkHealth, Snapshot, StatusDocument};
use crate::quarantine::Quarantine;
use crate::stats::Stats;

/// How long a reading waits for one actor's answer: a busy actor shows as
/// "unavailable" rather than stalling a scrape.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The actors and shared state the operator endpoints read.
pub struct Ops {
    pub observer: Arc<Observer>,
    pub lifecycle: Arc<Lifecycle>,
    pub stats: Arc<Stats>,
    pub cache: Addr<ToolchainCache>,
    pub unpacker: Addr<Unpacker>,
    pub pool: Addr<SandboxPool>,
    pub backend: &'static str,
    pub builders: usize,
    pub link_health: Option<SharedLinkHealth>,
    pub quarantine: Arc<Quarantine>,
    pub readiness: Readiness,
    pub started: Instant,
}

async fn ask<A, M>(addr: &Addr<A>, msg: M) -> Option<M::Result>
where
    A: actix::Actor + actix::Handler<M>,
    A::Context: actix::dev::ToEnvelope<A, M>,
    M: actix::Message + Send + 'static,
    M::Result: Send,
{
    tokio::time::timeout(ASK_TIMEOUT, addr.send(msg)).await.ok()?.ok()
}

impl Ops {
    pub async fn snapshot(&self) -> Snapshot {
        let (archives, roots, pool, not_ready) = tokio::join!(
            ask(&self.cache, DescribeCache),
            ask(&self.unpacker, DescribeRoots),
            ask(&self.pool, DescribePool),
            self.readiness.check()
        );
        let activity = &self.observer.activity;
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            backend: self.backend.to_owned(),
            draining: self.lifecycle.is_draining(),
            jobs_in_flight: self.lifecycle.in_flight(),
            jobs_running: activity.running(),
            jobs_refused_draining: self.lifecycle.refused(),
            counters: self.stats.snapshot(),
            builders: activity.builders(),
            archives,
            roots,
            pool,
            recent_jobs: activity.recent_jobs(),
            recent_errors: activity.recent_errors(),
            scheduler_link: self.link_health.as_ref().map(|h| crate::sync::lock(h).clone()),
            toolchain_health: self.quarantine.describe(),
            not_ready,
        }
    }

    /// Garbage collection now: idle sandboxes first (they pin roots), then every
    /// unused unpacked root, then archives over budget.
    pub async fn collect_garbage(&self) -> Result<GcReport, &'static str> {
        let sandboxes = self.pool.send(DiscardIdle).await.map_err(|_| "sandbox pool")?;
        let roots = self.unpacker.send(EvictIdleRoots).await.map_err(|_| "unpacker")?;
        let archives = self.cache.send(TrimCache).await.map_err(|_| "toolchain cache")?;
        let report = GcReport { sandboxes, roots, archives };
        tracing::info!(?report, "garbage collected");
        Ok(report)
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(prometheus))
        .route("/status", web::get().to(status_page))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
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
    StatusDocument {
        assigned_jobs: state.jobs.len(),
        toolchain_store: state.toolchains.store().map(|store| store.location().to_string()),
        snapshot: state.ops.snapshot().await,
    }
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

/// 200 while kiln can take jobs; 503 with the reasons on one line while it
/// cannot (draining, a sandbox backend that cannot make sandboxes, the data
/// dir's disk below its reserve), so a rollout or an autoscaler stops counting
/// on it. Liveness stays on `/healthz`: none of these is cured by a restart.
async fn readyz(state: State) -> HttpResponse {
    let reasons = state.ops.readiness.check().await;
    if reasons.is_empty() {
        return HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("ready\n");
    }
    let line: Vec<String> = reasons.iter().map(|reason| reason.to_string().replace('\n', " ")).collect();
    HttpResponse::ServiceUnavailable()
        .content_type("text/plain; charset=utf-8")
        .insert_header((header::RETRY_AFTER, "5"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(format!("{}\n", line.join("; ")))
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
