//! `/metrics`: the Prometheus text exposition, encoded by `prometheus-client`.
//!
//! The latency histograms live in the [`Observer`] for the life of the server; the
//! rest is read from a [`Snapshot`] at scrape time (kiln's counters are plain
//! atomics in [`crate::stats`], shared with the JSON status) and registered in a
//! registry made for this one scrape.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

use super::observer::Observer;
use super::readiness::NotReady;
use super::snapshot::Snapshot;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    registry.register(name, help, ConstCounter::new(value));
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    registry.register(name, help, ConstGauge::new(value));
}

fn labelled<I: IntoIterator<Item = (Labels, i64)>>(registry: &mut Registry, name: &str, help: &str, values: I) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
    registry.register(name, help, family);
}

fn labelled_counter<I: IntoIterator<Item = (Labels, u64)>>(registry: &mut Registry, name: &str, help: &str, values: I) {
    let family = Family::<Labels, prometheus_client::metrics::counter::Counter>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

/// Encodes every metric kiln exports.
pub fn render(observer: &Observer, snap: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("kiln");
    let c = &snap.counters;
    let backend = || vec![("backend", snap.backend.clone())];

    r.register(
        "build",
        "kiln's version",
        prometheus_client::metrics::info::Info::new(vec![("version", snap.version.clone())]),
    );
    gauge(&mut r, "uptime_seconds", "Seconds since kiln started", snap.uptime_secs as i64);
    gauge(&mut r, "draining", "1 while kiln drains for shutdown (no new jobs)", snap.draining as i64);
    gauge(&mut r, "ready", "1 while kiln can take jobs (/readyz answers 200)", snap.not_ready.is_empty() as i64);
    labelled(
        &mut r,
        "not_ready",
        "1 while this reason keeps kiln from taking jobs: draining, sandbox_backend (cannot make a sandbox), disk_reserve (the data dir's file system is below kiln.disk_reserve)",
        NotReady::LABELS.map(|label| {
            let set = snap.not_ready.iter().any(|reason| reason.label() == label);
            (vec![("reason", label.to_owned())], set as i64)
        }),
    );

    // Jobs.
    labelled_counter(
        &mut r,
        "jobs",
        "Jobs by outcome: completed (ran to an exit code), failed (answered with an error), rejected (queue full), refused (draining)",
        [
            (vec![("outcome", "completed".to_owned())], c.jobs_completed),
            (vec![("outcome", "failed".to_owned())], c.jobs_failed),
            (vec![("outcome", "rejected".to_owned())], c.jobs_rejected),
            (vec![("outcome", "refused".to_owned())], snap.jobs_refused_draining),
        ],
    );
    gauge(&mut r, "jobs_in_flight", "run_job requests accepted and not yet answered", snap.jobs_in_flight as i64);
    gauge(
        &mut r,
        "jobs_running",
        "Jobs a builder is running: the busy slots (kiln_builders is the total)",
        snap.jobs_running as i64,
    );
    r.register_with_unit(
        "job_phase",
        "Time jobs spent in each phase: queue, toolchain, acquire, inputs, compile, outputs, cleanup",
        Unit::Seconds,
        observer.phase_seconds.clone(),
    );
    r.register_with_unit(
        "job_duration",
        "Time from accepting a job to answering it",
        Unit::Seconds,
        observer.job_seconds.clone(),
    );
    r.register_with_unit(
        "job_cpu",
        "CPU time of each job's processes (its sandbox's own start-up included), by compiler and mode (user, system)",
        Unit::Seconds,
        observer.cpu_seconds.clone(),
    );
    r.register_with_unit(
        "job_peak_memory",
        "Each job's peak memory by compiler: its cgroup's high-water mark where it has one, else its largest process's",
        Unit::Bytes,
        observer.peak_memory_bytes.clone(),
    );

    // Builders.
    gauge(
        &mut r,
        "builders",
        "Builders (jobs that can run at once): the slots in total (kiln_jobs_running are busy)",
        snap.builders.len() as i64,
    );
    counter(&mut r, "builder_restarts", "Builders restarted by their supervisor", c.builder_restarts);
    counter(
        &mut r,
        "toolchain_reunpacks",
        "Unpacked roots forgotten after repeated machinery failures of their jobs (to be unpacked afresh, and again when a toolchain is quarantined)",
        c.toolchain_reunpacks,
    );
    counter(&mut r, "toolchain_quarantines", "Toolchains put in quarantine", c.toolchains_quarantined);
    gauge(
        &mut r,
        "toolchains_quarantined",
        "Toolchains whose jobs are refused (503) until their cool-down ends",
        snap.toolchain_health.iter().filter(|h| h.quarantined_secs_left > 0).count() as i64,
    );

    // Toolchains.
    if let Some(archives) = &snap.archives {
        gauge(&mut r, "toolchain_cache_bytes", "Bytes of toolchain archives cached", archives.used_bytes as i64);
        gauge(&mut r, "toolchain_cache_budget_bytes", "toolchain_cache_size", archives.budget_bytes as i64);
        gauge(&mut r, "toolchain_cache_archives", "Toolchain archives cached", archives.toolchains.len() as i64);
    }
    counter(&mut r, "toolchain_cache_hits", "assign_job found the toolchain cached", c.toolchain_cache_hits);
    counter(&mut r, "toolchain_uploads", "Toolchain archives clients uploaded", c.toolchain_uploads);
    counter(
        &mut r,
        "toolchain_arrival_waits",
        "assign_job found the toolchain already on its way: the client need not send it again",
        c.toolchain_arrival_waits,
    );
    counter(
        &mut r,
        "toolchain_arrivals_failed",
        "Toolchain uploads or fetches that failed the jobs waiting for them",
        c.toolchain_arrivals_failed,
    );
    counter(
        &mut r,
        "toolchain_store_hits",
        "assign_job found the toolchain in the shared store, not here: the client need not send it",
        c.toolchain_store_hits,
    );
    counter(
        &mut r,
        "toolchain_store_publishes",
        "Toolchains published to the shared store",
        c.toolchain_store_publishes,
    );
    counter(&mut r, "toolchain_store_fetches", "Toolchains fetched from the shared store", c.toolchain_store_fetches);
    gauge(
        &mut r,
        "toolchain_store_bytes",
        "Bytes of archives in the shared store when this kiln last published to it",
        c.toolchain_store_bytes as i64,
    );
    counter(
        &mut r,
        "toolchain_store_evictions",
        "Archives this kiln removed from the shared store to keep it within store_max_bytes",
        c.toolchain_store_evictions,
    );
    counter(
        &mut r,
        "toolchain_store_fetched_bytes",
        "Bytes of toolchains fetched from the shared store",
        c.toolchain_store_fetched_bytes,
    );
    counter(
        &mut r,
        "toolchain_store_failures",
        "Lookups, publishes and fetches of the shared store that failed or timed out",
        c.toolchain_store_failures,
    );
    counter(
        &mut r,
        "toolchain_cache_misses",
        "assign_job asked the client for the toolchain",
        c.toolchain_cache_misses,
    );
    counter(&mut r, "toolchains_stored", "Toolchain archives accepted into the cache", c.toolchains_stored);
    counter(&mut r, "toolchain_cache_evictions", "Toolchain archives evicted from the cache", c.toolchains_evicted);
    counter(&mut r, "toolchain_unpacks", "Toolchain unpacks started", c.unpacks);
    counter(&mut r, "unpacked_root_evictions", "Unpacked toolchain roots evicted", c.roots_evicted);
    if let Some(roots) = &snap.roots {
        gauge(&mut r, "unpacked_roots", "Unpacked toolchain roots on disk", roots.toolchains.len() as i64);
        gauge(&mut r, "unpacked_bytes", "Bytes of unpacked toolchain roots", roots.used_bytes as i64);
        gauge(&mut r, "unpacked_budget_bytes", "kiln.toolchains.unpacked_bytes", roots.budget_bytes as i64);
        gauge(&mut r, "unpacked_inodes", "Files, directories and links of unpacked roots", roots.used_inodes as i64);
        if let Some(budget) = roots.budget_inodes {
            gauge(&mut r, "unpacked_budget_inodes", "kiln.toolchains.unpacked_inodes", budget as i64);
        }
        if let Some(disk) = &roots.disk {
            let free = "free to unprivileged writers (statvfs f_bavail / f_favail)";
            let (bytes, inodes) = (disk.space.free_bytes as i64, disk.space.free_inodes as i64);
            gauge(&mut r, "data_dir_free_bytes", &format!("Bytes of the data dir's file system {free}"), bytes);
            gauge(&mut r, "data_dir_free_inodes", &format!("Inodes of the data dir's file system {free}"), inodes);
            let kept = "uploads and unpacks leave (kiln.disk_reserve)";
            gauge(&mut r, "data_dir_reserved_bytes", &format!("Free bytes {kept}"), disk.reserved_bytes as i64);
            gauge(&mut r, "data_dir_reserved_inodes", &format!("Free inodes {kept}"), disk.reserved_inodes as i64);
        }
    }
    counter(
        &mut r,
        "disk_reserve_refusals",
        "Uploads and unpacks refused because they would eat into the data dir's reserve",
        c.disk_reserve_refusals,
    );

    // Sandbox pool, per backend.
    if let Some(pool) = &snap.pool {
        let idle: usize = pool.toolchains.iter().map(|t| t.idle).sum();
        let preparing: usize = pool.toolchains.iter().map(|t| t.preparing).sum();
        labelled(&mut r, "pool_idle_sandboxes", "Prepared sandboxes waiting for a job", [(backend(), idle as i64)]);
        labelled(&mut r, "pool_preparing_sandboxes", "Sandboxes being prepared", [(backend(), preparing as i64)]);
        labelled(
            &mut r,
            "pool_warm_toolchains",
            "Toolchains the pool keeps warm",
            [(backend(), pool.toolchains.len() as i64)],
        );
    }
    labelled_counter(
        &mut r,
        "sandbox_acquires",
        "Sandboxes handed to jobs; warm hit rate = sandbox_warm_hits / sandbox_acquires",
        [(backend(), c.sandbox_acquires)],
    );
    labelled_counter(
        &mut r,
        "sandbox_warm_hits",
        "Sandboxes handed out already prepared",
        [(backend(), c.sandboxes_warm_hits)],
    );
    labelled_counter(&mut r, "sandboxes_prepared", "Sandboxes prepared", [(backend(), c.sandboxes_prepared)]);
    counter(&mut r, "sandboxes_cleaned", "Sandbox directories removed", c.sandboxes_cleaned);
    if snap.backend == "docker" {
        gauge(&mut r, "docker_unreachable", "1 while the docker daemon does not answer", c.docker_unreachable as i64);
    }
    counter(&mut r, "cleanup_failures", "Sandbox directory removals that failed", c.cleanup_failures);

    // The link to upstream's scheduler, when there is one.
    if let Some(link) = &snap.scheduler_link {
        gauge(
            &mut r,
            "scheduler_connected",
            "1 if the last heartbeat to upstream's scheduler was answered",
            link.connected as i64,
        );
        counter(
            &mut r,
            "scheduler_heartbeats_failed",
            "Heartbeats upstream's scheduler did not answer",
            link.heartbeats_failed,
        );
        gauge(
            &mut r,
            "scheduler_last_heartbeat_timestamp_seconds",
            "When the last heartbeat was answered (0: never)",
            link.last_heartbeat_at.unwrap_or(0) as i64,
        );
        counter(&mut r, "scheduler_states_reported", "Job states upstream's scheduler took", link.states_reported);
        counter(&mut r, "scheduler_states_failed", "Job state reports that failed", link.states_failed);
    }

    let mut text = String::new();
    encode(&mut text, &r)?;
    Ok(text)
}
