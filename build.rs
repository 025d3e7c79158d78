//! Builds `kiln-init`, the static helper every docker sandbox container runs as its
//! long-lived process (see `src/sandbox/docker/kiln_init.c`). It is embedded into kiln
//! with `include_bytes!` and written into each toolchain image, so no image has to be
//! pulled. Needs a C compiler and a static libc (Debian: `gcc` and `libc6-dev`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/sandbox/docker/kiln_init.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("kiln-init");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-static", "-Os", "-s", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}` for {source}: {e} (install gcc and libc6-dev)"));
    assert!(status.success(), "compiling {source} with `{cc} -static` failed (install gcc and libc6-dev)");
}
