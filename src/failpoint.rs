//! Failpoints: named steps of the write path where tests make weir fail or crash. They
//! are the `fail` crate's, compiled in only with the `fail` cargo feature (CI tests with
//! it; release builds never have it), and set by the `FAILPOINTS` environment variable of
//! the real binary (`main` calls `fail::FailScenario::setup`), e.g.
//! `FAILPOINTS='log::fsync=3*off->return(crash)'`.
//!
//! [`failpoint!`](crate::failpoint!) sits in a function returning a `Result` and gives
//! the `return` action a meaning:
//!
//! - `return`: the step fails with the io error `failpoint <name>` (mapped into the
//!   function's error type where it is not `io::Error`), as a failing syscall would;
//! - `return(enospc)`, `return(eio)`: the step fails with that errno (`ENOSPC`, `EIO`),
//!   as a full disk or a failing device would, so the error's handling by kind is tested;
//! - `return(crash)`: the process sends itself SIGKILL at that step, exactly what
//!   `kill -9` does: nothing unwinds, nothing is flushed, the page cache stays. A panic is
//!   not a crash here: tests unwind, and tokio and spawned threads catch panics;
//! - the crate's other actions (`sleep(ms)`, `delay(ms)`, `pause`, `panic`, `print`,
//!   counts `N*` and chains `->`) work as documented by the crate.
//!
//! Each firing is logged (`failpoint fired`, with the name and action) before it acts,
//! so a test can tell a failpoint was reached. Every name used in `src/` must be in the
//! matrix of `tests/it/failpoints.rs`, which greps for them.

/// Runs the failpoint `$name`; `$map` (optional) turns its `io::Error` into the error type
/// of the surrounding function. Compiled out without the `fail` feature.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        $crate::failpoint!($name, |e: ::std::io::Error| e)
    };
    ($name:literal, $map:expr) => {
        #[cfg(feature = "fail")]
        fail::fail_point!($name, |arg: Option<String>| {
            Err(($map)($crate::failpoint::fired(
                $name,
                concat!("failpoint ", $name),
                arg.as_deref(),
            )))
        });
    };
}

/// The `return` action of a failpoint: logs it, and with the argument `crash` kills the
/// process as `kill -9` would (never returning). Returns the io error the step fails
/// with: `ENOSPC` or `EIO` for the arguments `enospc` and `eio`, else `message`.
#[cfg(feature = "fail")]
pub fn fired(name: &str, message: &'static str, arg: Option<&str>) -> std::io::Error {
    if arg == Some("crash") {
        tracing::warn!(failpoint = name, action = "crash", "failpoint fired");
        // SAFETY: kill(2) on our own pid with a signal number; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught or ignored: the process is gone before this returns.
        loop {
            std::thread::park();
        }
    }
    tracing::warn!(
        failpoint = name,
        action = arg.unwrap_or("error"),
        "failpoint fired"
    );
    match arg {
        Some("enospc") => std::io::Error::from_raw_os_error(libc::ENOSPC),
        Some("eio") => std::io::Error::from_raw_os_error(libc::EIO),
        _ => std::io::Error::other(message),
    }
}
