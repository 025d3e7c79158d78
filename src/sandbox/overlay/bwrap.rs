//! Running one job under bubblewrap and collecting what it produced.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use flate2::read::ZlibDecoder;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::archive::{extract_tar_into, ArchiveError, RootedDir, SandboxPath};
use crate::observe::{JobUsage, Phase};
use crate::protocol::{JobComplete, OutputData, ProcessOutput};
use crate::report::ErrorChain;
use crate::sandbox::cgroup::JobCgroup;
use crate::sandbox::job::{bad_path, validate_command};
use crate::sandbox::kill::KillHandle;
use crate::sandbox::{SandboxError, SandboxJob, SandboxLimits};

use super::identity::JobIdentity;
use super::namespace::{PTS, ROOT, SHIM_IN_SANDBOX};
use super::seccomp::JobSeccomp;

/// Oldest bubblewrap with every flag kiln passes (`--disable-userns` came in 0.8.0).
const MIN_BWRAP: (u32, u32, u32) = (0, 8, 0);

/// Why bubblewrap cannot serve as the overlay backend's sandbox.
#[derive(Debug, thiserror::Error)]
pub enum BwrapError {
    #[error("bubblewrap ({0}) was not found")]
    NotFound(PathBuf),
    /// Its message carries the cause: these are shown as one line.
    #[error("cannot run bubblewrap ({path}): {error}")]
    Run { path: PathBuf, error: std::io::Error },
    #[error("bubblewrap {}.{}.{} or newer is needed (for --disable-userns), found {found:?}", MIN_BWRAP.0, MIN_BWRAP.1, MIN_BWRAP.2)]
    TooOld { found: String },
    #[error(
        "bubblewrap cannot make a sandbox as the unprivileged uid {uid} ({stderr}): allow unprivileged user namespaces \
         (sysctl user.max_user_namespaces > 0; on Debian kernel.unprivileged_userns_clone = 1; on Ubuntu \
         kernel.apparmor_restrict_unprivileged_userns = 0 or an AppArmor profile for bwrap)"
    )]
    NoUserNamespace { uid: u32, stderr: String },
    #[error(
        "kiln cannot make a private mount namespace for its sandboxes ({error}): it needs CAP_SYS_ADMIN \
         (docker: --cap-add SYS_ADMIN; Kubernetes: securityContext.capabilities.add SYS_ADMIN)"
    )]
    NoMountNamespace { error: nix::Error },
    #[error("the thread that probed bubblewrap panicked")]
    ProbePanicked,
}

/// Finds `bwrap` (a bare name is looked up in `PATH`), checks that it runs and is
/// recent enough, and returns its absolute path and version line.
///
/// The path must be absolute because jobs run with their own environment, whose
/// `PATH` (if any) is not kiln's.
pub fn check_bwrap(bwrap: &Path) -> Result<(PathBuf, String), BwrapError> {
    let path = crate::program::find_program(bwrap).ok_or_else(|| BwrapError::NotFound(bwrap.to_owned()))?;
    let out = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| BwrapError::Run { path: path.clone(), error })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let version = text.rsplit(' ').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if !out.status.success() || found < MIN_BWRAP {
        return Err(BwrapError::TooOld { found: text });
    }
    Ok((path, text))
}

/// Starts a throw-away bubblewrap the way sandboxes start it (as `id`, in a new
/// user namespace with further ones disabled) and checks that it works: a host
/// that forbids unprivileged user namespaces (`user.max_user_namespaces = 0`,
/// Debian's `kernel.unprivileged_userns_clone = 0`, Ubuntu's AppArmor
/// `restrict_unprivileged_userns`) would otherwise fail every job.
pub fn probe_unprivileged(bwrap: &Path, id: JobIdentity) -> Result<(), BwrapError> {
    // From a private mount namespace with /proc uncovered, as sandboxes start
    // (`enter_overlay_namespace`): on a thread of its own, which unshare affects.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // Every sandbox thread does this first: without CAP_SYS_ADMIN (a
                // container started without it) every job would fail here.
                unshare(CloneFlags::CLONE_NEWNS)
                    .and_then(|()| {
                        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                    })
                    .map_err(|error| BwrapError::NoMountNamespace { error })?;
                super::namespace::reveal_proc();
                probe_as(bwrap, id)
            })
            .join()
            .unwrap_or(Err(BwrapError::ProbePanicked))
    })
}

fn probe_as(bwrap: &Path, id: JobIdentity) -> Result<(), BwrapError> {
    let mut cmd = Command::new(bwrap);
    cmd.args(["--unshare-user", "--disable-userns", "--uid", "0", "--gid", "0", "--cap-drop", "ALL"]);
    cmd.args(["--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc", "--", "/bin/true"]);
    cmd.env_clear().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // As root, std drops the supplementary groups when it changes the uid.
    cmd.uid(id.uid).gid(id.gid());
    let out = cmd.output().map_err(|error| BwrapError::Run { path: bwrap.to_owned(), error })?;
    if out.status.success() {
        return Ok(());
    }
    Err(BwrapError::NoUserNamespace { uid: id.uid, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
}

/// What a sandbox's bubblewrap is started with, besides the overlay.
pub(super) struct Confinement<'a> {
    pub bwrap: &'a Path,
    /// The job's host uid/gid; bubblewrap itself runs as it.
    pub identity: JobIdentity,
    pub seccomp: &'a JobSeccomp,
    /// `cgroup.procs` of the sandbox's cgroup(s), written by the child before exec.
    pub cgroup_procs: Vec<RawFd>,
    /// RLIMIT_AS of every process; 0: unlimited.
    pub max_process_memory: u64,
}

/// A bubblewrap started ahead of its job: namespaces made, `/` bound, `/proc` and
/// `/dev` mounted, and the exec shim waiting on the `spec` pipe for the command.
pub(super) struct StartedSandbox {
    child: Child,
    pid: Pid,
    spec: Option<File>,
    /// Non-blocking; the shim writes one byte here once it has the command, before
    /// the job exists. Empty after bubblewrap exited: the job never started.
    started: File,
}

impl StartedSandbox {
    /// Starts bubblewrap over [`ROOT`] (the overlay, visible in this thread's
    /// namespace) with the exec shim as its program.
    pub fn start(how: Confinement<'_>) -> Result<Self, SandboxError> {
        let spawn_error = |source| SandboxError::Spawn { path: PathBuf::from(how.bwrap), source };
        // Both ends close on exec: no other sandbox's bubblewrap, started meanwhile
        // from another thread, may hold the write end (the shim would never see EOF).
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_error(e.into()))?;
        // bubblewrap reads the filter to EOF before it sets up anything; it fits in
        // the pipe's buffer (JobSeccomp::compile refuses a larger one).
        let (filter_read, filter_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_error(e.into()))?;
        File::from(filter_write).write_all(how.seccomp.bpf()).map_err(spawn_error)?;
        let (started, started_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| spawn_error(e.into()))?;
        let fds =
            ShimFds { spec: read.as_raw_fd(), started: started_write.as_raw_fd(), seccomp: filter_read.as_raw_fd() };
        let mut cmd = bwrap_command(&how, fds);
        let child = cmd.spawn().map_err(spawn_error)?;
        drop((read, filter_read, started_write));
        let pid = Pid::from_raw(child.id() as i32);
        Ok(StartedSandbox { child, pid, spec: Some(File::from(write)), started: File::from(started) })
    }

    /// Gives the sandbox up unused: the shim reads EOF and exits; reap it.
    pub fn discard(mut self) {
        self.spec = None;
        let _ = self.child.wait();
    }

    /// Ends a sandbox whose job was refused or cancelled before it started: EOF to
    /// the shim (a kill meanwhile still reaches it), then forget the pid and reap.
    fn finish(mut self, kill: &KillHandle) {
        self.spec = None;
        let _ = waitid(Id::Pid(self.pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        kill.exited();
        let _ = self.child.wait();
    }
}

/// Runs `job` in `sandbox`, whose root is [`ROOT`] in this thread's namespace and
/// whose processes are in `cgroup` (if the host has cgroups for jobs).
pub(super) fn run_job(
    sandbox: StartedSandbox,
    job: SandboxJob,
    limits: &SandboxLimits,
    cgroup: Option<&JobCgroup>,
    kill: &KillHandle,
) -> Result<JobComplete, SandboxError> {
    let merged = Path::new(ROOT);
    // The sandbox's processes are the job's from here on: a kill takes them.
    kill.started(sandbox.pid);
    let (cwd, root, outputs) = match prepare_layout(merged, &job, limits) {
        Ok(layout) => layout,
        Err(e) => {
            // A refused job still ends its bubblewrap: EOF to the shim, then reap.
            // Dropping the Child instead would leave bubblewrap running unreaped.
            sandbox.finish(kill);
            return Err(e);
        }
    };
    if kill.is_cancelled() {
        sandbox.finish(kill);
        return Err(SandboxError::TimedOut(job.timeout));
    }

    job.phases.enter(Phase::Compile);
    let mut output = run_in(sandbox, &job, &cwd, limits, cgroup, kill)?;
    if let Some(cgroup) = cgroup {
        explain_limits(&mut output, cgroup, limits);
    }
    job.phases.enter(Phase::Outputs);

    let mut collected = Vec::with_capacity(outputs.len());
    let mut total = 0u64;
    for (name, path) in outputs {
        let Some(data) = compress_output(&root, &path, limits.max_output_bytes - total).map_err(|e| match e {
            SandboxError::OutputsTooLarge { .. } => SandboxError::OutputsTooLarge { limit: limits.max_output_bytes },
            other => other,
        })?
        else {
            continue; // Missing outputs are left out of the answer, as upstream does.
        };
        total += data.uncompressed_len();
        collected.push((name.clone(), data));
    }
    Ok(JobComplete { output, outputs: collected })
}

/// Checks the command and lays out the root: inputs, cwd, outputs' parents.
#[allow(clippy::type_complexity)]
fn prepare_layout<'j>(
    merged: &Path,
    job: &'j SandboxJob,
    limits: &SandboxLimits,
) -> Result<(SandboxPath, RootedDir, Vec<(&'j String, SandboxPath)>), SandboxError> {
    let command = &job.command;
    let cwd = validate_command(command)?;

    let root = RootedDir::open(merged).map_err(SandboxError::Layout)?;
    job.phases.enter(Phase::Inputs);
    extract_tar_into(ZlibDecoder::new(&job.inputs_zlib[..]), &root, &limits.inputs).map_err(SandboxError::Inputs)?;
    let dir_mode = Mode::from_bits_truncate(0o755);
    root.create_dir_all(&cwd, dir_mode).map_err(SandboxError::Layout)?;
    // /tmp (1777) was made when the sandbox was prepared (namespace.rs).
    let mut outputs = Vec::with_capacity(job.outputs.len());
    for name in &job.outputs {
        let path = SandboxPath::parse_relative_to(&cwd, name.as_bytes()).map_err(bad_path)?;
        if let Some((parent, _)) = path.split_last() {
            root.create_dir_all(&parent, dir_mode).map_err(SandboxError::Layout)?;
        }
        outputs.push((name, path));
    }
    Ok((cwd, root, outputs))
}

/// The fds bubblewrap passes on: the command pipe and the started pipe to the
/// shim, the seccomp filter to itself.
#[derive(Clone, Copy)]
struct ShimFds {
    spec: RawFd,
    started: RawFd,
    seccomp: RawFd,
}

fn bwrap_command(how: &Confinement<'_>, fds: ShimFds) -> Command {
    let mut cmd = Command::new(how.bwrap);
    cmd.args([
        // The job dies with its bubblewrap, which dies with the thread that started it.
        "--die-with-parent",
        // setsid(): no ioctl(TIOCSTI) into a terminal (CVE-2017-5226).
        "--new-session",
        // bubblewrap runs as the job's unprivileged host uid (set below), and maps it
        // to uid 0 in the new user namespace: the job owns its files and nothing else.
        "--unshare-user",
        "--uid",
        "0",
        "--gid",
        "0",
        // No further user namespaces (user.max_user_namespaces = 1 inside, then a
        // nested namespace that cannot raise it): a job cannot gain capabilities
        // over a namespace of its own, where mount and cgroup files become reachable.
        "--disable-userns",
        // bubblewrap keeps every capability for a uid 0 inside unless told otherwise.
        "--cap-drop",
        "ALL",
        "--unshare-cgroup",
        "--unshare-ipc",
        "--unshare-pid",
        // The exec shim is the pid namespace's init, not bubblewrap's own: that one
        // runs as the job's uid, dumpable, and a job patched it through /proc/1/mem
        // to outlive its job (issue 27). The shim makes itself non-dumpable first
        // (exec_shim.c), and its exit ends every process of the job.
        "--as-pid-1",
        "--unshare-net",
        "--unshare-uts",
    ]);
    cmd.args(["--bind", ROOT, "/", "--proc", "/proc", "--dev", "/dev"]);
    // The sandbox's own devpts, bounded in pseudo-terminals (namespace.rs), over
    // the unbounded one of `--dev`. `--dev-bind`: its `ptmx` is a device node,
    // which a plain `--bind` (nodev) would refuse to open.
    cmd.args(["--dev-bind", PTS, "/dev/pts"]);
    // bubblewrap's own read-only cover of /proc/sys is skipped when its access(W_OK)
    // check fails, which it does for an unprivileged uid; host sysctls are then
    // only protected by their owner. Bind the host's /proc/sys read-only over it
    // (its values are the ones the job's own namespaces see), and cover the other
    // writable kernel interfaces of /proc bubblewrap means to cover.
    cmd.args(["--ro-bind", "/proc/sys", "/proc/sys"]);
    for path in ["/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
        cmd.args(["--ro-bind-try", path, path]);
    }
    // The fds keep the numbers they have here: the child clears close-on-exec on
    // them and on nothing else, so no other fd (std's own exec-error pipe
    // included) is ever overwritten.
    cmd.arg("--seccomp").arg(fds.seccomp.to_string());
    // bubblewrap itself runs on the host with an empty environment: a job's
    // LD_PRELOAD or LD_LIBRARY_PATH must never reach the host's dynamic loader. The
    // job's environment reaches only the job, through the shim.
    cmd.env_clear();
    cmd.arg("--").arg(SHIM_IN_SANDBOX).arg(fds.spec.to_string()).arg(fds.started.to_string());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let kiln = nix::unistd::getpid();
    let (uid, gid, max_memory) = (how.identity.uid, how.identity.gid(), how.max_process_memory);
    let cgroup_procs = how.cgroup_procs.clone();
    // SAFETY: runs in the forked child before exec, while the sandbox thread keeps
    // the JobCgroup (and so its cgroup.procs fds) alive. It only makes system calls
    // (write, setrlimit, fcntl, close_range, setgroups, setresgid, setresuid,
    // prctl, getppid) on values prepared before the fork, reports failures as raw
    // errnos and allocates nothing, so it is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let check = |result: nix::libc::c_int| {
                if result < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            // Into the sandbox's cgroup first, while still root: every process of
            // the job is then born under its pids, memory and CPU limits.
            crate::sandbox::cgroup::join_from_child(&cgroup_procs)?;
            // A bound per process on top of the cgroup's per-job one, so a single
            // runaway allocation fails with ENOMEM before the job's limit is hit.
            if max_memory > 0 {
                let limit = nix::libc::rlimit { rlim_cur: max_memory, rlim_max: max_memory };
                check(nix::libc::setrlimit(nix::libc::RLIMIT_AS, &limit))?;
            }
            // No fd of kiln's reaches the job, whoever opened it without
            // close-on-exec (a library, or whoever started kiln: runc's
            // CVE-2024-21626 was a leaked fd), but the ones bubblewrap and the shim read.
            mark_all_close_on_exec()?;
            for fd in [fds.spec, fds.started, fds.seccomp] {
                check(nix::libc::fcntl(fd, nix::libc::F_SETFD, 0))?;
            }
            // Become the job's uid: no supplementary groups (root's would stay
            // otherwise), then gid, then uid, each real, effective and saved.
            check(nix::libc::setgroups(0, std::ptr::null()))?;
            check(nix::libc::setresgid(gid, gid, gid))?;
            check(nix::libc::setresuid(uid, uid, uid))?;
            // A change of uid clears the parent-death signal, so it is set after.
            // bubblewrap sets it too, but only after it cloned the sandbox; a kiln
            // killed in that window would leave it running. SIGKILL when the thread
            // that started it (the sandbox thread) ends; and if kiln already died
            // before this, give up now.
            check(nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL, 0, 0, 0))?;
            if nix::libc::getppid() != kiln.as_raw() {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd
}

/// Sets close-on-exec on every fd from 3 up: `close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC` (Linux 5.11), else one `fcntl` per possible fd.
/// Async-signal-safe: system calls only.
fn mark_all_close_on_exec() -> std::io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: nix::libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes flags of this process's fds.
    let ranged = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if ranged == 0 {
        return Ok(());
    }
    let mut limit = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `limit`, which lives for the call.
    if unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for fd in 3..limit.rlim_cur.min(1 << 20) as RawFd {
        // SAFETY: F_SETFD on a closed fd fails with EBADF, which is fine.
        unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// The job's command as the shim reads it: NUL-terminated fields (see exec_shim.c).
fn encode_spec(job: &SandboxJob, cwd: &SandboxPath) -> Vec<u8> {
    let command = &job.command;
    let mut spec = Vec::new();
    let mut field = |bytes: &[u8]| {
        spec.extend_from_slice(bytes);
        spec.push(0);
    };
    field(cwd.display().as_bytes());
    field(command.executable.as_bytes());
    field(command.arguments.len().to_string().as_bytes());
    for argument in &command.arguments {
        field(argument.as_bytes());
    }
    field(command.env_vars.len().to_string().as_bytes());
    for (key, value) in &command.env_vars {
        field(format!("{key}={value}").as_bytes());
    }
    spec
}

fn run_in(
    mut sandbox: StartedSandbox,
    job: &SandboxJob,
    cwd: &SandboxPath,
    limits: &SandboxLimits,
    cgroup: Option<&JobCgroup>,
    kill: &KillHandle,
) -> Result<ProcessOutput, SandboxError> {
    // Writing the command and closing the pipe starts the job. An EPIPE means the
    // shim is gone: whether the job ran is told by the started pipe below.
    if let Some(mut spec) = sandbox.spec.take() {
        if let Err(e) = spec.write_all(&encode_spec(job, cwd)) {
            tracing::debug!(error = %e, "the sandbox did not take the job's command");
        }
    }
    let StartedSandbox { mut child, pid, started, .. } = sandbox;

    // stdout and stderr are read on threads of their own while this one waits for
    // bubblewrap: a process of the job that holds them open must never keep kiln
    // from seeing the job end.
    let max = limits.max_stdio_bytes;
    let stdout = read_on_thread("kiln-stdout", child.stdout.take(), max);
    let stderr = read_on_thread("kiln-stderr", child.stderr.take(), max);

    // Wait without reaping, end the job, forget the pid, then reap: a kill can
    // never hit a reused pid.
    let waited = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
    // The job ends when bubblewrap does: whatever is left in its cgroup is killed
    // now, before its output is drained or its files are read. The pid namespace
    // already took the job's processes with its init; this is the mechanism that
    // holds even if that init were subverted.
    let ended = cgroup.map_or(Ok(()), JobCgroup::kill_processes);
    kill.exited();
    let status = reap(pid);
    if let Err(e) = ended {
        // Something of the job may still run and hold its pipes: leave the
        // readers be (they end with the pipes) and fail the job; the cgroup's
        // removal tries again.
        return Err(SandboxError::Cgroup(e));
    }
    drop(child); // reaped above
    let (stdout, stderr) = (stdout.join(), stderr.join());
    waited.map_err(|errno| SandboxError::Wait(errno.into()))?;
    let (status, mut usage) = status.map_err(SandboxError::Wait)?;
    if let Some(peak) = cgroup.and_then(JobCgroup::peak_memory) {
        usage.peak_memory_bytes = peak;
    }
    job.phases.record_usage(usage);

    if let Some(signal) = status.signal() {
        // On cgroup v2 an OOM kills the whole job (memory.oom.group), bubblewrap
        // with it: the job's own result, 128 + SIGKILL as bubblewrap reports a
        // killed job, not a failure of the machinery.
        if signal == nix::libc::SIGKILL && !kill.is_cancelled() && cgroup.is_some_and(|c| c.oom_kills() > 0) {
            return Ok(ProcessOutput { code: 128 + signal, stdout, stderr });
        }
        return Err(if kill.is_cancelled() {
            SandboxError::TimedOut(job.timeout)
        } else {
            SandboxError::HelperKilled { signal }
        });
    }
    // A bubblewrap that could not set the sandbox up (a mount refused, no user
    // namespace) never ran the job: that is the machinery's failure, answered as
    // one (the client compiles locally), never as the job's exit status with
    // bwrap's complaint on its stderr. The shim's byte is in the pipe before the
    // job exists, and bubblewrap has exited: no race either way.
    if !job_started(&started) {
        let stderr = String::from_utf8_lossy(&stderr).trim().chars().take(2000).collect();
        return Err(SandboxError::NotSetUp { stderr });
    }
    let code = status.code().unwrap_or(-1);
    // The shim (or bubblewrap) reports a command that cannot start (most often:
    // the executable does not exist in the toolchain) with exit 1 and a
    // "kiln-exec: " line. The job cannot be told apart from one that prints the
    // same, so like upstream this is the job's result, which the client shows;
    // the log line is for operators.
    if code == 1 && (stderr.starts_with(b"kiln-exec: ") || stderr.starts_with(b"bwrap: ")) {
        tracing::warn!(stderr = %String::from_utf8_lossy(&stderr).trim(), "the job's command did not start");
    }
    Ok(ProcessOutput { code, stdout, stderr })
}

/// Reaps bubblewrap with `wait4`, whose resource usage covers every process of the
/// job: bubblewrap reaped the shim, the shim (pid 1) every process of the job, and
/// each process's usage adds to its reaper's. bubblewrap's own start-up is in it,
/// a few ms: the sandbox is part of what a job costs.
fn reap(pid: Pid) -> std::io::Result<(std::process::ExitStatus, JobUsage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut rusage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes into `status` and `rusage`, which live for the call;
        // `pid` is bubblewrap, this thread's child, not reaped yet.
        let reaped = unsafe { nix::libc::wait4(pid.as_raw(), &mut status, 0, &mut rusage) };
        if reaped == pid.as_raw() {
            return Ok((std::process::ExitStatus::from_raw(status), JobUsage::from_rusage(&rusage)));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether the shim wrote its byte to the (non-blocking) started pipe.
fn job_started(mut started: &File) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match started.read(&mut byte) {
            Ok(n) => return n == 1,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false, // WouldBlock: nothing written
        }
    }
}

/// Tells the client, on stderr, when a job's cgroup limit killed part of it. The
/// exit status stays what the job's processes made of it (128 + 9 when the
/// sandbox's first process was killed, as bubblewrap and upstream report a
/// signal; a compiler driver reports its killed `cc1` itself): it is the job's
/// result, not a failure of kiln's.
fn explain_limits(output: &mut ProcessOutput, cgroup: &JobCgroup, limits: &SandboxLimits) {
    let oom_kills = cgroup.oom_kills();
    if oom_kills > 0 {
        tracing::info!(oom_kills, "the job exceeded its memory limit");
        let line = format!(
            "kiln: the job exceeded its memory limit of {} bytes (kiln.jobs.max_memory_bytes): \
             {oom_kills} process(es) killed\n",
            limits.max_memory_bytes
        );
        output.stderr.extend_from_slice(line.as_bytes());
    }
    if cgroup.pids_limit_hit() {
        tracing::info!("the job reached its process limit");
        let line = format!(
            "kiln: the job reached its limit of {} processes and threads (kiln.jobs.max_pids); forks failed\n",
            limits.max_pids
        );
        output.stderr.extend_from_slice(line.as_bytes());
    }
}

/// One of the job's output streams, read on its own thread.
struct StreamReader(Option<std::thread::JoinHandle<Vec<u8>>>);

impl StreamReader {
    /// What was read, once the stream ended (every writer gone). Empty when
    /// there was no stream or no thread could be started.
    fn join(self) -> Vec<u8> {
        self.0.and_then(|handle| handle.join().ok()).unwrap_or_default()
    }
}

/// Reads `stream` on a new thread named `name`: at most `max` bytes kept.
fn read_on_thread(name: &str, stream: Option<impl Read + Send + 'static>, max: u64) -> StreamReader {
    let Some(stream) = stream else { return StreamReader(None) };
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || read_bounded(stream, max));
    if let Err(e) = &spawned {
        tracing::warn!(stream = name, error = %e, "cannot start a thread to read the job's output; it is dropped");
    }
    StreamReader(spawned.ok())
}

/// Reads up to `max` bytes, then drains the rest so the writer never blocks.
fn read_bounded(mut reader: impl Read, max: u64) -> Vec<u8> {
    let mut kept = Vec::new();
    let _ = (&mut reader).take(max).read_to_end(&mut kept);
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    kept
}

/// Reads one output inside the root and compresses it as it is read: never
/// through a symlink to the host, only regular files, at most `budget` bytes.
/// `None` when it is absent. kiln holds only the compressed bytes: an output
/// read whole before compressing cost kiln its full size again (a sparse
/// 300 MiB output took kiln from 22 to 324 MiB, issue 27).
fn compress_output(root: &RootedDir, path: &SandboxPath, budget: u64) -> Result<Option<OutputData>, SandboxError> {
    let file = match root.open_file(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %ErrorChain(&e), "output is not a readable regular file; left out");
            return Ok(None);
        }
    };
    let meta =
        file.metadata().map_err(|e| SandboxError::Output { path: path.display(), source: ArchiveError::Read(e) })?;
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "output is not a regular file; left out");
        return Ok(None);
    }
    if meta.len() > budget {
        return Err(SandboxError::OutputsTooLarge { limit: budget });
    }
    // One byte past the budget tells a file that grew since its metadata was read.
    let data = OutputData::compress_reader(file.take(budget + 1))
        .map_err(|source| SandboxError::CompressOutput { path: path.display(), source })?;
    if data.uncompressed_len() > budget {
        return Err(SandboxError::OutputsTooLarge { limit: budget });
    }
    Ok(Some(data))
}
