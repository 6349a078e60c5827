//! A topic: its partitions, partitioner, dedup table and the ingest of one request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use metrics::Counter;

use super::batch::{BATCH_HEADER_LEN, BatchBuilder, record_len_max};
use super::dedup::{Dedup, IdSet, Ticket};
use super::partition::{AppendError, Partition};
use super::partitioner::partition_for_key;
use super::{HEADER_APPEND, HEADER_ID, HEADER_TYPE};
use crate::config::units::millis;
use crate::config::{FsyncMode, TopicConfig};
use crate::event::{Event, TopicRules};
use crate::metrics as m;

pub struct Topic {
    pub name: Arc<str>,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<Partition>>,
    pub dedup: Arc<Dedup>,
    /// Round-robin position for keyless requests.
    next_keyless: AtomicU32,
    events_in: Counter,
    bytes_in: Counter,
    duplicates: Counter,
}

/// Offsets one request got in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionRange {
    pub partition: u32,
    pub first: i64,
    pub last: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub offsets: Vec<PartitionRange>,
    /// Answered after write(2) but before fsync (`interval` and `never`).
    pub buffered: bool,
    /// Record batch bytes written.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Append(#[from] AppendError),
}

impl Topic {
    pub fn new(
        config: TopicConfig,
        partitions: Vec<Arc<Partition>>,
        clock: crate::clock::SharedClock,
    ) -> Topic {
        let name: Arc<str> = config.name.as_str().into();
        let window_ms = millis(config.dedup_window);
        let dedup = Arc::new(Dedup::new(
            Arc::clone(&name),
            window_ms,
            config.max_dedup_entries,
            clock,
        ));
        let label = ("topic", name.to_string());
        Topic {
            events_in: metrics::counter!(m::EVENTS_IN, std::slice::from_ref(&label)),
            bytes_in: metrics::counter!(m::BYTES_IN, std::slice::from_ref(&label)),
            duplicates: metrics::counter!(m::DUPLICATES, &[label]),
            name,
            config,
            partitions,
            dedup,
            next_keyless: AtomicU32::new(0),
        }
    }

    /// The envelope rules of this topic, for the body parser.
    pub fn rules(&self, key_len_max: usize) -> TopicRules<'_> {
        TopicRules {
            wrap: self.config.wrap,
            key_field: self.config.key_field.as_ref(),
            timestamp_field: self.config.timestamp_field.as_ref(),
            default_event_type: self.config.default_event_type.as_deref(),
            max_event_age_ms: millis(self.config.max_event_age),
            max_event_lead_ms: millis(self.config.max_event_lead),
            clamp_bad_time: self.config.on_bad_time == crate::config::OnBadTime::Clamp,
            key_len_max,
        }
    }

    pub fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions.len()).unwrap_or(u32::MAX)
    }

    /// Appends one request's events: duplicates dropped, one batch per partition, answered
    /// once every batch is as durable as the topic asks.
    pub async fn ingest(
        self: &Arc<Self>,
        events: &[Event<'_>],
        now_ms: i64,
    ) -> Result<IngestOutcome, IngestError> {
        let ids: Vec<Option<u128>> = events.iter().map(|e| e.id_hash).collect();
        let dedup_ms = self.dedup.now_ms();
        let admission = self.dedup.admit(&ids, dedup_ms).await;
        let n = self.partition_count();
        let keyless = self.next_keyless.fetch_add(1, Ordering::Relaxed) % n;
        let mut builders: Vec<Option<(BatchBuilder, Vec<u128>)>> = (0..n).map(|_| None).collect();
        let mut scratch = Vec::with_capacity(512);
        let batch_bytes_hint = batch_bytes_hint(events, n);
        let append_bytes = now_ms.to_be_bytes();
        for (event, keep) in events.iter().zip(&admission.append) {
            if !*keep {
                continue;
            }
            let key = event.key.as_deref().map(str::as_bytes);
            let p = key.map_or(keyless, |k| partition_for_key(k, n));
            let (builder, ids) = builders[p as usize].get_or_insert_with(|| {
                (
                    BatchBuilder::with_buffer(Vec::with_capacity(batch_bytes_hint)),
                    Vec::new(),
                )
            });
            scratch.clear();
            event.write_envelope(&mut scratch);
            let id_bytes;
            let headers: &[(&str, &[u8])] = match event.id_hash {
                Some(h) => {
                    ids.push(h);
                    id_bytes = h.to_be_bytes();
                    &[
                        (HEADER_TYPE, event.event_type.as_bytes()),
                        (HEADER_ID, &id_bytes),
                        (HEADER_APPEND, &append_bytes),
                    ]
                }
                None => &[
                    (HEADER_TYPE, event.event_type.as_bytes()),
                    (HEADER_APPEND, &append_bytes),
                ],
            };
            builder.push(key, &scratch, event.timestamp_ms, headers);
        }
        let mut batches: Batches = builders
            .into_iter()
            .zip(0u32..)
            .filter_map(|(b, p)| b.map(|(b, ids)| (p, b.finish(), ids)))
            .collect();
        let duplicates = admission.duplicates;
        let ticket = admission.ticket;
        // The appends are synchronous: nothing between them and the dedup bookkeeping can
        // be cancelled. Under `always` the wait for fsync is an await: if the request is
        // dropped during it (the client hung up), `DurableWait`'s drop finishes it in a
        // task of its own, so an append that happened still enters the dedup table.
        let appended = self.append_batches(&mut batches, now_ms);
        let bytes = appended.bytes;
        let offsets = if self.config.fsync == FsyncMode::Always {
            DurableWait {
                topic: Arc::clone(self),
                pending: Some((appended, batches, ticket, dedup_ms)),
            }
            .wait()
            .await?
        } else {
            let durable = vec![true; appended.offsets.len()];
            self.finish(appended, &batches, &durable, ticket, dedup_ms)?
        };
        self.duplicates.increment(duplicates as u64);
        let accepted = offsets
            .iter()
            .map(|r| usize::try_from(r.last - r.first + 1).unwrap_or(0))
            .sum();
        Ok(IngestOutcome {
            accepted,
            duplicates,
            offsets,
            buffered: self.config.fsync != FsyncMode::Always,
            bytes,
        })
    }

    /// Appends records forwarded from another topic as they were stored there (a
    /// pipeline's late events): their key, value, timestamp, event type and id hash,
    /// partitioned by key with this topic's partitioner (keyless: one round-robin
    /// partition per call), one batch per partition, stamped with append time `now_ms`.
    /// The envelope rules of the topic are not applied: the source checked the events.
    ///
    /// Ids go through the dedup table like an ingest's, so a record forwarded again
    /// (a replay) is a duplicate. Returns once the batches are written, without waiting
    /// for fsync under any mode: the ids count as appended from then on, and the caller
    /// makes the partitions durable through [`Forwarded::ends`] before it relies on them
    /// (a crash before that loses the dedup table with the records, so nothing is
    /// taken for a duplicate that is not in the log).
    pub async fn append_forwarded(
        self: &Arc<Self>,
        records: &[ForwardRecord<'_>],
        now_ms: i64,
    ) -> Forwarded {
        let ids: Vec<Option<u128>> = records.iter().map(|r| r.id).collect();
        let dedup_ms = self.dedup.now_ms();
        let admission = self.dedup.admit(&ids, dedup_ms).await;
        let n = self.partition_count();
        let keyless = self.next_keyless.fetch_add(1, Ordering::Relaxed) % n;
        let mut builders: Vec<Option<(BatchBuilder, Vec<u128>)>> = (0..n).map(|_| None).collect();
        let append_bytes = now_ms.to_be_bytes();
        // The partition of each record, `None` for a duplicate.
        let mut partition_of: Vec<Option<u32>> = Vec::with_capacity(records.len());
        for (r, keep) in records.iter().zip(&admission.append) {
            if !*keep {
                partition_of.push(None);
                continue;
            }
            let p = r.key.map_or(keyless, |k| partition_for_key(k, n));
            partition_of.push(Some(p));
            let (builder, ids) =
                builders[p as usize].get_or_insert_with(|| (BatchBuilder::new(), Vec::new()));
            let id_bytes;
            let headers: &[(&str, &[u8])] = match r.id {
                Some(h) => {
                    ids.push(h);
                    id_bytes = h.to_be_bytes();
                    &[
                        (HEADER_TYPE, r.event_type),
                        (HEADER_ID, &id_bytes),
                        (HEADER_APPEND, &append_bytes),
                    ]
                }
                None => &[(HEADER_TYPE, r.event_type), (HEADER_APPEND, &append_bytes)],
            };
            builder.push(r.key, r.value, r.timestamp_ms, headers);
        }
        let mut batches: Vec<(u32, Vec<u8>, Vec<u128>)> = builders
            .into_iter()
            .zip(0u32..)
            .filter_map(|(b, p)| b.map(|(b, ids)| (p, b.finish(), ids)))
            .collect();
        let appended = self.append_batches(&mut batches, now_ms);
        let written: Vec<u32> = appended.offsets.iter().map(|r| r.partition).collect();
        let ends = appended
            .offsets
            .iter()
            .map(|r| (r.partition, r.last + 1))
            .collect();
        let bytes = appended.bytes;
        self.duplicates.increment(admission.duplicates as u64);
        let durable = vec![true; appended.offsets.len()];
        let failure = self
            .finish(appended, &batches, &durable, admission.ticket, dedup_ms)
            .err();
        let landed = partition_of
            .iter()
            .map(|p| p.is_none_or(|p| written.contains(&p)))
            .collect();
        Forwarded {
            landed,
            ends,
            duplicates: admission.duplicates,
            bytes,
            failure,
        }
    }

    /// Appends each partition's batch in turn, stopping at the first failure.
    fn append_batches(&self, batches: &mut [(u32, Vec<u8>, Vec<u128>)], now_ms: i64) -> Appended {
        let mut out = Appended {
            offsets: Vec::with_capacity(batches.len()),
            failure: None,
            bytes: 0,
        };
        for (p, batch, _) in batches.iter_mut() {
            match self.partitions[*p as usize].append(batch, now_ms) {
                Ok(a) => {
                    out.offsets.push(PartitionRange {
                        partition: *p,
                        first: a.base_offset,
                        last: a.last_offset,
                    });
                    out.bytes += batch.len() as u64;
                }
                Err(e) => {
                    out.failure = Some(e);
                    break;
                }
            }
        }
        out
    }

    /// Under `always`: waits for every appended batch to be fsynced. A batch whose fsync
    /// failed may be lost, so its ids must stay appendable.
    async fn await_durable(
        &self,
        appended: Appended,
        batches: Batches,
        ticket: Ticket,
        dedup_ms: i64,
    ) -> Result<Vec<PartitionRange>, IngestError> {
        let waits = self.wait_durable(&appended).await;
        self.settle_durable(appended, &batches, waits, ticket, dedup_ms)
    }

    /// Waits for each appended batch to be fsynced; Err where its partition was fenced
    /// first.
    async fn wait_durable(&self, appended: &Appended) -> Vec<Result<(), AppendError>> {
        let mut waits = Vec::with_capacity(appended.offsets.len());
        for r in &appended.offsets {
            waits.push(
                self.partitions[r.partition as usize]
                    .wait_visible(r.last)
                    .await,
            );
        }
        waits
    }

    /// [`Self::finish`] once `waits` (from [`Self::wait_durable`]) say which batches are
    /// durable; the first failure is the request's.
    fn settle_durable(
        &self,
        mut appended: Appended,
        batches: &Batches,
        waits: Vec<Result<(), AppendError>>,
        ticket: Ticket,
        dedup_ms: i64,
    ) -> Result<Vec<PartitionRange>, IngestError> {
        let mut durable = Vec::with_capacity(waits.len());
        for w in waits {
            durable.push(w.is_ok());
            if let Err(e) = w {
                appended.failure.get_or_insert(e);
            }
        }
        Ok(self.finish(appended, batches, &durable, ticket, dedup_ms)?)
    }

    /// Settles the request's ids (those of durable batches are now in the log, stamped
    /// with the dedup table's time `dedup_ms`) and counts.
    fn finish(
        &self,
        appended: Appended,
        batches: &[(u32, Vec<u8>, Vec<u128>)],
        durable: &[bool],
        ticket: Ticket,
        dedup_ms: i64,
    ) -> Result<Vec<PartitionRange>, AppendError> {
        if ticket.is_empty() {
            drop(ticket);
        } else if durable.len() == batches.len() && durable.iter().all(|ok| *ok) {
            ticket.settle(&|_| true, dedup_ms, dedup_ms);
        } else if durable.iter().all(|ok| !*ok) {
            ticket.settle(&|_| false, dedup_ms, dedup_ms);
        } else {
            let landed: IdSet = batches
                .iter()
                .zip(durable)
                .filter(|(_, ok)| **ok)
                .flat_map(|((_, _, ids), _)| ids.iter().copied())
                .collect();
            ticket.settle(&|id| landed.contains(&id), dedup_ms, dedup_ms);
        }
        if let Some(e) = appended.failure {
            return Err(e);
        }
        let events: i64 = appended.offsets.iter().map(|r| r.last - r.first + 1).sum();
        self.events_in.increment(u64::try_from(events).unwrap_or(0));
        self.bytes_in.increment(appended.bytes);
        Ok(appended.offsets)
    }
}

/// The first allocation of each partition's batch buffer: the request's records
/// (envelope, key, event type and the rest) spread over the partitions, plus the batch
/// header. Enough that a builder rarely reallocates; a single event's never.
fn batch_bytes_hint(events: &[Event<'_>], partitions: u32) -> usize {
    let record_bytes: usize = events
        .iter()
        .map(|e| {
            // The headers `ingest` writes: type, id hash (16 bytes), append time (8).
            let headers = [
                (HEADER_TYPE, e.event_type.len()),
                (HEADER_ID, 16),
                (HEADER_APPEND, 8),
            ];
            record_len_max(
                e.key.as_deref().map_or(0, str::len),
                e.envelope_len_hint(),
                &headers,
            )
        })
        .sum();
    BATCH_HEADER_LEN + record_bytes / events.len().clamp(1, partitions as usize)
}

/// A request's batches: (partition, encoded batch, the client ids it carries).
type Batches = Vec<(u32, Vec<u8>, Vec<u128>)>;

/// A request's wait for its batches' fsync under `always`. Dropped before it finished,
/// it goes on in a task of its own: only the rare abandoned request pays for a spawn.
struct DurableWait {
    topic: Arc<Topic>,
    /// The request's appends, its dedup ticket and the table time it was admitted at.
    pending: Option<(Appended, Batches, Ticket, i64)>,
}

impl DurableWait {
    async fn wait(mut self) -> Result<Vec<PartitionRange>, IngestError> {
        // `pending` stays in place while waiting: dropped here, `Drop` finishes it.
        let waits = match &self.pending {
            Some((appended, ..)) => self.topic.wait_durable(appended).await,
            None => Vec::new(),
        };
        match self.pending.take() {
            Some((appended, batches, ticket, dedup_ms)) => self
                .topic
                .settle_durable(appended, &batches, waits, ticket, dedup_ms),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for DurableWait {
    fn drop(&mut self) {
        let Some((appended, batches, ticket, dedup_ms)) = self.pending.take() else {
            return;
        };
        let topic = Arc::clone(&self.topic);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = topic
                        .await_durable(appended, batches, ticket, dedup_ms)
                        .await;
                });
            }
            // No runtime (it is shutting down): the ticket drops unsettled, which counts
            // as failure, so a retry of these ids is appended rather than refused.
            Err(_) => drop((appended, batches, ticket)),
        }
    }
}

/// One record for [`Topic::append_forwarded`], borrowed from where it was read.
#[derive(Debug, Clone, Copy)]
pub struct ForwardRecord<'a> {
    pub key: Option<&'a [u8]>,
    /// The stored envelope.
    pub value: &'a [u8],
    /// The record timestamp (event time).
    pub timestamp_ms: i64,
    /// `weir.type`.
    pub event_type: &'a [u8],
    /// `weir.id`: the xxh3-128 of the event_id.
    pub id: Option<u128>,
}

/// What [`Topic::append_forwarded`] did.
#[derive(Debug)]
pub struct Forwarded {
    /// Per record: in the topic now (written, or a duplicate of one already there).
    pub landed: Vec<bool>,
    /// Per partition written: one past the last offset written.
    pub ends: Vec<(u32, i64)>,
    pub duplicates: usize,
    /// Record batch bytes written.
    pub bytes: u64,
    /// The first partition that refused its batch (later ones were not tried).
    pub failure: Option<AppendError>,
}

/// The outcome of appending one request's batches.
struct Appended {
    offsets: Vec<PartitionRange>,
    failure: Option<AppendError>,
    bytes: u64,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::log::Log;
    use crate::log::batches::batches;

    const NOW_MS: i64 = 1_000_000;

    fn open(dir: &Path) -> Log {
        let text = format!(
            "[storage]\ndata_dir = {:?}\n[[topic]]\nname = \"late\"\npartitions = 2\nfsync = \"never\"\n",
            dir.display().to_string()
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        Log::open(&config, Arc::new(ManualClock::new(NOW_MS)))
            .unwrap()
            .0
    }

    /// (timestamp, key, value, weir.type, weir.id, weir.append) of every record of `p`.
    type Stored = (i64, Option<Vec<u8>>, Vec<u8>, Vec<u8>, Option<u128>, i64);

    fn stored(p: &Partition) -> Vec<Stored> {
        let mut buf = Vec::new();
        p.read_batches(0, 1 << 20, &mut buf).unwrap();
        batches(&buf)
            .flat_map(|b| b.stored_records_from(0).collect::<Vec<_>>())
            .map(|(_, ts, r)| {
                let append = r.header(HEADER_APPEND).unwrap().try_into().unwrap();
                (
                    ts,
                    r.key.map(<[u8]>::to_vec),
                    r.value.unwrap().to_vec(),
                    r.header(HEADER_TYPE).unwrap().to_vec(),
                    r.header(HEADER_ID)
                        .map(|h| u128::from_be_bytes(h.try_into().unwrap())),
                    i64::from_be_bytes(append),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_single_events_batch_fits_its_first_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let topic = log.topic("late").unwrap();
        let long = "x".repeat(300);
        let bodies = [
            r#"{"event_type":"a","payload":{}}"#.to_string(),
            r#"{"event_id":"e-1","event_type":"page.click","timestamp":"1970-01-01T00:16:40.123Z","key":"u-1","payload":{"a":1}}"#.to_string(),
            // A long client id, key and type, a numeric time, escapes and a control byte.
            format!(r#"{{"event_id":"{long}","event_type":"{long}\u0001é","timestamp":1000123,"key":"{long}","payload":{{"s":"\u00e9\n"}}}}"#),
            // No time: weir writes the append time.
            r#"{"event_type":"t","payload":[1,2,3]}"#.to_string(),
        ];
        let rules = topic.rules(1024);
        let mut events = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            crate::event::parse_body(body.as_bytes(), &rules, None, NOW_MS, &mut events)
                .unwrap_or_else(|e| panic!("body {i}: {e}"));
            let hint = batch_bytes_hint(&events, topic.partition_count());
            let before: Vec<u64> = topic
                .partitions
                .iter()
                .map(|p| p.visible().position)
                .collect();
            topic.ingest(&events, NOW_MS).await.unwrap();
            let grew: Vec<u64> = topic
                .partitions
                .iter()
                .zip(&before)
                .map(|(p, b)| p.visible().position - b)
                .filter(|n| *n > 0)
                .collect();
            assert_eq!(grew.len(), 1, "body {i}: one batch");
            assert!(
                usize::try_from(grew[0]).unwrap() <= hint,
                "body {i}: batch of {} bytes, hint {hint}",
                grew[0]
            );
        }
    }

    #[tokio::test]
    async fn forwarded_records_are_stored_as_given_and_a_repeat_is_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let topic = log.topic("late").unwrap();
        let record = |key: Option<&'static [u8]>, value: &'static [u8], id| ForwardRecord {
            key,
            value,
            timestamp_ms: 5,
            event_type: b"page.view",
            id,
        };
        let records = [
            record(Some(b"k1"), b"{\"a\":1}", Some(7)),
            record(Some(b"k2"), b"{\"a\":2}", Some(8)),
            record(None, b"{\"a\":3}", None),
        ];
        let out = topic.append_forwarded(&records, NOW_MS).await;
        assert!(out.failure.is_none());
        assert_eq!((out.landed.as_slice(), out.duplicates), (&[true; 3][..], 0));
        let mut total = 0;
        for (p, end) in &out.ends {
            assert_eq!(topic.partitions[*p as usize].visible().end_offset, *end);
            total += end;
        }
        assert_eq!(total, 3, "{:?}", out.ends);
        let p1 = partition_for_key(b"k1", 2) as usize;
        let k1 = stored(&topic.partitions[p1]);
        let want = (
            5,
            Some(b"k1".to_vec()),
            b"{\"a\":1}".to_vec(),
            b"page.view".to_vec(),
            Some(7),
            NOW_MS,
        );
        assert!(k1.contains(&want), "{k1:?}");

        // A replay: the ids are duplicates, nothing is written; the keyless one (no id)
        // would be appended again, which is why pipelines give every record an id.
        let again = topic.append_forwarded(&records[..2], NOW_MS + 1).await;
        assert!(again.failure.is_none());
        assert_eq!(again.landed, [true, true]);
        assert_eq!(again.duplicates, 2);
        assert!(again.ends.is_empty());
        let all: usize = topic.partitions.iter().map(|p| stored(p).len()).sum();
        assert_eq!(all, 3);
    }
}
