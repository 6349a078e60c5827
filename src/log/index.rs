//! Sparse indexes beside each segment, in Kafka's layouts.
//!
//! - offset index (`.index`): 8-byte entries, relative offset (u32 BE) then byte position
//!   (u32 BE) of a batch start, one entry per [`INDEX_INTERVAL_BYTES`] of log.
//! - time index (`.timeindex`): 12-byte entries, the segment's largest event time so far
//!   (i64 BE, so monotone as Kafka's) then the relative offset (u32 BE) of the indexed
//!   batch. "So far" covers every batch up to and including that one, indexed or not: no
//!   record before an entry's offset is later than its time, which is what lets a lookup
//!   by time start its scan at the entry (Kafka's ListOffsets by timestamp). A sealed
//!   segment's last entry is its true maximum.
//!
//! The active segment keeps its entries in memory and writes them when it is sealed or at
//! a clean stop; after a crash they are rebuilt by the recovery scan. Sealed segments are
//! searched in their files with positioned reads, so memory does not grow with the log.
//! An index is a hint: a lookup that lands outside the segment falls back to its start.
//!
//! [`INDEX_INTERVAL_BYTES`]: crate::limits::INDEX_INTERVAL_BYTES

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const OFFSET_ENTRY_LEN: usize = 8;
pub const TIME_ENTRY_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Offset of the batch minus the segment's base offset.
    pub rel_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
}

impl OffsetEntry {
    /// The segment's first batch: where a lookup with no entry before it starts.
    pub const SEGMENT_START: OffsetEntry = OffsetEntry {
        rel_offset: 0,
        position: 0,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest event time (ms) in the segment up to this entry.
    pub timestamp_ms: i64,
    pub rel_offset: u32,
}

/// The in-memory indexes of the active segment.
#[derive(Debug, Default)]
pub struct ActiveIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    /// Log bytes appended since the last offset entry.
    bytes_since_entry: u64,
    /// Largest event time of the batches appended since the last offset entry, so the
    /// next time entry covers them too.
    max_timestamp_since_entry_ms: Option<i64>,
}

impl ActiveIndex {
    /// Records a batch that starts at `position`; adds entries once an interval has passed.
    pub fn on_batch(
        &mut self,
        rel_offset: u32,
        position: u32,
        batch_len: u64,
        max_timestamp_ms: i64,
        interval_bytes: u64,
    ) {
        let max_so_far = self
            .max_timestamp_since_entry_ms
            .map_or(max_timestamp_ms, |m| m.max(max_timestamp_ms));
        if self.offsets.is_empty() || self.bytes_since_entry >= interval_bytes {
            self.offsets.push(OffsetEntry {
                rel_offset,
                position,
            });
            self.bytes_since_entry = 0;
            self.max_timestamp_since_entry_ms = None;
            if self
                .times
                .last()
                .is_none_or(|t| max_so_far > t.timestamp_ms)
            {
                self.times.push(TimeEntry {
                    timestamp_ms: max_so_far,
                    rel_offset,
                });
            }
        } else {
            self.max_timestamp_since_entry_ms = Some(max_so_far);
        }
        self.bytes_since_entry += batch_len;
    }

    /// Where a search for the first record at or after `timestamp_ms` may start: the
    /// relative offset of the last entry earlier than it (no record before that entry
    /// is as late), or 0. Whether the segment holds such a record at all is the caller's
    /// question (the active segment's maximum is kept beside the index).
    pub fn lookup_time(&self, timestamp_ms: i64) -> u32 {
        let i = self
            .times
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        if i == 0 {
            0
        } else {
            self.times[i - 1].rel_offset
        }
    }

    /// Position of the last indexed batch at or before `rel_offset`.
    pub fn lookup(&self, rel_offset: u32) -> u32 {
        self.lookup_entry(rel_offset).position
    }

    /// The last entry at or before `rel_offset`, or `(0, 0)`.
    pub fn lookup_entry(&self, rel_offset: u32) -> OffsetEntry {
        let i = self.offsets.partition_point(|e| e.rel_offset <= rel_offset);
        if i == 0 {
            OffsetEntry::SEGMENT_START
        } else {
            self.offsets[i - 1]
        }
    }

    pub fn encode_offsets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_LEN);
        for e in &self.offsets {
            out.extend_from_slice(&e.rel_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Encodes the time index, with a final entry for the segment's true maximum so a
    /// sealed segment's newest event time is known without scanning it.
    pub fn encode_times(&self, max_timestamp_ms: i64, last_rel_offset: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity((self.times.len() + 1) * TIME_ENTRY_LEN);
        for e in &self.times {
            out.extend_from_slice(&e.timestamp_ms.to_be_bytes());
            out.extend_from_slice(&e.rel_offset.to_be_bytes());
        }
        if self
            .times
            .last()
            .is_none_or(|t| max_timestamp_ms > t.timestamp_ms)
        {
            out.extend_from_slice(&max_timestamp_ms.to_be_bytes());
            out.extend_from_slice(&last_rel_offset.to_be_bytes());
        }
        out
    }

    /// Reads back the offset entries written by [`ActiveIndex::encode_offsets`] (after a
    /// clean stop). Entries past `segment_len` or out of order end the list: an index is a
    /// hint, and a damaged one only makes lookups scan further.
    pub fn decode_offsets(bytes: &[u8], segment_len: u64) -> Vec<OffsetEntry> {
        let mut out: Vec<OffsetEntry> = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_LEN);
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_LEN) {
            let e = OffsetEntry {
                rel_offset: u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                position: u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            };
            let ordered = out
                .last()
                .is_none_or(|p| e.rel_offset > p.rel_offset && e.position > p.position);
            if !ordered || u64::from(e.position) >= segment_len {
                break;
            }
            out.push(e);
        }
        out
    }
}

impl ActiveIndex {
    /// Reads back time entries written by [`ActiveIndex::encode_times`]; stops at the first
    /// entry that would make the index go backward.
    pub fn decode_times(bytes: &[u8]) -> Vec<TimeEntry> {
        let mut out: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_LEN);
        for chunk in bytes.chunks_exact(TIME_ENTRY_LEN) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&chunk[..8]);
            let e = TimeEntry {
                timestamp_ms: i64::from_be_bytes(ts),
                rel_offset: u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
            };
            if out.last().is_some_and(|p| e.timestamp_ms < p.timestamp_ms) {
                break;
            }
            out.push(e);
        }
        out
    }
}

/// Binary search of a sealed segment's offset index file: the last entry at or before
/// `rel_offset` (the offset and position of an indexed batch), or `(0, 0)`. An entry
/// pointing past the segment gives `(0, 0)` too: the read scans from the start.
pub fn lookup_file(index: &File, rel_offset: u32, segment_len: u64) -> io::Result<OffsetEntry> {
    let entries = index.metadata()?.len() / OFFSET_ENTRY_LEN as u64;
    let (mut lo, mut hi) = (0u64, entries);
    let mut best = OffsetEntry::SEGMENT_START;
    let mut buf = [0u8; OFFSET_ENTRY_LEN];
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        index.read_exact_at(&mut buf, mid * OFFSET_ENTRY_LEN as u64)?;
        let rel = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let pos = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if rel <= rel_offset {
            best = OffsetEntry {
                rel_offset: rel,
                position: pos,
            };
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(if u64::from(best.position) < segment_len {
        best
    } else {
        OffsetEntry::SEGMENT_START
    })
}

/// Where a search by event time goes in a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLookup {
    /// Every record of the segment is earlier: look in the next one.
    Later,
    /// Scan from this relative offset (the last entry earlier than the target, or 0).
    From(u32),
}

/// Binary search of a sealed segment's time index file for the first record at or after
/// `timestamp_ms`. Its last entry is the segment's true maximum (see
/// [`ActiveIndex::encode_times`]). An empty file says nothing: scan from the start.
pub fn lookup_time_file(index: &File, timestamp_ms: i64) -> io::Result<TimeLookup> {
    let entries = index.metadata()?.len() / TIME_ENTRY_LEN as u64;
    let mut buf = [0u8; TIME_ENTRY_LEN];
    let mut entry = |i: u64| -> io::Result<TimeEntry> {
        index.read_exact_at(&mut buf, i * TIME_ENTRY_LEN as u64)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&buf[..8]);
        Ok(TimeEntry {
            timestamp_ms: i64::from_be_bytes(ts),
            rel_offset: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        })
    };
    if entries == 0 {
        return Ok(TimeLookup::From(0));
    }
    if entry(entries - 1)?.timestamp_ms < timestamp_ms {
        return Ok(TimeLookup::Later);
    }
    // The number of entries earlier than the target; the last of them is where to start.
    let (mut lo, mut hi) = (0u64, entries);
    let mut from = 0u32;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let e = entry(mid)?;
        if e.timestamp_ms < timestamp_ms {
            from = e.rel_offset;
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(TimeLookup::From(from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_entries_and_lookup_agree_in_memory_and_on_file() {
        let mut idx = ActiveIndex::default();
        // 10 batches of 1000 bytes, 5 records each; interval 4096 -> an entry every 5 batches.
        for b in 0..10u32 {
            idx.on_batch(b * 5, b * 1000, 1000, i64::from(b) * 10, 4096);
        }
        assert_eq!(idx.offsets.len(), 2);
        assert_eq!(idx.lookup(0), 0);
        assert_eq!(idx.lookup(24), 0);
        assert_eq!(idx.lookup(25), 5000);
        assert_eq!(idx.lookup(49), 5000);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        File::create(&path)
            .unwrap()
            .write_all(&idx.encode_offsets())
            .unwrap();
        let file = File::open(&path).unwrap();
        for rel in [0, 24, 25, 49] {
            assert_eq!(
                lookup_file(&file, rel, 10_000).unwrap(),
                idx.lookup_entry(rel),
                "{rel}"
            );
        }
        // A position beyond the segment (a damaged index) falls back to the start.
        assert_eq!(lookup_file(&file, 49, 4000).unwrap().position, 0);
        let decoded = ActiveIndex::decode_offsets(&idx.encode_offsets(), 10_000);
        assert_eq!(decoded, idx.offsets);
    }

    #[test]
    fn time_index_keeps_the_true_maximum() {
        let mut idx = ActiveIndex::default();
        idx.on_batch(0, 0, 5000, 100, 4096);
        idx.on_batch(1, 5000, 10, 50, 4096);
        let bytes = idx.encode_times(300, 1);
        let max = ActiveIndex::decode_times(&bytes)
            .last()
            .map(|t| t.timestamp_ms);
        assert_eq!(max, Some(300));
    }

    #[test]
    fn time_entries_cover_batches_between_entries() {
        let mut idx = ActiveIndex::default();
        // An entry every 5 batches (1000 bytes each, interval 4096); event times jump
        // around. Batch b holds relative offset b.
        let times = [100, 900, 200, 300, 400, 500, 150, 160, 170, 180, 1000, 10];
        for (b, t) in (0u32..).zip(times) {
            idx.on_batch(b, b * 1000, 1000, t, 4096);
        }
        // Entries at batches 0, 5, 10: the one at 5 carries 900 (seen at batch 1).
        let entries: Vec<(i64, u32)> = idx
            .times
            .iter()
            .map(|e| (e.timestamp_ms, e.rel_offset))
            .collect();
        assert_eq!(entries, vec![(100, 0), (900, 5), (1000, 10)]);
        // The first record at or after 800 is batch 1: the search must start at 0.
        assert_eq!(idx.lookup_time(800), 0);
        assert_eq!(idx.lookup_time(950), 5);
        assert_eq!(idx.lookup_time(100), 0);
        assert_eq!(idx.lookup_time(5000), 10);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        File::create(&path)
            .unwrap()
            .write_all(&idx.encode_times(1000, 11))
            .unwrap();
        let file = File::open(&path).unwrap();
        for t in [0, 100, 800, 950, 1000] {
            assert_eq!(
                lookup_time_file(&file, t).unwrap(),
                TimeLookup::From(idx.lookup_time(t)),
                "{t}"
            );
        }
        assert_eq!(lookup_time_file(&file, 1001).unwrap(), TimeLookup::Later);
        let empty = dir.path().join("1.timeindex");
        File::create(&empty).unwrap();
        assert_eq!(
            lookup_time_file(&File::open(&empty).unwrap(), 5).unwrap(),
            TimeLookup::From(0)
        );
    }
}
