//! The docker backend: a prepared sandbox is a warm container taken from the
//! [`ContainerPool`]; its job is one request to the container's agent; after it the
//! cleaner has the agent reset the container and gives it back.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::sandbox::cgroup::ProcessMemcg;
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
/// After the agent's link broke, how long kiln waits for the daemon to see the
/// container stopped (and whether the OOM killer stopped it) before it decides.
const STOP_SEEN_TIMEOUT: Duration = Duration::from_secs(3);
const STOP_SEEN_POLL: Duration = Duration::from_millis(50);

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
    /// Its memory cgroup on the host: its socket buffers are charged to it, and its
    /// OOM kills, read before and after each job, tell a job that exceeded the
    /// container's memory from a failure of kiln's.
    pub memcg: Arc<ProcessMemcg>,
    /// Its memory limit, swap included (`sandbox.docker.memory_bytes`).
    pub memory_bytes: i64,
    /// A job in it exceeded its memory: it is removed, not reset. What the job left
    /// may still hold the memory (a SysV shared-memory segment no process owns), and
    /// the OOM killer may have taken the agent or its supervisor.
    pub exceeded_memory: bool,
}

impl Container {
    pub fn new(
        id: String,
        archive_id: String,
        epoch: u64,
        agent: AgentLink,
        memcg: ProcessMemcg,
        memory_bytes: i64,
    ) -> Self {
        Container {
            id,
            archive_id,
            epoch,
            jobs: 0,
            failures: 0,
            agent,
            top_dirs: HashSet::new(),
            memcg: Arc::new(memcg),
            memory_bytes,
            exceeded_memory: false,
        }
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
            if !container.agent.in_step() && !container.exceeded_memory {
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
    let memcg = container.memcg.clone();
    let (prepared, oom_kills_before) = tokio::task::spawn_blocking(move || {
        let prepared = prepare(&toolchain_root, &command, &outputs, &inputs_zlib, &limits, timeout)?;
        Ok::<_, SandboxError>((prepared, memcg.oom_kills()))
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
    if let Ok(JobReply::Exited { usage, .. }) = &reply {
        phases.record_usage(*usage);
    }
    let killed = oom_kills_during_job(engine, &container.id, &container.memcg, oom_kills_before, reply.is_err()).await;
    if let Some(killed) = killed {
        tracing::info!(container = %container.id, ?killed, "the job exceeded its container's memory limit");
        container.exceeded_memory = true;
    }
    let result = collect_reply(engine, &container.id, reply, prepared.outputs, limits, timeout).await;
    match killed {
        Some(killed) => blame_memory(result, container.memory_bytes, killed),
        None => result,
    }
}

/// The job's answer from the agent's reply (or from a broken link).
async fn collect_reply(
    engine: &Engine,
    container: &str,
    reply: Result<JobReply, DockerError>,
    names: Vec<String>,
    limits: SandboxLimits,
    timeout: Duration,
) -> Result<JobComplete, SandboxError> {
    let reply = match reply {
        Ok(reply) => reply,
        // The link broke: most likely the container was stopped or removed from outside.
        Err(e) => match engine.is_running(container).await {
            Ok(false) => return Err(DockerError::ContainerGone { container: container.to_owned() }.into()),
            _ => return Err(e.into()),
        },
    };
    match reply {
        JobReply::Exited { code, stdout, stderr, outputs, .. } => {
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
            Err(DockerError::NotStarted { container: container.to_owned(), message }.into())
        }
    }
}

/// How many of the container's processes the OOM killer killed during the job:
/// `Some(None)` when the count is unknown because the container died of it (the
/// agent, its pid 1, was the one killed: the daemon says so once it sees the
/// container stopped); `None` when the job stayed within the memory limit, or the
/// container stopped for another reason.
async fn oom_kills_during_job(
    engine: &Engine,
    container: &str,
    memcg: &Arc<ProcessMemcg>,
    before: Option<u64>,
    link_broke: bool,
) -> Option<Option<u64>> {
    let memcg = memcg.clone();
    let after = tokio::task::spawn_blocking(move || memcg.oom_kills()).await.ok().flatten();
    if let (Some(before), Some(after)) = (before, after) {
        if after > before {
            return Some(Some(after - before));
        }
    }
    if !link_broke {
        return None;
    }
    // The link ends when pid 1 dies; the daemon learns of the exit a moment later.
    let deadline = Instant::now() + STOP_SEEN_TIMEOUT;
    loop {
        match engine.state(container).await {
            Ok(Some(state)) if state.running == Some(true) && Instant::now() < deadline => {
                tokio::time::sleep(STOP_SEEN_POLL).await;
            }
            // Only this job ever ran in it since an OOM kill: a container that had one
            // is never reused.
            Ok(Some(state)) => return (state.oom_killed == Some(true)).then_some(None),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A job that exceeded its container's memory gets its own result, never a failure
/// of kiln's (which would count against the builder and the toolchain: one client
/// could get a shared toolchain quarantined for everyone): what the job got, with a
/// line saying why on stderr; 137 (128 + SIGKILL, as for a crash) when the OOM
/// killer took the agent or the job's supervisor so no exit status is known.
fn blame_memory(
    result: Result<JobComplete, SandboxError>,
    memory_bytes: i64,
    killed: Option<u64>,
) -> Result<JobComplete, SandboxError> {
    let line = match killed {
        Some(killed) => format!(
            "kiln: the job exceeded its memory limit of {memory_bytes} bytes (kiln.sandbox.docker.memory_bytes): \
             {killed} process(es) killed\n"
        ),
        None => format!(
            "kiln: the job exceeded its memory limit of {memory_bytes} bytes (kiln.sandbox.docker.memory_bytes): \
             the OOM killer stopped its container\n"
        ),
    };
    match result {
        Ok(mut done) => {
            done.output.stderr.extend_from_slice(line.as_bytes());
            Ok(done)
        }
        // Its own limits still say what happened.
        Err(e @ (SandboxError::TimedOut(_) | SandboxError::Cancelled | SandboxError::OutputsTooLarge { .. })) => Err(e),
        Err(e) => {
            tracing::info!(error = %ErrorChain(&e), "answering the job as killed for its memory");
            let output = ProcessOutput { code: 128 + 9, stdout: Vec::new(), stderr: line.into_bytes() };
            Ok(JobComplete { output, outputs: Vec::new() })
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
        let outcome = if container.exceeded_memory {
            tracing::info!(container = %container.id, "a job exceeded the container's memory; replacing it");
            Ok(false)
        } else if container.failures >= MAX_CONSECUTIVE_FAILURES {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> Result<JobComplete, SandboxError> {
        Ok(JobComplete {
            output: ProcessOutput { code, stdout: b"out".to_vec(), stderr: Vec::new() },
            outputs: Vec::new(),
        })
    }

    #[test]
    fn a_job_over_its_memory_keeps_its_status_and_is_told_why() {
        let done = blame_memory(exited(1), 64 << 20, Some(2)).unwrap();
        assert_eq!(done.output.code, 1);
        assert_eq!(done.output.stdout, b"out");
        let stderr = String::from_utf8(done.output.stderr).unwrap();
        assert!(stderr.starts_with("kiln: the job exceeded its memory limit of 67108864 bytes"), "{stderr}");
        assert!(stderr.contains("2 process(es) killed"), "{stderr}");
    }

    #[test]
    fn a_dead_agent_over_the_memory_limit_is_the_jobs_end_not_kilns() {
        let gone = Err(DockerError::ContainerGone { container: "c".into() }.into());
        let done = blame_memory(gone, 64 << 20, None).unwrap();
        assert_eq!(done.output.code, 137);
        assert!(String::from_utf8_lossy(&done.output.stderr).contains("the OOM killer stopped its container"));
        // The job's own limits still name what happened.
        let timed_out = blame_memory(Err(SandboxError::TimedOut(Duration::from_secs(1))), 64 << 20, Some(1));
        assert!(matches!(timed_out, Err(SandboxError::TimedOut(_))));
    }
}
