//! Session windows: per key, a sorted list of open sessions `[start, end)`.
//!
//! The rules (ARCHITECTURE.md, "Sessions"), for an event at `t` of key `k`:
//!
//! 1. Its own window is `[t, t + gap)`. If that window is closed (the watermark passed
//!    `t + gap + allowed_lateness`) the event is late, whatever it touches: a closed
//!    session never merges, and an event never reaches an open session through a closed
//!    window of its own.
//! 2. The candidates are `k`'s open sessions overlapping its window (`start < t + gap`
//!    and `end > t`). If they and `t` fit in `max_length` (newest event − oldest start
//!    `< max_length`), they all merge into the one with the oldest start (the others are
//!    removed: their rows leave the view, their stored cells go in the same checkpoint)
//!    and the event joins it; `start` = oldest event, `end = min(last + gap, start +
//!    max_length)`.
//! 3. Otherwise (only out-of-order input gets here), it joins the oldest candidate that
//!    contains `t`, if any, and else opens a session of its own at `t`. Sessions of a
//!    key may then overlap; none two share a start.
//!
//! A session closes when the watermark passes `end + allowed_lateness`. In order, a key
//! that never pauses gets sessions of `max_length`: once `last + gap` reaches `start +
//! max_length` the end stops there, and the next event past it opens a new session.
//!
//! Keys are interned: one hash lookup of the key's text per event gives its id, an index
//! into `Engine::keyed`; the close queue and the change lists name sessions by (start,
//! id), so closing, publishing and checkpointing a session look nothing up by text. Rows
//! closed by one watermark step are put in (end, start, key) order, as a queue ordered
//! by key text would close them, so the order does not depend on ids.
//!
//! Session starts are unique per key among open and closed sessions: a new start is an
//! event time whose own window is open, later than the start of every closed session
//! of the key (whose end, at least `start + gap`, the watermark passed).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use smallvec::SmallVec;

use super::{Engine, Input, Taint, Taken, update_states};
use crate::json::short_eq;
use crate::pipeline::aggregate::{AggState, Position, States};
use crate::pipeline::key::cell_bucket;
use crate::pipeline::lazy_sorted::LazySorted;
use crate::pipeline::view::Hint;
use crate::pipeline::watermark;
use crate::pipeline::window::WindowKind;
use crate::prefetch::{AHEAD, prefetch, prefetch_all};

/// One open session of a key.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub start: i64,
    /// The newest event time in it.
    pub last: i64,
    pub end: i64,
    pub states: States,
    /// Changed since the view last took it: listed in `Engine::session_changed`.
    pub dirty: bool,
    /// Listed in `Engine::session_unsaved` as `(slot of start, id)` while this is
    /// `Engine::unsaved_epoch` (a checkpoint's take moves the epoch on: every session is
    /// unlisted at once, without a visit).
    pub listed: u32,
}

/// A key's open sessions, by start, under its id. Most keys hold one open session at a
/// time: it lives inline, so an event touches the key's slot and nothing behind it.
/// Two cache lines exactly (a test pins it): 136 bytes at 8-byte alignment touched three,
/// sometimes four.
#[derive(Debug)]
#[repr(align(64))]
pub(super) struct Keyed {
    pub key: Arc<str>,
    /// The key's hash in `Engine::key_index`.
    hash: u64,
    /// The key's text when it fits: the index compares against it without reading the
    /// `Arc` (one cache miss fewer per event).
    short: ShortKey,
    pub list: SmallVec<[Session; 1]>,
    /// Where the hot view keeps the key's rows, as its last apply said.
    pub view: Hint,
}

impl Keyed {
    fn new(key: Arc<str>, hash: u64) -> Keyed {
        Keyed {
            short: ShortKey::of(&key),
            key,
            hash,
            list: SmallVec::new(),
            view: Hint::NONE,
        }
    }

    fn is(&self, text: &str) -> bool {
        short_eq(self.text(), text.as_bytes())
    }

    /// Asks for the key's open sessions when they live outside its slot (more than one
    /// open: common, a session stays open for `gap` + `allowed_lateness` after its last
    /// event). Reads the slot: for when it is in cache, asked for earlier.
    pub(super) fn prefetch_sessions(&self) {
        if self.list.spilled() {
            for s in self.list.iter().take(2) {
                prefetch_all(s);
            }
        }
    }

    /// The key's text, from the slot itself when it fits (no read through the `Arc`).
    fn text(&self) -> &[u8] {
        self.short.get().unwrap_or(self.key.as_bytes())
    }
}

/// A key's text inline, when it is at most [`ShortKey::MAX`] bytes.
#[derive(Debug, Clone, Copy)]
struct ShortKey {
    /// `u8::MAX`: the key is longer, compare with the `Arc`.
    len: u8,
    bytes: [u8; ShortKey::MAX],
}

impl ShortKey {
    /// With the length, 16 bytes: [`Keyed`] fits two cache lines.
    const MAX: usize = 15;

    fn of(key: &str) -> ShortKey {
        let mut bytes = [0; ShortKey::MAX];
        match bytes.get_mut(..key.len()) {
            Some(to) => {
                to.copy_from_slice(key.as_bytes());
                ShortKey {
                    len: u8::try_from(key.len()).unwrap_or(u8::MAX),
                    bytes,
                }
            }
            None => ShortKey {
                len: u8::MAX,
                bytes,
            },
        }
    }

    fn get(&self) -> Option<&[u8]> {
        self.bytes.get(..usize::from(self.len))
    }
}

/// The sessions changed since the last `take_changed_rows`, each once (its `dirty`
/// flag), as (start, key id). Bounded: past one entry per key slot (and [`CHANGED_MIN`];
/// `new_id` tells it how many there are) it stops listing (`all`: the entries of closed
/// sessions would pile up while the view is not refreshed, see
/// `runner::BEHIND_OPEN_ROWS_INTERVAL`), and the take walks every open session for the
/// dirty ones instead.
#[derive(Debug, Default)]
pub(super) struct Changed {
    list: Vec<(i64, u32)>,
    all: bool,
    /// Key slots: `Engine::keyed`'s length, which only grows.
    keys: usize,
}

/// Entries [`Changed`] always has room for, however few keys.
const CHANGED_MIN: usize = 4096;

impl Changed {
    /// Lists a session that just turned dirty.
    pub(super) fn push(&mut self, entry: (i64, u32)) {
        if self.all {
            return;
        }
        if self.list.len() >= self.keys.max(CHANGED_MIN) {
            self.all = true;
            self.list.clear();
            return;
        }
        self.list.push(entry);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The listed sessions, or (past the bound) every dirty one of `keyed`; empty after.
    pub(super) fn take(&mut self, keyed: &[Keyed]) -> Vec<(i64, u32)> {
        let mut list = std::mem::take(&mut self.list);
        if std::mem::take(&mut self.all) {
            list.clear();
            for (id, k) in (0u32..).zip(keyed) {
                if let Some(ahead) = keyed.get(id as usize + AHEAD) {
                    ahead.prefetch_sessions();
                }
                list.extend(k.list.iter().filter(|s| s.dirty).map(|s| (s.start, id)));
            }
        }
        list
    }

    /// Gives back the list's allocation after a take.
    pub(super) fn recycle(&mut self, mut list: Vec<(i64, u32)>) {
        if self.list.is_empty() && !self.all {
            list.clear();
            self.list = list;
        }
    }
}

/// Sessions to close, by end: buckets of [`CLOSE_BUCKET_MS`] of end time, each a list of
/// (end, start, key id) sorted once the watermark reaches into it ([`LazySorted`]). An
/// entry is packed into one `u128` ordered as the triple (see [`Bucket::pack`]), so that
/// sort compares integers. A push (one per session opened, and per close found early)
/// finds its bucket by hash; closing takes the first of the ordered map of buckets, which
/// changes only when a bucket is made or emptied, about once a second of end time.
#[derive(Debug, Default)]
pub(super) struct CloseQueue {
    /// Bucket index -> its place in `slab`.
    by_index: foldhash::HashMap<i64, usize>,
    /// The same, smallest index first.
    order: BTreeMap<i64, usize>,
    slab: Vec<LazySorted<u128>>,
    /// Places in `slab` of buckets emptied.
    free: Vec<usize>,
}

/// The packing of a close-queue entry.
struct Bucket;

/// Width of a close-queue bucket, in end time.
const CLOSE_BUCKET_MS: i64 = 1000;

impl Bucket {
    /// (end, start, id) of a bucket starting at end time `base` as one integer in the
    /// same order: the end's offset in the bucket (10 bits), the start with its sign bit
    /// flipped (64), the id (32).
    fn pack(base: i64, (end, start, id): (i64, i64, u32)) -> u128 {
        let offset = u128::try_from(end - base).unwrap_or(0);
        let start = u128::from(start.cast_unsigned() ^ (1 << 63));
        offset << 96 | start << 32 | u128::from(id)
    }

    fn unpack(base: i64, packed: u128) -> (i64, i64, u32) {
        #[allow(clippy::cast_possible_truncation, reason = "fields of the packing")]
        let (offset, start, id) = (
            (packed >> 96) as i64,
            ((packed >> 32) as u64 ^ (1 << 63)).cast_signed(),
            packed as u32,
        );
        (base + offset, start, id)
    }
}

impl CloseQueue {
    /// Queues (end, start, key id).
    pub(super) fn push(&mut self, entry: (i64, i64, u32)) {
        let index = entry.0.div_euclid(CLOSE_BUCKET_MS);
        let packed = Bucket::pack(index.saturating_mul(CLOSE_BUCKET_MS), entry);
        let at = match self.by_index.entry(index) {
            std::collections::hash_map::Entry::Occupied(e) => *e.get(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let at = self.free.pop().unwrap_or_else(|| {
                    self.slab.push(LazySorted::default());
                    self.slab.len() - 1
                });
                self.order.insert(index, at);
                *e.insert(at)
            }
        };
        // Into its place if the bucket is being closed (a grown session queued again).
        self.slab[at].add(packed);
    }

    /// The key id of the entry `n` places after the smallest, if the front bucket is
    /// sorted and holds it: what a close takes soon, for its slot to be asked for.
    fn peek(&self, n: usize) -> Option<u32> {
        let (_, &at) = self.order.first_key_value()?;
        let b = &self.slab[at];
        if !b.is_sorted() {
            return None;
        }
        let entries = b.items();
        let at = entries.len().checked_sub(1 + n)?;
        Some(Bucket::unpack(0, entries[at]).2)
    }

    /// Takes the smallest entry if its end is at or before `through`.
    fn pop_through(&mut self, through: i64) -> Option<(i64, i64, u32)> {
        loop {
            let (&index, &at) = self.order.first_key_value()?;
            let base = index.saturating_mul(CLOSE_BUCKET_MS);
            let b = &mut self.slab[at];
            match b.sorted().last() {
                None => {
                    *b = LazySorted::default();
                    self.order.pop_first();
                    self.by_index.remove(&index);
                    self.free.push(at);
                }
                Some(e) if Bucket::unpack(base, *e).0 <= through => {
                    return b.pop().map(|e| Bucket::unpack(base, e));
                }
                Some(_) => return None,
            }
        }
    }
}

/// A stored session: key, start, last event, end, states.
pub type SessionCell = (Arc<str>, i64, i64, i64, Vec<AggState>);

impl Engine {
    fn gap_max(&self) -> (i64, i64) {
        match self.spec.window {
            WindowKind::Session { gap_ms, max_ms } => (gap_ms, max_ms),
            _ => (1, i64::MAX),
        }
    }

    /// The slot (of width gap) a session starting at `start` is stored under.
    pub(super) fn slot_of(&self, start: i64) -> i64 {
        self.spec.window.pane_of(start)
    }

    /// The id of `key`, if it has one: one probe of the index, which compares with the
    /// key's slot in `keyed` (read next anyway).
    fn id_of(&self, key: &str, hash: u64) -> Option<u32> {
        let keyed = &self.keyed;
        self.key_index.find(hash, |id| keyed[id as usize].is(key))
    }

    pub(super) fn key_hash(&self, key: &str) -> u64 {
        self.key_hasher.hash_one(key)
    }

    /// The id of `key`, given one if it has none.
    fn id_for(&mut self, key: &str, hash: u64) -> u32 {
        match self.id_of(key, hash) {
            Some(id) => id,
            None => self.new_id(key, hash),
        }
    }

    /// Gives `key`, which has no id, one.
    fn new_id(&mut self, key: &str, hash: u64) -> u32 {
        let slot = Keyed::new(key.into(), hash);
        let bucket = cell_bucket(key);
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.keyed[id as usize] = slot;
                self.key_buckets[id as usize] = bucket;
                id
            }
            None => {
                let id = u32::try_from(self.keyed.len()).expect("fewer keys than u32::MAX");
                self.keyed.push(slot);
                self.key_buckets.push(bucket);
                self.session_changed.keys = self.keyed.len();
                id
            }
        };
        let keyed = &self.keyed;
        self.key_index
            .insert(hash, id, |id| keyed[id as usize].hash);
        id
    }

    /// The store bucket of key `id` (`cell_bucket` of its text), from a list small
    /// enough to stay in cache: a checkpoint learns which buckets changed without
    /// touching the keys' slots.
    pub(super) fn bucket_of(&self, id: u32) -> u16 {
        self.key_buckets[id as usize]
    }

    /// The view now holds the rows of `key`, last seen under `id`, at `hint` (a closed
    /// row found its hint stale): kept for the key's next rows, unless the id went to
    /// another key since.
    pub fn view_moved(&mut self, id: u32, key: &Arc<str>, hint: Hint) {
        if let Some(k) = self.keyed.get_mut(id as usize)
            && Arc::ptr_eq(&k.key, key)
        {
            k.view = hint;
        }
    }

    pub(super) fn key_of(&self, id: u32) -> &Arc<str> {
        &self.keyed[id as usize].key
    }

    /// Takes `id` out of the index (its slot is free for another key).
    fn drop_id(&mut self, id: u32) {
        let hash = self.keyed[id as usize].hash;
        let keyed = &self.keyed;
        self.key_index
            .remove(hash, id, |id| keyed[id as usize].hash);
    }

    pub(super) fn take_session(
        &mut self,
        partition: u32,
        ts_ms: i64,
        input: &Input<'_>,
        key: &str,
        hash: u64,
    ) -> Taken {
        let (gap, max) = self.gap_max();
        let wm = self.marks.current();
        let own_end = ts_ms.saturating_add(gap);
        if wm != watermark::NONE && own_end.saturating_add(self.spec.allowed_lateness_ms) <= wm {
            self.counters.late += 1;
            return Taken::Late;
        }
        let pos = Position {
            ts_ms,
            partition,
            offset: input.offset,
        };
        let mut cands = std::mem::take(&mut self.cand_buf);
        cands.clear();
        let id = self.id_of(key, hash);
        let at = match id {
            Some(id) => {
                let list = &self.keyed[id as usize].list;
                // Sessions starting at or before t - max end at or before t.
                let lo = list.partition_point(|s| s.start <= ts_ms.saturating_sub(max));
                let hi = list.partition_point(|s| s.start < own_end);
                cands.extend((lo..hi).filter(|i| list[*i].end > ts_ms));
                let fits = cands.first().is_some_and(|first| {
                    let oldest = list[*first].start.min(ts_ms);
                    let newest = cands.iter().map(|i| list[*i].last).max().unwrap_or(ts_ms);
                    newest.max(ts_ms) - oldest < max
                });
                if fits {
                    Some((id, cands[0]))
                } else {
                    cands.clear();
                    (lo..hi)
                        .find(|i| list[*i].start <= ts_ms && ts_ms < list[*i].end)
                        .map(|i| (id, i))
                }
            }
            None => None,
        };
        let outcome = match at {
            Some((id, first)) => {
                // `cands` is empty unless they all merge into `first`.
                self.merge_into(id, first, &cands, ts_ms);
                self.add_event(id, first, ts_ms, input.envelope, pos);
                Taken::Counted(1)
            }
            None => {
                if self.cells >= self.spec.max_cells {
                    self.refuse_session(partition, ts_ms);
                    Taken::Refused
                } else {
                    // `id_of` above found none: no second probe.
                    let id = match id {
                        Some(id) => id,
                        None => self.new_id(key, hash),
                    };
                    self.open_session(id, ts_ms, input.envelope, pos);
                    Taken::Counted(1)
                }
            }
        };
        self.cand_buf = cands;
        if matches!(outcome, Taken::Counted(_)) {
            self.counters.counted += 1;
        }
        outcome
    }

    /// Merges the sessions at `rest` (ascending indexes after `first`) into the one at
    /// `first`, and moves its start back to `ts_ms` if earlier.
    fn merge_into(&mut self, id: u32, first: usize, cands: &[usize], ts_ms: i64) {
        let (gap, max) = self.gap_max();
        let window = self.spec.window;
        let epoch = self.unsaved_epoch;
        let k = &mut self.keyed[id as usize];
        let old_start = k.list[first].start;
        let moved = ts_ms < old_start;
        let merging = cands.len() > 1;
        if !(moved || merging) {
            return;
        }
        let mut gone: SmallVec<[Session; 2]> = SmallVec::new();
        for i in cands[1..].iter().rev() {
            gone.push(k.list.remove(*i));
        }
        let s = &mut k.list[first];
        for g in gone.iter().rev() {
            s.states
                .iter_mut()
                .zip(&g.states)
                .for_each(|(m, o)| m.merge(o));
            s.last = s.last.max(g.last);
        }
        if moved {
            s.start = ts_ms;
        }
        s.end = s.last.saturating_add(gap).min(s.start.saturating_add(max));
        let new_start = s.start;
        let (end, was_dirty, was_unsaved) = (s.end, s.dirty, s.listed == epoch);
        s.dirty = true;
        s.listed = epoch;
        self.cells -= gone.len();
        // Rows and stored cells of the starts that are gone.
        let mut removed: Vec<i64> = gone.iter().map(|g| g.start).collect();
        if moved {
            removed.push(old_start);
            self.close_queue.push((end, new_start, id));
        }
        for start in removed {
            self.removed.push((start, Arc::clone(&k.key)));
            self.session_unsaved.push((window.pane_of(start), id));
        }
        if moved || !was_dirty {
            self.session_changed.push((new_start, id));
        }
        if moved || !was_unsaved {
            self.session_unsaved.push((window.pane_of(new_start), id));
        }
    }

    /// Adds the event to the session at `i` of key `id`.
    fn add_event(&mut self, id: u32, i: usize, ts_ms: i64, envelope: &[u8], pos: Position) {
        let (gap, max) = self.gap_max();
        let s = &mut self.keyed[id as usize].list[i];
        self.counters.skipped_values +=
            update_states(&self.spec.aggregates, &mut s.states, envelope, pos);
        if ts_ms > s.last {
            s.last = ts_ms;
            s.end = s.last.saturating_add(gap).min(s.start.saturating_add(max));
        }
        let (start, flips) = (s.start, (!s.dirty, s.listed != self.unsaved_epoch));
        s.dirty = true;
        s.listed = self.unsaved_epoch;
        if flips.0 {
            self.session_changed.push((start, id));
        }
        if flips.1 {
            let slot = self.slot_of(start);
            self.session_unsaved.push((slot, id));
        }
    }

    fn open_session(&mut self, id: u32, ts_ms: i64, envelope: &[u8], pos: Position) {
        let (gap, max) = self.gap_max();
        let mut states: States = self
            .spec
            .aggregates
            .iter()
            .map(|a| AggState::new(a.func))
            .collect();
        self.counters.skipped_values +=
            update_states(&self.spec.aggregates, &mut states, envelope, pos);
        let session = Session {
            start: ts_ms,
            last: ts_ms,
            end: ts_ms.saturating_add(gap.min(max)),
            states,
            dirty: true,
            listed: self.unsaved_epoch,
        };
        let end = session.end;
        let list = &mut self.keyed[id as usize].list;
        let at = list.partition_point(|s| s.start < ts_ms);
        list.insert(at, session);
        self.cells += 1;
        self.close_queue.push((end, ts_ms, id));
        self.session_changed.push((ts_ms, id));
        let slot = self.slot_of(ts_ms);
        self.session_unsaved.push((slot, id));
    }

    /// Over `max_cells`: marks every session the event could have joined incomplete,
    /// once per slot (a taint over sessions ending after the slot's start and starting
    /// before its end + gap), and lists the open ones the taint covers as changed.
    fn refuse_session(&mut self, partition: u32, ts_ms: i64) {
        self.counters.refused += 1;
        let (gap, _) = self.gap_max();
        let slot = self.slot_of(ts_ms);
        let taint = Taint {
            partition,
            min_end_ms: slot,
            max_start_ms: slot.saturating_add(2 * gap - 1),
        };
        if self
            .taints
            .iter()
            .any(|t| t.min_end_ms <= taint.min_end_ms && t.max_start_ms >= taint.max_start_ms)
        {
            return;
        }
        self.push_taint(taint);
        // Rare (once per slot while over the bound): a walk over every open session.
        let taints = &self.taints;
        for (id, k) in (0u32..).zip(&mut self.keyed) {
            for s in k.list.iter_mut() {
                if !s.dirty && !span_complete(taints, s.start, s.end) {
                    s.dirty = true;
                    self.session_changed.push((s.start, id));
                }
            }
        }
    }

    /// Closes the sessions whose end + allowed_lateness is at or before `wm`, in (end,
    /// start, key) order.
    pub(super) fn close_sessions(&mut self, wm: i64) {
        if wm == watermark::NONE {
            return;
        }
        let lateness = self.spec.allowed_lateness_ms;
        let from = self.closed.len();
        while let Some((end, start, id)) = self.close_queue.pop_through(wm.saturating_sub(lateness))
        {
            // The slots of the keys closing next, and (their slots then in cache) the
            // reference counts of the keys' text, which the closed row's copy touches:
            // an `Arc`'s two counts lie just before the text it points to.
            if let Some(far) = self.close_queue.peek(AHEAD) {
                prefetch_all(self.keyed.as_ptr().wrapping_add(far as usize));
            }
            if let Some(k) = self
                .close_queue
                .peek(AHEAD / 2)
                .and_then(|near| self.keyed.get(near as usize))
            {
                let counts = 2 * std::mem::size_of::<usize>();
                prefetch(Arc::as_ptr(&k.key).cast::<u8>().wrapping_sub(counts));
                // Most closing keys have opened another session within the lateness:
                // their list is on the heap, and the search below reads it.
                k.prefetch_sessions();
            }
            let Some(k) = self.keyed.get_mut(id as usize) else {
                continue;
            };
            let Ok(i) = k.list.binary_search_by_key(&start, |s| s.start) else {
                // Merged away, or its start moved (queued again then).
                continue;
            };
            // Every session has an entry of its own end; this one may be older (it grew
            // since) or, after the id was reused, of another key's session: only a
            // session ending by the entry's end closes.
            if k.list[i].end > end {
                let actual = k.list[i].end;
                self.close_queue.push((actual, start, id));
                continue;
            }
            let s = k.list.remove(i);
            if k.list.is_empty() {
                self.emptied_ids.push(id);
            }
            self.cells -= 1;
            self.session_unsaved
                .push((self.spec.window.pane_of(start), id));
            let complete = span_complete(&self.taints, s.start, s.end);
            self.closed.push(super::ClosedRow {
                start_ms: s.start,
                end_ms: s.end,
                key: Arc::clone(&k.key),
                bucket: self.key_buckets[id as usize],
                values: s.states,
                complete,
                view: k.view,
                id,
            });
        }
        // Popped in (end, start, id) order: only the keys of a run of equal (end,
        // start), if any, are put in order, so a key's text is read only at a tie.
        let rows = &mut self.closed[from..];
        if !rows.is_sorted_by_key(|r| (r.end_ms, r.start_ms)) {
            rows.sort_unstable_by_key(|r| (r.end_ms, r.start_ms));
        }
        for tie in rows.chunk_by_mut(|a, b| (a.end_ms, a.start_ms) == (b.end_ms, b.start_ms)) {
            if tie.len() > 1 {
                tie.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.encode_closed(from);
    }

    /// The open sessions of `key`, by start.
    pub(super) fn sessions_of(&self, key: &str) -> Option<&[Session]> {
        let id = self.id_of(key, self.key_hash(key))?;
        Some(&self.keyed[id as usize].list)
    }

    /// The session of `key` starting at `start`, if open.
    pub(super) fn session(&self, key: &str, start: i64) -> Option<&Session> {
        let list = self.sessions_of(key)?;
        let i = list.binary_search_by_key(&start, |s| s.start).ok()?;
        list.get(i)
    }

    /// Every key with open sessions, and them.
    #[cfg(test)]
    pub(super) fn session_lists(&self) -> impl Iterator<Item = (&Arc<str>, &[Session])> {
        self.keyed
            .iter()
            .filter(|k| !k.list.is_empty())
            .map(|k| (&k.key, k.list.as_slice()))
    }

    /// Calls `visit(slot, id)` per entry of `session_unsaved` and unlists every session
    /// (the epoch moves on), then frees the ids of keys left without sessions: nothing
    /// lists them any more.
    pub(super) fn take_unsaved_sessions(&mut self, mut visit: impl FnMut(&Engine, i64, u32)) {
        let mut unsaved = std::mem::take(&mut self.session_unsaved);
        for &(slot, id) in &unsaved {
            visit(self, slot, id);
        }
        unsaved.clear();
        self.session_unsaved = unsaved;
        self.unsaved_epoch = next_epoch(self.unsaved_epoch);
        let mut emptied = std::mem::take(&mut self.emptied_ids);
        emptied.sort_unstable();
        emptied.dedup();
        for id in emptied.drain(..) {
            let k = &mut self.keyed[id as usize];
            // Emptied, then given a session again: still in use.
            if !k.list.is_empty() {
                continue;
            }
            self.drop_id(id);
            self.keyed[id as usize] = Keyed::new(Arc::from(""), 0);
            self.free_ids.push(id);
        }
        self.emptied_ids = emptied;
    }

    /// Calls `visit(key, start, last, end, states)` for every open session starting in
    /// `slot`: what a checkpoint writes of that slot.
    pub fn slot_sessions(
        &self,
        slot: i64,
        mut visit: impl FnMut(&[u8], i64, i64, i64, &[AggState]),
    ) {
        let width = self.spec.window.pane_ms();
        self.each_session(|key, _, start, last, end, states| {
            if (slot..slot.saturating_add(width)).contains(&start) {
                visit(key, start, last, end, states);
            }
        });
    }

    /// Calls `visit(key text, its bucket, start, last, end, states)` for every open
    /// session, key by key: a checkpoint takes what it writes in one walk. A short key's
    /// text comes from its slot: the walk reads nothing else per key.
    pub fn each_session(&self, mut visit: impl FnMut(&[u8], u16, i64, i64, i64, &[AggState])) {
        for (k, bucket) in self.keyed.iter().zip(&self.key_buckets) {
            for s in &k.list {
                visit(k.text(), *bucket, s.start, s.last, s.end, &s.states);
            }
        }
    }

    /// Puts back a session a checkpoint stored; it counts as changed, so the view is
    /// filled from it.
    pub fn restore_session(&mut self, cell: SessionCell) {
        let (key, start, last, end, states) = cell;
        let id = self.id_for(&key, self.key_hash(&key));
        let list = &mut self.keyed[id as usize].list;
        let at = list.partition_point(|s| s.start < start);
        if list.get(at).is_some_and(|s| s.start == start) {
            return;
        }
        list.insert(
            at,
            Session {
                start,
                last,
                end,
                states: States::from_vec(states),
                dirty: true,
                listed: NEVER_LISTED,
            },
        );
        self.cells += 1;
        self.close_queue.push((end, start, id));
        self.session_changed.push((start, id));
    }
}

/// A session restored from a checkpoint is saved: listed in no epoch.
pub(super) const NEVER_LISTED: u32 = 0;

/// The epoch after `epoch`, never [`NEVER_LISTED`].
pub(super) fn next_epoch(epoch: u32) -> u32 {
    match epoch.wrapping_add(1) {
        NEVER_LISTED => 1,
        next => next,
    }
}

/// Whether a window `[start, end)` is clear of every taint.
pub(super) fn span_complete(taints: &[Taint], start: i64, end: i64) -> bool {
    !taints
        .iter()
        .any(|t| end > t.min_end_ms && start <= t.max_start_ms)
}

#[cfg(test)]
mod close_queue_tests {
    use super::CloseQueue;

    /// Entries leave smallest first, only up to the bound, whether they were queued
    /// before the bucket was sorted or into it afterwards.
    #[test]
    fn entries_leave_in_order_up_to_the_bound() {
        let mut q = CloseQueue::default();
        for e in [
            (1_500, 2, 7),
            (400, 1, 1),
            (1_200, 3, 2),
            (999, 0, 4),
            (5_000, 1, 1),
        ] {
            q.push(e);
        }
        assert_eq!(q.pop_through(1_000), Some((400, 1, 1)));
        assert_eq!(q.pop_through(1_000), Some((999, 0, 4)));
        assert_eq!(q.pop_through(1_000), None);
        assert_eq!(q.pop_through(1_300), Some((1_200, 3, 2)));
        // The bucket of 1 s is sorted now: later entries go into their place.
        q.push((1_100, 9, 9));
        q.push((1_900, 0, 0));
        q.push((1_500, 1, 3));
        let mut out = Vec::new();
        while let Some(e) = q.pop_through(10_000) {
            out.push(e);
        }
        assert_eq!(
            out,
            [
                (1_100, 9, 9),
                (1_500, 1, 3),
                (1_500, 2, 7),
                (1_900, 0, 0),
                (5_000, 1, 1)
            ]
        );
    }

    /// A bucket emptied and left is made again when an entry falls in it later, and a
    /// far bucket (an event time years ahead) waits its turn behind near ones.
    #[test]
    fn emptied_buckets_come_back_and_far_ones_wait() {
        let mut q = CloseQueue::default();
        let far = 1 << 50;
        q.push((far, 0, 1));
        q.push((2_500, 0, 2));
        assert_eq!(q.pop_through(3_000), Some((2_500, 0, 2)));
        assert_eq!(q.pop_through(3_000), None);
        q.push((2_100, 1, 3));
        q.push((1_000, 1, 4));
        assert_eq!(q.peek(0), None, "the front bucket is not sorted yet");
        assert_eq!(q.pop_through(far - 1), Some((1_000, 1, 4)));
        assert_eq!(q.pop_through(far - 1), Some((2_100, 1, 3)));
        assert_eq!(q.pop_through(far - 1), None);
        assert_eq!(q.pop_through(far), Some((far, 0, 1)));
        assert_eq!(q.pop_through(i64::MAX), None);
        assert!(
            q.by_index.is_empty() && q.order.is_empty() && q.free.len() == q.slab.len(),
            "nothing left behind"
        );
    }

    /// Negative times (before 1970) and the full range of starts and ids keep the
    /// (end, start, id) order through the packing.
    #[test]
    fn packing_keeps_the_order_of_negative_times_and_extremes() {
        let mut entries = vec![
            (2_000, -5, 3),
            (2_000, 7, 1),
            (2_000, -5, 1),
            (-1_500, -2_000, 9),
            (-1_001, i64::MIN, u32::MAX),
            (-1_001, i64::MIN, 0),
            (2_999, i64::MAX, 0),
            (-1, -1, 1),
        ];
        let mut q = CloseQueue::default();
        for e in &entries {
            q.push(*e);
        }
        entries.sort_unstable();
        let mut out = Vec::new();
        while let Some(e) = q.pop_through(i64::MAX) {
            out.push(e);
        }
        assert_eq!(out, entries);
    }
}

#[cfg(test)]
mod layout_tests {
    /// An event reads its key's slot: two cache lines, never a third.
    #[test]
    fn a_keys_slot_is_two_cache_lines() {
        assert_eq!(std::mem::size_of::<super::Keyed>(), 128);
        assert_eq!(std::mem::align_of::<super::Keyed>(), 64);
    }
}
