//! Every failure of a request, with its HTTP status and upstream's JSON body.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::actors::QueueFull;
use crate::jobs::{DuplicateJob, FailureKind, JobError};
use crate::protocol::{AuthError, ErrorBody, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unauthorized")]
    Unauthorized(#[from] AuthError),
    #[error("invalid job id {0:?} in the path: expected an unsigned integer")]
    BadJobId(String),
    #[error("malformed request body")]
    Protocol(#[from] ProtocolError),
    #[error("toolchain refused: {0}")]
    BadToolchain(String),
    #[error("job refused: {0}")]
    BadShape(#[from] crate::jobs::BadShape),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
    #[error(transparent)]
    DuplicateJob(#[from] DuplicateJob),
    #[error(transparent)]
    QueueFull(#[from] QueueFull),
    #[error("job failed")]
    Job(#[from] JobError),
    #[error("kiln's {0} is not running")]
    Unavailable(&'static str),
    #[error(transparent)]
    NotArrived(#[from] crate::toolchains::ArrivalFailed),
    #[error("kiln already holds {limit} bytes of request bodies in memory; retry later")]
    TooManyBodies { limit: u64 },
    #[error(transparent)]
    DiskReserve(#[from] crate::observe::BelowReserve),
    /// The cause, with its whole chain (`report::ErrorChain`), as text.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("no such endpoint")]
    NotFound,
    #[error("cannot answer in any type the request accepts ({0}); this server speaks application/octet-stream (bincode) and application/json")]
    NotAcceptable(String),
    #[error("no certificate for server {0:?}: this scheduler knows only the server it runs in")]
    UnknownServer(String),
    #[error("client authentication failed: {0}")]
    ClientUnauthorized(#[from] crate::scheduler::ClientAuthError),
    #[error(transparent)]
    Draining(#[from] crate::observe::Draining),
    #[error("{0}")]
    Forbidden(&'static str),
}

/// Seconds a client is told to wait before retrying a refused job.
const RETRY_AFTER_SECS: &str = "5";

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) | ApiError::ClientUnauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::BadJobId(_)
            | ApiError::Protocol(_)
            | ApiError::BadToolchain(_)
            | ApiError::BadShape(_)
            | ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::DuplicateJob(_) => StatusCode::CONFLICT,
            ApiError::QueueFull(_)
            | ApiError::Unavailable(_)
            | ApiError::TooManyBodies { .. }
            | ApiError::DiskReserve(_)
            | ApiError::Draining(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Job(e) => match e.kind() {
                FailureKind::BadRequest => StatusCode::BAD_REQUEST,
                FailureKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                FailureKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            // The store the server relies on failed it: a gateway's failure.
            ApiError::NotArrived(e) if e.from == crate::toolchains::Source::Store => StatusCode::BAD_GATEWAY,
            // Another client's upload failed: the next assign_job asks this one.
            ApiError::NotArrived(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotFound | ApiError::UnknownServer(_) => StatusCode::NOT_FOUND,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let body = ErrorBody::from_error(self);
        if matches!(self, ApiError::Draining(_)) {
            tracing::info!(status = status.as_u16(), "request refused: draining");
        } else if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %body.full_description(), "request failed");
        } else {
            tracing::warn!(status = status.as_u16(), error = %body.full_description(), "request refused");
        }
        let mut response = HttpResponse::build(status);
        match self {
            ApiError::Unauthorized(e) => {
                response.insert_header((header::WWW_AUTHENTICATE, e.www_authenticate()));
            }
            ApiError::ClientUnauthorized(e) => {
                response.insert_header((header::WWW_AUTHENTICATE, format!("Bearer error=\"{}\"", e.code())));
            }
            ApiError::QueueFull(_)
            | ApiError::Unavailable(_)
            | ApiError::TooManyBodies { .. }
            | ApiError::DiskReserve(_)
            | ApiError::Draining(_) => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response.json(body)
    }
}

impl From<crate::toolchains::UploadError> for ApiError {
    fn from(e: crate::toolchains::UploadError) -> Self {
        use crate::toolchains::UploadError;
        match e {
            UploadError::Reserve(e) => ApiError::DiskReserve(e),
            UploadError::Mismatch(why) => ApiError::BadToolchain(why),
            UploadError::CacheGone => ApiError::Unavailable("toolchain cache"),
            e @ (UploadError::NoRoom(_) | UploadError::Staging { .. } | UploadError::Cache(_)) => {
                ApiError::Internal(crate::report::ErrorChain(&e).to_string())
            }
        }
    }
}
