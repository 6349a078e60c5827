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

/// The clock `weir run` uses: the system's, or with the `fail` feature (tests only, never
/// in a release build) and `WEIR_TEST_CLOCK_FILE` set, an [`OffsetFileClock`] on that file.
pub fn for_run() -> Result<SharedClock, String> {
    #[cfg(feature = "fail")]
    if let Some(path) = std::env::var_os("WEIR_TEST_CLOCK_FILE") {
        return OffsetFileClock::start(path.into()).map(|c| c as SharedClock);
    }
    Ok(system())
}

/// A wall clock set by a test while weir runs (`fail` feature only): the system's wall
/// clock plus an offset in milliseconds read from a file (an integer, e.g. `-3600000`;
/// missing or empty = 0). A thread reads the file every [`OFFSET_FILE_POLL`] and logs
/// `wall clock offset set` with the new `offset_ms` when it changes, so a test knows
/// weir saw the jump. The monotonic reading stays the system's: setting the wall clock
/// does not move monotonic time.
#[cfg(feature = "fail")]
pub struct OffsetFileClock {
    offset_ms: AtomicI64,
}

/// How often [`OffsetFileClock`] reads its file.
#[cfg(feature = "fail")]
pub const OFFSET_FILE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

#[cfg(feature = "fail")]
impl OffsetFileClock {
    /// Reads the file once (an unreadable or unparsable file is an error naming it), then
    /// starts the thread that follows it.
    pub fn start(path: std::path::PathBuf) -> Result<Arc<OffsetFileClock>, String> {
        let first = read_offset_file(&path)?;
        let clock = Arc::new(OffsetFileClock {
            offset_ms: AtomicI64::new(first),
        });
        tracing::warn!(path = %path.display(), offset_ms = first, "wall clock offset set");
        let weak = Arc::downgrade(&clock);
        std::thread::Builder::new()
            .name("weir-test-clock".into())
            .spawn(move || {
                while let Some(clock) = weak.upgrade() {
                    match read_offset_file(&path) {
                        Ok(ms) => {
                            if clock.offset_ms.swap(ms, Ordering::SeqCst) != ms {
                                tracing::warn!(offset_ms = ms, "wall clock offset set");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "wall clock offset kept"),
                    }
                    drop(clock);
                    std::thread::sleep(OFFSET_FILE_POLL);
                }
            })
            .map_err(|e| format!("cannot start the test clock thread: {e}"))?;
        Ok(clock)
    }
}

#[cfg(feature = "fail")]
fn read_offset_file(path: &std::path::Path) -> Result<i64, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(0),
        Ok(text) => text.trim().parse().map_err(|e| {
            format!(
                "WEIR_TEST_CLOCK_FILE {}: {:?} is not an offset in ms: {e}",
                path.display(),
                text.trim()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("WEIR_TEST_CLOCK_FILE {}: {e}", path.display())),
    }
}

#[cfg(feature = "fail")]
impl Clock for OffsetFileClock {
    fn now_ms(&self) -> i64 {
        SystemClock
            .now_ms()
            .saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }

    fn monotonic_ms(&self) -> i64 {
        SystemClock.monotonic_ms()
    }
}
