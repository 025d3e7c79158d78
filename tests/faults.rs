//! Faults: a sandbox killed mid-job, a job that never ends, kiln itself killed.

mod common;

use std::time::Duration;

use common::*;
use kiln::client::InputsBuilder;
use kiln::protocol::{RunJobHttpRequest, RunJobResult};

fn empty_inputs() -> Vec<u8> {
    InputsBuilder::new().finish().unwrap()
}

/// Starts a `sleep 600` job in the background; returns the task answering it.
async fn start_sleeping_job(kiln: &Kiln) -> tokio::task::JoinHandle<Result<RunJobResult, kiln::client::ClientError>> {
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = RunJobHttpRequest { command: command("/bin/sleep", &["600"], "/work"), outputs: vec![] };
    actix_rt::spawn(async move { client.run_job(job_id, &token(job_id), &request, &empty_inputs()).await })
}

fn sandbox_pids(kiln: &Kiln) -> Vec<i32> {
    bwrap_pids(kiln.data_dir.to_str().unwrap())
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
    assert_eq!(status["builder_restarts"], 1, "{status}");
    assert_eq!(status["jobs_failed"], 1, "{status}");
}

#[actix_rt::test]
async fn a_job_over_its_timeout_is_killed_with_its_whole_tree() {
    let kiln = Kiln::start("[jobs]\ntimeout_secs = 2\n");
    let client = kiln.client();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    // A child in the background and a sleeping parent: both must die.
    let request =
        RunJobHttpRequest { command: command("/bin/sh", &["-c", "sleep 600 & sleep 600"], "/work"), outputs: vec![] };
    let err = client
        .run_job(job_id, &token(job_id), &request, &empty_inputs())
        .await
        .expect_err("a timed-out job is an error");
    assert!(err.to_string().contains("longer than"), "{err}");
    let leftover = wait_for(Duration::from_secs(10), || Some(()).filter(|_| sandbox_pids(&kiln).is_empty())).await;
    assert!(leftover.is_some(), "sandbox processes survived the timeout");
    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn kill_9_mid_job_then_restart_leaves_no_mounts_and_a_clean_build_dir() {
    let mut kiln = Kiln::start("");
    assert_compiles(&kiln).await; // warm: prepared sandboxes exist now
    let _answer = start_sleeping_job(&kiln).await;
    wait_for(Duration::from_secs(60), || Some(()).filter(|_| !sandbox_pids(&kiln).is_empty()))
        .await
        .expect("the job's sandbox never started");
    let data_dir = kiln.data_dir.clone();
    let sandboxes = data_dir.join("sandboxes");
    assert!(std::fs::read_dir(&sandboxes).unwrap().count() > 0);

    kiln.kill9();
    // The sandbox dies with kiln (--die-with-parent), and no overlay was ever
    // mounted in the host's namespace.
    let gone =
        wait_for(Duration::from_secs(10), || Some(()).filter(|_| bwrap_pids(data_dir.to_str().unwrap()).is_empty()))
            .await;
    assert!(gone.is_some(), "sandbox processes outlived kiln");
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
