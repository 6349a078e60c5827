//! Reading a stopped data dir's segments without opening the log, for the operator
//! commands: `weir verify` (every batch CRC-checked and decoded, offsets continuous, the
//! indexes checked against the batches) and `weir dump` (the records of one partition).
//! Nothing here writes, truncates or rebuilds: unlike recovery, a bad batch is reported
//! (file and byte position), not cut. The caller holds the data dir lock
//! ([`DataDir::open_offline`](super::datadir::DataDir::open_offline)).

use std::fs::{self, File};
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::batch::{self, BatchHeader, Record};
use super::index::{OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
use super::partition::{read_batch_or_end, zeros_to};
use super::segment::{self, INDEX_EXT, LOG_EXT, TIMEINDEX_EXT};
use super::window::{Direction, Windowed};

/// One partition folder of a data dir.
#[derive(Debug, Clone)]
pub struct PartitionDir {
    pub topic: String,
    pub partition: u32,
    pub dir: PathBuf,
}

/// Every partition folder under `topics_root` (`<data_dir>/topics`), internal topics
/// included, in (topic, partition) order.
pub fn partitions(topics_root: &Path) -> io::Result<Vec<PartitionDir>> {
    let mut out = Vec::new();
    let topics = match fs::read_dir(topics_root) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for topic in topics {
        let topic = topic?;
        if !topic.file_type()?.is_dir() {
            continue;
        }
        let name = topic.file_name().to_string_lossy().into_owned();
        for part in fs::read_dir(topic.path())? {
            let part = part?;
            let Some(partition) = part
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if part.file_type()?.is_dir() {
                out.push(PartitionDir {
                    topic: name.clone(),
                    partition,
                    dir: part.path(),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(out)
}

/// The base offsets of a partition folder's segments, ascending.
fn segment_bases(dir: &Path) -> io::Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(base) = segment::parse_log_name(&entry?.file_name().to_string_lossy()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Something wrong in a file, at a byte position of it.
#[derive(Debug, Clone)]
pub struct Problem {
    pub file: PathBuf,
    pub position: u64,
    pub detail: String,
}

/// What [`verify_partition`] found.
#[derive(Debug, Default)]
pub struct Verified {
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    /// The first segment's base offset (None: no segment).
    pub start_offset: Option<i64>,
    /// One past the last offset read.
    pub end_offset: Option<i64>,
    pub problems: Vec<Problem>,
    /// The last segment's indexes were not checked: weir did not stop cleanly, so they
    /// may lag the log (recovery rebuilds them).
    pub active_index_unchecked: bool,
    /// After a stop that was not clean: a batch cut short at the very end of the last
    /// segment, a write the stop interrupted (never acknowledged). Not a problem: the
    /// next start cuts it. After a clean stop the same thing is a problem.
    pub torn_tail: Option<Problem>,
}

/// Reads every batch of every segment of the partition in `dir`: length, CRC, record
/// framing, base offsets continuous within and across segments. Then each segment's
/// offset index (every entry at a batch start with that batch's offset) and time index
/// (monotone, covering every batch before its offset, the last entry the segment's
/// maximum), except the last segment's when `clean` is false. A segment is read on after
/// a problem only in the next segment.
pub fn verify_partition(dir: &Path, clean: bool) -> io::Result<Verified> {
    let bases = segment_bases(dir)?;
    let mut v = Verified {
        start_offset: bases.first().copied(),
        ..Verified::default()
    };
    let mut expected: Option<i64> = None;
    let mut buf = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        let path = segment::path(dir, base, LOG_EXT);
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        v.segments += 1;
        v.bytes += len;
        if let Some(e) = expected
            && e != base
        {
            v.problems.push(Problem {
                file: path.clone(),
                position: 0,
                detail: format!(
                    "segment starts at offset {base} but the one before it ends at {e}"
                ),
            });
        }
        let mut batches = Vec::new();
        let (end, bad) = walk_segment(&file, base, len, &mut buf, |pos, h| {
            batches.push((pos, h.base_offset, h.max_timestamp));
            v.batches += 1;
            v.records += u64::try_from(h.record_count).unwrap_or(0);
        });
        v.end_offset = Some(end);
        expected = Some(end);
        let last = i + 1 == bases.len();
        if let Some(Bad {
            position,
            detail,
            torn,
        }) = bad
        {
            let problem = Problem {
                file: path,
                position,
                detail,
            };
            if torn && last && !clean {
                v.active_index_unchecked = true;
                v.torn_tail = Some(problem);
            } else {
                v.problems.push(problem);
            }
            expected = None;
            continue;
        }
        if last && !clean {
            v.active_index_unchecked = true;
            continue;
        }
        check_indexes(dir, base, end, &batches, &mut v.problems)?;
    }
    Ok(v)
}

/// The first bad batch of a segment: where, why, and whether it is only cut short by
/// the end of the file (torn) rather than wrong.
struct Bad {
    position: u64,
    detail: String,
    torn: bool,
}

impl Bad {
    fn wrong(position: u64, detail: String) -> Option<Bad> {
        Some(Bad {
            position,
            detail,
            torn: false,
        })
    }

    fn torn(position: u64, detail: String) -> Option<Bad> {
        Some(Bad {
            position,
            detail,
            torn: true,
        })
    }
}

/// Reads the batches of one segment from its start, calling `each` with the position
/// and header of every good one. Returns the offset after the last good batch and, if
/// one was bad, the first.
fn walk_segment(
    file: &File,
    base: i64,
    len: u64,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(u64, &BatchHeader),
) -> (i64, Option<Bad>) {
    let mut pos = 0u64;
    let mut next = base;
    let batches = Windowed::new(file, len, Direction::Forward);
    while pos < len {
        let h = match read_batch_or_end(&batches, pos, len, buf) {
            Ok(Some(h)) => h,
            // Space allocated ahead of the appends: the end of the data.
            Ok(None) => return (next, None),
            Err(batch::DecodeError::Incomplete { needed }) => {
                let detail = format!("torn batch: {needed} bytes missing at the end");
                return (next, Bad::torn(pos, detail));
            }
            Err(batch::DecodeError::Corrupt { what, at }) => {
                if ends_in_zeros(file, pos, len) {
                    // Written into space allocated ahead, and cut short: its end and
                    // everything after it are still the allocation's zeros.
                    let detail = format!("torn batch: its end is zeros ({what})");
                    return (next, Bad::torn(pos, detail));
                }
                let detail = format!("bad batch: {what} (the field at byte {})", pos + at as u64);
                return (next, Bad::wrong(pos, detail));
            }
        };
        if h.base_offset != next {
            let detail = format!(
                "batch has base offset {} where {next} was expected",
                h.base_offset
            );
            return (next, Bad::wrong(pos, detail));
        }
        if let Err(e) = batch::records(buf).and_then(|mut r| r.try_for_each(|x| x.map(|_| ()))) {
            return (next, Bad::wrong(pos, format!("records do not decode: {e}")));
        }
        each(pos, &h);
        next = h.next_offset();
        pos += h.total_len() as u64;
    }
    (next, None)
}

/// Whether the batch at `pos` is the last data of the file and ends in zeros: the last
/// byte its length field claims and everything after it to `len` are zero, as a write
/// cut short in space allocated ahead leaves it.
fn ends_in_zeros(file: &File, pos: u64, len: u64) -> bool {
    // Base offset (8 bytes), then the length of the rest (4 bytes).
    let mut head = [0u8; 12];
    if file.read_exact_at(&mut head, pos).is_err() {
        return false;
    }
    let rest = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    let last = pos + 12 + u64::from(rest) - 1;
    rest > 0 && last < len && zeros_to(file, last, len).unwrap_or(false)
}

/// Checks a segment's `.index` and `.timeindex` against its batches
/// `(position, base offset, max timestamp)`; `end` is one past its last offset.
fn check_indexes(
    dir: &Path,
    base: i64,
    end: i64,
    batches: &[(u64, i64, i64)],
    problems: &mut Vec<Problem>,
) -> io::Result<()> {
    let mut problem = |file: &Path, position: u64, detail: String| {
        problems.push(Problem {
            file: file.to_path_buf(),
            position,
            detail,
        });
    };
    let index_path = segment::path(dir, base, INDEX_EXT);
    let Some(bytes) = read_optional(&index_path)? else {
        problem(&index_path, 0, "offset index missing".to_string());
        return Ok(());
    };
    if bytes.len() % OFFSET_ENTRY_LEN != 0 {
        let at = (bytes.len() - bytes.len() % OFFSET_ENTRY_LEN) as u64;
        problem(&index_path, at, "a partial entry at the end".to_string());
    }
    let mut prev: Option<u32> = None;
    for (i, e) in bytes.chunks_exact(OFFSET_ENTRY_LEN).enumerate() {
        let at = (i * OFFSET_ENTRY_LEN) as u64;
        let rel = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
        let pos = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
        if prev.is_some_and(|p| rel <= p) {
            problem(
                &index_path,
                at,
                format!("entry for offset +{rel} out of order"),
            );
            break;
        }
        prev = Some(rel);
        match batches.binary_search_by_key(&u64::from(pos), |b| b.0) {
            Ok(b) if batches[b].1 - base == i64::from(rel) => {}
            Ok(b) => {
                let detail = format!(
                    "entry says offset +{rel} at byte {pos}, where the batch of offset +{} starts",
                    batches[b].1 - base
                );
                problem(&index_path, at, detail);
                break;
            }
            Err(_) => {
                let detail =
                    format!("entry for offset +{rel} points at byte {pos}, no batch start");
                problem(&index_path, at, detail);
                break;
            }
        }
    }

    let time_path = segment::path(dir, base, TIMEINDEX_EXT);
    let Some(bytes) = read_optional(&time_path)? else {
        problem(&time_path, 0, "time index missing".to_string());
        return Ok(());
    };
    if bytes.len() % TIME_ENTRY_LEN != 0 {
        let at = (bytes.len() - bytes.len() % TIME_ENTRY_LEN) as u64;
        problem(&time_path, at, "a partial entry at the end".to_string());
    }
    let last_rel = (end - 1 - base).max(0);
    let mut prev_ts = i64::MIN;
    let mut last_ts = None;
    for (i, e) in bytes.chunks_exact(TIME_ENTRY_LEN).enumerate() {
        let at = (i * TIME_ENTRY_LEN) as u64;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&e[..8]);
        let ts = i64::from_be_bytes(ts);
        let rel = i64::from(u32::from_be_bytes([e[8], e[9], e[10], e[11]]));
        if ts < prev_ts {
            problem(
                &time_path,
                at,
                format!("time {ts} goes back from {prev_ts}"),
            );
            break;
        }
        if rel > last_rel {
            problem(
                &time_path,
                at,
                format!("offset +{rel} past the segment's last +{last_rel}"),
            );
            break;
        }
        // No record before the entry's offset is later than its time.
        let before = batches
            .iter()
            .take_while(|b| b.1 - base < rel)
            .map(|b| b.2)
            .max();
        if before.is_some_and(|m| m > ts) {
            let detail = format!("time {ts} at offset +{rel}, but a batch before it is later");
            problem(&time_path, at, detail);
            break;
        }
        prev_ts = ts;
        last_ts = Some(ts);
    }
    if let Some(max) = batches.iter().map(|b| b.2).max()
        && last_ts != Some(max)
    {
        let detail =
            format!("the last entry ({last_ts:?}) is not the segment's newest event time {max}");
        problem(&time_path, bytes.len() as u64, detail);
    }
    Ok(())
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why a read of a partition stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{file}: {source}")]
    Io { file: PathBuf, source: io::Error },
    #[error("{file} at byte {position}: {detail}")]
    Corrupt {
        file: PathBuf,
        position: u64,
        detail: String,
    },
}

/// One record as [`read_partition`] hands it out.
pub struct DumpRecord<'a> {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub record: Record<'a>,
}

/// Calls `each` with every record of the partition in `dir` at or after `from`, in
/// offset order, until it breaks or the log ends. Returns the partition's start offset
/// (None: no segment). Stops with an error at the first bad batch.
pub fn read_partition(
    dir: &Path,
    from: i64,
    mut each: impl FnMut(&DumpRecord<'_>) -> ControlFlow<()>,
) -> Result<Option<i64>, ReadError> {
    let io_err = |file: &Path| {
        let file = file.to_path_buf();
        move |source| ReadError::Io { file, source }
    };
    let bases = segment_bases(dir).map_err(io_err(dir))?;
    // The segment holding `from`: the last base at or before it.
    let first = bases.iter().rposition(|b| *b <= from).unwrap_or(0);
    let mut buf = Vec::new();
    for &base in &bases[first.min(bases.len())..] {
        let path = segment::path(dir, base, LOG_EXT);
        let file = File::open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let file = Windowed::new(&file, len, Direction::Forward);
        let mut pos = 0u64;
        while pos < len {
            let corrupt = |detail: String| ReadError::Corrupt {
                file: path.clone(),
                position: pos,
                detail,
            };
            let h = match read_batch_or_end(&file, pos, len, &mut buf) {
                Ok(Some(h)) => h,
                // Space allocated ahead of the appends: the end of the data.
                Ok(None) => break,
                Err(e) => return Err(corrupt(e.to_string())),
            };
            if h.next_offset() > from {
                let records = batch::records(&buf).map_err(|e| corrupt(e.to_string()))?;
                for r in records {
                    let record = r.map_err(|e| corrupt(e.to_string()))?;
                    let offset = h.base_offset + i64::from(record.offset_delta);
                    if offset < from {
                        continue;
                    }
                    let timestamp_ms = h.base_timestamp.wrapping_add(record.timestamp_delta);
                    let r = DumpRecord {
                        offset,
                        timestamp_ms,
                        record,
                    };
                    if each(&r).is_break() {
                        return Ok(bases.first().copied());
                    }
                }
            }
            pos += h.total_len() as u64;
        }
    }
    Ok(bases.first().copied())
}
