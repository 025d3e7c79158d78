//! One job's files: the inputs re-packed as a single upload the job user owns, and the
//! outputs picked out of the download.
//!
//! Both sides run on tokio's blocking pool (zlib, tar). The container's file system
//! is the toolchain (owned by root) plus what this module uploads (owned by the job
//! user): inputs may add files and directories, never replace a toolchain path, so
//! the cleaner can restore the container by removing what the job user owns.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use flate2::read::ZlibDecoder;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode, SFlag};
use tar::EntryType;

use super::engine::HELPER_PATH;
use super::image::IMAGE_DIRS;
use crate::archive::{ArchiveError, ExtractLimits, RootedDir, SandboxPath};
use crate::protocol::{CompileCommand, OutputData};
use crate::sandbox::job::{bad_path, validate_command};
use crate::sandbox::SandboxError;

/// Top-level directories that are kernel file systems in every container: a job's
/// inputs, cwd or outputs can never be there.
const KERNEL_DIRS: &[&str] = &["proc", "sys", "dev"];

/// Per-entry allowance for tar headers in the decompressed inputs stream.
const HEADER_ALLOWANCE: u64 = 2048;

/// A job ready to go into its container.
#[derive(Debug)]
pub struct PreparedJob {
    /// The inputs, the cwd and the outputs' directories as one tar for `/`.
    pub upload: Vec<u8>,
    /// Absolute cwd inside the container.
    pub cwd: String,
    /// Each output as the client named it and as an absolute container path.
    pub outputs: Vec<(String, PathBuf)>,
    /// Absolute container paths to download: one directory holding every output
    /// when the job owns one, else each output on its own.
    pub downloads: Vec<PathBuf>,
}

/// Whether a path exists in the image the container was made from.
enum InImage {
    Dir,
    Other,
    Missing,
}

/// Builds the upload for `command` from the zlib'd inputs tar.
pub fn prepare(
    toolchain_root: &Path,
    command: &CompileCommand,
    outputs: &[String],
    inputs_zlib: &[u8],
    owner: (u32, u32),
    limits: &ExtractLimits,
) -> Result<PreparedJob, SandboxError> {
    let cwd = validate_command(command)?;
    let root = RootedDir::open(toolchain_root).map_err(SandboxError::Layout)?;
    let mut layout = Layout { root, owner, created: HashSet::new(), files: HashSet::new(), tar: new_tar() };

    layout.ensure_dir(&cwd.relative()).map_err(SandboxError::BadCommand)?;
    let mut resolved = Vec::with_capacity(outputs.len());
    for name in outputs {
        let path = SandboxPath::parse_relative_to(&cwd, name.as_bytes()).map_err(bad_path)?.relative();
        let parent = path.parent().ok_or_else(|| SandboxError::BadCommand(format!("output {name:?} is the root")))?;
        layout.ensure_dir(parent).map_err(SandboxError::BadCommand)?;
        resolved.push((name.clone(), path));
    }
    layout.add_inputs(inputs_zlib, limits).map_err(SandboxError::Inputs)?;

    let downloads = plan_downloads(&resolved, &layout.created);
    let upload = layout.tar.into_inner().map_err(|e| SandboxError::Inputs(ArchiveError::Read(e)))?;
    Ok(PreparedJob {
        upload,
        cwd: cwd.display(),
        outputs: resolved.into_iter().map(|(n, p)| (n, Path::new("/").join(p))).collect(),
        downloads,
    })
}

fn new_tar() -> tar::Builder<Vec<u8>> {
    tar::Builder::new(Vec::new())
}

/// The lowest directory the job owns that holds every output, else every output alone.
fn plan_downloads(outputs: &[(String, PathBuf)], created: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let mut parents = outputs.iter().filter_map(|(_, p)| p.parent());
    let Some(first) = parents.next() else { return Vec::new() };
    let mut common = first.to_path_buf();
    for parent in parents {
        while !parent.starts_with(&common) {
            if !common.pop() {
                break;
            }
        }
    }
    if created.contains(&common) {
        vec![Path::new("/").join(common)]
    } else {
        outputs.iter().map(|(_, p)| Path::new("/").join(p)).collect()
    }
}

struct Layout {
    root: RootedDir,
    owner: (u32, u32),
    /// Directories this upload creates (relative paths), owned by the job user.
    created: HashSet<PathBuf>,
    /// Files, links and symlinks this upload creates.
    files: HashSet<PathBuf>,
    tar: tar::Builder<Vec<u8>>,
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
                    // sticky and open to all like /tmp: the job user cannot remove an
                    // entry of root's `/`, so a job-owned one would fail the reset and
                    // cost the container. This one stays, and the reset empties it.
                    let appended = match prefix.components().count() {
                        1 => self.append_top_dir(&prefix),
                        _ => self.append_dir(&prefix, 0o755),
                    };
                    appended.map_err(|e| format!("packing /{}: {e}", prefix.display()))?;
                    self.created.insert(prefix.clone());
                }
            }
        }
        Ok(())
    }

    fn header(&self, kind: EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(self.owner.0.into());
        header.set_gid(self.owner.1.into());
        header.set_size(size);
        header.set_mtime(mtime);
        header
    }

    fn append_top_dir(&mut self, path: &Path) -> std::io::Result<()> {
        let mut header = self.header(EntryType::Directory, 0o1777, 0, 0);
        header.set_uid(0);
        header.set_gid(0);
        self.tar.append_data(&mut header, path, std::io::empty())
    }

    fn append_dir(&mut self, path: &Path, mode: u32) -> std::io::Result<()> {
        let mut header = self.header(EntryType::Directory, mode, 0, 0);
        self.tar.append_data(&mut header, path, std::io::empty())
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
            if self.created.contains(&path) || !matches!(self.in_image(&path), InImage::Missing) {
                return Err(refuse("it would replace a directory or a toolchain file"));
            }
            match kind {
                EntryType::Regular | EntryType::Continuous => {
                    let size = entry.size();
                    bytes = bytes.saturating_add(size);
                    if bytes > limits.max_bytes {
                        return Err(ArchiveError::TooLarge { limit: limits.max_bytes });
                    }
                    let mut header = self.header(EntryType::Regular, mode, size, mtime);
                    self.tar.append_data(&mut header, &path, &mut entry).map_err(ArchiveError::Read)?;
                }
                EntryType::Symlink => {
                    // Any target: it is only ever resolved inside the container.
                    let target = entry.link_name_bytes().ok_or_else(|| refuse("symlink without a target"))?;
                    if target.is_empty() || target.contains(&0) {
                        return Err(refuse("symlink target is empty or has a NUL byte"));
                    }
                    let mut header = self.header(EntryType::Symlink, 0o777, 0, mtime);
                    let target = Path::new(OsStr::from_bytes(&target)).to_path_buf();
                    self.tar.append_link(&mut header, &path, target).map_err(ArchiveError::Read)?;
                }
                EntryType::Link => {
                    let target = entry.link_name_bytes().ok_or_else(|| refuse("hard link without a target"))?;
                    let target = SandboxPath::parse(&target)?.relative();
                    if !self.files.contains(&target) {
                        return Err(refuse("hard link to something that is not one of the job's files"));
                    }
                    let mut header = self.header(EntryType::Link, mode, 0, mtime);
                    self.tar.append_link(&mut header, &path, &target).map_err(ArchiveError::Read)?;
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

/// Picks the outputs out of the downloaded tars (`(download path, tar)` pairs, `None`
/// for a path that did not exist): regular files only, at most `max_output_bytes`
/// in total, in the order the client asked for them; missing ones are left out.
pub fn collect_outputs(
    outputs: &[(String, PathBuf)],
    downloads: &[(PathBuf, Option<Vec<u8>>)],
    max_output_bytes: u64,
) -> Result<Vec<(String, OutputData)>, SandboxError> {
    let wanted: HashMap<&Path, usize> = outputs.iter().enumerate().map(|(i, (_, p))| (p.as_path(), i)).collect();
    let mut found: Vec<Option<OutputData>> = outputs.iter().map(|_| None).collect();
    let mut total = 0u64;
    for (download, tar) in downloads {
        let Some(tar) = tar else { continue };
        // The daemon names entries after the downloaded path's last component.
        let base = download.parent().unwrap_or(Path::new("/"));
        let mut archive = tar::Archive::new(&tar[..]);
        let read_err = |e| SandboxError::Output { path: download.display().to_string(), source: ArchiveError::Read(e) };
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            let Ok(relative) = SandboxPath::parse(&entry.path_bytes()) else { continue };
            let path = base.join(relative.relative());
            let Some(&index) = wanted.get(path.as_path()) else { continue };
            if entry.header().entry_type() != EntryType::Regular {
                tracing::warn!(path = %path.display(), "output is not a regular file; left out");
                continue;
            }
            let size = entry.size();
            if total.saturating_add(size) > max_output_bytes {
                return Err(SandboxError::OutputsTooLarge { limit: max_output_bytes });
            }
            total += size;
            let name = path.display().to_string();
            let data = OutputData::compress_reader((&mut entry).take(size))
                .map_err(|source| SandboxError::CompressOutput { path: name, source })?;
            found[index] = Some(data);
        }
    }
    Ok(outputs.iter().zip(found).filter_map(|((name, _), data)| Some((name.clone(), data?))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_download_when_the_job_owns_a_common_directory() {
        let created: HashSet<PathBuf> = ["w", "w/obj", "w/obj/deep"].iter().map(PathBuf::from).collect();
        let outputs = vec![("a".into(), PathBuf::from("w/obj/a.o")), ("b".into(), PathBuf::from("w/obj/deep/b.o"))];
        assert_eq!(plan_downloads(&outputs, &created), vec![PathBuf::from("/w/obj")]);
        let outputs = vec![("a".into(), PathBuf::from("w/a.o")), ("b".into(), PathBuf::from("tmp/b.o"))];
        assert_eq!(plan_downloads(&outputs, &created), vec![PathBuf::from("/w/a.o"), PathBuf::from("/tmp/b.o")]);
        assert!(plan_downloads(&[], &created).is_empty());
    }
}
