//! Per-job cgroups: every sandbox gets its own cgroup with pids, memory (swap
//! included) and CPU limits, on cgroup v2 (a delegated subtree) and on cgroup v1 or
//! hybrid hosts.
//!
//! [`JobCgroups`] is found once at startup (`detect`); it makes
//! `<kiln's own cgroup>/kiln-jobs/kiln-<pid>-<n>/` in each hierarchy and removes what
//! earlier kilns left under `kiln-jobs` (an instance directory is flock'ed for the
//! life of its kiln, so only dead kilns' leftovers are swept, even with several
//! kilns on one host). [`JobCgroups::create`] makes one job's cgroup with its limits
//! and opens its `cgroup.procs` files; the sandbox's forked child joins it with
//! [`join_from_child`] before it execs bubblewrap, so every process of the job is
//! limited from its first instruction. [`JobCgroup::remove`] kills what is left and
//! removes the directories.
//!
//! All of it is blocking filesystem work: run it on a dedicated thread or a
//! blocking pool.

mod dir;
mod error;
mod jobs;
mod kill;
mod process;
mod procfs;
mod v1;
mod v2;

#[cfg(test)]
mod host_tests;

pub use error::CgroupError;
pub use jobs::{
    join_from_child, CgroupLimits, CgroupOptions, JobCgroup, JobCgroups, MissingControllers, JOBS_PARENT,
    MIN_MEMORY_BYTES,
};
pub use process::ProcessMemcg;
pub(crate) use procfs::mount_points;
pub use v2::SERVER_LEAF;
