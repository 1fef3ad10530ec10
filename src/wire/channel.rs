//! The handshake and the secure channel: [`connect`] (device side) and
//! [`accept`] (service side) prove both ends hold the device's transport key
//! and derive fresh per-connection keys; [`SecureChannel`] then carries
//! deflated, AES-256-GCM-sealed payloads with strictly increasing sequence
//! numbers, and splits into an independent [`SecureReader`] and
//! [`SecureWriter`] for a service that reads on one thread and writes on
//! another.
//!
//! Streams: anything `Read + Write`. For `TcpStream`, [`SecureChannel::into_split`]
//! uses `try_clone`. A TLS stream cannot be cloned; wrap it in a
//! [`SharedStream`] (one mutex, each `read`/`write` call locks it briefly) and
//! give the underlying socket a short read timeout, so that a blocked read
//! releases the lock often enough for the writer; a timed-out read is
//! resumed without loss by the reader's [`FrameReader`].
//!
//! Callers must set a read timeout on the stream: every read here can block
//! for as long as the stream lets it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use super::crypto::{self, Direction, SessionKeys, KEY_LEN};
use super::frame::{
    write_frame, Frame, FrameReader, FrameType, Header, CONFIRM_LEN, HEADER_LEN, MAX_FRAME_LEN,
    RANDOM_LEN, TAG_LEN,
};
use super::secret;
use super::status::Status;
use super::WireError;

/// The largest message (inflated payload) a channel accepts or sends.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// The largest deflated payload that fits in one `Data` frame.
pub const MAX_SEALED_PAYLOAD: usize = MAX_FRAME_LEN - HEADER_LEN - TAG_LEN;

/// Device side: runs the handshake for `pin` with `transport_key` over
/// `stream` and returns the secure channel.
///
/// Sends `Hello`, reads `Challenge` (or a `Refused`, returned as
/// [`WireError::Refused`]), checks the service's key confirmation (a
/// mismatch is [`WireError::Auth`] and nothing more is sent), then sends
/// the device's own confirmation. The device only ever reveals its
/// confirmation to a peer that has proved it holds the key.
pub fn connect<S: Read + Write>(
    stream: S,
    pin: u32,
    transport_key: &[u8; KEY_LEN],
) -> Result<SecureChannel<S>, WireError> {
    connect_with_random(stream, pin, transport_key, crypto::random_bytes()?)
}

/// [`connect`] with a given device random (for the documented worked
/// example and tests; real clients must use fresh randomness).
pub fn connect_with_random<S: Read + Write>(
    mut stream: S,
    pin: u32,
    transport_key: &[u8; KEY_LEN],
    device_random: [u8; RANDOM_LEN],
) -> Result<SecureChannel<S>, WireError> {
    let hello = Frame::new(
        Header::new(FrameType::Hello, pin, 0),
        device_random.to_vec(),
    );
    write_frame(&mut stream, &hello)?;
    let mut frames = FrameReader::new(MAX_FRAME_LEN);
    let reply = frames.read(&mut stream)?;
    let reply = match reply.header.frame_type {
        FrameType::Challenge => reply,
        FrameType::Refused => {
            let (status, text) = reply.refusal()?;
            return Err(WireError::Refused(status, text));
        }
        other => {
            return Err(WireError::BadFrame(format!(
                "expected Challenge, got {other:?}"
            )))
        }
    };
    if reply.header.pin != pin {
        return Err(WireError::BadFrame(format!(
            "Challenge for PIN {:08x}, not {pin:08x}",
            reply.header.pin
        )));
    }
    let mut service_random = [0u8; RANDOM_LEN];
    service_random.copy_from_slice(&reply.body[..RANDOM_LEN]);
    let keys = crypto::derive_keys(transport_key, pin, &device_random, &service_random)?;
    if !openssl::memcmp::eq(&keys.service_confirmation()?, &reply.body[RANDOM_LEN..]) {
        return Err(WireError::Auth);
    }
    let confirm = Frame::new(
        Header::new(FrameType::Confirm, pin, 0),
        keys.device_confirmation()?.to_vec(),
    );
    write_frame(&mut stream, &confirm)?;
    Ok(SecureChannel::new(
        stream,
        pin,
        &keys,
        Direction::DeviceToService,
        frames,
    ))
}

/// Service side: runs the handshake on `stream` and returns the secure
/// channel.
///
/// Reads `Hello`, asks `lookup` for the PIN's transport key (an `Err(status)`
/// is sent to the device as a clear `Refused` frame, e.g.
/// [`Status::UnknownDevice`] or [`Status::ConfigUnavailable`], and returned
/// as [`WireError::Refused`]), sends `Challenge`, and checks the device's
/// confirmation. Any protocol violation is answered with a `Refused`
/// [`Status::ProtocolError`] frame (best effort) before the error is
/// returned; the caller then drops the stream.
pub fn accept<S: Read + Write>(
    stream: S,
    lookup: impl FnOnce(u32) -> Result<[u8; KEY_LEN], Status>,
) -> Result<SecureChannel<S>, WireError> {
    accept_with_random(stream, lookup, crypto::random_bytes()?)
}

/// [`accept`] with a given service random (for the documented worked
/// example and tests; a real service must use fresh randomness, which is
/// what makes a recorded connection useless to replay).
pub fn accept_with_random<S: Read + Write>(
    mut stream: S,
    lookup: impl FnOnce(u32) -> Result<[u8; KEY_LEN], Status>,
    service_random: [u8; RANDOM_LEN],
) -> Result<SecureChannel<S>, WireError> {
    let mut frames = FrameReader::new(MAX_FRAME_LEN);
    let hello = match frames.read(&mut stream) {
        Ok(f) => f,
        Err(e) => {
            let pin = frames.pin_read().unwrap_or(0);
            return Err(refuse_on_violation(&mut stream, pin, e));
        }
    };
    let pin = hello.header.pin;
    if hello.header.frame_type != FrameType::Hello {
        let e = WireError::BadFrame(format!("expected Hello, got {:?}", hello.header.frame_type));
        return Err(refuse_on_violation(&mut stream, pin, e));
    }
    let transport_key = match lookup(pin) {
        Ok(k) => k,
        Err(status) => {
            let _ = write_frame(&mut stream, &Frame::refused(pin, status, status.text()));
            return Err(WireError::Refused(status, status.text().to_string()));
        }
    };
    let mut device_random = [0u8; RANDOM_LEN];
    device_random.copy_from_slice(&hello.body);
    let keys = crypto::derive_keys(&transport_key, pin, &device_random, &service_random)?;
    let mut body = service_random.to_vec();
    body.extend_from_slice(&keys.service_confirmation()?);
    write_frame(
        &mut stream,
        &Frame::new(Header::new(FrameType::Challenge, pin, 0), body),
    )?;
    let confirm = match frames.read(&mut stream) {
        Ok(f) => f,
        Err(e) => return Err(refuse_on_violation(&mut stream, pin, e)),
    };
    let check = if confirm.header.frame_type != FrameType::Confirm {
        Err(WireError::BadFrame(format!(
            "expected Confirm, got {:?}",
            confirm.header.frame_type
        )))
    } else if confirm.header.pin != pin {
        Err(WireError::BadFrame("Confirm with another PIN".into()))
    } else if !openssl::memcmp::eq(&keys.device_confirmation()?, &confirm.body[..CONFIRM_LEN]) {
        Err(WireError::Auth)
    } else {
        Ok(())
    };
    if let Err(e) = check {
        return Err(refuse_on_violation(&mut stream, pin, e));
    }
    Ok(SecureChannel::new(
        stream,
        pin,
        &keys,
        Direction::ServiceToDevice,
        frames,
    ))
}

/// Sends a clear `Refused` 308 for a protocol violation (not for a network
/// failure, where nobody would read it) and hands the error back.
fn refuse_on_violation(stream: &mut impl Write, pin: u32, e: WireError) -> WireError {
    if e.is_protocol_violation() {
        let _ = write_frame(
            stream,
            &Frame::refused(pin, Status::ProtocolError, &e.to_string()),
        );
    }
    e
}

/// The receiving state of one direction: key, expected sequence, and the
/// partial frame kept across timeouts.
struct RxState {
    key: [u8; KEY_LEN],
    dir: Direction,
    pin: u32,
    next_seq: u64,
    frames: FrameReader,
    broken: bool,
}

impl RxState {
    fn recv(&mut self, r: &mut impl Read) -> Result<Vec<u8>, WireError> {
        if self.broken {
            return Err(WireError::Protocol("channel already failed".into()));
        }
        let result = self.recv_inner(r);
        if let Err(e) = &result {
            if !matches!(e, WireError::Timeout) {
                self.broken = true;
            }
        }
        result
    }

    fn recv_with<T>(
        &mut self,
        r: &mut impl Read,
        decode: impl FnOnce(&[u8]) -> Result<T, WireError>,
    ) -> Result<T, WireError> {
        let mut payload = self.recv(r)?;
        let result = decode(&payload);
        // The payload may be a login: its password must not outlive the
        // decoded message, which owns its own copy.
        secret::wipe_vec(&mut payload);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn recv_inner(&mut self, r: &mut impl Read) -> Result<Vec<u8>, WireError> {
        let frame = self.frames.read(r)?;
        let h = frame.header;
        match h.frame_type {
            FrameType::Data => {}
            FrameType::Refused => {
                let (status, text) = frame.refusal()?;
                return Err(WireError::Refused(status, text));
            }
            other => {
                return Err(WireError::BadFrame(format!(
                    "{other:?} frame after the handshake"
                )))
            }
        }
        if h.pin != self.pin {
            return Err(WireError::BadFrame(format!(
                "frame for PIN {:08x} on the connection of {:08x}",
                h.pin, self.pin
            )));
        }
        if h.seq != self.next_seq {
            return Err(WireError::Replay {
                expected: self.next_seq,
                got: h.seq,
            });
        }
        let mut sealed = crypto::open(&self.key, self.dir, &h.to_bytes(), h.seq, &frame.body)?;
        self.next_seq += 1;
        let payload = crypto::inflate(&sealed, MAX_MESSAGE_LEN);
        secret::wipe_vec(&mut sealed);
        payload
    }
}

/// The sending state of one direction.
struct TxState {
    key: [u8; KEY_LEN],
    dir: Direction,
    pin: u32,
    next_seq: u64,
    broken: bool,
}

impl TxState {
    fn send(&mut self, w: &mut impl Write, payload: &[u8]) -> Result<(), WireError> {
        if self.broken {
            return Err(WireError::Protocol("channel already failed".into()));
        }
        let frame = self.seal(payload)?;
        let result = write_frame(w, &frame);
        if result.is_err() {
            // A partial write leaves the peer mid-frame: nothing can follow.
            self.broken = true;
        }
        result
    }

    fn seal(&mut self, payload: &[u8]) -> Result<Frame, WireError> {
        if payload.len() > MAX_MESSAGE_LEN {
            return Err(WireError::TooLarge {
                len: payload.len(),
                limit: MAX_MESSAGE_LEN,
            });
        }
        let packed = crypto::deflate(payload);
        if packed.len() > MAX_SEALED_PAYLOAD {
            return Err(WireError::TooLarge {
                len: packed.len(),
                limit: MAX_SEALED_PAYLOAD,
            });
        }
        let seq = self.next_seq;
        self.next_seq = seq
            .checked_add(1)
            .ok_or_else(|| WireError::Protocol("sequence numbers exhausted".into()))?;
        let header = Header::new(FrameType::Data, self.pin, seq);
        let body = crypto::seal(&self.key, self.dir, &header.to_bytes(), seq, &packed)?;
        Ok(Frame::new(header, body))
    }
}

/// An established connection: one stream, both directions.
pub struct SecureChannel<S> {
    stream: S,
    pin: u32,
    rx: RxState,
    tx: TxState,
}

impl<S> SecureChannel<S> {
    fn new(
        stream: S,
        pin: u32,
        keys: &SessionKeys,
        send_dir: Direction,
        frames: FrameReader,
    ) -> SecureChannel<S> {
        let recv_dir = match send_dir {
            Direction::DeviceToService => Direction::ServiceToDevice,
            Direction::ServiceToDevice => Direction::DeviceToService,
        };
        SecureChannel {
            stream,
            pin,
            rx: RxState {
                key: *keys.for_direction(recv_dir),
                dir: recv_dir,
                pin,
                next_seq: 1,
                frames,
                broken: false,
            },
            tx: TxState {
                key: *keys.for_direction(send_dir),
                dir: send_dir,
                pin,
                next_seq: 1,
                broken: false,
            },
        }
    }

    /// The device PIN this connection belongs to.
    pub fn pin(&self) -> u32 {
        self.pin
    }

    /// The underlying stream (to set timeouts or shut it down).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The underlying stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Splits into a reader and a writer over the streams that `f` makes
    /// from this one (for example a stream and its `try_clone`, or two
    /// handles of one [`SharedStream`]). Sequence numbers, keys and any
    /// partly read frame carry over.
    pub fn split<R, W>(
        self,
        f: impl FnOnce(S) -> io::Result<(R, W)>,
    ) -> Result<(SecureReader<R>, SecureWriter<W>), WireError> {
        let (r, w) = f(self.stream).map_err(WireError::Io)?;
        Ok((
            SecureReader {
                stream: r,
                rx: self.rx,
            },
            SecureWriter {
                stream: w,
                tx: self.tx,
            },
        ))
    }
}

impl<S: Read + Write> SecureChannel<S> {
    /// Deflates, seals and sends one payload (one message).
    pub fn send(&mut self, payload: &[u8]) -> Result<(), WireError> {
        self.tx.send(&mut self.stream, payload)
    }

    /// Receives, opens and inflates the next payload. A [`WireError::Timeout`]
    /// may be retried; any other error ends the channel.
    pub fn recv(&mut self) -> Result<Vec<u8>, WireError> {
        self.rx.recv(&mut self.stream)
    }

    /// Receives the next payload and decodes it with `decode`; a decoding
    /// error ends the channel like any other protocol violation.
    pub fn recv_with<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<T, WireError>,
    ) -> Result<T, WireError> {
        self.rx.recv_with(&mut self.stream, decode)
    }

    /// Sends a clear `Refused` frame (unauthenticated; it ends the
    /// connection) and stops sending.
    pub fn refuse(&mut self, status: Status, text: &str) -> Result<(), WireError> {
        self.tx.broken = true;
        write_frame(&mut self.stream, &Frame::refused(self.pin, status, text))
    }
}

impl SecureChannel<TcpStream> {
    /// Splits a TCP channel using `TcpStream::try_clone`.
    pub fn into_split(
        self,
    ) -> Result<(SecureReader<TcpStream>, SecureWriter<TcpStream>), WireError> {
        self.split(|s| {
            let w = s.try_clone()?;
            Ok((s, w))
        })
    }
}

/// The receiving half of a split channel.
pub struct SecureReader<R> {
    stream: R,
    rx: RxState,
}

impl<R: Read> SecureReader<R> {
    /// Receives the next payload; see [`SecureChannel::recv`].
    pub fn recv(&mut self) -> Result<Vec<u8>, WireError> {
        self.rx.recv(&mut self.stream)
    }

    /// Receives the next payload and decodes it with `decode`; a decoding
    /// error ends the channel like any other protocol violation.
    pub fn recv_with<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<T, WireError>,
    ) -> Result<T, WireError> {
        self.rx.recv_with(&mut self.stream, decode)
    }

    /// The device PIN of the connection.
    pub fn pin(&self) -> u32 {
        self.rx.pin
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.stream
    }

    /// Whether part of a frame has been read and the rest not yet: the
    /// next receive continues it without waiting for the socket to
    /// become readable first.
    pub fn has_partial_frame(&self) -> bool {
        self.rx.frames.has_partial_frame()
    }
}

/// The sending half of a split channel.
pub struct SecureWriter<W> {
    stream: W,
    tx: TxState,
}

impl<W: Write> SecureWriter<W> {
    /// Sends one payload; see [`SecureChannel::send`].
    pub fn send(&mut self, payload: &[u8]) -> Result<(), WireError> {
        self.tx.send(&mut self.stream, payload)
    }

    /// Sends a clear `Refused` frame and stops sending.
    pub fn refuse(&mut self, status: Status, text: &str) -> Result<(), WireError> {
        self.tx.broken = true;
        write_frame(&mut self.stream, &Frame::refused(self.tx.pin, status, text))
    }

    /// The device PIN of the connection.
    pub fn pin(&self) -> u32 {
        self.tx.pin
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.stream
    }
}

/// A stream shared by a reader and a writer thread through one mutex, for
/// streams that cannot be cloned (TLS). Each `read` or `write` call holds
/// the lock only for that call; give the socket a short read timeout so a
/// waiting reader lets the writer in.
pub struct SharedStream<S>(Arc<Mutex<S>>);

impl<S> SharedStream<S> {
    /// Wraps `stream`.
    pub fn new(stream: S) -> SharedStream<S> {
        SharedStream(Arc::new(Mutex::new(stream)))
    }

    /// Runs `f` on the stream under the lock (to set timeouts, shut down).
    pub fn with<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

impl<S> Clone for SharedStream<S> {
    fn clone(&self) -> Self {
        SharedStream(Arc::clone(&self.0))
    }
}

impl<S: Read> Read for SharedStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|s| s.read(buf))
    }
}

impl<S: Write> Write for SharedStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|s| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.with(|s| s.flush())
    }
}
