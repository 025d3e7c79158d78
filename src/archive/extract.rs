//! Tar extraction with limits, resolving every path inside the destination.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};
use tar::EntryType;

use super::{ArchiveError, RootedDir, SandboxPath};

/// Bounds on what one archive may create. Every field is checked while unpacking,
/// before the bytes concerned are read.
#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    /// Entries of any kind, counting each parent directory the archive does not
    /// list but its paths need: what the extraction costs in inodes.
    pub max_entries: u64,
    /// Sum of regular file sizes, and also the bound on the decompressed stream
    /// (plus header overhead), so a compression bomb stops at the same point.
    pub max_bytes: u64,
    /// Path components of one entry.
    pub max_depth: usize,
}

/// What an extraction created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExtractStats {
    /// Entries, and the parent directories made for them that no entry listed. At
    /// least the inodes created (a hard link or a replaced file counts, costs none).
    pub entries: u64,
    pub bytes: u64,
}

/// Per-entry overhead allowed in the decompressed stream on top of file data
/// (tar headers, padding, long names).
const HEADER_ALLOWANCE: u64 = 2048;

/// Unpacks the tar stream `reader` into `dest`.
///
/// Regular files, directories, symlinks (any target: they are only ever followed
/// inside `dest`) and hard links (to a path inside `dest`) are created; devices and
/// fifos are refused; setuid, setgid and sticky bits are dropped.
pub fn extract_tar(reader: impl Read, dest: &Path, limits: &ExtractLimits) -> Result<ExtractStats, ArchiveError> {
    extract_tar_into(reader, &RootedDir::open(dest)?, limits)
}

/// [`extract_tar`] into a root that is already open.
pub fn extract_tar_into(
    reader: impl Read,
    root: &RootedDir,
    limits: &ExtractLimits,
) -> Result<ExtractStats, ArchiveError> {
    let stream_limit = limits.max_bytes.saturating_add(limits.max_entries.saturating_mul(HEADER_ALLOWANCE));
    let mut archive = tar::Archive::new(LimitedReader { inner: reader, remaining: stream_limit });
    let mut stats = ExtractStats::default();
    // The directory the last entry was made in: most archives list a directory's
    // files together, so most entries need no look-up to count missing parents.
    let mut known_dir: Option<SandboxPath> = None;
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(read_error)?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(ArchiveError::TooManyEntries { limit: limits.max_entries });
        }
        let path = SandboxPath::parse(&entry.path_bytes())?;
        if path.depth() > limits.max_depth {
            return Err(ArchiveError::BadPath { path: path.display(), reason: "path is too deep" });
        }
        // `a/b/.../f` alone makes a directory per missing component: counted before
        // they are made, so deep paths cannot multiply an archive's inodes.
        let parent = path.split_last().map(|(parent, _)| parent);
        if let Some(parent) = parent.as_ref().filter(|p| known_dir.as_ref() != Some(*p)) {
            stats.entries += missing_dirs(root, parent);
            if stats.entries > limits.max_entries {
                return Err(ArchiveError::TooManyEntries { limit: limits.max_entries });
            }
        }
        // Permission bits only: set-uid and set-gid never survive unpacking.
        let mode = Mode::from_bits_truncate(entry.header().mode().unwrap_or(0o644)) & Mode::from_bits_truncate(0o777);
        match kind {
            EntryType::Directory => {
                // A directory keeps its sticky bit: a toolchain's `/tmp` (1777) would
                // otherwise become 0777, where any process may delete another's files.
                let sticky = Mode::from_bits_truncate(entry.header().mode().unwrap_or(0)) & Mode::S_ISVTX;
                let dir = root.create_dir_all(&path, Mode::from_bits_truncate(0o755))?;
                fchmod(dir.as_fd(), mode | sticky | Mode::S_IRWXU).map_err(|source| io_err("chmod", &path, source))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                if stats.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(ArchiveError::TooLarge { limit: limits.max_bytes });
                }
                write_file(root, &path, mode, &mut entry)?;
                stats.bytes += size;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| bad(&path, "symlink without a target"))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(bad(&path, "symlink target is empty or has a NUL byte"));
                }
                let (parent, name) = parent_of(root, &path)?;
                replace_existing(&parent, name, &path)?;
                symlinkat(std::ffi::OsStr::from_bytes(&target), parent.as_fd(), name)
                    .map_err(|source| io_err("create symlink", &path, source))?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| bad(&path, "hard link without a target"))?;
                let target = SandboxPath::parse(&target)?;
                let (target_parent, target_name) = existing_parent_of(root, &target)?;
                let (parent, name) = parent_of(root, &path)?;
                replace_existing(&parent, name, &path)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                linkat(target_parent.as_fd(), target_name, parent.as_fd(), name, AtFlags::empty())
                    .map_err(|source| io_err("create hard link", &path, source))?;
            }
            other => {
                return Err(ArchiveError::BadEntryType { path: path.display(), kind: format!("{other:?}") });
            }
        }
        known_dir = if kind == EntryType::Directory { Some(path) } else { parent };
    }
    Ok(stats)
}

/// How many directories of `dir`, itself included, do not exist yet: creating it
/// makes that many inodes. Walks up from `dir` only while components are missing,
/// so the look-ups are at most one more than the directories about to be made. A
/// look-up that fails otherwise stops the count; creating the path reports it.
fn missing_dirs(root: &RootedDir, dir: &SandboxPath) -> u64 {
    let mut missing = 0;
    let mut current = dir.clone();
    while current.depth() > 0 {
        match root.open_in(&current, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()) {
            Err(Errno::ENOENT) => missing += 1,
            _ => break,
        }
        current = match current.split_last() {
            Some((parent, _)) => parent,
            None => break,
        };
    }
    missing
}

fn write_file(root: &RootedDir, path: &SandboxPath, mode: Mode, data: &mut impl Read) -> Result<(), ArchiveError> {
    let (parent, name) = parent_of(root, path)?;
    replace_existing(&parent, name, path)?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(parent.as_fd(), name, flags, Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(|source| io_err("create file", path, source))?;
    let mut file = File::from(fd);
    // Not io::copy: a failing read is the archive's fault (truncated, corrupt: a
    // bad archive, 400, dropped from the cache), a failing write the server's
    // (disk full: 500). io::copy's error does not say which side failed.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        file.write_all(&buf[..n]).map_err(|source| ArchiveError::Write { path: path.display(), source })?;
    }
    // Set the mode after writing: the umask must not decide it, and a read-only mode
    // must not stop us writing.
    fchmod(file.as_fd(), mode).map_err(|source| io_err("chmod", path, source))
}

/// The directory that will hold `path` (created if missing) and the entry's name.
fn parent_of<'p>(
    root: &RootedDir,
    path: &'p SandboxPath,
) -> Result<(std::os::fd::OwnedFd, &'p std::ffi::OsStr), ArchiveError> {
    let (parent, name) = path.split_last().ok_or_else(|| bad(path, "entry names the root itself"))?;
    Ok((root.create_dir_all(&parent, Mode::from_bits_truncate(0o755))?, name))
}

/// Like [`parent_of`], but the parent must already exist (hard link targets).
fn existing_parent_of<'p>(
    root: &RootedDir,
    path: &'p SandboxPath,
) -> Result<(std::os::fd::OwnedFd, &'p std::ffi::OsStr), ArchiveError> {
    let (parent, name) = path.split_last().ok_or_else(|| bad(path, "hard link to the root"))?;
    let fd = root
        .open_in(&parent, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
        .map_err(|source| io_err("open link target directory", path, source))?;
    Ok((fd, name))
}

/// Later entries replace earlier ones, as tar does; a directory is never replaced.
fn replace_existing(
    parent: &std::os::fd::OwnedFd,
    name: &std::ffi::OsStr,
    path: &SandboxPath,
) -> Result<(), ArchiveError> {
    match unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(source) => Err(io_err("replace", path, source)),
    }
}

fn bad(path: &SandboxPath, reason: &'static str) -> ArchiveError {
    ArchiveError::BadPath { path: path.display(), reason }
}

fn io_err(op: &'static str, path: &SandboxPath, source: Errno) -> ArchiveError {
    ArchiveError::Io { op, path: path.display(), source }
}

fn read_error(e: io::Error) -> ArchiveError {
    unwrap_limit(&e).unwrap_or(ArchiveError::Read(e))
}

/// Recovers the limit error smuggled through `io::Error` by [`LimitedReader`].
fn unwrap_limit(e: &io::Error) -> Option<ArchiveError> {
    let limit = e.get_ref()?.downcast_ref::<StreamLimit>()?;
    Some(ArchiveError::TooLarge { limit: limit.0 })
}

#[derive(Debug)]
struct StreamLimit(u64);

impl std::fmt::Display for StreamLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "decompressed archive exceeds {} bytes", self.0)
    }
}

impl std::error::Error for StreamLimit {}

/// Fails the read once more than `remaining` bytes came out of the decompressor,
/// so neither a bomb nor a huge long-name entry can use unbounded memory or time.
struct LimitedReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // One more byte would be over the limit: check whether the stream has ended.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(io::ErrorKind::InvalidData, StreamLimit(0))),
            };
        }
        let max = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const LIMITS: ExtractLimits = ExtractLimits { max_entries: 100, max_bytes: 1 << 20, max_depth: 32 };

    fn header(kind: EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h
    }

    /// Writes a raw path into the header, bypassing the tar crate's own checks.
    fn raw_entry(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, path: &[u8], link: Option<&[u8]>, data: &[u8]) {
        let mut h = header(kind, data.len() as u64, 0o4755);
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacks_files_dirs_links_and_drops_setuid() {
        let data = tar_of(|b| {
            raw_entry(b, EntryType::Directory, b"/src/", None, b"");
            raw_entry(b, EntryType::Regular, b"/src/a.c", None, b"int a;");
            raw_entry(b, EntryType::Symlink, b"src/b.c", Some(b"a.c"), b"");
            raw_entry(b, EntryType::Link, b"src/c.c", Some(b"/src/a.c"), b"");
        });
        let dest = tempfile::tempdir().unwrap();
        let stats = extract_tar(&data[..], dest.path(), &LIMITS).unwrap();
        assert_eq!(stats, ExtractStats { entries: 4, bytes: 6 });
        assert_eq!(std::fs::read(dest.path().join("src/b.c")).unwrap(), b"int a;");
        assert_eq!(std::fs::read(dest.path().join("src/c.c")).unwrap(), b"int a;");
        let mode = std::fs::metadata(dest.path().join("src/a.c")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755, "setuid must be dropped");
    }

    #[test]
    fn directories_keep_the_sticky_bit_and_lose_set_id_bits() {
        let data = tar_of(|b| {
            for (path, mode) in [("tmp", 0o1777), ("setid", 0o6755)] {
                let mut h = header(EntryType::Directory, 0, mode);
                h.set_path(path).unwrap();
                h.set_cksum();
                b.append(&h, &b""[..]).unwrap();
            }
        });
        let dest = tempfile::tempdir().unwrap();
        extract_tar(&data[..], dest.path(), &LIMITS).unwrap();
        let mode = |p: &str| std::fs::metadata(dest.path().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777, "a toolchain's /tmp stays sticky");
        assert_eq!(mode("setid"), 0o755, "set-uid and set-gid bits are dropped");
    }

    #[test]
    fn refuses_escapes() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().as_bytes().to_vec();
        let dest = tempfile::tempdir().unwrap();
        let dotdot = tar_of(|b| raw_entry(b, EntryType::Regular, b"a/../../x", None, b"x"));
        assert!(matches!(extract_tar(&dotdot[..], dest.path(), &LIMITS), Err(ArchiveError::BadPath { .. })));
        // A symlink to a host directory, then a file written through it.
        let through_link = tar_of(|b| {
            raw_entry(b, EntryType::Symlink, b"esc", Some(&target), b"");
            raw_entry(b, EntryType::Regular, b"esc/pwned", None, b"x");
        });
        let _ = extract_tar(&through_link[..], dest.path(), &LIMITS);
        assert!(!outside.path().join("pwned").exists());
        // A hard link to a host file resolves inside the destination, where it is absent.
        let host_file = outside.path().join("secret");
        std::fs::write(&host_file, b"s").unwrap();
        let hard = tar_of(|b| raw_entry(b, EntryType::Link, b"h", Some(host_file.to_str().unwrap().as_bytes()), b""));
        assert!(extract_tar(&hard[..], dest.path(), &LIMITS).is_err());
        assert!(!dest.path().join("h").exists());
        let fifo = tar_of(|b| raw_entry(b, EntryType::Fifo, b"f", None, b""));
        assert!(matches!(extract_tar(&fifo[..], dest.path(), &LIMITS), Err(ArchiveError::BadEntryType { .. })));
    }

    #[test]
    fn enforces_limits() {
        let dest = tempfile::tempdir().unwrap();
        let many = tar_of(|b| {
            for i in 0..5 {
                raw_entry(b, EntryType::Regular, format!("f{i}").as_bytes(), None, b"x");
            }
        });
        let few = ExtractLimits { max_entries: 4, ..LIMITS };
        assert!(matches!(extract_tar(&many[..], dest.path(), &few), Err(ArchiveError::TooManyEntries { .. })));
        let big = tar_of(|b| raw_entry(b, EntryType::Regular, b"big", None, &vec![0u8; 4096]));
        let small = ExtractLimits { max_bytes: 1000, ..LIMITS };
        assert!(matches!(extract_tar(&big[..], dest.path(), &small), Err(ArchiveError::TooLarge { .. })));
        // A header that declares far more than the stream holds is refused up front.
        let mut h = header(EntryType::Regular, 1 << 40, 0o644);
        h.set_path("huge").unwrap();
        h.set_cksum();
        let mut lying = h.as_bytes().to_vec();
        lying.extend_from_slice(&[0u8; 1024]);
        assert!(matches!(extract_tar(&lying[..], dest.path(), &LIMITS), Err(ArchiveError::TooLarge { .. })));
    }

    /// Files listed without their directories still pay for them: the parents a
    /// path needs count as entries, so an archive of deep paths cannot create
    /// `max_depth` inodes per entry under an entry cap (issue 27).
    #[test]
    fn unlisted_parent_directories_count_as_entries() {
        let data = tar_of(|b| {
            raw_entry(b, EntryType::Regular, b"a/b/c/f1", None, b"");
            raw_entry(b, EntryType::Regular, b"a/b/c/f2", None, b"");
            raw_entry(b, EntryType::Regular, b"a/b/d/f3", None, b"");
            raw_entry(b, EntryType::Directory, b"a/e/", None, b"");
            raw_entry(b, EntryType::Regular, b"a/e/f4", None, b"");
        });
        let dest = tempfile::tempdir().unwrap();
        let stats = extract_tar(&data[..], dest.path(), &LIMITS).unwrap();
        // 5 entries, plus a, a/b, a/b/c and a/b/d: the 9 inodes made.
        assert_eq!(stats.entries, 9);
        let walked = walkdir_count(dest.path());
        assert_eq!(stats.entries, walked);

        // One entry 30 directories deep is 30 inodes: over a cap of 20.
        let deep_path = format!("{}f", "d/".repeat(29));
        let deep = tar_of(|b| raw_entry(b, EntryType::Regular, deep_path.as_bytes(), None, b""));
        let dest = tempfile::tempdir().unwrap();
        let capped = ExtractLimits { max_entries: 20, ..LIMITS };
        let result = extract_tar(&deep[..], dest.path(), &capped);
        assert!(matches!(result, Err(ArchiveError::TooManyEntries { limit: 20 })), "{result:?}");
        assert!(walkdir_count(dest.path()) <= 20, "nothing past the cap was made");
    }

    /// Every file, directory and link under `dir` (not `dir` itself).
    fn walkdir_count(dir: &Path) -> u64 {
        let mut count = 0;
        let mut pending = vec![dir.to_owned()];
        while let Some(next) = pending.pop() {
            for entry in std::fs::read_dir(next).unwrap() {
                let entry = entry.unwrap();
                count += 1;
                if entry.file_type().unwrap().is_dir() {
                    pending.push(entry.path());
                }
            }
        }
        count
    }

    #[test]
    fn a_truncated_archive_is_a_read_error_not_a_write_error() {
        let data = tar_of(|b| raw_entry(b, EntryType::Regular, b"f", None, &[7u8; 4096]));
        let dest = tempfile::tempdir().unwrap();
        let result = extract_tar(&data[..512 + 1000], dest.path(), &LIMITS);
        assert!(matches!(result, Err(ArchiveError::Read(_))), "{result:?}");
    }
}
