//! Reading back: `GET /v1/topics`, `GET /v1/topics/{topic}` and pulls, of one partition
//! (`partition=`, from an offset or an event time) or of every partition (`cursor=`),
//! answering at once or long-polling (`wait_ms=`).
//!
//! Envelopes are copied from the segments byte for byte into the answer, never parsed.
//! Segment reads run in `spawn_blocking`. A long poll subscribes to the partitions'
//! visible-end watch channels *before* its first read, so an append that lands after
//! the read saw nothing still wakes it (see `Partition::append`); it never polls.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::cursor::{self, CursorSpec};
use super::errors::{ApiError, ErrorCode};
use super::ingest::InflightPermits;
use super::{SharedState, json_bytes_holding};
use crate::event::parse_timestamp;
use crate::limits::{
    READ_RECORDS_DEFAULT, READ_RECORDS_MAX, READ_RESPONSE_BYTES_MAX, READ_WAIT_MS_MAX,
};
use crate::log::partition::{Partition, ReadError, Visible};
use crate::log::topic::Topic;
use crate::log::topic_name::validate_topic_name;
use crate::metrics as m;

fn topic_json(topic: &Topic) -> serde_json::Value {
    let starts: Vec<i64> = topic.partitions.iter().map(|p| p.start_offset()).collect();
    let ends: Vec<i64> = topic
        .partitions
        .iter()
        .map(|p| p.visible().end_offset)
        .collect();
    let bytes: u64 = topic.partitions.iter().map(|p| p.bytes()).sum();
    json!({
        "name": &*topic.name,
        "partitions": topic.partitions.len(),
        "start_offsets": starts,
        "end_offsets": ends,
        "bytes": bytes,
    })
}

pub async fn list_topics(State(state): State<SharedState>) -> axum::Json<serde_json::Value> {
    let topics: Vec<_> = state.log.topics().values().map(|t| topic_json(t)).collect();
    axum::Json(json!({ "topics": topics }))
}

pub(crate) fn lookup(state: &SharedState, name: &str) -> Result<Arc<Topic>, ApiError> {
    validate_topic_name(name).map_err(|m| ApiError::new(ErrorCode::InvalidTopicName, m))?;
    state
        .log
        .topic(name)
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownTopic, format!("no topic {name:?}")))
}

pub async fn get_topic(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let topic = lookup(&state, &name)?;
    Ok(axum::Json(topic_json(&topic)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullQuery {
    partition: Option<u32>,
    offset: Option<i64>,
    /// Event time: epoch milliseconds or RFC 3339 (the forms an envelope's timestamp takes).
    from_time: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

/// Where a read starts, before it is resolved against the log.
#[derive(Debug, Clone)]
pub(crate) enum Start {
    /// One offset per partition read, in order.
    Offsets(Vec<i64>),
    /// The first record at or after this event time (ms), in every partition read.
    Time(i64),
}

/// Parses an event time given as a query parameter.
pub(crate) fn parse_time_param(name: &str, text: &str) -> Result<i64, ApiError> {
    parse_timestamp(text)
        .map_err(|e| ApiError::new(ErrorCode::InvalidParameter, format!("{name}: {e}")))
}

/// Every partition's offsets from a cursor text (`invalid_cursor` if it does not parse).
pub(crate) fn cursor_offsets(topic: &Topic, text: &str) -> Result<Vec<i64>, ApiError> {
    let spec = cursor::parse(text, topic.partition_count())
        .map_err(|m| ApiError::new(ErrorCode::InvalidCursor, m))?;
    Ok(match spec {
        CursorSpec::Earliest => topic.partitions.iter().map(|p| p.start_offset()).collect(),
        CursorSpec::Latest => topic
            .partitions
            .iter()
            .map(|p| p.visible().end_offset)
            .collect(),
        CursorSpec::At(offsets) => topic
            .partitions
            .iter()
            .zip(offsets)
            .map(|(p, o)| o.unwrap_or_else(|| p.start_offset()))
            .collect(),
    })
}

fn bad(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, message)
}

pub async fn pull(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    query: Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let topic = lookup(&state, &name)?;
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    let limit = q.limit.unwrap_or(READ_RECORDS_DEFAULT);
    if limit == 0 || limit > READ_RECORDS_MAX {
        return Err(bad(&format!(
            "limit must be between 1 and {READ_RECORDS_MAX}"
        )));
    }
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > READ_WAIT_MS_MAX {
        return Err(bad(&format!("wait_ms must be at most {READ_WAIT_MS_MAX}")));
    }
    let from_time = q
        .from_time
        .as_deref()
        .map(|t| parse_time_param("from_time", t))
        .transpose()?;
    let (partitions, start, single) = if let Some(p) = q.partition {
        let Some(partition) = topic.partitions.get(p as usize).cloned() else {
            return Err(ApiError::new(
                ErrorCode::UnknownPartition,
                format!(
                    "topic {name:?} has partitions 0 to {}",
                    topic.partitions.len() - 1
                ),
            ));
        };
        if q.cursor.is_some() {
            return Err(bad(
                "cursor reads every partition: give partition or cursor, not both",
            ));
        }
        let start = match (q.offset, from_time) {
            (Some(_), Some(_)) => return Err(bad("give offset or from_time, not both")),
            (Some(o), None) => Start::Offsets(vec![o]),
            (None, Some(t)) => Start::Time(t),
            (None, None) => Start::Offsets(vec![partition.start_offset()]),
        };
        (vec![partition], start, true)
    } else {
        if q.offset.is_some() {
            return Err(bad(
                "offset needs partition; across partitions give a cursor",
            ));
        }
        let start = match (q.cursor.as_deref(), from_time) {
            (Some(_), Some(_)) => return Err(bad("give cursor or from_time, not both")),
            (Some(c), None) => Start::Offsets(cursor_offsets(&topic, c)?),
            (None, Some(t)) => Start::Time(t),
            (None, None) => Start::Offsets(cursor_offsets(&topic, "earliest")?),
        };
        (topic.partitions.clone(), start, false)
    };

    let wait = Duration::from_millis(wait_ms);
    let deadline = tokio::time::Instant::now() + wait;
    let mut stop = state.shutdown.subscribe();
    // Subscribed before the first read: see the module comment.
    let mut watches: Vec<watch::Receiver<Visible>> = if wait.is_zero() {
        Vec::new()
    } else {
        partitions.iter().map(|p| p.subscribe()).collect()
    };
    let mut start = start;
    // The answer's buffer is charged to `max_inflight` while it is built and sent, as a
    // request body is: a thousand pulls at once are refused (503 `overloaded`), not 4 MiB
    // each in memory. A `max_inflight` below one answer's buffer is taken whole, so the
    // largest pull still runs, alone.
    let capacity = answer_capacity(limit);
    loop {
        let (inflight, max_inflight) = {
            let live = state.live.load();
            (Arc::clone(&live.inflight), live.server.max_inflight)
        };
        let mut permits = InflightPermits::new(inflight);
        permits.take((capacity as u64).min(max_inflight))?;
        let parts = partitions.clone();
        let from = start.clone();
        let answer =
            tokio::task::spawn_blocking(move || pull_answer(&parts, from, limit, capacity, single))
                .await
                .map_err(|e| ApiError::new(ErrorCode::InternalError, e.to_string()))??;
        let done = answer.records > 0
            || wait.is_zero()
            || tokio::time::Instant::now() >= deadline
            || *stop.borrow();
        if done {
            count_read(&topic, answer.records, answer.bytes);
            return Ok(json_bytes_holding(StatusCode::OK, answer.body, permits));
        }
        drop(permits);
        start = Start::Offsets(answer.offsets);
        tokio::select! {
            () = any_changed(&mut watches) => {}
            () = tokio::time::sleep_until(deadline) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Counts records and envelope bytes served to readers.
pub(crate) fn count_read(topic: &Topic, records: usize, bytes: usize) {
    if records > 0 {
        let label = ("topic", topic.name.to_string());
        metrics::counter!(m::READ_RECORDS, std::slice::from_ref(&label)).increment(records as u64);
        metrics::counter!(m::READ_BYTES, &[label]).increment(bytes as u64);
    }
}

/// Resolves when any of the watches sees a new visible end. A closed channel (its
/// partition gone) never resolves, so it cannot make a waiter spin.
pub(crate) async fn any_changed(watches: &mut [watch::Receiver<Visible>]) {
    let mut waits: Vec<_> = watches
        .iter_mut()
        .map(|rx| {
            Box::pin(async move {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
        })
        .collect();
    std::future::poll_fn(|cx| {
        for w in &mut waits {
            if w.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}

struct PullAnswer {
    body: Vec<u8>,
    records: usize,
    bytes: usize,
    /// Where the next read starts, per partition read.
    offsets: Vec<i64>,
}

/// A typical event object in an answer (envelope and framing), for sizing the buffer.
const ANSWER_BYTES_PER_RECORD_GUESS: usize = 384;

/// The buffer an answer of up to `limit` records is built in: sized up front, since
/// growing a 4 MiB answer by doubling copies it again.
fn answer_capacity(limit: usize) -> usize {
    limit
        .saturating_mul(ANSWER_BYTES_PER_RECORD_GUESS)
        .clamp(4096, READ_RESPONSE_BYTES_MAX + (64 << 10))
}

fn pull_answer(
    partitions: &[Arc<Partition>],
    start: Start,
    limit: usize,
    capacity: usize,
    single: bool,
) -> Result<PullAnswer, ApiError> {
    let mut offsets = resolve(partitions, start)?;
    let mut body = Vec::with_capacity(capacity);
    body.extend_from_slice(b"{\"events\":[");
    let mut first = true;
    let read = read_fair(
        partitions,
        &mut offsets,
        limit,
        READ_RESPONSE_BYTES_MAX,
        &mut |p, off, key, value, _| {
            if !first {
                body.push(b',');
            }
            first = false;
            write_event(&mut body, p, off, key, value);
        },
    )?;
    if single {
        let _ = write!(body, "],\"next_offset\":{}}}", offsets[0]);
    } else {
        body.extend_from_slice(b"],\"next_cursor\":\"");
        cursor::write(
            &mut body,
            partitions.iter().map(|p| p.id).zip(offsets.iter().copied()),
        );
        body.extend_from_slice(b"\"}");
    }
    Ok(PullAnswer {
        body,
        records: read.records,
        bytes: read.bytes,
        offsets,
    })
}

/// Offsets for `start`; an event time is looked up in each partition's time index.
pub(crate) fn resolve(partitions: &[Arc<Partition>], start: Start) -> Result<Vec<i64>, ApiError> {
    match start {
        Start::Offsets(o) => Ok(o),
        Start::Time(t) => partitions
            .iter()
            .map(|p| p.offset_for_time(t).map_err(|e| read_error(p, e)))
            .collect(),
    }
}

fn read_error(p: &Partition, e: ReadError) -> ApiError {
    ApiError::from(e).with("partition", p.id)
}

/// `{"partition":p,"offset":o,"key":k,"event":<envelope as stored>}`, the object pull
/// answers and SSE `data:` lines carry.
pub(crate) fn write_event(
    out: &mut Vec<u8>,
    partition: u32,
    offset: i64,
    key: Option<&[u8]>,
    value: &[u8],
) {
    // By hand, not `write!`: this runs for every event a read returns.
    out.extend_from_slice(b"{\"partition\":");
    super::write_num(partition, out);
    out.extend_from_slice(b",\"offset\":");
    super::write_num(offset, out);
    out.extend_from_slice(b",\"key\":");
    match key {
        Some(k) => crate::json::write_str_into(&String::from_utf8_lossy(k), out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(value);
    out.push(b'}');
}

/// What one read across partitions returned.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Readout {
    pub records: usize,
    /// Envelope bytes.
    pub bytes: usize,
}

/// Receives `(partition, offset, key, envelope, every partition's next offset after this
/// record)` for each record of a read across partitions.
pub(crate) type EmitAcross<'a> = dyn FnMut(u32, i64, Option<&[u8]>, &[u8], &[i64]) + 'a;

/// Reads up to `records_max` records and about `bytes_max` envelope bytes from
/// `partitions` at `offsets` (advanced in place), spread fairly: each round gives every
/// partition that still has data an equal share of what is left, so a busy partition
/// cannot starve the others. When the limit is smaller than the number of partitions,
/// the partition going first rotates with the offsets, so successive reads take turns.
/// Every offset is checked against its partition's range first (`offset_out_of_range`
/// naming the partition).
pub(crate) fn read_fair(
    partitions: &[Arc<Partition>],
    offsets: &mut [i64],
    records_max: usize,
    bytes_max: usize,
    emit: &mut EmitAcross<'_>,
) -> Result<Readout, ApiError> {
    let mut readable = Vec::with_capacity(partitions.len());
    for (i, p) in partitions.iter().enumerate() {
        let (start, end) = (p.start_offset(), p.visible().end_offset);
        if offsets[i] < start || offsets[i] > end {
            return Err(read_error(p, ReadError::OutOfRange { start, end }));
        }
        if offsets[i] < end {
            readable.push(i);
        }
    }
    if !readable.is_empty() {
        // Offsets are non-negative (checked above); the sum only picks a rotation.
        let turn = offsets
            .iter()
            .fold(0u64, |a, &o| a.wrapping_add(o.unsigned_abs()));
        let first = usize::try_from(turn % readable.len() as u64).unwrap_or(0);
        readable.rotate_left(first);
    }
    let mut out = Readout::default();
    while !readable.is_empty() && out.records < records_max && out.bytes < bytes_max {
        let (records_left, bytes_left) = (records_max - out.records, bytes_max - out.bytes);
        let k = readable.len();
        let mut still = Vec::with_capacity(k);
        for (n, &i) in readable.iter().enumerate() {
            let share = records_left / k + usize::from(n < records_left % k);
            if share == 0 {
                still.push(i);
                continue;
            }
            let bytes_share = (bytes_left / k).max(1);
            let p = &partitions[i];
            let (mut records, mut bytes) = (0usize, 0usize);
            let next = p
                .read(offsets[i], share, bytes_share, &mut |off, key, value| {
                    offsets[i] = off + 1;
                    records += 1;
                    bytes += value.len();
                    emit(p.id, off, key, value, offsets);
                })
                .map_err(|e| read_error(p, e))?;
            offsets[i] = next;
            out.records += records;
            out.bytes += bytes;
            if records == share || bytes >= bytes_share {
                still.push(i);
            }
        }
        readable = still;
    }
    Ok(out)
}
