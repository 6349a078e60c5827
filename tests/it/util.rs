//! Starting the real binary and speaking HTTP to it. Every test goes through here, so
//! an API change touches one place.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_weir");

/// The weir binary `Weir` starts: `WEIR_BIN` if set (the long crash loop runs a copy of
/// a release build, which later builds of this tree do not replace), else this build's.
pub fn bin() -> PathBuf {
    std::env::var_os("WEIR_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from)
}

/// A config with one topic, tiny limits where tests need them. `extra` is appended.
pub fn config(topic_extra: &str) -> String {
    config_with("max_body = \"1MiB\"", topic_extra)
}

/// The same config with `server` as the `[server]` lines beside `listen`.
pub fn config_with(server: &str, topic_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server}

[[topic]]
name = "events"
partitions = 4
fsync = "always"
{topic_extra}
"#
    )
}

pub struct Weir {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
    config_path: PathBuf,
    features: Vec<(String, String)>,
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl Weir {
    /// Writes `config` (with `data_dir` set to a fresh temp dir) and starts weir on it.
    pub fn start(config: &str) -> Weir {
        Weir::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Weir {
        Weir::start_in(config, env, None)
    }

    /// [`Weir::start_with_env`] with the data dir on `data`, an existing directory (on a
    /// file system the test mounted): `data_dir()` is a symlink to it.
    pub fn start_on(data: &Path, config: &str, env: &[(&str, &str)]) -> Weir {
        Weir::start_in(config, env, Some(data))
    }

    fn start_in(config: &str, env: &[(&str, &str)], data_at: Option<&Path>) -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if let Some(target) = data_at {
            std::os::unix::fs::symlink(target, &data).unwrap();
        }
        let text = format!("{config}\n", config = with_data_dir(config, &data));
        let config_path = dir.path().join("weir.toml");
        std::fs::write(&config_path, text).unwrap();
        let mut w = Weir {
            dir,
            child: None,
            addr: String::new(),
            log: Arc::new(Mutex::new(Vec::new())),
            config_path,
            features: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        w.launch();
        w
    }

    #[cfg_attr(
        not(feature = "fail"),
        allow(dead_code, reason = "failpoint tests only")
    )]
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--config"]).arg(&self.config_path);
        cmd.env("RUST_LOG", "info").env_remove("FAILPOINTS");
        // A test run started by systemd must not have its weirs notify that systemd, and
        // only tests that build a fake cgroup tree point weir at one.
        for var in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "WEIR_CGROUP_ROOT",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in &self.features {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(1);
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent
                    && line.contains("weir listening")
                    && let Some(addr) = field(&line, "addr")
                {
                    let _ = tx.send(addr);
                    sent = true;
                }
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                let status = self.child.as_mut().unwrap().try_wait().unwrap();
                panic!("weir did not start ({status:?}); log:\n{}", self.log_text());
            }
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A field of the "log open" line of the current run (clean, scanned_bytes, ...).
    pub fn open_field(&self, key: &str) -> String {
        let log = self.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("log open"))
            .expect("log open line");
        field(line, key).unwrap_or_else(|| panic!("no {key} in {line}"))
    }

    /// SIGKILL and wait: nothing is flushed, no marker written.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for weir to exit on its own (a crash failpoint); its exit
    /// status if it did (the child is then gone, as after [`Weir::kill9`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait for exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "weir did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Edits the config file (for the next restart).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, edit(text)).unwrap();
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.log.lock().unwrap().clear();
        self.launch();
    }

    #[cfg_attr(
        not(feature = "fail"),
        allow(dead_code, reason = "failpoint tests only")
    )]
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.features = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.restart();
    }

    pub fn get(&self, path: &str) -> Resp {
        request(&self.addr, "GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &str) -> Resp {
        request(
            &self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    pub fn put(&self, path: &str, body: &str) -> Resp {
        request(
            &self.addr,
            "PUT",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// The value of the first metric line starting with `name{` whose labels contain
    /// every one of `labels` (e.g. `topic="events"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = self.get("/metrics").body;
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The value of the metric line `name value` (a family without labels).
    pub fn metric_plain(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics").body;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(&self.addr, "POST", path, headers, body)
    }

    /// Every record of a partition, read back through the pull API.
    pub fn read_all(&self, topic: &str, partition: u32) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut offset = 0i64;
        loop {
            let r = self.get(&format!(
                "/v1/topics/{topic}/events?partition={partition}&offset={offset}&limit=10000"
            ));
            assert_eq!(r.status, 200, "{}", r.body);
            let j = r.json();
            let events = j["events"].as_array().unwrap().clone();
            if events.is_empty() {
                return out;
            }
            offset = j["next_offset"].as_i64().unwrap();
            out.extend(events);
        }
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sets `[storage] data_dir` in a config text (adding the table if absent).
fn with_data_dir(config: &str, data: &Path) -> String {
    let line = format!("data_dir = {:?}", data.display().to_string());
    if config.contains("[storage]") {
        config.replacen("[storage]", &format!("[storage]\n{line}"), 1)
    } else {
        format!("[storage]\n{line}\n{config}")
    }
}

/// `key=value` from a tracing text line, or the field `key` of a JSON line.
pub fn field(line: &str, key: &str) -> Option<String> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        return match &v["fields"][key] {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
    }
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

/// A minimal HTTP/1.1 client over a fresh connection: exact control of headers and body,
/// no client-side validation getting in the way of bad-input tests.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        has_len |=
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len && (method == "POST" || !body.is_empty()) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

/// [`request`] for a server that may die under it (crash tests): a refused or reset
/// connection, or an answer cut short, is an `Err` (outcome unknown) instead of a panic.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other("connection closed before the answer"));
    };
    let (_, headers) = parse_head(head);
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if length.is_some_and(|n| body.len() < n) {
        return Err(std::io::Error::other("answer cut short"));
    }
    Ok(parse_response(&raw))
}

/// The status and headers of a response head (the text before the blank line).
fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// Wall-clock time in epoch milliseconds, for event times near now.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

fn parse_response(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    let (status, headers) = parse_head(head);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// One Server-Sent Event as received.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.data))
    }

    /// (partition, offset) of a data event.
    pub fn at(&self) -> (i64, i64) {
        let j = self.json();
        (
            j["partition"].as_i64().unwrap(),
            j["offset"].as_i64().unwrap(),
        )
    }
}

/// An open SSE response: chunked transfer decoded as it arrives, events split on blank lines.
pub struct Sse {
    stream: std::net::TcpStream,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Bytes received and not yet dechunked.
    raw: Vec<u8>,
    /// Dechunked text not yet split into events.
    text: String,
    /// Comment lines seen (`: keep-alive`).
    pub comments: usize,
    /// The server ended the body (last chunk) or closed the connection.
    pub ended: bool,
}

impl Weir {
    /// Opens `GET path` as an event stream with extra request headers.
    pub fn sse(&self, path: &str, headers: &[(&str, &str)]) -> Sse {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
            self.addr
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = s.read(&mut buf).expect("response head");
            assert!(n > 0, "connection closed before the response head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let rest = raw[end + 4..].to_vec();
        let (status, headers) = parse_head(&head);
        Sse {
            stream: s,
            status,
            headers,
            raw: rest,
            text: String::new(),
            comments: 0,
            ended: false,
        }
    }
}

impl Sse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body of a non-stream answer (an error), read to the end.
    pub fn error_body(mut self) -> serde_json::Value {
        use std::io::Read;
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest);
        self.raw.extend_from_slice(&rest);
        let text = String::from_utf8_lossy(&self.raw).to_string();
        let start = text.find('{').expect("a JSON body");
        let end = text.rfind('}').expect("a JSON body");
        serde_json::from_str(&text[start..=end]).unwrap()
    }

    /// Reads until `n` data events arrived (returned in order) or `timeout` passed or the
    /// stream ended (then fewer are returned).
    pub fn events(&mut self, n: usize, timeout: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            out.extend(self.take_events(n - out.len()));
            if out.len() >= n || self.ended || Instant::now() >= deadline {
                return out;
            }
            self.fill(deadline);
        }
    }

    /// Waits until the server ends the stream; true if it did within `timeout`.
    pub fn wait_end(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.ended && Instant::now() < deadline {
            let _ = self.take_events(usize::MAX);
            self.fill(deadline);
        }
        self.ended
    }

    fn fill(&mut self, deadline: Instant) {
        use std::io::Read;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let _ = self
            .stream
            .set_read_timeout(Some(left.min(Duration::from_millis(200))));
        let mut buf = [0u8; 65536];
        match self.stream.read(&mut buf) {
            Ok(0) => self.ended = true,
            Ok(n) => self.raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => self.ended = true,
        }
        self.dechunk();
    }

    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            let need = line_end + 2 + size + 2;
            if self.raw.len() < need {
                return;
            }
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.text
                .push_str(std::str::from_utf8(&data).expect("UTF-8 chunk"));
            self.raw.drain(..need);
        }
    }

    fn take_events(&mut self, max: usize) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(end) = self.text.find("\n\n") else {
                break;
            };
            let block: String = self.text.drain(..end + 2).collect();
            let mut ev = SseEvent {
                id: None,
                event: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                } else if let Some(v) = line.strip_prefix("id: ") {
                    ev.id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    ev.event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    ev.data.push_str(v);
                    has_data = true;
                }
            }
            if has_data {
                out.push(ev);
            }
        }
        out
    }
}

/// Signals and exits, for the lifecycle tests.
impl Weir {
    /// Sends `signal` (libc::SIGTERM, SIGHUP, ...) without waiting.
    pub fn signal(&self, signal: i32) {
        let c = self.child.as_ref().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, signal) };
    }

    /// Waits until `n` lines of this run's log contain `needle`; false after `timeout`.
    pub fn wait_log(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let seen = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            if seen >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Overload tests (tests/it/overload.rs).
///
/// Raises this test process's soft limit of open files to its hard limit (as weir does
/// at start) and returns it: a thousand client sockets do not fit the usual soft 1024.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// Polls `path` until `pred` holds for its answer; panics with the last one once
/// `within` has passed.
pub fn poll_within(w: &Weir, path: &str, within: Duration, pred: impl Fn(&Resp) -> bool) -> Resp {
    let deadline = Instant::now() + within;
    loop {
        let r = w.get(path);
        if pred(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: gave up at {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
