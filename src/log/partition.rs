//! One partition: its segments, the append path, fsync rounds, the visible end and reads.
//!
//! Write path (ARCHITECTURE.md numbers these steps):
//! 1. the caller encodes and CRCs a batch outside any lock (the CRC excludes the base offset);
//! 2. under the partition lock: roll if due, stamp the base offset, pwrite(2) at the end of
//!    the active segment, extend the in-memory indexes;
//! 3. `fsync = "always"`: the partition is queued for an fsync worker, the caller awaits the
//!    visible end passing its last offset; otherwise the visible end moves at once;
//! 4. an fsync worker snapshots the written end, fdatasyncs sealed-but-unsynced segments,
//!    their indexes and the directory, then the active segment, and publishes the snapshot
//!    as durable. Requests that arrive during a round join the next one (group commit).
//!
//! The lock is a `parking_lot` mutex held only for the pwrite and bookkeeping, never across
//! an `.await` and never around an fsync.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::batch::{self, BatchHeader};
use super::corrupt::{self, Resume};
use super::datadir::{sync_dir, write_durably};
use super::index;
use super::retention::Wakeup;
use super::segment::{self, ActiveSegment, INDEX_EXT, LOG_EXT, SealedSegment, TIMEINDEX_EXT};
use super::window::{Direction, Windowed};
use crate::clock::SharedClock;
use crate::config::FsyncMode;
use crate::failpoint;
use crate::limits::{
    BATCH_BYTES_MAX, CORRUPT_BATCHES_TRACKED_MAX, CORRUPT_LOG_INTERVAL, INDEX_INTERVAL_BYTES,
};
use crate::metrics as m;

/// Positions a segment may not exceed: index entries store positions as u32.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;

/// File naming the first segment that may need a recovery scan after a crash.
pub const RECOVERY_POINT_FILE: &str = "recovery_point";

/// What readers may see: no reader passes it. Under `always` it is the durable end,
/// otherwise the written end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    /// One past the last visible offset.
    pub end_offset: i64,
    /// The segment holding the visible end and the byte position of the end in it.
    pub segment_base: i64,
    pub position: u64,
    /// Set once when an fsync fails; never cleared while the process runs.
    pub fenced: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("partition {0} is fenced after an fsync failure; restart weir to recover it")]
    Fenced(u32),
    #[error("partition {0} is closed: weir is shutting down")]
    Closed(u32),
    #[error("write failed: {0}")]
    Io(#[source] io::Error),
    #[error("batch is not valid: {0}")]
    BadBatch(#[from] batch::DecodeError),
}

/// Where one appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    /// Inclusive.
    pub last_offset: i64,
}

/// Fixed settings of a partition, from its topic's config.
#[derive(Debug, Clone)]
pub struct PartitionSettings {
    pub fsync: FsyncMode,
    pub segment_bytes_max: u64,
    pub segment_age_ms: i64,
}

pub struct Partition {
    pub topic: Arc<str>,
    pub id: u32,
    dir: PathBuf,
    settings: PartitionSettings,
    inner: Mutex<Inner>,
    /// Published after each append (not `always`) or fsync round (`always`).
    visible: watch::Sender<Visible>,
    sync: Mutex<SyncState>,
    /// Held for a whole fsync round: `close` runs its final round itself, beside a worker's
    /// round still running; two rounds with sealed segments at once wrote the recovery
    /// point through the same temporary file, and the second rename failed and fenced the
    /// partition at a clean stop.
    round: Mutex<()>,
    /// The fsync workers' queue; each partition is in it at most once (see `SyncState`).
    sync_queue: SyncSender<Arc<Partition>>,
    /// Monotonic readings of appends, for retention's ages.
    clock: SharedClock,
    /// Woken once a roll's sealed segment is durable: retention may delete it.
    rolled: Arc<Wakeup>,
    metrics: PartitionMetrics,
    /// Bad batches reads met (see [`Partition::bad_batch`]).
    corrupt: Mutex<CorruptState>,
    /// Held while a sealed segment's indexes are rebuilt at read time and while retention
    /// deletes segment files, so a rebuild never writes index files for a deleted segment.
    rebuild_lock: Mutex<()>,
}

/// The bad batches reads of a partition met, so each is counted and logged once and the
/// search for where to resume is not repeated by every read.
#[derive(Debug, Default)]
struct CorruptState {
    /// (segment base, position) -> where reads resume; `None` when the answer may still
    /// change (no good batch after it up to the visible end: more may follow).
    /// At most [`CORRUPT_BATCHES_TRACKED_MAX`]; beyond, every meeting counts again.
    known: std::collections::HashMap<(i64, u64), Option<Resume>>,
    /// When the last line was logged, and the batches met since that were not logged.
    logged_at: Option<Instant>,
    unlogged: u64,
}

/// What a partition shares with the rest of the log.
pub(crate) struct PartitionLinks {
    pub sync_queue: SyncSender<Arc<Partition>>,
    pub clock: SharedClock,
    pub rolled: Arc<Wakeup>,
}

/// Sealed segments that retention removed from a partition, oldest first.
#[derive(Debug, Default)]
pub struct Removed {
    pub segments: Vec<SealedSegment>,
    /// The start offset before and after.
    pub start_before: i64,
    pub start_after: i64,
}

/// Everything the partition lock protects.
#[derive(Debug)]
pub(crate) struct Inner {
    pub sealed: BTreeMap<i64, SealedSegment>,
    pub active: ActiveSegment,
    /// Sealed segments whose data and indexes are not yet fsynced.
    pub unsynced_seals: Vec<(i64, Arc<File>)>,
    pub next_offset: i64,
    pub fenced: bool,
    /// Set by `close`: appends are refused from then on.
    pub closed: bool,
    /// Set when the log is dropped without `close` (a crash simulated in-process):
    /// appends are refused and queued fsync rounds do nothing, so a log opened next on
    /// the same directory is not raced by this one's background work.
    pub abandoned: bool,
    /// The sealed segments last opened for reading (log file, offset index file), newest
    /// last, at most [`READ_FILES_MAX`]: a reader moving through a segment reads it chunk
    /// by chunk, and opening its two files for every chunk cost 3.5% of a pipeline
    /// rebuild. Retention drops a segment's entry when it removes the segment.
    pub read_files: Vec<ReadFiles>,
    /// Base offsets of segments retention took out of `sealed` but could not delete the
    /// files of (a failed pass), oldest first: the next pass deletes them before any
    /// newer segment, so the files on disk stay a contiguous suffix of the log and a
    /// restart finds no hole.
    pub left_behind: Vec<i64>,
}

/// Open files of a sealed segment, for reads (see `Inner::read_files`).
#[derive(Debug, Clone)]
pub(crate) struct ReadFiles {
    base_offset: i64,
    log: Arc<File>,
    /// `None` when the index could not be opened (reads then scan from the start).
    index: Option<Arc<File>>,
}

/// Sealed segments whose files a partition keeps open for reads: a few readers (the
/// pipelines of a topic, a consumer) each in its own segment.
const READ_FILES_MAX: usize = 4;

#[derive(Debug, Default)]
struct SyncState {
    queued: bool,
    running: bool,
    /// Written to while a round ran: run another.
    dirty_again: bool,
    /// The end the last successful round made durable.
    durable: Option<Visible>,
    /// Written end (offset) at the last append, to tell if a round is needed.
    written_end: i64,
    /// When the running round started its fsyncs; `None` between rounds. A round that
    /// does not return shows in `/readyz` and `weir_fsync_running_seconds`
    /// ([`Partition::fsync_running_for`]).
    fsync_since: Option<Instant>,
}

/// Metric handles, resolved once so the append path does no registry lookups.
struct PartitionMetrics {
    end_offset: metrics::Gauge,
    segment_rolls: metrics::Counter,
    fsync_round_seconds: metrics::Histogram,
    fsync_round_bytes: metrics::Histogram,
    fsync_errors: metrics::Counter,
    fsync_running_seconds: metrics::Gauge,
    corrupt_batches: metrics::Counter,
    index_rebuilds: metrics::Counter,
}

impl PartitionMetrics {
    fn new(topic: &str, id: u32) -> PartitionMetrics {
        let labels = [("topic", topic.to_string()), ("partition", id.to_string())];
        PartitionMetrics {
            end_offset: metrics::gauge!(m::END_OFFSET, &labels),
            segment_rolls: metrics::counter!(m::SEGMENT_ROLLS, &labels),
            fsync_round_seconds: metrics::histogram!(m::FSYNC_ROUND_SECONDS, &labels),
            fsync_round_bytes: metrics::histogram!(m::FSYNC_ROUND_BYTES, &labels),
            fsync_errors: metrics::counter!(m::FSYNC_ERRORS, &labels),
            fsync_running_seconds: metrics::gauge!(m::FSYNC_RUNNING_SECONDS, &labels),
            corrupt_batches: metrics::counter!(m::CORRUPT_BATCHES, &[("topic", topic.to_string())]),
            index_rebuilds: metrics::counter!(m::INDEX_REBUILDS, &[("topic", topic.to_string())]),
        }
    }
}

/// `limits::FSYNC_STALLED_AFTER`; with the `fail` feature (tests only, never in a release
/// build) `WEIR_TEST_FSYNC_STALLED_MS` sets a short one.
pub fn fsync_stalled_after() -> Duration {
    #[cfg(feature = "fail")]
    {
        static TEST: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
        let test = TEST.get_or_init(|| {
            std::env::var("WEIR_TEST_FSYNC_STALLED_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
        });
        if let Some(d) = test {
            return *d;
        }
    }
    crate::limits::FSYNC_STALLED_AFTER
}

/// What a fsync round has to do, taken under the lock.
struct RoundPlan {
    seals: Vec<(i64, Arc<File>)>,
    active: Arc<File>,
    target: Visible,
}

impl Partition {
    pub(crate) fn new(
        topic: Arc<str>,
        id: u32,
        dir: PathBuf,
        settings: PartitionSettings,
        inner: Inner,
        links: PartitionLinks,
    ) -> Partition {
        let end = Visible {
            end_offset: inner.next_offset,
            segment_base: inner.active.base_offset,
            position: inner.active.len,
            fenced: false,
        };
        let metrics = PartitionMetrics::new(&topic, id);
        metrics.end_offset.set(end.end_offset as f64);
        Partition {
            topic,
            id,
            dir,
            settings,
            inner: Mutex::new(inner),
            visible: watch::Sender::new(end),
            sync: Mutex::new(SyncState {
                durable: Some(end),
                written_end: end.end_offset,
                ..SyncState::default()
            }),
            round: Mutex::new(()),
            sync_queue: links.sync_queue,
            clock: links.clock,
            rolled: links.rolled,
            metrics,
            corrupt: Mutex::new(CorruptState::default()),
            rebuild_lock: Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn fsync_mode(&self) -> FsyncMode {
        self.settings.fsync
    }

    pub fn visible(&self) -> Visible {
        *self.visible.borrow()
    }

    /// Sets the gauges that follow every append (`weir_log_end_offset`): at scrape time,
    /// so the append path touches no shared metric state.
    pub fn update_gauges(&self) {
        #[allow(clippy::cast_precision_loss, reason = "a gauge")]
        self.metrics
            .end_offset
            .set(self.visible().end_offset as f64);
        self.metrics
            .fsync_running_seconds
            .set(self.fsync_running_for().map_or(0.0, |d| d.as_secs_f64()));
    }

    /// How long the fsync round running now has waited for its fsyncs; `None` between
    /// rounds.
    pub fn fsync_running_for(&self) -> Option<Duration> {
        self.sync.lock().fsync_since.map(|t| t.elapsed())
    }

    /// A receiver that wakes on every change of the visible end.
    pub fn subscribe(&self) -> watch::Receiver<Visible> {
        self.visible.subscribe()
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> i64 {
        let inner = self.inner.lock();
        inner
            .sealed
            .keys()
            .next()
            .copied()
            .unwrap_or(inner.active.base_offset)
    }

    /// Bytes of all segments.
    pub fn bytes(&self) -> u64 {
        let inner = self.inner.lock();
        inner.sealed.values().map(|s| s.len).sum::<u64>() + inner.active.len
    }

    pub fn is_fenced(&self) -> bool {
        self.visible.borrow().fenced
    }

    /// Appends one finished batch (base offset still 0), stamping its offsets.
    /// Returns once write(2) has returned; under `always` the caller then awaits
    /// [`Partition::wait_visible`].
    pub fn append(
        self: &Arc<Self>,
        batch_bytes: &mut [u8],
        now_ms: i64,
    ) -> Result<Appended, AppendError> {
        let header = BatchHeader::parse(batch_bytes)?;
        let count = i64::from(header.last_offset_delta) + 1;
        let len = batch_bytes.len() as u64;
        let mut inner = self.inner.lock();
        if inner.fenced {
            return Err(AppendError::Fenced(self.id));
        }
        if inner.closed {
            return Err(AppendError::Closed(self.id));
        }
        if self.roll_due(&inner.active, len, now_ms) {
            self.roll(&mut inner)
                .map_err(|e| self.write_failed(&mut inner, e))?;
        }
        let base = inner.next_offset;
        batch::set_base_offset(batch_bytes, base);
        let position = inner.active.len;
        inner
            .active
            .preallocate(position + len, self.segment_size_max());
        if let Err(e) = write_at(&inner.active.file, batch_bytes, position) {
            return Err(self.write_failed(&mut inner, e));
        }
        let active = &mut inner.active;
        active.len += len;
        let rel = u32::try_from(base - active.base_offset).unwrap_or(u32::MAX);
        let pos32 = u32::try_from(position).unwrap_or(u32::MAX);
        active
            .index
            .on_batch(rel, pos32, len, header.max_timestamp, INDEX_INTERVAL_BYTES);
        active.max_timestamp_ms = active.max_timestamp_ms.max(header.max_timestamp);
        active.first_append_ms.get_or_insert(now_ms);
        active.last_append_ms = Some(now_ms);
        active.last_append_mono_ms = Some(self.clock.monotonic_ms());
        inner.next_offset = base + count;
        let written = Visible {
            end_offset: inner.next_offset,
            segment_base: inner.active.base_offset,
            position: inner.active.len,
            fenced: false,
        };
        if self.settings.fsync != FsyncMode::Always {
            // Notifying costs a lock per waiter shard: only when someone waits. A receiver
            // that subscribes after this check reads the new value under the lock.
            self.visible.send_if_modified(|v| {
                *v = written;
                self.visible.receiver_count() > 0
            });
        }
        let must_sync =
            self.settings.fsync == FsyncMode::Always || !inner.unsynced_seals.is_empty();
        drop(inner);
        self.mark_written(written.end_offset, must_sync);
        Ok(Appended {
            base_offset: base,
            last_offset: base + count - 1,
        })
    }

    /// Waits until the visible end passes `last_offset`; Err if the partition was fenced first.
    pub async fn wait_visible(&self, last_offset: i64) -> Result<(), AppendError> {
        let mut rx = self.visible.subscribe();
        let v = rx
            .wait_for(|v| v.end_offset > last_offset || v.fenced)
            .await
            .map_err(|_| AppendError::Fenced(self.id))?;
        if v.end_offset > last_offset {
            Ok(())
        } else {
            Err(AppendError::Fenced(self.id))
        }
    }

    fn roll_due(&self, active: &ActiveSegment, incoming: u64, now_ms: i64) -> bool {
        if active.len == 0 {
            return false;
        }
        let too_big = active.len + incoming > self.segment_size_max();
        let too_old = active
            .first_append_ms
            .is_some_and(|first| now_ms.saturating_sub(first) >= self.settings.segment_age_ms);
        too_big || too_old
    }

    fn segment_size_max(&self) -> u64 {
        self.settings.segment_bytes_max.min(SEGMENT_BYTES_MAX)
    }

    /// Seals the active segment (cutting the space allocated past its end and writing its
    /// index files) and starts a new one. The sealed data, its size, its indexes and the
    /// directory are fsynced by the next round, which runs before any offset of the new
    /// segment becomes durable.
    fn roll(&self, inner: &mut Inner) -> io::Result<()> {
        failpoint!("log::roll");
        inner.active.cut_allocation()?;
        let next = inner.next_offset;
        let old = &inner.active;
        let last_rel = u32::try_from(next - 1 - old.base_offset).unwrap_or(u32::MAX);
        write_index_files(&self.dir, old, last_rel)?;
        failpoint!("log::segment_create");
        let mut new = ActiveSegment::create(&self.dir, next)?;
        new.preallocating = inner.active.preallocating;
        let old = std::mem::replace(&mut inner.active, new);
        inner
            .unsynced_seals
            .push((old.base_offset, Arc::clone(&old.file)));
        inner.sealed.insert(
            old.base_offset,
            SealedSegment {
                base_offset: old.base_offset,
                end_offset: next,
                len: old.len,
                last_append_ms: old.last_append_ms,
                last_append_mono_ms: old.last_append_mono_ms,
            },
        );
        self.metrics.segment_rolls.increment(1);
        Ok(())
    }

    /// A failed write may have left part of a batch: cut it. If even that fails the file
    /// is in an unknown state and the partition is fenced.
    fn write_failed(&self, inner: &mut Inner, err: io::Error) -> AppendError {
        // The space allocated ahead goes too: it may be what a full disk needs.
        inner.active.allocated = inner.active.len;
        if let Err(trunc) = inner.active.file.set_len(inner.active.len) {
            tracing::error!(topic = %self.topic, partition = self.id, error = %err,
                truncate_error = %trunc, "write failed and the partial batch could not be cut; fencing the partition");
            self.fence(inner);
        } else {
            tracing::warn!(topic = %self.topic, partition = self.id, error = %err, "write failed; nothing appended");
        }
        AppendError::Io(err)
    }

    fn fence(&self, inner: &mut Inner) {
        if !inner.fenced {
            inner.fenced = true;
            self.visible.send_modify(|v| v.fenced = true);
            metrics::gauge!(m::PARTITIONS_FENCED).increment(1.0);
        }
    }

    fn mark_written(self: &Arc<Self>, end: i64, must_sync: bool) {
        let mut s = self.sync.lock();
        s.written_end = s.written_end.max(end);
        if !must_sync {
            return;
        }
        self.queue_sync_locked(&mut s);
    }

    /// Queues a fsync round if one is not already queued or running.
    pub fn request_sync(self: &Arc<Self>) {
        let mut s = self.sync.lock();
        self.queue_sync_locked(&mut s);
    }

    fn queue_sync_locked(self: &Arc<Self>, s: &mut SyncState) {
        if s.running {
            s.dirty_again = true;
        } else if !s.queued {
            s.queued = true;
            // The queue holds every partition once at most, so this never blocks for long.
            if self.sync_queue.send(Arc::clone(self)).is_err() {
                s.queued = false;
            }
        }
    }

    /// One past the last offset the last successful fsync round made durable (under
    /// `always` the visible end; otherwise it trails the visible end until a round runs).
    pub fn durable_end(&self) -> i64 {
        self.sync.lock().durable.map_or(0, |d| d.end_offset)
    }

    /// Whether data was written since the last successful round.
    pub fn is_dirty(&self) -> bool {
        let s = self.sync.lock();
        s.durable.is_none_or(|d| d.end_offset < s.written_end)
    }

    /// Runs fsync rounds until nothing new was written during the last one. Called on an
    /// fsync worker thread, never on a tokio worker.
    pub fn run_sync(&self) {
        {
            let mut s = self.sync.lock();
            s.queued = false;
            s.running = true;
        }
        loop {
            self.sync_round();
            let mut s = self.sync.lock();
            if s.dirty_again && !self.inner.lock().fenced {
                s.dirty_again = false;
                continue;
            }
            s.dirty_again = false;
            s.running = false;
            return;
        }
    }

    fn sync_round(&self) {
        let _one_at_a_time = self.round.lock();
        let plan = {
            let mut inner = self.inner.lock();
            if inner.fenced || inner.abandoned {
                return;
            }
            RoundPlan {
                seals: std::mem::take(&mut inner.unsynced_seals),
                active: Arc::clone(&inner.active.file),
                target: Visible {
                    end_offset: inner.next_offset,
                    segment_base: inner.active.base_offset,
                    position: inner.active.len,
                    fenced: false,
                },
            }
        };
        let started = Instant::now();
        // Where the last round left the active segment: this one syncs the bytes after.
        let synced_from = {
            let mut s = self.sync.lock();
            if plan.seals.is_empty() && s.durable == Some(plan.target) {
                return;
            }
            s.fsync_since = Some(started);
            s.durable
                .filter(|d| d.segment_base == plan.target.segment_base)
                .map_or(0, |d| d.position)
        };
        let synced = self.sync_files(&plan);
        let took = started.elapsed();
        {
            let mut s = self.sync.lock();
            s.fsync_since = None;
            if synced.is_ok() {
                s.durable = Some(plan.target);
            }
        }
        if took >= fsync_stalled_after() {
            tracing::warn!(topic = %self.topic, partition = self.id, seconds = took.as_secs_f64(),
                ok = synced.is_ok(), "an fsync round returned after stalling");
        }
        match synced {
            Ok(()) => {
                let secs = took.as_secs_f64();
                self.metrics.fsync_round_seconds.record(secs);
                let bytes = plan.target.position.saturating_sub(synced_from);
                self.metrics.fsync_round_bytes.record(bytes as f64);
                if !plan.seals.is_empty() {
                    // Segments became durable and sealed: retention may delete them now.
                    self.rolled.notify();
                }
                if self.settings.fsync == FsyncMode::Always {
                    self.visible.send_if_modified(|v| {
                        if plan.target.end_offset > v.end_offset && !v.fenced {
                            *v = plan.target;
                            true
                        } else {
                            false
                        }
                    });
                }
            }
            Err(e) => {
                self.metrics.fsync_errors.increment(1);
                match self.settings.fsync {
                    FsyncMode::Always => tracing::error!(topic = %self.topic, partition = self.id,
                        error = %e, "fsync failed; waiting requests fail, partition fenced"),
                    _ => tracing::error!(topic = %self.topic, partition = self.id, error = %e,
                        "background fsync failed: up to one interval of acknowledged writes may be lost on power failure; partition fenced"),
                }
                // The kernel may have dropped the dirty pages: never retry and acknowledge.
                self.fence(&mut self.inner.lock());
            }
        }
    }

    fn sync_files(&self, plan: &RoundPlan) -> io::Result<()> {
        if !plan.seals.is_empty() {
            for (base, file) in &plan.seals {
                failpoint!("log::fsync_sealed");
                file.sync_data()?;
                for ext in [INDEX_EXT, TIMEINDEX_EXT] {
                    File::open(segment::path(&self.dir, *base, ext))?.sync_data()?;
                }
            }
            // The new segment's directory entry and the sealed index files.
            failpoint!("log::dir_fsync");
            sync_dir(&self.dir)?;
            let point = plan.target.segment_base;
            if let Err(e) = write_recovery_point(&self.dir, point) {
                // A full disk leaves the old recovery point, which is only more
                // conservative (a recovery scans from an older segment); the data is
                // fsynced, so nothing is fenced. The next roll's round writes it again.
                if e.raw_os_error() != Some(libc::ENOSPC) {
                    return Err(e);
                }
                let _ = fs::remove_file(self.dir.join(format!("{RECOVERY_POINT_FILE}.tmp")));
                tracing::warn!(topic = %self.topic, partition = self.id, error = %e,
                    "the disk is full: the recovery point stays behind (a recovery after a crash scans a little more); the data is fsynced");
            }
        }
        failpoint!("log::fsync");
        plan.active.sync_data()?;
        // Synced but not yet published as durable.
        failpoint!("log::fsync_after");
        Ok(())
    }

    /// Stops this partition's background work without flushing: see `Inner::abandoned`.
    pub fn abandon(&self) {
        let mut inner = self.inner.lock();
        inner.abandoned = true;
        inner.closed = true;
    }

    /// Whether an fsync round is running on a worker thread.
    pub fn sync_running(&self) -> bool {
        self.sync.lock().running
    }

    /// Flushes everything and writes the active segment's indexes, for a clean stop.
    /// Refuses further appends first, so nothing lands after the final fsync and index
    /// write (requests still running after the shutdown grace get 503).
    pub fn close(&self) -> io::Result<()> {
        self.inner.lock().closed = true;
        self.sync_round();
        let mut inner = self.inner.lock();
        if inner.fenced {
            return Err(io::Error::other("partition is fenced"));
        }
        // A cleanly stopped segment holds only batches; its size is made durable here
        // (the round above may have had nothing to sync).
        if inner.active.cut_allocation()? {
            inner.active.file.sync_data()?;
        }
        let active = &inner.active;
        let last_rel =
            u32::try_from((inner.next_offset - 1 - active.base_offset).max(0)).unwrap_or(u32::MAX);
        write_index_files(&self.dir, active, last_rel)?;
        for ext in [INDEX_EXT, TIMEINDEX_EXT] {
            File::open(segment::path(&self.dir, active.base_offset, ext))?.sync_data()?;
        }
        sync_dir(&self.dir)
    }

    /// Reads records from `offset`, never past the visible end, calling `emit` for each
    /// until `records_max` records or about `bytes_max` value bytes (at least one record).
    /// Returns the next offset to read.
    pub fn read(
        &self,
        offset: i64,
        records_max: usize,
        bytes_max: usize,
        emit: &mut EmitRecord<'_>,
    ) -> Result<i64, ReadError> {
        let visible = self.visible();
        let start = self.start_offset();
        if offset < start || offset > visible.end_offset {
            return Err(ReadError::OutOfRange {
                start,
                end: visible.end_offset,
            });
        }
        let mut next = offset;
        let mut records = 0usize;
        let mut bytes = 0usize;
        let mut buf = Vec::new();
        while next < visible.end_offset && records < records_max && bytes < bytes_max {
            let Some(seg) = self.segment_for(next, &visible)? else {
                break;
            };
            let mut pos = seg.start_position;
            let mut expect = seg.start_offset;
            let file = Windowed::new(&*seg.file, seg.limit, Direction::Forward);
            // Whether the batch at `pos` is the one the index named (checked once).
            let mut via_index = pos > 0;
            let corrupt = |position: u64, e: batch::DecodeError| ReadError::Corrupt {
                segment: segment::path(&self.dir, seg.base_offset, LOG_EXT),
                position,
                detail: e.to_string(),
            };
            while pos < seg.limit && records < records_max && bytes < bytes_max {
                let at = pos;
                let header = match read_batch(&file, at, seg.limit, &mut buf) {
                    Ok(h) if h.base_offset == expect => h,
                    got => {
                        let detail = got.map_or_else(
                            |e| e.to_string(),
                            |h| {
                                format!("base offset {} where {expect} was expected", h.base_offset)
                            },
                        );
                        let resume = self.bad_batch(&seg, at, expect, via_index, &detail)?;
                        via_index = false;
                        (pos, expect) = (resume.position, resume.offset);
                        // The bad batch's offsets are skipped: the next record served is
                        // a later one (as after retention).
                        if resume.position > at {
                            next = next.max(resume.offset);
                        }
                        continue;
                    }
                };
                via_index = false;
                pos += header.total_len() as u64;
                expect = header.next_offset();
                if header.last_offset() < next {
                    continue;
                }
                for record in batch::records(&buf).map_err(|e| corrupt(at, e))? {
                    let record = record.map_err(|e| corrupt(at, e))?;
                    let off = header.base_offset + i64::from(record.offset_delta);
                    if off < next {
                        continue;
                    }
                    if off >= visible.end_offset || records >= records_max || bytes >= bytes_max {
                        break;
                    }
                    let value = record.value.unwrap_or(b"null");
                    emit(off, record.key, value);
                    records += 1;
                    bytes += value.len();
                    next = off + 1;
                }
            }
            let limited = records >= records_max || bytes >= bytes_max;
            if !limited && pos >= seg.limit && next < seg.end_offset {
                // Records of this segment are exhausted; the rest start at its end.
                next = seg.end_offset;
            }
        }
        Ok(next)
    }

    /// The segment holding `offset`, opened for reading, with where to start and stop.
    fn segment_for(
        &self,
        offset: i64,
        visible: &Visible,
    ) -> Result<Option<SegmentRead>, ReadError> {
        let inner = self.inner.lock();
        let io_err = |e: io::Error| ReadError::Io(e);
        if offset >= inner.active.base_offset {
            let a = &inner.active;
            let limit = if visible.segment_base == a.base_offset {
                visible.position
            } else {
                0
            };
            let rel = u32::try_from(offset - a.base_offset).unwrap_or(u32::MAX);
            let entry = a.index.lookup_entry(rel);
            return Ok(Some(SegmentRead {
                base_offset: a.base_offset,
                file: Arc::clone(&a.file),
                index: None,
                start_position: u64::from(entry.position),
                start_offset: a.base_offset + i64::from(entry.rel_offset),
                limit,
                end_offset: visible.end_offset,
                sealed: None,
            }));
        }
        let Some((_, seg)) = inner.sealed.range(..=offset).next_back() else {
            return Ok(None);
        };
        let seg = seg.clone();
        let cached = inner
            .read_files
            .iter()
            .find(|f| f.base_offset == seg.base_offset)
            .cloned();
        drop(inner);
        // Tests run retention here to race this read deterministically.
        failpoint!("log::read_open_sealed", ReadError::Io);
        let out_of_range = || ReadError::OutOfRange {
            start: self.start_offset(),
            end: visible.end_offset,
        };
        let files = match cached {
            // Retention removed it after the lookup: the offset is now before the start
            // (as when the open below finds no file).
            Some(_) if offset < self.start_offset() => return Err(out_of_range()),
            Some(files) => files,
            None => {
                let log = match File::open(segment::path(&self.dir, seg.base_offset, LOG_EXT)) {
                    Ok(f) => f,
                    // Retention deleted it after the lookup.
                    Err(e)
                        if e.kind() == io::ErrorKind::NotFound && offset < self.start_offset() =>
                    {
                        return Err(out_of_range());
                    }
                    Err(e) => return Err(io_err(e)),
                };
                let index = File::open(segment::path(&self.dir, seg.base_offset, INDEX_EXT)).ok();
                let files = ReadFiles {
                    base_offset: seg.base_offset,
                    log: Arc::new(log),
                    index: index.map(Arc::new),
                };
                let mut inner = self.inner.lock();
                // Kept only while the segment is still there: retention clears entries
                // under this lock, so none outlives its segment's removal.
                if inner.sealed.contains_key(&seg.base_offset)
                    && !inner
                        .read_files
                        .iter()
                        .any(|f| f.base_offset == seg.base_offset)
                {
                    if inner.read_files.len() >= READ_FILES_MAX {
                        inner.read_files.remove(0);
                    }
                    inner.read_files.push(files.clone());
                }
                files
            }
        };
        let limit = if visible.segment_base == seg.base_offset {
            visible.position
        } else {
            seg.len
        };
        let rel = u32::try_from(offset - seg.base_offset).unwrap_or(u32::MAX);
        let start = index::OffsetEntry::SEGMENT_START;
        let entry = files.index.as_ref().map_or(start, |idx| {
            index::lookup_file(idx, rel, seg.len).unwrap_or(start)
        });
        Ok(Some(SegmentRead {
            base_offset: seg.base_offset,
            file: files.log,
            index: files.index,
            start_position: u64::from(entry.position),
            start_offset: seg.base_offset + i64::from(entry.rel_offset),
            limit,
            end_offset: seg.end_offset.min(visible.end_offset),
            sealed: Some(seg),
        }))
    }
}

impl Partition {
    /// The first offset whose record timestamp (event time) is at or after `timestamp_ms`,
    /// or the visible end if there is none: Kafka's ListOffsets by timestamp. Segments are
    /// tried in offset order; a sealed one is skipped when its time index says every
    /// record is earlier (its last entry is its maximum), otherwise the scan starts at the
    /// index entry before the target and skips batches by their max timestamp header.
    /// An unreadable time index only makes the scan start at the segment's beginning.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<i64, ReadError> {
        let visible = self.visible();
        let (sealed, active_base, active_max_ms, active_from) = {
            let inner = self.inner.lock();
            let a = &inner.active;
            (
                inner.sealed.keys().copied().collect::<Vec<i64>>(),
                a.base_offset,
                a.max_timestamp_ms,
                a.index.lookup_time(timestamp_ms),
            )
        };
        for (i, &base) in sealed.iter().enumerate() {
            if base >= visible.end_offset {
                break;
            }
            let end = sealed.get(i + 1).copied().unwrap_or(active_base);
            let lookup = File::open(segment::path(&self.dir, base, TIMEINDEX_EXT))
                .and_then(|f| index::lookup_time_file(&f, timestamp_ms));
            let from = match lookup {
                Ok(index::TimeLookup::Later) => continue,
                // An entry past the segment is damage: scan the segment from its start.
                Ok(index::TimeLookup::From(rel)) if base + i64::from(rel) < end => {
                    base + i64::from(rel)
                }
                Ok(index::TimeLookup::From(_)) | Err(_) => base,
            };
            if let Some(found) = self.scan_for_time(from, timestamp_ms, &visible)? {
                return Ok(found);
            }
        }
        if active_base < visible.end_offset && active_max_ms >= timestamp_ms {
            let from = active_base + i64::from(active_from);
            if let Some(found) = self.scan_for_time(from, timestamp_ms, &visible)? {
                return Ok(found);
            }
        }
        Ok(visible.end_offset)
    }

    /// Scans the segment holding `from` for the first record at or after `timestamp_ms`
    /// below the visible end. Batches whose max timestamp is earlier are skipped, after
    /// their CRC check; a bad batch is stepped over as reads do.
    fn scan_for_time(
        &self,
        from: i64,
        timestamp_ms: i64,
        visible: &Visible,
    ) -> Result<Option<i64>, ReadError> {
        let Some(seg) = self.segment_for(from, visible)? else {
            return Ok(None);
        };
        let corrupt = |position: u64, e: batch::DecodeError| ReadError::Corrupt {
            segment: segment::path(&self.dir, seg.base_offset, LOG_EXT),
            position,
            detail: e.to_string(),
        };
        let mut buf = Vec::new();
        let mut pos = seg.start_position;
        let mut expect = seg.start_offset;
        let mut via_index = pos > 0;
        let file = Windowed::new(&*seg.file, seg.limit, Direction::Forward);
        while pos < seg.limit {
            let at = pos;
            // Every batch walked is CRC-checked: a header skipped on its max timestamp
            // alone could skip the answer on a flipped bit.
            let header = match read_batch(&file, at, seg.limit, &mut buf) {
                Ok(h) if h.base_offset == expect => h,
                got => {
                    let detail = got.map_or_else(
                        |e| e.to_string(),
                        |h| format!("base offset {} where {expect} was expected", h.base_offset),
                    );
                    let resume = self.bad_batch(&seg, at, expect, via_index, &detail)?;
                    via_index = false;
                    (pos, expect) = (resume.position, resume.offset);
                    continue;
                }
            };
            via_index = false;
            if header.base_offset >= visible.end_offset {
                return Ok(None);
            }
            pos += header.total_len() as u64;
            expect = header.next_offset();
            if header.last_offset() < from || header.max_timestamp < timestamp_ms {
                continue;
            }
            for record in batch::records(&buf).map_err(|e| corrupt(at, e))? {
                let record = record.map_err(|e| corrupt(at, e))?;
                let off = header.base_offset + i64::from(record.offset_delta);
                if off >= visible.end_offset {
                    return Ok(None);
                }
                let ts = header.base_timestamp.wrapping_add(record.timestamp_delta);
                if off >= from && ts >= timestamp_ms {
                    return Ok(Some(off));
                }
            }
        }
        Ok(None)
    }
}

/// Bad batches and lying index entries met by reads (ARCHITECTURE.md, "Corruption").
impl Partition {
    /// A read found no good batch of offset `expect` at `pos` of `seg` (`detail`: what is
    /// wrong). Returns where the read goes on. When the offset index sent the read to
    /// `pos` (`via_index`) and no batch header of that offset is there, the index is
    /// what is wrong:
    /// the read restarts at the segment's start (and a sealed segment's indexes are
    /// rebuilt). Otherwise the batch is bad: never served, skipped (see
    /// [`corrupt::resume_after`]), counted in `weir_corrupt_batches_total` and logged once,
    /// with file and byte position, at most every [`CORRUPT_LOG_INTERVAL`].
    fn bad_batch(
        &self,
        seg: &SegmentRead,
        pos: u64,
        expect: i64,
        via_index: bool,
        detail: &dyn std::fmt::Display,
    ) -> Result<Resume, ReadError> {
        if via_index && pos > 0 {
            let mut head = [0u8; batch::BATCH_HEADER_LEN];
            let header_holds = pos + head.len() as u64 <= seg.limit
                && seg.file.read_exact_at(&mut head, pos).is_ok()
                && BatchHeader::parse_bounded(&head, BATCH_BYTES_MAX)
                    .is_ok_and(|h| h.base_offset == expect);
            if !header_holds {
                self.index_wrong(seg, pos, expect);
                return Ok(Resume {
                    position: 0,
                    offset: seg.base_offset,
                });
            }
        }
        let key = (seg.base_offset, pos);
        if let Some(Some(known)) = self.corrupt.lock().known.get(&key) {
            return Ok(*known);
        }
        let mut buf = Vec::new();
        let resume = corrupt::resume_after(
            &seg.file,
            pos,
            expect,
            seg.bounds(),
            seg.index.as_deref(),
            &mut buf,
        )
        .map_err(ReadError::Io)?;
        // Where reads resume is final once a good batch was found, or when the whole
        // segment was readable (a sealed one whose end is visible).
        let whole = seg.sealed.as_ref().is_some_and(|s| seg.limit == s.len);
        let settled = whole || resume.position < seg.limit;
        let mut c = self.corrupt.lock();
        let first = match c.known.get_mut(&key) {
            Some(entry) => {
                if settled {
                    *entry = Some(resume);
                }
                false
            }
            None => {
                if c.known.len() < CORRUPT_BATCHES_TRACKED_MAX {
                    c.known.insert(key, settled.then_some(resume));
                }
                true
            }
        };
        if !first {
            return Ok(resume);
        }
        self.metrics.corrupt_batches.increment(1);
        if c.logged_at
            .is_some_and(|t| t.elapsed() < CORRUPT_LOG_INTERVAL)
        {
            c.unlogged += 1;
            return Ok(resume);
        }
        let unlogged = std::mem::take(&mut c.unlogged);
        c.logged_at = Some(Instant::now());
        drop(c);
        tracing::error!(
            topic = %self.topic,
            partition = self.id,
            segment = %segment::path(&self.dir, seg.base_offset, LOG_EXT).display(),
            position = pos,
            offset = expect,
            resume_offset = resume.offset,
            resume_position = resume.position,
            others_unlogged = unlogged,
            error = %detail,
            "corrupt batch: not served, reads skip its offsets"
        );
        Ok(resume)
    }

    /// An offset index entry sent a read to `pos` for offset `expect`, and no batch of
    /// that offset starts there. Logged and counted; a sealed segment's indexes are
    /// rebuilt from the segment (the read itself goes on from the segment's start).
    fn index_wrong(&self, seg: &SegmentRead, pos: u64, expect: i64) {
        let index_path = segment::path(&self.dir, seg.base_offset, INDEX_EXT);
        tracing::error!(
            topic = %self.topic,
            partition = self.id,
            index = %index_path.display(),
            position = pos,
            offset = expect,
            "offset index entry points at no batch of its offset; reading from the segment's start"
        );
        let Some(sealed) = &seg.sealed else {
            return;
        };
        let _rebuilding = self.rebuild_lock.lock();
        let still_there = {
            let mut inner = self.inner.lock();
            // The next read opens the rebuilt file.
            inner
                .read_files
                .retain(|f| f.base_offset != sealed.base_offset);
            inner.sealed.contains_key(&sealed.base_offset)
        };
        if !still_there {
            return;
        }
        match corrupt::rebuild_indexes(&self.dir, sealed.base_offset, sealed.end_offset, sealed.len)
        {
            Ok(rebuilt) => {
                self.metrics.index_rebuilds.increment(1);
                tracing::warn!(topic = %self.topic, partition = self.id, index = %index_path.display(),
                    batches = rebuilt.batches, corrupt_batches = rebuilt.corrupt_batches,
                    "offset and time indexes rebuilt from the segment");
            }
            Err(e) => {
                tracing::error!(topic = %self.topic, partition = self.id, index = %index_path.display(),
                    error = %e, "index rebuild failed; reads that meet the entry scan from the segment's start");
            }
        }
    }
}

/// Receives `(offset, key, value)` of each record a read returns.
pub type EmitRecord<'a> = dyn FnMut(i64, Option<&[u8]>, &[u8]) + 'a;

struct SegmentRead {
    base_offset: i64,
    file: Arc<File>,
    /// The sealed segment's offset index file, if it opened.
    index: Option<Arc<File>>,
    /// Where to start (an index entry's batch, or 0) and the offset that batch starts at.
    start_position: u64,
    start_offset: i64,
    limit: u64,
    end_offset: i64,
    /// The segment, when it is a sealed one.
    sealed: Option<SealedSegment>,
}

impl SegmentRead {
    fn bounds(&self) -> corrupt::Bounds {
        corrupt::Bounds {
            base_offset: self.base_offset,
            limit: self.limit,
            end_offset: self.end_offset,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset out of range: the partition holds offsets {start} to {end}")]
    OutOfRange { start: i64, end: i64 },
    #[error("corrupt batch in {segment} at byte {position}: {detail}")]
    Corrupt {
        segment: PathBuf,
        position: u64,
        detail: String,
    },
    #[error("read failed: {0}")]
    Io(#[source] io::Error),
}

/// Positioned reads: a segment file, or its bytes in memory (the recovery scanner's
/// fuzz target and tests). Generic callers are monomorphised, so files pay nothing.
pub(crate) trait ReadAt {
    fn read_exact_from(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_from(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        (**self).read_exact_from(buf, pos)
    }
}

impl ReadAt for File {
    fn read_exact_from(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, pos)
    }
}

impl ReadAt for [u8] {
    fn read_exact_from(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let from = usize::try_from(pos).unwrap_or(usize::MAX);
        match from
            .checked_add(buf.len())
            .and_then(|to| self.get(from..to))
        {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// Reads and CRC-checks the batch at `pos` into `buf` (CRC on write and on read).
pub(crate) fn read_batch<R: ReadAt + ?Sized>(
    file: &R,
    pos: u64,
    limit: u64,
    buf: &mut Vec<u8>,
) -> Result<BatchHeader, batch::DecodeError> {
    let avail = usize::try_from(limit.saturating_sub(pos)).unwrap_or(usize::MAX);
    let head_len = batch::BATCH_HEADER_LEN.min(avail);
    buf.resize(head_len, 0);
    file.read_exact_from(buf, pos)
        .map_err(|_| batch::DecodeError::Incomplete { needed: 1 })?;
    let header = BatchHeader::parse(buf)?;
    let total = header.total_len();
    if total > avail {
        return Err(batch::DecodeError::Incomplete {
            needed: total - avail,
        });
    }
    buf.resize(total, 0);
    file.read_exact_from(&mut buf[head_len..], pos + head_len as u64)
        .map_err(|_| batch::DecodeError::Incomplete { needed: 1 })?;
    batch::check_batch(buf, BATCH_BYTES_MAX)
}

/// [`read_batch`], or `Ok(None)` where the data ends in space allocated ahead of the
/// appends: no batch at `pos`, and only zeros from there to `limit`.
pub(crate) fn read_batch_or_end<R: ReadAt + ?Sized>(
    file: &R,
    pos: u64,
    limit: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<BatchHeader>, batch::DecodeError> {
    match read_batch(file, pos, limit, buf) {
        Ok(h) => Ok(Some(h)),
        Err(_) if zeros_to(file, pos, limit).unwrap_or(false) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `file` holds only zeros from `from` to `end`: space allocated ahead of the
/// appends that no batch reached (see [`ActiveSegment`]), never a torn write (a batch
/// starts with its base offset and a length of at least its header's).
pub(crate) fn zeros_to<R: ReadAt + ?Sized>(file: &R, from: u64, end: u64) -> io::Result<bool> {
    let mut buf =
        vec![0u8; (64 << 10).min(usize::try_from(end.saturating_sub(from)).unwrap_or(usize::MAX))];
    let mut pos = from;
    while pos < end {
        let n = usize::try_from(end - pos).map_or(buf.len(), |left| left.min(buf.len()));
        file.read_exact_from(&mut buf[..n], pos)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

fn write_at(file: &File, bytes: &[u8], position: u64) -> io::Result<()> {
    failpoint!("log::write");
    file.write_all_at(bytes, position)?;
    // Written but not yet counted: the caller cuts it on an error.
    failpoint!("log::write_after");
    Ok(())
}

/// Writes the recovery point: the base offset of the first segment a recovery scans.
fn write_recovery_point(dir: &Path, point: i64) -> io::Result<()> {
    failpoint!("log::recovery_point");
    write_durably(dir, RECOVERY_POINT_FILE, format!("{point}\n").as_bytes())
}

/// Writes a segment's offset and time index files from its in-memory entries.
pub(crate) fn write_index_files(
    dir: &Path,
    seg: &ActiveSegment,
    last_rel_offset: u32,
) -> io::Result<()> {
    failpoint!("log::index_write");
    fs::write(
        segment::path(dir, seg.base_offset, INDEX_EXT),
        seg.index.encode_offsets(),
    )?;
    let times = seg
        .index
        .encode_times(seg.max_timestamp_ms, last_rel_offset);
    fs::write(segment::path(dir, seg.base_offset, TIMEINDEX_EXT), times)
}

/// Builds the lock-protected state of a recovered partition.
pub(crate) fn inner_from_recovery(
    sealed: BTreeMap<i64, SealedSegment>,
    active: ActiveSegment,
    next_offset: i64,
) -> Inner {
    Inner {
        sealed,
        active,
        unsynced_seals: Vec::new(),
        next_offset,
        fenced: false,
        closed: false,
        abandoned: false,
        read_files: Vec::new(),
        left_behind: Vec::new(),
    }
}

impl Partition {
    /// The partition's batches from the newest back, for rebuilding the dedup table.
    pub fn batches_newest_first(&self) -> NewestFirst {
        let visible = self.visible();
        let inner = self.inner.lock();
        let mut segments: Vec<WalkSegment> = inner
            .sealed
            .values()
            .map(|s| WalkSegment {
                base_offset: s.base_offset,
                len: s.len,
                end_offset: s.end_offset.min(visible.end_offset),
                index: None,
            })
            .collect();
        if visible.segment_base == inner.active.base_offset {
            segments.push(WalkSegment {
                base_offset: inner.active.base_offset,
                len: visible.position,
                end_offset: visible.end_offset,
                index: Some(inner.active.index.offsets.clone()),
            });
        }
        NewestFirst {
            dir: self.dir.clone(),
            segments,
            open: None,
            positions: Vec::new(),
        }
    }
}

/// Walks a partition's batches newest first. Kafka batches can only be walked forward,
/// so a segment is taken a span of its offset index at a time, from the last: the
/// headers of the span's batches are walked forward, then its batches are returned back
/// to front. Only the segment's tail that the caller reads is read (a segment of
/// single-event batches holds hundreds of thousands), and in windows. A span whose walk
/// does not end where the next begins (a wrong index) sends the segment's rest to a
/// walk from its start, which steps over bad batches as reads do.
pub struct NewestFirst {
    dir: PathBuf,
    /// Segments not yet opened, oldest first.
    segments: Vec<WalkSegment>,
    open: Option<OpenWalk>,
    /// Batch positions of the span being returned, oldest first.
    positions: Vec<(u64, u64)>,
}

/// A segment [`NewestFirst`] will walk.
struct WalkSegment {
    base_offset: i64,
    /// Its readable length.
    len: u64,
    end_offset: i64,
    /// The active segment's offset index (in memory); sealed ones read theirs from disk.
    index: Option<Vec<index::OffsetEntry>>,
}

/// The segment being walked.
struct OpenWalk {
    base_offset: i64,
    end_offset: i64,
    file: Windowed<File>,
    /// Index entries of the spans not walked yet, oldest first; the first is position 0.
    spans: Vec<index::OffsetEntry>,
    /// Where the last span not walked yet ends.
    span_end: u64,
}

/// One batch seen by [`NewestFirst`]: its append time and the client id hashes in it.
pub struct BatchIds {
    pub append_ms: i64,
    pub ids: Vec<u128>,
}

impl NewestFirst {
    pub fn next_batch(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<BatchIds>> {
        loop {
            if let (Some(open), Some((pos, len))) = (&self.open, self.positions.pop()) {
                if let Some(batch) = batch_ids(&open.file, pos, len, buf) {
                    return Ok(Some(batch));
                }
                continue;
            }
            if let Some(open) = &mut self.open
                && let Some(span) = open.spans.pop()
            {
                let to = open.span_end;
                let from = u64::from(span.position);
                // A span from the start, whatever its length, is walked forward in
                // windows; a later one is read with the spans before it in one window
                // ending where it ends, which its batches are then read from too.
                let walked = from > 0 && {
                    open.file.hold(from, to);
                    walk_headers(&open.file, open, span, to, &mut self.positions, buf)?
                };
                if walked {
                    open.span_end = from;
                } else {
                    // The first span, or the index was wrong here: the rest, from the start.
                    let start = index::OffsetEntry::SEGMENT_START;
                    let headers = Windowed::new(open.file.inner(), to, Direction::Forward);
                    self.positions.clear();
                    walk_headers(&headers, open, start, to, &mut self.positions, buf)?;
                    open.spans.clear();
                }
                continue;
            }
            let Some(seg) = self.segments.pop() else {
                return Ok(None);
            };
            let file = File::open(segment::path(&self.dir, seg.base_offset, LOG_EXT))?;
            let entries = seg.index.unwrap_or_else(|| {
                fs::read(segment::path(&self.dir, seg.base_offset, INDEX_EXT))
                    .map(|b| index::ActiveIndex::decode_offsets(&b, seg.len))
                    .unwrap_or_default()
            });
            let spans: Vec<index::OffsetEntry> = std::iter::once(index::OffsetEntry::SEGMENT_START)
                .chain(
                    entries
                        .into_iter()
                        .filter(|e| e.position > 0 && u64::from(e.position) < seg.len),
                )
                .collect();
            self.positions.clear();
            self.open = Some(OpenWalk {
                base_offset: seg.base_offset,
                end_offset: seg.end_offset,
                file: Windowed::new(file, seg.len, Direction::Backward),
                spans,
                span_end: seg.len,
            });
        }
    }
}

/// Walks the batch headers from `from` (an index entry) to `to`, pushing their positions.
/// With `from` at the segment's start, steps over bad batches as reads do (their ids are
/// lost to the table, the batches after them are not) and always succeeds; from a later
/// entry, false if the walk does not land exactly on `to` with continuous offsets (the
/// caller then walks from the start).
fn walk_headers(
    headers: &impl ReadAt,
    open: &OpenWalk,
    from: index::OffsetEntry,
    to: u64,
    positions: &mut Vec<(u64, u64)>,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    let pushed = positions.len();
    let mut pos = u64::from(from.position);
    let mut expect = open.base_offset + i64::from(from.rel_offset);
    let mut head = [0u8; batch::BATCH_HEADER_LEN];
    while pos < to {
        let h = if pos + head.len() as u64 <= to {
            headers.read_exact_from(&mut head, pos)?;
            BatchHeader::parse_bounded(&head, BATCH_BYTES_MAX)
                .ok()
                .filter(|h| h.base_offset == expect && pos + h.total_len() as u64 <= to)
        } else {
            None
        };
        let Some(h) = h else {
            if from.position > 0 {
                positions.truncate(pushed);
                return Ok(false);
            }
            let bounds = corrupt::Bounds {
                base_offset: open.base_offset,
                limit: to,
                end_offset: open.end_offset,
            };
            let file = open.file.inner();
            let r = corrupt::resume_after(file, pos, expect, bounds, None, buf)?;
            (pos, expect) = (r.position, r.offset);
            continue;
        };
        let total = h.total_len() as u64;
        positions.push((pos, total));
        expect = h.next_offset();
        pos += total;
    }
    Ok(true)
}

/// The append time and ids of the batch at `pos`, or None if it is bad or has no append
/// time. One pass over the records: the first carries the append time.
fn batch_ids<R: ReadAt + ?Sized>(
    file: &R,
    pos: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> Option<BatchIds> {
    read_batch(file, pos, pos + len, buf).ok()?;
    let mut records = batch::records(buf).ok()?;
    let first = records.next()?.ok()?;
    let append_ms = super::record_append_ms(&first)?;
    let mut ids = Vec::new();
    for record in std::iter::once(first).chain(records.flatten()) {
        if let Some(id) = record.header(super::HEADER_ID)
            && let Ok(bytes) = <[u8; 16]>::try_from(id)
        {
            ids.push(u128::from_be_bytes(bytes));
        }
    }
    Some(BatchIds { append_ms, ids })
}

/// Retention's access: which sealed segments exist and removing the oldest of them.
impl Partition {
    /// Sealed segments that are durable (sealed and fsynced), oldest first, and the bytes
    /// of the whole partition. Segments still waiting for their fsync round are left out:
    /// the round opens their index files by path.
    pub fn sealed_segments(&self) -> (Vec<SealedSegment>, u64) {
        let inner = self.inner.lock();
        let unsynced = |base: i64| inner.unsynced_seals.iter().any(|(b, _)| *b == base);
        let bytes = inner.sealed.values().map(|s| s.len).sum::<u64>() + inner.active.len;
        let segments = inner
            .sealed
            .values()
            .take_while(|s| !unsynced(s.base_offset))
            .cloned()
            .collect();
        (segments, bytes)
    }

    /// Remembers a sealed segment's newest append time, read from its last batch.
    pub fn set_last_append_ms(&self, base_offset: i64, append_ms: i64) {
        if let Some(seg) = self.inner.lock().sealed.get_mut(&base_offset) {
            seg.last_append_ms = Some(append_ms);
        }
    }

    /// Deletes the sealed, durable segments that end at or before `end_offset`, oldest
    /// first, never the active one. The start offset moves (in memory, under the lock)
    /// before any file goes, so no new reader looks for them; readers that looked them up
    /// before get `OutOfRange` when they open the file (see `segment_for`). Files go
    /// `.log` first, so a crash half-way leaves at worst index files without a log, which
    /// recovery removes; the directory is fsynced at the end.
    ///
    /// A deletion that fails leaves the segments from the failing one on in
    /// `Inner::left_behind`; the next call deletes them first and removes nothing newer
    /// until they are gone (deleting newer ones would leave a hole a restart reads).
    pub fn remove_segments_through(&self, end_offset: i64) -> io::Result<Removed> {
        let left = std::mem::take(&mut self.inner.lock().left_behind);
        if !left.is_empty() {
            self.delete_segment_files(&left)?;
            sync_dir(&self.dir)?;
        }
        let mut removed = Removed::default();
        {
            let mut inner = self.inner.lock();
            removed.start_before = inner
                .sealed
                .keys()
                .next()
                .copied()
                .unwrap_or(inner.active.base_offset);
            let inner = &mut *inner;
            while let Some(entry) = inner.sealed.first_entry() {
                let seg = entry.get();
                let base = seg.base_offset;
                if seg.end_offset > end_offset
                    || inner.unsynced_seals.iter().any(|(b, _)| *b == base)
                {
                    break;
                }
                removed.segments.push(entry.remove());
            }
            let first = inner.sealed.keys().next().copied();
            let active = inner.active.base_offset;
            inner
                .read_files
                .retain(|f| f.base_offset >= first.unwrap_or(active));
            removed.start_after = inner
                .sealed
                .keys()
                .next()
                .copied()
                .unwrap_or(inner.active.base_offset);
        }
        if removed.segments.is_empty() {
            return Ok(removed);
        }
        let bases: Vec<i64> = removed.segments.iter().map(|s| s.base_offset).collect();
        self.delete_segment_files(&bases)?;
        sync_dir(&self.dir)?;
        Ok(removed)
    }

    /// Deletes the files of the segments `bases` (taken out of `sealed` already), oldest
    /// first, `.log` first. On an error the segments from the failing one on go to
    /// `Inner::left_behind`.
    fn delete_segment_files(&self, bases: &[i64]) -> io::Result<()> {
        // No index rebuild (at read time) writes files of these segments meanwhile.
        let _rebuilds = self.rebuild_lock.lock();
        let delete = |i: usize, base: i64| -> Result<(), (usize, io::Error)> {
            for ext in [LOG_EXT, INDEX_EXT, TIMEINDEX_EXT] {
                if ext == INDEX_EXT {
                    // The log file gone, its indexes not yet: what recovery cleans up.
                    failpoint!("log::retention_delete", |e| (i, e));
                }
                match fs::remove_file(segment::path(&self.dir, base, ext)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err((i, e)),
                }
            }
            Ok(())
        };
        for (i, &base) in bases.iter().enumerate() {
            if let Err((failed, e)) = delete(i, base) {
                let mut inner = self.inner.lock();
                let mut left = bases[failed..].to_vec();
                left.append(&mut inner.left_behind);
                inner.left_behind = left;
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl Partition {
    /// Sealed segments whose files are kept open for reads.
    #[cfg(feature = "fail")]
    pub(crate) fn inner_read_files_len(&self) -> usize {
        self.inner.lock().read_files.len()
    }

    /// Bad batches reads met and remembered.
    pub(crate) fn corrupt_known(&self) -> usize {
        self.corrupt.lock().known.len()
    }

    /// Sealed segments in memory, durable or not (tests wait for rounds with it).
    pub(crate) fn inner_sealed_len(&self) -> usize {
        self.inner.lock().sealed.len()
    }
}

/// Where a batch starts: what [`Partition::read_batches_at`] returns for the batch after
/// the last one it read, and takes to start the next read there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPosition {
    segment_base: i64,
    position: u64,
    offset: i64,
}

/// Whole-batch reads, for pipelines: the raw batches go to the caller, who decodes only the
/// fields it needs (see [`super::batches`]).
impl Partition {
    /// Reads whole batches, CRC-checked, from the one holding `from` into `out` (cleared
    /// first): at least one batch if any is visible, then more while the total stays within
    /// `bytes_max`, all from one segment, never past the visible end. Batches wholly before
    /// `from` are left out; the first may still hold records before it (the caller skips
    /// them). Returns the offset after the last batch read: `from` when nothing is
    /// visible, the next segment's base when this one held nothing more.
    pub fn read_batches(
        &self,
        from: i64,
        bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<i64, ReadError> {
        self.read_batches_at(from, None, bytes_max, out)
            .map(|(next, _)| next)
    }

    /// [`read_batches`](Self::read_batches) for a reader that goes on from its last read:
    /// `at`, the position that read returned, starts this one at the batch holding `from`
    /// without looking it up (the offset index, then a walk over the batches from the
    /// entry found). A position that is not where `from`'s batch starts (another segment,
    /// another offset, bytes that are not that batch) is dropped and the read looks up as
    /// `read_batches` does: it never changes what is read. Returns also where the batch
    /// after the last one read starts, when a batch was read.
    pub fn read_batches_at(
        &self,
        from: i64,
        at: Option<ReadPosition>,
        bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(i64, Option<ReadPosition>), ReadError> {
        let read = self.read_batches_reusing(from, at, bytes_max, out);
        if read.is_err() {
            out.clear();
        }
        read
    }

    /// [`read_batches_at`](Self::read_batches_at) but for errors, with the bytes `out`
    /// holds from the last read overwritten in place rather than zeroed again
    /// (`Vec::resize` zero-fills only what grows): a megabyte of memset per read saved.
    fn read_batches_reusing(
        &self,
        from: i64,
        at: Option<ReadPosition>,
        bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(i64, Option<ReadPosition>), ReadError> {
        let visible = self.visible();
        let start = self.start_offset();
        if from < start || from > visible.end_offset {
            return Err(ReadError::OutOfRange {
                start,
                end: visible.end_offset,
            });
        }
        if from == visible.end_offset {
            out.clear();
            return Ok((from, None));
        }
        let Some(seg) = self.segment_for(from, &visible)? else {
            out.clear();
            return Ok((from, None));
        };
        // Where the caller's last read ended, if that is in this segment at `from`: the
        // first batch read is checked to be `from`'s as always, and if it is not, the
        // read starts again from the index entry.
        let mut via_at = at
            .filter(|a| {
                a.segment_base == seg.base_offset
                    && a.offset == from
                    && a.position >= seg.start_position
                    && a.position < seg.limit
            })
            .map(|a| a.position);
        // Batches wholly before `from` (the index points at or before it) are skipped by
        // their headers alone (length sane, offsets continuous); they are not served.
        let (mut start_pos, mut expect) = match via_at {
            Some(position) => (position, from),
            None => (seg.start_position, seg.start_offset),
        };
        let mut via_index = via_at.is_none() && start_pos > 0;
        let mut head = [0u8; batch::BATCH_HEADER_LEN];
        // The batches skipped lie within an index interval and a batch, and a pipeline
        // woken by appends reads a few of them: read in windows, not a header at a time.
        let file = Windowed::new(&*seg.file, seg.limit, Direction::Forward);
        'read: loop {
            while via_at.is_none() && start_pos + head.len() as u64 <= seg.limit {
                file.read_exact_from(&mut head, start_pos)
                    .map_err(ReadError::Io)?;
                let header = BatchHeader::parse_bounded(&head, BATCH_BYTES_MAX);
                let fits = |h: &BatchHeader| {
                    h.base_offset == expect && start_pos + h.total_len() as u64 <= seg.limit
                };
                let header = match header {
                    Ok(h) if fits(&h) => h,
                    got => {
                        let detail = got.map_or_else(
                            |e| e.to_string(),
                            |h| {
                                format!(
                                    "base offset {} ({} bytes) where {expect} was expected",
                                    h.base_offset,
                                    h.total_len()
                                )
                            },
                        );
                        let resume = self.bad_batch(&seg, start_pos, expect, via_index, &detail)?;
                        via_index = false;
                        if resume.position > start_pos && resume.offset > from {
                            // Offsets from `from` on were in the bad batch: the caller
                            // sees the jump (nothing read, a later offset returned).
                            out.clear();
                            return Ok((resume.offset, None));
                        }
                        (start_pos, expect) = (resume.position, resume.offset);
                        continue;
                    }
                };
                via_index = false;
                if header.last_offset() >= from {
                    break;
                }
                start_pos += header.total_len() as u64;
                expect = header.next_offset();
            }
            // One read of up to `bytes_max` (what the window holds of it copied, the rest
            // read directly), then whole batches are cut from it; a first batch larger
            // than that is read on its own.
            let avail = usize::try_from(seg.limit.saturating_sub(start_pos)).unwrap_or(0);
            if avail < batch::BATCH_HEADER_LEN {
                // Nothing of this segment at or after `from`: the rest start at its end.
                out.clear();
                let next = if from < seg.end_offset {
                    seg.end_offset
                } else {
                    from
                };
                return Ok((next, None));
            }
            out.resize(avail.min(bytes_max.max(batch::BATCH_HEADER_LEN)), 0);
            file.read_exact_through(out, start_pos)
                .map_err(ReadError::Io)?;
            let mut pos = 0usize;
            let mut next = from;
            while pos + batch::BATCH_HEADER_LEN <= out.len() {
                let at = start_pos + pos as u64;
                let header = BatchHeader::parse_bounded(&out[pos..], BATCH_BYTES_MAX)
                    .ok()
                    .filter(|h| h.base_offset == expect);
                let Some(header) = header else {
                    if pos > 0 {
                        // What is kept is served; the next read meets this batch first.
                        break;
                    }
                    if via_at.take().is_some() {
                        // Not `from`'s batch there: back to the index entry.
                        (start_pos, expect) = (seg.start_position, seg.start_offset);
                        via_index = start_pos > 0;
                        continue 'read;
                    }
                    let resume = self.bad_batch(&seg, at, expect, false, &"bad batch header")?;
                    if resume.offset > from {
                        out.clear();
                        return Ok((resume.offset, None));
                    }
                    (start_pos, expect) = (resume.position, resume.offset);
                    continue 'read;
                };
                let total = header.total_len();
                if header.base_offset >= visible.end_offset {
                    break;
                }
                if pos + total > out.len() {
                    if next > from {
                        // Something is kept already: the next read starts with this batch.
                        break;
                    }
                    if pos + total <= avail {
                        let had = out.len();
                        out.resize(pos + total, 0);
                        file.read_exact_through(&mut out[had..], start_pos + had as u64)
                            .map_err(ReadError::Io)?;
                    }
                }
                let checked = if pos + total <= out.len() {
                    batch::check_batch(&out[pos..pos + total], BATCH_BYTES_MAX)
                } else {
                    Err(batch::DecodeError::Incomplete {
                        needed: pos + total - out.len(),
                    })
                };
                if let Err(e) = checked {
                    if pos > 0 {
                        break;
                    }
                    if via_at.take().is_some() {
                        // Not `from`'s batch there: back to the index entry.
                        (start_pos, expect) = (seg.start_position, seg.start_offset);
                        via_index = start_pos > 0;
                        continue 'read;
                    }
                    let resume = self.bad_batch(&seg, at, expect, false, &e)?;
                    if resume.offset > from {
                        out.clear();
                        return Ok((resume.offset, None));
                    }
                    (start_pos, expect) = (resume.position, resume.offset);
                    continue 'read;
                }
                next = header.next_offset();
                expect = next;
                pos += total;
            }
            out.truncate(pos);
            let end = (pos > 0).then_some(ReadPosition {
                segment_base: seg.base_offset,
                position: start_pos + pos as u64,
                offset: next,
            });
            return Ok((next, end));
        }
    }
}

#[cfg(test)]
mod close_tests {
    use std::sync::Arc;

    use crate::clock::ManualClock;
    use crate::log::Log;
    use crate::log::retention::tests::{append, config};

    /// `close` runs the final fsync round itself while a worker may still run the round
    /// of an earlier roll: with sealed segments in both, they used to race on the
    /// recovery point's temporary file and fence the partition at a clean stop (about
    /// one run in three of this test failed; it is a race, so repeated).
    #[test]
    fn close_right_after_rolls_is_clean() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let clock = Arc::new(ManualClock::new(1_000_000));
            let (log, _) = Log::open(&config(dir.path(), ""), clock).unwrap();
            for _ in 0..12 {
                append(&log, 2, 300);
            }
            log.close().unwrap();
        }
    }
}

#[cfg(test)]
pub(crate) mod read_batches_tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::{Partition, ReadPosition};
    use crate::clock::ManualClock;
    use crate::log::Log;
    use crate::log::batches::batches;
    use crate::log::retention::tests::{append, config};

    /// A log in `dir` whose partition 0 holds 40 batches of 1 to 3 records of 100 bytes
    /// over 1 KiB segments (they roll often, so reads stop at many segment ends): the
    /// log, the partition and its end offset.
    pub(crate) fn rolled_partition(dir: &Path) -> (Log, Arc<Partition>, i64) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let (log, _) = Log::open(&config(dir, ""), clock).unwrap();
        let mut end = 0;
        for i in 0..40 {
            end = append(&log, 1 + i % 3, 100) + 1;
        }
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        (log, p, end)
    }

    #[test]
    fn every_offset_once_across_segments_from_any_start() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, p, end) = rolled_partition(dir.path());
        assert_eq!(p.visible().end_offset, end);
        for (from, bytes_max) in [(0, 1), (0, 700), (5, 300), (end - 1, 1 << 20), (end, 64)] {
            let mut buf = Vec::new();
            let mut seen = Vec::new();
            let mut next = from;
            while next < end {
                let after = p.read_batches(next, bytes_max, &mut buf).unwrap();
                assert!(after > next, "progress from {next}");
                for b in batches(&buf) {
                    assert!(b.base_offset <= next.max(b.base_offset));
                    seen.extend(b.records_from(next).map(|r| r.offset));
                }
                next = after;
            }
            let want: Vec<i64> = (from..end).collect();
            assert_eq!(seen, want, "from {from}, {bytes_max} bytes at a time");
            assert_eq!(p.read_batches(end, bytes_max, &mut buf).unwrap(), end);
            assert!(buf.is_empty());
        }
        assert!(p.read_batches(end + 1, 10, &mut Vec::new()).is_err());
    }

    /// A read from the position the last read returned answers what a read that looks
    /// `from` up answers; so does one from a wrong position (dropped), and no wrong
    /// position is taken for a corrupt batch.
    #[test]
    fn a_read_from_the_last_reads_position_reads_what_a_lookup_would() {
        let dir = tempfile::tempdir().unwrap();
        let (log, p, mut end) = rolled_partition(dir.path());
        for bytes_max in [1, 300, 1 << 20] {
            let (mut want, mut got) = (Vec::new(), Vec::new());
            let (mut next, mut at) = (0, None);
            let mut positions = 0;
            while next < end {
                let after = p.read_batches(next, bytes_max, &mut want).unwrap();
                let wrong = at.map(|a: ReadPosition| {
                    [
                        ReadPosition {
                            position: a.position + 7,
                            ..a
                        },
                        ReadPosition {
                            position: a.position + 1,
                            ..a
                        },
                        ReadPosition {
                            offset: a.offset - 1,
                            ..a
                        },
                        ReadPosition {
                            segment_base: a.segment_base + 1,
                            ..a
                        },
                    ]
                });
                for wrong in wrong.into_iter().flatten() {
                    let (n, _) = p
                        .read_batches_at(next, Some(wrong), bytes_max, &mut got)
                        .unwrap();
                    assert_eq!((n, &got), (after, &want), "from {next} at {wrong:?}");
                }
                positions += usize::from(at.is_some());
                let (n, then) = p.read_batches_at(next, at, bytes_max, &mut got).unwrap();
                assert_eq!((n, &got), (after, &want), "from {next} at {at:?}");
                assert_eq!(then.is_some(), !got.is_empty());
                (next, at) = (n, then);
            }
            assert!(positions > 10, "{positions} reads from a position");
            // The live tail: appended after the last read, read from where it ended.
            let before = end;
            end = append(&log, 2, 100) + 1;
            let (n, _) = p
                .read_batches_at(before, at, bytes_max.max(1000), &mut got)
                .unwrap();
            assert_eq!(n, end);
            let offsets: Vec<i64> = batches(&got)
                .flat_map(|b| b.records_from(before))
                .map(|r| r.offset)
                .collect();
            assert_eq!(offsets, (before..end).collect::<Vec<_>>());
        }
        assert_eq!(p.corrupt_known(), 0);
    }
}

#[cfg(test)]
mod preallocation_tests {
    use std::fs;
    use std::path::Path;
    use std::sync::Arc;

    use crate::clock::ManualClock;
    use crate::log::Log;
    use crate::log::retention::tests::{append, config};
    use crate::log::segment;

    /// (base offset, file size) of every segment of partition 0, oldest first.
    fn segment_files(dir: &Path) -> Vec<(i64, u64)> {
        let part = dir.join("topics/t/0");
        let mut out: Vec<(i64, u64)> = fs::read_dir(&part)
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let base = segment::parse_log_name(e.file_name().to_str()?)?;
                Some((base, e.metadata().unwrap().len()))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// The active segment's file is allocated ahead of its appends; a roll, a clean stop
    /// and the recovery after a crash cut what no batch reached, and the recovery counts
    /// none of it as a truncation: every offset is read back.
    #[test]
    fn space_allocated_ahead_is_cut_at_roll_stop_and_recovery_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let (log, _) = Log::open(&config(dir.path(), ""), Arc::clone(&clock) as _).unwrap();
        append(&log, 1, 100);
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        let len = p.bytes();
        // 1 KiB segments: allocated to the segment size.
        assert_eq!(segment_files(dir.path()), vec![(0, 1024)], "written {len}");
        let mut end = 0;
        for _ in 0..20 {
            end = append(&log, 2, 100) + 1;
        }
        let files = segment_files(dir.path());
        assert!(files.len() > 3, "{files:?}");
        let active_size = files.last().unwrap().1;
        let sealed: u64 = files[..files.len() - 1].iter().map(|f| f.1).sum();
        assert_eq!(active_size, 1024, "the active segment is allocated ahead");
        assert!(
            sealed < p.bytes(),
            "sealed segments hold only their batches: {files:?}"
        );
        // A crash: the log dropped without a close.
        drop(p);
        drop(log);
        let (log, report) = Log::open(&config(dir.path(), ""), Arc::clone(&clock) as _).unwrap();
        assert!(!report.clean);
        assert_eq!(
            report.truncated_bytes, 0,
            "zeros allocated ahead are no loss"
        );
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        assert_eq!(p.visible().end_offset, end);
        let total: u64 = segment_files(dir.path()).iter().map(|f| f.1).sum();
        assert_eq!(total, p.bytes(), "recovery cut the zeros");
        let mut seen = 0;
        let mut next = 0;
        while next < end {
            next = p
                .read(next, 1000, 1 << 20, &mut |_, _, _| {
                    seen += 1;
                })
                .unwrap();
        }
        assert_eq!(seen, end, "every offset is read back");
        // Appends go on into newly allocated space, and a clean stop cuts it.
        end = append(&log, 1, 100) + 1;
        assert_eq!(segment_files(dir.path()).last().unwrap().1, 1024);
        drop(p);
        log.close().unwrap();
        drop(log);
        let total: u64 = segment_files(dir.path()).iter().map(|f| f.1).sum();
        let (log, report) = Log::open(&config(dir.path(), ""), clock).unwrap();
        assert!(report.clean);
        let p = &log.topic("t").unwrap().partitions[0];
        assert_eq!(total, p.bytes(), "a clean stop leaves only batches");
        assert_eq!(p.visible().end_offset, end);
    }
}

#[cfg(test)]
mod newest_first_tests {
    use std::fs;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::sync::Arc;

    use super::Partition;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::log::segment::{self, INDEX_EXT, LOG_EXT};
    use crate::log::{HEADER_APPEND, HEADER_ID, Log, batch};

    /// 16 KiB segments: several segments, each of several index spans (4 KiB).
    fn open(dir: &Path) -> Log {
        let text = format!(
            "[storage]\ndata_dir = {:?}\n[[topic]]\nname = \"t\"\npartitions = 1\nfsync = \"never\"\nsegment_size = \"16KiB\"\ndedup_window = \"0s\"\n",
            dir.display().to_string()
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        Log::open(&config, Arc::new(ManualClock::new(1_000_000)))
            .unwrap()
            .0
    }

    /// Appends `n` single-record batches, the id of the i-th being `first + i`.
    fn append_ids(log: &Log, first: u128, n: u128) {
        let p = &log.topic("t").unwrap().partitions[0];
        for id in first..first + n {
            let now = log.clock().now_ms();
            let mut b = batch::BatchBuilder::new();
            b.push(
                None,
                &[b'x'; 120],
                now,
                &[
                    (HEADER_APPEND, &now.to_be_bytes()),
                    (HEADER_ID, &id.to_be_bytes()),
                ],
            );
            p.append(&mut b.finish(), now).unwrap();
        }
    }

    fn ids_newest_first(p: &Partition) -> Vec<u128> {
        let mut walk = p.batches_newest_first();
        let mut buf = Vec::new();
        let mut ids = Vec::new();
        while let Some(b) = walk.next_batch(&mut buf).unwrap() {
            ids.extend(b.ids);
        }
        ids
    }

    /// (base offset, path) of the sealed segments of partition 0, oldest first.
    fn sealed(dir: &Path, p: &Partition) -> Vec<(i64, std::path::PathBuf)> {
        p.sealed_segments()
            .0
            .iter()
            .map(|s| {
                let part = dir.join("topics/t/0");
                (s.base_offset, segment::path(&part, s.base_offset, LOG_EXT))
            })
            .collect()
    }

    /// Every batch comes back, newest first, across segments and index spans, from the
    /// active segment's index in memory and the sealed ones' files; an index entry that
    /// points inside a batch costs a walk from the segment's start, not a batch; a bad
    /// batch costs its own ids only.
    #[test]
    fn every_batch_comes_back_newest_first_whatever_the_index_says() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append_ids(&log, 0, 400);
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        let all: Vec<u128> = (0..400).rev().collect();
        assert_eq!(ids_newest_first(&p), all);
        drop(p);
        log.close().unwrap();
        drop(log);

        let log = open(dir.path());
        let p = Arc::clone(&log.topic("t").unwrap().partitions[0]);
        let segs = sealed(dir.path(), &p);
        assert!(segs.len() >= 3, "{} sealed segments", segs.len());
        assert_eq!(ids_newest_first(&p), all);

        // The second segment's index: its last entry moved 7 bytes into its batch.
        let part = dir.path().join("topics/t/0");
        let index = segment::path(&part, segs[1].0, INDEX_EXT);
        let mut bytes = fs::read(&index).unwrap();
        assert!(bytes.len() >= 16, "{} index bytes", bytes.len());
        let at = bytes.len() - 4;
        let pos = u32::from_be_bytes(bytes[at..].try_into().unwrap()) + 7;
        bytes[at..].copy_from_slice(&pos.to_be_bytes());
        fs::write(&index, &bytes).unwrap();
        assert_eq!(ids_newest_first(&p), all);

        // A byte of the first segment's 5th batch flipped: its CRC fails.
        let file = fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&segs[0].1)
            .unwrap();
        let batch_len = fs::metadata(&segs[0].1).unwrap().len() / u64::try_from(segs[1].0).unwrap();
        let mut b = [0u8; 1];
        let at = 4 * batch_len + batch_len - 10;
        file.read_exact_at(&mut b, at).unwrap();
        file.write_all_at(&[b[0] ^ 0xff], at).unwrap();
        let want: Vec<u128> = all.iter().copied().filter(|id| *id != 4).collect();
        assert_eq!(ids_newest_first(&p), want);
    }
}
