//! `[kiln.sandbox.docker]`: how the docker backend reaches the daemon and bounds its containers.

use serde::Deserialize;

/// Settings of the docker backend; only read with `[builder] type = "docker"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Engine API address (`unix:///path` or `tcp://host:port`). Unset: `DOCKER_HOST`,
    /// else `unix:///var/run/docker.sock`.
    pub host: Option<String>,
    /// uid and gid every job (and the container's own helper) runs as. Never 0: a job
    /// must not own the toolchain it runs from, and the cleaner relies on "what this
    /// uid owns is what jobs wrote".
    pub job_uid: u32,
    pub job_gid: u32,
    /// Processes and threads of one container (`PidsLimit`): a fork bomb stops here.
    pub pids_limit: i64,
    /// Memory of one container in bytes, swap included (`Memory` = `MemorySwap`).
    pub memory_bytes: i64,
    /// Started, idle containers kept per toolchain in use.
    pub min_idle: usize,
    /// Containers of one toolchain, idle or busy.
    pub max_per_toolchain: usize,
    /// Containers of all toolchains together; idle ones of the least recently used
    /// toolchain make room for a toolchain that needs one.
    pub max_containers: usize,
    /// Refuse to run jobs when the daemon's storage driver cannot bound a
    /// container's disk to `kiln.jobs.max_disk_bytes` (overlay2 on ext4 cannot);
    /// otherwise such containers run without a quota, and kiln warns once.
    pub require_disk_quota: bool,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            job_uid: 65534,
            job_gid: 65534,
            pids_limit: 256,
            memory_bytes: 2 << 30,
            min_idle: 1,
            max_per_toolchain: 8,
            max_containers: 32,
            require_disk_quota: false,
        }
    }
}

impl DockerConfig {
    /// The Engine API address to use.
    pub fn host(&self) -> String {
        self.host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
    }

    /// Checks what serde cannot; an `Err` names the key and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.job_uid == 0 || self.job_gid == 0 {
            return Err(("kiln.sandbox.docker.job_uid", "jobs must not run as root (uid and gid must not be 0)"));
        }
        if self.pids_limit < 16 {
            return Err(("kiln.sandbox.docker.pids_limit", "must be at least 16"));
        }
        if self.memory_bytes < 64 << 20 {
            return Err(("kiln.sandbox.docker.memory_bytes", "must be at least 64 MiB"));
        }
        if self.max_per_toolchain == 0 || self.max_containers == 0 {
            return Err(("kiln.sandbox.docker.max_per_toolchain", "container caps must be at least 1"));
        }
        if self.min_idle > self.max_per_toolchain {
            return Err(("kiln.sandbox.docker.min_idle", "must not exceed max_per_toolchain"));
        }
        Ok(())
    }
}
