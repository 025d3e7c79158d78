//! The CPU work kiln does per job outside the compiler: decoding a run_job body and
//! unpacking its inputs into a sandbox directory, against the baseline of copying
//! the same bytes (so figures read as ratios on a noisy machine).

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kiln::archive::{extract_tar, ExtractLimits};
use kiln::protocol::{frame_run_job_body, split_run_job_body, CompileCommand, RunJobHttpRequest};

/// A request shaped like sccache's for a C file: ~40 arguments, ~20 env vars.
fn request() -> RunJobHttpRequest {
    RunJobHttpRequest {
        command: CompileCommand {
            executable: "/usr/bin/gcc".into(),
            arguments: (0..40).map(|i| format!("-DKILN_BENCH_FLAG_{i}=1")).collect(),
            env_vars: (0..20).map(|i| (format!("VAR_{i}"), "/usr/local/bin:/usr/bin:/bin".into())).collect(),
            cwd: "/home/dev/src/project/build".into(),
        },
        outputs: vec!["/home/dev/src/project/build/obj/module.o".into()],
    }
}

/// An inputs tar of `files` sources of `size` bytes each.
fn inputs_tar(files: usize, size: usize) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let body = vec![b'x'; size];
    for i in 0..files {
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, format!("home/dev/src/project/src/dir{}/file{i}.c", i % 16), &body[..]).unwrap();
    }
    tar.into_inner().unwrap()
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn codec(c: &mut Criterion) {
    let inputs = zlib(&inputs_tar(1, 64 << 10));
    let body = frame_run_job_body(&request(), &inputs).unwrap();
    let mut group = c.benchmark_group("run_job_body");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("baseline: copy", |b| b.iter(|| black_box(body.clone())));
    group.bench_function("frame", |b| b.iter(|| frame_run_job_body(black_box(&request()), &inputs).unwrap()));
    group.bench_function("split", |b| b.iter(|| split_run_job_body(black_box(&body)).unwrap().0));
    group.finish();
}

fn extract(c: &mut Criterion) {
    let limits = ExtractLimits { max_entries: 100_000, max_bytes: 1 << 30, max_depth: 64 };
    let mut group = c.benchmark_group("inputs_unpack");
    for (files, size) in [(1usize, 256usize << 10), (200, 4 << 10)] {
        let tar = inputs_tar(files, size);
        group.throughput(Throughput::Bytes(tar.len() as u64));
        let name = format!("{files}x{}KiB", size >> 10);
        group.bench_function(format!("baseline: write files {name}"), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dir| {
                    let mut archive = tar::Archive::new(&tar[..]);
                    for entry in archive.entries().unwrap() {
                        let mut entry = entry.unwrap();
                        let path = dir.path().join(entry.path().unwrap());
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                        std::io::copy(&mut entry, &mut std::fs::File::create(path).unwrap()).unwrap();
                    }
                    dir
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function(format!("extract_tar {name}"), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dir| {
                    extract_tar(&tar[..], dir.path(), &limits).unwrap();
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, codec, extract);
criterion_main!(benches);
