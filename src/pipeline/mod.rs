//! Pipelines: windowed aggregation over a topic.
//!
//! The core (`window`, `aggregate`, `watermark`, `key`, `engine`) is pure: no IO, no clock,
//! a function of the records it is given, so replaying the log recomputes the same results.

pub mod aggregate;
pub mod engine;
pub mod key;
pub mod watermark;
pub mod window;
