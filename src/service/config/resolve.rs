//! From raw settings (file, environment, flags) to a checked [`Config`]:
//! every value parsed and bounded, with the origin in each message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::settings::{Config, ConfigError, Origin, Raw, TlsFiles};

pub(super) fn invalid(
    key: &'static str,
    origin: &Origin,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        origin: origin.clone(),
        message: message.into(),
    }
}

pub(super) fn number(
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

pub(super) fn resolve(
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
    let presence_republish = Duration::from_millis(number(
        &mut raw,
        "presence_republish_ms",
        300_000,
        100,
        300_000,
    )?);
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
        presence_republish,
    })
}
