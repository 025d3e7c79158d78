//! Request bodies, bounded in bytes and in time.
//!
//! actix-web's `PayloadConfig` does not bound a raw `Payload` stream and its
//! request timeout covers only the head, so both bounds are enforced here.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::ApiError;

/// Reads a body chunk by chunk, failing past `limit` bytes or after `deadline`.
pub struct BoundedBody {
    payload: web::Payload,
    limit: u64,
    read: u64,
    deadline: Instant,
    timeout: Duration,
}

impl BoundedBody {
    /// Refuses at once a body whose declared length is over the limit.
    pub fn new(req: &HttpRequest, payload: web::Payload, limit: u64, timeout: Duration) -> Result<Self, ApiError> {
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        Ok(BoundedBody { payload, limit, read: 0, deadline: Instant::now() + timeout, timeout })
    }

    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        let chunk = tokio::time::timeout_at(self.deadline, self.payload.next())
            .await
            .map_err(|_| ApiError::BodyTimeout(self.timeout))?;
        let Some(chunk) = chunk else { return Ok(None) };
        let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        self.read += chunk.len() as u64;
        if self.read > self.limit {
            return Err(ApiError::PayloadTooLarge { limit: self.limit });
        }
        Ok(Some(chunk))
    }

    /// Reads and drops the rest of the body. Clients send the whole body before
    /// they read the answer, so an answer given early must still consume it.
    pub async fn discard(mut self) -> Result<(), ApiError> {
        while self.next_chunk().await?.is_some() {}
        Ok(())
    }

    /// Reads the body into memory, taking its bytes from `budget` as they arrive
    /// (not as declared: a client that declares much and sends little holds
    /// little). Past the budget the rest is discarded and the answer is 503.
    pub async fn read_all_within(mut self, budget: &BodyBudget) -> Result<(Bytes, HeldBytes), ApiError> {
        let mut body = BytesMut::new();
        let mut held = HeldBytes { permit: None, kib: 0 };
        while let Some(chunk) = self.next_chunk().await? {
            body.extend_from_slice(&chunk);
            let needed = kib(body.len() as u64) - held.kib;
            if needed == 0 {
                continue;
            }
            let Ok(more) = budget.permits.clone().try_acquire_many_owned(needed) else {
                drop((body, held)); // nothing kept while the rest is read and dropped
                self.discard().await?;
                return Err(ApiError::TooManyBodies { limit: budget.limit });
            };
            held.kib += needed;
            match &mut held.permit {
                Some(permit) => permit.merge(more),
                None => held.permit = Some(more),
            }
        }
        Ok((body.freeze(), held))
    }

    pub async fn read_all(mut self) -> Result<Bytes, ApiError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// Request-body bytes that may be held in memory at once, across all requests
/// (`kiln.jobs.max_buffered_request_bytes`).
#[derive(Debug, Clone)]
pub struct BodyBudget {
    /// One permit per KiB (a u32 count of bytes would cap at 4 GiB).
    permits: Arc<Semaphore>,
    limit: u64,
}

impl BodyBudget {
    pub fn new(limit: u64) -> Self {
        BodyBudget { permits: Arc::new(Semaphore::new(kib(limit) as usize)), limit }
    }
}

/// Bytes of a [`BodyBudget`] one body holds; given back on drop.
#[derive(Debug)]
pub struct HeldBytes {
    permit: Option<OwnedSemaphorePermit>,
    kib: u32,
}

fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}
