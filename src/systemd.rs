//! Telling systemd how weir is doing: sd_notify(3) over `$NOTIFY_SOCKET`.
//!
//! A `Type=notify` unit hears `READY=1` once the log is recovered and the listener is
//! up, `EXTEND_TIMEOUT_USEC` while a long start is still going, `WATCHDOG=1` every half
//! `WATCHDOG_USEC` from a task on the runtime (so a wedged runtime stops petting it and
//! systemd restarts weir), and `STOPPING=1` when shutdown begins. Outside systemd (no
//! `NOTIFY_SOCKET`) there is no [`Notifier`] and nothing is sent.
//!
//! The protocol is one datagram per message on a Unix socket whose address is in
//! `NOTIFY_SOCKET`: a path, or an abstract name written with a leading `@`. That is a
//! few lines over std's `UnixDatagram`, so no crate.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// While weir is still starting, `EXTEND_TIMEOUT_USEC` is sent this often...
pub const START_EXTEND_EVERY: Duration = Duration::from_secs(5);
/// ...asking for this much more time each time: three periods, so one late tick (a busy
/// machine) does not let the start timeout fire while recovery is making progress.
pub const START_EXTEND_BY: Duration = Duration::from_secs(15);

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    /// Unbound, non-blocking: a send never waits on systemd (a full queue is an error).
    socket: UnixDatagram,
    /// Where `NOTIFY_SOCKET` points.
    addr: SocketAddr,
    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), if the watchdog is on
    /// for this process.
    watchdog_every: Option<Duration>,
    /// A failed watchdog send is logged once, not every tick.
    watchdog_failed: AtomicBool,
}

impl Notifier {
    /// The notifier systemd's environment asks for, or `None` outside systemd.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var_os("WATCHDOG_USEC");
        let pid = std::env::var_os("WATCHDOG_PID");
        let Some(socket) = socket else {
            return Ok(None);
        };
        let watchdog_every = watchdog_every(usec.as_deref(), pid.as_deref(), std::process::id());
        Notifier::new(&socket, watchdog_every)
    }

    /// A notifier for the socket address `notify_socket` (a path, or `@name` for an
    /// abstract socket); `None` for an empty value or a kind weir does not speak (vsock).
    pub fn new(
        notify_socket: &OsStr,
        watchdog_every: Option<Duration>,
    ) -> io::Result<Option<Self>> {
        let bytes = notify_socket.as_bytes();
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(notify_socket)?,
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            _ => {
                if !bytes.is_empty() {
                    tracing::warn!(
                        notify_socket = %notify_socket.to_string_lossy(),
                        "NOTIFY_SOCKET is neither a path nor an abstract name; not notifying systemd"
                    );
                }
                return Ok(None);
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Some(Notifier {
            socket,
            addr,
            watchdog_every,
            watchdog_failed: AtomicBool::new(false),
        }))
    }

    /// Sends one message (newline-separated `KEY=VALUE` assignments).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if sent != state.len() {
            return Err(io::Error::other("notification datagram cut short"));
        }
        Ok(())
    }

    /// `READY=1`: start-up is done. With a human-readable status beside it.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=shutting down");
    }

    /// `STATUS=`: what `systemctl status` shows under the unit.
    pub fn status(&self, status: &str) {
        self.send_logged(&format!("STATUS={status}"));
    }

    /// `EXTEND_TIMEOUT_USEC=`: the current start (or stop) needs `by` more from now.
    pub fn extend_timeout(&self, by: Duration) {
        self.send_logged(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    /// How often `WATCHDOG=1` is due, if systemd watches this process.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// `WATCHDOG=1`. A failure is logged the first time only.
    pub fn watchdog(&self) {
        if let Err(e) = self.notify("WATCHDOG=1")
            && !self.watchdog_failed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot send WATCHDOG=1 to systemd (logged once)");
        }
    }

    fn send_logged(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            let first = state.lines().next().unwrap_or(state);
            tracing::warn!(error = %e, message = first, "cannot notify systemd");
        }
    }
}

/// Half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises, when the watchdog is on
/// and meant for this process: `WATCHDOG_PID`, when set, must be `own_pid` (a variable
/// inherited from a parent that is watched is not ours to answer).
pub fn watchdog_every(usec: Option<&OsStr>, pid: Option<&OsStr>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.to_str()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn the_watchdog_is_petted_at_half_its_timeout_and_only_for_its_own_pid() {
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_every(Some(os("1000000")), None, 7), half);
        assert_eq!(watchdog_every(Some(os("1000000")), Some(os("7")), 7), half);
        assert_eq!(watchdog_every(Some(os("1000000")), Some(os("8")), 7), None);
        assert_eq!(watchdog_every(Some(os("0")), None, 7), None);
        assert_eq!(watchdog_every(Some(os("soon")), None, 7), None);
        assert_eq!(watchdog_every(None, Some(os("7")), 7), None);
    }

    #[test]
    fn messages_arrive_on_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.as_os_str(), None).unwrap().unwrap();
        n.ready("serving");
        let mut buf = [0u8; 256];
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");

        let name = format!("weir-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(os(&format!("@{name}")), None)
            .unwrap()
            .unwrap();
        n.extend_timeout(Duration::from_secs(15));
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"EXTEND_TIMEOUT_USEC=15000000");
    }

    #[test]
    fn an_empty_or_foreign_address_means_no_notifier() {
        assert!(Notifier::new(os(""), None).unwrap().is_none());
        assert!(Notifier::new(os("vsock:2:1234"), None).unwrap().is_none());
    }
}
