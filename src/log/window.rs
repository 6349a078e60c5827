//! Positioned reads through one buffer: a walk over many small batches (single-event
//! requests leave batches of a few hundred bytes) costs one `pread` per window instead of
//! two per batch (header, then the rest). Used by the recovery scan, the dedup table's
//! rebuild at start, index rebuilds and the readers of `Partition`.
//!
//! It only changes how bytes are fetched, never which: every read answers exactly what a
//! direct read of the same range would, and a window that cannot be read (an error, a file
//! shorter than the caller said) falls back to the direct read, whose result stands.

use std::cell::RefCell;
use std::io;

use super::partition::ReadAt;

/// The first window; each refill doubles it up to [`WINDOW_BYTES_MAX`], so a read of one
/// batch copies little and a long walk soon reads in big pieces.
const WINDOW_BYTES_MIN: usize = 16 << 10;
/// The largest window: the memory a walk holds, and enough to make the syscall's cost
/// small beside the copy.
pub const WINDOW_BYTES_MAX: usize = 256 << 10;

/// Which way a walk goes: a refill puts the asked range at the window's start (forward)
/// or at its end (backward, for batches read newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// A [`ReadAt`] over `inner` (a file, or a reference to one) that reads ahead (or behind)
/// in windows, never past `limit` (the end of the bytes the caller knows are there).
pub struct Windowed<R: ReadAt> {
    inner: R,
    limit: u64,
    direction: Direction,
    window: RefCell<Window>,
}

struct Window {
    /// File position of `bytes[0]`.
    at: u64,
    bytes: Vec<u8>,
    /// Size of the next refill.
    next_bytes: usize,
}

impl<R: ReadAt> Windowed<R> {
    pub fn new(inner: R, limit: u64, direction: Direction) -> Windowed<R> {
        Windowed {
            inner,
            limit,
            direction,
            window: RefCell::new(Window {
                at: 0,
                bytes: Vec::new(),
                next_bytes: WINDOW_BYTES_MIN,
            }),
        }
    }
}

impl<R: ReadAt> Windowed<R> {
    /// The reader underneath, for reads that must not go through the window.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Reads `[pos, end)` into the window now if it fits in one and is not there yet, so
    /// that the reads of it that follow, in any order, are copies. Best effort: if it
    /// cannot be read, those reads go to the file themselves and get its answer.
    pub fn hold(&self, pos: u64, end: u64) {
        let mut window = self.window.borrow_mut();
        if window.holds(pos, end) || end > self.limit {
            return;
        }
        let want = usize::try_from(end.saturating_sub(pos)).unwrap_or(usize::MAX);
        let size = window.next_bytes.max(want);
        if size <= WINDOW_BYTES_MAX {
            let (from, to) = self.around(pos, end, size);
            let _ = self.refill(&mut window, from, to);
        }
    }

    /// The window of `size` bytes a refill for `[pos, end)` reads: starting at `pos`
    /// (forward) or ending at `end` (backward), within `[0, limit)`.
    fn around(&self, pos: u64, end: u64, size: usize) -> (u64, u64) {
        match self.direction {
            Direction::Forward => (pos, pos.saturating_add(size as u64).min(self.limit)),
            Direction::Backward => (end.saturating_sub(size as u64), end),
        }
    }

    fn refill(&self, window: &mut Window, from: u64, to: u64) -> io::Result<()> {
        let len = usize::try_from(to - from).unwrap_or(0);
        window.bytes.resize(len, 0);
        if let Err(e) = self.inner.read_exact_from(&mut window.bytes, from) {
            window.bytes.clear();
            return Err(e);
        }
        window.at = from;
        window.next_bytes = (window.next_bytes * 2).min(WINDOW_BYTES_MAX);
        Ok(())
    }
}

impl Window {
    fn holds(&self, pos: u64, end: u64) -> bool {
        pos >= self.at && end <= self.at + self.bytes.len() as u64
    }

    /// Copies into `buf` the part of the range at `pos` the window holds, if the range
    /// starts inside it; returns how many bytes that was.
    fn copy_held(&self, buf: &mut [u8], pos: u64) -> usize {
        let w_end = self.at + self.bytes.len() as u64;
        if pos < self.at || pos >= w_end {
            return 0;
        }
        let from = usize::try_from(pos - self.at).unwrap_or(usize::MAX);
        let n = buf.len().min(self.bytes.len() - from);
        buf[..n].copy_from_slice(&self.bytes[from..from + n]);
        n
    }
}

impl<R: ReadAt> Windowed<R> {
    /// Reads what a direct read would, copying the part the window holds and reading the
    /// rest from the file itself, never into the window: for the last read of a walk,
    /// whose bytes past the window nobody reads twice.
    pub fn read_exact_through(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let held = self.window.borrow().copy_held(buf, pos);
        if held == buf.len() {
            return Ok(());
        }
        self.inner
            .read_exact_from(&mut buf[held..], pos + held as u64)
    }
}

impl<R: ReadAt> ReadAt for Windowed<R> {
    fn read_exact_from(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let mut window = self.window.borrow_mut();
        let end = pos.saturating_add(buf.len() as u64);
        // The part the window holds already, if the range starts inside it.
        let held = window.copy_held(buf, pos);
        if held == buf.len() {
            return Ok(());
        }
        let rest = &mut buf[held..];
        let rest_pos = pos + held as u64;
        // A range as big as a window, or past what the caller vouched for, is read as is.
        if rest.len() >= window.next_bytes || end > self.limit {
            return self.inner.read_exact_from(rest, rest_pos);
        }
        let (from, to) = self.around(rest_pos, end, window.next_bytes);
        if self.refill(&mut window, from, to).is_err() {
            return self.inner.read_exact_from(rest, rest_pos);
        }
        let at = usize::try_from(rest_pos - from).unwrap_or(0);
        rest.copy_from_slice(&window.bytes[at..at + rest.len()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Bytes in memory that count the reads asked of them.
    struct Counted {
        bytes: Vec<u8>,
        reads: Cell<usize>,
        /// Reads touching this position fail, as a bad sector would.
        bad_at: Option<u64>,
    }

    impl ReadAt for Counted {
        fn read_exact_from(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
            self.reads.set(self.reads.get() + 1);
            if let Some(bad) = self.bad_at
                && bad >= pos
                && bad < pos + buf.len() as u64
            {
                return Err(io::ErrorKind::Other.into());
            }
            self.bytes.read_exact_from(buf, pos)
        }
    }

    fn data(len: usize) -> Counted {
        Counted {
            bytes: (0..len)
                .map(|i| u8::try_from(i * 7 % 251).unwrap())
                .collect(),
            reads: Cell::new(0),
            bad_at: None,
        }
    }

    fn read(r: &(impl ReadAt + ?Sized), pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        r.read_exact_from(&mut buf, pos).map(|()| buf)
    }

    #[test]
    fn answers_what_a_direct_read_would_in_both_directions() {
        let file = data(1 << 20);
        for direction in [Direction::Forward, Direction::Backward] {
            let w = Windowed::new(&file, file.bytes.len() as u64, direction);
            // Small and large ranges, in order, backward and straddling windows.
            let mut ranges: Vec<(u64, usize)> = (0..2000).map(|i| (i * 61, 61)).collect();
            ranges.extend([
                (100_000, 300_000),
                (5, 1),
                (1_048_000, 576),
                (70_000, 40_000),
            ]);
            ranges.extend((0..500).rev().map(|i| (i * 999, 999)));
            for (pos, len) in ranges {
                assert_eq!(
                    read(&w, pos, len).unwrap(),
                    read(&file.bytes[..], pos, len).unwrap(),
                    "{direction:?} {pos}+{len}"
                );
            }
        }
    }

    #[test]
    fn a_walk_over_small_batches_reads_in_few_pieces() {
        let file = data(4 << 20);
        let w = Windowed::new(&file, file.bytes.len() as u64, Direction::Forward);
        let mut pos = 0;
        while pos + 300 <= file.bytes.len() as u64 {
            read(&w, pos, 61).unwrap();
            read(&w, pos + 61, 239).unwrap();
            pos += 300;
        }
        // 27,962 batches; windows of 16, 32, 64, 128 KiB, then 256 KiB.
        assert!(file.reads.get() < 30, "{} reads", file.reads.get());

        let w = Windowed::new(&file, file.bytes.len() as u64, Direction::Backward);
        file.reads.set(0);
        let mut end = file.bytes.len() as u64;
        while end >= 300 {
            read(&w, end - 300, 300).unwrap();
            end -= 300;
        }
        assert!(file.reads.get() < 30, "{} reads", file.reads.get());
    }

    /// A span held ahead, then walked forward in small reads through a backward window
    /// (the dedup rebuild's walk of an index span), costs the one read of the hold.
    #[test]
    fn a_held_span_is_read_once_whatever_the_order_of_its_reads() {
        let file = data(1 << 20);
        let w = Windowed::new(&file, file.bytes.len() as u64, Direction::Backward);
        let mut end = file.bytes.len() as u64;
        let mut spans = 0;
        while end >= 4096 {
            let from = end - 4096;
            w.hold(from, end);
            let starts: Vec<u64> = (from..end).step_by(512).collect();
            for &pos in &starts {
                assert_eq!(
                    read(&w, pos, 61).unwrap(),
                    read(&file.bytes[..], pos, 61).unwrap()
                );
            }
            for &pos in starts.iter().rev() {
                assert_eq!(
                    read(&w, pos, 512).unwrap(),
                    read(&file.bytes[..], pos, 512).unwrap()
                );
            }
            end = from;
            spans += 1;
        }
        assert_eq!(spans, 256);
        // Windows of 16, 32, 64, 128 KiB, then 256 KiB ones.
        assert!(file.reads.get() <= 10, "{} reads", file.reads.get());
        // A span larger than any window is not held: its reads go to the file.
        file.reads.set(0);
        w.hold(0, 600 << 10);
        assert_eq!(file.reads.get(), 0);
    }

    #[test]
    fn never_reads_past_the_limit_and_falls_back_on_a_bad_window() {
        // The limit is below the bytes there: the window stops at it.
        let file = data(100_000);
        let w = Windowed::new(&file, 50_000, Direction::Forward);
        assert_eq!(read(&w, 49_000, 100).unwrap(), file.bytes[49_000..49_100]);
        let window = w.window.borrow();
        assert_eq!(window.at + window.bytes.len() as u64, 50_000);
        drop(window);
        // A range past the limit is read directly: the file decides.
        assert_eq!(read(&w, 49_990, 100).unwrap(), file.bytes[49_990..50_090]);
        assert!(read(&w, 99_990, 100).is_err());

        // A bad byte later in the window does not fail a read before it...
        let mut file = data(100_000);
        file.bad_at = Some(20_000);
        let w = Windowed::new(&file, 100_000, Direction::Forward);
        assert_eq!(read(&w, 10_000, 100).unwrap(), file.bytes[10_000..10_100]);
        // ...and a read of it fails as a direct one does.
        assert!(read(&w, 19_990, 100).is_err());
    }

    /// The last read of a walk (`read_batches`' main read): what the window holds is
    /// copied, the rest read straight from the file, in one read and without a refill.
    #[test]
    fn a_read_through_copies_what_is_held_and_reads_the_rest_once() {
        let file = data(1 << 20);
        let w = Windowed::new(&file, file.bytes.len() as u64, Direction::Forward);
        assert_eq!(read(&w, 1000, 61).unwrap(), file.bytes[1000..1061]);
        assert_eq!(file.reads.get(), 1);
        let held = w.window.borrow().bytes.len();
        // Inside the window: a copy.
        let mut buf = vec![0u8; 5000];
        w.read_exact_through(&mut buf, 2000).unwrap();
        assert_eq!(buf, file.bytes[2000..7000]);
        assert_eq!(file.reads.get(), 1);
        // Straddling its end, and far past it: one read each, and the window unchanged.
        for (pos, len) in [(1000 + held as u64 - 100, 300_000), (900_000, 3000)] {
            let mut buf = vec![0u8; len];
            let before = file.reads.get();
            w.read_exact_through(&mut buf, pos).unwrap();
            let pos = usize::try_from(pos).unwrap();
            assert_eq!(buf, file.bytes[pos..pos + len]);
            assert_eq!(file.reads.get(), before + 1);
            assert_eq!(w.window.borrow().bytes.len(), held);
        }
        // Past the file: the file's error, as a direct read.
        let mut buf = vec![0u8; 100];
        assert!(w.read_exact_through(&mut buf, (1 << 20) - 50).is_err());
    }
}
