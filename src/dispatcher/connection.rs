//! One device connection, start to end: read the device's first frame
//! (the clear `Hello`) within the header timeout, look its PIN up, try the
//! chosen instances in order until one answers, forward both first frames
//! unchanged, pass the device's `Confirm` on within the handshake timeout
//! (after which the connection no longer counts as pending for its
//! address), then hand the pair to the relay.
//!
//! What the device is told (clear `Refused` frames, see
//! `man/collab-dispatcher.8`): 308 ProtocolError for a first frame that is
//! not a well-formed `Hello`, or a second frame that is not a `Confirm`; 312
//! UnknownDevice for a PIN with no `device` row; 307 ConfigUnavailable when
//! the PIN cannot be looked up; 309 NoInstance when no live instance
//! accepted the connection. Silence is dropped at the header or handshake
//! timeout without a word.
//!
//! An instance "accepted" the connection once it sent its first frame and
//! that frame is not a refusal that another instance may not share (301
//! ServerBusy at its connection cap, 311 ServiceStopping). Until then the
//! device has received nothing, so trying the next instance is invisible to
//! it. Every other first frame, a refusal included, is the instance's answer
//! and is relayed.
//!
//! Every connection that does not end in a normal close is logged at info
//! with the peer's address (rate-limited, see [`super::limits`]): refusals,
//! timeouts, a device that gives up in the handshake, and a relay that
//! collabd ended with a `Refused` frame, with its status.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::wire::frame::{read_frame, Frame, FrameReader, FrameType, MAX_FRAME_LEN};
use crate::wire::status::Status;
use crate::wire::WireError;

use super::directory::DeviceRoute;
use super::limits::{refusal_info, PendingSlot};
use super::relay::{relay, Direction, RelayEnd, Upstream};
use super::route::Target;
use super::shared::Shared;

/// How long a `Refused` frame may take to leave; the device is being
/// dropped anyway, so a full window must not hold the thread.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Before closing a device that may still be sending, how long its input
/// is read and dropped, so that the close is a FIN after our last bytes
/// rather than a reset that can destroy them.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// At most this much of a device's input is read and dropped while
/// lingering.
const CLOSE_LINGER_BYTES: usize = 64 * 1024;

/// Runs one device connection to its end. Never panics on input.
/// `pending` is the connection's place under the per-address cap, given
/// back once its Confirm has been relayed.
pub(super) fn serve(
    shared: &Shared,
    mut device: TcpStream,
    peer: SocketAddr,
    pending: PendingSlot,
    connection: u64,
) {
    let _ = device.set_nodelay(true);

    let (first, pin_read) = read_first_frame(&mut device, shared.config.header_timeout);
    let hello = match first {
        Ok(frame) if frame.header.frame_type == FrameType::Hello => frame,
        Ok(frame) => {
            refusal_info!(
                "conn {connection} from {peer}: refused 308: first frame is {:?}, not Hello",
                frame.header.frame_type
            );
            refuse(
                &mut device,
                frame.header.pin,
                Status::ProtocolError,
                "the first frame must be a Hello",
            );
            return;
        }
        Err(WireError::Timeout) => {
            refusal_info!(
                "conn {connection} from {peer}: closed: no whole Hello within {} ms",
                shared.config.header_timeout.as_millis()
            );
            return;
        }
        Err(WireError::Closed) => {
            log::debug!("conn {connection} from {peer}: closed before its first frame");
            return;
        }
        Err(e @ (WireError::BadFrame(_) | WireError::TooLarge { .. })) => {
            refusal_info!("conn {connection} from {peer}: refused 308: bad first frame: {e}");
            refuse(
                &mut device,
                pin_read.unwrap_or(0),
                Status::ProtocolError,
                &e.to_string(),
            );
            return;
        }
        Err(e) => {
            refusal_info!("conn {connection} from {peer}: reading first frame: {e}");
            return;
        }
    };
    let pin = hello.header.pin;
    let pin_text = format!("{pin:08x}");

    let lookup_deadline = Instant::now() + shared.config.upstream_timeout;
    let session_holder = match shared.directory.lookup(pin, lookup_deadline) {
        Ok(DeviceRoute::Known { session_holder }) => session_holder,
        Ok(DeviceRoute::Unknown) => {
            refusal_info!(
                "conn {connection} PIN {pin_text} from {peer}: refused 312: not provisioned"
            );
            refuse(
                &mut device,
                pin,
                Status::UnknownDevice,
                "this device is not provisioned",
            );
            return;
        }
        Err(e) => {
            log::warn!("conn {connection} PIN {pin_text} from {peer}: refused 307: {e}");
            refuse(
                &mut device,
                pin,
                Status::ConfigUnavailable,
                "the configuration database is unavailable",
            );
            return;
        }
    };

    let targets = shared.router.targets(session_holder.as_deref());
    let hello_bytes = hello.to_bytes();
    let mut chosen = None;
    for target in &targets {
        match greet(shared, target, &hello_bytes, connection) {
            Ok((upstream, reply)) => {
                chosen = Some((target, upstream, reply));
                break;
            }
            Err(e) => log::warn!(
                "conn {connection} PIN {pin_text}: instance {} at {}: {e}; trying the next",
                target.name,
                target.addr
            ),
        }
    }
    let Some((target, mut upstream, reply)) = chosen else {
        log::warn!(
            "conn {connection} PIN {pin_text} from {peer}: refused 309: no live instance \
             accepted ({} tried)",
            targets.len()
        );
        refuse(
            &mut device,
            pin,
            Status::NoInstance,
            "no collabd instance is available",
        );
        return;
    };

    let _open = shared.router.open_relay(&target.name);
    let observer = shared.observer.as_deref();
    let reply_bytes = reply.to_bytes();
    if let Some(observer) = observer {
        observer.relayed(connection, Direction::Downstream, &reply_bytes);
    }
    let _ = device.set_write_timeout(Some(shared.config.upstream_timeout));
    if let Err(e) = device.write_all(&reply_bytes) {
        log::info!(
            "conn {connection} PIN {pin_text} from {peer}: device gone before the reply: {e}"
        );
        return;
    }
    if let Ok((status, text)) = reply.refusal() {
        refusal_info!(
            "conn {connection} PIN {pin_text} from {peer}: refused by instance {} with {} {}: {text}",
            target.name,
            status.code(),
            status.name()
        );
        linger_close(&mut device);
        return;
    }
    log::debug!(
        "conn {connection} PIN {pin_text}: handshake with instance {} at {} (peer {peer})",
        target.name,
        target.addr
    );

    // The device's Confirm, whole, within the handshake timeout: a device
    // that holds no key cannot go further, so this is where a held or
    // trickled connection is cut.
    let confirm = match read_first_frame(&mut device, shared.config.handshake_timeout).0 {
        Ok(frame) if frame.header.frame_type == FrameType::Confirm => frame,
        Ok(frame) => {
            refusal_info!(
                "conn {connection} PIN {pin_text} from {peer}: refused 308: {:?} instead of \
                 Confirm",
                frame.header.frame_type
            );
            refuse(
                &mut device,
                pin,
                Status::ProtocolError,
                "the second frame must be a Confirm",
            );
            return;
        }
        Err(WireError::Timeout) => {
            refusal_info!(
                "conn {connection} PIN {pin_text} from {peer}: handshake failed: no Confirm \
                 within {} ms",
                shared.config.handshake_timeout.as_millis()
            );
            return;
        }
        Err(WireError::Closed) => {
            refusal_info!(
                "conn {connection} PIN {pin_text} from {peer}: handshake failed: the device \
                 closed after the Challenge (it did not accept the instance's key \
                 confirmation, or gave up)"
            );
            return;
        }
        Err(e @ (WireError::BadFrame(_) | WireError::TooLarge { .. })) => {
            refusal_info!("conn {connection} PIN {pin_text} from {peer}: refused 308: {e}");
            refuse(&mut device, pin, Status::ProtocolError, &e.to_string());
            return;
        }
        Err(e) => {
            refusal_info!("conn {connection} PIN {pin_text} from {peer}: handshake failed: {e}");
            return;
        }
    };
    let confirm_bytes = confirm.to_bytes();
    if let Some(observer) = observer {
        observer.relayed(connection, Direction::Upstream, &confirm_bytes);
    }
    if let Err(e) = upstream
        .write_all(&confirm_bytes)
        .and_then(|()| upstream.flush())
    {
        log::warn!(
            "conn {connection} PIN {pin_text} from {peer}: instance {} gone in the handshake: {e}",
            target.name
        );
        return;
    }
    pending.release();
    log::info!(
        "conn {connection} PIN {pin_text} from {peer} -> instance {} at {}",
        target.name,
        target.addr
    );

    let (end, counts) = relay(
        &mut device,
        &mut upstream,
        shared.config.idle_timeout,
        observer,
        connection,
    );
    let up = counts.up + (hello_bytes.len() + confirm_bytes.len()) as u64;
    let down = counts.down + reply_bytes.len() as u64;
    match counts.refused {
        Some(code) => {
            let name = Status::from_code(code).map_or("unknown status", Status::name);
            refusal_info!(
                "conn {connection} PIN {pin_text} ended (peer {peer}, instance {}): refused \
                 with {code} {name}; {end} ({up} bytes up, {down} down)",
                target.name
            );
        }
        None => log::info!(
            "conn {connection} PIN {pin_text} ended (peer {peer}, instance {}): {end} ({up} bytes up, {down} down)",
            target.name
        ),
    }
    if !matches!(end, RelayEnd::Idle) {
        linger_close(&mut device);
    }
}

/// Connects to `target`, forwards the device's first frame and reads the
/// instance's first frame, all within the upstream timeout.
fn greet(
    shared: &Shared,
    target: &Target,
    hello_bytes: &[u8],
    connection: u64,
) -> Result<(Upstream, Frame), GreetError> {
    let timeout = shared.config.upstream_timeout;
    let deadline = Instant::now() + timeout;
    let tcp = connect(&target.addr, timeout)?;
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(GreetError::Io)?;
    let mut upstream = match &shared.tls {
        None => Upstream::Plain(tcp),
        Some(connector) => {
            let host = host_of(&target.addr);
            let tls = connector
                .connect(host, tcp)
                .map_err(|e| GreetError::Tls(e.to_string()))?;
            Upstream::Tls(Box::new(tls))
        }
    };
    if let Some(observer) = shared.observer.as_deref() {
        observer.relayed(connection, Direction::Upstream, hello_bytes);
    }
    upstream.write_all(hello_bytes).map_err(GreetError::Io)?;
    upstream.flush().map_err(GreetError::Io)?;
    let reply = {
        let mut bounded = DeadlineReader {
            stream: &mut upstream,
            deadline,
        };
        read_frame(&mut bounded, MAX_FRAME_LEN).map_err(GreetError::Reply)?
    };
    if reply.header.frame_type == FrameType::Refused {
        if let Ok((status, text)) = reply.refusal() {
            if matches!(status, Status::ServerBusy | Status::ServiceStopping) {
                return Err(GreetError::Refused(status, text));
            }
        }
    }
    Ok((upstream, reply))
}

/// Why an instance was skipped.
#[derive(Debug)]
enum GreetError {
    Resolve(String),
    Io(io::Error),
    Tls(String),
    Reply(WireError),
    Refused(Status, String),
}

impl std::fmt::Display for GreetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GreetError::Resolve(why) => write!(f, "address: {why}"),
            GreetError::Io(e) => write!(f, "connection: {e}"),
            GreetError::Tls(why) => write!(f, "TLS: {why}"),
            GreetError::Reply(WireError::Closed) => f.write_str("closed without answering"),
            GreetError::Reply(WireError::Timeout) => f.write_str("no answer in time"),
            GreetError::Reply(e) => write!(f, "first reply: {e}"),
            GreetError::Refused(status, text) => {
                write!(
                    f,
                    "refused with {} {}: {text}",
                    status.code(),
                    status.name()
                )
            }
        }
    }
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, GreetError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| GreetError::Resolve(format!("{addr:?}: {e}")))?
        .collect();
    let mut last = GreetError::Resolve(format!("{addr:?} resolves to nothing"));
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = GreetError::Io(e),
        }
    }
    Err(last)
}

/// The host part of `HOST:PORT` or `[V6]:PORT`, for TLS name checks.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Reads the device's first frame with one deadline for the whole frame,
/// so a device dribbling a byte at a time cannot hold the thread longer.
/// One whole frame from the device within `timeout`, and the PIN in its
/// header if the header was read whole (a malformed frame's Refused
/// echoes it).
fn read_first_frame(
    device: &mut TcpStream,
    timeout: Duration,
) -> (Result<Frame, WireError>, Option<u32>) {
    let mut bounded = DeadlineReader {
        stream: device,
        deadline: Instant::now() + timeout,
    };
    let mut reader = FrameReader::new(MAX_FRAME_LEN);
    let frame = reader.read(&mut bounded);
    (frame, reader.pin_read())
}

/// A reader whose every read is bounded by one overall deadline.
struct DeadlineReader<'a, S: TimedRead> {
    stream: &'a mut S,
    deadline: Instant,
}

/// A stream whose reads can be given a timeout.
trait TimedRead: Read {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()>;
}

impl TimedRead for TcpStream {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

impl TimedRead for Upstream {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.tcp().set_read_timeout(Some(timeout))
    }
}

impl<S: TimedRead> Read for DeadlineReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
        self.stream.set_timeout(left)?;
        self.stream.read(buf)
    }
}

/// Sends a clear `Refused` frame, best effort, and lets the caller close.
fn refuse(device: &mut TcpStream, pin: u32, status: Status, text: &str) {
    let frame = Frame::refused(pin, status, text);
    let _ = device.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
    if let Err(e) = device.write_all(&frame.to_bytes()) {
        log::debug!("refusal {} not delivered: {e}", status.code());
    }
    linger_close(device);
}

/// Closes our sending half and reads (and drops) what the device still
/// sends, briefly, so that the bytes we sent last are not lost to a reset
/// caused by unread input when the socket is closed.
fn linger_close(device: &mut TcpStream) {
    let _ = device.set_nonblocking(false);
    let _ = device.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + CLOSE_LINGER;
    let mut sink = [0u8; 512];
    let mut drained = 0usize;
    while drained < CLOSE_LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || device.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match device.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_part_for_tls_names() {
        assert_eq!(host_of("collabd1.example.org:3200"), "collabd1.example.org");
        assert_eq!(host_of("127.0.0.1:3200"), "127.0.0.1");
        assert_eq!(host_of("[::1]:3200"), "::1");
    }
}
