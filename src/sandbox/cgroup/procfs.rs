//! Parsing `/proc/self/mountinfo` and `/proc/self/cgroup` (proc(5), cgroups(7)).
//!
//! Pure functions over text, so they are tested without a host; the callers read the
//! files once at startup.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::CgroupError;

pub(super) const MOUNTINFO: &str = "/proc/self/mountinfo";
pub(super) const PROC_CGROUP: &str = "/proc/self/cgroup";

/// A cgroup or cgroup2 mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CgroupMount {
    /// The directory of the hierarchy shown at the mount point ("/" unless a
    /// subtree was bind-mounted): kiln's cgroup path must lie under it.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// `true` for cgroup2, `false` for a v1 hierarchy.
    pub v2: bool,
    /// The super options: for v1 the controllers of the hierarchy (`rw,pids`,
    /// `rw,cpu,cpuacct`, `rw,name=systemd`).
    pub super_options: Vec<String>,
}

impl CgroupMount {
    /// Whether this v1 hierarchy carries `controller`.
    pub fn has_controller(&self, controller: &str) -> bool {
        !self.v2 && self.super_options.iter().any(|o| o == controller)
    }
}

/// One line of `/proc/self/cgroup`: `hierarchy-ID:controller-list:cgroup-path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CgroupEntry {
    /// 0 and no controllers for the cgroup2 line (`0::/path`).
    pub hierarchy_id: u32,
    pub controllers: Vec<String>,
    /// As the kernel prints it (not escaped), validated by [`relative_own_path`].
    pub path: String,
}

/// The cgroup and cgroup2 mounts listed in mountinfo `text`; other lines are skipped.
pub(super) fn cgroup_mounts(text: &str) -> Result<Vec<CgroupMount>, CgroupError> {
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_mountinfo_line(line) {
            Some(Some(mount)) => mounts.push(mount),
            Some(None) => {}
            None => return Err(CgroupError::ProcLine { path: MOUNTINFO.into(), line: line.to_owned() }),
        }
    }
    Ok(mounts)
}

/// Every mount point listed in mountinfo `text` (any file system), unescaped.
pub(crate) fn mount_points(text: &str) -> impl Iterator<Item = PathBuf> + '_ {
    text.lines().filter_map(|line| line.split(' ').nth(4)).map(unescape)
}

/// `None`: malformed; `Some(None)`: not a cgroup mount.
///
/// Format (proc(5)): `36 35 98:0 /root /mnt opts [optional fields...] - fstype source super-opts`.
fn parse_mountinfo_line(line: &str) -> Option<Option<CgroupMount>> {
    let fields: Vec<&str> = line.split(' ').collect();
    // The optional fields end at a lone "-", at index 6 or later.
    let dash = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let (fstype, super_options) = (*fields.get(dash + 1)?, *fields.get(dash + 3)?);
    let v2 = match fstype {
        "cgroup2" => true,
        "cgroup" => false,
        _ => return Some(None),
    };
    Some(Some(CgroupMount {
        root: unescape(fields[3]),
        mount_point: unescape(fields[4]),
        v2,
        super_options: super_options.split(',').map(str::to_owned).collect(),
    }))
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = (u32::from(d[0] - b'0') << 6) | (u32::from(d[1] - b'0') << 3) | u32::from(d[2] - b'0');
                // "\777" does not fit a byte; the kernel never writes it: keep it as text.
                match u8::try_from(value) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 4]),
                }
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The lines of `/proc/self/cgroup` `text`.
pub(super) fn cgroup_entries(text: &str) -> Result<Vec<CgroupEntry>, CgroupError> {
    let bad = |line: &str| CgroupError::ProcLine { path: PROC_CGROUP.into(), line: line.to_owned() };
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        // The path may itself contain ':', so split at the first two only.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(line));
        };
        let hierarchy_id = id.parse().map_err(|_| bad(line))?;
        let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
        entries.push(CgroupEntry { hierarchy_id, controllers, path: path.to_owned() });
    }
    Ok(entries)
}

/// Where kiln's cgroup `own` (a path from `/proc/self/cgroup`) is under a mount of
/// its hierarchy whose root is `mount_root`: the path relative to the mount point,
/// empty for the mount's own directory.
///
/// `own` is refused unless it is absolute with plain components: no `..` (the form
/// the kernel uses for a cgroup outside kiln's cgroup namespace), no `.`, no empty
/// component, so the path built from it cannot leave the mount.
pub(super) fn relative_own_path(own: &str, mount: &Path, mount_root: &Path) -> Result<PathBuf, CgroupError> {
    let refuse = |reason| CgroupError::OwnPath { path: own.to_owned(), reason };
    let rest = own.strip_prefix('/').ok_or_else(|| refuse("not absolute"))?;
    let components: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
    for c in &components {
        match *c {
            "" => return Err(refuse("empty component")),
            "." | ".." => return Err(refuse("`.` or `..` component (outside kiln's cgroup namespace?)")),
            _ => {}
        }
    }
    let own_path: PathBuf = components.iter().collect();
    let root = mount_root.strip_prefix("/").unwrap_or(mount_root);
    own_path.strip_prefix(root).map(Path::to_path_buf).map_err(|_| CgroupError::OutsideMount {
        own: own.to_owned(),
        mount: mount.to_owned(),
        root: mount_root.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 master:3 - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
50 22 0:40 /docker/abc /mnt/my\\040cgroups rw - cgroup cgroup rw,memory
";

    #[test]
    fn mountinfo_keeps_cgroup_mounts_only() {
        let mounts = cgroup_mounts(MOUNTINFO_HYBRID).unwrap();
        assert_eq!(mounts.len(), 5, "{mounts:#?}");
        let cpu = &mounts[0];
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(cpu.has_controller("cpu") && cpu.has_controller("cpuacct") && !cpu.has_controller("cpuset"));
        let pids = &mounts[1];
        assert!(pids.has_controller("pids") && !pids.v2, "optional fields before '-' are skipped");
        assert!(!mounts[2].has_controller("systemd"), "name=systemd is not a controller");
        let unified = &mounts[3];
        assert!(unified.v2 && !unified.has_controller("rw"));
        assert_eq!(unified.mount_point, Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn mount_points_of_any_file_system_are_unescaped() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    30 22 0:5 /null /proc/kcore ro - devtmpfs udev rw\n\
                    40 1 0:40 / /run/kiln/pts/a\\040b rw - devpts kiln-pts rw\n";
        let points: Vec<PathBuf> = mount_points(text).collect();
        assert_eq!(points, [PathBuf::from("/proc"), "/proc/kcore".into(), "/run/kiln/pts/a b".into()]);
    }

    #[test]
    fn mountinfo_unescapes_paths() {
        let mounts = cgroup_mounts(MOUNTINFO_HYBRID).unwrap();
        let memory = &mounts[4];
        assert_eq!(memory.mount_point, Path::new("/mnt/my cgroups"));
        assert_eq!(memory.root, Path::new("/docker/abc"));
        assert_eq!(unescape(r"a\011b\012c\134d\0"), Path::new("a\tb\nc\\d\\0"));
        assert_eq!(unescape(r"x\777"), Path::new(r"x\777"));
    }

    #[test]
    fn mountinfo_rejects_a_line_without_separator() {
        let err = cgroup_mounts("31 23 0:28 / /sys/fs/cgroup rw,relatime tmpfs tmpfs rw\n").unwrap_err();
        assert!(matches!(err, CgroupError::ProcLine { .. }), "{err}");
    }

    #[test]
    fn proc_cgroup_v1_and_v2_lines() {
        let text = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/8ee2\n2:cpu,cpuacct:/a:b\n0::/system.slice/kiln.service\n";
        let entries = cgroup_entries(text).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(
            entries[2],
            CgroupEntry { hierarchy_id: 4, controllers: vec!["memory".into()], path: "/process_api/8ee2".into() }
        );
        assert_eq!(entries[3].controllers, ["cpu", "cpuacct"]);
        assert_eq!(entries[3].path, "/a:b", "a ':' in the path is kept");
        assert_eq!(
            entries[4],
            CgroupEntry { hierarchy_id: 0, controllers: vec![], path: "/system.slice/kiln.service".into() }
        );
        assert!(cgroup_entries("x:pids:/\n").is_err());
        assert!(cgroup_entries("8:pids\n").is_err());
    }

    #[test]
    fn own_path_relative_to_mount() {
        let m = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(relative_own_path("/", m, Path::new("/")).unwrap(), Path::new(""));
        assert_eq!(relative_own_path("/process_api/8ee2", m, Path::new("/")).unwrap(), Path::new("process_api/8ee2"));
        assert_eq!(relative_own_path("/docker/abc/x", m, Path::new("/docker/abc")).unwrap(), Path::new("x"));
        assert!(matches!(
            relative_own_path("/docker/other", m, Path::new("/docker/abc")),
            Err(CgroupError::OutsideMount { .. })
        ));
    }

    #[test]
    fn own_path_refuses_escapes() {
        let m = Path::new("/sys/fs/cgroup/pids");
        for bad in ["/../../x", "/a/../b", "/a/./b", "/a//b", "a/b", "/a/"] {
            assert!(
                matches!(relative_own_path(bad, m, Path::new("/")), Err(CgroupError::OwnPath { .. })),
                "{bad} accepted"
            );
        }
    }
}
