//! Compiles one C file through a scheduler (kiln's own, or upstream's), the way
//! the sccache client does, and writes the object next to the source.
//!
//! ```sh
//! kiln package-toolchain -o /tmp/gcc.tar.gz
//! cargo run --example compile -- http://127.0.0.1:10600 /tmp/gcc.tar.gz hello.c
//! ```
//! The client token is `$KILN_CLIENT_TOKEN`, by default the one an sccache
//! client without `auth` sends (`DANGEROUSLY_INSECURE` schedulers accept it).

use std::path::Path;

use anyhow::{bail, Context};
use kiln::client::{Client, InputsBuilder};
use kiln::config::INSECURE_CLIENT_TOKEN;
use kiln::protocol::{archive_id_of, AllocJobHttpResponse, CompileCommand, RunJobHttpRequest, RunJobResult, Toolchain};

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [scheduler, archive, source] = args.as_slice() else {
        bail!("usage: compile <scheduler url> <toolchain.tar.gz> <file.c>");
    };
    let client_token = std::env::var("KILN_CLIENT_TOKEN").unwrap_or_else(|_| INSECURE_CLIENT_TOKEN.to_owned());
    let source = std::fs::canonicalize(source).with_context(|| format!("no such file {source}"))?;
    let cwd = source.parent().unwrap_or(Path::new("/")).to_str().context("non-UTF-8 path")?.to_owned();
    let object = source.with_extension("o");
    // Preprocessed here, as sccache does: the toolchain carries no headers.
    let preprocessed = source.with_extension("i");
    let status = std::process::Command::new("gcc").arg("-E").arg(&source).arg("-o").arg(&preprocessed).status()?;
    if !status.success() {
        bail!("preprocessing {} failed", source.display());
    }

    let archive = std::fs::read(archive).with_context(|| format!("reading {archive}"))?;
    let toolchain = Toolchain { archive_id: archive_id_of(&archive) };
    let scheduler = Client::new(scheduler.as_str());
    let (alloc, need_toolchain) = match scheduler.alloc_job(&client_token, &toolchain).await? {
        AllocJobHttpResponse::Success { job_alloc, need_toolchain, .. } => (job_alloc, need_toolchain),
        AllocJobHttpResponse::Fail { msg } => bail!("the scheduler has no room: {msg}"),
    };
    let cert = scheduler.server_certificate(alloc.server_id).await?;
    let server = Client::trusting(format!("https://{}", alloc.server_id.addr()), &cert.cert_pem)?;
    let (job_id, token) = (alloc.job_id, alloc.auth);
    println!("job {job_id} on {}", alloc.server_id.addr());
    if need_toolchain {
        println!("submitting toolchain {}", toolchain.archive_id);
        server.submit_toolchain(job_id, &token, archive.into()).await?;
    }
    let mut inputs = InputsBuilder::new();
    inputs.add_host_file(&preprocessed)?;
    let request = RunJobHttpRequest {
        command: CompileCommand {
            executable: "/usr/bin/gcc".into(),
            arguments: vec!["-c".into(), preprocessed.display().to_string(), "-o".into(), object.display().to_string()],
            env_vars: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd,
        },
        outputs: vec![object.display().to_string()],
    };
    let RunJobResult::Complete(done) = server.run_job(job_id, &token, &request, &inputs.finish()?).await? else {
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
