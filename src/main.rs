//! The `kiln` command: parses the CLI and config, then hands over to the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kiln::config::Config;
use kiln::observe::logging::{self, LogFormat};
use kiln::package::{package_toolchain, PackageOptions};

#[derive(Parser)]
#[command(name = "kiln", version, about = "A build pool server for sccache-dist clients")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the build server (built-in defaults unless --config is given).
    Serve {
        /// TOML config file; only the keys it sets override the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// `text` for people, `json` (one object per line) for log shippers.
        #[arg(long, value_enum, default_value_t)]
        log_format: LogFormat,
        /// A setting over the config file's, e.g. `--set public_addr=10.0.0.7:10501`
        /// (a pod's own address) or `--set kiln.metrics_listen=0.0.0.0:10601`; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<kiln::config_overrides::Override>,
    },
    /// Show what a running kiln is doing (its /api/v1/kiln/status, as tables).
    Status {
        /// The config `kiln serve` runs with, to find its metrics_listen address.
        #[arg(long)]
        config: Option<PathBuf>,
        /// kiln's operator address instead, e.g. http://127.0.0.1:10601.
        #[arg(long)]
        url: Option<String>,
    },
    /// Ask a running kiln to garbage-collect now (idle sandboxes, unused roots).
    Gc {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        url: Option<String>,
    },
    /// Check this host for everything kiln needs, and say what to fix.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the sccache client config (SCCACHE_CONF) that uses this kiln.
    ClientConfig {
        /// The config file `kiln serve` runs with, if any.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Pack a compiler and everything it needs into a toolchain archive.
    PackageToolchain {
        /// The compiler driver to pack.
        #[arg(long, default_value = "/usr/bin/gcc")]
        compiler: PathBuf,
        /// Extra programs or files to include (with their shared libraries).
        #[arg(long)]
        extra: Vec<PathBuf>,
        /// Where to write the gzip'd tar.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    if let Command::Serve { config, log_format, set } = command {
        return serve(config, log_format, set);
    }
    logging::init(LogFormat::Text, "warn")?;
    match command {
        Command::Serve { .. } => unreachable!("handled above"),
        Command::Status { config, url } => {
            let base = kiln::cli::ops_url(&load_config(config.as_ref())?, url.as_deref());
            let doc = actix_rt::System::new().block_on(kiln::cli::status::fetch(&base))?;
            print!("{}", kiln::cli::status::render(&doc));
            Ok(())
        }
        Command::Gc { config, url } => {
            let base = kiln::cli::ops_url(&load_config(config.as_ref())?, url.as_deref());
            let report = actix_rt::System::new().block_on(kiln::cli::gc::gc(&base))?;
            print!("{}", kiln::cli::gc::render(&report));
            Ok(())
        }
        Command::Check { config } => {
            let (text, passed) = kiln::cli::check::render(&kiln::cli::check::check(&load_config(config.as_ref())?));
            print!("{text}");
            if !passed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::ClientConfig { config } => client_config(config),
        Command::PackageToolchain { compiler, extra, output } => {
            let packed = package_toolchain(&PackageOptions { compiler, extra }, &output)
                .with_context(|| format!("packaging a toolchain into {}", output.display()))?;
            eprintln!("packed {} files ({} bytes) into {}", packed.files, packed.bytes, output.display());
            println!("{}", packed.archive_id);
            Ok(())
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    })
}

fn client_config(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(config_path.as_ref())?;
    print!("{}", config.client_config());
    // Say whether the scheduler answers, so a user knows the config will work now.
    let url = config.client_scheduler_url();
    let probe = actix_rt::System::new().block_on(async {
        let client = kiln::client::Client::new(url.clone());
        tokio::time::timeout(std::time::Duration::from_secs(3), client.scheduler_status()).await
    });
    match probe {
        Ok(Ok(status)) => eprintln!(
            "the scheduler at {url} answers: {} server(s), {} CPUs, {} jobs in progress",
            status.num_servers, status.num_cpus, status.in_progress
        ),
        Ok(Err(e)) => eprintln!("warning: the scheduler at {url} does not answer yet ({e}); is `kiln serve` running?"),
        Err(_) => eprintln!("warning: the scheduler at {url} did not answer within 3 s; is `kiln serve` running?"),
    }
    Ok(())
}

fn serve(
    config_path: Option<PathBuf>,
    log_format: LogFormat,
    overrides: Vec<kiln::config_overrides::Override>,
) -> anyhow::Result<()> {
    let mut config = kiln::config_overrides::load(config_path.as_deref(), &overrides)?;
    let log = logging::init(log_format, &config.kiln.log_level)?;
    let host = kiln::host_check::check_host(&config).map_err(|e| anyhow::anyhow!("kiln cannot start: {e}"))?;
    tracing::info!(bwrap = ?host.bwrap_path, sandbox = %host.sandbox, config = ?config_path, "host checks passed");
    if let Some(bwrap) = host.bwrap_path {
        config.set_bwrap_path(bwrap);
    }
    let reload = kiln::observe::signals::Reload { config_path, overrides, log: Some(log) };
    let served = actix_rt::System::new().block_on(kiln::server::serve_with(config, reload, |listening| {
        // Machine-readable lines on stdout, for scripts and tests.
        println!("kiln listening on {}", listening.server_url());
        if let Some(addr) = listening.scheduler {
            println!("kiln scheduler listening on http://{addr}");
        }
        println!("kiln operations listening on http://{}", listening.metrics);
    }));
    use kiln::server::ServerError;
    if let Err(
        e @ (ServerError::Locked(_) | ServerError::Cgroups(_) | ServerError::Seccomp(_) | ServerError::Bind { .. }),
    ) = &served
    {
        // One line, as the host checks say theirs: nothing is wrong but the setup.
        eprintln!("kiln cannot start: {}", kiln::report::ErrorChain(e));
        std::process::exit(1);
    }
    Ok(served?)
}
