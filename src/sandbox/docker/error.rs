use std::time::Duration;

/// A failed conversation with the docker daemon, or with the helper inside a container.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("connecting to the docker daemon at {host} failed")]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the docker daemon did not answer `{call}` within {timeout:?}")]
    Timeout { call: &'static str, timeout: Duration },
    #[error("docker `{call}` failed")]
    Engine {
        call: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the docker daemon is unreachable; jobs resume when it answers again")]
    Unreachable,
    #[error("building the image of toolchain {archive_id} failed: {reason}")]
    Image { archive_id: String, reason: String },
    #[error("writing the image tar of {root:?} failed")]
    ImageTar {
        root: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no container for toolchain {archive_id} became free within {waited:?}")]
    NoContainer { archive_id: String, waited: Duration },
    #[error("resetting container {container} failed: {message}")]
    Reset { container: String, message: String },
    #[error("the agent of container {container} broke its protocol: {reason}")]
    Agent { container: String, reason: String },
    #[error("writing to the agent of container {container} failed")]
    AgentIo {
        container: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent of container {container} could not start the job: {message}")]
    NotStarted { container: String, message: String },
    #[error("container {container} stopped or was removed while the job ran")]
    ContainerGone { container: String },
    #[error("container {container} has no running init on the host (pid {pid:?}) to find its memory cgroup by")]
    NoInit { container: String, pid: Option<i64> },
    #[error("charging the socket buffers of container {container} to its memory cgroup failed")]
    ContainerCgroup {
        container: String,
        #[source]
        source: crate::sandbox::cgroup::CgroupError,
    },
    #[error(
        "the docker daemon cannot bound a container's disk (kiln.sandbox.docker.require_disk_quota is set): \
         its storage driver needs xfs with pquota, or btrfs with quotas enabled"
    )]
    NoDiskQuota {
        #[source]
        source: bollard::errors::Error,
    },
    #[error("mounting a devpts instance for a container failed")]
    Ptys(#[source] std::io::Error),
    #[error("the container pool is not running")]
    PoolGone,
    #[error("starting a runtime to reach the docker daemon failed")]
    Runtime(#[source] std::io::Error),
    #[error("the thread that reached the docker daemon panicked")]
    CheckPanicked,
}

impl DockerError {
    /// What the daemon answered when it refused a call (an HTTP error status); any
    /// other failure (unreachable, timed out) comes back as the error it is.
    pub(super) fn refusal(self) -> Result<bollard::errors::Error, DockerError> {
        match self {
            DockerError::Engine {
                source: source @ bollard::errors::Error::DockerResponseServerError { .. }, ..
            } => Ok(source),
            other => Err(other),
        }
    }

    /// The daemon could not be reached or did not answer: the job may succeed later
    /// or elsewhere, so the facade answers 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DockerError::Connect { .. } | DockerError::Timeout { .. } | DockerError::Unreachable => true,
            DockerError::Engine { source, .. } => is_transport_error(source),
            _ => false,
        }
    }
}

/// Errors of the connection rather than answers of the daemon.
fn is_transport_error(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as B;
    matches!(
        e,
        B::HyperResponseError { .. }
            | B::IOError { .. }
            | B::RequestTimeoutError
            | B::SocketNotFoundError(_)
            | B::HyperLegacyError { .. }
    )
}
