//! The engine against a naive model that keeps every event and recomputes each window from
//! the full list, over random out-of-order input, both window kinds and every aggregate.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::json::JsonPointer;
use crate::pipeline::aggregate::AggFn;

fn aggregates() -> Vec<Aggregate> {
    let field = || Some(JsonPointer::parse("/payload/v").unwrap());
    AggFn::NAMES
        .iter()
        .map(|(name, func)| Aggregate {
            name: (*name).to_string(),
            func: *func,
            field: if *func == AggFn::Count { None } else { field() },
            quantiles: if *func == AggFn::Quantiles {
                vec![0.5, 0.9, 0.99]
            } else {
                Vec::new()
            },
        })
        .collect()
}

fn spec(
    window: WindowKind,
    time: TimeMode,
    ooo: i64,
    idle: i64,
    lateness: i64,
    parts: usize,
) -> Spec {
    Spec {
        window,
        time,
        out_of_orderness_ms: ooo,
        idle_ms: idle,
        allowed_lateness_ms: lateness,
        filter: Filter::new(&["a.*"]),
        group_by: GroupBy::new(vec![JsonPointer::parse("/payload/k").unwrap()]),
        aggregates: aggregates(),
        partitions: parts,
        max_cells: usize::MAX,
    }
}

#[derive(Debug, Clone)]
struct Rec {
    event_ms: i64,
    event_type: &'static str,
    envelope: String,
}

#[derive(Debug, Clone)]
struct Batch {
    partition: u32,
    append_ms: i64,
    records: Vec<Rec>,
}

/// A record's filter answer and key as the read-ahead prepares them: `None` filtered.
type PreparedKey = Result<Option<(String, u64)>, KeyError>;

/// With `on`, what the read-ahead (`decoded::Preparer::key_of`) prepares of each record
/// of `b` for `engine`; else nothing, and the engine reads the keys itself.
fn prepare(engine: &Engine, b: &Batch, on: bool) -> Vec<Option<PreparedKey>> {
    let preparer = engine.preparer();
    b.records
        .iter()
        .map(|r| {
            on.then(|| {
                let mut key = String::new();
                preparer
                    .key_of(r.event_type.as_bytes(), r.envelope.as_bytes(), &mut key)
                    .map(|hash| hash.map(|h| (key, h)))
            })
        })
        .collect()
}

fn as_prepared(key: &Option<PreparedKey>) -> Option<Prepared<'_>> {
    key.as_ref().map(|k| match k {
        Ok(None) => Prepared::Filtered,
        Ok(Some((text, hash))) => Prepared::Key(text, *hash),
        Err(e) => Prepared::NoKey(e),
    })
}

fn values_json(values: &[AggState]) -> String {
    let aggregates = aggregates();
    let mut out = String::new();
    for (v, a) in values.iter().zip(&aggregates) {
        v.write_json(&a.quantiles, &mut out);
        out.push(' ');
    }
    out
}

/// Recomputes everything from the full history at every step.
struct Model {
    spec: Spec,
    /// Every batch read so far.
    history: Vec<(u32, i64, Vec<i64>)>,
    watermark: i64,
    /// Events counted: (ts, partition, offset, key, envelope, windows it counted in).
    counted: Vec<(Position, String, String, BTreeSet<i64>)>,
    closed: BTreeMap<(i64, String), String>,
    closed_windows: BTreeSet<(i64, String)>,
}

impl Model {
    fn watermark_now(&self) -> i64 {
        let first_append = self.history.first().map(|(_, a, _)| *a);
        let newest = self.history.iter().map(|(_, a, _)| *a).max();
        let mut candidate: Option<i64> = None;
        for p in (0u32..).take(self.spec.partitions) {
            let mine: Vec<_> = self.history.iter().filter(|(q, _, _)| *q == p).collect();
            let last = mine.iter().map(|(_, a, _)| *a).max().or(first_append);
            let idle = match (last, newest) {
                (Some(l), Some(n)) => n - l > self.spec.idle_ms,
                _ => true,
            };
            if idle {
                continue;
            }
            let own = mine
                .iter()
                .flat_map(|(_, _, ts)| ts.iter().copied())
                .max()
                .map_or(watermark::NONE, |t| t - self.spec.out_of_orderness_ms);
            candidate = Some(candidate.map_or(own, |c: i64| c.min(own)));
        }
        candidate.map_or(self.watermark, |c| c.max(self.watermark))
    }

    fn is_open(&self, start: i64) -> bool {
        self.watermark == watermark::NONE
            || self.watermark < start + self.spec.window.size_ms() + self.spec.allowed_lateness_ms
    }

    fn values(&self, start: i64, key: &str) -> Vec<AggState> {
        let mut states: Vec<AggState> = self
            .spec
            .aggregates
            .iter()
            .map(|a| AggState::new(a.func))
            .collect();
        for (pos, k, envelope, windows) in &self.counted {
            if k != key || !windows.contains(&start) {
                continue;
            }
            for (agg, state) in self.spec.aggregates.iter().zip(states.iter_mut()) {
                let value = agg
                    .field
                    .as_ref()
                    .and_then(|p| json::pointer_get(envelope, p).ok().flatten());
                state.update(value, *pos, agg.field.is_some());
            }
        }
        states
    }

    fn batch(&mut self, b: &Batch) -> Vec<Taken> {
        let mut taken = Vec::new();
        let mut times = Vec::new();
        for (r, i) in b.records.iter().zip(0i64..) {
            let ts = match self.spec.time {
                TimeMode::Event => r.event_ms,
                TimeMode::Ingest => b.append_ms,
            };
            if !self.spec.filter.accepts(r.event_type.as_bytes()) {
                taken.push(Taken::Filtered);
                continue;
            }
            let mut key = String::new();
            if let Err(e) = self.spec.group_by.key_into(r.envelope.as_bytes(), &mut key) {
                taken.push(Taken::NoKey(e));
                continue;
            }
            let windows: BTreeSet<i64> = self
                .spec
                .window
                .window_starts(ts)
                .filter(|s| self.is_open(*s))
                .collect();
            times.push(ts);
            if windows.is_empty() {
                taken.push(Taken::Late);
                continue;
            }
            taken.push(Taken::Counted(windows.len()));
            let pos = Position {
                ts_ms: ts,
                partition: b.partition,
                offset: i,
            };
            self.counted.push((pos, key, r.envelope.clone(), windows));
        }
        self.history.push((b.partition, b.append_ms, times));
        self.watermark = self.watermark_now();
        let due: BTreeSet<(i64, String)> = self
            .counted
            .iter()
            .flat_map(|(_, k, _, ws)| ws.iter().map(move |s| (*s, k.clone())))
            .filter(|(s, _)| !self.is_open(*s))
            .filter(|w| !self.closed_windows.contains(w))
            .collect();
        for (start, key) in due {
            let v = values_json(&self.values(start, &key));
            self.closed.insert((start, key.clone()), v);
            self.closed_windows.insert((start, key));
        }
        taken
    }
}

fn record() -> impl Strategy<Value = Rec> {
    (
        0i64..120,
        prop::sample::select(vec!["a.x", "a.y", "b"]),
        prop::option::weighted(0.9, 0u8..4),
        prop::option::weighted(0.8, -5i64..6),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(event_ms, event_type, key, v, text)| {
            let k = key.map_or(String::new(), |k| format!(",\"k\":\"k{k}\""));
            // Some values are strings: count_distinct takes them apart from numbers.
            let v = v.map_or(String::new(), |v| {
                if text {
                    format!(",\"v\":\"{v}\"")
                } else {
                    format!(",\"v\":{v}")
                }
            });
            let payload = format!("{{\"n\":0{k}{v}}}");
            Rec {
                event_ms,
                event_type,
                envelope: format!("{{\"event_type\":\"{event_type}\",\"payload\":{payload}}}"),
            }
        })
}

fn batches(parts: u32) -> impl Strategy<Value = Vec<Batch>> {
    prop::collection::vec(
        (0..parts, 0i64..15, prop::collection::vec(record(), 0..6)),
        1..40,
    )
    .prop_map(|raw| {
        let mut append = 0;
        raw.into_iter()
            .map(|(partition, step, records)| {
                append += step;
                Batch {
                    partition,
                    append_ms: append,
                    records,
                }
            })
            .collect()
    })
}

fn window_kind() -> impl Strategy<Value = WindowKind> {
    prop_oneof![
        (1i64..30).prop_map(|size_ms| WindowKind::Tumbling { size_ms }),
        (1i64..10, 1i64..4).prop_map(|(slide_ms, n)| WindowKind::Hopping {
            size_ms: slide_ms * n,
            slide_ms,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_engine_equals_the_naive_model(
        window in window_kind(),
        ingest_time in any::<bool>(),
        ooo in 0i64..20,
        idle in 0i64..40,
        lateness in 0i64..20,
        parts in 1u32..4,
        input in (1u32..4).prop_flat_map(batches),
        read_ahead in any::<bool>(),
    ) {
        let time = if ingest_time { TimeMode::Ingest } else { TimeMode::Event };
        let input: Vec<Batch> = input.into_iter().map(|mut b| { b.partition %= parts; b }).collect();
        let s = spec(window, time, ooo, idle, lateness, parts as usize);
        let mut engine = Engine::new(s.clone());
        let mut model = Model {
            spec: s,
            history: Vec::new(),
            watermark: watermark::NONE,
            counted: Vec::new(),
            closed: BTreeMap::new(),
            closed_windows: BTreeSet::new(),
        };
        let mut engine_closed = BTreeMap::new();
        // The open rows as a view holds them: each batch's changed rows applied over the
        // last, the closed ones removed.
        let mut published: BTreeMap<(i64, String), String> = BTreeMap::new();
        for b in &input {
            let mut got = Vec::new();
            let keys = prepare(&engine, b, read_ahead);
            let inputs = b.records.iter().zip(&keys).zip(0i64..).map(|((r, key), i)| Input {
                offset: i,
                event_ms: r.event_ms,
                event_type: r.event_type.as_bytes(),
                envelope: r.envelope.as_bytes(),
                prepared: as_prepared(key),
            });
            engine.process_batch(b.partition, b.append_ms, inputs, |_, t| got.push(t.clone()));
            let want = model.batch(b);
            prop_assert_eq!(got, want);
            prop_assert_eq!(engine.watermark(), model.watermark);
            for row in engine.take_closed() {
                let k = (row.start_ms, row.key.to_string());
                published.remove(&k);
                prop_assert!(engine_closed.insert(k, values_json(&row.values)).is_none(),
                    "a window closed twice");
            }
            let size = window.size_ms();
            engine.take_changed_rows(&mut |start, end, key: &Arc<str>, values: States, _, hint| {
                assert_eq!(end, start + size);
                published.insert((start, key.to_string()), values_json(&values));
                hint
            });
        }
        prop_assert_eq!(&engine_closed, &model.closed);
        // The sketches' heap bytes followed every update and dropped pane.
        let held: usize = engine.panes.values().flat_map(|k| k.values()).map(|c| heap_of(&c.states)).sum();
        prop_assert_eq!(engine.heap_bytes, held);
        // Windows still open: the engine's merged panes equal the model's recomputation.
        let open: BTreeSet<(i64, String)> = model
            .counted
            .iter()
            .flat_map(|(_, k, _, ws)| ws.iter().map(move |s| (*s, k.clone())))
            .filter(|w| !model.closed_windows.contains(w))
            .collect();
        for (start, key) in &open {
            let got = engine.window_values(key, *start).map(|v| values_json(&v));
            prop_assert_eq!(got, Some(values_json(&model.values(*start, key))), "window {} key {}", start, key);
        }
        // And the rows published while they filled are theirs now, no more and no fewer.
        let want: BTreeMap<(i64, String), String> = open
            .into_iter()
            .map(|(start, key)| {
                let values = values_json(&model.values(start, &key));
                ((start, key), values)
            })
            .collect();
        prop_assert_eq!(published, want);
    }
}

#[test]
fn a_late_event_is_dropped_and_counted_and_lateness_keeps_windows_open() {
    let mut e = Engine::new(spec(
        WindowKind::Tumbling { size_ms: 10 },
        TimeMode::Event,
        0,
        1000,
        5,
        1,
    ));
    let env = |k: &str| format!("{{\"payload\":{{\"k\":\"{k}\",\"v\":1}}}}");
    let (a, b) = (env("a"), env("a"));
    fn input(ts: i64, envelope: &str) -> Input<'_> {
        Input {
            offset: 0,
            event_ms: ts,
            event_type: b"a.x",
            envelope: envelope.as_bytes(),
            prepared: None,
        }
    }
    e.process_batch(0, 0, [input(3, &a)], |_, _| {});
    e.process_batch(0, 1, [input(12, &a)], |_, _| {});
    assert_eq!(e.watermark(), 12);
    assert!(e.take_closed().is_empty(), "window [0,10) open until 15");
    let mut t = Vec::new();
    e.process_batch(0, 2, [input(5, &b), input(16, &b)], |_, x| {
        t.push(x.clone())
    });
    assert_eq!(t, [Taken::Counted(1), Taken::Counted(1)]);
    let closed = e.take_closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(
        values_json(&closed[0].values),
        "2 2 1 1 1.0 1 1 1 {\"p50\":1.0,\"p90\":1.0,\"p99\":1.0} "
    );
    e.process_batch(0, 3, [input(4, &b)], |_, x| t.push(x.clone()));
    assert_eq!(t.last(), Some(&Taken::Late));
    assert_eq!(e.counters().late, 1);
    assert_eq!(e.latest_window("a"), Some(10));
}

/// An engine restored from another's head and cells goes on exactly as the original.
#[test]
fn a_restored_engine_goes_on_as_the_original() {
    let s = spec(
        WindowKind::Hopping {
            size_ms: 30,
            slide_ms: 10,
        },
        TimeMode::Event,
        5,
        1000,
        10,
        2,
    );
    let mut a = Engine::new(s.clone());
    let env = |k: &str, v: i64| format!(r#"{{"payload":{{"k":"{k}","v":{v}}}}}"#);
    let feed = |e: &mut Engine, p: u32, append: i64, ts: &[(i64, &str)]| {
        let envs: Vec<String> = ts.iter().map(|(t, k)| env(k, *t)).collect();
        let inputs: Vec<Input<'_>> = ts
            .iter()
            .zip(&envs)
            .enumerate()
            .map(|(i, ((t, _), en))| Input {
                offset: append * 10 + i64::try_from(i).unwrap(),
                event_ms: *t,
                event_type: b"a.x",
                envelope: en.as_bytes(),
                prepared: None,
            })
            .collect();
        e.process_batch(p, append, inputs, |_, _| {});
    };
    feed(&mut a, 0, 1, &[(5, "x"), (12, "y"), (25, "x")]);
    feed(&mut a, 1, 2, &[(40, "y"), (8, "x")]);
    let mut cells = Vec::new();
    a.take_unsaved(|p, k, st| cells.push((p, Arc::clone(k), st.to_vec())));
    let mut b = Engine::restore(s, a.head(), cells);
    let closed_a = a.take_closed();
    for e in [&mut a, &mut b] {
        feed(e, 0, 3, &[(60, "x"), (41, "y")]);
        feed(e, 1, 4, &[(90, "y"), (20, "x")]);
    }
    assert_eq!(a.take_closed(), b.take_closed());
    assert_eq!(a.watermark(), b.watermark());
    assert_eq!(a.counters(), b.counters());
    for start in [60, 70, 80, 90] {
        for k in ["x", "y"] {
            assert_eq!(a.window_values(k, start), b.window_values(k, start));
        }
    }
    assert!(!closed_a.is_empty() || a.watermark() > 0);
}

/// A loss to retention marks every window open at the loss and every later one up to
/// the bound incomplete, in the view's changed rows and in closed rows; windows closed
/// before it, and past the bound, stay complete. The mark survives a restore.
#[test]
fn a_loss_marks_open_windows_and_windows_up_to_its_bound_incomplete() {
    let s = spec(
        WindowKind::Tumbling { size_ms: 10 },
        TimeMode::Event,
        0,
        1000,
        0,
        1,
    );
    let mut e = Engine::new(s.clone());
    let env = r#"{"payload":{"k":"a","v":1}}"#;
    let feed = |e: &mut Engine, append: i64, ts: i64| {
        let input = Input {
            offset: append,
            event_ms: ts,
            event_type: b"a.x",
            envelope: env.as_bytes(),
            prepared: None,
        };
        e.process_batch(0, append, [input], |_, _| {});
    };
    feed(&mut e, 1, 5);
    feed(&mut e, 2, 12);
    // [0,10) closed before the loss; [10,20) is open at it; the bound is 35.
    e.take_changed(|_, _, _| {});
    e.note_loss(0, 7, Some(35));
    assert_eq!(e.counters().lost, 7);
    let mut changed = Vec::new();
    e.take_changed(|start, _, _| changed.push(start));
    assert_eq!(changed, [10], "the open window is listed again");
    assert!(!e.is_complete(10));
    assert!(!e.is_complete(30), "starts at or before the bound");
    assert!(e.is_complete(40), "starts past the bound");
    let mut cells = Vec::new();
    e.take_unsaved(|p, k, st| cells.push((p, Arc::clone(k), st.to_vec())));
    let mut r = Engine::restore(s, e.head(), cells);
    for e in [&mut e, &mut r] {
        feed(e, 3, 45);
        let closed: Vec<(i64, bool)> = e
            .take_closed()
            .iter()
            .map(|c| (c.start_ms, c.complete))
            .collect();
        // The original also closed [0,10) before the loss: complete.
        assert!(
            closed == [(10, false)] || closed == [(0, true), (10, false)],
            "{closed:?}"
        );
        feed(e, 4, 55);
        assert!(e.is_complete(40), "{:?}", e.head().taints);
        feed(e, 5, 100);
        assert!(e.head().taints.is_empty(), "expired with its windows");
    }
}

#[test]
fn beyond_max_cells_an_event_is_refused_and_its_windows_turn_incomplete() {
    let mut s = spec(
        WindowKind::Tumbling { size_ms: 10 },
        TimeMode::Event,
        0,
        1000,
        0,
        1,
    );
    s.max_cells = 2;
    let mut e = Engine::new(s);
    let mut outcomes = Vec::new();
    let mut feed = |e: &mut Engine, offset: i64, ts: i64, key: &str| {
        let env = format!(r#"{{"payload":{{"k":"{key}","v":1}}}}"#);
        let input = Input {
            offset,
            event_ms: ts,
            event_type: b"a.x",
            envelope: env.as_bytes(),
            prepared: None,
        };
        e.process_batch(0, offset, [input], |_, t| outcomes.push(t.clone()));
    };
    feed(&mut e, 1, 1, "a");
    feed(&mut e, 2, 2, "b");
    feed(&mut e, 3, 3, "a");
    feed(&mut e, 4, 4, "c");
    feed(&mut e, 5, 5, "d");
    assert_eq!(e.counters().refused, 2);
    assert_eq!(e.cells(), 2);
    assert!(!e.is_complete(0), "window 0 lost c and d to the bound");
    assert_eq!(e.head().taints.len(), 1, "one taint per pane");
    // The event at 15 closes window 0 (its cells go), but came before the close: it is
    // refused too, and window 1 is incomplete. Then window 1 and 2 take new keys again.
    feed(&mut e, 6, 15, "c");
    let closed: Vec<(i64, String, bool)> = e
        .take_closed()
        .iter()
        .map(|c| (c.start_ms, c.key.to_string(), c.complete))
        .collect();
    assert_eq!(
        closed,
        [(0, "a".into(), false), (0, "b".into(), false)],
        "never a silent undercount"
    );
    assert_eq!((e.cells(), e.counters().refused), (0, 3));
    assert!(!e.is_complete(10));
    feed(&mut e, 7, 16, "c");
    feed(&mut e, 8, 25, "x");
    assert_eq!(
        (e.cells(), e.counters().refused),
        (1, 3),
        "window 1 closed at 25"
    );
    assert!(e.is_complete(20));
    assert_eq!(
        outcomes
            .iter()
            .filter(|t| matches!(t, Taken::Refused))
            .count(),
        3
    );
}

/// A naive model of session windows: every session keeps its events, found by linear
/// scans, values recomputed from the events; the rules of `session` written plainly.
/// With no effective `max_length`, the open sessions are also checked against the
/// connected components of the open events' own windows `[t, t + gap)`, recomputed from
/// scratch: merging does not depend on arrival order.
/// (start, last, end, events) of an open session of the model.
type ModelSession = (i64, i64, i64, Vec<(Position, String)>);
/// (start, last, end, states) of a stored session.
type StoredSession = (i64, i64, i64, Vec<AggState>);

struct SessionModel {
    spec: Spec,
    gap: i64,
    max: i64,
    history: Vec<(u32, i64, Vec<i64>)>,
    watermark: i64,
    /// Key -> open sessions (start, last, end, events), in no particular order.
    open: BTreeMap<String, Vec<ModelSession>>,
    /// (start, key) -> (end, values).
    closed: BTreeMap<(i64, String), (i64, String)>,
    /// Offset of the next batch's first record (offsets unique, so first/last have no
    /// ties).
    base: i64,
}

impl SessionModel {
    fn values(&self, events: &[(Position, String)]) -> String {
        let mut states: Vec<AggState> = self
            .spec
            .aggregates
            .iter()
            .map(|a| AggState::new(a.func))
            .collect();
        for (pos, envelope) in events {
            for (agg, state) in self.spec.aggregates.iter().zip(states.iter_mut()) {
                let value = agg
                    .field
                    .as_ref()
                    .and_then(|p| json::pointer_get(envelope, p).ok().flatten());
                state.update(value, *pos, agg.field.is_some());
            }
        }
        values_json(&states)
    }

    fn batch(&mut self, b: &Batch) -> Vec<Taken> {
        let (gap, max, lateness) = (self.gap, self.max, self.spec.allowed_lateness_ms);
        let mut taken = Vec::new();
        let mut times = Vec::new();
        for (r, i) in b.records.iter().zip(0i64..) {
            let t = match self.spec.time {
                TimeMode::Event => r.event_ms,
                TimeMode::Ingest => b.append_ms,
            };
            if !self.spec.filter.accepts(r.event_type.as_bytes()) {
                taken.push(Taken::Filtered);
                continue;
            }
            let mut key = String::new();
            if let Err(e) = self.spec.group_by.key_into(r.envelope.as_bytes(), &mut key) {
                taken.push(Taken::NoKey(e));
                continue;
            }
            times.push(t);
            if self.watermark != watermark::NONE && t + gap + lateness <= self.watermark {
                taken.push(Taken::Late);
                continue;
            }
            let pos = Position {
                ts_ms: t,
                partition: b.partition,
                offset: self.base + i,
            };
            let event = (pos, r.envelope.clone());
            let list = self.open.entry(key).or_default();
            list.sort_by_key(|s| s.0);
            let cands: Vec<usize> = (0..list.len())
                .filter(|i| list[*i].0 < t + gap && list[*i].2 > t)
                .collect();
            let oldest = cands.iter().map(|i| list[*i].0).chain([t]).min().unwrap();
            let newest = cands.iter().map(|i| list[*i].1).chain([t]).max().unwrap();
            if !cands.is_empty() && newest - oldest < max {
                let mut events = vec![event];
                for i in cands.iter().rev() {
                    events.extend(list.remove(*i).3);
                }
                let end = (newest + gap).min(oldest + max);
                list.push((oldest, newest, end, events));
            } else if let Some(i) = cands
                .iter()
                .copied()
                .find(|i| list[*i].0 <= t && t < list[*i].2)
            {
                let s = &mut list[i];
                s.1 = s.1.max(t);
                s.2 = (s.1 + gap).min(s.0 + max);
                s.3.push(event);
            } else {
                list.push((t, t, t + gap.min(max), vec![event]));
            }
            taken.push(Taken::Counted(1));
        }
        self.history.push((b.partition, b.append_ms, times));
        let m = Model {
            spec: self.spec.clone(),
            history: std::mem::take(&mut self.history),
            watermark: self.watermark,
            counted: Vec::new(),
            closed: BTreeMap::new(),
            closed_windows: BTreeSet::new(),
        };
        self.watermark = m.watermark_now();
        self.history = m.history;
        let wm = self.watermark;
        let mut closing = Vec::new();
        for (key, list) in &mut self.open {
            let (gone, stay): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|s| wm != watermark::NONE && s.2 + lateness <= wm);
            *list = stay;
            closing.extend(gone.into_iter().map(|s| (key.clone(), s)));
        }
        self.open.retain(|_, l| !l.is_empty());
        for (key, (start, _, end, events)) in closing {
            let v = self.values(&events);
            assert!(
                self.closed.insert((start, key), (end, v)).is_none(),
                "two sessions of a key share a start"
            );
        }
        taken
    }

    /// Open sessions as the components of the open events' windows, recomputed.
    fn components(&self, key: &str) -> Vec<(i64, i64)> {
        let mut ts: Vec<i64> = self.open[key]
            .iter()
            .flat_map(|s| s.3.iter().map(|(p, _)| p.ts_ms))
            .collect();
        ts.sort_unstable();
        let mut out: Vec<(i64, i64)> = Vec::new();
        for t in ts {
            match out.last_mut() {
                Some((_, last)) if t < *last + self.gap => *last = (*last).max(t),
                _ => out.push((t, t)),
            }
        }
        out
    }
}

fn session_kind() -> impl Strategy<Value = WindowKind> {
    (1i64..20, prop_oneof![Just(None), (0i64..40).prop_map(Some)]).prop_map(|(gap_ms, extra)| {
        WindowKind::Session {
            gap_ms,
            max_ms: extra.map_or(1_000_000, |e| gap_ms + e),
        }
    })
}

/// The engine's open sessions: key -> (start, last, end, values).
fn engine_sessions(e: &Engine) -> BTreeMap<(String, i64), (i64, i64, String)> {
    e.session_lists()
        .flat_map(|(k, list)| {
            list.iter().map(move |s| {
                (
                    (k.to_string(), s.start),
                    (s.last, s.end, values_json(&s.states)),
                )
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Sessions against the naive model (keys read by the engine or ahead of it): what
    /// each event became, the watermark, the
    /// closed rows, the open sessions; the rows a view applying `take_removed`,
    /// `take_changed_rows` and `take_closed` after every batch holds; and an engine
    /// restored from what checkpoints after every batch stored (bucket rewrites per
    /// slot) holds the same open sessions.
    #[test]
    fn sessions_equal_the_naive_model(
        window in session_kind(),
        ingest_time in any::<bool>(),
        ooo in 0i64..20,
        idle in 0i64..40,
        lateness in 0i64..20,
        parts in 1u32..4,
        input in (1u32..4).prop_flat_map(batches),
        read_ahead in any::<bool>(),
    ) {
        let WindowKind::Session { gap_ms, max_ms } = window else { unreachable!() };
        let time = if ingest_time { TimeMode::Ingest } else { TimeMode::Event };
        let input: Vec<Batch> = input.into_iter().map(|mut b| { b.partition %= parts; b }).collect();
        let s = spec(window, time, ooo, idle, lateness, parts as usize);
        let mut engine = Engine::new(s.clone());
        let mut model = SessionModel {
            spec: s.clone(),
            gap: gap_ms,
            max: max_ms,
            history: Vec::new(),
            watermark: watermark::NONE,
            open: BTreeMap::new(),
            closed: BTreeMap::new(),
            base: 0,
        };
        let mut engine_closed = BTreeMap::new();
        // (start, key) -> (end, values, closed): what a view holds.
        let mut view: BTreeMap<(i64, String), (i64, String, bool)> = BTreeMap::new();
        // (slot, key) -> stored sessions (start, last, end, states).
        let mut stored: BTreeMap<(i64, String), Vec<StoredSession>> = BTreeMap::new();
        for b in &input {
            let mut got = Vec::new();
            let base = model.base;
            let keys = prepare(&engine, b, read_ahead);
            let inputs = b.records.iter().zip(&keys).zip(0i64..).map(|((r, key), i)| Input {
                offset: base + i,
                event_ms: r.event_ms,
                event_type: r.event_type.as_bytes(),
                envelope: r.envelope.as_bytes(),
                prepared: as_prepared(key),
            });
            engine.process_batch(b.partition, b.append_ms, inputs, |_, t| got.push(t.clone()));
            let want = model.batch(b);
            model.base += 100;
            prop_assert_eq!(got, want);
            prop_assert_eq!(engine.watermark(), model.watermark);
            for (start, key) in engine.take_removed() {
                view.remove(&(start, key.to_string()));
            }
            engine.take_changed_rows(
                &mut |start, end, key: &Arc<str>, values: States, _, hint: Hint| {
                    view.insert((start, key.to_string()), (end, values_json(&values), false));
                    hint
                },
            );
            for row in engine.take_closed() {
                let k = (row.start_ms, row.key.to_string());
                let v = (row.end_ms, values_json(&row.values));
                view.insert(k.clone(), (v.0, v.1.clone(), true));
                prop_assert!(engine_closed.insert(k, v).is_none(), "a session closed twice");
            }
            let mut touched = Vec::new();
            engine.take_unsaved(|slot, key, _| touched.push((slot, Arc::clone(key))));
            for (slot, key) in touched {
                let mut now = Vec::new();
                engine.slot_sessions(slot, |k, start, last, end, states| {
                    if k == key.as_bytes() {
                        now.push((start, last, end, states.to_vec()));
                    }
                });
                stored.insert((slot, key.to_string()), now);
            }
            let mut want_view = BTreeMap::new();
            for ((start, key), (end, v)) in &model.closed {
                want_view.insert((*start, key.clone()), (*end, v.clone(), true));
            }
            for (key, list) in &model.open {
                for (start, _, end, events) in list {
                    want_view.insert((*start, key.clone()), (*end, model.values(events), false));
                }
            }
            prop_assert_eq!(&view, &want_view);
            if max_ms >= 1_000_000 {
                for key in model.open.keys() {
                    let mut mine: Vec<(i64, i64)> = model.open[key].iter().map(|s| (s.0, s.1)).collect();
                    mine.sort_unstable();
                    prop_assert_eq!(mine, model.components(key), "key {}", key);
                }
            }
        }
        let want_closed: BTreeMap<_, _> = model.closed.clone();
        prop_assert_eq!(&engine_closed, &want_closed);
        let mut want_open = BTreeMap::new();
        for (key, list) in &model.open {
            for (start, last, end, events) in list {
                want_open.insert((key.clone(), *start), (*last, *end, model.values(events)));
            }
        }
        prop_assert_eq!(&engine_sessions(&engine), &want_open);
        // Found by key as a query finds them: keys read ahead are hashed as the engine's.
        for (key, list) in &model.open {
            let mut want: Vec<i64> = list.iter().map(|s| s.0).collect();
            want.sort_unstable();
            prop_assert_eq!(spans(&engine, key).iter().map(|s| s.0).collect::<Vec<_>>(), want, "key {}", key);
        }
        prop_assert_eq!(engine.cells(), want_open.len());
        let mut restored = Engine::restore(s, engine.head(), Vec::new());
        for ((_, key), list) in stored {
            for (start, last, end, states) in list {
                restored.restore_session((Arc::from(key.as_str()), start, last, end, states));
            }
        }
        prop_assert_eq!(engine_sessions(&restored), engine_sessions(&engine));
    }
}

fn session_engine(gap_ms: i64, max_ms: i64, lateness: i64) -> Engine {
    Engine::new(spec(
        WindowKind::Session { gap_ms, max_ms },
        TimeMode::Event,
        0,
        1000,
        lateness,
        1,
    ))
}

/// Feeds one event of key `k` at `ts` as its own batch; returns what became of it.
fn feed_one(e: &mut Engine, offset: i64, ts: i64, k: &str) -> Taken {
    let env = format!(r#"{{"payload":{{"k":"{k}","v":1}}}}"#);
    let mut out = None;
    let input = Input {
        offset,
        event_ms: ts,
        event_type: b"a.x",
        envelope: env.as_bytes(),
        prepared: None,
    };
    e.process_batch(0, offset, [input], |_, t| out = Some(t.clone()));
    out.unwrap()
}

fn spans(e: &Engine, k: &str) -> Vec<(i64, i64)> {
    e.sessions_of(k)
        .map(|l| l.iter().map(|s| (s.start, s.end)).collect())
        .unwrap_or_default()
}

#[test]
fn an_event_within_gap_extends_a_session_and_one_before_moves_its_start() {
    let mut e = session_engine(10, 1000, 100);
    feed_one(&mut e, 1, 100, "a");
    feed_one(&mut e, 2, 105, "a");
    assert_eq!(spans(&e, "a"), [(100, 115)]);
    feed_one(&mut e, 3, 115, "a");
    assert_eq!(spans(&e, "a"), [(100, 115), (115, 125)], "end is exclusive");
    e.take_changed(|_, _, _| {});
    feed_one(&mut e, 4, 95, "b");
    feed_one(&mut e, 5, 92, "a");
    assert_eq!(spans(&e, "a"), [(92, 115), (115, 125)]);
    let removed: Vec<i64> = e.take_removed().iter().map(|r| r.0).collect();
    assert_eq!(removed, [100], "the row at the old start leaves the view");
}

#[test]
fn an_event_bridging_two_sessions_merges_them() {
    let mut e = session_engine(10, 1000, 100);
    feed_one(&mut e, 1, 100, "a");
    feed_one(&mut e, 2, 115, "a");
    assert_eq!(spans(&e, "a"), [(100, 110), (115, 125)]);
    assert_eq!(feed_one(&mut e, 3, 108, "a"), Taken::Counted(1));
    assert_eq!(spans(&e, "a"), [(100, 125)]);
    assert_eq!(e.cells(), 1);
    assert_eq!(
        e.window_values("a", 100).map(|v| values_json(&v)),
        Some(r#"3 3 1 1 1.0 1 1 1 {"p50":1.0,"p90":1.0,"p99":1.0} "#.into())
    );
    let removed: Vec<i64> = e.take_removed().iter().map(|r| r.0).collect();
    assert_eq!(removed, [115]);
    let mut slots = Vec::new();
    e.take_unsaved(|slot, _, _| slots.push(slot));
    assert!(
        slots.contains(&110),
        "the merged-away cell's bucket is rewritten"
    );
}

#[test]
fn a_closed_session_never_merges_the_event_opens_a_new_one() {
    let mut e = session_engine(10, 1000, 0);
    feed_one(&mut e, 1, 100, "a");
    feed_one(&mut e, 2, 111, "b");
    let closed = e.take_closed();
    assert_eq!(
        closed
            .iter()
            .map(|c| (c.start_ms, c.end_ms))
            .collect::<Vec<_>>(),
        [(100, 110)]
    );
    // 105 would have joined [100, 110): its own window [105, 115) is open.
    assert_eq!(feed_one(&mut e, 3, 105, "a"), Taken::Counted(1));
    assert_eq!(spans(&e, "a"), [(105, 115)]);
    // 101's own window [101, 111) is closed: late, though it touches an open session.
    assert_eq!(feed_one(&mut e, 4, 101, "a"), Taken::Late);
    assert_eq!(spans(&e, "a"), [(105, 115)]);
}

#[test]
fn max_length_bounds_a_key_that_never_pauses() {
    let mut e = session_engine(10, 30, 0);
    for (i, ts) in (100..160).step_by(5).enumerate() {
        feed_one(&mut e, i64::try_from(i).unwrap(), ts, "a");
    }
    let closed: Vec<(i64, i64)> = e
        .take_closed()
        .iter()
        .map(|c| (c.start_ms, c.end_ms))
        .collect();
    assert_eq!(closed, [(100, 130)], "30 long; 130 opened the next");
    assert_eq!(spans(&e, "a"), [(130, 160)]);
    // Out of order: joining [130, 160) from 125 would make it 35 long, and 125 lies in
    // no open session: it opens its own. A span of exactly max_length does not fit.
    let mut e = session_engine(10, 30, 100);
    for (i, ts) in [130, 138, 146, 155].into_iter().enumerate() {
        feed_one(&mut e, i64::try_from(i).unwrap(), ts, "a");
    }
    assert_eq!(spans(&e, "a"), [(130, 160)]);
    feed_one(&mut e, 5, 125, "a");
    assert_eq!(spans(&e, "a"), [(125, 135), (130, 160)]);
    let mut e = session_engine(10, 30, 100);
    for (i, ts) in [130, 138, 146, 150].into_iter().enumerate() {
        feed_one(&mut e, i64::try_from(i).unwrap(), ts, "a");
    }
    feed_one(&mut e, 5, 120, "a");
    assert_eq!(spans(&e, "a"), [(120, 130), (130, 160)]);
    feed_one(&mut e, 4, 121, "a");
    assert_eq!(spans(&e, "a"), [(120, 131), (130, 160)]);
}

/// The list of changed sessions stops at its bound while the view is not refreshed
/// (entries of sessions closed since pile up): the take then finds every dirty open
/// session by a walk, each once, and the list works again after it.
#[test]
fn changed_sessions_past_the_lists_bound_are_found_by_a_walk() {
    let mut e = session_engine(10, 1000, 0);
    // One key, 5,000 sessions one after another: each closes when the next opens, and
    // every one was listed as changed. Two keys with an open session at the end.
    for i in 0..5_000i64 {
        feed_one(&mut e, i, 100 + 20 * i, "a");
    }
    feed_one(&mut e, 5_000, 100 + 20 * 4_999 + 1, "b");
    assert!(e.changed_len() < 5_000, "the list is bounded");
    let mut rows = Vec::new();
    e.take_changed(|start, key, _| rows.push((start, key.to_string())));
    rows.sort();
    assert_eq!(
        rows,
        [
            (100 + 20 * 4_999, "a".to_string()),
            (100 + 20 * 4_999 + 1, "b".to_string())
        ]
    );
    e.take_changed(|start, _, _| panic!("{start} taken twice"));
    feed_one(&mut e, 5_001, 100 + 20 * 5_000, "a");
    assert_eq!(e.changed_len(), 1, "listed again after the walk");
    let mut starts = Vec::new();
    e.take_changed(|start, _, _| starts.push(start));
    assert_eq!(starts, [100 + 20 * 5_000]);
}

/// Where a closed row's apply found the view holding its key goes back to the key's
/// slot, for the key's next closed row: not to another key (a stranger `Arc` of any
/// text), nor to the key that took the id after the slot was freed.
#[test]
fn a_closed_rows_view_place_goes_back_to_its_key_only() {
    use crate::pipeline::view::{HotView, Row};
    let view = HotView::new(vec!["count".into()], 0, 0, 1, 1000).with_sessions();
    let mut e = session_engine(10, 1000, 0);
    let apply = |c: &ClosedRow| {
        let row = Row::closed(c.end_ms, c.values.clone(), c.complete, 1);
        view.write(|v| v.upsert_hinted(c.start_ms, &c.key, row, c.view))
    };
    feed_one(&mut e, 1, 100, "a");
    feed_one(&mut e, 2, 111, "b");
    let closed = e.take_closed();
    let a = &closed[0];
    assert_eq!((&*a.key, a.view), ("a", Hint::NONE));
    let at = apply(a);
    assert_ne!(at, Hint::NONE);
    e.view_moved(a.id, &Arc::from("a"), at);
    feed_one(&mut e, 3, 120, "a");
    feed_one(&mut e, 4, 131, "b");
    let closed = e.take_closed();
    let a2 = closed.iter().find(|c| &*c.key == "a").unwrap();
    assert_eq!(
        a2.view,
        Hint::NONE,
        "another Arc of the same text is not the key"
    );
    e.view_moved(a2.id, &a2.key, at);
    feed_one(&mut e, 5, 140, "a");
    feed_one(&mut e, 6, 151, "b");
    let closed = e.take_closed();
    let a3 = closed.iter().find(|c| &*c.key == "a").unwrap();
    assert_eq!(a3.view, at, "the key's next row brings it");
    assert_eq!(apply(a3), at, "and the view still holds the key there");
    // a's slot is freed at the next take of unsaved sessions (a has none open); c takes
    // the id, and a's late news is not c's.
    e.take_unsaved(|_, _, _| {});
    feed_one(&mut e, 7, 160, "c");
    assert_eq!(&*e.keyed[a3.id as usize].key, "c", "c took a's id");
    e.view_moved(a3.id, &a3.key, at);
    feed_one(&mut e, 8, 181, "b");
    let closed = e.take_closed();
    let c = closed.iter().find(|c| &*c.key == "c").unwrap();
    assert_eq!(c.view, Hint::NONE);
}

/// The rows a round closed come with their encodings for the result store, in their
/// order, after the rows already waiting, once: sessions and fixed windows alike.
#[test]
fn closed_rows_come_encoded_once_in_their_order() {
    use crate::store::RowWrites;
    let encoded = |rows: &[ClosedRow]| {
        let mut w = RowWrites::default();
        for c in rows {
            w.push(
                c.start_ms, &c.key, c.bucket, c.end_ms, c.complete, &c.values,
            );
        }
        w
    };
    let tumbling = Engine::new(spec(
        WindowKind::Tumbling { size_ms: 10 },
        TimeMode::Event,
        0,
        1000,
        0,
        1,
    ));
    for mut e in [session_engine(10, 1000, 0), tumbling] {
        let mut waiting = RowWrites::default();
        let mut all = Vec::new();
        let mut rows = Vec::new();
        for (i, (ts, k)) in [(100, "a"), (103, "b"), (111, "c"), (125, "a"), (140, "b")]
            .into_iter()
            .enumerate()
        {
            feed_one(&mut e, i64::try_from(i).unwrap(), ts, k);
            e.swap_closed(&mut rows, &mut waiting);
            all.append(&mut rows);
        }
        assert!(all.len() >= 3, "{all:?}");
        assert_eq!(waiting, encoded(&all));
        e.swap_closed(&mut rows, &mut waiting);
        assert!(rows.is_empty());
        assert_eq!(waiting, encoded(&all), "nothing twice");
    }
}
