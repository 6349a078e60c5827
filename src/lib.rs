//! weir: one process that replaces an HTTP ingest service, Kafka, Flink, Redis and a
//! query API on a single machine.
//!
//! The crate map, in the order data flows through it:
//!
//! - [`config`]: the TOML file, parsed into a raw serde mirror and validated into typed
//!   settings; every problem is reported with its key path.
//! - [`json`]: JSON pointers and the lazy scanner that finds a value without building a DOM.
//! - [`event`]: request bodies to envelopes: body forms, envelope filling, keys, time bounds.
//! - [`log`]: the broker: Kafka RecordBatch v2 codec, segments, indexes, partitions,
//!   group commit, recovery, idempotence.
//! - [`pipeline`]: windowed aggregation: the pure engine, the hot view of results, and
//!   the thread per pipeline that reads the log and drives them.
//! - [`store`]: the only module that touches sled: checkpoints and closed results.
//! - [`http`]: the only module that knows HTTP and JSON answers.
//! - [`app`]: wiring: open the data dir, the log and the store, start pipelines, serve
//!   HTTP, shut down in order.
//! - [`ops`]: the operator commands on a stopped data dir: verify, dump, pipeline reset.
//! - [`metrics`], [`limits`], [`clock`]: metric names, hard bounds, injected time.
//! - [`prefetch`]: the cache-line hint the dedup table and the session path ask ahead with.
//! - [`failpoint`]: named failure and crash points of the write path, for tests (the
//!   `fail` feature only).
//! - [`systemd`], [`cgroup`]: sd_notify (ready, watchdog, stopping) and the cgroup
//!   memory limit checked against `server.memory_max` at start.

pub mod app;
pub mod cgroup;
pub mod clock;
pub mod config;
pub mod disk;
pub mod event;
pub mod failpoint;
#[cfg(test)]
mod fuzz_corpus;
pub mod http;
pub mod json;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod prefetch;
pub mod reload;
pub mod store;
pub mod systemd;

// The fuzz checks (`fuzz/checks/`), shared with the corpus replay tests, name the crate
// `weir` as the fuzz targets do.
#[cfg(test)]
extern crate self as weir;
