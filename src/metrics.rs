//! Metric names in one place, with their help text, and the Prometheus recorder.
//!
//! Names follow Prometheus conventions: `weir_` prefix, base units (bytes, seconds),
//! `_total` for counters. Labels are bounded: topic and partition come from the config,
//! HTTP routes are templates, never raw paths.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_IN: &str = "weir_events_in_total";
pub const BYTES_IN: &str = "weir_bytes_in_total";
pub const DUPLICATES: &str = "weir_duplicate_events_total";
pub const DEDUP_EVICTIONS: &str = "weir_dedup_evictions_total";
pub const DEDUP_ENTRIES: &str = "weir_dedup_entries";
pub const END_OFFSET: &str = "weir_partition_end_offset";
pub const FSYNC_ROUND_SECONDS: &str = "weir_fsync_round_seconds";
pub const FSYNC_ROUND_BYTES: &str = "weir_fsync_round_bytes";
pub const FSYNC_ERRORS: &str = "weir_fsync_errors_total";
pub const PARTITIONS_FENCED: &str = "weir_partitions_fenced";
pub const SEGMENT_ROLLS: &str = "weir_segment_rolls_total";
pub const RECOVERY_TRUNCATED_BYTES: &str = "weir_recovery_truncated_bytes_total";
pub const RECOVERY_TRUNCATIONS: &str = "weir_recovery_truncations_total";
pub const RECOVERY_SECONDS: &str = "weir_recovery_seconds";
pub const HTTP_REQUEST_SECONDS: &str = "weir_http_request_duration_seconds";
pub const DISK_FREE_BYTES: &str = "weir_disk_free_bytes";
pub const HTTP_REFUSED: &str = "weir_http_refused_total";
pub const READ_RECORDS: &str = "weir_read_records_total";
pub const READ_BYTES: &str = "weir_read_bytes_total";
pub const STREAM_CLIENTS: &str = "weir_stream_clients";
pub const BUILD_INFO: &str = "weir_build_info";
pub const RETENTION_DELETED_SEGMENTS: &str = "weir_retention_deleted_segments_total";
pub const RETENTION_DELETED_BYTES: &str = "weir_retention_deleted_bytes_total";
pub const RETENTION_UNCONSUMED: &str = "weir_retention_unconsumed_records_total";
pub const PIPELINE_RECORDS_IN: &str = "weir_pipeline_records_in_total";
pub const PIPELINE_ROWS_OUT: &str = "weir_pipeline_rows_closed_total";
pub const PIPELINE_LATE: &str = "weir_pipeline_late_events_total";
pub const PIPELINE_RECORDS_LOST: &str = "weir_pipeline_records_lost_total";
pub const PIPELINE_REFUSED: &str = "weir_pipeline_refused_events_total";
pub const PIPELINE_WATERMARK: &str = "weir_pipeline_watermark_seconds";
pub const PIPELINE_LAG: &str = "weir_pipeline_lag_records";
pub const CONFIG_RELOADS: &str = "weir_config_reloads_total";
pub const PIPELINE_OPEN_WINDOWS: &str = "weir_pipeline_open_windows";
pub const PIPELINE_VIEW_ROWS: &str = "weir_pipeline_view_rows";
pub const PIPELINE_CHECKPOINT_SECONDS: &str = "weir_pipeline_checkpoint_duration_seconds";
pub const PIPELINE_LATE_APPENDED: &str = "weir_pipeline_late_appended_total";
pub const PIPELINE_LATE_APPEND_FAILURES: &str = "weir_pipeline_late_append_failures_total";
pub const PIPELINE_LATE_PENDING: &str = "weir_pipeline_late_pending_events";
pub const PIPELINE_OUTPUT_ROWS: &str = "weir_pipeline_output_rows_total";
pub const PIPELINE_OUTPUT_APPEND_FAILURES: &str = "weir_pipeline_output_append_failures_total";
pub const PIPELINE_OUTPUT_PENDING: &str = "weir_pipeline_output_pending_rows";
pub const GROUP_COMMITS: &str = "weir_group_commits_total";
pub const GROUP_LAG: &str = "weir_group_lag_records";

/// Installs the global recorder and describes every metric. Histograms get buckets so
/// they are exported as Prometheus histograms (aggregatable), not summaries.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let latency = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let bytes = [
        512.0,
        4096.0,
        16384.0,
        65536.0,
        262_144.0,
        1_048_576.0,
        4_194_304.0,
        16_777_216.0,
        67_108_864.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &bytes)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        PIPELINE_RECORDS_IN,
        Unit::Count,
        "Records a pipeline read from its source (counted, filtered, late or without key)"
    );
    describe_counter!(
        PIPELINE_ROWS_OUT,
        Unit::Count,
        "Result rows (window, key) a pipeline closed"
    );
    describe_counter!(
        PIPELINE_LATE,
        Unit::Count,
        "Events no open window of a pipeline took: dropped (and appended to its late_topic if set)"
    );
    describe_counter!(
        PIPELINE_LATE_APPENDED,
        Unit::Count,
        "Late events a pipeline appended to its late_topic (replays its dedup absorbed not counted)"
    );
    describe_counter!(
        PIPELINE_LATE_APPEND_FAILURES,
        Unit::Count,
        "Appends to a pipeline's late_topic that were refused (free-space reserve, fenced partition); each retry counts"
    );
    describe_gauge!(
        PIPELINE_LATE_PENDING,
        Unit::Count,
        "Late events a pipeline holds for its late_topic, not appended yet; above 0 for long: the pipeline is stalled on a refusing late_topic"
    );
    describe_counter!(
        PIPELINE_OUTPUT_ROWS,
        Unit::Count,
        "Result row versions a pipeline appended to its output_topic (replays its dedup absorbed not counted)"
    );
    describe_counter!(
        PIPELINE_OUTPUT_APPEND_FAILURES,
        Unit::Count,
        "Appends of result rows to a pipeline's output_topic that were refused (free-space reserve, fenced partition) or not made durable; each retry counts"
    );
    describe_gauge!(
        PIPELINE_OUTPUT_PENDING,
        Unit::Count,
        "Result rows a pipeline committed for its output_topic and not appended yet; above 0 for long: the pipeline is stalled on a refusing output_topic"
    );
    describe_counter!(
        PIPELINE_RECORDS_LOST,
        Unit::Count,
        "Records retention removed before a pipeline read them; their windows answer complete: false"
    );
    describe_gauge!(
        PIPELINE_WATERMARK,
        Unit::Seconds,
        "A pipeline's watermark, epoch seconds (absent before it has one)"
    );
    describe_gauge!(
        PIPELINE_LAG,
        Unit::Count,
        "Records between a pipeline's processed offset and the visible end, per partition"
    );
    describe_gauge!(
        PIPELINE_OPEN_WINDOWS,
        Unit::Count,
        "Windows of a pipeline holding state and not closed yet"
    );
    describe_counter!(
        PIPELINE_REFUSED,
        Unit::Count,
        "Events a pipeline refused because it held max_open_windows (window, key) states; their windows answer complete: false"
    );
    describe_gauge!(
        PIPELINE_VIEW_ROWS,
        Unit::Count,
        "Result rows (window, key) a pipeline holds in memory for queries (max_view_rows)"
    );
    describe_histogram!(
        PIPELINE_CHECKPOINT_SECONDS,
        Unit::Seconds,
        "Time of one pipeline checkpoint: durable offsets, sled batch and flush"
    );
    describe_counter!(EVENTS_IN, Unit::Count, "Events appended to a topic");
    describe_counter!(
        BYTES_IN,
        Unit::Bytes,
        "Record batch bytes appended to a topic"
    );
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Events answered as duplicates and not appended"
    );
    describe_counter!(
        DEDUP_EVICTIONS,
        Unit::Count,
        "Dedup entries evicted by max_dedup_entries"
    );
    describe_gauge!(
        DEDUP_ENTRIES,
        Unit::Count,
        "Event ids held in a topic's dedup table"
    );
    describe_gauge!(
        END_OFFSET,
        Unit::Count,
        "Next offset of a partition (its visible end)"
    );
    describe_histogram!(
        FSYNC_ROUND_SECONDS,
        Unit::Seconds,
        "Duration of one fdatasync round"
    );
    describe_histogram!(
        FSYNC_ROUND_BYTES,
        Unit::Bytes,
        "Bytes made durable by one round"
    );
    describe_counter!(
        FSYNC_ERRORS,
        Unit::Count,
        "fsync failures; each fences its partition"
    );
    describe_gauge!(
        PARTITIONS_FENCED,
        Unit::Count,
        "Partitions refusing writes after fsync error"
    );
    describe_counter!(
        SEGMENT_ROLLS,
        Unit::Count,
        "Segments sealed and replaced by a new one"
    );
    describe_counter!(
        RECOVERY_TRUNCATED_BYTES,
        Unit::Bytes,
        "Bytes cut from torn or corrupt segment tails at start"
    );
    describe_counter!(
        RECOVERY_TRUNCATIONS,
        Unit::Count,
        "Partitions whose tail was cut at start"
    );
    describe_gauge!(
        RECOVERY_SECONDS,
        Unit::Seconds,
        "Duration of the last start-up recovery"
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request duration by route template and status"
    );
    describe_gauge!(
        DISK_FREE_BYTES,
        Unit::Bytes,
        "Free bytes on the file system holding the data dir"
    );
    describe_counter!(
        HTTP_REFUSED,
        Unit::Count,
        "Requests refused by a server-wide bound or shutdown (503) or the free-space reserve (507), by reason (connections, inflight, streams, shutting_down, free_space)"
    );
    describe_counter!(
        READ_RECORDS,
        Unit::Count,
        "Records served to readers (pull and SSE)"
    );
    describe_counter!(
        READ_BYTES,
        Unit::Bytes,
        "Envelope bytes served to readers (pull and SSE)"
    );
    describe_gauge!(STREAM_CLIENTS, Unit::Count, "Open SSE streams of a topic");
    describe_gauge!(BUILD_INFO, "Always 1; labels carry the version");
    describe_counter!(
        RETENTION_DELETED_SEGMENTS,
        Unit::Count,
        "Sealed segments deleted by retention"
    );
    describe_counter!(
        RETENTION_DELETED_BYTES,
        Unit::Bytes,
        "Segment bytes deleted by retention"
    );
    describe_counter!(
        RETENTION_UNCONSUMED,
        Unit::Count,
        "Records retention deleted before a consumer group committed past them"
    );
    describe_counter!(
        GROUP_COMMITS,
        Unit::Count,
        "Offset commits (PUT requests) made durable"
    );
    describe_gauge!(
        GROUP_LAG,
        Unit::Count,
        "Records between a group's committed offset and the visible end"
    );
    describe_counter!(
        CONFIG_RELOADS,
        Unit::Count,
        "Config reloads (SIGHUP) by result: ok (in force, keys needing a restart kept) or rejected (the file had problems; nothing changed)"
    );
}
