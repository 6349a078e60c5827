//! Pipelines: windowed aggregation over a topic.
//!
//! The core (`window`, `aggregate`, `watermark`, `key`, `engine`) is pure: no IO, no clock,
//! a function of the records it is given, so replaying the log recomputes the same results.
//! `view` is the in-memory hot view of results HTTP answers from (no IO either); `runner`
//! is the thread per pipeline that reads the log and drives an engine; `checkpointer` the
//! thread per pipeline that writes its checkpoints; `late` what a pipeline holds for its
//! `late_topic` and how it appends it; `output` the result rows for its `output_topic`; `readahead` the thread per
//! pipeline that reads the next chunks of its source partitions ahead of it, and `decoded`
//! the records it prepares for the engine there (decoded, filtered, keys read);
//! `lazy_sorted` the buckets sorted when first read that the close queue and the view use.

pub mod aggregate;
pub mod checkpointer;
pub mod decoded;
pub mod engine;
pub mod key;
pub mod late;
pub mod lazy_sorted;
pub mod output;
pub mod readahead;
pub mod runner;
pub mod sketch;
pub mod view;
pub mod watermark;
pub mod window;
