//! Kafka RecordBatch v2, encoded into a reused buffer and decoded without copying: the
//! byte format of every segment file and the unit of one append.
//!
//! This file owns the batch layout (header fields, CRC-32C, record and header framing and
//! Kafka's zigzag varints). It writes only what weir needs (magic 2, no compression,
//! CreateTime, no producer id or sequence) and reads any uncompressed v2 batch whose
//! offsets are dense (as every producer writes them; weir never compacts). It knows
//! nothing of files, offset assignment or indexes: the partition calls
//! [`set_base_offset`] under its lock and the segment decides what a bad batch means.
//!
//! Decoding never panics and never allocates: every length read from the bytes is checked
//! against the bytes actually present before it is used, so a corrupt length costs an
//! error, not a huge read or allocation.

use thiserror::Error;

/// Bytes before the first record: the fixed v2 batch header.
pub const BATCH_HEADER_LEN: usize = 61;

/// baseOffset and batchLength: the part of the header that batchLength does not count.
const LOG_OVERHEAD: usize = 12;
/// The smallest batchLength a v2 batch can have (a header and no records).
const BATCH_LENGTH_MIN: usize = BATCH_HEADER_LEN - LOG_OVERHEAD;
/// The smallest encoded record: a one-byte length varint and six one-byte fields
/// (attributes, timestamp delta, offset delta, key -1, value -1, header count 0).
const RECORD_LEN_MIN: usize = 7;
const MAGIC: i8 = 2;
/// Attribute bits 0..=2 name the compression codec; weir writes and reads only 0 (none).
const COMPRESSION_MASK: i16 = 0x07;
/// Kafka's "no producer id / epoch / sequence" and "no timestamp" markers.
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;
const NO_SEQUENCE: i32 = -1;
const NO_TIMESTAMP: i64 = -1;

// Field positions in the header, as in Kafka's DefaultRecordBatch.
const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC covers everything from here to the end of the batch; baseOffset,
/// batchLength, partitionLeaderEpoch and magic are outside it.
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

/// Why bytes are not a usable batch. `at` is a byte position inside the batch, so a
/// reader can report file position + `at`.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before the header or before `total_len`: a torn tail.
    #[error("incomplete batch: {needed} more bytes needed")]
    Incomplete { needed: usize },
    /// The bytes present contradict the format: bad magic, CRC mismatch, lengths that
    /// do not fit.
    #[error("corrupt batch at byte {at}: {what}")]
    Corrupt { what: &'static str, at: usize },
}

fn corrupt(what: &'static str, at: usize) -> DecodeError {
    DecodeError::Corrupt { what, at }
}

/// Builds one batch in a reused buffer: the header is reserved up front and filled in by
/// `finish`, so pushing a record only appends its bytes.
#[derive(Debug)]
pub struct BatchBuilder {
    /// `BATCH_HEADER_LEN` placeholder bytes, then the encoded records.
    buf: Vec<u8>,
    record_count: u32,
    /// Timestamp of the first record; every record stores its delta from this.
    base_timestamp: i64,
    max_timestamp: i64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::with_buffer(Vec::new())
    }

    /// Reuses `buf`'s allocation; its contents are discarded.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.resize(BATCH_HEADER_LEN, 0);
        BatchBuilder {
            buf,
            record_count: 0,
            base_timestamp: NO_TIMESTAMP,
            max_timestamp: NO_TIMESTAMP,
        }
    }

    /// Appends one record; offset delta = records pushed so far. The timestamp delta is
    /// relative to the first record's timestamp (may be negative); the max timestamp is
    /// tracked.
    ///
    /// # Panics
    ///
    /// If a field is longer than `i32::MAX` bytes (callers bound bodies far below that).
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        headers: &[(&str, &[u8])],
    ) {
        self.push_record(
            key,
            Some(value),
            timestamp_ms,
            headers.iter().map(|&(k, v)| (k, Some(v))),
        );
    }

    /// Like [`push`](Self::push), for the full Kafka record: a null value (a tombstone)
    /// and null header values.
    ///
    /// # Panics
    ///
    /// As `push`.
    pub fn push_record<'h, H>(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
        headers: H,
    ) where
        H: IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
        H::IntoIter: Clone,
    {
        let offset_delta =
            i32::try_from(self.record_count).expect("a batch holds fewer than 2^31 records");
        if self.record_count == 0 {
            self.base_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        } else {
            self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        }
        // Wrapping, as Kafka's Java long arithmetic: decoding adds it back with wrapping,
        // so any pair of timestamps round-trips.
        let timestamp_delta = timestamp_ms.wrapping_sub(self.base_timestamp);

        // The record starts with its own length, so size the body before writing it.
        let headers = headers.into_iter();
        let mut header_count = 0usize;
        let mut headers_len = 0usize;
        for (k, v) in headers.clone() {
            header_count += 1;
            headers_len += nullable_bytes_len(Some(k.as_bytes())) + nullable_bytes_len(v);
        }
        let header_count = len_i32(header_count);
        let body_len = 1
            + varlong_len(timestamp_delta)
            + varint_len(offset_delta)
            + nullable_bytes_len(key)
            + nullable_bytes_len(value)
            + varint_len(header_count)
            + headers_len;

        let buf = &mut self.buf;
        buf.reserve(varint_len(len_i32(body_len)) + body_len);
        put_varint(buf, len_i32(body_len));
        let body_start = buf.len();
        buf.push(0); // record attributes: unused by Kafka
        put_varlong(buf, timestamp_delta);
        put_varint(buf, offset_delta);
        put_nullable_bytes(buf, key);
        put_nullable_bytes(buf, value);
        put_varint(buf, header_count);
        for (k, v) in headers {
            put_nullable_bytes(buf, Some(k.as_bytes()));
            put_nullable_bytes(buf, v);
        }
        debug_assert_eq!(
            buf.len() - body_start,
            body_len,
            "record size computed wrong"
        );
        self.record_count += 1;
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes the finished batch will have.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Completes header and CRC; base offset is written as 0.
    ///
    /// An empty builder gives a valid batch of no records (last offset delta -1,
    /// timestamps -1).
    ///
    /// # Panics
    ///
    /// If the batch is longer than `i32::MAX` bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.fill_header();
        self.buf
    }

    /// Same as `finish`, but appends the batch to `out` and leaves the builder empty and
    /// reusable with its allocation.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) {
        self.fill_header();
        out.extend_from_slice(&self.buf);
        self.buf.truncate(BATCH_HEADER_LEN);
        self.record_count = 0;
        self.base_timestamp = NO_TIMESTAMP;
        self.max_timestamp = NO_TIMESTAMP;
    }

    fn fill_header(&mut self) {
        let batch_length =
            i32::try_from(self.buf.len() - LOG_OVERHEAD).expect("batch longer than i32::MAX");
        // record_count < 2^31 is guaranteed by push_record.
        let record_count = i32::try_from(self.record_count).expect("checked by push_record");
        let h = &mut self.buf[..BATCH_HEADER_LEN];
        h[BASE_OFFSET_AT..BATCH_LENGTH_AT].copy_from_slice(&0i64.to_be_bytes());
        h[BATCH_LENGTH_AT..PARTITION_LEADER_EPOCH_AT].copy_from_slice(&batch_length.to_be_bytes());
        h[PARTITION_LEADER_EPOCH_AT..MAGIC_AT].copy_from_slice(&0i32.to_be_bytes());
        h[MAGIC_AT..CRC_AT].copy_from_slice(&MAGIC.to_be_bytes());
        h[ATTRIBUTES_AT..LAST_OFFSET_DELTA_AT].copy_from_slice(&0i16.to_be_bytes());
        h[LAST_OFFSET_DELTA_AT..BASE_TIMESTAMP_AT]
            .copy_from_slice(&(record_count - 1).to_be_bytes());
        h[BASE_TIMESTAMP_AT..MAX_TIMESTAMP_AT].copy_from_slice(&self.base_timestamp.to_be_bytes());
        h[MAX_TIMESTAMP_AT..PRODUCER_ID_AT].copy_from_slice(&self.max_timestamp.to_be_bytes());
        h[PRODUCER_ID_AT..PRODUCER_EPOCH_AT].copy_from_slice(&NO_PRODUCER_ID.to_be_bytes());
        h[PRODUCER_EPOCH_AT..BASE_SEQUENCE_AT].copy_from_slice(&NO_PRODUCER_EPOCH.to_be_bytes());
        h[BASE_SEQUENCE_AT..RECORD_COUNT_AT].copy_from_slice(&NO_SEQUENCE.to_be_bytes());
        h[RECORD_COUNT_AT..BATCH_HEADER_LEN].copy_from_slice(&record_count.to_be_bytes());
        let crc = crc32c::crc32c(&self.buf[ATTRIBUTES_AT..]);
        self.buf[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
    }
}

/// The most bytes [`BatchBuilder::push`] adds for one record: a key of `key_len` bytes, a
/// value of `value_len` and `headers` as (name, value length), every varint at its
/// longest (5 bytes, 10 for the timestamp delta).
pub fn record_len_max(key_len: usize, value_len: usize, headers: &[(&str, usize)]) -> usize {
    const VARINT: usize = 5;
    const VARLONG: usize = 10;
    // Length, attributes, timestamp and offset deltas, key, value, header count.
    let fixed = VARINT + 1 + VARLONG + VARINT + VARINT + key_len + VARINT + value_len + VARINT;
    fixed
        + headers
            .iter()
            .map(|(name, len)| VARINT + name.len() + VARINT + len)
            .sum::<usize>()
}

/// Writes the base offset of a finished batch. Kafka excludes baseOffset from the CRC, so
/// the partition assigns offsets under its lock without re-computing the CRC.
///
/// # Panics
///
/// If `batch` is shorter than 8 bytes.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_AT..BATCH_LENGTH_AT].copy_from_slice(&base_offset.to_be_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the fixed 61-byte header at the start of `buf`, bounding batch_length only
    /// by the format (`i32::MAX`). Readers of untrusted bytes use
    /// [`parse_bounded`](Self::parse_bounded) or [`check_batch`]. No CRC check.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
        Self::parse_bounded(buf, usize::MAX)
    }

    /// Parses the fixed header: magic is 2, `49 <= batch_length <= batch_len_max`,
    /// `record_count >= 0` and fits the batch, offsets dense (`last_offset_delta ==
    /// record_count - 1`, as every producer writes them and weir never compacts),
    /// `base_offset >= 0` and the last offset does not overflow. No CRC check.
    ///
    /// Fields already present in a short buffer are checked before reporting it
    /// incomplete, so garbage in a torn tail is reported as corrupt.
    pub fn parse_bounded(buf: &[u8], batch_len_max: usize) -> Result<BatchHeader, DecodeError> {
        if buf.len() >= LOG_OVERHEAD {
            let batch_length = be_i32(buf, BATCH_LENGTH_AT);
            match usize::try_from(batch_length) {
                Ok(len) if len < BATCH_LENGTH_MIN => {
                    return Err(corrupt(
                        "batch length shorter than a header",
                        BATCH_LENGTH_AT,
                    ));
                }
                Ok(len) if len > batch_len_max => {
                    return Err(corrupt("batch length above the limit", BATCH_LENGTH_AT));
                }
                Ok(_) => {}
                Err(_) => return Err(corrupt("negative batch length", BATCH_LENGTH_AT)),
            }
        }
        if buf.len() > MAGIC_AT && be_i8(buf, MAGIC_AT) != MAGIC {
            return Err(corrupt("magic is not 2", MAGIC_AT));
        }
        if buf.len() < BATCH_HEADER_LEN {
            return Err(DecodeError::Incomplete {
                needed: BATCH_HEADER_LEN - buf.len(),
            });
        }
        let header = BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET_AT),
            batch_length: be_i32(buf, BATCH_LENGTH_AT),
            partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH_AT),
            magic: be_i8(buf, MAGIC_AT),
            crc: u32::from_be_bytes(array(buf, CRC_AT)),
            attributes: i16::from_be_bytes(array(buf, ATTRIBUTES_AT)),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_AT),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_AT),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_AT),
            producer_id: be_i64(buf, PRODUCER_ID_AT),
            producer_epoch: i16::from_be_bytes(array(buf, PRODUCER_EPOCH_AT)),
            base_sequence: be_i32(buf, BASE_SEQUENCE_AT),
            record_count: be_i32(buf, RECORD_COUNT_AT),
        };
        let Ok(record_count) = usize::try_from(header.record_count) else {
            return Err(corrupt("negative record count", RECORD_COUNT_AT));
        };
        // Checked above: batch_length >= BATCH_LENGTH_MIN.
        let records_len = header.total_len() - BATCH_HEADER_LEN;
        if record_count > records_len / RECORD_LEN_MIN {
            return Err(corrupt(
                "record count exceeds what the batch length holds",
                RECORD_COUNT_AT,
            ));
        }
        if i64::from(header.last_offset_delta) != i64::from(header.record_count) - 1 {
            return Err(corrupt(
                "last offset delta disagrees with record count",
                LAST_OFFSET_DELTA_AT,
            ));
        }
        if header.base_offset < 0 {
            return Err(corrupt("negative base offset", BASE_OFFSET_AT));
        }
        // next_offset() = base + last_offset_delta + 1 must not overflow.
        if header
            .base_offset
            .checked_add(i64::from(header.record_count))
            .is_none()
        {
            return Err(corrupt("last offset overflows", BASE_OFFSET_AT));
        }
        Ok(header)
    }

    /// Bytes of the whole batch: 12 + batch_length.
    ///
    /// # Panics
    ///
    /// If batch_length is negative, which `parse` rules out.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD
            + usize::try_from(self.batch_length).expect("parse rejects a negative batch length")
    }

    /// Offset of the last record: base + last_offset_delta.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The offset the next batch starts at.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
}

/// Validates a whole batch at the start of `buf` (bytes after it are ignored): header, then
/// CRC over attributes..end. `batch_len_max` bounds batch_length so a corrupt length
/// cannot make a reader allocate or read gigabytes.
pub fn check_batch(buf: &[u8], batch_len_max: usize) -> Result<BatchHeader, DecodeError> {
    let header = BatchHeader::parse_bounded(buf, batch_len_max)?;
    let total_len = header.total_len();
    if buf.len() < total_len {
        return Err(DecodeError::Incomplete {
            needed: total_len - buf.len(),
        });
    }
    if crc32c::crc32c(&buf[ATTRIBUTES_AT..total_len]) != header.crc {
        return Err(corrupt("crc mismatch", CRC_AT));
    }
    Ok(header)
}

/// Iterates the records of the batch at the start of `batch`. Meant for batches that
/// passed [`check_batch`], but garbage only ever yields an error: every varint and length
/// is bounds-checked. The iterator also checks that the records are exactly
/// `record_count` and fill the batch exactly; it stops after the first error.
pub fn records(batch: &[u8]) -> Result<Records<'_>, DecodeError> {
    let header = BatchHeader::parse(batch)?;
    let total_len = header.total_len();
    if batch.len() < total_len {
        return Err(DecodeError::Incomplete {
            needed: total_len - batch.len(),
        });
    }
    if header.attributes & COMPRESSION_MASK != 0 {
        return Err(corrupt(
            "compressed batches are not supported",
            ATTRIBUTES_AT,
        ));
    }
    let remaining = u32::try_from(header.record_count).expect("parse rejects a negative count");
    Ok(Records {
        cursor: Cursor::new(&batch[..total_len], 0, BATCH_HEADER_LEN),
        remaining,
        done: false,
    })
}

/// The records of one batch, in order. See [`records`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    /// Over the whole batch, so error positions are batch positions.
    cursor: Cursor<'a>,
    remaining: u32,
    done: bool,
}

impl<'a> Records<'a> {
    /// The next record, as [`Iterator::next`], with `visit(key, value)` called for each of
    /// its headers in order during the walk that checks them (a caller looking for a
    /// header need not walk them again). A record that turns out malformed may have had
    /// some of its headers visited before its error.
    #[inline]
    pub fn next_visiting(
        &mut self,
        visit: &mut impl FnMut(&'a [u8], Option<&'a [u8]>),
    ) -> Option<Result<Record<'a>, DecodeError>> {
        if self.done {
            return None;
        }
        if self.remaining == 0 {
            self.done = true;
            if self.cursor.left() != 0 {
                return Some(Err(corrupt(
                    "bytes after the last record",
                    self.cursor.at(),
                )));
            }
            return None;
        }
        match self.next_record(visit) {
            Ok(record) => {
                self.remaining -= 1;
                Some(Ok(record))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    #[inline]
    fn next_record(
        &mut self,
        visit: &mut impl FnMut(&'a [u8], Option<&'a [u8]>),
    ) -> Result<Record<'a>, DecodeError> {
        let len_at = self.cursor.at();
        let len = self.cursor.varint()?;
        let Ok(len) = usize::try_from(len) else {
            return Err(corrupt("negative record length", len_at));
        };
        if len > self.cursor.left() {
            return Err(corrupt("record length past the batch end", len_at));
        }
        let end = self.cursor.pos + len;
        let mut r = Cursor::new(&self.cursor.buf[..end], self.cursor.origin, self.cursor.pos);
        let _attributes = r.u8()?;
        let timestamp_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        let key = r.nullable_bytes()?;
        let value = r.nullable_bytes()?;
        let count_at = r.at();
        let Ok(header_count) = u32::try_from(r.varint()?) else {
            return Err(corrupt("negative header count", count_at));
        };
        let headers_start = r.pos;
        // Walk the headers now so that a record is only handed out when it is well formed
        // and exactly fills its length; `headers()` then re-reads them lazily.
        for _ in 0..header_count {
            let (key, value) = r.header()?;
            visit(key, value);
        }
        if r.pos != end {
            return Err(corrupt("record length disagrees with its fields", r.at()));
        }
        self.cursor.pos = end;
        Ok(Record {
            offset_delta,
            timestamp_delta,
            key,
            value,
            header_count,
            headers: &r.buf[headers_start..end],
            headers_at: r.origin + headers_start,
        })
    }

    /// Records not yet returned.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_visiting(&mut |_, _| {})
    }
}

/// One record, borrowed from its batch. Its offset is the batch's base offset plus
/// `offset_delta`; its timestamp is `base_timestamp.wrapping_add(timestamp_delta)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub header_count: u32,
    /// The encoded headers, already validated by `Records`.
    headers: &'a [u8],
    /// Batch position of `headers`, for error positions.
    headers_at: usize,
}

impl<'a> Record<'a> {
    /// The headers in order, as (key, value); a null value is `None`.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            cursor: Cursor::new(self.headers, self.headers_at, 0),
            remaining: self.header_count,
        }
    }

    /// The value of the first header named `key`; `None` if there is none or its value is
    /// null.
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        for header in self.headers() {
            match header {
                Ok((k, v)) if crate::json::short_eq(k, key.as_bytes()) => return v,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

/// The headers of one record. See [`Record::headers`].
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    cursor: Cursor<'a>,
    remaining: u32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Result<(&'a [u8], Option<&'a [u8]>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        match self.cursor.header() {
            Ok(h) => {
                self.remaining -= 1;
                Some(Ok(h))
            }
            Err(e) => {
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }
}

/// A bounds-checked reader over `buf[pos..]`; `origin` is the batch position of `buf[0]`.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
    origin: usize,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], origin: usize, pos: usize) -> Self {
        Cursor { buf, origin, pos }
    }

    fn at(&self) -> usize {
        self.origin + self.pos
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| corrupt("record past its end", self.at()))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.left() {
            return Err(corrupt("length past the record end", self.at()));
        }
        let b = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(b)
    }

    /// Kafka's varint: zigzag over at most 5 bytes. As Kafka's ByteUtils.readVarint, bits
    /// of the fifth byte beyond 32 are dropped and a sixth byte is an error.
    #[inline]
    fn varint(&mut self) -> Result<i32, DecodeError> {
        // Most varints of a record (lengths, deltas, header counts) fit in one or two
        // bytes: those inline, the rest in the loop.
        let zigzag = |raw: u32| (raw >> 1).cast_signed() ^ (raw & 1).cast_signed().wrapping_neg();
        if let Some(&b0) = self.buf.get(self.pos) {
            if b0 & 0x80 == 0 {
                self.pos += 1;
                return Ok(zigzag(u32::from(b0)));
            }
            if let Some(&b1) = self.buf.get(self.pos + 1)
                && b1 & 0x80 == 0
            {
                self.pos += 2;
                return Ok(zigzag(u32::from(b0 & 0x7f) | (u32::from(b1) << 7)));
            }
        }
        self.varint_long()
    }

    #[cold]
    fn varint_long(&mut self) -> Result<i32, DecodeError> {
        let at = self.at();
        let mut raw = 0u32;
        for i in 0..5 {
            let b = self.u8()?;
            raw |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1).cast_signed() ^ (raw & 1).cast_signed().wrapping_neg());
            }
        }
        Err(corrupt("varint longer than 5 bytes", at))
    }

    /// Kafka's varlong: zigzag over at most 10 bytes.
    #[inline]
    fn varlong(&mut self) -> Result<i64, DecodeError> {
        let zigzag = |raw: u64| (raw >> 1).cast_signed() ^ (raw & 1).cast_signed().wrapping_neg();
        if let Some(&b0) = self.buf.get(self.pos) {
            if b0 & 0x80 == 0 {
                self.pos += 1;
                return Ok(zigzag(u64::from(b0)));
            }
            if let Some(&b1) = self.buf.get(self.pos + 1)
                && b1 & 0x80 == 0
            {
                self.pos += 2;
                return Ok(zigzag(u64::from(b0 & 0x7f) | (u64::from(b1) << 7)));
            }
        }
        self.varlong_long()
    }

    #[cold]
    fn varlong_long(&mut self) -> Result<i64, DecodeError> {
        let at = self.at();
        let mut raw = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1).cast_signed() ^ (raw & 1).cast_signed().wrapping_neg());
            }
        }
        Err(corrupt("varlong longer than 10 bytes", at))
    }

    /// A varint length then that many bytes; length -1 is null.
    #[inline]
    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let at = self.at();
        match self.varint()? {
            -1 => Ok(None),
            len => match usize::try_from(len) {
                Ok(len) => self.bytes(len).map(Some),
                Err(_) => Err(corrupt("length below -1", at)),
            },
        }
    }

    /// One header: a key (never null in Kafka) and a nullable value.
    #[inline]
    fn header(&mut self) -> Result<(&'a [u8], Option<&'a [u8]>), DecodeError> {
        let at = self.at();
        let Some(key) = self.nullable_bytes()? else {
            return Err(corrupt("null header key", at));
        };
        Ok((key, self.nullable_bytes()?))
    }
}

fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&buf[at..at + N]);
    a
}

fn be_i8(buf: &[u8], at: usize) -> i8 {
    i8::from_be_bytes(array(buf, at))
}

fn be_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(array(buf, at))
}

fn be_i64(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(array(buf, at))
}

/// A field length as Kafka's i32.
fn len_i32(len: usize) -> i32 {
    i32::try_from(len).expect("record field longer than i32::MAX bytes")
}

fn zigzag32(n: i32) -> u32 {
    ((n << 1) ^ (n >> 31)).cast_unsigned()
}

fn zigzag64(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)).cast_unsigned()
}

fn uvarint_len(v: u64) -> usize {
    // 7 payload bits per byte; `| 1` makes zero take one byte.
    let bits = 64 - (v | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

fn varint_len(n: i32) -> usize {
    uvarint_len(u64::from(zigzag32(n)))
}

fn varlong_len(n: i64) -> usize {
    uvarint_len(zigzag64(n))
}

fn nullable_bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        None => varint_len(-1),
        Some(b) => varint_len(len_i32(b.len())) + b.len(),
    }
}

fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v.to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    buf.push(v.to_le_bytes()[0]);
}

fn put_varint(buf: &mut Vec<u8>, n: i32) {
    put_uvarint(buf, u64::from(zigzag32(n)));
}

fn put_varlong(buf: &mut Vec<u8>, n: i64) {
    put_uvarint(buf, zigzag64(n));
}

fn put_nullable_bytes(buf: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, len_i32(b.len()));
            buf.extend_from_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    use super::*;

    // Counts allocations per thread, so the never-panic properties can also show that
    // decoding allocates nothing at all (so nothing proportional to a length field).
    // Test binary only: the weir binary keeps jemalloc.
    struct CountingAlloc;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: forwards to System unchanged; the counter is a const-initialised
    // thread-local Cell, which never allocates.
    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            // SAFETY: the caller upholds GlobalAlloc::alloc's contract.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller upholds GlobalAlloc::dealloc's contract.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: CountingAlloc = CountingAlloc;

    fn allocations_during(f: impl FnOnce()) -> usize {
        let before = ALLOCATIONS.with(Cell::get);
        f();
        ALLOCATIONS.with(Cell::get) - before
    }

    #[test]
    fn the_allocation_counter_counts() {
        assert!(allocations_during(|| drop(std::hint::black_box(vec![0u8; 16]))) > 0);
    }

    /// A record as the tests see it: owned, with nullable value and header values.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct TestRecord {
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        timestamp: i64,
        headers: Vec<(String, Option<Vec<u8>>)>,
    }

    fn encode(records: &[TestRecord]) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for r in records {
            let all_values = r.value.is_some() && r.headers.iter().all(|(_, v)| v.is_some());
            if all_values {
                // The hot-path signature, whenever it can express the record.
                let headers: Vec<(&str, &[u8])> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref().unwrap_or_default()))
                    .collect();
                builder.push(
                    r.key.as_deref(),
                    r.value.as_deref().unwrap_or_default(),
                    r.timestamp,
                    &headers,
                );
            } else {
                builder.push_record(
                    r.key.as_deref(),
                    r.value.as_deref(),
                    r.timestamp,
                    r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
                );
            }
        }
        let expected_len = builder.encoded_len();
        let batch = builder.finish();
        assert_eq!(batch.len(), expected_len);
        batch
    }

    /// Decodes with our decoder: the header and the records with absolute offsets and
    /// timestamps.
    fn decode(batch: &[u8]) -> Result<(BatchHeader, Vec<(i64, TestRecord)>), DecodeError> {
        let header = check_batch(batch, usize::MAX)?;
        let mut out = Vec::new();
        for record in records(batch)? {
            let record = record?;
            let headers = record
                .headers()
                .map(|h| {
                    h.map(|(k, v)| {
                        (
                            String::from_utf8(k.to_vec()).unwrap(),
                            v.map(<[u8]>::to_vec),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            assert_eq!(headers.len(), usize::try_from(record.header_count).unwrap());
            out.push((
                header.base_offset + i64::from(record.offset_delta),
                TestRecord {
                    key: record.key.map(<[u8]>::to_vec),
                    value: record.value.map(<[u8]>::to_vec),
                    timestamp: header.base_timestamp.wrapping_add(record.timestamp_delta),
                    headers,
                },
            ));
        }
        Ok((header, out))
    }

    fn to_kafka(records: &[TestRecord], base_offset: i64) -> Vec<KafkaRecord> {
        records
            .iter()
            .zip(0i32..)
            .map(|(r, i)| KafkaRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base_offset + i64::from(i),
                // kafka-protocol splits batches where offset - sequence changes and
                // derives the base sequence from the first record: -1, as weir writes.
                sequence: i - 1,
                timestamp: r.timestamp,
                key: r.key.clone().map(Bytes::from),
                value: r.value.clone().map(Bytes::from),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone().map(Bytes::from)))
                    .collect(),
            })
            .collect()
    }

    fn from_kafka(r: &KafkaRecord) -> TestRecord {
        TestRecord {
            key: r.key.as_deref().map(<[u8]>::to_vec),
            value: r.value.as_deref().map(<[u8]>::to_vec),
            timestamp: r.timestamp,
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_deref().map(<[u8]>::to_vec)))
                .collect(),
        }
    }

    fn kafka_encode(records: &[TestRecord], base_offset: i64) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &to_kafka(records, base_offset), &options).unwrap();
        buf.to_vec()
    }

    /// Recomputes the CRC after a test edits the bytes it covers.
    fn fix_crc(batch: &mut [u8]) {
        let end = batch
            .len()
            .min(BatchHeader::parse(batch).map_or(batch.len(), |h| h.total_len()));
        if end >= BATCH_HEADER_LEN {
            let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..end]);
            batch[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
        }
    }

    fn put_i32(batch: &mut [u8], at: usize, v: i32) {
        batch[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(
            Some(b"k1"),
            b"value one",
            1_000,
            &[("weir.type", b"click"), ("weir.id", b"0123")],
        );
        b.push(None, b"value two", 990, &[]);
        b.push(Some(b""), b"", 1_005, &[("weir.append", b"17")]);
        b.finish()
    }

    /// Exercises every decoding entry point the way a reader would: the `batch_decode`
    /// fuzz target's check, and the bounded parse at a smaller bound.
    fn exercise(buf: &[u8]) {
        crate::fuzz_corpus::batch_decode::check(buf);
        let _ = BatchHeader::parse_bounded(buf, 1 << 16);
        let _ = check_batch(buf, 1 << 16);
    }

    #[test]
    fn header_fields_sit_at_kafka_offsets() {
        let batch = sample();
        assert_eq!(BatchBuilder::new().encoded_len(), BATCH_HEADER_LEN);
        assert_eq!(be_i64(&batch, 0), 0, "base offset");
        assert_eq!(
            usize::try_from(be_i32(&batch, 8)).unwrap(),
            batch.len() - 12,
            "batch length"
        );
        assert_eq!(be_i32(&batch, 12), 0, "partition leader epoch");
        assert_eq!(batch[16], 2, "magic");
        assert_eq!(
            u32::from_be_bytes(array(&batch, 17)),
            crc32c::crc32c(&batch[21..]),
            "crc"
        );
        assert_eq!(i16::from_be_bytes(array(&batch, 21)), 0, "attributes");
        assert_eq!(be_i32(&batch, 23), 2, "last offset delta");
        assert_eq!(
            be_i64(&batch, 27),
            1_000,
            "base timestamp is the first record's"
        );
        assert_eq!(be_i64(&batch, 35), 1_005, "max timestamp");
        assert_eq!(be_i64(&batch, 43), -1, "producer id");
        assert_eq!(i16::from_be_bytes(array(&batch, 51)), -1, "producer epoch");
        assert_eq!(be_i32(&batch, 53), -1, "base sequence");
        assert_eq!(be_i32(&batch, 57), 3, "record count");

        let h = check_batch(&batch, batch.len()).unwrap();
        assert_eq!(
            (h.total_len(), h.last_offset(), h.next_offset()),
            (batch.len(), 2, 3)
        );
    }

    #[test]
    fn records_round_trip_with_headers_and_negative_deltas() {
        let batch = sample();
        let got: Vec<Record<'_>> = records(&batch).unwrap().map(Result::unwrap).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].key, Some(&b"k1"[..]));
        assert_eq!(got[0].value, Some(&b"value one"[..]));
        assert_eq!(got[0].header("weir.type"), Some(&b"click"[..]));
        assert_eq!(got[0].header("weir.id"), Some(&b"0123"[..]));
        assert_eq!(got[0].header("weir.append"), None);
        assert_eq!(
            (got[1].offset_delta, got[1].timestamp_delta, got[1].key),
            (1, -10, None)
        );
        assert_eq!(got[1].headers().count(), 0);
        assert_eq!(
            (got[2].key, got[2].value, got[2].timestamp_delta),
            (Some(&b""[..]), Some(&b""[..]), 5)
        );
    }

    #[test]
    fn null_values_and_extreme_timestamps_round_trip() {
        let input = vec![
            TestRecord {
                key: None,
                value: None,
                timestamp: i64::MAX,
                headers: vec![("a".into(), None)],
            },
            TestRecord {
                key: Some(vec![1]),
                value: None,
                timestamp: i64::MIN,
                headers: vec![],
            },
            TestRecord {
                key: None,
                value: Some(vec![]),
                timestamp: 0,
                headers: vec![],
            },
        ];
        let (header, got) = decode(&encode(&input)).unwrap();
        assert_eq!(header.max_timestamp, i64::MAX);
        let got: Vec<TestRecord> = got.into_iter().map(|(_, r)| r).collect();
        assert_eq!(got, input);
        let batch = encode(&input);
        let first = records(&batch).unwrap().next().unwrap().unwrap();
        assert_eq!(
            first.header("a"),
            None,
            "a null header value reads as absent"
        );
    }

    #[test]
    fn empty_builder_gives_a_valid_empty_batch() {
        let batch = BatchBuilder::new().finish();
        assert_eq!(batch.len(), BATCH_HEADER_LEN);
        let h = check_batch(&batch, 1 << 20).unwrap();
        assert_eq!(
            (h.record_count, h.last_offset_delta, h.next_offset()),
            (0, -1, 0)
        );
        assert_eq!(records(&batch).unwrap().count(), 0);
    }

    #[test]
    fn crc_excludes_base_offset() {
        let mut batch = sample();
        let crc_before = batch[CRC_AT..ATTRIBUTES_AT].to_vec();
        for base in [1, 42, i64::from(i32::MAX) + 7, i64::MAX - 3] {
            set_base_offset(&mut batch, base);
            assert_eq!(batch[CRC_AT..ATTRIBUTES_AT], crc_before[..]);
            let h = check_batch(&batch, batch.len()).expect("still valid");
            assert_eq!(
                (h.base_offset, h.last_offset(), h.next_offset()),
                (base, base + 2, base + 3)
            );
        }
    }

    #[test]
    fn base_offsets_that_overflow_or_are_negative_are_corrupt() {
        let mut batch = sample();
        set_base_offset(&mut batch, i64::MAX - 1);
        assert!(matches!(
            check_batch(&batch, usize::MAX),
            Err(DecodeError::Corrupt { at: 0, .. })
        ));
        set_base_offset(&mut batch, -5);
        assert!(matches!(
            check_batch(&batch, usize::MAX),
            Err(DecodeError::Corrupt { at: 0, .. })
        ));
    }

    #[test]
    fn finish_into_appends_and_reuses_the_builder() {
        let mut builder = BatchBuilder::with_buffer(vec![9; 1000]);
        assert_eq!(
            builder.encoded_len(),
            BATCH_HEADER_LEN,
            "with_buffer discards old bytes"
        );
        let mut out = b"prefix".to_vec();
        builder.push(Some(b"a"), b"1", 10, &[]);
        builder.finish_into(&mut out);
        assert!(builder.is_empty());
        builder.push(None, b"2", 5, &[("h", b"v")]);
        builder.push(None, b"3", 6, &[]);
        assert_eq!(builder.record_count(), 2);
        builder.finish_into(&mut out);

        let first = check_batch(&out[6..], usize::MAX).unwrap();
        let second = check_batch(&out[6 + first.total_len()..], usize::MAX).unwrap();
        assert_eq!(6 + first.total_len() + second.total_len(), out.len());
        assert_eq!((first.record_count, first.base_timestamp), (1, 10));
        assert_eq!(
            (
                second.record_count,
                second.base_timestamp,
                second.max_timestamp
            ),
            (2, 5, 6)
        );
    }

    #[test]
    fn torn_buffers_are_incomplete() {
        let batch = sample();
        for len in 0..batch.len() {
            let needed = if len < BATCH_HEADER_LEN {
                BATCH_HEADER_LEN - len
            } else {
                batch.len() - len
            };
            assert_eq!(
                check_batch(&batch[..len], usize::MAX),
                Err(DecodeError::Incomplete { needed })
            );
            if len >= BATCH_HEADER_LEN {
                assert_eq!(
                    records(&batch[..len]).unwrap_err(),
                    DecodeError::Incomplete { needed }
                );
            }
        }
        let mut longer = batch.clone();
        longer.extend_from_slice(b"next batch");
        assert_eq!(
            check_batch(&longer, usize::MAX).unwrap().total_len(),
            batch.len()
        );
        assert_eq!(
            records(&longer).unwrap().count(),
            3,
            "bytes after the batch are not its records"
        );
    }

    #[test]
    fn flipped_bytes_are_corrupt() {
        let batch = sample();
        for at in BATCH_LENGTH_AT..batch.len() {
            for bit in 0..8 {
                let mut bad = batch.clone();
                bad[at] ^= 1 << bit;
                let got = check_batch(&bad, usize::MAX);
                if (PARTITION_LEADER_EPOCH_AT..MAGIC_AT).contains(&at) {
                    // Outside the CRC, as in Kafka, and any value is legal.
                    assert!(got.is_ok(), "byte {at} bit {bit}");
                } else if (BATCH_LENGTH_AT..PARTITION_LEADER_EPOCH_AT).contains(&at) {
                    // A longer batch length points past the buffer, which is what a torn
                    // tail looks like: either error is acceptable, acceptance is not.
                    assert!(got.is_err(), "byte {at} bit {bit}");
                } else {
                    assert!(
                        matches!(got, Err(DecodeError::Corrupt { .. })),
                        "byte {at} bit {bit}: {got:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn batch_length_limits_are_enforced_before_reading() {
        let mut batch = sample();
        let len = batch.len();
        assert!(matches!(
            check_batch(&batch, len - 13),
            Err(DecodeError::Corrupt { at: 8, .. })
        ));
        put_i32(&mut batch, BATCH_LENGTH_AT, i32::MAX);
        assert!(matches!(
            check_batch(&batch[..12], 1 << 20),
            Err(DecodeError::Corrupt { at: 8, .. })
        ));
        put_i32(&mut batch, BATCH_LENGTH_AT, 48);
        assert!(matches!(
            check_batch(&batch, usize::MAX),
            Err(DecodeError::Corrupt { at: 8, .. })
        ));
        put_i32(&mut batch, BATCH_LENGTH_AT, -1);
        assert!(matches!(
            BatchHeader::parse(&batch),
            Err(DecodeError::Corrupt { at: 8, .. })
        ));
    }

    #[test]
    fn bad_magic_is_corrupt_even_in_a_short_buffer() {
        let mut batch = sample();
        batch[MAGIC_AT] = 1;
        assert!(matches!(
            BatchHeader::parse(&batch[..20]),
            Err(DecodeError::Corrupt { at: 16, .. })
        ));
    }

    #[test]
    fn record_count_must_match_the_records() {
        // One record fewer than the bytes hold: trailing bytes.
        let mut batch = sample();
        put_i32(&mut batch, RECORD_COUNT_AT, 2);
        put_i32(&mut batch, LAST_OFFSET_DELTA_AT, 1);
        fix_crc(&mut batch);
        check_batch(&batch, usize::MAX).expect("header and crc are fine");
        let got: Vec<_> = records(&batch).unwrap().collect();
        assert_eq!(got.len(), 3);
        assert!(matches!(
            got[2],
            Err(DecodeError::Corrupt {
                what: "bytes after the last record",
                ..
            })
        ));

        // One record more than the bytes hold.
        put_i32(&mut batch, RECORD_COUNT_AT, 4);
        put_i32(&mut batch, LAST_OFFSET_DELTA_AT, 3);
        let got: Vec<_> = records(&batch).unwrap().collect();
        assert_eq!(got.len(), 4);
        assert!(got[3].is_err());

        // A count the length cannot hold is refused by the header check.
        put_i32(&mut batch, RECORD_COUNT_AT, 1_000_000);
        put_i32(&mut batch, LAST_OFFSET_DELTA_AT, 999_999);
        assert!(matches!(
            BatchHeader::parse(&batch),
            Err(DecodeError::Corrupt { at: 57, .. })
        ));

        // A last offset delta that disagrees with the count.
        let mut batch = sample();
        put_i32(&mut batch, LAST_OFFSET_DELTA_AT, 7);
        assert!(matches!(
            BatchHeader::parse(&batch),
            Err(DecodeError::Corrupt { at: 23, .. })
        ));
    }

    #[test]
    fn compressed_batches_are_refused_by_records() {
        let mut batch = sample();
        batch[ATTRIBUTES_AT + 1] = 1; // gzip
        fix_crc(&mut batch);
        check_batch(&batch, usize::MAX).expect("framing is fine");
        assert!(matches!(
            records(&batch),
            Err(DecodeError::Corrupt { at: 21, .. })
        ));
    }

    #[test]
    fn varints_match_kafka_encoding() {
        // Kafka's ByteUtilsTest: zigzag puts small magnitudes of either sign in one byte.
        let cases: [(i64, &[u8]); 6] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (i64::from(i32::MIN), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (n, bytes) in cases {
            let mut buf = Vec::new();
            put_varint(&mut buf, i32::try_from(n).unwrap());
            assert_eq!(buf, bytes, "{n}");
            assert_eq!(varint_len(i32::try_from(n).unwrap()), bytes.len());
            assert_eq!(
                Cursor::new(&buf, 0, 0).varint(),
                Ok(i32::try_from(n).unwrap())
            );
        }
        for n in [i64::MIN, i64::MAX, -1, 0, 1 << 40] {
            let mut buf = Vec::new();
            put_varlong(&mut buf, n);
            assert_eq!(buf.len(), varlong_len(n));
            assert_eq!(Cursor::new(&buf, 0, 0).varlong(), Ok(n));
        }
        assert!(Cursor::new(&[0x80; 6], 0, 0).varint().is_err());
        assert!(Cursor::new(&[0xff; 11], 0, 0).varlong().is_err());
        assert!(Cursor::new(&[0x80], 0, 0).varint().is_err());
    }

    fn test_record() -> impl Strategy<Value = TestRecord> {
        let headers = prop::collection::vec(
            (
                "[a-z.]{0,8}",
                prop::option::of(prop::collection::vec(any::<u8>(), 0..12)),
            ),
            0..5,
        )
        .prop_map(|mut hs| {
            // kafka-protocol keeps headers in a map; unique keys keep the oracle exact.
            let mut seen = std::collections::HashSet::new();
            hs.retain(|(k, _)| seen.insert(k.clone()));
            hs
        });
        (
            prop::option::of(prop::collection::vec(any::<u8>(), 0..24)),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..200)),
            -86_400_000i64..86_400_000,
            headers,
        )
            .prop_map(|(key, value, timestamp, headers)| TestRecord {
                key,
                value,
                timestamp,
                headers,
            })
    }

    /// Records whose timestamps scatter around a base, so deltas are negative too.
    fn test_records(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<TestRecord>> {
        (
            0i64..4_000_000_000_000,
            prop::collection::vec(test_record(), len),
        )
            .prop_map(|(base, mut rs)| {
                for r in &mut rs {
                    r.timestamp += base;
                }
                rs
            })
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip { at: usize, mask: u8 },
        Set { at: usize, byte: u8 },
        PutI32 { at: usize, value: i32 },
        Truncate { at: usize },
        Extend { bytes: Vec<u8> },
        FixCrc,
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
            (
                any::<usize>(),
                prop_oneof![Just(0x80u8), Just(0xff), Just(0x01), any::<u8>()]
            )
                .prop_map(|(at, byte)| Mutation::Set { at, byte }),
            (
                prop_oneof![
                    Just(BATCH_LENGTH_AT),
                    Just(RECORD_COUNT_AT),
                    Just(LAST_OFFSET_DELTA_AT),
                    any::<usize>()
                ],
                prop_oneof![Just(i32::MAX), Just(-1), Just(0), Just(49), any::<i32>()],
            )
                .prop_map(|(at, value)| Mutation::PutI32 { at, value }),
            any::<usize>().prop_map(|at| Mutation::Truncate { at }),
            prop::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Extend { bytes }),
            Just(Mutation::FixCrc),
        ]
    }

    fn apply(buf: &mut Vec<u8>, m: &Mutation) {
        let len = buf.len().max(1);
        match *m {
            Mutation::Flip { at, mask } => {
                if let Some(b) = buf.get_mut(at % len) {
                    *b ^= mask;
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(b) = buf.get_mut(at % len) {
                    *b = byte;
                }
            }
            Mutation::PutI32 { at, value } => {
                let at = at % len;
                if at + 4 <= buf.len() {
                    put_i32(buf, at, value);
                }
            }
            Mutation::Truncate { at } => buf.truncate(at % len),
            Mutation::Extend { ref bytes } => buf.extend_from_slice(bytes),
            Mutation::FixCrc => fix_crc(buf),
        }
    }

    /// A well-formed header (lengths, magic, count consistent) over random record bytes,
    /// so the record parser, not the header check, meets the garbage.
    fn garbage_records() -> impl Strategy<Value = Vec<u8>> {
        (0i32..12, prop::collection::vec(any::<u8>(), 0..160)).prop_map(|(count, body)| {
            let mut batch = BatchBuilder::new().finish();
            batch.extend_from_slice(&body);
            let batch_length = len_i32(batch.len() - LOG_OVERHEAD);
            put_i32(&mut batch, BATCH_LENGTH_AT, batch_length);
            put_i32(&mut batch, RECORD_COUNT_AT, count);
            put_i32(&mut batch, LAST_OFFSET_DELTA_AT, count - 1);
            fix_crc(&mut batch);
            batch
        })
    }

    proptest! {
        #[test]
        fn ours_decode_with_kafka_protocol(
            input in test_records(0..20),
            base_offset in 0i64..1 << 50,
        ) {
            let mut batch = encode(&input);
            set_base_offset(&mut batch, base_offset);

            let mut bytes = Bytes::from(batch.clone());
            let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
            prop_assert!(bytes.is_empty());
            prop_assert_eq!(set.version, 2);
            prop_assert_eq!(set.compression, Compression::None);
            prop_assert_eq!(set.records.len(), input.len());
            for ((k, r), i) in set.records.iter().zip(&input).zip(0i32..) {
                prop_assert_eq!(k.offset, base_offset + i64::from(i));
                prop_assert_eq!(&from_kafka(k), r);
                prop_assert_eq!(k.timestamp_type, TimestampType::Creation);
                prop_assert_eq!((k.producer_id, k.producer_epoch, k.sequence), (-1, -1, i - 1));
                prop_assert_eq!(k.partition_leader_epoch, 0);
                prop_assert!(!k.transactional && !k.control);
            }

            // And with ours.
            let (header, got) = decode(&batch).unwrap();
            prop_assert_eq!(header.max_timestamp, input.iter().map(|r| r.timestamp).max().unwrap_or(-1));
            prop_assert_eq!(header.next_offset(), base_offset + i64::try_from(input.len()).unwrap());
            let want: Vec<_> = input.iter().cloned().zip(base_offset..).map(|(r, o)| (o, r)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn kafka_protocol_batches_decode_with_ours(
            input in test_records(1..20),
            base_offset in 0i64..1 << 50,
        ) {
            let batch = kafka_encode(&input, base_offset);
            let (header, got) = decode(&batch).unwrap();
            prop_assert_eq!(header.total_len(), batch.len());
            prop_assert_eq!((header.magic, header.attributes), (2, 0));
            prop_assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (-1, -1, -1));
            prop_assert_eq!(header.base_offset, base_offset);
            prop_assert_eq!(header.last_offset_delta, i32::try_from(input.len()).unwrap() - 1);
            // kafka-protocol takes the smallest timestamp as the base; any base works.
            prop_assert_eq!(header.base_timestamp, input.iter().map(|r| r.timestamp).min().unwrap());
            prop_assert_eq!(header.max_timestamp, input.iter().map(|r| r.timestamp).max().unwrap());
            let want: Vec<_> = input.iter().cloned().zip(base_offset..).map(|(r, o)| (o, r)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn bytes_match_kafka_protocol_when_timestamps_ascend(mut input in test_records(1..20)) {
            // Then the first timestamp is also the smallest, and both encoders agree on
            // every byte, including the CRC.
            let mut timestamps: Vec<i64> = input.iter().map(|r| r.timestamp).collect();
            timestamps.sort_unstable();
            for (r, t) in input.iter_mut().zip(timestamps) {
                r.timestamp = t;
            }
            prop_assert_eq!(encode(&input), kafka_encode(&input, 0));
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_allocate(buf in prop::collection::vec(any::<u8>(), 0..256)) {
            prop_assert_eq!(allocations_during(|| exercise(&buf)), 0);
        }

        #[test]
        fn garbage_records_never_panic_nor_allocate(buf in garbage_records()) {
            prop_assert_eq!(allocations_during(|| exercise(&buf)), 0);
        }

        #[test]
        fn mutated_batches_never_panic_nor_allocate(
            input in test_records(0..8),
            mutations in prop::collection::vec(mutation(), 1..5),
        ) {
            let mut buf = encode(&input);
            for m in &mutations {
                apply(&mut buf, m);
            }
            prop_assert_eq!(allocations_during(|| exercise(&buf)), 0);
        }
    }
}
