//! Operating kiln: what it is doing, how long jobs take, and when it stops.
//!
//! - [`phases`]: the stages of a job and the clock that times them (the builder and
//!   the sandbox both enter phases); [`usage`]: the CPU and memory a job's
//!   processes used, which the sandbox records there.
//! - [`observer`]: latency histograms and the live [`activity`] (builders, recent
//!   jobs and errors in bounded ring buffers).
//! - [`views`]: the actors' answers to `Describe*` / garbage collection messages, and
//!   the scheduler link's health.
//! - [`snapshot`]: one reading of everything the operator endpoints show (the
//!   actors are asked by `http::Ops`: this module is a leaf, it names no actor).
//! - [`metrics`]: the Prometheus exposition; [`lifecycle`]: serving / draining.
//! - [`logging`]: text or JSON logs, with a level that SIGHUP can change.
//! - [`disk`]: free bytes and inodes of the data dir's file system (`statvfs`) and
//!   the reserve kiln leaves free there.
//! - [`readiness`]: whether kiln can take jobs now (`/readyz`): not draining, a
//!   sandbox backend that can make sandboxes, the disk above its reserve.

pub mod activity;
pub mod disk;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod observer;
pub mod phases;
pub mod readiness;
pub mod signals;
pub mod snapshot;
pub mod usage;
pub mod views;

pub use disk::{BelowReserve, DiskReserve, FsSpace, Headroom};
pub use lifecycle::{Draining, InFlight, Lifecycle, Release};
pub use observer::Observer;
pub use phases::{JobPhases, Phase, PhaseTimings, SharedPhases};
pub use readiness::{BackendProbe, NotReady, Readiness};
pub use snapshot::{GcReport, Snapshot, StatusDocument};
pub use usage::{CompilerLabels, JobUsage};
pub use views::{CacheView, CachedToolchain, DiskView, Freed, LinkHealth, PoolView, SharedLinkHealth, WarmToolchain};
