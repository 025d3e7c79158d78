//! End to end, as a client sees kiln: real HTTP on 127.0.0.1, the system gcc packed
//! as a toolchain, real bubblewrap and overlayfs, real C compiled and linked.

mod common;

use std::process::Command;

use common::*;

#[actix_rt::test]
async fn compiles_a_multi_file_program_byte_identical_to_local_gcc() {
    let kiln = Kiln::start("");
    let client = kiln.client();
    let tc = gcc_toolchain();
    let project = CProject::new();
    let cwd = project.cwd();

    // One output relative to the cwd, one absolute; both in directories that do not
    // exist in the inputs.
    let util_out = format!("{cwd}/obj/deep/util.o");
    let main_done = run(
        &client,
        tc,
        command("/usr/bin/gcc", &["-c", "-O2", "-g", "main.c", "-o", "obj/main.o"], cwd),
        &["obj/main.o"],
        project.inputs(),
    )
    .await;
    assert_eq!(main_done.output.code, 0, "{}", stderr(&main_done));
    let util_done = run(
        &client,
        tc,
        command("/usr/bin/gcc", &["-c", "-O2", "-g", "util.c", "-o", &util_out], cwd),
        &[&util_out],
        project.inputs(),
    )
    .await;
    assert_eq!(util_done.output.code, 0, "{}", stderr(&util_done));

    std::fs::create_dir_all(project.path().join("local")).unwrap();
    project.local_gcc(&["-c", "-O2", "-g", "main.c", "-o", "local/main.o"]);
    project.local_gcc(&["-c", "-O2", "-g", "util.c", "-o", "local/util.o"]);
    let remote_main = output_bytes(&main_done, "obj/main.o");
    let remote_util = output_bytes(&util_done, &util_out);
    assert_eq!(
        remote_main,
        std::fs::read(project.path().join("local/main.o")).unwrap(),
        "main.o differs from local gcc"
    );
    assert_eq!(
        remote_util,
        std::fs::read(project.path().join("local/util.o")).unwrap(),
        "util.o differs from local gcc"
    );

    // Link what kiln compiled and run it.
    std::fs::create_dir_all(project.path().join("remote")).unwrap();
    std::fs::write(project.path().join("remote/main.o"), &remote_main).unwrap();
    std::fs::write(project.path().join("remote/util.o"), &remote_util).unwrap();
    project.local_gcc(&["remote/main.o", "remote/util.o", "-o", "prog"]);
    let out = Command::new(project.path().join("prog")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sum=42\n");
}

#[actix_rt::test]
async fn a_compile_error_returns_its_code_and_stderr_and_the_next_job_succeeds() {
    let kiln = Kiln::start("");
    let client = kiln.client();
    let tc = gcc_toolchain();
    let project = CProject::new();
    std::fs::write(project.path().join("broken.c"), "int main(void) { return undeclared_thing; }\n").unwrap();
    let mut inputs = kiln::client::InputsBuilder::new();
    inputs.add_host_file(project.path().join("broken.c")).unwrap();
    let done = run(
        &client,
        tc,
        command("/usr/bin/gcc", &["-c", "broken.c", "-o", "broken.o"], project.cwd()),
        &["broken.o"],
        inputs.finish().unwrap(),
    )
    .await;
    assert_ne!(done.output.code, 0);
    assert!(stderr(&done).contains("undeclared_thing"), "stderr: {}", stderr(&done));
    assert!(done.outputs.is_empty(), "a failed compile has no object");

    let done = run(
        &client,
        tc,
        command("/usr/bin/gcc", &["-c", "util.c", "-o", "util.o"], project.cwd()),
        &["util.o"],
        project.inputs(),
    )
    .await;
    assert_eq!(done.output.code, 0, "{}", stderr(&done));
    assert!(!output_bytes(&done, "util.o").is_empty());
}

#[actix_rt::test]
async fn twenty_concurrent_jobs_over_two_toolchains_unpack_each_once() {
    let kiln = Kiln::start("");
    compile_twenty_over_two_toolchains(&kiln).await;

    let status = kiln.status().await;
    assert_eq!(status.snapshot.counters.unpacks, 2, "each toolchain unpacked exactly once: {status:?}");
    assert_eq!(status.snapshot.counters.jobs_completed, 20, "{status:?}");
    assert_eq!(status.snapshot.counters.jobs_failed, 0, "{status:?}");
}

#[actix_rt::test]
async fn jobs_see_only_their_own_files_and_no_network() {
    let kiln = Kiln::start("");
    let client = kiln.client();
    let tc = gcc_toolchain();
    let project = CProject::new();
    // A file a job writes must not be there for the next job.
    let script = "echo left-behind > /tmp/marker; cat /proc/net/dev";
    let done = run(&client, tc, command("/bin/sh", &["-c", script], project.cwd()), &[], project.inputs()).await;
    assert_eq!(done.output.code, 0, "{}", stderr(&done));
    // Only the loopback device exists in the job's network namespace.
    let stdout = String::from_utf8_lossy(&done.output.stdout).into_owned();
    let devices: Vec<&str> = stdout.lines().filter_map(|l| l.split_once(':')).map(|(dev, _)| dev.trim()).collect();
    assert_eq!(devices, ["lo"], "{stdout}");
    let done =
        run(&client, tc, command("/bin/sh", &["-c", "ls /tmp/marker"], project.cwd()), &[], project.inputs()).await;
    assert_ne!(done.output.code, 0, "a later job saw an earlier job's file");
}

/// Issue 16: two kilns of a farm share a toolchain store (a directory both mount).
/// The client uploads the toolchain to the first; it is published to the store, and
/// the second answers assign_job with need_toolchain = false, fetches it from the
/// store and runs the job, byte-identical. A store entry that is not the archive it
/// names (corrupt, or planted by someone who can write the store) is never used: the
/// job it was promised to fails with a clear error, the entry is removed, and the
/// next job asks its client for the toolchain.
#[actix_rt::test]
async fn a_farm_shares_each_toolchain_through_its_store() {
    use kiln::protocol::{AssignJobResult, RunJobHttpRequest, Toolchain};

    let store = tempfile::tempdir().unwrap();
    let config = format!("[kiln.toolchains]\nstore = \"{}\"\n", store.path().display());
    let (first, second) = (Kiln::start(&config), Kiln::start(&config));
    let project = CProject::new();
    let compile = || command("/usr/bin/gcc", &["-c", "-O2", "main.c", "-o", "main.o"], project.cwd());
    let tc = gcc_toolchain();

    let uploaded = run(&first.client(), tc, compile(), &["main.o"], project.inputs()).await;
    assert_eq!(uploaded.output.code, 0, "{}", stderr(&uploaded));
    let published = store.path().join(&tc.archive_id);
    let found = wait_for(std::time::Duration::from_secs(30), || published.is_file().then_some(())).await;
    assert!(found.is_some(), "the uploaded toolchain was not published to the store");

    let client = second.client();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: tc.archive_id.clone() };
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(!need_toolchain, "the second kiln asked the client for a toolchain the store holds");
    let request = RunJobHttpRequest { command: compile(), outputs: vec!["main.o".into()] };
    let fetched = match client.run_job(job_id, &token(job_id), &request, &project.inputs()).await.unwrap() {
        kiln::protocol::RunJobResult::Complete(done) => done,
        other => panic!("{other:?}"),
    };
    assert_eq!(fetched.output.code, 0, "{}", stderr(&fetched));
    assert_eq!(output_bytes(&fetched, "main.o"), output_bytes(&uploaded, "main.o"));
    let (a, b) = (first.status().await.snapshot.counters, second.status().await.snapshot.counters);
    assert_eq!((a.toolchain_uploads, a.toolchain_store_publishes), (1, 1), "{a:?}");
    assert_eq!((b.toolchain_uploads, b.toolchain_store_fetches), (0, 1), "{b:?}");
    assert!(b.toolchain_store_fetched_bytes > 0, "{b:?}");

    // A store entry that is not what its name says.
    let planted = other_toolchain();
    std::fs::write(store.path().join(&planted.archive_id), b"\x1f\x8b not the toolchain").unwrap();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: planted.archive_id.clone() };
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(!need_toolchain, "the store offered the planted entry");
    let refused = client.run_job(job_id, &token(job_id), &request, &project.inputs()).await;
    let error = format!("{refused:?}");
    assert!(error.contains("502") && error.contains("corrupt"), "{error}");
    assert!(!store.path().join(&planted.archive_id).exists(), "the corrupt entry stayed in the store");
    let job_id = next_job_id();
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(need_toolchain, "after a corrupt entry the client is asked again");
    let counters = second.status().await.snapshot.counters;
    assert_eq!(counters.toolchain_store_failures, 1, "{counters:?}");
    assert_eq!(counters.toolchains_stored, 1, "nothing unverified was stored: {counters:?}");
}
