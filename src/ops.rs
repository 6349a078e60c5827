//! The operator commands, run on a stopped data dir: `weir verify`, `weir dump` and
//! `weir pipeline reset`. Each takes the data dir lock without waiting, so none of them
//! runs beside a weir on the same dir (and no weir starts while one runs): verify and
//! dump share it and write nothing; reset holds it alone. The walks over segment files
//! are `log::offline`; the store's part is `store`.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::value::RawValue;

use crate::config::Config;
use crate::event::rfc3339_ms_string;
use crate::log::datadir::{DataDir, OfflineLock};
use crate::log::offline::{self, DumpRecord};
use crate::log::{HEADER_APPEND, HEADER_ID, HEADER_TYPE};
use crate::store::Store;

/// `weir verify`: every batch of every partition CRC-checked, offsets and indexes
/// checked; a line per partition, then a summary. Returns whether nothing was wrong.
pub fn verify(data_dir: &Path, out: &mut dyn Write) -> anyhow::Result<bool> {
    let dir = DataDir::open_offline(data_dir, OfflineLock::Shared)?;
    let partitions = offline::partitions(&dir.topics_root())
        .with_context(|| format!("listing the topics of {}", data_dir.display()))?;
    let clean = dir.was_clean();
    if !clean {
        writeln!(
            out,
            "note: weir did not stop cleanly here (no clean_shutdown marker): the active segments' indexes are not checked, and a torn batch at the very end of one is what the next start cuts"
        )?;
    }
    let (mut records, mut segments, mut problems) = (0u64, 0usize, 0usize);
    for p in &partitions {
        let v = offline::verify_partition(&p.dir, clean)
            .with_context(|| format!("reading {}", p.dir.display()))?;
        records += v.records;
        segments += v.segments;
        problems += v.problems.len();
        let offsets = match (v.start_offset, v.end_offset) {
            (Some(s), Some(e)) => format!("offsets {s}..{e}"),
            _ => "no segments".to_string(),
        };
        let verdict = if v.problems.is_empty() {
            "ok"
        } else {
            "CORRUPT"
        };
        writeln!(
            out,
            "{}/{}: {verdict}: {offsets}, {} records in {} batches, {} segments, {} bytes",
            p.topic, p.partition, v.records, v.batches, v.segments, v.bytes
        )?;
        for problem in &v.problems {
            writeln!(
                out,
                "  {} at byte {}: {}",
                problem.file.display(),
                problem.position,
                problem.detail
            )?;
        }
        if let Some(torn) = &v.torn_tail {
            writeln!(
                out,
                "  note: {} at byte {}: {}: a write the stop cut short; the next start cuts it (after a kill it was never acknowledged; after a machine crash, under fsync \"interval\" or \"never\", it may hold acknowledged events of the last interval)",
                torn.file.display(),
                torn.position,
                torn.detail
            )?;
        }
    }
    let verdict = match problems {
        0 => "no problems".to_string(),
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    };
    writeln!(
        out,
        "verified {} partitions: {records} records in {segments} segments, {verdict}",
        partitions.len()
    )?;
    Ok(problems == 0)
}

/// `weir dump`: the records of one partition from `offset`, at most `limit`, as NDJSON.
pub fn dump(
    data_dir: &Path,
    topic: &str,
    partition: u32,
    offset: i64,
    limit: Option<u64>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let dir = DataDir::open_offline(data_dir, OfflineLock::Shared)?;
    let pdir = dir.topic_dir(topic).join(partition.to_string());
    if !pdir.is_dir() {
        bail!(
            "{}: no such topic partition in this data dir",
            pdir.display()
        );
    }
    let mut written = 0u64;
    let mut line = Vec::new();
    let mut write_error = None;
    let start = offline::read_partition(&pdir, offset, |r| {
        if limit.is_some_and(|l| written >= l) {
            return ControlFlow::Break(());
        }
        line.clear();
        dump_line(partition, r, &mut line);
        if let Err(e) = out.write_all(&line) {
            write_error = Some(e);
            return ControlFlow::Break(());
        }
        written += 1;
        ControlFlow::Continue(())
    })?;
    match write_error {
        // A closed pipe (`| head`) ends the dump quietly.
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Some(e) => return Err(e.into()),
        None => {}
    }
    out.flush()?;
    if let Some(start) = start
        && offset < start
    {
        eprintln!(
            "note: offset {offset} is before the partition's start {start} (retention); dumped from {start}"
        );
    }
    Ok(())
}

/// One record as a JSON line: offset, timestamp (epoch ms and RFC 3339), key, headers
/// (`weir.type` as text, `weir.id` as hex, `weir.append` as epoch ms, others as text),
/// and the value as JSON (as a string if it is not JSON).
fn dump_line(partition: u32, r: &DumpRecord<'_>, out: &mut Vec<u8>) {
    let text = |b: &[u8]| serde_json::Value::String(String::from_utf8_lossy(b).into_owned());
    let mut headers = serde_json::Map::new();
    for (k, v) in r.record.headers().flatten() {
        let key = String::from_utf8_lossy(k).into_owned();
        let value = match (key.as_str(), v) {
            (_, None) => serde_json::Value::Null,
            (HEADER_APPEND, Some(v)) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(v);
                i64::from_be_bytes(b).into()
            }
            (HEADER_ID, Some(v)) => v
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into(),
            (_, Some(v)) => text(v),
        };
        headers.insert(key, value);
    }
    let value: Option<&RawValue> = r
        .record
        .value
        .and_then(|v| serde_json::from_slice::<&RawValue>(v).ok());
    let value = match (value, r.record.value) {
        (Some(raw), _) => serde_json::to_value(raw).unwrap_or(serde_json::Value::Null),
        (None, Some(v)) => text(v),
        (None, None) => serde_json::Value::Null,
    };
    let line = serde_json::json!({
        "partition": partition,
        "offset": r.offset,
        "timestamp": r.timestamp_ms,
        "time": rfc3339_ms_string(r.timestamp_ms),
        "key": r.record.key.map(text),
        "event_type": r.record.header(HEADER_TYPE).map(text),
        "headers": headers,
        "value": value,
    });
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

/// `weir pipeline reset`: forgets everything the store keeps for pipeline `name` (its
/// checkpoint, window state, closed rows, output outbox), so the next start rebuilds it
/// from the log, as it does for a changed definition. Returns a sentence for the operator.
pub fn pipeline_reset(config: &Config, name: &str) -> anyhow::Result<String> {
    if !config.pipelines.iter().any(|p| p.name == name) {
        let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no pipeline {name:?} in the config (its pipelines: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    let data_dir = &config.storage.data_dir;
    let dir = DataDir::open_offline(data_dir, OfflineLock::Exclusive)?;
    let store_dir = dir.root().join("store");
    if !store_dir.exists() {
        return Ok(format!(
            "pipeline {name}: nothing stored in {}; it is built from the log at start",
            data_dir.display()
        ));
    }
    let store = Store::open(&store_dir, config.storage.sled_cache).with_context(|| {
        format!(
            "opening the result store {} (a store sled cannot read is moved aside and every pipeline rebuilt at the next start)",
            store_dir.display()
        )
    })?;
    let removed = store.pipeline(name).forget()?;
    store.flush()?;
    drop(store);
    drop(dir);
    Ok(format!(
        "pipeline {name}: removed its checkpoint and results ({removed} keys); the next start rebuilds it from the log"
    ))
}
