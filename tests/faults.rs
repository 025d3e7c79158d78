//! Faults: a sandbox killed mid-job, a job that never ends, kiln itself killed.

mod common;

use std::time::Duration;

use common::*;
use kiln::client::InputsBuilder;
use kiln::protocol::{Endpoint, RunJobHttpRequest, RunJobResult};

/// Starts a `sleep 600` job in the background; returns the task answering it.
async fn start_sleeping_job(kiln: &Kiln) -> tokio::task::JoinHandle<Result<RunJobResult, kiln::client::ClientError>> {
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = RunJobHttpRequest { command: command("/bin/sleep", &["600"], "/work"), outputs: vec![] };
    actix_rt::spawn(async move { client.run_job(job_id, &token(job_id), &request, &empty_tar()).await })
}

/// The bubblewrap processes of sandboxes running a job (prepared ones wait idle).
fn sandbox_pids(kiln: &Kiln) -> Vec<i32> {
    job_sandbox_pids(kiln.data_dir.to_str().unwrap())
}

/// Waits (up to a minute) until `kiln` runs a sandbox.
async fn sandbox_started(kiln: &Kiln) -> bool {
    wait_for(Duration::from_secs(60), || Some(()).filter(|_| !sandbox_pids(kiln).is_empty())).await.is_some()
}

/// Waits up to `secs` until `kiln` runs no sandbox.
async fn sandboxes_gone(kiln: &Kiln, secs: u64) -> bool {
    wait_for(Duration::from_secs(secs), || Some(()).filter(|_| sandbox_pids(kiln).is_empty())).await.is_some()
}

#[actix_rt::test]
async fn a_sandbox_killed_mid_job_fails_that_job_and_its_builder_restarts() {
    let kiln = Kiln::start("builders = 1\n");
    let answer = start_sleeping_job(&kiln).await;
    let pids = wait_for(Duration::from_secs(60), || Some(sandbox_pids(&kiln)).filter(|p| !p.is_empty()))
        .await
        .expect("the job's sandbox never started");
    for pid in pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    let err = answer.await.unwrap().expect_err("the killed job must get an error, not a result");
    assert!(err.to_string().contains("500") || err.to_string().contains("killed"), "{err}");
    assert!(err.to_string().contains("signal 9"), "the error says what happened: {err}");

    // The one builder was restarted and takes the next job.
    assert_compiles(&kiln).await;
    let status = kiln.status().await;
    assert_eq!(status.snapshot.counters.builder_restarts, 1, "{status:?}");
    assert_eq!(status.snapshot.counters.jobs_failed, 1, "{status:?}");
}

#[actix_rt::test]
async fn a_job_over_its_timeout_is_killed_with_its_whole_tree() {
    let kiln = Kiln::start("[kiln.jobs]\ntimeout_secs = 2\n");
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    // A child in the background and a sleeping parent: both must die.
    let script = "sleep 601 & sleep 601";
    let request = RunJobHttpRequest { command: command("/bin/sh", &["-c", script], "/work"), outputs: vec![] };
    let answer = actix_rt::spawn(async move { client.run_job(job_id, &token(job_id), &request, &empty_tar()).await });
    let sleepers = || pids_of("sleep", "601");
    wait_for(Duration::from_secs(60), || Some(()).filter(|_| sleepers().len() == 2 && !sandbox_pids(&kiln).is_empty()))
        .await
        .expect("the job's two sleeps never ran");
    let err = answer.await.unwrap().expect_err("a timed-out job is an error");
    assert!(err.to_string().contains("longer than"), "{err}");
    let gone = wait_for(Duration::from_secs(10), || {
        Some(()).filter(|_| sandbox_pids(&kiln).is_empty() && sleepers().is_empty())
    });
    assert!(gone.await.is_some(), "processes survived the timeout: {:?}", sleepers());
    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn a_client_that_hangs_up_frees_its_builder() {
    let kiln = Kiln::start("builders = 1\n");
    let answer = start_sleeping_job(&kiln).await;
    assert!(sandbox_started(&kiln).await, "the job's sandbox never started");
    answer.abort(); // drops the request: the connection closes
    assert!(sandboxes_gone(&kiln, 30).await, "the abandoned job kept running");
    // The only builder is free again long before the job's 600 s timeout.
    assert_compiles(&kiln).await;
    let status = kiln.status().await;
    assert_eq!(status.snapshot.counters.builder_restarts, 0, "a cancelled job is not a builder failure: {status:?}");
}

#[actix_rt::test]
async fn a_full_queue_answers_503_and_keeps_serving() {
    let kiln = Kiln::start("builders = 1\n[kiln.jobs]\nqueue_len = 1\ntimeout_secs = 5\n");
    let busy = start_sleeping_job(&kiln).await;
    assert!(sandbox_started(&kiln).await, "the job's sandbox never started");
    let waiting = start_sleeping_job(&kiln).await;
    // run_job takes the job out of the assigned table right before queueing it.
    for _ in 0..500 {
        if kiln.status().await.assigned_jobs == 0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = RunJobHttpRequest { command: command("/bin/sh", &["-c", "true"], "/work"), outputs: vec![] };
    let err = client.run_job(job_id, &token(job_id), &request, &empty_tar()).await.expect_err("the queue is full");
    assert!(err.to_string().contains("503"), "{err}");
    // Both accepted jobs still get their answers (here: their timeout).
    for job in [busy, waiting] {
        let err = job.await.unwrap().expect_err("sleep 600 times out");
        assert!(err.to_string().contains("longer than"), "{err}");
    }
    assert_compiles(&kiln).await;
    assert_eq!(kiln.status().await.snapshot.counters.jobs_rejected, 1);
}

#[actix_rt::test]
async fn kill_9_mid_job_then_restart_leaves_no_mounts_and_a_clean_build_dir() {
    let mut kiln = Kiln::start("");
    assert_compiles(&kiln).await; // warm: prepared sandboxes exist now
    let _answer = start_sleeping_job(&kiln).await;
    // Wait for the job itself (the sandbox's `sleep`), not just its bubblewrap.
    let job_runs = || sandbox_pids(&kiln).iter().any(|pid| descendant_named(*pid, "sleep"));
    wait_for(Duration::from_secs(60), || Some(()).filter(|_| job_runs())).await.expect("the job never started");
    let data_dir = kiln.data_dir.clone();
    let sandboxes = data_dir.join("sandboxes");
    assert!(std::fs::read_dir(&sandboxes).unwrap().count() > 0);
    // The overlay exists in the sandbox's mount namespace and not in the host's.
    let sandbox_mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", sandbox_pids(&kiln)[0])).unwrap();
    let overlay = sandbox_mounts.lines().find(|l| l.contains(" overlay ") && l.contains(sandboxes.to_str().unwrap()));
    assert!(overlay.is_some(), "no overlay in the sandbox's namespace:\n{sandbox_mounts}");
    assert_eq!(mounts_below(&data_dir), Vec::<String>::new(), "an overlay leaked into the host's namespace");

    kiln.kill9();
    // The sandbox dies with kiln (--die-with-parent), and no overlay was ever
    // mounted in the host's namespace.
    let gone =
        wait_for(Duration::from_secs(10), || Some(()).filter(|_| bwrap_pids(data_dir.to_str().unwrap()).is_empty()))
            .await;
    if gone.is_none() {
        // Seen once under heavy load: say what survived, and in which state.
        let survivors: Vec<String> = bwrap_pids(data_dir.to_str().unwrap())
            .iter()
            .map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let field = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
                format!("{pid}: {} {} {}", field("State:"), field("PPid:"), field("SigPnd:"))
            })
            .collect();
        panic!("sandbox processes outlived kiln by 10 s:\n{}", survivors.join("\n"));
    }
    assert_eq!(mounts_below(&data_dir), Vec::<String>::new());

    let restarted = Kiln::start_on(&data_dir, "");
    assert_eq!(mounts_below(&data_dir), Vec::<String>::new());
    assert!(!data_dir.join("roots").read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".unpacking")));
    let stale: Vec<_> = std::fs::read_dir(&sandboxes).unwrap().collect();
    assert!(stale.is_empty(), "the previous run's sandboxes were not swept: {stale:?}");
    // The toolchain archive survived the restart: no new upload needed.
    let job_id = next_job_id();
    let toolchain = kiln::protocol::Toolchain { archive_id: gcc_toolchain().archive_id.clone() };
    let assigned = restarted.client().assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(!assigned.need_toolchain, "the cached archive was kept across the restart");
    assert_compiles(&restarted).await;
    drop(kiln);
}

/// `size` bytes that zlib cannot shrink (xorshift), so the request body is as big.
fn incompressible(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[actix_rt::test]
async fn request_bodies_beyond_the_memory_budget_get_503_until_memory_is_free() {
    let kiln = Kiln::start("[kiln.jobs]\nmax_request_bytes = 409600\nmax_buffered_request_bytes = 409600\n");
    let mut inputs = InputsBuilder::new();
    inputs.add_file("/work/blob", &incompressible(300 << 10)).unwrap();
    let inputs = inputs.finish().unwrap();

    // The first job's body (~300 KiB) is held while it runs.
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = RunJobHttpRequest { command: command("/bin/sleep", &["600"], "/work"), outputs: vec![] };
    let first_inputs = inputs.clone();
    let first = actix_rt::spawn(async move { client.run_job(job_id, &token(job_id), &request, &first_inputs).await });
    assert!(sandbox_started(&kiln).await, "the first job never started");

    // A second body of the same size does not fit: 503 at once, not a queue of bodies.
    let true_job = RunJobHttpRequest { command: command("/bin/sh", &["-c", "true"], "/work"), outputs: vec![] };
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let err = client.run_job(job_id, &token(job_id), &true_job, &inputs).await.expect_err("over the memory budget");
    assert!(err.to_string().contains("503") && err.to_string().contains("in memory"), "{err}");

    // Once the first job is gone its memory is free again.
    first.abort();
    assert!(sandboxes_gone(&kiln, 30).await, "the abandoned job kept running");
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    match client.run_job(job_id, &token(job_id), &true_job, &inputs).await.unwrap() {
        RunJobResult::Complete(done) => assert_eq!(done.output.code, 0),
        RunJobResult::JobNotFound => panic!("job {job_id} not found"),
    }
}

#[actix_rt::test]
async fn a_second_kiln_on_the_same_data_dir_refuses_to_start() {
    let kiln = Kiln::start("builders = 1\n");
    // The same config file (same data dir), other ports: only the lock can stop it.
    let config = kiln.data_dir.with_extension("toml");
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running a second kiln");
    assert!(!second.status.success(), "a second kiln on the same data dir started");
    let stderr = String::from_utf8_lossy(&second.stderr);
    let message = stderr.lines().find(|l| l.contains("already using")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(message.contains(&format!("pid {}", kiln.pid())), "names the holder: {message}");
    assert!(message.contains("kiln.lock"), "{message}");
    assert!(String::from_utf8_lossy(&second.stdout).is_empty(), "it never listened");

    // The first one is untouched: its sandboxes were not swept, it still compiles.
    assert_compiles(&kiln).await;
}

/// Runs `gcc --version` as a fresh job; the error's text if it got no result.
async fn gcc_version_job(kiln: &Kiln, tc: &PackedToolchain) -> Result<(), String> {
    let client = kiln.client();
    let job_id = assign_and_submit(&client, tc).await;
    let request = RunJobHttpRequest { command: command("/usr/bin/gcc", &["--version"], "/work"), outputs: vec![] };
    match client.run_job(job_id, &token(job_id), &request, &empty_tar()).await {
        Ok(RunJobResult::Complete(done)) if done.output.code == 0 => Ok(()),
        Ok(other) => Err(format!("unexpected result {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[actix_rt::test]
async fn a_toolchain_whose_root_breaks_is_unpacked_again_then_quarantined() {
    // Sandboxes prepared per job (none ahead), so each job mounts the root afresh.
    let kiln = Kiln::start(
        "builders = 1\n[kiln.sandbox]\nwarm_per_toolchain = 0\nquarantine_after = 2\nquarantine_secs = 600\n",
    );
    let tc = gcc_toolchain();
    gcc_version_job(&kiln, tc).await.expect("a healthy toolchain runs");
    let root = kiln.data_dir.join("roots").join(&tc.archive_id);
    assert!(root.is_dir(), "the toolchain was unpacked at {root:?}");

    // A real fault: the unpacked root vanishes from the disk, overlayfs cannot mount it.
    std::fs::remove_dir_all(&root).unwrap();
    for _ in 0..2 {
        let err = gcc_version_job(&kiln, tc).await.expect_err("a job over a missing root cannot run");
        assert!(err.contains("500") && err.contains("overlay"), "{err}");
    }
    // The second failure made kiln forget the root: the next job unpacks it again.
    gcc_version_job(&kiln, tc).await.expect("a fresh unpack heals the toolchain");
    let status = kiln.status().await;
    assert_eq!(status.snapshot.counters.toolchain_reunpacks, 1, "{status:?}");
    assert_eq!(status.snapshot.counters.unpacks, 2, "{status:?}");
    assert!(root.is_dir());

    // Broken again within the cool-down: two more failures quarantine it.
    std::fs::remove_dir_all(&root).unwrap();
    for _ in 0..2 {
        gcc_version_job(&kiln, tc).await.expect_err("a job over a missing root cannot run");
    }
    let restarts = kiln.status().await.snapshot.counters.builder_restarts;
    let err = gcc_version_job(&kiln, tc).await.expect_err("a quarantined toolchain's job is refused");
    assert!(err.contains("503") && err.contains("quarantined") && err.contains("overlay"), "{err}");
    let status = kiln.status().await;
    assert_eq!(status.snapshot.counters.toolchains_quarantined, 1, "{status:?}");
    assert_eq!(status.snapshot.counters.builder_restarts, restarts, "a refused job touches no sandbox: {status:?}");
    let health = &status.snapshot.toolchain_health[0];
    assert_eq!(health.archive_id, tc.archive_id, "{status:?}");
    assert!(health.quarantined_secs_left > 0, "{status:?}");
    let (code, metrics) = kiln.client().get_raw("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&metrics).contains("kiln_toolchains_quarantined 1"));

    // Other toolchains are not affected.
    gcc_version_job(&kiln, other_toolchain()).await.expect("another toolchain still runs");
}

/// Issue 14: one job token cannot hold the request-body budget. Four run_job
/// posts of one job, each declaring a body (chunked: up to the limit) and sending
/// ten bytes of it, used to reserve the whole budget before reading anything, and
/// every other client's run_job got 503 until the body timeout. Now a body holds
/// what has arrived, and only one body per job id is read at all.
#[actix_rt::test]
async fn one_job_token_cannot_hold_the_request_body_budget() {
    use std::io::Write;
    // Plain HTTP (tls = false), so the test writes the requests itself.
    let kiln = Kiln::start(
        "tls = false\n[kiln.jobs]\nmax_request_bytes = 1048576\nmax_buffered_request_bytes = 1048576\nbody_timeout_secs = 60\n",
    );
    let client = kiln.client();
    let attacker = assign_and_submit(&client, gcc_toolchain()).await;
    let addr: std::net::SocketAddr = kiln.addr.trim_start_matches("http://").parse().unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        Endpoint::RunJob.path(attacker),
        token(attacker)
    );
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            stream
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // Another client's job, with a body of 300 KiB, runs.
    let mut inputs = InputsBuilder::new();
    inputs.add_file("/work/blob", &incompressible(300 << 10)).unwrap();
    let inputs = inputs.finish().unwrap();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = RunJobHttpRequest {
        command: command("/bin/sh", &["-c", "[ -s blob ] && echo present"], "/work"),
        outputs: vec![],
    };
    match client.run_job(job_id, &token(job_id), &request, &inputs).await {
        Ok(RunJobResult::Complete(done)) => {
            assert_eq!(String::from_utf8_lossy(&done.output.stdout), "present\n")
        }
        other => panic!("another client's job did not run while one token held bodies open: {other:?}"),
    }
    drop(held);
}

/// A port on 127.0.0.1 that is free, and so is the one 100 above it (the
/// default operator port).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 100)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}

/// An upstream `sccache-dist server` config, with no [kiln] table, its own
/// cache_dir and build_dir under `dir`.
fn upstream_style_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let path = dir.join(format!("server-{port}.toml"));
    let text = format!(
        "public_addr = \"127.0.0.1:{port}\"\nscheduler_url = \"http://127.0.0.1:9\"\ncache_dir = \"{d}/{port}/cache\"\n\
         [builder]\ntype = \"overlay\"\nbuild_dir = \"{d}/{port}/build\"\nbwrap_path = \"/usr/bin/bwrap\"\n\
         [scheduler_auth]\ntype = \"token\"\ntoken = \"server-token\"\n",
        d = dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `kiln serve --config <config>`: the child once it listens, or its stderr if it exits.
fn serve(config: &std::path::Path) -> Result<std::process::Child, String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    if line.starts_with("kiln listening on") {
        return Ok(child);
    }
    let out = child.wait_with_output().unwrap();
    Err(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue 14: two kilns on one host, each with an upstream-style server.toml that
/// sets its own cache_dir and build_dir (as upstream accepts), both start: only
/// the directories a config uses are locked, and the operator port follows
/// public_addr's. A taken port is named with the key that moves it.
#[test]
fn two_kilns_with_upstream_style_configs_share_a_host() {
    let dir = tempfile::Builder::new().prefix("kiln-test-").tempdir().unwrap();
    let (a, b) = (free_port_pair(), free_port_pair());
    let mut first = serve(&upstream_style_config(dir.path(), a)).expect("the first kiln");
    let second = serve(&upstream_style_config(dir.path(), b));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let third = (port > 100).then(|| serve(&upstream_style_config(dir.path(), port - 100)));
    let _ = first.kill();
    let _ = first.wait();
    let mut second = second.unwrap_or_else(|stderr| panic!("a second kiln with its own directories failed:\n{stderr}"));
    let _ = second.kill();
    let _ = second.wait();
    if let Some(third) = third {
        let stderr = third.expect_err("a kiln whose operator port is taken started");
        let line = stderr.lines().find(|l| l.starts_with("kiln cannot start: ")).unwrap_or_else(|| panic!("{stderr}"));
        assert!(line.contains(&format!("127.0.0.1:{port}")) && line.contains("set kiln.metrics_listen"), "{line}");
    }
}

/// A bubblewrap that cannot set a sandbox up (here a wrapper that fails as
/// bwrap does when a mount is refused, for the sandboxes only: the startup probe
/// passes) never runs the job. Before, kiln answered such a job as the job's own
/// result, exit 1 with bwrap's complaint on stderr, so the client reported a
/// failed compile; now it is kiln's failure (a 5xx, which the sccache client
/// answers by compiling locally), and the log says why.
#[actix_rt::test]
async fn a_sandbox_bubblewrap_cannot_set_up_is_kilns_failure_not_the_jobs() {
    // Not under /tmp: the sandbox threads cover /tmp with a tmpfs of their own.
    let dir = tempfile::Builder::new().prefix("kiln-fake-bwrap-").tempdir_in("/var/tmp").unwrap();
    // Run as the sandbox's uid: reachable by it.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let wrapper = dir.path().join("bwrap");
    // It fails after kiln wrote the job's command (which the pipe's buffer takes):
    // kiln cannot tell from bubblewrap's state when it writes.
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase \"$*\" in *.kiln-exec*) sleep 0.5; echo 'bwrap: Can'\"'\"'t mount proc on /newroot/proc: Operation not permitted' >&2; exit 1 ;; esac\n\
         exec /usr/bin/bwrap \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let top = format!("[builder]\ntype = \"overlay\"\nbwrap_path = \"{}\"\n", wrapper.display());
    let tmp = tempfile::Builder::new().prefix("kiln-test-").tempdir().unwrap();
    let kiln = Kiln::start_with(&tmp.path().join("data"), &top, "builders = 1\n");
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = RunJobHttpRequest { command: command("/bin/sh", &["-c", "echo ran"], "/"), outputs: vec![] };
    let answer = client.run_job(job_id, &token(job_id), &request, &[]).await;
    eprintln!("answer: {answer:?}");
    let error = match answer {
        Err(e) => e.to_string(),
        Ok(other) => panic!("a job whose sandbox was never set up was answered as the job's: {other:?}"),
    };
    assert!(error.contains("500") && error.contains("could not set up"), "{error}");
}
