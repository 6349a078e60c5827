//! Which events a pipeline takes (`filter` on event_type) and the key it groups them by.
//!
//! A key is the values at the `group_by` pointers, percent-encoded and joined by `,`:
//! strings by their decoded text, numbers, booleans, objects and arrays by their JSON
//! text. An event without a value (absent or null) at a pointer has no key: it is
//! skipped and counted. No IO.

use crate::json::{self, JsonPointer};

/// Buckets the cells of a pane are grouped in (see `store`): with 100,000 keys in a pane
/// about 400 cells (some KiB) per value, so a checkpoint is at most 256 inserts per pane
/// or session slot changed, and a single changed cell rewrites 1/256 of its pane. 1,024
/// (layout 3) left the checkpoint thread of a session rebuild twice as busy: sled's
/// cost is per value written (2M-event rebuild at the 8M file's density, checkpoint
/// thread CPU medians of 3: 2.47 s at 1,024, 1.13 s at 256, 1.14 s at 128).
pub const CELL_BUCKETS: u16 = 256;

/// The bucket of `key`'s stored state (xxh3: stable across builds and runs).
pub fn cell_bucket(key: &str) -> u16 {
    u16::try_from(xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(CELL_BUCKETS)).unwrap_or(0)
}

/// `filter = ["page.click", "order.*"]`: exact types and prefixes; empty takes all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    exact: Vec<String>,
    /// `order.*` is kept as `order.`.
    prefixes: Vec<String>,
}

impl Filter {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Filter {
        let mut f = Filter::default();
        for p in patterns {
            let p = p.as_ref();
            match p.strip_suffix('*') {
                Some(prefix) => f.prefixes.push(prefix.to_string()),
                None => f.exact.push(p.to_string()),
            }
        }
        f
    }

    /// Whether `event_type` (the `weir.type` header's bytes) passes.
    pub fn accepts(&self, event_type: &[u8]) -> bool {
        (self.exact.is_empty() && self.prefixes.is_empty())
            || self
                .exact
                .iter()
                .any(|e| json::short_eq(e.as_bytes(), event_type))
            || self
                .prefixes
                .iter()
                .any(|p| event_type.starts_with(p.as_bytes()))
    }
}

/// Why an event has no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no value at {0}")]
    Missing(String),
    #[error("the stored envelope is not JSON: {0}")]
    NotJson(String),
}

/// The `group_by` pointers.
#[derive(Debug, Clone)]
pub struct GroupBy {
    pointers: Vec<JsonPointer>,
}

impl GroupBy {
    pub fn new(pointers: Vec<JsonPointer>) -> GroupBy {
        GroupBy { pointers }
    }

    /// Writes the key of `envelope` into `out` (cleared first).
    pub fn key_into(&self, envelope: &[u8], out: &mut String) -> Result<(), KeyError> {
        out.clear();
        for (i, ptr) in self.pointers.iter().enumerate() {
            // Stored envelopes were validated at ingest and are read back under a CRC.
            let raw = json::pointer_get_valid_bytes(envelope, ptr.tokens())
                .filter(|v| *v != b"null")
                .ok_or_else(|| KeyError::Missing(ptr.as_str().to_string()))?;
            if i > 0 {
                out.push(',');
            }
            // Most keys are a string of unreserved characters: copied as they are, with
            // no UTF-8 check (they are ASCII).
            if let [b'"', inner @ .., b'"'] = raw
                && push_unreserved(inner, out)
            {
                continue;
            }
            let raw = std::str::from_utf8(raw).map_err(|e| KeyError::NotJson(e.to_string()))?;
            if raw.starts_with('"') {
                let text = json::decode_str(raw).map_err(|e| KeyError::NotJson(e.to_string()))?;
                percent_encode_into(&text, out);
            } else if raw.starts_with(['{', '[']) {
                let mut compact = Vec::with_capacity(raw.len());
                json::minify_into(raw, &mut compact);
                percent_encode_into(&String::from_utf8_lossy(&compact), out);
            } else {
                percent_encode_into(raw, out);
            }
        }
        Ok(())
    }
}

/// Whether RFC 3986 leaves `b` unencoded (an ASCII letter or digit, `-`, `.`, `_`, `~`).
#[inline]
fn unreserved(b: u8) -> bool {
    const UNRESERVED: [bool; 256] = {
        let mut table = [false; 256];
        let mut c: u8 = 0;
        while c < 128 {
            table[c as usize] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
            c += 1;
        }
        table
    };
    UNRESERVED[usize::from(b)]
}

/// Copies `bytes` into `out` when every one is unreserved (keys are mostly plain words),
/// and says whether it did.
fn push_unreserved(bytes: &[u8], out: &mut String) -> bool {
    if !bytes.iter().all(|&b| unreserved(b)) {
        return false;
    }
    out.extend(bytes.iter().map(|&b| char::from(b)));
    true
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, so a key is a
/// safe URL path segment and `,` only ever separates parts.
pub fn percent_encode_into(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if push_unreserved(text.as_bytes(), out) {
        return;
    }
    for &b in text.as_bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group_by(ptrs: &[&str]) -> GroupBy {
        GroupBy::new(
            ptrs.iter()
                .map(|p| JsonPointer::parse(p).unwrap())
                .collect(),
        )
    }

    #[test]
    fn filters_match_exact_types_and_prefixes() {
        let f = Filter::new(&["page.click", "order.*"]);
        assert!(f.accepts(b"page.click"));
        assert!(f.accepts(b"order.paid"));
        assert!(!f.accepts(b"page.view"));
        assert!(!f.accepts(b"orders"));
        assert!(Filter::new::<&str>(&[]).accepts(b"anything"));
    }

    #[test]
    fn keys_are_percent_encoded_parts_joined_by_commas() {
        let env = br#"{"payload":{"page":"a b,c","n":12.5,"ok":true,"tags":[1, 2],"nil":null}}"#;
        let mut k = String::new();
        group_by(&["/payload/page"]).key_into(env, &mut k).unwrap();
        assert_eq!(k, "a%20b%2Cc");
        group_by(&[
            "/payload/page",
            "/payload/n",
            "/payload/ok",
            "/payload/tags",
        ])
        .key_into(env, &mut k)
        .unwrap();
        assert_eq!(k, "a%20b%2Cc,12.5,true,%5B1%2C2%5D");
        assert_eq!(
            group_by(&["/payload/nil"]).key_into(env, &mut k),
            Err(KeyError::Missing("/payload/nil".into()))
        );
        assert!(
            group_by(&["/payload/absent"])
                .key_into(env, &mut k)
                .is_err()
        );
        group_by(&["/payload/page"])
            .key_into(br#"{"payload":{"page":"caf\u00e9"}}"#, &mut k)
            .unwrap();
        assert_eq!(k, "caf%C3%A9");
    }

    #[test]
    fn keys_check_utf8_only_where_they_are_taken_from() {
        let by_page = group_by(&["/payload/page"]);
        let mut k = String::new();
        // Plain words are copied, multi-byte text percent-encoded byte by byte.
        by_page
            .key_into(br#"{"payload":{"page":"page-604"}}"#, &mut k)
            .unwrap();
        assert_eq!(k, "page-604");
        by_page
            .key_into("{\"payload\":{\"page\":\"café\"}}".as_bytes(), &mut k)
            .unwrap();
        assert_eq!(k, "caf%C3%A9");
        // Bytes that are not UTF-8 (a record no ingest wrote): an error in the key...
        let mut bad = br#"{"payload":{"page":"caf_"}}"#.to_vec();
        let at = bad.iter().position(|&b| b == b'_').unwrap();
        bad[at] = 0xff;
        assert!(matches!(
            by_page.key_into(&bad, &mut k),
            Err(KeyError::NotJson(_))
        ));
        // ...and nothing elsewhere in the envelope.
        let mut elsewhere = br#"{"x":"_","payload":{"page":"p1"}}"#.to_vec();
        let at = elsewhere.iter().position(|&b| b == b'_').unwrap();
        elsewhere[at] = 0xff;
        by_page.key_into(&elsewhere, &mut k).unwrap();
        assert_eq!(k, "p1");
    }
}
