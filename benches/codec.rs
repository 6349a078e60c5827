//! Micro-benchmarks of the RecordBatch codec on the hot path: encoding one request's batch
//! and validating + reading it back. Fixed-seed data, throughput in records.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir::log::batch::{BatchBuilder, check_batch, records};

const RECORDS: usize = 1_000;
const VALUE_BYTES: usize = 200;

/// One record's fields, generated once from a fixed seed so runs compare.
struct Input {
    key: Vec<u8>,
    value: Vec<u8>,
    timestamp_ms: i64,
    event_type: Vec<u8>,
    event_id: [u8; 16],
    append_ms: [u8; 8],
}

/// xorshift64*: deterministic and dependency-free; quality is irrelevant here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn inputs() -> Vec<Input> {
    let mut rng = Rng(0x5eed_0000_c0de_c0de);
    let base_ms = 1_760_000_000_000i64;
    (0..RECORDS)
        .map(|i| {
            // A JSON-ish envelope of about VALUE_BYTES bytes.
            let mut value = format!(
                r#"{{"event_id":"{:032x}","type":"page_view","user":"u{}","ts":{},"props":{{"#,
                rng.next(),
                rng.below(10_000),
                base_ms
            )
            .into_bytes();
            while value.len() < VALUE_BYTES - 2 {
                value.push(b'a' + u8::try_from(rng.below(26)).expect("below 26"));
            }
            value.extend_from_slice(b"}}");
            let jitter_ms = i64::try_from(rng.below(2_000)).expect("small") - 1_000;
            Input {
                key: format!("user-{}", rng.below(10_000)).into_bytes(),
                value,
                timestamp_ms: base_ms + i64::try_from(i).expect("small") + jitter_ms,
                event_type: b"page_view".to_vec(),
                event_id: (u128::from(rng.next()) << 64 | u128::from(rng.next())).to_be_bytes(),
                append_ms: base_ms.to_be_bytes(),
            }
        })
        .collect()
}

fn encode(builder: &mut BatchBuilder, inputs: &[Input], out: &mut Vec<u8>) {
    for r in inputs {
        builder.push(
            Some(&r.key),
            &r.value,
            r.timestamp_ms,
            &[
                ("weir.type", &r.event_type),
                ("weir.id", &r.event_id),
                ("weir.append", &r.append_ms),
            ],
        );
    }
    builder.finish_into(out);
}

fn bench_codec(c: &mut Criterion) {
    let inputs = inputs();
    let mut builder = BatchBuilder::new();
    let mut batch = Vec::new();
    encode(&mut builder, &inputs, &mut batch);

    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(u64::try_from(RECORDS).expect("small")));

    group.bench_function("encode_1000x200B_3_headers", |b| {
        let mut out = Vec::with_capacity(batch.len());
        b.iter(|| {
            out.clear();
            encode(&mut builder, black_box(&inputs), &mut out);
            black_box(out.len())
        });
    });

    group.bench_function("check_batch_1000", |b| {
        b.iter(|| check_batch(black_box(&batch), 1 << 24).expect("valid"));
    });

    group.bench_function("check_and_iterate_1000", |b| {
        b.iter(|| {
            check_batch(black_box(&batch), 1 << 24).expect("valid");
            let mut value_bytes = 0usize;
            for record in records(&batch).expect("valid") {
                let record = record.expect("valid");
                value_bytes += record.value.map_or(0, <[u8]>::len);
                value_bytes += record.header("weir.id").map_or(0, <[u8]>::len);
            }
            black_box(value_bytes)
        });
    });
    group.finish();

    println_batch_size(batch.len());
}

#[expect(
    clippy::print_stdout,
    reason = "a bench reports the batch size it measured"
)]
fn println_batch_size(len: usize) {
    println!("batch of {RECORDS} records: {len} bytes");
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
