//! The fsync workers and the interval flusher: the only threads that call fsync on
//! segment data. Tokio workers never do.
//!
//! Partitions queue themselves (at most once each, see `Partition::request_sync`); a
//! worker runs rounds for one partition while others run for other partitions, so the
//! dirty partitions of a moment are synced in parallel and every request that arrives
//! during a round joins the next one (group commit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::partition::Partition;
use crate::config::FsyncMode;
use crate::limits::{FLUSH_TICK_MS_MIN, SYNC_THREADS_MAX};

pub struct SyncPool {
    queue: SyncSender<Arc<Partition>>,
    workers: Vec<JoinHandle<()>>,
    flusher: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl SyncPool {
    /// `partitions_max` sizes the queue: each partition is in it at most once.
    pub fn start(partitions_max: usize) -> SyncPool {
        let (queue, rx) = sync_channel::<Arc<Partition>>(partitions_max.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let threads = partitions_max.clamp(1, SYNC_THREADS_MAX);
        let workers = (0..threads)
            .map(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("weir-fsync-{i}"))
                    .spawn(move || worker(&rx))
                    .expect("spawn fsync worker")
            })
            .collect();
        SyncPool {
            queue,
            workers,
            flusher: None,
        }
    }

    pub fn queue(&self) -> SyncSender<Arc<Partition>> {
        self.queue.clone()
    }

    /// Starts the thread that fsyncs `interval` partitions when their interval is due.
    pub fn start_flusher(&mut self, partitions: Vec<(Arc<Partition>, Duration)>) {
        let partitions: Vec<_> = partitions
            .into_iter()
            .filter(|(p, _)| p.fsync_mode() == FsyncMode::Interval)
            .collect();
        if partitions.is_empty() {
            return;
        }
        let tick = partitions
            .iter()
            .map(|(_, d)| *d)
            .min()
            .unwrap_or(Duration::from_millis(100))
            .max(Duration::from_millis(FLUSH_TICK_MS_MIN))
            / 2;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("weir-flusher".into())
            .spawn(move || {
                let mut last: Vec<Instant> = vec![Instant::now(); partitions.len()];
                while !stop2.load(Ordering::Acquire) {
                    std::thread::park_timeout(tick);
                    let now = Instant::now();
                    for (i, (p, interval)) in partitions.iter().enumerate() {
                        if now.duration_since(last[i]) >= *interval && p.is_dirty() {
                            last[i] = now;
                            p.request_sync();
                        }
                    }
                }
            })
            .expect("spawn flusher");
        self.flusher = Some((stop, handle));
    }

    /// Stops the flusher and the workers after the rounds already queued.
    pub fn stop(self) {
        if let Some((stop, handle)) = self.flusher {
            stop.store(true, Ordering::Release);
            handle.thread().unpark();
            let _ = handle.join();
        }
        drop(self.queue);
        for w in self.workers {
            // Partitions hold queue senders, so workers exit on their own only when every
            // partition is gone; they are detached instead of joined.
            drop(w);
        }
    }
}

fn worker(rx: &Mutex<Receiver<Arc<Partition>>>) {
    loop {
        let next = rx.lock().map(|r| r.recv());
        match next {
            Ok(Ok(p)) => p.run_sync(),
            _ => return,
        }
    }
}
