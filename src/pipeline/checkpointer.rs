//! The checkpoint thread of one pipeline: makes the source offsets durable, commits the
//! checkpoint's sled batch and flushes it, off the pipeline thread, so the pipeline goes on
//! reading while a checkpoint is written.
//!
//! The pipeline thread encodes a checkpoint (an owned [`Checkpoint`]) and hands it over
//! through a queue of [`CHECKPOINT_QUEUE`]; it hands over the next only after the previous
//! one was reported, so at most one checkpoint is in flight and the hand-over never
//! blocks. A checkpoint due while one is in flight waits: the engine keeps listing what
//! changed, and the next checkpoint writes it all. Steps of one checkpoint, in order:
//!
//! 1. each source partition is made durable through the offset checkpointed, and each
//!    `late_topic` partition through what the pipeline appended to it before (so late
//!    events the checkpoint passes are in the log);
//! 2. one atomic sled batch (`PipelineStore::commit`), then `flush`;
//! 3. the rows it closed turn `final` in the hot view: the view's durable sequence
//!    number moves to the checkpoint's ([`Job::seq`]), no row is visited;
//! 4. the outcome is reported back; a failure returns the rows, so the next checkpoint
//!    writes them (and every cell, as the pipeline thread marks all unsaved).
//!
//! Owns no state of the engine; touches sled only through `store`.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::output::{Outbox, OutputSink};
use super::view::HotView;
use crate::limits::CHECKPOINT_QUEUE;
use crate::log::partition::Partition;
use crate::store::{Checkpoint, PipelineStore, RowWrites};

/// Longest a checkpoint waits for its source offsets to become durable (`interval` and
/// `never` topics); past it the checkpoint fails and is tried again next interval.
pub const DURABLE_WAIT_MAX: Duration = Duration::from_secs(10);

/// Least time between two log lines of failed checkpoints in a row: a full disk fails
/// every one (each `checkpoint_interval`), and the log may be on that disk.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// What the checkpoint thread keeps from one checkpoint to the next.
struct Tally {
    seconds: metrics::Histogram,
    failures_log: FailureLog,
}

/// Checkpoint failures in a row: the first is logged, then one line per
/// [`FAILURE_LOG_EVERY`] with how many were not; a success starts over.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    not_logged: u64,
}

impl FailureLog {
    /// Whether to log this failure, and how many were not logged since the last line.
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < FAILURE_LOG_EVERY) {
            self.not_logged += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.not_logged))
    }
}

/// One checkpoint to write.
pub struct Job {
    pub checkpoint: Checkpoint,
    /// Its sequence number: the rows it holds (and those of any failed one before it,
    /// which it holds again) were closed in the view with this number or a smaller one.
    pub seq: u64,
    /// When the pipeline thread began it: the duration metric covers encode to flush.
    pub started: Instant,
    /// The `late_topic` partitions the pipeline appended to, each with the offset
    /// (exclusive) it had appended through when it encoded the checkpoint.
    pub late: Vec<(Arc<Partition>, i64)>,
    /// The result rows for the `output_topic`, if set: committed with the checkpoint,
    /// appended after.
    pub outbox: Option<Outbox>,
}

/// What became of a job.
pub enum Outcome {
    /// Written. `spare` is its row list emptied, for the pipeline thread to fill next: a
    /// list of up to `PENDING_ROWS_MAX` rows is not regrown from empty (and its pages
    /// faulted in anew) per checkpoint.
    Committed { spare: RowWrites },
    /// Not written; the rows it held go into the next one.
    Failed { rows: RowWrites },
}

/// The pipeline thread's side of its checkpoint thread.
pub struct Checkpointer {
    jobs: Option<SyncSender<Job>>,
    outcomes: Receiver<Outcome>,
    thread: Option<JoinHandle<()>>,
    /// A job handed over and not reported yet.
    in_flight: bool,
}

impl Checkpointer {
    /// Starts the checkpoint thread of pipeline `name`.
    pub fn start(
        name: &str,
        store: PipelineStore,
        view: Arc<HotView>,
        partitions: Vec<Arc<Partition>>,
        seconds: metrics::Histogram,
        failures: metrics::Counter,
        mut output: Option<OutputSink>,
    ) -> std::io::Result<Checkpointer> {
        let (jobs, jobs_rx) = sync_channel::<Job>(CHECKPOINT_QUEUE);
        // One outcome per job and one job at a time: never full.
        let (outcomes_tx, outcomes) = sync_channel::<Outcome>(CHECKPOINT_QUEUE);
        let pipeline = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("weir-ckpt-{name}"))
            .spawn(move || {
                // The outbox of the checkpoint restored (a crash left it), at once.
                if let Some(o) = &mut output {
                    o.append();
                }
                let mut tally = Tally {
                    seconds,
                    failures_log: FailureLog::default(),
                };
                for job in jobs_rx {
                    let outcome = write(
                        &pipeline,
                        &store,
                        &view,
                        &partitions,
                        output.as_mut(),
                        job,
                        &mut tally,
                    );
                    if matches!(outcome, Outcome::Failed { .. }) {
                        failures.increment(1);
                    }
                    if outcomes_tx.send(outcome).is_err() {
                        break;
                    }
                }
                if let Some(o) = output {
                    o.finish(&store);
                }
            })?;
        Ok(Checkpointer {
            jobs: Some(jobs),
            outcomes,
            thread: Some(thread),
            in_flight: false,
        })
    }

    /// Whether a checkpoint is being written.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Hands `job` over; gives it back (`Some`) if one is still in flight or the
    /// thread is gone.
    pub fn submit(&mut self, job: Job) -> Option<Job> {
        if self.in_flight {
            return Some(job);
        }
        let Some(jobs) = &self.jobs else {
            return Some(job);
        };
        match jobs.try_send(job) {
            Ok(()) => {
                self.in_flight = true;
                None
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Some(job),
        }
    }

    /// The outcome of the job in flight if it is done (`wait`: blocks until it is).
    pub fn outcome(&mut self, wait: bool) -> Option<Outcome> {
        if !self.in_flight {
            return None;
        }
        let got = if wait {
            self.outcomes.recv().ok()
        } else {
            match self.outcomes.try_recv() {
                Ok(o) => Some(o),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => None,
            }
        };
        self.in_flight = false;
        // A thread that died reported nothing: treat as failed, rows lost to the view's
        // finality only (they are re-derived from the log at the next start).
        Some(got.unwrap_or(Outcome::Failed {
            rows: RowWrites::default(),
        }))
    }

    /// Ends the thread after the job in flight; the caller has taken its outcome.
    pub fn finish(mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("checkpoint thread panicked");
        }
    }
}

/// Steps 1 to 3 of one checkpoint.
fn write(
    pipeline: &str,
    store: &PipelineStore,
    view: &HotView,
    partitions: &[Arc<Partition>],
    mut output: Option<&mut OutputSink>,
    job: Job,
    tally: &mut Tally,
) -> Outcome {
    let Job {
        mut checkpoint,
        seq,
        started,
        late,
        outbox,
    } = job;
    // The last checkpoint's result rows are in the output topic before this one's
    // commit replaces them in sled.
    if let Some(sink) = output.as_deref_mut()
        && let Err(e) = sink.before_commit()
    {
        tracing::warn!(pipeline, error = %e, "checkpoint skipped");
        return Outcome::Failed {
            rows: checkpoint.rows,
        };
    }
    let late = late.iter().map(|(p, end)| (p, *end, "late events"));
    let sources = partitions
        .iter()
        .zip(checkpoint.offsets.iter().copied())
        .map(|(p, end)| (p, end, "source offsets"));
    for (p, end, what) in sources.chain(late) {
        if !make_durable(p, end) {
            tracing::warn!(
                pipeline,
                topic = %p.topic,
                partition = p.id,
                "{what} not durable; checkpoint skipped"
            );
            return Outcome::Failed {
                rows: checkpoint.rows,
            };
        }
    }
    checkpoint.outbox = outbox.as_ref().map(Outbox::encode);
    match store.commit(&checkpoint) {
        Ok(()) => {
            // Step 4: the rows it emits go out, now that they are in sled.
            if let (Some(sink), Some(outbox)) = (output, outbox) {
                sink.committed(outbox);
            }
            view.write(|v| v.mark_durable(seq));
            tally.failures_log = FailureLog::default();
            tally.seconds.record(started.elapsed().as_secs_f64());
            tracing::debug!(
                pipeline,
                seconds = started.elapsed().as_secs_f64(),
                "checkpoint"
            );
            let mut spare = std::mem::take(&mut checkpoint.rows);
            spare.clear();
            Outcome::Committed { spare }
        }
        Err(e) => {
            if let Some(not_logged) = tally.failures_log.due() {
                tracing::error!(pipeline, error = %e, not_logged,
                    "checkpoint failed; retrying next interval (logged at most every 30 s while it fails)");
            }
            Outcome::Failed {
                rows: checkpoint.rows,
            }
        }
    }
}

/// Makes `partition` durable through offset `end` (exclusive): a source read under
/// `always` already is (it is read up to the visible end, which is durable); otherwise,
/// and for late events just written, an fsync round is asked for (under `always` the
/// append queued one) and waited on, bounded by [`DURABLE_WAIT_MAX`]. False if it did
/// not happen.
pub(super) fn make_durable(partition: &Arc<Partition>, end: i64) -> bool {
    if partition.durable_end() >= end {
        return true;
    }
    partition.request_sync();
    let deadline = Instant::now() + DURABLE_WAIT_MAX;
    // fsync rounds publish no signal for buffered topics: poll at a short, bounded step.
    while partition.durable_end() < end {
        if partition.is_fenced() || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_are_logged_once_per_period_with_the_count_left_out() {
        let mut log = FailureLog::default();
        assert_eq!(log.due(), Some(0), "the first is logged");
        assert_eq!(log.due(), None);
        assert_eq!(log.due(), None);
        log.last = Instant::now().checked_sub(FAILURE_LOG_EVERY);
        assert_eq!(
            log.due(),
            Some(2),
            "a period later, with the two not logged"
        );
        assert_eq!(log.due(), None);
    }
    use crate::pipeline::aggregate::AggState;
    use crate::pipeline::view::Row;
    use crate::store::Store;

    /// One checkpoint in flight at a time; its rows turn final once it is flushed, and
    /// the stored rows are there.
    #[test]
    fn one_checkpoint_in_flight_and_rows_final_after_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let view = Arc::new(HotView::new(vec!["count".into()], 10, 0, 0, 1000));
        let key: Arc<str> = "a".into();
        view.write(|v| {
            v.upsert(
                0,
                &key,
                Row::closed(
                    10,
                    crate::pipeline::aggregate::States::from_elem(AggState::Count(1), 1),
                    true,
                    1,
                ),
            );
        });
        let mut c = Checkpointer::start(
            "p",
            store.pipeline("p"),
            Arc::clone(&view),
            Vec::new(),
            metrics::Histogram::noop(),
            metrics::Counter::noop(),
            None,
        )
        .unwrap();
        let job = |seq: u64, rows: RowWrites| Job {
            checkpoint: Checkpoint {
                rows,
                ..Checkpoint::default()
            },
            seq,
            started: Instant::now(),
            late: Vec::new(),
            outbox: None,
        };
        let mut row = RowWrites::default();
        let bucket = crate::store::cell_bucket(&key);
        row.push(0, &key, bucket, 10, true, &[AggState::Count(1)]);
        let is_final = || {
            view.read(|v| {
                v.key_window("a", crate::pipeline::view::Which::Latest)
                    .map(|(_, r)| v.is_final(r))
            })
        };
        assert_eq!(is_final(), Some(false));
        assert!(c.submit(job(1, row)).is_none());
        assert!(c.in_flight());
        assert!(
            c.submit(job(2, RowWrites::default())).is_some(),
            "one in flight at most"
        );
        assert!(matches!(c.outcome(true), Some(Outcome::Committed { .. })));
        assert!(!c.in_flight());
        assert_eq!(is_final(), Some(true));
        assert!(c.submit(job(2, RowWrites::default())).is_none());
        assert!(c.outcome(true).is_some());
        c.finish();
        assert_eq!(store.pipeline("p").rows(10).unwrap().0.len(), 1);
    }
}
