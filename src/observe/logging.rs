//! Logs on stderr, as text or as one JSON object per line (for log shippers),
//! filtered by `RUST_LOG` or the config's `kiln.log`, reloadable on SIGHUP.
//!
//! Every line logged while a job runs carries the `job` span and its `job_id`:
//! in text as `job{job_id=42}:`, in JSON under `"span"`/`"spans"`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the current span and its parents.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log filter {directive:?}")]
    Filter {
        directive: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("the log filter cannot be changed: {0}")]
    Reload(#[from] reload::Error),
    #[error("installing the logger failed: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
}

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it wins over the config file, reloads too.
    pub from_env: bool,
}

impl LogHandle {
    /// Applies `directive` (ignored while `RUST_LOG` rules). Returns whether it applied.
    pub fn set(&self, directive: &str) -> Result<bool, LogError> {
        if self.from_env {
            return Ok(false);
        }
        let filter = parse(directive)?;
        self.handle.reload(filter)?;
        Ok(true)
    }
}

fn parse(directive: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::try_new(directive).map_err(|source| LogError::Filter { directive: directive.to_owned(), source })
}

/// Installs the global logger: `RUST_LOG` if set, else `default_directive`.
pub fn init(format: LogFormat, default_directive: &str) -> Result<LogHandle, LogError> {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let filter = match &env {
        Some(directive) => parse(directive)?,
        None => parse(default_directive)?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()?,
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true).with_span_list(true).with_writer(std::io::stderr))
            .try_init()?,
    }
    Ok(LogHandle { handle, from_env: env.is_some() })
}
