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
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::archive::{extract_tar_into, ArchiveError, RootedDir, SandboxPath};
use crate::observe::Phase;
use crate::protocol::{JobComplete, OutputData, ProcessOutput};
use crate::report::ErrorChain;
use crate::sandbox::job::{bad_path, validate_command};
use crate::sandbox::kill::KillHandle;
use crate::sandbox::{SandboxError, SandboxJob, SandboxLimits};

/// Oldest bubblewrap with every flag kiln passes.
const MIN_BWRAP: (u32, u32, u32) = (0, 3, 0);

/// Finds `bwrap` (a bare name is looked up in `PATH`), checks that it runs and is
/// recent enough, and returns its absolute path and version line.
///
/// The path must be absolute because jobs run with their own environment, whose
/// `PATH` (if any) is not kiln's.
pub fn check_bwrap(bwrap: &Path) -> Result<(PathBuf, String), String> {
    let path =
        crate::program::find_program(bwrap).ok_or_else(|| format!("bubblewrap ({}) was not found", bwrap.display()))?;
    let out = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bubblewrap ({}): {e}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let version = text.rsplit(' ').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if !out.status.success() || found < MIN_BWRAP {
        return Err(format!(
            "bubblewrap {}.{}.{} or newer is needed, found {text:?}",
            MIN_BWRAP.0, MIN_BWRAP.1, MIN_BWRAP.2
        ));
    }
    Ok((path, text))
}

/// Where the exec shim appears inside every sandbox (read-only).
const SHIM_IN_SANDBOX: &str = "/.kiln-exec";

/// A bubblewrap started ahead of its job: namespaces made, `/` bound, `/proc` and
/// `/dev` mounted, and the exec shim waiting on the `spec` pipe for the command.
pub(super) struct StartedSandbox {
    child: Child,
    pid: Pid,
    spec: Option<File>,
}

impl StartedSandbox {
    /// Starts bubblewrap over `merged` (the overlay, visible in this thread's
    /// namespace) with the shim at `shim` as its program; every process of the
    /// sandbox gets at most `max_memory` bytes of address space (0: unlimited).
    pub fn start(bwrap: &Path, shim: &Path, merged: &Path, max_memory: u64) -> Result<Self, SandboxError> {
        let spawn_error = |source| SandboxError::Spawn { path: PathBuf::from(bwrap), source };
        // Both ends close on exec: no other sandbox's bubblewrap, started meanwhile
        // from another thread, may hold the write end (the shim would never see EOF).
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_error(e.into()))?;
        let mut cmd = bwrap_command(bwrap, merged, shim, read.as_raw_fd(), max_memory);
        let child = cmd.spawn().map_err(spawn_error)?;
        drop(read);
        let pid = Pid::from_raw(child.id() as i32);
        Ok(StartedSandbox { child, pid, spec: Some(File::from(write)) })
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

/// Runs `job` in `sandbox`, whose root is `merged` in this thread's namespace.
pub(super) fn run_job(
    sandbox: StartedSandbox,
    merged: &Path,
    job: SandboxJob,
    limits: &SandboxLimits,
    kill: &KillHandle,
) -> Result<JobComplete, SandboxError> {
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
    let output = run_in(sandbox, &job, &cwd, limits, kill)?;
    job.phases.enter(Phase::Outputs);

    let mut collected = Vec::with_capacity(outputs.len());
    let mut total = 0u64;
    for (name, path) in outputs {
        let Some(bytes) = read_output(&root, &path, limits.max_output_bytes - total).map_err(|e| match e {
            SandboxError::OutputsTooLarge { .. } => SandboxError::OutputsTooLarge { limit: limits.max_output_bytes },
            other => other,
        })?
        else {
            continue; // Missing outputs are left out of the answer, as upstream does.
        };
        total += bytes.len() as u64;
        let data = OutputData::compress(&bytes)
            .map_err(|source| SandboxError::CompressOutput { path: path.display(), source })?;
        collected.push((name.clone(), data));
    }
    Ok(JobComplete { output, outputs: collected })
}

/// Checks the command and lays out the root: inputs, cwd, /tmp, outputs' parents.
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
    // gcc needs a writable /tmp; the toolchain may not have brought one.
    let tmp = root
        .create_dir_all(&SandboxPath::parse(b"/tmp").map_err(SandboxError::Layout)?, Mode::from_bits_truncate(0o1777));
    tmp.map_err(SandboxError::Layout)?;
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

fn bwrap_command(bwrap: &Path, merged: &Path, shim: &Path, spec_fd: RawFd, max_memory: u64) -> Command {
    let mut cmd = Command::new(bwrap);
    cmd.args([
        // The job dies with its bubblewrap, which dies with the thread that started it.
        "--die-with-parent",
        // setsid(): no ioctl(TIOCSTI) into a terminal (CVE-2017-5226).
        "--new-session",
        "--cap-drop",
        "ALL",
        "--unshare-user",
        "--unshare-cgroup",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
    ]);
    cmd.arg("--bind").arg(merged).arg("/");
    cmd.args(["--proc", "/proc", "--dev", "/dev"]);
    cmd.arg("--ro-bind").arg(shim).arg(SHIM_IN_SANDBOX);
    // bubblewrap itself runs on the host as root with an empty environment: a job's
    // LD_PRELOAD or LD_LIBRARY_PATH must never reach the host's dynamic loader. The
    // job's environment reaches only the job, through the shim.
    cmd.env_clear();
    cmd.arg("--").arg(SHIM_IN_SANDBOX);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let kiln = nix::unistd::getpid();
    // SAFETY: runs in the forked child before exec; it only makes syscalls (prctl,
    // getppid, setrlimit, dup2 or fcntl) and allocates nothing, so it is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // bubblewrap sets this itself, but only after it has cloned the sandbox;
            // a kiln killed in that window would leave it running. SIGKILL when the
            // thread that started it (the sandbox thread) ends, from the first
            // instruction on; and if kiln already died before this, give up now.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != kiln {
                return Err(std::io::Error::other("kiln exited while starting the sandbox"));
            }
            // No cgroup here, so no memory limit for the job as a whole: RLIMIT_AS
            // bounds each process (setrlimit(2)); inherited by bubblewrap and every
            // process of the job, which cannot raise it again without
            // CAP_SYS_RESOURCE in the host's user namespace (--cap-drop ALL,
            // --unshare-user). A runaway allocation then fails with ENOMEM instead
            // of waking the host's OOM killer.
            if max_memory > 0 {
                let limit = nix::libc::rlimit { rlim_cur: max_memory, rlim_max: max_memory };
                if nix::libc::setrlimit(nix::libc::RLIMIT_AS, &limit) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The shim reads its command on fd 3; bubblewrap passes fds through.
            // dup2 onto another fd clears close-on-exec; onto itself it does not.
            // (Both are fds this forked, single-threaded child owns.)
            let result = if spec_fd == SPEC_FD {
                nix::libc::fcntl(spec_fd, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(spec_fd, SPEC_FD)
            };
            if result < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The fd the shim reads the job's command from.
const SPEC_FD: RawFd = 3;

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
    kill: &KillHandle,
) -> Result<ProcessOutput, SandboxError> {
    // Writing the command and closing the pipe starts the job. A shim that died
    // early (killed) makes this fail with EPIPE; its status tells the rest below.
    if let Some(mut spec) = sandbox.spec.take() {
        let _ = spec.write_all(&encode_spec(job, cwd));
    }
    let StartedSandbox { mut child, pid, .. } = sandbox;

    let max = limits.max_stdio_bytes;
    let stderr = child.stderr.take();
    let stderr_reader = std::thread::Builder::new()
        .name("kiln-stderr".into())
        .spawn(move || stderr.map(|s| read_bounded(s, max)).unwrap_or_default());
    let stdout = child.stdout.take().map(|s| read_bounded(s, max)).unwrap_or_default();
    let stderr = match stderr_reader {
        Ok(handle) => handle.join().unwrap_or_default(),
        Err(_) => Vec::new(),
    };

    // Wait without reaping, forget the pid, then reap: a kill can never hit a reused pid.
    let waited = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
    kill.exited();
    let status = child.wait();
    waited.map_err(|errno| SandboxError::Wait(errno.into()))?;
    let status = status.map_err(SandboxError::Wait)?;

    if let Some(signal) = status.signal() {
        return Err(if kill.is_cancelled() {
            SandboxError::TimedOut(job.timeout)
        } else {
            SandboxError::HelperKilled { signal }
        });
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

/// Reads up to `max` bytes, then drains the rest so the writer never blocks.
fn read_bounded(mut reader: impl Read, max: u64) -> Vec<u8> {
    let mut kept = Vec::new();
    let _ = (&mut reader).take(max).read_to_end(&mut kept);
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    kept
}

/// Reads one output inside the root: never through a symlink to the host, only
/// regular files, at most `budget` bytes. `None` when it is absent.
fn read_output(root: &RootedDir, path: &SandboxPath, budget: u64) -> Result<Option<Vec<u8>>, SandboxError> {
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
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(budget + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SandboxError::Output { path: path.display(), source: ArchiveError::Read(e) })?;
    if bytes.len() as u64 > budget {
        return Err(SandboxError::OutputsTooLarge { limit: budget });
    }
    Ok(Some(bytes))
}
