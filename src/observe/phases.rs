//! The phases of one job and a clock that times them.
//!
//! A job's [`JobPhases`] is made by the facade when the job is queued and travels
//! with it: the Builder enters its own phases (toolchain, sandbox acquire) and the
//! sandbox the ones that happen inside it (inputs, compile, outputs). Entering a
//! phase closes the previous one. Backends that do not enter phases leave them at
//! zero; the Builder then counts the whole sandbox run as `compile`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::usage::JobUsage;

/// A stage of one job, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepted by the facade, waiting for a free builder.
    Queue,
    /// Pinning the archive and getting its unpacked root (unpacking it if first).
    Toolchain,
    /// Taking a prepared sandbox from the pool (preparing one if none is warm).
    Acquire,
    /// Unzipping and untarring the job's inputs into the sandbox.
    Inputs,
    /// The command itself, under the sandbox.
    Compile,
    /// Reading and compressing the outputs.
    Outputs,
    /// Removing the sandbox's leftovers (after the job is answered; metrics only).
    Cleanup,
}

impl Phase {
    pub const ALL: [Phase; 7] =
        [Phase::Queue, Phase::Toolchain, Phase::Acquire, Phase::Inputs, Phase::Compile, Phase::Outputs, Phase::Cleanup];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Queue => "queue",
            Phase::Toolchain => "toolchain",
            Phase::Acquire => "acquire",
            Phase::Inputs => "inputs",
            Phase::Compile => "compile",
            Phase::Outputs => "outputs",
            Phase::Cleanup => "cleanup",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
struct Clock {
    current: Option<(Phase, Instant)>,
    spent: [Duration; Phase::ALL.len()],
}

/// Times the phases of one job, and holds what its processes used; shared by the
/// builder and the sandbox thread.
#[derive(Debug)]
pub struct JobPhases {
    clock: Mutex<Clock>,
    started: Instant,
    usage: Mutex<Option<JobUsage>>,
}

pub type SharedPhases = Arc<JobPhases>;

impl Default for JobPhases {
    fn default() -> Self {
        JobPhases {
            clock: Mutex::new(Clock { current: None, spent: Default::default() }),
            started: Instant::now(),
            usage: Mutex::new(None),
        }
    }
}

impl JobPhases {
    /// A clock already in `phase` (the facade starts jobs in [`Phase::Queue`]).
    pub fn starting(phase: Phase) -> SharedPhases {
        let phases = JobPhases::default();
        phases.enter(phase);
        Arc::new(phases)
    }

    /// Closes the current phase and starts `phase`.
    pub fn enter(&self, phase: Phase) {
        let now = Instant::now();
        let mut clock = self.lock();
        if let Some((previous, since)) = clock.current.take() {
            clock.spent[previous.index()] += now - since;
        }
        clock.current = Some((phase, now));
    }

    /// Closes the current phase.
    pub fn stop(&self) {
        let mut clock = self.lock();
        if let Some((previous, since)) = clock.current.take() {
            clock.spent[previous.index()] += since.elapsed();
        }
    }

    /// Adds time spent in `phase` measured elsewhere.
    pub fn add(&self, phase: Phase, spent: Duration) {
        self.lock().spent[phase.index()] += spent;
    }

    pub fn current(&self) -> Option<Phase> {
        self.lock().current.map(|(phase, _)| phase)
    }

    pub fn spent(&self, phase: Phase) -> Duration {
        self.lock().spent[phase.index()]
    }

    /// Time since the job was accepted.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every phase with the time spent in it so far (the current one included).
    pub fn timings(&self) -> PhaseTimings {
        let clock = self.lock();
        let mut spent = clock.spent;
        if let Some((phase, since)) = clock.current {
            spent[phase.index()] += since.elapsed();
        }
        PhaseTimings(spent.map(|d| d.as_secs_f64() * 1000.0))
    }

    /// The sandbox measured what the job's processes used.
    pub fn record_usage(&self, usage: JobUsage) {
        *crate::sync::lock(&self.usage) = Some(usage);
    }

    /// What the job's processes used, once its sandbox measured it.
    pub fn usage(&self) -> Option<JobUsage> {
        *crate::sync::lock(&self.usage)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clock> {
        // A panic while holding this lock cannot leave the clock inconsistent.
        crate::sync::lock(&self.clock)
    }
}

/// Milliseconds per phase, in [`Phase::ALL`] order.
#[derive(Clone, Copy, Default, PartialEq)]
pub struct PhaseTimings(pub [f64; Phase::ALL.len()]);

/// `{queue: 0.1ms, toolchain: 496.1ms, ...}`, for log lines.
impl std::fmt::Debug for PhaseTimings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{")?;
        for (i, phase) in Phase::ALL.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{}: {:.1}ms", phase.name(), self.get(phase))?;
        }
        f.write_str("}")
    }
}

impl PhaseTimings {
    pub fn get(&self, phase: Phase) -> f64 {
        self.0[phase.index()]
    }
}

impl Serialize for PhaseTimings {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(Phase::ALL.len()))?;
        for phase in Phase::ALL {
            map.serialize_entry(phase.name(), &self.get(phase))?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for PhaseTimings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::HashMap::<String, f64>::deserialize(deserializer)?;
        Ok(PhaseTimings(Phase::ALL.map(|phase| map.get(phase.name()).copied().unwrap_or(0.0))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entering_a_phase_closes_the_previous_one() {
        let phases = JobPhases::starting(Phase::Queue);
        std::thread::sleep(Duration::from_millis(5));
        phases.enter(Phase::Compile);
        assert_eq!(phases.current(), Some(Phase::Compile));
        phases.add(Phase::Inputs, Duration::from_millis(3));
        phases.stop();
        assert_eq!(phases.current(), None);
        let t = phases.timings();
        assert!(t.get(Phase::Queue) >= 5.0, "{t:?}");
        assert_eq!(t.get(Phase::Inputs), 3.0);
        assert_eq!(t.get(Phase::Outputs), 0.0);
        let json = serde_json::to_value(t).unwrap();
        assert_eq!(json["inputs"], 3.0);
        let back: PhaseTimings = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
    }
}
