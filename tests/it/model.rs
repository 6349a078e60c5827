//! A model test of the log at the library level: random appends, retention, clean
//! restarts, kills (with torn garbage after the last batch) and reads, checked against a
//! plain model (records per partition and a start offset). Segments are 1 KiB so rolls,
//! recovery and retention run all the time.
//!
//! Checked: every acknowledged record is readable exactly once at its offset, offsets are
//! dense, reads never pass the end, start offsets only move forward, retention removes only
//! what its rules allow. 64 cases by default; `PROPTEST_CASES=5000` for a long run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use weir::clock::{Clock, ManualClock};
use weir::config::Config;
use weir::log::batch::BatchBuilder;
use weir::log::datadir::DataDirError;
use weir::log::partition::{Partition, ReadError};
use weir::log::{HEADER_APPEND, Log, LogError};

const PARTITIONS: usize = 2;
const RETENTION_AGE_MS: i64 = 3 * 60 * 60 * 1000;
const RETENTION_BYTES: u64 = 4096;

#[derive(Debug, Clone)]
enum Op {
    Append {
        partition: usize,
        records: usize,
        size: usize,
    },
    Advance(i64),
    Retention,
    Restart,
    Kill {
        garbage: Vec<u8>,
    },
    Read {
        partition: usize,
        from: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..PARTITIONS, 1..4usize, 1..600usize)
            .prop_map(|(partition, records, size)| Op::Append { partition, records, size }),
        2 => (0..2 * 60 * 60 * 1000i64).prop_map(Op::Advance),
        2 => Just(Op::Retention),
        1 => Just(Op::Restart),
        1 => prop::collection::vec(any::<u8>(), 0..100).prop_map(|garbage| Op::Kill { garbage }),
        2 => (0..PARTITIONS, -2..60i64).prop_map(|(partition, from)| Op::Read { partition, from }),
    ]
}

/// One partition as the model sees it.
#[derive(Debug, Default, Clone)]
struct ModelPartition {
    start: i64,
    /// (offset, value, append time), offsets dense from `start`.
    records: Vec<(i64, Vec<u8>, i64)>,
}

impl ModelPartition {
    fn end(&self) -> i64 {
        self.start + self.records.len() as i64
    }
}

fn config(dir: &Path, fsync: &str) -> Config {
    let text = format!(
        "[storage]\ndata_dir = {:?}\n[[topic]]\nname = \"t\"\npartitions = {PARTITIONS}\n\
         fsync = \"{fsync}\"\nsegment_size = \"1KiB\"\nsegment_age = \"1h\"\n\
         retention_age = \"3h\"\nretention_size = \"{RETENTION_BYTES}B\"\ndedup_window = \"0s\"\n",
        dir.display().to_string()
    );
    Config::parse(&text, Path::new("model.toml")).expect("model config")
}

struct World {
    dir: tempfile::TempDir,
    config: Config,
    clock: Arc<ManualClock>,
    log: Option<Log>,
    model: Vec<ModelPartition>,
    rt: tokio::runtime::Runtime,
    seq: u64,
}

impl World {
    fn new(fsync: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir.path().join("data"), fsync);
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let (log, _) = Log::open(&config, clock.clone()).unwrap();
        World {
            dir,
            config,
            clock,
            log: Some(log),
            model: vec![ModelPartition::default(); PARTITIONS],
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            seq: 0,
        }
    }

    fn partition(&self, p: usize) -> Arc<Partition> {
        let log = self.log.as_ref().unwrap();
        Arc::clone(&log.topic("t").unwrap().partitions[p])
    }

    /// Waits until fsync rounds (a roll's, under `never`) have run, so what retention may
    /// delete does not depend on thread timing.
    fn settle(&self) {
        for p in 0..PARTITIONS {
            let part = self.partition(p);
            // Under `never` nothing else would run a round for the active segment.
            part.request_sync();
            let deadline = Instant::now() + Duration::from_secs(60);
            while part.is_dirty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn reopen(&mut self) {
        // Other tests of this binary spawn weirs: a child forked while the dropped log's
        // lock file was open shares its open file description, and so the flock, until
        // its exec closes it. Only this process writes its pid there: wait that out.
        let ours = std::process::id().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        let log = loop {
            match Log::open(&self.config, self.clock.clone()) {
                Ok((log, _)) => break log,
                Err(LogError::DataDir(DataDirError::Locked { holder, .. }))
                    if holder == ours && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("reopening the log failed: {e:#}"),
            }
        };
        self.log = Some(log);
        self.check_all();
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append {
                partition,
                records,
                size,
            } => self.append(*partition, *records, *size),
            Op::Advance(ms) => self.clock.advance(*ms),
            Op::Retention => self.retention(),
            Op::Restart => {
                self.settle();
                self.log.take().unwrap().close().unwrap();
                self.reopen();
            }
            Op::Kill { garbage } => {
                // In-process, a dropped log's fsync workers finish their round; a real
                // kill -9 stops them too (tests/it/crash.rs). Let them finish first so a
                // stale round cannot race the next open.
                self.settle();
                drop(self.log.take());
                if !garbage.is_empty() {
                    let p = self.seq as usize % PARTITIONS;
                    tear(&self.dir.path().join(format!("data/topics/t/{p}")), garbage);
                }
                self.reopen();
            }
            Op::Read { partition, from } => self.read(*partition, *from),
        }
    }

    fn append(&mut self, p: usize, records: usize, size: usize) {
        let now = self.clock.now_ms();
        let mut b = BatchBuilder::new();
        let mut values = Vec::new();
        for _ in 0..records {
            self.seq += 1;
            let mut v = format!("p{p}-{}-", self.seq).into_bytes();
            v.resize(size.max(v.len()), b'x');
            b.push(None, &v, now, &[(HEADER_APPEND, &now.to_be_bytes())]);
            values.push(v);
        }
        let mut batch = b.finish();
        let part = self.partition(p);
        let appended = part.append(&mut batch, now).expect("append");
        self.rt
            .block_on(part.wait_visible(appended.last_offset))
            .expect("durable");
        let m = &mut self.model[p];
        assert_eq!(appended.base_offset, m.end(), "dense offsets");
        for (i, v) in values.into_iter().enumerate() {
            m.records.push((appended.base_offset + i as i64, v, now));
        }
    }

    fn retention(&mut self) {
        self.settle();
        let before: Vec<u64> = (0..PARTITIONS).map(|p| self.partition(p).bytes()).collect();
        self.log.as_ref().unwrap().run_retention();
        let now = self.clock.now_ms();
        for (p, bytes_before) in before.into_iter().enumerate() {
            let part = self.partition(p);
            let start = part.start_offset();
            let m = &mut self.model[p];
            assert!(start >= m.start, "start offsets only move forward");
            assert!(start <= m.end(), "never past the end");
            let removed = usize::try_from(start - m.start).unwrap();
            if bytes_before <= RETENTION_BYTES {
                // Not over the size: only age may have removed records.
                for (off, _, append) in &m.records[..removed] {
                    assert!(
                        now - append > RETENTION_AGE_MS,
                        "partition {p} offset {off} removed at age {}",
                        now - append
                    );
                }
            }
            if part.bytes() > RETENTION_BYTES {
                assert!(
                    part.sealed_segments().0.is_empty(),
                    "over the size with deletable segments left"
                );
            }
            m.records.drain(..removed);
            m.start = start;
        }
    }

    fn read(&self, p: usize, from: i64) {
        let part = self.partition(p);
        let m = &self.model[p];
        let offset = m.start + from;
        let mut got = Vec::new();
        let result = part.read(offset, 10_000, usize::MAX, &mut |off, _, v| {
            got.push((off, v.to_vec()));
        });
        if offset < m.start || offset > m.end() {
            assert!(
                matches!(result, Err(ReadError::OutOfRange { .. })),
                "{result:?}"
            );
            return;
        }
        let next = result.expect("read");
        let want: Vec<(i64, Vec<u8>)> = m
            .records
            .iter()
            .filter(|r| r.0 >= offset)
            .map(|r| (r.0, r.1.clone()))
            .collect();
        assert_eq!(got, want, "partition {p} from {offset}");
        assert_eq!(next, m.end());
    }

    fn check_all(&self) {
        for p in 0..PARTITIONS {
            let part = self.partition(p);
            let m = &self.model[p];
            assert_eq!(part.start_offset(), m.start, "start of {p} after reopen");
            assert_eq!(
                part.visible().end_offset,
                m.end(),
                "end of {p} after reopen"
            );
            self.read(p, 0);
        }
    }
}

/// Appends bytes after the last batch of the newest segment: a torn, unacknowledged write.
fn tear(dir: &Path, garbage: &[u8]) {
    use std::io::Write;
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            weir::log::segment::parse_log_name(&name)
        })
        .max()
        .expect("a segment");
    let path = weir::log::segment::path(dir, newest, weir::log::segment::LOG_EXT);
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(garbage).unwrap();
}

#[test]
fn the_log_matches_a_model_through_restarts_kills_and_retention() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = (
        prop_oneof![Just("never"), Just("always")],
        prop::collection::vec(op(), 1..40),
    );
    runner
        .run(&strategy, |(fsync, ops)| {
            let mut world = World::new(fsync);
            for op in &ops {
                world.apply(op);
            }
            world.settle();
            world.check_all();
            Ok(())
        })
        .unwrap();
}
