//! Configuration: the TOML file (a raw serde mirror) validated into typed settings.
//!
//! Reading happens in two stages. [`raw`] mirrors the file key for key, every value
//! optional and spanned; this module then applies defaults and checks every value,
//! collecting every problem (key path, line, message) instead of stopping at the first,
//! so `weir check-config` can list them all at once. The result, [`Config`], holds only
//! checked values with units applied (bytes, [`Duration`]s, parsed addresses and
//! pointers); nothing downstream parses config text again.
//!
//! Owned here: key names, defaults, and the checks that need nothing but the file.
//! Not owned here: anything that needs the machine (is the port free, is the data dir
//! writable, is the listen address loopback — that is a warning at run time).
//!
//! The reference for users is docs/configuration.md; config.example.toml shows every
//! key with its default. Tests below keep the two and [`raw`] in step.

mod pipeline;
mod raw;
pub mod units;

pub use pipeline::{
    AggregateConfig, PipelineConfig, PipelineTime, QueryWindow, RouteConfig, RouteMethod,
    RouteResponse, RouteTarget, WindowConfig,
};

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::json::JsonPointer;
use crate::log::topic_name::{is_internal, validate_topic_name};
use raw::{Quantity, RawConfig, RawLog, RawServer, RawStorage, RawTopic};
use units::{format_duration, format_size, parse_duration, parse_size};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Fewest bytes a request body may be limited to: below this not even one realistic
/// event fits.
pub const MAX_BODY_MIN: u64 = KIB;
/// Most bytes a request body may be limited to: a body is held in memory while it is
/// parsed, so one request must not be able to take the machine.
pub const MAX_BODY_MAX: u64 = GIB;
/// Most connections: each is a file descriptor and a task; past this one machine runs
/// out of descriptors long before weir's own bounds bite.
pub const MAX_CONNECTIONS_MAX: usize = 100_000;
/// Most partitions per topic: each is a directory with open segment and index files,
/// so this bounds file descriptors and per-partition memory.
pub const PARTITIONS_MAX: u32 = 10_000;
/// Smallest segment: tiny segments are allowed so tests roll and recover all the time
/// ("cold code is buggy code"); smaller than this is no longer a log, only overhead.
pub const SEGMENT_SIZE_MIN: u64 = KIB;
/// Largest segment: Kafka's default. Positions inside a segment then fit in 32 bits with
/// room for a batch that overshoots the roll point, as Kafka's index format needs;
/// bigger segments would only make retention coarser.
pub const SEGMENT_SIZE_MAX: u64 = GIB;
/// Most dedup entries per topic: the table lives in memory (tens of bytes an entry).
pub const MAX_DEDUP_ENTRIES_MAX: usize = 100_000_000;
/// Longest duration anywhere: deadlines are computed as `now + duration` and must not
/// overflow; a century is longer than any sensible setting.
pub const DURATION_MAX: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Log levels accepted by `[log] level`.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// The file, checked, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    /// `[[topic]]` tables in file order; names are unique.
    pub topics: Vec<TopicConfig>,
    /// `[[pipeline]]` tables in file order; names are unique, sources are topics above.
    pub pipelines: Vec<PipelineConfig>,
    /// `[[route]]` tables in file order; no two serve the same method and path.
    pub routes: Vec<RouteConfig>,
    /// The file this came from, for messages.
    pub source: PathBuf,
}

/// `[server]`: the HTTP listener and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address and port to bind; an IP address, host names are not resolved.
    pub listen: SocketAddr,
    /// Largest request body in bytes (413 above it, decided from the headers).
    pub max_body: u64,
    /// Longest event key in bytes.
    pub max_key: usize,
    /// Most open client connections.
    pub max_connections: usize,
    /// Most request bytes being handled at once, across all requests (503 above it).
    pub max_inflight: u64,
    /// Most open SSE streams.
    pub max_streams: usize,
    /// Time for a client to send the request headers.
    pub header_timeout: Duration,
    /// Time for a client to send the request body.
    pub body_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// The resident memory bound other limits are sized to, if any.
    pub memory_max: Option<u64>,
}

/// `[storage]`: the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Directory holding the log and the result store; relative paths are taken from the
    /// working directory, not from the config file's directory.
    pub data_dir: PathBuf,
    /// sled's page cache in bytes.
    pub sled_cache: u64,
    /// Free disk space kept back; appends are refused (507) below it.
    pub free_space_reserve: u64,
}

/// `[log]`: weir's own diagnostic output (not the event log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// One of [`LOG_LEVELS`].
    pub level: String,
    pub format: LogFormat,
}

/// How diagnostic lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[[topic]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub name: String,
    pub partitions: u32,
    pub fsync: FsyncMode,
    /// How often buffered writes are synced under [`FsyncMode::Interval`].
    pub fsync_interval: Duration,
    /// A segment rolls once it holds this many bytes.
    pub segment_size: u64,
    /// A segment rolls once its first append is this old.
    pub segment_age: Duration,
    /// Sealed segments whose newest append is older than this are deleted; `None` keeps
    /// them forever.
    pub retention_age: Option<Duration>,
    /// Oldest segments are deleted while a partition holds more bytes than this; `None`
    /// is unbounded.
    pub retention_size: Option<u64>,
    /// A client `event_id` seen within this window is a duplicate; zero disables dedup.
    pub dedup_window: Duration,
    /// Most event ids remembered per topic (oldest evicted first).
    pub max_dedup_entries: usize,
    /// Where the key is found in the envelope when the request gives none.
    pub key_field: Option<JsonPointer>,
    /// Whether an object without `payload` is wrapped as the payload.
    pub wrap: bool,
    /// Where a wrapped object's event time is found, in the object as sent.
    pub timestamp_field: Option<JsonPointer>,
    /// The event type of events that name none.
    pub default_event_type: Option<String>,
    /// Events older than now minus this are out of bounds.
    pub max_event_age: Duration,
    /// Events newer than now plus this are out of bounds.
    pub max_event_lead: Duration,
    /// What happens to out-of-bounds event times.
    pub on_bad_time: OnBadTime,
}

/// When an append is made durable; see DESIGN.md "The log".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Answer after fdatasync (group commit).
    Always,
    /// Answer after write(2); sync every `fsync_interval`.
    Interval,
    /// Answer after write(2); the OS syncs when it likes.
    Never,
}

/// What to do with an event time outside `[now - max_event_age, now + max_event_lead]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadTime {
    /// 400, nothing appended.
    Reject,
    /// Move the time to the nearest bound.
    Clamp,
}

impl FsyncMode {
    /// The word used in the TOML file.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Interval => "interval",
            FsyncMode::Never => "never",
        }
    }
}

impl OnBadTime {
    /// The word used in the TOML file.
    pub fn as_str(self) -> &'static str {
        match self {
            OnBadTime::Reject => "reject",
            OnBadTime::Clamp => "clamp",
        }
    }
}

impl LogFormat {
    /// The word used in the TOML file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for FsyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for OnBadTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The defaults are what an empty `[server]` means.
impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body: 16 * MIB,
            max_key: 4 * 1024,
            max_connections: 1024,
            max_inflight: 64 * MIB,
            max_streams: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            memory_max: None,
        }
    }
}

/// The defaults are what an empty or absent `[storage]` means.
impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            sled_cache: 8 * MIB,
            free_space_reserve: 256 * MIB,
        }
    }
}

/// The defaults are what an empty or absent `[log]` means.
impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

impl TopicConfig {
    /// A topic with every setting at its default, as a `[[topic]]` with only `name`.
    pub fn new(name: impl Into<String>) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            partitions: 4,
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_millis(100),
            segment_size: 128 * MIB,
            segment_age: Duration::from_secs(24 * 60 * 60),
            retention_age: Some(Duration::from_secs(7 * 24 * 60 * 60)),
            retention_size: None,
            dedup_window: Duration::from_secs(10 * 60),
            max_dedup_entries: 1_000_000,
            key_field: None,
            wrap: false,
            timestamp_field: None,
            default_event_type: None,
            max_event_age: Duration::from_secs(7 * 24 * 60 * 60),
            max_event_lead: Duration::from_secs(60 * 60),
            on_bad_time: OnBadTime::Reject,
        }
    }
}

impl Config {
    /// Reads and checks the file at `path`. A read failure is one problem naming the path.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(err) => Err(ConfigErrors {
                problems: vec![ConfigProblem {
                    file: path.to_path_buf(),
                    key_path: String::new(),
                    line: None,
                    message: format!("cannot read the config file: {err}"),
                }],
                truncated: false,
            }),
        }
    }

    /// Checks `text`, the contents of the file `source`, reporting every problem found, up
    /// to [`PROBLEMS_MAX`] in file order.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigErrors> {
        let mut check = Checker {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
            source,
            problems: Vec::new(),
        };
        let (raw, problems, truncated) = raw::read(text);
        for problem in problems {
            check.problem(problem.key_path, problem.span, problem.message);
        }
        let config = raw.map(|raw| check.config(raw));
        match config {
            Some(config) if check.problems.is_empty() => Ok(config),
            _ => {
                // Reported in file order; problems without a line (none so far) first.
                check.problems.sort_by_key(|p| p.line);
                let truncated = truncated || check.problems.len() > PROBLEMS_MAX;
                check.problems.truncate(PROBLEMS_MAX);
                Err(ConfigErrors {
                    problems: check.problems,
                    truncated,
                })
            }
        }
    }

    /// The topic called `name`.
    pub fn topic(&self, name: &str) -> Option<&TopicConfig> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// The pipeline called `name`.
    pub fn pipeline(&self, name: &str) -> Option<&PipelineConfig> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}

/// The most problems one check reports. A file with more is usually not a config file
/// at all, or has a syntax error that the parser's recovery turns into a cascade; the
/// first ones are what to fix, and finding the position of thousands is slow.
pub const PROBLEMS_MAX: usize = 100;

/// Everything wrong with a config file; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// In file order, at most [`PROBLEMS_MAX`].
    pub problems: Vec<ConfigProblem>,
    /// The check stopped at [`PROBLEMS_MAX`] problems; there may be more.
    pub truncated: bool,
}

/// One thing wrong, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The config file.
    pub file: PathBuf,
    /// Where in the file's structure, e.g. `topic[1].fsync_interval` or `server.listen`;
    /// empty when the problem is the file as a whole.
    pub key_path: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

/// `<file>:<line>: <key_path>: <message>`, leaving out what is unknown.
impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key_path.is_empty() {
            write!(f, ": {}", self.key_path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One problem per line.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        if let (true, Some(first)) = (self.truncated, self.problems.first()) {
            write!(
                f,
                "\n{}: stopped after {PROBLEMS_MAX} problems; fix these and check again",
                first.file.display()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while turning the raw mirror into a [`Config`].
struct Checker<'a> {
    /// The byte offset of every `\n` in the text, to turn a span into a line.
    newlines: Vec<usize>,
    source: &'a Path,
    problems: Vec<ConfigProblem>,
}

impl Checker<'_> {
    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&newline| newline < offset) + 1
    }

    fn problem(&mut self, key_path: String, span: Option<Range<usize>>, message: String) {
        let line = span.map(|s| self.line(s.start));
        self.problems.push(ConfigProblem {
            file: self.source.to_path_buf(),
            key_path,
            line,
            message,
        });
    }

    fn at<T>(&mut self, key_path: &str, value: &Spanned<T>, message: String) {
        self.problem(key_path.to_string(), Some(value.span()), message);
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let raw_server = raw.server.unwrap_or_default().0;
        let raw_memory_max_span = raw_server.memory_max.as_ref().map(Spanned::span);
        let server = self.server(raw_server);
        let storage = self.storage(raw.storage.unwrap_or_default().0);
        if let Some(memory_max) = server.memory_max {
            let floor = server.max_inflight.saturating_add(storage.sled_cache);
            if memory_max <= floor {
                self.problem(
                    "server.memory_max".to_string(),
                    raw_memory_max_span,
                    format!(
                        "{} leaves nothing beyond server.max_inflight ({}) and \
                         storage.sled_cache ({}); raise it or lower those",
                        format_size(memory_max),
                        format_size(server.max_inflight),
                        format_size(storage.sled_cache)
                    ),
                );
            }
        }
        let log = self.log(raw.log.unwrap_or_default().0);
        let mut topics: Vec<TopicConfig> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, raw_topic) in raw.topic.unwrap_or_default().into_iter().enumerate() {
            let at = format!("topic[{i}]");
            let header = raw_topic.span();
            let raw_topic = raw_topic.into_inner().0;
            if let Some(name) = &raw_topic.name
                && let Some(first) = seen.insert(name.get_ref().clone(), i)
            {
                self.at(
                    &format!("{at}.name"),
                    name,
                    format!(
                        "topic {:?} is already defined by topic[{first}]",
                        name.get_ref()
                    ),
                );
            }
            if let Some(topic) = self.topic(&at, header, raw_topic) {
                topics.push(topic);
            }
        }
        let pipelines = self.pipelines(raw.pipeline.unwrap_or_default(), &topics);
        let routes = self.routes(raw.route.unwrap_or_default(), &topics, &pipelines);
        Config {
            server,
            storage,
            log,
            topics,
            pipelines,
            routes,
            source: self.source.to_path_buf(),
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let d = ServerConfig::default();
        let listen = match &raw.listen {
            None => d.listen,
            Some(text) => text.get_ref().parse().unwrap_or_else(|_| {
                self.at(
                    "server.listen",
                    text,
                    format!(
                        "{:?} is not an IP address and port such as \"127.0.0.1:8080\" \
                         (host names are not resolved)",
                        text.get_ref()
                    ),
                );
                d.listen
            }),
        };
        let max_body = self.size(
            "server.max_body",
            &raw.max_body,
            d.max_body,
            MAX_BODY_MIN..=MAX_BODY_MAX,
        );
        // A key is part of a body, so an unset max_key follows a small max_body down.
        let max_key_default = u64::try_from(d.max_key).unwrap_or(u64::MAX).min(max_body);
        let max_key = self.size(
            "server.max_key",
            &raw.max_key,
            max_key_default,
            1..=max_body,
        );
        let max_inflight = self.size(
            "server.max_inflight",
            &raw.max_inflight,
            d.max_inflight,
            1..=u64::MAX,
        );
        if max_inflight < max_body {
            // Blame the key the user wrote; max_inflight if both.
            let (key, span) = match (&raw.max_inflight, &raw.max_body) {
                (Some(text), _) => ("server.max_inflight", Some(text.span())),
                (None, Some(text)) => ("server.max_body", Some(text.span())),
                // Not with today's defaults (64MiB holds 16MiB); kept total all the same.
                (None, None) => ("server.max_inflight", None),
            };
            self.problem(
                key.to_string(),
                span,
                format!(
                    "max_inflight ({}) is below max_body ({}): the largest allowed request \
                     could never be admitted",
                    format_size(max_inflight),
                    format_size(max_body)
                ),
            );
        }
        ServerConfig {
            listen,
            max_body,
            max_key: self.bytes_as_usize("server.max_key", &raw.max_key, max_key),
            max_connections: self.count(
                "server.max_connections",
                &raw.max_connections,
                d.max_connections,
                1..=MAX_CONNECTIONS_MAX,
            ),
            max_inflight,
            max_streams: self.count(
                "server.max_streams",
                &raw.max_streams,
                d.max_streams,
                1..=MAX_CONNECTIONS_MAX,
            ),
            header_timeout: self.duration(
                "server.header_timeout",
                &raw.header_timeout,
                d.header_timeout,
                true,
            ),
            body_timeout: self.duration(
                "server.body_timeout",
                &raw.body_timeout,
                d.body_timeout,
                true,
            ),
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                &raw.shutdown_grace,
                d.shutdown_grace,
                false,
            ),
            // A bad value is reported and read as absent (0 is outside the range).
            memory_max: raw
                .memory_max
                .is_some()
                .then(|| self.size("server.memory_max", &raw.memory_max, 0, 1..=u64::MAX))
                .filter(|&bytes| bytes > 0),
        }
    }

    fn storage(&mut self, raw: RawStorage) -> StorageConfig {
        let d = StorageConfig::default();
        let data_dir = match raw.data_dir {
            None => d.data_dir,
            Some(text) if text.get_ref().is_empty() => {
                self.at(
                    "storage.data_dir",
                    &text,
                    "is empty; e.g. \"./data\"".to_string(),
                );
                d.data_dir
            }
            Some(text) => PathBuf::from(text.into_inner()),
        };
        StorageConfig {
            data_dir,
            sled_cache: self.size(
                "storage.sled_cache",
                &raw.sled_cache,
                d.sled_cache,
                0..=u64::MAX,
            ),
            free_space_reserve: self.size(
                "storage.free_space_reserve",
                &raw.free_space_reserve,
                d.free_space_reserve,
                0..=u64::MAX,
            ),
        }
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let d = LogConfig::default();
        let level = match raw.level {
            None => d.level,
            Some(text) if LOG_LEVELS.contains(&text.get_ref().as_str()) => text.into_inner(),
            Some(text) => {
                self.at("log.level", &text, one_of(text.get_ref(), LOG_LEVELS));
                d.level
            }
        };
        let format = self.choice(
            "log.format",
            &raw.format,
            d.format,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );
        LogConfig { level, format }
    }

    /// `None` when the topic has no usable name (already reported).
    fn topic(&mut self, at: &str, header: Range<usize>, raw: RawTopic) -> Option<TopicConfig> {
        let name = match &raw.name {
            None => {
                self.problem(
                    at.to_string(),
                    Some(header),
                    "has no name; every [[topic]] needs name = \"...\"".to_string(),
                );
                None
            }
            Some(name) => {
                let key = format!("{at}.name");
                if let Err(why) = validate_topic_name(name.get_ref()) {
                    self.at(&key, name, why);
                    None
                } else if is_internal(name.get_ref()) {
                    self.at(
                        &key,
                        name,
                        format!(
                            "topic names starting with \"__\" are weir's own; {:?} cannot be \
                             configured",
                            name.get_ref()
                        ),
                    );
                    None
                } else {
                    Some(name.get_ref().clone())
                }
            }
        };
        let d = TopicConfig::new(name.clone().unwrap_or_default());
        let key = |k: &str| format!("{at}.{k}");
        let partitions = self.count(
            &key("partitions"),
            &raw.partitions,
            d.partitions,
            1..=PARTITIONS_MAX,
        );
        let fsync = self.choice(
            &key("fsync"),
            &raw.fsync,
            d.fsync,
            &[
                ("always", FsyncMode::Always),
                ("interval", FsyncMode::Interval),
                ("never", FsyncMode::Never),
            ],
        );
        let fsync_interval = self.duration(
            &key("fsync_interval"),
            &raw.fsync_interval,
            d.fsync_interval,
            true,
        );
        let segment_size = self.size(
            &key("segment_size"),
            &raw.segment_size,
            d.segment_size,
            SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX,
        );
        let segment_age = self.duration(&key("segment_age"), &raw.segment_age, d.segment_age, true);
        let retention_age = match &raw.retention_age {
            Some(text) if text.get_ref().0 == "none" => None,
            _ => Some(self.duration(
                &key("retention_age"),
                &raw.retention_age,
                d.retention_age.unwrap_or(DURATION_MAX),
                true,
            )),
        };
        let retention_size = match &raw.retention_size {
            None => None,
            Some(text) if text.get_ref().0 == "none" => None,
            Some(_) => {
                Some(self.size(&key("retention_size"), &raw.retention_size, 0, 1..=u64::MAX))
            }
        };
        let dedup_window = self.duration(
            &key("dedup_window"),
            &raw.dedup_window,
            d.dedup_window,
            false,
        );
        let max_dedup_entries = self.count(
            &key("max_dedup_entries"),
            &raw.max_dedup_entries,
            d.max_dedup_entries,
            0..=MAX_DEDUP_ENTRIES_MAX,
        );
        let key_field = self.pointer(&key("key_field"), &raw.key_field);
        let wrap = raw.wrap.as_ref().map_or(d.wrap, |w| *w.get_ref());
        let timestamp_field = self.pointer(&key("timestamp_field"), &raw.timestamp_field);
        if let Some(text) = &raw.timestamp_field
            && !wrap
        {
            self.at(
                &key("timestamp_field"),
                text,
                "only applies to objects wrapped as the payload; set wrap = true or remove it \
                 (an envelope gives its time in \"timestamp\")"
                    .to_string(),
            );
        }
        let default_event_type = match raw.default_event_type {
            Some(text) if text.get_ref().is_empty() => {
                self.at(&key("default_event_type"), &text, "is empty".to_string());
                None
            }
            other => other.map(Spanned::into_inner),
        };
        let max_event_age = self.duration(
            &key("max_event_age"),
            &raw.max_event_age,
            d.max_event_age,
            true,
        );
        let max_event_lead = self.duration(
            &key("max_event_lead"),
            &raw.max_event_lead,
            d.max_event_lead,
            false,
        );
        let on_bad_time = self.choice(
            &key("on_bad_time"),
            &raw.on_bad_time,
            d.on_bad_time,
            &[("reject", OnBadTime::Reject), ("clamp", OnBadTime::Clamp)],
        );
        Some(TopicConfig {
            name: name?,
            partitions,
            fsync,
            fsync_interval,
            segment_size,
            segment_age,
            retention_age,
            retention_size,
            dedup_window,
            max_dedup_entries,
            key_field,
            wrap,
            timestamp_field,
            default_event_type,
            max_event_age,
            max_event_lead,
            on_bad_time,
        })
    }

    /// A size within `range`, or `default` when absent (or bad, after reporting it).
    fn size(
        &mut self,
        key: &str,
        raw: &Option<Spanned<Quantity>>,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> u64 {
        let Some(text) = raw else { return default };
        match parse_size(&text.get_ref().0) {
            Err(why) => {
                self.at(key, text, why);
                default
            }
            Ok(bytes) if range.contains(&bytes) => bytes,
            Ok(bytes) => {
                let why = if bytes < *range.start() {
                    format!(
                        "{} is below the minimum {}",
                        format_size(bytes),
                        format_size(*range.start())
                    )
                } else {
                    format!(
                        "{} is above the maximum {}",
                        format_size(bytes),
                        format_size(*range.end())
                    )
                };
                self.at(key, text, why);
                default
            }
        }
    }

    /// A duration up to [`DURATION_MAX`], above zero when `positive`, or `default`.
    fn duration(
        &mut self,
        key: &str,
        raw: &Option<Spanned<Quantity>>,
        default: Duration,
        positive: bool,
    ) -> Duration {
        let Some(text) = raw else { return default };
        match parse_duration(&text.get_ref().0) {
            Err(why) => {
                self.at(key, text, why);
                default
            }
            Ok(d) if d.is_zero() && positive => {
                self.at(key, text, "must be above zero".to_string());
                default
            }
            Ok(d) if d > DURATION_MAX => {
                self.at(
                    key,
                    text,
                    format!(
                        "{} is above the maximum {}",
                        format_duration(d),
                        format_duration(DURATION_MAX)
                    ),
                );
                default
            }
            Ok(d) => d,
        }
    }

    /// A TOML integer within `range`, converted without casts, or `default`.
    fn count<T>(
        &mut self,
        key: &str,
        raw: &Option<Spanned<i64>>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> T
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display + Copy,
    {
        let Some(value) = raw else { return default };
        match T::try_from(*value.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.at(
                    key,
                    value,
                    format!(
                        "{} is out of range; allowed are {} to {}",
                        value.get_ref(),
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// A byte count as `usize`; only fails on targets narrower than the value.
    fn bytes_as_usize(&mut self, key: &str, raw: &Option<Spanned<Quantity>>, bytes: u64) -> usize {
        usize::try_from(bytes).unwrap_or_else(|_| {
            let span = raw.as_ref().map(Spanned::span);
            self.problem(
                key.to_string(),
                span,
                "is too large for this machine".to_string(),
            );
            usize::MAX
        })
    }

    /// One of the words in `choices`, or `default`.
    fn choice<T: Copy>(
        &mut self,
        key: &str,
        raw: &Option<Spanned<String>>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(text) = raw else { return default };
        if let Some(&(_, value)) = choices.iter().find(|(word, _)| word == text.get_ref()) {
            return value;
        }
        let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
        self.at(key, text, one_of(text.get_ref(), &words));
        default
    }

    /// A JSON pointer to a member (not the whole document).
    fn pointer(&mut self, key: &str, raw: &Option<Spanned<String>>) -> Option<JsonPointer> {
        let text = raw.as_ref()?;
        match JsonPointer::parse(text.get_ref()) {
            Ok(pointer) if pointer.tokens().is_empty() => {
                self.at(
                    key,
                    text,
                    "points at the whole object; name a member, e.g. \"/payload/user_id\""
                        .to_string(),
                );
                None
            }
            Ok(pointer) => Some(pointer),
            Err(why) => {
                self.at(key, text, why);
                None
            }
        }
    }
}

fn one_of(got: &str, words: &[&str]) -> String {
    let words: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    format!("{got:?} is not one of {}", words.join(", "))
}

#[cfg(test)]
mod tests;
