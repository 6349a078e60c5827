//! A topic: its partitions, partitioner, dedup table and the ingest of one request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use metrics::Counter;

use super::batch::BatchBuilder;
use super::dedup::{Dedup, IdSet};
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
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("ingest task failed: {0}")]
    Task(String),
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
        let append_bytes = now_ms.to_be_bytes();
        for (event, keep) in events.iter().zip(&admission.append) {
            if !*keep {
                continue;
            }
            let key = event.key.as_deref().map(str::as_bytes);
            let p = key.map_or(keyless, |k| partition_for_key(k, n));
            let (builder, ids) =
                builders[p as usize].get_or_insert_with(|| (BatchBuilder::new(), Vec::new()));
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
        let mut batches: Vec<(u32, Vec<u8>, Vec<u128>)> = builders
            .into_iter()
            .zip(0u32..)
            .filter_map(|(b, p)| b.map(|(b, ids)| (p, b.finish(), ids)))
            .collect();
        let duplicates = admission.duplicates;
        let ticket = admission.ticket;
        // The append and its dedup bookkeeping run to completion even if the client goes
        // away: an append that happened must enter the dedup table.
        let topic = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut offsets = Vec::with_capacity(batches.len());
            let mut failure = None;
            let mut bytes = 0u64;
            for (p, batch, _) in batches.iter_mut() {
                match topic.partitions[*p as usize].append(batch, now_ms) {
                    Ok(a) => {
                        offsets.push(PartitionRange {
                            partition: *p,
                            first: a.base_offset,
                            last: a.last_offset,
                        });
                        bytes += batch.len() as u64;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            // Under `always` a batch counts only once fsynced; one whose fsync failed may
            // be lost, so its ids must stay appendable.
            let mut durable = vec![true; offsets.len()];
            if topic.config.fsync == FsyncMode::Always {
                for (r, ok) in offsets.iter().zip(durable.iter_mut()) {
                    let partition = &topic.partitions[r.partition as usize];
                    if let Err(e) = partition.wait_visible(r.last).await {
                        *ok = false;
                        failure.get_or_insert(e);
                    }
                }
            }
            let landed: IdSet = batches
                .iter()
                .zip(&durable)
                .filter(|(_, ok)| **ok)
                .flat_map(|((_, _, ids), _)| ids.iter().copied())
                .collect();
            ticket.settle(&|id| landed.contains(&id), now_ms, now_ms);
            if let Some(e) = failure {
                return Err(IngestError::Append(e));
            }
            let events: i64 = offsets.iter().map(|r| r.last - r.first + 1).sum();
            topic
                .events_in
                .increment(u64::try_from(events).unwrap_or(0));
            topic.bytes_in.increment(bytes);
            Ok(offsets)
        });
        let offsets = task.await.map_err(|e| IngestError::Task(e.to_string()))??;
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
        })
    }
}
