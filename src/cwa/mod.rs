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
back-off and sign-out. It imports `net`, `ntlm`, `xml`, of `ops` only the
stack release under the held event GET, and, of the device protocol
(`wire`), only the status codes and the password type; never the service
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
gives the device-facing code (collab-protocol(7), STATUS CODES: 303 bad
credentials, 305 not enabled, 306 busy / unavailable / TLS /
configuration, 308 protocol).
[`SessionError`] classifies failures of a live session; see its variants
for what the caller should do.
*/

pub mod access;
mod buffers;
mod command;
mod config;
mod error;
mod event;
mod http;
mod response;
mod session;
mod signin;
mod transport;
mod xmlguard;

pub use command::{Command, CommandKind, ContactSpec, ImMessage, SearchQuery};
pub use config::{AuthMode, ClientConfig, SignedInVia};
pub use error::{CwaError, SessionError, SignInError};
pub use event::{
    Category, ConferenceItem, Configuration, ContactItem, Event, EventBatch, GroupItem,
    Participant, SearchUser, Subscriber, UserPresence,
};
pub use response::{CommandReply, Outcome};
pub use session::{CommandChannel, CwaSession, EventChannel, SessionInfo};
pub use transport::{SharedTransport, TlsHandshakes, NAME_TTL};

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
