//! Opening a partition directory after a clean stop or a crash.
//!
//! Segments before the recovery point were fsynced with their indexes when they were
//! sealed and are trusted as they are. From the recovery point on, every batch is read and
//! CRC-checked: the first batch whose length, CRC or offset is wrong ends the log, the
//! tail from there is cut (later segments deleted), counted and logged. After a clean stop
//! only the bytes after the active segment's last index entry are read.
//! Scanned segments are fsynced with rebuilt indexes before the recovery point moves past
//! them, so an OS crash later can never leave an unscanned torn segment.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::batch::{self, BatchHeader, DecodeError};
use super::batch_append_ms;
use super::corrupt;
use super::datadir::{sync_dir, write_durably};
use super::index::{self, ActiveIndex};
use super::partition::{
    RECOVERY_POINT_FILE, ReadAt, read_batch, read_batch_or_end, write_index_files,
};
use super::segment::{self, ActiveSegment, INDEX_EXT, LOG_EXT, SealedSegment, TIMEINDEX_EXT};
use super::window::{Direction, Windowed};
use crate::limits::INDEX_INTERVAL_BYTES;

/// What recovery found, for logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub scanned_bytes: u64,
    pub truncated_bytes: u64,
    /// Why the log was cut, naming file and byte position.
    pub truncation: Option<String>,
    /// Segments whose index files were found wrong and rebuilt: what was wrong (naming
    /// the file), and the bad batches the rebuild's scan stepped over.
    pub index_rebuilds: Vec<(String, u64)>,
}

pub(crate) struct Recovered {
    pub sealed: BTreeMap<i64, SealedSegment>,
    pub active: ActiveSegment,
    pub next_offset: i64,
    pub report: RecoveryReport,
}

/// State gathered while scanning one segment.
struct Scan {
    index: ActiveIndex,
    next_offset: i64,
    len: u64,
    max_timestamp_ms: i64,
    first_append_ms: Option<i64>,
    last_append_ms: Option<i64>,
}

pub(crate) fn recover(dir: &Path, clean: bool) -> io::Result<Recovered> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
            if let Some(grand) = parent.parent() {
                sync_dir(grand)?;
            }
        }
    }
    let mut bases = Vec::new();
    let mut index_files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = segment::parse_log_name(&name) {
            bases.push(base);
        } else if name.ends_with(".tmp") {
            fs::remove_file(dir.join(&*name))?;
        } else if let Some(base) = segment::parse_index_name(&name) {
            index_files.push((base, name.to_string()));
        }
    }
    bases.sort_unstable();
    // Retention deletes a segment's `.log` first: a crash before its index files went
    // leaves them without a log. They index nothing; remove them.
    let mut orphans = false;
    for (base, name) in index_files {
        if bases.binary_search(&base).is_err() {
            fs::remove_file(dir.join(name))?;
            orphans = true;
        }
    }
    if orphans {
        sync_dir(dir)?;
    }
    if bases.is_empty() {
        let active = ActiveSegment::create(dir, 0)?;
        sync_dir(dir)?;
        write_durably(dir, RECOVERY_POINT_FILE, b"0\n")?;
        return Ok(Recovered {
            sealed: BTreeMap::new(),
            active,
            next_offset: 0,
            report: RecoveryReport::default(),
        });
    }
    let recovery_point = fs::read_to_string(dir.join(RECOVERY_POINT_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(i64::MIN);
    let last_base = *bases.last().unwrap_or(&0);
    // The first segment to scan: the one holding the recovery point, never past the last.
    let scan_from = bases
        .iter()
        .rev()
        .find(|b| **b <= recovery_point)
        .copied()
        .unwrap_or(bases[0])
        .min(last_base);
    let mut report = RecoveryReport::default();
    let clean_tail = if clean {
        match clean_tail_start(dir, last_base)? {
            Ok(tail) => Some(tail),
            Err(why) => {
                // The whole segment is scanned and its indexes rebuilt in memory.
                report.index_rebuilds.push((why, 0));
                None
            }
        }
    } else {
        None
    };
    let scan_from = if clean_tail.is_some() {
        last_base
    } else {
        scan_from
    };

    let mut sealed = BTreeMap::new();
    let mut expected_next: Option<i64> = None;
    let mut kept_last: Option<(i64, Scan)> = None;
    let mut cut = false;
    for (i, &base) in bases.iter().enumerate() {
        let path = segment::path(dir, base, LOG_EXT);
        if cut {
            report.truncated_bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            remove_segment(dir, base)?;
            continue;
        }
        if let Some(expected) = expected_next
            && expected != base
        {
            report.truncation = Some(format!(
                "{} starts at offset {base} but the log before it ends at {expected}",
                path.display()
            ));
            report.truncated_bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            remove_segment(dir, base)?;
            cut = true;
            continue;
        }
        let is_last = i + 1 == bases.len();
        if base < scan_from {
            // Sealed and fsynced before the recovery point: trusted, but for a cheap
            // check of its index files (a few reads whatever its size).
            let len = fs::metadata(&path)?.len();
            let end = bases[i + 1];
            let wrong = match corrupt::check_indexes(dir, base, end, len) {
                Ok(wrong) => wrong,
                Err(e) => Some(format!("indexes of {} unreadable: {e}", path.display())),
            };
            if let Some(why) = wrong {
                let rebuilt = corrupt::rebuild_indexes(dir, base, end, len)?;
                report.index_rebuilds.push((why, rebuilt.corrupt_batches));
            }
            sealed.insert(
                base,
                SealedSegment {
                    base_offset: base,
                    end_offset: end,
                    len,
                    last_append_ms: None,
                    last_append_mono_ms: None,
                },
            );
            expected_next = Some(end);
            continue;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let file_len = file.metadata()?.len();
        let start = if is_last { clean_tail.clone() } else { None };
        let start_pos = start.as_ref().map_or(0, |s| s.position);
        let (scan, bad) = scan_segment(&file, base, file_len, start);
        report.scanned_bytes += scan.len.saturating_sub(start_pos);
        if let Some(reason) = bad {
            report.truncated_bytes += file_len - scan.len;
            report.truncation = Some(format!("{} at byte {}: {reason}", path.display(), scan.len));
            file.set_len(scan.len)?;
            cut = true;
        } else if scan.len < file_len {
            // Zeros allocated ahead of the appends (a crash before a roll or a clean stop
            // cut them): nothing was lost.
            file.set_len(scan.len)?;
        }
        file.sync_data()?;
        if let Some((prev_base, prev)) = kept_last.take() {
            seal_scanned(dir, prev_base, prev, &mut sealed)?;
        }
        expected_next = Some(scan.next_offset);
        kept_last = Some((base, scan));
    }
    let (active_base, scan) = match kept_last {
        Some(k) => k,
        None => {
            // Every scanned segment was removed: the newest trusted one becomes active.
            let (&base, _) = sealed.iter().next_back().expect("a segment remains");
            let seg = sealed.remove(&base).expect("present");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(segment::path(dir, base, LOG_EXT))?;
            let (scan, _) = scan_segment(&file, base, seg.len, None);
            (base, scan)
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment::path(dir, active_base, LOG_EXT))?;
    let next_offset = scan.next_offset;
    let mut active = ActiveSegment::from_file(active_base, file, scan.len);
    active.index = scan.index;
    active.max_timestamp_ms = scan.max_timestamp_ms;
    active.first_append_ms = scan.first_append_ms;
    active.last_append_ms = scan.last_append_ms;
    sync_dir(dir)?;
    write_durably(
        dir,
        RECOVERY_POINT_FILE,
        format!("{active_base}\n").as_bytes(),
    )?;
    Ok(Recovered {
        sealed,
        active,
        next_offset,
        report,
    })
}

/// Where the scan of the active segment starts after a clean stop: its last index entry.
#[derive(Clone)]
struct TailStart {
    position: u64,
    next_offset: i64,
    index: Vec<index::OffsetEntry>,
    times: Vec<index::TimeEntry>,
    max_timestamp_ms: i64,
}

/// The active segment's index files after a clean stop, checked as cheaply as sealed
/// ones (`corrupt::check_indexes`) but for its end, which the scan from the last entry
/// finds: every entry decodes in order, the first is `(0, 0)`, the last points at a
/// batch header of its offset. Err names what is wrong: then the whole segment is
/// scanned. No offset index (an empty segment) is Ok(None).
fn clean_tail_start(dir: &Path, base: i64) -> io::Result<Result<TailStart, String>> {
    let log_path = segment::path(dir, base, LOG_EXT);
    let log_len = fs::metadata(&log_path)?.len();
    let index_path = segment::path(dir, base, INDEX_EXT);
    let time_path = segment::path(dir, base, TIMEINDEX_EXT);
    let wrong = |path: &Path, why: &str| Ok(Err(format!("{}: {why}", path.display())));
    let Ok(bytes) = fs::read(&index_path) else {
        return wrong(&index_path, "missing");
    };
    let entries = ActiveIndex::decode_offsets(&bytes, log_len);
    if bytes.len() % index::OFFSET_ENTRY_LEN != 0
        || entries.len() != bytes.len() / index::OFFSET_ENTRY_LEN
    {
        return wrong(&index_path, "entries out of order or past the segment");
    }
    let Some(last) = entries.last().copied() else {
        return if log_len == 0 {
            Ok(Ok(TailStart::empty(base)))
        } else {
            wrong(&index_path, "empty for a segment with batches")
        };
    };
    if (entries[0].rel_offset, entries[0].position) != (0, 0) {
        return wrong(&index_path, "the first entry is not (0, 0)");
    }
    let mut head = [0u8; batch::BATCH_HEADER_LEN];
    let header = File::open(&log_path)
        .and_then(|f| f.read_exact_at(&mut head, u64::from(last.position)))
        .ok()
        .and_then(|()| BatchHeader::parse(&head).ok());
    if header.is_none_or(|h| h.base_offset != base + i64::from(last.rel_offset)) {
        return wrong(
            &index_path,
            "the last entry points at no batch of its offset",
        );
    }
    let Ok(time_bytes) = fs::read(&time_path) else {
        return wrong(&time_path, "missing");
    };
    let times = ActiveIndex::decode_times(&time_bytes);
    if time_bytes.len() % index::TIME_ENTRY_LEN != 0
        || times.len() != time_bytes.len() / index::TIME_ENTRY_LEN
        || times.first().is_none_or(|t| t.rel_offset != 0)
    {
        return wrong(
            &time_path,
            "entries partial, out of order or not from offset 0",
        );
    }
    let max_ts = times.last().map_or(i64::MIN, |t| t.timestamp_ms);
    Ok(Ok(TailStart {
        position: u64::from(last.position),
        next_offset: base + i64::from(last.rel_offset),
        index: entries,
        times,
        max_timestamp_ms: max_ts,
    }))
}

impl TailStart {
    /// An empty segment: the scan starts at its beginning.
    fn empty(base: i64) -> TailStart {
        TailStart {
            position: 0,
            next_offset: base,
            index: Vec::new(),
            times: Vec::new(),
            max_timestamp_ms: i64::MIN,
        }
    }
}

/// What [`scan_bytes`] found in a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// The length of the valid prefix: whole CRC-valid batches with continuous offsets
    /// from the segment's base offset. Recovery cuts the file there.
    pub valid_len: u64,
    /// The offset after the last valid batch (the base offset when there is none).
    pub next_offset: i64,
    /// The largest batch max_timestamp in the valid prefix (`i64::MIN` when empty).
    pub max_timestamp_ms: i64,
    /// The rebuilt offset index of the valid prefix.
    pub index: Vec<index::OffsetEntry>,
    /// Why the scan stopped before the end, if it did; `None` too when only zeros follow
    /// the valid prefix (space allocated ahead of the appends, cut without a report).
    pub stop: Option<String>,
}

/// The recovery scan of a whole segment, over its bytes in memory: the same code that
/// recovery runs over the file after a crash (for the fuzz target and tests).
pub fn scan_bytes(bytes: &[u8], base_offset: i64) -> ScanOutcome {
    let (scan, stop) = scan_segment(bytes, base_offset, bytes.len() as u64, None);
    ScanOutcome {
        valid_len: scan.len,
        next_offset: scan.next_offset,
        max_timestamp_ms: scan.max_timestamp_ms,
        index: scan.index.offsets,
        stop,
    }
}

/// Reads batches from the start (or the clean tail) until the end or the first bad one.
/// Returns the scan and, if the log ends early, why.
fn scan_segment<R: ReadAt + ?Sized>(
    file: &R,
    base: i64,
    file_len: u64,
    start: Option<TailStart>,
) -> (Scan, Option<String>) {
    let mut scan = Scan {
        index: ActiveIndex::default(),
        next_offset: base,
        len: 0,
        max_timestamp_ms: i64::MIN,
        first_append_ms: None,
        last_append_ms: None,
    };
    // Batches of single-event requests are a few hundred bytes: read in windows.
    let file = &Windowed::new(file, file_len, Direction::Forward);
    let mut buf = Vec::new();
    let mut pos = 0u64;
    if let Some(tail) = start {
        // Entries up to the tail are reused; the scan goes on from the last one.
        scan.index.offsets = tail.index;
        scan.index.times = tail.times;
        scan.max_timestamp_ms = tail.max_timestamp_ms;
        scan.next_offset = tail.next_offset;
        pos = tail.position;
        if read_batch(file, 0, file_len, &mut buf).is_ok() {
            scan.first_append_ms = batch_append_ms(&buf);
        }
    }
    let bad = loop {
        if pos == file_len {
            break None;
        }
        let header: BatchHeader = match read_batch_or_end(file, pos, file_len, &mut buf) {
            Ok(Some(h)) => h,
            // Space allocated ahead of the appends: the end of the data, nothing torn.
            Ok(None) => break None,
            Err(DecodeError::Incomplete { needed }) => {
                break Some(format!("torn batch ({needed} bytes missing)"));
            }
            Err(e) => break Some(e.to_string()),
        };
        if header.base_offset != scan.next_offset {
            break Some(format!(
                "batch has base offset {} where {} was expected",
                header.base_offset, scan.next_offset
            ));
        }
        if let Err(e) = batch::records(&buf).and_then(|mut r| r.try_for_each(|x| x.map(|_| ()))) {
            break Some(format!("records do not decode: {e}"));
        }
        let len = header.total_len() as u64;
        let rel = u32::try_from(header.base_offset - base).unwrap_or(u32::MAX);
        let pos32 = u32::try_from(pos).unwrap_or(u32::MAX);
        scan.index
            .on_batch(rel, pos32, len, header.max_timestamp, INDEX_INTERVAL_BYTES);
        scan.max_timestamp_ms = scan.max_timestamp_ms.max(header.max_timestamp);
        let append = batch_append_ms(&buf);
        if scan.first_append_ms.is_none() {
            scan.first_append_ms = append;
        }
        scan.last_append_ms = append.or(scan.last_append_ms);
        scan.next_offset = header.next_offset();
        pos += len;
        scan.len = pos;
    };
    if bad.is_none() {
        scan.len = pos;
    }
    (scan, bad)
}

/// Writes and fsyncs the indexes of a scanned segment that is not the last, and records it.
fn seal_scanned(
    dir: &Path,
    base: i64,
    scan: Scan,
    sealed: &mut BTreeMap<i64, SealedSegment>,
) -> io::Result<()> {
    let file = File::open(segment::path(dir, base, LOG_EXT))?;
    let mut seg = ActiveSegment::from_file(base, file, scan.len);
    seg.index = scan.index;
    seg.max_timestamp_ms = scan.max_timestamp_ms;
    let last_rel = u32::try_from((scan.next_offset - 1 - base).max(0)).unwrap_or(u32::MAX);
    write_index_files(dir, &seg, last_rel)?;
    for ext in [INDEX_EXT, TIMEINDEX_EXT] {
        File::open(segment::path(dir, base, ext))?.sync_data()?;
    }
    sealed.insert(
        base,
        SealedSegment {
            base_offset: base,
            end_offset: scan.next_offset,
            len: scan.len,
            last_append_ms: scan.last_append_ms,
            last_append_mono_ms: None,
        },
    );
    Ok(())
}

fn remove_segment(dir: &Path, base: i64) -> io::Result<()> {
    for ext in [LOG_EXT, INDEX_EXT, TIMEINDEX_EXT] {
        match fs::remove_file(segment::path(dir, base, ext)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
