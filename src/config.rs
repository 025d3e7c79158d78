//! kiln's configuration: one typed struct, defaults built in, validated once at startup.
//!
//! A config file is upstream's `sccache-dist server` config, unchanged: the
//! top-level keys (`public_addr`, `bind_address`, `scheduler_url`, `cache_dir`,
//! `toolchain_cache_size`, `[builder]`, `[scheduler_auth]`) mean what they mean
//! there. kiln's own settings live in the `[kiln]` table, which upstream's file
//! never has. Every key is optional (`kiln serve` with no `--config` runs on
//! [`Config::default`]); an unknown key is an error naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::archive::ExtractLimits;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Deepest path (in components) accepted in a toolchain or inputs archive; real
/// trees stay far below, hostile ones are cut off before they cost anything.
const MAX_PATH_DEPTH: usize = 128;

/// The default operator port is the build-server port plus this.
pub const METRICS_PORT_OFFSET: u16 = 100;

/// The bearer token upstream's server sends with `scheduler_auth = DANGEROUSLY_INSECURE`.
pub const INSECURE_SERVER_TOKEN: &str = "dangerously_insecure_server";
/// The token upstream's client sends when its config names no `auth`, which a
/// scheduler with `client_auth = DANGEROUSLY_INSECURE` accepts.
pub const INSECURE_CLIENT_TOKEN: &str = "dangerously_insecure_client";

/// How a draining kiln leaves upstream's scheduler, which has no way to hear that a
/// server leaves: it fails a client's compile (the client compiles locally) for
/// every assign_job a server refuses, and sets that server aside for 300 s; it
/// forgets a server 90 s after its last heartbeat or job state report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainMode {
    /// Re-register with the scheduler afresh (a new nonce), with no jobs: it then
    /// places one last round of jobs here (`cpus + 1 + cpus/8`, what it gives this
    /// server at once); take and run those, report no more job states (a
    /// `Complete` would free a slot), and stop once they are done, or no job came
    /// for 5 s. No compile the scheduler placed here falls back to local.
    #[default]
    Handoff,
    /// Refuse assign_job at once: each refusal is one local compile.
    Refuse,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path:?}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where clients and the scheduler reach this server (upstream's server id).
    /// Its IP goes into the TLS certificate.
    pub public_addr: SocketAddr,
    /// Where to listen, if not `public_addr` (e.g. `0.0.0.0:10501` behind NAT).
    pub bind_address: Option<SocketAddr>,
    /// Upstream's scheduler. Unset: kiln answers the scheduler API itself
    /// (`[kiln.scheduler]`), for a farm of one.
    pub scheduler_url: Option<String>,
    /// How this server proves itself to `scheduler_url`; required with it.
    pub scheduler_auth: Option<SchedulerAuth>,
    /// Where toolchain archives are kept (default: `kiln.data_dir`).
    pub cache_dir: Option<PathBuf>,
    /// Bytes of compressed toolchain archives kept on disk (LRU beyond that).
    pub toolchain_cache_size: u64,
    /// The sandbox backend, as upstream names it.
    pub builder: BuilderConfig,
    pub kiln: KilnConfig,
}

/// Upstream's `[builder]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum BuilderConfig {
    /// overlayfs over the unpacked toolchain + bubblewrap.
    #[serde(rename = "overlay")]
    Overlay {
        /// Unpacked toolchains and sandboxes go here (default: `kiln.data_dir`).
        #[serde(default)]
        build_dir: Option<PathBuf>,
        /// bubblewrap binary; a bare name is looked up in PATH.
        #[serde(default = "default_bwrap_path")]
        bwrap_path: PathBuf,
    },
    /// A warm pool of Docker containers per toolchain.
    #[serde(rename = "docker")]
    Docker,
}

fn default_bwrap_path() -> PathBuf {
    PathBuf::from("bwrap")
}

impl Default for BuilderConfig {
    fn default() -> Self {
        BuilderConfig::Overlay { build_dir: None, bwrap_path: default_bwrap_path() }
    }
}

/// Upstream's `[scheduler_auth]` table: how the server authenticates to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum SchedulerAuth {
    #[serde(rename = "DANGEROUSLY_INSECURE")]
    Insecure,
    /// A shared token; sent as `"<public_addr> <token>"`.
    #[serde(rename = "token")]
    Token { token: String },
    /// A JWT made by `sccache-dist auth generate-jwt-hs256-server-token`; its
    /// `server_id` must be `public_addr`.
    #[serde(rename = "jwt_token")]
    JwtToken { token: String },
}

/// How clients authenticate to kiln's own scheduler API (upstream's scheduler
/// `client_auth`, the two kinds a farm of one needs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ClientAuth {
    /// Accepts the token an sccache client sends when its config names no `auth`.
    #[serde(rename = "DANGEROUSLY_INSECURE")]
    Insecure,
    #[serde(rename = "token")]
    Token { token: String },
}

/// kiln's own settings: the `[kiln]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KilnConfig {
    /// Root of everything kiln writes unless `cache_dir` / `builder.build_dir` say otherwise.
    pub data_dir: PathBuf,
    /// Jobs run at once. 0: as many as a scheduler places here at most, `cpus + 1 +
    /// cpus/8` (upstream's rule), so a CPU is never idle while a job waits on I/O;
    /// the scheduler is told the CPU count. N: N jobs, and the scheduler is told N.
    pub builders: usize,
    /// Hex of the 32-byte HS256 key that signs job tokens. Unset: a random key per
    /// start (what upstream does; the scheduler learns it from the heartbeat).
    pub job_token_key: Option<String>,
    /// Serve HTTPS with a self-signed certificate made at startup, as upstream does.
    /// The sccache client only speaks HTTPS to build servers: turn this off only
    /// behind a TLS-terminating proxy.
    pub tls: bool,
    /// Plain-HTTP address of the operator endpoints (`/metrics`, `/status`,
    /// `/healthz`, `/api/v1/kiln/status`, `POST /api/v1/kiln/gc`); they are also
    /// served on the build-server address. Unset: 127.0.0.1 on the build-server
    /// port + 100 (10601 for 10501), so kilns on one host with upstream's
    /// config files, which set only their own `public_addr`, each get their own.
    pub metrics_listen: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, jobs in flight get this long to finish before kiln exits.
    pub drain_timeout_secs: u64,
    /// What a draining kiln does with the jobs upstream's scheduler still sends.
    pub drain_mode: DrainMode,
    /// Log filter (`RUST_LOG` syntax) when `RUST_LOG` is unset; re-read on SIGHUP.
    pub log_level: String,
    pub toolchains: ToolchainConfig,
    pub jobs: JobConfig,
    pub sandbox: SandboxConfig,
    pub scheduler: LocalSchedulerConfig,
    pub disk_reserve: DiskReserveConfig,
}

/// The share of the data dir's file system (and the toolchain cache's) that
/// toolchain uploads and unpacks never write into: the larger of `percent` of its
/// size and the floors, for bytes and inodes alike. An upload or unpack that would
/// go below it is refused (503) and kiln keeps serving: the data dir is often the
/// host's root file system, which must keep room for everything else (issue 27).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskReserveConfig {
    /// Percent of the file system's bytes, and of its inodes, kept free.
    pub percent: u64,
    /// At least this many bytes kept free.
    pub min_free_bytes: u64,
    /// At least this many inodes kept free (file systems that count them).
    pub min_free_inodes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolchainConfig {
    /// Bytes of unpacked toolchain roots kept on disk (LRU beyond that).
    pub unpacked_bytes: u64,
    /// Inodes (files, directories, links) of unpacked roots kept on disk (LRU
    /// beyond that, like bytes): a root of empty files costs inodes, not bytes.
    pub unpacked_inodes: u64,
    /// Largest archive accepted in one upload.
    pub max_archive_bytes: u64,
    /// Largest unpacked size and entry count of one toolchain. Entries count
    /// every file, directory and link made, including parent directories the
    /// archive does not list.
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
    /// An upload must arrive completely within this time.
    pub upload_timeout_secs: u64,
    /// A store shared by a farm of kilns: a directory (NFS and the like) or an object
    /// store's URI (`s3://bucket/prefix?region=...`). Toolchains clients upload are
    /// published there, and a kiln fetches from it what it lacks instead of asking
    /// the client. Unset: no store.
    pub store: Option<crate::store::StoreLocation>,
    /// Bytes of archives the store may hold: after each publish, the kiln that
    /// published removes the least recently used beyond it (0: no bound). Any job
    /// token holder can make kiln publish an archive.
    pub store_max_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// Wall-clock limit of one compile; the whole sandbox is killed after it.
    pub timeout_secs: u64,
    /// Largest run_job request body (header plus compressed inputs).
    pub max_request_bytes: u64,
    /// run_job bodies stay in memory until their job ends: their sum is bounded by
    /// this, beyond which kiln answers 503 at once.
    pub max_buffered_request_bytes: u64,
    /// Largest unpacked inputs and entry count of one job.
    pub max_input_bytes: u64,
    pub max_input_entries: u64,
    /// Largest total size of the output files returned for one job.
    pub max_output_bytes: u64,
    /// stdout and stderr are each cut at this many bytes.
    pub max_stdio_bytes: u64,
    /// Overlay backend: address space of each process of a job (RLIMIT_AS), so
    /// one runaway allocation fails at once instead of filling the job's cgroup;
    /// 0 = unlimited. Docker uses `sandbox.docker.memory_bytes` instead.
    pub max_process_memory_bytes: u64,
    /// Overlay backend: memory of a whole job, swap included (its cgroup's limit).
    /// A job past it has processes killed, and the client is told so on stderr.
    pub max_memory_bytes: u64,
    /// Overlay backend: everything a job writes (its inputs, its outputs, its
    /// temporary files) lives in a tmpfs of this size, private to its sandbox: a
    /// job past it gets ENOSPC, and the data dir's disk is never the job's. The
    /// pages are memory charged to the job, so `max_memory_bytes` bounds them too
    /// (the tmpfs is never larger). At least `max_input_bytes`.
    pub max_disk_bytes: u64,
    /// Overlay backend: processes and threads of a whole job (its cgroup's
    /// `pids.max`): a fork bomb stops here, not at the host's limit.
    pub max_pids: u64,
    /// Overlay backend: CPUs one job may use at most (its cgroup's quota); 0 = no
    /// quota, and jobs then share the CPU as kiln's own processes do.
    pub max_cpus: u32,
    /// A request body must arrive completely within this time (slow clients).
    pub body_timeout_secs: u64,
    /// Jobs waiting for a free builder; beyond this kiln answers 503.
    pub queue_len: usize,
    /// Assigned jobs never run are forgotten after this.
    pub assigned_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Sandboxes kept prepared per toolchain, so a job does not wait for setup.
    pub warm_per_toolchain: usize,
    /// Consecutive machinery failures of one toolchain's jobs after which its root
    /// is unpacked afresh and, if that happens twice within `quarantine_secs`, the
    /// toolchain is quarantined (see [`crate::quarantine`]). 0 turns this off.
    pub quarantine_after: u32,
    /// How long a quarantined toolchain's jobs are refused (503).
    pub quarantine_secs: u64,
    /// Overlay backend: each sandbox's job runs as its own host uid and gid, taken
    /// in turn from `uid_base .. uid_base + uid_count`, never as root. No account
    /// on the host may use an id in this range (kiln warns at startup if one does);
    /// it is far above the ranges `/etc/subuid` usually hands out.
    pub uid_base: u32,
    pub uid_count: u32,
    /// Overlay backend: refuse to start when the host cannot give each job a
    /// cgroup with pids, memory and CPU limits. `false` runs jobs without those
    /// limits (kiln says so at startup and in `kiln check`): only for hosts where
    /// something else bounds them.
    pub require_cgroups: bool,
    /// `[kiln.sandbox.docker]`, used by the docker backend (`[builder] type = "docker"`).
    pub docker: crate::sandbox::docker::DockerConfig,
}

/// kiln's own scheduler API, served only when `scheduler_url` is unset.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalSchedulerConfig {
    /// Plain HTTP, like upstream's scheduler; loopback unless you mean otherwise.
    pub listen: SocketAddr,
    pub client_auth: ClientAuth,
    /// A placed job whose client starts neither its toolchain upload nor its
    /// run_job within this many seconds loses its slot. Upstream's scheduler
    /// waits 60 s (Ready) and 300 s (Pending); this one is also the server, so
    /// it knows at once that nothing is happening.
    pub unclaimed_secs: u64,
}

impl LocalSchedulerConfig {
    pub fn unclaimed(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.unclaimed_secs)
    }
}

/// The sandbox backend with its settings resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Overlay { bwrap_path: PathBuf },
    Docker,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            public_addr: SocketAddr::from(([127, 0, 0, 1], 10501)),
            bind_address: None,
            scheduler_url: None,
            scheduler_auth: None,
            cache_dir: None,
            toolchain_cache_size: 10 * GIB,
            builder: BuilderConfig::default(),
            kiln: KilnConfig::default(),
        }
    }
}

impl Default for KilnConfig {
    fn default() -> Self {
        KilnConfig {
            data_dir: PathBuf::from("/var/lib/kiln"),
            builders: 0,
            job_token_key: None,
            tls: true,
            metrics_listen: None,
            drain_timeout_secs: 60,
            drain_mode: DrainMode::default(),
            log_level: "info".to_owned(),
            toolchains: ToolchainConfig::default(),
            jobs: JobConfig::default(),
            sandbox: SandboxConfig::default(),
            scheduler: LocalSchedulerConfig::default(),
            disk_reserve: DiskReserveConfig::default(),
        }
    }
}

impl Default for DiskReserveConfig {
    fn default() -> Self {
        DiskReserveConfig { percent: 5, min_free_bytes: GIB, min_free_inodes: 10_000 }
    }
}

impl Default for ToolchainConfig {
    fn default() -> Self {
        ToolchainConfig {
            unpacked_bytes: 20 * GIB,
            // ext4's default of one inode per 16 KiB, applied to unpacked_bytes.
            unpacked_inodes: 1_000_000,
            max_archive_bytes: 4 * GIB,
            max_unpacked_bytes: 8 * GIB,
            // A whole gcc or clang installation is a few thousand files, a rustc
            // sysroot fewer (sccache packs only what the compiler loads): 100,000
            // leaves ample room and bounds one upload's inodes.
            max_entries: 100_000,
            upload_timeout_secs: 1800,
            store: None,
            store_max_bytes: 50 * GIB,
        }
    }
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            timeout_secs: 600,
            max_request_bytes: 512 * MIB,
            max_buffered_request_bytes: 2 * GIB,
            max_input_bytes: GIB,
            max_input_entries: 100_000,
            max_output_bytes: 512 * MIB,
            max_stdio_bytes: 16 * MIB,
            max_process_memory_bytes: 8 * GIB,
            max_memory_bytes: 8 * GIB,
            max_disk_bytes: 4 * GIB,
            max_pids: 1024,
            max_cpus: 0,
            body_timeout_secs: 120,
            queue_len: 1024,
            assigned_ttl_secs: 600,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            warm_per_toolchain: 2,
            quarantine_after: 3,
            quarantine_secs: 300,
            uid_base: 1_500_000_000,
            uid_count: 65_536,
            require_cgroups: true,
            docker: Default::default(),
        }
    }
}

impl Default for LocalSchedulerConfig {
    fn default() -> Self {
        LocalSchedulerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 10600)),
            client_auth: ClientAuth::Insecure,
            unclaimed_secs: 10,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot; called once at startup.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.to_owned() });
        let kiln = &self.kiln;
        for (key, dir) in [("kiln.data_dir", &kiln.data_dir), ("builder.build_dir", &self.build_dir())] {
            if !dir.is_absolute() {
                return invalid(key, "must be an absolute path");
            }
            // The path goes into overlayfs mount options, where these characters are separators.
            if dir.to_string_lossy().contains([',', ':', '\\']) {
                return invalid(key, "must not contain ',', ':' or '\\' (overlayfs option separators)");
            }
        }
        if self.cache_dir.as_ref().is_some_and(|dir| !dir.is_absolute()) {
            return invalid("cache_dir", "must be an absolute path");
        }
        if let Some(crate::store::StoreLocation::Directory(store)) = &kiln.toolchains.store {
            if !store.is_absolute() || !store.is_dir() {
                return invalid(
                    "kiln.toolchains.store",
                    "must be the absolute path of an existing directory (mount the farm's store first)",
                );
            }
        }
        if kiln.scheduler.unclaimed_secs == 0 {
            return invalid("kiln.scheduler.unclaimed_secs", "must be at least 1");
        }
        if let Some(url) = &self.scheduler_url {
            parse_scheduler_url(url)
                .map_err(|e| ConfigError::Invalid { key: "scheduler_url", reason: e.to_string() })?;
            match &self.scheduler_auth {
                None => return invalid("scheduler_auth", "is required with scheduler_url, as upstream requires it"),
                Some(SchedulerAuth::JwtToken { token }) => {
                    let server_id = crate::protocol::server_id_of_jwt(token).map_err(|e| ConfigError::Invalid {
                        key: "scheduler_auth.token",
                        reason: format!("is not a server JWT: {e}"),
                    })?;
                    if server_id != self.public_addr {
                        return invalid(
                            "scheduler_auth.token",
                            &format!("is for server {server_id}, not public_addr {}", self.public_addr),
                        );
                    }
                }
                Some(_) => {}
            }
        }
        if self.public_addr.ip().is_unspecified() {
            return invalid("public_addr", "must be an address clients can reach (use bind_address for 0.0.0.0)");
        }
        if let Some(key) = &kiln.job_token_key {
            if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return invalid("kiln.job_token_key", "must be 64 hex characters (32 bytes)");
            }
        }
        if kiln.toolchains.max_archive_bytes > self.toolchain_cache_size {
            return invalid("kiln.toolchains.max_archive_bytes", "must not exceed toolchain_cache_size");
        }
        if kiln.toolchains.max_entries == 0 || kiln.toolchains.unpacked_inodes <= kiln.toolchains.max_entries {
            return invalid(
                "kiln.toolchains.unpacked_inodes",
                "must exceed kiln.toolchains.max_entries (one toolchain must fit), which must not be 0",
            );
        }
        if kiln.disk_reserve.percent > 50 {
            return invalid("kiln.disk_reserve.percent", "must be at most 50");
        }
        let jobs = &kiln.jobs;
        if jobs.timeout_secs == 0 || jobs.body_timeout_secs == 0 || kiln.toolchains.upload_timeout_secs == 0 {
            return invalid("kiln.jobs.timeout_secs", "timeouts must be at least one second");
        }
        if jobs.max_buffered_request_bytes < jobs.max_request_bytes {
            return invalid("kiln.jobs.max_buffered_request_bytes", "must be at least kiln.jobs.max_request_bytes");
        }
        if jobs.max_buffered_request_bytes > u64::from(u32::MAX) * 1024 {
            return invalid("kiln.jobs.max_buffered_request_bytes", "must be below 4 TiB");
        }
        if let Err((key, reason)) = kiln.sandbox.docker.validate() {
            return invalid(key, reason);
        }
        let sandbox = &kiln.sandbox;
        if sandbox.uid_base == 0 || sandbox.uid_count == 0 {
            return invalid("kiln.sandbox.uid_base", "uid_base and uid_count must not be 0 (uid 0 is root)");
        }
        if u64::from(sandbox.uid_base) + u64::from(sandbox.uid_count) > u64::from(u32::MAX) {
            return invalid("kiln.sandbox.uid_count", "uid_base + uid_count must stay below 4294967295");
        }
        if jobs.max_pids == 0 || jobs.max_memory_bytes == 0 {
            return invalid("kiln.jobs.max_pids", "max_pids and max_memory_bytes must not be 0");
        }
        if jobs.max_disk_bytes < jobs.max_input_bytes {
            return invalid("kiln.jobs.max_disk_bytes", "must hold a job's inputs: at least max_input_bytes");
        }
        if jobs.queue_len == 0 {
            return invalid("kiln.jobs.queue_len", "must be at least 1");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&kiln.log_level) {
            return invalid("kiln.log_level", &format!("is not a log filter: {e}"));
        }
        Ok(())
    }

    /// The configured job token key, if any (its form was checked by `validate`).
    pub fn job_token_key_bytes(&self) -> Option<Vec<u8>> {
        let hex = self.kiln.job_token_key.as_ref()?;
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
    }

    pub fn builder_count(&self) -> usize {
        match self.kiln.builders {
            0 => scheduler_capacity(self.scheduler_cpus()),
            n => n,
        }
    }

    /// The `num_cpus` this server reports to its scheduler.
    pub fn scheduler_cpus(&self) -> usize {
        match self.kiln.builders {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Where the build-server API listens.
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind_address.unwrap_or(self.public_addr)
    }

    /// Where the operator endpoints listen: `kiln.metrics_listen`, else loopback
    /// on the build-server port + 100 (any free port when that is 0, as in tests).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.kiln.metrics_listen.unwrap_or_else(|| {
            let port = match self.bind_addr().port() {
                0 => 0,
                port => port.checked_add(METRICS_PORT_OFFSET).unwrap_or(0),
            };
            SocketAddr::from(([127, 0, 0, 1], port))
        })
    }

    /// The directories this config has kiln write to (each locked, one kiln per
    /// directory): the build dir and the toolchain cache's. `kiln.data_dir` only
    /// as the default of either, so two kilns with upstream's files that set
    /// their own `cache_dir` and `build_dir` share nothing.
    pub fn used_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.build_dir(), self.cache_base().to_owned()];
        dirs.dedup();
        dirs
    }

    pub fn backend(&self) -> Backend {
        match &self.builder {
            BuilderConfig::Overlay { bwrap_path, .. } => Backend::Overlay { bwrap_path: bwrap_path.clone() },
            BuilderConfig::Docker => Backend::Docker,
        }
    }

    /// Points the overlay backend at a resolved bubblewrap (the host check's answer).
    pub fn set_bwrap_path(&mut self, path: PathBuf) {
        if let BuilderConfig::Overlay { bwrap_path, .. } = &mut self.builder {
            *bwrap_path = path;
        }
    }

    /// Unpacked toolchains and sandboxes live under this.
    pub fn build_dir(&self) -> PathBuf {
        match &self.builder {
            BuilderConfig::Overlay { build_dir: Some(dir), .. } => dir.clone(),
            _ => self.kiln.data_dir.clone(),
        }
    }

    fn cache_base(&self) -> &Path {
        self.cache_dir.as_deref().unwrap_or(&self.kiln.data_dir)
    }

    pub fn archives_dir(&self) -> PathBuf {
        self.cache_base().join("toolchains")
    }

    /// Uploads are staged here: beside the archives, so adopting one is a rename.
    pub fn incoming_dir(&self) -> PathBuf {
        self.cache_base().join("incoming")
    }

    pub fn roots_dir(&self) -> PathBuf {
        self.build_dir().join("roots")
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.build_dir().join("sandboxes")
    }
}

impl Config {
    /// The scheduler clients should use: upstream's, or kiln's own.
    pub fn client_scheduler_url(&self) -> String {
        match &self.scheduler_url {
            Some(url) => parse_scheduler_url(url).unwrap_or_else(|_| url.clone()),
            None => format!("http://{}", self.kiln.scheduler.listen),
        }
    }

    /// The sccache client's config file (`SCCACHE_CONF`) for this server.
    pub fn client_config(&self) -> String {
        let url = self.client_scheduler_url();
        let auth = match (&self.scheduler_url, &self.kiln.scheduler.client_auth) {
            (Some(_), _) => {
                "# auth = { type = \"token\", token = \"<the scheduler's client_auth token>\" }\n".to_owned()
            }
            (None, ClientAuth::Insecure) => {
                "# No auth: kiln's scheduler accepts clients without a token (DANGEROUSLY_INSECURE).\n".to_owned()
            }
            (None, ClientAuth::Token { token }) => format!("auth = {{ type = \"token\", token = {token:?} }}\n"),
        };
        format!("# sccache client config for kiln; use it with SCCACHE_CONF=<this file>.\n[dist]\nscheduler_url = \"{url}\"\ntoolchains = []\n{auth}")
    }
}

/// Jobs upstream's scheduler places on a server of `cpus` CPUs at once.
pub fn scheduler_capacity(cpus: usize) -> usize {
    cpus + 1 + cpus / 8
}

/// Why a `scheduler_url` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerUrlError {
    #[error("https is not supported: upstream's scheduler serves plain HTTP; use http://")]
    Https,
    #[error("{0:?} is not an http:// URL")]
    NotHttp(String),
    #[error("{0:?} must be http://host:port with no path")]
    HasPath(String),
}

/// Checks a `scheduler_url`: plain `http://host:port`, as upstream's scheduler serves.
pub fn parse_scheduler_url(url: &str) -> Result<String, SchedulerUrlError> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => return Err(SchedulerUrlError::Https),
        _ => return Err(SchedulerUrlError::NotHttp(url.to_owned())),
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(SchedulerUrlError::HasPath(url.to_owned()));
    }
    Ok(format!("http://{authority}"))
}

impl ToolchainConfig {
    pub fn extract_limits(&self) -> ExtractLimits {
        ExtractLimits { max_entries: self.max_entries, max_bytes: self.max_unpacked_bytes, max_depth: MAX_PATH_DEPTH }
    }
}

impl DiskReserveConfig {
    pub fn reserve(&self) -> crate::observe::DiskReserve {
        crate::observe::DiskReserve {
            percent: self.percent,
            min_free_bytes: self.min_free_bytes,
            min_free_inodes: self.min_free_inodes,
        }
    }
}

impl SandboxConfig {
    /// The host ids overlay jobs run as (`uid_base`, `uid_count`).
    pub fn job_ids(&self) -> crate::sandbox::overlay::IdRange {
        crate::sandbox::overlay::IdRange { base: self.uid_base, count: self.uid_count }
    }
}

impl JobConfig {
    pub fn extract_limits(&self) -> ExtractLimits {
        ExtractLimits {
            max_entries: self.max_input_entries,
            max_bytes: self.max_input_bytes,
            max_depth: MAX_PATH_DEPTH,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// What each overlay job's cgroup enforces.
    pub fn cgroup_limits(&self) -> crate::sandbox::cgroup::CgroupLimits {
        crate::sandbox::cgroup::CgroupLimits {
            max_pids: self.max_pids,
            max_memory_bytes: self.max_memory_bytes,
            max_cpus: self.max_cpus,
        }
    }

    /// What each overlay job's sandbox enforces.
    pub fn sandbox_limits(&self) -> crate::sandbox::SandboxLimits {
        crate::sandbox::SandboxLimits {
            inputs: self.extract_limits(),
            max_output_bytes: self.max_output_bytes,
            max_stdio_bytes: self.max_stdio_bytes,
            max_process_memory_bytes: self.max_process_memory_bytes,
            max_memory_bytes: self.max_memory_bytes,
            max_disk_bytes: self.max_disk_bytes.min(self.max_memory_bytes),
            max_pids: self.max_pids,
        }
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }
}

impl KilnConfig {
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream sccache-dist server config, as its docs write one.
    const UPSTREAM_SERVER_TOML: &str = r#"
public_addr = "192.168.1.10:10501"
bind_address = "0.0.0.0:10501"
scheduler_url = "http://192.168.1.1:10600"
cache_dir = "/tmp/toolchains"
toolchain_cache_size = 10737418240

[builder]
type = "overlay"
build_dir = "/tmp/build"
bwrap_path = "/usr/bin/bwrap"

[scheduler_auth]
type = "token"
token = "my server's token"
"#;

    #[test]
    fn upstream_server_config_is_accepted_unchanged() {
        let c: Config = toml::from_str(UPSTREAM_SERVER_TOML).unwrap();
        c.validate().unwrap();
        assert_eq!(c.bind_addr(), "0.0.0.0:10501".parse().unwrap());
        assert_eq!(c.backend(), Backend::Overlay { bwrap_path: "/usr/bin/bwrap".into() });
        assert_eq!(c.roots_dir(), Path::new("/tmp/build/roots"));
        assert_eq!(c.archives_dir(), Path::new("/tmp/toolchains/toolchains"));
        assert_eq!(c.scheduler_auth, Some(SchedulerAuth::Token { token: "my server's token".into() }));
        let docker: Config = toml::from_str(&UPSTREAM_SERVER_TOML.replace(
            "type = \"overlay\"\nbuild_dir = \"/tmp/build\"\nbwrap_path = \"/usr/bin/bwrap\"",
            "type = \"docker\"",
        ))
        .unwrap();
        assert_eq!(docker.backend(), Backend::Docker);
        let insecure: Config = toml::from_str(
            &UPSTREAM_SERVER_TOML
                .replace("type = \"token\"\ntoken = \"my server's token\"", "type = \"DANGEROUSLY_INSECURE\""),
        )
        .unwrap();
        assert_eq!(insecure.scheduler_auth, Some(SchedulerAuth::Insecure));
        // The file the README and scripts/interop.sh hand to both servers.
        let example: Config = toml::from_str(include_str!("../examples/sccache/server.toml")).unwrap();
        example.validate().unwrap();
    }

    #[test]
    fn the_toolchain_store_is_a_directory_or_an_object_store() {
        use crate::store::StoreLocation;
        let store = |value: &str| toml::from_str::<Config>(&format!("[kiln.toolchains]\nstore = \"{value}\"\n"));
        let dir = std::env::temp_dir();
        let c = store(&dir.display().to_string()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.kiln.toolchains.store, Some(StoreLocation::Directory(dir)));
        let relative = store("shared/store").unwrap().validate().unwrap_err();
        assert!(relative.to_string().contains("kiln.toolchains.store"), "{relative}");

        let uri = "s3://bucket/kiln?region=eu-west-1&secret_access_key=hunter2";
        let c = store(uri).unwrap();
        c.validate().unwrap();
        let location = c.kiln.toolchains.store.unwrap();
        assert_eq!(location, StoreLocation::Object(uri.into()));
        // Shown (logs, status page) without the query, which may hold keys.
        assert_eq!(location.to_string(), "s3://bucket/kiln");
        let with_user = StoreLocation::Object("s3://key:secret@bucket/kiln?region=x".into());
        assert_eq!(with_user.to_string(), "s3://bucket/kiln");
        // Refused at start, with the reason.
        let unknown = store("ftp://host/dir").unwrap_err().to_string();
        assert!(unknown.contains("ftp"), "{unknown}");
        let no_bucket = store("s3://?region=eu-west-1").unwrap_err().to_string();
        assert!(no_bucket.contains("bucket"), "{no_bucket}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<Config>("public_addr = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = toml::from_str::<Config>("[kiln.jobs]\ntimeout = 3\n").unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        let err = toml::from_str::<Config>("[builder]\ntype = \"overlay\"\nbuild_dri = \"/x\"\n").unwrap_err();
        assert!(err.to_string().contains("build_dri"), "{err}");
        let err = toml::from_str::<Config>("[builder]\ntype = \"pot\"\n").unwrap_err();
        assert!(err.to_string().contains("pot"), "{err}");
    }

    #[test]
    fn partial_files_keep_defaults_and_validate() {
        let c: Config = toml::from_str("[kiln]\nbuilders = 3\n[kiln.jobs]\ntimeout_secs = 5\n").unwrap();
        assert_eq!(c.builder_count(), 3);
        assert_eq!(c.scheduler_cpus(), 3);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Config::default().builder_count(), cpus + 1 + cpus / 8);
        assert_eq!(Config::default().scheduler_cpus(), cpus);
        assert_eq!(c.kiln.jobs.timeout(), Duration::from_secs(5));
        assert_eq!(c.toolchain_cache_size, 10 * GIB);
        assert_eq!(c.archives_dir(), Path::new("/var/lib/kiln/toolchains"));
        assert_eq!(c.sandboxes_dir(), Path::new("/var/lib/kiln/sandboxes"));
        assert!(c.kiln.tls);
        c.validate().unwrap();
        let keyed: Config = toml::from_str(&format!("[kiln]\njob_token_key = \"{}\"", "0f".repeat(32))).unwrap();
        keyed.validate().unwrap();
        assert_eq!(keyed.job_token_key_bytes(), Some(vec![0x0f; 32]));
        let bad: Config = toml::from_str("[kiln]\ndata_dir = \"/a,b\"").unwrap();
        assert!(bad.validate().is_err());
        Config::default().validate().unwrap();
    }

    /// The README's configuration reference is a config file with the defaults.
    #[test]
    fn readme_reference_is_the_defaults() {
        let readme = include_str!("../README.md");
        let section = &readme[readme.find("## Configuration").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let documented: Config = toml::from_str(block).unwrap();
        documented.validate().unwrap();
        let default = Config::default();
        assert_eq!(format!("{documented:?}"), format!("{default:?}"));
    }

    /// examples/kiln.toml sets every key, each commented, and must load as is.
    #[test]
    fn example_config_parses() {
        let example: Config = toml::from_str(include_str!("../examples/kiln.toml")).unwrap();
        example.validate().unwrap();
        assert_eq!(example.kiln.drain_timeout_secs, 60);
        let bad: Config = toml::from_str("[kiln]\nlog_level = \"kiln=loud\"").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("log_level"));
    }

    #[test]
    fn client_config_points_at_the_scheduler() {
        let local = Config::default().client_config();
        let parsed: toml::Value = toml::from_str(&local).unwrap();
        assert_eq!(parsed["dist"]["scheduler_url"].as_str(), Some("http://127.0.0.1:10600"));
        assert!(parsed["dist"].get("auth").is_none());
        let token: Config = toml::from_str("[kiln.scheduler.client_auth]\ntype = \"token\"\ntoken = \"s3\"").unwrap();
        let parsed: toml::Value = toml::from_str(&token.client_config()).unwrap();
        assert_eq!(parsed["dist"]["auth"]["token"].as_str(), Some("s3"));
        let upstream: Config = toml::from_str(UPSTREAM_SERVER_TOML).unwrap();
        assert!(upstream.client_config().contains("http://192.168.1.1:10600"));
    }

    #[test]
    fn scheduler_link_settings_are_checked() {
        let no_auth: Config = toml::from_str("scheduler_url = \"http://10.0.0.1:10600\"").unwrap();
        assert!(no_auth.validate().unwrap_err().to_string().contains("scheduler_auth"));
        assert_eq!(parse_scheduler_url("http://10.0.0.1:10600/").unwrap(), "http://10.0.0.1:10600");
        assert_eq!(parse_scheduler_url("https://10.0.0.1:10600"), Err(SchedulerUrlError::Https));
        assert!(parse_scheduler_url("http://10.0.0.1:10600/api").is_err());
        assert!(parse_scheduler_url("10.0.0.1:10600").is_err());
        let unspecified: Config = toml::from_str("public_addr = \"0.0.0.0:10501\"").unwrap();
        assert!(unspecified.validate().is_err());
    }
}
