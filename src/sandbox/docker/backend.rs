//! The docker backend: a prepared sandbox is a warm container taken from the
//! [`ContainerPool`]; after its job the cleaner resets it and gives it back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::engine::{Engine, HELPER_PATH};
use super::error::DockerError;
use super::job::{collect_outputs, prepare};
use crate::actors::container_pool::{ContainerDestroyed, ContainerPool, ReturnContainer, ShutDown, TakeContainer};
use crate::protocol::{JobComplete, ProcessOutput};
use crate::report::ErrorChain;
use crate::sandbox::{
    Cancellation, Leftovers, Sandbox, SandboxBackend, SandboxError, SandboxJob, SandboxLimits, ToolchainRoot,
};

/// A container whose jobs failed this many times in a row (failures of the
/// machinery, not compile errors) is destroyed instead of reused.
const MAX_CONSECUTIVE_FAILURES: u32 = 3;
/// The cleaner's reset exec may take this long (kill loop plus file removal).
const RESET_TIMEOUT: Duration = Duration::from_secs(30);
/// After a job died of a signal: how often (every 100 ms) the container is checked
/// for having been killed from outside.
const CONTAINER_GONE_CHECKS: u32 = 5;
/// Attempts at the reset exec: right after a fork bomb the container's pids may
/// still be exhausted for a moment, so the exec cannot start.
const RESET_ATTEMPTS: u32 = 3;

/// One container of the pool, as it travels between pool, job and cleaner.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub archive_id: String,
    /// The pool's epoch when it was started (see `ContainerPool`).
    pub epoch: u64,
    /// Jobs it ran.
    pub jobs: u64,
    /// Consecutive jobs that failed for a reason of the machinery.
    pub failures: u32,
}

/// A container handed out by the pool, with the connection it was made on.
pub struct Lease {
    pub container: Container,
    pub engine: Engine,
}

/// What a job needs besides its container.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub uid: u32,
    pub gid: u32,
    pub limits: SandboxLimits,
}

impl JobSettings {
    fn user(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

pub struct DockerBackend {
    pool: Addr<ContainerPool>,
    settings: Arc<JobSettings>,
}

impl DockerBackend {
    pub fn new(pool: Addr<ContainerPool>, settings: JobSettings) -> Self {
        DockerBackend { pool, settings: Arc::new(settings) }
    }
}

impl SandboxBackend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn prepare(&self, toolchain: ToolchainRoot) -> BoxFuture<'static, Result<Box<dyn Sandbox>, SandboxError>> {
        let (pool, settings) = (self.pool.clone(), self.settings.clone());
        async move {
            let lease = pool
                .send(TakeContainer { toolchain: toolchain.clone() })
                .await
                .map_err(|_| SandboxError::Docker(DockerError::PoolGone))??;
            Ok(Box::new(DockerSandbox { lease, toolchain, pool, settings }) as Box<dyn Sandbox>)
        }
        .boxed()
    }

    fn shut_down(&self) -> BoxFuture<'static, ()> {
        let pool = self.pool.clone();
        async move {
            if tokio::time::timeout(SHUT_DOWN_TIMEOUT, pool.send(ShutDown)).await.is_err() {
                tracing::warn!(timeout = ?SHUT_DOWN_TIMEOUT, "removing the docker pool took too long; the next start removes it");
            }
        }
        .boxed()
    }
}

/// How long a clean stop waits for the docker pool's containers to be removed.
const SHUT_DOWN_TIMEOUT: Duration = Duration::from_secs(30);

struct DockerSandbox {
    lease: Lease,
    /// Held until the job is over: the root is what the job's layout is checked against.
    toolchain: ToolchainRoot,
    pool: Addr<ContainerPool>,
    settings: Arc<JobSettings>,
}

impl Sandbox for DockerSandbox {
    fn run(
        self: Box<Self>,
        job: SandboxJob,
        cancel: Cancellation,
    ) -> BoxFuture<'static, (Result<JobComplete, SandboxError>, Leftovers)> {
        let DockerSandbox { lease, toolchain, pool, settings } = *self;
        async move {
            let Lease { mut container, engine } = lease;
            let timeout = job.timeout;
            let result = {
                let work = run_job(&engine, &container.id, toolchain.path.clone(), job, &settings);
                tokio::select! {
                    result = work => result,
                    () = tokio::time::sleep(timeout) => Err(SandboxError::TimedOut(timeout)),
                    () = cancelled(cancel) => Err(SandboxError::Cancelled),
                }
            };
            if matches!(result, Err(SandboxError::TimedOut(_) | SandboxError::Cancelled)) {
                // Stop the job's processes now rather than when the cleaner gets to it.
                if let Err(e) = engine.signal(&container.id, "SIGUSR1").await {
                    tracing::warn!(container = %container.id, error = %ErrorChain(&e), "stopping a job's processes failed");
                }
            }
            container.jobs += 1;
            match &result {
                Err(e) if e.is_infrastructure_failure() => container.failures += 1,
                _ => container.failures = 0,
            }
            let used = UsedContainer { container, engine, pool, settings, ran_job: true };
            (result, Leftovers::Container(used))
        }
        .boxed()
    }

    fn discard(self: Box<Self>) -> Leftovers {
        let DockerSandbox { lease, pool, settings, .. } = *self;
        Leftovers::Container(UsedContainer {
            container: lease.container,
            engine: lease.engine,
            pool,
            settings,
            ran_job: false,
        })
    }
}

/// Resolves when the job is cancelled; never if the sender is dropped unused.
async fn cancelled(cancel: Cancellation) {
    if cancel.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The stages of one job in its container: one upload, one exec, one download (or
/// one per output when they share no directory of the job's).
async fn run_job(
    engine: &Engine,
    container: &str,
    toolchain_root: PathBuf,
    job: SandboxJob,
    settings: &JobSettings,
) -> Result<JobComplete, SandboxError> {
    let SandboxJob { command, outputs, inputs_zlib, .. } = job;
    let limits = settings.limits;
    let owner = (settings.uid, settings.gid);
    let command_for_prepare = command.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        prepare(&toolchain_root, &command_for_prepare, &outputs, &inputs_zlib, owner, &limits.inputs)
    })
    .await
    .map_err(|_| SandboxError::ThreadGone)??;

    engine.upload(container, prepared.upload.into()).await?;

    let mut cmd = Vec::with_capacity(command.arguments.len() + 1);
    cmd.push(command.executable.clone());
    cmd.extend(command.arguments.iter().cloned());
    // The job's environment only: the container itself has none.
    let env = command.env_vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let exec = engine.exec(container, cmd, env, &settings.user(), &prepared.cwd, limits.max_stdio_bytes).await?;
    let code = i32::try_from(exec.code).unwrap_or(-1);
    // Killed by a signal: by the job itself, or because the container went away
    // (killed or removed from outside). The latter is the machinery's failure.
    if code >= 128 {
        // A forced removal ends the exec a moment before the state says so.
        for _ in 0..CONTAINER_GONE_CHECKS {
            if !engine.is_running(container).await? {
                return Err(DockerError::ContainerGone { container: container.to_owned() }.into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Everything the job may have left in the downloaded directory is bounded too.
    let download_limit = limits.max_output_bytes.saturating_add(limits.inputs.max_bytes);
    let mut downloads = Vec::with_capacity(prepared.downloads.len());
    for path in prepared.downloads {
        let tar = engine.download(container, &path.to_string_lossy(), download_limit).await.map_err(|e| match e {
            DockerError::DownloadTooLarge { .. } => SandboxError::OutputsTooLarge { limit: download_limit },
            other => SandboxError::Docker(other),
        })?;
        downloads.push((path, tar));
    }
    let outputs = prepared.outputs;
    let max_output_bytes = limits.max_output_bytes;
    let collected = tokio::task::spawn_blocking(move || collect_outputs(&outputs, &downloads, max_output_bytes))
        .await
        .map_err(|_| SandboxError::ThreadGone)??;
    Ok(JobComplete { output: ProcessOutput { code, stdout: exec.stdout, stderr: exec.stderr }, outputs: collected })
}

/// A container after its job (or unused), on its way back to the pool.
pub struct UsedContainer {
    container: Container,
    engine: Engine,
    pool: Addr<ContainerPool>,
    settings: Arc<JobSettings>,
    ran_job: bool,
}

impl std::fmt::Debug for UsedContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsedContainer").field("container", &self.container).field("ran_job", &self.ran_job).finish()
    }
}

impl UsedContainer {
    /// Resets the container and returns it to the pool, or removes it when it
    /// cannot be reset or failed too often. Ok(true): reset and returned.
    pub async fn recycle(self) -> Result<bool, DockerError> {
        let UsedContainer { container, engine, pool, settings, ran_job } = self;
        if !ran_job {
            pool.do_send(ReturnContainer(container));
            return Ok(true);
        }
        let outcome = if container.failures >= MAX_CONSECUTIVE_FAILURES {
            tracing::warn!(container = %container.id, failures = container.failures, "container failed too often; replacing it");
            Ok(false)
        } else {
            reset(&engine, &container.id, &settings).await.map(|()| true)
        };
        match outcome {
            Ok(true) => {
                pool.do_send(ReturnContainer(container));
                Ok(true)
            }
            Ok(false) | Err(_) => {
                let removed = engine.remove_container(&container.id).await;
                pool.do_send(ContainerDestroyed { id: container.id, archive_id: container.archive_id });
                outcome.and(removed).map(|()| false)
            }
        }
    }
}

/// Kills every process of the job (pid 1 does it on SIGUSR1, which needs no new
/// process), then runs `kiln-init reset`, which kills stragglers and removes every
/// file the job user owns.
async fn reset(engine: &Engine, id: &str, settings: &JobSettings) -> Result<(), DockerError> {
    engine.signal(id, "SIGUSR1").await?;
    let mut last = None;
    for attempt in 0..RESET_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        let user = settings.user();
        let exec = engine.exec(id, vec![HELPER_PATH.into(), "reset".into()], Vec::new(), &user, "/", 4096);
        let result = match tokio::time::timeout(RESET_TIMEOUT, exec).await {
            Ok(result) => result,
            Err(_) => Err(DockerError::Timeout { call: "exec kiln-init reset", timeout: RESET_TIMEOUT }),
        };
        match result {
            Ok(out) if out.code == 0 => return Ok(()),
            Ok(out) => {
                last = Some(DockerError::Reset {
                    container: id.to_owned(),
                    code: Some(out.code),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                })
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(DockerError::Reset { container: id.to_owned(), code: None, stderr: String::new() }))
}
