//! SIGTERM and SIGHUP: the drain (503 for new writes, in-flight requests finish, exit 0
//! within `shutdown_grace`, a clean next start) and reloading the config file.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{Weir, config, config_with, request};

/// Posts batches of uniquely-id'd events until `stop`, recording the ids of every 202.
fn producer(addr: String, client: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<String> = (0..20).map(|i| format!("c{client}-{seq}-{i}")).collect();
        seq += 1;
        let body: String = ids
            .iter()
            .map(|id| format!("{{\"event_id\":\"{id}\",\"key\":\"{id}\",\"payload\":1}}\n"))
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
            return; // the listener is gone: weir has stopped
        };
        match r.status {
            202 => acked.lock().unwrap().extend(ids),
            503 => assert_eq!(r.code(), "shutting_down", "{}", r.body),
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
}

#[test]
fn sigterm_during_ingest_keeps_every_acknowledged_event_and_the_next_start_is_clean() {
    let mut w = Weir::start(&config(
        "segment_size = \"64KiB\"\ndefault_event_type = \"x\"",
    ));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|c| {
            let (addr, stop, acked) = (w.addr.clone(), Arc::clone(&stop), Arc::clone(&acked));
            std::thread::spawn(move || producer(addr, c, stop, acked))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(15)).expect("weir exits");
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().expect("producer");
    }
    assert!(status.success(), "{status:?}\n{}", w.log_text());
    assert!(w.log_text().contains("clean shutdown"), "{}", w.log_text());

    w.restart();
    assert_eq!(w.open_field("clean"), "true", "{}", w.log_text());
    // A clean start reads only what follows each active segment's last index entry
    // (one entry per 4 KiB), not the segments themselves.
    let scanned: u64 = w.open_field("scanned_bytes").parse().unwrap();
    let total = w.get("/v1/topics/events").json()["bytes"].as_u64().unwrap();
    assert!(
        scanned <= 4 * 8192 && scanned < total,
        "scanned {scanned} of {total} bytes"
    );
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "producers got acknowledgements");
    let mut count: HashMap<String, usize> = HashMap::new();
    for p in 0..4 {
        for r in w.read_all("events", p) {
            let id = r["event"]["event_id"].as_str().unwrap().to_string();
            *count.entry(id).or_default() += 1;
        }
    }
    for id in &acked {
        assert_eq!(count.get(id), Some(&1), "acknowledged {id} exactly once");
    }
}

/// Sends the head and the first `sent` bytes of an ingest of `body`; the rest later.
fn slow_ingest(addr: &str, body: &str, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/topics/events/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body.as_bytes()[..sent]).unwrap();
    s
}

/// Posts a small event until the answer is 503 (the drain has begun); that answer.
fn post_until_refused(w: &Weir) -> crate::util::Resp {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = w.post("/v1/topics/events/events", r#"{"payload":"probe"}"#);
        if r.status != 202 {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "ingest never refused after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn during_the_drain_new_ingest_gets_503_in_flight_requests_finish_idle_connections_close() {
    let cfg = config_with(
        "shutdown_grace = \"20s\"\nbody_timeout = \"30s\"",
        "default_event_type = \"x\"",
    );
    let mut w = Weir::start(&cfg);
    // A kept-alive connection that has served one request and sits idle.
    let mut idle = TcpStream::connect(&w.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // An ingest whose body is still arriving: in flight when the drain begins.
    let body = r#"{"event_id":"slow-1","payload":"in flight"}"#;
    let mut slow = slow_ingest(&w.addr, body, 10);
    // A connection accepted before the drain whose request is sent only after it began.
    let mut fresh = TcpStream::connect(&w.addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    w.signal(libc::SIGTERM);
    let r = post_until_refused(&w);
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "shutting_down"),
        "{}",
        r.body
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    // It is answered, not reset, and told the connection closes.
    let probe = r#"{"payload":"late"}"#;
    let head = format!(
        "POST /v1/topics/events/events HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{probe}",
        probe.len()
    );
    fresh.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    fresh.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.contains("shutting_down") && answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(w.get("/readyz").status, 503);
    // The idle kept-alive connection is closed, not left to hang.
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "idle connection closed: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        w.wait_exit(Duration::from_millis(300)).is_none(),
        "the drain waits for the in-flight request"
    );

    slow.write_all(&body.as_bytes()[10..]).unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let status = w
        .wait_exit(Duration::from_secs(10))
        .expect("weir exits once drained");
    assert!(status.success(), "{status:?}\n{}", w.log_text());
    assert!(started.elapsed() < Duration::from_secs(10));

    w.restart();
    assert_eq!(w.open_field("clean"), "true");
    let ids: Vec<String> = (0..4)
        .flat_map(|p| w.read_all("events", p))
        .filter_map(|r| r["event"]["event_id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.contains(&"slow-1".to_string()), "{ids:?}");
}

#[test]
fn exit_within_shutdown_grace_despite_streams_long_polls_and_a_stuck_client() {
    let cfg = config_with(
        "shutdown_grace = \"2s\"\nbody_timeout = \"60s\"",
        "default_event_type = \"x\"",
    );
    let mut w = Weir::start(&cfg);
    let mut sse = w.sse("/v1/topics/events/stream?from=earliest", &[]);
    assert_eq!(sse.status, 200);
    let addr = w.addr.clone();
    let poll = std::thread::spawn(move || {
        request(
            &addr,
            "GET",
            "/v1/topics/events/events?cursor=latest&wait_ms=30000",
            &[],
            b"",
        )
    });
    // A client that never sends the rest of its body.
    let _stuck = slow_ingest(&w.addr, r#"{"payload":"never finished"}"#, 5);
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(10)).expect("weir exits");
    let took = started.elapsed();
    assert!(status.success(), "{status:?}\n{}", w.log_text());
    // The stuck client had the grace (2 s), then the final checkpoint and fsync: well
    // before its body_timeout (60 s) or the long poll's wait (30 s).
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "exit took {took:?}"
    );
    assert!(sse.wait_end(Duration::from_secs(1)), "the stream ended");
    let r = poll.join().expect("long poll answered");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        w.log_text().contains("after the shutdown grace"),
        "{}",
        w.log_text()
    );

    w.restart();
    assert_eq!(w.open_field("clean"), "true");
}

/// Sends SIGHUP and waits for the `n`th reload outcome (ok or rejected) of this run.
fn reload(w: &Weir, n: usize) {
    w.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = w.log_text();
        let done =
            log.matches("config reloaded").count() + log.matches("config reload rejected").count();
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reload {n} never finished:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const CLICKS: &str = r#"
[[topic]]
name = "clicks"
partitions = 2
wrap = true
default_event_type = "page.click"

[[pipeline]]
name = "page_views"
source = "clicks"
group_by = ["/payload/page_id"]
window = { kind = "tumbling", size = "1m" }

[[pipeline.aggregate]]
name = "count"
fn = "count"

[[route]]
method = "POST"
path = "/click"
topic = "clicks"
response = "seed"

[[route]]
method = "GET"
path = "/page/{page_id}/count"
pipeline = "page_views"
key = "page_id"
aggregate = "count"
window = "latest"
response = "seed"
"#;

#[test]
fn sighup_adds_a_topic_a_pipeline_and_routes_that_answer() {
    let mut w = Weir::start(&config("default_event_type = \"x\""));
    assert_eq!(w.post("/click", "{}").status, 404);
    w.edit_config(|c| format!("{c}\n{CLICKS}"));
    reload(&w, 1);
    assert_eq!(
        w.metric("weir_config_reloads_total", &["result=\"ok\""]),
        Some(1.0)
    );

    let now = crate::util::now_ms();
    let r = w.post(
        "/click",
        &format!(r#"{{"page_id":"p-1","user_id":"u","timestamp":{now}}}"#),
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"status":"accepted"}"#)
    );
    assert_eq!(w.get("/v1/topics/clicks").json()["partitions"], 2);
    // The new pipeline reads the new topic and the new GET route answers from it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = w.get("/page/p-1/count");
        assert_eq!(r.status, 200, "{}", r.body);
        if r.json()["count"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new pipeline never counted: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let names: Vec<String> = w.get("/v1/pipelines").json()["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["page_views"]);

    // What was added is there after a clean restart from the same file.
    assert!(w.stop().success());
    w.restart();
    assert_eq!(
        w.read_all("clicks", 0).len() + w.read_all("clicks", 1).len(),
        1
    );
}

#[test]
fn sighup_applies_live_limits_and_keeps_immutable_keys_naming_them() {
    let mut w = Weir::start(&config("default_event_type = \"x\""));
    let big = format!(r#"{{"payload":"{}"}}"#, "x".repeat(2000));
    assert_eq!(w.post("/v1/topics/events/events", &big).status, 202);
    w.edit_config(|c| {
        c.replace(
            "max_body = \"1MiB\"",
            "max_body = \"1KiB\"\nmax_inflight = \"1KiB\"",
        )
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
        .replace("partitions = 4", "partitions = 8")
        .replace("fsync = \"always\"", "fsync = \"never\"")
            + "\n[log]\nlevel = \"warn\"\n"
    });
    reload(&w, 1);
    let log = w.log_text();
    // RUST_LOG (set by the test harness) wins over [log] level, and the reload says so.
    assert!(
        log.lines()
            .any(|l| l.contains("log.level not applied") && l.contains("RUST_LOG")),
        "{log}"
    );
    let warning = log
        .lines()
        .find(|l| l.contains("cannot change while running"))
        .unwrap_or_else(|| panic!("no warning naming the kept keys:\n{log}"));
    for key in [
        "server.listen",
        r#"topic["events"].partitions"#,
        r#"topic["events"].fsync"#,
    ] {
        assert!(warning.contains(key), "{key} not in {warning}");
    }
    // The live limit is in force; the kept keys keep their running values.
    let r = w.post("/v1/topics/events/events", &big);
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "body_too_large"),
        "{}",
        r.body
    );
    assert_eq!(w.get("/v1/topics/events").json()["partitions"], 4);
    let r = w.post("/v1/topics/events/events", r#"{"payload":1}"#);
    assert_eq!(r.status, 202);
    assert_eq!(r.header("weir-durability"), None, "still fsync = always");
    let _ = w.stop();
}

#[test]
fn sighup_with_a_broken_file_is_rejected_and_the_old_config_serves_on() {
    let mut w = Weir::start_with_env(
        &config("default_event_type = \"x\""),
        // [log] level applies only without RUST_LOG.
        &[("RUST_LOG", "")],
    );
    let good = std::fs::read_to_string(w.dir.path().join("weir.toml")).unwrap();
    w.edit_config(|c| {
        c.replace(
            "max_body = \"1MiB\"",
            "max_body = \"lots\"\nmax_sockets = 3",
        )
    });
    reload(&w, 1);
    let log = w.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("config reload rejected"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("server.max_body") && line.contains("server.max_sockets"),
        "{line}"
    );
    assert_eq!(
        w.metric("weir_config_reloads_total", &["result=\"rejected\""]),
        Some(1.0)
    );
    assert_eq!(
        w.post("/v1/topics/events/events", r#"{"payload":1}"#)
            .status,
        202
    );

    // A good file again, now with [log] level = "warn": info lines stop (the outcome
    // of this reload is info too, so it is waited for in the metric).
    w.edit_config(|_| format!("{good}\n[log]\nlevel = \"warn\"\n"));
    let reloads_ok = |n: f64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while w.metric("weir_config_reloads_total", &["result=\"ok\""]) != Some(n) {
            assert!(Instant::now() < deadline, "reload {n} never counted");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    w.signal(libc::SIGHUP);
    reloads_ok(1.0);
    assert!(w.wait_log(
        "SIGHUP: reading the config file again",
        2,
        Duration::from_secs(5)
    ));
    w.signal(libc::SIGHUP);
    reloads_ok(2.0);
    let seen = w
        .log_text()
        .matches("SIGHUP: reading the config file again")
        .count();
    assert_eq!(seen, 2, "info lines are no longer written at level warn");
    assert!(w.stop().success());
}

/// A SIGTERM while the log is still being opened (systemd stopping a weir that is still
/// recovering) is a clean stop: exit 0, and the next start finds a clean log.
#[cfg(feature = "fail")]
#[test]
fn sigterm_during_start_up_is_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("weir.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &cfg_path,
        format!(
            "{}\n[storage]\ndata_dir = {:?}\n",
            config(""),
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(crate::util::bin())
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "info")
        .env("FAILPOINTS", "app::log_open=sleep(3000)")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Well inside the 3 s the log takes to open.
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "weir did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "{status:?}: killed by the signal, not stopped"
    );
    assert!(
        data.join("clean_shutdown").exists(),
        "the log was closed cleanly"
    );
}
