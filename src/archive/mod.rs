//! Archives coming from the network (toolchains and job inputs), unpacked safely.
//!
//! Everything here treats the archive as hostile: paths are normalised and checked,
//! every lookup inside the destination is resolved *inside* it (`openat2` with
//! `RESOLVE_IN_ROOT`), so a symlink planted by one entry can never send a later write,
//! or a later read by the server, outside the destination. Entries, bytes and path
//! depth are bounded by [`ExtractLimits`]. What a job leaves behind is removed with
//! [`remove_tree`], which no depth, width or symlink in the tree can defeat.

mod error;
mod extract;
mod remove;
mod rooted;

pub use error::ArchiveError;
pub use extract::{extract_tar, extract_tar_into, ExtractLimits, ExtractStats};
pub use remove::{remove_tree, RemoveError};
pub use rooted::{RootedDir, SandboxPath};
