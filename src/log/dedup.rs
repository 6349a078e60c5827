//! Idempotence by event_id: a topic's table of recently appended ids.
//!
//! Derived from the log (rebuilt at start from the `weir.id` record headers of the last
//! `dedup_window` of append time, before ingest is accepted), bounded by
//! `max_dedup_entries` (oldest evicted, counted). Only client-supplied ids enter it.
//! An id being appended by a request still in flight is held in the table itself, as a
//! pending entry marked with that request's ticket ([`pending_mark`]): a duplicate of it
//! in another request waits for that request's outcome, then is a duplicate if the
//! original landed or new if it failed; a repeat within the same request finds its own
//! mark and is a duplicate. So an id costs one table lookup at admission (which also
//! claims its slot) and one at the settle (the same slot, turned into an entry with its
//! append time, or emptied). Waiting is rare, so it costs the common path nothing:
//! waiters share one `Notify`, woken only when a request settles while some wait.
//!
//! Time. Entries expire by the table's own time ([`Dedup::now_ms`]), never by the wall
//! clock: table time advances with the monotonic clock, from the wall-clock reading when
//! the table was made, or at a rebuild from `min(wall now, newest append time in the
//! log)`. A wall clock set forward by a day therefore expires nothing (a retry of an
//! acknowledged event is still a duplicate), and one set back keeps nothing longer than
//! the window. Ids read back from the log carry their append times, which are on the
//! same scale as the rebuild's start: entries appended within the window before the
//! newest append are kept, whatever the wall clock said at the restart (ids appended
//! before a backward jump then stay until table time passes their append time).

mod table;

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::clock::SharedClock;
use crate::metrics as m;
use table::IdTable;

/// The ids are already xxh3-128 hashes: their low bits are a perfectly good hash.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = key(v);
    }
}

pub type IdSet = HashSet<u128, BuildHasherDefault<IdHasher>>;

/// The table keeps 64 of the id hash's 128 bits: half the memory, so more of a
/// million-entry table stays in cache. A new id is taken for a duplicate only if its
/// 64 bits equal those of one of the n ids held: about n / 2^64 per lookup.
type Key = u64;

/// Times below this mark pending entries (`pending_mark`); append times are clamped to
/// it (it is 146 million years before 1970).
const TIME_MIN: i64 = i64::MIN + (1 << 62);

/// The time a pending entry of ticket `n` holds: below every append time, and its own.
fn pending_mark(n: u64) -> i64 {
    debug_assert!(n < 1 << 62);
    i64::MIN.wrapping_add_unsigned(n)
}

/// How many ids ahead a loop over a request's ids prefetches their table slots: enough
/// misses in flight to overlap, few enough that the lines are still cached when used.
const PREFETCH_AHEAD: usize = 16;

/// The table key of an id: its 128 bits folded to 64, never 0 (an empty slot: a fold of
/// 0 takes an arbitrary constant, as likely as any key to meet another).
fn key(id: u128) -> Key {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "folding 128 bits into 64 is the point"
    )]
    let folded = (id as u64) ^ ((id >> 64) as u64);
    if folded == 0 {
        0x9e37_79b9_7f4a_7c15
    } else {
        folded
    }
}

pub struct Dedup {
    entries_gauge: metrics::Gauge,
    evictions: metrics::Counter,
    window_ms: i64,
    entries_max: usize,
    inner: Mutex<Inner>,
    /// Woken when a request settles its in-flight ids while `Inner::waiting > 0`.
    settled: Notify,
    /// Gives the monotonic reading table time follows.
    clock: SharedClock,
    /// Table time minus the monotonic reading; set when the table is made and at a rebuild.
    offset_ms: AtomicI64,
}

#[derive(Default)]
struct Inner {
    /// id -> append time (ms) of the record that carried it, or the pending mark of the
    /// request in flight appending it.
    seen: IdTable,
    /// Pending entries in `seen`: the ids of requests in flight.
    pending: usize,
    /// The next request's ticket number (its pending mark: `pending_mark`).
    next_ticket: u64,
    /// Insertion order for expiry and eviction; may hold stale pairs, checked on removal.
    order: VecDeque<(Key, i64)>,
    /// Admissions waiting for an in-flight id to settle.
    waiting: usize,
}

impl Inner {
    /// Ids held: the table's entries but the pending ones.
    fn held(&self) -> usize {
        self.seen.len() - self.pending
    }
}

/// What to do with each event of a request, and the ticket that settles its ids.
pub struct Admission {
    /// `true`: append it; `false`: duplicate.
    pub append: Vec<bool>,
    pub duplicates: usize,
    pub ticket: Ticket,
}

impl Dedup {
    /// A table whose time starts at `clock`'s wall-clock reading now.
    pub fn new(topic: Arc<str>, window_ms: i64, entries_max: usize, clock: SharedClock) -> Dedup {
        let entries_gauge = metrics::gauge!(m::DEDUP_ENTRIES, "topic" => topic.to_string());
        let evictions = metrics::counter!(m::DEDUP_EVICTIONS, "topic" => topic.to_string());
        Dedup {
            entries_gauge,
            evictions,
            window_ms,
            entries_max,
            inner: Mutex::new(Inner::default()),
            settled: Notify::new(),
            offset_ms: AtomicI64::new(clock.now_ms().saturating_sub(clock.monotonic_ms())),
            clock,
        }
    }

    /// Table time (ms on the scale of append times): what admissions and settles are
    /// given. Advances with the monotonic clock only (see the module doc).
    pub fn now_ms(&self) -> i64 {
        self.clock
            .monotonic_ms()
            .saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Sets `weir_dedup_entries` (at scrape time: the request path does not).
    pub fn update_gauge(&self) {
        let len = self.len();
        #[allow(clippy::cast_precision_loss, reason = "a gauge")]
        self.entries_gauge.set(len as f64);
    }

    pub fn enabled(&self) -> bool {
        self.window_ms > 0 && self.entries_max > 0
    }

    /// Ids held (in flight ones not counted).
    pub fn len(&self) -> usize {
        self.inner.lock().held()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills the table from ids read back from the log with their append times, and
    /// restarts table time at `now_ms` (the rebuild's `min(wall now, newest append)`).
    pub fn load(&self, mut ids: Vec<(i64, u128)>, now_ms: i64) {
        // Stable and adaptive: the rebuild hands them over nearly in order.
        ids.sort_by_key(|(t, _)| *t);
        self.offset_ms.store(
            now_ms.saturating_sub(self.clock.monotonic_ms()),
            Ordering::Relaxed,
        );
        let mut inner = self.inner.lock();
        let loading = ids.len().min(self.entries_max);
        inner.seen.reserve(loading);
        inner.order.reserve(loading);
        let mut evicted = 0;
        for (i, &(t, id)) in ids.iter().enumerate() {
            // A table of a million ids is far bigger than the cache: ask ahead.
            if let Some((_, ahead)) = ids.get(i + PREFETCH_AHEAD) {
                inner.seen.prefetch(key(*ahead));
            }
            evicted += self.insert(&mut inner, id, t, now_ms);
        }
        self.evictions.increment(evicted);
        self.entries_gauge.set(inner.held() as f64);
    }

    /// Classifies a request's events by their id hashes (None: generated id, always new).
    pub async fn admit(self: &Arc<Self>, ids: &[Option<u128>], now_ms: i64) -> Admission {
        if !self.enabled() || ids.iter().all(Option::is_none) {
            return Admission {
                append: vec![true; ids.len()],
                duplicates: 0,
                ticket: Ticket {
                    dedup: None,
                    ids: Vec::new(),
                    mark: 0,
                },
            };
        }
        let mut waited = None;
        loop {
            match self.classify(ids, now_ms, waited.take()) {
                Ok(admission) => return admission,
                Err((notified, guard)) => {
                    notified.await;
                    waited = Some(guard);
                }
            }
        }
    }

    /// One classification under the lock, or what to wait on when an id of the request is
    /// in flight in another. The `Notified` exists before the lock is released, so a
    /// settle in between is not missed.
    fn classify<'a>(
        self: &'a Arc<Self>,
        ids: &[Option<u128>],
        now_ms: i64,
        waited: Option<WaitGuard<'a>>,
    ) -> Result<Admission, (Notified<'a>, WaitGuard<'a>)> {
        let mut append = Vec::with_capacity(ids.len());
        let mut new_ids: Vec<u128> = Vec::with_capacity(ids.len());
        let mut duplicates = 0;
        let mut must_wait = false;
        let mut inner = self.inner.lock();
        if let Some(guard) = waited {
            WaitGuard::leave(guard, &mut inner);
        }
        self.expire(&mut inner, now_ms);
        let mark = pending_mark(inner.next_ticket);
        inner.next_ticket += 1;
        for (i, id) in ids.iter().enumerate() {
            if let Some(Some(ahead)) = ids.get(i + PREFETCH_AHEAD) {
                inner.seen.prefetch(key(*ahead));
            }
            let Some(full) = *id else {
                append.push(true);
                continue;
            };
            match inner.seen.get_or_insert(key(full), mark) {
                None => {
                    new_ids.push(full);
                    append.push(true);
                }
                // In flight in another request.
                Some(t) if t < TIME_MIN && t != mark => {
                    must_wait = true;
                    append.push(false);
                }
                // Held, or a repeat within this request.
                Some(_) => {
                    append.push(false);
                    duplicates += 1;
                }
            }
        }
        if must_wait {
            // Nothing of a request that waits stays claimed.
            for id in &new_ids {
                inner.seen.remove_if(key(*id), mark);
            }
            let notified = self.settled.notified();
            inner.waiting += 1;
            return Err((notified, WaitGuard { dedup: self }));
        }
        inner.pending += new_ids.len();
        Ok(Admission {
            append,
            duplicates,
            ticket: Ticket {
                dedup: Some(Arc::clone(self)),
                ids: new_ids,
                mark,
            },
        })
    }

    fn expire(&self, inner: &mut Inner, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.window_ms);
        while let Some(&(id, t)) = inner.order.front() {
            if t >= cutoff {
                break;
            }
            inner.order.pop_front();
            inner.seen.remove_if(id, t);
        }
    }

    /// Whether an id appended at `append_ms` is still within the window at `now_ms`.
    fn in_window(&self, append_ms: i64, now_ms: i64) -> bool {
        append_ms >= now_ms.saturating_sub(self.window_ms)
    }

    /// Holds `id` as appended at `append_ms` (replacing a pending entry of it), unless
    /// that is already outside the window. Returns how many entries `max_dedup_entries`
    /// evicted.
    fn insert(&self, inner: &mut Inner, id: u128, append_ms: i64, now_ms: i64) -> u64 {
        let id = key(id);
        if !self.in_window(append_ms, now_ms) {
            return 0;
        }
        let append_ms = append_ms.max(TIME_MIN);
        inner.seen.insert(id, append_ms);
        inner.order.push_back((id, append_ms));
        let mut evicted = 0u64;
        while inner.held() > self.entries_max {
            let Some((old, t)) = inner.order.pop_front() else {
                break;
            };
            // The ids evicted next: their slots are fetched while this one is removed.
            if let Some((ahead, _)) = inner.order.get(PREFETCH_AHEAD) {
                inner.seen.prefetch(*ahead);
            }
            if inner.seen.remove_if(old, t) {
                evicted += 1;
            }
        }
        // Stale pairs (ids re-inserted later) must not make `order` grow without bound.
        if inner.order.len() > 2 * self.entries_max.max(1024) {
            let seen = &inner.seen;
            inner.order.retain(|(id, t)| seen.get(*id) == Some(*t));
        }
        evicted
    }
}

/// Settles the in-flight ids of one request. Dropping it unsettled counts as failure,
/// so waiting duplicates go on and append.
pub struct Ticket {
    dedup: Option<Arc<Dedup>>,
    ids: Vec<u128>,
    /// Its ids' pending entries hold this (`pending_mark`).
    mark: i64,
}

impl Ticket {
    /// True when the request had no client ids to settle.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Records which of this request's ids are now in the log.
    pub fn settle(mut self, appended: &dyn Fn(u128) -> bool, append_ms: i64, now_ms: i64) {
        self.release(Some(Landed {
            appended,
            append_ms,
            now_ms,
        }));
    }

    fn release(&mut self, landed: Option<Landed<'_>>) {
        let Some(dedup) = self.dedup.take() else {
            return;
        };
        let mut inner = dedup.inner.lock();
        let mut evicted = 0;
        for (i, &id) in self.ids.iter().enumerate() {
            if let Some(ahead) = self.ids.get(i + PREFETCH_AHEAD) {
                inner.seen.prefetch(key(*ahead));
            }
            inner.pending -= 1;
            match &landed {
                Some(l) if (l.appended)(id) && dedup.in_window(l.append_ms, l.now_ms) => {
                    evicted += dedup.insert(&mut inner, id, l.append_ms, l.now_ms);
                }
                _ => {
                    inner.seen.remove_if(key(id), self.mark);
                }
            }
        }
        if evicted > 0 {
            dedup.evictions.increment(evicted);
        }
        if inner.waiting > 0 {
            dedup.settled.notify_waiters();
        }
    }
}

/// Counts one waiting admission in `Inner::waiting` until it runs again or is dropped
/// (a client that hung up while waiting).
struct WaitGuard<'a> {
    dedup: &'a Dedup,
}

impl WaitGuard<'_> {
    /// The admission runs again: uncount it under the lock it already holds.
    fn leave(guard: WaitGuard<'_>, inner: &mut Inner) {
        inner.waiting -= 1;
        std::mem::forget(guard);
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.dedup.inner.lock().waiting -= 1;
    }
}

/// Which ids of a request reached the log, and when.
struct Landed<'a> {
    appended: &'a dyn Fn(u128) -> bool,
    append_ms: i64,
    now_ms: i64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release(None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn dedup(window_ms: i64, max: usize) -> Arc<Dedup> {
        Arc::new(Dedup::new(
            "t".into(),
            window_ms,
            max,
            Arc::new(crate::clock::ManualClock::new(0)),
        ))
    }

    #[tokio::test]
    async fn repeated_ids_in_one_request_and_across_requests() {
        let d = dedup(1000, 100);
        let a = d.admit(&[Some(1), Some(1), None, Some(2)], 0).await;
        assert_eq!(a.append, [true, false, true, true]);
        assert_eq!(a.duplicates, 1);
        a.ticket.settle(&|_| true, 0, 0);
        let b = d.admit(&[Some(1), Some(3)], 10).await;
        assert_eq!(b.append, [false, true]);
        drop(b.ticket);
        // Failed (dropped) tickets leave nothing behind.
        let c = d.admit(&[Some(3)], 10).await;
        assert_eq!(c.append, [true]);
    }

    #[tokio::test]
    async fn wall_clock_jumps_neither_expire_nor_keep_ids() {
        let clock = Arc::new(crate::clock::ManualClock::new(1_000_000));
        let d = Arc::new(Dedup::new("t".into(), 10_000, 100, clock.clone()));
        assert_eq!(d.now_ms(), 1_000_000, "table time starts at the wall clock");
        let a = d.admit(&[Some(1)], d.now_ms()).await;
        a.ticket.settle(&|_| true, d.now_ms(), d.now_ms());
        clock.jump_wall(86_400_000);
        clock.advance(1000);
        let b = d.admit(&[Some(1), Some(2)], d.now_ms()).await;
        assert_eq!(b.append, [false, true], "a day forward expired nothing");
        b.ticket.settle(&|_| true, d.now_ms(), d.now_ms());
        clock.jump_wall(-2 * 86_400_000);
        clock.advance(9_500);
        let c = d.admit(&[Some(1), Some(2)], d.now_ms()).await;
        assert_eq!(
            c.append,
            [true, false],
            "10.5 s passed for id 1, 9.5 s for id 2"
        );
        drop(c.ticket);
    }

    #[tokio::test]
    async fn a_rebuild_restarts_table_time_at_the_given_time() {
        let clock = Arc::new(crate::clock::ManualClock::new(90_000_000));
        let d = Arc::new(Dedup::new("t".into(), 10_000, 100, clock.clone()));
        // The log's newest append is at 1_000_000, the wall clock a day past it.
        d.load(vec![(992_000, 1), (999_000, 2)], 1_000_000);
        assert_eq!(d.now_ms(), 1_000_000);
        clock.advance(2_500);
        let a = d.admit(&[Some(1), Some(2)], d.now_ms()).await;
        assert_eq!(a.append, [true, false], "id 1 is 10.5 s old, id 2 3.5 s");
        drop(a.ticket);
    }

    #[tokio::test]
    async fn window_expiry_and_max_entries_eviction() {
        let d = dedup(100, 2);
        d.load(vec![(0, 1), (50, 2), (60, 3)], 60);
        assert_eq!(d.len(), 2, "oldest evicted");
        let a = d.admit(&[Some(1), Some(2), Some(3)], 60).await;
        assert_eq!(a.append, [true, false, false]);
        drop(a.ticket);
        let b = d.admit(&[Some(2), Some(3)], 155).await;
        assert_eq!(
            b.append,
            [true, false],
            "id 2 (t=50) left the window at 150"
        );
    }

    #[tokio::test]
    async fn duplicate_of_an_in_flight_request_waits_for_its_outcome() {
        let d = dedup(1000, 100);
        let first = d.admit(&[Some(7)], 0).await;
        let d2 = Arc::clone(&d);
        let waiter = tokio::spawn(async move { d2.admit(&[Some(7)], 0).await.append });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        first.ticket.settle(&|_| true, 0, 0);
        assert_eq!(waiter.await.unwrap(), [false]);

        let second = d.admit(&[Some(8)], 0).await;
        let d3 = Arc::clone(&d);
        let waiter = tokio::spawn(async move { d3.admit(&[Some(8)], 0).await.append });
        tokio::task::yield_now().await;
        second.ticket.settle(&|_| false, 0, 0);
        assert_eq!(
            waiter.await.unwrap(),
            [true],
            "the original failed: append as new"
        );
    }

    /// A request that must wait for another's id holds none of its own new ids while it
    /// waits: a third request takes them at once.
    #[tokio::test]
    async fn a_request_that_waits_holds_none_of_its_ids() {
        let d = dedup(1000, 100);
        let first = d.admit(&[Some(7)], 0).await;
        let d2 = Arc::clone(&d);
        let waiter = tokio::spawn(async move { d2.admit(&[Some(8), Some(7)], 0).await.append });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let third = tokio::time::timeout(Duration::from_secs(5), d.admit(&[Some(8)], 0))
            .await
            .expect("id 8 is not held by the waiting request");
        assert_eq!(third.append, [true]);
        third.ticket.settle(&|_| true, 0, 0);
        first.ticket.settle(&|_| true, 0, 0);
        assert_eq!(waiter.await.unwrap(), [false, false]);
        assert_eq!(d.inner.lock().pending, 0);
        assert_eq!(d.len(), 2);
    }

    /// Ids in flight are held in the table but are not entries: they neither count in
    /// `len` nor push held ids out under `max_dedup_entries`, and an id that does not
    /// stay (failed, or landed outside the window) leaves nothing behind.
    #[tokio::test]
    async fn ids_in_flight_evict_nothing_until_they_land() {
        let d = dedup(1000, 2);
        let a = d.admit(&[Some(1), Some(2)], 0).await;
        a.ticket.settle(&|_| true, 0, 0);
        let b = d.admit(&[Some(3), Some(4), Some(5)], 10).await;
        assert_eq!(b.append, [true; 3]);
        assert_eq!(d.len(), 2);
        let c = d.admit(&[Some(1), Some(2)], 10).await;
        assert_eq!(c.append, [false, false], "held while 3, 4, 5 are in flight");
        b.ticket.settle(&|id| id != 4, 10, 10);
        assert_eq!(d.len(), 2, "3 and 5 landed and evicted 1 and 2");
        let e = d.admit(&[Some(1), Some(3), Some(4), Some(5)], 20).await;
        assert_eq!(e.append, [true, false, true, false]);
        drop(e.ticket);
        let f = d.admit(&[Some(9)], 5000).await;
        f.ticket.settle(&|_| true, 3000, 5000);
        let inner = d.inner.lock();
        assert_eq!(inner.pending, 0);
        assert_eq!(
            inner.seen.len(),
            0,
            "everything expired; no pending entry left"
        );
    }

    #[tokio::test]
    async fn repeats_are_found_in_requests_of_any_size() {
        let d = dedup(1000, 1000);
        let ids: Vec<Option<u128>> = (0..40).map(|i| Some(i % 30)).collect();
        let a = d.admit(&ids, 0).await;
        assert_eq!(a.duplicates, 10);
        assert!(a.append[..30].iter().all(|x| *x));
        assert!(a.append[30..].iter().all(|x| !*x));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_is_no_longer_counted() {
        let d = dedup(1000, 100);
        let first = d.admit(&[Some(7)], 0).await;
        let d2 = Arc::clone(&d);
        let waiter = tokio::spawn(async move { d2.admit(&[Some(7)], 0).await.append });
        tokio::task::yield_now().await;
        assert_eq!(d.inner.lock().waiting, 1);
        waiter.abort();
        assert!(waiter.await.is_err());
        assert_eq!(
            d.inner.lock().waiting,
            0,
            "the dropped waiter uncounted itself"
        );
        first.ticket.settle(&|_| true, 0, 0);
        assert_eq!(d.inner.lock().pending, 0);
    }
}
