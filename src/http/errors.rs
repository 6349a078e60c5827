//! Every error answer weir gives: its code, status and fields, in one list. docs/http-api.md
//! mirrors [`ErrorCode::ALL`]; a test keeps the two in step.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::event::{BodyError, RecordPos};
use crate::log::groups::CommitError;
use crate::log::partition::{AppendError, ReadError};
use crate::log::topic::IngestError;

/// Seconds a client is told to wait after a 503 that is worth retrying.
pub(crate) const RETRY_AFTER_SECONDS: &str = "1";

macro_rules! codes {
    ($($variant:ident = $code:literal, $status:ident, $doc:literal;)*) => {
        /// Error codes, as published in docs/http-api.md.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode { $(#[doc = $doc] $variant,)* }

        impl ErrorCode {
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }

            pub fn doc(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }
        }
    };
}

codes! {
    InvalidTopicName = "invalid_topic_name", BAD_REQUEST, "The topic name breaks the grammar [A-Za-z0-9._-]{1,249}, or names an internal topic (`__` prefix) on ingest.";
    InvalidGroupName = "invalid_group_name", BAD_REQUEST, "The group name breaks the grammar [A-Za-z0-9._-]{1,249}.";
    InvalidOffsets = "invalid_offsets", BAD_REQUEST, "An entry of a commit names a partition the topic lacks, names one twice, or an offset below 0 or past the visible end; `entry` is its index from 0.";
    InvalidParameter = "invalid_parameter", BAD_REQUEST, "A query parameter is unknown or has a bad value.";
    InvalidUtf8 = "invalid_utf8", BAD_REQUEST, "The body is not valid UTF-8.";
    EmptyBody = "empty_body", BAD_REQUEST, "The body holds no event (empty, whitespace or `[]`).";
    MalformedJson = "malformed_json", BAD_REQUEST, "A record is not valid JSON, or the body is not an object, an array of objects or objects one after another.";
    InvalidEnvelope = "invalid_envelope", BAD_REQUEST, "A record is not an object, or an envelope field has the wrong type or is unknown.";
    MissingPayload = "missing_payload", BAD_REQUEST, "A record has no `payload` and the topic does not wrap bare objects.";
    MissingEventType = "missing_event_type", BAD_REQUEST, "A record has no `event_type` and the topic has no `default_event_type`.";
    InvalidTimestamp = "invalid_timestamp", BAD_REQUEST, "A timestamp is not RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff]` or epoch milliseconds.";
    TimestampOutOfRange = "timestamp_out_of_range", BAD_REQUEST, "An event time is outside [now - max_event_age, now + max_event_lead].";
    InvalidKey = "invalid_key", BAD_REQUEST, "A key is an object, an array, a boolean or null.";
    KeyTooLong = "key_too_long", BAD_REQUEST, "A key is longer than `server.max_key`.";
    InvalidCursor = "invalid_cursor", BAD_REQUEST, "The cursor is not `partition-offset` pairs joined by `.` (each partition of the topic at most once), `earliest` or `latest`.";
    OffsetOutOfRange = "offset_out_of_range", BAD_REQUEST, "The offset is outside the partition; `start_offset` and `end_offset` say what it holds (and `partition` which one).";
    UnknownTopic = "unknown_topic", NOT_FOUND, "No topic of that name is configured.";
    UnknownPartition = "unknown_partition", NOT_FOUND, "The topic has no partition of that number.";
    UnknownPipeline = "unknown_pipeline", NOT_FOUND, "No pipeline of that name is configured.";
    NoWindow = "no_window", NOT_FOUND, "The key has no window of the kind asked for (none yet, none closed, or none holding the watermark).";
    NotFound = "not_found", NOT_FOUND, "No route matches the path.";
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED, "The route exists but not for this method.";
    RequestTimeout = "request_timeout", REQUEST_TIMEOUT, "The body did not arrive within `server.body_timeout`.";
    BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE, "The body is larger than `server.max_body` (decided from Content-Length when sent).";
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, "Content-Type is not application/json, application/x-ndjson, application/x-www-form-urlencoded or absent.";
    StorageError = "storage_error", INTERNAL_SERVER_ERROR, "A write or read failed; the outcome of the request is unknown and a retry with the same event_ids is safe.";
    InternalError = "internal_error", INTERNAL_SERVER_ERROR, "A bug: please report it.";
    PartitionFenced = "partition_fenced", SERVICE_UNAVAILABLE, "An fsync failed on a partition this request wrote to; it refuses writes until weir restarts.";
    ShuttingDown = "shutting_down", SERVICE_UNAVAILABLE, "weir is stopping; retry after Retry-After (another instance or after restart).";
    Overloaded = "overloaded", SERVICE_UNAVAILABLE, "A server-wide bound (connections, in-flight bytes, open streams) is reached; retry after Retry-After.";
    InsufficientStorage = "insufficient_storage", INSUFFICIENT_STORAGE, "The disk is below its free-space reserve (`free_bytes` and `free_space_reserve` say how far) or a write found it full (no fields; a retry with the same event_ids is safe). Ingest resumes by itself once space is freed.";
}

/// An error answer: `{"error": {"code", "message", ...fields}}`.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub fields: Map<String, Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            fields: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    fn with_pos(self, pos: Option<RecordPos>) -> ApiError {
        match pos {
            Some(p) => self
                .with("record", p.record)
                .with("byte", p.byte)
                .with("line", p.line),
            None => self,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = Map::new();
        error.insert("code".into(), self.code.as_str().into());
        error.insert("message".into(), self.message.into());
        error.extend(self.fields);
        let status = self.code.status();
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        if matches!(self.code, ErrorCode::ShuttingDown | ErrorCode::Overloaded) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        let code = match e.code() {
            "invalid_utf8" => ErrorCode::InvalidUtf8,
            "empty_body" => ErrorCode::EmptyBody,
            "malformed_json" => ErrorCode::MalformedJson,
            "missing_payload" => ErrorCode::MissingPayload,
            "missing_event_type" => ErrorCode::MissingEventType,
            "invalid_timestamp" => ErrorCode::InvalidTimestamp,
            "timestamp_out_of_range" => ErrorCode::TimestampOutOfRange,
            "key_too_long" => ErrorCode::KeyTooLong,
            "invalid_key" => ErrorCode::InvalidKey,
            _ => ErrorCode::InvalidEnvelope,
        };
        ApiError::new(code, e.to_string()).with_pos(e.pos())
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        match e {
            IngestError::Append(a) => a.into(),
        }
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> ApiError {
        match e {
            CommitError::Append(a) => a.into(),
            CommitError::Task(t) => ApiError::new(ErrorCode::InternalError, t),
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> ApiError {
        match &e {
            AppendError::Fenced(_) => ApiError::new(ErrorCode::PartitionFenced, e.to_string()),
            AppendError::Closed(_) => ApiError::new(ErrorCode::ShuttingDown, e.to_string()),
            AppendError::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => ApiError::new(
                ErrorCode::InsufficientStorage,
                format!(
                    "{e}: the disk holding the data dir is full; ingest resumes by itself once \
                     space is freed, and a retry with the same event_ids is safe"
                ),
            ),
            AppendError::Io(_) => ApiError::new(ErrorCode::StorageError, e.to_string()),
            AppendError::BadBatch(_) => ApiError::new(ErrorCode::InternalError, e.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        match e {
            ReadError::OutOfRange { start, end } => {
                ApiError::new(ErrorCode::OffsetOutOfRange, e.to_string())
                    .with("start_offset", start)
                    .with("end_offset", end)
            }
            ReadError::Corrupt { .. } | ReadError::Io(_) => {
                tracing::error!(error = %e, "read failed");
                ApiError::new(ErrorCode::StorageError, e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_published_in_the_docs_with_its_status() {
        let doc = include_str!("../../docs/http-api.md");
        for code in ErrorCode::ALL {
            let row = format!("| `{}` | {} |", code.as_str(), code.status().as_u16());
            assert!(doc.contains(&row), "docs/http-api.md lacks the row {row}");
        }
        let rows = doc
            .lines()
            .filter(|l| l.starts_with("| `") && l.contains("_"))
            .count();
        assert!(rows >= ErrorCode::ALL.len());
    }
}
