//! `kiln package-toolchain`: packs a compiler and everything it needs to run
//! in an empty root into a deterministic gzip'd tar, the toolchain archive a
//! sandbox unpacks as its `/`.
//!
//! Every file is stored as a regular file at the host path the binaries ask
//! for (leading `/` stripped), with symlinks dereferenced: Debian merges
//! `/lib` into `/usr/lib` through directory symlinks, and storing real files
//! at the looked-up paths means the root needs no links at all.
//!
//! This is an offline CLI step, so it blocks freely and runs `ldd`, which may
//! execute the binaries it inspects: only package compilers you trust.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::protocol::ArchiveHasher;

/// What to pack: a compiler driver plus any extra files (and their libraries).
#[derive(Debug, Clone)]
pub struct PackageOptions {
    /// A path, or a bare name looked up in `PATH`.
    pub compiler: PathBuf,
    /// Files added as they are named (e.g. `/bin/sh` for tests), plus their libraries.
    pub extra: Vec<PathBuf>,
}

impl Default for PackageOptions {
    fn default() -> Self {
        Self { compiler: PathBuf::from("/usr/bin/gcc"), extra: Vec::new() }
    }
}

/// The archive written by [`package_toolchain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagedToolchain {
    /// BLAKE3 hex of the compressed archive: the sccache-dist toolchain id.
    pub archive_id: String,
    /// Regular files in the archive (directories not counted).
    pub files: usize,
    /// Size of the compressed archive on disk.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path} not found in PATH")]
    NotInPath { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} cannot be stored: not an absolute path to a file")]
    InvalidPath { path: PathBuf },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("malformed ELF file {path}: {reason}")]
    Elf { path: PathBuf, reason: &'static str },
    #[error("cannot run {program} for {path}")]
    Spawn { program: PathBuf, path: PathBuf, source: io::Error },
    #[error("ldd failed on {path}: {stderr}")]
    Ldd { path: PathBuf, stderr: String },
    #[error("{path} needs {library}, which ldd cannot find")]
    MissingLibrary { path: PathBuf, library: String },
    #[error("cannot write archive {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// Mode for `/tmp`: gcc writes its intermediate `.s` files there.
const TMP_MODE: u32 = 0o1777;
/// Empty mount points, so a read-only bind of the root still lets bwrap
/// mount `--proc /proc` and `--dev /dev` (it cannot mkdir in a read-only root).
const MOUNT_POINTS: [&str; 2] = ["dev", "proc"];
/// Level 6 (zlib's default): most of level 9's ratio at a fraction of its time.
const GZIP_LEVEL: u32 = 6;
/// Header used by gcc implicitly (`-include stdc-predef.h` is built in).
const STDC_PREDEF: &str = "/usr/include/stdc-predef.h";
/// Helpers a gcc-like driver runs; `as`, `collect2` and `ld` only if present.
const GCC_PROGRAMS: [&str; 5] = ["cc1", "cc1plus", "as", "collect2", "ld"];

/// Packs `opts` into the gzip'd tar `out` and returns its id and size.
///
/// Identical inputs give a byte-identical archive (sorted entries, uid/gid 0,
/// mtime 0, normalised modes), so the id is stable across runs and hosts.
pub fn package_toolchain(opts: &PackageOptions, out: &Path) -> Result<PackagedToolchain, PackageError> {
    let compiler = find_program(&opts.compiler)?;
    let helpers = gcc_programs(&compiler)?;
    let gcc_like = !helpers.is_empty();
    let mut roots = vec![compiler.clone()];
    roots.extend(helpers);
    if gcc_like && Path::new(STDC_PREDEF).is_file() {
        roots.push(PathBuf::from(STDC_PREDEF));
    }
    for extra in &opts.extra {
        roots.push(std::path::absolute(extra).map_err(|source| read_err(extra, source))?);
    }

    // Archive path -> host file; BTreeMap sorts them (Path orders by component,
    // so a directory always precedes what it contains).
    let mut files = BTreeMap::new();
    for root in &roots {
        add_file(&mut files, root)?;
        if let Some(elf) = read_elf(root)? {
            if let Some(interp) = elf.interp {
                add_file(&mut files, &interp)?;
            }
            for lib in ldd(root)? {
                add_file(&mut files, &lib)?;
            }
        }
    }
    tracing::info!(compiler = ?compiler, files = files.len(), out = ?out, "packing toolchain");
    write_archive(&files, out)
}

/// Resolves a bare program name through `PATH`, as a shell (and gcc, for `as`) would.
fn find_program(program: &Path) -> Result<PathBuf, PackageError> {
    if program.components().count() > 1 {
        let meta = fs::metadata(program).map_err(|source| read_err(program, source))?;
        if !meta.is_file() {
            return Err(PackageError::NotAFile { path: program.to_path_buf() });
        }
    }
    crate::program::find_program(program).ok_or_else(|| PackageError::NotInPath { path: program.to_path_buf() })
}

/// The helper programs of a gcc-like driver, or nothing for other compilers.
///
/// A driver counts as gcc-like when `-print-prog-name=cc1` names an existing
/// file; clang answers a bare `cc1`, and non-compilers fail or print junk.
fn gcc_programs(driver: &Path) -> Result<Vec<PathBuf>, PackageError> {
    let mut found = Vec::new();
    for name in GCC_PROGRAMS {
        // The same environment as the sandbox's (nothing but PATH), so
        // GCC_EXEC_PREFIX or COMPILER_PATH on this host can't redirect us.
        let output = Command::new(driver)
            .arg(format!("-print-prog-name={name}"))
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
            .stdin(Stdio::null())
            .output()
            .map_err(|source| spawn_err(driver, driver, source))?;
        let answer = PathBuf::from(OsStr::from_bytes(output.stdout.trim_ascii()));
        let program = if answer.is_absolute() {
            Some(answer).filter(|p| p.is_file())
        } else if name != "cc1" && answer.components().count() == 1 {
            // A bare name means gcc will search PATH (Debian's `as`, `ld`); the
            // sandbox's PATH must then include the directory found here.
            find_program(&answer).ok()
        } else {
            None
        };
        match program {
            Some(program) => found.push(program),
            None if name == "cc1" => return Ok(Vec::new()),
            None => {}
        }
    }
    tracing::debug!(driver = ?driver, programs = ?found, "gcc-like driver");
    Ok(found)
}

/// Records `host` under its archive path after checking it is a readable file.
fn add_file(files: &mut BTreeMap<PathBuf, PathBuf>, host: &Path) -> Result<(), PackageError> {
    let meta = fs::metadata(host).map_err(|source| read_err(host, source))?;
    if !meta.is_file() {
        return Err(PackageError::NotAFile { path: host.to_path_buf() });
    }
    files.insert(archive_path(host)?, host.to_path_buf());
    Ok(())
}

/// `/usr/bin/../lib/x` -> `usr/lib/x`: the path the sandbox resolves, where
/// every directory is real. `..` is folded lexically, as in that root.
fn archive_path(host: &Path) -> Result<PathBuf, PackageError> {
    let invalid = || PackageError::InvalidPath { path: host.to_path_buf() };
    if !host.is_absolute() {
        return Err(invalid());
    }
    let mut rel = PathBuf::new();
    for component in host.components() {
        match component {
            Component::Normal(name) => rel.push(name),
            Component::ParentDir => {
                rel.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if rel.as_os_str().is_empty() {
        Err(invalid())
    } else {
        Ok(rel)
    }
}

/// What we need from an ELF file's program headers.
struct Elf {
    /// `PT_INTERP`: the loader path the kernel opens, byte for byte.
    interp: Option<PathBuf>,
}

const PT_INTERP: u32 = 3;
/// Real loader paths are ~30 bytes; anything huge is a corrupt header.
const MAX_INTERP_LEN: u64 = 4096;

/// Reads `PT_INTERP` from the program headers; `None` if `path` is not ELF.
///
/// Parsed here rather than taken from ldd's loader line: ldd prints the
/// loader it ran, which for a file it invokes through its own `RTLD` list
/// (non-executable files) need not be what the binary asks for, and an
/// absolute `DT_NEEDED` entry prints exactly like the loader line.
fn read_elf(path: &Path) -> Result<Option<Elf>, PackageError> {
    let bad = |reason| PackageError::Elf { path: path.to_path_buf(), reason };
    let read = |source| read_err(path, source);
    let file = File::open(path).map_err(read)?;
    let mut head = Vec::with_capacity(64);
    (&file).take(64).read_to_end(&mut head).map_err(read)?;
    if !head.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let wide = match head.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(bad("unknown class")),
    };
    let le = match head.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err(bad("unknown byte order")),
    };
    if head.len() < if wide { 64 } else { 52 } {
        return Err(bad("truncated header"));
    }
    let (phoff, phentsize, phnum) = match wide {
        true => (uint(&head[32..40], le), uint(&head[54..56], le), uint(&head[56..58], le)),
        false => (uint(&head[28..32], le), uint(&head[42..44], le), uint(&head[44..46], le)),
    };
    let mut ph = [0u8; 56];
    let ph = &mut ph[..if wide { 56 } else { 32 }];
    if phnum > 0 && phentsize < ph.len() as u64 {
        return Err(bad("short program header entries"));
    }
    for i in 0..phnum {
        let at = phoff.checked_add(i * phentsize);
        file.read_exact_at(ph, at.ok_or_else(|| bad("program headers past 2^64"))?).map_err(read)?;
        if uint(&ph[0..4], le) != u64::from(PT_INTERP) {
            continue;
        }
        let (offset, size) = match wide {
            true => (uint(&ph[8..16], le), uint(&ph[32..40], le)),
            false => (uint(&ph[4..8], le), uint(&ph[16..20], le)),
        };
        if size > MAX_INTERP_LEN {
            return Err(bad("oversized PT_INTERP"));
        }
        let mut interp = vec![0; size as usize];
        file.read_exact_at(&mut interp, offset).map_err(read)?;
        // The segment holds a NUL-terminated string.
        interp.truncate(interp.iter().position(|&b| b == 0).unwrap_or(interp.len()));
        let interp = PathBuf::from(OsString::from_vec(interp));
        if !interp.is_absolute() {
            return Err(bad("relative PT_INTERP"));
        }
        return Ok(Some(Elf { interp: Some(interp) }));
    }
    Ok(Some(Elf { interp: None }))
}

/// An unsigned ELF field of 2, 4 or 8 bytes.
fn uint(bytes: &[u8], le: bool) -> u64 {
    let push = |acc: u64, &b: &u8| acc << 8 | u64::from(b);
    if le {
        bytes.iter().rev().fold(0, push)
    } else {
        bytes.iter().fold(0, push)
    }
}

/// The shared libraries (transitively, loader included) `ldd` resolves for `elf`.
fn ldd(elf: &Path) -> Result<Vec<PathBuf>, PackageError> {
    // Cleared env: LD_LIBRARY_PATH here would find libraries the sandbox won't.
    let output = Command::new("ldd")
        .arg(elf)
        .env_clear()
        .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| spawn_err(Path::new("ldd"), elf, source))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Static binaries and foreign ELF: nothing to load.
        if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(PackageError::Ldd { path: elf.to_path_buf(), stderr: stderr.trim().to_owned() });
    }
    parse_ldd(elf, &stdout)
}

/// Parses lines such as `libc.so.6 => /lib/x/libc.so.6 (0x…)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`, `linux-vdso.so.1 (0x…)` (no file:
/// skipped) and `statically linked`.
fn parse_ldd(elf: &Path, stdout: &str) -> Result<Vec<PathBuf>, PackageError> {
    let mut libs = Vec::new();
    for line in stdout.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, target)) if target.trim_start().starts_with("not found") => {
                let library = name.trim().to_owned();
                return Err(PackageError::MissingLibrary { path: elf.to_path_buf(), library });
            }
            Some((_, target)) => target.trim(),
            None => line,
        };
        let file = target.rsplit_once(" (0x").map_or(target, |(file, _)| file).trim_end();
        if file.starts_with('/') {
            libs.push(PathBuf::from(file));
        }
    }
    Ok(libs)
}

/// Writes the archive beside `out` then renames it, so `out` is never half-written.
fn write_archive(files: &BTreeMap<PathBuf, PathBuf>, out: &Path) -> Result<PackagedToolchain, PackageError> {
    let mut name = OsString::from(".");
    name.push(out.file_name().ok_or_else(|| PackageError::InvalidPath { path: out.to_path_buf() })?);
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = out.with_file_name(name);
    let result = write_tar(files, &tmp).and_then(|toolchain| {
        fs::rename(&tmp, out).map_err(|source| write_err(out, source))?;
        Ok(toolchain)
    });
    if result.is_err() {
        _ = fs::remove_file(&tmp);
    }
    result
}

fn write_tar(files: &BTreeMap<PathBuf, PathBuf>, tmp: &Path) -> Result<PackagedToolchain, PackageError> {
    let werr = |source| write_err(tmp, source);
    let file = File::create(tmp).map_err(werr)?;
    let hashed = HashWriter { inner: BufWriter::new(file), hasher: ArchiveHasher::new(), bytes: 0 };
    let mut tar = tar::Builder::new(GzEncoder::new(hashed, Compression::new(GZIP_LEVEL)));

    // Every parent directory, plus the dirs the sandbox needs to exist.
    let mut dirs: BTreeMap<PathBuf, u32> = MOUNT_POINTS.iter().map(|d| (PathBuf::from(d), 0o755)).collect();
    dirs.insert(PathBuf::from("tmp"), TMP_MODE);
    for rel in files.keys() {
        for dir in rel.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
            dirs.entry(dir.to_path_buf()).or_insert(0o755);
        }
    }
    let paths: BTreeSet<&PathBuf> = dirs.keys().chain(files.keys()).collect();
    for rel in paths {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        if let Some(&mode) = dirs.get(rel) {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(mode);
            header.set_size(0);
            tar.append_data(&mut header, rel, io::empty()).map_err(werr)?;
            continue;
        }
        let host = &files[rel];
        let source = File::open(host).map_err(|source| read_err(host, source))?;
        let meta = source.metadata().map_err(|source| read_err(host, source))?;
        // Only the exec bit survives: no setuid/setgid/sticky from the host.
        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(mode);
        header.set_size(meta.len());
        // take(): a file that grew meanwhile must not overrun its header's size.
        tar.append_data(&mut header, rel, source.take(meta.len())).map_err(werr)?;
    }

    let gz = tar.into_inner().map_err(werr)?;
    let HashWriter { inner, hasher, bytes } = gz.finish().map_err(werr)?;
    let file = inner.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    Ok(PackagedToolchain { archive_id: hasher.finish(), files: files.len(), bytes })
}

/// Hashes the compressed bytes as they are written, so the id needs no re-read.
struct HashWriter<W> {
    inner: W,
    hasher: ArchiveHasher,
    bytes: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn read_err(path: &Path, source: io::Error) -> PackageError {
    PackageError::Read { path: path.to_path_buf(), source }
}

fn write_err(path: &Path, source: io::Error) -> PackageError {
    PackageError::Write { path: path.to_path_buf(), source }
}

fn spawn_err(program: &Path, path: &Path, source: io::Error) -> PackageError {
    PackageError::Spawn { program: program.to_path_buf(), path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    const GCC: &str = "/usr/bin/gcc";
    const BWRAP: &str = "/usr/bin/bwrap";

    /// A source that fails to compile unless gcc's implicit stdc-predef.h was
    /// found (glibc's defines `__STDC_ISO_10646__`; a missing one is skipped silently).
    const X_C: &str = r#"#ifndef __STDC_ISO_10646__
#error "stdc-predef.h was not included"
#endif
double scale(double x, int n) { for (int i = 0; i < n; i++) x *= 1.5; return x; }
"#;

    struct Entry {
        path: String,
        kind: tar::EntryType,
        mode: u32,
    }

    fn entries(archive: &Path) -> Vec<Entry> {
        let mut tar = tar::Archive::new(GzDecoder::new(File::open(archive).unwrap()));
        let mut out = Vec::new();
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 0));
            let path = entry.path().unwrap().to_str().unwrap().to_owned();
            out.push(Entry { path, kind: h.entry_type(), mode: h.mode().unwrap() });
        }
        out
    }

    fn unpack(archive: &Path, root: &Path) {
        tar::Archive::new(GzDecoder::new(File::open(archive).unwrap())).unpack(root).unwrap();
    }

    /// Runs `argv` in a sandbox whose whole filesystem is `root`.
    fn bwrap(root: &Path, argv: &[&str]) -> std::process::Output {
        Command::new(BWRAP)
            .args(["--unshare-all", "--die-with-parent", "--bind"])
            .arg(root)
            .arg("/")
            .args(["--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp", "--clearenv"])
            .args(["--setenv", "PATH", "/usr/bin:/bin"])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn missing(tools: &[&str]) -> bool {
        let missing: Vec<_> = tools.iter().filter(|t| !Path::new(t).exists()).collect();
        if !missing.is_empty() {
            eprintln!("SKIPPED: {missing:?} not installed");
        }
        !missing.is_empty()
    }

    #[test]
    fn parses_ldd_lines() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3e)\n\
                   \tlinux-gate.so.1 =>  (0x00007ffd)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f3f)\n";
        let libs = parse_ldd(Path::new("/x"), out).unwrap();
        assert_eq!(libs, [PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"), "/lib64/ld-linux-x86-64.so.2".into()]);
        assert!(parse_ldd(Path::new("/x"), "\tstatically linked\n").unwrap().is_empty());
        let err = parse_ldd(Path::new("/x"), "\tlibisl.so.23 => not found\n").unwrap_err();
        assert!(matches!(err, PackageError::MissingLibrary { library, .. } if library == "libisl.so.23"));
    }

    #[test]
    fn archive_paths_are_relative_and_folded() {
        assert_eq!(archive_path(Path::new("/usr/bin/../lib/./x.so")).unwrap(), Path::new("usr/lib/x.so"));
        assert!(archive_path(Path::new("usr/bin/gcc")).is_err());
        assert!(archive_path(Path::new("/..")).is_err());
    }

    #[test]
    fn reads_pt_interp() {
        let exe = std::env::current_exe().unwrap();
        let interp = read_elf(&exe).unwrap().expect("test binary is ELF").interp.expect("and dynamic");
        assert!(interp.is_file(), "{interp:?}");
        let text = tempfile::NamedTempFile::new().unwrap();
        fs::write(text.path(), "#!/bin/sh\n").unwrap();
        assert!(read_elf(text.path()).unwrap().is_none());
        fs::write(text.path(), b"\x7fELF\x02\x01").unwrap();
        assert!(matches!(read_elf(text.path()), Err(PackageError::Elf { .. })));
    }

    /// The real proof: the archive alone, as `/` of a sandbox, compiles C to
    /// the same object as the host's gcc.
    #[test]
    fn packaged_gcc_compiles_in_an_empty_root() {
        if missing(&[GCC, BWRAP]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.tar.gz"), dir.path().join("b.tar.gz"));
        let opts = PackageOptions::default();
        let packed = package_toolchain(&opts, &a).unwrap();
        assert_eq!(package_toolchain(&opts, &b).unwrap(), packed, "same inputs, same archive");
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert_eq!(packed.archive_id.len(), 64);
        assert_eq!(packed.bytes, fs::metadata(&a).unwrap().len());

        let list = entries(&a);
        let has = |pred: &dyn Fn(&Entry) -> bool| list.iter().any(pred);
        let regular = |e: &Entry| e.kind == tar::EntryType::Regular;
        assert!(has(&|e| e.path == "usr/bin/gcc" && regular(e) && e.mode == 0o755));
        assert!(has(&|e| e.path.ends_with("/cc1") && regular(e)));
        assert!(has(&|e| e.path.ends_with("bin/as") && regular(e)));
        assert!(has(&|e| e.path.ends_with("/libc.so.6") && regular(e)));
        assert!(has(&|e| e.path == "usr/include/stdc-predef.h" && e.mode == 0o644));
        assert!(has(&|e| e.path == "tmp" && e.kind == tar::EntryType::Directory));
        let interp = read_elf(Path::new(GCC)).unwrap().unwrap().interp.unwrap();
        let interp = interp.strip_prefix("/").unwrap().to_str().unwrap();
        assert!(has(&|e| e.path == interp && regular(e)), "loader {interp}");
        assert_eq!(list.iter().filter(|e| regular(e)).count(), packed.files);
        // Sorted, each parent before its children, no links, no setuid.
        let paths: Vec<_> = list.iter().map(|e| PathBuf::from(&e.path)).collect();
        assert!(paths.windows(2).all(|w| w[0] < w[1]));
        for (i, e) in list.iter().enumerate() {
            assert!(regular(e) || e.kind == tar::EntryType::Directory, "{}", e.path);
            assert!(e.mode & 0o6000 == 0, "{} mode {:o}", e.path, e.mode);
            if let Some(parent) = paths[i].parent().filter(|p| !p.as_os_str().is_empty()) {
                assert!(paths[..i].iter().any(|p| p == parent), "{} before its dir", e.path);
            }
        }

        let root = dir.path().join("root");
        unpack(&a, &root);
        fs::write(root.join("tmp/x.c"), X_C).unwrap();
        let argv = ["/usr/bin/gcc", "-O2", "-c", "x.c", "-o", "x.o"];
        let sandboxed = bwrap(&root, &argv);
        assert!(sandboxed.status.success(), "gcc in sandbox: {}", String::from_utf8_lossy(&sandboxed.stderr));

        // Same argv, same relative file name and env on the host, so any
        // difference in the object comes from the packaged toolchain.
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("x.c"), X_C).unwrap();
        let local = Command::new(argv[0])
            .args(&argv[1..])
            .current_dir(host.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(local.status.success(), "host gcc: {}", String::from_utf8_lossy(&local.stderr));
        let object = fs::read(root.join("tmp/x.o")).unwrap();
        assert!(object.starts_with(b"\x7fELF"));
        assert!(object == fs::read(host.path().join("x.o")).unwrap(), "sandbox and host objects differ");
    }

    #[test]
    fn packs_any_binary_with_its_libraries() {
        if missing(&["/bin/sh", "/usr/bin/id", BWRAP]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("sh.tar.gz");
        let opts = PackageOptions { compiler: "sh".into(), extra: vec!["/usr/bin/id".into()] };
        package_toolchain(&opts, &archive).unwrap();
        let list = entries(&archive);
        assert!(!list.iter().any(|e| e.path.contains("cc1") || e.path.contains("stdc-predef")));
        assert!(list.iter().any(|e| e.path == "usr/bin/id"));

        let root = dir.path().join("root");
        unpack(&archive, &root);
        // `sh` came from PATH: whichever dir it was found in must be where the sandbox looks.
        let sh = find_program(Path::new("sh")).unwrap();
        let out = bwrap(&root, &[sh.to_str().unwrap(), "-c", "/usr/bin/id -u"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    }
}
