//! Tests of reading and checking the config: every problem reported once, with key path
//! and line. They go through [`problems`] and [`parse`] so an API change touches one place.

use super::*;
use crate::pipeline::aggregate::AggFn;

fn parse(text: &str) -> Config {
    match Config::parse(text, Path::new("weir.toml")) {
        Ok(config) => config,
        Err(errors) => panic!("unexpected problems:\n{errors}"),
    }
}

/// `(key_path, line, message)` of every problem, in the order reported.
fn problems(text: &str) -> Vec<(String, Option<usize>, String)> {
    match Config::parse(text, Path::new("weir.toml")) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(errors) => errors
            .problems
            .into_iter()
            .map(|p| (p.key_path, p.line, p.message))
            .collect(),
    }
}

/// Asserts exactly these `(key_path, line, message fragment)` problems, in order.
#[track_caller]
fn assert_problems(text: &str, expected: &[(&str, usize, &str)]) {
    let got = problems(text);
    let pretty = got
        .iter()
        .map(|(path, line, message)| format!("{line:?} {path}: {message}"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(got.len(), expected.len(), "got:\n{pretty}");
    for ((path, line, message), (want_path, want_line, fragment)) in got.iter().zip(expected) {
        assert_eq!(path, want_path, "got:\n{pretty}");
        assert_eq!(*line, Some(*want_line), "{path}; got:\n{pretty}");
        assert!(
            message.contains(fragment),
            "{path}: {message:?} lacks {fragment:?}"
        );
    }
}

#[test]
fn an_empty_file_means_every_default() {
    let config = parse("");
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(config.storage, StorageConfig::default());
    assert_eq!(config.log, LogConfig::default());
    assert!(config.topics.is_empty());
    assert_eq!(config.source, Path::new("weir.toml"));
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.max_body, 16 << 20);
    assert_eq!(config.server.max_key, 4096);
    assert_eq!(config.storage.data_dir, Path::new("./data"));
}

#[test]
fn a_topic_with_only_a_name_takes_the_defaults() {
    let config = parse("[[topic]]\nname = \"t\"\n");
    assert_eq!(config.topics, [TopicConfig::new("t")]);
    let t = config.topic("t").unwrap();
    assert_eq!(t.partitions, 4);
    assert_eq!(t.fsync, FsyncMode::Always);
    assert_eq!(t.retention_age, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(t.retention_size, None);
    assert!(config.topic("other").is_none());
}

#[test]
fn every_key_is_read() {
    let config = parse(
        r#"
[server]
listen = "0.0.0.0:9000"
max_body = "1MiB"
max_key = "512B"
max_connections = 10
max_inflight = "2MiB"
max_streams = 3
header_timeout = "1s"
body_timeout = "2s"
shutdown_grace = "0s"
memory_max = "1GB"

[storage]
data_dir = "/var/lib/weir"
sled_cache = "1MiB"
free_space_reserve = "0B"

[log]
level = "debug"
format = "json"

[[topic]]
name = "t"
partitions = 2
fsync = "interval"
fsync_interval = "250ms"
segment_size = "1KiB"
segment_age = "1h"
retention_age = "none"
retention_size = "10GB"
dedup_window = "0s"
max_dedup_entries = 0
key_field = "/payload/a~1b"
wrap = true
timestamp_field = "/ts"
default_event_type = "x.y"
max_event_age = "1d"
max_event_lead = "0ms"
on_bad_time = "clamp"
"#,
    );
    let s = &config.server;
    assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(
        (s.max_body, s.max_key, s.max_inflight),
        (1 << 20, 512, 2 << 20)
    );
    assert_eq!((s.max_connections, s.max_streams), (10, 3));
    assert_eq!(s.header_timeout, Duration::from_secs(1));
    assert_eq!(s.body_timeout, Duration::from_secs(2));
    assert_eq!(s.shutdown_grace, Duration::ZERO);
    assert_eq!(s.memory_max, Some(1_000_000_000));
    assert_eq!(
        config.storage,
        StorageConfig {
            data_dir: PathBuf::from("/var/lib/weir"),
            sled_cache: 1 << 20,
            free_space_reserve: 0
        }
    );
    assert_eq!(
        config.log,
        LogConfig {
            level: "debug".to_string(),
            format: LogFormat::Json
        }
    );
    let t = &config.topics[0];
    assert_eq!(
        (t.name.as_str(), t.partitions, t.fsync),
        ("t", 2, FsyncMode::Interval)
    );
    assert_eq!(t.fsync_interval, Duration::from_millis(250));
    assert_eq!(
        (t.segment_size, t.segment_age),
        (1024, Duration::from_secs(3600))
    );
    assert_eq!(
        (t.retention_age, t.retention_size),
        (None, Some(10_000_000_000))
    );
    assert_eq!((t.dedup_window, t.max_dedup_entries), (Duration::ZERO, 0));
    assert_eq!(t.key_field.as_ref().unwrap().tokens(), ["payload", "a/b"]);
    assert!(t.wrap);
    assert_eq!(t.timestamp_field.as_ref().unwrap().as_str(), "/ts");
    assert_eq!(t.default_event_type.as_deref(), Some("x.y"));
    assert_eq!(t.max_event_age, Duration::from_secs(86_400));
    assert_eq!(t.max_event_lead, Duration::ZERO);
    assert_eq!(t.on_bad_time, OnBadTime::Clamp);
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    assert_problems(
        r#"
colour = "blue"
[server]
listen = "127.0.0.1:1"
port = 80

[[topic]]
name = "a"

[[topic]]
name = "b"
fsync_every = "1s"
retention = "1d"

[pipelines]
name = "p"
"#,
        &[
            (
                "colour",
                2,
                "unknown key `colour`, expected one of `server`",
            ),
            ("server.port", 5, "unknown key `port`"),
            ("topic[1].fsync_every", 12, "unknown key `fsync_every`"),
            ("topic[1].retention", 13, "unknown key `retention`"),
            ("pipelines", 15, "unknown key `pipelines`"),
        ],
    );
}

#[test]
fn bad_sizes_and_durations_point_at_their_line() {
    assert_problems(
        r#"[server]
max_body = 1024
header_timeout = "5 s"
body_timeout = "-1s"

[[topic]]
name = "t"
segment_size = "1.5GiB"
fsync_interval = "100"
retention_size = "lots"
"#,
        &[
            (
                "server.max_body",
                2,
                "has no unit; write a whole number and a unit",
            ),
            ("server.header_timeout", 3, "unknown unit \" s\""),
            ("server.body_timeout", 4, "is negative"),
            ("topic[0].segment_size", 8, "has a fraction"),
            ("topic[0].fsync_interval", 9, "e.g. \"250ms\""),
            (
                "topic[0].retention_size",
                10,
                "does not start with a number",
            ),
        ],
    );
}

#[test]
fn out_of_range_values() {
    assert_problems(
        r#"[server]
max_body = "512B"
max_key = "0B"
max_connections = 0
max_streams = -1
max_inflight = "1KiB"
header_timeout = "0s"
shutdown_grace = "36501d"

[[topic]]
name = "t"
partitions = 10001
fsync_interval = "0ms"
segment_size = "1000B"
max_dedup_entries = 100000001
max_event_age = "0s"
"#,
        &[
            ("server.max_body", 2, "512B is below the minimum 1KiB"),
            ("server.max_key", 3, "0B is below the minimum 1B"),
            (
                "server.max_connections",
                4,
                "0 is out of range; allowed are 1 to 100000",
            ),
            ("server.max_streams", 5, "-1 is out of range"),
            // max_body fell back to its default, 16MiB, which max_inflight must hold.
            (
                "server.max_inflight",
                6,
                "max_inflight (1KiB) is below max_body (16MiB)",
            ),
            ("server.header_timeout", 7, "must be above zero"),
            (
                "server.shutdown_grace",
                8,
                "36501d is above the maximum 36500d",
            ),
            (
                "topic[0].partitions",
                12,
                "10001 is out of range; allowed are 1 to 10000",
            ),
            ("topic[0].fsync_interval", 13, "must be above zero"),
            (
                "topic[0].segment_size",
                14,
                "1000B is below the minimum 1KiB",
            ),
            ("topic[0].max_dedup_entries", 15, "out of range"),
            ("topic[0].max_event_age", 16, "must be above zero"),
        ],
    );
}

#[test]
fn bounds_that_contradict_each_other() {
    let got = problems("[server]\nmax_inflight = \"64MiB\"\nmemory_max = \"70MiB\"\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1),
        ("server.memory_max", Some(3))
    );
    assert!(got[0].2.contains("max_inflight (64MiB)"), "{}", got[0].2);
    assert!(got[0].2.contains("sled_cache (8MiB)"), "{}", got[0].2);
    // A body bigger than the in-flight budget could never be admitted.
    assert_problems(
        "[server]\nmax_body = \"100MiB\"\n",
        &[(
            "server.max_body",
            2,
            "max_inflight (64MiB) is below max_body (100MiB)",
        )],
    );
    // An unset max_key follows a small max_body down instead of contradicting it.
    assert_eq!(
        parse("[server]\nmax_body = \"1KiB\"\n").server.max_key,
        1024
    );
}

#[test]
fn topic_names_are_checked_and_unique() {
    assert_problems(
        r#"[[topic]]
name = "clicks"

[[topic]]
name = "../x"

[[topic]]
name = "clicks"

[[topic]]
name = "__weir_offsets"

[[topic]]
partitions = 1
"#,
        &[
            ("topic[1].name", 5, "contains '/'"),
            ("topic[2].name", 8, "already defined by topic[0]"),
            ("topic[3].name", 11, "weir's own"),
            ("topic[4]", 13, "has no name"),
        ],
    );
}

#[test]
fn pointers_and_words_are_checked() {
    assert_problems(
        r#"[log]
level = "verbose"
format = "yaml"

[[topic]]
name = "t"
key_field = "payload/user_id"
timestamp_field = "/bad~2"
wrap = true
fsync = "sometimes"
on_bad_time = "drop"

[[topic]]
name = "u"
key_field = ""
timestamp_field = "/ts"
default_event_type = ""
"#,
        &[
            (
                "log.level",
                2,
                "\"verbose\" is not one of \"trace\", \"debug\"",
            ),
            ("log.format", 3, "not one of \"text\", \"json\""),
            ("topic[0].key_field", 7, "must start with '/'"),
            (
                "topic[0].timestamp_field",
                8,
                "'~' not followed by '0' or '1'",
            ),
            (
                "topic[0].fsync",
                10,
                "not one of \"always\", \"interval\", \"never\"",
            ),
            (
                "topic[0].on_bad_time",
                11,
                "not one of \"reject\", \"clamp\"",
            ),
            ("topic[1].key_field", 15, "points at the whole object"),
            ("topic[1].timestamp_field", 16, "set wrap = true"),
            ("topic[1].default_event_type", 17, "is empty"),
        ],
    );
}

#[test]
fn wrong_types_are_all_reported() {
    assert_problems(
        r#"[server]
listen = 8080
max_connections = "many"

[storage]
data_dir = ["a"]

[[topic]]
name = "t"
wrap = "yes"
partitions = 1.5
"#,
        &[
            (
                "server.listen",
                2,
                "invalid type: integer `8080`, expected a string",
            ),
            ("server.max_connections", 3, "expected an integer"),
            ("storage.data_dir", 6, "expected a string"),
            ("topic[0].wrap", 10, "expected a boolean"),
            ("topic[0].partitions", 11, "expected an integer"),
        ],
    );
}

#[test]
fn sections_of_the_wrong_shape() {
    assert_problems(
        "server = 5\ntopic = 3\n",
        &[
            ("server", 1, "expected a table"),
            ("topic", 2, "expected an array"),
        ],
    );
    assert_problems(
        "[[server]]\nlisten = \"127.0.0.1:1\"\n",
        &[("server", 1, "expected a table")],
    );
}

#[test]
fn syntax_errors_have_a_line_and_a_table() {
    assert_problems(
        "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body = 16MiB\n",
        &[("server.max_body", 3, "")],
    );
    assert_problems(
        "[server]\nlisten = \"a\"\nlisten = \"b\"\n",
        &[("server.listen", 3, "duplicate key")],
    );
    assert_problems(
        "[[topic]]\nname = \"t\"\n\n[[topic]]\nname = \"u\n",
        &[("topic[1].name", 5, "")],
    );
    let got = problems("[server\n");
    assert_eq!(got[0].1, Some(1), "{got:?}");
}

#[test]
fn a_listen_address_must_be_an_ip_and_port() {
    assert_problems(
        "[server]\nlisten = \"localhost:8080\"\n",
        &[("server.listen", 2, "not an IP address and port")],
    );
    assert_problems(
        "[server]\nlisten = \"127.0.0.1\"\n",
        &[("server.listen", 2, "")],
    );
    assert_eq!(
        parse("[server]\nlisten = \"[::1]:0\"\n")
            .server
            .listen
            .port(),
        0
    );
}

/// Unknown keys, syntax errors and bad values each stop at the first hundred problems,
/// in file order, and the message says the check stopped there; a file with exactly a
/// hundred problems lists them all.
#[test]
fn a_check_lists_at_most_a_hundred_problems_and_says_it_stopped() {
    let unknown = |n: usize| {
        "[server]\n".to_string() + &(0..n).map(|i| format!("nope{i} = 1\n")).collect::<String>()
    };
    let syntax = "[server]\n".to_string() + &"= =\n".repeat(300);
    let values = "[server]\nmax_body = \"1\"\n".to_string()
        + &(0..300)
            .map(|i| format!("[[topic]]\nname = \"t{i}\"\npartitions = 0\n"))
            .collect::<String>();
    for text in [unknown(300), syntax, values] {
        let err = Config::parse(&text, Path::new("weir.toml")).unwrap_err();
        assert_eq!(err.problems.len(), PROBLEMS_MAX, "{err}");
        assert!(err.truncated);
        let lines: Vec<usize> = err.problems.iter().map(|p| p.line.unwrap()).collect();
        assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
        assert_eq!(lines[0], 2, "the first problem is listed: {err}");
        let shown = err.to_string();
        assert!(
            shown.ends_with("weir.toml: stopped after 100 problems; fix these and check again"),
            "{shown}"
        );
    }
    let err = Config::parse(&unknown(PROBLEMS_MAX), Path::new("weir.toml")).unwrap_err();
    assert_eq!(err.problems.len(), PROBLEMS_MAX);
    assert!(!err.truncated);
    assert!(!err.to_string().contains("stopped"));
}

#[test]
fn problems_display_as_file_line_key_message() {
    let err = Config::parse(
        "[server]\nmax_body = \"1\"\nnope = 1\n",
        Path::new("/etc/weir/weir.toml"),
    )
    .unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("/etc/weir/weir.toml:2: server.max_body: size \"1\" has no unit"));
    assert!(lines[1].starts_with("/etc/weir/weir.toml:3: server.nope: unknown key `nope`"));
}

#[test]
fn a_missing_file_is_one_problem_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].line, None);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}: cannot read the config file", path.display())),
        "{text}"
    );
}

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, "[[topic]]\nname = \"t\"\n").unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.source, path);
    assert_eq!(config.topics.len(), 1);
}

#[test]
fn modes_display_as_their_toml_words() {
    assert_eq!(FsyncMode::Interval.to_string(), "interval");
    assert_eq!(OnBadTime::Clamp.to_string(), "clamp");
    assert_eq!(LogFormat::Json.to_string(), "json");
}

// --- config.example.toml and docs/configuration.md stay in step with the code ---

const EXAMPLE: &str = include_str!("../../config.example.toml");
const REFERENCE: &str = include_str!("../../docs/configuration.md");

/// The table a line opens (`[server]` -> `server`, `[[topic]]` -> `topic`), if it does.
fn table_header(line: &str) -> Option<String> {
    let line = line.trim().trim_matches('`');
    let name = line.strip_prefix('[')?.split(']').next()?;
    Some(name.trim_start_matches('[').trim().to_string())
}

/// `table.key` for every `key = ...` line of the example, commented out or not, once
/// each (the example has two `[[route]]` tables).
fn example_keys() -> Vec<String> {
    let mut table = String::new();
    let mut keys: Vec<String> = Vec::new();
    for line in EXAMPLE.lines() {
        if let Some(name) = table_header(line) {
            table = name;
        } else if let Some(key) = key_line(line) {
            let key = format!("{table}.{key}");
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// Keys whose example value names something the example does not define (a second
/// topic), needs a feature this version lacks or applies to another `fn` than the
/// example's (`quantiles`): they stay commented out when the
/// example is parsed with every other key made active.
const EXAMPLE_ONLY_KEYS: &[&str] = &["late_topic", "output_topic", "quantiles"];

/// `key` of a `key = value` or `# key = value` line.
fn key_line(line: &str) -> Option<&str> {
    let line = line.strip_prefix('#').unwrap_or(line).trim_start();
    let (key, _) = line.split_once(" = ")?;
    key.bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'_')
        .then_some(key)
}

/// The example with every `# key = value` line made active.
fn example_uncommented() -> String {
    EXAMPLE
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if key_line(rest).is_some_and(|k| !EXAMPLE_ONLY_KEYS.contains(&k)) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `table.key` for every row of the reference's key tables (under a `[table]` heading).
fn reference_keys() -> Vec<String> {
    let mut table = None;
    let mut keys = Vec::new();
    for line in REFERENCE.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            table = table_header(heading);
        } else if let (Some(table), Some(row)) = (&table, line.strip_prefix("| `")) {
            let key = row.split('`').next().unwrap_or_default();
            keys.push(format!("{table}.{key}"));
        }
    }
    keys
}

/// The field names serde knows for `T`, i.e. the keys the raw mirror accepts.
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor, value::Error};
    struct Grab(Option<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for &mut Grab {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            self.0 = Some(fields);
            Err(Error::custom("fields taken"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut grab = Grab(None);
    let _ = T::deserialize(&mut grab);
    grab.0.expect("a struct")
}

fn code_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for (table, fields) in [
        ("server", fields_of::<raw::RawServer>()),
        ("storage", fields_of::<raw::RawStorage>()),
        ("log", fields_of::<raw::RawLog>()),
        ("topic", fields_of::<raw::RawTopic>()),
        ("pipeline", fields_of::<raw::RawPipeline>()),
        ("pipeline.aggregate", fields_of::<raw::RawAggregate>()),
        ("route", fields_of::<raw::RawRoute>()),
    ] {
        // `aggregate` is the `[[pipeline.aggregate]]` table, listed on its own.
        let fields = fields
            .iter()
            .filter(|k| !(table == "pipeline" && **k == "aggregate"));
        keys.extend(fields.map(|key| format!("{table}.{key}")));
    }
    // Every table of the file is in the list above.
    assert_eq!(
        fields_of::<raw::RawConfig>(),
        ["server", "storage", "log", "topic", "pipeline", "route"]
    );
    keys
}

#[test]
fn the_example_runs_the_seed_topic() {
    let config = match Config::parse(EXAMPLE, Path::new("config.example.toml")) {
        Ok(config) => config,
        Err(errors) => panic!("config.example.toml:\n{errors}"),
    };
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert!(config.server.listen.ip().is_loopback());
    assert_eq!(config.storage.data_dir, Path::new("./data"));
    assert_eq!(config.topics.len(), 1);
    let t = config.topic("clickstream").expect("the seed's topic");
    assert_eq!(t.partitions, 4);
    assert_eq!(t.fsync, FsyncMode::Always);
    assert!(t.wrap);
    assert_eq!(t.default_event_type.as_deref(), Some("page.click"));
    assert_eq!(
        t.key_field.as_ref().map(JsonPointer::as_str),
        Some("/payload/user_id")
    );
    assert_eq!(
        t.timestamp_field.as_ref().map(JsonPointer::as_str),
        Some("/timestamp")
    );
    // DESIGN.md: the example writes `fsync = "always"` as an active line.
    assert!(EXAMPLE.lines().any(|l| l == "fsync = \"always\""));
    // The seed's Flink job and its two services.
    let p = config.pipeline("page_views").expect("the seed's pipeline");
    assert_eq!(p.source, "clickstream");
    assert_eq!(p.filter, ["page.click"]);
    assert_eq!(
        p.group_by
            .iter()
            .map(JsonPointer::as_str)
            .collect::<Vec<_>>(),
        ["/payload/page_id"]
    );
    assert_eq!(
        p.window,
        WindowConfig::Tumbling {
            size: Duration::from_secs(60)
        }
    );
    assert_eq!(p.time, PipelineTime::Event);
    assert_eq!(p.max_out_of_orderness, Duration::from_secs(5));
    assert_eq!(p.allowed_lateness, Duration::from_secs(60));
    assert_eq!(p.aggregates.len(), 1);
    assert_eq!(
        (p.aggregates[0].name.as_str(), p.aggregates[0].func),
        ("count", crate::pipeline::aggregate::AggFn::Count)
    );
    assert_eq!(
        config.routes,
        [
            RouteConfig {
                method: RouteMethod::Post,
                path: "/click".into(),
                target: RouteTarget::Ingest {
                    topic: "clickstream".into()
                },
                response: RouteResponse::Seed,
            },
            RouteConfig {
                method: RouteMethod::Get,
                path: "/page/{page_id}/count".into(),
                target: RouteTarget::Query {
                    pipeline: "page_views".into(),
                    key: "page_id".into(),
                    aggregate: Some("count".into()),
                    window: QueryWindow::LastClosed,
                },
                response: RouteResponse::Seed,
            },
        ]
    );
}

#[test]
fn the_examples_commented_values_are_the_defaults() {
    let active = parse(EXAMPLE);
    let mut all = parse(&example_uncommented());
    // The keys without a default show an example value instead.
    assert!(all.server.memory_max.is_some());
    assert!(all.topics[0].retention_size.is_some());
    assert!(all.pipelines[0].aggregates[0].field.is_some());
    all.server.memory_max = None;
    all.topics[0].retention_size = None;
    all.pipelines[0].aggregates[0].field = None;
    assert_eq!(all, active);
    let mut defaults = parse("[[topic]]\nname = \"clickstream\"\n");
    let seed = &active.topics[0];
    defaults.topics[0].key_field = seed.key_field.clone();
    defaults.topics[0].wrap = seed.wrap;
    defaults.topics[0].timestamp_field = seed.timestamp_field.clone();
    defaults.topics[0].default_event_type = seed.default_event_type.clone();
    defaults.pipelines = active.pipelines.clone();
    defaults.routes = active.routes.clone();
    assert_eq!(
        defaults, active,
        "the example's active lines other than the seed's own are defaults"
    );
    let seed = &active.pipelines[0];
    let mut pipeline = PipelineConfig::new("page_views", "clickstream");
    pipeline.filter = seed.filter.clone();
    pipeline.group_by = seed.group_by.clone();
    pipeline.window = seed.window;
    pipeline.max_out_of_orderness = seed.max_out_of_orderness;
    pipeline.allowed_lateness = seed.allowed_lateness;
    pipeline.aggregates = seed.aggregates.clone();
    assert_eq!(
        &pipeline, seed,
        "the pipeline's active lines other than the seed's own are defaults"
    );
}

#[test]
fn example_reference_and_code_list_the_same_keys() {
    let example = example_keys();
    let reference = reference_keys();
    let code = code_keys();
    // The example's two routes each show some of the route keys: their order is not
    // the code's, so route keys are compared as a set.
    let (mut example_routes, example): (Vec<_>, Vec<_>) =
        example.into_iter().partition(|k| k.starts_with("route."));
    let (mut code_routes, code_rest): (Vec<_>, Vec<_>) =
        code.iter().cloned().partition(|k| k.starts_with("route."));
    example_routes.sort();
    code_routes.sort();
    assert_eq!(example_routes, code_routes, "config.example.toml routes");
    assert_eq!(
        example, code_rest,
        "config.example.toml against src/config/raw.rs (order too)"
    );
    assert_eq!(
        reference, code,
        "docs/configuration.md against src/config/raw.rs (order too)"
    );
}

// --- [[pipeline]] and [[route]] ---

const PIPELINE_TOPICS: &str = r#"[[topic]]
name = "clicks"
[[topic]]
name = "late"
"#;

#[test]
fn a_pipeline_with_the_required_keys_takes_the_defaults() {
    let config = parse(&format!(
        "{PIPELINE_TOPICS}{}",
        r#"[[pipeline]]
name = "p"
source = "clicks"
group_by = ["/payload/page_id", "/payload/country"]
window = { kind = "hopping", size = "10m", slide = "1m" }
[[pipeline.aggregate]]
name = "revenue"
fn = "sum"
field = "/payload/amount"
"#
    ));
    let p = &config.pipelines[0];
    let mut want = PipelineConfig::new("p", "clicks");
    want.group_by = p.group_by.clone();
    want.window = WindowConfig::Hopping {
        size: Duration::from_secs(600),
        slide: Duration::from_secs(60),
    };
    want.aggregates = p.aggregates.clone();
    assert_eq!(p, &want);
    assert_eq!(p.group_by.len(), 2);
    assert_eq!(
        p.aggregates[0].field.as_ref().map(JsonPointer::as_str),
        Some("/payload/amount")
    );
}

#[test]
fn count_distinct_and_quantiles_take_a_field_and_quantiles_their_list() {
    let config = parse(&format!(
        "{PIPELINE_TOPICS}{}",
        r#"[[pipeline]]
name = "p"
source = "clicks"
group_by = ["/payload/page_id"]
window = { kind = "hopping", size = "10m", slide = "1m" }
[[pipeline.aggregate]]
name = "users"
fn = "count_distinct"
field = "/payload/user_id"
[[pipeline.aggregate]]
name = "latency"
fn = "quantiles"
field = "/payload/latency_ms"
quantiles = [0.5, 0.9, 0.99, 0.999]
"#
    ));
    let a = &config.pipelines[0].aggregates;
    assert_eq!((a[0].func, a[0].quantiles.len()), (AggFn::CountDistinct, 0));
    assert_eq!(a[1].func, AggFn::Quantiles);
    assert_eq!(a[1].quantiles, [0.5, 0.9, 0.99, 0.999]);
    let text = format!(
        "{PIPELINE_TOPICS}{}",
        r#"[[pipeline]]
name = "p"
source = "clicks"
group_by = ["/k"]
window = { kind = "tumbling", size = "1m" }
[[pipeline.aggregate]]
name = "a"
fn = "count_distinct"
[[pipeline.aggregate]]
name = "b"
fn = "quantiles"
field = "/v"
[[pipeline.aggregate]]
name = "c"
fn = "quantiles"
field = "/v"
quantiles = [0.5, 1.0, 0.9, 0.9, 0]
[[pipeline.aggregate]]
name = "d"
fn = "count_distinct"
field = "/v"
quantiles = [0.5]
[[pipeline.aggregate]]
name = "e"
fn = "quantiles"
field = "/v"
quantiles = []
"#
    );
    assert_problems(
        &text,
        &[
            (
                "pipeline[0].aggregate[0]",
                10,
                "fn = \"count_distinct\" needs a field",
            ),
            (
                "pipeline[0].aggregate[1]",
                13,
                "fn = \"quantiles\" needs quantiles",
            ),
            (
                "pipeline[0].aggregate[2].quantiles[1]",
                21,
                "1 is not a quantile between 0 and 1",
            ),
            (
                "pipeline[0].aggregate[2].quantiles[2]",
                21,
                "0.9 does not follow 1: quantiles go ascending, each once",
            ),
            (
                "pipeline[0].aggregate[2].quantiles[3]",
                21,
                "0.9 does not follow 0.9",
            ),
            (
                "pipeline[0].aggregate[2].quantiles[4]",
                21,
                "0 is not a quantile",
            ),
            (
                "pipeline[0].aggregate[3].quantiles",
                26,
                "only applies to fn = \"quantiles\"",
            ),
            (
                "pipeline[0].aggregate[4].quantiles",
                31,
                "needs 1 to 16 quantiles, not 0",
            ),
        ],
    );
}

#[test]
fn pipeline_problems_are_all_reported_with_their_lines() {
    let text = format!(
        "{PIPELINE_TOPICS}{}",
        r#"[[pipeline]]
name = "p/1"
source = "nope"
filter = ["", "a*b"]
group_by = ["payload"]
window = { kind = "hopping", size = "10m", slide = "3m" }
time = "wall"
late_topic = "nolate"
[[pipeline.aggregate]]
name = "n"
fn = "median"
[[pipeline.aggregate]]
name = "n"
fn = "sum"
[[pipeline]]
name = "q"
source = "clicks"
window = { kind = "session", gap = "30s", max_length = "10s" }
output_topic = "missing"
[[pipeline]]
name = "q"
"#
    );
    assert_problems(
        &text,
        &[
            ("pipeline[0].name", 6, "contains '/'"),
            ("pipeline[0].source", 7, "no [[topic]] is named \"nope\""),
            ("pipeline[0].filter[0]", 8, "is empty"),
            ("pipeline[0].filter[1]", 8, "'*' inside"),
            ("pipeline[0].group_by[0]", 9, "must start with '/'"),
            ("pipeline[0].window.slide", 10, "does not divide size 10m"),
            ("pipeline[0].time", 11, "not one of \"event\", \"ingest\""),
            (
                "pipeline[0].late_topic",
                12,
                "no [[topic]] is named \"nolate\"",
            ),
            (
                "pipeline[0].aggregate[0].fn",
                15,
                "\"median\" is not one of",
            ),
            ("pipeline[0].aggregate[1]", 16, "needs a field"),
            ("pipeline[0].aggregate[1].name", 17, "already an aggregate"),
            ("pipeline[1]", 19, "needs group_by"),
            ("pipeline[1]", 19, "has no [[pipeline.aggregate]]"),
            (
                "pipeline[1].window.max_length",
                22,
                "10s is shorter than gap 30s",
            ),
            (
                "pipeline[1].output_topic",
                23,
                "no [[topic]] is named \"missing\"",
            ),
            ("pipeline[2]", 24, "has no source"),
            ("pipeline[2]", 24, "needs group_by"),
            ("pipeline[2]", 24, "has no window"),
            ("pipeline[2]", 24, "has no [[pipeline.aggregate]]"),
            ("pipeline[2].name", 25, "already defined by pipeline[1]"),
        ],
    );
}

#[test]
fn a_pipeline_may_not_feed_its_own_source() {
    let text = format!(
        "{PIPELINE_TOPICS}{}",
        r#"[[pipeline]]
name = "p"
source = "clicks"
group_by = ["/k"]
window = { kind = "tumbling", size = "1m" }
late_topic = "clicks"
output_topic = "clicks"
[[pipeline.aggregate]]
name = "count"
fn = "count"
"#
    );
    assert_problems(
        &text,
        &[
            ("pipeline[0].late_topic", 10, "the pipeline's own source"),
            ("pipeline[0].output_topic", 11, "the pipeline's own source"),
        ],
    );
}

#[test]
fn a_late_topic_and_an_output_topic_are_taken() {
    let config = parse(&format!(
        "{PIPELINE_TOPICS}{}",
        r#"[[pipeline]]
name = "p"
source = "clicks"
group_by = ["/k"]
window = { kind = "tumbling", size = "1m" }
late_topic = "late"
output_topic = "late"
[[pipeline.aggregate]]
name = "count"
fn = "count"
"#
    ));
    assert_eq!(config.pipelines[0].late_topic.as_deref(), Some("late"));
    assert_eq!(config.pipelines[0].output_topic.as_deref(), Some("late"));
}

/// A pipeline block over `source` writing to `output`, for the cycle tests.
fn relay(name: &str, source: &str, output: &str) -> String {
    format!(
        "[[pipeline]]\nname = \"{name}\"\nsource = \"{source}\"\ngroup_by = [\"/k\"]\n\
         window = {{ kind = \"tumbling\", size = \"1m\" }}\noutput_topic = \"{output}\"\n\
         [[pipeline.aggregate]]\nname = \"count\"\nfn = \"count\"\n"
    )
}

#[test]
fn output_topics_may_chain_but_not_feed_a_source_back() {
    let topics = "[[topic]]\nname = \"a\"\n[[topic]]\nname = \"b\"\n[[topic]]\nname = \"c\"\n\
                  [[topic]]\nname = \"d\"\n";
    // a -> b -> c: a two-stage chain is fine.
    let config = parse(&format!(
        "{topics}{}{}",
        relay("p", "a", "b"),
        relay("q", "b", "c")
    ));
    assert_eq!(config.pipelines.len(), 2);
    // a -> b -> c -> a: each pipeline of the loop is reported, with the path; d -> b is
    // upstream of the loop, not in it.
    let text = format!(
        "{topics}{}{}{}{}",
        relay("p", "a", "b"),
        relay("q", "b", "c"),
        relay("r", "c", "a"),
        relay("s", "d", "b"),
    );
    assert_problems(
        &text,
        &[
            (
                "pipeline[0].output_topic",
                14,
                r#"through other pipelines ("b" -> pipeline "q" -> "c" -> pipeline "r" -> "a")"#,
            ),
            (
                "pipeline[1].output_topic",
                23,
                r#"("c" -> pipeline "r" -> "a" -> pipeline "p" -> "b")"#,
            ),
            (
                "pipeline[2].output_topic",
                32,
                r#"("a" -> pipeline "p" -> "b" -> pipeline "q" -> "c")"#,
            ),
        ],
    );
}

#[test]
fn an_output_topic_needs_its_dedup() {
    let text = format!(
        "[[topic]]\nname = \"a\"\n[[topic]]\nname = \"b\"\ndedup_window = \"0s\"\n{}",
        relay("p", "a", "b")
    );
    assert_problems(
        &text,
        &[(
            "pipeline[0].output_topic",
            11,
            "whose dedup is off (dedup_window or max_dedup_entries is 0); result rows",
        )],
    );
}

#[test]
fn a_late_topic_needs_its_dedup() {
    let text = r#"[[topic]]
name = "clicks"
[[topic]]
name = "late"
dedup_window = "0s"
[[topic]]
name = "late2"
max_dedup_entries = 0
[[topic]]
name = "late3"
dedup_window = "1m"
[[pipeline]]
name = "p"
source = "clicks"
group_by = ["/k"]
window = { kind = "tumbling", size = "1m" }
late_topic = "late"
[[pipeline.aggregate]]
name = "count"
fn = "count"
[[pipeline]]
name = "q"
source = "clicks"
group_by = ["/k"]
window = { kind = "tumbling", size = "1m" }
late_topic = "late2"
[[pipeline.aggregate]]
name = "count"
fn = "count"
[[pipeline]]
name = "r"
source = "clicks"
group_by = ["/k"]
window = { kind = "tumbling", size = "1m" }
checkpoint_interval = "1m"
late_topic = "late3"
[[pipeline.aggregate]]
name = "count"
fn = "count"
"#;
    assert_problems(
        text,
        &[
            ("pipeline[0].late_topic", 17, "whose dedup is off"),
            ("pipeline[1].late_topic", 26, "whose dedup is off"),
            (
                "pipeline[2].late_topic",
                36,
                "dedup_window 1m is not longer than this pipeline's checkpoint_interval 1m",
            ),
        ],
    );
}

const ROUTE_PIPELINE: &str = r#"[[topic]]
name = "clicks"
[[pipeline]]
name = "views"
source = "clicks"
group_by = ["/payload/page_id"]
window = { kind = "tumbling", size = "1m" }
[[pipeline.aggregate]]
name = "count"
fn = "count"
"#;

#[test]
fn route_problems_are_all_reported_with_their_lines() {
    let text = format!(
        "{ROUTE_PIPELINE}{}",
        r#"[[route]]
method = "PUT"
path = "page"
[[route]]
method = "POST"
path = "/click/{id}"
topic = "clicks"
[[route]]
method = "POST"
path = "/v1/topics/clicks/events"
pipeline = "views"
topic = "clicks"
[[route]]
method = "GET"
path = "/page/{page}/count"
pipeline = "views"
key = "page_id"
aggregate = "sum"
[[route]]
method = "GET"
path = "/p/{k}"
pipeline = "views"
key = "k"
response = "seed"
[[route]]
method = "GET"
path = "/ok/{k}"
pipeline = "views"
key = "k"
[[route]]
method = "GET"
path = "/ok/{other}"
pipeline = "views"
key = "other"
window = "previous"
"#
    );
    assert_problems(
        &text,
        &[
            (
                "route[0].method",
                12,
                "\"PUT\" is not one of \"GET\", \"POST\"",
            ),
            ("route[0].path", 13, "does not start with '/'"),
            ("route[1].path", 16, "a POST route has no {placeholders}"),
            ("route[2].path", 20, "paths under /v1 are weir's own"),
            ("route[2].pipeline", 21, "only applies to GET routes"),
            ("route[3].key", 27, "the path has no {page_id} placeholder"),
            ("route[3].aggregate", 28, "has no aggregate \"sum\""),
            ("route[4]", 29, "response = \"seed\" answers one aggregate"),
            (
                "route[6].path",
                42,
                "route[5] already serves this method and path",
            ),
            ("route[6].window", 45, "\"previous\" is not one of"),
        ],
    );
}

#[test]
fn session_windows_take_a_gap_and_a_max_length_defaulting_to_a_day() {
    let config = |window: &str| {
        format!(
            "{PIPELINE_TOPICS}[[pipeline]]\nname = \"p\"\nsource = \"clicks\"\n\
             group_by = [\"/payload/user\"]\nwindow = {window}\n\
             [[pipeline.aggregate]]\nname = \"n\"\nfn = \"count\"\n"
        )
    };
    let p = parse(&config(r#"{ kind = "session", gap = "30s" }"#));
    assert_eq!(
        p.pipelines[0].window,
        WindowConfig::Session {
            gap: Duration::from_secs(30),
            max_length: Duration::from_secs(86_400),
        }
    );
    let p = parse(&config(
        r#"{ kind = "session", gap = "30s", max_length = "30s" }"#,
    ));
    assert_eq!(
        p.pipelines[0].window,
        WindowConfig::Session {
            gap: Duration::from_secs(30),
            max_length: Duration::from_secs(30),
        }
    );
    assert_problems(
        &config(r#"{ kind = "session", size = "1m" }"#),
        &[
            ("pipeline[0].window.size", 9, "a gap, not a size"),
            ("pipeline[0].window", 9, "has no gap"),
        ],
    );
}

/// Found by the `config_load` fuzz target: toml reports a dotted key of 80 or more parts
/// as "recursion limit" with no span, so the problem named neither a key nor a line.
#[test]
fn a_key_of_too_many_dotted_parts_names_its_line() {
    let dots = ".".repeat(98);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\" # a.b.c\nratio = 1.5\n{dots}\n[[topic]]\nname = \"a\"\n"
    );
    let got = problems(&text);
    assert!(!got.is_empty());
    for (path, line, message) in &got {
        assert!(
            !path.is_empty() || line.is_some(),
            "{path:?} {line:?} {message}"
        );
    }
    let limit = got
        .iter()
        .find(|(_, _, m)| m.contains("recursion limit"))
        .expect("the recursion limit is reported");
    assert_eq!(limit.0, "server");
    assert_eq!(limit.1, Some(4));
    assert!(limit.2.contains("80 or more parts"), "{}", limit.2);

    // The fuzzer's own input, in short: every problem says where.
    let found = "\n[se,rver]\nlisten = \"127.0.0.1:0\"\n".to_string()
        + &".".repeat(98)
        + "\n[[topic\"ahname = \"clicks\"\n";
    for (path, line, message) in problems(&found) {
        assert!(
            !path.is_empty() || line.is_some(),
            "{path:?} {line:?} {message}"
        );
    }
}

/// Found by the `config_load` fuzz target: after a syntax error toml's recovery read the
/// dots behind a stray quote as key parts, so a line search that skips quoted text found
/// no long key and the problem again named neither a key nor a line.
#[test]
fn a_long_dotted_key_behind_a_stray_quote_names_its_line() {
    let dots = ".".repeat(88);
    for text in [
        format!("[[pipeline]]\nname = \"p/1\"\nso&icks\"{dots}\ngr\n"),
        format!("[[pipeline]]\nwindow = {{ kind = \"a= \"10m\" \"b\", size = \"05m\",{dots}\n"),
    ] {
        let got = problems(&text);
        let limit = got
            .iter()
            .find(|(_, _, m)| m.contains("recursion limit"))
            .unwrap_or_else(|| panic!("no recursion limit in {got:?}"));
        assert!(limit.1.is_some(), "{limit:?}");
        assert!(
            text.lines()
                .nth(limit.1.unwrap() - 1)
                .unwrap()
                .contains(&dots),
            "{limit:?} does not point at the dots"
        );
    }
}
