//! Jobs: what the facade hands the actors to run ([`JobRequest`]), what comes back
//! ([`JobResult`], [`JobError`]), and the table of jobs placed on this server
//! ([`JobTable`]). Knows nothing of HTTP: a failure says whose it is
//! ([`FailureKind`]), and the facade picks the status.

mod table;

pub use table::{AssignedJob, DuplicateJob, JobTable, Upload, UsedIds};

use bytes::Bytes;

use crate::observe::SharedPhases;
use crate::protocol::{CompileCommand, JobComplete, JobId};
use crate::quarantine::Quarantined;
use crate::sandbox::SandboxError;
use crate::toolchains::UnpackFailed;

/// A job accepted by the facade, with everything needed to run it.
#[derive(Debug)]
pub struct JobRequest {
    pub job_id: JobId,
    pub archive_id: String,
    pub command: CompileCommand,
    pub outputs: Vec<String>,
    pub inputs_zlib: Bytes,
    /// The job's span, so every actor's log lines carry its id.
    pub span: tracing::Span,
    /// Times the job's phases, from the queue on (the sandbox enters its own).
    pub phases: SharedPhases,
}

#[cfg(test)]
impl JobRequest {
    /// For actor tests: `/bin/true` in `/`, no inputs, no outputs.
    pub(crate) fn trivial(job_id: u64, archive_id: &str) -> JobRequest {
        JobRequest {
            job_id: JobId(job_id),
            archive_id: archive_id.to_owned(),
            command: CompileCommand {
                executable: "/bin/true".into(),
                arguments: Vec::new(),
                env_vars: Vec::new(),
                cwd: "/".into(),
            },
            outputs: Vec::new(),
            inputs_zlib: Bytes::new(),
            span: tracing::Span::none(),
            phases: crate::observe::JobPhases::starting(crate::observe::Phase::Queue),
        }
    }
}

/// Outputs one job may ask for. A compile names a handful; kiln's work per job
/// (parsing, making parent directories, reading) grows with them.
pub const MAX_OUTPUTS: usize = 1024;
/// Components a job's cwd or output path may have, as many as an archive entry's.
pub const MAX_PATH_DEPTH: usize = 128;
/// Bytes a job's cwd or output path may have (the kernel's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// A job request whose shape would cost kiln more than any compile needs.
#[derive(Debug, thiserror::Error)]
pub enum BadShape {
    #[error("the job asks for {count} outputs; at most {MAX_OUTPUTS} are accepted")]
    TooManyOutputs { count: usize },
    #[error("{what} {start:?}... is {bytes} bytes long; at most {MAX_PATH_BYTES} are accepted")]
    PathTooLong { what: &'static str, start: String, bytes: usize },
    #[error("{what} {start:?}... is {depth} directories deep; at most {MAX_PATH_DEPTH} are accepted")]
    PathTooDeep { what: &'static str, start: String, depth: usize },
}

/// Checks the request's cwd and output names against the bounds above, before
/// anything is parsed or queued: a 16 MiB header of deep output names took kiln
/// to ~490 MiB, and 12 outputs 2,000 directories deep cost it 2.3 s of CPU
/// outside any job's cgroup (issue 27).
pub fn check_request_shape(command: &CompileCommand, outputs: &[String]) -> Result<(), BadShape> {
    if outputs.len() > MAX_OUTPUTS {
        return Err(BadShape::TooManyOutputs { count: outputs.len() });
    }
    let paths = std::iter::once(("the cwd", &command.cwd)).chain(outputs.iter().map(|o| ("the output", o)));
    for (what, path) in paths {
        let start = || path.chars().take(64).collect();
        if path.len() > MAX_PATH_BYTES {
            return Err(BadShape::PathTooLong { what, start: start(), bytes: path.len() });
        }
        let depth = path.split('/').filter(|c| !c.is_empty() && *c != ".").count();
        if depth > MAX_PATH_DEPTH {
            return Err(BadShape::PathTooDeep { what, start: start(), depth });
        }
    }
    Ok(())
}

pub type JobResult = Result<JobComplete, JobError>;

/// Why a job got no result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("toolchain {archive_id} is not on this server (never submitted, or evicted since): submit it again")]
    ToolchainMissing { archive_id: String },
    #[error(transparent)]
    Unpack(#[from] UnpackFailed),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("kiln's {0} is not running")]
    ActorGone(&'static str),
    #[error("the builder failed while running the job")]
    BuilderCrashed,
    #[error(transparent)]
    Quarantined(#[from] Quarantined),
}

impl JobError {
    /// Whose the failure is, for the facade to answer with (`http/error.rs`).
    pub fn kind(&self) -> FailureKind {
        match self {
            JobError::ToolchainMissing { .. } => FailureKind::BadRequest,
            JobError::Unpack(e) if e.bad_archive => FailureKind::BadRequest,
            JobError::Unpack(e) if e.no_space => FailureKind::Unavailable,
            JobError::Sandbox(e) if e.is_client_error() => FailureKind::BadRequest,
            JobError::Sandbox(e) if e.is_backend_unavailable() => FailureKind::Unavailable,
            JobError::ActorGone(_) | JobError::Quarantined(_) => FailureKind::Unavailable,
            _ => FailureKind::Internal,
        }
    }

    /// The job failed because of kiln or the host, not because of the request.
    pub fn is_infrastructure_failure(&self) -> bool {
        match self {
            JobError::Sandbox(e) => e.is_infrastructure_failure(),
            JobError::Unpack(e) => !e.bad_archive && !e.no_space,
            JobError::ToolchainMissing { .. } | JobError::Quarantined(_) => false,
            JobError::ActorGone(_) | JobError::BuilderCrashed => true,
        }
    }
}

/// Whose a job's failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The request's: resending it unchanged fails again.
    BadRequest,
    /// The server cannot take the job now (a backend down, a toolchain quarantined):
    /// another server, or later, may.
    Unavailable,
    /// kiln's or the host's.
    Internal,
}
