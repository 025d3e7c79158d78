//! JobQueue: matches accepted jobs with idle builders, first come first served.
//!
//! The queue is bounded: when it is full the facade answers 503 at once instead of
//! letting requests pile up. A job whose client went away while it waited is
//! dropped before it reaches a builder, and holds no place in a full queue.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::builder::{Builder, RunJob};
use crate::jobs::{JobRequest, JobResult};
use crate::stats::Stats;

/// A job and the channel its answer goes back on. Dropping the sender unanswered
/// (e.g. a builder that died) wakes the facade with an error: no job can hang.
pub struct QueuedJob {
    pub request: JobRequest,
    pub reply: oneshot::Sender<JobResult>,
}

pub struct JobQueue {
    waiting: VecDeque<QueuedJob>,
    idle: Vec<Addr<Builder>>,
    max_waiting: usize,
    stats: Arc<Stats>,
}

impl JobQueue {
    pub fn new(max_waiting: usize, stats: Arc<Stats>) -> Self {
        JobQueue { waiting: VecDeque::new(), idle: Vec::new(), max_waiting, stats }
    }

    /// Drops the waiting jobs whose client went away.
    fn drop_abandoned(&mut self) {
        self.waiting.retain(|job| {
            let abandoned = job.reply.is_closed();
            if abandoned {
                tracing::info!(job_id = %job.request.job_id, "client left while the job waited; dropping it");
            }
            !abandoned
        });
    }

    /// Hands `job` to an idle builder, or gives it back if none can take it.
    fn dispatch(&mut self, mut job: QueuedJob) -> Option<QueuedJob> {
        while let Some(builder) = self.idle.pop() {
            match builder.try_send(RunJob(job)) {
                Ok(()) => return None,
                // A builder whose mailbox refuses is restarting; it re-registers.
                Err(SendError::Full(RunJob(back)) | SendError::Closed(RunJob(back))) => job = back,
            }
        }
        Some(job)
    }
}

impl Actor for JobQueue {
    type Context = Context<Self>;
}

/// The queue is full; the client should retry later or elsewhere.
#[derive(Debug, thiserror::Error)]
#[error("all builders are busy and {waiting} jobs are already waiting; retry later")]
pub struct QueueFull {
    pub waiting: usize,
}

/// Queue a job; the answer arrives on the returned receiver.
#[derive(Message)]
#[rtype(result = "Result<oneshot::Receiver<JobResult>, QueueFull>")]
pub struct SubmitJob(pub JobRequest);

impl Handler<SubmitJob> for JobQueue {
    type Result = Result<oneshot::Receiver<JobResult>, QueueFull>;

    fn handle(&mut self, msg: SubmitJob, _: &mut Context<Self>) -> Self::Result {
        if self.idle.is_empty() && self.waiting.len() >= self.max_waiting {
            // Jobs whose clients left hold no place: a burst of timed-out clients
            // must not turn the next live ones away.
            self.drop_abandoned();
        }
        if self.idle.is_empty() && self.waiting.len() >= self.max_waiting {
            Stats::bump(&self.stats.jobs_rejected);
            return Err(QueueFull { waiting: self.waiting.len() });
        }
        let (reply, answer) = oneshot::channel();
        if let Some(job) = self.dispatch(QueuedJob { request: msg.0, reply }) {
            self.waiting.push_back(job);
        }
        Ok(answer)
    }
}

/// A builder is free for the next job (sent when it starts, restarts, or finishes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct BuilderReady(pub Addr<Builder>);

impl Handler<BuilderReady> for JobQueue {
    type Result = ();

    fn handle(&mut self, msg: BuilderReady, _: &mut Context<Self>) {
        self.idle.push(msg.0);
        self.drop_abandoned();
        while !self.idle.is_empty() {
            let Some(job) = self.waiting.pop_front() else { break };
            if let Some(job) = self.dispatch(job) {
                self.waiting.push_front(job);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64) -> JobRequest {
        JobRequest::trivial(id, "a")
    }

    /// Backpressure: with every builder busy, `max_waiting` jobs wait and the next
    /// is refused at once (the facade answers 503), not queued without bound.
    #[actix_rt::test]
    async fn with_no_free_builder_a_full_queue_refuses_at_once() {
        let stats = Arc::new(Stats::default());
        let queue = JobQueue::new(2, stats.clone()).start();
        let waiting: Vec<_> = [
            queue.send(SubmitJob(request(1))).await.unwrap().unwrap(),
            queue.send(SubmitJob(request(2))).await.unwrap().unwrap(),
        ]
        .into();
        let refused = queue.send(SubmitJob(request(3))).await.unwrap().unwrap_err();
        assert_eq!(refused.waiting, 2);
        assert_eq!(stats.jobs_rejected.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(waiting);
    }

    /// Jobs whose clients went away while they waited hold no place in the queue:
    /// with every builder busy and the queue full of abandoned jobs, a new job is
    /// still queued, not refused.
    #[actix_rt::test]
    async fn abandoned_jobs_do_not_fill_the_queue() {
        let stats = Arc::new(Stats::default());
        let queue = JobQueue::new(2, stats.clone()).start();
        for id in 1..=2 {
            drop(queue.send(SubmitJob(request(id))).await.unwrap().unwrap());
        }
        let live = queue.send(SubmitJob(request(3))).await.unwrap();
        assert!(live.is_ok(), "a live job was refused for abandoned ones");
        assert_eq!(stats.jobs_rejected.load(std::sync::atomic::Ordering::Relaxed), 0);
        let second = queue.send(SubmitJob(request(4))).await.unwrap();
        assert!(second.is_ok(), "one live job waits, one place is left");
        let full = queue.send(SubmitJob(request(5))).await.unwrap().unwrap_err();
        assert_eq!(full.waiting, 2, "two live jobs fill the queue");
        drop((live, second));
    }
}
