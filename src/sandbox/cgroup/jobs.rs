//! The job cgroups: found and set up once at startup, one made per sandbox.

use std::fmt::Write as _;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::Flock;

use super::dir::CgroupDir;
use super::kill::{KillTarget, KILL_TIMEOUT};
use super::procfs::{self, CgroupEntry};
use super::{v1, v2, CgroupError};

/// The directory under kiln's own cgroup that holds the job cgroups.
pub const JOBS_PARENT: &str = "kiln-jobs";
/// The smallest memory limit accepted: bubblewrap alone needs a few MiB.
pub const MIN_MEMORY_BYTES: u64 = 8 << 20;
/// The CFS period the CPU quota is expressed in (the kernel's default, 100 ms).
pub(super) const CPU_PERIOD_US: u64 = 100_000;
/// How deep a stale tree is walked when it is removed (a job cannot make cgroups:
/// cgroupfs is not in its sandbox, so only kiln's own levels exist).
const STALE_TREE_DEPTH: u32 = 8;

/// What each job may use, enforced by its own cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Processes and threads at once (`pids.max`): stops fork bombs.
    pub max_pids: u64,
    /// Memory and swap together (a job that may swap can still exhaust the host).
    pub max_memory_bytes: u64,
    /// CPUs' worth of CPU time per period; 0 = no quota (the job still gets its
    /// fair share against the other jobs, since each has its own cgroup).
    pub max_cpus: u32,
}

impl CgroupLimits {
    fn validate(&self) -> Result<(), CgroupError> {
        if self.max_pids == 0 {
            return Err(CgroupError::BadLimits("max_pids must be at least 1"));
        }
        if self.max_memory_bytes < MIN_MEMORY_BYTES {
            return Err(CgroupError::BadLimits("max_memory_bytes must be at least 8 MiB"));
        }
        Ok(())
    }
}

/// Whether job cgroups go into the cpu hierarchy: only to enforce a quota.
///
/// A cgroup is one scheduling entity: all of a kiln's job cgroups sit under one
/// parent that weighs, against every other task beside kiln's own cgroup, what one
/// task weighs. Without a quota, jobs stay where kiln's processes are and compete
/// as processes, as they did without cgroups: measured (scripts/compare.sh, 4
/// clients, the load generator on the same host), per-job cpu cgroups took
/// throughput from 0.91 to 0.85 of kiln before cgroups, for no limit at all
/// (BENCHMARKS.md).
pub(super) fn uses_cpu_controller(limits: CgroupLimits) -> bool {
    limits.max_cpus > 0
}

/// What to do when a controller kiln asks for is not mounted or not delegated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingControllers {
    /// Fail: the server must not run jobs it cannot limit.
    Refuse,
    /// Leave that limit out and say so in [`JobCgroups::describe`]: for tests, and
    /// for hosts where a missing limit is accepted knowingly.
    Skip,
}

/// How [`JobCgroups`] sets itself up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupOptions {
    /// The child of kiln's own cgroup that holds the job cgroups ([`JOBS_PARENT`]).
    pub parent_name: String,
    pub missing_controllers: MissingControllers,
}

impl Default for CgroupOptions {
    fn default() -> Self {
        CgroupOptions { parent_name: JOBS_PARENT.to_owned(), missing_controllers: MissingControllers::Refuse }
    }
}

/// A cgroup controller kiln uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Controller {
    /// v1 only, for killing without racing forks and pid reuse (see `kill.rs`).
    Freezer,
    Pids,
    Memory,
    Cpu,
}

impl Controller {
    pub fn name(self) -> &'static str {
        match self {
            Controller::Freezer => "freezer",
            Controller::Pids => "pids",
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
        }
    }
}

/// Kiln's own cgroup in one hierarchy, as found by `v1::find` or `v2::prepare`.
#[derive(Debug)]
pub(super) struct OwnCgroup {
    pub dir: CgroupDir,
    /// The controllers whose limits kiln writes in this hierarchy.
    pub controllers: Vec<Controller>,
}

/// One hierarchy's part of this kiln's job cgroups.
#[derive(Debug)]
struct Hierarchy {
    controllers: Vec<Controller>,
    /// `<own>/kiln-jobs`, shared by every kiln whose cgroup is `<own>`.
    jobs_root: CgroupDir,
    /// `<own>/kiln-jobs/kiln-<pid>-<n>`: this instance's, the parent of its jobs.
    instance: CgroupDir,
    instance_name: String,
    /// Held for this instance's life: a start's sweep removes only unlocked
    /// instances, whose kiln is gone (flock(2) locks die with their process).
    _lock: Flock<OwnedFd>,
}

#[derive(Debug)]
struct Shared {
    v2: bool,
    hierarchies: Vec<Hierarchy>,
    limits: CgroupLimits,
    /// Asked for but unavailable; only with [`MissingControllers::Skip`].
    missing: Vec<Controller>,
    /// Whether swap is limited with memory (v1 `memory.memsw.*`, v2 `memory.swap.max`).
    swap_limited: bool,
}

/// Where this kiln's job cgroups go, which version, which controllers: found once
/// at startup. Cheap to clone (an `Arc`); `Send + Sync`.
///
/// Every method does blocking filesystem calls (and [`JobCgroup::remove`] sleeps
/// while it waits for processes to die): call them from a dedicated thread or a
/// blocking pool (`tokio::task::spawn_blocking`), never from an actor's handler.
#[derive(Debug, Clone)]
pub struct JobCgroups(Arc<Shared>);

/// Tasks and memory of kiln's own cgroup that its jobs together never get: with
/// every builder's job at its limits at once (builders x max_pids can exceed a
/// unit's TasksMax), kiln can still start threads, sandboxes and answer.
const KILN_PIDS_RESERVE: u64 = 256;
const KILN_MEMORY_RESERVE: u64 = 512 << 20;

/// Caps this instance (the parent of all of this kiln's job cgroups) at kiln's
/// own cgroup's limits minus [`KILN_PIDS_RESERVE`] and [`KILN_MEMORY_RESERVE`],
/// where its own cgroup has limits; its memory at the host's otherwise.
fn reserve_for_kiln(
    own: &CgroupDir,
    instance: &CgroupDir,
    controllers: &[Controller],
    v2: bool,
) -> Result<(), CgroupError> {
    let limit = |file: &str| own.read(file).ok().and_then(|v| v.trim().parse::<u64>().ok());
    if controllers.contains(&Controller::Pids) {
        if let Some(max) = limit("pids.max") {
            instance.write("pids.max", &max.saturating_sub(KILN_PIDS_RESERVE).max(1).to_string())?;
        }
    }
    if controllers.contains(&Controller::Memory) {
        let file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
        // v1 says "no limit" with a huge number, v2 with "max". Without a limit of
        // its own kiln's jobs are capped by the host's memory: builders x
        // max_memory_bytes may well exceed it (8 GiB each by default), and all
        // jobs at their limits at once must still leave the host and kiln room.
        if let Some(max) = limit(file).filter(|&max| max < 1 << 62).or_else(host_memory) {
            instance.write(file, &max.saturating_sub(KILN_MEMORY_RESERVE).max(MIN_MEMORY_BYTES).to_string())?;
        }
    }
    Ok(())
}

/// The host's memory (`MemTotal` in /proc/meminfo), in bytes.
pub(super) fn host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?.trim();
    kib.parse::<u64>().ok()?.checked_mul(1024)
}

/// Makes instance names unique within the process (several [`JobCgroups`] in tests).
static INSTANCE_SEQ: AtomicU64 = AtomicU64::new(0);

impl JobCgroups {
    /// Finds the cgroups from `/proc/self/mountinfo` and `/proc/self/cgroup`: cgroup v2
    /// if cgroup2 is mounted at `/sys/fs/cgroup`, else the v1 pids, memory and cpu
    /// hierarchies (cpu is required only for a CPU quota; freezer is used when
    /// mounted). Creates `<own>/<parent_name>` in each, removes what earlier kilns
    /// left there (killing its processes), and makes this instance's directory.
    pub fn detect(limits: CgroupLimits, options: &CgroupOptions) -> Result<JobCgroups, CgroupError> {
        limits.validate()?;
        let mounts = procfs::cgroup_mounts(&read_proc(procfs::MOUNTINFO)?)?;
        let entries = procfs::cgroup_entries(&read_proc(procfs::PROC_CGROUP)?)?;
        match mounts.iter().find(|m| m.v2 && m.mount_point == Path::new(v2::UNIFIED_MOUNT)) {
            Some(mount) => {
                let own = v2_own(&entries)?;
                let relative = procfs::relative_own_path(&own, &mount.mount_point, &mount.root)?;
                Self::v2_relative(&mount.mount_point, &relative, limits, options)
            }
            None => {
                let (found, missing) = v1::find(&mounts, &entries, limits, options.missing_controllers)?;
                Self::set_up(false, found, missing, limits, options)
            }
        }
    }

    /// What [`detect`](Self::detect) would set up, for `kiln check`: on a v2 host
    /// it changes nothing (no process moved, no controller enabled, no sweep): it
    /// reads which controllers kiln's cgroup offers and checks it may write its
    /// `cgroup.subtree_control` and `cgroup.procs`. On v1 it is `detect`, whose
    /// instance directory goes with the result.
    pub fn probe(limits: CgroupLimits) -> Result<String, CgroupError> {
        limits.validate()?;
        let mounts = procfs::cgroup_mounts(&read_proc(procfs::MOUNTINFO)?)?;
        let entries = procfs::cgroup_entries(&read_proc(procfs::PROC_CGROUP)?)?;
        let Some(mount) = mounts.iter().find(|m| m.v2 && m.mount_point == Path::new(v2::UNIFIED_MOUNT)) else {
            return Ok(Self::detect(limits, &CgroupOptions::default())?.describe());
        };
        let own = v2_own(&entries)?;
        let relative = procfs::relative_own_path(&own, &mount.mount_point, &mount.root)?;
        let dir = CgroupDir::open(&mount.mount_point, &relative, true)?;
        let available = dir.read("cgroup.controllers")?;
        for controller in ["pids", "memory"].into_iter().chain((limits.max_cpus > 0).then_some("cpu")) {
            if !available.split_whitespace().any(|c| c == controller) {
                return Err(CgroupError::ControllerUnavailable {
                    controller,
                    path: dir.path().join("cgroup.controllers"),
                });
            }
        }
        for file in ["cgroup.subtree_control", "cgroup.procs"] {
            let path = dir.path().join(file);
            nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK)
                .map_err(|source| CgroupError::Open { path, source })?;
        }
        Ok(format!(
            "cgroup v2: {} delegated, controllers {}; per job: {} pids, {} MiB memory",
            dir.path().display(),
            available.trim(),
            limits.max_pids,
            limits.max_memory_bytes >> 20
        ))
    }

    /// Uses the cgroup v2 hierarchy mounted at `mount` (e.g. `/sys/fs/cgroup/unified`
    /// on a hybrid host), `own` being kiln's cgroup in it (`/` for its root,
    /// `/system.slice/kiln.service`). For tests, and for hybrid hosts with controllers
    /// on v2.
    pub fn v2_at(
        mount: &Path,
        own: &Path,
        limits: CgroupLimits,
        options: &CgroupOptions,
    ) -> Result<JobCgroups, CgroupError> {
        limits.validate()?;
        let own = own
            .to_str()
            .ok_or_else(|| CgroupError::OwnPath { path: own.display().to_string(), reason: "not UTF-8" })?;
        let relative = procfs::relative_own_path(own, mount, Path::new("/"))?;
        Self::v2_relative(mount, &relative, limits, options)
    }

    fn v2_relative(
        mount: &Path,
        relative: &Path,
        limits: CgroupLimits,
        options: &CgroupOptions,
    ) -> Result<JobCgroups, CgroupError> {
        let (own, missing) = v2::prepare(mount, relative, limits, options.missing_controllers)?;
        Self::set_up(true, vec![own], missing, limits, options)
    }

    fn set_up(
        v2: bool,
        found: Vec<OwnCgroup>,
        missing: Vec<Controller>,
        limits: CgroupLimits,
        options: &CgroupOptions,
    ) -> Result<JobCgroups, CgroupError> {
        validate_name(&options.parent_name)?;
        let instance_name = format!("kiln-{}-{}", std::process::id(), INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed));
        // Built up in place so that, on an error half-way, its `Drop` removes the
        // instance directories made so far.
        let mut shared = Shared { v2, hierarchies: Vec::new(), limits, missing, swap_limited: false };
        for own in found {
            let jobs_root = own.dir.make_child(&options.parent_name)?;
            if v2 {
                v2::enable_controllers(&jobs_root, &own.controllers)?;
            }
            // Held while sweeping and until this instance is locked, so two kilns
            // starting at once neither sweep each other's fresh instance nor race.
            let root_lock = jobs_root.lock()?;
            sweep_stale(&jobs_root, v2)?;
            let instance = jobs_root.make_new_child(&instance_name)?;
            let lock = match instance.try_lock() {
                Ok(Some(lock)) => lock,
                failed => {
                    let _ = jobs_root.try_remove_child(&instance_name);
                    let path = instance.path().to_owned();
                    return Err(failed.err().unwrap_or(CgroupError::Lock { path, source: Errno::EWOULDBLOCK }));
                }
            };
            if let Err(e) = reserve_for_kiln(&own.dir, &instance, &own.controllers, v2) {
                let _ = jobs_root.try_remove_child(&instance_name);
                return Err(e);
            }
            shared.hierarchies.push(Hierarchy {
                controllers: own.controllers,
                jobs_root,
                instance,
                instance_name: instance_name.clone(),
                _lock: lock,
            });
            drop(root_lock);
            let h = &shared.hierarchies[shared.hierarchies.len() - 1];
            if v2 {
                v2::enable_controllers(&h.instance, &h.controllers)?;
            }
        }
        shared.swap_limited = shared
            .hierarchies
            .iter()
            .find(|h| h.controllers.contains(&Controller::Memory))
            .is_some_and(|h| h.instance.has(if v2 { "memory.swap.max" } else { "memory.memsw.limit_in_bytes" }));
        let cgroups = JobCgroups(Arc::new(shared));
        tracing::info!(cgroups = %cgroups.describe(), "job cgroups ready");
        Ok(cgroups)
    }

    /// One line for the startup log and `kiln check`: version, controllers, where,
    /// the limits, and what is not limited.
    pub fn describe(&self) -> String {
        let s = &self.0;
        let mut line = format!("cgroup {}: ", if s.v2 { "v2" } else { "v1" });
        for (i, h) in s.hierarchies.iter().enumerate() {
            let names: Vec<&str> = h.controllers.iter().map(|c| c.name()).collect();
            let names = if names.is_empty() { "no controllers".to_owned() } else { names.join("+") };
            let _ = write!(line, "{}{names} at {}", if i > 0 { ", " } else { "" }, h.instance.path().display());
        }
        let l = &s.limits;
        let _ = write!(line, "; per job: {} pids, {} MiB memory", l.max_pids, l.max_memory_bytes >> 20);
        line.push_str(if s.swap_limited { " incl. swap" } else { " (swap NOT limited: no swap accounting)" });
        match l.max_cpus {
            0 => line.push_str(", no CPU quota"),
            n => {
                let _ = write!(line, ", {n} CPU(s)");
            }
        }
        if !s.missing.is_empty() {
            let names: Vec<&str> = s.missing.iter().map(|c| c.name()).collect();
            let _ = write!(line, "; NOT limited (controller unavailable): {}", names.join(", "));
        }
        line
    }

    /// Makes the cgroup of one sandbox (`name` unique among this kiln's live ones,
    /// e.g. `sandbox-17`), writes the limits and opens its `cgroup.procs` file(s)
    /// for writing (`O_CLOEXEC`). Call it when the sandbox is prepared, off the job's
    /// path. On failure nothing of it is left.
    pub fn create(&self, name: &str) -> Result<JobCgroup, CgroupError> {
        validate_name(name)?;
        let mut job = JobCgroup {
            shared: self.0.clone(),
            name: name.to_owned(),
            dirs: Vec::new(),
            procs: Vec::new(),
            removed: false,
        };
        match job.make() {
            Ok(()) => Ok(job),
            Err(e) => {
                job.removed = true;
                for (h, _) in job.shared.hierarchies.iter().zip(&job.dirs) {
                    let _ = h.instance.try_remove_child(&job.name);
                }
                Err(e)
            }
        }
    }
}

impl JobCgroups {
    /// For a clean stop: kills every process left in this instance's job cgroups
    /// (a warm sandbox's parked bubblewrap, a job that outlived the drain) and
    /// removes them and the instance, in every hierarchy. A [`JobCgroup`] still
    /// held finds its directories gone, which its `remove` counts as removed.
    pub fn remove_all(&self) -> Result<(), CgroupError> {
        let s = &self.0;
        for h in &s.hierarchies {
            for name in h.instance.children()? {
                let dir = match h.instance.child(Path::new(&name)) {
                    Ok(dir) => dir,
                    Err(CgroupError::Open { source: Errno::ENOENT, .. }) => continue,
                    Err(e) => return Err(e),
                };
                remove_tree(&h.instance, &name, dir, s.v2, 1)?;
            }
            h.jobs_root.remove_child(&h.instance_name)?;
        }
        Ok(())
    }
}

impl Drop for Shared {
    /// Removes this instance's directories. A job cgroup still alive keeps its
    /// `Arc`, so this runs after every job's; leftovers (a failed removal) keep the
    /// directory busy until the next start's sweep.
    fn drop(&mut self) {
        for h in &self.hierarchies {
            if let Err(e) = h.jobs_root.try_remove_child(&h.instance_name) {
                tracing::warn!(path = ?h.instance.path(), error = %e, "instance cgroup left for the next start's sweep");
            }
        }
    }
}

/// The cgroup of one sandbox, in every hierarchy kiln uses.
///
/// Dropping it without [`remove`](Self::remove) is a bug of the caller: `Drop` logs
/// a warning, kills the processes once without waiting (`cgroup.kill`, or one SIGKILL
/// each) and tries once to remove the directories; whatever stays is removed by the
/// next start's sweep. It never blocks or sleeps.
#[derive(Debug)]
pub struct JobCgroup {
    shared: Arc<Shared>,
    name: String,
    /// One per hierarchy, in the order of `shared.hierarchies`.
    dirs: Vec<CgroupDir>,
    procs: Vec<OwnedFd>,
    removed: bool,
}

impl JobCgroup {
    fn make(&mut self) -> Result<(), CgroupError> {
        let shared = self.shared.clone();
        for h in &shared.hierarchies {
            let dir = h.instance.make_new_child(&self.name)?;
            self.dirs.push(dir);
            let dir = &self.dirs[self.dirs.len() - 1];
            for &controller in &h.controllers {
                if shared.v2 {
                    v2::write_limit(dir, controller, &shared.limits)?;
                } else {
                    v1::write_limit(dir, controller, &shared.limits)?;
                }
            }
            self.procs.push(dir.open_procs_for_write()?);
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job's directories, one per hierarchy (for logs and tests).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path().to_owned()).collect()
    }

    /// The fds of the open `cgroup.procs` files (one per v1 hierarchy, one on v2):
    /// the forked child writes `0` to each before it execs, see [`join_from_child`].
    /// Valid while this `JobCgroup` lives.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|fd| fd.as_raw_fd()).collect()
    }

    fn dir_with(&self, controller: Controller) -> Option<&CgroupDir> {
        let index = self.shared.hierarchies.iter().position(|h| h.controllers.contains(&controller))?;
        self.dirs.get(index)
    }

    /// How many times the OOM killer killed a process of this job for its memory
    /// limit: v2 `memory.events` `oom_kill`; v1 `memory.oom_control` `oom_kill`, or on
    /// kernels before 4.13 the times the limit was hit (`memory.memsw.failcnt`, else
    /// `memory.failcnt`) as a hint. 0 without a memory controller.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.dir_with(Controller::Memory) else { return 0 };
        let found = if self.shared.v2 {
            dir.keyed("memory.events", "oom_kill")
        } else {
            dir.keyed("memory.oom_control", "oom_kill").or_else(|| {
                ["memory.memsw.failcnt", "memory.failcnt"]
                    .iter()
                    .find_map(|f| dir.read(f).ok().and_then(|t| t.trim().parse().ok()))
            })
        };
        found.unwrap_or(0)
    }

    /// The job's memory high-water mark in bytes since its cgroup was made (v2
    /// `memory.peak`, Linux 5.19; v1 `memory.max_usage_in_bytes`): its processes and
    /// the pages of the files it wrote, as its limit counts them. `None` without a
    /// memory controller or on a kernel without the file.
    pub fn peak_memory(&self) -> Option<u64> {
        let dir = self.dir_with(Controller::Memory)?;
        let file = if self.shared.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" };
        dir.read(file).ok()?.trim().parse().ok()
    }

    /// Whether a fork failed on `pids.max` (`pids.events` `max`): tells the client why
    /// its job could not fork. `false` without a pids controller.
    pub fn pids_limit_hit(&self) -> bool {
        self.dir_with(Controller::Pids).and_then(|d| d.keyed("pids.events", "max")).is_some_and(|n| n > 0)
    }

    fn kill_target(&self) -> KillTarget<'_> {
        KillTarget {
            dirs: self.dirs.iter().collect(),
            v2: self.shared.v2,
            v1_freezer: self.dir_with(Controller::Freezer),
        }
    }

    /// Kills every process still in the job and waits until none is left, at most
    /// `KILL_TIMEOUT`; the cgroup stays, with its counters, for [`remove`](Self::remove).
    /// When the job's processes are all gone already this is a read of each
    /// `cgroup.procs`.
    pub fn kill_processes(&self) -> Result<(), CgroupError> {
        self.kill_target().kill_all(KILL_TIMEOUT)
    }

    /// Kills every process still in the job (v2 `cgroup.kill`; else frozen, then
    /// SIGKILLed, until empty, at most `KILL_TIMEOUT`) and removes its directories,
    /// retrying while they are busy. Blocks up to a few seconds; never panics.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        let killed = self.kill_target().kill_all(KILL_TIMEOUT);
        self.procs.clear();
        let mut result = killed;
        for (h, _) in self.shared.hierarchies.iter().zip(&self.dirs) {
            let removed = if result.is_ok() {
                h.instance.remove_child(&self.name)
            } else {
                // Still populated: one attempt, not a second wait.
                h.instance
                    .try_remove_child(&self.name)
                    .map_err(|source| CgroupError::Remove { path: h.instance.path().join(&self.name), source })
            };
            if let Err(e) = removed {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        tracing::warn!(job_cgroup = %self.name, "job cgroup dropped without remove(): killing its processes once");
        self.kill_target().kill_once();
        for (h, dir) in self.shared.hierarchies.iter().zip(&self.dirs) {
            if let Err(e) = h.instance.try_remove_child(&self.name) {
                tracing::warn!(path = ?dir.path(), error = %e, "job cgroup left for the next start's sweep");
            }
        }
    }
}

/// Moves the calling process into a job cgroup: writes `0` to each of `procs_fds`
/// ([`JobCgroup::procs_fds`]). Meant for a `pre_exec` hook in the forked child:
/// it only calls write(2) and allocates nothing, so it is async-signal-safe.
///
/// # Safety
/// Every fd must be open, which holds while the `JobCgroup` they came from is alive
/// at the time of the fork.
pub unsafe fn join_from_child(procs_fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in procs_fds {
        // SAFETY: the caller guarantees `fd` is open for this call (see # Safety).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::unistd::write(fd, b"0") {
            Ok(1) => {}
            Ok(_) => return Err(std::io::Error::from_raw_os_error(nix::libc::EIO)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn read_proc(path: &str) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::ReadProc { path: path.into(), source })
}

/// Kiln's path in the cgroup2 hierarchy (the `0::` line).
fn v2_own(entries: &[CgroupEntry]) -> Result<String, CgroupError> {
    entries
        .iter()
        .find(|e| e.hierarchy_id == 0 && e.controllers.is_empty())
        .map(|e| e.path.clone())
        .ok_or(CgroupError::NotListed { controller: "cgroup2 (0::)" })
}

/// Names kiln gives directories: one plain, portable path component.
pub(super) fn validate_name(name: &str) -> Result<(), CgroupError> {
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !plain || name.is_empty() || name.len() > 64 || name == "." || name == ".." {
        return Err(CgroupError::BadName(name.to_owned()));
    }
    Ok(())
}

/// Removes every instance under `jobs_root` whose kiln is gone (its lock is free),
/// killing the processes left in its job cgroups first.
fn sweep_stale(jobs_root: &CgroupDir, v2: bool) -> Result<(), CgroupError> {
    for name in jobs_root.children()? {
        let dir = match jobs_root.child(Path::new(&name)) {
            Ok(dir) => dir,
            Err(CgroupError::Open { source: Errno::ENOENT, .. }) => continue,
            Err(e) => return Err(e),
        };
        let Some(_lock) = dir.try_lock()? else { continue };
        tracing::info!(path = ?dir.path(), "removing job cgroups a previous kiln left");
        remove_tree(jobs_root, &name, dir, v2, 0)?;
    }
    Ok(())
}

/// Kills and removes `parent/name` (open as `dir`) and its children, deepest first.
fn remove_tree(parent: &CgroupDir, name: &str, dir: CgroupDir, v2: bool, depth: u32) -> Result<(), CgroupError> {
    if depth < STALE_TREE_DEPTH {
        for child in dir.children()? {
            let child_dir = dir.child(Path::new(&child))?;
            remove_tree(&dir, &child, child_dir, v2, depth + 1)?;
        }
    }
    // A v1 freezer cgroup may have been left frozen mid-removal: its processes only
    // die once thawed, which the kill pass does.
    let freezer = (!v2 && dir.has("freezer.state")).then_some(&dir);
    KillTarget { dirs: vec![&dir], v2, v1_freezer: freezer }.kill_all(KILL_TIMEOUT)?;
    drop(dir);
    parent.remove_child(name)
}
