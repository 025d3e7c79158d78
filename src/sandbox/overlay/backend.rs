//! The overlay backend and its prepared sandboxes (one parked thread each).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::bwrap::{run_job, Confinement, StartedSandbox};
use super::id_claim::IdClaim;
use super::identity::{create_files_as, JobIdentity};
use super::mount_template::MountTemplate;
use super::namespace::{enter_overlay_namespace, release_overlay_namespace, OverlayDirs};
use super::seccomp::JobSeccomp;
use crate::protocol::JobComplete;
use crate::report::ErrorChain;
use crate::sandbox::cgroup::{JobCgroup, JobCgroups};
use crate::sandbox::kill::{KillHandle, KillOnDrop};
use crate::sandbox::{
    Cancellation, Leftovers, Sandbox, SandboxBackend, SandboxError, SandboxJob, SandboxLimits, ToolchainRoot,
};

/// Prepares overlay sandboxes at `<data_dir>/sandboxes/<n>` (0700), each with a
/// tmpfs of its own mounted there, in its thread's namespace only, holding
/// `{upper,work,merged}`.
pub struct OverlayBackend {
    sandboxes_dir: PathBuf,
    confinement: Arc<OverlayConfinement>,
    limits: SandboxLimits,
    next_id: AtomicU64,
}

/// How every overlay sandbox is confined, fixed at startup.
pub struct OverlayConfinement {
    pub bwrap: PathBuf,
    /// The exec shim on the host (see [`EXEC_SHIM`]), bound read-only into sandboxes.
    pub shim: PathBuf,
    /// Host ids the sandboxes' jobs run as, one per sandbox in turn: a range no
    /// other kiln on the host uses while this one runs.
    pub ids: IdClaim,
    pub seccomp: JobSeccomp,
    /// Where each sandbox's cgroup goes; `None` only when the config allows
    /// running without (`kiln.sandbox.require_cgroups = false`) and the host has none.
    pub cgroups: Option<Arc<JobCgroups>>,
    /// The small mount namespace each sandbox's own is copied from; `None`: kiln's
    /// own (every host mount, copied per sandbox) when it could not be made.
    pub mounts: Option<MountTemplate>,
}

impl OverlayBackend {
    /// `confinement.shim` must hold [`EXEC_SHIM`] (see [`install_exec_shim`]).
    pub fn new(sandboxes_dir: PathBuf, confinement: OverlayConfinement, limits: SandboxLimits) -> Self {
        OverlayBackend { sandboxes_dir, confinement: Arc::new(confinement), limits, next_id: AtomicU64::new(0) }
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
            scratch: dir.clone(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("merged"),
        };
        let confinement = self.confinement.clone();
        let identity = confinement.ids.range.nth(id);
        let limits = self.limits;
        async move {
            create_private_dir(&dir).await?;
            let (ready_tx, ready_rx) = oneshot::channel();
            let (job_tx, job_rx) = mpsc::sync_channel::<RunRequest>(1);
            let thread = SandboxThread { id, dirs, confinement, identity, limits };
            std::thread::Builder::new()
                .name(format!("kiln-sandbox-{id}"))
                .spawn(move || thread.run(ready_tx, job_rx))
                .map_err(SandboxError::Thread)?;
            match ready_rx.await {
                Ok(Ok(())) => Ok(Box::new(OverlaySandbox { dir, toolchain, jobs: job_tx }) as Box<dyn Sandbox>),
                Ok(Err(e)) => {
                    // The thread has ended; nothing is mounted anywhere. Remove the dirs.
                    let remove = dir.clone();
                    let deadline = std::time::Instant::now() + REMOVE_FAILED_PREPARE;
                    let _ = tokio::task::spawn_blocking(move || crate::archive::remove_tree(&remove, deadline)).await;
                    Err(e)
                }
                Err(_) => Err(SandboxError::ThreadGone),
            }
        }
        .boxed()
    }

    /// Kills whatever is left in this kiln's job cgroups (the warm sandboxes'
    /// parked bubblewraps among them) and removes the cgroups: a clean stop leaves
    /// no cgroup and no process behind.
    fn shut_down(&self) -> BoxFuture<'static, ()> {
        let cgroups = self.confinement.cgroups.clone();
        async move {
            let Some(cgroups) = cgroups else { return };
            match tokio::task::spawn_blocking(move || cgroups.remove_all()).await {
                Ok(Ok(())) => tracing::info!("job cgroups removed"),
                Ok(Err(e)) => tracing::warn!(error = %ErrorChain(&e), "job cgroups left for the next start's sweep"),
                Err(e) => tracing::warn!(error = %e, "removing the job cgroups panicked"),
            }
        }
        .boxed()
    }
}

/// How long removing the directories of a sandbox that failed to start may take.
const REMOVE_FAILED_PREPARE: Duration = Duration::from_secs(10);

/// A sandbox's directory: 0700, so no local user reaches the job's files, which
/// belong to an id that is not theirs but must not be theirs to read either.
async fn create_private_dir(dir: &std::path::Path) -> Result<(), SandboxError> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(dir).await.map_err(|source| SandboxError::CreateDir { path: dir.to_owned(), source })
}

/// What a prepared sandbox's thread works with.
struct SandboxThread {
    id: u64,
    dirs: OverlayDirs,
    confinement: Arc<OverlayConfinement>,
    identity: JobIdentity,
    limits: SandboxLimits,
}

impl SandboxThread {
    /// The body of a prepared sandbox's thread: make its cgroup, mount, start
    /// bubblewrap, wait for one job, run it, answer, then remove the cgroup and exit.
    ///
    /// bubblewrap starts here, before any job exists, and waits in the exec shim: its
    /// namespaces, mounts and cgroup (most of a sandbox's start-up cost) are off the
    /// job's path, and so is the cgroup's removal, after the answer. Exiting drops
    /// the last reference to the private mount namespace, which unmounts the
    /// overlay; the directories stay for the cleaner.
    fn run(self, ready: oneshot::Sender<Result<(), SandboxError>>, jobs: mpsc::Receiver<RunRequest>) {
        let cgroup = match &self.confinement.cgroups {
            Some(cgroups) => match cgroups.create(&format!("sandbox-{}", self.id)) {
                Ok(cgroup) => Some(cgroup),
                Err(e) => {
                    let _ = ready.send(Err(SandboxError::Cgroup(e)));
                    return;
                }
            },
            None => None,
        };
        match self.start(cgroup.as_ref()) {
            Ok(sandbox) => {
                self.serve(sandbox, cgroup.as_ref(), ready, jobs);
                // Only here: this thread is in the sandbox's namespace for sure.
                release_overlay_namespace(&self.dirs);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
        if let Some(cgroup) = cgroup {
            if let Err(e) = cgroup.remove() {
                tracing::warn!(sandbox = self.id, error = %ErrorChain(&e), "removing a sandbox's cgroup failed");
            }
        }
    }

    fn start(&self, cgroup: Option<&JobCgroup>) -> Result<StartedSandbox, SandboxError> {
        let c = &self.confinement;
        enter_overlay_namespace(&self.dirs, &c.shim, self.limits.max_disk_bytes, c.mounts.as_ref())?;
        let sandbox = StartedSandbox::start(Confinement {
            bwrap: &c.bwrap,
            identity: self.identity,
            seccomp: &c.seccomp,
            cgroup_procs: cgroup.map(JobCgroup::procs_fds).unwrap_or_default(),
            max_process_memory: self.limits.max_process_memory_bytes,
        })?;
        // From here on this thread creates files as the job's uid: its inputs and
        // directories are the job's to write.
        if let Err(e) = create_files_as(self.identity) {
            sandbox.discard();
            return Err(e);
        }
        Ok(sandbox)
    }

    fn serve(
        &self,
        sandbox: StartedSandbox,
        cgroup: Option<&JobCgroup>,
        ready: oneshot::Sender<Result<(), SandboxError>>,
        jobs: mpsc::Receiver<RunRequest>,
    ) {
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
        let result = run_job(sandbox, job, &self.limits, cgroup, &kill);
        if let Err(e) = &result {
            tracing::debug!(%job_id, error = %ErrorChain(e), "sandbox job failed");
        }
        let _ = reply.send(result);
    }
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
