//! A backend for actor tests: sandboxes that run nothing and need no root, with
//! counters for what the pools asked of them, and a gate that holds preparations
//! back (to test what happens while one is in flight).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::Semaphore;

use super::{Cancellation, Leftovers, Sandbox, SandboxBackend, SandboxError, SandboxJob, ToolchainRoot};
use crate::protocol::{JobComplete, ProcessOutput};

/// What a [`FakeBackend`] was asked, shared with the test.
#[derive(Debug, Default)]
pub struct FakeCounts {
    pub prepared: AtomicUsize,
    pub ran: AtomicUsize,
    pub discarded: AtomicUsize,
}

impl FakeCounts {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

pub struct FakeBackend {
    pub counts: Arc<FakeCounts>,
    /// Each preparation takes a permit first: a gate with none holds them all.
    gate: Arc<Semaphore>,
}

impl FakeBackend {
    /// Preparations complete at once.
    pub fn open() -> Self {
        FakeBackend { counts: Arc::default(), gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)) }
    }

    /// Preparations wait until the returned gate gets permits.
    pub fn gated() -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (FakeBackend { counts: Arc::default(), gate: gate.clone() }, gate)
    }
}

impl SandboxBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn prepare(&self, toolchain: ToolchainRoot) -> BoxFuture<'static, Result<Box<dyn Sandbox>, SandboxError>> {
        let (counts, gate) = (self.counts.clone(), self.gate.clone());
        async move {
            gate.acquire().await.expect("the gate is never closed").forget();
            counts.prepared.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FakeSandbox { counts, toolchain }) as Box<dyn Sandbox>)
        }
        .boxed()
    }
}

struct FakeSandbox {
    counts: Arc<FakeCounts>,
    toolchain: ToolchainRoot,
}

impl FakeSandbox {
    /// A directory that does not exist: the cleaner finds nothing to remove.
    fn leftovers(&self) -> Leftovers {
        Leftovers::Dir(std::env::temp_dir().join(format!("kiln-fake-sandbox-{}-gone", self.toolchain.archive_id)))
    }
}

impl Sandbox for FakeSandbox {
    fn run(
        self: Box<Self>,
        _job: SandboxJob,
        _cancel: Cancellation,
    ) -> BoxFuture<'static, (Result<JobComplete, SandboxError>, Leftovers)> {
        self.counts.ran.fetch_add(1, Ordering::SeqCst);
        let leftovers = self.leftovers();
        let done = JobComplete {
            output: ProcessOutput { code: 0, stdout: Vec::new(), stderr: Vec::new() },
            outputs: Vec::new(),
        };
        async move { (Ok(done), leftovers) }.boxed()
    }

    fn discard(self: Box<Self>) -> Leftovers {
        self.counts.discarded.fetch_add(1, Ordering::SeqCst);
        self.leftovers()
    }
}
