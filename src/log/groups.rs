//! Consumer-group offsets, stored in the log as Kafka does: every commit is appended to
//! the internal topic `__weir_offsets` (one partition, `fsync = "always"`) and cached in
//! memory; the cache is rebuilt at start by reading the topic from start to end (the
//! last value of a key wins).
//!
//! A committed offset is the next offset the group will read. Records are keyed
//! `group \0 topic \0 partition`, their value is `{"group","topic","partition","offset",
//! "time"}` (time: commit time, epoch ms). A commit of several partitions is one batch,
//! so it lands whole or not at all.
//!
//! Bounded growth: the topic has small segments ([`OFFSETS_SEGMENT_BYTES`]). Once it has
//! [`OFFSETS_COMPACT_SEGMENTS`] sealed segments holding more than twice as many records
//! as there are committed offsets, a snapshot of every committed offset is appended and,
//! once durable, the segments wholly before it are deleted: the newest value of every key
//! is at or after the snapshot, so the rebuild reads the same cache.
//!
//! Reads see a commit only once it is durable: the cache that answers them (`durable`)
//! takes a commit after its fsync, in log order (a commit's place in the log decides,
//! not the order the fsyncs finish in). The cache the snapshot copies (`appended`) takes
//! it as it is appended, under the lock that orders appends, so a snapshot never writes
//! an older value after a newer one.
//!
//! Not here: validation against topics (the HTTP layer), lag (computed from the visible
//! ends when asked).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::HEADER_APPEND;
use super::batch::BatchBuilder;
use super::partition::{AppendError, Partition, ReadError};
use crate::clock::SharedClock;
use crate::config::{FsyncMode, TopicConfig};
use crate::limits::{
    OFFSETS_COMPACT_SEGMENTS, OFFSETS_SEGMENT_BYTES, OFFSETS_SNAPSHOT_BATCH_RECORDS,
    READ_RECORDS_MAX, READ_RESPONSE_BYTES_MAX,
};
use crate::metrics as m;

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__weir_offsets";

/// The settings of [`OFFSETS_TOPIC`]: one partition, every commit fsynced, small
/// segments, no age or size retention (the compaction bounds it), no dedup.
pub fn offsets_topic_config() -> TopicConfig {
    let mut c = TopicConfig::new(OFFSETS_TOPIC);
    c.partitions = 1;
    c.fsync = FsyncMode::Always;
    c.segment_size = OFFSETS_SEGMENT_BYTES;
    c.retention_age = None;
    c.retention_size = None;
    c.dedup_window = std::time::Duration::ZERO;
    c
}

/// One committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The next offset the group reads.
    pub offset: i64,
    /// When it was committed, epoch ms.
    pub time_ms: i64,
    /// Where the commit is in [`OFFSETS_TOPIC`]: the later one wins.
    pub log_offset: i64,
}

/// A record's value in [`OFFSETS_TOPIC`].
#[derive(Debug, Serialize, Deserialize)]
struct CommitRecord {
    group: String,
    topic: String,
    partition: u32,
    offset: i64,
    time: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("commit task failed: {0}")]
    Task(String),
}

type Offsets = HashMap<(String, String), BTreeMap<u32, Committed>>;

pub struct GroupOffsets {
    partition: Arc<Partition>,
    /// Every appended commit, durable or not. Held while a commit or snapshot is
    /// appended, so it follows log order; what a snapshot copies.
    appended: Mutex<Offsets>,
    /// The commits known durable: what reads answer from.
    durable: Mutex<Offsets>,
    /// One compaction at a time.
    compacting: AtomicBool,
    clock: SharedClock,
}

impl GroupOffsets {
    /// Rebuilds the cache from the partition of [`OFFSETS_TOPIC`].
    pub(crate) fn load(
        partition: Arc<Partition>,
        clock: SharedClock,
    ) -> Result<GroupOffsets, ReadError> {
        let mut offsets = Offsets::new();
        let mut next = partition.start_offset();
        let end = partition.visible().end_offset;
        let mut skipped = 0u64;
        while next < end {
            next = partition.read(
                next,
                READ_RECORDS_MAX,
                READ_RESPONSE_BYTES_MAX,
                &mut |log_offset, _, value| match serde_json::from_slice::<CommitRecord>(value) {
                    Ok(r) => {
                        offsets.entry((r.group, r.topic)).or_default().insert(
                            r.partition,
                            Committed {
                                offset: r.offset,
                                time_ms: r.time,
                                log_offset,
                            },
                        );
                    }
                    Err(_) => skipped += 1,
                },
            )?;
        }
        if skipped > 0 {
            tracing::warn!(
                records = skipped,
                "skipped unreadable records of {OFFSETS_TOPIC}"
            );
        }
        Ok(GroupOffsets {
            partition,
            appended: Mutex::new(offsets.clone()),
            durable: Mutex::new(offsets),
            compacting: AtomicBool::new(false),
            clock,
        })
    }

    /// The offsets `group` committed on `topic`, by partition (empty if none).
    pub fn committed(&self, group: &str, topic: &str) -> BTreeMap<u32, Committed> {
        self.durable
            .lock()
            .get(&(group.to_string(), topic.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Every group's committed offset on one partition.
    pub fn committed_on(&self, topic: &str, partition: u32) -> Vec<(String, i64)> {
        self.durable
            .lock()
            .iter()
            .filter(|((_, t), _)| t == topic)
            .filter_map(|((g, _), parts)| parts.get(&partition).map(|c| (g.clone(), c.offset)))
            .collect()
    }

    /// Every committed offset: (group, topic, partition, offset).
    pub fn all(&self) -> Vec<(String, String, u32, i64)> {
        self.durable
            .lock()
            .iter()
            .flat_map(|((g, t), parts)| {
                parts
                    .iter()
                    .map(move |(p, c)| (g.clone(), t.clone(), *p, c.offset))
            })
            .collect()
    }

    /// Commits `entries` (partition, offset) of `group` on `topic` and returns once the
    /// commit is durable. The caller has validated the entries.
    pub async fn commit(
        self: &Arc<Self>,
        group: &str,
        topic: &str,
        entries: Vec<(u32, i64)>,
    ) -> Result<(), CommitError> {
        let me = Arc::clone(self);
        let (g, t) = (group.to_string(), topic.to_string());
        // The append is file IO (and maybe a roll): off the async workers.
        let (last, committed) =
            tokio::task::spawn_blocking(move || me.append_commit(&g, &t, &entries))
                .await
                .map_err(|e| CommitError::Task(e.to_string()))??;
        self.partition.wait_visible(last).await?;
        self.publish(group, topic, &committed);
        let labels = [("group", group.to_string()), ("topic", topic.to_string())];
        metrics::counter!(m::GROUP_COMMITS, &labels).increment(1);
        if self.needs_compaction() && !self.compacting.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(e) = me.compact().await {
                    tracing::warn!(error = %e, "compaction of {OFFSETS_TOPIC} failed; it is tried again after the next commit");
                }
                me.compacting.store(false, Ordering::Release);
            });
        }
        Ok(())
    }

    /// Appends one commit as one batch and enters it in `appended`; returns its last
    /// offset and what [`GroupOffsets::publish`] enters in `durable` once that is durable.
    /// Blocking: a pwrite.
    pub(crate) fn append_commit(
        &self,
        group: &str,
        topic: &str,
        entries: &[(u32, i64)],
    ) -> Result<(i64, Vec<(u32, Committed)>), AppendError> {
        crate::failpoint!("groups::commit", AppendError::Io);
        let now_ms = self.clock.now_ms();
        let mut appended = self.appended.lock();
        let records: Vec<CommitRecord> = entries
            .iter()
            .map(|&(partition, offset)| CommitRecord {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
                offset,
                time: now_ms,
            })
            .collect();
        let last = self.append_records(&records, now_ms)?;
        let first = last + 1 - i64::try_from(records.len()).unwrap_or(i64::MAX);
        let committed: Vec<(u32, Committed)> = (first..)
            .zip(&records)
            .map(|(log_offset, r)| {
                let c = Committed {
                    offset: r.offset,
                    time_ms: now_ms,
                    log_offset,
                };
                (r.partition, c)
            })
            .collect();
        let parts = appended
            .entry((group.to_string(), topic.to_string()))
            .or_default();
        parts.extend(committed.iter().copied());
        Ok((last, committed))
    }

    /// Enters a durable commit in `durable`, unless a later one (in the log) is there.
    fn publish(&self, group: &str, topic: &str, committed: &[(u32, Committed)]) {
        let mut durable = self.durable.lock();
        let parts = durable
            .entry((group.to_string(), topic.to_string()))
            .or_default();
        for &(partition, c) in committed {
            let newer = parts
                .get(&partition)
                .is_none_or(|old| old.log_offset < c.log_offset);
            if newer {
                parts.insert(partition, c);
            }
        }
    }

    /// Appends records as one batch; the caller holds the `appended` lock.
    fn append_records(&self, records: &[CommitRecord], now_ms: i64) -> Result<i64, AppendError> {
        let append = now_ms.to_be_bytes();
        let mut builder = BatchBuilder::new();
        let mut value = Vec::with_capacity(128);
        for r in records {
            let key = format!("{}\0{}\0{}", r.group, r.topic, r.partition);
            value.clear();
            serde_json::to_writer(&mut value, r).map_err(|e| AppendError::Io(e.into()))?;
            builder.push(
                Some(key.as_bytes()),
                &value,
                r.time,
                &[(HEADER_APPEND, &append)],
            );
        }
        let mut batch = builder.finish();
        Ok(self.partition.append(&mut batch, now_ms)?.last_offset)
    }

    /// Whether enough sealed segments hold mostly superseded commits.
    fn needs_compaction(&self) -> bool {
        let (segments, _) = self.partition.sealed_segments();
        let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
            return false;
        };
        let entries: usize = self.appended.lock().values().map(BTreeMap::len).sum();
        let records = last.end_offset - first.base_offset;
        segments.len() >= OFFSETS_COMPACT_SEGMENTS
            && records > 2 * i64::try_from(entries).unwrap_or(i64::MAX / 4)
    }

    /// Appends a snapshot of every committed offset, waits for it to be durable, then
    /// deletes the segments wholly before it. Returns the snapshot's first offset.
    pub(crate) async fn compact(self: &Arc<Self>) -> Result<Option<i64>, CommitError> {
        let me = Arc::clone(self);
        let snapshot = tokio::task::spawn_blocking(move || me.append_snapshot())
            .await
            .map_err(|e| CommitError::Task(e.to_string()))??;
        let Some((first, last)) = snapshot else {
            return Ok(None);
        };
        self.partition.wait_visible(last).await?;
        let p = Arc::clone(&self.partition);
        let removed = tokio::task::spawn_blocking(move || p.remove_segments_through(first))
            .await
            .map_err(|e| CommitError::Task(e.to_string()))?
            .map_err(AppendError::Io)?;
        tracing::info!(
            segments = removed.segments.len(),
            start_offset = removed.start_after,
            "compacted {OFFSETS_TOPIC}"
        );
        Ok(Some(first))
    }

    /// Appends every committed offset in batches; returns the first and last offsets.
    fn append_snapshot(&self) -> Result<Option<(i64, i64)>, AppendError> {
        let now_ms = self.clock.now_ms();
        let appended = self.appended.lock();
        let records: Vec<CommitRecord> = appended
            .iter()
            .flat_map(|((g, t), parts)| {
                parts.iter().map(move |(p, c)| CommitRecord {
                    group: g.clone(),
                    topic: t.clone(),
                    partition: *p,
                    offset: c.offset,
                    time: c.time_ms,
                })
            })
            .collect();
        let mut range: Option<(i64, i64)> = None;
        for chunk in records.chunks(OFFSETS_SNAPSHOT_BATCH_RECORDS) {
            let last = self.append_records(chunk, now_ms)?;
            let count = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
            let first = range.map_or(last - count + 1, |(f, _)| f);
            range = Some((first, last));
        }
        drop(appended);
        Ok(range)
    }

    /// The partition of [`OFFSETS_TOPIC`].
    pub fn partition(&self) -> &Arc<Partition> {
        &self.partition
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::log::partition::{PartitionLinks, PartitionSettings, inner_from_recovery};
    use crate::log::recovery::recover;
    use crate::log::retention::Wakeup;
    use crate::log::sync::SyncPool;

    /// The offsets partition with 1 KiB segments, so compaction comes quickly.
    fn open(dir: &std::path::Path, pool: &SyncPool) -> Arc<GroupOffsets> {
        open_with(dir, pool.queue())
    }

    /// As [`open`], its fsyncs queued on `sync_queue`.
    fn open_with(
        dir: &std::path::Path,
        sync_queue: std::sync::mpsc::SyncSender<Arc<Partition>>,
    ) -> Arc<GroupOffsets> {
        let clock: SharedClock = Arc::new(ManualClock::new(1_000));
        let rec = recover(dir, false).unwrap();
        let p = Arc::new(Partition::new(
            OFFSETS_TOPIC.into(),
            0,
            dir.to_path_buf(),
            PartitionSettings {
                fsync: FsyncMode::Always,
                segment_bytes_max: 1024,
                segment_age_ms: i64::MAX,
            },
            inner_from_recovery(rec.sealed, rec.active, rec.next_offset),
            PartitionLinks {
                sync_queue,
                clock: Arc::clone(&clock),
                rolled: Arc::new(Wakeup::default()),
            },
        ));
        Arc::new(GroupOffsets::load(p, clock).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_keeps_the_newest_offsets_and_bounds_the_topic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("0");
        let pool = SyncPool::start(1);
        let g = open(&dir, &pool);
        for i in 0..200i64 {
            let group = if i % 2 == 0 { "a" } else { "b" };
            g.commit(group, "t", vec![(0, i), (1, i + 1)])
                .await
                .unwrap();
        }
        // Let a compaction spawned by the last commit finish, then compact once more.
        while g.compacting.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        g.compact().await.unwrap().expect("a snapshot");
        let (sealed, _) = g.partition().sealed_segments();
        assert!(
            sealed.len() < OFFSETS_COMPACT_SEGMENTS,
            "{} sealed",
            sealed.len()
        );
        assert!(g.partition().start_offset() > 0);
        let want = |g: &GroupOffsets| {
            (
                g.committed("a", "t").get(&0).map(|c| c.offset),
                g.committed("b", "t").get(&1).map(|c| c.offset),
            )
        };
        assert_eq!(want(&g), (Some(198), Some(200)));
        g.partition().close().unwrap();
        drop(g);
        let again = open(&dir, &pool);
        assert_eq!(
            want(&again),
            (Some(198), Some(200)),
            "rebuilt from the snapshot"
        );
    }

    /// A reader never sees a commit that is not durable yet: with the fsync held back,
    /// the new offset is in the log but reads still answer the old one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_is_read_only_once_it_is_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let (queue, fsyncs) = std::sync::mpsc::sync_channel::<Arc<Partition>>(16);
        let g = open_with(tmp.path(), queue);
        let first = tokio::spawn({
            let g = Arc::clone(&g);
            async move { g.commit("a", "t", vec![(0, 5)]).await }
        });
        // Each commit's round is queued once its batch is written; run it by hand.
        let p = tokio::task::spawn_blocking(move || {
            let p = fsyncs.recv().unwrap();
            (p, fsyncs)
        });
        let (p, fsyncs) = p.await.unwrap();
        p.run_sync();
        first.await.unwrap().unwrap();
        assert_eq!(g.committed("a", "t").get(&0).map(|c| c.offset), Some(5));

        let second = tokio::spawn({
            let g = Arc::clone(&g);
            async move { g.commit("a", "t", vec![(0, 9)]).await }
        });
        let p = tokio::task::spawn_blocking(move || fsyncs.recv().unwrap())
            .await
            .unwrap();
        assert!(g.partition().is_dirty(), "the second commit is written");
        assert_eq!(g.partition().durable_end(), 1);
        assert_eq!(
            g.committed("a", "t").get(&0).map(|c| c.offset),
            Some(5),
            "a commit not yet fsynced is not read"
        );
        assert!(!second.is_finished());
        p.run_sync();
        second.await.unwrap().unwrap();
        assert_eq!(g.committed("a", "t").get(&0).map(|c| c.offset), Some(9));
    }
}
