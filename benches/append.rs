//! The append path without HTTP: one request's 1,000 envelopes (about 200 bytes each,
//! client event_ids, keyed by user) through `Topic::ingest` — dedup, partitioning into
//! one batch per partition, encoding, pwrite — with `fsync = "never"` so the figure is the
//! CPU and write(2) cost, not the disk. Also a bare `Partition::append` of a finished
//! batch. Throughput in events.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir::config::Config;
use weir::event::parse_body;
use weir::log::Log;
use weir::log::batch::BatchBuilder;

const EVENTS: u64 = 1_000;

fn body(seq: u64) -> String {
    (0..EVENTS)
        .map(|i| {
            format!(
                r#"{{"event_id":"b-{seq}-{i}","event_type":"page.click","timestamp":"2026-11-27T10:00:00.000Z","payload":{{"user_id":"u-{}","page_id":"page-{}","session":"s-{:06}","referrer":"/home/landing"}}}}"#,
                (i * 7919) % 10_000,
                (i * 31) % 1000,
                i
            ) + "\n"
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[storage]\ndata_dir = {:?}\n[[topic]]\nname = \"b\"\npartitions = 4\nfsync = \"never\"\nkey_field = \"/payload/user_id\"\nsegment_size = \"256MiB\"\nmax_event_age = \"36500d\"\n",
        dir.path().join("data").display().to_string()
    );
    let config = Config::parse(&text, Path::new("bench.toml")).unwrap();
    let (log, _) = Log::open(&config, weir::clock::system()).unwrap();
    let topic = log.topic("b").unwrap().clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let now_ms = log.clock().now_ms();

    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(30);
    let mut seq = 0u64;
    group.bench_function("topic_ingest_1000_events_never", |b| {
        b.iter_batched(
            || {
                seq += 1;
                body(seq)
            },
            |body| {
                let rules = topic.rules(4096);
                let mut events = Vec::new();
                parse_body(body.as_bytes(), &rules, None, now_ms, &mut events).unwrap();
                black_box(runtime.block_on(topic.ingest(&events, now_ms)).unwrap())
            },
            criterion::BatchSize::SmallInput,
        );
    });

    let mut builder = BatchBuilder::new();
    let value = [b'x'; 200];
    for i in 0..EVENTS {
        let ts = 1_795_000_000_000 + i64::try_from(i).unwrap();
        builder.push(Some(b"u-1"), &value, ts, &[("weir.type", b"page.click")]);
    }
    let batch = builder.finish();
    let partition = topic.partitions[0].clone();
    group.bench_function("partition_append_1000_records_never", |b| {
        b.iter_batched(
            || batch.clone(),
            |mut batch| black_box(partition.append(&mut batch, now_ms).unwrap()),
            criterion::BatchSize::SmallInput,
        );
    });
    group.finish();
    log.close().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
