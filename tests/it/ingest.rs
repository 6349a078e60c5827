//! POST /v1/topics/{topic}/events: body forms, envelope filling, keys, durability,
//! idempotence and every kind of bad input.

use crate::util::{Weir, config};

fn envelope(id: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"page.click","timestamp":"2026-11-27T10:00:00Z","payload":{{"n":1}}}}"#
    )
}

fn total_end(w: &Weir) -> i64 {
    let t = w.get("/v1/topics/events").json();
    t["end_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum()
}

#[test]
fn body_forms_are_accepted_and_stored_compact() {
    let w = Weir::start(&config("max_event_age = \"36500d\""));
    let one = w.post("/v1/topics/events/events", &envelope("a"));
    assert_eq!(one.status, 202, "{}", one.body);
    assert_eq!(one.json()["accepted"], 1);
    assert!(
        one.header("weir-durability").is_none(),
        "fsync=always is not buffered"
    );

    let array = format!("[{} ,\n {}]", envelope("b"), envelope("c"));
    assert_eq!(
        w.post("/v1/topics/events/events", &array).json()["accepted"],
        2
    );

    let ndjson = format!("{}\n{}\n\n{}", envelope("d"), envelope("e"), envelope("f"));
    let r = w.post_with(
        "/v1/topics/events/events",
        &[("Content-Type", "application/x-ndjson")],
        ndjson.as_bytes(),
    );
    assert_eq!(r.json()["accepted"], 3, "{}", r.body);

    // What curl -d @file sends: newlines stripped, objects back to back, form type.
    let glued = format!("{}{}", envelope("g"), envelope("h"));
    let r = w.post_with(
        "/v1/topics/events/events",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        glued.as_bytes(),
    );
    assert_eq!(r.json()["accepted"], 2, "{}", r.body);
    let r = w.post_with("/v1/topics/events/events", &[], envelope("i").as_bytes());
    assert_eq!(r.status, 202, "no content type is read as JSON: {}", r.body);
    assert_eq!(total_end(&w), 9);

    let pretty = r#"{ "event_id" : "p", "event_type": "x",
        "timestamp": "2026-11-27 10:00:00.5",
        "payload": { "a" : [1, 2], "s": "two  spaces \" \u00e9" } }"#;
    let r = w.post("/v1/topics/events/events", pretty);
    assert_eq!(r.status, 202, "{}", r.body);
    let part = r.json()["offsets"][0]["partition"].as_u64().unwrap();
    let raw = w
        .get(&format!(
            "/v1/topics/events/events?partition={part}&limit=1000"
        ))
        .body;
    let stored = r#"{"event_id":"p","event_type":"x","timestamp":"2026-11-27 10:00:00.5","payload":{"a":[1,2],"s":"two  spaces \" \u00e9"}}"#;
    assert!(
        raw.contains(&format!(r#","event":{stored}}}"#)),
        "stored byte for byte, minified: {raw}"
    );
}

#[test]
fn envelope_is_filled_and_keys_pick_partitions_as_kafka() {
    let w = Weir::start(&config(
        "default_event_type = \"page.click\"\nkey_field = \"/payload/user_id\"\nwrap = true",
    ));
    // Bare object wrapped; key from key_field; type from the default; time = receive time.
    let r = w.post(
        "/v1/topics/events/events",
        r#"{"user_id":"u-42","page_id":"page-7"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let part = r.json()["offsets"][0]["partition"].as_u64().unwrap() as u32;
    assert_eq!(part, weir::log::partitioner::partition_for_key(b"u-42", 4));
    let rec = &w.read_all("events", part)[0];
    assert_eq!(rec["key"], "u-42");
    let ev = &rec["event"];
    assert_eq!(ev["event_type"], "page.click");
    assert_eq!(ev["payload"]["page_id"], "page-7");
    assert_eq!(
        ev["event_id"].as_str().unwrap().len(),
        36,
        "a generated UUID"
    );
    assert!(ev["timestamp"].as_str().unwrap().ends_with('Z'));

    // ?key= beats key_field; the envelope's key beats both; numbers are their JSON text.
    let r = w.post("/v1/topics/events/events?key=k9", r#"{"user_id":"u-1"}"#);
    let p = r.json()["offsets"][0]["partition"].as_u64().unwrap() as u32;
    assert_eq!(p, weir::log::partitioner::partition_for_key(b"k9", 4));
    let r = w.post(
        "/v1/topics/events/events?key=k9",
        r#"{"key":1234,"payload":{"user_id":"u-1"}}"#,
    );
    let p = r.json()["offsets"][0]["partition"].as_u64().unwrap() as u32;
    assert_eq!(p, weir::log::partitioner::partition_for_key(b"1234", 4));
}

#[test]
fn keyless_requests_go_to_one_partition_round_robin() {
    let w = Weir::start(&config("max_event_age = \"36500d\""));
    let mut seen = Vec::new();
    for i in 0..8 {
        let body = format!(
            "{}\n{}",
            envelope(&format!("a{i}")),
            envelope(&format!("b{i}"))
        );
        let r = w.post("/v1/topics/events/events", &body);
        let offsets = r.json()["offsets"].as_array().unwrap().clone();
        assert_eq!(offsets.len(), 1, "one request, one partition: {}", r.body);
        seen.push(offsets[0]["partition"].as_u64().unwrap());
    }
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct,
        [0, 1, 2, 3],
        "round robin over requests: {seen:?}"
    );
}

#[test]
fn buffered_modes_say_so_in_a_header() {
    for mode in ["interval", "never"] {
        let cfg = config("max_event_age = \"36500d\"")
            .replace("fsync = \"always\"", &format!("fsync = \"{mode}\""));
        let w = Weir::start(&cfg);
        let r = w.post("/v1/topics/events/events", &envelope("x"));
        assert_eq!(r.status, 202);
        assert_eq!(r.header("weir-durability"), Some("buffered"), "{mode}");
    }
}

#[test]
fn duplicates_are_absorbed_also_after_a_restart() {
    let mut w = Weir::start(&config("max_event_age = \"36500d\""));
    let body = format!("{}\n{}\n{}", envelope("x1"), envelope("x2"), envelope("x1"));
    let r = w.post("/v1/topics/events/events", &body).json();
    assert_eq!(
        (r["accepted"].as_i64(), r["duplicates"].as_i64()),
        (Some(2), Some(1))
    );
    let r = w.post("/v1/topics/events/events", &envelope("x2")).json();
    assert_eq!(
        (r["accepted"].as_i64(), r["duplicates"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(r["offsets"], serde_json::json!([]));
    w.kill9();
    w.restart();
    let r = w.post(
        "/v1/topics/events/events",
        &format!("{}\n{}", envelope("x1"), envelope("x3")),
    );
    let r = r.json();
    assert_eq!(
        (r["accepted"].as_i64(), r["duplicates"].as_i64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(total_end(&w), 3);
}

#[test]
fn bad_bodies_are_refused_naming_the_record_and_append_nothing() {
    let w = Weir::start(&config("max_event_age = \"1d\"\nmax_event_lead = \"1h\""));
    let good = r#"{"event_type":"t","payload":{}}"#;
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty_body"),
        ("  \n ".into(), "empty_body"),
        ("[]".into(), "empty_body"),
        (format!("[{good}][{good}]"), "malformed_json"),
        ("[1]".into(), "invalid_envelope"),
        ("\"text\"".into(), "invalid_envelope"),
        (
            format!("{good}\n{{\"event_type\":\"t\",\"payload\":{{}}\n{good}"),
            "malformed_json",
        ),
        (
            format!("{good}\n{good}\n{{\"event_type\":\"t\"}}"),
            "missing_payload",
        ),
        (r#"{"payload":{}}"#.into(), "missing_event_type"),
        (
            r#"{"event_type":"t","timestamp":"yesterday","payload":{}}"#.into(),
            "invalid_timestamp",
        ),
        (
            r#"{"event_type":"t","timestamp":"1999-01-01T00:00:00Z","payload":{}}"#.into(),
            "timestamp_out_of_range",
        ),
        (
            r#"{"event_type":"t","key":{"a":1},"payload":{}}"#.into(),
            "invalid_key",
        ),
        (
            format!(
                r#"{{"event_type":"t","key":"{}","payload":{{}}}}"#,
                "k".repeat(5000)
            ),
            "key_too_long",
        ),
        (
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            "invalid_envelope",
        ),
        (
            format!(
                r#"{{"event_type":"t","payload":{}{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            "malformed_json",
        ),
    ];
    for (body, code) in &cases {
        let r = w.post("/v1/topics/events/events", body);
        assert_eq!(r.status, 400, "{code}: {}", r.body);
        assert_eq!(r.code(), *code, "{}", r.body);
    }
    // Positions: record 3 starts on line 3 at byte 2 * (len + 1).
    let body = format!("{good}\n{good}\n{{\"event_type\":\"t\"}}");
    let e = w.post("/v1/topics/events/events", &body).json();
    assert_eq!(e["error"]["record"], 3, "{e}");
    assert_eq!(e["error"]["line"], 3, "{e}");
    assert_eq!(e["error"]["byte"], 2 * (good.len() + 1), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains('3'), "{e}");

    let r = w.post_with(
        "/v1/topics/events/events",
        &[],
        b"{\"event_type\":\"t\",\"payload\":\"\xff\"}",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_utf8"),
        "{}",
        r.body
    );
    assert_eq!(total_end(&w), 0, "nothing appended by any rejected request");
}

#[test]
fn size_type_and_name_checks_come_from_the_headers() {
    let w = Weir::start(&config(""));
    // Declared larger than max_body (1MiB): 413 at once, the body is never sent.
    let r = w.post_with(
        "/v1/topics/events/events",
        &[("Content-Length", "1073741824")],
        b"",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "body_too_large"),
        "{}",
        r.body
    );
    // A chunked body that grows past the bound is cut off too.
    let big = format!(
        "{}{}",
        "{\"event_type\":\"t\",\"payload\":\"",
        "x".repeat(2 << 20)
    );
    let chunk = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let r = w.post_with(
        "/v1/topics/events/events",
        &[("Transfer-Encoding", "chunked")],
        chunk.as_bytes(),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "body_too_large"),
        "{}",
        r.body
    );

    let r = w.post_with(
        "/v1/topics/events/events",
        &[("Content-Type", "text/csv")],
        b"a,b",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_media_type")
    );

    let r = w.post(
        "/v1/topics/nope/events",
        r#"{"event_type":"t","payload":{}}"#,
    );
    assert_eq!((r.status, r.code().as_str()), (404, "unknown_topic"));

    for bad in ["..", "%2e%2e", "a%2Fb", "..%2F..%2Fescape", "%00"] {
        let r = w.post(
            &format!("/v1/topics/{bad}/events"),
            r#"{"event_type":"t","payload":{}}"#,
        );
        assert!(
            r.status == 400 || r.status == 404,
            "{bad}: {} {}",
            r.status,
            r.body
        );
        if r.status == 400 {
            assert_eq!(r.code(), "invalid_topic_name", "{bad}");
        }
    }
    let entries: Vec<_> = std::fs::read_dir(w.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names: Vec<_> = entries
        .iter()
        .map(|n| n.to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["data", "weir.toml"],
        "nothing created beside the data dir"
    );
    let mut topics: Vec<_> = std::fs::read_dir(w.data_dir().join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    topics.sort();
    // The configured topic and weir's own offsets topic; no directory for a bad name.
    assert_eq!(topics, ["__weir_offsets", "events"]);
}

#[test]
fn segments_roll_by_age_as_well_as_size() {
    let w = Weir::start(&config("default_event_type = \"x\"\nsegment_age = \"1s\""));
    let post = || w.post("/v1/topics/events/events?key=k", r#"{"payload":1}"#);
    assert_eq!(post().status, 202);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(post().status, 202);
    let p = weir::log::partitioner::partition_for_key(b"k", 4);
    let dir = w.data_dir().join(format!("topics/events/{p}"));
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".log"))
        .collect();
    logs.sort();
    assert_eq!(
        logs,
        ["00000000000000000000.log", "00000000000000000001.log"]
    );
    let sealed_index = dir.join("00000000000000000000.index");
    assert!(
        sealed_index.exists(),
        "the sealed segment's index was written"
    );
    assert_eq!(
        w.read_all("events", p).len(),
        2,
        "reads cross the segment boundary"
    );
}

#[test]
fn the_rebuilt_dedup_table_keeps_the_newest_ids_within_its_bound() {
    let mut w = Weir::start(&config("default_event_type = \"x\"\nmax_dedup_entries = 2"));
    for id in ["a", "b", "c"] {
        let body = format!(r#"{{"event_id":"{id}","payload":1}}"#);
        assert_eq!(
            w.post("/v1/topics/events/events", &body).json()["accepted"],
            1
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    w.kill9();
    w.restart();
    let post = |id: &str| {
        let body = format!(r#"{{"event_id":"{id}","payload":1}}"#);
        w.post("/v1/topics/events/events", &body).json()
    };
    assert_eq!(post("c")["duplicates"], 1, "newest ids are remembered");
    assert_eq!(post("b")["duplicates"], 1);
    assert_eq!(
        post("a")["accepted"],
        1,
        "the oldest was beyond max_dedup_entries"
    );
    // The gauges that follow appends are set when scraped.
    assert_eq!(
        w.metric("weir_dedup_entries", &["topic=\"events\""]),
        Some(2.0)
    );
    let ends: f64 = (0..4)
        .map(|p| {
            let partition = format!("partition=\"{p}\"");
            let labels = ["topic=\"events\"", partition.as_str()];
            w.metric("weir_partition_end_offset", &labels)
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(ends, 4.0, "a, b, c, then a again");
}

#[test]
fn ingest_below_the_free_space_reserve_gets_507_and_reads_go_on() {
    // More reserve than any test machine has free: the reserve is already reached.
    let cfg = format!(
        "[storage]\nfree_space_reserve = \"1000TiB\"\n{}",
        config("wrap = true\ndefault_event_type = \"t\"")
    );
    let w = Weir::start(&cfg);
    let r = w.post("/v1/topics/events/events", r#"{"a":1}"#);
    assert_eq!(
        (r.status, r.code().as_str()),
        (507, "insufficient_storage"),
        "{}",
        r.body
    );
    let error = &r.json()["error"];
    assert!(error["free_bytes"].as_u64().unwrap() > 0, "{}", r.body);
    assert_eq!(error["free_space_reserve"], 1000u64 << 40);
    assert_eq!(total_end(&w), 0, "a refused request appends nothing");
    assert_eq!(w.get("/v1/topics/events").status, 200, "reads go on");
    let metrics = w.get("/metrics").body;
    assert!(metrics.contains("weir_disk_free_bytes "), "{metrics}");
    assert!(
        metrics.contains("weir_http_refused_total{reason=\"free_space\"} 1"),
        "{metrics}"
    );
}
