//! `GET` and `PUT /v1/groups/{group}/offsets/{topic}`: consumer-group offsets and lag.
//! Validation and JSON live here; storage is `log::groups`.
//!
//! A committed offset is the next offset the group reads. Group names follow the topic
//! name grammar `[A-Za-z0-9._-]{1,249}`, not `.` or `..`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Request, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::SharedState;
use super::errors::{ApiError, ErrorCode};
use super::ingest::BodyBounds;
use crate::log::groups::Committed;
use crate::log::topic::Topic;
use crate::log::topic_name::validate_topic_name;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    offsets: Vec<CommitEntry>,
}

/// Signed, so a negative partition is a validation error naming the entry, not a JSON one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitEntry {
    partition: i64,
    offset: i64,
}

fn check_group(group: &str) -> Result<(), ApiError> {
    validate_topic_name(group).map_err(|m| {
        ApiError::new(
            ErrorCode::InvalidGroupName,
            m.replacen("topic name", "group name", 1),
        )
    })
}

fn lookup(state: &SharedState, group: &str, topic: &str) -> Result<Arc<Topic>, ApiError> {
    check_group(group)?;
    validate_topic_name(topic).map_err(|m| ApiError::new(ErrorCode::InvalidTopicName, m))?;
    state
        .log
        .topic(topic)
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownTopic, format!("no topic {topic:?}")))
}

/// Every partition of the topic with the group's committed offset (null if none), the
/// partition's start and visible end, and the lag (null without a committed offset).
fn offsets_json(group: &str, topic: &Topic, committed: &BTreeMap<u32, Committed>) -> Value {
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .map(|p| {
            let end = p.visible().end_offset;
            let c = committed.get(&p.id);
            json!({
                "partition": p.id,
                "offset": c.map(|c| c.offset),
                "start_offset": p.start_offset(),
                "end_offset": end,
                "lag": c.map(|c| (end - c.offset).max(0)),
            })
        })
        .collect();
    json!({ "group": group, "topic": &*topic.name, "partitions": partitions })
}

pub async fn get_offsets(
    State(state): State<SharedState>,
    Path((group, topic)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let t = lookup(&state, &group, &topic)?;
    let committed = state.log.groups().committed(&group, &topic);
    Ok(axum::Json(offsets_json(&group, &t, &committed)))
}

pub async fn put_offsets(
    State(state): State<SharedState>,
    Path((group, topic)): Path<(String, String)>,
    request: Request,
) -> Result<axum::Json<Value>, ApiError> {
    let t = lookup(&state, &group, &topic)?;
    if state.shutting_down.load(Ordering::Acquire) {
        super::Refusal::ShuttingDown.count();
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "weir is shutting down",
        ));
    }
    // Under the same bounds as an ingest body: max_body, body_timeout, max_inflight.
    let (parts, body) = request.into_parts();
    let bounds = BodyBounds::of(&state.live.load());
    let (body, _permits) = bounds.read(&parts.headers, body).await?;
    let parsed: CommitBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("expected {{\"offsets\": [{{\"partition\": p, \"offset\": o}}]}}: {e}"),
        )
    })?;
    let entries = validate(&t, &parsed.offsets)?;
    state.log.groups().commit(&group, &topic, entries).await?;
    let committed = state.log.groups().committed(&group, &topic);
    Ok(axum::Json(offsets_json(&group, &t, &committed)))
}

/// Checks every entry against the topic; an error names the entry by its index (from 0).
fn validate(topic: &Topic, offsets: &[CommitEntry]) -> Result<Vec<(u32, i64)>, ApiError> {
    if offsets.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidOffsets,
            "offsets is empty; commit at least one partition",
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(offsets.len());
    for (i, e) in offsets.iter().enumerate() {
        let bad =
            |message: String| ApiError::new(ErrorCode::InvalidOffsets, message).with("entry", i);
        let p = u32::try_from(e.partition)
            .ok()
            .and_then(|p| topic.partitions.get(p as usize))
            .ok_or_else(|| {
                bad(format!(
                    "offsets[{i}]: topic {:?} has partitions 0 to {}, not {}",
                    &*topic.name,
                    topic.partitions.len() - 1,
                    e.partition
                ))
            })?;
        if !seen.insert(p.id) {
            return Err(bad(format!(
                "offsets[{i}]: partition {} appears twice",
                p.id
            )));
        }
        let end = p.visible().end_offset;
        if e.offset < 0 || e.offset > end {
            return Err(bad(format!(
                "offsets[{i}]: offset {} is outside 0 to {end} (the visible end of partition {})",
                e.offset, p.id
            ))
            .with("end_offset", end));
        }
        out.push((p.id, e.offset));
    }
    Ok(out)
}
