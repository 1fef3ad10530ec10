//! The dispatcher's settings: command-line flags and the one environment
//! variable, parsed by hand into a validated [`DispatcherConfig`]. Every
//! limit has a documented default (see `man/collab-dispatcher.8`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::ops::args::Args;

/// Default device-facing listen address (the BES dispatcher port).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3101";
/// An instance whose heartbeat is older than this is skipped.
pub const DEFAULT_STALE_AFTER_MS: u64 = 15_000;
/// An instance silent this long is lost: the dispatcher ends its sessions
/// in the registry (the same default as collabd's `instance_lost_after_ms`).
pub const DEFAULT_INSTANCE_LOST_AFTER_MS: u64 = 15_000;
/// Concurrent device connections (each is one relay thread): room for
/// 5,000 devices (one CWA 2007 front end's worth) with some to spare.
pub const DEFAULT_MAX_CONNECTIONS: usize = 6_000;
/// The device's whole first frame (its Hello) must arrive within this.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 5_000;
/// After collabd's Challenge reached the device, its Confirm must arrive
/// within this.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Connections from one source address that have not yet had their Confirm
/// relayed. 16 addresses at this cap hold 64 of collabd's default 256
/// `max_unauthenticated` slots.
pub const DEFAULT_MAX_PENDING_PER_ADDRESS: u32 = 4;
/// On SIGTERM, how long open relays may go on before they are cut.
pub const DEFAULT_DRAIN_GRACE_MS: u64 = 10_000;
/// A relay with no byte in either direction for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 600_000;
/// Connecting to an instance (and its TLS handshake) and waiting for its
/// first frame, each bounded by this.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 5_000;
/// How often the instance health table is re-read.
pub const DEFAULT_REFRESH_MS: u64 = 1_000;
/// The environment variable that may carry the Config DB URL.
pub use crate::configdb::DATABASE_URL_ENV;

/// Everything the dispatcher needs to run, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// Where devices connect (`--listen`).
    pub listen: String,
    /// The Config DB (`--database` or `COLLABD_DATABASE_URL`). It may carry
    /// a password, so `Debug` never prints it.
    pub database_url: String,
    /// Heartbeats older than this are stale (`--stale-after-ms`).
    pub stale_after: Duration,
    /// Instances silent this long have their sessions ended in the
    /// registry (`--instance-lost-after-ms`).
    pub instance_lost_after: Duration,
    /// Concurrent device connections (`--max-connections`).
    pub max_connections: usize,
    /// Deadline for the device's first frame (`--header-timeout-ms`).
    pub header_timeout: Duration,
    /// Deadline for the device's Confirm after the Challenge was passed on
    /// (`--handshake-timeout-ms`).
    pub handshake_timeout: Duration,
    /// Pending connections per source address (`--max-pending-per-address`).
    pub max_pending_per_address: u32,
    /// How long relays may go on after SIGTERM (`--drain-grace-ms`).
    pub drain_grace: Duration,
    /// Relay closed after this long with no traffic (`--idle-timeout-ms`).
    pub idle_timeout: Duration,
    /// Connect, TLS handshake and first reply from an instance
    /// (`--upstream-timeout-ms`).
    pub upstream_timeout: Duration,
    /// Re-read of instance health (`--refresh-ms`).
    pub refresh: Duration,
    /// TLS to collabd (`--upstream-tls`), with optional extra trust anchor
    /// (`--upstream-ca FILE`, PEM).
    pub upstream_tls: Option<UpstreamTls>,
    /// Diagnostic copy of every relayed byte (`--record-dir DIR`).
    pub record_dir: Option<PathBuf>,
}

/// TLS settings for the link to collabd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// A PEM file of CA certificates added to the system roots.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for DispatcherConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatcherConfig")
            .field("listen", &self.listen)
            .field("database_url", &"<redacted>")
            .field("stale_after", &self.stale_after)
            .field("instance_lost_after", &self.instance_lost_after)
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending_per_address", &self.max_pending_per_address)
            .field("drain_grace", &self.drain_grace)
            .field("idle_timeout", &self.idle_timeout)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("refresh", &self.refresh)
            .field("upstream_tls", &self.upstream_tls)
            .field("record_dir", &self.record_dir)
            .finish()
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the dispatcher.
    Run(Box<DispatcherConfig>),
    /// Print usage and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// A command line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A flag that the dispatcher does not know.
    UnknownFlag(String),
    /// A flag given without its value.
    MissingValue(&'static str),
    /// A value that does not parse or is out of range.
    BadValue {
        /// The flag.
        flag: &'static str,
        /// Why.
        why: String,
    },
    /// No `--database` and no `COLLABD_DATABASE_URL`.
    NoDatabase,
    /// `--upstream-ca` without `--upstream-tls`.
    CaWithoutTls,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownFlag(flag) => write!(f, "unknown flag {flag:?}"),
            ConfigError::MissingValue(flag) => write!(f, "{flag} needs a value"),
            ConfigError::BadValue { flag, why } => write!(f, "bad value for {flag}: {why}"),
            ConfigError::NoDatabase => write!(
                f,
                "no Config DB: give --database URL or set {DATABASE_URL_ENV}"
            ),
            ConfigError::CaWithoutTls => write!(f, "--upstream-ca needs --upstream-tls"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The usage text printed by `--help`.
pub const USAGE: &str = "\
usage: collab-dispatcher [--listen ADDR] [--database URL] [--stale-after-ms N]
                         [--instance-lost-after-ms N]
                         [--max-connections N] [--header-timeout-ms N]
                         [--handshake-timeout-ms N]
                         [--max-pending-per-address N] [--drain-grace-ms N]
                         [--idle-timeout-ms N] [--upstream-timeout-ms N]
                         [--refresh-ms N] [--upstream-tls [--upstream-ca FILE]]
                         [--record-dir DIR]
       collab-dispatcher --help | --version
Relays device connections (default port 3101) to live collabd instances.
See collab-dispatcher(8).";

/// Parses the arguments after the program name. `env_database_url` is the
/// value of `COLLABD_DATABASE_URL`, passed in so tests need no process
/// environment; `--database` wins over it.
pub fn parse_args<I>(args: I, env_database_url: Option<String>) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = String>,
{
    let mut listen = DEFAULT_LISTEN.to_string();
    let mut database_url: Option<String> = None;
    let mut stale_after_ms = DEFAULT_STALE_AFTER_MS;
    let mut instance_lost_after_ms = DEFAULT_INSTANCE_LOST_AFTER_MS;
    let mut max_connections = DEFAULT_MAX_CONNECTIONS;
    let mut header_timeout_ms = DEFAULT_HEADER_TIMEOUT_MS;
    let mut handshake_timeout_ms = DEFAULT_HANDSHAKE_TIMEOUT_MS;
    let mut max_pending_per_address = u64::from(DEFAULT_MAX_PENDING_PER_ADDRESS);
    let mut drain_grace_ms = DEFAULT_DRAIN_GRACE_MS;
    let mut idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS;
    let mut upstream_timeout_ms = DEFAULT_UPSTREAM_TIMEOUT_MS;
    let mut refresh_ms = DEFAULT_REFRESH_MS;
    let mut upstream_tls = false;
    let mut ca_file: Option<PathBuf> = None;
    let mut record_dir: Option<PathBuf> = None;

    let mut args = Args::new(args);
    while let Some(flag) = args.next_word() {
        let mut value = |name: &'static str| args.value().ok_or(ConfigError::MissingValue(name));
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--listen" => listen = value("--listen")?,
            "--database" => database_url = Some(value("--database")?),
            "--stale-after-ms" => {
                stale_after_ms = positive("--stale-after-ms", &value("--stale-after-ms")?)?
            }
            "--instance-lost-after-ms" => {
                instance_lost_after_ms = positive(
                    "--instance-lost-after-ms",
                    &value("--instance-lost-after-ms")?,
                )?
            }
            "--max-connections" => {
                max_connections =
                    positive("--max-connections", &value("--max-connections")?)? as usize
            }
            "--header-timeout-ms" => {
                header_timeout_ms = positive("--header-timeout-ms", &value("--header-timeout-ms")?)?
            }
            "--handshake-timeout-ms" => {
                handshake_timeout_ms =
                    positive("--handshake-timeout-ms", &value("--handshake-timeout-ms")?)?
            }
            "--max-pending-per-address" => {
                max_pending_per_address = positive(
                    "--max-pending-per-address",
                    &value("--max-pending-per-address")?,
                )?
            }
            "--drain-grace-ms" => {
                drain_grace_ms = positive("--drain-grace-ms", &value("--drain-grace-ms")?)?
            }
            "--idle-timeout-ms" => {
                idle_timeout_ms = positive("--idle-timeout-ms", &value("--idle-timeout-ms")?)?
            }
            "--upstream-timeout-ms" => {
                upstream_timeout_ms =
                    positive("--upstream-timeout-ms", &value("--upstream-timeout-ms")?)?
            }
            "--refresh-ms" => refresh_ms = positive("--refresh-ms", &value("--refresh-ms")?)?,
            "--upstream-tls" => {
                if args.has_inline_value() {
                    return Err(ConfigError::BadValue {
                        flag: "--upstream-tls",
                        why: "takes no value".into(),
                    });
                }
                upstream_tls = true
            }
            "--upstream-ca" => ca_file = Some(PathBuf::from(value("--upstream-ca")?)),
            "--record-dir" => record_dir = Some(PathBuf::from(value("--record-dir")?)),
            _ => {
                let shown = match args.has_inline_value() {
                    true => format!("{flag}={}", args.value().unwrap_or_default()),
                    false => flag,
                };
                return Err(ConfigError::UnknownFlag(shown));
            }
        }
    }

    if listen.parse::<std::net::SocketAddr>().is_err() && !listen.contains(':') {
        return Err(ConfigError::BadValue {
            flag: "--listen",
            why: format!("{listen:?} is not HOST:PORT"),
        });
    }
    let database_url = database_url
        .or(env_database_url)
        .filter(|url| !url.is_empty())
        .ok_or(ConfigError::NoDatabase)?;
    if ca_file.is_some() && !upstream_tls {
        return Err(ConfigError::CaWithoutTls);
    }
    // The ceiling keeps every count well inside u32 milliseconds and makes a
    // typo like an extra zero visible instead of effectively "never".
    const MAX_MS: u64 = 24 * 3600 * 1000;
    for (flag, ms) in [
        ("--stale-after-ms", stale_after_ms),
        ("--instance-lost-after-ms", instance_lost_after_ms),
        ("--header-timeout-ms", header_timeout_ms),
        ("--handshake-timeout-ms", handshake_timeout_ms),
        ("--drain-grace-ms", drain_grace_ms),
        ("--idle-timeout-ms", idle_timeout_ms),
        ("--upstream-timeout-ms", upstream_timeout_ms),
        ("--refresh-ms", refresh_ms),
    ] {
        if ms > MAX_MS {
            return Err(ConfigError::BadValue {
                flag,
                why: format!("{ms} ms is more than a day"),
            });
        }
    }
    if max_pending_per_address > 1_000_000 {
        return Err(ConfigError::BadValue {
            flag: "--max-pending-per-address",
            why: format!("{max_pending_per_address} is more than 1000000"),
        });
    }
    if max_connections > 1_000_000 {
        return Err(ConfigError::BadValue {
            flag: "--max-connections",
            why: format!("{max_connections} is more than 1000000"),
        });
    }

    Ok(Command::Run(Box::new(DispatcherConfig {
        listen,
        database_url,
        stale_after: Duration::from_millis(stale_after_ms),
        instance_lost_after: Duration::from_millis(instance_lost_after_ms),
        max_connections,
        header_timeout: Duration::from_millis(header_timeout_ms),
        handshake_timeout: Duration::from_millis(handshake_timeout_ms),
        max_pending_per_address: max_pending_per_address as u32,
        drain_grace: Duration::from_millis(drain_grace_ms),
        idle_timeout: Duration::from_millis(idle_timeout_ms),
        upstream_timeout: Duration::from_millis(upstream_timeout_ms),
        refresh: Duration::from_millis(refresh_ms),
        upstream_tls: upstream_tls.then_some(UpstreamTls { ca_file }),
        record_dir,
    })))
}

fn positive(flag: &'static str, text: &str) -> Result<u64, ConfigError> {
    match text.parse::<u64>() {
        Ok(0) => Err(ConfigError::BadValue {
            flag,
            why: "must be at least 1".into(),
        }),
        Ok(n) => Ok(n),
        Err(e) => Err(ConfigError::BadValue {
            flag,
            why: format!("{text:?}: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_with_env_database() {
        let Command::Run(cfg) = parse_args(args(&[]), Some("postgres://x".into())).unwrap() else {
            panic!("expected Run");
        };
        assert_eq!(cfg.listen, DEFAULT_LISTEN);
        assert_eq!(cfg.database_url, "postgres://x");
        assert_eq!(cfg.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(cfg.upstream_tls, None);
        assert_eq!(cfg.max_pending_per_address, 4);
        assert_eq!(cfg.handshake_timeout, Duration::from_secs(5));
        assert_eq!(cfg.drain_grace, Duration::from_secs(10));
    }

    #[test]
    fn flags_override_and_database_flag_wins() {
        let cmd = parse_args(
            args(&[
                "--listen=127.0.0.1:0",
                "--database",
                "postgres://flag",
                "--stale-after-ms",
                "500",
                "--max-connections",
                "3",
                "--max-pending-per-address=2",
                "--handshake-timeout-ms",
                "700",
                "--drain-grace-ms",
                "0900",
                "--upstream-tls",
                "--upstream-ca",
                "/tmp/ca.pem",
            ]),
            Some("postgres://env".into()),
        )
        .unwrap();
        let Command::Run(cfg) = cmd else { panic!() };
        assert_eq!(cfg.listen, "127.0.0.1:0");
        assert_eq!(cfg.database_url, "postgres://flag");
        assert_eq!(cfg.stale_after, Duration::from_millis(500));
        assert_eq!(cfg.max_connections, 3);
        assert_eq!(cfg.max_pending_per_address, 2);
        assert_eq!(cfg.handshake_timeout, Duration::from_millis(700));
        assert_eq!(cfg.drain_grace, Duration::from_millis(900));
        assert_eq!(
            cfg.upstream_tls,
            Some(UpstreamTls {
                ca_file: Some("/tmp/ca.pem".into())
            })
        );
        assert!(!format!("{cfg:?}").contains("postgres://flag"));
    }

    #[test]
    fn bad_command_lines_are_precise_errors() {
        assert_eq!(parse_args(args(&[]), None), Err(ConfigError::NoDatabase));
        assert_eq!(
            parse_args(args(&["--bogus"]), Some("u".into())),
            Err(ConfigError::UnknownFlag("--bogus".into()))
        );
        assert_eq!(
            parse_args(args(&["--refresh-ms"]), Some("u".into())),
            Err(ConfigError::MissingValue("--refresh-ms"))
        );
        assert!(matches!(
            parse_args(args(&["--max-connections", "0"]), Some("u".into())),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            parse_args(args(&["--idle-timeout-ms", "ten"]), Some("u".into())),
            Err(ConfigError::BadValue { .. })
        ));
        assert_eq!(
            parse_args(args(&["--upstream-ca", "x"]), Some("u".into())),
            Err(ConfigError::CaWithoutTls)
        );
        assert_eq!(parse_args(args(&["--help"]), None), Ok(Command::Help));
    }
}
