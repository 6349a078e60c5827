//! A pipeline's read-ahead: a thread (`weir-read-<pipeline>`) that reads the next chunk
//! of a source partition (`Partition::read_batches`: the pread, the header walk and the
//! CRC checks) and prepares its records (`decoded`: decoded, filtered, keys read) while
//! the pipeline thread aggregates the current one.
//!
//! It changes who reads and when, never what the engine sees: the pipeline thread asks
//! for the chunk after the one it just got ([`ReadAhead::request`]) only while more of the
//! partition is visible, and uses the answer ([`ReadAhead::take`]) only if it starts at the
//! offset it needs next and holds a batch (or is the log's jump over a corrupt batch);
//! anything else (nothing was visible yet, an error, another offset) is dropped and the
//! pipeline thread reads itself, as without read-ahead, so retention losses, read errors
//! and the visible end are handled in one place (`runner::Source::fill`). A chunk read
//! ahead holds whole batches from the offset asked, so the head batch of every partition,
//! and with it the cross-partition order, is the same as the pipeline thread's own read.
//!
//! Bound: at most one request in flight or one answer waiting per source partition, so
//! two buffers of up to `READ_CHUNK_BYTES` (plus one batch larger than that) per
//! partition, each with its table of prepared records: the one the pipeline thread
//! takes and the one read ahead. The buffers go back and forth; none is allocated per
//! chunk once both exist.
//!
//! The thread ends when the `ReadAhead` is dropped (its request channel closes), which
//! joins it: the pipeline thread owns it and drops it before it ends.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::decoded::{Decoded, Preparer};
use super::runner::READ_CHUNK_BYTES;
use crate::log::partition::{Partition, ReadError};

/// A read the pipeline thread asks for: source `source` from offset `from` into `buf`.
struct Request {
    source: usize,
    from: i64,
    buf: Vec<u8>,
    decoded: Decoded,
}

/// A read done: what `read_batches` returned and the buffer it filled.
struct Done {
    source: usize,
    from: i64,
    read: Result<i64, ReadError>,
    buf: Vec<u8>,
    /// The records of `buf`, prepared.
    decoded: Decoded,
}

/// Per source partition, where its second buffer is.
enum Slot {
    /// With the pipeline thread, unused (`None` until first needed).
    Spare(Option<(Vec<u8>, Decoded)>),
    /// With the reader thread.
    InFlight,
    /// Read, waiting to be taken.
    Ready(Done),
}

pub struct ReadAhead {
    /// Closed (dropped) to end the thread.
    requests: Option<SyncSender<Request>>,
    done: Receiver<Done>,
    slots: Vec<Slot>,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts the reader thread of `pipeline` over its source `partitions` (in source
    /// order), preparing records with `preparer`. `None` if the thread cannot be
    /// started: the pipeline thread reads itself.
    pub fn start(
        pipeline: &str,
        partitions: Vec<Arc<Partition>>,
        preparer: Preparer,
    ) -> Option<ReadAhead> {
        // One request per partition at most (`slots`), so neither channel ever fills.
        let n = partitions.len().max(1);
        let (requests, requests_rx) = sync_channel::<Request>(n);
        let (done_tx, done) = sync_channel::<Done>(n);
        let slots = (0..partitions.len()).map(|_| Slot::Spare(None)).collect();
        let thread = std::thread::Builder::new()
            .name(format!("weir-read-{pipeline}"))
            .spawn(move || {
                while let Ok(Request {
                    source,
                    from,
                    mut buf,
                    mut decoded,
                }) = requests_rx.recv()
                {
                    let read = partitions[source].read_batches(from, READ_CHUNK_BYTES, &mut buf);
                    if read.is_ok() {
                        preparer.prepare(&buf, &mut decoded);
                    }
                    let done = Done {
                        source,
                        from,
                        read,
                        buf,
                        decoded,
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            });
        match thread {
            Ok(thread) => Some(ReadAhead {
                requests: Some(requests),
                done,
                slots,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(pipeline, error = %e, "no read-ahead thread; the pipeline thread reads the log itself");
                None
            }
        }
    }

    /// Asks for the chunk of `source` from `from`, unless one is asked or waiting already.
    pub fn request(&mut self, source: usize, from: i64) {
        let Slot::Spare(spare) = &mut self.slots[source] else {
            return;
        };
        let (buf, decoded) = spare.take().unwrap_or_default();
        let Some(requests) = &self.requests else {
            return;
        };
        match requests.try_send(Request {
            source,
            from,
            buf,
            decoded,
        }) {
            Ok(()) => self.slots[source] = Slot::InFlight,
            // Full cannot happen (one per source); gone: the thread ended (a panic).
            Err(e) => {
                let (std::sync::mpsc::TrySendError::Full(r)
                | std::sync::mpsc::TrySendError::Disconnected(r)) = e;
                self.slots[source] = Slot::Spare(Some((r.buf, r.decoded)));
            }
        }
    }

    /// The chunk of `source` from `from` read ahead, waiting for it if in flight: on a
    /// usable answer, `buf` and `decoded` are swapped with the chunk and its records
    /// (their old contents become the spare) and what `read_batches` returned is given.
    /// `None`: nothing usable, the caller reads.
    pub fn take(
        &mut self,
        source: usize,
        from: i64,
        buf: &mut Vec<u8>,
        decoded: &mut Decoded,
    ) -> Option<i64> {
        if matches!(self.slots[source], Slot::InFlight) {
            self.wait_for(source);
        }
        let slot = std::mem::replace(&mut self.slots[source], Slot::Spare(None));
        let Slot::Ready(mut done) = slot else {
            self.slots[source] = slot;
            return None;
        };
        // Usable: from the offset needed, and a batch or the log's jump past a corrupt
        // one (both are what a read now would return). Not usable: nothing was visible
        // when it was read (more may be now), or an error (the caller's read meets it
        // again, or not, and handles it as it always does).
        let usable = match done.read {
            Ok(next) => done.from == from && (!done.buf.is_empty() || next > from),
            Err(_) => false,
        };
        if !usable {
            self.slots[source] = Slot::Spare(Some((done.buf, done.decoded)));
            return None;
        }
        std::mem::swap(buf, &mut done.buf);
        std::mem::swap(decoded, &mut done.decoded);
        self.slots[source] = Slot::Spare(Some((done.buf, done.decoded)));
        done.read.ok()
    }

    /// Waits until the read in flight for `source` is done, keeping what arrives for
    /// others meanwhile.
    fn wait_for(&mut self, source: usize) {
        while matches!(self.slots[source], Slot::InFlight) {
            match self.done.recv() {
                Ok(done) => {
                    let i = done.source;
                    self.slots[i] = Slot::Ready(done);
                }
                Err(_) => {
                    // The thread ended (a panic): nothing more arrives.
                    for s in &mut self.slots {
                        if matches!(s, Slot::InFlight) {
                            *s = Slot::Spare(None);
                        }
                    }
                }
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("pipeline read-ahead thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::ReadAhead;
    use crate::json::JsonPointer;
    use crate::log::batches::batches;
    use crate::log::partition::read_batches_tests::rolled_partition;
    use crate::log::retention::tests::append;
    use crate::pipeline::decoded::{Decoded, Preparer};
    use crate::pipeline::key::{Filter, GroupBy};
    use crate::pipeline::runner::READ_CHUNK_BYTES;

    /// Threads of this process named `name` (Linux keeps 15 bytes of a name).
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim_end() == name)
            .count()
    }

    #[test]
    fn chunks_read_ahead_are_the_reads_and_the_thread_ends_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // Reads stop at segment ends, so chunks are of many sizes.
        let (log, p, end) = rolled_partition(dir.path());
        let preparer = Preparer {
            filter: Filter::default(),
            group_by: GroupBy::new(vec![JsonPointer::parse("/a").unwrap()]),
            hasher: None,
        };
        let mut ahead = ReadAhead::start("ratst", vec![Arc::clone(&p)], preparer).unwrap();
        let mut decoded = Decoded::default();

        // Every chunk taken is what the read there returns, bytes and next offset.
        let (mut buf, mut want) = (Vec::new(), Vec::new());
        let mut next = 0;
        let mut chunks = 0;
        while next < end {
            ahead.request(0, next);
            let got = ahead
                .take(0, next, &mut buf, &mut decoded)
                .expect("read ahead");
            // With the chunk comes its table: a record per record of its batches.
            for (i, b) in batches(&buf).enumerate() {
                assert_eq!(decoded.batch(i).map(|d| d.base_offset), Some(b.base_offset));
                let offsets: Vec<i64> = decoded.inputs(&buf, i, next).map(|i| i.offset).collect();
                let want: Vec<i64> = b.records_from(next).map(|r| r.offset).collect();
                assert_eq!(offsets, want);
            }
            assert_eq!(
                got,
                p.read_batches(next, READ_CHUNK_BYTES, &mut want).unwrap()
            );
            assert_eq!(buf, want, "the chunk from {next}");
            assert!(got > next);
            next = got;
            chunks += 1;
        }
        assert!(chunks > 5, "{chunks} chunks");
        // (Named by itself as it starts: it has answered, so it has started.)
        assert_eq!(threads_named("weir-read-ratst"), 1);
        // Not used: a read that found nothing visible (an append may have come since),
        // a chunk from another offset than the one needed, an error; and nothing asked.
        ahead.request(0, end);
        assert_eq!(ahead.take(0, end, &mut buf, &mut decoded), None);
        append(&log, 1, 100);
        ahead.request(0, 3);
        assert_eq!(ahead.take(0, 4, &mut buf, &mut decoded), None);
        ahead.request(0, end + 5);
        assert_eq!(ahead.take(0, end + 5, &mut buf, &mut decoded), None);
        assert_eq!(ahead.take(0, end, &mut buf, &mut decoded), None);
        // A request while one waits is not sent again; the waiting one is taken.
        ahead.request(0, end);
        ahead.request(0, 0);
        assert_eq!(ahead.take(0, end, &mut buf, &mut decoded), Some(end + 1));

        drop(ahead);
        assert_eq!(threads_named("weir-read-ratst"), 0);
    }
}
