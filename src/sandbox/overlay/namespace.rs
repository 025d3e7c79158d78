//! Entering a private mount namespace with the sandbox's overlay mounted.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;

use super::mount_template::MountTemplate;
use crate::archive::{RootedDir, SandboxPath};
use crate::sandbox::SandboxError;

/// The directories of one overlay sandbox.
///
/// `scratch` is on the host (0700, in the data dir); the rest are made below it
/// on the sandbox's own tmpfs, which exists only in the sandbox thread's mount
/// namespace (see [`mount_scratch`]).
#[derive(Debug, Clone)]
pub(super) struct OverlayDirs {
    pub lower: PathBuf,
    pub scratch: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the overlay is mounted first (in the thread's namespace only).
    pub merged: PathBuf,
}

/// Where the sandbox's root appears in its thread's private namespace.
///
/// bubblewrap runs as the job's unprivileged uid, so every path it is given must
/// be reachable by that uid; kiln's data directory (0700) is not. So the thread
/// mounts a small tmpfs over `/tmp` in its own namespace (the host's `/tmp` is
/// untouched and unseen) and binds the overlay at `/tmp/root` on it. bubblewrap
/// later covers `/tmp` with its own tmpfs to build the sandbox, which is fine: by
/// then the overlay is bound as the sandbox's `/`.
pub(super) const STAGE: &str = "/tmp";
pub(super) const ROOT: &str = "/tmp/root";

/// Where the sandbox's own devpts instance is mounted in the thread's namespace;
/// bubblewrap binds it over the `/dev/pts` of its `--dev`.
pub(super) const PTS: &str = "/tmp/pts";
/// Pseudo-terminals one job may hold at once. Compilers need none; a build step
/// that runs `script` or `expect` needs one or two. Without a bound of its own a
/// job took 3,071 of the host's 4,096 (`kernel.pty.max`), so no container on the
/// host could get one (issue 27).
pub const MAX_PTYS: u32 = 16;

/// Where the exec shim appears inside every sandbox (read-only).
pub(super) const SHIM_IN_SANDBOX: &str = "/.kiln-exec";

/// Moves the *calling thread* into a new mount namespace, mounts the overlay
/// there, lays out what bubblewrap needs in it and makes it reachable at [`ROOT`].
///
/// `unshare(CLONE_NEWNS)` affects only the calling thread (it implies `CLONE_FS`,
/// which a thread may unshare), so this must run on a dedicated thread that never
/// serves anything else. The new namespace is copied from `template` when there
/// is one (else from kiln's own) and made recursively private first so no mount
/// can propagate back to the host.
pub(super) fn enter_overlay_namespace(
    dirs: &OverlayDirs,
    shim: &Path,
    max_disk_bytes: u64,
    template: Option<&MountTemplate>,
) -> Result<(), SandboxError> {
    if let Some(template) = template {
        template.enter()?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(SandboxError::Namespace)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(SandboxError::Namespace)?;
    // The template kept no mount below /proc: nothing to uncover there.
    if template.is_none() {
        reveal_proc();
    }
    // nosuid/nodev: nothing in a toolchain or a job's inputs may gain privileges.
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_scratch(dirs, max_disk_bytes)?;
    let options =
        format!("lowerdir={},upperdir={},workdir={}", dirs.lower.display(), dirs.upper.display(), dirs.work.display());
    mount(Some("overlay"), &dirs.merged, Some("overlay"), hardened, Some(options.as_str()))
        .map_err(|source| SandboxError::MountOverlay { path: dirs.merged.clone(), source })?;
    lay_out_mount_points(&dirs.merged, shim)?;
    // Held across the tmpfs mount below, which may cover the data dir's path (a
    // data dir under /tmp): the overlay is bound from this fd, not by its path.
    let merged = nix::fcntl::open(&dirs.merged, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|source| SandboxError::MountOverlay { path: dirs.merged.clone(), source })?;
    let stage_err = |source| SandboxError::MountStage { path: STAGE.into(), source };
    mount(Some("tmpfs"), STAGE, Some("tmpfs"), hardened | MsFlags::MS_NOEXEC, Some("mode=0755,size=64k,nr_inodes=16"))
        .map_err(stage_err)?;
    nix::unistd::mkdir(ROOT, Mode::from_bits_truncate(0o755)).map_err(stage_err)?;
    mount_private_devpts()?;
    let from_fd = format!("/proc/self/fd/{}", merged.as_raw_fd());
    // Recursive: the shim's read-only bind inside comes along.
    mount(Some(from_fd.as_str()), ROOT, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|source| SandboxError::MountOverlay { path: ROOT.into(), source })
}

/// Unmounts, in the calling thread's private mount namespace, whatever is mounted
/// over entries of `/proc`.
///
/// Container runtimes cover parts of `/proc` (docker's and Kubernetes' masked
/// paths, `/dev/null` over `/proc/kcore` and the like, and read-only binds over
/// `/proc/sys`, `/proc/bus`, ...). The kernel then refuses a new proc instance to
/// a user namespace that cannot see all of the existing one
/// (`mount_too_revealing`), and bubblewrap mounts one for each sandbox's pid
/// namespace: so kiln in a container failed every job with "Can't mount proc"
/// unless the runtime unmasked `/proc` for the whole container. Here only the
/// sandbox's namespace loses the covers; kiln's and the host's keep them, and the
/// job sees the proc of its own pid namespace, as on a host without a runtime.
/// Failures are left to bubblewrap to report.
pub(crate) fn reveal_proc() {
    // thread-self: this thread's namespace, not the process's.
    let Ok(mountinfo) = std::fs::read_to_string("/proc/thread-self/mountinfo") else { return };
    let proc = Path::new("/proc");
    let mut covers: Vec<PathBuf> =
        crate::sandbox::cgroup::mount_points(&mountinfo).filter(|at| at.starts_with(proc) && at != proc).collect();
    // Deepest first, so a cover inside another goes before it.
    covers.sort_by_key(|at| std::cmp::Reverse(at.components().count()));
    for at in covers {
        if let Err(e) = nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH) {
            tracing::debug!(path = %at.display(), error = %e, "uncovering /proc in a sandbox's namespace failed");
        }
    }
}

/// Mounts the sandbox's scratch tmpfs over `dirs.scratch` and makes the overlay's
/// upper, work and mount-point directories on it.
///
/// This is the job's disk quota (issue 27): whatever the job writes is a page of
/// this tmpfs, charged to the job's memory cgroup as it writes, and past `size`
/// it gets ENOSPC while kiln and every other job carry on. The data dir's file
/// system never holds a job's bytes (a job once filled it, and uploads failed
/// until it ended). The mount exists only in this thread's namespace (and the
/// job's copy of it), so it goes when the sandbox ends, whatever the job left.
/// Inodes are bounded too: one per 4 KiB of the size, as a disk would have them.
fn mount_scratch(dirs: &OverlayDirs, max_disk_bytes: u64) -> Result<(), SandboxError> {
    let inodes = (max_disk_bytes / 4096).clamp(MIN_SCRATCH_INODES, MAX_SCRATCH_INODES);
    let options = format!("mode=0700,size={max_disk_bytes},nr_inodes={inodes}");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("kiln-scratch"), &dirs.scratch, Some("tmpfs"), flags, Some(options.as_str()))
        .map_err(|source| SandboxError::MountStage { path: dirs.scratch.clone(), source })?;
    for (dir, mode) in [(&dirs.upper, 0o755), (&dirs.work, 0o700), (&dirs.merged, 0o700)] {
        // The overlay's root takes the upper dir's mode: 0755 whatever kiln's
        // umask, so the job's uid can reach its own root.
        let made = nix::unistd::mkdir(dir, Mode::empty())
            .map_err(std::io::Error::from)
            .and_then(|()| std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode)));
        made.map_err(|source| SandboxError::CreateDir { path: dir.clone(), source })?;
    }
    Ok(())
}

/// Bounds on the scratch tmpfs's inodes, whatever `max_disk_bytes` says: enough
/// for a job's inputs (`max_input_entries`, 100,000 by default) and its files.
const MIN_SCRATCH_INODES: u64 = 16_384;
const MAX_SCRATCH_INODES: u64 = 4_194_304;

/// Unmounts what [`enter_overlay_namespace`] mounted, so the scratch tmpfs's
/// pages are freed (and uncharged from the job's cgroup) before the cgroup is
/// removed; the thread's exit would free them too, a moment later.
pub(super) fn release_overlay_namespace(dirs: &OverlayDirs) {
    for target in [Path::new(STAGE), dirs.scratch.as_path()] {
        if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            tracing::debug!(path = %target.display(), error = %e, "unmounting a sandbox's mount failed");
        }
    }
}

/// Mounts a devpts instance of the sandbox's own at [`PTS`], with at most
/// [`MAX_PTYS`] pseudo-terminals. bubblewrap's `--dev` mounts a new instance too,
/// but with no `max=`; every instance draws on the one host-wide
/// `kernel.pty.max` (devpts(5)).
fn mount_private_devpts() -> Result<(), SandboxError> {
    let pts_err = |source| SandboxError::MountStage { path: PTS.into(), source };
    nix::unistd::mkdir(PTS, Mode::from_bits_truncate(0o755)).map_err(pts_err)?;
    // ptmxmode=0666: the job's uid opens pts/ptmx (bubblewrap's /dev/ptmx links
    // there); mode=0620: a new terminal is its opener's, as with bubblewrap's own.
    let options = format!("newinstance,ptmxmode=0666,mode=0620,max={MAX_PTYS}");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(Some("devpts"), PTS, Some("devpts"), flags, Some(options.as_str())).map_err(pts_err)
}

/// Creates, as root, what bubblewrap (running as the job's uid, which may write
/// nothing in the toolchain's root-owned directories) would otherwise create itself:
/// the `/proc` and `/dev` mount points and a `/tmp` (1777, as on any host) when the
/// toolchain has none; and binds the exec shim, read-only, at [`SHIM_IN_SANDBOX`].
fn lay_out_mount_points(merged: &Path, shim: &Path) -> Result<(), SandboxError> {
    let root = RootedDir::open(merged).map_err(SandboxError::Layout)?;
    let dir = |path: &[u8], mode| {
        let path = SandboxPath::parse(path).map_err(SandboxError::Layout)?;
        root.create_dir_all(&path, Mode::from_bits_truncate(mode)).map_err(SandboxError::Layout)
    };
    dir(b"/proc", 0o555)?;
    dir(b"/dev", 0o755)?;
    // Whatever the toolchain's /tmp was (or the umask made of a new one), the job
    // (not root on the host) must be able to write there, as on any host.
    let tmp = dir(b"/tmp", 0o1777)?;
    nix::sys::stat::fchmod(&tmp, Mode::from_bits_truncate(0o1777))
        .map_err(|source| SandboxError::MountStage { path: "/tmp".into(), source })?;
    let target = SandboxPath::parse(SHIM_IN_SANDBOX.as_bytes()).map_err(SandboxError::Layout)?;
    // Created (never through a symlink: O_NOFOLLOW, resolved in the root) and
    // closed before the bind, so the mount point is the file kiln just made.
    // O_RDONLY: opening an existing file for writing would copy it up.
    root.open_in(&target, OFlag::O_CREAT | OFlag::O_RDONLY | OFlag::O_NOFOLLOW, Mode::from_bits_truncate(0o555))
        .map_err(|source| SandboxError::MountStage { path: SHIM_IN_SANDBOX.into(), source })?;
    let target = merged.join(SHIM_IN_SANDBOX.trim_start_matches('/'));
    let bind_err = |source| SandboxError::MountStage { path: shim.to_owned(), source };
    mount(Some(shim), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(bind_err)?;
    let read_only =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(None::<&str>, &target, None::<&str>, read_only, None::<&str>).map_err(bind_err)
}
