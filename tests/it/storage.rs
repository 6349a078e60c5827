//! Storage faults (issue 7): fsync errors, a full disk (failpoints returning ENOSPC, and a
//! small real tmpfs filled to the last byte), and the result store (sled) failing on the
//! full disk or damaged while weir is stopped. Each test checks what a client sees (the
//! status and error code of every answer), then that nothing acknowledged is lost and
//! nothing is corrupt: `weir verify`, a restart, every 202 at the offset it named, dense
//! offsets, no event twice, and the pipeline's counts equal to the log's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::{Resp, Weir, poll_within};

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

/// Posts `n` events of `n` distinct keys `<prefix>-<i>-yyy...` (`key_len` bytes long), so
/// the pipeline's next checkpoint has many new cells to write; on a 202 adds them to
/// `acked`, each where the read-back finds it inside the ranges the answer named.
fn post_keys(w: &Weir, prefix: &str, n: usize, key_len: usize, acked: &mut Vec<Acked>) -> Resp {
    let events: Vec<(String, String)> = (0..n)
        .map(|i| {
            let key = format!("{prefix}-{i}-");
            let pad = "y".repeat(key_len.saturating_sub(key.len()));
            (format!("{prefix}-{i}"), format!("{key}{pad}"))
        })
        .collect();
    let body = events
        .iter()
        .map(|(id, key)| {
            format!(r#"{{"event_id":"{id}","timestamp":{T0},"payload":{{"k":"{key}"}}}}"#)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let r = w.post_with(
        "/v1/topics/events/events",
        &[("Content-Type", "application/x-ndjson")],
        body.as_bytes(),
    );
    if r.status != 202 {
        return r;
    }
    let j = r.json();
    assert_eq!(j["accepted"], n, "{}", r.body);
    let mut found = HashMap::new();
    for range in j["offsets"].as_array().unwrap() {
        let p = range["partition"].as_i64().unwrap();
        let (first, last) = (
            range["first"].as_i64().unwrap(),
            range["last"].as_i64().unwrap(),
        );
        let page = w.get(&format!(
            "/v1/topics/events/events?partition={p}&offset={first}&limit={}",
            last - first + 1
        ));
        assert_eq!(page.status, 200, "{}", page.body);
        for e in page.json()["events"].as_array().unwrap() {
            let id = e["event"]["event_id"].as_str().unwrap().to_string();
            found.insert(id, (p, e["offset"].as_i64().unwrap()));
        }
    }
    for (id, key) in events {
        let (partition, offset) = found
            .get(&id)
            .copied()
            .unwrap_or_else(|| panic!("{id} is not in the ranges of its 202: {}", r.body));
        acked.push(Acked {
            id,
            key,
            partition,
            offset,
        });
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
        let at = log.get(&a.id).map(|(p, o, k)| (*p, *o, k.as_str()));
        assert_eq!(
            at,
            Some((a.partition, a.offset, a.key.as_str())),
            "acknowledged {a:?}"
        );
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
        // The pipeline counts the events the log holds for the key.
        let path = format!("/v1/pipelines/counts/keys/{key}");
        poll_within(w, &path, Duration::from_secs(60), |r| {
            r.status == 200 && r.json()["window"]["values"]["count"] == n
        });
    }
}

/// `weir verify` on the stopped weir's data dir must pass.
fn verify(w: &Weir) {
    if let Err(e) = crate::crashloop::verify(w) {
        panic!("{e}");
    }
}

/// Polls `/readyz` until 200 (a pipeline is not ready until it has published once after
/// the start); panics if it says a partition is fenced.
fn wait_ready(w: &Weir, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = w.get("/readyz");
        assert!(!r.body.contains("fenced"), "{what}: {}", r.body);
        if r.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
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
        wait_ready(&w, &spec);
    }
}

/// An fsync that does not return (a stalled or failing disk: the failpoint sleeps 3 s in
/// every round, the stall bound is 300 ms) shows while it lasts: `/readyz` is 503 naming
/// the partition, `weir_fsync_running_seconds` counts up, a warning is logged; the request
/// waiting for it is answered 202 once it returns, and `/readyz` is 200 again.
#[cfg(feature = "fail")]
#[test]
fn a_stalled_fsync_shows_in_readiness_metrics_and_the_log_until_it_returns() {
    let config = r#"
[server]
listen = "127.0.0.1:0"

[[topic]]
name = "events"
partitions = 1
fsync = "always"
default_event_type = "t"
"#;
    let w = Weir::start_with_env(
        config,
        &[
            ("FAILPOINTS", "log::fsync=sleep(3000)"),
            ("WEIR_TEST_FSYNC_STALLED_MS", "300"),
        ],
    );
    wait_ready(&w, "before the stall");
    let started = Instant::now();
    let answer = std::thread::scope(|s| {
        let waiting = s.spawn(|| w.post("/v1/topics/events/events", r#"{"payload":{"n":1}}"#));
        let r = poll_within(&w, "/readyz", Duration::from_millis(2500), |r| {
            r.status == 503
        });
        assert!(
            r.body
                .contains("partition events/0: an fsync has not returned for"),
            "{}",
            r.body
        );
        let running = w.metric(
            "weir_fsync_running_seconds",
            &["topic=\"events\"", "partition=\"0\""],
        );
        assert!(running >= Some(0.3), "{running:?}");
        assert!(!waiting.is_finished(), "answered before its fsync returned");
        waiting.join().unwrap()
    });
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "answered before the fsync returned"
    );
    assert!(w.wait_log("an fsync has not returned", 1, Duration::from_secs(5)));
    assert!(w.wait_log(
        "an fsync round returned after stalling",
        1,
        Duration::from_secs(5)
    ));
    wait_ready(&w, "after the stall");
    assert_eq!(
        w.metric(
            "weir_fsync_running_seconds",
            &["topic=\"events\"", "partition=\"0\""]
        ),
        Some(0.0)
    );
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
        wait_ready(&w, &spec);
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

/// A full disk when the recovery point is written (after a roll: sealed segments, their
/// indexes and the directory already fsynced) fences nothing: the old recovery point only
/// makes a recovery scan more. Every request is acknowledged, `/readyz` stays 200, and
/// after kill -9 the restart finds everything acknowledged.
#[cfg(feature = "fail")]
#[test]
fn an_enospc_writing_the_recovery_point_fences_nothing() {
    let spec = "log::recovery_point=2*off->1*return(enospc)->off";
    let config = config("", 1, "segment_size = \"1KiB\"", "100ms");
    let mut w = Weir::start_with_env(&config, &[("FAILPOINTS", spec)]);
    let mut acked = Vec::new();
    for i in 0..60 {
        let r = post(&w, &ids("e", i, 1), ["a", "b"][i % 2], 100, &mut acked);
        assert_eq!(r.status, 202, "{}", r.body);
    }
    assert!(w.wait_log(
        "failpoint=\"log::recovery_point\" action=\"enospc\"",
        1,
        Duration::from_secs(10)
    ));
    wait_ready(&w, spec);
    w.kill9();
    verify(&w);
    w.restart_with_env(&[]);
    let log = check_log(&w, 1, &acked);
    assert_eq!(log.len(), acked.len());
    check_pipeline(&w, &log);
}

/// A tmpfs mounted for one test, unmounted when dropped (a panic too), after the weir
/// using it is gone: declare it before the `Weir`.
struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`16m`) in a fresh temp dir; `Err` says why not (not root,
    /// no CAP_SYS_ADMIN, a container).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mnt = dir.path().join("fs");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let target = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
        let options = std::ffi::CString::new(format!("size={size}")).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs {}: {}",
                mnt.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs { mnt, _dir: dir })
    }

    fn path(&self) -> &Path {
        &self.mnt
    }

    /// Bytes an unprivileged writer may still use, as weir reads them.
    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()).unwrap();
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a NUL-terminated path and room for one statvfs, filled on success.
        let st = unsafe {
            assert_eq!(libc::statvfs(path.as_ptr(), st.as_mut_ptr()), 0);
            st.assume_init()
        };
        st.f_bavail * st.f_frsize
    }

    /// Writes the file `name` until it is `max` bytes or the file system is full
    /// (ENOSPC); returns its length.
    fn ballast(&self, name: &str, max: u64) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.mnt.join(name)).unwrap();
        let chunk = vec![0x5Au8; 64 << 10];
        let mut written = 0u64;
        while written < max {
            let n = chunk.len().min((max - written) as usize);
            match f.write(&chunk[..n]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("ballast: {e}"),
            }
        }
        written
    }

    fn remove_ballast(&self) {
        for name in ["ballast0", "ballast"] {
            let _ = std::fs::remove_file(self.mnt.join(name));
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path. MNT_DETACH: unmounted even if still busy.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Polls `GET /metrics` until weir's reading of free space passes `above`: a refresh
/// (every second) has just read the file system.
fn wait_free_above(w: &Weir, above: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.metric_plain("weir_disk_free_bytes").unwrap_or(0.0) <= above as f64 {
        assert!(
            Instant::now() < deadline,
            "weir never saw {above} bytes free: {:?}",
            w.metric_plain("weir_disk_free_bytes")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A small real file system filling up (where the machine lets the test mount a tmpfs;
/// otherwise it says why and passes). Ingest is refused with 507 before the disk is full
/// (`free_space_reserve`) while reads, pipeline queries and /metrics go on. Then the file
/// system is filled to the last byte right after weir read its free space, so writes
/// meet a real ENOSPC: the ingest is answered 507, and the pipeline's checkpoint fails in
/// sled. Once the space is freed, ingest resumes and checkpoints resume by themselves,
/// without a restart. After it all: a clean stop, `weir verify`, a restart from the
/// checkpoint (no rebuild), every 202 at its offset, the pipeline equal to the log.
#[test]
fn a_small_real_file_system_filling_up_loses_and_corrupts_nothing() {
    const RESERVE: u64 = 4 << 20;
    let fs = match Tmpfs::mount("24m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("not tested here: cannot mount a tmpfs ({why})");
            return;
        }
    };
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Room for about 5 MiB of data before the 4 MiB reserve. Once the ballast goes,
    // the store reopens only with 4 MiB beyond the reserve (`REOPEN_FREE_BYTES`), and
    // each active segment holds up to its size (512 KiB here) allocated ahead: 24 MiB
    // leave that room with a margin however many rounds the full disk takes below.
    fs.ballast("ballast0", 15 << 20);
    let config = config(
        "free_space_reserve = \"4MiB\"",
        2,
        "segment_size = \"512KiB\"",
        "2s",
    );
    let mut w = Weir::start_on(&data, &config, &[]);
    let mut acked = Vec::new();
    let keys = ["k0", "k1", "k2", "k3"];

    // 1. The reserve: 507 before the disk is full.
    let mut refused = None;
    for i in 0..2000 {
        let r = post(&w, &ids("a", i * 20, 20), keys[i % 4], 2000, &mut acked);
        if r.status != 202 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the reserve was never reached");
    assert_eq!((r.status, r.code().as_str()), (507, "insufficient_storage"));
    assert_eq!(
        r.json()["error"]["free_space_reserve"],
        RESERVE,
        "{}",
        r.body
    );
    assert!(r.json()["error"]["free_bytes"].is_u64(), "{}", r.body);
    assert!(fs.free() > RESERVE / 2, "refused before the disk is full");
    assert!(
        acked.len() > 1000,
        "{} events before the reserve",
        acked.len()
    );
    // Reads, queries and metrics go on.
    let log = check_log(&w, 2, &acked);
    check_pipeline(&w, &log);
    assert_eq!(w.get("/metrics").status, 200);
    // The budget between two readings refused the last request: the disk is within
    // about a request of the reserve, on either side.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.metric_plain("weir_disk_free_bytes") >= Some((RESERVE + (1 << 20)) as f64) {
        assert!(
            Instant::now() < deadline,
            "free space never read near the reserve"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // 2. The disk full to the last byte, right after weir read it: real ENOSPCs.
    let (mut enospc, mut sled_failed) = (false, false);
    for attempt in 0..30 {
        if enospc && sled_failed {
            break;
        }
        fs.remove_ballast();
        wait_free_above(&w, RESERVE + (2 << 20));
        // Two changes for the pipeline: the first is checkpointed at once (none for 2 s),
        // the second, 200 new keys (about 100 KiB of cells), by the next checkpoint, 2 s
        // later, when the disk is full.
        let r = post(&w, &ids(&format!("b{attempt}"), 0, 1), "k0", 10, &mut acked);
        assert_eq!(r.status, 202, "{}", r.body);
        std::thread::sleep(Duration::from_millis(20));
        let r = post_keys(&w, &format!("n{attempt}"), 200, 500, &mut acked);
        assert_eq!(r.status, 202, "{}", r.body);
        fs.ballast("ballast", u64::MAX);
        // Full: less than one batch left (weir may free a page or two meanwhile).
        assert!(
            fs.free() < 64 << 10,
            "the file system is full: {}",
            fs.free()
        );
        // 600 KB: more than the space a segment is allocated ahead (its size, 512 KiB
        // here) and than a roll's cut of it can free, so the write itself meets ENOSPC.
        let r = post(
            &w,
            &ids(&format!("c{attempt}"), 0, 300),
            "k1",
            2000,
            &mut acked,
        );
        match (r.status, r.json()["error"]["free_bytes"].is_null()) {
            (507, true) => {
                assert_eq!(r.code(), "insufficient_storage", "{}", r.body);
                assert!(r.body.contains("No space left on device"), "{}", r.body);
                enospc = true;
            }
            (507, false) => {} // weir read the full disk first: the reserve refused it
            (202, _) => {}
            _ => panic!("a write on a full disk: {} {}", r.status, r.body),
        }
        sled_failed = sled_failed || w.wait_log("checkpoint failed", 1, Duration::from_secs(5));
        // Everything acknowledged is still there, and nothing is fenced.
        let r = w.get("/readyz");
        assert!(!r.body.contains("fenced"), "{}", r.body);
    }
    assert!(enospc, "no ingest met a real ENOSPC");
    assert!(sled_failed, "no checkpoint met a real ENOSPC");
    assert!(
        w.metric(
            "weir_pipeline_checkpoint_failures_total",
            &["pipeline=\"counts\""]
        ) >= Some(1.0),
        "the failed checkpoints are counted"
    );
    // On the full disk, with sled refusing writes: reads, queries and metrics go on,
    // ingest is refused with 507.
    let log = check_log(&w, 2, &acked);
    check_pipeline(&w, &log);
    assert_eq!(w.get("/metrics").status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.metric_plain("weir_disk_free_bytes") >= Some(RESERVE as f64) {
        assert!(Instant::now() < deadline, "the full disk was never read");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = post(&w, &ids("d", 0, 1), "k2", 10, &mut acked);
    assert_eq!(
        (r.status, r.code().as_str()),
        (507, "insufficient_storage"),
        "{}",
        r.body
    );

    // 3. Space freed: ingest and checkpoints resume by themselves.
    let checkpoints = |w: &Weir| {
        w.metric(
            "weir_pipeline_checkpoint_duration_seconds_count",
            &["pipeline=\"counts\""],
        )
        .unwrap_or(0.0)
    };
    let before = checkpoints(&w);
    fs.remove_ballast();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        let r = post(&w, &ids("e", i, 1), keys[i % 4], 10, &mut acked);
        if r.status == 202 {
            break;
        }
        assert_eq!(r.status, 507, "{}", r.body);
        assert!(
            Instant::now() < deadline,
            "ingest did not resume: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(50));
        i += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoints(&w) <= before {
        assert!(Instant::now() < deadline, "checkpoints did not resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..8 {
        let r = post(&w, &ids("f", i * 5, 5), keys[i % 4], 100, &mut acked);
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let log = check_log(&w, 2, &acked);
    check_pipeline(&w, &log);

    // 4. Nothing corrupt: a clean stop, verify, a restart from the checkpoint.
    assert!(w.stop().success(), "a clean stop:\n{}", w.log_text());
    verify(&w);
    w.restart();
    assert!(
        !w.log_text().contains("no checkpoint of this definition"),
        "restored from its checkpoint, not rebuilt"
    );
    assert!(!data.join("store.unreadable").exists());
    let log = check_log(&w, 2, &acked);
    check_pipeline(&w, &log);
    wait_ready(&w, "after the restart");
    w.kill9();
    drop(w);
    drop(fs);
}

/// The result store damaged while weir is stopped, one file at a time (the whole store
/// deleted, and every file overwritten, are `pipelines::
/// a_deleted_or_damaged_result_store_is_rebuilt_from_the_log`): sled's log file cut to
/// half or to nothing, a block of it overwritten with garbage, its config or its snapshot
/// deleted. Each time weir starts, and the pipeline answers what the log says, for the
/// open windows and the closed ones (rows kept only in the store): whatever sled still
/// reads is either right or rebuilt from the log, never served wrong.
#[test]
fn a_sled_file_cut_overwritten_or_deleted_is_rebuilt_from_the_log() {
    const HOUR: i64 = 3_600_000;
    let mut w = Weir::start(&config("", 2, "", "50ms"));
    // Closed windows (at T0) and open ones (at T0 + 2 h) for four keys.
    let mut want: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (n, t) in [(400, T0), (40, T0 + 2 * HOUR)] {
        let body = (0..n)
            .map(|i| {
                let key = format!("k{}", i % 4);
                let counts = want.entry(key.clone()).or_insert_with(|| vec![0, 0]);
                counts[usize::from(t != T0)] += 1;
                format!(r#"{{"event_id":"{t}-{i}","timestamp":{t},"payload":{{"k":"{key}"}}}}"#)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let r = w.post_with(
            "/v1/topics/events/events",
            &[("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 202, "{}", r.body);
    }
    // Each key's windows newest first: the open one, then the closed one, final.
    let answers_right = |w: &Weir, case: &str| {
        for (key, counts) in &want {
            let path = format!("/v1/pipelines/counts/keys/{key}?windows=5");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let r = w.get(&path);
                let got: Option<Vec<(i64, bool)>> = (r.status == 200).then(|| {
                    r.json()["windows"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| (x["values"]["count"].as_i64().unwrap(), x["final"] == true))
                        .collect()
                });
                if got == Some(vec![(counts[1], false), (counts[0], true)]) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{case}: {key} should count {counts:?}: {} {}",
                    r.status,
                    r.body
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    answers_right(&w, "before");
    let store = w.data_dir().join("store");
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 5] = [
        ("db cut to half", |s| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("db"))
                .unwrap();
            f.set_len(f.metadata().unwrap().len() / 2).unwrap();
        }),
        ("db cut to nothing", |s| {
            std::fs::File::create(s.join("db")).unwrap();
        }),
        ("4 KiB of garbage in the middle of db", |s| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("db"))
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.write_all_at(&[0xA5; 4096], len / 2).unwrap();
        }),
        ("conf deleted", |s| {
            std::fs::remove_file(s.join("conf")).unwrap()
        }),
        ("snapshots deleted", |s| {
            for entry in std::fs::read_dir(s).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("snap.")
                {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }),
    ];
    for (case, damage) in cases {
        assert!(w.stop().success(), "{case}: a clean stop");
        damage(&store);
        w.restart();
        answers_right(&w, case);
        wait_ready(&w, case);
    }
}
