//! The docker backend: a prepared sandbox is a warm container taken from the
//! [`ContainerPool`]; its job is one request to the container's agent; after it the
//! cleaner has the agent reset the container and gives it back.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::agent::{AgentLink, AgentOutputFile, JobReply};
use super::engine::Engine;
use super::error::DockerError;
use super::job::{prepare, top_dirs_tar};
use super::pool::{ContainerDestroyed, ContainerPool, ReturnContainer, ShutDown, TakeContainer};
use crate::observe::Phase;
use crate::protocol::{JobComplete, OutputData, ProcessOutput};
use crate::report::ErrorChain;
use crate::sandbox::{
    Cancellation, CleanItself, Leftovers, Sandbox, SandboxBackend, SandboxError, SandboxJob, SandboxLimits,
    ToolchainRoot,
};

/// A container whose jobs failed this many times in a row (failures of the
/// machinery, not compile errors) is destroyed instead of reused.
const MAX_CONSECUTIVE_FAILURES: u32 = 3;
/// The agent's reset (kill loop plus file removal) may take this long.
const RESET_TIMEOUT: Duration = Duration::from_secs(30);
/// The agent times a job out itself and replies; kiln gives up this much later.
const AGENT_GRACE: Duration = Duration::from_secs(5);

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
    /// Its agent's stdin and stdout.
    pub agent: AgentLink,
    /// Top-level directories made in it so far (see `PreparedJob::top_dirs`).
    pub top_dirs: HashSet<PathBuf>,
}

impl Container {
    pub fn new(id: String, archive_id: String, epoch: u64, agent: AgentLink) -> Self {
        Container { id, archive_id, epoch, jobs: 0, failures: 0, agent, top_dirs: HashSet::new() }
    }
}

/// A container handed out by the pool, with the connection it was made on.
pub struct Lease {
    pub container: Container,
    pub engine: Engine,
}

pub struct DockerBackend {
    pool: Addr<ContainerPool>,
    limits: SandboxLimits,
}

impl DockerBackend {
    pub fn new(pool: Addr<ContainerPool>, limits: SandboxLimits) -> Self {
        DockerBackend { pool, limits }
    }
}

impl SandboxBackend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// The ContainerPool is the warm pool.
    fn prepares_ahead(&self) -> bool {
        false
    }

    fn prepare(&self, toolchain: ToolchainRoot) -> BoxFuture<'static, Result<Box<dyn Sandbox>, SandboxError>> {
        let (pool, limits) = (self.pool.clone(), self.limits);
        async move {
            let lease = pool
                .send(TakeContainer { toolchain: toolchain.clone() })
                .await
                .map_err(|_| SandboxError::Docker(DockerError::PoolGone))??;
            Ok(Box::new(DockerSandbox { lease, toolchain, pool, limits }) as Box<dyn Sandbox>)
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
    limits: SandboxLimits,
}

impl Sandbox for DockerSandbox {
    fn run(
        self: Box<Self>,
        job: SandboxJob,
        cancel: Cancellation,
    ) -> BoxFuture<'static, (Result<JobComplete, SandboxError>, Leftovers)> {
        let DockerSandbox { lease, toolchain, pool, limits } = *self;
        async move {
            let Lease { mut container, engine } = lease;
            let timeout = job.timeout;
            let result = {
                let work = run_job(&engine, &mut container, toolchain.path.clone(), job, limits);
                tokio::select! {
                    result = work => result,
                    () = tokio::time::sleep(timeout + AGENT_GRACE) => Err(SandboxError::TimedOut(timeout)),
                    () = cancelled(cancel) => Err(SandboxError::Cancelled),
                }
            };
            if !container.agent.in_step() {
                // kiln left the exchange (cancelled, or the agent did not answer): stop
                // the job's processes now; the container is not used again.
                if let Err(e) = engine.signal(&container.id, "SIGUSR1").await {
                    tracing::warn!(container = %container.id, error = %ErrorChain(&e), "stopping a job's processes failed");
                }
            }
            container.jobs += 1;
            match &result {
                Err(e) if e.is_infrastructure_failure() => container.failures += 1,
                _ => container.failures = 0,
            }
            let used = UsedContainer { container, engine, pool, ran_job: true };
            (result, Leftovers::CleansItself(Box::new(used)))
        }
        .boxed()
    }

    fn discard(self: Box<Self>) -> Leftovers {
        let DockerSandbox { lease, pool, .. } = *self;
        Leftovers::CleansItself(Box::new(UsedContainer {
            container: lease.container,
            engine: lease.engine,
            pool,
            ran_job: false,
        }))
    }
}

/// Resolves when the job is cancelled; never if the sender is dropped unused.
async fn cancelled(cancel: Cancellation) {
    if cancel.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One job in its container: its request built (on the blocking pool), the top-level
/// directories it needs made if this container lacks them (the only Engine API call,
/// once per container and directory), one exchange with the agent.
async fn run_job(
    engine: &Engine,
    container: &mut Container,
    toolchain_root: PathBuf,
    job: SandboxJob,
    limits: SandboxLimits,
) -> Result<JobComplete, SandboxError> {
    let SandboxJob { command, outputs, inputs_zlib, timeout, phases, .. } = job;
    phases.enter(Phase::Inputs);
    let prepared = tokio::task::spawn_blocking(move || {
        prepare(&toolchain_root, &command, &outputs, &inputs_zlib, &limits, timeout)
    })
    .await
    .map_err(|_| SandboxError::ThreadGone)??;

    let missing: Vec<PathBuf> =
        prepared.top_dirs.iter().filter(|d| !container.top_dirs.contains(*d)).cloned().collect();
    if !missing.is_empty() {
        let tar = top_dirs_tar(&missing).map_err(|e| SandboxError::Inputs(crate::archive::ArchiveError::Read(e)))?;
        engine.upload(&container.id, tar.into()).await?;
        container.top_dirs.extend(missing);
    }

    phases.enter(Phase::Compile);
    let reply = container
        .agent
        .run_job(&prepared.request, prepared.outputs.len(), limits.max_stdio_bytes, limits.max_output_bytes)
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        // The link broke: most likely the container was stopped or removed from outside.
        Err(e) => match engine.is_running(&container.id).await {
            Ok(false) => return Err(DockerError::ContainerGone { container: container.id.clone() }.into()),
            _ => return Err(e.into()),
        },
    };
    phases.enter(Phase::Outputs);
    match reply {
        JobReply::Exited { code, stdout, stderr, outputs } => {
            let names = prepared.outputs;
            let collected = tokio::task::spawn_blocking(move || compress_outputs(names, outputs))
                .await
                .map_err(|_| SandboxError::ThreadGone)??;
            Ok(JobComplete { output: ProcessOutput { code, stdout, stderr }, outputs: collected })
        }
        JobReply::SupervisorKilled(signal) => {
            let stderr = format!("kiln: the job's supervisor in the container was killed by signal {signal}\n");
            let output = ProcessOutput { code: 128 + signal as i32, stdout: Vec::new(), stderr: stderr.into_bytes() };
            Ok(JobComplete { output, outputs: Vec::new() })
        }
        JobReply::InputsNotLaidOut(message) => {
            let why = std::io::Error::other(format!("laying the inputs out in the container: {message}"));
            Err(SandboxError::Inputs(crate::archive::ArchiveError::Read(why)))
        }
        JobReply::TimedOut => Err(SandboxError::TimedOut(timeout)),
        JobReply::OutputsTooLarge => Err(SandboxError::OutputsTooLarge { limit: limits.max_output_bytes }),
        JobReply::NotStarted(message) => {
            Err(DockerError::NotStarted { container: container.id.clone(), message }.into())
        }
    }
}

/// The outputs the job left, compressed, in the order the client asked for them;
/// missing ones and ones that are not regular files are left out.
fn compress_outputs(
    names: Vec<String>,
    files: Vec<AgentOutputFile>,
) -> Result<Vec<(String, OutputData)>, SandboxError> {
    let mut collected = Vec::with_capacity(files.len());
    for (name, file) in names.into_iter().zip(files) {
        match file {
            AgentOutputFile::File(data) => {
                let data = OutputData::compress(&data)
                    .map_err(|source| SandboxError::CompressOutput { path: name.clone(), source })?;
                collected.push((name, data));
            }
            AgentOutputFile::NotRegular => tracing::warn!(output = %name, "output is not a regular file; left out"),
            AgentOutputFile::Missing => {}
        }
    }
    Ok(collected)
}

/// A container after its job (or unused), on its way back to the pool.
pub struct UsedContainer {
    container: Container,
    engine: Engine,
    pool: Addr<ContainerPool>,
    ran_job: bool,
}

impl std::fmt::Debug for UsedContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsedContainer").field("container", &self.container).field("ran_job", &self.ran_job).finish()
    }
}

impl CleanItself for UsedContainer {
    /// Err: the container could not be reset, and was removed.
    fn clean(self: Box<Self>) -> BoxFuture<'static, Result<(), SandboxError>> {
        async move { self.recycle().await.map(drop).map_err(SandboxError::Docker) }.boxed()
    }
}

impl UsedContainer {
    /// Resets the container and returns it to the pool, or removes it when it
    /// cannot be reset or failed too often. Ok(true): reset and returned.
    async fn recycle(self) -> Result<bool, DockerError> {
        let UsedContainer { mut container, engine, pool, ran_job } = self;
        if !ran_job {
            pool.do_send(ReturnContainer(container));
            return Ok(true);
        }
        let outcome = if container.failures >= MAX_CONSECUTIVE_FAILURES {
            tracing::warn!(container = %container.id, failures = container.failures, "container failed too often; replacing it");
            Ok(false)
        } else if !container.agent.in_step() {
            tracing::info!(container = %container.id, "the job's exchange was left unfinished; replacing the container");
            Ok(false)
        } else {
            match tokio::time::timeout(RESET_TIMEOUT, container.agent.reset()).await {
                Ok(reset) => reset.map(|()| true),
                Err(_) => Err(DockerError::Timeout { call: "agent reset", timeout: RESET_TIMEOUT }),
            }
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
