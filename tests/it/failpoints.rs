//! The failpoint matrix (issue 7): every failpoint in `src/` (see `weir::failpoint`) is
//! made to fire, once as a crash (`return(crash)`: the process SIGKILLs itself at that
//! step) and once as an error (`return`: the step fails as a syscall would), at a
//! seeded moment (`N*off->...`), while producers ingest into an `always`, an `interval`
//! and a retained topic (4 KiB segments: rolls, index writes, directory fsyncs and
//! retention deletes all the time), pipelines checkpoint every 100 ms, a consumer group
//! commits and a reader reads sealed segments. Then weir is restarted without failpoints
//! and the crash loop's checks run (`weir verify`, every 202 at the offsets it named,
//! dense offsets, no duplicate, a cut request all or nothing, pipeline counts equal to
//! the log), plus, for errors: the step's failure is never acknowledged (a failed append
//! leaves nothing behind), and either weir goes on (later appends are acknowledged,
//! /readyz 200) or, where DESIGN.md says so (any fsync step), the partition is fenced
//! and /readyz 503 until the restart.
//!
//! `every_failpoint_in_src_is_in_the_matrix` greps `src/` so a new failpoint cannot be
//! left out. `WEIR_FAILPOINT_SEED` varies the moments (default 0); a failure names the
//! `FAILPOINTS` value to replay.

/// What weir does after the error action fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterError {
    /// It goes on: the failed step is retried or skipped, later appends are acknowledged.
    Goes,
    /// An fsync step: the partition is fenced (503 `partition_fenced`, /readyz 503).
    Fenced,
    /// The start fails (exit status 1); the next start is clean.
    StartFails,
}

#[cfg_attr(
    not(feature = "fail"),
    allow(dead_code, reason = "read by the matrix, which needs the fail feature")
)]
struct Point {
    name: &'static str,
    /// Exercised as a crash too (`app::log_open` is before anything is opened: a crash
    /// there is a crash before the start, nothing to see).
    crash: bool,
    after_error: AfterError,
    /// The point passes 0 to this many times before it fires (seeded): it is reached
    /// about that often in the first second.
    skip_max: u64,
    /// An error here fails an append: the request is not acknowledged and none of its
    /// events are in the log after the restart.
    append: bool,
}

const fn point(name: &'static str, after_error: AfterError, skip_max: u64, append: bool) -> Point {
    Point {
        name,
        crash: true,
        after_error,
        skip_max,
        append,
    }
}

use AfterError::{Fenced, Goes, StartFails};

/// Every failpoint, in write-path order.
const MATRIX: &[Point] = &[
    // pwrite of a batch, before and after.
    point("log::write", Goes, 40, true),
    point("log::write_after", Goes, 40, true),
    // Segment roll: seal (index files), create the next segment.
    point("log::roll", Goes, 4, true),
    point("log::index_write", Goes, 4, true),
    point("log::segment_create", Goes, 4, true),
    // An fsync round: sealed segments and their indexes, the directory, the recovery
    // point, then the active segment; after it, before the durable end is published.
    point("log::fsync_sealed", Fenced, 3, false),
    point("log::dir_fsync", Fenced, 3, false),
    point("log::recovery_point", Fenced, 3, false),
    point("log::fsync", Fenced, 40, false),
    point("log::fsync_after", Fenced, 40, false),
    // Reads of sealed segments (pipelines, pulls).
    point("log::read_open_sealed", Goes, 4, false),
    // Retention: a segment's log file removed, its index files not yet.
    point("log::retention_delete", Goes, 2, false),
    // A consumer-group commit, before its append to __weir_offsets.
    point("groups::commit", Goes, 4, false),
    // A checkpoint: the sled batch applied, then flushed.
    point("store::commit", Goes, 4, false),
    point("store::flush", Goes, 4, false),
    // The free-space reading (at the start, at once after, then every second: the first
    // two are passed, a crash at the start being a failed start).
    Point {
        skip_max: 1,
        ..point("disk::free", Goes, 0, false)
    },
    Point {
        crash: false,
        ..point("app::log_open", StartFails, 0, false)
    },
];

/// Failpoint names used in `src/**/*.rs`: `failpoint!("name"` and `fail_point!("name"`.
fn names_in_src() -> std::collections::BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for marker in ["failpoint!(\"", "fail_point!(\""] {
                    for (at, _) in text.match_indices(marker) {
                        let rest = &text[at + marker.len()..];
                        out.insert(rest[..rest.find('"').unwrap()].to_string());
                    }
                }
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut out,
    );
    out
}

#[test]
fn every_failpoint_in_src_is_in_the_matrix() {
    let in_src = names_in_src();
    assert!(
        in_src.contains("log::write"),
        "the grep finds failpoints: {in_src:?}"
    );
    let in_matrix: std::collections::BTreeSet<String> =
        MATRIX.iter().map(|p| p.name.to_string()).collect();
    let missing: Vec<_> = in_src.difference(&in_matrix).collect();
    assert!(
        missing.is_empty(),
        "failpoints the matrix does not exercise: {missing:?}"
    );
    let stale: Vec<_> = in_matrix.difference(&in_src).collect();
    assert!(
        stale.is_empty(),
        "matrix entries with no failpoint in src: {stale:?}"
    );
    #[cfg(feature = "fail")]
    {
        let tested: std::collections::BTreeSet<String> =
            matrix::TESTED.iter().map(|s| s.to_string()).collect();
        assert_eq!(tested, in_matrix, "a test per matrix entry");
    }
}

#[cfg(feature = "fail")]
mod matrix {
    use std::collections::HashMap;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::{AfterError, MATRIX, Point};
    use crate::crashloop::{self, Model, Oracle, Rng};
    use crate::util::{Weir, bin, now_ms};

    /// The crash loop's config with 4 KiB segments, plus a topic under size retention.
    fn config() -> String {
        format!(
            "{}\n{}",
            crashloop::CONFIG.replace("32KiB", "4KiB"),
            r#"
[[topic]]
name = "retained"
partitions = 2
fsync = "always"
segment_size = "4KiB"
retention_size = "12KiB"
default_event_type = "x"
"#
        )
    }

    const TOPICS: [&str; 3] = ["durable", "buffered", "retained"];
    /// Longest a failpoint may take to be reached.
    const FIRE_WAIT: Duration = Duration::from_secs(15);

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Action {
        Crash,
        Error,
    }

    fn seed_of(name: &str, action: Action) -> u64 {
        let base = std::env::var("WEIR_FAILPOINT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0u64);
        // FNV-1a of the name: a fixed moment per point unless the seed is set.
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ base ^ (action as u64);
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        h
    }

    /// What the drivers saw.
    #[derive(Default)]
    struct Drive {
        out: crashloop::Outcomes,
        /// The last group commit acknowledged and the last attempted (offset of
        /// durable/0 committed by group `g`).
        commit_acked: Option<i64>,
        commit_tried: Option<i64>,
    }

    /// Runs producers, a group committer and a sealed-segment reader until `stop`.
    fn drive(w: &Weir, seed: u64, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Drive>> {
        let mut handles = Vec::new();
        for i in 0..3 {
            let (addr, stop) = (w.addr.clone(), Arc::clone(stop));
            handles.push(std::thread::spawn(move || {
                let mut seq = 0;
                let out =
                    crashloop::producer(addr, i, seed ^ i as u64, stop, &mut seq, &TOPICS, false);
                Drive {
                    out,
                    ..Drive::default()
                }
            }));
        }
        let (addr, stop) = (w.addr.clone(), Arc::clone(stop));
        handles.push(std::thread::spawn(move || {
            let mut d = Drive::default();
            let mut tried = -1;
            let mut p = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                let Ok(r) = crate::util::try_request(&addr, "GET", "/v1/topics/durable", &[], b"")
                else {
                    break;
                };
                let Some(end) = r.json()["end_offsets"][0].as_i64() else {
                    continue;
                };
                if end > tried {
                    tried = end;
                    d.commit_tried = Some(end);
                    let body = format!("{{\"offsets\":[{{\"partition\":0,\"offset\":{end}}}]}}");
                    match crate::util::try_request(
                        &addr,
                        "PUT",
                        "/v1/groups/g/offsets/durable",
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    ) {
                        Ok(r) if r.status == 200 || r.status == 204 => d.commit_acked = Some(end),
                        Ok(r) if r.status < 500 => {
                            d.out
                                .errors
                                .push(format!("group commit: {} {}", r.status, r.body));
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                // Reads from the start: sealed segments once rolled.
                p = (p + 1) % 4;
                let path = format!("/v1/topics/durable/events?partition={p}&offset=0&limit=20");
                if crate::util::try_request(&addr, "GET", &path, &[], b"").is_err() {
                    break;
                }
            }
            d
        }));
        handles
    }

    fn fired(w: &Weir, name: &str, action: &str) -> bool {
        w.log_text().lines().any(|l| {
            l.contains("failpoint fired")
                && l.contains(&format!("failpoint=\"{name}\""))
                && l.contains(&format!("action=\"{action}\""))
        })
    }

    fn wait_ready(w: &Weir, want: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = w.get("/readyz");
            if r.status == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("/readyz {} {}, {want} wanted", r.status, r.body));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One cell of the matrix.
    fn case(p: &Point, action: Action) -> Result<(), String> {
        let seed = seed_of(p.name, action);
        let mut rng = Rng(seed);
        let skip = if p.name == "disk::free" {
            2 + rng.below(p.skip_max + 1)
        } else {
            rng.below(p.skip_max + 1)
        };
        let spec = match action {
            Action::Crash => format!("{}={skip}*off->return(crash)", p.name),
            Action::Error => format!("{}={skip}*off->1*return->off", p.name),
        };
        let failpoints = [("FAILPOINTS", spec.as_str())];
        let mut w = if p.after_error == AfterError::StartFails {
            Weir::start(&config())
        } else {
            Weir::start_with_env(&config(), &failpoints)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let handles = drive(&w, seed, &stop);
        let started = Instant::now();
        match (action, p.after_error) {
            (Action::Error, AfterError::StartFails) => {
                std::thread::sleep(Duration::from_millis(300));
                w.kill9();
                let out = std::process::Command::new(bin())
                    .args(["run", "--config"])
                    .arg(w.config_path())
                    .env("FAILPOINTS", &spec)
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                if out.status.success() || !stderr.contains(p.name) {
                    return Err(format!("{spec}: the start did not fail: {stderr}"));
                }
            }
            (Action::Crash, _) => {
                let status = w
                    .wait_exit(FIRE_WAIT)
                    .ok_or_else(|| format!("{spec}: not reached in {FIRE_WAIT:?}"))?;
                // The log line was written before the kill; the thread reading weir's
                // stderr may not have taken it yet.
                let read_by = Instant::now() + Duration::from_secs(5);
                while !fired(&w, p.name, "crash") && Instant::now() < read_by {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if status.signal() != Some(libc::SIGKILL) || !fired(&w, p.name, "crash") {
                    return Err(format!("{spec}: exit {status:?}, log:\n{}", w.log_text()));
                }
            }
            (Action::Error, after) => {
                while !fired(&w, p.name, "error") {
                    if started.elapsed() > FIRE_WAIT {
                        return Err(format!("{spec}: not reached in {FIRE_WAIT:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Drivers go on a moment after the error.
                std::thread::sleep(Duration::from_millis(300));
                if after == AfterError::Fenced {
                    let r = w.get("/readyz");
                    if r.status != 503 || !r.body.contains("fenced") {
                        return Err(format!("{spec}: /readyz {} {}", r.status, r.body));
                    }
                } else {
                    wait_ready(&w, 200).map_err(|e| format!("{spec}: {e}"))?;
                    for topic in TOPICS {
                        let r = w.post(
                            &format!("/v1/topics/{topic}/events"),
                            r#"{"payload":{"k":"probe"}}"#,
                        );
                        if r.status != 202 {
                            return Err(format!("{spec}: {topic} after the error: {}", r.body));
                        }
                    }
                }
                w.kill9();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut d = Drive::default();
        for h in handles {
            let one = h.join().map_err(|_| "a driver panicked".to_string())?;
            d.out.acked.extend(one.out.acked);
            d.out.unknown.extend(one.out.unknown);
            d.out.failed.extend(one.out.failed);
            d.out.errors.extend(one.out.errors);
            d.commit_acked = d.commit_acked.or(one.commit_acked);
            d.commit_tried = d.commit_tried.or(one.commit_tried);
        }
        if let Some(e) = d.out.errors.first() {
            return Err(format!("{spec}: a wrong answer: {e}"));
        }
        if d.out.acked.is_empty() {
            return Err(format!("{spec}: nothing was acknowledged before it fired"));
        }
        crashloop::verify(&w).map_err(|e| format!("{spec}: {e}"))?;
        w.restart_with_env(&[]);
        after_restart(&w, p, action, &d).map_err(|e| format!("{spec}: {e}"))
    }

    /// The crash loop's invariants after the restart, and the error action's own.
    fn after_restart(w: &Weir, p: &Point, action: Action, d: &Drive) -> Result<(), String> {
        wait_ready(w, 200)?;
        crashloop::wait_caught_up(w)?;
        let mut model = Model::default();
        let new_ts = model.refresh(w, true)?;
        let retained = retained_ids(w)?;
        for (req, body) in &d.out.acked {
            // The 202 names one batch per partition; every request here has one key.
            let at = &body["offsets"][0];
            let (part, first) = (
                at["partition"].as_u64().unwrap() as u32,
                at["first"].as_u64().unwrap(),
            );
            for (i, (id, _, _)) in req.events.iter().enumerate() {
                let offset = first + i as u64;
                let found = if req.topic == "retained" {
                    match retained.get(&part) {
                        Some((start, ids)) if offset >= *start => {
                            ids.get((offset - start) as usize).map(|s| s.as_str())
                        }
                        _ => continue, // deleted by retention
                    }
                } else {
                    model
                        .ids
                        .get(id)
                        .filter(|(t, p2, o)| *t == req.topic && *p2 == part && *o as u64 == offset)
                        .map(|_| id.as_str())
                };
                if found != Some(id.as_str()) {
                    return Err(format!(
                        "acknowledged {id} at {}/{part}/{offset}: found {found:?}",
                        req.topic
                    ));
                }
            }
        }
        // A request cut by the crash: all of it or none (one key, one batch).
        for req in &d.out.unknown {
            if req.topic == "retained" {
                continue;
            }
            let there = req
                .events
                .iter()
                .filter(|(id, _, _)| model.ids.contains_key(id))
                .count();
            if there != 0 && there != req.events.len() {
                return Err(format!(
                    "{there} of the {} events of a cut request",
                    req.events.len()
                ));
            }
        }
        if action == Action::Error && p.append {
            for (req, status, body) in &d.out.failed {
                if req.topic == "retained" {
                    continue;
                }
                if let Some((id, _, _)) = req
                    .events
                    .iter()
                    .find(|(id, _, _)| model.ids.contains_key(id))
                {
                    return Err(format!(
                        "{id} of a failed append ({status} {body}) is in the log"
                    ));
                }
            }
        }
        // The group's offset: the last acknowledged commit, or one tried after it.
        let committed = w.get("/v1/groups/g/offsets/durable").json()["partitions"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["partition"] == 0))
            .and_then(|o| o["offset"].as_i64());
        if let Some(acked) = d.commit_acked
            && !committed.is_some_and(|c| c >= acked && Some(c) <= d.commit_tried)
        {
            return Err(format!(
                "group offset {committed:?}: acknowledged {acked}, last tried {:?}",
                d.commit_tried
            ));
        }
        let from = new_ts
            .iter()
            .min()
            .copied()
            .unwrap_or(now_ms())
            .div_euclid(1000)
            * 1000
            - 4000;
        Oracle::check(w, &model, from, now_ms() + 10_000)?;
        Ok(())
    }

    /// The `retained` topic's partitions: start offset and event ids from it (dense).
    fn retained_ids(w: &Weir) -> Result<HashMap<u32, (u64, Vec<String>)>, String> {
        let topic = w.get("/v1/topics/retained").json();
        let mut out = HashMap::new();
        for p in 0..2u32 {
            let start = topic["start_offsets"][p as usize].as_u64().unwrap();
            let recs = crashloop::read_from(w, "retained", p, start as usize)?;
            out.insert(p, (start, recs.into_iter().map(|r| r.id).collect()));
        }
        Ok(out)
    }

    fn run(name: &str) {
        let p = MATRIX.iter().find(|p| p.name == name).unwrap();
        let mut failures = Vec::new();
        for action in [Action::Crash, Action::Error] {
            if action == Action::Crash && !p.crash {
                continue;
            }
            if let Err(e) = case(p, action) {
                failures.push(format!("{action:?}: {e}"));
            }
        }
        assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
    }

    macro_rules! matrix_tests {
        ($($test:ident => $name:literal,)*) => {
            /// The failpoints that have a test below.
            pub(super) const TESTED: &[&str] = &[$($name),*];
            $(
                #[test]
                fn $test() {
                    run($name);
                }
            )*
        };
    }

    matrix_tests! {
        log_write => "log::write",
        log_write_after => "log::write_after",
        log_roll => "log::roll",
        log_index_write => "log::index_write",
        log_segment_create => "log::segment_create",
        log_fsync_sealed => "log::fsync_sealed",
        log_dir_fsync => "log::dir_fsync",
        log_recovery_point => "log::recovery_point",
        log_fsync => "log::fsync",
        log_fsync_after => "log::fsync_after",
        log_read_open_sealed => "log::read_open_sealed",
        log_retention_delete => "log::retention_delete",
        groups_commit => "groups::commit",
        store_commit => "store::commit",
        store_flush => "store::flush",
        disk_free => "disk::free",
        app_log_open => "app::log_open",
    }
}

/// Found by the matrix under load: a retention pass that deletes several segments and
/// fails on the first (its log file gone, its indexes not) had taken the others out of
/// the partition but left their files; a later pass deleted newer segments, so after a
/// restart the log had a hole (offsets jumping from the left-behind segments to the
/// newer ones) and `weir verify` called the data dir corrupt.
#[cfg(feature = "fail")]
#[test]
fn a_retention_delete_that_fails_half_way_leaves_no_hole_in_the_log() {
    use crate::util::Weir;
    let cfg = crate::util::config(
        "partitions = 1\nfsync = \"never\"\nsegment_size = \"1KiB\"\nretention_age = \"1s\"\n\
         default_event_type = \"x\"",
    )
    .replacen("partitions = 4\n", "", 1)
    .replacen("fsync = \"always\"\n", "", 1);
    // The first deletion fails, later ones succeed.
    let mut w = Weir::start_with_env(
        &cfg,
        &[("FAILPOINTS", "log::retention_delete=1*return->off")],
    );
    let big = format!("{{\"payload\":\"{}\"}}", "x".repeat(800));
    let post = |w: &Weir| assert_eq!(w.post("/v1/topics/events/events", &big).status, 202);
    // Three sealed segments, aged out together: one pass deletes them all, and fails on
    // the first.
    for _ in 0..4 {
        post(&w);
    }
    std::thread::sleep(std::time::Duration::from_millis(1300));
    post(&w);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !w.log_text().contains("retention could not delete segments") {
        assert!(std::time::Instant::now() < deadline, "{}", w.log_text());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        w.metric("weir_retention_errors_total", &["topic=\"events\""]),
        Some(1.0),
        "the failed pass is counted"
    );
    // Newer segments age out and go in the next passes.
    post(&w);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    post(&w);
    post(&w);
    std::thread::sleep(std::time::Duration::from_millis(300));
    w.kill9();
    crate::crashloop::verify(&w).unwrap();
    w.restart_with_env(&[]);
    let start = w.get("/v1/topics/events").json()["start_offsets"][0]
        .as_i64()
        .unwrap();
    // Read from the start, every offset once (read_from checks they are dense).
    let records = crate::crashloop::read_from(&w, "events", 0, start as usize).unwrap();
    assert_eq!(
        start + records.len() as i64,
        8,
        "the log ends with the last append"
    );
}
