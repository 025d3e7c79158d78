//! Request bodies, bounded in bytes and in time.
//!
//! actix-web's `PayloadConfig` does not bound a raw `Payload` stream and its
//! request timeout covers only the head, so both bounds are enforced here.

use std::time::Duration;

use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::ApiError;

/// Reads a body chunk by chunk, failing past `limit` bytes or after `deadline`.
pub struct BoundedBody {
    payload: web::Payload,
    declared: Option<u64>,
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
        Ok(BoundedBody { payload, declared, limit, read: 0, deadline: Instant::now() + timeout, timeout })
    }

    /// The body's size as far as it is known before reading: its Content-Length,
    /// else the limit.
    pub fn expected_len(&self) -> u64 {
        self.declared.unwrap_or(self.limit)
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

    pub async fn read_all(mut self) -> Result<Bytes, ApiError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}
