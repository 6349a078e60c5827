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

/// An fsync round waiting this long for its fsyncs has stalled: `/readyz` turns false
/// naming the partition, and a warning is logged, until it returns. This disk's fdatasync
/// p99 is under a millisecond and a busy spinning disk's is tens of milliseconds; one that
/// takes seconds is failing, or starved by another writer. The round is not abandoned:
/// the kernel decides when the fsync returns, its waiting requests wait with it, and what
/// it returns decides their answers (a cut-short wait could not know whether the data is
/// on disk).
pub const FSYNC_STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Records one pull request may return, and its default.
pub const READ_RECORDS_MAX: usize = 10_000;
pub const READ_RECORDS_DEFAULT: usize = 100;

/// Envelope bytes one pull response may carry (at least one record is always returned).
pub const READ_RESPONSE_BYTES_MAX: usize = 4 << 20;

/// Segment file buffer for the recovery scan and reads.
pub const SCAN_BUFFER_BYTES: usize = 1 << 20;

/// Bad batches a partition remembers (where reads resume after each), so each is counted
/// and logged once and the search after it is not repeated by every read. Beyond it a
/// bad batch is searched past and counted again at each meeting: memory stays bounded
/// on a disk gone bad, the counter then over-counts rather than hides.
pub const CORRUPT_BATCHES_TRACKED_MAX: usize = 4096;

/// At most one "corrupt batch" log line per partition this often (the next line says how
/// many were met meanwhile): a damaged disk must not flood the log.
pub const CORRUPT_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the background flusher looks for `fsync = "interval"` partitions that are due.
pub const FLUSH_TICK_MS_MIN: u64 = 5;

/// Longest `wait_ms` of a long-polling pull. A waiting pull holds a connection and a task
/// but no buffer; 30 s stays under the idle timeouts of common proxies and load balancers
/// (60 s), so a poll answers before a proxy cuts it. Shutdown ends waits early.
pub const READ_WAIT_MS_MAX: u64 = 30_000;

/// Envelope bytes one SSE write carries (about: at least one record, plus the `id:` and
/// `data:` framing). A stream writes a chunk and awaits it before reading more, so its
/// memory is about two chunks plus one batch, whatever the client's speed; with
/// `max_streams = 256` that is about 64 MiB of chunks at worst.
pub const STREAM_CHUNK_BYTES_MAX: usize = 128 << 10;

/// Records one SSE write carries at most.
pub const STREAM_CHUNK_RECORDS_MAX: usize = 10_000;

/// SSE chunks kept for streams that reach the same position (`http::stream_cache`): at
/// most this many times `STREAM_CHUNK_BYTES_MAX` of memory, about 8 MiB; enough for a few
/// chunks per topic of several busy topics.
pub const STREAM_CACHE_CHUNKS_MAX: usize = 64;

/// An idle stream sends a `: keep-alive` comment this often, so proxies do not cut it
/// (nginx's default proxy_read_timeout is 60 s) and a vanished client is noticed.
pub const STREAM_KEEPALIVE_MS: u64 = 15_000;

/// How often retention looks at every partition (also after every roll). Deleting is
/// whole segments, so a pass is cheap; more often would only wake the thread for nothing.
pub const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How far the wall clock may run ahead of a trusted reading + the monotonic time since
/// (the start of this run, or an earlier start in this boot) before retention and dedup
/// stop following it (a forward jump). Slewing NTP drifts by far less.
pub const CLOCK_JUMP_TOLERANCE_MS: i64 = 1000;

/// Segment size of the internal `__weir_offsets` topic: commits are small, and the
/// compaction (see `log::groups`) deletes whole segments, so small segments keep it tight.
pub const OFFSETS_SEGMENT_BYTES: u64 = 16 << 20;

/// Sealed segments of `__weir_offsets` that trigger a compaction (a snapshot of every
/// committed offset, then the segments before it are deleted).
pub const OFFSETS_COMPACT_SEGMENTS: usize = 4;

/// Records per snapshot batch written by the offsets compaction.
pub const OFFSETS_SNAPSHOT_BATCH_RECORDS: usize = 1000;

/// Most windows one key query answers (`?windows=N`, `?from=&to=`): an answer is built in
/// memory under the view's read lock.
pub const QUERY_WINDOWS_MAX: usize = 1000;

/// Most windows a key's `?from=&to=` query looks up in the result store (one point
/// read each): a week of one-minute windows.
pub const QUERY_STORED_WINDOWS_MAX: i64 = 10_080;

/// Most stored rows a `?from=&to=` query of a session pipeline scans (sessions are not
/// aligned, so the rows of every key starting in the range are walked): a few tens of
/// milliseconds of sled reads.
pub const QUERY_STORED_SCAN_MAX: usize = 100_000;

/// Most keys a `top` query answers, for the same reason.
pub const QUERY_TOP_MAX: usize = 1000;

/// Checkpoints of one pipeline queued for its checkpoint thread. One: the pipeline thread
/// hands a checkpoint over only when the previous one has been reported, so a queue of one
/// never blocks it, and a pipeline holds at most one encoded checkpoint besides its state.
pub const CHECKPOINT_QUEUE: usize = 1;

/// Bytes of late events a pipeline holds for its `late_topic` before it stops taking
/// input until they are appended: they are appended every `PUBLISH_INTERVAL` anyway, so
/// this is reached only when the topic refuses them (the pipeline then stalls) or late
/// events come faster than 400 MB/s. One source batch more may be held past it.
pub const LATE_BUFFER_BYTES_MAX: usize = 4 << 20;

/// While a pipeline's `late_topic` refuses appends (retried every second), a warning at
/// most this often: the failure counter has every attempt.
pub const LATE_FAILURE_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the drain waits for the first request of a connection accepted just before
/// shutdown began before closing it as idle: a client that connected and is sending
/// gets an answer (503 for writes) instead of a reset; a connection that stays silent
/// holds the drain no longer than this.
pub const DRAIN_FIRST_REQUEST_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Ingest rejections logged at info in one second, at most: a client sending bad data as
/// fast as it can must not flood the log (or the disk under journald). The rest of that
/// second go to debug, and the next info line counts them (`demoted`); the
/// `weir_http_request_duration_seconds` counts by status have every one.
pub const REJECTION_INFO_LINES_PER_SECOND_MAX: u64 = 20;

/// Closed rows a pipeline holds for its next checkpoint. Every closed row is a sled insert
/// on the checkpoint thread; where windows close faster than sled takes them (short
/// sessions during a rebuild), the pipeline thread stops taking input at this many until
/// a checkpoint has them, so memory (about 100 bytes a row, plus the emptied list of the
/// last checkpoint kept for the next) and the final checkpoint at a stop stay bounded.
/// Each checkpoint also rewrites every open session changed since the last, so fewer,
/// larger checkpoints cost less per row: the bench's 8M-event session rebuild waited
/// about a fifth of its time here at 100,000, not at this bound (its peak RSS rose from
/// 460 to 520 MB; at 250,000, to 630 MB for no further gain).
pub const PENDING_ROWS_MAX: usize = 160_000;

/// Longest a connection refused over `max_connections` is kept: its 503 waits for the
/// request's first bytes (a client answered before it spoke takes the connection for
/// broken), then its request and body are read and dropped until the client closes, so
/// the client reads the 503 rather than a reset (`http::refuse_connection`). A client on
/// loopback or a LAN has sent its request and read the answer well within it; a silent
/// one gets the 503 when it runs out.
pub const REFUSED_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Most refused connections lingering at once (each holds a socket and a small task,
/// no buffer); beyond it a refused connection is closed right after its 503.
pub const REFUSED_LINGERING_MAX: usize = 1024;

/// Read buffer of one HTTP/1 connection beyond which hyper reads no more (its
/// `max_buf_size`; hyper's own default is about 408 KiB). It bounds a request head and
/// the bytes of a body read ahead of the handler (the read that crosses it can take the
/// buffer to twice this): at `max_connections` = 1,024 the buffers hold at most 128 MiB,
/// not 800 MiB. A head larger than that gets 431. Bodies are read 64 KiB at a time,
/// 16 reads a MiB.
pub const HTTP_READ_BUFFER_MAX: usize = 64 << 10;
