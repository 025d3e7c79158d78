//! Builder: runs one job at a time through its stages, under a supervisor.
//!
//! prepare (pin the archive, get the unpacked root, take a prepared sandbox) →
//! run (inputs, command, outputs, inside the sandbox) → release (leftovers to the
//! cleaner). The stages run in a task of their own: if it panics, or the sandbox's
//! machinery fails (its process killed from outside, a mount that fails), the job is
//! answered with an error and the builder stops; its `Supervisor` restarts it with
//! the same mailbox and the restart is counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::cleaner::{CleanLeftovers, Cleaner};
use super::job_queue::{BuilderReady, JobQueue, QueuedJob};
use super::sandbox_pool::{AcquireSandbox, DiscardWarm, SandboxPool};
use super::toolchain_cache::{CheckoutToolchain, DiscardToolchain, ToolchainCache};
use super::unpacker::{ForgetRoot, UnpackToolchain, Unpacker};
use crate::jobs::{JobError, JobRequest, JobResult};
use crate::observe::{Observer, Phase};
use crate::quarantine::{Quarantine, Strike};
use crate::report::ErrorChain;
use crate::sandbox::{Cancellation, SandboxJob};
use crate::stats::Stats;

/// The actors a builder talks to, and its settings.
#[derive(Clone)]
pub struct BuilderDeps {
    pub queue: Addr<JobQueue>,
    pub cache: Addr<ToolchainCache>,
    pub unpacker: Addr<Unpacker>,
    pub pool: Addr<SandboxPool>,
    pub cleaner: Addr<Cleaner>,
    pub stats: Arc<Stats>,
    pub job_timeout: Duration,
    /// Told when a job starts and ends, with its phase timings.
    pub observer: Arc<Observer>,
    /// Machinery failures per toolchain; refuses the jobs of a quarantined one.
    pub quarantine: Arc<Quarantine>,
}

pub struct Builder {
    id: usize,
    deps: BuilderDeps,
    consecutive_failures: u32,
}

impl Builder {
    pub fn new(id: usize, deps: BuilderDeps) -> Self {
        Builder { id, deps, consecutive_failures: 0 }
    }
}

impl Actor for Builder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.deps.queue.do_send(BuilderReady(ctx.address()));
    }
}

impl Supervised for Builder {
    fn restarting(&mut self, _: &mut Context<Self>) {
        Stats::bump(&self.deps.stats.builder_restarts);
        tracing::warn!(builder = self.id, consecutive_failures = self.consecutive_failures, "restarting builder");
    }
}

/// Run this job (sent by the queue only when the builder said it is ready).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunJob(pub QueuedJob);

/// How a job ended, as far as the builder's health is concerned.
enum Verdict {
    Completed,
    RequestFailed,
    MachineryFailed,
}

impl Handler<RunJob> for Builder {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: RunJob, _: &mut Context<Self>) -> Self::Result {
        let QueuedJob { request, reply } = msg.0;
        let deps = self.deps.clone();
        let span = request.span.clone();
        let builder = self.id;
        deps.observer.job_started(builder, request.job_id, &request.command, &request.archive_id, &request.phases);
        let (job_id, phases) = (request.job_id, request.phases.clone());
        let archive_id = request.archive_id.clone();
        let panicked_archive = archive_id.clone();
        let command = crate::observe::activity::command_line(&request.command);
        let executable = request.command.executable.clone();
        // A task of its own: a panic in it is caught by the runtime and seen below,
        // and `reply` is dropped with it, which answers the job with an error.
        let task = actix_rt::spawn(
            async move {
                let started = Instant::now();
                let mut reply = reply;
                let (cancel, cancellation) = oneshot::channel();
                let stages = run_stages(&deps, request, cancellation);
                tokio::pin!(stages);
                // A client that hangs up frees its builder instead of holding it
                // until the job's timeout.
                let result = tokio::select! {
                    result = &mut stages => result,
                    () = reply.closed() => {
                        tracing::info!("client went away; cancelling the job");
                        let _ = cancel.send(());
                        stages.await
                    }
                };
                let elapsed_ms = started.elapsed().as_millis() as u64;
                let report = result.as_ref().map_err(|e| ErrorChain(e).to_string());
                deps.observer.job_finished(builder, job_id, command, &executable, &phases, report);
                let phases_ms = phases.timings();
                let usage = phases.usage();
                let cpu_ms = usage.map(|u| (u.user_ms + u.system_ms).round() as u64);
                let peak_mib = usage.map(|u| u.peak_memory_bytes >> 20);
                let verdict = match &result {
                    Ok(done) => {
                        deps.quarantine.succeeded(&archive_id);
                        Stats::bump(&deps.stats.jobs_completed);
                        tracing::info!(
                            builder,
                            elapsed_ms,
                            code = done.output.code,
                            outputs = done.outputs.len(),
                            ?phases_ms,
                            ?cpu_ms,
                            ?peak_mib,
                            "job completed"
                        );
                        Verdict::Completed
                    }
                    Err(e) => {
                        Stats::bump(&deps.stats.jobs_failed);
                        tracing::warn!(builder, elapsed_ms, ?phases_ms, error = %ErrorChain(e), "job failed");
                        if e.is_infrastructure_failure() {
                            // An unreachable daemon is the backend's outage, not the toolchain's.
                            if !matches!(e, JobError::Sandbox(s) if s.is_backend_unavailable()) {
                                strike(&deps, &archive_id, &ErrorChain(e).to_string());
                            }
                            Verdict::MachineryFailed
                        } else {
                            Verdict::RequestFailed
                        }
                    }
                };
                let _ = reply.send(result);
                verdict
            }
            .instrument(span),
        );
        AtomicResponse::new(Box::pin(task.into_actor(self).map(move |joined, act, ctx| {
            let verdict = joined.unwrap_or_else(|e| {
                Stats::bump(&act.deps.stats.jobs_failed);
                tracing::error!(builder = act.id, error = %e, "builder task panicked");
                strike(&act.deps, &panicked_archive, "the builder's task panicked");
                Verdict::MachineryFailed
            });
            match verdict {
                Verdict::Completed => act.consecutive_failures = 0,
                Verdict::RequestFailed => {}
                Verdict::MachineryFailed => {
                    act.consecutive_failures += 1;
                    if act.consecutive_failures >= FAILURES_WORTH_AN_ALERT {
                        tracing::error!(
                            builder = act.id,
                            consecutive_failures = act.consecutive_failures,
                            "builder keeps failing: check the host (disk, overlayfs, bubblewrap)"
                        );
                    }
                    // The supervisor calls `restarting()` then `started()` on this same
                    // actor and mailbox; `started()` registers it with the queue again.
                    ctx.stop();
                    return;
                }
            }
            act.deps.queue.do_send(BuilderReady(ctx.address()));
        })))
    }
}

/// Records a machinery failure of `archive_id`'s job and acts on the verdict: a
/// toolchain that keeps failing is unpacked afresh, then quarantined.
fn strike(deps: &BuilderDeps, archive_id: &str, reason: &str) {
    let strike = deps.quarantine.failed(archive_id, reason);
    if strike == Strike::Counted {
        return;
    }
    if strike == Strike::Quarantine {
        Stats::bump(&deps.stats.toolchains_quarantined);
        tracing::error!(%archive_id, reason, "toolchain quarantined: its jobs keep failing in kiln's machinery even after a fresh unpack");
    } else {
        tracing::warn!(%archive_id, reason, "toolchain's jobs keep failing in kiln's machinery; unpacking it afresh");
    }
    // Internal, at most once per threshold crossing: do_send cannot pile up work.
    // The pool drops its sandboxes (and their leases) before the unpacker forgets
    // the root: mailboxes are FIFO per sender, but these are two actors, so the
    // root may be forgotten first; its directory then stays until the next unpack.
    deps.pool.do_send(DiscardWarm { archive_id: archive_id.to_owned() });
    deps.unpacker.do_send(ForgetRoot { archive_id: archive_id.to_owned() });
}

/// Consecutive machinery failures of one builder after which each restart is logged
/// as an error, not a warning.
const FAILURES_WORTH_AN_ALERT: u32 = 3;

async fn run_stages(deps: &BuilderDeps, request: JobRequest, cancel: Cancellation) -> JobResult {
    let phases = request.phases.clone();
    phases.enter(Phase::Toolchain);
    let archive_id = request.archive_id.clone();
    deps.quarantine.check(&archive_id)?;
    let archive = deps
        .cache
        .send(CheckoutToolchain { archive_id: archive_id.clone() })
        .await
        .map_err(|_| JobError::ActorGone("toolchain cache"))?
        .ok_or(JobError::ToolchainMissing { archive_id })?;
    let root =
        match deps.unpacker.send(UnpackToolchain { archive }).await.map_err(|_| JobError::ActorGone("unpacker"))? {
            Ok(root) => root,
            Err(failed) => {
                if failed.bad_archive {
                    // Its hash matched, so it will never unpack: make clients resubmit.
                    deps.cache.do_send(DiscardToolchain { archive_id: failed.archive_id.clone() });
                }
                return Err(failed.into());
            }
        };
    phases.enter(Phase::Acquire);
    let sandbox =
        deps.pool.send(AcquireSandbox { toolchain: root }).await.map_err(|_| JobError::ActorGone("sandbox pool"))??;
    let job = SandboxJob {
        job_id: request.job_id,
        command: request.command,
        outputs: request.outputs,
        inputs_zlib: request.inputs_zlib,
        timeout: deps.job_timeout,
        phases: phases.clone(),
    };
    // The sandbox enters inputs → compile → outputs; one that does not has its
    // whole run counted as the compile.
    let before = phases.timings();
    phases.stop();
    let ran = std::time::Instant::now();
    let (result, leftovers) = sandbox.run(job, cancel).await;
    phases.stop();
    if phases.timings() == before {
        phases.add(Phase::Compile, ran.elapsed());
    }
    deps.cleaner.do_send(CleanLeftovers(leftovers));
    Ok(result?)
}

/// The builder's logic against the real actors, wired as `server.rs` wires them,
/// and a fake sandbox backend: no root, no processes, milliseconds.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::time::timeout;

    use super::*;
    use crate::actors::job_queue::SubmitJob;
    use crate::actors::toolchain_cache::AdoptToolchain;
    use crate::archive::ExtractLimits;
    use crate::protocol::archive_id_of;
    use crate::sandbox::fake::{FakeBackend, FakeBehaviour, FakeBehaviours, FakeCounts};
    use crate::sandbox::SandboxError;

    /// Bounds every wait: a bug fails the test instead of hanging it.
    const PATIENCE: Duration = Duration::from_secs(5);

    /// One supervised builder and the actors it talks to, with two toolchains stored.
    struct Rig {
        queue: Addr<JobQueue>,
        /// Held: a supervisor restarts its actor only while an address of it lives.
        _builder: Addr<Builder>,
        stats: Arc<Stats>,
        counts: Arc<FakeCounts>,
        behaviours: Arc<FakeBehaviours>,
        /// Archive ids of two different stored toolchains.
        toolchains: [String; 2],
        _dir: tempfile::TempDir,
    }

    /// The real cache, unpacker, pool, cleaner and queue over a fake backend (one
    /// sandbox kept warm per toolchain), and one builder under a `Supervisor`.
    async fn rig(quarantine: Quarantine) -> Rig {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let stats = Arc::new(Stats::default());
        let backend = FakeBackend::open();
        let (counts, behaviours) = (backend.counts.clone(), backend.behaviours.clone());
        let cleaner = Cleaner::new(stats.clone()).start();
        let cache = ToolchainCache::load(&dir.path().join("toolchains"), 1 << 20, stats.clone())
            .expect("an empty toolchain cache")
            .start();
        let limits = ExtractLimits { max_entries: 16, max_bytes: 1 << 16, max_depth: 8 };
        let unpacker = Unpacker::new(dir.path().join("roots"), 1 << 20, limits, stats.clone()).start();
        // Stored as the facade stores an upload: staged beside the cache, then renamed in.
        let mut toolchains = Vec::new();
        for name in ["first", "second"] {
            let (archive_id, bytes) = toolchain_archive(name);
            let staged = dir.path().join(format!("staged-{name}"));
            std::fs::write(&staged, &bytes).expect("staging a toolchain archive");
            let store = AdoptToolchain { archive_id: archive_id.clone(), staged, size: bytes.len() as u64 };
            cache.send(store).await.expect("the cache is running").expect("storing a toolchain archive");
            toolchains.push(archive_id);
        }
        let pool = SandboxPool::new(Arc::new(backend), 1, 4, cleaner.clone(), stats.clone()).start();
        let queue = JobQueue::new(8, stats.clone()).start();
        let deps = BuilderDeps {
            queue: queue.clone(),
            cache,
            unpacker,
            pool,
            cleaner,
            stats: stats.clone(),
            job_timeout: Duration::from_secs(60),
            observer: Arc::new(Observer::new(1)),
            quarantine: Arc::new(quarantine),
        };
        let builder = Supervisor::start(move |_| Builder::new(0, deps));
        let toolchains = toolchains.try_into().expect("two toolchains");
        Rig { queue, _builder: builder, stats, counts, behaviours, toolchains, _dir: dir }
    }

    /// A tiny valid toolchain archive (a gzipped tar holding `bin/true`, which
    /// names `name` so archives differ) and its id as the client computes it.
    fn toolchain_archive(name: &str) -> (String, Vec<u8>) {
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gzip);
        let script = format!("#!/bin/sh\n# {name}\n");
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(script.len() as u64);
        header.set_mode(0o755);
        tar.append_data(&mut header, "bin/true", script.as_bytes()).expect("adding bin/true");
        let bytes = tar.into_inner().expect("ending the tar").finish().expect("ending the gzip stream");
        (archive_id_of(&bytes), bytes)
    }

    fn request(archive_id: &str) -> JobRequest {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        JobRequest::trivial(NEXT_ID.fetch_add(1, Ordering::Relaxed), archive_id)
    }

    impl Rig {
        /// Queues a job of `archive_id`; its answer comes on the receiver.
        async fn submit(&self, archive_id: &str) -> oneshot::Receiver<JobResult> {
            self.queue
                .send(SubmitJob(request(archive_id)))
                .await
                .expect("the queue is running")
                .expect("room in the queue")
        }

        /// Runs a job of `archive_id` and returns its answer.
        async fn run(&self, archive_id: &str) -> JobResult {
            let answer = self.submit(archive_id).await;
            timeout(PATIENCE, answer)
                .await
                .unwrap_or_else(|_| panic!("a job of {archive_id} got no answer within {PATIENCE:?}"))
                .expect("the job's reply was dropped unanswered")
        }
    }

    /// Waits until `done` holds, at most [`PATIENCE`].
    async fn until(what: &str, done: impl Fn() -> bool) {
        let waited = timeout(PATIENCE, async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "not within {PATIENCE:?}: {what}");
    }

    /// A machinery failure stops the builder and its supervisor restarts it: the
    /// job is answered with the failure, the restart is counted, and the one
    /// builder then runs the next job to completion. A builder left stopped would
    /// leave that job waiting (the test times out); one that never stopped would
    /// leave `builder_restarts` at 0.
    #[actix_rt::test]
    async fn a_machinery_failure_restarts_the_builder_which_runs_the_next_job() {
        let rig = rig(Quarantine::new(3, Duration::from_secs(60))).await;
        let toolchain = &rig.toolchains[0];
        rig.behaviours.set(toolchain, FakeBehaviour::FailMachinery);
        let failed = rig.run(toolchain).await;
        assert!(
            matches!(failed, Err(JobError::Sandbox(SandboxError::ThreadGone))),
            "the job is answered with the machinery's failure: {failed:?}"
        );

        rig.behaviours.set(toolchain, FakeBehaviour::Complete);
        let done = rig.run(toolchain).await.expect("the restarted builder runs the next job");
        assert_eq!(done.output.code, 0);
        let stats = rig.stats.snapshot();
        assert_eq!(stats.builder_restarts, 1, "the supervisor restarted the builder once: {stats:?}");
        assert_eq!((stats.jobs_failed, stats.jobs_completed), (1, 1), "{stats:?}");
        assert_eq!(FakeCounts::get(&rig.counts.ran), 2, "both jobs reached a sandbox");
    }

    /// A toolchain whose jobs keep failing in the machinery is unpacked afresh
    /// after `AFTER` failures, and quarantined after `AFTER` more within the
    /// cool-down: its next job is refused with the quarantine error before any
    /// sandbox is acquired or run, while another toolchain's job still runs. So a
    /// broken toolchain stops costing a sandbox and a builder restart per job,
    /// without taking the server's other toolchains with it.
    #[actix_rt::test]
    async fn a_toolchain_that_keeps_failing_is_quarantined_while_others_run() {
        const AFTER: u32 = 2;
        let rig = rig(Quarantine::new(AFTER, Duration::from_secs(60))).await;
        let [broken, healthy] = &rig.toolchains;
        rig.behaviours.set(broken, FakeBehaviour::FailMachinery);
        for n in 1..=2 * AFTER {
            let failed = rig.run(broken).await;
            assert!(
                matches!(failed, Err(JobError::Sandbox(SandboxError::ThreadGone))),
                "failure {n} of {} reaches the sandbox and is answered with it: {failed:?}",
                2 * AFTER
            );
        }
        let ran = FakeCounts::get(&rig.counts.ran);
        let acquires = rig.stats.snapshot().sandbox_acquires;
        assert_eq!(ran, 2 * AFTER as usize, "every failing job ran in a sandbox");

        let refused = rig.run(broken).await;
        match &refused {
            Err(JobError::Quarantined(q)) => {
                assert_eq!(&q.archive_id, broken);
                assert_eq!(q.reason, SandboxError::ThreadGone.to_string(), "the refusal names the last failure");
            }
            other => panic!("a job of the quarantined toolchain was not refused: {other:?}"),
        }
        assert_eq!(FakeCounts::get(&rig.counts.ran), ran, "a quarantined toolchain's job ran in a sandbox");
        assert_eq!(rig.stats.snapshot().sandbox_acquires, acquires, "a quarantined toolchain's job acquired a sandbox");

        let done = rig.run(healthy).await.expect("another toolchain's job runs");
        assert_eq!(done.output.code, 0);
        assert_eq!(FakeCounts::get(&rig.counts.ran), ran + 1, "the other toolchain's job ran in a sandbox");
        let stats = rig.stats.snapshot();
        assert_eq!(stats.toolchains_quarantined, 1, "{stats:?}");
        assert_eq!(
            stats.toolchain_reunpacks, 2,
            "the root is forgotten at the re-unpack and at the quarantine: {stats:?}"
        );
        assert_eq!(stats.unpacks, 3, "the broken toolchain unpacked twice, the healthy one once: {stats:?}");
        assert_eq!(
            stats.builder_restarts,
            u64::from(2 * AFTER),
            "each machinery failure restarts the builder, a refusal does not: {stats:?}"
        );
    }

    /// A client that hangs up frees its builder: dropping the job's reply receiver
    /// (what actix-web does with a gone client's handler) makes the builder send
    /// the job's cancellation, the sandbox sees it and stops, and the builder,
    /// not restarted (a cancellation is not a machinery failure), takes the next
    /// job. Otherwise a gone client would hold a builder until the job's timeout.
    #[actix_rt::test]
    async fn a_job_whose_client_went_away_is_cancelled_and_the_builder_takes_the_next() {
        let rig = rig(Quarantine::new(3, Duration::from_secs(60))).await;
        let toolchain = &rig.toolchains[0];
        rig.behaviours.set(toolchain, FakeBehaviour::AwaitCancel);
        let answer = rig.submit(toolchain).await;
        until("the job runs in its sandbox", || FakeCounts::get(&rig.counts.ran) == 1).await;
        assert_eq!(FakeCounts::get(&rig.counts.cancelled), 0, "cancelled before the client went");

        drop(answer);
        until("the sandbox sees the job's cancellation", || FakeCounts::get(&rig.counts.cancelled) == 1).await;

        rig.behaviours.set(toolchain, FakeBehaviour::Complete);
        let done = rig.run(toolchain).await.expect("the builder runs the next job");
        assert_eq!(done.output.code, 0);
        let stats = rig.stats.snapshot();
        assert_eq!((stats.jobs_failed, stats.jobs_completed), (1, 1), "{stats:?}");
        assert_eq!(stats.builder_restarts, 0, "a cancellation is not a machinery failure: {stats:?}");
        assert_eq!(FakeCounts::get(&rig.counts.ran), 2, "both jobs reached a sandbox");
    }
}
