//! Shared by the integration tests: a real kiln process on 127.0.0.1, real
//! toolchains packed from the system gcc, tokens, and C sources.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::ops::Not;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln::client::{Client, InputsBuilder};
use kiln::package::{package_toolchain, PackageOptions};
use kiln::protocol::{
    AssignJobResult, CompileCommand, JobComplete, JobId, JobKey, RunJobHttpRequest, RunJobResult, ServerId,
    SubmitToolchainResult, Toolchain,
};

/// The key every test server signs job tokens with.
pub const KEY_HEX: &str = "6b696c6e2d746573742d6b65792d6b696c6e2d746573742d6b65792d6b696c6e";

pub fn key() -> JobKey {
    let bytes: Vec<u8> =
        (0..KEY_HEX.len()).step_by(2).map(|i| u8::from_str_radix(&KEY_HEX[i..i + 2], 16).unwrap()).collect();
    JobKey::from_bytes(&bytes).unwrap()
}

pub fn token(job_id: JobId) -> String {
    key().token_for(job_id).unwrap()
}

/// Job ids unique across the tests of one binary.
pub fn next_job_id() -> JobId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    JobId(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A packed toolchain: its archive bytes and id.
pub struct PackedToolchain {
    pub archive_id: String,
    pub bytes: bytes::Bytes,
}

fn pack(name: &str, extra: &[&str]) -> PackedToolchain {
    // Cargo's scratch dir for integration tests: reused across runs, never in /tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("toolchains");
    std::fs::create_dir_all(&dir).unwrap();
    // One file per test binary: binaries run one after another, but stay apart.
    let binary = std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    let out = dir.join(format!("{name}-{binary}.tar.gz"));
    let opts = PackageOptions { compiler: "/usr/bin/gcc".into(), extra: extra.iter().map(PathBuf::from).collect() };
    let packed = package_toolchain(&opts, &out).expect("packaging the system gcc");
    let bytes = std::fs::read(&out).unwrap();
    // The id the sccache client computes; `kiln package-toolchain` must agree with it.
    let archive_id = kiln::protocol::archive_id_of(&bytes);
    assert_eq!(packed.archive_id, archive_id, "package_toolchain reports the client's archive id");
    PackedToolchain { archive_id, bytes: bytes.into() }
}

/// gcc with `sh`, `sleep`, `id`, `cat`, `ls` and `mkfifo`, for jobs that are not compiles.
pub fn gcc_toolchain() -> &'static PackedToolchain {
    static TC: OnceLock<PackedToolchain> = OnceLock::new();
    TC.get_or_init(|| pack("gcc", &["/bin/sh", "/bin/sleep", "/usr/bin/id", "/bin/cat", "/bin/ls", "/usr/bin/mkfifo"]))
}

/// A second, different toolchain (same gcc, one more file).
pub fn other_toolchain() -> &'static PackedToolchain {
    static TC: OnceLock<PackedToolchain> = OnceLock::new();
    TC.get_or_init(|| pack("gcc-other", &["/bin/sh", "/bin/true"]))
}

/// A hook run in kiln's forked process before it execs: async-signal-safe system
/// calls only, no allocation.
pub type PreExec = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync + 'static>;

/// A kiln server process, killed when dropped.
pub struct Kiln {
    pub child: Child,
    /// `https://127.0.0.1:<port>`.
    pub addr: String,
    /// kiln's own scheduler API, `http://127.0.0.1:<port>` (none with a `scheduler_url`).
    pub scheduler: Option<String>,
    /// The operator endpoints over plain HTTP (`kiln.metrics_listen`), `http://127.0.0.1:<port>`.
    pub ops: String,
    /// The server's certificate, as its scheduler hands it to clients.
    pub cert_pem: Vec<u8>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Kiln {
    /// Starts kiln on a free port over a fresh data dir; `kiln_config` is appended
    /// to the config's `[kiln]` table (so `builders = 1` or `[kiln.jobs]` tables).
    pub fn start(kiln_config: &str) -> Kiln {
        Kiln::start_full("", kiln_config)
    }

    /// [`Kiln::start`] with upstream's top-level keys too (`[builder]`, `scheduler_url`...).
    pub fn start_full(top_config: &str, kiln_config: &str) -> Kiln {
        let tmp = tempfile::Builder::new().prefix("kiln-test-").tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut kiln = Kiln::start_with(&data_dir, top_config, kiln_config);
        kiln._tmp = Some(tmp);
        kiln
    }

    /// Starts kiln over an existing data dir (a restart).
    pub fn start_on(data_dir: &Path, kiln_config: &str) -> Kiln {
        Kiln::start_with(data_dir, "", kiln_config)
    }

    /// Starts kiln with `top_config` before the `[kiln]` table (upstream's keys:
    /// `scheduler_url`, `[scheduler_auth]` go after `top_config`'s own keys).
    pub fn start_with(data_dir: &Path, top_config: &str, kiln_config: &str) -> Kiln {
        Kiln::spawn(data_dir, top_config, kiln_config, None)
    }

    /// The `kiln serve` command over `data_dir`, its config written beside it.
    pub fn serve_command(data_dir: &Path, top_config: &str, kiln_config: &str) -> Command {
        let config_path = data_dir.with_extension("toml");
        // kiln's own scheduler listens on a free port, in the test's own table if it has one.
        const TABLE: &str = "[kiln.scheduler]\n";
        let kiln_config = match kiln_config.contains(TABLE) {
            true => kiln_config.replacen(TABLE, &format!("{TABLE}listen = \"127.0.0.1:0\"\n"), 1),
            false => format!("{kiln_config}\n{TABLE}listen = \"127.0.0.1:0\"\n"),
        };
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        std::fs::write(
            &config_path,
            format!(
                "public_addr = \"127.0.0.1:0\"\n{top_config}\n[kiln]\ndata_dir = \"{}\"\njob_token_key = \"{KEY_HEX}\"\n\
                 metrics_listen = \"127.0.0.1:0\"\n\
                 {kiln_config}",
                data_dir.display()
            ),
        )
        .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command
    }

    /// Starts kiln and waits until it listens; `hook` runs in kiln's process just
    /// before it execs (see [`Kiln::start_with_pre_exec`]).
    fn spawn(data_dir: &Path, top_config: &str, kiln_config: &str, hook: Option<PreExec>) -> Kiln {
        let mut command = Kiln::serve_command(data_dir, top_config, kiln_config);
        if let Some(hook) = hook {
            use std::os::unix::process::CommandExt;
            // SAFETY: `PreExec`'s contract makes it async-signal-safe.
            unsafe {
                command.pre_exec(hook);
            }
        }
        let mut child = command.spawn().expect("starting kiln");
        // Whatever the hook holds (descriptors) is closed here, in this process.
        drop(command);
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut read_line = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            line.trim().strip_prefix(prefix).unwrap_or_else(|| panic!("kiln did not start: {line:?}")).to_owned()
        };
        let addr = read_line("kiln listening on ");
        let scheduler = top_config.contains("scheduler_url").not().then(|| read_line("kiln scheduler listening on "));
        let ops = read_line("kiln operations listening on ");
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in stdout.lines() {});
        let mut kiln =
            Kiln { child, addr, scheduler, ops, cert_pem: Vec::new(), data_dir: data_dir.to_owned(), _tmp: None };
        if let Some(scheduler) = &kiln.scheduler {
            kiln.cert_pem = fetch_certificate(scheduler, &kiln.addr);
        }
        kiln
    }

    /// A client of the build-server API that trusts this server's certificate.
    pub fn client(&self) -> Client {
        Client::trusting(self.addr.clone(), &self.cert_pem).unwrap()
    }

    /// A raw HTTP client that trusts this server's certificate.
    pub fn http(&self) -> awc::Client {
        let tls = kiln::tls::client_config_trusting(&self.cert_pem).unwrap();
        awc::Client::builder().connector(awc::Connector::new().rustls_0_23(tls)).finish()
    }

    /// A client of kiln's own scheduler API.
    pub fn scheduler_client(&self) -> Client {
        Client::new(self.scheduler.clone().expect("this kiln has an upstream scheduler"))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops kiln as an operator would (SIGTERM: it drains and exits) and returns
    /// its exit status; fails the test if it has not exited within a minute.
    pub async fn stop_cleanly(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "kiln did not stop within 60 s of SIGTERM");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The status page's document, typed: a renamed or removed field fails to compile.
    pub async fn status(&self) -> kiln::observe::StatusDocument {
        let (status, body) = self.client().get_raw("/api/v1/kiln/status").await.unwrap();
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("the status document parses as a StatusDocument")
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Gets the server certificate the way an sccache client does: from the scheduler.
fn fetch_certificate(scheduler: &str, server: &str) -> Vec<u8> {
    let server_id = ServerId(server.trim_start_matches("https://").trim_start_matches("http://").parse().unwrap());
    let scheduler = scheduler.to_owned();
    let cert = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move { Client::new(scheduler).server_certificate(server_id).await })
    })
    .join()
    .unwrap()
    .expect("fetching the server certificate from kiln's scheduler");
    cert.cert_pem
}

/// Assigns a job for `tc` and submits the toolchain if kiln asks for it.
pub async fn assign_and_submit(client: &Client, tc: &PackedToolchain) -> JobId {
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: tc.archive_id.clone() };
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    if need_toolchain {
        let result = client.submit_toolchain(job_id, &token(job_id), tc.bytes.clone()).await.unwrap();
        assert_eq!(result, SubmitToolchainResult::Success);
    }
    job_id
}

/// Runs `command` in a fresh job and expects it to complete.
pub async fn run(
    client: &Client,
    tc: &PackedToolchain,
    command: CompileCommand,
    outputs: &[&str],
    inputs: Vec<u8>,
) -> JobComplete {
    let job_id = assign_and_submit(client, tc).await;
    let request = RunJobHttpRequest { command, outputs: outputs.iter().map(|s| s.to_string()).collect() };
    match client.run_job(job_id, &token(job_id), &request, &inputs).await.unwrap() {
        RunJobResult::Complete(done) => done,
        RunJobResult::JobNotFound => panic!("job {job_id} not found"),
    }
}

pub fn command(executable: &str, args: &[&str], cwd: &str) -> CompileCommand {
    CompileCommand {
        executable: executable.into(),
        arguments: args.iter().map(|s| s.to_string()).collect(),
        env_vars: vec![("PATH".into(), "/usr/bin:/bin".into()), ("LC_ALL".into(), "C".into())],
        cwd: cwd.into(),
    }
}

/// A small C project on the host: two sources and two headers, one in a subdir.
pub struct CProject {
    pub dir: tempfile::TempDir,
}

pub const MAIN_C: &str = r#"#include "util.h"
#include "inc/config.h"
int main(void) { return print_sum(LEFT, RIGHT); }
"#;
pub const UTIL_C: &str = r#"#include "util.h"
int printf(const char *fmt, ...);
int print_sum(int a, int b) { printf("sum=%d\n", a + b); return 0; }
"#;
pub const UTIL_H: &str = "int print_sum(int a, int b);\n";
pub const CONFIG_H: &str = "#define LEFT 40\n#define RIGHT 2\n";

impl CProject {
    pub fn new() -> CProject {
        let dir = tempfile::Builder::new().prefix("kiln-cproj-").tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("inc")).unwrap();
        std::fs::write(dir.path().join("main.c"), MAIN_C).unwrap();
        std::fs::write(dir.path().join("util.c"), UTIL_C).unwrap();
        std::fs::write(dir.path().join("util.h"), UTIL_H).unwrap();
        std::fs::write(dir.path().join("inc/config.h"), CONFIG_H).unwrap();
        CProject { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cwd(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// The project's sources and headers as a job's inputs tar.
    pub fn inputs(&self) -> Vec<u8> {
        let mut inputs = InputsBuilder::new();
        for f in ["main.c", "util.c", "util.h", "inc/config.h"] {
            inputs.add_host_file(self.path().join(f)).unwrap();
        }
        inputs.finish().unwrap()
    }

    /// `gcc <args>` run locally in the project dir; panics on failure.
    pub fn local_gcc(&self, args: &[&str]) {
        let status = Command::new("/usr/bin/gcc").args(args).current_dir(self.path()).status().unwrap();
        assert!(status.success(), "local gcc {args:?} failed");
    }
}

/// Polls `f` until it returns Some, for at most `limit`, letting other tasks run.
pub async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Pids of processes named `program` whose command line mentions `needle`.
pub fn pids_of(program: &str, needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let first = cmdline.split(' ').next().unwrap_or_default();
        if first.rsplit('/').next() == Some(program) && cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Pids of bubblewrap processes of sandboxes under `data_dir` (a sandbox's
/// overlay, mounted in its bubblewrap's namespaces, names its upper dir there).
pub fn bwrap_pids(data_dir: &str) -> Vec<i32> {
    kiln::actors::cleaner::processes_mentioning(Path::new(data_dir))
        .into_iter()
        .map(|pid| pid.as_raw())
        .filter(|&pid| comm(pid).as_deref() == Some("bwrap"))
        .collect()
}

/// Mount points at or below `dir` in this process's mount table.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    kiln::actors::cleaner::mounts_below(dir).unwrap().into_iter().map(|p| p.display().to_string()).collect()
}

/// The server still compiles a real C file after whatever came before.
pub async fn assert_compiles(kiln: &Kiln) -> JobComplete {
    let project = CProject::new();
    let done = run(
        &kiln.client(),
        gcc_toolchain(),
        command("/usr/bin/gcc", &["-c", "util.c", "-o", "util.o"], project.cwd()),
        &["util.o"],
        project.inputs(),
    )
    .await;
    assert_eq!(done.output.code, 0, "{}", stderr(&done));
    assert_eq!(done.outputs.len(), 1);
    done
}

/// 20 concurrent compiles of the same file, alternating between two toolchains;
/// checks each succeeded and all produced the same object.
pub async fn compile_twenty_over_two_toolchains(kiln: &Kiln) {
    let project = CProject::new();
    let toolchains = [gcc_toolchain(), other_toolchain()];
    assert_ne!(toolchains[0].archive_id, toolchains[1].archive_id);
    let jobs = (0..20).map(|i| {
        let client = kiln.client();
        let tc = toolchains[i % 2];
        let inputs = project.inputs();
        let cwd = project.cwd().to_owned();
        async move {
            let out = format!("obj/{i}/util.o");
            let done =
                run(&client, tc, command("/usr/bin/gcc", &["-c", "util.c", "-o", &out], &cwd), &[&out], inputs).await;
            assert_eq!(done.output.code, 0, "{}", stderr(&done));
            output_bytes(&done, &out)
        }
    });
    let objects = futures_util::future::join_all(jobs).await;
    assert!(objects.windows(2).all(|w| w[0] == w[1]), "every job compiled the same object");
}

/// Largest output a test reads back.
const OUTPUT_LIMIT: u64 = 64 << 20;

/// An output of a completed job, decompressed; panics if it is missing.
pub fn output_bytes(done: &JobComplete, name: &str) -> Vec<u8> {
    let (_, data) =
        done.outputs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output {name}: {done:?}"));
    data.decompress(OUTPUT_LIMIT).unwrap()
}

pub fn stderr(done: &JobComplete) -> String {
    String::from_utf8_lossy(&done.output.stderr).into_owned()
}

pub fn stdout(done: &JobComplete) -> String {
    String::from_utf8_lossy(&done.output.stdout).into_owned()
}

/// An error answer's body as one line: upstream's JSON error with its causes, else
/// the body as text.
pub fn description(body: &[u8]) -> String {
    serde_json::from_slice::<kiln::protocol::ErrorBody>(body)
        .map(|b| b.full_description())
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

/// Inputs with no file in them.
pub fn empty_tar() -> Vec<u8> {
    InputsBuilder::new().finish().unwrap()
}

/// Pids of the bubblewrap processes (outer and the sandbox's init) of sandboxes that
/// run a job. Prepared sandboxes start bubblewrap ahead of their job and wait in
/// the exec shim; those are not counted.
pub fn job_sandbox_pids(needle: &str) -> Vec<i32> {
    bwrap_pids(needle)
        .into_iter()
        .filter(|&pid| {
            descendants(pid).iter().any(|&p| !matches!(comm(p).as_deref(), Some("bwrap" | ".kiln-exec") | None))
        })
        .collect()
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim().to_owned())
}

/// Every process below `pid` (children, their children, ...).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let children = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
            found.push(child);
            todo.push(child);
        }
    }
    found
}

/// Whether a process below `pid` (a child, or theirs: a sandbox's job runs
/// under its exec shim, pid 1 of its namespace) is named `name`.
pub fn descendant_named(pid: i32, name: &str) -> bool {
    descendants(pid).into_iter().any(|p| comm(p).as_deref() == Some(name))
}

impl Kiln {
    /// [`Kiln::start`], running `hook` in kiln's process just before it execs,
    /// as a supervisor would (a descriptor left open, a cgroup). `hook` runs in the
    /// forked child: async-signal-safe system calls only, no allocation.
    pub fn start_with_pre_exec(
        kiln_config: &str,
        hook: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Kiln {
        let tmp = tempfile::Builder::new().prefix("kiln-test-").tempdir().unwrap();
        let mut kiln = Kiln::spawn(&tmp.path().join("data"), "", kiln_config, Some(Box::new(hook)));
        kiln._tmp = Some(tmp);
        kiln
    }

    /// [`Kiln::start`], with `file` open in kiln on descriptor `fd` without
    /// close-on-exec, as a careless parent (a shell, a supervisor) may leave one:
    /// kiln inherits it, and must keep it from its jobs.
    pub fn start_with_inherited_fd(kiln_config: &str, file: &Path, fd: i32) -> Kiln {
        use std::os::fd::AsRawFd;
        // Opened close-on-exec (Rust's default); the child's copy on `fd` is not.
        let secret = std::fs::File::open(file).unwrap();
        Kiln::start_with_pre_exec(kiln_config, move || {
            let raw = secret.as_raw_fd();
            // dup2 onto another fd clears close-on-exec; onto itself it does not.
            // SAFETY: plain system calls on descriptors this (forked) process owns.
            let result = unsafe {
                if raw == fd {
                    nix::libc::fcntl(fd, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(raw, fd)
                }
            };
            if result < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }

    /// [`Kiln::start`], with kiln's log (its stderr) going to `log`.
    pub fn start_logging_to(kiln_config: &str, log: &Path) -> Kiln {
        use std::os::fd::AsRawFd;
        let log = std::fs::File::create(log).unwrap();
        Kiln::start_with_pre_exec(kiln_config, move || {
            // SAFETY: dup2(2) onto stderr, of a descriptor this (forked) process owns.
            if unsafe { nix::libc::dup2(log.as_raw_fd(), 2) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }

    /// [`Kiln::start`], with kiln started inside the cgroup v1 whose `cgroup.procs`
    /// is `procs` (so its own cgroup is not the hierarchy's root).
    pub fn start_in_cgroup(kiln_config: &str, procs: &Path) -> Kiln {
        use std::os::fd::AsRawFd;
        let procs = std::fs::OpenOptions::new().write(true).open(procs).unwrap();
        Kiln::start_with_pre_exec(kiln_config, move || {
            // "0": the writing process itself (cgroups(7)).
            // SAFETY: a plain write(2) of a static buffer to a descriptor we own.
            if unsafe { nix::libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The host directory of `pid`'s cgroup v1 `controller` (this host is v1 hybrid).
pub fn cgroup_dir(pid: i32, controller: &str) -> Option<PathBuf> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    table.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| Path::new("/sys/fs/cgroup").join(controller).join(path.trim_start_matches('/')))
    })
}

/// A host-wide kernel counter under `/proc/sys` (`fs/aio-nr`, `kernel/pty/nr`).
pub fn proc_sys_u64(name: &str) -> u64 {
    let path = format!("/proc/sys/{name}");
    std::fs::read_to_string(&path).unwrap().trim().parse().unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Pages of TCP socket memory in use on the whole host (`mem` of `TCP:` in
/// `/proc/net/sockstat`: one pool shared by every network namespace).
pub fn host_tcp_mem_pages() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let line = text.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem").and_then(|_| words.next()).and_then(|n| n.parse().ok()).unwrap()
}

/// Whether the host binds vsock `port` (any CID) at this moment; it lets go at once.
pub fn host_binds_vsock(port: u32) -> Result<(), nix::errno::Errno> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    use std::os::fd::AsRawFd;
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(fd.as_raw_fd(), &VsockAddr::new(nix::libc::VMADDR_CID_ANY, port))
}

/// A tmpfs of its own, unmounted (and its mount point removed) when dropped.
pub struct SmallFs {
    pub path: PathBuf,
}

impl SmallFs {
    pub fn mount(options: &str) -> SmallFs {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/kiln-testfs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        nix::mount::mount(Some("tmpfs"), &path, Some("tmpfs"), nix::mount::MsFlags::empty(), Some(options))
            .expect("mounting a tmpfs (the test runs as root)");
        SmallFs { path }
    }

    /// Read by the test itself, not through kiln's code.
    pub fn space(&self) -> Space {
        let vfs = nix::sys::statvfs::statvfs(&self.path).unwrap();
        Space {
            free_bytes: vfs.blocks_available() * vfs.fragment_size(),
            free_inodes: vfs.files_available(),
            total_bytes: vfs.blocks() * vfs.fragment_size(),
            total_inodes: vfs.files(),
        }
    }
}

/// `statvfs(3)` of the test's file system: what an unprivileged writer may use.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    pub free_bytes: u64,
    pub free_inodes: u64,
    pub total_bytes: u64,
    pub total_inodes: u64,
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// `source` compiled on the host with `gcc -static`: it runs in any sandbox root.
pub fn static_program(name: &str, source: &str) -> Vec<u8> {
    let dir = tempfile::Builder::new().prefix("kiln-prog-").tempdir().unwrap();
    let (src, exe) = (dir.path().join(format!("{name}.c")), dir.path().join(name));
    std::fs::write(&src, source).unwrap();
    let status = std::process::Command::new("gcc").args(["-static", "-O1", "-o"]).arg(&exe).arg(&src).status();
    assert!(status.unwrap().success(), "gcc -static {name}.c");
    std::fs::read(exe).unwrap()
}

/// An inputs tar of executables (mode 0755) at `/work/<name>`.
pub fn programs(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_path(format!("work/{name}")).unwrap();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append(&header, *bytes).unwrap();
    }
    tar.into_inner().unwrap()
}
