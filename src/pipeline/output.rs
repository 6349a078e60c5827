//! A pipeline's result rows on their way to its `output_topic`: an upsert changelog of
//! (window, key) rows, exactly once across crashes.
//!
//! What is emitted: per checkpoint, every (window, key) row that changed since the last
//! one: open rows (`final: false`, their values at the checkpoint's offsets) and rows
//! closed since (`final: true`). Each is one envelope: event_type `<pipeline>.result`,
//! timestamp = window end, record key `<start>/<key>` (so the topic's partitioning keeps
//! a row's versions in order), payload `{"key","start","end","final","version",
//! "values"}`, values written as the query API writes them. `version` is the sequence
//! number of the checkpoint that emits the row: it increases per row, and it is kept in
//! sled, so it is the same on every replay. The event_id is a hash of (pipeline,
//! definition fingerprint, window start, key, version).
//!
//! How it is exact (a transactional outbox): the pipeline thread builds the rows of a
//! checkpoint as it encodes it ([`OutputRows::encode`]); the checkpoint thread commits
//! them in the checkpoint's own sled batch (key `o`), and only then appends them
//! ([`OutputSink::committed`]), without waiting for fsync. The next checkpoint commits
//! only once those appends are durable ([`OutputSink::before_commit`]), since its batch
//! replaces the outbox. So the rows of every committed checkpoint are in the topic or in
//! sled; a restart appends the outbox it finds again (rows, versions and ids as they
//! were: read back, not recomputed) and the topic's dedup absorbs what was already
//! there. Rows after the last checkpoint were never appended: the replay computes them
//! anew. A clean stop appends, makes durable and empties the outbox, so a restart finds
//! nothing to repeat. Why not append before the commit, as `late` does: a replay takes
//! checkpoints at other offsets than the crashed run, so the rows it emits under a given
//! version would differ from the ones already appended under it (a row final in one and
//! open in the other), and dedup would keep the wrong one.
//!
//! Limits: a restart later than the output topic's `dedup_window` after a crash (not a
//! clean stop) appends the last checkpoint's rows a second time; a rebuild from the log
//! (a changed definition, a damaged store) emits every row again from version 1 (a changed
//! definition under other event_ids).
//!
//! A refused append (free-space reserve, fenced or closing partition) stalls the
//! pipeline, as `late` does: no input is taken, the rows stay in sled, retried at every
//! checkpoint interval; it resumes by itself once the topic accepts.
//!
//! Owns no engine state; touches sled only through `store` and the log only through
//! `Topic::append_forwarded`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::runtime::Handle;

use super::aggregate::AggState;
use super::engine::Engine;
use crate::clock::SharedClock;
use crate::disk::DiskSpace;
use crate::event::format_rfc3339_ms;
use crate::json::write_str_into;
use crate::limits::LATE_FAILURE_LOG_INTERVAL;
use crate::log::partition::Partition;
use crate::log::topic::{ForwardRecord, Topic};
use crate::metrics as m;
use crate::store::PipelineStore;
use crate::store::codec::{CodecError, Reader, Writer};

/// A (window start, key) row.
type RowId = (i64, Arc<str>);

/// What changed about a row since the last checkpoint.
#[derive(Debug, Clone)]
enum Change {
    /// Its values changed; it is open: the values are taken from the engine when the
    /// checkpoint is encoded.
    Open,
    /// It closed: its end and final values, written as JSON.
    Closed { end_ms: i64, values: Box<[u8]> },
}

/// The rows one checkpoint emits, in the order they are appended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbox {
    /// The checkpoint's sequence number: the `version` of its rows.
    pub seq: u64,
    pub records: Vec<OutRecord>,
}

/// One emitted row as it is appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub timestamp_ms: i64,
    /// `weir.id`: the xxh3-128 of the event_id.
    pub id: u128,
}

impl Outbox {
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .records
            .iter()
            .map(|r| r.key.len() + r.value.len() + 48)
            .sum();
        let mut out = Vec::with_capacity(16 + size);
        let mut w = Writer(&mut out);
        w.u64(self.seq);
        w.u64(self.records.len() as u64);
        for r in &self.records {
            w.bytes(&r.key);
            w.bytes(&r.value);
            w.i64(r.timestamp_ms);
            w.bytes(&r.id.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Outbox, CodecError> {
        let mut r = Reader(bytes);
        let seq = r.u64()?;
        let n = r.u64()?;
        let mut records = Vec::new();
        for _ in 0..n {
            let key = r.bytes()?.to_vec();
            let value = r.bytes()?.to_vec();
            let timestamp_ms = r.i64()?;
            let id: [u8; 16] = r.bytes()?.try_into().map_err(|_| CodecError("outbox id"))?;
            records.push(OutRecord {
                key,
                value,
                timestamp_ms,
                id: u128::from_be_bytes(id),
            });
        }
        if !r.0.is_empty() {
            return Err(CodecError("outbox: bytes after the last record"));
        }
        Ok(Outbox { seq, records })
    }
}

/// The pipeline thread's side: which rows changed since the last checkpoint, and the
/// checkpoint sequence.
pub struct OutputRows {
    pipeline: String,
    fingerprint: u64,
    /// Per aggregate: its name and the quantiles it outputs (empty for others).
    aggregates: Vec<(String, Vec<f64>)>,
    changed: HashMap<RowId, Change>,
    /// The rows of the checkpoint in flight: back into `changed` if it fails.
    in_flight: HashMap<RowId, Change>,
    /// The sequence number of the last committed checkpoint.
    seq: u64,
}

impl OutputRows {
    /// `seq`: the last committed checkpoint's (0 for a pipeline starting afresh).
    pub fn new(
        pipeline: &str,
        fingerprint: u64,
        aggregates: Vec<(String, Vec<f64>)>,
        seq: u64,
    ) -> Self {
        OutputRows {
            pipeline: pipeline.to_string(),
            fingerprint,
            aggregates,
            changed: HashMap::new(),
            in_flight: HashMap::new(),
            seq,
        }
    }

    /// The open row (start, key) changed.
    pub fn open(&mut self, start_ms: i64, key: &Arc<str>) {
        self.changed
            .entry((start_ms, Arc::clone(key)))
            .or_insert(Change::Open);
    }

    /// The row (start, key) closed with `values`.
    pub fn closed(&mut self, start_ms: i64, key: &Arc<str>, end_ms: i64, values: &[AggState]) {
        let mut out = Vec::with_capacity(16 * values.len() + 2);
        write_values(&self.aggregates, values, &mut out);
        self.changed.insert(
            (start_ms, Arc::clone(key)),
            Change::Closed {
                end_ms,
                values: out.into_boxed_slice(),
            },
        );
    }

    /// The rows of the next checkpoint, every row changed since the last one, sorted by
    /// (start, key); open rows' values are read from `engine`.
    pub fn encode(&mut self, engine: &Engine) -> Outbox {
        let seq = self.seq + 1;
        let size_ms = engine.spec().window.size_ms();
        let mut rows: Vec<(RowId, Change)> = self.changed.drain().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut records = Vec::with_capacity(rows.len());
        let mut values = Vec::new();
        for ((start, key), change) in &rows {
            let (end, is_final, values) = match change {
                Change::Closed { end_ms, values } => (*end_ms, true, &values[..]),
                Change::Open => {
                    // A row listed open is open in the engine: closes are listed after.
                    let Some(states) = engine.window_values(key, *start) else {
                        continue;
                    };
                    values.clear();
                    write_values(&self.aggregates, &states, &mut values);
                    (start + size_ms, false, &values[..])
                }
            };
            records.push(self.record(*start, key, end, is_final, seq, values));
        }
        self.in_flight.extend(rows);
        Outbox { seq, records }
    }

    /// The checkpoint in flight was committed: its rows are out of our hands.
    pub fn committed(&mut self) {
        self.in_flight.clear();
        self.seq += 1;
    }

    /// The checkpoint in flight was not committed: its rows go into the next one (a
    /// close since then stays).
    pub fn failed(&mut self) {
        for (row, change) in self.in_flight.drain() {
            self.changed.entry(row).or_insert(change);
        }
    }

    /// One row as an envelope (see the module doc).
    fn record(
        &self,
        start_ms: i64,
        key: &str,
        end_ms: i64,
        is_final: bool,
        version: u64,
        values: &[u8],
    ) -> OutRecord {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for part in [
            self.pipeline.as_bytes(),
            &self.fingerprint.to_le_bytes(),
            &start_ms.to_le_bytes(),
            &version.to_le_bytes(),
            key.as_bytes(),
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let event_id = format!("{:032x}", hasher.digest128());
        let mut start = Vec::with_capacity(24);
        format_rfc3339_ms(start_ms, &mut start);
        let mut end = Vec::with_capacity(24);
        format_rfc3339_ms(end_ms, &mut end);

        let mut v = Vec::with_capacity(160 + key.len() + values.len());
        v.extend_from_slice(b"{\"event_id\":\"");
        v.extend_from_slice(event_id.as_bytes());
        v.extend_from_slice(b"\",\"event_type\":");
        write_str_into(&format!("{}.result", self.pipeline), &mut v);
        v.extend_from_slice(b",\"timestamp\":\"");
        v.extend_from_slice(&end);
        v.extend_from_slice(b"\",\"payload\":{\"key\":");
        write_str_into(key, &mut v);
        v.extend_from_slice(b",\"start\":\"");
        v.extend_from_slice(&start);
        v.extend_from_slice(b"\",\"end\":\"");
        v.extend_from_slice(&end);
        v.extend_from_slice(if is_final {
            b"\",\"final\":true,\"version\":"
        } else {
            b"\",\"final\":false,\"version\":"
        });
        v.extend_from_slice(itoa::Buffer::new().format(version).as_bytes());
        v.extend_from_slice(b",\"values\":");
        v.extend_from_slice(values);
        v.extend_from_slice(b"}}");

        let mut record_key = start;
        record_key.push(b'/');
        record_key.extend_from_slice(key.as_bytes());
        OutRecord {
            key: record_key,
            value: v,
            timestamp_ms: end_ms,
            id: xxhash_rust::xxh3::xxh3_128(event_id.as_bytes()),
        }
    }
}

/// `{"name": value, ...}` as the query API writes a row's values.
fn write_values(aggregates: &[(String, Vec<f64>)], values: &[AggState], out: &mut Vec<u8>) {
    out.push(b'{');
    let mut text = String::new();
    for (i, ((name, quantiles), value)) in aggregates.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str_into(name, out);
        out.push(b':');
        text.clear();
        value.write_json(quantiles, &mut text);
        out.extend_from_slice(text.as_bytes());
    }
    out.push(b'}');
}

/// The checkpoint thread's side: appends each committed outbox and makes it durable
/// before the next commit replaces it.
pub struct OutputSink {
    pipeline: String,
    topic: Arc<Topic>,
    disk: Arc<DiskSpace>,
    clock: SharedClock,
    /// To run the (async) dedup admission from the checkpoint thread.
    runtime: Handle,
    /// The last committed outbox while it is not known durable in the topic.
    pending: Option<Outbox>,
    /// Whether `pending` was appended (all of it), and through which offsets.
    appended: bool,
    ends: Vec<i64>,
    /// Set while `pending` cannot be appended: the pipeline thread takes no input.
    stalled: Arc<AtomicBool>,
    /// The sequence number of the last committed outbox (the restored one at start).
    last_seq: Option<u64>,
    logged_at: Option<Instant>,
    rows: metrics::Counter,
    failures: metrics::Counter,
    pending_rows: metrics::Gauge,
}

impl OutputSink {
    /// `restored`: the outbox of the checkpoint the pipeline starts from (appended again;
    /// dedup absorbs what is already in the topic).
    pub fn new(
        pipeline: &str,
        topic: Arc<Topic>,
        disk: Arc<DiskSpace>,
        clock: SharedClock,
        runtime: Handle,
        restored: Option<Outbox>,
    ) -> OutputSink {
        let label = [("pipeline", pipeline.to_string())];
        let sink = OutputSink {
            pipeline: pipeline.to_string(),
            ends: vec![0; topic.partitions.len()],
            topic,
            disk,
            clock,
            runtime,
            last_seq: restored.as_ref().map(|o| o.seq),
            pending: restored.filter(|o| !o.records.is_empty()),
            appended: false,
            stalled: Arc::new(AtomicBool::new(false)),
            logged_at: None,
            rows: metrics::counter!(m::PIPELINE_OUTPUT_ROWS, &label),
            failures: metrics::counter!(m::PIPELINE_OUTPUT_APPEND_FAILURES, &label),
            pending_rows: metrics::gauge!(m::PIPELINE_OUTPUT_PENDING, &label),
        };
        sink.set_pending_gauge();
        sink
    }

    /// The flag the pipeline thread reads: set while the output topic refuses rows.
    pub fn stalled(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stalled)
    }

    /// Appends the pending outbox if it was not yet. Returns whether it is appended.
    pub fn append(&mut self) -> bool {
        let Some(outbox) = &self.pending else {
            return true;
        };
        if self.appended {
            return true;
        }
        let incoming: u64 = outbox
            .records
            .iter()
            .map(|r| (r.key.len() + r.value.len() + 64) as u64)
            .sum();
        if let Err(low) = self.disk.check(incoming) {
            self.refused(&low.to_string());
            return false;
        }
        // weir.type: `<pipeline>.result`, the same for every record.
        let event_type = format!("{}.result", self.pipeline);
        let records: Vec<ForwardRecord<'_>> = outbox
            .records
            .iter()
            .map(|r| ForwardRecord {
                key: Some(&r.key),
                value: &r.value,
                timestamp_ms: r.timestamp_ms,
                event_type: event_type.as_bytes(),
                id: Some(r.id),
            })
            .collect();
        let out = self
            .runtime
            .block_on(self.topic.append_forwarded(&records, self.clock.now_ms()));
        drop(records);
        self.disk.charge(out.bytes);
        for (p, end) in &out.ends {
            let e = &mut self.ends[*p as usize];
            *e = (*e).max(*end);
        }
        let landed = out.landed.iter().filter(|l| **l).count();
        self.rows
            .increment((landed - out.duplicates.min(landed)) as u64);
        if let Some(e) = out.failure {
            // What landed is in the topic: the retry appends the whole outbox again
            // and dedup absorbs those.
            self.refused(&e.to_string());
            return false;
        }
        self.appended = true;
        if self.stalled.swap(false, Ordering::AcqRel) {
            tracing::info!(pipeline = %self.pipeline, output_topic = %self.topic.name,
                "output_topic accepts rows again; the pipeline resumes");
        }
        self.logged_at = None;
        true
    }

    /// Before a commit (which replaces the outbox in sled): the pending outbox must be
    /// appended and durable. Returns what is wrong otherwise.
    pub fn before_commit(&mut self) -> Result<(), String> {
        if self.pending.is_none() {
            return Ok(());
        }
        if !self.append() {
            return Err("the last checkpoint's result rows are not appended".into());
        }
        for (p, end) in self.ends() {
            if !super::checkpointer::make_durable(&p, end) {
                self.failures.increment(1);
                return Err(format!(
                    "result rows in {} partition {} not durable",
                    p.topic, p.id
                ));
            }
        }
        self.pending = None;
        self.set_pending_gauge();
        Ok(())
    }

    /// `outbox` was committed: it is appended now (not waiting for fsync).
    pub fn committed(&mut self, outbox: Outbox) {
        self.last_seq = Some(outbox.seq);
        self.pending = (!outbox.records.is_empty()).then_some(outbox);
        self.appended = false;
        self.ends.iter_mut().for_each(|e| *e = 0);
        self.append();
        self.set_pending_gauge();
    }

    /// At a stop, after the last checkpoint: appends and makes durable what is pending,
    /// then empties the outbox in sled so a restart repeats nothing.
    pub fn finish(mut self, store: &PipelineStore) {
        let Some(seq) = self.last_seq else {
            return;
        };
        if let Err(e) = self.before_commit() {
            tracing::warn!(pipeline = %self.pipeline, output_topic = %self.topic.name, error = %e,
                "result rows not durable at the stop; the restart appends them");
            return;
        }
        let empty = Outbox {
            seq,
            records: Vec::new(),
        };
        if let Err(e) = store.set_outbox(&empty.encode()) {
            tracing::warn!(pipeline = %self.pipeline, error = %e,
                "could not empty the output outbox; the restart appends its rows again (dedup absorbs them)");
        }
    }

    /// Partitions appended to, each with the offset (exclusive) to make durable.
    fn ends(&self) -> Vec<(Arc<Partition>, i64)> {
        self.topic
            .partitions
            .iter()
            .zip(&self.ends)
            .filter(|(_, end)| **end > 0)
            .map(|(p, end)| (Arc::clone(p), *end))
            .collect()
    }

    fn set_pending_gauge(&self) {
        let n = if self.appended {
            0
        } else {
            self.pending.as_ref().map_or(0, |o| o.records.len())
        };
        #[allow(clippy::cast_precision_loss, reason = "a gauge")]
        self.pending_rows.set(n as f64);
    }

    fn refused(&mut self, error: &str) {
        self.failures.increment(1);
        self.stalled.store(true, Ordering::Release);
        self.set_pending_gauge();
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|t| now.duration_since(t) >= LATE_FAILURE_LOG_INTERVAL)
        {
            self.logged_at = Some(now);
            tracing::warn!(
                pipeline = %self.pipeline,
                output_topic = %self.topic.name,
                rows = self.pending.as_ref().map_or(0, |o| o.records.len()),
                error,
                "output_topic refused result rows; the pipeline stalls (no input, no \
                 checkpoint commits) and retries every checkpoint_interval"
            );
        }
    }
}

/// Where a pipeline's rows go, before its checkpoint is restored.
pub struct OutputTarget {
    pub topic: Arc<Topic>,
    pub disk: Arc<DiskSpace>,
    pub clock: SharedClock,
    pub runtime: Handle,
}

impl OutputTarget {
    /// Both sides for pipeline `name`; `restored`: it starts from a checkpoint, whose
    /// outbox (if any) gives the sequence and is appended again.
    pub fn open(
        self,
        name: &str,
        fingerprint: u64,
        aggregates: Vec<(String, Vec<f64>)>,
        store: &PipelineStore,
        restored: bool,
    ) -> (OutputRows, OutputSink) {
        let outbox = if restored {
            match store.outbox().map(|o| o.map(|b| Outbox::decode(&b))) {
                Ok(Some(Ok(o))) => Some(o),
                Ok(None) => None,
                // Derived data whose loss costs at most one checkpoint's rows (if the crash
                // came before they were durable): said loudly, not fatal.
                Ok(Some(Err(e))) => {
                    tracing::error!(pipeline = %name, error = %e,
                        "the output outbox cannot be read; the rows of the last checkpoint may be missing from the output_topic");
                    None
                }
                Err(e) => {
                    tracing::error!(pipeline = %name, error = %e,
                        "the output outbox cannot be read; the rows of the last checkpoint may be missing from the output_topic");
                    None
                }
            }
        } else {
            None
        };
        let seq = outbox.as_ref().map_or(0, |o| o.seq);
        let rows = OutputRows::new(name, fingerprint, aggregates, seq);
        let sink = OutputSink::new(
            name,
            self.topic,
            self.disk,
            self.clock,
            self.runtime,
            outbox,
        );
        (rows, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_decodes_to_what_was_encoded_and_rejects_garbage() {
        let outbox = Outbox {
            seq: 7,
            records: vec![
                OutRecord {
                    key: b"k".to_vec(),
                    value: b"{}".to_vec(),
                    timestamp_ms: -3,
                    // Not UTF-8 in its bytes.
                    id: u128::MAX - 1,
                },
                OutRecord {
                    key: Vec::new(),
                    value: b"v".to_vec(),
                    timestamp_ms: 9,
                    id: 0,
                },
            ],
        };
        let bytes = outbox.encode();
        assert_eq!(Outbox::decode(&bytes).unwrap(), outbox);
        assert!(Outbox::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Outbox::decode(&longer).is_err());
    }

    #[test]
    fn rows_of_a_failed_checkpoint_go_into_the_next_with_its_sequence() {
        let mut rows = OutputRows::new("p", 1, vec![("count".into(), Vec::new())], 4);
        let key: Arc<str> = "a".into();
        rows.closed(0, &key, 10, &[AggState::Count(3)]);
        let engine = Engine::new(crate::pipeline::runner::spec_of(
            &crate::config::PipelineConfig::new("p", "t"),
            1,
        ));
        let first = rows.encode(&engine);
        assert_eq!(first.seq, 5);
        assert_eq!(first.records.len(), 1);
        let text = String::from_utf8(first.records[0].value.clone()).unwrap();
        assert!(
            text.contains(r#""payload":{"key":"a","start":"1970-01-01T00:00:00.000Z","end":"1970-01-01T00:00:00.010Z","final":true,"version":5,"values":{"count":3}}"#),
            "{text}"
        );
        assert_eq!(first.records[0].key, b"1970-01-01T00:00:00.000Z/a");
        rows.failed();
        let again = rows.encode(&engine);
        assert_eq!(again, first, "the same rows, version and ids");
        rows.committed();
        assert!(rows.encode(&engine).records.is_empty());
        rows.committed();
        rows.closed(1000, &key, 1010, &[AggState::Count(1)]);
        let next = rows.encode(&engine);
        assert_eq!(next.seq, 7);
        assert_ne!(next.records[0].id, first.records[0].id);
    }
}
