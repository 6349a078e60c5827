//! Which events a pipeline takes (`filter` on event_type) and the key it groups them by.
//!
//! A key is the values at the `group_by` pointers, percent-encoded and joined by `,`:
//! strings by their decoded text, numbers, booleans, objects and arrays by their JSON
//! text. An event without a value (absent or null) at a pointer has no key: it is
//! skipped and counted. No IO.

use crate::json::{self, JsonPointer};

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

    pub fn accepts(&self, event_type: &str) -> bool {
        (self.exact.is_empty() && self.prefixes.is_empty())
            || self.exact.iter().any(|e| e == event_type)
            || self
                .prefixes
                .iter()
                .any(|p| event_type.starts_with(p.as_str()))
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
    pub fn key_into(&self, envelope: &str, out: &mut String) -> Result<(), KeyError> {
        out.clear();
        for (i, ptr) in self.pointers.iter().enumerate() {
            // Stored envelopes were validated at ingest and are read back under a CRC.
            let raw = json::pointer_get_valid(envelope, ptr.tokens())
                .filter(|v| *v != "null")
                .ok_or_else(|| KeyError::Missing(ptr.as_str().to_string()))?;
            if i > 0 {
                out.push(',');
            }
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

/// RFC 3986 percent-encoding of everything but the unreserved characters, so a key is a
/// safe URL path segment and `,` only ever separates parts.
pub fn percent_encode_into(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    const UNRESERVED: [bool; 256] = {
        let mut table = [false; 256];
        let mut c: u8 = 0;
        while c < 128 {
            table[c as usize] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
            c += 1;
        }
        table
    };
    let unreserved = |b: u8| UNRESERVED[usize::from(b)];
    // Keys are mostly plain words: copied whole.
    if text.bytes().all(unreserved) {
        out.push_str(text);
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
        assert!(f.accepts("page.click"));
        assert!(f.accepts("order.paid"));
        assert!(!f.accepts("page.view"));
        assert!(!f.accepts("orders"));
        assert!(Filter::new::<&str>(&[]).accepts("anything"));
    }

    #[test]
    fn keys_are_percent_encoded_parts_joined_by_commas() {
        let env = r#"{"payload":{"page":"a b,c","n":12.5,"ok":true,"tags":[1, 2],"nil":null}}"#;
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
            .key_into(r#"{"payload":{"page":"caf\u00e9"}}"#, &mut k)
            .unwrap();
        assert_eq!(k, "caf%C3%A9");
    }
}
