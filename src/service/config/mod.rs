//! collabd's own configuration: what the daemon needs before it can reach
//! the Config DB. Everything else (CWA URL, session limits, timeouts) is the
//! instance's row in the Config DB.
//!
//! Sources, highest precedence first:
//!
//! 1. command-line flags (`--listen ADDR` or `--listen=ADDR`; every file key
//!    has a flag, its `_` written `-`);
//! 2. the environment: `COLLABD_DATABASE_URL` for `database`, `RUST_LOG` for
//!    `log_level`;
//! 3. the configuration file (`--config FILE`, default
//!    `/etc/collabd/collabd.conf`, which may be absent when the flags say
//!    everything);
//! 4. built-in defaults.
//!
//! The file is `key = value` lines; `#` starts a comment line; blank lines
//! are ignored; a value may be wrapped in double quotes to keep leading or
//! trailing spaces; `#` inside a value is part of it. Unknown keys,
//! duplicate keys, empty values and bad values are errors that name the
//! file and line. The format and every key are documented in
//! collabd.conf(5). Nothing here ever prints the database password:
//! [`Config`]'s `Debug` and [`redact_database`] hide it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ops::args::Args;

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

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon.
    Run(Config),
    /// `--check-config`: validate, print the resolved configuration, exit.
    CheckConfig(Config),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// The `--help` text.
pub fn usage() -> String {
    let mut text = String::from(
        "usage: collabd [--config FILE] [--check-config] [--KEY VALUE ...]\n\
         \n\
         The collaboration service. Settings (see collabd.conf(5)):\n",
    );
    for key in KEYS {
        text.push_str(&format!("  --{}\n", key.replace('_', "-")));
    }
    text.push_str(
        "Other flags: --config FILE (default /etc/collabd/collabd.conf), --check-config,\n\
         --help, --version. Environment: COLLABD_DATABASE_URL, RUST_LOG.\n",
    );
    text
}

/// Raw settings: key -> (value, origin), later sources overwriting.
type Raw = HashMap<&'static str, (String, Origin)>;

fn known_key(name: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| *k == name)
}

/// Parse the file's text. `path` is only used in messages.
pub fn parse_file(
    path: &Path,
    text: &str,
) -> Result<Vec<(&'static str, String, usize)>, ConfigError> {
    let syntax = |line: usize, message: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(syntax(
                line_no,
                format!("expected `key = value`, found {line:?}"),
            ));
        };
        let name = name.trim();
        let Some(key) = known_key(name) else {
            return Err(syntax(
                line_no,
                format!("unknown key {name:?} (known: {})", KEYS.join(", ")),
            ));
        };
        if let Some(first) = seen.insert(key, line_no) {
            return Err(syntax(
                line_no,
                format!("{key} is already set on line {first}"),
            ));
        }
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('"') {
            match inner.strip_suffix('"') {
                Some(inner) if !inner.contains('"') => inner,
                _ => {
                    return Err(syntax(
                        line_no,
                        format!(
                        "{key}: unbalanced quotes (a quoted value is \"...\" with no \" inside)"
                    ),
                    ))
                }
            }
        } else {
            value
        };
        if value.is_empty() {
            return Err(syntax(
                line_no,
                format!("{key} has an empty value; remove the line to use the default"),
            ));
        }
        out.push((key, value.to_string(), line_no));
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        )));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    String::from_utf8(bytes)
        .map_err(|_| read_err(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8")))
}

impl Command {
    /// Resolve the command line of this process with its environment.
    pub fn from_process() -> Result<Command, ConfigError> {
        Command::parse(std::env::args_os().skip(1), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Resolve `args` (without the program name) with `env` as the
    /// environment. Files are read from the paths the arguments give.
    pub fn parse(
        args: impl IntoIterator<Item = OsString>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Command, ConfigError> {
        let mut flags: Vec<(&'static str, String, String)> = Vec::new();
        let mut config_file: Option<PathBuf> = None;
        let mut check = false;
        let words = args
            .into_iter()
            .map(|a| {
                a.into_string()
                    .map_err(|a| ConfigError::Usage(format!("argument {a:?} is not UTF-8")))
            })
            .collect::<Result<Vec<String>, ConfigError>>()?;
        let mut args = Args::new(words);
        while let Some(flag) = args.next_word() {
            let mut value = |flag: &str| {
                args.value()
                    .ok_or_else(|| ConfigError::Usage(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "-V" | "--version" => return Ok(Command::Version),
                "--check-config" => check = true,
                "-c" | "--config" => config_file = Some(PathBuf::from(value(&flag)?)),
                other => {
                    let key = other
                        .strip_prefix("--")
                        .and_then(|name| known_key(&name.replace('-', "_")))
                        .filter(|_| !other.contains('_'))
                        .ok_or_else(|| ConfigError::Usage(format!("unknown option {other:?}")))?;
                    let v = value(&flag)?;
                    flags.push((key, v, flag.clone()));
                }
            }
        }

        let mut raw: Raw = HashMap::new();
        let file = match config_file {
            Some(path) => Some(path),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        if let Some(path) = &file {
            let text = read_file(path)?;
            for (key, value, line) in parse_file(path, &text)? {
                raw.insert(
                    key,
                    (
                        value,
                        Origin::File {
                            path: path.clone(),
                            line,
                        },
                    ),
                );
            }
        }
        for (key, var) in [
            ("database", "COLLABD_DATABASE_URL"),
            ("log_level", "RUST_LOG"),
        ] {
            if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
                raw.insert(key, (v, Origin::Env(var)));
            }
        }
        for (key, value, flag) in flags {
            if value.is_empty() {
                return Err(ConfigError::Usage(format!("{flag} has an empty value")));
            }
            raw.insert(key, (value, Origin::Flag(flag)));
        }
        let config = resolve(raw, file, env)?;
        Ok(if check {
            Command::CheckConfig(config)
        } else {
            Command::Run(config)
        })
    }
}

fn invalid(key: &'static str, origin: &Origin, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        origin: origin.clone(),
        message: message.into(),
    }
}

fn number(
    raw: &mut Raw,
    key: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some((value, origin)) = raw.remove(key) else {
        return Ok(default);
    };
    let n: u64 = value
        .parse()
        .map_err(|_| invalid(key, &origin, format!("{value:?} is not a whole number")))?;
    if !(min..=max).contains(&n) {
        return Err(invalid(
            key,
            &origin,
            format!("{n} is outside {min}..={max}"),
        ));
    }
    Ok(n)
}

fn resolve(
    mut raw: Raw,
    config_file: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let (instance, origin) = raw.remove("instance").ok_or(ConfigError::Missing {
        key: "instance",
        hint: "set `instance` in the configuration file or pass --instance NAME",
    })?;
    if instance.len() > 63
        || !instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "instance",
            &origin,
            "use at most 63 letters, digits, '-', '_' or '.'",
        ));
    }
    let (database, _) = raw.remove("database").ok_or(ConfigError::Missing {
        key: "database",
        hint: "set `database`, COLLABD_DATABASE_URL or --database URL",
    })?;
    let database_password_file = match raw.remove("database_password_file") {
        Some((v, _)) => Some(PathBuf::from(v)),
        // A systemd credential (LoadCredential=dbpass:...) if present.
        None => env("CREDENTIALS_DIRECTORY")
            .map(|dir| Path::new(&dir).join("dbpass"))
            .filter(|p| p.is_file()),
    };
    let listen = match raw.remove("listen") {
        None => SocketAddr::from(([0, 0, 0, 0], 3200)),
        Some((v, origin)) => v.parse().map_err(|_| {
            invalid(
                "listen",
                &origin,
                format!("{v:?} is not IP:PORT (e.g. 0.0.0.0:3200 or [::]:3200)"),
            )
        })?,
    };
    let advertise = match raw.remove("advertise") {
        None => None,
        Some((v, origin)) => {
            let port_ok = v.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok || v.chars().any(char::is_whitespace) {
                return Err(invalid(
                    "advertise",
                    &origin,
                    format!("{v:?} is not HOST:PORT (e.g. bcs-01.example.com:3200)"),
                ));
            }
            Some(v)
        }
    };
    let tls = match (raw.remove("tls_cert"), raw.remove("tls_key")) {
        (None, None) => None,
        (Some((cert, _)), Some((key, _))) => Some(TlsFiles {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        }),
        (Some((_, origin)), None) => {
            return Err(invalid("tls_cert", &origin, "tls_key must be set too"))
        }
        (None, Some((_, origin))) => {
            return Err(invalid("tls_key", &origin, "tls_cert must be set too"))
        }
    };
    let cwa_ca_file = raw.remove("cwa_ca_file").map(|(v, _)| PathBuf::from(v));
    let state_directory = match raw.remove("state_directory") {
        Some((v, _)) => Some(PathBuf::from(v)),
        // systemd may list several directories, separated by colons.
        None => env("STATE_DIRECTORY")
            .and_then(|dirs| dirs.split(':').next().map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty()),
    };
    let log_filter = match raw.remove("log_level") {
        None => "info".to_string(),
        Some((v, origin)) => {
            crate::ops::logging::validate_filter(&v)
                .map_err(|why| invalid("log_level", &origin, why))?;
            v
        }
    };
    let max_unauthenticated = number(&mut raw, "max_unauthenticated", 256, 1, 65_536)? as usize;
    let max_unauthenticated_per_address =
        number(&mut raw, "max_unauthenticated_per_address", 0, 0, 65_536)? as usize;
    let relay_addresses = match raw.remove("relay_addresses") {
        None => Vec::new(),
        Some((v, origin)) => v
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse::<std::net::IpAddr>().map_err(|_| {
                    invalid(
                        "relay_addresses",
                        &origin,
                        format!("{a:?} is not an IP address (list them with commas)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let handshake_timeout = Duration::from_millis(number(
        &mut raw,
        "handshake_timeout_ms",
        10_000,
        100,
        600_000,
    )?);
    let key_proof_origin = raw.get("key_proof_timeout_ms").map(|(_, o)| o.clone());
    let key_proof_timeout = Duration::from_millis(number(
        &mut raw,
        "key_proof_timeout_ms",
        3_000,
        100,
        600_000,
    )?);
    let key_proof_timeout = match key_proof_origin {
        Some(origin) if key_proof_timeout > handshake_timeout => {
            return Err(invalid(
                "key_proof_timeout_ms",
                &origin,
                format!(
                    "{} is longer than handshake_timeout_ms ({})",
                    key_proof_timeout.as_millis(),
                    handshake_timeout.as_millis()
                ),
            ))
        }
        // The default never outlasts a shorter sign-in deadline.
        _ => key_proof_timeout.min(handshake_timeout),
    };
    let status_timeout = Duration::from_millis(number(
        &mut raw,
        "status_timeout_ms",
        120_000,
        1_000,
        86_400_000,
    )?);
    let shutdown_grace =
        Duration::from_millis(number(&mut raw, "shutdown_grace_ms", 10_000, 0, 600_000)?);
    let heartbeat_interval = Duration::from_millis(number(
        &mut raw,
        "heartbeat_interval_ms",
        5_000,
        100,
        3_600_000,
    )?);
    let lost_origin = raw.get("instance_lost_after_ms").map(|(_, o)| o.clone());
    let instance_lost_after = Duration::from_millis(number(
        &mut raw,
        "instance_lost_after_ms",
        15_000,
        1_000,
        86_400_000,
    )?);
    if instance_lost_after <= heartbeat_interval * 2 {
        let message = format!(
            "{} ms is not more than twice heartbeat_interval_ms ({} ms): \
             a live instance would be taken for lost",
            instance_lost_after.as_millis(),
            heartbeat_interval.as_millis()
        );
        return Err(match lost_origin {
            Some(origin) => invalid("instance_lost_after_ms", &origin, message),
            None => ConfigError::Usage(format!(
                "heartbeat_interval_ms is too long for the default instance_lost_after_ms: {message}"
            )),
        });
    }
    let command_timeout = Duration::from_millis(number(
        &mut raw,
        "command_timeout_ms",
        30_000,
        100,
        600_000,
    )?);
    let default_stall = u64::try_from((heartbeat_interval * 2).as_millis())
        .unwrap_or(u64::MAX / 2)
        .saturating_add(25_000);
    let heartbeat_stall = Duration::from_millis(number(
        &mut raw,
        "heartbeat_stall_ms",
        default_stall,
        1_000,
        86_400_000,
    )?);
    let thread_stack_size = number(&mut raw, "thread_stack_kib", 512, 64, 16_384)? as usize * 1024;
    debug_assert!(raw.is_empty(), "every key is resolved: {:?}", raw.keys());
    Ok(Config {
        config_file,
        instance,
        database,
        database_password_file,
        listen,
        advertise,
        tls,
        cwa_ca_file,
        state_directory,
        log_filter,
        max_unauthenticated,
        max_unauthenticated_per_address,
        relay_addresses,
        handshake_timeout,
        key_proof_timeout,
        status_timeout,
        shutdown_grace,
        heartbeat_interval,
        instance_lost_after,
        command_timeout,
        heartbeat_stall,
        thread_stack_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let mut random = [0u8; 8];
            openssl::rand::rand_bytes(&mut random).unwrap();
            let hex = crate::hex::encode(&random);
            let dir = std::env::temp_dir().join(format!("collabd-config-{hex}"));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
        Command::parse(args.iter().map(OsString::from), env)
    }

    fn run_config(cmd: Command) -> Config {
        match cmd {
            Command::Run(c) => c,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn file_values_and_defaults() {
        let dir = Scratch::new();
        let path = dir.file(
            "collabd.conf",
            "# collabd\n\ninstance = bcs-01\ndatabase = postgresql://collabd@db/collab\n\
             tls_cert = /etc/collabd/cert.pem\ntls_key=/etc/collabd/key.pem\n\
             log_level = \"collabd=debug,warn\"\nstatus_timeout_ms = 30000\n",
        );
        let c = run_config(parse(&["--config", path.to_str().unwrap()], &no_env).unwrap());
        assert_eq!(c.instance, "bcs-01");
        assert_eq!(c.database, "postgresql://collabd@db/collab");
        assert_eq!(c.listen, "0.0.0.0:3200".parse().unwrap());
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "/etc/collabd/cert.pem".into(),
                key: "/etc/collabd/key.pem".into()
            })
        );
        assert_eq!(c.log_filter, "collabd=debug,warn");
        assert_eq!(c.status_timeout, Duration::from_secs(30));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_unauthenticated, 256);
        assert_eq!(c.thread_stack_size, 512 * 1024);
        assert_eq!(c.config_file, Some(path));
        let limits = c.listener_limits();
        assert_eq!(limits.max_unauthenticated, 256);
        assert_eq!(limits.read_timeout, Duration::from_secs(10));
        assert_eq!(limits.thread_stack_size, 512 * 1024);
    }

    #[test]
    fn flags_override_environment_overrides_file() {
        let dir = Scratch::new();
        let path = dir.file(
            "c.conf",
            "instance = a\ndatabase = host=file\nlisten = 127.0.0.1:1\nlog_level = warn\n",
        );
        let env = |name: &str| match name {
            "COLLABD_DATABASE_URL" => Some("host=env".to_string()),
            "RUST_LOG" => Some("debug".to_string()),
            _ => None,
        };
        let p = path.to_str().unwrap();
        let c = run_config(parse(&["-c", p], &env).unwrap());
        assert_eq!(c.database, "host=env");
        assert_eq!(c.log_filter, "debug");
        assert_eq!(c.listen, "127.0.0.1:1".parse().unwrap());
        let c = run_config(
            parse(
                &[
                    "-c",
                    p,
                    "--database=host=flag",
                    "--listen",
                    "[::1]:3300",
                    "--instance",
                    "b",
                    "--log-level",
                    "trace",
                ],
                &env,
            )
            .unwrap(),
        );
        assert_eq!(c.database, "host=flag");
        assert_eq!(c.listen, "[::1]:3300".parse().unwrap());
        assert_eq!(c.instance, "b");
        assert_eq!(c.log_filter, "trace");
    }

    #[test]
    fn flags_alone_are_enough_and_check_config_is_recognised() {
        let cmd = parse(
            &[
                "--config",
                "/nonexistent-dir-for-test/none.conf",
                "--instance",
                "x",
                "--database",
                "host=db",
            ],
            &no_env,
        );
        assert!(
            matches!(cmd, Err(ConfigError::Read { .. })),
            "explicit file must exist"
        );
        let dir = Scratch::new();
        let empty = dir.file("empty.conf", "# nothing\n");
        let cmd = parse(
            &[
                "--check-config",
                "-c",
                empty.to_str().unwrap(),
                "--instance",
                "x",
                "--database",
                "host=db",
            ],
            &no_env,
        )
        .unwrap();
        assert!(matches!(cmd, Command::CheckConfig(ref c) if c.instance == "x"));
        assert_eq!(parse(&["--help"], &no_env).unwrap(), Command::Help);
        assert_eq!(parse(&["-V"], &no_env).unwrap(), Command::Version);
    }

    #[test]
    fn errors_name_the_line_and_exit_78() {
        let dir = Scratch::new();
        let cases = [
            ("instance = a\nbogus = 1\n", 2, "unknown key"),
            (
                "instance = a\nno equals sign\n",
                2,
                "expected `key = value`",
            ),
            ("instance = a\ninstance = b\n", 2, "already set on line 1"),
            ("\n\nlisten =\n", 3, "empty value"),
            ("log_level = \"info\n", 1, "unbalanced quotes"),
        ];
        for (text, line, needle) in cases {
            let path = dir.file("bad.conf", text);
            let err = parse(&["-c", path.to_str().unwrap()], &no_env).unwrap_err();
            assert!(
                matches!(err, ConfigError::Syntax { line: l, .. } if l == line),
                "{text:?}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains(needle), "{message}");
            assert!(message.contains(&format!("bad.conf:{line}:")), "{message}");
            assert_eq!(err.exit_code(), EX_CONFIG);
        }
    }

    #[test]
    fn bad_values_name_their_origin() {
        let dir = Scratch::new();
        let path = dir.file(
            "v.conf",
            "instance = a\ndatabase = host=x\nhandshake_timeout_ms = 10s\n",
        );
        let err = parse(&["-c", path.to_str().unwrap()], &no_env).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("v.conf:3: handshake_timeout_ms"),
            "{message}"
        );
        assert_eq!(err.exit_code(), 78);

        let path = dir.file("w.conf", "instance = a\ndatabase = host=x\n");
        let p = path.to_str().unwrap();
        for (args, needle) in [
            (vec!["--listen", "nowhere"], "flag --listen: listen"),
            (vec!["--max-unauthenticated", "0"], "outside 1..=65536"),
            (vec!["--thread-stack-kib", "1"], "outside 64..=16384"),
            (vec!["--tls-cert", "/c.pem"], "tls_key must be set too"),
            (vec!["--log-level", "loud"], "log_level"),
            (vec!["--instance", "bad name"], "instance"),
            (
                vec![
                    "--instance-lost-after-ms",
                    "1000",
                    "--heartbeat-interval-ms",
                    "500",
                ],
                "not more than twice heartbeat_interval_ms",
            ),
        ] {
            let mut all = vec!["-c", p];
            all.extend(args);
            let err = parse(&all, &no_env).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert_eq!(err.exit_code(), 78);
        }
    }

    #[test]
    fn usage_errors_exit_64_and_missing_settings_78() {
        let dir = Scratch::new();
        let empty = dir.file("e.conf", "");
        let p = empty.to_str().unwrap();
        for args in [
            vec!["--frobnicate"],
            vec!["-c", p, "--instance"],
            vec!["--max_unauthenticated", "3"],
        ] {
            let err = parse(&args, &no_env).unwrap_err();
            assert_eq!(err.exit_code(), EX_USAGE, "{args:?}: {err}");
        }
        let err = parse(&["-c", p, "--database", "host=x"], &no_env).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                key: "instance",
                ..
            }
        ));
        let err = parse(&["-c", p, "--instance", "x"], &no_env).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                key: "database",
                ..
            }
        ));
        assert_eq!(err.exit_code(), EX_CONFIG);
    }

    #[test]
    fn oversized_and_non_utf8_files_are_refused() {
        let dir = Scratch::new();
        let big = dir.file("big.conf", &"# x\n".repeat(20_000));
        let err = parse(&["-c", big.to_str().unwrap()], &no_env).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        let path = dir.0.join("latin1.conf");
        std::fs::write(&path, b"instance = caf\xe9\n").unwrap();
        let err = parse(&["-c", path.to_str().unwrap()], &no_env).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn credentials_directory_supplies_the_password_file() {
        let dir = Scratch::new();
        let pass = dir.file("dbpass", "secret\n");
        let conf = dir.file("c.conf", "instance = a\ndatabase = host=db user=collabd\n");
        let creds = dir.0.to_str().unwrap().to_string();
        let env = move |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| creds.clone());
        let c = run_config(parse(&["-c", conf.to_str().unwrap()], &env).unwrap());
        assert_eq!(c.database_password_file, Some(pass));
    }

    #[test]
    fn passwords_never_appear_in_debug_output() {
        assert_eq!(
            redact_database("postgresql://collabd:s3cret@db:5432/collab?sslmode=require"),
            "postgresql://collabd:***@db:5432/collab?sslmode=require"
        );
        assert_eq!(
            redact_database("postgresql://db/collab?user=u&password=s3cret&sslmode=require"),
            "postgresql://db/collab?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact_database("host=db user=collabd password='s3 cret' dbname=collab"),
            "host=db user=collabd password=*** dbname=collab"
        );
        assert_eq!(
            redact_database("host=db mypassword=x"),
            "host=db mypassword=x"
        );
        let dir = Scratch::new();
        let conf = dir.file(
            "c.conf",
            "instance = a\ndatabase = host=db password=s3cret\n",
        );
        let c = run_config(parse(&["-c", conf.to_str().unwrap()], &no_env).unwrap());
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn the_shipped_example_parses_and_the_man_page_documents_every_key() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let example = root.join("dist/collabd.conf.example");
        let c = run_config(parse(&["-c", example.to_str().unwrap()], &no_env).unwrap());
        assert_eq!(c.instance, "bcs-01");
        assert_eq!(c.listen, "0.0.0.0:3200".parse().unwrap());
        let page = std::fs::read_to_string(root.join("man/collabd.conf.5")).unwrap();
        let flags = std::fs::read_to_string(root.join("man/collabd.8")).unwrap();
        for key in KEYS {
            assert!(
                page.contains(&format!(".BI {key} ")),
                "collabd.conf(5) lacks {key}"
            );
            let flag = format!("\\-\\-{}", key.replace('_', "\\-"));
            assert!(flags.contains(&flag), "collabd(8) lacks {flag}");
        }
    }

    #[test]
    fn advertise_is_host_and_port() {
        let base = ["--instance", "a", "--database", "postgresql://x/y"];
        let with = |v: &str| {
            let mut args: Vec<&str> = base.to_vec();
            args.extend(["--advertise", v]);
            parse(&args, &no_env)
        };
        let c = run_config(with("bcs-01.example.com:3200").unwrap());
        assert_eq!(c.advertise.as_deref(), Some("bcs-01.example.com:3200"));
        assert_eq!(run_config(parse(&base, &no_env).unwrap()).advertise, None);
        for bad in ["bcs-01", ":3200", "host:0", "host:99999", "a b:1"] {
            assert!(
                matches!(
                    with(bad),
                    Err(ConfigError::Invalid {
                        key: "advertise",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
