//! Compiles one C file on a running kiln, the way a client would, and writes the
//! object next to the source.
//!
//! ```sh
//! kiln package-toolchain -o /tmp/gcc.tar.gz
//! cargo run --example compile -- http://127.0.0.1:10501 <job_token_key hex> /tmp/gcc.tar.gz hello.c
//! ```
//! The key is the server's `job_token_key`; this example signs its own job token
//! with it, which is what the scheduler does for real clients.

use std::path::Path;

use anyhow::{bail, Context};
use kiln::client::{Client, InputsBuilder};
use kiln::protocol::{archive_id_of, CompileCommand, JobId, JobKey, RunJobHttpRequest, RunJobResult, Toolchain};

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, key_hex, archive, source] = args.as_slice() else {
        bail!("usage: compile <server url> <job_token_key hex> <toolchain.tar.gz> <file.c>");
    };
    let key_bytes: Vec<u8> = (0..key_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(key_hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .context("the key must be hex")?;
    let key = JobKey::from_bytes(&key_bytes)?;
    let source = std::fs::canonicalize(source).with_context(|| format!("no such file {source}"))?;
    let cwd = source.parent().unwrap_or(Path::new("/")).to_str().context("non-UTF-8 path")?.to_owned();
    let object = source.with_extension("o");

    let client = Client::new(server.as_str());
    let job_id = JobId(std::process::id() as u64);
    let token = key.token_for(job_id)?;
    let archive = std::fs::read(archive).with_context(|| format!("reading {archive}"))?;
    let toolchain = Toolchain { archive_id: archive_id_of(&archive) };
    if client.assign_job(job_id, &token, &toolchain).await?.need_toolchain {
        println!("submitting toolchain {}", toolchain.archive_id);
        client.submit_toolchain(job_id, &token, archive.into()).await?;
    }
    let mut inputs = InputsBuilder::new();
    inputs.add_host_file(&source)?;
    let request = RunJobHttpRequest {
        command: CompileCommand {
            executable: "/usr/bin/gcc".into(),
            arguments: vec!["-c".into(), source.display().to_string(), "-o".into(), object.display().to_string()],
            env_vars: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd,
        },
        outputs: vec![object.display().to_string()],
    };
    let RunJobResult::Complete(done) = client.run_job(job_id, &token, &request, &inputs.finish()?).await? else {
        bail!("the server did not know job {job_id}");
    };
    print!("{}", String::from_utf8_lossy(&done.output.stdout));
    eprint!("{}", String::from_utf8_lossy(&done.output.stderr));
    for (name, data) in &done.outputs {
        std::fs::write(name, data.decompress(1 << 30)?)?;
        println!("wrote {name}");
    }
    std::process::exit(done.output.code);
}
