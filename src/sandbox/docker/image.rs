//! A toolchain's image: its unpacked root as one layer, plus kiln-init and the
//! directories every container needs, streamed to the daemon's import endpoint.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use super::engine::HELPER_PATH;

/// kiln-init, built by build.rs from `kiln_init.c`.
pub const HELPER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-init"));

/// Chunks of the image tar in flight between the thread that writes it and the
/// upload: at most `IMPORT_CHUNKS` × `IMPORT_CHUNK_BYTES` (4 MiB) held in memory,
/// however large the toolchain.
const IMPORT_CHUNK_BYTES: usize = 256 << 10;
const IMPORT_CHUNKS: usize = 16;

/// Directories created in every image, root-owned: mount points runc and docker need
/// (so a job's inputs never create them, owned by the job user), and `/tmp`, the one
/// world-writable place (sticky, 1777: gcc writes its temporaries there).
pub const IMAGE_DIRS: &[(&str, u32)] =
    &[("proc", 0o755), ("sys", 0o755), ("dev", 0o755), ("etc", 0o755), ("tmp", 0o1777)];

/// The tar header of an empty directory root owns, with `mode`.
pub fn root_dir_header(mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header.set_mtime(0);
    header
}

/// Streams the image tar of `root` on a blocking thread; the stream ends with an
/// error item if writing failed, which makes the daemon refuse the import.
pub fn image_tar_stream(root: PathBuf) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(IMPORT_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(IMPORT_CHUNK_BYTES) };
        let written = write_image_tar(&root, &mut writer).and_then(|()| writer.flush());
        if let Err(e) = written {
            let _ = tx.blocking_send(Err(e));
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

fn write_image_tar(root: &Path, out: impl Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    // Owned by root, fixed times, 0755/0644 modes: the job user cannot change any of it.
    tar.mode(tar::HeaderMode::Deterministic);
    // Symlinks stay symlinks (and are only ever resolved inside the container).
    tar.follow_symlinks(false);
    // The daemon refuses a tar naming a path twice: the image's own directories
    // replace the root's top-level entries of the same name (contents kept).
    for (dir, mode) in IMAGE_DIRS {
        tar.append_data(&mut root_dir_header(*mode), dir, io::empty())?;
    }
    let helper_name = HELPER_PATH.trim_start_matches('/');
    append_tree(&mut tar, root, Path::new(""), &|name| {
        name == helper_name || IMAGE_DIRS.iter().any(|(d, _)| *d == name)
    })?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o555);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(HELPER.len() as u64);
    header.set_mtime(0);
    tar.append_data(&mut header, helper_name, HELPER)?;
    tar.into_inner()?.flush()
}

/// Appends everything below `dir` (as `prefix/...`), never following symlinks, in a
/// stable order. At the top level, entries `replaced` names are left out but the
/// contents of such directories are kept.
fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &Path,
    replaced: &dyn Fn(&str) -> bool,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = prefix.join(entry.file_name());
        let is_dir = entry.file_type()?.is_dir();
        let top_level_replaced = prefix.as_os_str().is_empty() && entry.file_name().to_str().is_some_and(replaced);
        if !top_level_replaced {
            tar.append_path_with_name(entry.path(), &name)?;
        }
        if is_dir && (!top_level_replaced || entry.file_name() != HELPER_PATH.trim_start_matches('/')) {
            append_tree(tar, &entry.path(), &name, replaced)?;
        }
    }
    Ok(())
}

/// A `Write` that hands fixed-size chunks to an async receiver, waiting when it is full.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(IMPORT_CHUNK_BYTES));
        self.tx.blocking_send(Ok(chunk.into())).map_err(|_| io::Error::other("the image upload was abandoned"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(IMPORT_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == IMPORT_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
