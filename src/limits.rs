//! Every hard bound that is not a user setting, in one place, each with why.
//! User-facing limits (`max_body`, `max_connections`, ...) live in the config.

/// Bytes of log between two sparse offset-index entries (Kafka's `index.interval.bytes`):
/// a lookup scans at most this much plus one batch.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;

/// Largest batch a reader or the recovery scan will accept. A request's share of a
/// partition is one batch, so this must exceed the largest `max_body` plus the envelope
/// fields weir adds; a corrupt length field beyond it ends the log instead of making a
/// reader allocate gigabytes.
pub const BATCH_BYTES_MAX: usize = 1 << 30;

/// Threads that run fdatasync for partitions in parallel. Two cores here, but fsync is
/// IO wait, not CPU: a few threads let several partitions sync at once.
pub const SYNC_THREADS_MAX: usize = 4;

/// Records one pull request may return, and its default.
pub const READ_RECORDS_MAX: usize = 10_000;
pub const READ_RECORDS_DEFAULT: usize = 100;

/// Envelope bytes one pull response may carry (at least one record is always returned).
pub const READ_RESPONSE_BYTES_MAX: usize = 4 << 20;

/// Segment file buffer for the recovery scan and reads.
pub const SCAN_BUFFER_BYTES: usize = 1 << 20;

/// How often the background flusher looks for `fsync = "interval"` partitions that are due.
pub const FLUSH_TICK_MS_MIN: u64 = 5;
