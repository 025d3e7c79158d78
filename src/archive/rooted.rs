//! A directory treated as the root of a filesystem the server does not trust.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

use super::ArchiveError;

/// Longest path accepted inside a root (the kernel's PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;

/// A relative path inside a root: only normal components, no `..`, no empty path.
///
/// Built from untrusted strings (tar entries, a job's cwd and outputs); leading `/`
/// and `.` components are dropped, because clients name sandbox paths absolutely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPath {
    components: Vec<Vec<u8>>,
}

impl SandboxPath {
    /// Parses `raw` (absolute or relative) into a path inside the root.
    pub fn parse(raw: &[u8]) -> Result<Self, ArchiveError> {
        let bad = |reason| ArchiveError::BadPath { path: String::from_utf8_lossy(raw).into_owned(), reason };
        if raw.len() > MAX_PATH_BYTES {
            return Err(bad("path is too long"));
        }
        if raw.contains(&0) {
            return Err(bad("path contains a NUL byte"));
        }
        let mut components = Vec::new();
        for component in Path::new(OsStr::from_bytes(raw)).components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir => return Err(bad("path contains `..`")),
                Component::Normal(name) => components.push(name.as_bytes().to_vec()),
                Component::Prefix(_) => return Err(bad("path has a prefix")),
            }
        }
        Ok(SandboxPath { components })
    }

    /// `base.join(raw)` for a possibly relative `raw` (a job's output relative to its cwd).
    pub fn parse_relative_to(base: &SandboxPath, raw: &[u8]) -> Result<Self, ArchiveError> {
        if raw.first() == Some(&b'/') {
            return Self::parse(raw);
        }
        let mut joined = Self::parse(raw)?;
        let mut components = base.components.clone();
        components.append(&mut joined.components);
        Ok(SandboxPath { components })
    }

    pub fn depth(&self) -> usize {
        self.components.len()
    }

    /// The parent and the last component, or `None` for the root.
    pub fn split_last(&self) -> Option<(SandboxPath, &OsStr)> {
        let (last, parent) = self.components.split_last()?;
        Some((SandboxPath { components: parent.to_vec() }, OsStr::from_bytes(last)))
    }

    /// The path relative to the root, as the kernel takes it (`.` for the root).
    pub fn relative(&self) -> std::path::PathBuf {
        if self.components.is_empty() {
            return ".".into();
        }
        self.components.iter().map(|c| OsStr::from_bytes(c)).collect()
    }

    /// The path as the sandboxed process sees it (absolute).
    pub fn display(&self) -> String {
        let mut s = String::new();
        for c in &self.components {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(c));
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }
}

/// A directory opened once, under which every lookup is resolved as if it were `/`.
///
/// `RESOLVE_IN_ROOT` makes absolute symlinks and `..` stay inside the directory;
/// `RESOLVE_NO_MAGICLINKS` refuses `/proc/*/fd`-style jumps; `RESOLVE_NO_XDEV` refuses
/// to cross into anything mounted below it.
pub struct RootedDir {
    fd: OwnedFd,
}

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

impl RootedDir {
    pub fn open(path: &Path) -> Result<Self, ArchiveError> {
        let fd = nix::fcntl::open(path, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|source| ArchiveError::OpenRoot { path: path.to_owned(), source })?;
        Ok(RootedDir { fd })
    }

    /// Opens `path` inside the root with `flags`, following symlinks only inside it.
    pub fn open_in(&self, path: &SandboxPath, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).mode(mode).resolve(resolve_flags());
        openat2(self.fd.as_fd(), &path.relative(), how)
    }

    /// Opens a file for reading, never through a final symlink; `Ok(None)` if it does
    /// not exist. `O_NONBLOCK` so a fifo planted by a job cannot block the open; the
    /// caller checks that what it got is a regular file.
    pub fn open_file(&self, path: &SandboxPath) -> Result<Option<File>, ArchiveError> {
        match self.open_in(path, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::ENOENT) => Ok(None),
            Err(source) => Err(ArchiveError::Io { op: "open", path: path.display(), source }),
        }
    }

    /// Opens directory `path`, creating missing components with `mode` on the way.
    ///
    /// Existing components are resolved inside the root, so a symlinked one keeps
    /// its in-sandbox meaning. The deepest prefix that exists is found by binary
    /// search (a prefix resolves only if every shorter one does): O(d log d)
    /// lookups for a path of depth d, not the O(d^2) of resolving each prefix in
    /// turn, which let a job's deep output paths cost kiln seconds of CPU (issue
    /// 27). Below it, each directory is the one just made: opened from its parent,
    /// never through a symlink.
    pub fn create_dir_all(&self, path: &SandboxPath, mode: Mode) -> Result<OwnedFd, ArchiveError> {
        let dir_flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        let io = |op, source| ArchiveError::Io { op, path: path.display(), source };
        match self.open_in(path, dir_flags, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(source) => return Err(io("open directory", source)),
        }
        let prefix = |depth: usize| SandboxPath { components: path.components[..depth].to_vec() };
        // `found` components resolve (the root: 0), `path.depth()` do not.
        let (mut found, mut missing) = (0, path.depth());
        let mut current = self.open_in(&prefix(0), dir_flags, Mode::empty()).map_err(|e| io("open root", e))?;
        while missing - found > 1 {
            let middle = found + (missing - found) / 2;
            match self.open_in(&prefix(middle), dir_flags, Mode::empty()) {
                Ok(fd) => (found, current) = (middle, fd),
                Err(Errno::ENOENT) => missing = middle,
                Err(source) => return Err(io("open directory", source)),
            }
        }
        for component in &path.components[found..] {
            let name = OsStr::from_bytes(component);
            match mkdirat(current.as_fd(), name, mode) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(source) => return Err(io("create directory", source)),
            }
            let flags = dir_flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            current =
                nix::fcntl::openat(current.as_fd(), name, flags, Mode::empty()).map_err(|e| io("open directory", e))?;
        }
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_strips_root_and_dots_and_rejects_parent() {
        let p = SandboxPath::parse(b"/a/./b//c").unwrap();
        assert_eq!(p.display(), "/a/b/c");
        assert!(SandboxPath::parse(b"a/../../etc").is_err());
        assert_eq!(SandboxPath::parse(b"/").unwrap().depth(), 0);
        let cwd = SandboxPath::parse(b"/work").unwrap();
        assert_eq!(SandboxPath::parse_relative_to(&cwd, b"out/x.o").unwrap().display(), "/work/out/x.o");
        assert_eq!(SandboxPath::parse_relative_to(&cwd, b"/abs.o").unwrap().display(), "/abs.o");
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        let root = RootedDir::open(dir.path()).unwrap();
        // An absolute link target is taken relative to the root, where it does not exist.
        let p = SandboxPath::parse(b"/escape/secret").unwrap();
        assert!(root.open_file(&p).unwrap().is_none());
        // A symlink as the last component is never followed.
        assert!(root.open_file(&SandboxPath::parse(b"link").unwrap()).is_err());
        // A directory cannot be created through a link that points outside.
        let through = SandboxPath::parse(b"/escape/sub").unwrap();
        assert!(root.create_dir_all(&through, Mode::from_bits_truncate(0o755)).is_err());
        assert!(!outside.path().join("sub").exists());
    }
}
