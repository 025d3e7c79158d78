//! The docker backend end to end: a real kiln process, a real Docker daemon (Engine
//! API through bollard), the system gcc packed as a toolchain.
//!
//! Without a daemon these tests skip loudly, unless `KILN_REQUIRE_DOCKER` is set (CI
//! sets it), in which case they fail.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kiln::protocol::JobComplete;

const OUTPUT_LIMIT: u64 = 64 << 20;

/// The docker backend with a job user that is not root and a small pool.
const DOCKER_CONFIG: &str = "[sandbox]\nbackend = \"docker\"\n[sandbox.docker]\njob_uid = 1000\njob_gid = 1000\n";

/// Whether a daemon answers; panics if none does and `KILN_REQUIRE_DOCKER` is set.
fn docker_ready() -> bool {
    match kiln::sandbox::docker::check_daemon(&Default::default()) {
        Ok(_) => true,
        Err(e) if std::env::var_os("KILN_REQUIRE_DOCKER").is_some() => {
            panic!("KILN_REQUIRE_DOCKER is set but no docker daemon answers: {e}")
        }
        Err(e) => {
            eprintln!("\n!!!!! SKIPPING docker test: no docker daemon answers ({e}); set KILN_REQUIRE_DOCKER=1 to fail instead !!!!!\n");
            false
        }
    }
}

fn output_bytes(done: &JobComplete, name: &str) -> Vec<u8> {
    let (_, data) =
        done.outputs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output {name}: {done:?}"));
    data.decompress(OUTPUT_LIMIT).unwrap()
}

fn stderr(done: &JobComplete) -> String {
    String::from_utf8_lossy(&done.output.stderr).into_owned()
}

fn stdout(done: &JobComplete) -> String {
    String::from_utf8_lossy(&done.output.stdout).into_owned()
}

async fn sh(kiln: &Kiln, script: &str, project: &CProject) -> JobComplete {
    run(&kiln.client(), gcc_toolchain(), command("/bin/sh", &["-c", script], project.cwd()), &[], project.inputs())
        .await
}

#[actix_rt::test]
async fn compiles_byte_identical_to_local_gcc() {
    if !docker_ready() {
        return;
    }
    let kiln = Kiln::start(DOCKER_CONFIG);
    let client = kiln.client();
    let tc = gcc_toolchain();
    let project = CProject::new();
    let cwd = project.cwd();

    let started = Instant::now();
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
    eprintln!("first docker job (image import included): {:?}", started.elapsed());
    let started = Instant::now();
    let util_done = run(
        &client,
        tc,
        command("/usr/bin/gcc", &["-c", "-O2", "-g", "util.c", "-o", &util_out], cwd),
        &[&util_out],
        project.inputs(),
    )
    .await;
    assert_eq!(util_done.output.code, 0, "{}", stderr(&util_done));
    eprintln!("second docker job (warm container): {:?}", started.elapsed());

    std::fs::create_dir_all(project.path().join("local")).unwrap();
    project.local_gcc(&["-c", "-O2", "-g", "main.c", "-o", "local/main.o"]);
    project.local_gcc(&["-c", "-O2", "-g", "util.c", "-o", "local/util.o"]);
    assert_eq!(output_bytes(&main_done, "obj/main.o"), std::fs::read(project.path().join("local/main.o")).unwrap());
    assert_eq!(output_bytes(&util_done, &util_out), std::fs::read(project.path().join("local/util.o")).unwrap());

    // A compile error is the job's result, and missing outputs are left out.
    std::fs::write(project.path().join("broken.c"), "int main(void) { return undeclared_thing; }\n").unwrap();
    let mut inputs = kiln::client::InputsBuilder::new();
    inputs.add_host_file(project.path().join("broken.c")).unwrap();
    let done = run(
        &client,
        tc,
        command("/usr/bin/gcc", &["-c", "broken.c", "-o", "broken.o"], cwd),
        &["broken.o"],
        inputs.finish().unwrap(),
    )
    .await;
    assert_ne!(done.output.code, 0);
    assert!(stderr(&done).contains("undeclared_thing"), "{}", stderr(&done));
    assert!(done.outputs.is_empty());
}
