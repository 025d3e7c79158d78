//! Per-job tokens, as upstream 0.19 makes and checks them (`JWTJobAuthorizer`
//! in `src/dist/http.rs`).
//!
//! The server holds a random key and hands it to the scheduler in every
//! heartbeat; the scheduler signs `{"exp":0,"job_id":N}` with it (HS256) and the
//! client presents that token to us as `Authorization: Bearer <jwt>`. `exp` is
//! not checked as a time (it is always 0), but the claims must equal
//! `{exp: 0, job_id}` exactly, and unknown claims are refused.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::LazyLock;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{JobId, ProtocolError, ServerId, ServerNonce};

/// Length of a [`JobKey`]; upstream uses 256 bits.
pub const JOB_KEY_LEN: usize = 32;

/// Where [`JobKey::generate`] takes its randomness (no `rand` crate in kiln).
const RANDOM_SOURCE: &str = "/dev/urandom";

/// The `error` code of `WWW-Authenticate: Bearer error="..."` on a 401.
/// Upstream answers every job-token failure with this one code.
pub const BEARER_ERROR_INVALID_JWT: &str = "invalid_jwt";

/// The claims of a job token, in upstream's field order (it fixes the JSON).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobClaims {
    exp: u64,
    job_id: JobId,
}

static HEADER: LazyLock<Header> = LazyLock::new(|| Header::new(Algorithm::HS256));

/// Upstream's validation: HS256 only, `exp` required but not compared with the clock.
static VALIDATION: LazyLock<Validation> = LazyLock::new(|| {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation
});

/// The server's secret for job tokens. `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct JobKey([u8; JOB_KEY_LEN]);

impl JobKey {
    /// A fresh random key from the kernel's CSPRNG.
    pub fn generate() -> Result<Self, ProtocolError> {
        let mut key = [0; JOB_KEY_LEN];
        fill_random(&mut key)?;
        Ok(JobKey(key))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        <[u8; JOB_KEY_LEN]>::try_from(bytes)
            .map(JobKey)
            .map_err(|_| ProtocolError::JobKeyLength { len: bytes.len(), expected: JOB_KEY_LEN })
    }

    /// The raw key, for the heartbeat's `jwt_key`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The token the scheduler would issue for `job_id`: deterministic, the
    /// same string upstream produces with the same key.
    pub fn token_for(&self, job_id: JobId) -> Result<String, ProtocolError> {
        let claims = JobClaims { exp: 0, job_id };
        jsonwebtoken::encode(&HEADER, &claims, &EncodingKey::from_secret(&self.0))
            .map_err(|source| ProtocolError::SignToken { source })
    }

    /// Checks the raw `Authorization` header value of a request for `job_id`.
    pub fn verify(&self, authorization: Option<&str>, job_id: JobId) -> Result<(), AuthError> {
        let header = authorization.ok_or(AuthError::MissingHeader)?;
        // Upstream splits at the first space and wants exactly `Bearer`.
        let token = match header.split_once(' ') {
            Some(("Bearer", token)) => token,
            _ => return Err(AuthError::NotBearer),
        };
        let claims = jsonwebtoken::decode::<JobClaims>(token, &DecodingKey::from_secret(&self.0), &VALIDATION)
            .map_err(AuthError::InvalidToken)?
            .claims;
        if claims.job_id != job_id {
            return Err(AuthError::WrongJob { expected: job_id, claimed: claims.job_id });
        }
        if claims.exp != 0 {
            return Err(AuthError::UnexpectedExpiry { exp: claims.exp });
        }
        Ok(())
    }
}

fn fill_random(bytes: &mut [u8]) -> Result<(), ProtocolError> {
    File::open(RANDOM_SOURCE)
        .and_then(|mut source| source.read_exact(bytes))
        .map_err(|source| ProtocolError::Random { path: RANDOM_SOURCE, source })
}

impl ServerNonce {
    /// A fresh nonce per process start: a new one tells the scheduler this
    /// server restarted and the jobs it had assigned here are gone.
    pub fn generate() -> Result<Self, ProtocolError> {
        let mut bytes = [0; 8];
        fill_random(&mut bytes)?;
        Ok(ServerNonce(u64::from_le_bytes(bytes)))
    }
}

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobKey(<redacted>)")
    }
}

/// Why a request's job token was refused. All answer `401` with
/// `WWW-Authenticate: Bearer error="invalid_jwt"` and an
/// [`ErrorBody`](super::ErrorBody) carrying the `Display` text, as upstream does.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Upstream's wording, kept for whoever greps client logs.
    #[error("no Authorization header")]
    MissingHeader,

    #[error("Authorization header is not a Bearer token")]
    NotBearer,

    /// Bad signature, wrong algorithm, garbage, or claims of the wrong shape.
    #[error("JWT decode failed: {0}")]
    InvalidToken(jsonwebtoken::errors::Error),

    #[error("mismatched claims: token is for job {claimed}, not job {expected}")]
    WrongJob { expected: JobId, claimed: JobId },

    #[error("mismatched claims: token has exp {exp}, expected 0")]
    UnexpectedExpiry { exp: u64 },
}

impl AuthError {
    /// The `error` code for the `WWW-Authenticate` header. Upstream uses one
    /// code for every case (the sccache client ignores the header; the
    /// detail travels in the body).
    pub const fn bearer_error(&self) -> &'static str {
        BEARER_ERROR_INVALID_JWT
    }

    /// The whole `WWW-Authenticate` header value.
    pub fn www_authenticate(&self) -> String {
        format!("Bearer error=\"{}\"", self.bearer_error())
    }
}

/// The claims of a server JWT (`scheduler_auth = { type = "jwt_token" }`), as
/// `sccache-dist auth generate-jwt-hs256-server-token` makes them.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerClaims {
    exp: u64,
    server_id: ServerId,
}

/// Signs a server JWT for `server_id` with the scheduler's secret, as upstream does.
pub fn jwt_server_token(secret: &[u8], server_id: ServerId) -> Result<String, ProtocolError> {
    jsonwebtoken::encode(&HEADER, &ServerClaims { exp: 0, server_id }, &EncodingKey::from_secret(secret))
        .map_err(|source| ProtocolError::SignToken { source })
}

/// The server address a server JWT claims, read without the scheduler's secret
/// (which the server never has), so a config can be checked against `public_addr`
/// as upstream checks it.
pub fn server_id_of_jwt(token: &str) -> Result<SocketAddr, jsonwebtoken::errors::Error> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    validation.insecure_disable_signature_validation();
    let claims = jsonwebtoken::decode::<ServerClaims>(token, &DecodingKey::from_secret(b"unused"), &validation)?.claims;
    Ok(claims.server_id.addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_jwt_names_its_server() {
        let addr: SocketAddr = "10.1.2.3:10501".parse().unwrap();
        let token = jwt_server_token(b"scheduler secret", ServerId(addr)).unwrap();
        assert_eq!(server_id_of_jwt(&token).unwrap(), addr);
        assert!(server_id_of_jwt("not.a.jwt").is_err());
    }

    fn key(byte: u8) -> JobKey {
        JobKey::from_bytes(&[byte; JOB_KEY_LEN]).unwrap()
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn token_round_trip_and_determinism() {
        let key = key(1);
        let token = key.token_for(JobId(55)).unwrap();
        assert_eq!(token, key.token_for(JobId(55)).unwrap());
        key.verify(Some(&bearer(&token)), JobId(55)).unwrap();
    }

    #[test]
    fn token_has_upstream_header_and_claims() {
        let token = key(1).token_for(JobId(55)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        // base64url of {"typ":"JWT","alg":"HS256"} and {"exp":0,"job_id":55}.
        assert_eq!(parts[0], "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9");
        assert_eq!(parts[1], "eyJleHAiOjAsImpvYl9pZCI6NTV9");
    }

    #[test]
    fn wrong_job_is_refused() {
        let key = key(1);
        let token = key.token_for(JobId(56)).unwrap();
        assert!(matches!(
            key.verify(Some(&bearer(&token)), JobId(55)),
            Err(AuthError::WrongJob { expected: JobId(55), claimed: JobId(56) })
        ));
    }

    #[test]
    fn other_key_is_refused() {
        let token = key(1).token_for(JobId(55)).unwrap();
        let err = key(2).verify(Some(&bearer(&token)), JobId(55)).unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken(_)), "{err}");
        assert_eq!(err.to_string(), "JWT decode failed: InvalidSignature");
    }

    #[test]
    fn malformed_headers_are_refused() {
        let key = key(1);
        let token = key.token_for(JobId(1)).unwrap();
        assert!(matches!(key.verify(None, JobId(1)), Err(AuthError::MissingHeader)));
        for header in [token.clone(), format!("bearer {token}"), format!("Basic {token}"), "Bearer".to_string()] {
            assert!(matches!(key.verify(Some(&header), JobId(1)), Err(AuthError::NotBearer)), "{header}");
        }
        for header in ["Bearer ", "Bearer garbage", "Bearer a.b.c", &format!("Bearer  {token}")] {
            assert!(matches!(key.verify(Some(header), JobId(1)), Err(AuthError::InvalidToken(_))), "{header}");
        }
    }

    #[test]
    fn claims_must_match_exactly() {
        let key = key(1);
        let secret = EncodingKey::from_secret(key.as_bytes());
        let sign = |claims: &serde_json::Value| jsonwebtoken::encode(&HEADER, claims, &secret).unwrap();

        let later = sign(&serde_json::json!({"exp": 4_000_000_000u64, "job_id": 1}));
        assert!(matches!(
            key.verify(Some(&bearer(&later)), JobId(1)),
            Err(AuthError::UnexpectedExpiry { exp: 4_000_000_000 })
        ));
        let extra = sign(&serde_json::json!({"exp": 0, "job_id": 1, "admin": true}));
        assert!(matches!(key.verify(Some(&bearer(&extra)), JobId(1)), Err(AuthError::InvalidToken(_))));
        let no_exp = sign(&serde_json::json!({"job_id": 1}));
        assert!(matches!(key.verify(Some(&bearer(&no_exp)), JobId(1)), Err(AuthError::InvalidToken(_))));
        // exp = 0 lies in 1970, yet is accepted: upstream does not check it.
        let upstream = sign(&serde_json::json!({"exp": 0, "job_id": 1}));
        key.verify(Some(&bearer(&upstream)), JobId(1)).unwrap();
    }

    #[test]
    fn other_algorithms_are_refused() {
        let key = key(1);
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &JobClaims { exp: 0, job_id: JobId(1) },
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap();
        assert!(matches!(key.verify(Some(&bearer(&token)), JobId(1)), Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn www_authenticate_value() {
        assert_eq!(AuthError::MissingHeader.www_authenticate(), "Bearer error=\"invalid_jwt\"");
    }

    #[test]
    fn key_construction_and_debug() {
        let a = JobKey::generate().unwrap();
        let b = JobKey::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), JOB_KEY_LEN);
        assert_eq!(JobKey::from_bytes(a.as_bytes()).unwrap(), a);
        assert!(matches!(JobKey::from_bytes(&[0; 31]), Err(ProtocolError::JobKeyLength { len: 31, expected: 32 })));
        assert_eq!(format!("{:?}", key(0xAB)), "JobKey(<redacted>)");
    }
}
