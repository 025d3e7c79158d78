//! The cold-toolchain path and sandbox preparation, each against a baseline run in
//! the same process (figures read as ratios on a noisy machine):
//!
//! - `toolchain_unpack`: kiln's unpack of the system gcc packed as a toolchain
//!   (~30 MB gzip, ~100 MB unpacked: the "100 MB class") against `tar xzf` of the
//!   same archive. kiln resolves every path inside the root (openat2) and enforces
//!   limits; the target is ≤ 1.5× tar.
//! - `sandbox_prepare` (root only): preparing one overlay sandbox (dirs, a thread
//!   in its own mount namespace, the overlay mount, bubblewrap started and waiting)
//!   and giving it up, against spawning `/bin/true`. This is the work kiln moves off
//!   the job's path by preparing sandboxes ahead.
//!
//! `cargo bench --bench toolchain`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kiln::archive::{extract_tar, ExtractLimits};
use kiln::package::{package_toolchain, PackageOptions};
use kiln::sandbox::cgroup::{CgroupLimits, CgroupOptions, JobCgroups};
use kiln::sandbox::overlay::{
    claim_ids, install_exec_shim, IdRange, JobSeccomp, MountTemplate, OverlayBackend, OverlayConfinement, CLAIMS_DIR,
};
use kiln::sandbox::{SandboxBackend, SandboxLimits, ToolchainRoot};

fn gcc_archive(dir: &Path) -> PathBuf {
    let path = dir.join("gcc.tar.gz");
    package_toolchain(&PackageOptions { compiler: "/usr/bin/gcc".into(), extra: vec![] }, &path).unwrap();
    path
}

fn limits() -> ExtractLimits {
    ExtractLimits { max_entries: 500_000, max_bytes: 8 << 30, max_depth: 128 }
}

fn toolchain_unpack(c: &mut Criterion) {
    let scratch = tempfile::tempdir().unwrap();
    let archive = gcc_archive(scratch.path());
    let mut group = c.benchmark_group("toolchain_unpack");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("baseline: tar xzf", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(scratch.path()).unwrap(),
            |dir| {
                let status = Command::new("tar").arg("xzf").arg(&archive).arg("-C").arg(dir.path()).status().unwrap();
                assert!(status.success());
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("kiln unpack (gunzip + extract_tar)", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(scratch.path()).unwrap(),
            |dir| {
                let file = std::fs::File::open(&archive).unwrap();
                let gunzip = flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file));
                extract_tar(gunzip, dir.path(), &limits()).unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn sandbox_prepare(c: &mut Criterion) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("sandbox_prepare: skipped, needs root (mounts and namespaces)");
        return;
    }
    let Some(bwrap) = kiln::program::find_program(Path::new("bwrap")) else {
        eprintln!("sandbox_prepare: skipped, no bubblewrap");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let file = std::fs::File::open(gcc_archive(scratch.path())).unwrap();
    extract_tar(flate2::read::MultiGzDecoder::new(file), &root, &limits()).unwrap();
    let system = actix_rt::System::new();
    let shim = scratch.path().join("kiln-exec");
    system.block_on(install_exec_shim(&shim)).unwrap();
    let sandbox_limits = SandboxLimits {
        inputs: limits(),
        max_output_bytes: 1 << 20,
        max_stdio_bytes: 1 << 20,
        max_process_memory_bytes: 8 << 30,
        max_memory_bytes: 8 << 30,
        max_disk_bytes: 4 << 30,
        max_pids: 1024,
    };
    // Confined as `kiln serve` confines jobs: its own uid, seccomp, a cgroup.
    let cgroup_limits = CgroupLimits { max_pids: 1024, max_memory_bytes: 8 << 30, max_cpus: 0 };
    let cgroups = JobCgroups::detect(cgroup_limits, &CgroupOptions::default())
        .map_err(|e| eprintln!("sandbox_prepare: no job cgroups ({e}); measuring without"))
        .ok()
        .map(Arc::new);
    // KILN_BENCH_MOUNT_TEMPLATE=0 measures sandboxes copied from kiln's whole mount table.
    let mounts = match std::env::var("KILN_BENCH_MOUNT_TEMPLATE").as_deref() {
        Ok("0") => None,
        _ => Some(MountTemplate::make(&[scratch.path().to_owned(), bwrap.clone()]).unwrap()),
    };
    let confinement = OverlayConfinement {
        bwrap,
        shim,
        ids: claim_ids(Path::new(CLAIMS_DIR), IdRange { base: 1_500_000_000, count: 65_536 }, "kiln bench").unwrap(),
        seccomp: JobSeccomp::compile().unwrap(),
        cgroups,
        mounts,
    };
    let backend = OverlayBackend::new(scratch.path().join("sandboxes"), confinement, sandbox_limits);
    let toolchain = ToolchainRoot { archive_id: "bench".into(), path: root, lease: Arc::new(()) };

    let mut group = c.benchmark_group("sandbox_prepare");
    group.sample_size(30);
    group.bench_function("baseline: spawn /bin/true", |b| {
        b.iter(|| assert!(Command::new("/bin/true").status().unwrap().success()))
    });
    group.bench_function("overlay: prepare + discard", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                let sandbox = system.block_on(backend.prepare(toolchain.clone())).unwrap();
                drop(sandbox.discard());
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, toolchain_unpack, sandbox_prepare);
criterion_main!(benches);
