//! Damage to data that was whole when written: a batch of a segment whose framing, CRC or
//! base offset is wrong below the visible end (a bit flip, a bad sector: never a torn
//! write, which recovery cuts before anything reads), and index files that do not match
//! their segment.
//!
//! What this file owns: where reading resumes after a bad batch ([`resume_after`]), the
//! cheap check of a sealed segment's index files at open ([`check_indexes`]) and their
//! rebuild by a scan of the segment ([`rebuild_indexes`]). What it does not: deciding
//! what a reader answers (the partition's read paths skip, count and log; see
//! ARCHITECTURE.md, "Corruption"), and the offline report (`offline::verify_partition`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::batch::{self, BatchHeader};
use super::datadir::write_durably;
use super::index::{ActiveIndex, OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
use super::partition::read_batch;
use super::segment::{self, INDEX_EXT, LOG_EXT, TIMEINDEX_EXT};
use super::window::{Direction, Windowed};
use crate::limits::{BATCH_BYTES_MAX, INDEX_INTERVAL_BYTES, SCAN_BUFFER_BYTES};

/// Where reading goes on after a bad batch: the position of the next good batch and its
/// base offset, or the end of the readable part of the segment and the offset after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub position: u64,
    pub offset: i64,
}

/// The part of a segment a reader may read.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The segment's base offset.
    pub base_offset: i64,
    /// Bytes readable (the segment's length, or the visible end's position in it).
    pub limit: u64,
    /// One past the last readable offset.
    pub end_offset: i64,
}

/// Whether a whole, CRC-valid batch whose offsets lie in `(after, end_offset)` starts at
/// `pos`: a batch reading may resume at.
fn good_batch_at(
    file: &File,
    pos: u64,
    after: i64,
    bounds: Bounds,
    buf: &mut Vec<u8>,
) -> Option<BatchHeader> {
    let h = read_batch(file, pos, bounds.limit, buf).ok()?;
    (h.base_offset > after && h.next_offset() <= bounds.end_offset).then_some(h)
}

/// Where reading resumes after the bad batch at `pos`, which should have held offset
/// `expected` first. In order: (1) the batch's own length, if it is sane and a good batch
/// follows it (or the segment ends right there); (2) the first position after `pos`
/// where a good batch with a later offset starts (CRC-32C makes a false find
/// negligible), the scan bounded by (3) the offset index's first entry after `expected`,
/// if a good batch with that offset is there; (4) the end of the readable part. The
/// offsets in between are lost.
pub fn resume_after(
    file: &File,
    pos: u64,
    expected: i64,
    bounds: Bounds,
    index: Option<&File>,
    buf: &mut Vec<u8>,
) -> io::Result<Resume> {
    let end = Resume {
        position: bounds.limit,
        offset: bounds.end_offset,
    };
    // (1) Its own length.
    let mut head = [0u8; batch::BATCH_HEADER_LEN];
    if pos + head.len() as u64 <= bounds.limit {
        file.read_exact_at(&mut head, pos)?;
        if let Ok(h) = BatchHeader::parse_bounded(&head, BATCH_BYTES_MAX) {
            let next = pos + h.total_len() as u64;
            if next == bounds.limit {
                return Ok(end);
            }
            if next < bounds.limit
                && let Some(g) = good_batch_at(file, next, expected, bounds, buf)
            {
                return Ok(Resume {
                    position: next,
                    offset: g.base_offset,
                });
            }
        }
    }
    // (2) The offset index's next entry bounds (3) the scan: the scan finds the first
    // good batch, so no good batch before the entry is lost.
    let mut found_by_index = None;
    if let Some(index) = index {
        let rel = u32::try_from(expected - bounds.base_offset).unwrap_or(u32::MAX);
        if let Some((entry_rel, entry_pos)) = entry_after(index, rel)? {
            let at = u64::from(entry_pos);
            let offset = bounds.base_offset + i64::from(entry_rel);
            if at > pos
                && let Some(g) = good_batch_at(file, at, expected, bounds, buf)
                && g.base_offset == offset
            {
                found_by_index = Some(Resume {
                    position: at,
                    offset,
                });
            }
        }
    }
    let scan_limit = found_by_index.map_or(bounds.limit, |r| r.position + 1);
    if let Some(r) = scan_for_good_batch(file, pos + 1, scan_limit, expected, bounds, buf)? {
        return Ok(r);
    }
    Ok(found_by_index.unwrap_or(end))
}

/// The first position in `[from, to)` where a good batch with an offset after `expected`
/// starts, read a window at a time; the magic byte is tested first, then the header, then
/// the CRC.
fn scan_for_good_batch(
    file: &File,
    mut from: u64,
    to: u64,
    expected: i64,
    bounds: Bounds,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Resume>> {
    let header_len = batch::BATCH_HEADER_LEN as u64;
    let to = to.min(bounds.limit.saturating_sub(header_len) + 1);
    let mut window = vec![0u8; SCAN_BUFFER_BYTES + batch::BATCH_HEADER_LEN];
    while from < to {
        let starts = usize::try_from(to - from)
            .unwrap_or(usize::MAX)
            .min(SCAN_BUFFER_BYTES);
        let len = starts + batch::BATCH_HEADER_LEN - 1;
        file.read_exact_at(&mut window[..len], from)?;
        for i in 0..starts {
            if window[i + 16] != 2 {
                continue;
            }
            let Ok(h) = BatchHeader::parse_bounded(&window[i..len], BATCH_BYTES_MAX) else {
                continue;
            };
            if h.base_offset <= expected || h.next_offset() > bounds.end_offset {
                continue;
            }
            let at = from + i as u64;
            if let Some(g) = good_batch_at(file, at, expected, bounds, buf) {
                return Ok(Some(Resume {
                    position: at,
                    offset: g.base_offset,
                }));
            }
        }
        from += starts as u64;
    }
    Ok(None)
}

/// The first offset-index entry with a relative offset above `rel`, by binary search.
fn entry_after(index: &File, rel: u32) -> io::Result<Option<(u32, u32)>> {
    let entries = index.metadata()?.len() / OFFSET_ENTRY_LEN as u64;
    let mut buf = [0u8; OFFSET_ENTRY_LEN];
    let mut read = |i: u64| -> io::Result<(u32, u32)> {
        index.read_exact_at(&mut buf, i * OFFSET_ENTRY_LEN as u64)?;
        Ok((
            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
            u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ))
    };
    let (mut lo, mut hi) = (0u64, entries);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if read(mid)?.0 <= rel {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo < entries {
        Ok(Some(read(lo)?))
    } else {
        Ok(None)
    }
}

/// The cheap check of a sealed segment's index files at open, against the segment
/// (`len` bytes, offsets up to `end_offset`): a few reads whatever the segment's size.
/// Offset index: whole entries; the first `(0, 0)`; the last after the first in offset
/// and position, inside the segment, at a batch header with its offset; from there the
/// batch headers walk to the segment's end with continuous offsets ending at
/// `end_offset`, the last batch starting within one index interval of the entry (no
/// entry missing at the end). Time index: whole entries, the first at offset 0, the last
/// inside the segment, not earlier than the first nor than any batch walked. Returns
/// what is wrong, naming the file; None when both pass.
///
/// Not caught: an offset entry in the middle that is wrong (a read that meets it falls
/// back to a scan from the segment's start and rebuilds), or a time index wrong but
/// plausible in the middle or cut at an entry boundary below the segment's maximum
/// (`weir verify` checks every entry).
pub fn check_indexes(
    dir: &Path,
    base: i64,
    end_offset: i64,
    len: u64,
) -> io::Result<Option<String>> {
    let index_path = segment::path(dir, base, INDEX_EXT);
    let time_path = segment::path(dir, base, TIMEINDEX_EXT);
    if len == 0 {
        return Ok(None);
    }
    let bad = |path: &Path, why: String| Ok(Some(format!("{}: {why}", path.display())));
    let Some(index) = open_optional(&index_path)? else {
        return bad(&index_path, "missing".into());
    };
    let index_len = index.metadata()?.len();
    if index_len == 0 || index_len % OFFSET_ENTRY_LEN as u64 != 0 {
        return bad(
            &index_path,
            format!("{index_len} bytes, not a whole number of entries"),
        );
    }
    let entry = |i: u64| -> io::Result<(u32, u32)> {
        let mut e = [0u8; OFFSET_ENTRY_LEN];
        index.read_exact_at(&mut e, i * OFFSET_ENTRY_LEN as u64)?;
        Ok((
            u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
            u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
        ))
    };
    let entries = index_len / OFFSET_ENTRY_LEN as u64;
    let first = entry(0)?;
    let last = entry(entries - 1)?;
    if first != (0, 0) {
        return bad(&index_path, format!("first entry {first:?}, not (0, 0)"));
    }
    let last_rel_max = end_offset - 1 - base;
    if entries > 1 && (last.0 <= first.0 || last.1 <= first.1) {
        return bad(
            &index_path,
            format!("last entry {last:?} not after the first"),
        );
    }
    if i64::from(last.0) > last_rel_max || u64::from(last.1) >= len {
        return bad(
            &index_path,
            format!(
                "last entry {last:?} outside the segment (offsets to +{last_rel_max}, {len} bytes)"
            ),
        );
    }
    // The batch headers from the last entry to the end.
    let log = File::open(segment::path(dir, base, LOG_EXT))?;
    let mut head = [0u8; batch::BATCH_HEADER_LEN];
    let mut pos = u64::from(last.1);
    let mut expect = base + i64::from(last.0);
    let mut tail_max_ts = i64::MIN;
    while pos < len {
        if pos >= u64::from(last.1) + INDEX_INTERVAL_BYTES {
            return bad(
                &index_path,
                format!("no entry for the batch at byte {pos}: entries are missing at the end"),
            );
        }
        let h = if pos + head.len() as u64 <= len {
            log.read_exact_at(&mut head, pos)?;
            BatchHeader::parse_bounded(&head, BATCH_BYTES_MAX).ok()
        } else {
            None
        };
        let Some(h) = h.filter(|h| h.base_offset == expect) else {
            // Either the entry points at no batch of that offset, or a batch header of
            // the tail is damaged: a rebuild sorts out which (and reads skip the batch).
            return bad(
                &index_path,
                format!("no batch of offset {expect} at byte {pos}"),
            );
        };
        tail_max_ts = tail_max_ts.max(h.max_timestamp);
        expect = h.next_offset();
        pos += h.total_len() as u64;
    }
    if pos != len || expect != end_offset {
        return bad(
            &index_path,
            format!(
                "the batches after the last entry end at byte {pos}, offset {expect}, not {len}, {end_offset}"
            ),
        );
    }

    let Some(times) = open_optional(&time_path)? else {
        return bad(&time_path, "missing".into());
    };
    let times_len = times.metadata()?.len();
    if times_len == 0 || times_len % TIME_ENTRY_LEN as u64 != 0 {
        return bad(
            &time_path,
            format!("{times_len} bytes, not a whole number of entries"),
        );
    }
    let time_entry = |i: u64| -> io::Result<(i64, u32)> {
        let mut e = [0u8; TIME_ENTRY_LEN];
        times.read_exact_at(&mut e, i * TIME_ENTRY_LEN as u64)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&e[..8]);
        Ok((
            i64::from_be_bytes(ts),
            u32::from_be_bytes([e[8], e[9], e[10], e[11]]),
        ))
    };
    let (first_ts, first_rel) = time_entry(0)?;
    let (last_ts, last_rel) = time_entry(times_len / TIME_ENTRY_LEN as u64 - 1)?;
    if first_rel != 0 {
        return bad(
            &time_path,
            format!("first entry at offset +{first_rel}, not +0"),
        );
    }
    if i64::from(last_rel) > last_rel_max || last_ts < first_ts || last_ts < tail_max_ts {
        return bad(
            &time_path,
            format!("last entry ({last_ts}, +{last_rel}) is not the segment's maximum"),
        );
    }
    Ok(None)
}

fn open_optional(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What [`rebuild_indexes`] found in the segment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Good batches indexed.
    pub batches: u64,
    /// Bad batches stepped over (not indexed).
    pub corrupt_batches: u64,
}

/// Rebuilds a sealed segment's `.index` and `.timeindex` by reading every batch (CRC
/// checked), as appends build them, stepping over bad batches as reads do; each file is
/// written whole to a temporary name, fsynced and renamed, then the directory fsynced.
pub fn rebuild_indexes(dir: &Path, base: i64, end_offset: i64, len: u64) -> io::Result<Rebuilt> {
    let log = File::open(segment::path(dir, base, LOG_EXT))?;
    let bounds = Bounds {
        base_offset: base,
        limit: len,
        end_offset,
    };
    let mut index = ActiveIndex::default();
    let mut max_ts = i64::MIN;
    let mut out = Rebuilt::default();
    let mut buf = Vec::new();
    let (mut pos, mut expect) = (0u64, base);
    let batches = Windowed::new(&log, len, Direction::Forward);
    while pos < len {
        match read_batch(&batches, pos, len, &mut buf) {
            Ok(h) if h.base_offset == expect => {
                let rel = u32::try_from(h.base_offset - base).unwrap_or(u32::MAX);
                let pos32 = u32::try_from(pos).unwrap_or(u32::MAX);
                let total = h.total_len() as u64;
                index.on_batch(rel, pos32, total, h.max_timestamp, INDEX_INTERVAL_BYTES);
                max_ts = max_ts.max(h.max_timestamp);
                out.batches += 1;
                expect = h.next_offset();
                pos += total;
            }
            _ => {
                // No index file: the one on disk is what is being replaced.
                let r = resume_after(&log, pos, expect, bounds, None, &mut buf)?;
                out.corrupt_batches += 1;
                pos = r.position;
                expect = r.offset;
            }
        }
    }
    let last_rel = u32::try_from((end_offset - 1 - base).max(0)).unwrap_or(u32::MAX);
    let name = |ext| segment::file_name(base, ext);
    write_durably(dir, &name(INDEX_EXT), &index.encode_offsets())?;
    write_durably(
        dir,
        &name(TIMEINDEX_EXT),
        &index.encode_times(max_ts, last_rel),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::log::batches::batches;
    use crate::log::{HEADER_APPEND, Log};

    /// One partition, 16 KiB segments: 100 batches of 2 records of 150 bytes (about 400
    /// bytes a batch) fill two sealed segments, each indexed every 4 KiB. Batch `b` holds offsets `2b, 2b+1`
    /// with event time `1000 * b`. Returns the data dir and the partition's folder.
    fn log_with_sealed_segments() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(&config(dir.path()), clock()).unwrap();
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        for b in 0..100i64 {
            let mut builder = batch::BatchBuilder::new();
            for _ in 0..2 {
                builder.push(
                    None,
                    &[b'x'; 150],
                    1000 * b,
                    &[(HEADER_APPEND, &5i64.to_be_bytes())],
                );
            }
            p.append(&mut builder.finish(), 5).unwrap();
        }
        log.close().unwrap();
        let part = dir.path().join("topics/t/0");
        (dir, part)
    }

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(1_000_000))
    }

    fn config(dir: &Path) -> Config {
        let text = format!(
            "[storage]\ndata_dir = {:?}\n[[topic]]\nname = \"t\"\npartitions = 1\nfsync = \"never\"\nsegment_size = \"16KiB\"\ndedup_window = \"0s\"\n",
            dir.display().to_string()
        );
        Config::parse(&text, Path::new("test.toml")).unwrap()
    }

    /// Batch positions of the first segment: (position, base offset).
    fn positions(part: &Path) -> Vec<(u64, i64)> {
        let log = File::open(segment::path(part, 0, LOG_EXT)).unwrap();
        let len = log.metadata().unwrap().len();
        let (mut pos, mut out, mut buf) = (0, Vec::new(), Vec::new());
        while pos < len {
            let h = read_batch(&log, pos, len, &mut buf).unwrap();
            out.push((pos, h.base_offset));
            pos += h.total_len() as u64;
        }
        out
    }

    fn flip(path: &Path, at: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x55], at).unwrap();
    }

    /// Every offset each read path serves from 0, after reopening the log.
    fn served(dir: &Path) -> (Vec<i64>, Vec<i64>, Log) {
        let (log, _) = Log::open(&config(dir), clock()).unwrap();
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        let end = p.visible().end_offset;
        let mut by_read = Vec::new();
        let mut next = 0;
        while next < end {
            next = p
                .read(next, 3, 1 << 20, &mut |off, _, _| by_read.push(off))
                .unwrap();
        }
        let (mut by_batches, mut buf, mut next) = (Vec::new(), Vec::new(), 0);
        while next < end {
            let after = p.read_batches(next, 700, &mut buf).unwrap();
            assert!(after > next, "progress from {next}");
            for b in batches(&buf) {
                by_batches.extend(b.records_from(next).map(|r| r.offset));
            }
            next = after;
        }
        (by_read, by_batches, log)
    }

    #[test]
    fn a_bad_batch_is_skipped_by_every_read_path_wherever_the_damage_is() {
        // Batch 3 of the first segment (offsets 6, 7), damaged in its records (the CRC),
        // its length field (too long: the index or the scan finds the next batch), its
        // base offset (outside the CRC) and its magic byte.
        for (what, delta) in [
            ("record", 100u64),
            ("length", 9),
            ("base offset", 7),
            ("magic", 16),
        ] {
            let (dir, part) = log_with_sealed_segments();
            let (pos, base) = positions(&part)[3];
            assert_eq!(base, 6);
            flip(&segment::path(&part, 0, LOG_EXT), pos + delta);
            let (by_read, by_batches, log) = served(dir.path());
            let want: Vec<i64> = (0..200).filter(|o| !(6..8).contains(o)).collect();
            assert_eq!(by_read, want, "{what}: read");
            assert_eq!(by_batches, want, "{what}: read_batches");
            let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
            // By time: batch 3's time finds the next good record.
            assert_eq!(p.offset_for_time(3000).unwrap(), 8, "{what}: by time");
            assert_eq!(p.offset_for_time(2000).unwrap(), 4, "{what}: by time");
            // Counted once, however often it is met.
            assert_eq!(p.corrupt_known(), 1, "{what}");
        }
    }

    #[test]
    fn resume_finds_the_next_good_batch_when_the_length_lies() {
        let (_dir, part) = log_with_sealed_segments();
        let at = positions(&part);
        let path = segment::path(&part, 0, LOG_EXT);
        let log = File::open(&path).unwrap();
        let len = log.metadata().unwrap().len();
        let bounds = Bounds {
            base_offset: 0,
            limit: len,
            end_offset: at.last().unwrap().1 + 2,
        };
        let mut buf = Vec::new();
        let index = File::open(segment::path(&part, 0, INDEX_EXT)).unwrap();
        // Its own length first.
        let r = resume_after(&log, at[3].0, 6, bounds, Some(&index), &mut buf).unwrap();
        assert_eq!((r.position, r.offset), at[4]);
        flip(&path, at[3].0 + 9);
        // The length lies: the scan finds batch 4, with or without the index.
        for index in [None, Some(&index)] {
            let r = resume_after(&log, at[3].0, 6, bounds, index, &mut buf).unwrap();
            assert_eq!((r.position, r.offset), at[4]);
        }
        // Nothing good after it: the end.
        let last = *at.last().unwrap();
        let r = resume_after(&log, last.0, last.1, bounds, None, &mut buf).unwrap();
        assert_eq!((r.position, r.offset), (len, bounds.end_offset));
    }

    #[test]
    fn the_open_check_catches_garbage_truncation_and_zeros_and_the_rebuild_restores_the_files() {
        let (_dir, part) = log_with_sealed_segments();
        let (index, times) = (
            segment::path(&part, 0, INDEX_EXT),
            segment::path(&part, 0, TIMEINDEX_EXT),
        );
        let (good_index, good_times) = (fs::read(&index).unwrap(), fs::read(&times).unwrap());
        let len = fs::metadata(segment::path(&part, 0, LOG_EXT))
            .unwrap()
            .len();
        let end = positions(&part).last().unwrap().1 + 2;
        assert_eq!(check_indexes(&part, 0, end, len).unwrap(), None);
        assert!(good_index.len() >= 3 * OFFSET_ENTRY_LEN, "several entries");
        let garbage: Vec<u8> = (0..good_index.len().max(good_times.len()))
            .map(|i| u8::try_from(i * 37 % 251).unwrap())
            .collect();
        let cases: Vec<(&Path, Vec<u8>)> = vec![
            (&index, garbage[..good_index.len()].to_vec()),
            (&index, good_index[..good_index.len() - 3].to_vec()),
            (&index, good_index[..good_index.len() - 8].to_vec()),
            (&index, vec![0; good_index.len()]),
            (&index, Vec::new()),
            (&times, garbage[..good_times.len()].to_vec()),
            (&times, good_times[..good_times.len() - 5].to_vec()),
            (&times, vec![0; good_times.len()]),
            (&times, Vec::new()),
        ];
        for (path, bytes) in cases {
            fs::write(path, &bytes).unwrap();
            let found = check_indexes(&part, 0, end, len).unwrap();
            assert!(found.is_some(), "{} as {bytes:?}", path.display());
            let rebuilt = rebuild_indexes(&part, 0, end, len).unwrap();
            assert_eq!(rebuilt.corrupt_batches, 0);
            assert_eq!(fs::read(&index).unwrap(), good_index);
            assert_eq!(fs::read(&times).unwrap(), good_times);
        }
        fs::remove_file(&index).unwrap();
        assert!(check_indexes(&part, 0, end, len).unwrap().is_some());
    }

    #[test]
    fn an_index_entry_that_lies_is_caught_by_the_read_and_the_index_rebuilt() {
        let (dir, part) = log_with_sealed_segments();
        let index = segment::path(&part, 0, INDEX_EXT);
        let good = fs::read(&index).unwrap();
        // The second entry claims its batch holds an offset 2 later (the open check
        // reads only the first and last entries).
        let mut bad = good.clone();
        let rel = u32::from_be_bytes(bad[8..12].try_into().unwrap());
        bad[8..12].copy_from_slice(&(rel + 2).to_be_bytes());
        fs::write(&index, &bad).unwrap();
        let (log, _) = Log::open(&config(dir.path()), clock()).unwrap();
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        let from = i64::from(rel + 2);
        let mut got = Vec::new();
        p.read(from, 4, 1 << 20, &mut |off, _, _| got.push(off))
            .unwrap();
        assert_eq!(got, (from..from + 4).collect::<Vec<_>>());
        assert_eq!(fs::read(&index).unwrap(), good, "rebuilt");
        let mut buf = Vec::new();
        p.read_batches(from, 1 << 20, &mut buf).unwrap();
        let first = batches(&buf).next().unwrap();
        assert_eq!(first.records_from(from).next().unwrap().offset, from);
        assert_eq!(p.corrupt_known(), 0, "no batch is bad");
    }
}
