//! The free-space reserve: ingest is refused with 507 before the disk holding the data
//! dir fills, and resumes by itself once space is freed.
//!
//! `statvfs(2)` is read every [`REFRESH`]; between reads every append is charged against
//! a budget of `free - reserve`, so a fast producer cannot write through the reserve in
//! the gap. Other writers (fsync'd indexes, later the result store) are caught by the
//! next refresh; the reserve is their margin.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics as m;

/// How often free space is read from the file system.
pub const REFRESH: Duration = Duration::from_secs(1);

pub struct DiskSpace {
    dir: PathBuf,
    reserve: u64,
    /// Bytes that may still be appended before the reserve is reached.
    budget: AtomicI64,
    free: AtomicU64,
    low: AtomicBool,
    free_gauge: metrics::Gauge,
}

/// Ingest refused: appending `incoming` bytes would enter the reserve.
#[derive(Debug, thiserror::Error)]
#[error(
    "the disk holding the data dir has {free} bytes free and free_space_reserve keeps \
     {reserve} back; ingest resumes once space is freed"
)]
pub struct DiskLow {
    pub free: u64,
    pub reserve: u64,
}

impl DiskSpace {
    /// Reads free space once, so the first request is already checked.
    pub fn new(dir: &Path, reserve: u64) -> io::Result<DiskSpace> {
        let space = DiskSpace {
            dir: dir.to_path_buf(),
            reserve,
            budget: AtomicI64::new(0),
            free: AtomicU64::new(0),
            low: AtomicBool::new(false),
            free_gauge: metrics::gauge!(m::DISK_FREE_BYTES),
        };
        space.refresh()?;
        Ok(space)
    }

    /// Re-reads free space (blocking: call it off the async workers) and resets the budget.
    pub fn refresh(&self) -> io::Result<()> {
        let free = free_bytes(&self.dir)?;
        self.set_free(free);
        Ok(())
    }

    fn set_free(&self, free: u64) {
        self.free.store(free, Ordering::Relaxed);
        self.free_gauge.set(free as f64);
        let budget = i64::try_from(free)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(self.reserve).unwrap_or(i64::MAX));
        self.budget.store(budget, Ordering::Relaxed);
        let low = budget <= 0;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!(
                    free,
                    reserve = self.reserve,
                    dir = %self.dir.display(),
                    "free disk space is below free_space_reserve: refusing ingest with 507"
                );
            } else {
                tracing::info!(
                    free,
                    "free disk space is above the reserve again: ingest resumes"
                );
            }
        }
    }

    /// Whether `incoming` more bytes fit before the reserve.
    pub fn check(&self, incoming: u64) -> Result<(), DiskLow> {
        let incoming = i64::try_from(incoming).unwrap_or(i64::MAX);
        if self.budget.load(Ordering::Relaxed) >= incoming {
            return Ok(());
        }
        Err(DiskLow {
            free: self.free.load(Ordering::Relaxed),
            reserve: self.reserve,
        })
    }

    /// Counts bytes written since the last refresh.
    pub fn charge(&self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.budget.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    // `disk::free=return(N)` pretends N bytes are free; `return(crash)` crashes (see
    // `crate::failpoint`), `return` fails the statvfs.
    #[cfg(feature = "fail")]
    fail::fail_point!("disk::free", |v: Option<String>| {
        let _ = crate::failpoint::fired("disk::free", "failpoint disk::free", v.as_deref());
        v.and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("failpoint disk::free wants return(<bytes>)"))
    });
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` is valid for writes of one
    // statvfs; on success the kernel has filled it.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        st.assume_init()
    };
    #[allow(
        clippy::useless_conversion,
        reason = "the field widths differ between targets"
    )]
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    Ok(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_are_charged_until_a_refresh_and_the_reserve_is_kept() {
        let dir = std::env::temp_dir();
        let space = DiskSpace::new(&dir, 1000).unwrap();
        space.set_free(1500);
        assert!(space.check(500).is_ok());
        space.charge(400);
        assert!(space.check(100).is_ok());
        let low = space.check(101).unwrap_err();
        assert_eq!((low.free, low.reserve), (1500, 1000));
        space.charge(100);
        assert!(space.check(1).is_err(), "the budget is spent");
        space.set_free(5000);
        assert!(space.check(4000).is_ok(), "freed space lets ingest resume");
        space.set_free(999);
        assert!(
            space.check(0).is_err(),
            "below the reserve nothing is taken"
        );
    }

    #[test]
    fn the_real_file_system_reports_free_space() {
        let free = free_bytes(&std::env::temp_dir()).unwrap();
        assert!(free > 0);
        assert!(free_bytes(Path::new("/no/such/dir")).is_err());
    }
}
