//! Assembles kiln: sweeps what a previous run left, starts the actors, serves HTTP.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use tokio::sync::Semaphore;

use crate::actors::builder::BuilderDeps;
use crate::actors::{Builder, Cleaner, JobQueue, SandboxPool, SweepStale, ToolchainCache, Unpacker};
use crate::config::{Backend, Config};
use crate::http::{body_memory_permits, configure, AppState, HttpLimits};
use crate::jobs::JobTable;
use crate::protocol::JobKey;
use crate::sandbox::docker::start_docker_backend;
use crate::sandbox::overlay::OverlayBackend;
use crate::sandbox::{SandboxLimits, SharedBackend};
use crate::stats::Stats;

/// How often assigned-but-never-run jobs are forgotten.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(30);
/// In-flight requests get this long to finish after SIGTERM/SIGINT.
const SHUTDOWN_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("preparing the data directory {path:?} failed")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the job token key is invalid")]
    Key(#[source] crate::protocol::ProtocolError),
    #[error("an actor stopped during startup")]
    Startup,
    #[error("listening on {addr} failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
}

/// Runs kiln until SIGINT/SIGTERM. `on_listening` gets the bound address (the
/// configured port may be 0).
pub async fn serve(config: Config, on_listening: impl FnOnce(SocketAddr)) -> Result<(), ServerError> {
    let stats = Arc::new(Stats::default());
    let data_err = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| ServerError::DataDir { path, source }
    };

    let cleaner = Cleaner::new(stats.clone()).start();
    let sweep = SweepStale {
        data_dir: config.data_dir.clone(),
        sandboxes_dir: config.sandboxes_dir(),
        per_run_dirs: vec![config.roots_dir(), config.sandboxes_dir(), config.incoming_dir()],
    };
    let report = cleaner.send(sweep).await.map_err(|_| ServerError::Startup)?.map_err(data_err(&config.data_dir))?;
    tracing::info!(
        killed = report.killed,
        unmounted = report.unmounted,
        removed = report.removed,
        "swept what the previous run left"
    );

    let archives = config.archives_dir();
    let (budget, cache_stats) = (config.toolchains.cache_bytes, stats.clone());
    let cache_dir = archives.clone();
    let cache = tokio::task::spawn_blocking(move || ToolchainCache::load(&cache_dir, budget, cache_stats))
        .await
        .map_err(|_| ServerError::Startup)?
        .map_err(data_err(&archives))?
        .start();
    let unpacker = Unpacker::new(
        config.roots_dir(),
        config.toolchains.unpacked_bytes,
        config.toolchains.extract_limits(),
        stats.clone(),
    )
    .start();

    let builders = config.builder_count();
    let limits = SandboxLimits {
        inputs: config.jobs.extract_limits(),
        max_output_bytes: config.jobs.max_output_bytes,
        max_stdio_bytes: config.jobs.max_stdio_bytes,
    };
    // The docker backend keeps its own warm pool (the ContainerPool): the SandboxPool
    // then prepares nothing ahead, each acquire takes a warm container at once.
    let (backend, warm): (SharedBackend, usize) = match config.sandbox.backend {
        Backend::Overlay => (
            Arc::new(OverlayBackend::new(config.sandboxes_dir(), config.sandbox.bwrap_path.clone(), limits)),
            config.sandbox.warm_per_toolchain,
        ),
        Backend::Docker => {
            (start_docker_backend(&config.sandbox.docker, &config.data_dir, limits, stats.clone()).await, 0)
        }
    };
    let max_idle = (builders * 2).max(warm);
    let backend_name = backend.name();
    let pool = SandboxPool::new(backend, warm, max_idle, cleaner.clone(), stats.clone()).start();
    let queue = JobQueue::new(config.jobs.queue_len, stats.clone()).start();
    let deps = BuilderDeps {
        queue: queue.clone(),
        cache: cache.clone(),
        unpacker,
        pool,
        cleaner,
        stats: stats.clone(),
        job_timeout: config.jobs.timeout(),
    };
    // Held until shutdown: a supervisor restarts its actor only while some address
    // of it is alive, and an idle builder's address is otherwise only in the queue.
    let _builders: Vec<Addr<Builder>> = (0..builders)
        .map(|id| {
            let deps = deps.clone();
            Supervisor::start(move |_| Builder::new(id, deps))
        })
        .collect();

    let key = match config.job_token_key_bytes() {
        Some(bytes) => JobKey::from_bytes(&bytes).map_err(ServerError::Key)?,
        None => JobKey::generate().map_err(ServerError::Key)?,
    };
    let state = web::Data::new(AppState {
        key,
        jobs: JobTable::default(),
        cache,
        queue,
        stats,
        limits: HttpLimits {
            max_archive_bytes: config.toolchains.max_archive_bytes,
            max_request_bytes: config.jobs.max_request_bytes,
            max_buffered_request_bytes: config.jobs.max_buffered_request_bytes,
            body_timeout: config.jobs.body_timeout(),
            upload_timeout: Duration::from_secs(config.toolchains.upload_timeout_secs),
        },
        incoming_dir: config.incoming_dir(),
        next_upload: AtomicU64::new(0),
        body_memory: Arc::new(Semaphore::new(body_memory_permits(config.jobs.max_buffered_request_bytes) as usize)),
    });
    spawn_job_expiry(state.clone(), Duration::from_secs(config.jobs.assigned_ttl_secs));

    let app_state = state.clone();
    let server = HttpServer::new(move || App::new().app_data(app_state.clone()).configure(configure))
        .workers(builders.clamp(1, 4))
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        // Drop a request's handler as soon as its client hangs up, so a running job
        // is cancelled instead of holding a builder until its timeout. Build clients
        // never half-close while they wait for an answer.
        .h1_allow_half_closed(false)
        .bind(config.listen)
        .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
    let bound = server.addrs().first().copied().unwrap_or(config.listen);
    tracing::info!(addr = %bound, builders, backend = backend_name, data_dir = ?config.data_dir, "kiln is serving");
    on_listening(bound);
    server.run().await.map_err(ServerError::Http)
}

fn spawn_job_expiry(state: web::Data<AppState>, ttl: Duration) {
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
        loop {
            tick.tick().await;
            let expired = state.jobs.expire(ttl);
            if expired > 0 {
                tracing::info!(expired, "forgot assigned jobs that were never run");
            }
        }
    });
}
