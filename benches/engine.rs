//! The window engine on one thread: the seed's Flink job (tumbling 1-minute count per
//! page, watermark 5 s, lateness 1 m) over envelopes shaped as
//! ../shared/bench/flink/gen_events.py writes them (1,000 pages, 100,000 users, one hour,
//! up to 2 s out of order), in batches of 1,000 records over 4 partitions. Measures the
//! pure core (filter, key, panes, watermark, closing); reading the log is not included.
//! The same events also through session windows (gap 30 s) keyed by user.

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

/// (event time, envelope) in log order.
fn events() -> Vec<(i64, String)> {
    let mut rng = Rng(42);
    (0..EVENTS)
        .map(|i| {
            let base = i64::try_from(i).unwrap_or(0) * SPAN_MS
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

fn session_spec() -> Spec {
    Spec {
        window: WindowKind::Session {
            gap_ms: 30_000,
            max_ms: 86_400_000,
        },
        group_by: GroupBy::new(vec![JsonPointer::parse("/payload/user_id").unwrap()]),
        ..spec()
    }
}

fn spec() -> Spec {
    Spec {
        window: WindowKind::Tumbling { size_ms: 60_000 },
        time: TimeMode::Event,
        out_of_orderness_ms: 5_000,
        idle_ms: 30_000,
        allowed_lateness_ms: 60_000,
        filter: Filter::new(&["page.click"]),
        group_by: GroupBy::new(vec![JsonPointer::parse("/payload/page_id").unwrap()]),
        aggregates: vec![Aggregate {
            name: "count".into(),
            func: AggFn::Count,
            field: None,
        }],
        partitions: PARTITIONS as usize,
        max_cells: usize::MAX,
    }
}

fn bench(c: &mut Criterion) {
    let events = events();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(20);
    for (name, spec) in [
        ("tumbling_1m_count_by_page", spec as fn() -> Spec),
        ("session_30s_count_by_user", session_spec),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut engine = Engine::new(spec());
                let mut counted = 0usize;
                for (n, chunk) in events.chunks(BATCH).enumerate() {
                    let partition = u32::try_from(n).unwrap_or(0) % PARTITIONS;
                    let append_ms = chunk[0].0;
                    let records = chunk.iter().zip(0i64..).map(|((ms, env), offset)| Input {
                        offset,
                        event_ms: *ms,
                        event_type: "page.click",
                        envelope: env,
                    });
                    engine.process_batch(partition, append_ms, records, |_, _| counted += 1);
                    black_box(engine.take_closed());
                }
                black_box(counted)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
