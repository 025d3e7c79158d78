//! The overlay backend: overlayfs over the toolchain root, bubblewrap around the job.
//!
//! Each prepared sandbox is a parked thread that has entered a *private mount
//! namespace* and mounted `overlay(lower = toolchain root, upper, work)` there.
//! The job is confined by layers that each hold on their own: an unprivileged host
//! uid of its own (`identity.rs`), no capabilities, no further user namespaces, a
//! read-only `/proc/sys`, a seccomp filter (`seccomp.rs`), a cgroup with pids,
//! memory and CPU limits ([`crate::sandbox::cgroup`]), and no fd of kiln's. The
//! host's mount table never sees the overlay: when the thread and the job it spawned
//! are gone, the kernel frees the namespace and the mount with it, even after a
//! `kill -9` of kiln (the leaked-mount problem of upstream, sccache#1688, cannot occur).
//! Children inherit the namespace of the thread that forks them, so bubblewrap
//! started from that thread binds the overlay as the job's `/`. It is started when
//! the sandbox is prepared and waits in a static exec shim (`exec_shim.c`) until
//! the job's command arrives on a pipe, so a job pays for none of its set-up.

mod backend;
mod bwrap;
mod id_claim;
mod identity;
mod mount_template;
mod namespace;
mod seccomp;

pub use backend::{install_exec_shim, OverlayBackend, OverlayConfinement, EXEC_SHIM};
pub use bwrap::{check_bwrap, probe_unprivileged, BwrapError};
pub use id_claim::{claim_ids, ClaimError, IdClaim, CLAIMS_DIR};
pub use identity::{IdRange, JobIdentity};
pub use mount_template::MountTemplate;
pub use namespace::MAX_PTYS;
pub use seccomp::JobSeccomp;
