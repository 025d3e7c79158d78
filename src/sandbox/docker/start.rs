//! Bringing the docker backend up: connect, remove what a previous run left, start
//! the pool.

use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;

use super::backend::DockerBackend;
use super::config::DockerConfig;
use super::engine::{ContainerSpec, Engine};
use super::error::DockerError;
use super::pool::{ContainerPool, PoolLimits};
use crate::report::ErrorChain;
use crate::sandbox::{SandboxLimits, SharedBackend};
use crate::stats::Stats;

/// The `org.kiln.owner` label value of the kiln using `data_dir`: two kilns on one
/// daemon never remove each other's containers and images.
pub fn owner_label(data_dir: &Path) -> String {
    let hash = blake3::hash(data_dir.as_os_str().as_encoded_bytes()).to_hex();
    hash[..16].to_owned()
}

/// Connects, removes the containers and images a previous run over `data_dir` left
/// (by label) and starts the [`ContainerPool`]. A daemon that does not answer is not
/// fatal here: the pool keeps trying and refuses jobs meanwhile.
pub async fn start_docker_backend(
    config: &DockerConfig,
    data_dir: &Path,
    limits: SandboxLimits,
    stats: Arc<Stats>,
) -> SharedBackend {
    let host = config.host();
    let owner = owner_label(data_dir);
    let engine = match Engine::connect(&host, owner.clone()).await {
        Ok(engine) => {
            match engine.remove_everything().await {
                Ok((containers, images)) => {
                    tracing::info!(%host, %owner, containers, images, "removed docker objects of the previous run")
                }
                Err(e) => tracing::warn!(error = %ErrorChain(&e), "removing docker objects of the previous run failed"),
            }
            Some(engine)
        }
        Err(e) => {
            tracing::error!(%host, error = %ErrorChain(&e), "the docker daemon is unreachable; retrying");
            None
        }
    };
    let spec = ContainerSpec {
        uid: config.job_uid,
        gid: config.job_gid,
        pids_limit: config.pids_limit,
        memory_bytes: config.memory_bytes,
        disk_bytes: limits.max_disk_bytes,
        require_disk_quota: config.require_disk_quota,
    };
    let pool_limits = PoolLimits {
        min_idle: config.min_idle,
        max_per_toolchain: config.max_per_toolchain,
        max_containers: config.max_containers,
    };
    let pool = ContainerPool::new(engine, host, owner, spec, pool_limits, stats).start();
    Arc::new(DockerBackend::new(pool, limits))
}

/// Startup check: the daemon answers at the configured address. Returns its host.
///
/// Blocking; runs its own runtime on a thread of its own, so it may be called from
/// anywhere (also from inside a runtime, as tests do).
pub fn check_daemon(config: &DockerConfig) -> Result<String, DockerError> {
    let host = config.host();
    let checked = host.clone();
    on_own_runtime(move || async move { Engine::connect(&checked, String::new()).await?.ping().await })?;
    Ok(host)
}

/// Removes every container and image of the kiln that used `data_dir` (blocking;
/// for tests and tools: a running kiln does this itself at start).
pub fn remove_objects_of(host: &str, data_dir: &Path) -> Result<(usize, usize), DockerError> {
    let (host, owner) = (host.to_owned(), owner_label(data_dir));
    on_own_runtime(move || async move { Engine::connect(&host, owner).await?.remove_everything().await })
}

/// Runs `work` to its end on a current-thread runtime of a thread of its own.
fn on_own_runtime<T, F>(work: impl FnOnce() -> F + Send + 'static) -> Result<T, DockerError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, DockerError>>,
{
    let run = move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DockerError::Runtime)?;
        runtime.block_on(work())
    };
    std::thread::spawn(run).join().map_err(|_| DockerError::CheckPanicked)?
}
