//! The device-facing status codes (the team's shared contract): the number
//! carried in login results, command results, session-ended messages and
//! clear `Refused` frames, with its fixed name and default text.

use std::fmt;

/// A device-facing status code. The numbers are part of the wire protocol
/// and never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 0: login accepted (or command succeeded).
    Ok,
    /// 300: no session capacity, or an unclassified failure.
    Failed,
    /// 301: `max_sessions` reached and no idle session could be signed out.
    ServerBusy,
    /// 302: the user may not use the collaboration client, or is unknown.
    NotPermitted,
    /// 303: CWA refused the credentials.
    BadCredentials,
    /// 304: the login is not the user the device's PIN is registered to.
    WrongUser,
    /// 305: credentials right, but the user is not enabled for
    /// Communications Server.
    NotEnabled,
    /// 306: CWA unreachable, TLS failure, or busy.
    CwaUnavailable,
    /// 307: the Config DB is unreachable.
    ConfigUnavailable,
    /// 308: malformed or tampered frame or message.
    ProtocolError,
    /// 309: the dispatcher found no live collabd instance.
    NoInstance,
    /// 310: the session was ended; a reason text says why.
    SessionEnded,
    /// 311: the service is shutting down.
    ServiceStopping,
    /// 312: the PIN is not provisioned.
    UnknownDevice,
}

/// Every status, in code order (for tables, documentation and tests).
pub const ALL_STATUSES: [Status; 14] = [
    Status::Ok,
    Status::Failed,
    Status::ServerBusy,
    Status::NotPermitted,
    Status::BadCredentials,
    Status::WrongUser,
    Status::NotEnabled,
    Status::CwaUnavailable,
    Status::ConfigUnavailable,
    Status::ProtocolError,
    Status::NoInstance,
    Status::SessionEnded,
    Status::ServiceStopping,
    Status::UnknownDevice,
];

impl Status {
    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 0,
            Status::Failed => 300,
            Status::ServerBusy => 301,
            Status::NotPermitted => 302,
            Status::BadCredentials => 303,
            Status::WrongUser => 304,
            Status::NotEnabled => 305,
            Status::CwaUnavailable => 306,
            Status::ConfigUnavailable => 307,
            Status::ProtocolError => 308,
            Status::NoInstance => 309,
            Status::SessionEnded => 310,
            Status::ServiceStopping => 311,
            Status::UnknownDevice => 312,
        }
    }

    /// The status for a wire code, or `None` for a code this version does
    /// not define.
    pub fn from_code(code: u16) -> Option<Status> {
        ALL_STATUSES.iter().copied().find(|s| s.code() == code)
    }

    /// The identifier-like name (`ServerBusy`).
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::Failed => "Failed",
            Status::ServerBusy => "ServerBusy",
            Status::NotPermitted => "NotPermitted",
            Status::BadCredentials => "BadCredentials",
            Status::WrongUser => "WrongUser",
            Status::NotEnabled => "NotEnabled",
            Status::CwaUnavailable => "CwaUnavailable",
            Status::ConfigUnavailable => "ConfigUnavailable",
            Status::ProtocolError => "ProtocolError",
            Status::NoInstance => "NoInstance",
            Status::SessionEnded => "SessionEnded",
            Status::ServiceStopping => "ServiceStopping",
            Status::UnknownDevice => "UnknownDevice",
        }
    }

    /// The default human-readable text shown on a device.
    pub fn text(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Failed => "Failed",
            Status::ServerBusy => "Server Busy",
            Status::NotPermitted => "Not permitted to use the collaboration client",
            Status::BadCredentials => "Bad user name or password",
            Status::WrongUser => "This device is registered to another user",
            Status::NotEnabled => "User not enabled for Communications Server",
            Status::CwaUnavailable => "Communicator Web Access unavailable",
            Status::ConfigUnavailable => "Configuration database unavailable",
            Status::ProtocolError => "Protocol error",
            Status::NoInstance => "No collaboration service available",
            Status::SessionEnded => "Session ended",
            Status::ServiceStopping => "Service stopping",
            Status::UnknownDevice => "Unknown device",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.text())
    }
}

impl From<Status> for u16 {
    fn from(status: Status) -> u16 {
        status.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for s in ALL_STATUSES {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        let mut codes: Vec<u16> = ALL_STATUSES.iter().map(|s| s.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), ALL_STATUSES.len());
        assert_eq!(Status::from_code(1u16), None);
        assert_eq!(Status::from_code(313u16), None);
        assert_eq!(Status::ServerBusy.to_string(), "301 Server Busy");
        assert_eq!(Status::Failed.code(), 300);
        assert_eq!(Status::UnknownDevice.code(), 312);
    }
}
