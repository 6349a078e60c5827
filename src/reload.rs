//! SIGHUP: the config file read again and what can change while running put in force.
//!
//! [`plan`] is pure: it compares the file with the running config and says what the
//! config in force becomes. Live: every `[server]` key but `listen` (bounds apply to
//! requests and connections that start after the reload), `[log] level`, the
//! `[[route]]`s, new `[[topic]]`s and new `[[pipeline]]`s. Everything else keeps its
//! running value and is named in a warning: `server.listen`, `[storage]`, `[log]
//! format`, any key of an existing topic or pipeline, and a topic or pipeline removed
//! from the file (still served until a restart). A file with problems changes nothing.
//! [`apply`] opens the new topics, starts the new pipelines and swaps the rest in.

use std::sync::Arc;

use crate::config::{
    Config, ConfigErrors, LogConfig, PipelineConfig, ServerConfig, StorageConfig, TopicConfig,
};
use crate::disk::DiskSpace;
use crate::http::AppState;
use crate::log::Log;
use crate::metrics as m;
use crate::pipeline::runner::Pipelines;
use crate::store::Store;

/// Puts a `[log] level` in force; `Err` says why it cannot (RUST_LOG is set).
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Reload requests, one per SIGHUP, and how to change the log level.
pub struct Reloads {
    /// Each item is the config file read again (the command line's overrides applied),
    /// or its problems.
    pub requests: tokio::sync::mpsc::Receiver<Result<Config, ConfigErrors>>,
    pub set_log_level: SetLogLevel,
}

/// What a reload puts in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The config in force after the reload: the file's live keys, the running values
    /// of the others.
    pub config: Config,
    /// Topics to open: in the file, not running.
    pub new_topics: Vec<TopicConfig>,
    /// Pipelines to start: in the file, not running.
    pub new_pipelines: Vec<PipelineConfig>,
    /// Keys whose new value is in force, e.g. `server.max_body`, `topic["clicks"]`.
    pub changed: Vec<String>,
    /// Keys whose new value waits for a restart (the running value is kept), e.g.
    /// `server.listen`, `topic["events"].partitions`.
    pub kept: Vec<String>,
}

/// The fields of two values of struct `$ty` that differ, by name. The pattern lists
/// every field, so a field added to the struct does not compile until it is listed here.
macro_rules! differing {
    ($ty:ident, $a:expr, $b:expr, [$($field:ident),* $(,)?]) => {{
        let (a, b) = (&$a, &$b);
        let $ty { $($field: _),* } = a;
        let mut out: Vec<&'static str> = Vec::new();
        $( if a.$field != b.$field { out.push(stringify!($field)); } )*
        out
    }};
}

/// Compares the file with the running config; see the module doc for what is live.
pub fn plan(running: &Config, file: Config) -> Plan {
    let mut changed = Vec::new();
    let mut kept = Vec::new();
    let mut config = running.clone();

    let server = differing!(
        ServerConfig,
        running.server,
        file.server,
        [
            listen,
            max_body,
            max_key,
            max_connections,
            max_inflight,
            max_streams,
            header_timeout,
            body_timeout,
            shutdown_grace,
            memory_max,
        ]
    );
    for key in server {
        let list = if key == "listen" {
            &mut kept
        } else {
            &mut changed
        };
        list.push(format!("server.{key}"));
    }
    config.server = ServerConfig {
        listen: running.server.listen,
        ..file.server
    };
    for key in differing!(
        StorageConfig,
        running.storage,
        file.storage,
        [data_dir, sled_cache, free_space_reserve]
    ) {
        kept.push(format!("storage.{key}"));
    }
    for key in differing!(LogConfig, running.log, file.log, [level, format]) {
        match key {
            "level" => {
                changed.push("log.level".to_string());
                config.log.level.clone_from(&file.log.level);
            }
            _ => kept.push(format!("log.{key}")),
        }
    }

    let mut new_topics = Vec::new();
    // Existing topics whose file settings differ from the running ones.
    let mut differing_topics = Vec::new();
    for t in &file.topics {
        match running.topic(&t.name) {
            None => {
                changed.push(format!("topic[{:?}]", t.name));
                new_topics.push(t.clone());
            }
            Some(old) => {
                let before = kept.len();
                kept.extend(topic_diff(old, t).map(|k| format!("topic[{:?}].{k}", t.name)));
                if kept.len() > before {
                    differing_topics.push(t.name.as_str());
                }
            }
        }
    }
    for t in &running.topics {
        if file.topic(&t.name).is_none() {
            kept.push(format!("topic[{:?}] (removed)", t.name));
        }
    }
    config.topics.extend(new_topics.iter().cloned());

    let mut new_pipelines = Vec::new();
    for p in &file.pipelines {
        // The file was checked with its own topic settings (a late_topic's dedup, say);
        // a topic that keeps other running settings may not pass those checks.
        let differing_topic = [
            Some(&p.source),
            p.late_topic.as_ref(),
            p.output_topic.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find(|t| differing_topics.contains(&t.as_str()));
        match (running.pipeline(&p.name), differing_topic) {
            (None, Some(topic)) => kept.push(format!(
                "pipeline[{:?}] (new, but topic {topic:?} keeps settings the file changed)",
                p.name
            )),
            (None, None) => {
                changed.push(format!("pipeline[{:?}]", p.name));
                new_pipelines.push(p.clone());
            }
            (Some(old), _) => {
                kept.extend(pipeline_diff(old, p).map(|k| format!("pipeline[{:?}].{k}", p.name)))
            }
        }
    }
    for p in &running.pipelines {
        if file.pipeline(&p.name).is_none() {
            kept.push(format!("pipeline[{:?}] (removed)", p.name));
        }
    }
    config.pipelines.extend(new_pipelines.iter().cloned());

    if running.routes != file.routes {
        changed.push("route".to_string());
        config.routes = file.routes;
    }
    Plan {
        config,
        new_topics,
        new_pipelines,
        changed,
        kept,
    }
}

fn topic_diff(a: &TopicConfig, b: &TopicConfig) -> impl Iterator<Item = &'static str> {
    differing!(
        TopicConfig,
        a,
        b,
        [
            name,
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
        ]
    )
    .into_iter()
}

fn pipeline_diff(a: &PipelineConfig, b: &PipelineConfig) -> impl Iterator<Item = &'static str> {
    differing!(
        PipelineConfig,
        a,
        b,
        [
            name,
            source,
            filter,
            group_by,
            window,
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
            aggregates,
        ]
    )
    .into_iter()
}

/// What a reload acts on; owned by the reload task.
pub struct Running {
    pub config: Config,
    pub state: Arc<AppState>,
    pub log: Arc<Log>,
    pub pipelines: Arc<Pipelines>,
    pub store: Arc<Store>,
    pub disk: Arc<DiskSpace>,
}

/// Serves reload requests until shutdown begins. A reload under way when it does is
/// finished first (the caller awaits this task before stopping pipelines and the log).
pub async fn run(mut reloads: Reloads, mut running: Running) {
    let mut stop = running.state.shutdown.subscribe();
    loop {
        let file = tokio::select! {
            request = reloads.requests.recv() => match request {
                Some(file) => file,
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        apply(&reloads, &mut running, file).await;
    }
}

/// One reload: rejected as a whole when the file has problems, otherwise what is live
/// put in force and the rest named in a warning.
pub async fn apply(reloads: &Reloads, running: &mut Running, file: Result<Config, ConfigErrors>) {
    let file = match file {
        Ok(file) => file,
        Err(errors) => {
            metrics::counter!(m::CONFIG_RELOADS, "result" => "rejected").increment(1);
            let problems: Vec<String> = errors.problems.iter().map(ToString::to_string).collect();
            tracing::error!(
                problems = %problems.join("; "),
                truncated = errors.truncated,
                "config reload rejected: the file has problems; the running config is kept"
            );
            return;
        }
    };
    let mut plan = plan(&running.config, file);
    if !plan.new_topics.is_empty() {
        let (log, topics) = (Arc::clone(&running.log), plan.new_topics.clone());
        let opened = tokio::task::spawn_blocking(move || log.add_topics(&topics)).await;
        let failed = match opened {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = failed {
            metrics::counter!(m::CONFIG_RELOADS, "result" => "rejected").increment(1);
            tracing::error!(%error, "config reload rejected: cannot open the new topics; the running config is kept");
            return;
        }
    }
    if !plan.new_pipelines.is_empty() {
        let (pipelines, log, store, disk) = (
            Arc::clone(&running.pipelines),
            Arc::clone(&running.log),
            Arc::clone(&running.store),
            Arc::clone(&running.disk),
        );
        let (config, new) = (plan.config.clone(), plan.new_pipelines.clone());
        let runtime = tokio::runtime::Handle::current();
        let started = tokio::task::spawn_blocking(move || {
            pipelines.add(&config, &new, &log, &store, &disk, &runtime)
        })
        .await;
        let failed = match started {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = failed {
            // Topics opened above stay; the pipelines are tried again by the next reload.
            let names: Vec<&str> = plan.new_pipelines.iter().map(|p| p.name.as_str()).collect();
            tracing::error!(%error, pipelines = %names.join(", "), "config reload: cannot start the new pipelines");
            plan.config
                .pipelines
                .retain(|p| !names.contains(&p.name.as_str()));
            plan.changed
                .retain(|k| !names.iter().any(|n| *k == format!("pipeline[{n:?}]")));
        }
    }
    if plan.config.log.level != running.config.log.level
        && let Err(why) = (reloads.set_log_level)(&plan.config.log.level)
    {
        tracing::warn!(level = %plan.config.log.level, reason = %why, "config reload: log.level not applied");
    }
    running
        .state
        .set_live(plan.config.server.clone(), plan.config.routes.clone());
    running.config = plan.config;
    metrics::counter!(m::CONFIG_RELOADS, "result" => "ok").increment(1);
    tracing::info!(changed = %plan.changed.join(", "), "config reloaded");
    if !plan.kept.is_empty() {
        tracing::warn!(
            keys = %plan.kept.join(", "),
            "config reload: these keys cannot change while running; their running values are kept until a restart"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("weir.toml")).unwrap()
    }

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body = "1MiB"
[[topic]]
name = "events"
partitions = 4
"#;

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let running = parse(BASE);
        let plan = plan(&running, parse(BASE));
        assert_eq!(plan.config, running);
        assert!(plan.changed.is_empty() && plan.kept.is_empty(), "{plan:?}");
    }

    #[test]
    fn live_keys_change_and_the_others_are_kept_and_named() {
        let running = parse(BASE);
        let file = parse(&format!(
            "{}\n[log]\nlevel = \"debug\"\nformat = \"json\"\n[[topic]]\nname = \"clicks\"\n",
            BASE.replace("127.0.0.1:8080", "127.0.0.1:9090")
                .replace("\"1MiB\"", "\"2MiB\"")
                .replace("partitions = 4", "partitions = 8")
        ));
        let plan = plan(&running, file);
        assert_eq!(plan.config.server.listen, running.server.listen);
        assert_eq!(plan.config.server.max_body, 2 << 20);
        assert_eq!(plan.config.log.level, "debug");
        assert_eq!(plan.config.log.format, running.log.format);
        assert_eq!(plan.config.topic("events").unwrap().partitions, 4);
        assert_eq!(plan.new_topics.len(), 1);
        assert!(plan.config.topic("clicks").is_some());
        assert_eq!(
            plan.changed,
            ["server.max_body", "log.level", "topic[\"clicks\"]"]
        );
        assert_eq!(
            plan.kept,
            [
                "server.listen",
                "log.format",
                "topic[\"events\"].partitions"
            ]
        );
    }

    #[test]
    fn new_pipelines_start_and_changed_ones_are_kept() {
        let pipeline = |name: &str, size: &str| {
            format!(
                "[[pipeline]]\nname = \"{name}\"\nsource = \"events\"\ngroup_by = [\"/payload/k\"]\n\
                 window = {{ kind = \"tumbling\", size = \"{size}\" }}\n\
                 [[pipeline.aggregate]]\nname = \"count\"\nfn = \"count\"\n"
            )
        };
        let running = parse(&format!("{BASE}\n{}", pipeline("a", "1m")));
        let file = parse(&format!(
            "{BASE}\n{}\n{}",
            pipeline("a", "5m"),
            pipeline("b", "1m")
        ));
        let plan = plan(&running, file);
        assert_eq!(plan.new_pipelines.len(), 1);
        assert_eq!(plan.new_pipelines[0].name, "b");
        assert_eq!(plan.config.pipelines.len(), 2);
        assert_eq!(plan.config.pipeline("a"), running.pipeline("a"));
        assert_eq!(plan.changed, ["pipeline[\"b\"]"]);
        assert_eq!(plan.kept, ["pipeline[\"a\"].window"]);
    }

    #[test]
    fn a_new_pipeline_over_a_topic_whose_changes_wait_waits_too() {
        let pipeline = "[[pipeline]]\nname = \"b\"\nsource = \"events\"\ngroup_by = [\"/payload/k\"]\n\
             window = { kind = \"tumbling\", size = \"1m\" }\n\
             [[pipeline.aggregate]]\nname = \"count\"\nfn = \"count\"\n";
        let running = parse(BASE);
        let file = parse(&format!(
            "{}\n{pipeline}",
            BASE.replace("partitions = 4", "partitions = 8")
        ));
        let plan = plan(&running, file);
        assert!(plan.new_pipelines.is_empty());
        assert!(plan.config.pipelines.is_empty());
        assert_eq!(
            plan.kept,
            [
                "topic[\"events\"].partitions",
                "pipeline[\"b\"] (new, but topic \"events\" keeps settings the file changed)"
            ]
        );
    }

    #[test]
    fn removed_topics_stay_until_a_restart() {
        let running = parse(&format!("{BASE}\n[[topic]]\nname = \"old\"\n"));
        let plan = plan(&running, parse(BASE));
        assert!(plan.config.topic("old").is_some());
        assert_eq!(plan.kept, ["topic[\"old\"] (removed)"]);
    }
}
