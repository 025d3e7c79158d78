//! Removing a directory tree a job could have written, whatever its shape.
//!
//! `std::fs::remove_dir_all` recurses once per level and keeps one fd open per
//! level: a job that leaves a tree 16,000 levels deep overflows the remover's stack
//! (kiln aborts, and again in every restart's sweep), and under a low fd limit the
//! tree is never removed. [`remove_tree`] walks the tree in a loop with its state on
//! the heap, holds at most three fds at any depth, and never builds a path for a
//! syscall (a deep tree's paths are far longer than PATH_MAX, see path_resolution(7)).

#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{open, openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Subdirectory names read ahead, all levels together (at least one per level).
/// Reading ahead spares a rescan of the parent after each subdirectory, which is
/// quadratic in a directory with many subdirectories; the cap bounds the memory a
/// wide *and* deep tree can make the walk use (names are at most 255 bytes).
const MAX_PENDING: usize = 1024;

/// Components shown at each end of a deep path in an error.
const SHOWN_COMPONENTS: usize = 8;

/// Why a tree could not be removed. Every variant leaves a partly removed tree
/// that a later call can finish (once the cause is gone).
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{path:?} does not name an entry that can be removed")]
    BadRoot { path: PathBuf },
    #[error("cannot open {path:?}")]
    OpenRoot {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{op} {path:?} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// A directory's `..` is no longer the directory it was entered from: the tree
    /// was changed underneath, and climbing on could leave it.
    #[error("{path:?} was moved while its tree was being removed; stopped rather than climb out of the tree")]
    Moved { path: PathBuf },
    /// A mount point inside the tree: removing through it would delete files of
    /// another file system (a bind mount of a host directory).
    #[error("{path:?} is a mount point; not removing across it")]
    MountPoint { path: PathBuf },
    #[error("removing {path:?} ran past its deadline; it is partly removed")]
    TimedOut { path: PathBuf },
}

/// Removes `path` and everything below it, or, if it is not a directory (or is a
/// symlink), just that entry, by `deadline`.
///
/// Symlinks are unlinked, never followed; mount points are refused. Components of
/// `path` before the last are trusted (kiln's own data directory).
pub fn remove_tree(path: &Path, deadline: Instant) -> Result<(), RemoveError> {
    let mut components = path.components();
    let Some(Component::Normal(name)) = components.next_back() else {
        return Err(RemoveError::BadRoot { path: path.to_owned() });
    };
    let Ok(name) = CString::new(name.as_bytes()) else {
        return Err(RemoveError::BadRoot { path: path.to_owned() });
    };
    let parent = match components.as_path() {
        p if p.as_os_str().is_empty() => Path::new("."),
        p => p,
    };
    let open_root = |source| RemoveError::OpenRoot { path: path.to_owned(), source };
    let parent =
        open(parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(open_root)?;
    let stat = match fstatat(&parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        // Already gone: what the caller wanted.
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(open_root(e)),
    };
    let mut walk = Walk { root: path, deadline, levels: Vec::new(), pending: 0 };
    walk.check_deadline()?;
    if !is_dir(&stat) {
        return match unlinkat(&parent, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            Err(source) => Err(RemoveError::Io { op: "unlink", path: path.to_owned(), source }),
        };
    }
    let root = match open_subdir(&parent, &name) {
        Ok(fd) => fd,
        Err(Errno::EXDEV) => return Err(RemoveError::MountPoint { path: path.to_owned() }),
        Err(source) => return Err(open_root(source)),
    };
    let id = file_id(&fstat(&root).map_err(open_root)?);
    walk.levels.push(Level { name, id, pending: Vec::new() });
    walk.run(&parent, root)
}

/// (st_dev, st_ino): what a directory is, whatever its name.
type FileId = (nix::libc::dev_t, nix::libc::ino_t);

/// One directory on the way from the root down to the current one.
struct Level {
    /// Its name in the level above (the root's: in the root's parent).
    name: CString,
    id: FileId,
    /// Subdirectories read but not yet entered.
    pending: Vec<CString>,
}

struct Walk<'a> {
    root: &'a Path,
    deadline: Instant,
    /// From the root down to the current directory.
    levels: Vec<Level>,
    /// Names in all `levels[..].pending` together.
    pending: usize,
}

impl Walk<'_> {
    /// Depth first: enter a subdirectory while there is one, unlinking everything
    /// else on the way; remove a directory once it is empty and go back up.
    fn run(&mut self, root_parent: &OwnedFd, mut cur: OwnedFd) -> Result<(), RemoveError> {
        loop {
            self.check_deadline()?;
            let next = self.levels.last_mut().and_then(|level| level.pending.pop());
            if let Some(name) = next {
                self.pending -= 1;
                if let Some(subdir) = self.descend(&cur, name)? {
                    cur = subdir;
                }
                continue;
            }
            if self.scan(&cur)? {
                continue;
            }
            if self.levels.len() > 1 {
                cur = self.ascend(&cur)?;
                continue;
            }
            let root = &self.levels[0];
            match unlinkat(root_parent, root.name.as_c_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => return Ok(()),
                // Filled again meanwhile: scan again.
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
                Err(source) => return Err(self.io("remove directory", None, source)),
            }
        }
    }

    /// Unlinks the current directory's non-directories and reads ahead its
    /// subdirectories into `pending`; false if it has none (it is empty).
    fn scan(&mut self, cur: &OwnedFd) -> Result<bool, RemoveError> {
        // A fresh open file description, so reading starts at the first entry.
        let fd = openat(cur, c".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| self.io("open directory", None, e))?;
        let mut dir = Dir::from_fd(fd).map_err(|e| self.io("open directory", None, e))?;
        let limit = MAX_PENDING.saturating_sub(self.pending).max(1);
        let mut subdirs = Vec::new();
        for entry in dir.iter() {
            self.check_deadline()?;
            let entry = entry.map_err(|e| self.io("read directory", None, e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let dir = match entry.file_type() {
                Some(kind) => kind == Type::Directory,
                // DT_UNKNOWN: the file system does not fill d_type (readdir(3)).
                None => match fstatat(cur, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(stat) => is_dir(&stat),
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(self.io("stat", Some(name), e)),
                },
            };
            if dir || !self.unlink(cur, name)? {
                subdirs.push(name.to_owned());
                if subdirs.len() >= limit {
                    break;
                }
            }
        }
        self.pending += subdirs.len();
        let found = !subdirs.is_empty();
        self.levels.last_mut().expect("scanning a level").pending = subdirs;
        Ok(found)
    }

    /// Unlinks a non-directory; false if it turned out to be a directory.
    fn unlink(&self, cur: &OwnedFd, name: &CStr) -> Result<bool, RemoveError> {
        match unlinkat(cur, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(true),
            Err(Errno::EISDIR) => Ok(false),
            Err(e) => Err(self.io("unlink", Some(name), e)),
        }
    }

    /// Enters subdirectory `name` of `cur`, or handles what replaced it since the scan.
    fn descend(&mut self, cur: &OwnedFd, name: CString) -> Result<Option<OwnedFd>, RemoveError> {
        match open_subdir(cur, &name) {
            Ok(fd) => {
                let stat = fstat(&fd).map_err(|e| self.io("stat", Some(&name), e))?;
                self.levels.push(Level { name, id: file_id(&stat), pending: Vec::new() });
                Ok(Some(fd))
            }
            Err(Errno::ENOENT) => Ok(None),
            // Now a symlink (ELOOP) or other non-directory: unlink it, or leave it to
            // the next scan if it is a directory again.
            Err(Errno::ELOOP | Errno::ENOTDIR) => self.unlink(cur, &name).map(|_| None),
            Err(Errno::EXDEV) => Err(RemoveError::MountPoint { path: self.describe(Some(&name)) }),
            Err(e) => Err(self.io("open directory", Some(&name), e)),
        }
    }

    /// Opens the current directory's parent, checks it is the directory entered
    /// before, and removes the (now empty) current directory from it.
    fn ascend(&mut self, cur: &OwnedFd) -> Result<OwnedFd, RemoveError> {
        let parent = openat(cur, c"..", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| self.io("open parent of", None, e))?;
        let stat = fstat(&parent).map_err(|e| self.io("stat parent of", None, e))?;
        let leaving = self.levels.pop().expect("ascending from below the root");
        let expected = self.levels.last().expect("ascending to a level").id;
        if file_id(&stat) != expected {
            return Err(RemoveError::Moved { path: self.describe(Some(&leaving.name)) });
        }
        match unlinkat(&parent, leaving.name.as_c_str(), UnlinkatFlags::RemoveDir) {
            // ENOTEMPTY: filled again meanwhile; the parent's next scan finds it.
            Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EEXIST) => Ok(parent),
            Err(e) => Err(self.io("remove directory", Some(&leaving.name), e)),
        }
    }

    fn check_deadline(&self) -> Result<(), RemoveError> {
        if Instant::now() >= self.deadline {
            return Err(RemoveError::TimedOut { path: self.root.to_owned() });
        }
        Ok(())
    }

    fn io(&self, op: &'static str, name: Option<&CStr>, source: Errno) -> RemoveError {
        RemoveError::Io { op, path: self.describe(name), source }
    }

    /// The path of the current directory (and `name` in it), for messages only;
    /// middle components of a deep path are elided.
    fn describe(&self, name: Option<&CStr>) -> PathBuf {
        let below_root = self.levels.iter().skip(1).map(|level| level.name.as_c_str());
        let names: Vec<&OsStr> = below_root.chain(name).map(|n| OsStr::from_bytes(n.to_bytes())).collect();
        let mut path = self.root.to_path_buf();
        if names.len() <= 2 * SHOWN_COMPONENTS {
            path.extend(names);
        } else {
            path.extend(&names[..SHOWN_COMPONENTS]);
            path.push(format!("…{} more…", names.len() - 2 * SHOWN_COMPONENTS));
            path.extend(&names[names.len() - SHOWN_COMPONENTS..]);
        }
        path
    }
}

/// Opens directory `name` in `dir` without following a symlink (O_NOFOLLOW gives
/// ELOOP) and without entering a mount point (RESOLVE_NO_XDEV gives EXDEV, which an
/// st_dev check would miss for a bind mount of the same file system; openat2(2)).
fn open_subdir(dir: &OwnedFd, name: &CStr) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_XDEV | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(dir, name, how)
}

fn is_dir(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

fn file_id(stat: &FileStat) -> FileId {
    (stat.st_dev, stat.st_ino)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::process::Command;
    use std::time::Duration;

    use nix::sys::stat::{mkdirat, mknodat};
    use nix::unistd::mkfifoat;

    use super::*;

    /// The depth of the hostile tree: 16,000 one-byte names, a 32,000-byte path.
    const DEEP: usize = 16_000;
    /// Far below what a per-level recursion needs for `DEEP` levels.
    const SMALL_STACK: usize = 64 * 1024;
    /// Far more levels than fds under the limit of 16.
    const DEEPER_THAN_FDS: usize = 1_000;
    /// Re-executed as a child, a test reads the directory it works in from here.
    const CHILD_DIR: &str = "KILN_REMOVE_TREE_CHILD_DIR";

    /// A deadline no test should reach (rmdir alone takes ~4 ms on some CI disks).
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    fn gone(path: &Path) -> bool {
        fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }

    /// `root/d/d/…/d` (`depth` levels below `root`) with a file at the bottom, built
    /// relative to the previous level's fd: the path is too long for one syscall.
    fn make_chain(root: &Path, depth: usize) {
        fs::create_dir(root).unwrap();
        let mut dir = open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        for _ in 0..depth {
            mkdirat(&dir, c"d", Mode::from_bits_truncate(0o755)).unwrap();
            dir = open_subdir(&dir, c"d").unwrap();
        }
        let file = openat(
            &dir,
            c"bottom",
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        );
        file.unwrap();
    }

    /// How many `d` levels are below `root`, walked one fd at a time.
    fn depth_of(root: &Path) -> usize {
        let mut dir = open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        let mut depth = 0;
        while let Ok(below) = open_subdir(&dir, c"d") {
            dir = below;
            depth += 1;
        }
        depth
    }

    fn fd_count() -> usize {
        fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// Runs test `name` alone in a fresh copy of this test binary, with `dir` in
    /// [`CHILD_DIR`]: for what must not touch the other tests (fd limit, fd count,
    /// mount namespace, an abort on stack overflow).
    fn run_in_child(name: &str, dir: &Path) {
        let module = module_path!().split_once("::").unwrap().1;
        let test = format!("{module}::{name}");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child {test} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }

    fn child_dir() -> Option<PathBuf> {
        std::env::var_os(CHILD_DIR).map(PathBuf::from)
    }

    #[test]
    fn removes_a_16000_deep_tree_on_a_small_stack_without_leaking_fds() {
        if let Some(dir) = child_dir() {
            let before = fd_count();
            let tree = dir.join("tree");
            let removing =
                std::thread::Builder::new().stack_size(SMALL_STACK).spawn(move || remove_tree(&tree, later()));
            removing.unwrap().join().unwrap().unwrap();
            assert_eq!(fd_count(), before, "fds left open");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        make_chain(&tree, DEEP);
        assert_eq!(depth_of(&tree), DEEP);
        run_in_child("removes_a_16000_deep_tree_on_a_small_stack_without_leaking_fds", tmp.path());
        assert!(gone(&tree));
    }

    #[test]
    fn removes_a_deep_tree_with_16_fds() {
        if let Some(dir) = child_dir() {
            let limit = nix::libc::rlimit { rlim_cur: 16, rlim_max: 16 };
            // SAFETY: setrlimit(2) only reads `limit`, which lives across the call.
            assert_eq!(unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &limit) }, 0);
            // The limit bites: one fd per level would run out long before the bottom.
            let held: Vec<fs::File> = (0..16).map_while(|_| fs::File::open("/").ok()).collect();
            assert!(held.len() < 16, "the fd limit is not in force");
            drop(held);
            remove_tree(&dir.join("tree"), later()).unwrap();
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        make_chain(&tree, DEEPER_THAN_FDS);
        assert_eq!(depth_of(&tree), DEEPER_THAN_FDS);
        run_in_child("removes_a_deep_tree_with_16_fds", tmp.path());
        assert!(gone(&tree));
    }

    #[test]
    fn symlinks_and_hard_links_out_of_the_tree_are_removed_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (tree, outside) = (tmp.path().join("tree"), tmp.path().join("outside"));
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("precious"), b"keep me").unwrap();
        fs::write(outside.join("sub/precious"), b"keep me too").unwrap();
        fs::create_dir_all(tree.join("a/b")).unwrap();
        symlink(&outside, tree.join("a/to_dir")).unwrap();
        symlink(outside.join("precious"), tree.join("a/b/to_file")).unwrap();
        symlink("../../../outside/sub", tree.join("a/b/relative")).unwrap();
        fs::hard_link(outside.join("precious"), tree.join("a/hard")).unwrap();
        remove_tree(&tree, later()).unwrap();
        assert!(gone(&tree));
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
        assert_eq!(fs::read(outside.join("sub/precious")).unwrap(), b"keep me too");
        assert_eq!(fs::metadata(outside.join("precious")).unwrap().nlink(), 1);

        // A root that is itself a symlink: the link goes, its target stays.
        symlink(&outside, tmp.path().join("link")).unwrap();
        remove_tree(&tmp.path().join("link"), later()).unwrap();
        assert!(gone(&tmp.path().join("link")));
        assert_eq!(fs::read(outside.join("sub/precious")).unwrap(), b"keep me too");
    }

    /// A tree that is already gone is removed (no failure to count or retry).
    #[test]
    fn a_tree_that_is_gone_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        remove_tree(&tmp.path().join("never-made"), deadline).expect("nothing to remove is success");
        let parent_gone = tmp.path().join("no-parent/tree");
        assert!(matches!(remove_tree(&parent_gone, deadline), Err(RemoveError::OpenRoot { .. })));
    }

    #[test]
    fn removes_every_kind_of_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("empty/empty")).unwrap();
        let special = open(&tree, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        mkfifoat(&special, c"fifo", Mode::from_bits_truncate(0o600)).unwrap();
        // An overlayfs whiteout: a character device 0/0.
        mknodat(&special, c"whiteout", SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        drop(std::os::unix::net::UnixListener::bind(tree.join("socket")).unwrap());
        fs::write(tree.join("file"), b"x").unwrap();
        fs::set_permissions(tree.join("file"), fs::Permissions::from_mode(0o000)).unwrap();
        // Directories nobody may enter or write (overlayfs's work/work is one).
        fs::create_dir_all(tree.join("locked/inner")).unwrap();
        fs::write(tree.join("locked/inner/file"), b"x").unwrap();
        for (dir, mode) in [("locked/inner", 0o000), ("locked", 0o000), ("empty", 0o555)] {
            fs::set_permissions(tree.join(dir), fs::Permissions::from_mode(mode)).unwrap();
        }
        // Wider than MAX_PENDING in subdirectories, so read-ahead runs out.
        let wide = tree.join("wide");
        fs::create_dir(&wide).unwrap();
        for i in 0..1_500 {
            fs::create_dir(wide.join(format!("d{i}"))).unwrap();
            fs::write(wide.join(format!("d{i}/f")), b"x").unwrap();
        }
        for i in 0..500 {
            fs::write(wide.join(format!("f{i}")), b"x").unwrap();
        }
        assert_eq!(fs::read_dir(&wide).unwrap().count(), 2_000);
        let kinds =
            ["fifo", "whiteout", "socket"].map(|n| fs::symlink_metadata(tree.join(n)).unwrap().mode() & 0o170000);
        assert_eq!(kinds, [0o010000, 0o020000, 0o140000]);
        drop(special);

        remove_tree(&tree, later()).unwrap();
        assert!(gone(&tree));
    }

    #[test]
    fn an_expired_deadline_leaves_the_tree_and_a_later_call_finishes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        make_chain(&tree, 100);
        for i in 0..50 {
            fs::write(tree.join(format!("f{i}")), b"x").unwrap();
        }
        let err = remove_tree(&tree, Instant::now()).unwrap_err();
        assert!(matches!(&err, RemoveError::TimedOut { path } if *path == tree), "{err:?}");
        assert_eq!(depth_of(&tree), 100);
        assert_eq!(fs::read_dir(&tree).unwrap().count(), 51);
        remove_tree(&tree, later()).unwrap();
        assert!(gone(&tree));
    }

    #[test]
    fn a_mount_point_inside_is_not_crossed() {
        if let Some(dir) = child_dir() {
            use nix::mount::{mount, MsFlags};
            // This thread's own mount namespace: the bind mount dies with the child.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
            mount(Some(&dir.join("outside")), &dir.join("tree/a/mnt"), None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .unwrap();
            let err = remove_tree(&dir.join("tree"), later()).unwrap_err();
            assert!(matches!(&err, RemoveError::MountPoint { path } if path.ends_with("a/mnt")), "{err:?}");
            assert_eq!(fs::read(dir.join("outside/precious")).unwrap(), b"keep me");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (tree, outside) = (tmp.path().join("tree"), tmp.path().join("outside"));
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("precious"), b"keep me").unwrap();
        fs::create_dir_all(tree.join("a/mnt")).unwrap();
        run_in_child("a_mount_point_inside_is_not_crossed", tmp.path());
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
        // Unmounted (the child's namespace is gone), the rest comes off.
        remove_tree(&tree, later()).unwrap();
        assert!(gone(&tree));
    }

    #[test]
    fn refuses_a_path_without_a_last_name() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("tree/sub")).unwrap();
        let err = remove_tree(&tmp.path().join("tree/sub/.."), later()).unwrap_err();
        assert!(matches!(err, RemoveError::BadRoot { .. }), "{err:?}");
        assert!(tmp.path().join("tree/sub").is_dir());
    }
}
