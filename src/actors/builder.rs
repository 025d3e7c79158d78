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
                deps.observer.job_finished(builder, job_id, command, &phases, report);
                let phases_ms = phases.timings();
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
