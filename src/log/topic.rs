//! A topic: its partitions, partitioner, dedup table and the ingest of one request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use metrics::Counter;

use super::batch::BatchBuilder;
use super::dedup::{Dedup, IdSet, Ticket};
use super::partition::{AppendError, Partition};
use super::partitioner::partition_for_key;
use super::{HEADER_APPEND, HEADER_ID, HEADER_TYPE};
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
    pub fn new(config: TopicConfig, partitions: Vec<Arc<Partition>>) -> Topic {
        let name: Arc<str> = config.name.as_str().into();
        let window_ms = i64::try_from(config.dedup_window.as_millis()).unwrap_or(i64::MAX);
        let dedup = Arc::new(Dedup::new(
            Arc::clone(&name),
            window_ms,
            config.max_dedup_entries,
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
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        TopicRules {
            wrap: self.config.wrap,
            key_field: self.config.key_field.as_ref(),
            timestamp_field: self.config.timestamp_field.as_ref(),
            default_event_type: self.config.default_event_type.as_deref(),
            max_event_age_ms: ms(self.config.max_event_age),
            max_event_lead_ms: ms(self.config.max_event_lead),
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
        let admission = self.dedup.admit(&ids, now_ms).await;
        let n = self.partition_count();
        let keyless = self.next_keyless.fetch_add(1, Ordering::Relaxed) % n;
        let mut builders: Vec<Option<(BatchBuilder, Vec<u128>)>> = (0..n).map(|_| None).collect();
        let mut scratch = Vec::with_capacity(512);
        // Envelopes plus record overhead, spread over the partitions: enough that a
        // builder rarely reallocates.
        let envelope_bytes: usize = events.iter().map(|e| e.envelope_len_hint()).sum();
        let batch_bytes_hint =
            64 + (envelope_bytes + 64 * events.len()) / events.len().clamp(1, n as usize);
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
                pending: Some((appended, batches, ticket, now_ms)),
            }
            .wait()
            .await?
        } else {
            let durable = vec![true; appended.offsets.len()];
            self.finish(appended, &batches, &durable, ticket, now_ms)?
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
        mut appended: Appended,
        batches: Batches,
        ticket: Ticket,
        now_ms: i64,
    ) -> Result<Vec<PartitionRange>, IngestError> {
        let mut durable = vec![true; appended.offsets.len()];
        for (r, ok) in appended.offsets.iter().zip(durable.iter_mut()) {
            if let Err(e) = self.partitions[r.partition as usize]
                .wait_visible(r.last)
                .await
            {
                *ok = false;
                appended.failure.get_or_insert(e);
            }
        }
        self.finish(appended, &batches, &durable, ticket, now_ms)
    }

    /// Settles the request's ids (those of durable batches are now in the log) and counts.
    fn finish(
        &self,
        appended: Appended,
        batches: &[(u32, Vec<u8>, Vec<u128>)],
        durable: &[bool],
        ticket: Ticket,
        now_ms: i64,
    ) -> Result<Vec<PartitionRange>, IngestError> {
        if ticket.is_empty() {
            drop(ticket);
        } else if durable.len() == batches.len() && durable.iter().all(|ok| *ok) {
            ticket.settle(&|_| true, now_ms, now_ms);
        } else if durable.iter().all(|ok| !*ok) {
            ticket.settle(&|_| false, now_ms, now_ms);
        } else {
            let landed: IdSet = batches
                .iter()
                .zip(durable)
                .filter(|(_, ok)| **ok)
                .flat_map(|((_, _, ids), _)| ids.iter().copied())
                .collect();
            ticket.settle(&|id| landed.contains(&id), now_ms, now_ms);
        }
        if let Some(e) = appended.failure {
            return Err(IngestError::Append(e));
        }
        let events: i64 = appended.offsets.iter().map(|r| r.last - r.first + 1).sum();
        self.events_in.increment(u64::try_from(events).unwrap_or(0));
        self.bytes_in.increment(appended.bytes);
        Ok(appended.offsets)
    }
}

/// A request's batches: (partition, encoded batch, the client ids it carries).
type Batches = Vec<(u32, Vec<u8>, Vec<u128>)>;

/// A request's wait for its batches' fsync under `always`. Dropped before it finished,
/// it goes on in a task of its own: only the rare abandoned request pays for a spawn.
struct DurableWait {
    topic: Arc<Topic>,
    pending: Option<(Appended, Batches, Ticket, i64)>,
}

impl DurableWait {
    async fn wait(mut self) -> Result<Vec<PartitionRange>, IngestError> {
        let ends: Vec<(u32, i64)> = self
            .pending
            .as_ref()
            .map(|(a, ..)| a.offsets.iter().map(|r| (r.partition, r.last)).collect())
            .unwrap_or_default();
        // Waiting first (a failure is seen again by `await_durable`, at once).
        for (p, last) in ends {
            let _ = self.topic.partitions[p as usize].wait_visible(last).await;
        }
        match self.pending.take() {
            Some((appended, batches, ticket, now_ms)) => {
                self.topic
                    .await_durable(appended, batches, ticket, now_ms)
                    .await
            }
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for DurableWait {
    fn drop(&mut self) {
        let Some((appended, batches, ticket, now_ms)) = self.pending.take() else {
            return;
        };
        let topic = Arc::clone(&self.topic);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = topic.await_durable(appended, batches, ticket, now_ms).await;
                });
            }
            // No runtime (it is shutting down): the ticket drops unsettled, which counts
            // as failure, so a retry of these ids is appended rather than refused.
            Err(_) => drop((appended, batches, ticket)),
        }
    }
}

/// The outcome of appending one request's batches.
struct Appended {
    offsets: Vec<PartitionRange>,
    failure: Option<AppendError>,
    bytes: u64,
}
