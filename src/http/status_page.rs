//! `/status`: one small server-rendered HTML page, no scripts, no external assets
//! (it works offline and behind any proxy), refreshed by `<meta http-equiv=refresh>`.
//! Everything interpolated is escaped: commands and ids come from clients.

use std::fmt::Write as _;

use crate::observe::activity::{BuilderView, JobRecord};
use crate::observe::{CacheView, Phase, StatusDocument};
use crate::stats::StatsSnapshot;

/// Seconds between reloads of the page.
const REFRESH_SECS: u32 = 2;

/// HTML-escapes `text` for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

use crate::observe::views::human_bytes as bytes;

fn ms(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.2} s", value / 1000.0)
    } else {
        format!("{value:.1} ms")
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;background:#fff;min-width:40%}\
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}\
code{font:12px ui-monospace,monospace}.ok{color:#17692d}.bad{color:#b00020}.idle{color:#888}\
.badge{display:inline-block;padding:.1em .5em;border-radius:.3em;color:#fff}\
.serving{background:#17692d}.draining{background:#b26a00}.muted{color:#777}";

/// Renders the whole page.
pub fn render(doc: &StatusDocument) -> String {
    let s = &doc.snapshot;
    let c = &s.counters;
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>kiln status</title>\
         <style>{STYLE}</style></head><body>"
    );
    let (class, state) = if s.draining { ("draining", "draining") } else { ("serving", "serving") };
    let _ = write!(
        h,
        "<h1>kiln {} <span id=\"state\" class=\"badge {class}\">{state}</span></h1>\
         <p class=\"muted\">backend <b>{}</b> · up {} s · {} builders · {} jobs in flight ({} running) · {} assigned, not yet run · page refreshes every {REFRESH_SECS} s</p>",
        escape(&s.version),
        escape(&s.backend),
        s.uptime_secs,
        s.builders.len(),
        s.jobs_in_flight,
        s.jobs_running,
        doc.assigned_jobs,
    );
    let acquires = c.sandbox_acquires.max(1);
    let _ = write!(
        h,
        "<p>jobs: <b class=\"ok\">{} completed</b> · <b class=\"{}\">{} failed</b> · {} rejected (queue full) · {} refused (draining) · \
         toolchain cache {} hits / {} misses · {} unpacks · sandbox warm hits {} of {} ({:.0}%) · {} builder restarts</p>",
        c.jobs_completed,
        if c.jobs_failed > 0 { "bad" } else { "ok" },
        c.jobs_failed,
        c.jobs_rejected,
        s.jobs_refused_draining,
        c.toolchain_cache_hits,
        c.toolchain_cache_misses,
        c.unpacks,
        c.sandboxes_warm_hits,
        c.sandbox_acquires,
        100.0 * c.sandboxes_warm_hits as f64 / acquires as f64,
        c.builder_restarts,
    );

    builders(&mut h, &s.builders);
    recent_jobs(&mut h, &s.recent_jobs);

    h.push_str("<h2>Toolchains</h2>");
    store(&mut h, "archives", "Cached archives", s.archives.as_ref());
    store(&mut h, "roots", "Unpacked roots", s.roots.as_ref());
    shared_store(&mut h, doc.toolchain_store.as_deref(), c);
    if let Some(roots) = &s.roots {
        for id in &roots.in_progress {
            let _ = write!(h, "<p>unpacking <code>{}</code> now</p>", escape(short(id)));
        }
    }

    h.push_str("<h2>Sandbox pool</h2>");
    match &s.pool {
        None => h.push_str("<p class=\"bad\">the sandbox pool did not answer</p>"),
        Some(pool) => {
            let _ = write!(
                h,
                "<p class=\"muted\">{} backend · {} kept warm per toolchain · at most {} idle</p>",
                escape(&pool.backend),
                pool.warm_per_toolchain,
                pool.max_idle
            );
            h.push_str("<table id=\"pool\"><tr><th>toolchain</th><th>idle</th><th>preparing</th></tr>");
            if pool.toolchains.is_empty() {
                h.push_str("<tr><td colspan=\"3\" class=\"idle\">nothing prepared</td></tr>");
            }
            for t in &pool.toolchains {
                let _ = write!(
                    h,
                    "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    escape(short(&t.archive_id)),
                    t.idle,
                    t.preparing
                );
            }
            h.push_str("</table>");
        }
    }

    h.push_str("<h2>Backend health</h2><ul>");
    let _ = write!(
        h,
        "<li>sandboxes prepared {}, cleaned {}, cleanup failures <b class=\"{}\">{}</b></li>",
        c.sandboxes_prepared,
        c.sandboxes_cleaned,
        if c.cleanup_failures > 0 { "bad" } else { "ok" },
        c.cleanup_failures
    );
    let _ = write!(
        h,
        "<li>builder restarts <b class=\"{}\">{}</b></li>",
        if c.builder_restarts > 0 { "bad" } else { "ok" },
        c.builder_restarts
    );
    match &s.scheduler_link {
        None => h.push_str("<li>scheduler: kiln's own (built in)</li>"),
        Some(link) => {
            let _ = write!(
                h,
                "<li id=\"scheduler\">scheduler <code>{}</code>: <b class=\"{}\">{}</b>, {} heartbeats failed, {} states reported ({} failed){}</li>",
                escape(&link.scheduler_url),
                if link.connected { "ok" } else { "bad" },
                if link.connected { "connected" } else { "not connected" },
                link.heartbeats_failed,
                link.states_reported,
                link.states_failed,
                link.last_error.as_deref().map(|e| format!(" · last error: {}", escape(e))).unwrap_or_default(),
            );
        }
    }
    h.push_str("</ul>");

    h.push_str("<h2>Recent errors</h2>");
    if s.recent_errors.is_empty() {
        h.push_str("<p class=\"idle\" id=\"errors\">none</p>");
    } else {
        h.push_str("<table id=\"errors\"><tr><th>at (unix)</th><th>job</th><th>error</th></tr>");
        for e in &s.recent_errors {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"bad\">{}</td></tr>",
                e.at,
                e.job_id.map(|id| id.to_string()).unwrap_or_default(),
                escape(&e.message)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<p class=\"muted\">Also: <a href=\"/metrics\">/metrics</a> · <a href=\"/api/v1/kiln/status\">/api/v1/kiln/status</a> · <a href=\"/healthz\">/healthz</a></p></body></html>\n");
    h
}

fn builders(h: &mut String, builders: &[BuilderView]) {
    h.push_str("<h2>Builders</h2><table id=\"builders\"><tr><th>#</th><th>job</th><th>phase</th><th>for</th><th>toolchain</th><th>command</th></tr>");
    for b in builders {
        match b.job_id {
            None => {
                let _ = write!(h, "<tr><td>{}</td><td colspan=\"5\" class=\"idle\">idle</td></tr>", b.id);
            }
            Some(job_id) => {
                let _ = write!(
                    h,
                    "<tr class=\"running\"><td>{}</td><td class=\"job\">{job_id}</td><td>{}</td><td class=\"num\">{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                    b.id,
                    b.phase.map(Phase::name).unwrap_or("-"),
                    b.elapsed_ms.map(ms).unwrap_or_default(),
                    escape(short(b.archive_id.as_deref().unwrap_or(""))),
                    escape(b.command.as_deref().unwrap_or("")),
                );
            }
        }
    }
    h.push_str("</table>");
}

fn recent_jobs(h: &mut String, jobs: &[JobRecord]) {
    let shown = [Phase::Queue, Phase::Toolchain, Phase::Acquire, Phase::Inputs, Phase::Compile, Phase::Outputs];
    h.push_str(
        "<h2>Recent jobs</h2><table id=\"recent\"><tr><th>job</th><th>builder</th><th>outcome</th><th>total</th>\
         <th title=\"CPU time of the job's processes: user + system\">cpu</th><th>peak memory</th>",
    );
    for phase in shown {
        let _ = write!(h, "<th>{}</th>", phase.name());
    }
    h.push_str("<th>command</th></tr>");
    if jobs.is_empty() {
        h.push_str("<tr><td colspan=\"13\" class=\"idle\">no job yet</td></tr>");
    }
    for j in jobs {
        let _ = write!(
            h,
            "<tr><td class=\"job\">{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"num\">{}</td>",
            j.job_id,
            j.builder,
            if j.ok { "ok" } else { "bad" },
            escape(&j.outcome),
            ms(j.total_ms)
        );
        match j.usage {
            Some(u) => {
                let _ = write!(
                    h,
                    "<td class=\"num\">{}</td><td class=\"num\">{}</td>",
                    ms(u.user_ms + u.system_ms),
                    bytes(u.peak_memory_bytes)
                );
            }
            None => h.push_str("<td></td><td></td>"),
        }
        for phase in shown {
            let _ = write!(h, "<td class=\"num\">{}</td>", ms(j.phases_ms.get(phase)));
        }
        let _ = write!(h, "<td><code>{}</code></td></tr>", escape(&j.command));
    }
    h.push_str("</table>");
}

/// The farm's store: how often it spared a client an upload, and how often it failed.
fn shared_store(h: &mut String, location: Option<&str>, c: &StatsSnapshot) {
    let Some(location) = location else {
        let _ = write!(
            h,
            "<p id=\"shared-store\" class=\"muted\">no shared store · {} uploads from clients</p>",
            c.toolchain_uploads
        );
        return;
    };
    let _ = write!(
        h,
        "<p id=\"shared-store\">shared store <code>{}</code>: {} uploads from clients · {} hits (uploads spared) · \
         {} published · {} fetched ({}) · <b class=\"{}\">{} failures</b></p>",
        escape(location),
        c.toolchain_uploads,
        c.toolchain_store_hits,
        c.toolchain_store_publishes,
        c.toolchain_store_fetches,
        bytes(c.toolchain_store_fetched_bytes),
        if c.toolchain_store_failures > 0 { "bad" } else { "ok" },
        c.toolchain_store_failures,
    );
}

fn store(h: &mut String, id: &str, title: &str, view: Option<&CacheView>) {
    let Some(view) = view else {
        let _ = write!(h, "<p class=\"bad\">{title}: the actor did not answer</p>");
        return;
    };
    let _ = write!(
        h,
        "<p><b>{title}</b>: {} of {} ({} toolchains)</p><table id=\"{id}\"><tr><th>toolchain</th><th>size</th><th>in use</th></tr>",
        bytes(view.used_bytes),
        bytes(view.budget_bytes),
        view.toolchains.len()
    );
    for t in &view.toolchains {
        let _ = write!(
            h,
            "<tr><td><code title=\"{}\">{}</code></td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&t.archive_id),
            escape(short(&t.archive_id)),
            bytes(t.bytes),
            if t.in_use { "yes" } else { "no" }
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
