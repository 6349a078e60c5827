//! `POST /v1/topics/{topic}/events`: the ingest route.
//!
//! Order of checks, so a rejected request appends nothing and costs little: topic name
//! (400), topic (404), shutdown (503), declared type (415), declared length (413, before
//! reading), body read with the same bound and `body_timeout`, parse of every record,
//! the free-space reserve (507), then the append. 202 only once the append is as durable as the topic asks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use serde::Deserialize;

use super::SharedState;
use super::errors::{ApiError, ErrorCode};
use crate::event;
use crate::log::topic_name::{is_internal, validate_topic_name};

/// Bodies larger than this are parsed with `block_in_place`, so one big request does not
/// stall the other connections of its worker.
const PARSE_INLINE_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestQuery {
    key: Option<String>,
}

/// The axum route; `http::serve` also calls [`handle`] directly for the common case.
pub async fn ingest(
    State(state): State<SharedState>,
    Path(topic_name): Path<String>,
    query: Result<Query<IngestQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let query = query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()));
    handle(&state, &topic_name, query, request).await
}

/// The ingest of one request, whichever way it was routed. A refusal is logged (info
/// for the client's errors, naming the record and its event_id; debug for the bounds),
/// in the request's span, which carries its trace id when it sent one.
pub async fn handle(
    state: &SharedState,
    topic_name: &str,
    query: Result<IngestQuery, ApiError>,
    request: Request,
) -> Result<Response, ApiError> {
    let mut rejected = None;
    let result = handle_inner(state, topic_name, query, request, &mut rejected).await;
    if let Err(e) = &result {
        log_refusal(topic_name, e, rejected);
    }
    result
}

/// A record a parse refused: the body and where the record starts.
struct Rejected {
    body: bytes::Bytes,
    pos: event::RecordPos,
}

/// How much of a refused record is searched for its event_id.
const REJECTED_ID_SEARCH_BYTES_MAX: usize = 64 << 10;

/// The info lines for rejections: at most `REJECTION_INFO_LINES_PER_SECOND_MAX` a second,
/// counted per second of the monotonic clock (a wall-clock jump does not reset it); the
/// lines beyond go to debug and are counted.
struct InfoBudget {
    second: AtomicU64,
    used: AtomicU64,
    demoted: AtomicU64,
}

static REJECTION_LINES: InfoBudget = InfoBudget {
    second: AtomicU64::new(0),
    used: AtomicU64::new(0),
    demoted: AtomicU64::new(0),
};

impl InfoBudget {
    /// `Some(lines demoted since the last info line)` when this one may be at info.
    fn take(&self) -> Option<u64> {
        use crate::clock::Clock;
        let now = u64::try_from(crate::clock::SystemClock.monotonic_ms() / 1000).unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed)
            < crate::limits::REJECTION_INFO_LINES_PER_SECOND_MAX
        {
            Some(self.demoted.swap(0, Ordering::Relaxed))
        } else {
            self.demoted.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn log_refusal(topic: &str, e: &ApiError, rejected: Option<Rejected>) {
    let (code, status) = (e.code.as_str(), e.code.status().as_u16());
    if !e.code.status().is_client_error() {
        tracing::debug!(topic, code, status, error = %e.message, "ingest refused");
        return;
    }
    let info = if tracing::enabled!(tracing::Level::INFO) {
        REJECTION_LINES.take()
    } else {
        None
    };
    if info.is_none() && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    // The event_id member of the record, if the record got that far as JSON.
    let (pos, event_id) = match rejected {
        Some(Rejected { body, pos }) => (Some(pos), rejected_event_id(&body, pos)),
        None => (None, None),
    };
    macro_rules! rejected_line {
        ($level:expr) => {
            tracing::event!(
                $level,
                topic,
                code,
                status,
                record = pos.map(|p| p.record),
                byte = pos.map(|p| p.byte),
                line = pos.map(|p| p.line),
                event_id = event_id.as_deref(),
                demoted = info,
                error = %e.message,
                "ingest rejected"
            )
        };
    }
    if info.is_some() {
        rejected_line!(tracing::Level::INFO);
    } else {
        rejected_line!(tracing::Level::DEBUG);
    }
}

/// The event_id of the rejected record starting at `pos` of `body`, if it has one
/// before whatever made it bad.
fn rejected_event_id(body: &[u8], pos: event::RecordPos) -> Option<String> {
    let rest = body.get(pos.byte..).unwrap_or_default();
    let rest = &rest[..rest.len().min(REJECTED_ID_SEARCH_BYTES_MAX)];
    let text = match std::str::from_utf8(rest) {
        Ok(text) => text,
        Err(cut) => std::str::from_utf8(&rest[..cut.valid_up_to()]).unwrap_or_default(),
    };
    let raw = crate::json::pointer_get_tokens(text, &["event_id".to_string()]).ok()??;
    crate::json::decode_str(raw)
        .ok()
        .map(std::borrow::Cow::into_owned)
}

async fn handle_inner(
    state: &SharedState,
    topic_name: &str,
    query: Result<IngestQuery, ApiError>,
    request: Request,
    rejected: &mut Option<Rejected>,
) -> Result<Response, ApiError> {
    // The request itself, not the HeaderMap extractor: that one clones every header.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let topic = state.log.topic(topic_name);
    // A configured topic's name was validated at start; only an unknown one is checked,
    // so a name that could never be a topic gets 400 rather than 404.
    if topic.is_none() {
        validate_topic_name(topic_name)
            .map_err(|m| ApiError::new(ErrorCode::InvalidTopicName, m))?;
    }
    if is_internal(topic_name) {
        return Err(ApiError::new(
            ErrorCode::InvalidTopicName,
            format!(
                "topic names starting with \"__\" are weir's own; {topic_name:?} cannot be written"
            ),
        ));
    }
    let Some(topic) = topic else {
        return Err(ApiError::new(
            ErrorCode::UnknownTopic,
            format!("no topic {topic_name:?}"),
        ));
    };
    let query = query?;
    if state.shutting_down.load(Ordering::Acquire) {
        super::Refusal::ShuttingDown.count();
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "weir is shutting down",
        ));
    }
    check_content_type(headers)?;
    let (bounds, max_key) = {
        let live = state.live.load();
        (BodyBounds::of(&live), live.server.max_key)
    };
    let (bytes, _permits) = bounds.read(headers, body).await?;
    let now_ms = state.log.clock().now_ms();
    let rules = topic.rules(max_key);
    let mut events = Vec::new();
    let mut parse = || event::parse_body(&bytes, &rules, query.key.as_deref(), now_ms, &mut events);
    let parsed = if bytes.len() > PARSE_INLINE_BYTES_MAX {
        tokio::task::block_in_place(parse)
    } else {
        parse()
    };
    if let Err(e) = parsed {
        if let Some(pos) = e.pos() {
            *rejected = Some(Rejected {
                body: bytes.clone(),
                pos,
            });
        }
        return Err(e.into());
    }
    state.disk.check(bytes.len() as u64).map_err(|low| {
        super::Refusal::FreeSpace.count();
        ApiError::new(ErrorCode::InsufficientStorage, low.to_string())
            .with("free_bytes", low.free)
            .with("free_space_reserve", low.reserve)
    })?;
    let outcome = topic.ingest(&events, now_ms).await?;
    state.disk.charge(outcome.bytes);
    // Written by hand: this answer is on the hottest path and has a fixed shape.
    let mut body = Vec::with_capacity(64 + 48 * outcome.offsets.len());
    body.extend_from_slice(b"{\"accepted\":");
    super::write_num(outcome.accepted, &mut body);
    body.extend_from_slice(b",\"duplicates\":");
    super::write_num(outcome.duplicates, &mut body);
    body.extend_from_slice(b",\"offsets\":[");
    for (i, r) in outcome.offsets.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"partition\":");
        super::write_num(r.partition, &mut body);
        body.extend_from_slice(b",\"first\":");
        super::write_num(r.first, &mut body);
        body.extend_from_slice(b",\"last\":");
        super::write_num(r.last, &mut body);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    let mut response = super::json_bytes(StatusCode::ACCEPTED, body);
    if outcome.buffered {
        response
            .headers_mut()
            .insert("weir-durability", HeaderValue::from_static("buffered"));
    }
    Ok(response)
}

/// The `[server]` bounds a request body is read under: `max_body`, `body_timeout` and
/// the server-wide `max_inflight` byte budget. Every route that reads a body reads it
/// through [`BodyBounds::read`].
pub(crate) struct BodyBounds {
    max: u64,
    timeout: std::time::Duration,
    inflight: std::sync::Arc<tokio::sync::Semaphore>,
}

impl BodyBounds {
    pub(crate) fn of(live: &super::Live) -> BodyBounds {
        BodyBounds {
            max: live.server.max_body,
            timeout: live.server.body_timeout,
            inflight: std::sync::Arc::clone(&live.inflight),
        }
    }

    /// Reads the body: 413 beyond `max_body` (from Content-Length when sent, before
    /// reading), 503 `overloaded` when its bytes find no `max_inflight` permits left
    /// (at once, never waiting for them), 408 when it has not arrived within
    /// `body_timeout`. The permits are returned with the bytes and held until dropped.
    pub(crate) async fn read(
        self,
        headers: &HeaderMap,
        body: axum::body::Body,
    ) -> Result<(bytes::Bytes, InflightPermits), ApiError> {
        let declared = declared_length(headers)?;
        if declared.is_some_and(|len| len > self.max) {
            return Err(too_large(self.max));
        }
        // Every body byte being handled holds a permit of `max_inflight`; beyond it the
        // request is refused at once instead of growing memory.
        let mut permits = InflightPermits::new(self.inflight);
        if let Some(len) = declared {
            permits.take(len)?;
        }
        let capacity = declared.map_or(0, |len| len.min(self.max));
        let bytes = {
            let mut read = std::pin::pin!(read_body(
                body,
                self.max,
                capacity,
                declared.is_none().then_some(&mut permits),
            ));
            // A small body has usually arrived with its head: it is read without arming
            // a timer (a clock read, and a timer-wheel entry made and removed).
            match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
                Poll::Ready(bytes) => bytes?,
                Poll::Pending => {
                    tokio::time::timeout(self.timeout, read)
                        .await
                        .map_err(|_| {
                            ApiError::new(
                                ErrorCode::RequestTimeout,
                                "the body did not arrive within body_timeout",
                            )
                        })??
                }
            }
        };
        Ok((bytes, permits))
    }
}

/// Reads the body up to `max` bytes into one buffer of `capacity` bytes (the declared
/// length, already charged to `max_inflight`: a body of many frames is copied once, not
/// again at every doubling). Without a declared length, each frame takes its
/// `max_inflight` permits as it arrives.
async fn read_body(
    mut body: axum::body::Body,
    max: u64,
    capacity: u64,
    mut permits: Option<&mut InflightPermits>,
) -> Result<bytes::Bytes, ApiError> {
    let mut buf = bytes::BytesMut::new();
    let mut only: Option<bytes::Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                ErrorCode::MalformedJson,
                format!("cannot read the body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = buf.len() + only.as_ref().map_or(0, bytes::Bytes::len) + data.len();
        if total as u64 > max {
            return Err(too_large(max));
        }
        if let Some(p) = permits.as_deref_mut() {
            p.take(data.len() as u64)?;
        }
        // The common case is one frame: keep it without copying.
        match only.take() {
            None if buf.is_empty() => only = Some(data),
            None => buf.extend_from_slice(&data),
            Some(first) => {
                buf.reserve(
                    usize::try_from(capacity)
                        .unwrap_or(0)
                        .max(first.len() + data.len()),
                );
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(only.unwrap_or_else(|| buf.freeze()))
}

/// Permits of the server-wide `max_inflight` byte budget held by one request.
pub(crate) struct InflightPermits {
    semaphore: std::sync::Arc<tokio::sync::Semaphore>,
    held: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl InflightPermits {
    pub(crate) fn new(semaphore: std::sync::Arc<tokio::sync::Semaphore>) -> InflightPermits {
        InflightPermits {
            semaphore,
            held: Vec::new(),
        }
    }

    /// Takes `bytes` permits at once, or refuses with 503 `overloaded` (counted).
    pub(crate) fn take(&mut self, bytes: u64) -> Result<(), ApiError> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        if n == 0 {
            return Ok(());
        }
        match std::sync::Arc::clone(&self.semaphore).try_acquire_many_owned(n) {
            Ok(p) => {
                self.held.push(p);
                Ok(())
            }
            Err(_) => {
                super::Refusal::Inflight.count();
                Err(ApiError::new(
                    ErrorCode::Overloaded,
                    "max_inflight request bytes are being handled; retry later",
                ))
            }
        }
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!("the body is larger than max_body ({max} bytes)"),
    )
    .with("max_body", max)
}

fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidParameter,
                "Content-Length is not a number",
            )
        })
}

/// JSON, NDJSON, curl's default form type, or nothing; anything else is 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    if value.as_bytes() == b"application/json" {
        return Ok(());
    }
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim();
    // The empty type and curl's default form type: clients that did not say.
    const READABLE: [&str; 4] = [
        "",
        "application/json",
        "application/x-ndjson",
        "application/x-www-form-urlencoded",
    ];
    if READABLE.iter().any(|t| t.eq_ignore_ascii_case(essence)) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::UnsupportedMediaType,
        format!(
            "content type {text:?} cannot be read; send application/json or application/x-ndjson"
        ),
    ))
}
