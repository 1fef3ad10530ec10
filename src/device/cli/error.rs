//! Why `collab-device` stopped, and the exit code of each kind.

use std::fmt;

use super::super::DeviceError;
use crate::wire::{Status, WireError};

const USAGE: &str = "usage: collab-device --connect HOST:PORT --pin PIN --key-file FILE \
--user LOGIN --password-file FILE [--tls] [--ca FILE] [--tls-name NAME] [--script] \
[--manual-ack] [--status-interval SECS] [--timeout SECS] [--reconnect ATTEMPTS]";

/// Why `collab-device` stopped; each kind has its own exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments (64).
    Usage(String),
    /// The key or password file is missing, unreadable or malformed (66).
    File(String),
    /// The connection or the login was refused with a status (2).
    Refused(Status, String),
    /// The connection could not be made or was lost (3).
    Connection(String),
    /// The peer broke the protocol, or the key is wrong (4).
    Protocol(String),
    /// The service ended the session or is stopping (5).
    Ended(Status, String),
    /// Internal failure, e.g. the random source (70).
    Internal(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Refused(..) => 2,
            CliError::Connection(_) => 3,
            CliError::Protocol(_) => 4,
            CliError::Ended(..) => 5,
            CliError::Usage(_) => 64,
            CliError::File(_) => 66,
            CliError::Internal(_) => 70,
        }
    }

    pub(super) fn from_device(e: DeviceError, logged_in: bool) -> CliError {
        match e {
            DeviceError::Connect(why) => CliError::Connection(why),
            DeviceError::Tls(why) => CliError::Connection(format!("TLS: {why}")),
            DeviceError::LoginRefused(s, t) => CliError::Refused(s, t),
            DeviceError::Unexpected(why) => CliError::Protocol(why),
            DeviceError::Wire(WireError::Refused(s, t)) if logged_in => CliError::Ended(s, t),
            DeviceError::Wire(WireError::Refused(s, t)) => CliError::Refused(s, t),
            DeviceError::Wire(WireError::Crypto(why)) => CliError::Internal(why),
            DeviceError::Wire(w) if w.is_protocol_violation() => CliError::Protocol(w.to_string()),
            DeviceError::Wire(w) => CliError::Connection(w.to_string()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(why) => write!(f, "{why}\n{USAGE}"),
            CliError::File(why) => write!(f, "{why}"),
            CliError::Refused(s, t) => write!(f, "refused: {} {} ({t})", s.code(), s.name()),
            CliError::Connection(why) => write!(f, "connection failed or lost: {why}"),
            CliError::Protocol(why) => write!(f, "protocol error: {why}"),
            CliError::Ended(s, t) => write!(f, "session ended: {} {} ({t})", s.code(), s.name()),
            CliError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for CliError {}
