//! Clock faults: the wall clock of the real binary jumps back an hour or forward a day
//! while producers ingest (`WEIR_TEST_CLOCK_FILE`, the `fail` feature: system wall clock
//! plus an offset the test writes; the monotonic clock does not move). Ingest must keep
//! answering, event-time bounds follow the topic's settings, watermarks never go back,
//! a closed window never changes, every event of the log is counted once (in a window
//! or as late), retention deletes nothing recent, dedup still knows a retried id; and
//! the same after a restart with the jumped clock still in force.
#![cfg(feature = "fail")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::{Weir, now_ms, poll_within, request};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const KEYS: usize = 4;
const PIPELINES: [&str; 2] = ["by_event", "by_ingest"];
/// Window size and allowed lateness of both pipelines (ms).
const SIZE_MS: i64 = 1000;
const LATENESS_MS: i64 = 0;

/// `events` feeds an event-time and an ingest-time pipeline (tumbling 1 s); their late
/// events go to a topic each, so every record of `events` is either in a window or in
/// a late topic. `events` accepts event times 7 days old to 2 hours ahead (the jumps
/// stay inside); `strict` and `clamped` take 1 hour back to 5 minutes ahead, rejecting
/// or clamping. `kept` rolls a segment every few events and deletes them after an hour.
/// `ids` takes only the dedup probes.
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "events"
partitions = 2
fsync = "always"
max_event_age = "7d"
max_event_lead = "2h"

[[topic]]
name = "late_event"
partitions = 1

[[topic]]
name = "late_ingest"
partitions = 1

[[topic]]
name = "strict"
partitions = 1
max_event_age = "1h"
max_event_lead = "5m"
on_bad_time = "reject"

[[topic]]
name = "clamped"
partitions = 1
max_event_age = "1h"
max_event_lead = "5m"
on_bad_time = "clamp"

[[topic]]
name = "kept"
partitions = 1
fsync = "interval"
segment_size = "2KiB"
retention_age = "1h"

[[topic]]
name = "ids"
partitions = 1

[[pipeline]]
name = "by_event"
source = "events"
group_by = ["/payload/k"]
window = { kind = "tumbling", size = "1s" }
time = "event"
max_out_of_orderness = "200ms"
allowed_lateness = "0s"
checkpoint_interval = "100ms"
late_topic = "late_event"

[[pipeline.aggregate]]
name = "count"
fn = "count"

[[pipeline]]
name = "by_ingest"
source = "events"
group_by = ["/payload/k"]
window = { kind = "tumbling", size = "1s" }
time = "ingest"
max_out_of_orderness = "0s"
allowed_lateness = "0s"
checkpoint_interval = "100ms"
late_topic = "late_ingest"

[[pipeline.aggregate]]
name = "count"
fn = "count"
"#;

/// A weir whose wall clock the test sets.
struct Clocked {
    w: Weir,
    /// Holds the offset file; outside the data dir.
    _clock_dir: tempfile::TempDir,
    clock_file: PathBuf,
}

impl Clocked {
    fn start() -> Clocked {
        let clock_dir = tempfile::tempdir().unwrap();
        let clock_file = clock_dir.path().join("offset");
        let w = Weir::start_with_env(
            CONFIG,
            &[("WEIR_TEST_CLOCK_FILE", clock_file.to_str().unwrap())],
        );
        Clocked {
            w,
            _clock_dir: clock_dir,
            clock_file,
        }
    }

    /// Sets weir's wall clock to the system's + `offset_ms` and waits until weir says it
    /// took it.
    fn set_offset(&self, offset_ms: i64) {
        write_offset(&self.clock_file, offset_ms);
        assert!(
            self.w.wait_log(
                &format!("offset_ms={offset_ms}"),
                1,
                Duration::from_secs(30)
            ),
            "weir did not take the clock offset {offset_ms}; log:\n{}",
            self.w.log_text()
        );
    }
}

fn write_offset(path: &Path, offset_ms: i64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, offset_ms.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What the producer had acknowledged.
#[derive(Default)]
struct Acked {
    /// event_id of every accepted event of `events`, with the real time it was sent.
    ids: Vec<(String, i64)>,
    requests: usize,
}

/// A producer thread: keyed NDJSON batches of 1 to 3 events into `events` with the real
/// time as their timestamp and unique event_ids, and a 300-byte event into `kept`, every
/// few ms. Any answer but 202 ends it with an error.
struct Producer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Acked, String>>,
}

impl Producer {
    fn start(w: &Weir, tag: &'static str) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = w.addr.clone();
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut acked = Acked::default();
            let mut i = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                i += 1;
                let sent = now_ms();
                let n = 1 + i % 3;
                let ids: Vec<String> = (0..n).map(|j| format!("{tag}-{i}-{j}")).collect();
                let body: String = ids
                    .iter()
                    .enumerate()
                    .map(|(j, id)| {
                        let k = format!("k{}", (i + j) % KEYS);
                        format!(
                            "{{\"event_id\":\"{id}\",\"event_type\":\"t\",\"key\":\"{k}\",\"timestamp\":{sent},\"payload\":{{\"k\":\"{k}\"}}}}\n"
                        )
                    })
                    .collect();
                let r = post(&addr, "events", &body);
                if r.status != 202 {
                    return Err(format!("events: {} {}", r.status, r.body));
                }
                acked.ids.extend(ids.into_iter().map(|id| (id, sent)));
                acked.requests += 1;
                let r = post(
                    &addr,
                    "kept",
                    &format!(
                        "{{\"event_type\":\"t\",\"payload\":\"{}\"}}",
                        "v".repeat(300)
                    ),
                );
                if r.status != 202 {
                    return Err(format!("kept: {} {}", r.status, r.body));
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            Ok(acked)
        });
        Producer { stop, handle }
    }

    fn finish(self) -> Acked {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join().unwrap() {
            Ok(a) => a,
            Err(e) => panic!("ingest stalled or failed: {e}"),
        }
    }
}

fn post(addr: &str, topic: &str, body: &str) -> crate::util::Resp {
    request(
        addr,
        "POST",
        &format!("/v1/topics/{topic}/events"),
        &[("Content-Type", "application/x-ndjson")],
        body.as_bytes(),
    )
}

/// Every pipeline's watermark (ms; `i64::MIN` for none yet).
fn watermarks(addr: &str) -> BTreeMap<String, i64> {
    let r = request(addr, "GET", "/v1/pipelines", &[], b"");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let wm = p["watermark"]
                .as_str()
                .map_or(i64::MIN, |t| weir::event::parse_timestamp(t).unwrap());
            (p["name"].as_str().unwrap().to_string(), wm)
        })
        .collect()
}

/// Watermarks by pipeline (ms).
type Marks = BTreeMap<String, i64>;

/// A thread reading the watermarks every few ms: each must never go back.
struct WatermarkWatch {
    stop: Arc<AtomicBool>,
    /// The last watermarks read and how many readings were taken.
    handle: JoinHandle<Result<(Marks, usize), String>>,
}

impl WatermarkWatch {
    /// `floor`: the watermarks the previous run ended with (none may start below them).
    fn start(w: &Weir, floor: BTreeMap<String, i64>) -> WatermarkWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = w.addr.clone();
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut last = floor;
            let mut readings = 0;
            while !stop2.load(Ordering::Relaxed) {
                for (name, wm) in watermarks(&addr) {
                    let before = last.get(&name).copied().unwrap_or(i64::MIN);
                    if wm < before {
                        return Err(format!("{name}: watermark went back from {before} to {wm}"));
                    }
                    last.insert(name, wm);
                }
                readings += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok((last, readings))
        });
        WatermarkWatch { stop, handle }
    }

    /// The last watermarks read.
    fn finish(self) -> BTreeMap<String, i64> {
        self.stop.store(true, Ordering::Relaxed);
        let (last, readings) = self
            .handle
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(readings > 0);
        last
    }
}

/// (key, window start) -> (count, final).
type Rows = BTreeMap<(String, i64), (u64, bool)>;

/// Every key's windows starting in `[from, to)` (ms).
fn rows(w: &Weir, pipeline: &str, from: i64, to: i64) -> Rows {
    let mut out = Rows::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let mut lo = from;
        while lo < to {
            let hi = (lo + 900 * SIZE_MS).min(to);
            let r = w.get(&format!(
                "/v1/pipelines/{pipeline}/keys/{key}?from={lo}&to={hi}"
            ));
            assert_eq!(r.status, 200, "{pipeline}/{key}: {}", r.body);
            for win in r.json()["windows"].as_array().unwrap() {
                let start = weir::event::parse_timestamp(win["start"].as_str().unwrap()).unwrap();
                assert_eq!(win["complete"], true, "{pipeline}/{key}: {win}");
                out.insert(
                    (key.clone(), start),
                    (
                        win["values"]["count"].as_u64().unwrap(),
                        win["final"] == true,
                    ),
                );
            }
            lo = hi;
        }
    }
    out
}

/// Records in a topic (no retention on the ones asked about: the end offsets).
fn records(w: &Weir, topic: &str) -> u64 {
    let j = w.get(&format!("/v1/topics/{topic}")).json();
    j["end_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .sum()
}

/// The windows a pipeline's events can be in: `[from, to)` ranges of window starts.
type Spans = Vec<(i64, i64)>;

/// Waits until both pipelines have read everything and every record of `events` is in
/// one window or in the pipeline's late topic; returns each pipeline's rows.
fn settled(w: &Weir, spans: &BTreeMap<&str, Spans>) -> BTreeMap<String, Rows> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let lags_zero = w.get("/v1/pipelines").json()["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["lag"] == 0);
        let total = records(w, "events");
        let mut out = BTreeMap::new();
        let mut sums = Vec::new();
        for p in PIPELINES {
            let mut all = Rows::new();
            for &(from, to) in &spans[p] {
                all.extend(rows(w, p, from, to));
            }
            let counted: u64 = all.values().map(|(c, _)| c).sum();
            let late = records(w, &format!("late_{}", &p[3..]));
            sums.push((p, counted, late));
            out.insert(p.to_string(), all);
        }
        if lags_zero && sums.iter().all(|(_, c, l)| c + l == total) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "pipelines do not add up to the {total} records of events: \
             (pipeline, counted, late) {sums:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rows of windows closed at watermark `wm` (end + lateness passed).
fn closed(rows: &Rows, wm: i64) -> Rows {
    rows.iter()
        .filter(|((_, start), _)| start + SIZE_MS + LATENESS_MS <= wm)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Rows closed in `before` (at watermark `wm`) are in `after` with the same counts and
/// final, and those windows have no other rows.
/// [`assert_closed_unchanged`] for both pipelines: `by_event` and `by_ingest` as
/// (rows, watermark) before, their settled rows in `after`.
fn assert_both_closed_unchanged(
    by_event: (&Rows, i64),
    by_ingest: (&Rows, i64),
    after: &BTreeMap<String, Rows>,
    when: &str,
) {
    for (pipeline, (before, wm)) in [("by_event", by_event), ("by_ingest", by_ingest)] {
        assert_closed_unchanged(pipeline, before, wm, &after[pipeline], when);
    }
}

fn assert_closed_unchanged(pipeline: &str, before: &Rows, wm: i64, after: &Rows, when: &str) {
    let was = closed(before, wm);
    assert!(
        !was.is_empty(),
        "{pipeline}: no window closed before {when}"
    );
    let now: Rows = after
        .iter()
        .filter(|((_, start), _)| start + SIZE_MS + LATENESS_MS <= wm)
        .map(|(k, v)| (k.clone(), (v.0, true)))
        .collect();
    let not_final: Vec<_> = after
        .iter()
        .filter(|((_, start), (_, fin))| start + SIZE_MS + LATENESS_MS <= wm && !fin)
        .collect();
    assert!(
        not_final.is_empty(),
        "{pipeline}: closed windows not final {when}: {not_final:?}"
    );
    let was_final: Rows = was.iter().map(|(k, v)| (k.clone(), (v.0, true))).collect();
    assert_eq!(was_final, now, "{pipeline}: closed windows changed {when}");
}

/// The same windows with the same counts; a final row stays final (an open row may have
/// turned final: its close was in the stop's checkpoint).
fn assert_same_results(before: &BTreeMap<String, Rows>, after: &BTreeMap<String, Rows>) {
    for (p, rows) in before {
        let counts = |r: &Rows| -> BTreeMap<(String, i64), u64> {
            r.iter().map(|(k, v)| (k.clone(), v.0)).collect()
        };
        assert_eq!(
            counts(rows),
            counts(&after[p]),
            "{p}: results after the restart"
        );
        let reopened: Vec<_> = rows
            .iter()
            .filter(|(k, (_, fin))| *fin && !after[p][*k].1)
            .collect();
        assert!(
            reopened.is_empty(),
            "{p}: final rows reopened: {reopened:?}"
        );
    }
}

/// Waits until every window of `pipeline` closed at its watermark now is final, and
/// returns (watermark, rows) read in that order.
fn closed_snapshot(w: &Weir, pipeline: &str, spans: &Spans) -> (i64, Rows) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wm = watermarks(&w.addr)[pipeline];
        let mut all = Rows::new();
        for &(from, to) in spans {
            all.extend(rows(w, pipeline, from, to));
        }
        let c = closed(&all, wm);
        if !c.is_empty() && c.values().all(|(_, fin)| *fin) {
            return (wm, all);
        }
        assert!(
            Instant::now() < deadline,
            "{pipeline}: no closed final windows at watermark {wm}: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `pipeline`'s watermark passes `ms`.
fn wait_watermark(w: &Weir, pipeline: &str, ms: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wm = watermarks(&w.addr)[pipeline];
        if wm > ms {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pipeline}: watermark {wm} did not pass {ms}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Posts one event with the real time now to `topic`; (answer, real time before, after).
fn post_now(w: &Weir, topic: &str) -> (crate::util::Resp, i64, i64) {
    let before = now_ms();
    let r = w.post(
        &format!("/v1/topics/{topic}/events"),
        &format!("{{\"event_type\":\"t\",\"timestamp\":{before},\"payload\":{{}}}}"),
    );
    (r, before, now_ms())
}

/// Event times beyond the bounds of weir's clock (`offset_ms` from the real one): `strict`
/// answers 400 naming the record and the bound, `clamped` stores the nearest bound.
fn assert_bounds(w: &Weir, offset_ms: i64) {
    let (r, ..) = post_now(w, "strict");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "timestamp_out_of_range"),
        "{}",
        r.body
    );
    let e = &r.json()["error"];
    assert_eq!(e["record"], 1, "{e}");
    let bound = if offset_ms < 0 {
        "later than now + max_event_lead"
    } else {
        "older than now - max_event_age"
    };
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with("record 1 (byte 0, line 1): event time ")
            && message.contains("outside the accepted range")
            && message.contains(bound),
        "{e}"
    );
    let before_end = records(w, "clamped");
    let (r, before, after) = post_now(w, "clamped");
    assert_eq!(r.status, 202, "{}", r.body);
    let events = w.read_all("clamped", 0);
    assert_eq!(events.len() as u64, before_end + 1);
    let stored = events.last().unwrap()["event"]["timestamp"]
        .as_str()
        .map(|t| weir::event::parse_timestamp(t).unwrap())
        .unwrap();
    // Ahead of weir (clock set back): clamped to now + 5 min; behind: to now - 1 h.
    let bound = if offset_ms < 0 { 5 * 60_000 } else { -HOUR_MS };
    assert!(
        (before + offset_ms + bound..=after + offset_ms + bound).contains(&stored),
        "clamped to {stored}, not weir's now {bound:+} ms (real time {before}..{after}, offset {offset_ms})"
    );
}

/// The dedup probe: `id` posted to `ids`; (accepted, duplicates).
fn post_id(w: &Weir, id: &str) -> (u64, u64) {
    let r = w.post(
        "/v1/topics/ids/events",
        &format!("{{\"event_id\":\"{id}\",\"event_type\":\"t\",\"payload\":{{}}}}"),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let j = r.json();
    (
        j["accepted"].as_u64().unwrap(),
        j["duplicates"].as_u64().unwrap(),
    )
}

/// The same event as the producer sent it: a retry of an acknowledged request.
fn retry(w: &Weir, id: &str, sent: i64) -> (u64, u64) {
    let body = format!(
        "{{\"event_id\":\"{id}\",\"event_type\":\"t\",\"key\":\"k0\",\"timestamp\":{sent},\"payload\":{{\"k\":\"k0\"}}}}"
    );
    let r = w.post("/v1/topics/events/events", &body);
    assert_eq!(r.status, 202, "{}", r.body);
    let j = r.json();
    (
        j["accepted"].as_u64().unwrap(),
        j["duplicates"].as_u64().unwrap(),
    )
}

fn start_offset(w: &Weir, topic: &str) -> u64 {
    w.get(&format!("/v1/topics/{topic}")).json()["start_offsets"][0]
        .as_u64()
        .unwrap()
}

/// Waits until `kept` has rolled `n` more segments' worth (2 KiB each) past `from`.
fn wait_rolls(w: &Weir, from: u64, n: u64) {
    // A `kept` record is about 330 bytes: 6 a segment.
    let deadline = Instant::now() + Duration::from_secs(60);
    while records(w, "kept") < from + 6 * n {
        assert!(Instant::now() < deadline, "kept stopped growing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_wall_clock_set_back_an_hour_stalls_nothing_and_reopens_nothing() {
    let c = Clocked::start();
    let t0 = now_ms();
    let watch = WatermarkWatch::start(&c.w, BTreeMap::new());
    let producer = Producer::start(&c.w, "a");
    // Before the jump: both pipelines close windows.
    let before_spans: Spans = vec![(t0 - 5 * SIZE_MS, t0 + 120 * SIZE_MS)];
    let (wm_event, rows_event) = closed_snapshot(&c.w, "by_event", &before_spans);
    let (wm_ingest, rows_ingest) = closed_snapshot(&c.w, "by_ingest", &before_spans);
    let (r, ..) = post_now(&c.w, "strict");
    assert_eq!(r.status, 202, "in bounds before the jump: {}", r.body);

    let jump_real = now_ms();
    c.set_offset(-HOUR_MS);
    // Appends between the two readings may carry either clock.
    let jump_done = now_ms();
    let after_jump = c.w.get("/v1/topics/kept").json()["end_offsets"][0]
        .as_u64()
        .unwrap();
    // An hour ahead of weir now: past `strict`'s 5 minutes of lead, clamped by `clamped`;
    // inside `events`' 2 hours.
    assert_bounds(&c.w, -HOUR_MS);
    // Ingest goes on: segments roll, time index entries and append times go back.
    wait_rolls(&c.w, after_jump, 3);
    // The event-time pipeline goes on: its watermark passes the moment of the jump.
    wait_watermark(&c.w, "by_event", jump_done);
    let acked = producer.finish();
    let t_end = now_ms();
    assert!(acked.requests > 0);

    // Event time follows the events' clocks: windows go on closing. Ingest time went
    // back an hour: every event appended since is behind the watermark, late, in
    // `late_ingest`; nothing is lost, no closed window moves.
    let spans = spans_after_setting_back(t0, jump_done, jump_real, t_end);
    let settled_rows = settled(&c.w, &spans);
    assert_both_closed_unchanged(
        (&rows_event, wm_event),
        (&rows_ingest, wm_ingest),
        &settled_rows,
        "after the jump",
    );
    assert!(
        records(&c.w, "late_ingest") > 0,
        "events appended after the jump are late for the ingest-time pipeline"
    );
    let behind = rows(
        &c.w,
        "by_ingest",
        jump_real - HOUR_MS - 5 * SIZE_MS,
        t_end - HOUR_MS + 5 * SIZE_MS,
    );
    assert!(
        behind.is_empty(),
        "no ingest-time window behind the watermark took an event: {behind:?}"
    );
    let wm = watch.finish();
    assert!(wm["by_event"] > jump_done, "event time kept moving: {wm:?}");
    assert!(wm["by_ingest"] <= jump_done, "{wm:?}");
    assert!(
        wm["by_ingest"] > jump_real - 60_000,
        "not moved back: {wm:?}"
    );

    // Restart with the clock still an hour back: the same results, watermarks restored.
    let mut w = c;
    w.w.stop();
    w.w.restart();
    let watch = WatermarkWatch::start(&w.w, wm.clone());
    let restarted = settled(&w.w, &spans);
    assert_same_results(&settled_rows, &restarted);
    let producer = Producer::start(&w.w, "b");
    wait_rolls(&w.w, records(&w.w, "kept"), 2);
    let acked_b = producer.finish();
    assert!(acked_b.requests > 0, "ingest after the restart");
    let t_end = now_ms();
    let spans = spans_after_setting_back(t0, jump_done, jump_real, t_end);
    let last = settled(&w.w, &spans);
    assert_both_closed_unchanged(
        (&rows_event, wm_event),
        (&rows_ingest, wm_ingest),
        &last,
        "after the restart",
    );
    let wm_after = watch.finish();
    for (p, v) in &wm {
        assert!(wm_after[p] >= *v, "{p}: watermark back after the restart");
    }
    // Retention (1 h) deleted nothing: the newest segments look an hour younger, the
    // older ones are minutes old.
    assert_eq!(start_offset(&w.w, "kept"), 0);
}

#[test]
fn the_wall_clock_set_forward_a_day_ages_nothing_and_forgets_no_id() {
    let c = Clocked::start();
    let t0 = now_ms();
    let watch = WatermarkWatch::start(&c.w, BTreeMap::new());
    let producer = Producer::start(&c.w, "a");
    let before_spans: Spans = vec![(t0 - 5 * SIZE_MS, t0 + 120 * SIZE_MS)];
    let (wm_event, rows_event) = closed_snapshot(&c.w, "by_event", &before_spans);
    let (wm_ingest, rows_ingest) = closed_snapshot(&c.w, "by_ingest", &before_spans);
    assert_eq!(post_id(&c.w, "probe"), (1, 0));
    wait_rolls(&c.w, 0, 3);
    let sealed_before = records(&c.w, "kept");

    let jump_real = now_ms();
    c.set_offset(DAY_MS);
    let jump_done = now_ms();
    let after_jump = records(&c.w, "kept");
    // A day old for weir: past `strict`'s hour of age, clamped by `clamped`; inside
    // `events`' 7 days.
    assert_bounds(&c.w, DAY_MS);
    // Dedup: an event acknowledged before the jump is still a duplicate after it.
    let (early_id, early_sent) = {
        let acked_early = &producer_ids_snapshot(&c.w);
        acked_early.clone()
    };
    assert_eq!(
        retry(&c.w, &early_id, early_sent),
        (0, 1),
        "retry of {early_id}"
    );
    assert_eq!(post_id(&c.w, "probe"), (0, 1));
    // Retention: segments roll and passes run; none of the recent data goes.
    wait_rolls(&c.w, after_jump, 4);
    assert_eq!(
        start_offset(&c.w, "kept"),
        0,
        "retention deleted recent segments"
    );
    assert!(sealed_before > 0);
    let acked = producer.finish();
    let t_end = now_ms();
    assert!(acked.requests > 0);

    let spans = BTreeMap::from([
        ("by_event", vec![(t0 - 5 * SIZE_MS, t_end + 5 * SIZE_MS)]),
        (
            "by_ingest",
            vec![
                (t0 - 5 * SIZE_MS, jump_done + 5 * SIZE_MS),
                (
                    jump_real + DAY_MS - 5 * SIZE_MS,
                    t_end + DAY_MS + 5 * SIZE_MS,
                ),
            ],
        ),
    ]);
    let settled_rows = settled(&c.w, &spans);
    assert_both_closed_unchanged(
        (&rows_event, wm_event),
        (&rows_ingest, wm_ingest),
        &settled_rows,
        "after the jump",
    );
    let wm = watch.finish();
    // Event time did not follow the wall clock; ingest time did, closing every window
    // from before the jump.
    assert!(wm["by_event"] < t_end + 60_000, "{wm:?}");
    assert!(wm["by_event"] > jump_real - 5000, "{wm:?}");
    assert!(wm["by_ingest"] > jump_real + DAY_MS - 60_000, "{wm:?}");
    let before_jump: Vec<_> = settled_rows["by_ingest"]
        .iter()
        .filter(|((_, s), _)| *s < jump_real - SIZE_MS)
        .collect();
    assert!(!before_jump.is_empty());
    assert!(
        before_jump.iter().all(|(_, (_, fin))| *fin),
        "ingest-time windows from before the jump are closed: {before_jump:?}"
    );

    // Restart with the clock still a day ahead.
    let mut w = c;
    w.w.stop();
    w.w.restart();
    let watch = WatermarkWatch::start(&w.w, wm.clone());
    let restarted = settled(&w.w, &spans);
    assert_same_results(&settled_rows, &restarted);
    // Same boot: the clock anchor the first start left in the data dir rules the jump
    // out (and weir says so).
    assert!(
        w.w.wait_log("the wall clock is ahead", 1, Duration::from_secs(10)),
        "{}",
        w.w.log_text()
    );
    // The dedup tables rebuilt from the log know the ids appended before the jump, also
    // where a day's worth of newer append times came after them, and those after it.
    assert_eq!(post_id(&w.w, "probe"), (0, 1), "after the restart");
    assert_eq!(
        retry(&w.w, &early_id, early_sent),
        (0, 1),
        "{early_id} after the restart"
    );
    let last_acked = acked.ids.last().unwrap();
    assert_eq!(retry(&w.w, &last_acked.0, last_acked.1), (0, 1));
    // Retention still deletes nothing from before the jump.
    let producer = Producer::start(&w.w, "b");
    wait_rolls(&w.w, records(&w.w, "kept"), 4);
    producer.finish();
    assert_eq!(start_offset(&w.w, "kept"), 0, "retention after the restart");
    let wm_after = watch.finish();
    for (p, v) in &wm {
        assert!(wm_after[p] >= *v, "{p}: watermark back after the restart");
    }
}

/// An event_id the producer had acknowledged: the first of the log's partition 0.
fn producer_ids_snapshot(w: &Weir) -> (String, i64) {
    let r = w.get("/v1/topics/events/events?partition=0&offset=0&limit=1");
    assert_eq!(r.status, 200, "{}", r.body);
    let e = &r.json()["events"][0]["event"];
    (
        e["event_id"].as_str().unwrap().to_string(),
        e["timestamp"].as_i64().unwrap(),
    )
}

/// A restarted weir answers with the restored watermark and closed windows from its
/// first answer, before the pipeline thread has run (held back here, as under load):
/// no `watermark: null` after a non-null one, no `last_closed` going missing.
#[test]
fn a_restarted_pipeline_answers_its_restored_watermark_before_it_runs() {
    let mut w = Weir::start(CONFIG);
    let t0 = now_ms();
    let producer = Producer::start(&w, "a");
    let path = "/v1/pipelines/by_event/keys/k0?window=last_closed";
    // Until k0 has a closed window, final.
    poll_within(&w, path, Duration::from_secs(60), |r| {
        r.status == 200 && r.json()["window"]["final"] == true
    });
    producer.finish();
    let spans: Spans = vec![(t0 - 5 * SIZE_MS, now_ms() + 5 * SIZE_MS)];
    let spans_all = BTreeMap::from([("by_event", spans.clone()), ("by_ingest", spans.clone())]);
    settled(&w, &spans_all);
    let before = watermarks(&w.addr);
    let last_closed = |w: &Weir| {
        let r = w.get(path);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["window"].clone()
    };
    // Settled: no input since, so the newest closed window is final by the next
    // checkpoint.
    let deadline = Instant::now() + Duration::from_secs(60);
    let closed_before = loop {
        let c = last_closed(&w);
        if c["final"] == true {
            break c;
        }
        assert!(Instant::now() < deadline, "{c}");
        std::thread::sleep(Duration::from_millis(20));
    };
    w.stop();
    w.restart_with_env(&[("WEIR_TEST_PIPELINE_START_DELAY_MS", "3000")]);
    assert_eq!(
        watermarks(&w.addr),
        before,
        "the watermarks at the first answer"
    );
    assert_eq!(last_closed(&w), closed_before);
    // And once the threads run, the same.
    settled(&w, &spans_all);
    assert_eq!(watermarks(&w.addr), before);
}

/// The window starts each pipeline is compared over after the clock was set back an
/// hour at `jump_real` (done by `jump_done`): event time over the whole run; ingest time
/// before the jump, and over the hour behind it that appends since fell into.
fn spans_after_setting_back(
    t0: i64,
    jump_done: i64,
    jump_real: i64,
    t_end: i64,
) -> BTreeMap<&'static str, Spans> {
    BTreeMap::from([
        ("by_event", vec![(t0 - 5 * SIZE_MS, t_end + 5 * SIZE_MS)]),
        (
            "by_ingest",
            vec![
                (t0 - 5 * SIZE_MS, jump_done + 5 * SIZE_MS),
                (
                    jump_real - HOUR_MS - 5 * SIZE_MS,
                    t_end - HOUR_MS + 5 * SIZE_MS,
                ),
            ],
        ),
    ])
}
