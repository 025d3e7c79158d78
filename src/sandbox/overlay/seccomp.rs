//! The seccomp filter every overlay job runs under, compiled once at startup and
//! handed to bubblewrap (`--seccomp FD`), which loads it right before it execs the
//! job's first program (bubblewrap's own set-up is not filtered).
//!
//! It is a deny list modelled on Docker's default profile: the job keeps every
//! system call a compiler, a linker or a build script uses, and loses those that
//! only matter for reaching past the sandbox. Each denied call fails with `EPERM`
//! (the process sees an ordinary error, as under Docker); calls the filter cannot
//! inspect fail with `ENOSYS`, so libc falls back to one it can. libseccomp compiles
//! the filter: it checks the architecture (an `int 0x80` i386 call and an x32 call
//! on x86_64 are refused as a foreign architecture) and resolves names per
//! architecture, which hand-written BPF gets wrong.
//!
//! The job already runs without capabilities, as an unprivileged host uid, in its
//! own user namespace with further user namespaces disabled; the filter is the
//! layer that still holds if one of those is bypassed by a kernel bug, which is
//! how most container escapes start (the kernel attack surface behind `bpf`,
//! `perf_event_open`, `io_uring`, `keyctl`, `userfaultfd` and the new mount API).

use std::io::{Read, Seek};

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use crate::sandbox::SandboxError;

/// Denied outright (`EPERM`). Grouped as Docker's profile documents them.
const DENIED: &[&str] = &[
    // Mounting, namespaces, and the new mount API: a job never rearranges its tree.
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // Kernel attack surface with a history of privilege escalations.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "fanotify_init",
    // Other processes' memory and file handles (CVE-2014-3519, "shocker").
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "open_by_handle_at",
    "name_to_handle_at",
    // The kernel, modules, the clock, swap, accounting, quotas, the console.
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "vhangup",
    "lookup_dcookie",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "iopl",
    "ioperm",
    // NUMA policy of memory the job shares with nobody, but Docker denies them.
    "mbind",
    "set_mempolicy",
    "move_pages",
];

/// Inspected through a pointer the filter cannot read: `ENOSYS` makes libc use the
/// older call, which the filter does inspect (glibc falls back from `clone3` to
/// `clone`, as it does under Docker).
const NOT_IMPLEMENTED: &[&str] = &["clone3", "openat2"];

/// Namespace flags of `clone`: creating any namespace is refused.
const CLONE_NEW_ANY: u64 = (nix::libc::CLONE_NEWNS
    | nix::libc::CLONE_NEWUTS
    | nix::libc::CLONE_NEWIPC
    | nix::libc::CLONE_NEWUSER
    | nix::libc::CLONE_NEWPID
    | nix::libc::CLONE_NEWNET
    | nix::libc::CLONE_NEWCGROUP
    | 0x80/* CLONE_NEWTIME */) as u64;

/// `S_ISUID | S_ISGID`: a job may not make a set-id file, so nothing it leaves in
/// its upper directory can ever run with its owner's or group's ids.
const SET_ID_BITS: u64 = (nix::libc::S_ISUID | nix::libc::S_ISGID) as u64;

/// `fchmodat2` (Linux 6.6) by number, for a libseccomp too old to know its name;
/// the same on every architecture kiln runs on (x86_64, aarch64).
const FCHMODAT2_NR: i32 = 452;

/// The largest filter bubblewrap is handed: it is written into a pipe before
/// bubblewrap starts, so it must fit in the pipe's default buffer.
const MAX_FILTER_BYTES: usize = 64 * 1024;

/// (system call, index of its mode argument): the calls that set a file's mode.
const MODE_SETTERS: &[(&str, u32)] = &[
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("fchmodat2", 2),
    ("open", 2),
    ("openat", 3),
    ("creat", 1),
    ("mknod", 1),
    ("mknodat", 2),
];

/// The filter as BPF, ready for bubblewrap's `--seccomp`.
#[derive(Debug, Clone)]
pub struct JobSeccomp {
    bpf: Vec<u8>,
}

impl JobSeccomp {
    /// Compiles the filter for the architecture kiln runs on.
    pub fn compile() -> Result<Self, SandboxError> {
        let err = |step: &'static str| {
            move |e: libseccomp::error::SeccompError| SandboxError::Seccomp { step, reason: e.to_string() }
        };
        let mut filter = ScmpFilterContext::new(ScmpAction::Allow).map_err(err("create the filter"))?;
        // A call of another architecture (i386's int 0x80, x32) is killed, never
        // interpreted with this architecture's numbers. libseccomp's default
        // already kills the thread; the whole process is the cleaner failure.
        filter.set_act_badarch(ScmpAction::KillProcess).map_err(err("set the bad-architecture action"))?;
        // bubblewrap sets no_new_privs itself; the filter must not need CAP_SYS_ADMIN.
        filter.set_ctl_nnp(true).map_err(err("set no_new_privs"))?;
        let eperm = ScmpAction::Errno(nix::libc::EPERM);
        for name in DENIED {
            if let Some(call) = resolve(name) {
                filter.add_rule(eperm, call).map_err(err("deny a system call"))?;
            }
        }
        for name in NOT_IMPLEMENTED {
            if let Some(call) = resolve(name) {
                filter.add_rule(ScmpAction::Errno(nix::libc::ENOSYS), call).map_err(err("deny a system call"))?;
            }
        }
        if let Some(clone) = resolve("clone") {
            // clone takes its flags first on x86_64 and aarch64. libseccomp has no
            // "any of these bits", so each namespace flag is a rule of its own.
            for bit in (0..64).map(|b| 1u64 << b).filter(|bit| CLONE_NEW_ANY & bit != 0) {
                let one = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(bit), bit);
                filter.add_rule_conditional(eperm, clone, &[one]).map_err(err("restrict clone"))?;
            }
        }
        for &(name, arg) in MODE_SETTERS {
            let Some(call) = resolve(name) else {
                if name == "fchmodat2" {
                    // Unknown to this libseccomp: refuse it whole (glibc then uses fchmodat).
                    let call = ScmpSyscall::from(FCHMODAT2_NR);
                    filter.add_rule(ScmpAction::Errno(nix::libc::ENOSYS), call).map_err(err("deny fchmodat2"))?;
                }
                continue;
            };
            for bit in [SET_ID_BITS & nix::libc::S_ISUID as u64, SET_ID_BITS & nix::libc::S_ISGID as u64] {
                let mode = ScmpArgCompare::new(arg, ScmpCompareOp::MaskedEqual(bit), bit);
                filter.add_rule_conditional(eperm, call, &[mode]).map_err(err("restrict set-id modes"))?;
            }
        }
        let bpf = export(&filter)?;
        if bpf.len() > MAX_FILTER_BYTES {
            return Err(SandboxError::Seccomp { step: "size the filter", reason: format!("{} bytes", bpf.len()) });
        }
        Ok(JobSeccomp { bpf })
    }

    /// The compiled program (`struct sock_filter` array), as bubblewrap reads it.
    pub fn bpf(&self) -> &[u8] {
        &self.bpf
    }
}

/// A system call by name on this architecture; `None` when this kernel
/// architecture has no such call (e.g. `open` on aarch64), which is then not a hole.
fn resolve(name: &str) -> Option<ScmpSyscall> {
    let call = ScmpSyscall::from_name_by_arch(name, ScmpArch::native()).ok()?;
    (!call.is_undef() && !call.is_error()).then_some(call)
}

/// libseccomp writes the program to an fd; a memfd keeps it off the file system.
fn export(filter: &ScmpFilterContext) -> Result<Vec<u8>, SandboxError> {
    let io = |step| move |e: std::io::Error| SandboxError::Seccomp { step, reason: e.to_string() };
    let fd = nix::sys::memfd::memfd_create("kiln-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| io("create a memfd")(e.into()))?;
    filter.export_bpf(&fd).map_err(|e| SandboxError::Seccomp { step: "export the filter", reason: e.to_string() })?;
    let mut file = std::fs::File::from(fd);
    file.rewind().map_err(io("rewind the memfd"))?;
    let mut bpf = Vec::new();
    file.read_to_end(&mut bpf).map_err(io("read the filter"))?;
    Ok(bpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_to_whole_bpf_instructions() {
        let filter = JobSeccomp::compile().unwrap();
        // struct sock_filter is 8 bytes; a filter with our rules is far from empty
        // and within the kernel's 4096-instruction limit.
        assert_eq!(filter.bpf().len() % 8, 0);
        let instructions = filter.bpf().len() / 8;
        assert!((100..4096).contains(&instructions), "{instructions} instructions");
    }

    #[test]
    fn every_listed_call_is_known_here() {
        // A typo in a name would silently leave the call allowed.
        let mode_setters = MODE_SETTERS.iter().map(|(name, _)| name);
        for name in DENIED.iter().chain(NOT_IMPLEMENTED).chain(mode_setters) {
            let legacy = ["create_module", "uselib", "_sysctl", "nfsservctl", "ustat", "sysfs", "iopl", "ioperm"];
            // fchmodat2 is refused by number where libseccomp does not know it.
            if legacy.contains(name) || *name == "fchmodat2" {
                continue; // legacy calls some architectures never had
            }
            assert!(resolve(name).is_some(), "{name} is unknown to libseccomp on this architecture");
        }
    }
}
