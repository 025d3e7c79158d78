//! Load generator for kiln or any sccache-dist build server, through a scheduler
//! (kiln's own or upstream's), on 127.0.0.1 only.
//!
//! ```sh
//! cargo run --release --example loadgen -- --scheduler http://127.0.0.1:10600 --clients 4 --jobs 400 \
//!     --server-pid $(pgrep -f 'kiln serve') --plot /tmp/latency.svg
//! ```
//!
//! N clients run M jobs over a mix of C files (tiny, medium, large), each job as the
//! sccache client does it: `alloc_job` at the scheduler (retried after `Fail`, counted
//! as busy), the toolchain when the server asks for it, `run_job` over HTTPS. Before
//! the load, each kind is compiled locally with the same gcc (`bare`): the physical
//! limit, which the report subtracts to give kiln's overhead. After it, the same jobs
//! run locally with the same parallelism (`local`), the throughput baseline.
//!
//! `--direct-key <hex>` skips the scheduler after the first job: the generator signs
//! job tokens with the server's `job_token_key` and assigns jobs itself, as a
//! scheduler would, so concurrency is not capped by the scheduler's slot count.
//!
//! `--soak` mixes in failing jobs (a compile error) and hostile ones (an input path
//! escaping with `..`, a job that writes outside its cwd) and checks every one gets
//! the answer it should: nothing lost.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use kiln::client::{Client, InputsBuilder};
use kiln::config::INSECURE_CLIENT_TOKEN;
use kiln::package::{package_toolchain, PackageOptions};
use kiln::protocol::{
    archive_id_of, AllocJobHttpResponse, CompileCommand, JobId, JobKey, RunJobHttpRequest, RunJobResult, ServerId,
    Toolchain,
};
use serde::Serialize;

#[derive(Parser, Debug)]
struct Args {
    /// Scheduler URL (kiln's own scheduler or upstream's), on loopback.
    #[arg(long, default_value = "http://127.0.0.1:10600")]
    scheduler: String,
    /// The scheduler's client token.
    #[arg(long, default_value = INSECURE_CLIENT_TOKEN)]
    client_token: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Jobs in all.
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// Stop starting jobs after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
    /// Comma-separated job kinds, taken in turn: tiny, medium, large.
    #[arg(long, default_value = "tiny")]
    mix: String,
    /// A toolchain archive; default: the system gcc, packed once.
    #[arg(long)]
    toolchain: Option<PathBuf>,
    /// Assign jobs directly with this job_token_key (hex) instead of the scheduler.
    #[arg(long)]
    direct_key: Option<String>,
    /// The server's pid, for RSS and CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A cgroup holding the server alone (cgroup v1 cpuacct, or v2): its CPU time,
    /// the sandboxes' and the compiles' included, whoever reaps them.
    #[arg(long)]
    server_cgroup: Option<PathBuf>,
    /// Local runs per kind for the bare-compile baseline.
    #[arg(long, default_value_t = 20)]
    bare_runs: usize,
    /// Skip the local throughput run.
    #[arg(long)]
    no_local: bool,
    /// Mix in failing and hostile jobs and check each gets its answer.
    #[arg(long)]
    soak: bool,
    /// Offer h2 in ALPN, as the sccache client (reqwest) does; the server picks.
    #[arg(long)]
    http2: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write a latency histogram and time series as SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Tiny,
    Medium,
    Large,
    /// A compile error: exit code 1, no object.
    Failing,
    /// An input path with `..`: refused with 400.
    Hostile,
}

/// A compile ready to send: its preprocessed source and command.
struct JobSpec {
    kind: Kind,
    inputs: Vec<u8>,
    request: RunJobHttpRequest,
    /// The same compile run locally (`gcc` args, in `dir`).
    local_args: Vec<String>,
    dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
struct Sample {
    kind: Kind,
    /// Seconds since the load started.
    at: f64,
    latency_ms: f64,
    /// The part of `latency_ms` spent getting the job placed.
    place_ms: f64,
    ok: bool,
}

#[derive(Debug, Default, Serialize)]
struct Percentiles {
    count: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct KindReport {
    kind: Kind,
    kiln: Percentiles,
    bare: Percentiles,
    /// kiln p50 − bare p50: what the server adds to a compile.
    overhead_p50_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    clients: usize,
    jobs: usize,
    errors: usize,
    lost: usize,
    busy_retries: usize,
    first_job_ms: f64,
    wall_secs: f64,
    jobs_per_sec: f64,
    local_jobs_per_sec: Option<f64>,
    /// kiln's throughput over local gcc's at the same parallelism.
    throughput_ratio: Option<f64>,
    overall: Percentiles,
    /// alloc_job at the scheduler (or assign_job with --direct-key).
    placement: Percentiles,
    kinds: Vec<KindReport>,
    server_rss_kib_before: Option<u64>,
    server_rss_kib_after: Option<u64>,
    server_cpu_secs: Option<f64>,
    /// CPU of the server and of its reaped children (bubblewrap and everything in
    /// the sandboxes, the compiles included) during the load.
    server_cpu_with_children_secs: Option<f64>,
    /// CPU of one bare local compile (the first kind), from the children's rusage.
    bare_cpu_ms: f64,
    /// CPU of the server's cgroup during the load (`--server-cgroup`).
    server_cgroup_cpu_secs: Option<f64>,
    /// Server CPU per job beyond the compile itself: the cgroup's CPU (else the
    /// server's with its reaped children) per job, minus `bare_cpu_ms`.
    server_cpu_per_job_beyond_compile_ms: Option<f64>,
}

fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Percentiles { count: ms.len(), p50_ms: at(0.50), p95_ms: at(0.95), p99_ms: at(0.99) }
}

fn source_of(kind: Kind) -> String {
    let functions = match kind {
        Kind::Tiny | Kind::Failing | Kind::Hostile => 3,
        Kind::Medium => 300,
        Kind::Large => 3000,
    };
    let mut src = String::from("#include <stdio.h>\n#include <string.h>\n");
    for i in 0..functions {
        src.push_str(&format!(
            "int f{i}(const char *s, int x) {{ int n = (int)strlen(s); for (int k = 0; k < n; k++) x = x * 31 + s[k] + {i}; return x; }}\n"
        ));
    }
    if kind == Kind::Failing {
        src.push_str("int broken(void) { return undefined_symbol_here; }\n");
    }
    src.push_str("int print_it(void) { return printf(\"%d\\n\", f0(\"kiln\", 1)); }\n");
    src
}

fn job_spec(kind: Kind, root: &Path) -> anyhow::Result<JobSpec> {
    let dir = root.join(format!("{kind:?}").to_lowercase());
    std::fs::create_dir_all(&dir)?;
    let source = dir.join("unit.c");
    std::fs::write(&source, source_of(kind))?;
    let preprocessed = dir.join("unit.i");
    let status = std::process::Command::new("gcc").arg("-E").arg(&source).arg("-o").arg(&preprocessed).status()?;
    if !status.success() {
        bail!("preprocessing {} failed", source.display());
    }
    let object = dir.join("unit.o");
    let mut inputs = InputsBuilder::new();
    inputs.add_host_file(&preprocessed)?;
    let mut inputs = inputs.finish()?;
    if kind == Kind::Hostile {
        inputs = with_escaping_entry(inputs)?;
    }
    let local_args: Vec<String> = vec!["-O2".into(), "-c".into(), "unit.i".into(), "-o".into(), "unit.o".into()];
    let request = RunJobHttpRequest {
        command: CompileCommand {
            executable: "/usr/bin/gcc".into(),
            arguments: local_args.clone(),
            env_vars: vec![("PATH".into(), "/usr/bin:/bin".into()), ("LC_ALL".into(), "C".into())],
            cwd: dir.to_str().context("non-UTF-8 temp dir")?.to_owned(),
        },
        outputs: vec![object.to_str().unwrap().to_owned()],
    };
    Ok(JobSpec { kind, inputs, request, local_args, dir })
}

/// Appends an entry named `../../../tmp/kiln-loadgen-escape` to an inputs tar. The
/// tar crate refuses to write such a name, so the header's bytes are set directly,
/// as a hostile client would.
fn with_escaping_entry(tar: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    const NAME: &[u8] = b"../../../tmp/kiln-loadgen-escape";
    const BODY: &[u8] = b"must never land";
    // Drop the two zero blocks that end the archive, append, end it again.
    let mut tar = tar[..tar.len().saturating_sub(1024)].to_vec();
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..NAME.len()].copy_from_slice(NAME);
    header.set_size(BODY.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, BODY)?;
    tar.extend(builder.into_inner()?);
    Ok(tar)
}

/// How jobs are placed: through the scheduler, or by us with the server's key.
enum Placement {
    Scheduler { client: Client, token: String },
    Direct { key: JobKey, next: std::cell::Cell<u64> },
}

struct Target {
    placement: Placement,
    toolchain: Toolchain,
    archive: bytes::Bytes,
    server: std::cell::RefCell<Option<(ServerId, Rc<Client>)>>,
    cert_source: Client,
    busy_retries: AtomicUsize,
    /// Offer h2 to the server (`--http2`).
    http2: bool,
}

impl Target {
    /// One job end to end; returns whether it got the answer its kind should get,
    /// and how long placing it took (alloc_job or assign_job).
    async fn run(&self, spec: &JobSpec) -> anyhow::Result<(bool, f64)> {
        let placing = Instant::now();
        let (server, job_id, token, need_toolchain) = self.place().await?;
        let place_ms = placing.elapsed().as_secs_f64() * 1000.0;
        if need_toolchain {
            server.submit_toolchain(job_id, &token, self.archive.clone()).await?;
        }
        let result = server.run_job(job_id, &token, &spec.request, &spec.inputs).await;
        let ok = match (spec.kind, result) {
            (Kind::Hostile, Err(kiln::client::ClientError::Server { status: 400, .. })) => true,
            (Kind::Hostile, _) => false,
            (Kind::Failing, Ok(RunJobResult::Complete(done))) => done.output.code != 0 && done.outputs.is_empty(),
            (_, Ok(RunJobResult::Complete(done))) => done.output.code == 0 && done.outputs.len() == 1,
            (_, Ok(RunJobResult::JobNotFound)) => false,
            (_, Err(e)) => return Err(e.into()),
        };
        Ok((ok, place_ms))
    }

    async fn place(&self) -> anyhow::Result<(Rc<Client>, JobId, String, bool)> {
        match &self.placement {
            Placement::Scheduler { client, token } => loop {
                match client.alloc_job(token, &self.toolchain).await? {
                    AllocJobHttpResponse::Success { job_alloc, need_toolchain, .. } => {
                        let server = self.server_for(job_alloc.server_id).await?;
                        return Ok((server, job_alloc.job_id, job_alloc.auth, need_toolchain));
                    }
                    AllocJobHttpResponse::Fail { .. } => {
                        self.busy_retries.fetch_add(1, Ordering::Relaxed);
                        actix_rt::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            },
            Placement::Direct { key, next } => {
                let job_id = JobId(next.get());
                next.set(job_id.0 + 1);
                let token = key.token_for(job_id)?;
                let (_, server) = self.server.borrow().clone().context("no server known yet")?;
                let assigned = server.assign_job(job_id, &token, &self.toolchain).await?;
                Ok((server, job_id, token, assigned.need_toolchain))
            }
        }
    }

    async fn server_for(&self, server_id: ServerId) -> anyhow::Result<Rc<Client>> {
        if let Some((id, client)) = &*self.server.borrow() {
            if *id == server_id {
                return Ok(client.clone());
            }
        }
        let cert = self.cert_source.server_certificate(server_id).await?;
        let url = format!("https://{}", server_id.addr());
        let client = match self.http2 {
            true => Client::trusting_offering_h2(url, &cert.cert_pem)?,
            false => Client::trusting(url, &cert.cert_pem)?,
        };
        let client = Rc::new(client);
        *self.server.borrow_mut() = Some((server_id, client.clone()));
        Ok(client)
    }
}

/// (RSS in KiB, CPU seconds, CPU seconds with reaped children) of a process.
fn process_usage(pid: u32) -> Option<(u64, f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: utime, stime, cutime, cstime are
    // the 14th to 17th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let own = tick(11)? + tick(12)?;
    let children = tick(13)? + tick(14)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Some((rss, own / hz, (own + children) / hz))
}

/// CPU seconds used so far by the processes of a cgroup (v1 `cpuacct.usage` in
/// ns, v2 `cpu.stat` `usage_usec`).
fn cgroup_cpu_secs(dir: &Path) -> Option<f64> {
    if let Ok(ns) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
        return ns.trim().parse::<f64>().ok().map(|ns| ns / 1e9);
    }
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
    usec.trim().parse::<f64>().ok().map(|us| us / 1e6)
}

/// CPU seconds of this process's reaped children so far.
fn children_cpu_secs() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
    usage.map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

async fn bare_compile(spec: &JobSpec) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = tokio::process::Command::new("gcc").args(&spec.local_args).current_dir(&spec.dir).status().await?;
    if status.success() != (spec.kind != Kind::Failing) {
        bail!("local gcc on the {:?} job exited {status}", spec.kind);
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for url in [&args.scheduler] {
        if !(url.contains("127.0.0.1") || url.contains("[::1]") || url.contains("localhost")) {
            bail!("loadgen only targets loopback; {url} is not");
        }
    }
    let tmp = tempfile::Builder::new().prefix("kiln-loadgen-").tempdir()?;
    let archive_path = match &args.toolchain {
        Some(path) => path.clone(),
        None => {
            let path = tmp.path().join("gcc.tar.gz");
            package_toolchain(&PackageOptions { compiler: "/usr/bin/gcc".into(), extra: vec![] }, &path)?;
            path
        }
    };
    let archive = bytes::Bytes::from(std::fs::read(&archive_path)?);
    let toolchain = Toolchain { archive_id: archive_id_of(&archive) };

    let mut kinds: Vec<Kind> = Vec::new();
    for name in args.mix.split(',') {
        kinds.push(match name.trim() {
            "tiny" => Kind::Tiny,
            "medium" => Kind::Medium,
            "large" => Kind::Large,
            other => bail!("unknown job kind {other:?} (tiny, medium, large)"),
        });
    }
    if args.soak {
        kinds.extend([Kind::Failing, Kind::Hostile]);
    }
    let specs: Vec<JobSpec> = kinds.iter().map(|&k| job_spec(k, tmp.path())).collect::<anyhow::Result<_>>()?;

    // The physical limit: each kind compiled locally, one at a time.
    let mut bare: Vec<Vec<f64>> = Vec::new();
    let mut bare_cpu_ms = 0.0;
    for (i, spec) in specs.iter().enumerate() {
        let mut runs = Vec::new();
        let cpu_before = children_cpu_secs();
        for _ in 0..args.bare_runs {
            runs.push(bare_compile(spec).await?);
        }
        if i == 0 {
            bare_cpu_ms = (children_cpu_secs() - cpu_before) * 1000.0 / args.bare_runs.max(1) as f64;
        }
        bare.push(runs);
    }

    let placement = match &args.direct_key {
        Some(hex) => {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<_, _>>()
                .context("--direct-key must be hex")?;
            Placement::Direct { key: JobKey::from_bytes(&bytes)?, next: std::cell::Cell::new(1 << 62) }
        }
        None => Placement::Scheduler { client: Client::new(args.scheduler.clone()), token: args.client_token.clone() },
    };
    let target = Rc::new(Target {
        placement,
        toolchain,
        archive,
        server: Default::default(),
        cert_source: Client::new(args.scheduler.clone()),
        busy_retries: AtomicUsize::new(0),
        http2: args.http2,
    });
    // The first job goes through the scheduler either way: it names the server and
    // its certificate, and brings the toolchain (the cold start).
    let first = Instant::now();
    let warmup = Target {
        placement: Placement::Scheduler {
            client: Client::new(args.scheduler.clone()),
            token: args.client_token.clone(),
        },
        toolchain: target.toolchain.clone(),
        archive: target.archive.clone(),
        server: Default::default(),
        cert_source: Client::new(args.scheduler.clone()),
        busy_retries: AtomicUsize::new(0),
        http2: args.http2,
    };
    if !warmup.run(&specs[0]).await.context("the first job")?.0 {
        bail!("the first job did not compile");
    }
    let first_job_ms = first.elapsed().as_secs_f64() * 1000.0;
    *target.server.borrow_mut() = warmup.server.borrow().clone();

    let before = args.server_pid.and_then(process_usage);
    let cgroup_before = args.server_cgroup.as_deref().and_then(cgroup_cpu_secs);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_secs);
    let next = Rc::new(AtomicUsize::new(0));
    let specs = Rc::new(specs);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (target, next, specs, jobs) = (target.clone(), next.clone(), specs.clone(), args.jobs);
        tasks.push(actix_rt::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs || Instant::now() > deadline {
                    break;
                }
                let spec = &specs[i % specs.len()];
                let t0 = Instant::now();
                let outcome = target.run(spec).await;
                let (ok, place_ms) = match &outcome {
                    Ok((ok, place_ms)) => (*ok, *place_ms),
                    Err(e) => {
                        errors.push(format!("{e:#}"));
                        (false, 0.0)
                    }
                };
                samples.push(Sample {
                    kind: spec.kind,
                    at: t0.duration_since(started).as_secs_f64(),
                    latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
                    place_ms,
                    ok,
                });
            }
            (samples, errors)
        }));
    }
    let mut samples = Vec::new();
    let mut error_messages = Vec::new();
    for task in tasks {
        let (s, e) = task.await?;
        samples.extend(s);
        error_messages.extend(e);
    }
    let wall = started.elapsed().as_secs_f64();
    let after = args.server_pid.and_then(process_usage);
    let cgroup_cpu = cgroup_before.zip(args.server_cgroup.as_deref().and_then(cgroup_cpu_secs)).map(|(b, a)| a - b);

    // The throughput baseline: the same jobs, locally, with the same parallelism.
    let local_jobs_per_sec = if args.no_local {
        None
    } else {
        let local_started = Instant::now();
        let next = Rc::new(AtomicUsize::new(0));
        let count = samples.len();
        let mut tasks = Vec::new();
        for _ in 0..args.clients {
            let (next, specs) = (next.clone(), specs.clone());
            tasks.push(actix_rt::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let spec = &specs[i % specs.len()];
                    if spec.kind != Kind::Hostile {
                        bare_compile(spec).await?;
                    }
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        Some(count as f64 / local_started.elapsed().as_secs_f64())
    };

    let lost = args.jobs.min(samples.len()).saturating_sub(samples.len());
    let errors = samples.iter().filter(|s| !s.ok).count();
    let kind_reports = specs
        .iter()
        .zip(&bare)
        .map(|(spec, bare)| {
            let kiln = percentiles(samples.iter().filter(|s| s.kind == spec.kind).map(|s| s.latency_ms).collect());
            let bare = percentiles(bare.clone());
            let overhead_p50_ms = kiln.p50_ms - bare.p50_ms;
            KindReport { kind: spec.kind, kiln, bare, overhead_p50_ms }
        })
        .collect();
    let jobs_per_sec = samples.len() as f64 / wall;
    let report = Report {
        clients: args.clients,
        jobs: samples.len(),
        errors,
        lost,
        busy_retries: target.busy_retries.load(Ordering::Relaxed),
        first_job_ms,
        wall_secs: wall,
        jobs_per_sec,
        local_jobs_per_sec,
        throughput_ratio: local_jobs_per_sec.map(|local| jobs_per_sec / local),
        overall: percentiles(samples.iter().map(|s| s.latency_ms).collect()),
        placement: percentiles(samples.iter().map(|s| s.place_ms).collect()),
        kinds: kind_reports,
        server_rss_kib_before: before.map(|b| b.0),
        server_rss_kib_after: after.map(|a| a.0),
        server_cpu_secs: before.zip(after).map(|(b, a)| a.1 - b.1),
        server_cpu_with_children_secs: before.zip(after).map(|(b, a)| a.2 - b.2),
        bare_cpu_ms,
        server_cgroup_cpu_secs: cgroup_cpu,
        server_cpu_per_job_beyond_compile_ms: cgroup_cpu
            .or(before.zip(after).map(|(b, a)| a.2 - b.2))
            .map(|cpu| cpu * 1000.0 / samples.len().max(1) as f64 - bare_cpu_ms),
    };
    if let Some(path) = &args.plot {
        plot(path, &samples).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    for message in error_messages.iter().take(5) {
        eprintln!("error: {message}");
    }
    if report.errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "{} jobs, {} clients, {:.1} s: {:.1} jobs/s, {} errors, {} busy retries",
        r.jobs, r.clients, r.wall_secs, r.jobs_per_sec, r.errors, r.busy_retries
    );
    if let (Some(local), Some(ratio)) = (r.local_jobs_per_sec, r.throughput_ratio) {
        println!("local gcc at the same parallelism: {local:.1} jobs/s; kiln/local = {ratio:.2}");
    }
    println!("first job (cold toolchain): {:.0} ms", r.first_job_ms);
    println!(
        "placing a job (alloc_job/assign_job): p50 {:.1} ms, p95 {:.1} ms",
        r.placement.p50_ms, r.placement.p95_ms
    );
    println!("{:<8} {:>8} {:>8} {:>8} {:>10} {:>12}", "kind", "p50 ms", "p95 ms", "p99 ms", "bare p50", "overhead p50");
    for k in &r.kinds {
        println!(
            "{:<8} {:>8.1} {:>8.1} {:>8.1} {:>10.1} {:>12.1}",
            format!("{:?}", k.kind).to_lowercase(),
            k.kiln.p50_ms,
            k.kiln.p95_ms,
            k.kiln.p99_ms,
            k.bare.p50_ms,
            k.overhead_p50_ms
        );
    }
    if let (Some(b), Some(a)) = (r.server_rss_kib_before, r.server_rss_kib_after) {
        println!(
            "server RSS {:.1} MiB → {:.1} MiB, CPU {:.2} s ({:.2} s with children, {:.2} s its cgroup); \
             per job beyond the compile ({:.1} ms bare): {:.1} ms",
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            r.server_cpu_secs.unwrap_or(0.0),
            r.server_cpu_with_children_secs.unwrap_or(0.0),
            r.server_cgroup_cpu_secs.unwrap_or(0.0),
            r.bare_cpu_ms,
            r.server_cpu_per_job_beyond_compile_ms.unwrap_or(0.0)
        );
    }
}

fn plot(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let max_ms = samples.iter().map(|s| s.latency_ms).fold(1.0, f64::max);
    let max_t = samples.iter().map(|s| s.at).fold(1.0, f64::max);

    // Latency histogram, 50 buckets.
    let buckets = 50usize;
    let width = max_ms / buckets as f64;
    let mut counts = vec![0u32; buckets];
    for s in samples {
        counts[((s.latency_ms / width) as usize).min(buckets - 1)] += 1;
    }
    let max_count = counts.iter().copied().max().unwrap_or(1);
    let mut chart = ChartBuilder::on(&top)
        .caption("job latency (ms)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_ms, 0u32..max_count + 1)?;
    chart.configure_mesh().x_desc("latency ms").y_desc("jobs").draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = i as f64 * width;
        Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.filled())
    }))?;

    // Latency over time: the tail, job by job.
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency over time", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_t, 0f64..max_ms)?;
    chart.configure_mesh().x_desc("seconds into the run").y_desc("latency ms").draw()?;
    chart.draw_series(
        samples.iter().map(|s| Circle::new((s.at, s.latency_ms), 2, if s.ok { BLUE.filled() } else { RED.filled() })),
    )?;
    root.present()?;
    Ok(())
}
