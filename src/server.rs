//! Assembles kiln: sweeps what a previous run left, starts the actors, serves the
//! build-server API (HTTPS) and, without an upstream scheduler, its own scheduler API.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};

use crate::actors::builder::BuilderDeps;
use crate::actors::{Builder, Cleaner, JobQueue, SandboxPool, SweepStale, ToolchainCache, Unpacker};
use crate::config::{parse_scheduler_url, Backend, Config, SchedulerAuth, INSECURE_SERVER_TOKEN};
use crate::http::{
    configure, configure_ops, configure_scheduler, listen_h1, AppState, BodyBudget, ConnectionLimits, HttpLimits, Ops,
};
use crate::jobs::JobTable;
use crate::observe::signals::Reload;
use crate::observe::{BackendProbe, Lifecycle, Observer, Readiness, SharedLinkHealth};
use crate::protocol::{HeartbeatServerHttpRequest, JobKey, ServerCertificateHttpResponse, ServerId, ServerNonce};
use crate::quarantine::Quarantine;
use crate::sandbox::cgroup::{CgroupOptions, JobCgroups};
use crate::sandbox::docker::start_docker_backend;
use crate::sandbox::overlay::{
    claim_ids, install_exec_shim, probe_unprivileged, JobSeccomp, MountTemplate, OverlayBackend, OverlayConfinement,
    CLAIMS_DIR,
};
use crate::sandbox::SharedBackend;
use crate::scheduler::{LocalScheduler, Scheduler, UpstreamScheduler};
use crate::stats::Stats;
use crate::tls::ServerCert;
use crate::toolchains::{ArrivalLimits, FetchLimits, ToolchainStore, Toolchains};

/// How often assigned-but-never-run jobs are forgotten.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(30);
/// In-flight requests get this long to finish once the drain is over (or cut).
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
    #[error(transparent)]
    Locked(#[from] crate::data_lock::LockError),
    #[error("an actor stopped during startup")]
    Startup,
    #[error("cannot listen on {addr} ({key}){}", taken_hint(source, key))]
    Bind {
        addr: SocketAddr,
        /// The config key that sets this address.
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
    #[error("opening the toolchain store failed")]
    Store(#[from] crate::store::StoreError),
    #[error("setting up TLS failed")]
    Tls(#[source] crate::tls::TlsError),
    #[error("invalid scheduler_url")]
    SchedulerUrl(#[from] crate::config::SchedulerUrlError),
    #[error("no job uid range for this kiln")]
    JobIds(#[source] crate::sandbox::overlay::ClaimError),
    #[error("the jobs' seccomp filter cannot be built")]
    Seccomp(#[source] crate::sandbox::SandboxError),
    #[error(
        "jobs cannot get cgroups with pids, memory and CPU limits; give kiln a delegated cgroup \
         (systemd: Delegate=yes), or set kiln.sandbox.require_cgroups = false to run jobs without them"
    )]
    Cgroups(#[source] crate::sandbox::cgroup::CgroupError),
}

/// When the address is taken, what to do about it, in the same line.
fn taken_hint(source: &std::io::Error, key: &str) -> String {
    match source.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!(": another process (another kiln?) listens there; set {key} to a free address")
        }
        _ => String::new(),
    }
}

/// Creates `dir` if needed and makes it 0700: what kiln keeps (other clients'
/// toolchains, jobs' inputs and outputs, sandboxes whose files belong to job
/// uids) is no local user's to read, traverse or run.
fn make_private(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != 0o700 {
        tracing::info!(?dir, mode = %format!("{mode:o}"), "making kiln's directory private (0700)");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Everything that confines an overlay job, made once: the seccomp filter, the
/// uid range, the cgroups. Blocking (cgroupfs writes): run on a blocking thread.
fn overlay_confinement(
    config: &Config,
    bwrap: std::path::PathBuf,
    shim: std::path::PathBuf,
) -> Result<OverlayConfinement, ServerError> {
    let (jobs, sandbox) = (&config.kiln.jobs, &config.kiln.sandbox);
    let seccomp = JobSeccomp::compile().map_err(ServerError::Seccomp)?;
    let owner = format!("kiln pid {}, data dir {}", std::process::id(), config.kiln.data_dir.display());
    let ids = claim_ids(std::path::Path::new(CLAIMS_DIR), sandbox.job_ids(), &owner).map_err(ServerError::JobIds)?;
    if ids.range.base != sandbox.job_ids().base {
        tracing::warn!(
            configured = %sandbox.job_ids(),
            "another kiln on this host uses the configured job uids: this one uses the next free range"
        );
    }
    let clashes = ids.range.clashes();
    if !clashes.is_empty() {
        tracing::warn!(
            ?clashes,
            "host accounts use ids in kiln.sandbox.uid_base .. + uid_count: jobs would share them; move the range"
        );
    }
    let cgroups = match JobCgroups::detect(jobs.cgroup_limits(), &CgroupOptions::default()) {
        Ok(cgroups) => {
            tracing::info!(cgroups = %cgroups.describe(), "each job gets a cgroup of its own");
            Some(Arc::new(cgroups))
        }
        Err(e) if sandbox.require_cgroups => return Err(ServerError::Cgroups(e)),
        Err(e) => {
            tracing::warn!(
                error = %crate::report::ErrorChain(&e),
                "jobs run WITHOUT pids, memory and CPU limits: no cgroup can be made for them \
                 (kiln.sandbox.require_cgroups = false)"
            );
            None
        }
    };
    tracing::info!(
        uids = %ids.range,
        seccomp_bytes = seccomp.bpf().len(),
        "overlay jobs run as unprivileged host uids, without user namespaces, under seccomp"
    );
    let mounts = match MountTemplate::make(&[config.build_dir(), bwrap.clone()]) {
        Ok(template) => {
            tracing::info!(
                kept = template.kept,
                left_out = template.left_out,
                "sandboxes start from a mount namespace of the mounts they need"
            );
            Some(template)
        }
        Err(e) => {
            tracing::warn!(
                error = %crate::report::ErrorChain(&e),
                "sandboxes copy kiln's whole mount table: no smaller one could be made"
            );
            None
        }
    };
    Ok(OverlayConfinement { bwrap, shim, ids, seccomp, cgroups, mounts })
}

/// Where the servers ended up listening (configured ports may be 0).
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// The build-server API.
    pub server: SocketAddr,
    pub tls: bool,
    /// kiln's own scheduler API, when no `scheduler_url` is configured.
    pub scheduler: Option<SocketAddr>,
    /// The operator endpoints over plain HTTP (`kiln.metrics_listen`).
    pub metrics: SocketAddr,
}

impl Listening {
    pub fn server_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.server)
    }
}

/// Runs kiln until SIGINT/SIGTERM. `on_listening` learns the bound addresses.
pub async fn serve(config: Config, on_listening: impl FnOnce(Listening)) -> Result<(), ServerError> {
    serve_with(config, Reload::default(), on_listening).await
}

/// [`serve`], with what SIGHUP needs to reload the config (see [`crate::observe::signals`]).
pub async fn serve_with(
    config: Config,
    reload: Reload,
    on_listening: impl FnOnce(Listening),
) -> Result<(), ServerError> {
    // Before anything touches the directories: the sweep below would kill another
    // kiln's sandboxes and empty its directories.
    let _lock = claim_dirs(&config)?;
    let stats = Arc::new(Stats::default());
    let observer = Arc::new(Observer::new(config.builder_count()));
    let lifecycle = Arc::new(Lifecycle::default());
    let storage = start_storage(&config, &stats, &observer).await?;
    let (backend, warm, probe) = start_backend(&config, &stats).await?;
    let workers = start_workers(&config, backend.clone(), warm, &storage, &stats, &observer);

    let key = match config.job_token_key_bytes() {
        Some(bytes) => JobKey::from_bytes(&bytes).map_err(ServerError::Key)?,
        None => JobKey::generate().map_err(ServerError::Key)?,
    };
    let cert = ServerCert::generate(config.public_addr).map_err(ServerError::Tls)?;
    let (listener, bound, server_id) = bind_build_server(&config)?;
    let (scheduler, link_health, local) = start_scheduler(&config, &key, &cert, server_id)?;

    let kiln = &config.kiln;
    let ops = Arc::new(Ops {
        observer,
        lifecycle: lifecycle.clone(),
        stats: stats.clone(),
        cache: storage.cache.clone(),
        unpacker: storage.unpacker,
        pool: workers.pool,
        backend: backend.name(),
        builders: workers.builders.len(),
        link_health,
        quarantine: workers.quarantine,
        readiness: Readiness::new(lifecycle.clone(), probe, config.used_dirs(), config.kiln.disk_reserve.reserve()),
        started: std::time::Instant::now(),
    });
    let store = kiln.toolchains.store.clone().map(|location| {
        tracing::info!(store = %location, "toolchains are shared through the store");
        let limits = FetchLimits {
            max_bytes: kiln.toolchains.max_archive_bytes,
            timeout: Duration::from_secs(kiln.toolchains.upload_timeout_secs),
            store_max_bytes: kiln.toolchains.store_max_bytes,
        };
        ToolchainStore::new(location, storage.cache.clone(), config.incoming_dir(), limits, stats.clone())
    });
    let store = store.transpose()?;
    let arrival_limits = ArrivalLimits { upload_timeout: Duration::from_secs(kiln.toolchains.upload_timeout_secs) };
    let toolchains = Toolchains::new(storage.cache, store, config.incoming_dir(), arrival_limits, stats.clone());
    let state = web::Data::new(AppState {
        ops,
        key,
        jobs: JobTable::default(),
        queue: workers.queue,
        stats,
        limits: HttpLimits {
            max_archive_bytes: kiln.toolchains.max_archive_bytes,
            max_request_bytes: kiln.jobs.max_request_bytes,
            body_timeout: kiln.jobs.body_timeout(),
            upload_timeout: Duration::from_secs(kiln.toolchains.upload_timeout_secs),
        },
        body_memory: BodyBudget::new(kiln.jobs.max_buffered_request_bytes),
        scheduler,
        toolchains,
    });
    spawn_job_expiry(state.clone(), Duration::from_secs(kiln.jobs.assigned_ttl_secs));

    let (servers, listening) = start_http(&config, &state, listener, bound, &cert, local)?;
    tracing::info!(
        addr = %bound,
        server_id = %server_id.addr(),
        tls = kiln.tls,
        builders = workers.builders.len(),
        backend = backend.name(),
        metrics = %listening.metrics,
        scheduler = %match (&config.scheduler_url, listening.scheduler) {
            (Some(url), _) => url.clone(),
            (None, Some(addr)) => format!("built in, http://{addr}"),
            (None, None) => "none".into(),
        },
        "kiln is serving"
    );
    let signals = crate::observe::signals::Signals::install().map_err(ServerError::Http)?;
    on_listening(listening);
    let handles = servers.iter().map(|s| s.handle()).collect();
    let leave = state.scheduler.upstream().map(|link| leave_upstream(link, lifecycle.clone()));
    actix_rt::spawn(crate::observe::signals::run(signals, lifecycle, handles, config.clone(), reload, leave));
    futures_util::future::try_join_all(servers).await.map_err(ServerError::Http)?;
    // Held until here: a supervisor restarts its actor only while some address of
    // it is alive, and an idle builder's address is otherwise only in the queue.
    drop(workers.builders);
    backend.shut_down().await;
    Ok(())
}

/// Locks the directories the config writes to (one kiln per directory) and makes
/// them private.
fn claim_dirs(config: &Config) -> Result<crate::data_lock::DataDirLock, ServerError> {
    let used = config.used_dirs();
    let lock = crate::data_lock::DataDirLock::acquire(used.iter().map(|d| d.as_path()))?;
    for dir in used.iter().chain([&config.archives_dir()]) {
        make_private(dir).map_err(|source| ServerError::DataDir { path: dir.clone(), source })?;
    }
    Ok(lock)
}

fn data_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ServerError {
    let path = path.to_owned();
    move |source| ServerError::DataDir { path, source }
}

/// The actors that keep files: the Cleaner (after it swept what a previous run
/// left), the ToolchainCache and the Unpacker.
struct Storage {
    cleaner: Addr<Cleaner>,
    cache: Addr<ToolchainCache>,
    unpacker: Addr<Unpacker>,
}

async fn start_storage(config: &Config, stats: &Arc<Stats>, observer: &Arc<Observer>) -> Result<Storage, ServerError> {
    let cleaner = Cleaner::new(stats.clone()).observed_by(observer.clone()).start();
    let sweep = SweepStale {
        data_dir: config.build_dir(),
        sandboxes_dir: config.sandboxes_dir(),
        per_run_dirs: vec![config.roots_dir(), config.sandboxes_dir(), config.incoming_dir()],
    };
    let report = cleaner.send(sweep).await.map_err(|_| ServerError::Startup)?.map_err(data_err(&config.build_dir()))?;
    tracing::info!(
        killed = report.killed,
        unmounted = report.unmounted,
        removed = report.removed,
        "swept what the previous run left"
    );

    let archives = config.archives_dir();
    let (budget, cache_stats) = (config.toolchain_cache_size, stats.clone());
    let cache_dir = archives.clone();
    let reserve = config.kiln.disk_reserve.reserve();
    let cache = tokio::task::spawn_blocking(move || {
        ToolchainCache::load(&cache_dir, budget, cache_stats).map(|cache| cache.with_reserve(reserve))
    })
    .await
    .map_err(|_| ServerError::Startup)?
    .map_err(data_err(&archives))?
    .start();
    let toolchains = &config.kiln.toolchains;
    let unpacker =
        Unpacker::new(config.roots_dir(), toolchains.unpacked_bytes, toolchains.extract_limits(), stats.clone())
            .with_inode_budget(toolchains.unpacked_inodes)
            .with_reserve(reserve)
            .start();
    Ok(Storage { cleaner, cache, unpacker })
}

/// The sandbox backend, how many sandboxes per toolchain the SandboxPool keeps
/// prepared (none for a backend that keeps its own warm pool), and how
/// readiness asks whether the backend can make a sandbox.
async fn start_backend(
    config: &Config,
    stats: &Arc<Stats>,
) -> Result<(SharedBackend, usize, BackendProbe), ServerError> {
    let kiln = &config.kiln;
    let limits = kiln.jobs.sandbox_limits();
    let (backend, probe): (SharedBackend, BackendProbe) = match config.backend() {
        Backend::Overlay { bwrap_path } => {
            let shim = config.build_dir().join("kiln-exec");
            install_exec_shim(&shim).await.map_err(data_err(&shim))?;
            let confine = config.clone();
            let confinement = tokio::task::spawn_blocking(move || overlay_confinement(&confine, bwrap_path, shim))
                .await
                .map_err(|_| ServerError::Startup)??;
            // What the startup check runs: bubblewrap makes a user-namespace
            // sandbox as one of this kiln's job uids. A bubblewrap that has gone,
            // or user namespaces switched off since, fails it.
            let (bwrap, identity) = (confinement.bwrap.clone(), confinement.ids.range.nth(0));
            let probe: BackendProbe = Arc::new(move || {
                probe_unprivileged(&bwrap, identity).map_err(|e| crate::report::ErrorChain(&e).to_string())
            });
            (Arc::new(OverlayBackend::new(config.sandboxes_dir(), confinement, limits)), probe)
        }
        Backend::Docker => {
            let backend = start_docker_backend(&kiln.sandbox.docker, &kiln.data_dir, limits, stats.clone()).await;
            // The container pool checks the daemon every 2 s and says so here.
            let stats = stats.clone();
            let probe: BackendProbe = Arc::new(move || match stats.docker_unreachable.load(Ordering::Relaxed) {
                0 => Ok(()),
                _ => Err("the docker daemon does not answer".to_owned()),
            });
            (backend, probe)
        }
    };
    let warm = if backend.prepares_ahead() { kiln.sandbox.warm_per_toolchain } else { 0 };
    Ok((backend, warm, probe))
}

/// The actors that run jobs: the SandboxPool, the JobQueue and the supervised
/// Builders, with the quarantine they share.
struct Workers {
    pool: Addr<SandboxPool>,
    queue: Addr<JobQueue>,
    quarantine: Arc<Quarantine>,
    builders: Vec<Addr<Builder>>,
}

fn start_workers(
    config: &Config,
    backend: SharedBackend,
    warm: usize,
    storage: &Storage,
    stats: &Arc<Stats>,
    observer: &Arc<Observer>,
) -> Workers {
    let kiln = &config.kiln;
    let builders = config.builder_count();
    let max_idle = (builders * 2).max(warm);
    let pool = SandboxPool::new(backend, warm, max_idle, storage.cleaner.clone(), stats.clone()).start();
    let queue = JobQueue::new(kiln.jobs.queue_len, stats.clone()).start();
    let quarantine =
        Arc::new(Quarantine::new(kiln.sandbox.quarantine_after, Duration::from_secs(kiln.sandbox.quarantine_secs)));
    let deps = BuilderDeps {
        queue: queue.clone(),
        cache: storage.cache.clone(),
        unpacker: storage.unpacker.clone(),
        pool: pool.clone(),
        cleaner: storage.cleaner.clone(),
        stats: stats.clone(),
        job_timeout: kiln.jobs.timeout(),
        observer: observer.clone(),
        quarantine: quarantine.clone(),
    };
    let builders = (0..builders)
        .map(|id| {
            let deps = deps.clone();
            Supervisor::start(move |_| Builder::new(id, deps))
        })
        .collect();
    Workers { pool, queue, quarantine, builders }
}

/// Binds the build-server address, before anything names this server: with port
/// 0 (tests), the server id the scheduler hands out must carry the real port.
fn bind_build_server(config: &Config) -> Result<(std::net::TcpListener, SocketAddr, ServerId), ServerError> {
    let bind = config.bind_addr();
    let bind_err = |source| ServerError::Bind { addr: bind, key: "public_addr / bind_address", source };
    let listener = std::net::TcpListener::bind(bind).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    // Accepted sockets inherit TCP_NODELAY from the listener, so it covers the TLS
    // handshake too (actix-web sets it only after the handshake): with Nagle on,
    // the handshake's small writes wait for delayed ACKs, milliseconds per request.
    nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::TcpNoDelay, &true)
        .map_err(|e| bind_err(e.into()))?;
    let server_id = match config.public_addr.port() {
        0 => ServerId(SocketAddr::new(config.public_addr.ip(), bound.port())),
        _ => ServerId(config.public_addr),
    };
    Ok((listener, bound, server_id))
}

/// Where job states go, the link's health (for the status) with upstream's
/// scheduler, and kiln's own scheduler (whose API `start_http` serves) without.
type SchedulerParts = (Scheduler, Option<SharedLinkHealth>, Option<Arc<LocalScheduler>>);

fn start_scheduler(
    config: &Config,
    key: &JobKey,
    cert: &ServerCert,
    server_id: ServerId,
) -> Result<SchedulerParts, ServerError> {
    let kiln = &config.kiln;
    Ok(match &config.scheduler_url {
        Some(url) => {
            let url = parse_scheduler_url(url).map_err(ServerError::SchedulerUrl)?;
            let heartbeat = HeartbeatServerHttpRequest {
                jwt_key: key.as_bytes().to_vec(),
                num_cpus: config.scheduler_cpus() as u64,
                server_nonce: ServerNonce::generate().map_err(ServerError::Key)?,
                cert_digest: cert.cert_digest.clone(),
                cert_pem: cert.cert_pem.clone(),
            };
            let bearer = scheduler_bearer(config.scheduler_auth.as_ref(), server_id);
            let health = SharedLinkHealth::default();
            let link = UpstreamScheduler::new(url, bearer, &heartbeat, health.clone()).map_err(ServerError::Key)?;
            (Scheduler::Upstream(link.start()), Some(health), None)
        }
        None => {
            let certificate = ServerCertificateHttpResponse {
                cert_digest: cert.cert_digest.clone(),
                cert_pem: cert.cert_pem.clone(),
            };
            let job_id_base = ServerNonce::generate().map_err(ServerError::Key)?.0 >> 1;
            let local = Arc::new(LocalScheduler::new(
                server_id,
                certificate,
                config.scheduler_cpus(),
                &kiln.scheduler.client_auth,
                key.clone(),
                job_id_base,
                kiln.scheduler.unclaimed(),
            ));
            (Scheduler::Local(local.clone()), None, Some(local))
        }
    })
}

/// The HTTP servers: the build-server API on `listener`, the operator endpoints,
/// and kiln's own scheduler API when there is a `local` scheduler.
fn start_http(
    config: &Config,
    state: &web::Data<AppState>,
    listener: std::net::TcpListener,
    bound: SocketAddr,
    cert: &ServerCert,
    local: Option<Arc<LocalScheduler>>,
) -> Result<(Vec<actix_server::Server>, Listening), ServerError> {
    let kiln = &config.kiln;
    let tls = match kiln.tls {
        true => Some(cert.server_config().map_err(ServerError::Tls)?),
        false => None,
    };
    let app_state = state.clone();
    let server = actix_server::Server::build()
        .workers(config.builder_count().clamp(1, 4))
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        // SIGTERM drains first (observe::signals), then stops the servers.
        .disable_signals();
    let server = listen_h1(server, listener, tls, ConnectionLimits::default(), move || {
        App::new().app_data(app_state.clone()).configure(configure)
    })
    .map_err(|source| ServerError::Bind { addr: bound, key: "public_addr / bind_address", source })?
    .run();

    let metrics_addr = config.metrics_addr();
    let ops_state = state.clone();
    let ops_server = HttpServer::new(move || App::new().app_data(ops_state.clone()).configure(configure_ops))
        .workers(1)
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        .disable_signals()
        .bind(metrics_addr)
        .map_err(|source| ServerError::Bind { addr: metrics_addr, key: "kiln.metrics_listen", source })?;
    let metrics = ops_server.addrs().first().copied().unwrap_or(metrics_addr);
    let mut servers = vec![server, ops_server.run()];

    let mut listening = Listening { server: bound, tls: kiln.tls, scheduler: None, metrics };
    if let Some(local) = local {
        let addr = kiln.scheduler.listen;
        let (app_state, local) = (state.clone(), web::Data::new(local));
        let server = HttpServer::new(move || {
            App::new().app_data(app_state.clone()).app_data(local.clone()).configure(configure_scheduler)
        })
        .workers(1)
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        .disable_signals()
        .bind(addr)
        .map_err(|source| ServerError::Bind { addr, key: "kiln.scheduler.listen", source })?;
        listening.scheduler = server.addrs().first().copied();
        servers.push(server.run());
    }
    Ok((servers, listening))
}

/// How a draining kiln hands off to upstream's scheduler (`drain_mode =
/// "handoff"`), and when the drain may then end: once the scheduler's last slots
/// here are taken, or no job came for a while, or once it has forgotten this
/// server.
fn leave_upstream(link: actix::Addr<UpstreamScheduler>, lifecycle: Arc<Lifecycle>) -> crate::observe::signals::Leave {
    use crate::observe::Release;
    use crate::scheduler::upstream::{Leave, Left, FORGOTTEN_AFTER};
    Box::new(move || {
        Box::pin(async move {
            match link.send(Leave).await {
                // Jobs assigned before the scheduler took the handoff were placed
                // under the old registration: only those after it use the slots.
                Ok(Left::HandedOff { at, slots }) => Release {
                    after_assigned: Some(lifecycle.assigned() + slots),
                    quiet_after: Some(at),
                    at: Some(at + FORGOTTEN_AFTER),
                },
                Ok(Left::Silent { forgotten_at }) => Release {
                    // A failed handoff: no client asking for a while means none can.
                    quiet_after: Some(std::time::Instant::now()),
                    at: Some(forgotten_at),
                    ..Default::default()
                },
                Err(_) => Release::now(),
            }
        })
    })
}

/// The bearer token this server shows upstream's scheduler, formatted as
/// upstream's server formats it.
fn scheduler_bearer(auth: Option<&SchedulerAuth>, server_id: ServerId) -> String {
    match auth {
        None | Some(SchedulerAuth::Insecure) => format!("{} {INSECURE_SERVER_TOKEN}", server_id.addr()),
        Some(SchedulerAuth::Token { token }) => format!("{} {token}", server_id.addr()),
        Some(SchedulerAuth::JwtToken { token }) => token.clone(),
    }
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
