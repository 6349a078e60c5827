//! The window engine on one thread: the seed's Flink job (tumbling 1-minute count per
//! page, watermark 5 s, lateness 1 m) over envelopes shaped as
//! ../shared/bench/flink/gen_events.py writes them (1,000 pages, 100,000 users, one hour,
//! up to 2 s out of order), in batches of 1,000 records over 4 partitions. Measures the
//! pure core (filter, key, panes, watermark, closing); reading the log is not included.
//!
//! The `*_8m_density` cases put the same events in 90 seconds instead of an hour: the
//! density of the 8,000,000-event file of benches/pipeline.sh (about 133 events per page
//! per minute), where count_distinct of users per page per minute keeps sketches of
//! ~133 entries; count over the same events is their baseline. They print the state
//! bytes per open window at the end of the input. The hour's events also go through
//! session windows (gap 30 s) keyed by user. `group_by_page_key` is the key reading
//! alone.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir::json::JsonPointer;
use weir::pipeline::aggregate::{AggFn, Aggregate};
use weir::pipeline::engine::{Engine, Input, Spec, TimeMode};
use weir::pipeline::key::{Filter, GroupBy};
use weir::pipeline::window::WindowKind;

const EVENTS: usize = 200_000;
const BATCH: usize = 1_000;
const PARTITIONS: u32 = 4;
const SPAN_MS: i64 = 3_600_000;
/// 2026-11-27 10:00:00 UTC.
const T0: i64 = 1_795_773_600_000;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// (event time, envelope) in log order, spread over `span_ms`.
fn events(span_ms: i64) -> Vec<(i64, String)> {
    let mut rng = Rng(42);
    (0..EVENTS)
        .map(|i| {
            let base = i64::try_from(i).unwrap_or(0) * span_ms
                / i64::try_from(EVENTS).unwrap_or(1);
            let ms = T0 + (base - i64::try_from(rng.below(2001)).unwrap_or(0)).max(0);
            let (page, user) = (rng.below(1000), rng.below(100_000));
            let envelope = format!(
                r#"{{"event_id":"{:032x}","event_type":"page.click","timestamp":"2026-11-27 10:00:00.000","payload":{{"user_id":"u-{user}","page_id":"page-{page}"}}}}"#,
                rng.below(u64::MAX)
            );
            (ms, envelope)
        })
        .collect()
}

fn spec(aggregate: Aggregate) -> Spec {
    Spec {
        window: WindowKind::Tumbling { size_ms: 60_000 },
        time: TimeMode::Event,
        out_of_orderness_ms: 5_000,
        idle_ms: 30_000,
        allowed_lateness_ms: 60_000,
        filter: Filter::new(&["page.click"]),
        group_by: GroupBy::new(vec![JsonPointer::parse("/payload/page_id").unwrap()]),
        aggregates: vec![aggregate],
        partitions: PARTITIONS as usize,
        max_cells: usize::MAX,
    }
}

fn count() -> Aggregate {
    Aggregate {
        name: "count".into(),
        func: AggFn::Count,
        field: None,
        quantiles: Vec::new(),
    }
}

fn distinct_users() -> Aggregate {
    Aggregate {
        name: "users".into(),
        func: AggFn::CountDistinct,
        field: Some(JsonPointer::parse("/payload/user_id").unwrap()),
        quantiles: Vec::new(),
    }
}

/// Feeds every event; returns the engine as the input left it.
/// Session windows (gap 30 s) keyed by user, counting.
fn session_spec() -> Spec {
    Spec {
        window: WindowKind::Session {
            gap_ms: 30_000,
            max_ms: 86_400_000,
        },
        group_by: GroupBy::new(vec![JsonPointer::parse("/payload/user_id").unwrap()]),
        ..spec(count())
    }
}

fn run(events: &[(i64, String)], aggregate: Aggregate) -> Engine {
    run_spec(events, spec(aggregate))
}

fn run_spec(events: &[(i64, String)], spec: Spec) -> Engine {
    let mut engine = Engine::new(spec);
    let mut counted = 0usize;
    for (n, chunk) in events.chunks(BATCH).enumerate() {
        let partition = u32::try_from(n).unwrap_or(0) % PARTITIONS;
        let append_ms = chunk[0].0;
        let records = chunk.iter().zip(0i64..).map(|((ms, env), offset)| Input {
            offset,
            event_ms: *ms,
            event_type: b"page.click",
            envelope: env.as_bytes(),
            prepared: None,
        });
        engine.process_batch(partition, append_ms, records, |_, _| counted += 1);
        black_box(engine.take_closed());
    }
    black_box(counted);
    engine
}

fn bench(c: &mut Criterion) {
    let hour = events(SPAN_MS);
    let dense = events(90_000);
    for (name, aggregate) in [("count", count()), ("count_distinct", distinct_users())] {
        let e = run(&dense, aggregate);
        let open = e.open_windows().max(1);
        eprintln!(
            "{name} at the 8M density: {} state bytes, {} open windows, {} cells: \
             {} bytes per open window",
            e.state_bytes(),
            e.open_windows(),
            e.cells(),
            e.state_bytes() / open as u64
        );
    }
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(20);
    group.bench_function("tumbling_1m_count_by_page", |b| {
        b.iter(|| run(&hour, count()));
    });
    group.bench_function("session_30s_count_by_user", |b| {
        b.iter(|| run_spec(&hour, session_spec()));
    });
    group.bench_function("tumbling_1m_count_by_page_8m_density", |b| {
        b.iter(|| run(&dense, count()));
    });
    group.bench_function("tumbling_1m_count_distinct_users_by_page_8m_density", |b| {
        b.iter(|| run(&dense, distinct_users()));
    });
    // The key alone: what reading `/payload/page_id` out of each stored envelope costs
    // (a quarter of a live pipeline thread's time).
    let by_page = GroupBy::new(vec![JsonPointer::parse("/payload/page_id").unwrap()]);
    group.bench_function("group_by_page_key", |b| {
        let mut key = String::new();
        b.iter(|| {
            for (_, envelope) in &hour {
                by_page.key_into(envelope.as_bytes(), &mut key).unwrap();
                black_box(&key);
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
