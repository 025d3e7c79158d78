//! cgroup v2: one hierarchy; kiln must own (be delegated) its cgroup.
//!
//! Files and rules: Documentation/admin-guide/cgroup-v2.rst. Controllers reach a
//! child only through its parent's `cgroup.subtree_control`, and a cgroup (other
//! than the root) that enables controllers for its children may hold no processes
//! itself ("no internal processes"). So, as systemd documents for `Delegate=yes`
//! services, kiln first moves the processes of its own cgroup into the leaf
//! `<own>/kiln-server`, then enables pids, memory and cpu down to the jobs.

use std::path::Path;

use nix::errno::Errno;

use super::dir::CgroupDir;
use super::jobs::{Controller, OwnCgroup, CPU_PERIOD_US};
use super::{CgroupError, CgroupLimits, MissingControllers};

/// Where a pure cgroup v2 host mounts the hierarchy.
pub(super) const UNIFIED_MOUNT: &str = "/sys/fs/cgroup";
/// The leaf kiln's own processes move to. A kiln started again inside it (its
/// `/proc/self/cgroup` then ends in this name) uses the parent as its own cgroup.
pub const SERVER_LEAF: &str = "kiln-server";
/// Rounds of moving processes out of kiln's cgroup (new ones may fork meanwhile).
const MOVE_ROUNDS: u32 = 10;

/// Opens kiln's cgroup at `relative` under `mount`, checks which controllers it can
/// use, moves its processes into [`SERVER_LEAF`] and enables the controllers for its
/// children. Returns it and what is missing (only with [`MissingControllers::Skip`]).
pub(super) fn prepare(
    mount: &Path,
    relative: &Path,
    limits: CgroupLimits,
    missing_controllers: MissingControllers,
) -> Result<(OwnCgroup, Vec<Controller>), CgroupError> {
    let relative = match relative.file_name() {
        Some(leaf) if leaf == SERVER_LEAF => relative.parent().unwrap_or(Path::new("")),
        _ => relative,
    };
    let own = CgroupDir::open(mount, relative, true)?;
    let available = own.read("cgroup.controllers")?;
    let available: Vec<&str> = available.split_whitespace().collect();
    let wanted = [(Controller::Pids, true), (Controller::Memory, true), (Controller::Cpu, true)]
        .into_iter()
        .filter(|&(controller, _)| controller != Controller::Cpu || super::jobs::uses_cpu_controller(limits));
    let mut controllers = Vec::new();
    let mut missing = Vec::new();
    for (controller, required) in wanted {
        if available.contains(&controller.name()) {
            controllers.push(controller);
        } else if required && missing_controllers == MissingControllers::Refuse {
            let path = own.path().join("cgroup.controllers");
            return Err(CgroupError::ControllerUnavailable { controller: controller.name(), path });
        } else if required {
            missing.push(controller);
        }
    }
    // The hierarchy's root is exempt from the no-internal-processes rule, and its
    // processes are the whole host's: leave them.
    if !relative.as_os_str().is_empty() {
        move_processes(&own)?;
    }
    enable_controllers(&own, &controllers)?;
    Ok((OwnCgroup { dir: own, controllers }, missing))
}

/// Moves every process of `own` into `own/kiln-server`.
fn move_processes(own: &CgroupDir) -> Result<(), CgroupError> {
    let mut leaf = None;
    for _ in 0..MOVE_ROUNDS {
        let pids = own.pids()?;
        if pids.is_empty() {
            break;
        }
        let leaf = match &mut leaf {
            Some(leaf) => leaf,
            None => leaf.insert(own.make_child(SERVER_LEAF)?),
        };
        for pid in pids {
            match leaf.write("cgroup.procs", &pid.to_string()) {
                // Exited meanwhile.
                Ok(()) | Err(CgroupError::Write { source: Errno::ESRCH, .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    // A process still left makes enabling the controllers fail with EBUSY, which says so.
    Ok(())
}

/// Enables `controllers` for the children of `dir` (`+pids` ... in subtree_control).
pub(super) fn enable_controllers(dir: &CgroupDir, controllers: &[Controller]) -> Result<(), CgroupError> {
    if controllers.is_empty() {
        return Ok(());
    }
    let enabled = dir.read("cgroup.subtree_control")?;
    for controller in controllers {
        if !enabled.split_whitespace().any(|c| c == controller.name()) {
            dir.write("cgroup.subtree_control", &format!("+{}", controller.name()))?;
        }
    }
    Ok(())
}

/// Writes `limits` for `controller` into a new job cgroup.
pub(super) fn write_limit(dir: &CgroupDir, controller: Controller, limits: &CgroupLimits) -> Result<(), CgroupError> {
    match controller {
        Controller::Pids => dir.write("pids.max", &limits.max_pids.to_string()),
        Controller::Memory => {
            // Socket buffers are charged to memory.current on v2 (the `sock` line of
            // memory.stat), so memory.max bounds a job's TCP memory too; v1 needs its
            // own limit (v1::limit_socket_memory).
            dir.write("memory.max", &limits.max_memory_bytes.to_string())?;
            // memory.max counts RAM only: no swap at all keeps "memory + swap" at the limit.
            // The file is absent when swap is not accounted (no swap controller).
            if dir.has("memory.swap.max") {
                dir.write("memory.swap.max", "0")?;
            }
            // An OOM kills the whole job rather than one process of it, leaving no
            // half-broken compile running (cgroup-v2.rst, memory.oom.group).
            dir.write("memory.oom.group", "1")
        }
        Controller::Cpu if limits.max_cpus > 0 => {
            let quota = u64::from(limits.max_cpus) * CPU_PERIOD_US;
            dir.write("cpu.max", &format!("{quota} {CPU_PERIOD_US}"))
        }
        Controller::Cpu | Controller::Freezer => Ok(()),
    }
}
