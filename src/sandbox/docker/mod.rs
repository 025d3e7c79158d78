//! The docker backend: each job runs in a warm, locked-down container of its
//! toolchain's image, through the Docker Engine API (bollard; never the `docker` CLI).
//!
//! No registry is involved: a toolchain's image is imported from its unpacked root
//! plus `kiln-init`, a static helper built by build.rs that is every container's
//! pid 1 and kiln's agent in it. kiln attaches the container's stdin and stdout once,
//! when it creates it; the [`ContainerPool`] actor keeps containers warm per
//! toolchain; a job takes one and is one request and one reply on that stream (the
//! inputs laid out, the command run as an unprivileged user, the outputs read back,
//! all by the agent); the cleaner has the agent reset the container off the request
//! path and gives it back.
//!
//! [`ContainerPool`]: pool::ContainerPool

mod agent;
mod backend;
mod config;
mod engine;
mod error;
mod image;
mod job;
pub mod pool;
mod ptys;
mod seccomp;
mod start;

pub use agent::AgentLink;
pub use backend::{Container, DockerBackend, Lease, UsedContainer};
pub use config::DockerConfig;
pub use engine::{ContainerSpec, Engine};
pub use error::DockerError;
pub use image::image_tar_stream;
pub use start::{check_daemon, owner_label, remove_objects_of, start_docker_backend};
