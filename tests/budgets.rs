//! Disk budgets (issue 27, finding 2): toolchains of empty files cost inodes, not
//! bytes, and the data dir is often the host's root file system. Each test makes
//! the attack for real and reads back the host state it aimed at: the inodes
//! actually present under `<data_dir>/roots` (a walk of the tree), and the free
//! inodes and bytes of the data dir's file system (`statvfs`). Run as root, as
//! production runs: the reserve test mounts a small tmpfs of its own
//! (`/tmp/kiln-budgets-<pid>-<n>`, `nr_inodes=20000`) and unmounts it afterwards.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use kiln::client::ClientError;
use kiln::protocol::{AssignJobResult, JobComplete, RunJobHttpRequest, RunJobResult, SubmitToolchainResult, Toolchain};

/// How long a test waits for kiln to remove what it evicted.
const SETTLE: Duration = Duration::from_secs(20);

/// A static `true`, so a toolchain needs no loader or library beside it.
fn true_program() -> &'static [u8] {
    static PROGRAM: OnceLock<Vec<u8>> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("kiln-prog-").tempdir().unwrap();
        let (src, exe) = (dir.path().join("true.c"), dir.path().join("true"));
        std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
        let status = std::process::Command::new("gcc").args(["-static", "-O1", "-o"]).arg(&exe).arg(&src).status();
        assert!(status.unwrap().success(), "gcc -static true.c");
        std::fs::read(exe).unwrap()
    })
}

/// A toolchain that runs (`/bin/true`) and holds `files` empty files, a thousand
/// per directory, whose directories the archive does not list (as the attacker's
/// did not). `tag` makes each archive, and so its id, distinct. `extra` is one
/// more file of that many zero bytes (compressed to almost nothing).
fn toolchain_of_empty_files(tag: &str, files: u32, extra: u64) -> PackedToolchain {
    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |path: &str, mode: u32, data: &mut dyn std::io::Read, size: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_path(path).unwrap();
        header.set_size(size);
        header.set_mode(mode);
        header.set_cksum();
        tar.append(&header, data).unwrap();
    };
    let program = true_program();
    append("bin/true", 0o755, &mut &program[..], program.len() as u64);
    append(&format!("tag-{tag}"), 0o644, &mut &b""[..], 0);
    for i in 0..files {
        append(&format!("junk/d{}/f{i}", i / 1000), 0o644, &mut &b""[..], 0);
    }
    if extra > 0 {
        append("zeros", 0o644, &mut std::io::Read::take(std::io::repeat(0), extra), extra);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let bytes = gz.finish().unwrap();
    PackedToolchain { archive_id: kiln::protocol::archive_id_of(&bytes), bytes: bytes.into() }
}

/// Files, directories and links under `dir` (not `dir` itself), never following a
/// link; at most ten million.
fn inodes_under(dir: &Path) -> u64 {
    let mut count = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else { continue };
        for entry in entries.flatten() {
            count += 1;
            assert!(count < 10_000_000, "runaway walk under {dir:?}");
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    count
}

/// Runs `/bin/true` with `tc`: its answer, or the error kiln answered with.
async fn run_true(kiln: &Kiln, tc: &PackedToolchain) -> Result<JobComplete, ClientError> {
    let client = kiln.client();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: tc.archive_id.clone() };
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await?;
    if need_toolchain {
        let submitted = client.submit_toolchain(job_id, &token(job_id), tc.bytes.clone()).await?;
        assert_eq!(submitted, SubmitToolchainResult::Success);
    }
    let request = RunJobHttpRequest { command: command("/bin/true", &[], "/work"), outputs: vec![] };
    match client.run_job(job_id, &token(job_id), &request, &empty_tar()).await? {
        RunJobResult::Complete(done) => Ok(done),
        RunJobResult::JobNotFound => panic!("job {job_id} not found"),
    }
}

async fn assert_runs(kiln: &Kiln, tc: &PackedToolchain) {
    let done = run_true(kiln, tc).await.unwrap_or_else(|e| panic!("the job failed: {e}"));
    assert_eq!(done.output.code, 0, "/bin/true in the toolchain: {}", stderr(&done));
}

/// Asserts `result` is kiln's 503 for the disk reserve, and returns its message.
fn assert_reserve_refusal<T: std::fmt::Debug>(result: Result<T, ClientError>, what: &str) -> String {
    match result {
        Err(ClientError::Server { status: 503, description }) => {
            assert!(description.contains("kiln.disk_reserve"), "{what}: the message names the reserve: {description}");
            description
        }
        other => panic!("{what} was not refused for the disk reserve: {other:?}"),
    }
}

/// Toolchains of 20,000 empty files each (~600 KB uploads) under an inode budget
/// of 50,000: before, roots were bounded by bytes only and every one stayed (five
/// uploads, 100,000 inodes on disk). Now the inodes under `roots/`, counted on
/// disk, stay within the budget; the jobs all ran.
#[actix_rt::test]
async fn unpacked_roots_are_bounded_by_inodes() {
    const BUDGET: u64 = 50_000;
    let kiln = Kiln::start(
        "[kiln.toolchains]\nunpacked_inodes = 50000\nmax_entries = 30000\n\
         [kiln.sandbox]\nwarm_per_toolchain = 0\n",
    );
    let roots = kiln.data_dir.join("roots");
    let mut peak = 0;
    for n in 0..5 {
        let tc = toolchain_of_empty_files(&format!("budget-{n}"), 20_000, 0);
        assert!(tc.bytes.len() < 1 << 20, "a cheap upload: {} bytes", tc.bytes.len());
        assert_runs(&kiln, &tc).await;
        // Evicted roots are removed in the background: wait for the count to settle.
        let settled = wait_for(SETTLE, || Some(inodes_under(&roots)).filter(|&n| n <= BUDGET)).await;
        let on_disk = inodes_under(&roots);
        peak = peak.max(on_disk);
        assert!(settled.is_some(), "after {} toolchains, {on_disk} inodes under roots/, budget {BUDGET}", n + 1);
    }
    let status = kiln.status().await;
    let view = status.snapshot.roots.expect("the status shows the roots");
    assert_eq!(view.budget_inodes, Some(BUDGET));
    assert!(view.used_inodes <= BUDGET, "{view:?}");
    // Once the last eviction's removal is done, the index counts what is on disk.
    let exact = wait_for(SETTLE, || Some(inodes_under(&roots)).filter(|&n| n == view.used_inodes)).await;
    assert!(exact.is_some(), "index {} inodes, on disk {}", view.used_inodes, inodes_under(&roots));
    assert!(status.snapshot.counters.roots_evicted >= 3, "{:?}", status.snapshot.counters);
    let (_, metrics) = kiln.client().get_raw("/metrics").await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("kiln_unpacked_budget_inodes 50000"), "{metrics}");
    eprintln!("peak inodes under roots/: {peak} (budget {BUDGET})");
}

/// Waits (at most 30 s) until `fs`'s free inodes stop changing for half a second:
/// a refused unpack also evicts idle roots, whose removal runs in the background.
async fn settle(fs: &SmallFs) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = fs.space().free_inodes;
    while std::time::Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        let now = fs.space().free_inodes;
        if now == last {
            return;
        }
        last = now;
    }
    panic!("the free inodes of {:?} never settled", fs.path);
}

/// Fills `fs` from outside kiln (as the rest of the host would) until `free_inodes`
/// are left, in `dir`.
fn fill_inodes(fs: &SmallFs, dir: &Path, free_inodes: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let to_make = fs.space().free_inodes.saturating_sub(free_inodes);
    for i in 0..to_make.min(1_000_000) {
        std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
    }
}

/// The data dir on a tmpfs of 20,000 inodes and 256 MiB with a reserve of 10 %
/// (2,000 inodes, 25.6 MiB). Before, kiln unpacked and stored whatever fit: a
/// toolchain of empty files took the file system 1,000 inodes below the reserve,
/// an upload went on with the disk already below it. Now each is refused with a
/// 503 naming `kiln.disk_reserve`, `statvfs` shows nothing of them taken, and
/// jobs run again once the host frees space.
#[actix_rt::test]
async fn uploads_and_unpacks_leave_the_data_dirs_reserve() {
    let fs = SmallFs::mount("size=256m,nr_inodes=20000,mode=0700");
    let kiln = Kiln::start_on(
        &fs.path.join("data"),
        "[kiln.disk_reserve]\npercent = 10\nmin_free_bytes = 0\nmin_free_inodes = 0\n\
         [kiln.sandbox]\nwarm_per_toolchain = 0\n",
    );
    // 10 % of the file system, rounded up, as kiln.disk_reserve.percent = 10 says.
    let space = fs.space();
    let (reserved_bytes, reserved_inodes) = (space.total_bytes.div_ceil(10), space.total_inodes.div_ceil(10));
    assert_eq!(reserved_inodes, 2_000);

    // A normal toolchain and job.
    let small = toolchain_of_empty_files("small", 100, 0);
    assert_runs(&kiln, &small).await;

    // 1. An unpack that would take the file system 1,000 inodes below the reserve.
    let before = fs.space();
    let files = (before.free_inodes - reserved_inodes + 1_000) as u32;
    let hog = toolchain_of_empty_files("inode-hog", files, 0);
    let refusal = assert_reserve_refusal(run_true(&kiln, &hog).await, &format!("unpacking {files} empty files"));
    let after = fs.space();
    eprintln!("refused: {refusal}\nfree inodes: {} before, {} after", before.free_inodes, after.free_inodes);
    assert!(after.free_inodes >= reserved_inodes, "the reserve is intact: {after:?}");
    // Only the stored archive (one inode) stays; the partial root is gone.
    assert!(after.free_inodes + 10 >= before.free_inodes, "{before:?} -> {after:?}");

    // 2. An upload while the host already took the file system below the reserve
    // (once the roots the refusal evicted are gone).
    settle(&fs).await;
    let filler = fs.path.join("filler");
    fill_inodes(&fs, &filler, reserved_inodes - 50);
    let before = fs.space();
    let client = kiln.client();
    let job_id = next_job_id();
    let other = toolchain_of_empty_files("upload", 10, 0);
    let toolchain = Toolchain { archive_id: other.archive_id.clone() };
    assert!(client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap().need_toolchain);
    let upload = client.submit_toolchain(job_id, &token(job_id), other.bytes.clone()).await;
    assert_reserve_refusal(upload, "an upload below the reserve");
    let after = fs.space();
    assert!(after.free_inodes >= before.free_inodes, "the upload took nothing: {before:?} -> {after:?}");
    assert!(
        std::fs::read_dir(kiln.data_dir.join("incoming")).unwrap().next().is_none(),
        "nothing staged is left in incoming/"
    );

    // 3. The host frees its files: jobs run again, with a cached root and a new one.
    std::fs::remove_dir_all(&filler).unwrap();
    assert_runs(&kiln, &small).await;
    assert_runs(&kiln, &other).await;

    // 4. Bytes: a toolchain of 40 MiB of zeros (40 KiB compressed) with 20 MiB above
    // the reserve (an upload starts with 16 MiB above it: it is stored; the unpack
    // is refused).
    let filler_file = fs.path.join("filler-bytes");
    let file = std::fs::File::create(&filler_file).unwrap();
    let fill = fs.space().free_bytes - reserved_bytes - (20 << 20);
    nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, fill as i64).unwrap();
    let zeros = toolchain_of_empty_files("zeros", 0, 40 << 20);
    assert_reserve_refusal(run_true(&kiln, &zeros).await, "unpacking 40 MiB into 20 MiB above the reserve");
    let after = fs.space();
    assert!(after.free_bytes >= reserved_bytes, "the byte reserve is intact: {after:?}");
    drop(file);
    std::fs::remove_file(&filler_file).unwrap();
    assert_runs(&kiln, &zeros).await;

    let status = kiln.status().await;
    assert!(status.snapshot.counters.disk_reserve_refusals >= 3, "{:?}", status.snapshot.counters);
    let disk = status.snapshot.roots.and_then(|r| r.disk).expect("the status shows the data dir's file system");
    assert_eq!(disk.reserved_inodes, reserved_inodes);
    drop(kiln);
}

// --- a job's writes (issue 27, finding 7) ------------------------------------

/// The data dir on a 256 MiB tmpfs, `kiln.jobs.max_disk_bytes` = 64 MiB, and a job
/// that writes as much as it can. Before, the job's writes went to its overlay's
/// upper dir on the data dir's file system: it wrote 200 MiB there, and a
/// toolchain upload meanwhile failed. Now it gets ENOSPC at 64 MiB in its own
/// tmpfs, the data dir's free space does not move, and another client's upload
/// and job run while the job holds its bytes.
#[actix_rt::test]
async fn a_job_that_fills_its_disk_quota_stops_there_alone() {
    const QUOTA: u64 = 64 << 20;
    let fs = SmallFs::mount("size=256m,mode=0700");
    let kiln = Kiln::start_on(
        &fs.path.join("data"),
        &format!(
            "[kiln.disk_reserve]\npercent = 0\nmin_free_bytes = 0\nmin_free_inodes = 0\n\
             [kiln.jobs]\ntimeout_secs = 60\nmax_input_bytes = {}\nmax_disk_bytes = {QUOTA}\n",
            16 << 20
        ),
    );
    let tc = toolchain_of_empty_files("fill", 0, 0);
    assert_runs(&kiln, &tc).await;
    let program = static_program("fill_disk", include_str!("programs/fill_disk.c"));
    let before = fs.space();
    let client = kiln.client();
    let filler = async {
        let job_id = assign_and_submit(&client, &tc).await;
        let request = RunJobHttpRequest { command: command("./fill_disk", &[], "/work"), outputs: vec![] };
        let inputs = programs(&[("fill_disk", &program)]);
        match client.run_job(job_id, &token(job_id), &request, &inputs).await.unwrap() {
            RunJobResult::Complete(done) => done,
            RunJobResult::JobNotFound => panic!("job {job_id} not found"),
        }
    };
    // While the filler holds what it wrote: the data dir's free space, and a new
    // toolchain from another client, uploaded and run.
    let watcher = async {
        let mut least = before.free_bytes;
        for _ in 0..20 {
            actix_rt::time::sleep(Duration::from_millis(100)).await;
            least = least.min(fs.space().free_bytes);
        }
        let other = run_true(&kiln, &toolchain_of_empty_files("during-fill", 10, 0)).await;
        (least.min(fs.space().free_bytes), other)
    };
    let ((least_free, other), done) = tokio::join!(watcher, filler);
    let out = stdout(&done);
    eprintln!("{out}free bytes of the data dir: {} before, at least {least_free} during", before.free_bytes);
    let written: u64 = out.split_whitespace().nth(1).and_then(|n| n.trim_end_matches(':').parse().ok()).unwrap();
    assert!(out.contains("No space left on device"), "the job was stopped by its quota: {out}");
    assert!((QUOTA / 2..=QUOTA).contains(&written), "the job wrote {written} bytes under a {QUOTA}-byte quota");
    assert!(
        least_free + (4 << 20) >= before.free_bytes,
        "the job's writes took the data dir from {} to {least_free} free bytes",
        before.free_bytes
    );
    let other = other.unwrap_or_else(|e| panic!("another client's upload and job during the fill: {e}"));
    assert_eq!(other.output.code, 0, "{}", stderr(&other));
    assert_runs(&kiln, &tc).await;
}
