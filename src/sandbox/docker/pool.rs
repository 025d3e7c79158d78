//! ContainerPool: the docker backend's warm containers, per toolchain, and the
//! images they are made from.
//!
//! A toolchain becomes known the first time a job asks for one of its containers.
//! From then on the pool keeps `min_idle` started containers of it idle, never more
//! than `max_per_toolchain` in all, and never more than `max_containers` over all
//! toolchains: a toolchain that needs room takes it from the idle containers of the
//! least recently used others. Its image is imported once (single-flight: every
//! request for the toolchain waits on the one import; other toolchains import in
//! parallel). The pool holds the toolchain's unpacked root (a lease) while it knows
//! the toolchain, so the root cannot be evicted under an image; when it forgets a
//! toolchain (cold for `TOOLCHAIN_TTL`, or all its containers evicted) it removes the
//! image too.
//!
//! It also watches the daemon: a failed ping marks the backend unhealthy (jobs are
//! refused at once with a clear error, the status shows `docker_unreachable = 1`);
//! when the daemon answers again the pool reconnects, forgets containers of the old
//! epoch, removes orphans and refills.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{image_tar_stream, Container, ContainerSpec, DockerError, Engine, Lease};
use crate::report::ErrorChain;
use crate::sandbox::cgroup::ProcessMemcg;
use crate::sandbox::ToolchainRoot;
use crate::stats::Stats;

/// How often the daemon is pinged (and, while it is unreachable, reconnected to).
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// How often orphaned containers and images are looked for.
const GC_INTERVAL: Duration = Duration::from_secs(60);
/// A toolchain unused this long is forgotten: containers and image removed.
const TOOLCHAIN_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest a job waits for a container (an image import included).
const TAKE_TIMEOUT: Duration = Duration::from_secs(660);

enum Image {
    Missing,
    Importing,
    Ready(String),
}

/// What the pool holds for one toolchain.
struct ToolchainContainers {
    root: ToolchainRoot,
    image: Image,
    idle: Vec<Container>,
    starting: usize,
    /// Handed out: running a job or being reset by the cleaner.
    busy: usize,
    waiters: VecDeque<oneshot::Sender<Result<Lease, DockerError>>>,
    last_used: u64,
    last_used_at: Instant,
}

impl ToolchainContainers {
    fn total(&self) -> usize {
        self.idle.len() + self.starting + self.busy
    }

    fn is_unused(&self) -> bool {
        self.total() == 0 && self.waiters.is_empty() && !matches!(self.image, Image::Importing)
    }
}

/// The pool's settings.
#[derive(Debug, Clone)]
pub struct PoolLimits {
    pub min_idle: usize,
    pub max_per_toolchain: usize,
    pub max_containers: usize,
}

pub struct ContainerPool {
    /// `None` until the daemon was first reached.
    engine: Option<Engine>,
    host: String,
    owner: String,
    spec: ContainerSpec,
    limits: PoolLimits,
    toolchains: HashMap<String, ToolchainContainers>,
    /// Ids of handed-out containers, so the GC leaves them alone.
    busy: HashSet<String>,
    /// Bumped whenever the daemon went away or came back: containers of an older
    /// epoch are removed instead of pooled.
    epoch: u64,
    healthy: bool,
    health_check_running: bool,
    /// kiln is stopping ([`ShutDown`]): nothing is started or handed out again.
    stopping: bool,
    clock: u64,
    stats: Arc<Stats>,
}

impl ContainerPool {
    pub fn new(
        engine: Option<Engine>,
        host: String,
        owner: String,
        spec: ContainerSpec,
        limits: PoolLimits,
        stats: Arc<Stats>,
    ) -> Self {
        let healthy = engine.is_some();
        stats.docker_unreachable.store(u64::from(!healthy), std::sync::atomic::Ordering::Relaxed);
        ContainerPool {
            engine,
            host,
            owner,
            spec,
            limits,
            toolchains: HashMap::new(),
            busy: HashSet::new(),
            epoch: 0,
            healthy,
            health_check_running: false,
            stopping: false,
            clock: 0,
            stats,
        }
    }

    fn total_containers(&self) -> usize {
        self.toolchains.values().map(ToolchainContainers::total).sum()
    }

    /// Imports the image or starts containers until `archive_id` has its waiters
    /// served and `min_idle` spare, within the caps.
    fn refill(&mut self, archive_id: &str, ctx: &mut Context<Self>) {
        let (healthy, Some(engine)) = (self.healthy, self.engine.clone()) else {
            self.fail_waiters(archive_id, || DockerError::Unreachable);
            return;
        };
        if !healthy {
            self.fail_waiters(archive_id, || DockerError::Unreachable);
            return;
        }
        let limits = self.limits.clone();
        let Some(tc) = self.toolchains.get_mut(archive_id) else { return };
        let image = match &tc.image {
            Image::Ready(image) => image.clone(),
            Image::Importing => return,
            Image::Missing => {
                tc.image = Image::Importing;
                self.import(engine, archive_id.to_owned(), ctx);
                return;
            }
        };
        let wanted = tc.waiters.len() + limits.min_idle;
        let mut missing = wanted.saturating_sub(tc.idle.len() + tc.starting);
        missing = missing.min(limits.max_per_toolchain.saturating_sub(tc.total()));
        if missing == 0 {
            return;
        }
        let total = self.total_containers();
        if total + missing > limits.max_containers {
            self.evict_idle(total + missing - limits.max_containers, archive_id);
        }
        missing = missing.min(limits.max_containers.saturating_sub(self.total_containers()));
        let Some(tc) = self.toolchains.get_mut(archive_id) else { return };
        tc.starting += missing;
        for _ in 0..missing {
            let (engine, image, spec, id) = (engine.clone(), image.clone(), self.spec.clone(), archive_id.to_owned());
            let archive_id_of_start = archive_id.to_owned();
            let epoch = self.epoch;
            let start = async move {
                let (id, agent) = engine.start_container(&image, &id, epoch, &spec).await?;
                match watch_memory(&engine, &id, spec.memory_bytes).await {
                    Ok(memcg) => Ok(Container::new(id, archive_id_of_start, epoch, agent, memcg, spec.memory_bytes)),
                    Err(e) => {
                        let _ = engine.remove_container(&id).await;
                        Err(e)
                    }
                }
            };
            let archive_id = archive_id.to_owned();
            ctx.spawn(start.into_actor(self).map(move |result, act, ctx| act.started(archive_id, epoch, result, ctx)));
        }
    }

    fn import(&mut self, engine: Engine, archive_id: String, ctx: &mut Context<Self>) {
        let Some(tc) = self.toolchains.get(&archive_id) else { return };
        let root = tc.root.path.clone();
        let epoch = self.epoch;
        tracing::info!(%archive_id, "importing the toolchain's image");
        let id = archive_id.clone();
        let import = async move {
            let started = Instant::now();
            let result = engine.import_image(&id, image_tar_stream(root)).await;
            (result, started.elapsed())
        };
        ctx.spawn(import.into_actor(self).map(move |(result, took), act, ctx| {
            let current = act.epoch == epoch;
            let Some(tc) = act.toolchains.get_mut(&archive_id).filter(|_| current) else {
                if let (Ok(image), Some(engine)) = (result, act.engine.clone()) {
                    actix::spawn(async move {
                        let _ = engine.remove_image(&image).await;
                    });
                }
                if let Some(tc) = act.toolchains.get_mut(&archive_id) {
                    tc.image = Image::Missing;
                    act.refill(&archive_id, ctx);
                }
                return;
            };
            match result {
                Ok(image) => {
                    Stats::bump(&act.stats.images_created);
                    tracing::info!(%archive_id, %image, import_ms = took.as_millis() as u64, "toolchain image imported");
                    tc.image = Image::Ready(image);
                    act.refill(&archive_id, ctx);
                }
                Err(e) => {
                    tc.image = Image::Missing;
                    let reason = ErrorChain(&e).to_string();
                    tracing::error!(%archive_id, error = %reason, "importing the toolchain's image failed");
                    act.fail_waiters(&archive_id, || DockerError::Image { archive_id: archive_id.clone(), reason: reason.clone() });
                }
            }
        }));
    }

    fn started(
        &mut self,
        archive_id: String,
        epoch: u64,
        result: Result<Container, DockerError>,
        ctx: &mut Context<Self>,
    ) {
        let current = epoch == self.epoch;
        if let Some(tc) = self.toolchains.get_mut(&archive_id) {
            tc.starting -= 1;
        }
        match result {
            Ok(container) => {
                Stats::bump(&self.stats.containers_created);
                if current {
                    self.put_idle(container);
                } else {
                    self.remove_container(container.id);
                }
            }
            Err(e) => {
                tracing::warn!(%archive_id, error = %ErrorChain(&e), "starting a container failed");
                if let Some(tc) = self.toolchains.get_mut(&archive_id) {
                    if is_missing_image(&e) {
                        // Removed behind kiln's back (or lost with the daemon's data).
                        tc.image = Image::Missing;
                    }
                    if let Some(waiter) = tc.waiters.pop_front() {
                        let _ = waiter.send(Err(e));
                    }
                }
                if self.toolchains.get(&archive_id).is_some_and(|tc| matches!(tc.image, Image::Missing)) {
                    self.refill(&archive_id, ctx);
                }
            }
        }
    }

    /// Serves the oldest waiter with `container`, or keeps it idle.
    fn put_idle(&mut self, mut container: Container) {
        let Some(engine) = self.engine.clone() else { return };
        let stale = container.epoch != self.epoch;
        let Some(tc) = self.toolchains.get_mut(&container.archive_id).filter(|_| !stale) else {
            self.remove_container(container.id);
            return;
        };
        while let Some(waiter) = tc.waiters.pop_front() {
            let reused = container.jobs > 0;
            let id = container.id.clone();
            match waiter.send(Ok(Lease { container, engine: engine.clone() })) {
                Ok(()) => {
                    tc.busy += 1;
                    self.busy.insert(id);
                    if reused {
                        Stats::bump(&self.stats.containers_reused);
                    }
                    return;
                }
                // That job gave up waiting; try the next.
                Err(lease) => container = lease.expect("sent as Ok").container,
            }
        }
        tc.idle.push(container);
    }

    fn fail_waiters(&mut self, archive_id: &str, error: impl Fn() -> DockerError) {
        if let Some(tc) = self.toolchains.get_mut(archive_id) {
            for waiter in tc.waiters.drain(..) {
                let _ = waiter.send(Err(error()));
            }
        }
    }

    /// Removes up to `count` idle containers of the least recently used toolchains
    /// other than `keep`, and forgets toolchains left with nothing.
    fn evict_idle(&mut self, mut count: usize, keep: &str) {
        while count > 0 {
            let coldest = self
                .toolchains
                .iter()
                .filter(|(id, tc)| id.as_str() != keep && !tc.idle.is_empty())
                .min_by_key(|(_, tc)| tc.last_used)
                .map(|(id, _)| id.clone());
            let Some(archive_id) = coldest else { break };
            let Some(container) = self.toolchains.get_mut(&archive_id).and_then(|tc| tc.idle.pop()) else { break };
            tracing::debug!(%archive_id, container = %container.id, "evicting an idle container of a cold toolchain");
            self.remove_container(container.id);
            count -= 1;
            self.forget_if_unused(&archive_id);
        }
    }

    /// Drops a toolchain with no containers: releases its root and removes its image.
    fn forget_if_unused(&mut self, archive_id: &str) {
        if !self.toolchains.get(archive_id).is_some_and(ToolchainContainers::is_unused) {
            return;
        }
        let Some(tc) = self.toolchains.remove(archive_id) else { return };
        if let (Image::Ready(image), Some(engine)) = (tc.image, self.engine.clone()) {
            let stats = self.stats.clone();
            tracing::info!(%archive_id, %image, "forgetting the toolchain; removing its image");
            actix::spawn(async move {
                match engine.remove_image(&image).await {
                    Ok(()) => Stats::bump(&stats.images_removed),
                    Err(e) => tracing::warn!(%image, error = %ErrorChain(&e), "removing an image failed"),
                }
            });
        }
    }

    fn remove_container(&self, id: String) {
        Stats::bump(&self.stats.containers_destroyed);
        let Some(engine) = self.engine.clone() else { return };
        actix::spawn(async move {
            if let Err(e) = engine.remove_container(&id).await {
                tracing::warn!(container = %id, error = %ErrorChain(&e), "removing a container failed");
            }
        });
    }

    fn check_health(&mut self, ctx: &mut Context<Self>) {
        if self.health_check_running || self.stopping {
            return;
        }
        self.health_check_running = true;
        let (engine, healthy, host, owner) = (self.engine.clone(), self.healthy, self.host.clone(), self.owner.clone());
        let check = async move {
            match engine.filter(|_| healthy) {
                Some(engine) => engine.ping().await.map(|()| None),
                // Reconnect from scratch: the daemon may have come back as another version.
                None => Engine::connect(&host, owner).await.map(Some),
            }
        };
        ctx.spawn(check.into_actor(self).map(|result, act, ctx| {
            act.health_check_running = false;
            match result {
                Ok(None) => {}
                Ok(Some(engine)) => act.daemon_returned(engine, ctx),
                Err(e) if act.healthy => act.daemon_lost(&e),
                Err(_) => {}
            }
        }));
    }

    fn daemon_lost(&mut self, error: &DockerError) {
        tracing::error!(host = %self.host, error = %ErrorChain(error), "the docker daemon is unreachable; refusing docker jobs until it answers");
        self.healthy = false;
        self.stats.docker_unreachable.store(1, std::sync::atomic::Ordering::Relaxed);
        self.epoch += 1;
        for tc in self.toolchains.values_mut() {
            // Gone with the daemon, or removed by the GC once it is back.
            tc.idle.clear();
            for waiter in tc.waiters.drain(..) {
                let _ = waiter.send(Err(DockerError::Unreachable));
            }
        }
    }

    fn daemon_returned(&mut self, engine: Engine, ctx: &mut Context<Self>) {
        tracing::info!(host = %self.host, "the docker daemon answers; rebuilding the container pool");
        self.engine = Some(engine);
        self.healthy = true;
        self.stats.docker_unreachable.store(0, std::sync::atomic::Ordering::Relaxed);
        self.epoch += 1;
        for tc in self.toolchains.values_mut() {
            tc.idle.clear();
        }
        let ids: Vec<String> = self.toolchains.keys().cloned().collect();
        for id in ids {
            self.refill(&id, ctx);
        }
        self.collect_garbage(ctx);
    }

    /// Forgets toolchains cold for `TOOLCHAIN_TTL`, then removes containers and
    /// images of this instance that the pool does not know (left by a crash, a
    /// daemon restart, or a removal that failed).
    fn collect_garbage(&mut self, ctx: &mut Context<Self>) {
        let (true, Some(engine)) = (self.healthy, self.engine.clone()) else { return };
        let cold: Vec<String> = self
            .toolchains
            .iter()
            .filter(|(_, tc)| tc.busy == 0 && tc.starting == 0 && tc.last_used_at.elapsed() > TOOLCHAIN_TTL)
            .map(|(id, _)| id.clone())
            .collect();
        for archive_id in cold {
            if let Some(tc) = self.toolchains.get_mut(&archive_id) {
                for container in std::mem::take(&mut tc.idle) {
                    self.remove_container(container.id);
                }
            }
            self.forget_if_unused(&archive_id);
        }
        let mut known: HashSet<String> = self.busy.clone();
        known.extend(self.toolchains.values().flat_map(|tc| tc.idle.iter().map(|c| c.id.clone())));
        let starting = self.toolchains.values().any(|tc| tc.starting > 0);
        let epoch = self.epoch;
        let images: HashSet<String> = self
            .toolchains
            .iter()
            .filter(|(_, tc)| !matches!(tc.image, Image::Missing))
            .map(|(id, _)| id.clone())
            .collect();
        let stats = self.stats.clone();
        let gc = async move {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let mut removed = (0, 0);
            for c in engine.list_containers().await? {
                // A container being created is not known yet: spare young ones of
                // this epoch while some are being started.
                let young = now.saturating_sub(c.created.max(0) as u64) < GC_INTERVAL.as_secs();
                if known.contains(&c.id) || (starting && young && c.epoch == Some(epoch)) {
                    continue;
                }
                if engine.remove_container(&c.id).await.is_ok() {
                    Stats::bump(&stats.containers_destroyed);
                    removed.0 += 1;
                }
            }
            for i in engine.list_images().await? {
                if i.toolchain.as_ref().is_some_and(|t| images.contains(t)) {
                    continue;
                }
                if engine.remove_image(&i.id).await.is_ok() {
                    Stats::bump(&stats.images_removed);
                    removed.1 += 1;
                }
            }
            Ok::<_, DockerError>(removed)
        };
        ctx.spawn(gc.into_actor(self).map(|result, _, _| match result {
            Ok((0, 0)) => {}
            Ok((containers, images)) => tracing::info!(containers, images, "removed orphaned docker objects"),
            Err(e) => tracing::warn!(error = %ErrorChain(&e), "docker garbage collection failed"),
        }));
    }
}

/// Finds the memory cgroup the daemon made for container `id` and charges the
/// container's TCP socket buffers to it, up to `memory_bytes` (cgroup v1 leaves them
/// outside every limit otherwise; see `cgroup::ProcessMemcg`). Done before the
/// container's first job, so every socket a job makes is charged. Docker's own
/// `KernelMemoryTCP` did this until API 1.42 deprecated it (current daemons ignore
/// it, and bollard no longer has the field), so kiln writes the file itself. The
/// cgroup is kept to read its OOM kills around each job.
async fn watch_memory(engine: &Engine, id: &str, memory_bytes: i64) -> Result<ProcessMemcg, DockerError> {
    let state = engine.state(id).await?;
    let pid = state.as_ref().and_then(|s| s.pid).filter(|&p| p > 0);
    let Some(pid) = pid.and_then(|p| u32::try_from(p).ok()) else {
        return Err(DockerError::NoInit { container: id.to_owned(), pid });
    };
    let limit = u64::try_from(memory_bytes).unwrap_or(0);
    let container = id.to_owned();
    tokio::task::spawn_blocking(move || {
        let cgroup_err = |source| DockerError::ContainerCgroup { container: container.clone(), source };
        let memcg = ProcessMemcg::of_pid(pid).map_err(cgroup_err)?;
        // The daemon names a container's cgroup by its id (`docker/<id>`, or
        // `docker-<id>.scope` with systemd): a pid reused after the container died
        // meanwhile shows another cgroup, which must not be touched.
        if !memcg.path().file_name().is_some_and(|name| name.to_string_lossy().contains(container.as_str())) {
            return Err(DockerError::NoInit { container, pid: Some(i64::from(pid)) });
        }
        memcg.limit_socket_memory(limit).map_err(cgroup_err)?;
        Ok(memcg)
    })
    .await
    .map_err(|_| DockerError::CheckPanicked)?
}

fn is_missing_image(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::Engine {
            call: "create container",
            source: bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
        }
    )
}

impl Actor for ContainerPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(HEALTH_INTERVAL, |act, ctx| act.check_health(ctx));
        ctx.run_interval(GC_INTERVAL, |act, ctx| act.collect_garbage(ctx));
    }
}

/// A started container of `toolchain`, for one job; the leftovers go back through
/// the cleaner ([`ReturnContainer`] or [`ContainerDestroyed`]).
#[derive(Message)]
#[rtype(result = "Result<Lease, DockerError>")]
pub struct TakeContainer {
    pub toolchain: ToolchainRoot,
}

impl Handler<TakeContainer> for ContainerPool {
    type Result = ResponseFuture<Result<Lease, DockerError>>;

    fn handle(&mut self, msg: TakeContainer, ctx: &mut Context<Self>) -> Self::Result {
        let (true, Some(engine)) = (self.healthy, self.engine.clone()) else {
            return Box::pin(async { Err(DockerError::Unreachable) });
        };
        let archive_id = msg.toolchain.archive_id.clone();
        self.clock += 1;
        let tc = self.toolchains.entry(archive_id.clone()).or_insert_with(|| ToolchainContainers {
            root: msg.toolchain,
            image: Image::Missing,
            idle: Vec::new(),
            starting: 0,
            busy: 0,
            waiters: VecDeque::new(),
            last_used: 0,
            last_used_at: Instant::now(),
        });
        tc.last_used = self.clock;
        tc.last_used_at = Instant::now();
        if let Some(container) = tc.idle.pop() {
            tc.busy += 1;
            self.busy.insert(container.id.clone());
            if container.jobs > 0 {
                Stats::bump(&self.stats.containers_reused);
            }
            self.refill(&archive_id, ctx);
            return Box::pin(async move { Ok(Lease { container, engine }) });
        }
        let (tx, rx) = oneshot::channel();
        tc.waiters.push_back(tx);
        self.refill(&archive_id, ctx);
        Box::pin(async move {
            match tokio::time::timeout(TAKE_TIMEOUT, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(DockerError::PoolGone),
                Err(_) => Err(DockerError::NoContainer { archive_id, waited: TAKE_TIMEOUT }),
            }
        })
    }
}

/// A container the cleaner reset: clean again, ready for the next job.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReturnContainer(pub Container);

impl Handler<ReturnContainer> for ContainerPool {
    type Result = ();

    fn handle(&mut self, msg: ReturnContainer, ctx: &mut Context<Self>) {
        let container = msg.0;
        let archive_id = container.archive_id.clone();
        if self.busy.remove(&container.id) {
            if let Some(tc) = self.toolchains.get_mut(&archive_id) {
                tc.busy -= 1;
            }
        }
        self.put_idle(container);
        self.refill(&archive_id, ctx);
    }
}

/// A container the cleaner removed (its reset failed, or it failed too often).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ContainerDestroyed {
    pub id: String,
    pub archive_id: String,
}

impl Handler<ContainerDestroyed> for ContainerPool {
    type Result = ();

    fn handle(&mut self, msg: ContainerDestroyed, ctx: &mut Context<Self>) {
        Stats::bump(&self.stats.containers_destroyed);
        if self.busy.remove(&msg.id) {
            if let Some(tc) = self.toolchains.get_mut(&msg.archive_id) {
                tc.busy -= 1;
            }
        }
        self.refill(&msg.archive_id, ctx);
    }
}

/// kiln is stopping cleanly (its jobs drained): removes every container and image
/// this pool made, and starts none again. The startup sweep is only for what a
/// killed kiln left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutDown;

impl Handler<ShutDown> for ContainerPool {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: ShutDown, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        self.healthy = false;
        // Containers still starting come back of an old epoch: removed, not pooled.
        self.epoch += 1;
        // Waiting takers are answered PoolGone as their senders drop.
        self.toolchains.clear();
        self.busy.clear();
        let engine = self.engine.clone();
        Box::pin(async move {
            let Some(engine) = engine else { return };
            match engine.remove_everything().await {
                Ok((containers, images)) => {
                    tracing::info!(containers, images, "kiln is stopping: removed its docker containers and images")
                }
                Err(e) => tracing::warn!(error = %ErrorChain(&e),
                    "kiln is stopping: removing its docker containers failed; the next start removes them"),
            }
        })
    }
}
