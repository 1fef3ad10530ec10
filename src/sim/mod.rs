//! `cwa-sim`: a Communicator Web Access 2007 simulator backed by a small
//! in-memory OCS, implementing the server side of the CWA protocol as
//! cwa-sim(1) describes it, for tests, demos and load runs.
//!
//! - [`users`]: the users file.
//! - [`http`]: HTTP/1.1 request/response wire layer with limits.
//! - [`events`]: per-session event logs and the long-poll wait.
//! - [`containers`]: access levels (presence containers) and what each
//!   level sees.
//! - [`ocs`]: the OCS model: tickets, sessions, presence, access levels,
//!   contacts, search, conversations (a file each).
//! - [`published`]: what users' clients published and their `UA` activity.
//! - [`server`]: listeners, connection threads, sign-in (forms + NTLMv2),
//!   command/event channels, faults and the admin endpoint.
//!
//! [`run`] parses the command line (documented in `man/cwa-sim.1`), binds
//! the listeners, prints `listening on ADDR` (and `admin listening on
//! ADDR`) on stdout, and serves until killed (SIGTERM/SIGINT end the
//! process at once: all state is in memory and meant to be lost).
//!
//! The simulator imports `hex`, `net`, `ntlm` (the server side), `ops` and
//! `xml`; never the CWA client it stands in front of.

pub mod containers;
pub mod events;
pub mod http;
pub mod ocs;
pub mod published;
pub mod server;
pub mod users;

use std::fmt;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::ops::args::Args;

use self::ocs::{Ocs, OcsSettings, SessionReply};
use self::server::{Faults, Server, ServerSettings};

/// Why the simulator could not start. [`SimError::exit_code`] follows
/// sysexits(3).
#[derive(Debug)]
pub enum SimError {
    /// Bad command line (64).
    Usage(String),
    /// A file could not be read (66).
    Read { path: String, error: std::io::Error },
    /// The users file is malformed (65).
    Users(users::UsersError),
    /// The TLS certificate or key cannot be used (65).
    Tls(String),
    /// A listener could not be bound (71).
    Bind { addr: String, error: std::io::Error },
    /// `--help` or `--version` was printed (0).
    Informational,
}

impl SimError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            SimError::Usage(_) => 64,
            SimError::Users(_) | SimError::Tls(_) => 65,
            SimError::Read { .. } => 66,
            SimError::Bind { .. } => 71,
            SimError::Informational => 0,
        }
    }
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Usage(why) => write!(f, "{why}\n{USAGE}"),
            SimError::Read { path, error } => write!(f, "cannot read {path}: {error}"),
            SimError::Users(e) => write!(f, "{e}"),
            SimError::Tls(why) => write!(f, "TLS identity: {why}"),
            SimError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            SimError::Informational => Ok(()),
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SimError::Read { error, .. } | SimError::Bind { error, .. } => Some(error),
            SimError::Users(e) => Some(e),
            _ => None,
        }
    }
}

const USAGE: &str = "usage: cwa-sim --listen ADDR --users FILE [--admin-listen ADDR] \
[--tls-cert PEM --tls-key PEM] [--max-connections N] [--throttle on|off|N] [--latency-ms N] \
[--hold-ms N] [--poll-wait-ms N] [--session-timeout-s N] [--ticket-rotate-ms N] \
[--ticket-grace-ms N] [--session-reply attributes|elements] [--event-log N] [--max-body BYTES] \
[--idle-timeout-s N] [--stack-kib N]";

/// The parsed command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// CWA listener address.
    pub listen: String,
    /// Separate admin listener, if any.
    pub admin_listen: Option<String>,
    /// Users file path.
    pub users: String,
    /// TLS certificate chain (PEM) and PKCS#8 key (PEM).
    pub tls: Option<(String, String)>,
    /// Initial connection limit (0 = none).
    pub max_connections: usize,
    /// Initial throttle setting (see [`Faults::throttle`]).
    pub throttle: i64,
    /// Initial added latency.
    pub latency_ms: u64,
    /// Event GET hold time.
    pub hold_ms: u64,
    /// OCS settings.
    pub ocs: OcsSettings,
    /// Ticket rotation period.
    pub ticket_rotate_ms: u64,
    /// Grace window for the previous ticket.
    pub ticket_grace_ms: u64,
    /// Largest request body.
    pub max_body: usize,
    /// Idle/read timeout on connections.
    pub idle_timeout_s: u64,
    /// Connection thread stack size in KiB.
    pub stack_kib: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: String::new(),
            admin_listen: None,
            users: String::new(),
            tls: None,
            max_connections: 0,
            throttle: 0,
            latency_ms: 0,
            hold_ms: 30_000,
            ocs: OcsSettings::default(),
            ticket_rotate_ms: 300_000,
            ticket_grace_ms: 60_000,
            max_body: 64 * 1024,
            idle_timeout_s: 120,
            stack_kib: 128,
        }
    }
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Config, SimError> {
    let mut c = Config::default();
    let mut cert = None;
    let mut key = None;
    let mut args = Args::new(args.iter().cloned());
    while let Some(flag) = args.next_word() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}\nSee cwa-sim(1).");
            return Err(SimError::Informational);
        }
        if flag == "--version" {
            println!("cwa-sim {}", env!("CARGO_PKG_VERSION"));
            return Err(SimError::Informational);
        }
        let value = &args
            .value()
            .ok_or_else(|| SimError::Usage(format!("{flag} needs a value")))?;
        let num = |v: &str| -> Result<u64, SimError> {
            v.parse::<u64>()
                .map_err(|_| SimError::Usage(format!("{flag} {v}: expected a non-negative number")))
        };
        match flag.as_str() {
            "--listen" => c.listen = value.clone(),
            "--admin-listen" => c.admin_listen = Some(value.clone()),
            "--users" => c.users = value.clone(),
            "--tls-cert" => cert = Some(value.clone()),
            "--tls-key" => key = Some(value.clone()),
            "--max-connections" => c.max_connections = num(value)? as usize,
            "--throttle" => {
                c.throttle = match value.as_str() {
                    "on" => -1,
                    "off" => 0,
                    v => num(v)?.min(i64::MAX as u64) as i64,
                }
            }
            "--latency-ms" => c.latency_ms = num(value)?,
            "--hold-ms" => c.hold_ms = num(value)?,
            "--poll-wait-ms" => c.ocs.poll_wait_ms = num(value)?,
            "--session-timeout-s" => {
                c.ocs.session_timeout = Duration::from_secs(num(value)?.max(1))
            }
            "--ticket-rotate-ms" => c.ticket_rotate_ms = num(value)?,
            "--ticket-grace-ms" => c.ticket_grace_ms = num(value)?,
            "--session-reply" => {
                c.ocs.session_reply = match value.as_str() {
                    "attributes" => SessionReply::Attributes,
                    "elements" => SessionReply::Elements,
                    v => {
                        return Err(SimError::Usage(format!(
                            "--session-reply {v}: attributes or elements"
                        )))
                    }
                }
            }
            "--event-log" => c.ocs.event_log = num(value)?.clamp(1, 1_000_000) as usize,
            "--max-body" => c.max_body = num(value)?.clamp(1024, 16 * 1024 * 1024) as usize,
            "--idle-timeout-s" => c.idle_timeout_s = num(value)?.max(1),
            "--stack-kib" => c.stack_kib = num(value)?.clamp(32, 16 * 1024) as usize,
            other => return Err(SimError::Usage(format!("unknown option {other}"))),
        }
    }
    if c.listen.is_empty() {
        return Err(SimError::Usage("--listen is required".into()));
    }
    if c.users.is_empty() {
        return Err(SimError::Usage("--users is required".into()));
    }
    c.tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(SimError::Usage(
                "--tls-cert and --tls-key go together".into(),
            ))
        }
    };
    Ok(c)
}

fn read_file(path: &str) -> Result<Vec<u8>, SimError> {
    std::fs::read(path).map_err(|error| SimError::Read {
        path: path.to_string(),
        error,
    })
}

/// Raises the open-file limit to its hard maximum: each session holds a
/// long-poll connection, and load runs open thousands.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::warn!("could not raise the open-file limit");
            }
        }
    }
}

fn bind(addr: &str) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr).map_err(|error| SimError::Bind {
        addr: addr.to_string(),
        error,
    })
}

/// Runs the simulator with the given arguments (after the program name).
/// Returns only on a start-up error.
pub fn run(args: &[String]) -> Result<(), SimError> {
    let config = parse_args(args)?;
    // A thread per held event GET: see `ops::futex`.
    crate::ops::futex::use_global_hash();
    let users_text = read_file(&config.users)?;
    let users_text = String::from_utf8(users_text).map_err(|_| {
        SimError::Users(users::UsersError {
            line: 0,
            why: "not UTF-8".into(),
        })
    })?;
    let directory = users::Directory::parse(&users_text).map_err(SimError::Users)?;
    let tls = match &config.tls {
        None => None,
        Some((cert, key)) => {
            let cert_pem = read_file(cert)?;
            let key_pem = read_file(key)?;
            let identity = native_tls::Identity::from_pkcs8(&cert_pem, &key_pem)
                .map_err(|e| SimError::Tls(format!("{cert} / {key}: {e}")))?;
            Some(native_tls::TlsAcceptor::new(identity).map_err(|e| SimError::Tls(e.to_string()))?)
        }
    };
    raise_fd_limit();
    let listener = bind(&config.listen)?;
    let admin_listener = config.admin_listen.as_deref().map(bind).transpose()?;
    let ocs = Ocs::new(
        directory,
        config.ocs.clone(),
        Duration::from_millis(config.ticket_rotate_ms),
        Duration::from_millis(config.ticket_grace_ms),
    );
    let faults = Faults::default();
    faults
        .max_connections
        .store(config.max_connections, Ordering::Relaxed);
    faults.throttle.store(config.throttle, Ordering::Relaxed);
    faults
        .latency_ms
        .store(config.latency_ms, Ordering::Relaxed);
    faults.hold_ms.store(config.hold_ms, Ordering::Relaxed);
    let settings = ServerSettings {
        limits: http::Limits {
            max_body: config.max_body,
            ..http::Limits::default()
        },
        idle_timeout: Duration::from_secs(config.idle_timeout_s),
        stack_size: config.stack_kib * 1024,
        admin_on_main: admin_listener.is_none(),
    };
    let server = Arc::new(Server::new(ocs, faults, settings, tls));
    let local = listener.local_addr().map_err(|error| SimError::Bind {
        addr: config.listen.clone(),
        error,
    })?;
    log::info!(
        "cwa-sim: {} users, {} on {local}",
        server.ocs.directory.users.len(),
        if config.tls.is_some() {
            "HTTPS"
        } else {
            "HTTP"
        }
    );
    server::announce(&format!("listening on {local}"));
    if let Some(admin) = admin_listener {
        let admin_addr = admin.local_addr().map_err(|error| SimError::Bind {
            addr: config.admin_listen.clone().unwrap_or_default(),
            error,
        })?;
        server::announce(&format!("admin listening on {admin_addr}"));
        let s = Arc::clone(&server);
        std::thread::Builder::new()
            .name("admin-accept".into())
            .spawn(move || s.accept_loop(admin, true))
            .map_err(|error| SimError::Bind {
                addr: admin_addr.to_string(),
                error,
            })?;
    }
    let sweeper = Arc::clone(&server);
    let _ = std::thread::Builder::new()
        .name("sweeper".into())
        .stack_size(256 * 1024)
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            sweeper.ocs.sweep();
        });
    server.accept_loop(listener, false);
    Ok(())
}
