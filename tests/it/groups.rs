//! Consumer groups: commits read back with lag, validation, durability across kill -9,
//! and the internal offsets topic staying internal.

use crate::util::{Weir, config};

const OFFSETS: &str = "/v1/groups/readers/offsets/events";

/// Appends `n` events with key `k`; returns their partition.
fn fill(w: &Weir, n: usize) -> usize {
    let body: String = (0..n).map(|i| format!("{{\"payload\":{i}}}\n")).collect();
    assert_eq!(w.post("/v1/topics/events/events?key=k", &body).status, 202);
    weir::log::partitioner::partition_for_key(b"k", 4) as usize
}

fn commit(w: &Weir, partition: usize, offset: i64) -> crate::util::Resp {
    w.put(
        OFFSETS,
        &format!("{{\"offsets\":[{{\"partition\":{partition},\"offset\":{offset}}}]}}"),
    )
}

#[test]
fn a_commit_reads_back_with_its_lag() {
    let w = Weir::start(&config("default_event_type = \"x\""));
    let p = fill(&w, 10);
    let before = w.get(OFFSETS);
    assert_eq!(before.status, 200, "{}", before.body);
    let j = before.json();
    assert_eq!(j["group"], "readers");
    assert_eq!(j["topic"], "events");
    assert_eq!(j["partitions"].as_array().unwrap().len(), 4);
    assert!(j["partitions"][p]["offset"].is_null(), "{j}");
    assert!(j["partitions"][p]["lag"].is_null());
    assert_eq!(j["partitions"][p]["end_offset"], 10);

    let r = commit(&w, p, 4);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["partitions"][p]["offset"], 4);
    assert_eq!(r.json()["partitions"][p]["lag"], 6);
    let j = w.get(OFFSETS).json();
    assert_eq!(j["partitions"][p]["offset"], 4);
    assert_eq!(j["partitions"][p]["lag"], 6);
    let other = (p + 1) % 4;
    assert!(j["partitions"][other]["offset"].is_null());

    // Lag follows the end; the metric shows it.
    fill(&w, 5);
    assert_eq!(w.get(OFFSETS).json()["partitions"][p]["lag"], 11);
    let lag = w.metric(
        "weir_group_lag_records",
        &[
            "group=\"readers\"",
            "topic=\"events\"",
            &format!("partition=\"{p}\""),
        ],
    );
    assert_eq!(lag, Some(11.0));
    let commits = w.metric("weir_group_commits_total", &["group=\"readers\""]);
    assert_eq!(commits, Some(1.0));
    // Committing the end: nothing left to read.
    assert_eq!(commit(&w, p, 15).json()["partitions"][p]["lag"], 0);
    // Another group on the same topic has nothing committed.
    let j = w.get("/v1/groups/others/offsets/events").json();
    assert!(j["partitions"][p]["offset"].is_null());
}

#[test]
fn bad_commits_are_refused_and_named() {
    let w = Weir::start(&config("default_event_type = \"x\""));
    let p = fill(&w, 3);
    let check = |path: &str, body: &str, status: u16, code: &str| {
        let r = w.put(path, body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{body}: {}",
            r.body
        );
        r.json()
    };
    let one = |partition: i64, offset: i64| {
        format!("{{\"offsets\":[{{\"partition\":{partition},\"offset\":{offset}}}]}}")
    };
    check(
        "/v1/groups/g/offsets/nope",
        &one(0, 0),
        404,
        "unknown_topic",
    );
    check(
        "/v1/groups/g/offsets/__weir_offsets",
        &one(0, 0),
        404,
        "unknown_topic",
    );
    check(
        "/v1/groups/bad!name/offsets/events",
        &one(0, 0),
        400,
        "invalid_group_name",
    );
    check(
        "/v1/groups/g/offsets/bad!topic",
        &one(0, 0),
        400,
        "invalid_topic_name",
    );
    check(OFFSETS, "{\"offsets\":", 400, "malformed_json");
    check(OFFSETS, "{\"offset\":[]}", 400, "malformed_json");
    check(OFFSETS, "{\"offsets\":[]}", 400, "invalid_offsets");
    let j = check(OFFSETS, &one(4, 0), 400, "invalid_offsets");
    assert_eq!(j["error"]["entry"], 0);
    check(OFFSETS, &one(-1, 0), 400, "invalid_offsets");
    check(OFFSETS, &one(p as i64, -1), 400, "invalid_offsets");
    let other = (p + 1) % 4;
    let body = format!(
        "{{\"offsets\":[{{\"partition\":{p},\"offset\":3}},{{\"partition\":{other},\"offset\":1}}]}}"
    );
    let j = check(OFFSETS, &body, 400, "invalid_offsets");
    assert_eq!(j["error"]["entry"], 1, "the second entry is named");
    assert_eq!(
        j["error"]["end_offset"], 0,
        "past the end of an empty partition"
    );
    let body = format!(
        "{{\"offsets\":[{{\"partition\":{p},\"offset\":1}},{{\"partition\":{p},\"offset\":2}}]}}"
    );
    let j = check(OFFSETS, &body, 400, "invalid_offsets");
    assert!(j["error"]["message"].as_str().unwrap().contains("twice"));
    // Nothing of a refused commit was stored; the end itself is a valid commit.
    assert!(w.get(OFFSETS).json()["partitions"][p]["offset"].is_null());
    assert_eq!(commit(&w, p, 3).status, 200);
}

#[test]
fn commits_survive_kill9() {
    let mut w = Weir::start(&config("default_event_type = \"x\""));
    let p = fill(&w, 20);
    for offset in [1, 5, 9] {
        assert_eq!(commit(&w, p, offset).status, 200);
    }
    let other = (p + 1) % 4;
    assert_eq!(commit(&w, other, 0).status, 200);
    w.kill9();
    w.restart();
    let j = w.get(OFFSETS).json();
    assert_eq!(j["partitions"][p]["offset"], 9, "the last commit wins: {j}");
    assert_eq!(j["partitions"][p]["lag"], 11);
    assert_eq!(j["partitions"][other]["offset"], 0);
    // And once more after a clean stop.
    assert_eq!(commit(&w, p, 12).status, 200);
    assert!(w.stop().success());
    w.restart();
    assert_eq!(w.get(OFFSETS).json()["partitions"][p]["offset"], 12);
}

#[test]
fn the_offsets_topic_is_internal() {
    let w = Weir::start(&config("default_event_type = \"x\""));
    let r = w.post("/v1/topics/__weir_offsets/events", "{\"payload\":1}");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_topic_name"),
        "{}",
        r.body
    );
    let r = w.post("/v1/topics/__other/events?key=k", "{\"payload\":1}");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_topic_name"));
    let topics = w.get("/v1/topics").json();
    let names: Vec<_> = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["events"]);
    assert_eq!(w.get("/v1/topics/__weir_offsets").status, 404);
}
