//! The data dir's file system: what is free on it (`statvfs(3)`), and the reserve
//! kiln leaves free there.
//!
//! Uploads and unpacks write to the data dir, which is often the host's root file
//! system. Running it out of blocks or inodes breaks the host, not just kiln (issue
//! 27: toolchains of empty files left root unable to create files). So before an
//! upload or an unpack kiln reads what is free and refuses work that would leave
//! less than [`DiskReserve`]; while it writes, it stays within what is above it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What one file system holds and has free, as an unprivileged writer may use it
/// (`f_bavail`/`f_favail`: root's ext4 reserve is not counted as free).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsSpace {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// 0 on file systems without a fixed inode count (btrfs): no inode limit.
    pub total_inodes: u64,
    pub free_inodes: u64,
}

impl FsSpace {
    /// Blocking: one `statvfs(3)` of the file system holding `path`.
    pub fn of(path: &Path) -> std::io::Result<FsSpace> {
        let vfs = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
        let fragment = vfs.fragment_size() as u64;
        Ok(FsSpace {
            total_bytes: (vfs.blocks() as u64).saturating_mul(fragment),
            free_bytes: (vfs.blocks_available() as u64).saturating_mul(fragment),
            total_inodes: vfs.files() as u64,
            free_inodes: vfs.files_available() as u64,
        })
    }

    /// Whether the file system has a fixed number of inodes to run out of.
    fn counts_inodes(&self) -> bool {
        self.total_inodes > 0
    }
}

/// The share of a file system kiln never writes into: the larger of `percent` of
/// it and the absolute floors, for bytes and for inodes alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReserve {
    pub percent: u64,
    pub min_free_bytes: u64,
    pub min_free_inodes: u64,
}

/// Free bytes and inodes above the reserve: what one operation may still take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    pub bytes: u64,
    /// `u64::MAX` on a file system without an inode limit.
    pub inodes: u64,
}

/// An operation was refused because it would eat into the reserve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} refused: the file system of {path:?} has {free_bytes} bytes and {free_inodes} inodes free, of which \
     kiln keeps {reserved_bytes} bytes and {reserved_inodes} inodes (kiln.disk_reserve); this needs {needed}"
)]
pub struct BelowReserve {
    pub path: PathBuf,
    pub what: &'static str,
    /// What the operation needed, in words ("1 inode and 3 bytes", "more than 5 inodes").
    pub needed: String,
    pub free_bytes: u64,
    pub free_inodes: u64,
    pub reserved_bytes: u64,
    pub reserved_inodes: u64,
}

impl DiskReserve {
    /// No reserve: only a full file system stops work.
    pub const NONE: DiskReserve = DiskReserve { percent: 0, min_free_bytes: 0, min_free_inodes: 0 };

    /// Bytes and inodes of `space` that stay free (inodes: 0 without an inode limit).
    pub fn reserved(&self, space: &FsSpace) -> (u64, u64) {
        let share = |total: u64| ((u128::from(total) * u128::from(self.percent)).div_ceil(100)) as u64;
        let bytes = share(space.total_bytes).max(self.min_free_bytes);
        let inodes = if space.counts_inodes() { share(space.total_inodes).max(self.min_free_inodes) } else { 0 };
        (bytes, inodes)
    }

    /// What may still be written on `space` above the reserve.
    pub fn headroom(&self, space: &FsSpace) -> Headroom {
        let (bytes, inodes) = self.reserved(space);
        Headroom {
            bytes: space.free_bytes.saturating_sub(bytes),
            inodes: if space.counts_inodes() { space.free_inodes.saturating_sub(inodes) } else { u64::MAX },
        }
    }

    /// `Ok` if `bytes` and `inodes` more fit on `space` above the reserve.
    pub fn check(
        &self,
        space: &FsSpace,
        path: &Path,
        what: &'static str,
        bytes: u64,
        inodes: u64,
    ) -> Result<Headroom, BelowReserve> {
        let headroom = self.headroom(space);
        if bytes <= headroom.bytes && inodes <= headroom.inodes {
            return Ok(headroom);
        }
        Err(self.refusal(space, path, what, format!("{inodes} inodes and {bytes} bytes above them")))
    }

    /// The error for `what`, which needed `needed` on `space`.
    pub fn refusal(&self, space: &FsSpace, path: &Path, what: &'static str, needed: String) -> BelowReserve {
        let (reserved_bytes, reserved_inodes) = self.reserved(space);
        BelowReserve {
            path: path.to_owned(),
            what,
            needed,
            free_bytes: space.free_bytes,
            free_inodes: space.free_inodes,
            reserved_bytes,
            reserved_inodes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESERVE: DiskReserve = DiskReserve { percent: 5, min_free_bytes: 1000, min_free_inodes: 10 };

    fn space(free_bytes: u64, free_inodes: u64) -> FsSpace {
        FsSpace { total_bytes: 100_000, free_bytes, total_inodes: 1_000, free_inodes }
    }

    #[test]
    fn the_reserve_is_the_larger_of_the_share_and_the_floor() {
        assert_eq!(RESERVE.reserved(&space(0, 0)), (5_000, 50));
        let floors = DiskReserve { min_free_bytes: 9_000, min_free_inodes: 70, ..RESERVE };
        assert_eq!(floors.reserved(&space(0, 0)), (9_000, 70));
        // 5 % of 1,001 inodes rounds up: the reserve is never less than asked.
        let odd = FsSpace { total_inodes: 1_001, ..space(0, 0) };
        assert_eq!(RESERVE.reserved(&odd).1, 51);
    }

    #[test]
    fn work_that_would_eat_into_the_reserve_is_refused() {
        let fs = space(6_000, 60);
        assert_eq!(RESERVE.headroom(&fs), Headroom { bytes: 1_000, inodes: 10 });
        assert!(RESERVE.check(&fs, Path::new("/d"), "an upload", 1_000, 10).is_ok());
        let err = RESERVE.check(&fs, Path::new("/d"), "an upload", 0, 11).unwrap_err();
        assert_eq!((err.reserved_bytes, err.reserved_inodes, err.free_inodes), (5_000, 50, 60));
        assert!(err.to_string().contains("kiln.disk_reserve"), "{err}");
        assert!(RESERVE.check(&fs, Path::new("/d"), "an upload", 1_001, 0).is_err());
        // Already below the reserve: nothing fits, not even nothing more.
        assert_eq!(RESERVE.headroom(&space(10, 1)), Headroom { bytes: 0, inodes: 0 });
    }

    #[test]
    fn a_file_system_without_an_inode_count_limits_bytes_only() {
        let btrfs = FsSpace { total_bytes: 100_000, free_bytes: 50_000, total_inodes: 0, free_inodes: 0 };
        assert_eq!(RESERVE.reserved(&btrfs), (5_000, 0));
        assert_eq!(RESERVE.headroom(&btrfs).inodes, u64::MAX);
        assert!(RESERVE.check(&btrfs, Path::new("/d"), "an unpack", 1, 1_000_000).is_ok());
    }

    #[test]
    fn reads_this_hosts_data_dir() {
        let fs = FsSpace::of(&std::env::temp_dir()).unwrap();
        assert!(fs.total_bytes > 0 && fs.free_bytes <= fs.total_bytes, "{fs:?}");
    }
}
