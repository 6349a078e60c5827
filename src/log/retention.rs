//! Retention: deleting a partition's oldest sealed segments by age and by size, whole
//! segments at a time, never the active one. Owns the retention thread and the rule that
//! guards ages against wall-clock jumps; not the deletion itself (that is
//! `Partition::remove_segments_through`, under the partition lock).
//!
//! A sealed segment goes when, walking from the oldest, either
//! - the partition holds more than `retention_size` bytes (active segment included), or
//! - its newest append is older than `retention_age`;
//!
//! the walk stops at the first segment that meets neither, so the log stays a contiguous
//! suffix. Ages are append times (the `weir.append` header), never event times.
//!
//! Clock jumps. A wall clock set forward by a day must not make a day of data look old.
//! - A segment that took an append during this run is aged by the monotonic clock:
//!   `monotonic now − monotonic reading at its last append`.
//! - Older segments are aged by their stored append time against an effective now,
//!   `min(wall now, wall at start + monotonic time since start + tolerance)`: a forward
//!   jump after start is ignored, a backward one only keeps data longer.
//!
//! The wall clock at start is trusted unless the data dir's clock anchor (written at
//! every start: boot id, trusted wall time, monotonic reading) is of this boot: then no
//! further than the anchor's time plus the monotonic time since, so a forward jump made
//! while weir was stopped is not taken for time passing either. Across a reboot a jump
//! cannot be told from time passing and is not guarded.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use super::batch::{self, BatchHeader};
use super::batch_append_ms;
use super::groups::GroupOffsets;
use super::index::OFFSET_ENTRY_LEN;
use super::partition::{Partition, Removed, read_batch};
use super::segment::{self, INDEX_EXT, LOG_EXT, SealedSegment};
use super::topic::Topic;
use crate::clock::SharedClock;
use crate::config::TopicConfig;
use crate::limits::{CLOCK_JUMP_TOLERANCE_MS, RETENTION_INTERVAL};
use crate::metrics as m;

/// A topic's retention settings in milliseconds and bytes; `None` disables each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub age_ms: Option<i64>,
    pub bytes_max: Option<u64>,
}

impl Policy {
    pub fn of(config: &TopicConfig) -> Policy {
        Policy {
            age_ms: config.retention_age.map(crate::config::units::millis),
            bytes_max: config.retention_size,
        }
    }

    pub fn is_off(self) -> bool {
        self.age_ms.is_none() && self.bytes_max.is_none()
    }
}

/// Time as retention sees it: see the module doc for the rule.
#[derive(Clone)]
pub struct RetentionClock {
    clock: SharedClock,
    start_wall_ms: i64,
    start_mono_ms: i64,
}

impl RetentionClock {
    /// Takes the start readings now, trusting the wall clock.
    pub fn new(clock: SharedClock) -> RetentionClock {
        let wall_ms = clock.now_ms();
        RetentionClock::starting_at(clock, wall_ms)
    }

    /// Starts at the trusted wall-clock time `start_wall_ms` (`clock::trusted_start_ms`)
    /// and the monotonic reading now.
    pub fn starting_at(clock: SharedClock, start_wall_ms: i64) -> RetentionClock {
        RetentionClock {
            start_wall_ms,
            start_mono_ms: clock.monotonic_ms(),
            clock,
        }
    }

    /// `min(wall now, wall at start + monotonic elapsed + tolerance)`.
    pub fn effective_now_ms(&self) -> i64 {
        let elapsed = self.clock.monotonic_ms().saturating_sub(self.start_mono_ms);
        let bound = self
            .start_wall_ms
            .saturating_add(elapsed)
            .saturating_add(CLOCK_JUMP_TOLERANCE_MS);
        self.clock.now_ms().min(bound)
    }

    /// A segment's age, if known.
    pub fn age_ms(&self, seg: &SealedSegment) -> Option<i64> {
        if let Some(mono) = seg.last_append_mono_ms {
            return Some(self.clock.monotonic_ms().saturating_sub(mono));
        }
        seg.last_append_ms
            .map(|ms| self.effective_now_ms().saturating_sub(ms))
    }
}

/// The end offset through which segments go (oldest first), if any go.
/// `age_of` gives a segment's age when known; an unknown age is never expired.
pub fn delete_through(
    segments: &[SealedSegment],
    bytes_total: u64,
    policy: Policy,
    mut age_of: impl FnMut(&SealedSegment) -> Option<i64>,
) -> Option<i64> {
    let mut bytes = bytes_total;
    let mut through = None;
    for seg in segments {
        let too_big = policy.bytes_max.is_some_and(|max| bytes > max);
        let too_old = !too_big
            && policy
                .age_ms
                .is_some_and(|max| age_of(seg).is_some_and(|age| age > max));
        if !(too_big || too_old) {
            break;
        }
        bytes -= seg.len.min(bytes);
        through = Some(seg.end_offset);
    }
    through
}

/// The append time of a sealed segment's newest batch, read from its last batch: the
/// offset index's last entry points at most one index interval before it. Falls back to
/// the file's modification time when the batch has no `weir.append` header.
pub fn newest_append_ms(dir: &Path, seg: &SealedSegment) -> io::Result<Option<i64>> {
    let log = File::open(segment::path(dir, seg.base_offset, LOG_EXT))?;
    let mut pos = 0u64;
    if let Ok(index) = File::open(segment::path(dir, seg.base_offset, INDEX_EXT)) {
        let entries = index.metadata()?.len() / OFFSET_ENTRY_LEN as u64;
        if entries > 0 {
            let mut entry = [0u8; OFFSET_ENTRY_LEN];
            index.read_exact_at(&mut entry, (entries - 1) * OFFSET_ENTRY_LEN as u64)?;
            let at = u64::from(u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]));
            if at < seg.len {
                pos = at;
            }
        }
    }
    // Walk batch headers to the last batch.
    let mut head = [0u8; batch::BATCH_HEADER_LEN];
    let mut last = None;
    while pos + head.len() as u64 <= seg.len {
        log.read_exact_at(&mut head, pos)?;
        let Ok(h) = BatchHeader::parse(&head) else {
            break;
        };
        last = Some(pos);
        pos += h.total_len() as u64;
    }
    let mut buf = Vec::new();
    let from_batch = last
        .and_then(|at| read_batch(&log, at, seg.len, &mut buf).ok())
        .and_then(|_| batch_append_ms(&buf));
    if from_batch.is_some() {
        return Ok(from_batch);
    }
    let modified = log.metadata()?.modified()?;
    Ok(modified
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok()))
}

/// What one pass removed, summed over partitions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub segments: u64,
    pub bytes: u64,
}

/// Everything a retention pass needs; shared with the retention thread.
pub struct Retention {
    /// Grows when a reload adds topics.
    topics: parking_lot::RwLock<Vec<Arc<Topic>>>,
    groups: Arc<GroupOffsets>,
    clock: RetentionClock,
}

impl Retention {
    pub(crate) fn new(
        topics: Vec<Arc<Topic>>,
        groups: Arc<GroupOffsets>,
        clock: RetentionClock,
    ) -> Retention {
        // Exported at 0 from the start, so a dashboard shows "nothing deleted yet".
        for topic in &topics {
            let label = [("topic", topic.name.to_string())];
            metrics::counter!(m::RETENTION_DELETED_SEGMENTS, &label).increment(0);
            metrics::counter!(m::RETENTION_DELETED_BYTES, &label).increment(0);
            metrics::counter!(m::RETENTION_ERRORS, &label).increment(0);
        }
        Retention {
            topics: parking_lot::RwLock::new(topics),
            groups,
            clock,
        }
    }

    /// Adds a topic opened while running.
    pub(crate) fn add(&self, topic: Arc<Topic>) {
        self.topics.write().push(topic);
    }

    /// Applies every topic's policy once. Errors are logged per partition; a partition
    /// that failed is tried again on the next pass.
    pub fn run_once(&self) -> PassReport {
        let mut report = PassReport::default();
        let topics = self.topics.read().clone();
        for topic in &topics {
            let policy = Policy::of(&topic.config);
            if policy.is_off() {
                continue;
            }
            for p in &topic.partitions {
                match self.apply(p, policy) {
                    Ok(removed) => {
                        let bytes: u64 = removed.segments.iter().map(|s| s.len).sum();
                        report.segments += removed.segments.len() as u64;
                        report.bytes += bytes;
                        self.account(topic, p, &removed, bytes);
                    }
                    Err(e) => {
                        let label = [("topic", topic.name.to_string())];
                        metrics::counter!(m::RETENTION_ERRORS, &label).increment(1);
                        tracing::error!(topic = %topic.name, partition = p.id, error = %e,
                            "retention could not delete segments; trying again on the next pass");
                    }
                }
            }
        }
        report
    }

    fn apply(&self, p: &Partition, policy: Policy) -> io::Result<Removed> {
        let (segments, bytes) = p.sealed_segments();
        let through = delete_through(&segments, bytes, policy, |seg| {
            if seg.last_append_ms.is_none() && seg.last_append_mono_ms.is_none() {
                // Sealed before this start: read its newest append once, lazily.
                match newest_append_ms(p.dir(), seg) {
                    Ok(Some(ms)) => {
                        p.set_last_append_ms(seg.base_offset, ms);
                        let known = SealedSegment {
                            last_append_ms: Some(ms),
                            ..seg.clone()
                        };
                        return self.clock.age_ms(&known);
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, partition = p.id, segment = seg.base_offset,
                            error = %e, "cannot read the segment's append time; it is kept");
                        return None;
                    }
                }
            }
            self.clock.age_ms(seg)
        });
        match through {
            Some(end) => p.remove_segments_through(end),
            None => Ok(Removed::default()),
        }
    }

    fn account(&self, topic: &Topic, p: &Partition, removed: &Removed, bytes: u64) {
        if removed.segments.is_empty() {
            return;
        }
        let label = [("topic", topic.name.to_string())];
        metrics::counter!(m::RETENTION_DELETED_SEGMENTS, &label)
            .increment(removed.segments.len() as u64);
        metrics::counter!(m::RETENTION_DELETED_BYTES, &label).increment(bytes);
        tracing::info!(topic = %topic.name, partition = p.id, segments = removed.segments.len(),
            bytes, start_offset = removed.start_after, "retention deleted segments");
        for (group, committed) in self.groups.committed_on(&topic.name, p.id) {
            let lost = removed.start_after - committed.max(removed.start_before);
            if lost <= 0 {
                continue;
            }
            let labels = [("topic", topic.name.to_string()), ("group", group.clone())];
            metrics::counter!(m::RETENTION_UNCONSUMED, &labels)
                .increment(u64::try_from(lost).unwrap_or(0));
            tracing::warn!(topic = %topic.name, partition = p.id, group = %group, committed,
                records = lost, start_offset = removed.start_after,
                "retention deleted records the consumer group had not consumed");
        }
    }
}

/// Wakes the retention thread early (a roll) or stops it.
#[derive(Debug, Default)]
pub struct Wakeup {
    state: Mutex<WakeState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct WakeState {
    pending: bool,
    stop: bool,
}

impl Wakeup {
    /// Asks for a pass soon. Cheap: called under the partition lock on a roll.
    pub fn notify(&self) {
        self.state.lock().pending = true;
        self.cv.notify_one();
    }

    fn stop(&self) {
        self.state.lock().stop = true;
        self.cv.notify_one();
    }

    /// Waits for a notification or `timeout`; false once stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let mut s = self.state.lock();
        if !s.pending && !s.stop {
            self.cv.wait_for(&mut s, timeout);
        }
        s.pending = false;
        !s.stop
    }
}

/// The retention thread: a pass every [`RETENTION_INTERVAL`] and after every roll.
pub struct RetentionThread {
    wakeup: Arc<Wakeup>,
    handle: JoinHandle<()>,
}

impl RetentionThread {
    pub fn start(retention: Arc<Retention>, wakeup: Arc<Wakeup>) -> io::Result<RetentionThread> {
        let w = Arc::clone(&wakeup);
        let handle = std::thread::Builder::new()
            .name("weir-retention".into())
            .spawn(move || {
                while w.wait(RETENTION_INTERVAL) {
                    retention.run_once();
                }
            })?;
        Ok(RetentionThread { wakeup, handle })
    }

    /// Stops after the pass under way, if any.
    pub fn stop(self) {
        self.wakeup.stop();
        let _ = self.handle.join();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::config::Config;
    use crate::log::{HEADER_APPEND, Log};

    fn seg(base: i64, end: i64, len: u64, append: Option<i64>) -> SealedSegment {
        SealedSegment {
            base_offset: base,
            end_offset: end,
            len,
            last_append_ms: append,
            last_append_mono_ms: None,
        }
    }

    #[test]
    fn size_and_age_delete_a_prefix_and_stop_at_the_first_kept_segment() {
        let segs = [
            seg(0, 10, 100, Some(0)),
            seg(10, 20, 100, Some(950)),
            seg(20, 30, 100, Some(0)),
        ];
        let by_size = |max| Policy {
            age_ms: None,
            bytes_max: Some(max),
        };
        // 300 sealed + 50 active.
        assert_eq!(delete_through(&segs, 350, by_size(350), |_| None), None);
        assert_eq!(delete_through(&segs, 350, by_size(349), |_| None), Some(10));
        assert_eq!(delete_through(&segs, 350, by_size(150), |_| None), Some(20));
        assert_eq!(delete_through(&segs, 350, by_size(1), |_| None), Some(30));
        let by_age = Policy {
            age_ms: Some(100),
            bytes_max: None,
        };
        let age = |s: &SealedSegment| s.last_append_ms.map(|a| 1000 - a);
        // The second segment is young: the third, though old, stays behind it.
        assert_eq!(delete_through(&segs, 350, by_age, age), Some(10));
        // An unknown age is never expired.
        assert_eq!(delete_through(&segs, 350, by_age, |_| None), None);
    }

    #[test]
    fn a_forward_wall_clock_jump_does_not_age_data() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let rc = RetentionClock::new(clock.clone());
        let before_start = seg(0, 1, 1, Some(999_000));
        assert_eq!(rc.age_ms(&before_start), Some(1000));
        clock.jump_wall(86_400_000);
        assert_eq!(
            rc.age_ms(&before_start),
            Some(1000 + CLOCK_JUMP_TOLERANCE_MS)
        );
        clock.advance(5000);
        assert_eq!(
            rc.age_ms(&before_start),
            Some(6000 + CLOCK_JUMP_TOLERANCE_MS)
        );
        // Appended in this run: monotonic age, whatever the wall clock says.
        let in_run = SealedSegment {
            last_append_mono_ms: Some(clock.monotonic_ms()),
            last_append_ms: Some(clock.now_ms()),
            ..before_start.clone()
        };
        clock.jump_wall(-86_400_000 * 2);
        clock.advance(700);
        assert_eq!(rc.age_ms(&in_run), Some(700));
        // A backward jump only makes older data look younger.
        assert!(rc.age_ms(&before_start).unwrap() < 0);
    }

    pub(crate) fn config(dir: &Path, extra: &str) -> Config {
        let text = format!(
            "[storage]\ndata_dir = {:?}\n[[topic]]\nname = \"t\"\npartitions = 1\nfsync = \"never\"\nsegment_size = \"1KiB\"\ndedup_window = \"0s\"\n{extra}\n",
            dir.display().to_string()
        );
        Config::parse(&text, Path::new("test.toml")).unwrap()
    }

    /// Appends one batch of `records` records of `bytes` bytes each.
    pub(crate) fn append(log: &Log, records: usize, bytes: usize) -> i64 {
        let now = log.clock().now_ms();
        let mut b = batch::BatchBuilder::new();
        for _ in 0..records {
            b.push(
                None,
                &vec![b'x'; bytes],
                now,
                &[(HEADER_APPEND, &now.to_be_bytes())],
            );
        }
        let mut batch = b.finish();
        let p = &log.topic("t").unwrap().partitions[0];
        p.append(&mut batch, now).unwrap().last_offset
    }

    /// Waits for the fsync round of a roll (`never` still syncs rolls, on a worker).
    fn settle(log: &Log) {
        let p = &log.topic("t").unwrap().partitions[0];
        for _ in 0..500 {
            if !p.is_dirty() && p.sealed_segments().0.len() == p.inner_sealed_len() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn size_retention_moves_the_start_and_deletes_files() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let cfg = config(
            dir.path(),
            "retention_age = \"none\"\nretention_size = \"2KiB\"",
        );
        let (log, _) = Log::open(&cfg, clock.clone()).unwrap();
        for _ in 0..20 {
            append(&log, 1, 400);
        }
        settle(&log);
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        let before = p.bytes();
        assert!(before > 4096);
        let report = log.run_retention();
        assert!(report.segments > 0);
        assert!(p.bytes() <= 2048, "{} bytes left", p.bytes());
        let start = p.start_offset();
        assert!(start > 0);
        let logs = std::fs::read_dir(p.dir())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                segment::parse_log_name(&name).is_some_and(|b| b < start)
                    || segment::parse_index_name(&name).is_some_and(|b| b < start)
            })
            .count();
        assert_eq!(logs, 0, "no file of a deleted segment is left");
        // Below the start: out of range; from the start: readable.
        let err = p.read(0, 10, 1 << 20, &mut |_, _, _| {}).unwrap_err();
        assert!(matches!(
            err,
            crate::log::partition::ReadError::OutOfRange { .. }
        ));
        assert_eq!(
            p.read(start, 1, 1 << 20, &mut |_, _, _| {}).unwrap(),
            start + 1
        );
        drop(log);
        let (log, _) = Log::open(&cfg, clock).unwrap();
        assert_eq!(log.topic("t").unwrap().partitions[0].start_offset(), start);
    }

    #[test]
    fn age_retention_after_a_restart_reads_append_times_from_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let cfg = config(dir.path(), "retention_age = \"1h\"");
        let (log, _) = Log::open(&cfg, clock.clone()).unwrap();
        for _ in 0..6 {
            append(&log, 2, 300);
        }
        clock.advance(30 * 60 * 1000);
        let young = append(&log, 1, 900);
        append(&log, 1, 900);
        settle(&log);
        log.close().unwrap();
        drop(log);
        let (log, _) = Log::open(&cfg, clock.clone()).unwrap();
        assert_eq!(
            log.run_retention(),
            PassReport::default(),
            "nothing is an hour old"
        );
        clock.advance(40 * 60 * 1000);
        let report = log.run_retention();
        assert!(report.segments > 0);
        let p = &log.topic("t").unwrap().partitions[0];
        assert!(p.start_offset() <= young, "the younger segment stays");
        assert!(p.start_offset() >= 12, "the old ones go");
        // A day's forward jump of the wall clock deletes nothing more.
        clock.jump_wall(86_400_000);
        assert_eq!(log.run_retention(), PassReport::default());
    }

    #[test]
    fn recovery_removes_index_files_of_a_half_deleted_segment() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let cfg = config(dir.path(), "");
        let (log, _) = Log::open(&cfg, clock.clone()).unwrap();
        for _ in 0..6 {
            append(&log, 1, 400);
        }
        settle(&log);
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        let first = p.sealed_segments().0[0].clone();
        drop(log);
        // A crash after the .log of the oldest segment went, before its indexes did.
        std::fs::remove_file(segment::path(p.dir(), first.base_offset, LOG_EXT)).unwrap();
        let (log, _) = Log::open(&cfg, clock).unwrap();
        let p2 = &log.topic("t").unwrap().partitions[0];
        assert_eq!(p2.start_offset(), first.end_offset);
        assert!(!segment::path(p.dir(), first.base_offset, INDEX_EXT).exists());
        assert_eq!(
            p2.read(first.end_offset, 1, 1 << 20, &mut |_, _, _| {})
                .unwrap(),
            first.end_offset + 1
        );
    }

    /// A log whose one partition holds six segments of ~400 bytes, retention 1 KiB, and
    /// that partition.
    #[cfg(feature = "fail")]
    fn six_segments(dir: &std::path::Path) -> (Arc<Log>, Arc<crate::log::partition::Partition>) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let cfg = config(dir, "retention_size = \"1KiB\"");
        let (log, _) = Log::open(&cfg, clock).unwrap();
        for _ in 0..6 {
            append(&log, 1, 400);
        }
        settle(&log);
        let log = Arc::new(log);
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        (log, p)
    }

    /// Reads `p` from offset 0 with retention running just as the read opens a sealed
    /// segment: the answer is out of range at the new start, never an IO error.
    #[cfg(feature = "fail")]
    fn read_racing_retention(log: &Arc<Log>, p: &crate::log::partition::Partition) {
        let l2 = Arc::clone(log);
        fail::cfg_callback("log::read_open_sealed", move || {
            l2.run_retention();
        })
        .unwrap();
        let got = p.read(0, 100, 1 << 20, &mut |_, _, _| {});
        fail::remove("log::read_open_sealed");
        match got {
            Err(crate::log::partition::ReadError::OutOfRange { start, .. }) => {
                assert!(start > 0);
                assert_eq!(start, p.start_offset());
            }
            other => panic!("expected out of range, got {other:?}"),
        }
    }

    /// A read that looked up a sealed segment which retention deletes before the read
    /// opens it answers out of range, never an IO error.
    #[cfg(feature = "fail")]
    #[test]
    fn a_read_racing_retention_answers_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let (log, p) = six_segments(dir.path());
        read_racing_retention(&log, &p);
    }

    /// The same race when the segment's files are already open from an earlier read
    /// (kept open for the next one): still out of range, and retention closes them.
    #[cfg(feature = "fail")]
    #[test]
    fn a_read_from_kept_open_files_racing_retention_answers_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let (log, p) = six_segments(dir.path());
        assert_eq!(p.read(0, 1, 1 << 20, &mut |_, _, _| {}).unwrap(), 1);
        assert_eq!(p.inner_read_files_len(), 1);
        read_racing_retention(&log, &p);
        assert_eq!(
            p.inner_read_files_len(),
            0,
            "removed segments' files are closed"
        );
    }
}
