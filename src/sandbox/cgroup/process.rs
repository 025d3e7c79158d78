//! The memory cgroup of a process kiln did not place itself (a docker container's
//! init, whose cgroup the daemon made): found from `/proc/<pid>/cgroup` and kiln's
//! own mountinfo, to charge its socket buffers to it and to read its OOM kills.
//!
//! Blocking filesystem work (a few small reads and one write): run it on a blocking
//! pool.

use std::path::Path;

use super::dir::CgroupDir;
use super::procfs::{cgroup_entries, cgroup_mounts, relative_own_path, MOUNTINFO};
use super::{v1, CgroupError};

/// An open memory cgroup of another process.
#[derive(Debug)]
pub struct ProcessMemcg {
    dir: CgroupDir,
    v2: bool,
}

impl ProcessMemcg {
    /// The memory cgroup `pid` is in: its cgroup v1 memory hierarchy when one is
    /// mounted, else its cgroup v2 cgroup (which must have the memory controller).
    /// Fails when that cgroup is not visible from kiln's mounts (kiln in another
    /// cgroup namespace, or a hierarchy mounted only in part).
    pub fn of_pid(pid: u32) -> Result<ProcessMemcg, CgroupError> {
        let proc_cgroup = format!("/proc/{pid}/cgroup");
        let mounts = cgroup_mounts(&read_proc(MOUNTINFO)?)?;
        let entries = cgroup_entries(&read_proc(&proc_cgroup)?)?;
        if let Some((mount, relative)) = v1::locate(&mounts, &entries, "memory")? {
            return Ok(ProcessMemcg { dir: CgroupDir::open(&mount, &relative, false)?, v2: false });
        }
        let entry =
            entries.iter().find(|e| e.hierarchy_id == 0).ok_or(CgroupError::NotListed { controller: "memory" })?;
        let mount = mounts.iter().find(|m| m.v2).ok_or(CgroupError::NotMounted { controller: "memory" })?;
        let relative = relative_own_path(&entry.path, &mount.mount_point, &mount.root)?;
        let dir = CgroupDir::open(&mount.mount_point, &relative, true)?;
        if !dir.has("memory.max") {
            return Err(CgroupError::ControllerUnavailable { controller: "memory", path: dir.path().to_owned() });
        }
        Ok(ProcessMemcg { dir, v2: true })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Charges the cgroup's TCP socket buffers to it, up to `bytes` (see
    /// `v1::limit_socket_memory`); nothing to do on v2, which charges them to
    /// `memory.current` under the cgroup's own `memory.max`. Call it before the
    /// cgroup's processes make sockets: earlier ones stay uncharged.
    pub fn limit_socket_memory(&self, bytes: u64) -> Result<(), CgroupError> {
        if self.v2 {
            return Ok(());
        }
        v1::limit_socket_memory(&self.dir, bytes)
    }

    /// Processes the OOM killer killed in this cgroup so far (v1 `memory.oom_control`,
    /// v2 `memory.events`, `oom_kill`, Linux 4.13+). `None` when it cannot be read
    /// (the cgroup is gone: its processes all exited).
    pub fn oom_kills(&self) -> Option<u64> {
        if self.v2 {
            self.dir.keyed("memory.events", "oom_kill")
        } else {
            self.dir.keyed("memory.oom_control", "oom_kill")
        }
    }
}

fn read_proc(path: &str) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::ReadProc { path: path.into(), source })
}
