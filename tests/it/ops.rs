//! The operator commands on a stopped data dir: `weir verify`, `weir dump` and
//! `weir pipeline reset`, each against what a real weir wrote, and each refused while
//! that weir runs.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::util::{BIN, Weir};

/// Runs the weir binary with `args`; (exit code, stdout, stderr).
fn weir(args: &[&str], path_args: &[&Path]) -> (i32, String, String) {
    let out: Output = Command::new(BIN)
        .args(args)
        .args(path_args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify(data: &Path) -> (i32, String, String) {
    weir(&["verify", "--data-dir"], &[data])
}

/// One topic of two partitions with 1 KiB segments, so a few events seal segments.
const SMALL_SEGMENTS: &str = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "events"
partitions = 2
fsync = "always"
segment_size = "1KiB"
default_event_type = "t"
"#;

/// Posts events with ids `e{i}` and keys `k{i}` for i in `ids` (one request, one batch
/// each).
fn ingest(w: &Weir, ids: std::ops::Range<usize>) {
    for i in ids {
        let body = format!(
            r#"{{"event_id":"e{i}","key":"k{i}","payload":{{"i":{i},"pad":"{}"}}}}"#,
            "x".repeat(100)
        );
        let r = w.post("/v1/topics/events/events", &body);
        assert_eq!(r.status, 202, "{}", r.body);
    }
}

/// The `.log` files of a partition, oldest first.
fn segments(data: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
    let dir = data.join("topics").join(topic).join(partition.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

#[test]
fn verify_passes_on_a_clean_dir_and_names_the_file_and_byte_of_a_flipped_bit() {
    let mut w = Weir::start(SMALL_SEGMENTS);
    ingest(&w, 0..40);
    let data = w.data_dir();
    let (code, _, err) = verify(&data);
    assert_eq!(code, 1, "verify must refuse while weir runs");
    assert!(err.contains("in use by a running weir"), "{err}");

    // After kill -9: nothing is wrong, the active segments' indexes are not checked.
    w.kill9();
    let (code, out, err) = verify(&data);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("did not stop cleanly"), "{out}");
    // A write the kill cut short at the end of the last segment's batches (in the space
    // allocated ahead, zeros after it): noted, not a problem.
    let torn = |data: &Path| {
        let last = segments(data, "events", 0).pop().unwrap();
        let first = segments(data, "events", 0)[0].clone();
        let head = std::fs::read(first).unwrap()[..30].to_vec();
        let bytes = std::fs::read(&last).unwrap();
        let mut end = 0;
        while let Ok(h) = weir::log::batch::check_batch(&bytes[end..], 1 << 30) {
            end += h.total_len();
        }
        let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
        f.write_all_at(&head, end as u64).unwrap();
        (last, end as u64)
    };
    let (last, len) = torn(&data);
    let (code, out, err) = verify(&data);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("events/0: ok"), "{out}");
    assert!(
        out.contains(&format!(
            "note: {} at byte {len}: torn batch",
            last.display()
        )),
        "{out}"
    );

    w.restart();
    ingest(&w, 40..41);
    assert!(w.stop().success());
    let (code, out, err) = verify(&data);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("did not stop cleanly"), "{out}");
    for p in 0..2 {
        assert!(out.contains(&format!("events/{p}: ok: ")), "{out}");
    }
    assert!(out.contains("__weir_offsets/0: ok"), "{out}");
    assert!(out.contains("41 records"), "{out}");
    assert!(out.contains("no problems"), "{out}");
    // The start cut the torn batch; after a clean stop the same bytes are a problem.
    let (last, len) = torn(&data);
    let (code, out, err) = verify(&data);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("events/0: CORRUPT"), "{out}");
    assert!(out.contains(": torn batch: "), "{out}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len)
        .unwrap();

    // One bit flipped in the middle of a sealed segment (not the partition's last).
    let logs = segments(&data, "events", 0);
    assert!(logs.len() >= 3, "{logs:?}");
    let victim = &logs[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(victim, &bytes).unwrap();
    let (code, out, err) = verify(&data);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("events/0: CORRUPT"), "{out}");
    assert!(out.contains("events/1: ok"), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(&victim.display().to_string()))
        .unwrap_or_else(|| panic!("{} not named in:\n{out}", victim.display()));
    // The batch holding the flipped byte: it starts at or before it.
    let byte: usize = line
        .split(" at byte ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no byte position in {line}"));
    assert!(byte <= at && at - byte < 1024, "{line} (flipped byte {at})");
    assert!(err.contains("corrupt"), "{err}");

    // Indexes of a sealed segment of the other partition: an offset index entry that
    // points inside a batch, a time index cut mid-entry (which also loses its last,
    // maximum, entry).
    let logs = segments(&data, "events", 1);
    let index = logs[1].with_extension("index");
    let mut bytes = std::fs::read(&index).unwrap();
    assert_eq!(
        bytes.len(),
        8,
        "one entry per 4 KiB: the segment's first batch"
    );
    bytes[7] = 1;
    std::fs::write(&index, &bytes).unwrap();
    let timeindex = logs[0].with_extension("timeindex");
    let bytes = std::fs::read(&timeindex).unwrap();
    std::fs::write(&timeindex, &bytes[..bytes.len() - 3]).unwrap();
    let (code, out, _) = verify(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("events/1: CORRUPT"), "{out}");
    for needle in [
        format!(
            "{} at byte 0: entry for offset +0 points at byte 1",
            index.display()
        ),
        format!(
            "{} at byte {}: a partial entry",
            timeindex.display(),
            bytes.len() / 12 * 12 - 12
        ),
        "4 problems".to_string(),
    ] {
        assert!(out.contains(&needle), "{needle} missing from:\n{out}");
    }
}

#[test]
fn dump_prints_the_events_that_were_ingested() {
    let cfg = SMALL_SEGMENTS.replace("partitions = 2", "partitions = 1");
    let mut w = Weir::start(&cfg);
    ingest(&w, 0..12);
    let data = w.data_dir();
    let args = [
        "dump",
        "--topic",
        "events",
        "--partition",
        "0",
        "--data-dir",
    ];
    let (code, _, err) = weir(&args, &[&data]);
    assert_eq!(code, 1);
    assert!(err.contains("in use by a running weir"), "{err}");
    assert!(w.stop().success());

    let (code, out, err) = weir(&args, &[&data]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 12, "{out}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["offset"], i as i64, "{l}");
        assert_eq!(l["partition"], 0, "{l}");
        assert_eq!(l["key"], format!("k{i}"), "{l}");
        assert_eq!(l["event_type"], "t", "{l}");
        assert_eq!(l["headers"]["weir.type"], "t", "{l}");
        assert!(l["headers"]["weir.append"].as_i64().unwrap() > 0, "{l}");
        assert_eq!(l["value"]["event_id"], format!("e{i}"), "{l}");
        assert_eq!(l["value"]["payload"]["i"], i as i64, "{l}");
        assert!(l["timestamp"].as_i64().unwrap() > 0, "{l}");
        assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
    }

    // A window of the partition, spanning segments.
    let mut more = vec!["dump", "--offset", "5", "--limit", "4"];
    more.extend(&args[1..]);
    let (code, out, err) = weir(&more, &[&data]);
    assert_eq!(code, 0, "{err}");
    let offsets: Vec<i64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, [5, 6, 7, 8]);

    let (code, _, err) = weir(
        &["dump", "--topic", "nope", "--partition", "0", "--data-dir"],
        &[&data],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no such topic partition"), "{err}");
}

/// One partition, 1-second windows, two aggregates: closed windows for a few pages.
const PIPELINE: &str = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "clicks"
partitions = 2
fsync = "always"
max_event_age = "36500d"

[[pipeline]]
name = "pages"
source = "clicks"
group_by = ["/payload/page"]
window = { kind = "tumbling", size = "1s" }
max_out_of_orderness = "0s"
allowed_lateness = "0s"
checkpoint_interval = "100ms"

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

/// Every window of pages a, b and c (newest first), as the query API answers them.
fn results(w: &Weir) -> Vec<serde_json::Value> {
    ["a", "b", "c"]
        .iter()
        .map(|page| {
            let r = w.get(&format!("/v1/pipelines/pages/keys/{page}?windows=50"));
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        })
        .collect()
}

/// Polls until the results of pages a, b, c satisfy `pred`.
fn poll_results(w: &Weir, pred: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = results(w);
        if pred(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "gave up at {got:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether every window of every answer is final.
fn all_final(rs: &[serde_json::Value]) -> bool {
    rs.iter().all(|r| {
        r["windows"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["final"] == true))
    })
}

#[test]
fn pipeline_reset_rebuilds_from_the_log_with_equal_results_and_refuses_while_weir_runs() {
    let mut w = Weir::start(PIPELINE);
    let mut events = Vec::new();
    for i in 0..60i64 {
        let page = ["a", "b", "c"][(i % 3) as usize];
        events.push(format!(
            r#"{{"event_type":"click","key":"u{i}","timestamp":{},"payload":{{"page":"{page}","amount":{i}}}}}"#,
            T0 + i * 97
        ));
    }
    let r = w.post("/v1/topics/clicks/events", &events.join("\n"));
    assert_eq!(r.status, 202, "{}", r.body);
    // Later events on both partitions close every window above.
    let closing = (0..8)
        .map(|i| {
            format!(
                r#"{{"event_type":"click","key":"z{i}","timestamp":{},"payload":{{"page":"z","amount":0}}}}"#,
                T0 + 20_000
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(w.post("/v1/topics/clicks/events", &closing).status, 202);
    let before = poll_results(&w, |rs| {
        all_final(rs)
            && rs
                .iter()
                .all(|r| r["windows"].as_array().unwrap().len() == 6)
    });

    let cfg = w.dir.path().join("weir.toml");
    let reset = |name: &str| weir(&["pipeline", "reset", name, "--config"], &[&cfg]);
    let (code, _, err) = reset("pages");
    assert_eq!(code, 1, "reset must refuse while weir runs");
    assert!(err.contains("in use by a running weir"), "{err}");
    assert!(w.stop().success());

    let (code, _, err) = reset("nope");
    assert_eq!(code, 1);
    assert!(
        err.contains("no pipeline \"nope\"") && err.contains("pages"),
        "{err}"
    );
    let (code, out, err) = reset("pages");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed its checkpoint"), "{out}");

    w.restart();
    let after = poll_results(&w, |rs| all_final(rs) && rs == before.as_slice());
    assert_eq!(after, before);
    let log = w.log_text();
    assert!(!log.contains("restored from its checkpoint"), "{log}");
    assert!(log.contains("building the pipeline from the log"), "{log}");
    // The whole log was read again: 60 + 8 records since the start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.log_text().contains("records=68") {
        assert!(Instant::now() < deadline, "{}", w.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Without a reset, the next start restores the checkpoint instead.
    assert!(w.stop().success());
    w.restart();
    poll_results(&w, |rs| rs == before.as_slice());
    assert!(
        w.log_text().contains("restored from its checkpoint"),
        "{}",
        w.log_text()
    );
}
