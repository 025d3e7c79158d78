//! The sccache-dist build-server protocol of sccache 0.19.0: wire types, the
//! bincode codec and `run_job` framing, and per-job tokens.
//!
//! Pure data and byte handling: nothing here knows about HTTP servers,
//! sandboxes or toolchain storage, so every other module can depend on it.
//!
//! - `types`: the serde types, in upstream's field and variant order.
//! - `codec`: the only caller of bincode; limits; `run_job` body framing.
//! - `auth`: the HS256 job tokens (`Authorization: Bearer`) and server JWTs.
//! - `error`: [`ProtocolError`].

mod auth;
mod codec;
mod error;
mod types;

pub use auth::{jwt_server_token, server_id_of_jwt, AuthError, JobKey, BEARER_ERROR_INVALID_JWT, JOB_KEY_LEN};
pub use codec::{
    decode, encode, frame_run_job_body, split_run_job_body, BINCODE_CONTENT_TYPE, MAX_RUN_JOB_HEADER, MAX_SMALL_MESSAGE,
};
pub use error::ProtocolError;
pub use types::{
    archive_id_of, is_valid_archive_id, AllocJobHttpResponse, ArchiveCheck, ArchiveHasher, ArchiveMismatch,
    AssignJobResult, CompileCommand, Endpoint, ErrorBody, HeartbeatServerHttpRequest, HeartbeatServerResult, JobAlloc,
    JobComplete, JobId, JobState, OutputData, ProcessOutput, RunJobHttpRequest, RunJobResult, SchedulerStatusResult,
    ServerCertificateHttpResponse, ServerId, ServerNonce, SubmitToolchainResult, Toolchain, UpdateJobStateResult,
    ARCHIVE_ID_LEN, DISTSERVER_PREFIX,
};
