//! Hostile archives, requests and jobs beyond tests/bad_input.rs: each gets a clear
//! HTTP error or a failed job, kiln keeps serving, and the host is untouched.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use kiln::client::InputsBuilder;
use kiln::protocol::{
    self, frame_run_job_body, Endpoint, JobId, RunJobHttpRequest, RunJobResult, SubmitToolchainResult, Toolchain,
};

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// A tar header for `path` of `kind`, declaring `size` bytes, checksum set.
fn header(kind: tar::EntryType, path: &[u8], size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.set_cksum();
    h
}

/// Posts a run_job with raw (already zlib'd) inputs; answers status and description.
async fn run_raw(kiln: &Kiln, job_id: JobId, request: &RunJobHttpRequest, inputs_zlib: &[u8]) -> (u16, String) {
    let body = frame_run_job_body(request, inputs_zlib).unwrap();
    let (status, body) =
        kiln.client().post_raw(&Endpoint::RunJob.path(job_id), Some(&token(job_id)), body.into()).await.unwrap();
    (status, description(&body))
}

fn sh(script: &str) -> RunJobHttpRequest {
    RunJobHttpRequest { command: command("/bin/sh", &["-c", script], "/work"), outputs: vec![] }
}

#[actix_rt::test]
async fn hostile_input_archives_get_400() {
    let kiln = Kiln::start("[kiln.jobs]\nmax_input_entries = 10000\nmax_input_bytes = 1048576\n");
    let ready = || assign_and_submit_owned(&kiln);

    // A header declaring a petabyte, with nothing behind it.
    let mut huge = header(tar::EntryType::Regular, b"huge", 1 << 50).as_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 1024]);
    // A truncated tar: a header for 4 KiB followed by 100 bytes, and a zlib stream cut short.
    let mut cut = header(tar::EntryType::Regular, b"cut.c", 4096).as_bytes().to_vec();
    cut.extend_from_slice(&[b'x'; 100]);
    let whole = zlib(&empty_tar());
    // 100 000 tiny files: refused at the 10 001st entry.
    let mut many = tar::Builder::new(Vec::new());
    for i in 0..100_000u32 {
        many.append(&header(tar::EntryType::Regular, format!("f/{i}").as_bytes(), 1), &b"x"[..]).unwrap();
    }
    let many = many.into_inner().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("huge declared size", zlib(&huge), "1048576"),
        ("truncated tar", zlib(&cut), "inputs"),
        ("truncated zlib", whole[..whole.len() / 2].to_vec(), "inputs"),
        ("not zlib at all", b"\x1f\x8b this is gzip, not zlib".to_vec(), "inputs"),
        ("100 000 files", zlib(&many), "more than 10000 entries"),
    ];
    for (case, inputs, expected) in cases {
        let job_id = ready().await;
        let (status, text) = run_raw(&kiln, job_id, &sh("true"), &inputs).await;
        assert_eq!(status, 400, "{case}: {text}");
        assert!(text.contains(expected), "{case}: {text}");
    }

    // Non-UTF-8 names are just bytes inside the sandbox.
    let mut odd = tar::Builder::new(Vec::new());
    odd.append(&header(tar::EntryType::Regular, b"work/caf\xe9.c", 3), &b"int"[..]).unwrap();
    let done =
        run(&kiln.client(), gcc_toolchain(), command("/bin/ls", &[], "/work"), &[], odd.into_inner().unwrap()).await;
    assert_eq!(done.output.code, 0, "{}", String::from_utf8_lossy(&done.output.stderr));
    assert_eq!(done.output.stdout, b"caf\xe9.c\n");

    let status = kiln.status().await;
    assert_eq!(
        status.snapshot.counters.builder_restarts, 0,
        "no hostile archive counts as a machinery failure: {status:?}"
    );
    assert_compiles(&kiln).await;
}

async fn assign_and_submit_owned(kiln: &Kiln) -> JobId {
    assign_and_submit(&kiln.client(), gcc_toolchain()).await
}

/// A gzip'd tar holding one file of `size` zeros, and its archive id.
fn zero_toolchain(size: u64) -> (String, Bytes) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut tar = tar::Builder::new(&mut gz);
        tar.append(&header(tar::EntryType::Regular, b"usr/bin/zeros", size), std::io::repeat(0).take_exact(size))
            .unwrap();
        tar.finish().unwrap();
    }
    let bytes = Bytes::from(gz.finish().unwrap());
    (protocol::archive_id_of(&bytes), bytes)
}

trait TakeExact: std::io::Read + Sized {
    fn take_exact(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeExact for R {}

/// Assigns a job for `archive_id` and submits `bytes`; the job id.
async fn submit(kiln: &Kiln, archive_id: &str, bytes: Bytes) -> JobId {
    let client = kiln.client();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: archive_id.to_owned() };
    let assigned = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(assigned.need_toolchain);
    assert_eq!(client.submit_toolchain(job_id, &token(job_id), bytes).await.unwrap(), SubmitToolchainResult::Success);
    job_id
}

#[actix_rt::test]
async fn hostile_toolchains_fail_their_job_with_400_and_are_dropped() {
    let kiln = Kiln::start("[kiln.toolchains]\nmax_unpacked_bytes = 268435456\n");
    // A gzip bomb: 512 MiB of zeros in under 4 MiB, over the 256 MiB limit.
    let (bomb_id, bomb) = zero_toolchain(512 << 20);
    assert!(bomb.len() < 4 << 20, "{}", bomb.len());
    // A real toolchain cut in the middle (its hash is of the cut bytes: it is accepted).
    let tc = gcc_toolchain();
    let cut = tc.bytes.slice(..tc.bytes.len() / 2);
    let cut_id = protocol::archive_id_of(&cut);
    for (case, archive_id, bytes, expected) in
        [("gzip bomb", bomb_id, bomb, "268435456"), ("truncated toolchain", cut_id, cut, "unpacking toolchain")]
    {
        let job_id = submit(&kiln, &archive_id, bytes).await;
        let (status, text) = run_raw(&kiln, job_id, &sh("true"), &zlib(&empty_tar())).await;
        assert_eq!(status, 400, "{case}: {text}");
        assert!(text.contains(expected), "{case}: {text}");
        // Discarded: the next job for it must submit it again.
        let again = next_job_id();
        let assigned =
            kiln.client().assign_job(again, &token(again), &Toolchain { archive_id: archive_id.clone() }).await;
        assert!(assigned.unwrap().need_toolchain, "{case}: a toolchain that cannot unpack is dropped");
    }
    let roots: Vec<_> = std::fs::read_dir(kiln.data_dir.join("roots")).unwrap().flatten().collect();
    assert!(roots.is_empty(), "no partial root is left: {roots:?}");
    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn hostile_requests_get_clear_errors() {
    let kiln = Kiln::start("builders = 1\n");
    let client = kiln.client();

    // A run_job header whose argument vector claims 2^60 elements.
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let mut header = protocol::encode(&sh("true")).unwrap();
    let executable_len = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
    let args_at = 8 + executable_len;
    header[args_at..args_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let mut body = (header.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&header);
    body.extend_from_slice(&zlib(&empty_tar()));
    let (status, answer) =
        client.post_raw(&Endpoint::RunJob.path(job_id), Some(&token(job_id)), body.into()).await.unwrap();
    assert_eq!(status, 400, "{}", description(&answer));

    // A job id reused: once run, it is gone; assigning it again is a new job.
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = sh("true");
    assert!(matches!(
        client.run_job(job_id, &token(job_id), &request, &empty_tar()).await,
        Ok(RunJobResult::Complete(_))
    ));
    let again = client.run_job(job_id, &token(job_id), &request, &empty_tar()).await.unwrap();
    assert_eq!(again, RunJobResult::JobNotFound, "a job runs at most once");

    // 500 connections at once that never say anything: kiln keeps serving.
    let addr: std::net::SocketAddr = kiln.addr.trim_start_matches("https://").parse().unwrap();
    let idle: Vec<_> = (0..500).filter_map(|_| std::net::TcpStream::connect(addr).ok()).collect();
    assert_eq!(idle.len(), 500);
    assert_compiles(&kiln).await;
    drop(idle);
    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn hostile_jobs_never_reach_the_host() {
    let kiln = Kiln::start("[kiln.jobs]\nmax_process_memory_bytes = 536870912\n");
    let client = kiln.client();
    let tc = gcc_toolchain();
    let host_dir = tempfile::Builder::new().prefix("kiln-host-").tempdir().unwrap();
    let host = host_dir.path().display().to_string();

    // What the job sees: no capabilities, only the toolchain, /proc, /dev, no /sys.
    // (The test toolchain has sh, cat, ls, id, sleep and mkfifo, nothing else.)
    let script = "while read -r l; do case $l in CapEff*) echo \"$l\";; esac; done < /proc/self/status; ls /; ls /sys";
    let probe = run(&client, tc, command("/bin/sh", &["-c", script], "/work"), &[], empty_tar()).await;
    let out = String::from_utf8_lossy(&probe.output.stdout).into_owned();
    assert!(out.starts_with("CapEff:") && out.lines().next().unwrap().ends_with("0000000000000000"), "{out}");
    assert_eq!(out.lines().skip(1).collect::<Vec<_>>(), ["bin", "dev", "lib", "lib64", "proc", "tmp", "usr", "work"]);
    assert!(String::from_utf8_lossy(&probe.output.stderr).contains("/sys"), "no /sys in the sandbox");

    // Writes to host paths land in the sandbox's own overlay, never on the host.
    let mut dir = tar::Builder::new(Vec::new());
    dir.append(&header(tar::EntryType::Directory, format!("{host}/").as_bytes(), 0), &b""[..]).unwrap();
    // Kernel interfaces are read-only: a write that got through prints a marker.
    let sysrq = || std::fs::read_to_string("/proc/sys/kernel/sysrq").ok();
    let sysrq_before = sysrq();
    let script = format!(
        "echo x > {host}/pwned; echo x > /proc/1/root{host}/pwned2; \
         (echo s > /proc/sysrq-trigger) 2>/dev/null && echo wrote-sysrq-trigger; \
         (echo 0 > /proc/sys/kernel/sysrq) 2>/dev/null && echo wrote-sysrq; cat {host}/pwned"
    );
    let done = run(&client, tc, command("/bin/sh", &["-c", &script], "/work"), &[], dir.into_inner().unwrap()).await;
    assert_eq!(String::from_utf8_lossy(&done.output.stdout), "x\n", "{}", stderr(&done));
    assert_eq!(sysrq(), sysrq_before, "the host's kernel.sysrq");
    assert!(!host_dir.path().join("pwned").exists() && !host_dir.path().join("pwned2").exists());

    // Outputs that are symlinks to /etc/shadow (absolute, and through `..`) are
    // never read from the host.
    for target in ["/etc/shadow", "../../../../etc/shadow"] {
        let mut link = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Symlink, b"work/out.o", 0);
        h.set_link_name_literal(target).unwrap();
        h.set_cksum();
        link.append(&h, &b""[..]).unwrap();
        let done =
            run(&client, tc, command("/bin/cat", &["out.o"], "/work"), &["out.o"], link.into_inner().unwrap()).await;
        assert!(done.outputs.is_empty(), "{target}: a symlinked output was returned");
        assert!(done.output.stdout.is_empty(), "{target}: the sandbox has no /etc/shadow to read");
    }

    // An allocation without end stops at max_process_memory_bytes (512 MiB here):
    // the shell fails, the host's memory is untouched.
    let done = run(
        &client,
        tc,
        command("/bin/sh", &["-c", "x=aaaaaaaaaaaaaaaa; while :; do x=\"$x$x\"; done"], "/work"),
        &[],
        empty_tar(),
    )
    .await;
    assert_ne!(done.output.code, 0, "the endless allocation ended by failing");

    let status = kiln.status().await;
    assert_eq!(status.snapshot.counters.builder_restarts, 0, "{status:?}");
    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn a_client_sending_one_byte_a_second_gets_408_and_holds_no_builder() {
    use std::io::Read;
    // Plain HTTP (tls = false), so the test can write the request byte by byte.
    let kiln = Kiln::start("builders = 1\ntls = false\n[kiln.jobs]\nbody_timeout_secs = 2\n");
    assert!(kiln.addr.starts_with("http://"), "{}", kiln.addr);
    let job_id = assign_and_submit(&kiln.client(), gcc_toolchain()).await;
    let body = frame_run_job_body(&sh("true"), &zlib(&empty_tar())).unwrap();
    let addr: std::net::SocketAddr = kiln.addr.trim_start_matches("http://").parse().unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        Endpoint::RunJob.path(job_id),
        token(job_id),
        body.len()
    );
    let slow = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let mut answer = Vec::new();
        // One byte a second, reading between bytes; at most 60 s.
        for byte in body.iter().take(60) {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while std::time::Instant::now() < deadline {
                match stream.read(&mut buf) {
                    Ok(0) => return answer,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
            }
            if !answer.is_empty() {
                return answer;
            }
        }
        answer
    });
    // Meanwhile the only builder runs other jobs: bodies are read before queueing.
    let done =
        run(&kiln.client(), gcc_toolchain(), command("/bin/sh", &["-c", "echo ok"], "/work"), &[], empty_tar()).await;
    assert_eq!(done.output.stdout, b"ok\n");
    let answer = actix_rt::task::spawn_blocking(move || slow.join().unwrap()).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 2s"), "{answer}");
}

/// Issue 14: control characters a client sends (in the executable, an argument,
/// an env key, a cwd) never reach kiln's text log raw: no forged lines, no escape
/// sequences for the operator's terminal.
#[actix_rt::test]
async fn control_characters_from_clients_are_escaped_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kiln.log");
    let kiln = Kiln::start_logging_to("", &log);
    let client = kiln.client();
    let forged = "2026-11-29T00:00:00.000000Z ERROR kiln: FORGED";
    let osc = "\u{1b}]0;pwned\u{7}";
    let mut job = command(&format!("/bin/true\n{forged}"), &["-c", osc], &format!("/work\r\n{forged}"));
    job.env_vars.push((format!("KEY\n{forged}{osc}"), "v".into()));
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let request = RunJobHttpRequest { command: job, outputs: vec![format!("out\n{forged}")] };
    // Refused or failed, either way logged with the client's strings in it.
    let _ = client.run_job(job_id, &token(job_id), &request, &empty_tar()).await;
    let mut inputs = InputsBuilder::new();
    inputs.add_file(&format!("/work/x\u{1b}[2J\n{forged}"), b"data").unwrap();
    let job_id = assign_and_submit(&client, gcc_toolchain()).await;
    let simple = RunJobHttpRequest { command: command("/bin/true", &[], "/work"), outputs: vec![] };
    let _ = client.run_job(job_id, &token(job_id), &simple, &inputs.finish().unwrap()).await;
    assert_compiles(&kiln).await;

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("FORGED"), "the client's strings were logged (escaped):\n{text}");
    for line in text.lines() {
        assert!(!line.starts_with(forged), "a client forged a log line:\n{text}");
    }
    assert!(
        !text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{7}'),
        "raw control characters:\n{text:?}"
    );
}

/// Issue 16: whoever can write a farm's toolchain store (a shared directory) must not
/// make kiln, which runs as root, write or read host files through it. Planted: a
/// symlink at the temporary name kiln publishes an upload through (kiln's pid and its
/// first file number are guessable), pointing at a host file; and a symlink named
/// after a toolchain, pointing at a secret. The host file is untouched (the publish
/// fails and is counted) and the symlinked "toolchain" is not offered at all.
#[actix_rt::test]
async fn a_store_writer_cannot_make_kiln_write_or_read_host_files() {
    use kiln::protocol::AssignJobResult;

    let store = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let (victim, secret) = (host.path().join("victim"), host.path().join("secret"));
    std::fs::write(&victim, "host file").unwrap();
    std::fs::write(&secret, "secret").unwrap();
    let kiln = Kiln::start(&format!("[kiln.toolchains]\nstore = \"{}\"\n", store.path().display()));
    let tc = gcc_toolchain();
    let planted = store.path().join(format!(".{}.{}.0.part", tc.archive_id, kiln.pid()));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();

    assert_compiles(&kiln).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while kiln.status().await.snapshot.counters.toolchain_store_failures == 0 {
        assert!(std::time::Instant::now() < deadline, "the publish through the planted name did not fail");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file", "kiln wrote through the planted symlink");
    assert!(!store.path().join(&tc.archive_id).exists(), "published through the planted name");

    let other = other_toolchain();
    std::os::unix::fs::symlink(&secret, store.path().join(&other.archive_id)).unwrap();
    let client = kiln.client();
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: other.archive_id.clone() };
    let AssignJobResult { need_toolchain, .. } = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    assert!(need_toolchain, "kiln offered a toolchain the store only holds as a symlink");
}
