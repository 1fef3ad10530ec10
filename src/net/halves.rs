//! A connection over a [`SharedSocket`] as collabd's device link uses it:
//! timeouts, waiting for readability, close, and the split into a reading
//! and a writing half that two threads use at once. Over TLS both halves
//! share the one TLS stream behind a mutex with the socket non-blocking, so
//! OpenSSL never blocks under the lock: the reader polls without the lock
//! and the writer waits for room, bounded by the write timeout.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{SharedSocket, Stream};

/// What the device listener and the session relay need of a connection
/// beyond reading and writing.
impl Stream<SharedSocket> {
    /// A second descriptor of the socket (tests only need this; collabd
    /// itself shares one descriptor, see [`Stream::socket`]).
    pub fn try_clone_tcp(&self) -> io::Result<TcpStream> {
        self.tcp().try_clone()
    }

    /// Another handle of the socket, without a new descriptor (e.g. for a
    /// session waker that calls `shutdown(Both)` to unblock the reader).
    pub fn socket(&self) -> SharedSocket {
        match self {
            Stream::Plain(s) => s.clone(),
            Stream::Tls(s) => s.get_ref().clone(),
        }
    }

    /// Wait up to `timeout` for the socket to become readable (data, EOF or
    /// an error), without reading.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        poll_fd(self.tcp().as_raw_fd(), libc::POLLIN, Some(timeout))
    }

    /// Split into a reading and a writing half usable from two threads (see
    /// the module documentation). Timeouts stay those of the socket. Both
    /// halves use the one socket: no descriptor is added.
    pub fn into_halves(self) -> io::Result<(ReadHalf, WriteHalf)> {
        match self {
            Stream::Plain(s) => Ok((ReadHalf::Plain(s.clone()), WriteHalf::Plain(s))),
            Stream::Tls(s) => {
                let socket = s.get_ref().clone();
                // From now on OpenSSL never blocks under the lock: a read
                // that finds only part of a record returns WANT_READ and
                // the reader waits for the rest without the lock; a write
                // that finds the send buffer full waits for room, bounded
                // by the write timeout (see `WriteHalf::write`).
                socket.set_nonblocking(true)?;
                let shared = Arc::new(Mutex::new(*s));
                Ok((
                    ReadHalf::Tls {
                        shared: Arc::clone(&shared),
                        socket,
                        buffer: Vec::new(),
                        start: 0,
                    },
                    WriteHalf::Tls(shared),
                ))
            }
        }
    }

    /// Close: TLS close_notify (best effort), then TCP shutdown both ways.
    pub fn shutdown(&mut self) -> io::Result<()> {
        if let Stream::Tls(s) = self {
            let _ = s.shutdown();
        }
        self.tcp().shutdown(Shutdown::Both)
    }
}

/// Whether `socket` becomes readable (data, end of stream or an error)
/// within `timeout`; false on a poll error too (the read that follows
/// reports it).
pub fn readable_within(socket: &TcpStream, timeout: Duration) -> bool {
    poll_fd(socket.as_raw_fd(), libc::POLLIN, Some(timeout)).unwrap_or(false)
}

/// Whether `socket` is open with nothing to read: no data, no end of
/// stream, no error. One non-blocking peek (`MSG_DONTWAIT`), leaving the
/// socket's own blocking mode alone: switching it there and back cost two
/// more system calls on every pooled request.
pub fn nothing_to_read(socket: &TcpStream) -> bool {
    let mut byte = 0u8;
    loop {
        // SAFETY: a one-byte buffer we own, on a socket we own.
        let rc = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if rc >= 0 {
            return false;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => continue,
            e => return e == io::ErrorKind::WouldBlock,
        }
    }
}

/// Wait up to `timeout` (forever if `None`) for `events` on `fd`. Ok(false)
/// if the time ran out.
pub(crate) fn poll_fd(
    fd: std::os::unix::io::RawFd,
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = match timeout {
        Some(t) => t.as_millis().clamp(1, i32::MAX as u128) as libc::c_int,
        None => -1,
    };
    loop {
        // SAFETY: one valid pollfd for a socket we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Time left until `deadline`, or a timeout error.
fn left_until(deadline: Option<Instant>, what: &str) -> io::Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} timed out"),
                ))
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// A TLS record's largest plaintext: reading this much at once drains a
/// record from OpenSSL.
const TLS_RECORD: usize = 16 * 1024;

/// The reading half of a [`Stream`].
pub enum ReadHalf {
    /// A handle of the plain socket.
    Plain(SharedSocket),
    /// The shared TLS stream (its socket non-blocking), a handle of the
    /// socket to poll, and decrypted bytes not yet handed out
    /// (`buffer[start..]`).
    Tls {
        /// The TLS stream, shared with the writing half.
        shared: Arc<Mutex<native_tls::TlsStream<SharedSocket>>>,
        /// For `poll` and the read timeout.
        socket: SharedSocket,
        /// Decrypted bytes read ahead.
        buffer: Vec<u8>,
        /// How much of `buffer` was already handed out.
        start: usize,
    },
}

impl ReadHalf {
    /// The socket underneath (timeouts, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ReadHalf::Plain(s) => s,
            ReadHalf::Tls { socket, .. } => socket,
        }
    }

    /// Whether bytes already read from the socket wait to be handed out
    /// (decrypted TLS application data; OpenSSL itself keeps none, since
    /// each read takes a whole record's plaintext).
    pub fn has_buffered(&self) -> bool {
        match self {
            ReadHalf::Plain(_) => false,
            ReadHalf::Tls { buffer, start, .. } => *start < buffer.len(),
        }
    }

    /// Another handle of the socket, without a new descriptor.
    pub fn socket(&self) -> SharedSocket {
        match self {
            ReadHalf::Plain(s) => s.clone(),
            ReadHalf::Tls { socket, .. } => socket.clone(),
        }
    }
}

impl fmt::Debug for ReadHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadHalf::Plain(s) => f.debug_tuple("ReadHalf::Plain").field(s).finish(),
            ReadHalf::Tls { socket, .. } => f.debug_tuple("ReadHalf::Tls").field(socket).finish(),
        }
    }
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadHalf::Plain(s) => s.read(buf),
            ReadHalf::Tls {
                shared,
                socket,
                buffer,
                start,
            } => {
                if *start == buffer.len() {
                    let deadline = socket.read_timeout()?.map(|t| Instant::now() + t);
                    buffer.resize(TLS_RECORD, 0);
                    let n = loop {
                        // Wait without the lock: the writer may send while
                        // the device is silent or mid-record.
                        let wait = left_until(deadline, "read")
                            .and_then(|left| poll_fd(socket.as_raw_fd(), libc::POLLIN, left));
                        match wait {
                            Ok(true) => {}
                            Ok(false) => {
                                buffer.clear();
                                *start = 0;
                                return Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "read timed out",
                                ));
                            }
                            Err(e) => {
                                buffer.clear();
                                *start = 0;
                                return Err(e);
                            }
                        }
                        let read = {
                            let mut tls = shared.lock().unwrap_or_else(|p| p.into_inner());
                            tls.read(buffer)
                        };
                        match read {
                            Ok(n) => break n,
                            // Only part of a record (or a record with no
                            // application data) was there: wait for more.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                buffer.clear();
                                *start = 0;
                                return Err(e);
                            }
                        }
                    };
                    buffer.truncate(n);
                    *start = 0;
                    if n == 0 {
                        return Ok(0);
                    }
                }
                let n = buf.len().min(buffer.len() - *start);
                buf[..n].copy_from_slice(&buffer[*start..*start + n]);
                *start += n;
                Ok(n)
            }
        }
    }
}

/// The writing half of a [`Stream`].
pub enum WriteHalf {
    /// A handle of the plain socket.
    Plain(SharedSocket),
    /// The shared TLS stream (its socket non-blocking).
    Tls(Arc<Mutex<native_tls::TlsStream<SharedSocket>>>),
}

impl fmt::Debug for WriteHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteHalf::Plain(_) => "WriteHalf::Plain",
            WriteHalf::Tls(_) => "WriteHalf::Tls",
        })
    }
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(s) => s.write(buf),
            WriteHalf::Tls(t) => {
                let mut tls = t.lock().unwrap_or_else(|p| p.into_inner());
                let socket = tls.get_ref().clone();
                let deadline = socket.write_timeout()?.map(|t| Instant::now() + t);
                loop {
                    match tls.write(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            // The send buffer is full: wait for room, the
                            // lock held (OpenSSL wants the same write
                            // retried); the reader only waits for it while
                            // it has a whole record to read.
                            let left = left_until(deadline, "write")?;
                            if !poll_fd(socket.as_raw_fd(), libc::POLLOUT, left)? {
                                return Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "write timed out",
                                ));
                            }
                            // Room, yet OpenSSL may want to read first (a
                            // renegotiation): do not spin on it.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        other => return other,
                    }
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(s) => s.flush(),
            WriteHalf::Tls(t) => t.lock().unwrap_or_else(|p| p.into_inner()).flush(),
        }
    }
}
