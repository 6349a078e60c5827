//! The broker: topics of partitions of segments holding Kafka RecordBatch v2.
//!
//! Only this module touches segment and index files.

pub mod batch;
pub mod partitioner;
pub mod topic_name;
