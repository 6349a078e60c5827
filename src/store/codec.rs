//! The compact binary form of what checkpoints keep: aggregate states, watermarks and the
//! engine head. Little-endian fixed-width integers, a tag byte per enum, lengths before
//! bytes. Decoding checks every length: a corrupt value is an error, never a panic.

use crate::pipeline::aggregate::{AggState, ExactSum, Num, Ordered, Position};
use crate::pipeline::engine::{Counters, EngineHead, Taint};
use crate::pipeline::sketch::{DdSketch, Hll};
use crate::pipeline::watermark::{PartitionMark, Watermarks};

#[derive(Debug, thiserror::Error)]
#[error("corrupt checkpoint value: {0}")]
pub struct CodecError(pub &'static str);

pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.i64(v);
            }
            None => self.u8(0),
        }
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    /// What `write` writes, as [`bytes`](Self::bytes) would write it (read back by
    /// `Reader::bytes`), without a buffer of its own: the length is set after.
    pub fn bytes_with(&mut self, write: impl FnOnce(&mut Writer<'_>)) {
        let at = self.0.len();
        self.u64(0);
        write(self);
        let len = (self.0.len() - at - 8) as u64;
        self.0[at..at + 8].copy_from_slice(&len.to_le_bytes());
    }
    fn num(&mut self, n: Option<Num>) {
        match n {
            None => self.u8(0),
            Some(Num::Int(i)) => {
                self.u8(1);
                self.i64(i);
            }
            Some(Num::Float(f)) => {
                self.u8(2);
                self.u64(f.to_bits());
            }
        }
    }
    fn positioned(&mut self, v: Option<&Ordered>) {
        match v {
            None => self.u8(0),
            Some(Ordered { pos: p, value }) => {
                self.u8(1);
                self.i64(p.ts_ms);
                self.u64(u64::from(p.partition));
                self.i64(p.offset);
                self.bytes(value.as_bytes());
            }
        }
    }

    pub fn states(&mut self, states: &[AggState]) {
        // The length, then a tag and at least 8 bytes a state: room for a count row's
        // 17 bytes in one allocation instead of growing from 8 (a closed row each).
        self.0.reserve(8 + 17 * states.len());
        self.u64(states.len() as u64);
        for s in states {
            match s {
                AggState::Count(c) => {
                    self.u8(0);
                    self.u64(*c);
                }
                AggState::Sum {
                    exact,
                    float,
                    taken,
                } => {
                    self.u8(1);
                    match exact.get() {
                        Some(e) => {
                            self.u8(1);
                            self.0.extend_from_slice(&e.to_le_bytes());
                        }
                        None => self.u8(0),
                    }
                    self.u64(float.to_bits());
                    // Once a count of the values taken; only whether any was is kept.
                    self.u64(u64::from(*taken));
                }
                AggState::Min(m) => {
                    self.u8(2);
                    self.num(*m);
                }
                AggState::Max(m) => {
                    self.u8(3);
                    self.num(*m);
                }
                AggState::Avg { sum, n } => {
                    self.u8(4);
                    self.u64(sum.to_bits());
                    self.u64(*n);
                }
                AggState::First(v) => {
                    self.u8(5);
                    self.positioned(v.as_deref());
                }
                AggState::Last(v) => {
                    self.u8(6);
                    self.positioned(v.as_deref());
                }
                AggState::CountDistinct(hll) => {
                    self.u8(7);
                    hll.encode(self.0);
                }
                AggState::Quantiles(sketch) => {
                    self.u8(8);
                    sketch.encode(self.0);
                }
            }
        }
    }

    pub fn head(&mut self, head: &EngineHead) {
        let (marks, first, newest, combined) = head.marks.parts();
        self.u64(marks.len() as u64);
        for m in marks {
            self.opt_i64(m.max_event_ms);
            self.opt_i64(m.last_append_ms);
        }
        self.opt_i64(first);
        self.i64(newest);
        self.i64(combined);
        self.opt_i64(head.next_close_ms);
        let c = head.counters;
        for v in [c.counted, c.filtered, c.late, c.no_key, c.skipped_values] {
            self.u64(v);
        }
        // Added after the first release of the format: a reader of an older head finds
        // the value ending here and takes no loss.
        self.u64(c.lost);
        self.u64(head.taints.len() as u64);
        for t in &head.taints {
            self.u64(u64::from(t.partition));
            self.i64(t.min_end_ms);
            self.i64(t.max_start_ms);
        }
        // Added later still: an older head ends before it and refused none.
        self.u64(c.refused);
    }
}

pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError("value too short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    pub fn i64(&mut self) -> Result<i64, CodecError> {
        let b = self.take(8)?;
        Ok(i64::from_le_bytes(
            b.try_into().map_err(|_| CodecError("i64"))?,
        ))
    }
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| CodecError("u64"))?,
        ))
    }
    /// Bytes written by `Writer::bytes`.
    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.len()?;
        self.take(n)
    }
    /// A string written by `Writer::bytes`.
    pub fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError("utf-8"))
    }
    fn len(&mut self) -> Result<usize, CodecError> {
        let n = usize::try_from(self.u64()?).map_err(|_| CodecError("length"))?;
        if n > self.0.len() {
            return Err(CodecError("length past the end"));
        }
        Ok(n)
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.i64()?)),
            _ => Err(CodecError("option tag")),
        }
    }
    fn num(&mut self) -> Result<Option<Num>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(Num::Int(self.i64()?))),
            2 => Ok(Some(Num::Float(f64::from_bits(self.u64()?)))),
            _ => Err(CodecError("number tag")),
        }
    }
    fn positioned(&mut self) -> Result<Option<Box<Ordered>>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let ts_ms = self.i64()?;
                let partition = u32::try_from(self.u64()?).map_err(|_| CodecError("partition"))?;
                let offset = self.i64()?;
                let n = self.len()?;
                let text = std::str::from_utf8(self.take(n)?).map_err(|_| CodecError("utf-8"))?;
                Ok(Some(Box::new(Ordered {
                    pos: Position {
                        ts_ms,
                        partition,
                        offset,
                    },
                    value: text.into(),
                })))
            }
            _ => Err(CodecError("option tag")),
        }
    }

    pub fn states(&mut self) -> Result<Vec<AggState>, CodecError> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8()? {
                0 => AggState::Count(self.u64()?),
                1 => {
                    let exact = match self.u8()? {
                        0 => None,
                        1 => Some(i128::from_le_bytes(
                            self.take(16)?.try_into().map_err(|_| CodecError("i128"))?,
                        )),
                        _ => return Err(CodecError("option tag")),
                    };
                    AggState::Sum {
                        exact: ExactSum::new(exact),
                        float: f64::from_bits(self.u64()?),
                        taken: self.u64()? > 0,
                    }
                }
                2 => AggState::Min(self.num()?),
                3 => AggState::Max(self.num()?),
                4 => AggState::Avg {
                    sum: f64::from_bits(self.u64()?),
                    n: self.u64()?,
                },
                5 => AggState::First(self.positioned()?),
                6 => AggState::Last(self.positioned()?),
                7 => AggState::CountDistinct(Hll::decode(&mut self.0).map_err(CodecError)?),
                8 => AggState::Quantiles(Box::new(
                    DdSketch::decode(&mut self.0).map_err(CodecError)?,
                )),
                _ => return Err(CodecError("aggregate tag")),
            });
        }
        Ok(out)
    }

    pub fn head(
        &mut self,
        out_of_orderness_ms: i64,
        idle_ms: i64,
    ) -> Result<EngineHead, CodecError> {
        let n = self.len()?;
        let mut marks = Vec::with_capacity(n);
        for _ in 0..n {
            marks.push(PartitionMark {
                max_event_ms: self.opt_i64()?,
                last_append_ms: self.opt_i64()?,
            });
        }
        let first = self.opt_i64()?;
        let newest = self.i64()?;
        let combined = self.i64()?;
        let next_close_ms = self.opt_i64()?;
        let mut counters = Counters {
            counted: self.u64()?,
            filtered: self.u64()?,
            late: self.u64()?,
            no_key: self.u64()?,
            skipped_values: self.u64()?,
            lost: 0,
            refused: 0,
        };
        let mut taints = Vec::new();
        if !self.0.is_empty() {
            counters.lost = self.u64()?;
            let n = self.len()?;
            for _ in 0..n {
                taints.push(Taint {
                    partition: u32::try_from(self.u64()?).map_err(|_| CodecError("taint"))?,
                    min_end_ms: self.i64()?,
                    max_start_ms: self.i64()?,
                });
            }
        }
        if !self.0.is_empty() {
            counters.refused = self.u64()?;
        }
        Ok(EngineHead {
            marks: Watermarks::from_parts(
                out_of_orderness_ms,
                idle_ms,
                marks,
                first,
                newest,
                combined,
            ),
            next_close_ms,
            counters,
            taints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pipeline::aggregate::AggFn;

    /// `bytes_with` writes what `bytes` of a buffer written apart would.
    #[test]
    fn bytes_with_equals_bytes_of_a_buffer() {
        let states = [AggState::Count(7), AggState::Count(u64::MAX)];
        let mut apart = Vec::new();
        Writer(&mut apart).states(&states);
        let (mut want, mut got) = (vec![1u8], vec![1u8]);
        Writer(&mut want).bytes(&apart);
        Writer(&mut got).bytes_with(|w| w.states(&states));
        assert_eq!(got, want);
    }

    /// A sketch state of `n` values, sparse or dense by `n`.
    fn sketch_of(func: AggFn, n: i64) -> AggState {
        let mut s = AggState::new(func);
        for i in 0..n {
            let pos = Position {
                ts_ms: i,
                partition: 0,
                offset: i,
            };
            s.update(Some(&(i * 37 - 500).to_string()), pos, true);
        }
        s
    }

    #[test]
    fn states_and_heads_round_trip() {
        let pos = Position {
            ts_ms: -5,
            partition: 3,
            offset: 9,
        };
        let states = vec![
            AggState::Count(7),
            AggState::Sum {
                exact: ExactSum::new(Some(i128::from(i64::MAX) * 3)),
                float: 1.5,
                taken: true,
            },
            AggState::Sum {
                exact: ExactSum::new(None),
                float: 2.25,
                taken: true,
            },
            AggState::Min(Some(Num::Int(-3))),
            AggState::Max(Some(Num::Float(9.5))),
            AggState::Min(None),
            AggState::Avg { sum: 3.0, n: 4 },
            AggState::First(Some(Box::new(Ordered {
                pos,
                value: "\"é\"".into(),
            }))),
            AggState::Last(None),
            sketch_of(AggFn::CountDistinct, 100),
            sketch_of(AggFn::CountDistinct, 5_000),
            sketch_of(AggFn::Quantiles, 0),
            sketch_of(AggFn::Quantiles, 1_000),
        ];
        let mut buf = Vec::new();
        Writer(&mut buf).states(&states);
        assert_eq!(Reader(&buf).states().unwrap(), states);
        for cut in 0..buf.len() {
            assert!(Reader(&buf[..cut]).states().is_err(), "cut at {cut}");
        }
        let mut marks = Watermarks::new(2, 5, 100);
        marks.on_batch(1, 1000);
        marks.on_event(1, 50);
        marks.advance();
        let head = EngineHead {
            marks,
            next_close_ms: Some(40),
            counters: Counters {
                counted: 1,
                filtered: 2,
                late: 3,
                no_key: 4,
                skipped_values: 5,
                lost: 6,
                refused: 7,
            },
            taints: vec![Taint {
                partition: 1,
                min_end_ms: i64::MIN,
                max_start_ms: 70,
            }],
        };
        let mut buf = Vec::new();
        Writer(&mut buf).head(&head);
        assert_eq!(Reader(&buf).head(5, 100).unwrap(), head);
        // A head written before refusals were kept: none refused.
        let old = &buf[..buf.len() - 8];
        let read = Reader(old).head(5, 100).unwrap();
        assert_eq!((read.counters.refused, read.taints.len()), (0, 1));
        // One written before losses were kept: no loss, no taint.
        let old = &buf[..buf.len() - 8 - 8 - 8 - 24];
        let read = Reader(old).head(5, 100).unwrap();
        assert_eq!((read.counters.lost, read.taints.len()), (0, 0));
    }
}
