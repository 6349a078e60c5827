//! The ingest hot path without HTTP: one NDJSON body of 1,000 envelopes of about 200
//! bytes (fixed seed) parsed with `parse_body` and every envelope written back out.
//! Throughput is reported in events.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use weir::event::{Event, TopicRules, parse_body};
use weir::json::JsonPointer;

const EVENTS: usize = 1_000;
/// 2026-11-27T13:49:06.123Z
const NOW_MS: i64 = 1_795_787_346_123;

/// A small fixed-seed generator, so every run parses the same body.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Envelopes like a click stream's: client id, type, RFC 3339 time, a small payload.
fn body(with_ids: bool) -> Vec<u8> {
    let mut rng = XorShift(0x5EED_1234_ABCD_0001);
    let mut out = String::new();
    let types = ["page.click", "page.view", "order.created", "cart.add"];
    for i in 0..EVENTS {
        let ago_ms = i64::try_from(rng.below(3_600_000)).unwrap();
        let ts = weir::event::rfc3339_ms_string(NOW_MS - ago_ms);
        let id = if with_ids {
            format!(r#""event_id":"evt-{:016x}","#, rng.next())
        } else {
            String::new()
        };
        out.push_str(&format!(
            r#"{{{id}"event_type":"{}","timestamp":"{ts}","payload":{{"page_id":"page-{}","user_id":"u-{}","referrer":"https://example.com/p/{}","ms":{}}}}}"#,
            types[i % types.len()],
            rng.below(1000),
            rng.below(100_000),
            rng.below(10_000),
            rng.below(5000),
        ));
        out.push('\n');
    }
    out.into_bytes()
}

fn bench(c: &mut Criterion) {
    let key_field = JsonPointer::parse("/payload/user_id").unwrap();
    let rules = TopicRules {
        wrap: false,
        key_field: Some(&key_field),
        timestamp_field: None,
        default_event_type: None,
        max_event_age_ms: 7 * 86_400_000,
        max_event_lead_ms: 3_600_000,
        clamp_bad_time: false,
        key_len_max: 4096,
    };
    let mut group = c.benchmark_group("ingest_parse");
    group.throughput(Throughput::Elements(u64::try_from(EVENTS).unwrap()));
    for (name, with_ids) in [("client_ids", true), ("generated_ids", false)] {
        let body = body(with_ids);
        let mut events: Vec<Event<'_>> = Vec::with_capacity(EVENTS);
        let mut out = Vec::with_capacity(body.len() * 2);
        group.bench_function(
            format!("parse_and_write/{name}/{}B", body.len() / EVENTS),
            |b| {
                b.iter(|| {
                    parse_body(black_box(&body), &rules, None, NOW_MS, &mut events).unwrap();
                    out.clear();
                    for ev in &events {
                        ev.write_envelope(&mut out);
                        out.push(b'\n');
                    }
                    black_box(out.len())
                });
            },
        );
        group.bench_function(format!("parse_only/{name}"), |b| {
            b.iter(|| {
                parse_body(black_box(&body), &rules, None, NOW_MS, &mut events).unwrap();
                black_box(events.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
