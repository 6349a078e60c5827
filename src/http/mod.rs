//! The only module that knows HTTP: the router, the connection loop with its bounds and
//! timeouts, and the handlers in `ingest`, `read`, `groups` and `admin`. Status codes are decided
//! in `errors` and nowhere else.

pub mod admin;
pub mod cursor;
pub mod direct;
pub mod errors;
pub mod groups;
pub mod ingest;
pub mod query;
pub mod read;
pub mod stream;
pub mod stream_cache;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::{RouteConfig, RouteMethod, RouteTarget, ServerConfig};
use crate::log::Log;
use crate::metrics as m;
use crate::pipeline::runner::Pipelines;
use errors::{ApiError, ErrorCode};

/// What every handler shares.
pub struct AppState {
    pub log: Arc<Log>,
    /// What a config reload (SIGHUP) may change, swapped whole: a request reads the one
    /// in force when it starts and keeps it to its end.
    pub live: ArcSwap<Live>,
    /// Bumped on every swap of `live`; `serve` rebuilds its router and connection
    /// settings when it moves.
    pub live_changed: tokio::sync::watch::Sender<u64>,
    pub metrics: PrometheusHandle,
    /// Set when shutdown begins: new ingest gets 503 `shutting_down`.
    pub shutting_down: AtomicBool,
    /// Turns true when shutdown begins, with `shutting_down`: long polls answer and SSE
    /// streams end, so graceful shutdown does not wait for them.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// The free-space reserve: ingest gets 507 before the disk fills.
    pub disk: Arc<crate::disk::DiskSpace>,
    /// SSE chunks shared by streams at the same position.
    pub stream_cache: stream_cache::StreamCache,
    /// The running pipelines and their hot views.
    pub pipelines: Arc<Pipelines>,
}

/// The part of the state a reload replaces: `[server]` and the `[[route]]`s.
pub struct Live {
    pub server: ServerConfig,
    /// `[[route]]` paths of the seed's services, built into the router.
    pub routes: Vec<RouteConfig>,
    /// `max_inflight` as permits of one byte each, held while a request body is handled.
    pub inflight: Arc<Semaphore>,
    /// `max_streams` permits; each open SSE stream holds one until it ends.
    pub streams: Arc<Semaphore>,
    /// `max_connections` permits; each open connection holds one until it closes.
    pub connections: Arc<Semaphore>,
}

impl Live {
    /// The bounds of `server`. A semaphore whose bound did not change is `previous`'s,
    /// so what is held stays counted; a changed one starts afresh, and permits held
    /// under the old bound go back to the old semaphore (for a moment both count).
    fn new(server: ServerConfig, routes: Vec<RouteConfig>, previous: Option<&Live>) -> Live {
        let inflight = usize::try_from(server.max_inflight)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let streams = server.max_streams.min(Semaphore::MAX_PERMITS);
        let connections = server.max_connections.min(Semaphore::MAX_PERMITS);
        let same = |bound: usize, old: Option<usize>, sem: Option<&Arc<Semaphore>>| match sem {
            Some(sem) if old == Some(bound) => Arc::clone(sem),
            _ => Arc::new(Semaphore::new(bound)),
        };
        let old = previous.map(|p| &p.server);
        Live {
            inflight: same(
                inflight,
                old.map(|s| {
                    usize::try_from(s.max_inflight)
                        .unwrap_or(usize::MAX)
                        .min(Semaphore::MAX_PERMITS)
                }),
                previous.map(|p| &p.inflight),
            ),
            streams: same(
                streams,
                old.map(|s| s.max_streams.min(Semaphore::MAX_PERMITS)),
                previous.map(|p| &p.streams),
            ),
            connections: same(
                connections,
                old.map(|s| s.max_connections.min(Semaphore::MAX_PERMITS)),
                previous.map(|p| &p.connections),
            ),
            server,
            routes,
        }
    }
}

impl AppState {
    pub fn new(
        log: Arc<Log>,
        server: ServerConfig,
        metrics: PrometheusHandle,
        disk: Arc<crate::disk::DiskSpace>,
        pipelines: Arc<Pipelines>,
        routes: Vec<RouteConfig>,
    ) -> AppState {
        Refusal::register_all();
        AppState {
            log,
            live: ArcSwap::from_pointee(Live::new(server, routes, None)),
            live_changed: tokio::sync::watch::Sender::new(0),
            metrics,
            shutting_down: AtomicBool::new(false),
            shutdown: tokio::sync::watch::Sender::new(false),
            stream_cache: stream_cache::StreamCache::default(),
            disk,
            pipelines,
        }
    }

    /// Puts new `[server]` bounds and `[[route]]`s in force. `listen` is the running
    /// one's whatever `server` says: the listener is bound once.
    pub fn set_live(&self, mut server: ServerConfig, routes: Vec<RouteConfig>) {
        let previous = self.live.load_full();
        server.listen = previous.server.listen;
        self.live
            .store(Arc::new(Live::new(server, routes, Some(&previous))));
        self.live_changed.send_modify(|n| *n += 1);
    }
}

/// Why a request was refused with 503 before it was handled, for `weir_http_refused_total`.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// `max_connections` open connections.
    Connections,
    /// `max_inflight` request bytes being handled.
    Inflight,
    /// `max_streams` open SSE streams.
    Streams,
    /// Shutdown has begun.
    ShuttingDown,
    /// The free-space reserve is reached (507).
    FreeSpace,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::Connections,
        Refusal::Inflight,
        Refusal::Streams,
        Refusal::ShuttingDown,
        Refusal::FreeSpace,
    ];

    /// Exports every reason's counter at 0, so rates and alerts see the first refusal.
    pub fn register_all() {
        for r in Refusal::ALL {
            metrics::counter!(m::HTTP_REFUSED, "reason" => r.label()).increment(0);
        }
    }

    fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::Inflight => "inflight",
            Refusal::Streams => "streams",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::FreeSpace => "free_space",
        }
    }

    /// Counts one refusal.
    pub fn count(self) {
        metrics::counter!(m::HTTP_REFUSED, "reason" => self.label()).increment(1);
    }
}

pub type SharedState = Arc<AppState>;

pub fn router(state: SharedState, routes: &[RouteConfig]) -> Router {
    seed_routes(routes)
        .into_iter()
        .chain(api_routes())
        .fold(Router::new(), |r, (path, mr)| r.route(path, mr))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// The route template of key queries; `direct` answers the plain ones without the router.
pub(crate) const KEYS_ROUTE: &str = "/v1/pipelines/{name}/keys/{key}";

/// weir's own routes, one method router per path. `router` serves them; `direct` matches
/// request paths against the same list, so that it takes a request only where the router
/// would have sent it to the same handler.
fn api_routes() -> Vec<(&'static str, MethodRouter<SharedState>)> {
    vec![
        ("/v1/topics", get(read::list_topics)),
        ("/v1/topics/{topic}", get(read::get_topic)),
        (INGEST_ROUTE, get(read::pull).post(ingest::ingest)),
        ("/v1/topics/{topic}/stream", get(stream::stream)),
        (
            "/v1/groups/{group}/offsets/{topic}",
            get(groups::get_offsets).put(groups::put_offsets),
        ),
        ("/v1/pipelines", get(query::list)),
        (KEYS_ROUTE, get(query::key)),
        ("/v1/pipelines/{name}/top", get(query::top)),
        ("/metrics", get(admin::metrics)),
        ("/healthz", get(admin::healthz)),
        ("/readyz", get(admin::readyz)),
    ]
}

/// The `[[route]]` paths, one method router per path.
fn seed_routes(routes: &[RouteConfig]) -> Vec<(&str, MethodRouter<SharedState>)> {
    let mut by_path: Vec<(&str, MethodRouter<SharedState>)> = Vec::new();
    for route in routes {
        let method_router = match (&route.method, &route.target) {
            (RouteMethod::Post, RouteTarget::Ingest { topic }) => {
                let (topic, response) = (topic.clone(), route.response);
                axum::routing::post(move |State(state): State<SharedState>, request: Request| {
                    query::route_ingest(state, topic, response, request)
                })
            }
            (RouteMethod::Get, RouteTarget::Query { key, .. }) => {
                let (route, key) = (Arc::new(route.clone()), key.clone());
                get(
                    move |State(state): State<SharedState>,
                          Path(params): Path<HashMap<String, String>>| {
                        let route = Arc::clone(&route);
                        let value = params.get(&key).cloned().unwrap_or_default();
                        async move { query::route_query(&state, &route, &value) }
                    },
                )
            }
            // The config check pairs POST with a topic and GET with a pipeline.
            _ => continue,
        };
        match by_path.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(method_router),
            None => by_path.push((&route.path, method_router)),
        }
    }
    by_path
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// Records the duration of every request by route template (never the raw path), method
/// and status. Handles are cached: a registry lookup per request would cost more than
/// the request. Label values are bounded: templates, known methods, status codes.
async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status().as_u16();
    request_histogram(route, method, status).record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

type HistogramCache = HashMap<String, HashMap<(&'static str, u16), metrics::Histogram>>;

fn request_histogram(route: &str, method: &'static str, status: u16) -> metrics::Histogram {
    static CACHE: LazyLock<RwLock<HistogramCache>> = LazyLock::new(RwLock::default);
    if let Some(h) = CACHE
        .read()
        .get(route)
        .and_then(|m| m.get(&(method, status)))
    {
        return h.clone();
    }
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    let h = metrics::histogram!(m::HTTP_REQUEST_SECONDS, &labels);
    CACHE
        .write()
        .entry(route.to_string())
        .or_default()
        .insert((method, status), h.clone());
    h
}

/// The route template of ingest, for metrics of requests that bypass the router.
const INGEST_ROUTE: &str = "/v1/topics/{topic}/events";

/// The topic of a plain `POST /v1/topics/{topic}/events` (no query, nothing to decode),
/// the one request that is worth taking past the router: per event it is the hot path.
/// Anything else, including every malformed variant, goes through the router.
fn ingest_path(request: &Request) -> Option<String> {
    if request.method() != axum::http::Method::POST || request.uri().query().is_some() {
        return None;
    }
    let topic = request
        .uri()
        .path()
        .strip_prefix("/v1/topics/")?
        .strip_suffix("/events")?;
    if topic.is_empty() || topic.contains(['/', '%']) {
        return None;
    }
    Some(topic.to_string())
}

async fn ingest_direct(state: &SharedState, topic: &str, request: Request) -> Response {
    // The 202 histogram is looked up once: it is recorded on every accepted event request.
    static ACCEPTED: LazyLock<metrics::Histogram> =
        LazyLock::new(|| request_histogram(INGEST_ROUTE, "POST", 202));
    let started = Instant::now();
    let response = ingest::handle(state, topic, Ok(ingest::IngestQuery::default()), request)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    let seconds = started.elapsed().as_secs_f64();
    match response.status().as_u16() {
        202 => ACCEPTED.record(seconds),
        status => request_histogram(INGEST_ROUTE, "POST", status).record(seconds),
    }
    response
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains: in-flight
/// requests get up to `shutdown_grace` to finish.
///
/// During the drain the listener stays open and new connections are still served, one
/// request each (keep-alive off): ingest and other writes answer 503 `shutting_down`
/// with Retry-After rather than the client seeing a refused or reset connection. A
/// kept-alive connection that is idle is closed at once, a busy one after its current
/// request; one accepted but not yet read from is served its first request (answered
/// with `Connection: close`), so a client that connected just before the drain began
/// gets an answer. Long polls answer and streams end when `AppState::shutdown` flips, so
/// they do not hold the drain; a client stuck mid-request is cut off when the grace
/// runs out.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let routing = Arc::new(ArcSwap::from_pointee(Routing::new(&state)));
    let mut live_changed = state.live_changed.subscribe();
    // Each connection accepted before the drain holds a sender; the drain is over when
    // every one has been dropped.
    let (draining, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    // Open connections holding a `max_connections` permit.
    let open = metrics::gauge!(m::HTTP_CONNECTIONS);
    open.set(0.0);
    // Refused connections whose close lingers (`refuse_connection`).
    let refused_lingering = Arc::new(Semaphore::new(crate::limits::REFUSED_LINGERING_MAX));
    // Serves one accepted connection on its own task.
    let spawn = |stream: tokio::net::TcpStream, drain: Option<tokio::sync::mpsc::Sender<()>>| {
        let _ = stream.set_nodelay(true);
        let connections = Arc::clone(&state.live.load().connections);
        let Ok(permit) = connections.try_acquire_owned() else {
            Refusal::Connections.count();
            let linger = Arc::clone(&refused_lingering).try_acquire_owned().ok();
            tokio::spawn(refuse_connection(stream, linger));
            return;
        };
        open.increment(1.0);
        let open = open.clone();
        let mut builder = routing.load().builder.clone();
        builder.keep_alive(drain.is_some());
        // Whether a request has arrived: the drain gives a connection that has served
        // none a moment for its first.
        let served = Arc::new(AtomicBool::new(false));
        let mut stop = state.shutdown.subscribe();
        let (routing, state, seen) = (
            Arc::clone(&routing),
            Arc::clone(&state),
            Arc::clone(&served),
        );
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            seen.store(true, Ordering::Relaxed);
            let span = request_span(&request);
            // GET queries are answered right here, without cloning the router or state.
            let routing = routing.load();
            let next = match span.in_scope(|| routing.direct.answer(&state, &request)) {
                Some(mut response) => {
                    close_if_stopping(&state, &mut response);
                    Ok(response)
                }
                None => Err((routing.app.clone(), Arc::clone(&state), request)),
            };
            tracing::Instrument::instrument(
                async move {
                    let (app, state, request) = match next {
                        Ok(response) => return Ok::<_, Infallible>(response),
                        Err(routed) => routed,
                    };
                    let request = request.map(Body::new);
                    let mut response = match ingest_path(&request) {
                        Some(topic) => ingest_direct(&state, &topic, request).await,
                        None => app.oneshot(request).await.unwrap_or_else(|e| match e {}),
                    };
                    close_if_stopping(&state, &mut response);
                    Ok(response)
                },
                span,
            )
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _drain = drain;
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                result = conn.as_mut() => Some(result),
                _ = stop.wait_for(|s| *s) => None,
            };
            let result = match ended {
                Some(result) => result,
                None => {
                    // Accepted but nothing read yet: its request may be on the wire. It
                    // gets a moment to arrive (and is answered with Connection: close)
                    // before an idle connection is closed.
                    let waited = if served.load(Ordering::Relaxed) {
                        None
                    } else {
                        let wait = tokio::time::sleep(crate::limits::DRAIN_FIRST_REQUEST_WAIT);
                        tokio::select! {
                            result = conn.as_mut() => Some(result),
                            () = wait => None,
                        }
                    };
                    match waited {
                        Some(result) => result,
                        None => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
            open.decrement(1.0);
        });
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => spawn(stream, Some(draining.clone())),
                Err(e) => accept_failed(e).await,
            },
            Ok(()) = live_changed.changed() => routing.store(Arc::new(Routing::new(&state))),
            () = &mut shutdown => break,
        }
    }
    state.shutting_down.store(true, Ordering::Release);
    state.shutdown.send_replace(true);
    drop(draining);
    let grace = state.live.load().server.shutdown_grace;
    tracing::info!(
        ?grace,
        "draining: requests in flight may finish, new ingest gets 503"
    );
    let out_of_time = tokio::time::sleep(grace);
    tokio::pin!(out_of_time);
    loop {
        tokio::select! {
            None = drained.recv() => break,
            () = &mut out_of_time => {
                tracing::warn!(?grace, "requests still running after the shutdown grace; closing them");
                break;
            }
            accepted = listener.accept() => match accepted {
                // Not counted in the drain: one request (503 for writes), bounded by
                // header_timeout, and cut off with the rest when the drain ends.
                Ok((stream, _)) => spawn(stream, None),
                Err(e) => accept_failed(e).await,
            },
        }
    }
    drop(listener);
}

static TRACEPARENT: axum::http::HeaderName = axum::http::HeaderName::from_static("traceparent");
static REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// The span of one request, carrying `trace_id` (from a valid W3C `traceparent`) and
/// `request_id` (from `X-Request-Id`) so that every line logged while handling it names
/// them. Without either header, or with INFO off, it is `Span::none()`: no allocation and
/// no call into the subscriber on the common path (the level check is the callsite's
/// cached interest).
fn request_span<B>(request: &hyper::Request<B>) -> tracing::Span {
    if !tracing::enabled!(tracing::Level::INFO) {
        return tracing::Span::none();
    }
    let headers = request.headers();
    let trace_id = headers
        .get(&TRACEPARENT)
        .and_then(|v| trace_id(v.as_bytes()));
    let request_id = headers
        .get(&REQUEST_ID)
        .and_then(|v| request_id(v.as_bytes()));
    if trace_id.is_none() && request_id.is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!("request", trace_id, request_id)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lower-case; a
/// later version may append `-...`); None when it is not valid: version `ff`, an
/// all-zero trace or parent id, a wrong length or a character out of place.
fn trace_id(header: &[u8]) -> Option<&str> {
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |b: &[u8]| b.iter().all(|c| *c == b'0');
    if header.len() < 55 {
        return None;
    }
    let (version, trace, parent, flags) = (
        &header[0..2],
        &header[3..35],
        &header[36..52],
        &header[53..55],
    );
    let dashes = header[2] == b'-' && header[35] == b'-' && header[52] == b'-';
    let rest_ok = match version {
        b"00" => header.len() == 55,
        _ => header.len() == 55 || header[55] == b'-',
    };
    let ok = dashes
        && rest_ok
        && version != b"ff"
        && [version, trace, parent, flags].iter().all(|p| hex(p))
        && !zero(trace)
        && !zero(parent);
    ok.then(|| std::str::from_utf8(trace).ok()).flatten()
}

/// Longest `X-Request-Id` taken into logs.
const REQUEST_ID_BYTES_MAX: usize = 128;

/// An `X-Request-Id` fit for a log line: 1 to 128 of `A-Z a-z 0-9 - _ . :`; other values
/// are ignored rather than written into logs.
fn request_id(header: &[u8]) -> Option<&str> {
    let ok = !header.is_empty()
        && header.len() <= REQUEST_ID_BYTES_MAX
        && header
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
    ok.then(|| std::str::from_utf8(header).ok()).flatten()
}

/// The router, the direct paths and the connection settings of one `Live`: rebuilt by
/// `serve` when a reload swaps it.
struct Routing {
    app: Router,
    direct: direct::Direct,
    builder: hyper::server::conn::http1::Builder,
}

impl Routing {
    fn new(state: &SharedState) -> Routing {
        let live = state.live.load();
        let api_paths = api_routes();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(live.server.header_timeout)
            .max_buf_size(crate::limits::HTTP_READ_BUFFER_MAX)
            .keep_alive(true);
        Routing {
            app: router(Arc::clone(state), &live.routes),
            direct: direct::Direct::new(api_paths.iter().map(|(path, _)| *path), &live.routes),
            builder,
        }
    }
}

/// During shutdown every answer closes its connection: the drain waits for connections,
/// and a kept-alive one would otherwise stay open after its request.
fn close_if_stopping(state: &AppState, response: &mut Response) {
    if state.shutting_down.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
}

/// Out of file descriptors and the like: back off instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Over `max_connections`: answer 503 `overloaded` with Retry-After and close, without
/// parsing the request.
///
/// The answer waits for the request's first bytes: an HTTP client speaks first, and one
/// that gets an answer before it sent its request takes it for a broken connection
/// (hyper's client fails with "channel closed"). Then the close lingers: after the
/// answer and our FIN, what the client still sends (the rest of its request, a body) is
/// read and thrown away until it closes. Closing a socket with unread bytes sends a
/// reset, and a client still writing its body gets that reset instead of the 503
/// (nginx's `lingering_close` does the same). All of it within `REFUSED_LINGER`; at most
/// `REFUSED_LINGERING_MAX` refused connections wait so at once, beyond that one is
/// answered at once and closed.
async fn refuse_connection(
    mut stream: tokio::net::TcpStream,
    lingering: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    use tokio::io::AsyncReadExt;
    static ANSWER: LazyLock<Vec<u8>> = LazyLock::new(|| {
        let body = format!(
            r#"{{"error":{{"code":"{}","message":"max_connections connections are open; retry later"}}}}"#,
            ErrorCode::Overloaded.as_str()
        );
        let mut answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            errors::RETRY_AFTER_SECONDS,
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(body.as_bytes());
        answer
    });
    let deadline = tokio::time::Instant::now() + crate::limits::REFUSED_LINGER;
    let mut sink = [0u8; 4096];
    if lingering.is_some() {
        // The first bytes, the end of the stream or an error: the client has spoken.
        let _ = tokio::time::timeout_at(deadline, stream.read(&mut sink)).await;
    }
    // Polled once even past the deadline: the answer fits the empty send buffer.
    let _ = tokio::time::timeout_at(deadline, async {
        stream.write_all(&ANSWER).await?;
        stream.shutdown().await?;
        if lingering.is_some() {
            while stream.read(&mut sink).await? > 0 {}
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    drop(lingering);
}

/// Appends an integer as JSON text: answers written by hand on hot paths use it.
pub(crate) fn write_num(n: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON answer from pre-serialised bytes.
pub(crate) fn json_bytes(status: axum::http::StatusCode, body: Vec<u8>) -> Response {
    json_response(status, Body::from(body))
}

/// [`json_bytes`] whose body keeps `held` (the `max_inflight` permits its bytes were
/// charged to) until it has been sent or dropped.
pub(crate) fn json_bytes_holding<T: Send + Sync + 'static>(
    status: axum::http::StatusCode,
    body: Vec<u8>,
    held: T,
) -> Response {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(bytes::Bytes::from(body)).map_frame(move |frame| {
        let _ = &held;
        frame
    });
    json_response(status, Body::new(body))
}

fn json_response(status: axum::http::StatusCode, body: Body) -> Response {
    // Built directly rather than through `IntoResponse` parts: every ingest answer
    // passes here.
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod trace_tests {
    use super::{request_id, trace_id};

    #[test]
    fn traceparent_gives_its_trace_id_only_when_valid() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let ok = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(trace_id(ok.as_bytes()), Some(id));
        // A later version may carry more after a dash.
        let later = format!("01-{id}-00f067aa0ba902b7-01-extra");
        assert_eq!(trace_id(later.as_bytes()), Some(id));
        for bad in [
            format!("ff-{id}-00f067aa0ba902b7-01"),
            format!("00-{id}-00f067aa0ba902b7-01-extra"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("00_{id}-00f067aa0ba902b7-01"),
            format!("00-{id}-00f067aa0ba902b7"),
            String::new(),
        ] {
            assert_eq!(trace_id(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn request_ids_with_odd_characters_are_ignored() {
        assert_eq!(request_id(b"req-42_a.b:c"), Some("req-42_a.b:c"));
        assert_eq!(request_id(b"a b"), None);
        assert_eq!(request_id(b"a\"}"), None);
        assert_eq!(request_id(b""), None);
        assert_eq!(request_id(&[b'x'; 129]), None);
    }
}
