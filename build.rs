//! Builds kiln's static C helpers, which run inside sandboxes where neither the
//! host's nor the toolchain's loader and libc can be trusted to be there. Each is
//! embedded into kiln with `include_bytes!`. Needs a C compiler and a static libc
//! (Debian: `gcc` and `libc6-dev`).

use std::path::PathBuf;
use std::process::Command;

/// (source, output name in OUT_DIR)
const HELPERS: &[(&str, &str)] = &[
    // The overlay sandbox's exec shim: waits for the job's command, then execs it.
    ("src/sandbox/overlay/exec_shim.c", "kiln-exec"),
    // pid 1 of every docker sandbox container, and its reset tool.
    ("src/sandbox/docker/kiln_init.c", "kiln-init"),
];

fn main() {
    println!("cargo:rerun-if-env-changed=CC");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    for (source, name) in HELPERS {
        println!("cargo:rerun-if-changed={source}");
        let status = Command::new(&cc)
            .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(out_dir.join(name))
            .arg(source)
            .status()
            .unwrap_or_else(|e| panic!("running the C compiler `{cc}` for {source}: {e} (install gcc and libc6-dev)"));
        assert!(status.success(), "compiling {source} with `{cc} -static` failed (install gcc and libc6-dev)");
    }
}
