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
//! Session starts are unique per key among open and closed sessions: a new start is an
//! event time whose own window is open, later than the start of every closed session
//! of the key (whose end, at least `start + gap`, the watermark passed).

use std::sync::Arc;

use super::{Engine, Input, Taint, Taken, update_states};
use crate::pipeline::aggregate::{AggState, Position};
use crate::pipeline::watermark;
use crate::pipeline::window::WindowKind;

/// One open session of a key.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub start: i64,
    /// The newest event time in it.
    pub last: i64,
    pub end: i64,
    pub states: Vec<AggState>,
    /// Listed in `Engine::changed` as `(start, key)`.
    pub dirty: bool,
    /// Listed in `Engine::unsaved` as `(slot of start, key)`.
    pub unsaved: bool,
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

    pub(super) fn take_session(
        &mut self,
        partition: u32,
        ts_ms: i64,
        input: &Input<'_>,
        key: &str,
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
        let at = match self.sessions.get(key) {
            Some(list) => {
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
                    Some(cands[0])
                } else {
                    cands.clear();
                    (lo..hi).find(|i| list[*i].start <= ts_ms && ts_ms < list[*i].end)
                }
            }
            None => None,
        };
        let outcome = match at {
            Some(first) => {
                // `cands` is empty unless they all merge into `first`.
                self.merge_into(key, first, &cands, ts_ms);
                self.add_event(key, first, ts_ms, input.envelope, pos);
                Taken::Counted(1)
            }
            None => {
                if self.cells >= self.spec.max_cells {
                    self.refuse_session(partition, ts_ms);
                    Taken::Refused
                } else {
                    self.open_session(key, ts_ms, input.envelope, pos);
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
    fn merge_into(&mut self, key: &str, first: usize, cands: &[usize], ts_ms: i64) {
        let Some((shared, _)) = self.sessions.get_key_value(key) else {
            return;
        };
        let shared = Arc::clone(shared);
        let old_start = self.sessions[key][first].start;
        let moved = ts_ms < old_start;
        let merging = cands.len() > 1;
        if !(moved || merging) {
            return;
        }
        let (gap, max) = self.gap_max();
        let list = self.sessions.get_mut(key).expect("looked up");
        let mut gone: Vec<Session> = Vec::new();
        for i in cands[1..].iter().rev() {
            gone.push(list.remove(*i));
        }
        let s = &mut list[first];
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
        let (end, was_dirty, was_unsaved) = (s.end, s.dirty, s.unsaved);
        s.dirty = true;
        s.unsaved = true;
        self.cells -= gone.len();
        // Rows and stored cells of the starts that are gone.
        let mut removed: Vec<i64> = gone.iter().map(|g| g.start).collect();
        if moved {
            removed.push(old_start);
            self.close_queue
                .insert((end, new_start, Arc::clone(&shared)));
            self.slot_add(&shared, new_start, 1);
        }
        for start in removed {
            self.removed.push((start, Arc::clone(&shared)));
            self.unsaved
                .push((self.slot_of(start), Arc::clone(&shared)));
            self.slot_add(&shared, start, -1);
        }
        if moved || !was_dirty {
            self.changed.push((new_start, Arc::clone(&shared)));
        }
        if moved || !was_unsaved {
            self.unsaved.push((self.slot_of(new_start), shared));
        }
    }

    /// Adds the event to the session at `i` of `key`.
    fn add_event(&mut self, key: &str, i: usize, ts_ms: i64, envelope: &str, pos: Position) {
        let (gap, max) = self.gap_max();
        let Some(list) = self.sessions.get_mut(key) else {
            return;
        };
        let s = &mut list[i];
        self.counters.skipped_values +=
            update_states(&self.spec.aggregates, &mut s.states, envelope, pos);
        if ts_ms > s.last {
            s.last = ts_ms;
            s.end = s.last.saturating_add(gap).min(s.start.saturating_add(max));
        }
        let (start, flips) = (s.start, (!s.dirty, !s.unsaved));
        s.dirty = true;
        s.unsaved = true;
        if flips.0 || flips.1 {
            let Some((shared, _)) = self.sessions.get_key_value(key) else {
                return;
            };
            let shared = Arc::clone(shared);
            if flips.0 {
                self.changed.push((start, Arc::clone(&shared)));
            }
            if flips.1 {
                self.unsaved.push((self.slot_of(start), shared));
            }
        }
    }

    fn open_session(&mut self, key: &str, ts_ms: i64, envelope: &str, pos: Position) {
        let (gap, max) = self.gap_max();
        let mut states: Vec<AggState> = self
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
            unsaved: true,
        };
        let end = session.end;
        let shared = match self.sessions.get_key_value(key).map(|(k, _)| Arc::clone(k)) {
            Some(shared) => {
                let list = self.sessions.get_mut(&shared).expect("looked up");
                let at = list.partition_point(|s| s.start < ts_ms);
                list.insert(at, session);
                shared
            }
            None => {
                let shared: Arc<str> = key.into();
                self.sessions.insert(Arc::clone(&shared), vec![session]);
                shared
            }
        };
        self.cells += 1;
        self.slot_add(&shared, ts_ms, 1);
        self.close_queue.insert((end, ts_ms, Arc::clone(&shared)));
        self.changed.push((ts_ms, Arc::clone(&shared)));
        self.unsaved.push((self.slot_of(ts_ms), shared));
    }

    /// Counts `key` as holding one session more (`delta` 1) or less (-1) in the slot of
    /// `start`: which keys a checkpoint of that slot walks.
    fn slot_add(&mut self, key: &Arc<str>, start: i64, delta: i32) {
        let slot = self.slot_of(start);
        let keys = self.slots.entry(slot).or_default();
        let n = keys.entry(Arc::clone(key)).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            keys.remove(key);
            if keys.is_empty() {
                self.slots.remove(&slot);
            }
        }
    }

    /// Over `max_cells`: marks every session the event could have joined incomplete,
    /// once per slot (a taint over sessions ending after the slot's start and starting
    /// before its end + gap), and lists the open ones the taint covers as changed.
    fn refuse_session(&mut self, partition: u32, ts_ms: i64) {
        self.counters.refused += 1;
        let (gap, max) = self.gap_max();
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
        let from = self.slot_of(slot.saturating_sub(max));
        let keys: Vec<Arc<str>> = self
            .slots
            .range(from..=taint.max_start_ms)
            .flat_map(|(_, keys)| keys.keys().cloned())
            .collect();
        let taints = &self.taints;
        for key in keys {
            if let Some(list) = self.sessions.get_mut(&key) {
                for s in list.iter_mut() {
                    if !s.dirty && !span_complete(taints, s.start, s.end) {
                        s.dirty = true;
                        self.changed.push((s.start, Arc::clone(&key)));
                    }
                }
            }
        }
    }

    /// Whether a session `[start, end)` is clear of every taint.
    pub(super) fn is_complete_span(&self, start: i64, end: i64) -> bool {
        span_complete(&self.taints, start, end)
    }

    /// Closes the sessions whose end + allowed_lateness is at or before `wm`, in (end,
    /// start, key) order.
    pub(super) fn close_sessions(&mut self, wm: i64) {
        if wm == watermark::NONE {
            return;
        }
        let lateness = self.spec.allowed_lateness_ms;
        while let Some((end, _, _)) = self.close_queue.first()
            && end.saturating_add(lateness) <= wm
        {
            let Some((end, start, key)) = self.close_queue.pop_first() else {
                break;
            };
            let Some(list) = self.sessions.get_mut(&key) else {
                continue;
            };
            let Ok(i) = list.binary_search_by_key(&start, |s| s.start) else {
                // Merged away, or its start moved (queued again then).
                continue;
            };
            if list[i].end > end {
                // It grew since it was queued.
                let actual = list[i].end;
                self.close_queue.insert((actual, start, key));
                continue;
            }
            let s = list.remove(i);
            if list.is_empty() {
                self.sessions.remove(&key);
            }
            self.cells -= 1;
            self.slot_add(&key, start, -1);
            self.unsaved.push((self.slot_of(start), Arc::clone(&key)));
            let complete = self.is_complete_span(s.start, s.end);
            self.closed.push(super::ClosedRow {
                start_ms: s.start,
                end_ms: s.end,
                key,
                values: s.states,
                complete,
            });
        }
    }

    /// The session of `key` starting at `start`, if open.
    pub(super) fn session(&self, key: &str, start: i64) -> Option<&Session> {
        let list = self.sessions.get(key)?;
        let i = list.binary_search_by_key(&start, |s| s.start).ok()?;
        list.get(i)
    }

    /// Calls `visit(key, start, last, end, states)` for every open session starting in
    /// `slot`: what a checkpoint writes of that slot.
    pub fn slot_sessions(
        &self,
        slot: i64,
        mut visit: impl FnMut(&Arc<str>, i64, i64, i64, &[AggState]),
    ) {
        let Some(keys) = self.slots.get(&slot) else {
            return;
        };
        let width = self.spec.window.pane_ms();
        for key in keys.keys() {
            if let Some(list) = self.sessions.get(key) {
                let lo = list.partition_point(|s| s.start < slot);
                for s in list[lo..].iter().take_while(|s| s.start < slot + width) {
                    visit(key, s.start, s.last, s.end, &s.states);
                }
            }
        }
    }

    /// Puts back a session a checkpoint stored; it counts as changed, so the view is
    /// filled from it.
    pub fn restore_session(&mut self, cell: SessionCell) {
        let (key, start, last, end, states) = cell;
        let key = match self.sessions.get_key_value(&*key) {
            Some((k, _)) => Arc::clone(k),
            None => key,
        };
        let list = self.sessions.entry(Arc::clone(&key)).or_default();
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
                states,
                dirty: true,
                unsaved: false,
            },
        );
        self.cells += 1;
        self.slot_add(&key, start, 1);
        self.close_queue.insert((end, start, Arc::clone(&key)));
        self.changed.push((start, key));
    }
}

/// Whether a window `[start, end)` is clear of every taint.
fn span_complete(taints: &[Taint], start: i64, end: i64) -> bool {
    !taints
        .iter()
        .any(|t| end > t.min_end_ms && start <= t.max_start_ms)
}
