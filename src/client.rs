//! A Rust client of the build-server protocol (HTTPS, or plain HTTP), for
//! kiln's tests, benches and load generator.
//!
//! It sends what the sccache 0.19 client sends: bincode bodies with
//! `Content-Type: application/octet-stream` and a `Content-Length` for
//! `assign_job` and `run_job`, a chunked body with neither header for
//! `submit_toolchain`, and `Connection: close` on every request.
//!
//! Built on `awc`, so a [`Client`] is `!Send` and must be used inside an actix
//! runtime (`#[actix_rt::test]`, `actix_rt::System`): one client per thread.

use std::convert::Infallible;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use awc::http::header;
use bytes::Bytes;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use futures_util::stream;

use crate::protocol::{
    self, AllocJobHttpResponse, AssignJobResult, Endpoint, ErrorBody, JobId, ProtocolError, RunJobHttpRequest,
    RunJobResult, SchedulerStatusResult, ServerCertificateHttpResponse, ServerId, SubmitToolchainResult, Toolchain,
    BINCODE_CONTENT_TYPE,
};

/// Whole-request timeout, upstream's `REQUEST_TIMEOUT_SECS`: a compile may be slow.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1200);

/// TCP connect timeout, upstream's `CONNECT_TIMEOUT_SECS`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer we read: a `RunJobResult` carries every output file.
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024 * 1024;

/// Chunk size of the streamed `submit_toolchain` body.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// Why a request did not produce a decoded answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, sending or waiting for the answer's head failed
    /// (awc's error is not `Send`, so it is kept as text).
    #[error("request to {url} failed: {message}")]
    Send { url: String, message: String },

    #[error("failed to read the answer from {url}: {message}")]
    ReadBody { url: String, message: String },

    /// A non-2xx answer; `description` comes from the JSON error body when
    /// there is one, else it is the body as text.
    #[error("server answered {status}: {description}")]
    Server { status: u16, description: String },

    #[error("failed to build the {what} request")]
    Encode {
        what: &'static str,
        #[source]
        source: ProtocolError,
    },

    #[error("failed to decode the answer from {url}")]
    Decode {
        url: String,
        #[source]
        source: ProtocolError,
    },

    #[error("failed to zlib-compress the run_job inputs")]
    CompressInputs(#[source] io::Error),

    #[error("input path {path:?} is not an absolute UTF-8 path")]
    InputPath { path: String },

    #[error("failed to add {path:?} to the inputs tar")]
    Inputs {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A client of one build server, e.g. `Client::new("http://127.0.0.1:10501")`.
pub struct Client {
    base_url: String,
    http: awc::Client,
}

impl Client {
    /// A client of a plain-HTTP server (`http://...`).
    pub fn new(base_url: impl Into<String>) -> Self {
        let connector = awc::Connector::new().timeout(CONNECT_TIMEOUT);
        Self::from_parts(base_url, awc::Client::builder().connector(connector).timeout(REQUEST_TIMEOUT).finish())
    }

    /// A client of an HTTPS server that trusts exactly the certificate(s) in
    /// `cert_pem`, as an sccache client trusts the server certificate its
    /// scheduler hands out.
    pub fn trusting(base_url: impl Into<String>, cert_pem: &[u8]) -> Result<Self, crate::tls::TlsError> {
        let tls = crate::tls::client_config_trusting(cert_pem)?;
        let connector = awc::Connector::new().rustls_0_23(tls).timeout(CONNECT_TIMEOUT);
        Ok(Self::from_parts(base_url, awc::Client::builder().connector(connector).timeout(REQUEST_TIMEOUT).finish()))
    }

    /// As [`Client::trusting`], but offering `h2` before `http/1.1` in ALPN, as
    /// reqwest (the sccache client's HTTP library) does: the server picks.
    pub fn trusting_offering_h2(base_url: impl Into<String>, cert_pem: &[u8]) -> Result<Self, crate::tls::TlsError> {
        let mut tls = (*crate::tls::client_config_trusting(cert_pem)?).clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = awc::Connector::new().rustls_0_23(std::sync::Arc::new(tls)).timeout(CONNECT_TIMEOUT);
        Ok(Self::from_parts(base_url, awc::Client::builder().connector(connector).timeout(REQUEST_TIMEOUT).finish()))
    }

    fn from_parts(base_url: impl Into<String>, http: awc::Client) -> Self {
        let mut base_url = base_url.into();
        while base_url.ends_with('/') {
            base_url.pop();
        }
        Client { base_url, http }
    }

    /// What the scheduler does once it picked this server for `job_id`.
    pub async fn assign_job(
        &self,
        job_id: JobId,
        token: &str,
        toolchain: &Toolchain,
    ) -> Result<AssignJobResult, ClientError> {
        let body = protocol::encode(toolchain).map_err(|source| ClientError::Encode { what: "assign_job", source })?;
        self.call(&Endpoint::AssignJob.path(job_id), Some(token), Bytes::from(body)).await
    }

    /// Uploads a toolchain archive (compressed bytes, as stored by the client).
    pub async fn submit_toolchain(
        &self,
        job_id: JobId,
        token: &str,
        archive: Bytes,
    ) -> Result<SubmitToolchainResult, ClientError> {
        let url = self.url(&Endpoint::SubmitToolchain.path(job_id));
        let chunks: Vec<Result<Bytes, Infallible>> = (0..archive.len())
            .step_by(UPLOAD_CHUNK)
            .map(|start| Ok(archive.slice(start..archive.len().min(start + UPLOAD_CHUNK))))
            .collect();
        // A stream body: chunked, no Content-Length; no Content-Type is set.
        let response = self.request(&url, Some(token)).send_stream(stream::iter(chunks)).await;
        Self::answer(url, response).await
    }

    /// Runs a compile; `inputs_tar` is the uncompressed tar (see [`InputsBuilder`]),
    /// compressed here with zlib as the sccache client does.
    pub async fn run_job(
        &self,
        job_id: JobId,
        token: &str,
        request: &RunJobHttpRequest,
        inputs_tar: &[u8],
    ) -> Result<RunJobResult, ClientError> {
        let mut compressor = ZlibEncoder::new(Vec::new(), Compression::fast());
        compressor.write_all(inputs_tar).map_err(ClientError::CompressInputs)?;
        let inputs_zlib = compressor.finish().map_err(ClientError::CompressInputs)?;
        let body = protocol::frame_run_job_body(request, &inputs_zlib)
            .map_err(|source| ClientError::Encode { what: "run_job", source })?;
        self.call(&Endpoint::RunJob.path(job_id), Some(token), Bytes::from(body)).await
    }

    /// Asks a scheduler (upstream's, or kiln's own) for a job, as the sccache
    /// client does; `client_token` is its `[dist] auth` token.
    pub async fn alloc_job(
        &self,
        client_token: &str,
        toolchain: &Toolchain,
    ) -> Result<AllocJobHttpResponse, ClientError> {
        let body = protocol::encode(toolchain).map_err(|source| ClientError::Encode { what: "alloc_job", source })?;
        self.call("/api/v1/scheduler/alloc_job", Some(client_token), Bytes::from(body)).await
    }

    /// Fetches a server's certificate from a scheduler.
    pub async fn server_certificate(&self, server_id: ServerId) -> Result<ServerCertificateHttpResponse, ClientError> {
        self.get(&format!("/api/v1/scheduler/server_certificate/{}", server_id.addr())).await
    }

    pub async fn scheduler_status(&self) -> Result<SchedulerStatusResult, ClientError> {
        self.get("/api/v1/scheduler/status").await
    }

    /// POSTs `body` as a bincode request would be sent (content type and
    /// length set) and returns the status and body whatever they are.
    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: Bytes) -> Result<(u16, Bytes), ClientError> {
        let url = self.url(path);
        let response =
            self.request(&url, token).insert_header((header::CONTENT_TYPE, BINCODE_CONTENT_TYPE)).send_body(body).await;
        Self::raw_answer(url, response).await
    }

    /// GETs `path` (e.g. kiln's `/api/v1/kiln/status`) and returns status and body.
    pub async fn get_raw(&self, path: &str) -> Result<(u16, Bytes), ClientError> {
        let url = self.url(path);
        let response = self.http.get(&url).send().await;
        Self::raw_answer(url, response).await
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let response = self.http.get(&url).force_close().send().await;
        Self::answer(url, response).await
    }

    async fn raw_answer(
        url: String,
        response: Result<
            awc::ClientResponse<impl futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin>,
            awc::error::SendRequestError,
        >,
    ) -> Result<(u16, Bytes), ClientError> {
        let mut response = response.map_err(|err| ClientError::Send { url: url.clone(), message: err.to_string() })?;
        let status = response.status().as_u16();
        let body = response
            .body()
            .limit(MAX_RESPONSE_BODY)
            .await
            .map_err(|err| ClientError::ReadBody { url, message: err.to_string() })?;
        Ok((status, body))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    fn request(&self, url: &str, token: Option<&str>) -> awc::ClientRequest {
        let request = self.http.post(url).force_close();
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a bincode body and decodes the bincode answer.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let response =
            self.request(&url, token).insert_header((header::CONTENT_TYPE, BINCODE_CONTENT_TYPE)).send_body(body).await;
        Self::answer(url, response).await
    }

    async fn answer<T, S>(
        url: String,
        response: Result<awc::ClientResponse<S>, awc::error::SendRequestError>,
    ) -> Result<T, ClientError>
    where
        T: serde::de::DeserializeOwned,
        S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>>,
    {
        let mut response = response.map_err(|err| ClientError::Send { url: url.clone(), message: err.to_string() })?;
        let status = response.status();
        let body = response
            .body()
            .limit(MAX_RESPONSE_BODY)
            .await
            .map_err(|err| ClientError::ReadBody { url: url.clone(), message: err.to_string() })?;
        if !status.is_success() {
            let description = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(error) => error.full_description(),
                Err(_) => String::from_utf8_lossy(&body).into_owned(),
            };
            return Err(ClientError::Server { status: status.as_u16(), description });
        }
        protocol::decode(&body, MAX_RESPONSE_BODY as u64).map_err(|source| ClientError::Decode { url, source })
    }
}

/// Builds the uncompressed inputs tar the way the sccache client does: ustar
/// headers, each entry at its absolute path with the leading `/` stripped.
pub struct InputsBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for InputsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl InputsBuilder {
    pub fn new() -> Self {
        InputsBuilder { tar: tar::Builder::new(Vec::new()) }
    }

    /// Adds a regular file (mode 0644, owner 0, mtime 0: upstream's defaults
    /// when it cannot stat the source) at `path` inside the sandbox.
    pub fn add_file(&mut self, path: &str, contents: &[u8]) -> Result<&mut Self, ClientError> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        self.append(header, path, contents)
    }

    /// Adds a directory (mode 0755) at `path` inside the sandbox.
    pub fn add_dir(&mut self, path: &str) -> Result<&mut Self, ClientError> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        self.append(header, path, &[])
    }

    /// Adds a file of this machine at its own absolute path, with its metadata
    /// (mode, owner, mtime), as the sccache client sends source files.
    pub fn add_host_file(&mut self, path: impl AsRef<Path>) -> Result<&mut Self, ClientError> {
        let path = path.as_ref();
        let name = path.to_str().ok_or_else(|| ClientError::InputPath { path: path.display().to_string() })?;
        let io_error = |source| ClientError::Inputs { path: name.to_string(), source };
        let metadata = fs::metadata(path).map_err(io_error)?;
        if !metadata.is_file() {
            return Err(io_error(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let contents = fs::read(path).map_err(io_error)?;
        let mut header = tar::Header::new_ustar();
        header.set_metadata(&metadata);
        self.append(header, name, &contents)
    }

    /// The finished tar (with its end-of-archive blocks).
    pub fn finish(self) -> Result<Vec<u8>, ClientError> {
        self.tar.into_inner().map_err(|source| ClientError::Inputs { path: "<end of archive>".to_string(), source })
    }

    fn append(&mut self, mut header: tar::Header, path: &str, contents: &[u8]) -> Result<&mut Self, ClientError> {
        let relative = path
            .strip_prefix('/')
            .map(|rest| rest.trim_start_matches('/'))
            .filter(|rest| !rest.is_empty())
            .ok_or_else(|| ClientError::InputPath { path: path.to_string() })?;
        let io_error = |source| ClientError::Inputs { path: path.to_string(), source };
        header.set_path(relative).map_err(io_error)?;
        header.set_size(contents.len() as u64);
        header.set_cksum();
        self.tar.append(&header, contents).map_err(io_error)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let path = entry.path().unwrap().display().to_string();
                let kind = entry.header().entry_type();
                let mode = entry.header().mode().unwrap();
                let mut data = Vec::new();
                io::Read::read_to_end(&mut entry, &mut data).unwrap();
                (path, kind, mode, data)
            })
            .collect()
    }

    #[test]
    fn inputs_tar_layout() {
        let mut builder = InputsBuilder::new();
        builder.add_dir("/work").unwrap().add_file("/work/a.c", b"int a;").unwrap();
        let tar_bytes = builder.finish().unwrap();
        assert_eq!(
            entries(&tar_bytes),
            vec![
                ("work".into(), tar::EntryType::Directory, 0o755, vec![]),
                ("work/a.c".into(), tar::EntryType::Regular, 0o644, b"int a;".to_vec()),
            ]
        );
        // ustar magic at offset 257 of the first header.
        assert_eq!(&tar_bytes[257..263], b"ustar\0");
    }

    #[test]
    fn inputs_paths_must_be_absolute() {
        let mut builder = InputsBuilder::new();
        for bad in ["a.c", "", "/", "//"] {
            assert!(matches!(builder.add_file(bad, b""), Err(ClientError::InputPath { .. })), "{bad:?}");
        }
    }

    #[test]
    fn host_file_keeps_its_path_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.c");
        fs::write(&path, b"int main;").unwrap();
        let mut builder = InputsBuilder::new();
        builder.add_host_file(&path).unwrap();
        assert!(builder.add_host_file(dir.path()).is_err());
        let listed = entries(&builder.finish().unwrap());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, path.to_str().unwrap().trim_start_matches('/'));
        assert_eq!(listed[0].3, b"int main;");
    }
}

#[cfg(test)]
mod wire_tests {
    //! The client against a fake server that checks what upstream's server
    //! relies on (headers, framing) and answers like it.

    use super::*;
    use crate::protocol::{
        archive_id_of, split_run_job_body, CompileCommand, JobComplete, JobState, OutputData, ProcessOutput,
        MAX_SMALL_MESSAGE,
    };
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use std::io::Read;

    fn bincode_answer<T: serde::Serialize>(value: &T) -> HttpResponse {
        HttpResponse::Ok().content_type(BINCODE_CONTENT_TYPE).body(protocol::encode(value).unwrap())
    }

    fn header(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
        req.headers().get(name).and_then(|v| v.to_str().ok())
    }

    async fn assign_job(req: HttpRequest, body: web::Bytes) -> HttpResponse {
        assert_eq!(header(&req, header::CONTENT_TYPE), Some(BINCODE_CONTENT_TYPE));
        assert_eq!(header(&req, header::CONTENT_LENGTH), Some("72"));
        assert_eq!(header(&req, header::AUTHORIZATION), Some("Bearer t"));
        assert_eq!(req.match_info().get("job"), Some("7"));
        let toolchain: Toolchain = protocol::decode(&body, MAX_SMALL_MESSAGE).unwrap();
        assert_eq!(toolchain.archive_id, archive_id_of(b"tc"));
        bincode_answer(&AssignJobResult { state: JobState::Pending, need_toolchain: true })
    }

    async fn submit_toolchain(req: HttpRequest, body: web::Bytes) -> HttpResponse {
        assert_eq!(header(&req, header::CONTENT_TYPE), None);
        assert_eq!(header(&req, header::CONTENT_LENGTH), None);
        assert_eq!(header(&req, header::TRANSFER_ENCODING), Some("chunked"));
        assert_eq!(body.len(), 200_000);
        bincode_answer(&SubmitToolchainResult::Success)
    }

    async fn run_job(body: web::Bytes) -> HttpResponse {
        let (request, inputs_zlib) = split_run_job_body(&body).unwrap();
        let mut tar_bytes = Vec::new();
        flate2::read::ZlibDecoder::new(inputs_zlib).read_to_end(&mut tar_bytes).unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("src/a.c"));
        let mut source = Vec::new();
        entry.read_to_end(&mut source).unwrap();
        bincode_answer(&RunJobResult::Complete(JobComplete {
            output: ProcessOutput { code: 0, stdout: vec![], stderr: vec![] },
            outputs: vec![(request.outputs[0].clone(), OutputData::compress(&source).unwrap())],
        }))
    }

    async fn refuse() -> HttpResponse {
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_jwt\""))
            .json(ErrorBody::new("no Authorization header"))
    }

    #[actix_rt::test]
    async fn speaks_the_protocol() {
        let server = HttpServer::new(|| {
            App::new()
                .route("/api/v1/distserver/assign_job/{job}", web::post().to(assign_job))
                .route("/api/v1/distserver/submit_toolchain/{job}", web::post().to(submit_toolchain))
                .route("/api/v1/distserver/run_job/{job}", web::post().to(run_job))
                .route("/refuse", web::post().to(refuse))
                .app_data(web::PayloadConfig::new(1 << 20))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);

        let client = Client::new(format!("http://{addr}/"));
        let toolchain = Toolchain { archive_id: archive_id_of(b"tc") };
        let assigned = client.assign_job(JobId(7), "t", &toolchain).await.unwrap();
        assert_eq!(assigned.state, JobState::Pending);

        let archive = Bytes::from(vec![7u8; 200_000]);
        let submitted = client.submit_toolchain(JobId(7), "t", archive).await.unwrap();
        assert_eq!(submitted, SubmitToolchainResult::Success);

        let mut inputs = InputsBuilder::new();
        inputs.add_file("/src/a.c", b"int a;").unwrap();
        let request = RunJobHttpRequest {
            command: CompileCommand {
                executable: "/usr/bin/cc".into(),
                arguments: vec!["-c".into(), "/src/a.c".into()],
                env_vars: vec![],
                cwd: "/src".into(),
            },
            outputs: vec!["/src/a.o".into()],
        };
        let result = client.run_job(JobId(7), "t", &request, &inputs.finish().unwrap()).await.unwrap();
        let RunJobResult::Complete(complete) = result else {
            panic!("expected Complete");
        };
        assert_eq!(complete.outputs[0].0, "/src/a.o");
        assert_eq!(complete.outputs[0].1.decompress(100).unwrap(), b"int a;");

        let err = client.call::<AssignJobResult>("/refuse", None, Bytes::new()).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Server { status: 401, description } if description == "no Authorization header"),
            "{err}"
        );
        let (status, body) = client.post_raw("/nowhere", None, Bytes::new()).await.unwrap();
        assert_eq!((status, body.len()), (404, 0));

        handle.stop(false).await;
    }
}
