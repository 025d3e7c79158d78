//! The overlay backend and its prepared sandboxes (one parked thread each).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::bwrap::{run_job, StartedSandbox};
use super::namespace::{enter_overlay_namespace, OverlayDirs};
use crate::protocol::JobComplete;
use crate::report::ErrorChain;
use crate::sandbox::kill::{KillHandle, KillOnDrop};
use crate::sandbox::{
    Cancellation, Leftovers, Sandbox, SandboxBackend, SandboxError, SandboxJob, SandboxLimits, ToolchainRoot,
};

/// Prepares overlay sandboxes under `<data_dir>/sandboxes/<n>/{upper,work,merged}`.
pub struct OverlayBackend {
    sandboxes_dir: PathBuf,
    bwrap: PathBuf,
    /// The exec shim on the host (see [`EXEC_SHIM`]), bound read-only into sandboxes.
    shim: PathBuf,
    limits: SandboxLimits,
    next_id: AtomicU64,
}

impl OverlayBackend {
    /// `shim` must hold [`EXEC_SHIM`] (see [`install_exec_shim`]).
    pub fn new(sandboxes_dir: PathBuf, bwrap: PathBuf, shim: PathBuf, limits: SandboxLimits) -> Self {
        OverlayBackend { sandboxes_dir, bwrap, shim, limits, next_id: AtomicU64::new(0) }
    }
}

/// The static exec shim every prepared sandbox waits in (src/sandbox/overlay/exec_shim.c).
pub const EXEC_SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-exec"));

/// Writes the exec shim to `path` (mode 0555), replacing what was there.
pub async fn install_exec_shim(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let staged = path.with_extension("new");
    tokio::fs::write(&staged, EXEC_SHIM).await?;
    tokio::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o555)).await?;
    tokio::fs::rename(&staged, path).await
}

type JobReply = oneshot::Sender<Result<JobComplete, SandboxError>>;

/// What the async side hands the sandbox thread.
struct RunRequest {
    job: SandboxJob,
    /// The job's span, entered on the sandbox thread so its lines carry the job id.
    span: tracing::Span,
    kill: KillHandle,
    reply: JobReply,
}

impl SandboxBackend for OverlayBackend {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn prepare(&self, toolchain: ToolchainRoot) -> BoxFuture<'static, Result<Box<dyn Sandbox>, SandboxError>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = self.sandboxes_dir.join(id.to_string());
        let dirs = OverlayDirs {
            lower: toolchain.path.clone(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("merged"),
        };
        let (bwrap, shim) = (self.bwrap.clone(), self.shim.clone());
        let limits = self.limits;
        async move {
            for d in [&dirs.upper, &dirs.work, &dirs.merged] {
                tokio::fs::create_dir_all(d)
                    .await
                    .map_err(|source| SandboxError::CreateDir { path: d.clone(), source })?;
            }
            let (ready_tx, ready_rx) = oneshot::channel();
            let (job_tx, job_rx) = mpsc::sync_channel::<RunRequest>(1);
            let thread_dirs = dirs.clone();
            std::thread::Builder::new()
                .name(format!("kiln-sandbox-{id}"))
                .spawn(move || sandbox_thread(thread_dirs, bwrap, shim, limits, ready_tx, job_rx))
                .map_err(SandboxError::Thread)?;
            match ready_rx.await {
                Ok(Ok(())) => Ok(Box::new(OverlaySandbox { dir, toolchain, jobs: job_tx }) as Box<dyn Sandbox>),
                Ok(Err(e)) => {
                    // The thread has ended; nothing is mounted anywhere. Remove the dirs.
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                    Err(e)
                }
                Err(_) => Err(SandboxError::ThreadGone),
            }
        }
        .boxed()
    }
}

/// The body of a prepared sandbox's thread: mount, start bubblewrap, wait for one
/// job, run it, exit.
///
/// bubblewrap starts here, before any job exists, and waits in the exec shim: its
/// namespaces and mounts (most of a sandbox's start-up cost) are off the job's path.
/// Exiting drops the last reference to the private mount namespace, which unmounts
/// the overlay; the directories stay for the cleaner.
fn sandbox_thread(
    dirs: OverlayDirs,
    bwrap: PathBuf,
    shim: PathBuf,
    limits: SandboxLimits,
    ready: oneshot::Sender<Result<(), SandboxError>>,
    jobs: mpsc::Receiver<RunRequest>,
) {
    let started = enter_overlay_namespace(&dirs)
        .and_then(|()| StartedSandbox::start(&bwrap, &shim, &dirs.merged, limits.max_process_memory_bytes));
    let sandbox = match started {
        Ok(sandbox) => sandbox,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        sandbox.discard();
        return;
    }
    // A closed channel means the sandbox was discarded unused.
    let Ok(RunRequest { job, span, kill, reply }) = jobs.recv() else {
        sandbox.discard();
        return;
    };
    let _entered = span.enter();
    let job_id = job.job_id;
    let result = run_job(sandbox, &dirs.merged, job, &limits, &kill);
    if let Err(e) = &result {
        tracing::debug!(%job_id, error = %ErrorChain(e), "sandbox job failed");
    }
    let _ = reply.send(result);
}

struct OverlaySandbox {
    dir: PathBuf,
    toolchain: ToolchainRoot,
    jobs: mpsc::SyncSender<RunRequest>,
}

impl Sandbox for OverlaySandbox {
    fn run(
        self: Box<Self>,
        job: SandboxJob,
        cancel: Cancellation,
    ) -> BoxFuture<'static, (Result<JobComplete, SandboxError>, Leftovers)> {
        let OverlaySandbox { dir, toolchain, jobs } = *self;
        async move {
            // Keep the toolchain root leased until the job is over.
            let _toolchain = toolchain;
            let timeout = job.timeout;
            let kill = KillHandle::default();
            let (reply, mut answer) = oneshot::channel();
            let span = tracing::Span::current();
            if jobs.try_send(RunRequest { job, span, kill: kill.clone(), reply }).is_err() {
                return (Err(SandboxError::ThreadGone), Leftovers::Dir(dir));
            }
            let mut guard = KillOnDrop(Some(kill.clone()));
            let result = tokio::select! {
                answer = &mut answer => answer.unwrap_or(Err(SandboxError::ThreadGone)),
                () = tokio::time::sleep(timeout) => stop(&kill, answer, SandboxError::TimedOut(timeout)).await,
                () = cancelled(cancel) => stop(&kill, answer, SandboxError::Cancelled).await,
            };
            guard.0 = None;
            (result, Leftovers::Dir(dir))
        }
        .boxed()
    }

    fn discard(self: Box<Self>) -> Leftovers {
        // Dropping the sender ends the parked thread, which frees its namespace.
        Leftovers::Dir(self.dir)
    }
}

/// How long a sandbox thread gets to finish after its job was killed. Past it the
/// thread is abandoned (and logged) rather than letting the job's answer wait.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Kills the job and waits (boundedly) for its thread, then answers `why`.
async fn stop(
    kill: &KillHandle,
    answer: oneshot::Receiver<Result<JobComplete, SandboxError>>,
    why: SandboxError,
) -> Result<JobComplete, SandboxError> {
    kill.kill();
    if tokio::time::timeout(KILL_GRACE, answer).await.is_err() {
        tracing::error!(grace = ?KILL_GRACE, "sandbox thread did not finish after its job was killed; abandoning it");
    }
    Err(why)
}

/// Resolves when the job is cancelled; never if the sender is dropped unused.
async fn cancelled(cancel: Cancellation) {
    if cancel.await.is_err() {
        std::future::pending::<()>().await;
    }
}
