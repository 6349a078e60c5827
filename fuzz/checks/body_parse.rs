//! Fuzz target: the ingest body parser (`event::parse_body`, what `POST
//! /v1/topics/{t}/events` calls) on arbitrary bodies, under topic settings taken from the
//! first two bytes of the input. It must never panic, and a body it accepts must give
//! events whose stored envelopes are valid JSON objects that parse back to the same
//! event: `parse_body` of the envelope on a plain topic (no wrap, no defaults) accepts it
//! with the same event type, time and id.
//!
//! Shared by the fuzz target and the corpus replay unit test (`src/fuzz_corpus.rs`).

use serde_json::value::RawValue;
use std::collections::HashMap;
use weir::event::{TopicRules, parse_body};
use weir::json::JsonPointer;

/// 2026-11-28T00:00:00Z: a fixed receive time, so a crash replays.
const NOW_MS: i64 = 1_795_824_000_000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Runs the target on one input; panics on a bug.
pub fn check(data: &[u8]) {
    let (&[a, b], body) = data.split_at_checked(2).unwrap_or((&[0, 0], data)) else {
        return;
    };
    let key_field = match a & 0b11 {
        0 => None,
        1 => Some("/payload/user"),
        2 => Some("/metadata/k"),
        _ => Some("/event_type"),
    }
    .map(|p| JsonPointer::parse(p).expect("a valid pointer"));
    let timestamp_field = (a & 0b100 != 0).then(|| JsonPointer::parse("/ts").expect("valid"));
    let rules = TopicRules {
        wrap: a & 0b1000 != 0,
        key_field: key_field.as_ref(),
        timestamp_field: timestamp_field.as_ref(),
        default_event_type: (a & 0b1_0000 != 0).then_some("fuzz"),
        max_event_age_ms: 7 * DAY_MS,
        max_event_lead_ms: DAY_MS / 24,
        clamp_bad_time: a & 0b10_0000 != 0,
        key_len_max: if b & 1 == 0 { 16 } else { 1024 },
    };
    let query_key = (a & 0b100_0000 != 0).then_some("qk");
    let mut events = Vec::new();
    if parse_body(body, &rules, query_key, NOW_MS, &mut events).is_err() {
        assert!(events.is_empty(), "a refused body left events behind");
        return;
    }
    assert!(!events.is_empty(), "an accepted body without events");
    let plain = TopicRules {
        wrap: false,
        key_field: None,
        timestamp_field: None,
        default_event_type: None,
        ..rules
    };
    for event in &events {
        assert!(!event.event_type.is_empty(), "an empty event type");
        assert!(
            (NOW_MS - rules.max_event_age_ms..=NOW_MS + rules.max_event_lead_ms)
                .contains(&event.timestamp_ms),
            "event time {} out of bounds",
            event.timestamp_ms
        );
        if let Some(key) = &event.key {
            assert!(
                key.len() <= rules.key_len_max,
                "key longer than key_len_max"
            );
        }
        let mut envelope = Vec::new();
        event.write_envelope(&mut envelope);
        assert!(
            envelope.len() <= event.envelope_len_hint(),
            "envelope longer than its hint"
        );
        // Members as raw JSON: validated in full, numbers of any size accepted (JSON has
        // no range; weir stores number text as sent).
        let members: HashMap<String, Box<RawValue>> = serde_json::from_slice(&envelope)
            .unwrap_or_else(|e| {
                panic!(
                    "stored envelope is not a JSON object ({e}): {}",
                    String::from_utf8_lossy(&envelope)
                )
            });
        let event_type: String =
            serde_json::from_str(members["event_type"].get()).expect("a string");
        assert_eq!(event_type, event.event_type);
        for member in members.keys() {
            assert!(
                [
                    "event_id",
                    "event_type",
                    "timestamp",
                    "key",
                    "payload",
                    "metadata"
                ]
                .contains(&member.as_str()),
                "unknown member {member:?} in the stored envelope"
            );
        }
        let mut again = Vec::new();
        parse_body(&envelope, &plain, None, NOW_MS, &mut again).unwrap_or_else(|e| {
            panic!(
                "stored envelope does not parse back ({e}): {}",
                String::from_utf8_lossy(&envelope)
            )
        });
        assert_eq!(again.len(), 1, "one envelope, one event");
        let back = &again[0];
        assert_eq!(back.event_type, event.event_type);
        assert_eq!(back.timestamp_ms, event.timestamp_ms);
        // A generated id is stored, so read back it is the client's.
        if event.has_client_id() {
            assert_eq!(back.id_hash, event.id_hash);
        }
        assert_eq!(back.event_id(), event.event_id());
    }
}
