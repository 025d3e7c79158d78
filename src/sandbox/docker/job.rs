//! One job as a request to its container's agent: the command, its limits, and the
//! inputs re-laid as entries the agent creates as the job user.
//!
//! Built on tokio's blocking pool (zlib, tar). The container's file system is the
//! toolchain (owned by root) plus what jobs create (owned by the job user): inputs may
//! add files and directories, never replace a toolchain path, so the reset restores
//! the container by removing what the job user owns. Every path is checked here,
//! against the toolchain's unpacked root, before anything reaches the container.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::ZlibDecoder;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode, SFlag};
use tar::EntryType;

use super::engine::HELPER_PATH;
use super::image::{root_dir_header, IMAGE_DIRS};
use crate::archive::{ArchiveError, ExtractLimits, RootedDir, SandboxPath};
use crate::protocol::CompileCommand;
use crate::sandbox::job::{bad_path, validate_command};
use crate::sandbox::{SandboxError, SandboxLimits};

/// Top-level directories that are kernel file systems in every container: a job's
/// inputs, cwd or outputs can never be there.
const KERNEL_DIRS: &[&str] = &["proc", "sys", "dev"];

/// Per-entry allowance for tar headers in the decompressed inputs stream.
const HEADER_ALLOWANCE: u64 = 2048;

/// Longest string (argument, env entry, path, link target) and most strings of one
/// kind the agent accepts (`MAX_STR`, `MAX_COUNT` in kiln_init.c).
const AGENT_MAX_STR: usize = 1 << 20;
const AGENT_MAX_COUNT: usize = 1 << 16;

/// A job ready to go into its container.
#[derive(Debug)]
pub struct PreparedJob {
    /// The agent's request (`KJOB ...`, see kiln_init.c).
    pub request: Vec<u8>,
    /// New top-level directories the job needs (`work` for a cwd of /work/a): made
    /// root's and open like /tmp, through the Engine API, the first time a container
    /// needs them.
    pub top_dirs: Vec<PathBuf>,
    /// The outputs as the client named them, in the order the request lists them.
    pub outputs: Vec<String>,
}

/// The agent's request, written as it is built.
struct Request(Vec<u8>);

impl Request {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A string the agent takes: no NUL (checked before), at most `AGENT_MAX_STR`.
    fn str(&mut self, s: &[u8]) -> Result<(), String> {
        if s.len() > AGENT_MAX_STR {
            return Err(format!("a string of {} bytes exceeds the sandbox's 1 MiB", s.len()));
        }
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s);
        Ok(())
    }

    fn strs<'a>(&mut self, all: impl ExactSizeIterator<Item = &'a [u8]>) -> Result<(), String> {
        if all.len() > AGENT_MAX_COUNT {
            return Err(format!("{} arguments, variables or outputs exceed the sandbox's 65536", all.len()));
        }
        self.u32(all.len() as u32);
        all.into_iter().try_for_each(|s| self.str(s))
    }
}

/// An absolute container path's bytes.
fn absolute(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(path.as_os_str().len() + 1);
    bytes.push(b'/');
    bytes.extend_from_slice(path.as_os_str().as_bytes());
    bytes
}

/// Builds the agent's request for `command` from the zlib'd inputs tar.
pub fn prepare(
    toolchain_root: &Path,
    command: &CompileCommand,
    outputs: &[String],
    inputs_zlib: &[u8],
    limits: &SandboxLimits,
    timeout: Duration,
) -> Result<PreparedJob, SandboxError> {
    let cwd = validate_command(command)?;
    let root = RootedDir::open(toolchain_root).map_err(SandboxError::Layout)?;
    let mut layout = Layout {
        root,
        created: HashSet::new(),
        files: HashSet::new(),
        top_dirs: Vec::new(),
        request: Request(Vec::with_capacity(inputs_zlib.len() * 4 + 4096)),
    };

    layout.ensure_dir(&cwd.relative()).map_err(SandboxError::BadCommand)?;
    let mut resolved = Vec::with_capacity(outputs.len());
    for name in outputs {
        let path = SandboxPath::parse_relative_to(&cwd, name.as_bytes()).map_err(bad_path)?.relative();
        let parent = path.parent().ok_or_else(|| SandboxError::BadCommand(format!("output {name:?} is the root")))?;
        layout.ensure_dir(parent).map_err(SandboxError::BadCommand)?;
        resolved.push(absolute(&path));
    }
    // The header goes before the entries written so far (the cwd's and outputs' directories).
    let header = {
        let mut r = Request(Vec::new());
        r.0.extend_from_slice(b"KJOB");
        r.u64(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        r.u64(limits.max_stdio_bytes);
        r.u64(limits.max_output_bytes);
        r.str(absolute(&cwd.relative()).as_slice()).map_err(SandboxError::BadCommand)?;
        let argv = std::iter::once(command.executable.as_bytes())
            .chain(command.arguments.iter().map(|a| a.as_bytes()))
            .collect::<Vec<_>>();
        r.strs(argv.into_iter()).map_err(SandboxError::BadCommand)?;
        // The job's environment only: the container itself has none.
        let env = command.env_vars.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
        r.strs(env.iter().map(|e| e.as_bytes())).map_err(SandboxError::BadCommand)?;
        r.strs(resolved.iter().map(|o| o.as_slice())).map_err(SandboxError::BadCommand)?;
        r.0
    };
    layout.add_inputs(inputs_zlib, &limits.inputs).map_err(SandboxError::Inputs)?;
    layout.request.u8(0);
    let mut request = header;
    request.append(&mut layout.request.0);
    Ok(PreparedJob { request, top_dirs: layout.top_dirs, outputs: outputs.to_vec() })
}

/// Whether a path exists in the image the container was made from.
enum InImage {
    Dir,
    Other,
    Missing,
}

struct Layout {
    root: RootedDir,
    /// Directories the job creates (relative paths), owned by the job user.
    created: HashSet<PathBuf>,
    /// Files, links and symlinks the job creates.
    files: HashSet<PathBuf>,
    /// New top-level directories (see [`PreparedJob::top_dirs`]).
    top_dirs: Vec<PathBuf>,
    /// The entries, as the agent lays them out.
    request: Request,
}

impl Layout {
    fn in_image(&self, path: &Path) -> InImage {
        let mut components = path.components();
        let first = components.next().map(|c| c.as_os_str());
        if components.next().is_none() {
            if let Some(first) = first {
                if IMAGE_DIRS.iter().any(|(d, _)| OsStr::new(d) == first) {
                    return InImage::Dir;
                }
                if OsStr::new(HELPER_PATH.trim_start_matches('/')) == first {
                    return InImage::Other;
                }
            }
        }
        let Ok(sandbox_path) = SandboxPath::parse(path.as_os_str().as_bytes()) else { return InImage::Other };
        match self.root.open_in(&sandbox_path, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(fd) => match fstat(&fd) {
                Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => InImage::Dir,
                _ => InImage::Other,
            },
            Err(Errno::ENOENT) => InImage::Missing,
            Err(_) => InImage::Other,
        }
    }

    /// Makes sure directory `path` exists for the job: emits an entry, owned by the
    /// job user, for each missing component. A component the toolchain has as
    /// something other than a real directory (a symlink, a file) is refused: the job
    /// must not reach into the toolchain through it.
    fn ensure_dir(&mut self, path: &Path) -> Result<(), String> {
        if let Some(std::path::Component::Normal(first)) = path.components().next() {
            if KERNEL_DIRS.iter().any(|d| OsStr::new(d) == first) {
                return Err(format!("/{} is a kernel file system in the container", path.display()));
            }
        }
        let mut prefix = PathBuf::new();
        for component in path.components() {
            prefix.push(component);
            if self.created.contains(&prefix) {
                continue;
            }
            if self.files.contains(&prefix) {
                return Err(format!("/{} is a file of the job, not a directory", prefix.display()));
            }
            match self.in_image(&prefix) {
                InImage::Dir => continue,
                InImage::Other => {
                    return Err(format!("/{} is a toolchain file or symlink, not a directory", prefix.display()))
                }
                InImage::Missing => {
                    // A new top-level directory (a cwd such as /work) belongs to root,
                    // sticky and open to all like /tmp: the job user can create no entry
                    // in root's `/`. It stays, and the reset empties it.
                    if prefix.components().count() == 1 {
                        self.top_dirs.push(prefix.clone());
                    } else {
                        self.entry(b'd', 0o755, &prefix)?;
                    }
                    self.created.insert(prefix.clone());
                }
            }
        }
        Ok(())
    }

    /// Starts an entry: its kind, its mode (directories and files) and its path.
    fn entry(&mut self, kind: u8, mode: u32, path: &Path) -> Result<(), String> {
        self.request.u8(kind);
        if kind == b'd' || kind == b'f' {
            self.request.u32(mode);
        }
        self.request.str(&absolute(path))
    }

    /// Re-packs the client's inputs: every entry owned by the job user, modes without
    /// setuid/setgid/sticky, parents created as the job's, nothing of the toolchain
    /// replaced; only files, directories, symlinks and hard links to the job's files.
    fn add_inputs(&mut self, inputs_zlib: &[u8], limits: &ExtractLimits) -> Result<(), ArchiveError> {
        let stream_limit = limits.max_bytes.saturating_add(limits.max_entries.saturating_mul(HEADER_ALLOWANCE));
        let mut archive = tar::Archive::new(ZlibDecoder::new(inputs_zlib).take(stream_limit));
        let (mut entries, mut bytes) = (0u64, 0u64);
        for entry in archive.entries().map_err(ArchiveError::Read)? {
            let mut entry = entry.map_err(ArchiveError::Read)?;
            let kind = entry.header().entry_type();
            if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
                continue;
            }
            entries += 1;
            if entries > limits.max_entries {
                return Err(ArchiveError::TooManyEntries { limit: limits.max_entries });
            }
            let sandbox_path = SandboxPath::parse(&entry.path_bytes())?;
            if sandbox_path.depth() > limits.max_depth {
                return Err(ArchiveError::BadPath { path: sandbox_path.display(), reason: "path is too deep" });
            }
            let display = sandbox_path.display();
            let path = sandbox_path.relative();
            let refuse = |reason| ArchiveError::BadPath { path: display.clone(), reason };
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            let mtime = entry.header().mtime().unwrap_or(0);
            if kind == EntryType::Directory {
                self.ensure_dir(&path).map_err(|_| refuse("not a directory the job may create"))?;
                continue;
            }
            let parent = path.parent().ok_or_else(|| refuse("entry names the root itself"))?;
            self.ensure_dir(parent).map_err(|_| refuse("its directory is not one the job may create"))?;
            if self.files.contains(&path) {
                return Err(refuse("the archive names it twice"));
            }
            if self.created.contains(&path) || !matches!(self.in_image(&path), InImage::Missing) {
                return Err(refuse("it would replace a directory or a toolchain file"));
            }
            let too_long = |_| refuse("path or link target too long for the sandbox");
            match kind {
                EntryType::Regular | EntryType::Continuous => {
                    let size = entry.size();
                    bytes = bytes.saturating_add(size);
                    if bytes > limits.max_bytes {
                        return Err(ArchiveError::TooLarge { limit: limits.max_bytes });
                    }
                    self.entry(b'f', mode, &path).map_err(too_long)?;
                    self.request.u64(mtime);
                    self.request.u64(size);
                    let copied =
                        std::io::copy(&mut (&mut entry).take(size), &mut self.request.0).map_err(ArchiveError::Read)?;
                    if copied != size {
                        return Err(refuse("the entry is shorter than its header says"));
                    }
                }
                EntryType::Symlink => {
                    // Any target: it is only ever resolved inside the container.
                    let target = entry.link_name_bytes().ok_or_else(|| refuse("symlink without a target"))?;
                    if target.is_empty() || target.contains(&0) {
                        return Err(refuse("symlink target is empty or has a NUL byte"));
                    }
                    self.entry(b'l', 0, &path).map_err(too_long)?;
                    self.request.str(&target).map_err(too_long)?;
                }
                EntryType::Link => {
                    let target = entry.link_name_bytes().ok_or_else(|| refuse("hard link without a target"))?;
                    let target = SandboxPath::parse(&target)?.relative();
                    if !self.files.contains(&target) {
                        return Err(refuse("hard link to something that is not one of the job's files"));
                    }
                    self.entry(b'h', 0, &path).map_err(too_long)?;
                    self.request.str(&absolute(&target)).map_err(too_long)?;
                }
                other => {
                    return Err(ArchiveError::BadEntryType { path: display, kind: format!("{other:?}") });
                }
            }
            self.files.insert(path);
        }
        Ok(())
    }
}

/// The upload that makes new top-level directories: root's, sticky and open to all
/// like /tmp.
pub fn top_dirs_tar(dirs: &[PathBuf]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for dir in dirs {
        tar.append_data(&mut root_dir_header(0o1777), dir, std::io::empty())?;
    }
    tar.into_inner()
}
