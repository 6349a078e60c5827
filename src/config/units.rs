//! Durations (`"250ms"`, `"7d"`) and sizes (`"64MiB"`, `"10MB"`) as written in the config.
//!
//! Owns only the text grammar: a run of ASCII digits followed at once by a unit, nothing
//! else. Whether zero or a large value makes sense for a key is the validator's call
//! (`config::mod`), not this file's.

use std::time::Duration;

/// Duration units, longest suffix first so `ms` is not read as `m` + garbage.
const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60 * 1_000),
    ("h", 60 * 60 * 1_000),
    ("d", 24 * 60 * 60 * 1_000),
];

/// Size units: binary (`KiB` = 1024) and decimal (`KB` = 1000), as their names say.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("B", 1),
];

const DURATION_HELP: &str =
    "write a whole number and a unit (ms, s, m, h, d), e.g. \"250ms\" or \"5s\"";
const SIZE_HELP: &str =
    "write a whole number and a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), e.g. \"64MiB\"";

/// Parses `"250ms"`, `"5s"`, `"1m"`, `"1h"`, `"7d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, multiplier) = split(text, DURATION_UNITS, "duration", DURATION_HELP)?;
    let millis = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("duration {text:?} is too large"))?;
    Ok(Duration::from_millis(millis))
}

/// A configured duration in milliseconds, as the engine, log and queries count time;
/// saturating at `i64::MAX` (a duration that long means "never").
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Parses `"512B"`, `"4KiB"`, `"64MiB"`, `"1GiB"`, `"10MB"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, multiplier) = split(text, SIZE_UNITS, "size", SIZE_HELP)?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Formats a byte count the way a user would write it, for messages: the largest binary
/// unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    for (unit, multiplier) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes != 0 && bytes.is_multiple_of(multiplier) {
            return format!("{}{unit}", bytes / multiplier);
        }
    }
    format!("{bytes}B")
}

/// Formats a duration the way a user would write it, for messages: the largest unit
/// that divides it exactly.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for &(unit, multiplier) in DURATION_UNITS.iter().rev() {
        let multiplier = u128::from(multiplier);
        if millis != 0 && millis.is_multiple_of(multiplier) {
            return format!("{}{unit}", millis / multiplier);
        }
    }
    format!("{millis}ms")
}

/// Splits `<digits><unit>` and looks the unit up.
fn split(text: &str, units: &[(&str, u64)], what: &str, help: &str) -> Result<(u64, u64), String> {
    let digits_len = text.bytes().take_while(u8::is_ascii_digit).count();
    let (digits, unit) = text.split_at(digits_len);
    if digits.is_empty() {
        let why = if text.is_empty() {
            "is empty".to_string()
        } else if text.starts_with('-') {
            "is negative".to_string()
        } else {
            "does not start with a number".to_string()
        };
        return Err(format!("{what} {text:?} {why}; {help}"));
    }
    if unit.is_empty() {
        return Err(format!("{what} {text:?} has no unit; {help}"));
    }
    let Some(&(_, multiplier)) = units.iter().find(|(name, _)| *name == unit) else {
        let why = if unit.starts_with('.') {
            "has a fraction".to_string()
        } else {
            format!("has an unknown unit {unit:?}")
        };
        return Err(format!("{what} {text:?} {why}; {help}"));
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{what} {text:?} is too large"))?;
    Ok((number, multiplier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_saturates() {
        assert_eq!(millis(Duration::from_millis(1_500)), 1_500);
        assert_eq!(millis(Duration::from_secs(u64::MAX)), i64::MAX);
    }

    #[test]
    fn durations() {
        let ok: &[(&str, u64)] = &[
            ("0ms", 0),
            ("250ms", 250),
            ("5s", 5_000),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
            ("7d", 604_800_000),
            ("007s", 7_000),
        ];
        for &(text, millis) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("", "is empty"),
            ("5", "has no unit"),
            ("100", "e.g. \"250ms\""),
            ("-5s", "is negative"),
            ("s", "does not start with a number"),
            ("1.5s", "has a fraction"),
            ("5 s", "unknown unit \" s\""),
            (" 5s", "does not start with a number"),
            ("5S", "unknown unit \"S\""),
            ("5us", "unknown unit \"us\""),
            ("5sec", "unknown unit \"sec\""),
            ("5MiB", "unknown unit \"MiB\""),
            ("1s1ms", "unknown unit \"s1ms\""),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615d", "too large"),
        ];
        for &(text, message) in bad {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(message), "{text:?}: {err}");
        }
    }

    #[test]
    fn sizes() {
        let ok: &[(&str, u64)] = &[
            ("0B", 0),
            ("512B", 512),
            ("4KiB", 4096),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("10KB", 10_000),
            ("10MB", 10_000_000),
            ("3GB", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
        ];
        for &(text, bytes) in ok {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "is empty"),
            ("1024", "has no unit"),
            ("1024", "e.g. \"64MiB\""),
            ("-1MiB", "is negative"),
            ("MiB", "does not start with a number"),
            ("1.5GiB", "has a fraction"),
            ("64 MiB", "unknown unit \" MiB\""),
            ("64mib", "unknown unit \"mib\""),
            ("64M", "unknown unit \"M\""),
            ("64Mb", "unknown unit \"Mb\""),
            ("5s", "unknown unit \"s\""),
            ("16777216TiB", "too large"),
            ("99999999999999999999B", "too large"),
        ];
        for &(text, message) in bad {
            let err = parse_size(text).expect_err(text);
            assert!(err.contains(message), "{text:?}: {err}");
        }
    }

    #[test]
    fn formats_sizes_as_written() {
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(1024), "1KiB");
        assert_eq!(format_size(16 << 20), "16MiB");
        assert_eq!(format_size(3 << 30), "3GiB");
    }

    #[test]
    fn formats_durations_as_written() {
        for text in ["0ms", "250ms", "5s", "90s", "1m", "1h", "36h", "1d", "7d"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
