//! Claims: single flight across a farm (issue 23).
//!
//! A kiln about to ask its client for a toolchain the store lacks first writes a
//! claim beside where the archive will go, `<archive_id>.claim`, created only if
//! absent (`O_EXCL` on a directory, `If-None-Match: *` on an object store). The
//! other kilns that find the claim live do not ask their clients: their jobs wait
//! for the claimant's publish, polling the store. The claimant refreshes its claim
//! while the upload is under way and removes it once the archive is published (or
//! the upload failed); a claimant that died stops refreshing, and its claim
//! expires after [`CLAIM_TTL`], after which the waiting jobs fail (their clients
//! compile locally) and the next job asks its client again.
//!
//! A claim is `kiln-claim 1 <expires, ms since the epoch> <holder>`: the kilns of
//! a farm compare its expiry with their own clocks, which must agree to within a
//! few seconds (NTP). Whoever can write the store can write claims too: the worst
//! a planted claim does is make jobs wait up to its expiry (capped at
//! [`CLAIM_TTL`] from when it was read) and then compile locally.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::farm::{FetchFailed, ToolchainStore, LOOKUP_WAIT};
use crate::report::ErrorChain;
use crate::stats::Stats;
use crate::store::StoreError;

/// How long a claim lives unless refreshed.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How often the claimant refreshes it.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How often a kiln waiting for another's publish looks at the store.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long after creating a claim it is read back (see [`ToolchainStore::claim`]).
const CLAIM_SETTLE: Duration = Duration::from_millis(100);
/// A claim is a short line; anything longer is not one.
const MAX_CLAIM_BYTES: u64 = 512;

/// What [`ToolchainStore::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This kiln holds the claim (or the store could not be asked): ask the client.
    Ours,
    /// Another kiln is receiving it: wait for its publish.
    Theirs { holder: String },
    /// The archive was published meanwhile: fetch it.
    Published,
}

/// The claims this kiln holds, and who it is in them.
pub(super) struct Claims {
    held: Mutex<HashSet<String>>,
    /// Unique per process: host name, pid, start time.
    holder: String,
}

impl Claims {
    pub(super) fn new() -> Claims {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
        let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        Claims { held: Mutex::default(), holder: format!("{host}/{}/{started}", std::process::id()) }
    }
}

fn claim_name(archive_id: &str) -> String {
    format!("{archive_id}.claim")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// A claim's text, live for [`CLAIM_TTL`] from now.
fn record(holder: &str) -> Vec<u8> {
    format!("kiln-claim 1 {} {holder}\n", now_ms() + CLAIM_TTL.as_millis() as u64).into_bytes()
}

/// `(expires_ms, holder)` of a claim's text; `None` when it is not a claim (an
/// unreadable claim counts as expired, so it cannot block the farm). No kiln
/// writes an expiry more than [`CLAIM_TTL`] ahead: one further out (planted, or
/// a clock far off) is no claim either.
fn parse(text: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut words = text.split_whitespace();
    if (words.next(), words.next()) != (Some("kiln-claim"), Some("1")) {
        return None;
    }
    let expires: u64 = words.next()?.parse().ok()?;
    let latest = now_ms() + (CLAIM_TTL + CLOCK_SLACK).as_millis() as u64;
    (expires <= latest).then_some((expires, words.next()?.to_owned()))
}

/// How far another kiln's clock may run ahead of this one's.
const CLOCK_SLACK: Duration = Duration::from_secs(5);

impl ToolchainStore {
    /// Claims `archive_id` for this kiln before it asks a client for it. While
    /// `receiving()` says the upload is still on its way (or its publish runs),
    /// the claim is refreshed. A store that fails or does not answer within
    /// [`LOOKUP_WAIT`] yields [`ClaimOutcome::Ours`]: the client is asked, as
    /// without claims.
    pub async fn claim(
        self: &Arc<Self>,
        archive_id: &str,
        receiving: impl Fn() -> bool + Send + 'static,
    ) -> ClaimOutcome {
        let tried = tokio::time::timeout(LOOKUP_WAIT, self.try_claim(archive_id)).await;
        let outcome = match tried.unwrap_or(Err(StoreError::TimedOut(LOOKUP_WAIT))) {
            Ok(outcome) => outcome,
            Err(e) => {
                Stats::bump(&self.stats.toolchain_store_failures);
                let error = ErrorChain(&e);
                tracing::warn!(%archive_id, store = %self.location, %error, "claiming a toolchain in the store failed; asking the client");
                return ClaimOutcome::Ours;
            }
        };
        if outcome == ClaimOutcome::Ours {
            crate::sync::lock(&self.claims.held).insert(archive_id.to_owned());
            self.keep_claim(archive_id, receiving);
        }
        outcome
    }

    async fn try_claim(&self, archive_id: &str) -> Result<ClaimOutcome, StoreError> {
        let name = claim_name(archive_id);
        let holder = &self.claims.holder;
        for _ in 0..2 {
            if self.backend.create(&name, record(holder)).await? {
                // Read back after a moment: a store whose create-if-absent checks and
                // then writes (s3s-fs does) lets two kilns both create; the last
                // write stands, and only its writer goes on.
                tokio::time::sleep(CLAIM_SETTLE).await;
                let standing = self.backend.read_small(&name, MAX_CLAIM_BYTES).await?;
                if let Some((_, theirs)) = standing.as_deref().and_then(parse).filter(|(_, h)| h != holder) {
                    return Ok(ClaimOutcome::Theirs { holder: theirs });
                }
                // Published between this kiln's lookup and its claim: nothing to send.
                let published = self.backend.lookup(archive_id).await?;
                if published.is_some_and(|size| size <= self.limits.max_bytes) {
                    self.backend.remove(&name).await?;
                    return Ok(ClaimOutcome::Published);
                }
                return Ok(ClaimOutcome::Ours);
            }
            match self.backend.read_small(&name, MAX_CLAIM_BYTES).await?.as_deref().and_then(parse) {
                Some((expires, theirs)) if expires > now_ms() && theirs != *holder => {
                    return Ok(ClaimOutcome::Theirs { holder: theirs });
                }
                // Expired, unreadable, gone meanwhile, or a stale one of ours: take it over.
                _ => match self.backend.remove(&name).await {
                    Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                    other => other?,
                },
            }
        }
        // Two kilns took over the same expired claim at once; the other won.
        Ok(ClaimOutcome::Theirs { holder: "another kiln".into() })
    }

    /// Refreshes the claim on `archive_id` every [`REFRESH_EVERY`] while it is held
    /// and `receiving()`; removes it when the upload ended without a publish.
    fn keep_claim(self: &Arc<Self>, archive_id: &str, receiving: impl Fn() -> bool + Send + 'static) {
        let (store, id) = (self.clone(), archive_id.to_owned());
        actix::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                if !crate::sync::lock(&store.claims.held).contains(&id) {
                    return; // Released by the publish.
                }
                if !receiving() {
                    store.release_claim(&id).await;
                    return;
                }
                if let Err(e) = store.backend.overwrite(&claim_name(&id), record(&store.claims.holder)).await {
                    tracing::warn!(archive_id = %id, error = %ErrorChain(&e), "refreshing a claim in the store failed");
                }
            }
        });
    }

    /// Removes this kiln's claim on `archive_id`, if it holds one.
    pub(super) async fn release_claim(&self, archive_id: &str) {
        if !crate::sync::lock(&self.claims.held).remove(archive_id) {
            return;
        }
        if let Err(e) = self.backend.remove(&claim_name(archive_id)).await {
            tracing::warn!(%archive_id, error = %ErrorChain(&e), "removing a claim from the store failed; it expires");
        }
    }

    /// Waits (at most `limit`) for another kiln's publish of `archive_id`, then
    /// fetches it into the cache. Fails once the claim is gone or expired with
    /// nothing published: that kiln's upload failed, or it died.
    pub async fn published_by_other(self: &Arc<Self>, archive_id: &str, limit: Duration) -> Result<(), FetchFailed> {
        let failed = |reason: String| FetchFailed { archive_id: archive_id.to_owned(), reason };
        let deadline = tokio::time::Instant::now() + limit;
        let name = claim_name(archive_id);
        // A live claimant rewrites its claim every REFRESH_EVERY; one that has not
        // changed for CLAIM_TTL (by this kiln's clock) is dead, whatever it says.
        let mut last_seen: Option<(Vec<u8>, tokio::time::Instant)> = None;
        loop {
            let found = self.backend.lookup(archive_id).await.map_err(|e| failed(ErrorChain(&e).to_string()))?;
            if found.is_some() {
                self.start_fetch(archive_id);
                return self.fetched(archive_id).await;
            }
            let claim = self.backend.read_small(&name, MAX_CLAIM_BYTES).await;
            let claim = claim.map_err(|e| failed(ErrorChain(&e).to_string()))?;
            let now = tokio::time::Instant::now();
            let unchanged_since = match (&last_seen, &claim) {
                (Some((text, since)), Some(current)) if text == current => *since,
                _ => now,
            };
            last_seen = claim.clone().map(|text| (text, unchanged_since));
            match claim.as_deref().and_then(parse) {
                Some((_, holder)) if now.duration_since(unchanged_since) > CLAIM_TTL => {
                    return Err(failed(format!("the claim of the kiln receiving it ({holder}) was not refreshed")));
                }
                Some((expires, _)) if expires > now_ms() => {}
                Some((_, holder)) => {
                    return Err(failed(format!("the kiln receiving it ({holder}) stopped refreshing its claim")));
                }
                // A last look: the publish may have landed just before the claim went.
                None if self.backend.lookup(archive_id).await.ok().flatten().is_some() => continue,
                None => return Err(failed("the kiln receiving it did not publish it".into())),
            }
            if tokio::time::Instant::now() + POLL_EVERY > deadline {
                return Err(failed(format!("no kiln published it within {limit:?}")));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_reads_back_and_junk_is_no_claim() {
        let (expires, holder) = parse(&record("host/1/2")).unwrap();
        assert_eq!(holder, "host/1/2");
        assert!(expires > now_ms() && expires <= now_ms() + CLAIM_TTL.as_millis() as u64);
        assert_eq!(parse(b"kiln-claim 2 1 x"), None);
        assert_eq!(parse(b"\xff\xfe"), None);
        assert_eq!(parse(b"kiln-claim 1 soon x"), None);
    }
}
