use std::path::PathBuf;
use std::time::Duration;

use crate::archive::ArchiveError;

/// Why a sandbox could not be prepared or could not run a job to completion.
///
/// A compile that fails is *not* an error here: it is a completed job with a non-zero
/// exit code. These are the failures of the job's request or of the machinery.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("creating sandbox directory {path:?} failed")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the sandbox thread failed")]
    Thread(#[source] std::io::Error),
    #[error("entering a private mount namespace failed")]
    Namespace(#[source] nix::Error),
    #[error("making the sandboxes' mount namespace failed: {step}")]
    MountTemplate {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting the overlay at {path:?} failed")]
    MountOverlay {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("mounting the sandbox's staging tmpfs at {path:?} failed")]
    MountStage {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("building the job's seccomp filter failed: {step}: {reason}")]
    Seccomp { step: &'static str, reason: String },
    #[error("making the job's cgroup failed")]
    Cgroup(#[source] super::cgroup::CgroupError),
    #[error("taking on the job's uid {uid} for its files failed")]
    JobOwner {
        uid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("the job's inputs were refused")]
    Inputs(#[source] ArchiveError),
    #[error("the job's command was refused: {0}")]
    BadCommand(String),
    #[error("preparing the job's directories failed")]
    Layout(#[source] ArchiveError),
    #[error("starting bubblewrap ({path:?}) failed")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the sandbox failed")]
    Wait(#[source] std::io::Error),
    #[error("bubblewrap could not set up the sandbox; the job did not start: {stderr}")]
    NotSetUp { stderr: String },
    #[error("the sandbox process was killed by signal {signal} from outside kiln")]
    HelperKilled { signal: i32 },
    #[error("the job ran longer than {0:?} and was killed")]
    TimedOut(Duration),
    #[error("the client went away; the job was killed")]
    Cancelled,
    #[error("reading output {path} failed")]
    Output {
        path: String,
        #[source]
        source: ArchiveError,
    },
    #[error("compressing output {path} failed")]
    CompressOutput {
        path: String,
        #[source]
        source: crate::protocol::ProtocolError,
    },
    #[error("the job's outputs exceed {limit} bytes")]
    OutputsTooLarge { limit: u64 },
    #[error("the sandbox thread ended without an answer")]
    ThreadGone,
    #[error("the docker backend failed")]
    Docker(#[from] super::docker::DockerError),
}

impl SandboxError {
    /// The request itself was wrong; retrying it elsewhere will not help.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            SandboxError::Inputs(_)
                | SandboxError::BadCommand(_)
                | SandboxError::Layout(_)
                | SandboxError::OutputsTooLarge { .. }
        )
    }

    /// The backend cannot run jobs right now (its daemon is unreachable): the client
    /// should retry later or elsewhere (HTTP 503).
    pub fn is_backend_unavailable(&self) -> bool {
        matches!(self, SandboxError::Docker(e) if e.is_unavailable())
    }

    /// The machinery failed (not the job): counts against the builder's health.
    pub fn is_infrastructure_failure(&self) -> bool {
        !self.is_client_error() && !matches!(self, SandboxError::TimedOut(_) | SandboxError::Cancelled)
    }
}
