//! A chunk's records decoded, and their keys read, before the pipeline thread takes them.
//!
//! The read-ahead thread (`readahead`) decodes every record of the chunk it read (offset,
//! time, `weir.type`, value) and, for session windows, runs the filter on it, reads its
//! key and hashes it; it hands the table over with the chunk: what the engine would
//! otherwise do for every record on the pipeline thread before it looks at any state (a
//! fifth of a session pipeline's time). The engine sees the same [`Input`]s, in the same
//! order; only where the work was done changes. A chunk the pipeline thread reads itself
//! (the live tail, a read-ahead answer it cannot use) it prepares itself the same way.
//! The table lists the chunk's batches too (offsets, append time, where they are), so the
//! pipeline thread orders and takes them without parsing any again.
//!
//! Bound: one table per chunk read (`READ_CHUNK_BYTES`): an entry of 56 bytes per record
//! and one of 40 per batch (tests pin both) and the keys' text, reused from chunk to chunk
//! like the chunk's buffer. For the bench's records of ~230 bytes that is a quarter of the
//! chunk's size; for single-record batches of ~370 bytes, a quarter too.

use std::hash::BuildHasher;

use super::engine::{Input, Prepared};
use super::key::{Filter, GroupBy, KeyError};
use crate::log::batches::BatchView;

/// What the read-ahead thread needs of a pipeline to prepare its records.
#[derive(Debug, Clone)]
pub struct Preparer {
    pub filter: Filter,
    pub group_by: GroupBy,
    /// The engine's key hasher, for session windows, whose engine finds a key by hash:
    /// their keys are read and hashed ahead. `None` (windows of fixed size): keys are
    /// left to the engine. Their aggregation costs so little that reading keys ahead made
    /// the read-ahead thread the slower of the two (an 8M-event tumbling rebuild: 1.9-2.4 s
    /// on it against 0.6 s on the pipeline thread, no faster than without).
    pub hasher: Option<foldhash::fast::RandomState>,
}

/// The records of one chunk, prepared, in log order.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The chunk's batches, in order: what the pipeline thread orders and takes them by,
    /// so that it parses none of them again.
    batches: Vec<BatchSpan>,
    entries: Vec<Entry>,
    /// The keys' text, back to back.
    keys: String,
    /// Why records have no key (rare).
    errors: Vec<KeyError>,
}

/// One batch of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpan {
    pub base_offset: i64,
    /// Inclusive.
    pub last_offset: i64,
    /// See [`BatchView::append_ms`].
    pub append_ms: i64,
    /// Where its bytes are in the chunk.
    pub start: u32,
    pub end: u32,
    /// Its records are the entries from the previous batch's `records_end` to this.
    records_end: u32,
}

/// One record: where its parts are in the chunk.
#[derive(Debug, Clone)]
struct Entry {
    offset: i64,
    timestamp_ms: i64,
    event_type: (u32, u32),
    value: (u32, u32),
    key: EntryKey,
}

#[derive(Debug, Clone)]
enum EntryKey {
    Filtered,
    /// An index into `errors`.
    NoKey(u32),
    /// A range of `keys`, and its hash.
    Key(u32, u32, u64),
    /// Left to the engine.
    Unread,
}

impl Preparer {
    /// Decodes every record of `chunk` (whole batches, as `read_batches` returns them)
    /// into `into`, replacing what it held.
    pub fn prepare(&self, chunk: &[u8], into: &mut Decoded) {
        into.batches.clear();
        into.entries.clear();
        into.keys.clear();
        into.errors.clear();
        let mut key = String::new();
        // A chunk is at most a few MiB: positions in it fit u32.
        let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let at = |part: &[u8]| -> (u32, u32) {
            // An absent part is an empty slice that may lie outside the chunk.
            let from = (part.as_ptr() as usize).wrapping_sub(chunk.as_ptr() as usize);
            match (u32::try_from(from), u32::try_from(part.len())) {
                (Ok(from), Ok(len)) if !part.is_empty() => (from, from + len),
                _ => (0, 0),
            }
        };
        let mut pos = 0;
        while let Some((batch, len, records)) = chunk.get(pos..).and_then(BatchView::parse_records)
        {
            for r in records {
                let read = self
                    .hasher
                    .is_some()
                    .then(|| self.key_of(r.event_type, r.value, &mut key));
                let entry_key = match read {
                    None => EntryKey::Unread,
                    Some(Ok(None)) => EntryKey::Filtered,
                    Some(Ok(Some(hash))) => {
                        let from = into.keys.len();
                        into.keys.push_str(&key);
                        EntryKey::Key(u32_of(from), u32_of(into.keys.len()), hash)
                    }
                    Some(Err(e)) => {
                        into.errors.push(e);
                        EntryKey::NoKey(u32_of(into.errors.len() - 1))
                    }
                };
                into.entries.push(Entry {
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    event_type: at(r.event_type),
                    value: at(r.value),
                    key: entry_key,
                });
            }
            into.batches.push(BatchSpan {
                base_offset: batch.base_offset,
                last_offset: batch.last_offset,
                append_ms: batch.append_ms,
                start: u32_of(pos),
                end: u32_of(pos + len),
                records_end: u32_of(into.entries.len()),
            });
            pos += len;
        }
    }

    /// A record's key, into `key`, and its hash (0 without a hasher); `None` when the
    /// filter does not pass it.
    pub fn key_of(
        &self,
        event_type: &[u8],
        value: &[u8],
        key: &mut String,
    ) -> Result<Option<u64>, KeyError> {
        if !self.filter.accepts(event_type) {
            return Ok(None);
        }
        self.group_by.key_into(value, key)?;
        Ok(Some(
            self.hasher.as_ref().map_or(0, |h| h.hash_one(key.as_str())),
        ))
    }
}

impl Decoded {
    /// The chunk's batch number `i` (in order), if it has one.
    pub fn batch(&self, i: usize) -> Option<&BatchSpan> {
        self.batches.get(i)
    }

    /// The records of batch `i` at or after offset `from`, as the engine takes them, with
    /// `chunk`'s bytes.
    pub fn inputs<'a>(
        &'a self,
        chunk: &'a [u8],
        i: usize,
        from: i64,
    ) -> impl Iterator<Item = Input<'a>> + use<'a> {
        let records_end = |i: usize| self.batches.get(i).map_or(0, |b| b.records_end as usize);
        let start = i.checked_sub(1).map_or(0, records_end);
        let range = start..records_end(i).max(start);
        let part = move |(a, b): (u32, u32)| chunk.get(a as usize..b as usize).unwrap_or_default();
        self.entries[range]
            .iter()
            .filter(move |e| e.offset >= from)
            .map(move |e| Input {
                offset: e.offset,
                event_ms: e.timestamp_ms,
                event_type: part(e.event_type),
                envelope: part(e.value),
                prepared: match e.key {
                    EntryKey::Filtered => Some(Prepared::Filtered),
                    EntryKey::NoKey(i) => Some(Prepared::NoKey(&self.errors[i as usize])),
                    EntryKey::Key(a, b, hash) => Some(Prepared::Key(
                        self.keys.get(a as usize..b as usize).unwrap_or_default(),
                        hash,
                    )),
                    EntryKey::Unread => None,
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::{Decoded, Preparer};
    use crate::json::JsonPointer;
    use crate::log::HEADER_TYPE;
    use crate::log::batch::{self, BatchBuilder};
    use crate::log::batches::{BatchView, batches};
    use crate::pipeline::engine::Prepared;
    use crate::pipeline::key::{Filter, GroupBy};

    /// Batches of envelopes at base offsets 100, 103 and 104; the types, keys (plain,
    /// escaped, absent, null, an object) and a record without a type or value.
    fn chunk() -> Vec<u8> {
        let records: [&[(&str, &str)]; 3] = [
            &[
                ("page.click", r#"{"payload":{"user_id":"u-1"}}"#),
                ("page.view", r#"{"payload":{"user_id":"u-2"}}"#),
                ("page.click", r#"{"payload":{"user_id":"a\"b é"}}"#),
            ],
            &[("page.click", r#"{"payload":{"page":"p"}}"#)],
            &[
                ("page.click", r#"{"payload":{"user_id":null}}"#),
                ("page.click", r#"{"payload":{"user_id":{"x": [1, 2]}}}"#),
                ("", ""),
                ("page.click", r#"{"payload":{"user_id":7}}"#),
            ],
        ];
        let mut buf = Vec::new();
        for (base, batch) in [100i64, 103, 104].into_iter().zip(records) {
            let mut b = BatchBuilder::new();
            for (i, (kind, value)) in (0..).zip(batch) {
                let headers: &[(&str, &[u8])] = if kind.is_empty() {
                    &[]
                } else {
                    &[(HEADER_TYPE, kind.as_bytes())]
                };
                b.push(None, value.as_bytes(), 5000 + base + i, headers);
            }
            let mut bytes = b.finish();
            batch::set_base_offset(&mut bytes, base);
            buf.extend_from_slice(&bytes);
        }
        buf
    }

    #[test]
    fn an_entry_is_56_bytes_and_a_batch_40() {
        assert_eq!(std::mem::size_of::<super::Entry>(), 56);
        assert_eq!(std::mem::size_of::<super::BatchSpan>(), 40);
    }

    #[test]
    fn prepared_records_are_what_the_engine_would_read() {
        let buf = chunk();
        let preparer = Preparer {
            filter: Filter::new(&["page.click"]),
            group_by: GroupBy::new(vec![JsonPointer::parse("/payload/user_id").unwrap()]),
            hasher: Some(foldhash::fast::RandomState::default()),
        };
        let mut decoded = Decoded::default();
        preparer.prepare(&buf, &mut decoded);
        let hasher = preparer.hasher.as_ref().unwrap();
        let mut kinds = Vec::new();
        let mut start = 0;
        for (i, view) in batches(&buf).enumerate() {
            let span = *decoded.batch(i).unwrap();
            assert_eq!(
                (span.base_offset, span.last_offset, span.append_ms),
                (view.base_offset, view.last_offset, view.append_ms)
            );
            let (_, len) = BatchView::parse(&buf[start..]).unwrap();
            let at = |p: usize| u32::try_from(p).unwrap();
            assert_eq!(
                (span.start, span.end),
                (at(start), at(start + len)),
                "batch {i}"
            );
            start += len;
            // From every offset, as after a restart inside a batch.
            for from in view.base_offset..=view.last_offset + 1 {
                let got: Vec<_> = decoded.inputs(&buf, i, from).collect();
                let want: Vec<_> = view.records_from(from).collect();
                assert_eq!(
                    got.len(),
                    want.len(),
                    "batch {} from {from}",
                    view.base_offset
                );
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(
                        (g.offset, g.event_ms, g.event_type, g.envelope),
                        (w.offset, w.timestamp_ms, w.event_type, w.value)
                    );
                    let mut key = String::new();
                    let expected = if !preparer.filter.accepts(w.event_type) {
                        "filtered".to_string()
                    } else {
                        match preparer.group_by.key_into(w.value, &mut key) {
                            Ok(()) => format!("{key} {}", hasher.hash_one(key.as_str())),
                            Err(e) => format!("no key: {e}"),
                        }
                    };
                    let prepared = match g.prepared.unwrap() {
                        Prepared::Filtered => "filtered".to_string(),
                        Prepared::NoKey(e) => format!("no key: {e}"),
                        Prepared::Key(text, hash) => format!("{text} {hash}"),
                    };
                    assert_eq!(prepared, expected, "offset {}", w.offset);
                    if from == view.base_offset {
                        kinds.push(prepared.split(' ').next().unwrap().to_string());
                    }
                }
            }
        }
        assert_eq!(
            kinds,
            [
                "u-1",
                "filtered",
                "a%22b%20%C3%A9",
                "no",
                "no",
                "%7B%22x%22%3A%5B1%2C2%5D%7D",
                "filtered",
                "7"
            ]
        );
        // Past the last batch: none.
        assert!(decoded.batch(3).is_none());
        assert_eq!(decoded.inputs(&buf, 3, i64::MIN).count(), 0);
        // Windows of fixed size: records decoded, keys left to the engine.
        let fixed = Preparer {
            hasher: None,
            ..preparer
        };
        fixed.prepare(&buf, &mut decoded);
        let inputs: Vec<_> = (0..3)
            .flat_map(|i| decoded.inputs(&buf, i, i64::MIN))
            .collect();
        assert_eq!(inputs.len(), 8);
        assert!(inputs.iter().all(|i| i.prepared.is_none()));
    }
}
