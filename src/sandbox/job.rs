use std::time::Duration;

use bytes::Bytes;

use super::SandboxError;
use crate::archive::{ArchiveError, ExtractLimits, SandboxPath};
use crate::protocol::{CompileCommand, JobId};

/// One job as a sandbox receives it.
#[derive(Debug)]
pub struct SandboxJob {
    pub job_id: JobId,
    pub command: CompileCommand,
    /// Paths the client wants back (absolute, or relative to the command's cwd).
    pub outputs: Vec<String>,
    /// zlib stream of an uncompressed tar of the inputs, as the client sent it.
    pub inputs_zlib: Bytes,
    pub timeout: Duration,
    /// The backend enters [`Phase::Inputs`], [`Phase::Compile`] and
    /// [`Phase::Outputs`] here as it goes (optional: see [`crate::observe::phases`]).
    ///
    /// [`Phase::Inputs`]: crate::observe::Phase::Inputs
    /// [`Phase::Compile`]: crate::observe::Phase::Compile
    /// [`Phase::Outputs`]: crate::observe::Phase::Outputs
    pub phases: crate::observe::SharedPhases,
}

/// Per-job bounds a sandbox enforces.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    pub inputs: ExtractLimits,
    pub max_output_bytes: u64,
    pub max_stdio_bytes: u64,
    /// Address space of each process of an overlay job (RLIMIT_AS); 0: unlimited.
    pub max_process_memory_bytes: u64,
    /// Memory (swap included) of a whole overlay job, enforced by its cgroup.
    pub max_memory_bytes: u64,
    /// Size of the tmpfs an overlay job writes into (inputs included).
    pub max_disk_bytes: u64,
    /// Processes and threads of a whole overlay job, enforced by its cgroup.
    pub max_pids: u64,
}

/// Checks a job's command the same way on every backend (environment, no NUL bytes,
/// a non-empty executable) and returns its cwd as a path inside the sandbox.
pub(crate) fn validate_command(command: &CompileCommand) -> Result<SandboxPath, SandboxError> {
    validate_env(&command.env_vars).map_err(SandboxError::BadCommand)?;
    if command.executable.is_empty()
        || command.executable.contains('\0')
        || command.arguments.iter().any(|a| a.contains('\0'))
    {
        return Err(SandboxError::BadCommand("executable is empty, or it or an argument has a NUL byte".into()));
    }
    SandboxPath::parse(command.cwd.as_bytes()).map_err(bad_path)
}

/// A cwd or output path the sandbox cannot hold is a malformed command.
pub(crate) fn bad_path(e: ArchiveError) -> SandboxError {
    SandboxError::BadCommand(e.to_string())
}

/// Checks a job's environment the way a shell would need it: `KEY=VALUE` pairs
/// whose keys contain no `=`, and nothing with a NUL byte.
pub(crate) fn validate_env(env: &[(String, String)]) -> Result<(), String> {
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("environment variable name {key:?} is empty or contains '=' or NUL"));
        }
        if value.contains('\0') {
            return Err(format!("environment variable {key} has a NUL byte in its value"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys_with_equals_are_refused() {
        assert!(validate_env(&[("PATH".into(), "/usr/bin".into())]).is_ok());
        assert!(validate_env(&[("A=B".into(), "x".into())]).is_err());
        assert!(validate_env(&[("".into(), "x".into())]).is_err());
        assert!(validate_env(&[("A".into(), "x\0y".into())]).is_err());
    }
}
