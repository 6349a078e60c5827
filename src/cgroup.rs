//! The memory limit of weir's own cgroup (v2), read once at start.
//!
//! `server.memory_max` is the bound weir's other limits are sized to; a cgroup limit
//! below it (systemd's `MemoryMax=`, a container's memory limit) would have the kernel
//! kill weir before that bound is reached, so `weir run` refuses to start instead.
//!
//! Where: `/proc/self/cgroup` has the line `0::<path>`; the limit in force is the
//! smallest `memory.max` of `/sys/fs/cgroup/<path>` and its ancestors ("max" is none; a
//! missing file is none, as at the root or without the memory controller). Under cgroup
//! v1 only there is no `0::` line and nothing is checked.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// Overrides [`ROOT`]: for tests only, which cannot move themselves into a cgroup with a
/// limit, so they point weir at a directory tree of their own.
pub const ROOT_ENV: &str = "WEIR_CGROUP_ROOT";

/// A `memory.max` in force and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub file: PathBuf,
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes (from {})", self.bytes, self.file.display())
    }
}

/// The memory limit of this process's cgroup, reading `/proc/self/cgroup` and the
/// hierarchy under `root` (`$WEIR_CGROUP_ROOT` if set, else [`ROOT`]).
pub fn own_memory_limit() -> io::Result<Option<MemoryLimit>> {
    let root = std::env::var_os(ROOT_ENV).map_or_else(|| PathBuf::from(ROOT), PathBuf::from);
    let membership = match std::fs::read_to_string("/proc/self/cgroup") {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(path) = unified_path(&membership) else {
        return Ok(None);
    };
    memory_limit(&root, path)
}

/// The cgroup v2 path of a `/proc/<pid>/cgroup` text: the `0::` line's.
pub fn unified_path(membership: &str) -> Option<&str> {
    membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim_end)
}

/// The smallest `memory.max` of `root/path` and its ancestors up to `root`.
pub fn memory_limit(root: &Path, path: &str) -> io::Result<Option<MemoryLimit>> {
    let mut dir = root.to_path_buf();
    let mut dirs = vec![dir.clone()];
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == ".." {
            // Not something the kernel writes; refuse rather than read outside `root`.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cgroup path {path:?} climbs out of {}", root.display()),
            ));
        }
        dir.push(part);
        dirs.push(dir.clone());
    }
    let mut limit: Option<MemoryLimit> = None;
    for dir in dirs {
        let file = dir.join("memory.max");
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
        };
        let Some(bytes) = parse_memory_max(&text).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: not a byte count or \"max\": {:?}",
                    file.display(),
                    text.trim()
                ),
            )
        })?
        else {
            continue;
        };
        if limit.as_ref().is_none_or(|l| bytes < l.bytes) {
            limit = Some(MemoryLimit { bytes, file });
        }
    }
    Ok(limit)
}

/// `memory.max`'s text: a byte count, or "max" for none.
pub fn parse_memory_max(text: &str) -> Result<Option<u64>, std::num::ParseIntError> {
    match text.trim() {
        "max" => Ok(None),
        n => n.parse().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_line_gives_the_path() {
        let v2 = "0::/system.slice/weir.service\n";
        assert_eq!(unified_path(v2), Some("/system.slice/weir.service"));
        let hybrid = "4:memory:/x\n1:cpu:/\n0::/user.slice\n";
        assert_eq!(unified_path(hybrid), Some("/user.slice"));
        assert_eq!(unified_path("4:memory:/x\n1:cpu:/\n"), None);
    }

    #[test]
    fn memory_max_is_bytes_or_max() {
        assert_eq!(parse_memory_max("1073741824\n"), Ok(Some(1 << 30)));
        assert_eq!(parse_memory_max("max\n"), Ok(None));
        assert!(parse_memory_max("lots").is_err());
    }

    #[test]
    fn the_smallest_limit_on_the_way_up_wins_and_missing_files_are_no_limit() {
        let root = tempfile::tempdir().unwrap();
        let leaf = root.path().join("system.slice/weir.service");
        std::fs::create_dir_all(&leaf).unwrap();
        let path = "/system.slice/weir.service";
        assert_eq!(memory_limit(root.path(), path).unwrap(), None);

        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        assert_eq!(memory_limit(root.path(), path).unwrap(), None);

        let slice = root.path().join("system.slice/memory.max");
        std::fs::write(&slice, "2147483648\n").unwrap();
        let got = memory_limit(root.path(), path).unwrap().unwrap();
        assert_eq!((got.bytes, got.file), (2 << 30, slice.clone()));

        std::fs::write(leaf.join("memory.max"), "1073741824\n").unwrap();
        let got = memory_limit(root.path(), path).unwrap().unwrap();
        assert_eq!((got.bytes, got.file), (1 << 30, leaf.join("memory.max")));

        // A container's namespace root: the path is "/", the limit sits at the root.
        std::fs::write(root.path().join("memory.max"), "536870912\n").unwrap();
        assert_eq!(
            memory_limit(root.path(), "/").unwrap().unwrap().bytes,
            512 << 20
        );

        std::fs::write(&slice, "a lot\n").unwrap();
        assert!(memory_limit(root.path(), path).is_err());
        assert!(memory_limit(root.path(), "/a/../..").is_err());
    }
}
