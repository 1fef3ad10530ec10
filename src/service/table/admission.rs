//! What admission works with: the instance's session limits, and why a
//! login was not admitted.

use std::fmt;
use std::time::Duration;

use crate::wire::Status;

/// The instance's session limits (the Config DB's `instance` row). They can
/// be replaced at run time with [`SessionTable::set_limits`]; the new values
/// apply from the next admission or reaper pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum simultaneous sessions; `None` means "no maximum set", in
    /// which case `http_max_connections` is the ceiling.
    pub max_sessions: Option<u32>,
    /// Applies only at the maximum: sessions out of coverage or silent
    /// (no status message) for this long may be signed out to make room.
    pub idle_timeout: Option<Duration>,
    /// Always applies: a session whose device sent nothing for this long is
    /// ended.
    pub inactivity_timeout: Option<Duration>,
    /// How many sessions the HTTP persistent connections to CWA can carry;
    /// the ceiling when `max_sessions` is unset.
    pub http_max_connections: u32,
}

impl Limits {
    /// From the Config DB instance row's columns (milliseconds).
    pub fn from_millis(
        max_sessions: Option<u32>,
        idle_timeout_ms: Option<u64>,
        inactivity_timeout_ms: Option<u64>,
        http_max_connections: u32,
    ) -> Limits {
        Limits {
            max_sessions,
            idle_timeout: idle_timeout_ms.map(Duration::from_millis),
            inactivity_timeout: inactivity_timeout_ms.map(Duration::from_millis),
            http_max_connections,
        }
    }

    /// The number of sessions this instance can hold: `max_sessions` if set,
    /// else `http_max_connections` (the registry's `session_limit`).
    pub fn capacity(&self) -> u32 {
        self.max_sessions.unwrap_or(self.http_max_connections)
    }
}

/// Why a login was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_sessions` is reached and no session could be signed out to
    /// make room. Device status 301 (ServerBusy).
    ServerBusy {
        /// Sessions live when the login was refused.
        in_use: usize,
        /// The configured maximum.
        max_sessions: u32,
    },
    /// `max_sessions` is unset and the sessions fill what the HTTP
    /// persistent connections to CWA can carry. Device status 300 (Failed).
    Failed {
        /// Sessions live when the login was refused.
        in_use: usize,
        /// The instance's `http_max_connections`.
        http_max_connections: u32,
    },
}

impl Refusal {
    /// The device-facing status (collab-protocol(7), STATUS CODES).
    pub fn status_code(&self) -> Status {
        match self {
            Refusal::ServerBusy { .. } => Status::ServerBusy,
            Refusal::Failed { .. } => Status::Failed,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ServerBusy {
                in_use,
                max_sessions,
            } => write!(
                f,
                "server busy: {in_use} sessions of max_sessions {max_sessions}, none idle"
            ),
            Refusal::Failed {
                in_use,
                http_max_connections,
            } => write!(
                f,
                "failed: {in_use} sessions fill http_max_connections {http_max_connections} \
                 (max_sessions unset)"
            ),
        }
    }
}

impl std::error::Error for Refusal {}
