//! The farm's toolchain store, `[kiln.toolchains] store`: archives by archive_id in
//! a directory every kiln mounts (NFS and the like, [`directory`]) or in an object
//! store (S3-compatible, GCS, Azure Blob: [`object`]). This module only reads and
//! writes it (lookup, fetch into a checked staging file, atomic publish, remove,
//! list, and the small records claims are made of); what a kiln does with it,
//! fetching into its cache and publishing what clients upload, is
//! [`crate::toolchains`]'s (`farm.rs`, `claims.rs`). It imports nothing above it.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::ArchiveCheck;
use crate::report::ErrorChain;

mod directory;
mod object;

use directory::DirectoryStore;
use object::ObjectStore;

/// Copy and download buffer.
const CHUNK: usize = 1 << 20;

/// Where the farm's store is, as configured: an absolute path, or an object store's
/// URI (`s3://bucket/prefix?region=eu-west-1&endpoint=https://...`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StoreLocation {
    Directory(PathBuf),
    Object(String),
}

impl TryFrom<String> for StoreLocation {
    type Error = String;

    fn try_from(location: String) -> Result<Self, String> {
        if location.contains("://") {
            // Checked now, so a wrong scheme or option stops kiln at start.
            ObjectStore::check_uri(&location).map_err(|e| ErrorChain(&e).to_string())?;
            Ok(StoreLocation::Object(location))
        } else {
            Ok(StoreLocation::Directory(location.into()))
        }
    }
}

impl fmt::Display for StoreLocation {
    /// Without an object store's options or user info: they may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = match self {
            StoreLocation::Directory(dir) => return write!(f, "{}", dir.display()),
            StoreLocation::Object(uri) => uri.split(['?', '#']).next().unwrap_or_default(),
        };
        let Some((scheme, rest)) = uri.split_once("://") else { return f.write_str(uri) };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        write!(f, "{scheme}://{host}{path}")
    }
}

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Proven bad: the entry is not the archive its name says.
    #[error("the store's copy is corrupt: {0}")]
    Corrupt(String),
    /// Larger than this kiln takes, though the store said otherwise: not proof that
    /// the entry is bad (another kiln may take more), so it stays.
    #[error("the store's copy is larger than max_archive_bytes ({0} bytes)")]
    TooLarge(u64),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("the object store")]
    Object(#[from] opendal::Error),
    #[error("the object store's HTTP client: {0}")]
    Client(String),
    #[error("the store did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the store's worker thread failed")]
    ThreadFailed,
}

impl StoreError {
    pub(crate) fn io(what: String, source: std::io::Error) -> Self {
        StoreError::Io { what, source }
    }
}

/// The one store a kiln is configured with.
pub struct Backend(Kind);

enum Kind {
    Directory(DirectoryStore),
    Object(ObjectStore),
}

impl Backend {
    pub fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        Ok(Backend(match location {
            StoreLocation::Directory(dir) => Kind::Directory(DirectoryStore::new(dir.clone())),
            StoreLocation::Object(uri) => Kind::Object(ObjectStore::open(uri)?),
        }))
    }

    pub async fn lookup(&self, archive_id: &str) -> Result<Option<u64>, StoreError> {
        match &self.0 {
            Kind::Directory(store) => store.lookup(archive_id).await,
            Kind::Object(store) => store.lookup(archive_id).await,
        }
    }

    pub async fn fetch(&self, archive_id: &str, staged: &Path, max_bytes: u64) -> Result<u64, StoreError> {
        match &self.0 {
            Kind::Directory(store) => store.fetch(archive_id, staged, max_bytes).await,
            Kind::Object(store) => store.fetch(archive_id, staged, max_bytes).await,
        }
    }

    pub async fn publish(&self, archive_id: &str, source: &Path) -> Result<bool, StoreError> {
        match &self.0 {
            Kind::Directory(store) => store.publish(archive_id, source).await,
            Kind::Object(store) => store.publish(archive_id, source).await,
        }
    }

    pub async fn remove(&self, archive_id: &str) -> Result<(), StoreError> {
        match &self.0 {
            Kind::Directory(store) => store.remove(archive_id).await,
            Kind::Object(store) => store.remove(archive_id).await,
        }
    }

    /// The archives the store holds (names that are archive ids), with their size
    /// and when each was last used (directory) or published (object store).
    pub async fn archives(&self) -> Result<Vec<StoredArchive>, StoreError> {
        match &self.0 {
            Kind::Directory(store) => store.archives().await,
            Kind::Object(store) => store.archives().await,
        }
    }

    pub async fn create(&self, name: &str, record: Vec<u8>) -> Result<bool, StoreError> {
        match &self.0 {
            Kind::Directory(store) => store.create(name, record).await,
            Kind::Object(store) => store.create(name, record).await,
        }
    }

    pub async fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.0 {
            Kind::Directory(store) => store.read_small(name, max).await,
            Kind::Object(store) => store.read_small(name, max).await,
        }
    }

    pub async fn overwrite(&self, name: &str, record: Vec<u8>) -> Result<(), StoreError> {
        match &self.0 {
            Kind::Directory(store) => store.overwrite(name, record).await,
            Kind::Object(store) => store.overwrite(name, record).await,
        }
    }
}

/// One archive in the store, as its budget sees it.
#[derive(Debug, Clone)]
pub struct StoredArchive {
    pub archive_id: String,
    pub size: u64,
    pub last_used: std::time::SystemTime,
}

/// Whether the store at `location` answers a lookup (`kiln check`).
pub async fn probe(location: &StoreLocation) -> Result<(), StoreError> {
    let backend = Backend::open(location)?;
    // No archive has this name: any answer, found or not, proves the store reachable.
    backend.lookup(".kiln-check").await.map(drop)
}

/// An archive arriving from the store: written to a new file and checked as it goes,
/// then synced before the cache may adopt it.
struct Staging {
    file: std::fs::File,
    check: ArchiveCheck,
    max_bytes: u64,
}

impl Staging {
    /// Fails if anything, a symlink included, is at `path`.
    pub fn create(path: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| StoreError::io(format!("creating {path:?}"), e))?;
        Ok(Staging { file, check: ArchiveCheck::new(), max_bytes })
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if self.check.size() + chunk.len() as u64 > self.max_bytes {
            return Err(StoreError::TooLarge(self.max_bytes));
        }
        self.check.update(chunk);
        self.file.write_all(chunk).map_err(|e| StoreError::io("writing the staged archive".into(), e))
    }

    /// The archive's size, if it is a gzip stream whose BLAKE3 is `archive_id`.
    fn finish(self, archive_id: &str) -> Result<u64, StoreError> {
        self.file.sync_all().map_err(|e| StoreError::io("syncing the staged archive".into(), e))?;
        self.check
            .verify(archive_id)
            .map_err(|_| StoreError::Corrupt("not a gzip stream whose BLAKE3 is its name".into()))
    }
}
