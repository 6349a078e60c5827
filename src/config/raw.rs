//! The serde mirror of the TOML file: every key as the user writes it, nothing checked
//! beyond its TOML type.
//!
//! Every value is optional and [`Spanned`] so the validator (`config::mod`) can apply
//! defaults and point at the line of a bad value. Sizes and durations stay text here
//! ([`Quantity`]); turning them into numbers, and every range check, is the validator's
//! job. Adding a section means a struct here, a field in [`RawConfig`], and its
//! validation in `mod.rs` (or a file beside it, as `pipeline.rs`); [`read`], which finds the key and line
//! of every unknown key and wrong type, needs no change.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::PROBLEMS_MAX;

/// A problem found while reading the mirror: a syntax error, an unknown key or a value of
/// the wrong TOML type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawProblem {
    /// e.g. `topic[1].fsync`; empty when the parser could not tie it to a key.
    pub key_path: String,
    /// Byte range in the text, when the parser gave one.
    pub span: Option<Range<usize>>,
    pub message: String,
}

/// The whole file. Unknown keys anywhere are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<Table<RawServer>>,
    pub storage: Option<Table<RawStorage>>,
    pub log: Option<Table<RawLog>>,
    /// `[[topic]]` tables, in file order.
    pub topic: Option<Vec<Spanned<Table<RawTopic>>>>,
    /// `[[pipeline]]` tables, in file order.
    pub pipeline: Option<Vec<Spanned<Table<RawPipeline>>>>,
    /// `[[route]]` tables, in file order.
    pub route: Option<Vec<Spanned<Table<RawRoute>>>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub max_body: Option<Spanned<Quantity>>,
    pub max_key: Option<Spanned<Quantity>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_inflight: Option<Spanned<Quantity>>,
    pub max_streams: Option<Spanned<i64>>,
    pub header_timeout: Option<Spanned<Quantity>>,
    pub body_timeout: Option<Spanned<Quantity>>,
    pub shutdown_grace: Option<Spanned<Quantity>>,
    pub memory_max: Option<Spanned<Quantity>>,
}

/// `[storage]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub data_dir: Option<Spanned<String>>,
    pub sled_cache: Option<Spanned<Quantity>>,
    pub free_space_reserve: Option<Spanned<Quantity>>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
}

/// One `[[topic]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    pub name: Option<Spanned<String>>,
    pub partitions: Option<Spanned<i64>>,
    pub fsync: Option<Spanned<String>>,
    pub fsync_interval: Option<Spanned<Quantity>>,
    pub segment_size: Option<Spanned<Quantity>>,
    pub segment_age: Option<Spanned<Quantity>>,
    pub retention_age: Option<Spanned<Quantity>>,
    pub retention_size: Option<Spanned<Quantity>>,
    pub dedup_window: Option<Spanned<Quantity>>,
    pub max_dedup_entries: Option<Spanned<i64>>,
    pub key_field: Option<Spanned<String>>,
    pub wrap: Option<Spanned<bool>>,
    pub timestamp_field: Option<Spanned<String>>,
    pub default_event_type: Option<Spanned<String>>,
    pub max_event_age: Option<Spanned<Quantity>>,
    pub max_event_lead: Option<Spanned<Quantity>>,
    pub on_bad_time: Option<Spanned<String>>,
}

/// One `[[pipeline]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub name: Option<Spanned<String>>,
    pub source: Option<Spanned<String>>,
    pub filter: Option<Spanned<Vec<Spanned<String>>>>,
    pub group_by: Option<Spanned<Vec<Spanned<String>>>>,
    pub window: Option<Spanned<Table<RawWindow>>>,
    pub time: Option<Spanned<String>>,
    pub max_out_of_orderness: Option<Spanned<Quantity>>,
    pub idle_timeout: Option<Spanned<Quantity>>,
    pub allowed_lateness: Option<Spanned<Quantity>>,
    pub checkpoint_interval: Option<Spanned<Quantity>>,
    pub max_open_windows: Option<Spanned<i64>>,
    pub retain_results: Option<Spanned<Quantity>>,
    pub max_view_rows: Option<Spanned<i64>>,
    pub ready_lag: Option<Spanned<i64>>,
    pub late_topic: Option<Spanned<String>>,
    pub output_topic: Option<Spanned<String>>,
    /// `[[pipeline.aggregate]]` tables, in file order.
    pub aggregate: Option<Vec<Spanned<Table<RawAggregate>>>>,
}

/// A pipeline's `window = { kind = ..., ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub kind: Option<Spanned<String>>,
    pub size: Option<Spanned<Quantity>>,
    pub slide: Option<Spanned<Quantity>>,
    pub gap: Option<Spanned<Quantity>>,
    pub max_length: Option<Spanned<Quantity>>,
}

/// One `[[pipeline.aggregate]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    pub name: Option<Spanned<String>>,
    #[serde(rename = "fn")]
    pub func: Option<Spanned<String>>,
    pub field: Option<Spanned<String>>,
    pub quantiles: Option<Spanned<Vec<Spanned<f64>>>>,
}

/// One `[[route]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub method: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub pipeline: Option<Spanned<String>>,
    pub topic: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub aggregate: Option<Spanned<String>>,
    pub window: Option<Spanned<String>>,
    pub response: Option<Spanned<String>>,
}

/// A table and only a table. serde's derived structs also accept an array of values
/// in field order, which would let `[[server]]` through with a baffling message about its
/// first key; this wrapper refuses anything but a table.
#[derive(Debug, Default)]
pub struct Table<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Table<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Table)
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// A size or duration as written. A bare TOML number is kept as its text rather than
/// refused as a type error, so the unit parser can say the unit is missing and show an
/// example (`max_body = 1024` → "has no unit; … e.g. "64MiB"").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string such as \"64MiB\" or \"5s\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Parses the TOML and deserializes the raw mirror, reporting syntax errors, unknown keys
/// and wrong types. The mirror is `None` when it could not be built at all (a syntax
/// error); otherwise it holds every key that was not reported.
///
/// serde stops at the first error, so each pass reports that error, finds the key its
/// span points at, removes the key and tries again: one run reports every unknown key
/// and every wrong type. Each pass removes a key, so the loop ends.
///
/// Reports at most [`PROBLEMS_MAX`] problems; the flag says it stopped there.
pub fn read(text: &str) -> (Option<RawConfig>, Vec<RawProblem>, bool) {
    let mut problems = Vec::new();
    let (mut root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // toml gives its one span-less error, a dotted key of too many parts, no place;
        // find the line holding such a key so the problem names one.
        let mut errors: Vec<_> = errors
            .into_iter()
            .map(|err| {
                let span = err.span().or_else(|| {
                    (err.message() == "recursion limit")
                        .then(|| long_dotted_key(text))
                        .flatten()
                });
                (span, err)
            })
            .collect();
        // The first ones in the file; only those are placed in the tree.
        errors.sort_by_key(|(span, _)| span.as_ref().map(|span| span.start));
        let truncated = errors.len() > PROBLEMS_MAX;
        for (span, err) in errors.into_iter().take(PROBLEMS_MAX) {
            let mut path = span
                .clone()
                .and_then(|span| locate(root.get_ref(), &span))
                .map(|path| render_path(&path))
                .unwrap_or_else(|| enclosing_table(text, span.clone()));
            // The second of two equal keys is not in the recovered table; name it.
            if err.message().starts_with("duplicate key")
                && let Some(key) = span.clone().and_then(|span| text.get(span))
                && path.rsplit('.').next() != Some(key.trim())
            {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key.trim());
            }
            let message = if span.is_some() && err.span().is_none() {
                format!(
                    "{} (a dotted key of {TOML_KEY_PARTS_MAX} or more parts)",
                    err.message()
                )
            } else {
                err.message().to_string()
            };
            problems.push(RawProblem {
                key_path: path,
                span,
                message,
            });
        }
        return (None, problems, truncated);
    }
    loop {
        match RawConfig::deserialize(toml::de::Deserializer::from(root.clone())) {
            Ok(raw) => return (Some(raw), problems, false),
            Err(_) if problems.len() == PROBLEMS_MAX => return (None, problems, true),
            Err(err) => {
                let message = serde_message(err.message());
                let Some(path) = err.span().and_then(|span| locate(root.get_ref(), &span)) else {
                    problems.push(RawProblem {
                        key_path: String::new(),
                        span: err.span(),
                        message,
                    });
                    return (None, problems, false);
                };
                problems.push(RawProblem {
                    key_path: render_path(&path),
                    span: err.span(),
                    message,
                });
                if !remove(root.get_mut(), &path) {
                    return (None, problems, false);
                }
            }
        }
    }
}

/// The number of parts of a dotted key at which toml stops with "recursion limit".
const TOML_KEY_PARTS_MAX: usize = 80;

/// The line of a key of at least [`TOML_KEY_PARTS_MAX`] dotted parts, as a byte range:
/// the first line with that many dots outside quotes and before a comment (a valid key is
/// never split over lines). After a syntax error toml's recovery can read a quote or a
/// comment as part of a key, so failing that, the line with the most dots at all. toml
/// counts a part per `.`, so the text holds at least that many and a line is found.
fn long_dotted_key(text: &str) -> Option<Range<usize>> {
    let mut start = 0;
    let lines: Vec<(&str, Range<usize>)> = text
        .split_inclusive('\n')
        .map(|line| {
            let range = start..start + line.trim_end().len();
            start += line.len();
            (line, range)
        })
        .collect();
    let raw_dots = |line: &str| line.bytes().filter(|&b| b == b'.').count();
    let (_, range) = lines
        .iter()
        .find(|(line, _)| key_dots(line) + 1 >= TOML_KEY_PARTS_MAX)
        .or_else(|| {
            lines
                .iter()
                .filter(|(line, _)| raw_dots(line) > 0)
                .max_by_key(|(line, _)| raw_dots(line))
        })?;
    Some(range.clone())
}

/// The dots of a line outside quotes and before a comment.
fn key_dots(line: &str) -> usize {
    let mut dots = 0;
    let mut quote = None;
    let mut escaped = false;
    for c in line.chars() {
        match (quote, c) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => break,
            (None, '.') => dots += 1,
            _ => {}
        }
        escaped = false;
    }
    dots
}

/// serde speaks of fields and structs; a TOML user writes keys and tables.
fn serde_message(message: &str) -> String {
    message
        .replace("unknown field", "unknown key")
        .replace("a sequence", "an array")
        .replace("expected i64", "expected an integer")
}

/// The key or array element whose name or value most tightly covers `span`. On a tie
/// the outer one wins: `[[server]]` is an array whose one table has the same span, and
/// the error is about `server`.
fn locate(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<Step>> {
    let mut best = None;
    locate_in_table(table, span, &mut Vec::new(), &mut best);
    best.map(|(path, _)| path)
}

/// The best candidate so far and the length of its covering span.
type Best = Option<(Vec<Step>, usize)>;

fn locate_in_table(
    table: &DeTable<'_>,
    span: &Range<usize>,
    prefix: &mut Vec<Step>,
    best: &mut Best,
) {
    for (key, value) in table.iter() {
        prefix.push(Step::Key(key.get_ref().to_string()));
        for candidate in [key.span(), value.span()] {
            consider(prefix, &candidate, span, best);
        }
        locate_in_value(value.get_ref(), span, prefix, best);
        prefix.pop();
    }
}

fn locate_in_value(
    value: &DeValue<'_>,
    span: &Range<usize>,
    prefix: &mut Vec<Step>,
    best: &mut Best,
) {
    match value {
        DeValue::Table(table) => locate_in_table(table, span, prefix, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                prefix.push(Step::Index(i));
                consider(prefix, &item.span(), span, best);
                locate_in_value(item.get_ref(), span, prefix, best);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn consider(path: &[Step], candidate: &Range<usize>, span: &Range<usize>, best: &mut Best) {
    let covers = candidate.start <= span.start && span.end <= candidate.end;
    if covers && best.as_ref().is_none_or(|(_, len)| candidate.len() < *len) {
        *best = Some((path.to_vec(), candidate.len()));
    }
}

/// Removes the key at `path` (for a path ending in an array index, the array's key).
/// False when there was nothing to remove.
fn remove(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    let last_key = path.iter().rposition(|step| matches!(step, Step::Key(_)));
    let Some(last_key) = last_key else {
        return false;
    };
    remove_at(table, &path[..=last_key])
}

fn remove_at(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    let Some((Step::Key(key), rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return table.remove(key.as_str()).is_some();
    }
    let mut value = match table.get_mut(key.as_str()) {
        Some(value) => value.get_mut(),
        None => return false,
    };
    let mut rest = rest;
    while let Some((Step::Index(i), after)) = rest.split_first() {
        let DeValue::Array(items) = value else {
            return false;
        };
        let Some(item) = items.get_mut(*i) else {
            return false;
        };
        value = item.get_mut();
        rest = after;
    }
    match value {
        DeValue::Table(inner) => remove_at(inner, rest),
        _ => false,
    }
}

/// For a syntax error the parser could not tie to a key: the table header above it
/// (`server`, `topic[2]`), or the root.
fn enclosing_table(text: &str, span: Option<Range<usize>>) -> String {
    let end = span.map_or(0, |s| s.start.min(text.len()));
    let before = text.get(..end).unwrap_or("");
    let mut current = String::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in before.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            current = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = name.trim().to_string();
        }
    }
    current
}
