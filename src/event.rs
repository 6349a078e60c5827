//! The envelope: one HTTP request body parsed into validated events, normalised and
//! keyed. This module owns the body forms (one object, a non-empty array of objects, or
//! objects one after another), the envelope's members and how absent ones are filled,
//! key selection, event-time bounds, and the compact envelope text that is stored.
//! It does not know HTTP (status codes live in `http`) nor the log.
//!
//! Parsing is all-or-nothing: [`parse_body`] checks every record before it returns any,
//! so a rejected body appends nothing. It builds no JSON DOM: one validating scan over
//! each record ([`crate::json::Scanner`]) finds the members, whose values stay borrowed
//! slices of the body; strings are decoded only where their value matters (event type,
//! key, time, id hash) and only allocate when they hold escapes.
//!
//! Choices the design leaves open, made here:
//!
//! - Envelopes are strict: a member other than the six known ones, a repeated member, an
//!   optional member that is `null`, or a member of the wrong type is an error
//!   (`invalid_envelope`). An empty `event_id` or `event_type` is an error too.
//! - `timestamp_field` applies only to wrapped (bare) objects. There a string or integer
//!   value gives the event time, `null` or no value gives receive time, anything else
//!   is `invalid_timestamp`; the value's text becomes the stored envelope's timestamp.
//! - Timestamps without a zone are UTC whether `T` or a space separates date and time;
//!   see [`parse_timestamp`]. A JSON number timestamp must be an integer (epoch ms).
//! - A `key` sent in the envelope is stored as sent (a number stays a number); the
//!   record key is its text. `key_field` is evaluated against the envelope as stored
//!   (`/payload/...`, `/metadata/...`, `/event_type`, ...): a string gives its value, a
//!   number its JSON text, `null` or nothing gives no key, and an object, array or
//!   boolean is `invalid_key`. A key from any source longer than `key_len_max` bytes is
//!   `key_too_long`; the empty string is a key.
//! - Generated ids are UUID v7 built from the receive time (`now_ms`, injected) and a
//!   per-request random stream, so no syscall is made per event.

mod timestamp;

use std::borrow::Cow;
use std::fmt;

use crate::json::{self, JsonPointer, Scanner, SyntaxError};

pub use timestamp::{format_rfc3339_ms, parse_timestamp, rfc3339_ms_string};

/// What a topic's configuration says about the events it accepts.
#[derive(Debug, Clone, Copy)]
pub struct TopicRules<'a> {
    /// Bare objects (no `payload` member) are wrapped as the payload.
    pub wrap: bool,
    /// Where the key is found in the stored envelope when the client gives none.
    pub key_field: Option<&'a JsonPointer>,
    /// Where a wrapped object carries its event time.
    pub timestamp_field: Option<&'a JsonPointer>,
    /// The event type of events that name none.
    pub default_event_type: Option<&'a str>,
    /// Event times older than `now - max_event_age_ms` are out of bounds.
    pub max_event_age_ms: i64,
    /// Event times newer than `now + max_event_lead_ms` are out of bounds.
    pub max_event_lead_ms: i64,
    /// Out-of-bounds times are clamped into bounds instead of rejected.
    pub clamp_bad_time: bool,
    /// The longest key accepted, in bytes.
    pub key_len_max: usize,
}

/// Where a record starts in the body: record counted from 1, byte from 0, line from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RecordPos {
    pub record: usize,
    pub byte: usize,
    pub line: usize,
}

impl fmt::Display for RecordPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} (byte {}, line {})",
            self.record, self.byte, self.line
        )
    }
}

/// Why a body was refused. Every variant is the client's fault (a 400 in `http`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is not valid UTF-8 at byte {byte} (line {line})")]
    InvalidUtf8 { byte: usize, line: usize },
    #[error(
        "body is empty: expected a JSON object, a non-empty array of objects, or objects one after another"
    )]
    Empty,
    #[error("body is an empty array: expected at least one object")]
    EmptyArray,
    #[error("{pos}: expected a JSON object")]
    NotAnObject { pos: RecordPos },
    /// `pos` is the record the error is in (or would be the next one); `at_byte` and
    /// `at_line` are where exactly the text stops being acceptable.
    #[error("{pos}: malformed JSON at byte {at_byte} (line {at_line}): {message}")]
    Malformed {
        pos: RecordPos,
        at_byte: usize,
        at_line: usize,
        message: String,
    },
    #[error(
        "{pos}: missing payload (an envelope needs a \"payload\" member, and this topic does not wrap bare objects)"
    )]
    MissingPayload { pos: RecordPos },
    #[error("{pos}: missing event_type, and the topic has no default_event_type")]
    MissingEventType { pos: RecordPos },
    #[error("{pos}: invalid timestamp: {message}")]
    BadTimestamp { pos: RecordPos, message: String },
    #[error(
        "{pos}: event time {} is outside the accepted range {} to {} ({})",
        rfc3339_ms_string(*timestamp_ms),
        rfc3339_ms_string(*min_ms),
        rfc3339_ms_string(*max_ms),
        if timestamp_ms < min_ms {
            "older than now - max_event_age"
        } else {
            "later than now + max_event_lead"
        }
    )]
    TimeOutOfBounds {
        pos: RecordPos,
        timestamp_ms: i64,
        min_ms: i64,
        max_ms: i64,
    },
    #[error("{pos}: key is {len} bytes, more than the maximum of {max}")]
    KeyTooLong {
        pos: RecordPos,
        len: usize,
        max: usize,
    },
    #[error("{pos}: invalid key: {message}")]
    BadKey { pos: RecordPos, message: String },
    #[error(
        "{pos}: unknown envelope member {name:?} (an envelope has event_id, event_type, timestamp, key, payload and metadata)"
    )]
    UnknownMember { pos: RecordPos, name: String },
    /// A known envelope member that is repeated, `null`, empty or of the wrong type.
    #[error("{pos}: {message}")]
    BadMember {
        pos: RecordPos,
        member: &'static str,
        message: String,
    },
}

impl BodyError {
    /// The error code published in the HTTP API.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::InvalidUtf8 { .. } => "invalid_utf8",
            BodyError::Empty | BodyError::EmptyArray => "empty_body",
            BodyError::NotAnObject { .. } => "not_an_object",
            BodyError::Malformed { .. } => "malformed_json",
            BodyError::MissingPayload { .. } => "missing_payload",
            BodyError::MissingEventType { .. } => "missing_event_type",
            BodyError::BadTimestamp { .. } => "invalid_timestamp",
            BodyError::TimeOutOfBounds { .. } => "timestamp_out_of_range",
            BodyError::KeyTooLong { .. } => "key_too_long",
            BodyError::BadKey { .. } => "invalid_key",
            BodyError::UnknownMember { .. } | BodyError::BadMember { .. } => "invalid_envelope",
        }
    }

    /// The record the error is about, if it is about one.
    pub fn pos(&self) -> Option<RecordPos> {
        match self {
            BodyError::InvalidUtf8 { .. } | BodyError::Empty | BodyError::EmptyArray => None,
            BodyError::NotAnObject { pos }
            | BodyError::Malformed { pos, .. }
            | BodyError::MissingPayload { pos }
            | BodyError::MissingEventType { pos }
            | BodyError::BadTimestamp { pos, .. }
            | BodyError::TimeOutOfBounds { pos, .. }
            | BodyError::KeyTooLong { pos, .. }
            | BodyError::BadKey { pos, .. }
            | BodyError::UnknownMember { pos, .. }
            | BodyError::BadMember { pos, .. } => Some(*pos),
        }
    }
}

/// A JSON value as it appears in the body.
#[derive(Debug, Clone, Copy)]
struct Raw<'a> {
    text: &'a str,
    /// No whitespace outside strings: it can be copied as is.
    compact: bool,
    /// Some string in it has an escape (so a string value needs decoding).
    escaped: bool,
}

impl<'a> Raw<'a> {
    /// A value found by other means than the record scan: assume the worst.
    fn unknown(text: &'a str) -> Raw<'a> {
        Raw {
            text,
            compact: false,
            escaped: true,
        }
    }

    /// A string value's contents; borrowed unless it has escapes.
    fn decode(&self, pos: RecordPos) -> Result<Cow<'a, str>, BodyError> {
        match self.text.get(1..self.text.len().saturating_sub(1)) {
            Some(inner) if !self.escaped => Ok(Cow::Borrowed(inner)),
            _ => decode(pos, self.text),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        if self.compact {
            out.extend_from_slice(self.text.as_bytes());
        } else {
            json::minify_into(self.text, out);
        }
    }

    fn kind(&self) -> Kind {
        match self.text.as_bytes().first() {
            Some(b'"') => Kind::String,
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') => Kind::Null,
            _ => Kind::Number,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Number,
    Object,
    Array,
    Bool,
    Null,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::Bool => "a boolean",
            Kind::Null => "null",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum EventId<'a> {
    /// The client's id, as its raw JSON string.
    Client(&'a str),
    Generated(uuid::Uuid),
}

/// One validated event; its strings borrow from the request body.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// The record key, if any (see the module doc for where it comes from).
    pub key: Option<Cow<'a, str>>,
    /// Event time in epoch milliseconds, after clamping.
    pub timestamp_ms: i64,
    pub event_type: Cow<'a, str>,
    /// xxh3-128 of the decoded client `event_id`; `None` for generated ids, which never
    /// enter deduplication.
    pub id_hash: Option<u128>,
    /// Where the record starts in the body.
    pub pos: RecordPos,
    id: EventId<'a>,
    /// The client's `event_type` as raw JSON, written back byte for byte.
    event_type_raw: Option<&'a str>,
    /// The client's timestamp text as raw JSON (string or integer); `None` writes
    /// `timestamp_ms` as RFC 3339 (receive time, or a clamped time).
    timestamp_raw: Option<&'a str>,
    /// The client's `key` member as raw JSON.
    key_raw: Option<&'a str>,
    payload: Raw<'a>,
    metadata: Option<Raw<'a>>,
}

impl Event<'_> {
    /// Appends the stored envelope: compact JSON on one line, members in the order
    /// event_id, event_type, timestamp, key (if the client sent one), payload, metadata
    /// (if present).
    pub fn write_envelope(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"event_id\":");
        match self.id {
            EventId::Client(raw) => out.extend_from_slice(raw.as_bytes()),
            EventId::Generated(id) => {
                let mut buf = [0; uuid::fmt::Hyphenated::LENGTH];
                out.push(b'"');
                out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
                out.push(b'"');
            }
        }
        out.extend_from_slice(b",\"event_type\":");
        match self.event_type_raw {
            Some(raw) => out.extend_from_slice(raw.as_bytes()),
            None => json::write_str_into(&self.event_type, out),
        }
        out.extend_from_slice(b",\"timestamp\":");
        match self.timestamp_raw {
            Some(raw) => out.extend_from_slice(raw.as_bytes()),
            None => {
                out.push(b'"');
                format_rfc3339_ms(self.timestamp_ms, out);
                out.push(b'"');
            }
        }
        if let Some(raw) = self.key_raw {
            out.extend_from_slice(b",\"key\":");
            out.extend_from_slice(raw.as_bytes());
        }
        out.extend_from_slice(b",\"payload\":");
        self.payload.write(out);
        if let Some(metadata) = self.metadata {
            out.extend_from_slice(b",\"metadata\":");
            metadata.write(out);
        }
        out.push(b'}');
    }

    /// An upper bound of what [`Event::write_envelope`] writes, for sizing buffers.
    pub fn envelope_len_hint(&self) -> usize {
        // `{"event_id":`, `,"event_type":`, `,"timestamp":`, `,"payload":` and `}`.
        const MEMBERS: usize = 12 + 14 + 13 + 11 + 1;
        // A quoted RFC 3339 time with milliseconds: any i64 of ms has a year of at most
        // 9 digits and a sign, then `-MM-DDTHH:MM:SS.mmmZ`.
        const TIME: usize = 2 + 10 + 20;
        MEMBERS
            + match self.id {
                EventId::Client(raw) => raw.len(),
                EventId::Generated(_) => 2 + uuid::fmt::Hyphenated::LENGTH,
            }
            // Written escaped when it is not the client's text: 6 bytes for a control byte.
            + self
                .event_type_raw
                .map_or(2 + 6 * self.event_type.len(), str::len)
            + self.timestamp_raw.map_or(TIME, str::len)
            + self.key_raw.map_or(0, |k| 7 + k.len())
            + self.payload.text.len()
            + self.metadata.map_or(0, |m| 12 + m.text.len())
    }

    /// The event id as text (for logs and answers).
    pub fn event_id(&self) -> Cow<'_, str> {
        match self.id {
            EventId::Client(raw) => json::decode_str(raw).unwrap_or(Cow::Borrowed(raw)),
            EventId::Generated(id) => Cow::Owned(id.hyphenated().to_string()),
        }
    }

    /// Whether the client supplied the event id.
    pub fn has_client_id(&self) -> bool {
        matches!(self.id, EventId::Client(_))
    }
}

/// Parses a whole body into `out` (cleared first, its capacity reused). On error `out`
/// is left empty and the error names the first bad record (index, byte, line).
pub fn parse_body<'a>(
    body: &'a [u8],
    rules: &TopicRules<'_>,
    query_key: Option<&'a str>,
    now_ms: i64,
    out: &mut Vec<Event<'a>>,
) -> Result<(), BodyError> {
    out.clear();
    let result = parse_body_inner(body, rules, query_key, now_ms, out);
    if result.is_err() {
        out.clear();
    }
    result
}

fn parse_body_inner<'a>(
    body: &'a [u8],
    rules: &TopicRules<'_>,
    query_key: Option<&'a str>,
    now_ms: i64,
    out: &mut Vec<Event<'a>>,
) -> Result<(), BodyError> {
    // simdutf8 for the check (a quarter of std's instructions on a one-event body), std
    // for where a bad body goes wrong.
    let text = simdutf8::basic::from_utf8(body)
        .or_else(|_| std::str::from_utf8(body))
        .map_err(|e| BodyError::InvalidUtf8 {
            byte: e.valid_up_to(),
            line: 1 + count_newlines(&body[..e.valid_up_to()]),
        })?;
    let mut p = BodyParser {
        text,
        s: Scanner::new(text, 0),
        rules,
        query_key,
        now_ms,
        record: 0,
        ids: None,
    };
    p.s.skip_ws();
    match p.s.peek() {
        None => Err(BodyError::Empty),
        Some(b'[') => {
            p.s.pos += 1;
            p.s.skip_ws();
            if p.s.peek() == Some(b']') {
                return Err(BodyError::EmptyArray);
            }
            loop {
                out.push(p.record()?);
                p.s.skip_ws();
                match p.s.peek() {
                    Some(b',') => {
                        p.s.pos += 1;
                        p.s.skip_ws();
                    }
                    Some(b']') => {
                        p.s.pos += 1;
                        break;
                    }
                    None => return Err(p.between("unexpected end of body, expected ',' or ']'")),
                    Some(_) => return Err(p.between("expected ',' or ']' after an array element")),
                }
            }
            p.s.skip_ws();
            if !p.s.at_end() {
                return Err(p.between("unexpected data after the array"));
            }
            Ok(())
        }
        Some(_) => loop {
            out.push(p.record()?);
            p.s.skip_ws();
            if p.s.at_end() {
                return Ok(());
            }
        },
    }
}

fn count_newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// A per-request stream of UUID v7s: the receive time and 74 bits from a xorshift
/// generator seeded once per request from the OS (through `Uuid::now_v7`).
struct IdGen {
    state: u64,
    spare: u64,
}

impl IdGen {
    fn new() -> IdGen {
        let (high, low) = uuid::Uuid::now_v7().as_u64_pair();
        // The low 64 bits of a v7 are mostly random; fold in the rest and the address
        // of a stack slot so two requests in one millisecond still differ.
        let slot = 0_u8;
        let addr = std::ptr::addr_of!(slot) as usize as u64;
        let mut state = splitmix(low ^ splitmix(high ^ addr));
        if state == 0 {
            state = 0x9E37_79B9_7F4A_7C15;
        }
        IdGen {
            state,
            spare: splitmix(state),
        }
    }

    fn next(&mut self, now_ms: i64) -> uuid::Uuid {
        // xorshift64* for the stream; the spare word keeps 80 bits per id.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let a = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        self.spare = self.spare.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let b = splitmix(self.spare);
        let mut bytes = [0; 10];
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes()[..2]);
        let ms = u64::try_from(now_ms).unwrap_or(0);
        uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid()
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The members of one record object, as raw values.
#[derive(Default)]
struct Members<'a> {
    event_id: Option<Raw<'a>>,
    event_type: Option<Raw<'a>>,
    timestamp: Option<Raw<'a>>,
    key: Option<Raw<'a>>,
    payload: Option<Raw<'a>>,
    metadata: Option<Raw<'a>>,
    /// The first member that is not one of the above (raw JSON string).
    unknown: Option<&'a str>,
    /// The first known member that appeared twice.
    repeated: Option<&'static str>,
}

struct BodyParser<'a, 'r> {
    text: &'a str,
    s: Scanner<'a>,
    rules: &'r TopicRules<'r>,
    query_key: Option<&'a str>,
    now_ms: i64,
    /// Records started so far.
    record: usize,
    ids: Option<IdGen>,
}

impl<'a> BodyParser<'a, '_> {
    /// The position of a record starting where the scanner is.
    fn pos_here(&self, record: usize) -> RecordPos {
        RecordPos {
            record,
            byte: self.s.pos,
            line: 1 + self.s.newlines,
        }
    }

    /// A syntax error inside the record starting at `pos`. Errors are rare, so the
    /// line of the error byte is counted afresh.
    fn malformed(&self, pos: RecordPos, e: &SyntaxError) -> BodyError {
        let at_line = 1 + count_newlines(&self.text.as_bytes()[..e.at.min(self.text.len())]);
        BodyError::Malformed {
            pos,
            at_byte: e.at,
            at_line,
            message: e.message.to_string(),
        }
    }

    /// A syntax error between records, at the scanner's position.
    fn between(&self, message: &str) -> BodyError {
        let pos = self.pos_here(self.record + 1);
        BodyError::Malformed {
            pos,
            at_byte: pos.byte,
            at_line: pos.line,
            message: message.into(),
        }
    }

    /// Parses the record at the scanner's position (whitespace already skipped).
    fn record(&mut self) -> Result<Event<'a>, BodyError> {
        self.record += 1;
        let start = self.s.pos;
        let pos = self.pos_here(self.record);
        match self.s.peek() {
            Some(b'{') => {}
            Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                return Err(BodyError::NotAnObject { pos });
            }
            _ => {
                let e = SyntaxError {
                    at: start,
                    message: "expected '{' (a JSON object)",
                };
                return Err(self.malformed(pos, &e));
            }
        }
        self.s.saw_ws = false;
        let members = match self.members() {
            Ok(m) => m,
            Err(e) => return Err(self.malformed(pos, &e)),
        };
        let whole = Raw {
            text: &self.text[start..self.s.pos],
            compact: !self.s.saw_ws,
            escaped: true,
        };
        match members.payload {
            Some(payload) => self.envelope(pos, members, payload),
            None if self.rules.wrap => self.wrapped(pos, whole),
            None => Err(BodyError::MissingPayload { pos }),
        }
    }

    /// Scans one object, collecting the envelope members.
    fn members(&mut self) -> Result<Members<'a>, SyntaxError> {
        let s = &mut self.s;
        let mut m = Members::default();
        s.pos += 1;
        s.skip_ws();
        if s.peek() == Some(b'}') {
            s.pos += 1;
            return Ok(m);
        }
        loop {
            let key_start = s.pos;
            let escaped = s.string()?;
            let key = &self.text[key_start..s.pos];
            s.skip_ws();
            s.expect(b':', "expected ':' after an object key")?;
            s.skip_ws();
            let value_start = s.pos;
            let outer_ws = s.saw_ws;
            s.saw_ws = false;
            s.saw_escape = false;
            s.value(1)?;
            let raw = Raw {
                text: &self.text[value_start..s.pos],
                compact: !s.saw_ws,
                escaped: s.saw_escape,
            };
            s.saw_ws |= outer_ws;
            let name: Cow<'_, str> = if escaped {
                json::decode_str(key).unwrap_or(Cow::Borrowed(""))
            } else {
                Cow::Borrowed(&key[1..key.len() - 1])
            };
            let (slot, member) = match &*name {
                "payload" => (&mut m.payload, "payload"),
                "event_id" => (&mut m.event_id, "event_id"),
                "event_type" => (&mut m.event_type, "event_type"),
                "timestamp" => (&mut m.timestamp, "timestamp"),
                "key" => (&mut m.key, "key"),
                "metadata" => (&mut m.metadata, "metadata"),
                _ => {
                    m.unknown.get_or_insert(key);
                    (&mut None, "")
                }
            };
            if !member.is_empty() {
                if slot.is_some() && m.repeated.is_none() {
                    m.repeated = Some(member);
                }
                *slot = Some(raw);
            }
            s.skip_ws();
            match s.peek() {
                Some(b',') => {
                    s.pos += 1;
                    s.skip_ws();
                }
                Some(b'}') => {
                    s.pos += 1;
                    return Ok(m);
                }
                _ => {
                    return Err(SyntaxError {
                        at: s.pos,
                        message: "expected ',' or '}' in object",
                    });
                }
            }
        }
    }

    /// An object with a `payload` member.
    fn envelope(
        &mut self,
        pos: RecordPos,
        m: Members<'a>,
        payload: Raw<'a>,
    ) -> Result<Event<'a>, BodyError> {
        if let Some(name) = m.unknown {
            let name = json::decode_str(name)
                .map(Cow::into_owned)
                .unwrap_or_default();
            return Err(BodyError::UnknownMember { pos, name });
        }
        if let Some(member) = m.repeated {
            return Err(bad_member(
                pos,
                member,
                format!("member {member:?} appears twice"),
            ));
        }
        let (id, id_hash) = match m.event_id {
            Some(raw) => {
                let id = self.nonempty_string(pos, "event_id", raw)?;
                (
                    EventId::Client(raw.text),
                    Some(xxhash_rust::xxh3::xxh3_128(id.as_bytes())),
                )
            }
            None => (EventId::Generated(self.generate_id()), None),
        };
        let (event_type, event_type_raw) = match m.event_type {
            Some(raw) => (
                self.nonempty_string(pos, "event_type", raw)?,
                Some(raw.text),
            ),
            None => (self.default_event_type(pos)?, None),
        };
        let (timestamp_ms, timestamp_raw) = match m.timestamp {
            None => (self.now_ms, None),
            Some(raw) => match raw.kind() {
                Kind::String | Kind::Number => self.bounded_time(pos, raw)?,
                kind => {
                    let message = format!(
                        "timestamp must be a string or an integer (epoch ms), not {}",
                        kind.name()
                    );
                    return Err(BodyError::BadTimestamp { pos, message });
                }
            },
        };
        if let Some(metadata) = m.metadata
            && metadata.kind() != Kind::Object
        {
            let message = format!("metadata must be an object, not {}", metadata.kind().name());
            return Err(bad_member(pos, "metadata", message));
        }
        let mut event = Event {
            key: None,
            timestamp_ms,
            event_type,
            id_hash,
            pos,
            id,
            event_type_raw,
            timestamp_raw,
            key_raw: None,
            payload,
            metadata: m.metadata,
        };
        event.key = match m.key {
            Some(raw) => {
                event.key_raw = Some(raw.text);
                match raw.kind() {
                    Kind::String => Some(raw.decode(pos)?),
                    Kind::Number => Some(Cow::Borrowed(raw.text)),
                    kind => {
                        let message =
                            format!("key must be a string or a number, not {}", kind.name());
                        return Err(BodyError::BadKey { pos, message });
                    }
                }
            }
            None => self.fallback_key(&event)?,
        };
        self.check_key_len(&event)?;
        Ok(event)
    }

    /// A bare object on a topic with `wrap = true`: the whole object is the payload.
    fn wrapped(&mut self, pos: RecordPos, whole: Raw<'a>) -> Result<Event<'a>, BodyError> {
        let (timestamp_ms, timestamp_raw) = match self.rules.timestamp_field {
            None => (self.now_ms, None),
            Some(ptr) => {
                let found = json::pointer_get(whole.text, ptr).map_err(|e| {
                    let e = SyntaxError {
                        at: e.at + pos.byte,
                        message: e.message,
                    };
                    self.malformed(pos, &e)
                })?;
                match found.map(|text| (text, Raw::unknown(text).kind())) {
                    None | Some((_, Kind::Null)) => (self.now_ms, None),
                    Some((text, Kind::String | Kind::Number)) => {
                        self.bounded_time(pos, Raw::unknown(text))?
                    }
                    Some((_, kind)) => {
                        let message = format!(
                            "timestamp_field {ptr} must be a string or an integer (epoch ms), not {}",
                            kind.name()
                        );
                        return Err(BodyError::BadTimestamp { pos, message });
                    }
                }
            }
        };
        let mut event = Event {
            key: None,
            timestamp_ms,
            event_type: self.default_event_type(pos)?,
            id_hash: None,
            pos,
            id: EventId::Generated(self.generate_id()),
            event_type_raw: None,
            timestamp_raw,
            key_raw: None,
            payload: whole,
            metadata: None,
        };
        event.key = self.fallback_key(&event)?;
        self.check_key_len(&event)?;
        Ok(event)
    }

    fn generate_id(&mut self) -> uuid::Uuid {
        let now_ms = self.now_ms;
        self.ids.get_or_insert_with(IdGen::new).next(now_ms)
    }

    fn default_event_type(&self, pos: RecordPos) -> Result<Cow<'a, str>, BodyError> {
        match self.rules.default_event_type {
            Some(t) => Ok(Cow::Owned(t.to_owned())),
            None => Err(BodyError::MissingEventType { pos }),
        }
    }

    fn nonempty_string(
        &self,
        pos: RecordPos,
        member: &'static str,
        raw: Raw<'a>,
    ) -> Result<Cow<'a, str>, BodyError> {
        if raw.kind() != Kind::String {
            let message = format!("{member} must be a string, not {}", raw.kind().name());
            return Err(bad_member(pos, member, message));
        }
        let text = raw.decode(pos)?;
        if text.is_empty() {
            return Err(bad_member(
                pos,
                member,
                format!("{member} must not be empty"),
            ));
        }
        Ok(text)
    }

    /// The event time of a raw string or number, checked against the topic's bounds.
    /// Returns the time and the raw text to store (`None` when clamped).
    fn bounded_time(
        &self,
        pos: RecordPos,
        raw: Raw<'a>,
    ) -> Result<(i64, Option<&'a str>), BodyError> {
        let parsed = if raw.kind() == Kind::String {
            parse_timestamp(&raw.decode(pos)?)
        } else if raw.text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            Err(format!(
                "epoch milliseconds must be an integer, not {}",
                raw.text
            ))
        } else {
            parse_timestamp(raw.text)
        };
        let ms = parsed.map_err(|message| BodyError::BadTimestamp { pos, message })?;
        let min_ms = self.now_ms.saturating_sub(self.rules.max_event_age_ms);
        let max_ms = self.now_ms.saturating_add(self.rules.max_event_lead_ms);
        if (min_ms..=max_ms).contains(&ms) {
            Ok((ms, Some(raw.text)))
        } else if self.rules.clamp_bad_time {
            Ok((ms.clamp(min_ms, max_ms), None))
        } else {
            Err(BodyError::TimeOutOfBounds {
                pos,
                timestamp_ms: ms,
                min_ms,
                max_ms,
            })
        }
    }

    /// The key when the envelope has none: `?key=`, else the topic's `key_field`.
    fn fallback_key(&self, event: &Event<'a>) -> Result<Option<Cow<'a, str>>, BodyError> {
        if let Some(key) = self.query_key {
            return Ok(Some(Cow::Borrowed(key)));
        }
        let Some(ptr) = self.rules.key_field else {
            return Ok(None);
        };
        let pos = event.pos;
        let tokens = ptr.tokens();
        let Some((first, rest)) = tokens.split_first() else {
            let message = format!("key_field {ptr:?} is the whole envelope, an object");
            return Err(BodyError::BadKey { pos, message });
        };
        // Members that are not raw JSON in the body give their text directly.
        let raw = match first.as_str() {
            "payload" => Some(event.payload.text),
            "metadata" => event.metadata.map(|m| m.text),
            "event_id" => match event.id {
                EventId::Client(raw) => Some(raw),
                EventId::Generated(_) if rest.is_empty() => {
                    return Ok(Some(Cow::Owned(event.event_id().into_owned())));
                }
                EventId::Generated(_) => None,
            },
            "event_type" => match event.event_type_raw {
                Some(raw) => Some(raw),
                None if rest.is_empty() => return Ok(Some(event.event_type.clone())),
                None => None,
            },
            "timestamp" => match event.timestamp_raw {
                Some(raw) => Some(raw),
                None if rest.is_empty() => {
                    return Ok(Some(Cow::Owned(rfc3339_ms_string(event.timestamp_ms))));
                }
                None => None,
            },
            _ => None,
        };
        let Some(raw) = raw else {
            return Ok(None);
        };
        // `raw` is a member this parse has just validated.
        let Some(found) = json::pointer_get_valid(raw, rest) else {
            return Ok(None);
        };
        let found = Raw::unknown(found);
        match found.kind() {
            Kind::String => Ok(Some(found.decode(pos)?)),
            Kind::Number => Ok(Some(Cow::Borrowed(found.text))),
            Kind::Null => Ok(None),
            kind => {
                let message = format!(
                    "key_field {ptr} is {}, not a string or a number",
                    kind.name()
                );
                Err(BodyError::BadKey { pos, message })
            }
        }
    }

    fn check_key_len(&self, event: &Event<'a>) -> Result<(), BodyError> {
        match &event.key {
            Some(key) if key.len() > self.rules.key_len_max => Err(BodyError::KeyTooLong {
                pos: event.pos,
                len: key.len(),
                max: self.rules.key_len_max,
            }),
            _ => Ok(()),
        }
    }
}

fn bad_member(pos: RecordPos, member: &'static str, message: String) -> BodyError {
    BodyError::BadMember {
        pos,
        member,
        message,
    }
}

/// Decodes a raw JSON string the scanner has validated (so this cannot fail, but a
/// failure is still reported, never a panic).
fn decode(pos: RecordPos, raw: &str) -> Result<Cow<'_, str>, BodyError> {
    json::decode_str(raw).map_err(|message| BodyError::Malformed {
        pos,
        at_byte: pos.byte,
        at_line: pos.line,
        message: message.to_string(),
    })
}

#[cfg(test)]
mod tests;
