//! A backend for actor tests: sandboxes that run nothing and need no root, with
//! counters for what the pools asked of them, a gate that holds preparations
//! back (to test what happens while one is in flight), and per toolchain a
//! behaviour for the jobs its sandboxes run (complete, fail in the machinery, or
//! wait to be cancelled).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Runs that received their job's cancellation.
    pub cancelled: AtomicUsize,
}

impl FakeCounts {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// What a fake sandbox does with the job it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FakeBehaviour {
    /// Answers at once with exit code 0.
    #[default]
    Complete,
    /// Fails as the machinery does ([`SandboxError::ThreadGone`]).
    FailMachinery,
    /// Waits until the job is cancelled (counted in [`FakeCounts::cancelled`]),
    /// then answers [`SandboxError::Cancelled`].
    AwaitCancel,
}

/// Each toolchain's [`FakeBehaviour`], shared with the test. It is read when a
/// job runs, so sandboxes prepared ahead follow a change made since.
#[derive(Debug, Default)]
pub struct FakeBehaviours(Mutex<HashMap<String, FakeBehaviour>>);

impl FakeBehaviours {
    /// From now on, the jobs of `archive_id` do `behaviour`.
    pub fn set(&self, archive_id: &str, behaviour: FakeBehaviour) {
        crate::sync::lock(&self.0).insert(archive_id.to_owned(), behaviour);
    }

    fn of(&self, archive_id: &str) -> FakeBehaviour {
        crate::sync::lock(&self.0).get(archive_id).copied().unwrap_or_default()
    }
}

pub struct FakeBackend {
    pub counts: Arc<FakeCounts>,
    /// What the jobs of each toolchain do; [`FakeBehaviour::Complete`] unless set.
    pub behaviours: Arc<FakeBehaviours>,
    /// Each preparation takes a permit first: a gate with none holds them all.
    gate: Arc<Semaphore>,
}

impl FakeBackend {
    /// Preparations complete at once.
    pub fn open() -> Self {
        FakeBackend::with_gate(Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)))
    }

    /// Preparations wait until the returned gate gets permits.
    pub fn gated() -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (FakeBackend::with_gate(gate.clone()), gate)
    }

    fn with_gate(gate: Arc<Semaphore>) -> Self {
        FakeBackend { counts: Arc::default(), behaviours: Arc::default(), gate }
    }
}

impl SandboxBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn prepare(&self, toolchain: ToolchainRoot) -> BoxFuture<'static, Result<Box<dyn Sandbox>, SandboxError>> {
        let (counts, behaviours, gate) = (self.counts.clone(), self.behaviours.clone(), self.gate.clone());
        async move {
            gate.acquire().await.expect("the gate is never closed").forget();
            counts.prepared.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FakeSandbox { counts, behaviours, toolchain }) as Box<dyn Sandbox>)
        }
        .boxed()
    }
}

struct FakeSandbox {
    counts: Arc<FakeCounts>,
    behaviours: Arc<FakeBehaviours>,
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
        cancel: Cancellation,
    ) -> BoxFuture<'static, (Result<JobComplete, SandboxError>, Leftovers)> {
        self.counts.ran.fetch_add(1, Ordering::SeqCst);
        let leftovers = self.leftovers();
        let behaviour = self.behaviours.of(&self.toolchain.archive_id);
        let counts = self.counts;
        async move {
            let result = match behaviour {
                FakeBehaviour::Complete => Ok(JobComplete {
                    output: ProcessOutput { code: 0, stdout: Vec::new(), stderr: Vec::new() },
                    outputs: Vec::new(),
                }),
                FakeBehaviour::FailMachinery => Err(SandboxError::ThreadGone),
                FakeBehaviour::AwaitCancel => {
                    // A dropped sender is no cancellation: only `()` counts.
                    if cancel.await.is_ok() {
                        counts.cancelled.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(SandboxError::Cancelled)
                }
            };
            (result, leftovers)
        }
        .boxed()
    }

    fn discard(self: Box<Self>) -> Leftovers {
        self.counts.discarded.fetch_add(1, Ordering::SeqCst);
        self.leftovers()
    }
}
