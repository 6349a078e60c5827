//! The hot view: a pipeline's recent results in memory, what the HTTP layer answers from.
//!
//! The pipeline thread is its only writer: after a run of batches it gathers the changed
//! open windows (`Engine::take_changed`) and the closed rows (`Engine::take_closed`)
//! outside any lock, then applies them under the write lock in one go. Readers take the
//! read lock for the time of one lookup, so HTTP never waits for the pipeline thread's
//! work, only for an apply. No IO.
//!
//! Rows live per key in a slot of `slots` (its rows, by start: a handful, so a key's
//! answer is one hash lookup in `keys` and a short walk); `windows` lists the (start,
//! slot) of every row in buckets of start time, for the order rows leave in and for
//! `top`. Applying a row is one hash lookup, or none when the writer brings the [`Hint`]
//! the last apply of its key returned (the session engine keeps one per key: with
//! session windows nearly every session is a row of its own, applied open, then closed,
//! then pruned), plus, when the row is new, an append to its bucket: a bucket is sorted
//! only once prune reaches it, so an apply never searches an ordered map of every start.
//! Bounds: a window leaves once its end + `retain_results` is behind the watermark, and
//! beyond `max_view_rows` rows the oldest windows whose rows are all final leave (whole
//! windows, oldest first): the result store holds them, and `evicted_through` tells
//! readers which windows to ask it for.

use std::collections::{BTreeMap, VecDeque};

use foldhash::HashMap;
use smallvec::SmallVec;
use std::sync::Arc;

use parking_lot::RwLock;

use super::aggregate::States;
use super::lazy_sorted::LazySorted;
use super::watermark;

/// One (window, key) result: 56 bytes, so with its start one cache line (a test pins
/// it).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub end_ms: i64,
    /// One per aggregate, in spec order.
    pub values: States,
    /// Bit 63: complete. Bits 0-62: the sequence number of the checkpoint that holds the
    /// close, [`Row::FINAL`] for a row read from the result store, `OPEN` for an open
    /// row. The row is final once the view's `durable_seq` reaches it
    /// ([`ViewState::is_final`]): a checkpoint makes its rows final by moving one number,
    /// without visiting them.
    mark: u64,
}

impl Row {
    /// The checkpoint number of a row read from the result store: final already.
    pub const FINAL: u64 = 0;
    /// The checkpoint number of an open row: never final as it is.
    const OPEN: u64 = Row::COMPLETE - 1;
    const COMPLETE: u64 = 1 << 63;

    /// An open row; `complete` false when events of the window may be missing (removed
    /// by retention unread, refused over `max_open_windows`).
    pub fn open(end_ms: i64, values: States, complete: bool) -> Row {
        Row::with_mark(end_ms, values, complete, Row::OPEN)
    }

    /// A closed row (the watermark passed end + allowed_lateness: these are the values it
    /// closed with), final once checkpoint `final_at` is durable ([`Row::FINAL`]: final).
    pub fn closed(end_ms: i64, values: States, complete: bool, final_at: u64) -> Row {
        Row::with_mark(end_ms, values, complete, final_at.min(Row::OPEN - 1))
    }

    fn with_mark(end_ms: i64, values: States, complete: bool, final_at: u64) -> Row {
        Row {
            end_ms,
            values,
            mark: final_at | if complete { Row::COMPLETE } else { 0 },
        }
    }

    pub fn is_closed(&self) -> bool {
        self.final_at() != Row::OPEN
    }

    /// False when events of the window may be missing.
    pub fn complete(&self) -> bool {
        self.mark & Row::COMPLETE != 0
    }

    fn final_at(&self) -> u64 {
        self.mark & !Row::COMPLETE
    }
}

/// Which window of a key (or of the whole pipeline) a query means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The newest, open or not.
    Latest,
    /// The newest closed one.
    LastClosed,
    /// The one holding the watermark (the newest such, for hopping windows).
    Current,
}

/// A pipeline's view, shared by its thread (writer) and HTTP (readers).
pub struct HotView {
    /// Result names, in spec order.
    pub aggregates: Vec<String>,
    /// Per aggregate, the quantiles a `quantiles` aggregate outputs (empty for others).
    pub quantiles: Vec<Vec<f64>>,
    pub window_size_ms: i64,
    /// Session windows: each row has its own end, and rows can leave without closing
    /// (a session merged into another, [`ViewState::remove`]).
    pub sessions: bool,
    pub allowed_lateness_ms: i64,
    /// Most rows held before the oldest final windows leave for the store alone.
    pub max_rows: usize,
    state: RwLock<ViewState>,
}

/// Everything under the lock.
#[derive(Debug, Default)]
pub struct ViewState {
    pub watermark: i64,
    /// Per source partition, the next offset the pipeline reads.
    pub next_offsets: Vec<i64>,
    pub open_windows: usize,
    pub state_bytes: u64,
    /// The pipeline thread has published at least once since start.
    pub published: bool,
    /// The sequence number of the newest checkpoint that is durable (0: none yet): rows
    /// closed into it or an earlier one are final. The numbers are those of the pipeline
    /// thread the view was made with (a restart makes both anew).
    durable_seq: u64,
    /// Key -> its slot in `slots`.
    keys: HashMap<Arc<str>, u32>,
    /// Per key with rows, its rows; slots of keys without rows are free (`free`).
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The (start, slot) of every row, in buckets of `bucket_ms` of start, each sorted
    /// once prune reaches it.
    windows: BTreeMap<i64, LazySorted<(i64, u32)>>,
    /// Width of a bucket of `windows`: the window size (a bucket per window, a few for
    /// hopping windows), or [`SESSION_START_BUCKET_MS`].
    bucket_ms: i64,
    /// Start of the newest window with a closed row.
    last_closed_start: Option<i64>,
    /// Rows held in `windows`.
    rows: usize,
    /// Start of the newest window that left for the row bound (or was not loaded at
    /// start): windows starting at or before it are answered from the result store.
    pub evicted_through: Option<i64>,
    /// Rows of one window start may end at different times (sessions).
    varying_ends: bool,
}

/// Width of a bucket of starts for session windows, whose starts are event times.
const SESSION_START_BUCKET_MS: i64 = 1000;

/// A key's rows, oldest start first. `era` counts the times the slot was freed: a
/// [`Hint`] names a slot and its generation.
#[derive(Debug, Default)]
struct Slot {
    key: Option<Arc<str>>,
    era: u32,
    rows: VecDeque<(i64, Row)>,
}

impl Slot {
    /// Most rows a free slot keeps room for (256 bytes).
    const KEEP_ROWS: usize = 4;
}

/// Where the last apply found a key's rows (slot and generation), for the next apply of
/// the same key to skip the hash lookup; [`Hint::NONE`] when unknown. A stale hint
/// (the slot freed since) is detected and costs the lookup. A hint is only good for the
/// view that gave it: a pipeline's engine and view are made together and never outlive
/// each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint(u64);

impl Hint {
    /// Slot `u32::MAX` is never handed out.
    pub const NONE: Hint = Hint(u64::MAX);

    fn new(slot: u32, era: u32) -> Hint {
        Hint(u64::from(slot) << 32 | u64::from(era))
    }

    fn get(self) -> Option<(u32, u32)> {
        let slot = u32::try_from(self.0 >> 32).ok()?;
        let era = u32::try_from(self.0 & u64::from(u32::MAX)).ok()?;
        (self != Hint::NONE).then_some((slot, era))
    }
}

impl HotView {
    pub fn new(
        aggregates: Vec<String>,
        window_size_ms: i64,
        allowed_lateness_ms: i64,
        partitions: usize,
        max_rows: usize,
    ) -> HotView {
        HotView {
            quantiles: vec![Vec::new(); aggregates.len()],
            aggregates,
            window_size_ms,
            sessions: false,
            allowed_lateness_ms,
            max_rows,
            state: RwLock::new(ViewState {
                watermark: watermark::NONE,
                next_offsets: vec![0; partitions],
                bucket_ms: window_size_ms.max(1),
                ..ViewState::default()
            }),
        }
    }

    /// A view of session windows (see [`sessions`](Self::sessions)).
    #[must_use]
    pub fn with_sessions(mut self) -> HotView {
        self.sessions = true;
        let state = self.state.get_mut();
        state.varying_ends = true;
        state.bucket_ms = SESSION_START_BUCKET_MS;
        self
    }

    /// Runs `f` under the read lock.
    pub fn read<T>(&self, f: impl FnOnce(&ViewState) -> T) -> T {
        f(&self.state.read())
    }

    /// Runs `f` under the write lock: the pipeline thread's apply.
    pub fn write<T>(&self, f: impl FnOnce(&mut ViewState) -> T) -> T {
        f(&mut self.state.write())
    }
}

impl ViewState {
    /// Sets the row of (window `start`, `key`).
    pub fn upsert(&mut self, start: i64, key: &Arc<str>, row: Row) {
        self.upsert_hinted(start, key, row, Hint::NONE);
    }

    /// Sets the row of (window `start`, `key`), looking the key up by `hint` if it is
    /// still good; returns the hint for the key's next apply.
    pub fn upsert_hinted(&mut self, start: i64, key: &Arc<str>, row: Row, hint: Hint) -> Hint {
        if row.is_closed() {
            self.last_closed_start = Some(self.last_closed_start.map_or(start, |s| s.max(start)));
        }
        let slot = self.slot_for(key, hint);
        let held = &mut self.slots[slot as usize];
        let hint = Hint::new(slot, held.era);
        let rows = &mut held.rows;
        // Mostly an open row again, one of the key's newest: replaced in place.
        let at = match rows.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => {
                rows[i].1 = row;
                return hint;
            }
            Err(at) => at,
        };
        rows.insert(at, (start, row));
        self.rows += 1;
        self.windows
            .entry(start.div_euclid(self.bucket_ms))
            .or_default()
            .add((start, slot));
        hint
    }

    /// Asks, ahead of a run of applies, for the slot of the row `far` steps on and (that
    /// slot asked for as many steps before, so in cache now) the newest rows of the slot
    /// of the row `near` steps on: the misses of the applies overlap. [`Hint::NONE`]:
    /// nothing to ask for.
    pub fn prefetch_ahead(&self, far: Hint, near: Hint) {
        if let Some((slot, _)) = far.get() {
            self.prefetch_slot(slot);
        }
        if let Some((slot, _)) = near.get()
            && let Some(held) = self.slots.get(slot as usize)
        {
            // An apply mostly replaces the newest row (the open session) or goes after it;
            // a closed one may be the one before.
            if let Some(newest) = held.rows.back() {
                crate::prefetch::prefetch_all(newest);
            }
            if held.rows.len() > 1
                && let Some(before) = held.rows.get(held.rows.len() - 2)
            {
                crate::prefetch::prefetch_all(before);
            }
        }
    }

    fn prefetch_slot(&self, slot: u32) {
        crate::prefetch::prefetch(self.slots.as_ptr().wrapping_add(slot as usize));
    }

    /// The slot of `key`: the hinted one if it still holds the key, else by lookup, else
    /// a free one given to it.
    fn slot_for(&mut self, key: &Arc<str>, hint: Hint) -> u32 {
        if let Some((slot, era)) = hint.get()
            && let Some(held) = self.slots.get(slot as usize)
            && held.era == era
            && held.key.is_some()
        {
            return slot;
        }
        if let Some(slot) = self.keys.get(&**key) {
            return *slot;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                u32::try_from(self.slots.len() - 1).expect("fewer view keys than u32::MAX")
            }
        };
        self.slots[slot as usize].key = Some(Arc::clone(key));
        self.keys.insert(Arc::clone(key), slot);
        slot
    }

    /// Frees `slot` if it holds no rows: its key leaves `keys`, its hints go stale.
    fn release_if_empty(&mut self, slot: u32) {
        let held = &mut self.slots[slot as usize];
        if !held.rows.is_empty() {
            return;
        }
        if let Some(key) = held.key.take() {
            self.keys.remove(&key);
        }
        held.era = held.era.wrapping_add(1);
        // A small allocation stays for the slot's next key (with sessions, a slot is
        // freed and taken again about once per session); a larger one is given back.
        if held.rows.capacity() > Slot::KEEP_ROWS {
            held.rows = VecDeque::new();
        }
        self.free.push(slot);
    }

    /// The rows of `key`, if it has any.
    fn rows_of(&self, key: &str) -> Option<&VecDeque<(i64, Row)>> {
        let slot = self.keys.get(key)?;
        Some(&self.slots[*slot as usize].rows)
    }

    /// Removes the row of (window `start`, `key`), if held: a session merged into
    /// another, or whose start moved.
    pub fn remove(&mut self, start: i64, key: &str) {
        let Some(&slot) = self.keys.get(key) else {
            return;
        };
        let rows = &mut self.slots[slot as usize].rows;
        let Ok(i) = rows.binary_search_by_key(&start, |(s, _)| *s) else {
            return;
        };
        rows.remove(i);
        self.release_if_empty(slot);
        self.rows -= 1;
        let bucket = start.div_euclid(self.bucket_ms);
        if let Some(starts) = self.windows.get_mut(&bucket) {
            // For sessions: a bucket holds about a second of starts.
            starts.remove((start, slot));
            if starts.is_empty() {
                self.windows.remove(&bucket);
            }
        }
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The row of (`start`, the key in `slot`), if held.
    fn row(&self, start: i64, slot: u32) -> Option<&Row> {
        let rows = &self.slots.get(slot as usize)?.rows;
        let i = Self::find(rows, start)?;
        Some(&rows[i].1)
    }

    /// Where `rows` hold `start`: first the oldest, which prune asks for (it goes oldest
    /// window first), without a search.
    fn find(rows: &VecDeque<(i64, Row)>, start: i64) -> Option<usize> {
        match rows.front() {
            Some((s, _)) if *s == start => Some(0),
            _ => rows.binary_search_by_key(&start, |(s, _)| *s).ok(),
        }
    }

    /// Drops windows whose end + `retain_ms` is at or behind the watermark, then, while
    /// more than `max_rows` rows are held, the oldest windows whose rows are all final
    /// (closed and durable in the result store: nothing is lost to readers).
    pub fn prune(&mut self, retain_ms: i64, max_rows: usize) {
        use crate::prefetch::AHEAD;
        let mut slots: SmallVec<[u32; 4]> = SmallVec::new();
        loop {
            let Some(mut first) = self.windows.first_entry() else {
                return;
            };
            let starts = first.get_mut().sorted();
            let Some(&(start, _)) = starts.last() else {
                first.remove();
                continue;
            };
            // The window's slots (with sessions, mostly one), and those of the windows
            // after it asked for ahead: with sessions each is a key of its own.
            slots.clear();
            slots.extend(
                starts
                    .iter()
                    .rev()
                    .take_while(|(s, _)| *s == start)
                    .map(|(_, slot)| *slot),
            );
            let left = starts.len() - slots.len();
            let ahead = |n: usize| left.checked_sub(n).map(|i| starts[i].1);
            if let Some(far) = ahead(AHEAD) {
                crate::prefetch::prefetch(self.slots.as_ptr().wrapping_add(far as usize));
            }
            if let Some(oldest) = ahead(AHEAD / 2)
                .and_then(|near| self.slots.get(near as usize))
                .and_then(|h| h.rows.front())
            {
                crate::prefetch::prefetch_all(oldest);
            }
            if !self.prune_first(start, &slots, retain_ms, max_rows) {
                return;
            }
            if let Some(mut first) = self.windows.first_entry() {
                first.get_mut().truncate(left);
                if left == 0 {
                    first.remove();
                }
            }
        }
    }

    /// Drops the oldest window, `start` held by `slots`, if it expired or is over the
    /// row bound (see [`prune`](Self::prune)); false if it stays. The caller takes it
    /// out of `windows`.
    fn prune_first(&mut self, start: i64, slots: &[u32], retain_ms: i64, max_rows: usize) -> bool {
        let wm = self.watermark;
        let end = if self.varying_ends {
            slots
                .iter()
                .filter_map(|k| self.row(start, *k))
                .map(|r| r.end_ms)
                .max()
                .unwrap_or(start)
        } else {
            slots
                .first()
                .and_then(|k| self.row(start, *k))
                .map_or(start, |r| r.end_ms)
        };
        let expired = wm != watermark::NONE && end.saturating_add(retain_ms) <= wm;
        // The newest closed window stays: `last_closed` and `top` answer from it.
        let over = !expired
            && self.rows > max_rows
            && self.last_closed_start.is_some_and(|c| start < c)
            && slots
                .iter()
                .all(|k| self.row(start, *k).is_none_or(|r| self.is_final(r)));
        if !(expired || over) {
            return false;
        }
        if over {
            self.evicted_through = Some(self.evicted_through.map_or(start, |e| e.max(start)));
        }
        for slot in slots {
            let rows = &mut self.slots[*slot as usize].rows;
            // The oldest start held: the first row of the key.
            if let Some(i) = Self::find(rows, start) {
                rows.remove(i);
                self.rows -= 1;
            }
            self.release_if_empty(*slot);
        }
        true
    }

    /// Checkpoint `seq` is durable: the rows closed into it, and into every earlier
    /// one, are final.
    pub fn mark_durable(&mut self, seq: u64) {
        self.durable_seq = self.durable_seq.max(seq);
    }

    /// Whether `row`'s close is durable in the result store.
    pub fn is_final(&self, row: &Row) -> bool {
        row.final_at() <= self.durable_seq
    }

    /// `key`'s window as `which` says, with its start.
    pub fn key_window(&self, key: &str, which: Which) -> Option<(i64, &Row)> {
        let rows = self.rows_of(key)?;
        let found = match which {
            Which::Latest => rows.back(),
            // Closed windows are older than open ones: a few steps back at most.
            Which::LastClosed => rows.iter().rev().find(|(_, r)| r.is_closed()),
            Which::Current => {
                let wm = self.watermark;
                if wm == watermark::NONE {
                    return None;
                }
                // The newest window starting at or before the watermark, if it holds it.
                let at = rows.partition_point(|(s, _)| *s <= wm);
                at.checked_sub(1)
                    .map(|i| &rows[i])
                    .filter(|(_, r)| r.end_ms > wm)
            }
        };
        found.map(|(s, r)| (*s, r))
    }

    /// `key`'s newest `n` windows, newest first.
    pub fn key_newest(&self, key: &str, n: usize) -> Vec<(i64, &Row)> {
        let Some(rows) = self.rows_of(key) else {
            return Vec::new();
        };
        rows.iter().rev().take(n).map(|(s, r)| (*s, r)).collect()
    }

    /// `key`'s windows starting in `[from_ms, to_ms)`, newest first, at most `n`.
    pub fn key_range(&self, key: &str, from_ms: i64, to_ms: i64, n: usize) -> Vec<(i64, &Row)> {
        let Some(rows) = self.rows_of(key) else {
            return Vec::new();
        };
        if from_ms >= to_ms {
            return Vec::new();
        }
        let (lo, hi) = (
            rows.partition_point(|(s, _)| *s < from_ms),
            rows.partition_point(|(s, _)| *s < to_ms),
        );
        rows.range(lo..hi)
            .rev()
            .take(n)
            .map(|(s, r)| (*s, r))
            .collect()
    }

    /// The start of the pipeline's window as `which` says (`Latest` is the newest held).
    pub fn pipeline_window(&self, which: Which) -> Option<i64> {
        match which {
            Which::Latest => self
                .windows
                .last_key_value()
                .and_then(|(_, s)| s.items().iter().map(|(s, _)| *s).max()),
            Which::LastClosed => self.last_closed_start,
            Which::Current => {
                let wm = self.watermark;
                if wm == watermark::NONE {
                    return None;
                }
                // The newest start at or before the watermark whose window holds it.
                let holds = |s: i64, slot: u32| self.row(s, slot).is_some_and(|r| r.end_ms > wm);
                let mut buckets = self.windows.range(..=wm.div_euclid(self.bucket_ms)).rev();
                if !self.varying_ends {
                    // Windows of one size: if the newest does not hold it, none does.
                    return buckets.find_map(|(_, starts)| {
                        let (s, slot) = starts.items().iter().filter(|(s, _)| *s <= wm).max()?;
                        Some(holds(*s, *slot).then_some(*s))
                    })?;
                }
                buckets.find_map(|(_, starts)| {
                    starts
                        .items()
                        .iter()
                        .filter(|(s, slot)| *s <= wm && holds(*s, *slot))
                        .map(|(s, _)| *s)
                        .max()
                })
            }
        }
    }

    /// The `n` keys of window `start` with the largest value of aggregate `by`
    /// (ties by key), largest first.
    pub fn top(&self, start: i64, by: usize, n: usize) -> Vec<(&Arc<str>, &Row)> {
        let Some(starts) = self.windows.get(&start.div_euclid(self.bucket_ms)) else {
            return Vec::new();
        };
        let mut rows: Vec<(f64, &Arc<str>, &Row)> = starts
            .items()
            .iter()
            .filter(|(s, _)| *s == start)
            .map(|(_, k)| k)
            .filter_map(|k| {
                let r = self.row(start, *k)?;
                let key = self.slots.get(*k as usize)?.key.as_ref()?;
                Some((r.values.get(by)?.sort_value()?, key, r))
            })
            .collect();
        let cmp = |a: &(f64, &Arc<str>, &Row), b: &(f64, &Arc<str>, &Row)| {
            b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
        };
        if rows.len() > n && n > 0 {
            rows.select_nth_unstable_by(n - 1, cmp);
            rows.truncate(n);
        }
        rows.sort_unstable_by(cmp);
        rows.truncate(n);
        rows.into_iter().map(|(_, k, r)| (k, r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::aggregate::AggState;

    fn row(end_ms: i64, closed: bool, count: u64) -> Row {
        let values = States::from_elem(AggState::Count(count), 1);
        if closed {
            Row::closed(end_ms, values, true, 1)
        } else {
            Row::open(end_ms, values, true)
        }
    }

    #[test]
    fn a_row_and_its_start_fill_one_cache_line() {
        assert_eq!(std::mem::size_of::<(i64, Row)>(), 64);
        let values = States::from_elem(AggState::Count(1), 1);
        let open = Row::open(10, values.clone(), false);
        assert!(!open.is_closed() && !open.complete());
        let closed = Row::closed(10, values, true, 7);
        assert!(closed.is_closed() && closed.complete());
        let view = HotView::new(vec!["count".into()], 10, 0, 1, 1000);
        view.write(|s| {
            s.mark_durable(6);
            assert!(!s.is_final(&closed) && !s.is_final(&open));
            s.mark_durable(7);
            assert!(s.is_final(&closed) && !s.is_final(&open));
            s.mark_durable(3);
            assert!(s.is_final(&closed), "the durable number never goes back");
        });
    }

    #[test]
    fn latest_last_closed_and_current_of_a_key() {
        let view = HotView::new(vec!["count".into()], 10, 0, 1, 1000);
        let k: Arc<str> = "a".into();
        view.write(|s| {
            s.upsert(0, &k, row(10, true, 3));
            s.upsert(10, &k, row(20, false, 1));
            s.upsert(30, &k, row(40, false, 2));
            s.watermark = 15;
        });
        view.read(|s| {
            assert_eq!(s.key_window("a", Which::Latest).map(|w| w.0), Some(30));
            assert_eq!(s.key_window("a", Which::LastClosed).map(|w| w.0), Some(0));
            assert_eq!(s.key_window("a", Which::Current).map(|w| w.0), Some(10));
            assert_eq!(s.key_window("b", Which::Latest), None);
            assert_eq!(s.key_newest("a", 2).len(), 2);
            assert_eq!(s.key_range("a", 0, 30, 10).len(), 2);
            assert_eq!(s.pipeline_window(Which::LastClosed), Some(0));
        });
        view.write(|s| {
            s.watermark = 25;
            s.prune(5, 1000);
        });
        view.read(|s| {
            assert_eq!(
                s.key_window("a", Which::LastClosed),
                None,
                "window 0 expired"
            );
            assert_eq!(
                s.key_window("a", Which::Current),
                None,
                "no window holds 25"
            );
        });
    }

    /// Beyond `max_rows` the oldest final windows leave whole, never an open one, one
    /// not yet final, or the newest closed one, and `evicted_through` says which left.
    #[test]
    fn the_row_bound_evicts_whole_final_windows_oldest_first() {
        let view = HotView::new(vec!["count".into()], 10, 0, 1, 3);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let fin = |end, count| {
            Row::closed(
                end,
                States::from_elem(AggState::Count(count), 1),
                true,
                Row::FINAL,
            )
        };
        view.write(|s| {
            s.upsert(0, &a, fin(10, 1));
            s.upsert(0, &b, fin(10, 1));
            s.upsert(10, &a, row(20, true, 1));
            s.upsert(20, &a, fin(30, 1));
            s.upsert(30, &a, row(40, false, 1));
            s.upsert(30, &a, row(40, false, 2));
            assert_eq!(s.rows(), 5, "an update is not a new row");
            s.prune(1000, 3);
            assert_eq!((s.rows(), s.evicted_through), (3, Some(0)));
            s.prune(1000, 1);
            assert_eq!(s.rows(), 3, "window 10 is not final yet: it stays");
            // Window 10 closed into checkpoint 1; the open window never turns final.
            s.mark_durable(1);
            assert!(
                s.key_window("a", Which::Latest)
                    .is_some_and(|(_, r)| !s.is_final(r))
            );
            s.prune(1000, 1);
            assert_eq!((s.rows(), s.evicted_through), (2, Some(10)));
            assert_eq!(
                s.key_newest("a", 10).len(),
                2,
                "the newest closed and the open stay"
            );
            assert_eq!(s.key_window("b", Which::Latest), None);
        });
    }

    /// A hint skips the key lookup while its slot holds the key; once the key's rows all
    /// left and the slot went to another key, the stale hint is noticed: the apply finds
    /// the key by its text and writes nothing into the other key's rows.
    #[test]
    fn a_stale_hint_never_reaches_another_key() {
        let view = HotView::new(vec!["count".into()], 10, 0, 1, 1000);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        view.write(|s| {
            let hint_a = s.upsert_hinted(0, &a, row(10, false, 1), Hint::NONE);
            assert_eq!(s.upsert_hinted(0, &a, row(10, false, 2), hint_a), hint_a);
            s.remove(0, &a);
            // b takes the slot a left.
            let hint_b = s.upsert_hinted(20, &b, row(30, false, 7), Hint::NONE);
            assert_ne!(hint_b, hint_a, "the slot's era moved on");
            let again = s.upsert_hinted(40, &a, row(50, false, 3), hint_a);
            assert_ne!(again, hint_b);
            assert_eq!(s.rows(), 2);
        });
        view.read(|s| {
            let count = |k: &str| {
                s.key_newest(k, 10)
                    .iter()
                    .map(|(st, r)| (*st, r.values[0].clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(count("a"), [(40, AggState::Count(3))]);
            assert_eq!(count("b"), [(20, AggState::Count(7))]);
        });
    }

    /// Session rows come in any order of start and end; they leave oldest start first,
    /// a window staying while any of its rows does not expire, and a row applied to a
    /// bucket prune has already sorted finds its place.
    #[test]
    fn session_rows_leave_by_start_whatever_order_they_came_in() {
        let view = HotView::new(vec!["count".into()], 0, 0, 1, 1000).with_sessions();
        let k: Vec<Arc<str>> = (0..7).map(|i| Arc::from(format!("k{i}"))).collect();
        view.write(|s| {
            for (key, start, end) in [
                (0, 1_500, 1_600),
                (1, 200, 1_000),
                (2, 900, 950),
                (3, 1_200, 1_300),
                (4, 200, 260),
                (5, 2_100, 2_400),
            ] {
                s.upsert(start, &k[key], row(end, true, 1));
            }
            assert_eq!(s.pipeline_window(Which::Latest), Some(2_100));
            s.watermark = 1_250;
            assert_eq!(s.pipeline_window(Which::Current), Some(1_200));
            s.remove(1_200, "k3");
            assert_eq!(
                s.pipeline_window(Which::Current),
                None,
                "no row holds 1,250"
            );
            s.watermark = 1_000;
            s.prune(0, 1000);
            // 200 (both rows end by 1,000) and 900 left; 1,500 ends at 1,600.
            assert_eq!(s.rows(), 2);
            assert_eq!(s.key_window("k1", Which::Latest), None);
            assert!(s.key_window("k0", Which::Latest).is_some());
            // Into the bucket of 1,000-1,999, sorted by the prune.
            s.upsert(1_100, &k[6], row(1_150, true, 1));
            s.upsert(1_900, &k[6], row(1_950, true, 1));
            s.remove(1_900, "k6");
            s.watermark = 1_700;
            s.prune(0, 1000);
            assert_eq!(s.rows(), 1, "1,100 and 1,500 expired; 2,100 stays");
            assert_eq!(s.pipeline_window(Which::Latest), Some(2_100));
        });
        let top: Vec<String> = view.read(|s| {
            s.top(2_100, 0, 3)
                .iter()
                .map(|(k, _)| k.to_string())
                .collect()
        });
        assert_eq!(top, ["k5"]);
    }

    #[test]
    fn top_orders_by_value_then_key() {
        let view = HotView::new(vec!["count".into()], 10, 0, 1, 1000);
        view.write(|s| {
            for (k, c) in [("a", 1), ("b", 5), ("c", 5), ("d", 2)] {
                s.upsert(0, &Arc::from(k), row(10, true, c));
            }
        });
        let top: Vec<String> =
            view.read(|s| s.top(0, 0, 3).iter().map(|(k, _)| k.to_string()).collect());
        assert_eq!(top, ["b", "c", "d"]);
    }
}
