//! Why `collab-device` stopped, and the exit code of each kind.

use std::fmt;
use std::io;

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
    File {
        /// Which file, and what is wrong with it.
        what: String,
        /// The read error beneath, if reading failed.
        source: Option<io::Error>,
    },
    /// The connection or the login was refused with a status (2).
    Refused(Status, String),
    /// The connection could not be made or was lost (3).
    Connection {
        /// What failed ("" when the protocol error beneath says it all).
        what: String,
        /// The protocol error beneath, if there is one.
        source: Option<WireError>,
    },
    /// The peer broke the protocol, or the key is wrong (4).
    Protocol {
        /// What was wrong ("" when the protocol error beneath says it all).
        what: String,
        /// The protocol error beneath, if there is one.
        source: Option<WireError>,
    },
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
            CliError::Connection { .. } => 3,
            CliError::Protocol { .. } => 4,
            CliError::Ended(..) => 5,
            CliError::Usage(_) => 64,
            CliError::File { .. } => 66,
            CliError::Internal(_) => 70,
        }
    }

    /// A file error with no error beneath.
    pub(super) fn file(what: String) -> CliError {
        CliError::File { what, source: None }
    }

    /// Reading `what` failed with `source`.
    pub(super) fn file_read(what: String, source: io::Error) -> CliError {
        CliError::File {
            what,
            source: Some(source),
        }
    }

    /// A connection failure with no protocol error beneath.
    pub(super) fn connection(what: String) -> CliError {
        CliError::Connection { what, source: None }
    }

    /// The connection failed or was lost with `source`.
    pub(super) fn connection_lost(source: WireError) -> CliError {
        CliError::Connection {
            what: String::new(),
            source: Some(source),
        }
    }

    /// Why the connection failed, without the kind's prefix; `None` for
    /// other kinds.
    pub(super) fn connection_reason(&self) -> Option<String> {
        match self {
            CliError::Connection { what, source } => Some(with_cause(what, source.as_ref())),
            _ => None,
        }
    }

    pub(super) fn from_device(e: DeviceError, logged_in: bool) -> CliError {
        match e {
            DeviceError::Connect(why) => CliError::connection(why),
            DeviceError::Tls(why) => CliError::connection(format!("TLS: {why}")),
            DeviceError::LoginRefused(s, t) => CliError::Refused(s, t),
            DeviceError::Unexpected(why) => CliError::Protocol {
                what: why,
                source: None,
            },
            DeviceError::Wire(WireError::Refused(s, t)) if logged_in => CliError::Ended(s, t),
            DeviceError::Wire(WireError::Refused(s, t)) => CliError::Refused(s, t),
            DeviceError::Wire(WireError::Crypto(why)) => CliError::Internal(why),
            DeviceError::Wire(w) if w.is_protocol_violation() => CliError::Protocol {
                what: String::new(),
                source: Some(w),
            },
            DeviceError::Wire(w) => CliError::connection_lost(w),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(why) => write!(f, "{why}\n{USAGE}"),
            CliError::File { what, source } => f.write_str(&with_cause(what, source.as_ref())),
            CliError::Refused(s, t) => write!(f, "refused: {} {} ({t})", s.code(), s.name()),
            CliError::Connection { what, source } => write!(
                f,
                "connection failed or lost: {}",
                with_cause(what, source.as_ref())
            ),
            CliError::Protocol { what, source } => {
                write!(f, "protocol error: {}", with_cause(what, source.as_ref()))
            }
            CliError::Ended(s, t) => write!(f, "session ended: {} {} ({t})", s.code(), s.name()),
            CliError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::File {
                source: Some(e), ..
            } => Some(e),
            CliError::Connection {
                source: Some(e), ..
            }
            | CliError::Protocol {
                source: Some(e), ..
            } => Some(e),
            _ => None,
        }
    }
}

/// `what`, then the cause after a colon (the cause alone when `what` is
/// empty).
fn with_cause(what: &str, cause: Option<&impl fmt::Display>) -> String {
    match cause {
        Some(cause) if what.is_empty() => cause.to_string(),
        Some(cause) => format!("{what}: {cause}"),
        None => what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn a_read_error_stays_beneath_with_the_message_unchanged() {
        let gone = io::Error::new(io::ErrorKind::NotFound, "gone");
        let e = CliError::file_read("key file /k".into(), gone);
        assert_eq!(e.to_string(), "key file /k: gone");
        assert_eq!(e.exit_code(), 66);
        assert_eq!(e.source().map(|c| c.to_string()).as_deref(), Some("gone"));
        assert!(CliError::file("key file /k is empty".into())
            .source()
            .is_none());
    }

    #[test]
    fn a_lost_link_keeps_its_wire_error() {
        let e = CliError::from_device(DeviceError::Wire(WireError::Timeout), true);
        let wire = WireError::Timeout.to_string();
        assert_eq!(e.to_string(), format!("connection failed or lost: {wire}"));
        assert_eq!(e.exit_code(), 3);
        assert_eq!(e.connection_reason(), Some(wire.clone()));
        assert_eq!(e.source().map(|c| c.to_string()), Some(wire));
    }
}
