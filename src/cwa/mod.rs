/*!
The CWA client: collabd's side of the Communicator Web Access 2007 "AJAX
service" protocol (Microsoft's Unified Communications AJAX SDK, 2007
release), one client per user session.

This module owns everything between a signed-in user and one CWA server:
the per-session HTTP agent (ureq 3) over a transport shared by every
session of an instance (one OpenSSL context, verification always on, TLS
session resumption), sign-in (NTLMv2 on `/iwa/logon.html`, forms on
`/forms/logon.html`), `initiateSession`, the command channel (POST
`/cwa/MainCommandHandler.ashx`), the event channel (GET
`/cwa/AsyncDataChannel.ashx`), typed commands and events, ticket rotation,
back-off and sign-out. It never imports the service, the device protocol
or the Config DB.

# Use

```no_run
# fn demo() -> Result<(), Box<dyn std::error::Error>> {
use collabd::cwa::{ClientConfig, Command, CwaSession};
let config = ClientConfig::new("https://cwa.example.com");
let session = CwaSession::sign_in(&config, r"EXAMPLE\alice", "secret")?;
let (mut commands, mut events) = session.split();
std::thread::spawn(move || loop {
    match events.poll() {
        Ok(batch) => {
            for event in &batch.events {
                // hand the event to the device ...
                let _ = event;
            }
            events.ack(&batch); // only now does AckId advance
        }
        Err(e) if e.is_final() => break,
        Err(_) => continue, // transient: the next poll resends the same AckId
    }
});
commands.send(&Command::PublishPresence { availability: 3500, note: None })?;
if commands.republish_due() {
    commands.republish()?;
}
commands.sign_out()?;
# Ok(()) }
```

# Threads

A [`CwaSession`] is split into a [`CommandChannel`] and an
[`EventChannel`]; each is `Send` and may live on its own thread. They share
the ticket, the sid and the rid bookkeeping behind one mutex that is never
held across a request, and one ureq agent whose pool holds at most two
connections (one GET, one POST). A CWA connection is never shared between
users: each session has its own agent, hence its own pool. What sessions
share is [`ClientConfig::transport`]: the TLS context, the TLS sessions to
resume and resolved names, none of which carries a user's authentication.

# Errors and device statuses

[`SignInError`] classifies a failed sign-in; [`SignInError::device_status`]
gives the device-facing code of the team brief (303 bad credentials, 305 not
enabled, 306 busy / unavailable / TLS / configuration, 308 protocol).
[`SessionError`] classifies failures of a live session; see its variants
for what the caller should do.
*/

pub mod access;
mod command;
mod error;
mod event;
mod http;
mod response;
mod session;
mod signin;
mod transport;
mod xmlguard;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

pub use command::{Command, CommandKind, ContactSpec, ImMessage, SearchQuery};
pub use error::{CwaError, SessionError, SignInError};
pub use event::{
    Category, ConferenceItem, Configuration, ContactItem, Event, EventBatch, GroupItem,
    Participant, SearchUser, Subscriber, UserPresence,
};
pub use response::{CommandReply, Outcome};
pub use session::{CommandChannel, CwaSession, EventChannel, SessionInfo};
pub use transport::{SharedTransport, TlsHandshakes, NAME_TTL};

/// How collabd signs a user in to CWA (the Config DB's `instance.auth_mode`).
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

impl AuthMode {
    /// The configuration spelling: `iwa-then-forms`, `forms` or `iwa`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::IwaThenForms => "iwa-then-forms",
            AuthMode::Forms => "forms",
            AuthMode::Iwa => "iwa",
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An auth mode spelled other than `iwa-then-forms`, `forms` or `iwa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAuthMode(pub String);

impl fmt::Display for UnknownAuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown CWA auth mode {:?} (expected iwa-then-forms, forms or iwa)",
            self.0
        )
    }
}

impl std::error::Error for UnknownAuthMode {}

impl FromStr for AuthMode {
    type Err = UnknownAuthMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "iwa-then-forms" => Ok(AuthMode::IwaThenForms),
            "forms" => Ok(AuthMode::Forms),
            "iwa" => Ok(AuthMode::Iwa),
            _ => Err(UnknownAuthMode(s.to_string())),
        }
    }
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
/// poll_hold_margin`; with the defaults that is the 90 s of the protocol
/// notes (§5.1).
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
    /// How often presence must be republished (5 minutes per §3.1).
    pub republish_interval: Duration,
    /// The longest back-off between event GETs while CWA is busy.
    pub busy_backoff_cap: Duration,
    /// How many busy answers (503 / 18101) in a row the event channel
    /// absorbs before `poll` returns [`SessionError::Busy`].
    pub max_busy_retries: u32,
    /// How many times `poll` resends a GET (same AckId) whose connection
    /// dropped before it returns [`SessionError::Unavailable`].
    pub max_drop_retries: u32,
    /// The latest a sign-in may end: each of its exchanges gets at most
    /// the time left (on top of the phase timeouts above), so a CWA that
    /// answers too slowly is a timeout ([`SignInError::Unavailable`]) in
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

/// Every decoder that reads what CWA sends, run on one body as if it had
/// come from CWA: the event channel (`cwaEvents`, or `cwaResponses`
/// wrapping events and errors), a command reply, the logon answer and the
/// initiateSession answer, each behind the same bounded parse. For the
/// mutation tests, which need these private decoders reachable; garbage is
/// an `Err` (or an empty result), never a panic. Returns the events the
/// event channel would deliver.
#[doc(hidden)]
pub fn decode_untrusted(body: &[u8]) -> Result<Vec<Event>, String> {
    if let Ok(root) = xmlguard::parse(body, usize::MAX) {
        let _ = response::parse_reply(&root, 1);
        let _ = response::parse_logon(&root);
        let _ = response::parse_session_accepted(&root, 1);
    }
    let parsed = session::parse_events_body(body).map_err(|e| e.to_string())?;
    Ok(parsed.events.into_iter().map(|(_, e)| e).collect())
}
