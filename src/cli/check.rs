//! `kiln check`: every host requirement, checked one by one, each with what to
//! do about it. Unlike the startup check it does not stop at the first failure.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Backend, Config};
use crate::host_check::overlayfs_available;
use crate::observe::views::human_bytes;
use crate::report::ErrorChain;
use crate::sandbox::cgroup::JobCgroups;
use crate::sandbox::overlay::{check_bwrap, probe_unprivileged};
use crate::store::StoreLocation;

/// Where the Docker Engine API listens.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Connecting to and hearing from the docker daemon takes at most this.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(3);
/// The toolchain store answers a lookup within this.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Below this much free space in the data dir kiln cannot do useful work.
const MIN_FREE_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, but something is worth knowing (or is only needed by another setup).
    Warn,
    /// kiln will not start or not work.
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub what: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about it, when not Ok.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: &'static str, detail: impl Into<String>) -> Self {
        Finding { what, verdict: Verdict::Ok, detail: detail.into(), fix: None }
    }

    fn bad(what: &'static str, verdict: Verdict, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { what, verdict, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// Runs every check for `config`.
pub fn check(config: &Config) -> Vec<Finding> {
    let docker_backend = config.backend() == Backend::Docker;
    let mut findings = Vec::new();
    findings.push(match nix::unistd::geteuid() {
        uid if uid.is_root() => Finding::ok("root", "running as root"),
        uid => Finding::bad(
            "root",
            Verdict::Fail,
            format!("running as uid {uid}"),
            "run kiln as root (sudo, or the systemd unit in examples/kiln.service): it mounts overlayfs and creates namespaces",
        ),
    });
    findings.push(match overlayfs_available() {
        true => Finding::ok("overlayfs", "the kernel has overlayfs"),
        false => Finding::bad(
            "overlayfs",
            if docker_backend { Verdict::Warn } else { Verdict::Fail },
            "the kernel has no overlayfs",
            "`modprobe overlay` (or a kernel with CONFIG_OVERLAY_FS)",
        ),
    });
    let bwrap = match config.backend() {
        Backend::Overlay { bwrap_path } => bwrap_path,
        Backend::Docker => PathBuf::from("bwrap"),
    };
    let checked = check_bwrap(&bwrap);
    findings.push(match &checked {
        Ok((path, version)) => Finding::ok("bubblewrap", format!("{version} at {}", path.display())),
        Err(e) => Finding::bad(
            "bubblewrap",
            if docker_backend { Verdict::Warn } else { Verdict::Fail },
            e.to_string(),
            "`apt-get install bubblewrap` (or `dnf install bubblewrap`), or set bwrap_path in [builder]",
        ),
    });
    if !docker_backend {
        findings.extend(job_confinement(config, checked.ok().map(|(path, _)| path)));
    }
    findings.push(match docker_ping(Path::new(DOCKER_SOCKET)) {
        Ok(version) => Finding::ok("docker", format!("the daemon at {DOCKER_SOCKET} answers ({version})")),
        Err(e) => Finding::bad(
            "docker",
            if docker_backend { Verdict::Fail } else { Verdict::Warn },
            format!("{DOCKER_SOCKET}: {e}"),
            if docker_backend {
                "install and start the docker daemon (`apt-get install docker.io && systemctl start docker`)"
            } else {
                "only needed with [builder] type = \"docker\""
            },
        ),
    });
    for (what, dir, budget) in [
        ("disk (data dir)", config.build_dir(), config.kiln.toolchains.unpacked_bytes),
        ("disk (toolchain cache)", config.archives_dir(), config.toolchain_cache_size),
    ] {
        findings.push(disk_space(what, &dir, budget));
    }
    if let Some(location) = &config.kiln.toolchains.store {
        findings.push(toolchain_store(location));
    }
    findings
}

/// The farm's store answers. Only a warning when it does not: kiln then asks clients
/// for toolchains, as without a store.
fn toolchain_store(location: &StoreLocation) -> Finding {
    match probe_store(location) {
        Ok(()) => Finding::ok("toolchain store", format!("{location} answers")),
        Err(e) => Finding::bad(
            "toolchain store",
            Verdict::Warn,
            format!("{location}: {e}"),
            "without it every kiln asks clients for toolchains: mount the directory, or check the URI's bucket, \
             endpoint and region and the service's credentials (for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             or an instance role)",
        ),
    }
}

/// One lookup in the store, on a runtime of its own (`kiln check` has none).
fn probe_store(location: &StoreLocation) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let probe = async { tokio::time::timeout(STORE_TIMEOUT, crate::store::probe(location)).await };
    match runtime.block_on(probe) {
        Ok(probed) => probed.map_err(|e| ErrorChain(&e).to_string()),
        Err(_) => Err(format!("no answer within {STORE_TIMEOUT:?}")),
    }
}

/// What confines overlay jobs: bubblewrap (found and checked: `bwrap`) as an
/// unprivileged uid, the uid range, and the jobs' cgroups.
fn job_confinement(config: &Config, bwrap: Option<PathBuf>) -> Vec<Finding> {
    let sandbox = &config.kiln.sandbox;
    let ids = sandbox.job_ids();
    let mut findings = Vec::new();
    if let Some(bwrap) = bwrap {
        findings.push(match probe_unprivileged(&bwrap, ids.nth(0)) {
            Ok(()) => Finding::ok("user namespaces", format!("bubblewrap makes a sandbox as uid {}", ids.base)),
            Err(e) => Finding::bad(
                "user namespaces",
                Verdict::Fail,
                e.to_string(),
                "allow unprivileged user namespaces (see the line above)",
            ),
        });
    }
    let clashes = ids.clashes();
    findings.push(match clashes.is_empty() {
        true => Finding::ok("job uids", format!("{}..+{} used by no account", ids.base, ids.count)),
        false => Finding::bad(
            "job uids",
            Verdict::Warn,
            format!("accounts in the range: {}", clashes.join(", ")),
            "move kiln.sandbox.uid_base to a range no account uses",
        ),
    });
    findings.push(match JobCgroups::probe(config.kiln.jobs.cgroup_limits()) {
        Ok(found) => Finding::ok("job cgroups", found),
        Err(e) => Finding::bad(
            "job cgroups",
            if sandbox.require_cgroups { Verdict::Fail } else { Verdict::Warn },
            format!(
                "no cgroup with pids, memory and CPU limits can be made for jobs: {}",
                crate::report::ErrorChain(&e)
            ),
            if sandbox.require_cgroups {
                "give kiln a delegated cgroup (systemd: Delegate=yes), or set kiln.sandbox.require_cgroups = false"
            } else {
                "jobs run without pids, memory and CPU limits (kiln.sandbox.require_cgroups = false)"
            },
        ),
    });
    findings
}

/// Free space where `dir` is (or would be created), against the budget kiln may fill.
fn disk_space(what: &'static str, dir: &Path, budget: u64) -> Finding {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(existing) {
        Err(e) => {
            Finding::bad(what, Verdict::Warn, format!("{}: {e}", existing.display()), "check the path in the config")
        }
        Ok(stat) => {
            // fsblkcnt_t and c_ulong are 32 bits on some targets.
            #[allow(clippy::unnecessary_cast)]
            let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
            let detail = format!("{} free at {} (budget {})", human_bytes(free), dir.display(), human_bytes(budget));
            if free < MIN_FREE_BYTES {
                Finding::bad(what, Verdict::Fail, detail, "free disk space, or point the data dir at a larger disk")
            } else if free < budget {
                Finding::bad(what, Verdict::Warn, detail, "lower the budget in the config, or give kiln a larger disk")
            } else {
                Finding::ok(what, detail)
            }
        }
    }
}

/// `GET /_ping` on the Engine API socket; returns the daemon's API version header.
fn docker_ping(socket: &Path) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("cannot connect: {e}"))?;
    stream.set_read_timeout(Some(DOCKER_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(DOCKER_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(|e| format!("cannot send: {e}"))?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).map_err(|e| format!("no answer: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(format!("the daemon answered {status:?}"));
    }
    let version = answer
        .lines()
        .find_map(|l| l.strip_prefix("Api-Version:").or_else(|| l.strip_prefix("API-Version:")))
        .map(|v| format!("API {}", v.trim()))
        .unwrap_or_else(|| "OK".into());
    Ok(version)
}

/// One line per finding, and whether every required check passed.
pub fn render(findings: &[Finding]) -> (String, bool) {
    let mut out = String::new();
    for f in findings {
        let tag = match f.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!("[{tag}] {:<24} {}\n", f.what, f.detail));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("       {:<24} fix: {fix}\n", ""));
        }
    }
    let passed = findings.iter().all(|f| f.verdict != Verdict::Fail);
    out.push_str(if passed {
        "kiln can run on this host\n"
    } else {
        "kiln cannot run here until the FAIL lines are fixed\n"
    });
    (out, passed)
}
