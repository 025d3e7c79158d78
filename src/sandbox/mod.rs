//! Sandboxes: where one job's command runs, isolated from the host and other jobs.
//!
//! A backend prepares sandboxes over an unpacked toolchain root ahead of time; a
//! prepared [`Sandbox`] runs exactly one job and leaves [`Leftovers`] for the cleaner.
//! The overlay backend lives in [`overlay`], the docker backend in [`docker`]; every
//! backend hides behind
//! [`SandboxBackend`], so the actors never know which one runs. [`syscalls`] is the
//! one system-call policy both backends enforce, each in its own form.

pub mod cgroup;
pub mod docker;
mod error;
#[cfg(test)]
pub(crate) mod fake;
mod job;
mod kill;
pub mod overlay;
pub mod syscalls;

pub use error::SandboxError;
pub use job::{SandboxJob, SandboxLimits};

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::protocol::JobComplete;

/// An unpacked toolchain root, held for as long as a sandbox may use it.
///
/// The unpacker never evicts a root while any clone of its lease is alive.
#[derive(Debug, Clone)]
pub struct ToolchainRoot {
    pub archive_id: String,
    pub path: PathBuf,
    pub lease: Arc<()>,
}

/// What a used or discarded sandbox leaves behind, for the cleaner to remove.
#[derive(Debug)]
pub enum Leftovers {
    /// A sandbox directory; nothing of it is mounted in the host's namespace.
    Dir(PathBuf),
    /// Something only its backend knows how to clean (a docker container: reset and
    /// given back to its pool, or removed).
    CleansItself(Box<dyn CleanItself>),
}

/// Leftovers whose backend knows how to clean them; the cleaner just runs `clean`.
pub trait CleanItself: std::fmt::Debug + Send + 'static {
    /// Cleans up with async calls only: the cleaner runs it as a task on its own
    /// arbiter, never on a thread of its own.
    fn clean(self: Box<Self>) -> BoxFuture<'static, Result<(), SandboxError>>;
}

/// Sending `()` asks a running job to stop.
pub type Cancellation = tokio::sync::oneshot::Receiver<()>;

/// A kind of sandbox (overlay + bubblewrap, ...).
pub trait SandboxBackend: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Whether the SandboxPool should prepare sandboxes ahead of jobs. A backend
    /// that keeps its own warm pool (docker's ContainerPool) says no: each acquire
    /// then takes one of its warm sandboxes at once.
    fn prepares_ahead(&self) -> bool {
        true
    }

    /// Prepares a sandbox over `toolchain` so a job can start in it at once.
    fn prepare(&self, toolchain: ToolchainRoot) -> BoxFuture<'static, Result<Box<dyn Sandbox>, SandboxError>>;

    /// kiln is stopping cleanly, its jobs drained: remove what the backend keeps
    /// running between jobs. What a killed kiln left, the next start sweeps.
    fn shut_down(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// A prepared sandbox. It runs one job; afterwards only its leftovers remain.
pub trait Sandbox: Send + 'static {
    /// Runs `job`. A message on `cancel` (the client went away) stops it; so does
    /// dropping the returned future, though then the leftovers are lost until the
    /// next start's sweep.
    fn run(
        self: Box<Self>,
        job: SandboxJob,
        cancel: Cancellation,
    ) -> BoxFuture<'static, (Result<JobComplete, SandboxError>, Leftovers)>;

    /// Gives the sandbox up unused.
    fn discard(self: Box<Self>) -> Leftovers;
}

pub type SharedBackend = Arc<dyn SandboxBackend>;
