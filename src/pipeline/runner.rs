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
//! Stage 1 keeps no checkpoint: a start reads every partition from its start offset.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::aggregate::Aggregate;
use super::engine::{Engine, Input, Spec, TimeMode};
use super::key::{Filter, GroupBy};
use super::view::{HotView, Row};
use super::window::WindowKind;
use crate::config::{Config, PipelineConfig, PipelineTime, WindowConfig};
use crate::log::Log;
use crate::log::batches::BatchView;
use crate::log::partition::{Partition, ReadError, Visible};

/// Bytes of whole batches read from one partition at a time.
pub const READ_CHUNK_BYTES: usize = 1 << 20;
/// Longest the thread processes before it publishes to the view: bounds how stale an
/// answer is while input keeps coming.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(10);
/// Longest an idle thread sleeps without a wake-up: bounds how late a stop is seen.
pub const IDLE_WAIT: Duration = Duration::from_millis(200);
/// Longest the thread waits after a read error before retrying.
pub const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// How often the view drops expired windows.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// The engine's spec for a configured pipeline over a topic of `partitions`.
pub fn spec_of(config: &PipelineConfig, partitions: usize) -> Spec {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    Spec {
        window: match config.window {
            WindowConfig::Tumbling { size } => WindowKind::Tumbling { size_ms: ms(size) },
            WindowConfig::Hopping { size, slide } => WindowKind::Hopping {
                size_ms: ms(size),
                slide_ms: ms(slide),
            },
        },
        time: match config.time {
            PipelineTime::Event => TimeMode::Event,
            PipelineTime::Ingest => TimeMode::Ingest,
        },
        out_of_orderness_ms: ms(config.max_out_of_orderness),
        idle_ms: ms(config.idle_timeout),
        allowed_lateness_ms: ms(config.allowed_lateness),
        filter: Filter::new(&config.filter),
        group_by: GroupBy::new(config.group_by.clone()),
        aggregates: config
            .aggregates
            .iter()
            .map(|a| Aggregate {
                name: a.name.clone(),
                func: a.func,
                field: a.field.clone(),
            })
            .collect(),
        partitions,
    }
}

/// A running pipeline, as the rest of weir sees it.
pub struct PipelineHandle {
    pub config: PipelineConfig,
    pub view: Arc<HotView>,
    /// The source topic's partitions, for lag.
    pub partitions: Vec<Arc<Partition>>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PipelineHandle {
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

/// Every configured pipeline.
#[derive(Default)]
pub struct Pipelines {
    list: Vec<Arc<PipelineHandle>>,
}

impl Pipelines {
    /// Starts a thread per configured pipeline. `runtime` is used to wait on appends.
    pub fn start(config: &Config, log: &Log, runtime: &Handle) -> std::io::Result<Pipelines> {
        let mut list = Vec::new();
        for pc in &config.pipelines {
            let Some(topic) = log.topic(&pc.source) else {
                // The config check makes every source a topic.
                return Err(std::io::Error::other(format!(
                    "pipeline {:?}: no topic {:?}",
                    pc.name, pc.source
                )));
            };
            let partitions = topic.partitions.clone();
            let spec = spec_of(pc, partitions.len());
            let view = Arc::new(HotView::new(
                spec.aggregates.iter().map(|a| a.name.clone()).collect(),
                spec.window.size_ms(),
                spec.allowed_lateness_ms,
                partitions.len(),
            ));
            let (stop, stop_rx) = watch::channel(false);
            let task = Task::new(
                pc,
                Engine::new(spec),
                Arc::clone(&view),
                &partitions,
                stop_rx,
                runtime.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("weir-pipe-{}", pc.name))
                .spawn(move || task.run())?;
            list.push(Arc::new(PipelineHandle {
                config: pc.clone(),
                view,
                partitions,
                stop,
                thread: Mutex::new(Some(thread)),
            }));
        }
        Ok(Pipelines { list })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<PipelineHandle>> {
        self.list.iter().find(|p| p.config.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<PipelineHandle>> {
        self.list.iter()
    }

    /// Stops every pipeline thread and waits for it. Blocking: call off the runtime.
    pub fn stop(&self) {
        for p in &self.list {
            p.stop.send_replace(true);
        }
        for p in &self.list {
            if let Some(t) = p.thread.lock().take()
                && t.join().is_err()
            {
                tracing::error!(pipeline = %p.config.name, "pipeline thread panicked");
            }
        }
    }
}

/// One source partition as the thread reads it.
struct Source {
    partition: Arc<Partition>,
    rx: watch::Receiver<Visible>,
    /// Next offset to hand to the engine.
    next: i64,
    /// Whole batches read and not yet taken, from `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// The batch at `pos`: (append time, base offset, length).
    head: Option<(i64, i64, usize)>,
    /// After a read error: no read before this.
    retry_at: Option<Instant>,
}

impl Source {
    /// Reads more when the buffer is used up and more is visible. Returns whether a batch
    /// is at the head.
    fn fill(&mut self, pipeline: &str, missed: &mut u64) -> bool {
        if self.head.is_some() {
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
            match self
                .partition
                .read_batches(self.next, READ_CHUNK_BYTES, &mut self.buf)
            {
                Ok(next) => {
                    self.pos = 0;
                    self.set_head();
                    if self.head.is_some() {
                        return true;
                    }
                    if next == self.next {
                        return false;
                    }
                    // A segment held nothing more: on to the next one.
                    self.next = next;
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
                    *missed += u64::try_from(lost).unwrap_or(0);
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

    fn set_head(&mut self) {
        self.head = self
            .buf
            .get(self.pos..)
            .and_then(BatchView::parse)
            .map(|(v, len)| (v.append_ms, v.base_offset, len));
    }
}

/// What the thread owns.
struct Task {
    name: String,
    engine: Engine,
    view: Arc<HotView>,
    sources: Vec<Source>,
    stop: watch::Receiver<bool>,
    runtime: Handle,
    retain_ms: i64,
    /// Records retention removed before they were read.
    missed: u64,
}

impl Task {
    fn new(
        config: &PipelineConfig,
        engine: Engine,
        view: Arc<HotView>,
        partitions: &[Arc<Partition>],
        stop: watch::Receiver<bool>,
        runtime: Handle,
    ) -> Task {
        let sources = partitions
            .iter()
            .map(|p| Source {
                partition: Arc::clone(p),
                rx: p.subscribe(),
                next: p.start_offset(),
                buf: Vec::new(),
                pos: 0,
                head: None,
                retry_at: None,
            })
            .collect();
        Task {
            name: config.name.clone(),
            engine,
            view,
            sources,
            stop,
            runtime,
            retain_ms: i64::try_from(config.retain_results.as_millis()).unwrap_or(i64::MAX),
            missed: 0,
        }
    }

    fn run(mut self) {
        tracing::info!(pipeline = %self.name, "pipeline started");
        let mut last_prune = Instant::now();
        while !*self.stop.borrow() {
            let started = Instant::now();
            let mut taken = 0usize;
            while started.elapsed() < PUBLISH_INTERVAL && self.step() {
                taken += 1;
            }
            let prune = last_prune.elapsed() >= PRUNE_INTERVAL;
            if taken > 0 || prune {
                self.publish(prune);
                if prune {
                    last_prune = Instant::now();
                }
            }
            if taken == 0 {
                self.wait();
            }
        }
        tracing::info!(pipeline = %self.name, "pipeline stopped");
    }

    /// Takes the next batch in read order. Returns false when none is visible.
    fn step(&mut self) -> bool {
        let mut best: Option<(i64, usize, i64)> = None;
        for (i, s) in self.sources.iter_mut().enumerate() {
            if !s.fill(&self.name, &mut self.missed) {
                continue;
            }
            if let Some((append_ms, base, _)) = s.head
                && best.is_none_or(|b| (append_ms, i, base) < b)
            {
                best = Some((append_ms, i, base));
            }
        }
        let Some((_, i, _)) = best else {
            return false;
        };
        let s = &mut self.sources[i];
        let Some((view, len)) = s.buf.get(s.pos..).and_then(BatchView::parse) else {
            s.head = None;
            return true;
        };
        let partition = s.partition.id;
        let records = view.records_from(s.next).map(|r| Input {
            offset: r.offset,
            event_ms: r.timestamp_ms,
            event_type: std::str::from_utf8(r.event_type).unwrap_or(""),
            envelope: std::str::from_utf8(r.value).unwrap_or(""),
        });
        self.engine
            .process_batch(partition, view.append_ms, records, |_, _| {});
        s.next = view.last_offset + 1;
        s.pos += len;
        s.set_head();
        true
    }

    /// Hands what changed to the view: values gathered first, then one write lock.
    fn publish(&mut self, prune: bool) {
        let size = self.engine.spec().window.size_ms();
        let mut rows: Vec<(i64, Arc<str>, Row)> = Vec::new();
        self.engine.take_changed(|start, key, values| {
            rows.push((
                start,
                Arc::clone(key),
                Row {
                    end_ms: start + size,
                    closed: false,
                    is_final: false,
                    complete: true,
                    values: values.into_boxed_slice(),
                },
            ));
        });
        for c in self.engine.take_closed() {
            rows.push((
                c.start_ms,
                c.key,
                Row {
                    end_ms: c.end_ms,
                    closed: true,
                    is_final: false,
                    complete: true,
                    values: c.values.into_boxed_slice(),
                },
            ));
        }
        let watermark = self.engine.watermark();
        let open_windows = self.engine.open_windows();
        let cells = self.engine.cells();
        let per_cell = std::mem::size_of::<super::aggregate::AggState>()
            * self.engine.spec().aggregates.len()
            + 64;
        let next_offsets: Vec<i64> = self.sources.iter().map(|s| s.next).collect();
        let (retain_ms, missed) = (self.retain_ms, self.missed);
        self.view.write(|v| {
            for (start, key, row) in rows {
                v.upsert(start, &key, row);
            }
            v.watermark = watermark;
            v.open_windows = open_windows;
            v.state_bytes = (cells * per_cell) as u64;
            v.next_offsets = next_offsets;
            v.missed_records = missed;
            if prune {
                v.prune(retain_ms);
            }
        });
    }

    /// Sleeps until a source partition's visible end moves, a stop, or [`IDLE_WAIT`].
    fn wait(&mut self) {
        let Task { sources, stop, .. } = self;
        let mut stop = stop.clone();
        self.runtime.block_on(async move {
            let mut waits: Vec<_> = sources
                .iter_mut()
                .filter(|s| s.retry_at.is_none())
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
