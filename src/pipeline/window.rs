//! Window assignment: which windows an event time falls in, and the panes state is kept in.
//!
//! Windows are `[start, end)` with `end = start + size`, aligned to the epoch as Flink's
//! TUMBLE and HOP are. State is kept per *pane*: the window itself when tumbling, one
//! slide when hopping, so an event updates one pane however many windows hold it, and a
//! window's values are the merge of its `size / slide` panes. No IO, no clock.
//!
//! Session windows are not aligned: the engine keeps them per key (`engine::session`);
//! here they only give their bounds (`size_ms` is `max_length`, the longest a session
//! spans) and the width of the slots their stored cells are grouped by (`pane_ms`).

/// A window kind with what its per-event questions need at hand: the windows per pane
/// (computed once) and the pane of the last time asked, kept so that the next times (mostly
/// in the same pane: events come nearly in time order) skip [`WindowKind::pane_of`]'s
/// division.
#[derive(Debug, Clone, Copy)]
pub struct LastPane {
    window: WindowKind,
    /// `window.windows_per_pane()`.
    per: i64,
    start: i64,
    /// One past its last millisecond; `start == end` when nothing is kept.
    end: i64,
}

impl LastPane {
    pub fn new(window: WindowKind) -> LastPane {
        LastPane {
            window,
            per: window.windows_per_pane(),
            start: 0,
            end: 0,
        }
    }

    /// `window.pane_of(ts_ms)`.
    #[inline]
    pub fn of(&mut self, ts_ms: i64) -> i64 {
        if self.start <= ts_ms && ts_ms < self.end {
            return self.start;
        }
        let start = self.window.pane_of(ts_ms);
        let width = self.window.pane_ms();
        // Kept only when exact: a multiple of the width at or before `ts_ms` and less
        // than a width before it is the floor itself (never a saturated bound).
        (self.start, self.end) = match start.checked_add(width) {
            Some(end) if start.rem_euclid(width) == 0 && start <= ts_ms && ts_ms < end => {
                (start, end)
            }
            _ => (0, 0),
        };
        start
    }

    /// `window.window_starts` of the times in the pane starting at `pane`.
    pub fn window_starts(&self, pane: i64) -> impl Iterator<Item = i64> {
        self.window.window_starts_of_pane(pane, self.per)
    }
}

/// How event times map to windows. Sizes are positive and a hopping size is a multiple of
/// its slide (the config checks both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling {
        size_ms: i64,
    },
    Hopping {
        size_ms: i64,
        slide_ms: i64,
    },
    /// Per key, events less than `gap_ms` apart share a session `[first event, last
    /// event + gap)`, at most `max_ms` long (`max_ms >= gap_ms > 0`).
    Session {
        gap_ms: i64,
        max_ms: i64,
    },
}

impl WindowKind {
    /// The length of a window; for sessions the longest one (`max_length`).
    pub fn size_ms(self) -> i64 {
        match self {
            WindowKind::Tumbling { size_ms } | WindowKind::Hopping { size_ms, .. } => size_ms,
            WindowKind::Session { max_ms, .. } => max_ms,
        }
    }

    /// The width of a pane: the stride between window starts. For sessions, the width of
    /// the slots of session starts their stored cells are grouped by (the gap).
    pub fn pane_ms(self) -> i64 {
        match self {
            WindowKind::Tumbling { size_ms } => size_ms,
            WindowKind::Hopping { slide_ms, .. } => slide_ms,
            WindowKind::Session { gap_ms, .. } => gap_ms,
        }
    }

    pub fn is_session(self) -> bool {
        matches!(self, WindowKind::Session { .. })
    }

    /// The start of the pane holding `ts_ms` (floor, also before the epoch).
    pub fn pane_of(self, ts_ms: i64) -> i64 {
        let pane = self.pane_ms();
        ts_ms.div_euclid(pane).saturating_mul(pane)
    }

    /// Starts of the windows holding `ts_ms`, oldest first: `size / pane` of them. Not
    /// for sessions.
    pub fn window_starts(self, ts_ms: i64) -> impl Iterator<Item = i64> {
        self.window_starts_of_pane(self.pane_of(ts_ms), self.windows_per_pane())
    }

    /// How many windows hold each pane: `size / pane`.
    pub fn windows_per_pane(self) -> i64 {
        self.size_ms() / self.pane_ms()
    }

    /// The width of the slots a pipeline's closed rows are stored by (see `store`):
    /// session rows by their start rounded down to the gap; `None` for aligned windows,
    /// whose rows go by their start itself.
    pub fn row_slot_ms(self) -> Option<i64> {
        self.is_session().then(|| self.pane_ms())
    }

    /// [`Self::window_starts`] of the times in the pane starting at `pane`, without a
    /// division: `per` is [`Self::windows_per_pane`].
    fn window_starts_of_pane(self, pane: i64, per: i64) -> impl Iterator<Item = i64> {
        let step = self.pane_ms();
        let first = pane.saturating_sub(self.size_ms()).saturating_add(step);
        (0..per).map(move |i| first.saturating_add(i * step))
    }

    /// Starts of the panes making up the window that starts at `start`.
    pub fn panes_of_window(self, start: i64) -> impl Iterator<Item = i64> {
        let pane = self.pane_ms();
        (0..self.size_ms() / pane).map(move |i| start.saturating_add(i * pane))
    }

    /// Start of the newest window holding the pane that starts at `pane`: panes outlive
    /// every window before it.
    pub fn last_window_of_pane(self, pane: i64) -> i64 {
        pane
    }

    /// Start of the oldest window holding the pane that starts at `pane`.
    pub fn first_window_of_pane(self, pane: i64) -> i64 {
        pane.saturating_sub(self.size_ms())
            .saturating_add(self.pane_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_pane_answers_as_pane_of_does() {
        let kinds = [
            WindowKind::Tumbling { size_ms: 60_000 },
            WindowKind::Hopping {
                size_ms: 60_000,
                slide_ms: 7_000,
            },
            WindowKind::Tumbling { size_ms: 3 },
            WindowKind::Tumbling { size_ms: i64::MAX },
        ];
        let times = [
            0,
            1,
            59_999,
            60_000,
            60_001,
            -1,
            -60_000,
            -60_001,
            1_795_773_600_000,
            1_795_773_600_001,
            1_795_773_599_999,
            i64::MIN,
            i64::MIN + 1,
            i64::MAX,
            i64::MAX - 1,
            7,
            6,
        ];
        for w in kinds {
            let mut last = LastPane::new(w);
            // Each time after each other, so every kept pane is asked about every time.
            for a in times {
                for b in times {
                    assert_eq!(last.of(a), w.pane_of(a), "{w:?} {a}");
                    assert_eq!(last.of(b), w.pane_of(b), "{w:?} {a} then {b}");
                }
            }
            for ts in (1_795_773_000_000..1_795_773_200_000).step_by(997) {
                assert_eq!(last.of(ts), w.pane_of(ts), "{w:?} {ts}");
            }
        }
    }

    #[test]
    fn tumbling_windows_are_aligned_to_the_epoch() {
        let w = WindowKind::Tumbling { size_ms: 60_000 };
        assert_eq!(w.window_starts(61_000).collect::<Vec<_>>(), [60_000]);
        assert_eq!(w.window_starts(60_000).collect::<Vec<_>>(), [60_000]);
        assert_eq!(w.window_starts(59_999).collect::<Vec<_>>(), [0]);
        assert_eq!(w.window_starts(-1).collect::<Vec<_>>(), [-60_000]);
        assert_eq!(w.panes_of_window(60_000).collect::<Vec<_>>(), [60_000]);
    }

    #[test]
    fn hopping_windows_hold_size_over_slide_panes() {
        let w = WindowKind::Hopping {
            size_ms: 30,
            slide_ms: 10,
        };
        assert_eq!(w.window_starts(25).collect::<Vec<_>>(), [0, 10, 20]);
        assert_eq!(w.window_starts(30).collect::<Vec<_>>(), [10, 20, 30]);
        assert_eq!(w.pane_of(25), 20);
        assert_eq!(w.panes_of_window(10).collect::<Vec<_>>(), [10, 20, 30]);
        assert_eq!(w.first_window_of_pane(20), 0);
        assert_eq!(w.last_window_of_pane(20), 20);
        for ts in -50..50 {
            for start in w.window_starts(ts) {
                assert!(start <= ts && ts < start + 30, "{ts} in [{start}, +30)");
            }
        }
    }
}
