//! kiln's configuration: one typed struct, defaults built in, validated once at startup.
//!
//! `kiln serve` with no `--config` runs on [`Config::default`]. A config file only
//! needs the keys it changes; an unknown key is an error naming it.

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
    /// Address the build-server API listens on.
    pub listen: SocketAddr,
    /// Root of everything kiln writes: toolchain archives, unpacked roots, sandboxes.
    pub data_dir: PathBuf,
    /// Jobs run at once; 0 means one per CPU.
    pub builders: usize,
    /// Hex of the 32-byte HS256 key that signs job tokens. Unset: a random key per
    /// start (what upstream does; the scheduler learns it from the heartbeat).
    pub job_token_key: Option<String>,
    pub toolchains: ToolchainConfig,
    pub jobs: JobConfig,
    pub sandbox: SandboxConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolchainConfig {
    /// Bytes of compressed archives kept on disk (LRU beyond that).
    pub cache_bytes: u64,
    /// Bytes of unpacked toolchain roots kept on disk (LRU beyond that).
    pub unpacked_bytes: u64,
    /// Largest archive accepted in one upload.
    pub max_archive_bytes: u64,
    /// Largest unpacked size and entry count of one toolchain.
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
    /// An upload must arrive completely within this time.
    pub upload_timeout_secs: u64,
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
    /// `overlay` (overlayfs + bubblewrap) or `docker` (containers through the Engine API).
    pub backend: Backend,
    /// bubblewrap binary (a bare name is looked up in PATH).
    pub bwrap_path: PathBuf,
    /// Sandboxes kept prepared per toolchain, so a job does not wait for setup.
    pub warm_per_toolchain: usize,
    /// `[sandbox.docker]`, used by the docker backend.
    pub docker: crate::sandbox::docker::DockerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Overlay,
    Docker,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 10501)),
            data_dir: PathBuf::from("/var/lib/kiln"),
            builders: 0,
            job_token_key: None,
            toolchains: ToolchainConfig::default(),
            jobs: JobConfig::default(),
            sandbox: SandboxConfig::default(),
        }
    }
}

impl Default for ToolchainConfig {
    fn default() -> Self {
        ToolchainConfig {
            cache_bytes: 10 * GIB,
            unpacked_bytes: 20 * GIB,
            max_archive_bytes: 4 * GIB,
            max_unpacked_bytes: 8 * GIB,
            max_entries: 500_000,
            upload_timeout_secs: 1800,
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
            body_timeout_secs: 120,
            queue_len: 1024,
            assigned_ttl_secs: 600,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            backend: Backend::Overlay,
            bwrap_path: PathBuf::from("bwrap"),
            warm_per_toolchain: 2,
            docker: Default::default(),
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
        let data_dir = self.data_dir.to_string_lossy();
        if !self.data_dir.is_absolute() {
            return invalid("data_dir", "must be an absolute path");
        }
        // The path goes into overlayfs mount options, where these characters are separators.
        if data_dir.contains([',', ':', '\\']) {
            return invalid("data_dir", "must not contain ',', ':' or '\\' (overlayfs option separators)");
        }
        if let Some(key) = &self.job_token_key {
            if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return invalid("job_token_key", "must be 64 hex characters (32 bytes)");
            }
        }
        if self.toolchains.max_archive_bytes > self.toolchains.cache_bytes {
            return invalid("toolchains.max_archive_bytes", "must not exceed toolchains.cache_bytes");
        }
        if self.jobs.timeout_secs == 0 || self.jobs.body_timeout_secs == 0 || self.toolchains.upload_timeout_secs == 0 {
            return invalid("jobs.timeout_secs", "timeouts must be at least one second");
        }
        if self.jobs.max_buffered_request_bytes < self.jobs.max_request_bytes {
            return invalid("jobs.max_buffered_request_bytes", "must be at least jobs.max_request_bytes");
        }
        if self.jobs.max_buffered_request_bytes > u64::from(u32::MAX) * 1024 {
            return invalid("jobs.max_buffered_request_bytes", "must be below 4 TiB");
        }
        if let Err((key, reason)) = self.sandbox.docker.validate() {
            return invalid(key, reason);
        }
        if self.jobs.queue_len == 0 {
            return invalid("jobs.queue_len", "must be at least 1");
        }
        Ok(())
    }

    /// The configured job token key, if any (its form was checked by `validate`).
    pub fn job_token_key_bytes(&self) -> Option<Vec<u8>> {
        let hex = self.job_token_key.as_ref()?;
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
    }

    pub fn builder_count(&self) -> usize {
        match self.builders {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn archives_dir(&self) -> PathBuf {
        self.data_dir.join("toolchains")
    }

    pub fn roots_dir(&self) -> PathBuf {
        self.data_dir.join("roots")
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.data_dir.join("sandboxes")
    }

    pub fn incoming_dir(&self) -> PathBuf {
        self.data_dir.join("incoming")
    }
}

impl ToolchainConfig {
    pub fn extract_limits(&self) -> ExtractLimits {
        ExtractLimits { max_entries: self.max_entries, max_bytes: self.max_unpacked_bytes, max_depth: MAX_PATH_DEPTH }
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

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<Config>("listen = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = toml::from_str::<Config>("[jobs]\ntimeout = 3\n").unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
    }

    #[test]
    fn partial_files_keep_defaults_and_validate() {
        let c: Config = toml::from_str("builders = 3\n[jobs]\ntimeout_secs = 5\n").unwrap();
        assert_eq!(c.builder_count(), 3);
        assert_eq!(c.jobs.timeout(), Duration::from_secs(5));
        assert_eq!(c.toolchains.cache_bytes, 10 * GIB);
        c.validate().unwrap();
        let keyed: Config = toml::from_str(&format!("job_token_key = \"{}\"", "0f".repeat(32))).unwrap();
        keyed.validate().unwrap();
        assert_eq!(keyed.job_token_key_bytes(), Some(vec![0x0f; 32]));
        let bad: Config = toml::from_str("data_dir = \"/a,b\"").unwrap();
        assert!(bad.validate().is_err());
    }
}
