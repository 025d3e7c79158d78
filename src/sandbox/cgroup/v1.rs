//! cgroup v1 (and hybrid hosts): one hierarchy per controller, found in mountinfo.
//!
//! Files: Documentation/admin-guide/cgroup-v1/{memory,pids,freezer-subsystem}.rst
//! and Documentation/scheduler/sched-bwc.rst (CFS bandwidth).

use std::path::PathBuf;

use super::dir::CgroupDir;
use super::jobs::{uses_cpu_controller, Controller, OwnCgroup, CPU_PERIOD_US};
use super::procfs::{relative_own_path, CgroupEntry, CgroupMount};
use super::{CgroupError, CgroupLimits, MissingControllers};

/// Where kiln's own cgroup of `controller` is: (mount point, path under it).
/// `None` if no v1 hierarchy carries the controller.
pub(super) fn locate(
    mounts: &[CgroupMount],
    entries: &[CgroupEntry],
    controller: &'static str,
) -> Result<Option<(PathBuf, PathBuf)>, CgroupError> {
    let candidates: Vec<&CgroupMount> = mounts.iter().filter(|m| m.has_controller(controller)).collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    let entry = entries
        .iter()
        .find(|e| e.controllers.iter().any(|c| c == controller))
        .ok_or(CgroupError::NotListed { controller })?;
    // A hierarchy may be mounted more than once (bind mounts of subtrees): take the
    // first mount that shows kiln's cgroup.
    let mut last_err = None;
    for mount in candidates {
        match relative_own_path(&entry.path, &mount.mount_point, &mount.root) {
            Ok(relative) => return Ok(Some((mount.mount_point.clone(), relative))),
            Err(e @ CgroupError::OutsideMount { .. }) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.expect("at least one candidate"))
}

/// Opens kiln's own cgroup in each hierarchy it uses: pids and memory (required),
/// cpu (required for a CPU quota, else used for fair sharing when mounted), freezer
/// (used for kills when mounted). Returns them in [`Controller`] order, freezer first,
/// so a sweep thaws stale jobs before it kills them elsewhere; and what is missing.
pub(super) fn find(
    mounts: &[CgroupMount],
    entries: &[CgroupEntry],
    limits: CgroupLimits,
    missing_controllers: MissingControllers,
) -> Result<(Vec<OwnCgroup>, Vec<Controller>), CgroupError> {
    let wanted =
        [(Controller::Freezer, false), (Controller::Pids, true), (Controller::Memory, true), (Controller::Cpu, true)]
            .into_iter()
            .filter(|&(controller, _)| controller != Controller::Cpu || uses_cpu_controller(limits));
    let mut found: Vec<(PathBuf, PathBuf, Vec<Controller>)> = Vec::new();
    let mut missing = Vec::new();
    for (controller, required) in wanted {
        match locate(mounts, entries, controller.name())? {
            // Co-mounted controllers (`cpu,cpuacct`, or pids with memory) share a hierarchy.
            Some((mount, relative)) => match found.iter_mut().find(|(m, _, _)| *m == mount) {
                Some((_, _, controllers)) => controllers.push(controller),
                None => found.push((mount, relative, vec![controller])),
            },
            None if required && missing_controllers == MissingControllers::Refuse => {
                return Err(CgroupError::NotMounted { controller: controller.name() });
            }
            None if required => missing.push(controller),
            None => {}
        }
    }
    let mut own = Vec::new();
    for (mount, relative, controllers) in found {
        own.push(OwnCgroup { dir: CgroupDir::open(&mount, &relative, false)?, controllers });
    }
    Ok((own, missing))
}

/// Writes `limits` for `controller` into a new job cgroup.
pub(super) fn write_limit(dir: &CgroupDir, controller: Controller, limits: &CgroupLimits) -> Result<(), CgroupError> {
    match controller {
        Controller::Pids => dir.write("pids.max", &limits.max_pids.to_string()),
        Controller::Memory => {
            let bytes = limits.max_memory_bytes.to_string();
            // memsw (memory + swap) must never be below the memory limit, so memory
            // goes first; without memsw files swap accounting is off (swapaccount=0).
            dir.write("memory.limit_in_bytes", &bytes)?;
            if dir.has("memory.memsw.limit_in_bytes") {
                dir.write("memory.memsw.limit_in_bytes", &bytes)?;
            }
            // Before any process joins: a socket is charged to the cgroup it was
            // created in only if accounting was on then.
            limit_socket_memory(dir, limits.max_memory_bytes)
        }
        Controller::Cpu if limits.max_cpus > 0 => {
            dir.write("cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            dir.write("cpu.cfs_quota_us", &(u64::from(limits.max_cpus) * CPU_PERIOD_US).to_string())
        }
        Controller::Cpu | Controller::Freezer => Ok(()),
    }
}

/// Charges the TCP socket buffers of the cgroup's processes to it, up to `bytes`.
///
/// On cgroup v1, socket buffers are not part of `memory.usage_in_bytes`: they are
/// charged to the cgroup only once `memory.kmem.tcp.limit_in_bytes` has been written
/// (the write turns the accounting on for this cgroup; sockets created before it
/// stay uncharged), and then against that limit alone
/// (Documentation/admin-guide/cgroup-v1/memory.rst, 2.7.1 and 2.7.3). Without it a
/// job's sockets pin kernel memory from the pool every TCP socket on the host shares
/// (`net.ipv4.tcp_mem`; past its high mark all TCP on the host stalls), beyond any
/// job limit. A socket over the limit is put under memory pressure: its sender
/// blocks or gets EAGAIN, its receiver drops (and its peer retransmits), like a host
/// past `tcp_mem` but for this cgroup only. So a job may hold its memory limit in
/// process memory plus as much again in socket buffers: twice the limit at most.
pub(super) fn limit_socket_memory(dir: &CgroupDir, bytes: u64) -> Result<(), CgroupError> {
    dir.write("memory.kmem.tcp.limit_in_bytes", &bytes.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::procfs::{cgroup_entries, cgroup_mounts};
    use super::*;
    use std::path::Path;

    const MOUNTS: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const CGROUP: &str = "8:pids:/\n4:memory:/process_api/8ee2\n1:cpu:/\n0::/\n";

    #[test]
    fn locates_each_controller() {
        let (mounts, entries) = (cgroup_mounts(MOUNTS).unwrap(), cgroup_entries(CGROUP).unwrap());
        let memory = locate(&mounts, &entries, "memory").unwrap().unwrap();
        assert_eq!(memory, (PathBuf::from("/sys/fs/cgroup/memory"), PathBuf::from("process_api/8ee2")));
        assert_eq!(locate(&mounts, &entries, "pids").unwrap().unwrap().1, Path::new(""));
        assert_eq!(locate(&mounts, &entries, "freezer").unwrap(), None);
    }

    #[test]
    fn a_mounted_controller_missing_from_proc_cgroup_is_an_error() {
        let mounts = cgroup_mounts(MOUNTS).unwrap();
        let entries = cgroup_entries("8:pids:/\n").unwrap();
        let err = locate(&mounts, &entries, "memory").unwrap_err();
        assert!(matches!(err, CgroupError::NotListed { controller: "memory" }), "{err}");
    }

    #[test]
    fn a_missing_required_controller_is_refused_or_skipped() {
        let mounts = cgroup_mounts(&MOUNTS.replace("rw,pids", "rw,blkio")).unwrap();
        let entries = cgroup_entries(CGROUP).unwrap();
        let limits = CgroupLimits { max_pids: 16, max_memory_bytes: 64 << 20, max_cpus: 0 };
        let err = find(&mounts, &entries, limits, MissingControllers::Refuse).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the pids controller is not mounted (no cgroup v1 hierarchy in /proc/self/mountinfo lists it)"
        );
        // No host access needed to see what Skip would leave out: cpu is optional
        // without a quota, pids is reported missing.
        let none =
            MOUNTS.replace("rw,pids", "rw,blkio").replace("rw,cpu", "rw,cpuset").replace("rw,memory", "rw,hugetlb");
        let no_cpu = cgroup_mounts(&none).unwrap();
        let (_, missing) = find(&no_cpu, &entries, limits, MissingControllers::Skip).unwrap();
        assert_eq!(missing, [Controller::Pids, Controller::Memory]);
    }
}
