//! What collabd's configuration holds: its keys, the resolved [`Config`],
//! where each setting came from, and why a configuration is refused.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/collabd/collabd.conf";
/// sysexits(3) EX_USAGE: bad command line.
pub const EX_USAGE: u8 = 64;
/// sysexits(3) EX_CONFIG: bad configuration (the unit does not restart).
pub const EX_CONFIG: u8 = 78;
/// Largest configuration file accepted.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Where a setting came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A command-line flag.
    Flag(String),
    /// An environment variable.
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment {var}"),
        }
    }
}

/// Why the configuration is unusable.
#[derive(Debug)]
pub enum ConfigError {
    /// The command line is wrong (exit 64).
    Usage(String),
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line of the file is not `key = value` with a known key.
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is not acceptable.
    Invalid {
        /// The key.
        key: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A required setting is missing from every source.
    Missing {
        /// The key.
        key: &'static str,
        /// How to give it.
        hint: &'static str,
    },
}

impl ConfigError {
    /// The process exit status for this error: 64 (EX_USAGE) for a bad
    /// command line, 78 (EX_CONFIG) otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Usage(_) => EX_USAGE,
            _ => EX_CONFIG,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Usage(why) => write!(f, "{why} (see collabd --help)"),
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Syntax {
                path,
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
            ConfigError::Invalid {
                key,
                origin,
                message,
            } => write!(f, "{origin}: {key}: {message}"),
            ConfigError::Missing { key, hint } => write!(f, "{key} is not set ({hint})"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Every key of the file (and, with `-` for `_`, every flag).
pub const KEYS: &[&str] = &[
    "instance",
    "database",
    "database_password_file",
    "listen",
    "advertise",
    "tls_cert",
    "tls_key",
    "cwa_ca_file",
    "state_directory",
    "log_level",
    "max_unauthenticated",
    "max_unauthenticated_per_address",
    "relay_addresses",
    "handshake_timeout_ms",
    "key_proof_timeout_ms",
    "status_timeout_ms",
    "shutdown_grace_ms",
    "heartbeat_interval_ms",
    "instance_lost_after_ms",
    "command_timeout_ms",
    "heartbeat_stall_ms",
    "presence_republish_ms",
    "thread_stack_kib",
];

/// The device-link TLS identity (both PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, RSA or EC).
    pub key: PathBuf,
}

/// The daemon's configuration, resolved from flags, environment, file and
/// defaults. See collabd.conf(5) for each setting.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The configuration file read, if any.
    pub config_file: Option<PathBuf>,
    /// This instance's name: its row in the Config DB `instance` table.
    pub instance: String,
    /// Config DB connection string (URL or libpq key=value). May hold a
    /// password: never log it (use [`redact_database`]).
    pub database: String,
    /// A file holding the database password (e.g. a systemd credential).
    pub database_password_file: Option<PathBuf>,
    /// Device-link listen address (default `0.0.0.0:3200`).
    pub listen: SocketAddr,
    /// `host:port` the dispatcher should connect to, written in the
    /// instance's heartbeat. `None`: the bound address, with an unspecified
    /// IP (`0.0.0.0`, `::`) replaced by loopback.
    pub advertise: Option<String>,
    /// TLS on the device link, if configured.
    pub tls: Option<TlsFiles>,
    /// CA certificates (PEM) to trust for CWA instead of the system's
    /// trust store (passed to the CWA client's `ClientConfig::ca_file`).
    pub cwa_ca_file: Option<PathBuf>,
    /// Where registry and audit writes are kept while the Config DB is
    /// unavailable (`state_directory`, else `$STATE_DIRECTORY` as systemd's
    /// `StateDirectory=` sets it; `None`: such writes are lost, counted).
    pub state_directory: Option<PathBuf>,
    /// The log filter (env_logger syntax; default `info`).
    pub log_filter: String,
    /// Connections that have not signed in yet (default 256).
    pub max_unauthenticated: usize,
    /// Of those, from one source address not in `relay_addresses`; 0 (the
    /// default) sets no such cap.
    pub max_unauthenticated_per_address: usize,
    /// Addresses of dispatchers (or other relays) that carry many devices'
    /// connections: never held to `max_unauthenticated_per_address`.
    pub relay_addresses: Vec<std::net::IpAddr>,
    /// From connect to accepted login, and the per-read timeout until then
    /// (default 10 s).
    pub handshake_timeout: Duration,
    /// From connect to the device's proof of its key (the handshake's
    /// `Confirm`): a connection that has not proved it by then is cut, so
    /// that held Hellos cannot keep the unauthenticated places (default
    /// 3 s; at most `handshake_timeout`).
    pub key_proof_timeout: Duration,
    /// After sign-in: a device that sends nothing for this long is taken as
    /// gone, and its session is marked out of coverage (default 120 s).
    pub status_timeout: Duration,
    /// At shutdown, how long sessions get to sign out before their sockets
    /// are closed (default 10 s; keep below the unit's TimeoutStopSec).
    pub shutdown_grace: Duration,
    /// Instance heartbeat and settings refresh period (default 5 s).
    pub heartbeat_interval: Duration,
    /// Another instance whose heartbeat is older than this is taken as lost
    /// and its sessions are ended in the registry (default 15 s, the
    /// dispatcher's default for a stale heartbeat).
    pub instance_lost_after: Duration,
    /// A command CWA accepted whose outcome has not arrived after this gets
    /// a 306 result (default 30 s).
    pub command_timeout: Duration,
    /// The heartbeat thread making no progress for this long is a stall:
    /// reported in `STATUS=` and the systemd watchdog is no longer fed
    /// (default: two heartbeat intervals plus 25 s, more than one Config
    /// DB call may take: a 5 s pool wait and the 15 s statement timeout).
    pub heartbeat_stall: Duration,
    /// Stack size of connection and session threads (default 512 KiB: a
    /// login runs the TLS handshake, a CWA sign-in and Config DB queries,
    /// which need about 384 KiB in a debug build).
    pub thread_stack_size: usize,
    /// How often a session republishes its user's presence to CWA, which
    /// lets a published state lapse without it (default 5 minutes, what
    /// CWA asks of its clients; shorter only for tests).
    pub presence_republish: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("config_file", &self.config_file)
            .field("instance", &self.instance)
            .field("database", &redact_database(&self.database))
            .field("database_password_file", &self.database_password_file)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("tls", &self.tls)
            .field("cwa_ca_file", &self.cwa_ca_file)
            .field("state_directory", &self.state_directory)
            .field("log_filter", &self.log_filter)
            .field("max_unauthenticated", &self.max_unauthenticated)
            .field(
                "max_unauthenticated_per_address",
                &self.max_unauthenticated_per_address,
            )
            .field("relay_addresses", &self.relay_addresses)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("key_proof_timeout", &self.key_proof_timeout)
            .field("status_timeout", &self.status_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("instance_lost_after", &self.instance_lost_after)
            .field("command_timeout", &self.command_timeout)
            .field("heartbeat_stall", &self.heartbeat_stall)
            .field("thread_stack_size", &self.thread_stack_size)
            .field("presence_republish", &self.presence_republish)
            .finish()
    }
}

impl Config {
    /// The device-link listener's limits: the sign-in deadline is also the
    /// per-read timeout until sign-in (after it, the session sets
    /// `status_timeout` on its stream).
    pub fn listener_limits(&self) -> crate::service::listener::ListenerLimits {
        crate::service::listener::ListenerLimits {
            max_unauthenticated: self.max_unauthenticated,
            handshake_timeout: self.handshake_timeout,
            read_timeout: self.handshake_timeout,
            thread_stack_size: self.thread_stack_size,
        }
    }
}

/// The connection string with any password replaced by `***`: the
/// `user:password@` part of a URL, a `password=` URL query parameter, and a
/// libpq `password=` keyword.
pub fn redact_database(database: &str) -> String {
    let mut out = database.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password=") {
        let before_ok = i == 0 || matches!(rest.as_bytes()[i - 1], b' ' | b'?' | b'&' | b'\t');
        result.push_str(&rest[..i + "password=".len()]);
        rest = &rest[i + "password=".len()..];
        if before_ok {
            let end = if let Some(quoted) = rest.strip_prefix('\'') {
                quoted.find('\'').map_or(rest.len(), |j| j + 2)
            } else {
                rest.find([' ', '&', '\t']).unwrap_or(rest.len())
            };
            result.push_str("***");
            rest = &rest[end..];
        }
    }
    result.push_str(rest);
    result
}

/// Raw settings: key -> (value, origin), later sources overwriting.
pub(super) type Raw = HashMap<&'static str, (String, Origin)>;

pub(super) fn known_key(name: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| *k == name)
}
