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
cache; one signal thread; one thread per device connection
([`CONNECTION_STACK`] bytes of stack), which routes and then relays both
directions itself (see [`relay`]). Concurrent connections are capped by
`--max-connections` with RAII permits; a device over the cap is told 301
ServerBusy by one refuser thread (bounded queue) and closed.

Submodules: [`config`] (flags), [`route`] (instance choice), [`directory`]
(Config DB reads), [`relay`] (byte copy and the recording hook), and the
private `connection` (one device connection from first frame to end).
*/

use std::fmt;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crate::wire::frame::Frame;
use crate::wire::status::Status;

pub mod config;
mod connection;
pub mod directory;
pub mod relay;
pub mod route;

use config::{Command, ConfigError, DispatcherConfig, DATABASE_URL_ENV, USAGE};
use directory::Directory;
use relay::{RecordDir, RelayObserver};
use route::Router;

/// Stack of each connection thread. Relay buffers live on the heap; the
/// stack holds the routing path, including the PostgreSQL client's
/// `block_on` for the PIN lookup, which stays far below this.
pub const CONNECTION_STACK: usize = 256 * 1024;
/// Stack of the refresher and signal threads.
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

impl std::error::Error for DispatchError {}

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

/// State shared by every thread of one dispatcher.
pub(crate) struct Shared {
    config: DispatcherConfig,
    router: Router,
    directory: Directory,
    tls: Option<native_tls::TlsConnector>,
    observer: Option<Box<dyn RelayObserver>>,
    refresh_now: (Mutex<bool>, Condvar),
}

/// Counts open device connections against `--max-connections`.
struct Permits {
    open: AtomicUsize,
    max: usize,
}

/// One open connection's place under the cap; released on drop.
struct Permit(Arc<Permits>);

impl Permits {
    fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut current = self.open.load(Ordering::Relaxed);
        loop {
            if current >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Permit(self.clone())),
                Err(now) => current = now,
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("collab-dispatcher: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the dispatcher until SIGTERM or SIGINT. Prints
/// `listening on ADDR` on standard output once the listener is bound (with
/// the real port when `--listen` asked for port 0).
pub fn run(config: DispatcherConfig) -> Result<(), DispatchError> {
    // Block the signals before any thread exists, so every thread inherits
    // the mask and only the signal thread receives them.
    let signals = block_signals()?;
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
    spawn_named("signals", SERVICE_STACK, {
        let shared = shared.clone();
        move || signal_loop(&shared, signals)
    })?;

    log::info!(
        "listening on {local}; max {} connections, stale after {} ms{}",
        shared.config.max_connections,
        shared.config.stale_after.as_millis(),
        if shared.tls.is_some() {
            ", TLS to collabd"
        } else {
            ""
        }
    );
    println!("listening on {local}");
    let _ = std::io::stdout().flush();
    accept_loop(&shared, listener, local, refuser);
    Ok(())
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
    listener: TcpListener,
    local: SocketAddr,
    refuser: std::sync::mpsc::SyncSender<TcpStream>,
) {
    let permits = Arc::new(Permits {
        open: AtomicUsize::new(0),
        max: shared.config.max_connections,
    });
    let next_id = AtomicU64::new(1);
    for stream in listener.incoming() {
        let device = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept on {local}: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
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
                    connection::serve(&shared_for_thread, device, connection)
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

/// Sockets over the cap waiting for their refusal; more are closed
/// without a word.
const REFUSAL_QUEUE: usize = 64;
/// How long the refuser waits for a refused device to close.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Starts the one thread that tells devices over the cap why they are
/// dropped. It writes the refusal, closes its sending half and reads what
/// the device still sends until the device closes (or a short linger
/// passes): closing a socket with unread input would send a reset that can
/// destroy the refusal before the device reads it. One thread and a bounded
/// queue, so a flood over the cap costs no more threads.
fn spawn_refuser() -> Result<std::sync::mpsc::SyncSender<TcpStream>, DispatchError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<TcpStream>(REFUSAL_QUEUE);
    spawn_named("refuser", SERVICE_STACK, move || {
        let frame = Frame::refused(
            0,
            Status::ServerBusy,
            "the dispatcher is at its connection limit",
        )
        .to_bytes();
        for mut device in rx {
            let _ = device.set_write_timeout(Some(REFUSAL_LINGER));
            let _ = device.set_read_timeout(Some(REFUSAL_LINGER));
            if device.write_all(&frame).is_err() {
                continue;
            }
            let _ = device.shutdown(std::net::Shutdown::Write);
            let deadline = std::time::Instant::now() + REFUSAL_LINGER;
            let mut sink = [0u8; 1024];
            while std::time::Instant::now() < deadline {
                match std::io::Read::read(&mut device, &mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    })?;
    Ok(tx)
}

/// Hands a device over the cap to the refuser, never blocking the accept
/// thread.
fn over_capacity(device: TcpStream, max: usize, refuser: &std::sync::mpsc::SyncSender<TcpStream>) {
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
    let _ = refuser.try_send(device);
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
        Ok(rows) => shared.router.replace(rows),
        Err(e) => {
            log::warn!("instance table: {e}");
            *db = None;
        }
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

/// The signals the dispatcher handles, blocked in every thread.
struct SignalSet(libc::sigset_t);

// SAFETY: a sigset_t is plain data.
unsafe impl Send for SignalSet {}

fn block_signals() -> Result<SignalSet, DispatchError> {
    // SAFETY: sigset_t is initialised by sigemptyset before use, and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(DispatchError::Os(format!(
                "blocking signals: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        Ok(SignalSet(set))
    }
}

/// SIGHUP re-reads the instance table now; SIGTERM and SIGINT end the
/// process (relays are cut; devices reconnect through another dispatcher
/// or this one once restarted).
fn signal_loop(shared: &Shared, signals: SignalSet) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: the set is initialised and `sig` is a valid out pointer.
        let rc = unsafe { libc::sigwait(&signals.0, &mut sig) };
        if rc != 0 {
            log::error!("sigwait: {}", std::io::Error::from_raw_os_error(rc));
            return;
        }
        match sig {
            libc::SIGHUP => {
                log::info!("SIGHUP: re-reading the instance table");
                let (flag, cond) = &shared.refresh_now;
                *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
                cond.notify_one();
            }
            _ => {
                log::info!("signal {sig}: stopping");
                std::process::exit(0);
            }
        }
    }
}
