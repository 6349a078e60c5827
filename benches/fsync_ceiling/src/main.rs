//! fsync_ceiling: the hyper ceiling of `../shared/bench/http_ceiling` plus exactly the
//! work `fsync = "always"` cannot skip, and nothing else: each POST body is written
//! (pwrite) to one of N files, round robin, and answered 202 once an fdatasync that
//! started after the write returned. One thread per file runs the fdatasync rounds back
//! to back while anything is unsynced (group commit, as weir's fsync workers do), and the
//! files are allocated ahead with their size set, as weir's active segments are.
//!
//! No parsing, no record format, no dedup, no index: what this server reaches is the most
//! a durable single-event POST can reach on the machine, whatever the design around it.
//!
//! Usage: fsync_ceiling ADDR DIR [FILES] (default 4 files, as config.example.toml's topic
//! has partitions). POST any path; the answer is 202 `{"status":"accepted"}`.

use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::{Condvar, Mutex};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How far ahead of the writes a file is allocated, as weir's active segment is.
const ALLOCATE_AHEAD: u64 = 8 << 20;

struct Log {
    file: File,
    state: Mutex<Written>,
    wake: Condvar,
    /// One past the last byte an fdatasync made durable.
    durable: watch::Sender<u64>,
}

struct Written {
    end: u64,
    allocated: u64,
    syncing: bool,
}

impl Log {
    fn open(path: &str) -> Log {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        Log {
            file,
            state: Mutex::new(Written {
                end: 0,
                allocated: 0,
                syncing: false,
            }),
            wake: Condvar::new(),
            durable: watch::channel(0).0,
        }
    }

    /// Writes `bytes` at the end and returns the end after them.
    fn write(&self, bytes: &[u8]) -> std::io::Result<u64> {
        let mut s = self.state.lock();
        let end = s.end + bytes.len() as u64;
        if end > s.allocated {
            let len = (end + ALLOCATE_AHEAD - s.allocated) as libc::off_t;
            // SAFETY: a valid open descriptor; fallocate reads nothing from memory.
            if unsafe { libc::fallocate(self.file.as_raw_fd(), 0, s.allocated as libc::off_t, len) }
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            s.allocated += len as u64;
        }
        self.file.write_at(bytes, s.end)?;
        s.end = end;
        if !s.syncing {
            self.wake.notify_one();
        }
        Ok(end)
    }

    /// The fsync thread: a round syncs everything written before it started.
    fn sync_rounds(&self) {
        loop {
            let target = {
                let mut s = self.state.lock();
                while s.end <= *self.durable.borrow() {
                    s.syncing = false;
                    self.wake.wait(&mut s);
                }
                s.syncing = true;
                s.end
            };
            if let Err(e) = self.file.sync_data() {
                eprintln!("fdatasync: {e}");
                std::process::exit(1);
            }
            self.durable.send_replace(target);
        }
    }
}

async fn handle(
    logs: Arc<Vec<Arc<Log>>>,
    next: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status, body: &'static [u8]| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .expect("static response"))
    };
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST, b"{\"error\":\"body\"}");
    };
    let log = &logs[next.fetch_add(1, Ordering::Relaxed) % logs.len()];
    let Ok(end) = log.write(&body) else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, b"{\"error\":\"write\"}");
    };
    let mut durable = log.durable.subscribe();
    if durable.wait_for(|d| *d >= end).await.is_err() {
        return answer(StatusCode::SERVICE_UNAVAILABLE, b"{\"error\":\"fsync\"}");
    }
    answer(StatusCode::ACCEPTED, b"{\"status\":\"accepted\"}")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: fsync_ceiling ADDR DIR [FILES]");
        std::process::exit(2);
    };
    let files: usize = args
        .next()
        .map_or(4, |n| n.parse().expect("FILES is a number"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir}: {e}"));
    let logs: Vec<Arc<Log>> = (0..files)
        .map(|i| Arc::new(Log::open(&format!("{dir}/{i}.log"))))
        .collect();
    for (i, log) in logs.iter().enumerate() {
        let log = Arc::clone(log);
        std::thread::Builder::new()
            .name(format!("fsync-{i}"))
            .spawn(move || log.sync_rounds())
            .expect("spawn fsync thread");
    }
    let logs = Arc::new(logs);
    let next = Arc::new(AtomicUsize::new(0));
    // Two workers, as the ceiling: the box has 2 cores.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        eprintln!("fsync_ceiling listening on http://{addr}, {files} files in {dir}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (logs, next) = (Arc::clone(&logs), Arc::clone(&next));
            tokio::spawn(async move {
                let service = service_fn(move |r| handle(Arc::clone(&logs), Arc::clone(&next), r));
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
