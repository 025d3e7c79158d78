//! Issue 16: a farm of kilns shares each toolchain through a store, so a client sends
//! it once. Real kiln processes on 127.0.0.1, the system gcc packed as a toolchain,
//! and two kinds of store: a directory, and an object store spoken to over S3
//! (s3s-fs, an S3 server over a directory, on 127.0.0.1).
//!
//! Without s3s-fs on PATH (or at `KILN_S3S_FS`) the S3 tests skip loudly, unless
//! `KILN_REQUIRE_S3` is set (CI sets it and installs s3s-fs), in which case they fail.

mod common;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln::protocol::{AssignJobResult, RunJobHttpRequest, RunJobResult, Toolchain};

use common::*;

/// Two kilns share a store. The client uploads the toolchain to the first; it is
/// published, and the second answers assign_job with need_toolchain = false,
/// fetches it and runs the job, byte-identical. A store entry that is not the
/// archive it names (corrupt, or planted by whoever can write the store) is never
/// used: the job it was promised to fails with a clear error (502), the entry is
/// removed, and the next job asks its client for the toolchain.
///
/// `entry` is where the store keeps an archive as a file on this host. Returns the
/// second kiln.
async fn two_kilns_share_toolchains(kiln_config: &str, entry: impl Fn(&str) -> PathBuf) -> Kiln {
    let (first, second) = (Kiln::start(kiln_config), Kiln::start(kiln_config));
    let project = CProject::new();
    let compile = || command("/usr/bin/gcc", &["-c", "-O2", "main.c", "-o", "main.o"], project.cwd());
    let tc = gcc_toolchain();

    let uploaded = run(&first.client(), tc, compile(), &["main.o"], project.inputs()).await;
    assert_eq!(uploaded.output.code, 0, "{}", stderr(&uploaded));
    let published = entry(&tc.archive_id);
    let found = wait_for(Duration::from_secs(30), || published.is_file().then_some(())).await;
    assert!(found.is_some(), "the uploaded toolchain was not published to the store");

    let client = second.client();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: tc.archive_id.clone() };
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(!need_toolchain, "the second kiln asked the client for a toolchain the store holds");
    let request = RunJobHttpRequest { command: compile(), outputs: vec!["main.o".into()] };
    let fetched = match client.run_job(job_id, &token(job_id), &request, &project.inputs()).await.unwrap() {
        RunJobResult::Complete(done) => done,
        other => panic!("{other:?}"),
    };
    assert_eq!(fetched.output.code, 0, "{}", stderr(&fetched));
    assert_eq!(output_bytes(&fetched, "main.o"), output_bytes(&uploaded, "main.o"));
    let (a, b) = (first.status().await.snapshot.counters, second.status().await.snapshot.counters);
    assert_eq!((a.toolchain_uploads, a.toolchain_store_publishes), (1, 1), "{a:?}");
    assert_eq!((b.toolchain_uploads, b.toolchain_store_hits, b.toolchain_store_fetches), (0, 1, 1), "{b:?}");
    assert_eq!(b.toolchain_store_fetched_bytes, std::fs::metadata(&published).unwrap().len(), "{b:?}");

    // A store entry that is not what its name says.
    let planted = other_toolchain();
    std::fs::write(entry(&planted.archive_id), b"\x1f\x8b not the toolchain").unwrap();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: planted.archive_id.clone() };
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(!need_toolchain, "the store offered the planted entry");
    let refused = client.run_job(job_id, &token(job_id), &request, &project.inputs()).await;
    let error = format!("{refused:?}");
    assert!(error.contains("502") && error.contains("corrupt"), "{error}");
    assert!(!entry(&planted.archive_id).exists(), "the corrupt entry stayed in the store");
    let job_id = next_job_id();
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(need_toolchain, "after a corrupt entry the client is asked again");
    let counters = second.status().await.snapshot.counters;
    assert_eq!(counters.toolchain_store_failures, 1, "{counters:?}");
    assert_eq!(counters.toolchains_stored, 1, "nothing unverified was stored: {counters:?}");
    second
}

/// The store as a directory both kilns mount.
#[actix_rt::test]
async fn a_farm_shares_each_toolchain_through_a_directory() {
    let store = tempfile::tempdir().unwrap();
    let config = format!("[kiln.toolchains]\nstore = \"{}\"\n", store.path().display());
    two_kilns_share_toolchains(&config, |id| store.path().join(id)).await;
}

/// The store as an S3 bucket: kiln publishes with PUT (multipart for large archives)
/// and streams fetches to disk, signed with the bucket's keys.
#[actix_rt::test]
async fn a_farm_shares_each_toolchain_through_an_s3_bucket() {
    let Some(s3) = S3Server::start() else { return };
    let config = format!("[kiln.toolchains]\nstore = \"{}\"\n", s3.uri());
    let kiln = two_kilns_share_toolchains(&config, |id| s3.object(id)).await;

    // The operator sees where the store is, and its figures, never its keys.
    let status = kiln.status().await;
    let shown_location = format!("s3://{BUCKET}/{PREFIX}");
    assert_eq!(status.toolchain_store.as_deref(), Some(shown_location.as_str()));
    let (code, page) = kiln::client::Client::new(format!("{}/status", kiln.ops)).get_raw("").await.unwrap();
    assert_eq!(code, 200);
    let page = String::from_utf8(page.to_vec()).unwrap();
    let shown = page.split("id=\"shared-store\"").nth(1).expect("the status page shows the shared store");
    assert!(shown.contains(&shown_location) && shown.contains("2 hits") && shown.contains("1 fetched"), "{shown}");
    assert!(!page.contains(SECRET_KEY), "the status page shows the store's secret key");
}

/// A store that accepts connections and never answers does not hold jobs up: the
/// lookup gives up after its bound, the client is asked for the toolchain, and the
/// job runs. The failure is counted.
#[actix_rt::test]
async fn a_store_that_never_answers_falls_back_to_the_client() {
    let (silent, port) = silent_listener();
    let kiln = Kiln::start(&format!("[kiln.toolchains]\nstore = \"{}\"\n", s3_uri_at(port)));
    let client = kiln.client();
    let tc = gcc_toolchain();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: tc.archive_id.clone() };
    let token = token(job_id);
    let assigned = actix_rt::time::timeout(Duration::from_secs(60), client.assign_job(job_id, &token, &toolchain));
    let AssignJobResult { need_toolchain, .. } = assigned.await.expect("assign_job waits on a silent store").unwrap();
    assert!(need_toolchain, "kiln promised a toolchain from a store that never answered");
    // As the client does when asked: the next job finds the toolchain here.
    let sent = client.submit_toolchain(job_id, &token, tc.bytes.clone()).await.unwrap();
    assert_eq!(sent, kiln::protocol::SubmitToolchainResult::Success);
    let done = assert_compiles(&kiln).await;
    assert_eq!(done.output.code, 0, "{}", stderr(&done));
    let counters = kiln.status().await.snapshot.counters;
    assert!(counters.toolchain_store_failures >= 1, "{counters:?}");
    assert_eq!(counters.toolchain_store_fetches, 0, "{counters:?}");
    drop(silent);
}

/// The secret key in [`s3_uri_at`]'s URI.
const FAKE_SECRET: &str = "hunter2";

/// The store URI of bucket "toolchains" at an S3 endpoint on 127.0.0.1:`port`, its
/// keys in the query.
fn s3_uri_at(port: u16) -> String {
    format!("s3://toolchains?endpoint=http://127.0.0.1:{port}&region=us-east-1&access_key_id=k&secret_access_key={FAKE_SECRET}")
}

/// A listener on 127.0.0.1 that accepts connections (the kernel's backlog) and never
/// answers; it listens while the returned value lives.
fn silent_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// s3s-fs serving one bucket from a temporary directory, on a free port of 127.0.0.1.
struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    port: u16,
}

const BUCKET: &str = "toolchains";
const PREFIX: &str = "farm";
const ACCESS_KEY: &str = "kiln-test";
const SECRET_KEY: &str = "kiln-test-secret";

impl S3Server {
    /// None (the test skips) when s3s-fs is missing and `KILN_REQUIRE_S3` is unset.
    fn start() -> Option<S3Server> {
        let program = std::env::var_os("KILN_S3S_FS").unwrap_or_else(|| "s3s-fs".into());
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let spawned = Command::new(&program)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if std::env::var_os("KILN_REQUIRE_S3").is_some() => {
                panic!("KILN_REQUIRE_S3 is set but {program:?} does not start: {e}")
            }
            Err(e) => {
                eprintln!("\n!!!!! SKIPPING S3 test: {program:?} does not start ({e}); install it (`cargo install s3s-fs --features binary`) or set KILN_REQUIRE_S3=1 to fail instead !!!!!\n");
                return None;
            }
        };
        let server = S3Server { child, root, port };
        for _ in 0..100 {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("s3s-fs did not listen on 127.0.0.1:{port} within 5 s");
    }

    /// The store's URI, options and keys in its query.
    fn uri(&self) -> String {
        format!(
            "s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{}&region=us-east-1&access_key_id={ACCESS_KEY}&secret_access_key={SECRET_KEY}",
            self.port
        )
    }

    /// Where s3s-fs keeps the object for `archive_id`.
    fn object(&self, archive_id: &str) -> PathBuf {
        let dir: &Path = self.root.path();
        let dir = dir.join(BUCKET).join(PREFIX);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(archive_id)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kiln check` says whether the configured store answers; one that does not is a
/// warning (kiln then asks clients for toolchains), not a failure.
#[test]
fn kiln_check_reports_whether_the_store_answers() {
    let check = |store: &str| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("kiln.toml");
        std::fs::write(&config, format!("[kiln.toolchains]\nstore = \"{store}\"\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kiln")).arg("check").arg("--config").arg(&config).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|line| line.contains("toolchain store")).map(str::to_owned);
        (out.status.success(), line.unwrap_or_else(|| panic!("no toolchain store line in:\n{text}")))
    };
    let store = tempfile::tempdir().unwrap();
    let (passed, line) = check(&store.path().display().to_string());
    assert!(passed && line.starts_with("[ok  ] toolchain store"), "{line}");

    let (_silent, port) = silent_listener();
    let (passed, line) = check(&s3_uri_at(port));
    assert!(passed && line.starts_with("[warn] toolchain store"), "{line}");
    assert!(line.contains("s3://toolchains") && !line.contains(FAKE_SECRET), "{line}");

    if let Some(s3) = S3Server::start() {
        let (passed, line) = check(&s3.uri());
        assert!(passed && line.starts_with("[ok  ] toolchain store"), "{line}");
        // Keys that the bucket refuses: it answers, but not to kiln.
        let (passed, line) = check(&s3.uri().replace(SECRET_KEY, "not-the-secret"));
        assert!(passed && line.starts_with("[warn] toolchain store"), "{line}");
    }
}

/// An entry larger than this kiln takes (`max_archive_bytes`) is not offered: the
/// client is asked instead, and the entry stays for kilns that take more.
#[actix_rt::test]
async fn an_entry_larger_than_this_kiln_takes_is_left_alone() {
    let store = tempfile::tempdir().unwrap();
    let kiln =
        Kiln::start(&format!("[kiln.toolchains]\nstore = \"{}\"\nmax_archive_bytes = 4096\n", store.path().display()));
    let big = other_toolchain();
    let entry = store.path().join(&big.archive_id);
    std::fs::write(&entry, vec![0x1f; 8192]).unwrap();
    let client = kiln.client();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: big.archive_id.clone() };
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(need_toolchain, "kiln offered an entry larger than max_archive_bytes");
    assert!(entry.exists(), "the entry was removed");
    let counters = kiln.status().await.snapshot.counters;
    assert_eq!((counters.toolchain_store_hits, counters.toolchain_store_failures), (0, 0), "{counters:?}");
}

/// A store that answers the lookup and then stalls the download fails the job it was
/// promised to after the upload bound (`upload_timeout_secs`), not never; the client
/// then compiles locally.
#[actix_rt::test]
async fn a_store_that_stalls_a_fetch_fails_the_job_in_bounded_time() {
    let port = stalling_s3_endpoint();
    let kiln = Kiln::start(&format!("[kiln.toolchains]\nstore = \"{}\"\nupload_timeout_secs = 3\n", s3_uri_at(port)));
    let client = kiln.client();
    let project = CProject::new();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: gcc_toolchain().archive_id.clone() };
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(!need_toolchain, "the store's HEAD said it holds the toolchain");
    let request = RunJobHttpRequest {
        command: command("/usr/bin/gcc", &["-c", "main.c", "-o", "main.o"], project.cwd()),
        outputs: vec!["main.o".into()],
    };
    let (token, inputs) = (token(job_id), project.inputs());
    let ran = actix_rt::time::timeout(Duration::from_secs(60), client.run_job(job_id, &token, &request, &inputs));
    let error = format!("{:?}", ran.await.expect("run_job waits on a stalled fetch"));
    assert!(error.contains("502") && error.contains("did not answer within 3s"), "{error}");
    let counters = kiln.status().await.snapshot.counters;
    assert_eq!((counters.toolchain_store_failures, counters.toolchain_store_fetches), (1, 0), "{counters:?}");
}

/// An S3 endpoint on 127.0.0.1 that says every object exists (HEAD) and, asked for
/// one (GET), sends its first bytes and then nothing. At most 16 connections.
fn stalling_s3_endpoint() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                for _ in 0..8 {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut header = String::new();
                    while reader.read_line(&mut header).unwrap_or(0) > 2 {
                        header.clear();
                    }
                    let head =
                        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nContent-Type: application/octet-stream\r\n\
                                 ETag: \"kiln\"\r\nLast-Modified: Sun, 29 Nov 2026 00:00:00 GMT\r\n\r\n";
                    let _ = stream.write_all(head);
                    if request.starts_with("GET") {
                        let _ = stream.write_all(&[0x1f, 0x8b, 8, 0]);
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                }
            });
        }
    });
    port
}

// --- single flight on one kiln (issue 23) -------------------------------------

/// `n` jobs assigned at once for one toolchain, as a cold `make -j` or `cargo
/// build -j` starts: their ids, and which of them were asked for the toolchain.
async fn assign_at_once(kiln: &Kiln, tc: &PackedToolchain, n: usize) -> Vec<(kiln::protocol::JobId, bool)> {
    let client = &kiln.client();
    let toolchain = &Toolchain { archive_id: tc.archive_id.clone() };
    let assigns = (0..n).map(|_| async move {
        let job_id = next_job_id();
        let answer = client.assign_job(job_id, &token(job_id), toolchain).await.unwrap();
        (job_id, answer.need_toolchain)
    });
    futures_util::future::join_all(assigns).await
}

/// Runs first jobs as their clients do: the one asked for the toolchain sends it,
/// half a second in (so the others' run_jobs are in before the upload starts),
/// and every job runs `request`; each must compile, all to the same object.
async fn run_first_jobs<'a>(
    jobs: impl IntoIterator<Item = (&'a kiln::client::Client, kiln::protocol::JobId, bool)>,
    tc: &PackedToolchain,
    request: &RunJobHttpRequest,
    project: &CProject,
) {
    let runs = jobs.into_iter().map(|(client, job_id, need)| {
        let inputs = project.inputs();
        async move {
            if need {
                actix_rt::time::sleep(Duration::from_millis(500)).await;
                let sent = client.submit_toolchain(job_id, &token(job_id), tc.bytes.clone()).await.unwrap();
                assert_eq!(sent, kiln::protocol::SubmitToolchainResult::Success);
            }
            match client.run_job(job_id, &token(job_id), request, &inputs).await.unwrap() {
                RunJobResult::Complete(done) => done,
                other => panic!("job {job_id}: {other:?}"),
            }
        }
    });
    let done = futures_util::future::join_all(runs).await;
    for d in &done {
        assert_eq!(d.output.code, 0, "{}", stderr(d));
        assert_eq!(output_bytes(d, "main.o"), output_bytes(&done[0], "main.o"));
    }
}

/// Eight first jobs for a toolchain kiln lacks arrive together. Before, each was
/// answered `need_toolchain = true` and its client sent the whole archive: eight
/// uploads. Now the first is asked for it, the seven others are told it is on
/// its way and their run_jobs (sent before the upload even starts) wait for it;
/// all eight compile, byte-identical, from one upload.
#[actix_rt::test]
async fn concurrent_first_jobs_send_the_toolchain_once() {
    let kiln = Kiln::start("");
    let tc = gcc_toolchain();
    let project = CProject::new();
    let request = RunJobHttpRequest {
        command: command("/usr/bin/gcc", &["-c", "-O2", "main.c", "-o", "main.o"], project.cwd()),
        outputs: vec!["main.o".into()],
    };
    let jobs = assign_at_once(&kiln, tc, 8).await;
    let uploaders: Vec<_> = jobs.iter().filter(|(_, need)| *need).map(|(id, _)| *id).collect();
    assert_eq!(uploaders.len(), 1, "jobs asked for the toolchain: {uploaders:?} of {jobs:?}");
    let client = kiln.client();
    run_first_jobs(jobs.iter().map(|&(job_id, need)| (&client, job_id, need)), tc, &request, &project).await;
    let counters = kiln.status().await.snapshot.counters;
    assert_eq!((counters.toolchain_uploads, counters.toolchain_arrival_waits), (1, 7), "{counters:?}");
    let metrics = kiln::client::Client::new(format!("{}/metrics", kiln.ops)).get_raw("").await.unwrap().1;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("kiln_toolchain_uploads_total 1"), "{metrics}");
}

/// The one job asked for a toolchain sends something that is not it. The jobs
/// waiting for it are answered at once with an error that sends their clients to
/// compile locally (never a hang, never a job on a half-written toolchain), and
/// the next assign_job asks its client again.
#[actix_rt::test]
async fn a_failed_upload_fails_the_jobs_waiting_for_it_at_once() {
    let kiln = Kiln::start("");
    let tc = other_toolchain();
    let jobs = assign_at_once(&kiln, tc, 4).await;
    let uploader = jobs.iter().find(|(_, need)| *need).expect("one job is asked for the toolchain").0;
    let client = &kiln.client();
    let request = &RunJobHttpRequest { command: command("/bin/true", &[], "/work"), outputs: vec![] };
    let waiters = jobs.iter().filter(|(id, _)| *id != uploader).map(|&(job_id, _)| async move {
        let answer = client.run_job(job_id, &token(job_id), request, &empty_tar()).await;
        format!("{answer:?}")
    });
    let upload = async {
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        let mut bad = tc.bytes.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        client.submit_toolchain(uploader, &token(uploader), bad.into()).await
    };
    let limit = Duration::from_secs(60);
    let (refused, answers) =
        actix_rt::time::timeout(limit, futures_util::future::join(upload, futures_util::future::join_all(waiters)))
            .await
            .expect("the waiting jobs were answered");
    assert!(format!("{refused:?}").contains("400"), "the bad upload is refused: {refused:?}");
    for answer in &answers {
        assert!(answer.contains("503") && answer.contains("did not arrive"), "{answer}");
    }
    let counters = kiln.status().await.snapshot.counters;
    assert_eq!((counters.jobs_completed, counters.toolchain_uploads), (0, 0), "{counters:?}");
    assert_eq!(counters.toolchain_arrivals_failed, 1, "{counters:?}");
    let again = assign_at_once(&kiln, tc, 1).await;
    assert!(again[0].1, "after the failed upload the next job is asked for the toolchain");
}

// --- single flight across a farm (issue 23) ------------------------------------

/// Three kilns share a store; nine first jobs for a toolchain none of them has
/// arrive together, three at each. Before, each kiln asked the client once per
/// job (nine uploads); with single flight on each kiln alone, once per kiln
/// (three). Now the first kiln to claim the toolchain in the store asks its
/// client, the other two wait for its publish: one upload for the farm, nine
/// byte-identical objects.
async fn farm_first_jobs_send_the_toolchain_once(config: &str, entry: impl Fn(&str) -> PathBuf) {
    let kilns = [Kiln::start(config), Kiln::start(config), Kiln::start(config)];
    let tc = gcc_toolchain();
    let project = CProject::new();
    let request = &RunJobHttpRequest {
        command: command("/usr/bin/gcc", &["-c", "-O2", "main.c", "-o", "main.o"], project.cwd()),
        outputs: vec!["main.o".into()],
    };
    let assigned = futures_util::future::join_all(kilns.iter().map(|kiln| assign_at_once(kiln, tc, 3))).await;
    let asked: Vec<_> = assigned.iter().flatten().filter(|(_, need)| *need).collect();
    assert_eq!(asked.len(), 1, "jobs asked for the toolchain across the farm: {assigned:?}");
    let clients: Vec<_> = kilns.iter().map(Kiln::client).collect();
    let jobs =
        assigned.iter().zip(&clients).flat_map(|(jobs, client)| jobs.iter().map(move |&(id, need)| (client, id, need)));
    run_first_jobs(jobs, tc, request, &project).await;
    let mut uploads = 0;
    for kiln in &kilns {
        let c = kiln.status().await.snapshot.counters;
        eprintln!(
            "uploads {} waits {} fetches {}",
            c.toolchain_uploads, c.toolchain_arrival_waits, c.toolchain_store_fetches
        );
        uploads += c.toolchain_uploads;
    }
    assert_eq!(uploads, 1, "uploads across the farm");
    assert!(entry(&tc.archive_id).exists(), "the toolchain is published");
    let claim = entry(&format!("{}.claim", tc.archive_id));
    let released = wait_for(Duration::from_secs(30), || (!claim.exists()).then_some(())).await;
    assert!(released.is_some(), "the claim is removed once the toolchain is published");
}

#[actix_rt::test]
async fn farm_first_jobs_send_the_toolchain_once_through_a_directory() {
    let store = tempfile::tempdir().unwrap();
    let config = format!("[kiln.toolchains]\nstore = \"{}\"\n", store.path().display());
    farm_first_jobs_send_the_toolchain_once(&config, |id| store.path().join(id)).await;
}

#[actix_rt::test]
async fn farm_first_jobs_send_the_toolchain_once_through_an_s3_bucket() {
    let Some(s3) = S3Server::start() else { return };
    let config = format!("[kiln.toolchains]\nstore = \"{}\"\n", s3.uri());
    farm_first_jobs_send_the_toolchain_once(&config, |id| s3.object(id)).await;
}

/// A kiln claims a toolchain, is told its job's client will send it, and is
/// killed with `kill -9` before the upload ends. The other kiln's job, waiting
/// for the publish, fails once the dead kiln's claim is no longer refreshed
/// (its client compiles locally), never later than the claim's life; and the
/// next job there is asked for the toolchain.
#[actix_rt::test]
async fn a_claim_from_a_killed_kiln_holds_the_farm_only_until_it_expires() {
    let store = tempfile::tempdir().unwrap();
    let config = format!("[kiln.toolchains]\nstore = \"{}\"\n", store.path().display());
    let (mut first, second) = (Kiln::start(&config), Kiln::start(&config));
    let tc = other_toolchain();
    let claimed = assign_at_once(&first, tc, 1).await;
    assert!(claimed[0].1, "the first kiln asks its client");
    assert!(store.path().join(format!("{}.claim", tc.archive_id)).exists(), "the first kiln claimed the toolchain");
    let waiting = assign_at_once(&second, tc, 1).await;
    assert!(!waiting[0].1, "the second kiln waits for the first one's publish");
    first.kill9();
    let job_id = waiting[0].0;
    let request = RunJobHttpRequest { command: command("/bin/true", &[], "/work"), outputs: vec![] };
    let started = std::time::Instant::now();
    let limit = kiln::toolchains::CLAIM_TTL * 3;
    let answer =
        actix_rt::time::timeout(limit, second.client().run_job(job_id, &token(job_id), &request, &empty_tar()))
            .await
            .expect("the waiting job is answered");
    let answer = format!("{answer:?}");
    eprintln!("answered after {:?}: {answer}", started.elapsed());
    assert!(answer.contains("502") && answer.contains("refreshed"), "{answer}");
    let again = assign_at_once(&second, tc, 1).await;
    assert!(again[0].1, "after the dead kiln's claim, the next job is asked for the toolchain");
}

// --- the store's budget (issue 23) ---------------------------------------------

/// Any job token holder can make kiln publish an archive, so the store has a byte
/// budget (`store` is the config's value, `entry` where an archive is on disk). Three older archives (1 MiB each, last used 3, 2 and 1 hours ago) and a
/// budget of the new toolchain plus 1.5 MiB: after the client's upload is
/// published, the two least recently used are gone, the newest old one and the new
/// toolchain stay, and so does another kiln's claim. Before, nothing was removed.
async fn the_store_keeps_within_its_budget(store: &str, entry: impl Fn(&str) -> PathBuf) {
    const MIB: u64 = 1 << 20;
    let tc = gcc_toolchain();
    let budget = tc.bytes.len() as u64 + 3 * MIB / 2;
    let config = format!("[kiln.toolchains]\nstore = \"{store}\"\nstore_max_bytes = {budget}\n");
    let old: Vec<PathBuf> = (1..=3u64)
        .map(|hours| {
            let path = entry(&format!("{hours:064x}"));
            let file = std::fs::File::create(&path).unwrap();
            file.set_len(MIB).unwrap();
            file.set_modified(std::time::SystemTime::now() - Duration::from_secs(hours * 3600)).unwrap();
            path
        })
        .collect();
    let claim = entry(&format!("{:064x}.claim", 9));
    std::fs::write(&claim, "kiln-claim 1 0 elsewhere\n").unwrap();
    let kiln = Kiln::start(&config);
    assert_compiles(&kiln).await;
    let published = entry(&tc.archive_id);
    let trimmed = wait_for(Duration::from_secs(30), || (published.exists() && !old[2].exists()).then_some(())).await;
    assert!(trimmed.is_some(), "the store was not brought within its budget");
    assert!(!old[1].exists(), "the second least recently used archive stays");
    assert!(old[0].exists(), "the most recently used old archive was removed");
    assert!(published.exists() && claim.exists());
    let counters = kiln.status().await.snapshot.counters;
    assert_eq!(counters.toolchain_store_evictions, 2, "{counters:?}");
    assert_eq!(counters.toolchain_store_bytes, MIB + tc.bytes.len() as u64, "{counters:?}");
}

#[actix_rt::test]
async fn a_directory_store_keeps_within_its_budget_least_recently_used_first() {
    let store = tempfile::tempdir().unwrap();
    the_store_keeps_within_its_budget(&store.path().display().to_string(), |id| store.path().join(id)).await;
}

/// In an object store "least recently used" is "least recently published".
#[actix_rt::test]
async fn an_s3_store_keeps_within_its_budget_oldest_first() {
    let Some(s3) = S3Server::start() else { return };
    std::fs::create_dir_all(s3.object("x").parent().unwrap()).unwrap();
    the_store_keeps_within_its_budget(&s3.uri(), |id| s3.object(id)).await;
}
