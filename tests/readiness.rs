//! `/readyz`: 200 while kiln can take jobs, 503 with the reason while it drains,
//! while bubblewrap cannot make a sandbox, and while the data dir's file system is
//! below `kiln.disk_reserve`. Each test breaks the real thing (a SIGTERM, the
//! bubblewrap binary kiln runs, a tmpfs filled from outside) and checks that a
//! job's fate agrees with what `/readyz` said. Run as root: the reserve test
//! mounts a small tmpfs of its own (`/tmp/kiln-readiness-<pid>-<n>`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use kiln::protocol::{RunJobHttpRequest, RunJobResult};

/// Every wait in these tests that is not the readiness deadline is bounded by this.
const LIMIT: Duration = Duration::from_secs(60);
/// The bound: `/readyz` says 503 this soon after SIGTERM.
const SIGTERM_TO_NOT_READY: Duration = Duration::from_secs(1);

/// `GET <base>/readyz` over plain HTTP (the operator address).
async fn readyz(base: &str) -> (u16, String) {
    let (status, body) = kiln::client::Client::new(base.to_owned()).get_raw("/readyz").await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Asks `/readyz` until it answers `want` (every 100 ms, at most `LIMIT`).
async fn readyz_becomes(kiln: &Kiln, want: u16) -> (u16, String) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let answer = readyz(&kiln.ops).await;
        if answer.0 == want || Instant::now() > deadline {
            return answer;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(kiln: &Kiln) -> String {
    let (status, body) = kiln::client::Client::new(kiln.ops.clone()).get_raw("/metrics").await.unwrap();
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

#[actix_rt::test]
async fn readyz_is_200_on_both_addresses_while_kiln_can_take_jobs() {
    let kiln = Kiln::start("builders = 1\n");
    assert_eq!(readyz(&kiln.ops).await, (200, "ready\n".to_owned()));
    // Also on the build-server address (HTTPS), like /healthz.
    let (status, body) = kiln.client().get_raw("/readyz").await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"ready\n"[..]));
    assert_compiles(&kiln).await;
    assert_eq!(readyz(&kiln.ops).await.0, 200, "a job leaves kiln ready");
    let text = metrics(&kiln).await;
    for line in [
        "kiln_ready 1",
        "kiln_not_ready{reason=\"draining\"} 0",
        "kiln_not_ready{reason=\"sandbox_backend\"} 0",
        "kiln_not_ready{reason=\"disk_reserve\"} 0",
        // The capacity an autoscaler reads: slots in total, and busy.
        "kiln_builders 1",
        "kiln_jobs_running 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing from /metrics:\n{text}");
    }
}

#[actix_rt::test]
async fn readyz_is_503_within_a_second_of_sigterm_while_a_job_runs() {
    let mut kiln = Kiln::start("builders = 1\ndrain_timeout_secs = 60\n");
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request =
        RunJobHttpRequest { command: command("/bin/sh", &["-c", "sleep 4; echo done"], "/work"), outputs: vec![] };
    let job = actix_rt::spawn(async move { client.run_job(job_id, &token(job_id), &request, &empty_tar()).await });
    let running = async {
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if kiln.status().await.snapshot.jobs_running == 1 {
                return true;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(running.await, "the job never started");
    assert_eq!(readyz(&kiln.ops).await.0, 200, "ready while a job runs");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(kiln.pid()), nix::sys::signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    // Sampled every 20 ms; at most 100 samples or 5 s, whichever comes first.
    let mut answer = (0, String::new());
    for _ in 0..100 {
        answer = readyz(&kiln.ops).await;
        if answer.0 == 503 || signalled.elapsed() > Duration::from_secs(5) {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let took = signalled.elapsed();
    assert_eq!(answer.0, 503, "never not ready after SIGTERM: {answer:?}");
    assert!(took <= SIGTERM_TO_NOT_READY, "/readyz said 503 only {took:?} after SIGTERM");
    assert!(
        answer.1.starts_with("draining") && answer.1.ends_with('\n') && answer.1.lines().count() == 1,
        "{answer:?}"
    );
    eprintln!("readyz: 503 {took:?} after SIGTERM");

    // The job in flight still gets its answer, and kiln exits cleanly.
    match job.await.unwrap().expect("the job in flight is answered") {
        RunJobResult::Complete(done) => assert_eq!((done.output.code, stdout(&done).trim()), (0, "done")),
        other => panic!("unexpected result {other:?}"),
    }
    assert!(kiln.stop_cleanly().await.success());
}

/// A directory for a copy of bubblewrap that jobs' uids may traverse (tempdirs
/// are 0700) and that sandboxes see: not under /tmp, which a sandbox thread
/// covers with a tmpfs of its own.
fn world_readable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("kiln-bwrap-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Puts `contents` at `path` in one rename, with mode 0755.
fn replace_program(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let staged = path.with_extension("new");
    std::fs::write(&staged, contents).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

fn system_bwrap() -> PathBuf {
    ["/usr/bin/bwrap", "/bin/bwrap"].iter().map(PathBuf::from).find(|p| p.exists()).expect("bubblewrap is installed")
}

#[actix_rt::test]
async fn readyz_is_503_while_bubblewrap_cannot_make_a_sandbox() {
    let dir = world_readable_dir();
    let bwrap = dir.path().join("bwrap");
    let real = std::fs::read(system_bwrap()).unwrap();
    replace_program(&bwrap, &real);
    let kiln = Kiln::start_full(
        &format!("[builder]\ntype = \"overlay\"\nbwrap_path = \"{}\"\n", bwrap.display()),
        "builders = 1\n[kiln.sandbox]\nwarm_per_toolchain = 0\nquarantine_after = 0\n",
    );
    assert_eq!(readyz(&kiln.ops).await.0, 200);

    // bubblewrap breaks under the running kiln (a bad upgrade, a policy change).
    replace_program(&bwrap, b"#!/bin/sh\necho 'bwrap: broken by the test' >&2\nexit 1\n");
    let (status, body) = readyz_becomes(&kiln, 503).await;
    assert_eq!(status, 503, "never not ready with a broken bubblewrap: {body}");
    assert!(
        body.starts_with("the sandbox backend cannot make a sandbox") && body.contains("broken by the test"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");
    assert!(metrics(&kiln).await.contains("kiln_not_ready{reason=\"sandbox_backend\"} 1"));
    // It said the truth: a job cannot run now (kiln answers bubblewrap's own exit
    // status 1 and stderr as the job's, or an error; either way gcc never ran).
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = RunJobHttpRequest { command: command("/usr/bin/gcc", &["--version"], "/work"), outputs: vec![] };
    let result = client.run_job(job_id, &token(job_id), &request, &empty_tar()).await;
    let ran =
        matches!(&result, Ok(RunJobResult::Complete(done)) if done.output.code == 0 || stdout(done).contains("gcc"));
    assert!(!ran, "a job ran with a broken bubblewrap: {result:?}");

    // Repaired: ready again, and jobs run.
    replace_program(&bwrap, &real);
    let (status, body) = readyz_becomes(&kiln, 200).await;
    assert_eq!(status, 200, "not ready again after the repair: {body}");
    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn readyz_is_503_while_the_data_dir_is_below_its_reserve() {
    const MIB: u64 = 1 << 20;
    const RESERVE: u64 = 32 * MIB;
    let fs = SmallFs::mount("size=64m,nr_inodes=20000");
    let kiln = Kiln::start_on(
        &fs.path.join("data"),
        &format!("builders = 1\n[kiln.disk_reserve]\npercent = 0\nmin_free_bytes = {RESERVE}\nmin_free_inodes = 0\n"),
    );
    assert!(fs.space().free_bytes > RESERVE);
    assert_eq!(readyz(&kiln.ops).await.0, 200);

    // The rest of the host fills the file system past the reserve.
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![1u8; (48 * MIB) as usize]).unwrap();
    assert!(fs.space().free_bytes < RESERVE, "the test did not fill the file system");
    let (status, body) = readyz(&kiln.ops).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("below the disk reserve") && body.contains("kiln.disk_reserve"), "{body}");
    assert_eq!(body.lines().count(), 1, "{body}");
    assert!(metrics(&kiln).await.contains("kiln_not_ready{reason=\"disk_reserve\"} 1"));

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(readyz(&kiln.ops).await.0, 200, "ready again once the space is back");
    drop(kiln);
}
