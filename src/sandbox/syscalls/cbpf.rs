//! Test support: runs a compiled seccomp filter the way the kernel does, and lists
//! the system calls the running kernel implements.
//!
//! The interpreter knows the classic BPF subset a seccomp filter may use (loads of
//! `struct seccomp_data`, ALU, jumps, returns; seccomp(2) and
//! Documentation/networking/filter.rst) and refuses anything else, so a filter it
//! cannot read fails a test rather than passing one.

use std::collections::BTreeMap;

use libseccomp::{ScmpArch, ScmpSyscall};

use super::policy::NUMBERED;

/// `AUDIT_ARCH_X86_64`, `AUDIT_ARCH_I386`, `AUDIT_ARCH_AARCH64` (linux/audit.h).
pub const ARCH_X86_64: u32 = 0xc000_003e;
pub const ARCH_I386: u32 = 0x4000_0003;
/// x32 calls arrive as x86_64 calls with this bit set in their number.
pub const X32_SYSCALL_BIT: i32 = 0x4000_0000;

/// What a filter answered, decoded (`SECCOMP_RET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Errno(u16),
    KillProcess,
    KillThread,
    /// Any other action (trap, trace, log, user notification), raw.
    Other(u32),
}

impl Verdict {
    fn decode(ret: u32) -> Verdict {
        match ret & 0xffff_0000 {
            0x7fff_0000 => Verdict::Allow,
            0x0005_0000 => Verdict::Errno((ret & 0xffff) as u16),
            0x8000_0000 => Verdict::KillProcess,
            0x0000_0000 => Verdict::KillThread,
            _ => Verdict::Other(ret),
        }
    }
}

/// Runs `bpf` (an array of `struct sock_filter`, as libseccomp exports it) on a
/// call of `arch` with number `nr` and arguments `args`.
pub fn run(bpf: &[u8], arch: u32, nr: i32, args: [u64; 6]) -> Verdict {
    assert_eq!(bpf.len() % 8, 0, "a filter is whole 8-byte instructions");
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, arg) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
    }
    let insns: Vec<(u16, u8, u8, u32)> = bpf
        .chunks_exact(8)
        .map(|c| {
            let code = u16::from_ne_bytes([c[0], c[1]]);
            (code, c[2], c[3], u32::from_ne_bytes([c[4], c[5], c[6], c[7]]))
        })
        .collect();
    let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0usize;
    // Classic BPF only jumps forward: at most one step per instruction.
    for _ in 0..=insns.len() {
        let Some(&(code, jt, jf, k)) = insns.get(pc) else { panic!("the filter runs off its end at {pc}") };
        pc += 1;
        let jump = |taken: bool| if taken { jt as usize } else { jf as usize };
        match code {
            // BPF_LD | BPF_W | BPF_ABS: a 32-bit word of seccomp_data.
            0x20 => {
                let at = k as usize;
                assert!(at.is_multiple_of(4) && at + 4 <= data.len(), "load at {at}");
                a = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
            }
            0x00 => a = k,                 // BPF_LD | BPF_IMM
            0x01 => x = k,                 // BPF_LDX | BPF_IMM
            0x60 => a = mem[k as usize],   // BPF_LD | BPF_MEM
            0x61 => x = mem[k as usize],   // BPF_LDX | BPF_MEM
            0x02 => mem[k as usize] = a,   // BPF_ST
            0x03 => mem[k as usize] = x,   // BPF_STX
            0x04 => a = a.wrapping_add(k), // BPF_ALU | BPF_ADD | BPF_K
            0x14 => a = a.wrapping_sub(k),
            0x44 => a |= k,
            0x54 => a &= k,
            0xa4 => a ^= k,
            0x64 => a = a.checked_shl(k).unwrap_or(0),
            0x74 => a = a.checked_shr(k).unwrap_or(0),
            0x5c => a &= x, // BPF_ALU | BPF_AND | BPF_X
            0x4c => a |= x,
            0x07 => x = a,                     // BPF_MISC | BPF_TAX
            0x87 => a = x,                     // BPF_MISC | BPF_TXA
            0x05 => pc += k as usize,          // BPF_JMP | BPF_JA
            0x15 => pc += jump(a == k),        // BPF_JEQ | BPF_K
            0x25 => pc += jump(a > k),         // BPF_JGT | BPF_K
            0x35 => pc += jump(a >= k),        // BPF_JGE | BPF_K
            0x45 => pc += jump(a & k != 0),    // BPF_JSET | BPF_K
            0x1d => pc += jump(a == x),        // BPF_JEQ | BPF_X
            0x2d => pc += jump(a > x),         // BPF_JGT | BPF_X
            0x3d => pc += jump(a >= x),        // BPF_JGE | BPF_X
            0x4d => pc += jump(a & x != 0),    // BPF_JSET | BPF_X
            0x06 => return Verdict::decode(k), // BPF_RET | BPF_K
            0x16 => return Verdict::decode(a), // BPF_RET | BPF_A
            other => panic!("instruction {other:#x} at {} is not one this interpreter knows", pc - 1),
        }
    }
    panic!("the filter did not return within {} steps", insns.len() + 1)
}

/// Kernel symbols `__x64_sys_<name>` whose name is not the call's: the x86_64
/// table's entry points for these calls (arch/x86/entry/syscalls/syscall_64.tbl).
const ENTRY_ALIASES: &[(&str, &str)] = &[
    ("newstat", "stat"),
    ("newfstat", "fstat"),
    ("newlstat", "lstat"),
    ("newuname", "uname"),
    ("sendfile64", "sendfile"),
    ("umount", "umount2"),
];

/// x86_64-only calls newer than libseccomp 2.5.4 (the shared ones are in [`NUMBERED`]).
const X86_64_NUMBERED: &[(&str, i32)] = &[("uretprobe", 335), ("uprobe", 336)];

/// `__x64_sys_` symbols that are no x86_64 system call, and unknown to libseccomp:
/// the generic entry points only 32-bit tables use.
const NOT_X86_64_CALLS: &[&str] = &["ni_syscall", "llseek", "mmap_pgoff", "gethostname", "oldumount", "s390_ipc"];

/// Whether a symbol belongs to a family of 32-bit compat entry points: the 16-bit
/// uid calls (`chown16`), the 32-bit time calls (`clock_gettime32`,
/// `futex_time32`), the i386 wrappers (`ia32_pread64`) and the old ABI (`old_readdir`).
fn compat_family(name: &str) -> bool {
    name.ends_with("16") || name.ends_with("32") || name.starts_with("ia32_") || name.starts_with("old_")
}

/// Every system call the running x86_64 kernel implements, by number, under
/// libseccomp's name (or [`NUMBERED`]'s): the `__x64_sys_*` entry points in
/// `/proc/kallsyms` (names are readable without privileges; addresses are not needed).
/// Errs with every symbol it cannot place, so a call neither libseccomp nor kiln
/// knows fails the test instead of going unchecked.
pub fn kernel_syscalls() -> Result<BTreeMap<i32, String>, String> {
    let symbols = std::fs::read_to_string("/proc/kallsyms").map_err(|e| format!("/proc/kallsyms: {e}"))?;
    let mut calls = BTreeMap::new();
    let mut unknown = Vec::new();
    for symbol in symbols.lines().filter_map(|line| line.split_whitespace().nth(2)) {
        let Some(name) = symbol.strip_prefix("__x64_sys_") else { continue };
        if name.contains('.') {
            continue; // a compiler's split-off part (`.cold`) of an entry point
        }
        let name = ENTRY_ALIASES.iter().find(|(entry, _)| *entry == name).map_or(name, |&(_, call)| call);
        match ScmpSyscall::from_name_by_arch(name, ScmpArch::X8664) {
            Ok(call) if !call.is_error() => {
                let nr = call.as_raw_syscall();
                if nr >= 0 {
                    let canonical = call.get_name_by_arch(ScmpArch::X8664).unwrap_or_else(|_| name.to_owned());
                    calls.insert(nr, canonical);
                } // else: a call of other architectures only (socketcall, ipc, ...)
            }
            _ => {
                let numbered = NUMBERED.iter().chain(X86_64_NUMBERED).find(|(known, _)| *known == name);
                if let Some(&(known, nr)) = numbered {
                    calls.insert(nr, known.to_owned());
                } else if !NOT_X86_64_CALLS.contains(&name) && !compat_family(name) {
                    unknown.push(name.to_owned());
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "the kernel has system calls neither libseccomp nor kiln can name (add them to NUMBERED or \
             decide they are no x86_64 call): {unknown:?}"
        ));
    }
    if calls.len() < 300 {
        return Err(format!("only {} system calls found in /proc/kallsyms", calls.len()));
    }
    Ok(calls)
}
