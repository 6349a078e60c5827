//! Decoding what [`Partition::read_batches`](super::partition::Partition::read_batches)
//! returns, for pipelines: per batch its base offset and append time, per record its
//! offset, timestamp, `weir.type` header and value. Borrowed from the read buffer: no
//! JSON parsing and no allocation per record. The batches were CRC-checked by the read.

use super::batch::{self, BatchHeader, Records};
use super::{HEADER_APPEND, HEADER_TYPE};

/// One batch of a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    pub base_offset: i64,
    /// Inclusive.
    pub last_offset: i64,
    /// The `weir.append` header of its first record, else the batch's max timestamp.
    pub append_ms: i64,
    header: BatchHeader,
    bytes: &'a [u8],
}

/// One record of a [`BatchView`].
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: i64,
    /// The record timestamp (event time).
    pub timestamp_ms: i64,
    /// The `weir.type` header; empty when absent.
    pub event_type: &'a [u8],
    /// The value (the stored envelope); empty when null.
    pub value: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// The batch at the start of `buf` and its length, if `buf` starts with a whole batch.
    pub fn parse(buf: &'a [u8]) -> Option<(BatchView<'a>, usize)> {
        Self::parse_records(buf).map(|(view, len, _)| (view, len))
    }

    /// [`parse`](Self::parse) and the batch's records, decoded in the same pass: the first
    /// record, decoded for the append time, is handed out as it is, not decoded again.
    /// With one record per batch (single-event requests) that halves the decoding.
    pub fn parse_records(buf: &'a [u8]) -> Option<(BatchView<'a>, usize, RecordViews<'a>)> {
        let header = BatchHeader::parse(buf).ok()?;
        let total = header.total_len();
        let bytes = buf.get(..total)?;
        let mut records = RecordViews {
            records: batch::records(bytes).ok(),
            base_offset: header.base_offset,
            base_timestamp: header.base_timestamp,
            from: i64::MIN,
            first: None,
        };
        let mut append_ms = header.max_timestamp;
        if let Some((view, append)) = records.decode(true) {
            append_ms = append.unwrap_or(append_ms);
            records.first = Some(view);
        } else {
            // A first record that does not decode ends the iteration, as in `next`.
            records.records = None;
        }
        Some((
            BatchView {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
                append_ms,
                header,
                bytes,
            },
            total,
            records,
        ))
    }

    /// Its records at or after offset `from`, in order. A record that does not decode
    /// ends the iteration (the batch passed its CRC check, so this means a bug).
    pub fn records_from(&self, from: i64) -> RecordViews<'a> {
        RecordViews {
            records: batch::records(self.bytes).ok(),
            base_offset: self.base_offset,
            base_timestamp: self.header.base_timestamp,
            from,
            first: None,
        }
    }

    /// Its records at or after offset `from`, whole: (offset, timestamp, record with
    /// key and headers). For the rare path that copies records elsewhere (a pipeline's
    /// late events); `records_from` is the one for every record.
    pub fn stored_records_from(
        &self,
        from: i64,
    ) -> impl Iterator<Item = (i64, i64, batch::Record<'a>)> + use<'a> {
        let (base_offset, base_timestamp) = (self.base_offset, self.header.base_timestamp);
        batch::records(self.bytes)
            .ok()
            .into_iter()
            .flatten()
            .map_while(Result::ok)
            .map(move |r| {
                let offset = base_offset + i64::from(r.offset_delta);
                (offset, base_timestamp.wrapping_add(r.timestamp_delta), r)
            })
            .filter(move |(offset, _, _)| *offset >= from)
    }
}

/// Iterator of [`BatchView::records_from`].
pub struct RecordViews<'a> {
    records: Option<Records<'a>>,
    base_offset: i64,
    base_timestamp: i64,
    from: i64,
    /// The first record, decoded already by [`BatchView::parse_records`].
    first: Option<RecordView<'a>>,
}

impl<'a> RecordViews<'a> {
    /// The next record's view, and with `append` its `weir.append` time, its headers
    /// read in the walk that checks them. `None` at the end or at a record that does not
    /// decode (which ends the iteration).
    #[inline]
    fn decode(&mut self, append: bool) -> Option<(RecordView<'a>, Option<i64>)> {
        let mut event_type = None;
        let mut append_ms = None;
        let record = self
            .records
            .as_mut()?
            .next_visiting(&mut |key, value| {
                if event_type.is_none() && crate::json::short_eq(key, HEADER_TYPE.as_bytes()) {
                    event_type = Some(value.unwrap_or_default());
                } else if append
                    && append_ms.is_none()
                    && crate::json::short_eq(key, HEADER_APPEND.as_bytes())
                {
                    append_ms = Some(value.and_then(super::append_value_ms));
                }
            })?
            .ok()?;
        let view = RecordView {
            offset: self.base_offset + i64::from(record.offset_delta),
            timestamp_ms: self.base_timestamp.wrapping_add(record.timestamp_delta),
            event_type: event_type.unwrap_or_default(),
            value: record.value.unwrap_or_default(),
        };
        Some((view, append_ms.flatten()))
    }
}

impl<'a> Iterator for RecordViews<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        if let Some(first) = self.first.take()
            && first.offset >= self.from
        {
            return Some(first);
        }
        loop {
            let (view, _) = self.decode(false)?;
            if view.offset >= self.from {
                return Some(view);
            }
        }
    }
}

/// The batches of a read buffer, in order.
pub fn batches(buf: &[u8]) -> impl Iterator<Item = BatchView<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let (view, len) = BatchView::parse(buf.get(pos..)?)?;
        pos += len;
        Some(view)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::HEADER_APPEND;
    use crate::log::batch::BatchBuilder;

    #[test]
    fn records_carry_offset_time_type_and_value() {
        let mut buf = Vec::new();
        for (base, n) in [(10i64, 2), (12, 1)] {
            let mut b = BatchBuilder::new();
            for i in 0..n {
                let append = 5000i64.to_be_bytes();
                let headers = [
                    (HEADER_TYPE, &b"page.click"[..]),
                    (HEADER_APPEND, &append[..]),
                ];
                b.push(None, b"{\"a\":1}", 1000 + i, &headers);
            }
            let mut bytes = b.finish();
            batch::set_base_offset(&mut bytes, base);
            buf.extend_from_slice(&bytes);
        }
        let views: Vec<_> = batches(&buf).collect();
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].append_ms, 5000);
        let recs: Vec<_> = views[0].records_from(11).collect();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].offset, 11);
        assert_eq!(recs[0].timestamp_ms, 1001);
        assert_eq!(recs[0].event_type, b"page.click");
        assert_eq!(recs[0].value, b"{\"a\":1}");
        assert_eq!(views[1].base_offset, 12);
    }

    /// A record's headers, as (key, value or null).
    type Headers<'a> = &'a [(&'a str, Option<&'a [u8]>)];

    /// One batch: records whose headers carry the type and the append time in either
    /// order, repeated, null or malformed.
    fn batch_of(records: &[Headers<'_>]) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for (i, headers) in (0..).zip(records) {
            b.push_record(None, Some(b"{}"), 7000 + i, headers.iter().copied());
        }
        let mut bytes = b.finish();
        batch::set_base_offset(&mut bytes, 40);
        bytes
    }

    #[test]
    fn the_first_record_decoded_once_answers_as_a_second_decoding_would() {
        let t = HEADER_TYPE;
        let a = HEADER_APPEND;
        let at = 5000i64.to_be_bytes();
        let later = 6000i64.to_be_bytes();
        let cases: [(Headers<'_>, Option<i64>); 7] = [
            (
                &[(t, Some(b"x")), ("weir.id", Some(b"0123")), (a, Some(&at))],
                Some(5000),
            ),
            (&[(a, Some(&at)), (t, Some(b"x"))], Some(5000)),
            (
                &[
                    (t, Some(b"x")),
                    (t, Some(b"y")),
                    (a, Some(&at)),
                    (a, Some(&later)),
                ],
                Some(5000),
            ),
            (&[(t, Some(b"x"))], None),
            (&[(a, None), (a, Some(&at))], None),
            (&[(a, Some(b"short")), (t, None)], None),
            (&[], None),
        ];
        for (first, append) in cases {
            let second: Headers<'_> = &[(t, Some(b"z")), (a, Some(&later))];
            let bytes = batch_of(&[first, second]);
            let (view, len, records) = BatchView::parse_records(&bytes).unwrap();
            assert_eq!(len, bytes.len());
            let max = BatchHeader::parse(&bytes).unwrap().max_timestamp;
            assert_eq!(view.append_ms, append.unwrap_or(max), "{first:?}");
            let got: Vec<_> = records
                .map(|r| (r.offset, r.timestamp_ms, r.event_type, r.value))
                .collect();
            let want: Vec<_> = batch::records(&bytes)
                .unwrap()
                .map(Result::unwrap)
                .map(|r| {
                    let event_type = r.header(HEADER_TYPE).unwrap_or_default();
                    (
                        40 + i64::from(r.offset_delta),
                        7000 + r.timestamp_delta,
                        event_type,
                        r.value.unwrap(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{first:?}");
            assert_eq!(view.records_from(41).count(), 1);
            assert_eq!(
                BatchView::parse(&bytes).unwrap().0.append_ms,
                view.append_ms
            );
        }
    }
}
