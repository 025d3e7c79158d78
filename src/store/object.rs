//! The store as an object store (S3 and S3-compatible servers, GCS, Azure Blob),
//! through opendal, as sccache does for its own cache.
//!
//! The store is named by a URI, `s3://bucket/prefix?region=...&endpoint=...`; the
//! query holds the service's options, and credentials come, as usual for each
//! service, from the environment (AWS_ACCESS_KEY_ID, instance roles, ...). An object
//! appears only once its upload completes, so publishing needs no temporary name.

use std::path::Path;

use bytes::Bytes;
use futures_util::TryStreamExt;
use opendal::layers::{RetryEvent, RetryLayer};
use opendal::{HttpTransporter, Operator};
use opendal_http_transport_reqwest::ReqwestTransport;
use tokio::io::AsyncReadExt;

use super::{Staging, StoreError, StoredArchive, CHUNK};

/// Chunks in flight between the download and the thread that checks and writes them.
const IN_FLIGHT: usize = 4;

pub(super) struct ObjectStore {
    op: Operator,
}

impl ObjectStore {
    /// Checks that `uri` names a store opendal can open (scheme, bucket, options),
    /// without making the HTTP client `open` makes: for the config's validation.
    pub(super) fn check_uri(uri: &str) -> Result<(), StoreError> {
        Ok(operator(uri).map(drop)?)
    }

    /// Opens the store `uri` names; nothing is sent to it yet.
    pub(super) fn open(uri: &str) -> Result<Self, StoreError> {
        let op = operator(uri)?;
        let client = http_client()?;
        // Its own HTTP client: no connection shared with another store (or another
        // kiln of the same process, in tests) whose runtime may be gone.
        let context = op.context().with_http_transport(HttpTransporter::new(ReqwestTransport::new(client)));
        // Retries logged in one line (opendal's own notice is a warning with the
        // error's Debug form, a backtrace when RUST_BACKTRACE is set).
        let retry = RetryLayer::new().with_max_times(2).with_notify(|event: RetryEvent<'_>| {
            tracing::info!(operation = ?event.op, attempt = event.attempt, error = %event.err, "retrying a store request");
        });
        let op = op.with_context(context).layer(retry);
        Ok(ObjectStore { op })
    }

    pub(super) async fn lookup(&self, archive_id: &str) -> Result<Option<u64>, StoreError> {
        match self.op.stat(archive_id).await {
            Ok(meta) => Ok(meta.is_file().then(|| meta.content_length())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `archive_id` into a new `staged` file, checked as it arrives.
    pub(super) async fn fetch(&self, archive_id: &str, staged: &Path, max_bytes: u64) -> Result<u64, StoreError> {
        // One GET, streamed (a chunked reader would make one ranged request per chunk).
        let mut stream = self.op.reader(archive_id).await?.into_bytes_stream(..).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(IN_FLIGHT);
        let (staged, id) = (staged.to_owned(), archive_id.to_owned());
        // Hashing and writing: off the async thread.
        let writer = tokio::task::spawn_blocking(move || {
            let mut staging = Staging::create(&staged, max_bytes)?;
            while let Some(chunk) = rx.blocking_recv() {
                staging.write(&chunk)?;
            }
            staging.finish(&id)
        });
        let downloaded = async {
            while let Some(chunk) =
                stream.try_next().await.map_err(|e| StoreError::io(format!("downloading {archive_id}"), e))?
            {
                if tx.send(chunk).await.is_err() {
                    break; // The writer stopped: its error says why.
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer.await.map_err(|_| StoreError::ThreadFailed)?;
        downloaded.and(written)
    }

    /// Uploads `source` as `archive_id`. `Ok(false)`: the store held it already.
    pub(super) async fn publish(&self, archive_id: &str, source: &Path) -> Result<bool, StoreError> {
        if self.op.exists(archive_id).await? {
            return Ok(false);
        }
        let mut file =
            tokio::fs::File::open(source).await.map_err(|e| StoreError::io(format!("opening {source:?}"), e))?;
        let mut writer = self.op.writer_with(archive_id).chunk(8 * CHUNK).await?;
        let uploaded = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file.read(&mut buf).await.map_err(|e| StoreError::io(format!("reading {source:?}"), e))?;
                if n == 0 {
                    break;
                }
                writer.write(Bytes::copy_from_slice(&buf[..n])).await?;
            }
            writer.close().await?;
            Ok(())
        }
        .await;
        if uploaded.is_err() {
            let _ = writer.abort().await;
        }
        uploaded.map(|()| true)
    }

    pub(super) async fn remove(&self, archive_id: &str) -> Result<(), StoreError> {
        Ok(self.op.delete(archive_id).await?)
    }

    /// The objects named as archive ids, with their size and when each was
    /// published (an object store has no cheap "last used").
    pub(super) async fn archives(&self) -> Result<Vec<StoredArchive>, StoreError> {
        let entries = self.op.list("/").await?;
        Ok(entries
            .into_iter()
            .filter(|entry| crate::protocol::is_valid_archive_id(entry.name()))
            .map(|entry| {
                let meta = entry.metadata();
                let last_used = meta.last_modified().map(std::time::SystemTime::from).unwrap_or(std::time::UNIX_EPOCH);
                StoredArchive { archive_id: entry.name().to_owned(), size: meta.content_length(), last_used }
            })
            .collect())
    }

    /// Writes `record` at `name` unless something is there (`If-None-Match: *`).
    /// `Ok(false)`: something was.
    pub(super) async fn create(&self, name: &str, record: Vec<u8>) -> Result<bool, StoreError> {
        match self.op.write_with(name, record).if_not_exists(true).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == opendal::ErrorKind::ConditionNotMatch => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a small object (a claim); `None` if absent, empty if larger than `max`
    /// bytes (no claim is).
    pub(super) async fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let read = async {
            if self.op.stat(name).await?.content_length() > max {
                return Ok::<_, opendal::Error>(Vec::new());
            }
            Ok(self.op.read(name).await?.to_vec())
        };
        match read.await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn overwrite(&self, name: &str, record: Vec<u8>) -> Result<(), StoreError> {
        self.op.write(name, record).await.map(drop).map_err(Into::into)
    }
}

/// The operator `uri` names, with opendal's services registered first.
fn operator(uri: &str) -> opendal::Result<Operator> {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(opendal::init_default_registry);
    Operator::from_uri(uri)
}

/// An HTTP client with rustls on ring, kiln's one crypto provider (reqwest's default
/// would build aws-lc-rs).
fn http_client() -> Result<reqwest::Client, StoreError> {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Err: the process has a provider already; reqwest uses that one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().build().map_err(|e| StoreError::Client(e.to_string()))
}
