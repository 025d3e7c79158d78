//! The seccomp profile of every job container: [`crate::sandbox::syscalls`]'s
//! policy written as a Docker profile, so a docker job is refused what an overlay
//! job is (issue 27, findings 5, 8 and 9: Docker 20.10's default profile allowed
//! io_uring, AF_VSOCK and kernel AIO).
//!
//! The profile keeps Docker's default semantics: everything not allowed fails with
//! `EPERM` (runc answers `ENOSYS` for calls newer than its libseccomp knows). It
//! allows the calls in `allowed_syscalls.txt` (the overlay filter's, checked against
//! the running kernel), each conditionally denied call where its condition does
//! not hold, and refuses with their own errno the calls the policy refuses with
//! another than `EPERM`. A test compiles it as runc does and checks it gives the
//! overlay filter's answers.

use std::sync::OnceLock;

use nix::libc;
use serde_json::{json, Value};

use crate::sandbox::syscalls::{self, When, DENIALS};

/// `seccomp=<profile>`, as the Engine API's `HostConfig.SecurityOpt` takes a
/// profile's text (what `docker run --security-opt seccomp=file` sends).
pub fn security_opt() -> &'static str {
    static OPT: OnceLock<String> = OnceLock::new();
    OPT.get_or_init(|| format!("seccomp={}", profile()))
}

/// libseccomp's name of the architecture kiln runs on, as the profile spells it.
/// Only this one: i386 and x32 calls are refused as a foreign architecture, as in
/// the overlay filter.
const ARCH: &str = if cfg!(target_arch = "aarch64") { "SCMP_ARCH_AARCH64" } else { "SCMP_ARCH_X86_64" };

/// The profile, as JSON.
pub fn profile() -> Value {
    let conditional = |name: &str| DENIALS.iter().any(|d| d.call == name && d.when != When::Always);
    let plain: Vec<&str> = syscalls::allowed().filter(|name| !conditional(name)).collect();
    let mut rules = vec![json!({ "names": plain, "action": "SCMP_ACT_ALLOW" })];
    let allow = |call: &str, args: Value| json!({ "names": [call], "action": "SCMP_ACT_ALLOW", "args": args });
    let errno = |call: &str, errno: i32, args: Value| json!({ "names": [call], "action": "SCMP_ACT_ERRNO", "errnoRet": errno, "args": args });
    // runc: (argument & value) == valueTwo.
    let masked = |arg: u32, mask: u64, value: u64| json!([{ "index": arg, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ" }]);
    let bits = |mask: u64| (0..64).map(|b| 1u64 << b).filter(move |bit| mask & bit != 0);
    for denial in DENIALS {
        // EPERM is the default: only another errno needs a rule of its own.
        let own_errno = denial.errno != libc::EPERM;
        match denial.when {
            When::Always => {
                if own_errno {
                    rules.push(errno(denial.call, denial.errno, json!([])));
                }
            }
            When::AnyBit { arg, mask } => {
                rules.push(allow(denial.call, masked(arg, mask, 0)));
                if own_errno {
                    rules.extend(bits(mask).map(|bit| errno(denial.call, denial.errno, masked(arg, bit, bit))));
                }
            }
            When::Int { arg, value } => {
                // The low 32 bits differ from `value` in at least one bit.
                let value = u64::from(value);
                rules.extend(bits(0xffff_ffff).map(|bit| allow(denial.call, masked(arg, bit, !value & bit))));
                if own_errno {
                    rules.push(errno(denial.call, denial.errno, masked(arg, 0xffff_ffff, value)));
                }
            }
            When::NotPersona { arg, flags } => {
                assert!(!own_errno, "a persona refusal other than EPERM has no rule");
                // Each value made of `flags`' bits (the subsets of a mask), and the query.
                let flags = u64::from(flags);
                let mut personas = vec![0xffff_ffff];
                let mut subset = 0u64;
                loop {
                    personas.push(subset);
                    subset = subset.wrapping_sub(flags) & flags;
                    if subset == 0 {
                        break;
                    }
                }
                for persona in personas {
                    let eq = json!([{ "index": arg, "value": persona, "op": "SCMP_CMP_EQ" }]);
                    rules.push(allow(denial.call, eq));
                }
            }
        }
    }
    json!({ "defaultAction": "SCMP_ACT_ERRNO", "architectures": [ARCH], "syscalls": rules })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

    use super::*;
    use crate::sandbox::overlay::JobSeccomp;
    use crate::sandbox::syscalls::cbpf::{self, Verdict};

    /// The profile compiled as runc 1.1 compiles one (libcontainer/seccomp): the
    /// default action, the listed architectures, and each rule's names that
    /// libseccomp knows (runc skips the others), with their comparisons.
    fn compile_as_runc(profile: &Value) -> Vec<u8> {
        let action = |rule: &Value| match rule["action"].as_str().unwrap() {
            "SCMP_ACT_ALLOW" => ScmpAction::Allow,
            "SCMP_ACT_ERRNO" => ScmpAction::Errno(rule["errnoRet"].as_i64().map_or(libc::EPERM, |e| e as i32)),
            other => panic!("action {other}"),
        };
        let mut filter = ScmpFilterContext::new(action(&json!({ "action": profile["defaultAction"] }))).unwrap();
        assert_eq!(profile["architectures"], json!(["SCMP_ARCH_X86_64"]));
        for rule in profile["syscalls"].as_array().unwrap() {
            let compares: Vec<ScmpArgCompare> = rule["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|arg| {
                    let (index, value) = (arg["index"].as_u64().unwrap() as u32, arg["value"].as_u64().unwrap());
                    let op = match arg["op"].as_str().unwrap() {
                        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
                        "SCMP_CMP_MASKED_EQ" => {
                            return ScmpArgCompare::new(
                                index,
                                ScmpCompareOp::MaskedEqual(value),
                                arg["valueTwo"].as_u64().unwrap(),
                            )
                        }
                        other => panic!("op {other}"),
                    };
                    ScmpArgCompare::new(index, op, value)
                })
                .collect();
            for name in rule["names"].as_array().unwrap() {
                let Ok(call) = ScmpSyscall::from_name_by_arch(name.as_str().unwrap(), ScmpArch::X8664) else {
                    continue; // unknown to this libseccomp: runc ignores it
                };
                filter.add_rule_conditional(action(rule), call, &compares).unwrap();
            }
        }
        let fd = nix::sys::memfd::memfd_create("profile", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        filter.export_bpf(&fd).unwrap();
        std::fs::read(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))).unwrap()
    }

    #[test]
    fn the_profile_is_what_docker_takes() {
        let opt = security_opt();
        let text = opt.strip_prefix("seccomp=").unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parsed["defaultAction"], "SCMP_ACT_ERRNO");
        // Sent with every container create: small enough not to matter.
        assert!(text.len() < 64 * 1024, "{} bytes", text.len());
    }

    /// Both backends answer every call of this kernel, and every argument the
    /// policy looks at, alike; where the docker profile cannot name a call (newer
    /// than the daemon's libseccomp), it refuses it.
    #[test]
    fn the_profile_answers_as_the_overlay_filter_does() {
        let docker = compile_as_runc(&profile());
        let overlay = JobSeccomp::compile().unwrap().bpf().to_vec();
        let known = |nr: i32| ScmpSyscall::from(nr).get_name_by_arch(ScmpArch::X8664).is_ok();
        for (&nr, name) in &cbpf::kernel_syscalls().unwrap() {
            let (d, o) =
                (cbpf::run(&docker, cbpf::ARCH_X86_64, nr, [0; 6]), cbpf::run(&overlay, cbpf::ARCH_X86_64, nr, [0; 6]));
            if known(nr) {
                assert_eq!(d, o, "{name}: docker {d:?}, overlay {o:?}");
            } else {
                assert_ne!(d, Verdict::Allow, "{name} ({nr}) is allowed in docker");
            }
        }
        let probes: &[(&str, u32, &[u64])] = &[
            ("socket", 0, &[40, 0xffff_ffff_0000_0028, 1 << 32 | 40, 1, 2, 10, 16, 41, 0xff, u64::MAX]),
            ("socketpair", 0, &[40, 1, 0x1_0000_0001]),
            (
                "personality",
                0,
                &[0, 8, 0x2_0000, 0x2_0008, 0xffff_ffff, 0x4_0000, 0x4_0008, 0x8000_0000, 1 << 32, u64::MAX],
            ),
            ("clone", 0, &[0x11, 0x1000_0011, 0x2000_0000, 0x0002_0000, 0x80, 0x3d0f00]),
            ("chmod", 1, &[0o755, 0o4755, 0o2755, 0o1777]),
            ("openat", 3, &[0o644, 0o4644, 0o6755]),
            ("mknodat", 2, &[0o10644, 0o12644]),
        ];
        for &(call, arg, values) in probes {
            let nr = syscalls::number(call).unwrap();
            for &value in values {
                let mut args = [0u64; 6];
                args[arg as usize] = value;
                let d = cbpf::run(&docker, cbpf::ARCH_X86_64, nr, args);
                let o = cbpf::run(&overlay, cbpf::ARCH_X86_64, nr, args);
                assert_eq!(d, o, "{call}(arg {arg} = {value:#x}): docker {d:?}, overlay {o:?}");
            }
        }
        // Another architecture's calls never reach the kernel as allowed.
        assert_ne!(cbpf::run(&docker, cbpf::ARCH_I386, 20, [0; 6]), Verdict::Allow);
        assert_ne!(cbpf::run(&docker, cbpf::ARCH_X86_64, 39 | cbpf::X32_SYSCALL_BIT, [0; 6]), Verdict::Allow);
    }
}
