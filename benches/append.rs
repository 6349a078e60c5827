//! The append path without HTTP: one request's 1,000 envelopes (about 200 bytes each,
//! client event_ids, keyed by user) through `Topic::ingest` — dedup, partitioning into
//! one batch per partition, encoding, pwrite — with `fsync = "never"` so the figure is the
//! CPU and write(2) cost, not the disk. Also a bare `Partition::append` of a finished
//! batch, and the dedup table alone: a request's 1,000 new ids admitted and settled
//! against a full table of `max_dedup_entries` (1,000,000, the default; each settle
//! evicts as many). Throughput in events.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir::config::Config;
use weir::event::parse_body;
use weir::log::Log;
use weir::log::batch::BatchBuilder;
use weir::log::dedup::Dedup;

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

    // The dedup table full at its default bound, as under sustained unique ids.
    let clock = weir::clock::system();
    let dedup = std::sync::Arc::new(Dedup::new("b".into(), 600_000, 1_000_000, clock));
    let table_now = dedup.now_ms();
    let fill: Vec<(i64, u128)> = (0..1_000_000u64).map(|i| (table_now, id_hash(i))).collect();
    dedup.load(fill, table_now);
    let mut next = 1_000_000u64;
    group.bench_function("dedup_admit_settle_1000_ids_full_table", |b| {
        b.iter_batched(
            || {
                let ids: Vec<Option<u128>> =
                    (next..next + EVENTS).map(|i| Some(id_hash(i))).collect();
                next += EVENTS;
                ids
            },
            |ids| {
                let admission = runtime.block_on(dedup.admit(&ids, table_now));
                admission.ticket.settle(&|_| true, table_now, table_now);
                black_box(admission.duplicates)
            },
            criterion::BatchSize::SmallInput,
        );
    });
    group.finish();
    log.close().unwrap();
}

/// An id hash as ingest makes them (xxh3-128 of the event_id).
fn id_hash(i: u64) -> u128 {
    xxhash_rust::xxh3::xxh3_128(format!("b-{i}").as_bytes())
}

criterion_group!(benches, bench);
criterion_main!(benches);
