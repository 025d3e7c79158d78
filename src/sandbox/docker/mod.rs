//! The docker backend: each job runs in a warm, locked-down container of its
//! toolchain's image, through the Docker Engine API (bollard; never the `docker` CLI).
//!
//! No registry is involved: a toolchain's image is imported from its unpacked root
//! plus `kiln-init`, a static helper built by build.rs that is every container's
//! pid 1 and resets it between jobs. The [`ContainerPool`] actor keeps containers
//! warm per toolchain; a job takes one, uploads its inputs in one archive, execs the
//! command as an unprivileged user, downloads its outputs in one archive; the
//! cleaner resets the container off the request path and gives it back.
//!
//! [`ContainerPool`]: crate::actors::container_pool::ContainerPool

mod agent;
mod backend;
mod config;
mod engine;
mod error;
mod image;
mod job;
mod start;

pub use agent::AgentLink;
pub use backend::{Container, DockerBackend, Lease, UsedContainer};
pub use config::DockerConfig;
pub use engine::{ContainerSpec, Engine};
pub use error::DockerError;
pub use image::image_tar_stream;
pub use start::{check_daemon, owner_label, remove_objects_of, start_docker_backend};
