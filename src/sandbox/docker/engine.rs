//! The only place kiln talks to the docker daemon: a thin layer over bollard that puts
//! a deadline on every call, labels everything it creates and names each failing call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    ListImagesOptions, RemoveContainerOptions, RemoveImageOptions, StartContainerOptions, UploadToContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::agent::AgentLink;
use super::error::DockerError;
use super::ptys::PtyInstances;

/// Deadline of every short Engine API call (create, start, upload, kill, list, ...):
/// a daemon that hangs turns into an error, never into a job that waits forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one image import (hundreds of MB through the daemon's untar).
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);
/// Deadline of a health check.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Label on every container and image kiln creates; its value tells kiln instances
/// (data directories) on one daemon apart.
pub const LABEL_OWNER: &str = "org.kiln.owner";
/// Label naming the toolchain (archive id) an image or container was made from.
pub const LABEL_TOOLCHAIN: &str = "org.kiln.toolchain";
/// Label with the pool epoch a container was started in, so the garbage collector
/// tells a container of a past epoch (lost with a daemon restart) from one being
/// started right now, whose id the pool does not know yet.
pub const LABEL_EPOCH: &str = "org.kiln.epoch";

/// Where kiln-init lives in every image; its process is the container's pid 1.
pub const HELPER_PATH: &str = "/kiln-init";

/// A connection to the daemon, cheap to clone (bollard shares one HTTP client).
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    owner: String,
    /// Whether the daemon's storage driver bounds a container's writable layer
    /// (`--storage-opt size`): learnt from the first container that asks.
    disk_quota: Arc<AtomicU8>,
    /// Each container's own devpts instance, for a daemon on this host (a unix
    /// socket); `None` for a remote one, whose bind sources are on its host.
    ptys: Option<Arc<Ptys>>,
}

/// The devpts instances of this kiln's containers, by container id.
#[derive(Debug)]
struct Ptys {
    instances: PtyInstances,
    by_container: std::sync::Mutex<HashMap<String, std::path::PathBuf>>,
    /// The daemon refused a bind over `/dev/pts` (it runs in another mount
    /// namespace, or a VM): containers get docker's own, unbounded one.
    refused: std::sync::atomic::AtomicBool,
}

/// What the daemon does with a container's disk quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskQuota {
    /// No container has asked yet.
    Unknown,
    /// The storage driver enforces it (overlay2 on xfs with `pquota`, btrfs with
    /// quotas enabled, zfs).
    Enforced,
    /// The driver refused it (overlay2 on ext4, btrfs without quotas): containers
    /// are created without one, as the operator allowed.
    Unsupported,
}

impl DiskQuota {
    fn from_u8(v: u8) -> DiskQuota {
        match v {
            1 => DiskQuota::Enforced,
            2 => DiskQuota::Unsupported,
            _ => DiskQuota::Unknown,
        }
    }
}

/// How a container of a toolchain is created.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub uid: u32,
    pub gid: u32,
    pub pids_limit: i64,
    pub memory_bytes: i64,
    /// Its writable layer's size (`kiln.jobs.max_disk_bytes`), where the storage
    /// driver can enforce one.
    pub disk_bytes: u64,
    /// Refuse to create containers without that quota
    /// (`kiln.sandbox.docker.require_disk_quota`).
    pub require_disk_quota: bool,
}

/// A labelled object found on the daemon.
#[derive(Debug)]
pub struct Labelled {
    pub id: String,
    /// Seconds since the epoch.
    pub created: i64,
    pub toolchain: Option<String>,
    /// Containers only: the pool epoch it was started in.
    pub epoch: Option<u64>,
}

async fn timed<T>(
    call: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, DockerError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(DockerError::Engine { call, source }),
        Err(_) => Err(DockerError::Timeout { call, timeout }),
    }
}

impl Engine {
    /// Connects and agrees on an API version with the daemon (so daemons from 20.10,
    /// API 1.41, to current ones work).
    pub async fn connect(host: &str, owner: String) -> Result<Engine, DockerError> {
        let connect_err = |source| DockerError::Connect { host: host.to_owned(), source };
        let docker = Docker::connect_with_host(host).map_err(connect_err)?.with_timeout(IMPORT_TIMEOUT);
        let docker = match tokio::time::timeout(PING_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(source)) => return Err(connect_err(source)),
            Err(_) => return Err(DockerError::Timeout { call: "version", timeout: PING_TIMEOUT }),
        };
        let ptys = host.starts_with("unix://").then(|| {
            Arc::new(Ptys {
                instances: PtyInstances::new(&owner),
                by_container: Default::default(),
                refused: Default::default(),
            })
        });
        Ok(Engine { docker, owner, disk_quota: Arc::default(), ptys })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// What the daemon did with the last container's disk quota.
    pub fn disk_quota(&self) -> DiskQuota {
        DiskQuota::from_u8(self.disk_quota.load(Ordering::Relaxed))
    }

    pub async fn ping(&self) -> Result<(), DockerError> {
        timed("ping", PING_TIMEOUT, self.docker.ping()).await.map(drop)
    }

    /// The image reference of a toolchain, unique per kiln instance.
    pub fn image_ref(&self, archive_id: &str) -> String {
        format!("kiln-{}:{archive_id}", self.owner)
    }

    /// Imports `tar` (a root file system) as the image of `archive_id`.
    pub async fn import_image(
        &self,
        archive_id: &str,
        tar: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<String, DockerError> {
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(format!("kiln-{}", self.owner)),
            tag: Some(archive_id.to_owned()),
            changes: vec![format!("LABEL {LABEL_OWNER}={} {LABEL_TOOLCHAIN}={archive_id}", self.owner)],
            ..Default::default()
        };
        let import = async {
            let mut progress = self.docker.create_image(Some(options), Some(bollard::body_try_stream(tar)), None);
            while let Some(item) = progress.next().await {
                item?;
            }
            Ok(())
        };
        timed("import image", IMPORT_TIMEOUT, import).await?;
        Ok(self.image_ref(archive_id))
    }

    pub async fn remove_image(&self, image: &str) -> Result<(), DockerError> {
        let options = RemoveImageOptions { force: true, ..Default::default() };
        timed("remove image", CALL_TIMEOUT, self.docker.remove_image(image, Some(options), None)).await.map(drop)
    }

    /// Creates and starts a locked-down container of `image`, attached to its agent's
    /// stdin and stdout before it starts; returns its id and the link.
    pub async fn start_container(
        &self,
        image: &str,
        archive_id: &str,
        epoch: u64,
        spec: &ContainerSpec,
    ) -> Result<(String, AgentLink), DockerError> {
        let labels = HashMap::from([
            (LABEL_OWNER.to_owned(), self.owner.clone()),
            (LABEL_TOOLCHAIN.to_owned(), archive_id.to_owned()),
            (LABEL_EPOCH.to_owned(), epoch.to_string()),
        ]);
        let host_config = HostConfig {
            // No network at all: a compile needs none, and a job must not reach the
            // host's network or the internet.
            network_mode: Some("none".into()),
            // Not even the default capabilities (CAP_CHOWN, CAP_KILL, ...): the job user
            // can only touch what it owns.
            cap_drop: Some(vec!["ALL".into()]),
            // setuid binaries cannot raise privileges (prctl(2) PR_SET_NO_NEW_PRIVS).
            // kiln's seccomp profile replaces Docker's default one: the same policy
            // as the overlay backend's filter (seccomp.rs); Docker 20.10's default
            // profile allows io_uring, AF_VSOCK and kernel AIO (issue 27, findings
            // 5, 8 and 9).
            security_opt: Some(vec!["no-new-privileges".into(), super::seccomp::security_opt().to_owned()]),
            // A fork bomb stops at the cgroup's pids.max (cgroup v2 pids controller).
            pids_limit: Some(spec.pids_limit),
            // Memory = MemorySwap: no swap on top, the OOM killer ends a runaway job.
            memory: Some(spec.memory_bytes),
            memory_swap: Some(spec.memory_bytes),
            // kiln-init is pid 1 and reaps on its own; docker-init would add nothing.
            init: Some(false),
            // A SysV IPC namespace of its own that no other container may join
            // ("shareable" would let one): shared memory a job leaves, which no process
            // owns, is charged to this container and freed with it.
            ipc_mode: Some("private".into()),
            // The root file system stays writable: a job's cwd may be a new top-level
            // directory (a client's /home or /work), which only an upload through the
            // Engine API can create, as root's (the job user cannot write to `/`),
            // and the daemon refuses uploads into a read-only rootfs. The toolchain is
            // owned by root and the job runs without capabilities as another user,
            // so it can write only into the directories it owns and /tmp.
            readonly_rootfs: Some(false),
            // The agent's stdout carries every job's outputs: no log driver keeps a
            // copy of them on the daemon's disk.
            log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
            // The writable layer (a job's files, /tmp, what the agent unpacks) is on
            // the daemon's disk: bounded per container where the driver can
            // (issue 27, finding 7); see `create_container`.
            storage_opt: Some(HashMap::from([("size".to_owned(), spec.disk_bytes.to_string())])),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec![HELPER_PATH.to_owned()]),
            user: Some(format!("{}:{}", spec.uid, spec.gid)),
            working_dir: Some("/".into()),
            env: Some(Vec::new()),
            // The agent's link to kiln: stdin stays open for the container's life
            // (no tty, so no detach keys scan the binary stream).
            open_stdin: Some(true),
            stdin_once: Some(false),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            network_disabled: Some(true),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let created = self.create_with_ptys(body, spec.require_disk_quota).await?;
        let attach = AttachContainerOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            stream: true,
            logs: false,
            ..Default::default()
        };
        let started = async {
            let attached =
                timed("attach container", CALL_TIMEOUT, self.docker.attach_container(&created.id, Some(attach)))
                    .await?;
            timed(
                "start container",
                CALL_TIMEOUT,
                self.docker.start_container(&created.id, None::<StartContainerOptions>),
            )
            .await?;
            Ok::<_, DockerError>(AgentLink::new(created.id.clone(), attached.input, attached.output))
        };
        match started.await {
            Ok(link) => Ok((created.id, link)),
            Err(e) => {
                let _ = self.remove_container(&created.id).await;
                Err(e)
            }
        }
    }

    /// Creates the container with a devpts instance of its own bound over its
    /// `/dev/pts` (see [`super::ptys`]), unless the daemon cannot bind one (it is
    /// not on this host's mount namespace): then with docker's own, and a warning.
    async fn create_with_ptys(
        &self,
        mut body: ContainerCreateBody,
        require_disk_quota: bool,
    ) -> Result<bollard::models::ContainerCreateResponse, DockerError> {
        let Some(ptys) = self.ptys.clone().filter(|p| !p.refused.load(Ordering::Relaxed)) else {
            return self.create_container(body, require_disk_quota).await;
        };
        let instances = ptys.clone();
        let mounted = tokio::task::spawn_blocking(move || instances.instances.mount()).await;
        let at = match mounted {
            Ok(Ok(at)) => at,
            Ok(Err(e)) => return Err(DockerError::Ptys(e)),
            Err(_) => return Err(DockerError::Ptys(std::io::Error::other("the mounting thread failed"))),
        };
        let bind = Mount {
            target: Some("/dev/pts".into()),
            source: Some(at.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        };
        let mut with_ptys = body.clone();
        if let Some(host) = with_ptys.host_config.as_mut() {
            host.mounts = Some(vec![bind]);
        }
        let refused = match self.create_container(with_ptys, require_disk_quota).await {
            Ok(created) => {
                crate::sync::lock(&ptys.by_container).insert(created.id.clone(), at);
                return Ok(created);
            }
            Err(e) => {
                unmount_blocking(at).await;
                e.refusal()?
            }
        };
        if let Some(host) = body.host_config.as_mut() {
            host.mounts = None;
        }
        let created = self.create_container(body, require_disk_quota).await?;
        // Created without the bind: the bind was the cause.
        if !ptys.refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(daemon_said = %refused,
                "the docker daemon cannot bind a devpts instance of kiln's over a container's /dev/pts (is it in \
                 another mount namespace, or a VM?): docker jobs may take every pseudo-terminal of the host");
        }
        Ok(created)
    }

    /// Creates the container with its disk quota, or, where the daemon's storage
    /// driver cannot enforce one and the operator allows it, without.
    async fn create_container(
        &self,
        mut body: ContainerCreateBody,
        require_disk_quota: bool,
    ) -> Result<bollard::models::ContainerCreateResponse, DockerError> {
        let create = |body| {
            timed("create container", CALL_TIMEOUT, self.docker.create_container(None::<CreateContainerOptions>, body))
        };
        let without_quota = |body: &mut ContainerCreateBody| {
            if let Some(host) = body.host_config.as_mut() {
                host.storage_opt = None;
            }
        };
        if self.disk_quota() == DiskQuota::Unsupported {
            without_quota(&mut body);
            return create(body).await;
        }
        let refused = match create(body.clone()).await {
            Ok(created) => {
                self.disk_quota.store(1, Ordering::Relaxed);
                return Ok(created);
            }
            // The daemon answered, and may have refused the quota: overlay2 on ext4
            // says "--storage-opt is supported only for overlay over xfs with
            // 'pquota' mount option", btrfs without quotas "Failed to limit qgroup".
            Err(e) => e.refusal()?,
        };
        if require_disk_quota {
            return Err(DockerError::NoDiskQuota { source: refused });
        }
        without_quota(&mut body);
        let created = create(body).await?;
        // The same container without the quota was created: the quota was the cause.
        if self.disk_quota.swap(2, Ordering::Relaxed) != 2 {
            tracing::warn!(
                daemon_said = %refused,
                "the docker daemon's storage driver cannot bound a container's disk: docker jobs run without a \
                 disk quota (kiln.jobs.max_disk_bytes) and can fill the daemon's data root; use overlay2 on xfs \
                 mounted with pquota, or btrfs with `btrfs quota enable`, or set \
                 kiln.sandbox.docker.require_disk_quota = true to refuse to run jobs instead"
            );
        }
        Ok(created)
    }

    /// Removes a container, killing it first if it runs, and its devpts instance.
    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        let removed = timed("remove container", CALL_TIMEOUT, self.docker.remove_container(id, Some(options))).await;
        // The container's own bind keeps the instance alive while it exists.
        let pts = self.ptys.as_ref().and_then(|ptys| crate::sync::lock(&ptys.by_container).remove(id));
        if let Some(at) = pts {
            unmount_blocking(at).await;
        }
        removed
    }

    /// Whether the container exists and runs.
    pub async fn is_running(&self, id: &str) -> Result<bool, DockerError> {
        let inspect = self.docker.inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>);
        match tokio::time::timeout(CALL_TIMEOUT, inspect).await {
            Ok(Ok(c)) => Ok(c.state.is_some_and(|s| {
                s.running == Some(true) && s.status == Some(bollard::models::ContainerStateStatusEnum::RUNNING)
            })),
            Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => Ok(false),
            Ok(Err(source)) => Err(DockerError::Engine { call: "inspect container", source }),
            Err(_) => Err(DockerError::Timeout { call: "inspect container", timeout: CALL_TIMEOUT }),
        }
    }

    /// The container's state (pid of its init on the host, whether it runs, whether
    /// the OOM killer killed any of its processes); `None` once it is removed.
    pub async fn state(&self, id: &str) -> Result<Option<bollard::models::ContainerState>, DockerError> {
        let inspect = self.docker.inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>);
        match tokio::time::timeout(CALL_TIMEOUT, inspect).await {
            Ok(Ok(c)) => Ok(c.state),
            Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => Ok(None),
            Ok(Err(source)) => Err(DockerError::Engine { call: "inspect container", source }),
            Err(_) => Err(DockerError::Timeout { call: "inspect container", timeout: CALL_TIMEOUT }),
        }
    }

    /// Sends `signal` to the container's pid 1 (kiln-init). Needs no new process.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptions { signal: signal.to_owned() };
        timed("kill container", CALL_TIMEOUT, self.docker.kill_container(id, Some(options))).await
    }

    /// Extracts the tar `archive` at `/` of the container (ownership as in the tar).
    pub async fn upload(&self, id: &str, archive: Bytes) -> Result<(), DockerError> {
        let options = UploadToContainerOptions { path: "/".into(), ..Default::default() };
        timed(
            "upload archive",
            CALL_TIMEOUT,
            self.docker.upload_to_container(id, Some(options), bollard::body_full(archive)),
        )
        .await
    }

    /// Containers carrying this instance's owner label, running or not.
    pub async fn list_containers(&self) -> Result<Vec<Labelled>, DockerError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_OWNER}={}", self.owner)])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let found = timed("list containers", CALL_TIMEOUT, self.docker.list_containers(Some(options))).await?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                let label = |key| c.labels.as_ref().and_then(|l| l.get(key).cloned());
                let (toolchain, epoch) = (label(LABEL_TOOLCHAIN), label(LABEL_EPOCH).and_then(|e| e.parse().ok()));
                Some(Labelled { id: c.id?, created: c.created.unwrap_or(0), toolchain, epoch })
            })
            .collect())
    }

    /// Images carrying this instance's owner label.
    pub async fn list_images(&self) -> Result<Vec<Labelled>, DockerError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_OWNER}={}", self.owner)])]);
        let options = ListImagesOptions { filters: Some(filters), ..Default::default() };
        let found = timed("list images", CALL_TIMEOUT, self.docker.list_images(Some(options))).await?;
        Ok(found
            .into_iter()
            .map(|i| Labelled {
                toolchain: i.labels.get(LABEL_TOOLCHAIN).cloned(),
                id: i.id,
                created: i.created,
                epoch: None,
            })
            .collect())
    }

    /// Removes every container and image of this instance (what a previous run left).
    pub async fn remove_everything(&self) -> Result<(usize, usize), DockerError> {
        let mut containers = 0;
        for c in self.list_containers().await? {
            match self.remove_container(&c.id).await {
                Ok(()) => containers += 1,
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %crate::report::ErrorChain(&e), "removing a stale container failed")
                }
            }
        }
        if let Some(ptys) = self.ptys.clone() {
            let swept = tokio::task::spawn_blocking(move || ptys.instances.sweep()).await.unwrap_or(0);
            if swept > 0 {
                tracing::info!(swept, "unmounted the devpts instances of the previous run's containers");
            }
        }
        let mut images = 0;
        for i in self.list_images().await? {
            match self.remove_image(&i.id).await {
                Ok(()) => images += 1,
                Err(e) => {
                    tracing::warn!(image = %i.id, error = %crate::report::ErrorChain(&e), "removing a stale image failed")
                }
            }
        }
        Ok((containers, images))
    }
}

/// Unmounts a container's devpts instance on the blocking pool.
async fn unmount_blocking(at: std::path::PathBuf) {
    let _ = tokio::task::spawn_blocking(move || PtyInstances::unmount(&at)).await;
}
