//! Counters every actor bumps and the status endpoint reports.
//!
//! Plain atomics rather than an actor: they are written on hot paths from many
//! threads and only ever read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A point-in-time copy of [`Stats`].
        #[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
        pub struct StatsSnapshot { $(pub $name: u64,)* }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Jobs that ran to an exit code (any code).
    jobs_completed,
    /// Jobs answered with an error.
    jobs_failed,
    /// Jobs refused because the queue was full.
    jobs_rejected,
    /// Toolchain archives accepted into the cache.
    toolchains_stored,
    /// assign_job found the toolchain cached, or had to ask the client for it.
    toolchain_cache_hits,
    toolchain_cache_misses,
    /// Toolchain archives evicted from the cache.
    toolchains_evicted,
    /// Toolchain archives a client uploaded (and kiln stored).
    toolchain_uploads,
    /// assign_jobs told their toolchain was already on its way (another job's
    /// upload, or a fetch from the store), so their clients did not send it too;
    /// and arrivals that failed, failing the jobs that waited for them.
    toolchain_arrival_waits,
    toolchain_arrivals_failed,
    /// Shared toolchain store: assign_jobs it spared an upload (hits), archives
    /// published to it, fetched from it (and their bytes), and lookups, publishes or
    /// fetches that failed.
    toolchain_store_hits,
    toolchain_store_publishes,
    toolchain_store_fetches,
    toolchain_store_fetched_bytes,
    toolchain_store_failures,
    /// Toolchain unpacks started (one per toolchain while it stays unpacked).
    unpacks,
    /// Unpacked toolchain roots evicted.
    roots_evicted,
    /// Uploads and unpacks refused because they would eat into the data dir's
    /// free-space or free-inode reserve (`kiln.disk_reserve`).
    disk_reserve_refusals,
    /// Sandboxes prepared, and those handed out already prepared.
    sandboxes_prepared,
    sandboxes_warm_hits,
    /// Sandboxes handed to jobs (warm or prepared on the spot).
    sandbox_acquires,
    /// Sandbox directories removed by the cleaner, and removals that failed.
    sandboxes_cleaned,
    cleanup_failures,
    /// Builders restarted by their supervisor.
    builder_restarts,
    /// Unpacked roots forgotten after repeated machinery failures of their jobs
    /// (re-unpacked by the next job), and toolchains put in quarantine.
    toolchain_reunpacks,
    toolchains_quarantined,
    /// Docker backend: toolchain images imported, and removed (forgotten or orphaned).
    images_created,
    images_removed,
    /// Docker backend: containers started, handed to a job after an earlier job
    /// (reset in between), and removed.
    containers_created,
    containers_reused,
    containers_destroyed,
    /// Docker backend, a gauge: 1 while the daemon does not answer, else 0.
    docker_unreachable,
    /// Shared toolchain store, a gauge: bytes of archives it held at the last
    /// publish of this kiln (when it checked the budget); and archives this kiln
    /// removed from it to keep it within `store_max_bytes`.
    toolchain_store_bytes,
    toolchain_store_evictions,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
