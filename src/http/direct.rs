//! GET queries answered without the router: the `[[route]]` GET paths (the seed's
//! `/page/{page_id}/count`) and `/v1/pipelines/{name}/keys/{key}` without a query
//! string. They are the hot read paths, and the router's share of such a request (its
//! matching, the `HashMap<String, String>` of path parameters, the boxed services and
//! the middleware) was about a fifth of its server CPU.
//!
//! A request is taken here only where the router would send it to the same handler with
//! the same parameters: paths are matched by the router axum uses (matchit, the version
//! axum pins) over the same list of paths, so a static path still wins over a
//! placeholder, and parameters are percent-decoded as axum decodes them. Everything else,
//! another method (HEAD included), a key query with a query string, a parameter that
//! does not decode to UTF-8, goes through the router, which answers it as before.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Instant;

use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use super::{KEYS_ROUTE, SharedState, query, request_histogram};
use crate::config::{RouteConfig, RouteMethod, RouteTarget};

/// The paths the router serves, each marked with what `Direct` does with it.
pub struct Direct {
    paths: matchit::Router<Target>,
}

enum Target {
    /// A `[[route]]` GET that queries.
    Route(Box<DirectRoute>),
    /// `/v1/pipelines/{name}/keys/{key}`.
    Keys(Ok200),
    /// Any other path of the router: left to it.
    Routed,
}

struct DirectRoute {
    config: RouteConfig,
    /// The placeholder holding the key.
    key: String,
    ok: Ok200,
}

/// The histogram of a route's 200s, looked up once (on first use, so that a route never
/// asked shows no series) rather than per request.
#[derive(Default)]
struct Ok200(OnceLock<metrics::Histogram>);

impl Ok200 {
    fn record(&self, route: &str, status: u16, seconds: f64) {
        if status == 200 {
            self.0
                .get_or_init(|| request_histogram(route, "GET", 200))
                .record(seconds);
        } else {
            request_histogram(route, "GET", status).record(seconds);
        }
    }
}

impl Direct {
    /// `api_paths` are the router's own paths, `routes` the `[[route]]`s it serves.
    pub fn new<'a>(
        api_paths: impl IntoIterator<Item = &'a str>,
        routes: &'a [RouteConfig],
    ) -> Direct {
        match Direct::paths(api_paths, routes) {
            Ok(paths) => Direct { paths },
            // Cannot happen for paths the router took (it inserts them into the same
            // matchit router); if it did, nothing would be direct.
            Err(e) => {
                tracing::warn!(error = %e, "queries go through the router");
                Direct {
                    paths: matchit::Router::new(),
                }
            }
        }
    }

    fn paths<'a>(
        api_paths: impl IntoIterator<Item = &'a str>,
        routes: &'a [RouteConfig],
    ) -> Result<matchit::Router<Target>, matchit::InsertError> {
        let mut paths = matchit::Router::new();
        // A path is inserted once, with what a GET of it does (it may serve several methods).
        let mut inserted: Vec<&str> = Vec::new();
        let mut insert = |path: &'a str, target: Target| {
            if inserted.contains(&path) {
                return Ok(());
            }
            inserted.push(path);
            paths.insert(path, target)
        };
        for route in routes {
            if let (RouteMethod::Get, RouteTarget::Query { key, .. }) =
                (&route.method, &route.target)
            {
                let direct = DirectRoute {
                    config: route.clone(),
                    key: key.clone(),
                    ok: Ok200::default(),
                };
                insert(&route.path, Target::Route(Box::new(direct)))?;
            }
        }
        for route in routes {
            insert(&route.path, Target::Routed)?;
        }
        for path in api_paths {
            let target = if path == KEYS_ROUTE {
                Target::Keys(Ok200::default())
            } else {
                Target::Routed
            };
            insert(path, target)?;
        }
        Ok(paths)
    }

    /// The answer to `request` when it is one of the direct queries; None sends it to
    /// the router. The request's duration is recorded as the router's middleware does.
    pub fn answer<B>(&self, state: &SharedState, request: &Request<B>) -> Option<Response> {
        if request.method() != Method::GET {
            return None;
        }
        let matched = self.paths.at(request.uri().path()).ok()?;
        let param = |name: &str| {
            let raw = matched.params.get(name)?;
            if raw.contains('%') {
                percent_decode_str(raw).decode_utf8().ok()
            } else {
                // Nothing to decode, and matchit has checked it is UTF-8.
                Some(Cow::Borrowed(raw))
            }
        };
        match matched.value {
            Target::Route(route) => {
                let key = param(&route.key)?;
                let started = Instant::now();
                let response = query::route_query(state, &route.config, &key)
                    .unwrap_or_else(IntoResponse::into_response);
                let status = response.status().as_u16();
                let seconds = started.elapsed().as_secs_f64();
                route.ok.record(&route.config.path, status, seconds);
                Some(response)
            }
            Target::Keys(ok) => {
                if request.uri().query().is_some() {
                    return None;
                }
                let (name, key) = (param("name")?, param("key")?);
                let started = Instant::now();
                let response = query::key_latest(state, &name, &key)
                    .unwrap_or_else(IntoResponse::into_response);
                let status = response.status().as_u16();
                ok.record(KEYS_ROUTE, status, started.elapsed().as_secs_f64());
                Some(response)
            }
            Target::Routed => None,
        }
    }
}
