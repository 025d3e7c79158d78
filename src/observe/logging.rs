//! Logs on stderr, as text or as one JSON object per line (for log shippers),
//! filtered by `RUST_LOG` or the config's `kiln.log`, reloadable on SIGHUP.
//!
//! Every line logged while a job runs carries the `job` span and its `job_id`:
//! in text as `job{job_id=42}:`, in JSON under `"span"`/`"spans"`.
//!
//! Log lines carry what clients sent (an executable, a path in an error), so in
//! text every control character in a field is escaped (`\n`, `\u{1b}`): a
//! client cannot forge a line or send escape sequences to an operator's
//! terminal. JSON escapes them by itself.

use tracing_subscriber::field::MakeExt;
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
        LogFormat::Text => {
            // Colours only on a terminal: a journal or a file gets plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            registry
                .with(fmt::layer().fmt_fields(escaped_fields()).with_ansi(ansi).with_writer(std::io::stderr))
                .try_init()?
        }
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true).with_span_list(true).with_writer(std::io::stderr))
            .try_init()?,
    }
    Ok(LogHandle { handle, from_env: env.is_some() })
}

/// Fields as tracing's default text format writes them (`message` bare, others
/// `name=value`), with control characters escaped.
fn escaped_fields() -> impl for<'w> fmt::FormatFields<'w> + Send + Sync + 'static {
    fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        match field.name() {
            "message" => writer.write_str(&escape_controls(&text)),
            name => write!(writer, "{}={}", name.trim_start_matches("r#"), escape_controls(&text)),
        }
    })
    .delimited(" ")
}

/// `text` with every control character (C0, DEL, C1) and every bidirectional
/// override escaped as Rust writes it (`\n`, `\u{1b}`); borrowed when clean.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_clean_text_is_borrowed() {
        assert!(matches!(escape_controls("gcc -c a.c"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\nINFO forged"), "a\\nINFO forged");
        assert_eq!(escape_controls("\u{1b}]0;title\u{7}"), "\\u{1b}]0;title\\u{7}");
        assert_eq!(escape_controls("\r\t\u{7f}\u{85}\u{202e}"), "\\r\\t\\u{7f}\\u{85}\\u{202e}");
        assert_eq!(escape_controls("héllo ✓"), "héllo ✓");
    }
}
