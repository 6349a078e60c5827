//! Server-Sent Events: history, live appends, resuming after Last-Event-ID, the
//! max_streams bound and shutdown with streams open.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::util::{Weir, config, config_with};

const TOPIC: &str = "wrap = true\ndefault_event_type = \"t\"\nkey_field = \"/payload/k\"";
const LONG: Duration = Duration::from_secs(20);

fn post_n(w: &Weir, from: usize, n: usize) {
    let body: String = (from..from + n)
        .map(|i| format!("{{\"k\":\"key-{i}\",\"i\":{i}}}\n"))
        .collect();
    let r = w.post("/v1/topics/events/events", &body);
    assert_eq!(r.status, 202, "{}", r.body);
}

#[test]
fn history_live_appends_and_resume_without_loss_or_duplicates() {
    let w = Weir::start(&config(TOPIC));
    post_n(&w, 0, 20);
    let mut s = w.sse("/v1/topics/events/stream?from=earliest", &[]);
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let history = s.events(20, LONG);
    assert_eq!(history.len(), 20, "history from=earliest");
    // Each event is the pull object; its id is the cursor after it.
    for e in &history {
        let j = e.json();
        let (p, o) = e.at();
        assert_eq!(j["event"]["payload"]["k"], j["key"]);
        let id = e.id.as_deref().expect("an id");
        assert!(id.contains(&format!("{p}-{}", o + 1)), "{id} after {p}-{o}");
        assert_eq!(id.split('.').count(), 4, "{id}");
    }
    // An append made while connected arrives.
    post_n(&w, 20, 5);
    let live = s.events(5, LONG);
    assert_eq!(live.len(), 5, "live appends");
    let mut payloads: Vec<i64> = live
        .iter()
        .map(|e| e.json()["event"]["payload"]["i"].as_i64().unwrap())
        .collect();
    payloads.sort_unstable();
    assert_eq!(payloads, (20..25).collect::<Vec<_>>());
    drop(s);

    // Resume after the 12th event: everything after it arrives once, nothing before it.
    post_n(&w, 25, 5);
    let seen: Vec<_> = history.iter().chain(&live).collect();
    let resume_id = seen[11].id.clone().unwrap();
    let mut s = w.sse("/v1/topics/events/stream", &[("Last-Event-ID", &resume_id)]);
    assert_eq!(s.status, 200);
    let rest = s.events(30 - 12, LONG);
    assert_eq!(rest.len(), 18);
    let mut all: Vec<(i64, i64)> = seen[..12].iter().map(|e| e.at()).collect();
    all.extend(rest.iter().map(|e| e.at()));
    let unique: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(unique.len(), 30, "no duplicates: {all:?}");
    assert!(
        s.events(1, Duration::from_millis(300)).is_empty(),
        "nothing more"
    );
}

#[test]
fn default_start_is_latest_and_bad_starts_are_400() {
    let w = Weir::start(&config(TOPIC));
    post_n(&w, 0, 10);
    let mut s = w.sse("/v1/topics/events/stream", &[]);
    assert_eq!(s.status, 200);
    assert!(
        s.events(1, Duration::from_millis(300)).is_empty(),
        "no history by default"
    );
    post_n(&w, 10, 3);
    let got = s.events(3, LONG);
    let mut payloads: Vec<i64> = got
        .iter()
        .map(|e| e.json()["event"]["payload"]["i"].as_i64().unwrap())
        .collect();
    payloads.sort_unstable();
    assert_eq!(payloads, vec![10, 11, 12]);

    let s = w.sse("/v1/topics/events/stream", &[("Last-Event-ID", "0-1.zz")]);
    assert_eq!(s.status, 400);
    assert_eq!(s.error_body()["error"]["code"], "invalid_cursor");
    let s = w.sse("/v1/topics/events/stream", &[("Last-Event-ID", "0-999")]);
    assert_eq!(s.status, 400);
    let e = s.error_body();
    assert_eq!(e["error"]["code"], "offset_out_of_range");
    assert_eq!(e["error"]["partition"], 0);
    let s = w.sse("/v1/topics/events/stream?from=yesterday", &[]);
    assert_eq!(s.status, 400);
    let s = w.sse("/v1/topics/missing/stream", &[]);
    assert_eq!(s.status, 404);
}

#[test]
fn streams_beyond_max_streams_get_503_with_retry_after() {
    let w = Weir::start(&config_with("max_streams = 2", TOPIC));
    let a = w.sse("/v1/topics/events/stream", &[]);
    let b = w.sse("/v1/topics/events/stream", &[]);
    assert_eq!((a.status, b.status), (200, 200));
    let c = w.sse("/v1/topics/events/stream", &[]);
    assert_eq!(c.status, 503);
    assert_eq!(c.header("retry-after"), Some("1"));
    assert_eq!(c.error_body()["error"]["code"], "overloaded");
    let metrics = w.get("/metrics").body;
    assert!(
        metrics.contains("weir_http_refused_total{reason=\"streams\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_stream_clients{topic=\"events\"} 2"),
        "{metrics}"
    );
}

#[test]
fn shutdown_ends_open_streams_promptly() {
    let mut w = Weir::start(&config_with("shutdown_grace = \"30s\"", TOPIC));
    let mut s = w.sse("/v1/topics/events/stream?from=earliest", &[]);
    assert_eq!(s.status, 200);
    post_n(&w, 0, 2);
    assert_eq!(s.events(2, LONG).len(), 2);
    let started = Instant::now();
    let status = w.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?} for an open stream",
        started.elapsed()
    );
    assert!(s.wait_end(Duration::from_secs(5)), "the stream ended");
}
