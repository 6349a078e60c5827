//! Running under systemd: sd_notify messages on a socket of the test's own, and the
//! refusal of a `server.memory_max` above the cgroup's memory limit.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::{BIN, Weir, config, config_with};

/// What the fake service manager heard, in order: each datagram, and what a GET
/// /healthz got at that moment when the datagram was READY=1 or EXTEND_TIMEOUT_USEC.
#[derive(Debug, Clone)]
struct Heard {
    at: Instant,
    message: String,
    /// The status /healthz answered right after this message, or `None` if nothing
    /// answered within half a second (listener bound but not serving, or not bound).
    healthz: Option<Option<u16>>,
}

/// A fake systemd: receives on `socket` until STOPPING=1 or a minute of silence,
/// probing `addr` after the messages that claim (or deny) readiness.
fn listen(socket: UnixDatagram, addr: String) -> (Arc<Mutex<Vec<Heard>>>, JoinHandle<()>) {
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&heard);
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).to_string();
            let at = Instant::now();
            let probe = message.contains("READY=1") || message.contains("EXTEND_TIMEOUT_USEC=");
            let healthz = probe.then(|| healthz_now(&addr));
            let stopping = message.contains("STOPPING=1");
            out.lock().unwrap().push(Heard {
                at,
                message,
                healthz,
            });
            if stopping {
                break;
            }
        }
    });
    (heard, thread)
}

/// GET /healthz, giving up after half a second without an answer.
fn healthz_now(addr: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A free loopback port: the fake systemd must know where to probe before weir logs it.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn messages(heard: &Mutex<Vec<Heard>>) -> Vec<Heard> {
    heard.lock().unwrap().clone()
}

fn wait_for(heard: &Mutex<Vec<Heard>>, what: &str) -> Heard {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = messages(heard)
            .into_iter()
            .find(|h| h.message.contains(what))
        {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in {:?}",
            messages(heard)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn notify_ready_once_serving_watchdog_while_running_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let addr = free_addr();
    let (heard, thread) = listen(UnixDatagram::bind(&path).unwrap(), addr.clone());
    let cfg = config("").replace("127.0.0.1:0", &addr);
    let mut w = Weir::start_with_env(
        &cfg,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            // A watchdog of 400 ms: weir pets it every 200 ms.
            ("WATCHDOG_USEC", "400000"),
        ],
    );

    let ready = wait_for(&heard, "READY=1");
    assert_eq!(ready.healthz, Some(Some(200)), "{ready:?}");
    assert!(ready.message.contains(&format!("STATUS=serving on {addr}")));
    std::thread::sleep(Duration::from_millis(1500));
    let pets = messages(&heard)
        .iter()
        .filter(|h| h.at > ready.at && h.message == "WATCHDOG=1")
        .count();
    assert!((4..=10).contains(&pets), "{pets} WATCHDOG=1 in 1.5 s");

    assert!(w.stop().success());
    thread.join().unwrap();
    let all = messages(&heard);
    let last = all.last().unwrap();
    assert!(last.message.starts_with("STOPPING=1"), "{all:?}");
    assert_eq!(
        all.iter().filter(|h| h.message.contains("READY=1")).count(),
        1
    );
    // A start well under 5 s needs no extension.
    assert!(
        !all.iter()
            .any(|h| h.message.contains("EXTEND_TIMEOUT_USEC")),
        "{all:?}"
    );
}

#[cfg(feature = "fail")]
#[test]
fn a_long_recovery_extends_the_start_timeout_and_is_not_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    let name = format!("weir-it-notify-{}", std::process::id());
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let addr = free_addr();
    let (heard, thread) = listen(socket, addr.clone());
    let cfg = config("").replace("127.0.0.1:0", &addr);
    // Log::open takes 8 s: the listener is bound (before recovery) but not serving.
    let mut w = Weir::start_with_env(
        &cfg,
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("FAILPOINTS", "app::log_open=sleep(8000)"),
        ],
    );
    let ready = wait_for(&heard, "READY=1");
    let all = messages(&heard);
    let extends: Vec<_> = all
        .iter()
        .filter(|h| h.message == "EXTEND_TIMEOUT_USEC=15000000")
        .collect();
    assert!(!extends.is_empty(), "{all:?}");
    for e in &extends {
        assert!(e.at < ready.at);
        assert_eq!(e.healthz, Some(None), "answered while recovering: {e:?}");
    }
    assert_eq!(ready.healthz, Some(Some(200)), "{ready:?}");
    assert!(w.stop().success());
    thread.join().unwrap();
    assert!(
        messages(&heard)
            .last()
            .unwrap()
            .message
            .starts_with("STOPPING=1")
    );
}

/// The cgroup v2 path of this test process (and of the weir it starts).
fn own_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 (0::) line in /proc/self/cgroup")
        .to_string()
}

#[test]
fn a_memory_max_above_the_cgroup_limit_is_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    let leaf = root.path().join(own_cgroup().trim_start_matches('/'));
    std::fs::create_dir_all(&leaf).unwrap();
    let memory_max = leaf.join("memory.max");
    std::fs::write(&memory_max, "1073741824\n").unwrap();
    let root_env = root.path().to_str().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg_path = dir.path().join("weir.toml");
    let cfg = config_with("memory_max = \"2GiB\"", "");
    std::fs::write(
        &cfg_path,
        format!(
            "{cfg}\n[storage]\ndata_dir = {:?}\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("WEIR_CGROUP_ROOT", root_env)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.memory_max (2GiB) is above the memory limit of weir's cgroup (1GiB",
        memory_max.to_str().unwrap(),
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    assert!(!data.exists(), "refused before touching the data dir");

    // Equal to the limit is within it; "max" is no limit at all.
    std::fs::write(&memory_max, "2147483648\n").unwrap();
    let mut w = Weir::start_with_env(&cfg, &[("WEIR_CGROUP_ROOT", root_env)]);
    assert!(w.log_text().contains("within the cgroup memory limit"));
    assert_eq!(w.get("/healthz").status, 200);
    assert!(w.stop().success());
    std::fs::write(&memory_max, "max\n").unwrap();
    std::fs::write(root.path().join("memory.max"), "max\n").unwrap();
    w.restart();
    assert_eq!(w.get("/healthz").status, 200);
    assert!(w.stop().success());
    // A limit that cannot be read is no reason to stay down: warned about, not checked.
    std::fs::write(&memory_max, "plenty\n").unwrap();
    w.restart();
    assert!(
        w.log_text()
            .contains("cannot read the cgroup memory limit; not checked"),
        "{}",
        w.log_text()
    );
    assert_eq!(w.get("/healthz").status, 200);
}
