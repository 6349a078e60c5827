//! The crash loop (issue 7, "prove it cannot lose data"): concurrent producers ingest into
//! an `always` and an `interval` topic while weir is killed with SIGKILL at seeded random
//! moments, over and over. After every kill and restart:
//!
//! - `weir verify` passes on the crashed data dir (every batch CRC-valid, offsets
//!   continuous, indexes right; a torn batch only at the very end of an active segment,
//!   which the next start cuts);
//! - every acknowledged (202) event is in the log, under `always` and under `interval`
//!   alike (DESIGN.md: a buffered 202 survives kill -9, which keeps the page cache);
//! - no event_id is in the log twice, although requests whose outcome was unknown (the
//!   kill cut them) are retried with the same ids after the restart, which must answer
//!   exactly the ones missing as accepted and the others as duplicates;
//! - such a request's share of a partition is all there or not at all;
//! - offsets are dense from 0 and whatever a reader saw once stays (the model of the log
//!   the test keeps only grows; a full re-read compares it every `FULL_CHECK_EVERY` cycles);
//! - the pipelines' answers equal counts recomputed from the log (see [`Oracle`]).
//!
//! `WEIR_CRASHLOOP_CYCLES` (default 50, what CI runs) and `WEIR_CRASHLOOP_SEED` (default:
//! the clock) set the run; a failure prints the seed. The seed fixes the kill schedule,
//! request shapes, keys and topics; thread timing still varies between runs.
//! docs/reliability.md has the long setting.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weir::log::partitioner::partition_for_key;

use crate::util::{Weir, bin, now_ms, try_request};

const CYCLES_DEFAULT: usize = 50;
const PRODUCERS: usize = 4;
/// Keys `k0`.. `k15`: between them every partition of both topics (checked at the start),
/// so no partition stays empty and holds the tumbling pipeline's watermark back.
const KEYS: usize = 16;
/// Every this many cycles (`WEIR_CRASHLOOP_FULL_EVERY`) the whole log is read again and
/// every window compared, not just the new records and the recent windows.
const FULL_CHECK_EVERY: usize = 10;
/// Window starts per range query: below the API's `QUERY_WINDOWS_MAX` (1000).
const RANGE_MS: i64 = 900_000;

/// Two source topics, one per durability mode, small segments so rolls happen every
/// few cycles; a tumbling count on the `always` one that closes windows (its late events
/// go to `late`), a hopping count on the `interval` one that never closes any (its
/// out-of-orderness is an hour), so open cells are checkpointed and restored.
pub(crate) const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "durable"
partitions = 4
fsync = "always"
segment_size = "32KiB"
default_event_type = "x"

[[topic]]
name = "buffered"
partitions = 3
fsync = "interval"
fsync_interval = "50ms"
segment_size = "32KiB"
default_event_type = "x"

[[topic]]
name = "late"
partitions = 1
fsync = "always"
dedup_window = "1h"

[[pipeline]]
name = "tumbling"
source = "durable"
group_by = ["/payload/k"]
window = { kind = "tumbling", size = "1s" }
max_out_of_orderness = "2s"
allowed_lateness = "500ms"
checkpoint_interval = "100ms"
late_topic = "late"

[[pipeline.aggregate]]
name = "count"
fn = "count"

[[pipeline]]
name = "hopping"
source = "buffered"
group_by = ["/payload/k"]
window = { kind = "hopping", size = "4s", slide = "1s" }
max_out_of_orderness = "1h"
checkpoint_interval = "150ms"

[[pipeline.aggregate]]
name = "count"
fn = "count"
"#;

const TOPICS: [(&str, u32); 2] = [("durable", 4), ("buffered", 3)];

/// Partitions of a topic the producers write to (the failpoint matrix adds `retained`).
fn partitions_of(topic: &str) -> u32 {
    match topic {
        "durable" => 4,
        "buffered" => 3,
        _ => 2,
    }
}

/// splitmix64: small, seedable, good enough to pick moments and shapes.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One request as sent: retried byte for byte when its outcome was unknown.
#[derive(Clone, Debug)]
pub(crate) struct Req {
    pub(crate) topic: &'static str,
    /// (event_id, key, event time ms) of each event.
    pub(crate) events: Vec<(String, String, i64)>,
    body: String,
    ndjson: bool,
}

impl Req {
    /// A request to one of `topics`: one event or an NDJSON batch of 2 to 8, of one key
    /// or (when `mixed`, half the time) of several.
    fn new(
        rng: &mut Rng,
        producer: usize,
        seq: &mut u64,
        topics: &[&'static str],
        mixed: bool,
    ) -> Req {
        let topic = topics[rng.below(topics.len() as u64) as usize];
        let n = if rng.below(2) == 0 {
            1
        } else {
            2 + rng.below(7) as usize
        };
        let one_key = !mixed || rng.below(2) == 0;
        let first_key = rng.below(KEYS as u64);
        let ts = now_ms();
        let events: Vec<(String, String, i64)> = (0..n)
            .map(|_| {
                *seq += 1;
                let k = if one_key {
                    first_key
                } else {
                    rng.below(KEYS as u64)
                };
                (format!("p{producer}-{seq}"), format!("k{k}"), ts)
            })
            .collect();
        let mut body = String::new();
        for (id, key, ts) in &events {
            body.push_str(&format!(
                "{{\"event_id\":\"{id}\",\"key\":\"{key}\",\"timestamp\":{ts},\"payload\":{{\"k\":\"{key}\"}}}}\n"
            ));
        }
        Req {
            topic,
            events,
            body,
            ndjson: n > 1,
        }
    }

    pub(crate) fn send(&self, addr: &str) -> std::io::Result<crate::util::Resp> {
        let ty = if self.ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        try_request(
            addr,
            "POST",
            &format!("/v1/topics/{}/events", self.topic),
            &[("Content-Type", ty)],
            self.body.as_bytes(),
        )
    }

    /// The event ids by the partition they go to.
    pub(crate) fn shares(&self) -> HashMap<u32, Vec<&str>> {
        let parts = partitions_of(self.topic);
        let mut out: HashMap<u32, Vec<&str>> = HashMap::new();
        for (id, key, _) in &self.events {
            out.entry(partition_for_key(key.as_bytes(), parts))
                .or_default()
                .push(id);
        }
        out
    }
}

/// What the producers of one cycle learnt.
#[derive(Default)]
pub(crate) struct Outcomes {
    /// With the 202's body.
    pub(crate) acked: Vec<(Req, serde_json::Value)>,
    /// Sent, no answer (the kill cut it): outcome unknown.
    pub(crate) unknown: Vec<Req>,
    /// Answered 5xx: outcome unknown too, but the server lived on.
    pub(crate) failed: Vec<(Req, u16, String)>,
    /// Answers that are wrong whatever happened (a 4xx, a 202 with wrong counts).
    pub(crate) errors: Vec<String>,
}

/// Checks a 202's body and durability header against the request.
pub(crate) fn check_202(req: &Req, r: &crate::util::Resp, duplicates: usize) -> Result<(), String> {
    let j = r.json();
    let n = req.events.len();
    let got = (j["accepted"].as_u64(), j["duplicates"].as_u64());
    if got != (Some((n - duplicates) as u64), Some(duplicates as u64)) {
        return Err(format!(
            "202 for {} events, {duplicates} known: {}",
            n, r.body
        ));
    }
    let buffered = r.header("weir-durability") == Some("buffered");
    if buffered != (req.topic == "buffered") && n > duplicates {
        return Err(format!(
            "{}: Weir-Durability {:?}",
            req.topic,
            r.header("weir-durability")
        ));
    }
    Ok(())
}

/// Sends requests to `topics` until `stop` or the server is gone.
pub(crate) fn producer(
    addr: String,
    id: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    seq: &mut u64,
    topics: &[&'static str],
    mixed: bool,
) -> Outcomes {
    let mut rng = Rng(seed);
    let mut out = Outcomes::default();
    while !stop.load(Ordering::Relaxed) {
        let req = Req::new(&mut rng, id, seq, topics, mixed);
        match req.send(&addr) {
            Ok(r) if r.status == 202 => {
                if let Err(e) = check_202(&req, &r, 0) {
                    out.errors.push(e);
                }
                out.acked.push((req, r.json()));
            }
            Ok(r) if r.status < 500 => {
                out.errors
                    .push(format!("{} {}: {}", req.topic, r.status, r.body));
            }
            Ok(r) => out.failed.push((req, r.status, r.body)),
            Err(_) => {
                out.unknown.push(req);
                // The server is gone: nothing more to learn.
                return out;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(4)));
    }
    out
}

/// One record of the model of the log.
pub(crate) struct Rec {
    pub(crate) id: String,
    key: String,
    ts: i64,
}

/// The log as the test has read it: every record ever visible, by topic and partition.
#[derive(Default)]
pub(crate) struct Model {
    pub(crate) parts: HashMap<(&'static str, u32), Vec<Rec>>,
    /// event_id -> where it is.
    pub(crate) ids: HashMap<String, (&'static str, u32, usize)>,
    /// event_ids in the `late` topic.
    pub(crate) late: HashSet<String>,
}

/// Records of `topic`/`partition` from `from`, checking offsets are dense.
pub(crate) fn read_from(w: &Weir, topic: &str, p: u32, from: usize) -> Result<Vec<Rec>, String> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = w.get(&format!(
            "/v1/topics/{topic}/events?partition={p}&offset={offset}&limit=5000"
        ));
        if r.status != 200 {
            return Err(format!(
                "read {topic}/{p} at {offset}: {} {}",
                r.status, r.body
            ));
        }
        let j = r.json();
        let events = j["events"].as_array().unwrap();
        if events.is_empty() {
            return Ok(out);
        }
        for e in events {
            let at = e["offset"].as_u64().unwrap() as usize;
            if at != offset {
                return Err(format!("{topic}/{p}: offset {at} where {offset} was due"));
            }
            let ev = &e["event"];
            out.push(Rec {
                id: ev["event_id"].as_str().unwrap().to_string(),
                key: e["key"].as_str().unwrap_or_default().to_string(),
                ts: ev["timestamp"].as_i64().unwrap_or_else(|| {
                    weir::event::parse_timestamp(ev["timestamp"].as_str().unwrap()).unwrap()
                }),
            });
            offset += 1;
        }
    }
}

impl Model {
    /// Reads what is new since the last read (everything when `full`, compared with what
    /// was read before). Returns the event times read for the first time.
    pub(crate) fn refresh(&mut self, w: &Weir, full: bool) -> Result<Vec<i64>, String> {
        let mut new_ts = Vec::new();
        for (topic, parts) in TOPICS {
            for p in 0..parts {
                let known = self.parts.entry((topic, p)).or_default();
                let start = w.get(&format!("/v1/topics/{topic}")).json()["start_offsets"]
                    [p as usize]
                    .as_i64();
                if start != Some(0) {
                    return Err(format!("{topic}/{p}: start offset {start:?}, not 0"));
                }
                let from = if full { 0 } else { known.len() };
                let got = read_from(w, topic, p, from)?;
                if from + got.len() < known.len() {
                    return Err(format!(
                        "{topic}/{p}: the log ends at {} but {} records were read before",
                        from + got.len(),
                        known.len()
                    ));
                }
                for (i, rec) in got.into_iter().enumerate() {
                    let at = from + i;
                    if let Some(old) = known.get(at) {
                        if old.id != rec.id {
                            return Err(format!(
                                "{topic}/{p} offset {at}: {} now, {} before",
                                rec.id, old.id
                            ));
                        }
                        continue;
                    }
                    if let Some(first) = self.ids.get(&rec.id) {
                        return Err(format!(
                            "{} twice: at {topic}/{p}/{at} and at {first:?}",
                            rec.id
                        ));
                    }
                    self.ids.insert(rec.id.clone(), (topic, p, at));
                    new_ts.push(rec.ts);
                    known.push(rec);
                }
            }
        }
        self.late.clear();
        for rec in read_from(w, "late", 0, 0)? {
            if !self.late.insert(rec.id.clone()) {
                return Err(format!("{} twice in the late topic", rec.id));
            }
        }
        Ok(new_ts)
    }
}

/// The pipelines' answers against counts recomputed from the log read back: cheaper
/// than a second weir rebuilding from a copy of the data dir every cycle (a copy and a
/// replay of the whole log, growing each cycle), and sound here because both pipelines
/// are pure counts per key: once a pipeline has caught up with the visible end (lag 0,
/// producers stopped), a window's count is the number of the log's records of that key
/// in it, less the records no open window took, which the tumbling pipeline appends to
/// its `late_topic` (counted from there) and the hopping one never has (nothing closes).
/// A crash that made a checkpoint count a record twice or not at all, restored stale
/// cells or lost closed rows shows as a difference.
pub(crate) struct Oracle;

impl Oracle {
    /// Expected counts per (key, window start) of `pipeline`.
    fn expected(model: &Model, pipeline: &str) -> HashMap<(String, i64), u64> {
        let mut out: HashMap<(String, i64), u64> = HashMap::new();
        let (topic, windows) = if pipeline == "tumbling" {
            ("durable", 1)
        } else {
            ("buffered", 4)
        };
        for ((t, _), recs) in &model.parts {
            if *t != topic {
                continue;
            }
            for r in recs {
                if topic == "durable" && model.late.contains(&r.id) {
                    continue;
                }
                let base = r.ts.div_euclid(1000) * 1000;
                for k in 0..windows {
                    *out.entry((r.key.clone(), base - k * 1000)).or_default() += 1;
                }
            }
        }
        out
    }

    /// Compares every key's windows starting in `[from, to)`; returns how many windows
    /// were compared and how many of them were final.
    pub(crate) fn check(
        w: &Weir,
        model: &Model,
        from: i64,
        to: i64,
    ) -> Result<(usize, usize), String> {
        let (mut compared, mut finals) = (0, 0);
        for pipeline in ["tumbling", "hopping"] {
            let expected = Oracle::expected(model, pipeline);
            for k in 0..KEYS {
                let key = format!("k{k}");
                let mut lo = from;
                while lo < to {
                    let hi = (lo + RANGE_MS).min(to);
                    let r = w.get(&format!(
                        "/v1/pipelines/{pipeline}/keys/{key}?from={lo}&to={hi}"
                    ));
                    if r.status != 200 {
                        return Err(format!("{pipeline}/{key}: {} {}", r.status, r.body));
                    }
                    let mut got: HashMap<i64, u64> = HashMap::new();
                    for win in r.json()["windows"].as_array().unwrap() {
                        let start =
                            weir::event::parse_timestamp(win["start"].as_str().unwrap()).unwrap();
                        if win["complete"] != true {
                            return Err(format!("{pipeline}/{key}: incomplete window {win}"));
                        }
                        got.insert(start, win["values"]["count"].as_u64().unwrap());
                        compared += 1;
                        finals += usize::from(win["final"] == true);
                    }
                    let want: HashMap<i64, u64> = expected
                        .iter()
                        .filter(|((kk, s), _)| *kk == key && *s >= lo && *s < hi)
                        .map(|((_, s), c)| (*s, *c))
                        .collect();
                    if got != want {
                        let mut diff: Vec<String> = want
                            .keys()
                            .chain(got.keys())
                            .collect::<HashSet<_>>()
                            .into_iter()
                            .filter(|s| want.get(s) != got.get(s))
                            .map(|s| {
                                format!("{s}: log {:?} pipeline {:?}", want.get(s), got.get(s))
                            })
                            .collect();
                        diff.sort();
                        return Err(format!(
                            "{pipeline}/{key} differs from the log ({} late events): {diff:?}",
                            model.late.len()
                        ));
                    }
                    lo = hi;
                }
            }
        }
        Ok((compared, finals))
    }
}

/// An acknowledged request's events are in the log, each at the offset the 202 named
/// (its share of a partition from that partition's `first`, in request order).
pub(crate) fn check_acked(
    model: &Model,
    req: &Req,
    body: Option<&serde_json::Value>,
) -> Result<(), String> {
    let firsts: HashMap<u64, u64> = body
        .and_then(|b| b["offsets"].as_array())
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["partition"].as_u64().unwrap(),
                o["first"].as_u64().unwrap(),
            )
        })
        .collect();
    for (p, ids) in req.shares() {
        for (i, id) in ids.iter().enumerate() {
            let Some(&(topic, part, offset)) = model.ids.get(*id) else {
                return Err(format!(
                    "acknowledged {id} ({}) is not in the log",
                    req.topic
                ));
            };
            let named = firsts.get(&u64::from(p)).map(|f| f + i as u64);
            if topic != req.topic || part != p || body.is_some() && named != Some(offset as u64) {
                return Err(format!(
                    "acknowledged {id} at {}/{p}/{named:?} is at {topic}/{part}/{offset}",
                    req.topic
                ));
            }
        }
    }
    Ok(())
}

/// Waits until every pipeline has processed everything visible.
pub(crate) fn wait_caught_up(w: &Weir) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = w.get("/v1/pipelines").json();
        let lags: Vec<u64> = j["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["lag"].as_u64().unwrap())
            .collect();
        if lags.iter().all(|l| *l == 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("pipelines did not catch up: {j}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `weir verify` on the stopped (crashed) data dir: no problem. A batch cut short at the
/// very end of a partition's last segment (a write the kill interrupted, never
/// acknowledged) is a note, not a problem, after a stop that was not clean: the next
/// start cuts it, and the model's dense offsets check that it did.
pub(crate) fn verify(w: &Weir) -> Result<(), String> {
    let out = std::process::Command::new(bin())
        .args(["verify", "--data-dir"])
        .arg(w.data_dir())
        .output()
        .unwrap();
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "weir verify: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[test]
fn crashloop_kill9_at_random_moments_loses_nothing_acknowledged() {
    let cycles = env_u64("WEIR_CRASHLOOP_CYCLES").map_or(CYCLES_DEFAULT, |c| c as usize);
    let seed = env_u64("WEIR_CRASHLOOP_SEED").unwrap_or_else(|| now_ms() as u64);
    eprintln!("crashloop: {cycles} cycles, WEIR_CRASHLOOP_SEED={seed}");
    let cycle = AtomicUsize::new(0);
    let started = Instant::now();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crash_loop(cycles, seed, &cycle)
    }));
    let failure = match run {
        Ok(Ok(stats)) => {
            eprintln!(
                "crashloop: {cycles} cycles passed in {:.0?} (seed {seed}): {stats}",
                started.elapsed()
            );
            return;
        }
        Ok(Err(e)) => e,
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    panic!(
        "crashloop failed in cycle {} of {cycles} after {:.0?}: {failure}\n\
         replay: WEIR_CRASHLOOP_SEED={seed} WEIR_CRASHLOOP_CYCLES={cycles} \
         cargo test --test it crashloop",
        cycle.load(Ordering::Relaxed),
        started.elapsed()
    );
}

/// The loop; an `Err` names the broken promise.
fn crash_loop(cycles: usize, seed: u64, cycle_now: &AtomicUsize) -> Result<String, String> {
    let mut rng = Rng(seed);
    let full_every = env_u64("WEIR_CRASHLOOP_FULL_EVERY").map_or(FULL_CHECK_EVERY, |c| c as usize);
    for (topic, parts) in TOPICS {
        let covered: HashSet<u32> = (0..KEYS)
            .map(|k| partition_for_key(format!("k{k}").as_bytes(), parts))
            .collect();
        assert_eq!(
            covered.len(),
            parts as usize,
            "{topic}: keys for every partition"
        );
    }
    let mut w = Weir::start(CONFIG);
    let mut model = Model::default();
    // With the 202's body where it names every event's offset (not for a retry that
    // found some of its events there).
    let mut acked: Vec<(Req, Option<serde_json::Value>)> = Vec::new();
    let mut seqs = [0u64; PRODUCERS];
    let (mut unknown_total, mut dup_total, mut first_ts) = (0usize, 0usize, i64::MAX);
    let (mut windows_total, mut finals_total) = (0usize, 0usize);
    let started = Instant::now();
    for cycle in 0..cycles {
        cycle_now.store(cycle, Ordering::Relaxed);
        if cycle > 0 && cycle % 100 == 0 {
            let records: usize = model.parts.values().map(Vec::len).sum();
            eprintln!(
                "crashloop: {cycle} cycles in {:.0?}, {records} records, {windows_total} windows compared",
                started.elapsed()
            );
        }
        // Produce, then kill at a random moment: mostly mid-ingest, sometimes while the
        // pipelines are still restoring right after the start.
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = seqs
            .iter()
            .enumerate()
            .map(|(i, &seq)| {
                let (addr, stop) = (w.addr.clone(), Arc::clone(&stop));
                let s = rng.next();
                std::thread::spawn(move || {
                    let mut seq = seq;
                    let topics = TOPICS.map(|t| t.0);
                    let out = producer(addr, i, s, stop, &mut seq, &topics, true);
                    (out, seq)
                })
            })
            .collect();
        let delay = if rng.below(10) == 0 {
            rng.below(30)
        } else {
            50 + rng.below(400)
        };
        std::thread::sleep(Duration::from_millis(delay));
        w.kill9();
        stop.store(true, Ordering::Relaxed);
        let mut unknown = Vec::new();
        for (i, h) in handles.into_iter().enumerate() {
            let (out, seq) = h.join().map_err(|_| "a producer panicked".to_string())?;
            seqs[i] = seq;
            if let Some(e) = out.errors.first() {
                return Err(format!("a wrong answer: {e}"));
            }
            acked.extend(out.acked.into_iter().map(|(req, body)| (req, Some(body))));
            unknown.extend(out.unknown);
            // A 5xx before the kill: unknown as well (none is expected).
            unknown.extend(out.failed.into_iter().map(|(req, _, _)| req));
        }
        unknown_total += unknown.len();
        verify(&w)?;
        w.restart();
        wait_caught_up(&w)?;
        let full = cycle % full_every == full_every - 1 || cycle + 1 == cycles;
        let new_ts = model.refresh(&w, full)?;
        for (req, body) in &acked {
            check_acked(&model, req, body.as_ref())?;
        }
        // Everything acknowledged is in the model, and the model only grows: later
        // cycles need not look again.
        acked.clear();
        let (from, to) = if full {
            (first_ts.min(now_ms()), now_ms() + 10_000)
        } else {
            let lo = new_ts.iter().min().copied().unwrap_or(now_ms());
            (lo - 10_000, now_ms() + 10_000)
        };
        first_ts = first_ts.min(new_ts.iter().min().copied().unwrap_or(i64::MAX));
        let (from, to) = (from.div_euclid(1000) * 1000 - 4000, to);
        let (compared, finals) = Oracle::check(&w, &model, from, to)?;
        windows_total += compared;
        finals_total += finals;
        // Requests the kill cut: all or nothing per partition, then retried as a client
        // would, with the same ids.
        for req in unknown {
            let mut present = 0;
            for (p, ids) in req.shares() {
                let there = ids.iter().filter(|id| model.ids.contains_key(**id)).count();
                if there != 0 && there != ids.len() {
                    return Err(format!(
                        "{}/{p}: {there} of the {} events of one cut request are there",
                        req.topic,
                        ids.len()
                    ));
                }
                present += there;
            }
            let r = req
                .send(&w.addr)
                .map_err(|e| format!("retry after the restart: {e}"))?;
            if r.status != 202 {
                return Err(format!("retry: {} {}", r.status, r.body));
            }
            check_202(&req, &r, present).map_err(|e| format!("retry: {e}"))?;
            dup_total += present;
            acked.push((req, (present == 0).then(|| r.json())));
        }
    }
    w.kill9();
    verify(&w)?;
    let records: usize = model.parts.values().map(Vec::len).sum();
    Ok(format!(
        "{records} records, {} late, {unknown_total} requests cut by a kill and retried, \
         {dup_total} of their events found already there, {windows_total} windows compared \
         ({finals_total} final)",
        model.late.len()
    ))
}
