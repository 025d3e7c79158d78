//! Startup checks of the host: each failure is one line saying what is missing
//! and how to get it, instead of a confusing error on the first job.

use std::path::PathBuf;

use crate::config::{Backend, Config};
use crate::sandbox::docker::check_daemon;
use crate::sandbox::overlay::{check_bwrap, probe_unprivileged, BwrapError};

#[derive(Debug, thiserror::Error)]
pub enum HostCheckError {
    #[error("kiln runs on Linux only (it needs mount namespaces and overlayfs)")]
    NotLinux,
    #[error(
        "kiln must run as root: it mounts overlayfs and creates namespaces (run it with sudo or as a root service)"
    )]
    NotRoot,
    #[error("the kernel has no overlayfs: load it with `modprobe overlay` (or build a kernel with CONFIG_OVERLAY_FS)")]
    NoOverlayfs,
    #[error(
        "{0}: install it with `apt-get install bubblewrap` (or `dnf install bubblewrap`), or set bwrap_path in [builder]"
    )]
    Bubblewrap(BwrapError),
    /// bubblewrap runs as the job's unprivileged uid and needs a user namespace.
    #[error(transparent)]
    UserNamespaces(BwrapError),
    #[error(
        "the docker daemon does not answer ({chain}): start it (`systemctl start docker`, or `dockerd &`), \
         or set [kiln.sandbox.docker] host",
        chain = crate::report::ErrorChain(.0)
    )]
    Docker(crate::sandbox::docker::DockerError),
}

/// What the checks found and the server needs.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// bubblewrap's absolute path (overlay backend only).
    pub bwrap_path: Option<PathBuf>,
    /// bubblewrap's version line, or the docker daemon kiln talks to.
    pub sandbox: String,
}

/// Checks what the configured backend needs: root, overlayfs, bubblewrap 0.8 and
/// unprivileged user namespaces for `overlay`; a daemon that answers for `docker`.
pub fn check_host(config: &Config) -> Result<HostFacts, HostCheckError> {
    if !cfg!(target_os = "linux") {
        return Err(HostCheckError::NotLinux);
    }
    let bwrap_path = match config.backend() {
        Backend::Docker => {
            let host = check_daemon(&config.kiln.sandbox.docker).map_err(HostCheckError::Docker)?;
            return Ok(HostFacts { bwrap_path: None, sandbox: format!("docker at {host}") });
        }
        Backend::Overlay { bwrap_path } => bwrap_path,
    };
    if !nix::unistd::geteuid().is_root() {
        return Err(HostCheckError::NotRoot);
    }
    if !overlayfs_available() {
        return Err(HostCheckError::NoOverlayfs);
    }
    let (bwrap_path, version) = check_bwrap(&bwrap_path).map_err(HostCheckError::Bubblewrap)?;
    let sandbox = &config.kiln.sandbox;
    let id = sandbox.job_ids().nth(0);
    probe_unprivileged(&bwrap_path, id).map_err(HostCheckError::UserNamespaces)?;
    Ok(HostFacts { bwrap_path: Some(bwrap_path), sandbox: version })
}

/// Whether the kernel has overlayfs (listed, or its module present).
pub fn overlayfs_available() -> bool {
    let listed = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|table| table.lines().any(|line| line.split_whitespace().last() == Some("overlay")));
    // A modular overlayfs is loaded on first mount; its module directory tells it exists.
    listed || std::path::Path::new("/sys/module/overlay").exists()
}
