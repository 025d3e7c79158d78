//! A toolchain's life in process, without root, against a farm store in a
//! tempdir: two "kilns" (a ToolchainCache and a Toolchains handle each) sharing
//! one directory store, as `tests/farm.rs` does with real kiln processes.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;

use super::*;
use crate::store::StoreLocation;

/// A small, valid toolchain archive and its id (as the sccache client names it).
fn archive() -> (String, Vec<u8>) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_path("bin/cc").unwrap();
    header.set_size(5);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append(&header, &b"hello"[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let bytes = gz.finish().unwrap();
    (crate::protocol::archive_id_of(&bytes), bytes)
}

/// One kiln's toolchain front door over `dir`, sharing the store at `store`.
fn kiln(dir: &Path, store: &Path) -> Toolchains {
    let stats = Arc::new(Stats::default());
    let cache = ToolchainCache::load(&dir.join("archives"), 1 << 30, stats.clone()).unwrap().start();
    let incoming = dir.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let limits = FetchLimits { max_bytes: 1 << 30, timeout: Duration::from_secs(30), store_max_bytes: 0 };
    let location = StoreLocation::Directory(store.to_owned());
    let store = ToolchainStore::new(location, cache.clone(), incoming.clone(), limits, stats.clone()).unwrap();
    let limits = ArrivalLimits { upload_timeout: Duration::from_secs(30) };
    Toolchains::new(cache, Some(store), incoming, limits, stats)
}

fn farm() -> (tempfile::TempDir, Toolchains, Toolchains) {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let (a, b) = (kiln(&tmp.path().join("a"), &store), kiln(&tmp.path().join("b"), &store));
    (tmp, a, b)
}

async fn upload(kiln: &Toolchains, archive_id: &str, job_id: JobId, bytes: &[u8]) -> Result<(), UploadError> {
    let mut upload = kiln.receive(archive_id, job_id).await?.expect("the body is needed");
    for chunk in bytes.chunks(7) {
        upload.write(chunk).await?;
    }
    upload.finish().await
}

#[actix_rt::test]
async fn a_toolchain_crosses_once_and_the_other_kiln_takes_it_from_the_store() {
    let (_tmp, a, b) = farm();
    let (id, bytes) = archive();
    assert_eq!(a.offer(&id, JobId(1)).await.unwrap(), Offer::SendIt);
    assert_eq!(a.offer(&id, JobId(2)).await.unwrap(), Offer::Arriving, "a second first job waits for the first");
    assert_eq!(b.offer(&id, JobId(3)).await.unwrap(), Offer::Arriving, "the other kiln waits for a's publish");
    upload(&a, &id, JobId(1), &bytes).await.unwrap();
    a.arrival(&id).await.unwrap();
    let fetched = tokio::time::timeout(Duration::from_secs(20), b.arrival(&id)).await;
    fetched.expect("b never got the toolchain").unwrap();
    assert_eq!(a.offer(&id, JobId(4)).await.unwrap(), Offer::Here);
    assert_eq!(b.offer(&id, JobId(5)).await.unwrap(), Offer::Here, "b has it in its own cache");
}

#[actix_rt::test]
async fn a_corrupt_upload_fails_its_waiters_at_once_and_the_next_job_is_asked_again() {
    let (_tmp, a, _b) = farm();
    let (id, mut bytes) = archive();
    assert_eq!(a.offer(&id, JobId(1)).await.unwrap(), Offer::SendIt);
    assert_eq!(a.offer(&id, JobId(2)).await.unwrap(), Offer::Arriving);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let refused = upload(&a, &id, JobId(1), &bytes).await.unwrap_err();
    assert!(matches!(refused, UploadError::Mismatch(_)), "{refused}");
    let waited = tokio::time::timeout(Duration::from_secs(5), a.arrival(&id)).await.expect("the waiter hung");
    assert!(waited.is_err(), "a job waited for a corrupt upload and was told it arrived");
    assert_eq!(a.offer(&id, JobId(3)).await.unwrap(), Offer::SendIt, "the next job's client is asked again");
}
