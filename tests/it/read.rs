//! Reading back what was written: topic listings and pulls of one partition.

use crate::util::{Weir, config};

#[test]
fn topics_and_pull_show_what_was_written() {
    let w = Weir::start(&config(
        "wrap = true\ndefault_event_type = \"t\"\nkey_field = \"/payload/k\"",
    ));
    let body: String = (0..50)
        .map(|i| format!("{{\"k\":\"key-{}\",\"i\":{i}}}\n", i % 5))
        .collect();
    let r = w.post("/v1/topics/events/events", &body);
    assert_eq!(r.json()["accepted"], 50, "{}", r.body);

    let all = w.get("/v1/topics").json();
    let t = &all["topics"][0];
    assert_eq!(t["name"], "events");
    assert_eq!(t["partitions"], 4);
    assert_eq!(t["start_offsets"], serde_json::json!([0, 0, 0, 0]));
    let ends: i64 = t["end_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(ends, 50);
    assert!(t["bytes"].as_u64().unwrap() > 50 * 20);
    assert_eq!(w.get("/v1/topics/events").json(), *t);

    let mut seen = Vec::new();
    for p in 0..4 {
        let records = w.read_all("events", p);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r["offset"], i as i64, "dense offsets from 0");
            assert_eq!(r["partition"], p);
            let key = r["key"].as_str().unwrap();
            assert_eq!(
                weir::log::partitioner::partition_for_key(key.as_bytes(), 4),
                p
            );
            assert_eq!(r["event"]["payload"]["k"], key);
            seen.push(r["event"]["payload"]["i"].as_i64().unwrap());
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());

    // Limits and the end of the partition.
    let p0 = w.read_all("events", 0).len() as i64;
    let r = w
        .get("/v1/topics/events/events?partition=0&offset=0&limit=2")
        .json();
    assert_eq!(r["events"].as_array().unwrap().len(), 2.min(p0 as usize));
    assert_eq!(r["next_offset"], 2.min(p0));
    let r = w
        .get(&format!("/v1/topics/events/events?partition=0&offset={p0}"))
        .json();
    assert_eq!(r["events"], serde_json::json!([]));
    assert_eq!(r["next_offset"], p0);
}

#[test]
fn bad_reads_are_named() {
    let w = Weir::start(&config(""));
    let r = w.get("/v1/topics/events/events?partition=0&offset=5");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "offset_out_of_range"),
        "{}",
        r.body
    );
    assert_eq!(r.json()["error"]["start_offset"], 0);
    assert_eq!(r.json()["error"]["end_offset"], 0);
    let r = w.get("/v1/topics/events/events?partition=9");
    assert_eq!((r.status, r.code().as_str()), (404, "unknown_partition"));
    let r = w.get("/v1/topics/events/events?partition=0&limit=0");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_parameter"));
    let r = w.get("/v1/topics/events/events?partition=0&bogus=1");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_parameter"));
    let r = w.get("/v1/topics/missing");
    assert_eq!((r.status, r.code().as_str()), (404, "unknown_topic"));
    let r = w.get("/v1/nothing/here");
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
}
