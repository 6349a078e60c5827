//! Reading back: `GET /v1/topics`, `GET /v1/topics/{topic}` and pulls of one partition.
//! Envelopes are copied from the segments byte for byte into the answer.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::errors::{ApiError, ErrorCode};
use super::{SharedState, json_bytes};
use crate::limits::{READ_RECORDS_DEFAULT, READ_RECORDS_MAX, READ_RESPONSE_BYTES_MAX};
use crate::log::topic::Topic;
use crate::log::topic_name::validate_topic_name;

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
    let topics: Vec<_> = state.log.topics().map(|t| topic_json(t)).collect();
    axum::Json(json!({ "topics": topics }))
}

fn lookup(state: &SharedState, name: &str) -> Result<Arc<Topic>, ApiError> {
    validate_topic_name(name).map_err(|m| ApiError::new(ErrorCode::InvalidTopicName, m))?;
    state
        .log
        .topic(name)
        .cloned()
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
    limit: Option<usize>,
}

pub async fn pull(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    query: Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let topic = lookup(&state, &name)?;
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    let Some(p) = q.partition else {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "partition is required",
        ));
    };
    let Some(partition) = topic.partitions.get(p as usize).cloned() else {
        return Err(ApiError::new(
            ErrorCode::UnknownPartition,
            format!(
                "topic {name:?} has partitions 0 to {}",
                topic.partitions.len() - 1
            ),
        ));
    };
    let limit = q.limit.unwrap_or(READ_RECORDS_DEFAULT);
    if limit == 0 || limit > READ_RECORDS_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("limit must be between 1 and {READ_RECORDS_MAX}"),
        ));
    }
    let offset = q.offset.unwrap_or_else(|| partition.start_offset());
    // Segment reads are file IO: keep them off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(b"{\"events\":[");
        let mut first = true;
        let next = partition.read(
            offset,
            limit,
            READ_RESPONSE_BYTES_MAX,
            &mut |off, key, value| {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(
                    format!("{{\"partition\":{p},\"offset\":{off},\"key\":").as_bytes(),
                );
                match key {
                    Some(k) => {
                        let _ = serde_json::to_writer(&mut out, &String::from_utf8_lossy(k));
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"event\":");
                out.extend_from_slice(value);
                out.push(b'}');
            },
        )?;
        out.extend_from_slice(format!("],\"next_offset\":{next}}}").as_bytes());
        Ok::<_, ApiError>(out)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::InternalError, e.to_string()))??;
    Ok(json_bytes(StatusCode::OK, body))
}
