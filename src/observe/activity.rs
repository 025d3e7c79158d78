//! What kiln is doing right now and did lately: each builder's job, the last
//! jobs with their phase timings, the last errors. Bounded ring buffers behind a
//! `Mutex` held for a few field copies, never across an await.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::phases::{Phase, PhaseTimings, SharedPhases};
use super::usage::JobUsage;
use crate::protocol::{CompileCommand, JobId};

/// Finished jobs kept for the status page and `kiln status`.
pub const RECENT_JOBS: usize = 50;
/// Errors kept for the status page.
pub const RECENT_ERRORS: usize = 20;
/// A command line is cut to this many characters when recorded (clients send it).
const MAX_COMMAND_CHARS: usize = 200;

/// A job a builder is running.
#[derive(Debug, Clone)]
struct Running {
    job_id: JobId,
    command: String,
    archive_id: String,
    phases: SharedPhases,
}

/// One builder as the status page shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuilderView {
    pub id: usize,
    pub job_id: Option<u64>,
    pub command: Option<String>,
    pub archive_id: Option<String>,
    pub phase: Option<Phase>,
    pub elapsed_ms: Option<f64>,
}

/// A finished job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: u64,
    pub builder: usize,
    pub command: String,
    /// `exit 0`, `exit 1`, or `error: <why>`.
    pub outcome: String,
    pub ok: bool,
    /// Seconds since the epoch.
    pub finished_at: u64,
    pub total_ms: f64,
    pub phases_ms: PhaseTimings,
    /// What the job's processes used; absent when it never ran (or from a kiln
    /// that did not measure it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<JobUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub at: u64,
    pub job_id: Option<u64>,
    pub message: String,
}

#[derive(Debug, Default)]
struct State {
    builders: Vec<Option<Running>>,
    recent: VecDeque<JobRecord>,
    errors: VecDeque<ErrorRecord>,
}

#[derive(Debug, Default)]
pub struct Activity {
    state: Mutex<State>,
}

/// `gcc -c util.c -o util.o`, cut to a bounded length.
pub fn command_line(command: &CompileCommand) -> String {
    let mut line = command.executable.clone();
    for arg in &command.arguments {
        line.push(' ');
        line.push_str(arg);
    }
    match line.char_indices().nth(MAX_COMMAND_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

impl Activity {
    pub fn new(builders: usize) -> Self {
        Activity { state: Mutex::new(State { builders: vec![None; builders], ..State::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    pub fn started(&self, builder: usize, job_id: JobId, command: String, archive_id: String, phases: SharedPhases) {
        let mut state = self.lock();
        if let Some(slot) = state.builders.get_mut(builder) {
            *slot = Some(Running { job_id, command, archive_id, phases });
        }
    }

    pub fn finished(&self, builder: usize, record: JobRecord) {
        let mut state = self.lock();
        if let Some(slot) = state.builders.get_mut(builder) {
            *slot = None;
        }
        if state.recent.len() == RECENT_JOBS {
            state.recent.pop_back();
        }
        state.recent.push_front(record);
    }

    pub fn error(&self, job_id: Option<JobId>, message: String) {
        let mut state = self.lock();
        if state.errors.len() == RECENT_ERRORS {
            state.errors.pop_back();
        }
        state.errors.push_front(ErrorRecord { at: unix_now(), job_id: job_id.map(|id| id.0), message });
    }

    pub fn builders(&self) -> Vec<BuilderView> {
        let state = self.lock();
        state
            .builders
            .iter()
            .enumerate()
            .map(|(id, running)| match running {
                None => {
                    BuilderView { id, job_id: None, command: None, archive_id: None, phase: None, elapsed_ms: None }
                }
                Some(r) => BuilderView {
                    id,
                    job_id: Some(r.job_id.0),
                    command: Some(r.command.clone()),
                    archive_id: Some(r.archive_id.clone()),
                    phase: r.phases.current(),
                    elapsed_ms: Some(r.phases.elapsed().as_secs_f64() * 1000.0),
                },
            })
            .collect()
    }

    pub fn running(&self) -> usize {
        self.lock().builders.iter().filter(|b| b.is_some()).count()
    }

    /// Newest first.
    pub fn recent_jobs(&self) -> Vec<JobRecord> {
        self.lock().recent.iter().cloned().collect()
    }

    /// Newest first.
    pub fn recent_errors(&self) -> Vec<ErrorRecord> {
        self.lock().errors.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::phases::JobPhases;

    fn record(job_id: u64) -> JobRecord {
        JobRecord {
            job_id,
            builder: 0,
            command: "cc".into(),
            outcome: "exit 0".into(),
            ok: true,
            finished_at: 0,
            total_ms: 1.0,
            phases_ms: PhaseTimings::default(),
            usage: None,
        }
    }

    #[test]
    fn ring_buffers_are_bounded_and_newest_first() {
        let activity = Activity::new(2);
        activity.started(1, JobId(7), "cc -c a.c".into(), "abc".into(), JobPhases::starting(Phase::Toolchain));
        assert_eq!(activity.running(), 1);
        assert_eq!(activity.builders()[1].job_id, Some(7));
        assert_eq!(activity.builders()[1].phase, Some(Phase::Toolchain));
        for id in 0..(RECENT_JOBS as u64 + 10) {
            activity.finished(1, record(id));
        }
        assert_eq!(activity.running(), 0);
        let recent = activity.recent_jobs();
        assert_eq!(recent.len(), RECENT_JOBS);
        assert_eq!(recent[0].job_id, RECENT_JOBS as u64 + 9);
        for n in 0..(RECENT_ERRORS + 3) {
            activity.error(None, format!("e{n}"));
        }
        assert_eq!(activity.recent_errors().len(), RECENT_ERRORS);
        assert_eq!(activity.recent_errors()[0].message, format!("e{}", RECENT_ERRORS + 2));
    }

    #[test]
    fn long_commands_are_cut() {
        let command = CompileCommand {
            executable: "gcc".into(),
            arguments: vec!["x".repeat(500)],
            env_vars: vec![],
            cwd: "/".into(),
        };
        assert_eq!(command_line(&command).chars().count(), MAX_COMMAND_CHARS + 1);
    }
}
