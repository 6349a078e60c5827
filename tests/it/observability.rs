//! /metrics, /healthz and /readyz.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::util::{Weir, config, config_with, now_ms};

/// A topic feeding a pipeline with a late topic and an output topic, so that every
/// family of the pipeline path exists once some traffic went through.
const PIPELINE: &str = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "clicks"
partitions = 2
fsync = "always"
default_event_type = "page.view"

[[topic]]
name = "late"
partitions = 1

[[topic]]
name = "results"
partitions = 1

[[pipeline]]
name = "pages"
source = "clicks"
group_by = ["/payload/page"]
window = { kind = "tumbling", size = "1s" }
max_out_of_orderness = "0s"
allowed_lateness = "0s"
checkpoint_interval = "100ms"
late_topic = "late"
output_topic = "results"

[[pipeline.aggregate]]
name = "count"
fn = "count"

[[pipeline.aggregate]]
name = "latency"
fn = "quantiles"
field = "/payload/ms"
quantiles = [0.5, 0.99]
"#;

/// A weir running [`PIPELINE`] after ingest, a late event, closed windows, checkpoints,
/// reads, a group commit and a 404: the traffic a dashboard shows.
pub fn busy_weir() -> Weir {
    let w = Weir::start(PIPELINE);
    let t0 = now_ms() - 60_000;
    let event = |i: i64, ms: i64| {
        format!(
            r#"{{"event_id":"e{i}","key":"k{i}","timestamp":{ms},"payload":{{"page":"p{}","ms":{i}}}}}"#,
            i % 3
        )
    };
    let body: String = (0..20).map(|i| event(i, t0 + i * 100)).collect();
    assert_eq!(w.post("/v1/topics/clicks/events", &body).status, 202);
    // Both partitions move past the first windows, then one event comes too late.
    let later: String = (20..24).map(|i| event(i, t0 + 5_000)).collect();
    assert_eq!(w.post("/v1/topics/clicks/events", &later).status, 202);
    assert_eq!(
        w.post("/v1/topics/clicks/events", &event(99, t0)).status,
        202
    );
    assert_eq!(
        w.get("/v1/topics/clicks/events?partition=0&offset=0")
            .status,
        200
    );
    let r = w.put(
        "/v1/groups/g/offsets/clicks",
        r#"{"offsets":[{"partition":0,"offset":1}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(w.get("/v1/topics/nope").status, 404);
    let mut stream = w.sse("/v1/topics/clicks/stream?from=earliest", &[]);
    assert!(!stream.events(1, Duration::from_secs(10)).is_empty());
    drop(stream);
    // Until the late event was counted and appended, and a checkpoint ran.
    let deadline = Instant::now() + Duration::from_secs(20);
    while w
        .metric("weir_pipeline_late_appended_total", &[])
        .unwrap_or(0.0)
        < 1.0
        || w.metric("weir_pipeline_checkpoint_duration_seconds_count", &[])
            .unwrap_or(0.0)
            < 1.0
        || w.metric("weir_pipeline_output_rows_total", &[])
            .unwrap_or(0.0)
            < 1.0
    {
        assert!(Instant::now() < deadline, "{}", w.get("/metrics").body);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The pipeline has closed windows by now: a query answered from them.
    assert_eq!(
        w.get("/v1/pipelines/pages/keys/p1?window=last_closed")
            .status,
        200
    );
    w
}

/// One family of a scrape: its `# TYPE`, whether it has a `# HELP`, its sample names.
#[derive(Default, Debug)]
struct Family {
    kind: String,
    help: Option<String>,
    samples: usize,
}

/// The families of a Prometheus text scrape, by name. Samples are attributed to their
/// family (a histogram's `_bucket`, `_sum`, `_count`); a sample of no family panics.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_string()).or_default().help = Some(help.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.entry(name.to_string()).or_default().kind = kind.to_string();
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = [name]
                .into_iter()
                .chain(
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .filter_map(|s| name.strip_suffix(s)),
                )
                .find(|n| out.get(*n).is_some_and(|f| !f.kind.is_empty()))
                .unwrap_or_else(|| panic!("sample of no declared family: {line}"));
            out.get_mut(family).unwrap().samples += 1;
        }
    }
    out
}

#[test]
fn every_metric_family_has_help_and_follows_prometheus_naming() {
    let w = busy_weir();
    let text = w.get("/metrics").body;
    let families = families(&text);
    for (name, f) in &families {
        assert!(!f.kind.is_empty(), "{name} has HELP but no TYPE");
        assert!(
            f.help.as_ref().is_some_and(|h| h.len() > 10),
            "{name} has no HELP text"
        );
        assert!(f.samples > 0, "{name} has no samples");
        assert!(
            name.starts_with("weir_") || name.starts_with("process_"),
            "{name}: weir_ prefix"
        );
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name}"
        );
        assert_eq!(
            f.kind == "counter",
            name.ends_with("_total"),
            "{name} ({}): counters and only counters end in _total",
            f.kind
        );
        assert!(
            ["counter", "gauge", "histogram"].contains(&f.kind.as_str()),
            "{name}: {} (histograms, not summaries)",
            f.kind
        );
        for unit in [
            "_ms",
            "_millis",
            "_milliseconds",
            "_us",
            "_kb",
            "_kib",
            "_mb",
            "_mib",
        ] {
            assert!(
                !name.ends_with(unit) && !name.contains(&format!("{unit}_")),
                "{name}: base units (seconds, bytes)"
            );
        }
    }
    // The families the traffic above must have produced, among them the process ones.
    for name in [
        "weir_build_info",
        "weir_events_in_total",
        "weir_bytes_in_total",
        "weir_http_request_duration_seconds",
        "weir_pipeline_records_in_total",
        "weir_pipeline_late_events_total",
        "weir_pipeline_lag_records",
        "weir_pipeline_checkpoint_duration_seconds",
        "weir_group_lag_records",
        "weir_disk_free_bytes",
        "weir_read_records_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(families.contains_key(name), "{name} missing from:\n{text}");
    }
    // Process figures that are plausible for this process.
    let rss = w.metric_plain("process_resident_memory_bytes").unwrap();
    assert!(rss > 1e6 && rss < 4e9, "rss {rss}");
    let start = w.metric_plain("process_start_time_seconds").unwrap();
    let now = now_ms() as f64 / 1000.0;
    assert!(
        start <= now + 1.0 && start > now - 600.0,
        "start {start}, now {now}"
    );
    assert!(w.metric_plain("process_open_fds").unwrap() >= 5.0);
    let disk = w.metric_plain("weir_disk_free_bytes").unwrap();
    assert!(disk > 0.0, "{disk}");
    let info = text
        .lines()
        .find(|l| l.starts_with("weir_build_info{"))
        .unwrap();
    for label in [
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        "rustc=\"1.".to_string(),
        "profile=\"".to_string(),
    ] {
        assert!(info.contains(&label), "{label} missing from {info}");
    }
}

#[test]
fn metrics_health_and_readiness() {
    let w = Weir::start(&config("wrap = true\ndefault_event_type = \"t\""));
    assert_eq!(w.get("/healthz").status, 200);
    let r = w.get("/readyz");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ready"], true);
    let r = w.post("/v1/topics/events/events", r#"{"a":1}{"a":2}"#);
    assert_eq!(r.status, 202);
    let _ = w.get("/v1/topics/events");
    let text = w.get("/metrics").body;
    for needle in [
        "weir_events_in_total{topic=\"events\"} 2",
        "weir_bytes_in_total{topic=\"events\"}",
        "weir_partition_end_offset{",
        "weir_fsync_round_seconds_bucket{",
        "weir_fsync_round_bytes_bucket{",
        "weir_recovery_truncations_total{",
        "weir_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/topics/{topic}/events\",status=\"202\"",
        "weir_build_info{",
        "# HELP weir_events_in_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn connections_beyond_the_bound_get_503_with_retry_after() {
    let w = Weir::start(&config_with("max_connections = 1", ""));
    // One idle keep-alive connection holds the only slot.
    let held = std::net::TcpStream::connect(&w.addr).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let r = w.get("/healthz");
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "overloaded"),
        "{}",
        r.body
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(held);
    // The slot frees once the server sees the close: poll, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.get("/healthz").status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot is never free again"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // At least the request above; under load the start-up probe's connection may still
    // have held the slot when `held` connected, and been counted too. The /healthz
    // connection may hold the slot a moment after its answer too.
    let text = loop {
        let r = w.get("/metrics");
        if r.status == 200 {
            break r.body;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.body);
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("weir_http_refused_total{reason=\"connections\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused >= 1, "{text}");
}

#[test]
fn slow_clients_are_cut_off_by_the_header_and_body_timeouts() {
    use std::io::{Read, Write};
    let cfg = config_with("header_timeout = \"1s\"\nbody_timeout = \"1s\"", "");
    let w = Weir::start(&cfg);
    let started = std::time::Instant::now();

    // Headers that never finish: the connection is closed.
    let mut slow_head = std::net::TcpStream::connect(&w.addr).unwrap();
    slow_head
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    slow_head
        .write_all(b"POST /v1/topics/events/events HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A body that never finishes: 408 request_timeout.
    let mut slow_body = std::net::TcpStream::connect(&w.addr).unwrap();
    slow_body
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    slow_body
        .write_all(b"POST /v1/topics/events/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .unwrap();

    let mut answer = Vec::new();
    let _ = slow_head.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    let mut answer = Vec::new();
    let _ = slow_body.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        w.get("/healthz").status,
        200,
        "normal requests are still served"
    );
}

#[test]
fn request_bytes_beyond_max_inflight_get_503_and_memory_is_not_taken() {
    use std::io::{Read, Write};
    let cfg = config_with(
        "max_body = \"1KiB\"\nmax_inflight = \"1KiB\"",
        "default_event_type = \"t\"",
    );
    let w = Weir::start(&cfg);
    let body = format!(r#"{{"payload":"{}"}}"#, "x".repeat(880));
    // A request whose body is still arriving holds 900 of the 1024 bytes.
    let mut slow = std::net::TcpStream::connect(&w.addr).unwrap();
    let head = format!(
        "POST /v1/topics/events/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).unwrap();
    slow.write_all(&body.as_bytes()[..10]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));

    let small = format!(r#"{{"payload":"{}"}}"#, "y".repeat(400));
    let r = w.post("/v1/topics/events/events", &small);
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "overloaded"),
        "{}",
        r.body
    );
    assert_eq!(r.header("retry-after"), Some("1"));

    slow.write_all(&body.as_bytes()[10..]).unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(
        w.post("/v1/topics/events/events", &small).status,
        202,
        "the bytes were given back"
    );
}

/// The `weir_*` and `process_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && word(bytes[i]) {
            i += 1;
        }
        let token = &expr[start..i];
        if token.starts_with("weir_") || token.starts_with("process_") {
            out.push(token.to_string());
        }
        i += 1;
    }
    out
}

/// Every PromQL expression of a dashboard: panel targets and template variable queries.
fn expressions(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", serde_json::Value::String(s)) => {
                        out.push(s.clone());
                    }
                    _ => expressions(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_only_uses_metrics_weir_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/grafana/weir.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(dash["schemaVersion"], 39);
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels = dash["panels"].as_array().unwrap();
    let mut titles = Vec::new();
    let mut rects: Vec<(i64, i64, i64, i64)> = Vec::new();
    for p in panels {
        let g = &p["gridPos"];
        let r = [&g["x"], &g["y"], &g["w"], &g["h"]].map(|v| v.as_i64().unwrap());
        for q in &rects {
            let apart =
                r[0] + r[2] <= q.0 || q.0 + q.2 <= r[0] || r[1] + r[3] <= q.1 || q.1 + q.3 <= r[1];
            assert!(apart, "{} overlaps another panel", p["title"]);
        }
        rects.push((r[0], r[1], r[2], r[3]));
        if p["type"] == "row" {
            continue;
        }
        titles.push(p["title"].as_str().unwrap().to_string());
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
    }
    for title in [
        "Ingest rate",
        "Ingest bytes",
        "Pipeline lag",
        "Consumer group lag",
        "Late events",
        "Checkpoint duration",
        "HTTP latency",
        "HTTP errors",
        "Resident memory",
        "Disk free",
    ] {
        assert!(
            titles.iter().any(|t| t == title),
            "no panel {title}: {titles:?}"
        );
    }

    let mut exprs = Vec::new();
    expressions(&dash, &mut exprs);
    let mut names: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 25, "{names:?}");

    let w = busy_weir();
    let text = w.get("/metrics").body;
    let families = families(&text);
    for name in &names {
        let found = families.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .and_then(|base| families.get(base))
                    .is_some_and(|f| f.kind == "histogram")
            });
        assert!(
            found,
            "the dashboard uses {name}, which /metrics does not have:\n{text}"
        );
    }
}

/// The JSON log lines of this run that contain `needle`, parsed.
fn json_lines(w: &Weir, needle: &str) -> Vec<serde_json::Value> {
    w.log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn a_rejected_record_is_logged_with_its_event_id_and_the_request_trace_id() {
    let w = Weir::start(&format!(
        "{}\n[log]\nformat = \"json\"\n",
        config("default_event_type = \"t\"")
    ));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = concat!(
        r#"{"event_id":"good-1","payload":1}"#,
        "\n",
        r#"{"event_id":"bad-2","payload":1,"timestamp":"yesterday"}"#,
    );
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let r = w.post_with(
        "/v1/topics/events/events",
        &[("traceparent", &traceparent), ("X-Request-Id", "req-7")],
        body.as_bytes(),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_timestamp"));
    // An invalid traceparent is ignored; the rejection is still logged.
    let r = w.post_with(
        "/v1/topics/events/events",
        &[("traceparent", "00-not-a-trace-01")],
        br#"{"event_id":"bad-3","payload":1,"timestamp":"never"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(w.wait_log("bad-3", 1, std::time::Duration::from_secs(5)));

    let lines = json_lines(&w, "ingest rejected");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["event_id"], "bad-2", "{line}");
    assert_eq!(line["fields"]["record"], 2, "{line}");
    assert_eq!(line["fields"]["code"], "invalid_timestamp", "{line}");
    assert_eq!(line["fields"]["message"], "ingest rejected", "{line}");
    assert!(
        line["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("yesterday")),
        "{line}"
    );
    assert_eq!(line["span"]["trace_id"], trace, "{line}");
    assert_eq!(line["span"]["request_id"], "req-7", "{line}");
    let other = &lines[1];
    assert_eq!(other["fields"]["event_id"], "bad-3", "{other}");
    assert!(
        other.get("span").is_none(),
        "no span without a valid header: {other}"
    );
    // The start-up lines are JSON too.
    assert_eq!(json_lines(&w, "weir listening").len(), 1);
}

#[test]
fn a_client_sending_bad_records_fast_cannot_flood_the_log() {
    let w = Weir::start(&format!(
        "{}\n[log]\nformat = \"json\"\n",
        config("default_event_type = \"t\"")
    ));
    let sent = 300;
    let started = std::time::Instant::now();
    for i in 0..sent {
        let body = format!(r#"{{"event_id":"bad-{i}","payload":1,"timestamp":"never"}}"#);
        let r = w.post("/v1/topics/events/events", &body);
        assert_eq!(r.status, 400);
    }
    let seconds = started.elapsed().as_secs() + 1;
    // One more after the second has turned: it is at info and counts the demoted ones.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = w.post(
        "/v1/topics/events/events",
        r#"{"event_id":"late","payload":1,"timestamp":"never"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(w.wait_log("\"late\"", 1, std::time::Duration::from_secs(5)));
    let lines = json_lines(&w, "ingest rejected");
    let info = lines.len() - 1;
    // 20 a second at info, in each wall-clock second the requests touched.
    let info_max = usize::try_from(20 * (seconds + 1)).unwrap();
    assert!(
        (20..=info_max).contains(&info) && info < 300,
        "{info} info lines for {sent} rejections in {seconds} s"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["fields"]["event_id"], "late", "{last}");
    assert!(last["fields"]["demoted"].as_u64().unwrap() > 0, "{last}");
    let demoted: u64 = lines
        .iter()
        .map(|l| l["fields"]["demoted"].as_u64().unwrap())
        .sum();
    assert_eq!(
        u64::try_from(info).unwrap() + demoted,
        sent,
        "every rejection is either a line or counted in the next one"
    );
}
