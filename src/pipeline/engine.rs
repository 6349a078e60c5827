//! The window engine of one pipeline: filter, key, assign windows, keep aggregates per
//! (pane, key), track watermarks, close windows, count late events.
//!
//! Input comes a batch at a time, in the order the driver reads the log; the watermark
//! advances at the end of every batch and windows it passes (end + allowed_lateness) are
//! closed right then, so what an event joins depends only on the batches before it. The
//! engine is a pure function of that sequence: no IO, no clock.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;
use std::sync::Arc;

use super::aggregate::{AggFn, AggState, Aggregate, Position, States};
use super::key::{Filter, GroupBy, KeyError, cell_bucket};
use super::view::Hint;
use super::watermark::{self, Watermarks};
use super::window::{LastPane, WindowKind};
use crate::json;
use crate::prefetch::{AHEAD, prefetch_all};
use crate::store::RowWrites;

mod key_index;
mod session;
pub use session::SessionCell;
use session::span_complete;

/// Which time windows are assigned by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMode {
    /// The record timestamp (event time).
    Event,
    /// The batch append time (`weir.append`).
    Ingest,
}

/// What a pipeline computes, as the engine needs it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub window: WindowKind,
    pub time: TimeMode,
    pub out_of_orderness_ms: i64,
    pub idle_ms: i64,
    pub allowed_lateness_ms: i64,
    pub filter: Filter,
    pub group_by: GroupBy,
    pub aggregates: Vec<Aggregate>,
    /// Partitions of the source topic.
    pub partitions: usize,
    /// Most (pane, key) cells held (`max_open_windows`): an event that would need one
    /// more is refused and the windows of its pane turn incomplete.
    pub max_cells: usize,
}

/// One record of the source topic.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub offset: i64,
    /// The record timestamp.
    pub event_ms: i64,
    /// `weir.type`.
    pub event_type: &'a [u8],
    /// The stored envelope (compact JSON). Not checked for UTF-8 as a whole: it was at
    /// ingest, and it is read under a CRC; the bytes a key or field takes from it are.
    pub envelope: &'a [u8],
    /// The filter's answer and the key, when read ahead of the take (see
    /// `pipeline::decoded`); `None`: the engine reads them.
    pub prepared: Option<Prepared<'a>>,
}

/// A record's filter answer and key, read before the take: what the engine would read.
#[derive(Debug, Clone, Copy)]
pub enum Prepared<'a> {
    /// Its event_type does not pass the filter.
    Filtered,
    NoKey(&'a KeyError),
    /// The key's text and its hash by the engine's key hasher.
    Key(&'a str, u64),
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Counted in this many open windows.
    Counted(usize),
    /// Its event_type does not pass the filter.
    Filtered,
    /// Every window of it was closed: dropped (and sent to `late_topic` if set).
    Late,
    /// No key: a `group_by` pointer had no value.
    NoKey(KeyError),
    /// It needed a new (pane, key) cell beyond `max_cells`: not counted, and the windows
    /// of its pane are marked incomplete.
    Refused,
}

/// A (window, key) whose window the watermark closed, with its final values.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedRow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub key: Arc<str>,
    /// `cell_bucket` of the key: where the result store keeps its rows.
    pub bucket: u16,
    /// One per aggregate, in spec order.
    pub values: States,
    /// False when events of the window may have been removed by retention unread.
    pub complete: bool,
    /// Where the hot view holds the key's rows, if the engine knows (sessions).
    pub view: Hint,
    /// The key's id in the session engine, for the view's answer to go back to
    /// ([`Engine::view_moved`]); [`ClosedRow::NO_ID`] for windows of fixed size.
    pub id: u32,
}

impl ClosedRow {
    /// The `id` of a row with no key slot to tell.
    pub const NO_ID: u32 = u32::MAX;
}

/// What takes the changed open rows of [`Engine::take_changed_rows`]: the hot view.
pub trait RowSink {
    /// The row of (window `start`, `key`) now holds `values`. For sessions, `hint` is
    /// where the view held the key's rows at its last apply, and the answer where it holds
    /// them now, kept for the next. Tumbling windows keep it per cell the same way;
    /// hopping windows give [`Hint::NONE`] and drop the answer.
    fn row(
        &mut self,
        start: i64,
        end: i64,
        key: &Arc<str>,
        values: States,
        complete: bool,
        hint: Hint,
    ) -> Hint;

    /// Sessions, before each `row`: the hints of the rows [`AHEAD`](crate::prefetch::AHEAD)
    /// and `AHEAD` / 2 on ([`Hint::NONE`] past the end), for the view to ask for their
    /// slots early (see [`ViewState::prefetch_ahead`](super::view::ViewState::prefetch_ahead)).
    fn ahead(&mut self, far: Hint, near: Hint) {
        let _ = (far, near);
    }
}

impl<F: FnMut(i64, i64, &Arc<str>, States, bool, Hint) -> Hint> RowSink for F {
    fn row(
        &mut self,
        start: i64,
        end: i64,
        key: &Arc<str>,
        values: States,
        complete: bool,
        hint: Hint,
    ) -> Hint {
        self(start, end, key, values, complete, hint)
    }
}

/// Windows that records removed by retention before the pipeline read them could have
/// counted in: every window whose `end > min_end_ms` and `start <= max_start_ms`.
///
/// The lost records' times are unknown, so this over-approximates on purpose: a window
/// is never called complete if it could have lost events, and some that lost none are
/// called incomplete. `min_end_ms` is the watermark at the loss minus the allowed
/// lateness (every window still open then, whatever its time; `i64::MIN` before any
/// watermark); `max_start_ms` is a bound on the lost records' times that the driver
/// knows from the log (see `runner`), `i64::MAX` until it knows one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taint {
    pub partition: u32,
    pub min_end_ms: i64,
    pub max_start_ms: i64,
}

/// Most taints an engine keeps apart; beyond it the two oldest merge into their hull
/// (a wider range: still sound). Losses are rare and taints expire with their windows.
pub const TAINTS_MAX: usize = 64;

/// The state of one (pane, key).
#[derive(Debug, Clone)]
struct Cell {
    /// One per aggregate, in spec order.
    states: States,
    /// Listed in `Engine::changed`.
    dirty: bool,
    /// Listed in `Engine::unsaved`.
    unsaved: bool,
    /// Where the hot view held the key's rows when this cell's row was last published
    /// (windows of one pane: see [`Engine::take_changed_rows`]).
    view: Hint,
}

/// What a checkpoint keeps of an engine besides its cells.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineHead {
    pub marks: Watermarks,
    pub next_close_ms: Option<i64>,
    pub counters: Counters,
    /// Ranges of windows that may miss records lost to retention.
    pub taints: Vec<Taint>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub counted: u64,
    pub filtered: u64,
    pub late: u64,
    pub no_key: u64,
    /// Aggregate inputs skipped (field absent, null or not a number).
    pub skipped_values: u64,
    /// Records retention removed before the pipeline read them.
    pub lost: u64,
    /// Records refused for want of a cell within `max_cells`.
    pub refused: u64,
}

/// A pane's cells by key. hashbrown's own map (std's is the same table) for its
/// `Equivalent` lookups: a record's key finds its cell by [`KeyText`], without a copy and
/// without `str`'s `memcmp` call.
type CellMap = hashbrown::HashMap<Arc<str>, Cell, foldhash::fast::RandomState>;

/// A key's text, to look up a [`CellMap`]: hashes as the `Arc<str>` keys do (both as
/// `str`), compares with [`json::short_eq`].
#[derive(Hash)]
struct KeyText<'a>(&'a str);

impl hashbrown::Equivalent<Arc<str>> for KeyText<'_> {
    fn equivalent(&self, key: &Arc<str>) -> bool {
        json::short_eq(self.0.as_bytes(), key.as_bytes())
    }
}

/// A record read ahead of its take: whether the filter passes it, its key and hash.
#[derive(Debug)]
struct Ahead {
    filtered: bool,
    key: Result<(), KeyError>,
    text: String,
    hash: u64,
}

impl Default for Ahead {
    fn default() -> Ahead {
        Ahead {
            filtered: false,
            key: Ok(()),
            text: String::new(),
            hash: 0,
        }
    }
}

pub struct Engine {
    spec: Spec,
    marks: Watermarks,
    /// Pane start -> key -> one state per aggregate.
    panes: BTreeMap<i64, CellMap>,
    /// (pane, key) cells changed since the last `take_changed`, each once (its `dirty`
    /// flag says whether it is listed): what the hot view must refresh.
    changed: Vec<(i64, Arc<str>)>,
    /// (pane, key) cells changed since the last `take_unsaved`, each once: what the next
    /// checkpoint writes.
    unsaved: Vec<(i64, Arc<str>)>,
    /// Key -> starts of the panes holding state for it: a key's newest window without a
    /// scan.
    key_panes: HashMap<Arc<str>, BTreeSet<i64>>,
    /// The pane of the last event: no division per event.
    last_pane: LastPane,
    /// Start of the oldest window that may hold state and is not closed yet.
    next_close_ms: Option<i64>,
    /// Rows of windows closed since the last `take_closed`.
    closed: Vec<ClosedRow>,
    /// The same rows encoded as the result store keeps them, made as they close (the
    /// keys' text is in cache then; a round later it is not); taken with them.
    closed_writes: RowWrites,
    counters: Counters,
    /// Windows that may miss records lost to retention or refused over `max_cells`;
    /// oldest first.
    taints: Vec<Taint>,
    /// (pane, key) cells held; open sessions for session windows.
    cells: usize,
    key_buf: String,
    /// Session windows: the keys of the records read ahead (see `session_batch`).
    ahead_keys: Vec<Ahead>,
    /// Whether an aggregate keeps a sketch, whose size `heap_bytes` follows.
    sketches: bool,
    /// Heap bytes the cells' states hold (sketches, first/last texts) when `sketches`.
    heap_bytes: usize,
    /// Session windows: key -> its id, an index into `keyed` (see `session`), hashed with
    /// `key_hasher` and compared with the key's slot. An id whose sessions all closed is
    /// freed by the next `take_unsaved`, so nothing listing ids (`session_unsaved`) can
    /// see it reused.
    key_index: key_index::KeyIndex,
    key_hasher: foldhash::fast::RandomState,
    /// Session windows: per key id, the key and its open sessions, by start.
    keyed: Vec<session::Keyed>,
    /// Session windows: per key id, its store bucket (see `session::bucket_of`).
    key_buckets: Vec<u16>,
    /// Session windows: ids free for a new key.
    free_ids: Vec<u32>,
    /// Session windows: ids whose last session closed since the last `take_unsaved`.
    emptied_ids: Vec<u32>,
    /// Session windows: the sessions changed since the last `take_changed_rows`.
    session_changed: session::Changed,
    /// Session windows: (slot of start, key id) of sessions changed, opened, merged away
    /// or closed since the last `take_unsaved`.
    session_unsaved: Vec<(i64, u32)>,
    /// Session windows: the epoch sessions listed in `session_unsaved` carry (see
    /// `Session::listed`).
    unsaved_epoch: u32,
    /// Session windows: (end, start, key id) of sessions to close, smallest first; an
    /// entry whose session grew is queued again with its end, one whose session is gone
    /// is skipped (an entry closes only a session of its end: see `close_sessions`).
    close_queue: session::CloseQueue,
    /// Session windows: rows (start, key) of sessions merged away or moved since the
    /// last `take_removed`.
    removed: Vec<(i64, Arc<str>)>,
    cand_buf: Vec<usize>,
}

impl Engine {
    pub fn new(spec: Spec) -> Engine {
        let marks = Watermarks::new(spec.partitions, spec.out_of_orderness_ms, spec.idle_ms);
        let last_pane = LastPane::new(spec.window);
        let sketches = spec
            .aggregates
            .iter()
            .any(|a| matches!(a.func, AggFn::CountDistinct | AggFn::Quantiles));
        Engine {
            spec,
            marks,
            panes: BTreeMap::new(),
            changed: Vec::new(),
            unsaved: Vec::new(),
            key_panes: HashMap::default(),
            last_pane,
            next_close_ms: None,
            closed: Vec::new(),
            closed_writes: RowWrites::default(),
            counters: Counters::default(),
            taints: Vec::new(),
            cells: 0,
            key_buf: String::new(),
            ahead_keys: Vec::new(),
            sketches,
            heap_bytes: 0,
            key_index: key_index::KeyIndex::default(),
            key_hasher: foldhash::fast::RandomState::default(),
            keyed: Vec::new(),
            key_buckets: Vec::new(),
            free_ids: Vec::new(),
            emptied_ids: Vec::new(),
            session_changed: session::Changed::default(),
            session_unsaved: Vec::new(),
            unsaved_epoch: 1,
            close_queue: session::CloseQueue::default(),
            removed: Vec::new(),
            cand_buf: Vec::new(),
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// What reads this engine's records ahead of it: its filter, its key and (for
    /// session windows, which find a key by hash) its key hasher.
    pub fn preparer(&self) -> super::decoded::Preparer {
        super::decoded::Preparer {
            filter: self.spec.filter.clone(),
            group_by: self.spec.group_by.clone(),
            hasher: self
                .spec
                .window
                .is_session()
                .then(|| self.key_hasher.clone()),
        }
    }

    /// Takes one batch of `partition`, appended at `append_ms`, then advances the
    /// watermark and closes the windows it passed. Returns what became of each record.
    pub fn process_batch<'a>(
        &mut self,
        partition: u32,
        append_ms: i64,
        records: impl IntoIterator<Item = Input<'a>>,
        mut taken: impl FnMut(&Input<'a>, &Taken),
    ) {
        let p = partition as usize;
        self.marks.on_batch(p, append_ms);
        if self.spec.window.is_session() {
            self.session_batch(partition, append_ms, records, &mut taken);
        } else {
            for input in records {
                let ts_ms = self.time_of(&input, append_ms);
                let outcome = self.take(partition, ts_ms, &input);
                self.taken(p, ts_ms, &outcome);
                taken(&input, &outcome);
            }
        }
        let wm = self.marks.advance();
        if self.spec.window.is_session() {
            self.close_sessions(wm);
        } else {
            self.close_through(wm);
        }
        self.expire_taints(wm);
    }

    /// Records `lost` records of `partition`, removed by retention before they were read,
    /// at this point of the input: every window still open, and every later one starting
    /// at or before `max_start_ms` (`None`: unknown yet, see [`bound_loss`]), turns
    /// incomplete. The open windows are listed as changed, so the view learns it.
    ///
    /// [`bound_loss`]: Self::bound_loss
    pub fn note_loss(&mut self, partition: u32, lost: u64, max_start_ms: Option<i64>) {
        self.counters.lost += lost;
        let wm = self.marks.current();
        let min_end_ms = if wm == watermark::NONE {
            i64::MIN
        } else {
            wm.saturating_sub(self.spec.allowed_lateness_ms)
        };
        self.push_taint(Taint {
            partition,
            min_end_ms,
            max_start_ms: max_start_ms.unwrap_or(i64::MAX),
        });
        for (pane, keys) in &mut self.panes {
            for (key, cell) in keys.iter_mut() {
                if !cell.dirty {
                    cell.dirty = true;
                    self.changed.push((*pane, Arc::clone(key)));
                }
            }
        }
        for (id, k) in (0u32..).zip(&mut self.keyed) {
            for s in k.list.iter_mut().filter(|s| !s.dirty) {
                s.dirty = true;
                self.session_changed.push((s.start, id));
            }
        }
    }

    /// Bounds the open-ended taints of `partition` (a loss noted without a bound) by
    /// `max_start_ms`, once the driver knows one.
    pub fn bound_loss(&mut self, partition: u32, max_start_ms: i64) {
        for t in &mut self.taints {
            if t.partition == partition && t.max_start_ms == i64::MAX {
                t.max_start_ms = max_start_ms;
            }
        }
    }

    /// Whether the window starting at `start_ms` holds every record it should: no loss
    /// to retention could have touched it.
    pub fn is_complete(&self, start_ms: i64) -> bool {
        span_complete(
            &self.taints,
            start_ms,
            start_ms.saturating_add(self.spec.window.size_ms()),
        )
    }

    /// Drops taints no window can match any more: every window starting at or before
    /// their bound is closed for good.
    fn expire_taints(&mut self, wm: i64) {
        if wm == watermark::NONE || self.taints.is_empty() {
            return;
        }
        let reach = self.spec.window.size_ms() + self.spec.allowed_lateness_ms;
        self.taints
            .retain(|t| t.max_start_ms.saturating_add(reach) > wm);
    }

    fn time_of(&self, input: &Input<'_>, append_ms: i64) -> i64 {
        match self.spec.time {
            TimeMode::Event => input.event_ms,
            TimeMode::Ingest => append_ms,
        }
    }

    /// After a record was taken: a refused event still moves the watermark (windows
    /// close and free cells).
    fn taken(&mut self, partition: usize, ts_ms: i64, outcome: &Taken) {
        if matches!(outcome, Taken::Counted(_) | Taken::Late | Taken::Refused) {
            self.marks.on_event(partition, ts_ms);
        }
    }

    /// A batch of a session pipeline. Each event touches its key's slot among all the
    /// keys' (a cache miss of its own, the most of an event's time), so the records are
    /// taken through a ring of [`AHEAD`]: a record's key is read and its slot asked for
    /// while the ones before it are taken.
    fn session_batch<'a>(
        &mut self,
        partition: u32,
        append_ms: i64,
        records: impl IntoIterator<Item = Input<'a>>,
        taken: &mut impl FnMut(&Input<'a>, &Taken),
    ) {
        const RING: usize = AHEAD + 1;
        let mut keys = std::mem::take(&mut self.ahead_keys);
        keys.resize_with(RING, Ahead::default);
        let mut inputs: [Option<Input<'a>>; RING] = [None; RING];
        let mut records = records.into_iter();
        let (mut next, mut read) = (0usize, 0usize);
        loop {
            while read - next < RING {
                let Some(input) = records.next() else { break };
                self.look_ahead(&input, &mut keys[read % RING]);
                inputs[read % RING] = Some(input);
                if let Some(mid) = read.checked_sub(AHEAD / 2).filter(|m| *m >= next) {
                    self.ask_slot(&keys[mid % RING]);
                }
                if let Some(near) = read.checked_sub(AHEAD - AHEAD / 4).filter(|n| *n >= next) {
                    self.ask_sessions(&keys[near % RING]);
                }
                read += 1;
            }
            let Some(input) = inputs[next % RING].take() else {
                break;
            };
            let ts_ms = self.time_of(&input, append_ms);
            let outcome = match &keys[next % RING] {
                Ahead { filtered: true, .. } => {
                    self.counters.filtered += 1;
                    Taken::Filtered
                }
                Ahead { key: Err(e), .. } => {
                    self.counters.no_key += 1;
                    Taken::NoKey(e.clone())
                }
                Ahead {
                    text,
                    hash,
                    key: Ok(()),
                    ..
                } => self.take_session(partition, ts_ms, &input, text, *hash),
            };
            self.taken(partition as usize, ts_ms, &outcome);
            taken(&input, &outcome);
            next += 1;
        }
        self.ahead_keys = keys;
    }

    /// Reads the key of a record taken [`AHEAD`] records later, and asks for its place
    /// in the key index.
    fn look_ahead(&self, input: &Input<'_>, into: &mut Ahead) {
        if let Some(prepared) = input.prepared {
            into.filtered = matches!(prepared, Prepared::Filtered);
            into.key = match prepared {
                Prepared::Filtered => Ok(()),
                Prepared::NoKey(e) => Err(e.clone()),
                Prepared::Key(text, hash) => {
                    into.text.clear();
                    into.text.push_str(text);
                    into.hash = hash;
                    self.key_index.prefetch(hash);
                    Ok(())
                }
            };
            return;
        }
        into.filtered = !self.spec.filter.accepts(input.event_type);
        if into.filtered {
            return;
        }
        into.key = self.spec.group_by.key_into(input.envelope, &mut into.text);
        if into.key.is_ok() {
            into.hash = self.key_hash(&into.text);
            self.key_index.prefetch(into.hash);
        }
    }

    /// Asks for the slot of a record read ahead, [`AHEAD`] / 2 records after its index
    /// place was asked for: the first id under its hash's tag, the key's mostly (the
    /// take looks it up for real).
    fn ask_slot(&self, ahead: &Ahead) {
        if !ahead.filtered
            && ahead.key.is_ok()
            && let Some(id) = self.key_index.candidate(ahead.hash)
        {
            prefetch_all(self.keyed.as_ptr().wrapping_add(id as usize));
        }
    }

    /// Asks for the open sessions of a record read ahead when they live outside its
    /// key's slot (a key with more than one open session, common: a session stays open
    /// for `gap` + `allowed_lateness` after its last event), [`AHEAD`] / 4 records
    /// before its take: the slot, asked for by [`ask_slot`](Self::ask_slot) `AHEAD` / 4
    /// records earlier, is in cache by then and says where they are.
    fn ask_sessions(&self, ahead: &Ahead) {
        if !ahead.filtered
            && ahead.key.is_ok()
            && let Some(id) = self.key_index.candidate(ahead.hash)
            && let Some(k) = self.keyed.get(id as usize)
        {
            k.prefetch_sessions();
        }
    }

    fn take(&mut self, partition: u32, ts_ms: i64, input: &Input<'_>) -> Taken {
        let mut buf = std::mem::take(&mut self.key_buf);
        // `None`: filtered out.
        let key = match input.prepared {
            Some(Prepared::Filtered) => Ok(None),
            Some(Prepared::NoKey(e)) => Err(e.clone()),
            Some(Prepared::Key(text, _)) => Ok(Some(text)),
            None if !self.spec.filter.accepts(input.event_type) => Ok(None),
            None => self
                .spec
                .group_by
                .key_into(input.envelope, &mut buf)
                .map(|()| Some(buf.as_str())),
        };
        let outcome = match key {
            Ok(None) => {
                self.counters.filtered += 1;
                Taken::Filtered
            }
            Err(e) => {
                self.counters.no_key += 1;
                Taken::NoKey(e)
            }
            Ok(Some(key)) => self.take_keyed(partition, ts_ms, input, key),
        };
        self.key_buf = buf;
        outcome
    }

    fn take_keyed(&mut self, partition: u32, ts_ms: i64, input: &Input<'_>, key: &str) -> Taken {
        let wm = self.marks.current();
        let window = self.spec.window;
        let lateness = self.spec.allowed_lateness_ms;
        let is_open =
            |start: i64| wm == watermark::NONE || wm < start + window.size_ms() + lateness;
        let pane = self.last_pane.of(ts_ms);
        let mut open_starts = self.last_pane.window_starts(pane).filter(|s| is_open(*s));
        let Some(first_open) = open_starts.next() else {
            self.counters.late += 1;
            return Taken::Late;
        };
        let open = 1 + open_starts.count();
        self.next_close_ms = Some(self.next_close_ms.map_or(first_open, |n| n.min(first_open)));
        let pos = Position {
            ts_ms,
            partition,
            offset: input.offset,
        };
        // Most events land in a (pane, key) that already has state: find it by the key's
        // text, and intern the key only for a new cell.
        let aggregates = &self.spec.aggregates;
        let mut flips = (false, false);
        let found = match self
            .panes
            .get_mut(&pane)
            .and_then(|keys| keys.get_mut(&KeyText(key)))
        {
            Some(cell) => {
                flips = (!cell.unsaved, !cell.dirty);
                cell.unsaved = true;
                cell.dirty = true;
                let before = if self.sketches {
                    heap_of(&cell.states)
                } else {
                    0
                };
                self.counters.skipped_values +=
                    update_states(aggregates, &mut cell.states, input.envelope, pos);
                if self.sketches {
                    self.heap_bytes = self.heap_bytes + heap_of(&cell.states) - before;
                }
                true
            }
            None => false,
        };
        if !found {
            if self.cells >= self.spec.max_cells {
                self.refuse(partition, pane);
                return Taken::Refused;
            }
            self.cells += 1;
            let key = self.intern(pane, key);
            let aggregates = &self.spec.aggregates;
            let mut states: States = aggregates.iter().map(|a| AggState::new(a.func)).collect();
            self.counters.skipped_values +=
                update_states(aggregates, &mut states, input.envelope, pos);
            if self.sketches {
                self.heap_bytes += heap_of(&states);
            }
            self.panes.entry(pane).or_default().insert(
                Arc::clone(&key),
                Cell {
                    states,
                    dirty: true,
                    unsaved: true,
                    view: Hint::NONE,
                },
            );
            flips = (true, true);
        }
        if flips.0 || flips.1 {
            let shared = self
                .panes
                .get(&pane)
                .and_then(|keys| keys.get_key_value(key))
                .map(|(k, _)| Arc::clone(k));
            if let Some(shared) = shared {
                if flips.0 {
                    self.unsaved.push((pane, Arc::clone(&shared)));
                }
                if flips.1 {
                    self.changed.push((pane, shared));
                }
            }
        }
        self.counters.counted += 1;
        Taken::Counted(open)
    }

    /// Marks every window holding `pane` incomplete (a taint over exactly them: ends past
    /// the pane's start, starts at or before its last millisecond), once per pane.
    fn refuse(&mut self, partition: u32, pane: i64) {
        self.counters.refused += 1;
        let taint = Taint {
            partition,
            min_end_ms: pane,
            max_start_ms: pane + self.spec.window.pane_ms() - 1,
        };
        if self
            .taints
            .iter()
            .any(|t| t.min_end_ms <= taint.min_end_ms && t.max_start_ms >= taint.max_start_ms)
        {
            return;
        }
        self.push_taint(taint);
        // The pane's open rows turn incomplete: the view learns it.
        if let Some(keys) = self.panes.get_mut(&pane) {
            for (key, cell) in keys.iter_mut() {
                if !cell.dirty {
                    cell.dirty = true;
                    self.changed.push((pane, Arc::clone(key)));
                }
            }
        }
    }

    /// Adds a taint; beyond [`TAINTS_MAX`] the two oldest merge into their hull (wider:
    /// still sound).
    fn push_taint(&mut self, taint: Taint) {
        self.taints.push(taint);
        if self.taints.len() > TAINTS_MAX {
            let (a, b) = (self.taints.remove(0), self.taints.remove(0));
            self.taints.insert(
                0,
                Taint {
                    partition: a.partition,
                    min_end_ms: a.min_end_ms.min(b.min_end_ms),
                    max_start_ms: a.max_start_ms.max(b.max_start_ms),
                },
            );
        }
    }

    /// The shared key for `text`, recording that it has state in `pane`. Called only when
    /// the (pane, key) cell is new.
    fn intern(&mut self, pane: i64, text: &str) -> Arc<str> {
        if let Some((key, _)) = self.key_panes.get_key_value(text) {
            let key = Arc::clone(key);
            if let Some(panes) = self.key_panes.get_mut(&key) {
                panes.insert(pane);
            }
            return key;
        }
        let key: Arc<str> = text.into();
        self.key_panes
            .insert(Arc::clone(&key), BTreeSet::from([pane]));
        key
    }

    /// Closes every window whose end + allowed_lateness is at or before `wm`, oldest
    /// first, and drops the panes no open window needs.
    fn close_through(&mut self, wm: i64) {
        let window = self.spec.window;
        let (size, pane_ms) = (window.size_ms(), window.pane_ms());
        let lateness = self.spec.allowed_lateness_ms;
        let closes = |start: i64| wm != watermark::NONE && start + size + lateness <= wm;
        while let Some(start) = self.next_close_ms
            && closes(start)
        {
            let end = start + size;
            let mut rows: BTreeMap<Arc<str>, States> = BTreeMap::new();
            for (_, keys) in self.panes.range(start..end) {
                for (key, cell) in keys {
                    match rows.get_mut(key) {
                        Some(merged) => merged
                            .iter_mut()
                            .zip(&cell.states)
                            .for_each(|(m, s)| m.merge(s)),
                        None => {
                            rows.insert(Arc::clone(key), cell.states.clone());
                        }
                    }
                }
            }
            let complete = self.is_complete(start);
            let from = self.closed.len();
            self.closed
                .extend(rows.into_iter().map(|(key, values)| ClosedRow {
                    start_ms: start,
                    end_ms: end,
                    bucket: cell_bucket(&key),
                    key,
                    values,
                    complete,
                    view: Hint::NONE,
                    id: ClosedRow::NO_ID,
                }));
            self.encode_closed(from);
            // The next window with state: the next one, or the first holding a later pane.
            let next = start + pane_ms;
            self.next_close_ms = self
                .panes
                .range(next..)
                .next()
                .map(|(p, _)| next.max(window.first_window_of_pane(*p)));
        }
        // A pane is needed until the newest window holding it closes.
        while let Some((&pane, _)) = self.panes.first_key_value()
            && closes(window.last_window_of_pane(pane))
        {
            let Some((_, keys)) = self.panes.pop_first() else {
                break;
            };
            self.cells -= keys.len();
            if self.sketches {
                let dropped: usize = keys.values().map(|c| heap_of(&c.states)).sum();
                self.heap_bytes -= dropped;
            }
            for key in keys.into_keys() {
                if let Some(panes) = self.key_panes.get_mut(&key) {
                    panes.remove(&pane);
                    if panes.is_empty() {
                        self.key_panes.remove(&key);
                    }
                }
            }
        }
    }

    /// Rows of the windows closed since the last call, oldest window first.
    pub fn take_closed(&mut self) -> Vec<ClosedRow> {
        self.closed_writes.clear();
        std::mem::take(&mut self.closed)
    }

    /// [`take_closed`](Self::take_closed) into `into`, which must be empty (the lists
    /// swap, so each keeps its allocation for the next round), and the rows encoded for
    /// the result store after those of `writes`.
    pub fn swap_closed(&mut self, into: &mut Vec<ClosedRow>, writes: &mut RowWrites) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.closed, into);
        writes.append(&mut self.closed_writes);
    }

    /// Encodes the rows closed from `from` on (see `closed_writes`).
    fn encode_closed(&mut self, from: usize) {
        for c in &self.closed[from..] {
            self.closed_writes.push(
                c.start_ms, &c.key, c.bucket, c.end_ms, c.complete, &c.values,
            );
        }
    }

    pub fn watermark(&self) -> i64 {
        self.marks.current()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Windows not closed yet that hold state.
    pub fn open_windows(&self) -> usize {
        if self.spec.window.is_session() {
            return self.cells;
        }
        let starts: BTreeSet<i64> = self
            .panes
            .keys()
            .flat_map(|p| self.spec.window.window_starts(*p))
            .filter(|s| self.next_close_ms.is_some_and(|n| *s >= n))
            .collect();
        starts.len()
    }

    /// Values of `key` in the open window starting at `start_ms`, merged from its panes.
    pub fn window_values(&self, key: &str, start_ms: i64) -> Option<States> {
        if self.spec.window.is_session() {
            return self.session(key, start_ms).map(|s| s.states.clone());
        }
        let end = start_ms + self.spec.window.size_ms();
        let mut merged: Option<States> = None;
        for (_, keys) in self.panes.range(start_ms..end) {
            if let Some(cell) = keys.get(key) {
                match &mut merged {
                    Some(m) => m.iter_mut().zip(&cell.states).for_each(|(m, s)| m.merge(s)),
                    None => merged = Some(cell.states.clone()),
                }
            }
        }
        merged
    }

    /// Calls `visit(start, key, values)` once for every open (window, key) whose values
    /// changed since the last call, with its values merged from its panes.
    pub fn take_changed(&mut self, mut visit: impl FnMut(i64, &Arc<str>, States)) {
        self.take_changed_rows(&mut |start, _, key: &Arc<str>, values, _, hint| {
            visit(start, key, values);
            hint
        });
    }

    /// Hands `sink` every open (window, key) whose values changed since the last call,
    /// once each (see [`RowSink`]). Rows to remove first: [`take_removed`].
    ///
    /// [`take_removed`]: Self::take_removed
    pub fn take_changed_rows(&mut self, sink: &mut impl RowSink) {
        if self.spec.window.is_session() {
            let changed = self.session_changed.take(&self.keyed);
            for (i, &(start, id)) in changed.iter().enumerate() {
                // The key's slot two strides ahead; its view hint (then in cache) one
                // stride and half a stride ahead.
                if let Some((_, far)) = changed.get(i + 2 * AHEAD) {
                    prefetch_all(self.keyed.as_ptr().wrapping_add(*far as usize));
                }
                let slot = |at: usize| {
                    changed
                        .get(at)
                        .and_then(|(_, id)| self.keyed.get(*id as usize))
                };
                let (far, near) = (slot(i + AHEAD), slot(i + AHEAD / 2));
                if let Some(k) = near {
                    // Its sessions, which the search below reads, when on the heap.
                    k.prefetch_sessions();
                }
                sink.ahead(
                    far.map_or(Hint::NONE, |k| k.view),
                    near.map_or(Hint::NONE, |k| k.view),
                );
                // An id is not reused before `take_unsaved`; if it was since, a session of
                // the new key at this start is listed too and visited once (`dirty`).
                let Some(k) = self.keyed.get_mut(id as usize) else {
                    continue;
                };
                let Ok(i) = k.list.binary_search_by_key(&start, |s| s.start) else {
                    continue;
                };
                let s = &mut k.list[i];
                if !s.dirty {
                    continue;
                }
                s.dirty = false;
                let (end, values) = (s.end, s.states.clone());
                let complete = span_complete(&self.taints, start, end);
                k.view = sink.row(start, end, &k.key, values, complete, k.view);
            }
            self.session_changed.recycle(changed);
            return;
        }
        let size = self.spec.window.size_ms();
        let mut changed = std::mem::take(&mut self.changed);
        if size == self.spec.window.pane_ms() {
            // A window is one pane (tumbling): its row is the cell, which keeps where the
            // view holds its key. One lookup per row, not three (the cell, the window's
            // panes, the view's key).
            for (pane, key) in changed.drain(..) {
                let open = self.next_close_ms.is_some_and(|n| pane >= n);
                let complete = open && self.is_complete(pane);
                let Some(cell) = self.panes.get_mut(&pane).and_then(|k| k.get_mut(&key)) else {
                    continue;
                };
                cell.dirty = false;
                if open {
                    cell.view = sink.row(
                        pane,
                        pane + size,
                        &key,
                        cell.states.clone(),
                        complete,
                        cell.view,
                    );
                }
            }
            self.changed = changed;
            return;
        }
        let mut windows: Vec<(i64, Arc<str>)> = Vec::with_capacity(changed.len());
        for (pane, key) in changed.drain(..) {
            // A pane dropped since (its windows closed) is answered by `take_closed`.
            let Some(cell) = self.panes.get_mut(&pane).and_then(|k| k.get_mut(&key)) else {
                continue;
            };
            cell.dirty = false;
            for start in self.spec.window.window_starts(pane) {
                if self.next_close_ms.is_some_and(|n| start >= n) {
                    windows.push((start, Arc::clone(&key)));
                }
            }
        }
        // Reuse the list's allocation next time.
        self.changed = changed;
        if self.spec.window.size_ms() != self.spec.window.pane_ms() {
            windows.sort_unstable();
            windows.dedup();
        }
        for (start, key) in windows {
            if let Some(values) = self.window_values(&key, start) {
                let complete = self.is_complete(start);
                sink.row(start, start + size, &key, values, complete, Hint::NONE);
            }
        }
    }

    /// How many open rows are listed as changed since the last
    /// [`take_changed_rows`](Self::take_changed_rows), some maybe closed since (session
    /// windows: 0 once past their list's bound, see `session::Changed`).
    #[cfg(test)]
    fn changed_len(&self) -> usize {
        self.changed.len() + self.session_changed.len()
    }

    /// Rows (start, key) that left since the last call without closing: sessions merged
    /// into another, or whose start moved back. The view removes them before it applies
    /// [`take_changed_rows`](Self::take_changed_rows); a start that holds an open
    /// session again is not listed.
    pub fn take_removed(&mut self) -> Vec<(i64, Arc<str>)> {
        let mut removed = std::mem::take(&mut self.removed);
        removed.retain(|(start, key)| self.session(key, *start).is_none());
        removed
    }

    /// Session windows: calls `visit(slot, bucket)` per slot and key bucket
    /// ([`crate::pipeline::key::cell_bucket`]) holding a changed, new, merged-away or
    /// closed session, without reading the keys' text (see [`take_unsaved`]).
    ///
    /// [`take_unsaved`]: Self::take_unsaved
    pub fn take_unsaved_buckets(&mut self, mut visit: impl FnMut(i64, u16)) {
        self.take_unsaved_sessions(|e, slot, id| visit(slot, e.bucket_of(id)));
    }

    /// Calls `visit(pane, key, states)` for every cell changed since the last call that
    /// still exists: what a checkpoint writes. Cells of dropped panes are older than
    /// [`oldest_pane`](Self::oldest_pane).
    /// For session windows, `visit(slot, key, &[])` per slot holding a changed, new,
    /// merged-away or closed session of the key (see [`slot_sessions`]).
    ///
    /// [`slot_sessions`]: Self::slot_sessions
    pub fn take_unsaved(&mut self, mut visit: impl FnMut(i64, &Arc<str>, &[AggState])) {
        if self.spec.window.is_session() {
            self.take_unsaved_sessions(|e, slot, id| visit(slot, e.key_of(id), &[]));
            return;
        }
        let mut unsaved = std::mem::take(&mut self.unsaved);
        for (pane, key) in unsaved.drain(..) {
            if let Some(cell) = self.panes.get_mut(&pane).and_then(|k| k.get_mut(&key)) {
                cell.unsaved = false;
                visit(pane, &key, &cell.states);
            }
        }
        self.unsaved = unsaved;
    }

    /// Calls `visit(key, states)` for every cell of `pane`, in no particular order: a
    /// checkpoint rewrites whole groups of a pane's cells.
    pub fn pane_cells(&self, pane: i64, mut visit: impl FnMut(&Arc<str>, &[AggState])) {
        if let Some(keys) = self.panes.get(&pane) {
            for (key, cell) in keys {
                visit(key, &cell.states);
            }
        }
    }

    /// Lists every cell as unsaved: after a failed checkpoint, the next writes them all.
    pub fn mark_all_unsaved(&mut self) {
        self.unsaved.clear();
        self.session_unsaved.clear();
        self.unsaved_epoch = session::next_epoch(self.unsaved_epoch);
        let epoch = self.unsaved_epoch;
        let window = self.spec.window;
        for (id, k) in (0u32..).zip(&mut self.keyed) {
            for s in k.list.iter_mut() {
                s.listed = epoch;
                self.session_unsaved.push((window.pane_of(s.start), id));
            }
        }
        for (pane, keys) in &mut self.panes {
            for (key, cell) in keys.iter_mut() {
                cell.unsaved = true;
                self.unsaved.push((*pane, Arc::clone(key)));
            }
        }
    }

    /// Start of the oldest pane held: panes are dropped oldest first. Sessions hold no
    /// panes: a checkpoint finds their oldest slot in its walk over them.
    pub fn oldest_pane(&self) -> Option<i64> {
        self.panes.first_key_value().map(|(p, _)| *p)
    }

    /// Watermarks, close position and counters, for a checkpoint.
    pub fn head(&self) -> EngineHead {
        EngineHead {
            marks: self.marks.clone(),
            next_close_ms: self.next_close_ms,
            counters: self.counters,
            taints: self.taints.clone(),
        }
    }

    /// An engine as a checkpoint left it: `head` and every cell. Every cell counts as
    /// changed, so the hot view is filled from it.
    pub fn restore(
        spec: Spec,
        head: EngineHead,
        cells: impl IntoIterator<Item = (i64, Arc<str>, Vec<AggState>)>,
    ) -> Engine {
        let mut e = Engine::new(spec);
        e.marks = head.marks;
        e.next_close_ms = head.next_close_ms;
        e.counters = head.counters;
        e.taints = head.taints;
        for (pane, key, states) in cells {
            if e.sketches {
                e.heap_bytes += heap_of(&states);
            }
            let key = e.intern(pane, &key);
            e.changed.push((pane, Arc::clone(&key)));
            let cell = Cell {
                states: States::from_vec(states),
                dirty: true,
                unsaved: false,
                view: Hint::NONE,
            };
            if e.panes.entry(pane).or_default().insert(key, cell).is_none() {
                e.cells += 1;
            }
        }
        e
    }

    /// (pane, key) cells held: the size of the state.
    pub fn cells(&self) -> usize {
        self.cells
    }

    /// An estimate of the memory the state takes: per cell its states, key and map entry,
    /// plus what sketches hold on the heap (their real size).
    pub fn state_bytes(&self) -> u64 {
        let per_cell = std::mem::size_of::<AggState>() * self.spec.aggregates.len() + 64;
        (self.cells() * per_cell + self.heap_bytes) as u64
    }

    /// Start of `key`'s newest window with state, if it is still open.
    pub fn latest_window(&self, key: &str) -> Option<i64> {
        if self.spec.window.is_session() {
            return self.sessions_of(key)?.last().map(|s| s.start);
        }
        let pane = *self.key_panes.get(key)?.last()?;
        Some(self.spec.window.last_window_of_pane(pane))
    }
}

fn heap_of(states: &[AggState]) -> usize {
    states.iter().map(AggState::heap_bytes).sum()
}

/// Feeds one event to a cell's states; returns how many aggregates skipped it.
fn update_states(
    aggregates: &[Aggregate],
    states: &mut [AggState],
    envelope: &[u8],
    pos: Position,
) -> u64 {
    let mut skipped = 0;
    for (agg, state) in aggregates.iter().zip(states.iter_mut()) {
        let value = match &agg.field {
            Some(ptr) => json::pointer_get_valid_bytes(envelope, ptr.tokens())
                .and_then(|v| std::str::from_utf8(v).ok()),
            None => None,
        };
        if !state.update(value, pos, agg.field.is_some()) {
            skipped += 1;
        }
    }
    skipped
}

#[cfg(test)]
mod tests;
