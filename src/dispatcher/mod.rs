/*!
collab-dispatcher: the devices' entry point (port 3101). It reads the clear
header of a device's first frame, chooses a live collabd instance from the
Config DB's instance rows, and relays the connection's bytes both ways
without holding a key or seeing plaintext. Several collabd instances share
one Config DB; the dispatcher spreads devices across them and away from a
dead one (its heartbeat goes stale), and a reconnecting device goes back to
the instance that holds its live session.

Threads: one accept thread; one refresher thread that re-reads the instance
table every `--refresh-ms` (or at once on SIGHUP) into the [`route::Router`]
cache; the signal thread of [`crate::ops::signals`]; one refuser thread; one
thread per device connection ([`CONNECTION_STACK`] bytes of stack), which
routes, passes the handshake on and then relays both directions itself (see
[`relay`]). Concurrent connections are capped by `--max-connections`, and
connections still in their handshake by `--max-pending-per-address` per
source address (see [`limits`]); a device over either cap is told 301
ServerBusy by the refuser thread (bounded queue) and closed, without a
thread of its own.

On SIGTERM or SIGINT the dispatcher drains: it stops accepting, lets open
connections finish for up to `--drain-grace-ms`, then exits (cutting what
is left). Logging goes through [`crate::ops::logging`], with journald
priority prefixes when stderr is the journal.

Submodules: [`config`] (flags), [`route`] (instance choice), [`directory`]
(Config DB reads), [`relay`] (byte copy and the recording hook), [`limits`]
(caps and the refusal log's rate limit), and the private `connection` (one
device connection from first frame to end), with the state its threads
share in the private `shared`. It imports the Config DB, `net`, `ops` and
the device protocol's frames and statuses (`wire`); never the service.
*/

use std::fmt;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::ops::logging;
use crate::ops::signals::{self, AfterSignal, BlockedSignals, Shutdown, Signal};

use crate::wire::frame::Frame;
use crate::wire::status::Status;

pub mod config;
mod connection;
pub mod directory;
pub(crate) mod limits;
pub mod relay;
pub mod route;
mod shared;

use config::{Command, ConfigError, DispatcherConfig, DATABASE_URL_ENV, USAGE};
use directory::Directory;
use limits::{refusal_info, PendingByAddress, Permits};
use relay::{RecordDir, RelayObserver};
use route::Router;
use shared::Shared;

/// Stack of each connection thread (reserved; only what the deepest call
/// touched stays resident). Relay buffers live on the heap; the stack holds
/// the routing path, including the PostgreSQL client's `block_on` for the
/// PIN lookup and the upstream TLS handshake, which stay far below this.
pub const CONNECTION_STACK: usize = 256 * 1024;
/// Stack of the refresher and refuser threads.
const SERVICE_STACK: usize = 256 * 1024;

/// Exit status for a bad command line (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit status when the listener cannot be bound or a thread cannot start
/// (sysexits EX_OSERR).
pub const EXIT_OSERR: u8 = 71;
/// Exit status for unusable settings, such as an unreadable CA file or a
/// database URL that does not parse (sysexits EX_CONFIG; systemd should not
/// restart on it).
pub const EXIT_CONFIG: u8 = 78;

/// Why the dispatcher could not start or stopped with an error.
#[derive(Debug)]
pub enum DispatchError {
    /// The command line is wrong.
    Config(ConfigError),
    /// The upstream TLS settings are unusable (CA file, TLS library).
    Tls(String),
    /// The Config DB URL does not parse.
    DatabaseUrl(String),
    /// Binding the listener failed.
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// A thread could not be started, or signals could not be set up.
    Os(String),
}

impl fmt::Display for DispatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DispatchError::Config(e) => write!(f, "{e}"),
            DispatchError::Tls(why) => write!(f, "upstream TLS: {why}"),
            DispatchError::DatabaseUrl(why) => write!(f, "Config DB URL: {why}"),
            DispatchError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            DispatchError::Os(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for DispatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DispatchError::Config(e) => Some(e),
            DispatchError::Bind { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl DispatchError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            DispatchError::Config(_) => EXIT_USAGE,
            DispatchError::Tls(_) | DispatchError::DatabaseUrl(_) => EXIT_CONFIG,
            DispatchError::Bind { .. } | DispatchError::Os(_) => EXIT_OSERR,
        }
    }
}

/// The program: parses `args` (without the program name), runs until
/// SIGTERM or SIGINT, and returns the exit status. `main` is this.
pub fn main_with_args(args: Vec<String>) -> ExitCode {
    let env_url = std::env::var(DATABASE_URL_ENV).ok();
    let command = match config::parse_args(args, env_url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("collab-dispatcher: {e}\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("collab-dispatcher {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(config) => config,
    };
    // A thread per relay: see `ops::futex`.
    crate::ops::futex::use_global_hash();
    // Before any thread exists (the logger's included), so that every
    // thread inherits the mask and only the signal thread takes them.
    let signals = match signals::block_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("collab-dispatcher: blocking signals: {e}");
            return ExitCode::from(EXIT_OSERR);
        }
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "info".to_string());
    if let Err(e) = logging::init(&filter) {
        eprintln!("collab-dispatcher: RUST_LOG: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match run(*config, signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("collab-dispatcher: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the dispatcher until SIGTERM or SIGINT, then drains. Prints
/// `listening on ADDR` on standard output once the listener is bound (with
/// the real port when `--listen` asked for port 0). `signals` must have
/// been blocked before any thread was started.
pub fn run(config: DispatcherConfig, signals: BlockedSignals) -> Result<(), DispatchError> {
    let listener = TcpListener::bind(&config.listen).map_err(|error| DispatchError::Bind {
        addr: config.listen.clone(),
        error,
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| DispatchError::Os(format!("listener address: {e}")))?;
    let shared = Arc::new(build_shared(config)?);

    // One synchronous read first, so the first devices already find the
    // instances; a database that is down is retried by the refresher.
    let mut refresh = RefreshState::default();
    refresh_once(&shared, &mut refresh);
    spawn_named("refresher", SERVICE_STACK, {
        let shared = shared.clone();
        move || refresher(&shared, refresh)
    })?;
    let refuser = spawn_refuser()?;
    let shutdown = Shutdown::new();
    // The signal thread holds the listener too, so the descriptor it shuts
    // down is always this socket (never a later one with the same number).
    let listener = Arc::new(listener);
    signals::spawn_signal_thread(signals, {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let listener = listener.clone();
        move |signal| on_signal(&shared, &shutdown, &listener, signal)
    })
    .map_err(|e| DispatchError::Os(format!("cannot start the signal thread: {e}")))?;

    log::info!(
        "listening on {local}; max {} connections, {} pending per address, stale after {} ms{}",
        shared.config.max_connections,
        shared.config.max_pending_per_address,
        shared.config.stale_after.as_millis(),
        if shared.tls.is_some() {
            ", TLS to collabd"
        } else {
            ""
        }
    );
    println!("listening on {local}");
    let _ = std::io::stdout().flush();
    let permits = Permits::new(shared.config.max_connections);
    accept_loop(&shared, &listener, local, refuser, &permits, &shutdown);
    drain(&permits, shared.config.drain_grace);
    Ok(())
}

/// SIGHUP re-reads the instance table now; SIGTERM and SIGINT start the
/// drain: the flag is raised and the listening socket shut down, which
/// wakes the accept thread (accept(2) then fails) and refuses new
/// connections from then on. A second SIGTERM or SIGINT ends the process at
/// once.
fn on_signal(
    shared: &Shared,
    shutdown: &Shutdown,
    listener: &TcpListener,
    signal: Signal,
) -> AfterSignal {
    if signal.is_shutdown() {
        if shutdown.is_requested() {
            // A second request (Ctrl-C twice): the operator does not want
            // to wait for the drain.
            log::info!("{signal} again: cutting every open connection now");
            std::process::exit(0);
        }
        log::info!("{signal}: no longer accepting; draining");
        shutdown.request();
        // SAFETY: shutdown(2) on a descriptor that `listener` owns and
        // keeps open.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        return AfterSignal::Continue;
    }
    log::info!("{signal}: re-reading the instance table");
    let (flag, cond) = &shared.refresh_now;
    *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
    cond.notify_one();
    AfterSignal::Continue
}

/// Waits until every connection has ended or `grace` has passed; what is
/// still open then is cut when the process exits.
fn drain(permits: &Permits, grace: Duration) {
    let open = permits.open();
    if open == 0 {
        log::info!("stopped; no connection was open");
        return;
    }
    log::info!(
        "draining {open} connections for up to {} ms",
        grace.as_millis()
    );
    let deadline = Instant::now() + grace;
    while permits.open() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    match permits.open() {
        0 => log::info!("stopped; every connection ended within the drain grace"),
        left => log::info!("stopped; {left} connections cut at the end of the drain grace"),
    }
}

fn build_shared(config: DispatcherConfig) -> Result<Shared, DispatchError> {
    // A URL that cannot parse would only ever fail; say so now. (The
    // parser's message names the problem, not the password.)
    postgres::Config::from_str(&config.database_url)
        .map_err(|e| DispatchError::DatabaseUrl(e.to_string()))?;
    let tls = match &config.upstream_tls {
        None => None,
        Some(settings) => {
            let mut builder = native_tls::TlsConnector::builder();
            builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
            if let Some(path) = &settings.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    DispatchError::Tls(format!("reading CA file {}: {e}", path.display()))
                })?;
                let cert = native_tls::Certificate::from_pem(&pem)
                    .map_err(|e| DispatchError::Tls(format!("CA file {}: {e}", path.display())))?;
                builder.add_root_certificate(cert);
            }
            Some(
                builder
                    .build()
                    .map_err(|e| DispatchError::Tls(e.to_string()))?,
            )
        }
    };
    let observer: Option<Box<dyn RelayObserver>> = match &config.record_dir {
        None => None,
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                DispatchError::Os(format!("record directory {}: {e}", dir.display()))
            })?;
            log::warn!(
                "recording every relayed byte to {} (diagnostics only)",
                dir.display()
            );
            Some(Box::new(RecordDir::new(dir.clone())))
        }
    };
    Ok(Shared {
        router: Router::new(config.stale_after),
        directory: Directory::new(config.database_url.clone()),
        tls,
        observer,
        refresh_now: (Mutex::new(false), Condvar::new()),
        config,
    })
}

fn accept_loop(
    shared: &Arc<Shared>,
    listener: &TcpListener,
    local: SocketAddr,
    refuser: std::sync::mpsc::SyncSender<(TcpStream, Refusal)>,
    permits: &Arc<Permits>,
    shutdown: &Shutdown,
) {
    let pending = PendingByAddress::new(shared.config.max_pending_per_address);
    let next_id = AtomicU64::new(1);
    loop {
        let accepted = listener.accept();
        if shutdown.is_requested() {
            return;
        }
        let (device, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept on {local}: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(slot) = pending.try_acquire(peer.ip()) else {
            refusal_info!(
                "refused {peer}: {} connections from its address are still in their handshake",
                pending.cap()
            );
            let _ = refuser.try_send((device, Refusal::PendingPerAddress));
            continue;
        };
        let Some(permit) = permits.try_acquire() else {
            over_capacity(device, shared.config.max_connections, &refuser);
            continue;
        };
        let connection = next_id.fetch_add(1, Ordering::Relaxed);
        let shared_for_thread = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("conn-{connection}"))
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                let _permit = permit;
                // A bug in one connection must not take the others down.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    connection::serve(&shared_for_thread, device, peer, slot, connection)
                }));
                if outcome.is_err() {
                    log::error!("conn {connection}: internal error (panic); connection closed");
                }
            });
        if let Err(e) = spawned {
            log::error!("conn {connection}: cannot start its thread: {e}");
        }
    }
}

/// Why a device is turned away at accept.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// `--max-connections` reached.
    ConnectionCap,
    /// Its address has `--max-pending-per-address` handshakes in progress.
    PendingPerAddress,
}

impl Refusal {
    fn frame(self) -> Vec<u8> {
        let text = match self {
            Refusal::ConnectionCap => "the dispatcher is at its connection limit",
            Refusal::PendingPerAddress => {
                "too many connections from your address are still in their handshake"
            }
        };
        Frame::refused(0, Status::ServerBusy, text).to_bytes()
    }
}

/// Sockets over a cap waiting for the refuser; more are closed without a
/// word.
const REFUSAL_QUEUE: usize = 64;
/// Refused sockets the refuser lingers on at once; more wait in the queue.
const REFUSAL_LINGERING: usize = 512;
/// How long the refuser waits for a refused device to close.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Starts the one thread that tells devices over a cap why they are
/// dropped. For each it writes the refusal (a small frame into an empty
/// send buffer, so a non-blocking write takes it whole), closes its sending
/// half and reads what the device still sends until the device closes or a
/// short linger passes: closing a socket with unread input would send a
/// reset that can destroy the refusal before the device reads it. It
/// lingers on many sockets at once with poll(2): one thread and bounded
/// sets, so a flood over a cap costs no more threads.
fn spawn_refuser() -> Result<std::sync::mpsc::SyncSender<(TcpStream, Refusal)>, DispatchError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(TcpStream, Refusal)>(REFUSAL_QUEUE);
    spawn_named("refuser", SERVICE_STACK, move || {
        let mut lingering: Vec<(TcpStream, Instant)> = Vec::new();
        loop {
            // Block for work only when there is nothing to linger on.
            let mut incoming = Vec::new();
            if lingering.is_empty() {
                match rx.recv() {
                    Ok(item) => incoming.push(item),
                    Err(_) => return,
                }
            }
            while lingering.len() + incoming.len() < REFUSAL_LINGERING {
                match rx.try_recv() {
                    Ok(item) => incoming.push(item),
                    Err(_) => break,
                }
            }
            for (mut device, refusal) in incoming {
                if device.set_nonblocking(true).is_err()
                    || device.write_all(&refusal.frame()).is_err()
                {
                    continue;
                }
                let _ = device.shutdown(std::net::Shutdown::Write);
                lingering.push((device, Instant::now() + REFUSAL_LINGER));
            }
            let mut fds: Vec<libc::pollfd> = lingering
                .iter()
                .map(|(device, _)| libc::pollfd {
                    fd: device.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // Short, so that new refusals are not kept waiting long.
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
            let now = Instant::now();
            let mut index = 0;
            lingering.retain_mut(|(device, deadline)| {
                let revents = fds[index].revents;
                index += 1;
                if now >= *deadline {
                    return false;
                }
                if revents == 0 {
                    return true;
                }
                let mut sink = [0u8; 1024];
                // A bounded read per turn: a device that keeps sending
                // cannot keep this thread from the others.
                for _ in 0..64 {
                    match std::io::Read::read(device, &mut sink) {
                        Ok(0) => return false,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return false,
                    }
                }
                true
            });
        }
    })?;
    Ok(tx)
}

/// Hands a device over the cap to the refuser, never blocking the accept
/// thread.
fn over_capacity(
    device: TcpStream,
    max: usize,
    refuser: &std::sync::mpsc::SyncSender<(TcpStream, Refusal)>,
) {
    // At most one line a second: a flood over the cap must not become a
    // flood in the journal.
    static LAST_WARNED_SECS: AtomicU64 = AtomicU64::new(0);
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    let refused = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARNED_SECS.swap(now_secs, Ordering::Relaxed) != now_secs {
        log::warn!("connection cap of {max} reached; {refused} devices refused so far");
    }
    // A full queue drops the socket: the device sees the link close.
    let _ = refuser.try_send((device, Refusal::ConnectionCap));
}

/// What the refresher thread keeps between two reads.
#[derive(Default)]
struct RefreshState {
    /// Its own Config DB connection (reopened after a failure).
    db: Option<crate::configdb::ConfigDb>,
    /// The live set it last logged. Kept here rather than compared with the
    /// previous snapshot: a heartbeat also goes stale by ageing between two
    /// reads, and that change must be logged too.
    logged_live: Option<Vec<String>>,
}

fn refresher(shared: &Shared, mut state: RefreshState) {
    loop {
        {
            let (flag, cond) = &shared.refresh_now;
            let mut asked = flag.lock().unwrap_or_else(|p| p.into_inner());
            if !*asked {
                asked = cond
                    .wait_timeout(asked, shared.config.refresh)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            *asked = false;
        }
        refresh_once(shared, &mut state);
    }
}

/// Re-reads the instance table into the router. On failure the last table
/// stays, and its heartbeats age until they go stale (so a long database
/// outage ends in 309 NoInstance rather than routing on old news). Either
/// way, a change of the live set since the last log line is logged.
fn refresh_once(shared: &Shared, state: &mut RefreshState) {
    read_into_router(shared, &mut state.db);
    let live = shared.router.live_names();
    if state.logged_live.as_ref() != Some(&live) {
        log::info!("live instances: {}", describe(&live));
        state.logged_live = Some(live);
    }
}

fn read_into_router(shared: &Shared, db: &mut Option<crate::configdb::ConfigDb>) {
    if db.is_none() {
        match shared.directory.connect() {
            Ok(conn) => *db = Some(conn),
            Err(e) => {
                log::warn!("instance table: {e}");
                return;
            }
        }
    }
    let Some(conn) = db.as_mut() else { return };
    match directory::read_instances(conn) {
        Ok(rows) => {
            let lost_after = shared.config.instance_lost_after;
            let any_lost = rows
                .iter()
                .any(|r| r.heartbeat_age.is_some_and(|age| age > lost_after));
            shared.router.replace(rows);
            if any_lost {
                end_sessions_of_lost_instances(conn, lost_after);
            }
        }
        Err(e) => {
            log::warn!("instance table: {e}");
            *db = None;
        }
    }
}

/// The registry must not show sessions of an instance that is gone as
/// active: the dispatcher ends them, as a live collabd would (whichever
/// notices first; each row is ended exactly once, see
/// [`crate::configdb::ConfigDb::end_sessions_of_lost_instances`]). A failure
/// is logged; the next refresh tries again.
fn end_sessions_of_lost_instances(conn: &mut crate::configdb::ConfigDb, lost_after: Duration) {
    let ms = u64::try_from(lost_after.as_millis()).unwrap_or(u64::MAX);
    match conn.end_sessions_of_lost_instances(ms, "collab-dispatcher") {
        Ok(ended) => {
            for (instance, n) in ended {
                log::warn!(
                    "instance {instance} lost (no heartbeat for {ms} ms): ended its {n} \
                     sessions in the registry"
                );
            }
        }
        Err(e) => log::warn!("cannot end the sessions of lost instances: {e}"),
    }
}

fn describe(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn spawn_named(
    name: &str,
    stack: usize,
    body: impl FnOnce() + Send + 'static,
) -> Result<(), DispatchError> {
    thread::Builder::new()
        .name(name.into())
        .stack_size(stack)
        .spawn(body)
        .map(|_| ())
        .map_err(|e| DispatchError::Os(format!("cannot start the {name} thread: {e}")))
}
