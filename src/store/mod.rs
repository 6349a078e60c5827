//! The result store: the only module that touches sled. One tree; every key of a pipeline
//! starts with `p \0 <name> \0` and then a kind byte:
//!
//! - `m`: meta, the definition fingerprint (8 bytes LE) and the layout version
//!   ([`LAYOUT`], one byte; a store of another layout is rebuilt from the log);
//! - `h`: head, the input offsets per partition (next to read) and the engine head
//!   (watermarks, close position, counters);
//! - `c` + pane start (8 bytes, order-preserving) + bucket (2 bytes BE): the cells of the
//!   pane whose key falls in that bucket ([`cell_bucket`]), each as key then aggregate
//!   states. Grouping keeps a checkpoint of 100,000 changed cells to about
//!   [`CELL_BUCKETS`] sled inserts per pane instead of 100,000 (sled costs microseconds per
//!   insert); the price is that a changed cell rewrites its bucket's neighbours;
//! - `s` + slot (a session start rounded down to the gap, 8 bytes, order-preserving) +
//!   bucket: session windows' cells, the open sessions starting in that slot whose key
//!   falls in the bucket, each as key, start, last event, end, then states. A checkpoint
//!   rewrites a bucket whole from the engine, so a session merged away or closed leaves
//!   its bucket in the same batch as the rest (an empty bucket is removed);
//! - `r` + slot (8 bytes, order-preserving) + bucket (2 bytes BE): the closed rows of the
//!   slot whose key falls in the bucket, each as key, start, end, complete (1 or 0), then
//!   the states (see [`RowWrites`]). The slot is the window start for aligned windows
//!   (tumbling, hopping) and the start rounded down to the gap for sessions (the `s`
//!   slots), so a session slot's rows close over several checkpoints: a checkpoint reads
//!   each (slot, bucket) it has rows for and writes it merged, a row of the same (start,
//!   key) replacing the stored one. Session windows close about a row per event, and a
//!   sled insert per row (layout 2) made the checkpoint thread the pipeline's pace;
//!   layout 3 had 1,024 buckets, layout 4 has [`CELL_BUCKETS`] = 256 (fewer, larger
//!   values: sled's cost is per value).
//!   Expired rows go a whole slot at a time: a session slot only once its newest
//!   possible start (slot + gap - 1) is before the retention bound, so retention of
//!   session results is approximate by at most one slot (a gap) longer.
//!
//! A checkpoint is one atomic `sled::Batch` of the head, the cells changed since the last
//! one, the deletion of cells of dropped panes and of expired rows, and the row buckets
//! merged with the rows closed since; it counts only once `flush` returned. sled's own flush ends in
//! `sync_file_range(2)` on Linux, which survives a crash of weir but not a power loss (no
//! flush of the disk's cache, no metadata): sled fsyncs only every 500 ms in the
//! background. So every flush here is followed by an fdatasync of sled's log file (`db`)
//! through a descriptor of our own ([`Shared::flush`]), and opening the store fsyncs its
//! directory, which sled never does. Everything here is derived from the log: a
//! pipeline whose fingerprint changed is cleared and rebuilt from the log.

pub mod codec;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};

use codec::{CodecError, Reader, Writer};

use crate::disk::DiskSpace;
use crate::pipeline::aggregate::AggState;
use crate::pipeline::engine::{EngineHead, SessionCell};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("result store: {0}")]
    Sled(#[from] sled::Error),
    #[error("result store: {0}")]
    Corrupt(#[from] CodecError),
    #[error("starting a pipeline: {0}")]
    Start(String),
    #[error("result store: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The store's bytes are unreadable (sled's checksums or our decoding say so): what
    /// is derived from the log is then rebuilt rather than refused.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt(_) | StoreError::Sled(sled::Error::Corruption { .. })
        )
    }
}

/// The sled database of a data dir.
///
/// sled refuses every write after one IO error (a full disk, a failed fsync) until it is
/// opened again: its `global_error` is sticky. So a write that fails with an IO error
/// marks the store broken, reads go on from the open database, and the next write
/// reopens it first (once the disk has [`REOPEN_FREE_BYTES`] beyond the free-space
/// reserve, when told of one by [`Store::watch_space`]): sled recovers its own log to the
/// last flush, and the pipeline's next checkpoint writes everything again, as after any
/// failed checkpoint.
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    cache_bytes: u64,
    /// `None` only after a reopen failed (reads and writes then fail until one succeeds).
    db: RwLock<Option<sled::Db>>,
    /// A write failed with an IO error: reopen before the next write.
    broken: AtomicBool,
    disk: OnceLock<Arc<DiskSpace>>,
}

/// Free space beyond the reserve a broken store waits for before it is reopened: sled
/// writes on open, and a reopen on a disk still full would leave nothing to read from.
pub const REOPEN_FREE_BYTES: u64 = 4 << 20;

impl Store {
    /// Opens the store in `dir`; if sled cannot read it, moves it aside to
    /// `<dir>.unreadable` (replacing an older one) and starts an empty store: every
    /// pipeline is then rebuilt from the log, which the store is derived from.
    pub fn open_or_rebuild(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        match Store::open(dir, cache_bytes) {
            Ok(store) => Ok(store),
            Err(e) => {
                Store::move_aside(dir, &e)?;
                Store::open(dir, cache_bytes)
            }
        }
    }

    /// Moves the unreadable store in `dir` to `<dir>.unreadable` (replacing an older one),
    /// for a look later; the caller opens an empty one in its place.
    pub fn move_aside(dir: &Path, e: &StoreError) -> Result<(), StoreError> {
        let mut aside = dir.as_os_str().to_owned();
        aside.push(".unreadable");
        let aside = std::path::PathBuf::from(aside);
        tracing::error!(error = %e, dir = %dir.display(), aside = %aside.display(),
            "the result store cannot be read; moving it aside and rebuilding every pipeline from the log");
        let io = |e: std::io::Error| StoreError::Start(format!("moving the store aside: {e}"));
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(io)?;
        }
        std::fs::rename(dir, &aside).map_err(io)
    }

    /// Opens (creating) the store in `dir` with `cache_bytes` of page cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = open_db(dir, cache_bytes)?;
        Ok(Store {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                cache_bytes,
                db: RwLock::new(Some(db)),
                broken: AtomicBool::new(false),
                disk: OnceLock::new(),
            }),
        })
    }

    /// A broken store is reopened only once `disk` has room (see [`Store`]).
    pub fn watch_space(&self, disk: Arc<DiskSpace>) {
        let _ = self.shared.disk.set(disk);
    }

    pub fn pipeline(&self, name: &str) -> PipelineStore {
        let mut prefix = b"p\0".to_vec();
        prefix.extend_from_slice(name.as_bytes());
        prefix.push(0);
        PipelineStore {
            shared: Arc::clone(&self.shared),
            prefix,
        }
    }

    /// Flushes everything (checkpoints flush themselves; this is for a clean stop).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.write(|tree| self.shared.flush(tree))?;
        Ok(())
    }
}

fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::LowSpace)
        .open()?;
    // sled creates its directory and files without fsyncing a directory: make their
    // names durable, or a power loss can take the whole store with them.
    crate::log::datadir::sync_dir(dir).map_err(io_error)?;
    if let Some(parent) = dir.parent() {
        crate::log::datadir::sync_dir(parent).map_err(io_error)?;
    }
    Ok(db)
}

/// The file sled keeps its log in, under the store's directory.
const SLED_LOG_FILE: &str = "db";

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(e))
}

impl Shared {
    /// sled's flush, then the fdatasync it leaves out (see the module doc): once this
    /// returns, what was applied survives a power loss.
    fn flush(&self, tree: &sled::Tree) -> Result<(), StoreError> {
        tree.flush()?;
        std::fs::File::open(self.dir.join(SLED_LOG_FILE))
            .and_then(|f| f.sync_data())
            .map_err(io_error)
    }

    /// The open tree, for reads.
    fn tree(&self) -> Result<MappedRwLockReadGuard<'_, sled::Tree>, StoreError> {
        RwLockReadGuard::try_map(self.db.read(), |db| db.as_deref()).map_err(|_| {
            StoreError::Unavailable(format!(
                "{} is closed after a write failed and could not be reopened yet",
                self.dir.display()
            ))
        })
    }

    /// Runs the writes `f` (reopening a broken store first); an IO error marks the
    /// store broken.
    fn write<T>(
        &self,
        f: impl FnOnce(&sled::Tree) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.reopen_if_broken()?;
        let result = f(&*self.tree()?);
        if let Err(StoreError::Sled(sled::Error::Io(e))) = &result
            && !self.broken.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e,
                "result store write failed; it is reopened before the next write");
        }
        result
    }

    fn reopen_if_broken(&self) -> Result<(), StoreError> {
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(disk) = self.disk.get()
            && let Err(low) = disk.check(REOPEN_FREE_BYTES)
        {
            return Err(StoreError::Unavailable(format!(
                "{} waits for free space to be reopened after a write failed: {low}",
                self.dir.display()
            )));
        }
        let mut db = self.db.write();
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        // sled holds a lock on its files until the old database is gone.
        drop(db.take());
        let reopened = open_db(&self.dir, self.cache_bytes).map_err(|e| {
            StoreError::Unavailable(format!(
                "reopening {} after a write failed: {e}",
                self.dir.display()
            ))
        })?;
        *db = Some(reopened);
        self.broken.store(false, Ordering::Release);
        tracing::info!(dir = %self.dir.display(), "result store reopened after a write failure");
        Ok(())
    }
}

/// Layout of a pipeline's keys and values; 2: cells grouped in buckets; 3: closed rows
/// grouped in buckets of slots too.
pub const LAYOUT: u8 = 4;

/// Buckets the cells of a pane are grouped in, and a key's bucket (`pipeline::key`, where
/// the session engine computes it once per key).
pub use crate::pipeline::key::{CELL_BUCKETS, cell_bucket};

/// The meta value of a definition: its fingerprint and the layout.
fn meta(fingerprint: u64) -> [u8; 9] {
    let mut m = [LAYOUT; 9];
    m[..8].copy_from_slice(&fingerprint.to_le_bytes());
    m
}

/// An order-preserving encoding of an i64 (big-endian with the sign bit flipped).
fn ordered(v: i64) -> [u8; 8] {
    (v.cast_unsigned() ^ (1 << 63)).to_be_bytes()
}

fn from_ordered(b: &[u8]) -> Option<i64> {
    let b: [u8; 8] = b.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)).cast_signed())
}

/// The slot (see the module doc) of a row starting at `start_ms`, `slot_ms` wide.
fn slot_of(start_ms: i64, slot_ms: i64) -> i64 {
    start_ms.div_euclid(slot_ms).saturating_mul(slot_ms)
}

/// The slot of a row bucket's key, from what follows the `r` kind byte.
fn row_slot(rest: &[u8]) -> Result<i64, StoreError> {
    if rest.len() != 10 {
        return Err(CodecError("row bucket key").into());
    }
    Ok(from_ordered(&rest[..8]).ok_or(CodecError("row bucket key"))?)
}

/// Newest window first, then key descending (the order of the layout of a key per row).
fn sort_newest_first(rows: &mut [StoredRow]) {
    rows.sort_unstable_by(|a, b| (b.start_ms, &b.key).cmp(&(a.start_ms, &a.key)));
}

/// One row of a row bucket's value, its states not decoded yet.
struct RowEntry<'a> {
    key: &'a str,
    start_ms: i64,
    end_ms: i64,
    complete: bool,
    states: &'a [u8],
    /// The whole encoded row, to copy it as is.
    raw: &'a [u8],
}

impl RowEntry<'_> {
    fn decode(&self) -> Result<StoredRow, StoreError> {
        let mut r = Reader(self.states);
        let values = r.states()?;
        if !r.0.is_empty() {
            return Err(CodecError("bytes after a row's states").into());
        }
        Ok(StoredRow {
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            key: Arc::from(self.key),
            values,
            complete: self.complete,
        })
    }
}

/// The rows of a row bucket's value, in the order written.
struct RowEntries<'a>(Reader<'a>);

impl<'a> Iterator for RowEntries<'a> {
    type Item = Result<RowEntry<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.0.is_empty() {
            return None;
        }
        let at = self.0.0;
        let entry = (|| {
            let key = self.0.str()?;
            let start_ms = self.0.i64()?;
            let end_ms = self.0.i64()?;
            let complete = match self.0.u8()? {
                0 => false,
                1 => true,
                _ => return Err(CodecError("row complete flag")),
            };
            let states = self.0.bytes()?;
            let raw = &at[..at.len() - self.0.0.len()];
            Ok(RowEntry {
                key,
                start_ms,
                end_ms,
                complete,
                states,
                raw,
            })
        })();
        if entry.is_err() {
            // Stop at the first error: what follows cannot be delimited.
            self.0.0 = &[];
        }
        Some(entry)
    }
}

/// One pipeline's part of the store (a handle: clones share the tree).
#[derive(Clone)]
pub struct PipelineStore {
    shared: Arc<Shared>,
    prefix: Vec<u8>,
}

/// What a start restores.
pub struct Restored {
    pub offsets: Vec<i64>,
    pub head: EngineHead,
    pub cells: Vec<(i64, Arc<str>, Vec<AggState>)>,
    /// Open sessions (session windows).
    pub sessions: Vec<SessionCell>,
}

/// A closed row as stored.
pub struct StoredRow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub key: Arc<str>,
    pub values: Vec<AggState>,
    /// False when retention may have removed events of the window unread.
    pub complete: bool,
}

/// Closed rows on their way to a checkpoint, each already encoded as a row bucket holds
/// it, in one buffer: `Writer::bytes(key)`, start, end (`Writer::i64`), complete
/// (`Writer::u8`, 1 or 0), then the states (`Writer::states`) length-prefixed, so a merge
/// copies a row without decoding them. The pipeline thread encodes a row as it closes
/// (the key's text is in cache then) and the checkpoint thread copies bytes: no look at
/// the key there, no allocation per row.
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct RowWrites {
    bytes: Vec<u8>,
    rows: Vec<RowAt>,
}

/// Where a row of [`RowWrites`] is.
#[derive(Clone, Copy)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RowAt {
    start_ms: i64,
    /// The end of its bytes (they begin where the row before ends).
    end: usize,
    /// `cell_bucket` of its key.
    bucket: u16,
}

impl RowWrites {
    /// Adds the row of (window `start_ms`, `key`); `bucket` is `cell_bucket(key)`.
    pub fn push(
        &mut self,
        start_ms: i64,
        key: &str,
        bucket: u16,
        end_ms: i64,
        complete: bool,
        states: &[AggState],
    ) {
        debug_assert_eq!(bucket, cell_bucket(key));
        let mut w = Writer(&mut self.bytes);
        w.bytes(key.as_bytes());
        w.i64(start_ms);
        w.i64(end_ms);
        w.u8(u8::from(complete));
        w.bytes_with(|w| w.states(states));
        self.rows.push(RowAt {
            start_ms,
            end: self.bytes.len(),
            bucket,
        });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows held without growing.
    pub fn capacity(&self) -> usize {
        self.rows.capacity()
    }

    /// Empties it, keeping its allocations.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.rows.clear();
    }

    /// Moves the rows of `later` after these.
    pub fn append(&mut self, later: &mut RowWrites) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&later.bytes);
        self.rows.extend(later.rows.iter().map(|r| RowAt {
            end: base + r.end,
            ..*r
        }));
        later.clear();
    }

    /// Row `i`: its start, its bucket and its encoded bytes.
    fn get(&self, i: usize) -> (i64, u16, &[u8]) {
        let from = i.checked_sub(1).map_or(0, |p| self.rows[p].end);
        let r = self.rows[i];
        (r.start_ms, r.bucket, &self.bytes[from..r.end])
    }
}

/// What one checkpoint writes.
#[derive(Default)]
pub struct Checkpoint {
    pub offsets: Vec<i64>,
    pub head: Vec<u8>,
    /// (pane, bucket, encoded cells) of buckets with a changed cell: every cell of the
    /// bucket, each as `Writer::bytes(key)` then `Writer::states`.
    pub cells: Vec<(i64, u16, Vec<u8>)>,
    /// Cells of panes before this are deleted (`None`: every cell).
    pub oldest_pane: Option<i64>,
    /// (slot, bucket, encoded sessions) of session buckets with a changed session: every
    /// open session of the bucket, each as `Writer::bytes(key)`, start, last, end
    /// (`Writer::i64`), then `Writer::states`; empty: the bucket is removed.
    pub sessions: Vec<(i64, u16, Vec<u8>)>,
    /// Session buckets of slots before this are deleted (`None`: every one).
    pub oldest_slot: Option<i64>,
    /// Rows closed since the last checkpoint.
    pub rows: RowWrites,
    /// `rows` may hold rows written before (a failed checkpoint's, sent again; the first
    /// checkpoint after a start): a row then replaces a stored one of the same (start,
    /// key), and of two in `rows` the later wins. Otherwise every row is new (a window
    /// closes once) and is appended without a look at the stored ones.
    pub rows_again: bool,
    /// Rows of windows starting before this are deleted: whole slots, so for session
    /// windows only the slots whose newest possible start is before it (see the module
    /// doc).
    pub rows_before: Option<i64>,
    /// The width of the slots rows are grouped by: `None` for aligned windows (tumbling,
    /// hopping), whose slot is the window start; the gap for session windows, whose
    /// slot is the start rounded down to it (as the open sessions' `s` buckets).
    pub rows_slot_ms: Option<i64>,
    /// The pipeline's `output_topic` outbox (see `pipeline::output`): the result rows
    /// this checkpoint emits, appended after the commit; `None` without an output topic.
    pub outbox: Option<Vec<u8>>,
}

impl Checkpoint {
    /// The oldest row slot `rows_before` keeps: whole slots only, so a session slot goes
    /// once its newest possible start (slot + gap - 1) is before `rows_before`.
    fn rows_kept_from(&self) -> Option<i64> {
        let before = self.rows_before?;
        Some(match self.rows_slot_ms {
            Some(gap) => before.saturating_sub(gap.max(1)).saturating_add(1),
            None => before,
        })
    }
}

impl PipelineStore {
    fn key(&self, kind: u8, at: Option<i64>, rest: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 9 + rest.len());
        k.extend_from_slice(&self.prefix);
        k.push(kind);
        if let Some(at) = at {
            k.extend_from_slice(&ordered(at));
        }
        k.extend_from_slice(rest);
        k
    }

    /// The checkpoint, if there is one for this `fingerprint`; otherwise clears what is
    /// kept for the pipeline (a changed definition is rebuilt from the log).
    pub fn restore(
        &self,
        fingerprint: u64,
        out_of_orderness_ms: i64,
        idle_ms: i64,
    ) -> Result<Option<Restored>, StoreError> {
        let (meta, head) = {
            let tree = self.shared.tree()?;
            (
                tree.get(self.key(b'm', None, &[]))?,
                tree.get(self.key(b'h', None, &[]))?,
            )
        };
        let same = meta.as_deref() == Some(&self::meta(fingerprint)[..]);
        let (true, Some(head)) = (same, head) else {
            self.reset(fingerprint)?;
            return Ok(None);
        };
        let tree = self.shared.tree()?;
        let mut r = Reader(&head);
        let n = usize::try_from(r.u64()?).map_err(|_| CodecError("offsets"))?;
        let mut offsets = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            offsets.push(r.i64()?);
        }
        let head = r.head(out_of_orderness_ms, idle_ms)?;
        let mut cells = Vec::new();
        let prefix = self.key(b'c', None, &[]);
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let rest = &k[prefix.len()..];
            let pane =
                from_ordered(rest.get(..8).unwrap_or_default()).ok_or(CodecError("cell key"))?;
            let mut r = Reader(&v);
            while !r.0.is_empty() {
                let key = Arc::from(r.str()?);
                cells.push((pane, key, r.states()?));
            }
        }
        let mut sessions = Vec::new();
        let prefix = self.key(b's', None, &[]);
        for item in tree.scan_prefix(&prefix) {
            let (_, v) = item?;
            let mut r = Reader(&v);
            while !r.0.is_empty() {
                let key = Arc::from(r.str()?);
                let (start, last, end) = (r.i64()?, r.i64()?, r.i64()?);
                sessions.push((key, start, last, end, r.states()?));
            }
        }
        Ok(Some(Restored {
            offsets,
            head,
            cells,
            sessions,
        }))
    }

    /// Closed rows of the newest windows, newest window first (rows of one window by key,
    /// descending): whole windows, at most `rows_max` rows. The second value is the start
    /// of the newest window left out (older rows exist), if any.
    pub fn rows(&self, rows_max: usize) -> Result<(Vec<StoredRow>, Option<i64>), StoreError> {
        let prefix = self.key(b'r', None, &[]);
        let mut out: Vec<StoredRow> = Vec::new();
        // Rows of the window being read, added to `out` once it is whole and fits.
        let mut window: Vec<StoredRow> = Vec::new();
        // The rows of the slot being read (every bucket of it), then fed in start order:
        // slots are disjoint ranges of starts, so slot by slot is window by window.
        let mut slot_rows: Vec<StoredRow> = Vec::new();
        let mut slot: Option<i64> = None;
        let feed = |slot_rows: &mut Vec<StoredRow>,
                    out: &mut Vec<StoredRow>,
                    window: &mut Vec<StoredRow>|
         -> Option<i64> {
            sort_newest_first(slot_rows);
            for row in slot_rows.drain(..) {
                if window.first().is_some_and(|r| r.start_ms != row.start_ms) {
                    if out.len() + window.len() > rows_max {
                        return window.first().map(|r| r.start_ms);
                    }
                    out.append(window);
                }
                window.push(row);
            }
            None
        };
        for item in self.shared.tree()?.scan_prefix(&prefix).rev() {
            let (k, v) = item?;
            let at = row_slot(&k[prefix.len()..])?;
            if slot.is_some_and(|s| s != at)
                && let Some(left_out) = feed(&mut slot_rows, &mut out, &mut window)
            {
                return Ok((out, Some(left_out)));
            }
            slot = Some(at);
            for entry in RowEntries(Reader(&v)) {
                slot_rows.push(entry?.decode()?);
            }
        }
        if let Some(left_out) = feed(&mut slot_rows, &mut out, &mut window) {
            return Ok((out, Some(left_out)));
        }
        if out.len() + window.len() > rows_max {
            return Ok((out, window.first().map(|r| r.start_ms)));
        }
        out.append(&mut window);
        Ok((out, None))
    }

    /// `key`'s closed rows of the windows starting at `starts`, in that order, at most `n`:
    /// aligned windows (tumbling, hopping), whose row slot is the window start, so one
    /// point read of the key's bucket per start.
    pub fn key_rows(
        &self,
        key: &str,
        starts: impl Iterator<Item = i64>,
        n: usize,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let mut out = Vec::new();
        let tree = self.shared.tree()?;
        let bucket = cell_bucket(key).to_be_bytes();
        for start in starts {
            if out.len() >= n {
                break;
            }
            let Some(v) = tree.get(self.key(b'r', Some(start), &bucket))? else {
                continue;
            };
            for entry in RowEntries(Reader(&v)) {
                let entry = entry?;
                if entry.start_ms == start && entry.key == key {
                    out.push(entry.decode()?);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// `key`'s closed rows starting in `[oldest, newest]`, newest first, at most `n`
    /// (session windows, whose starts are not aligned): a point read of the key's bucket
    /// in each slot (`slot_ms` wide, the gap) from `newest`'s down to `oldest`'s, or to
    /// the oldest slot stored if that is later. `None` if that takes more than
    /// `scan_max` slots read plus rows decoded.
    pub fn key_rows_scan(
        &self,
        key: &str,
        oldest: i64,
        newest: i64,
        n: usize,
        scan_max: usize,
        slot_ms: i64,
    ) -> Result<Option<Vec<StoredRow>>, StoreError> {
        let slot_ms = slot_ms.max(1);
        let tree = self.shared.tree()?;
        let prefix = self.key(b'r', None, &[]);
        // No point reading slots older than the oldest one stored.
        let stored_oldest = match tree.scan_prefix(&prefix).keys().next() {
            Some(k) => row_slot(&k?[prefix.len()..])?,
            None => return Ok(Some(Vec::new())),
        };
        let bucket = cell_bucket(key).to_be_bytes();
        let oldest_slot = slot_of(oldest, slot_ms).max(stored_oldest);
        let mut slot = slot_of(newest, slot_ms);
        let mut out = Vec::new();
        let mut scanned = 0usize;
        let mut found = Vec::new();
        while slot >= oldest_slot && out.len() < n {
            scanned += 1;
            if scanned > scan_max {
                return Ok(None);
            }
            if let Some(v) = tree.get(self.key(b'r', Some(slot), &bucket))? {
                for entry in RowEntries(Reader(&v)) {
                    scanned += 1;
                    if scanned > scan_max {
                        return Ok(None);
                    }
                    let entry = entry?;
                    if entry.key == key && (oldest..=newest).contains(&entry.start_ms) {
                        found.push(entry.decode()?);
                    }
                }
                sort_newest_first(&mut found);
                let room = n - out.len();
                out.extend(found.drain(..).take(room));
            }
            let Some(older) = slot.checked_sub(slot_ms) else {
                break;
            };
            slot = older;
        }
        Ok(Some(out))
    }

    /// Clears what is kept for the pipeline and records `fingerprint`: it is rebuilt
    /// from the log.
    pub fn reset(&self, fingerprint: u64) -> Result<(), StoreError> {
        self.shared.write(|tree| {
            self.clear(tree)?;
            tree.insert(self.key(b'm', None, &[]), &self::meta(fingerprint))?;
            self.shared.flush(tree)?;
            Ok(())
        })
    }

    /// Removes everything kept for the pipeline, its definition fingerprint included,
    /// and flushes: the next start finds no checkpoint and rebuilds it from the log
    /// (`weir pipeline reset`). Returns the number of keys removed.
    pub fn forget(&self) -> Result<usize, StoreError> {
        self.shared.write(|tree| {
            let n = tree.scan_prefix(&self.prefix).keys().count();
            self.clear(tree)?;
            self.shared.flush(tree)?;
            Ok(n)
        })
    }

    fn clear(&self, tree: &sled::Tree) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in tree.scan_prefix(&self.prefix).keys() {
            batch.remove(k?);
        }
        tree.apply_batch(batch)?;
        Ok(())
    }

    /// Writes `c` as one atomic batch and flushes it: once this returns, it counts.
    pub fn commit(&self, c: &Checkpoint) -> Result<(), StoreError> {
        self.shared.write(|tree| self.commit_to(tree, c))
    }

    fn commit_to(&self, tree: &sled::Tree, c: &Checkpoint) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut head = Vec::with_capacity(16 + 8 * c.offsets.len() + c.head.len());
        let mut w = Writer(&mut head);
        w.u64(c.offsets.len() as u64);
        for o in &c.offsets {
            w.i64(*o);
        }
        head.extend_from_slice(&c.head);
        batch.insert(self.key(b'h', None, &[]), head);
        // Cells of dropped panes: everything before the oldest pane held.
        let cells_from = self.key(b'c', None, &[]);
        let cells_to = match c.oldest_pane {
            Some(p) => self.key(b'c', Some(p), &[]),
            None => self.key(b'd', None, &[]),
        };
        for k in tree.range(cells_from..cells_to).keys() {
            batch.remove(k?);
        }
        for (pane, bucket, cells) in &c.cells {
            batch.insert(
                self.key(b'c', Some(*pane), &bucket.to_be_bytes()),
                cells.as_slice(),
            );
        }
        let sessions_from = self.key(b's', None, &[]);
        let sessions_to = match c.oldest_slot {
            Some(p) => self.key(b's', Some(p), &[]),
            None => self.key(b't', None, &[]),
        };
        for k in tree.range(sessions_from..sessions_to).keys() {
            batch.remove(k?);
        }
        for (slot, bucket, sessions) in &c.sessions {
            let k = self.key(b's', Some(*slot), &bucket.to_be_bytes());
            if sessions.is_empty() {
                batch.remove(k);
            } else {
                batch.insert(k, sessions.as_slice());
            }
        }
        if let Some(kept_from) = c.rows_kept_from() {
            let from = self.key(b'r', None, &[]);
            let to = self.key(b'r', Some(kept_from), &[]);
            for k in tree.range(from..to).keys() {
                batch.remove(k?);
            }
        }
        self.merge_rows(tree, &mut batch, c)?;
        if let Some(outbox) = &c.outbox {
            batch.insert(self.key(b'o', None, &[]), outbox.as_slice());
        }
        crate::failpoint!("store::commit", |e| StoreError::Sled(sled::Error::Io(e)));
        tree.apply_batch(batch)?;
        // Applied, not yet flushed: the checkpoint does not count yet.
        crate::failpoint!("store::flush", |e| StoreError::Sled(sled::Error::Io(e)));
        self.shared.flush(tree)?;
        Ok(())
    }

    /// Adds the rows closed since the last checkpoint to `batch`, a value per (slot,
    /// bucket): each group's stored value is read and the new rows appended to it (with
    /// `rows_again`, a row of the same (start, key) replacing the stored one). Reading
    /// then writing is safe: only the pipeline's checkpoint thread writes its rows, one
    /// checkpoint at a time, and nothing else changes them between the read and the batch
    /// (the deletion of expired slots is in the same batch, and a merged slot it deletes
    /// is deleted, as before).
    fn merge_rows(
        &self,
        tree: &sled::Tree,
        batch: &mut sled::Batch,
        c: &Checkpoint,
    ) -> Result<(), StoreError> {
        let rows = &c.rows;
        // (slot, bucket, row): a run per group, its rows in the order they closed.
        let mut order: Vec<(i64, u16, u32)> = (0..rows.len())
            .map(|i| {
                let (start, bucket, _) = rows.get(i);
                let slot = match c.rows_slot_ms {
                    Some(gap) => slot_of(start, gap.max(1)),
                    None => start,
                };
                (
                    slot,
                    bucket,
                    u32::try_from(i).expect("fewer rows than u32::MAX"),
                )
            })
            .collect();
        order.sort_unstable();
        let expired = |slot: i64| c.rows_kept_from().is_some_and(|kept| slot < kept);
        let mut fresh: hashbrown::HashSet<(i64, &str), foldhash::fast::RandomState> =
            hashbrown::HashSet::default();
        let mut again: Vec<&[u8]> = Vec::new();
        for group in order.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let (slot, bucket, _) = group[0];
            if expired(slot) {
                continue;
            }
            let k = self.key(b'r', Some(slot), &bucket.to_be_bytes());
            let stored = tree.get(&k)?;
            let stored = stored.as_deref().unwrap_or_default();
            let new_len: usize = group.iter().map(|g| rows.get(g.2 as usize).2.len()).sum();
            let mut v = Vec::with_capacity(stored.len() + new_len);
            if c.rows_again {
                // The last of two rows of one (start, key) wins, over a stored one too.
                fresh.clear();
                again.clear();
                for g in group.iter().rev() {
                    let raw = rows.get(g.2 as usize).2;
                    let entry = RowEntries(Reader(raw)).next().ok_or(CodecError("row"))??;
                    if fresh.insert((entry.start_ms, entry.key)) {
                        again.push(raw);
                    }
                }
                for entry in RowEntries(Reader(stored)) {
                    let entry = entry?;
                    if !fresh.contains(&(entry.start_ms, entry.key)) {
                        v.extend_from_slice(entry.raw);
                    }
                }
                for raw in again.iter().rev() {
                    v.extend_from_slice(raw);
                }
            } else {
                v.extend_from_slice(stored);
                for g in group {
                    v.extend_from_slice(rows.get(g.2 as usize).2);
                }
            }
            batch.insert(k, v);
        }
        Ok(())
    }

    /// The outbox the last checkpoint wrote (see `pipeline::output`), if any.
    pub fn outbox(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .shared
            .tree()?
            .get(self.key(b'o', None, &[]))?
            .map(|v| v.to_vec()))
    }

    /// Replaces the outbox (once its rows are durable in the output topic) and flushes.
    pub fn set_outbox(&self, outbox: &[u8]) -> Result<(), StoreError> {
        self.shared.write(|tree| {
            tree.insert(self.key(b'o', None, &[]), outbox)?;
            self.shared.flush(tree)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::engine::Counters;
    use crate::pipeline::watermark::Watermarks;

    #[test]
    fn ordered_keys_sort_as_numbers() {
        let mut v = [-5i64, 3, i64::MIN, 0, i64::MAX, -1];
        let mut enc: Vec<[u8; 8]> = v.iter().map(|x| ordered(*x)).collect();
        enc.sort_unstable();
        v.sort_unstable();
        let back: Vec<i64> = enc.iter().map(|b| from_ordered(b).unwrap()).collect();
        assert_eq!(back, v);
    }

    #[test]
    fn a_checkpoint_restores_and_a_new_fingerprint_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let p = store.pipeline("p");
        assert!(p.restore(1, 0, 0).unwrap().is_none());
        let head = EngineHead {
            marks: Watermarks::new(2, 0, 0),
            next_close_ms: Some(10),
            counters: Counters::default(),
            taints: Vec::new(),
        };
        let mut h = Vec::new();
        Writer(&mut h).head(&head);
        let commit = |oldest, cells: Vec<(i64, &str, u64)>| {
            p.commit(&Checkpoint {
                offsets: vec![4, 7],
                head: h.clone(),
                cells: cells
                    .into_iter()
                    .map(|(pane, k, n)| {
                        let mut b = Vec::new();
                        let mut w = Writer(&mut b);
                        w.bytes(k.as_bytes());
                        w.states(&[AggState::Count(n)]);
                        (pane, cell_bucket(k), b)
                    })
                    .collect(),
                oldest_pane: oldest,
                sessions: Vec::new(),
                oldest_slot: None,
                rows: {
                    let mut rows = RowWrites::default();
                    rows.push(0, "a", cell_bucket("a"), 10, false, &[AggState::Count(9)]);
                    rows
                },
                // Both commits write the row.
                rows_again: true,
                rows_before: None,
                rows_slot_ms: None,
                outbox: None,
            })
            .unwrap();
        };
        commit(Some(-10), vec![(-10, "a", 1), (10, "a", 2), (10, "b", 3)]);
        commit(Some(10), vec![(20, "b", 4)]);
        let r = p.restore(1, 0, 0).unwrap().unwrap();
        assert_eq!(r.offsets, [4, 7]);
        assert_eq!(r.head, head);
        let mut cells: Vec<(i64, String)> = r
            .cells
            .iter()
            .map(|(p, k, _)| (*p, k.to_string()))
            .collect();
        cells.sort();
        assert_eq!(
            cells,
            [(10, "a".into()), (10, "b".into()), (20, "b".into())]
        );
        let (rows, left_out) = p.rows(10).unwrap();
        assert_eq!((rows.len(), left_out), (1, None));
        assert_eq!(rows[0].values, [AggState::Count(9)]);
        assert!(!rows[0].complete, "the mark is kept");
        assert!(p.restore(2, 0, 0).unwrap().is_none(), "a new definition");
        assert!(p.rows(10).unwrap().0.is_empty());
    }

    /// Damage sled does not see (a value we cannot decode) is corruption: the runner
    /// rebuilds the pipeline from the log rather than refusing to start.
    #[test]
    fn an_undecodable_checkpoint_is_corruption_and_reset_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let p = store.pipeline("p");
        assert!(p.restore(7, 0, 0).unwrap().is_none(), "new: meta written");
        p.shared
            .tree()
            .unwrap()
            .insert(p.key(b'h', None, &[]), &[0xFFu8; 3][..])
            .unwrap();
        let e = p.restore(7, 0, 0).err().expect("garbage head");
        assert!(e.is_corruption(), "{e}");
        p.reset(7).unwrap();
        assert!(
            p.restore(7, 0, 0).unwrap().is_none(),
            "cleared, rebuilt from the log"
        );
    }

    /// `rows` loads whole windows, newest first, within its bound and says where it
    /// stopped; `key_rows` finds one key's rows by window start.
    #[test]
    fn rows_are_bounded_by_whole_windows_and_found_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let p = store.pipeline("p");
        p.commit(&Checkpoint {
            offsets: vec![1],
            head: Vec::new(),
            rows: {
                let mut rows = RowWrites::default();
                for (start, key, n) in [
                    (0, "a", 1),
                    (0, "b", 2),
                    (10, "a", 3),
                    (20, "a", 4),
                    (20, "b", 5),
                ] {
                    rows.append(&mut row_write(start, key, n));
                }
                rows
            },
            ..Checkpoint::default()
        })
        .unwrap();
        let starts = |rows: &[StoredRow]| rows.iter().map(|r| r.start_ms).collect::<Vec<_>>();
        let (rows, left_out) = p.rows(3).unwrap();
        assert_eq!((starts(&rows), left_out), (vec![20, 20, 10], Some(0)));
        let (rows, left_out) = p.rows(4).unwrap();
        assert_eq!(
            (starts(&rows), left_out),
            (vec![20, 20, 10], Some(0)),
            "window 0 does not fit whole"
        );
        assert_eq!(p.rows(5).unwrap().1, None);
        let a = p.key_rows("a", [20, 10, 0].into_iter(), 10).unwrap();
        assert_eq!(starts(&a), [20, 10, 0]);
        assert_eq!(a[1].values, [AggState::Count(3)]);
        assert_eq!(
            starts(&p.key_rows("b", [20, 10, 0].into_iter(), 10).unwrap()),
            [20, 0]
        );
        assert_eq!(
            p.key_rows("a", [20, 10, 0].into_iter(), 2).unwrap().len(),
            2
        );
        assert!(
            p.key_rows("c", [20, 10, 0].into_iter(), 10)
                .unwrap()
                .is_empty()
        );
    }

    fn row_write(start_ms: i64, key: &str, n: u64) -> RowWrites {
        let mut rows = RowWrites::default();
        let states = [AggState::Count(n)];
        let complete = !n.is_multiple_of(5);
        rows.push(
            start_ms,
            key,
            cell_bucket(key),
            start_ms + 7,
            complete,
            &states,
        );
        rows
    }

    fn commit_rows(
        p: &PipelineStore,
        rows: Vec<RowWrites>,
        rows_slot_ms: Option<i64>,
        rows_before: Option<i64>,
    ) {
        commit_rows_again(p, rows, rows_slot_ms, rows_before, false);
    }

    fn commit_rows_again(
        p: &PipelineStore,
        rows: Vec<RowWrites>,
        rows_slot_ms: Option<i64>,
        rows_before: Option<i64>,
        rows_again: bool,
    ) {
        let mut all = RowWrites::default();
        for mut r in rows {
            all.append(&mut r);
        }
        p.commit(&Checkpoint {
            offsets: vec![1],
            rows: all,
            rows_again,
            rows_slot_ms,
            rows_before,
            ..Checkpoint::default()
        })
        .unwrap();
    }

    type Seen = Vec<(i64, String, i64, bool, Vec<AggState>)>;

    fn seen(rows: &[StoredRow]) -> Seen {
        rows.iter()
            .map(|r| {
                (
                    r.start_ms,
                    r.key.to_string(),
                    r.end_ms,
                    r.complete,
                    r.values.clone(),
                )
            })
            .collect()
    }

    /// Session rows of one slot close over several checkpoints: each merges into the
    /// slot's buckets; a row written again (a failed checkpoint's, resent: `rows_again`)
    /// replaces the stored one, also twice in one checkpoint.
    #[test]
    fn rows_of_a_slot_merge_over_checkpoints_and_a_rewrite_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let p = store.pipeline("p");
        let gap = Some(30);
        commit_rows(
            &p,
            vec![row_write(0, "a", 1), row_write(5, "b", 2)],
            gap,
            None,
        );
        commit_rows(
            &p,
            vec![row_write(10, "a", 3), row_write(29, "c", 4)],
            gap,
            None,
        );
        commit_rows_again(
            &p,
            vec![
                row_write(5, "b", 20),
                row_write(29, "c", 40),
                row_write(29, "c", 41),
            ],
            gap,
            None,
            true,
        );
        let (rows, left_out) = p.rows(100).unwrap();
        assert_eq!(left_out, None);
        let got: Vec<(i64, String, u64)> = rows
            .iter()
            .map(|r| {
                let [AggState::Count(n)] = r.values[..] else {
                    panic!("{:?}", r.values)
                };
                (r.start_ms, r.key.to_string(), n)
            })
            .collect();
        assert_eq!(
            got,
            [
                (29, "c".into(), 41),
                (10, "a".into(), 3),
                (5, "b".into(), 20),
                (0, "a".into(), 1)
            ]
        );
        let a = p.key_rows_scan("a", 0, 29, 10, 100, 30).unwrap().unwrap();
        assert_eq!(a.iter().map(|r| r.start_ms).collect::<Vec<_>>(), [10, 0]);
        let keys = p
            .shared
            .tree()
            .unwrap()
            .scan_prefix(p.key(b'r', None, &[]))
            .count();
        assert!(keys <= 3, "a value per (slot, bucket), not per row: {keys}");
    }

    /// The answers of the rows of one bucket per (slot, bucket) equal those of the layout
    /// of a key per row (a model: one map entry per (start, key)), for mixed starts and
    /// keys written over several checkpoints, aligned and session windows: each row new
    /// (appended), or rows written again (`rows_again`: the last one stands).
    #[test]
    fn bucketed_rows_answer_as_a_key_per_row() {
        for (slot_ms, rows_again) in [
            (None, false),
            (Some(30), false),
            (None, true),
            (Some(30), true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let p = store.pipeline("p");
            let mut model: std::collections::BTreeMap<(i64, String), (i64, bool, u64)> =
                std::collections::BTreeMap::new();
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let mut next = |m: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % m
            };
            let keys: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
            for _ in 0..12 {
                let mut rows = Vec::new();
                for _ in 0..60 {
                    // Aligned windows start on multiples of 10; sessions anywhere. Not
                    // before the epoch: sled 0.34's reverse iteration can panic ("fucked
                    // up tree traversal") on keys with long runs of 0xFF, as starts just
                    // before the epoch encode to.
                    let start = match slot_ms {
                        None => i64::try_from(next(30)).unwrap() * 10,
                        Some(_) => i64::try_from(next(300)).unwrap(),
                    };
                    let key = &keys[usize::try_from(next(40)).unwrap()];
                    let n = next(1000);
                    if !rows_again && model.contains_key(&(start, key.clone())) {
                        // A window closes once.
                        continue;
                    }
                    model.insert((start, key.clone()), (start + 7, !n.is_multiple_of(5), n));
                    rows.push(row_write(start, key, n));
                }
                commit_rows_again(&p, rows, slot_ms, None, rows_again);
            }
            let all: Seen = model
                .iter()
                .rev()
                .map(|((s, k), (e, c, n))| (*s, k.clone(), *e, *c, vec![AggState::Count(*n)]))
                .collect();
            // `rows`: whole windows newest first within the bound, as the old scan did.
            for rows_max in [0, 1, 5, 37, 100, all.len() - 1, all.len(), all.len() + 3] {
                let mut want = Vec::new();
                let mut left_out = None;
                for w in all.chunk_by(|a, b| a.0 == b.0) {
                    if want.len() + w.len() > rows_max {
                        left_out = Some(w[0].0);
                        break;
                    }
                    want.extend_from_slice(w);
                }
                let (rows, got_left_out) = p.rows(rows_max).unwrap();
                assert_eq!((seen(&rows), got_left_out), (want, left_out), "{rows_max}");
            }
            for key in keys.iter().take(10) {
                let of_key: Seen = all.iter().filter(|r| &r.1 == key).cloned().collect();
                match slot_ms {
                    None => {
                        let starts = (0..30).rev().map(|i| i * 10);
                        for n in [1, 3, 100] {
                            let got = p.key_rows(key, starts.clone(), n).unwrap();
                            let want: Seen = of_key.iter().take(n).cloned().collect();
                            assert_eq!(seen(&got), want, "{key} {n}");
                        }
                    }
                    Some(gap) => {
                        for (oldest, newest, n) in
                            [(0, 299, 100), (93, 161, 100), (115, 115, 100), (0, 299, 2)]
                        {
                            let got = p
                                .key_rows_scan(key, oldest, newest, n, 10_000, gap)
                                .unwrap()
                                .unwrap();
                            let want: Seen = of_key
                                .iter()
                                .filter(|r| (oldest..=newest).contains(&r.0))
                                .take(n)
                                .cloned()
                                .collect();
                            assert_eq!(seen(&got), want, "{key} {oldest} {newest} {n}");
                        }
                        assert!(
                            p.key_rows_scan(key, 0, 299, 100, 3, gap).unwrap().is_none(),
                            "more than scan_max read"
                        );
                    }
                }
            }
        }
    }

    /// Expired rows go a slot at a time: aligned windows exactly by start; a session slot
    /// only once its newest possible start is before the bound.
    #[test]
    fn rows_before_deletes_whole_slots() {
        let starts = |p: &PipelineStore| {
            let mut s: Vec<i64> = p.rows(100).unwrap().0.iter().map(|r| r.start_ms).collect();
            s.reverse();
            s
        };
        for (slot_ms, before, left) in [
            (None, 45, vec![45, 60]),
            (Some(30), 45, vec![30, 45, 60]),
            (Some(30), 60, vec![60]),
            (Some(30), 59, vec![30, 45, 60]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let p = store.pipeline("p");
            let rows = [0, 29, 30, 45, 60].map(|s| row_write(s, "k", 1)).into();
            commit_rows(&p, rows, slot_ms, None);
            commit_rows(&p, vec![row_write(5, "j", 1)], slot_ms, Some(before));
            assert_eq!(starts(&p), left, "{slot_ms:?} {before}");
        }
    }

    /// A row bucket that does not decode is corruption (the pipeline is rebuilt), never
    /// a panic.
    #[test]
    fn an_undecodable_row_bucket_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let p = store.pipeline("p");
        commit_rows(&p, vec![row_write(0, "a", 1)], None, None);
        let k = p.key(b'r', Some(0), &cell_bucket("a").to_be_bytes());
        let tree = p.shared.tree().unwrap();
        let mut v = tree.get(&k).unwrap().unwrap().to_vec();
        v.truncate(v.len() - 3);
        tree.insert(&k, v).unwrap();
        drop(tree);
        assert!(p.rows(10).err().expect("cut short").is_corruption());
        assert!(
            p.key_rows("a", [0].into_iter(), 1)
                .err()
                .expect("cut")
                .is_corruption()
        );
    }

    /// A checkpoint of an earlier layout (1: meta of a fingerprint alone, a key per cell;
    /// 2: a key per closed row; 3: 1,024 buckets) is not read as this one: the pipeline
    /// is rebuilt from the log, its old keys cleared.
    #[test]
    fn a_store_of_a_previous_layout_is_rebuilt() {
        let layout = |n: u8| {
            let mut meta = 1u64.to_le_bytes().to_vec();
            meta.push(n);
            meta
        };
        // Layout 3 had 1,024 buckets: its values would sit beside the new ones.
        for old_meta in [1u64.to_le_bytes().to_vec(), layout(2), layout(3)] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let p = store.pipeline("p");
            let tree = p.shared.tree().unwrap();
            tree.insert(p.key(b'm', None, &[]), old_meta).unwrap();
            tree.insert(p.key(b'h', None, &[]), &[0u8; 8]).unwrap();
            tree.insert(p.key(b'c', Some(0), b"k"), &[1u8]).unwrap();
            tree.insert(p.key(b'r', Some(0), b"some key"), &[1u8; 9])
                .unwrap();
            drop(tree);
            assert!(p.restore(1, 0, 0).unwrap().is_none());
            let tree = p.shared.tree().unwrap();
            assert_eq!(tree.scan_prefix(p.key(b'c', None, &[])).count(), 0);
            assert_eq!(tree.scan_prefix(p.key(b'r', None, &[])).count(), 0);
            drop(tree);
            assert!(p.rows(10).unwrap().0.is_empty());
        }
    }
}
