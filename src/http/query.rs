//! Pipeline results: `GET /v1/pipelines`, `/v1/pipelines/{name}/keys/{key}`,
//! `/v1/pipelines/{name}/top`, and the `[[route]]` paths of the seed's services.
//!
//! Everything is answered from the pipelines' hot views (`pipeline::view`) under their
//! read lock, held for one lookup and the writing of the answer; never across an await.
//! Answers are written by hand into one buffer: these are the hot read paths.

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::errors::{ApiError, ErrorCode};
use super::{SharedState, write_num};
use crate::config::units::millis;
use crate::config::{QueryWindow, RouteConfig, RouteResponse, RouteTarget};
use crate::event::{format_rfc3339_ms, parse_timestamp};
use crate::json::write_str_into;
use crate::limits::{
    QUERY_STORED_SCAN_MAX, QUERY_STORED_WINDOWS_MAX, QUERY_TOP_MAX, QUERY_WINDOWS_MAX,
};
use crate::pipeline::runner::PipelineHandle;
use crate::pipeline::view::{HotView, Row, ViewState, Which};
use crate::pipeline::watermark;

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn params<T>(query: QueryResult<T>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))
}

fn lookup(state: &SharedState, name: &str) -> Result<std::sync::Arc<PipelineHandle>, ApiError> {
    state
        .pipelines
        .get(name)
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownPipeline, format!("no pipeline {name:?}")))
}

/// `f` of the pipeline called `name`, without a reference count (the sync hot paths).
fn with_pipeline<R>(
    state: &SharedState,
    name: &str,
    f: impl FnOnce(&PipelineHandle) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    state.pipelines.with(name, f).unwrap_or_else(|| {
        Err(ApiError::new(
            ErrorCode::UnknownPipeline,
            format!("no pipeline {name:?}"),
        ))
    })
}

fn ok(body: Vec<u8>) -> Response {
    super::json_bytes(StatusCode::OK, body)
}

fn write_time(ms: i64, out: &mut Vec<u8>) {
    if ms == watermark::NONE {
        out.extend_from_slice(b"null");
    } else {
        out.push(b'"');
        format_rfc3339_ms(ms, out);
        out.push(b'"');
    }
}

/// The quantiles aggregate `i` of `view` outputs, if it is a `quantiles` one.
fn quantiles_of(view: &HotView, i: usize) -> &[f64] {
    view.quantiles.get(i).map_or(&[], Vec::as_slice)
}

/// `{"start","end","final","complete","values":{...}}`.
fn write_window(view: &HotView, start: i64, row: &Row, is_final: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"start\":");
    write_time(start, out);
    out.extend_from_slice(b",\"end\":");
    write_time(row.end_ms, out);
    out.extend_from_slice(if is_final {
        b",\"final\":true"
    } else {
        b",\"final\":false"
    });
    out.extend_from_slice(if row.complete() {
        b",\"complete\":true,\"values\":{"
    } else {
        b",\"complete\":false,\"values\":{"
    });
    let mut text = String::new();
    for (i, (name, value)) in view.aggregates.iter().zip(row.values.iter()).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str_into(name, out);
        out.push(b':');
        text.clear();
        value.write_json(quantiles_of(view, i), &mut text);
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b"}}");
}

/// `GET /v1/pipelines`.
pub async fn list(State(state): State<SharedState>) -> Response {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"pipelines\":[");
    for (i, p) in state.pipelines.list().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let lag = p.lag();
        let (wm, open, bytes) = p
            .view
            .read(|s| (s.watermark, s.open_windows, s.state_bytes));
        out.extend_from_slice(b"{\"name\":");
        write_str_into(&p.config.name, &mut out);
        out.extend_from_slice(b",\"source\":");
        write_str_into(&p.config.source, &mut out);
        out.extend_from_slice(b",\"watermark\":");
        write_time(wm, &mut out);
        out.extend_from_slice(b",\"lag\":");
        write_num(lag, &mut out);
        out.extend_from_slice(b",\"open_windows\":");
        write_num(open, &mut out);
        out.extend_from_slice(b",\"state_bytes\":");
        write_num(bytes, &mut out);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    window: Option<String>,
    windows: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// What a key query asks for.
enum KeyAsk {
    One(Which),
    Newest(usize),
    Range { from_ms: i64, to_ms: i64 },
}

fn which(text: &str, allowed: &[(&str, Which)]) -> Result<Which, ApiError> {
    allowed
        .iter()
        .find(|(n, _)| *n == text)
        .map(|(_, w)| *w)
        .ok_or_else(|| {
            let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
            ApiError::new(
                ErrorCode::InvalidParameter,
                format!("window must be one of {}, not {text:?}", names.join(", ")),
            )
        })
}

const KEY_WINDOWS: &[(&str, Which)] = &[
    ("latest", Which::Latest),
    ("last_closed", Which::LastClosed),
    ("current", Which::Current),
];

fn time_param(name: &str, text: &str) -> Result<i64, ApiError> {
    parse_timestamp(text).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidParameter,
            format!("{name} is not a time (RFC 3339 or epoch ms): {e}"),
        )
    })
}

impl KeyQuery {
    fn ask(&self) -> Result<KeyAsk, ApiError> {
        let ranged = self.from.is_some() || self.to.is_some();
        let forms = usize::from(self.window.is_some())
            + usize::from(self.windows.is_some())
            + usize::from(ranged);
        if forms > 1 {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                "give one of window, windows, or from/to",
            ));
        }
        if let Some(n) = &self.windows {
            let n: usize = n
                .parse()
                .ok()
                .filter(|n| (1..=QUERY_WINDOWS_MAX).contains(n))
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("windows must be a number from 1 to {QUERY_WINDOWS_MAX}"),
                    )
                })?;
            return Ok(KeyAsk::Newest(n));
        }
        if ranged {
            let from_ms = match &self.from {
                Some(t) => time_param("from", t)?,
                None => i64::MIN,
            };
            let to_ms = match &self.to {
                Some(t) => time_param("to", t)?,
                None => i64::MAX,
            };
            return Ok(KeyAsk::Range { from_ms, to_ms });
        }
        Ok(KeyAsk::One(match &self.window {
            Some(w) => which(w, KEY_WINDOWS)?,
            None => Which::Latest,
        }))
    }
}

fn no_window(key: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NoWindow,
        format!("key {key:?} has no such window"),
    )
}

/// The v1 answer for `key` of `p`, from the hot view alone. For a range reaching
/// windows the view no longer holds, also the range of those to read from the store.
fn key_answer(
    p: &PipelineHandle,
    key: &str,
    ask: &KeyAsk,
) -> Result<(Vec<u8>, Option<StoredRange>), ApiError> {
    let view = &p.view;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"pipeline\":");
    write_str_into(&p.config.name, &mut out);
    out.extend_from_slice(b",\"key\":");
    write_str_into(key, &mut out);
    let stored = view.read(|s| {
        let (rows, stored) = match ask {
            KeyAsk::One(which) => {
                let (start, row) = s.key_window(key, *which).ok_or_else(|| no_window(key))?;
                out.extend_from_slice(b",\"window\":");
                write_window(view, start, row, s.is_final(row), &mut out);
                out.push(b'}');
                return Ok::<_, ApiError>(None);
            }
            KeyAsk::Newest(n) => (s.key_newest(key, *n), None),
            KeyAsk::Range { from_ms, to_ms } => {
                let rows = s.key_range(key, *from_ms, *to_ms, QUERY_WINDOWS_MAX);
                let stored = stored_range(p, s, *from_ms, *to_ms, QUERY_WINDOWS_MAX - rows.len())?;
                (rows, stored)
            }
        };
        out.extend_from_slice(b",\"windows\":[");
        for (i, (start, row)) in rows.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_window(view, start, row, s.is_final(row), &mut out);
        }
        if stored.is_none() {
            out.extend_from_slice(b"]}");
        }
        Ok(stored)
    })?;
    Ok((out, stored))
}

/// Windows of a range query older than the hot view holds: starts, newest first, and
/// how many rows may still be answered.
struct StoredRange {
    newest: i64,
    oldest: i64,
    /// The stride of window starts; `None` for sessions, whose rows are found by a scan
    /// of the stored rows starting in the range (at most `QUERY_STORED_SCAN_MAX`).
    step: Option<i64>,
    n: usize,
}

/// The part of `[from_ms, to_ms)` the view let go of (`evicted_through`), down to the
/// oldest window retention keeps, if any and if the answer has room left.
fn stored_range(
    p: &PipelineHandle,
    s: &ViewState,
    from_ms: i64,
    to_ms: i64,
    n: usize,
) -> Result<Option<StoredRange>, ApiError> {
    let Some(evicted) = s.evicted_through else {
        return Ok(None);
    };
    let step = p.config.window.stride().map(|d| millis(d).max(1));
    let size = p.view.window_size_ms;
    let retain = millis(p.config.retain_results);
    let kept_from = if s.watermark == watermark::NONE {
        i64::MIN
    } else {
        s.watermark.saturating_sub(retain).saturating_sub(size)
    };
    let newest = evicted.min(to_ms.saturating_sub(1));
    let oldest = from_ms.max(kept_from);
    if n == 0 || newest < oldest {
        return Ok(None);
    }
    let Some(step) = step else {
        return Ok(Some(StoredRange {
            newest,
            oldest,
            step: None,
            n,
        }));
    };
    // Starts are multiples of the pane width.
    let newest = newest.div_euclid(step).saturating_mul(step);
    let windows = newest
        .checked_sub(oldest)
        .map_or(i64::MAX, |d| d / step + 1);
    if windows > QUERY_STORED_WINDOWS_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "from/to reach {windows} windows older than the ones held in memory; at most {QUERY_STORED_WINDOWS_MAX} per query: narrow the range"
            ),
        ));
    }
    Ok(Some(StoredRange {
        newest,
        oldest,
        step: Some(step),
        n,
    }))
}

/// Appends `key`'s rows of `range` from the result store (blocking IO, off the runtime)
/// and closes the answer `key_answer` began.
async fn answer_stored(
    p: &PipelineHandle,
    key: &str,
    range: StoredRange,
    mut out: Vec<u8>,
) -> Result<Vec<u8>, ApiError> {
    let store = p.store.clone();
    let key_owned = key.to_string();
    // Session rows are stored in slots of the gap (see `store`).
    let slot_ms = crate::pipeline::runner::window_kind(&p.config.window)
        .row_slot_ms()
        .unwrap_or(1);
    let rows = tokio::task::spawn_blocking(move || {
        let Some(step) = range.step else {
            return store.key_rows_scan(
                &key_owned,
                range.oldest,
                range.newest,
                range.n,
                QUERY_STORED_SCAN_MAX,
                slot_ms,
            );
        };
        let starts = std::iter::successors(Some(range.newest), |s| {
            s.checked_sub(step).filter(|s| *s >= range.oldest)
        });
        store.key_rows(&key_owned, starts, range.n).map(Some)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::InternalError, e.to_string()))?
    .map_err(|e| ApiError::new(ErrorCode::StorageError, e.to_string()))?
    .ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "from/to reach more than {QUERY_STORED_SCAN_MAX} stored sessions (of every key) older than the ones held in memory: narrow the range"
            ),
        )
    })?;
    let mut first = out.last() == Some(&b'[');
    for r in rows {
        if !first {
            out.push(b',');
        }
        first = false;
        let row = Row::closed(
            r.end_ms,
            crate::pipeline::aggregate::States::from_vec(r.values),
            r.complete,
            Row::FINAL,
        );
        write_window(&p.view, r.start_ms, &row, true, &mut out);
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// `GET /v1/pipelines/{name}/keys/{key}`.
pub async fn key(
    State(state): State<SharedState>,
    Path((name, key)): Path<(String, String)>,
    query: QueryResult<KeyQuery>,
) -> Result<Response, ApiError> {
    let p = lookup(&state, &name)?;
    let ask = params(query)?.ask()?;
    match key_answer(&p, &key, &ask)? {
        (out, None) => Ok(ok(out)),
        (out, Some(range)) => answer_stored(&p, &key, range, out).await.map(ok),
    }
}

/// `GET /v1/pipelines/{name}/keys/{key}` without a query: the key's latest window. What
/// `key` answers for such a request; `direct` calls it without the router.
pub fn key_latest(state: &SharedState, name: &str, key: &str) -> Result<Response, ApiError> {
    with_pipeline(state, name, |p| {
        key_answer(p, key, &KeyAsk::One(Which::Latest)).map(|(out, _)| ok(out))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopQuery {
    n: Option<String>,
    window: Option<String>,
    by: Option<String>,
}

/// `GET /v1/pipelines/{name}/top?n=10&window=last_closed|current&by=<aggregate>`:
/// `{"pipeline", "window": {"start", "end"} or null, "by", "keys": [{"key", "final",
/// "complete", "values"}]}`.
pub async fn top(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    query: QueryResult<TopQuery>,
) -> Result<Response, ApiError> {
    let p = lookup(&state, &name)?;
    let q = params(query)?;
    if p.view.sessions {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "pipeline {name:?} has session windows, which start and end per key: there is no one window to rank keys in; ask /v1/pipelines/{name}/keys/{{key}}"
            ),
        ));
    }
    let n = match &q.n {
        Some(t) => t
            .parse()
            .ok()
            .filter(|n| (1..=QUERY_TOP_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!("n must be a number from 1 to {QUERY_TOP_MAX}"),
                )
            })?,
        None => 10,
    };
    let which = match &q.window {
        Some(w) => which(
            w,
            &[
                ("last_closed", Which::LastClosed),
                ("current", Which::Current),
            ],
        )?,
        None => Which::LastClosed,
    };
    let view = &p.view;
    let by = match &q.by {
        Some(b) => view.aggregates.iter().position(|a| a == b).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidParameter,
                format!("by must name an aggregate of pipeline {name:?}, not {b:?}"),
            )
        })?,
        None => 0,
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"pipeline\":");
    write_str_into(&p.config.name, &mut out);
    out.extend_from_slice(b",\"by\":");
    write_str_into(view.aggregates.get(by).map_or("", String::as_str), &mut out);
    view.read(|s| {
        let Some(start) = s.pipeline_window(which) else {
            out.extend_from_slice(b",\"window\":null,\"keys\":[]}");
            return;
        };
        let rows = s.top(start, by, n);
        out.extend_from_slice(b",\"window\":{\"start\":");
        write_time(start, &mut out);
        out.extend_from_slice(b",\"end\":");
        write_time(start.saturating_add(view.window_size_ms), &mut out);
        out.extend_from_slice(b"},\"keys\":[");
        for (i, (key, row)) in rows.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"key\":");
            write_str_into(key, &mut out);
            out.extend_from_slice(b",\"window\":");
            write_window(view, start, row, s.is_final(row), &mut out);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    });
    Ok(ok(out))
}

/// A `[[route]]` that ingests: the v1 ingest, answered 200 `{"status":"accepted"}` for
/// `response = "seed"`.
pub async fn route_ingest(
    state: SharedState,
    topic: String,
    response: RouteResponse,
    request: Request,
) -> Result<Response, ApiError> {
    let answer = super::ingest::handle(&state, &topic, Ok(Default::default()), request).await?;
    Ok(match response {
        RouteResponse::V1 => answer,
        RouteResponse::Seed => {
            let mut seed = ok(br#"{"status":"accepted"}"#.to_vec());
            if let Some(d) = answer.headers().get("weir-durability") {
                seed.headers_mut().insert("weir-durability", d.clone());
            }
            seed
        }
    })
}

/// A `[[route]]` that queries: the key is the path placeholder the route names.
/// The router and `direct` both answer through it; `key_value` is percent-decoded.
pub fn route_query(
    state: &SharedState,
    route: &RouteConfig,
    key_value: &str,
) -> Result<Response, ApiError> {
    let RouteTarget::Query {
        pipeline,
        key,
        aggregate,
        window,
    } = &route.target
    else {
        return Err(ApiError::new(ErrorCode::InternalError, "not a query route"));
    };
    with_pipeline(state, pipeline, |p| {
        route_query_in(p, route, key, aggregate.as_deref(), *window, key_value)
    })
}

fn route_query_in(
    p: &PipelineHandle,
    route: &RouteConfig,
    key: &str,
    aggregate: Option<&str>,
    window: QueryWindow,
    key_value: &str,
) -> Result<Response, ApiError> {
    let which = match window {
        QueryWindow::Latest => Which::Latest,
        QueryWindow::LastClosed => Which::LastClosed,
        QueryWindow::Current => Which::Current,
    };
    if route.response == RouteResponse::V1 {
        return key_answer(p, key_value, &KeyAsk::One(which)).map(|(out, _)| ok(out));
    }
    // The seed's shape: {"<key>": "...", "<aggregate>": value}, 0 without a window.
    let view = &p.view;
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    write_str_into(key, &mut out);
    out.push(b':');
    write_str_into(key_value, &mut out);
    let mut text = String::new();
    view.read(|s| {
        let row = s.key_window(key_value, which);
        for (i, name) in view.aggregates.iter().enumerate() {
            if aggregate.as_ref().is_some_and(|a| a != name) {
                continue;
            }
            out.push(b',');
            write_str_into(name, &mut out);
            out.push(b':');
            text.clear();
            match row.and_then(|(_, r)| r.values.get(i)) {
                Some(v) => v.write_json(quantiles_of(view, i), &mut text),
                None => text.push('0'),
            }
            out.extend_from_slice(text.as_bytes());
        }
    });
    out.push(b'}');
    Ok(ok(out))
}
