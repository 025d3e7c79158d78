//! The Observer: what the builders report about each job, kept for the metrics
//! (latency histograms) and the status page (live builders, recent jobs, errors).

use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::activity::{command_line, unix_now, Activity, JobRecord};
use super::phases::{Phase, SharedPhases};
use super::usage::CompilerLabels;
use crate::protocol::{CompileCommand, JobComplete, JobId};

/// Histogram buckets in seconds: 1 ms to ~65 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

/// Peak memory buckets in bytes: 1 MiB to 64 GiB, doubling.
fn memory_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets((1u64 << 20) as f64, 2.0, 17)
}

pub type PhaseLabels = [(&'static str, &'static str); 1];
/// `compiler` (see [`CompilerLabels`]) and `mode` (`user` or `system`).
pub type CpuLabels = [(&'static str, String); 2];
pub type CompilerLabel = [(&'static str, String); 1];

/// Shared by the builders, the cleaner hook and the HTTP facade.
#[derive(Debug)]
pub struct Observer {
    pub activity: Activity,
    /// `kiln_job_phase_seconds{phase}`.
    pub phase_seconds: Family<PhaseLabels, Histogram>,
    /// `kiln_job_duration_seconds`: accepted → answered.
    pub job_seconds: Histogram,
    /// `kiln_job_cpu_seconds{compiler,mode}`: CPU time of each job's processes.
    pub cpu_seconds: Family<CpuLabels, Histogram>,
    /// `kiln_job_peak_memory_bytes{compiler}`.
    pub peak_memory_bytes: Family<CompilerLabel, Histogram>,
    compilers: CompilerLabels,
}

impl Observer {
    pub fn new(builders: usize) -> Self {
        Observer {
            activity: Activity::new(builders),
            phase_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            job_seconds: Histogram::new(latency_buckets()),
            cpu_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            peak_memory_bytes: Family::new_with_constructor(|| Histogram::new(memory_buckets())),
            compilers: CompilerLabels::default(),
        }
    }

    /// A builder took job `job_id`: `command` over toolchain `archive_id`.
    pub fn job_started(
        &self,
        builder: usize,
        job_id: JobId,
        command: &CompileCommand,
        archive_id: &str,
        phases: &SharedPhases,
    ) {
        self.activity.started(builder, job_id, command_line(command), archive_id.to_owned(), phases.clone());
    }

    /// A builder finished a job (with a result or an error) that ran `executable`.
    pub fn job_finished(
        &self,
        builder: usize,
        job_id: JobId,
        command: String,
        executable: &str,
        phases: &SharedPhases,
        result: Result<&JobComplete, String>,
    ) {
        phases.stop();
        let timings = phases.timings();
        for phase in Phase::ALL {
            let ms = timings.get(phase);
            if phase != Phase::Cleanup && (ms > 0.0 || phase == Phase::Queue) {
                self.phase_seconds.get_or_create(&[("phase", phase.name())]).observe(ms / 1000.0);
            }
        }
        let total = phases.elapsed();
        self.job_seconds.observe(total.as_secs_f64());
        let usage = phases.usage();
        if let Some(usage) = usage {
            let compiler = self.compilers.label(executable);
            for (mode, ms) in [("user", usage.user_ms), ("system", usage.system_ms)] {
                self.cpu_seconds
                    .get_or_create(&[("compiler", compiler.clone()), ("mode", mode.to_owned())])
                    .observe(ms / 1000.0);
            }
            self.peak_memory_bytes.get_or_create(&[("compiler", compiler)]).observe(usage.peak_memory_bytes as f64);
        }
        let (outcome, ok) = match &result {
            Ok(done) => (format!("exit {}", done.output.code), true),
            Err(e) => (format!("error: {e}"), false),
        };
        if let Err(e) = result {
            self.activity.error(Some(job_id), e);
        }
        self.activity.finished(
            builder,
            JobRecord {
                job_id: job_id.0,
                builder,
                command,
                outcome,
                ok,
                finished_at: unix_now(),
                total_ms: total.as_secs_f64() * 1000.0,
                phases_ms: timings,
                usage,
            },
        );
    }

    /// A sandbox's leftovers were removed (after its job was answered).
    pub fn cleanup_took(&self, spent: Duration) {
        self.phase_seconds.get_or_create(&[("phase", Phase::Cleanup.name())]).observe(spent.as_secs_f64());
    }
}
