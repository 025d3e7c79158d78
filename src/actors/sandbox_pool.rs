//! SandboxPool: hands out prepared sandboxes per toolchain and prepares the next
//! ones before they are asked for.
//!
//! A toolchain becomes "warm" the first time a job acquires a sandbox for it; from
//! then on the pool keeps `warm_per_toolchain` sandboxes prepared for it, until the
//! global cap on idle sandboxes pushes out the least recently used toolchains.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::cleaner::{CleanLeftovers, Cleaner};
use crate::report::ErrorChain;
use crate::sandbox::{Sandbox, SandboxError, SharedBackend, ToolchainRoot};
use crate::stats::Stats;

/// Per warm toolchain: the prepared sandboxes and how many are being prepared.
struct Warm {
    /// Tells preparations started for an earlier entry of the same toolchain
    /// (since discarded) from this entry's own.
    generation: u64,
    root: ToolchainRoot,
    idle: Vec<Box<dyn Sandbox>>,
    preparing: usize,
    last_acquired: u64,
}

pub struct SandboxPool {
    backend: SharedBackend,
    warm_per_toolchain: usize,
    max_idle: usize,
    toolchains: HashMap<String, Warm>,
    /// Orders acquisitions (LRU) and numbers `Warm` generations.
    clock: u64,
    cleaner: Addr<Cleaner>,
    stats: Arc<Stats>,
}

impl SandboxPool {
    pub fn new(
        backend: SharedBackend,
        warm_per_toolchain: usize,
        max_idle: usize,
        cleaner: Addr<Cleaner>,
        stats: Arc<Stats>,
    ) -> Self {
        SandboxPool { backend, warm_per_toolchain, max_idle, toolchains: HashMap::new(), clock: 0, cleaner, stats }
    }

    /// Starts preparing sandboxes until `archive_id` has its warm quota.
    fn refill(&mut self, archive_id: &str, ctx: &mut Context<Self>) {
        let Some(warm) = self.toolchains.get_mut(archive_id) else { return };
        let missing = self.warm_per_toolchain.saturating_sub(warm.idle.len() + warm.preparing);
        warm.preparing += missing;
        let (root, generation) = (warm.root.clone(), warm.generation);
        for _ in 0..missing {
            let prepare = self.backend.prepare(root.clone());
            let archive_id = archive_id.to_owned();
            ctx.spawn(prepare.into_actor(self).map(move |result, act, _| act.prepared(archive_id, generation, result)));
        }
    }

    fn prepared(&mut self, archive_id: String, generation: u64, result: Result<Box<dyn Sandbox>, SandboxError>) {
        Stats::bump(&self.stats.sandboxes_prepared);
        let warm = self.toolchains.get_mut(&archive_id).filter(|w| w.generation == generation);
        match (warm, result) {
            (Some(warm), Ok(sandbox)) => {
                warm.preparing -= 1;
                warm.idle.push(sandbox);
            }
            (Some(warm), Err(e)) => {
                warm.preparing -= 1;
                // Not retried here: the next acquire prepares one and reports the error.
                tracing::warn!(%archive_id, error = %ErrorChain(&e), "preparing a sandbox ahead failed");
            }
            // The toolchain went cold while this one was being prepared.
            (None, Ok(sandbox)) => self.cleaner.do_send(CleanLeftovers(sandbox.discard())),
            (None, Err(_)) => {}
        }
        self.enforce_idle_cap();
    }

    /// Forgets toolchains with nothing prepared or preparing (so their roots are no
    /// longer pinned), then discards idle sandboxes of the least recently used
    /// toolchains over the cap.
    fn enforce_idle_cap(&mut self) {
        self.toolchains.retain(|_, w| !w.idle.is_empty() || w.preparing > 0);
        let mut idle: usize = self.toolchains.values().map(|w| w.idle.len()).sum();
        while idle > self.max_idle {
            let coldest = self
                .toolchains
                .iter()
                .filter(|(_, w)| !w.idle.is_empty())
                .min_by_key(|(_, w)| w.last_acquired)
                .map(|(id, _)| id.clone());
            let Some(id) = coldest else { break };
            if let Some(warm) = self.toolchains.remove(&id) {
                tracing::debug!(archive_id = %id, discarded = warm.idle.len(), "toolchain went cold; discarding its sandboxes");
                idle -= warm.idle.len();
                for sandbox in warm.idle {
                    self.cleaner.do_send(CleanLeftovers(sandbox.discard()));
                }
            }
        }
    }
}

impl Actor for SandboxPool {
    type Context = Context<Self>;
}

/// A sandbox ready to run a job over `toolchain`.
#[derive(Message)]
#[rtype(result = "Result<Box<dyn Sandbox>, SandboxError>")]
pub struct AcquireSandbox {
    pub toolchain: ToolchainRoot,
}

impl Handler<AcquireSandbox> for SandboxPool {
    type Result = ResponseFuture<Result<Box<dyn Sandbox>, SandboxError>>;

    fn handle(&mut self, msg: AcquireSandbox, ctx: &mut Context<Self>) -> Self::Result {
        let archive_id = msg.toolchain.archive_id.clone();
        self.clock += 1;
        let generation = self.clock;
        let warm = self.toolchains.entry(archive_id.clone()).or_insert_with(|| Warm {
            generation,
            root: msg.toolchain.clone(),
            idle: Vec::new(),
            preparing: 0,
            last_acquired: 0,
        });
        warm.last_acquired = self.clock;
        let ready = warm.idle.pop();
        Stats::bump(&self.stats.sandbox_acquires);
        self.refill(&archive_id, ctx);
        self.enforce_idle_cap();
        match ready {
            Some(sandbox) => {
                Stats::bump(&self.stats.sandboxes_warm_hits);
                Box::pin(async move { Ok(sandbox) })
            }
            None => {
                // Nothing prepared yet (first job of a toolchain, or a burst).
                let prepare = self.backend.prepare(msg.toolchain);
                let stats = self.stats.clone();
                Box::pin(async move {
                    Stats::bump(&stats.sandboxes_prepared);
                    prepare.await
                })
            }
        }
    }
}

/// The sandboxes kept prepared, per toolchain.
#[derive(Message)]
#[rtype(result = "crate::observe::PoolView")]
pub struct DescribePool;

impl Handler<DescribePool> for SandboxPool {
    type Result = MessageResult<DescribePool>;

    fn handle(&mut self, _: DescribePool, _: &mut Context<Self>) -> Self::Result {
        let mut toolchains: Vec<_> = self
            .toolchains
            .iter()
            .map(|(id, w)| crate::observe::WarmToolchain {
                archive_id: id.clone(),
                idle: w.idle.len(),
                preparing: w.preparing,
            })
            .collect();
        toolchains.sort_by(|a, b| a.archive_id.cmp(&b.archive_id));
        MessageResult(crate::observe::PoolView {
            backend: self.backend.name().to_owned(),
            warm_per_toolchain: self.warm_per_toolchain,
            max_idle: self.max_idle,
            toolchains,
        })
    }
}

/// Discards the prepared sandboxes of one toolchain (its root is about to be
/// unpacked afresh: see [`crate::quarantine`]). Preparations in flight are
/// discarded when they finish (their generation no longer matches).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DiscardWarm {
    pub archive_id: String,
}

impl Handler<DiscardWarm> for SandboxPool {
    type Result = ();

    fn handle(&mut self, msg: DiscardWarm, _: &mut Context<Self>) {
        if let Some(warm) = self.toolchains.remove(&msg.archive_id) {
            tracing::info!(archive_id = %msg.archive_id, discarded = warm.idle.len(), "discarding the sandboxes of a failing toolchain");
            for sandbox in warm.idle {
                self.cleaner.do_send(CleanLeftovers(sandbox.discard()));
            }
        }
    }
}

/// Garbage collection: discards every idle sandbox and forgets the warm
/// toolchains (releasing their roots). The next job prepares afresh.
#[derive(Message)]
#[rtype(result = "crate::observe::Freed")]
pub struct DiscardIdle;

impl Handler<DiscardIdle> for SandboxPool {
    type Result = MessageResult<DiscardIdle>;

    fn handle(&mut self, _: DiscardIdle, _: &mut Context<Self>) -> Self::Result {
        let mut freed = crate::observe::Freed::default();
        // Toolchains with preparations in flight stay (their generation check
        // discards the late ones if the entry is gone, so remove them too).
        for (archive_id, warm) in self.toolchains.drain() {
            tracing::info!(%archive_id, discarded = warm.idle.len(), "gc: discarding idle sandboxes");
            for sandbox in warm.idle {
                freed.items += 1;
                self.cleaner.do_send(CleanLeftovers(sandbox.discard()));
            }
        }
        MessageResult(freed)
    }
}

/// The pool's logic against a fake backend: no root, no processes, milliseconds.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sandbox::fake::{FakeBackend, FakeCounts};

    fn root(archive_id: &str) -> ToolchainRoot {
        ToolchainRoot { archive_id: archive_id.into(), path: "/nonexistent".into(), lease: Arc::new(()) }
    }

    fn pool(backend: FakeBackend, warm: usize, max_idle: usize) -> (Addr<SandboxPool>, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let cleaner = Cleaner::new(stats.clone()).start();
        (SandboxPool::new(Arc::new(backend), warm, max_idle, cleaner, stats.clone()).start(), stats)
    }

    /// The pool's view once `done` holds of it, or after 2 s (bounded).
    async fn settle(
        pool: &Addr<SandboxPool>,
        done: impl Fn(&crate::observe::PoolView) -> bool,
    ) -> crate::observe::PoolView {
        for _ in 0..200 {
            let view = pool.send(DescribePool).await.unwrap();
            if done(&view) {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pool.send(DescribePool).await.unwrap()
    }

    fn idle_of(view: &crate::observe::PoolView, archive_id: &str) -> Option<usize> {
        view.toolchains.iter().find(|t| t.archive_id == archive_id).map(|t| t.idle)
    }

    #[actix_rt::test]
    async fn a_warm_toolchain_gets_sandboxes_prepared_ahead_and_handed_out() {
        let backend = FakeBackend::open();
        let counts = backend.counts.clone();
        let (pool, stats) = pool(backend, 2, 8);
        // The first acquire prepares one for itself and two ahead.
        pool.send(AcquireSandbox { toolchain: root("a") }).await.unwrap().unwrap();
        let view = settle(&pool, |v| idle_of(v, "a") == Some(2)).await;
        assert_eq!(idle_of(&view, "a"), Some(2), "{view:?}");
        assert_eq!(FakeCounts::get(&counts.prepared), 3);
        // The next one is a warm hit, and the pool refills behind it.
        pool.send(AcquireSandbox { toolchain: root("a") }).await.unwrap().unwrap();
        assert_eq!(stats.sandboxes_warm_hits.load(std::sync::atomic::Ordering::Relaxed), 1);
        let view = settle(&pool, |v| idle_of(v, "a") == Some(2)).await;
        assert_eq!(idle_of(&view, "a"), Some(2), "{view:?}");
        assert_eq!(FakeCounts::get(&counts.prepared), 4);
    }

    #[actix_rt::test]
    async fn over_the_idle_cap_the_coldest_toolchain_is_discarded() {
        let backend = FakeBackend::open();
        let counts = backend.counts.clone();
        let (pool, _) = pool(backend, 2, 2);
        pool.send(AcquireSandbox { toolchain: root("cold") }).await.unwrap().unwrap();
        settle(&pool, |v| idle_of(v, "cold") == Some(2)).await;
        pool.send(AcquireSandbox { toolchain: root("hot") }).await.unwrap().unwrap();
        let view = settle(&pool, |v| idle_of(v, "hot") == Some(2)).await;
        assert_eq!(idle_of(&view, "hot"), Some(2), "{view:?}");
        assert_eq!(idle_of(&view, "cold"), None, "the least recently used toolchain stays warm: {view:?}");
        assert_eq!(FakeCounts::get(&counts.discarded), 2);
    }

    #[actix_rt::test]
    async fn a_preparation_that_finishes_after_its_toolchain_was_discarded_is_not_pooled() {
        let (backend, gate) = FakeBackend::gated();
        let counts = backend.counts.clone();
        let (pool, _) = pool(backend, 2, 8);
        let first = actix_rt::spawn(pool.send(AcquireSandbox { toolchain: root("a") }));
        let view = settle(&pool, |v| v.toolchains.iter().any(|t| t.preparing == 2)).await;
        assert_eq!(view.toolchains[0].preparing, 2, "{view:?}");
        // The toolchain is unpacked afresh while its sandboxes are being prepared.
        pool.send(DiscardWarm { archive_id: "a".into() }).await.unwrap();
        gate.add_permits(3);
        first.await.unwrap().unwrap().unwrap();
        let view = settle(&pool, |_| FakeCounts::get(&counts.discarded) == 2).await;
        assert!(view.toolchains.is_empty(), "a stale preparation was pooled: {view:?}");
        assert_eq!(FakeCounts::get(&counts.discarded), 2, "the late sandboxes went to the cleaner");
    }
}
