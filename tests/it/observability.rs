//! /metrics, /healthz and /readyz.

use crate::util::{Weir, config};

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
    let w = Weir::start(&config("").replace(
        "max_body = \"1MiB\"",
        "max_body = \"1MiB\"\nmax_connections = 1",
    ));
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
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(w.get("/healthz").status, 200, "the slot is free again");
}
