//! kiln: a build pool server speaking the sccache-dist build-server protocol.
//!
//! A client (sccache) assigns a job, submits the compiler toolchain once, then runs
//! jobs: kiln unpacks the toolchain once into a read-only root, runs each job's
//! command in a sandbox over it and returns exit code, stdout, stderr and outputs.
//!
//! # Layout
//! - [`protocol`]: the wire types, the bincode codec (the only user of bincode) and
//!   job tokens. Knows nothing of sandboxes.
//! - [`http`]: the actix-web facade; turns requests into messages.
//! - [`actors`]: ToolchainCache, Unpacker, SandboxPool, JobQueue, Builder (supervised),
//!   Cleaner, and ContainerPool for the docker backend. `actors.md` shows how they talk.
//! - [`scheduler`]: where job states go: kiln's own scheduler ([`scheduler::LocalScheduler`])
//!   or the link to upstream's ([`scheduler::UpstreamScheduler`], an actor); [`jobs`]:
//!   a job's request, result and failure kind, and the table of jobs placed here.
//! - [`sandbox`]: the [`sandbox::SandboxBackend`] trait, the overlay backend
//!   (overlayfs + bubblewrap) and the docker backend (containers through bollard).
//! - [`archive`]: hostile-input-safe tar extraction and in-root path resolution.
//! - [`server`]: assembles everything; [`config`]: the typed configuration
//!   ([`config_overrides`]: `kiln serve --set KEY=VALUE` over the file's);
//!   [`data_lock`]: one kiln per directory; [`quarantine`]: toolchains whose
//!   jobs keep failing in the machinery are re-unpacked, then refused for a while;
//!   [`host_check`]: startup checks; [`package`]: `kiln package-toolchain`.
//! - [`client`]: a Rust client of the protocol, for tests, benches and load tools.
//! - [`observe`]: metrics, the live activity behind `/status`, job phase timings,
//!   logging, and the serving/draining lifecycle; [`cli`]: `kiln status`,
//!   `kiln check`, `kiln gc`; [`sync`]: the one policy for locks (poisoning is
//!   recovered).

pub mod actors;
pub mod archive;
pub mod cli;
pub mod client;
pub mod config;
pub mod config_overrides;
pub mod data_lock;
pub mod host_check;
pub mod http;
pub mod jobs;
pub mod lru;
pub mod observe;
pub mod package;
pub mod program;
pub mod protocol;
pub mod quarantine;
pub mod report;
pub mod sandbox;
pub mod scheduler;
pub mod server;
pub mod stats;
pub mod store;
pub mod sync;
pub mod tls;
pub mod toolchains;
