//! A pipeline's late events on their way to its `late_topic`: the records no open window
//! took, copied as stored (key, envelope, timestamp, `weir.type`, event_id hash) and
//! appended through the late topic's normal append path.
//!
//! The pipeline thread notes the offsets the engine calls late while a batch is
//! processed ([`LateSink::note`]), copies those records out of the batch afterwards
//! ([`LateSink::take`]) into one reused buffer, and appends everything held once per
//! publish round ([`LateSink::flush`], every `PUBLISH_INTERVAL` of work): one batch per
//! late partition per round, not one write per event. The append does not wait for
//! fsync (the pipeline thread never does); the checkpoint thread makes the late
//! partitions durable through [`LateSink::ends`] before it commits offsets past the
//! events (see `checkpointer`).
//!
//! Exactly once: every record carries its event_id hash in `weir.id` (a generated
//! event_id, which has no header in the source, is hashed from the envelope), so the
//! late topic's dedup absorbs the appends a replay after a crash repeats. A checkpoint is
//! not taken while late events are held, so its offsets never pass an event not yet
//! appended.
//!
//! A refused append (the free-space reserve, a fenced or closing partition) stalls the
//! pipeline: the events stay held, no input is taken and no checkpoint encoded until
//! they are appended, retried every `ERROR_BACKOFF`. Dropping them would lose late
//! events for good (the checkpoint would pass them); a stall loses nothing and resumes
//! by itself once the topic accepts again (a fenced partition: after a restart).
//! Failures are counted; the warning is rate-limited.
//!
//! Owns no engine state and touches the log only through `Topic::append_forwarded`.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Handle;

use super::runner::ERROR_BACKOFF;
use crate::clock::SharedClock;
use crate::disk::DiskSpace;
use crate::json;
use crate::limits::{LATE_BUFFER_BYTES_MAX, LATE_FAILURE_LOG_INTERVAL};
use crate::log::batches::BatchView;
use crate::log::partition::Partition;
use crate::log::topic::{ForwardRecord, Topic};
use crate::log::{HEADER_ID, HEADER_TYPE};
use crate::metrics as m;

/// A late record held until appended: its parts are ranges of [`LateSink::arena`].
#[derive(Debug, Clone)]
struct Held {
    key: Option<Range<usize>>,
    value: Range<usize>,
    event_type: Range<usize>,
    timestamp_ms: i64,
    id: Option<u128>,
}

/// Where a pipeline sends its late events.
pub struct LateSink {
    pipeline: String,
    topic: Arc<Topic>,
    disk: Arc<DiskSpace>,
    clock: SharedClock,
    /// To run the (async) dedup admission from the pipeline thread.
    runtime: Handle,
    /// Offsets the engine found late in the batch being processed, ascending.
    offsets: Vec<i64>,
    /// The bytes of the held records.
    arena: Vec<u8>,
    held: Vec<Held>,
    /// Per late partition: one past the last offset this run appended (0: none).
    ends: Vec<i64>,
    /// Set by a refused append: no new attempt before it, and no input taken meanwhile.
    retry_at: Option<Instant>,
    /// The first refusal of the current stall and when it was last logged.
    stalled_since: Option<Instant>,
    logged_at: Option<Instant>,
    appended: metrics::Counter,
    failures: metrics::Counter,
    pending: metrics::Gauge,
}

impl LateSink {
    pub fn new(
        pipeline: &str,
        topic: Arc<Topic>,
        disk: Arc<DiskSpace>,
        clock: SharedClock,
        runtime: Handle,
    ) -> LateSink {
        let label = [("pipeline", pipeline.to_string())];
        LateSink {
            pipeline: pipeline.to_string(),
            ends: vec![0; topic.partitions.len()],
            topic,
            disk,
            clock,
            runtime,
            offsets: Vec::new(),
            arena: Vec::new(),
            held: Vec::new(),
            retry_at: None,
            stalled_since: None,
            logged_at: None,
            appended: metrics::counter!(m::PIPELINE_LATE_APPENDED, &label),
            failures: metrics::counter!(m::PIPELINE_LATE_APPEND_FAILURES, &label),
            pending: metrics::gauge!(m::PIPELINE_LATE_PENDING, &label),
        }
    }

    /// The engine found the record at `offset` of the batch being processed late.
    pub fn note(&mut self, offset: i64) {
        self.offsets.push(offset);
    }

    /// Copies the records noted late out of `batch`, the bytes of the batch just processed
    /// (parsed again only when some were noted: late events are rare).
    pub fn take(&mut self, batch: &[u8]) {
        let Some(&first) = self.offsets.first() else {
            return;
        };
        let mut offsets = std::mem::take(&mut self.offsets);
        let mut wanted = offsets.iter().copied().peekable();
        let records = BatchView::parse(batch)
            .into_iter()
            .flat_map(|(view, _)| view.stored_records_from(first));
        for (offset, timestamp_ms, record) in records {
            let Some(&next) = wanted.peek() else { break };
            if offset != next {
                continue;
            }
            wanted.next();
            let value = record.value.unwrap_or_default();
            let id = match record.header(HEADER_ID) {
                Some(h) => h.try_into().ok().map(u128::from_be_bytes),
                None => generated_id_hash(value),
            };
            let arena = &mut self.arena;
            let key = record.key.map(|k| copy(arena, k));
            let value = copy(arena, value);
            let event_type = copy(arena, record.header(HEADER_TYPE).unwrap_or_default());
            self.held.push(Held {
                key,
                value,
                event_type,
                timestamp_ms,
                id,
            });
        }
        offsets.clear();
        self.offsets = offsets;
    }

    /// Whether the pipeline must take no more input until [`flush`](Self::flush)
    /// empties the buffer: an append was refused, or the buffer is full.
    pub fn blocked(&self) -> bool {
        self.retry_at.is_some() || self.arena.len() >= LATE_BUFFER_BYTES_MAX
    }

    /// Whether late events are held, not yet appended: no checkpoint may pass them.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Per late partition written this run: the offset the next checkpoint must make
    /// durable (exclusive).
    pub fn ends(&self) -> Vec<(Arc<Partition>, i64)> {
        self.topic
            .partitions
            .iter()
            .zip(&self.ends)
            .filter(|(_, end)| **end > 0)
            .map(|(p, end)| (Arc::clone(p), *end))
            .collect()
    }

    /// Appends every held record (one batch per late partition), unless a refused
    /// append's backoff has not passed (`now`: try anyway, at a stop). Returns whether
    /// nothing is held any more.
    pub fn flush(&mut self, now: bool) -> bool {
        if self.held.is_empty() {
            return true;
        }
        if !now && self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        // Record overhead besides the copied bytes: varints and header names.
        let incoming = (self.arena.len() + 64 * self.held.len()) as u64;
        if let Err(low) = self.disk.check(incoming) {
            self.refused(&low.to_string());
            return false;
        }
        let arena = &self.arena;
        let records: Vec<ForwardRecord<'_>> = self
            .held
            .iter()
            .map(|h| ForwardRecord {
                key: h.key.clone().map(|k| &arena[k]),
                value: &arena[h.value.clone()],
                timestamp_ms: h.timestamp_ms,
                event_type: &arena[h.event_type.clone()],
                id: h.id,
            })
            .collect();
        let now_ms = self.clock.now_ms();
        let out = self
            .runtime
            .block_on(self.topic.append_forwarded(&records, now_ms));
        drop(records);
        self.disk.charge(out.bytes);
        for (p, end) in &out.ends {
            let e = &mut self.ends[*p as usize];
            *e = (*e).max(*end);
        }
        let landed = out.landed.iter().filter(|l| **l).count();
        self.appended
            .increment((landed - out.duplicates.min(landed)) as u64);
        if landed == self.held.len() {
            self.held.clear();
            self.arena.clear();
        } else {
            self.keep_unlanded(&out.landed);
        }
        #[allow(clippy::cast_precision_loss, reason = "a gauge")]
        self.pending.set(self.held.len() as f64);
        match out.failure {
            Some(e) => {
                self.refused(&e.to_string());
                false
            }
            None => {
                if let Some(since) = self.stalled_since.take() {
                    tracing::info!(
                        pipeline = %self.pipeline,
                        late_topic = %self.topic.name,
                        stalled_seconds = since.elapsed().as_secs_f64(),
                        "late_topic accepts appends again; the pipeline resumes"
                    );
                }
                self.retry_at = None;
                self.logged_at = None;
                self.held.is_empty()
            }
        }
    }

    /// Keeps only the held records that did not land, their bytes moved to the front.
    fn keep_unlanded(&mut self, landed: &[bool]) {
        let mut arena = Vec::with_capacity(self.arena.len());
        let mut kept = Vec::new();
        for (h, _) in self.held.iter().zip(landed).filter(|(_, l)| !**l) {
            let old = &self.arena;
            kept.push(Held {
                key: h.key.clone().map(|r| copy(&mut arena, &old[r])),
                value: copy(&mut arena, &old[h.value.clone()]),
                event_type: copy(&mut arena, &old[h.event_type.clone()]),
                timestamp_ms: h.timestamp_ms,
                id: h.id,
            });
        }
        self.arena = arena;
        self.held = kept;
    }

    fn refused(&mut self, error: &str) {
        self.failures.increment(1);
        let now = Instant::now();
        self.retry_at = Some(now + ERROR_BACKOFF);
        self.stalled_since.get_or_insert(now);
        #[allow(clippy::cast_precision_loss, reason = "a gauge")]
        self.pending.set(self.held.len() as f64);
        if self
            .logged_at
            .is_none_or(|t| now.duration_since(t) >= LATE_FAILURE_LOG_INTERVAL)
        {
            self.logged_at = Some(now);
            tracing::warn!(
                pipeline = %self.pipeline,
                late_topic = %self.topic.name,
                held = self.held.len(),
                error,
                "late_topic refused late events; the pipeline stalls (no input, no \
                 checkpoint) and retries every second"
            );
        }
    }
}

/// Appends `bytes` to `arena`; returns where they are.
fn copy(arena: &mut Vec<u8>, bytes: &[u8]) -> Range<usize> {
    let start = arena.len();
    arena.extend_from_slice(bytes);
    start..arena.len()
}

/// The `weir.id` a record with a generated event_id would have had: the xxh3-128 of the
/// envelope's `event_id`, so its replays are duplicates in the late topic too. `None`
/// if the envelope has no string `event_id` (never written so by weir).
fn generated_id_hash(envelope: &[u8]) -> Option<u128> {
    let text = std::str::from_utf8(envelope).ok()?;
    let raw = json::pointer_get_tokens(text, &["event_id".to_string()]).ok()??;
    let id = json::decode_str(raw).ok()?;
    Some(xxhash_rust::xxh3::xxh3_128(id.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::log::Log;
    use crate::log::batch::{self, BatchBuilder};
    use crate::log::partitioner::partition_for_key;

    /// A key of each partition of a topic of two.
    fn keys() -> [&'static [u8]; 2] {
        let of = |k: &[u8]| partition_for_key(k, 2);
        let pick = |p| {
            [&b"a"[..], b"b", b"c", b"d", b"e"]
                .into_iter()
                .find(|k| of(k) == p)
                .unwrap()
        };
        [pick(0), pick(1)]
    }

    #[test]
    fn what_a_refusing_partition_did_not_take_stays_held_and_blocks_input() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[storage]\ndata_dir = {:?}\n[[topic]]\nname = \"late\"\npartitions = 2\nfsync = \"never\"\n",
            dir.path().display().to_string()
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        let (log, _) = Log::open(&config, Arc::new(ManualClock::new(1_000_000))).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let topic = log.topic("late").unwrap();
        let disk = Arc::new(DiskSpace::new(dir.path(), 0).unwrap());
        let mut sink = LateSink::new(
            "p",
            Arc::clone(&topic),
            disk,
            Arc::clone(log.clock()),
            runtime.handle().clone(),
        );
        // A source batch at offsets 10..14; 11, 12 and 13 are late. 13 has a generated
        // event_id: no weir.id header.
        let [k0, k1] = keys();
        let mut b = BatchBuilder::new();
        for (i, key) in (0i64..).zip([k0, k0, k1, k0]) {
            let value = format!("{{\"event_id\":\"e{i}\",\"payload\":{i}}}");
            let id = xxhash_rust::xxh3::xxh3_128(format!("e{i}").as_bytes()).to_be_bytes();
            let headers: &[(&str, &[u8])] = if i == 3 {
                &[(HEADER_TYPE, b"t")]
            } else {
                &[(HEADER_TYPE, b"t"), (HEADER_ID, &id)]
            };
            b.push(Some(key), value.as_bytes(), 100 + i, headers);
        }
        let mut bytes = b.finish();
        batch::set_base_offset(&mut bytes, 10);
        for offset in [11, 12, 13] {
            sink.note(offset);
        }
        sink.take(&bytes);
        assert!(sink.holding() && !sink.blocked());

        topic.partitions[1].close().unwrap();
        assert!(!sink.flush(false), "partition 1 refuses");
        assert!(sink.blocked(), "no input until the held event is appended");
        assert_eq!(sink.held.len(), 1);
        assert_eq!(
            &sink.arena[sink.held[0].value.clone()],
            br#"{"event_id":"e2","payload":2}"#
        );
        assert_eq!(sink.held[0].timestamp_ms, 102);
        let ends: Vec<(u32, i64)> = sink.ends().iter().map(|(p, e)| (p.id, *e)).collect();
        assert_eq!(ends, [(0, 2)]);
        assert!(!sink.flush(false), "not retried before the backoff");
        assert!(!sink.flush(true), "still refused at a stop");
        assert_eq!(sink.held.len(), 1);

        // Partition 0 holds e1 and e3, both with their id (e3's hashed from its envelope).
        let mut buf = Vec::new();
        topic.partitions[0]
            .read_batches(0, 1 << 20, &mut buf)
            .unwrap();
        let ids: Vec<Option<&[u8]>> = crate::log::batches::batches(&buf)
            .flat_map(|b| b.stored_records_from(0).collect::<Vec<_>>())
            .map(|(_, _, r)| r.header(HEADER_ID))
            .collect();
        let hash = |id: &str| xxhash_rust::xxh3::xxh3_128(id.as_bytes()).to_be_bytes();
        assert_eq!(ids, [Some(&hash("e1")[..]), Some(&hash("e3")[..])]);
    }

    #[test]
    fn a_generated_id_hashes_like_a_client_one() {
        let env = br#"{"event_id":"a\u0062c","event_type":"t","timestamp":"x","payload":{}}"#;
        assert_eq!(
            generated_id_hash(env),
            Some(xxhash_rust::xxh3::xxh3_128(b"abc"))
        );
        assert_eq!(
            generated_id_hash(br#"{"payload":{"event_id":"abc"}}"#),
            None
        );
        assert_eq!(generated_id_hash(br#"{"event_id":5}"#), None);
        assert_eq!(generated_id_hash(b"\xff"), None);
    }
}
