//! The systemd notification protocol (sd_notify(3)) with std only: one
//! datagram of `KEY=VALUE` lines to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET`. A name starting with `/` is a path; a name starting
//! with `@` is a Linux abstract socket. Unset means "not run by systemd"
//! and every call is a no-op.
//!
//! collabd sends `READY=1` once its listener is bound and the Config DB is
//! reachable, `STATUS=` with a one-line summary (sessions in use), a
//! `WATCHDOG=1` every half `WATCHDOG_USEC` from a check that the accept
//! loop and the session table are healthy, `RELOADING=1` on SIGHUP and
//! `STOPPING=1` first thing in shutdown.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// One line of a notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyState {
    /// `READY=1`: start-up finished.
    Ready,
    /// `RELOADING=1` with `MONOTONIC_USEC=` (required by Type=notify-reload
    /// and harmless otherwise): a reload started; send `Ready` when done.
    Reloading,
    /// `STOPPING=1`: shutdown started.
    Stopping,
    /// `WATCHDOG=1`: we are alive.
    Watchdog,
    /// `STATUS=...`: a one-line status; newlines are replaced by spaces.
    Status(String),
}

impl fmt::Display for NotifyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyState::Ready => f.write_str("READY=1"),
            NotifyState::Reloading => {
                write!(f, "RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec())
            }
            NotifyState::Stopping => f.write_str("STOPPING=1"),
            NotifyState::Watchdog => f.write_str("WATCHDOG=1"),
            NotifyState::Status(text) => {
                let one_line: String = text
                    .chars()
                    .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                    .collect();
                write!(f, "STATUS={one_line}")
            }
        }
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Build the datagram for these states: one `KEY=VALUE` line each.
pub fn datagram(states: &[NotifyState]) -> String {
    let mut out = String::new();
    for state in states {
        out.push_str(&state.to_string());
        out.push('\n');
    }
    out
}

/// Send `states` to the socket named by `$NOTIFY_SOCKET`. Returns
/// `Ok(false)` without doing anything when the variable is unset or empty.
pub fn notify(states: &[NotifyState]) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => notify_to(&socket, states).map(|()| true),
        _ => Ok(false),
    }
}

/// Send `states` to the socket named `socket` (`/path` or `@abstract`).
pub fn notify_to(socket: &OsStr, states: &[NotifyState]) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'/') => sock.connect(socket)?,
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            sock.connect_addr(&addr)?;
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
            ))
        }
    }
    let message = datagram(states);
    let sent = sock.send(message.as_bytes())?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram truncated",
        ));
    }
    Ok(())
}

/// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), if systemd
/// asked for it for this process: `WATCHDOG_USEC` set to a positive number
/// and `WATCHDOG_PID` unset or our pid (sd_watchdog_enabled(3)).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] with the environment passed in.
pub fn watchdog_interval_from(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    let usec: u64 = watchdog_usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = watchdog_pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// Send `WATCHDOG=1` every `interval` while `healthy()` says so (e.g. the
/// accept thread is running and the session table's lock can be taken),
/// until `shutdown` is requested. A missed ping lets systemd restart the
/// service. Send errors are logged once per failure, never fatal.
pub fn spawn_watchdog(
    interval: Duration,
    shutdown: crate::ops::signals::Shutdown,
    healthy: impl Fn() -> bool + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("watchdog".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let ping = || {
                while !shutdown.wait_timeout(interval) {
                    if !healthy() {
                        log::warn!("health check failed; not pinging the systemd watchdog");
                        continue;
                    }
                    if let Err(e) = notify(&[NotifyState::Watchdog]) {
                        log::warn!("cannot ping the systemd watchdog: {e}");
                    }
                }
            };
            // systemd would kill the service for the missing pings; a
            // clean stop says why.
            crate::ops::panics::guard_service_thread("the watchdog thread", &shutdown, ping);
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::SocketAddr;
    use std::path::PathBuf;

    fn scratch_dir(tag: &str) -> PathBuf {
        let mut random = [0u8; 8];
        openssl::rand::rand_bytes(&mut random).unwrap();
        let hex = crate::hex::encode(&random);
        let dir = std::env::temp_dir().join(format!("collabd-{tag}-{}-{hex}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_ready_and_status_to_a_path_socket() {
        let dir = scratch_dir("notify");
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(
            path.as_os_str(),
            &[
                NotifyState::Ready,
                NotifyState::Status("3 sessions\nof 10".into()),
            ],
        )
        .unwrap();
        assert_eq!(receive(&server), "READY=1\nSTATUS=3 sessions of 10\n");
        notify_to(path.as_os_str(), &[NotifyState::Stopping]).unwrap();
        assert_eq!(receive(&server), "STOPPING=1\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let mut random = [0u8; 8];
        openssl::rand::rand_bytes(&mut random).unwrap();
        let name: String = format!(
            "collabd-test-{}-{}",
            std::process::id(),
            crate::hex::encode(&random)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), &[NotifyState::Watchdog]).unwrap();
        assert_eq!(receive(&server), "WATCHDOG=1\n");
    }

    #[test]
    fn reloading_carries_a_monotonic_timestamp() {
        let text = datagram(&[NotifyState::Reloading]);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec = lines
            .next()
            .unwrap()
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap();
        assert!(usec.parse::<u64>().unwrap() > 0);
    }

    #[test]
    fn relative_socket_names_are_rejected_and_missing_sockets_fail() {
        let err = notify_to(OsStr::new("relative.sock"), &[NotifyState::Ready]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let dir = scratch_dir("notify-missing");
        assert!(notify_to(dir.join("absent.sock").as_os_str(), &[NotifyState::Ready]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn watchdog_only_when_usec_set_and_pid_unset_or_ours() {
        assert_eq!(watchdog_interval_from(None, None, 42), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval_from(Some("junk"), None, 42), None);
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("42"), 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("43"), 42),
            None
        );
    }
}
