//! Relaying one device connection to one collabd instance: the byte copy in
//! both directions, half-close propagation and the idle timeout, plus the
//! [`RelayObserver`] hook that sees every relayed byte (the `--record-dir`
//! recorder and the tests' proof that no plaintext passes use it).
//!
//! One thread drives both directions with poll(2) over non-blocking sockets.
//! Why not a thread per direction: a TLS stream to collabd cannot be read
//! and written from two threads at once, and one thread per pair halves the
//! tasks counted against systemd's `TasksMax`. Each direction has a bounded
//! buffer ([`RELAY_BUFFER`]), allocated only while it holds bytes not yet
//! written (an idle relay holds none); a direction reads only when its
//! buffer is empty, so a slow reader stalls its writer (TCP back-pressure)
//! and memory never grows. Bytes are never interpreted, except that the
//! clear headers of collabd's frames are followed, so that a `Refused`
//! frame's status can be logged.
//!
//! A failure ends only its own direction: when collabd refuses and closes
//! with input unread (which resets the connection), the write towards it
//! fails, but what it sent before, its `Refused` frame, is still read and
//! delivered to the device. After the first failure the other direction has
//! [`DRAIN_AFTER_FAILURE`] to finish. Once collabd has sent a `Refused`
//! frame and closed, the device's direction ends too: a refusal ends the
//! connection.

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
/// first use and append-only). Every failed write is logged (at warn) and the
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
    /// The status code of the last `Refused` frame collabd sent.
    pub refused: Option<u16>,
}

/// After one direction failed, how long the other may take to deliver what
/// it still holds (collabd's last word, typically).
pub const DRAIN_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// Follows the frames of one direction by their length prefixes and keeps
/// the status of the last `Refused` frame. It reads only the clear prefix
/// and header (and a Refused frame's 2-byte status), never a body.
#[derive(Debug, Default)]
pub struct FrameWatch {
    /// The first bytes of the current frame: length, header, status.
    head: [u8; WATCH_HEAD],
    have: usize,
    /// Bytes of the current frame still to pass after its head.
    skip: usize,
    /// The stream stopped looking like frames; nothing more is read.
    lost: bool,
    /// The last Refused status seen.
    pub refused: Option<u16>,
}

/// Length prefix (4), header (16) and a Refused frame's status (2).
const WATCH_HEAD: usize = 22;
/// Offset of the type byte in the stream form of a frame.
const TYPE_OFFSET: usize = 5;
/// The `type` byte of a Refused frame.
const REFUSED_TYPE: u8 = 5;

impl FrameWatch {
    /// Takes the next `bytes` of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let want = if self.have < 4 {
                4
            } else {
                let len =
                    u32::from_be_bytes([self.head[0], self.head[1], self.head[2], self.head[3]])
                        as usize;
                if len < 16 {
                    // Not a frame stream (collabd never sends this).
                    self.lost = true;
                    return;
                }
                (4 + len).min(WATCH_HEAD)
            };
            let n = (want - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == want && want > 4 {
                let len =
                    u32::from_be_bytes([self.head[0], self.head[1], self.head[2], self.head[3]])
                        as usize;
                if self.head[TYPE_OFFSET] == REFUSED_TYPE && self.have == WATCH_HEAD {
                    self.refused = Some(u16::from_be_bytes([self.head[20], self.head[21]]));
                }
                self.skip = 4 + len - self.have;
                self.have = 0;
            }
        }
    }
}

/// One direction's buffer and state.
struct Pipe {
    /// Empty (no allocation) whenever nothing is pending.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    source_done: bool,
    sink_closed: bool,
    total: u64,
    /// The first error of this direction, if it failed.
    error: Option<io::Error>,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: Vec::new(),
            start: 0,
            end: 0,
            source_done: false,
            sink_closed: false,
            total: 0,
            error: None,
        }
    }
    fn pending(&self) -> bool {
        self.start < self.end
    }
    fn finished(&self) -> bool {
        self.sink_closed
    }
    /// Gives the buffer back once everything in it was written.
    fn release_if_empty(&mut self) {
        if !self.pending() {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }
    /// The source failed: deliver what is pending, then close the sink.
    fn source_failed(&mut self, e: io::Error) {
        self.source_done = true;
        self.error.get_or_insert(e);
    }
    /// The sink failed: nothing more can go this way.
    fn sink_failed(&mut self, e: io::Error) {
        self.source_done = true;
        self.sink_closed = true;
        self.start = 0;
        self.end = 0;
        self.buf = Vec::new();
        self.error.get_or_insert(e);
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
/// byte moved or a state changed. Errors end this direction only (recorded
/// in the pipe), never the other.
#[allow(clippy::too_many_arguments)]
fn pump(
    src: &mut dyn End,
    src_ready: &mut Ready,
    dst: &mut dyn End,
    dst_ready: &mut Ready,
    pipe: &mut Pipe,
    observer: Option<&dyn RelayObserver>,
    watch: Option<&mut FrameWatch>,
    connection: u64,
    direction: Direction,
) -> bool {
    let mut watch = watch;
    let mut progressed = false;
    loop {
        if pipe.finished() {
            return progressed;
        }
        if pipe.pending() {
            if !dst_ready.write {
                return progressed;
            }
            match dst.write(&pipe.buf[pipe.start..pipe.end]) {
                Ok(0) => {
                    pipe.sink_failed(io::ErrorKind::WriteZero.into());
                    return true;
                }
                Ok(n) => {
                    pipe.start += n;
                    pipe.release_if_empty();
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dst_ready.write = false;
                    return progressed;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    pipe.sink_failed(e);
                    return true;
                }
            }
            continue;
        }
        if pipe.source_done {
            dst.close_write();
            pipe.sink_closed = true;
            return true;
        }
        if !src_ready.read {
            return progressed;
        }
        if pipe.buf.is_empty() {
            pipe.buf = vec![0; RELAY_BUFFER];
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
                if let Some(watch) = watch.as_deref_mut() {
                    watch.feed(&pipe.buf[..n]);
                }
                pipe.start = 0;
                pipe.end = n;
                pipe.total += n as u64;
                progressed = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                src_ready.read = false;
                pipe.release_if_empty();
                return progressed;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                pipe.source_failed(e);
                progressed = true;
            }
        }
    }
}

/// Relays between `device` and `upstream` until both directions have
/// finished, or nothing moves for `idle_timeout`. A direction finishes when
/// its source ended (end of stream or error) and everything read was
/// written, or when its sink failed. Bytes already taken from either side
/// (the handshake frames) must have been forwarded before, so that both
/// streams start at a frame boundary here.
pub fn relay(
    device: &mut TcpStream,
    upstream: &mut Upstream,
    idle_timeout: Duration,
    observer: Option<&dyn RelayObserver>,
    connection: u64,
) -> (RelayEnd, RelayCounts) {
    let mut up = Pipe::new();
    let mut down = Pipe::new();
    let mut watch = FrameWatch::default();
    let end = relay_inner(
        device,
        upstream,
        idle_timeout,
        observer,
        connection,
        &mut up,
        &mut down,
        &mut watch,
    );
    (
        end,
        RelayCounts {
            up: up.total,
            down: down.total,
            refused: watch.refused,
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn relay_inner(
    device: &mut TcpStream,
    upstream: &mut Upstream,
    idle_timeout: Duration,
    observer: Option<&dyn RelayObserver>,
    connection: u64,
    up: &mut Pipe,
    down: &mut Pipe,
    watch: &mut FrameWatch,
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
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let moved_up = pump(
            device,
            &mut device_ready,
            upstream,
            &mut upstream_ready,
            up,
            observer,
            None,
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
            Some(watch),
            connection,
            Direction::Downstream,
        );
        if down.source_done && watch.refused.is_some() && !up.finished() {
            // collabd refused and closed: a Refused frame ends the
            // connection, so nothing the device still sends has a reader.
            upstream.close_write();
            up.sink_closed = true;
            up.source_done = true;
            up.start = 0;
            up.end = 0;
            up.buf = Vec::new();
        }
        if up.finished() && down.finished() {
            return match up.error.take().or_else(|| down.error.take()) {
                Some(e) => RelayEnd::Failed(e),
                None => RelayEnd::Closed,
            };
        }
        if drain_deadline.is_none() && (up.error.is_some() || down.error.is_some()) {
            drain_deadline = Some(Instant::now() + DRAIN_AFTER_FAILURE);
        }
        if moved_up || moved_down {
            last_traffic = Instant::now();
            continue;
        }
        // TLS may hold decrypted bytes with nothing left on the socket:
        // pump() reads until a read would block (the only proof that it
        // holds none) before we get here, so poll(2) strands nothing.

        let mut left = idle_timeout.saturating_sub(last_traffic.elapsed());
        if let Some(deadline) = drain_deadline {
            left = left.min(deadline.saturating_duration_since(Instant::now()));
        }
        if left.is_zero() {
            let failure = up.error.take().or_else(|| down.error.take());
            return match failure {
                Some(e) => RelayEnd::Failed(e),
                None => RelayEnd::Idle,
            };
        }
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
        let timeout_ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
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
            continue; // the deadline check at the top of the next turn decides
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
    fn frame_watch_finds_refusals_across_chunk_boundaries() {
        use crate::wire::frame::{Frame, FrameType, Header};
        use crate::wire::status::Status;
        let mut stream =
            Frame::new(Header::new(FrameType::Challenge, 7, 0), vec![1; 64]).to_bytes();
        stream.extend(Frame::new(Header::new(FrameType::Data, 7, 1), vec![5; 300]).to_bytes());
        let mut watch = FrameWatch::default();
        watch.feed(&stream);
        assert_eq!(
            watch.refused, None,
            "a Data body full of 5s is not a Refused"
        );
        stream.extend(Frame::refused(7, Status::ProtocolError, "too large").to_bytes());
        for chunk in [1, 3, 7, 22, 4096] {
            let mut watch = FrameWatch::default();
            for piece in stream.chunks(chunk) {
                watch.feed(piece);
            }
            assert_eq!(watch.refused, Some(308), "chunks of {chunk}");
        }
        // Not frames at all: the watch gives up instead of guessing.
        let mut watch = FrameWatch::default();
        watch.feed(&[
            0, 0, 0, 3, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 52,
        ]);
        assert_eq!(watch.refused, None);
    }

    #[test]
    fn what_collabd_sent_before_resetting_reaches_the_device() {
        use crate::wire::frame::Frame;
        use crate::wire::status::Status;
        let (device_app, mut device_side) = pair();
        let (upstream_side, mut collabd_app) = pair();
        let relay_thread = thread::spawn(move || {
            let mut upstream = Upstream::Plain(upstream_side);
            let outcome = relay(
                &mut device_side,
                &mut upstream,
                Duration::from_secs(30),
                None,
                3,
            );
            drop(upstream);
            (outcome, device_side)
        });
        // The device sends far more than collabd will read.
        let mut writer_side = device_app.try_clone().unwrap();
        writer_side
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let writer = thread::spawn(move || {
            let chunk = vec![0x55u8; 16 * 1024];
            for _ in 0..64 {
                if writer_side.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut first = [0u8; 100];
        collabd_app.read_exact(&mut first).unwrap();
        let refusal = Frame::refused(3, Status::ProtocolError, "frame too large").to_bytes();
        collabd_app.write_all(&refusal).unwrap();
        // Closing with unread input sends a reset instead of a FIN.
        drop(collabd_app);
        let ((end, counts), device_side) = relay_thread.join().unwrap();
        assert_eq!(counts.refused, Some(308), "{end}");
        assert_eq!(counts.down, refusal.len() as u64);
        drop(device_side);
        let mut reader = device_app;
        reader
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got, refusal, "the refusal is delivered whole");
        writer.join().unwrap();
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
