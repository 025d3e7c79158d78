//! The wire types of the build-server side of sccache-dist, as sccache 0.19.0
//! encodes them (`src/dist/mod.rs` and `src/dist/http.rs` upstream).
//!
//! With bincode 1 the field order and the enum variant order *are* the format:
//! never reorder fields or variants here, and add new types rather than fields.

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::str::FromStr;

use flate2::read::{ZlibDecoder, ZlibEncoder};
use flate2::Compression;
use serde::{Deserialize, Deserializer, Serialize};

use super::ProtocolError;

/// Prefix of every build-server endpoint; upstream clients build exactly
/// `https://<public_addr>/api/v1/distserver/<endpoint>/<job_id>`.
pub const DISTSERVER_PREFIX: &str = "/api/v1/distserver";

/// The build-server endpoints. All are `POST` and carry the job token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// From the scheduler; body: bincode [`Toolchain`]; answer: [`AssignJobResult`].
    AssignJob,
    /// From the client; body: the raw toolchain archive; answer: [`SubmitToolchainResult`].
    SubmitToolchain,
    /// From the client; body: see [`split_run_job_body`](super::split_run_job_body);
    /// answer: [`RunJobResult`].
    RunJob,
}

impl Endpoint {
    /// The path segment naming the endpoint, e.g. `assign_job`.
    pub const fn name(self) -> &'static str {
        match self {
            Endpoint::AssignJob => "assign_job",
            Endpoint::SubmitToolchain => "submit_toolchain",
            Endpoint::RunJob => "run_job",
        }
    }

    /// The full request path for `job_id`, e.g. `/api/v1/distserver/run_job/7`.
    pub fn path(self, job_id: JobId) -> String {
        format!("{DISTSERVER_PREFIX}/{}/{job_id}", self.name())
    }
}

/// A job id chosen by the scheduler: a bare `u64` on the wire (newtype), decimal in URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(JobId)
    }
}

/// Length of an archive id: a BLAKE3 digest written as hex.
pub const ARCHIVE_ID_LEN: usize = 64;

/// A toolchain, named by the archive id of its compressed archive.
///
/// Like upstream 0.19, decoding rejects an archive id that is not 64 hex digits
/// and lower-cases it: the id becomes a file and directory name on the server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toolchain {
    #[serde(deserialize_with = "deserialize_archive_id")]
    pub archive_id: String,
}

fn deserialize_archive_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let archive_id = String::deserialize(deserializer)?;
    if is_valid_archive_id(&archive_id) {
        Ok(archive_id.to_ascii_lowercase())
    } else {
        Err(serde::de::Error::custom(format_args!(
            "archive id of {} bytes is not {ARCHIVE_ID_LEN} hex digits",
            archive_id.len()
        )))
    }
}

/// Whether `id` is acceptable as an archive id: exactly 64 hex digits of either
/// case, the check upstream 0.19 makes with `blake3::Hash::from_hex`.
pub fn is_valid_archive_id(id: &str) -> bool {
    id.len() == ARCHIVE_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The archive id the sccache client computes for `archive` (the compressed bytes).
pub fn archive_id_of(archive: &[u8]) -> String {
    let mut hasher = ArchiveHasher::new();
    hasher.update(archive);
    hasher.finish()
}

/// Computes an archive id over a stream of chunks (e.g. a body being uploaded).
///
/// sccache's hex writer (`util::hex`) emits the **low nibble of each byte first**,
/// so its ids are not the usual BLAKE3 hex: `blake3("")` starts `af13...` but its
/// archive id starts `fa31...`. Upstream's server re-hashes stored toolchains the
/// same way, so kiln must too, or every submitted toolchain would look corrupt.
#[derive(Clone, Default)]
pub struct ArchiveHasher(blake3::Hasher);

impl ArchiveHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(bytes);
        self
    }

    /// The id: 64 lower-case hex digits, in sccache's nibble order.
    pub fn finish(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let digest = self.0.finalize();
        let mut id = String::with_capacity(ARCHIVE_ID_LEN);
        for &byte in digest.as_bytes() {
            id.push(char::from(DIGITS[usize::from(byte & 0xf)]));
            id.push(char::from(DIGITS[usize::from(byte >> 4)]));
        }
        id
    }
}

/// gzip's magic bytes: a toolchain is a gzip'd tar.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Checks a toolchain archive as its bytes go by (an upload, a copy from a store):
/// that it is a gzip stream and that its id is the one it claims.
#[derive(Debug, Default)]
pub struct ArchiveCheck {
    hasher: ArchiveHasher,
    head: Vec<u8>,
    size: u64,
}

/// How an archive failed its [`ArchiveCheck`].
#[derive(Debug, PartialEq, Eq)]
pub enum ArchiveMismatch {
    NotGzip,
    /// Its id is `actual`, not the one claimed.
    WrongId {
        actual: String,
    },
}

impl ArchiveCheck {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        if self.head.len() < GZIP_MAGIC.len() {
            self.head.extend(chunk.iter().take(GZIP_MAGIC.len() - self.head.len()));
        }
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
    }

    /// Bytes checked so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The archive's size, if it was a gzip stream whose id is `archive_id`.
    pub fn verify(self, archive_id: &str) -> Result<u64, ArchiveMismatch> {
        if self.head != GZIP_MAGIC {
            return Err(ArchiveMismatch::NotGzip);
        }
        let actual = self.hasher.finish();
        if actual != archive_id {
            return Err(ArchiveMismatch::WrongId { actual });
        }
        Ok(self.size)
    }
}

impl io::Write for ArchiveHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for ArchiveHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ArchiveHasher")
    }
}

/// A job's state as the scheduler tracks it; it only accepts the transitions
/// Pending → Ready → Started → Complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum JobState {
    Pending,
    Ready,
    Started,
    Complete,
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobState::Pending => "pending",
            JobState::Ready => "ready",
            JobState::Started => "started",
            JobState::Complete => "complete",
        })
    }
}

/// Answer to `assign_job`: `Ready` when the toolchain is already cached
/// (`need_toolchain == false`), `Pending` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignJobResult {
    pub state: JobState,
    pub need_toolchain: bool,
}

/// Answer to `submit_toolchain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SubmitToolchainResult {
    Success,
    JobNotFound,
    CannotCache,
}

/// The compiler invocation, with paths as the client sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileCommand {
    pub executable: String,
    pub arguments: Vec<String>,
    pub env_vars: Vec<(String, String)>,
    pub cwd: String,
}

/// The bincode header of a `run_job` body: what to run and which files to send back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunJobHttpRequest {
    pub command: CompileCommand,
    pub outputs: Vec<String>,
}

/// The compiler's exit code and captured output. There is no way to say
/// "killed by a signal": upstream's server fails the request instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessOutput {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// An output file: zlib (RFC 1950) bytes and the uncompressed length.
///
/// The sccache client `assert!`s that the decompressed size equals the length,
/// so a wrong length crashes the client daemon: build it only through
/// [`OutputData::compress`] or [`OutputData::compress_reader`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputData(Vec<u8>, u64);

impl OutputData {
    /// Compresses `data` (zlib, fast level, as upstream).
    pub fn compress(data: &[u8]) -> Result<Self, ProtocolError> {
        Self::compress_reader(data)
    }

    /// Compresses everything `reader` yields; the length is what was actually read.
    pub fn compress_reader<R: Read>(reader: R) -> Result<Self, ProtocolError> {
        let mut encoder = ZlibEncoder::new(reader, Compression::fast());
        let mut zlib = Vec::new();
        encoder.read_to_end(&mut zlib).map_err(|source| ProtocolError::Compress { source })?;
        Ok(OutputData(zlib, encoder.total_in()))
    }

    /// Assembles an `OutputData` without any check; for tests and fakes that
    /// need to send a lying length.
    pub fn from_raw_parts(zlib: Vec<u8>, uncompressed_len: u64) -> Self {
        OutputData(zlib, uncompressed_len)
    }

    pub fn compressed(&self) -> &[u8] {
        &self.0
    }

    pub fn uncompressed_len(&self) -> u64 {
        self.1
    }

    /// Decompresses, refusing a declared length above `limit` and any mismatch
    /// between the declared and the actual length (`actual` in the error is
    /// capped at `declared + 1`: decoding stops there).
    pub fn decompress(&self, limit: u64) -> Result<Vec<u8>, ProtocolError> {
        let declared = self.1;
        if declared > limit {
            return Err(ProtocolError::OutputTooLarge { declared, limit });
        }
        // Trust the declared length for preallocation only up to 1 MiB.
        let capacity = usize::try_from(declared.min(1 << 20)).unwrap_or(0);
        let mut data = Vec::with_capacity(capacity);
        ZlibDecoder::new(self.0.as_slice())
            .take(declared.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|source| ProtocolError::Decompress { source })?;
        let actual = data.len() as u64;
        if actual != declared {
            return Err(ProtocolError::OutputLengthMismatch { declared, actual });
        }
        Ok(data)
    }
}

impl fmt::Debug for OutputData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputData").field("compressed_len", &self.0.len()).field("uncompressed_len", &self.1).finish()
    }
}

/// A finished compile: the process result and the outputs that exist
/// (missing outputs are left out of the list, as upstream does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobComplete {
    pub output: ProcessOutput,
    pub outputs: Vec<(String, OutputData)>,
}

/// Answer to `run_job`. A compiler that fails is still `Complete` (with its
/// exit code); only an unknown job is `JobNotFound`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum RunJobResult {
    JobNotFound,
    Complete(JobComplete),
}

/// The JSON body upstream's server sends with its 400/401/500 answers
/// (`ErrJson` in `http.rs`): `{"description":"...","cause":null}`, where
/// `cause` nests the error's source chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub description: String,
    #[serde(default)]
    pub cause: Option<Box<ErrorBody>>,
}

impl ErrorBody {
    pub fn new(description: impl Into<String>) -> Self {
        ErrorBody { description: description.into(), cause: None }
    }

    /// Builds the body from `err` and its whole `source()` chain.
    pub fn from_error(err: &(dyn std::error::Error + '_)) -> Self {
        ErrorBody {
            description: err.to_string(),
            cause: err.source().map(|source| Box::new(ErrorBody::from_error(source))),
        }
    }

    /// The description and its causes on one line, as upstream logs them.
    pub fn full_description(&self) -> String {
        let mut text = self.description.clone();
        let mut cause = self.cause.as_deref();
        while let Some(body) = cause {
            text.push_str(", caused by: ");
            text.push_str(&body.description);
            cause = body.cause.as_deref();
        }
        text
    }
}

// The scheduler's API (server → scheduler, client → scheduler). Only the
// types; the link and kiln's own scheduler are other modules' job.

/// A build server's identity toward the scheduler: its public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServerId(pub SocketAddr);

/// Random per process start; a new nonce tells the scheduler the server restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNonce(pub u64);

/// Body of `POST /api/v1/scheduler/heartbeat_server`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatServerHttpRequest {
    /// The HS256 key the scheduler signs this server's job tokens with.
    pub jwt_key: Vec<u8>,
    /// `usize` upstream; bincode writes both as 8 bytes.
    pub num_cpus: u64,
    pub server_nonce: ServerNonce,
    /// SHA-256 of the server certificate's DER.
    pub cert_digest: Vec<u8>,
    pub cert_pem: Vec<u8>,
}

impl fmt::Debug for HeartbeatServerHttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatServerHttpRequest")
            .field("jwt_key", &"<redacted>")
            .field("num_cpus", &self.num_cpus)
            .field("server_nonce", &self.server_nonce)
            .field("cert_digest_len", &self.cert_digest.len())
            .finish_non_exhaustive()
    }
}

/// Answer to a heartbeat; `is_new` when the scheduler did not know this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatServerResult {
    pub is_new: bool,
}

/// Answer to `POST /api/v1/scheduler/job_state/<job_id>` (body: a bincode [`JobState`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum UpdateJobStateResult {
    Success,
    Fail { msg: String },
}

impl ServerId {
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

/// A job the scheduler placed on a server: its id, the server, and the token
/// the client presents there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobAlloc {
    pub auth: String,
    pub job_id: JobId,
    pub server_id: ServerId,
}

/// Answer to `POST /api/v1/scheduler/alloc_job` (body: a bincode [`Toolchain`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum AllocJobHttpResponse {
    /// `cert_digest` is the SHA-256 of the server's certificate; a client that
    /// does not know it fetches the certificate from the scheduler.
    Success { job_alloc: JobAlloc, need_toolchain: bool, cert_digest: Vec<u8> },
    /// No capacity (the client compiles locally) or no server at all.
    Fail { msg: String },
}

/// Answer to `GET /api/v1/scheduler/server_certificate/<ip:port>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCertificateHttpResponse {
    pub cert_digest: Vec<u8>,
    pub cert_pem: Vec<u8>,
}

/// Answer to `GET /api/v1/scheduler/status` (`usize` upstream: 8 bytes in bincode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerStatusResult {
    pub num_servers: u64,
    pub num_cpus: u64,
    pub in_progress: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_id_uses_sccache_nibble_order() {
        // blake3("") = af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262;
        // sccache writes each byte low nibble first.
        assert_eq!(archive_id_of(b""), "fa31949b5f9f1a6a0a04d4ae63cd9c94b9bc529cda1c217bcca939ac4ef12326");
        let standard = blake3::hash(b"toolchain").to_hex().to_string();
        let swapped: String =
            standard.as_bytes().chunks(2).flat_map(|pair| [char::from(pair[1]), char::from(pair[0])]).collect();
        assert_eq!(archive_id_of(b"toolchain"), swapped);
    }

    #[test]
    fn archive_hasher_is_incremental() {
        let mut hasher = ArchiveHasher::new();
        hasher.update(b"tool").update(b"chain");
        assert_eq!(hasher.finish(), archive_id_of(b"toolchain"));
        let mut hasher = ArchiveHasher::new();
        io::copy(&mut &b"toolchain"[..], &mut hasher).unwrap();
        assert_eq!(hasher.finish(), archive_id_of(b"toolchain"));
    }

    #[test]
    fn archive_id_validation() {
        let id = archive_id_of(b"x");
        assert!(is_valid_archive_id(&id));
        assert!(is_valid_archive_id(&id.to_ascii_uppercase()));
        assert!(!is_valid_archive_id(&id[1..]));
        assert!(!is_valid_archive_id(&format!("{id}0")));
        assert!(!is_valid_archive_id(&format!("g{}", &id[1..])));
        assert!(!is_valid_archive_id(&format!("../{}", &id[3..])));
        assert!(!is_valid_archive_id(""));
    }

    #[test]
    fn output_data_round_trip() {
        let data = b"int main() { return 0; }\n".repeat(100);
        let output = OutputData::compress(&data).unwrap();
        assert_eq!(output.uncompressed_len(), data.len() as u64);
        assert!(output.compressed().len() < data.len());
        // zlib header (RFC 1950): CMF 0x78.
        assert_eq!(output.compressed()[0], 0x78);
        assert_eq!(output.decompress(data.len() as u64).unwrap(), data);
        assert_eq!(OutputData::compress(b"").unwrap().decompress(0).unwrap(), b"");
    }

    #[test]
    fn output_data_checks_length() {
        let good = OutputData::compress(b"hello").unwrap();
        let short = OutputData::from_raw_parts(good.compressed().to_vec(), 4);
        assert!(matches!(short.decompress(100), Err(ProtocolError::OutputLengthMismatch { declared: 4, actual: 5 })));
        let long = OutputData::from_raw_parts(good.compressed().to_vec(), 6);
        assert!(matches!(long.decompress(100), Err(ProtocolError::OutputLengthMismatch { declared: 6, actual: 5 })));
        assert!(matches!(good.decompress(4), Err(ProtocolError::OutputTooLarge { declared: 5, limit: 4 })));
        let garbage = OutputData::from_raw_parts(b"not zlib".to_vec(), 3);
        assert!(garbage.decompress(100).is_err());
    }

    #[test]
    fn endpoint_paths() {
        assert_eq!(Endpoint::AssignJob.path(JobId(7)), "/api/v1/distserver/assign_job/7");
        assert_eq!(Endpoint::SubmitToolchain.path(JobId(8)), "/api/v1/distserver/submit_toolchain/8");
        assert_eq!(Endpoint::RunJob.path(JobId(9)), "/api/v1/distserver/run_job/9");
        assert_eq!("42".parse::<JobId>().unwrap(), JobId(42));
        assert!("-1".parse::<JobId>().is_err());
    }

    #[test]
    fn error_body_json_shape() {
        let body = ErrorBody::new("no Authorization header");
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"description":"no Authorization header","cause":null}"#);
        let nested: ErrorBody =
            serde_json::from_str(r#"{"description":"a","cause":{"description":"b","cause":null}}"#).unwrap();
        assert_eq!(nested.full_description(), "a, caused by: b");
        let bare: ErrorBody = serde_json::from_str(r#"{"description":"c"}"#).unwrap();
        assert_eq!(bare, ErrorBody::new("c"));
    }

    #[test]
    fn error_body_from_error_chain() {
        let err =
            ProtocolError::Decompress { source: io::Error::new(io::ErrorKind::InvalidData, "corrupt deflate stream") };
        let body = ErrorBody::from_error(&err);
        assert_eq!(body.full_description(), "failed to zlib-decompress output data, caused by: corrupt deflate stream");
    }

    #[test]
    fn heartbeat_debug_hides_key() {
        let heartbeat = HeartbeatServerHttpRequest {
            jwt_key: vec![0xAB; 32],
            num_cpus: 2,
            server_nonce: ServerNonce(1),
            cert_digest: vec![0; 32],
            cert_pem: b"-----BEGIN CERTIFICATE-----".to_vec(),
        };
        let text = format!("{heartbeat:?}");
        assert!(!text.contains("171"), "{text}");
        assert!(text.contains("redacted"));
    }
}
