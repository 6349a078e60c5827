//! kill -9 while clients ingest: every acknowledged event survives exactly once, offsets
//! stay dense, no torn batch remains; torn tails are cut and reported; fsync errors are
//! never acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::{Weir, config, request};

/// Posts batches of uniquely-id'd events until `stop`, recording the ids of every 202.
fn producer(addr: String, client: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<String> = (0..20).map(|i| format!("c{client}-{seq}-{i}")).collect();
        seq += 1;
        let body: String = ids
            .iter()
            .map(|id| {
                format!("{{\"event_id\":\"{id}\",\"key\":\"{id}\",\"payload\":{{\"v\":1}}}}\n")
            })
            .collect();
        let Ok(r) = std::panic::catch_unwind(|| {
            request(
                &addr,
                "POST",
                "/v1/topics/events/events",
                &[],
                body.as_bytes(),
            )
        }) else {
            return; // the server died mid-request: the outcome is unknown
        };
        if r.status == 202 {
            acked.lock().unwrap().extend(ids);
        }
    }
}

fn check_log(w: &Weir, acked: &[String]) {
    let mut count: HashMap<String, usize> = HashMap::new();
    for p in 0..4 {
        for (i, r) in w.read_all("events", p).iter().enumerate() {
            assert_eq!(
                r["offset"].as_u64(),
                Some(i as u64),
                "dense offsets in partition {p}"
            );
            *count
                .entry(r["event"]["event_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    for id in acked {
        assert_eq!(
            count.get(id),
            Some(&1),
            "acknowledged {id} must be there exactly once"
        );
    }
    assert!(count.values().all(|c| *c == 1), "no event twice");
}

/// Every batch of every segment passes its CRC and the batches tile the file.
fn check_segments(data: &std::path::Path) {
    for p in 0..4 {
        let dir = data.join("topics/events").join(p.to_string());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                let bytes = std::fs::read(&path).unwrap();
                let mut pos = 0;
                while pos < bytes.len() {
                    let h = weir::log::batch::check_batch(&bytes[pos..], 1 << 30)
                        .unwrap_or_else(|e| panic!("{} at {pos}: {e}", path.display()));
                    pos += h.total_len();
                }
            }
        }
    }
}

#[test]
fn kill9_during_concurrent_ingest_loses_no_acknowledged_event() {
    let mut w = Weir::start(&config(
        "segment_size = \"64KiB\"\ndefault_event_type = \"x\"",
    ));
    let acked = Arc::new(Mutex::new(Vec::new()));
    for cycle in 0..4 {
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..4)
            .map(|c| {
                let (addr, stop, acked) = (w.addr.clone(), Arc::clone(&stop), Arc::clone(&acked));
                std::thread::spawn(move || producer(addr, cycle * 10 + c, stop, acked))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400 + 150 * cycle as u64));
        w.kill9();
        stop.store(true, Ordering::Relaxed);
        for p in producers {
            let _ = p.join();
        }
        w.restart();
        let acked_now = acked.lock().unwrap().clone();
        assert!(
            !acked_now.is_empty(),
            "cycle {cycle}: producers got acknowledgements"
        );
        check_log(&w, &acked_now);
        // Only segments after the recovery point were read: sealed ones are trusted.
        let scanned: u64 = w.open_field("scanned_bytes").parse().unwrap();
        let total = w.get("/v1/topics/events").json()["bytes"].as_u64().unwrap();
        assert!(
            scanned <= 4 * (64 << 10) + (1 << 20) && (cycle == 0 || scanned < total),
            "cycle {cycle}: scanned {scanned} of {total} bytes"
        );
    }
    w.stop();
    check_segments(&w.data_dir());
    let rolled = std::fs::read_dir(w.data_dir().join("topics/events/0"))
        .unwrap()
        .count();
    assert!(
        rolled > 3,
        "segments rolled during the test ({rolled} files)"
    );
}

/// A torn write (half a batch, then the zeros of space allocated ahead) is cut on restart,
/// counted and logged, and appends go on after the cut.
#[test]
fn a_torn_tail_is_cut_on_restart_and_reported() {
    let mut w = Weir::start(&config("default_event_type = \"x\""));
    let body: String = (0..30)
        .map(|i| format!("{{\"key\":\"k\",\"payload\":{i}}}\n"))
        .collect();
    assert_eq!(w.post("/v1/topics/events/events", &body).status, 202);
    let p = weir::log::partitioner::partition_for_key(b"k", 4);
    w.kill9();
    let seg = w
        .data_dir()
        .join(format!("topics/events/{p}/00000000000000000000.log"));
    let mut good = std::fs::read(&seg).unwrap();
    let batch_len = weir::log::batch::check_batch(&good, 1 << 30)
        .unwrap()
        .total_len();
    // The segment is allocated ahead of its appends: zeros follow the batch.
    assert!(good.len() > batch_len, "{} bytes", good.len());
    assert!(good[batch_len..].iter().all(|b| *b == 0));
    good.truncate(batch_len);
    // Half of a copy of the batch, in space allocated ahead: a torn write.
    let mut torn = good.clone();
    torn.extend_from_slice(&good[..good.len() / 2]);
    torn.resize(torn.len() + 4096, 0);
    std::fs::write(&seg, &torn).unwrap();
    w.restart();
    let log = w.log_text();
    assert!(log.contains("recovery cut a torn or corrupt tail"), "{log}");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good.len() as u64);
    let metrics = w.get("/metrics").body;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("weir_recovery_truncated_bytes_total")
                && l.contains("topic=\"events\"")
                && l.contains(&format!("partition=\"{p}\""))
        })
        .expect("truncation metric");
    assert!(
        line.ends_with(&format!(" {}", good.len() / 2 + 4096)),
        "{line}"
    );
    assert_eq!(w.read_all("events", p).len(), 30);
    assert_eq!(
        w.post("/v1/topics/events/events", &body).status,
        202,
        "appends go on after the cut"
    );
    assert_eq!(w.read_all("events", p).len(), 60);
}

#[cfg(feature = "fail")]
#[test]
fn a_request_abandoned_while_its_fsync_runs_still_enters_the_dedup_table() {
    use std::io::Write;
    let cfg = config("default_event_type = \"x\"");
    // Every fsync round takes a second: time to hang up while one runs.
    let w = Weir::start_with_env(&cfg, &[("FAILPOINTS", "log::fsync=sleep(1000)")]);
    let body = r#"{"event_id":"abandoned","payload":1}"#;
    let mut s = std::net::TcpStream::connect(&w.addr).unwrap();
    write!(
        s,
        "POST /v1/topics/events/events?key=k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(s);
    // The retry waits for the abandoned append to settle, then is a duplicate of it.
    let r = w.post("/v1/topics/events/events?key=k", body);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        (
            r.json()["accepted"].as_i64(),
            r.json()["duplicates"].as_i64()
        ),
        (Some(0), Some(1)),
        "{}",
        r.body
    );
    let p = weir::log::partitioner::partition_for_key(b"k", 4);
    assert_eq!(w.read_all("events", p).len(), 1);
}
