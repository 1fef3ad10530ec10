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
//! - **Threads have small, explicit stacks** (`thread_stack_size`:
//!   collabd's `thread_stack_kib` gives 512 KiB; [`ListenerLimits`]'s own
//!   default, for tests, 256 KiB; enough for an OpenSSL handshake, deflate
//!   and the XML parser; only the pages touched become resident). A failure to start a thread
//!   (e.g. systemd's `TasksMax`) closes that connection and is logged;
//!   `accept` errors such as `EMFILE` pause the accept loop for 100 ms
//!   instead of spinning.
//! - **Shutdown ends.** [`ShutdownHandle::stop_accepting`] sets a flag and
//!   connects to the listener itself to wake the blocked `accept` (std has
//!   no way to interrupt it; tiny_http does the same). [`Server::stop`]
//!   then gives live connections a grace period to finish (the caller has
//!   already told sessions to end), shuts down the sockets still open
//!   (the listener keeps a handle of each), and waits up to a hard
//!   deadline; threads still running after that are reported, not joined.
//! - **One descriptor per connection.** The socket is a [`SharedSocket`]:
//!   the listener's handle, the reading and writing halves and a session's
//!   [`Closer`] share it; none duplicates the descriptor.
//! - **What was sent last arrives.** When the handler returns, the sending
//!   side is shut down and what the peer still sends is read and discarded
//!   until it closes, for at most [`LINGER`] and [`LINGER_BYTES`]; only then
//!   is the socket closed. Closing with unread input would answer the peer
//!   with a reset, which can destroy a refusal or last message before the
//!   peer (or a relay in between) reads it. A session ending the
//!   connection from another thread does the same through its [`Closer`].
//!
//! A panic in a handler is caught and logged; the connection is closed and
//! its permit freed.
//!
//! A session reads device frames on one thread while another writes events
//! to the device: [`Stream::into_halves`] splits the connection for that.
//! A plain connection splits into two handles of the socket. A TLS
//! connection cannot be read and written from two threads at once (OpenSSL
//! forbids it), so its halves share it behind a mutex, over a socket made
//! non-blocking: the reader waits for the socket to become readable
//! *without* the lock (`poll(2)`, bounded by the socket's read timeout),
//! then takes the lock and reads into its own 16 KiB buffer (a whole
//! record, so no decrypted data is ever left inside OpenSSL unseen by
//! `poll`); if only part of a record has arrived (a slow device), OpenSSL
//! returns at once, the lock is let go and the reader polls again. A
//! writer thus waits at most for one record being decrypted, never for the
//! device to speak or to finish a record.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
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

/// A device-link connection, plain or TLS ([`crate::net::Stream`]) over
/// one socket that its halves and the listener's shutdown handle share
/// (one descriptor per connection, not one per handle).
pub type Stream = crate::net::Stream<SharedSocket>;

use crate::net::poll_fd;
pub use crate::net::SharedSocket;
pub use crate::net::{ReadHalf, WriteHalf};

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
        {
            let mut conns = self.shared.lock();
            if conns.map.contains_key(&self.conn) {
                conns.deadlines.insert(self.conn, at);
            }
        }
        self.shared.changed.notify_all();
    }

    /// A handle that ends this connection gracefully from another thread
    /// (see [`Closer`]); it stays usable after the permit is released.
    pub fn closer(&self) -> Closer {
        Closer {
            shared: Arc::clone(&self.shared),
            conn: self.conn,
        }
    }
}

/// Ends a connection from another thread (a session's finisher) so that
/// the peer reads everything sent before: the sending side is shut down
/// (the peer reads the last message, then end of stream) while the
/// connection's own thread keeps reading, and the listener's watchdog shuts
/// the socket down both ways [`LINGER`] later if the peer has not closed by
/// then. Closing both ways at once instead would discard what the peer
/// still had in flight and answer it with a reset, which can destroy the
/// last message before the peer (or a relay in between) reads it.
#[derive(Clone)]
pub struct Closer {
    shared: Arc<Shared>,
    conn: u64,
}

impl fmt::Debug for Closer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Closer(conn {})", self.conn)
    }
}

impl Closer {
    /// Shut the sending side down now and the whole socket down after
    /// [`LINGER`] unless the connection has ended by then.
    pub fn close_gracefully(&self) {
        let mut conns = self.shared.lock();
        let Some(socket) = conns.map.get(&self.conn).cloned() else {
            return;
        };
        let _ = socket.shutdown(Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        let entry = conns.deadlines.entry(self.conn).or_insert(deadline);
        *entry = (*entry).min(deadline);
        drop(conns);
        self.shared.changed.notify_all();
    }

    /// Shut the socket down both ways now (the peer is gone or replaced).
    pub fn close_now(&self) {
        if let Some(socket) = self.shared.lock().map.get(&self.conn) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// How long a connection being closed keeps reading (and discarding) what
/// the peer still sends, so that the peer gets our last message and an
/// orderly end instead of a reset; and at most how much it reads.
pub const LINGER: Duration = Duration::from_secs(2);
/// See [`LINGER`].
pub const LINGER_BYTES: usize = 1 << 20;

/// After the handler: shut the sending side down, then read and discard
/// what the peer still sends until it closes, for at most [`LINGER`] and
/// [`LINGER_BYTES`]; the caller then closes the socket. Works on the bare
/// socket (blocking or not, whatever TLS state is left).
#[inline(never)]
fn linger_close(socket: &TcpStream) {
    let _ = socket.shutdown(Shutdown::Write);
    let fd = socket.as_raw_fd();
    let deadline = Instant::now() + LINGER;
    let mut drained = 0usize;
    let mut scratch = [0u8; 4096];
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !matches!(poll_fd(fd, libc::POLLIN, Some(left)), Ok(true)) {
            return;
        }
        // SAFETY: reads into our own buffer from a socket we hold.
        let n = unsafe {
            libc::recv(
                fd,
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return,
            n if n > 0 => drained += n as usize,
            _ => {
                let err = io::Error::last_os_error();
                if !matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    return;
                }
            }
        }
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut conns = self.shared.lock();
        conns.pending -= 1;
        conns.deadlines.remove(&self.conn);
        drop(conns);
        self.shared.changed.notify_all();
    }
}

impl fmt::Debug for PendingPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PendingPermit(conn {})", self.conn)
    }
}

struct Conns {
    next_id: u64,
    /// Every open connection's socket (a handle of the one descriptor),
    /// for the watchdog, [`Closer`] and [`Server::stop`].
    map: HashMap<u64, SharedSocket>,
    /// When to shut a connection down both ways: the sign-in deadline of
    /// connections holding a permit, the end of a graceful close's
    /// [`LINGER`]. Kept apart from `map` so that the watchdog looks at
    /// these few, not at every signed-in connection.
    deadlines: HashMap<u64, Instant>,
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
        let mut conns = self.shared.lock();
        conns.map.remove(&self.conn);
        conns.deadlines.remove(&self.conn);
        drop(conns);
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
                deadlines: HashMap::new(),
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
            wake_addr: crate::net::local_connect_addr(local_addr),
            local_addr,
            shared,
            accept: Some(accept),
            watchdog: Some(watchdog),
        })
    }
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
            let conn = conns.next_id;
            conns.next_id += 1;
            conns.pending += 1;
            let socket = SharedSocket::new(socket);
            conns.map.insert(conn, socket.clone());
            conns.deadlines.insert(conn, sign_in_deadline);
            (conn, socket)
        };
        let (conn, socket) = conn;
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
    socket: SharedSocket,
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
        None => Stream::Plain(socket.clone()),
        Some(acceptor) => match accept_tls(&acceptor, &socket, peer) {
            Some(tls) => tls,
            None => return,
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
    // Whatever the handler last sent (a refusal, a last word) reaches the
    // peer even if it was still sending: see `linger_close`.
    linger_close(&socket);
}

/// The TLS handshake of a device connection, in a frame of its own: the
/// connection thread serves the link for hours after it, and keeps
/// resident only the frames still live.
#[inline(never)]
fn accept_tls(acceptor: &TlsAcceptor, socket: &SharedSocket, peer: SocketAddr) -> Option<Stream> {
    match acceptor.accept(socket.clone()) {
        Ok(tls) => Some(Stream::Tls(Box::new(tls))),
        Err(native_tls::HandshakeError::Failure(e)) => {
            log::debug!("{peer}: TLS handshake failed: {e}");
            None
        }
        Err(native_tls::HandshakeError::WouldBlock(_)) => {
            log::debug!("{peer}: TLS handshake timed out");
            None
        }
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
        let mut due = Vec::new();
        for (&id, &deadline) in conns.deadlines.iter() {
            if deadline <= now {
                due.push(id);
            } else {
                next = Some(next.map_or(deadline, |n: Instant| n.min(deadline)));
            }
        }
        for id in due {
            conns.deadlines.remove(&id);
            if let Some(socket) = conns.map.get(&id) {
                log::debug!("connection {id}: past its deadline (sign-in or close); closing");
                let _ = socket.shutdown(Shutdown::Both);
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
        for socket in conns.map.values() {
            let _ = socket.shutdown(Shutdown::Both);
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
