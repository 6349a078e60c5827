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
//! - [`http`]: the only module that knows HTTP and JSON answers.
//! - [`app`]: wiring: open the data dir and the log, serve HTTP, shut down in order.
//! - [`metrics`], [`limits`], [`clock`]: metric names, hard bounds, injected time.

pub mod app;
pub mod clock;
pub mod config;
pub mod disk;
pub mod event;
pub mod http;
pub mod json;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod pipeline;
