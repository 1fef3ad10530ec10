//! collab-device's command line, and its key and password files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::reconnect;
use super::error::CliError;
use crate::ops::args::Args;
use crate::wire::{self, Secret};

/// Parsed command line.
#[derive(Debug)]
pub struct Options {
    pub(super) connect: String,
    pub(super) pin: u32,
    pub(super) key_file: PathBuf,
    pub(super) user: String,
    pub(super) password_file: PathBuf,
    pub(super) tls: bool,
    pub(super) ca: Option<PathBuf>,
    pub(super) tls_name: Option<String>,
    pub(super) script: bool,
    pub(super) manual_ack: bool,
    pub(super) status_interval: Option<Duration>,
    pub(super) timeout: Duration,
    /// Reconnect attempts after a lost link (0: none).
    pub(super) reconnect_attempts: u32,
}

/// Parses the arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Options, CliError> {
    let usage = |m: String| CliError::Usage(m);
    let mut args = Args::new(args.iter().cloned());
    let mut connect = None;
    let mut pin = None;
    let mut key_file = None;
    let mut user = None;
    let mut password_file = None;
    let mut o = Options {
        connect: String::new(),
        pin: 0,
        key_file: PathBuf::new(),
        user: String::new(),
        password_file: PathBuf::new(),
        tls: false,
        ca: None,
        tls_name: None,
        script: false,
        manual_ack: false,
        status_interval: Some(Duration::from_secs(60)),
        timeout: Duration::from_secs(30),
        reconnect_attempts: reconnect::DEFAULT_ATTEMPTS,
    };
    let secs = |flag: &str, v: &str| -> Result<u64, CliError> {
        v.parse::<u64>()
            .map_err(|_| usage(format!("{flag} wants whole seconds, not \"{v}\"")))
    };
    while let Some(word) = args.next_word() {
        let a = &word;
        let mut value = |flag: &str| {
            args.value()
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        match a.as_str() {
            "--connect" => connect = Some(value(a)?),
            "--pin" => {
                let v = value(a)?;
                pin = Some(
                    wire::parse_pin(&v)
                        .ok_or_else(|| usage(format!("--pin wants 8 hex digits, not \"{v}\"")))?,
                );
            }
            "--key-file" => key_file = Some(PathBuf::from(value(a)?)),
            "--user" => user = Some(value(a)?),
            "--password-file" => password_file = Some(PathBuf::from(value(a)?)),
            "--tls" => o.tls = true,
            "--ca" => o.ca = Some(PathBuf::from(value(a)?)),
            "--tls-name" => o.tls_name = Some(value(a)?),
            "--script" => o.script = true,
            "--manual-ack" => o.manual_ack = true,
            "--status-interval" => {
                let n = secs(a, &value(a)?)?;
                o.status_interval = if n == 0 {
                    None
                } else {
                    Some(Duration::from_secs(n))
                };
            }
            "--timeout" => {
                let n = secs(a, &value(a)?)?;
                if n == 0 {
                    return Err(usage("--timeout must be at least 1".into()));
                }
                o.timeout = Duration::from_secs(n);
            }
            "--reconnect" => {
                let v = value(a)?;
                o.reconnect_attempts = v.parse::<u32>().map_err(|_| {
                    usage(format!(
                        "--reconnect wants a number of attempts, not \"{v}\""
                    ))
                })?;
            }
            "-h" | "--help" => return Err(usage("help requested".into())),
            other => return Err(usage(format!("unknown argument \"{other}\""))),
        }
    }
    o.connect = connect.ok_or_else(|| usage("--connect is required".into()))?;
    o.pin = pin.ok_or_else(|| usage("--pin is required".into()))?;
    o.key_file = key_file.ok_or_else(|| usage("--key-file is required".into()))?;
    o.user = user.ok_or_else(|| usage("--user is required".into()))?;
    o.password_file = password_file.ok_or_else(|| usage("--password-file is required".into()))?;
    if (o.ca.is_some() || o.tls_name.is_some()) && !o.tls {
        return Err(usage("--ca and --tls-name need --tls".into()));
    }
    Ok(o)
}

/// Reads a transport key: 64 hex digits (surrounding white space allowed)
/// or exactly 32 raw bytes.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], CliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::file_read(format!("key file {}", path.display()), e))?;
    let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
    if let Some(key) = crate::hex::parse_key(text) {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    if bytes.len() == 32 {
        key.copy_from_slice(&bytes);
        return Ok(key);
    }
    Err(CliError::file(format!(
        "key file {}: want 64 hex digits or 32 raw bytes",
        path.display()
    )))
}

/// Reads the password: the first line of the file, without its line end.
pub fn read_password_file(path: &Path) -> Result<Secret, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::file_read(format!("password file {}", path.display()), e))?;
    let first = text.lines().next().unwrap_or("");
    if first.is_empty() {
        return Err(CliError::file(format!(
            "password file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(first))
}
