//! Bad input of every kind gets a clear HTTP error, and kiln keeps serving.

mod common;

use bytes::Bytes;
use common::*;
use kiln::client::InputsBuilder;
use kiln::protocol::{
    self, frame_run_job_body, Endpoint, JobId, JobKey, RunJobHttpRequest, RunJobResult, SubmitToolchainResult,
    Toolchain,
};

/// A job whose toolchain is already on the server, ready for run_job.
async fn ready_job(kiln: &Kiln) -> JobId {
    assign_and_submit(&kiln.client(), gcc_toolchain()).await
}

fn tar_with_raw_entry(kind: tar::EntryType, path: &[u8], link: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.as_old_mut().name[..path.len()].copy_from_slice(path);
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    }
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, data).unwrap();
    builder.into_inner().unwrap()
}

fn concat(tars: &[Vec<u8>]) -> Vec<u8> {
    // Drop each archive's two zero end blocks except the last's.
    let mut out = Vec::new();
    for (i, t) in tars.iter().enumerate() {
        let end = if i + 1 == tars.len() { t.len() } else { t.len() - 1024 };
        out.extend_from_slice(&t[..end]);
    }
    out
}

#[actix_rt::test]
async fn malformed_bodies_are_refused_with_400_or_413() {
    let kiln = Kiln::start("[kiln.jobs]\nmax_request_bytes = 1048576\n");
    let client = kiln.client();

    // Garbage bincode for assign_job.
    let job_id = next_job_id();
    let (status, body) = client
        .post_raw(&Endpoint::AssignJob.path(job_id), Some(&token(job_id)), Bytes::from_static(b"\xff\xff\xff"))
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", description(&body));
    // A length prefix of 2^60 for the archive id string.
    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend_from_slice(b"abcd");
    let (status, body) =
        client.post_raw(&Endpoint::AssignJob.path(job_id), Some(&token(job_id)), huge.into()).await.unwrap();
    assert_eq!(status, 400, "{}", description(&body));

    // Truncated run_job bodies: a cut prefix, and a header length beyond the body.
    // A refused run_job ends its job, so each gets a job of its own.
    let request = RunJobHttpRequest { command: command("/usr/bin/gcc", &["--version"], "/"), outputs: vec![] };
    let framed = frame_run_job_body(&request, b"").unwrap();
    for truncated in [Bytes::from_static(&[0, 0]), Bytes::copy_from_slice(&framed[..framed.len() - 3])] {
        let job_id = ready_job(&kiln).await;
        let path = Endpoint::RunJob.path(job_id);
        let (status, body) = client.post_raw(&path, Some(&token(job_id)), truncated).await.unwrap();
        assert_eq!(status, 400, "{}", description(&body));
        // The job ended with the refusal.
        let (status, body) = client.post_raw(&path, Some(&token(job_id)), Bytes::from(framed.clone())).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(protocol::decode::<RunJobResult>(&body, 1 << 20).unwrap(), RunJobResult::JobNotFound);
    }

    // Over the configured limit: 413 with a message naming it.
    let job_id = ready_job(&kiln).await;
    let oversized = vec![0u8; 2 << 20];
    let path = Endpoint::RunJob.path(job_id);
    let (status, body) = client.post_raw(&path, Some(&token(job_id)), oversized.into()).await.unwrap();
    assert_eq!(status, 413);
    assert!(description(&body).contains("1048576"), "{}", description(&body));

    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn unknown_jobs_duplicates_and_bad_toolchains() {
    let kiln = Kiln::start("");
    let client = kiln.client();
    let tc = gcc_toolchain();

    // run_job and submit_toolchain for a job never assigned: the protocol's JobNotFound.
    let unknown = next_job_id();
    let request = RunJobHttpRequest { command: command("/usr/bin/gcc", &["--version"], "/"), outputs: vec![] };
    let result =
        client.run_job(unknown, &token(unknown), &request, &InputsBuilder::new().finish().unwrap()).await.unwrap();
    assert_eq!(result, RunJobResult::JobNotFound);
    let result = client.submit_toolchain(unknown, &token(unknown), tc.bytes.clone()).await.unwrap();
    assert_eq!(result, SubmitToolchainResult::JobNotFound);

    // The same job id assigned twice: 409. (A toolchain of its own: the first
    // assign makes this job the one asked to send it, and it never does.)
    let job_id = next_job_id();
    let toolchain = Toolchain { archive_id: other_toolchain().archive_id.clone() };
    client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap();
    let err = client.assign_job(job_id, &token(job_id), &toolchain).await.unwrap_err();
    assert!(err.to_string().contains("409") || err.to_string().contains("already assigned"), "{err}");

    // A toolchain that is not gzip, and one whose BLAKE3 is not its archive_id.
    let not_gzip = Bytes::from_static(b"this is not a gzip'd tar at all");
    let job_id = next_job_id();
    client
        .assign_job(job_id, &token(job_id), &Toolchain { archive_id: protocol::archive_id_of(&not_gzip) })
        .await
        .unwrap();
    let err = client.submit_toolchain(job_id, &token(job_id), not_gzip).await.unwrap_err();
    assert!(err.to_string().contains("not a gzip"), "{err}");
    let job_id = next_job_id();
    let wrong_id = protocol::archive_id_of(b"some other archive");
    client.assign_job(job_id, &token(job_id), &Toolchain { archive_id: wrong_id }).await.unwrap();
    let err = client.submit_toolchain(job_id, &token(job_id), tc.bytes.clone()).await.unwrap_err();
    assert!(err.to_string().contains("BLAKE3"), "{err}");
    let status = kiln.status().await;
    assert_eq!(status.snapshot.counters.toolchains_stored, 0, "nothing unverified was stored: {status:?}");

    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn wrong_or_missing_tokens_get_401() {
    let kiln = Kiln::start("");
    let job_id = next_job_id();
    let body = Bytes::from(protocol::encode(&Toolchain { archive_id: gcc_toolchain().archive_id.clone() }).unwrap());
    let path = Endpoint::AssignJob.path(job_id);
    let other_key = JobKey::from_bytes(&[7u8; 32]).unwrap();
    let cases = [
        ("missing", None),
        ("not bearer", Some("Basic abc".to_owned())),
        ("garbage", Some("Bearer not.a.jwt".to_owned())),
        ("other key", Some(format!("Bearer {}", other_key.token_for(job_id).unwrap()))),
        ("other job", Some(format!("Bearer {}", token(JobId(job_id.0 + 1000))))),
    ];
    for (case, header) in cases {
        let request = kiln.http().post(format!("{}{path}", kiln.addr));
        let request = match &header {
            Some(h) => request.insert_header(("Authorization", h.as_str())),
            None => request,
        };
        let mut response = request.send_body(body.clone()).await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{case}");
        let challenge = response.headers().get("WWW-Authenticate").map(|v| v.to_str().unwrap().to_owned());
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer error=")), "{case}");
        let text = description(&response.body().await.unwrap());
        assert!(!text.is_empty(), "{case}: the 401 explains itself");
    }
    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn hostile_inputs_are_refused_and_nothing_lands_outside_the_sandbox() {
    let kiln = Kiln::start("");
    let host_dir = tempfile::Builder::new().prefix("kiln-host-").tempdir().unwrap();
    let host = host_dir.path().to_str().unwrap().as_bytes().to_vec();
    let secret = host_dir.path().join("secret");
    std::fs::write(&secret, b"host secret").unwrap();
    let planted = |name: &str| host_dir.path().join(name);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            tar_with_raw_entry(
                tar::EntryType::Regular,
                format!("../../../..{}/dotdot", host_dir.path().display()).as_bytes(),
                None,
                b"x",
            ),
        ),
        (
            "symlink escape",
            concat(&[
                tar_with_raw_entry(tar::EntryType::Symlink, b"escape", Some(&host), b""),
                tar_with_raw_entry(tar::EntryType::Regular, b"escape/through-link", None, b"x"),
            ]),
        ),
        (
            "hard link to a host file",
            tar_with_raw_entry(tar::EntryType::Link, b"stolen", Some(secret.to_str().unwrap().as_bytes()), b""),
        ),
        ("device node", tar_with_raw_entry(tar::EntryType::Char, b"dev-null", None, b"")),
    ];
    for (case, inputs) in cases {
        let job_id = ready_job(&kiln).await;
        let request = RunJobHttpRequest { command: command("/bin/sh", &["-c", "true"], "/work"), outputs: vec![] };
        let mut compressed = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut compressed, &inputs).unwrap();
        let body = frame_run_job_body(&request, &compressed.finish().unwrap()).unwrap();
        let (status, body) =
            kiln.client().post_raw(&Endpoint::RunJob.path(job_id), Some(&token(job_id)), body.into()).await.unwrap();
        assert_eq!(status, 400, "{case}: {}", description(&body));
        assert!(description(&body).contains("inputs"), "{case}: {}", description(&body));
    }
    for name in ["dotdot", "through-link"] {
        assert!(!planted(name).exists(), "{name} was written on the host");
    }
    assert_eq!(std::fs::read(&secret).unwrap(), b"host secret");

    // An absolute path is a path inside the sandbox, never on the host.
    let absolute = host_dir.path().join("absolute");
    let inputs = tar_with_raw_entry(tar::EntryType::Regular, absolute.to_str().unwrap().as_bytes(), None, b"inside");
    let done =
        run(&kiln.client(), gcc_toolchain(), command("/bin/cat", &[absolute.to_str().unwrap()], "/"), &[], inputs)
            .await;
    assert_eq!(done.output.stdout, b"inside");
    assert!(!absolute.exists(), "an absolute input path was written on the host");

    // An output that is a symlink to a host file is never read from the host.
    let link =
        tar_with_raw_entry(tar::EntryType::Symlink, b"work/out.o", Some(secret.to_str().unwrap().as_bytes()), b"");
    let done =
        run(&kiln.client(), gcc_toolchain(), command("/bin/sh", &["-c", "true"], "/work"), &["out.o"], link).await;
    assert_eq!(done.output.code, 0, "{}", String::from_utf8_lossy(&done.output.stderr));
    assert!(done.outputs.is_empty(), "a symlinked output was returned: {:?}", done.outputs);

    // Environment variable names containing '=' are refused.
    let job_id = ready_job(&kiln).await;
    let mut bad_env = command("/bin/sh", &["-c", "true"], "/work");
    bad_env.env_vars.push(("A=B".into(), "c".into()));
    let err = kiln
        .client()
        .run_job(
            job_id,
            &token(job_id),
            &RunJobHttpRequest { command: bad_env, outputs: vec![] },
            &InputsBuilder::new().finish().unwrap(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("'='"), "{err}");

    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn hostile_jobs_fail_cleanly() {
    let kiln = Kiln::start("[kiln.jobs]\nmax_output_bytes = 1000\n");
    let client = kiln.client();
    let tc = gcc_toolchain();

    // An output that is a fifo: opening it must not block the job forever.
    let fifo = run(&client, tc, command("/usr/bin/mkfifo", &["out.o"], "/work"), &["out.o"], empty_tar()).await;
    assert_eq!(fifo.output.code, 0, "{}", String::from_utf8_lossy(&fifo.output.stderr));
    assert!(fifo.outputs.is_empty(), "a fifo is not an output file");

    // A missing executable is the job's failure, as upstream reports it, not kiln's.
    let missing = run(&client, tc, command("/usr/bin/clang", &["-c", "x.c"], "/work"), &[], empty_tar()).await;
    assert_eq!(missing.output.code, 1);
    assert!(String::from_utf8_lossy(&missing.output.stderr).contains("/usr/bin/clang"));

    // Outputs over the limit: a clear 400.
    let project = CProject::new();
    let job_id = assign_and_submit(&client, tc).await;
    let request = RunJobHttpRequest {
        command: command("/usr/bin/gcc", &["-c", "util.c", "-o", "util.o"], project.cwd()),
        outputs: vec!["util.o".into()],
    };
    let err = client.run_job(job_id, &token(job_id), &request, &project.inputs()).await.unwrap_err();
    assert!(err.to_string().contains("400") && err.to_string().contains("1000"), "{err}");

    let status = kiln.status().await;
    assert_eq!(status.snapshot.counters.builder_restarts, 0, "no hostile job counts as a builder failure: {status:?}");
}

/// A request whose output names or cwd would cost kiln more than any compile
/// needs is refused with a 400 that names the bound, before it is queued, and
/// the next job runs (issue 27, finding 6).
#[actix_rt::test]
async fn outputs_and_cwd_are_bounded_in_count_length_and_depth() {
    let kiln = Kiln::start("");
    let client = kiln.client();
    let deep = vec!["d"; 2_000].join("/");
    let cases = [
        ("2,000 outputs", command("/bin/true", &[], "/work"), (0..2_000).map(|i| format!("o{i}")).collect(), "1024"),
        ("12 outputs 2,000 deep", command("/bin/true", &[], "/work"), vec![format!("{deep}/x.o"); 12], "128"),
        ("a cwd 2,000 deep", command("/bin/true", &[], &format!("/{deep}")), vec![], "128"),
        ("a 5,000-byte output name", command("/bin/true", &[], "/work"), vec!["n".repeat(5_000)], "4096"),
    ];
    for (case, command, outputs, bound) in cases {
        let job_id = ready_job(&kiln).await;
        let request = RunJobHttpRequest { command, outputs };
        let err = client.run_job(job_id, &token(job_id), &request, &empty_tar()).await.unwrap_err().to_string();
        assert!(err.contains("400") && err.contains(bound), "{case}: {err}");
    }
    assert_compiles(&kiln).await;
}

#[actix_rt::test]
async fn the_job_environment_reaches_the_job_and_never_the_host() {
    let kiln = Kiln::start("");
    // A preload library that leaves a mark wherever it is loaded.
    let dir = tempfile::Builder::new().prefix("kiln-preload-").tempdir().unwrap();
    let marker = dir.path().join("loaded-on-host");
    let source = dir.path().join("mark.c");
    std::fs::write(
        &source,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void mark(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let library = dir.path().join("mark.so");
    let built = std::process::Command::new("/usr/bin/gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .unwrap();
    assert!(built.success());

    let mut job = command("/bin/sh", &["-c", "echo \"$KILN_TEST_VAR\""], "/work");
    job.env_vars.push(("KILN_TEST_VAR".into(), "from the job".into()));
    job.env_vars.push(("LD_PRELOAD".into(), library.display().to_string()));
    let done = run(&kiln.client(), gcc_toolchain(), job, &[], empty_tar()).await;
    assert_eq!(String::from_utf8_lossy(&done.output.stdout), "from the job\n");
    assert!(!marker.exists(), "the job's LD_PRELOAD was loaded by a process on the host");
}

/// Issue 14: a client that offers h2 (curl, and reqwest in the sccache client)
/// gets every early answer intact: kiln answers before reading a body it refuses,
/// and over h2 that answer was lost in a stream reset. kiln speaks HTTP/1.1 only.
#[actix_rt::test]
async fn early_answers_reach_clients_that_offer_h2() {
    let kiln = Kiln::start("");
    let mut tls = (*kiln::tls::client_config_trusting(&kiln.cert_pem).unwrap()).clone();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let http = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(tls)))
        .timeout(std::time::Duration::from_secs(30))
        .finish();
    // Over the h2 stream window (64 KiB), so the client is still sending when the answer comes.
    let body = Bytes::from(vec![0x5a; 1 << 20]);
    let job_id = next_job_id();
    let cases = [
        (Endpoint::RunJob.path(job_id), Some("Bearer not-a-token".to_owned()), 401),
        (Endpoint::RunJob.path(job_id), None, 401),
        // A job never assigned: answered by the protocol (JobNotFound), with 200.
        (Endpoint::RunJob.path(job_id), Some(format!("Bearer {}", token(job_id))), 200),
        ("/no/such/endpoint".to_owned(), None, 404),
    ];
    for (path, authorization, expected) in &cases {
        let mut request = http.post(format!("{}{path}", kiln.addr));
        if let Some(authorization) = authorization {
            request = request.insert_header(("authorization", authorization.as_str()));
        }
        let mut response = request.send_body(body.clone()).await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(response.version(), awc::http::Version::HTTP_11, "POST {path}");
        let answer = response.body().await.unwrap_or_else(|e| panic!("POST {path}: the answer's body: {e}"));
        assert_eq!(response.status().as_u16(), *expected, "POST {path}: {}", description(&answer));
    }

    // curl, the client the issue was found with, if this machine has it.
    let Ok(curl) = which("curl") else { return };
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &body).unwrap();
    for (path, authorization, expected) in &cases[..2] {
        let mut command = std::process::Command::new(&curl);
        command.args(["-sk", "--http2", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "-X", "POST"]);
        if let Some(authorization) = authorization {
            command.args(["-H", &format!("authorization: {authorization}")]);
        }
        let output = command
            .arg("--data-binary")
            .arg(format!("@{}", file.path().display()))
            .arg(format!("{}{path}", kiln.addr))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{expected} 1.1"), "curl --http2 POST {path}");
    }
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(())
}

/// Issue 14: a job token is good for one job. Job tokens never expire (upstream
/// signs `exp: 0`), so posting assign_job again with a token whose job ran used
/// to create the job again, outside any scheduler's slot count.
#[actix_rt::test]
async fn a_job_token_runs_one_job() {
    let kiln = Kiln::start("");
    let client = kiln.client();
    let job_id = ready_job(&kiln).await;
    let request = RunJobHttpRequest { command: command("/bin/sh", &["-c", "echo ran"], "/work"), outputs: vec![] };
    let RunJobResult::Complete(done) = client.run_job(job_id, &token(job_id), &request, &empty_tar()).await.unwrap()
    else {
        panic!("the job was not found")
    };
    assert_eq!(done.output.stdout, b"ran\n");

    for _ in 0..3 {
        let toolchain = Toolchain { archive_id: gcc_toolchain().archive_id.clone() };
        match client.assign_job(job_id, &token(job_id), &toolchain).await {
            Err(kiln::client::ClientError::Server { status: 409, description }) => {
                assert!(description.contains("one job"), "{description}")
            }
            other => panic!("a replayed job token got {other:?}"),
        }
        let again = client.run_job(job_id, &token(job_id), &request, &empty_tar()).await.unwrap();
        assert_eq!(again, RunJobResult::JobNotFound, "a replayed job ran");
    }
}
