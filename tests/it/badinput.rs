//! Bad input: every file of the JSONTestSuite corpus (Nicolas Seriot's parsing tests,
//! `test_parsing/`) posted as a request body to the real binary.
//!
//! The suite is read where it lies, never copied into the repository: `$WEIR_JSONTESTSUITE`
//! if set, else `../shared/testdata/JSONTestSuite` beside the checkout (for a git worktree,
//! beside the main checkout). Without it the test fails, naming the paths it tried: a test
//! that passes without its corpus proves nothing.
//!
//! Each file goes to two topics. `wrapped` (`wrap = true`, a `default_event_type`) is the
//! config under which any JSON object is an event: a bare object becomes the payload, so
//! the `y_` expectations are judged there. `plain` takes only envelopes, so most objects
//! are refused there (`missing_payload`); it shows the refusals do not depend on the
//! topic. Expectations, per DESIGN.md's body forms (an object, a non-empty array of
//! objects, or objects one after another):
//!
//! - `n_` (must be rejected by a JSON parser): 400 on both topics, nothing appended;
//! - `y_` whose top-level value is an object or a non-empty array of objects: 202 on
//!   `wrapped`, as many events accepted as objects, each stored with the object as its
//!   payload (read back and compared);
//! - other `y_` (a scalar, an empty array, an array of non-objects): 400, it is JSON but
//!   not an event body;
//! - `i_` (parsers may accept or refuse): 202 or 400;
//! - a file that is not UTF-8: 400;
//! - never a 5xx, never a dropped connection, and weir is still up at the end.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Weir, try_request};

const VAR: &str = "WEIR_JSONTESTSUITE";

/// Where the suite is, or a panic naming every place tried.
fn suite_dir() -> PathBuf {
    let mut tried = Vec::new();
    if let Some(dir) = std::env::var_os(VAR) {
        let dir = PathBuf::from(dir);
        if dir.join("test_parsing").is_dir() {
            return dir;
        }
        panic!(
            "{VAR}={} has no test_parsing/ directory (the JSONTestSuite checkout's root is expected)",
            dir.display()
        );
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let beside = |root: &Path| root.join("../shared/testdata/JSONTestSuite");
    tried.push(beside(manifest));
    // In a git worktree the main checkout holds the common git dir; `../shared` is
    // relative to that checkout.
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-common-dir"])
        .current_dir(manifest)
        .output()
        && out.status.success()
    {
        let common = manifest.join(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(main) = common.parent() {
            tried.push(beside(main));
        }
    }
    for dir in &tried {
        if dir.join("test_parsing").is_dir() {
            return dir.clone();
        }
    }
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    panic!(
        "the JSONTestSuite corpus was not found; tried {} (each should hold test_parsing/). \
         Set {VAR} to the suite's directory.",
        tried.join(", ")
    );
}

/// What a file's text is, judged independently of weir: `Some(objects)` when its
/// top-level value is an object or a non-empty array of objects.
fn objects_in(bytes: &[u8]) -> Option<Vec<serde_json::Value>> {
    match serde_json::from_slice::<serde_json::Value>(bytes).ok()? {
        object @ serde_json::Value::Object(_) => Some(vec![object]),
        serde_json::Value::Array(items)
            if !items.is_empty() && items.iter().all(serde_json::Value::is_object) =>
        {
            Some(items)
        }
        _ => None,
    }
}

/// The payloads of the events a 202 named, read back in offset order.
fn payloads_stored(w: &Weir, topic: &str, accepted: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for range in accepted["offsets"].as_array().unwrap() {
        let (first, last) = (
            range["first"].as_i64().unwrap(),
            range["last"].as_i64().unwrap(),
        );
        let r = w.get(&format!(
            "/v1/topics/{topic}/events?partition={}&offset={first}&limit={}",
            range["partition"],
            last - first + 1
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        let events = r.json()["events"].as_array().unwrap().clone();
        out.extend(events.into_iter().map(|e| e["event"]["payload"].clone()));
    }
    out
}

fn end_offsets(w: &Weir, topic: &str) -> i64 {
    let r = w.get(&format!("/v1/topics/{topic}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["end_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum()
}

#[derive(Default, Debug)]
struct Counts {
    files: usize,
    n_rejected: usize,
    y_accepted: usize,
    y_rejected_not_events: usize,
    i_accepted: usize,
    i_rejected: usize,
    not_utf8: usize,
}

#[test]
fn every_jsontestsuite_file_is_accepted_or_refused_as_the_design_says() {
    let dir = suite_dir().join("test_parsing");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() > 300,
        "{} holds only {} files: not the JSONTestSuite",
        dir.display(),
        files.len()
    );

    let w = Weir::start(
        r#"
[server]
listen = "127.0.0.1:0"
max_body = "1MiB"

[[topic]]
name = "wrapped"
partitions = 2
fsync = "never"
wrap = true
default_event_type = "jsontestsuite"

[[topic]]
name = "plain"
partitions = 2
fsync = "never"
"#,
    );
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let body = std::fs::read(path).unwrap();
        let utf8 = std::str::from_utf8(&body).is_ok();
        counts.files += 1;
        counts.not_utf8 += usize::from(!utf8);
        for topic in ["wrapped", "plain"] {
            let before = end_offsets(&w, topic);
            let r = match try_request(
                &w.addr,
                "POST",
                &format!("/v1/topics/{topic}/events"),
                &[("Content-Type", "application/json")],
                &body,
            ) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{name} to {topic}: no answer ({e})"));
                    continue;
                }
            };
            let after = end_offsets(&w, topic);
            let mut fail = |why: String| failures.push(format!("{name} to {topic}: {why}"));
            if r.status >= 500 {
                fail(format!("{} {}", r.status, r.body));
                continue;
            }
            if r.status == 400 && after != before {
                fail(format!(
                    "400 but the end offsets moved from {before} to {after}"
                ));
            }
            if !utf8 && r.status != 400 {
                fail(format!("not UTF-8 but {} {}", r.status, r.body));
            }
            match name.as_bytes()[0] {
                b'n' => {
                    if r.status == 400 {
                        counts.n_rejected += usize::from(topic == "wrapped");
                    } else {
                        fail(format!("{} {} (expected 400)", r.status, r.body));
                    }
                }
                b'y' => match (objects_in(&body), topic) {
                    (Some(objects), "wrapped") => {
                        let n = objects.len();
                        if r.status == 202
                            && r.json()["accepted"] == n
                            && after == before + n as i64
                        {
                            counts.y_accepted += 1;
                            // Stored as sent: each object is its event's payload.
                            let stored = payloads_stored(&w, topic, &r.json());
                            if stored != objects {
                                fail(format!("stored payloads {stored:?}, sent {objects:?}"));
                            }
                        } else {
                            fail(format!(
                                "{} {} (expected 202 with {n} accepted; end offsets {before} to {after})",
                                r.status, r.body
                            ));
                        }
                    }
                    (Some(_), _) => {
                        if r.status != 202 && r.status != 400 {
                            fail(format!("{} {} (expected 202 or 400)", r.status, r.body));
                        }
                    }
                    (None, _) => {
                        if r.status == 400 {
                            counts.y_rejected_not_events += usize::from(topic == "wrapped");
                        } else {
                            fail(format!(
                                "{} {} (JSON but not an object nor an array of objects: expected 400)",
                                r.status, r.body
                            ));
                        }
                    }
                },
                _ => match r.status {
                    202 => counts.i_accepted += usize::from(topic == "wrapped"),
                    400 => counts.i_rejected += usize::from(topic == "wrapped"),
                    s => fail(format!("{s} {} (expected 202 or 400)", r.body)),
                },
            }
        }
    }
    eprintln!("JSONTestSuite from {}: {counts:?}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {} files were not answered as expected:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    assert!(
        counts.n_rejected > 150 && counts.y_accepted > 10,
        "{counts:?}"
    );
    // Still serving after all of it.
    assert_eq!(w.get("/readyz").status, 200);
}
