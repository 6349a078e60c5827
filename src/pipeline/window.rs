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
        let pane = self.pane_ms();
        let last = self.pane_of(ts_ms);
        let first = last.saturating_sub(self.size_ms()).saturating_add(pane);
        (0..self.size_ms() / pane).map(move |i| first.saturating_add(i * pane))
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
