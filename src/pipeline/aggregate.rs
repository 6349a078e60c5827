//! Aggregate functions: the state one (pane, key) keeps per `[[pipeline.aggregate]]`, how
//! an event updates it, how panes merge into a window, and its JSON value.
//!
//! Integer inputs are summed exactly (in i128) so counts and sums of amounts in cents stay
//! exact; a float anywhere turns the sum into a float. `first` and `last` order events by
//! event time, ties by partition then offset, so they do not depend on the read order.
//! `count_distinct` and `quantiles` keep the sketches of [`super::sketch`]; their states
//! too depend only on the values taken, so panes merge into exactly one pass's state.
//! No IO.

use std::cmp::Ordering;

use super::sketch::{DdSketch, Hll, hash_value};
use crate::json::JsonPointer;

/// The `fn` of an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFn {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    First,
    Last,
    /// Distinct values of the field (HyperLogLog++).
    CountDistinct,
    /// Quantiles of the field's numbers (DDSketch).
    Quantiles,
}

impl AggFn {
    pub const NAMES: &[(&str, AggFn)] = &[
        ("count", AggFn::Count),
        ("sum", AggFn::Sum),
        ("min", AggFn::Min),
        ("max", AggFn::Max),
        ("avg", AggFn::Avg),
        ("first", AggFn::First),
        ("last", AggFn::Last),
        ("count_distinct", AggFn::CountDistinct),
        ("quantiles", AggFn::Quantiles),
    ];

    pub fn parse(name: &str) -> Option<AggFn> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    /// Whether the function reads a `field` (count may, to count where it is present).
    pub fn needs_field(self) -> bool {
        self != AggFn::Count
    }
}

/// One `[[pipeline.aggregate]]`.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// The key of its value in results.
    pub name: String,
    pub func: AggFn,
    /// A JSON pointer into the envelope; required unless `func` is count.
    pub field: Option<JsonPointer>,
    /// For `quantiles`: which, each in (0, 1), ascending; empty for other functions.
    pub quantiles: Vec<f64>,
}

/// The result key of quantile `q`: `p` and 100·q in shortest decimal form, from `q`'s
/// own digits so no rounding shows (0.5 -> `p50`, 0.999 -> `p99.9`, 0.001 -> `p0.1`).
pub fn quantile_label(q: f64) -> String {
    let text = q.to_string();
    let Some(digits) = text.strip_prefix("0.") else {
        // Outside (0, 1): the config refuses it; still a distinct label.
        return format!("p{text}");
    };
    let (int, frac) = if digits.len() <= 2 {
        (format!("{digits:0<2}"), "")
    } else {
        (digits[..2].to_string(), &digits[2..])
    };
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    if frac.is_empty() {
        format!("p{int}")
    } else {
        format!("p{int}.{frac}")
    }
}

/// Where an event sits: orders `first` and `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub ts_ms: i64,
    pub partition: u32,
    pub offset: i64,
}

/// A JSON number, kept exact when it is an integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    /// The number a raw JSON value holds, if it is a number.
    pub fn parse(raw: &str) -> Option<Num> {
        let first = *raw.as_bytes().first()?;
        if !(first == b'-' || first.is_ascii_digit()) {
            return None;
        }
        if !raw.contains(['.', 'e', 'E'])
            && let Ok(i) = raw.parse::<i64>()
        {
            return Some(Num::Int(i));
        }
        raw.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Num::Float)
    }

    pub fn as_f64(self) -> f64 {
        match self {
            #[allow(clippy::cast_precision_loss, reason = "floats are for display and avg")]
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (a, b) => a.as_f64().total_cmp(&b.as_f64()),
        }
    }

    fn write_json(self, out: &mut String) {
        match self {
            Num::Int(i) => out.push_str(itoa::Buffer::new().format(i)),
            Num::Float(f) => write_f64(f, out),
        }
    }
}

/// Keeps the number in `value` if it is further than `held` in direction `want`.
fn keep_extreme(held: &mut Option<Num>, value: Option<&str>, want: Ordering) -> bool {
    let Some(num) = value.and_then(Num::parse) else {
        return false;
    };
    if held.is_none_or(|old| num.cmp(old) == want) {
        *held = Some(num);
    }
    true
}

/// Keeps `value` if its position is further than the held one's in direction `want`.
fn keep_ordered(
    held: &mut Option<Box<Ordered>>,
    value: Option<&str>,
    pos: Position,
    want: Ordering,
) -> bool {
    let Some(v) = value else {
        return false;
    };
    match held {
        // The box is reused: `last` over events in order replaces it at every event.
        Some(o) if pos.cmp(&o.pos) == want => {
            o.pos = pos;
            o.value = v.into();
        }
        Some(_) => {}
        None => {
            *held = Some(Box::new(Ordered {
                pos,
                value: v.into(),
            }));
        }
    }
    true
}

/// What `first` or `last` holds: the value's raw JSON text and where its event was.
/// Boxed in [`AggState`], which it would make 48 bytes instead of 32.
#[derive(Debug, Clone, PartialEq)]
pub struct Ordered {
    pub pos: Position,
    pub value: Box<str>,
}

/// An exact integer sum: an `i128` kept as two 8-byte halves, so [`AggState`] stays
/// 8-aligned (an `i128` field made every state 64 bytes, where 32 do). `i128::MIN`
/// stands for "not exact" (a float was summed, or the sum overflowed): a sum of `i64`
/// values reaches it only after 2^64 of them, and a sum that lands on it exactly is
/// taken for an overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactSum([u64; 2]);

impl ExactSum {
    pub const ZERO: ExactSum = ExactSum([0, 0]);

    pub fn new(value: Option<i128>) -> ExactSum {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "the two halves of the bits"
        )]
        let v = value.unwrap_or(i128::MIN) as u128;
        #[allow(clippy::cast_possible_truncation, reason = "the low half")]
        ExactSum([v as u64, (v >> 64) as u64])
    }

    pub fn get(self) -> Option<i128> {
        #[allow(clippy::cast_possible_wrap, reason = "the bits back")]
        let v = (u128::from(self.0[1]) << 64 | u128::from(self.0[0])) as i128;
        (v != i128::MIN).then_some(v)
    }

    /// The sum with `other` added (`None`: not exact).
    fn plus(self, other: Option<i128>) -> ExactSum {
        ExactSum::new(self.get().zip(other).and_then(|(a, b)| a.checked_add(b)))
    }
}

fn write_f64(f: f64, out: &mut String) {
    if f.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(f));
    } else {
        out.push_str("null");
    }
}

/// The state of one aggregate in one (pane, key), or in one window after merging panes.
/// One state per aggregate, in spec order: inline for a single aggregate, so a window's
/// states take no allocation of their own (a session is mostly one or two events).
pub type States = smallvec::SmallVec<[AggState; 1]>;

#[derive(Debug, Clone, PartialEq)]
pub enum AggState {
    Count(u64),
    /// `exact` while every value was an integer; `float` always; `taken` once a value
    /// was.
    Sum {
        exact: ExactSum,
        float: f64,
        taken: bool,
    },
    Min(Option<Num>),
    Max(Option<Num>),
    Avg {
        sum: f64,
        n: u64,
    },
    First(Option<Box<Ordered>>),
    Last(Option<Box<Ordered>>),
    CountDistinct(Hll),
    Quantiles(Box<DdSketch>),
}

impl AggState {
    pub fn new(func: AggFn) -> AggState {
        match func {
            AggFn::Count => AggState::Count(0),
            AggFn::Sum => AggState::Sum {
                exact: ExactSum::ZERO,
                float: 0.0,
                taken: false,
            },
            AggFn::Min => AggState::Min(None),
            AggFn::Max => AggState::Max(None),
            AggFn::Avg => AggState::Avg { sum: 0.0, n: 0 },
            AggFn::First => AggState::First(None),
            AggFn::Last => AggState::Last(None),
            AggFn::CountDistinct => AggState::CountDistinct(Hll::default()),
            AggFn::Quantiles => AggState::Quantiles(Box::default()),
        }
    }

    /// Takes one event whose field (if the aggregate has one) is `value`, the raw JSON
    /// text or `None` when absent. Returns false when the event had no usable value
    /// (absent, null, or not a number for a numeric function): skipped, to be counted.
    pub fn update(&mut self, value: Option<&str>, pos: Position, has_field: bool) -> bool {
        let value = value.filter(|v| *v != "null");
        match self {
            AggState::Count(c) => {
                if has_field && value.is_none() {
                    return false;
                }
                *c += 1;
            }
            AggState::Sum {
                exact,
                float,
                taken,
            } => {
                let Some(num) = value.and_then(Num::parse) else {
                    return false;
                };
                *exact = exact.plus(match num {
                    Num::Int(i) => Some(i128::from(i)),
                    Num::Float(_) => None,
                });
                *float += num.as_f64();
                *taken = true;
            }
            AggState::Min(m) => return keep_extreme(m, value, Ordering::Less),
            AggState::Max(m) => return keep_extreme(m, value, Ordering::Greater),
            AggState::Avg { sum, n } => {
                let Some(num) = value.and_then(Num::parse) else {
                    return false;
                };
                *sum += num.as_f64();
                *n += 1;
            }
            AggState::First(slot) => return keep_ordered(slot, value, pos, Ordering::Less),
            AggState::Last(slot) => return keep_ordered(slot, value, pos, Ordering::Greater),
            AggState::CountDistinct(hll) => {
                let Some(v) = value else {
                    return false;
                };
                hll.insert(hash_value(v));
            }
            AggState::Quantiles(sketch) => {
                let Some(num) = value.and_then(Num::parse) else {
                    return false;
                };
                sketch.insert(num.as_f64());
            }
        }
        true
    }

    /// Folds `other` (the same function, another pane) into `self`.
    pub fn merge(&mut self, other: &AggState) {
        match (self, other) {
            (AggState::Count(a), AggState::Count(b)) => *a += b,
            (
                AggState::Sum {
                    exact,
                    float,
                    taken,
                },
                AggState::Sum {
                    exact: e2,
                    float: f2,
                    taken: t2,
                },
            ) => {
                *exact = exact.plus(e2.get());
                *float += f2;
                *taken |= t2;
            }
            (AggState::Min(a), AggState::Min(b)) => {
                if let Some(b) = b
                    && a.is_none_or(|a| b.cmp(a) == Ordering::Less)
                {
                    *a = Some(*b);
                }
            }
            (AggState::Max(a), AggState::Max(b)) => {
                if let Some(b) = b
                    && a.is_none_or(|a| b.cmp(a) == Ordering::Greater)
                {
                    *a = Some(*b);
                }
            }
            (AggState::Avg { sum, n }, AggState::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (AggState::First(a), AggState::First(b)) => {
                if let Some(b) = b
                    && a.as_ref().is_none_or(|a| b.pos < a.pos)
                {
                    *a = Some(b.clone());
                }
            }
            (AggState::Last(a), AggState::Last(b)) => {
                if let Some(b) = b
                    && a.as_ref().is_none_or(|a| b.pos > a.pos)
                {
                    *a = Some(b.clone());
                }
            }
            (AggState::CountDistinct(a), AggState::CountDistinct(b)) => a.merge(b),
            (AggState::Quantiles(a), AggState::Quantiles(b)) => a.merge(b),
            (a, b) => debug_assert!(false, "merging {a:?} with {b:?}"),
        }
    }

    /// The value as a number to rank by (`top`): `None` when it has none or is not a
    /// number.
    pub fn sort_value(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss, reason = "ranking only")]
        match self {
            AggState::Count(c) => Some(*c as f64),
            AggState::Sum { taken: false, .. } | AggState::Avg { n: 0, .. } => None,
            AggState::Sum { exact, float, .. } => Some(exact.get().map_or(*float, |e| e as f64)),
            AggState::Avg { sum, n } => Some(sum / *n as f64),
            AggState::Min(m) | AggState::Max(m) => m.map(Num::as_f64),
            AggState::First(v) | AggState::Last(v) => v
                .as_ref()
                .and_then(|o| Num::parse(&o.value))
                .map(Num::as_f64),
            AggState::CountDistinct(hll) => Some(hll.estimate().round()),
            // Ranked by the median, whichever quantiles are configured.
            AggState::Quantiles(sketch) => sketch.quantile(0.5),
        }
    }

    /// Bytes held on the heap besides the state itself: the sketches' real size.
    pub fn heap_bytes(&self) -> usize {
        match self {
            AggState::CountDistinct(hll) => hll.heap_bytes(),
            AggState::Quantiles(sketch) => std::mem::size_of::<DdSketch>() + sketch.heap_bytes(),
            AggState::First(Some(o)) | AggState::Last(Some(o)) => {
                std::mem::size_of::<Ordered>() + o.value.len()
            }
            _ => 0,
        }
    }

    /// The value as JSON text; `null` when no event had a usable value. `quantiles` are
    /// the aggregate's (keys of a `quantiles` object, ignored by other functions).
    pub fn write_json(&self, quantiles: &[f64], out: &mut String) {
        match self {
            AggState::Count(c) => out.push_str(itoa::Buffer::new().format(*c)),
            AggState::Sum { taken: false, .. }
            | AggState::Avg { n: 0, .. }
            | AggState::Min(None)
            | AggState::Max(None)
            | AggState::First(None)
            | AggState::Last(None) => out.push_str("null"),
            AggState::Sum { exact, float, .. } => match exact.get() {
                Some(e) => out.push_str(itoa::Buffer::new().format(e)),
                None => write_f64(*float, out),
            },
            AggState::Min(Some(m)) | AggState::Max(Some(m)) => m.write_json(out),
            #[allow(clippy::cast_precision_loss, reason = "an average is a float")]
            AggState::Avg { sum, n } => write_f64(sum / *n as f64, out),
            AggState::First(Some(o)) | AggState::Last(Some(o)) => out.push_str(&o.value),
            AggState::CountDistinct(hll) => {
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "an estimate of at most 2^64"
                )]
                let n = hll.estimate().round() as u64;
                out.push_str(itoa::Buffer::new().format(n));
            }
            AggState::Quantiles(sketch) if sketch.count() == 0 => out.push_str("null"),
            AggState::Quantiles(sketch) => {
                out.push('{');
                for (i, q) in quantiles.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push('"');
                    out.push_str(&quantile_label(*q));
                    out.push_str("\":");
                    match sketch.quantile(*q) {
                        Some(v) => write_f64(v, out),
                        None => out.push_str("null"),
                    }
                }
                out.push('}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ts_ms: i64, partition: u32, offset: i64) -> Position {
        Position {
            ts_ms,
            partition,
            offset,
        }
    }

    fn run(func: AggFn, values: &[Option<&str>]) -> String {
        let mut s = AggState::new(func);
        for (v, i) in values.iter().zip(0..) {
            s.update(*v, pos(0, 0, i), func.needs_field());
        }
        let mut out = String::new();
        s.write_json(&[0.5, 0.9], &mut out);
        out
    }

    #[test]
    fn each_function_over_integers_floats_and_gaps() {
        let ints = [
            Some("3"),
            Some("-1"),
            None,
            Some("null"),
            Some("\"7\""),
            Some("5"),
        ];
        assert_eq!(
            run(AggFn::Count, &ints),
            "6",
            "count without a field counts events"
        );
        assert_eq!(run(AggFn::Sum, &ints), "7");
        assert_eq!(run(AggFn::Min, &ints), "-1");
        assert_eq!(run(AggFn::Max, &ints), "5");
        assert_eq!(run(AggFn::Avg, &ints), "2.3333333333333335");
        assert_eq!(run(AggFn::First, &ints), "3");
        assert_eq!(run(AggFn::Last, &ints), "5");
        assert_eq!(run(AggFn::CountDistinct, &ints), "4");
        let q: serde_json::Value = serde_json::from_str(&run(AggFn::Quantiles, &ints)).unwrap();
        let (p50, p90) = (q["p50"].as_f64().unwrap(), q["p90"].as_f64().unwrap());
        assert!(
            (p50 - 3.0).abs() <= 0.03 && (p90 - 3.0).abs() <= 0.03,
            "{q}"
        );
        assert_eq!(run(AggFn::Quantiles, &[None, Some("\"x\"")]), "null");
        assert_eq!(run(AggFn::CountDistinct, &[None]), "0");
        assert_eq!(run(AggFn::Sum, &[Some("1"), Some("2.5")]), "3.5");
        assert_eq!(run(AggFn::Max, &[Some("1"), Some("2.5"), Some("2")]), "2.5");
        assert_eq!(run(AggFn::Sum, &[None]), "null");
        assert_eq!(run(AggFn::First, &[]), "null");
        let big = i64::MAX.to_string();
        assert_eq!(
            run(AggFn::Sum, &[Some(&big), Some(&big)]),
            (2 * i128::from(i64::MAX)).to_string(),
            "integer sums are exact beyond i64"
        );
    }

    #[test]
    fn an_exact_sum_holds_every_i128_but_its_sentinel() {
        for v in [0, 1, -1, i128::from(i64::MIN), i128::MAX, i128::MIN + 1] {
            assert_eq!(ExactSum::new(Some(v)).get(), Some(v));
        }
        assert_eq!(ExactSum::new(None).get(), None);
        assert_eq!(ExactSum::new(Some(i128::MIN)).get(), None);
        // Overflow and the sentinel both leave the sum inexact, for good.
        assert_eq!(ExactSum::new(Some(i128::MAX)).plus(Some(1)).get(), None);
        assert_eq!(
            ExactSum::new(Some(i128::MIN + 1)).plus(Some(-1)).get(),
            None
        );
        assert_eq!(ExactSum::new(None).plus(Some(1)).get(), None);
        assert_eq!(ExactSum::ZERO.plus(Some(-5)).plus(Some(7)).get(), Some(2));
    }

    #[test]
    fn a_sum_past_i128_answers_its_float() {
        let mut s = AggState::new(AggFn::Sum);
        if let AggState::Sum { exact, .. } = &mut s {
            *exact = ExactSum::new(Some(i128::MAX - 1));
        }
        s.update(Some("2"), pos(1, 0, 0), true);
        let mut out = String::new();
        s.write_json(&[], &mut out);
        assert_eq!(out, "2.0", "the float sum of the values taken");
    }

    #[test]
    fn a_state_takes_32_bytes() {
        // Every open window and every row of the hot view holds one per aggregate: a
        // field that grows it is a cost to every pipeline, not only its own function's.
        assert_eq!(std::mem::size_of::<AggState>(), 32);
        assert_eq!(std::mem::size_of::<States>(), 40);
    }

    #[test]
    fn quantile_labels_come_from_the_configured_digits() {
        for (q, label) in [
            (0.5, "p50"),
            (0.9, "p90"),
            (0.99, "p99"),
            (0.999, "p99.9"),
            (0.05, "p5"),
            (0.001, "p0.1"),
            (0.125, "p12.5"),
            (0.9999, "p99.99"),
        ] {
            assert_eq!(quantile_label(q), label);
        }
    }

    #[test]
    fn count_with_a_field_counts_where_it_is_present() {
        let mut s = AggState::new(AggFn::Count);
        assert!(s.update(Some("1"), pos(0, 0, 0), true));
        assert!(!s.update(None, pos(0, 0, 1), true));
        assert!(!s.update(Some("null"), pos(0, 0, 2), true));
        assert_eq!(s, AggState::Count(1));
    }

    #[test]
    fn first_and_last_go_by_event_time_then_partition_then_offset() {
        let mut first = AggState::new(AggFn::First);
        let mut last = AggState::new(AggFn::Last);
        for (p, v) in [
            (pos(5, 1, 0), "\"b\""),
            (pos(5, 0, 9), "\"a\""),
            (pos(9, 0, 1), "\"z\""),
            (pos(9, 2, 0), "\"zz\""),
        ] {
            first.update(Some(v), p, true);
            last.update(Some(v), p, true);
        }
        let (mut a, mut b) = (String::new(), String::new());
        first.write_json(&[], &mut a);
        last.write_json(&[], &mut b);
        assert_eq!((a.as_str(), b.as_str()), ("\"a\"", "\"zz\""));
    }

    #[test]
    fn merging_panes_equals_one_pass() {
        let values = ["4", "-2", "9.5", "0", "7"];
        for (_, func) in AggFn::NAMES {
            let mut whole = AggState::new(*func);
            let mut left = AggState::new(*func);
            let mut right = AggState::new(*func);
            for (v, i) in values.iter().zip(0..) {
                let p = pos(i, 0, i);
                whole.update(Some(v), p, true);
                if i % 2 == 0 {
                    left.update(Some(v), p, true);
                } else {
                    right.update(Some(v), p, true);
                }
            }
            right.merge(&left);
            assert_eq!(right, whole, "{func:?}");
        }
    }
}
