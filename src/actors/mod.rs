//! The actors kiln is built from; `actors.md` at the repository root shows how they
//! talk and who owns which state.
//!
//! None of them blocks its thread: file system work goes to tokio's blocking pool,
//! sandboxes run on their own threads (see [`crate::sandbox`]).

pub mod builder;
pub mod cleaner;
pub mod container_pool;
pub mod job_queue;
pub mod sandbox_pool;
pub mod toolchain_cache;
pub mod unpacker;
pub mod upstream_scheduler;

pub use builder::{Builder, JobError, JobRequest};
pub use cleaner::{CleanLeftovers, Cleaner, SweepStale};
pub use container_pool::{ContainerPool, TakeContainer};
pub use job_queue::{JobQueue, QueueFull, SubmitJob};
pub use sandbox_pool::{AcquireSandbox, DescribePool, DiscardIdle, DiscardWarm, SandboxPool};
pub use toolchain_cache::{
    ArchiveLease, CacheError, CheckoutToolchain, DescribeCache, DiscardToolchain, HasToolchain, StoreToolchain,
    ToolchainCache, TrimCache,
};
pub use unpacker::{DescribeRoots, EvictIdleRoots, ForgetRoot, UnpackFailed, UnpackToolchain, Unpacker};
pub use upstream_scheduler::{ReportJobState, UpstreamScheduler};
