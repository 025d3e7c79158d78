//! What a job may not call: a deny list modelled on Docker's default profile, plus
//! what kiln's own attack tests found (issue 27), and the list of calls a job keeps.
//!
//! A job keeps every system call a compiler, a linker or a build script uses, and
//! loses those that only matter for reaching past its sandbox. A denied call fails
//! with an errno, so the process sees an ordinary error: `EPERM` as under Docker,
//! `ENOSYS` where that makes libc or a library take an older path it has (as on a
//! kernel without the call), `EAFNOSUPPORT` for a socket family, as on a kernel
//! without it.
//!
//! The job already runs without capabilities, as an unprivileged host uid, with
//! further user namespaces disabled; the filter is the layer that still holds if
//! one of those is bypassed by a kernel bug, which is how most container escapes
//! start (the kernel attack surface behind `bpf`, `perf_event_open`, `io_uring`,
//! `keyctl`, `userfaultfd` and the new mount API), and the one that closes what no
//! namespace isolates (AF_VSOCK ports, the host's AIO budget).
//!
//! A deny list lets a call added by a future kernel through until it is listed:
//! `allowed_syscalls.txt` names every call of the running kernel the overlay
//! filter lets through, and a test fails with the names when the kernel knows one
//! more (`src/sandbox/overlay/seccomp.rs`).

use libseccomp::{ScmpArch, ScmpSyscall};
use nix::libc;

/// When a [`Denial`] applies, by the call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Whatever the arguments.
    Always,
    /// Argument `arg` has any bit of `mask` set.
    AnyBit { arg: u32, mask: u64 },
    /// Argument `arg`, read as the `int` the kernel reads (its low 32 bits), is
    /// `value`. Comparing all 64 bits of the register would let a job pass `value`
    /// with garbage above it, which the kernel drops.
    Int { arg: u32, value: u32 },
    /// Argument `arg` (all 64 bits) is neither `0xffffffff` (personality(2)'s query)
    /// nor made of `flags`' bits only (each persona those bits can form).
    NotPersona { arg: u32, flags: u32 },
}

/// A system call refused with `errno` when `when` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub call: &'static str,
    pub errno: i32,
    pub when: When,
}

const fn eperm(call: &'static str) -> Denial {
    Denial { call, errno: libc::EPERM, when: When::Always }
}

const fn enosys(call: &'static str) -> Denial {
    Denial { call, errno: libc::ENOSYS, when: When::Always }
}

/// Namespace flags of `clone`: creating any namespace is refused.
pub const CLONE_NEW_ANY: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP
    | 0x80/* CLONE_NEWTIME */) as u64;

/// `S_ISUID | S_ISGID`: a job may not make a set-id file, so nothing it leaves in
/// its upper directory can ever run with its owner's or group's ids.
pub const SET_ID_BITS: u64 = (libc::S_ISUID | libc::S_ISGID) as u64;

/// The personas personality(2) may set, as Docker's default profile allows them:
/// `PER_LINUX` (0), `PER_LINUX32` (0x8), `UNAME26` (0x20000) and both. The other
/// flags turn off ASLR (`ADDR_NO_RANDOMIZE`), make every readable mapping
/// executable (`READ_IMPLIES_EXEC`) or map page zero (`MMAP_PAGE_ZERO`): each undoes
/// an exploit mitigation, and no build needs one (issue 27, finding 9).
pub const PERSONA_FLAGS: u32 = 0x0002_0008;

/// `AF_VSOCK`: the VM's sockets to its hypervisor. A network namespace does not
/// isolate them: a job listening on a vsock port took that port from the whole VM,
/// and the host could then not bind it (issue 27, finding 5).
pub const AF_VSOCK: u32 = libc::AF_VSOCK as u32;

/// Every denial, grouped as Docker's profile documents them.
pub const DENIALS: &[Denial] = &[
    // Mounting, namespaces, and the new mount API: a job never rearranges its tree.
    eperm("mount"),
    eperm("umount"),
    eperm("umount2"),
    eperm("pivot_root"),
    eperm("chroot"),
    eperm("unshare"),
    eperm("setns"),
    eperm("fsopen"),
    eperm("fsconfig"),
    eperm("fsmount"),
    eperm("fspick"),
    eperm("move_mount"),
    eperm("open_tree"),
    // open_tree(2) with mount_setattr(2)'s attributes (Linux 6.15; issue 27, finding 9).
    eperm("open_tree_attr"),
    eperm("mount_setattr"),
    // Mount inspection by mount id (Linux 6.8; issue 27, finding 9). ENOSYS, as on
    // a kernel without them: libmount then reads /proc/self/mountinfo, which shows
    // the job's own mount namespace.
    enosys("statmount"),
    enosys("listmount"),
    // Namespace flags of clone. clone3 passes its flags through a pointer the
    // filter cannot read: ENOSYS makes glibc fall back to clone, as under Docker.
    Denial { call: "clone", errno: libc::EPERM, when: When::AnyBit { arg: 0, mask: CLONE_NEW_ANY } },
    enosys("clone3"),
    // Kernel attack surface with a history of privilege escalations.
    eperm("bpf"),
    eperm("perf_event_open"),
    eperm("userfaultfd"),
    eperm("io_uring_setup"),
    eperm("io_uring_enter"),
    eperm("io_uring_register"),
    eperm("keyctl"),
    eperm("add_key"),
    eperm("request_key"),
    eperm("fanotify_init"),
    // Kernel AIO: every context a job sets up counts against `fs.aio-max-nr`, one
    // budget for the whole host that no cgroup or namespace divides; a job took all
    // of it and root's io_setup on the host then failed (issue 27, finding 8). No
    // compiler uses kernel AIO (glibc's POSIX aio runs on threads), so a job gets
    // none: ENOSYS, as from a kernel built without CONFIG_AIO, which libaio's users
    // handle. The rest of the family is refused with it, as io_uring's is.
    enosys("io_setup"),
    enosys("io_destroy"),
    enosys("io_submit"),
    enosys("io_cancel"),
    enosys("io_getevents"),
    enosys("io_pgetevents"),
    // Sockets no network namespace isolates (issue 27, finding 5). socketpair
    // creates sockets of the family too, before the family refuses the pair.
    Denial { call: "socket", errno: libc::EAFNOSUPPORT, when: When::Int { arg: 0, value: AF_VSOCK } },
    Denial { call: "socketpair", errno: libc::EAFNOSUPPORT, when: When::Int { arg: 0, value: AF_VSOCK } },
    // Personas that undo exploit mitigations (issue 27, finding 9), as Docker.
    Denial { call: "personality", errno: libc::EPERM, when: When::NotPersona { arg: 0, flags: PERSONA_FLAGS } },
    // Other processes' memory and file handles (CVE-2014-3519, "shocker").
    eperm("ptrace"),
    eperm("process_vm_readv"),
    eperm("process_vm_writev"),
    eperm("process_madvise"),
    eperm("pidfd_getfd"),
    eperm("kcmp"),
    eperm("open_by_handle_at"),
    eperm("name_to_handle_at"),
    // The kernel, modules, the clock, swap, accounting, quotas, the console.
    eperm("init_module"),
    eperm("finit_module"),
    eperm("delete_module"),
    eperm("create_module"),
    eperm("kexec_load"),
    eperm("kexec_file_load"),
    eperm("reboot"),
    eperm("swapon"),
    eperm("swapoff"),
    eperm("acct"),
    eperm("quotactl"),
    eperm("quotactl_fd"),
    eperm("settimeofday"),
    eperm("clock_settime"),
    eperm("clock_adjtime"),
    eperm("adjtimex"),
    eperm("syslog"),
    eperm("vhangup"),
    eperm("lookup_dcookie"),
    eperm("nfsservctl"),
    eperm("uselib"),
    eperm("ustat"),
    eperm("sysfs"),
    eperm("_sysctl"),
    eperm("iopl"),
    eperm("ioperm"),
    // NUMA policy of memory the job shares with nobody, but Docker denies them
    // (without CAP_SYS_NICE).
    eperm("mbind"),
    eperm("set_mempolicy"),
    eperm("set_mempolicy_home_node"),
    eperm("move_pages"),
    // openat2 passes its mode through a pointer the filter cannot read: ENOSYS
    // makes libc use openat, whose mode the rules below inspect.
    enosys("openat2"),
    // The calls that set a file's mode (the index is the mode's argument): a
    // set-uid or set-gid mode is refused.
    set_id("chmod", 1),
    set_id("fchmod", 1),
    set_id("fchmodat", 2),
    set_id("fchmodat2", 2),
    set_id("open", 2),
    set_id("openat", 3),
    set_id("creat", 1),
    set_id("mknod", 1),
    set_id("mknodat", 2),
];

const fn set_id(call: &'static str, arg: u32) -> Denial {
    Denial { call, errno: libc::EPERM, when: When::AnyBit { arg, mask: SET_ID_BITS } }
}

/// Calls newer than a libseccomp kiln may be built against (Debian 12's 2.5.4
/// knows calls up to `futex_requeue`, 456), by number. Every call since Linux 5.1
/// (`pidfd_send_signal`, 424) has the same number on every architecture, x86_64 and
/// aarch64 included. Checked against libseccomp where it knows the name.
pub const NUMBERED: &[(&str, i32)] = &[
    ("fchmodat2", 452),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    ("statmount", 457),
    ("listmount", 458),
    ("lsm_get_self_attr", 459),
    ("lsm_set_self_attr", 460),
    ("lsm_list_modules", 461),
    ("mseal", 462),
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
    ("open_tree_attr", 467),
    ("file_getattr", 468),
    ("file_setattr", 469),
];

/// A system call's number on the architecture kiln runs on: libseccomp's, else
/// [`NUMBERED`]'s. `None` when this architecture has no such call (`open` on
/// aarch64, `socketcall` on x86_64), which is then not a hole.
pub fn number(name: &str) -> Option<i32> {
    match ScmpSyscall::from_name_by_arch(name, ScmpArch::native()) {
        Ok(call) if !call.is_error() && !call.is_undef() => {
            let nr = call.as_raw_syscall();
            // libseccomp names calls of other architectures with negative numbers.
            (nr >= 0).then_some(nr)
        }
        _ => NUMBERED.iter().find(|(known, _)| *known == name).map(|&(_, nr)| nr),
    }
}

/// The calls a job keeps whatever their arguments may be (some are refused for
/// some arguments, by [`DENIALS`]): every call Linux 6.18 on x86_64 has, less the
/// denied ones. A test keeps it equal to what the overlay filter lets through on
/// the running kernel; the docker backend's profile allows exactly these.
pub fn allowed() -> impl Iterator<Item = &'static str> {
    include_str!("allowed_syscalls.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denied_call_is_known_here() {
        // A typo in a name would silently leave the call allowed.
        let legacy = ["create_module", "uselib", "_sysctl", "nfsservctl", "ustat", "sysfs", "iopl", "ioperm", "umount"];
        for denial in DENIALS {
            if legacy.contains(&denial.call) {
                continue; // legacy calls some architectures never had
            }
            assert!(number(denial.call).is_some(), "{} is unknown on this architecture", denial.call);
        }
    }

    #[test]
    fn numbered_calls_agree_with_libseccomp() {
        for &(name, nr) in NUMBERED {
            if let Ok(call) = ScmpSyscall::from_name_by_arch(name, ScmpArch::native()) {
                if !call.is_error() && call.as_raw_syscall() >= 0 {
                    assert_eq!(call.as_raw_syscall(), nr, "{name}");
                }
            }
        }
    }

    #[test]
    fn no_call_is_both_allowed_and_always_denied() {
        let always: Vec<&str> = DENIALS.iter().filter(|d| d.when == When::Always).map(|d| d.call).collect();
        let both: Vec<&str> = allowed().filter(|name| always.contains(name)).collect();
        assert!(both.is_empty(), "allowed_syscalls.txt names denied calls: {both:?}");
        let mut names: Vec<&str> = allowed().collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "allowed_syscalls.txt names a call twice");
    }

    #[test]
    fn a_call_has_at_most_one_conditional_denial() {
        // The docker profile allows a conditionally denied call where its one
        // condition does not hold; two conditions would need their conjunction.
        for denial in DENIALS {
            let same = DENIALS.iter().filter(|d| d.call == denial.call).count();
            assert_eq!(same, 1, "{} is listed {same} times", denial.call);
        }
    }
}
