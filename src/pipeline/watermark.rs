//! Event-time watermarks: per partition, combined over the partitions that are not idle.
//!
//! A partition's watermark is the newest event time it has shown minus
//! `max_out_of_orderness`. The combined watermark is the minimum over partitions that are
//! not idle, never goes backward, and holds when every partition is idle. Idleness is
//! measured in append time (the `weir.append` of batches), never in wall-clock time at
//! processing, so replaying the log recomputes the same watermarks: a partition is idle
//! when the newest append time read from any partition is more than `idle_timeout` past
//! its own last one. A partition never read counts from the append time of the first
//! batch the pipeline read. No IO, no clock.

/// No watermark yet: every window is open.
pub const NONE: i64 = i64::MIN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermarks {
    out_of_orderness_ms: i64,
    idle_ms: i64,
    partitions: Vec<PartitionMark>,
    /// Append time of the first batch read: the last append of partitions not yet read.
    first_append_ms: Option<i64>,
    /// Newest append time read from any partition.
    newest_append_ms: i64,
    combined: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionMark {
    /// Newest event time read.
    pub max_event_ms: Option<i64>,
    /// Append time of the last batch read.
    pub last_append_ms: Option<i64>,
}

impl Watermarks {
    pub fn new(partitions: usize, out_of_orderness_ms: i64, idle_ms: i64) -> Watermarks {
        Watermarks {
            out_of_orderness_ms,
            idle_ms,
            partitions: vec![PartitionMark::default(); partitions],
            first_append_ms: None,
            newest_append_ms: NONE,
            combined: NONE,
        }
    }

    /// A batch of `partition` appended at `append_ms` is about to be read.
    pub fn on_batch(&mut self, partition: usize, append_ms: i64) {
        self.first_append_ms.get_or_insert(append_ms);
        let mark = &mut self.partitions[partition];
        mark.last_append_ms = Some(mark.last_append_ms.map_or(append_ms, |t| t.max(append_ms)));
        self.newest_append_ms = self.newest_append_ms.max(append_ms);
    }

    /// An event of `partition` with event time `ts_ms` was read.
    pub fn on_event(&mut self, partition: usize, ts_ms: i64) {
        let mark = &mut self.partitions[partition];
        mark.max_event_ms = Some(mark.max_event_ms.map_or(ts_ms, |t| t.max(ts_ms)));
    }

    /// Recomputes the combined watermark from what was read so far and returns it.
    pub fn advance(&mut self) -> i64 {
        let mut candidate: Option<i64> = None;
        for mark in &self.partitions {
            let last = mark.last_append_ms.or(self.first_append_ms);
            let idle = last.is_none_or(|t| self.newest_append_ms.saturating_sub(t) > self.idle_ms);
            if idle {
                continue;
            }
            let own = mark
                .max_event_ms
                .map_or(NONE, |t| t.saturating_sub(self.out_of_orderness_ms));
            candidate = Some(candidate.map_or(own, |c| c.min(own)));
        }
        if let Some(c) = candidate {
            self.combined = self.combined.max(c);
        }
        self.combined
    }

    pub fn current(&self) -> i64 {
        self.combined
    }

    /// What a checkpoint keeps: (per partition marks, first append, newest append,
    /// combined watermark).
    pub fn parts(&self) -> (&[PartitionMark], Option<i64>, i64, i64) {
        (
            &self.partitions,
            self.first_append_ms,
            self.newest_append_ms,
            self.combined,
        )
    }

    /// Watermarks as a checkpoint kept them (see [`parts`](Self::parts)).
    pub fn from_parts(
        out_of_orderness_ms: i64,
        idle_ms: i64,
        partitions: Vec<PartitionMark>,
        first_append_ms: Option<i64>,
        newest_append_ms: i64,
        combined: i64,
    ) -> Watermarks {
        Watermarks {
            out_of_orderness_ms,
            idle_ms,
            partitions,
            first_append_ms,
            newest_append_ms,
            combined,
        }
    }

    pub fn partitions(&self) -> &[PartitionMark] {
        &self.partitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_active_partition_holds_the_watermark() {
        let mut w = Watermarks::new(2, 5, 30_000);
        w.on_batch(0, 1000);
        w.on_event(0, 100);
        assert_eq!(w.advance(), NONE, "partition 1 not read yet and not idle");
        w.on_batch(1, 1000);
        w.on_event(1, 50);
        assert_eq!(w.advance(), 45);
        w.on_event(1, 200);
        assert_eq!(w.advance(), 95);
        w.on_event(0, 10);
        assert_eq!(w.advance(), 95, "an older event does not move it back");
    }

    #[test]
    fn idle_partitions_are_skipped_by_append_time_and_all_idle_holds() {
        let mut w = Watermarks::new(2, 0, 100);
        w.on_batch(0, 1000);
        w.on_event(0, 500);
        assert_eq!(w.advance(), NONE);
        w.on_batch(0, 1101);
        w.on_event(0, 600);
        assert_eq!(w.advance(), 600, "partition 1 idle since the first batch");
        w.on_batch(1, 1102);
        w.on_event(1, 10);
        assert_eq!(w.advance(), 600, "never backward when it wakes up");
        w.on_event(1, 900);
        assert_eq!(w.advance(), 600);
        w.on_event(0, 1000);
        assert_eq!(w.advance(), 900);
    }
}
