//! Bringing the docker backend up: connect, remove what a previous run left, start
//! the pool.

use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;

use super::backend::DockerBackend;
use super::config::DockerConfig;
use super::engine::{ContainerSpec, Engine};
use crate::actors::container_pool::{ContainerPool, PoolLimits};
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
pub fn check_daemon(config: &DockerConfig) -> Result<String, String> {
    let host = config.host();
    let checked = host.clone();
    std::thread::spawn(move || ping_daemon(&checked)).join().map_err(|_| "the docker check panicked".to_owned())??;
    Ok(host)
}

/// Removes every container and image of the kiln that used `data_dir` (blocking;
/// for tests and tools: a running kiln does this itself at start).
pub fn remove_objects_of(host: &str, data_dir: &Path) -> Result<(usize, usize), String> {
    let (host, owner) = (host.to_owned(), owner_label(data_dir));
    let remove = move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let engine = Engine::connect(&host, owner).await.map_err(|e| ErrorChain(&e).to_string())?;
            engine.remove_everything().await.map_err(|e| ErrorChain(&e).to_string())
        })
    };
    std::thread::spawn(remove).join().map_err(|_| "the removal panicked".to_owned())?
}

fn ping_daemon(host: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime to reach the docker daemon: {e}"))?;
    runtime.block_on(async {
        let engine = Engine::connect(host, String::new()).await.map_err(|e| ErrorChain(&e).to_string())?;
        engine.ping().await.map_err(|e| ErrorChain(&e).to_string())
    })
}
