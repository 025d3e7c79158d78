use std::io;
use std::path::PathBuf;

/// Why an archive could not be unpacked, or a path inside a root could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the archive failed")]
    Read(#[source] io::Error),
    #[error("archive entry {path:?} is not allowed: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("archive entry {path:?} has type {kind}, which is not allowed (only files, directories, symlinks and hard links)")]
    BadEntryType { path: String, kind: String },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("archive unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot open the destination {path:?}")]
    OpenRoot {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{op} {path:?} inside the destination failed")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("writing {path:?} failed")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}
