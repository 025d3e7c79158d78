//! The actors kiln is built from; `actors.md` at the repository root shows how they
//! talk and who owns which state.
//!
//! None of them blocks its thread: file system work goes to tokio's blocking pool,
//! sandboxes run on their own threads (see [`crate::sandbox`]). A backend's own
//! actors live with it (the docker backend's `ContainerPool` in
//! `sandbox/docker/pool.rs`), so nothing here names a backend.

pub mod builder;
pub mod cleaner;
pub mod job_queue;
pub mod sandbox_pool;
pub mod toolchain_cache;
pub mod unpacker;

pub use builder::Builder;
pub use cleaner::{CleanLeftovers, Cleaner, SweepStale};
pub use job_queue::{JobQueue, QueueFull, SubmitJob};
pub use sandbox_pool::{AcquireSandbox, DescribePool, DiscardIdle, DiscardWarm, SandboxPool};
pub use toolchain_cache::{
    AdoptToolchain, ArchiveLease, CacheError, CheckoutToolchain, DescribeCache, DiscardToolchain, HasToolchain,
    ToolchainCache, TrimCache,
};
pub use unpacker::{DescribeRoots, EvictIdleRoots, ForgetRoot, UnpackFailed, UnpackToolchain, Unpacker};

#[cfg(test)]
mod tests {
    /// actors.md cannot drift: every `impl Handler<M> for A` under src/actors/ (and
    /// the scheduler link in src/scheduler/, the docker backend's pool in
    /// src/sandbox/docker/) is named in A's row of its table.
    #[test]
    fn actors_md_names_every_message_each_actor_handles() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("actors.md")).unwrap();
        let row_of = |actor: &str| {
            let start = format!("| **{actor}**");
            doc.lines().find(|line| line.starts_with(&start)).map(str::to_owned)
        };
        let mut missing = Vec::new();
        let mut handlers = 0;
        let dirs = [root.join("src/actors"), root.join("src/scheduler"), root.join("src/sandbox/docker")];
        for path in dirs.iter().flat_map(|dir| std::fs::read_dir(dir).unwrap()).map(|entry| entry.unwrap().path()) {
            let source = std::fs::read_to_string(&path).unwrap();
            for line in source.lines().map(str::trim_start) {
                let Some(rest) = line.strip_prefix("impl Handler<") else { continue };
                let Some((message, rest)) = rest.split_once("> for ") else { continue };
                let actor = rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or_default();
                handlers += 1;
                match row_of(actor) {
                    None => missing.push(format!("{actor} has no row (it handles {message})")),
                    Some(row) if !row.contains(&format!("`{message}`")) => {
                        missing.push(format!("{actor}'s row does not name `{message}`"))
                    }
                    Some(_) => {}
                }
            }
        }
        assert!(handlers >= 20, "found only {handlers} handlers: has the code moved?");
        assert!(missing.is_empty(), "actors.md has drifted from src/actors:\n{}", missing.join("\n"));
    }
}
