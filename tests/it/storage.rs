//! Storage faults (issue 7): fsync errors, a full disk (failpoints returning ENOSPC, and a
//! small real tmpfs filled to the last byte), and the result store (sled) failing on the
//! full disk or damaged while weir is stopped. Each test checks what a client sees (the
//! status and error code of every answer), then that nothing acknowledged is lost and
//! nothing is corrupt: `weir verify`, a restart, every 202 at the offset it named, dense
//! offsets, no event twice, and the pipeline's counts equal to the log's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::{Resp, Weir, bin};

/// The event time of every event: the pipeline's one-hour windows never close (nothing
/// later arrives), so their cells are checkpointed again and again.
const T0: i64 = 1_700_000_000_000;

/// A topic `events` of `partitions` partitions under `fsync = "always"` with the key at
/// `/payload/k`, and a pipeline `counts` counting events per key in one-hour windows,
/// checkpointed every `checkpoint`. `storage` goes in `[storage]`; `topic` in the topic.
fn config(storage: &str, partitions: u32, topic: &str, checkpoint: &str) -> String {
    format!(
        r#"
[storage]
{storage}

[server]
listen = "127.0.0.1:0"
max_body = "1MiB"

[[topic]]
name = "events"
partitions = {partitions}
fsync = "always"
key_field = "/payload/k"
default_event_type = "t"
max_event_age = "36500d"
{topic}

[[pipeline]]
name = "counts"
source = "events"
group_by = ["/payload/k"]
window = {{ kind = "tumbling", size = "1h" }}
checkpoint_interval = "{checkpoint}"

[[pipeline.aggregate]]
name = "count"
fn = "count"
"#
    )
}

/// An event acknowledged by a 202: where it was said to be.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    key: String,
    partition: i64,
    offset: i64,
}

/// NDJSON of events with these ids, all of key `key` (one partition: a request is then
/// all or nothing), each padded with `pad` bytes.
fn body(ids: &[String], key: &str, pad: usize) -> String {
    let pad = "x".repeat(pad);
    ids.iter()
        .map(|id| {
            format!(
                r#"{{"event_id":"{id}","timestamp":{T0},"payload":{{"k":"{key}","pad":"{pad}"}}}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Posts the events; on a 202 checks that all were accepted (or the one event retried
/// was a duplicate) and adds them to `acked` at the offsets the answer named.
fn post(w: &Weir, ids: &[String], key: &str, pad: usize, acked: &mut Vec<Acked>) -> Resp {
    let r = w.post_with(
        "/v1/topics/events/events",
        &[("Content-Type", "application/x-ndjson")],
        body(ids, key, pad).as_bytes(),
    );
    if r.status == 202 {
        let j = r.json();
        let (accepted, duplicates) = (j["accepted"].as_u64(), j["duplicates"].as_u64());
        if duplicates != Some(0) {
            // A retry of an event already there: nothing new to place.
            assert_eq!(ids.len(), 1, "{}", r.body);
            assert_eq!((accepted, duplicates), (Some(0), Some(1)), "{}", r.body);
            return r;
        }
        assert_eq!(accepted, Some(ids.len() as u64), "{}", r.body);
        let range = &j["offsets"][0];
        let (partition, first) = (
            range["partition"].as_i64().unwrap(),
            range["first"].as_i64().unwrap(),
        );
        assert_eq!(
            range["last"].as_i64().unwrap() - first + 1,
            ids.len() as i64
        );
        for (i, id) in ids.iter().enumerate() {
            acked.push(Acked {
                id: id.clone(),
                key: key.to_string(),
                partition,
                offset: first + i as i64,
            });
        }
    }
    r
}

/// Reads the whole log back and checks it: offsets dense from 0 in each partition, no
/// event_id twice, every acknowledged event at the offset its 202 named. Returns the
/// events of the log by id (partition, offset, key).
fn check_log(w: &Weir, partitions: u32, acked: &[Acked]) -> HashMap<String, (i64, i64, String)> {
    let mut log = HashMap::new();
    for p in 0..partitions {
        for (i, r) in w.read_all("events", p).iter().enumerate() {
            assert_eq!(r["offset"].as_i64(), Some(i as i64), "partition {p}: {r}");
            let id = r["event"]["event_id"].as_str().unwrap().to_string();
            let key = r["key"].as_str().unwrap().to_string();
            let before = log.insert(id.clone(), (i64::from(p), i as i64, key));
            assert!(before.is_none(), "{id} is in the log twice");
        }
    }
    for a in acked {
        let at = log.get(&a.id).map(|(p, o, _)| (*p, *o));
        assert_eq!(at, Some((a.partition, a.offset)), "acknowledged {a:?}");
    }
    log
}

/// Waits until the pipeline's count of every key equals the log's.
fn check_pipeline(w: &Weir, log: &HashMap<String, (i64, i64, String)>) {
    let mut want: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, _, key) in log.values() {
        *want.entry(key).or_default() += 1;
    }
    for (key, n) in want {
        let path = format!("/v1/pipelines/counts/keys/{key}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = w.get(&path);
            if r.status == 200 && r.json()["window"]["values"]["count"] == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key}: {n} events in the log, the pipeline says {} {}",
                r.status,
                r.body
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `weir verify` on the stopped weir's data dir must pass.
fn verify(w: &Weir) {
    if let Err(e) = crate::crashloop::verify(w) {
        panic!("{e}");
    }
}

fn ids(prefix: &str, from: usize, n: usize) -> Vec<String> {
    (from..from + n).map(|i| format!("{prefix}-{i}")).collect()
}

/// An fsync that fails (EIO, or ENOSPC, which some file systems report on fsync) is
/// never acknowledged: the request waiting for it gets 503 `partition_fenced`, so do the
/// ones after, `/readyz` says the partition is fenced, and after a restart every
/// acknowledged event is where its 202 said. The event whose fsync failed is in the log
/// at most once, and a retry with its event_id leaves it there exactly once.
#[cfg(feature = "fail")]
#[test]
fn an_fsync_error_is_never_acknowledged_and_fences_the_partition() {
    for errno in ["eio", "enospc"] {
        let spec = format!("log::fsync=4*off->1*return({errno})->off");
        let mut w = Weir::start_with_env(
            &config("", 1, "", "100ms"),
            &[("FAILPOINTS", spec.as_str())],
        );
        let mut acked = Vec::new();
        let mut failed = None;
        for i in 0..50 {
            let id = vec![format!("{errno}-{i}")];
            let r = post(&w, &id, "a", 10, &mut acked);
            if r.status != 202 {
                assert_eq!(
                    (r.status, r.code().as_str()),
                    (503, "partition_fenced"),
                    "{spec}: {}",
                    r.body
                );
                failed = Some(id);
                break;
            }
        }
        let failed = failed.unwrap_or_else(|| panic!("{spec}: no request failed"));
        assert!(
            w.wait_log(
                &format!("failpoint=\"log::fsync\" action=\"{errno}\""),
                1,
                Duration::from_secs(10)
            ),
            "{spec}: the failpoint did not fire"
        );
        // Fenced: later writes are refused, reads go on and show only what was durable.
        let r = post(&w, &ids(errno, 100, 1), "a", 10, &mut acked);
        assert_eq!((r.status, r.code().as_str()), (503, "partition_fenced"));
        let r = w.get("/readyz");
        assert!(r.status == 503 && r.body.contains("fenced"), "{}", r.body);
        assert_eq!(w.read_all("events", 0).len(), acked.len(), "{spec}");
        assert!(
            w.metric("weir_fsync_errors_total", &["topic=\"events\""]) >= Some(1.0),
            "{spec}"
        );
        w.kill9();
        verify(&w);
        w.restart_with_env(&[]);
        let log = check_log(&w, 1, &acked);
        assert!(log.len() <= acked.len() + 1, "{spec}");
        let r = post(&w, &failed, "a", 10, &mut Vec::new());
        assert_eq!(r.status, 202, "{spec}: the retry: {}", r.body);
        let log = check_log(&w, 1, &acked);
        assert!(log.contains_key(&failed[0]), "{spec}: retried, so there");
        check_pipeline(&w, &log);
        assert_eq!(w.get("/readyz").status, 200);
    }
}

/// A write that fails with ENOSPC (the batch's pwrite, or after it, or the index files
/// or the next segment at a roll) is answered 507 `insufficient_storage`, not 500: the
/// batch is cut, nothing of it is kept (a retry with the same event_id is accepted, not
/// a duplicate), and weir goes on: the next request is acknowledged, `/readyz` stays 200.
#[cfg(feature = "fail")]
#[test]
fn an_enospc_write_is_answered_507_and_ingest_goes_on() {
    for point in [
        "log::write",
        "log::write_after",
        "log::index_write",
        "log::segment_create",
    ] {
        let spec = format!("{point}=3*off->1*return(enospc)->off");
        let config = config("", 1, "segment_size = \"1KiB\"", "100ms");
        let mut w = Weir::start_with_env(&config, &[("FAILPOINTS", spec.as_str())]);
        let mut acked = Vec::new();
        let mut failed = None;
        for i in 0..200 {
            let id = vec![format!("e-{i}")];
            let key = ["a", "b", "c"][i % 3];
            let r = post(&w, &id, key, 100, &mut acked);
            if r.status != 202 {
                assert_eq!(
                    (r.status, r.code().as_str()),
                    (507, "insufficient_storage"),
                    "{spec}: {}",
                    r.body
                );
                let message = r.json()["error"]["message"].as_str().unwrap().to_string();
                assert!(message.contains("No space left on device"), "{message}");
                failed = Some((id, key));
                break;
            }
        }
        let (failed, key) = failed.unwrap_or_else(|| panic!("{spec}: no request failed"));
        assert!(w.wait_log(
            &format!("failpoint=\"{point}\" action=\"enospc\""),
            1,
            Duration::from_secs(10)
        ));
        assert_eq!(w.get("/readyz").status, 200, "{spec}: not fenced");
        for i in 0..5 {
            let r = post(&w, &ids("after", i, 1), "a", 100, &mut acked);
            assert_eq!(r.status, 202, "{spec}: after the error: {}", r.body);
        }
        let log = check_log(&w, 1, &acked);
        assert!(
            !log.contains_key(&failed[0]),
            "{spec}: the failed event is not kept"
        );
        let r = post(&w, &failed, key, 100, &mut acked);
        assert_eq!(r.status, 202, "{spec}: the retry: {}", r.body);
        assert_eq!(r.json()["duplicates"], 0, "{spec}");
        let log = check_log(&w, 1, &acked);
        check_pipeline(&w, &log);
        assert!(w.stop().success(), "{spec}: a clean stop");
        verify(&w);
        w.restart_with_env(&[]);
        let log = check_log(&w, 1, &acked);
        check_pipeline(&w, &log);
    }
}
