//! The CWA client's errors: why a sign-in failed ([`SignInError`]), why a
//! live session's request failed ([`SessionError`]), and CWA's own
//! `<error>` element ([`CwaError`]). Each maps to a device-facing status
//! code of collab-protocol(7), STATUS CODES (`src/wire/status.rs`).

use std::fmt;

use xmltree::Element;

use crate::wire::Status;
use crate::xml;

/// CWA's `<error code subCode reason detail>` element, with the optional
/// `sipResponse code reason` child (cwa-sim(1), HTTP LIMITS AND ERRORS).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CwaError {
    /// The CWA service code (18000–18400), if present and numeric.
    pub code: Option<u32>,
    /// The sub-code, if present and numeric.
    pub sub_code: Option<u32>,
    /// `reason`, or empty.
    pub reason: String,
    /// `detail`, or empty.
    pub detail: String,
    /// The SIP status of `sipResponse`, if any (e.g. 480, 485).
    pub sip_code: Option<u16>,
    /// The SIP reason phrase of `sipResponse`, or empty.
    pub sip_reason: String,
}

/// CWA's code for "session not found": sign in again.
pub const CODE_SESSION_NOT_FOUND: u32 = 18100;
/// CWA's code for "request throttled": back off.
pub const CODE_THROTTLED: u32 = 18101;

impl CwaError {
    /// Reads an `<error>` element. Attributes that are missing or not
    /// numeric are left empty rather than refused: the code is advisory.
    pub(crate) fn from_element(e: &Element) -> CwaError {
        let sip = e.get_child("sipResponse");
        CwaError {
            code: xml::attr(e, "code").and_then(|v| v.trim().parse().ok()),
            sub_code: xml::attr(e, "subCode").and_then(|v| v.trim().parse().ok()),
            reason: xml::attr(e, "reason").unwrap_or_default().to_string(),
            detail: xml::attr(e, "detail").unwrap_or_default().to_string(),
            sip_code: sip
                .and_then(|s| xml::attr(s, "code"))
                .and_then(|v| v.trim().parse().ok()),
            sip_reason: sip
                .and_then(|s| xml::attr(s, "reason"))
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// The `<error>` child of `e` (e.g. of `requestFailed`), or an empty
    /// error when there is none.
    pub(crate) fn child_of(e: &Element) -> CwaError {
        e.get_child("error")
            .map(CwaError::from_element)
            .unwrap_or_default()
    }

    /// 18100: the session is gone.
    pub fn is_session_gone(&self) -> bool {
        self.code == Some(CODE_SESSION_NOT_FOUND)
    }

    /// 18101: CWA is throttling this client.
    pub fn is_throttled(&self) -> bool {
        self.code == Some(CODE_THROTTLED)
    }
}

impl fmt::Display for CwaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "CWA error {code}")?,
            None => f.write_str("CWA error")?,
        }
        if let Some(sub) = self.sub_code {
            write!(f, "/{sub}")?;
        }
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        if let Some(sip) = self.sip_code {
            write!(f, " [SIP {sip} {}]", self.sip_reason)?;
        }
        Ok(())
    }
}

/// Why signing in failed.
///
/// | variant | device status |
/// |---|---|
/// | `BadCredentials` | 303 BadCredentials |
/// | `NotEnabled` | 305 NotEnabled |
/// | `ServerBusy` (503 or 18101) | 306 CwaUnavailable |
/// | `Unavailable` (network) | 306 CwaUnavailable |
/// | `Tls` (handshake or certificate) | 306 CwaUnavailable |
/// | `Config` (bad URL or CA file) | 306 CwaUnavailable |
/// | `Protocol` (malformed reply, no ticket after success, redirect, ...) | 308 ProtocolError |
///
/// The HTTP-to-class mapping is our choice where CWA's behaviour is not
/// known (cwa-sim(1), SIGN-IN, answers the same way):
/// 401 (and a 2xx without ticket) is bad credentials, 403 or an error body
/// with a ticket is "not enabled", 503 or code 18101 is busy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInError {
    /// CWA refused the credentials.
    BadCredentials,
    /// The credentials are right but the user may not use CWA / OCS.
    NotEnabled,
    /// CWA answered 503 or error 18101.
    ServerBusy,
    /// CWA could not be reached (connect, reset, timeout, 5xx).
    Unavailable(String),
    /// The TLS handshake failed, e.g. the certificate did not verify.
    Tls(String),
    /// The client configuration cannot be used (URL, CA file).
    Config(String),
    /// CWA answered something the protocol does not allow.
    Protocol(String),
}

impl SignInError {
    /// The device-facing status code (collab-protocol(7), STATUS CODES) for
    /// this failure.
    pub fn device_status(&self) -> Status {
        match self {
            SignInError::BadCredentials => Status::BadCredentials,
            SignInError::NotEnabled => Status::NotEnabled,
            SignInError::ServerBusy
            | SignInError::Unavailable(_)
            | SignInError::Tls(_)
            | SignInError::Config(_) => Status::CwaUnavailable,
            SignInError::Protocol(_) => Status::ProtocolError,
        }
    }
}

impl fmt::Display for SignInError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignInError::BadCredentials => f.write_str("CWA refused the credentials"),
            SignInError::NotEnabled => {
                f.write_str("the user is not enabled for Communications Server / CWA")
            }
            SignInError::ServerBusy => f.write_str("CWA is busy (503 / 18101)"),
            SignInError::Unavailable(why) => write!(f, "CWA unavailable: {why}"),
            SignInError::Tls(why) => write!(f, "TLS to CWA failed: {why}"),
            SignInError::Config(why) => write!(f, "CWA client configuration: {why}"),
            SignInError::Protocol(why) => write!(f, "CWA protocol error: {why}"),
        }
    }
}

impl std::error::Error for SignInError {}

/// Why a request on a live session failed.
///
/// After any error other than `SessionGone` and `Closed` the session is
/// still usable: a failed `poll` keeps its AckId, so calling it again
/// resends the same acknowledgement and nothing is lost.
///
/// | variant | device status |
/// |---|---|
/// | `SessionGone` | 310 SessionEnded ("CWA session lost") |
/// | `Closed` | 310 SessionEnded |
/// | `Busy`, `Unavailable`, `Timeout` | 306 CwaUnavailable |
/// | `Protocol` | 308 ProtocolError |
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// 401/403/404 or error 18100: the ticket or the session is no longer
    /// valid. Signing in again is the caller's decision.
    SessionGone(String),
    /// 503 or error 18101: CWA asks us to back off. Commands return this
    /// at once; the event channel first backs off by itself.
    Busy,
    /// The network failed (connect, reset, closed, 5xx).
    Unavailable(String),
    /// A phase timeout expired (no answer, or an answer that stalled).
    Timeout(String),
    /// CWA answered something the protocol does not allow (malformed XML,
    /// oversize body, redirect, unexpected status).
    Protocol(String),
    /// The session was signed out (or closed) locally.
    Closed,
}

impl SessionError {
    /// Whether the session is over (`SessionGone` or `Closed`).
    pub fn is_final(&self) -> bool {
        matches!(self, SessionError::SessionGone(_) | SessionError::Closed)
    }

    /// The device-facing status code (collab-protocol(7), STATUS CODES) for
    /// this failure.
    pub fn device_status(&self) -> Status {
        match self {
            SessionError::SessionGone(_) | SessionError::Closed => Status::SessionEnded,
            SessionError::Busy | SessionError::Unavailable(_) | SessionError::Timeout(_) => {
                Status::CwaUnavailable
            }
            SessionError::Protocol(_) => Status::ProtocolError,
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::SessionGone(why) => write!(f, "CWA session lost: {why}"),
            SessionError::Busy => f.write_str("CWA is busy (503 / 18101)"),
            SessionError::Unavailable(why) => write!(f, "CWA unavailable: {why}"),
            SessionError::Timeout(why) => write!(f, "CWA timed out: {why}"),
            SessionError::Protocol(why) => write!(f, "CWA protocol error: {why}"),
            SessionError::Closed => f.write_str("the CWA session was signed out"),
        }
    }
}

impl std::error::Error for SessionError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_element_with_sip_response_is_read() {
        let e = xml::parse(
            br#"<error code="18201" subCode="0" reason="Operation failed" detail="x"><sipResponse code="485" reason="Ambiguous"><ms-diagnostics>1</ms-diagnostics></sipResponse></error>"#,
            4096,
        )
        .unwrap();
        let err = CwaError::from_element(&e);
        assert_eq!(err.code, Some(18201));
        assert_eq!(err.sip_code, Some(485));
        assert_eq!(err.reason, "Operation failed");
        assert!(err.to_string().contains("485"), "{err}");
        assert!(!err.is_session_gone());
    }

    #[test]
    fn device_statuses_follow_the_brief() {
        assert_eq!(SignInError::BadCredentials.device_status().code(), 303);
        assert_eq!(SignInError::NotEnabled.device_status().code(), 305);
        assert_eq!(SignInError::ServerBusy.device_status().code(), 306);
        assert_eq!(
            SignInError::Unavailable("x".into()).device_status().code(),
            306
        );
        assert_eq!(SignInError::Tls("x".into()).device_status().code(), 306);
        assert_eq!(
            SignInError::Protocol("x".into()).device_status().code(),
            308
        );
        assert_eq!(
            SessionError::SessionGone("x".into()).device_status().code(),
            310
        );
        assert_eq!(SessionError::Busy.device_status().code(), 306);
        assert!(SessionError::Closed.is_final());
        assert!(!SessionError::Timeout("x".into()).is_final());
    }
}
