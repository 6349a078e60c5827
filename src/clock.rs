//! Injected time. Nothing in weir reads the wall clock directly: ingest, append times and
//! time bounds ask a [`Clock`], so tests can move time and replays stay deterministic.
//!
//! A clock gives two readings: wall-clock time (epoch ms; may jump either way when an
//! operator or NTP sets it) and a monotonic reading (ms from an arbitrary origin; never
//! jumps, only meaningful as a difference within one process). Retention uses the second
//! to guard against forward jumps of the first (see `log::retention`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock and monotonic time in milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, epoch milliseconds.
    fn now_ms(&self) -> i64;
    /// Milliseconds since an arbitrary origin fixed for the life of the clock; never
    /// goes backward and does not follow wall-clock jumps.
    fn monotonic_ms(&self) -> i64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// The origin of [`SystemClock::monotonic_ms`]: the first reading in this process.
static MONOTONIC_ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }

    fn monotonic_ms(&self) -> i64 {
        i64::try_from(MONOTONIC_ORIGIN.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to, for tests: [`ManualClock::advance`] moves both
/// readings, [`ManualClock::jump_wall`] only the wall clock (an operator setting the time).
#[derive(Debug, Default)]
pub struct ManualClock {
    wall_ms: AtomicI64,
    monotonic_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(wall_ms: i64) -> ManualClock {
        ManualClock {
            wall_ms: AtomicI64::new(wall_ms),
            monotonic_ms: AtomicI64::new(0),
        }
    }

    /// Time passes: both readings move by `ms`.
    pub fn advance(&self, ms: i64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        self.monotonic_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// The wall clock is set: only it moves (either way).
    pub fn jump_wall(&self, ms: i64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.wall_ms.load(Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> i64 {
        self.monotonic_ms.load(Ordering::SeqCst)
    }
}

/// The clock handle passed around the process.
pub type SharedClock = Arc<dyn Clock>;

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}
