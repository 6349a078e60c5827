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
pub const FSYNC_RUNNING_SECONDS: &str = "weir_fsync_running_seconds";
pub const PARTITIONS_FENCED: &str = "weir_partitions_fenced";
pub const SEGMENT_ROLLS: &str = "weir_segment_rolls_total";
pub const RECOVERY_TRUNCATED_BYTES: &str = "weir_recovery_truncated_bytes_total";
pub const RECOVERY_TRUNCATIONS: &str = "weir_recovery_truncations_total";
pub const RECOVERY_SECONDS: &str = "weir_recovery_seconds";
pub const CORRUPT_BATCHES: &str = "weir_corrupt_batches_total";
pub const INDEX_REBUILDS: &str = "weir_index_rebuilds_total";
pub const HTTP_REQUEST_SECONDS: &str = "weir_http_request_duration_seconds";
pub const DISK_FREE_BYTES: &str = "weir_disk_free_bytes";
pub const HTTP_REFUSED: &str = "weir_http_refused_total";
pub const HTTP_CONNECTIONS: &str = "weir_http_connections";
pub const READ_RECORDS: &str = "weir_read_records_total";
pub const READ_BYTES: &str = "weir_read_bytes_total";
pub const STREAM_CLIENTS: &str = "weir_stream_clients";
pub const BUILD_INFO: &str = "weir_build_info";
pub const RETENTION_DELETED_SEGMENTS: &str = "weir_retention_deleted_segments_total";
pub const RETENTION_DELETED_BYTES: &str = "weir_retention_deleted_bytes_total";
pub const RETENTION_UNCONSUMED: &str = "weir_retention_unconsumed_records_total";
pub const RETENTION_ERRORS: &str = "weir_retention_errors_total";
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
pub const PIPELINE_CHECKPOINT_FAILURES: &str = "weir_pipeline_checkpoint_failures_total";
pub const PIPELINE_LATE_APPENDED: &str = "weir_pipeline_late_appended_total";
pub const PIPELINE_LATE_APPEND_FAILURES: &str = "weir_pipeline_late_append_failures_total";
pub const PIPELINE_LATE_PENDING: &str = "weir_pipeline_late_pending_events";
pub const PIPELINE_OUTPUT_ROWS: &str = "weir_pipeline_output_rows_total";
pub const PIPELINE_OUTPUT_APPEND_FAILURES: &str = "weir_pipeline_output_append_failures_total";
pub const PIPELINE_OUTPUT_PENDING: &str = "weir_pipeline_output_pending_rows";
pub const GROUP_COMMITS: &str = "weir_group_commits_total";
pub const GROUP_LAG: &str = "weir_group_lag_records";

// The process metrics every Prometheus client library exports, under their standard
// names so stock dashboards and alerts work. Read from /proc at scrape time
// ([`render_process`]), not through the recorder: its counters are integers.
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
pub const PROCESS_THREADS: &str = "process_threads";

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
        "Records a pipeline could not read (removed by retention first, or in a corrupt batch); their windows answer complete: false"
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
    describe_counter!(
        PIPELINE_CHECKPOINT_FAILURES,
        Unit::Count,
        "Pipeline checkpoints that did not count (the result store refused them, e.g. a full disk, or their input was not durable); the next one writes everything again"
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
        FSYNC_RUNNING_SECONDS,
        Unit::Seconds,
        "How long the fsync round running now has waited (0 between rounds)"
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
        CORRUPT_BATCHES,
        Unit::Count,
        "Bad batches (CRC, framing or offset wrong) reads met below the visible end; never served, their offsets skipped"
    );
    describe_counter!(
        INDEX_REBUILDS,
        Unit::Count,
        "Segment offset and time indexes found wrong (at start or by a read) and rebuilt from the segment"
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
    describe_gauge!(
        HTTP_CONNECTIONS,
        Unit::Count,
        "Open client connections, each holding one of server.max_connections (refused ones not counted)"
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
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels carry the version, the rustc that built it and the cargo profile"
    );
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
        RETENTION_ERRORS,
        Unit::Count,
        "Retention passes over a partition that failed (logged; the next pass tries again)"
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

/// The `weir_build_info` labels: version, the compiler (from build.rs) and the profile.
pub fn build_info_labels() -> [(&'static str, &'static str); 3] {
    [
        ("version", env!("CARGO_PKG_VERSION")),
        ("rustc", env!("WEIR_RUSTC_VERSION")),
        (
            "profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        ),
    ]
}

/// Appends the `process_*` families (Prometheus text format) read from /proc/self now.
/// A file that cannot be read leaves its families out rather than failing the scrape.
pub fn render_process(out: &mut String) {
    use std::fmt::Write;
    let mut family = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    };
    if let Some(stat) = ProcStat::read() {
        family(
            PROCESS_RESIDENT_MEMORY,
            "gauge",
            "Resident memory size in bytes",
            stat.rss_bytes as f64,
        );
        family(
            PROCESS_VIRTUAL_MEMORY,
            "gauge",
            "Virtual memory size in bytes",
            stat.vsize_bytes as f64,
        );
        family(
            PROCESS_CPU_SECONDS,
            "counter",
            "Total user and system CPU time spent in seconds",
            stat.cpu_seconds,
        );
        family(
            PROCESS_THREADS,
            "gauge",
            "Number of OS threads in the process",
            stat.threads as f64,
        );
        if let Some(start) = stat.start_time_seconds {
            family(
                PROCESS_START_TIME,
                "gauge",
                "Start time of the process since unix epoch in seconds",
                start,
            );
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // Minus the descriptor read_dir itself holds open.
        let open = dir.count().saturating_sub(1);
        family(
            PROCESS_OPEN_FDS,
            "gauge",
            "Number of open file descriptors",
            open as f64,
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0 {
        family(
            PROCESS_MAX_FDS,
            "gauge",
            "Maximum number of open file descriptors",
            limit.rlim_cur as f64,
        );
    }
}

/// What /proc/self/stat says, converted to base units.
struct ProcStat {
    rss_bytes: u64,
    vsize_bytes: u64,
    cpu_seconds: f64,
    threads: u64,
    start_time_seconds: Option<f64>,
}

impl ProcStat {
    fn read() -> Option<ProcStat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces and parentheses: fields are counted
        // after its closing parenthesis, the first of them being field 3 (state).
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
        let page = u64::try_from(page).ok()?;
        let cpu_ticks = field(14)? + field(15)?;
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let start_ticks = field(22)?;
        Some(ProcStat {
            rss_bytes: field(24)? * page,
            vsize_bytes: field(23)?,
            cpu_seconds: cpu_ticks as f64 / ticks as f64,
            threads: field(20)?,
            start_time_seconds: boot.map(|b| b as f64 + start_ticks as f64 / ticks as f64),
        })
    }
}

#[cfg(test)]
mod tests {
    /// The `pub const NAME: &str = "weir_..."` lines of this file: (NAME, metric name).
    fn constants() -> Vec<(String, String)> {
        include_str!("metrics.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| {
                let (ident, rest) = l.split_once(": &str = \"")?;
                Some((ident.to_string(), rest.strip_suffix("\";")?.to_string()))
            })
            .collect()
    }

    #[test]
    fn every_name_is_described_and_follows_the_conventions() {
        let source = include_str!("metrics.rs");
        let consts = constants();
        assert!(consts.len() > 40, "{consts:?}");
        for (ident, name) in &consts {
            assert!(
                name.starts_with("weir_") || name.starts_with("process_"),
                "{name}"
            );
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            for unit in ["_ms", "_millis", "_kb", "_kib", "_mb", "_mib", "_us"] {
                assert!(
                    !name.contains(&format!("{unit}_")) && !name.ends_with(unit),
                    "{name}: base units only (seconds, bytes)"
                );
            }
            if name.starts_with("process_") {
                // Rendered by render_process with their help and type beside them.
                assert!(
                    source.lines().any(|l| l.trim() == format!("{ident},")),
                    "{ident} is not rendered"
                );
                continue;
            }
            let described = [
                "describe_counter!",
                "describe_gauge!",
                "describe_histogram!",
            ]
            .iter()
            .find(|d| {
                source.contains(&format!("{d}(\n        {ident},"))
                    || source.contains(&format!("{d}({ident},"))
            })
            .unwrap_or_else(|| panic!("{ident} ({name}) has no describe_*! call"));
            assert_eq!(
                *described == "describe_counter!",
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
        }
    }

    /// Every metric emitted anywhere in src/ is named by one of the constants here.
    #[test]
    fn every_emitted_metric_is_named_here() {
        let idents: Vec<String> = constants().into_iter().map(|(i, _)| i).collect();
        let mut stack = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut sites = 0;
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                for e in std::fs::read_dir(&path).unwrap() {
                    stack.push(e.unwrap().path());
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("metrics.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for mac in ["counter!(", "gauge!(", "histogram!("] {
                for (at, _) in text.match_indices(&format!("metrics::{mac}")) {
                    let arg = text[at + "metrics::".len() + mac.len()..]
                        .trim_start()
                        .split([',', ')'])
                        .next()
                        .unwrap()
                        .trim();
                    let ident = arg.strip_prefix("m::").unwrap_or_else(|| {
                        panic!("{}: {arg}: name metrics in metrics.rs", path.display())
                    });
                    assert!(
                        idents.iter().any(|i| i == ident),
                        "{}: {ident}",
                        path.display()
                    );
                    sites += 1;
                }
            }
        }
        assert!(sites > 30, "found only {sites} emitting sites");
    }
}
