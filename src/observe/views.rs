//! Point-in-time views of the actors' state, as they answer the `Describe*`
//! messages; served by `/metrics`, `/status` and the JSON status.

use serde::{Deserialize, Serialize};

use super::disk::FsSpace;
use crate::lru::Lru;

/// One archive or unpacked root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedToolchain {
    pub archive_id: String,
    pub bytes: u64,
    /// Files, directories and links (an archive: 1).
    #[serde(default)]
    pub inodes: u64,
    /// A job or a sandbox holds it (it cannot be evicted now).
    pub in_use: bool,
}

/// A bounded store of toolchains (the archive cache, or the unpacked roots).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheView {
    pub budget_bytes: u64,
    pub used_bytes: u64,
    #[serde(default)]
    pub used_inodes: u64,
    /// Unset when only bytes are bounded (the archive cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_inodes: Option<u64>,
    /// Most recently used first.
    pub toolchains: Vec<CachedToolchain>,
    /// Toolchains being unpacked now (roots only).
    #[serde(default)]
    pub in_progress: Vec<String>,
    /// The file system the store is on and its reserve (roots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskView>,
}

/// A file system's free space and the share of it kiln keeps free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskView {
    #[serde(flatten)]
    pub space: FsSpace,
    pub reserved_bytes: u64,
    pub reserved_inodes: u64,
}

impl CacheView {
    pub fn of(index: &Lru) -> Self {
        let (budget, used) = (index.budget(), index.used());
        CacheView {
            budget_bytes: budget.bytes,
            used_bytes: used.bytes,
            used_inodes: used.inodes,
            budget_inodes: (budget.inodes != u64::MAX).then_some(budget.inodes),
            toolchains: index
                .entries()
                .into_iter()
                .map(|e| CachedToolchain {
                    archive_id: e.id,
                    bytes: e.cost.bytes,
                    inodes: e.cost.inodes,
                    in_use: e.in_use,
                })
                .collect(),
            in_progress: Vec::new(),
            disk: None,
        }
    }
}

/// The sandboxes a pool keeps prepared for one toolchain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmToolchain {
    pub archive_id: String,
    pub idle: usize,
    pub preparing: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolView {
    pub backend: String,
    pub warm_per_toolchain: usize,
    pub max_idle: usize,
    pub toolchains: Vec<WarmToolchain>,
}

/// `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (n as f64, 0);
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// What one garbage collection step freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freed {
    pub items: u64,
    pub bytes: u64,
}

/// What the status shows about the link to upstream's scheduler; the link
/// (`scheduler::UpstreamScheduler`) writes it, the operator endpoints read it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LinkHealth {
    pub scheduler_url: String,
    /// The last heartbeat was answered.
    pub connected: bool,
    /// Seconds since the epoch of the last answered heartbeat.
    pub last_heartbeat_at: Option<u64>,
    pub heartbeats_failed: u64,
    pub last_error: Option<String>,
    pub states_reported: u64,
    pub states_failed: u64,
}

pub type SharedLinkHealth = std::sync::Arc<std::sync::Mutex<LinkHealth>>;
