//! Decoding what [`Partition::read_batches`](super::partition::Partition::read_batches)
//! returns, for pipelines: per batch its base offset and append time, per record its
//! offset, timestamp, `weir.type` header and value. Borrowed from the read buffer: no
//! JSON parsing and no allocation per record. The batches were CRC-checked by the read.

use super::HEADER_TYPE;
use super::batch::{self, BatchHeader, Records};

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
        let header = BatchHeader::parse(buf).ok()?;
        let total = header.total_len();
        let bytes = buf.get(..total)?;
        let append_ms = super::batch_append_ms(bytes).unwrap_or(header.max_timestamp);
        Some((
            BatchView {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
                append_ms,
                header,
                bytes,
            },
            total,
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
}

impl<'a> Iterator for RecordViews<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        loop {
            let record = self.records.as_mut()?.next()?.ok()?;
            let offset = self.base_offset + i64::from(record.offset_delta);
            if offset < self.from {
                continue;
            }
            return Some(RecordView {
                offset,
                timestamp_ms: self.base_timestamp.wrapping_add(record.timestamp_delta),
                event_type: record.header(HEADER_TYPE).unwrap_or_default(),
                value: record.value.unwrap_or_default(),
            });
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
}
