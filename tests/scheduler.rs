//! kiln and its schedulers: kiln's own scheduler API as the sccache client uses
//! it, and kiln's link to an upstream scheduler, seen by a recording stand-in
//! (scripts/interop.sh runs the real upstream scheduler and client; this test
//! checks the same traffic field by field, in every `cargo test`).

mod common;

use std::sync::Mutex;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use common::*;
use kiln::client::{Client, ClientError};
use kiln::protocol::{
    self, AllocJobHttpResponse, HeartbeatServerHttpRequest, HeartbeatServerResult, JobId, JobState, RunJobHttpRequest,
    RunJobResult, Toolchain, UpdateJobStateResult,
};

fn gcc() -> Toolchain {
    Toolchain { archive_id: gcc_toolchain().archive_id.clone() }
}

fn sha256(der: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().to_vec()
}

fn der_of(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem).unwrap().to_vec()
}

/// Compiles util.c in job `job_id` with the token the scheduler handed out.
async fn compile_in(server: &Client, job_id: JobId, token: &str, need_toolchain: bool) -> RunJobResult {
    if need_toolchain {
        server.submit_toolchain(job_id, token, gcc_toolchain().bytes.clone()).await.unwrap();
    }
    let project = CProject::new();
    let request = RunJobHttpRequest {
        command: command("/usr/bin/gcc", &["-c", "util.c", "-o", "util.o"], project.cwd()),
        outputs: vec!["util.o".into()],
    };
    server.run_job(job_id, token, &request, &project.inputs()).await.unwrap()
}

#[actix_rt::test]
async fn own_scheduler_places_jobs_with_upstreams_capacity_and_auth() {
    let kiln = Kiln::start("builders = 1\n");
    let scheduler = kiln.scheduler_client();
    let status = scheduler.scheduler_status().await.unwrap();
    assert_eq!((status.num_servers, status.num_cpus, status.in_progress), (1, 1, 0));

    // One builder: upstream's rule gives 1 + 1 + 1/8 = 2 slots.
    let token = kiln::config::INSECURE_CLIENT_TOKEN;
    let mut allocs = Vec::new();
    for _ in 0..2 {
        match scheduler.alloc_job(token, &gcc()).await.unwrap() {
            AllocJobHttpResponse::Success { job_alloc, need_toolchain, cert_digest } => {
                assert_eq!(cert_digest, sha256(&der_of(&kiln.cert_pem)), "the digest is of the served certificate");
                assert_eq!(format!("https://{}", job_alloc.server_id.addr()), kiln.addr);
                allocs.push((job_alloc, need_toolchain));
            }
            AllocJobHttpResponse::Fail { msg } => panic!("a free slot was refused: {msg}"),
        }
    }
    match scheduler.alloc_job(token, &gcc()).await.unwrap() {
        AllocJobHttpResponse::Fail { msg } => assert!(msg.contains("Insufficient capacity"), "{msg}"),
        other => panic!("a third job fit in two slots: {other:?}"),
    }
    assert_eq!(scheduler.scheduler_status().await.unwrap().in_progress, 2);

    // Running a job (Started → Complete) frees its slot for the next alloc.
    let (first, need_toolchain) = allocs.remove(0);
    let RunJobResult::Complete(done) = compile_in(&kiln.client(), first.job_id, &first.auth, need_toolchain).await
    else {
        panic!("job not found")
    };
    assert_eq!(done.output.code, 0, "{}", String::from_utf8_lossy(&done.output.stderr));
    assert_eq!(scheduler.scheduler_status().await.unwrap().in_progress, 1);
    let AllocJobHttpResponse::Success { need_toolchain, .. } = scheduler.alloc_job(token, &gcc()).await.unwrap() else {
        panic!("the freed slot was not given out");
    };
    assert!(!need_toolchain, "the toolchain is cached now");

    // A wrong client token: 401 and upstream's WWW-Authenticate code.
    match scheduler.alloc_job("wrong", &gcc()).await {
        Err(ClientError::Server { status: 401, description }) => {
            assert!(description.contains("token"), "{description}")
        }
        other => panic!("a wrong client token got {other:?}"),
    }
    let url = format!("{}/api/v1/scheduler/alloc_job", kiln.scheduler.as_ref().unwrap());
    let response = awc::Client::default().post(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers().get("WWW-Authenticate").unwrap(), "Bearer error=\"bearer_auth_failed\"");
    let response = awc::Client::default().post(&url).send().await.unwrap();
    assert_eq!(response.headers().get("WWW-Authenticate").unwrap(), "Bearer error=\"no_bearer_auth\"");

    // Certificates of other servers are not this scheduler's to give; JSON on request.
    let (status, _) = scheduler.get_raw("/api/v1/scheduler/server_certificate/10.0.0.1:1").await.unwrap();
    assert_eq!(status, 404);
    let status_url = format!("{}/api/v1/scheduler/status", kiln.scheduler.as_ref().unwrap());
    let mut json =
        awc::Client::default().get(&status_url).insert_header(("Accept", "application/json")).send().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&json.body().await.unwrap()).unwrap();
    assert_eq!(body["num_servers"], 1);
    let refused = awc::Client::default().get(&status_url).insert_header(("Accept", "text/html")).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 406);
}

/// What a stand-in for upstream's scheduler received.
#[derive(Default)]
struct Recorded {
    heartbeats: Vec<(String, HeartbeatServerHttpRequest)>,
    states: Vec<(JobId, JobState)>,
}

type Shared = web::Data<Mutex<Recorded>>;

fn bearer(req: &HttpRequest) -> String {
    let header = req.headers().get("Authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    header.strip_prefix("Bearer ").unwrap_or(&header).to_owned()
}

async fn heartbeat(recorded: Shared, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let heartbeat: HeartbeatServerHttpRequest = protocol::decode(&body, 1 << 20).unwrap();
    let mut recorded = recorded.lock().unwrap();
    let is_new = recorded.heartbeats.is_empty();
    recorded.heartbeats.push((bearer(&req), heartbeat));
    HttpResponse::Ok().body(protocol::encode(&HeartbeatServerResult { is_new }).unwrap())
}

async fn job_state(recorded: Shared, path: web::Path<u64>, body: web::Bytes) -> HttpResponse {
    let state: JobState = protocol::decode(&body, 64).unwrap();
    recorded.lock().unwrap().states.push((JobId(path.into_inner()), state));
    HttpResponse::Ok().body(protocol::encode(&UpdateJobStateResult::Success).unwrap())
}

fn states_of(recorded: &Mutex<Recorded>, job_id: JobId) -> Vec<JobState> {
    recorded.lock().unwrap().states.iter().filter(|(id, _)| *id == job_id).map(|(_, s)| *s).collect()
}

/// A recording stand-in for upstream's scheduler on 127.0.0.1, and the top of a
/// kiln config that points at it with token auth.
fn recording_scheduler() -> (Shared, String) {
    let recorded = web::Data::new(Mutex::new(Recorded::default()));
    let app_data = recorded.clone();
    let stand_in = HttpServer::new(move || {
        App::new()
            .app_data(app_data.clone())
            .route("/api/v1/scheduler/heartbeat_server", web::post().to(heartbeat))
            .route("/api/v1/scheduler/job_state/{job_id}", web::post().to(job_state))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let scheduler_addr = stand_in.addrs()[0];
    actix_rt::spawn(stand_in.run());
    let top = format!(
        "scheduler_url = \"http://{scheduler_addr}\"\n[scheduler_auth]\ntype = \"token\"\ntoken = \"server-secret\"\n"
    );
    (recorded, top)
}

#[actix_rt::test]
async fn upstream_link_heartbeats_and_reports_every_job_state() {
    let (recorded, top) = recording_scheduler();
    let tmp = tempfile::Builder::new().prefix("kiln-test-").tempdir().unwrap();
    let mut kiln = Kiln::start_with(&tmp.path().join("data"), &top, "builders = 1\n");
    assert!(kiln.scheduler.is_none(), "no scheduler API of its own behind upstream's");

    let (bearer, beat) = wait_for(Duration::from_secs(10), || recorded.lock().unwrap().heartbeats.first().cloned())
        .await
        .expect("kiln sent no heartbeat");
    let server_id = kiln.addr.trim_start_matches("https://").to_owned();
    assert_eq!(bearer, format!("{server_id} server-secret"), "upstream's token format: \"<public_addr> <token>\"");
    assert_eq!(beat.num_cpus, 1, "num_cpus is the builder count");
    assert_eq!(beat.jwt_key, key().as_bytes(), "the key job tokens are checked with");
    assert_eq!(beat.cert_digest, sha256(&der_of(&beat.cert_pem)));

    // The scheduler trusts the certificate from the heartbeat; so do we.
    kiln.cert_pem = beat.cert_pem.clone();
    let server = kiln.client();

    // A job whose toolchain is new: Pending → (submit) Ready → Started → Complete.
    let first = next_job_id();
    let assigned = server.assign_job(first, &token(first), &gcc()).await.unwrap();
    assert_eq!((assigned.state, assigned.need_toolchain), (JobState::Pending, true));
    assert!(matches!(compile_in(&server, first, &token(first), true).await, RunJobResult::Complete(_)));
    assert_eq!(states_of(&recorded, first), [JobState::Ready, JobState::Started, JobState::Complete]);

    // A job whose toolchain is cached starts Ready: only Started and Complete follow.
    let second = next_job_id();
    let assigned = server.assign_job(second, &token(second), &gcc()).await.unwrap();
    assert_eq!(assigned.state, JobState::Ready);
    assert!(matches!(compile_in(&server, second, &token(second), false).await, RunJobResult::Complete(_)));
    assert_eq!(states_of(&recorded, second), [JobState::Started, JobState::Complete]);

    // A client that hangs up mid-job: the scheduler still hears Complete.
    let third = next_job_id();
    server.assign_job(third, &token(third), &gcc()).await.unwrap();
    let sleeper = RunJobHttpRequest { command: command("/bin/sleep", &["60"], "/"), outputs: vec![] };
    let gone = tokio::time::timeout(Duration::from_secs(2), server.run_job(third, &token(third), &sleeper, &[])).await;
    assert!(gone.is_err(), "the sleep job should still be running");
    drop(server);
    let complete =
        wait_for(Duration::from_secs(20), || states_of(&recorded, third).contains(&JobState::Complete).then_some(()))
            .await;
    assert!(complete.is_some(), "no Complete after a hang-up: {:?}", states_of(&recorded, third));

    // A run_job refused before its job starts still ends the job at the scheduler,
    // in the only order it takes: a Pending job, and a Ready one.
    let garbage = bytes::Bytes::from_static(b"\x05\x00\x00\x00not bincode");
    let server = kiln.client();
    let pending = next_job_id();
    let other = kiln::protocol::Toolchain { archive_id: "0".repeat(64) };
    assert!(server.assign_job(pending, &token(pending), &other).await.unwrap().need_toolchain);
    let ready = next_job_id();
    assert!(!server.assign_job(ready, &token(ready), &gcc()).await.unwrap().need_toolchain);
    for job_id in [pending, ready] {
        let path = protocol::Endpoint::RunJob.path(job_id);
        let (status, _) = server.post_raw(&path, Some(&token(job_id)), garbage.clone()).await.unwrap();
        assert_eq!(status, 400);
    }
    assert_eq!(states_of(&recorded, pending), [JobState::Ready, JobState::Started, JobState::Complete]);
    assert_eq!(states_of(&recorded, ready), [JobState::Started, JobState::Complete]);

    let status = kiln.status().await;
    assert!(status.snapshot.scheduler_link.as_ref().is_some_and(|link| link.connected), "{status:?}");

    // A restart is a new server to the scheduler: a fresh nonce.
    let data_dir = kiln.data_dir.clone();
    kiln.kill9();
    let _restarted = Kiln::start_with(&data_dir, &top, "builders = 1\n");
    let nonces = wait_for(Duration::from_secs(10), || {
        let recorded = recorded.lock().unwrap();
        let last = &recorded.heartbeats.last()?.1;
        (last.server_nonce != beat.server_nonce).then_some(last.server_nonce)
    })
    .await;
    assert!(nonces.is_some(), "the restarted kiln sent the old nonce");
}

/// A scheduler that takes heartbeats but never answers job-state reports until
/// released: kiln must not hold a job up waiting for it.
#[actix_rt::test]
async fn a_scheduler_that_does_not_answer_job_states_does_not_hold_jobs_up() {
    let released = web::Data::new(tokio::sync::Notify::new());
    let recorded = web::Data::new(Mutex::new(Recorded::default()));
    let (app_released, app_recorded) = (released.clone(), recorded.clone());
    let stand_in = HttpServer::new(move || {
        App::new()
            .app_data(app_released.clone())
            .app_data(app_recorded.clone())
            .route("/api/v1/scheduler/heartbeat_server", web::post().to(heartbeat))
            .route(
                "/api/v1/scheduler/job_state/{job_id}",
                web::post().to(|released: web::Data<tokio::sync::Notify>| async move {
                    released.notified().await;
                    HttpResponse::Ok().body(protocol::encode(&UpdateJobStateResult::Success).unwrap())
                }),
            )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let scheduler_addr = stand_in.addrs()[0];
    actix_rt::spawn(stand_in.run());

    let top = format!(
        "scheduler_url = \"http://{scheduler_addr}\"\n[scheduler_auth]\ntype = \"token\"\ntoken = \"server-secret\"\n"
    );
    let mut kiln = Kiln::start_full(&top, "builders = 1\n");
    let beat = wait_for(Duration::from_secs(10), || recorded.lock().unwrap().heartbeats.first().cloned())
        .await
        .expect("kiln sent no heartbeat")
        .1;
    kiln.cert_pem = beat.cert_pem.clone();
    let server = kiln.client();
    let job_id = next_job_id();
    let assigned = server.assign_job(job_id, &token(job_id), &gcc()).await.unwrap();
    // Every report (Ready, Started, Complete) hangs at the scheduler until released,
    // which happens only after the job's answer. kiln waits at most 2 s per report
    // (REPORT_WAIT); waiting for each until the link's own 10 s request timeout took
    // 35 s here. 25 s is a liveness bound with room for a loaded machine.
    let answer = tokio::time::timeout(
        Duration::from_secs(25),
        compile_in(&server, job_id, &token(job_id), assigned.need_toolchain),
    )
    .await
    .expect("the job waited for the scheduler");
    assert!(matches!(answer, RunJobResult::Complete(ref done) if done.output.code == 0), "{answer:?}");
    released.notify_waiters();
}

/// Issue 14: a run_job refused before its job starts (here a malformed body) ends
/// the job at once: its slot is free for the next alloc_job, not held until the
/// unclaimed-job timeout.
#[actix_rt::test]
async fn refused_run_jobs_free_their_slots_at_once() {
    let kiln = Kiln::start("builders = 1\n");
    let scheduler = kiln.scheduler_client();
    let server = kiln.client();
    let token = kiln::config::INSECURE_CLIENT_TOKEN;
    // Three rounds of filling both slots with jobs whose run_job is refused.
    for round in 0..3 {
        for slot in 0..2 {
            let job_alloc = match scheduler.alloc_job(token, &gcc()).await.unwrap() {
                AllocJobHttpResponse::Success { job_alloc, .. } => job_alloc,
                AllocJobHttpResponse::Fail { msg } => panic!("round {round}, slot {slot}: {msg}"),
            };
            let path = protocol::Endpoint::RunJob.path(job_alloc.job_id);
            let garbage = bytes::Bytes::from_static(b"\x05\x00\x00\x00not bincode");
            let (status, _) = server.post_raw(&path, Some(&job_alloc.auth), garbage).await.unwrap();
            assert_eq!(status, 400, "a malformed run_job body");
        }
        assert_eq!(scheduler.scheduler_status().await.unwrap().in_progress, 0, "round {round}");
    }
    let status = kiln.status().await;
    assert_eq!(status.assigned_jobs, 0, "{status:?}");
}

/// Issue 14: alloc_job calls whose client never uploads the toolchain (made-up
/// toolchain ids) held every slot for upstream's 300 s; kiln's own scheduler
/// frees them after `unclaimed_secs`.
#[actix_rt::test]
async fn jobs_nobody_claims_free_their_slots_in_seconds() {
    let kiln = Kiln::start("builders = 1\n[kiln.scheduler]\nunclaimed_secs = 2\n");
    let scheduler = kiln.scheduler_client();
    let token = kiln::config::INSECURE_CLIENT_TOKEN;
    let made_up = |n: usize| Toolchain { archive_id: format!("{n:064x}") };
    let gcc = gcc(); // packed before the clock starts
    for n in 0..2 {
        let AllocJobHttpResponse::Success { need_toolchain: true, .. } =
            scheduler.alloc_job(token, &made_up(n)).await.unwrap()
        else {
            panic!("a free slot was refused, or a made-up toolchain was found");
        };
    }
    assert!(matches!(scheduler.alloc_job(token, &gcc).await.unwrap(), AllocJobHttpResponse::Fail { .. }));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match scheduler.alloc_job(token, &gcc).await.unwrap() {
            AllocJobHttpResponse::Success { .. } => break,
            AllocJobHttpResponse::Fail { msg } => {
                assert!(std::time::Instant::now() < deadline, "slots still held after 10 s: {msg}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    assert_eq!(kiln.status().await.assigned_jobs, 1, "the unclaimed jobs are forgotten by the server too");
}

/// Issue 25: upstream's scheduler cannot hear that a server leaves, and every
/// assign_job a draining server refuses is a client's compile done locally. With
/// the default `drain_mode = "handoff"`, SIGTERM makes kiln send one more
/// heartbeat, with a new nonce (the scheduler then sees a restarted server with
/// no jobs, which it gives `cpus + 1 + cpus/8` at most: 3 for 2 builders); it
/// takes and runs those 3 jobs, reports no state for them (a `Complete` would free
/// a slot again), sends no more heartbeats, and exits 0 once they are answered.
/// (scripts/scale_in.sh does this with the real scheduler and client.)
#[actix_rt::test]
async fn a_draining_kiln_hands_off_to_the_scheduler_and_runs_its_last_jobs() {
    let (recorded, top) = recording_scheduler();
    let tmp = tempfile::Builder::new().prefix("kiln-test-").tempdir().unwrap();
    let mut kiln = Kiln::start_with(&tmp.path().join("data"), &top, "builders = 2\n");
    let (_, beat) = wait_for(Duration::from_secs(10), || recorded.lock().unwrap().heartbeats.first().cloned())
        .await
        .expect("kiln sent no heartbeat");
    kiln.cert_pem = beat.cert_pem.clone();
    let server = kiln.client();
    let first = next_job_id();
    server.assign_job(first, &token(first), &gcc()).await.unwrap();
    assert!(matches!(compile_in(&server, first, &token(first), true).await, RunJobResult::Complete(_)));
    // One job in flight at the SIGTERM, as in a build.
    let running = next_job_id();
    server.assign_job(running, &token(running), &gcc()).await.unwrap();
    let sleeper = RunJobHttpRequest { command: command("/bin/sleep", &["1"], "/"), outputs: vec![] };
    let in_flight = {
        let server = kiln.client();
        actix_rt::spawn(async move { server.run_job(running, &token(running), &sleeper, &[]).await })
    };
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let states_before = recorded.lock().unwrap().states.len();

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(kiln.pid()), nix::sys::signal::Signal::SIGTERM).unwrap();
    let handoff = wait_for(Duration::from_secs(10), || recorded.lock().unwrap().heartbeats.get(1).cloned())
        .await
        .expect("no handoff heartbeat after SIGTERM");
    assert_ne!(handoff.1.server_nonce, beat.server_nonce, "a new nonce: the scheduler registers the server afresh");
    assert_eq!((handoff.1.num_cpus, handoff.1.jwt_key), (beat.num_cpus, beat.jwt_key.clone()));
    assert_eq!(handoff.1.cert_pem, beat.cert_pem);

    // The scheduler's last round here (2 CPUs: 3 jobs) is taken and run, not refused.
    for _ in 0..3 {
        let job_id = next_job_id();
        let assigned = server.assign_job(job_id, &token(job_id), &gcc()).await;
        assert!(assigned.is_ok(), "a job the scheduler placed after the handoff was refused: {assigned:?}");
        assert!(matches!(compile_in(&server, job_id, &token(job_id), false).await, RunJobResult::Complete(_)));
    }
    assert!(matches!(in_flight.await.unwrap(), Ok(RunJobResult::Complete(_))));
    let exited = wait_for(Duration::from_secs(20), || kiln.child.try_wait().unwrap()).await;
    let exited = exited.expect("kiln did not exit once the scheduler's last jobs were answered");
    assert!(exited.success(), "kiln exited with {exited:?}");
    let recorded = recorded.lock().unwrap();
    assert_eq!(recorded.heartbeats.len(), 2, "no heartbeat after the handoff");
    assert_eq!(recorded.states.len(), states_before, "no job state reported after the handoff: {:?}", recorded.states);
}
