//! Segment files: naming, the active segment being appended to and sealed segments that
//! are only read. A segment is `<base offset, 20 digits>.log` with `.index` and
//! `.timeindex` beside it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::ActiveIndex;

pub const LOG_EXT: &str = "log";
pub const INDEX_EXT: &str = "index";
pub const TIMEINDEX_EXT: &str = "timeindex";

/// `00000000000000000042.log` for base offset 42.
pub fn file_name(base_offset: i64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

pub fn path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(file_name(base_offset, ext))
}

/// Parses a segment file name back to its base offset; other files give None.
pub fn parse_log_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parses an index file name (`.index` or `.timeindex`) back to its segment's base offset.
pub fn parse_index_name(name: &str) -> Option<i64> {
    let (stem, ext) = name.split_once('.')?;
    if ext != INDEX_EXT && ext != TIMEINDEX_EXT {
        return None;
    }
    parse_log_name(&format!("{stem}.{LOG_EXT}"))
}

/// How far ahead of its appends the active segment's file is allocated (never past the
/// segment size): see [`ActiveSegment::preallocate`].
pub const PREALLOCATE_BYTES: u64 = 8 << 20;

/// The segment being appended to. Owned by the partition's lock.
///
/// Its file is allocated ahead of the appends with `fallocate(2)`, as Kafka's
/// `log.preallocate` does: an append into space the file already has leaves the file's
/// size alone, so the fdatasync after it writes the data without an inode update (on
/// ext4, without a journal commit per sync: 120 µs against 175 µs for a 512-byte write
/// here, and fio's own fdatasync baseline writes into a preallocated file). Past `len`
/// the file holds zeros: a roll and a clean stop cut them, and recovery and the offline
/// readers take a tail of zeros after the last batch for the end of the data, not for a
/// torn write (a batch never starts with a zero length).
#[derive(Debug)]
pub struct ActiveSegment {
    pub base_offset: i64,
    /// Shared with the fsync workers, which sync it without the partition lock.
    pub file: Arc<File>,
    /// Bytes written (the next batch's position).
    pub len: u64,
    /// The file's size: `len` plus the zeros allocated ahead.
    pub allocated: u64,
    /// Cleared once the file system said it cannot preallocate.
    pub preallocating: bool,
    pub index: ActiveIndex,
    /// Largest event time in the segment, i64::MIN when empty.
    pub max_timestamp_ms: i64,
    /// Append time of the first batch: segment age for rolling.
    pub first_append_ms: Option<i64>,
    /// Append time of the newest batch: segment age for retention.
    pub last_append_ms: Option<i64>,
    /// Monotonic clock reading at the newest append of this run (None if the segment
    /// took no append since start): retention ages it by monotonic time.
    pub last_append_mono_ms: Option<i64>,
}

/// Stops reads of `file` from updating its access time. Under `relatime` (the usual mount
/// option) a read of a file written since its last read updates the access time: every
/// read of the active segment by a pipeline or a consumer that keeps up (the newest bytes)
/// dirtied the inode, a journal transaction each (ext4), 5% of a pipeline's thread under
/// single-event load. weir never uses the access time. Best effort: a file system or a
/// file owner that does not allow it leaves reads as they were.
fn no_atime(file: &File) {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns; it reads no memory of ours.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_NOATIME == 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NOATIME);
        }
    }
}

impl ActiveSegment {
    /// Creates a new empty segment file (the caller makes the directory entry durable).
    pub fn create(dir: &Path, base_offset: i64) -> io::Result<ActiveSegment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path(dir, base_offset, LOG_EXT))?;
        Ok(ActiveSegment::from_file(base_offset, file, 0))
    }

    pub fn from_file(base_offset: i64, file: File, len: u64) -> ActiveSegment {
        no_atime(&file);
        ActiveSegment {
            base_offset,
            file: Arc::new(file),
            len,
            allocated: len,
            preallocating: true,
            index: ActiveIndex::default(),
            max_timestamp_ms: i64::MIN,
            first_append_ms: None,
            last_append_ms: None,
            last_append_mono_ms: None,
        }
    }

    /// Allocates the file up to at least `end` (the end of the batch about to be
    /// written) and, room permitting, [`PREALLOCATE_BYTES`] beyond, never past
    /// `size_max`. Best effort: if the file system refuses (no support, no space), the
    /// write extends the file itself, as without preallocation, and its own error is
    /// the one that counts.
    pub fn preallocate(&mut self, end: u64, size_max: u64) {
        if end <= self.allocated || !self.preallocating {
            return;
        }
        let target = end.saturating_add(PREALLOCATE_BYTES).min(size_max).max(end);
        let (Ok(from), Ok(add)) = (
            libc::off_t::try_from(self.allocated),
            libc::off_t::try_from(target - self.allocated),
        ) else {
            return;
        };
        // SAFETY: fallocate on a descriptor this segment owns; it reads no memory of ours.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), 0, from, add) } == 0 {
            self.allocated = target;
            return;
        }
        let err = io::Error::last_os_error();
        if matches!(
            err.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
        ) {
            tracing::debug!(error = %err, "the file system cannot preallocate segments");
            self.preallocating = false;
        }
        // A refusal part way (ENOSPC) may have grown the file: learn its size.
        if let Ok(meta) = self.file.metadata() {
            self.allocated = self.allocated.max(meta.len());
        }
    }

    /// Cuts the zeros allocated past `len` (before a roll seals the file, and at a clean
    /// stop), so sealed segments and a cleanly stopped one hold only batches. True if
    /// there were any (the file's size changed).
    pub fn cut_allocation(&mut self) -> io::Result<bool> {
        if self.allocated <= self.len {
            return Ok(false);
        }
        self.file.set_len(self.len)?;
        self.allocated = self.len;
        Ok(true)
    }
}

/// A segment that no longer takes appends.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    pub base_offset: i64,
    /// One past its last offset: the next segment's base.
    pub end_offset: i64,
    pub len: u64,
    /// Append time of its newest batch. None after a restart until retention reads it
    /// from the segment's last batch (lazily, so start-up does not read every segment).
    pub last_append_ms: Option<i64>,
    /// Monotonic reading at its newest append, when that happened in this run.
    pub last_append_mono_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(42, LOG_EXT), "00000000000000000042.log");
        assert_eq!(parse_log_name("00000000000000000042.log"), Some(42));
        for bad in [
            "42.log",
            "0000000000000000004x.log",
            "00000000000000000042.index",
        ] {
            assert_eq!(parse_log_name(bad), None, "{bad}");
        }
        assert_eq!(parse_index_name("00000000000000000042.index"), Some(42));
        assert_eq!(parse_index_name("00000000000000000042.timeindex"), Some(42));
        assert_eq!(parse_index_name("00000000000000000042.log"), None);
        assert_eq!(parse_index_name("42.index"), None);
    }

    /// Reads of the active segment leave its access time alone (see `no_atime`).
    #[test]
    fn the_active_segment_is_read_without_access_times() {
        let dir = tempfile::tempdir().unwrap();
        let seg = ActiveSegment::create(dir.path(), 0).unwrap();
        // SAFETY: F_GETFL on a descriptor the segment owns.
        let flags = unsafe { libc::fcntl(seg.file.as_raw_fd(), libc::F_GETFL) };
        assert!(flags >= 0);
        assert_ne!(flags & libc::O_NOATIME, 0, "flags {flags:#x}");
        // Still open for writes.
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
    }
}
