//! What a CWA session is told about its server ([`ClientConfig`]) and how
//! it signs in ([`AuthMode`], [`SignedInVia`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::transport::SharedTransport;

/// How a session signs in to CWA (the service maps the Config DB's
/// `instance.auth_mode` onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// NTLMv2 on `/iwa/logon.html` first, then forms on `/forms/logon.html`
    /// if that fails (what BES does; the default).
    #[default]
    IwaThenForms,
    /// Forms only.
    Forms,
    /// Integrated Windows authentication (NTLMv2) only.
    Iwa,
}

/// Which sign-in method succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedInVia {
    /// NTLMv2 on `/iwa/logon.html`.
    Iwa,
    /// Forms on `/forms/logon.html`.
    Forms,
}

/// Everything a session needs to know about the CWA server it talks to.
///
/// Timeouts are per phase (ureq's): connecting (TCP + TLS), sending a
/// request, and receiving a response. The event GET may be held by the
/// server (long poll), so its receive timeout is `recv_timeout +
/// poll_hold_margin`; with the defaults that is 90 s.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host[:port][/prefix]` (or `http://` when the instance says
    /// so). The handler paths are appended to it.
    pub base_url: String,
    /// Which sign-in methods to try.
    pub auth_mode: AuthMode,
    /// A PEM file of CA certificates to trust instead of the system's
    /// roots (for a private CA). Verification is never turned off.
    pub ca_file: Option<PathBuf>,
    /// The TLS context (trust anchors, TLS session cache) and name cache
    /// shared by every session signed in with this configuration or a
    /// clone of it. Each session still has its own connections.
    pub transport: SharedTransport,
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Sending the request head and body.
    pub send_timeout: Duration,
    /// Receiving a response head, and separately its body, for commands
    /// and sign-in.
    pub recv_timeout: Duration,
    /// Added to `recv_timeout` for the event GET, which the server may hold.
    pub poll_hold_margin: Duration,
    /// The largest response body accepted, in bytes.
    pub max_body: usize,
    /// The workstation name sent in the NTLM AUTHENTICATE message.
    pub workstation: String,
    /// The availability sent in `initiateSession` (3500 = online).
    pub initial_availability: u32,
    /// How often presence must be republished (every 5 minutes).
    pub republish_interval: Duration,
    /// The longest back-off between event GETs while CWA is busy.
    pub busy_backoff_cap: Duration,
    /// How many busy answers (503 / 18101) in a row the event channel
    /// absorbs before `poll` returns [`SessionError::Busy`](super::SessionError::Busy).
    pub max_busy_retries: u32,
    /// How many times `poll` resends a GET (same AckId) whose connection
    /// dropped before it returns [`SessionError::Unavailable`](super::SessionError::Unavailable).
    pub max_drop_retries: u32,
    /// The latest a sign-in may end: each of its exchanges gets at most
    /// the time left (on top of the phase timeouts above), so a CWA that
    /// answers too slowly is a timeout ([`SignInError::Unavailable`](super::SignInError::Unavailable)) in
    /// time for the device to be told. `None`: the phase timeouts only.
    /// The signed-in session's requests are not bound by it.
    pub sign_in_deadline: Option<Instant>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: "https://localhost".to_string(),
            auth_mode: AuthMode::IwaThenForms,
            ca_file: None,
            transport: SharedTransport::new(),
            connect_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            recv_timeout: Duration::from_secs(30),
            poll_hold_margin: Duration::from_secs(60),
            max_body: 1024 * 1024,
            workstation: "COLLABD".to_string(),
            initial_availability: 3500,
            republish_interval: Duration::from_secs(300),
            busy_backoff_cap: Duration::from_secs(60),
            max_busy_retries: 8,
            max_drop_retries: 2,
            sign_in_deadline: None,
        }
    }
}

impl ClientConfig {
    /// The defaults with `base_url` set.
    pub fn new(base_url: &str) -> Self {
        ClientConfig {
            base_url: base_url.to_string(),
            ..ClientConfig::default()
        }
    }
}
