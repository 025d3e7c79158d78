//! What a job cost the machine: CPU time and peak memory of its processes, as the
//! kernel counted them, so an operator can see what a compile costs and size a farm.
//!
//! The sandbox backends measure (the overlay backend from `wait4` on bubblewrap and
//! the job's cgroup, the docker agent from `getrusage` of its job supervisor) and
//! record a [`JobUsage`] on the job's [`JobPhases`](super::JobPhases); the Observer
//! shows it on the status page, in `kiln status` and as `/metrics` histograms
//! labelled by compiler.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One job's resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct JobUsage {
    /// CPU time in user mode of every process of the job, ms.
    pub user_ms: f64,
    /// CPU time in the kernel on the job's behalf, ms.
    pub system_ms: f64,
    /// The job's peak memory in bytes. With a cgroup of its own (the overlay
    /// backend on a host with cgroups) its high-water mark: every process together,
    /// and the files it wrote to its tmpfs. Otherwise the peak resident set of its
    /// largest process.
    pub peak_memory_bytes: u64,
}

impl JobUsage {
    /// From a `struct rusage` the kernel filled for the job's processes.
    pub fn from_rusage(usage: &nix::libc::rusage) -> Self {
        let ms = |t: nix::libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
        JobUsage {
            user_ms: ms(usage.ru_utime),
            system_ms: ms(usage.ru_stime),
            // ru_maxrss is in KiB on Linux.
            peak_memory_bytes: (usage.ru_maxrss.max(0) as u64).saturating_mul(1024),
        }
    }

    pub fn cpu(&self) -> Duration {
        Duration::from_secs_f64((self.user_ms + self.system_ms).max(0.0) / 1000.0)
    }
}

/// Distinct compiler labels `/metrics` keeps; later ones count as `other`.
const MAX_COMPILERS: usize = 32;
/// A compiler label is cut to this many characters.
const MAX_COMPILER_CHARS: usize = 40;

/// The `compiler` label of a job's figures: its executable's file name.
///
/// Clients name the executable, so the label is bounded twice over: in length and
/// characters, and in how many distinct values one kiln keeps (a client sending a
/// new name per job would otherwise grow `/metrics` without end).
#[derive(Debug, Default)]
pub struct CompilerLabels {
    seen: Mutex<HashSet<String>>,
}

impl CompilerLabels {
    pub fn label(&self, executable: &str) -> String {
        let name = executable.rsplit('/').next().unwrap_or(executable);
        let name: String = name
            .chars()
            .take(MAX_COMPILER_CHARS)
            .map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' })
            .collect();
        if name.is_empty() {
            return "other".to_owned();
        }
        let mut seen = crate::sync::lock(&self.seen);
        if seen.contains(&name) {
            return name;
        }
        if seen.len() < MAX_COMPILERS {
            seen.insert(name.clone());
            return name;
        }
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_labels_are_file_names_bounded_in_form_and_number() {
        let labels = CompilerLabels::default();
        assert_eq!(labels.label("/usr/bin/x86_64-linux-gnu-gcc-12"), "x86_64-linux-gnu-gcc-12");
        assert_eq!(labels.label("rustc"), "rustc");
        assert_eq!(labels.label("/bin/we{ird}\"name\n"), "we_ird__name_");
        assert_eq!(labels.label("/usr/bin/"), "other");
        assert_eq!(labels.label(&"c".repeat(100)).len(), MAX_COMPILER_CHARS);
        for n in 0..100 {
            labels.label(&format!("/opt/cc-{n}"));
        }
        assert_eq!(labels.label("/opt/cc-99"), "other");
        assert_eq!(labels.label("/usr/local/bin/rustc"), "rustc", "a name seen before keeps its label");
    }

    #[test]
    fn usage_from_rusage_is_in_ms_and_bytes() {
        // SAFETY: rusage is plain old data; all zeroes is a valid value.
        let mut r: nix::libc::rusage = unsafe { std::mem::zeroed() };
        r.ru_utime = nix::libc::timeval { tv_sec: 1, tv_usec: 500_000 };
        r.ru_stime = nix::libc::timeval { tv_sec: 0, tv_usec: 2_000 };
        r.ru_maxrss = 2048;
        let u = JobUsage::from_rusage(&r);
        assert_eq!((u.user_ms, u.system_ms, u.peak_memory_bytes), (1500.0, 2.0, 2 << 20));
        assert_eq!(u.cpu(), Duration::from_millis(1502));
    }
}
