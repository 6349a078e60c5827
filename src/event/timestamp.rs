//! Event-time text: the timestamp forms an envelope may carry, parsed to epoch
//! milliseconds, and the one form weir writes (RFC 3339, UTC, milliseconds, `Z`).
//! Hand-written rather than `time`'s parsers: it runs once per event on the ingest path.

/// Milliseconds in one day.
const DAY_MS: i64 = 86_400_000;

/// Parses an event time to epoch milliseconds. Accepted forms:
///
/// - RFC 3339: `2026-11-27T10:00:00Z`, `2026-11-27T10:00:00.123+02:00` (`t`, `z` too);
/// - the same without a zone, read as UTC, with `T` or a space between date and time:
///   `2026-11-27 10:00:00`, `2026-11-27 10:00:00.123`, `2026-11-27T10:00:00`;
/// - epoch milliseconds as decimal digits, optionally negative: `1795773600000`.
///
/// Fractions may have any number of digits; digits past milliseconds are dropped
/// (truncated, not rounded). A leap second (`:60`) is rejected.
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    let b = text.as_bytes();
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
        return text
            .parse::<i64>()
            .map_err(|_| format!("epoch milliseconds {} out of range", shorten(text)));
    }
    parse_datetime(b).ok_or_else(|| {
        format!(
            "{} is not RFC 3339, \"YYYY-MM-DD HH:MM:SS[.fff]\" (UTC) or epoch milliseconds",
            shorten(text)
        )
    })
}

/// The text for an error message: quoted, and cut short if long (bodies are big).
fn shorten(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 40;
    if text.chars().count() <= SHOWN_CHARS_MAX {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(SHOWN_CHARS_MAX).collect();
        format!("{head:?}...")
    }
}

/// `n` ASCII digits at `b[at..]` as a number.
fn num(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let digits = b.get(at..at + n)?;
    let mut v = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(d - b'0');
    }
    Some(v)
}

fn parse_datetime(b: &[u8]) -> Option<i64> {
    // YYYY-MM-DD?HH:MM:SS is 19 bytes.
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = num(b, 0, 4)?;
    let month = num(b, 5, 2)?;
    let day = num(b, 8, 2)?;
    let hour = num(b, 11, 2)?;
    let minute = num(b, 14, 2)?;
    let second = num(b, 17, 2)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let n = at - start;
        if n == 0 {
            return None;
        }
        let mut scale = 100;
        for &d in &b[start..start + n.min(3)] {
            millis += i64::from(d - b'0') * scale;
            scale /= 10;
        }
    }
    let offset_minutes = match b.get(at) {
        None => 0,
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if at + 6 == b.len() && b[at + 3] == b':' => {
            let h = num(b, at + 1, 2)?;
            let m = num(b, at + 4, 2)?;
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let ms = days * DAY_MS + ((hour * 60 + minute) * 60 + second) * 1000 + millis;
    Some(ms - offset_minutes * 60_000)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `ms` (epoch milliseconds) as RFC 3339 in UTC with milliseconds, e.g.
/// `2026-11-27T13:49:06.123Z`. Years outside 0000..=9999 (never a bounded event time)
/// are written with as many digits as they need and a sign when negative.
pub fn format_rfc3339_ms(ms: i64, out: &mut Vec<u8>) {
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (year, month, day) = civil_from_days(days);
    if (0..=9999).contains(&year) {
        push_digits(out, year, 4);
    } else {
        out.extend_from_slice(year.to_string().as_bytes());
    }
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
    out.push(b'T');
    push_digits(out, in_day / 3_600_000, 2);
    out.push(b':');
    push_digits(out, in_day / 60_000 % 60, 2);
    out.push(b':');
    push_digits(out, in_day / 1000 % 60, 2);
    out.push(b'.');
    push_digits(out, in_day % 1000, 3);
    out.push(b'Z');
}

/// [`format_rfc3339_ms`] into a new `String`, for messages.
pub fn rfc3339_ms_string(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    format_rfc3339_ms(ms, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the `width` low decimal digits of a non-negative `v`, zero-padded.
fn push_digits(out: &mut Vec<u8>, v: i64, width: u32) {
    let mut scale = 10_i64.pow(width - 1);
    while scale > 0 {
        // `v / scale % 10` is a digit in 0..=9 for the non-negative values passed here.
        let digit = u8::try_from((v / scale % 10).unsigned_abs()).unwrap_or(0);
        out.push(b'0' + digit);
        scale /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &str) {
        let ms = parse_timestamp(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(rfc3339_ms_string(ms), expected, "{text}");
    }

    #[test]
    fn accepted_forms() {
        check("2026-11-27T13:49:06Z", "2026-11-27T13:49:06.000Z");
        check("2026-11-27t13:49:06z", "2026-11-27T13:49:06.000Z");
        check("2026-11-27T13:49:06.1Z", "2026-11-27T13:49:06.100Z");
        check("2026-11-27T13:49:06.123456789Z", "2026-11-27T13:49:06.123Z");
        check("2026-11-27T15:49:06.123+02:00", "2026-11-27T13:49:06.123Z");
        check("2026-11-27T08:19:06.123-05:30", "2026-11-27T13:49:06.123Z");
        check("2026-11-27 13:49:06", "2026-11-27T13:49:06.000Z");
        check("2026-11-27 13:49:06.123", "2026-11-27T13:49:06.123Z");
        check("2026-11-27T13:49:06.123", "2026-11-27T13:49:06.123Z");
        check("2024-02-29 00:00:00", "2024-02-29T00:00:00.000Z");
        check("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z");
        check("1969-12-31T23:59:59.999Z", "1969-12-31T23:59:59.999Z");
        check("0000-01-01T00:00:00Z", "0000-01-01T00:00:00.000Z");
        check("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z");
        check("1795773600000", "2026-11-27T10:00:00.000Z");
        check("-1", "1969-12-31T23:59:59.999Z");
        assert_eq!(parse_timestamp("0"), Ok(0));
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            "",
            "-",
            "now",
            "2026-11-27",
            "2026-11-27T13:49",
            "2026-11-27X13:49:06Z",
            "2026-13-27T13:49:06Z",
            "2026-02-29T13:49:06Z",
            "2026-11-31T13:49:06Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T13:60:00Z",
            "2026-11-27T13:49:60Z",
            "2026-11-27T13:49:06.Z",
            "2026-11-27T13:49:06ZZ",
            "2026-11-27T13:49:06+0200",
            "2026-11-27T13:49:06+24:00",
            "2026-11-27T13:49:06 ",
            " 2026-11-27T13:49:06Z",
            "+2026-11-27T13:49:06Z",
            "2026-1-27T13:49:06Z",
            "1.5",
            "1e12",
            "99999999999999999999",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?} accepted");
        }
        let long = "x".repeat(1000);
        assert!(parse_timestamp(&long).unwrap_err().len() < 200);
    }

    #[test]
    fn format_matches_time_crate() {
        for ms in [
            0_i64,
            1,
            999,
            -1,
            -86_400_001,
            951_782_400_000,
            1_795_773_600_123,
            253_402_300_799_999,
        ] {
            let expected =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .unwrap()
                    .format(time::macros::format_description!(
                        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                    ))
                    .unwrap();
            assert_eq!(rfc3339_ms_string(ms), expected);
            assert_eq!(parse_timestamp(&expected), Ok(ms));
        }
        // Beyond year 9999: still a well-formed, if unusual, text; never a panic.
        assert_eq!(
            rfc3339_ms_string(253_402_300_800_000),
            "10000-01-01T00:00:00.000Z"
        );
        let _ = rfc3339_ms_string(i64::MIN);
        let _ = rfc3339_ms_string(i64::MAX);
    }
}
