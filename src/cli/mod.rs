//! The operator's commands that talk to a running kiln or look at the host:
//! `kiln status` ([`status`]), `kiln gc` ([`gc`]) and `kiln check` ([`check`]).
//! Each returns text for `main.rs` to print; none of them needs root but `check`.

pub mod check;
pub mod gc;
pub mod status;

use std::time::Duration;

use crate::client::{Client, ClientError};
use crate::config::Config;
pub use crate::observe::views::human_bytes;

/// A running kiln answers its operator endpoints within this, or is reported down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("kiln at {url} does not answer: is `kiln serve` running? (or pass --url)")]
    Unreachable {
        url: String,
        #[source]
        source: ClientError,
    },
    #[error("kiln at {url} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("kiln at {url} answered {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    #[error("kiln at {url} answered something that is not its status JSON")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Where a running kiln serves its operator endpoints: `url` if given, else
/// `http://<kiln.metrics_listen>` (loopback when it listens on every address).
pub fn ops_url(config: &Config, url: Option<&str>) -> String {
    if let Some(url) = url {
        return url.trim_end_matches('/').to_owned();
    }
    let mut addr = config.metrics_addr();
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// GETs or POSTs `path` on kiln and decodes its JSON answer.
async fn call<T: serde::de::DeserializeOwned>(base: &str, path: &str, post: bool) -> Result<T, CliError> {
    let client = Client::new(base.to_owned());
    let url = format!("{base}{path}");
    let request = async {
        match post {
            true => client.post_raw(path, None, bytes::Bytes::new()).await,
            false => client.get_raw(path).await,
        }
    };
    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| CliError::Timeout { url: url.clone() })?
        .map_err(|source| CliError::Unreachable { url: url.clone(), source })?;
    if status != 200 {
        return Err(CliError::Refused { url, status, body: String::from_utf8_lossy(&body).into_owned() });
    }
    serde_json::from_slice(&body).map_err(|source| CliError::Decode { url, source })
}
