//! `GET /v1/topics/{topic}/stream`: Server-Sent Events of every partition of a topic.
//!
//! Each event is `id: <cursor after this event>` and `data: <the pull event object>`.
//! A stream starts after `Last-Event-ID` (a cursor), else at `?from=latest` (default),
//! `earliest` or an event time. One task per stream reads a chunk of many events
//! across partitions (fairly, as a cursor pull does) in `spawn_blocking` — or takes it
//! from `stream_cache` when another stream read from the same place — hands it to
//! the response body through a one-slot channel and awaits room before reading more:
//! a slow client holds about two chunks, never more. With nothing to read it waits on
//! the partitions' visible-end watch channels (no polling), sending `: keep-alive`
//! after [`STREAM_KEEPALIVE_MS`] of silence. Shutdown ends every stream at once.
//!
//! Not owned here: the cursor text (`cursor`), the fair read and event object (`read`).

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::channel::{Channel, Sender};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::errors::{ApiError, ErrorCode};
use super::read::{self, Start};
use super::stream_cache::SharedChunk;
use super::{Refusal, SharedState, cursor};
use crate::limits::{STREAM_CHUNK_BYTES_MAX, STREAM_CHUNK_RECORDS_MAX, STREAM_KEEPALIVE_MS};
use crate::log::partition::Partition;
use crate::log::topic::Topic;
use crate::metrics as m;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// `earliest`, `latest` or an event time (epoch ms or RFC 3339).
    from: Option<String>,
}

pub async fn stream(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topic = read::lookup(&state, &name)?;
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    if state.shutting_down.load(Ordering::Acquire) {
        Refusal::ShuttingDown.count();
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "weir is shutting down",
        ));
    }
    let start = match headers.get("last-event-id") {
        Some(id) => {
            let text = id.to_str().map_err(|_| {
                ApiError::new(ErrorCode::InvalidCursor, "Last-Event-ID is not ASCII")
            })?;
            Start::Offsets(read::cursor_offsets(&topic, text.trim())?)
        }
        None => match q.from.as_deref().unwrap_or("latest") {
            "latest" | "earliest" => Start::Offsets(read::cursor_offsets(
                &topic,
                q.from.as_deref().unwrap_or("latest"),
            )?),
            t => Start::Time(read::parse_time_param("from", t)?),
        },
    };
    let (streams, max_streams) = {
        let live = state.live.load();
        (Arc::clone(&live.streams), live.server.max_streams)
    };
    let Ok(permit) = streams.try_acquire_owned() else {
        Refusal::Streams.count();
        return Err(ApiError::new(
            ErrorCode::Overloaded,
            format!("max_streams ({max_streams}) streams are open; retry later"),
        ));
    };
    let partitions = topic.partitions.clone();
    let offsets = tokio::task::spawn_blocking(move || {
        let offsets = read::resolve(&partitions, start)?;
        // Checked now, so a bad Last-Event-ID is a 400 rather than a stream that ends.
        read::read_fair(
            &partitions,
            &mut offsets.clone(),
            0,
            0,
            &mut |_, _, _, _, _| {},
        )?;
        Ok::<_, ApiError>(offsets)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::InternalError, e.to_string()))??;

    let (tx, body) = Channel::<Bytes, Infallible>::new(1);
    let open = OpenStream::new(&topic, permit);
    tokio::spawn(run(Arc::clone(&state), topic, offsets, tx, open));
    let mut response = (StatusCode::OK, Body::new(body)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied answers unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// What an open stream holds until it ends: its `max_streams` permit and its place in
/// the clients gauge.
struct OpenStream {
    _permit: OwnedSemaphorePermit,
    clients: metrics::Gauge,
}

impl OpenStream {
    fn new(topic: &Topic, permit: OwnedSemaphorePermit) -> OpenStream {
        let clients = metrics::gauge!(m::STREAM_CLIENTS, "topic" => topic.name.to_string());
        clients.increment(1.0);
        OpenStream {
            _permit: permit,
            clients,
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.clients.decrement(1.0);
    }
}

/// The stream's task: read a chunk, send it, await room; wait for appends when idle.
/// Ends when the client goes away (the body is dropped), on shutdown, or after a read
/// error, which is sent as an `event: error` first.
async fn run(
    state: SharedState,
    topic: Arc<Topic>,
    mut offsets: Vec<i64>,
    mut tx: Sender<Bytes, Infallible>,
    _open: OpenStream,
) {
    let mut stop = state.shutdown.subscribe();
    let keepalive = Duration::from_millis(STREAM_KEEPALIVE_MS);
    // Subscribed before the first read, as a long poll is (see `read`).
    let mut watches: Vec<_> = topic.partitions.iter().map(|p| p.subscribe()).collect();
    loop {
        if *stop.borrow() {
            return;
        }
        let read = || async {
            let partitions = topic.partitions.clone();
            let from = offsets.clone();
            tokio::task::spawn_blocking(move || read_chunk(&partitions, from))
                .await
                .map_err(|e| ApiError::new(ErrorCode::InternalError, e.to_string()))?
        };
        let chunk = match state.stream_cache.chunk(&topic.name, &offsets, read).await {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send_data(error_event(&e)).await;
                return;
            }
        };
        offsets.clone_from(&chunk.next);
        let sent = if chunk.records > 0 {
            read::count_read(&topic, chunk.records, chunk.bytes);
            send(&mut tx, &mut stop, chunk.text.clone()).await
        } else {
            let idle = tokio::select! {
                () = read::any_changed(&mut watches) => false,
                () = tokio::time::sleep(keepalive) => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            !idle || send(&mut tx, &mut stop, Bytes::from_static(b": keep-alive\n\n")).await
        };
        if !sent {
            return;
        }
    }
}

/// Sends one chunk, waiting for the client to take the previous one. False when the
/// client is gone or shutdown began.
async fn send(
    tx: &mut Sender<Bytes, Infallible>,
    stop: &mut watch::Receiver<bool>,
    data: Bytes,
) -> bool {
    tokio::select! {
        r = tx.send_data(data) => r.is_ok(),
        _ = stop.wait_for(|s| *s) => false,
    }
}

fn read_chunk(
    partitions: &[Arc<Partition>],
    mut offsets: Vec<i64>,
) -> Result<SharedChunk, ApiError> {
    let mut text = Vec::with_capacity(STREAM_CHUNK_BYTES_MAX + 4096);
    let read = read::read_fair(
        partitions,
        &mut offsets,
        STREAM_CHUNK_RECORDS_MAX,
        STREAM_CHUNK_BYTES_MAX,
        &mut |p, off, key, value, after| {
            text.extend_from_slice(b"id: ");
            cursor::write(
                &mut text,
                partitions.iter().map(|p| p.id).zip(after.iter().copied()),
            );
            text.extend_from_slice(b"\ndata: ");
            read::write_event(&mut text, p, off, key, value);
            text.extend_from_slice(b"\n\n");
        },
    )?;
    Ok(SharedChunk {
        text: Bytes::from(text),
        records: read.records,
        bytes: read.bytes,
        next: offsets,
    })
}

/// `event: error` with the error object, the last thing a failing stream sends.
fn error_event(e: &ApiError) -> Bytes {
    let mut out = Vec::new();
    let mut error = serde_json::Map::new();
    error.insert("code".into(), e.code.as_str().into());
    error.insert("message".into(), e.message.clone().into());
    error.extend(e.fields.clone());
    let _ = write!(
        out,
        "event: error\ndata: {}\n\n",
        serde_json::json!({ "error": error })
    );
    Bytes::from(out)
}
