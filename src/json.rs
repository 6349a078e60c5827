//! JSON pointers (RFC 6901) and a lazy scanner that finds the value at a pointer in
//! raw JSON text without building a DOM.

use std::borrow::Cow;

/// A parsed JSON pointer: its reference tokens with `~1` and `~0` unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

impl JsonPointer {
    /// Parses `""` (the whole document) or `/a/b~1c`.
    pub fn parse(text: &str) -> Result<JsonPointer, String> {
        if text.is_empty() {
            return Ok(JsonPointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("JSON pointer {text:?} must start with '/'"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "JSON pointer {text:?} has '~' not followed by '0' or '1'"
                            ));
                        }
                    }
                } else {
                    token.push(c);
                }
            }
            tokens.push(token);
        }
        Ok(JsonPointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The unescaped reference tokens, outermost first.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
}

impl std::fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// How deep arrays and objects may nest in one record (the record's own braces count as
/// one level). serde_json's recursion limit is the same; beyond it a body is malformed,
/// and the scanner below never recurses, so depth costs no stack either way.
pub const DEPTH_MAX: usize = 128;

/// Where and why raw text is not JSON; `at` is a byte offset into the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub at: usize,
    pub message: &'static str,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.message, self.at)
    }
}

impl std::error::Error for SyntaxError {}

/// Bytes that end the fast run inside a string: the closing quote, an escape, or a
/// control character (which JSON forbids unescaped).
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A validating, non-recursive scanner over JSON text. It finds where values start and
/// end and checks the grammar (RFC 8259, plus: no lone UTF-16 surrogates in `\u`
/// escapes, so whatever it accepts serde_json can read back into a `Value`). It never
/// allocates. The text is already known to be UTF-8.
#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    bytes: &'a [u8],
    /// The next byte to read.
    pub pos: usize,
    /// Set whenever whitespace is skipped; callers reset it to learn whether a value
    /// was written compactly (then it can be copied without minifying).
    pub saw_ws: bool,
    /// Newlines skipped so far. Outside strings a newline can only be whitespace, and
    /// inside them it is an error, so when scanning from the start this is the number
    /// of newlines before `pos`: line numbers cost no second pass.
    pub newlines: usize,
    /// Set whenever a string with an escape is scanned; callers reset it to learn
    /// whether a value's strings can be used without decoding.
    pub saw_escape: bool,
}

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str, pos: usize) -> Scanner<'a> {
        Scanner {
            bytes: text.as_bytes(),
            pos,
            saw_ws: false,
            newlines: 0,
            saw_escape: false,
        }
    }

    pub fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn err<T>(&self, message: &'static str) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            at: self.pos.min(self.bytes.len()),
            message,
        })
    }

    /// Skips JSON whitespace.
    #[inline]
    pub fn skip_ws(&mut self) {
        let start = self.pos;
        while let Some(&b) = self.bytes.get(self.pos) {
            match b {
                b'\n' => self.newlines += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => break,
            }
            self.pos += 1;
        }
        if self.pos != start {
            self.saw_ws = true;
        }
    }

    /// Consumes `b` or fails with `message`.
    #[inline]
    pub fn expect(&mut self, b: u8, message: &'static str) -> Result<(), SyntaxError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(message)
        }
    }

    /// Scans a string starting at its opening quote; returns whether it has escapes.
    #[inline]
    pub fn string(&mut self) -> Result<bool, SyntaxError> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string");
        }
        self.pos += 1;
        let mut escaped = false;
        loop {
            self.skip_string_run();
            while let Some(&b) = self.bytes.get(self.pos) {
                if STRING_STOP[b as usize] {
                    break;
                }
                self.pos += 1;
            }
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.saw_escape = true;
                    self.escape()?;
                }
                Some(_) => return self.err("control character in string"),
                None => return self.err("unterminated string"),
            }
        }
    }

    /// Skips ordinary string bytes sixteen at a time (SSE2) and then eight at a time
    /// (SWAR): stops at or before the first quote, backslash or control character; the
    /// byte loop after it finishes the job.
    #[inline]
    fn skip_string_run(&mut self) {
        #[cfg(target_arch = "x86_64")]
        while let Some(chunk) = self.bytes.get(self.pos..self.pos + 16) {
            let mut block = [0; 16];
            block.copy_from_slice(chunk);
            let stops = sse2::string_stops(&block);
            if stops != 0 {
                self.pos += stops.trailing_zeros() as usize;
                return;
            }
            self.pos += 16;
        }
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        while let Some(chunk) = self.bytes.get(self.pos..self.pos + 8) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            let w = u64::from_le_bytes(word);
            let quote = w ^ (ONES * u64::from(b'"'));
            let backslash = w ^ (ONES * u64::from(b'\\'));
            // A byte is flagged when it is zero (after the xor) or below 0x20; borrows
            // only flag bytes above a real hit, so the lowest flag is exact.
            let hits = (quote.wrapping_sub(ONES) & !quote)
                | (backslash.wrapping_sub(ONES) & !backslash)
                | (w.wrapping_sub(ONES * 0x20) & !w);
            let hits = hits & HIGH;
            if hits != 0 {
                self.pos += (hits.trailing_zeros() / 8) as usize;
                return;
            }
            self.pos += 8;
        }
    }

    /// Scans one escape sequence starting at its backslash.
    fn escape(&mut self) -> Result<(), SyntaxError> {
        self.pos += 1;
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                self.pos += 1;
                let unit = self.hex4()?;
                if (0xDC00..0xE000).contains(&unit) {
                    return self.err("lone low surrogate in \\u escape");
                }
                if (0xD800..0xDC00).contains(&unit) {
                    if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                        return self.err("lone high surrogate in \\u escape");
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return self.err("lone high surrogate in \\u escape");
                    }
                }
                Ok(())
            }
            _ => self.err("invalid escape in string"),
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return self.err("invalid \\u escape"),
            };
            unit = unit * 16 + u32::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), SyntaxError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.err("invalid number: no digit after '.'");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number: no digit in exponent");
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), SyntaxError> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.err("expected a value")
        }
    }

    /// Scans one value like [`value`](Self::value), with a string (the common case at a
    /// pointer's step) scanned directly.
    #[inline]
    pub fn skip_value(&mut self, depth: usize) -> Result<(), SyntaxError> {
        if self.peek() == Some(b'"') {
            self.string().map(drop)
        } else {
            self.value(depth)
        }
    }

    /// Scans `"key"` `:` and the whitespace around them, leaving `pos` at the value.
    fn member_key(&mut self) -> Result<(), SyntaxError> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string key");
        }
        self.string()?;
        self.skip_ws();
        self.expect(b':', "expected ':' after an object key")?;
        self.skip_ws();
        Ok(())
    }

    /// Scans one value starting at `pos` (no leading whitespace). `depth` is how many
    /// containers already enclose it; containers beyond [`DEPTH_MAX`] are an error.
    /// Iterative: the kinds of the open containers live in the bits of one `u128`.
    pub fn value(&mut self, depth: usize) -> Result<(), SyntaxError> {
        // Bit i set: the container i levels up is an object (bit 0 is the innermost).
        let mut kinds: u128 = 0;
        let mut open: usize = 0;
        loop {
            match self.peek() {
                Some(b @ (b'{' | b'[')) => {
                    if depth + open >= DEPTH_MAX {
                        return self.err("nesting deeper than 128 levels");
                    }
                    self.pos += 1;
                    self.skip_ws();
                    let is_object = b == b'{';
                    let close = if is_object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                    } else {
                        kinds = (kinds << 1) | u128::from(is_object);
                        open += 1;
                        if is_object {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(_) => return self.err("expected a value"),
                None => return self.err("unexpected end of input, expected a value"),
            }
            // A value is complete: close finished containers, or step past a comma.
            loop {
                if open == 0 {
                    return Ok(());
                }
                self.skip_ws();
                let is_object = kinds & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if is_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if is_object => {}
                    Some(b']') if !is_object => {}
                    _ if is_object => return self.err("expected ',' or '}' in object"),
                    _ => return self.err("expected ',' or ']' in array"),
                }
                self.pos += 1;
                kinds >>= 1;
                open -= 1;
            }
        }
    }
}

/// One compare of sixteen bytes where the eight-byte SWAR needs two words and a branch
/// each: most strings of an event end within one block.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8,
    };

    /// Bit i is set when byte i of `block` is a quote, a backslash or below 0x20.
    #[inline]
    pub fn string_stops(block: &[u8; 16]) -> u32 {
        // SAFETY: SSE2 is part of the x86_64 baseline; every x86_64 CPU has it.
        unsafe { string_stops_sse2(block) }
    }

    #[target_feature(enable = "sse2")]
    fn string_stops_sse2(block: &[u8; 16]) -> u32 {
        let (lo, hi) = block.split_at(8);
        let word = |b: &[u8]| i64::from_le_bytes(b.try_into().unwrap_or_default());
        let v = _mm_set_epi64x(word(hi), word(lo));
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"'.cast_signed()));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\'.cast_signed()));
        // Unsigned b < 0x20 exactly when min(b, 0x1f) == b.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)).cast_unsigned()
    }
}

/// Checks that `text` is exactly one JSON value (surrounding whitespace allowed).
pub fn validate(text: &str) -> Result<(), SyntaxError> {
    let mut s = Scanner::new(text, 0);
    s.skip_ws();
    s.value(0)?;
    s.skip_ws();
    if !s.at_end() {
        return s.err("unexpected data after the value");
    }
    Ok(())
}

/// The raw text of the value at `ptr` inside the JSON value `json`, or `None` when the
/// pointer leads nowhere. No DOM is built: values on the way are skipped by scanning.
/// Array tokens follow RFC 6901 (`0` or digits without a leading zero; `-` is never an
/// element). With duplicate object keys the first one wins. Errors only if the text
/// met on the way is not JSON.
pub fn pointer_get<'a>(json: &'a str, ptr: &JsonPointer) -> Result<Option<&'a str>, SyntaxError> {
    pointer_get_tokens(json, ptr.tokens())
}

/// [`pointer_get`] with the reference tokens given directly.
pub fn pointer_get_tokens<'a>(
    json: &'a str,
    tokens: &[String],
) -> Result<Option<&'a str>, SyntaxError> {
    let mut s = Scanner::new(json, 0);
    s.skip_ws();
    'tokens: for token in tokens {
        match s.peek() {
            Some(b'{') => {
                s.pos += 1;
                s.skip_ws();
                if s.peek() == Some(b'}') {
                    return Ok(None);
                }
                loop {
                    let key_start = s.pos;
                    let escaped = s.string()?;
                    let key = &json[key_start..s.pos];
                    s.skip_ws();
                    s.expect(b':', "expected ':' after an object key")?;
                    s.skip_ws();
                    let matches = if escaped {
                        decode_str(key).is_ok_and(|k| k == token.as_str())
                    } else {
                        // The quotes are one byte each: compare the bytes between.
                        key.len() == token.len() + 2
                            && key.as_bytes()[1..key.len() - 1] == *token.as_bytes()
                    };
                    if matches {
                        continue 'tokens;
                    }
                    s.skip_value(0)?;
                    s.skip_ws();
                    match s.peek() {
                        Some(b',') => {
                            s.pos += 1;
                            s.skip_ws();
                        }
                        Some(b'}') => return Ok(None),
                        _ => return s.err("expected ',' or '}' in object"),
                    }
                }
            }
            Some(b'[') => {
                let Some(index) = array_index(token) else {
                    return Ok(None);
                };
                s.pos += 1;
                s.skip_ws();
                if s.peek() == Some(b']') {
                    return Ok(None);
                }
                let mut i = 0;
                loop {
                    if i == index {
                        continue 'tokens;
                    }
                    s.skip_value(0)?;
                    s.skip_ws();
                    match s.peek() {
                        Some(b',') => {
                            s.pos += 1;
                            s.skip_ws();
                            i += 1;
                        }
                        Some(b']') => return Ok(None),
                        _ => return s.err("expected ',' or ']' in array"),
                    }
                }
            }
            _ => return Ok(None),
        }
    }
    let start = s.pos;
    s.skip_value(0)?;
    Ok(Some(&json[start..s.pos]))
}

/// [`pointer_get_tokens`] for text already known to be one valid JSON value: the
/// envelopes weir validated at ingest and reads back from its own log under a CRC.
/// Structure only, no grammar checks: strings are skipped by finding their closing
/// quote sixteen bytes a step, containers by counting brackets outside strings. On valid
/// JSON the answer is exactly [`pointer_get_tokens`]'s; on anything else it never
/// panics, but what it finds (or `None`) is unspecified.
pub fn pointer_get_valid<'a>(json: &'a str, tokens: &[String]) -> Option<&'a str> {
    json.get(pointer_range_valid(json.as_bytes(), tokens)?)
}

/// [`pointer_get_valid`] over bytes, for records read back from the log: the envelope as a
/// whole is not checked for UTF-8 (it was at ingest, and it is read under a CRC); the
/// caller checks the few bytes found where it needs text.
pub fn pointer_get_valid_bytes<'a>(json: &'a [u8], tokens: &[String]) -> Option<&'a [u8]> {
    json.get(pointer_range_valid(json, tokens)?)
}

/// Where [`pointer_get_valid`]'s value is in `b`.
fn pointer_range_valid(b: &[u8], tokens: &[String]) -> Option<std::ops::Range<usize>> {
    let mut pos = skip_ws_at(b, 0);
    'tokens: for token in tokens {
        match *b.get(pos)? {
            b'{' => loop {
                pos = skip_ws_at(b, pos + 1);
                if b.get(pos) != Some(&b'"') {
                    return None;
                }
                let (end, escaped) = string_end(b, pos)?;
                let matches = if escaped {
                    std::str::from_utf8(b.get(pos..end)?)
                        .ok()
                        .and_then(|raw| decode_str(raw).ok())
                        .is_some_and(|k| k == token.as_str())
                } else {
                    short_eq(b.get(pos + 1..end - 1)?, token.as_bytes())
                };
                pos = skip_ws_at(b, end);
                if b.get(pos) != Some(&b':') {
                    return None;
                }
                pos = skip_ws_at(b, pos + 1);
                if matches {
                    continue 'tokens;
                }
                pos = skip_ws_at(b, value_end(b, pos)?);
                if b.get(pos) != Some(&b',') {
                    return None;
                }
            },
            b'[' => {
                let index = array_index(token)?;
                pos = skip_ws_at(b, pos + 1);
                if b.get(pos) == Some(&b']') {
                    return None;
                }
                for _ in 0..index {
                    pos = skip_ws_at(b, value_end(b, pos)?);
                    if b.get(pos) != Some(&b',') {
                        return None;
                    }
                    pos = skip_ws_at(b, pos + 1);
                }
            }
            _ => return None,
        }
    }
    let end = value_end(b, pos)?;
    Some(pos..end)
}

/// `a == b` for the short names of object keys and record headers, without the call to
/// `memcmp` a slice compare makes: two overlapping word loads up to sixteen bytes.
#[inline]
pub fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let half = |s: &[u8], at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_le_bytes(w)
    };
    match n {
        0 => true,
        1..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// The first position at or after `pos` that is not JSON whitespace.
#[inline]
fn skip_ws_at(b: &[u8], mut pos: usize) -> usize {
    while b.get(pos).is_some_and(|&c| is_ws(c)) {
        pos += 1;
    }
    pos
}

/// The end (one past the closing quote) of the valid string whose opening quote is at
/// `pos`, and whether it has escapes. `None` when the text ends first.
#[inline]
fn string_end(b: &[u8], pos: usize) -> Option<(usize, bool)> {
    let mut i = pos + 1;
    let mut escaped = false;
    loop {
        #[cfg(target_arch = "x86_64")]
        while let Some(chunk) = b.get(i..i + 16) {
            let mut block = [0; 16];
            block.copy_from_slice(chunk);
            let stops = sse2::string_stops(&block);
            if stops != 0 {
                i += stops.trailing_zeros() as usize;
                break;
            }
            i += 16;
        }
        // Fewer than sixteen bytes left (strings near the end of an envelope): the last
        // sixteen of the text, with the bits before `i` shifted out.
        #[cfg(target_arch = "x86_64")]
        if let Some(start) = b.len().checked_sub(16)
            && (start + 1..b.len()).contains(&i)
            && let Some(chunk) = b.get(start..)
        {
            let mut block = [0; 16];
            block.copy_from_slice(chunk);
            let stops = sse2::string_stops(&block) >> (i - start);
            if stops == 0 {
                return None;
            }
            i += stops.trailing_zeros() as usize;
        }
        match *b.get(i)? {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
}

/// The end of the valid value starting at `pos` (no leading whitespace).
fn value_end(b: &[u8], pos: usize) -> Option<usize> {
    match *b.get(pos)? {
        b'"' => string_end(b, pos).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = pos;
            loop {
                match *b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = pos + 1;
            while b
                .get(i)
                .is_some_and(|&c| !matches!(c, b',' | b'}' | b']') && !is_ws(c))
            {
                i += 1;
            }
            Some(i)
        }
    }
}

/// An RFC 6901 array index: `0`, or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let b = token.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b[0] == b'0' && b.len() > 1) {
        return None;
    }
    token.parse().ok()
}

/// Copies the JSON value `raw` into `out` without whitespace outside strings; string
/// contents, escapes included, are kept byte for byte.
pub fn minify_into(raw: &str, out: &mut Vec<u8>) {
    let b = raw.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            c if is_ws(c) => {
                out.extend_from_slice(&b[run..i]);
                while i < b.len() && is_ws(b[i]) {
                    i += 1;
                }
                run = i;
            }
            _ => i += 1,
        }
    }
    out.extend_from_slice(&b[run.min(b.len())..]);
}

/// Decodes a raw JSON string value (quotes included); borrowed when it has no escapes.
pub fn decode_str(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    let inner = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|_| raw.len() >= 2)
        .ok_or("not a JSON string")?;
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let b = rest.as_bytes();
        let (c, used) = match b.get(at + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => {
                let hi = hex4(rest.get(at + 2..at + 6)).ok_or("invalid \\u escape")?;
                if (0xD800..0xDC00).contains(&hi) {
                    if rest.get(at + 6..at + 8) != Some("\\u") {
                        return Err("lone high surrogate in \\u escape");
                    }
                    let lo = hex4(rest.get(at + 8..at + 12)).ok_or("invalid \\u escape")?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err("lone high surrogate in \\u escape");
                    }
                    let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    (char::from_u32(c).ok_or("invalid \\u escape")?, 12)
                } else {
                    (
                        char::from_u32(hi).ok_or("lone low surrogate in \\u escape")?,
                        6,
                    )
                }
            }
            _ => return Err("invalid escape in string"),
        };
        out.push(c);
        rest = &rest[at + used..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

fn hex4(text: Option<&str>) -> Option<u32> {
    let text = text?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// Writes `s` as a JSON string (quotes, backslashes and control characters escaped).
pub fn write_str_into(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let b = s.as_bytes();
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        if !STRING_STOP[c as usize] {
            continue;
        }
        out.extend_from_slice(&b[run..i]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ]),
        }
        run = i + 1;
    }
    out.extend_from_slice(&b[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes() {
        let p = JsonPointer::parse("/payload/a~1b~0c").unwrap();
        assert_eq!(p.tokens(), ["payload", "a/b~c"]);
        assert_eq!(p.as_str(), "/payload/a~1b~0c");
        assert!(JsonPointer::parse("").unwrap().tokens().is_empty());
        assert!(JsonPointer::parse("payload").is_err());
        assert!(JsonPointer::parse("/a~2").is_err());
    }

    use proptest::prelude::*;
    use serde_json::Value;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Binary fractions: serde_json (without float_roundtrip) reads them back exactly.
            (-1_000_000_i32..1_000_000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            "[a-c~/]{0,3}".prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-c~/0-2]{0,2}|\\PC{0,3}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every pointer that leads somewhere in `v`, plus a few that do not.
    fn pointers(v: &Value, prefix: String, out: &mut Vec<String>) {
        out.push(prefix.clone());
        out.push(format!("{prefix}/nope"));
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let token = k.replace('~', "~0").replace('/', "~1");
                    pointers(child, format!("{prefix}/{token}"), out);
                }
            }
            Value::Array(a) => {
                out.push(format!("{prefix}/{}", a.len()));
                out.push(format!("{prefix}/-"));
                out.push(format!("{prefix}/00"));
                for (i, child) in a.iter().enumerate() {
                    pointers(child, format!("{prefix}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    /// Writes `v` with escapes and whitespace serde_json would not use, so the scanner
    /// meets both; the result parses to `v`.
    fn write_odd(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push('"');
                for c in s.chars() {
                    if c.is_ascii_alphanumeric() && c != 'b' {
                        out.push(c);
                    } else {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{u:04X}"));
                        }
                    }
                }
                out.push('"');
            }
            Value::Array(a) => {
                out.push_str("[ ");
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" ,\n");
                    }
                    write_odd(x, out);
                }
                out.push_str("\t]");
            }
            Value::Object(m) => {
                out.push_str("{\r\n");
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_odd(&Value::from(k.clone()), out);
                    out.push_str(" : ");
                    write_odd(x, out);
                }
                out.push_str(" }");
            }
            other => out.push_str(&other.to_string()),
        }
    }

    proptest! {
        #[test]
        fn pointer_get_matches_serde_json(v in arb_json(), odd in any::<bool>()) {
            let text = if odd {
                let mut t = String::from(" ");
                write_odd(&v, &mut t);
                t
            } else {
                serde_json::to_string_pretty(&v).unwrap()
            };
            prop_assert_eq!(&serde_json::from_str::<Value>(&text).unwrap(), &v);
            prop_assert!(validate(&text).is_ok());
            let mut ptrs = Vec::new();
            pointers(&v, String::new(), &mut ptrs);
            for p in ptrs {
                let ptr = JsonPointer::parse(&p).unwrap();
                let got = pointer_get(&text, &ptr).unwrap();
                prop_assert_eq!(pointer_get_valid(&text, ptr.tokens()), got, "pointer {:?} in {}", p, text);
                let got = got.map(|raw| serde_json::from_str::<Value>(raw).unwrap());
                prop_assert_eq!(got.as_ref(), v.pointer(&p), "pointer {:?} in {}", p, text);
            }
            // Minified text is the compact serialization, up to number and escape
            // spelling: it parses to the same value and has no whitespace outside strings.
            let mut min = Vec::new();
            minify_into(&text, &mut min);
            let min = String::from_utf8(min).unwrap();
            prop_assert_eq!(&serde_json::from_str::<Value>(&min).unwrap(), &v);
            if !odd {
                prop_assert_eq!(&min, &v.to_string());
            }
            // Decoding every string agrees with serde_json.
            if let Value::String(s) = &v {
                prop_assert_eq!(decode_str(text.trim()).unwrap(), s.as_str());
            }
        }

        /// The scanner accepts exactly what serde_json's grammar accepts on mangled text
        /// (serde_json does not check surrogates when skipping, so those may differ).
        #[test]
        fn validate_matches_serde_json(
            v in arb_json(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(
                &[" ", "", ",", ":", "[", "]", "{", "}", "\"", "\\", "0", "-", ".", "e", "+", "1", "n", "t", "\\u12", "\u{1}", "\\ud800"][..]
            )), 1..4),
        ) {
            let mut text = v.to_string();
            for (at, s) in edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                let end = (i + 1).min(text.len());
                let end = if text.is_char_boundary(end) { end } else { i };
                text.replace_range(i..end, s);
            }
            let ours = validate(&text);
            // Not valid JSON any more: the trusting walk may find anything, but no panic.
            for tokens in [&[][..], &["a".to_string()][..], &["0".to_string(), "1".to_string()][..]] {
                let _ = pointer_get_valid(&text, tokens);
                // Bytes that are not UTF-8 either (a record no ingest wrote).
                let mut bytes = text.clone().into_bytes();
                if let Some(b) = bytes.get_mut(text.len() / 2) {
                    *b = 0xff;
                }
                let _ = pointer_get_valid_bytes(&bytes, tokens);
            }
            let theirs = serde_json::from_str::<serde::de::IgnoredAny>(&text);
            match (&ours, &theirs) {
                (Ok(()), Ok(_)) | (Err(_), Err(_)) => {}
                (Err(e), Ok(_)) if e.message.contains("surrogate") => {}
                _ => prop_assert!(false, "{:?} ours {:?} serde {:?}", text, ours, theirs.map(|_| ())),
            }
        }
    }

    #[test]
    fn string_ends_are_found_at_every_position_of_the_blocks() {
        // Each stop byte at each position of the 16- and 8-byte blocks and the tail.
        for len in 0..40 {
            for (stop, valid) in [("\"", true), ("\\n", true), ("\u{1f}", false)] {
                let doc = format!(r#"{{"k":"{}{stop}","v":1}}"#, "a".repeat(len));
                let ours = validate(&doc).is_ok();
                let serde = serde_json::from_str::<Value>(&doc).is_ok();
                // A quote ends the string early: the rest is then not JSON.
                assert_eq!(ours, serde, "{doc:?}");
                if stop != "\"" {
                    assert_eq!(ours, valid, "{doc:?}");
                    let v = pointer_get(&doc, &JsonPointer::parse("/v").unwrap());
                    assert_eq!(v.map_err(drop), if valid { Ok(Some("1")) } else { Err(()) });
                }
                if valid && stop != "\"" {
                    // The trusting walk, with the string last too (its end in the tail).
                    let k = ["k".to_string()];
                    let want = format!(r#""{}{stop}""#, "a".repeat(len));
                    assert_eq!(pointer_get_valid(&doc, &k), Some(want.as_str()), "{doc:?}");
                    let last = format!(r#"{{"v":1,"k":{want}}}"#);
                    assert_eq!(
                        pointer_get_valid(&last, &k),
                        Some(want.as_str()),
                        "{last:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn short_eq_is_slice_equality() {
        for n in 0..40usize {
            let a: Vec<u8> = (b'a'..=b'z').cycle().take(n).collect();
            assert!(short_eq(&a, &a.clone()), "{n}");
            assert!(!short_eq(&a, &a[..n.saturating_sub(1)]) || n == 0, "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!short_eq(&a, &b), "length {n}, byte {at}");
            }
        }
    }

    #[test]
    fn pointer_get_valid_tells_long_names_apart_at_every_byte() {
        for len in 1..24 {
            let name = "abcdefghijklmnopqrstuvwxyz"[..len].to_string();
            for at in 0..len {
                // The same length, one byte different: at `at`.
                let mut other = name.clone().into_bytes();
                other[at] = b'Z';
                let other = String::from_utf8(other).unwrap();
                let doc = format!(r#"{{"{other}":1,"{name}":2,"{name}x":3}}"#);
                assert_eq!(
                    pointer_get_valid(&doc, std::slice::from_ref(&name)),
                    Some("2"),
                    "{doc}"
                );
                assert_eq!(
                    pointer_get_valid(&doc, std::slice::from_ref(&other)),
                    Some("1"),
                    "{doc}"
                );
                assert_eq!(
                    pointer_get_valid(&doc, &[format!("{name}y")]),
                    None,
                    "{doc}"
                );
            }
        }
    }

    #[test]
    fn pointer_get_cases() {
        let doc = r#" { "a" : { "b~/c" : [ 10 , { "d" : "x\"y" } , [] ] , "e" : null } , "a\u0062" : 1 } "#;
        let get = |p: &str| pointer_get(doc, &JsonPointer::parse(p).unwrap()).unwrap();
        assert_eq!(get("/a/b~0~1c/0"), Some("10"));
        assert_eq!(get("/a/b~0~1c/1/d"), Some(r#""x\"y""#));
        assert_eq!(get("/a/b~0~1c/2"), Some("[]"));
        assert_eq!(get("/a/b~0~1c/3"), None);
        assert_eq!(get("/a/b~0~1c/01"), None);
        assert_eq!(get("/a/b~0~1c/-"), None);
        assert_eq!(get("/a/e"), Some("null"));
        assert_eq!(get("/a/e/f"), None);
        assert_eq!(get("/ab"), Some("1"));
        assert_eq!(get("/zz"), None);
        assert!(get("").unwrap().starts_with('{'));
        for p in [
            "/a/b~0~1c/0",
            "/a/b~0~1c/1/d",
            "/a/b~0~1c/2",
            "/a/b~0~1c/3",
            "/a/e",
            "/ab",
            "/zz",
            "",
        ] {
            let ptr = JsonPointer::parse(p).unwrap();
            assert_eq!(pointer_get_valid(doc, ptr.tokens()), get(p), "{p}");
        }
        // Deep text never overflows the stack.
        let deep = "[".repeat(100_000);
        assert!(pointer_get(&deep, &JsonPointer::parse("/0/0").unwrap()).is_err());
        assert!(validate(&deep).is_err());
    }

    #[test]
    fn minify_and_decode() {
        let mut out = Vec::new();
        minify_into(
            " { \"a b\" : [ 1 ,\n 2 ] , \"c\\\" \" : \" \\\\ \" } ",
            &mut out,
        );
        assert_eq!(out, br#"{"a b":[1,2],"c\" ":" \\ "}"#);
        assert!(matches!(
            decode_str(r#""plain""#),
            Ok(Cow::Borrowed("plain"))
        ));
        assert_eq!(
            decode_str(r#""\u00e9\ud83d\ude00\n\/""#).unwrap(),
            "\u{e9}\u{1F600}\n/"
        );
        assert!(decode_str(r#""\ud83d""#).is_err());
        assert!(decode_str(r#""\ude00""#).is_err());
        assert!(decode_str(r#""\x""#).is_err());
        assert!(decode_str("\"").is_err());
        let mut out = Vec::new();
        write_str_into("q\"\\\n\u{1}é", &mut out);
        assert_eq!(out, "\"q\\\"\\\\\\n\\u0001é\"".as_bytes());
        assert_eq!(
            serde_json::from_slice::<String>(&out).unwrap(),
            "q\"\\\n\u{1}é"
        );
    }
}
