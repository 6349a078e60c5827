//! Topic name grammar, shared by the HTTP layer (400 `invalid_topic_name` before any
//! lookup) and check-config, so a name can never escape the data dir.

/// Longest topic name, as Kafka.
pub const TOPIC_NAME_LEN_MAX: usize = 249;

/// Checks Kafka's grammar `[A-Za-z0-9._-]{1,249}`, not `.` or `..`.
/// Internal names (`__` prefix) pass here; callers decide whether users may use them.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".to_string());
    }
    if name.len() > TOPIC_NAME_LEN_MAX {
        return Err(format!(
            "topic name is {} bytes long, the limit is {TOPIC_NAME_LEN_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is reserved"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; allowed are A-Z, a-z, 0-9, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Names starting with `__` belong to weir (`__weir_offsets`).
pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kafka_names() {
        for ok in ["clickstream", "a", "a.b_c-D9", &"x".repeat(249), "..."] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_names_that_could_leave_the_data_dir() {
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            "a b",
            "é",
            &"x".repeat(250),
            "a\0",
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
