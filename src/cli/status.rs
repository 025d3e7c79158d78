//! `kiln status`: the running server's state as a few lines and tables.

use std::fmt::Write as _;

use super::{call, human_bytes, CliError};
use crate::observe::{Phase, StatusDocument};

pub async fn fetch(base: &str) -> Result<StatusDocument, CliError> {
    call(base, "/api/v1/kiln/status", false).await
}

fn ms(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.2}s", value / 1000.0)
    } else {
        format!("{value:.0}ms")
    }
}

pub fn render(doc: &StatusDocument) -> String {
    let s = &doc.snapshot;
    let c = &s.counters;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kiln {} · {} · {} backend · up {}s",
        s.version,
        if s.draining { "DRAINING" } else { "serving" },
        s.backend,
        s.uptime_secs
    );
    let _ = writeln!(
        out,
        "jobs       {} completed, {} failed, {} rejected, {} refused; {} in flight ({} running), {} assigned",
        c.jobs_completed,
        c.jobs_failed,
        c.jobs_rejected,
        s.jobs_refused_draining,
        s.jobs_in_flight,
        s.jobs_running,
        doc.assigned_jobs
    );
    if let (Some(archives), Some(roots)) = (&s.archives, &s.roots) {
        let _ = writeln!(
            out,
            "toolchains {} cached ({} of {}), {} unpacked ({} of {}); {} hits, {} misses, {} unpacks",
            archives.toolchains.len(),
            human_bytes(archives.used_bytes),
            human_bytes(archives.budget_bytes),
            roots.toolchains.len(),
            human_bytes(roots.used_bytes),
            human_bytes(roots.budget_bytes),
            c.toolchain_cache_hits,
            c.toolchain_cache_misses,
            c.unpacks
        );
    }
    if let Some(pool) = &s.pool {
        let idle: usize = pool.toolchains.iter().map(|t| t.idle).sum();
        let _ = writeln!(
            out,
            "sandboxes  {idle} idle over {} toolchains; warm hits {} of {}; {} builder restarts",
            pool.toolchains.len(),
            c.sandboxes_warm_hits,
            c.sandbox_acquires,
            c.builder_restarts
        );
    }
    let _ = match &s.scheduler_link {
        None => writeln!(out, "scheduler  kiln's own"),
        Some(link) => writeln!(
            out,
            "scheduler  {} {} ({} heartbeats failed)",
            link.scheduler_url,
            if link.connected { "connected" } else { "NOT CONNECTED" },
            link.heartbeats_failed
        ),
    };
    let _ = writeln!(out, "\n{:<8} {:<20} {:<10} {:>9}  COMMAND", "BUILDER", "JOB", "PHASE", "FOR");
    for b in &s.builders {
        let _ = match b.job_id {
            None => writeln!(out, "{:<8} {:<20}", b.id, "idle"),
            Some(job) => writeln!(
                out,
                "{:<8} {:<20} {:<10} {:>9}  {}",
                b.id,
                job,
                b.phase.map(Phase::name).unwrap_or("-"),
                b.elapsed_ms.map(ms).unwrap_or_default(),
                b.command.as_deref().unwrap_or("")
            ),
        };
    }
    if !s.recent_jobs.is_empty() {
        let _ = write!(out, "\n{:<20} {:<12} {:>8} {:>7} {:>9}", "RECENT JOB", "OUTCOME", "TOTAL", "CPU", "PEAK MEM");
        let phases = [Phase::Queue, Phase::Toolchain, Phase::Acquire, Phase::Inputs, Phase::Compile, Phase::Outputs];
        for phase in phases {
            let _ = write!(out, " {:>9}", phase.name().to_uppercase());
        }
        out.push('\n');
        for j in s.recent_jobs.iter().take(10) {
            let outcome: String = j.outcome.chars().take(12).collect();
            let (cpu, peak) = match j.usage {
                Some(u) => (ms(u.user_ms + u.system_ms), human_bytes(u.peak_memory_bytes)),
                None => (String::new(), String::new()),
            };
            let _ = write!(out, "{:<20} {:<12} {:>8} {cpu:>7} {peak:>9}", j.job_id, outcome, ms(j.total_ms));
            for phase in phases {
                let _ = write!(out, " {:>9}", ms(j.phases_ms.get(phase)));
            }
            out.push('\n');
        }
    }
    if let Some(e) = s.recent_errors.first() {
        let _ = writeln!(out, "\nlast error: {}", e.message);
    }
    out
}
