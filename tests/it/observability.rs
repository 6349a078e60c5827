//! /metrics, /healthz and /readyz.

use crate::util::{Weir, config, config_with};

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
    // have held the slot when `held` connected, and been counted too.
    let text = w.get("/metrics").body;
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
