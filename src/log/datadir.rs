//! The data directory: its lock, its format version and the clean-shutdown marker.
//!
//! Layout (see ARCHITECTURE.md):
//!
//! ```text
//! <data_dir>/weir.lock                 flock(2)-held while a weir runs here
//! <data_dir>/format_version            "1\n"; newer is refused
//! <data_dir>/clean_shutdown            present only between a clean stop and the next start
//! <data_dir>/clock                     the wall-clock reading trusted at the last start
//!                                      (boot id, wall ms, monotonic ms; see `clock`)
//! <data_dir>/topics/<topic>/<partition>/<base offset>.{log,index,timeindex}
//! <data_dir>/topics/<topic>/<partition>/recovery_point
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The on-disk format this build writes. Bump with a migration when the layout changes.
pub const FORMAT_VERSION: u32 = 1;

const LOCK_FILE: &str = "weir.lock";
const VERSION_FILE: &str = "format_version";
const CLEAN_FILE: &str = "clean_shutdown";
const CLOCK_FILE: &str = "clock";
const TOPICS_DIR: &str = "topics";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create or open data dir {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "data dir {path} is in use by another weir (pid {holder}) or an operator command (weir verify, dump, pipeline reset); stop it or choose another --data-dir"
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "data dir {path} has format version {found}, newer than this weir's {FORMAT_VERSION}; run a newer weir"
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error("data dir {path}: unreadable format_version file: {detail}")]
    BadVersion { path: PathBuf, detail: String },
    #[error(
        "{path} is not a weir data dir (no format_version file); check --data-dir or the config's storage.data_dir"
    )]
    NotADataDir { path: PathBuf },
    #[error(
        "data dir {path} is in use by a running weir (pid {holder}); stop it first, or run this on a copy taken from a file-system snapshot"
    )]
    Running { path: PathBuf, holder: String },
}

/// How an operator command holds the data dir lock (see [`DataDir::open_offline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineLock {
    /// Readers (`weir verify`, `weir dump`): several may run at once, no weir can start
    /// meanwhile, nothing is written (a read-only snapshot can be verified).
    Shared,
    /// Writers (`weir pipeline reset`): alone, as a running weir is.
    Exclusive,
}

/// An open, locked data directory. The lock lives as long as this value.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    /// Holds the flock; closing it releases the directory for another weir.
    _lock: File,
    /// Whether the previous run stopped cleanly (its marker was present at open).
    was_clean: bool,
}

impl DataDir {
    /// Creates the directory if missing, takes the lock, checks or writes the format version.
    pub fn open(root: &Path) -> Result<DataDir, DataDirError> {
        let open_err = |source| DataDirError::Open {
            path: root.to_path_buf(),
            source,
        };
        fs::create_dir_all(root.join(TOPICS_DIR)).map_err(open_err)?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join(LOCK_FILE))
            .map_err(open_err)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = fs::read_to_string(root.join(LOCK_FILE))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".to_string());
                return Err(DataDirError::Locked {
                    path: root.to_path_buf(),
                    holder,
                });
            }
            return Err(open_err(err));
        }
        lock.set_len(0).map_err(open_err)?;
        writeln!(lock, "{}", std::process::id()).map_err(open_err)?;

        let version_path = root.join(VERSION_FILE);
        match fs::read_to_string(&version_path) {
            // Older formats would be migrated here; version 1 is the first.
            Ok(text) => check_version(root, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_durably(root, VERSION_FILE, format!("{FORMAT_VERSION}\n").as_bytes())
                    .map_err(open_err)?;
            }
            Err(e) => return Err(open_err(e)),
        }
        let was_clean = root.join(CLEAN_FILE).exists();
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
            was_clean,
        })
    }

    /// Opens an existing data dir for an operator command: nothing is created or
    /// written, the format version must be one this build reads, and the lock is taken
    /// without waiting, refused while a weir runs here. A dir whose lock file is missing
    /// (never run by a weir) is read without a lock in [`OfflineLock::Shared`] mode.
    pub fn open_offline(root: &Path, mode: OfflineLock) -> Result<DataDir, DataDirError> {
        let open_err = |source| DataDirError::Open {
            path: root.to_path_buf(),
            source,
        };
        match fs::read_to_string(root.join(VERSION_FILE)) {
            Ok(text) => check_version(root, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DataDirError::NotADataDir {
                    path: root.to_path_buf(),
                });
            }
            Err(e) => return Err(open_err(e)),
        }
        let lock = match mode {
            OfflineLock::Shared => File::open(root.join(LOCK_FILE)),
            OfflineLock::Exclusive => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(root.join(LOCK_FILE)),
        };
        let lock = match lock {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => File::open(root).map_err(open_err)?,
            Err(e) => return Err(open_err(e)),
        };
        let op = match mode {
            OfflineLock::Shared => libc::LOCK_SH,
            OfflineLock::Exclusive => libc::LOCK_EX,
        };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = fs::read_to_string(root.join(LOCK_FILE))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".to_string());
                return Err(DataDirError::Running {
                    path: root.to_path_buf(),
                    holder,
                });
            }
            return Err(open_err(err));
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
            was_clean: root.join(CLEAN_FILE).exists(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the previous run left the clean-shutdown marker.
    pub fn was_clean(&self) -> bool {
        self.was_clean
    }

    /// The folder holding one folder per topic.
    pub fn topics_root(&self) -> PathBuf {
        self.root.join(TOPICS_DIR)
    }

    pub fn topic_dir(&self, topic: &str) -> PathBuf {
        self.root.join(TOPICS_DIR).join(topic)
    }

    /// Removes the clean-shutdown marker durably. Must happen before the first write after
    /// start: a crash after that write must not be mistaken for a clean stop.
    pub fn clear_clean_marker(&self) -> io::Result<()> {
        match fs::remove_file(self.root.join(CLEAN_FILE)) {
            Ok(()) => sync_dir(&self.root),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The clock anchor of the last start, if there is a readable one.
    pub fn clock_anchor(&self) -> Option<crate::clock::Anchor> {
        let text = fs::read_to_string(self.root.join(CLOCK_FILE)).ok()?;
        crate::clock::Anchor::parse(&text)
    }

    /// Keeps the clock anchor of this start for the next (atomically; lost in a crash it
    /// only means the next start trusts the wall clock, as after a reboot).
    pub fn set_clock_anchor(&self, anchor: &crate::clock::Anchor) -> io::Result<()> {
        write_durably(&self.root, CLOCK_FILE, anchor.to_text().as_bytes())
    }

    /// Writes the clean-shutdown marker durably; called after the final fsync of every partition.
    pub fn set_clean_marker(&self) -> io::Result<()> {
        write_durably(&self.root, CLEAN_FILE, b"clean\n")
    }
}

/// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `name` in `dir` atomically and durably: temp file, fsync, rename, fsync dir.
pub fn write_durably(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// The `format_version` file's text: a number this build reads.
fn check_version(root: &Path, text: &str) -> Result<(), DataDirError> {
    let found: u32 = text.trim().parse().map_err(|_| DataDirError::BadVersion {
        path: root.to_path_buf(),
        detail: format!("{:?} is not a number", text.trim()),
    })?;
    if found > FORMAT_VERSION {
        return Err(DataDirError::TooNew {
            path: root.to_path_buf(),
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err();
        assert!(matches!(err, DataDirError::Locked { .. }), "{err}");
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn offline_commands_are_refused_while_weir_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let err = DataDir::open_offline(dir.path(), OfflineLock::Shared).unwrap_err();
        assert!(matches!(err, DataDirError::NotADataDir { .. }), "{err}");
        let running = DataDir::open(dir.path()).unwrap();
        for mode in [OfflineLock::Shared, OfflineLock::Exclusive] {
            let err = DataDir::open_offline(dir.path(), mode).unwrap_err();
            assert!(matches!(err, DataDirError::Running { .. }), "{err}");
        }
        drop(running);
        let a = DataDir::open_offline(dir.path(), OfflineLock::Shared).unwrap();
        let b = DataDir::open_offline(dir.path(), OfflineLock::Shared).unwrap();
        // Readers share; a writer and a weir wait for them.
        assert!(DataDir::open_offline(dir.path(), OfflineLock::Exclusive).is_err());
        assert!(DataDir::open(dir.path()).is_err());
        drop((a, b));
        drop(DataDir::open_offline(dir.path(), OfflineLock::Exclusive).unwrap());
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(VERSION_FILE), "99\n").unwrap();
        let err = DataDir::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, DataDirError::TooNew { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn clean_marker_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        assert!(!d.was_clean());
        d.set_clean_marker().unwrap();
        drop(d);
        let d = DataDir::open(dir.path()).unwrap();
        assert!(d.was_clean());
        d.clear_clean_marker().unwrap();
        drop(d);
        assert!(!DataDir::open(dir.path()).unwrap().was_clean());
    }
}
