//! `/metrics`, `/healthz` and `/readyz`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::SharedState;

pub async fn metrics(State(state): State<SharedState>) -> Response {
    // End offsets, dedup entries and lag move with every append: computed when asked.
    state.log.update_scrape_gauges();
    let mut body = state.metrics.render();
    crate::metrics::render_process(&mut body);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Liveness: the process answers.
pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "ok" }))
}

/// Readiness: the log is recovered (true once serving), not stopping, no partition fenced
/// or waiting on a stalled fsync, and every pipeline has caught up to within `ready_lag` once since start.
pub async fn readyz(State(state): State<SharedState>) -> Response {
    let mut not_ready: Vec<String> = state
        .log
        .fenced()
        .into_iter()
        .map(|p| format!("partition {p} is fenced after an fsync failure"))
        .collect();
    for (p, waited) in state.log.stalled_fsyncs(crate::log::fsync_stalled_after()) {
        not_ready.push(format!(
            "partition {p}: an fsync has not returned for {:.1} s",
            waited.as_secs_f64()
        ));
    }
    for p in state.pipelines.list().iter() {
        if !p.caught_up() {
            not_ready.push(format!(
                "pipeline {} is catching up ({} records behind, ready_lag {})",
                p.config.name,
                p.lag(),
                p.config.ready_lag
            ));
        }
    }
    if state.shutting_down.load(Ordering::Acquire) {
        not_ready.push("shutting down".to_string());
    }
    let status = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({ "ready": not_ready.is_empty(), "not_ready": not_ready })),
    )
        .into_response()
}
