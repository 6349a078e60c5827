//! `[[pipeline]]` and `[[route]]`: the typed settings and their checks.
//!
//! Checks that need the whole file (a pipeline's source is a configured topic, a route's
//! aggregate is one of its pipeline's) run after the topics are read.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use toml::Spanned;

use super::raw::{Quantity, RawAggregate, RawPipeline, RawRoute, RawWindow, Table};
use super::units::format_duration;
use super::{Checker, TopicConfig, one_of};
use crate::json::JsonPointer;
use crate::log::topic_name::validate_topic_name;
use crate::pipeline::aggregate::AggFn;

/// Most open windows a pipeline may be allowed: each is state in memory.
pub const MAX_OPEN_WINDOWS_MAX: usize = 100_000_000;
/// Most `group_by` pointers: a key is all of their values.
pub const GROUP_BY_MAX: usize = 16;
/// Most aggregates per pipeline: each is state in every (window, key).
pub const AGGREGATES_MAX: usize = 64;
/// Most quantiles of one `quantiles` aggregate: each is computed for every row shown.
pub const QUANTILES_MAX: usize = 16;

/// Paths weir answers itself; a route may not shadow them.
const RESERVED_PATHS: &[&str] = &["/metrics", "/healthz", "/readyz"];

/// One `[[pipeline]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Unique; the topic-name grammar, as it appears in URLs.
    pub name: String,
    /// The topic it reads.
    pub source: String,
    /// Event types taken: exact names and `prefix*`; empty takes every event.
    pub filter: Vec<String>,
    /// The key: the values at these pointers into the envelope.
    pub group_by: Vec<JsonPointer>,
    pub window: WindowConfig,
    pub time: PipelineTime,
    /// How far behind the newest event time of a partition its watermark stays.
    pub max_out_of_orderness: Duration,
    /// A partition without appends for this long (in append time) stops holding the
    /// watermark back.
    pub idle_timeout: Duration,
    /// How long after its end a window still takes late events.
    pub allowed_lateness: Duration,
    /// How often window state, offsets and results are committed.
    pub checkpoint_interval: Duration,
    /// Most open windows (window, key) held; beyond it windows are marked incomplete.
    pub max_open_windows: usize,
    /// Results are kept this long after their window's end (measured in watermark).
    pub retain_results: Duration,
    /// Most result rows (window, key) the hot view holds in memory; older closed windows
    /// are answered from the result store.
    pub max_view_rows: usize,
    /// `/readyz` waits once after start until the pipeline is this many records behind.
    pub ready_lag: u64,
    /// Where late events are appended, if anywhere.
    pub late_topic: Option<String>,
    /// Where changed result rows are appended, if anywhere.
    pub output_topic: Option<String>,
    /// In file order; names unique.
    pub aggregates: Vec<AggregateConfig>,
}

/// A pipeline's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowConfig {
    Tumbling {
        size: Duration,
    },
    /// `size` is a multiple of `slide`.
    Hopping {
        size: Duration,
        slide: Duration,
    },
    /// Per key, events closer than `gap` share a session; a session spans at most
    /// `max_length` (at least `gap`).
    Session {
        gap: Duration,
        max_length: Duration,
    },
}

/// `max_length` of a session window when the config leaves it out.
pub const SESSION_MAX_LENGTH_DEFAULT: Duration = Duration::from_secs(86_400);

impl WindowConfig {
    /// The time between two window starts (starts are its multiples since the epoch);
    /// `None` for sessions, whose starts are event times.
    pub fn stride(self) -> Option<Duration> {
        match self {
            WindowConfig::Tumbling { size } => Some(size),
            WindowConfig::Hopping { slide, .. } => Some(slide),
            WindowConfig::Session { .. } => None,
        }
    }
}

/// Which time assigns windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineTime {
    /// The event's timestamp.
    Event,
    /// The append time of its batch.
    Ingest,
}

/// One `[[pipeline.aggregate]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    pub name: String,
    pub func: AggFn,
    /// Required unless `func` is count.
    pub field: Option<JsonPointer>,
    /// For `fn = "quantiles"`: each in (0, 1), ascending; empty for other functions.
    pub quantiles: Vec<f64>,
}

/// One `[[route]]`: a path of the seed's services served by weir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub method: RouteMethod,
    /// Literal segments and whole-segment `{name}` placeholders.
    pub path: String,
    pub target: RouteTarget,
    pub response: RouteResponse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteMethod {
    Get,
    Post,
}

/// What a route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// POST: ingest the body into `topic`.
    Ingest { topic: String },
    /// GET: the window of the key named by placeholder `key` in `pipeline`'s results.
    Query {
        pipeline: String,
        key: String,
        aggregate: Option<String>,
        window: QueryWindow,
    },
}

/// Which window of a key a query answers; see DESIGN.md "HTTP API".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryWindow {
    Latest,
    LastClosed,
    Current,
}

/// The shape of a route's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteResponse {
    /// The seed's: `{"status": "accepted"}` (200) for ingest, `{"<key>": ..., "<aggregate>": ...}`
    /// for queries, 0 for a key without a window.
    Seed,
    /// The same answers as the `/v1` routes.
    V1,
}

impl PipelineConfig {
    /// A pipeline with the defaults, for tests and as the defaults' one source.
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> PipelineConfig {
        PipelineConfig {
            name: name.into(),
            source: source.into(),
            filter: Vec::new(),
            group_by: Vec::new(),
            window: WindowConfig::Tumbling {
                size: Duration::from_secs(60),
            },
            time: PipelineTime::Event,
            max_out_of_orderness: Duration::ZERO,
            idle_timeout: Duration::from_secs(30),
            allowed_lateness: Duration::ZERO,
            checkpoint_interval: Duration::from_secs(1),
            max_open_windows: 1_000_000,
            retain_results: Duration::from_secs(7 * 24 * 60 * 60),
            max_view_rows: 200_000,
            ready_lag: 10_000,
            late_topic: None,
            output_topic: None,
            aggregates: Vec::new(),
        }
    }
}

/// The path by which pipeline `p`'s output topic reaches its own source through other
/// pipelines (each reads a topic and writes its rows to its `output_topic`), as text:
/// `"x" -> pipeline "b" -> "a"`; `None` without such a cycle. The direct self-loop is
/// reported on its own. A breadth-first walk over topics: the shortest path is reported.
fn output_cycle(pipelines: &[PipelineConfig], p: usize) -> Option<String> {
    let me = &pipelines[p];
    let start = me.output_topic.as_deref()?;
    if start == me.source {
        return None;
    }
    // Per topic reached: the pipeline that wrote to it on the way (None for the start).
    let mut via: HashMap<&str, Option<usize>> = HashMap::from([(start, None)]);
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(topic) = queue.pop_front() {
        for (q, other) in pipelines.iter().enumerate() {
            let Some(next) = other.output_topic.as_deref() else {
                continue;
            };
            if other.source != topic || via.contains_key(next) {
                continue;
            }
            via.insert(next, Some(q));
            if next == me.source {
                let mut steps = vec![format!("{next:?}")];
                let mut at = next;
                while let Some(Some(q)) = via.get(at) {
                    steps.push(format!("pipeline {:?}", pipelines[*q].name));
                    at = pipelines[*q].source.as_str();
                    steps.push(format!("{at:?}"));
                }
                steps.reverse();
                return Some(steps.join(" -> "));
            }
            queue.push_back(next);
        }
    }
    None
}

impl Checker<'_> {
    /// Every `[[pipeline]]`, checked against the topics already read.
    pub(super) fn pipelines(
        &mut self,
        raw: Vec<Spanned<Table<RawPipeline>>>,
        topics: &[TopicConfig],
    ) -> Vec<PipelineConfig> {
        let mut out: Vec<PipelineConfig> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        // (index in the file, index in `out`, the raw output_topic) for the cycle check.
        let mut outputs = Vec::new();
        for (i, raw) in raw.into_iter().enumerate() {
            let at = format!("pipeline[{i}]");
            let header = raw.span();
            let raw = raw.into_inner().0;
            if let Some(name) = &raw.name
                && let Some(first) = seen.insert(name.get_ref().clone(), i)
            {
                self.at(
                    &format!("{at}.name"),
                    name,
                    format!(
                        "pipeline {:?} is already defined by pipeline[{first}]",
                        name.get_ref()
                    ),
                );
            }
            let output = raw.output_topic.clone();
            if let Some(p) = self.pipeline(&at, header, raw, topics) {
                if let Some(output) = output {
                    outputs.push((i, out.len(), output));
                }
                out.push(p);
            }
        }
        for (i, p, raw) in outputs {
            if let Some(path) = output_cycle(&out, p) {
                self.at(
                    &format!("pipeline[{i}].output_topic"),
                    &raw,
                    format!(
                        "feeds the pipeline's own source back through other pipelines ({path}); \
                         its rows would change its input without end"
                    ),
                );
            }
        }
        out
    }

    fn pipeline(
        &mut self,
        at: &str,
        header: std::ops::Range<usize>,
        raw: RawPipeline,
        topics: &[TopicConfig],
    ) -> Option<PipelineConfig> {
        let key = |k: &str| format!("{at}.{k}");
        let name = self.required_name(&key("name"), raw.name.as_ref(), "pipeline", at, &header);
        let source = self.topic_ref(&key("source"), raw.source.as_ref(), topics);
        if raw.source.is_none() {
            self.problem(
                at.to_string(),
                Some(header.clone()),
                "has no source; name the topic it reads, e.g. source = \"clickstream\"".into(),
            );
        }
        let d = PipelineConfig::new(String::new(), String::new());
        let filter = self.filter(&key("filter"), raw.filter.as_ref());
        let group_by = self.group_by(&key("group_by"), raw.group_by.as_ref(), at, &header);
        let window = match &raw.window {
            Some(w) => self.window(&key("window"), w),
            None => {
                self.problem(
                    at.to_string(),
                    Some(header.clone()),
                    "has no window; e.g. window = { kind = \"tumbling\", size = \"1m\" }".into(),
                );
                None
            }
        };
        let time = self.choice(
            &key("time"),
            &raw.time,
            d.time,
            &[
                ("event", PipelineTime::Event),
                ("ingest", PipelineTime::Ingest),
            ],
        );
        let max_out_of_orderness = self.duration(
            &key("max_out_of_orderness"),
            &raw.max_out_of_orderness,
            d.max_out_of_orderness,
            false,
        );
        let idle_timeout = self.duration(
            &key("idle_timeout"),
            &raw.idle_timeout,
            d.idle_timeout,
            true,
        );
        let allowed_lateness = self.duration(
            &key("allowed_lateness"),
            &raw.allowed_lateness,
            d.allowed_lateness,
            false,
        );
        let checkpoint_interval = self.duration(
            &key("checkpoint_interval"),
            &raw.checkpoint_interval,
            d.checkpoint_interval,
            true,
        );
        let max_open_windows = self.count(
            &key("max_open_windows"),
            &raw.max_open_windows,
            d.max_open_windows,
            1..=MAX_OPEN_WINDOWS_MAX,
        );
        let retain_results = self.duration(
            &key("retain_results"),
            &raw.retain_results,
            d.retain_results,
            true,
        );
        let max_view_rows = self.count(
            &key("max_view_rows"),
            &raw.max_view_rows,
            d.max_view_rows,
            1..=MAX_OPEN_WINDOWS_MAX,
        );
        let ready_lag = self.count(&key("ready_lag"), &raw.ready_lag, d.ready_lag, 0..=u64::MAX);
        let late_topic = self.topic_ref(&key("late_topic"), raw.late_topic.as_ref(), topics);
        let output_topic = self.topic_ref(&key("output_topic"), raw.output_topic.as_ref(), topics);
        for (k, topic, raw_topic) in [
            ("late_topic", &late_topic, &raw.late_topic),
            ("output_topic", &output_topic, &raw.output_topic),
        ] {
            let Some(text) = raw_topic else { continue };
            let Some(t) = topic else { continue };
            if source.as_ref() == Some(t) {
                self.at(
                    &key(k),
                    text,
                    format!(
                        "is the pipeline's own source {t:?}; what it appends would feed it again"
                    ),
                );
            } else if let Some(tc) = topics.iter().find(|tc| &tc.name == t) {
                // Replays after a crash append the late events since the last checkpoint
                // (the result rows of the last checkpoint) again; only the topic's dedup
                // absorbs them, and only within its window.
                let what = if k == "late_topic" {
                    "late events"
                } else {
                    "result rows"
                };
                if tc.dedup_window.is_zero() || tc.max_dedup_entries == 0 {
                    self.at(
                        &key(k),
                        text,
                        format!(
                            "names topic {t:?}, whose dedup is off (dedup_window or \
                             max_dedup_entries is 0); {what} replayed after a crash \
                             would be appended twice"
                        ),
                    );
                } else if tc.dedup_window <= checkpoint_interval {
                    self.at(
                        &key(k),
                        text,
                        format!(
                            "names topic {t:?}, whose dedup_window {} is not longer than \
                             this pipeline's checkpoint_interval {}; {what} replayed \
                             after a crash could be appended twice",
                            format_duration(tc.dedup_window),
                            format_duration(checkpoint_interval)
                        ),
                    );
                }
            }
        }
        let aggregates = self.aggregates(at, &header, raw.aggregate.unwrap_or_default());
        Some(PipelineConfig {
            name: name?,
            source: source?,
            filter,
            group_by: group_by?,
            window: window?,
            time,
            max_out_of_orderness,
            idle_timeout,
            allowed_lateness,
            checkpoint_interval,
            max_open_windows,
            retain_results,
            max_view_rows,
            ready_lag,
            late_topic,
            output_topic,
            aggregates: aggregates?,
        })
    }

    /// A name in the topic-name grammar (it appears in URLs), reported missing at `at`.
    fn required_name(
        &mut self,
        key: &str,
        raw: Option<&Spanned<String>>,
        what: &str,
        at: &str,
        header: &std::ops::Range<usize>,
    ) -> Option<String> {
        let Some(name) = raw else {
            self.problem(
                at.to_string(),
                Some(header.clone()),
                format!("has no name; every {what} needs one"),
            );
            return None;
        };
        match validate_topic_name(name.get_ref()) {
            Ok(()) => Some(name.get_ref().clone()),
            Err(why) => {
                self.at(
                    key,
                    name,
                    why.replacen("topic name", &format!("{what} name"), 1),
                );
                None
            }
        }
    }

    /// A reference to a configured topic.
    fn topic_ref(
        &mut self,
        key: &str,
        raw: Option<&Spanned<String>>,
        topics: &[TopicConfig],
    ) -> Option<String> {
        let name = raw?;
        if topics.iter().any(|t| &t.name == name.get_ref()) {
            return Some(name.get_ref().clone());
        }
        let known: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        self.at(
            key,
            name,
            format!(
                "no [[topic]] is named {:?}; the topics are {}",
                name.get_ref(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    format!("{known:?}")
                }
            ),
        );
        None
    }

    fn filter(&mut self, key: &str, raw: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in raw.map(Spanned::get_ref).into_iter().flatten().enumerate() {
            let text = item.get_ref();
            let body = text.strip_suffix('*').unwrap_or(text);
            if text.is_empty() || text == "*" {
                self.at(
                    &format!("{key}[{i}]"),
                    item,
                    "is empty; name an event type (\"page.click\") or a prefix (\"order.*\"), \
                     or leave filter out to take every event"
                        .into(),
                );
            } else if body.contains('*') {
                self.at(
                    &format!("{key}[{i}]"),
                    item,
                    format!("{text:?} has '*' inside; only a trailing '*' (a prefix) is allowed"),
                );
            } else {
                out.push(text.clone());
            }
        }
        out
    }

    fn group_by(
        &mut self,
        key: &str,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        at: &str,
        header: &std::ops::Range<usize>,
    ) -> Option<Vec<JsonPointer>> {
        let Some(list) = raw.filter(|l| !l.get_ref().is_empty()) else {
            let span = raw.map_or_else(|| header.clone(), Spanned::span);
            let key = if raw.is_some() { key } else { at };
            self.problem(
                key.to_string(),
                Some(span),
                "needs group_by: one or more JSON pointers into the envelope, e.g. \
                 group_by = [\"/payload/page_id\"]"
                    .into(),
            );
            return None;
        };
        if list.get_ref().len() > GROUP_BY_MAX {
            self.at(key, list, format!("has more than {GROUP_BY_MAX} pointers"));
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in list.get_ref().iter().enumerate() {
            match self.pointer(&format!("{key}[{i}]"), &Some(item.clone())) {
                Some(p) => out.push(p),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn window(&mut self, key: &str, raw: &Spanned<Table<RawWindow>>) -> Option<WindowConfig> {
        let span = raw.span();
        let w = &raw.get_ref().0;
        let sub = |k: &str| format!("{key}.{k}");
        let Some(kind) = &w.kind else {
            self.problem(
                key.to_string(),
                Some(span),
                "has no kind; \"tumbling\", \"hopping\" or \"session\"".into(),
            );
            return None;
        };
        let forbid = |this: &mut Self, k: &str, v: &Option<Spanned<Quantity>>, why: &str| {
            if let Some(v) = v {
                this.at(&sub(k), v, why.to_string());
            }
        };
        match kind.get_ref().as_str() {
            "tumbling" => {
                forbid(self, "slide", &w.slide, "only hopping windows slide");
                forbid(self, "gap", &w.gap, "only session windows have a gap");
                forbid(
                    self,
                    "max_length",
                    &w.max_length,
                    "only session windows have a max_length",
                );
                let size = self.window_duration(&sub("size"), &w.size, key, &span)?;
                Some(WindowConfig::Tumbling { size })
            }
            "hopping" => {
                forbid(self, "gap", &w.gap, "only session windows have a gap");
                forbid(
                    self,
                    "max_length",
                    &w.max_length,
                    "only session windows have a max_length",
                );
                let size = self.window_duration(&sub("size"), &w.size, key, &span);
                let slide = self.window_duration(&sub("slide"), &w.slide, key, &span)?;
                let size = size?;
                if slide > size || size.as_millis() % slide.as_millis() != 0 {
                    let text = w.slide.as_ref().map_or(span.clone(), Spanned::span);
                    self.problem(
                        sub("slide"),
                        Some(text),
                        format!(
                            "{} does not divide size {}; a hopping window is a whole number of \
                             slides",
                            super::units::format_duration(slide),
                            super::units::format_duration(size)
                        ),
                    );
                    return None;
                }
                Some(WindowConfig::Hopping { size, slide })
            }
            "session" => {
                forbid(
                    self,
                    "size",
                    &w.size,
                    "session windows have a gap, not a size",
                );
                forbid(self, "slide", &w.slide, "only hopping windows slide");
                let gap = self.window_duration(&sub("gap"), &w.gap, key, &span)?;
                let max_length = match &w.max_length {
                    None => SESSION_MAX_LENGTH_DEFAULT,
                    Some(_) => {
                        self.window_duration(&sub("max_length"), &w.max_length, key, &span)?
                    }
                };
                if max_length < gap {
                    let text = w.max_length.as_ref().map_or(span.clone(), Spanned::span);
                    self.problem(
                        sub("max_length"),
                        Some(text),
                        format!(
                            "{} is shorter than gap {}; a session spans at least its gap",
                            super::units::format_duration(max_length),
                            super::units::format_duration(gap)
                        ),
                    );
                    return None;
                }
                Some(WindowConfig::Session { gap, max_length })
            }
            other => {
                self.at(
                    &sub("kind"),
                    kind,
                    one_of(other, &["tumbling", "hopping", "session"]),
                );
                None
            }
        }
    }

    /// A required positive window duration.
    fn window_duration(
        &mut self,
        key: &str,
        raw: &Option<Spanned<Quantity>>,
        window_key: &str,
        span: &std::ops::Range<usize>,
    ) -> Option<Duration> {
        if raw.is_none() {
            let field = key.rsplit('.').next().unwrap_or(key);
            self.problem(
                window_key.to_string(),
                Some(span.clone()),
                format!("has no {field}, e.g. {field} = \"1m\""),
            );
            return None;
        }
        let before = self.problems.len();
        let d = self.duration(key, raw, Duration::ZERO, true);
        (self.problems.len() == before).then_some(d)
    }

    fn aggregates(
        &mut self,
        at: &str,
        header: &std::ops::Range<usize>,
        raw: Vec<Spanned<Table<RawAggregate>>>,
    ) -> Option<Vec<AggregateConfig>> {
        if raw.is_empty() {
            self.problem(
                at.to_string(),
                Some(header.clone()),
                "has no [[pipeline.aggregate]]; e.g. name = \"count\", fn = \"count\"".into(),
            );
            return None;
        }
        if raw.len() > AGGREGATES_MAX {
            self.problem(
                at.to_string(),
                Some(header.clone()),
                format!("has more than {AGGREGATES_MAX} aggregates"),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut names = HashSet::new();
        let mut ok = true;
        for (i, raw) in raw.into_iter().enumerate() {
            let at = format!("{at}.aggregate[{i}]");
            let span = raw.span();
            let a = raw.into_inner().0;
            let key = |k: &str| format!("{at}.{k}");
            let name = match &a.name {
                None => {
                    self.problem(at.clone(), Some(span.clone()), "has no name".into());
                    None
                }
                Some(n) if n.get_ref().is_empty() => {
                    self.at(&key("name"), n, "is empty".into());
                    None
                }
                Some(n) if !names.insert(n.get_ref().clone()) => {
                    self.at(
                        &key("name"),
                        n,
                        format!("{:?} is already an aggregate of this pipeline", n.get_ref()),
                    );
                    None
                }
                Some(n) => Some(n.get_ref().clone()),
            };
            let names: Vec<&str> = AggFn::NAMES.iter().map(|(n, _)| *n).collect();
            let func = match &a.func {
                None => {
                    self.problem(
                        at.clone(),
                        Some(span.clone()),
                        format!("has no fn; one of {}", names.join(", ")),
                    );
                    None
                }
                Some(f) => match AggFn::parse(f.get_ref()) {
                    Some(func) => Some(func),
                    None => {
                        self.at(&key("fn"), f, one_of(f.get_ref(), &names));
                        None
                    }
                },
            };
            let field = self.pointer(&key("field"), &a.field);
            if let Some(func) = func
                && func.needs_field()
                && a.field.is_none()
            {
                self.problem(
                    at.clone(),
                    Some(span.clone()),
                    format!(
                        "fn = {:?} needs a field, a JSON pointer such as \"/payload/amount\"",
                        AggFn::NAMES
                            .iter()
                            .find(|(_, f)| *f == func)
                            .map_or("", |(n, _)| n)
                    ),
                );
                ok = false;
            }
            let quantiles = match (&a.quantiles, func) {
                (Some(q), Some(AggFn::Quantiles)) => self.quantiles(&key("quantiles"), q),
                (None, Some(AggFn::Quantiles)) => {
                    self.problem(
                        at.clone(),
                        Some(span.clone()),
                        "fn = \"quantiles\" needs quantiles, such as [0.5, 0.9, 0.99]".into(),
                    );
                    None
                }
                (Some(q), Some(_)) => {
                    self.at(
                        &key("quantiles"),
                        q,
                        "only applies to fn = \"quantiles\"".into(),
                    );
                    None
                }
                (_, _) => Some(Vec::new()),
            };
            if quantiles.is_none() {
                ok = false;
            }
            if a.field.is_some() && field.is_none() {
                ok = false;
            }
            match (name, func) {
                (Some(name), Some(func)) => out.push(AggregateConfig {
                    name,
                    func,
                    field,
                    quantiles: quantiles.unwrap_or_default(),
                }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// The `quantiles` of a `quantiles` aggregate: 1 to [`QUANTILES_MAX`] numbers, each
    /// in (0, 1), ascending without repeats.
    fn quantiles(&mut self, at: &str, raw: &Spanned<Vec<Spanned<f64>>>) -> Option<Vec<f64>> {
        let list = raw.get_ref();
        if list.is_empty() || list.len() > QUANTILES_MAX {
            self.at(
                at,
                raw,
                format!("needs 1 to {QUANTILES_MAX} quantiles, not {}", list.len()),
            );
            return None;
        }
        let mut out: Vec<f64> = Vec::with_capacity(list.len());
        let mut ok = true;
        for (i, q) in list.iter().enumerate() {
            let v = *q.get_ref();
            let at = format!("{at}[{i}]");
            if !(v > 0.0 && v < 1.0) {
                self.at(
                    &at,
                    q,
                    format!("{v} is not a quantile between 0 and 1 (both excluded)"),
                );
                ok = false;
            } else if let Some(prev) = out.last()
                && v <= *prev
            {
                self.at(
                    &at,
                    q,
                    format!("{v} does not follow {prev}: quantiles go ascending, each once"),
                );
                ok = false;
            }
            out.push(v);
        }
        ok.then_some(out)
    }

    /// Every `[[route]]`, checked against the topics and pipelines already read.
    pub(super) fn routes(
        &mut self,
        raw: Vec<Spanned<Table<RawRoute>>>,
        topics: &[TopicConfig],
        pipelines: &[PipelineConfig],
    ) -> Vec<RouteConfig> {
        let mut out: Vec<RouteConfig> = Vec::new();
        let mut seen: HashMap<(RouteMethod, String), usize> = HashMap::new();
        for (i, raw) in raw.into_iter().enumerate() {
            let at = format!("route[{i}]");
            let header = raw.span();
            let raw = raw.into_inner().0;
            let Some(route) = self.route(&at, header, &raw, topics, pipelines) else {
                continue;
            };
            // `/a/{x}` and `/a/{y}` match the same requests.
            let shape = route
                .path
                .split('/')
                .map(|s| if s.starts_with('{') { "{}" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            if let Some(first) = seen.insert((route.method, shape), i)
                && let Some(path) = &raw.path
            {
                self.at(
                    &format!("{at}.path"),
                    path,
                    format!("route[{first}] already serves this method and path"),
                );
                continue;
            }
            out.push(route);
        }
        out
    }

    fn route(
        &mut self,
        at: &str,
        header: std::ops::Range<usize>,
        raw: &RawRoute,
        topics: &[TopicConfig],
        pipelines: &[PipelineConfig],
    ) -> Option<RouteConfig> {
        let key = |k: &str| format!("{at}.{k}");
        let method = match &raw.method {
            None => {
                self.problem(
                    at.to_string(),
                    Some(header.clone()),
                    "has no method; \"GET\" or \"POST\"".into(),
                );
                None
            }
            Some(m) => match m.get_ref().as_str() {
                "GET" => Some(RouteMethod::Get),
                "POST" => Some(RouteMethod::Post),
                other => {
                    self.at(&key("method"), m, one_of(other, &["GET", "POST"]));
                    None
                }
            },
        };
        let (path, placeholders) = match &raw.path {
            None => {
                self.problem(at.to_string(), Some(header.clone()), "has no path".into());
                (None, Vec::new())
            }
            Some(p) => match route_path(p.get_ref()) {
                Ok(placeholders) => (Some(p.get_ref().clone()), placeholders),
                Err(why) => {
                    self.at(&key("path"), p, why);
                    (None, Vec::new())
                }
            },
        };
        let response = self.choice(
            &key("response"),
            &raw.response,
            RouteResponse::V1,
            &[("seed", RouteResponse::Seed), ("v1", RouteResponse::V1)],
        );
        let forbid = |this: &mut Self, k: &str, v: &Option<Spanned<String>>, why: &str| {
            if let Some(v) = v {
                this.at(&key(k), v, why.to_string());
            }
        };
        let target = match method? {
            RouteMethod::Post => {
                for (k, v) in [
                    ("pipeline", &raw.pipeline),
                    ("key", &raw.key),
                    ("aggregate", &raw.aggregate),
                    ("window", &raw.window),
                ] {
                    forbid(
                        self,
                        k,
                        v,
                        "only applies to GET routes, which query a pipeline",
                    );
                }
                if raw.topic.is_none() {
                    self.problem(
                        at.to_string(),
                        Some(header.clone()),
                        "a POST route ingests: name its topic, e.g. topic = \"clickstream\"".into(),
                    );
                }
                if !placeholders.is_empty()
                    && let Some(p) = &raw.path
                {
                    self.at(&key("path"), p, "a POST route has no {placeholders}".into());
                    return None;
                }
                let topic = self.topic_ref(&key("topic"), raw.topic.as_ref(), topics)?;
                RouteTarget::Ingest { topic }
            }
            RouteMethod::Get => {
                forbid(
                    self,
                    "topic",
                    &raw.topic,
                    "only applies to POST routes, which ingest",
                );
                let Some(name) = &raw.pipeline else {
                    self.problem(
                        at.to_string(),
                        Some(header.clone()),
                        "a GET route queries: name its pipeline, e.g. pipeline = \"page_views\""
                            .into(),
                    );
                    return None;
                };
                let Some(pipeline) = pipelines.iter().find(|p| &p.name == name.get_ref()) else {
                    self.at(
                        &key("pipeline"),
                        name,
                        format!("no [[pipeline]] is named {:?}", name.get_ref()),
                    );
                    return None;
                };
                let route_key = match &raw.key {
                    None => {
                        self.problem(
                            at.to_string(),
                            Some(header.clone()),
                            "has no key; name the path placeholder holding the key, e.g. \
                             key = \"page_id\""
                                .into(),
                        );
                        None
                    }
                    Some(k) if path.is_some() && !placeholders.contains(k.get_ref()) => {
                        self.at(
                            &key("key"),
                            k,
                            format!("the path has no {{{}}} placeholder", k.get_ref()),
                        );
                        None
                    }
                    Some(k) => Some(k.get_ref().clone()),
                };
                let aggregate = match &raw.aggregate {
                    Some(a) if !pipeline.aggregates.iter().any(|x| &x.name == a.get_ref()) => {
                        let names: Vec<&str> = pipeline
                            .aggregates
                            .iter()
                            .map(|x| x.name.as_str())
                            .collect();
                        self.at(
                            &key("aggregate"),
                            a,
                            format!(
                                "pipeline {:?} has no aggregate {:?}; it has {names:?}",
                                pipeline.name,
                                a.get_ref()
                            ),
                        );
                        return None;
                    }
                    other => other.as_ref().map(|a| a.get_ref().clone()),
                };
                if response == RouteResponse::Seed && aggregate.is_none() {
                    self.problem(
                        at.to_string(),
                        Some(header.clone()),
                        "response = \"seed\" answers one aggregate: name it, e.g. \
                         aggregate = \"count\""
                            .into(),
                    );
                    return None;
                }
                let window = self.choice(
                    &key("window"),
                    &raw.window,
                    QueryWindow::Latest,
                    &[
                        ("latest", QueryWindow::Latest),
                        ("last_closed", QueryWindow::LastClosed),
                        ("current", QueryWindow::Current),
                    ],
                );
                RouteTarget::Query {
                    pipeline: pipeline.name.clone(),
                    key: route_key?,
                    aggregate,
                    window,
                }
            }
        };
        Some(RouteConfig {
            method: method?,
            path: path?,
            target,
            response,
        })
    }
}

/// Checks a route path and returns its placeholder names.
fn route_path(path: &str) -> Result<Vec<String>, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} does not start with '/'"));
    }
    if path.contains(['?', '#']) {
        return Err(format!("{path:?} has a query or fragment; a path only"));
    }
    if path == "/v1" || path.starts_with("/v1/") {
        return Err("paths under /v1 are weir's own API".into());
    }
    if RESERVED_PATHS.contains(&path) {
        return Err(format!("{path} is weir's own"));
    }
    let mut names = Vec::new();
    for segment in path.split('/').skip(1) {
        if let Some(inner) = segment.strip_prefix('{') {
            let name = inner.strip_suffix('}').ok_or_else(|| {
                format!("segment {segment:?} opens a placeholder but does not close it")
            })?;
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(format!(
                    "placeholder {{{name}}}: names are lower-case letters, digits and '_'"
                ));
            }
            if names.iter().any(|n| n == name) {
                return Err(format!("placeholder {{{name}}} appears twice"));
            }
            names.push(name.to_string());
        } else if segment.contains(['{', '}']) {
            return Err(format!(
                "segment {segment:?}: a placeholder must be a whole segment, e.g. /page/{{page_id}}"
            ));
        }
    }
    Ok(names)
}
