//! bincode, the way sccache speaks it, and the `run_job` body framing.
//!
//! This is the only place in kiln that calls bincode. sccache uses the free
//! functions `bincode::serialize`/`deserialize`: little-endian fixed-size ints,
//! `u64` lengths, `u32` enum tags, and *no size limit*. We encode identically
//! and decode with an explicit limit.
//!
//! Trailing bytes: upstream's free functions ignore bytes after the value. kiln
//! rejects them. Every sccache peer sends exactly `bincode::serialize(value)`
//! (the scheduler for `assign_job`, the client inside the `run_job` length
//! prefix), so extra bytes only ever come from a framing bug or a crafted
//! request, and in `run_job` upstream would have fed them to the zlib decoder.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ProtocolError, RunJobHttpRequest};

/// Content type of bincode bodies. Upstream's server answers `400` to an
/// `assign_job` without it, and sends it on every bincode answer.
pub const BINCODE_CONTENT_TYPE: &str = "application/octet-stream";

/// Limit for small bincode bodies such as `assign_job`'s [`Toolchain`]
/// (72 bytes with a 64-digit archive id).
///
/// [`Toolchain`]: super::Toolchain
pub const MAX_SMALL_MESSAGE: u64 = 4 * 1024;

/// Limit for the bincode [`RunJobHttpRequest`] at the head of a `run_job` body:
/// room for huge command lines and environments, small enough to hold in memory.
pub const MAX_RUN_JOB_HEADER: u64 = 16 * 1024 * 1024;

/// Size of the big-endian `u32` length before the `run_job` header.
const RUN_JOB_PREFIX_LEN: usize = 4;

/// The options behind `bincode::serialize`/`deserialize` (bincode 1.3).
/// `bincode::DefaultOptions::new()` alone would be varint: a different format.
fn sccache_options() -> impl Options {
    bincode::options().with_fixint_encoding().allow_trailing_bytes()
}

/// Encodes `value` byte for byte as sccache's `bincode::serialize` does.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    sccache_options()
        .serialize(value)
        .map_err(|source| ProtocolError::Encode { what: std::any::type_name::<T>(), source })
}

/// Decodes one `T` that must fill `bytes` exactly; `bytes` longer than `limit`
/// is refused before decoding.
///
/// bincode's own limit is set to `bytes.len()`: a length prefix claiming more
/// than the body holds (say 2^60) fails before anything is allocated for it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, ProtocolError> {
    let what = std::any::type_name::<T>();
    let len = bytes.len() as u64;
    if len > limit {
        return Err(ProtocolError::BodyTooLarge { what, len, limit });
    }
    let mut rest = bytes;
    let value = sccache_options()
        .with_limit(len)
        .deserialize_from(&mut rest)
        .map_err(|source| ProtocolError::Decode { what, source })?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes { what, count: rest.len() });
    }
    Ok(value)
}

/// Splits a `run_job` body into its request header and the zlib stream of the
/// inputs tar that follows it.
///
/// Layout (upstream `http.rs`): a `u32` **big-endian** length N, N bytes of
/// bincode [`RunJobHttpRequest`], then the zlib (RFC 1950) stream, unparsed here.
pub fn split_run_job_body(body: &[u8]) -> Result<(RunJobHttpRequest, &[u8]), ProtocolError> {
    let (prefix, rest) = body
        .split_first_chunk::<RUN_JOB_PREFIX_LEN>()
        .ok_or(ProtocolError::RunJobPrefixTruncated { len: body.len() })?;
    let declared = u32::from_be_bytes(*prefix);
    if u64::from(declared) > MAX_RUN_JOB_HEADER {
        return Err(ProtocolError::RunJobHeaderTooLarge { len: u64::from(declared), limit: MAX_RUN_JOB_HEADER });
    }
    let header_len = usize::try_from(declared)
        .ok()
        .filter(|&n| n <= rest.len())
        .ok_or(ProtocolError::RunJobHeaderTruncated { declared, available: rest.len() })?;
    let (header, inputs_zlib) = rest.split_at(header_len);
    let request = decode(header, MAX_RUN_JOB_HEADER)?;
    Ok((request, inputs_zlib))
}

/// Builds a `run_job` body from its request and the already zlib-compressed
/// inputs tar; the inverse of [`split_run_job_body`].
pub fn frame_run_job_body(request: &RunJobHttpRequest, inputs_zlib: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let header = encode(request)?;
    let header_len = header.len() as u64;
    // Refuse what our own server would refuse; this also keeps N within u32.
    let declared = u32::try_from(header_len)
        .ok()
        .filter(|&n| u64::from(n) <= MAX_RUN_JOB_HEADER)
        .ok_or(ProtocolError::RunJobHeaderTooLarge { len: header_len, limit: MAX_RUN_JOB_HEADER })?;
    let mut body = Vec::with_capacity(RUN_JOB_PREFIX_LEN + header.len() + inputs_zlib.len());
    body.extend_from_slice(&declared.to_be_bytes());
    body.extend_from_slice(&header);
    body.extend_from_slice(inputs_zlib);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        archive_id_of, AssignJobResult, CompileCommand, JobComplete, JobId, JobState, OutputData, ProcessOutput,
        RunJobResult, SubmitToolchainResult, Toolchain,
    };

    /// 8-byte little-endian length, as bincode writes `String`/`Vec` lengths.
    fn len8(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    fn sample_request() -> RunJobHttpRequest {
        RunJobHttpRequest {
            command: CompileCommand {
                executable: "cc".into(),
                arguments: vec!["-c".into()],
                env_vars: vec![("K".into(), "V".into())],
                cwd: "/".into(),
            },
            outputs: vec!["o".into()],
        }
    }

    #[test]
    fn golden_scalars_and_enums() {
        assert_eq!(encode(&Toolchain { archive_id: "ab".into() }).unwrap(), [len8(2), b"ab".to_vec()].concat());
        assert_eq!(encode(&JobId(0x0102)).unwrap(), [2, 1, 0, 0, 0, 0, 0, 0]);
        // Enum tags: u32 little-endian, in declaration order.
        assert_eq!(encode(&JobState::Pending).unwrap(), [0, 0, 0, 0]);
        assert_eq!(encode(&JobState::Ready).unwrap(), [1, 0, 0, 0]);
        assert_eq!(encode(&JobState::Started).unwrap(), [2, 0, 0, 0]);
        assert_eq!(encode(&JobState::Complete).unwrap(), [3, 0, 0, 0]);
        assert_eq!(encode(&SubmitToolchainResult::Success).unwrap(), [0, 0, 0, 0]);
        assert_eq!(encode(&SubmitToolchainResult::JobNotFound).unwrap(), [1, 0, 0, 0]);
        assert_eq!(encode(&SubmitToolchainResult::CannotCache).unwrap(), [2, 0, 0, 0]);
        assert_eq!(encode(&RunJobResult::JobNotFound).unwrap(), [0, 0, 0, 0]);
        // bool: one byte.
        assert_eq!(encode(&AssignJobResult { state: JobState::Ready, need_toolchain: true }).unwrap(), [1, 0, 0, 0, 1]);
    }

    #[test]
    fn golden_run_job_request() {
        let expected = [
            // command.executable
            len8(2),
            b"cc".to_vec(),
            // command.arguments: Vec<String>
            len8(1),
            len8(2),
            b"-c".to_vec(),
            // command.env_vars: Vec<(String, String)>; tuples have no length
            len8(1),
            len8(1),
            b"K".to_vec(),
            len8(1),
            b"V".to_vec(),
            // command.cwd
            len8(1),
            b"/".to_vec(),
            // outputs
            len8(1),
            len8(1),
            b"o".to_vec(),
        ]
        .concat();
        assert_eq!(encode(&sample_request()).unwrap(), expected);
    }

    #[test]
    fn golden_run_job_result() {
        let result = RunJobResult::Complete(JobComplete {
            output: ProcessOutput { code: -1, stdout: b"o".to_vec(), stderr: vec![] },
            outputs: vec![("a".into(), OutputData::from_raw_parts(vec![9], 3))],
        });
        let expected = [
            vec![1, 0, 0, 0],             // Complete
            vec![0xff, 0xff, 0xff, 0xff], // code: i32 -1
            len8(1),
            b"o".to_vec(),
            len8(0),
            len8(1), // one output
            len8(1),
            b"a".to_vec(),
            len8(1), // OutputData.0: Vec<u8>
            vec![9],
            len8(3), // OutputData.1: u64
        ]
        .concat();
        let bytes = encode(&result).unwrap();
        assert_eq!(bytes, expected);
        assert_eq!(decode::<RunJobResult>(&bytes, 1024).unwrap(), result);
    }

    #[test]
    fn golden_run_job_framing() {
        let header = encode(&sample_request()).unwrap();
        let body = frame_run_job_body(&sample_request(), b"ZLIB").unwrap();
        // Big-endian length prefix, unlike everything inside bincode.
        assert_eq!(body[..4], (header.len() as u32).to_be_bytes());
        assert_eq!(body[..4], [0, 0, 0, header.len() as u8]);
        assert_eq!(&body[4..4 + header.len()], header.as_slice());
        assert_eq!(&body[4 + header.len()..], b"ZLIB");
    }

    #[test]
    fn round_trips() {
        let toolchain = Toolchain { archive_id: archive_id_of(b"archive") };
        let bytes = encode(&toolchain).unwrap();
        assert_eq!(bytes.len(), 72);
        assert_eq!(decode::<Toolchain>(&bytes, MAX_SMALL_MESSAGE).unwrap(), toolchain);

        let assign = AssignJobResult { state: JobState::Pending, need_toolchain: true };
        assert_eq!(decode::<AssignJobResult>(&encode(&assign).unwrap(), MAX_SMALL_MESSAGE).unwrap(), assign);

        let output = OutputData::compress(b"object code").unwrap();
        let result = RunJobResult::Complete(JobComplete {
            output: ProcessOutput { code: 0, stdout: vec![], stderr: b"warning".to_vec() },
            outputs: vec![("/tmp/a.o".into(), output)],
        });
        let decoded: RunJobResult = decode(&encode(&result).unwrap(), 1 << 20).unwrap();
        assert_eq!(decoded, result);
        let RunJobResult::Complete(complete) = decoded else {
            panic!("expected Complete");
        };
        assert_eq!(complete.outputs[0].1.decompress(100).unwrap(), b"object code");
    }

    #[test]
    fn toolchain_archive_id_is_checked_and_lowercased() {
        let id = archive_id_of(b"archive");
        let upper = encode(&Toolchain { archive_id: id.to_ascii_uppercase() }).unwrap();
        assert_eq!(decode::<Toolchain>(&upper, MAX_SMALL_MESSAGE).unwrap().archive_id, id);
        for bad in ["ab", "../../etc/passwd", &format!("{}/", &id[1..])] {
            let bytes = encode(&Toolchain { archive_id: bad.to_string() }).unwrap();
            assert!(matches!(decode::<Toolchain>(&bytes, MAX_SMALL_MESSAGE), Err(ProtocolError::Decode { .. })));
        }
    }

    #[test]
    fn huge_length_prefix_is_rejected_without_allocating() {
        // A Toolchain whose string claims 2^60 bytes: were it trusted, this
        // would try to allocate an exabyte and abort the process.
        // bincode's limit is the body length, so the claim fails its size
        // check before the buffer is allocated.
        let bytes = [len8(1 << 60), b"ab".to_vec()].concat();
        match decode::<Toolchain>(&bytes, MAX_SMALL_MESSAGE) {
            Err(ProtocolError::Decode { source, .. }) => {
                assert!(matches!(*source, bincode::ErrorKind::SizeLimit), "{source}")
            }
            other => panic!("expected a size-limit error, got {other:?}"),
        }
        // Same for a sequence of structs, and for a length just past the end.
        let bytes = [vec![1, 0, 0, 0], vec![0; 4], len8(1), b"o".to_vec(), len8(0), len8(1 << 60)].concat();
        assert!(decode::<RunJobResult>(&bytes, 1 << 20).is_err());
        let bytes = [len8(3), b"ab".to_vec()].concat();
        assert!(decode::<Toolchain>(&bytes, MAX_SMALL_MESSAGE).is_err());
    }

    #[test]
    fn truncated_and_oversized_input_is_rejected() {
        let bytes = encode(&sample_request()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode::<RunJobHttpRequest>(&bytes[..cut], MAX_RUN_JOB_HEADER).is_err(),
                "accepted a body cut at {cut}"
            );
        }
        assert!(matches!(
            decode::<RunJobHttpRequest>(&bytes, bytes.len() as u64 - 1),
            Err(ProtocolError::BodyTooLarge { .. })
        ));
        // An unknown enum tag.
        assert!(matches!(decode::<JobState>(&[4, 0, 0, 0], MAX_SMALL_MESSAGE), Err(ProtocolError::Decode { .. })));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&JobState::Ready).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<JobState>(&bytes, MAX_SMALL_MESSAGE),
            Err(ProtocolError::TrailingBytes { count: 1, .. })
        ));
    }

    #[test]
    fn run_job_body_round_trip() {
        let body = frame_run_job_body(&sample_request(), b"inputs").unwrap();
        let (request, inputs) = split_run_job_body(&body).unwrap();
        assert_eq!(request, sample_request());
        assert_eq!(inputs, b"inputs");
        // Empty inputs are still a valid split.
        let body = frame_run_job_body(&sample_request(), b"").unwrap();
        assert_eq!(split_run_job_body(&body).unwrap().1, b"");
    }

    #[test]
    fn run_job_body_framing_errors() {
        assert!(matches!(split_run_job_body(&[0, 0, 1]), Err(ProtocolError::RunJobPrefixTruncated { len: 3 })));
        let mut too_big = (MAX_RUN_JOB_HEADER as u32 + 1).to_be_bytes().to_vec();
        too_big.extend_from_slice(&[0; 16]);
        assert!(matches!(split_run_job_body(&too_big), Err(ProtocolError::RunJobHeaderTooLarge { .. })));
        assert!(matches!(
            split_run_job_body(&[0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::RunJobHeaderTooLarge { .. })
        ));
        assert!(matches!(
            split_run_job_body(&[0, 0, 0, 10, 1, 2, 3]),
            Err(ProtocolError::RunJobHeaderTruncated { declared: 10, available: 3 })
        ));
        // N covers more than the request: upstream would hand the extra bytes
        // to the zlib decoder; we refuse them.
        let header = encode(&sample_request()).unwrap();
        let mut body = ((header.len() + 1) as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&header);
        body.extend_from_slice(b"\0zlib");
        assert!(matches!(split_run_job_body(&body), Err(ProtocolError::TrailingBytes { count: 1, .. })));
        // N too short for the request.
        let mut body = ((header.len() - 1) as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&header);
        assert!(matches!(split_run_job_body(&body), Err(ProtocolError::Decode { .. })));
    }
}
