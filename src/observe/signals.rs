//! The signals `kiln serve` answers once it is up:
//!
//! - SIGTERM / SIGINT: drain (`/healthz` 503, the scheduler left as
//!   `kiln.drain_mode` says), wait for the jobs in flight and for the scheduler
//!   to place no more, up to `kiln.drain_timeout_secs`, then stop the HTTP
//!   servers; a second SIGTERM/SIGINT stops at once.
//! - SIGHUP: re-read the config file. Only `kiln.log_level` applies to the running
//!   server (and only while `RUST_LOG` is unset); any other change is logged as
//!   needing a restart.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use tokio::signal::unix::{signal, Signal, SignalKind};

use futures_util::future::LocalBoxFuture;

use super::lifecycle::{Lifecycle, Release};
use super::logging::LogHandle;
use crate::config::{Config, DrainMode};
use crate::report::ErrorChain;

/// What SIGHUP needs: where the config came from, the `--set` overrides to apply
/// over it again, and the log filter to change.
#[derive(Clone, Default)]
pub struct Reload {
    pub config_path: Option<PathBuf>,
    pub overrides: Vec<crate::config_overrides::Override>,
    pub log: Option<LogHandle>,
}

/// The signal handlers, installed before kiln says it listens (from then on a
/// SIGTERM drains instead of killing the process).
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// How a draining kiln hands off to what places jobs on it (upstream's
/// scheduler), with `drain_mode = "handoff"`; resolves to when the drain may end.
/// `None`: nothing to hand off to (kiln's own scheduler stops placing as soon as
/// the drain begins).
pub type Leave = Box<dyn FnOnce() -> LocalBoxFuture<'static, Release>>;

/// Answers signals until a shutdown completes; returns after the servers stopped.
pub async fn run(
    signals: Signals,
    lifecycle: Arc<Lifecycle>,
    servers: Vec<ServerHandle>,
    mut config: Config,
    reload: Reload,
    leave: Option<Leave>,
) {
    let Signals { mut term, mut int, mut hup } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => config = reload_config(config, &reload).await,
        }
    }
    let (timeout, mode) = (config.kiln.drain_timeout(), config.kiln.drain_mode);
    let deadline = tokio::time::Instant::now() + timeout;
    let leave = leave.filter(|_| mode != DrainMode::Refuse);
    lifecycle.begin_drain(leave.is_none());
    tracing::info!(in_flight = lifecycle.in_flight(), timeout_secs = timeout.as_secs(), ?mode, "draining");
    let drain = async {
        let release = match leave {
            Some(leave) => tokio::time::timeout_at(deadline, leave()).await.unwrap_or_else(|_| Release::now()),
            None => Release::now(),
        };
        lifecycle.drained(release, deadline).await
    };
    let drained = tokio::select! {
        left = drain => left,
        _ = term.recv() => lifecycle.in_flight(),
        _ = int.recv() => lifecycle.in_flight(),
    };
    if drained == 0 {
        tracing::info!(
            assigned_while_draining = lifecycle.assigned_draining(),
            "drained: every job in flight was answered; stopping"
        );
    } else {
        tracing::warn!(abandoned = drained, "stopping with jobs still in flight");
    }
    // Graceful: the HTTP servers finish writing the answers they hold.
    futures_util::future::join_all(servers.iter().map(|server| server.stop(drained == 0))).await;
}

async fn reload_config(current: Config, reload: &Reload) -> Config {
    let Some(path) = &reload.config_path else {
        tracing::info!("SIGHUP: kiln runs on its built-in defaults (no --config); nothing to reload");
        return current;
    };
    let (path, overrides) = (path.clone(), reload.overrides.clone());
    let loaded = tokio::task::spawn_blocking(move || crate::config_overrides::load(Some(&path), &overrides)).await;
    let new = match loaded {
        Ok(Ok(new)) => new,
        Ok(Err(e)) => {
            tracing::error!(error = %ErrorChain(&e), "SIGHUP: the config file is invalid; keeping the running config");
            return current;
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: reading the config failed");
            return current;
        }
    };
    if let Some(log) = &reload.log {
        match log.set(&new.kiln.log_level) {
            Ok(true) => tracing::info!(log_level = %new.kiln.log_level, "SIGHUP: log level applied"),
            Ok(false) => tracing::info!("SIGHUP: RUST_LOG is set, it keeps deciding the log level"),
            Err(e) => tracing::error!(error = %ErrorChain(&e), "SIGHUP: log level not applied"),
        }
    }
    let mut comparable = new.clone();
    comparable.kiln.log_level = current.kiln.log_level.clone();
    comparable.kiln.drain_timeout_secs = current.kiln.drain_timeout_secs;
    comparable.kiln.drain_mode = current.kiln.drain_mode;
    // The running config holds bubblewrap's resolved path, the file its bare name.
    if let crate::config::Backend::Overlay { bwrap_path } = current.backend() {
        comparable.set_bwrap_path(bwrap_path);
    }
    if format!("{comparable:?}") != format!("{current:?}") {
        tracing::warn!("SIGHUP: settings other than kiln.log_level, kiln.drain_timeout_secs and kiln.drain_mode changed; they apply at the next restart");
    }
    // The drain timeout is read at shutdown, so it takes effect too.
    let mut running = current;
    running.kiln.log_level = new.kiln.log_level;
    running.kiln.drain_timeout_secs = new.kiln.drain_timeout_secs;
    running.kiln.drain_mode = new.kiln.drain_mode;
    running
}
