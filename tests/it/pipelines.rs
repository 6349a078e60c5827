//! Pipelines end to end: events in over HTTP, results out of the query API and the seed's
//! routes. Small windows and explicit timestamps keep them fast and deterministic; answers
//! are polled with a deadline, as the pipeline thread publishes a moment after an append.

use std::time::{Duration, Instant};

use crate::util::{Resp, Weir, now_ms, request};

/// The seed's setup (config.example.toml) with its 4 partitions and 1-minute windows.
const SEED: &str = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "clickstream"
partitions = 4
fsync = "always"
key_field = "/payload/user_id"
wrap = true
timestamp_field = "/timestamp"
default_event_type = "page.click"
max_event_age = "36500d"

[[pipeline]]
name = "page_views"
source = "clickstream"
filter = ["page.click"]
group_by = ["/payload/page_id"]
window = { kind = "tumbling", size = "1m" }
time = "event"
max_out_of_orderness = "5s"
allowed_lateness = "1m"

[[pipeline.aggregate]]
name = "count"
fn = "count"

[[route]]
method = "POST"
path = "/click"
topic = "clickstream"
response = "seed"

[[route]]
method = "GET"
path = "/page/{page_id}/count"
pipeline = "page_views"
key = "page_id"
aggregate = "count"
window = "last_closed"
response = "seed"
"#;

/// One partition, 1-second windows, 1 second of lateness, a filter and two aggregates.
const SMALL: &str = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "clicks"
partitions = 1
fsync = "always"
max_event_age = "36500d"

[[pipeline]]
name = "pages"
source = "clicks"
filter = ["page.*"]
group_by = ["/payload/page"]
window = { kind = "tumbling", size = "1s" }
max_out_of_orderness = "0s"
allowed_lateness = "1s"

[[pipeline.aggregate]]
name = "count"
fn = "count"

[[pipeline.aggregate]]
name = "spent"
fn = "sum"
field = "/payload/amount"
"#;

/// 2024-05-01T12:00:00Z in epoch ms.
const T0: i64 = 1_714_564_800_000;

/// Polls `path` until `pred` holds for its answer; panics with the last one at the deadline.
fn poll(w: &Weir, path: &str, pred: impl Fn(&Resp) -> bool) -> Resp {
    crate::util::poll_within(w, path, Duration::from_secs(10), pred)
}

fn event(event_type: &str, ms: i64, page: &str, amount: i64) -> String {
    format!(
        r#"{{"event_type":"{event_type}","timestamp":{ms},"payload":{{"page":"{page}","amount":{amount}}}}}"#
    )
}

fn post_events(w: &Weir, events: &[String]) {
    let r = w.post("/v1/topics/clicks/events", &events.join("\n"));
    assert_eq!(r.status, 202, "{}", r.body);
}

#[test]
fn seed_routes_count_the_first_minute_once_the_watermark_passed_it() {
    let w = Weir::start(SEED);
    for (user, page, time) in [
        ("u1", "page-7", "2024-05-01 12:00:01"),
        ("u2", "page-7", "2024-05-01 12:00:30"),
        ("u3", "page-7", "2024-05-01 12:00:59.999"),
        ("u4", "page-8", "2024-05-01 12:00:10"),
    ] {
        let body = format!(r#"{{"user_id":"{user}","page_id":"{page}","timestamp":"{time}"}}"#);
        let r = w.post("/click", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json(), serde_json::json!({"status": "accepted"}));
    }
    // Before the watermark passes 12:01 + 1m of lateness the minute is not closed.
    let r = w.get("/page/page-7/count");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"page_id": "page-7", "count": 0})
    );
    // Events two minutes later on every partition move the watermark past the close.
    let later: Vec<String> = (0..20)
        .map(|i| {
            format!(r#"{{"user_id":"w{i}","page_id":"page-9","timestamp":"2024-05-01 12:02:10"}}"#)
        })
        .collect();
    let r = w.post("/click", &later.join("\n"));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = poll(&w, "/page/page-7/count", |r| r.json()["count"] != 0);
    assert_eq!(
        r.json(),
        serde_json::json!({"page_id": "page-7", "count": 3})
    );
    assert_eq!(w.get("/page/page-8/count").json()["count"], 1);
    let none = w.get("/page/nope/count");
    assert_eq!(none.status, 200);
    assert_eq!(
        none.json(),
        serde_json::json!({"page_id": "nope", "count": 0})
    );

    let list = w.get("/v1/pipelines").json();
    let p = &list["pipelines"][0];
    assert_eq!(p["name"], "page_views");
    assert_eq!(p["source"], "clickstream");
    assert_eq!(p["watermark"], "2024-05-01T12:02:05.000Z");
    assert_eq!(p["lag"], 0);
    assert_eq!(p["open_windows"], 1, "{p}");

    let pipe = ["pipeline=\"page_views\""];
    assert_eq!(
        w.metric("weir_pipeline_records_in_total", &pipe),
        Some(24.0)
    );
    assert_eq!(
        w.metric("weir_pipeline_rows_closed_total", &pipe),
        Some(2.0)
    );
    assert_eq!(w.metric("weir_pipeline_lag_records", &pipe), Some(0.0));
    let ready = w.get("/readyz");
    assert_eq!(ready.status, 200, "caught up: {}", ready.body);
}

#[test]
fn key_queries_answer_latest_current_and_last_closed() {
    let w = Weir::start(SMALL);
    post_events(
        &w,
        &[
            event("page.view", T0 + 100, "a", 5),
            event("page.view", T0 + 900, "a", 7),
            event("page.view", T0 + 200, "b", 1),
        ],
    );
    // Open windows are visible while they fill.
    let r = poll(&w, "/v1/pipelines/pages/keys/a", |r| r.status == 200);
    let j = r.json();
    assert_eq!(j["pipeline"], "pages");
    assert_eq!(j["key"], "a");
    assert_eq!(j["window"]["start"], "2024-05-01T12:00:00.000Z");
    assert_eq!(j["window"]["end"], "2024-05-01T12:00:01.000Z");
    assert_eq!(j["window"]["final"], false);
    assert_eq!(j["window"]["complete"], true);
    assert_eq!(
        j["window"]["values"],
        serde_json::json!({"count": 2, "spent": 12})
    );
    let r = w.get("/v1/pipelines/pages/keys/a?window=last_closed");
    assert_eq!(
        (r.status, r.code()),
        (404, "no_window".to_string()),
        "{}",
        r.body
    );
    let r = w.get("/v1/pipelines/pages/keys/a?window=current");
    assert_eq!(
        r.status, 200,
        "the watermark (0.9 s) is in the first window: {}",
        r.body
    );

    // 2.5 s: window 0 closes (end 1 s + 1 s lateness), window 1 is current.
    post_events(
        &w,
        &[
            event("page.view", T0 + 1_500, "a", 1),
            event("page.view", T0 + 2_500, "a", 1),
        ],
    );
    let r = poll(&w, "/v1/pipelines/pages/keys/a?window=last_closed", |r| {
        r.status == 200
    });
    assert_eq!(r.json()["window"]["start"], "2024-05-01T12:00:00.000Z");
    assert_eq!(r.json()["window"]["values"]["count"], 2);
    let r = w.get("/v1/pipelines/pages/keys/a?window=current");
    assert_eq!(
        r.json()["window"]["start"],
        "2024-05-01T12:00:02.000Z",
        "{}",
        r.body
    );
    let r = w.get("/v1/pipelines/pages/keys/a");
    assert_eq!(r.json()["window"]["start"], "2024-05-01T12:00:02.000Z");

    let r = w.get("/v1/pipelines/pages/keys/a?windows=2");
    let starts: Vec<_> = r.json()["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["start"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        starts,
        ["2024-05-01T12:00:02.000Z", "2024-05-01T12:00:01.000Z"]
    );
    let r = w.get(&format!(
        "/v1/pipelines/pages/keys/a?from={}&to=2024-05-01T12:00:02Z",
        T0
    ));
    assert_eq!(
        r.json()["windows"].as_array().unwrap().len(),
        2,
        "{}",
        r.body
    );

    let r = w.get("/v1/pipelines/pages/keys/nope");
    assert_eq!((r.status, r.code()), (404, "no_window".to_string()));
    let r = w.get("/v1/pipelines/nope/keys/a");
    assert_eq!((r.status, r.code()), (404, "unknown_pipeline".to_string()));
    let r = w.get("/v1/pipelines/pages/keys/a?window=soon");
    assert_eq!((r.status, r.code()), (400, "invalid_parameter".to_string()));
    let r = w.get("/v1/pipelines/pages/keys/a?window=latest&windows=2");
    assert_eq!(r.status, 400);
}

#[test]
fn late_events_count_while_the_window_is_open_and_filters_apply() {
    let w = Weir::start(SMALL);
    post_events(
        &w,
        &[
            event("page.view", T0 + 100, "a", 1),
            event("order.paid", T0 + 150, "a", 100),
            event("page.view", T0 + 1_600, "a", 1),
        ],
    );
    // Watermark 1.6 s: window 0 ended but takes late events until 2 s.
    post_events(&w, &[event("page.view", T0 + 500, "a", 1)]);
    poll(&w, "/v1/pipelines/pages/keys/a?windows=2", |r| {
        r.json()["windows"][1]["values"]["count"] == 2
    });
    // Watermark 3.2 s closes windows 0 and 1; an event for window 0 is dropped.
    post_events(&w, &[event("page.view", T0 + 3_200, "a", 1)]);
    poll(&w, "/v1/pipelines/pages/keys/a?window=last_closed", |r| {
        r.json()["window"]["start"] == "2024-05-01T12:00:01.000Z"
    });
    post_events(&w, &[event("page.view", T0 + 700, "a", 1)]);
    post_events(&w, &[event("page.view", T0 + 3_300, "a", 1)]);
    let r = poll(&w, "/v1/pipelines/pages/keys/a", |r| {
        r.json()["window"]["values"]["count"] == 2
    });
    assert_eq!(r.json()["window"]["start"], "2024-05-01T12:00:03.000Z");
    let r = w.get(&format!(
        "/v1/pipelines/pages/keys/a?from={T0}&to={}",
        T0 + 1000
    ));
    let windows = r.json()["windows"].clone();
    assert_eq!(
        windows[0]["values"],
        serde_json::json!({"count": 2, "spent": 2}),
        "one late event counted, the order filtered out, the too-late one dropped"
    );
    assert_eq!(
        w.metric("weir_pipeline_late_events_total", &["pipeline=\"pages\""]),
        Some(1.0)
    );
}

#[test]
fn top_ranks_the_keys_of_a_window() {
    let w = Weir::start(SMALL);
    let mut events = Vec::new();
    for (page, n) in [("a", 1), ("b", 4), ("c", 3), ("d", 4)] {
        for i in 0..n {
            events.push(event("page.view", T0 + 100 + i, page, 10));
        }
    }
    events.push(event("page.view", T0 + 2_100, "a", 50));
    post_events(&w, &events);
    let r = poll(&w, "/v1/pipelines/pages/top?n=3", |r| {
        r.json()["keys"].as_array().is_some_and(|k| !k.is_empty())
    });
    let j = r.json();
    assert_eq!(j["window"]["start"], "2024-05-01T12:00:00.000Z");
    let keys: Vec<_> = j["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key"].as_str().unwrap().to_string(),
                k["window"]["values"]["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys, [("b".into(), 4), ("d".into(), 4), ("c".into(), 3)]);
    let r = w.get("/v1/pipelines/pages/top?window=current&by=spent");
    assert_eq!(r.json()["keys"][0]["key"], "a", "{}", r.body);
    let r = w.get("/v1/pipelines/pages/top?by=nope");
    assert_eq!(r.status, 400);
}

/// Beyond `max_view_rows` the oldest final windows leave memory; a from/to query still
/// answers them, from the result store, also after a restart that loads only the newest.
#[test]
fn windows_beyond_max_view_rows_are_answered_from_the_store() {
    let config = SMALL.replace(
        "allowed_lateness = \"1s\"",
        "allowed_lateness = \"1s\"\nmax_view_rows = 3\ncheckpoint_interval = \"50ms\"",
    );
    let mut w = Weir::start(&config);
    // Key a in windows 0..6 (count i + 1 in window i), key b in window 0; the watermark
    // (8 s) closes windows 0..6.
    let mut events = vec![event("page.view", T0 + 10, "b", 1)];
    for i in 0..7i64 {
        for _ in 0..=i {
            events.push(event("page.view", T0 + i * 1000 + 10, "a", 1));
        }
    }
    events.push(event("page.view", T0 + 8_000, "c", 1));
    post_events(&w, &events);
    let pipe = ["pipeline=\"pages\""];
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.metric("weir_pipeline_view_rows", &pipe) != Some(3.0) {
        assert!(
            Instant::now() < deadline,
            "the view did not shrink to its bound"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let range = format!("/v1/pipelines/pages/keys/a?from={T0}&to={}", T0 + 10_000);
    let counts = |w: &Weir| -> Vec<(i64, bool)> {
        let r = w.get(&range);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["values"]["count"].as_i64().unwrap(), x["final"] == true))
            .collect()
    };
    let all: Vec<(i64, bool)> = (1..=7).rev().map(|c| (c, true)).collect();
    assert_eq!(counts(&w), all, "newest first, the old ones from the store");
    let r = w.get("/v1/pipelines/pages/keys/b?window=latest");
    assert_eq!(r.status, 404, "b's only window left memory: {}", r.body);
    let r = w.get(&format!("/v1/pipelines/pages/keys/b?from={T0}"));
    assert_eq!(r.json()["windows"][0]["values"]["count"], 1, "{}", r.body);
    let r = w.get(&format!(
        "/v1/pipelines/pages/keys/a?from={}&to={}",
        T0 + 2_000,
        T0 + 4_000
    ));
    let starts: Vec<_> = r.json()["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["start"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        starts,
        ["2024-05-01T12:00:03.000Z", "2024-05-01T12:00:02.000Z"]
    );

    w.stop();
    w.restart();
    poll(&w, "/v1/pipelines/pages/keys/c", |r| r.status == 200);
    assert_eq!(counts(&w), all, "after a restart");
    assert!(w.metric("weir_pipeline_view_rows", &pipe).unwrap() <= 3.0);
    // A range reaching too many stored windows is refused with a reason, not cut short.
    let r = w.get("/v1/pipelines/pages/keys/a?from=2024-04-01T00:00:00Z");
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_parameter".to_string()),
        "{}",
        r.body
    );
    assert!(r.body.contains("narrow the range"), "{}", r.body);
}

/// Beyond `max_open_windows` states an event is refused, counted and logged, and its
/// windows answer `complete: false`: never a silent undercount.
#[test]
fn beyond_max_open_windows_windows_are_marked_incomplete_never_undercounted() {
    let config = SMALL.replace(
        "allowed_lateness = \"1s\"",
        "allowed_lateness = \"1s\"\nmax_open_windows = 2",
    );
    let w = Weir::start(&config);
    post_events(
        &w,
        &[
            event("page.view", T0 + 1, "a", 1),
            event("page.view", T0 + 2, "b", 1),
            event("page.view", T0 + 3, "c", 1),
            event("page.view", T0 + 4, "a", 1),
        ],
    );
    let r = poll(&w, "/v1/pipelines/pages/keys/a", |r| {
        r.json()["window"]["values"]["count"] == 2
    });
    assert_eq!(r.json()["window"]["complete"], false, "{}", r.body);
    let pipe = ["pipeline=\"pages\""];
    assert_eq!(
        w.metric("weir_pipeline_refused_events_total", &pipe),
        Some(1.0)
    );
    let r = w.get("/v1/pipelines/pages/keys/c");
    assert_eq!(r.status, 404, "c has no state: {}", r.body);
    // d (2.5 s) closes window 0, incomplete, but came before the close freed its state:
    // refused too. e (5 s) finds room: its window is complete.
    post_events(&w, &[event("page.view", T0 + 2_500, "d", 1)]);
    let r = poll(&w, "/v1/pipelines/pages/keys/b?window=last_closed", |r| {
        r.status == 200
    });
    assert_eq!(r.json()["window"]["complete"], false, "{}", r.body);
    post_events(&w, &[event("page.view", T0 + 5_000, "e", 1)]);
    let r = poll(&w, "/v1/pipelines/pages/keys/e", |r| r.status == 200);
    assert_eq!(r.json()["window"]["complete"], true, "{}", r.body);
    assert!(
        w.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("max_open_windows")),
        "the refusal is logged"
    );
}

/// The result store is derived from the log: deleted or damaged while weir is stopped, it
/// is rebuilt on start, with the same results.
#[test]
fn a_deleted_or_damaged_result_store_is_rebuilt_from_the_log() {
    let config = SMALL.replace(
        "allowed_lateness = \"1s\"",
        "allowed_lateness = \"1s\"\ncheckpoint_interval = \"50ms\"",
    );
    let mut w = Weir::start(&config);
    let mut events = Vec::new();
    for i in 0..400i64 {
        let page = ["a", "b", "c"][(i % 3) as usize];
        events.push(event("page.view", T0 + (i % 4) * 1000 + i, page, i));
    }
    events.push(event("page.view", T0 + 9_000, "z", 1));
    post_events(&w, &events);
    // Windows 0..3 closed and final for every page, plus the open window of z.
    let answers = |w: &Weir| -> Vec<serde_json::Value> {
        ["a", "b", "c"]
            .iter()
            .map(|page| {
                let path = format!(
                    "/v1/pipelines/pages/keys/{page}?from={T0}&to={}",
                    T0 + 4_000
                );
                poll(w, &path, |r| {
                    r.status == 200
                        && r.json()["windows"].as_array().is_some_and(|ws| {
                            ws.len() == 4 && ws.iter().all(|x| x["final"] == true)
                        })
                })
                .json()
            })
            .collect()
    };
    let before = answers(&w);
    let total: i64 = before
        .iter()
        .flat_map(|a| a["windows"].as_array().unwrap().clone())
        .map(|x| x["values"]["count"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 400);
    let store = w.data_dir().join("store");

    w.stop();
    std::fs::remove_dir_all(&store).unwrap();
    w.restart();
    assert_eq!(answers(&w), before, "rebuilt after the store was deleted");

    w.stop();
    // Damage every file of the store: the same length of garbage.
    for entry in walk(&store) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0xA5u8; len]).unwrap();
    }
    w.restart();
    assert_eq!(answers(&w), before, "rebuilt after the store was damaged");
    assert!(
        w.data_dir().join("store.unreadable").is_dir(),
        "the damaged store is kept aside for a look"
    );
    let r = w.get("/readyz");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Counts per (page, minute) of every closed window of `pages`, once all are final.
fn final_counts(w: &Weir, pages: usize, minutes: usize) -> Vec<Vec<i64>> {
    (0..pages)
        .map(|p| {
            let path = format!("/v1/pipelines/page_views/keys/p{p}?windows={minutes}");
            let r = poll(w, &path, |r| {
                r.status == 200
                    && r.json()["windows"].as_array().is_some_and(|ws| {
                        ws.len() == minutes && ws.iter().all(|x| x["final"] == true)
                    })
            });
            let mut counts: Vec<i64> = r.json()["windows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["values"]["count"].as_i64().unwrap())
                .collect();
            counts.reverse();
            counts
        })
        .collect()
}

/// Posts each of `requests` to the seed's `/click`; after the one at `kill_after`,
/// kill -9 and restart, which must resume from a checkpoint.
fn post_clicks_killing_after(w: &mut Weir, requests: &[String], kill_after: usize) {
    for (i, body) in requests.iter().enumerate() {
        let r = w.post("/click", body);
        assert_eq!(r.status, 200, "{}", r.body);
        if i == kill_after {
            // The kill is meant to land after a checkpoint: on a busy machine the
            // pipeline may not have committed its first one yet.
            let deadline = Instant::now() + Duration::from_secs(10);
            while w
                .metric("weir_pipeline_checkpoint_duration_seconds_count", &[])
                .is_none_or(|n| n < 1.0)
            {
                assert!(Instant::now() < deadline, "no checkpoint before the kill");
                std::thread::sleep(Duration::from_millis(10));
            }
            w.kill9();
            w.restart();
            assert!(
                w.log_text()
                    .contains("pipeline restored from its checkpoint"),
                "{}",
                w.log_text()
            );
        }
    }
}

/// Clicks at `time` from 20 users (spread over the partitions): every partition's
/// watermark passes the windows before it.
fn close_clicks_at(w: &Weir, time: &str) {
    let closing: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"user_id":"w{i}","page_id":"end","timestamp":"{time}"}}"#))
        .collect();
    assert_eq!(w.post("/click", &closing.join("\n")).status, 200);
}

#[test]
fn kill9_in_the_middle_of_20000_events_then_counts_are_exact_and_a_replay_agrees() {
    let config = SEED.replace(
        "allowed_lateness = \"1m\"",
        "allowed_lateness = \"1m\"\ncheckpoint_interval = \"50ms\"",
    );
    let mut w = Weir::start(&config);
    let (pages, minutes) = (10usize, 5usize);
    let mut want = vec![vec![0i64; minutes]; pages];
    let requests: Vec<String> = (0..40)
        .map(|r| {
            (0..500)
                .map(|j| {
                    let i = r * 500 + j;
                    // In event-time order, 15 ms apart: five minutes.
                    let ms = T0 + i as i64 * 15;
                    let (page, minute) = (i % pages, ((ms - T0) / 60_000) as usize);
                    want[page][minute] += 1;
                    format!(
                        r#"{{"user_id":"u{}","page_id":"p{page}","timestamp":{ms}}}"#,
                        i % 37
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    // Mid-way: the pipeline is behind and has checkpointed part of it.
    post_clicks_killing_after(&mut w, &requests, 23);
    close_clicks_at(&w, "2024-05-01 12:10:00");
    assert_eq!(final_counts(&w, pages, minutes), want);
    assert_eq!(
        w.get("/page/p3/count").json()["count"],
        want[3][minutes - 1],
        "the seed route answers the last closed minute"
    );

    // Without its store the pipeline replays the log and gets the same results.
    w.stop();
    std::fs::remove_dir_all(w.data_dir().join("store")).unwrap();
    w.restart();
    assert_eq!(final_counts(&w, pages, minutes), want);
}

/// A topic with tiny segments and retention by size, and no pipeline yet.
const RETAINED: &str = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "clicks"
partitions = 1
fsync = "always"
max_event_age = "36500d"
max_event_lead = "2s"
segment_size = "1KiB"
retention_size = "3KiB"
retention_age = "none"
"#;

/// Added to [`RETAINED`] at a restart: a pipeline that never read the deleted data.
pub(crate) const RETAINED_PIPELINE: &str = r#"
[[pipeline]]
name = "pages"
source = "clicks"
filter = ["page.*"]
group_by = ["/payload/page"]
window = { kind = "tumbling", size = "1s" }
max_out_of_orderness = "0s"
allowed_lateness = "0s"
checkpoint_interval = "100ms"

[[pipeline.aggregate]]
name = "count"
fn = "count"
"#;

#[test]
fn records_retention_removed_before_a_pipeline_read_them_are_counted_and_mark_windows() {
    let mut w = Weir::start(RETAINED);
    // An hour ago, one window of key "old": enough single-record batches to fill several
    // 1 KiB segments, so retention deletes the oldest.
    let old_ms = (now_ms() - 3_600_000) / 1000 * 1000;
    for i in 0..40 {
        post_events(&w, &[event("page.view", old_ms + i, "old", 1)]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let start = loop {
        let start = w.get("/v1/topics/clicks").json()["start_offsets"][0]
            .as_i64()
            .unwrap();
        if start > 0 {
            break start;
        }
        assert!(Instant::now() < deadline, "retention did not run");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Past every bound the loss gives (the last append + max_event_lead): a window of
    // key "new" whose events are all in the log.
    std::thread::sleep(Duration::from_secs(3));
    let new_ms = now_ms();
    post_events(
        &w,
        &[
            event("page.view", new_ms, "new", 1),
            event("page.view", new_ms, "new", 1),
        ],
    );
    w.stop();
    w.edit_config(|c| c + RETAINED_PIPELINE);
    w.restart();
    let start_now = w.get("/v1/topics/clicks").json()["start_offsets"][0]
        .as_i64()
        .unwrap();
    assert!(start_now >= start);
    let pipe = ["pipeline=\"pages\""];
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.metric("weir_pipeline_records_lost_total", &pipe) != Some(start_now as f64) {
        assert!(
            Instant::now() < deadline,
            "lost: {:?}, start {start_now}",
            w.metric("weir_pipeline_records_lost_total", &pipe)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let check = |w: &Weir| {
        // The old window closed (the new events moved the watermark past it) and may
        // miss records: not complete. Its count is what survived.
        let old = poll(w, "/v1/pipelines/pages/keys/old?window=last_closed", |r| {
            r.status == 200 && r.json()["window"]["final"] == true
        })
        .json();
        assert_eq!(old["window"]["complete"], false, "{old}");
        assert_eq!(old["window"]["values"]["count"], 40 - start_now, "{old}");
        let new = poll(w, "/v1/pipelines/pages/keys/new", |r| r.status == 200).json();
        assert_eq!(new["window"]["complete"], true, "{new}");
        assert_eq!(new["window"]["values"]["count"], 2, "{new}");
    };
    check(&w);
    // The mark is in the checkpoint: a restart answers the same.
    w.stop();
    w.restart();
    check(&w);
    assert_eq!(
        w.metric("weir_pipeline_records_lost_total", &pipe),
        Some(start_now as f64),
        "the count is kept, not counted again"
    );
}

/// [`SMALL`]'s topic and pipeline with a `late_topic` of two partitions; `{extra}` goes
/// into the pipeline (e.g. a checkpoint interval).
fn with_late(extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "clicks"
partitions = 1
fsync = "always"
max_event_age = "36500d"

[[topic]]
name = "late"
partitions = 2
fsync = "interval"

[[pipeline]]
name = "pages"
source = "clicks"
filter = ["page.*"]
group_by = ["/payload/page"]
window = {{ kind = "tumbling", size = "1s" }}
max_out_of_orderness = "0s"
allowed_lateness = "1s"
late_topic = "late"
{extra}

[[pipeline.aggregate]]
name = "count"
fn = "count"
"#
    )
}

/// An event with a client event_id and a key.
fn keyed_event(id: &str, key: &str, ms: i64, page: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","key":"{key}","event_type":"page.view","timestamp":{ms},"payload":{{"page":"{page}"}}}}"#
    )
}

/// Every record of the `late` topic (both partitions), in partition then offset order.
fn late_records(w: &Weir) -> Vec<serde_json::Value> {
    (0..2).flat_map(|p| w.read_all("late", p)).collect()
}

/// Polls until the `late` topic holds `n` records, and returns them.
fn poll_late(w: &Weir, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = late_records(w);
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "late topic: {got:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The event_ids of late records, sorted.
fn late_ids(records: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r["event"]["event_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Windows 0 and 1 of page `a` closed (watermark 3.2 s), window 0 having taken a late
/// event while still open.
fn close_the_first_windows(w: &Weir) {
    post_events(
        w,
        &[
            keyed_event("on-1", "k", T0 + 100, "a"),
            keyed_event("on-2", "k", T0 + 1_600, "a"),
        ],
    );
    // Late, but window 0 is open until the watermark reaches 2 s: it counts.
    post_events(w, &[keyed_event("open-late", "k", T0 + 500, "a")]);
    post_events(w, &[keyed_event("on-3", "k", T0 + 3_200, "a")]);
    poll(w, "/v1/pipelines/pages/keys/a?window=last_closed", |r| {
        r.json()["window"]["start"] == "2024-05-01T12:00:01.000Z"
    });
}

#[test]
fn late_events_are_appended_to_the_late_topic_as_stored() {
    let w = Weir::start(&with_late(""));
    close_the_first_windows(&w);
    let generated = format!(
        r#"{{"event_type":"page.view","timestamp":{},"payload":{{"page":"b","n":1}}}}"#,
        T0 + 800
    );
    post_events(
        &w,
        &[
            keyed_event("too-late", "k7", T0 + 700, "a"),
            generated,
            // Filtered out before windows are looked at: not late.
            r#"{"event_id":"order","event_type":"order.paid","timestamp":1714564800100,"payload":{"page":"a"}}"#.into(),
        ],
    );
    let got = poll_late(&w, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    let client = got
        .iter()
        .find(|r| r["event"]["event_id"] == "too-late")
        .unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(client["key"], "k7");
    assert_eq!(
        client["partition"],
        weir::log::partitioner::partition_for_key(b"k7", 2),
        "the late topic's own partitioning by key"
    );
    assert_eq!(client["event"]["payload"], serde_json::json!({"page": "a"}));
    assert_eq!(client["event"]["event_type"], "page.view");
    assert_eq!(client["event"]["timestamp"], T0 + 700);
    // The stored envelope of the source, byte for byte.
    let source = w.read_all("clicks", 0);
    let stored = source
        .iter()
        .find(|r| r["event"]["event_id"] == "too-late")
        .unwrap();
    assert_eq!(client["event"], stored["event"]);
    let other = got.iter().find(|r| r != &client).unwrap();
    assert_eq!(
        other["event"]["payload"],
        serde_json::json!({"page": "b", "n": 1})
    );
    let generated_id = source
        .iter()
        .find(|r| r["event"]["payload"]["page"] == "b")
        .unwrap()["event"]["event_id"]
        .clone();
    assert_eq!(other["event"]["event_id"], generated_id);
    assert_eq!(
        w.metric("weir_pipeline_late_appended_total", &["pipeline=\"pages\""]),
        Some(2.0)
    );
    assert_eq!(
        w.metric("weir_pipeline_late_events_total", &["pipeline=\"pages\""]),
        Some(2.0),
        "the event that still counted in its open window is not late"
    );
    let r = w.get(&format!(
        "/v1/pipelines/pages/keys/a?from={T0}&to={}",
        T0 + 1000
    ));
    assert_eq!(
        r.json()["windows"][0]["values"]["count"],
        2,
        "window 0 took the late event while open: {}",
        r.body
    );
}

#[test]
fn kill9_after_the_late_append_and_before_the_checkpoint_appends_nothing_twice() {
    // No checkpoint but the one at a stop: a kill lands between the late appends and
    // the checkpoint that would pass them.
    let config = with_late("checkpoint_interval = \"1h\"").replace(
        "fsync = \"interval\"",
        "fsync = \"interval\"\ndedup_window = \"2h\"",
    );
    let mut w = Weir::start(&config);
    close_the_first_windows(&w);
    w.stop();
    w.restart();
    assert!(
        w.log_text()
            .contains("pipeline restored from its checkpoint"),
        "{}",
        w.log_text()
    );
    post_events(&w, &[keyed_event("late-1", "k1", T0 + 700, "a")]);
    post_events(
        &w,
        &[
            keyed_event("late-2", "k2", T0 + 900, "b"),
            format!(
                r#"{{"event_type":"page.view","timestamp":{},"payload":{{"page":"c"}}}}"#,
                T0 + 10
            ),
        ],
    );
    let before = poll_late(&w, 3);
    w.kill9();
    w.restart();
    assert!(
        w.log_text()
            .contains("pipeline restored from its checkpoint"),
        "{}",
        w.log_text()
    );
    // The replay from the checkpoint appends the three again; the dedup absorbs them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.metric("weir_duplicate_events_total", &["topic=\"late\""]) != Some(3.0) {
        assert!(
            Instant::now() < deadline,
            "replayed late events not absorbed: {:?}\n{}",
            w.metric("weir_duplicate_events_total", &["topic=\"late\""]),
            w.get("/metrics").body
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = late_records(&w);
    assert_eq!(late_ids(&after), late_ids(&before));
    assert_eq!(after.len(), 3, "{after:?}");
    // And on it goes: a new late event is appended once.
    post_events(&w, &[keyed_event("late-3", "k3", T0 + 950, "a")]);
    let got = poll_late(&w, 4);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        late_ids(&got)
            .iter()
            .filter(|id| id.starts_with("late-"))
            .count(),
        3
    );
}

#[test]
fn check_config_refuses_a_late_topic_that_is_the_source_or_has_no_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let text = with_late("")
        .replace("late_topic = \"late\"", "late_topic = \"clicks\"")
        .replace(
            "fsync = \"interval\"",
            "fsync = \"interval\"\ndedup_window = \"0s\"",
        )
        .replace(
            "[[pipeline]]",
            "[[pipeline]]\nname = \"other\"\nsource = \"clicks\"\ngroup_by = [\"/k\"]\n\
             window = { kind = \"tumbling\", size = \"1s\" }\nlate_topic = \"late\"\n\
             output_topic = \"late\"\n[[pipeline.aggregate]]\nname = \"n\"\nfn = \"count\"\n\
             [[pipeline]]",
        );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(crate::util::BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "pipeline[0].late_topic",
        "whose dedup is off",
        "pipeline[0].output_topic",
        "result rows replayed after a crash",
        "pipeline[1].late_topic",
        "the pipeline's own source \"clicks\"",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

#[cfg(feature = "fail")]
#[test]
fn a_late_topic_that_refuses_stalls_the_pipeline_and_nothing_is_lost() {
    // The events are in the log before the pipeline exists; it then starts while the
    // disk is "full" (the first checks of free space say 0 bytes), so its late appends
    // are refused until free space is read again for real.
    let config = with_late("");
    let (topics, pipeline) = config.split_at(config.find("[[pipeline]]").unwrap());
    let mut w = Weir::start(topics);
    post_events(
        &w,
        &[
            keyed_event("on-1", "k", T0 + 100, "a"),
            keyed_event("on-2", "k", T0 + 3_200, "a"),
        ],
    );
    post_events(&w, &[keyed_event("late-1", "k1", T0 + 700, "a")]);
    post_events(&w, &[keyed_event("after", "k", T0 + 3_300, "a")]);
    w.stop();
    w.edit_config(|c| format!("{c}\n{pipeline}"));
    w.restart_with_env(&[("FAILPOINTS", "disk::free=6*return(0)->off")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while w
        .metric(
            "weir_pipeline_late_append_failures_total",
            &["pipeline=\"pages\""],
        )
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(Instant::now() < deadline, "{}", w.get("/metrics").body);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Once free space is read for real, the late event goes out and the pipeline takes
    // the rest of its input.
    let got = poll_late(&w, 1);
    assert_eq!(late_ids(&got), ["late-1"]);
    poll(&w, "/v1/pipelines/pages/keys/a", |r| {
        r.json()["window"]["values"]["count"] == 2
    });
    assert!(
        w.log_text().contains("late_topic refused late events"),
        "{}",
        w.log_text()
    );
    assert!(w.log_text().contains("late_topic accepts appends again"));
}

/// One source partition, 1-second windows and an `output_topic` of two partitions;
/// `{extra}` goes at the end (e.g. a second stage).
fn with_output(extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "clicks"
partitions = 1
fsync = "always"
max_event_age = "36500d"

[[topic]]
name = "counts"
partitions = 2
fsync = "interval"
max_event_age = "36500d"
dedup_window = "1h"

[[pipeline]]
name = "pages"
source = "clicks"
filter = ["page.*"]
group_by = ["/payload/page"]
window = {{ kind = "tumbling", size = "1s" }}
max_out_of_orderness = "0s"
allowed_lateness = "0s"
checkpoint_interval = "50ms"
output_topic = "counts"

[[pipeline.aggregate]]
name = "count"
fn = "count"

[[pipeline.aggregate]]
name = "spent"
fn = "sum"
field = "/payload/amount"
{extra}
"#
    )
}

/// Every record of the `counts` topic, in partition then offset order.
fn output_records(w: &Weir) -> Vec<serde_json::Value> {
    (0..2).flat_map(|p| w.read_all("counts", p)).collect()
}

/// Polls the `counts` topic until `pred` holds for its records.
fn poll_output(w: &Weir, pred: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = output_records(w);
        if pred(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "counts topic: {got:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The versions of row (start, key) in log order, with their payloads.
fn row_versions(
    records: &[serde_json::Value],
    start: &str,
    key: &str,
) -> Vec<(u64, serde_json::Value)> {
    records
        .iter()
        .filter(|r| r["event"]["payload"]["start"] == start && r["event"]["payload"]["key"] == key)
        .map(|r| {
            let p = &r["event"]["payload"];
            (p["version"].as_u64().unwrap(), p.clone())
        })
        .collect()
}

#[test]
fn changed_rows_go_to_the_output_topic_with_versions_and_a_final_row_at_close() {
    let w = Weir::start(&with_output(""));
    post_events(&w, &[event("page.view", T0 + 100, "a", 2)]);
    let w0 = "2024-05-01T12:00:00.000Z";
    let got = poll_output(&w, |r| !row_versions(r, w0, "a").is_empty());
    let first = &row_versions(&got, w0, "a")[0].1;
    assert_eq!(first["final"], false);
    assert_eq!(first["values"], serde_json::json!({"count": 1, "spent": 2}));
    post_events(&w, &[event("page.view", T0 + 300, "a", 3)]);
    poll_output(&w, |r| {
        row_versions(r, w0, "a")
            .iter()
            .any(|(_, p)| p["values"]["count"] == 2)
    });
    // The watermark passes 1 s: window 0 closes, window 2 opens.
    post_events(&w, &[event("page.view", T0 + 2_100, "b", 1)]);
    let got = poll_output(&w, |r| {
        row_versions(r, w0, "a")
            .iter()
            .any(|(_, p)| p["final"] == true)
    });
    let versions = row_versions(&got, w0, "a");
    let numbers: Vec<u64> = versions.iter().map(|(v, _)| *v).collect();
    assert!(
        numbers.windows(2).all(|v| v[0] < v[1]),
        "versions increase in log order: {versions:#?}"
    );
    let (last, finals): (&serde_json::Value, usize) = (
        &versions.last().unwrap().1,
        versions.iter().filter(|(_, p)| p["final"] == true).count(),
    );
    assert_eq!(finals, 1, "{versions:#?}");
    assert_eq!(last["final"], true, "the final row is the last version");
    assert_eq!(last["end"], "2024-05-01T12:00:01.000Z");
    let answer = w.get(&format!(
        "/v1/pipelines/pages/keys/a?from={T0}&to={}",
        T0 + 999
    ));
    assert_eq!(
        last["values"],
        answer.json()["windows"][0]["values"],
        "{}",
        answer.body
    );
    assert_eq!(last["values"], serde_json::json!({"count": 2, "spent": 5}));

    // The envelope: event_type, timestamp = window end, a key that keeps a row's
    // versions in one partition, and the payload's members.
    let record = got.iter().find(|r| r["event"]["payload"] == *last).unwrap();
    let key = format!("{w0}/a");
    assert_eq!(record["key"], key.as_str());
    assert_eq!(
        record["partition"],
        weir::log::partitioner::partition_for_key(key.as_bytes(), 2)
    );
    assert_eq!(record["event"]["event_type"], "pages.result");
    assert_eq!(record["event"]["timestamp"], "2024-05-01T12:00:01.000Z");
    let members: Vec<&String> = record["event"]["payload"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        members,
        ["end", "final", "key", "start", "values", "version"],
        "{record}"
    );
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), got.len(), "one event_id per row version");
    assert!(
        w.metric("weir_pipeline_output_rows_total", &["pipeline=\"pages\""])
            .is_some_and(|n| n >= got.len() as f64),
        "{}",
        w.get("/metrics").body
    );
}

/// A second stage over the output topic: per minute of window end, the sum of the
/// counts of the final rows (the open rows group under "false").
const STAGE2: &str = r#"
[[pipeline]]
name = "minutes"
source = "counts"
filter = ["pages.result"]
group_by = ["/payload/final"]
window = { kind = "tumbling", size = "1m" }
max_out_of_orderness = "0s"
allowed_lateness = "1m"
checkpoint_interval = "50ms"

[[pipeline.aggregate]]
name = "count"
fn = "sum"
field = "/payload/values/count"
"#;

#[test]
fn kill9_mid_stream_each_row_version_once_and_a_second_stage_stays_exact() {
    let mut w = Weir::start(&with_output(STAGE2));
    let pages = ["a", "b", "c"];
    // Three minutes of events, 40 ms apart; per minute of window end, how many.
    let n = 4_500usize;
    let mut per_minute = [0i64; 4];
    let events: Vec<String> = (0..n)
        .map(|i| {
            let ms = T0 + i as i64 * 40;
            // A 1 s window [s, s+1) ends at s+1: its minute is that of the end.
            let end = (ms - T0) / 1000 * 1000 + 1000;
            per_minute[(end / 60_000) as usize] += 1;
            event("page.view", ms, pages[i % 3], 1)
        })
        .collect();
    for (i, chunk) in events.chunks(150).enumerate() {
        post_events(&w, chunk);
        if i == 10 || i == 21 {
            // Past a checkpoint or two, then killed mid-stream.
            std::thread::sleep(Duration::from_millis(200));
            w.kill9();
            w.restart();
            assert!(
                w.log_text()
                    .contains("pipeline restored from its checkpoint"),
                "{}",
                w.log_text()
            );
        }
    }
    // Closes every window of the three minutes, and stage 2's minutes: the rows of these
    // windows end 5 minutes on, and their keys spread over both output partitions (stage
    // 2's watermark is the minimum over its partitions).
    let closing: Vec<String> = (0..8)
        .map(|i| event("page.view", T0 + 300_000, &format!("z{i}"), 1))
        .collect();
    post_events(&w, &closing);
    let windows = (n as i64 * 40 + 999) / 1000;
    let rows = windows as usize * 3;
    let got = poll_output(&w, |r| {
        r.iter()
            .filter(|x| x["event"]["payload"]["final"] == true)
            .count()
            >= rows
    });
    // Each (window, key, version) once; versions increase in log order; one final row
    // per (window, key), the last, equal to the query answer.
    let mut seen = std::collections::HashSet::new();
    let mut rows_by: std::collections::BTreeMap<(String, String), Vec<serde_json::Value>> =
        std::collections::BTreeMap::new();
    for r in &got {
        let p = &r["event"]["payload"];
        let id = (
            p["start"].as_str().unwrap().to_string(),
            p["key"].as_str().unwrap().to_string(),
        );
        assert!(
            seen.insert((id.clone(), p["version"].as_u64().unwrap())),
            "{id:?} version {} twice",
            p["version"]
        );
        rows_by.entry(id).or_default().push(p.clone());
    }
    let mut final_rows = 0;
    for ((start, key), versions) in &rows_by {
        if key.starts_with('z') {
            continue;
        }
        let v: Vec<u64> = versions
            .iter()
            .map(|p| p["version"].as_u64().unwrap())
            .collect();
        assert!(v.windows(2).all(|v| v[0] < v[1]), "{start} {key}: {v:?}");
        let finals = versions.iter().filter(|p| p["final"] == true).count();
        assert_eq!(finals, 1, "{start} {key}: {versions:#?}");
        assert_eq!(versions.last().unwrap()["final"], true, "{start} {key}");
        final_rows += 1;
    }
    assert_eq!(final_rows, rows);
    // The query answers of a few rows, against their last version.
    for ((start, key), versions) in rows_by
        .iter()
        .filter(|((_, k), _)| !k.starts_with('z'))
        .step_by(37)
    {
        let last = versions.last().unwrap();
        let end = last["end"].as_str().unwrap();
        let r = w.get(&format!(
            "/v1/pipelines/pages/keys/{key}?from={start}&to={end}"
        ));
        let windows = r.json()["windows"].as_array().cloned().unwrap_or_default();
        let window = windows
            .iter()
            .find(|x| x["start"] == start.as_str())
            .unwrap_or_else(|| panic!("{start} {key}: {}", r.body));
        assert_eq!(window["final"], true, "{}", r.body);
        assert_eq!(window["values"], last["values"], "{start} {key}");
    }
    // Stage 2: per minute, the sum of the final counts equals the events of the minute.
    for (minute, want) in per_minute.iter().enumerate().filter(|(_, w)| **w > 0) {
        let from = T0 + minute as i64 * 60_000;
        let path = format!(
            "/v1/pipelines/minutes/keys/true?from={from}&to={}",
            from + 59_999
        );
        let r = poll(&w, &path, |r| {
            r.status == 200 && r.json()["windows"][0]["final"] == true
        });
        assert_eq!(
            r.json()["windows"][0]["values"]["count"],
            *want,
            "minute {minute}: {}",
            r.body
        );
    }
}

#[test]
fn check_config_refuses_an_output_topic_that_feeds_the_source_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    // pages: clicks -> counts; back: counts -> clicks.
    let text = with_output(
        "[[pipeline]]\nname = \"back\"\nsource = \"counts\"\ngroup_by = [\"/k\"]\n\
         window = { kind = \"tumbling\", size = \"1s\" }\noutput_topic = \"clicks\"\n\
         [[pipeline.aggregate]]\nname = \"n\"\nfn = \"count\"\n\
         [[pipeline]]\nname = \"own\"\nsource = \"clicks\"\ngroup_by = [\"/k\"]\n\
         window = { kind = \"tumbling\", size = \"1s\" }\noutput_topic = \"clicks\"\n\
         [[pipeline.aggregate]]\nname = \"n\"\nfn = \"count\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(crate::util::BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        r#"pipeline[0].output_topic"#,
        r#"("counts" -> pipeline "back" -> "clicks")"#,
        r#"pipeline[1].output_topic"#,
        r#"("clicks" -> pipeline "pages" -> "counts")"#,
        r#"pipeline[2].output_topic"#,
        "the pipeline's own source \"clicks\"",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

/// Hopping 3-second windows sliding by 1 second: each window merges three panes.
const SKETCHES: &str = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "clicks"
partitions = 1
fsync = "always"
max_event_age = "36500d"

[[pipeline]]
name = "pages"
source = "clicks"
group_by = ["/payload/page"]
window = { kind = "hopping", size = "3s", slide = "1s" }
max_out_of_orderness = "0s"
allowed_lateness = "0s"
checkpoint_interval = "50ms"

[[pipeline.aggregate]]
name = "users"
fn = "count_distinct"
field = "/payload/user"

[[pipeline.aggregate]]
name = "latency"
fn = "quantiles"
field = "/payload/latency_ms"
quantiles = [0.5, 0.9, 0.99]
"#;

/// (event time, page, user as JSON, latency) of the sketch test: 1,500 events over
/// 3 seconds and two pages, some users the number 7 and some the string "7".
fn sketch_events() -> Vec<(i64, &'static str, String, f64)> {
    (0..1500i64)
        .map(|i| {
            let page = if i % 3 == 0 { "b" } else { "a" };
            let user = match i % 100 {
                0 => "7".to_string(),
                1 => "\"7\"".to_string(),
                _ => format!("\"u-{}\"", (i * 7) % 400),
            };
            #[allow(clippy::cast_precision_loss)]
            let latency = ((i * 7919) % 1000) as f64 * 1.5 + 0.25;
            (T0 + i * 2, page, user, latency)
        })
        .collect()
}

#[test]
fn count_distinct_and_quantiles_merge_hopping_panes_and_survive_a_restart() {
    let mut w = Weir::start(SKETCHES);
    let events = sketch_events();
    let mut lines: Vec<String> = events
        .iter()
        .map(|(ms, page, user, latency)| {
            format!(
                r#"{{"event_type":"view","timestamp":{ms},"payload":{{"page":"{page}","user":{user},"latency_ms":{latency}}}}}"#
            )
        })
        .collect();
    // Events without the fields: counted, skipped by both sketches.
    lines.push(format!(
        r#"{{"event_type":"view","timestamp":{},"payload":{{"page":"a"}}}}"#,
        T0 + 2_999
    ));
    // Closes every window holding the first three seconds.
    lines.push(format!(
        r#"{{"event_type":"view","timestamp":{},"payload":{{"page":"z","user":"x","latency_ms":1}}}}"#,
        T0 + 10_000
    ));
    post_events(&w, &lines);
    // Windows starting at T0 - 2s .. T0 + 2s hold some of the first 3 seconds.
    let path = |page: &str| {
        format!(
            "/v1/pipelines/pages/keys/{page}?from={}&to={}",
            T0 - 2_000,
            T0 + 3_000
        )
    };
    let answer = |w: &Weir, page: &str| {
        poll(w, &path(page), |r| {
            r.status == 200
                && r.json()["windows"]
                    .as_array()
                    .is_some_and(|ws| ws.len() == 5 && ws.iter().all(|x| x["final"] == true))
        })
        .json()
    };
    for page in ["a", "b"] {
        let got = answer(&w, page);
        for window in got["windows"].as_array().unwrap() {
            let start = window["start"].as_str().unwrap();
            let start_ms =
                time::OffsetDateTime::parse(start, &time::format_description::well_known::Rfc3339)
                    .unwrap()
                    .unix_timestamp_nanos()
                    / 1_000_000;
            let start_ms = i64::try_from(start_ms).unwrap();
            let mine: Vec<_> = events
                .iter()
                .filter(|(ms, p, _, _)| *p == page && (start_ms..start_ms + 3_000).contains(ms))
                .collect();
            let distinct: std::collections::BTreeSet<&str> =
                mine.iter().map(|(_, _, u, _)| u.as_str()).collect();
            if start_ms == T0 {
                // So the count below takes the string "7" and the number 7 apart.
                assert!(distinct.contains("7") && distinct.contains("\"7\""));
            }
            // Sparse sketches at these sizes are exact once rounded.
            assert_eq!(
                window["values"]["users"],
                distinct.len(),
                "{page} {start}: {window}"
            );
            let mut latencies: Vec<f64> = mine.iter().map(|(_, _, _, l)| *l).collect();
            latencies.sort_by(f64::total_cmp);
            for (q, key) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss
                )]
                let want = latencies[(q * (latencies.len() - 1) as f64).floor() as usize];
                let v = window["values"]["latency"][key].as_f64().unwrap();
                assert!(
                    (v - want).abs() <= want * 0.01,
                    "{page} {start} {key}: {v} for {want}"
                );
            }
        }
    }
    let before = [answer(&w, "a"), answer(&w, "b")];
    let list = w.get("/v1/pipelines").json();
    let bytes = list["pipelines"][0]["state_bytes"].as_u64().unwrap();
    assert!(bytes > 0, "{list}");

    // The final windows come back from the result store after a restart, the open ones
    // from the checkpointed sketches, identical.
    w.stop();
    w.restart();
    assert_eq!([answer(&w, "a"), answer(&w, "b")], before);
    let z = poll(&w, "/v1/pipelines/pages/keys/z?window=current", |r| {
        r.status == 200
    });
    assert_eq!(z.json()["window"]["values"]["users"], 1, "{}", z.body);
    assert_eq!(
        z.json()["window"]["values"]["latency"],
        serde_json::json!({"p50": 1.0, "p90": 1.0, "p99": 1.0})
    );
}

/// `SMALL` with query routes: the seed's shape, and a one-segment placeholder path that
/// the static paths (`/metrics`, `/healthz`, a POST route) must still win over.
const ROUTES: &str = r#"
[[route]]
method = "POST"
path = "/click"
topic = "clicks"
response = "seed"

[[route]]
method = "GET"
path = "/page/{page}/count"
pipeline = "pages"
key = "page"
aggregate = "count"
window = "latest"
response = "seed"

[[route]]
method = "GET"
path = "/{page}"
pipeline = "pages"
key = "page"
window = "latest"
response = "v1"
"#;

#[test]
fn query_paths_decode_keys_and_answer_as_the_router_does() {
    let w = Weir::start(&format!("{SMALL}{ROUTES}"));
    post_events(
        &w,
        &[
            event("page.view", T0 + 100, "a b", 1),
            event("page.view", T0 + 100, "a/b", 1),
            event("page.view", T0 + 100, "ü", 1),
            event("page.view", T0 + 200, "a", 1),
            event("page.view", T0 + 300, "a", 1),
        ],
    );
    let r = poll(&w, "/v1/pipelines/pages/keys/a", |r| {
        r.status == 200 && r.json()["window"]["values"]["count"] == 2
    });
    assert_eq!(r.json()["key"], "a");
    let count = |status: u16, route: &str| {
        let labels = [
            "method=\"GET\"".to_string(),
            format!("route=\"{route}\""),
            format!("status=\"{status}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        w.metric("weir_http_request_duration_seconds_count", &labels)
            .unwrap_or(0.0)
    };
    let keys_200 = count(200, "/v1/pipelines/{name}/keys/{key}");
    // The poll above may have met 404s before the pipeline took the events.
    let keys_404 = count(404, "/v1/pipelines/{name}/keys/{key}");

    // Keys are stored percent-encoded ("a b" is `a%20b`, see DESIGN.md); a path segment
    // is the key's text, itself percent-encoded, and decoded once as the router decodes
    // it: %2F is a '/' within the segment, '+' is a plus.
    for (path, key, n) in [
        ("/page/a/count", "a", 2),
        ("/page/%61/count", "a", 2),
        ("/page/a%2520b/count", "a%20b", 1),
        ("/page/a%252Fb/count", "a%2Fb", 1),
        ("/page/%25C3%25BC/count", "%C3%BC", 1),
        ("/page/a%2Fb/count", "a/b", 0),
        ("/page/a+b/count", "a+b", 0),
        ("/page//count", "", 0),
        // The route takes no parameters; a query string is ignored, as before.
        ("/page/a/count?window=nope&x", "a", 2),
    ] {
        let r = w.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(
            r.json(),
            serde_json::json!({"page": key, "count": n}),
            "{path}"
        );
    }
    for (path, key) in [
        ("/v1/pipelines/pages/keys/a%2520b", "a%20b"),
        ("/v1/pipelines/pages/keys/a%252Fb", "a%2Fb"),
        ("/v1/pipelines/pages/keys/%25C3%25BC", "%C3%BC"),
        ("/v1/pipelines/p%61ges/keys/%61", "a"),
        ("/a%2520b", "a%20b"),
    ] {
        let r = w.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let j = r.json();
        assert_eq!(
            (&j["pipeline"], &j["key"]),
            (&"pages".into(), &key.into()),
            "{path}"
        );
    }
    assert_eq!(
        count(200, "/page/{page}/count"),
        9.0,
        "each answer counted once"
    );
    assert_eq!(
        count(200, "/v1/pipelines/{name}/keys/{key}"),
        keys_200 + 4.0
    );
    assert_eq!(count(200, "/{page}"), 1.0);

    // With a query string, key queries take their parameters (through the router).
    let r = w.get("/v1/pipelines/pages/keys/%25C3%25BC?windows=1");
    assert_eq!(r.json()["key"], "%C3%BC", "{}", r.body);
    assert_eq!(r.json()["windows"].as_array().map(Vec::len), Some(1));
    let r = w.get("/v1/pipelines/pages/keys/a?windows=0");
    assert_eq!((r.status, r.code()), (400, "invalid_parameter".to_string()));

    for (path, status, code) in [
        ("/v1/pipelines/pages/keys/nope", 404, "no_window"),
        ("/v1/pipelines/nope/keys/a", 404, "unknown_pipeline"),
        ("/nope", 404, "no_window"),
        // matchit (the router's matcher, and ours) takes an empty segment for a
        // placeholder inside a path (/page//count is key ""), not at its end.
        ("/v1/pipelines/pages/keys/", 404, "not_found"),
        ("/v1/pipelines/pages/keys/?window=latest", 404, "not_found"),
        ("/page/a/count/", 404, "not_found"),
        ("/v1/pipelines/pages/keys/a/", 404, "not_found"),
    ] {
        let r = w.get(path);
        assert_eq!(
            (r.status, r.code()),
            (status, code.to_string()),
            "{path}: {}",
            r.body
        );
    }
    assert_eq!(
        count(404, "/v1/pipelines/{name}/keys/{key}") - keys_404,
        2.0
    );
    // Not UTF-8 once decoded: refused by the router's path extractor, as before.
    for path in ["/page/%FF/count", "/v1/pipelines/pages/keys/%FF"] {
        assert_eq!(w.get(path).status, 400, "{path}");
    }

    // HEAD is a GET without the body; other methods are not allowed.
    for path in ["/page/a/count", "/v1/pipelines/pages/keys/a"] {
        let get = w.get(path);
        let head = request(&w.addr, "HEAD", path, &[], b"");
        assert_eq!((head.status, head.body.as_str()), (200, ""), "HEAD {path}");
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "HEAD {path}"
        );
        for method in ["POST", "PUT", "DELETE"] {
            let r = request(&w.addr, method, path, &[], b"");
            assert_eq!(
                (r.status, r.code()),
                (405, "method_not_allowed".to_string()),
                "{method} {path}"
            );
        }
    }

    // Static paths win over the one-segment placeholder, as in the router.
    let r = w.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("weir_http_request_duration_seconds"),
        "{}",
        r.body
    );
    assert_eq!(w.get("/healthz").status, 200);
    let r = w.get("/click");
    assert_eq!(
        (r.status, r.code()),
        (405, "method_not_allowed".to_string())
    );
    let r = w.get("/a");
    assert_eq!(r.json()["window"]["values"]["count"], 2, "{}", r.body);
}

/// (start, end, count) of every session of `user`, oldest first, once all are final.
fn final_sessions(w: &Weir, user: &str, n: usize) -> Vec<(String, String, i64)> {
    let path = format!("/v1/pipelines/sessions/keys/{user}?windows=1000");
    let r = poll(w, &path, |r| {
        r.status == 200
            && r.json()["windows"]
                .as_array()
                .is_some_and(|ws| ws.len() == n && ws.iter().all(|x| x["final"] == true))
    });
    let mut out: Vec<(String, String, i64)> = r.json()["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["start"].as_str().unwrap().to_string(),
                x["end"].as_str().unwrap().to_string(),
                x["values"]["count"].as_i64().unwrap(),
            )
        })
        .collect();
    out.reverse();
    out
}

/// Epoch ms as the API writes it (RFC 3339 UTC, milliseconds), within the hour of T0.
fn rfc3339(ms: i64) -> String {
    let d = ms - T0;
    assert!((0..3_600_000).contains(&d), "within the hour after T0");
    format!(
        "2024-05-01T12:{:02}:{:02}.{:03}Z",
        d / 60_000,
        d % 60_000 / 1000,
        d % 1000
    )
}

#[test]
fn session_windows_per_user_stay_exact_across_kill9_and_a_replay() {
    let config = SEED
        .replace(
            "group_by = [\"/payload/page_id\"]\nwindow = { kind = \"tumbling\", size = \"1m\" }",
            "group_by = [\"/payload/user_id\"]\nwindow = { kind = \"session\", gap = \"10s\", max_length = \"20s\" }",
        )
        .replace("name = \"page_views\"", "name = \"sessions\"")
        .replace("pipeline = \"page_views\"", "pipeline = \"sessions\"")
        .replace(
            "allowed_lateness = \"1m\"",
            "allowed_lateness = \"0s\"\ncheckpoint_interval = \"50ms\"",
        );
    assert!(config.contains("kind = \"session\""));
    let mut w = Weir::start(&config);
    let users = 12usize;
    // Per user, (start, last, end, count) in event-time order, the rules in order.
    let mut want: Vec<Vec<(i64, i64, i64, i64)>> = vec![Vec::new(); users];
    let (gap, max) = (10_000i64, 20_000i64);
    let mut lines = Vec::new();
    for i in 0..20_000i64 {
        let ms = T0 + i * 100;
        let u = (i % users as i64) as usize;
        // Each user pauses 15 s (more than the gap) out of every 40 s.
        if ((ms - T0) / 1000 + u as i64 * 3) % 40 >= 25 {
            continue;
        }
        let s = want[u].last_mut().filter(|s| ms < s.2);
        match s {
            Some(s) => {
                s.1 = ms;
                s.2 = (ms + gap).min(s.0 + max);
                s.3 += 1;
            }
            None => want[u].push((ms, ms, ms + gap, 1)),
        }
        lines.push(format!(
            r#"{{"user_id":"u{u}","page_id":"p{}","timestamp":{ms}}}"#,
            i % 7
        ));
    }
    let requests: Vec<String> = lines.chunks(500).map(|c| c.join("\n")).collect();
    post_clicks_killing_after(&mut w, &requests, lines.len() / 1000);
    close_clicks_at(&w, "2024-05-01 12:50:00");
    let want: Vec<Vec<(String, String, i64)>> = want
        .iter()
        .map(|ss| {
            ss.iter()
                .map(|s| (rfc3339(s.0), rfc3339(s.2), s.3))
                .collect()
        })
        .collect();
    assert!(want[0].len() > 10, "{:?}", want[0]);
    assert!(
        want[0]
            .iter()
            .any(|s| s.2 > 1 && s.1 == rfc3339(T0 + 20_000)),
        "max_length splits a session: {:?}",
        want[0]
    );
    for (u, sessions) in want.iter().enumerate() {
        assert_eq!(
            &final_sessions(&w, &format!("u{u}"), sessions.len()),
            sessions,
            "u{u}"
        );
    }
    let r = w.get("/v1/pipelines/sessions/top");
    assert_eq!(r.status, 400, "{}", r.body);

    // Without its store the pipeline replays the log and gets the same sessions.
    w.stop();
    std::fs::remove_dir_all(w.data_dir().join("store")).unwrap();
    w.restart();
    for (u, sessions) in want.iter().enumerate() {
        assert_eq!(
            &final_sessions(&w, &format!("u{u}"), sessions.len()),
            sessions,
            "u{u}"
        );
    }
}

/// Closed rows waiting for a checkpoint are bounded: at the bound the pipeline takes no
/// input until a checkpoint has them, even with a checkpoint interval of an hour. Needs
/// the `fail` feature: only that build reads `WEIR_TEST_PENDING_ROWS_MAX`.
#[cfg(feature = "fail")]
#[test]
fn closed_rows_waiting_for_a_checkpoint_are_bounded_and_nothing_is_lost() {
    let config = SEED
        .replace(
            "window = { kind = \"tumbling\", size = \"1m\" }",
            "window = { kind = \"tumbling\", size = \"1s\" }",
        )
        .replace(
            "allowed_lateness = \"1m\"",
            "allowed_lateness = \"0s\"\ncheckpoint_interval = \"1h\"",
        )
        .replace(
            "max_out_of_orderness = \"5s\"",
            "max_out_of_orderness = \"0s\"",
        );
    let w = Weir::start_with_env(&config, &[("WEIR_TEST_PENDING_ROWS_MAX", "100")]);
    // 40 pages, one event each per second for 30 s: 1,200 rows closed in event-time order.
    let (pages, seconds) = (40i64, 30i64);
    let lines: Vec<String> = (0..seconds * pages)
        .map(|i| {
            let ms = T0 + (i / pages) * 1000 + 500;
            format!(
                r#"{{"user_id":"u{i}","page_id":"p{}","timestamp":{ms}}}"#,
                i % pages
            )
        })
        .collect();
    for chunk in lines.chunks(200) {
        assert_eq!(w.post("/click", &chunk.join("\n")).status, 200);
    }
    close_clicks_at(&w, "2024-05-01 12:50:00");
    // Every page's 30 windows, each with its one event. Rows below the bound wait for
    // the hourly checkpoint; the others are made final by the checkpoints the bound
    // forces: all but the bound (100) and one step's closed rows, once the checkpoint in
    // flight is reported.
    let finals = || {
        let mut finals = 0;
        for page in 0..pages {
            let r = w.get(&format!("/v1/pipelines/page_views/keys/p{page}?windows=40"));
            let windows = r.json()["windows"].as_array().cloned().unwrap_or_default();
            if windows.len() != 30 || windows.iter().any(|x| x["values"]["count"] != 1) {
                return None;
            }
            finals += windows.iter().filter(|x| x["final"] == true).count();
        }
        Some(finals)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        last = finals();
        if last.is_some_and(|n| n >= 1_200 - 400) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        last.is_some_and(|n| (800..=1_200).contains(&n)),
        "final rows: {last:?} of 1,200 (all counts right: {})",
        last.is_some()
    );
    let checkpoints = w
        .metric(
            "weir_pipeline_checkpoint_duration_seconds_count",
            &["pipeline=\"page_views\""],
        )
        .unwrap();
    assert!(checkpoints >= 2.0, "{checkpoints} checkpoints");
}
