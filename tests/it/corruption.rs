//! Storage faults, the corruption half: index files damaged while weir is stopped, and
//! bytes flipped inside a batch of a sealed segment while weir is stopped and while it
//! runs. Every read path (by offset, by time, by cursor, SSE, a pipeline) must answer
//! the right records, never the bad batch, and go on after it (docs/reliability.md,
//! "Storage faults: corrupt indexes and segments").

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{BIN, Resp, Weir, now_ms};

/// Generous: a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// One partition, so each request is one batch in offset order.
fn topic_config(segment_size: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "clicks"
partitions = 1
fsync = "always"
segment_size = "{segment_size}"
max_event_age = "36500d"
max_event_lead = "2s"
"#
    )
}

/// A pipeline over `clicks`, added at a restart (so it reads the log from the start):
/// the one the retention-loss test adds.
use crate::pipelines::RETAINED_PIPELINE as PIPELINE;

/// Posts one event (one batch) with event_id `e{i}` at event time `ms`.
fn post(w: &Weir, i: usize, ms: i64, page: &str) {
    let body = format!(
        r#"{{"event_id":"e{i}","event_type":"page.view","timestamp":{ms},"payload":{{"page":"{page}","pad":"{}"}}}}"#,
        "x".repeat(200)
    );
    let r = w.post("/v1/topics/clicks/events", &body);
    assert_eq!(r.status, 202, "{}", r.body);
}

/// The `.log` files of partition 0 of `clicks`, oldest first.
fn segments(data: &Path) -> Vec<PathBuf> {
    let dir = data.join("topics/clicks/0");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// (position, base offset) of each batch of a segment file, from its framing.
fn batches(segment: &Path) -> Vec<(u64, i64)> {
    let bytes = std::fs::read(segment).unwrap();
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 12 <= bytes.len() {
        let base = i64::from_be_bytes(bytes[pos..pos + 8].try_into().unwrap());
        let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        out.push((pos as u64, base));
        pos += 12 + len as usize;
    }
    out
}

/// Where the batch holding `offset` sits: (segment file, byte position).
fn batch_of(data: &Path, offset: i64) -> (PathBuf, u64) {
    for seg in segments(data) {
        if let Some((pos, _)) = batches(&seg).into_iter().find(|(_, b)| *b == offset) {
            return (seg, pos);
        }
    }
    panic!("no batch of offset {offset}");
}

/// XORs the byte at `at` of `path` (a write into the file, as a failing disk would).
fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
}

fn with_ext(segment: &Path, ext: &str) -> PathBuf {
    segment.with_extension(ext)
}

fn offsets(events: &[serde_json::Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["offset"].as_i64().unwrap())
        .collect()
}

/// Every record through cursor reads of a few records at a time.
fn read_by_cursor(w: &Weir) -> Vec<i64> {
    let mut out = Vec::new();
    let mut cursor = "earliest".to_string();
    loop {
        let r = w.get(&format!("/v1/topics/clicks/events?cursor={cursor}&limit=7"));
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        let events = j["events"].as_array().unwrap();
        if events.is_empty() {
            return out;
        }
        out.extend(offsets(events));
        cursor = j["next_cursor"].as_str().unwrap().to_string();
    }
}

/// The first offset at or after event time `ms`.
fn offset_at_time(w: &Weir, ms: i64) -> Option<i64> {
    let r = w.get(&format!(
        "/v1/topics/clicks/events?partition=0&from_time={ms}&limit=1"
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    offsets(r.json()["events"].as_array().unwrap())
        .first()
        .copied()
}

/// Every record of an SSE stream from the start, until the sentinel event `sentinel`
/// (posted once the stream has passed `n` records): nothing after the last record and
/// before the sentinel, nothing twice.
fn read_by_stream(w: &Weir, n: usize, sentinel: usize) -> Vec<i64> {
    let mut sse = w.sse("/v1/topics/clicks/stream?from=earliest", &[]);
    assert_eq!(sse.status, 200);
    let first = sse.events(n, PATIENCE);
    assert_eq!(first.len(), n, "stream gave {} of {n}", first.len());
    post(w, sentinel, now_ms(), "sentinel");
    let next = sse.events(1, PATIENCE);
    assert_eq!(next.len(), 1, "the sentinel");
    let sentinel_event = next[0].json();
    assert_eq!(
        sentinel_event["event"]["event_id"],
        format!("e{sentinel}"),
        "{sentinel_event}"
    );
    first
        .iter()
        .map(|e| e.json()["offset"].as_i64().unwrap())
        .collect()
}

fn verify(data: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["verify", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn poll(w: &Weir, path: &str, pred: impl Fn(&Resp) -> bool) -> Resp {
    crate::util::poll_within(w, path, PATIENCE, pred)
}

fn wait_metric(w: &Weir, name: &str, labels: &[&str], want: f64) {
    let deadline = Instant::now() + PATIENCE;
    while w.metric(name, labels) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?}: {:?}, want {want}",
            w.metric(name, labels)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn indexes_garbled_truncated_zeroed_or_missing_are_rebuilt_at_start_and_reads_stay_right() {
    // 16 KiB segments of ~300-byte batches: a few sealed segments, each with a few index
    // entries. Event i at time t0 + 1000 i, offset i.
    let mut w = Weir::start(&topic_config("16KiB"));
    let t0 = (now_ms() - 3_600_000) / 1000 * 1000;
    let n = 200;
    for i in 0..n {
        post(&w, i, t0 + 1000 * i as i64, "p");
    }
    assert!(w.stop().success());
    let data = w.data_dir();
    let segs = segments(&data);
    assert!(segs.len() >= 4, "{segs:?}");
    let garbage = |len: usize| -> Vec<u8> { (0..len).map(|i| (i * 131 % 251) as u8).collect() };
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as usize;
    let (index0, index1, times1, index2, times2) = (
        with_ext(&segs[0], "index"),
        with_ext(&segs[1], "index"),
        with_ext(&segs[1], "timeindex"),
        with_ext(&segs[2], "index"),
        with_ext(&segs[2], "timeindex"),
    );
    assert!(size(&index0) >= 16, "several entries");
    std::fs::write(&index0, garbage(size(&index0))).unwrap();
    std::fs::write(
        &index1,
        &std::fs::read(&index1).unwrap()[..size(&index1) - 3],
    )
    .unwrap();
    std::fs::write(&times1, vec![0u8; size(&times1)]).unwrap();
    std::fs::remove_file(&index2).unwrap();
    std::fs::write(&times2, b"").unwrap();
    // The active segment's index after a clean stop, its last entry one offset off (a
    // flipped bit): the tail scan used to start there, find the batch's offset wrong and
    // cut the segment, acknowledged records and all.
    let active_index = with_ext(segs.last().unwrap(), "index");
    let mut bytes = std::fs::read(&active_index).unwrap();
    let last = bytes.len() - 8;
    let rel = u32::from_be_bytes(bytes[last..last + 4].try_into().unwrap());
    bytes[last..last + 4].copy_from_slice(&(rel + 1).to_be_bytes());
    std::fs::write(&active_index, &bytes).unwrap();

    w.restart();
    let all = w.read_all("clicks", 0);
    assert_eq!(offsets(&all), (0..n as i64).collect::<Vec<_>>());
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["event"]["event_id"], format!("e{i}"), "{e}");
    }
    // By time, in every segment, on and between event times; by offset from anywhere.
    for i in [0, 1, 37, 60, 61, 99, 120, 150, 199] {
        let at = t0 + 1000 * i as i64;
        assert_eq!(offset_at_time(&w, at), Some(i as i64), "time of {i}");
        assert_eq!(offset_at_time(&w, at - 500), Some(i as i64), "before {i}");
        let r = w.get(&format!(
            "/v1/topics/clicks/events?partition=0&offset={i}&limit=2"
        ));
        assert_eq!(offsets(r.json()["events"].as_array().unwrap())[0], i as i64);
    }
    assert_eq!(offset_at_time(&w, t0 + 1000 * n as i64), None);
    assert_eq!(w.open_field("truncated_bytes"), "0");
    assert!(
        w.wait_log("segment indexes found wrong at start", 4, PATIENCE),
        "{}",
        w.log_text()
    );
    assert_eq!(
        w.metric("weir_index_rebuilds_total", &["topic=\"clicks\""]),
        Some(4.0)
    );
    assert!(w.stop().success());
    let (code, out) = verify(&data);
    assert_eq!(code, 0, "the rebuilt indexes are right: {out}");

    // An entry in the middle that lies passes the open check (it reads the first and
    // last entries only); the read that meets it must not serve from the wrong batch.
    let mut bytes = std::fs::read(&index0).unwrap();
    let rel = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
    bytes[8..12].copy_from_slice(&(rel + 1).to_be_bytes());
    std::fs::write(&index0, &bytes).unwrap();
    w.restart();
    assert_eq!(
        w.metric("weir_index_rebuilds_total", &["topic=\"clicks\""]),
        Some(0.0)
    );
    let from = i64::from(rel + 1);
    let r = w.get(&format!(
        "/v1/topics/clicks/events?partition=0&offset={from}&limit=3"
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let got = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(offsets(&got), vec![from, from + 1, from + 2]);
    assert_eq!(got[0]["event"]["event_id"], format!("e{from}"));
    assert!(
        w.wait_log(
            "offset index entry points at no batch of its offset",
            1,
            PATIENCE
        ),
        "{}",
        w.log_text()
    );
    assert_eq!(
        w.metric("weir_index_rebuilds_total", &["topic=\"clicks\""]),
        Some(1.0)
    );
    assert!(w.stop().success());
    let (code, out) = verify(&data);
    assert_eq!(code, 0, "rebuilt at read time: {out}");
}

#[test]
fn a_bit_flip_in_a_sealed_segment_while_stopped_is_never_served_and_marks_pipeline_windows() {
    let mut w = Weir::start(&topic_config("1KiB"));
    // An hour ago, one window of page "old": single-record batches over several 1 KiB
    // segments. Offset i is event e{i}.
    let old_ms = (now_ms() - 3_600_000) / 1000 * 1000;
    let n = 40;
    for i in 0..n {
        post(&w, i, old_ms + i as i64, "old");
    }
    // Past every bound the loss gives (the next batch's append + max_event_lead): a
    // window of page "new" whose events are all in the log.
    std::thread::sleep(Duration::from_secs(3));
    let new_ms = now_ms();
    post(&w, n, new_ms, "new");
    post(&w, n + 1, new_ms, "new");
    assert!(w.stop().success());
    let data = w.data_dir();
    // Offset 5's batch, in a sealed segment: a byte inside its record flipped.
    let (seg, pos) = batch_of(&data, 5);
    assert_ne!(&seg, segments(&data).last().unwrap(), "sealed");
    flip(&seg, pos + 80);
    let (code, out) = verify(&data);
    assert_ne!(code, 0, "verify reports it: {out}");
    assert!(
        out.contains(&format!("{} at byte {pos}", seg.display())),
        "{out}"
    );

    w.edit_config(|c| c + PIPELINE);
    w.restart();
    let want: Vec<i64> = (0..n as i64 + 2).filter(|o| *o != 5).collect();
    assert_eq!(offsets(&w.read_all("clicks", 0)), want, "by offset");
    assert_eq!(read_by_cursor(&w), want, "by cursor");
    assert_eq!(offset_at_time(&w, old_ms + 5), Some(6), "by time");
    assert_eq!(read_by_stream(&w, want.len(), n + 2), want, "by stream");
    // Counted once, however many readers met it; logged with file and byte.
    assert_eq!(
        w.metric("weir_corrupt_batches_total", &["topic=\"clicks\""]),
        Some(1.0)
    );
    let log = w.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("corrupt batch: not served"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&seg.display().to_string()), "{line}");
    assert!(line.contains(&format!("position={pos}")), "{line}");

    // The pipeline read the log from the start: the record is lost to it, counted, and
    // its window is not complete; the window after it is.
    let pipe = ["pipeline=\"pages\""];
    wait_metric(&w, "weir_pipeline_records_lost_total", &pipe, 1.0);
    let old = poll(&w, "/v1/pipelines/pages/keys/old?window=last_closed", |r| {
        r.status == 200 && r.json()["window"]["final"] == true
    })
    .json();
    assert_eq!(old["window"]["complete"], false, "{old}");
    assert_eq!(old["window"]["values"]["count"], n - 1, "{old}");
    let new = poll(&w, "/v1/pipelines/pages/keys/new", |r| r.status == 200).json();
    assert_eq!(new["window"]["complete"], true, "{new}");
    assert_eq!(new["window"]["values"]["count"], 2, "{new}");
    assert!(w.stop().success());
}

#[test]
fn a_bit_flip_in_a_sealed_segment_while_running_is_never_served_and_weir_restarts() {
    let mut w = Weir::start(&topic_config("1KiB"));
    let t0 = (now_ms() - 600_000) / 1000 * 1000;
    let n = 30;
    for i in 0..n {
        post(&w, i, t0 + 1000 * i as i64, "p");
    }
    let all: Vec<i64> = (0..n as i64).collect();
    // Read once first: the partition keeps the sealed segments' files open.
    assert_eq!(offsets(&w.read_all("clicks", 0)), all);
    let data = w.data_dir();
    // Offset 4's batch, in a sealed segment, gets a wrong length: reads must find the
    // next batch without it.
    let (seg, pos) = batch_of(&data, 4);
    assert_ne!(&seg, segments(&data).last().unwrap(), "sealed");
    flip(&seg, pos + 9);
    let want: Vec<i64> = all.iter().copied().filter(|o| *o != 4).collect();
    assert_eq!(offsets(&w.read_all("clicks", 0)), want, "by offset");
    let r = w.get("/v1/topics/clicks/events?partition=0&offset=4&limit=2");
    assert_eq!(offsets(r.json()["events"].as_array().unwrap()), vec![5, 6]);
    assert_eq!(r.json()["next_offset"], 7);
    assert_eq!(read_by_cursor(&w), want, "by cursor");
    assert_eq!(offset_at_time(&w, t0 + 4000), Some(5), "by time");
    assert_eq!(offset_at_time(&w, t0 + 3000), Some(3), "by time");
    let mut want_stream = want.clone();
    assert_eq!(read_by_stream(&w, want.len(), n), want_stream, "by stream");
    want_stream.push(n as i64);
    assert_eq!(
        w.metric("weir_corrupt_batches_total", &["topic=\"clicks\""]),
        Some(1.0)
    );
    assert_eq!(w.get("/readyz").status, 200);

    // A bit flip in a sealed segment never stops weir from starting; reads skip it again.
    assert!(w.stop().success());
    let (code, out) = verify(&data);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{} at byte {pos}", seg.display())),
        "{out}"
    );
    w.restart();
    assert_eq!(offsets(&w.read_all("clicks", 0)), want_stream);
    assert_eq!(
        w.metric("weir_corrupt_batches_total", &["topic=\"clicks\""]),
        Some(1.0)
    );
    // The dedup table was rebuilt from the log past the bad batch: a client retrying
    // everything gets every readable event back as a duplicate, and the lost one, which
    // is nowhere, appended again.
    let retry: Vec<String> = (0..=n)
        .map(|i| {
            format!(
                r#"{{"event_id":"e{i}","event_type":"page.view","timestamp":{},"payload":{{"page":"p"}}}}"#,
                t0 + 1000 * i as i64
            )
        })
        .collect();
    let r = w.post("/v1/topics/clicks/events", &retry.join("\n"));
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["accepted"], 1, "{}", r.body);
    assert_eq!(r.json()["duplicates"], n, "{}", r.body);
    assert!(w.stop().success());
}
