//! kiln's end of the link to a container's agent: kiln-init, the container's pid 1,
//! reached through the container's stdin and stdout, which kiln attaches once when it
//! creates the container. A warm job is one request and one reply on that link; no
//! Engine API call. The wire format is described at the top of `kiln_init.c`.

use std::pin::Pin;

use bollard::container::LogOutput;
use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::error::DockerError;
use crate::observe::JobUsage;

pub type AgentOutput = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
pub type AgentInput = Pin<Box<dyn AsyncWrite + Send>>;

/// Longest message the agent sends (it bounds its own to 512 bytes).
const MAX_MESSAGE: u32 = 4096;

/// One output of a job, as the agent found it.
#[derive(Debug)]
pub enum AgentOutputFile {
    Missing,
    File(Vec<u8>),
    NotRegular,
}

/// What the agent made of one job.
#[derive(Debug)]
pub enum JobReply {
    /// The command ran to its end.
    Exited { code: i32, usage: JobUsage, stdout: Vec<u8>, stderr: Vec<u8>, outputs: Vec<AgentOutputFile> },
    /// The agent's own deadline passed; it killed the job.
    TimedOut,
    /// The outputs together exceed the job's limit.
    OutputsTooLarge,
    /// The inputs could not be laid out (a name too long for the file system, no
    /// space left): the message says which. The job's, not the machinery's, failure.
    InputsNotLaidOut(String),
    /// The job's supervisor was killed by this signal, by the job itself (it runs as
    /// the same user) or the OOM killer: the job's own end, like a crash.
    SupervisorKilled(u32),
    /// The command could not be started (its inputs could not be laid out, no process
    /// was left, its supervisor died): the message says which.
    NotStarted(String),
}

/// The attached stdin and stdout of one container's agent.
pub struct AgentLink {
    container: String,
    input: AgentInput,
    output: AgentOutput,
    /// Bytes of the agent's stdout received and not yet read.
    pending: Bytes,
    /// False from a request until its whole reply has been read: a link dropped in
    /// the middle (kiln timed a job out, or its client went away) is out of step with
    /// the agent for good, and its container is not used again.
    in_step: bool,
}

impl std::fmt::Debug for AgentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLink").field("container", &self.container).field("in_step", &self.in_step).finish()
    }
}

impl AgentLink {
    pub fn new(container: String, input: AgentInput, output: AgentOutput) -> Self {
        AgentLink { container, input, output, pending: Bytes::new(), in_step: true }
    }

    /// Whether the link can carry another request.
    pub fn in_step(&self) -> bool {
        self.in_step
    }

    /// Sends one job (a request built by `job::prepare`) and reads its reply; stdout
    /// and stderr are each at most `max_stdio` bytes, the outputs `max_output` in all
    /// (the agent enforces both; a reply beyond them is refused here too).
    pub async fn run_job(
        &mut self,
        request: &[u8],
        outputs: usize,
        max_stdio: u64,
        max_output: u64,
    ) -> Result<JobReply, DockerError> {
        self.send(request).await?;
        self.expect_magic(b"KRES").await?;
        let reply = match self.read_u8().await? {
            0 => {
                let code = self.read_u32().await? as i32;
                let usage = self.read_usage().await?;
                let stdout = self.read_bytes(max_stdio).await?;
                let stderr = self.read_bytes(max_stdio).await?;
                let mut files = Vec::with_capacity(outputs);
                let mut room = max_output;
                let mut too_large = false;
                for _ in 0..outputs {
                    match self.read_u8().await? {
                        0 => files.push(AgentOutputFile::Missing),
                        1 => {
                            let data = self.read_bytes(room).await?;
                            room -= data.len() as u64;
                            files.push(AgentOutputFile::File(data));
                        }
                        2 => files.push(AgentOutputFile::NotRegular),
                        3 => {
                            too_large = true;
                            break;
                        }
                        other => return Err(self.broken(format!("output state {other}"))),
                    }
                }
                if too_large {
                    JobReply::OutputsTooLarge
                } else {
                    JobReply::Exited { code, usage, stdout, stderr, outputs: files }
                }
            }
            2 => {
                let _code = self.read_u32().await?;
                self.read_usage().await?;
                self.read_bytes(max_stdio).await?;
                self.read_bytes(max_stdio).await?;
                JobReply::TimedOut
            }
            1 => JobReply::NotStarted(self.read_message().await?),
            3 => JobReply::SupervisorKilled(self.read_u32().await?),
            4 => JobReply::InputsNotLaidOut(self.read_message().await?),
            other => return Err(self.broken(format!("reply status {other}"))),
        };
        self.in_step = true;
        Ok(reply)
    }

    /// The command's CPU times (µs) and largest resident set (KiB), as the agent's
    /// `getrusage(RUSAGE_CHILDREN)` gave them.
    async fn read_usage(&mut self) -> Result<JobUsage, DockerError> {
        let (user_us, system_us, max_rss_kib) =
            (self.read_u64().await?, self.read_u64().await?, self.read_u64().await?);
        Ok(JobUsage {
            user_ms: user_us as f64 / 1000.0,
            system_ms: system_us as f64 / 1000.0,
            peak_memory_bytes: max_rss_kib.saturating_mul(1024),
        })
    }

    /// Resets the container: every process of the job killed, every SysV IPC object
    /// and every file the job user owns removed.
    pub async fn reset(&mut self) -> Result<(), DockerError> {
        self.send(b"KRST").await?;
        self.expect_magic(b"KRST").await?;
        let failed = self.read_u8().await? != 0;
        let message = self.read_message().await?;
        self.in_step = true;
        if failed {
            return Err(DockerError::Reset { container: self.container.clone(), message });
        }
        Ok(())
    }

    async fn send(&mut self, request: &[u8]) -> Result<(), DockerError> {
        if !self.in_step {
            return Err(self.broken("a previous exchange was left unfinished".into()));
        }
        self.in_step = false;
        let written = async {
            self.input.write_all(request).await?;
            self.input.flush().await
        };
        written.await.map_err(|source| DockerError::AgentIo { container: self.container.clone(), source })
    }

    fn broken(&self, reason: String) -> DockerError {
        DockerError::Agent { container: self.container.clone(), reason }
    }

    /// Waits for more of the agent's stdout; its stderr (the agent's own complaints)
    /// goes to the log.
    async fn fill(&mut self) -> Result<(), DockerError> {
        loop {
            match self.output.next().await {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    if !message.is_empty() {
                        self.pending = message;
                        return Ok(());
                    }
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    let text = String::from_utf8_lossy(&message);
                    tracing::warn!(container = %self.container, agent = %text.trim_end(), "the container's agent complained");
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => return Err(self.broken(format!("reading its stdout: {e}"))),
                None => return Err(self.broken("its stdout ended (the container stopped)".into())),
            }
        }
    }

    async fn read_into(&mut self, out: &mut Vec<u8>, mut n: usize) -> Result<(), DockerError> {
        while n > 0 {
            if self.pending.is_empty() {
                self.fill().await?;
            }
            let take = n.min(self.pending.len());
            out.extend_from_slice(&self.pending[..take]);
            self.pending.advance(take);
            n -= take;
        }
        Ok(())
    }

    async fn read_array<const N: usize>(&mut self) -> Result<[u8; N], DockerError> {
        let mut buf = Vec::with_capacity(N);
        self.read_into(&mut buf, N).await?;
        Ok(buf.try_into().expect("read_into reads exactly N bytes"))
    }

    async fn read_u8(&mut self) -> Result<u8, DockerError> {
        Ok(self.read_array::<1>().await?[0])
    }

    async fn read_u32(&mut self) -> Result<u32, DockerError> {
        Ok(u32::from_le_bytes(self.read_array().await?))
    }

    async fn read_u64(&mut self) -> Result<u64, DockerError> {
        Ok(u64::from_le_bytes(self.read_array().await?))
    }

    async fn expect_magic(&mut self, magic: &[u8; 4]) -> Result<(), DockerError> {
        let got = self.read_array::<4>().await?;
        if &got != magic {
            return Err(self.broken(format!("expected {:?}, got {:?}", magic, got)));
        }
        Ok(())
    }

    /// A u64 length and that many bytes, at most `limit`.
    async fn read_bytes(&mut self, limit: u64) -> Result<Vec<u8>, DockerError> {
        let len = self.read_u64().await?;
        if len > limit {
            return Err(self.broken(format!("a reply part of {len} bytes exceeds {limit}")));
        }
        let len = usize::try_from(len).map_err(|_| self.broken("a reply part too large for memory".into()))?;
        let mut data = Vec::with_capacity(len);
        self.read_into(&mut data, len).await?;
        Ok(data)
    }

    async fn read_message(&mut self) -> Result<String, DockerError> {
        let len = self.read_u32().await?;
        if len > MAX_MESSAGE {
            return Err(self.broken(format!("a message of {len} bytes")));
        }
        let mut data = Vec::with_capacity(len as usize);
        self.read_into(&mut data, len as usize).await?;
        Ok(String::from_utf8_lossy(&data).into_owned())
    }
}
