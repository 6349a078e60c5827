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
//! - `r` + window start (8 bytes, order-preserving) + key: a closed row (end, states,
//!   then a byte 1 complete / 0 incomplete; a value without it is complete).
//!
//! A checkpoint is one atomic `sled::Batch` of the head, the cells changed since the last
//! one, the deletion of cells of dropped panes and of expired rows, and the rows closed
//! since; it counts only once `flush` returned. sled's own flush ends in
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

/// Layout of a pipeline's keys and values; 2: cells grouped in buckets.
pub const LAYOUT: u8 = 2;

/// Buckets the cells of a pane are grouped in: with 100,000 keys in a pane about 100
/// cells (a few KiB) per value, so a checkpoint is ~1,000 inserts per pane changed, and a
/// single changed cell rewrites ~1/1000 of its pane.
pub const CELL_BUCKETS: u16 = 1024;

/// The bucket of `key`'s cells (xxh3: stable across builds and runs).
pub fn cell_bucket(key: &str) -> u16 {
    u16::try_from(xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(CELL_BUCKETS)).unwrap_or(0)
}

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

/// A closed row as a checkpoint writes it.
pub struct RowWrite {
    pub start_ms: i64,
    pub key: Arc<str>,
    pub end_ms: i64,
    pub complete: bool,
    /// The encoded states.
    pub states: Vec<u8>,
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
    pub rows: Vec<RowWrite>,
    /// Rows of windows starting before this are deleted.
    pub rows_before: Option<i64>,
    /// The pipeline's `output_topic` outbox (see `pipeline::output`): the result rows
    /// this checkpoint emits, appended after the commit; `None` without an output topic.
    pub outbox: Option<Vec<u8>>,
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

    /// Closed rows of the newest windows, newest window first: whole windows, at most
    /// `rows_max` rows. The second value is the start of the newest window left out
    /// (older rows exist), if any.
    pub fn rows(&self, rows_max: usize) -> Result<(Vec<StoredRow>, Option<i64>), StoreError> {
        let prefix = self.key(b'r', None, &[]);
        let mut out: Vec<StoredRow> = Vec::new();
        // Rows of the window being read, added to `out` once it is whole and fits.
        let mut window: Vec<StoredRow> = Vec::new();
        for item in self.shared.tree()?.scan_prefix(&prefix).rev() {
            let (k, v) = item?;
            let row = Self::decode_row(&k[prefix.len()..], &v)?;
            if window.first().is_some_and(|r| r.start_ms != row.start_ms) {
                if out.len() + window.len() > rows_max {
                    return Ok((out, window.first().map(|r| r.start_ms)));
                }
                out.append(&mut window);
            }
            window.push(row);
        }
        if out.len() + window.len() > rows_max {
            return Ok((out, window.first().map(|r| r.start_ms)));
        }
        out.append(&mut window);
        Ok((out, None))
    }

    /// `key`'s closed rows of the windows starting at `starts`, in that order, at most `n`.
    pub fn key_rows(
        &self,
        key: &str,
        starts: impl Iterator<Item = i64>,
        n: usize,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let mut out = Vec::new();
        let tree = self.shared.tree()?;
        for start in starts {
            if out.len() >= n {
                break;
            }
            let k = self.key(b'r', Some(start), key.as_bytes());
            if let Some(v) = tree.get(&k)? {
                let prefix_len = self.prefix.len() + 1;
                out.push(Self::decode_row(&k[prefix_len..], &v)?);
            }
        }
        Ok(out)
    }

    /// `key`'s closed rows starting in `[oldest, newest]`, newest first, at most `n`, by a
    /// scan of every key's rows there; `None` if that takes more than `scan_max` rows
    /// (session windows, whose starts are not aligned).
    pub fn key_rows_scan(
        &self,
        key: &str,
        oldest: i64,
        newest: i64,
        n: usize,
        scan_max: usize,
    ) -> Result<Option<Vec<StoredRow>>, StoreError> {
        let from = self.key(b'r', Some(oldest), &[]);
        let to = self.key(b'r', Some(newest.saturating_add(1)), &[]);
        let prefix_len = self.prefix.len() + 1;
        let mut out = Vec::new();
        for (scanned, item) in self.shared.tree()?.range(from..to).rev().enumerate() {
            if out.len() >= n {
                break;
            }
            if scanned >= scan_max {
                return Ok(None);
            }
            let (k, v) = item?;
            if k.get(prefix_len + 8..) == Some(key.as_bytes()) {
                out.push(Self::decode_row(&k[prefix_len..], &v)?);
            }
        }
        Ok(Some(out))
    }

    /// A row from its key (after the `r` kind byte) and value.
    fn decode_row(rest: &[u8], v: &[u8]) -> Result<StoredRow, StoreError> {
        let start_ms =
            from_ordered(rest.get(..8).unwrap_or_default()).ok_or(CodecError("row key"))?;
        let key = std::str::from_utf8(&rest[8..]).map_err(|_| CodecError("row key"))?;
        let mut r = Reader(v);
        let end_ms = r.i64()?;
        let values = r.states()?;
        let complete = r.0.first().is_none_or(|b| *b == 1);
        Ok(StoredRow {
            start_ms,
            end_ms,
            key: Arc::from(key),
            values,
            complete,
        })
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
        if let Some(before) = c.rows_before {
            let from = self.key(b'r', None, &[]);
            let to = self.key(b'r', Some(before), &[]);
            for k in tree.range(from..to).keys() {
                batch.remove(k?);
            }
        }
        for row in &c.rows {
            let mut v = Vec::with_capacity(9 + row.states.len());
            Writer(&mut v).i64(row.end_ms);
            v.extend_from_slice(&row.states);
            v.push(u8::from(row.complete));
            batch.insert(self.key(b'r', Some(row.start_ms), row.key.as_bytes()), v);
        }
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
        let states = |n| {
            let mut b = Vec::new();
            Writer(&mut b).states(&[AggState::Count(n)]);
            b
        };
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
                rows: vec![RowWrite {
                    start_ms: 0,
                    key: Arc::from("a"),
                    end_ms: 10,
                    complete: false,
                    states: states(9),
                }],
                rows_before: None,
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
        let row = |start_ms: i64, key: &str, n: u64| {
            let mut states = Vec::new();
            Writer(&mut states).states(&[AggState::Count(n)]);
            RowWrite {
                start_ms,
                key: Arc::from(key),
                end_ms: start_ms + 10,
                complete: true,
                states,
            }
        };
        p.commit(&Checkpoint {
            offsets: vec![1],
            head: Vec::new(),
            rows: vec![
                row(0, "a", 1),
                row(0, "b", 2),
                row(10, "a", 3),
                row(20, "a", 4),
                row(20, "b", 5),
            ],
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

    /// A checkpoint of the previous layout (meta of a fingerprint alone, a key per cell)
    /// is not read as buckets: the pipeline is rebuilt from the log.
    #[test]
    fn a_store_of_the_previous_layout_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let p = store.pipeline("p");
        p.shared
            .tree()
            .unwrap()
            .insert(p.key(b'm', None, &[]), &1u64.to_le_bytes())
            .unwrap();
        let tree = p.shared.tree().unwrap();
        tree.insert(p.key(b'h', None, &[]), &[0u8; 8]).unwrap();
        tree.insert(p.key(b'c', Some(0), b"k"), &[1u8]).unwrap();
        drop(tree);
        assert!(p.restore(1, 0, 0).unwrap().is_none());
        assert_eq!(
            p.shared
                .tree()
                .unwrap()
                .scan_prefix(p.key(b'c', None, &[]))
                .count(),
            0
        );
    }
}
