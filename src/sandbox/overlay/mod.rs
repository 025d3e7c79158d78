//! The overlay backend: overlayfs over the toolchain root, bubblewrap around the job.
//!
//! Each prepared sandbox is a parked thread that has entered a *private mount
//! namespace* and mounted `overlay(lower = toolchain root, upper, work)` there. The
//! host's mount table never sees the overlay: when the thread and the job it spawned
//! are gone, the kernel frees the namespace and the mount with it, even after a
//! `kill -9` of kiln (the leaked-mount problem of upstream, sccache#1688, cannot occur).
//! Children inherit the namespace of the thread that forks them, so bubblewrap
//! started from that thread binds the overlay as the job's `/`.

mod backend;
mod bwrap;
mod namespace;

pub use backend::OverlayBackend;
pub use bwrap::check_bwrap;
