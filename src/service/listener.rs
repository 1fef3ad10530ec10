//! The device-link listener: one accept thread, one thread per connection,
//! optional TLS (native-tls), a deadline for signing in, a cap on
//! connections that have not signed in yet, and a graceful shutdown.
//!
//! What it guarantees, whatever the handler does:
//!
//! - **Every read and write has a timeout.** `read_timeout` is set on the
//!   socket before the TLS handshake, as read and write timeout; the handler
//!   may change it after sign-in (e.g. to the device status timeout).
//! - **Signing in has a deadline.** Each connection gets a
//!   [`PendingPermit`] and a deadline `handshake_timeout` after accept. A
//!   watchdog thread shuts the socket down (both ways) if the permit is still
//!   held at the deadline, so a client that sends nothing, sends garbage
//!   slowly, or stalls mid-frame is dropped even if each single read is
//!   within `read_timeout`; its handler's next read fails, it returns, and
//!   the permit is freed. The handler calls [`PendingPermit::release`] once
//!   the login is accepted (from then on the session table bounds it).
//! - **At most `max_unauthenticated` connections hold a permit.** A
//!   connection accepted beyond that is closed at once by the accept
//!   thread: nothing is sent (no TLS handshake, no bytes; the peer sees the
//!   connection closed), because the listener does not speak the device
//!   protocol and must not spend work on a flood; only if the caller gave
//!   an overflow reply ([`Listener::with_overflow_reply`]) is that written,
//!   without blocking, before the close. The count of such
//!   connections is in [`Server::rejected`].
//! - **Threads have small, explicit stacks** (`thread_stack_size`, default
//!   256 KiB: enough for an OpenSSL handshake, deflate and the XML parser;
//!   only the pages touched become resident). A failure to start a thread
//!   (e.g. systemd's `TasksMax`) closes that connection and is logged;
//!   `accept` errors such as `EMFILE` pause the accept loop for 100 ms
//!   instead of spinning.
//! - **Shutdown ends.** [`ShutdownHandle::stop_accepting`] sets a flag and
//!   connects to the listener itself to wake the blocked `accept` (std has
//!   no way to interrupt it; tiny_http does the same). [`Server::stop`]
//!   then gives live connections a grace period to finish (the caller has
//!   already told sessions to end), shuts down the sockets still open
//!   (a `try_clone` of each is kept for this), and waits up to a hard
//!   deadline; threads still running after that are reported, not joined.
//!
//! A panic in a handler is caught and logged; the connection is closed and
//! its permit freed.
//!
//! A session reads device frames on one thread while another writes events
//! to the device: [`Stream::into_halves`] splits the connection for that.
//! A plain connection splits into two handles of the socket. A TLS
//! connection cannot be read and written from two threads at once (OpenSSL
//! forbids it), so its halves share it behind a mutex: the reader waits
//! for the socket to become readable *without* the lock (`poll(2)`, bounded
//! by the socket's read timeout), then takes the lock and reads a whole TLS
//! record into its own 16 KiB buffer, so no decrypted data is ever left
//! inside OpenSSL unseen by `poll`. A writer thus waits at most for one
//! record being read, never for the device to speak.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use native_tls::TlsAcceptor;

/// Why the listener could not start.
#[derive(Debug)]
pub enum ListenerError {
    /// The address could not be bound.
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating system's reason.
        source: io::Error,
    },
    /// Another socket operation failed.
    Io(io::Error),
    /// The accept or watchdog thread could not be started.
    Spawn(io::Error),
    /// The TLS identity could not be loaded.
    Tls(String),
    /// A limit is unusable (e.g. zero).
    BadLimits(&'static str),
}

impl fmt::Display for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ListenerError::Io(e) => write!(f, "listener socket: {e}"),
            ListenerError::Spawn(e) => write!(f, "cannot start listener thread: {e}"),
            ListenerError::Tls(why) => write!(f, "TLS identity: {why}"),
            ListenerError::BadLimits(why) => write!(f, "listener limits: {why}"),
        }
    }
}

impl std::error::Error for ListenerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenerError::Bind { source, .. } => Some(source),
            ListenerError::Io(e) | ListenerError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Bounds on connections and their threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections that have not signed in yet (hold a [`PendingPermit`]);
    /// one more is closed at once.
    pub max_unauthenticated: usize,
    /// From accept to [`PendingPermit::release`]: TLS handshake, device
    /// handshake and login must fit in it.
    pub handshake_timeout: Duration,
    /// Timeout of every single read and write, set before the TLS
    /// handshake.
    pub read_timeout: Duration,
    /// Stack size of each connection thread, in bytes.
    pub thread_stack_size: usize,
}

impl Default for ListenerLimits {
    fn default() -> ListenerLimits {
        ListenerLimits {
            max_unauthenticated: 256,
            handshake_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
            thread_stack_size: 256 * 1024,
        }
    }
}

/// A device-link connection, plain or TLS ([`crate::net::Stream`]).
pub use crate::net::Stream;

/// What the device listener needs of a connection beyond reading and
/// writing.
impl Stream {
    /// Set the timeout of every read (never `None`: every read is bounded).
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.tcp().set_read_timeout(Some(timeout))
    }

    /// Set the timeout of every write.
    pub fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.tcp().set_write_timeout(Some(timeout))
    }

    /// A second handle to the socket, e.g. for a session waker that calls
    /// `shutdown(Both)` to unblock this connection's reader.
    pub fn try_clone_tcp(&self) -> io::Result<TcpStream> {
        self.tcp().try_clone()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Wait up to `timeout` for the socket to become readable (data, EOF or
    /// an error), without reading.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        poll_readable(self.tcp().as_raw_fd(), Some(timeout))
    }

    /// Split into a reading and a writing half usable from two threads (see
    /// the module documentation). Timeouts stay those of the socket.
    pub fn into_halves(self) -> io::Result<(ReadHalf, WriteHalf)> {
        match self {
            Stream::Plain(s) => {
                let w = s.try_clone()?;
                Ok((ReadHalf::Plain(s), WriteHalf::Plain(w)))
            }
            Stream::Tls(s) => {
                let socket = s.get_ref().try_clone()?;
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

fn poll_readable(fd: std::os::unix::io::RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
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

/// A TLS record's largest plaintext: reading this much at once drains a
/// record from OpenSSL.
const TLS_RECORD: usize = 16 * 1024;

/// The reading half of a [`Stream`].
pub enum ReadHalf {
    /// A handle of the plain socket.
    Plain(TcpStream),
    /// The shared TLS stream, a socket handle to poll, and decrypted bytes
    /// not yet handed out (`buffer[start..]`).
    Tls {
        /// The TLS stream, shared with the writing half.
        shared: Arc<Mutex<native_tls::TlsStream<TcpStream>>>,
        /// For `poll` and the read timeout.
        socket: TcpStream,
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
                    if !poll_readable(socket.as_raw_fd(), socket.read_timeout()?)? {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
                    }
                    buffer.resize(TLS_RECORD, 0);
                    let n = {
                        let mut tls = shared.lock().unwrap_or_else(|p| p.into_inner());
                        tls.read(buffer)
                    };
                    let n = match n {
                        Ok(n) => n,
                        Err(e) => {
                            buffer.clear();
                            *start = 0;
                            return Err(e);
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
    Plain(TcpStream),
    /// The shared TLS stream.
    Tls(Arc<Mutex<native_tls::TlsStream<TcpStream>>>),
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
            WriteHalf::Tls(t) => t.lock().unwrap_or_else(|p| p.into_inner()).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(s) => s.flush(),
            WriteHalf::Tls(t) => t.lock().unwrap_or_else(|p| p.into_inner()).flush(),
        }
    }
}

/// A connection handed to the handler.
pub struct Incoming {
    /// The connection (TLS already established if configured).
    pub stream: Stream,
    /// Who connected.
    pub peer: SocketAddr,
    /// Held until the login is accepted; see [`PendingPermit::release`].
    pub permit: PendingPermit,
}

/// What the listener calls, on the connection's own thread, for each
/// connection. When it returns, the connection is closed.
pub type Handler = Arc<dyn Fn(Incoming) + Send + Sync>;

/// A place among the `max_unauthenticated` connections that have not
/// signed in. Dropping it (or [`release`](PendingPermit::release)) frees the
/// place and lifts the sign-in deadline.
pub struct PendingPermit {
    shared: Arc<Shared>,
    conn: u64,
    accepted: Instant,
    sign_in_deadline: Instant,
}

impl PendingPermit {
    /// The login was accepted: this connection no longer counts against
    /// `max_unauthenticated` and is no longer cut at the sign-in deadline.
    pub fn release(self) {
        drop(self);
    }

    /// When the connection was accepted.
    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    /// `handshake_timeout` after accept: the latest the connection may
    /// hold this permit.
    pub fn sign_in_deadline(&self) -> Instant {
        self.sign_in_deadline
    }

    /// Move the instant at which the watchdog cuts the connection if it
    /// still holds this permit (e.g. a shorter deadline for one step of
    /// the handshake); never later than [`sign_in_deadline`](Self::sign_in_deadline).
    pub fn cut_at(&self, at: Instant) {
        let at = at.min(self.sign_in_deadline);
        if let Some(record) = self.shared.lock().map.get_mut(&self.conn) {
            record.deadline = Some(at);
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut conns = self.shared.lock();
        conns.pending -= 1;
        if let Some(record) = conns.map.get_mut(&self.conn) {
            record.deadline = None;
        }
        drop(conns);
        self.shared.changed.notify_all();
    }
}

impl fmt::Debug for PendingPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PendingPermit(conn {})", self.conn)
    }
}

struct Record {
    socket: TcpStream,
    deadline: Option<Instant>,
}

struct Conns {
    next_id: u64,
    map: HashMap<u64, Record>,
    pending: usize,
    /// Set when the server has stopped; ends the watchdog.
    finished: bool,
}

struct Shared {
    stopping: AtomicBool,
    rejected: AtomicU64,
    conns: Mutex<Conns>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a connection's record when its thread ends (also on panic).
struct ConnGuard {
    shared: Arc<Shared>,
    conn: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.lock().map.remove(&self.conn);
        self.shared.changed.notify_all();
    }
}

/// A bound listening socket, not yet accepting.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    limits: ListenerLimits,
    local_addr: SocketAddr,
    overflow_reply: Option<Arc<[u8]>>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Listener {
    /// Bind `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub fn bind(
        addr: impl ToSocketAddrs + fmt::Display,
        tls: Option<TlsAcceptor>,
        limits: ListenerLimits,
    ) -> Result<Listener, ListenerError> {
        let tcp = TcpListener::bind(&addr).map_err(|source| ListenerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        Listener::from_std(tcp, tls, limits)
    }

    /// Use an already bound socket (e.g. one passed by systemd).
    pub fn from_std(
        tcp: TcpListener,
        tls: Option<TlsAcceptor>,
        limits: ListenerLimits,
    ) -> Result<Listener, ListenerError> {
        if limits.max_unauthenticated == 0 {
            return Err(ListenerError::BadLimits(
                "max_unauthenticated must be at least 1",
            ));
        }
        if limits.handshake_timeout.is_zero() || limits.read_timeout.is_zero() {
            return Err(ListenerError::BadLimits("timeouts must be positive"));
        }
        if limits.thread_stack_size < 64 * 1024 {
            return Err(ListenerError::BadLimits(
                "thread stack must be at least 64 KiB",
            ));
        }
        tcp.set_nonblocking(false).map_err(ListenerError::Io)?;
        let local_addr = tcp.local_addr().map_err(ListenerError::Io)?;
        Ok(Listener {
            tcp,
            tls: tls.map(Arc::new),
            limits,
            local_addr,
            overflow_reply: None,
        })
    }

    /// Bytes to write, best effort and without blocking, to a connection
    /// closed because `max_unauthenticated` was reached (collabd gives a
    /// clear `Refused` 301 frame, so a dispatcher tries another instance at
    /// once). Without it such a connection is closed in silence.
    pub fn with_overflow_reply(mut self, bytes: Vec<u8>) -> Listener {
        self.overflow_reply = Some(bytes.into());
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Start the accept thread and the sign-in watchdog; each accepted
    /// connection gets its own thread that runs `handler`.
    pub fn serve(self, handler: Handler) -> Result<Server, ListenerError> {
        let local_addr = self.local_addr;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            conns: Mutex::new(Conns {
                next_id: 1,
                map: HashMap::new(),
                pending: 0,
                finished: false,
            }),
            changed: Condvar::new(),
        });
        let watchdog = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("signin-watchdog".into())
                .stack_size(64 * 1024)
                .spawn(move || watchdog_loop(&shared))
                .map_err(ListenerError::Spawn)?
        };
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("accept".into())
                .stack_size(128 * 1024)
                .spawn(move || accept_loop(self, &shared, handler))
        };
        let accept = match accept {
            Ok(handle) => handle,
            Err(e) => {
                shared.lock().finished = true;
                shared.changed.notify_all();
                let _ = watchdog.join();
                return Err(ListenerError::Spawn(e));
            }
        };
        Ok(Server {
            wake_addr: self_connect_addr(local_addr),
            local_addr,
            shared,
            accept: Some(accept),
            watchdog: Some(watchdog),
        })
    }
}

/// Where to connect to wake our own `accept`: the bound address, with an
/// unspecified IP replaced by loopback of the same family.
fn self_connect_addr(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

fn accept_loop(listener: Listener, shared: &Arc<Shared>, handler: Handler) {
    let limits = listener.limits.clone();
    loop {
        let accepted = listener.tcp.accept();
        if shared.stopping.load(Ordering::Acquire) {
            break;
        }
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        log::warn!("accept: {e}; pausing 100 ms");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    _ => log::debug!("accept: {e}"),
                }
                continue;
            }
        };
        // Admit into the unauthenticated set, or close at once.
        let accepted = Instant::now();
        let sign_in_deadline = accepted + limits.handshake_timeout;
        let conn = {
            let mut conns = shared.lock();
            if conns.pending >= limits.max_unauthenticated {
                drop(conns);
                let n = shared.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                log::debug!(
                    "{peer}: closed, {} connections not yet signed in (cap); {n} so far",
                    limits.max_unauthenticated
                );
                if let Some(reply) = &listener.overflow_reply {
                    // Never wait on a flood: a full socket buffer drops it.
                    if socket.set_nonblocking(true).is_ok() {
                        let _ = (&socket).write(reply);
                    }
                }
                drop(socket);
                continue;
            }
            let clone = match socket.try_clone() {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("{peer}: cannot clone socket: {e}");
                    continue;
                }
            };
            let conn = conns.next_id;
            conns.next_id += 1;
            conns.pending += 1;
            conns.map.insert(
                conn,
                Record {
                    socket: clone,
                    deadline: Some(sign_in_deadline),
                },
            );
            conn
        };
        shared.changed.notify_all();
        let permit = PendingPermit {
            shared: Arc::clone(shared),
            conn,
            accepted,
            sign_in_deadline,
        };
        let guard = ConnGuard {
            shared: Arc::clone(shared),
            conn,
        };
        let tls = listener.tls.clone();
        let handler = Arc::clone(&handler);
        let read_timeout = limits.read_timeout;
        let spawned = std::thread::Builder::new()
            .name("device-conn".into())
            .stack_size(limits.thread_stack_size)
            .spawn(move || {
                let _guard = guard;
                run_connection(socket, peer, tls, read_timeout, permit, &handler);
            });
        if let Err(e) = spawned {
            // The closure (socket, permit, guard) was dropped: the
            // connection is closed and its records are gone.
            log::warn!("{peer}: cannot start connection thread: {e}");
        }
    }
    log::debug!("accept loop on {} stopped", listener.local_addr);
}

fn run_connection(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<TlsAcceptor>>,
    read_timeout: Duration,
    permit: PendingPermit,
    handler: &Handler,
) {
    let prepared = socket
        .set_read_timeout(Some(read_timeout))
        .and_then(|()| socket.set_write_timeout(Some(read_timeout)))
        .and_then(|()| socket.set_nodelay(true));
    if let Err(e) = prepared {
        log::debug!("{peer}: cannot set socket options: {e}");
        return;
    }
    let stream = match tls {
        None => Stream::Plain(socket),
        Some(acceptor) => match acceptor.accept(socket) {
            Ok(tls) => Stream::Tls(Box::new(tls)),
            Err(native_tls::HandshakeError::Failure(e)) => {
                log::debug!("{peer}: TLS handshake failed: {e}");
                return;
            }
            Err(native_tls::HandshakeError::WouldBlock(_)) => {
                log::debug!("{peer}: TLS handshake timed out");
                return;
            }
        },
    };
    let incoming = Incoming {
        stream,
        peer,
        permit,
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(incoming)));
    if outcome.is_err() {
        log::error!("{peer}: connection handler panicked; connection closed");
    }
}

fn watchdog_loop(shared: &Shared) {
    let mut conns = shared.lock();
    loop {
        if conns.finished {
            return;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (id, record) in conns.map.iter_mut() {
            match record.deadline {
                Some(deadline) if deadline <= now => {
                    log::debug!("connection {id}: not signed in by its deadline; closing");
                    let _ = record.socket.shutdown(Shutdown::Both);
                    record.deadline = None;
                }
                Some(deadline) => next = Some(next.map_or(deadline, |n: Instant| n.min(deadline))),
                None => {}
            }
        }
        conns = match next {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(now);
                shared
                    .changed
                    .wait_timeout(conns, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => shared
                .changed
                .wait(conns)
                .unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// Stops the accept loop from any thread (e.g. the signal thread).
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
    wake_addr: SocketAddr,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("wake_addr", &self.wake_addr)
            .field("stopping", &self.is_stopping())
            .finish()
    }
}

impl ShutdownHandle {
    /// Stop accepting: set the flag, then connect to ourselves so the
    /// blocked `accept` returns and sees it. Idempotent.
    pub fn stop_accepting(&self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Failure only means accept is not blocked (already ended).
        let _ = TcpStream::connect_timeout(&self.wake_addr, Duration::from_secs(5));
    }

    /// Whether shutdown has started.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }
}

/// What [`Server::stop`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open after the grace period, whose sockets were
    /// shut down.
    pub forced: usize,
    /// Connection threads still running at the hard deadline (left to end
    /// on their own or with the process).
    pub still_running: usize,
}

/// A running listener.
pub struct Server {
    local_addr: SocketAddr,
    wake_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.connections())
            .finish()
    }
}

impl Server {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the accept loop.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
            wake_addr: self.wake_addr,
        }
    }

    /// Open connections (threads running).
    pub fn connections(&self) -> usize {
        self.shared.lock().map.len()
    }

    /// Connections that have not signed in.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending
    }

    /// Connections closed at once because `max_unauthenticated` was reached.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    /// Whether the accept thread is still running (a health check for the
    /// watchdog notification).
    pub fn is_accepting(&self) -> bool {
        self.accept.as_ref().is_some_and(|h| !h.is_finished())
            && !self.shared.stopping.load(Ordering::Acquire)
    }

    /// Stop: stop accepting, wait up to `grace` for connections to end by
    /// themselves, shut down the sockets still open, then wait up to
    /// `hard_deadline` more for their threads.
    pub fn stop(mut self, grace: Duration, hard_deadline: Duration) -> ShutdownReport {
        self.shutdown_handle().stop_accepting();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let mut conns = self.wait_empty(self.shared.lock(), grace);
        let forced = conns.map.len();
        for record in conns.map.values() {
            let _ = record.socket.shutdown(Shutdown::Both);
        }
        conns = self.wait_empty(conns, hard_deadline);
        let still_running = conns.map.len();
        conns.finished = true;
        drop(conns);
        self.shared.changed.notify_all();
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        ShutdownReport {
            forced,
            still_running,
        }
    }

    fn wait_empty<'a>(
        &'a self,
        mut conns: MutexGuard<'a, Conns>,
        limit: Duration,
    ) -> MutexGuard<'a, Conns> {
        let deadline = Instant::now() + limit;
        while !conns.map.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            conns = self
                .shared
                .changed
                .wait_timeout(conns, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        conns
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server dropped without `stop` still stops accepting and lets
        // the watchdog end; open connections keep running to completion.
        if self.accept.is_some() {
            self.shutdown_handle().stop_accepting();
            if let Some(accept) = self.accept.take() {
                let _ = accept.join();
            }
        }
        if let Some(watchdog) = self.watchdog.take() {
            self.shared.lock().finished = true;
            self.shared.changed.notify_all();
            let _ = watchdog.join();
        }
    }
}

/// Build a TLS acceptor from a PEM certificate chain and a PEM private key
/// (PKCS#8, or traditional RSA/EC, which is converted). TLS 1.2 is the
/// minimum.
pub fn tls_acceptor_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<TlsAcceptor, ListenerError> {
    let key = openssl::pkey::PKey::private_key_from_pem(key_pem)
        .map_err(|e| ListenerError::Tls(format!("private key is not a PEM key: {e}")))?;
    let pkcs8 = key
        .private_key_to_pem_pkcs8()
        .map_err(|e| ListenerError::Tls(format!("cannot convert private key: {e}")))?;
    let identity = native_tls::Identity::from_pkcs8(cert_pem, &pkcs8)
        .map_err(|e| ListenerError::Tls(format!("certificate and key unusable: {e}")))?;
    TlsAcceptor::builder(identity)
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .build()
        .map_err(|e| ListenerError::Tls(e.to_string()))
}

/// [`tls_acceptor_from_pem`] from two files.
pub fn load_tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, ListenerError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| ListenerError::Tls(format!("{}: {e}", path.display())))
    };
    tls_acceptor_from_pem(&read(cert_file)?, &read(key_file)?)
}
