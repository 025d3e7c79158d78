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
