use std::time::Duration;

use bytes::Bytes;

use crate::archive::ExtractLimits;
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
