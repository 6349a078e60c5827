//! Injected time. Nothing in weir reads the wall clock directly: ingest, append times and
//! time bounds ask a [`Clock`], so tests can move time and replays stay deterministic.
//!
//! A clock gives two readings: wall-clock time (epoch ms; may jump either way when an
//! operator or NTP sets it) and a monotonic reading (ms since boot, counting suspend;
//! never jumps, only meaningful as a difference within one boot, which
//! [`Clock::boot_id`] names). Retention and dedup use the second to guard against forward
//! jumps of the first (see `log::retention`), also across restarts within one boot
//! ([`trusted_start_ms`] with the data dir's [`Anchor`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::limits::CLOCK_JUMP_TOLERANCE_MS;

/// A source of wall-clock and monotonic time in milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, epoch milliseconds.
    fn now_ms(&self) -> i64;
    /// Milliseconds since an origin fixed for the boot (the system's: since boot,
    /// suspend included); never goes backward and does not follow wall-clock jumps.
    fn monotonic_ms(&self) -> i64;
    /// Names the boot the monotonic readings belong to; `None` when unknown (then
    /// readings are not compared across processes).
    fn boot_id(&self) -> Option<String> {
        None
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// The fallback origin of [`SystemClock::monotonic_ms`] where `CLOCK_BOOTTIME` cannot
/// be read: the first reading in this process.
static MONOTONIC_ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The kernel's random id of this boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }

    fn monotonic_ms(&self) -> i64 {
        #[cfg(target_os = "linux")]
        {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec we own; CLOCK_BOOTTIME is a valid
            // clock id on Linux (since 2.6.39).
            if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) } == 0 {
                return ts.tv_sec.saturating_mul(1000) + ts.tv_nsec / 1_000_000;
            }
        }
        i64::try_from(MONOTONIC_ORIGIN.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    fn boot_id(&self) -> Option<String> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let id = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_string())
    }
}

/// A clock that moves only when told to, for tests: [`ManualClock::advance`] moves both
/// readings, [`ManualClock::jump_wall`] only the wall clock (an operator setting the time).
#[derive(Debug, Default)]
pub struct ManualClock {
    wall_ms: AtomicI64,
    monotonic_ms: AtomicI64,
    /// [`ManualClock::reboot`] counts; `None` before the first (no boot id).
    boots: parking_lot::Mutex<Option<u64>>,
}

impl ManualClock {
    pub fn new(wall_ms: i64) -> ManualClock {
        ManualClock {
            wall_ms: AtomicI64::new(wall_ms),
            monotonic_ms: AtomicI64::new(0),
            boots: parking_lot::Mutex::new(None),
        }
    }

    /// The clock gets a boot id, a new one each call, and its monotonic reading restarts
    /// at 0.
    pub fn reboot(&self) {
        let mut boots = self.boots.lock();
        *boots = Some(boots.map_or(0, |b| b + 1));
        self.monotonic_ms.store(0, Ordering::SeqCst);
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

    fn boot_id(&self) -> Option<String> {
        self.boots.lock().map(|b| format!("manual-{b}"))
    }
}

/// The clock handle passed around the process.
pub type SharedClock = Arc<dyn Clock>;

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A wall-clock reading weir trusted and the monotonic reading taken with it, in one
/// boot. Kept in the data dir (`clock`), so a weir restarted in the same boot does not
/// take a forward jump of the wall clock made before the restart for time passing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub boot_id: String,
    pub wall_ms: i64,
    pub monotonic_ms: i64,
}

impl Anchor {
    /// The file's text: `boot_id wall_ms monotonic_ms`.
    pub fn to_text(&self) -> String {
        format!("{} {} {}\n", self.boot_id, self.wall_ms, self.monotonic_ms)
    }

    /// The file's text read back; `None` if it is not that.
    pub fn parse(text: &str) -> Option<Anchor> {
        let mut parts = text.split_whitespace();
        let anchor = Anchor {
            boot_id: parts.next()?.to_string(),
            wall_ms: parts.next()?.parse().ok()?,
            monotonic_ms: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(anchor)
    }
}

/// The wall-clock time at start as weir trusts it, and the anchor to keep for the next
/// start: the wall clock, but if `anchor` is of this boot, no later than its reading
/// plus the monotonic time since (+ [`CLOCK_JUMP_TOLERANCE_MS`]). A backward jump is
/// followed (it only makes data look younger); a forward one made while weir was
/// stopped is not, within one boot. Across a reboot the wall clock is all there is.
pub fn trusted_start_ms(clock: &dyn Clock, anchor: Option<&Anchor>) -> (i64, Option<Anchor>) {
    let wall_ms = clock.now_ms();
    let monotonic_ms = clock.monotonic_ms();
    let Some(boot_id) = clock.boot_id() else {
        return (wall_ms, None);
    };
    let trusted = match anchor {
        Some(a) if a.boot_id == boot_id && monotonic_ms >= a.monotonic_ms => wall_ms.min(
            a.wall_ms
                .saturating_add(monotonic_ms - a.monotonic_ms)
                .saturating_add(CLOCK_JUMP_TOLERANCE_MS),
        ),
        _ => wall_ms,
    };
    let next = Anchor {
        boot_id,
        wall_ms: trusted,
        monotonic_ms,
    };
    (trusted, Some(next))
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

    fn boot_id(&self) -> Option<String> {
        SystemClock.boot_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_jump_before_a_restart_is_not_trusted_within_one_boot() {
        let clock = ManualClock::new(1_000_000);
        // No boot id: the wall clock, nothing to keep.
        assert_eq!(trusted_start_ms(&clock, None), (1_000_000, None));
        clock.reboot();
        clock.advance(5_000);
        let (t, anchor) = trusted_start_ms(&clock, None);
        assert_eq!(t, 1_005_000);
        let anchor = anchor.unwrap();
        assert_eq!(Anchor::parse(&anchor.to_text()), Some(anchor.clone()));
        // Stopped; the clock jumps a day ahead; 3 s pass; started again.
        clock.jump_wall(86_400_000);
        clock.advance(3_000);
        let (t, next) = trusted_start_ms(&clock, Some(&anchor));
        assert_eq!(t, 1_008_000 + CLOCK_JUMP_TOLERANCE_MS);
        // The next anchor carries the trusted time, so the guard holds at every restart.
        clock.advance(2_000);
        let (t, _) = trusted_start_ms(&clock, next.as_ref());
        assert_eq!(t, 1_010_000 + 2 * CLOCK_JUMP_TOLERANCE_MS);
        // A backward jump is followed.
        clock.jump_wall(-2 * 86_400_000);
        let (t, _) = trusted_start_ms(&clock, Some(&anchor));
        assert_eq!(t, clock.now_ms());
        // Another boot: the anchor says nothing.
        clock.jump_wall(3 * 86_400_000);
        clock.reboot();
        let (t, _) = trusted_start_ms(&clock, Some(&anchor));
        assert_eq!(t, clock.now_ms());
        assert_eq!(Anchor::parse("x 1"), None);
        assert_eq!(Anchor::parse("x 1 2 3"), None);
    }
}
