//! Errors of the wire layer: encoding, decoding, framing and the byte-level
//! checks that come with them. Authentication failures have their own type,
//! [`AuthError`](super::AuthError), because they map to a different HTTP answer.

use std::io;

/// A step of the wire protocol that failed.
///
/// Every decoding variant means "the peer sent bytes we will not accept": the
/// HTTP layer answers those with a 4xx, and retrying the same bytes cannot help.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("failed to encode {what} as bincode")]
    Encode {
        what: &'static str,
        #[source]
        source: bincode::Error,
    },

    #[error("{what} body of {len} bytes is larger than the limit of {limit} bytes")]
    BodyTooLarge { what: &'static str, len: u64, limit: u64 },

    #[error("failed to decode {what} from bincode")]
    Decode {
        what: &'static str,
        #[source]
        source: bincode::Error,
    },

    #[error("{count} unexpected bytes after the bincode {what}")]
    TrailingBytes { what: &'static str, count: usize },

    #[error("run_job body of {len} bytes is too short for its 4-byte length prefix")]
    RunJobPrefixTruncated { len: usize },

    #[error("run_job request header of {len} bytes is larger than the limit of {limit} bytes")]
    RunJobHeaderTooLarge { len: u64, limit: u64 },

    #[error("run_job prefix declares a {declared}-byte request header but only {available} bytes follow")]
    RunJobHeaderTruncated { declared: u32, available: usize },

    #[error("failed to zlib-compress output data")]
    Compress {
        #[source]
        source: io::Error,
    },

    #[error("output data declares {declared} uncompressed bytes, more than the limit of {limit}")]
    OutputTooLarge { declared: u64, limit: u64 },

    #[error("failed to zlib-decompress output data")]
    Decompress {
        #[source]
        source: io::Error,
    },

    #[error("output data declares {declared} uncompressed bytes but holds {actual}")]
    OutputLengthMismatch { declared: u64, actual: u64 },

    #[error("job key must be {expected} bytes, got {len}")]
    JobKeyLength { len: usize, expected: usize },

    #[error("failed to read random bytes from {path}")]
    Random {
        path: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("failed to sign a job token")]
    SignToken {
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}
