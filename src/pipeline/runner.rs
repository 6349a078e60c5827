//! The thread that runs one pipeline: reads every partition of its source topic, feeds
//! the batches to its [`Engine`] and publishes results to its [`HotView`].
//!
//! One OS thread per pipeline: the engine is single-threaded and pure, and the log reads
//! are blocking file IO, so neither touches a tokio worker. The thread waits for appends
//! on the partitions' visible-end watch channels (through a handle of the runtime), with
//! a bound ([`IDLE_WAIT`]) so a stop is seen even without appends; it never polls busily.
//!
//! Read order across partitions: each partition is read in offset order into its own
//! buffer of whole batches; among the batches at the heads of the buffers the one with the
//! smallest `(append time, partition, base offset)` goes next, so batches are merged in
//! append-time order. This is deterministic over what is visible at once: replaying a log
//! that is all visible gives the same sequence. Its limit: a batch that becomes visible
//! only after a later-stamped batch of another partition was taken (append times are
//! stamped before the write and the fsync) is taken when it appears, later than a replay
//! would take it; only windows at the edge of the watermark can tell the difference. A
//! partition with nothing visible does not hold the others back (that would stall on a
//! partition that receives nothing).
//!
//! The reads themselves (pread, header walk, CRC checks) are done ahead by a second
//! thread per pipeline ([`ReadAhead`], see `readahead`): the pipeline thread takes a chunk
//! read ahead when it is the one it would read, and reads itself otherwise, so the order
//! above and everything `Source::fill` handles do not depend on it.
//!
//! Checkpoints (exactly once): every `checkpoint_interval`, and at a stop, the thread
//! encodes a checkpoint (its input offsets, the engine head, the pane cells changed since
//! the last one and the rows closed since) and hands it to the pipeline's checkpoint
//! thread (`checkpointer`), which makes the offsets durable (under `always` they are;
//! otherwise it asks for an fsync round and waits for it), commits it as one atomic sled
//! batch, flushes it, and only then turns those rows `final`. The pipeline thread goes on
//! reading meanwhile; one checkpoint is in flight at most, and one due meanwhile waits for
//! it. At a stop the final checkpoint is flushed before the thread ends. A start restores
//! the engine and offsets from it and reads on from there, so every record counts once. A
//! pipeline whose definition changed (its fingerprint) is rebuilt from the log.
//!
//! Late events go to the `late_topic`, if set, through a [`LateSink`] (see `late`):
//! noted while a batch is processed, appended once per publish round, made durable by
//! the checkpoint that passes them; a checkpoint is not encoded while some are held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::aggregate::{Aggregate, States};
use super::checkpointer::{Checkpointer, Job, Outcome};
use super::decoded::{BatchSpan, Decoded, Preparer};
use super::engine::{ClosedRow, Engine, RowSink, Spec, Taken, TimeMode};
use super::key::{Filter, GroupBy};
use super::late::LateSink;
use super::output::{OutputRows, OutputTarget};
use super::readahead::ReadAhead;
use super::view::{Hint, HotView, Row, ViewState};
use super::window::WindowKind;
use crate::config::units::millis;
use crate::config::{Config, PipelineConfig, PipelineTime, WindowConfig};
use crate::disk::DiskSpace;
use crate::log::Log;
use crate::log::partition::{Partition, ReadError, ReadPosition, Visible};
use crate::metrics as m;
use crate::prefetch::AHEAD;
use crate::store::codec::Writer;
use crate::store::{CELL_BUCKETS, Checkpoint, PipelineStore, RowWrites, Store, cell_bucket};

/// Bytes of whole batches read from one partition at a time. With a partition's next
/// chunk read and prepared ahead on another core (`readahead`), a chunk is what the
/// pipeline thread has in hand while the read-ahead thread shares its core with the
/// checkpoint thread: with 256 KiB (about 1 ms of a session rebuild's work) the pipeline
/// thread waited 0.3-0.4 s of an 8M-event rebuild for chunks, with 1 MiB 0.03-0.06 s.
/// (Before the read-ahead, 256 KiB had rebuilt ~3% faster than 1 MiB: the read's copy,
/// CRC pass and decoding then ran on the pipeline thread, in its L2.) A partition holds
/// at most two chunks: the one taken and the one read ahead.
pub const READ_CHUNK_BYTES: usize = 1 << 20;
/// Longest the thread processes before it publishes to the view: bounds how stale an
/// answer is while input keeps coming.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(10);
/// Records taken between two looks at the clock for [`PUBLISH_INTERVAL`]: tens of
/// microseconds of work, however many records the batches hold.
const CLOCK_EVERY_RECORDS: u64 = 64;
/// Shortest time between two wake-ups of an idle thread by appends. Under a stream of
/// small appends (single-event requests) the thread then takes what arrived since in one
/// go, instead of waking for every few events: each wake-up costs an
/// appender a futex wake and this thread a context switch and a publish. Adds at most
/// this to how soon an event shows; none when appends are further apart.
pub const WAKE_SPACING: Duration = Duration::from_millis(4);
/// Longest an idle thread sleeps without a wake-up: bounds how late a stop is seen.
pub const IDLE_WAIT: Duration = Duration::from_millis(200);
/// Refusals over `max_open_windows` are logged at most this often.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// While the thread is behind its input (a whole [`PUBLISH_INTERVAL`] of work and more
/// to read: a rebuild, a burst), how often the open rows it changed refresh in the view,
/// instead of at every publish. Closed rows, the watermark and the lag still publish at
/// every one. With session windows nearly every event of a rebuild changes a row no
/// earlier publish had, so copying each into the view took a quarter of the thread's
/// time, for answers the next events replaced.
pub const BEHIND_OPEN_ROWS_INTERVAL: Duration = Duration::from_secs(1);

/// Longest the thread waits after a read error before retrying.
pub const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// How often the view drops expired windows.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// The fingerprint of what a pipeline computes: a checkpoint of another definition is
/// not restored. `Debug` text is stable within a build, and a new build may rebuild.
pub fn fingerprint(c: &PipelineConfig) -> u64 {
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        c.source,
        c.filter,
        c.group_by,
        c.window,
        c.time,
        c.max_out_of_orderness,
        c.idle_timeout,
        c.allowed_lateness,
        c.aggregates
    );
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// The engine's window of a configured one.
pub fn window_kind(window: &WindowConfig) -> WindowKind {
    match *window {
        WindowConfig::Tumbling { size } => WindowKind::Tumbling {
            size_ms: millis(size),
        },
        WindowConfig::Hopping { size, slide } => WindowKind::Hopping {
            size_ms: millis(size),
            slide_ms: millis(slide),
        },
        WindowConfig::Session { gap, max_length } => WindowKind::Session {
            gap_ms: millis(gap),
            max_ms: millis(max_length),
        },
    }
}

/// The engine's spec for a configured pipeline over a topic of `partitions`.
pub fn spec_of(config: &PipelineConfig, partitions: usize) -> Spec {
    Spec {
        window: window_kind(&config.window),
        time: match config.time {
            PipelineTime::Event => TimeMode::Event,
            PipelineTime::Ingest => TimeMode::Ingest,
        },
        out_of_orderness_ms: millis(config.max_out_of_orderness),
        idle_ms: millis(config.idle_timeout),
        allowed_lateness_ms: millis(config.allowed_lateness),
        filter: Filter::new(&config.filter),
        group_by: GroupBy::new(config.group_by.clone()),
        aggregates: config
            .aggregates
            .iter()
            .map(|a| Aggregate {
                name: a.name.clone(),
                func: a.func,
                field: a.field.clone(),
                quantiles: a.quantiles.clone(),
            })
            .collect(),
        partitions,
        max_cells: config.max_open_windows,
    }
}

/// Encodes what a checkpoint of `engine` writes: the head, the cells changed since the
/// last one (taken from the engine), the closed `rows` and the retention bounds. Pure, on
/// the pipeline thread; the checkpoint thread only commits the result.
pub fn encode_checkpoint(
    engine: &mut Engine,
    offsets: Vec<i64>,
    rows: RowWrites,
    rows_again: bool,
    retain_ms: i64,
) -> Checkpoint {
    let mut head = Vec::new();
    Writer(&mut head).head(&engine.head());
    // The buckets with a changed cell, per pane; then each such bucket whole, from one
    // walk over its pane's cells (see `store`: cells are stored a bucket per value).
    let mut dirty: std::collections::BTreeMap<i64, Vec<bool>> = std::collections::BTreeMap::new();
    let sessions_kind = engine.spec().window.is_session();
    let mut mark = |pane: i64, bucket: u16| {
        dirty
            .entry(pane)
            .or_insert_with(|| vec![false; usize::from(CELL_BUCKETS)])[usize::from(bucket)] = true;
    };
    if sessions_kind {
        engine.take_unsaved_buckets(&mut mark);
    } else {
        engine.take_unsaved(|pane, key, _| mark(pane, cell_bucket(key)));
    }
    let mut cells = Vec::new();
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); usize::from(CELL_BUCKETS)];
    let mut sessions = Vec::new();
    // Sessions: the slot of the oldest open one, found by the same walk.
    let mut oldest_slot: Option<i64> = None;
    if sessions_kind {
        // One walk over the open sessions (each key's bucket kept in its slot) fills the
        // dirty buckets; every dirty bucket is written, an empty one too: its
        // sessions merged or closed.
        let mut slots: std::collections::BTreeMap<i64, (Vec<bool>, Vec<Vec<u8>>)> =
            std::mem::take(&mut dirty)
                .into_iter()
                .map(|(slot, buckets)| {
                    (slot, (buckets, vec![Vec::new(); usize::from(CELL_BUCKETS)]))
                })
                .collect();
        let window = engine.spec().window;
        // A bucket's share of the open sessions, at ~64 bytes each: room in one
        // allocation instead of a dozen grown from empty (at most 16 KiB: the sessions
        // may lie mostly in slots not written).
        let share =
            (64 * engine.cells() / (usize::from(CELL_BUCKETS) * slots.len().max(1))).min(16 << 10);
        engine.each_session(|key, bucket, start, last, end, states| {
            let slot = window.pane_of(start);
            oldest_slot = Some(oldest_slot.map_or(slot, |o| o.min(slot)));
            let Some((buckets, bufs)) = slots.get_mut(&slot) else {
                return;
            };
            let b = usize::from(bucket);
            if buckets[b] {
                if bufs[b].capacity() == 0 {
                    bufs[b].reserve(share);
                }
                let mut w = Writer(&mut bufs[b]);
                w.bytes(key);
                w.i64(start);
                w.i64(last);
                w.i64(end);
                w.states(states);
            }
        });
        for (slot, (buckets, bufs)) in slots {
            for ((bucket, buf), dirty) in (0u16..).zip(bufs).zip(buckets) {
                if dirty {
                    sessions.push((slot, bucket, buf));
                }
            }
        }
    }
    for (pane, buckets) in dirty {
        engine.pane_cells(pane, |key, states| {
            let b = usize::from(cell_bucket(key));
            if buckets[b] {
                let mut w = Writer(&mut bufs[b]);
                w.bytes(key.as_bytes());
                w.states(states);
            }
        });
        for (bucket, buf) in (0u16..).zip(bufs.iter_mut()) {
            if !buf.is_empty() {
                cells.push((pane, bucket, std::mem::take(buf)));
            }
        }
    }
    let wm = engine.watermark();
    let size = engine.spec().window.size_ms();
    let rows_before =
        (wm != super::watermark::NONE).then(|| wm.saturating_sub(retain_ms).saturating_sub(size));
    let oldest_pane = if sessions_kind {
        None
    } else {
        engine.oldest_pane()
    };
    Checkpoint {
        offsets,
        head,
        cells,
        oldest_pane,
        sessions,
        oldest_slot,
        rows,
        rows_again,
        rows_before,
        rows_slot_ms: engine.spec().window.row_slot_ms(),
        outbox: None,
    }
}

/// A running pipeline, as the rest of weir sees it.
pub struct PipelineHandle {
    pub config: PipelineConfig,
    pub view: Arc<HotView>,
    /// The result store, for windows older than the view holds (`evicted_through`).
    pub store: PipelineStore,
    /// The source topic's partitions, for lag.
    pub partitions: Vec<Arc<Partition>>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set once the lag first fell to `ready_lag`: readiness waits for that once.
    caught_up: std::sync::atomic::AtomicBool,
}

impl PipelineHandle {
    /// Whether the pipeline has caught up to within `ready_lag` since start (once true,
    /// it stays true: readiness waits for pipelines only once).
    pub fn caught_up(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.caught_up.load(Ordering::Acquire) {
            return true;
        }
        let published = self.view.read(|s| s.published);
        if published && self.lag() <= self.config.ready_lag {
            self.caught_up.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// Records between the processed offsets and the visible ends.
    pub fn lag(&self) -> u64 {
        let next = self.view.read(|s| s.next_offsets.clone());
        self.partitions
            .iter()
            .zip(next)
            .map(|(p, n)| u64::try_from(p.visible().end_offset - n).unwrap_or(0))
            .sum()
    }
}

/// Every running pipeline.
#[derive(Default)]
pub struct Pipelines {
    /// Swapped whole when a reload starts pipelines (`add`); never shrinks while running.
    list: arc_swap::ArcSwap<Vec<Arc<PipelineHandle>>>,
    /// Serialises `add` and `stop`; true once stopped, after which `add` refuses.
    changing: Mutex<bool>,
}

impl Pipelines {
    /// Starts a thread per configured pipeline, each restored from its checkpoint in
    /// `store`. `runtime` is used to wait on appends; `disk` is the free-space reserve
    /// late events are appended under. Readiness waits once for each to catch up.
    pub fn start(
        config: &Config,
        log: &Log,
        store: &Store,
        disk: &Arc<DiskSpace>,
        runtime: &Handle,
    ) -> Result<Pipelines, crate::store::StoreError> {
        let mut list = Vec::new();
        if let Err(e) = Self::start_each(
            config,
            &config.pipelines,
            log,
            store,
            disk,
            runtime,
            &mut list,
        ) {
            // Those already running stop (their final checkpoints flushed) before the
            // error is reported, so a retry finds the store closed.
            stop_all(&list);
            return Err(e);
        }
        Ok(Pipelines {
            list: arc_swap::ArcSwap::from_pointee(list),
            changing: Mutex::new(false),
        })
    }

    /// Starts `new` (pipelines of `config` not running yet, e.g. added by a reload) as
    /// `start` does, except that they do not hold readiness back while they catch up
    /// (ingest and the running pipelines are not affected by them). All or nothing: on
    /// an error the ones just started stop again (their final checkpoints flushed)
    /// before it is reported, and the running ones go on.
    pub fn add(
        &self,
        config: &Config,
        new: &[PipelineConfig],
        log: &Log,
        store: &Store,
        disk: &Arc<DiskSpace>,
        runtime: &Handle,
    ) -> Result<(), crate::store::StoreError> {
        let stopped = self.changing.lock();
        if *stopped {
            return Err(crate::store::StoreError::Start(
                "the pipelines are stopping".to_string(),
            ));
        }
        let mut started = Vec::new();
        match Self::start_each(config, new, log, store, disk, runtime, &mut started) {
            Ok(()) => {
                for p in &started {
                    p.caught_up
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                let mut list = Vec::clone(&self.list.load());
                list.extend(started);
                self.list.store(Arc::new(list));
                Ok(())
            }
            Err(e) => {
                stop_all(&started);
                Err(e)
            }
        }
    }

    fn start_each(
        config: &Config,
        new: &[PipelineConfig],
        log: &Log,
        store: &Store,
        disk: &Arc<DiskSpace>,
        runtime: &Handle,
        list: &mut Vec<Arc<PipelineHandle>>,
    ) -> Result<(), crate::store::StoreError> {
        for pc in new {
            let Some(topic) = log.topic(&pc.source) else {
                // The config check makes every source a topic.
                return Err(crate::store::StoreError::Start(format!(
                    "pipeline {:?}: no topic {:?}",
                    pc.name, pc.source
                )));
            };
            let partitions = topic.partitions.clone();
            let spec = spec_of(pc, partitions.len());
            let mut view = HotView::new(
                spec.aggregates.iter().map(|a| a.name.clone()).collect(),
                spec.window.size_ms(),
                spec.allowed_lateness_ms,
                partitions.len(),
                pc.max_view_rows,
            );
            view.quantiles = spec
                .aggregates
                .iter()
                .map(|a| a.quantiles.clone())
                .collect();
            let view = Arc::new(if spec.window.is_session() {
                view.with_sessions()
            } else {
                view
            });
            let (stop, stop_rx) = watch::channel(false);
            let event_lead_ms = config
                .topics
                .iter()
                .find(|t| t.name == pc.source)
                .map_or(i64::MAX, |t| millis(t.max_event_lead));
            let late = match &pc.late_topic {
                None => None,
                Some(name) => {
                    let Some(topic) = log.topic(name) else {
                        // The config check makes every late_topic a topic.
                        return Err(crate::store::StoreError::Start(format!(
                            "pipeline {:?}: no late_topic {name:?}",
                            pc.name
                        )));
                    };
                    Some(LateSink::new(
                        &pc.name,
                        topic,
                        Arc::clone(disk),
                        Arc::clone(log.clock()),
                        runtime.clone(),
                    ))
                }
            };
            let output = match &pc.output_topic {
                None => None,
                Some(name) => {
                    let Some(topic) = log.topic(name) else {
                        // The config check makes every output_topic a topic.
                        return Err(crate::store::StoreError::Start(format!(
                            "pipeline {:?}: no output_topic {name:?}",
                            pc.name
                        )));
                    };
                    Some(OutputTarget {
                        topic,
                        disk: Arc::clone(disk),
                        clock: Arc::clone(log.clock()),
                        runtime: runtime.clone(),
                    })
                }
            };
            let mut task = Task::new(
                pc,
                late,
                output,
                event_lead_ms,
                spec,
                store.pipeline(&pc.name),
                Arc::clone(&view),
                &partitions,
                stop_rx,
                runtime.clone(),
            )?;
            // A restored engine's watermark and open windows are in the view before the
            // listener is up: a query never sees a restored pipeline without its
            // watermark (`last_closed` would find no closed window, the seed's route
            // would answer 0).
            task.publish(false, true);
            let thread = std::thread::Builder::new()
                .name(format!("weir-pipe-{}", pc.name))
                .spawn(move || task.run())
                .map_err(|e| crate::store::StoreError::Start(e.to_string()))?;
            list.push(Arc::new(PipelineHandle {
                config: pc.clone(),
                view,
                store: store.pipeline(&pc.name),
                partitions,
                stop,
                thread: Mutex::new(Some(thread)),
                caught_up: std::sync::atomic::AtomicBool::new(false),
            }));
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<PipelineHandle>> {
        self.list
            .load()
            .iter()
            .find(|p| p.config.name == name)
            .cloned()
    }

    /// `f` of the pipeline called `name`, borrowed without taking a reference count:
    /// for the hot query paths, which answer without awaiting.
    pub fn with<R>(&self, name: &str, f: impl FnOnce(&PipelineHandle) -> R) -> Option<R> {
        let list = self.list.load();
        list.iter().find(|p| p.config.name == name).map(|p| f(p))
    }

    /// The running pipelines of this moment, in start order.
    pub fn list(&self) -> Arc<Vec<Arc<PipelineHandle>>> {
        self.list.load_full()
    }

    /// Stops every pipeline thread and waits for it. Blocking: call off the runtime.
    pub fn stop(&self) {
        let mut stopped = self.changing.lock();
        *stopped = true;
        stop_all(&self.list.load());
    }
}

fn stop_all(list: &[Arc<PipelineHandle>]) {
    for p in list {
        p.stop.send_replace(true);
    }
    for p in list {
        if let Some(t) = p.thread.lock().take()
            && t.join().is_err()
        {
            tracing::error!(pipeline = %p.config.name, "pipeline thread panicked");
        }
    }
}

/// One source partition as the thread reads it.
struct Source {
    partition: Arc<Partition>,
    rx: watch::Receiver<Visible>,
    /// Next offset to hand to the engine.
    next: i64,
    /// Whole batches read, taken up to batch number `head_batch`.
    buf: Vec<u8>,
    /// The batches and records of `buf`, prepared (see `decoded`): by the read-ahead if
    /// it read `buf`, else here.
    decoded: Decoded,
    /// The batch of `decoded` to take next: the head, if there is one.
    head_batch: usize,
    /// Where the batch after this thread's last read starts: the next read of the live
    /// tail starts there rather than looking `next` up again.
    read_at: Option<ReadPosition>,
    /// After a read error: no read before this.
    retry_at: Option<Instant>,
    /// Records retention removed before they were read, not yet told to the engine.
    lost: u64,
    /// A loss was told to the engine without a bound on its times: the next batch's
    /// gives one.
    unbounded: bool,
}

impl Source {
    /// Reads more when the buffer is used up and more is visible. Returns whether a batch
    /// is at the head.
    /// `ahead`, if running, may have read the chunk already; when a chunk is taken and
    /// more is visible, it is asked for the next one (source `index`).
    /// `preparer` prepares a chunk's records when it reads the chunk itself.
    fn fill(
        &mut self,
        pipeline: &str,
        index: usize,
        mut ahead: Option<&mut ReadAhead>,
        preparer: &Preparer,
    ) -> bool {
        if self.head().is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        self.retry_at = None;
        loop {
            let visible = *self.rx.borrow_and_update();
            if self.next >= visible.end_offset {
                return false;
            }
            let read = match ahead
                .as_deref_mut()
                .and_then(|a| a.take(index, self.next, &mut self.buf, &mut self.decoded))
            {
                Some(next) => {
                    self.read_at = None;
                    Ok(next)
                }
                None => self
                    .partition
                    .read_batches_at(
                        self.next,
                        self.read_at.take(),
                        READ_CHUNK_BYTES,
                        &mut self.buf,
                    )
                    .map(|(next, at)| {
                        self.read_at = at;
                        preparer.prepare(&self.buf, &mut self.decoded);
                        next
                    }),
            };
            match read {
                Ok(next) => {
                    self.head_batch = 0;
                    if let Some(base) = self.head().map(|h| h.base_offset) {
                        if base > self.next {
                            self.skipped(pipeline, base);
                        }
                        // The next chunk is read while this one is decoded, when more
                        // is visible and this read stopped at the chunk's size (at the
                        // visible end an append wakes the thread, which reads itself, as
                        // promptly as before). A short read was the live tail: what
                        // arrived meanwhile is a few batches, cheaper to read here than
                        // to hand to the read-ahead thread and wait for.
                        if let Some(a) = ahead
                            && self.buf.len() >= READ_CHUNK_BYTES / 2
                            && next < self.rx.borrow().end_offset
                        {
                            a.request(index, next);
                        }
                        return true;
                    }
                    if next <= self.next {
                        return false;
                    }
                    // Offsets the log holds no readable record of: the partition skipped
                    // a corrupt batch (counted and logged there).
                    self.skipped(pipeline, next);
                }
                Err(ReadError::OutOfRange { start, .. }) if self.next < start => {
                    let lost = start - self.next;
                    tracing::warn!(
                        pipeline,
                        partition = self.partition.id,
                        from = self.next,
                        to = start,
                        "retention removed records the pipeline had not read"
                    );
                    self.lost += u64::try_from(lost).unwrap_or(0);
                    self.next = start;
                }
                Err(e) => {
                    tracing::error!(pipeline, partition = self.partition.id, error = %e, "pipeline read failed; retrying");
                    self.retry_at = Some(Instant::now() + ERROR_BACKOFF);
                    return false;
                }
            }
        }
    }

    /// The log skips from `self.next` to `to` (a corrupt batch, never served): the
    /// records are lost to this pipeline as to retention, and told to the engine so the
    /// windows they could have counted in answer `complete: false`.
    fn skipped(&mut self, pipeline: &str, to: i64) {
        tracing::warn!(
            pipeline,
            partition = self.partition.id,
            from = self.next,
            to,
            "records in a corrupt batch skipped; their windows answer complete: false"
        );
        self.lost += u64::try_from(to - self.next).unwrap_or(0);
        self.next = to;
    }

    /// The batch to take next, if one was read.
    fn head(&self) -> Option<&BatchSpan> {
        self.decoded.batch(self.head_batch)
    }
}

/// Metric handles of one pipeline, resolved once.
struct PipelineMetrics {
    records_in: metrics::Counter,
    rows_out: metrics::Counter,
    late: metrics::Counter,
    lost: metrics::Counter,
    refused: metrics::Counter,
    /// Refusals already logged, and when: the error is logged at most every
    /// [`REFUSED_LOG_INTERVAL`].
    refused_logged: (u64, Option<Instant>),
    watermark: metrics::Gauge,
    open_windows: metrics::Gauge,
    view_rows: metrics::Gauge,
    lag: Vec<metrics::Gauge>,
    checkpoint_seconds: metrics::Histogram,
    checkpoint_failures: metrics::Counter,
    rows_closed: u64,
}

impl PipelineMetrics {
    fn new(name: &str, partitions: usize) -> PipelineMetrics {
        let l = || [("pipeline", name.to_string())];
        PipelineMetrics {
            records_in: metrics::counter!(m::PIPELINE_RECORDS_IN, &l()),
            rows_out: metrics::counter!(m::PIPELINE_ROWS_OUT, &l()),
            late: metrics::counter!(m::PIPELINE_LATE, &l()),
            lost: metrics::counter!(m::PIPELINE_RECORDS_LOST, &l()),
            refused: metrics::counter!(m::PIPELINE_REFUSED, &l()),
            refused_logged: (0, None),
            watermark: metrics::gauge!(m::PIPELINE_WATERMARK, &l()),
            open_windows: metrics::gauge!(m::PIPELINE_OPEN_WINDOWS, &l()),
            view_rows: metrics::gauge!(m::PIPELINE_VIEW_ROWS, &l()),
            lag: (0..partitions)
                .map(|p| {
                    let labels = [("pipeline", name.to_string()), ("partition", p.to_string())];
                    metrics::gauge!(m::PIPELINE_LAG, &labels)
                })
                .collect(),
            checkpoint_seconds: metrics::histogram!(m::PIPELINE_CHECKPOINT_SECONDS, &l()),
            checkpoint_failures: metrics::counter!(m::PIPELINE_CHECKPOINT_FAILURES, &l()),
            rows_closed: 0,
        }
    }
}

/// What the thread owns.
struct Task {
    metrics: PipelineMetrics,
    name: String,
    engine: Engine,
    view: Arc<HotView>,
    sources: Vec<Source>,
    stop: watch::Receiver<bool>,
    runtime: Handle,
    retain_ms: i64,
    /// How far past its append time an event time of the source can be (the topic's
    /// `max_event_lead`): bounds the times of records lost to retention.
    event_lead_ms: i64,
    /// The checkpoint thread; `None` once finished at the stop.
    checkpointer: Option<Checkpointer>,
    checkpoint_interval: Duration,
    /// Rows closed since the last checkpoint: written by the next, then final.
    pending_rows: RowWrites,
    /// The last committed checkpoint's row list, emptied: `pending_rows` once the next
    /// checkpoint takes that (two lists go back and forth).
    spare_rows: RowWrites,
    /// `pending_rows` may hold rows a checkpoint wrote before: a failed one's (its batch
    /// may have been applied), or, at the start, anything (see `Checkpoint::rows_again`).
    rows_again: bool,
    /// The sequence number the next checkpoint handed over takes; rows closed now are
    /// final once it (or a later one, which holds them if it fails) is durable.
    checkpoint_seq: u64,
    /// At this many pending rows the thread takes no input until a checkpoint has them
    /// (`limits::PENDING_ROWS_MAX`).
    pending_rows_max: usize,
    /// Anything taken since the last checkpoint.
    unsaved: bool,
    /// Where late events go, if the pipeline has a `late_topic`.
    late: Option<LateSink>,
    /// When the thread started and the offsets it started from, until the first time
    /// nothing is left to read: then it logs how long catching up took.
    catching_up: Option<(Instant, Vec<i64>)>,
    /// The rows changed for the `output_topic`, if set, and the flag its checkpoint-thread
    /// side sets while the topic refuses them (see `output`).
    output: Option<(OutputRows, Arc<AtomicBool>)>,
    /// The thread reading the sources' next chunks ahead, started by `run`; dropped
    /// (joined) when the task ends. `None`: the thread reads itself.
    ahead: Option<ReadAhead>,
    /// Prepares the records of a chunk (the engine's filter, key and hasher), for the
    /// read-ahead and for the chunks this thread reads itself.
    preparer: Preparer,
    /// When an append last woke the idle thread (see [`WAKE_SPACING`]).
    last_woken: Instant,
    /// When the open rows last went to the view (see [`BEHIND_OPEN_ROWS_INTERVAL`]).
    open_published: Instant,
    /// Open rows changed since then wait for the next (the thread is behind).
    open_stale: bool,
    /// `publish`'s lists, empty between calls, kept for their allocations: with
    /// sessions a round closes thousands of rows.
    buffers: PublishBuffers,
}

/// See [`Task::buffers`].
#[derive(Default)]
struct PublishBuffers {
    closed: Vec<ClosedRow>,
    rows: Vec<Publish>,
}

impl PublishBuffers {
    /// Most entries a list keeps its allocation for (a rebuild's round of sessions
    /// closes about 5,000 rows; a list this long takes about 1.3 MB); a larger one (a
    /// burst) is freed.
    const KEEP: usize = 1 << 14;

    fn recycle<T>(list: &mut Vec<T>) {
        list.clear();
        if list.capacity() > Self::KEEP {
            *list = Vec::new();
        }
    }
}

impl Task {
    #[allow(clippy::too_many_arguments, reason = "one call site, all distinct")]
    fn new(
        config: &PipelineConfig,
        late: Option<LateSink>,
        output: Option<OutputTarget>,
        event_lead_ms: i64,
        spec: Spec,
        store: PipelineStore,
        view: Arc<HotView>,
        partitions: &[Arc<Partition>],
        stop: watch::Receiver<bool>,
        runtime: Handle,
    ) -> Result<Task, crate::store::StoreError> {
        // A pipeline reads from offset 0 (or its checkpoint), not from the start offset:
        // records retention removed before it read them are found by the first read and
        // counted as lost, so a pipeline defined after retention ran does not claim
        // complete windows it could not see.
        let mut starts: Vec<i64> = vec![0; partitions.len()];
        let fp = fingerprint(config);
        // The store is derived from the log: whatever of it cannot be used is rebuilt.
        let rebuild = |why: &str, error: Option<&dyn std::fmt::Display>| {
            match error {
                Some(e) => {
                    tracing::error!(pipeline = %config.name, error = %e, "{why}; rebuilding from the log")
                }
                None => tracing::warn!(pipeline = %config.name, "{why}; rebuilding from the log"),
            }
            store.reset(fp)
        };
        let restored = match store.restore(fp, spec.out_of_orderness_ms, spec.idle_ms) {
            // Offsets past a visible end mean the log lost what the checkpoint read (it
            // never should: offsets are made durable first).
            Ok(Some(r))
                if r.offsets.len() != partitions.len()
                    || r.offsets
                        .iter()
                        .zip(partitions)
                        .any(|(o, p)| *o > p.visible().end_offset) =>
            {
                rebuild("the checkpoint does not fit the log", None)?;
                None
            }
            Ok(r) => r,
            Err(e) if e.is_corruption() => {
                rebuild("the checkpoint cannot be read", Some(&e))?;
                None
            }
            Err(e) => return Err(e),
        };
        let restored = match restored.map(|r| (store.rows(view.max_rows), r)) {
            Some((Ok(rows), r)) => Some((r, rows)),
            Some((Err(e), _)) if e.is_corruption() => {
                rebuild("the closed rows cannot be read", Some(&e))?;
                None
            }
            Some((Err(e), _)) => return Err(e),
            None => None,
        };
        let from_checkpoint = restored.is_some();
        let engine = match restored {
            Some((r, (rows, left_out))) => {
                tracing::info!(pipeline = %config.name, cells = r.cells.len(), "pipeline restored from its checkpoint");
                starts.clone_from(&r.offsets);
                view.write(|v| {
                    v.evicted_through = left_out;
                    for row in rows {
                        v.upsert(
                            row.start_ms,
                            &row.key,
                            Row::closed(
                                row.end_ms,
                                States::from_vec(row.values),
                                row.complete,
                                Row::FINAL,
                            ),
                        );
                    }
                });
                let mut engine = Engine::restore(spec, r.head, r.cells);
                for session in r.sessions {
                    engine.restore_session(session);
                }
                engine
            }
            None => {
                tracing::info!(pipeline = %config.name,
                    "no checkpoint of this definition: building the pipeline from the log");
                Engine::new(spec)
            }
        };
        let sources = partitions
            .iter()
            .zip(starts)
            .map(|(p, next)| Source {
                partition: Arc::clone(p),
                rx: p.subscribe(),
                next,
                buf: Vec::new(),
                decoded: Decoded::default(),
                head_batch: 0,
                read_at: None,
                retry_at: None,
                lost: 0,
                unbounded: false,
            })
            .collect();
        let metrics = PipelineMetrics::new(&config.name, partitions.len());
        let aggregates = config
            .aggregates
            .iter()
            .map(|a| (a.name.clone(), a.quantiles.clone()))
            .collect();
        let (output, sink) = match output {
            Some(o) => {
                let (rows, sink) = o.open(&config.name, fp, aggregates, &store, from_checkpoint);
                (Some((rows, sink.stalled())), Some(sink))
            }
            None => (None, None),
        };
        let checkpointer = Checkpointer::start(
            &config.name,
            store,
            Arc::clone(&view),
            partitions.to_vec(),
            metrics.checkpoint_seconds.clone(),
            metrics.checkpoint_failures.clone(),
            sink,
        )
        .map_err(|e| crate::store::StoreError::Start(e.to_string()))?;
        let preparer = engine.preparer();
        Ok(Task {
            metrics,
            name: config.name.clone(),
            engine,
            view,
            sources,
            stop,
            runtime,
            retain_ms: millis(config.retain_results),
            event_lead_ms,
            checkpointer: Some(checkpointer),
            checkpoint_interval: config.checkpoint_interval,
            pending_rows: RowWrites::default(),
            spare_rows: RowWrites::default(),
            // The first checkpoint after a start looks at the stored rows, though none
            // should repeat (sled keeps a batch whole or not at all, its head with it):
            // a start costs one merge that decodes (see `Checkpoint::rows_again`).
            rows_again: true,
            checkpoint_seq: 1,
            pending_rows_max: pending_rows_max(),
            unsaved: true,
            late,
            catching_up: None,
            output,
            ahead: None,
            preparer,
            last_woken: Instant::now(),
            open_published: Instant::now(),
            open_stale: false,
            buffers: PublishBuffers::default(),
        })
    }

    fn run(mut self) {
        tracing::info!(pipeline = %self.name, "pipeline started");
        #[cfg(feature = "fail")]
        if let Some(ms) = std::env::var("WEIR_TEST_PIPELINE_START_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            // Tests only: the thread starts late, as under load, to show what queries
            // answer before it first runs.
            std::thread::sleep(Duration::from_millis(ms));
        }
        self.ahead = ReadAhead::start(
            &self.name,
            self.sources
                .iter()
                .map(|s| Arc::clone(&s.partition))
                .collect(),
            self.preparer.clone(),
        );
        self.catching_up = Some((
            Instant::now(),
            self.sources.iter().map(|s| s.next).collect(),
        ));
        let mut last_prune = Instant::now();
        let mut last_checkpoint = Instant::now();
        while !*self.stop.borrow() {
            self.collect(false);
            let started = Instant::now();
            let mut taken = 0usize;
            // At least one step a round (a thread kept off its core past the interval
            // would otherwise end the round with input waiting and sleep); still more
            // to read when the interval is up: behind.
            let mut behind = true;
            // Stopped by closed rows at their bound rather than by the end of the input.
            let mut held = false;
            // Records taken since the clock was last read: it is read every
            // `CLOCK_EVERY_RECORDS`, not after every batch (with one record per batch, a
            // read per batch was 3% of the thread).
            let mut unclocked = 0;
            loop {
                let Some(records) = self.step() else {
                    behind = false;
                    held = self.rows_full();
                    break;
                };
                taken += 1;
                unclocked += records;
                if unclocked >= CLOCK_EVERY_RECORDS {
                    unclocked = 0;
                    if started.elapsed() >= PUBLISH_INTERVAL {
                        break;
                    }
                }
            }
            if let Some(late) = &mut self.late {
                late.flush(false);
            }
            self.unsaved |= taken > 0;
            let prune = last_prune.elapsed() >= PRUNE_INTERVAL;
            if taken > 0 || prune {
                let open = !behind || self.open_published.elapsed() >= BEHIND_OPEN_ROWS_INTERVAL;
                self.publish(prune, open);
                if prune {
                    last_prune = Instant::now();
                }
            }
            // One in flight: this one is due again as soon as that one is reported. Too
            // many closed rows waiting make it due sooner (not at once: a failing one is
            // not retried in a loop).
            let due = if self.rows_full() {
                self.checkpoint_interval.min(FORCED_CHECKPOINT_INTERVAL)
            } else {
                self.checkpoint_interval
            };
            if last_checkpoint.elapsed() >= due && self.checkpoint() {
                last_checkpoint = Instant::now();
            }
            if taken == 0 {
                if !self.rows_full() {
                    // Unless the checkpoint just sent took the rows that held the input
                    // back: then read on.
                    if !held {
                        self.wait();
                    }
                } else if self
                    .checkpointer
                    .as_ref()
                    .is_some_and(Checkpointer::in_flight)
                {
                    // No input until the checkpoint in flight is reported and the next
                    // one takes the rows.
                    self.collect(true);
                } else {
                    // No input until the next checkpoint takes the rows: it is due soon
                    // (an append would not wake a thread that cannot take it).
                    let until = due.saturating_sub(last_checkpoint.elapsed());
                    std::thread::sleep(until.max(Duration::from_millis(1)));
                }
            }
        }
        self.publish(false, true);
        if let Some(late) = &mut self.late
            && !late.flush(true)
        {
            tracing::warn!(pipeline = %self.name, "late events not appended at the stop; the last checkpoint stands and the restart appends them");
        }
        // The final checkpoint is flushed before the thread ends, so before `Log::close`.
        self.collect(true);
        self.checkpoint();
        self.collect(true);
        if let Some(c) = self.checkpointer.take() {
            c.finish();
        }
        // Ends and joins the read-ahead thread.
        self.ahead = None;
        tracing::info!(pipeline = %self.name, "pipeline stopped");
    }

    /// Whether closed rows wait for a checkpoint up to the bound: memory stays bounded
    /// when the checkpoint thread (sled) is slower than the input closes rows.
    fn rows_full(&self) -> bool {
        self.checkpointer.is_some() && self.pending_rows.len() >= self.pending_rows_max
    }

    /// Takes the next batch in read order: how many records it handed to the engine (at
    /// least 1), or `None` when none is visible.
    fn step(&mut self) -> Option<u64> {
        if self.late.as_ref().is_some_and(LateSink::blocked)
            || self.output_stalled()
            || self.rows_full()
        {
            return None;
        }
        // The head batch that goes next, by (append time, partition, base offset).
        let mut best: Option<((i64, usize, i64), BatchSpan)> = None;
        for (i, s) in self.sources.iter_mut().enumerate() {
            let filled = s.fill(&self.name, i, self.ahead.as_mut(), &self.preparer);
            Self::tell_loss(&mut self.engine, s, self.event_lead_ms);
            if !filled {
                continue;
            }
            if let Some(&h) = s.head() {
                let order = (h.append_ms, i, h.base_offset);
                if best.is_none_or(|(b, _)| order < b) {
                    best = Some((order, h));
                }
            }
        }
        let Some(((_, i, _), batch)) = best else {
            self.log_caught_up();
            return None;
        };
        let s = &mut self.sources[i];
        let taken = u64::try_from(batch.last_offset - s.next + 1).unwrap_or(1);
        let partition = s.partition.id;
        let records = s.decoded.inputs(&s.buf, s.head_batch, s.next);
        let mut late = self.late.as_mut();
        self.engine
            .process_batch(partition, batch.append_ms, records, |input, taken| {
                if let (Some(late), Taken::Late) = (&mut late, taken) {
                    late.note(input.offset);
                }
            });
        if let Some(late) = late {
            late.take(&s.buf[batch.start as usize..batch.end as usize]);
        }
        s.next = batch.last_offset + 1;
        s.head_batch += 1;
        Some(taken.max(1))
    }

    /// The first time nothing is left to read since the start (lag 0, as far as the
    /// thread can see): logs how many records that took and how long (after a rebuild,
    /// how fast the pipeline reads the log).
    fn log_caught_up(&mut self) {
        let Some((started, starts)) = self.catching_up.take() else {
            return;
        };
        let records: i64 = self
            .sources
            .iter()
            .zip(&starts)
            .map(|(s, start)| s.next - start)
            .sum();
        let seconds = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss, reason = "a rate in a log line")]
        let per_second = (records as f64 / seconds.max(1e-9)).round();
        tracing::info!(
            pipeline = %self.name,
            records,
            seconds,
            per_second,
            "pipeline caught up with its source"
        );
    }

    /// Tells the engine of records `s` lost to retention, at this point of the input so
    /// a replay of the same log marks the same windows. The bound on their times: they
    /// were appended before the batch now at the head of `s` (append times of a
    /// partition do not go back), and an event time is at most the topic's
    /// `max_event_lead` past its ingest (ingest time: the append time itself). With no
    /// batch after the loss yet, the taint stays open-ended until one arrives.
    fn tell_loss(engine: &mut Engine, s: &mut Source, event_lead_ms: i64) {
        let bound = s.head().map(|h| match engine.spec().time {
            TimeMode::Event => h.append_ms.saturating_add(event_lead_ms),
            TimeMode::Ingest => h.append_ms,
        });
        let partition = s.partition.id;
        if s.lost > 0 {
            engine.note_loss(partition, std::mem::take(&mut s.lost), bound);
            s.unbounded = bound.is_none();
        } else if s.unbounded
            && let Some(b) = bound
        {
            engine.bound_loss(partition, b);
            s.unbounded = false;
        }
    }

    /// Hands what changed to the view under one write lock: the closed rows gathered
    /// before it, the changed open rows read from the engine while it is held (no copy
    /// of each key in between: with sessions that is a row per event).
    fn publish(&mut self, prune: bool, open: bool) {
        let PublishBuffers {
            mut closed,
            mut rows,
        } = std::mem::take(&mut self.buffers);
        let removed = self.engine.take_removed();
        // The engine encoded them for the checkpoint as they closed.
        self.engine.swap_closed(&mut closed, &mut self.pending_rows);
        for c in closed.drain(..) {
            self.metrics.rows_closed += 1;
            if let Some((out, _)) = &mut self.output {
                out.closed(c.start_ms, &c.key, c.end_ms, &c.values);
            }
            rows.push((
                c.start_ms,
                c.key,
                Row::closed(c.end_ms, c.values, c.complete, self.checkpoint_seq),
                c.view,
                c.id,
            ));
        }
        let watermark = self.engine.watermark();
        let open_windows = self.engine.open_windows();
        let state_bytes = self.engine.state_bytes();
        let next_offsets: Vec<i64> = self.sources.iter().map(|s| s.next).collect();
        let retain_ms = self.retain_ms;
        let max_rows = self.view.max_rows;
        let c = self.engine.counters();
        let max_cells = self.engine.spec().max_cells;
        let pm = &mut self.metrics;
        pm.lost.absolute(c.lost);
        pm.refused.absolute(c.refused);
        let (logged, at) = pm.refused_logged;
        if c.refused > logged && at.is_none_or(|t| t.elapsed() >= REFUSED_LOG_INTERVAL) {
            tracing::error!(pipeline = %self.name, refused = c.refused - logged, max_open_windows = max_cells,
                "events refused: the pipeline holds max_open_windows (window, key) states; their windows answer complete: false");
            pm.refused_logged = (c.refused, Some(Instant::now()));
        }
        pm.records_in
            .absolute(c.counted + c.filtered + c.late + c.no_key + c.refused);
        pm.late.absolute(c.late);
        pm.rows_out.absolute(pm.rows_closed);
        if watermark != super::watermark::NONE {
            #[allow(clippy::cast_precision_loss, reason = "a gauge")]
            pm.watermark.set(watermark as f64 / 1000.0);
        }
        #[allow(clippy::cast_precision_loss, reason = "a gauge")]
        pm.open_windows.set(open_windows as f64);
        for (s, g) in self.sources.iter().zip(&pm.lag) {
            #[allow(clippy::cast_precision_loss, reason = "a gauge")]
            g.set((s.partition.visible().end_offset - s.next).max(0) as f64);
        }
        let (engine, output) = (&mut self.engine, &mut self.output);
        let view_rows = self.view.write(|v| {
            for (start, key) in &removed {
                v.remove(*start, key);
            }
            if open {
                // Their output rows too: an `output_topic` gets the open rows changed by
                // every checkpoint's offsets (see `checkpoint`).
                engine.take_changed_rows(&mut OpenRows {
                    view: v,
                    output: output.as_mut().map(|(o, _)| o),
                });
            }
            let mut rows = rows.drain(..);
            while let Some((start, key, row, at, id)) = rows.next() {
                // The hints of the rows `n` places on, among those not applied yet.
                let ahead = rows.as_slice();
                let hint = |n: usize| ahead.get(n - 1).map_or(Hint::NONE, |r| r.3);
                v.prefetch_ahead(hint(AHEAD), hint(AHEAD / 2));
                let now = v.upsert_hinted(start, &key, row, at);
                // A key's next sessions often close before the open rows tell it again
                // (a round of open rows a second while behind): without this each would
                // look the key up.
                if now != at && id != ClosedRow::NO_ID {
                    engine.view_moved(id, &key, now);
                }
            }
            v.watermark = watermark;
            v.open_windows = open_windows;
            v.state_bytes = state_bytes;
            v.next_offsets = next_offsets;
            v.published = true;
            if prune || v.rows() > max_rows {
                v.prune(retain_ms, max_rows);
            }
            v.rows()
        });
        #[allow(clippy::cast_precision_loss, reason = "a gauge")]
        pm.view_rows.set(view_rows as f64);
        PublishBuffers::recycle(&mut closed);
        PublishBuffers::recycle(&mut rows);
        self.buffers = PublishBuffers { closed, rows };
        if open {
            self.open_published = Instant::now();
        }
        self.open_stale = !open;
    }

    /// Encodes a checkpoint if anything was taken since the last one and hands it to the
    /// checkpoint thread, which makes the offsets durable, commits and flushes it, then
    /// turns its rows final. Returns false (nothing done) while one is still in flight.
    fn checkpoint(&mut self) -> bool {
        let stalled = self.output_stalled();
        let Some(checkpointer) = &self.checkpointer else {
            return true;
        };
        if checkpointer.in_flight() {
            return false;
        }
        // A stalled output_topic is retried through checkpoints (see `output`).
        if !self.unsaved && !stalled {
            return true;
        }
        // Its offsets would pass late events not in the late topic yet.
        if self.late.as_ref().is_some_and(LateSink::holding) {
            return false;
        }
        if self.open_stale && self.output.is_some() {
            self.publish(false, true);
        }
        let Some(checkpointer) = &mut self.checkpointer else {
            return true;
        };
        let started = Instant::now();
        let offsets: Vec<i64> = self.sources.iter().map(|s| s.next).collect();
        let checkpoint = encode_checkpoint(
            &mut self.engine,
            offsets,
            std::mem::replace(&mut self.pending_rows, std::mem::take(&mut self.spare_rows)),
            self.rows_again,
            self.retain_ms,
        );
        let late = self.late.as_ref().map(LateSink::ends).unwrap_or_default();
        let outbox = self.output.as_mut().map(|(o, _)| o.encode(&self.engine));
        match checkpointer.submit(Job {
            checkpoint,
            seq: self.checkpoint_seq,
            started,
            late,
            outbox,
        }) {
            None => {
                self.unsaved = false;
                self.checkpoint_seq += 1;
            }
            // Not handed over (the thread is gone): keep everything for the next.
            Some(job) => self.not_written(job.checkpoint.rows),
        }
        true
    }

    /// Takes the outcome of the checkpoint in flight (`wait`: waits for it). A failure
    /// leaves the previous checkpoint standing; the next one writes its rows again and
    /// every cell.
    fn collect(&mut self, wait: bool) {
        let Some(checkpointer) = &mut self.checkpointer else {
            return;
        };
        match checkpointer.outcome(wait) {
            Some(Outcome::Failed { rows }) => self.not_written(rows),
            Some(Outcome::Committed { spare }) => {
                // Everything it held is written; rows closed since are new.
                self.rows_again = false;
                // Kept while rows close at a rebuild's pace; once they close at a live
                // pace, a list a rebuild grew is given back.
                if spare.capacity() <= SPARE_ROWS_KEEP.max(4 * self.pending_rows.len()) {
                    self.spare_rows = spare;
                }
                if let Some((o, _)) = &mut self.output {
                    o.committed();
                }
            }
            None => {}
        }
    }

    /// A checkpoint was not written: the next one writes its `rows` (before those closed
    /// since) and every cell again. Its batch may have been applied, so the next looks
    /// for its rows among the stored ones (`rows_again`).
    fn not_written(&mut self, mut rows: RowWrites) {
        rows.append(&mut self.pending_rows);
        self.pending_rows = rows;
        self.rows_again = true;
        self.engine.mark_all_unsaved();
        self.unsaved = true;
        if let Some((o, _)) = &mut self.output {
            o.failed();
        }
    }

    /// Whether the output_topic refuses the rows of the last checkpoint: no input.
    fn output_stalled(&self) -> bool {
        self.output
            .as_ref()
            .is_some_and(|(_, stalled)| stalled.load(Ordering::Acquire))
    }

    /// Sleeps out what is left of [`WAKE_SPACING`] since the last wake, then, unless
    /// something arrived meanwhile, parks until a source partition's visible end moves, a
    /// stop, or [`IDLE_WAIT`] (stalled on the late topic: no input is taken, so appends
    /// do not wake it).
    fn wait(&mut self) {
        let since = self.last_woken.elapsed();
        if since < WAKE_SPACING {
            std::thread::sleep(WAKE_SPACING - since);
        }
        let stalled = self.late.as_ref().is_some_and(LateSink::blocked) || self.output_stalled();
        // Under a stream of appends something arrived meanwhile: no need to park (nor to
        // register a tokio timer, which wakes the runtime's driver).
        let arrived = !stalled
            && self
                .sources
                .iter()
                .any(|s| s.retry_at.is_none() && s.rx.has_changed().unwrap_or(false));
        if !arrived && !self.stop.has_changed().unwrap_or(true) {
            self.park(stalled);
        }
        self.last_woken = Instant::now();
    }

    /// Parks until a source partition's visible end moves, a stop, or [`IDLE_WAIT`].
    fn park(&mut self, stalled: bool) {
        let Task { sources, stop, .. } = self;
        let mut stop = stop.clone();
        self.runtime.block_on(async move {
            let mut waits: Vec<_> = sources
                .iter_mut()
                .filter(|s| s.retry_at.is_none() && !stalled)
                .map(|s| Box::pin(s.rx.changed()))
                .collect();
            let any = std::future::poll_fn(|cx| {
                for w in &mut waits {
                    if w.as_mut().poll(cx).is_ready() {
                        return std::task::Poll::Ready(());
                    }
                }
                std::task::Poll::Pending
            });
            tokio::select! {
                () = any => {}
                _ = stop.changed() => {}
                () = tokio::time::sleep(IDLE_WAIT) => {}
            }
        });
    }
}

/// The changed open rows on their way into the view (under its write lock), and into the
/// output_topic's list if the pipeline has one.
struct OpenRows<'a> {
    view: &'a mut ViewState,
    output: Option<&'a mut OutputRows>,
}

impl RowSink for OpenRows<'_> {
    fn row(
        &mut self,
        start: i64,
        end_ms: i64,
        key: &Arc<str>,
        values: States,
        complete: bool,
        hint: Hint,
    ) -> Hint {
        if let Some(out) = self.output.as_deref_mut() {
            out.open(start, key);
        }
        self.view
            .upsert_hinted(start, key, Row::open(end_ms, values, complete), hint)
    }

    fn ahead(&mut self, far: Hint, near: Hint) {
        self.view.prefetch_ahead(far, near);
    }
}

/// A closed row for the view: window start, key, the row, where the view holds the
/// key's rows (sessions), if the engine knows, and the key's id there.
type Publish = (i64, Arc<str>, Row, Hint, u32);

/// Rows a spare row list keeps room for whatever the pace (see `Task::collect`).
const SPARE_ROWS_KEEP: usize = 4096;

/// How soon a checkpoint is due while closed rows are at their bound.
const FORCED_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);

/// `limits::PENDING_ROWS_MAX`; with the `fail` feature (tests only, never in a release
/// build) `WEIR_TEST_PENDING_ROWS_MAX` sets a small one.
fn pending_rows_max() -> usize {
    #[cfg(feature = "fail")]
    if let Some(n) = std::env::var("WEIR_TEST_PENDING_ROWS_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    crate::limits::PENDING_ROWS_MAX
}
