//! The broker: topics of partitions of segments holding Kafka RecordBatch v2.
//!
//! Only this module touches segment and index files. [`Log::open`] takes the data dir
//! lock, recovers every partition, rebuilds the dedup tables and starts the fsync
//! workers; [`Log::close`] makes everything durable and leaves the clean-shutdown marker.

pub mod batch;
pub mod batches;
pub mod corrupt;
pub mod datadir;
pub mod dedup;
pub mod groups;
pub mod index;
pub mod offline;
pub mod partition;
pub mod partitioner;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod sync;
pub mod topic;
pub mod topic_name;
pub(crate) mod window;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use datadir::{DataDir, DataDirError};
use groups::{GroupOffsets, OFFSETS_TOPIC};
pub use partition::fsync_stalled_after;
use partition::{Partition, PartitionLinks, PartitionSettings, ReadError};
use recovery::RecoveryReport;
use retention::{PassReport, Retention, RetentionClock, RetentionThread, Wakeup};
use sync::SyncPool;
use topic::Topic;

use crate::clock::SharedClock;
use crate::config::units::millis;
use crate::config::{Config, TopicConfig};
use crate::metrics as m;

/// Record header with the event_type, so pipelines filter without parsing JSON.
pub const HEADER_TYPE: &str = "weir.type";
/// Record header with the 128-bit xxh3 hash of a client-supplied event_id (16 bytes BE).
pub const HEADER_ID: &str = "weir.id";
/// Record header with the append time, epoch ms as 8 bytes BE.
pub const HEADER_APPEND: &str = "weir.append";

/// The append time of a batch: the `weir.append` header of its first record.
pub fn batch_append_ms(batch_bytes: &[u8]) -> Option<i64> {
    record_append_ms(&batch::records(batch_bytes).ok()?.next()?.ok()?)
}

/// The `weir.append` header of a batch's first record (see [`batch_append_ms`]).
pub fn record_append_ms(first: &batch::Record<'_>) -> Option<i64> {
    append_value_ms(first.header(HEADER_APPEND)?)
}

/// The time a `weir.append` header's value holds: 8 bytes, big-endian milliseconds.
pub fn append_value_ms(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.try_into().ok()?))
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("recovery of {topic}/{partition} failed: {source}")]
    Recovery {
        topic: String,
        partition: u32,
        source: io::Error,
    },
    #[error("cannot clear the clean-shutdown marker: {0}")]
    Marker(io::Error),
    #[error("cannot read the committed offsets in {OFFSETS_TOPIC}: {0}")]
    Groups(ReadError),
}

/// What opening the log found.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub clean: bool,
    pub partitions: usize,
    pub scanned_bytes: u64,
    pub truncated_bytes: u64,
    pub dedup_ids: usize,
    pub seconds: f64,
}

pub struct Log {
    datadir: DataDir,
    /// The configured topics; the internal ones are not among them. Swapped whole when
    /// a reload adds topics (`add_topics`); never shrinks while running.
    topics: ArcSwap<BTreeMap<String, Arc<Topic>>>,
    /// Serialises `add_topics`.
    adding: parking_lot::Mutex<()>,
    /// Consumer-group offsets, kept in the internal topic `__weir_offsets`.
    groups: Arc<GroupOffsets>,
    /// The fsync workers: the pool started at open, and one per reload that added
    /// topics (a pool's queue is sized to its partitions). Taken by `close`.
    sync: parking_lot::Mutex<Vec<SyncPool>>,
    retention: Arc<Retention>,
    /// Woken when sealed segments become durable; wakes the retention thread.
    retention_wakeup: Arc<Wakeup>,
    /// Started by `start_retention`, stopped by `close` (or drop).
    retention_thread: parking_lot::Mutex<Option<RetentionThread>>,
    clock: SharedClock,
    /// Wall-clock time as retention and dedup rebuilds trust it (forward jumps since
    /// this start, or an earlier start in this boot, not followed).
    trusted: RetentionClock,
}

impl Log {
    /// Opens (creating if needed) the data dir and every configured topic.
    pub fn open(config: &Config, clock: SharedClock) -> Result<(Log, OpenReport), LogError> {
        let started = Instant::now();
        let datadir = DataDir::open(&config.storage.data_dir)?;
        let clean = datadir.was_clean();
        let trusted = trusted_time(&datadir, &clock);
        // The configured topics, then the internal ones, opened alike.
        let topic_configs: Vec<TopicConfig> = config
            .topics
            .iter()
            .cloned()
            .chain([groups::offsets_topic_config()])
            .collect();
        let partitions_total: usize = topic_configs.iter().map(|t| t.partitions as usize).sum();
        let mut sync = SyncPool::start(partitions_total);
        let retention_wakeup = Arc::new(Wakeup::default());
        let mut report = OpenReport {
            clean,
            ..OpenReport::default()
        };

        // Recover partitions in parallel: the scan is IO and CRC, independent per partition.
        let jobs: Vec<(usize, u32)> = topic_configs
            .iter()
            .enumerate()
            .flat_map(|(t, tc)| (0..tc.partitions).map(move |p| (t, p)))
            .collect();
        let results: Vec<Result<(usize, u32, recovery::Recovered), LogError>> =
            std::thread::scope(|s| {
                let chunks = jobs.chunks(jobs.len().div_ceil(4).max(1));
                let handles: Vec<_> = chunks
                    .map(|chunk| {
                        let datadir = &datadir;
                        let topic_configs = &topic_configs;
                        s.spawn(move || {
                            chunk
                                .iter()
                                .map(|&(t, p)| {
                                    let tc = &topic_configs[t];
                                    let dir = datadir.topic_dir(&tc.name).join(p.to_string());
                                    recovery::recover(&dir, clean).map(|r| (t, p, r)).map_err(
                                        |source| LogError::Recovery {
                                            topic: tc.name.clone(),
                                            partition: p,
                                            source,
                                        },
                                    )
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("recovery thread"))
                    .collect()
            });
        let mut by_topic: Vec<Vec<Option<Arc<Partition>>>> = topic_configs
            .iter()
            .map(|t| vec![None; t.partitions as usize])
            .collect();
        for result in results {
            let (t, p, rec) = result?;
            let tc = &topic_configs[t];
            log_recovery(&tc.name, p, &rec.report);
            report.scanned_bytes += rec.report.scanned_bytes;
            report.truncated_bytes += rec.report.truncated_bytes;
            let links = PartitionLinks {
                sync_queue: sync.queue(),
                clock: Arc::clone(&clock),
                rolled: Arc::clone(&retention_wakeup),
            };
            by_topic[t][p as usize] = Some(open_partition(&datadir, tc, p, rec, links));
        }
        let mut topics = BTreeMap::new();
        let mut flush = Vec::new();
        let now = trusted.effective_now_ms();
        for (tc, parts) in topic_configs.iter().zip(by_topic) {
            let parts: Vec<Arc<Partition>> = parts.into_iter().flatten().collect();
            report.partitions += parts.len();
            flush.extend(parts.iter().map(|p| (Arc::clone(p), tc.fsync_interval)));
            let (topic, dedup_ids) = open_topic(tc, parts, &clock, now);
            report.dedup_ids += dedup_ids;
            topics.insert(tc.name.clone(), topic);
        }
        let offsets_topic = topics
            .remove(OFFSETS_TOPIC)
            .expect("the offsets topic was opened");
        let groups = Arc::new(
            GroupOffsets::load(Arc::clone(&offsets_topic.partitions[0]), Arc::clone(&clock))
                .map_err(LogError::Groups)?,
        );
        let retention = Arc::new(Retention::new(
            topics.values().cloned().collect(),
            Arc::clone(&groups),
            trusted.clone(),
        ));
        warn_about_orphans(&datadir, config);
        sync.start_flusher(flush);
        // Before the first write after start: a crash from here on is not a clean stop.
        datadir.clear_clean_marker().map_err(LogError::Marker)?;
        report.seconds = started.elapsed().as_secs_f64();
        metrics::gauge!(m::RECOVERY_SECONDS).set(report.seconds);
        // Exported from the start (a fence increments it), so "0" is not "absent".
        metrics::gauge!(m::PARTITIONS_FENCED).set(0.0);
        Ok((
            Log {
                datadir,
                topics: ArcSwap::from_pointee(topics),
                adding: parking_lot::Mutex::new(()),
                groups,
                sync: parking_lot::Mutex::new(vec![sync]),
                retention,
                retention_wakeup,
                retention_thread: parking_lot::Mutex::new(None),
                clock,
                trusted,
            },
            report,
        ))
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.load().get(name).cloned()
    }

    /// The configured topics of this moment, by name.
    pub fn topics(&self) -> Arc<BTreeMap<String, Arc<Topic>>> {
        self.topics.load_full()
    }

    /// Opens topics a reload added to the config: recovers their partitions (a
    /// directory left by an earlier run is scanned as after a crash), loads their dedup
    /// tables, starts fsync workers for them, adds them to retention and only then makes
    /// them visible. All or nothing: on an error none is added. Blocking (recovery IO).
    pub fn add_topics(&self, configs: &[TopicConfig]) -> Result<(), LogError> {
        let _adding = self.adding.lock();
        let configs: Vec<&TopicConfig> = configs
            .iter()
            .filter(|tc| !self.topics.load().contains_key(&tc.name))
            .collect();
        if configs.is_empty() {
            return Ok(());
        }
        let partitions_total: usize = configs.iter().map(|t| t.partitions as usize).sum();
        let mut sync = SyncPool::start(partitions_total);
        let now = self.trusted.effective_now_ms();
        let mut added = Vec::new();
        let mut flush = Vec::new();
        for tc in configs {
            let mut parts = Vec::new();
            for p in 0..tc.partitions {
                let dir = self.datadir.topic_dir(&tc.name).join(p.to_string());
                let rec = recovery::recover(&dir, false).map_err(|source| LogError::Recovery {
                    topic: tc.name.clone(),
                    partition: p,
                    source,
                })?;
                log_recovery(&tc.name, p, &rec.report);
                let links = PartitionLinks {
                    sync_queue: sync.queue(),
                    clock: Arc::clone(&self.clock),
                    rolled: Arc::clone(&self.retention_wakeup),
                };
                parts.push(open_partition(&self.datadir, tc, p, rec, links));
            }
            flush.extend(parts.iter().map(|p| (Arc::clone(p), tc.fsync_interval)));
            let (topic, _) = open_topic(tc, parts, &self.clock, now);
            added.push(topic);
        }
        sync.start_flusher(flush);
        self.sync.lock().push(sync);
        for topic in &added {
            self.retention.add(Arc::clone(topic));
        }
        let mut topics = BTreeMap::clone(&self.topics.load());
        topics.extend(added.into_iter().map(|t| (t.name.to_string(), t)));
        self.topics.store(Arc::new(topics));
        Ok(())
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Committed consumer-group offsets.
    pub fn groups(&self) -> &Arc<GroupOffsets> {
        &self.groups
    }

    /// Starts the retention thread: a pass every `RETENTION_INTERVAL` and whenever a
    /// sealed segment becomes durable. Stopped by `close` or drop.
    pub fn start_retention(&self) -> io::Result<()> {
        let mut slot = self.retention_thread.lock();
        if slot.is_none() {
            *slot = Some(RetentionThread::start(
                Arc::clone(&self.retention),
                Arc::clone(&self.retention_wakeup),
            )?);
        }
        Ok(())
    }

    /// Runs one retention pass now, on this thread (blocking: deletes files).
    pub fn run_retention(&self) -> PassReport {
        self.retention.run_once()
    }

    /// Sets the gauges that move with every append, when metrics are scraped: end
    /// offsets, dedup entries, and `weir_group_lag_records` for every committed offset
    /// (the visible end minus the committed offset). No IO.
    pub fn update_scrape_gauges(&self) {
        let topics = self.topics.load();
        for topic in topics.values() {
            topic.dedup.update_gauge();
            for p in &topic.partitions {
                p.update_gauges();
            }
        }
        self.groups.partition().update_gauges();
        for (group, topic, partition, offset) in self.groups.all() {
            let Some(p) = topics
                .get(&topic)
                .and_then(|t| t.partitions.get(partition as usize))
            else {
                continue;
            };
            let lag = (p.visible().end_offset - offset).max(0);
            let labels = [
                ("group", group),
                ("topic", topic),
                ("partition", partition.to_string()),
            ];
            metrics::gauge!(m::GROUP_LAG, &labels).set(lag as f64);
        }
    }

    /// Partitions whose running fsync round has waited `at_least` or longer for its
    /// fsyncs, as `topic/partition` and how long.
    pub fn stalled_fsyncs(
        &self,
        at_least: std::time::Duration,
    ) -> Vec<(String, std::time::Duration)> {
        self.partitions_where(|p| p.fsync_running_for().filter(|d| *d >= at_least))
    }

    /// Partitions refusing writes after an fsync failure, as `topic/partition`.
    pub fn fenced(&self) -> Vec<String> {
        self.partitions_where(|p| p.is_fenced().then_some(()))
            .into_iter()
            .map(|(name, ())| name)
            .collect()
    }

    /// Every partition (the topics' and `__weir_offsets`) for which `what` says
    /// something, as `topic/partition` and what it said.
    fn partitions_where<T>(&self, what: impl Fn(&Partition) -> Option<T>) -> Vec<(String, T)> {
        self.topics
            .load()
            .values()
            .flat_map(|t| t.partitions.iter())
            .chain(std::iter::once(self.groups.partition()))
            .filter_map(|p| what(p).map(|t| (format!("{}/{}", p.topic, p.id), t)))
            .collect()
    }

    /// Makes every partition durable, writes the active indexes, and leaves the
    /// clean-shutdown marker so the next start skips the recovery scan.
    pub fn close(&self) -> io::Result<()> {
        self.stop_retention();
        let mut result = Ok(());
        let offsets = std::iter::once(self.groups.partition());
        let topics = self.topics.load();
        for p in topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .chain(offsets)
        {
            if let Err(e) = p.close() {
                tracing::error!(topic = %p.topic, partition = p.id, error = %e, "final flush failed");
                result = Err(e);
            }
        }
        for sync in std::mem::take(&mut *self.sync.lock()) {
            sync.stop();
        }
        if result.is_ok() {
            self.datadir.set_clean_marker()?;
        }
        result
    }
}

impl Log {
    fn stop_retention(&self) {
        if let Some(t) = self.retention_thread.lock().take() {
            t.stop();
        }
    }
}

/// A log dropped without `close` (a simulated crash in tests) stops its retention thread
/// and its flusher, abandons its partitions (queued fsync rounds do nothing) and waits,
/// boundedly, for rounds already running, so it cannot write under a log opened next on
/// the same directory. In a real crash the threads die with the process.
impl Drop for Log {
    fn drop(&mut self) {
        self.stop_retention();
        let pools = std::mem::take(&mut *self.sync.lock());
        if !pools.is_empty() {
            let offsets = std::iter::once(self.groups.partition());
            let topics = self.topics.load();
            let partitions: Vec<&Arc<Partition>> = topics
                .values()
                .flat_map(|t| t.partitions.iter())
                .chain(offsets)
                .collect();
            for p in &partitions {
                p.abandon();
            }
            for sync in pools {
                sync.stop();
            }
            let deadline = Instant::now() + ABANDON_WAIT_MAX;
            while partitions.iter().any(|p| p.sync_running()) && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// The topic `tc` over its recovered partitions, its dedup table rebuilt from the log
/// as of the trusted time `now_ms`; with the number of ids loaded.
fn open_topic(
    tc: &TopicConfig,
    parts: Vec<Arc<Partition>>,
    clock: &SharedClock,
    now_ms: i64,
) -> (Arc<Topic>, usize) {
    let topic = Arc::new(Topic::new(tc.clone(), parts, Arc::clone(clock)));
    let mut loaded = 0;
    if topic.dedup.enabled() {
        let (ids, table_ms) = dedup_ids_from_log(&topic, now_ms);
        loaded = ids.len();
        topic.dedup.load(ids, table_ms);
    }
    (topic, loaded)
}

/// A recovered partition of `tc`, ready to append.
fn open_partition(
    datadir: &DataDir,
    tc: &TopicConfig,
    p: u32,
    rec: recovery::Recovered,
    links: PartitionLinks,
) -> Arc<Partition> {
    let settings = PartitionSettings {
        fsync: tc.fsync,
        segment_bytes_max: tc.segment_size,
        segment_age_ms: millis(tc.segment_age),
    };
    let dir = datadir.topic_dir(&tc.name).join(p.to_string());
    let inner = partition::inner_from_recovery(rec.sealed, rec.active, rec.next_offset);
    Arc::new(Partition::new(
        tc.name.as_str().into(),
        p,
        dir,
        settings,
        inner,
        links,
    ))
}

/// Longest a dropped log waits for fsync rounds already running (see `Drop for Log`).
const ABANDON_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Partitions or topics on disk that the config no longer names are kept but not served:
/// say so, since their events are invisible until the config names them again.
fn warn_about_orphans(datadir: &DataDir, config: &Config) {
    let Ok(entries) = std::fs::read_dir(datadir.topics_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if topic_name::is_internal(&name) {
            continue;
        }
        let Some(topic) = config.topic(&name) else {
            tracing::warn!(topic = %name, "the data dir holds a topic the config does not name; it is not served");
            continue;
        };
        let Ok(parts) = std::fs::read_dir(entry.path()) else {
            continue;
        };
        let beyond = parts
            .flatten()
            .filter_map(|p| p.file_name().to_string_lossy().parse::<u32>().ok())
            .filter(|p| *p >= topic.partitions)
            .count();
        if beyond > 0 {
            tracing::warn!(topic = %name, partitions = topic.partitions, extra = beyond,
                "the data dir holds partitions beyond the configured count; their events are not served");
        }
    }
}

fn log_recovery(topic: &str, partition: u32, report: &RecoveryReport) {
    let labels = [
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ];
    let rebuilds = metrics::counter!(m::INDEX_REBUILDS, &[("topic", topic.to_string())]);
    rebuilds.increment(report.index_rebuilds.len() as u64);
    for (why, corrupt_batches) in &report.index_rebuilds {
        tracing::warn!(topic, partition, reason = %why, corrupt_batches,
            "segment indexes found wrong at start; rebuilt from the segment");
    }
    // Exported from the start, so "0" is not "absent".
    metrics::counter!(m::CORRUPT_BATCHES, &[("topic", topic.to_string())]).increment(0);
    if let Some(why) = &report.truncation {
        metrics::counter!(m::RECOVERY_TRUNCATIONS, &labels).increment(1);
        metrics::counter!(m::RECOVERY_TRUNCATED_BYTES, &labels).increment(report.truncated_bytes);
        tracing::warn!(topic, partition, truncated_bytes = report.truncated_bytes, reason = %why,
            "recovery cut a torn or corrupt tail");
    } else {
        // Touch the counters so they are exported at zero.
        metrics::counter!(m::RECOVERY_TRUNCATIONS, &labels).increment(0);
        metrics::counter!(m::RECOVERY_TRUNCATED_BYTES, &labels).increment(0);
    }
}

/// Wall-clock time as this start trusts it (`clock::trusted_start_ms` with the data
/// dir's anchor of an earlier start), the anchor kept for the next start. A forward jump
/// the anchor rules out is logged; failing to keep the anchor is logged, not fatal (the
/// next start then trusts the wall clock, as after a reboot).
fn trusted_time(datadir: &DataDir, clock: &SharedClock) -> RetentionClock {
    let earlier = datadir.clock_anchor();
    let (trusted_ms, anchor) = crate::clock::trusted_start_ms(clock.as_ref(), earlier.as_ref());
    let ahead_ms = clock.now_ms().saturating_sub(trusted_ms);
    if ahead_ms > crate::limits::CLOCK_JUMP_TOLERANCE_MS {
        tracing::warn!(
            ahead_ms,
            "the wall clock is ahead of the time an earlier start in this boot and the \
             monotonic clock give: retention and dedup go by the latter"
        );
    }
    if let Some(a) = anchor
        && let Err(e) = datadir.set_clock_anchor(&a)
    {
        tracing::warn!(error = %e, dir = %datadir.root().display(),
            "cannot keep the clock anchor; the next start trusts the wall clock");
    }
    RetentionClock::starting_at(Arc::clone(clock), trusted_ms)
}

/// The newest `max_dedup_entries` ids appended within the dedup window, read from the
/// log newest first across partitions (a merge by batch append time), so the work is
/// bounded by the table size, not by the log; and the time the table restarts at.
///
/// The window is measured back from `min(wall now, newest append time)`, not from the
/// wall clock: a wall clock set forward (by a day, say) before this start must not
/// expire ids appended seconds ago, which a client may still retry. After a real stop
/// that long, the ids of the last window before it are kept for one more window: a
/// duplicate kept longer is harmless, an event appended twice is not.
fn dedup_ids_from_log(topic: &Topic, now_ms: i64) -> (Vec<(i64, u128)>, i64) {
    let window_ms = millis(topic.config.dedup_window);
    let entries_max = topic.config.max_dedup_entries;
    let mut feeds: Vec<Feed> = topic
        .partitions
        .iter()
        .map(|p| Feed {
            walker: p.batches_newest_first(),
            read: std::collections::VecDeque::new(),
            ids: 0,
            done: false,
        })
        .collect();
    let mut heads = std::collections::BinaryHeap::new();
    Feed::fill(&mut feeds, &topic.name, |_| true);
    for (i, f) in feeds.iter_mut().enumerate() {
        if let Some(b) = f.pop() {
            heads.push((b.append_ms, i, b.ids));
        }
    }
    let table_ms = heads
        .peek()
        .map_or(now_ms, |(newest, ..)| now_ms.min(*newest));
    let cutoff = table_ms.saturating_sub(window_ms);
    // Sized once for a full table (up to a bound: the setting may be huge); pages not
    // reached are never touched.
    let mut out = Vec::with_capacity(entries_max.min(DEDUP_RESERVE_IDS_MAX));
    while let Some((append_ms, i, ids)) = heads.pop() {
        if append_ms < cutoff || out.len() >= entries_max {
            break;
        }
        out.extend(ids.into_iter().map(|id| (append_ms, id)));
        if feeds[i].read.is_empty() && !feeds[i].done {
            // Every feed running low reads on in the same round, in parallel.
            Feed::fill(&mut feeds, &topic.name, Feed::low);
        }
        if let Some(b) = feeds[i].pop() {
            heads.push((b.append_ms, i, b.ids));
        }
    }
    out.truncate(entries_max);
    // Oldest first, as `Dedup::load` inserts them (its sort then finds them in order).
    out.reverse();
    (out, table_ms)
}

/// How far a partition's feed reads ahead of the dedup rebuild's merge, in ids and in
/// batches (a batch may hold no client id), whichever comes first: the memory the rebuild
/// holds per partition (~130 KiB of ids), and the most a partition reads beyond what the
/// merge takes.
const DEDUP_FEED_IDS: usize = 8192;
const DEDUP_FEED_BATCHES: usize = 2048;
/// Most ids the rebuild's list is sized for up front (32 MiB of address space).
const DEDUP_RESERVE_IDS_MAX: usize = 1 << 20;
/// Threads reading feeds at once during the rebuild.
const DEDUP_FEED_THREADS_MAX: usize = 4;

/// One partition's batches, newest first, read ahead for the dedup rebuild's merge.
struct Feed {
    walker: partition::NewestFirst,
    read: std::collections::VecDeque<partition::BatchIds>,
    /// Ids in `read`.
    ids: usize,
    /// The walk reached the partition's start, or failed (logged).
    done: bool,
}

impl Feed {
    fn pop(&mut self) -> Option<partition::BatchIds> {
        let b = self.read.pop_front()?;
        self.ids -= b.ids.len();
        Some(b)
    }

    /// Below a quarter of its read-ahead: read on in the next round.
    fn low(&self) -> bool {
        self.ids < DEDUP_FEED_IDS / 4 && self.read.len() < DEDUP_FEED_BATCHES / 4
    }

    /// Reads ahead every feed that is not done and `wants` more, spreading the feeds over
    /// up to [`DEDUP_FEED_THREADS_MAX`] threads: reading and decoding the batches is
    /// nearly all of a rebuild's work, and independent per partition.
    fn fill(feeds: &mut [Feed], topic: &str, wants: impl Fn(&Feed) -> bool) {
        let mut todo: Vec<(usize, &mut Feed)> = feeds
            .iter_mut()
            .enumerate()
            .filter(|(_, f)| !f.done && wants(f))
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(DEDUP_FEED_THREADS_MAX)
            .min(todo.len());
        if threads <= 1 {
            for (i, f) in todo {
                f.read_ahead(topic, i);
            }
            return;
        }
        let per_thread = todo.len().div_ceil(threads);
        std::thread::scope(|s| {
            for part in todo.chunks_mut(per_thread) {
                s.spawn(move || {
                    for (i, f) in part {
                        f.read_ahead(topic, *i);
                    }
                });
            }
        });
    }

    fn read_ahead(&mut self, topic: &str, partition: usize) {
        let mut buf = Vec::new();
        while self.read.len() < DEDUP_FEED_BATCHES && self.ids < DEDUP_FEED_IDS {
            match self.walker.next_batch(&mut buf) {
                Ok(Some(b)) => {
                    self.ids += b.ids.len();
                    self.read.push_back(b);
                }
                Ok(None) => {
                    self.done = true;
                    return;
                }
                Err(e) => {
                    tracing::warn!(topic, partition, error = %e,
                        "could not read ids for the dedup table; duplicates from before the restart may be appended again");
                    self.done = true;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod dedup_rebuild_tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    /// Appends `batches` batches of `per_batch` records to partition `p`, each record's id
    /// the next of `next_id`, each batch 1 ms after the last.
    fn append(
        log: &Log,
        clock: &ManualClock,
        p: usize,
        batches: usize,
        per_batch: u128,
        next_id: &mut u128,
    ) {
        let part = &log.topic("t").unwrap().partitions[p];
        for _ in 0..batches {
            clock.advance(1);
            let now = clock.now_ms();
            let mut b = batch::BatchBuilder::new();
            for _ in 0..per_batch {
                b.push(
                    None,
                    b"{}",
                    now,
                    &[
                        (HEADER_APPEND, &now.to_be_bytes()),
                        (HEADER_ID, &next_id.to_be_bytes()),
                    ],
                );
                *next_id += 1;
            }
            part.append(&mut b.finish(), now).unwrap();
        }
    }

    /// The rebuild takes the newest ids across partitions, up to `max_dedup_entries`,
    /// oldest first, however the partitions' feeds are read ahead (single-record batches
    /// past a feed's batch bound, batches of many records past its id bound).
    #[test]
    fn the_rebuild_takes_the_newest_ids_across_partitions_whatever_the_batches() {
        // Each case takes more than a feed's first read-ahead from every partition.
        for (per_batch, batches, entries) in [(1u128, 3000, 8100u128), (700, 30, 37_800)] {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "[storage]\ndata_dir = {:?}\n[[topic]]\nname = \"t\"\npartitions = 3\nfsync = \"never\"\nsegment_size = \"256KiB\"\nmax_dedup_entries = {entries}\n",
                dir.path().display().to_string()
            );
            let config = Config::parse(&text, Path::new("test.toml")).unwrap();
            let clock = Arc::new(ManualClock::new(1_000_000));
            let (log, _) = Log::open(&config, Arc::clone(&clock) as _).unwrap();
            // Partitions in turn, so the newest ids are spread over all three.
            let mut next_id = 1u128;
            let mut times = Vec::new();
            for _ in 0..batches {
                for p in 0..3 {
                    append(&log, &clock, p, 1, per_batch, &mut next_id);
                    times.extend(std::iter::repeat_n(clock.now_ms(), per_batch as usize));
                }
            }
            let topic = log.topic("t").unwrap();
            let (ids, table_ms) = dedup_ids_from_log(&topic, clock.now_ms());
            assert_eq!(table_ms, clock.now_ms());
            // Oldest first by append time; within a batch (one time) in any order.
            assert!(
                ids.windows(2).all(|w| w[0].0 <= w[1].0),
                "{per_batch} per batch"
            );
            let mut got = ids.clone();
            got.sort_unstable();
            let want: Vec<(i64, u128)> = (1..next_id)
                .zip(times)
                .map(|(id, t)| (t, id))
                .skip_while(|(_, id)| *id < next_id - entries)
                .collect();
            assert_eq!(got.len(), want.len(), "{per_batch} per batch");
            assert!(
                got == want,
                "{per_batch} per batch: not the newest {entries} ids"
            );
        }
    }
}
