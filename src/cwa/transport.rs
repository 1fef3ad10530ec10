//! The transport under every CWA connection: TCP, TLS through the `openssl`
//! crate, name resolution and the connection's buffers, as the ureq
//! connector and resolver of each session's agent.
//!
//! Built once and shared by every session whose [`ClientConfig`] is a clone
//! of the same one ([`SharedTransport`]): the TLS context (trust anchors
//! parsed once; peer verification and the host name check always on), the
//! client-side TLS session cache keyed by `host:port` (so later connections
//! resume instead of running a full handshake), and the addresses of names
//! resolved in the last [`NAME_TTL`]. Per session, and never shared: the
//! ureq agent and its pool of connections (see `http.rs`), so a connection
//! that NTLM authenticated for one user is never reused for another. A
//! resumed TLS session carries no HTTP authentication: NTLM binds to the
//! TCP connection, which is new.
//!
//! An idle connection keeps little memory: OpenSSL frees its record buffers
//! when they are empty (`SSL_MODE_RELEASE_BUFFERS`); the held event GET's
//! read first waits for the socket to become readable, so it waits without
//! a TLS record buffer; and the connection's own input and output buffers
//! are given back while the held GET waits and while it sits in the pool.
//!
//! Names are resolved on the calling thread, never on a helper thread per
//! connection: an IP literal needs no lookup; a name goes to the system
//! resolver (blocking, bounded by its own timeouts and attempts from
//! `resolv.conf`), and its addresses are reused for [`NAME_TTL`].
//!
//! [`ClientConfig`]: super::ClientConfig

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use openssl::ex_data::Index;
use openssl::ssl::{
    HandshakeError, Ssl, SslConnector, SslMethod, SslMode, SslOptions, SslSession,
    SslSessionCacheMode, SslStream, SslVerifyMode,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509VerifyResult, X509};
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, NextTimeout, ShutdownHandle, Transport,
};

use super::buffers::ConnectionBuffers;
use crate::net::SharedSocket;
use crate::ops::{memory, thread_cache};
use ureq::Error;

/// How long resolved addresses of a CWA host name are reused.
pub const NAME_TTL: Duration = Duration::from_secs(60);

/// Most `host:port` entries in the session and name caches (an instance
/// talks to one CWA server; the bound only keeps a misconfiguration from
/// growing them).
const MAX_CACHED_HOSTS: usize = 64;

/// Most addresses ureq takes from a resolver.
const MAX_ADDRS: usize = 16;

/// A TLS failure: handshake, certificate verification or host name check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFailure(pub String);

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

/// TLS handshakes made through one [`SharedTransport`] so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsHandshakes {
    /// Full handshakes (certificate chain sent and verified).
    pub full: u64,
    /// Handshakes that resumed a cached session.
    pub resumed: u64,
}

/// The TLS context, TLS session cache and name cache that every session
/// made from one [`ClientConfig`](super::ClientConfig) (and its clones)
/// shares. Cloning is cheap and shares; [`SharedTransport::default`] starts
/// an empty one, built at the first connection.
#[derive(Clone, Default)]
pub struct SharedTransport {
    built: Arc<Mutex<Option<Arc<Context>>>>,
}

impl fmt::Debug for SharedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let built = self.lock().is_some();
        f.debug_struct("SharedTransport")
            .field("built", &built)
            .finish()
    }
}

impl SharedTransport {
    /// A new, empty one (not shared with any other).
    pub fn new() -> SharedTransport {
        SharedTransport::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Arc<Context>>> {
        self.built.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The context trusting `ca_file` (or the system's roots): the one
    /// built before while the file's path, size and modification time are
    /// unchanged, else a new one (a replaced CA file is read at the next
    /// sign-in). The error is a configuration problem.
    ///
    /// With `tls` false (CWA over plain HTTP) no TLS context is made: the
    /// trust anchors (the system's: several hundred KiB parsed) are loaded
    /// only once a session needs them.
    pub(crate) fn context(
        &self,
        ca_file: Option<&Path>,
        tls: bool,
    ) -> Result<Arc<Context>, String> {
        let trust = TrustKey::of(ca_file)?;
        let mut built = self.lock();
        if let Some(context) = built
            .as_ref()
            .filter(|c| c.trust == trust && (c.connector.is_some() || !tls))
        {
            return Ok(Arc::clone(context));
        }
        let context = Arc::new(Context::build(trust, tls)?);
        *built = Some(Arc::clone(&context));
        Ok(context)
    }

    /// TLS handshakes so far through the current context.
    pub fn tls_handshakes(&self) -> TlsHandshakes {
        self.lock()
            .as_ref()
            .map_or_else(TlsHandshakes::default, |c| TlsHandshakes {
                full: c.full_handshakes.load(Ordering::Relaxed),
                resumed: c.resumed_handshakes.load(Ordering::Relaxed),
            })
    }
}

/// Which trust anchors a context was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TrustKey {
    /// OpenSSL's default verify paths (`SSL_CERT_FILE`, `SSL_CERT_DIR`
    /// honoured).
    System,
    /// A PEM file, as it was when read.
    File {
        path: PathBuf,
        len: u64,
        modified: Option<SystemTime>,
    },
}

impl TrustKey {
    fn of(ca_file: Option<&Path>) -> Result<TrustKey, String> {
        let Some(path) = ca_file else {
            return Ok(TrustKey::System);
        };
        let meta =
            std::fs::metadata(path).map_err(|e| format!("CA file {}: {e}", path.display()))?;
        Ok(TrustKey::File {
            path: path.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// The slot on each TLS connection naming its session cache entry, for
/// the new-session callback.
fn cache_key_index() -> Result<Index<Ssl, String>, String> {
    static INDEX: OnceLock<Result<Index<Ssl, String>, String>> = OnceLock::new();
    INDEX
        .get_or_init(|| Ssl::new_ex_index().map_err(|e| format!("TLS setup: {e}")))
        .clone()
}

/// Sessions to resume, the newest per `host:port`.
#[derive(Default)]
struct SessionCache(Mutex<HashMap<String, SslSession>>);

impl SessionCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, SslSession>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str) -> Option<SslSession> {
        self.lock().get(key).cloned()
    }

    fn put(&self, key: &str, session: SslSession) {
        let mut map = self.lock();
        if map.len() >= MAX_CACHED_HOSTS && !map.contains_key(key) {
            map.clear();
        }
        map.insert(key.to_string(), session);
    }
}

/// What [`SharedTransport`] builds: see the module documentation.
pub(crate) struct Context {
    trust: TrustKey,
    /// None when built for plain HTTP only.
    connector: Option<SslConnector>,
    sessions: Arc<SessionCache>,
    names: Mutex<HashMap<String, (Instant, Vec<SocketAddr>)>>,
    full_handshakes: AtomicU64,
    resumed_handshakes: AtomicU64,
}

impl Context {
    fn build(trust: TrustKey, tls: bool) -> Result<Context, String> {
        let sessions = Arc::new(SessionCache::default());
        let connector = if tls {
            Some(Self::connector(&trust, &sessions)?)
        } else {
            None
        };
        Ok(Context {
            trust,
            connector,
            sessions,
            names: Mutex::new(HashMap::new()),
            full_handshakes: AtomicU64::new(0),
            resumed_handshakes: AtomicU64::new(0),
        })
    }

    fn connector(trust: &TrustKey, sessions: &Arc<SessionCache>) -> Result<SslConnector, String> {
        let setup = |e: openssl::error::ErrorStack| format!("TLS setup: {e}");
        // The builder turns on peer verification with OpenSSL's default
        // verify paths; `connect` below adds the host name check.
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
        if let TrustKey::File { path, .. } = &trust {
            let pem =
                std::fs::read(path).map_err(|e| format!("CA file {}: {e}", path.display()))?;
            let certs = X509::stack_from_pem(&pem)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("CA file {} holds no certificate", path.display()));
            }
            // Only these anchors, not the system's as well.
            let mut store = X509StoreBuilder::new().map_err(setup)?;
            for cert in certs {
                store
                    .add_cert(cert)
                    .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            }
            builder.set_cert_store(store.build());
        }
        builder.set_verify(SslVerifyMode::PEER);
        builder.set_mode(SslMode::RELEASE_BUFFERS);
        // A renegotiation the server asks for is refused: a TLS write then
        // never has to read, so a request's send timeout bounds it alone
        // (`CwaConnection::set_timeout`).
        builder.set_options(SslOptions::NO_RENEGOTIATION);
        // Client-side caching only calls back with new sessions; keeping
        // them is ours (OpenSSL's internal store is for servers).
        builder.set_session_cache_mode(
            SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL_STORE,
        );
        let index = cache_key_index()?;
        {
            let sessions = Arc::clone(sessions);
            builder.set_new_session_callback(move |ssl, session| {
                if let Some(key) = ssl.ex_data(index) {
                    sessions.put(key, session);
                }
            });
        }
        Ok(builder.build())
    }

    /// The addresses of `host` (not an IP literal), from the cache while
    /// fresh, else from the system resolver.
    fn resolve_name(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
        let key = format!("{host}:{port}");
        let names = || self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, addrs)) = names().get(&key) {
            if at.elapsed() < NAME_TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
            Ok(found) => found.collect(),
            Err(e) => {
                log::warn!("CWA host {host}: cannot resolve: {e}");
                return Err(Error::HostNotFound);
            }
        };
        if addrs.is_empty() {
            return Err(Error::HostNotFound);
        }
        let mut map = names();
        if map.len() >= MAX_CACHED_HOSTS && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

/// The host of `uri` without IPv6 brackets, and its port (the scheme's
/// default when absent).
fn host_and_port(uri: &Uri) -> Result<(&str, u16), Error> {
    let authority = uri
        .authority()
        .ok_or_else(|| Error::BadUri(format!("{uri}: no host")))?;
    let port = match (authority.port_u16(), uri.scheme_str()) {
        (Some(p), _) => p,
        (None, Some("https")) => 443,
        (None, Some("http")) => 80,
        (None, _) => return Err(Error::BadUri(format!("{uri}: unknown scheme"))),
    };
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok((host, port))
}

/// Resolves CWA host names on the calling thread (see the module
/// documentation).
pub(crate) struct NameResolver {
    context: Arc<Context>,
}

impl NameResolver {
    pub fn new(context: Arc<Context>) -> NameResolver {
        NameResolver { context }
    }
}

impl fmt::Debug for NameResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameResolver").finish_non_exhaustive()
    }
}

impl Resolver for NameResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let (host, port) = host_and_port(uri)?;
        let mut out = self.empty();
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, port));
            return Ok(out);
        }
        for addr in self
            .context
            .resolve_name(host, port)?
            .into_iter()
            .take(MAX_ADDRS)
        {
            out.push(addr);
        }
        Ok(out)
    }
}

/// Opens CWA connections: TCP, then TLS with the shared context when the
/// scheme is `https`.
pub(crate) struct CwaConnector {
    context: Arc<Context>,
}

impl CwaConnector {
    pub fn new(context: Arc<Context>) -> CwaConnector {
        CwaConnector { context }
    }
}

impl fmt::Debug for CwaConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CwaConnector").finish_non_exhaustive()
    }
}

/// The remaining time of a ureq timeout, `None` for no limit.
fn remaining(timeout: &NextTimeout) -> Option<Duration> {
    timeout.not_zero().map(|d| *d)
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// TCP to the first of `addrs` that accepts within the time left.
fn connect_tcp(addrs: &[SocketAddr], timeout: &NextTimeout) -> Result<TcpStream, Error> {
    let deadline = remaining(timeout).and_then(|d| Instant::now().checked_add(d));
    let mut last = None;
    for addr in addrs {
        let attempt = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(timeout.reason));
                }
                TcpStream::connect_timeout(addr, left)
            }
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(tcp) => return Ok(tcp),
            Err(e) if timed_out(&e) => return Err(Error::Timeout(timeout.reason)),
            // Refused, unreachable and the like: the next address may work.
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to connect to")
    })))
}

impl Connector<()> for CwaConnector {
    type Out = CwaConnection;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<CwaConnection>, Error> {
        let tcp = connect_tcp(&details.addrs, &details.timeout)?;
        if details.config.no_delay() {
            tcp.set_nodelay(true)?;
        }
        let tcp = Arc::new(tcp);
        (details.register_shutdown)(Arc::downgrade(&tcp) as Weak<dyn ShutdownHandle>)?;
        let tls = if details.needs_tls() {
            Some(self.handshake(details, &tcp)?)
        } else {
            None
        };
        Ok(Some(CwaConnection {
            tcp,
            tls,
            buffers: ConnectionBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            read_timeout: None,
            write_timeout: None,
            last_probe: None,
        }))
    }
}

impl CwaConnector {
    fn handshake(
        &self,
        details: &ConnectionDetails,
        tcp: &Arc<TcpStream>,
    ) -> Result<SslStream<SharedSocket>, Error> {
        let (host, port) = host_and_port(details.uri)?;
        let key = format!("{host}:{port}");
        let budget = remaining(&details.timeout);
        tcp.set_read_timeout(budget)?;
        tcp.set_write_timeout(budget)?;
        let tls_setup = |e: openssl::error::ErrorStack| {
            Error::Other(Box::new(TlsFailure(format!("TLS setup: {e}"))))
        };
        let connector = self.context.connector.as_ref().ok_or_else(|| {
            Error::Other(Box::new(TlsFailure(
                "no TLS context (built for plain HTTP)".into(),
            )))
        })?;
        let mut ssl = connector.configure().map_err(tls_setup)?;
        ssl.set_ex_data(
            cache_key_index().map_err(|e| Error::Other(Box::new(TlsFailure(e))))?,
            key.clone(),
        );
        if let Some(session) = self.context.sessions.get(&key) {
            // SAFETY: every cached session was issued on a connection of
            // this context's own SSL_CTX (the cache lives inside it), which
            // is what SSL_set_session requires.
            unsafe { ssl.set_session(&session) }.map_err(tls_setup)?;
        }
        match ssl.connect(host, SharedSocket::from(Arc::clone(tcp))) {
            Ok(stream) => {
                let counter = if stream.ssl().session_reused() {
                    &self.context.resumed_handshakes
                } else {
                    &self.context.full_handshakes
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(stream)
            }
            Err(HandshakeError::SetupFailure(e)) => Err(tls_setup(e)),
            Err(HandshakeError::WouldBlock(_)) => Err(Error::Timeout(details.timeout.reason)),
            Err(HandshakeError::Failure(mid)) => {
                if let Some(io) = mid.error().io_error() {
                    if timed_out(io) {
                        return Err(Error::Timeout(details.timeout.reason));
                    }
                    return Err(Error::Io(io::Error::new(io.kind(), io.to_string())));
                }
                let verify = mid.ssl().verify_result();
                let why = if verify == X509VerifyResult::OK {
                    format!("handshake with {key}: {}", mid.error())
                } else {
                    format!("certificate of {key}: {}", verify.error_string())
                };
                Err(Error::Other(Box::new(TlsFailure(why))))
            }
        }
    }
}

/// One connection to CWA, plain or TLS.
pub(crate) struct CwaConnection {
    tcp: Arc<TcpStream>,
    tls: Option<SslStream<SharedSocket>>,
    buffers: ConnectionBuffers,
    /// The receive timeout last set on the socket (`None`: not set since
    /// the handshake), to skip needless system calls.
    read_timeout: Option<Option<Duration>>,
    /// The same for the send timeout.
    write_timeout: Option<Option<Duration>>,
    /// When `is_open` last asked the socket, if no exchange came after
    /// (see there).
    last_probe: Option<Instant>,
}

/// How long a pooled connection's answer from the socket (see `is_open`)
/// is taken as still true.
const PROBE_FRESH: Duration = Duration::from_millis(2);

/// Which of the socket's timeouts an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// Whether a socket timeout already set serves an operation that wants
/// `wanted`: never shorter (that would fail it early), and at most a
/// sixteenth and a millisecond longer. Every request of a session asks for
/// about the same times (ureq's per-phase timeouts, taken afresh), so the
/// one set for the first request serves the ones after it, and a request
/// costs no `setsockopt` instead of four (strace of the latency run).
fn timeout_serves(set: Option<Duration>, wanted: Option<Duration>) -> bool {
    match (set, wanted) {
        (None, None) => true,
        (Some(set), Some(wanted)) => {
            set >= wanted && set <= wanted + wanted / 16 + Duration::from_millis(1)
        }
        _ => false,
    }
}

/// The timeout to set for `wanted`: a little longer, so that the slightly
/// shorter times the next operations want still fit it.
fn padded_timeout(wanted: Option<Duration>) -> Option<Duration> {
    wanted.map(|w| w + w / 32)
}

impl fmt::Debug for CwaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CwaConnection")
            .field("peer", &self.tcp.peer_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl CwaConnection {
    /// Bounds the socket's reads or writes by `timeout` (see
    /// [`timeout_serves`]). Only the one direction: a TLS write never reads
    /// (renegotiation is refused, see `Context::connector`), and what a TLS
    /// read may write (an alert, a key update's answer) is bounded by the
    /// send timeout of the last write.
    fn set_timeout(&mut self, direction: Direction, timeout: Option<Duration>) -> io::Result<()> {
        let set = match direction {
            Direction::Read => &mut self.read_timeout,
            Direction::Write => &mut self.write_timeout,
        };
        if set.is_some_and(|t| timeout_serves(t, timeout)) {
            return Ok(());
        }
        let value = padded_timeout(timeout);
        let done = match direction {
            Direction::Read => self.tcp.set_read_timeout(value),
            Direction::Write => self.tcp.set_write_timeout(value),
        };
        // Remembered only once set: after a failure the next call tries again.
        *set = done.is_ok().then_some(value);
        done
    }

    /// Runs `op` until it is not interrupted by a signal, re-arming the
    /// socket's timeout for `direction` with what is left.
    fn retrying<T>(
        &mut self,
        direction: Direction,
        timeout: Option<Duration>,
        mut op: impl FnMut(&mut Self) -> io::Result<T>,
    ) -> io::Result<T> {
        let started = Instant::now();
        loop {
            match op(self) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if let Some(limit) = timeout {
                        let left = limit.saturating_sub(started.elapsed());
                        if left.is_zero() {
                            return Err(io::ErrorKind::TimedOut.into());
                        }
                        self.set_timeout(direction, Some(left))?;
                    }
                }
                other => return other,
            }
        }
    }

    fn tls_pending(&self) -> usize {
        self.tls.as_ref().map_or(0, |s| s.ssl().pending())
    }
}

impl Transport for CwaConnection {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            return Err(Error::Timeout(timeout.reason));
        }
        let limit = remaining(&timeout);
        // What the socket said before this exchange no longer stands.
        self.last_probe = None;
        self.set_timeout(Direction::Write, limit)?;
        let result = self.retrying(Direction::Write, limit, |c| {
            let out = c.buffers.written(amount);
            match &mut c.tls {
                Some(tls) => tls.write_all(out),
                None => (&*c.tcp).write_all(out),
            }
        });
        match result {
            Ok(()) => Ok(()),
            Err(e) if timed_out(&e) => Err(Error::Timeout(timeout.reason)),
            Err(e) => Err(e.into()),
        }
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(Error::Timeout(timeout.reason));
        }
        let mut limit = remaining(&timeout);
        self.last_probe = None;
        self.set_timeout(Direction::Read, limit)?;
        // The held event GET waits for the peer before claiming any buffer,
        // so it waits with neither ours nor OpenSSL's. Other requests are
        // answered within moments and read at once (a system call less).
        if HeldWait::is_on() && self.buffers.input().is_empty() && self.tls_pending() == 0 {
            let mut ready = false;
            // A held GET may wait for minutes, and the session for
            // hours: its buffers go at once (after a sign-in burst they
            // are then free for the sign-ins still running; freed a
            // second later, 1,000 sessions' buffers were all held at
            // the burst's end and stayed resident as free heap, 16 KiB
            // a session, load run).
            self.buffers.release();
            // So do the small blocks this thread cached since its last
            // wait, unless the process's budget for them allows (see
            // `ops::thread_cache`): a burst of sessions holding them
            // all for the quiet moment below grew the heap for good.
            thread_cache::before_wait();
            // The stack below this wait (sending went deeper) only
            // after a quiet moment: each release is a TLB shootdown,
            // and doing it at every wait cost each answered GET one
            // (`__madvise` was 8.7% of collabd's CPU in the sign-in
            // rate run, perf).
            let quiet = memory::RELEASE_AFTER_QUIET;
            if limit.map_or(true, |l| l > quiet) {
                // Readable within the moment (the usual answer to a
                // busy session's GET): no need to wait below as well.
                ready = crate::net::readable_within(&self.tcp, quiet);
                if !ready {
                    memory::release_idle_memory();
                    limit = limit.map(|l| l.saturating_sub(quiet));
                    self.set_timeout(Direction::Read, limit)?;
                }
            }
            if !ready {
                let waited = self.retrying(Direction::Read, limit, |c| c.tcp.peek(&mut [0u8; 1]));
                match waited {
                    Ok(_) => {}
                    Err(e) if timed_out(&e) => return Err(Error::Timeout(timeout.reason)),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let result = self.retrying(Direction::Read, limit, |c| {
            let buf = c.buffers.input_append_buf();
            match &mut c.tls {
                Some(tls) => tls.read(buf),
                None => (&*c.tcp).read(buf),
            }
        });
        let amount = match result {
            Ok(n) => n,
            Err(e) if timed_out(&e) => return Err(Error::Timeout(timeout.reason)),
            Err(e) => return Err(e.into()),
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// Called as the connection goes back to the pool and as it is taken
    /// out: gives the buffers back, then checks that the peer has neither
    /// closed nor sent anything unasked. The socket's answer (one system
    /// call) stands for [`PROBE_FRESH`]: when the session's pool holds only
    /// this connection (an idle session's event thread, re-polling), it is
    /// put back and taken out again for the next GET within microseconds;
    /// ureq hands out the least recently used connection, so a busy
    /// session's two connections alternate and are probed each time. A
    /// peer closing in between is the race every reused HTTP connection
    /// has between the check and the request.
    fn is_open(&mut self) -> bool {
        self.buffers.release();
        if self.tls_pending() != 0 {
            return false;
        }
        let now = Instant::now();
        if self
            .last_probe
            .is_some_and(|at| now.saturating_duration_since(at) < PROBE_FRESH)
        {
            return true;
        }
        let open = crate::net::nothing_to_read(&self.tcp);
        self.last_probe = open.then_some(now);
        open
    }

    fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

thread_local! {
    static HELD_WAIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as running a request whose answer the server
/// may hold back (the event GET): while it is on, a wait for the peer
/// first gives back the thread's stack pages below the wait (see
/// `ops::memory`). Other requests answer within moments; releasing for
/// them would only cost page faults.
pub(crate) struct HeldWait {
    was: bool,
}

impl HeldWait {
    /// On until the returned value is dropped.
    pub(crate) fn begin() -> HeldWait {
        HeldWait {
            was: HELD_WAIT.with(|h| h.replace(true)),
        }
    }

    fn is_on() -> bool {
        HELD_WAIT.with(|h| h.get())
    }
}

impl Drop for HeldWait {
    fn drop(&mut self) {
        HELD_WAIT.with(|h| h.set(self.was));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_timeout_is_set_again_only_when_it_would_not_serve() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let set = padded_timeout(Some(s(10)));
        assert!(set.unwrap() > s(10));
        assert!(timeout_serves(set, Some(s(10))), "the next request's 10 s");
        assert!(timeout_serves(set, Some(ms(9_900))), "a little later");
        assert!(
            !timeout_serves(set, Some(s(11))),
            "never shorter than wanted"
        );
        assert!(
            !timeout_serves(set, Some(s(9))),
            "at most a sixteenth longer"
        );
        assert!(!timeout_serves(set, None) && !timeout_serves(None, Some(s(1))));
        assert!(timeout_serves(None, None));
        assert!(timeout_serves(padded_timeout(Some(ms(1))), Some(ms(1))));
        assert!(
            timeout_serves(Some(ms(2)), Some(ms(1))),
            "a millisecond of slack"
        );
    }

    #[test]
    fn hosts_and_default_ports() {
        let uri: Uri = "https://[::1]/x".parse().unwrap();
        assert_eq!(host_and_port(&uri).unwrap(), ("::1", 443));
        let uri: Uri = "http://cwa.example.com:8080/".parse().unwrap();
        assert_eq!(host_and_port(&uri).unwrap(), ("cwa.example.com", 8080));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_configuration_error() {
        let shared = SharedTransport::new();
        let err = shared
            .context(Some(Path::new("/nonexistent/ca.pem")), true)
            .err()
            .unwrap();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("collabd-empty-ca-{}", std::process::id()));
        std::fs::write(&dir, b"no certificate here\n").unwrap();
        let err = shared.context(Some(&dir), true).err().unwrap();
        let _ = std::fs::remove_file(&dir);
        assert!(err.contains("holds no certificate"), "{err}");
    }

    #[test]
    fn one_context_while_the_trust_is_unchanged() {
        let shared = SharedTransport::new();
        let a = shared.context(None, true).unwrap();
        let b = shared.clone().context(None, true).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "clones share the context");
        let other = SharedTransport::new().context(None, true).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        // Plain HTTP makes none, and takes one that has it.
        assert!(Arc::ptr_eq(&a, &shared.context(None, false).unwrap()));
        let plain = SharedTransport::new();
        let p = plain.context(None, false).unwrap();
        assert!(p.connector.is_none());
        let t = plain.context(None, true).unwrap();
        assert!(t.connector.is_some(), "built when HTTPS needs it");
        assert!(Arc::ptr_eq(&t, &plain.context(None, false).unwrap()));
    }
}
