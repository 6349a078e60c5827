//! The cursor of a read across partitions: every partition's next offset, as
//! `partition-offset` pairs joined by `.` (`0-124.1-457`), or `earliest` / `latest`.
//! The text is the contract with clients (it is also the SSE `id:`), so it is parsed
//! strictly: digits only, each partition named at most once, none beyond the topic.

use std::io::Write;

/// A parsed cursor, before it is resolved against the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorSpec {
    /// Every partition from its start offset.
    Earliest,
    /// Every partition from its visible end: only what arrives from now on.
    Latest,
    /// The offset of each partition (by number); `None` for a partition the cursor does
    /// not name, which starts at its start offset (a cursor from before partitions were
    /// added stays valid).
    At(Vec<Option<i64>>),
}

/// Parses a cursor for a topic of `partitions` partitions. The error says what is wrong.
pub fn parse(text: &str, partitions: u32) -> Result<CursorSpec, String> {
    match text {
        "earliest" => return Ok(CursorSpec::Earliest),
        "latest" => return Ok(CursorSpec::Latest),
        "" => return Err("the cursor is empty".into()),
        _ => {}
    }
    let mut offsets = vec![None; partitions as usize];
    for pair in text.split('.') {
        let Some((p, o)) = pair.split_once('-') else {
            return Err(format!(
                "{pair:?} is not partition-offset (cursors look like 0-124.1-457)"
            ));
        };
        let (Some(p), Some(o)) = (digits::<u32>(p), digits::<i64>(o)) else {
            return Err(format!(
                "{pair:?} is not partition-offset with both numbers in decimal digits"
            ));
        };
        let Some(slot) = offsets.get_mut(p as usize) else {
            return Err(format!(
                "the cursor names partition {p}; the topic has partitions 0 to {}",
                partitions.saturating_sub(1)
            ));
        };
        if slot.replace(o).is_some() {
            return Err(format!("the cursor names partition {p} twice"));
        }
    }
    Ok(CursorSpec::At(offsets))
}

/// A non-negative decimal number of ASCII digits only (no sign, no spaces).
fn digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Writes `partition-offset` pairs joined by `.`.
pub fn write(out: &mut Vec<u8>, pairs: impl Iterator<Item = (u32, i64)>) {
    for (i, (p, o)) in pairs.enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        let _ = write!(out, "{p}-{o}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let spec = parse("0-124.1-457", 2).unwrap();
        assert_eq!(spec, CursorSpec::At(vec![Some(124), Some(457)]));
        let mut out = Vec::new();
        write(&mut out, [(0, 124), (1, 457)].into_iter());
        assert_eq!(out, b"0-124.1-457");
        // Order is free and missing partitions start at their start.
        assert_eq!(
            parse("2-5.0-1", 4).unwrap(),
            CursorSpec::At(vec![Some(1), None, Some(5), None])
        );
        assert_eq!(parse("earliest", 4).unwrap(), CursorSpec::Earliest);
        assert_eq!(parse("latest", 4).unwrap(), CursorSpec::Latest);
    }

    #[test]
    fn malformed_cursors_say_why() {
        for (text, why) in [
            ("", "empty"),
            ("0-1.", "\"\" is not partition-offset"),
            ("0", "is not partition-offset"),
            ("0-", "decimal digits"),
            ("-5", "decimal digits"),
            ("0--1", "decimal digits"),
            ("0-+1", "decimal digits"),
            (" 0-1", "decimal digits"),
            ("a-1", "decimal digits"),
            ("0-99999999999999999999", "decimal digits"),
            ("4-0", "names partition 4; the topic has partitions 0 to 3"),
            ("1-0.1-2", "names partition 1 twice"),
            ("Earliest", "is not partition-offset"),
        ] {
            let err = parse(text, 4).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
