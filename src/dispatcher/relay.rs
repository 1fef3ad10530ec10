//! Relaying one device connection to one collabd instance: the byte copy in
//! both directions, half-close propagation and the idle timeout, plus the
//! [`RelayObserver`] hook that sees every relayed byte (the `--record-dir`
//! recorder and the tests' proof that no plaintext passes use it).
//!
//! One thread drives both directions with poll(2) over non-blocking sockets.
//! Why not a thread per direction: a TLS stream to collabd cannot be read
//! and written from two threads at once, and one thread per pair halves the
//! tasks counted against systemd's `TasksMax`. Each direction has a bounded
//! buffer ([`RELAY_BUFFER`]); a direction reads only when its buffer is
//! empty, so a slow reader stalls its writer (TCP back-pressure) and memory
//! never grows. Bytes are never interpreted.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bytes buffered per direction of one relay.
pub const RELAY_BUFFER: usize = 8 * 1024;

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device to collabd.
    Upstream,
    /// collabd to device.
    Downstream,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Upstream => "up",
            Direction::Downstream => "down",
        })
    }
}

/// Sees every byte the dispatcher relays, in order, per connection.
/// Implementations must be cheap or the relay slows down with them.
pub trait RelayObserver: Send + Sync {
    /// `bytes` were relayed on connection `connection` in `direction`.
    fn relayed(&self, connection: u64, direction: Direction, bytes: &[u8]);
}

/// Writes each connection's bytes to `DIR/<connection>.up` and
/// `DIR/<connection>.down` (diagnostics and tests; files are created on
/// first use and append-only). Errors are logged once per file and the
/// relay goes on: recording must never break a device's link.
pub struct RecordDir {
    dir: PathBuf,
}

impl RecordDir {
    /// Records into `dir`, which must exist.
    pub fn new(dir: PathBuf) -> RecordDir {
        RecordDir { dir }
    }
}

impl RelayObserver for RecordDir {
    fn relayed(&self, connection: u64, direction: Direction, bytes: &[u8]) {
        let path = self.dir.join(format!("{connection}.{direction}"));
        let result = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(bytes));
        if let Err(e) = result {
            log::warn!("recording to {}: {e}", path.display());
        }
    }
}

/// The link to collabd: plain TCP or TLS over TCP (`--upstream-tls`); the
/// same connection type the servers use, seen from the client side.
pub type Upstream = crate::net::Stream;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their sending halves.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// A socket failed (reset, broken pipe, TLS error).
    Failed(io::Error),
}

impl fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayEnd::Closed => f.write_str("closed by both sides"),
            RelayEnd::Idle => f.write_str("idle timeout"),
            RelayEnd::Failed(e) => write!(f, "socket error: {e}"),
        }
    }
}

/// Bytes totals of one relay, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayCounts {
    /// Device to collabd.
    pub up: u64,
    /// collabd to device.
    pub down: u64,
}

/// One direction's buffer and state.
struct Pipe {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    source_done: bool,
    sink_closed: bool,
    total: u64,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0; RELAY_BUFFER],
            start: 0,
            end: 0,
            source_done: false,
            sink_closed: false,
            total: 0,
        }
    }
    fn pending(&self) -> bool {
        self.start < self.end
    }
    fn finished(&self) -> bool {
        self.sink_closed
    }
}

/// Readiness we learnt from the last poll or operation; an operation that
/// returns `WouldBlock` clears it, poll sets it again.
struct Ready {
    read: bool,
    write: bool,
}

/// Either end as the pump sees it.
trait End: Read + Write {
    fn close_write(&mut self);
}

impl End for TcpStream {
    fn close_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl End for Upstream {
    fn close_write(&mut self) {
        if let Upstream::Tls(s) = self {
            // close_notify first so collabd sees a clean TLS end, not a
            // truncation; a full send buffer only loses the courtesy.
            let _ = s.shutdown();
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }
}

/// Moves bytes from `src` to `dst` until it would block. Returns whether any
/// byte moved or a state changed.
#[allow(clippy::too_many_arguments)]
fn pump(
    src: &mut dyn End,
    src_ready: &mut Ready,
    dst: &mut dyn End,
    dst_ready: &mut Ready,
    pipe: &mut Pipe,
    observer: Option<&dyn RelayObserver>,
    connection: u64,
    direction: Direction,
) -> io::Result<bool> {
    let mut progressed = false;
    loop {
        if pipe.finished() {
            return Ok(progressed);
        }
        if pipe.pending() {
            if !dst_ready.write {
                return Ok(progressed);
            }
            match dst.write(&pipe.buf[pipe.start..pipe.end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    pipe.start += n;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dst_ready.write = false;
                    return Ok(progressed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        if pipe.source_done {
            dst.close_write();
            pipe.sink_closed = true;
            return Ok(true);
        }
        if !src_ready.read {
            return Ok(progressed);
        }
        match src.read(&mut pipe.buf) {
            Ok(0) => {
                pipe.source_done = true;
                progressed = true;
            }
            Ok(n) => {
                if let Some(observer) = observer {
                    observer.relayed(connection, direction, &pipe.buf[..n]);
                }
                pipe.start = 0;
                pipe.end = n;
                pipe.total += n as u64;
                progressed = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                src_ready.read = false;
                return Ok(progressed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Relays between `device` and `upstream` until both sides have closed,
/// either fails, or nothing moves for `idle_timeout`. Bytes already taken
/// from either side (the first frames) must have been forwarded before.
pub fn relay(
    device: &mut TcpStream,
    upstream: &mut Upstream,
    idle_timeout: Duration,
    observer: Option<&dyn RelayObserver>,
    connection: u64,
) -> (RelayEnd, RelayCounts) {
    let mut up = Pipe::new();
    let mut down = Pipe::new();
    let end = relay_inner(
        device,
        upstream,
        idle_timeout,
        observer,
        connection,
        &mut up,
        &mut down,
    );
    (
        end,
        RelayCounts {
            up: up.total,
            down: down.total,
        },
    )
}

fn relay_inner(
    device: &mut TcpStream,
    upstream: &mut Upstream,
    idle_timeout: Duration,
    observer: Option<&dyn RelayObserver>,
    connection: u64,
    up: &mut Pipe,
    down: &mut Pipe,
) -> RelayEnd {
    if let Err(e) = device
        .set_nonblocking(true)
        .and_then(|()| upstream.tcp().set_nonblocking(true))
    {
        return RelayEnd::Failed(e);
    }
    let mut device_ready = Ready {
        read: true,
        write: true,
    };
    let mut upstream_ready = Ready {
        read: true,
        write: true,
    };
    let mut last_traffic = Instant::now();
    loop {
        let moved_up = pump(
            device,
            &mut device_ready,
            upstream,
            &mut upstream_ready,
            up,
            observer,
            connection,
            Direction::Upstream,
        );
        let moved_down = pump(
            upstream,
            &mut upstream_ready,
            device,
            &mut device_ready,
            down,
            observer,
            connection,
            Direction::Downstream,
        );
        let progressed = match (moved_up, moved_down) {
            (Ok(a), Ok(b)) => a || b,
            (Err(e), _) | (_, Err(e)) => return RelayEnd::Failed(e),
        };
        if up.finished() && down.finished() {
            return RelayEnd::Closed;
        }
        if progressed {
            last_traffic = Instant::now();
            continue;
        }
        // TLS may hold decrypted bytes with nothing left on the socket:
        // pump() reads until a read would block (the only proof that it
        // holds none) before we get here, so poll(2) strands nothing.

        let idle_left = match idle_timeout.checked_sub(last_traffic.elapsed()) {
            Some(left) if !left.is_zero() => left,
            _ => return RelayEnd::Idle,
        };
        let mut fds = [
            libc::pollfd {
                fd: device.as_raw_fd(),
                events: interest(!up.source_done && !up.pending(), down.pending()),
                revents: 0,
            },
            libc::pollfd {
                fd: upstream.tcp().as_raw_fd(),
                events: interest(!down.source_done && !down.pending(), up.pending()),
                revents: 0,
            },
        ];
        let timeout_ms = idle_left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfd for the whole call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return RelayEnd::Failed(e);
        }
        if rc == 0 {
            continue; // the idle check at the top of the next turn decides
        }
        mark(&mut device_ready, fds[0].revents);
        mark(&mut upstream_ready, fds[1].revents);
    }
}

fn interest(want_read: bool, want_write: bool) -> libc::c_short {
    let mut events = 0;
    if want_read {
        events |= libc::POLLIN;
    }
    if want_write {
        events |= libc::POLLOUT;
    }
    events
}

fn mark(ready: &mut Ready, revents: libc::c_short) {
    // Errors and hang-ups are delivered through the next read or write,
    // which then fails or returns end of stream.
    if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
        ready.read = true;
    }
    if revents & (libc::POLLOUT | libc::POLLHUP | libc::POLLERR) != 0 {
        ready.write = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Mutex;
    use std::thread;

    /// A connected pair of TCP sockets on loopback.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Direction, Vec<u8>)>>);

    impl RelayObserver for Recorder {
        fn relayed(&self, _c: u64, d: Direction, bytes: &[u8]) {
            self.0.lock().unwrap().push((d, bytes.to_vec()));
        }
    }

    #[test]
    fn copies_both_ways_propagates_half_close_and_records() {
        let (mut device_app, mut device_side) = pair();
        let (upstream_side, mut collabd_app) = pair();
        let recorder = std::sync::Arc::new(Recorder::default());
        let rec = recorder.clone();
        let relay_thread = thread::spawn(move || {
            let mut upstream = Upstream::Plain(upstream_side);
            relay(
                &mut device_side,
                &mut upstream,
                Duration::from_secs(30),
                Some(&*rec),
                7,
            )
        });
        // More than one buffer's worth, to exercise back-pressure.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let big2 = big.clone();
        let writer = thread::spawn(move || {
            device_app.write_all(&big2).unwrap();
            device_app.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            device_app.read_to_end(&mut back).unwrap();
            back
        });
        let mut got = Vec::new();
        collabd_app.read_to_end(&mut got).unwrap();
        assert_eq!(got, big);
        collabd_app.write_all(b"reply").unwrap();
        collabd_app.shutdown(Shutdown::Write).unwrap();
        assert_eq!(writer.join().unwrap(), b"reply");
        let (end, counts) = relay_thread.join().unwrap();
        assert!(matches!(end, RelayEnd::Closed), "{end}");
        assert_eq!(counts.up, big.len() as u64);
        assert_eq!(counts.down, 5);
        let records = recorder.0.lock().unwrap();
        let up: Vec<u8> = records
            .iter()
            .filter(|(d, _)| *d == Direction::Upstream)
            .flat_map(|(_, b)| b.clone())
            .collect();
        assert_eq!(up, big);
    }

    #[test]
    fn idle_relay_is_closed() {
        let (_device_app, mut device_side) = pair();
        let (upstream_side, mut collabd_app) = pair();
        let mut upstream = Upstream::Plain(upstream_side);
        let (end, _) = relay(
            &mut device_side,
            &mut upstream,
            Duration::from_millis(200),
            None,
            1,
        );
        assert!(matches!(end, RelayEnd::Idle), "{end}");
        drop(upstream);
        drop(device_side);
        let mut rest = Vec::new();
        collabd_app
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(collabd_app.read_to_end(&mut rest).unwrap(), 0);
    }
}
