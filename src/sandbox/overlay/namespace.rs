//! Entering a private mount namespace with the sandbox's overlay mounted.

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::sandbox::SandboxError;

/// The directories of one overlay sandbox.
#[derive(Debug, Clone)]
pub(super) struct OverlayDirs {
    pub lower: std::path::PathBuf,
    pub upper: std::path::PathBuf,
    pub work: std::path::PathBuf,
    pub merged: std::path::PathBuf,
}

/// Moves the *calling thread* into a new mount namespace and mounts the overlay.
///
/// `unshare(CLONE_NEWNS)` affects only the calling thread (it implies `CLONE_FS`,
/// which a thread may unshare), so this must run on a dedicated thread that never
/// serves anything else. The new namespace is made recursively private first so the
/// overlay cannot propagate back to the host.
pub(super) fn enter_overlay_namespace(dirs: &OverlayDirs) -> Result<(), SandboxError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(SandboxError::Namespace)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(SandboxError::Namespace)?;
    let options =
        format!("lowerdir={},upperdir={},workdir={}", dirs.lower.display(), dirs.upper.display(), dirs.work.display());
    // nosuid/nodev: nothing in a toolchain or a job's inputs may gain privileges.
    mount(
        Some("overlay"),
        &dirs.merged,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|source| SandboxError::MountOverlay { path: dirs.merged.clone(), source })
}
