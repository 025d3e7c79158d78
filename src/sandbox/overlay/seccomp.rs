//! The seccomp filter every overlay job runs under, compiled once at startup and
//! handed to bubblewrap (`--seccomp FD`), which loads it right before it execs the
//! job's first program (bubblewrap's own set-up is not filtered).
//!
//! It renders [`crate::sandbox::syscalls`]'s policy, a deny list modelled on
//! Docker's default profile, with libseccomp: every other call is allowed. libseccomp
//! checks the architecture (an `int 0x80` i386 call and an x32 call on x86_64 are
//! refused as a foreign architecture) and resolves names per architecture, which
//! hand-written BPF gets wrong.

use std::io::{Read, Seek};

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use crate::sandbox::syscalls::{self, When, DENIALS};
use crate::sandbox::SandboxError;

/// The largest filter bubblewrap is handed: it is written into a pipe before
/// bubblewrap starts, so it must fit in the pipe's default buffer.
const MAX_FILTER_BYTES: usize = 64 * 1024;

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
        for denial in DENIALS {
            // A call this architecture does not have (`open` on aarch64) is no hole.
            let Some(nr) = syscalls::number(denial.call) else { continue };
            let action = ScmpAction::Errno(denial.errno);
            for rule in rules(denial.when) {
                match rule {
                    None => filter.add_rule(action, ScmpSyscall::from(nr)),
                    Some(cmp) => filter.add_rule_conditional(action, ScmpSyscall::from(nr), &[cmp]),
                }
                .map_err(err("deny a system call"))?;
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

/// `when` as libseccomp rules: the call is denied when any rule matches, and a
/// rule matches when its comparison (if any) holds. libseccomp takes at most one
/// comparison per argument in a rule, and has no "any of these bits": each
/// condition is spelled as a union of single comparisons.
fn rules(when: When) -> Vec<Option<ScmpArgCompare>> {
    let bits = |mask: u64| (0..64).map(|b| 1u64 << b).filter(move |bit| mask & bit != 0);
    let masked = |arg, mask, value| Some(ScmpArgCompare::new(arg, ScmpCompareOp::MaskedEqual(mask), value));
    match when {
        When::Always => vec![None],
        When::AnyBit { arg, mask } => bits(mask).map(|bit| masked(arg, bit, bit)).collect(),
        When::Int { arg, value } => vec![masked(arg, 0xffff_ffff, u64::from(value))],
        When::NotPersona { arg, flags } => {
            // Allowed: 0xffffffff, or a value made of `flags`' bits (bit 31 is not
            // one). Denied, as a union: anything above 32 bits; bit 31 clear and a
            // bit outside `flags` set; bit 31 set and any lower bit clear.
            assert_eq!(flags & 0x8000_0000, 0, "bit 31 tells the query apart");
            const TOP: u64 = 1 << 31;
            let mut union = vec![Some(ScmpArgCompare::new(arg, ScmpCompareOp::Greater, 0xffff_ffff))];
            union.extend(bits(!u64::from(flags) & 0x7fff_ffff).map(|bit| masked(arg, bit | TOP, bit)));
            union.extend(bits(0x7fff_ffff).map(|bit| masked(arg, bit | TOP, TOP)));
            union
        }
    }
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
    use std::collections::BTreeSet;

    use nix::libc;

    use super::*;
    use crate::sandbox::syscalls::cbpf::{self, Verdict};
    use crate::sandbox::syscalls::policy::{AF_VSOCK, CLONE_NEW_ANY};

    fn filter() -> Vec<u8> {
        JobSeccomp::compile().unwrap().bpf().to_vec()
    }

    fn nr(name: &str) -> i32 {
        syscalls::number(name).unwrap_or_else(|| panic!("{name} has no number here"))
    }

    #[cfg(target_arch = "x86_64")]
    fn verdict(bpf: &[u8], name: &str, args: [u64; 6]) -> Verdict {
        cbpf::run(bpf, cbpf::ARCH_X86_64, nr(name), args)
    }

    #[test]
    fn the_filter_compiles_to_whole_bpf_instructions() {
        let filter = JobSeccomp::compile().unwrap();
        // struct sock_filter is 8 bytes; a filter with our rules is far from empty
        // and within the kernel's 4096-instruction limit.
        assert_eq!(filter.bpf().len() % 8, 0);
        let instructions = filter.bpf().len() / 8;
        assert!((100..4096).contains(&instructions), "{instructions} instructions");
    }

    /// Every call the running kernel implements that the filter lets through (with
    /// all-zero arguments) is named in allowed_syscalls.txt, and every name there is
    /// let through: a call a new kernel adds fails this test, by name, instead of
    /// reaching jobs unreviewed. Calls denied only for some arguments are listed;
    /// those arguments are checked below.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_filter_allows_exactly_the_listed_calls_of_this_kernel() {
        let bpf = filter();
        let kernel = cbpf::kernel_syscalls().unwrap();
        let allowed: BTreeSet<&str> = kernel
            .iter()
            .filter(|(&nr, _)| cbpf::run(&bpf, cbpf::ARCH_X86_64, nr, [0; 6]) == Verdict::Allow)
            .map(|(_, name)| name.as_str())
            .collect();
        let listed: BTreeSet<&str> = syscalls::allowed().collect();
        let added: Vec<&&str> = allowed.difference(&listed).collect();
        let removed: Vec<&&str> = listed.difference(&allowed).collect();
        assert!(
            added.is_empty() && removed.is_empty(),
            "the filter allows calls allowed_syscalls.txt does not list: {added:?}\n\
             allowed_syscalls.txt lists calls the filter denies or this kernel lacks: {removed:?}\n\
             review each, then deny it in src/sandbox/syscalls/policy.rs or list it"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn foreign_architectures_are_killed() {
        let bpf = filter();
        for call in ["read", "getpid", "mount", "socket"] {
            let x32 = nr(call) | cbpf::X32_SYSCALL_BIT;
            assert_eq!(cbpf::run(&bpf, cbpf::ARCH_X86_64, x32, [0; 6]), Verdict::KillProcess, "x32 {call}");
        }
        for i386 in [0, 3, 11, 21, 102, 120, 400] {
            assert_eq!(cbpf::run(&bpf, cbpf::ARCH_I386, i386, [0; 6]), Verdict::KillProcess, "i386 {i386}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn denied_calls_get_their_errno() {
        let bpf = filter();
        let errno = |e: i32| Verdict::Errno(e as u16);
        for (name, want) in [
            ("mount", errno(libc::EPERM)),
            ("open_tree_attr", errno(libc::EPERM)),
            ("statmount", errno(libc::ENOSYS)),
            ("listmount", errno(libc::ENOSYS)),
            ("io_setup", errno(libc::ENOSYS)),
            ("io_submit", errno(libc::ENOSYS)),
            ("io_pgetevents", errno(libc::ENOSYS)),
            ("io_uring_setup", errno(libc::EPERM)),
            ("clone3", errno(libc::ENOSYS)),
            ("openat2", errno(libc::ENOSYS)),
            ("read", Verdict::Allow),
            ("execve", Verdict::Allow),
        ] {
            assert_eq!(verdict(&bpf, name, [0; 6]), want, "{name}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vsock_sockets_are_refused_whatever_lies_above_the_int() {
        let bpf = filter();
        let refused = Verdict::Errno(libc::EAFNOSUPPORT as u16);
        for call in ["socket", "socketpair"] {
            for family in [u64::from(AF_VSOCK), 0xffff_ffff_0000_0000 | u64::from(AF_VSOCK), 1 << 32 | 40] {
                assert_eq!(verdict(&bpf, call, [family, 1, 0, 0, 0, 0]), refused, "{call}({family:#x})");
            }
            for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK, 41, 0xff] {
                let family = family as u64;
                assert_eq!(verdict(&bpf, call, [family, 1, 0, 0, 0, 0]), Verdict::Allow, "{call}({family})");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn personality_allows_only_dockers_personas() {
        let bpf = filter();
        for persona in [0xffff_ffff, 0, 0x8, 0x2_0000, 0x2_0008] {
            assert_eq!(verdict(&bpf, "personality", [persona, 0, 0, 0, 0, 0]), Verdict::Allow, "{persona:#x}");
        }
        let mut denied = vec![
            0x0004_0000, // ADDR_NO_RANDOMIZE
            0x0004_0008, // PER_LINUX32 | ADDR_NO_RANDOMIZE
            0x0040_0000, // READ_IMPLIES_EXEC
            0x0010_0000, // MMAP_PAGE_ZERO
            0x0000_0001, // PER_SVR4's low byte
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fffe,
            0x1_ffff_ffff,
            0x1_0000_0000,
            0x1_0000_0008,
            u64::MAX,
        ];
        // Every single bit and every pair of bits, but the allowed ones.
        for i in 0..64 {
            for j in i..64 {
                denied.push(1u64 << i | 1u64 << j);
            }
        }
        for persona in denied.into_iter().filter(|p| ![0, 0x8, 0x2_0000, 0x2_0008].contains(p)) {
            let want = Verdict::Errno(libc::EPERM as u16);
            assert_eq!(verdict(&bpf, "personality", [persona, 0, 0, 0, 0, 0]), want, "{persona:#x}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn namespaces_and_set_id_modes_are_refused() {
        let bpf = filter();
        let eperm = Verdict::Errno(libc::EPERM as u16);
        let sigchld = libc::SIGCHLD as u64;
        assert_eq!(verdict(&bpf, "clone", [sigchld, 0, 0, 0, 0, 0]), Verdict::Allow);
        let threads =
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64;
        assert_eq!(verdict(&bpf, "clone", [threads, 0, 0, 0, 0, 0]), Verdict::Allow);
        for bit in (0..64).map(|b| 1u64 << b).filter(|bit| CLONE_NEW_ANY & bit != 0) {
            assert_eq!(verdict(&bpf, "clone", [bit | sigchld, 0, 0, 0, 0, 0]), eperm, "clone {bit:#x}");
        }
        for (call, arg) in [("chmod", 1), ("fchmodat", 2), ("fchmodat2", 2), ("openat", 3), ("mknodat", 2)] {
            let with = |mode: u64| {
                let mut args = [0u64; 6];
                args[arg] = mode;
                verdict(&bpf, call, args)
            };
            assert_eq!(with(0o755), Verdict::Allow, "{call} 0755");
            assert_eq!(with(0o1777), Verdict::Allow, "{call} 01777");
            for mode in [0o4755, 0o2755, 0o6755, 0xffff_0000_0000_0800] {
                assert_eq!(with(mode), eperm, "{call} {mode:o}");
            }
        }
    }
}
