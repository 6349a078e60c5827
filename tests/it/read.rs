//! Reading back what was written: topic listings and pulls of one partition.

use crate::util::{Weir, config, now_ms};

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

/// The first offset whose event time is at or after `t`, by brute force; `len` if none.
fn first_at_or_after(times: &[i64], t: i64) -> usize {
    times.iter().position(|&x| x >= t).unwrap_or(times.len())
}

#[test]
fn from_time_finds_the_first_offset_at_or_after_the_time_across_segments() {
    let mut w = Weir::start(&config(
        "wrap = true\ndefault_event_type = \"t\"\nkey_field = \"/payload/k\"\ntimestamp_field = \"/t\"\nsegment_size = \"1KiB\"",
    ));
    let p = weir::log::partitioner::partition_for_key(b"same", 4);
    // Mostly rising event times with late and early outliers, one request (one batch) each.
    let base = now_ms() - 3_600_000;
    let times: Vec<i64> = (0..40i64)
        .map(|i| match i % 7 {
            3 => base + i * 1000 + 30_000,
            5 => base + i * 1000 - 20_000,
            _ => base + i * 1000,
        })
        .collect();
    for (i, t) in times.iter().enumerate() {
        let r = w.post(
            "/v1/topics/events/events",
            &format!("{{\"k\":\"same\",\"t\":{t},\"i\":{i}}}"),
        );
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let dir = w.data_dir().join(format!("topics/events/{p}"));
    let sealed = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".timeindex")
        })
        .count();
    assert!(
        sealed >= 3,
        "expected several sealed segments, found {sealed} time indexes"
    );

    let check = |w: &Weir| {
        let mut targets: Vec<i64> = times.iter().flat_map(|&t| [t - 1, t, t + 1]).collect();
        targets.extend([base - 100_000, base + 1_000_000]);
        for t in targets {
            let want = first_at_or_after(&times, t);
            let r = w.get(&format!(
                "/v1/topics/events/events?partition={p}&from_time={t}&limit=1"
            ));
            assert_eq!(r.status, 200, "{}", r.body);
            let j = r.json();
            if want < times.len() {
                assert_eq!(j["events"][0]["offset"], want as i64, "from_time={t}");
                assert_eq!(j["next_offset"], want as i64 + 1);
            } else {
                assert_eq!(
                    j["events"],
                    serde_json::json!([]),
                    "from_time={t} past the end"
                );
                assert_eq!(j["next_offset"], times.len() as i64);
            }
        }
    };
    check(&w);
    // RFC 3339 names the same instant.
    let t = times[10];
    let text = weir::event::rfc3339_ms_string(t);
    let r = w
        .get(&format!(
            "/v1/topics/events/events?partition={p}&from_time={text}&limit=1"
        ))
        .json();
    assert_eq!(
        r["events"][0]["offset"],
        first_at_or_after(&times, t) as i64
    );
    // After a restart the active segment's time index is rebuilt from its file.
    w.stop();
    w.restart();
    check(&w);
    let r = w.get(&format!(
        "/v1/topics/events/events?partition={p}&from_time=noon"
    ));
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_parameter"));
    let r = w.get(&format!(
        "/v1/topics/events/events?partition={p}&from_time=1&offset=0"
    ));
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_parameter"));
}

#[test]
fn cursor_reads_return_every_event_once_spread_over_partitions() {
    let w = Weir::start(&config(
        "wrap = true\ndefault_event_type = \"t\"\nkey_field = \"/payload/k\"",
    ));
    let body: String = (0..200)
        .map(|i| format!("{{\"k\":\"key-{i}\",\"i\":{i}}}\n"))
        .collect();
    assert_eq!(w.post("/v1/topics/events/events", &body).status, 202);

    // A small limit is shared fairly: every partition has data, each gives 2.
    let r = w
        .get("/v1/topics/events/events?cursor=earliest&limit=8")
        .json();
    let mut per = [0; 4];
    for e in r["events"].as_array().unwrap() {
        per[e["partition"].as_u64().unwrap() as usize] += 1;
    }
    assert_eq!(per, [2, 2, 2, 2], "{r}");
    assert_eq!(r["next_cursor"], "0-2.1-2.2-2.3-2");
    assert!(r.get("next_offset").is_none());

    // No cursor means earliest; pages resume from next_cursor until nothing is left.
    let mut seen = std::collections::BTreeSet::new();
    let mut payloads = Vec::new();
    let mut url = "/v1/topics/events/events?limit=7".to_string();
    loop {
        let r = w.get(&url);
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        let events = j["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        assert!(events.len() <= 7);
        for e in events {
            let at = (
                e["partition"].as_i64().unwrap(),
                e["offset"].as_i64().unwrap(),
            );
            assert!(seen.insert(at), "{at:?} twice");
            payloads.push(e["event"]["payload"]["i"].as_i64().unwrap());
        }
        let cursor = j["next_cursor"].as_str().unwrap();
        url = format!("/v1/topics/events/events?limit=7&cursor={cursor}");
    }
    payloads.sort_unstable();
    assert_eq!(payloads, (0..200).collect::<Vec<_>>());
    let ends = w.get("/v1/topics/events").json()["end_offsets"].clone();
    let last = url.rsplit("cursor=").next().unwrap().to_string();
    let want: Vec<String> = (0..4).map(|p| format!("{p}-{}", ends[p])).collect();
    assert_eq!(last, want.join("."));
    // `latest` starts at the end.
    let r = w.get("/v1/topics/events/events?cursor=latest").json();
    assert_eq!(r["events"], serde_json::json!([]));
    assert_eq!(r["next_cursor"].as_str().unwrap(), last);
}

#[test]
fn bad_cursors_are_400_and_out_of_range_names_the_bounds() {
    let w = Weir::start(&config(""));
    for bad in ["0-1.", "x", "0-1.0-2", "9-0", "0-a", "-1-0"] {
        let r = w.get(&format!("/v1/topics/events/events?cursor={bad}"));
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_cursor"),
            "{bad}: {}",
            r.body
        );
    }
    let r = w.get("/v1/topics/events/events?cursor=9-0");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("partition 9"),
        "{}",
        r.body
    );
    let r = w.get("/v1/topics/events/events?cursor=0-0.2-7");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "offset_out_of_range"),
        "{}",
        r.body
    );
    let e = &r.json()["error"];
    assert_eq!(
        (
            e["partition"].as_i64(),
            e["start_offset"].as_i64(),
            e["end_offset"].as_i64()
        ),
        (Some(2), Some(0), Some(0))
    );
    let r = w.get("/v1/topics/events/events?partition=0&cursor=earliest");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_parameter"));
    let r = w.get("/v1/topics/events/events?offset=3");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_parameter"));
    let r = w.get("/v1/topics/events/events?wait_ms=3600000");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_parameter"));
}

#[test]
fn wait_ms_returns_when_an_append_lands_or_after_the_wait() {
    let w = Weir::start(&config("wrap = true\ndefault_event_type = \"t\""));
    // Nothing arrives: empty after about the wait.
    let started = std::time::Instant::now();
    let r = w.get("/v1/topics/events/events?partition=0&offset=0&wait_ms=600");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["events"], serde_json::json!([]));
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );

    // An append during the wait answers it with the event, long before the wait is up.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| weir::log::partitioner::partition_for_key(k.as_bytes(), 4) == 1)
        .unwrap();
    for url in [
        "/v1/topics/events/events?partition=1&offset=0&wait_ms=20000",
        "/v1/topics/events/events?cursor=latest&wait_ms=20000",
    ] {
        let addr = w.addr.clone();
        let path = url.to_string();
        let started = std::time::Instant::now();
        let waiter =
            std::thread::spawn(move || crate::util::request(&addr, "GET", &path, &[], b""));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let r = w.post(&format!("/v1/topics/events/events?key={key}"), r#"{"a":1}"#);
        assert_eq!(r.status, 202);
        assert_eq!(r.json()["offsets"][0]["partition"], 1);
        let r = waiter.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.json()["events"].as_array().unwrap().len(),
            1,
            "{url}: {}",
            r.body
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{url}: {:?}",
            started.elapsed()
        );
    }
}
