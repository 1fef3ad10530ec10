//! Why a session ended (and why an idle one was chosen for eviction), and
//! the device's radio coverage that the idle eviction looks at.

use std::fmt;
use std::time::Duration;

use crate::wire::Status;

/// What the device last said about its radio link, or what we concluded
/// when its connection went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// In coverage and active (the device's "active" status).
    In,
    /// In coverage, dormant (the client suppresses presence updates); still
    /// reachable.
    Dormant,
    /// Out of coverage, or its connection to us is gone: an eviction
    /// candidate when the limit is reached.
    Out,
}

impl Coverage {
    /// The name used in logs and in the Config DB session registry
    /// (`in`, `dormant`, `out`, as `configdb::registry::Coverage`).
    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::In => "in",
            Coverage::Dormant => "dormant",
            Coverage::Out => "out",
        }
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an idle session was chosen for eviction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionCause {
    /// The device is out of coverage or disconnected.
    OutOfCoverage,
    /// The device has sent no status message for this long.
    NoStatus {
        /// Time since its last status message.
        silent_for: Duration,
    },
}

/// Why a session ended. The `Display` text is the reason a SessionEnded
/// (310) message carries and what the audit records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The device logged out.
    Logout,
    /// Signed out at the session limit to admit another login.
    Evicted(EvictionCause),
    /// The inactivity timeout passed with nothing from the device.
    Inactive {
        /// Time since the device last sent anything.
        inactive_for: Duration,
    },
    /// The same device signed in again; the new session replaced this one.
    Replaced,
    /// CWA ended or lost the session (ticket expired, sign-out, errors).
    CwaSessionLost(String),
    /// The device left too many events unacknowledged: the session's
    /// bounded replay buffer is full.
    BufferOverflow {
        /// Events in the buffer when it overflowed.
        events: usize,
    },
    /// The service is shutting down (device status 311).
    ServiceStopping,
    /// An administrator ended the session (`collabctl session end`,
    /// `device remove`, `user revoke`), with the reason given.
    Administrative(String),
    /// The session thread ended without giving a reason (it returned early
    /// or panicked); recorded by [`SlotGuard`]'s drop.
    Closed,
}

impl EndReason {
    /// The device-facing status: ServiceStopping (311) for shutdown,
    /// SessionEnded (310) otherwise.
    pub fn status_code(&self) -> Status {
        match self {
            EndReason::ServiceStopping => Status::ServiceStopping,
            _ => Status::SessionEnded,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Logout => f.write_str("logged out"),
            EndReason::Evicted(EvictionCause::OutOfCoverage) => {
                f.write_str("signed out to make room at the session limit: device out of coverage")
            }
            EndReason::Evicted(EvictionCause::NoStatus { silent_for }) => write!(
                f,
                "signed out to make room at the session limit: no status message for {} ms",
                silent_for.as_millis()
            ),
            EndReason::Inactive { inactive_for } => write!(
                f,
                "inactivity timeout: nothing from the device for {} ms",
                inactive_for.as_millis()
            ),
            EndReason::Replaced => f.write_str("replaced by a new login from the same device"),
            EndReason::CwaSessionLost(why) => write!(f, "CWA session lost: {why}"),
            EndReason::BufferOverflow { events } => write!(
                f,
                "event buffer overflow: {events} events not acknowledged by the device"
            ),
            EndReason::ServiceStopping => f.write_str("the service is stopping"),
            EndReason::Administrative(why) => write!(f, "ended by an administrator: {why}"),
            EndReason::Closed => f.write_str("session closed"),
        }
    }
}
